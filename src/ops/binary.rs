//! Elementwise binary ops with NumPy broadcasting, plus the two shape
//! movers their gradients need: `sum_to` (reduce a broadcast back down)
//! and `broadcast_to` (expand), and `scale`/`fill`.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::Shape;
use rayon::prelude::*;

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

const PAR_MIN: usize = 1 << 15;

/// Iterate the output in rows of its last axis, handing each row's offsets
/// into `a` and `b`. Rows are independent, so they run in parallel.
pub fn cpu_binary(
    kind: BinaryKind,
    sa: &Shape,
    a: &[f32],
    sb: &Shape,
    b: &[f32],
    so: &Shape,
    y: &mut [f32],
) {
    if sa == so && sb == so {
        let f = |(y, (a, b)): (&mut f32, (&f32, &f32))| *y = kind.apply(*a, *b);
        if y.len() >= PAR_MIN && super::par::threads() > 1 {
            y.par_iter_mut()
                .zip(a.par_iter().zip(b.par_iter()))
                .for_each(f);
        } else {
            y.iter_mut().zip(a.iter().zip(b.iter())).for_each(f);
        }
        return;
    }
    let r = so.rank();
    let inner = if r == 0 { 1 } else { so.0[r - 1] };
    let stra = broadcast_strides(sa, so);
    let strb = broadcast_strides(sb, so);
    let (ia, ib) = if r == 0 {
        (0, 0)
    } else {
        (stra[r - 1], strb[r - 1])
    };
    let row = |(row_idx, yr): (usize, &mut [f32])| {
        let (oa, ob) = outer_offsets(so, &stra, &strb, row_idx);
        for (j, yv) in yr.iter_mut().enumerate() {
            *yv = kind.apply(a[oa + j * ia], b[ob + j * ib]);
        }
    };
    if y.len() >= PAR_MIN && super::par::threads() > 1 {
        y.par_chunks_mut(inner.max(1)).enumerate().for_each(row);
    } else {
        y.chunks_mut(inner.max(1)).enumerate().for_each(row);
    }
}

/// Offsets into two broadcast operands of the start of output row `row`.
fn outer_offsets(so: &Shape, sa: &[usize], sb: &[usize], mut row: usize) -> (usize, usize) {
    let r = so.rank();
    let (mut oa, mut ob) = (0, 0);
    for ax in (0..r.saturating_sub(1)).rev() {
        let i = row % so.0[ax];
        row /= so.0[ax];
        oa += i * sa[ax];
        ob += i * sb[ax];
    }
    (oa, ob)
}

/// In place: operand `i` (which has the output's shape) is `y` itself;
/// `other` may broadcast.
pub fn cpu_binary_inplace(
    kind: BinaryKind,
    i: usize,
    so: &Shape,
    other: &[f32],
    sy: &Shape,
    y: &mut [f32],
) {
    let f = |y: &mut f32, o: f32| {
        *y = if i == 0 {
            kind.apply(*y, o)
        } else {
            kind.apply(o, *y)
        }
    };
    if so == sy {
        y.iter_mut().zip(other).for_each(|(y, &o)| f(y, o));
        return;
    }
    let r = sy.rank();
    let inner = if r == 0 { 1 } else { sy.0[r - 1] };
    let stro = broadcast_strides(so, sy);
    let io = if r == 0 { 0 } else { stro[r - 1] };
    let zeros = vec![0usize; r];
    for (row, yr) in y.chunks_mut(inner.max(1)).enumerate() {
        let (oo, _) = outer_offsets(sy, &stro, &zeros, row);
        for (j, yv) in yr.iter_mut().enumerate() {
            f(yv, other[oo + j * io]);
        }
    }
}

pub fn cpu_scale(alpha: f32, x: &[f32], y: &mut [f32]) {
    if y.len() >= PAR_MIN && super::par::threads() > 1 {
        y.par_iter_mut()
            .zip(x.par_iter())
            .for_each(|(y, x)| *y = x * alpha);
    } else {
        y.iter_mut().zip(x).for_each(|(y, x)| *y = x * alpha);
    }
}

/// `y = sum of x over the axes where y's (broadcast) shape is 1`.
/// Serial and in a fixed order, so results are bitwise reproducible.
pub fn cpu_sum_to(sx: &Shape, x: &[f32], sy: &Shape, y: &mut [f32]) {
    y.fill(0.0);
    let r = sx.rank();
    if r == 0 {
        y[0] = x[0];
        return;
    }
    let inner = sx.0[r - 1];
    let stry = broadcast_strides(sy, sx);
    let iy = stry[r - 1];
    let zeros = vec![0usize; r];
    for (row, xr) in x.chunks(inner.max(1)).enumerate() {
        let (oy, _) = outer_offsets(sx, &stry, &zeros, row);
        if iy == 0 {
            y[oy] += xr.iter().sum::<f32>();
        } else {
            for (j, v) in xr.iter().enumerate() {
                y[oy + j * iy] += v;
            }
        }
    }
}

pub fn cpu_broadcast_to(sx: &Shape, x: &[f32], sy: &Shape, y: &mut [f32]) {
    let r = sy.rank();
    if r == 0 {
        y[0] = x[0];
        return;
    }
    let inner = sy.0[r - 1];
    let strx = broadcast_strides(sx, sy);
    let ix = strx[r - 1];
    let zeros = vec![0usize; r];
    for (row, yr) in y.chunks_mut(inner.max(1)).enumerate() {
        let (ox, _) = outer_offsets(sy, &strx, &zeros, row);
        for (j, v) in yr.iter_mut().enumerate() {
            *v = x[ox + j * ix];
        }
    }
}
