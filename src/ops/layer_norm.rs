//! Layer normalisation over the last axis, as `torch.nn.LayerNorm(n)`:
//! `y = (x − mean) / sqrt(var + eps) · weight + bias`, with the biased
//! variance, per row.
//!
//! It is built from primitives (mean, sub, mul, add, rsqrt), so its
//! gradient is theirs and every backend runs it with no kernel of its own;
//! the fuser merges the elementwise steps between the two reductions.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Activation;

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
