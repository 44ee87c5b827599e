//! Pooling: max (forward keeps the argmax for backward), average, and
//! global average. Floor mode and count-include-pad, as PyTorch defaults.
//! CPU kernels are in `pool_cpu.rs`.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::pool_cpu::Pool2dGeom;
use crate::ops::Op;
use crate::tensor::{DType, Shape};

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
        let g = p.geom("max_pool2d", self.shape(x))?;
        let (oh, ow) = g.out_hw().expect("checked by geom");
        let s = Shape(vec![g.n, g.c, oh, ow]);
        Ok(self.push_node(
            Op::MaxPool2d { p },
            vec![x],
            vec![(s.clone(), DType::F32), (s, DType::U32)],
            vec![],
        )?[0])
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
}

/// Gradient rules. Max pooling scatters through the saved argmax (the
/// node's second output).
pub fn backward(
    g: &mut Graph,
    op: &Op,
    x: ValueId,
    outputs: &[ValueId],
    dy: ValueId,
) -> Result<ValueId> {
    let sx = g.shape(x).clone();
    match op {
        Op::MaxPool2d { p } => g.push1(Op::MaxPool2dBackward { p: *p }, vec![dy, outputs[1]], sx),
        Op::AvgPool2d { p } => g.push1(Op::AvgPool2dBackward { p: *p }, vec![dy], sx),
        Op::GlobalAvgPool => g.push1(Op::GlobalAvgPoolBackward, vec![dy], sx),
        _ => unreachable!("pool::backward called for {op:?}"),
    }
}
