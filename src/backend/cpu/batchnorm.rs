//! CPU kernels of `ops::batchnorm`.

use rayon::prelude::*;

/// Per-channel (mean, biased variance) in f64 for accuracy.
fn channel_stats(n: usize, c: usize, hw: usize, x: &[f32], ch: usize) -> (f64, f64) {
    let (mut s, mut s2) = (0.0f64, 0.0f64);
    for i in 0..n {
        for &v in &x[(i * c + ch) * hw..(i * c + ch + 1) * hw] {
            s += v as f64;
            s2 += (v as f64) * (v as f64);
        }
    }
    let cnt = (n * hw) as f64;
    let mean = s / cnt;
    (mean, (s2 / cnt - mean * mean).max(0.0))
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
    for ch in 0..c {
        let (m, v) = channel_stats(n, c, hw, x, ch);
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
        .with_min_len(super::par::min_len(1))
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
    for ch in 0..c {
        let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
        for i in 0..n {
            let o = (i * c + ch) * hw;
            for j in 0..hw {
                let xh = (x[o + j] - mean[ch]) * invstd[ch];
                sdy += dy[o + j] as f64;
                sdyx += (dy[o + j] * xh) as f64;
            }
        }
        dgamma[ch] = sdyx as f32;
        dbeta[ch] = sdy as f32;
        let k = gamma[ch] * invstd[ch] / m;
        let (sdy, sdyx) = (sdy as f32, sdyx as f32);
        for i in 0..n {
            let o = (i * c + ch) * hw;
            for j in 0..hw {
                let xh = (x[o + j] - mean[ch]) * invstd[ch];
                dx[o + j] = k * (m * dy[o + j] - sdy - xh * sdyx);
            }
        }
    }
}
