//! Winograd F(2×2, 3×3) forward convolution for batches: each 2×2 block
//! of output pixels (a tile) from 16 products per channel pair instead of
//! 36, so 3×3 convolutions with enough channels and tiles do 2.25× fewer
//! multiply-adds than the implicit GEMM of `conv2d_small`.
//!
//! Per chunk of images: the input's 4×4 tile windows are transformed
//! (`V = Bᵀ d B`, stored `V[ξ][c_in][tile]`), the filters once per call
//! (`U = G g Gᵀ`, `U[ξ][c_out][c_in]`), then 16 GEMMs `M[ξ] = U[ξ] · V[ξ]`
//! ([`gemm_windows`] with one window per input channel), then each tile's
//! 2×2 outputs `Y = Aᵀ M A`, with the bias, the activation and (with a
//! fused pool) the 2×2 max pool: tiles start at even pixels, so a tile is
//! one pool window. A chunk's `V` and `M` stay in the core's L2 cache.
//!
//! Rounding differs from the direct convolution's (the transforms add and
//! halve), within f32 noise; which path a layer takes depends on its
//! geometry only, never on whether a pool is fused, so the fused and the
//! unfused pool agree bit for bit.

use super::conv2d_small::{copy_short, Epilogue};
use super::isa;
use super::pool::beats;
use super::small_gemm::{gemm_windows, padded};
use crate::ops::activation::Activation;
use crate::ops::conv2d::Conv2dGeom;
use std::cell::Cell;

/// Tiles computed at a time by the transforms' fixed-size arrays.
const L: usize = 8;

/// Tiles (GEMM columns) per chunk of images: `V` and `M` of a chunk of
/// a 32->64 layer are 16·(32 + 64)·256 floats, 1.5 MiB.
const CHUNK_TILES: usize = 48;

/// Fewest channels in and out: below them the transforms cost more than
/// the multiply-adds they save.
const MIN_CHANNELS: usize = 16;

/// Fewest tiles per call (over the batch): one image's few tiles make GEMMs
/// too narrow for whole register tiles (batch-1 inference stays direct).
const MIN_TILES: usize = 96;

thread_local! {
    static FLOATS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static OFFSETS: Cell<Vec<usize>> = const { Cell::new(Vec::new()) };
}

/// Output tiles: (rows, columns) of 2×2 blocks covering the output, or
/// with `pool` only the blocks the pool keeps (its floor).
fn tiles((oh, ow): (usize, usize), pool: bool) -> (usize, usize) {
    match pool {
        true => (oh / 2, ow / 2),
        false => (oh.div_ceil(2), ow.div_ceil(2)),
    }
}

/// Does [`forward`] take this convolution? 3×3 kernels at stride and
/// dilation 1, enough channels and tiles, and output sizes the tiles cover
/// without computing more than 4/3 of the pixels (an odd 5×5 output
/// computes 6×6: 44% more). Decided on the unpooled output, so that a
/// fused pool does not change the path.
pub fn applies(g: &Conv2dGeom, (oh, ow): (usize, usize)) -> bool {
    let (th, tw) = tiles((oh, ow), false);
    g.kh == 3
        && g.kw == 3
        && g.stride == (1, 1)
        && g.dilation == (1, 1)
        && g.c_in >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
        && g.n * th * tw >= MIN_TILES
        && 3 * (4 * th * tw) <= 4 * (oh * ow)
}

/// `y = e(conv(x, w))` for `g` (see [`applies`]), on the calling thread;
/// `(oh, ow)` is the convolution's output size, `y`'s already checked.
pub fn forward(
    g: &Conv2dGeom,
    (oh, ow): (usize, usize),
    x: &[f32],
    w: &[f32],
    e: Epilogue<'_>,
    y: &mut [f32],
) {
    debug_assert!(applies(g, (oh, ow)));
    let (th, tw) = tiles((oh, ow), e.pool);
    if th * tw == 0 || y.is_empty() {
        return;
    }
    let t = Tiles::new(th, tw);
    let (c_in, c_out) = (g.c_in, g.c_out);
    let per = (CHUNK_TILES / t.per_img).clamp(1, g.n);
    // Row stride of V and M: the chunk's tiles, the last vector's overrun,
    // whole GEMM panels.
    let ps = padded(per * t.per_img + L);
    let lens = [
        16 * c_out * c_in,
        16 * c_in * ps,
        16 * c_out * ps,
        2 * t.plane,
        4 * t.vectors,
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
    let plane = if e.pool { th * tw } else { oh * ow };
    let y_img = c_out * plane;
    for (xg, yg) in x.chunks(per * x_img).zip(y.chunks_mut(per * y_img)) {
        let n_tiles = (xg.len() / x_img) * t.per_img;
        for (i, xi) in xg.chunks_exact(x_img).enumerate() {
            for (c, xc) in xi.chunks_exact(g.h * g.w).enumerate() {
                split_rows(xc, (g.h, g.w), g.pad, t, parity);
                input_tiles(parity, t, c_in * ps, &mut v[c * ps + i * t.per_img..]);
            }
        }
        for xi in 0..16 {
            gemm_windows(
                c_out,
                n_tiles,
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
                let b = e.bias.map_or(0.0, |b| b[co]);
                let src = &m[co * ps + i * t.per_img..];
                output_tiles(src, c_out * ps, t, b, e.act, e.pool, out);
                store(out, t, (oh, ow), e.pool, dst);
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
    tw: usize,
    s: usize,
    /// GEMM columns per image, `th·s`.
    per_img: usize,
    /// Those rounded up to whole vectors of `L`.
    vectors: usize,
    /// Length of one row-parity plane of the input: rows `0..=th` of
    /// `2s`, room for the vectors' reads one row and two columns on.
    plane: usize,
}

impl Tiles {
    fn new(th: usize, tw: usize) -> Self {
        let s = tw + 1;
        let vectors = (th * s).next_multiple_of(L);
        Tiles {
            th,
            tw,
            s,
            per_img: th * s,
            vectors,
            plane: 2 * (vectors + s + L + 1),
        }
    }
}

isa::vectorized! {
    /// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` for every 3×3 filter `g = w[co][ci]`,
    /// `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`, `L` filters at a time (one at a
    /// time, the transform cost a batch-32 call of a 32->64 layer 16 us).
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
    fn input_tiles(p: &[f32], t: Tiles, stride: usize, v: &mut [f32]) {
        for q in (0..t.vectors).step_by(L) {
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
                    v[(4 * a + b) * stride + q..][..L].copy_from_slice(va);
                }
            }
        }
    }
}

isa::vectorized! {
    /// One image's output channel from its tiles' `M` (`M[ξ]`'s column `q`
    /// at `m[ξ·stride + q]`): `Y = Aᵀ M A`, `Aᵀ = [1 1 1 0; 0 1 -1 -1]`,
    /// then `act(b + Y)`, to `out[k·vectors + q]` for the tile's output
    /// `k` (row-major in the tile); with `pool` only `out[q]`, the four's
    /// maximum in that order as `conv2d_small`'s pooled epilogue takes it.
    fn output_tiles(
        m: &[f32],
        stride: usize,
        t: Tiles,
        b: f32,
        act: Option<Activation>,
        pool: bool,
        out: &mut [f32],
    ) {
        match act {
            None => outputs(m, stride, t, pool, out, |v| v + b),
            Some(Activation::Relu) => outputs(m, stride, t, pool, out, |v| {
                crate::ops::activation::relu(v + b)
            }),
            Some(a) => outputs(m, stride, t, pool, out, |v| a.forward(v + b)),
        }
    }
}

/// [`output_tiles`]' loop for one activation `f`.
#[inline(always)]
fn outputs(
    m: &[f32],
    stride: usize,
    t: Tiles,
    pool: bool,
    out: &mut [f32],
    f: impl Fn(f32) -> f32,
) {
    for q in (0..t.vectors).step_by(L) {
        let mut r = [[0.0f32; L]; 16];
        for (xi, row) in r.iter_mut().enumerate() {
            row.copy_from_slice(&m[xi * stride + q..][..L]);
        }
        // Aᵀ down each column b, then across.
        let mut s0 = [[0.0f32; L]; 4];
        let mut s1 = [[0.0f32; L]; 4];
        for b in 0..4 {
            for l in 0..L {
                s0[b][l] = r[b][l] + r[4 + b][l] + r[8 + b][l];
                s1[b][l] = r[4 + b][l] - r[8 + b][l] - r[12 + b][l];
            }
        }
        let mut y = [[0.0f32; L]; 4];
        for (k, s) in [&s0, &s1].into_iter().enumerate() {
            for l in 0..L {
                y[2 * k][l] = f(s[0][l] + s[1][l] + s[2][l]);
                y[2 * k + 1][l] = f(s[1][l] - s[2][l] - s[3][l]);
            }
        }
        if pool {
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
        } else {
            for (k, yk) in y.iter().enumerate() {
                out[k * t.vectors + q..][..L].copy_from_slice(yk);
            }
        }
    }
}

/// [`output_tiles`]' `out` into the output plane `dst`: the pooled plane
/// (`th × tw`) row by row, or each tile's 2×2 pixels, clipped to `oh × ow`.
fn store(out: &[f32], t: Tiles, (oh, ow): (usize, usize), pool: bool, dst: &mut [f32]) {
    if pool {
        for (ty, row) in dst.chunks_exact_mut(t.tw).enumerate() {
            copy_short(row, &out[ty * t.s..][..t.tw]);
        }
        return;
    }
    for r in 0..oh {
        let (ty, a) = (r / 2, r % 2);
        let (left, right) = (
            &out[(2 * a) * t.vectors + ty * t.s..],
            &out[(2 * a + 1) * t.vectors + ty * t.s..],
        );
        let row = &mut dst[r * ow..(r + 1) * ow];
        for (c, d) in row.iter_mut().enumerate() {
            *d = if c % 2 == 0 {
                left[c / 2]
            } else {
                right[c / 2]
            };
        }
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

    /// Against f64 on odd and even sizes, padded and not, pooled and not,
    /// with several images per chunk and a short last chunk.
    #[test]
    fn matches_the_f64_reference() {
        for (n, c_in, c_out, h, w, pad) in [
            (7, 16, 17, 13, 13, 0),
            (3, 19, 16, 16, 16, 1),
            (5, 16, 24, 9, 11, 1),
            (2, 17, 16, 30, 30, 0),
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
            assert!(applies(&g, (oh, ow)), "{g:?}");
            let x = random(g.x_len(), 1);
            let wt = random(g.w_len(), 2);
            let bias = random(c_out, 3);
            let want = reference(&g, &x, &wt, &bias);
            let scale = (c_in * 9) as f64;
            let mut y = vec![f32::NAN; g.n * c_out * oh * ow];
            let e = Epilogue {
                bias: Some(&bias),
                act: None,
                pool: false,
            };
            forward(&g, (oh, ow), &x, &wt, e, &mut y);
            for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                let err = (got as f64 - want).abs();
                assert!(
                    err <= 1e-5 * scale.sqrt() * (1.0 + want.abs()),
                    "{g:?} at {i}: {got} vs {want}"
                );
            }
            // Fused ReLU and pool: the unfused result's pool, bit for bit.
            let relu = Epilogue {
                bias: Some(&bias),
                act: Some(Activation::Relu),
                pool: false,
            };
            let mut full = vec![0.0f32; y.len()];
            forward(&g, (oh, ow), &x, &wt, relu, &mut full);
            let (py, px) = (oh / 2, ow / 2);
            let mut pooled = vec![f32::NAN; g.n * c_out * py * px];
            let fused = Epilogue { pool: true, ..relu };
            forward(&g, (oh, ow), &x, &wt, fused, &mut pooled);
            for (p, (plane, fp)) in pooled.chunks(py * px).zip(full.chunks(oh * ow)).enumerate() {
                for r in 0..py {
                    for c in 0..px {
                        let win = [
                            fp[2 * r * ow + 2 * c],
                            fp[2 * r * ow + 2 * c + 1],
                            fp[(2 * r + 1) * ow + 2 * c],
                            fp[(2 * r + 1) * ow + 2 * c + 1],
                        ];
                        let best = win.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        assert_eq!(
                            plane[r * px + c].to_bits(),
                            best.to_bits(),
                            "{g:?} plane {p} ({r}, {c})"
                        );
                    }
                }
            }
        }
    }
}
