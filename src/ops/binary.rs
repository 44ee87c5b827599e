//! Elementwise binary ops with NumPy broadcasting, plus the two shape
//! movers their gradients need: `sum_to` (reduce a broadcast back down)
//! and `broadcast_to` (expand), and `scale`/`fill`.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::Shape;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryKind {
    pub fn name(self) -> &'static str {
        match self {
            BinaryKind::Add => "add",
            BinaryKind::Sub => "sub",
            BinaryKind::Mul => "mul",
            BinaryKind::Div => "div",
        }
    }
    /// The code the GPU kernels switch on (`BIN_*` in kernels/common.cuh,
    /// `binop` in shaders/common.wgsl).
    pub fn code(self) -> u32 {
        match self {
            BinaryKind::Add => 0,
            BinaryKind::Sub => 1,
            BinaryKind::Mul => 2,
            BinaryKind::Div => 3,
        }
    }
    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::Div => a / b,
        }
    }
}

/// The NumPy broadcast of two shapes, or None when they do not broadcast.
pub fn broadcast_shape(a: &Shape, b: &Shape) -> Option<Shape> {
    let r = a.rank().max(b.rank());
    let dim = |s: &Shape, i: usize| {
        if i + s.rank() >= r {
            s.0[i + s.rank() - r]
        } else {
            1
        }
    };
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        out.push(match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        });
    }
    Some(Shape(out))
}

/// Strides of `s` as seen from a broadcast output of rank `rank`: 0 on
/// broadcast axes.
pub fn broadcast_strides(s: &Shape, out: &Shape) -> Vec<usize> {
    let r = out.rank();
    let own = s.strides();
    (0..r)
        .map(|i| {
            if i + s.rank() < r {
                0
            } else {
                let j = i + s.rank() - r;
                if s.0[j] == 1 && out.0[i] != 1 {
                    0
                } else {
                    own[j]
                }
            }
        })
        .collect()
}

impl Graph {
    pub fn binary(&mut self, kind: BinaryKind, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.expect_f32(kind.name(), a)?;
        self.expect_f32(kind.name(), b)?;
        let out = broadcast_shape(self.shape(a), self.shape(b)).ok_or_else(|| {
            Error::shape(
                kind.name(),
                format!("{} and {} do not broadcast", self.shape(a), self.shape(b)),
            )
        })?;
        self.push1(Op::Binary(kind), vec![a, b], out)
    }
    pub fn add(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(BinaryKind::Add, a, b)
    }
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(BinaryKind::Sub, a, b)
    }
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(BinaryKind::Mul, a, b)
    }
    pub fn div(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(BinaryKind::Div, a, b)
    }
    pub fn scale(&mut self, x: ValueId, alpha: f32) -> Result<ValueId> {
        self.expect_f32("scale", x)?;
        let s = self.shape(x).clone();
        self.push1(Op::Scale(alpha), vec![x], s)
    }
    pub fn fill(&mut self, shape: impl Into<Shape>, value: f32) -> Result<ValueId> {
        self.push1(Op::Fill(value), vec![], shape.into())
    }
    /// Sum `x` down to `shape`, which must broadcast to `x`'s shape.
    pub fn sum_to(&mut self, x: ValueId, shape: &Shape) -> Result<ValueId> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        if broadcast_shape(shape, self.shape(x)).as_ref() != Some(self.shape(x)) {
            return Err(Error::shape(
                "sum_to",
                format!("{} cannot be summed to {shape}", self.shape(x)),
            ));
        }
        self.push1(Op::SumTo, vec![x], shape.clone())
    }
    pub fn broadcast_to(&mut self, x: ValueId, shape: &Shape) -> Result<ValueId> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        if broadcast_shape(self.shape(x), shape).as_ref() != Some(shape) {
            return Err(Error::shape(
                "broadcast_to",
                format!("{} does not broadcast to {shape}", self.shape(x)),
            ));
        }
        self.push1(Op::BroadcastTo, vec![x], shape.clone())
    }
}

/// Gradient rule: d(a∘b) back to each operand, reduced to its shape.
pub fn backward(
    g: &mut Graph,
    kind: BinaryKind,
    a: ValueId,
    b: ValueId,
    dy: ValueId,
) -> Result<[Option<ValueId>; 2]> {
    let (sa, sb) = (g.shape(a).clone(), g.shape(b).clone());
    let (da, db) = match kind {
        BinaryKind::Add => (dy, dy),
        BinaryKind::Sub => (dy, g.scale(dy, -1.0)?),
        BinaryKind::Mul => (g.mul(dy, b)?, g.mul(dy, a)?),
        BinaryKind::Div => {
            // d/da = dy / b ; d/db = -dy * a / b²
            let da = g.div(dy, b)?;
            let t = g.mul(da, a)?;
            let t = g.div(t, b)?;
            (da, g.scale(t, -1.0)?)
        }
    };
    Ok([Some(g.sum_to(da, &sa)?), Some(g.sum_to(db, &sb)?)])
}
