//! Multi-head scaled dot-product attention over a padded batch, as one op:
//! `softmax(Q·Kᵀ/√d + mask)·V` per head, reading the packed projection
//! `qkv [B, T, 3·D]` (Q, K and V side by side, head `h` at columns
//! `h·d..(h+1)·d` of each, PyTorch's `in_proj` layout) and writing the
//! heads merged, `[B, T, D]`: no split or merge copies.
//!
//! Sequence `b` is `lengths[b]` tokens long (then padding). Keys past the
//! length are masked; query rows past it, and every row of an empty
//! sequence, are zero (nothing reads them: the pooling and the keys of
//! later layers skip them too), so a fully padded row is never a NaN.
//!
//! The forward also writes each row's log-sum-exp (`[B, H, T]`), so the
//! backward recomputes the probabilities instead of storing them: the
//! `T×T` matrix is never written to memory.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::{DType, Shape};

/// `(batch, seq, heads, head_dim)` of an attention over `qkv`.
pub fn attention_dims(op: &str, qkv: &Shape, heads: usize) -> Result<[usize; 4]> {
    match qkv.0[..] {
        [b, t, c] if heads > 0 && c > 0 && c % (3 * heads) == 0 => Ok([b, t, heads, c / 3 / heads]),
        _ => Err(Error::shape(
            op,
            format!("qkv {qkv} is not [batch, seq, 3·heads·head_dim] with {heads} heads"),
        )),
    }
}

impl Graph {
    /// `qkv [B, T, 3·D]`, `lengths` u32 `[B]` -> `[B, T, D]`.
    pub fn attention(&mut self, qkv: ValueId, lengths: ValueId, heads: usize) -> Result<ValueId> {
        self.expect_f32("attention", qkv)?;
        let [b, t, h, d] = attention_dims("attention", self.shape(qkv), heads)?;
        self.expect_lengths("attention", lengths, b)?;
        let out = self.push_node(
            Op::Attention { heads },
            vec![qkv, lengths],
            vec![
                (Shape(vec![b, t, h * d]), DType::F32),
                (Shape(vec![b, h, t]), DType::F32),
            ],
            vec![],
        )?;
        Ok(out[0])
    }

    /// Checks that `lengths` is u32 `[batch]`.
    pub(crate) fn expect_lengths(&self, op: &str, lengths: ValueId, batch: usize) -> Result<()> {
        if self.dtype(lengths) != DType::U32 || self.shape(lengths).0 != [batch] {
            return Err(Error::shape(
                op,
                format!(
                    "lengths must be u32 [{batch}], got {} {}",
                    self.dtype(lengths),
                    self.shape(lengths)
                ),
            ));
        }
        Ok(())
    }
}

/// Gradient with respect to `qkv` (inputs: qkv, lengths; outputs: out, lse).
pub fn backward(
    g: &mut Graph,
    heads: usize,
    inputs: &[ValueId],
    outputs: &[ValueId],
    dy: ValueId,
) -> Result<ValueId> {
    let s = g.shape(inputs[0]).clone();
    g.push1(
        Op::AttentionBackward { heads },
        vec![inputs[0], inputs[1], outputs[0], outputs[1], dy],
        s,
    )
}
