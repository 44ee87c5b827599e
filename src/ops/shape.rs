//! Shape movers: reshape and flatten are views (no launch, no copy);
//! transpose is a permuting copy; concat and slice copy row blocks (each
//! the other's gradient).

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::Shape;

impl Graph {
    pub fn reshape(&mut self, x: ValueId, shape: impl Into<Shape>) -> Result<ValueId> {
        let shape = shape.into();
        if shape.numel() != self.shape(x).numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "{} ({} elements) to {shape} ({} elements)",
                    self.shape(x),
                    self.shape(x).numel(),
                    shape.numel()
                ),
            ));
        }
        if &shape == self.shape(x) {
            return Ok(x);
        }
        let dt = self.dtype(x);
        Ok(self.push_node(Op::Reshape, vec![x], vec![(shape, dt)], vec![])?[0])
    }

    /// `[n, ...] -> [n, prod(...)]`.
    pub fn flatten(&mut self, x: ValueId) -> Result<ValueId> {
        let s = self.shape(x).clone();
        if s.rank() < 1 {
            return Err(Error::shape(
                "flatten",
                format!("cannot flatten a scalar {s}"),
            ));
        }
        let rest: usize = s.0[1..].iter().product();
        self.reshape(x, [s.0[0], rest])
    }

    pub fn transpose(&mut self, x: ValueId, perm: &[usize]) -> Result<ValueId> {
        let s = self.shape(x).clone();
        let mut seen = vec![false; s.rank()];
        if perm.len() != s.rank()
            || perm
                .iter()
                .any(|&p| p >= s.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shape(
                "transpose",
                format!("permutation {perm:?} for {s}"),
            ));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        let out = Shape(perm.iter().map(|&p| s.0[p]).collect());
        self.push1(
            Op::Transpose {
                perm: perm.to_vec(),
            },
            vec![x],
            out,
        )
    }
}

/// How a tensor splits around `axis`: rows (the axes before it) and the
/// contiguous run from `axis` on (`shape[axis] × inner`).
pub fn rows_and_inner(shape: &Shape, axis: usize) -> (usize, usize) {
    let rows = shape.0[..axis].iter().product();
    let inner = shape.0[axis + 1..].iter().product();
    (rows, inner)
}

impl Graph {
    /// Copy `x` into the persistent state `name` (declared here with
    /// `x`'s shape) at this point of the program: a later program (or the
    /// host) reads it there.
    pub fn store(&mut self, x: ValueId, name: &str) -> Result<ValueId> {
        self.expect_f32("store", x)?;
        let shape = self.shape(x).clone();
        let state = self.state(name, shape)?;
        self.push_node(Op::Store, vec![x], vec![], vec![state])?;
        Ok(state)
    }

    /// Join `xs` along `axis`; every other axis must agree.
    pub fn concat(&mut self, xs: &[ValueId], axis: usize) -> Result<ValueId> {
        let Some(&first) = xs.first() else {
            return Err(Error::shape("concat", "no inputs".to_string()));
        };
        let s0 = self.shape(first).clone();
        if axis >= s0.rank() {
            return Err(Error::shape(
                "concat",
                format!("axis {axis} of a rank-{} tensor {s0}", s0.rank()),
            ));
        }
        let mut out = s0.clone();
        out.0[axis] = 0;
        for &x in xs {
            let s = self.shape(x);
            let agree =
                s.rank() == s0.rank() && (0..s.rank()).all(|d| d == axis || s.0[d] == s0.0[d]);
            if !agree {
                return Err(Error::shape(
                    "concat",
                    format!("{s} does not fit {s0} on every axis but {axis}"),
                ));
            }
            out.0[axis] += s.0[axis];
        }
        if xs.len() == 1 {
            return Ok(first);
        }
        self.push1(Op::Concat { axis }, xs.to_vec(), out)
    }

    /// `x[.., start..start + len, ..]` on `axis`.
    pub fn slice(&mut self, x: ValueId, axis: usize, start: usize, len: usize) -> Result<ValueId> {
        let s = self.shape(x).clone();
        if axis >= s.rank() || len == 0 || start.checked_add(len).is_none_or(|e| e > s.0[axis]) {
            return Err(Error::shape(
                "slice",
                format!("{start}..{start}+{len} on axis {axis} of {s}"),
            ));
        }
        if len == s.0[axis] {
            return Ok(x);
        }
        let mut out = s;
        out.0[axis] = len;
        self.push1(Op::Slice { axis, start }, vec![x], out)
    }
}

/// Each input's gradient is its slice of `dy`.
pub fn concat_backward(
    g: &mut Graph,
    axis: usize,
    xs: &[ValueId],
    dy: ValueId,
) -> Result<Vec<Option<ValueId>>> {
    let mut start = 0;
    xs.iter()
        .map(|&x| {
            let len = g.shape(x).0[axis];
            if len == 0 {
                return Ok(None); // an empty input has no gradient to take
            }
            let d = g.slice(dy, axis, start, len)?;
            start += len;
            Ok(Some(d))
        })
        .collect()
}

/// `dy` placed between zero blocks.
pub fn slice_backward(
    g: &mut Graph,
    axis: usize,
    start: usize,
    x: ValueId,
    dy: ValueId,
) -> Result<ValueId> {
    let sx = g.shape(x).clone();
    let len = g.shape(dy).0[axis];
    let mut parts = Vec::new();
    for (from, to) in [(0, start), (start + len, sx.0[axis])] {
        if to > from {
            let mut zs = sx.clone();
            zs.0[axis] = to - from;
            parts.push(g.fill(zs, 0.0)?);
        }
    }
    let before = usize::from(start > 0);
    parts.insert(before, dy);
    g.concat(&parts, axis)
}

pub fn reshape_backward(g: &mut Graph, x: ValueId, dy: ValueId) -> Result<ValueId> {
    let s = g.shape(x).clone();
    g.reshape(dy, s)
}

pub fn transpose_backward(g: &mut Graph, perm: &[usize], dy: ValueId) -> Result<ValueId> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    g.transpose(dy, &inv)
}
