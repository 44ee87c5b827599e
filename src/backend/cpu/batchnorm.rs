//! CPU kernels of `ops::batchnorm`.

use rayon::prelude::*;

const LANES: usize = 16;

/// Elements summed in the f32 lanes before they are added into the f64
/// totals: each lane then sums at most 256 values.
const FLUSH: usize = 4096;

/// Two sums over many planes: 16 independent f32 lanes (they vectorise,
/// where one running f64 sum is a chain of dependent adds), flushed into
/// f64 every [`FLUSH`] elements, so a lane never sums more than a few
/// hundred values whatever the plane size.
struct Sums {
    s: [f32; LANES],
    s2: [f32; LANES],
    since: usize,
    a: f64,
    b: f64,
}

impl Sums {
    fn new() -> Self {
        Sums {
            s: [0.0; LANES],
            s2: [0.0; LANES],
            since: 0,
            a: 0.0,
            b: 0.0,
        }
    }

    fn counted(&mut self, n: usize) {
        self.since += n;
        if self.since >= FLUSH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        for l in 0..LANES {
            self.a += self.s[l] as f64;
            self.b += self.s2[l] as f64;
        }
        self.s = [0.0; LANES];
        self.s2 = [0.0; LANES];
        self.since = 0;
    }

    /// `(Σ v − shift, Σ (v − shift)²)`.
    fn add_shifted(&mut self, xs: &[f32], shift: f32) {
        let chunks = xs.chunks_exact(LANES);
        for &v in chunks.remainder() {
            let v = (v - shift) as f64;
            self.a += v;
            self.b += v * v;
        }
        for c in chunks {
            for ((s, s2), &v) in self.s.iter_mut().zip(&mut self.s2).zip(c) {
                let v = v - shift;
                *s += v;
                *s2 += v * v;
            }
        }
        self.counted(xs.len());
    }

    /// `(Σ dy, Σ dy·(x − mean))`.
    fn add_grad(&mut self, x: &[f32], dy: &[f32], mean: f32) {
        let (xc, dc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
        for (&x, &d) in xc.remainder().iter().zip(dc.remainder()) {
            self.a += d as f64;
            self.b += d as f64 * (x - mean) as f64;
        }
        for (xv, dv) in xc.zip(dc) {
            for l in 0..LANES {
                self.s[l] += dv[l];
                self.s2[l] += dv[l] * (xv[l] - mean);
            }
        }
        self.counted(x.len());
    }

    fn total(mut self) -> (f64, f64) {
        self.flush();
        (self.a, self.b)
    }
}

/// Per-channel sums over the batch's planes, channels in parallel.
fn per_channel(
    (n, c, hw): (usize, usize, usize),
    f: impl Fn(usize, std::ops::Range<usize>, &mut Sums) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .with_min_len(super::par::min_len(1))
        .map(|ch| {
            let mut sums = Sums::new();
            for i in 0..n {
                let o = (i * c + ch) * hw;
                f(ch, o..o + hw, &mut sums);
            }
            sums.total()
        })
        .collect()
}

/// Per-channel (mean, biased variance). Sums are taken about the
/// channel's first value, so a large mean does not cancel the variance
/// away in E[x²] − E[x]².
fn channel_stats(dims: (usize, usize, usize), x: &[f32]) -> Vec<(f64, f64)> {
    let (n, c, hw) = dims;
    let cnt = (n * hw) as f64;
    per_channel(dims, |ch, r, sums| sums.add_shifted(&x[r], x[ch * hw]))
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
    let sums = per_channel((n, c, hw), |ch, r, sums| {
        sums.add_grad(&x[r.clone()], &dy[r], mean[ch])
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
