//! Optimisers as graph ops (SGD with momentum/Nesterov/weight decay, Adam,
//! AdamW) and learning-rate schedules. The learning rate and step count are
//! runtime scalars, so a schedule never recompiles anything.

use crate::error::{Error, Result};
use crate::graph::autodiff::gradients;
use crate::graph::ir::{Graph, ValueId};
use crate::ops::adam::AdamConfig;
use crate::ops::sgd::SgdConfig;
use crate::ops::Op;
use crate::tensor::Shape;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    Adam,
    AdamW,
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            _ => Err(Error::Usage(format!(
                "unknown optimizer '{s}' (expected sgd, adam or adamw)"
            ))),
        }
    }
}

/// Hyper-parameters, with PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub weight_decay: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Label smoothing of the training loss, as PyTorch's
    /// `CrossEntropyLoss(label_smoothing)` (0: none).
    pub label_smoothing: f32,
    /// Clip the gradients to this global L2 norm before the update
    /// ([`clip_grad_norm`]).
    pub clip_grad_norm: Option<f32>,
}

impl OptimConfig {
    pub fn new(kind: OptimizerKind) -> Self {
        OptimConfig {
            kind,
            weight_decay: if kind == OptimizerKind::AdamW {
                0.01
            } else {
                0.0
            },
            momentum: if kind == OptimizerKind::Sgd { 0.9 } else { 0.0 },
            nesterov: false,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            label_smoothing: 0.0,
            clip_grad_norm: None,
        }
    }

    /// The optimiser state tensors kept per parameter, by suffix.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self.kind {
            OptimizerKind::Sgd if self.momentum != 0.0 => &["momentum_buffer"],
            OptimizerKind::Sgd => &[],
            OptimizerKind::Adam | OptimizerKind::AdamW => &["exp_avg", "exp_avg_sq"],
        }
    }
}

/// Name of a parameter's optimiser state tensor.
pub fn state_name(param: &str, which: &str) -> String {
    format!("optim.{which}.{param}")
}

/// Differentiate `loss` with respect to every parameter and append one
/// update node per parameter. Runtime scalars: `lr`, `step` (1-based).
pub fn append_update(g: &mut Graph, loss: ValueId, cfg: &OptimConfig) -> Result<()> {
    let params = g.params();
    if params.is_empty() {
        return Err(Error::Model("the model has no trainable parameters".into()));
    }
    let ids: Vec<ValueId> = params.iter().map(|(_, v)| *v).collect();
    let mut grads = gradients(g, loss, &ids)?;
    if let Some(max_norm) = cfg.clip_grad_norm {
        grads = clip_grad_norm(g, &grads, max_norm)?;
    }
    let pairs: Vec<(ValueId, ValueId)> = ids.into_iter().zip(grads).collect();
    apply_gradients(g, &pairs, cfg)
}

/// The prefix of the persistent gradient tensors of a data-parallel step
/// (never saved: they are scratch between the two programs).
pub const GRAD_PREFIX: &str = "grad.";

/// A data-parallel step's first program: differentiate `loss` and store
/// each gradient in the persistent state `grad.<parameter>`, declared in
/// parameter order so that together they are one contiguous region of the
/// arena (one all-reduce covers the model; `plan::compile` lays state out
/// in declaration order).
pub fn append_gradient_store(g: &mut Graph, loss: ValueId) -> Result<()> {
    let params = g.params();
    if params.is_empty() {
        return Err(Error::Model("the model has no trainable parameters".into()));
    }
    let ids: Vec<ValueId> = params.iter().map(|(_, v)| *v).collect();
    let grads = gradients(g, loss, &ids)?;
    for ((name, _), grad) in params.iter().zip(grads) {
        g.store(grad, &format!("{GRAD_PREFIX}{name}"))?;
    }
    Ok(())
}

/// A data-parallel step's second program: the stored gradients (summed
/// over `world` ranks by then) scaled by `1/world`, so that they are the
/// gradient of the mean loss over the global batch, then clipped and
/// applied as [`append_update`] does. `params` are the model's
/// parameters with their shapes, in declaration order. `buffers` (batch
/// norm's running statistics), summed with the gradients, are divided by
/// `world` in place: every rank keeps the mean of the ranks' statistics,
/// so the ranks stay identical (PyTorch's DDP instead copies rank 0's).
pub fn update_from_stored(
    g: &mut Graph,
    params: &[(String, Shape)],
    buffers: &[(String, Shape)],
    cfg: &OptimConfig,
    world: usize,
) -> Result<()> {
    for (name, shape) in buffers {
        let summed = g.state(name, shape.clone())?;
        let mean = g.scale(summed, 1.0 / world as f32)?;
        g.store(mean, name)?;
    }
    let mut ids = Vec::with_capacity(params.len());
    let mut grads = Vec::with_capacity(params.len());
    for (name, shape) in params {
        ids.push(g.param(name, shape.clone())?);
        let summed = g.state(&format!("{GRAD_PREFIX}{name}"), shape.clone())?;
        grads.push(match world {
            1 => summed,
            w => g.scale(summed, 1.0 / w as f32)?,
        });
    }
    if let Some(max_norm) = cfg.clip_grad_norm {
        grads = clip_grad_norm(g, &grads, max_norm)?;
    }
    let pairs: Vec<(ValueId, ValueId)> = ids.into_iter().zip(grads).collect();
    apply_gradients(g, &pairs, cfg)
}

/// The gradients scaled together so that their global L2 norm is at most
/// `max_norm`, as PyTorch's `clip_grad_norm_`: each is multiplied by
/// `min(1, max_norm / ‖g‖)`, with `‖g‖ = sqrt(Σ g² + 1e-12)` (PyTorch adds
/// 1e-6 to the norm instead; the two agree to f32 rounding unless the
/// norm is near 1e-6). Composed of primitives (sums, `rsqrt`, `relu`), so
/// every backend runs it; the elementwise steps fuse.
pub fn clip_grad_norm(g: &mut Graph, grads: &[ValueId], max_norm: f32) -> Result<Vec<ValueId>> {
    g.clip_grad_norm(grads, max_norm)
}

/// Append one update node per `(parameter, gradient)` pair, with the
/// gradients given (from [`crate::graph::autodiff::vjp`], or an input
/// the host fills). Runtime scalars: `lr`, and `step` (1-based) for Adam.
pub fn apply_gradients(
    g: &mut Graph,
    pairs: &[(ValueId, ValueId)],
    cfg: &OptimConfig,
) -> Result<()> {
    let lr = g.scalar("lr");
    for &(p, grad) in pairs {
        let name = match &g.value(p).role {
            crate::graph::ir::Role::Param(n) => n.clone(),
            other => {
                return Err(Error::Usage(format!(
                    "apply_gradients: value {} is {other:?}, not a parameter",
                    p.0
                )))
            }
        };
        if g.shape(grad) != g.shape(p) {
            return Err(Error::shape(
                "apply_gradients",
                format!(
                    "parameter '{name}' is {} but its gradient is {}",
                    g.shape(p),
                    g.shape(grad)
                ),
            ));
        }
        let (name, p) = (&name, &p);
        let shape = g.shape(*p).clone();
        let mut mutates = vec![*p];
        for s in cfg.state_names() {
            mutates.push(g.state(&state_name(name, s), shape.clone())?);
        }
        let op = match cfg.kind {
            OptimizerKind::Sgd => Op::SgdUpdate(SgdConfig {
                momentum: cfg.momentum,
                nesterov: cfg.nesterov,
                weight_decay: cfg.weight_decay,
                lr,
            }),
            OptimizerKind::Adam | OptimizerKind::AdamW => Op::AdamUpdate(AdamConfig {
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
                decoupled: cfg.kind == OptimizerKind::AdamW,
                lr,
                step: g.scalar("step"),
            }),
        };
        g.push_node(op, vec![grad], vec![], mutates)?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f32,
    },
    /// Cosine decay from the base rate to 0 over the run.
    Cosine,
    /// Reduce when the validation loss stops improving (see [`Plateau`]).
    Plateau(Plateau),
}

/// PyTorch's `ReduceLROnPlateau` in its default mode (`min`, relative
/// threshold 1e-4, no cooldown): after each validated epoch, a loss below
/// `best·(1 − 1e-4)` is an improvement; more than `patience` epochs in a row
/// without one multiply the rate by `factor`, never below `min_lr`.
///
/// The state is a function of the validation losses so far, so it is
/// recomputed from the run's metrics and a resumed run continues exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plateau {
    pub factor: f32,
    pub patience: usize,
    pub min_lr: f32,
}

impl Default for Plateau {
    /// PyTorch's defaults.
    fn default() -> Self {
        Plateau {
            factor: 0.1,
            patience: 10,
            min_lr: 0.0,
        }
    }
}

impl Plateau {
    /// Relative improvement that counts (PyTorch's `threshold`).
    pub const THRESHOLD: f64 = 1e-4;

    /// The rate after the epochs whose validation losses are `losses`,
    /// starting from `base`.
    pub fn lr(&self, base: f32, losses: impl IntoIterator<Item = f64>) -> f32 {
        let (mut lr, mut best, mut bad) = (base, f64::INFINITY, 0usize);
        for loss in losses {
            if loss < best * (1.0 - Self::THRESHOLD) {
                best = loss;
                bad = 0;
            } else {
                bad += 1;
            }
            if bad > self.patience {
                lr = (lr * self.factor).max(self.min_lr);
                bad = 0;
            }
        }
        lr
    }

    pub fn check(&self) -> Result<()> {
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(Error::Usage(format!(
                "--plateau-factor must be in (0, 1), got {}",
                self.factor
            )));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return Err(Error::Usage(format!(
                "--min-lr must be a finite number >= 0, got {}",
                self.min_lr
            )));
        }
        Ok(())
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "step" => Ok(LrSchedule::Step {
                every: 1,
                gamma: 0.5,
            }),
            "cosine" => Ok(LrSchedule::Cosine),
            "plateau" => Ok(LrSchedule::Plateau(Plateau::default())),
            _ => Err(Error::Usage(format!(
                "unknown lr schedule '{s}' (expected constant, step, cosine or plateau)"
            ))),
        }
    }
}

/// Learning rate for 0-based `step` of `total` steps with `steps_per_epoch`,
/// after a linear warm-up of `warmup` steps. For [`LrSchedule::Plateau`],
/// `base` is the rate [`Plateau::lr`] gives for the epoch.
pub fn lr_at(
    base: f32,
    schedule: LrSchedule,
    step: usize,
    total: usize,
    steps_per_epoch: usize,
    warmup: usize,
) -> f32 {
    if step < warmup {
        return base * (step + 1) as f32 / warmup as f32;
    }
    match schedule {
        LrSchedule::Constant | LrSchedule::Plateau(_) => base,
        LrSchedule::Step { every, gamma } => {
            base * gamma.powi((step / steps_per_epoch.max(1) / every.max(1)) as i32)
        }
        LrSchedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f32;
            let t = (step - warmup) as f32 / span;
            base * 0.5 * (1.0 + (std::f32::consts::PI * t.min(1.0)).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's ReduceLROnPlateau(factor=0.5, patience=1) on the same
    /// losses (stepped by hand from its source: an improvement is a loss
    /// below best·(1 − 1e-4), so 0.8999 after 0.9 counts and the count of
    /// bad epochs restarts after each reduction).
    #[test]
    fn plateau_follows_pytorch() {
        let p = Plateau {
            factor: 0.5,
            patience: 1,
            min_lr: 0.0,
        };
        let losses = [1.0, 0.9, 0.95, 0.8999, 0.97, 0.98, 0.5, 0.6, 0.7, 0.8, 0.9];
        let want = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125];
        for (k, w) in want.iter().enumerate() {
            let got = p.lr(1.0, losses[..=k].iter().copied());
            assert_eq!(got, *w, "after {} epochs", k + 1);
        }
        // The floor holds, and patience 0 reduces on every flat epoch.
        let floor = Plateau {
            factor: 0.1,
            patience: 0,
            min_lr: 0.05,
        };
        assert_eq!(floor.lr(1.0, [1.0, 1.0, 1.0, 1.0]), 0.05);
        assert_eq!(floor.lr(1.0, [1.0, 1.0]), 0.1);
        assert!(Plateau {
            factor: 1.0,
            ..floor
        }
        .check()
        .is_err());
        assert!(Plateau {
            min_lr: -1.0,
            ..floor
        }
        .check()
        .is_err());
        assert!(floor.check().is_ok());
    }

    /// The plateau rate is the base rate handed to `lr_at`, warm-up aside.
    #[test]
    fn lr_at_passes_the_plateau_rate_through() {
        let s = LrSchedule::Plateau(Plateau::default());
        assert_eq!(lr_at(0.25, s, 50, 100, 10, 0), 0.25);
        assert_eq!(lr_at(0.25, s, 0, 100, 10, 4), 0.0625);
    }
}
