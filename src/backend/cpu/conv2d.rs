//! CPU 2-D convolution kernels: forward, grad-input, grad-weight, grad-bias.
//!
//! Layouts are PyTorch's: activations NCHW, weights OIHW, all f32, contiguous
//! and row-major. Every kernel overwrites its output.
//!
//! # Method
//!
//! Stride-1 forward convolutions go to the implicit GEMM of
//! `conv2d_small` (groups of images over the pool, or the calling thread
//! alone); what follows is every other case: strided forwards, the
//! backward kernels, and a stride-1 batch smaller than the thread count.
//!
//! Each convolution is lowered to GEMMs over an im2col matrix `col[K, T]`
//! (`K = c_in·kh·kw`, rows ordered `(c, ki, kj)` so that the OIHW weight is
//! already the `[c_out, K]` left operand) whose `T` columns are the output
//! pixels of one *tile* (see `Plan` for the details):
//!
//! * large images are cut into tiles of ~256 columns (a multiple of 64), so
//!   `col` stays in L2 and the `gemm` crate runs its full-width kernels (it
//!   loses ~15% once an operand outgrows L2, ~5% on ragged widths);
//! * small images are batched, several whole images per tile, so the GEMMs
//!   are not too thin to run at full speed (MNIST-sized layers);
//! * tiny `K` (a first layer on 1–3 channels) runs one GEMM per image that
//!   writes `y` directly: there the copies would cost as much as the GEMM.
//!
//! Stride-1 convolutions use a "wide" layout: the input is zero-padded once
//! per image with rows `w + pw` apart, so every im2col row is a single
//! `memcpy` of the padded image and col2im a single vector add, at the cost
//! of computing (and dropping) a few junk columns per output row. Other
//! convolutions gather pixels through a tap-index table built once per call.
//!
//! * forward: `y_tile[c_out, T] = W[c_out, K] · col[K, T]`, then copied into
//!   NCHW with the bias added.
//! * grad-input: `dcol[K, T] = Wᵀ[K, c_out] · dy_tile[c_out, T]`, then col2im
//!   adds `dcol` into `dx` (zeroed first).
//! * grad-weight: `dWᵀ[K, c_out] += col[K, T] · dy_tileᵀ`, accumulated per
//!   chunk of images and then reduced; computing the transpose is ~1.7x
//!   faster with the `gemm` crate than `dW = dy · colᵀ` for these shapes.
//!
//! 1×1, stride-1, unpadded convolutions need no im2col: the input image is
//! the GEMM operand itself.
//!
//! Work is parallel over *groups* of whole images with rayon (each group owns
//! a disjoint slice of the output, so no synchronisation is needed) and every
//! GEMM inside a rayon task runs single-threaded. Only when there are fewer
//! groups than threads (e.g. batch-1 inference) are the groups walked
//! sequentially with multithreaded GEMMs instead.
//!
//! # Scratch memory
//!
//! No heap allocation happens in the steady state (the `gemm` crate itself
//! may still allocate a little per call): im2col / tile buffers come from a
//! thread-local `Vec<f32>` per thread that grows on first use and is kept for
//! the life of the thread (its size is that of the largest tile seen, about
//! `(K + c_out)·256` floats plus one padded image group: ~0.5 MB for the
//! 32→64 3×3 layer). Buffers shared by one call's tasks (the transposed
//! weight, the grad-weight partial sums, the tap table) come from
//! thread-locals of the calling thread. Buffers are moved out of their
//! thread-local while in use, so a re-entrant call on the same thread (rayon
//! work stealing) gets a fresh buffer instead of a `RefCell` panic.
//!
//! # Determinism and non-finite values
//!
//! `conv2d_grad_weight` partitions the batch into chunks that depend only on
//! the geometry (never on the thread count or scheduling), sums each chunk
//! sequentially and adds the chunk partials in index order, so repeated calls
//! give bitwise-identical results, whatever the rayon pool size (on one
//! machine: `gemm` picks its kernels by CPU). The other kernels compute each
//! output element in a single task and are deterministic trivially.
//!
//! The wide layout's junk columns are multiplied by zeros in the backward
//! passes, so with an infinite or NaN weight (grad-input) or input pixel
//! (grad-weight) a NaN can also reach a few elements that a direct
//! evaluation would leave finite. Finite data is unaffected.

use super::conv2d_small::Epilogue;
use super::matmul::{sgemm, Threads};
use crate::ops::activation::Activation;
use rayon::prelude::*;
use std::cell::Cell;
use std::ops::Range;
use std::thread::LocalKey;

use super::conv2d_layout::{
    col2im_add, crop, gather_dy, im2col, pad_source, scatter_out, transpose,
};
pub use crate::ops::conv2d::Conv2dGeom;

impl Conv2dGeom {
    /// GEMM reduction length: rows of the im2col matrix.
    pub(super) fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// 1×1, stride 1, no padding: the input image is its own im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == (1, 1)
            && self.pad == (0, 0)
            && self.dilation == (1, 1)
    }

    /// Panics unless the buffers have exactly the geometry's sizes; a
    /// mismatch is a bug in the caller, which has validated the graph.
    fn check(&self, what: &str, x: usize, w: usize, y: usize) -> (usize, usize) {
        let hw = self.checked_out_hw();
        assert_eq!(x, self.x_len(), "{what}: x/dx length for {self:?}");
        assert_eq!(w, self.w_len(), "{what}: w/dw length for {self:?}");
        assert_eq!(y, self.y_len(), "{what}: y/dy length for {self:?}");
        hw
    }
}

// ---------------------------------------------------------------------------
// Scratch buffers

thread_local! {
    /// Per-thread im2col / tile buffers of the rayon tasks.
    static TASK_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Per-call buffers shared by all tasks, owned by the calling thread.
    static CALL_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The full-size output of a pooled convolution that is not stride 1.
    static POOL_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Per-call im2col index table (strided layout), owned by the calling thread.
    static INDEX_SCRATCH: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of the thread-local buffer `key`, growing it if
/// needed. Contents are unspecified on entry. The buffer is moved out while
/// `f` runs, so a nested use on the same thread just sees an empty buffer
/// (and allocates) rather than panicking.
fn with_scratch<T: Copy + Default, R>(
    key: &'static LocalKey<Cell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut buf = key.take();
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    let r = f(&mut buf[..len]);
    key.set(buf);
    r
}

// ---------------------------------------------------------------------------
// Tiling plan

/// Preferred number of GEMM columns per tile: the measured sweet spot of the
/// `gemm` crate for conv-sized `m` and `k` (128..512 all run within 5% of
/// peak; 1024 loses 15% as the operand falls out of L2).
const TARGET_COLS: usize = 256;

/// Tiles cut out of one image have a multiple of this many columns (except
/// the last): `gemm` then neither repacks the im2col operand nor runs its
/// slower remainder kernels (worth ~5%).
const COL_ALIGN: usize = 64;

/// Convolutions with at most this many GEMM rows `K` (e.g. a 3×3 on a single
/// channel) do so little arithmetic per output that copying tiles into `y`
/// would cost as much as the GEMM: they run one GEMM per whole image,
/// writing `y` directly, as long as the im2col matrix stays below
/// `SMALL_K_MAX_COL` floats.
const SMALL_K: usize = 64;
const SMALL_K_MAX_COL: usize = 1 << 19;

/// The wide layout is used while its rows are at most this ratio
/// (numerator, denominator) of the output rows: beyond that the wasted
/// GEMM columns cost more than the strided im2col's copying.
const WIDE_MAX_WASTE: (usize, usize) = (5, 4);

/// `conv2d_grad_weight` plans its tiles as if for this many threads, so its
/// summation order (and result bits) never depend on the actual thread count.
const WGRAD_THREAD_HINT: usize = 4;

/// Upper bound on the number of grad-weight chunk partials.
const WGRAD_MAX_CHUNKS: usize = 16;

/// Upper bound, in floats, on the memory of the grad-weight chunk partials.
const WGRAD_PARTIALS_BUDGET: usize = 1 << 22;

/// How the batch is cut into tiles, and the tiles' column layout.
///
/// The GEMM columns of one image are indexed by `q = oh·row_w + j`,
/// `q < q_len = (oh_count - 1)·row_w + ow`; column `q` is output pixel
/// `(oh, j)` if `j < ow`, otherwise junk (computed, then dropped).
///
/// Groups of `ipg` whole images are the unit of parallelism (each owns a
/// disjoint slice of every output). A tile is a range of `q` across all the
/// group's images (a tile's columns are `(image, q)`): the whole image for
/// small images, several ranges of ~`TARGET_COLS` columns for large ones
/// (then `ipg == 1`).
///
/// In the *wide* layout (stride 1) the input is read from a zero-padded copy
/// whose rows are `rw = max(w + pw, ow)` floats apart: each row is followed by
/// `rw - w >= pw` zeros, which serve both as its right padding and as the
/// next row's left padding, and the copy starts with `pw` zeros. Pixel
/// `(c, ih, iw)`, `-pw <= iw < w + pw`, of image `m` is then at flat index
/// `pw + m·c_in·hp·rw + c·hp·rw + (ih + ph)·rw + iw` (with `hp = h + 2·ph`).
/// With `row_w = rw`, im2col row `(c, ki, kj)` of an image is one contiguous
/// run of the copy, starting at `c·hp·rw + ki·dh·rw + kj·dw + q0`: im2col and
/// col2im become plain `memcpy`s and vector adds, at the price of
/// `rw - ow` junk columns per row. Without padding the input itself is
/// that copy. Otherwise (strided convs, or images so small that the junk
/// would cost more) `row_w == ow` and im2col gathers single pixels through
/// `taps`, a table built once per call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan<'a> {
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) wide: bool,
    /// Wide layout: padded input rows `h + 2·ph`, and the row stride.
    pub(super) hp: usize,
    pub(super) rw: usize,
    /// GEMM columns per output row.
    pub(super) row_w: usize,
    /// Columns `q` of one image.
    pub(super) q_len: usize,
    /// Images per group.
    pub(super) ipg: usize,
    /// Columns `q` per tile.
    pub(super) tile_q: usize,
    /// Strided layout: `taps[(ki·kw + kj)·q_len + q]` is the index within an
    /// input plane of the pixel tap `(ki, kj)` reads for column `q`, or
    /// `u32::MAX` in the padding. Empty for the wide layout.
    pub(super) taps: &'a [u32],
}

/// Marks a padding tap in [`Plan::taps`] (any index past the plane would do).
pub(super) const PAD_TAP: u32 = u32::MAX;

/// Runs `f` with the plan for `g` (see [`Plan::new`]), its tap table built in
/// thread-local scratch when the layout needs one.
fn with_plan<R>(
    g: &Conv2dGeom,
    out_hw: (usize, usize),
    threads: usize,
    f: impl FnOnce(&Plan) -> R,
) -> R {
    let p = Plan::new(g, out_hw, threads);
    if p.wide {
        return f(&p);
    }
    with_scratch(&INDEX_SCRATCH, g.kh * g.kw * p.q_len, |taps| {
        assert!(
            g.h * g.w < PAD_TAP as usize,
            "conv2d: input plane too large"
        );
        let (sh, sw) = g.stride;
        let (ph, pw) = g.pad;
        let (dh, dw) = g.dilation;
        let mut t = taps.iter_mut();
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                // Strided layout: q runs over (oh, ow) without junk.
                for oh in 0..p.oh {
                    for ow in 0..p.ow {
                        let (ih, iw) = (oh * sh + ki * dh, ow * sw + kj * dw);
                        let inside = (ph..ph + g.h).contains(&ih) && (pw..pw + g.w).contains(&iw);
                        *t.next().expect("table has kh*kw*q_len taps") = if inside {
                            ((ih - ph) * g.w + iw - pw) as u32
                        } else {
                            PAD_TAP
                        };
                    }
                }
            }
        }
        f(&Plan { taps, ..p })
    })
}

impl Plan<'_> {
    /// The tiling for `g` (without its tap table: see [`with_plan`]). `threads`
    /// only steers how small images are grouped.
    pub(super) fn new(g: &Conv2dGeom, (oh, ow): (usize, usize), threads: usize) -> Plan<'static> {
        let (hp, rw) = (g.h + 2 * g.pad.0, (g.w + g.pad.1).max(ow));
        let small_k = g.k() <= SMALL_K && g.k() * oh * ow <= SMALL_K_MAX_COL;
        let wide = g.stride == (1, 1) && !small_k && rw * WIDE_MAX_WASTE.1 <= ow * WIDE_MAX_WASTE.0;
        let row_w = if wide { rw } else { ow };
        let q_len = (oh - 1) * row_w + ow;
        let (ipg, tile_q) = if small_k {
            (1, q_len)
        } else if q_len >= TARGET_COLS {
            // Pointwise convs use the whole image, which needs no copy.
            let tiles = if g.is_pointwise() {
                1
            } else {
                ((q_len + TARGET_COLS / 2) / TARGET_COLS).max(1)
            };
            let tile_q = q_len.div_ceil(tiles).next_multiple_of(COL_ALIGN);
            (1, tile_q.min(q_len))
        } else {
            let want = ((TARGET_COLS + q_len / 2) / q_len).max(1);
            let mut groups = g.n.div_ceil(want).max(1);
            // Round the group count up to a multiple of the thread count so
            // no thread is left with one extra group at the end.
            if groups < g.n {
                groups = groups.div_ceil(threads) * threads;
            }
            (g.n.div_ceil(groups).max(1), q_len)
        };
        Plan {
            oh,
            ow,
            wide,
            hp,
            rw,
            row_w,
            q_len,
            ipg,
            tile_q,
            taps: &[],
        }
    }

    pub(super) fn groups(&self, n: usize) -> usize {
        n.div_ceil(self.ipg)
    }

    /// Largest number of GEMM columns in one tile.
    pub(super) fn max_cols(&self) -> usize {
        self.ipg * self.tile_q
    }

    /// The `q` ranges of the tiles of one group.
    pub(super) fn tiles(&self) -> impl Iterator<Item = Range<usize>> {
        let (len, step) = (self.q_len, self.tile_q);
        (0..len).step_by(step).map(move |q| q..(q + step).min(len))
    }

    /// Is a tile of this `nimg`-image group exactly the NCHW pixels of one
    /// image, so `y`/`dy` slices serve as GEMM operands without copies?
    pub(super) fn direct(&self, nimg: usize) -> bool {
        nimg == 1 && self.tile_q == self.q_len && self.row_w == self.ow
    }

    /// Does im2col read a zero-padded copy of the input (else the input)?
    pub(super) fn padded(&self, g: &Conv2dGeom) -> bool {
        self.wide && g.pad != (0, 0)
    }

    /// Floats of one image in the wide layout.
    pub(super) fn wide_img_len(&self, g: &Conv2dGeom) -> usize {
        g.c_in * self.hp * self.rw
    }

    /// Floats of the padded wide-layout copy of `nimg` images.
    pub(super) fn padded_len(&self, g: &Conv2dGeom, nimg: usize) -> usize {
        g.pad.1 + nimg * self.wide_img_len(g)
    }

    /// Scratch floats for one group's padded input copy.
    pub(super) fn xp_len(&self, g: &Conv2dGeom) -> usize {
        if self.padded(g) {
            self.padded_len(g, self.ipg)
        } else {
            0
        }
    }

    /// The output-pixel runs of the tile columns `q`: `(offset in the
    /// tile, offset in the [oh, ow] plane, length)`. Junk columns fall
    /// between runs.
    pub(super) fn runs(&self, q: &Range<usize>) -> impl Iterator<Item = (usize, usize, usize)> {
        let (rw, ow, q) = (self.row_w, self.ow, q.clone());
        let rows = if rw == ow {
            // One run: every column is a pixel and rows abut.
            0..usize::from(!q.is_empty())
        } else {
            q.start / rw..q.end.div_ceil(rw)
        };
        rows.map(move |r| {
            if rw == ow {
                return (0, q.start, q.len());
            }
            let j0 = q.start.max(r * rw) - r * rw;
            let j1 = (q.end - r * rw).min(ow);
            (r * rw + j0 - q.start, r * ow + j0, j1.saturating_sub(j0))
        })
    }
}

/// Threading of the GEMMs given the number of parallel units: with at least
/// one unit per thread, parallelise over units; otherwise walk the units
/// sequentially and let each GEMM use all threads.
fn inner_threads(units: usize) -> Threads {
    if units >= super::par::threads() {
        Threads::Serial
    } else {
        Threads::Parallel
    }
}

/// Runs `f(out_chunk, in_chunk)` over matching chunks of an output and an
/// input, in parallel unless `threads` says the GEMMs inside are the
/// parallel part.
fn for_each_group<F>(
    out: &mut [f32],
    out_chunk: usize,
    inp: &[f32],
    in_chunk: usize,
    threads: Threads,
    f: F,
) where
    F: Fn(&mut [f32], &[f32]) + Sync + Send,
{
    match threads {
        Threads::Serial => out
            .par_chunks_mut(out_chunk)
            .zip(inp.par_chunks(in_chunk))
            .with_min_len(super::par::min_len(1))
            .for_each(|(o, i)| f(o, i)),
        Threads::Parallel => out
            .chunks_mut(out_chunk)
            .zip(inp.chunks(in_chunk))
            .for_each(|(o, i)| f(o, i)),
    }
}

// ---------------------------------------------------------------------------
// Kernels

/// `y = conv(x, w) + bias`. `x` is `[n, c_in, h, w]`, `w` `[c_out, c_in, kh,
/// kw]`, `bias` `[c_out]`, `y` `[n, c_out, oh, ow]` (overwritten).
///
/// Panics if the kernel does not fit or a length does not match `g`.
pub fn conv2d_forward(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    conv2d_forward_act(g, x, w, bias, None, y)
}

/// [`conv2d_forward`] followed by an activation (a fused epilogue).
pub fn conv2d_forward_act(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Option<Activation>,
    y: &mut [f32],
) {
    let e = Epilogue {
        bias,
        act,
        pool: false,
    };
    conv2d_forward_with(g, x, w, e, y)
}

/// [`conv2d_forward`] with the epilogue `e`. With `e.pool`, `y` is the 2×2,
/// stride-2 max pool of the output (the first NaN of a window wins, as in
/// [`super::pool::maxpool2d_forward`]), `[n, c_out, oh / 2, ow / 2]`:
/// stride-1 convolutions pool straight from the GEMM's output, so the
/// full-size output is never stored; others (and a single image over a
/// thread pool) go through a per-thread buffer.
pub fn conv2d_forward_with(g: &Conv2dGeom, x: &[f32], w: &[f32], e: Epilogue<'_>, y: &mut [f32]) {
    let (oh, ow) = match e.pool {
        false => g.check("conv2d_forward", x.len(), w.len(), y.len()),
        true => {
            let (oh, ow) = g.checked_out_hw();
            let what = "conv2d_forward (pooled)";
            assert_eq!(x.len(), g.x_len(), "{what}: x length for {g:?}");
            assert_eq!(w.len(), g.w_len(), "{what}: w length for {g:?}");
            let pooled = g.n * g.c_out * (oh / 2) * (ow / 2);
            assert_eq!(y.len(), pooled, "{what}: y length for {g:?}");
            (oh, ow)
        }
    };
    // Stride-1 convolutions run as an implicit GEMM (`conv2d_small`: no
    // im2col, no packing, no allocation), image by image: on this thread
    // when it is the only one (a predictor's), else over the pool when
    // there are images enough for every thread. Measured against the
    // im2col path below: -3% on the 32->64 CIFAR layer at batch 64, -30% on
    // the 3->32 first layer, -7% on the whole CNN train step, and half the
    // batch-1 latency. A pooled output is pooled from the GEMM's rows.
    let threads = super::par::threads();
    if super::conv2d_small::applies(g) && !y.is_empty() && !x.is_empty() {
        if threads == 1 {
            return super::conv2d_small::forward(g, (oh, ow), x, w, e, y);
        }
        if g.n >= threads {
            // Groups of images (about four per thread, for balance) share
            // each task's setup: tap offsets and the zeroed padded copy.
            let per = g.n.div_ceil(4 * threads);
            let x_img = g.c_in * g.h * g.w;
            let y_img = y.len() / g.n;
            y.par_chunks_mut(per * y_img)
                .zip(x.par_chunks(per * x_img))
                .for_each(|(yg, xg)| {
                    let group = Conv2dGeom {
                        n: yg.len() / y_img,
                        ..*g
                    };
                    super::conv2d_small::forward(&group, (oh, ow), xg, w, e, yg)
                });
            return;
        }
    }
    if e.pool {
        // Elsewhere the full-size output comes first, from the path below
        // (so the pooled result is the unfused one, bit for bit), then the
        // pool.
        if y.is_empty() {
            return;
        }
        let plain = Epilogue { pool: false, ..e };
        return with_scratch(&POOL_SCRATCH, g.y_len(), |full| {
            conv2d_forward_with(g, x, w, plain, full);
            let (ph, pw) = (oh / 2, ow / 2);
            for (dst, src) in y.chunks_exact_mut(ph * pw).zip(full.chunks_exact(oh * ow)) {
                // -0.0 adds nothing, not even to -0.0.
                super::conv2d_small::epilogue(dst, pw, src, ow, -0.0, None, true);
            }
        });
    }
    conv2d_forward_plain(g, (oh, ow), x, w, e.bias, y);
    if let Some(a) = e.act {
        super::activation::cpu_forward_inplace(a, y);
    }
}

fn conv2d_forward_plain(
    g: &Conv2dGeom,
    (oh, ow): (usize, usize),
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    if let Some(b) = bias {
        assert_eq!(b.len(), g.c_out, "conv2d_forward: bias length for {g:?}");
    }
    if x.is_empty() {
        // No input channels or pixels: every tap is padding, y is the bias.
        match bias {
            Some(b) => y
                .chunks_exact_mut(oh * ow)
                .enumerate()
                .for_each(|(i, row)| row.fill(b[i % g.c_out])),
            None => y.fill(0.0),
        }
        return;
    }
    if y.is_empty() {
        return;
    }
    let (x_img, y_img) = (g.c_in * g.h * g.w, g.c_out * oh * ow);
    with_plan(g, (oh, ow), super::par::threads(), |p| {
        let threads = inner_threads(p.groups(g.n));
        for_each_group(y, p.ipg * y_img, x, p.ipg * x_img, threads, |yg, xg| {
            forward_group(g, p, xg, w, bias, yg, threads)
        });
    });
}

fn forward_group(
    g: &Conv2dGeom,
    p: &Plan,
    xg: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    yg: &mut [f32],
    threads: Threads,
) {
    let (k, ohw) = (g.k(), p.oh * p.ow);
    let nimg = yg.len() / (g.c_out * ohw);
    let direct = p.direct(nimg);
    // A direct GEMM writes into y, onto the preloaded bias.
    let preload_bias = |yg: &mut [f32]| {
        if let Some(b) = bias {
            for (row, &bv) in yg.chunks_exact_mut(ohw).zip(b) {
                row.fill(bv);
            }
        }
    };
    if direct && g.is_pointwise() {
        preload_bias(yg);
        sgemm(
            g.c_out,
            ohw,
            k,
            w,
            false,
            xg,
            false,
            yg,
            bias.is_some(),
            threads,
        );
        return;
    }
    let (xp_len, max_cols) = (p.xp_len(g), p.max_cols());
    with_scratch(&TASK_SCRATCH, xp_len + (k + g.c_out) * max_cols, |buf| {
        let (xp, buf) = buf.split_at_mut(xp_len);
        let (col, out) = buf.split_at_mut(k * max_cols);
        let src = pad_source(g, p, xg, xp);
        for q in p.tiles() {
            let cols = nimg * q.len();
            im2col(g, p, src, q.clone(), col);
            if direct {
                preload_bias(yg);
                sgemm(
                    g.c_out,
                    cols,
                    k,
                    w,
                    false,
                    col,
                    false,
                    yg,
                    bias.is_some(),
                    threads,
                );
            } else {
                sgemm(g.c_out, cols, k, w, false, col, false, out, false, threads);
                scatter_out(g, p, out, &q, bias, yg);
            }
        }
    });
}

/// For a stride-1, undilated convolution padded by at most `k − 1`, the
/// geometry of the convolution that computes its input gradient from dy.
/// Not for 1×1 convolutions, whose gradient is one plain GEMM below.
fn transposed_geom(g: &Conv2dGeom, (oh, ow): (usize, usize)) -> Option<Conv2dGeom> {
    let plain = g.stride == (1, 1) && g.dilation == (1, 1) && !g.is_pointwise();
    (plain && g.pad.0 < g.kh && g.pad.1 < g.kw).then_some(Conv2dGeom {
        n: g.n,
        c_in: g.c_out,
        h: oh,
        w: ow,
        c_out: g.c_in,
        kh: g.kh,
        kw: g.kw,
        stride: (1, 1),
        pad: (g.kh - 1 - g.pad.0, g.kw - 1 - g.pad.1),
        dilation: (1, 1),
    })
}

/// `dx = ∂L/∂x` from `dy = ∂L/∂y` (overwritten). Shapes as in
/// [`conv2d_forward`].
pub fn conv2d_grad_input(g: &Conv2dGeom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (oh, ow) = g.check("conv2d_grad_input", dx.len(), w.len(), dy.len());
    if dx.is_empty() {
        return;
    }
    if dy.is_empty() {
        // No output channels: nothing flows back.
        dx.fill(0.0);
        return;
    }
    if let Some(t) = transposed_geom(g, (oh, ow)) {
        // dx is the stride-1 convolution of dy with the flipped, transposed
        // weights, padded by k − 1 − p: the forward's implicit GEMM (no
        // im2col) runs it. 30-35% faster than the im2col GEMMs below on the
        // ResNet-20 layers (16-64 channels, 28x28-7x7).
        return with_scratch(&CALL_SCRATCH, w.len(), |wf| {
            let (kh, kw) = (g.kh, g.kw);
            for o in 0..g.c_out {
                for c in 0..g.c_in {
                    for i in 0..kh {
                        for j in 0..kw {
                            wf[((c * g.c_out + o) * kh + kh - 1 - i) * kw + kw - 1 - j] =
                                w[((o * g.c_in + c) * kh + i) * kw + j];
                        }
                    }
                }
            }
            conv2d_forward_act(&t, dy, wf, None, None, dx);
        });
    }
    let k = g.k();
    let (x_img, y_img) = (g.c_in * g.h * g.w, g.c_out * oh * ow);
    with_scratch(&CALL_SCRATCH, k * g.c_out, |wt| {
        // Wᵀ [K, c_out]: a plain left operand is ~6% faster than a transposed one.
        transpose(w, g.c_out, k, wt);
        let wt = &*wt;
        with_plan(g, (oh, ow), super::par::threads(), |p| {
            let threads = inner_threads(p.groups(g.n));
            for_each_group(dx, p.ipg * x_img, dy, p.ipg * y_img, threads, |dxg, dyg| {
                grad_input_group(g, p, wt, dyg, dxg, threads)
            });
        });
    });
}

fn grad_input_group(
    g: &Conv2dGeom,
    p: &Plan,
    wt: &[f32],
    dyg: &[f32],
    dxg: &mut [f32],
    threads: Threads,
) {
    let (k, ohw) = (g.k(), p.oh * p.ow);
    let nimg = dyg.len() / (g.c_out * ohw);
    if p.direct(nimg) && g.is_pointwise() {
        // dx is the GEMM output itself: no col2im, no zeroing.
        sgemm(k, ohw, g.c_out, wt, false, dyg, false, dxg, false, threads);
        return;
    }
    let (xp_len, max_cols) = (p.xp_len(g), p.max_cols());
    with_scratch(&TASK_SCRATCH, xp_len + (k + g.c_out) * max_cols, |buf| {
        let (dxp, buf) = buf.split_at_mut(xp_len);
        let (dcol, dyt) = buf.split_at_mut(k * max_cols);
        let mut tiles = |dst: &mut [f32]| {
            dst.fill(0.0);
            for q in p.tiles() {
                let cols = nimg * q.len();
                let b: &[f32] = if p.direct(nimg) {
                    dyg
                } else {
                    gather_dy(g, p, dyg, &q, dyt);
                    dyt
                };
                sgemm(k, cols, g.c_out, wt, false, b, false, dcol, false, threads);
                col2im_add(g, p, dcol, q, dst);
            }
        };
        if p.padded(g) {
            let dxp = &mut dxp[..p.padded_len(g, nimg)];
            tiles(dxp);
            crop(g, p, dxp, dxg);
        } else {
            tiles(dxg);
        }
    });
}

/// `dw = ∂L/∂w` from the forward input `x` and `dy` (overwritten). Shapes as
/// in [`conv2d_forward`]. Bitwise deterministic (see the module docs).
pub fn conv2d_grad_weight(g: &Conv2dGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (oh, ow) = g.check("conv2d_grad_weight", x.len(), dw.len(), dy.len());
    if dw.is_empty() {
        return;
    }
    if x.is_empty() {
        // No images (or no input pixels: every tap is padding).
        dw.fill(0.0);
        return;
    }
    if super::conv2d_wgrad::applies(g, (oh, ow)) {
        return super::conv2d_wgrad::grad_weight(g, (oh, ow), x, dy, dw);
    }
    // The plan and chunking depend on the geometry only (fixed thread hint):
    // they fix the summation order.
    with_plan(g, (oh, ow), WGRAD_THREAD_HINT, |p| {
        grad_weight_planned(g, p, x, dy, dw)
    });
}

fn grad_weight_planned(g: &Conv2dGeom, p: &Plan, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (k, ohw) = (g.k(), p.oh * p.ow);
    let (x_img, y_img) = (g.c_in * g.h * g.w, g.c_out * ohw);
    let wlen = k * g.c_out;
    let groups = p.groups(g.n);
    let chunks = groups
        .min(WGRAD_MAX_CHUNKS)
        .min((WGRAD_PARTIALS_BUDGET / wlen).max(1));
    let threads = inner_threads(chunks);

    // Chunk `ci` sums groups [ci·groups/chunks, (ci+1)·groups/chunks) into its
    // partial dWᵀ [K, c_out].
    let chunk_partial = |ci: usize, part: &mut [f32]| {
        let (g0, g1) = (ci * groups / chunks, (ci + 1) * groups / chunks);
        let (xp_len, max_cols) = (p.xp_len(g), p.max_cols());
        let mut first = true;
        with_scratch(&TASK_SCRATCH, xp_len + (k + g.c_out) * max_cols, |buf| {
            let (xp, buf) = buf.split_at_mut(xp_len);
            let (col, dyt) = buf.split_at_mut(k * max_cols);
            for gi in g0..g1 {
                let imgs = gi * p.ipg..((gi + 1) * p.ipg).min(g.n);
                let nimg = imgs.len();
                let xg = &x[imgs.start * x_img..imgs.end * x_img];
                let dyg = &dy[imgs.start * y_img..imgs.end * y_img];
                let src = pad_source(g, p, xg, xp);
                for q in p.tiles() {
                    let cols = nimg * q.len();
                    let a: &[f32] = if p.direct(nimg) && g.is_pointwise() {
                        xg
                    } else {
                        im2col(g, p, src, q.clone(), col);
                        col
                    };
                    let b: &[f32] = if p.direct(nimg) {
                        dyg
                    } else {
                        gather_dy(g, p, dyg, &q, dyt);
                        dyt
                    };
                    sgemm(k, g.c_out, cols, a, false, b, true, part, !first, threads);
                    first = false;
                }
            }
        });
    };

    with_scratch(&CALL_SCRATCH, chunks * wlen, |parts| {
        match threads {
            Threads::Serial => parts
                .par_chunks_mut(wlen)
                .with_min_len(super::par::min_len(1))
                .enumerate()
                .for_each(|(ci, part)| chunk_partial(ci, part)),
            Threads::Parallel => parts
                .chunks_mut(wlen)
                .enumerate()
                .for_each(|(ci, part)| chunk_partial(ci, part)),
        }
        // Reduce in chunk order, element-wise in parallel: each element's sum
        // order is fixed whatever the block split.
        let (acc, rest) = parts.split_at_mut(wlen);
        const BLOCK: usize = 4096;
        acc.par_chunks_mut(BLOCK)
            .enumerate()
            .with_min_len(super::par::min_len(1))
            .for_each(|(bi, blk)| {
                for part in rest.chunks_exact(wlen) {
                    for (a, b) in blk.iter_mut().zip(&part[bi * BLOCK..]) {
                        *a += *b;
                    }
                }
            });
        // dWᵀ [K, c_out] → dW [c_out, K].
        transpose(acc, k, g.c_out, dw);
    });
}

/// `db[c_out] = Σ_{n, oh, ow} dy` (overwritten), accumulated in f64.
pub fn conv2d_grad_bias(g: &Conv2dGeom, dy: &[f32], db: &mut [f32]) {
    let (oh, ow) = g.checked_out_hw();
    assert_eq!(dy.len(), g.y_len(), "conv2d_grad_bias: dy length for {g:?}");
    assert_eq!(db.len(), g.c_out, "conv2d_grad_bias: db length for {g:?}");
    let ohw = oh * ow;
    db.par_iter_mut()
        .enumerate()
        .with_min_len(super::par::min_len(1))
        .for_each(|(co, d)| {
            let mut sum = 0.0f64;
            for img in 0..g.n {
                sum += sum_f64(&dy[(img * g.c_out + co) * ohw..][..ohw]);
            }
            *d = sum as f32;
        });
}

/// Sum in f64 with eight independent accumulators (so it vectorises).
fn sum_f64(v: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut it = v.chunks_exact(8);
    for c in &mut it {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += f64::from(x);
        }
    }
    let tail: f64 = it.remainder().iter().map(|&x| f64::from(x)).sum();
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    use crate::backend::cpu::testing::{rand_vec_from as rand_vec, rel_err};

    /// Reference: input index read by output `o` at tap `k`, if inside.
    fn tap(o: usize, k: usize, s: usize, p: usize, d: usize, size: usize) -> Option<usize> {
        let i = (o * s + k * d) as isize - p as isize;
        (i >= 0 && (i as usize) < size).then_some(i as usize)
    }

    /// Visits every (n, co, oh, ow, ci, ki, kj, ih, iw) product of the
    /// convolution with flat indices (x, w, y): the plain definition.
    fn each_term(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = g.out_hw().unwrap();
        for n in 0..g.n {
            for co in 0..g.c_out {
                for y0 in 0..oh {
                    for x0 in 0..ow {
                        let yi = ((n * g.c_out + co) * oh + y0) * ow + x0;
                        for ci in 0..g.c_in {
                            for ki in 0..g.kh {
                                let Some(ih) = tap(y0, ki, g.stride.0, g.pad.0, g.dilation.0, g.h)
                                else {
                                    continue;
                                };
                                for kj in 0..g.kw {
                                    let Some(iw) =
                                        tap(x0, kj, g.stride.1, g.pad.1, g.dilation.1, g.w)
                                    else {
                                        continue;
                                    };
                                    let xi = ((n * g.c_in + ci) * g.h + ih) * g.w + iw;
                                    let wi = ((co * g.c_in + ci) * g.kh + ki) * g.kw + kj;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn ref_forward(g: &Conv2dGeom, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f64> {
        let (oh, ow) = g.out_hw().unwrap();
        let mut y: Vec<f64> = (0..g.y_len())
            .map(|i| f64::from(b[(i / (oh * ow)) % g.c_out]))
            .collect();
        each_term(g, |xi, wi, yi| y[yi] += f64::from(x[xi]) * f64::from(w[wi]));
        y
    }

    fn ref_grad_input(g: &Conv2dGeom, dy: &[f32], w: &[f32]) -> Vec<f64> {
        let mut dx = vec![0.0; g.x_len()];
        each_term(g, |xi, wi, yi| {
            dx[xi] += f64::from(dy[yi]) * f64::from(w[wi])
        });
        dx
    }

    fn ref_grad_weight(g: &Conv2dGeom, x: &[f32], dy: &[f32]) -> Vec<f64> {
        let mut dw = vec![0.0; g.w_len()];
        each_term(g, |xi, wi, yi| {
            dw[wi] += f64::from(dy[yi]) * f64::from(x[xi])
        });
        dw
    }

    fn ref_grad_bias(g: &Conv2dGeom, dy: &[f32]) -> Vec<f64> {
        let (oh, ow) = g.out_hw().unwrap();
        let mut db = vec![0.0; g.c_out];
        for (i, &v) in dy.iter().enumerate() {
            db[(i / (oh * ow)) % g.c_out] += f64::from(v);
        }
        db
    }

    #[allow(clippy::too_many_arguments)]
    fn geom(
        n: usize,
        c_in: usize,
        (h, w): (usize, usize),
        c_out: usize,
        (kh, kw): (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        dilation: (usize, usize),
    ) -> Conv2dGeom {
        Conv2dGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pad,
            dilation,
        }
    }

    /// Shapes covering odd sizes and every path: wide and strided layouts,
    /// with and without padding; tiles splitting rows, whole images, and
    /// multi-image groups with a ragged last group; pointwise; the batch-1
    /// path with multithreaded GEMMs.
    fn shapes() -> Vec<Conv2dGeom> {
        vec![
            geom(1, 1, (5, 5), 1, (3, 3), (1, 1), (0, 0), (1, 1)),
            geom(3, 3, (7, 5), 4, (3, 1), (2, 2), (1, 1), (1, 1)),
            geom(3, 7, (33, 33), 5, (3, 3), (1, 1), (1, 1), (1, 1)),
            geom(2, 3, (7, 7), 1, (2, 3), (1, 1), (0, 0), (2, 2)),
            geom(3, 7, (1, 1), 3, (3, 3), (1, 1), (1, 1), (1, 1)),
            geom(2, 7, (17, 17), 6, (1, 1), (1, 1), (0, 0), (1, 1)),
            geom(3, 3, (5, 7), 2, (1, 1), (1, 1), (0, 0), (1, 1)),
            geom(5, 3, (33, 7), 3, (3, 3), (2, 1), (0, 1), (2, 1)),
            geom(1, 3, (33, 33), 7, (5, 5), (2, 2), (2, 2), (1, 1)),
            geom(1, 3, (33, 5), 2, (2, 3), (1, 2), (1, 0), (1, 2)),
            geom(7, 5, (7, 7), 3, (3, 3), (1, 1), (0, 0), (1, 1)),
            geom(11, 4, (5, 5), 3, (1, 1), (2, 2), (1, 1), (1, 1)),
            geom(3, 3, (9, 17), 4, (2, 3), (1, 1), (1, 0), (2, 1)),
            geom(5, 2, (20, 20), 3, (3, 3), (1, 1), (1, 1), (2, 2)),
            geom(5, 3, (8, 9), 2, (3, 3), (1, 1), (1, 1), (1, 1)),
            geom(1, 4, (24, 24), 3, (3, 3), (1, 1), (1, 1), (1, 1)),
            geom(2, 3, (6, 10), 2, (1, 2), (1, 1), (1, 2), (1, 1)),
            geom(2, 3, (45, 45), 2, (3, 3), (2, 2), (1, 1), (1, 1)),
            geom(1, 2, (40, 30), 3, (2, 3), (2, 1), (0, 1), (1, 2)),
            // Windowed grad-weight with several passes per chunk.
            geom(20, 8, (64, 64), 5, (3, 3), (1, 1), (1, 1), (1, 1)),
        ]
    }

    #[test]
    fn out_hw_and_flops() {
        let g = geom(64, 32, (32, 32), 64, (3, 3), (1, 1), (1, 1), (1, 1));
        assert_eq!(g.out_hw(), Some((32, 32)));
        assert_eq!(g.flops_forward(), 2 * 64 * 64 * 32 * 32 * 32 * 9);
        // (input, kernel, stride, pad, dilation) -> (oh, ow) of 1x1 images.
        type Case = (
            (usize, usize),
            (usize, usize),
            (usize, usize),
            (usize, usize),
            (usize, usize),
        );
        let cases: [(Case, Option<(usize, usize)>); 5] = [
            (((5, 5), (3, 3), (2, 2), (0, 0), (2, 2)), Some((1, 1))),
            (((4, 5), (3, 3), (1, 1), (0, 0), (2, 2)), None),
            (((1, 1), (3, 3), (1, 1), (1, 1), (1, 1)), Some((1, 1))),
            (((6, 6), (2, 2), (0, 1), (0, 0), (1, 1)), None),
            (((6, 6), (0, 2), (1, 1), (0, 0), (1, 1)), None),
        ];
        for ((hw, k, s, p, d), want) in cases {
            assert_eq!(geom(1, 1, hw, 1, k, s, p, d).out_hw(), want, "{hw:?} {k:?}");
        }
        assert_eq!(
            geom(1, 1, (6, 6), 1, (2, 2), (1, 1), (0, 0), (1, 1)).flops_forward(),
            200
        );
    }

    #[test]
    fn matches_reference() {
        let mut rng = StdRng::seed_from_u64(7);
        let windowed = shapes()
            .iter()
            .filter(|g| super::super::conv2d_wgrad::applies(g, g.out_hw().unwrap()))
            .count();
        assert!(
            windowed >= 3,
            "only {windowed} shapes take the windowed grad-weight"
        );
        for g in shapes() {
            let x = rand_vec(&mut rng, g.x_len());
            let w = rand_vec(&mut rng, g.w_len());
            let b = rand_vec(&mut rng, g.c_out);
            let dy = rand_vec(&mut rng, g.y_len());

            // Outputs start as NaN: every kernel must overwrite, not accumulate.
            let mut y = vec![f32::NAN; g.y_len()];
            conv2d_forward(&g, &x, &w, Some(&b), &mut y);
            let e = rel_err(&y, &ref_forward(&g, &x, &w, &b));
            assert!(e < 1e-5, "forward {g:?}: rel err {e}");

            let zeros = vec![0.0; g.c_out];
            y.fill(f32::NAN);
            conv2d_forward(&g, &x, &w, None, &mut y);
            let e = rel_err(&y, &ref_forward(&g, &x, &w, &zeros));
            assert!(e < 1e-5, "forward (no bias) {g:?}: rel err {e}");

            let mut dx = vec![f32::NAN; g.x_len()];
            conv2d_grad_input(&g, &dy, &w, &mut dx);
            let e = rel_err(&dx, &ref_grad_input(&g, &dy, &w));
            assert!(e < 1e-5, "grad_input {g:?}: rel err {e}");

            let mut dw = vec![f32::NAN; g.w_len()];
            conv2d_grad_weight(&g, &x, &dy, &mut dw);
            let e = rel_err(&dw, &ref_grad_weight(&g, &x, &dy));
            assert!(e < 1e-5, "grad_weight {g:?}: rel err {e}");

            let mut db = vec![f32::NAN; g.c_out];
            conv2d_grad_bias(&g, &dy, &mut db);
            let e = rel_err(&db, &ref_grad_bias(&g, &dy));
            assert!(e < 1e-5, "grad_bias {g:?}: rel err {e}");
        }
    }

    /// `conv2d_forward_act` on `pool` with no activation, relu and tanh,
    /// each against `act(want)` (`want`: the float64 forward with bias).
    fn forward_every_epilogue(
        pool: &rayon::ThreadPool,
        g: &Conv2dGeom,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        want: &[f64],
    ) {
        let threads = pool.current_num_threads();
        for act in [None, Some(Activation::Relu), Some(Activation::Tanh)] {
            let mut y = vec![f32::NAN; g.y_len()];
            pool.install(|| conv2d_forward_act(g, x, w, Some(b), act, &mut y));
            let want: Vec<f64> = match act {
                None => want.to_vec(),
                Some(a) => want.iter().map(|&v| a.forward(v as f32) as f64).collect(),
            };
            let e = rel_err(&y, &want);
            assert!(
                e < 1e-5,
                "forward {g:?} {act:?}, {threads} threads: rel err {e}"
            );
        }
    }

    /// On a one-thread pool (a predictor's), stride-1 convolutions take the
    /// implicit-GEMM path of `conv2d_small`, with every activation fused.
    #[test]
    fn one_thread_path_matches_reference() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut rng = StdRng::seed_from_u64(17);
        let mut small = 0;
        for g in shapes() {
            small += usize::from(crate::backend::cpu::conv2d_small::applies(&g));
            let x = rand_vec(&mut rng, g.x_len());
            let w = rand_vec(&mut rng, g.w_len());
            let b = rand_vec(&mut rng, g.c_out);
            forward_every_epilogue(&pool, &g, &x, &w, &b, &ref_forward(&g, &x, &w, &b));
        }
        assert!(small >= 5, "only {small} shapes took the one-thread path");
    }

    /// Batch-sized MNIST layers (the small-K, wide-group and strided-group
    /// paths), under pools of several sizes: the grouping depends on the
    /// thread count.
    #[test]
    fn matches_reference_mnist_layers() {
        let mut rng = StdRng::seed_from_u64(11);
        for g in [
            geom(16, 1, (28, 28), 8, (3, 3), (1, 1), (0, 0), (1, 1)),
            geom(16, 8, (13, 13), 16, (3, 3), (1, 1), (0, 0), (1, 1)),
            geom(33, 16, (5, 5), 16, (3, 3), (1, 1), (0, 0), (1, 1)),
        ] {
            let x = rand_vec(&mut rng, g.x_len());
            let w = rand_vec(&mut rng, g.w_len());
            let dy = rand_vec(&mut rng, g.y_len());
            let want_y = ref_forward(&g, &x, &w, &vec![0.0; g.c_out]);
            let want_dx = ref_grad_input(&g, &dy, &w);
            let want_dw = ref_grad_weight(&g, &x, &dy);
            for threads in [1, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut y = vec![f32::NAN; g.y_len()];
                    conv2d_forward(&g, &x, &w, None, &mut y);
                    let e = rel_err(&y, &want_y);
                    assert!(e < 1e-5, "forward {g:?}, {threads} threads: rel err {e}");
                    let mut dx = vec![f32::NAN; g.x_len()];
                    conv2d_grad_input(&g, &dy, &w, &mut dx);
                    let e = rel_err(&dx, &want_dx);
                    assert!(e < 1e-5, "grad_input {g:?}, {threads} threads: rel err {e}");
                    let mut dw = vec![f32::NAN; g.w_len()];
                    conv2d_grad_weight(&g, &x, &dy, &mut dw);
                    let e = rel_err(&dw, &want_dw);
                    assert!(
                        e < 1e-5,
                        "grad_weight {g:?}, {threads} threads: rel err {e}"
                    );
                });
            }
        }
    }

    /// Small images placed side by side in one padded copy
    /// (`conv2d_small::side_by_side`): groups with a short last one, no
    /// padding, unequal padding, dilation, the 7×7 ResNet layer; forward
    /// with every epilogue, and grad-input (the same kernel on `dy`), on
    /// one thread and on several.
    #[test]
    fn side_by_side_images_match_reference() {
        use crate::backend::cpu::conv2d_small::side_by_side;
        let mut rng = StdRng::seed_from_u64(29);
        let mut short = 0;
        for g in [
            geom(37, 64, (7, 7), 64, (3, 3), (1, 1), (1, 1), (1, 1)),
            geom(13, 5, (5, 6), 3, (3, 3), (1, 1), (0, 0), (1, 1)),
            geom(9, 3, (6, 5), 4, (3, 3), (1, 1), (1, 2), (1, 1)),
            geom(11, 2, (9, 8), 3, (3, 3), (1, 1), (2, 2), (2, 2)),
            geom(7, 4, (14, 14), 5, (3, 3), (1, 1), (1, 1), (1, 1)),
            geom(6, 3, (4, 4), 2, (1, 1), (1, 1), (0, 0), (1, 1)),
        ] {
            let hw = g.out_hw().unwrap();
            let side = side_by_side(&g, hw);
            assert!(side > 1, "{g:?}: {side} side by side");
            short += usize::from(g.n % side != 0);
            let x = rand_vec(&mut rng, g.x_len());
            let w = rand_vec(&mut rng, g.w_len());
            let b = rand_vec(&mut rng, g.c_out);
            let dy = rand_vec(&mut rng, g.y_len());
            let want = ref_forward(&g, &x, &w, &b);
            let want_dx = ref_grad_input(&g, &dy, &w);
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                forward_every_epilogue(&pool, &g, &x, &w, &b, &want);
                let mut dx = vec![f32::NAN; g.x_len()];
                pool.install(|| conv2d_grad_input(&g, &dy, &w, &mut dx));
                let e = rel_err(&dx, &want_dx);
                assert!(e < 1e-5, "grad_input {g:?}, {threads} threads: rel err {e}");
            }
        }
        assert!(short >= 3, "only {short} shapes end with a short group");
    }

    #[test]
    fn grad_weight_is_bitwise_deterministic() {
        let mut rng = StdRng::seed_from_u64(3);
        for g in [
            geom(37, 6, (9, 9), 5, (3, 3), (1, 1), (1, 1), (1, 1)),
            geom(9, 4, (20, 20), 8, (3, 3), (1, 1), (1, 1), (1, 1)),
        ] {
            let x = rand_vec(&mut rng, g.x_len());
            let dy = rand_vec(&mut rng, g.y_len());
            let mut first = vec![0.0; g.w_len()];
            conv2d_grad_weight(&g, &x, &dy, &mut first);
            for _ in 0..3 {
                let mut again = vec![f32::NAN; g.w_len()];
                conv2d_grad_weight(&g, &x, &dy, &mut again);
                let same = first
                    .iter()
                    .zip(&again)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "grad_weight not bitwise reproducible for {g:?}");
            }
            // Same bits on a one-thread pool: the order is thread-independent.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let mut single = vec![f32::NAN; g.w_len()];
            pool.install(|| conv2d_grad_weight(&g, &x, &dy, &mut single));
            let same = first
                .iter()
                .zip(&single)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "grad_weight depends on the thread count for {g:?}");
        }
    }

    #[test]
    fn empty_batch_and_channels() {
        let g = geom(0, 3, (5, 5), 2, (3, 3), (1, 1), (1, 1), (1, 1));
        let mut dw = vec![f32::NAN; g.w_len()];
        conv2d_grad_weight(&g, &[], &[], &mut dw);
        assert!(dw.iter().all(|&v| v == 0.0));
        conv2d_forward(&g, &[], &vec![0.5; g.w_len()], None, &mut []);
        let mut db = vec![f32::NAN; 2];
        conv2d_grad_bias(&g, &[], &mut db);
        assert_eq!(db, [0.0, 0.0]);
        // c_in == 0: the output is just the bias.
        let g = geom(2, 0, (4, 4), 2, (3, 3), (1, 1), (1, 1), (1, 1));
        let mut y = vec![f32::NAN; g.y_len()];
        conv2d_forward(&g, &[], &[], Some(&[1.0, 2.0]), &mut y);
        assert!(y
            .chunks(16)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&v| v == [1.0, 2.0][i % 2])));
    }

    #[test]
    #[should_panic(expected = "kernel does not fit")]
    fn rejects_kernel_larger_than_input() {
        let g = geom(1, 1, (2, 2), 1, (3, 3), (1, 1), (0, 0), (1, 1));
        conv2d_forward(&g, &[0.0; 4], &[0.0; 9], None, &mut []);
    }
}
