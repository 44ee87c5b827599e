//! CPU kernels of `ops::batchnorm`.

use super::isa;
use crate::ops::Activation;
use rayon::prelude::*;

/// What a fused training forward does after normalising:
/// `y = act(bn(x) [+ residual])`.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub residual: Option<&'a [f32]>,
    pub act: Option<Activation>,
}

/// The gradient reaching the batch norm: `dy`, or `act'(saved)·dy` when
/// the activation's backward is fused in.
#[derive(Clone, Copy)]
pub struct Incoming<'a> {
    pub dy: &'a [f32],
    pub act: Option<(Activation, &'a [f32])>,
}

impl Incoming<'_> {
    /// Elements `r` of the gradient, computed into `buf` when fused.
    fn get<'b>(&'b self, r: std::ops::Range<usize>, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let Some((a, saved)) = self.act else {
            return &self.dy[r];
        };
        buf.clear();
        let pairs = saved[r.clone()].iter().zip(&self.dy[r]);
        // Matched outside the loop so that relu's loop vectorises.
        match a {
            Activation::Relu => buf.extend(pairs.map(|(&s, &d)| Activation::Relu.backward(s, d))),
            _ => buf.extend(pairs.map(|(&s, &d)| a.backward(s, d))),
        }
        buf
    }
}

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

    /// Adds one plane's lane sums into the running lanes.
    fn add_lanes(&mut self, (s, s2): Lanes, n: usize) {
        for l in 0..LANES {
            self.s[l] += s[l];
            self.s2[l] += s2[l];
        }
        self.counted(n);
    }

    /// `(Σ v − shift, Σ (v − shift)²)`. Pieces of [`FLUSH`] elements (a
    /// multiple of [`LANES`]), so only the last has a remainder.
    fn add_shifted(&mut self, xs: &[f32], shift: f32) {
        for xs in xs.chunks(FLUSH) {
            for &v in xs.chunks_exact(LANES).remainder() {
                let v = (v - shift) as f64;
                self.a += v;
                self.b += v * v;
            }
            self.add_lanes(shifted_lanes(xs, shift), xs.len());
        }
    }

    /// `(Σ dy, Σ dy·(x − mean))`, in pieces as above.
    fn add_grad(&mut self, x: &[f32], dy: &[f32], mean: f32) {
        for (x, dy) in x.chunks(FLUSH).zip(dy.chunks(FLUSH)) {
            let (xr, dr) = (
                x.chunks_exact(LANES).remainder(),
                dy.chunks_exact(LANES).remainder(),
            );
            for (&x, &d) in xr.iter().zip(dr) {
                self.a += d as f64;
                self.b += d as f64 * (x - mean) as f64;
            }
            self.add_lanes(grad_lanes(x, dy, mean), x.len());
        }
    }

    fn total(mut self) -> (f64, f64) {
        self.flush();
        (self.a, self.b)
    }
}

type Lanes = ([f32; LANES], [f32; LANES]);

isa::vectorized! {
    /// Lane sums of `(v − shift, (v − shift)²)` over the whole chunks of `xs`.
    /// Fixed-size lanes in locals, compiled per instruction set, so they
    /// become vector registers (through `&mut self` they stayed scalar).
    fn shifted_lanes(xs: &[f32], shift: f32) -> Lanes {
        let (mut s, mut s2) = ([0.0f32; LANES], [0.0f32; LANES]);
        for c in xs.chunks_exact(LANES) {
            let c: &[f32; LANES] = c.try_into().expect("exact chunk");
            for l in 0..LANES {
                let v = c[l] - shift;
                s[l] += v;
                s2[l] += v * v;
            }
        }
        (s, s2)
    }
}

isa::vectorized! {
    /// Lane sums of `(dy, dy·(x − mean))` over the whole chunks.
    fn grad_lanes(x: &[f32], dy: &[f32], mean: f32) -> Lanes {
        let (mut s, mut s2) = ([0.0f32; LANES], [0.0f32; LANES]);
        for (xc, dc) in x.chunks_exact(LANES).zip(dy.chunks_exact(LANES)) {
            let xc: &[f32; LANES] = xc.try_into().expect("exact chunk");
            let dc: &[f32; LANES] = dc.try_into().expect("exact chunk");
            for l in 0..LANES {
                s[l] += dc[l];
                s2[l] += dc[l] * (xc[l] - mean);
            }
        }
        (s, s2)
    }
}

/// Per-channel sums over the batch's planes, channels in parallel.
fn per_channel(
    (n, c, hw): (usize, usize, usize),
    f: impl Fn(usize, std::ops::Range<usize>, &mut Sums, &mut Vec<f32>) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .with_min_len(super::par::min_len(1))
        .map(|ch| {
            let (mut sums, mut buf) = (Sums::new(), Vec::new());
            for i in 0..n {
                let o = (i * c + ch) * hw;
                f(ch, o..o + hw, &mut sums, &mut buf);
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
    per_channel(dims, |ch, r, sums, _| sums.add_shifted(&x[r], x[ch * hw]))
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
    epilogue: Epilogue,
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
    normalize((n, c, hw), x, gamma, beta, mean, invstd, epilogue, y);
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
    normalize(
        (n, c, hw),
        x,
        gamma,
        beta,
        rmean,
        &invstd,
        Epilogue::default(),
        y,
    );
}

isa::vectorized! {
    /// `y = a·x + b`.
    fn affine(y: &mut [f32], x: &[f32], a: f32, b: f32) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * a + b;
        }
    }
}

isa::vectorized! {
    /// `y = a·x + b + r`.
    fn affine_residual(y: &mut [f32], x: &[f32], r: &[f32], a: f32, b: f32) {
        for ((y, &x), &r) in y.iter_mut().zip(x).zip(r) {
            *y = x * a + b + r;
        }
    }
}

isa::vectorized! {
    /// `dx = a·dy + b·(x − mean) + d`.
    fn grad_plane(dx: &mut [f32], x: &[f32], dy: &[f32], coeffs: (f32, f32, f32, f32)) {
        let (a, b, d, mean) = coeffs;
        for ((g, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            *g = a * dy + b * (x - mean) + d;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn normalize(
    (_, c, hw): (usize, usize, usize),
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    epilogue: Epilogue,
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
            match epilogue.residual {
                Some(r) => affine_residual(yp, xp, &r[plane * hw..(plane + 1) * hw], a, b),
                None => affine(yp, xp, a, b),
            }
            // The plane is still in L1.
            if let Some(act) = epilogue.act {
                super::activation::cpu_forward_inplace(act, yp);
            }
        });
}

/// dx = γ·invstd/M · (M·dy − Σdy − x̂·Σ(dy·x̂)), dγ = Σ dy·x̂, dβ = Σ dy.
#[allow(clippy::too_many_arguments)]
pub fn cpu_backward(
    (n, c, hw): (usize, usize, usize),
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    dy: Incoming,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let m = (n * hw) as f32;
    let sums = per_channel((n, c, hw), |ch, r, sums, buf| {
        sums.add_grad(&x[r.clone()], dy.get(r, buf), mean[ch])
    });
    for (ch, (sdy, sdyxm)) in sums.into_iter().enumerate() {
        dbeta[ch] = sdy as f32;
        dgamma[ch] = (sdyxm * invstd[ch] as f64) as f32;
    }
    dx.par_chunks_mut(hw.max(1))
        .with_min_len(super::par::min_len(super::par::planes_per_task(hw)))
        .enumerate()
        .for_each_init(Vec::new, |buf, (plane, dxp)| {
            let ch = plane % c;
            let o = plane * hw;
            // dx = k·(M·dy − Σdy − (x − mean)·invstd·Σdy·x̂)
            //    = a·dy + b·(x − mean) + d, per channel constants.
            let k = gamma[ch] * invstd[ch] / m;
            let a = k * m;
            let b = -k * invstd[ch] * dgamma[ch];
            let d = -k * dbeta[ch];
            grad_plane(
                dxp,
                &x[o..o + hw],
                dy.get(o..o + hw, buf),
                (a, b, d, mean[ch]),
            );
        });
}
