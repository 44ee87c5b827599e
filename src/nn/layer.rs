//! One layer of a model spec, its settings and where its inputs come from.

use super::spec::MAX_WINDOW;
use serde::{Deserialize, Serialize};

/// One layer. Parameter-free layers adapt to whatever shape arrives.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    Conv2d {
        filters: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "one")]
        dilation: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    MaxPool2d {
        #[serde(default = "two")]
        kernel: usize,
        stride: Option<usize>,
    },
    AvgPool2d {
        #[serde(default = "two")]
        kernel: usize,
        stride: Option<usize>,
    },
    GlobalAvgPool,
    Flatten,
    Dense {
        units: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    Relu,
    Gelu,
    Sigmoid,
    Tanh,
    Dropout {
        rate: f32,
    },
    BatchNorm2d {
        #[serde(default = "bn_eps")]
        eps: f32,
        #[serde(default = "bn_momentum")]
        momentum: f32,
    },
    /// The sum of two or more inputs of one shape (a skip connection).
    Add,
    /// Two or more inputs joined along the channel axis (axis 1).
    Concat,
    /// Token ids `[N, T]` -> vectors `[N, T, dim]` (`nn.Embedding`).
    /// `vocab` left out is the tokenizer's vocabulary size.
    Embedding {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vocab: Option<usize>,
        dim: usize,
    },
    /// Token ids `[N, T]` -> the mean of each document's token vectors,
    /// `[N, dim]` (fastText; `nn.EmbeddingBag(mode="mean")`).
    EmbeddingBag {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vocab: Option<usize>,
        dim: usize,
    },
    /// Adds a learned vector per position, `weight [max_len, dim]`
    /// (`nn.Embedding(max_len, dim)` on the positions). `max_len` left
    /// out is the input's sequence length.
    PositionalEmbedding {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_len: Option<usize>,
    },
    /// `layers` pre-LN encoder layers (`nn.TransformerEncoder` of
    /// `nn.TransformerEncoderLayer(norm_first=True, batch_first=True)`,
    /// with its parameter names) and a final layer norm: self-attention
    /// over the unpadded tokens, then a GELU (or ReLU) feed-forward block.
    TransformerEncoder {
        layers: usize,
        heads: usize,
        ffn: usize,
        #[serde(default = "tenth")]
        dropout: f32,
        #[serde(default = "gelu_name")]
        activation: String,
    },
    /// `[N, T, D]` -> the mean over each document's tokens, `[N, D]`.
    MaskedMeanPool,
    /// Normalises the last axis (`nn.LayerNorm`).
    LayerNorm {
        #[serde(default = "bn_eps")]
        eps: f32,
    },
}

fn tenth() -> f32 {
    0.1
}
fn gelu_name() -> String {
    "gelu".into()
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn yes() -> bool {
    true
}
fn bn_eps() -> f32 {
    1e-5
}
fn bn_momentum() -> f32 {
    0.1
}

/// A layer with its place in the model graph (Keras' functional API in
/// spirit). `name` lets later layers use this one's output and, when
/// given, prefixes its parameters (`<name>.weight`), so a spec can carry
/// torchvision's names. `inputs` are layer names (or `input`, the model's
/// input); left out (or empty), a layer takes the layer written before it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Node {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    #[serde(flatten)]
    pub layer: Layer,
}

impl From<Layer> for Node {
    fn from(layer: Layer) -> Self {
        Node {
            name: None,
            inputs: Vec::new(),
            layer,
        }
    }
}

impl Node {
    /// A named layer taking the named inputs.
    pub fn named(name: impl Into<String>, inputs: &[&str], layer: Layer) -> Self {
        Node {
            name: Some(name.into()),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            layer,
        }
    }
}

impl Layer {
    /// How many inputs the layer takes: `(min, max)`.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Layer::Add | Layer::Concat => (2, usize::MAX),
            _ => (1, 1),
        }
    }

    /// The layer's `type` as written in a TOML spec.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "conv2d",
            Layer::MaxPool2d { .. } => "max_pool2d",
            Layer::AvgPool2d { .. } => "avg_pool2d",
            Layer::GlobalAvgPool => "global_avg_pool",
            Layer::Flatten => "flatten",
            Layer::Dense { .. } => "dense",
            Layer::Relu => "relu",
            Layer::Gelu => "gelu",
            Layer::Sigmoid => "sigmoid",
            Layer::Tanh => "tanh",
            Layer::Dropout { .. } => "dropout",
            Layer::BatchNorm2d { .. } => "batch_norm2d",
            Layer::Add => "add",
            Layer::Concat => "concat",
            Layer::Embedding { .. } => "embedding",
            Layer::EmbeddingBag { .. } => "embedding_bag",
            Layer::PositionalEmbedding { .. } => "positional_embedding",
            Layer::TransformerEncoder { .. } => "transformer_encoder",
            Layer::MaskedMeanPool => "masked_mean_pool",
            Layer::LayerNorm { .. } => "layer_norm",
        }
    }

    /// Whether the layer reads token ids (and so makes the model a text
    /// model when it reads the model's input).
    pub fn reads_tokens(&self) -> bool {
        matches!(self, Layer::Embedding { .. } | Layer::EmbeddingBag { .. })
    }

    /// Checks the layer's own settings (not how they fit the input), so
    /// absurd values are reported by name instead of overflowing the shape
    /// arithmetic of the ops.
    pub(crate) fn check_settings(&self) -> std::result::Result<(), String> {
        let window = |what: &str, v: usize, min: usize| {
            if v < min {
                Err(format!("{what} {v} must be at least {min}"))
            } else if v > MAX_WINDOW {
                Err(format!("{what} {v} is over the limit of {MAX_WINDOW}"))
            } else {
                Ok(())
            }
        };
        match self {
            Layer::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                dilation,
                ..
            } => {
                if *filters == 0 {
                    return Err("filters must be at least 1".into());
                }
                window("kernel", *kernel, 1)?;
                window("stride", *stride, 1)?;
                window("padding", *padding, 0)?;
                window("dilation", *dilation, 1)
            }
            Layer::MaxPool2d { kernel, stride } | Layer::AvgPool2d { kernel, stride } => {
                window("kernel", *kernel, 1)?;
                window("stride", stride.unwrap_or(*kernel), 1)
            }
            Layer::Dense { units, .. } if *units == 0 => Err("units must be at least 1".into()),
            Layer::Dropout { rate } if !(0.0..1.0).contains(rate) => {
                Err(format!("rate {rate} is not in [0, 1)"))
            }
            Layer::Embedding { vocab, dim } | Layer::EmbeddingBag { vocab, dim } => {
                if *dim == 0 || *vocab == Some(0) {
                    return Err("vocab and dim must be at least 1".into());
                }
                Ok(())
            }
            Layer::PositionalEmbedding { max_len: Some(0) } => {
                Err("max_len must be at least 1".into())
            }
            Layer::TransformerEncoder {
                layers,
                heads,
                ffn,
                dropout,
                activation,
            } => {
                if *layers == 0 || *heads == 0 || *ffn == 0 {
                    return Err("layers, heads and ffn must be at least 1".into());
                }
                if !(0.0..1.0).contains(dropout) {
                    return Err(format!("dropout {dropout} is not in [0, 1)"));
                }
                if !matches!(activation.as_str(), "gelu" | "relu") {
                    return Err(format!("activation '{activation}' is not gelu or relu"));
                }
                Ok(())
            }
            Layer::LayerNorm { eps } if !(eps.is_finite() && *eps > 0.0) => {
                Err(format!("eps {eps} must be finite and positive"))
            }
            Layer::BatchNorm2d { eps, momentum } => {
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(format!("eps {eps} must be finite and positive"));
                }
                if !(0.0..=1.0).contains(momentum) {
                    return Err(format!("momentum {momentum} is not in [0, 1]"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
