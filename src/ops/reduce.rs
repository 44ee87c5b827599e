//! Sum and mean over axes. Both lower to `sum_to` (a reduction to the
//! keep-dims shape) plus a reshape view, so there is one reduction kernel.
//! Clipping by global norm is the reduction over many tensors, then their
//! scaling, in one launch.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use crate::tensor::Shape;

impl Graph {
    pub fn sum(&mut self, x: ValueId, axes: &[usize], keepdim: bool) -> Result<ValueId> {
        let s = self.shape(x).clone();
        if let Some(&a) = axes.iter().find(|&&a| a >= s.rank()) {
            return Err(Error::shape(
                "sum",
                format!("axis {a} out of range for {s}"),
            ));
        }
        if axes.iter().enumerate().any(|(i, a)| axes[..i].contains(a)) {
            return Err(Error::shape(
                "sum",
                format!("axes {axes:?} repeat an axis of {s}"),
            ));
        }
        let kd = Shape(
            s.0.iter()
                .enumerate()
                .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
                .collect(),
        );
        let y = self.sum_to(x, &kd)?;
        if keepdim {
            return Ok(y);
        }
        let out: Vec<usize> =
            s.0.iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect();
        self.reshape(y, out)
    }

    /// Every tensor scaled by `min(1, max_norm / √(Σ all squares + 1e-12))`
    /// in one multi-tensor launch: PyTorch's `clip_grad_norm_`, which
    /// divides by `‖g‖ + 1e-6` instead (the two agree to about 1e-6 /
    /// ‖g‖). A NaN gradient makes every output NaN, as in PyTorch.
    pub fn clip_grad_norm(&mut self, xs: &[ValueId], max_norm: f32) -> Result<Vec<ValueId>> {
        if !(max_norm.is_finite() && max_norm > 0.0) {
            return Err(Error::Usage(format!(
                "the gradient-norm limit must be a positive number, got {max_norm}"
            )));
        }
        if xs.is_empty() {
            return Ok(vec![]);
        }
        let outs = xs
            .iter()
            .map(|&x| (self.shape(x).clone(), self.dtype(x)))
            .collect();
        self.push_node(Op::ClipGradNorm { max_norm }, xs.to_vec(), outs, vec![])
    }

    pub fn mean(&mut self, x: ValueId, axes: &[usize], keepdim: bool) -> Result<ValueId> {
        let s = self.shape(x).clone();
        let count: usize = axes
            .iter()
            .filter(|&&a| a < s.rank())
            .map(|&a| s.0[a])
            .product();
        let y = self.sum(x, axes, keepdim)?;
        self.scale(y, 1.0 / count.max(1) as f32)
    }
}

/// Gradient of `sum_to`: broadcast back to the input's shape.
pub fn sum_to_backward(g: &mut Graph, x: ValueId, dy: ValueId) -> Result<ValueId> {
    let s = g.shape(x).clone();
    g.broadcast_to(dy, &s)
}

/// Gradient of `broadcast_to`: sum back down.
pub fn broadcast_to_backward(g: &mut Graph, x: ValueId, dy: ValueId) -> Result<ValueId> {
    let s = g.shape(x).clone();
    g.sum_to(dy, &s)
}
