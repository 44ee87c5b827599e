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
