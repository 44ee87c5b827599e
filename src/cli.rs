//! Command-line interface (clap). Thin: parse, call the library, print.

use crate::backend::DeviceSpec;
use crate::data::tokenize::{Segmentation, TokenizerSettings};
use crate::data::{Augment, DataSpec};
use crate::dist::WorldSpec;
use crate::optim::{LrSchedule, OptimizerKind, Plateau};
use crate::train::{EarlyStop, Monitor, TextOptions, TrainOptions};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "gpurt",
    version,
    about = "Train, evaluate and run small neural networks on CPU, wgpu and CUDA with whole-step compiled kernels"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model; writes checkpoints, metrics.csv/json and training.png to --out.
    Train(Box<TrainArgs>),
    /// Evaluate a trained run on the test split: accuracy, per-class precision/recall/F1, confusion matrix.
    Eval(EvalArgs),
    /// Classify PNG images or an IDX image file with a trained run.
    Predict(PredictArgs),
    /// List the backends and adapters on this machine and what `auto` picks.
    Devices,
    /// Benchmark kernels, train steps and inference latency on a device.
    Bench(BenchArgs),
    /// Show the compiled train step: launches before and after fusion, FLOPs, bytes, memory.
    Plan(PlanArgs),
    /// Serve trained runs over HTTP (KServe v2 JSON) with dynamic batching.
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
}

#[cfg(feature = "serve")]
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A run folder to serve, as NAME=DIR or DIR (named after the folder);
    /// repeat for several models.
    #[arg(long = "run", required = true, value_name = "[NAME=]DIR")]
    pub runs: Vec<String>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// auto, cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Most examples run together by one predictor (also the most one
    /// request may hold). 16 keeps about twice the workers' batches in
    /// flight under load, so that HTTP work overlaps the predictor runs:
    /// 64 concurrent single-image clients of the MNIST CNN on 2 cores got
    /// 27.7-28.6k requests/s against 23.6-26.8k with 32 (alternated runs).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Longest a batch waits for requests still being decoded, in µs (a
    /// lone request never waits).
    #[arg(long, default_value_t = 2000)]
    pub max_delay_us: u64,
    /// Requests queued per model beyond which the server answers 503.
    #[arg(long, default_value_t = 1024)]
    pub max_queue: usize,
    /// Worker threads per model, each with its own compiled predictors
    /// [default: one per core on the CPU, 1 on a GPU].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Threads each worker's batch-1 predictor runs on: the worker and
    /// helpers that split each convolution with it (spinning for 1 ms
    /// after a request, then parked). Lowers single-request latency when
    /// there are more cores than workers, e.g. `--workers 1
    /// --threads-per-worker 2` on 2 cores.
    #[arg(long, default_value_t = 1)]
    pub threads_per_worker: usize,
    /// HTTP threads [default: the number of cores, at most 4].
    #[arg(long)]
    pub http_threads: Option<usize>,
    /// Per-request limit, in milliseconds (504 past it).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Largest request body, in bytes (413 past it).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body: usize,
    /// No per-request log lines.
    #[arg(long)]
    pub quiet: bool,
    /// Let `POST /v2/repository/models/{name}/load` name another run folder
    /// (`{"parameters": {"run": "DIR"}}`); without it a load only reloads
    /// the folder being served, so clients cannot make the server read
    /// arbitrary paths.
    #[arg(long)]
    pub allow_load_path: bool,
}

#[cfg(feature = "serve")]
impl ServeArgs {
    pub fn config(&self) -> crate::Result<crate::serve::ServeConfig> {
        use crate::Error;
        let device: DeviceSpec = self.device.parse()?;
        let mut models = Vec::new();
        for r in &self.runs {
            let (name, dir) = match r.split_once('=') {
                Some((n, d)) => (n.to_owned(), PathBuf::from(d)),
                None => {
                    let dir = PathBuf::from(r);
                    let name = dir
                        .canonicalize()
                        .ok()
                        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .ok_or_else(|| Error::Usage(format!("--run {r}: no such folder")))?;
                    (name, dir)
                }
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(Error::Usage(format!(
                    "--run {r}: model name '{name}' must be letters, digits, '-', '_' or '.'"
                )));
            }
            models.push((name, dir));
        }
        if self.max_batch == 0 || self.max_queue == 0 {
            return Err(Error::Usage(
                "--max-batch and --max-queue must be at least 1".into(),
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.workers.unwrap_or(match device {
            DeviceSpec::Cpu => cores,
            _ => 1,
        });
        if workers == 0 || self.threads_per_worker == 0 {
            return Err(Error::Usage(
                "--workers and --threads-per-worker must be at least 1".into(),
            ));
        }
        Ok(crate::serve::ServeConfig {
            models,
            addr: self.addr,
            limits: crate::serve::model::Limits {
                device,
                workers,
                threads_per_worker: self.threads_per_worker,
                max_batch: self.max_batch,
                max_delay: std::time::Duration::from_micros(self.max_delay_us),
                max_queue: self.max_queue,
                test_batch_delay: std::time::Duration::ZERO,
            },
            max_request_rows: self.max_batch,
            max_body: self.max_body,
            timeout: std::time::Duration::from_millis(self.timeout_ms.max(1)),
            http_threads: self.http_threads.unwrap_or(cores.min(4)),
            access_log: !self.quiet,
            allow_load_path: self.allow_load_path,
        })
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Preset (cnn, mlp, resnet20/32/56; for text fasttext, transformer) or
    /// a path to a TOML model spec [default: cnn (fasttext for text), or
    /// the resumed run's model].
    #[arg(long)]
    pub model: Option<String>,
    /// Dataset: mnist:DIR, fashion-mnist[:DIR], cifar10:DIR, or text:DIR (a
    /// folder per class of .txt files) or text:FILE.csv|.tsv [default: the
    /// bundled MNIST in data/mnist]
    #[arg(long)]
    pub data: Option<String>,
    /// Text: a separate labelled test set (same layout as --data) instead
    /// of a split.
    #[arg(long, value_name = "PATH")]
    pub test_data: Option<PathBuf>,
    /// Text: fraction of each class held out for testing (seeded,
    /// stratified, after removing duplicates).
    #[arg(long, default_value_t = 0.2)]
    pub test_split: f64,
    /// Text CSV/TSV: the label column, by header name or 0-based index
    /// [default: label, or 0 with --no-header].
    #[arg(long)]
    pub label_column: Option<String>,
    /// Text CSV/TSV: the text column [default: text, or 1 with --no-header].
    #[arg(long)]
    pub text_column: Option<String>,
    /// Text CSV/TSV: the first row is data, not column names.
    #[arg(long)]
    pub no_header: bool,
    /// Text: the tokenizer's vocabulary size (WordPiece, learned on the
    /// training split).
    #[arg(long, default_value_t = 16_000)]
    pub vocab_size: usize,
    /// Text: tokens kept per document (longer ones are truncated).
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Text: how Chinese is cut before the subword model: chars (every
    /// ideograph a token) or jieba (words).
    #[arg(long, default_value = "chars")]
    pub segment: String,
    /// Text: keep case (the default lower-cases and strips accents).
    #[arg(long)]
    pub cased: bool,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[command(flatten)]
    pub step: StepArgs,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// constant, step (halve every epoch), cosine, or plateau (multiply by
    /// --plateau-factor after --plateau-patience epochs without a better
    /// validation loss, as PyTorch's ReduceLROnPlateau).
    #[arg(long, default_value = "constant")]
    pub lr_schedule: String,
    /// Stop after this many epochs without a better --monitor value, and
    /// make the best epoch's weights the run's model (Keras' EarlyStopping
    /// with restore_best_weights).
    #[arg(long, value_name = "PATIENCE")]
    pub early_stop: Option<usize>,
    /// What --early-stop watches: val_loss or val_acc [default: val_loss].
    #[arg(long)]
    pub monitor: Option<String>,
    /// With --lr-schedule plateau: the factor applied to the rate [default: 0.1].
    #[arg(long)]
    pub plateau_factor: Option<f32>,
    /// With --lr-schedule plateau: epochs without improvement tolerated [default: 10].
    #[arg(long)]
    pub plateau_patience: Option<usize>,
    /// With --lr-schedule plateau: the rate is never reduced below this [default: 0].
    #[arg(long)]
    pub min_lr: Option<f32>,
    /// Linear learning-rate warm-up, in steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Scale the gradients so their global L2 norm is at most this before
    /// each update (PyTorch's clip_grad_norm_).
    #[arg(long, value_name = "MAX_NORM")]
    pub clip_grad_norm: Option<f32>,
    /// Label smoothing of the training loss, in [0, 1) (PyTorch's
    /// CrossEntropyLoss(label_smoothing)); the reported validation and test
    /// losses stay plain cross-entropy.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Weight decay [default: 0, or 0.01 for adamw].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// auto, cpu, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Output folder for checkpoints and metrics [default: the --resume
    /// folder, else runs/latest].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the last checkpoint in this folder.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Fraction of the training split held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_split: f32,
    /// Random-crop padding in pixels (0 = off).
    #[arg(long, default_value_t = 0)]
    pub crop_pad: usize,
    /// Random horizontal flips (for natural images, not digits).
    #[arg(long)]
    pub hflip: bool,
    /// Augmentation: rotate each training image by up to this many degrees
    /// either way (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub rotate: f32,
    /// Augmentation: zoom each training image by up to this fraction
    /// either way, e.g. 0.1 for [0.9, 1.1] (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub scale: f32,
    /// Use only N training examples: the first N images, or a stratified
    /// sample of N documents.
    #[arg(long)]
    pub limit: Option<usize>,
    /// No progress bar (summary lines only).
    #[arg(long)]
    pub quiet: bool,
    /// Run the step unfused (for comparisons).
    #[arg(long)]
    pub no_fuse: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A folder written by `gpurt train`.
    #[arg(long, default_value = "runs/latest")]
    pub run: PathBuf,
    /// Dataset to evaluate on [default: the one the run was trained on;
    /// for a text run, its test documents].
    #[arg(long)]
    pub data: Option<String>,
    /// Text CSV/TSV given by --data: the label column [default: label].
    #[arg(long)]
    pub label_column: Option<String>,
    /// Text CSV/TSV given by --data: the text column [default: text].
    #[arg(long)]
    pub text_column: Option<String>,
    /// Text CSV/TSV given by --data: the first row is data.
    #[arg(long)]
    pub no_header: bool,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A folder written by `gpurt train`.
    #[arg(long, default_value = "runs/latest")]
    pub run: PathBuf,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
    /// PNG files, or one IDX image file (gzip or raw); for a text run,
    /// text files (one document each) or `-` for one document per line
    /// of standard input.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// The bundled MNIST, found from the working directory or the crate root.
pub fn default_data() -> String {
    let local = PathBuf::from("data/mnist");
    if local.exists() {
        return "mnist:data/mnist".into();
    }
    format!("mnist:{}/data/mnist", env!("CARGO_MANIFEST_DIR"))
}

impl TrainArgs {
    /// The schedule, with the plateau settings applied (and refused for
    /// any other schedule, where they would silently do nothing).
    fn lr_schedule(&self) -> crate::Result<LrSchedule> {
        let d = Plateau::default();
        match self.lr_schedule.parse::<LrSchedule>()? {
            LrSchedule::Plateau(_) => Ok(LrSchedule::Plateau(Plateau {
                factor: self.plateau_factor.unwrap_or(d.factor),
                patience: self.plateau_patience.unwrap_or(d.patience),
                min_lr: self.min_lr.unwrap_or(d.min_lr),
            })),
            _ if self.plateau_factor.is_some()
                || self.plateau_patience.is_some()
                || self.min_lr.is_some() =>
            {
                Err(crate::Error::Usage(
                    "--plateau-factor, --plateau-patience and --min-lr apply to --lr-schedule plateau only".into(),
                ))
            }
            other => Ok(other),
        }
    }

    pub fn options(&self) -> crate::Result<TrainOptions> {
        let data: DataSpec = self.data.clone().unwrap_or_else(default_data).parse()?;
        Ok(TrainOptions {
            model: self.model.clone(),
            data,
            epochs: self.epochs,
            batch: self.step.batch,
            world: self.step.world.parse::<WorldSpec>()?,
            dist_timeout: std::time::Duration::from_secs(self.step.dist_timeout.max(1)),
            optimizer: self.step.optimizer.parse::<OptimizerKind>()?,
            lr: self.lr,
            lr_schedule: self.lr_schedule()?,
            early_stop: match (self.early_stop, &self.monitor) {
                (Some(patience), m) => Some(EarlyStop {
                    patience,
                    monitor: m.as_deref().unwrap_or("val_loss").parse::<Monitor>()?,
                }),
                (None, Some(_)) => {
                    return Err(crate::Error::Usage(
                        "--monitor applies to --early-stop only".into(),
                    ))
                }
                (None, None) => None,
            },
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            label_smoothing: self.label_smoothing,
            clip_grad_norm: self.clip_grad_norm,
            seed: self.seed,
            device: self.device.parse::<DeviceSpec>()?,
            out: self
                .out
                .clone()
                .or_else(|| self.resume.clone())
                .unwrap_or_else(|| PathBuf::from("runs/latest")),
            resume: self.resume.clone(),
            val_split: self.val_split,
            augment: Augment {
                crop_pad: self.crop_pad,
                hflip: self.hflip,
                rotate: self.rotate,
                scale: self.scale,
            },
            limit: self.limit,
            progress: !self.quiet,
            fuse: !self.no_fuse,
            text: TextOptions {
                test_data: self.test_data.clone(),
                test_split: self.test_split,
                label_column: self.label_column.clone(),
                text_column: self.text_column.clone(),
                no_header: self.no_header,
                tokenizer: TokenizerSettings {
                    vocab_size: self.vocab_size,
                    max_len: self.max_len,
                    lowercase: !self.cased,
                    segmentation: match self.segment.as_str() {
                        "chars" => Segmentation::Characters,
                        "jieba" => Segmentation::Jieba,
                        s => {
                            return Err(crate::Error::Usage(format!(
                                "unknown --segment '{s}' (expected chars or jieba)"
                            )))
                        }
                    },
                    ..TokenizerSettings::default()
                },
            },
        })
    }
}

/// What one train step is: shared by `train` and `plan`, so a plan is
/// made for exactly the step a training run would take.
#[derive(Args, Debug)]
pub struct StepArgs {
    /// Examples per step (per rank in a data-parallel run: the global
    /// batch is --batch times the number of ranks).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Data-parallel ranks: auto reads the launcher's environment
    /// (`mpirun -n N gpurt train ...`), one process without a launcher;
    /// a number must match the launcher's. Needs a build with --features mpi.
    #[arg(long, default_value = "auto")]
    pub world: String,
    /// Data-parallel: seconds any rank waits for the others in one
    /// collective before it stops the job (a rank died or hung).
    #[arg(long, default_value_t = 300)]
    pub dist_timeout: u64,
    /// adam, adamw or sgd.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Preset (cnn, mlp, resnet20/32/56, fasttext, transformer) or a path
    /// to a TOML model spec.
    #[arg(long, default_value = "cnn")]
    pub model: String,
    /// Input of one example: C,H,W for images, or text:T for token
    /// sequences of T tokens.
    #[arg(long, default_value = "1,28,28")]
    pub input: String,
    /// Vocabulary size of a text model's embeddings.
    #[arg(long, default_value_t = 16_000)]
    pub vocab: usize,
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    #[command(flatten)]
    pub step: StepArgs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Longer runs per case (default: quick).
    #[arg(long)]
    pub full: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}
