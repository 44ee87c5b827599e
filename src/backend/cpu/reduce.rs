//! CPU kernels of `ops::reduce`: summing over broadcast axes and its
//! adjoint, broadcasting.

use super::binary::outer_offsets;
use crate::ops::binary::broadcast_strides;
use crate::tensor::Shape;

/// `y = sum of x over the axes where y's (broadcast) shape is 1`.
/// Serial and in a fixed order, so results are bitwise reproducible.
pub fn cpu_sum_to(sx: &Shape, x: &[f32], sy: &Shape, y: &mut [f32]) {
    y.fill(0.0);
    let r = sx.rank();
    if r == 0 {
        y[0] = x[0];
        return;
    }
    let inner = sx.0[r - 1];
    let stry = broadcast_strides(sy, sx);
    let iy = stry[r - 1];
    let zeros = vec![0usize; r];
    for (row, xr) in x.chunks(inner.max(1)).enumerate() {
        let (oy, _) = outer_offsets(sx, &stry, &zeros, row);
        if iy == 0 {
            y[oy] += xr.iter().sum::<f32>();
        } else {
            for (j, v) in xr.iter().enumerate() {
                y[oy + j * iy] += v;
            }
        }
    }
}

pub fn cpu_broadcast_to(sx: &Shape, x: &[f32], sy: &Shape, y: &mut [f32]) {
    let r = sy.rank();
    if r == 0 {
        y[0] = x[0];
        return;
    }
    let inner = sy.0[r - 1];
    let strx = broadcast_strides(sx, sy);
    let ix = strx[r - 1];
    let zeros = vec![0usize; r];
    for (row, yr) in y.chunks_mut(inner.max(1)).enumerate() {
        let (ox, _) = outer_offsets(sy, &strx, &zeros, row);
        for (j, v) in yr.iter_mut().enumerate() {
            *v = x[ox + j * ix];
        }
    }
}
