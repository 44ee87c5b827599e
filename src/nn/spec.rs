//! The model spec: layers, presets, TOML parsing, and building into a graph.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::batchnorm::BatchNormParams;
use crate::ops::{Activation, ConvParams, PoolParams};
use crate::tensor::Shape;
use serde::{Deserialize, Serialize};
use std::path::Path;

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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(rename = "layer")]
    pub layers: Vec<Layer>,
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
        let e = l.clone().try_into::<Layer>().err()?;
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
        if let Some(key) = written.keys().find(|k| !known.contains_key(*k)) {
            return Err(Error::Model(format!(
                "layer {} ({}): unknown key `{key}`",
                i + 1,
                parsed.kind()
            )));
        }
    }
    Ok(())
}

impl Layer {
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
        }
    }

    /// Checks the layer's own settings (not how they fit the input), so
    /// absurd values are reported by name instead of overflowing the shape
    /// arithmetic of the ops.
    fn check_settings(&self) -> std::result::Result<(), String> {
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

/// Elements of `shape`, if at most [`MAX_SPEC_ELEMENTS`].
fn bounded_numel(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_SPEC_ELEMENTS)
}

/// How a parameter is initialised (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(-1/√fan_in, 1/√fan_in): PyTorch's default for conv/linear
    /// weights (kaiming-uniform with a=√5) and biases.
    FanIn(usize),
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
        ModelSpec {
            name: "cnn".into(),
            layers: vec![
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
        }
    }

    /// A two-hidden-layer MLP classifier.
    pub fn mlp(classes: usize) -> Self {
        use Layer::*;
        ModelSpec {
            name: "mlp".into(),
            layers: vec![
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
        }
    }

    pub fn preset(name: &str, classes: usize) -> Option<Self> {
        match name {
            "cnn" => Some(Self::cnn(classes)),
            "mlp" => Some(Self::mlp(classes)),
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
            "unknown model '{model}' (expected cnn, mlp or a path to a .toml spec)"
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
        Ok(spec)
    }

    /// Parameters and state this spec declares for an input `[c, h, w]`,
    /// with shapes checked layer by layer. This is the shape rule of the
    /// whole model, run without building a graph.
    pub fn declare(&self, input: &[usize]) -> Result<Vec<ParamDecl>> {
        let mut g = Graph::new(false);
        let mut shape = vec![1];
        shape.extend_from_slice(input);
        let x = g.input("x", shape, crate::DType::F32)?;
        let mut decls = Vec::new();
        self.build_inner(&mut g, x, Some(&mut decls))?;
        Ok(decls)
    }

    /// Build the forward pass on `x [n, c, h, w]`; returns the logits.
    pub fn build(&self, g: &mut Graph, x: ValueId) -> Result<ValueId> {
        self.build_inner(g, x, None)
    }

    fn build_inner(
        &self,
        g: &mut Graph,
        x: ValueId,
        mut decls: Option<&mut Vec<ParamDecl>>,
    ) -> Result<ValueId> {
        let (mut n_conv, mut n_fc, mut n_bn, mut n_drop) = (0, 0, 0, 0);
        let input = g.shape(x).clone();
        if input.0.contains(&0) {
            return Err(Error::Model(format!("the input {input} is empty")));
        }
        let mut activations = bounded_numel(&input.0).ok_or_else(|| {
            Error::Limit(format!(
                "model input {input} has more than {MAX_SPEC_ELEMENTS} elements"
            ))
        })?;
        let mut params = 0u64;
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let kind = layer.kind();
            layer
                .check_settings()
                .map_err(|e| Error::Model(format!("layer {} ({kind}): {e}", i + 1)))?;
            let at = |e: Error| match e {
                Error::Shape { op, detail } => {
                    Error::Model(format!("layer {} ({op}): {detail}", i + 1))
                }
                other => other,
            };
            let mut declare = |g: &mut Graph,
                               name: String,
                               shape: Vec<usize>,
                               init: Init,
                               state: bool|
             -> Result<ValueId> {
                let n = bounded_numel(&shape).ok_or_else(|| {
                    Error::Limit(format!(
                        "layer {} ({kind}): {name} of shape {} has more than {MAX_SPEC_ELEMENTS} elements",
                        i + 1,
                        Shape(shape.clone())
                    ))
                })?;
                params += n;
                if params > MAX_SPEC_ELEMENTS {
                    return Err(Error::Limit(format!(
                        "layer {} ({kind}): with {name} the model has more than {MAX_SPEC_ELEMENTS} parameter and state elements",
                        i + 1
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
            let s = g.shape(h).clone();
            h = match layer {
                Layer::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                    dilation,
                    bias,
                } => {
                    if s.rank() != 4 {
                        return Err(Error::Model(format!(
                            "layer {} (conv2d) needs an image [N,C,H,W], got {s}",
                            i + 1
                        )));
                    }
                    n_conv += 1;
                    // Bounded: c <= 2^32 and kernel <= 2^16 (checked above).
                    let fan_in = s.0[1].saturating_mul(kernel * kernel);
                    let (w, b) = weight_and_bias(
                        &mut declare,
                        g,
                        &format!("conv{n_conv}"),
                        vec![*filters, s.0[1], *kernel, *kernel],
                        *bias,
                        fan_in,
                    )?;
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
                        return Err(Error::Model(format!("layer {} (dense) needs [N, features], got {s}: add a flatten layer first", i + 1)));
                    }
                    n_fc += 1;
                    let fan_in = s.0[1];
                    let (w, b) = weight_and_bias(
                        &mut declare,
                        g,
                        &format!("fc{n_fc}"),
                        vec![*units, fan_in],
                        *bias,
                        fan_in,
                    )?;
                    g.linear(h, w, b).map_err(at)?
                }
                Layer::Relu => g.act(Activation::Relu, h)?,
                Layer::Gelu => g.act(Activation::Gelu, h)?,
                Layer::Sigmoid => g.act(Activation::Sigmoid, h)?,
                Layer::Tanh => g.act(Activation::Tanh, h)?,
                Layer::Dropout { rate } => {
                    n_drop += 1;
                    g.dropout(h, *rate, 0x9E37_79B9u32.wrapping_mul(n_drop))
                        .map_err(at)?
                }
                Layer::BatchNorm2d { eps, momentum } => {
                    if s.rank() != 4 {
                        return Err(Error::Model(format!(
                            "layer {} (batch_norm2d) needs [N,C,H,W], got {s}",
                            i + 1
                        )));
                    }
                    n_bn += 1;
                    let c = vec![s.0[1]];
                    let p = BatchNormParams {
                        gamma: declare(
                            g,
                            format!("bn{n_bn}.weight"),
                            c.clone(),
                            Init::Ones,
                            false,
                        )?,
                        beta: declare(g, format!("bn{n_bn}.bias"), c.clone(), Init::Zeros, false)?,
                        running_mean: declare(
                            g,
                            format!("bn{n_bn}.running_mean"),
                            c.clone(),
                            Init::Zeros,
                            true,
                        )?,
                        running_var: declare(
                            g,
                            format!("bn{n_bn}.running_var"),
                            c,
                            Init::Ones,
                            true,
                        )?,
                    };
                    g.batch_norm2d(h, &p, *eps, *momentum).map_err(at)?
                }
            };
            let out = g.shape(h);
            if out.0.contains(&0) {
                return Err(Error::Model(format!(
                    "layer {} ({kind}) gives an empty output {out}",
                    i + 1
                )));
            }
            activations = bounded_numel(&out.0)
                .and_then(|n| activations.checked_add(n))
                .filter(|&n| n <= MAX_SPEC_ELEMENTS)
                .ok_or_else(|| {
                    Error::Limit(format!(
                        "layer {} ({kind}): with its output {out} the model's activations have more than {MAX_SPEC_ELEMENTS} elements",
                        i + 1
                    ))
                })?;
        }
        let s = g.shape(h);
        if s.rank() != 2 {
            return Err(Error::Model(format!(
                "the last layer must give [N, classes], got {s}: add flatten and dense layers"
            )));
        }
        Ok(h)
    }
}
/// `<prefix>.weight` of `shape` and, with `bias`, `<prefix>.bias` of
/// `[shape[0]]`, both initialised from the layer's fan-in (PyTorch's
/// default for conv and linear layers).
fn weight_and_bias(
    declare: &mut impl FnMut(&mut Graph, String, Vec<usize>, Init, bool) -> Result<ValueId>,
    g: &mut Graph,
    prefix: &str,
    shape: Vec<usize>,
    bias: bool,
    fan_in: usize,
) -> Result<(ValueId, Option<ValueId>)> {
    let out = shape[0];
    let w = declare(
        g,
        format!("{prefix}.weight"),
        shape,
        Init::FanIn(fan_in),
        false,
    )?;
    let b = match bias {
        true => Some(declare(
            g,
            format!("{prefix}.bias"),
            vec![out],
            Init::FanIn(fan_in),
            false,
        )?),
        false => None,
    };
    Ok((w, b))
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
