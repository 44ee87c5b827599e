//! Stride-1 forward convolution as an implicit GEMM with no im2col, on the
//! calling thread: image groups of a batch (one rayon task each) and
//! batch-1 inference through the embedding API. Grad-input runs here too,
//! as the convolution of `dy` with the flipped weights.
//!
//! The input is copied once, zero-padded, into rows `wp` apart (the "wide"
//! layout of `conv2d_cpu`). Output pixel `(oy, ox)` is then column
//! `q = oy·wp + ox` of `y_wide[c_out, q] = W[c_out, K] · B`, where row
//! `(c, ki, kj)` of `B` is simply the padded copy read from offset
//! `c·hp·wp + ki·dh·wp + kj·dw`: [`gemm_windows`] reads those windows in
//! place. Columns with `ox >= ow` are junk and dropped when `y_wide` is
//! copied into NCHW with the bias. Only stride 1 has this property. Small
//! images are placed [`side_by_side`] in one copy, so that the GEMM is wide
//! enough for whole register tiles.
//!
//! Scratch comes from thread-locals that grow on first use, so steady-state
//! calls do not allocate.

use super::isa;
use super::par::split_rows;
use super::pool::beats;
use super::small_gemm::{gemm_windows, padded};
use crate::ops::activation::Activation;
use crate::ops::conv2d::Conv2dGeom;
use std::cell::Cell;

thread_local! {
    static FLOATS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static OFFSETS: Cell<Vec<usize>> = const { Cell::new(Vec::new()) };
}

/// Can [`forward`] run this convolution?
pub fn applies(g: &Conv2dGeom) -> bool {
    g.stride == (1, 1)
}

/// Images placed side by side in one padded copy, so that one windowed
/// GEMM covers them all (see [`forward`]): enough for about this many
/// GEMM columns. One 7×7 image alone is 61 columns (4 vectors, 3 + 1 per
/// register tile, the lone vector bound by its broadcasts); eight side by
/// side are 453 (29 vectors, 49 of every 57 columns real pixels).
pub const SIDE_BY_SIDE_COLS: usize = 512;

/// How many images [`forward`] places side by side for `g`: 1 unless the
/// output rows fit between the images' shared padding columns
/// (`ow <= w + pw`, which "same" and unpadded convolutions satisfy).
pub fn side_by_side(g: &Conv2dGeom, (oh, ow): (usize, usize)) -> usize {
    let (pw, step) = (g.pad.1, g.w + g.pad.1);
    if ow > step || g.n < 2 {
        return 1;
    }
    let cols = |side: usize| (oh - 1) * (pw + side * step) + (side - 1) * step + ow;
    let mut side = 1;
    while side < g.n && cols(side + 1) <= SIDE_BY_SIDE_COLS {
        side += 1;
    }
    side
}

/// What a forward convolution does to its GEMM's output on the way to
/// `y`: adds the bias, applies the activation and (`pool`) keeps the 2×2,
/// stride-2 max pools.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Option<Activation>,
    pub pool: bool,
}

/// `y = e(conv(x, w))` for `g` (stride 1), on the calling thread: with
/// `e.pool`, the max pools taken straight from the GEMM's output rows
/// ([`epilogue`]). `(oh, ow)` is the convolution's output size,
/// `y`'s already checked.
///
/// Small images go [`side_by_side`] in groups: image `i` of a group sits
/// at column `pw + i·(w + pw)` of padded rows `wp = pw + side·(w + pw)`
/// wide, the `pw` zeros after each image being the next one's left
/// padding. A tap's window then crosses every image of the group, output
/// pixel `(oy, ox)` of image `i` being column `oy·wp + i·(w + pw) + ox`.
pub fn forward(
    g: &Conv2dGeom,
    (oh, ow): (usize, usize),
    x: &[f32],
    w: &[f32],
    e: Epilogue<'_>,
    y: &mut [f32],
) {
    debug_assert!(applies(g));
    if super::conv2d_winograd::applies(g, (oh, ow), e.pool) {
        let epilogue = (e.bias, e.act);
        return super::conv2d_winograd::forward_pooled(g, (oh, ow), [x, w], epilogue, y);
    }
    let Epilogue { bias, act, pool } = e;
    // What each output channel's plane holds, and how it is written.
    let (py, px) = if pool { (oh / 2, ow / 2) } else { (oh, ow) };
    let (ph, pw) = g.pad;
    let (dh, dw) = g.dilation;
    let side = side_by_side(g, (oh, ow));
    let whole = g.n - g.n % side;
    if whole != g.n && whole != 0 {
        // The images after the last whole group get a layout of their own:
        // a short group placed as `side` images computes the empty places
        // too (at batch 4, two groups of 3 cost 6 images).
        let (x_img, y_img) = (g.c_in * g.h * g.w, g.c_out * py * px);
        let (xa, xb) = x.split_at(whole * x_img);
        let (ya, yb) = y.split_at_mut(whole * y_img);
        for (n, x, y) in [(whole, xa, ya), (g.n - whole, xb, yb)] {
            let part = Conv2dGeom { n, ..*g };
            forward(&part, (oh, ow), x, w, e, y);
        }
        return;
    }
    let step = g.w + pw;
    let (hp, wp) = (g.h + 2 * ph, pw + side * step);
    let k = g.c_in * g.kh * g.kw;
    let q_len = (oh - 1) * wp + (side - 1) * step + ow;
    let np = padded(q_len);
    // The last window ends exactly at the padded copy's end plus the panel
    // rounding (see the module doc), so this much source is enough.
    let img_len = g.c_in * hp * wp;
    let src_len = img_len + (np - q_len);
    let out_len = g.c_out * np;

    let mut offs = OFFSETS.take();
    offs.clear();
    for c in 0..g.c_in {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                offs.push(c * hp * wp + ki * dh * wp + kj * dw);
            }
        }
    }
    let mut buf = FLOATS.take();
    if buf.len() < src_len + out_len {
        buf.resize(src_len + out_len, 0.0);
    }
    let (src, out) = buf[..src_len + out_len].split_at_mut(src_len);
    // The padding and the tail stay zero from group to group: only the
    // pixels are rewritten. (Every group is whole: see the split above.)
    if g.pad == (0, 0) {
        src[img_len..].fill(0.0);
    } else {
        src.fill(0.0);
    }

    let (x_img, y_img) = (g.c_in * g.h * g.w, g.c_out * py * px);
    let width = if pool { px } else { ow };
    let store = |y: &mut [f32], wide: &[f32], b: f32| epilogue(y, width, wide, wp, b, act, pool);
    for (xg, yg) in x.chunks(side * x_img).zip(y.chunks_mut(side * y_img)) {
        copy_in(xg, (g.c_in, g.h, g.w), (hp, wp, ph, pw, step), src);
        let src = &*src;
        if yg.len() == y_img {
            // One image: its output channels are split between the
            // predictor's team, if it has one (each member its own rows of
            // the product, then their epilogue).
            let plane = py * px;
            // Equal rows, not whole tiles: each member tiles its own rows,
            // and the last partial tile costs its live rows only (64 rows
            // on 6-row tiles: 5 tiles + 2 rows each, not 5 and 5 + 4).
            split_rows(g.c_out, 1, (&mut *out, np), (yg, plane), |rows, out, y| {
                gemm_windows(
                    rows.len(),
                    q_len,
                    &w[rows.start * k..],
                    k,
                    src,
                    &offs,
                    out,
                    np,
                );
                // The member's output from this channel on (see below).
                for (j, (co, y)) in rows.zip(y.chunks_exact_mut(plane)).enumerate() {
                    store(y, &out[j * np..], bias.map_or(0.0, |b| b[co]));
                }
            });
            continue;
        }
        gemm_windows(g.c_out, q_len, w, k, src, &offs, out, np);
        for (i, yi) in yg.chunks_exact_mut(y_img).enumerate() {
            for (co, plane) in yi.chunks_exact_mut(py * px).enumerate() {
                // The rest of the output, not only this channel's: the
                // vector reads of the last rows may run on (see
                // `pooled_rows`).
                store(
                    plane,
                    &out[co * np + i * step..],
                    bias.map_or(0.0, |b| b[co]),
                );
            }
        }
    }
    FLOATS.set(buf);
    OFFSETS.set(offs);
}

/// `dst.copy_from_slice(src)` for the short rows of small images (7 to 28
/// floats), in fixed-size moves: `copy_from_slice` calls `memcpy`, whose
/// call cost more than the copy itself (the copies of 7×7 rows took 4% of
/// a ResNet-20 train step).
#[inline]
pub(super) fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = src.len();
    assert_eq!(dst.len(), n, "copy_short: lengths");
    match n {
        0..4 => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s;
            }
        }
        4..8 => {
            // Two overlapping 4-float moves cover 4 to 8 floats.
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
        }
        _ => {
            for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
                d.copy_from_slice(s);
            }
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
    }
}

isa::vectorized! {
    /// Copies the images `xg` (`c_in` planes of `h × w`) side by side into the
    /// padded group copy `src` (planes of `hp × wp`): pixel `(c, r, x)` of
    /// image `i` to `c·hp·wp + (r + ph)·wp + pw + i·step + x`. Compiled per
    /// instruction set, as is [`epilogue`]: in the baseline build the
    /// short rows of small images were copied one float at a time.
    fn copy_in(
        xg: &[f32],
        image: (usize, usize, usize),
        padded: (usize, usize, usize, usize, usize),
        src: &mut [f32],
    ) {
        let ((c_in, h, w), (hp, wp, ph, pw, step)) = (image, padded);
        for (i, xi) in xg.chunks_exact(c_in * h * w).enumerate() {
            for (c, plane) in xi.chunks_exact(h * w).enumerate() {
                for (r, row) in plane.chunks_exact(w).enumerate() {
                    let at = c * hp * wp + (r + ph) * wp + pw + i * step;
                    copy_short(&mut src[at..at + w], row);
                }
            }
        }
    }
}

isa::vectorized! {
    /// Row `r` of `plane` (rows of `width`) = `act(b + wide[r·wp..][..width])`
    /// ([`plane_rows`]); or, with `pool`, the 2×2 max pool of `act(b +
    /// wide)` over wide rows `2r` and `2r + 1` ([`pooled_rows`]): the
    /// windows' values in row-major order, a later one taking over when it
    /// [`beats`] the best so far (the first maximum, or the first NaN), so
    /// the result is bit for bit that of the activation, then
    /// `maxpool2d_forward`.
    pub(super) fn epilogue(
        plane: &mut [f32],
        width: usize,
        wide: &[f32],
        wp: usize,
        b: f32,
        act: Option<Activation>,
        pool: bool,
    ) {
        // One loop per activation, so the common ones vectorise.
        match act {
            None => rows(pool, plane, width, wide, wp, |v| v + b),
            Some(Activation::Relu) => rows(pool, plane, width, wide, wp, |v| {
                crate::ops::activation::relu(v + b)
            }),
            Some(a) => rows(pool, plane, width, wide, wp, |v| a.forward(v + b)),
        }
    }
}

/// [`epilogue`]'s loop for one activation `f`.
#[inline(always)]
fn rows(
    pool: bool,
    plane: &mut [f32],
    width: usize,
    wide: &[f32],
    wp: usize,
    f: impl Fn(f32) -> f32,
) {
    match pool {
        true => pooled_rows(plane, width, wide, wp, f),
        false => plane_rows(plane, width, wide, wp, f),
    }
}

/// The pooled [`epilogue`]'s loop, `L` windows at a time from fixed-size
/// arrays (which the compiler vectorises, the stride-2 de-interleave
/// included), stored as whole vectors as [`plane_rows`] stores them: a
/// row of `L` or more in steps of `L`, the last one overlapping; a shorter
/// row as `L` floats, the extra ones landing on the next row, which is
/// rewritten right after (the plane's last row: only its own). Computed
/// element-wise only where a vector's reads would pass the end of `wide`:
/// callers pass `wide` up to the end of their GEMM output, not of the
/// channel, so that is the last rows of the last channel.
#[inline(always)]
fn pooled_rows(plane: &mut [f32], pw: usize, wide: &[f32], wp: usize, f: impl Fn(f32) -> f32) {
    // 16: the 13- and 15-wide pooled rows of the MNIST and CIFAR CNNs are
    // one vector each, not two (the MNIST CNN's first layer at batch 16:
    // 5.5-5.9 -> 5.3 us an image).
    const L: usize = 16;
    if pw == 0 {
        return;
    }
    let window = |t: [f32; 2], u: [f32; 2]| {
        let mut best = f(t[0]);
        for v in [f(t[1]), f(u[0]), f(u[1])] {
            best = if beats(v, best) { v } else { best };
        }
        best
    };
    // `L` windows from column `c` of pooled row `r` into `plane[at..]`
    // (as many as fit); false if `wide` is too short for a vector.
    let vector = |plane: &mut [f32], r: usize, c: usize, at: usize| -> bool {
        let (top, bot) = (2 * r * wp + 2 * c, (2 * r + 1) * wp + 2 * c);
        let (Some(t), Some(u)) = (wide.get(top..top + 2 * L), wide.get(bot..bot + 2 * L)) else {
            return false;
        };
        let t: &[f32; 2 * L] = t.try_into().expect("2L floats");
        let u: &[f32; 2 * L] = u.try_into().expect("2L floats");
        let mut d = [0.0f32; L];
        for l in 0..L {
            d[l] = window([t[2 * l], t[2 * l + 1]], [u[2 * l], u[2 * l + 1]]);
        }
        match plane.get_mut(at..at + L) {
            Some(dst) => dst.copy_from_slice(&d),
            None => {
                let n = plane.len() - at;
                copy_short(&mut plane[at..], &d[..n]);
            }
        }
        true
    };
    // Vectors per row, starting at 0, L, 2L, ..., and pw - L last
    // (overlapping); one for a short row.
    let per_row = if pw >= L { pw.div_ceil(L) } else { 1 };
    for r in 0..plane.len() / pw {
        for k in 0..per_row {
            let c = if pw >= L { (k * L).min(pw - L) } else { 0 };
            if !vector(plane, r, c, r * pw + c) {
                for c in c..pw.min(c + L) {
                    let (t, u) = (2 * r * wp + 2 * c, (2 * r + 1) * wp + 2 * c);
                    plane[r * pw + c] = window([wide[t], wide[t + 1]], [wide[u], wide[u + 1]]);
                }
            }
        }
    }
}

/// `plane` row `r` = `f(wide[r·wp..][..ow])`, 8 floats at a time: rows
/// shorter than 8 are written as 8 (the extra floats land on the next
/// row, rewritten right after; the last row exactly), longer ones in
/// chunks of 8, the last chunk overlapping. (One float at a time, this
/// epilogue and the row copies together took 12.8% of the 7×7 forward;
/// now 10.4%, `perf` on one thread.)
#[inline(always)]
fn plane_rows(plane: &mut [f32], ow: usize, wide: &[f32], wp: usize, f: impl Fn(f32) -> f32) {
    let oh = plane.len() / ow;
    let eight = |d: &mut [f32], s: &[f32]| {
        let d: &mut [f32; 8] = d.try_into().expect("8 floats");
        let s: &[f32; 8] = s.try_into().expect("8 floats");
        for (d, s) in d.iter_mut().zip(s) {
            *d = f(*s);
        }
    };
    for r in 0..oh {
        let (dst, src) = (&mut plane[r * ow..], &wide[r * wp..]);
        if ow >= 8 {
            let mut at = 0;
            while at < ow {
                let start = at.min(ow - 8);
                eight(&mut dst[start..start + 8], &src[start..start + 8]);
                at += 8;
            }
        } else if dst.len() >= 8 && src.len() >= 8 {
            eight(&mut dst[..8], &src[..8]);
        } else {
            for (d, s) in dst[..ow].iter_mut().zip(&src[..ow]) {
                *d = f(*s);
            }
        }
    }
}
