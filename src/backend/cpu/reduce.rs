//! CPU kernels of `ops::reduce`: summing over broadcast axes and its
//! adjoint, broadcasting.

use super::binary::outer_offsets;
use crate::ops::binary::broadcast_strides;
use crate::tensor::Shape;

/// The rows (last axis) of a full shape `big`, and where each starts in an
/// operand of shape `small` that broadcasts to it.
struct BroadcastRows<'a> {
    big: &'a Shape,
    strides: Vec<usize>,
    zeros: Vec<usize>,
    /// Row length (at least 1).
    len: usize,
    /// The operand's stride along a row (0 when it broadcasts there).
    step: usize,
}

impl<'a> BroadcastRows<'a> {
    /// None for rank 0 (one element, no rows).
    fn new(big: &'a Shape, small: &Shape) -> Option<Self> {
        let r = big.rank();
        let last = r.checked_sub(1)?;
        let strides = broadcast_strides(small, big);
        Some(BroadcastRows {
            big,
            step: strides[last],
            strides,
            zeros: vec![0; r],
            len: big.0[last].max(1),
        })
    }

    /// The operand's offset of the start of row `row`.
    fn start(&self, row: usize) -> usize {
        outer_offsets(self.big, &self.strides, &self.zeros, row).0
    }
}

/// `y = sum of x over the axes where y's (broadcast) shape is 1`.
/// Serial and in a fixed order, so results are bitwise reproducible.
pub fn cpu_sum_to(sx: &Shape, x: &[f32], sy: &Shape, y: &mut [f32]) {
    y.fill(0.0);
    let Some(rows) = BroadcastRows::new(sx, sy) else {
        y[0] = x[0];
        return;
    };
    for (row, xr) in x.chunks(rows.len).enumerate() {
        let oy = rows.start(row);
        if rows.step == 0 {
            y[oy] += xr.iter().sum::<f32>();
        } else {
            for (j, v) in xr.iter().enumerate() {
                y[oy + j * rows.step] += v;
            }
        }
    }
}

pub fn cpu_broadcast_to(sx: &Shape, x: &[f32], sy: &Shape, y: &mut [f32]) {
    let Some(rows) = BroadcastRows::new(sy, sx) else {
        y[0] = x[0];
        return;
    };
    for (row, yr) in y.chunks_mut(rows.len).enumerate() {
        let ox = rows.start(row);
        for (j, v) in yr.iter_mut().enumerate() {
            *v = x[ox + j * rows.step];
        }
    }
}

/// `w[k] = r[k] · min(1, max_norm / √(Σ r² + 1e-12))` over all tensors; the
/// sum in f64, per tensor in parallel, then added in tensor order (the
/// same bits on every run). A NaN anywhere makes every output NaN, as in
/// PyTorch.
pub fn cpu_clip_grad_norm(max_norm: f32, r: &[&[f32]], w: &mut [&mut [f32]]) {
    use rayon::prelude::*;
    let per_tensor: Vec<f64> = r
        .par_iter()
        .with_min_len(super::par::min_len(1))
        .map(|x| {
            x.chunks(256)
                .map(|c| c.iter().map(|&v| v * v).sum::<f32>() as f64)
                .sum::<f64>()
        })
        .collect();
    let total: f64 = per_tensor.iter().sum();
    let coef = max_norm as f64 / (total + 1e-12).sqrt();
    // Not `f64::min`, which would turn a NaN coefficient into 1.
    let factor = if coef < 1.0 || coef.is_nan() {
        coef
    } else {
        1.0
    } as f32;
    for (x, y) in r.iter().zip(w.iter_mut()) {
        super::par::map1(y, x, |v| v * factor);
    }
}
