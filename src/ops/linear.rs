//! Linear (dense) layer: `y = x · wᵀ + b`, weight `[out, in]` as in
//! PyTorch, with an optional fused activation epilogue.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::activation::Activation;
use crate::ops::Op;
use crate::tensor::Shape;

impl Graph {
    /// `x [.., in]`, `w [out, in]`, `b [out]` -> `[.., out]`.
    pub fn linear(&mut self, x: ValueId, w: ValueId, b: Option<ValueId>) -> Result<ValueId> {
        self.linear_act(x, w, b, None)
    }

    pub fn linear_act(
        &mut self,
        x: ValueId,
        w: ValueId,
        b: Option<ValueId>,
        act: Option<Activation>,
    ) -> Result<ValueId> {
        crate::ops::conv2d::check_fusable("linear", act)?;
        let (sx, sw) = (self.shape(x).clone(), self.shape(w).clone());
        if sx.rank() < 1 || sw.rank() != 2 || sx.last() != sw.0[1] {
            return Err(Error::shape(
                "linear",
                format!("input {sx} and weight {sw} (expected [out, {}])", sx.last()),
            ));
        }
        let mut inputs = vec![x, w];
        if let Some(b) = b {
            if self.shape(b) != &Shape(vec![sw.0[0]]) {
                return Err(Error::shape(
                    "linear",
                    format!(
                        "bias {} for weight {sw} (expected [{}])",
                        self.shape(b),
                        sw.0[0]
                    ),
                ));
            }
            inputs.push(b);
        }
        let mut out = sx.0.clone();
        *out.last_mut().unwrap() = sw.0[0];
        self.push1(
            Op::Linear {
                bias: b.is_some(),
                act,
            },
            inputs,
            Shape(out),
        )
    }
}

/// Gradient rule. A fused activation's mask is applied to dy first.
pub fn backward(
    g: &mut Graph,
    act: Option<Activation>,
    inputs: &[ValueId],
    y: ValueId,
    dy: ValueId,
) -> Result<Vec<Option<ValueId>>> {
    let (x, w) = (inputs[0], inputs[1]);
    let dy = super::activation::masked_grad(g, act, y, dy)?;
    let sx = g.shape(x).clone();
    let k = sx.last();
    let rows = sx.numel() / k.max(1);
    let n = g.shape(w).0[0];
    let (x2, dy2) = if sx.rank() == 2 {
        (x, dy)
    } else {
        (g.reshape(x, [rows, k])?, g.reshape(dy, [rows, n])?)
    };
    let dx = g.matmul_t(dy2, false, w, false)?;
    let dx = if sx.rank() == 2 {
        dx
    } else {
        g.reshape(dx, sx.clone())?
    };
    let dw = g.matmul_t(dy2, true, x2, false)?;
    let mut grads = vec![Some(dx), Some(dw)];
    if inputs.len() == 3 {
        grads.push(Some(g.sum_to(dy2, &Shape(vec![n]))?));
    }
    Ok(grads)
}
