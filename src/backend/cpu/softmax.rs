//! CPU kernels of `ops::softmax`.

use super::isa;
use crate::backend::cpu::simd_math;
use rayon::prelude::*;

/// Rows big enough to be worth a rayon task each.
fn rows_par<F: Fn(usize, &mut [f32]) + Sync + Send>(y: &mut [f32], n: usize, f: F) {
    if y.len() >= 1 << 14 {
        // One contiguous run of rows per thread keeps each streaming
        // through memory, which the prefetchers reward.
        let rows = (y.len() / n.max(1)).div_ceil(super::par::threads());
        y.par_chunks_mut(n)
            .enumerate()
            .with_min_len(super::par::min_len(rows))
            .for_each(|(i, r)| f(i, r));
    } else {
        y.chunks_mut(n).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// Lanes of the vectorised reductions (one AVX-512 register).
const L: usize = 16;

pub fn cpu_softmax(n: usize, log: bool, x: &[f32], y: &mut [f32]) {
    if n == 0 {
        return;
    }
    let rows = y.len() / n;
    if y.len() >= 1 << 14 {
        // One contiguous run of rows per thread keeps each streaming
        // through memory, which the prefetchers reward.
        let per = rows.div_ceil(super::par::threads()).max(1);
        y.par_chunks_mut(per * n)
            .zip(x.par_chunks(per * n))
            .with_min_len(super::par::min_len(1))
            .for_each(|(yb, xb)| softmax_rows(xb, n, log, yb));
    } else {
        softmax_rows(&x[..rows * n], n, log, y);
    }
}

isa::vectorized! {
    /// Consecutive rows, each in three vectorised passes over L1-resident data
    /// (max; exp and sum; scale): the only memory traffic is reading `x` and
    /// writing `y` once. The max of the *next* row is taken during this row's
    /// exp pass, chunk by chunk, so its reads stream from memory while the exp
    /// arithmetic runs instead of after it. `max` skips NaN like `f32::max`;
    /// a NaN then reaches every output through the sum.
    fn softmax_rows(x: &[f32], n: usize, log: bool, y: &mut [f32]) {
        if isa::active().has_fma() {
            softmax_rows_impl::<true>(x, n, log, y)
        } else {
            softmax_rows_impl::<false>(x, n, log, y)
        }
    }
}

#[inline(always)]
fn lanes_max(lanes: &mut [f32; L], c: &[f32; L]) {
    for l in 0..L {
        lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
    }
}

#[inline(always)]
fn finish_max(lanes: &[f32; L], tail: &[f32]) -> f32 {
    lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

#[inline(always)]
fn softmax_rows_impl<const FMA: bool>(x: &[f32], n: usize, log: bool, y: &mut [f32]) {
    let rows = y.len() / n;
    let row_max = |xr: &[f32]| {
        let (xc, xt) = xr.as_chunks::<L>();
        let mut lanes = [f32::NEG_INFINITY; L];
        for c in xc {
            lanes_max(&mut lanes, c);
        }
        finish_max(&lanes, xt)
    };
    let mut m = row_max(&x[..n]);
    for (i, yr) in y.chunks_exact_mut(n).take(rows).enumerate() {
        let xr = &x[i * n..(i + 1) * n];
        let next = x.get((i + 1) * n..(i + 2) * n);
        let (xc, xt) = xr.as_chunks::<L>();
        let (yc, yt) = yr.as_chunks_mut::<L>();
        let mut sums = [0.0f32; L];
        let mut next_lanes = [f32::NEG_INFINITY; L];
        match next {
            Some(nr) => {
                let (nc, _) = nr.as_chunks::<L>();
                for ((yc, xc), nc) in yc.iter_mut().zip(xc).zip(nc) {
                    for l in 0..L {
                        yc[l] = simd_math::exp_nonpositive::<FMA>(xc[l] - m);
                        sums[l] += yc[l];
                    }
                    lanes_max(&mut next_lanes, nc);
                }
            }
            None => {
                for (yc, xc) in yc.iter_mut().zip(xc) {
                    for l in 0..L {
                        yc[l] = simd_math::exp_nonpositive::<FMA>(xc[l] - m);
                        sums[l] += yc[l];
                    }
                }
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for (y, &x) in yt.iter_mut().zip(xt) {
            *y = simd_math::exp_nonpositive::<FMA>(x - m);
            sum += *y;
        }
        if log {
            let shift = m + sum.ln();
            for (y, &x) in yr.iter_mut().zip(xr) {
                *y = x - shift;
            }
        } else {
            let inv = 1.0 / sum;
            yr.iter_mut().for_each(|y| *y *= inv);
        }
        if let Some(nr) = next {
            m = finish_max(&next_lanes, nr.as_chunks::<L>().1);
        }
    }
}

/// softmax: dx = y ⊙ (dy − Σ dy⊙y); log-softmax: dx = dy − exp(y) Σ dy.
pub fn cpu_softmax_backward(n: usize, log: bool, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    rows_par(dx, n, |i, dxr| {
        let (yr, dyr) = (&y[i * n..(i + 1) * n], &dy[i * n..(i + 1) * n]);
        softmax_backward_row(yr, dyr, log, dxr)
    });
}

isa::vectorized! {
    fn softmax_backward_row(yr: &[f32], dyr: &[f32], log: bool, dxr: &mut [f32]) {
        let dxr = &mut dxr[..yr.len()];
        if log {
            let s = lane_sum(dyr, None);
            for ((dx, &y), &dy) in dxr.iter_mut().zip(yr).zip(dyr) {
                *dx = dy - simd_math::exp(y) * s;
            }
        } else {
            let s = lane_sum(dyr, Some(yr));
            for ((dx, &y), &dy) in dxr.iter_mut().zip(yr).zip(dyr) {
                *dx = y * (dy - s);
            }
        }
    }
}

/// `Σ a·b` (or `Σ a` without `b`) in `L` interleaved partial sums, so it
/// vectorises.
#[inline(always)]
fn lane_sum(a: &[f32], b: Option<&[f32]>) -> f32 {
    let (ac, at) = a.as_chunks::<L>();
    let mut lanes = [0.0f32; L];
    let mut tail = 0.0;
    match b {
        Some(b) => {
            let (bc, bt) = b[..a.len()].as_chunks::<L>();
            for (x, y) in ac.iter().zip(bc) {
                for l in 0..L {
                    lanes[l] += x[l] * y[l];
                }
            }
            tail += at.iter().zip(bt).map(|(x, y)| x * y).sum::<f32>();
        }
        None => {
            for x in ac {
                for l in 0..L {
                    lanes[l] += x[l];
                }
            }
            tail += at.iter().sum::<f32>();
        }
    }
    lanes.iter().sum::<f32>() + tail
}
