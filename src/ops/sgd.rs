//! SGD update with momentum, Nesterov and (coupled) weight decay, as
//! PyTorch's `torch.optim.SGD` defines them (dampening 0).

use crate::graph::ir::ScalarId;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    pub lr: ScalarId,
}

/// One tensor's update; `velocity` is empty when momentum is 0.
pub fn cpu_update(c: &SgdConfig, lr: f32, grad: &[f32], param: &mut [f32], velocity: &mut [f32]) {
    let with_momentum = c.momentum != 0.0;
    for i in 0..param.len() {
        let mut g = grad[i] + c.weight_decay * param[i];
        if with_momentum {
            let v = c.momentum * velocity[i] + g;
            velocity[i] = v;
            g = if c.nesterov { g + c.momentum * v } else { v };
        }
        param[i] -= lr * g;
    }
}
