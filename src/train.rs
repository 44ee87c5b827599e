//! `gpurt train`: data in, a model trained with validation, checkpoints,
//! metrics and a plot out. Everything runs on the compiled executor.

use crate::backend::{self, DeviceSpec};
use crate::checkpoint::{
    self, Checkpoint, BEST_FILE, CHECKPOINT, MAX_EPOCHS, MODEL_FILE, OPTIM_FILE,
};
use crate::data::{Augment, BatchLoader, DataSpec, Normalizer, Split};
use crate::error::{Error, Result};
use crate::eval::{evaluate, score_logits};
use crate::metrics::{write_metrics, ConfusionMatrix, EpochMetrics};
use crate::model::{Classifier, ClassifierConfig};
use crate::nn::ModelSpec;
use crate::optim::{lr_at, LrSchedule, OptimConfig, OptimizerKind};
use crate::tensor::DType;
use crate::testhook;
use crate::weights::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Preset name or TOML path; `None`: the resumed checkpoint's model,
    /// or the `cnn` preset.
    pub model: Option<String>,
    pub data: DataSpec,
    pub epochs: usize,
    pub batch: usize,
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

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub epochs: Vec<EpochMetrics>,
    /// Test (loss, accuracy); None when training was interrupted.
    pub test: Option<(f64, f64)>,
    pub out: PathBuf,
}

impl TrainSummary {
    /// Stopped by Ctrl-C (after saving) rather than run to the end.
    pub fn interrupted(&self) -> bool {
        self.test.is_none()
    }
}

/// Set by the Ctrl-C handler: finish the current batch, save, stop.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// A batch loss this many times that of guessing uniformly (ln classes)
/// is not a spike of healthy training but divergence.
const DIVERGED_BATCH: f64 = 100.0;

/// Batch losses the running median is taken over, and how many it needs.
const WATCH_WINDOW: usize = 200;
const WATCH_MIN: usize = 50;
/// A batch loss this many times the running median, and above guessing,
/// is divergence even though it is finite.
const DIVERGED_MEDIAN: f64 = 10.0;

/// The recent batch losses, for the running-median divergence guard: a
/// run that had learned (its median far below guessing) and then jumps
/// back above guessing is diverging, whatever the absolute numbers.
struct LossWatch {
    recent: std::collections::VecDeque<f32>,
}

impl LossWatch {
    fn new() -> Self {
        LossWatch {
            recent: std::collections::VecDeque::with_capacity(WATCH_WINDOW),
        }
    }

    /// The running median if `loss` is over [`DIVERGED_MEDIAN`] times it
    /// and over `floor`; otherwise records `loss` and returns None.
    fn diverged(&mut self, loss: f32, floor: f64) -> Option<f64> {
        if self.recent.len() >= WATCH_MIN {
            let mut v: Vec<f32> = self.recent.iter().copied().collect();
            let mid = v.len() / 2;
            let median = f64::from(*v.select_nth_unstable_by(mid, f32::total_cmp).1);
            let loss = f64::from(loss);
            if loss > DIVERGED_MEDIAN * median && loss > floor {
                return Some(median);
            }
        }
        if self.recent.len() == WATCH_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(loss);
        None
    }
}

/// Options checked before anything is read or written.
fn check_options(o: &TrainOptions) -> Result<()> {
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
    if let Some(wd) = o.weight_decay {
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(Error::Usage(format!(
                "--weight-decay must be a finite number >= 0, got {wd}"
            )));
        }
    }
    Ok(())
}

/// What a resumed run starts from.
struct Resume {
    ck: Checkpoint,
    dir: PathBuf,
}

fn load_resume(dir: &Path, o: &TrainOptions) -> Result<Resume> {
    let ck = Checkpoint::load(dir)?;
    if ck.batch > 0 && ck.batch_size.is_some_and(|b| b != o.batch) {
        return Err(Error::Usage(format!(
            "{}: the run stopped {} batches into epoch {} with --batch {}; resume it with the same --batch (got {})",
            dir.display(),
            ck.batch,
            ck.epoch + 1,
            ck.batch_size.unwrap_or_default(),
            o.batch
        )));
    }
    for f in [ck.model_file(dir), ck.optim_file(dir)] {
        if !f.is_file() {
            return Err(Error::format(
                dir.join(CHECKPOINT),
                format!("it points at {}, which is missing", f.display()),
            ));
        }
    }
    Ok(Resume {
        ck,
        dir: dir.to_path_buf(),
    })
}

pub fn train(o: &TrainOptions, log: &mut dyn FnMut(&str)) -> Result<TrainSummary> {
    check_options(o)?;
    let backend = backend::select(&o.device)?;
    let resume = o.resume.as_deref().map(|d| load_resume(d, o)).transpose()?;
    let mut full = o.data.load(Split::Train)?;
    if let Some(n) = o.limit {
        full = full.subset(n.min(full.len()));
    }
    let test = Arc::new(o.data.load(Split::Test)?);
    let input = vec![full.channels, full.height, full.width];
    if [test.channels, test.height, test.width] != input[..] {
        return Err(Error::Usage(format!(
            "{}: test images are {}x{}x{} but training images are {}x{}x{}",
            o.data, test.channels, test.height, test.width, input[0], input[1], input[2]
        )));
    }
    o.augment.check(input[1], input[2])?;
    let (train_set, val_set) = full.split_validation(o.val_split, o.seed)?;
    if train_set.len() < o.batch {
        return Err(Error::Usage(format!(
            "{} training images is less than one batch of {}",
            train_set.len(),
            o.batch
        )));
    }
    let norm = Normalizer::fit(&train_set);
    let classes = train_set.num_classes();
    let spec = match (&o.model, &resume) {
        (Some(m), _) => ModelSpec::resolve(m, classes)?,
        (None, Some(r)) => r.ck.spec.clone(),
        (None, None) => ModelSpec::resolve("cnn", classes)?,
    };
    let steps_per_epoch = train_set.len() / o.batch;
    let total_steps = steps_per_epoch.checked_mul(o.epochs).ok_or_else(|| {
        Error::Limit(format!(
            "{} epochs of {steps_per_epoch} steps overflow the step count",
            o.epochs
        ))
    })?;
    if let Some(r) = &resume {
        check_resume_fits(r, &spec, &input, steps_per_epoch)?;
    }
    let _lock = checkpoint::lock(&o.out)?;

    let mut optim = OptimConfig::new(o.optimizer);
    if let Some(wd) = o.weight_decay {
        optim.weight_decay = wd;
    }
    optim.label_smoothing = o.label_smoothing;
    optim.clip_grad_norm = o.clip_grad_norm;
    let cfg = ClassifierConfig {
        spec: spec.clone(),
        input: input.clone(),
        classes,
        train_batch: Some(o.batch),
        infer_batch: 256,
        optim,
        seed: o.seed,
        fuse: o.fuse,
    };
    let t_compile = Instant::now();
    let mut model = Classifier::new(cfg, backend.as_ref())?;
    let mut first_epoch = 1;
    let mut skip_batches = 0;
    let mut rows: Vec<EpochMetrics> = Vec::new();
    if let Some(Resume { ck, dir }) = &resume {
        model.load_weights(&ck.model_file(dir))?;
        model.load_optim(&ck.optim_file(dir))?;
        if model.step != ck.step {
            return Err(Error::format(
                ck.optim_file(dir),
                format!(
                    "optimiser state is at step {} but the checkpoint says {}",
                    model.step, ck.step
                ),
            ));
        }
        first_epoch = ck.epoch + 1;
        skip_batches = ck.batch;
        rows = ck.metrics(dir);
        log(&format!(
            "resumed from {} after epoch {}, batch {} (step {})",
            dir.display(),
            ck.epoch,
            ck.batch,
            ck.step
        ));
        if ck.epoch >= o.epochs {
            log(&format!(
                "the run has already trained {} epochs (--epochs {}): nothing to train, only the test",
                ck.epoch, o.epochs
            ));
        }
    }
    log(&format!(
        "model {} ({} parameters) on {}, input {:?}, {} train / {} val / {} test images, compiled in {:.0} ms",
        spec.name,
        model.num_params(),
        model.device(),
        input,
        train_set.len(),
        val_set.len(),
        test.len(),
        t_compile.elapsed().as_secs_f64() * 1e3
    ));

    let train_set = Arc::new(train_set);
    let val_set = Arc::new(val_set);
    let run = RunInfo {
        o,
        spec: &spec,
        input: &input,
        classes,
        norm: &norm,
    };
    let mut logits = vec![0.0f32; o.batch * classes];
    let chance = (classes.max(2) as f64).ln();
    let mut watch = LossWatch::new();

    for epoch in first_epoch..=o.epochs {
        let t0 = Instant::now();
        let loader = BatchLoader::new(
            Arc::clone(&train_set),
            norm.clone(),
            o.batch,
            Some(o.seed),
            epoch as u64,
            o.augment,
            true,
        )?;
        let bar = progress_bar(o.progress, loader.num_batches(), epoch, o.epochs);
        let mut cm = ConfusionMatrix::new(classes);
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        // Reduce-on-plateau: the rate this epoch, from the validation
        // losses so far (a resumed run recomputes the same).
        let base_lr = match o.lr_schedule {
            LrSchedule::Plateau(p) => p.lr(o.lr, rows.iter().filter_map(|r| r.val_loss)),
            _ => o.lr,
        };
        let mut lr = base_lr;
        // A resumed epoch replays the same order and skips what was done.
        let skip = std::mem::take(&mut skip_batches);
        for (bi, b) in loader.enumerate().skip(skip) {
            lr = lr_at(
                base_lr,
                o.lr_schedule,
                model.step as usize,
                total_steps,
                steps_per_epoch,
                o.warmup,
            );
            let loss = model.train_step(&b.x, &b.y, lr)?;
            if !loss.is_finite() {
                // The cheap check tripped: now scan the model to say where.
                let first = model
                    .first_non_finite()?
                    .map_or("no parameter is non-finite yet".to_string(), |n| {
                        format!("first non-finite tensor: {n}")
                    });
                return Err(Error::NonFinite {
                    step: model.step,
                    detail: format!(
                        "loss is {loss} at epoch {epoch}, batch {} ({first}); {}",
                        bi + 1,
                        run.advice()
                    ),
                });
            }
            if f64::from(loss) > DIVERGED_BATCH * chance {
                return Err(Error::Diverged {
                    step: model.step,
                    detail: format!(
                        "batch loss {loss:.4e} at epoch {epoch}, batch {} is over {DIVERGED_BATCH:.0} times that of guessing ({chance:.3}); {}",
                        bi + 1,
                        run.advice()
                    ),
                });
            }
            if let Some(median) = watch.diverged(loss, chance) {
                return Err(Error::Diverged {
                    step: model.step,
                    detail: format!(
                        "batch loss {loss:.4e} at epoch {epoch}, batch {} is over {DIVERGED_MEDIAN:.0} times the median ({median:.4}) of the last {} batches and above that of guessing ({chance:.3}); {}",
                        bi + 1,
                        watch.recent.len(),
                        run.advice()
                    ),
                });
            }
            model.train_logits(&mut logits)?;
            score_logits(&logits, &b.y, classes, b.len, &mut cm)?;
            loss_sum += loss as f64 * b.len as f64;
            seen += b.len;
            if let Some(bar) = &bar {
                bar.inc(1);
                if bi % 10 == 0 {
                    let ips = seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!(
                        "loss {:.4} acc {:.2}% {:.0} img/s",
                        loss_sum / seen as f64,
                        cm.accuracy() * 100.0,
                        ips
                    ));
                }
            }
            testhook::point("step");
            if STOP.load(Ordering::Relaxed) {
                run.save(&mut model, (epoch - 1, bi + 1), &rows)?;
                log(&format!("interrupted after epoch {epoch}, batch {}: saved a checkpoint in {}; continue with --resume {}", bi + 1, o.out.display(), o.out.display()));
                return Ok(TrainSummary {
                    epochs: rows,
                    test: None,
                    out: o.out.clone(),
                });
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let train_loss = loss_sum / seen.max(1) as f64;
        check_divergence(&rows, epoch, train_loss, chance, model.step, &run)?;
        let (val_loss, val_acc) = if val_set.is_empty() {
            (None, None)
        } else {
            let v = evaluate(&mut model, &val_set, &norm)?;
            (Some(v.loss), Some(v.accuracy))
        };
        let row = EpochMetrics {
            epoch,
            train_loss,
            train_acc: cm.accuracy(),
            val_loss,
            val_acc,
            lr: lr as f64,
            seconds: train_secs,
            images_per_sec: seen as f64 / train_secs.max(1e-9),
        };
        log(&format!(
            "epoch {epoch}/{}: loss {:.4} acc {:.2}% | val loss {} acc {} | {:.1} s, {:.0} img/s, lr {:.2e}",
            o.epochs,
            row.train_loss,
            row.train_acc * 100.0,
            val_loss.map_or("-".into(), |v| format!("{v:.4}")),
            val_acc.map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
            train_secs,
            row.images_per_sec,
            lr
        ));
        rows.push(row);
        run.save(&mut model, (epoch, 0), &rows)?;
        // Keras' EarlyStopping: stop once `patience` epochs in a row (at
        // least one) brought no improvement.
        if let Some((es, (best, since))) = o.early_stop.and_then(|es| Some((es, es.best(&rows)?))) {
            if since >= es.patience.max(1) && epoch < o.epochs {
                log(&format!(
                    "early stop after epoch {epoch}: {since} epochs without a better {}; the run's model is epoch {best}'s",
                    es.monitor.name()
                ));
                break;
            }
        }
    }
    // Under early stopping the best epoch's weights are the run's model.
    if o.early_stop.is_some() {
        let ck = Checkpoint::load(&o.out)?;
        if let Some(best) = ck.best_epoch {
            model.load_weights(&ck.run_model_file(&o.out))?;
            log(&format!("restored the best epoch's weights (epoch {best})"));
        }
    }

    let t = evaluate(&mut model, &test, &norm)?;
    log(&format!(
        "test: loss {:.4} accuracy {:.2}% ({} images)",
        t.loss,
        t.accuracy * 100.0,
        test.len()
    ));
    Ok(TrainSummary {
        epochs: rows,
        test: Some((t.loss, t.accuracy)),
        out: o.out.clone(),
    })
}

/// A resumed checkpoint must fit the model, the input and the epoch
/// length of this run.
fn check_resume_fits(
    r: &Resume,
    spec: &ModelSpec,
    input: &[usize],
    steps_per_epoch: usize,
) -> Result<()> {
    let ck = &r.ck;
    let at = r.dir.display();
    if ck.input != input {
        return Err(Error::Usage(format!(
            "{at}: the checkpoint was trained on {:?} images but this data is {input:?}",
            ck.input
        )));
    }
    if ck.spec != *spec {
        let hint = match ModelSpec::preset(&ck.spec.name, ck.classes) {
            Some(p) if p == ck.spec => {
                format!("; pass --model {} or leave --model out", ck.spec.name)
            }
            _ => "; leave --model out to use the checkpoint's own model".into(),
        };
        return Err(Error::Usage(format!(
            "{at}: the checkpoint holds model '{}' but --model gives '{}'{hint}",
            ck.spec.name, spec.name
        )));
    }
    if ck.batch >= steps_per_epoch.max(1) {
        return Err(Error::Usage(format!(
            "{at}: the checkpoint is {} batches into an epoch of {steps_per_epoch}",
            ck.batch
        )));
    }
    Ok(())
}

/// Stop, keeping the last checkpoint, when an epoch's training loss is far
/// above both chance and the best epoch so far: a healthy run never jumps
/// like this, while a too-large learning rate (Adam at `--lr 3`) does
/// without ever producing a NaN.
fn check_divergence(
    rows: &[EpochMetrics],
    epoch: usize,
    loss: f64,
    chance: f64,
    step: u64,
    run: &RunInfo,
) -> Result<()> {
    let best = rows
        .iter()
        .map(|r| r.train_loss)
        .fold(f64::INFINITY, f64::min);
    let limit = if best.is_finite() {
        (4.0 * best).max(2.0 * chance)
    } else {
        2.0 * chance
    };
    if loss > limit {
        return Err(Error::Diverged {
            step,
            detail: format!(
                "epoch {epoch} ended with training loss {loss:.4e}, above {limit:.3} (twice that of guessing, or four times the best epoch so far); {}",
                run.advice()
            ),
        });
    }
    Ok(())
}

/// What every save of one run shares.
struct RunInfo<'a> {
    o: &'a TrainOptions,
    spec: &'a ModelSpec,
    input: &'a [usize],
    classes: usize,
    norm: &'a Normalizer,
}

impl RunInfo<'_> {
    /// What to tell the user after a failed step: which checkpoint is kept.
    fn advice(&self) -> String {
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
    fn save(
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
                step: model.step,
                files: files.to_string(),
                spec: self.spec.clone(),
                input: self.input.to_vec(),
                classes: self.classes,
                mean: self.norm.mean.clone(),
                std: self.norm.std.clone(),
                seed: o.seed,
                data: absolute(&o.data).to_string(),
                best_epoch,
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

fn progress_bar(
    enabled: bool,
    len: usize,
    epoch: usize,
    epochs: usize,
) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "epoch {epoch}/{epochs} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ETA {{eta}}"
    ))
    .expect("static template")
    .progress_chars("=> ");
    bar.set_style(style);
    Some(bar)
}

/// Build an inference-only classifier from a training run's folder.
pub fn load_run(dir: &Path, device: &DeviceSpec, batch: usize) -> Result<(Classifier, Checkpoint)> {
    let ck = Checkpoint::load(dir)?;
    let backend = backend::select(device)?;
    let cfg = ClassifierConfig {
        spec: ck.spec.clone(),
        input: ck.input.clone(),
        classes: ck.classes,
        train_batch: None,
        infer_batch: batch,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: ck.seed,
        fuse: true,
    };
    let mut model = Classifier::new(cfg, backend.as_ref())?;
    model.load_weights(&ck.run_model_file(dir))?;
    Ok((model, ck))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard needs WATCH_MIN losses, then stops a loss over ten times
    /// the median that is also above guessing, and nothing less.
    #[test]
    fn loss_watch_stops_a_jump_over_the_running_median() {
        let chance = 10f64.ln();
        let mut w = LossWatch::new();
        // Early on anything passes (the model has not learned yet).
        assert_eq!(w.diverged(50.0, chance), None);
        for i in 0..WATCH_MIN {
            let l = 0.1 + 0.001 * (i % 7) as f32;
            assert_eq!(w.diverged(l, chance), None);
        }
        // 20x the median but below guessing: a noisy batch, not divergence.
        assert_eq!(w.diverged(2.0, chance), None);
        // Above guessing and over 10x the median (0.1-ish): stopped.
        let m = w.diverged(3.0, chance).expect("diverged");
        assert!((0.1..0.11).contains(&m), "median {m}");
        // The window slides: after a slow rise to 1 (each loss within ten
        // times the median), 3 is within ten times the new median.
        for _ in 0..WATCH_WINDOW {
            assert_eq!(w.diverged(1.0, chance), None);
        }
        assert_eq!(w.diverged(3.0, chance), None);
        assert_eq!(w.recent.len(), WATCH_WINDOW);
    }
}
