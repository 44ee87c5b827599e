//! Fused multi-head attention on the CPU, one sequence per rayon task.
//!
//! Each query row's scores against the sequence's keys live in one
//! L1-resident row buffer (at most `T` floats): the `T×T` probability
//! matrix is never written, forward or backward, as on the GPUs. Keys and
//! values of the head being processed are gathered once into contiguous
//! scratch (`Kᵀ` so the score loop runs along the keys), and every inner
//! loop is an axpy over keys or over the head dimension, which the
//! compiler vectorises. Rows past a sequence's length are zero (see
//! `ops/attention.rs`).

use super::par::min_len;
use super::simd_math::exp_nonpositive;
use crate::graph::kernel::Sequences;
use multiversion::multiversion;
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

/// `row[j] = Σ_k a[k]·bt[k][j]` for `j < row.len()`.
#[inline(always)]
fn scores(a: &[f32], bt: &[f32], row: &mut [f32]) {
    let l = row.len();
    row.fill(0.0);
    for (k, &ak) in a.iter().enumerate() {
        for (s, &b) in row.iter_mut().zip(&bt[k * l..(k + 1) * l]) {
            *s += ak * b;
        }
    }
}

#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
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

#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn forward_sequence(
    x: &[f32],
    l: usize,
    t: usize,
    heads: usize,
    d: usize,
    out: &mut [f32],
    lse: &mut [f32],
) {
    use multiversion::target::selected_target;
    if selected_target!().supports_feature_str("fma")
        || selected_target!().supports_feature_str("neon")
    {
        forward_impl::<true>(x, l, t, heads, d, out, lse)
    } else {
        forward_impl::<false>(x, l, t, heads, d, out, lse)
    }
}

#[inline(always)]
fn forward_impl<const FMA: bool>(
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
    let mut row = vec![0.0f32; l];
    let mut q = vec![0.0f32; d];
    for h in 0..heads {
        let kt = gather(x, l, dm, 1, h, d, true);
        let v = gather(x, l, dm, 2, h, d, false);
        for r in 0..l {
            for (qs, &qv) in q.iter_mut().zip(&x[r * 3 * dm + h * d..][..d]) {
                *qs = qv * scale;
            }
            scores(&q, &kt, &mut row);
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let sum = exp_shifted::<FMA>(&mut row, m);
            lse[h * t + r] = m + sum.ln();
            let o = &mut out[r * dm + h * d..][..d];
            for (j, &p) in row.iter().enumerate() {
                axpy(p, &v[j * d..(j + 1) * d], o);
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn backward_sequence(s: Seq, l: usize, t: usize, heads: usize, d: usize, dx: &mut [f32]) {
    use multiversion::target::selected_target;
    if selected_target!().supports_feature_str("fma")
        || selected_target!().supports_feature_str("neon")
    {
        backward_impl::<true>(s, l, t, heads, d, dx)
    } else {
        backward_impl::<false>(s, l, t, heads, d, dx)
    }
}

/// Per query row `r`: `P = exp(S − lse)`, `dP = dO·Vᵀ`,
/// `dS = P∘(dP − rowsum(dO∘O))·scale`; then `dV += Pᵀ·dO`, `dQ = dS·K`,
/// `dK += dSᵀ·Q`, all in one pass over the keys.
#[inline(always)]
fn backward_impl<const FMA: bool>(
    s: Seq,
    l: usize,
    t: usize,
    heads: usize,
    d: usize,
    dx: &mut [f32],
) {
    dx.fill(0.0);
    if l == 0 {
        return;
    }
    let dm = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut p = vec![0.0f32; l];
    let mut dp = vec![0.0f32; l];
    let mut q = vec![0.0f32; d];
    let mut dq = vec![0.0f32; d];
    for h in 0..heads {
        let kt = gather(s.x, l, dm, 1, h, d, true);
        let vt = gather(s.x, l, dm, 2, h, d, true);
        let k = gather(s.x, l, dm, 1, h, d, false);
        let mut dk = vec![0.0f32; l * d];
        let mut dv = vec![0.0f32; l * d];
        for r in 0..l {
            let qr = &s.x[r * 3 * dm + h * d..][..d];
            for (qs, &qv) in q.iter_mut().zip(qr) {
                *qs = qv * scale;
            }
            let dor = &s.dout[r * dm + h * d..][..d];
            let or = &s.out[r * dm + h * d..][..d];
            let di: f32 = dor.iter().zip(or).map(|(a, b)| a * b).sum();
            scores(&q, &kt, &mut p);
            exp_shifted::<FMA>(&mut p, s.lse[h * t + r]);
            scores(dor, &vt, &mut dp);
            dq.fill(0.0);
            for j in 0..l {
                let ds = p[j] * (dp[j] - di) * scale;
                axpy(p[j], dor, &mut dv[j * d..(j + 1) * d]);
                axpy(ds, &k[j * d..(j + 1) * d], &mut dq);
                axpy(ds, qr, &mut dk[j * d..(j + 1) * d]);
            }
            dx[r * 3 * dm + h * d..][..d].copy_from_slice(&dq);
        }
        for j in 0..l {
            dx[j * 3 * dm + dm + h * d..][..d].copy_from_slice(&dk[j * d..(j + 1) * d]);
            dx[j * 3 * dm + 2 * dm + h * d..][..d].copy_from_slice(&dv[j * d..(j + 1) * d]);
        }
    }
}
