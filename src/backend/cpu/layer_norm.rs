//! Layer normalisation over the last axis on the CPU: rows in parallel,
//! each in L1; the weight and bias gradients summed per fixed block of
//! rows and then over the blocks in order, so the result does not depend
//! on the thread count.

use super::par::min_len;
use rayon::prelude::*;

/// Rows per block of the parameter-gradient sums (and per rayon task).
const BLOCK_ROWS: usize = 64;

/// `y = (x − mean)·rstd·w + b` per row of `n`; also writes mean and rstd.
/// With `residual = Some((r, sum))` the row normalised is `x + r`, which
/// is also written to `sum`.
pub fn cpu_layer_norm(
    n: usize,
    eps: f32,
    r: [&[f32]; 3],
    y: &mut [f32],
    stats: [&mut [f32]; 2],
    residual: Option<(&[f32], &mut [f32])>,
) {
    let [x, w, b] = r;
    let [mean, rstd] = stats;
    if n == 0 {
        return;
    }
    // With a residual, the sum is formed first (one parallel pass) and
    // normalised in place of x.
    let x: &[f32] = match residual {
        Some((res, sum)) => {
            super::par::map2(sum, x, res, |a, b| a + b);
            sum
        }
        None => x,
    };
    y.par_chunks_mut(n * BLOCK_ROWS)
        .zip(mean.par_chunks_mut(BLOCK_ROWS))
        .zip(rstd.par_chunks_mut(BLOCK_ROWS))
        .enumerate()
        .with_min_len(min_len(1))
        .for_each(|(blk, ((yb, mb), rb))| {
            let xb = &x[blk * n * BLOCK_ROWS..];
            for (i, yr) in yb.chunks_exact_mut(n).enumerate() {
                let xr = &xb[i * n..(i + 1) * n];
                let m = xr.iter().sum::<f32>() / n as f32;
                let var = xr.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / n as f32;
                let s = 1.0 / (var + eps).sqrt();
                for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                    *o = (v - m) * s * wv + bv;
                }
                mb[i] = m;
                rb[i] = s;
            }
        });
}

/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` with `g = dy·w`, and the
/// column sums `dw = Σ dy·x̂`, `db = Σ dy`.
pub fn cpu_layer_norm_backward(
    n: usize,
    r: [&[f32]; 5],
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    let [x, w, mean, rstd, dy] = r;
    if n == 0 {
        return;
    }
    let rows = x.len() / n;
    let blocks = rows.div_ceil(BLOCK_ROWS);
    let mut partial = vec![0.0f32; blocks * 2 * n];
    dx.par_chunks_mut(n * BLOCK_ROWS)
        .zip(partial.par_chunks_mut(2 * n))
        .enumerate()
        .with_min_len(min_len(1))
        .for_each(|(blk, (dxb, pb))| {
            let (pw, pbias) = pb.split_at_mut(n);
            let row0 = blk * BLOCK_ROWS;
            let mut xhat = vec![0.0f32; n];
            for (i, dxr) in dxb.chunks_exact_mut(n).enumerate() {
                let row = row0 + i;
                let (xr, gr) = (&x[row * n..(row + 1) * n], &dy[row * n..(row + 1) * n]);
                let (m, s) = (mean[row], rstd[row]);
                let (mut mg, mut mgx) = (0.0f32, 0.0f32);
                for k in 0..n {
                    xhat[k] = (xr[k] - m) * s;
                    let g = gr[k] * w[k];
                    mg += g;
                    mgx += g * xhat[k];
                    pw[k] += gr[k] * xhat[k];
                    pbias[k] += gr[k];
                }
                let (mg, mgx) = (mg / n as f32, mgx / n as f32);
                for k in 0..n {
                    dxr[k] = s * (gr[k] * w[k] - mg - xhat[k] * mgx);
                }
            }
        });
    dw.fill(0.0);
    db.fill(0.0);
    for pb in partial.chunks_exact(2 * n) {
        for k in 0..n {
            dw[k] += pb[k];
            db[k] += pb[n + k];
        }
    }
}
