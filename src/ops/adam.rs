//! Adam and AdamW updates with bias correction, as PyTorch's
//! `torch.optim.Adam` / `AdamW` define them. One launch updates every
//! parameter tensor of a step (multi-tensor).

use crate::graph::ir::ScalarId;

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
