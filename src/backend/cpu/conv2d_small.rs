//! Forward convolution for small batches run on one thread (batch-1
//! inference through the embedding API): an implicit GEMM with no im2col.
//!
//! The input image is copied once, zero-padded, into rows `wp = w + 2·pw`
//! apart (the "wide" layout of `conv2d_cpu`). Output pixel `(oy, ox)` is
//! then column `q = oy·wp + ox` of `y_wide[c_out, q] = W[c_out, K] · B`,
//! where row `(c, ki, kj)` of `B` is simply the padded image read from
//! offset `c·hp·wp + ki·dh·wp + kj·dw`: [`gemm_windows`] reads those windows
//! in place. Columns with `ox >= ow` are junk and dropped when `y_wide` is
//! copied into NCHW with the bias. Only stride 1 has this property.
//!
//! Scratch comes from thread-locals that grow on first use, so steady-state
//! calls do not allocate.

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

/// `y = act(conv(x, w) + bias)` for `g` (stride 1), image by image on the
/// calling thread. `(oh, ow)` is the output size, already checked.
pub fn forward(
    g: &Conv2dGeom,
    (oh, ow): (usize, usize),
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Option<Activation>,
    y: &mut [f32],
) {
    debug_assert!(applies(g));
    let (ph, pw) = g.pad;
    let (dh, dw) = g.dilation;
    let (hp, wp) = (g.h + 2 * ph, g.w + 2 * pw);
    let k = g.c_in * g.kh * g.kw;
    let q_len = (oh - 1) * wp + ow;
    let np = padded(q_len);
    // The last window ends exactly at the padded image's end plus the panel
    // rounding (see the module doc), so this much source is enough. (For
    // tiny images the junk columns can outnumber the pixels; an explicit
    // im2col there measured no faster, the copy costing what it saves.)
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
    // The padding and the tail stay zero from image to image: only the
    // interior is rewritten.
    if g.pad == (0, 0) {
        src[img_len..].fill(0.0);
    } else {
        src.fill(0.0);
    }

    let (x_img, y_img) = (g.c_in * g.h * g.w, g.c_out * oh * ow);
    for (xi, yi) in x.chunks_exact(x_img).zip(y.chunks_exact_mut(y_img)) {
        for (c, plane) in xi.chunks_exact(g.h * g.w).enumerate() {
            for (r, row) in plane.chunks_exact(g.w).enumerate() {
                let at = c * hp * wp + (r + ph) * wp + pw;
                src[at..at + g.w].copy_from_slice(row);
            }
        }
        gemm_windows(g.c_out, q_len, w, k, src, &offs, out, np);
        for (co, (plane, wide)) in yi
            .chunks_exact_mut(oh * ow)
            .zip(out.chunks_exact(np))
            .enumerate()
        {
            let b = bias.map_or(0.0, |b| b[co]);
            for (r, row) in plane.chunks_exact_mut(ow).enumerate() {
                epilogue(row, &wide[r * wp..r * wp + ow], b, act);
            }
        }
    }
    FLOATS.set(buf);
    OFFSETS.set(offs);
}

/// `dst = act(src + b)`.
#[inline]
fn epilogue(dst: &mut [f32], src: &[f32], b: f32, act: Option<Activation>) {
    match act {
        Some(Activation::Relu) => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = crate::ops::activation::relu(s + b);
            }
        }
        Some(a) => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = a.forward(s + b);
            }
        }
        None => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s + b;
            }
        }
    }
}
