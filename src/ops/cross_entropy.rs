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

/// Rows with an out-of-range label contribute NaN, so a bad label can never
/// train silently (the host also validates labels before upload).
pub fn cpu_forward(b: usize, c: usize, logits: &[f32], labels: &[u32], loss: &mut [f32]) {
    let mut total = 0.0f64;
    for i in 0..b {
        let r = &logits[i * c..(i + 1) * c];
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let lse = m + r.iter().map(|&v| (v - m).exp()).sum::<f32>().ln();
        let t = labels[i] as usize;
        total += if t < c { (lse - r[t]) as f64 } else { f64::NAN };
    }
    loss[0] = (total / b.max(1) as f64) as f32;
}

pub fn cpu_backward(
    b: usize,
    c: usize,
    logits: &[f32],
    labels: &[u32],
    dloss: f32,
    dx: &mut [f32],
) {
    let scale = dloss / b.max(1) as f32;
    for i in 0..b {
        let r = &logits[i * c..(i + 1) * c];
        let d = &mut dx[i * c..(i + 1) * c];
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let mut sum = 0.0f32;
        for (d, &v) in d.iter_mut().zip(r) {
            *d = (v - m).exp();
            sum += *d;
        }
        let inv = scale / sum;
        d.iter_mut().for_each(|d| *d *= inv);
        let t = labels[i] as usize;
        if t < c {
            d[t] -= scale;
        } else {
            d.fill(f32::NAN);
        }
    }
}
