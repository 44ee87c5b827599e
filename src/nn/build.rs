//! Building a spec into a graph: the layers are put in dependency order
//! (cycles, unknown input names and unused layers are refused, naming the
//! layers), then built one by one with their shapes checked and their
//! parameters declared under PyTorch names.

use super::layer::{Layer, Node};
use super::spec::{Init, ModelSpec, ParamDecl, MAX_SPEC_ELEMENTS};
use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::batchnorm::BatchNormParams;
use crate::ops::{Activation, ConvParams, PoolParams};
use crate::tensor::Shape;
use std::collections::HashMap;

/// The name a spec's layers use for the model's input.
pub const INPUT: &str = "input";

/// Where a layer's input comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Source {
    Input,
    Layer(usize),
}

/// `layer 3 (conv2d)` or, for a named layer, `layer 3 'stem' (conv2d)`:
/// how every message refers to a layer.
pub(super) fn label(i: usize, node: &Node) -> String {
    match &node.name {
        Some(n) => format!("layer {} '{n}' ({})", i + 1, node.layer.kind()),
        None => format!("layer {} ({})", i + 1, node.layer.kind()),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Each layer's inputs, from its `inputs` names or, without them, the
/// layer before it.
pub(super) fn wire(layers: &[Node]) -> Result<Vec<Vec<Source>>> {
    let mut by_name = HashMap::new();
    for (i, node) in layers.iter().enumerate() {
        let Some(name) = &node.name else { continue };
        if !valid_name(name) || name == INPUT {
            return Err(Error::Model(format!(
                "{}: the name must be 1-128 letters, digits, '_', '.' or '-', and not '{INPUT}'",
                label(i, node)
            )));
        }
        if let Some(j) = by_name.insert(name.as_str(), i) {
            return Err(Error::Model(format!(
                "{}: the name is already used by {}",
                label(i, node),
                label(j, &layers[j])
            )));
        }
    }
    layers
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let (min, max) = node.layer.arity();
            if node.inputs.is_empty() && min > 1 {
                return Err(Error::Model(format!(
                    "{}: needs `inputs = [...]` naming at least {min} layers",
                    label(i, node)
                )));
            }
            if node.inputs.len() > max {
                return Err(Error::Model(format!(
                    "{}: takes one input, got {} ({})",
                    label(i, node),
                    node.inputs.len(),
                    node.inputs.join(", ")
                )));
            }
            if node.inputs.len() < min && !node.inputs.is_empty() {
                return Err(Error::Model(format!(
                    "{}: needs at least {min} inputs, got {}",
                    label(i, node),
                    node.inputs.len()
                )));
            }
            if node.inputs.is_empty() {
                return Ok(vec![match i {
                    0 => Source::Input,
                    _ => Source::Layer(i - 1),
                }]);
            }
            node.inputs
                .iter()
                .map(|name| match by_name.get(name.as_str()) {
                    _ if name == INPUT => Ok(Source::Input),
                    Some(&j) => Ok(Source::Layer(j)),
                    None => Err(Error::Model(format!(
                        "{}: input '{name}' names no layer (inputs are layer names or '{INPUT}')",
                        label(i, node)
                    ))),
                })
                .collect()
        })
        .collect()
}

/// The layers the output depends on, each after its inputs (depth first
/// from the output, without recursion so long specs cannot overflow the
/// stack). A cycle is reported with the layers on it.
fn order(layers: &[Node], wires: &[Vec<Source>], output: usize) -> Result<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; layers.len()];
    let mut sorted = Vec::with_capacity(layers.len());
    // (layer, next input to visit)
    let mut stack = vec![(output, 0usize)];
    mark[output] = Mark::Open;
    while let Some(top) = stack.last_mut() {
        let (i, k) = *top;
        let Some(&src) = wires[i].get(k) else {
            mark[i] = Mark::Done;
            sorted.push(i);
            stack.pop();
            continue;
        };
        top.1 += 1;
        let Source::Layer(j) = src else { continue };
        match mark[j] {
            Mark::Done => {}
            Mark::New => {
                mark[j] = Mark::Open;
                stack.push((j, 0));
            }
            Mark::Open => {
                let from = stack.iter().position(|&(l, _)| l == j).unwrap_or(0);
                // The stack runs from the output towards the inputs; data
                // flows the other way: j feeds the top, which feeds the
                // layer below it, ... back to j.
                let mut cycle = vec![label(j, &layers[j])];
                cycle.extend(
                    stack[from..]
                        .iter()
                        .rev()
                        .map(|&(l, _)| label(l, &layers[l])),
                );
                return Err(Error::Model(format!(
                    "the layers form a cycle: {}",
                    cycle.join(" -> ")
                )));
            }
        }
    }
    if let Some(i) = mark.iter().position(|&m| m == Mark::New) {
        return Err(Error::Model(format!(
            "{} does not lead to the output ({}); remove it or use it as an input",
            label(i, &layers[i]),
            label(output, &layers[output])
        )));
    }
    Ok(sorted)
}

/// The parameter prefix of each layer that has parameters: its name, or
/// `conv<k>` / `fc<k>` / `bn<k>` counted in file order as before names
/// existed, so Sequential specs keep their weight names.
pub(super) fn prefixes(layers: &[Node]) -> Result<Vec<Option<String>>> {
    let (mut conv, mut fc, mut bn, mut emb, mut norm) = (0, 0, 0, 0, 0);
    let numbered = |base: &str, k: usize| match k {
        1 => base.to_string(),
        _ => format!("{base}{k}"),
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(layers.len());
    for (i, node) in layers.iter().enumerate() {
        let auto = match node.layer {
            Layer::Conv2d { .. } => {
                conv += 1;
                format!("conv{conv}")
            }
            Layer::Dense { .. } => {
                fc += 1;
                format!("fc{fc}")
            }
            Layer::BatchNorm2d { .. } => {
                bn += 1;
                format!("bn{bn}")
            }
            Layer::Embedding { .. } | Layer::EmbeddingBag { .. } => {
                emb += 1;
                numbered("embedding", emb)
            }
            Layer::PositionalEmbedding { .. } => "pos_embedding".into(),
            Layer::TransformerEncoder { .. } => "encoder".into(),
            Layer::LayerNorm { .. } => {
                norm += 1;
                format!("norm{norm}")
            }
            _ => {
                out.push(None);
                continue;
            }
        };
        let prefix = node.name.clone().unwrap_or(auto);
        if let Some(j) = seen.insert(prefix.clone(), i) {
            return Err(Error::Model(format!(
                "{}: its parameters '{prefix}.*' clash with those of {}; name one of them",
                label(i, node),
                label(j, &layers[j])
            )));
        }
        out.push(Some(prefix));
    }
    Ok(out)
}

/// The wiring rules that need no shapes (names, input counts, unknown
/// inputs, cycles, unused layers), checked when a spec is parsed so the
/// error can name its file.
pub(super) fn check_wiring(spec: &ModelSpec) -> Result<()> {
    let wires = wire(&spec.layers)?;
    let output = output_index(spec)?;
    order(&spec.layers, &wires, output)?;
    prefixes(&spec.layers).map(|_| ())
}

pub(super) fn output_index(spec: &ModelSpec) -> Result<usize> {
    match &spec.output {
        None => Ok(spec.layers.len().saturating_sub(1)),
        Some(name) => spec
            .layers
            .iter()
            .position(|n| n.name.as_deref() == Some(name))
            .ok_or_else(|| Error::Model(format!("output '{name}' names no layer"))),
    }
}

/// Running totals that keep a spec inside [`MAX_SPEC_ELEMENTS`].
struct Budget {
    params: u64,
    activations: u64,
}

impl ModelSpec {
    /// Builds the layers on the model's input `x` (an image batch, or
    /// token ids with their `lengths`).
    pub(super) fn build_inner(
        &self,
        g: &mut Graph,
        x: ValueId,
        lengths: Option<ValueId>,
        mut decls: Option<&mut Vec<ParamDecl>>,
    ) -> Result<ValueId> {
        let input = g.shape(x).clone();
        if input.0.contains(&0) {
            return Err(Error::Model(format!("the input {input} is empty")));
        }
        let activations = bounded_numel(&input.0).ok_or_else(|| {
            Error::Limit(format!(
                "model input {input} has more than {MAX_SPEC_ELEMENTS} elements"
            ))
        })?;
        let mut budget = Budget {
            params: 0,
            activations,
        };
        for (i, node) in self.layers.iter().enumerate() {
            node.layer
                .check_settings()
                .map_err(|e| Error::Model(format!("{}: {e}", label(i, node))))?;
        }
        let wires = wire(&self.layers)?;
        if self.layers.is_empty() {
            return Err(Error::Model("the model has no layers".into()));
        }
        let output = output_index(self)?;
        let sorted = order(&self.layers, &wires, output)?;
        let prefixes = prefixes(&self.layers)?;
        let mut dropouts = 0u32;
        let drop_index: Vec<u32> = self
            .layers
            .iter()
            .map(|n| {
                if matches!(n.layer, Layer::Dropout { .. }) {
                    dropouts += 1;
                }
                dropouts
            })
            .collect();
        let mut values: Vec<Option<ValueId>> = vec![None; self.layers.len()];
        for &i in &sorted {
            let node = &self.layers[i];
            let ins: Vec<ValueId> = wires[i]
                .iter()
                .map(|s| match *s {
                    Source::Input => x,
                    Source::Layer(j) => values[j].expect("inputs are built first"),
                })
                .collect();
            let ctx = LayerCtx {
                label: label(i, node),
                prefix: prefixes[i].as_deref(),
                drop_index: drop_index[i],
                lengths,
                layer_index: i,
            };
            let h = ctx.build(
                g,
                node,
                &wires[i],
                &self.layers,
                &ins,
                &mut budget,
                &mut decls,
            )?;
            let out = g.shape(h);
            if out.0.contains(&0) {
                return Err(Error::Model(format!(
                    "{} gives an empty output {out}",
                    ctx.label
                )));
            }
            budget.activations = bounded_numel(&out.0)
                .and_then(|n| budget.activations.checked_add(n))
                .filter(|&n| n <= MAX_SPEC_ELEMENTS)
                .ok_or_else(|| {
                    Error::Limit(format!(
                        "{}: with its output {out} the model's activations have more than {MAX_SPEC_ELEMENTS} elements",
                        ctx.label
                    ))
                })?;
            values[i] = Some(h);
        }
        let h = values[output].expect("the output is built last");
        let s = g.shape(h);
        if s.rank() != 2 {
            return Err(Error::Model(format!(
                "the output layer must give [N, classes], got {s}: add flatten and dense layers"
            )));
        }
        Ok(h)
    }
}

/// What building one layer needs to know besides the layer itself.
struct LayerCtx<'a> {
    label: String,
    prefix: Option<&'a str>,
    drop_index: u32,
    /// The token counts of a text model's input.
    lengths: Option<ValueId>,
    layer_index: usize,
}

impl LayerCtx<'_> {
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        g: &mut Graph,
        node: &Node,
        wires: &[Source],
        layers: &[Node],
        ins: &[ValueId],
        budget: &mut Budget,
        decls: &mut Option<&mut Vec<ParamDecl>>,
    ) -> Result<ValueId> {
        let me = &self.label;
        let at = |e: Error| match e {
            Error::Shape { detail, .. } => Error::Model(format!("{me}: {detail}")),
            other => other,
        };
        let mut declare = |g: &mut Graph,
                           suffix: &str,
                           shape: Vec<usize>,
                           init: Init,
                           state: bool|
         -> Result<ValueId> {
            let name = format!("{}.{suffix}", self.prefix.unwrap_or("?"));
            let n = bounded_numel(&shape).ok_or_else(|| {
                Error::Limit(format!(
                    "{me}: {name} of shape {} has more than {MAX_SPEC_ELEMENTS} elements",
                    Shape(shape.clone())
                ))
            })?;
            budget.params += n;
            if budget.params > MAX_SPEC_ELEMENTS {
                return Err(Error::Limit(format!(
                    "{me}: with {name} the model has more than {MAX_SPEC_ELEMENTS} parameter and state elements"
                )));
            }
            if let Some(d) = decls.as_deref_mut() {
                d.push(ParamDecl {
                    name: name.clone(),
                    shape: Shape(shape.clone()),
                    init,
                });
            }
            if state {
                g.state(&name, shape)
            } else {
                g.param(&name, shape)
            }
        };
        let h = ins[0];
        let s = g.shape(h).clone();
        let lengths = || {
            self.lengths.ok_or_else(|| {
                Error::Model(format!(
                    "{me} needs token ids: the model's input must go through an embedding layer"
                ))
            })
        };
        let need_tokens = || -> Result<()> {
            match (g.dtype(h), s.rank()) {
                (crate::DType::U32, 2) => Ok(()),
                _ => Err(Error::Model(format!(
                    "{me} needs token ids [N, T], got {} {s}: put it first, on the model's input",
                    g.dtype(h)
                ))),
            }
        };
        let need_sequence = |what: &str| -> Result<()> {
            match (g.dtype(h), s.rank()) {
                (crate::DType::F32, 3) => Ok(()),
                _ => Err(Error::Model(format!(
                    "{me} needs token vectors [N, T, D]{what}, got {s}: put it after an embedding"
                ))),
            }
        };
        let need_image = |what: &str| -> Result<()> {
            match s.rank() {
                4 => Ok(()),
                _ => Err(Error::Model(format!(
                    "{me} needs an image [N,C,H,W], got {s}{what}"
                ))),
            }
        };
        Ok(match &node.layer {
            Layer::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                dilation,
                bias,
            } => {
                need_image("")?;
                // Bounded: c <= 2^32 and kernel <= 2^16 (checked before).
                let fan_in = s.0[1].saturating_mul(kernel * kernel);
                let shape = vec![*filters, s.0[1], *kernel, *kernel];
                let (w, b) = weight_and_bias(&mut declare, g, shape, *bias, fan_in)?;
                let p = ConvParams {
                    stride: (*stride, *stride),
                    pad: (*padding, *padding),
                    dilation: (*dilation, *dilation),
                };
                g.conv2d(h, w, b, p).map_err(at)?
            }
            Layer::MaxPool2d { kernel, stride } => g
                .max_pool2d(h, square_window(*kernel, *stride))
                .map_err(at)?,
            Layer::AvgPool2d { kernel, stride } => g
                .avg_pool2d(h, square_window(*kernel, *stride))
                .map_err(at)?,
            Layer::GlobalAvgPool => g.global_avg_pool(h).map_err(at)?,
            Layer::Flatten => g.flatten(h).map_err(at)?,
            Layer::Dense { units, bias } => {
                if s.rank() != 2 {
                    return Err(Error::Model(format!(
                        "{me} needs [N, features], got {s}: add a flatten layer first"
                    )));
                }
                let fan_in = s.0[1];
                let (w, b) = weight_and_bias(&mut declare, g, vec![*units, fan_in], *bias, fan_in)?;
                g.linear(h, w, b).map_err(at)?
            }
            Layer::Relu => g.act(Activation::Relu, h)?,
            Layer::Gelu => g.act(Activation::Gelu, h)?,
            Layer::Sigmoid => g.act(Activation::Sigmoid, h)?,
            Layer::Tanh => g.act(Activation::Tanh, h)?,
            Layer::Dropout { rate } => g
                .dropout(h, *rate, 0x9E37_79B9u32.wrapping_mul(self.drop_index))
                .map_err(at)?,
            Layer::BatchNorm2d { eps, momentum } => {
                need_image("")?;
                let c = vec![s.0[1]];
                let p = BatchNormParams {
                    gamma: declare(g, "weight", c.clone(), Init::Ones, false)?,
                    beta: declare(g, "bias", c.clone(), Init::Zeros, false)?,
                    running_mean: declare(g, "running_mean", c.clone(), Init::Zeros, true)?,
                    running_var: declare(g, "running_var", c, Init::Ones, true)?,
                };
                g.batch_norm2d(h, &p, *eps, *momentum).map_err(at)?
            }
            Layer::Embedding { vocab, dim } | Layer::EmbeddingBag { vocab, dim } => {
                need_tokens()?;
                let vocab = vocab.ok_or_else(|| {
                    Error::Model(format!(
                        "{me}: vocab is not set (it is the tokenizer's when training on text)"
                    ))
                })?;
                let mut d = |g: &mut Graph, sfx: &str, sh, init| declare(g, sfx, sh, init, false);
                let w = d(g, "weight", vec![vocab, *dim], Init::Normal(1.0))?;
                match node.layer {
                    Layer::EmbeddingBag { .. } => g.embedding_bag(w, h, lengths()?).map_err(at)?,
                    _ => g.embedding(w, h).map_err(at)?,
                }
            }
            Layer::PositionalEmbedding { max_len } => {
                need_sequence("")?;
                let (t, dim) = (s.0[1], s.0[2]);
                let max_len = max_len.unwrap_or(t);
                if t > max_len {
                    return Err(Error::Model(format!(
                        "{me}: sequences of {t} tokens are longer than max_len {max_len}"
                    )));
                }
                let w = declare(g, "weight", vec![max_len, dim], Init::Normal(1.0), false)?;
                let w = match t < max_len {
                    true => g.slice(w, 0, 0, t).map_err(at)?,
                    false => w,
                };
                g.add(h, w).map_err(at)?
            }
            Layer::TransformerEncoder {
                layers,
                heads,
                ffn,
                dropout,
                activation,
            } => {
                need_sequence("")?;
                if !s.0[2].is_multiple_of(*heads) {
                    return Err(Error::Model(format!(
                        "{me}: width {} does not split into {heads} heads",
                        s.0[2]
                    )));
                }
                let enc = super::text::Encoder {
                    layers: *layers,
                    heads: *heads,
                    ffn: *ffn,
                    dropout: *dropout,
                    act: match activation.as_str() {
                        "relu" => Activation::Relu,
                        _ => Activation::Gelu,
                    },
                    seed: 0x7E57_0000 ^ self.layer_index as u32,
                };
                let mut d = |g: &mut Graph, sfx: &str, sh, init| declare(g, sfx, sh, init, false);
                enc.build(g, &mut d, h, lengths()?).map_err(at)?
            }
            Layer::MaskedMeanPool => {
                need_sequence("")?;
                g.masked_mean_pool(h, lengths()?).map_err(at)?
            }
            Layer::LayerNorm { eps } => {
                let n = vec![*s.0.last().unwrap_or(&1)];
                let w = declare(g, "weight", n.clone(), Init::Ones, false)?;
                let b = declare(g, "bias", n, Init::Zeros, false)?;
                g.layer_norm(h, Some(w), Some(b), *eps).map_err(at)?
            }
            Layer::Add | Layer::Concat => {
                let source = |k: usize| match wires[k] {
                    Source::Input => format!("'{INPUT}'"),
                    Source::Layer(j) => label(j, &layers[j]),
                };
                let concat = matches!(node.layer, Layer::Concat);
                for (k, &v) in ins.iter().enumerate().skip(1) {
                    let t = g.shape(v);
                    let fits = match concat {
                        false => *t == s,
                        true => {
                            t.rank() == s.rank()
                                && s.rank() >= 2
                                && (0..s.rank()).all(|d| d == 1 || t.0[d] == s.0[d])
                        }
                    };
                    if !fits {
                        let rule = match concat {
                            false => "the inputs of add must have one shape",
                            true => "concat joins on channels (axis 1); the other axes must agree",
                        };
                        return Err(Error::Model(format!(
                            "{me}: {rule}, but {} gives {s} and {} gives {t}",
                            source(0),
                            source(k)
                        )));
                    }
                }
                match concat {
                    false => {
                        let mut sum = ins[0];
                        for &v in &ins[1..] {
                            sum = g.add(sum, v).map_err(at)?;
                        }
                        sum
                    }
                    true => g.concat(ins, 1).map_err(at)?,
                }
            }
        })
    }
}

/// `weight` of `shape` and, with `bias`, `bias` of `[shape[0]]`, both
/// initialised from the layer's fan-in (PyTorch's default for conv and
/// linear layers).
fn weight_and_bias(
    declare: &mut impl FnMut(&mut Graph, &str, Vec<usize>, Init, bool) -> Result<ValueId>,
    g: &mut Graph,
    shape: Vec<usize>,
    bias: bool,
    fan_in: usize,
) -> Result<(ValueId, Option<ValueId>)> {
    let out = shape[0];
    let w = declare(g, "weight", shape, Init::FanIn(fan_in), false)?;
    let b = match bias {
        true => Some(declare(g, "bias", vec![out], Init::FanIn(fan_in), false)?),
        false => None,
    };
    Ok((w, b))
}

/// Elements of `shape`, if at most [`MAX_SPEC_ELEMENTS`].
fn bounded_numel(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_SPEC_ELEMENTS)
}

/// A square, unpadded pooling window; the stride defaults to the window.
fn square_window(kernel: usize, stride: Option<usize>) -> PoolParams {
    let stride = stride.unwrap_or(kernel);
    PoolParams {
        kernel: (kernel, kernel),
        stride: (stride, stride),
        pad: (0, 0),
    }
}
