//! Weight gradient of stride-1 convolutions with no im2col: windowed dot
//! products.
//!
//! With the input zero-padded into rows `wp = w + 2·pw` apart (the layout of
//! `conv2d_small`), tap `(c, ki, kj)` of output column `q = oy·wp + ox` reads
//! the padded image at `offs[(c, ki, kj)] + q`. So
//! `dW[co, (c, ki, kj)] = Σ_q dy_wide[co, q] · src[offs + q]`, where
//! `dy_wide` is `dy` spread onto the same columns with zeros in the junk
//! ones (`ox >= ow`). Every weight is a dot product of a `dy` row with a
//! window of the image read in place: [`dot_windows`] runs register tiles of
//! `dy` rows × windows, each accumulator kept in a vector register across
//! all the columns and images of a pass and reduced to a scalar once.
//!
//! The `im2col` + `gemm` path ran the 16→16 3×3 layer of a ResNet on 28×28
//! images at about 43 GFLOP/s on one AVX-512 core: its reduction dimension
//! is cut into ~256-column tiles, each a separate GEMM call with its own
//! packing and a copy of the tile. Here the copies are one padded image and
//! one spread `dy` per image.
//!
//! Determinism: the batch is cut into [`CHUNKS`] (at most) image ranges fixed
//! by the shape alone; each chunk sums its images in order into a partial,
//! and the partials are added in chunk order, so the bits never depend on the
//! thread count.

use super::isa;
use super::small_gemm::padded;
use crate::ops::conv2d::Conv2dGeom;
use rayon::prelude::*;
use std::cell::Cell;

thread_local! {
    /// One pass's padded images and spread `dy`, per worker thread, with
    /// the layout they were zeroed for.
    static PASS: Cell<(Vec<f32>, LayoutKey)> = const { Cell::new((Vec::new(), [0; 9])) };
    /// The chunk partials of one call, on the calling thread.
    static PARTIALS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Image ranges summed separately (then in order): enough for any thread
/// count this runs on, few enough that the partials stay small.
const CHUNKS: usize = 16;

/// Floats of padded images and spread `dy` per pass: several images per
/// pass amortise a tile's final reductions, while a pass stays in L2.
const PASS_FLOATS: usize = 1 << 16;

/// The junk columns (`ox >= ow`, and the rounding to whole vectors) may
/// add at most this ratio (numerator, denominator) of the output pixels;
/// beyond it the `im2col` path wins.
const MAX_WASTE: (usize, usize) = (3, 2);

/// Images with fewer columns than this go to the `im2col` path: on the
/// ResNet-20 layers (one AVX-512 core) 28×28 ran 1.6x faster here, 14×14
/// the same, 7×7 2x slower (a tile's set-up and final reductions are paid
/// per image).
const MIN_COLS: usize = 256;

/// Does [`grad_weight`] handle `g` (output `oh × ow`)?
pub fn applies(g: &Conv2dGeom, (oh, ow): (usize, usize)) -> bool {
    let wp = g.w + 2 * g.pad.1;
    let np = padded((oh - 1) * wp + ow);
    g.stride == (1, 1) && np >= MIN_COLS && np * MAX_WASTE.1 <= oh * ow * MAX_WASTE.0
}

/// `dw = ∂L/∂w` (overwritten) for a stride-1 `g`; shapes already checked.
pub fn grad_weight(
    g: &Conv2dGeom,
    (oh, ow): (usize, usize),
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    debug_assert!(g.stride == (1, 1));
    let l = Layout::new(g, (oh, ow));
    let wlen = g.c_out * l.offs.len();
    let chunks = g.n.clamp(1, CHUNKS);
    let mut parts = PARTIALS.take();
    parts.clear();
    parts.resize(chunks * wlen, 0.0);
    parts
        .par_chunks_mut(wlen)
        .with_min_len(super::par::min_len(1))
        .enumerate()
        .for_each(|(ci, part)| {
            let imgs = ci * g.n / chunks..(ci + 1) * g.n / chunks;
            l.chunk(g, x, dy, imgs, part);
        });
    let (acc, rest) = parts.split_at_mut(wlen);
    for part in rest.chunks_exact(wlen) {
        for (a, p) in acc.iter_mut().zip(part) {
            *a += p;
        }
    }
    dw.copy_from_slice(acc);
    PARTIALS.set(parts);
}

/// What fixes where a pass buffer's pixels and zeros are (padding, tail,
/// junk columns): `c_in, h, w, ph, pw, c_out, oh, ow` and images per pass.
type LayoutKey = [usize; 9];

/// The padded layout of one geometry.
struct Layout {
    hp: usize,
    wp: usize,
    oh: usize,
    ow: usize,
    /// Columns computed per image (whole vectors).
    np: usize,
    /// Floats per padded image, with the zero tail the last windows read.
    src_img: usize,
    /// Window offsets, in the weight's `(c, ki, kj)` order.
    offs: Vec<usize>,
    /// Images per pass.
    per_pass: usize,
}

impl Layout {
    fn new(g: &Conv2dGeom, (oh, ow): (usize, usize)) -> Self {
        let (ph, pw) = g.pad;
        let (dh, dw) = g.dilation;
        let (hp, wp) = (g.h + 2 * ph, g.w + 2 * pw);
        let q_len = (oh - 1) * wp + ow;
        let np = padded(q_len);
        // The last window ends at the padded image's end plus the rounding.
        let src_img = g.c_in * hp * wp + (np - q_len);
        let mut offs = Vec::with_capacity(g.k());
        for c in 0..g.c_in {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    offs.push(c * hp * wp + ki * dh * wp + kj * dw);
                }
            }
        }
        let per_img = src_img + g.c_out * np;
        Layout {
            hp,
            wp,
            oh,
            ow,
            np,
            src_img,
            offs,
            per_pass: (PASS_FLOATS / per_img).max(1),
        }
    }

    /// Adds images `imgs` into `part` (`[c_out, K]`, zeroed by the caller),
    /// pass by pass.
    fn chunk(
        &self,
        g: &Conv2dGeom,
        x: &[f32],
        dy: &[f32],
        imgs: std::ops::Range<usize>,
        part: &mut [f32],
    ) {
        let (ph, pw) = g.pad;
        let (x_img, y_img) = (g.c_in * g.h * g.w, g.c_out * self.oh * self.ow);
        let dy_img = g.c_out * self.np;
        let (mut buf, mut key) = PASS.take();
        let len = self.per_pass * (self.src_img + dy_img);
        // Zeros stay in the padding, the tail and the junk columns: only
        // pixels are written below, so a buffer last zeroed for this same
        // layout is reused as it is.
        let want = [
            g.c_in,
            g.h,
            g.w,
            ph,
            pw,
            g.c_out,
            self.oh,
            self.ow,
            self.per_pass,
        ];
        if key != want || buf.len() != len {
            buf.clear();
            buf.resize(len, 0.0);
            key = want;
        }
        let (src, dyw) = buf.split_at_mut(self.per_pass * self.src_img);
        let mut i = imgs.start;
        while i < imgs.end {
            let n = self.per_pass.min(imgs.end - i);
            for m in 0..n {
                let xi = &x[(i + m) * x_img..][..x_img];
                let si = &mut src[m * self.src_img..];
                for (c, plane) in xi.chunks_exact(g.h * g.w).enumerate() {
                    for (r, row) in plane.chunks_exact(g.w).enumerate() {
                        let at = c * self.hp * self.wp + (r + ph) * self.wp + pw;
                        si[at..at + g.w].copy_from_slice(row);
                    }
                }
                let yi = &dy[(i + m) * y_img..][..y_img];
                let di = &mut dyw[m * dy_img..];
                for (co, plane) in yi.chunks_exact(self.oh * self.ow).enumerate() {
                    for (r, row) in plane.chunks_exact(self.ow).enumerate() {
                        let at = co * self.np + r * self.wp;
                        di[at..at + self.ow].copy_from_slice(row);
                    }
                }
            }
            dot_windows(
                &Windows {
                    m: g.c_out,
                    np: self.np,
                    a: dyw,
                    a_img: dy_img,
                    b: src,
                    b_img: self.src_img,
                    offs: &self.offs,
                    imgs: n,
                },
                part,
            );
            i += n;
        }
        PASS.set((buf, key));
    }
}

/// `c[i·K + kk] += Σ_{img < imgs} Σ_{j < np} a[img·a_img + i·np + j] ·
/// b[img·b_img + offs[kk] + j]` for `i < m`, `kk < K = offs.len()`.
struct Windows<'a> {
    m: usize,
    /// Columns, a whole number of vectors ([`padded`]).
    np: usize,
    a: &'a [f32],
    a_img: usize,
    b: &'a [f32],
    b_img: usize,
    offs: &'a [usize],
    imgs: usize,
}

/// Runs `w` into `c` on the widest vector instruction set the CPU has.
fn dot_windows(w: &Windows, c: &mut [f32]) {
    let k = w.offs.len();
    if w.m == 0 || k == 0 || w.imgs == 0 {
        return;
    }
    assert!(w.np == padded(w.np) && c.len() >= w.m * k, "dot_windows: c");
    let last = w.imgs - 1;
    assert!(w.a.len() >= last * w.a_img + w.m * w.np, "dot_windows: a");
    let reach = w.offs.iter().max().map_or(0, |&o| o + w.np);
    assert!(w.b.len() >= last * w.b_img + reach, "dot_windows: b");
    isa::dispatch(Run { w, c });
}

struct Run<'a, 'b> {
    w: &'a Windows<'b>,
    c: &'a mut [f32],
}

impl pulp::WithSimd for Run<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        // R rows × T windows of accumulators, plus R + 1 operands, within
        // the register file (32 vectors on AVX-512, 16 on AVX2/NEON).
        if S::REGISTER_COUNT >= 32 {
            self.tiles::<S, 4, 6>(simd)
        } else {
            // 3 x 4: 12 accumulators, 3 rows and a window; 7 loads per 12
            // FMAs against 6 per 8 at 2 x 4 (conv bwd N64 32->64 on AVX2:
            // 38.9-42.7 ms against 40.0-42.6, within this VM's noise).
            self.tiles::<S, 3, 4>(simd)
        }
    }
}

impl Run<'_, '_> {
    #[inline(always)]
    fn tiles<S: pulp::Simd, const R: usize, const T: usize>(mut self, simd: S) {
        let k = self.w.offs.len();
        for i0 in (0..self.w.m).step_by(R) {
            for t0 in (0..k).step_by(T) {
                self.tile::<S, R, T>(simd, i0, t0);
            }
        }
    }

    /// Rows `i0..i0 + R` × windows `t0..t0 + T`. Past the last row or
    /// window the tile repeats the last one and does not store it.
    #[inline(always)]
    fn tile<S: pulp::Simd, const R: usize, const T: usize>(
        &mut self,
        simd: S,
        i0: usize,
        t0: usize,
    ) {
        let w = self.w;
        let k = w.offs.len();
        let nv = w.np / S::F32_LANES;
        let rows: [usize; R] = std::array::from_fn(|r| (i0 + r).min(w.m - 1) * w.np);
        let wins: [usize; T] = std::array::from_fn(|t| w.offs[(t0 + t).min(k - 1)]);
        let mut acc = [[simd.splat_f32s(0.0); T]; R];
        for img in 0..w.imgs {
            let (a, b) = (&w.a[img * w.a_img..], &w.b[img * w.b_img..]);
            let av: [&[S::f32s]; R] =
                std::array::from_fn(|r| &S::as_simd_f32s(&a[rows[r]..rows[r] + w.np]).0[..nv]);
            let bv: [&[S::f32s]; T] =
                std::array::from_fn(|t| &S::as_simd_f32s(&b[wins[t]..wins[t] + w.np]).0[..nv]);
            for j in 0..nv {
                let x: [S::f32s; R] = std::array::from_fn(|r| av[r][j]);
                for t in 0..T {
                    let y = bv[t][j];
                    for r in 0..R {
                        acc[r][t] = simd.mul_add_f32s(x[r], y, acc[r][t]);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(w.m - i0) {
            let row = &mut self.c[(i0 + r) * k..][..k];
            for (t, &v) in acc.iter().enumerate().take(k - t0) {
                row[t0 + t] += simd.reduce_sum_f32s(v);
            }
        }
    }
}
