//! The model spec: its layers, the presets and TOML parsing. Building it
//! into a graph is `build.rs`.

pub use super::layer::{Layer, Node};
use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::tensor::Shape;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(rename = "layer")]
    pub layers: Vec<Node>,
    /// The layer whose output is the model's (the last one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

fn default_name() -> String {
    "custom".into()
}

/// Largest number of elements in any one tensor a spec may describe, and in
/// all its parameters and state together, and in all its layer outputs
/// together at the batch being built: 2^32 f32 values are 16 GiB. A spec
/// past these is refused while its shapes are worked out, before anything
/// is allocated.
pub const MAX_SPEC_ELEMENTS: u64 = 1 << 32;

/// Largest kernel, stride, padding or dilation a layer may ask for. Shape
/// arithmetic stays far from overflow below it.
pub const MAX_WINDOW: usize = 1 << 16;

/// The first layer that does not parse on its own, named by number and
/// type (serde's message for the whole file names neither).
fn layer_error(text: &str) -> Option<Error> {
    let raw: toml::Table = toml::from_str(text).ok()?;
    let layers = raw.get("layer")?.as_array()?;
    layers.iter().enumerate().find_map(|(i, l)| {
        let e = l.clone().try_into::<Node>().err()?;
        let kind = l.get("type").and_then(|t| t.as_str()).unwrap_or("?");
        Some(Error::Model(format!(
            "layer {} ({kind}): {}",
            i + 1,
            e.message().trim()
        )))
    })
}

/// serde ignores extra keys on an internally tagged enum's field-less
/// variants (`relu`, `flatten`, ...), so every layer's keys are compared
/// with those of the layer they parsed into: a key it does not write back
/// is one it does not know.
fn check_layer_keys(text: &str, spec: &ModelSpec) -> Result<()> {
    let raw: toml::Table =
        toml::from_str(text).map_err(|e| Error::Model(e.message().trim().to_string()))?;
    let Some(toml::Value::Array(layers)) = raw.get("layer") else {
        return Ok(());
    };
    for (i, (written, parsed)) in layers.iter().zip(&spec.layers).enumerate() {
        let known = toml::Value::try_from(parsed)
            .map_err(|e| Error::Model(format!("layer {}: {e}", i + 1)))?;
        let (Some(written), Some(known)) = (written.as_table(), known.as_table()) else {
            continue;
        };
        let place = |k: &str| matches!(k, "name" | "inputs");
        if let Some(key) = written
            .keys()
            .find(|k| !known.contains_key(*k) && !place(k))
        {
            return Err(Error::Model(format!(
                "layer {} ({}): unknown key `{key}`",
                i + 1,
                parsed.layer.kind()
            )));
        }
    }
    Ok(())
}

/// What a model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// `x [N, C, H, W]` (or any f32 shape), f32.
    Image,
    /// `ids [N, T]` and `lengths [N]`, u32: padded token ids and counts.
    Tokens,
}

/// How a parameter is initialised (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(-1/√fan_in, 1/√fan_in): PyTorch's default for conv/linear
    /// weights (kaiming-uniform with a=√5) and biases.
    FanIn(usize),
    /// U(-bound, bound) (Xavier-uniform when bound = √(6/(fan_in+fan_out))).
    Uniform(f32),
    /// N(0, std²): `nn.Embedding`'s default with std 1.
    Normal(f32),
    Ones,
    Zeros,
}

/// A declared parameter or state tensor with its initialiser.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: String,
    pub shape: Shape,
    pub init: Init,
}

impl ModelSpec {
    /// A plain stack: each layer takes the one before it.
    pub fn sequential(name: &str, layers: Vec<Layer>) -> Self {
        ModelSpec {
            name: name.into(),
            layers: layers.into_iter().map(Node::from).collect(),
            output: None,
        }
    }

    /// The seed CNN: conv32-pool-conv64-pool-conv64-dense64-dense10, ReLU,
    /// no padding. Adapts to 28×28×1 or 32×32×3 (or any input that fits).
    pub fn cnn(classes: usize) -> Self {
        use Layer::*;
        let conv = |f| Conv2d {
            filters: f,
            kernel: 3,
            stride: 1,
            padding: 0,
            dilation: 1,
            bias: true,
        };
        let pool = || MaxPool2d {
            kernel: 2,
            stride: None,
        };
        ModelSpec::sequential(
            "cnn",
            vec![
                conv(32),
                Relu,
                pool(),
                conv(64),
                Relu,
                pool(),
                conv(64),
                Relu,
                Flatten,
                Dense {
                    units: 64,
                    bias: true,
                },
                Relu,
                Dense {
                    units: classes,
                    bias: true,
                },
            ],
        )
    }

    /// A two-hidden-layer MLP classifier.
    pub fn mlp(classes: usize) -> Self {
        use Layer::*;
        ModelSpec::sequential(
            "mlp",
            vec![
                Flatten,
                Dense {
                    units: 256,
                    bias: true,
                },
                Relu,
                Dense {
                    units: 128,
                    bias: true,
                },
                Relu,
                Dense {
                    units: classes,
                    bias: true,
                },
            ],
        )
    }

    /// fastText: the mean of the document's token vectors (dim 64), then a
    /// linear classifier (`embedding.weight`, `fc.weight`, `fc.bias`).
    pub fn fasttext(classes: usize) -> Self {
        ModelSpec {
            name: "fasttext".into(),
            layers: vec![
                Node::named(
                    "embedding",
                    &[],
                    Layer::EmbeddingBag {
                        vocab: None,
                        dim: 64,
                    },
                ),
                Self::text_head(classes),
            ],
            output: None,
        }
    }

    /// The text presets' linear classifier, `fc` as in PyTorch examples.
    fn text_head(classes: usize) -> Node {
        Node::named(
            "fc",
            &[],
            Layer::Dense {
                units: classes,
                bias: true,
            },
        )
    }

    /// A small BERT-style classifier: token and learned positional
    /// embeddings (d 128), a 2-layer pre-LN encoder (4 heads, FFN 512,
    /// GELU, dropout 0.1) with a final norm, the mean over the tokens, a
    /// linear head. PyTorch names: `embedding`, `pos_embedding`,
    /// `encoder.layers.<i>.*`, `encoder.norm`, `fc`.
    pub fn transformer(classes: usize) -> Self {
        ModelSpec {
            name: "transformer".into(),
            layers: vec![
                Node::named(
                    "embedding",
                    &[],
                    Layer::Embedding {
                        vocab: None,
                        dim: 128,
                    },
                ),
                Node::named(
                    "pos_embedding",
                    &[],
                    Layer::PositionalEmbedding { max_len: None },
                ),
                Node::named(
                    "encoder",
                    &[],
                    Layer::TransformerEncoder {
                        layers: 2,
                        heads: 4,
                        ffn: 512,
                        dropout: 0.1,
                        activation: "gelu".into(),
                    },
                ),
                Node::from(Layer::MaskedMeanPool),
                Self::text_head(classes),
            ],
            output: None,
        }
    }

    pub fn preset(name: &str, classes: usize) -> Option<Self> {
        match name {
            "fasttext" => Some(Self::fasttext(classes)),
            "transformer" => Some(Self::transformer(classes)),
            "cnn" => Some(Self::cnn(classes)),
            "mlp" => Some(Self::mlp(classes)),
            "resnet20" => Some(Self::resnet(20, classes)),
            "resnet32" => Some(Self::resnet(32, classes)),
            "resnet56" => Some(Self::resnet(56, classes)),
            _ => None,
        }
    }

    /// A preset name, or a path to a TOML spec.
    pub fn resolve(model: &str, classes: usize) -> Result<Self> {
        if let Some(s) = Self::preset(model, classes) {
            return Ok(s);
        }
        let p = Path::new(model);
        if p.extension().is_some_and(|e| e == "toml") || p.exists() {
            return Self::from_toml_file(p);
        }
        Err(Error::Model(format!(
            "unknown model '{model}' (expected cnn, mlp, resnet20, resnet32, resnet56, fasttext, transformer or a path to a .toml spec)"
        )))
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Model(m) => Error::Model(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        if text.len() > 1 << 20 {
            return Err(Error::Limit("model spec is larger than 1 MiB".into()));
        }
        let spec: ModelSpec = toml::from_str(text).map_err(|e| {
            layer_error(text).unwrap_or_else(|| Error::Model(e.message().trim().to_string()))
        })?;
        if spec.layers.is_empty() {
            return Err(Error::Model("the model has no layers".into()));
        }
        check_layer_keys(text, &spec)?;
        super::build::check_wiring(&spec)?;
        Ok(spec)
    }

    /// Parameters and state this spec declares for an input `[c, h, w]`,
    /// with shapes checked layer by layer. This is the shape rule of the
    /// whole model, run without building a graph.
    pub fn declare(&self, input: &[usize]) -> Result<Vec<ParamDecl>> {
        let mut g = Graph::new(false);
        let mut shape = vec![1];
        shape.extend_from_slice(input);
        let mut decls = Vec::new();
        match self.input_kind() {
            InputKind::Image => {
                let x = g.input("x", shape, crate::DType::F32)?;
                self.build_inner(&mut g, x, None, Some(&mut decls))?;
            }
            InputKind::Tokens => {
                let ids = g.input("ids", shape, crate::DType::U32)?;
                let len = g.input("lengths", [1], crate::DType::U32)?;
                self.build_inner(&mut g, ids, Some(len), Some(&mut decls))?;
            }
        }
        Ok(decls)
    }

    /// Build the forward pass on `x [n, c, h, w]`; returns the logits.
    pub fn build(&self, g: &mut Graph, x: ValueId) -> Result<ValueId> {
        self.build_inner(g, x, None, None)
    }

    /// Build the forward pass of a text model on token ids `[n, T]` (u32,
    /// padded) and their counts `lengths [n]`; returns the logits.
    pub fn build_tokens(&self, g: &mut Graph, ids: ValueId, lengths: ValueId) -> Result<ValueId> {
        self.build_inner(g, ids, Some(lengths), None)
    }

    /// What the model reads: token ids when a layer on the model's input
    /// is an embedding, else images.
    pub fn input_kind(&self) -> InputKind {
        let Ok(wires) = super::build::wire(&self.layers) else {
            return InputKind::Image;
        };
        let on_input = self
            .layers
            .iter()
            .zip(&wires)
            .any(|(n, w)| n.layer.reads_tokens() && w.contains(&super::build::Source::Input));
        match on_input {
            true => InputKind::Tokens,
            false => InputKind::Image,
        }
    }

    /// The vocabulary size of the first token embedding, if set.
    pub fn vocab(&self) -> Option<usize> {
        self.layers.iter().find_map(|n| match n.layer {
            Layer::Embedding { vocab, .. } | Layer::EmbeddingBag { vocab, .. } => vocab,
            _ => None,
        })
    }

    /// The same spec with every embedding's unset vocabulary set to
    /// `vocab` (the tokenizer's).
    pub fn with_vocab(mut self, vocab: usize) -> Self {
        for n in &mut self.layers {
            if let Layer::Embedding { vocab: v, .. } | Layer::EmbeddingBag { vocab: v, .. } =
                &mut n.layer
            {
                v.get_or_insert(vocab);
            }
        }
        self
    }
}
