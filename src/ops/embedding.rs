//! Token embeddings: a gather of weight rows by id (`torch.nn.Embedding`),
//! and its gradient, a scatter-add into the weight's shape.
//!
//! The scatter-add is deterministic on every backend: each element of the
//! gradient is owned by one thread, which adds the contributions of the
//! ids in position order, so a run gives the same bits every time (no
//! float atomics, whose order varies). An id outside the vocabulary reads
//! a zero row and contributes nothing; the tokenizer never produces one,
//! and the embedding API checks ids before they reach a kernel.
//!
//! `embedding_bag` (fastText's mean of a document's token vectors) is the
//! embedding followed by [`Graph::masked_mean_pool`].

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::{DType, Shape};

impl Graph {
    /// `ids` (u32, any shape) -> `ids.shape + [D]`, row `ids[i]` of
    /// `weight [V, D]`.
    pub fn embedding(&mut self, weight: ValueId, ids: ValueId) -> Result<ValueId> {
        self.expect_f32("embedding", weight)?;
        let ws = self.shape(weight).clone();
        if ws.rank() != 2 || ws.0[0] == 0 || ws.0[1] == 0 {
            return Err(Error::shape(
                "embedding",
                format!("weight {ws} is not a non-empty [vocab, dim]"),
            ));
        }
        if self.dtype(ids) != DType::U32 {
            return Err(Error::shape(
                "embedding",
                format!("ids must be u32, got {}", self.dtype(ids)),
            ));
        }
        let mut out = self.shape(ids).0.clone();
        out.push(ws.0[1]);
        self.push1(Op::Embedding, vec![weight, ids], Shape(out))
    }

    /// fastText's document vector: the mean of the first `lengths[b]`
    /// token vectors of each sequence (`nn.EmbeddingBag(mode="mean")`).
    pub fn embedding_bag(
        &mut self,
        weight: ValueId,
        ids: ValueId,
        lengths: ValueId,
    ) -> Result<ValueId> {
        let x = self.embedding(weight, ids)?;
        self.masked_mean_pool(x, lengths)
    }
}

/// The gradient with respect to the weight: `dW[v] = Σ_{i: ids[i]=v} dy[i]`.
pub fn backward(g: &mut Graph, weight: ValueId, ids: ValueId, dy: ValueId) -> Result<ValueId> {
    let ws = g.shape(weight).clone();
    g.push1(Op::EmbeddingBackward { vocab: ws.0[0] }, vec![ids, dy], ws)
}
