//! CPU kernels of `ops::binary`.

use crate::ops::binary::*;
use crate::tensor::Shape;
use rayon::prelude::*;

use super::par::ELEMENTWISE_PAR_MIN as PAR_MIN;

/// Iterate the output in rows of its last axis, handing each row's offsets
/// into `a` and `b`. Rows are independent, so they run in parallel.
pub fn cpu_binary(
    kind: BinaryKind,
    sa: &Shape,
    a: &[f32],
    sb: &Shape,
    b: &[f32],
    so: &Shape,
    y: &mut [f32],
) {
    if sa == so && sb == so {
        super::par::map2(y, a, b, |a, b| kind.apply(a, b));
        return;
    }
    let r = so.rank();
    let inner = if r == 0 { 1 } else { so.0[r - 1] };
    let stra = broadcast_strides(sa, so);
    let strb = broadcast_strides(sb, so);
    let (ia, ib) = if r == 0 {
        (0, 0)
    } else {
        (stra[r - 1], strb[r - 1])
    };
    let row = |(row_idx, yr): (usize, &mut [f32])| {
        let (oa, ob) = outer_offsets(so, &stra, &strb, row_idx);
        for (j, yv) in yr.iter_mut().enumerate() {
            *yv = kind.apply(a[oa + j * ia], b[ob + j * ib]);
        }
    };
    if y.len() >= PAR_MIN && super::par::threads() > 1 {
        y.par_chunks_mut(inner.max(1)).enumerate().for_each(row);
    } else {
        y.chunks_mut(inner.max(1)).enumerate().for_each(row);
    }
}

/// Offsets into two broadcast operands of the start of output row `row`.
pub(super) fn outer_offsets(
    so: &Shape,
    sa: &[usize],
    sb: &[usize],
    mut row: usize,
) -> (usize, usize) {
    let r = so.rank();
    let (mut oa, mut ob) = (0, 0);
    for ax in (0..r.saturating_sub(1)).rev() {
        let i = row % so.0[ax];
        row /= so.0[ax];
        oa += i * sa[ax];
        ob += i * sb[ax];
    }
    (oa, ob)
}

/// In place: operand `i` (which has the output's shape) is `y` itself;
/// `other` may broadcast.
pub fn cpu_binary_inplace(
    kind: BinaryKind,
    i: usize,
    so: &Shape,
    other: &[f32],
    sy: &Shape,
    y: &mut [f32],
) {
    let f = |y: &mut f32, o: f32| {
        *y = if i == 0 {
            kind.apply(*y, o)
        } else {
            kind.apply(o, *y)
        }
    };
    if so == sy {
        // Matched once, outside the loops, so each loop vectorises; split
        // across threads like the other elementwise kernels (serial, the
        // residual add of a ResNet-20 backward took 2 ms a step on 2
        // threads).
        use super::par::map2_inplace as map;
        match (kind, i == 0) {
            (BinaryKind::Add, _) => map(y, other, |y, o| y + o),
            (BinaryKind::Mul, _) => map(y, other, |y, o| y * o),
            (BinaryKind::Sub, true) => map(y, other, |y, o| y - o),
            (BinaryKind::Sub, false) => map(y, other, |y, o| o - y),
            (BinaryKind::Div, true) => map(y, other, |y, o| y / o),
            (BinaryKind::Div, false) => map(y, other, |y, o| o / y),
        }
        return;
    }
    let r = sy.rank();
    let inner = if r == 0 { 1 } else { sy.0[r - 1] };
    let stro = broadcast_strides(so, sy);
    let io = if r == 0 { 0 } else { stro[r - 1] };
    let zeros = vec![0usize; r];
    for (row, yr) in y.chunks_mut(inner.max(1)).enumerate() {
        let (oo, _) = outer_offsets(sy, &stro, &zeros, row);
        for (j, yv) in yr.iter_mut().enumerate() {
            f(yv, other[oo + j * io]);
        }
    }
}

pub fn cpu_scale(alpha: f32, x: &[f32], y: &mut [f32]) {
    super::par::map1(y, x, |x| x * alpha);
}
