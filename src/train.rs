//! `gpurt train`: data in, a model trained with validation, checkpoints,
//! metrics and a plot out. Everything runs on the compiled executor.

use crate::backend::{self, DeviceSpec};
use crate::data::{Augment, BatchLoader, DataSpec, Normalizer, Split};
use crate::error::{Error, Result};
use crate::eval::{evaluate, score_logits};
use crate::metrics::{write_metrics, ConfusionMatrix, EpochMetrics};
use crate::model::{Classifier, ClassifierConfig};
use crate::nn::ModelSpec;
use crate::optim::{lr_at, LrSchedule, OptimConfig, OptimizerKind};
use crate::tensor::DType;
use crate::weights::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub model: String,
    pub data: DataSpec,
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: OptimizerKind,
    pub lr: f32,
    pub lr_schedule: LrSchedule,
    pub warmup: usize,
    pub weight_decay: Option<f32>,
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
}

/// What `checkpoint.json` records: enough to rebuild the model, its input
/// pipeline and the point training reached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub format: String,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of the next epoch already trained (after a Ctrl-C stop).
    #[serde(default)]
    pub batch: usize,
    pub step: u64,
    /// Folder (relative to the run) holding this checkpoint's weights and
    /// optimiser state.
    pub files: String,
    pub spec: ModelSpec,
    pub input: Vec<usize>,
    pub classes: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub seed: u64,
    pub data: String,
}

pub const CHECKPOINT: &str = "checkpoint.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIM_FILE: &str = "optim.safetensors";

impl Checkpoint {
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join(CHECKPOINT);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let ck: Checkpoint =
            serde_json::from_str(&text).map_err(|e| Error::format(&p, e.to_string()))?;
        if Path::new(&ck.files).is_absolute() || ck.files.contains("..") {
            return Err(Error::format(
                &p,
                format!("checkpoint folder '{}' is outside the run", ck.files),
            ));
        }
        Ok(ck)
    }
    /// The weights of this checkpoint.
    pub fn model_file(&self, dir: &Path) -> PathBuf {
        dir.join(&self.files).join(MODEL_FILE)
    }
    pub fn optim_file(&self, dir: &Path) -> PathBuf {
        dir.join(&self.files).join(OPTIM_FILE)
    }
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub epochs: Vec<EpochMetrics>,
    /// Test (loss, accuracy); None when training was interrupted.
    pub test: Option<(f64, f64)>,
    pub out: PathBuf,
}

/// Set by the Ctrl-C handler: finish the current batch, save, stop.
pub static STOP: AtomicBool = AtomicBool::new(false);

fn ensure_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = dir.join(".gpurt-write-test");
    std::fs::write(&probe, b"ok").map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub fn train(o: &TrainOptions, log: &mut dyn FnMut(&str)) -> Result<TrainSummary> {
    if o.batch == 0 || o.epochs == 0 {
        return Err(Error::Usage(
            "--batch and --epochs must be at least 1".into(),
        ));
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return Err(Error::Usage(format!(
            "--lr must be a positive number, got {}",
            o.lr
        )));
    }
    let backend = backend::select(&o.device)?;
    let mut full = o.data.load(Split::Train)?;
    if let Some(n) = o.limit {
        full = full.subset(n.min(full.len()));
    }
    let test = Arc::new(o.data.load(Split::Test)?);
    let (train_set, val_set) = full.split_validation(o.val_split, o.seed)?;
    if train_set.len() < o.batch {
        return Err(Error::Usage(format!(
            "{} training images is less than one batch of {}",
            train_set.len(),
            o.batch
        )));
    }
    let norm = Normalizer::fit(&train_set);
    let input = vec![train_set.channels, train_set.height, train_set.width];
    let classes = train_set.num_classes();
    let spec = ModelSpec::resolve(&o.model, classes)?;
    ensure_writable(&o.out)?;

    let mut optim = OptimConfig::new(o.optimizer);
    if let Some(wd) = o.weight_decay {
        optim.weight_decay = wd;
    }
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
    if let Some(dir) = &o.resume {
        let ck = Checkpoint::load(dir)?;
        if ck.spec != spec || ck.input != input {
            return Err(Error::Usage(format!(
                "{}: the checkpoint was trained with a different model or input shape",
                dir.display()
            )));
        }
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
        log(&format!(
            "resumed from {} after epoch {}, batch {} (step {})",
            dir.display(),
            ck.epoch,
            ck.batch,
            ck.step
        ));
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
    let steps_per_epoch = train_set.len() / o.batch;
    let total_steps = steps_per_epoch * o.epochs;
    let mut rows: Vec<EpochMetrics> = match &o.resume {
        Some(dir) => read_metrics(dir),
        None => Vec::new(),
    };
    rows.retain(|r| r.epoch < first_epoch);
    let mut logits = vec![0.0f32; o.batch * classes];

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
        let mut lr = o.lr;
        // A resumed epoch replays the same order and skips what was done.
        let skip = std::mem::take(&mut skip_batches);
        for (bi, b) in loader.enumerate().skip(skip) {
            lr = lr_at(
                o.lr,
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
                    detail: format!("loss is {loss} at epoch {epoch}, batch {} ({first}); try a lower --lr; the last good checkpoint is kept in {}", bi + 1, o.out.display()),
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
            if STOP.load(Ordering::Relaxed) {
                save_checkpoint(
                    &mut model,
                    o,
                    (epoch - 1, bi + 1),
                    &spec,
                    &input,
                    classes,
                    &norm,
                )?;
                log(&format!("interrupted after epoch {epoch}, batch {}: saved a checkpoint in {}; continue with --resume {}", bi + 1, o.out.display(), o.out.display()));
                return Ok(TrainSummary {
                    epochs: rows,
                    test: None,
                    out: o.out.clone(),
                });
            }
            test_hook("GPURT_TEST_STEP_DELAY_MS");
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let (val_loss, val_acc) = if val_set.is_empty() {
            (None, None)
        } else {
            let v = evaluate(&mut model, &val_set, &norm)?;
            (Some(v.loss), Some(v.accuracy))
        };
        let row = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
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
        save_checkpoint(&mut model, o, (epoch, 0), &spec, &input, classes, &norm)?;
        write_metrics(&o.out, &rows)?;
        crate::plot::plot_training(&o.out.join("training.png"), &rows)?;
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

/// Sleep for the milliseconds in env `var` (tests use this to kill a run
/// at a chosen point); a no-op otherwise.
fn test_hook(var: &str) {
    if let Some(ms) = std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Write a checkpoint so that a crash at any instant leaves the previous
/// one intact: weights and optimiser state go into a fresh folder (each
/// file written to a temporary name, fsynced, renamed), then
/// `checkpoint.json` is atomically replaced to point at it, and only then
/// are older folders removed. `model.safetensors` at the top of the run is
/// a convenience copy for users and tools.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    model: &mut Classifier,
    o: &TrainOptions,
    (epoch, batch): (usize, usize),
    spec: &ModelSpec,
    input: &[usize],
    classes: usize,
    norm: &Normalizer,
) -> Result<()> {
    let files = format!("ckpt/step-{:09}", model.step);
    let dir = o.out.join(&files);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    model.save_optim(&dir.join(OPTIM_FILE))?;
    if std::env::var_os("GPURT_TEST_CHECKPOINT_DELAY_MS").is_some() {
        eprintln!("checkpoint: writing {}", dir.display());
        test_hook("GPURT_TEST_CHECKPOINT_DELAY_MS");
    }
    model.save_weights(&dir.join(MODEL_FILE), DType::F32)?;
    let ck = Checkpoint {
        format: "gpurt-checkpoint-v1".into(),
        epoch,
        batch,
        step: model.step,
        files: files.clone(),
        spec: spec.clone(),
        input: input.to_vec(),
        classes,
        mean: norm.mean.clone(),
        std: norm.std.clone(),
        seed: o.seed,
        data: absolute(&o.data).to_string(),
    };
    let json = serde_json::to_vec_pretty(&ck).map_err(|e| Error::Usage(e.to_string()))?;
    write_atomic(&o.out.join(CHECKPOINT), &json)?;
    model.save_weights(&o.out.join(MODEL_FILE), DType::F32)?;
    // Older checkpoints are garbage now; failing to remove one is harmless.
    if let Ok(entries) = std::fs::read_dir(o.out.join("ckpt")) {
        for e in entries.flatten() {
            if e.path() != dir {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if std::env::var_os("GPURT_TEST_CHECKPOINT_DELAY_MS").is_some() {
        eprintln!("checkpoint: saved step {}", model.step);
    }
    Ok(())
}

/// The data spec with an absolute folder, so a run's folder can be
/// evaluated from any working directory.
fn absolute(d: &DataSpec) -> DataSpec {
    let abs = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    match d {
        DataSpec::Mnist(p) => DataSpec::Mnist(abs(p)),
        DataSpec::Cifar10(p) => DataSpec::Cifar10(abs(p)),
    }
}

fn read_metrics(dir: &Path) -> Vec<EpochMetrics> {
    std::fs::read_to_string(dir.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
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
    model.load_weights(&ck.model_file(dir))?;
    Ok((model, ck))
}

/// The normaliser recorded in a checkpoint.
pub fn checkpoint_normalizer(ck: &Checkpoint) -> Normalizer {
    Normalizer {
        mean: ck.mean.clone(),
        std: ck.std.clone(),
    }
}
