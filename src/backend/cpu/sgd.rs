//! CPU kernels of `ops::sgd`.

use crate::ops::sgd::*;

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
