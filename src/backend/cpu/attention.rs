//! Fused multi-head attention on the CPU, one sequence per rayon task.
//!
//! Queries go in blocks of [`QB`] rows: a block's scores against the
//! sequence's keys (`QB × T`, in L2) are the only score storage, so the
//! `T×T` probability matrix is never written, forward or backward. Q, K
//! and V of the head being processed are gathered once into contiguous
//! scratch, and the five products per block run on the `gemm` crate
//! (single-threaded: the sequences are the parallel loop). Rows past a
//! sequence's length are zero (see `ops/attention.rs`).

use super::isa;
use super::matmul::{sgemm, Threads};
use super::par::min_len;
use super::simd_math::exp_nonpositive;
use crate::graph::kernel::Sequences;
use rayon::prelude::*;

/// Forward: `out [B,T,H·d]` and `lse [B,H,T]` from `qkv [B,T,3·H·d]`.
pub fn cpu_attention_forward(
    s: Sequences,
    heads: usize,
    qkv: &[f32],
    lengths: &[u32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (t, d) = (s.len, s.dim);
    if out.is_empty() || lse.is_empty() {
        return;
    }
    let per = t * 3 * heads * d;
    out.par_chunks_mut(t * heads * d)
        .zip(lse.par_chunks_mut(heads * t))
        .enumerate()
        .with_min_len(min_len(1))
        .for_each(|(b, (ob, lb))| {
            let l = (lengths[b] as usize).min(t);
            forward_sequence(&qkv[b * per..(b + 1) * per], l, t, heads, d, ob, lb);
        });
}

/// Backward: `dqkv` from `qkv`, `out`, `lse` and `dout`.
pub fn cpu_attention_backward(
    s: Sequences,
    heads: usize,
    r: [&[f32]; 4],
    lengths: &[u32],
    dqkv: &mut [f32],
) {
    let [qkv, out, lse, dout] = r;
    let (t, d) = (s.len, s.dim);
    if dqkv.is_empty() {
        return;
    }
    let (per, dm) = (t * 3 * heads * d, heads * d);
    dqkv.par_chunks_mut(per)
        .enumerate()
        .with_min_len(min_len(1))
        .for_each(|(b, dx)| {
            let l = (lengths[b] as usize).min(t);
            let seq = Seq {
                x: &qkv[b * per..(b + 1) * per],
                out: &out[b * t * dm..(b + 1) * t * dm],
                lse: &lse[b * heads * t..(b + 1) * heads * t],
                dout: &dout[b * t * dm..(b + 1) * t * dm],
            };
            backward_sequence(seq, l, t, heads, d, dx);
        });
}

/// One sequence's operands for the backward.
struct Seq<'a> {
    x: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
}

/// Columns `h·d..` of block `part` (0 Q, 1 K, 2 V) of rows `0..l`, as
/// `[l][d]` rows (`transposed`: `[d][l]`).
fn gather(
    x: &[f32],
    l: usize,
    dm: usize,
    part: usize,
    h: usize,
    d: usize,
    transposed: bool,
) -> Vec<f32> {
    let mut g = vec![0.0; l * d];
    for j in 0..l {
        let src = &x[j * 3 * dm + part * dm + h * d..][..d];
        if transposed {
            for (k, &v) in src.iter().enumerate() {
                g[k * l + j] = v;
            }
        } else {
            g[j * d..(j + 1) * d].copy_from_slice(src);
        }
    }
    g
}

/// `row[j] = exp(row[j] - shift)`, returning the sum (16 lanes).
#[inline(always)]
fn exp_shifted<const FMA: bool>(row: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (chunks, tail) = row.as_chunks_mut::<16>();
    for c in chunks {
        for (v, s) in c.iter_mut().zip(&mut lanes) {
            *v = exp_nonpositive::<FMA>((*v - shift).min(0.0));
            *s += *v;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for v in tail {
        *v = exp_nonpositive::<FMA>((*v - shift).min(0.0));
        sum += *v;
    }
    sum
}

isa::vectorized! {
    fn softmax_rows(s: &mut [f32], l: usize, lse: &mut [f32], shift: Option<&[f32]>) -> () {
        if isa::active().has_fma() {
            softmax_rows_impl::<true>(s, l, lse, shift)
        } else {
            softmax_rows_impl::<false>(s, l, lse, shift)
        }
    }
}

/// Each row of `s` (length `l`) becomes `exp(s − shift)`: with `shift`
/// given (the saved log-sum-exp) those are the probabilities; without, the
/// row's max is the shift, the row is normalised, and its log-sum-exp is
/// written to `lse`.
#[inline(always)]
fn softmax_rows_impl<const FMA: bool>(
    s: &mut [f32],
    l: usize,
    lse: &mut [f32],
    shift: Option<&[f32]>,
) {
    for (r, row) in s.chunks_exact_mut(l).enumerate() {
        match shift {
            Some(sh) => {
                exp_shifted::<FMA>(row, sh[r]);
            }
            None => {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let sum = exp_shifted::<FMA>(row, m);
                lse[r] = m + sum.ln();
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|v| *v *= inv);
            }
        }
    }
}

/// Query rows per block: a block's scores (`QB × T`) stay in L2.
const QB: usize = 64;

fn forward_sequence(
    x: &[f32],
    l: usize,
    t: usize,
    heads: usize,
    d: usize,
    out: &mut [f32],
    lse: &mut [f32],
) {
    out.fill(0.0);
    lse.fill(0.0);
    if l == 0 {
        return;
    }
    let dm = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut s = vec![0.0f32; QB * l];
    let mut o = vec![0.0f32; QB * d];
    for h in 0..heads {
        let mut q = gather(x, l, dm, 0, h, d, false);
        q.iter_mut().for_each(|v| *v *= scale);
        let kt = gather(x, l, dm, 1, h, d, true);
        let v = gather(x, l, dm, 2, h, d, false);
        for r0 in (0..l).step_by(QB) {
            let qb = QB.min(l - r0);
            let (s, o) = (&mut s[..qb * l], &mut o[..qb * d]);
            sgemm(
                qb,
                l,
                d,
                &q[r0 * d..],
                false,
                &kt,
                false,
                s,
                false,
                Threads::Serial,
            );
            softmax_rows(s, l, &mut lse[h * t + r0..h * t + r0 + qb], None);
            sgemm(qb, d, l, s, false, &v, false, o, false, Threads::Serial);
            for (i, orow) in o.chunks_exact(d).enumerate() {
                out[(r0 + i) * dm + h * d..][..d].copy_from_slice(orow);
            }
        }
    }
}

/// Per query block: `P = exp(S − lse)`, `dV += Pᵀ·dO`, `dP = dO·Vᵀ`,
/// `dS = P∘(dP − rowsum(dO∘O))`, `dQ = scale·dS·K`, `dK += dSᵀ·(scale·Q)`.
fn backward_sequence(sq: Seq, l: usize, t: usize, heads: usize, d: usize, dx: &mut [f32]) {
    dx.fill(0.0);
    if l == 0 {
        return;
    }
    let dm = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut p = vec![0.0f32; QB * l];
    let mut dp = vec![0.0f32; QB * l];
    let mut dq = vec![0.0f32; QB * d];
    let mut go = vec![0.0f32; l * d];
    let mut di = vec![0.0f32; l];
    for h in 0..heads {
        let mut q = gather(sq.x, l, dm, 0, h, d, false);
        q.iter_mut().for_each(|v| *v *= scale);
        let kt = gather(sq.x, l, dm, 1, h, d, true);
        let k = gather(sq.x, l, dm, 1, h, d, false);
        let vt = gather(sq.x, l, dm, 2, h, d, true);
        for r in 0..l {
            let g = &sq.dout[r * dm + h * d..][..d];
            go[r * d..(r + 1) * d].copy_from_slice(g);
            di[r] = g
                .iter()
                .zip(&sq.out[r * dm + h * d..][..d])
                .map(|(a, b)| a * b)
                .sum();
        }
        let mut dk = vec![0.0f32; l * d];
        let mut dv = vec![0.0f32; l * d];
        for r0 in (0..l).step_by(QB) {
            let qb = QB.min(l - r0);
            let (p, dp, dq) = (&mut p[..qb * l], &mut dp[..qb * l], &mut dq[..qb * d]);
            let (qs, gs) = (&q[r0 * d..(r0 + qb) * d], &go[r0 * d..(r0 + qb) * d]);
            sgemm(qb, l, d, qs, false, &kt, false, p, false, Threads::Serial);
            softmax_rows(p, l, &mut [], Some(&sq.lse[h * t + r0..h * t + r0 + qb]));
            sgemm(l, d, qb, p, true, gs, false, &mut dv, true, Threads::Serial);
            sgemm(qb, l, d, gs, false, &vt, false, dp, false, Threads::Serial);
            for (i, (pr, dpr)) in p.chunks_exact_mut(l).zip(dp.chunks_exact(l)).enumerate() {
                let dr = di[r0 + i];
                for (pv, &dpv) in pr.iter_mut().zip(dpr) {
                    *pv *= dpv - dr;
                }
            }
            sgemm(qb, d, l, p, false, &k, false, dq, false, Threads::Serial);
            sgemm(l, d, qb, p, true, qs, false, &mut dk, true, Threads::Serial);
            for (i, row) in dq.chunks_exact(d).enumerate() {
                for (o, &v) in dx[(r0 + i) * 3 * dm + h * d..][..d].iter_mut().zip(row) {
                    *o = v * scale;
                }
            }
        }
        for j in 0..l {
            dx[j * 3 * dm + dm + h * d..][..d].copy_from_slice(&dk[j * d..(j + 1) * d]);
            dx[j * 3 * dm + 2 * dm + h * d..][..d].copy_from_slice(&dv[j * d..(j + 1) * d]);
        }
    }
}
