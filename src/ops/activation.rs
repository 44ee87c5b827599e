//! Elementwise activations: relu, gelu (exact, erf-based, as PyTorch's
//! default), sigmoid, tanh. Backward reads the output where that suffices
//! (relu, sigmoid, tanh) so the input need not stay alive.

use crate::error::Result;
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    Relu,
    Gelu,
    Sigmoid,
    Tanh,
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
        }
    }
    pub fn backward_name(self) -> &'static str {
        match self {
            Activation::Relu => "relu_backward",
            Activation::Gelu => "gelu_backward",
            Activation::Sigmoid => "sigmoid_backward",
            Activation::Tanh => "tanh_backward",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
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
            Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
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
                let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
                dy * (cdf + x * pdf)
            }
            Activation::Sigmoid => dy * saved * (1.0 - saved),
            Activation::Tanh => dy * (1.0 - saved * saved),
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

const PAR_MIN: usize = 1 << 15;

pub fn cpu_forward(a: Activation, x: &[f32], y: &mut [f32]) {
    if y.len() >= PAR_MIN && super::par::threads() > 1 {
        y.par_iter_mut()
            .zip(x.par_iter())
            .for_each(|(y, x)| *y = a.forward(*x));
    } else {
        y.iter_mut().zip(x).for_each(|(y, x)| *y = a.forward(*x));
    }
}

/// In place, for fused epilogues.
pub fn cpu_forward_inplace(a: Activation, y: &mut [f32]) {
    if y.len() >= PAR_MIN && super::par::threads() > 1 {
        y.par_iter_mut().for_each(|y| *y = a.forward(*y));
    } else {
        y.iter_mut().for_each(|y| *y = a.forward(*y));
    }
}

pub fn cpu_backward(a: Activation, saved: &[f32], dy: &[f32], dx: &mut [f32]) {
    let f = |(dx, (s, dy)): (&mut f32, (&f32, &f32))| *dx = a.backward(*s, *dy);
    if dx.len() >= PAR_MIN && super::par::threads() > 1 {
        dx.par_iter_mut()
            .zip(saved.par_iter().zip(dy.par_iter()))
            .for_each(f);
    } else {
        dx.iter_mut().zip(saved.iter().zip(dy.iter())).for_each(f);
    }
}

/// In place over dy.
pub fn cpu_backward_inplace(a: Activation, saved: &[f32], dy_dx: &mut [f32]) {
    let f = |(d, s): (&mut f32, &f32)| *d = a.backward(*s, *d);
    if dy_dx.len() >= PAR_MIN && super::par::threads() > 1 {
        dy_dx.par_iter_mut().zip(saved.par_iter()).for_each(f);
    } else {
        dy_dx.iter_mut().zip(saved.iter()).for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_keeps_nan_as_pytorch_does() {
        assert!(relu(f32::NAN).is_nan());
        assert!(Activation::Relu.forward(f32::NAN).is_nan());
        assert_eq!((relu(-2.5), relu(0.0), relu(3.0)), (0.0, 0.0, 3.0));
        let mut y = [0.0f32; 3];
        cpu_forward(Activation::Relu, &[f32::NAN, -1.0, 2.0], &mut y);
        assert!(y[0].is_nan() && y[1] == 0.0 && y[2] == 2.0, "{y:?}");
    }
}
