//! Winograd F(2×2, 3×3) forward convolution with a fused 2×2 max pool,
//! for batches: each 2×2 block of output pixels (a tile, which is one
//! pool window) from 16 products per channel pair instead of 36, so 3×3
//! convolutions with enough channels and images do 2.25× fewer
//! multiply-adds than the implicit GEMM of `conv2d_small`.
//!
//! Per chunk (a few whole images, or one large image's band of tile
//! rows): the input's 4×4 tile windows are transformed (`V = Bᵀ d B`,
//! stored `V[ξ][c_in][tile]`), the filters once per call (`U = G g Gᵀ`,
//! `U[ξ][c_out][c_in]`), then 16 GEMMs `M[ξ] = U[ξ] · V[ξ]`
//! ([`gemm_windows`], one window per input channel), then each tile's 2×2
//! outputs `Y = Aᵀ M A` with the bias and the activation, and their
//! maximum. A chunk's `V` and `M` stay in the core's L2 cache.
//!
//! Only pooled layers take it: there the output transform ends in one
//! maximum per tile, and an odd output (the MNIST CNN's 11×11) computes
//! only the pixels the pool keeps. Measured per image at batch 32 against
//! the implicit GEMM (one AVX-512 thread): 16.3 against 22.0 µs on the
//! MNIST CNN's pooled 32->64 layer (13×13 in), 24.1 against 30.0 on the
//! CIFAR CNN's (15×15). Unpooled layers computed all four outputs of each
//! tile and stored them interleaved: slower (a ResNet's 32×32 16->16
//! "same" layer 38.5 against 21.7 µs, the CIFAR CNN's 32×32 32->64 177
//! against 153), so they stay direct. Rounding
//! differs from the direct convolution's (the transforms add and halve)
//! within f32 noise: the fused pool equals conv-then-pool up to it.

use super::conv2d_small::copy_short;
use super::isa;
use super::pool::beats;
use super::small_gemm::{gemm_windows, padded};
use crate::ops::activation::Activation;
use crate::ops::conv2d::Conv2dGeom;
use std::cell::Cell;

/// Tiles computed at a time by the transforms' fixed-size arrays.
const L: usize = 8;

/// Tiles (GEMM columns) per chunk of whole images: one MNIST image (30
/// columns) per chunk was fastest, 16.5 µs an image against 18 with two
/// and 19.3 with four (`V` and `M` of four are 0.75 MiB).
const CHUNK_TILES: usize = 48;

/// Fewest channels in and out: below them the transforms cost more than
/// the multiply-adds they save.
const MIN_CHANNELS: usize = 16;

/// Fewest tiles per call (over the batch): one image's few tiles make GEMMs
/// too narrow for whole register tiles (batch-1 inference stays direct).
const MIN_TILES: usize = 96;

/// GEMM columns per band of tile rows when one image has more than
/// [`CHUNK_TILES`]. Measured on a 32×32 32->64 layer (one AVX-512 thread,
/// per image): bands of 34 columns 176 µs (GEMMs too narrow), of 153
/// columns 151 µs, the whole 272-column image 162 µs (out of L2).
const BAND_TILES: usize = 160;

thread_local! {
    static FLOATS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static OFFSETS: Cell<Vec<usize>> = const { Cell::new(Vec::new()) };
}

/// Does [`forward_pooled`] take this convolution? A fused 2×2 max pool
/// (`pool`), 3×3 kernels at stride and dilation 1, enough channels, and
/// enough pool windows in the call for whole register tiles in the GEMMs
/// (batch-1 inference stays direct).
pub fn applies(g: &Conv2dGeom, (oh, ow): (usize, usize), pool: bool) -> bool {
    pool && g.kh == 3
        && g.kw == 3
        && g.stride == (1, 1)
        && g.dilation == (1, 1)
        && g.c_in >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
        && g.n * (oh / 2) * (ow / 2) >= MIN_TILES
}

/// `y = pool(act(conv(x, w) + bias))` for `g` (see [`applies`]), on the
/// calling thread: `(oh, ow)` is the convolution's output size, `y` the
/// pooled output (`n × c_out × oh/2 × ow/2`), its length already checked.
pub fn forward_pooled(
    g: &Conv2dGeom,
    (oh, ow): (usize, usize),
    [x, w]: [&[f32]; 2],
    (bias, act): (Option<&[f32]>, Option<Activation>),
    y: &mut [f32],
) {
    debug_assert!(applies(g, (oh, ow), true));
    let (th, tw) = (oh / 2, ow / 2);
    if th * tw == 0 || y.is_empty() {
        return;
    }
    let (c_in, c_out) = (g.c_in, g.c_out);
    // A chunk: several whole images, or one image's band of tile rows
    // (a 32x32 image's V and M alone are 1.7 MiB at 32->64 channels).
    let s_cols = tw + 1;
    let band = match th * s_cols > CHUNK_TILES {
        true => (BAND_TILES / s_cols).clamp(1, th),
        false => th,
    };
    let t = Tiles::new(th, tw, band);
    let per = match band < th {
        true => 1,
        false => (CHUNK_TILES / t.per_img).clamp(1, g.n),
    };
    // Row stride of V and M: the chunk's tiles, the last vector's overrun,
    // whole GEMM panels.
    let ps = padded(per * band * t.s + L);
    let lens = [
        16 * c_out * c_in,
        16 * c_in * ps,
        16 * c_out * ps,
        per * c_in * 2 * t.plane,
        t.vectors,
    ];
    let mut buf = FLOATS.take();
    if buf.len() < lens.iter().sum() {
        buf.resize(lens.iter().sum(), 0.0);
    }
    let (u, rest) = buf.split_at_mut(lens[0]);
    let (v, rest) = rest.split_at_mut(lens[1]);
    let (m, rest) = rest.split_at_mut(lens[2]);
    let (parity, rest) = rest.split_at_mut(lens[3]);
    let out = &mut rest[..lens[4]];
    // Pixels land on the same places image after image; the rest stays 0.
    parity.fill(0.0);
    filters(w, c_out, c_in, u);
    let mut offs = OFFSETS.take();
    offs.clear();
    offs.extend((0..16 * c_in).map(|r| r * ps));

    let x_img = c_in * g.h * g.w;
    let plane = th * tw;
    let y_img = c_out * plane;
    for (xg, yg) in x.chunks(per * x_img).zip(y.chunks_mut(per * y_img)) {
        let images = xg.len() / x_img;
        for (xc, pc) in xg
            .chunks_exact(g.h * g.w)
            .zip(parity.chunks_exact_mut(2 * t.plane))
        {
            split_rows(xc, (g.h, g.w), g.pad, t, pc);
        }
        for ty0 in (0..th).step_by(band) {
            let rows = ty0..(ty0 + band).min(th);
            let cols = rows.len() * t.s;
            let qs = (ty0 * t.s, ty0 * t.s + cols);
            for (ic, pc) in parity
                .chunks_exact(2 * t.plane)
                .take(images * c_in)
                .enumerate()
            {
                let (i, c) = (ic / c_in, ic % c_in);
                input_tiles(pc, t, qs, c_in * ps, &mut v[c * ps + i * cols..]);
            }
            for xi in 0..16 {
                gemm_windows(
                    c_out,
                    images * cols,
                    &u[xi * c_out * c_in..],
                    c_in,
                    v,
                    &offs[xi * c_in..(xi + 1) * c_in],
                    &mut m[xi * c_out * ps..],
                    ps,
                );
            }
            for (i, yi) in yg.chunks_exact_mut(y_img).enumerate() {
                for (co, dst) in yi.chunks_exact_mut(plane).enumerate() {
                    let b = bias.map_or(0.0, |b| b[co]);
                    let src = &m[co * ps + i * cols..];
                    output_tiles(src, c_out * ps, cols, b, act, out);
                    for ty in rows.clone() {
                        let local = (ty - rows.start) * t.s;
                        copy_short(&mut dst[ty * tw..][..tw], &out[local..][..tw]);
                    }
                }
            }
        }
    }
    FLOATS.set(buf);
    OFFSETS.set(offs);
}

/// One image's tile grid and the flat layouts the transforms use.
///
/// Tile `(ty, tx)` is column `ty·s + tx` of the image's part of `V` and
/// `M`, with `s = tw + 1`: one unused column per tile row, so that the
/// transforms are flat vector loops with no row ends (the input rows
/// split by parity, row `2ty + j` of the tile windows is row `ty` of its
/// parity plane, or `ty + 1`: a flat shift by `s`).
#[derive(Clone, Copy)]
struct Tiles {
    th: usize,
    s: usize,
    /// GEMM columns per image, `th·s`.
    per_img: usize,
    /// A band's columns (`band·s`) rounded up to whole vectors of `L`.
    vectors: usize,
    /// Length of one row-parity plane of the input: rows `0..=th` of
    /// `2s`, room for the vectors' reads one row and two columns on.
    plane: usize,
}

impl Tiles {
    fn new(th: usize, tw: usize, band: usize) -> Self {
        let s = tw + 1;
        Tiles {
            th,
            s,
            per_img: th * s,
            vectors: (band * s).next_multiple_of(L),
            plane: 2 * (th * s + s + 2 * L + 1),
        }
    }
}

isa::vectorized! {
    /// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` for every 3×3 filter `g = w[co][ci]`,
    /// `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`, `L` filters at a time. Once per
    /// call, shared by the call's images: at batch 4 it was 6% of the time.
    fn filters(w: &[f32], c_out: usize, c_in: usize, u: &mut [f32]) {
        let count = c_out * c_in;
        for f0 in (0..count).step_by(L) {
            // Tap k of filters f0.. (the last group's missing ones zero).
            let mut g = [[0.0f32; L]; 9];
            match w.get(9 * f0..9 * (f0 + L)) {
                Some(src) => {
                    let src: &[f32; 9 * L] = src.try_into().expect("9L");
                    for (k, gk) in g.iter_mut().enumerate() {
                        for l in 0..L {
                            gk[l] = src[9 * l + k];
                        }
                    }
                }
                None => {
                    for (i, &v) in w[9 * f0..9 * count].iter().enumerate() {
                        g[i % 9][i / 9] = v;
                    }
                }
            }
            // G g (four rows of three), then each row times Gᵀ.
            let mut r = [[[0.0f32; L]; 3]; 4];
            for j in 0..3 {
                for l in 0..L {
                    let (a, b, c) = (g[j][l], g[3 + j][l], g[6 + j][l]);
                    r[0][j][l] = a;
                    r[1][j][l] = 0.5 * (a + b + c);
                    r[2][j][l] = 0.5 * (a - b + c);
                    r[3][j][l] = c;
                }
            }
            let n = L.min(count - f0);
            for (i, [a, b, c]) in r.iter().enumerate() {
                let mut out = [[0.0f32; L]; 4];
                for l in 0..L {
                    out[0][l] = a[l];
                    out[1][l] = 0.5 * (a[l] + b[l] + c[l]);
                    out[2][l] = 0.5 * (a[l] - b[l] + c[l]);
                    out[3][l] = c[l];
                }
                for (j, o) in out.iter().enumerate() {
                    let at = (4 * i + j) * count + f0;
                    copy_short(&mut u[at..at + n], &o[..n]);
                }
            }
        }
    }
}

/// The zero-padded input plane `x` (`h × w`) split by the parity of the
/// padded row: padded row `pr` to plane `pr % 2`, row `pr / 2`, rows `2s`
/// apart. Only the pixels the tiles read are written, on places the
/// caller zeroed once.
fn split_rows(
    x: &[f32],
    (h, w): (usize, usize),
    (ph, pw): (usize, usize),
    t: Tiles,
    out: &mut [f32],
) {
    let rows = 2 * t.th + 2;
    let w_used = w.min((2 * t.s).saturating_sub(pw));
    if w_used == 0 {
        return;
    }
    for (r, src) in x
        .chunks_exact(w)
        .enumerate()
        .take(rows.saturating_sub(ph).min(h))
    {
        let pr = r + ph;
        let at = (pr % 2) * t.plane + (pr / 2) * 2 * t.s + pw;
        copy_short(&mut out[at..at + w_used], &src[..w_used]);
    }
}

isa::vectorized! {
    /// `V = Bᵀ d B` for every tile of one image's input channel (its
    /// parity planes `p`), `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`:
    /// `V[ξ]`'s tile column `q` to `v[ξ·stride + q]`, `L` columns at a time
    /// (the last vector's overrun lands on the next image's columns,
    /// rewritten after, or the rows' slack).
    fn input_tiles(p: &[f32], t: Tiles, qs: (usize, usize), stride: usize, v: &mut [f32]) {
        for q in (qs.0..qs.1).step_by(L) {
            // u[j][b]: tile window row j (padded row 2ty + j: parity j % 2,
            // one plane row on for j >= 2) across, Bᵀ's row b of its four
            // columns (even, odd, even, odd from column 2tx).
            let mut u = [[[0.0f32; L]; 4]; 4];
            for (j, uj) in u.iter_mut().enumerate() {
                let at = (j % 2) * t.plane + 2 * q + (j / 2) * 2 * t.s;
                let d: &[f32; 2 * L + 2] = p[at..at + 2 * L + 2].try_into().expect("2L + 2");
                for l in 0..L {
                    let (e0, o0, e1, o1) = (d[2 * l], d[2 * l + 1], d[2 * l + 2], d[2 * l + 3]);
                    uj[0][l] = e0 - e1;
                    uj[1][l] = o0 + e1;
                    uj[2][l] = e1 - o0;
                    uj[3][l] = o0 - o1;
                }
            }
            // Then down the columns.
            for b in 0..4 {
                let (u0, u1, u2, u3) = (u[0][b], u[1][b], u[2][b], u[3][b]);
                let mut vb = [[0.0f32; L]; 4];
                for l in 0..L {
                    vb[0][l] = u0[l] - u2[l];
                    vb[1][l] = u1[l] + u2[l];
                    vb[2][l] = u2[l] - u1[l];
                    vb[3][l] = u1[l] - u3[l];
                }
                for (a, va) in vb.iter().enumerate() {
                    v[(4 * a + b) * stride + q - qs.0..][..L].copy_from_slice(va);
                }
            }
        }
    }
}

isa::vectorized! {
    /// One output channel's pooled values from its tiles' `M` (`M[ξ]`'s
    /// column `q` at `m[ξ·stride + q]`, `cols` of them): `Y = Aᵀ M A`,
    /// `Aᵀ = [1 1 1 0; 0 1 -1 -1]`, then `act(b + Y)`, then the four's
    /// maximum in row-major order as `conv2d_small`'s pooled epilogue
    /// takes it (the first maximum, or the first NaN), to `out[q]`.
    fn output_tiles(
        m: &[f32],
        stride: usize,
        cols: usize,
        b: f32,
        act: Option<Activation>,
        out: &mut [f32],
    ) {
        match act {
            None => outputs(m, stride, cols, out, |v| v + b),
            Some(Activation::Relu) => outputs(m, stride, cols, out, |v| {
                crate::ops::activation::relu(v + b)
            }),
            Some(a) => outputs(m, stride, cols, out, |v| a.forward(v + b)),
        }
    }
}

/// [`output_tiles`]' loop for one activation `f`.
#[inline(always)]
fn outputs(m: &[f32], stride: usize, cols: usize, out: &mut [f32], f: impl Fn(f32) -> f32) {
    for q in (0..cols).step_by(L) {
        // Aᵀ down each column b (its four rows read in place), then across.
        let row = |xi: usize| -> &[f32; L] { m[xi * stride + q..][..L].try_into().expect("L") };
        let mut s0 = [[0.0f32; L]; 4];
        let mut s1 = [[0.0f32; L]; 4];
        for b in 0..4 {
            let (r0, r1, r2, r3) = (row(b), row(4 + b), row(8 + b), row(12 + b));
            for l in 0..L {
                s0[b][l] = r0[l] + r1[l] + r2[l];
                s1[b][l] = r1[l] - r2[l] - r3[l];
            }
        }
        let mut y = [[0.0f32; L]; 4];
        for (k, s) in [&s0, &s1].into_iter().enumerate() {
            for l in 0..L {
                y[2 * k][l] = f(s[0][l] + s[1][l] + s[2][l]);
                y[2 * k + 1][l] = f(s[1][l] - s[2][l] - s[3][l]);
            }
        }
        let mut best = y[0];
        for yk in &y[1..] {
            for l in 0..L {
                best[l] = if beats(yk[l], best[l]) {
                    yk[l]
                } else {
                    best[l]
                };
            }
        }
        out[q..q + L].copy_from_slice(&best);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct correlation in f64.
    fn reference(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f64> {
        let (oh, ow) = (g.h + 2 * g.pad.0 - 2, g.w + 2 * g.pad.1 - 2);
        let mut y = vec![0.0f64; g.n * g.c_out * oh * ow];
        for n in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = bias[co] as f64;
                        for ci in 0..g.c_in {
                            for ki in 0..3 {
                                for kj in 0..3 {
                                    let (r, c) = (
                                        (oy + ki) as isize - g.pad.0 as isize,
                                        (ox + kj) as isize - g.pad.1 as isize,
                                    );
                                    if r < 0 || c < 0 || r >= g.h as isize || c >= g.w as isize {
                                        continue;
                                    }
                                    let xv = x
                                        [((n * g.c_in + ci) * g.h + r as usize) * g.w + c as usize];
                                    s += xv as f64
                                        * w[((co * g.c_in + ci) * 3 + ki) * 3 + kj] as f64;
                                }
                            }
                        }
                        y[((n * g.c_out + co) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Against f64 (the convolution, ReLU, then the pool) on odd and even
    /// sizes, padded and not, several images per chunk with a short last
    /// one, and bands of tile rows; the pool of NaNs keeps the NaN.
    #[test]
    fn matches_the_f64_reference() {
        for (n, c_in, c_out, h, w, pad) in [
            (7, 16, 17, 13, 13, 0),
            (3, 19, 16, 16, 16, 1),
            (9, 16, 24, 9, 11, 1),
            (2, 17, 16, 36, 30, 0),
            (40, 16, 16, 6, 6, 0),
        ] {
            let g = Conv2dGeom {
                n,
                c_in,
                h,
                w,
                c_out,
                kh: 3,
                kw: 3,
                stride: (1, 1),
                pad: (pad, pad),
                dilation: (1, 1),
            };
            let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
            assert!(applies(&g, (oh, ow), true), "{g:?}");
            let mut x = random(g.x_len(), 1);
            x[5] = f32::NAN;
            let wt = random(g.w_len(), 2);
            let bias = random(c_out, 3);
            let want = reference(&g, &x, &wt, &bias);
            let tol = 1e-5 * ((c_in * 9) as f64).sqrt();
            let (py, px) = (oh / 2, ow / 2);
            let mut y = vec![0.0f32; g.n * c_out * py * px];
            let epilogue = (Some(&bias[..]), Some(Activation::Relu));
            forward_pooled(&g, (oh, ow), [&x, &wt], epilogue, &mut y);
            for (p, (plane, fp)) in y.chunks(py * px).zip(want.chunks(oh * ow)).enumerate() {
                for r in 0..py {
                    for c in 0..px {
                        let at = |dr: usize, dc: usize| fp[(2 * r + dr) * ow + 2 * c + dc];
                        let win = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                        let got = plane[r * px + c] as f64;
                        if win.iter().any(|v| v.is_nan()) {
                            assert!(got.is_nan(), "{g:?} plane {p} ({r}, {c}): {got}");
                            continue;
                        }
                        let best = win.iter().fold(0.0f64, |m, &v| m.max(v));
                        assert!(
                            (got - best).abs() <= tol * (1.0 + best.abs()),
                            "{g:?} plane {p} ({r}, {c}): {got} vs {best}"
                        );
                    }
                }
            }
        }
    }
}
