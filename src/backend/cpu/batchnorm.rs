//! CPU kernels of `ops::batchnorm`.

use rayon::prelude::*;

const LANES: usize = 16;

/// `(Σ f(v), Σ f(v)²)` over `xs` where `f(v) = v - shift`, in 16 f32 lanes
/// (a plane is at most a few thousand values, so each lane sums a few
/// hundred) widened to f64 at the end. Sixteen independent lanes vectorise,
/// where one running f64 sum is a chain of dependent adds.
fn shifted_sums(xs: &[f32], shift: f32) -> (f64, f64) {
    let (mut s, mut s2) = ([0.0f32; LANES], [0.0f32; LANES]);
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let v = c[l] - shift;
            s[l] += v;
            s2[l] += v * v;
        }
    }
    let (mut a, mut b) = (0.0f64, 0.0f64);
    for l in 0..LANES {
        a += s[l] as f64;
        b += s2[l] as f64;
    }
    for &v in tail {
        let v = (v - shift) as f64;
        a += v;
        b += v * v;
    }
    (a, b)
}

/// `(Σ dy, Σ dy·(x − mean))` over one plane, in lanes as [`shifted_sums`].
fn grad_sums(x: &[f32], dy: &[f32], mean: f32) -> (f64, f64) {
    let (mut s, mut s2) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (xc, dc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
    let (xt, dt) = (xc.remainder(), dc.remainder());
    for (xv, dv) in xc.zip(dc) {
        for l in 0..LANES {
            s[l] += dv[l];
            s2[l] += dv[l] * (xv[l] - mean);
        }
    }
    let (mut a, mut b) = (0.0f64, 0.0f64);
    for l in 0..LANES {
        a += s[l] as f64;
        b += s2[l] as f64;
    }
    for (&x, &d) in xt.iter().zip(dt) {
        a += d as f64;
        b += d as f64 * (x - mean) as f64;
    }
    (a, b)
}

/// Per-channel sums of `f(plane)` over the batch, channels in parallel.
fn per_channel(
    (n, c, hw): (usize, usize, usize),
    f: impl Fn(usize, std::ops::Range<usize>) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .with_min_len(super::par::min_len(1))
        .map(|ch| {
            (0..n).fold((0.0, 0.0), |(a, b), i| {
                let o = (i * c + ch) * hw;
                let (da, db) = f(ch, o..o + hw);
                (a + da, b + db)
            })
        })
        .collect()
}

/// Per-channel (mean, biased variance). Sums are taken about the
/// channel's first value, so a large mean does not cancel the variance
/// away in E[x²] − E[x]².
fn channel_stats(dims: (usize, usize, usize), x: &[f32]) -> Vec<(f64, f64)> {
    let (n, c, hw) = dims;
    let cnt = (n * hw) as f64;
    per_channel(dims, |ch, r| shifted_sums(&x[r], x[ch * hw]))
        .into_iter()
        .enumerate()
        .map(|(ch, (s, s2))| {
            let _ = c;
            let shift = x[ch * hw] as f64;
            let m = s / cnt;
            (shift + m, (s2 / cnt - m * m).max(0.0))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub fn cpu_train(
    (n, c, hw): (usize, usize, usize),
    eps: f32,
    momentum: f32,
    (x, gamma, beta): (&[f32], &[f32], &[f32]),
    y: &mut [f32],
    mean: &mut [f32],
    invstd: &mut [f32],
    rmean: &mut [f32],
    rvar: &mut [f32],
) {
    let cnt = n * hw;
    for (ch, (m, v)) in channel_stats((n, c, hw), x).into_iter().enumerate() {
        mean[ch] = m as f32;
        invstd[ch] = (1.0 / (v + eps as f64).sqrt()) as f32;
        let unbiased = if cnt > 1 {
            v * cnt as f64 / (cnt - 1) as f64
        } else {
            v
        };
        rmean[ch] = (1.0 - momentum) * rmean[ch] + momentum * m as f32;
        rvar[ch] = (1.0 - momentum) * rvar[ch] + momentum * unbiased as f32;
    }
    normalize(n, c, hw, x, gamma, beta, mean, invstd, y);
}

#[allow(clippy::too_many_arguments)]
pub fn cpu_infer(
    (n, c, hw): (usize, usize, usize),
    eps: f32,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    rmean: &[f32],
    rvar: &[f32],
    y: &mut [f32],
) {
    let invstd: Vec<f32> = rvar.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    normalize(n, c, hw, x, gamma, beta, rmean, &invstd, y);
}

#[allow(clippy::too_many_arguments)]
fn normalize(
    n: usize,
    c: usize,
    hw: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    y: &mut [f32],
) {
    y.par_chunks_mut(hw.max(1))
        .with_min_len(super::par::min_len(super::par::planes_per_task(hw)))
        .enumerate()
        .for_each(|(plane, yp)| {
            let ch = plane % c;
            let xp = &x[plane * hw..(plane + 1) * hw];
            let a = gamma[ch] * invstd[ch];
            let b = beta[ch] - mean[ch] * a;
            for (y, &x) in yp.iter_mut().zip(xp) {
                *y = x * a + b;
            }
        });
    let _ = n;
}

/// dx = γ·invstd/M · (M·dy − Σdy − x̂·Σ(dy·x̂)), dγ = Σ dy·x̂, dβ = Σ dy.
#[allow(clippy::too_many_arguments)]
pub fn cpu_backward(
    (n, c, hw): (usize, usize, usize),
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let m = (n * hw) as f32;
    let sums = per_channel((n, c, hw), |ch, r| {
        grad_sums(&x[r.clone()], &dy[r], mean[ch])
    });
    for (ch, (sdy, sdyxm)) in sums.into_iter().enumerate() {
        dbeta[ch] = sdy as f32;
        dgamma[ch] = (sdyxm * invstd[ch] as f64) as f32;
    }
    dx.par_chunks_mut(hw.max(1))
        .with_min_len(super::par::min_len(super::par::planes_per_task(hw)))
        .enumerate()
        .for_each(|(plane, dxp)| {
            let ch = plane % c;
            let o = plane * hw;
            // dx = k·(M·dy − Σdy − (x − mean)·invstd·Σdy·x̂)
            //    = a·dy + b·(x − mean) + d, per channel constants.
            let k = gamma[ch] * invstd[ch] / m;
            let a = k * m;
            let b = -k * invstd[ch] * dgamma[ch];
            let d = -k * dbeta[ch];
            let mu = mean[ch];
            for ((g, &x), &dy) in dxp.iter_mut().zip(&x[o..o + hw]).zip(&dy[o..o + hw]) {
                *g = a * dy + b * (x - mu) + d;
            }
        });
}
