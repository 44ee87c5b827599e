//! `gpurt train`: data in, a model trained with validation, checkpoints,
//! metrics and a plot out. Everything runs on the compiled executor.
mod data;
mod dist_sync;
mod guards;
mod options;
mod save;

pub use data::text_source;
use guards::{check_divergence, LossWatch, DIVERGED_BATCH, DIVERGED_MEDIAN};
use options::check_options;
pub use options::{EarlyStop, Monitor, TextOptions, TrainOptions};
use save::RunInfo;

use crate::backend::{self, DeviceSpec};
use crate::checkpoint::{self, Checkpoint, CHECKPOINT};

use crate::data::Shard;
use crate::dist::{self, Collective};
use crate::error::{Error, Result};
use crate::eval::{evaluate_shard, score_logits};
use crate::metrics::{ConfusionMatrix, EpochMetrics};
use crate::model::{Classifier, ClassifierConfig};
use crate::nn::spec::InputKind;
use crate::nn::ModelSpec;
use crate::optim::{lr_at, LrSchedule, OptimConfig, OptimizerKind};
use crate::testhook;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub epochs: Vec<EpochMetrics>,
    /// Test (loss, accuracy); None when training was interrupted.
    pub test: Option<(f64, f64)>,
    pub out: PathBuf,
    /// This process's rank in a data-parallel run (0 alone).
    pub rank: usize,
}

impl TrainSummary {
    /// Stopped by Ctrl-C (after saving) rather than run to the end.
    pub fn interrupted(&self) -> bool {
        self.test.is_none()
    }
}

/// Set by the Ctrl-C handler: finish the current batch, save, stop.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// What a resumed run starts from.
struct Resume {
    ck: Checkpoint,
    dir: PathBuf,
}

fn load_resume(dir: &Path, o: &TrainOptions, world: usize) -> Result<Resume> {
    let ck = Checkpoint::load(dir)?;
    let ck_world = ck.world.unwrap_or(1);
    if ck.batch > 0 && ck_world != world {
        return Err(Error::Usage(format!(
            "{}: the run stopped {} batches into epoch {} with {ck_world} rank(s); resume it with the same number of ranks (got {world})",
            dir.display(),
            ck.batch,
            ck.epoch + 1
        )));
    }
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

/// Train as `o` says: one process, or one rank of a data-parallel run
/// started by an MPI launcher (`--world`). Only rank 0 logs and writes
/// the run folder.
pub fn train(o: &TrainOptions, log: &mut dyn FnMut(&str)) -> Result<TrainSummary> {
    check_options(o)?;
    let group = dist::join(o.world, o.dist_timeout)?;
    let (rank, world) = (group.rank(), group.world());
    let mut quiet = |_: &str| {};
    let log: &mut dyn FnMut(&str) = if rank == 0 { log } else { &mut quiet };
    match train_rank(o, group.as_ref(), log) {
        Err(e) if world > 1 => {
            // The other ranks may be waiting in a collective this one
            // will never join: end the whole job now rather than leave
            // them to the watchdog.
            eprintln!("error: rank {rank} of {world}: {e}");
            group.abort(1)
        }
        r => r,
    }
}

fn train_rank(
    o: &TrainOptions,
    group: &dyn Collective,
    log: &mut dyn FnMut(&str),
) -> Result<TrainSummary> {
    let (rank, world) = (group.rank(), group.world());
    let shard = Shard { rank, world };
    let lead = rank == 0;
    let backend = backend::select(&o.device)?;
    let resume = o
        .resume
        .as_deref()
        .map(|d| load_resume(d, o, world))
        .transpose()?;
    let data = data::load(o, resume.as_ref().map(|r| (&r.ck, r.dir.as_path())), log)?;
    let (input, classes) = (data.input.clone(), data.classes);
    let global_batch = o.batch.checked_mul(world).ok_or_else(|| {
        Error::Limit(format!("--batch {} times {world} ranks overflows", o.batch))
    })?;
    if data.train.len() < global_batch {
        return Err(Error::Usage(format!(
            "{} training {} is less than one batch of {}{}",
            data.train.len(),
            data.unit,
            global_batch,
            if world > 1 {
                format!(" ({} per rank times {world} ranks)", o.batch)
            } else {
                String::new()
            }
        )));
    }
    let spec = match (&o.model, &resume) {
        (Some(m), _) => ModelSpec::resolve(m, classes)?,
        (None, Some(r)) => r.ck.spec.clone(),
        (None, None) if data.text.is_some() => ModelSpec::resolve("fasttext", classes)?,
        (None, None) => ModelSpec::resolve("cnn", classes)?,
    };
    let spec = match &data.text {
        Some(t) => spec.with_vocab(t.tokenizer.vocab_size()),
        None => spec,
    };
    let kind = spec.input_kind();
    if (kind == InputKind::Tokens) != data.text.is_some() {
        return Err(Error::Usage(format!(
            "model '{}' reads {} but {} holds {}",
            spec.name,
            if kind == InputKind::Tokens {
                "token ids (text)"
            } else {
                "images"
            },
            o.data,
            data.unit
        )));
    }
    let steps_per_epoch = data.train.len() / global_batch;
    let total_steps = steps_per_epoch.checked_mul(o.epochs).ok_or_else(|| {
        Error::Limit(format!(
            "{} epochs of {steps_per_epoch} steps overflow the step count",
            o.epochs
        ))
    })?;
    if let Some(r) = &resume {
        check_resume_fits(r, &spec, &input, steps_per_epoch)?;
    }
    // Rank 0 alone writes the run folder.
    let _lock = lead.then(|| checkpoint::lock(&o.out)).transpose()?;
    if lead && resume.as_ref().is_none_or(|r| r.dir != o.out) {
        data.write_files(&o.out)?;
    }

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
        // Text sequences are long: an inference batch of the training
        // batch's size keeps the arena within a portable GPU's binding
        // limit (128 MiB on lavapipe).
        infer_batch: if data.text.is_some() { o.batch } else { 256 },
        optim,
        seed: o.seed,
        fuse: o.fuse,
    };
    let t_compile = Instant::now();
    let mut model = Classifier::data_parallel(cfg, backend.as_ref(), world)?;
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
    if world > 1 {
        // Every rank must already hold rank 0's weights and state (same
        // seed, same checkpoint). DDP copies rank 0's over instead, which
        // would hide ranks started with another seed or other data.
        dist_sync::check_same_weights(&mut model, group)?;
        log(&format!(
            "data-parallel: {world} ranks over {}, {} per rank, global batch {global_batch}",
            group.describe(),
            o.batch
        ));
    }
    log(&format!(
        "model {} ({} parameters) on {}, input {:?}, {} train / {} val / {} test {}, compiled in {:.0} ms",
        spec.name,
        model.num_params(),
        model.device(),
        input,
        data.train.len(),
        data.val.len(),
        data.test.len(),
        data.unit,
        t_compile.elapsed().as_secs_f64() * 1e3
    ));

    let run = RunInfo {
        o,
        spec: &spec,
        input: &input,
        classes,
        norm: data.norm.as_ref(),
        text: data.text.as_ref().map(|t| &t.run),
        world,
    };
    let mut logits = vec![0.0f32; o.batch * classes];
    let chance = (classes.max(2) as f64).ln();
    let mut watch = LossWatch::new();

    for epoch in first_epoch..=o.epochs {
        let t0 = Instant::now();
        let loader = data
            .train
            .shard_batches(o.batch, Some(o.seed), epoch as u64, true, shard)?;
        let bar = progress_bar(o.progress, loader.len(), epoch, o.epochs);
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
            let local = model.train_step_on(&b.input(), &b.y, lr, group)?;
            // The ranks agree on the loss (the global batch's mean) and on
            // stopping, so every check below takes the same branch on all.
            let (loss, stop) = match world {
                1 => (local, false),
                _ => {
                    let mut flags = [
                        f64::from(local),
                        f64::from(u8::from(STOP.load(Ordering::Relaxed))),
                    ];
                    group.all_reduce_sum_f64(&mut flags)?;
                    ((flags[0] / world as f64) as f32, flags[1] > 0.0)
                }
            };
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
            loss_sum += local as f64 * b.len as f64;
            seen += b.len;
            if let Some(bar) = &bar {
                bar.inc(1);
                if bi % 10 == 0 {
                    let ips = seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!(
                        "loss {:.4} acc {:.2}% {:.0}/s",
                        loss_sum / seen as f64,
                        cm.accuracy() * 100.0,
                        ips
                    ));
                }
            }
            testhook::point("step");
            // One process stops at once; ranks stop on the flag they
            // summed this step, so all stop after the same batch.
            if (world == 1 && STOP.load(Ordering::Relaxed)) || stop {
                if lead {
                    run.save(&mut model, (epoch - 1, bi + 1), &rows)?;
                }
                log(&format!("interrupted after epoch {epoch}, batch {}: saved a checkpoint in {}; continue with --resume {}", bi + 1, o.out.display(), o.out.display()));
                return Ok(TrainSummary {
                    epochs: rows,
                    test: None,
                    out: o.out.clone(),
                    rank,
                });
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let comm_share = (model.all_reduce_time.as_secs_f64() / train_secs.max(1e-9)) * 100.0;
        model.all_reduce_time = std::time::Duration::ZERO;
        if world > 1 {
            (loss_sum, seen) = dist_sync::epoch_totals(group, loss_sum, seen, &mut cm)?;
            dist_sync::check_same_weights(&mut model, group)?;
        }
        let train_loss = loss_sum / seen.max(1) as f64;
        check_divergence(&rows, epoch, train_loss, chance, model.step, &run)?;
        let (val_loss, val_acc) = if data.val.is_empty() {
            (None, None)
        } else {
            let v = evaluate_shard(&mut model, &data.val, shard, group)?;
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
            "epoch {epoch}/{}: loss {:.4} acc {:.2}% | val loss {} acc {} | {:.1} s, {:.0} examples/s, lr {:.2e}",
            o.epochs,
            row.train_loss,
            row.train_acc * 100.0,
            val_loss.map_or("-".into(), |v| format!("{v:.4}")),
            val_acc.map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
            train_secs,
            row.images_per_sec,
            lr
        ));
        if world > 1 {
            log(&format!(
                "  data-parallel: the gradient all-reduce took {comm_share:.1}% of rank 0's training time this epoch (including waits for the slower rank, and on a GPU for the gradients to be ready)"
            ));
        }
        rows.push(row);
        if lead {
            run.save(&mut model, (epoch, 0), &rows)?;
        }
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
        // Rank 0 reads its run folder; the others take the weights from it.
        let best = match lead {
            true => {
                let ck = Checkpoint::load(&o.out)?;
                if ck.best_epoch.is_some() {
                    model.load_weights(&ck.run_model_file(&o.out))?;
                }
                ck.best_epoch
            }
            false => None,
        };
        if world > 1 {
            dist_sync::broadcast_state(&mut model, group)?;
        }
        if let Some(best) = best {
            log(&format!("restored the best epoch's weights (epoch {best})"));
        }
    }

    let t = evaluate_shard(&mut model, &data.test, shard, group)?;
    log(&format!(
        "test: loss {:.4} accuracy {:.2}% ({} {})",
        t.loss,
        t.accuracy * 100.0,
        data.test.len(),
        data.unit
    ));
    Ok(TrainSummary {
        epochs: rows,
        test: Some((t.loss, t.accuracy)),
        out: o.out.clone(),
        rank,
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
    // Inference only: batch norm folds into the convolutions.
    let decls = ck.spec.declare(&ck.input)?;
    let tensors = crate::model::read_weights(&decls, &ck.run_model_file(dir))?;
    let folded = crate::nn::fold::fold_batch_norm(&ck.spec, &tensors)?;
    let cfg = ClassifierConfig {
        spec: folded.spec,
        input: ck.input.clone(),
        classes: ck.classes,
        train_batch: None,
        infer_batch: batch,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: ck.seed,
        fuse: true,
    };
    let mut model = Classifier::new(cfg, backend.as_ref())?;
    for (name, t) in &folded.tensors {
        model.session_mut().write_persistent(name, &t.data)?;
    }
    Ok((model, ck))
}

/// A text run's tokenizer, checked against its model: the vocabulary must
/// be the embedding's row count (a `tokenizer.json` from another run would
/// silently map words to the wrong vectors).
pub fn load_tokenizer(dir: &Path, ck: &Checkpoint) -> Result<crate::data::tokenize::TextTokenizer> {
    let text = ck
        .text
        .as_ref()
        .ok_or_else(|| Error::Usage(format!("{}: not a text run", dir.display())))?;
    let path = dir.join(checkpoint::TOKENIZER);
    let tok = crate::data::tokenize::TextTokenizer::load(&path, text.tokenizer.clone())?;
    if let Some(v) = ck.spec.vocab() {
        if tok.vocab_size() != v {
            return Err(Error::format(
                &path,
                format!(
                    "{} tokens, but the model's embedding has {v} rows: the tokenizer is not this run's",
                    tok.vocab_size()
                ),
            ));
        }
    }
    Ok(tok)
}
