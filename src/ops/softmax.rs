//! Softmax and log-softmax over the last axis, numerically stable (max
//! subtracted), one row per task; the CPU rows are vectorised (see
//! [`simd_math::exp`]).

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;

impl Graph {
    pub fn softmax(&mut self, x: ValueId) -> Result<ValueId> {
        self.softmax_like(Op::Softmax, "softmax", x)
    }
    pub fn log_softmax(&mut self, x: ValueId) -> Result<ValueId> {
        self.softmax_like(Op::LogSoftmax, "log_softmax", x)
    }
    fn softmax_like(&mut self, op: Op, name: &str, x: ValueId) -> Result<ValueId> {
        self.expect_f32(name, x)?;
        let s = self.shape(x).clone();
        if s.rank() == 0 || s.last() == 0 {
            return Err(Error::shape(
                name,
                format!("input {s} has no last axis to normalise"),
            ));
        }
        self.push1(op, vec![x], s)
    }
}

pub fn backward(g: &mut Graph, log: bool, y: ValueId, dy: ValueId) -> Result<ValueId> {
    let s = g.shape(y).clone();
    let op = if log {
        Op::LogSoftmaxBackward
    } else {
        Op::SoftmaxBackward
    };
    g.push1(op, vec![y, dy], s)
}
