//! What a training run is asked to do, and the checks on it made before
//! anything is read or written.

use crate::backend::DeviceSpec;
use crate::checkpoint::MAX_EPOCHS;
use crate::data::{Augment, DataSpec};
use crate::dist::WorldSpec;
use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;
use crate::optim::{LrSchedule, OptimizerKind};
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Preset name or TOML path; `None`: the resumed checkpoint's model,
    /// or the `cnn` preset.
    pub model: Option<String>,
    pub data: DataSpec,
    pub epochs: usize,
    /// Per rank in a data-parallel run.
    pub batch: usize,
    /// Data-parallel ranks (`--world`).
    pub world: WorldSpec,
    /// How long a collective may wait for the other ranks.
    pub dist_timeout: std::time::Duration,
    pub optimizer: OptimizerKind,
    pub lr: f32,
    pub lr_schedule: LrSchedule,
    pub warmup: usize,
    pub weight_decay: Option<f32>,
    /// Clip the gradients to this global L2 norm before each update.
    pub clip_grad_norm: Option<f32>,
    /// Label smoothing of the training loss (PyTorch's
    /// `CrossEntropyLoss(label_smoothing)`), in [0, 1).
    pub label_smoothing: f32,
    pub seed: u64,
    pub device: DeviceSpec,
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    pub val_split: f32,
    pub augment: Augment,
    /// Train on the first N training images only (quick runs, CI).
    pub limit: Option<usize>,
    pub progress: bool,
    /// Apply fusion passes (`--no-fuse` turns them off).
    pub fuse: bool,
    /// Stop when the monitored validation metric has not improved for this
    /// many epochs, and make the best epoch's weights the run's model.
    pub early_stop: Option<EarlyStop>,
    /// How text data is read, split and tokenised.
    pub text: TextOptions,
}

/// Text data settings (`--data text:PATH`).
#[derive(Clone, Debug, Default)]
pub struct TextOptions {
    /// A separate labelled test set; otherwise a stratified split.
    pub test_data: Option<PathBuf>,
    /// Fraction of each class held out for testing without `test_data`.
    pub test_split: f64,
    /// CSV/TSV columns, by header name or 0-based index.
    pub label_column: Option<String>,
    pub text_column: Option<String>,
    /// The table's first row is data, not column names.
    pub no_header: bool,
    pub tokenizer: crate::data::tokenize::TokenizerSettings,
}

/// Keras' `EarlyStopping(monitor, patience, restore_best_weights=True)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyStop {
    pub patience: usize,
    pub monitor: Monitor,
}

/// The validation metric early stopping watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitor {
    /// Lower is better.
    ValLoss,
    /// Higher is better.
    ValAcc,
}

impl std::str::FromStr for Monitor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "val_loss" => Ok(Monitor::ValLoss),
            "val_acc" => Ok(Monitor::ValAcc),
            _ => Err(Error::Usage(format!(
                "unknown --monitor '{s}' (expected val_loss or val_acc)"
            ))),
        }
    }
}

impl Monitor {
    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAcc => "val_acc",
        }
    }
}

impl EarlyStop {
    /// The best epoch (1-based) among `rows` and how many epochs have run
    /// since it; an epoch is better only if strictly better (Keras'
    /// `min_delta = 0`), so ties keep the earlier one.
    pub fn best(&self, rows: &[EpochMetrics]) -> Option<(usize, usize)> {
        let score = |r: &EpochMetrics| match self.monitor {
            Monitor::ValLoss => r.val_loss.map(|v| -v),
            Monitor::ValAcc => r.val_acc,
        };
        let mut best: Option<(usize, f64)> = None;
        for r in rows {
            if let Some(s) = score(r).filter(|s| !s.is_nan()) {
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((r.epoch, s));
                }
            }
        }
        let last = rows.last()?.epoch;
        best.map(|(e, _)| (e, last - e))
    }
}

/// Options checked before anything is read or written.
pub(super) fn check_options(o: &TrainOptions) -> Result<()> {
    if o.batch == 0 || o.epochs == 0 {
        return Err(Error::Usage(
            "--batch and --epochs must be at least 1".into(),
        ));
    }
    if o.epochs > MAX_EPOCHS {
        return Err(Error::Usage(format!(
            "--epochs {} is more than {MAX_EPOCHS}",
            o.epochs
        )));
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return Err(Error::Usage(format!(
            "--lr must be a positive number, got {}",
            o.lr
        )));
    }
    if o.early_stop.is_some() && o.val_split <= 0.0 {
        return Err(Error::Usage(
            "--early-stop watches a validation metric: set --val-split above 0".into(),
        ));
    }
    if let LrSchedule::Plateau(p) = o.lr_schedule {
        p.check()?;
        if o.val_split <= 0.0 {
            return Err(Error::Usage(
                "--lr-schedule plateau watches the validation loss: set --val-split above 0".into(),
            ));
        }
    }
    if !(0.0..1.0).contains(&o.label_smoothing) {
        return Err(Error::Usage(format!(
            "--label-smoothing must be in [0, 1), got {}",
            o.label_smoothing
        )));
    }
    if let Some(c) = o.clip_grad_norm {
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::Usage(format!(
                "--clip-grad-norm must be a positive number, got {c}"
            )));
        }
    }
    if !(0.0..1.0).contains(&o.text.test_split) {
        return Err(Error::Usage(format!(
            "--test-split must be in [0, 1), got {}",
            o.text.test_split
        )));
    }
    if let Some(wd) = o.weight_decay {
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(Error::Usage(format!(
                "--weight-decay must be a finite number >= 0, got {wd}"
            )));
        }
    }
    Ok(())
}
