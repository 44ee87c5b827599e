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

impl Graph {
    /// Cross-entropy with label smoothing `eps`, as PyTorch's
    /// `CrossEntropyLoss(label_smoothing=eps)`: the target is `1 − eps` on
    /// the label plus `eps/C` on every class, so the loss is
    /// `(1 − eps)·CE + eps·mean(−log_softmax)`. Composed of existing ops
    /// (its gradient is theirs); `eps = 0` is plain [`Graph::cross_entropy`].
    pub fn cross_entropy_smoothed(
        &mut self,
        logits: ValueId,
        labels: ValueId,
        eps: f32,
    ) -> Result<ValueId> {
        if !(0.0..1.0).contains(&eps) {
            return Err(Error::shape(
                "cross_entropy",
                format!("label smoothing must be in [0, 1), got {eps}"),
            ));
        }
        let ce = self.cross_entropy(logits, labels)?;
        if eps == 0.0 {
            return Ok(ce);
        }
        let log_p = self.log_softmax(logits)?;
        let mean_log_p = self.mean(log_p, &[0, 1], false)?;
        let hard = self.scale(ce, 1.0 - eps)?;
        let smooth = self.scale(mean_log_p, -eps)?;
        self.add(hard, smooth)
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
