//! The embedding API: load a model once, compile an inference program
//! with a fixed batch size, then call [`Predictor::run`] from a service's
//! hot path. A call copies the input into the arena, replays the program
//! and returns a view of the logits; on the CPU it allocates nothing for
//! stride-1 convolutions and dense layers of up to 8 rows (other shapes
//! reach the `gemm` crate, which allocates packing buffers). A
//! `Predictor` is `Send`, so each worker thread can own one; the weights
//! can be loaded once into [`SharedWeights`] and shared read-only.
//!
//! On the CPU a predictor runs its kernels on the calling thread by default
//! (like ONNX Runtime's `intra_op_num_threads = 1`): a service already has
//! one worker per core, and handing each small kernel to a thread pool and
//! back costs more than it gains at batch 1 (it doubled the median latency
//! of the small CNN here). [`Predictor::parallel`] switches to rayon's
//! global pool for large batches; [`Predictor::threads`] gives one
//! latency-bound caller helper threads that spin between calls instead
//! (batch-1 convolutions split between them).

use crate::backend::cpu::team::{self, Team, TeamChoice};
use crate::backend::{Backend, DeviceSpec};
use crate::checkpoint::Checkpoint;
use crate::data::tokenize::TextTokenizer;
use crate::data::Normalizer;
use crate::error::{Error, Result};
use crate::model::{Classifier, ClassifierConfig, Input};
use crate::nn::fold::fold_batch_norm;
use crate::nn::ModelSpec;
use crate::optim::{OptimConfig, OptimizerKind};
use crate::tensor::{Shape, Tensor};
use std::path::Path;
use std::sync::Arc;

/// Model weights in host memory, loaded and checked once, shared by any
/// number of predictors.
#[derive(Clone, Debug)]
pub struct SharedWeights {
    pub spec: ModelSpec,
    /// `[c, h, w]` of one example.
    pub input: Vec<usize>,
    pub classes: usize,
    pub tensors: Arc<Vec<(String, Tensor)>>,
    pub normalizer: Option<Normalizer>,
}

impl SharedWeights {
    /// From a folder written by `gpurt train`: the run's model (the best
    /// epoch's weights under early stopping, as `eval` and `predict` use).
    pub fn from_run(dir: &Path) -> Result<Self> {
        let ck = Checkpoint::load(dir)?;
        let mut w = Self::from_file(
            ck.spec.clone(),
            ck.input.clone(),
            ck.classes,
            &ck.run_model_file(dir),
        )?;
        w.normalizer = Some(ck.normalizer());
        Ok(w)
    }

    /// A snapshot of a model's current weights (e.g. straight after
    /// training, or randomly initialised for benchmarks).
    pub fn from_model(model: &mut Classifier) -> Result<Self> {
        let c = &model.config;
        let (spec, input, classes) = (c.spec.clone(), c.input.clone(), c.classes);
        Ok(SharedWeights {
            spec,
            input,
            classes,
            tensors: Arc::new(model.model_tensors()?),
            normalizer: None,
        })
    }

    /// From a spec and a safetensors file (gpurt's or PyTorch's names).
    pub fn from_file(
        spec: ModelSpec,
        input: Vec<usize>,
        classes: usize,
        path: &Path,
    ) -> Result<Self> {
        let tensors = crate::model::read_weights(&spec.declare(&input)?, path)?;
        Ok(SharedWeights {
            spec,
            input,
            classes,
            tensors: Arc::new(tensors),
            normalizer: None,
        })
    }
}

/// A compiled inference program bound to one device.
pub struct Predictor {
    model: Classifier,
    program: usize,
    input_shape: Shape,
    /// Where the logits are copied on devices that cannot lend host memory.
    out: Vec<f32>,
    /// Run kernels on rayon's global pool instead of the calling thread.
    parallel: bool,
    /// Helper threads lent to the calling thread's kernels (CPU only),
    /// and whether calls currently run on them (see [`TeamChoice`]).
    team: Option<(Arc<Team>, TeamChoice)>,
    on_cpu: bool,
}

impl Predictor {
    pub fn new(weights: &SharedWeights, batch: usize, backend: &dyn Backend) -> Result<Self> {
        if batch == 0 {
            return Err(Error::Usage("batch size must be at least 1".into()));
        }
        // Batch norm folds into the convolutions: no batch-norm launches.
        let folded = fold_batch_norm(&weights.spec, &weights.tensors)?;
        let cfg = ClassifierConfig {
            spec: folded.spec,
            input: weights.input.clone(),
            classes: weights.classes,
            train_batch: None,
            infer_batch: batch,
            optim: OptimConfig::new(OptimizerKind::Adam),
            seed: 0,
            fuse: true,
        };
        let mut model = Classifier::new(cfg, backend)?;
        for (name, t) in &folded.tensors {
            model.session_mut().write_persistent(name, &t.data)?;
        }
        let program = model.session().program(crate::model::INFER)?;
        let mut dims = vec![batch];
        dims.extend(&weights.input);
        Ok(Predictor {
            model,
            program,
            input_shape: Shape(dims),
            out: vec![0.0; batch * weights.classes],
            parallel: false,
            team: None,
            on_cpu: backend.is_cpu(),
        })
    }

    /// Runs each call's kernels on `n` threads: the calling thread and
    /// `n - 1` helpers owned by this predictor, which spin for
    /// [`team::DEFAULT_SPIN`] after a call (so back-to-back calls hand work
    /// over in well under a microsecond) and then park. Like PyTorch's
    /// `set_num_threads` for one latency-bound caller: the batch-1
    /// convolutions split their output channels between the threads. The
    /// calls are timed, and run alone instead while that is faster (where
    /// the cores share data slowly; see [`TeamChoice`]). A service with
    /// one predictor per core keeps the default, 1. CPU only;
    /// other devices ignore it, and so does [`Predictor::parallel`]`(true)`,
    /// which hands the kernels to rayon's pool instead.
    pub fn threads(mut self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::Usage("a predictor needs at least 1 thread".into()));
        }
        self.team = if n == 1 || !self.on_cpu {
            None
        } else {
            let team = Team::new(n, team::DEFAULT_SPIN)
                .map_err(|e| Error::Usage(format!("cannot start {n} predictor threads: {e}")))?;
            Some((Arc::new(team), TeamChoice::default()))
        };
        Ok(self)
    }

    /// Run kernels on rayon's global pool (all cores) rather than on the
    /// calling thread: for large batches served by one predictor.
    pub fn parallel(mut self, yes: bool) -> Self {
        self.parallel = yes;
        self
    }

    /// On a device picked like the CLI's `--device`.
    pub fn on_device(weights: &SharedWeights, batch: usize, device: &DeviceSpec) -> Result<Self> {
        let backend = crate::backend::select(device)?;
        Self::new(weights, batch, backend.as_ref())
    }

    /// `[batch, c, h, w]`: what `run` expects, flattened.
    pub fn input_shape(&self) -> &Shape {
        &self.input_shape
    }

    /// Logits `[batch, classes]` for one normalised input batch.
    pub fn run(&mut self, input: &[f32]) -> Result<&[f32]> {
        self.run_input(&Input::Pixels(input))
    }

    /// Logits `[batch, classes]` for one batch of any input kind (token
    /// ids `[batch, T]` and lengths `[batch]` for a text model).
    pub fn run_input(&mut self, x: &Input) -> Result<&[f32]> {
        let n = match x {
            Input::Pixels(p) => p.len(),
            Input::Tokens { ids, lengths } => {
                if lengths.len() != self.input_shape.0[0] {
                    return Err(Error::shape(
                        "Predictor::run_input",
                        format!(
                            "expected {} lengths, got {}",
                            self.input_shape.0[0],
                            lengths.len()
                        ),
                    ));
                }
                ids.len()
            }
        };
        if n != self.input_shape.numel() {
            return Err(Error::shape(
                "Predictor::run",
                format!(
                    "expected {} values (shape {}), got {}",
                    self.input_shape.numel(),
                    self.input_shape,
                    n
                ),
            ));
        }
        self.model.write_input(self.program, x)?;
        let s = self.model.session_mut();
        let program = self.program;
        if self.parallel {
            s.run(program)?;
        } else if let Some((team, choice)) = &mut self.team {
            // Timed, so that the team is used only while it is faster.
            let start = std::time::Instant::now();
            if choice.use_team() {
                crate::backend::cpu::par::on_team(team, || s.run(program))?;
            } else {
                crate::backend::cpu::par::on_caller_thread(|| s.run(program))?;
            }
            choice.record(start.elapsed().as_secs_f64());
        } else {
            crate::backend::cpu::par::on_caller_thread(|| s.run(program))?;
        }
        if self
            .model
            .session()
            .output_view(self.program, "logits")?
            .is_none()
        {
            self.model
                .session_mut()
                .read_output(self.program, "logits", &mut self.out)?;
            return Ok(&self.out);
        }
        Ok(self
            .model
            .session()
            .output_view(self.program, "logits")?
            .expect("checked above"))
    }
}

/// Text in, logits out: a run's tokenizer in front of a [`Predictor`].
///
/// What allocates per call: tokenisation (the `tokenizers` crate builds
/// strings and an encoding per text, and jieba segmentation a string);
/// the padded id and length buffers are the predictor's own, reused; the
/// forward pass allocates what [`Predictor::run`] says (the `gemm` crate's
/// packing buffers for the dense layers of more than 8 rows), and on the
/// CPU the attention kernel's per-sequence scratch (each head's Q, K, V
/// gathered contiguously, and one block of scores).
pub struct TextPredictor {
    predictor: Predictor,
    tokenizer: TextTokenizer,
    classes: Vec<String>,
    ids: Vec<u32>,
    lengths: Vec<u32>,
}

impl TextPredictor {
    /// From a text run's folder: its model, tokenizer and class names,
    /// with room for `batch` texts per call.
    pub fn from_run(dir: &Path, batch: usize, device: &DeviceSpec) -> Result<Self> {
        let backend = crate::backend::select(device)?;
        Self::new(dir, batch, backend.as_ref())
    }

    /// [`TextPredictor::from_run`] on a backend the caller already opened
    /// (a server compiles one predictor per batch size on one device).
    pub fn new(dir: &Path, batch: usize, backend: &dyn Backend) -> Result<Self> {
        let ck = Checkpoint::load(dir)?;
        let text = ck.text.clone().ok_or_else(|| {
            Error::Usage(format!("{}: not a text run (no tokenizer)", dir.display()))
        })?;
        let tokenizer = crate::train::load_tokenizer(dir, &ck)?;
        let weights = SharedWeights::from_file(
            ck.spec.clone(),
            ck.input.clone(),
            ck.classes,
            &ck.run_model_file(dir),
        )?;
        let predictor = Predictor::new(&weights, batch, backend)?;
        let t = ck.input[0];
        Ok(TextPredictor {
            predictor,
            tokenizer,
            classes: text.classes,
            ids: vec![0; batch * t],
            lengths: vec![0; batch],
        })
    }

    /// Class names, by label.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Texts per call.
    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    /// Logits `[batch, classes]` for up to `batch` texts (rows past
    /// `texts.len()` are padding: an empty document).
    pub fn run(&mut self, texts: &[&str]) -> Result<&[f32]> {
        let batch = self.batch();
        if texts.len() > batch {
            return Err(Error::Usage(format!(
                "{} texts for a predictor of batch {batch}",
                texts.len()
            )));
        }
        let t = self.ids.len() / batch.max(1);
        self.ids.fill(0);
        self.lengths.fill(0);
        for (r, text) in texts.iter().enumerate() {
            let ids = self.tokenizer.encode(text)?;
            let n = ids.len().min(t);
            self.ids[r * t..r * t + n].copy_from_slice(&ids[..n]);
            self.lengths[r] = n as u32;
        }
        self.predictor.run_input(&Input::Tokens {
            ids: &self.ids,
            lengths: &self.lengths,
        })
    }
}
