//! CPU kernels of `ops::shape`.

use crate::graph::kernel::RowCopy;
use crate::tensor::Shape;

/// `y[i_perm] = x[i]`: walk y in order and gather from x.
pub fn cpu_transpose(sx: &Shape, perm: &[usize], x: &[f32], y: &mut [f32]) {
    let r = sx.rank();
    let xs = sx.strides();
    let ys: Vec<usize> = perm.iter().map(|&p| sx.0[p]).collect();
    let src_stride: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
    let mut idx = vec![0usize; r];
    let mut off = 0usize;
    for v in y.iter_mut() {
        *v = x[off];
        for ax in (0..r).rev() {
            idx[ax] += 1;
            off += src_stride[ax];
            if idx[ax] < ys[ax] {
                break;
            }
            off -= src_stride[ax] * ys[ax];
            idx[ax] = 0;
        }
    }
}

/// One row-block copy of concat or slice.
pub fn cpu_copy_rows(c: &RowCopy, x: &[f32], y: &mut [f32]) {
    for r in 0..c.rows {
        let src = &x[r * c.x_stride + c.x_off..][..c.len];
        y[r * c.y_stride + c.y_off..][..c.len].copy_from_slice(src);
    }
}
