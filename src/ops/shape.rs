//! Shape movers: reshape and flatten are views (no launch, no copy);
//! transpose is a permuting copy.

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
