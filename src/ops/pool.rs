//! Pooling: max (forward keeps the argmax for backward), average, and
//! global average. Floor mode and count-include-pad, as PyTorch defaults.
//! CPU kernels are in `pool_cpu.rs`.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::{DType, Shape};

/// Geometry of one 2-D pooling (dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    /// (vertical, horizontal)
    pub stride: (usize, usize),
    /// Implicit padding on each side, (vertical, horizontal). It never wins
    /// a max and counts as zeros in an average.
    pub pad: (usize, usize),
}

/// Output size of one dimension (floor mode), `None` if the window does not
/// fit, a parameter is zero, or the padding exceeds half the window (which
/// PyTorch rejects, and which would allow windows of padding only).
fn pool_out_dim(size: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    if k == 0 || stride == 0 || pad > k / 2 {
        return None;
    }
    let span = size.checked_add(pad.checked_mul(2)?)?.checked_sub(k)?;
    Some(span / stride + 1)
}

impl Pool2dGeom {
    /// `(oh, ow)` with PyTorch's default floor mode, or `None` if the window
    /// does not fit the padded input, a size or stride is zero, or a padding
    /// exceeds half the window.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        Some((
            pool_out_dim(self.h, self.kh, self.stride.0, self.pad.0)?,
            pool_out_dim(self.w, self.kw, self.stride.1, self.pad.1)?,
        ))
    }

    /// The window as the GPU kernels take it after the plane count
    /// (`PoolGeom` of kernels/pool.cu, shaders/pool.wgsl): h, w, oh, ow,
    /// kh, kw, stride, pad.
    pub fn kernel_params(&self) -> Option<[usize; 10]> {
        let (oh, ow) = self.out_hw()?;
        let [(sh, sw), (ph, pw)] = [self.stride, self.pad];
        Some([self.h, self.w, oh, ow, self.kh, self.kw, sh, sw, ph, pw])
    }

    /// Number of elements of `x` / `dx` (`N·C·H·W`).
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// Number of elements of `y` / `dy` / `argmax` (`N·C·OH·OW`); panics if
    /// the window does not fit.
    pub fn y_len(&self) -> usize {
        let (oh, ow) = self.checked_out_hw();
        self.n * self.c * oh * ow
    }

    pub(crate) fn checked_out_hw(&self) -> (usize, usize) {
        self.out_hw()
            .unwrap_or_else(|| panic!("pool2d: invalid window for the input: {self:?}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolParams {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}

impl PoolParams {
    /// A square window with stride equal to its size (the common case).
    pub fn square(k: usize) -> Self {
        PoolParams {
            kernel: (k, k),
            stride: (k, k),
            pad: (0, 0),
        }
    }

    pub fn geom(&self, op: &str, sx: &Shape) -> Result<Pool2dGeom> {
        if sx.rank() != 4 {
            return Err(Error::shape(op, format!("input {sx} is not [N,C,H,W]")));
        }
        if self.stride.0 == 0 || self.stride.1 == 0 || self.kernel.0 == 0 || self.kernel.1 == 0 {
            return Err(Error::shape(op, "kernel and stride must be at least 1"));
        }
        if 2 * self.pad.0 > self.kernel.0 || 2 * self.pad.1 > self.kernel.1 {
            return Err(Error::shape(
                op,
                format!(
                    "padding {:?} is more than half the window {:?}",
                    self.pad, self.kernel
                ),
            ));
        }
        let g = Pool2dGeom {
            n: sx.0[0],
            c: sx.0[1],
            h: sx.0[2],
            w: sx.0[3],
            kh: self.kernel.0,
            kw: self.kernel.1,
            stride: self.stride,
            pad: self.pad,
        };
        if g.out_hw().is_none() {
            return Err(Error::shape(
                op,
                format!("a {:?} window does not fit input {sx}", self.kernel),
            ));
        }
        Ok(g)
    }
}

impl Graph {
    pub fn max_pool2d(&mut self, x: ValueId, p: PoolParams) -> Result<ValueId> {
        Ok(self.max_pool2d_with_indices(x, p)?.0)
    }

    /// Max pooling and the argmax of each window (u32, the flat index
    /// within its h×w input plane), as PyTorch's `return_indices=True`.
    pub fn max_pool2d_with_indices(
        &mut self,
        x: ValueId,
        p: PoolParams,
    ) -> Result<(ValueId, ValueId)> {
        let g = p.geom("max_pool2d", self.shape(x))?;
        let (oh, ow) = g.out_hw().expect("checked by geom");
        let s = Shape(vec![g.n, g.c, oh, ow]);
        let out = self.push_node(
            Op::MaxPool2d { p },
            vec![x],
            vec![(s.clone(), DType::F32), (s, DType::U32)],
            vec![],
        )?;
        Ok((out[0], out[1]))
    }
    pub fn avg_pool2d(&mut self, x: ValueId, p: PoolParams) -> Result<ValueId> {
        let g = p.geom("avg_pool2d", self.shape(x))?;
        let (oh, ow) = g.out_hw().expect("checked by geom");
        self.push1(Op::AvgPool2d { p }, vec![x], Shape(vec![g.n, g.c, oh, ow]))
    }
    /// `[n,c,h,w] -> [n,c]`.
    pub fn global_avg_pool(&mut self, x: ValueId) -> Result<ValueId> {
        let s = self.shape(x).clone();
        if s.rank() != 4 {
            return Err(Error::shape(
                "global_avg_pool",
                format!("input {s} is not [N,C,H,W]"),
            ));
        }
        self.push1(Op::GlobalAvgPool, vec![x], Shape(vec![s.0[0], s.0[1]]))
    }

    /// `[B, T, D]` -> `[B, D]`: the mean of each sequence's first
    /// `lengths[b]` rows (u32 `[B]`, clamped to `T`); an empty sequence
    /// pools to zeros. The sequence classifier's pooling, padding skipped.
    pub fn masked_mean_pool(&mut self, x: ValueId, lengths: ValueId) -> Result<ValueId> {
        self.expect_f32("masked_mean_pool", x)?;
        let s = self.shape(x).clone();
        let [b, _, d] = s.0[..] else {
            return Err(Error::shape(
                "masked_mean_pool",
                format!("input {s} is not [batch, seq, dim]"),
            ));
        };
        self.expect_lengths("masked_mean_pool", lengths, b)?;
        self.push1(Op::MaskedMeanPool, vec![x, lengths], Shape(vec![b, d]))
    }
}

/// Gradient rules. Max pooling scatters through the saved argmax (the
/// node's second output).
pub fn backward(
    g: &mut Graph,
    op: &Op,
    x: ValueId,
    lengths: Option<ValueId>,
    outputs: &[ValueId],
    dy: ValueId,
) -> Result<ValueId> {
    let sx = g.shape(x).clone();
    match op {
        Op::MaxPool2d { p } => g.push1(Op::MaxPool2dBackward { p: *p }, vec![dy, outputs[1]], sx),
        Op::AvgPool2d { p } => g.push1(Op::AvgPool2dBackward { p: *p }, vec![dy], sx),
        Op::GlobalAvgPool => g.push1(Op::GlobalAvgPoolBackward, vec![dy], sx),
        Op::MaskedMeanPool => g.push1(
            Op::MaskedMeanPoolBackward,
            vec![dy, lengths.expect("masked_mean_pool reads lengths")],
            sx,
        ),
        _ => unreachable!("pool::backward called for {op:?}"),
    }
}
