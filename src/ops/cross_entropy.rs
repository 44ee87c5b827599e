//! Cross-entropy from logits with integer labels, mean over the batch.
//! Forward and backward each make one pass over the logits (softmax is
//! recomputed in backward rather than stored: it is cheaper than the
//! memory traffic of keeping it).

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::{DType, Shape};

impl Graph {
    /// `logits [B, C]`, `labels u32 [B]` -> scalar mean loss.
    pub fn cross_entropy(&mut self, logits: ValueId, labels: ValueId) -> Result<ValueId> {
        let (sl, sy) = (self.shape(logits).clone(), self.shape(labels).clone());
        if sl.rank() != 2 || sy.rank() != 1 || sy.0[0] != sl.0[0] {
            return Err(Error::shape(
                "cross_entropy",
                format!("logits {sl} need [B, C] and labels {sy} need [B]"),
            ));
        }
        if self.dtype(labels) != DType::U32 {
            return Err(Error::shape(
                "cross_entropy",
                format!("labels must be u32, got {}", self.dtype(labels)),
            ));
        }
        self.push1(Op::CrossEntropy, vec![logits, labels], Shape::scalar())
    }
}

pub fn backward(
    g: &mut Graph,
    logits: ValueId,
    labels: ValueId,
    dloss: ValueId,
) -> Result<ValueId> {
    let s = g.shape(logits).clone();
    g.push1(
        Op::CrossEntropyBackward { dloss: None },
        vec![logits, labels, dloss],
        s,
    )
}
