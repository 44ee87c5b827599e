//! Elementwise unary functions with a derivative: the activations relu,
//! gelu (exact, erf-based, as PyTorch's default), sigmoid, tanh, and
//! rsqrt (layer norm's `1/sqrt(var + eps)`). Backward reads the output
//! where that suffices (all but gelu) so the input need not stay alive.
//!
//! Adding one: a variant here (name, code, forward, backward), its case in
//! `act_forward`/`act_backward` of `kernels/common.cuh` and `act_fwd`/
//! `act_bwd` of `shaders/common.wgsl` (same code), and `tools/build-ptx.sh`.

use crate::error::Result;
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    Relu,
    Gelu,
    Sigmoid,
    Tanh,
    /// `1/sqrt(x)`.
    Rsqrt,
}

/// `max(x, 0)` that keeps a NaN, as PyTorch's relu does: a NaN reaching a
/// relu must show in the output, not vanish into 0.
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Rsqrt => "rsqrt",
        }
    }
    /// The code the GPU kernels switch on (`ACT_*` in kernels/common.cuh,
    /// `act_fwd` in shaders/common.wgsl); 0 is no activation.
    pub fn code(self) -> u32 {
        match self {
            Activation::Relu => 1,
            Activation::Gelu => 2,
            Activation::Sigmoid => 3,
            Activation::Tanh => 4,
            Activation::Rsqrt => 5,
        }
    }
    /// [`Activation::code`] of an optional activation (0 for none).
    pub fn code_of(a: Option<Activation>) -> u32 {
        a.map_or(0, Activation::code)
    }
    pub fn backward_name(self) -> &'static str {
        match self {
            Activation::Relu => "relu_backward",
            Activation::Gelu => "gelu_backward",
            Activation::Sigmoid => "sigmoid_backward",
            Activation::Tanh => "tanh_backward",
            Activation::Rsqrt => "rsqrt_backward",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "rsqrt" => Activation::Rsqrt,
            _ => return None,
        })
    }
    /// Whether the backward pass reads the output (true) or the input.
    pub fn backward_uses_output(self) -> bool {
        !matches!(self, Activation::Gelu)
    }

    #[inline(always)]
    pub fn forward(self, x: f32) -> f32 {
        match self {
            // NaN stays NaN, as in PyTorch (`f32::max` would turn it into 0).
            Activation::Relu => relu(x),
            Activation::Gelu => x * crate::math::normal_cdf(x),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
            Activation::Rsqrt => 1.0 / x.sqrt(),
        }
    }

    /// dx given the saved value (y, or x for gelu) and dy.
    #[inline(always)]
    pub fn backward(self, saved: f32, dy: f32) -> f32 {
        match self {
            Activation::Relu => {
                if saved > 0.0 {
                    dy
                } else {
                    0.0
                }
            }
            Activation::Gelu => {
                let x = saved;
                dy * (crate::math::normal_cdf(x) + x * crate::math::normal_pdf(x))
            }
            Activation::Sigmoid => dy * saved * (1.0 - saved),
            Activation::Tanh => dy * (1.0 - saved * saved),
            // d(x^-1/2) = -x^-3/2 / 2 = -y³/2.
            Activation::Rsqrt => dy * -0.5 * saved * saved * saved,
        }
    }
}

impl Graph {
    pub fn act(&mut self, a: Activation, x: ValueId) -> Result<ValueId> {
        self.expect_f32(a.name(), x)?;
        let s = self.shape(x).clone();
        self.push1(Op::Act(a), vec![x], s)
    }
    pub fn relu(&mut self, x: ValueId) -> Result<ValueId> {
        self.act(Activation::Relu, x)
    }
}

/// Gradient rule shared by standalone activations and fused epilogues.
/// dy through a fused epilogue activation `act` (whose output is `y`):
/// the gradient the layer below the activation receives.
pub fn masked_grad(
    g: &mut Graph,
    act: Option<Activation>,
    y: ValueId,
    dy: ValueId,
) -> Result<ValueId> {
    match act {
        Some(a) => {
            let s = g.shape(y).clone();
            g.push1(Op::ActBackward(a), vec![y, dy], s)
        }
        None => Ok(dy),
    }
}

pub fn backward(
    g: &mut Graph,
    a: Activation,
    x: ValueId,
    y: ValueId,
    dy: ValueId,
) -> Result<ValueId> {
    let saved = if a.backward_uses_output() { y } else { x };
    let s = g.shape(x).clone();
    g.push1(Op::ActBackward(a), vec![saved, dy], s)
}
