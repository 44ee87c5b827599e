//! Publishing a run's checkpoints (see `crate::checkpoint`).

use super::options::TrainOptions;
use crate::checkpoint::{self, Checkpoint, TextRun, BEST_FILE, CHECKPOINT, MODEL_FILE, OPTIM_FILE};
use crate::data::{DataSpec, Normalizer};
use crate::error::{Error, Result};
use crate::metrics::{write_metrics, EpochMetrics};
use crate::model::Classifier;
use crate::nn::ModelSpec;
use crate::tensor::DType;
use crate::testhook;
use crate::weights::write_atomic;
use std::path::{Path, PathBuf};

/// What every save of one run shares.
pub(super) struct RunInfo<'a> {
    pub(super) o: &'a TrainOptions,
    pub(super) spec: &'a ModelSpec,
    pub(super) input: &'a [usize],
    pub(super) classes: usize,
    /// Images: the normaliser; text: none.
    pub(super) norm: Option<&'a Normalizer>,
    pub(super) text: Option<&'a TextRun>,
    /// Data-parallel ranks.
    pub(super) world: usize,
}

impl RunInfo<'_> {
    /// What to tell the user after a failed step: which checkpoint is kept.
    pub(super) fn advice(&self) -> String {
        let keep = match Checkpoint::load(&self.o.out) {
            Ok(ck) => format!(
                "the last good checkpoint (epoch {}, step {}) is kept in {}",
                ck.epoch,
                ck.step,
                self.o.out.display()
            ),
            Err(_) => "no checkpoint was saved (none had been reached)".into(),
        };
        format!("{keep}; try a lower --lr")
    }

    /// Under early stopping, puts the best epoch's weights in the checkpoint
    /// folder `dir` being written: the model's own when the epoch just
    /// completed is the best, else a copy of the previous checkpoint's.
    /// Returns that epoch, or None when there is no such file to keep.
    fn save_best(
        &self,
        model: &mut Classifier,
        dir: &Path,
        batch: usize,
        rows: &[EpochMetrics],
    ) -> Result<Option<usize>> {
        let Some((best, since)) = self.o.early_stop.and_then(|es| es.best(rows)) else {
            return Ok(None);
        };
        let to = dir.join(BEST_FILE);
        if since == 0 && batch == 0 {
            model.save_weights(&to, DType::F32)?;
            return Ok(Some(best));
        }
        let previous = match Checkpoint::load(&self.o.out) {
            Ok(ck) if ck.best_epoch == Some(best) => ck.run_model_file(&self.o.out),
            _ => return Ok(None),
        };
        std::fs::copy(&previous, &to).map_err(|e| Error::io(&previous, e))?;
        Ok(Some(best))
    }

    /// Publish a checkpoint of the model after `epoch` complete epochs and
    /// `batch` batches of the next, with the metrics rows so far. Nothing
    /// non-finite is ever published.
    pub(super) fn save(
        &self,
        model: &mut Classifier,
        (epoch, batch): (usize, usize),
        rows: &[EpochMetrics],
    ) -> Result<()> {
        if let Some(n) = model.first_non_finite()? {
            return Err(Error::NonFinite {
                step: model.step,
                detail: format!(
                    "tensor {n} holds a NaN or infinity after epoch {epoch} though the loss is finite; {}",
                    self.advice()
                ),
            });
        }
        let o = self.o;
        checkpoint::commit(&o.out, model.step, |dir, files| {
            model.save_optim(&dir.join(OPTIM_FILE))?;
            testhook::point("ckpt-optim-written");
            model.save_weights(&dir.join(MODEL_FILE), DType::F32)?;
            testhook::point("ckpt-model-written");
            write_metrics(dir, rows)?;
            crate::plot::plot_training(&dir.join("training.png"), rows)?;
            testhook::point("ckpt-metrics-written");
            let best_epoch = self.save_best(model, dir, batch, rows)?;
            let ck = Checkpoint {
                format: checkpoint::FORMAT.into(),
                epoch,
                batch,
                batch_size: Some(o.batch),
                world: (self.world > 1).then_some(self.world),
                step: model.step,
                files: files.to_string(),
                spec: self.spec.clone(),
                input: self.input.to_vec(),
                classes: self.classes,
                mean: self.norm.map(|n| n.mean.clone()).unwrap_or_default(),
                std: self.norm.map(|n| n.std.clone()).unwrap_or_default(),
                seed: o.seed,
                data: absolute(&o.data).to_string(),
                best_epoch,
                text: self.text.cloned(),
            };
            let json = serde_json::to_vec_pretty(&ck).map_err(|e| Error::Usage(e.to_string()))?;
            write_atomic(&dir.join(CHECKPOINT), &json)
        })
    }
}

/// The data spec with an absolute folder, so a run's folder can be
/// evaluated from any working directory.
fn absolute(d: &DataSpec) -> DataSpec {
    let abs = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    d.with_dir(abs(&d.dir().to_path_buf()))
}
