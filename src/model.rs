//! A classifier: a model spec compiled into one module holding a training
//! step program and an inference program over the same parameters.

use crate::backend::Backend;
use crate::dist::{Collective, Solo};
use crate::error::{Error, Result};
use crate::graph::exec::Session;
use crate::graph::fuse::{self, FuseExtras};
use crate::graph::ir::Graph;
use crate::graph::plan;
use crate::graph::plan::Slot;
use crate::nn::init::init_params;
use crate::nn::spec::{InputKind, ModelSpec, ParamDecl};
use crate::optim::{self, OptimConfig};
use crate::tensor::{DType, Shape, Tensor};
use crate::weights;
use std::collections::HashMap;
use std::path::Path;

pub use crate::data::Input;

/// What to compile.
#[derive(Clone, Debug)]
pub struct ClassifierConfig {
    pub spec: ModelSpec,
    /// `[c, h, w]` of one example (`[T]`, the padded sequence length, for
    /// a text model).
    pub input: Vec<usize>,
    pub classes: usize,
    /// Batch of the training program; None builds inference only.
    pub train_batch: Option<usize>,
    pub infer_batch: usize,
    pub optim: OptimConfig,
    pub seed: u64,
    /// Apply the fusion passes (off only to compare against unfused).
    pub fuse: bool,
}

pub struct Classifier {
    pub config: ClassifierConfig,
    /// What the spec reads, and its vocabulary (worked out once: the
    /// wiring analysis allocates, and `write_input` is on the hot path).
    input_kind: InputKind,
    vocab: Option<usize>,
    session: Session,
    decls: Vec<ParamDecl>,
    train: Option<usize>,
    /// Data-parallel: the update program and the gradient region the
    /// ranks sum between the two programs (`train` then computes and
    /// stores the gradients only).
    update: Option<(usize, Slot)>,
    infer: usize,
    /// Optimiser steps taken so far.
    pub step: u64,
    /// Time spent in the gradient all-reduce (waiting for the slowest rank
    /// included), for the data-parallel figures in the log.
    pub all_reduce_time: std::time::Duration,
}

/// The declared tensors from a weights file saved by gpurt or PyTorch
/// (`state_dict` names): each present with its shape, running variances
/// non-negative, and nothing else in the file (PyTorch's batch-norm
/// counter aside).
pub fn read_weights(decls: &[ParamDecl], path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut lw = weights::load(path)?;
    let mut loaded = Vec::new();
    for d in decls {
        let t = if d.name.ends_with("running_var") {
            lw.take_non_negative(&d.name, &d.shape)?
        } else {
            lw.take(&d.name, &d.shape)?
        };
        loaded.push((d.name.clone(), t));
    }
    lw.tensors
        .retain(|k, _| !k.ends_with(".num_batches_tracked"));
    lw.check_no_extra()?;
    Ok(loaded)
}

pub const TRAIN: &str = "train";
pub const INFER: &str = "infer";
/// A data-parallel step's update program (after the gradient all-reduce).
pub const UPDATE: &str = "update";

/// The one contiguous slot that holds the persistent tensors `names`
/// (the training graph's state, which `plan::compile` lays out together
/// in declaration order).
fn region(session: &Session, names: &[String]) -> Result<Slot> {
    let mut slots: Vec<Slot> = names
        .iter()
        .map(|n| Ok(session.persistent(n)?.slot))
        .collect::<Result<_>>()?;
    slots.sort_by_key(|s| s.offset);
    let first = slots
        .first()
        .ok_or_else(|| Error::Model("a data-parallel step stores no gradients".into()))?;
    let mut end = first.offset;
    for s in &slots {
        if s.offset != end {
            return Err(Error::Model(format!(
                "the gradients and running statistics are not one contiguous region (a gap at word {end})"
            )));
        }
        end = s.end();
    }
    Ok(Slot {
        offset: first.offset,
        len: end - first.offset,
    })
}

impl Classifier {
    pub fn new(config: ClassifierConfig, backend: &dyn Backend) -> Result<Self> {
        Self::data_parallel(config, backend, 1)
    }

    /// A classifier for one of `world` ranks of a data-parallel run: with
    /// `world > 1` a training step is two programs, and the gradients are
    /// summed across ranks between them ([`Classifier::train_step_on`]).
    pub fn data_parallel(
        config: ClassifierConfig,
        backend: &dyn Backend,
        world: usize,
    ) -> Result<Self> {
        let decls = config.spec.declare(&config.input)?;
        let (module, summed) = Self::compile(&config, world, backend.fuse_extras())?;
        let mut session = Session::new(backend, module)?;
        for (name, t) in init_params(&decls, config.seed) {
            session.write_persistent(&name, &t.data)?;
        }
        let train = config
            .train_batch
            .map(|_| session.program(TRAIN))
            .transpose()?;
        let update = match (train, world > 1) {
            (Some(_), true) => Some((session.program(UPDATE)?, region(&session, &summed)?)),
            _ => None,
        };
        let infer = session.program(INFER)?;
        Ok(Classifier {
            input_kind: config.spec.input_kind(),
            vocab: config.spec.vocab(),
            config,
            session,
            decls,
            train,
            update,
            infer,
            step: 0,
            all_reduce_time: std::time::Duration::ZERO,
        })
    }

    /// The fused (unless disabled) graphs, lowered into one module.
    pub fn module(config: &ClassifierConfig) -> Result<plan::Module> {
        Self::module_for(config, 1)
    }

    /// [`Classifier::module`] for one of `world` data-parallel ranks.
    /// Only the fusions every backend lowers are applied.
    pub fn module_for(config: &ClassifierConfig, world: usize) -> Result<plan::Module> {
        Ok(Self::compile(config, world, FuseExtras::default())?.0)
    }

    /// The module, and the persistent tensors the ranks sum after each
    /// step's first program (the gradients and the running statistics).
    fn compile(
        config: &ClassifierConfig,
        world: usize,
        extras: FuseExtras,
    ) -> Result<(plan::Module, Vec<String>)> {
        let mut graphs = Vec::new();
        let mut summed = Vec::new();
        match config.train_batch {
            Some(b) if world > 1 => {
                let grads = Self::gradient_graph(config, b)?;
                let shaped = |(n, v): (String, crate::graph::ValueId)| (n, grads.shape(v).clone());
                let params: Vec<(String, Shape)> = grads.params().into_iter().map(shaped).collect();
                let buffers: Vec<(String, Shape)> = grads
                    .persistent()
                    .into_iter()
                    .filter(|(n, _)| {
                        !n.starts_with(optim::GRAD_PREFIX) && !params.iter().any(|(p, _)| p == n)
                    })
                    .map(shaped)
                    .collect();
                let mut update = Graph::new(true);
                optim::update_from_stored(&mut update, &params, &buffers, &config.optim, world)?;
                summed = grads
                    .persistent()
                    .into_iter()
                    .filter(|(n, _)| !params.iter().any(|(p, _)| p == n))
                    .map(|(n, _)| n)
                    .collect();
                graphs.push((TRAIN, grads));
                graphs.push((UPDATE, update));
            }
            Some(b) => graphs.push((TRAIN, Self::train_graph(config, b)?)),
            None => {}
        }
        graphs.push((INFER, Self::infer_graph(config, config.infer_batch)?));
        if config.fuse {
            for (_, g) in graphs.iter_mut() {
                fuse::fuse_with(g, extras);
            }
        }
        let refs: Vec<(&str, &Graph)> = graphs.iter().map(|(n, g)| (*n, g)).collect();
        Ok((plan::compile(&refs)?, summed))
    }

    fn input_shape(c: &ClassifierConfig, batch: usize) -> Shape {
        let mut s = vec![batch];
        s.extend_from_slice(&c.input);
        Shape(s)
    }

    /// The model's inputs and forward pass: `x` (images), or `ids` and
    /// `lengths` (text, `input` = `[T]`). Returns the logits.
    fn forward(g: &mut Graph, c: &ClassifierConfig, batch: usize) -> Result<crate::graph::ValueId> {
        match c.spec.input_kind() {
            InputKind::Image => {
                let x = g.input("x", Self::input_shape(c, batch), DType::F32)?;
                c.spec.build(g, x)
            }
            InputKind::Tokens => {
                let ids = g.input("ids", Self::input_shape(c, batch), DType::U32)?;
                let lengths = g.input("lengths", [batch], DType::U32)?;
                c.spec.build_tokens(g, ids, lengths)
            }
        }
    }

    /// Forward, cross-entropy, backward and the optimiser update as one graph.
    pub fn train_graph(c: &ClassifierConfig, batch: usize) -> Result<Graph> {
        let (mut g, loss) = Self::loss_graph(c, batch)?;
        optim::append_update(&mut g, loss, &c.optim)?;
        Ok(g)
    }

    /// The forward pass and the training loss (outputs `loss` and `logits`).
    fn loss_graph(c: &ClassifierConfig, batch: usize) -> Result<(Graph, crate::graph::ValueId)> {
        let mut g = Graph::new(true);
        let logits = Self::forward(&mut g, c, batch)?;
        let y = g.input("y", [batch], DType::U32)?;
        Self::check_classes(&g, logits, c.classes)?;
        let loss = g.cross_entropy_smoothed(logits, y, c.optim.label_smoothing)?;
        g.set_output("loss", loss);
        g.set_output("logits", logits);
        Ok((g, loss))
    }

    /// Forward, cross-entropy and backward, the gradients left in the
    /// persistent `grad.*` region: a data-parallel step's first half.
    pub fn gradient_graph(c: &ClassifierConfig, batch: usize) -> Result<Graph> {
        let (mut g, loss) = Self::loss_graph(c, batch)?;
        optim::append_gradient_store(&mut g, loss)?;
        Ok(g)
    }

    pub fn infer_graph(c: &ClassifierConfig, batch: usize) -> Result<Graph> {
        let mut g = Graph::new(false);
        let logits = Self::forward(&mut g, c, batch)?;
        Self::check_classes(&g, logits, c.classes)?;
        g.set_output("logits", logits);
        Ok(g)
    }

    fn check_classes(g: &Graph, logits: crate::graph::ValueId, classes: usize) -> Result<()> {
        let s = g.shape(logits);
        if s.0[1] != classes {
            return Err(Error::Model(format!(
                "the model outputs {} values per example but the data has {classes} classes",
                s.0[1]
            )));
        }
        Ok(())
    }

    pub fn session(&self) -> &Session {
        &self.session
    }
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }
    pub fn device(&self) -> &str {
        self.session.device()
    }

    /// One optimiser step on a full batch. Returns the mean loss; the batch's
    /// logits can then be read with [`Classifier::train_logits`].
    pub fn train_step(&mut self, x: &[f32], y: &[u32], lr: f32) -> Result<f32> {
        self.train_step_input(&Input::Pixels(x), y, lr)
    }

    /// [`Classifier::train_step`] for any input kind.
    pub fn train_step_input(&mut self, x: &Input, y: &[u32], lr: f32) -> Result<f32> {
        self.train_step_on(x, y, lr, &Solo)
    }

    /// One data-parallel step: this rank's batch, the gradients summed
    /// across `group` (which must have the `world` this classifier was
    /// built for), the same update on every rank. Returns this rank's
    /// mean loss.
    pub fn train_step_on(
        &mut self,
        x: &Input,
        y: &[u32],
        lr: f32,
        group: &dyn Collective,
    ) -> Result<f32> {
        let p = self
            .train
            .ok_or_else(|| Error::Usage("this classifier was built for inference only".into()))?;
        if let Some((i, &l)) = y
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= self.config.classes)
        {
            return Err(Error::Usage(format!(
                "label {l} at batch row {i} is outside 0..{}",
                self.config.classes
            )));
        }
        self.write_input(p, x)?;
        self.session.write_input_u32(p, "y", y)?;
        self.session.set_scalar("lr", lr)?;
        if self.session.has_scalar("step") {
            self.session.set_scalar("step", (self.step + 1) as f32)?;
        }
        self.session.run(p)?;
        if let Some((update, region)) = self.update {
            let t = std::time::Instant::now();
            self.session.all_reduce(region, group)?;
            self.all_reduce_time += t.elapsed();
            self.session.run(update)?;
        } else if group.world() > 1 {
            return Err(Error::Usage(format!(
                "this classifier was built for one process but the run has {} ranks",
                group.world()
            )));
        }
        let mut loss = [0.0f32];
        self.session.read_output(p, "loss", &mut loss)?;
        self.step += 1;
        Ok(loss[0])
    }

    pub fn train_logits(&mut self, out: &mut [f32]) -> Result<()> {
        let p = self
            .train
            .ok_or_else(|| Error::Usage("no training program".into()))?;
        self.session.read_output(p, "logits", out)
    }

    /// Logits `[infer_batch, classes]` for a full inference batch.
    pub fn infer(&mut self, x: &[f32], out: &mut [f32]) -> Result<()> {
        self.infer_input(&Input::Pixels(x), out)
    }

    /// [`Classifier::infer`] for any input kind.
    pub fn infer_input(&mut self, x: &Input, out: &mut [f32]) -> Result<()> {
        self.write_input(self.infer, x)?;
        self.session.run(self.infer)?;
        self.session.read_output(self.infer, "logits", out)
    }

    /// Writes a batch into program `p`'s inputs. Token ids must lie in
    /// the vocabulary: a bad id is refused here rather than read as a
    /// zero vector by the kernels.
    pub fn write_input(&mut self, p: usize, x: &Input) -> Result<()> {
        match (x, self.input_kind) {
            (Input::Pixels(x), InputKind::Image) => self.session.write_input(p, "x", x),
            (Input::Tokens { ids, lengths }, InputKind::Tokens) => {
                let vocab = self.vocab.unwrap_or(usize::MAX);
                if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab)
                {
                    return Err(Error::Usage(format!(
                        "token id {id} at position {i} is outside the vocabulary of {vocab}"
                    )));
                }
                self.session.write_input_u32(p, "ids", ids)?;
                self.session.write_input_u32(p, "lengths", lengths)
            }
            (Input::Pixels(_), InputKind::Tokens) => Err(Error::Usage(
                "this model reads token ids, not images".into(),
            )),
            (Input::Tokens { .. }, InputKind::Image) => Err(Error::Usage(
                "this model reads images, not token ids".into(),
            )),
        }
    }

    /// Parameters and running statistics: what a weights file holds.
    pub fn model_tensors(&mut self) -> Result<Vec<(String, Tensor)>> {
        let names: Vec<String> = self.decls.iter().map(|d| d.name.clone()).collect();
        names
            .into_iter()
            .map(|n| Ok((n.clone(), self.session.read_persistent(&n)?)))
            .collect()
    }

    /// Optimiser state tensors (not model weights).
    pub fn optim_tensors(&mut self) -> Result<Vec<(String, Tensor)>> {
        let names: Vec<String> = self
            .session
            .module()
            .persistent
            .iter()
            .filter(|b| b.name.starts_with("optim."))
            .map(|b| b.name.clone())
            .collect();
        names
            .into_iter()
            .map(|n| Ok((n.clone(), self.session.read_persistent(&n)?)))
            .collect()
    }

    pub fn save_weights(&mut self, path: &Path, dtype: DType) -> Result<()> {
        let tensors = self.model_tensors()?;
        let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
        let meta = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            ("gpurt.model".to_string(), self.config.spec.name.clone()),
        ]);
        weights::save(path, &refs, dtype, Some(meta))
    }

    /// Load weights saved by gpurt or PyTorch (`state_dict` names). Every
    /// declared tensor must be present with its shape; nothing is written
    /// to the device unless all of them are.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        for (n, t) in read_weights(&self.decls, path)? {
            self.session.write_persistent(&n, &t.data)?;
        }
        Ok(())
    }

    pub fn save_optim(&mut self, path: &Path) -> Result<()> {
        let tensors = self.optim_tensors()?;
        let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
        let meta = HashMap::from([
            ("format".to_string(), "gpurt-optim-v1".to_string()),
            ("step".to_string(), self.step.to_string()),
        ]);
        weights::save(path, &refs, DType::F32, Some(meta))
    }

    pub fn load_optim(&mut self, path: &Path) -> Result<()> {
        let mut lw = weights::load(path)?;
        let step: u64 = lw
            .metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::format(path, "optimiser state has no 'step' in its metadata"))?;
        let bindings: Vec<(String, Shape)> = self
            .session
            .module()
            .persistent
            .iter()
            .filter(|b| b.name.starts_with("optim."))
            .map(|b| (b.name.clone(), b.shape.clone()))
            .collect();
        let mut loaded = Vec::new();
        for (n, s) in &bindings {
            let t = if n.starts_with("optim.exp_avg_sq.") {
                lw.take_non_negative(n, s)?
            } else {
                lw.take(n, s)?
            };
            loaded.push((n.clone(), t));
        }
        lw.check_no_extra()?;
        for (n, t) in loaded {
            self.session.write_persistent(&n, &t.data)?;
        }
        self.step = step;
        Ok(())
    }

    /// The first parameter, running statistic or optimiser state (in
    /// declaration order) holding a NaN or infinity.
    pub fn first_non_finite(&mut self) -> Result<Option<String>> {
        let names: Vec<String> = self
            .session
            .module()
            .persistent
            .iter()
            .map(|b| b.name.clone())
            .collect();
        for n in names {
            if self
                .session
                .read_persistent(&n)?
                .data
                .iter()
                .any(|v| !v.is_finite())
            {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.decls
            .iter()
            .filter(|d| !d.name.ends_with("running_mean") && !d.name.ends_with("running_var"))
            .map(|d| d.shape.numel())
            .sum()
    }

    pub fn decls(&self) -> &[ParamDecl] {
        &self.decls
    }
}
