//! Adam and AdamW updates with bias correction, as PyTorch's
//! `torch.optim.Adam` / `AdamW` define them. One launch updates every
//! parameter tensor of a step (multi-tensor).

use crate::graph::ir::ScalarId;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW: decay the weights directly instead of adding to the gradient.
    pub decoupled: bool,
    pub lr: ScalarId,
    /// The 1-based step count, for bias correction.
    pub step: ScalarId,
}

pub fn cpu_update(
    c: &AdamConfig,
    lr: f32,
    step: f32,
    grad: &[f32],
    param: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let bc1 = 1.0 - c.beta1.powf(step);
    let bc2 = 1.0 - c.beta2.powf(step);
    let step_size = lr / bc1;
    let inv_sqrt_bc2 = 1.0 / bc2.sqrt();
    let decay = if c.decoupled {
        1.0 - lr * c.weight_decay
    } else {
        1.0
    };
    let l2 = if c.decoupled { 0.0 } else { c.weight_decay };
    let body = |(((p, m), v), &g): (((&mut f32, &mut f32), &mut f32), &f32)| {
        let g = g + l2 * *p;
        *m = c.beta1 * *m + (1.0 - c.beta1) * g;
        *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
        let denom = v.sqrt() * inv_sqrt_bc2 + c.eps;
        *p = *p * decay - step_size * *m / denom;
    };
    if param.len() >= 1 << 16 {
        param
            .par_iter_mut()
            .zip(m.par_iter_mut())
            .zip(v.par_iter_mut())
            .zip(grad.par_iter())
            .for_each(body);
    } else {
        param
            .iter_mut()
            .zip(m.iter_mut())
            .zip(v.iter_mut())
            .zip(grad.iter())
            .for_each(body);
    }
}
