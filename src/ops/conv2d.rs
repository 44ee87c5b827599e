//! 2-D convolution, NCHW activations and OIHW weights (PyTorch layouts),
//! with stride, padding and dilation. This file holds the geometry and the
//! shape and gradient rules; the CPU kernels are in `conv2d_cpu.rs`.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::activation::Activation;
use crate::ops::Op;
use crate::tensor::Shape;

/// Geometry of one 2-D convolution (groups = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    /// (vertical, horizontal)
    pub stride: (usize, usize),
    /// Zero padding on each side, (vertical, horizontal).
    pub pad: (usize, usize),
    /// (vertical, horizontal); 1 is an ordinary convolution.
    pub dilation: (usize, usize),
}

/// Output size of one spatial dimension, `None` if the (dilated) kernel does
/// not fit in the padded input or a parameter is zero.
fn conv_out_dim(size: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Option<usize> {
    if k == 0 || stride == 0 || dil == 0 {
        return None;
    }
    let eff = dil.checked_mul(k - 1)?.checked_add(1)?;
    let padded = size.checked_add(pad.checked_mul(2)?)?;
    let span = padded.checked_sub(eff)?;
    Some(span / stride + 1)
}

/// Which product of a convolution an implicit GEMM computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvProduct {
    Forward,
    GradInput,
    GradWeight,
}

impl Conv2dGeom {
    /// `(m, n, k)` of the implicit GEMM that computes `p`: the forward is
    /// `c_out × n·oh·ow` over `c_in·kh·kw`, grad-input `c_in × n·h·w` over
    /// `c_out·kh·kw`, grad-weight `c_out × c_in·kh·kw` over `n·oh·ow`. The
    /// GPU lowerings size their launches from it. Panics if the kernel
    /// does not fit (launch geometry is checked when a module is built).
    pub fn gemm_dims(&self, p: ConvProduct) -> (usize, usize, usize) {
        let (oh, ow) = self.out_hw().expect("conv geometry checked at build");
        let taps = self.kh * self.kw;
        match p {
            ConvProduct::Forward => (self.c_out, self.n * oh * ow, self.c_in * taps),
            ConvProduct::GradInput => (self.c_in, self.n * self.h * self.w, self.c_out * taps),
            ConvProduct::GradWeight => (self.c_out, self.c_in * taps, self.n * oh * ow),
        }
    }

    /// `(oh, ow)`, or `None` if the dilated kernel does not fit in the padded
    /// input (or a kernel size, stride or dilation is zero).
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        Some((
            conv_out_dim(self.h, self.kh, self.stride.0, self.pad.0, self.dilation.0)?,
            conv_out_dim(self.w, self.kw, self.stride.1, self.pad.1, self.dilation.1)?,
        ))
    }

    /// The geometry as the GPU kernels take it (`ConvGeom` of
    /// kernels/conv2d.cu, params 16.. of shaders/conv2d.wgsl): n, c_in, h,
    /// w, c_out, kh, kw, stride, pad, dilation, oh, ow.
    pub fn kernel_params(&self) -> Option<[usize; 15]> {
        let (oh, ow) = self.out_hw()?;
        let [(sh, sw), (ph, pw), (dh, dw)] = [self.stride, self.pad, self.dilation];
        let (n, ci, co) = (self.n, self.c_in, self.c_out);
        Some([
            n, ci, self.h, self.w, co, self.kh, self.kw, sh, sw, ph, pw, dh, dw, oh, ow,
        ])
    }

    /// `2·N·Cout·OH·OW·Cin·KH·KW` (0 if the kernel does not fit).
    pub fn flops_forward(&self) -> u64 {
        let (oh, ow) = self.out_hw().unwrap_or((0, 0));
        [self.n, self.c_out, oh, ow, self.c_in, self.kh, self.kw]
            .iter()
            .fold(2u64, |acc, &d| acc.saturating_mul(d as u64))
    }

    /// Number of elements of `x` / `dx` (`N·Cin·H·W`).
    pub fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }

    /// Number of elements of `w` / `dw` (`Cout·Cin·KH·KW`).
    pub fn w_len(&self) -> usize {
        self.c_out * self.c_in * self.kh * self.kw
    }

    /// Number of elements of `y` / `dy` (`N·Cout·OH·OW`); panics if the
    /// kernel does not fit.
    pub fn y_len(&self) -> usize {
        let (oh, ow) = self.checked_out_hw();
        self.n * self.c_out * oh * ow
    }

    pub(crate) fn checked_out_hw(&self) -> (usize, usize) {
        self.out_hw()
            .unwrap_or_else(|| panic!("conv2d: kernel does not fit the input: {self:?}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvParams {
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dilation: (usize, usize),
}

impl Default for ConvParams {
    fn default() -> Self {
        ConvParams {
            stride: (1, 1),
            pad: (0, 0),
            dilation: (1, 1),
        }
    }
}

impl ConvParams {
    /// The kernel geometry for input `x [n,c,h,w]` and weight `[o,c,kh,kw]`.
    pub fn geom(&self, sx: &Shape, sw: &Shape) -> Result<Conv2dGeom> {
        let bad = |why: String| Error::shape("conv2d", format!("input {sx}, weight {sw}: {why}"));
        if sx.rank() != 4 || sw.rank() != 4 {
            return Err(bad("input must be [N,C,H,W] and weight [O,C,KH,KW]".into()));
        }
        if sx.0[1] != sw.0[1] {
            return Err(bad(format!(
                "input has {} channels, weight expects {}",
                sx.0[1], sw.0[1]
            )));
        }
        if sw.0[2] == 0 || sw.0[3] == 0 {
            return Err(bad("the kernel is empty".into()));
        }
        if self.stride.0 == 0 || self.stride.1 == 0 || self.dilation.0 == 0 || self.dilation.1 == 0
        {
            return Err(bad("stride and dilation must be at least 1".into()));
        }
        let g = Conv2dGeom {
            n: sx.0[0],
            c_in: sx.0[1],
            h: sx.0[2],
            w: sx.0[3],
            c_out: sw.0[0],
            kh: sw.0[2],
            kw: sw.0[3],
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
        };
        if g.out_hw().is_none() {
            return Err(bad(format!(
                "a {}x{} kernel (dilation {:?}) does not fit the padded {}x{} input",
                g.kh,
                g.kw,
                self.dilation,
                g.h.saturating_add(g.pad.0.saturating_mul(2)),
                g.w.saturating_add(g.pad.1.saturating_mul(2))
            )));
        }
        Ok(g)
    }
}

impl Graph {
    pub fn conv2d(
        &mut self,
        x: ValueId,
        w: ValueId,
        b: Option<ValueId>,
        p: ConvParams,
    ) -> Result<ValueId> {
        self.conv2d_act(x, w, b, p, None)
    }

    pub fn conv2d_act(
        &mut self,
        x: ValueId,
        w: ValueId,
        b: Option<ValueId>,
        p: ConvParams,
        act: Option<Activation>,
    ) -> Result<ValueId> {
        check_fusable("conv2d", act)?;
        let g = p.geom(self.shape(x), self.shape(w))?;
        let mut inputs = vec![x, w];
        if let Some(b) = b {
            if self.shape(b) != &Shape(vec![g.c_out]) {
                return Err(Error::shape(
                    "conv2d",
                    format!("bias {} for {} output channels", self.shape(b), g.c_out),
                ));
            }
            inputs.push(b);
        }
        let (oh, ow) = g.out_hw().expect("checked by geom");
        self.push1(
            Op::Conv2d {
                p,
                act,
                residual: false,
                pool: false,
            },
            inputs,
            Shape(vec![g.n, g.c_out, oh, ow]),
        )
    }
}

/// Only activations whose gradient reads the output (relu, sigmoid, tanh)
/// can be fused: the pre-activation is never stored.
pub(crate) fn check_fusable(op: &str, act: Option<Activation>) -> Result<()> {
    match act {
        Some(a) if !a.backward_uses_output() => Err(Error::shape(
            op,
            format!(
                "{} cannot be fused (its gradient needs the pre-activation)",
                a.name()
            ),
        )),
        _ => Ok(()),
    }
}

/// Gradient rule: grad-input, grad-weight and grad-bias kernels. A fused
/// activation's mask is applied to dy first.
pub fn backward(
    g: &mut Graph,
    p: ConvParams,
    act: Option<Activation>,
    inputs: &[ValueId],
    y: ValueId,
    dy: ValueId,
) -> Result<Vec<Option<ValueId>>> {
    let (x, w) = (inputs[0], inputs[1]);
    let dy = super::activation::masked_grad(g, act, y, dy)?;
    let (sx, sw) = (g.shape(x).clone(), g.shape(w).clone());
    let dx = g.push1(Op::Conv2dGradInput { p }, vec![dy, w], sx)?;
    let dw = g.push1(Op::Conv2dGradWeight { p }, vec![x, dy], sw.clone())?;
    let mut grads = vec![Some(dx), Some(dw)];
    if inputs.len() == 3 {
        grads.push(Some(g.push1(
            Op::Conv2dGradBias,
            vec![dy],
            Shape(vec![sw.0[0]]),
        )?));
    }
    Ok(grads)
}

#[cfg(test)]
mod gemm_dims_tests {
    use super::*;

    #[test]
    fn each_product_has_the_gemm_shape_of_its_direction() {
        // 7x9 input, 3x2 kernel, stride (2, 1), pad (1, 0), dilation (1, 2):
        // oh = (7 + 2 - 3) / 2 + 1 = 4, ow = (9 - 3) / 1 + 1 = 7.
        let g = Conv2dGeom {
            n: 3,
            c_in: 5,
            h: 7,
            w: 9,
            c_out: 4,
            kh: 3,
            kw: 2,
            stride: (2, 1),
            pad: (1, 0),
            dilation: (1, 2),
        };
        assert_eq!(g.out_hw(), Some((4, 7)));
        assert_eq!(g.gemm_dims(ConvProduct::Forward), (4, 3 * 4 * 7, 5 * 6));
        assert_eq!(g.gemm_dims(ConvProduct::GradInput), (5, 3 * 7 * 9, 4 * 6));
        assert_eq!(g.gemm_dims(ConvProduct::GradWeight), (4, 5 * 6, 3 * 4 * 7));
    }
}
