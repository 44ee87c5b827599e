//! Layer normalisation over the last axis, as `torch.nn.LayerNorm(n)`:
//! `y = (x − mean) / sqrt(var + eps) · weight + bias`, with the biased
//! variance, per row.
//!
//! With both `weight` and `bias` (the usual case, and PyTorch's default)
//! it is one kernel, [`Op::LayerNorm`], which also keeps each row's mean
//! and reciprocal deviation for its backward, [`Op::LayerNormBackward`]
//! (dx per row; the weight and bias gradients as column sums in a fixed
//! order, so reproducible). Without them it is built from primitives
//! (mean, sub, mul, add, rsqrt) and its gradient is theirs.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::{Activation, Op};
use crate::tensor::{DType, Shape};

impl Graph {
    /// `weight` and `bias` (both optional, as with
    /// `elementwise_affine`/`bias` in PyTorch) have shape `[n]`, `n` the
    /// size of `x`'s last axis.
    pub fn layer_norm(
        &mut self,
        x: ValueId,
        weight: Option<ValueId>,
        bias: Option<ValueId>,
        eps: f32,
    ) -> Result<ValueId> {
        self.expect_f32("layer_norm", x)?;
        let s = self.shape(x).clone();
        let n = match s.0.last() {
            Some(&n) if n > 0 => n,
            _ => {
                return Err(Error::shape(
                    "layer_norm",
                    format!("x {s} has no last axis to normalise"),
                ))
            }
        };
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::shape(
                "layer_norm",
                format!("eps must be positive and finite, got {eps}"),
            ));
        }
        for (what, v) in [("weight", weight), ("bias", bias)] {
            if let Some(v) = v {
                self.expect_f32("layer_norm", v)?;
                if self.shape(v).0 != [n] {
                    return Err(Error::shape(
                        "layer_norm",
                        format!("{what} {} must be [{n}] for x {s}", self.shape(v)),
                    ));
                }
            }
        }
        if let (Some(w), Some(b)) = (weight, bias) {
            let rows = s.numel() / n;
            let out = self.push_node(
                Op::LayerNorm {
                    eps,
                    residual: false,
                },
                vec![x, w, b],
                vec![
                    (s.clone(), DType::F32),
                    (Shape(vec![rows]), DType::F32),
                    (Shape(vec![rows]), DType::F32),
                ],
                vec![],
            )?;
            return Ok(out[0]);
        }
        let axis = s.rank() - 1;
        let mean = self.mean(x, &[axis], true)?;
        let centred = self.sub(x, mean)?;
        let squares = self.mul(centred, centred)?;
        let var = self.mean(squares, &[axis], true)?;
        let eps = self.fill([1], eps)?;
        let var = self.add(var, eps)?;
        let inv_std = self.act(Activation::Rsqrt, var)?;
        let mut y = self.mul(centred, inv_std)?;
        if let Some(w) = weight {
            y = self.mul(y, w)?;
        }
        if let Some(b) = bias {
            y = self.add(y, b)?;
        }
        Ok(y)
    }
}

/// Gradients of (x, weight, bias); inputs (x, weight, bias), outputs
/// (y, mean, rstd).
pub fn backward(
    g: &mut Graph,
    inputs: &[ValueId],
    outputs: &[ValueId],
    dy: ValueId,
) -> Result<Vec<Option<ValueId>>> {
    let (sx, sw) = (g.shape(inputs[0]).clone(), g.shape(inputs[1]).clone());
    let out = g.push_node(
        Op::LayerNormBackward,
        vec![inputs[0], inputs[1], outputs[1], outputs[2], dy],
        vec![(sx, DType::F32), (sw.clone(), DType::F32), (sw, DType::F32)],
        vec![],
    )?;
    Ok(vec![Some(out[0]), Some(out[1]), Some(out[2])])
}
