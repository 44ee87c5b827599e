//! Layout transforms of the CPU convolution kernels (`conv2d.rs`):
//! zero padding, im2col / col2im for the wide and strided layouts, and the
//! gather / scatter of GEMM tiles.

use super::conv2d::Plan;
use crate::ops::conv2d::Conv2dGeom;
use std::ops::Range;

/// The image source of [`im2col`]: the group's input `xg` itself, or (padded
/// wide layout) its zero-padded copy, written into `xp` (see [`Plan`]).
pub(super) fn pad_source<'a>(
    g: &Conv2dGeom,
    p: &Plan,
    xg: &'a [f32],
    xp: &'a mut [f32],
) -> &'a [f32] {
    if !p.padded(g) {
        return xg;
    }
    let (h, w, rw) = (g.h, g.w, p.rw);
    let (ph, pw) = g.pad;
    let planes = xg.len() / (h * w);
    let xp = &mut xp[..p.padded_len(g, planes / g.c_in)];
    let (lead, body) = xp.split_at_mut(pw);
    lead.fill(0.0);
    for (src, dst) in xg.chunks_exact(h * w).zip(body.chunks_exact_mut(p.hp * rw)) {
        let (top, rest) = dst.split_at_mut(ph * rw);
        let (mid, bottom) = rest.split_at_mut(h * rw);
        top.fill(0.0);
        bottom.fill(0.0);
        for (s, d) in src.chunks_exact(w).zip(mid.chunks_exact_mut(rw)) {
            d[..w].copy_from_slice(s);
            d[w..].fill(0.0);
        }
    }
    xp
}

/// Copies the pixels of the padded wide-layout gradient `dxp` into `dxg`.
pub(super) fn crop(g: &Conv2dGeom, p: &Plan, dxp: &[f32], dxg: &mut [f32]) {
    let (h, w, rw) = (g.h, g.w, p.rw);
    let (ph, pw) = g.pad;
    let body = &dxp[pw..];
    for (src, dst) in body
        .chunks_exact(p.hp * rw)
        .zip(dxg.chunks_exact_mut(h * w))
    {
        for (s, d) in src[ph * rw..].chunks_exact(rw).zip(dst.chunks_exact_mut(w)) {
            d.copy_from_slice(&s[..w]);
        }
    }
}

/// Fills `col[K, cols]` for the tile columns `q` of the images in `src`
/// (from [`pad_source`]): column `(img, q)` of row `(c, ki, kj)` holds the
/// input pixel that kernel tap meets, 0 in the padding.
pub(super) fn im2col(g: &Conv2dGeom, p: &Plan, src: &[f32], q: Range<usize>, col: &mut [f32]) {
    if p.wide {
        im2col_wide(g, p, src, q, col);
    } else {
        im2col_strided(g, p, src, q, col);
    }
}

/// Adjoint of [`im2col`]: adds every entry of `col[K, cols]` into the pixel
/// of `dst` it was read from. `dst` is laid out like [`pad_source`]'s
/// result (padded when `p.padded(g)`).
pub(super) fn col2im_add(g: &Conv2dGeom, p: &Plan, col: &[f32], q: Range<usize>, dst: &mut [f32]) {
    if p.wide {
        col2im_wide(g, p, col, q, dst);
    } else {
        col2im_strided(g, p, col, q, dst);
    }
}

/// Calls `f(col_row, offset)` for every im2col row of a wide tile starting
/// at column `q0`, where `offset` is the flat index, within one padded
/// image, of the row's first column. Runs reaching past the end of the
/// buffer are clipped by the caller (only junk columns lie there).
pub(super) fn for_each_wide_run(
    g: &Conv2dGeom,
    p: &Plan,
    q0: usize,
    mut f: impl FnMut(usize, usize),
) {
    let plane = p.hp * p.rw;
    let (dh, dw) = g.dilation;
    let mut r = 0;
    for c in 0..g.c_in {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                f(r, c * plane + ki * dh * p.rw + kj * dw + q0);
                r += 1;
            }
        }
    }
}

pub(super) fn im2col_wide(g: &Conv2dGeom, p: &Plan, src: &[f32], q: Range<usize>, col: &mut [f32]) {
    let img_len = p.wide_img_len(g);
    let nimg = src.len() / img_len;
    let seg = q.len();
    let cols = nimg * seg;
    for_each_wide_run(g, p, q.start, |r, off| {
        let dst = &mut col[r * cols..][..cols];
        for (img, d) in dst.chunks_exact_mut(seg).enumerate() {
            let start = (img * img_len + off).min(src.len());
            let s = &src[start..(start + seg).min(src.len())];
            d[..s.len()].copy_from_slice(s);
            d[s.len()..].fill(0.0);
        }
    });
}

pub(super) fn col2im_wide(g: &Conv2dGeom, p: &Plan, col: &[f32], q: Range<usize>, dst: &mut [f32]) {
    let img_len = p.wide_img_len(g);
    let nimg = dst.len() / img_len;
    let seg = q.len();
    let cols = nimg * seg;
    let len = dst.len();
    for_each_wide_run(g, p, q.start, |r, off| {
        let src = &col[r * cols..][..cols];
        for (img, s) in src.chunks_exact(seg).enumerate() {
            let start = (img * img_len + off).min(len);
            let d = &mut dst[start..(start + seg).min(len)];
            // Junk columns carry exact zeros (their dy was zeroed), so
            // adding them to whatever pixel they alias changes nothing.
            for (d, s) in d.iter_mut().zip(s) {
                *d += *s;
            }
        }
    });
}

pub(super) fn im2col_strided(
    g: &Conv2dGeom,
    p: &Plan,
    x: &[f32],
    q: Range<usize>,
    col: &mut [f32],
) {
    let plane = g.h * g.w;
    let seg = q.len();
    let cols = x.len() / (g.c_in * plane) * seg;
    let taps = g.kh * g.kw;
    for (r, dst) in col[..g.k() * cols].chunks_exact_mut(cols).enumerate() {
        let (c, t) = (r / taps, r % taps);
        let idx = &p.taps[t * p.q_len + q.start..][..seg];
        for (img, d) in dst.chunks_exact_mut(seg).enumerate() {
            let src = &x[(img * g.c_in + c) * plane..][..plane];
            for (d, &i) in d.iter_mut().zip(idx) {
                // Padding taps index past the plane and read as 0.
                *d = src.get(i as usize).copied().unwrap_or(0.0);
            }
        }
    }
}

pub(super) fn col2im_strided(
    g: &Conv2dGeom,
    p: &Plan,
    col: &[f32],
    q: Range<usize>,
    dx: &mut [f32],
) {
    let plane = g.h * g.w;
    let seg = q.len();
    let cols = dx.len() / (g.c_in * plane) * seg;
    let taps = g.kh * g.kw;
    for (r, src) in col[..g.k() * cols].chunks_exact(cols).enumerate() {
        let (c, t) = (r / taps, r % taps);
        let idx = &p.taps[t * p.q_len + q.start..][..seg];
        for (img, s) in src.chunks_exact(seg).enumerate() {
            let dst = &mut dx[(img * g.c_in + c) * plane..][..plane];
            for (s, &i) in s.iter().zip(idx) {
                if let Some(d) = dst.get_mut(i as usize) {
                    *d += *s;
                }
            }
        }
    }
}

/// Copies the `dy` columns `q` of the group's images into `dyt[c_out, cols]`
/// in the tile's column layout, zeroing junk columns so they add nothing.
pub(super) fn gather_dy(g: &Conv2dGeom, p: &Plan, dyg: &[f32], q: &Range<usize>, dyt: &mut [f32]) {
    let ohw = p.oh * p.ow;
    let nimg = dyg.len() / (g.c_out * ohw);
    let seg = q.len();
    for (i, d) in dyt[..g.c_out * nimg * seg]
        .chunks_exact_mut(seg)
        .enumerate()
    {
        let (co, img) = (i / nimg, i % nimg);
        let s = &dyg[(img * g.c_out + co) * ohw..][..ohw];
        let mut done = 0;
        for (at, from, len) in p.runs(q) {
            d[done..at].fill(0.0);
            d[at..at + len].copy_from_slice(&s[from..from + len]);
            done = at + len;
        }
        d[done..].fill(0.0);
    }
}

/// Writes the pixel columns of the tile `out[c_out, cols]`, plus the bias,
/// into the NCHW images `yg`.
pub(super) fn scatter_out(
    g: &Conv2dGeom,
    p: &Plan,
    out: &[f32],
    q: &Range<usize>,
    bias: Option<&[f32]>,
    yg: &mut [f32],
) {
    let ohw = p.oh * p.ow;
    let nimg = yg.len() / (g.c_out * ohw);
    let seg = q.len();
    for (i, s) in out[..g.c_out * nimg * seg].chunks_exact(seg).enumerate() {
        let (co, img) = (i / nimg, i % nimg);
        let bv = bias.map_or(0.0, |b| b[co]);
        let d = &mut yg[(img * g.c_out + co) * ohw..][..ohw];
        for (at, to, len) in p.runs(q) {
            for (d, s) in d[to..to + len].iter_mut().zip(&s[at..at + len]) {
                *d = s + bv;
            }
        }
    }
}

/// `dst[cols, rows] = src[rows, cols]ᵀ`, in cache-sized blocks (a naive
/// loop's strided writes cost as much as a small layer's GEMM).
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}
