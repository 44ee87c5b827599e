//! CPU kernels of `ops::matmul`.

use super::isa;
use crate::ops::matmul::*;
use crate::tensor::Shape;

/// Threading choice for one GEMM call. Inside an outer rayon loop (e.g. conv
/// over the batch) use `Serial` so threads are not oversubscribed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    Serial,
    Parallel,
}

thread_local! {
    /// Transposed copies for [`sgemm`]'s transposed-right-operand case.
    static TRANSPOSED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Destination rows per band of [`transpose_par`]: one cache line of each
/// source row, so every source line is read once.
const BAND: usize = 16;

/// `dst[c·rows + r] (+)= src[r·cols + c]` (added when `add`): bands of
/// `BAND` destination rows in parallel.
fn transpose_par(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], add: bool) {
    use rayon::prelude::*;
    dst.par_chunks_mut(BAND * rows)
        .enumerate()
        .with_min_len(super::par::min_len(2))
        .for_each(|(band, out)| transpose_band(src, rows, cols, band * BAND, out, add));
}

isa::vectorized! {
    /// Destination rows `c0..c0 + out.len() / rows` (source columns). Each
    /// destination row segment of 16 is one strided column of the source (a
    /// gather on AVX-512), written with one contiguous store.
    fn transpose_band(src: &[f32], rows: usize, cols: usize, c0: usize, out: &mut [f32], add: bool) {
        const R: usize = 16;
        let width = out.len() / rows;
        let body = rows - rows % R;
        for r0 in (0..body).step_by(R) {
            let block = &src[r0 * cols..(r0 + R - 1) * cols + c0 + width];
            for c in 0..width {
                let seg: &mut [f32; R] =
                    (&mut out[c * rows + r0..][..R]).try_into().expect("R long");
                for (i, d) in seg.iter_mut().enumerate() {
                    let v = block[i * cols + c0 + c];
                    *d = if add { *d + v } else { v };
                }
            }
        }
        for r in body..rows {
            for c in 0..width {
                let (d, v) = (&mut out[c * rows + r], src[r * cols + c0 + c]);
                *d = if add { *d + v } else { v };
            }
        }
    }
}

/// `c[m,n] = (accumulate ? c : 0) + op(a)[m,k] · op(b)[k,n]`, row-major.
///
/// `a` is stored `[m,k]`, or `[k,m]` when `a_t`; `b` is stored `[k,n]`, or
/// `[n,k]` when `b_t`. Lengths are checked; a mismatch is a bug in the
/// caller (the graph has already validated shapes), so it panics.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: &mut [f32],
    accumulate: bool,
    threads: Threads,
) {
    assert!(a.len() >= m * k, "sgemm: a has {} < {}x{}", a.len(), m, k);
    assert!(b.len() >= k * n, "sgemm: b has {} < {}x{}", b.len(), k, n);
    assert!(c.len() >= m * n, "sgemm: c has {} < {}x{}", c.len(), m, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // A few rows against a transposed right operand (small-batch linear
    // layers): dot products beat packing, and do not allocate.
    let one_thread = threads == Threads::Serial || super::par::threads() == 1;
    if !a_t && b_t && m <= 8 && (one_thread || m * n * k <= 1 << 18) {
        super::small_gemm::gemm_nt_small(m, n, k, a, b, c, accumulate);
        return;
    }
    // A transposed right operand (PyTorch's `[out, in]` linear weight)
    // costs the `gemm` crate ~45% at the MLP's shapes (256x512x2048: 2.7 vs
    // 1.9 ms); with enough rows to amortise it, a parallel copy into the
    // plain layout first is faster. The copy lives in a thread-local buffer
    // kept for the next call.
    if b_t && threads == Threads::Parallel && !one_thread && m >= 64 && k * n >= 1 << 16 {
        let mut buf = TRANSPOSED.take();
        if !a_t && m * k + m * n < k * n {
            // Fewer elements to move the other way round: cᵀ = b · aᵀ with
            // both operands plain (aᵀ copied), then cᵀ transposed into c.
            // The MLP's forward: 0.66M elements moved instead of 1M.
            if buf.len() < m * k + n * m {
                buf.resize(m * k + n * m, 0.0);
            }
            let (at, ct) = buf[..m * k + n * m].split_at_mut(m * k);
            transpose_par(&a[..m * k], m, k, at, false);
            sgemm(n, m, k, b, false, at, false, ct, false, threads);
            transpose_par(ct, n, m, &mut c[..m * n], accumulate);
        } else {
            if buf.len() < k * n {
                buf.resize(k * n, 0.0);
            }
            transpose_par(&b[..k * n], n, k, &mut buf[..k * n], false);
            sgemm(
                m,
                n,
                k,
                a,
                a_t,
                &buf[..k * n],
                false,
                c,
                accumulate,
                threads,
            );
        }
        TRANSPOSED.set(buf);
        return;
    }
    // (column stride, row stride) of each operand in elements.
    let (a_cs, a_rs) = if a_t {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (b_cs, b_rs) = if b_t {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // Small products do not pay for thread start-up.
    let par = match threads {
        Threads::Parallel if m * n * k >= 48 * 48 * 48 && super::par::threads() > 1 => {
            gemm::Parallelism::Rayon(0)
        }
        _ => gemm::Parallelism::None,
    };
    // SAFETY: the asserts above guarantee every index the strides reach is in
    // bounds of `a`, `b` and `c`; `c` is uniquely borrowed and does not alias
    // `a` or `b` (distinct Rust borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub fn cpu_matmul(sa: &Shape, ta: bool, sb: &Shape, tb: bool, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (batch, m, k, n) = matmul_dims(sa, ta, sb, tb).expect("validated at build time");
    cpu_gemm(batch, m, n, k, ta, tb, a, b, c);
}

/// `batch` products `op(a)·op(b)` of `m×k · k×n`, row-major, contiguous.
#[allow(clippy::too_many_arguments)]
pub fn cpu_gemm(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    for i in 0..batch {
        sgemm(
            m,
            n,
            k,
            &a[i * m * k..(i + 1) * m * k],
            ta,
            &b[i * k * n..(i + 1) * k * n],
            tb,
            &mut c[i * m * n..(i + 1) * m * n],
            false,
            Threads::Parallel,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::cpu::testing::{check_gemm, rand_vec};

    /// Every path of `sgemm` (the `gemm` crate, the transposed-B copy, the
    /// small dot-product kernel; serial and parallel; accumulating or not)
    /// against an f64 product, on odd shapes.
    #[test]
    fn sgemm_paths_match_f64() {
        for (m, n, k) in [
            (70, 300, 250),
            (3, 65, 129),
            (1, 64, 1024),
            (64, 1025, 65),
            (9, 7, 5),
        ] {
            for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
                for threads in [Threads::Parallel, Threads::Serial] {
                    let (a, b) = (rand_vec(m * k, 1), rand_vec(k * n, 2));
                    let base = rand_vec(m * n, 3);
                    for accumulate in [false, true] {
                        let mut c = base.clone();
                        sgemm(m, n, k, &a, a_t, &b, b_t, &mut c, accumulate, threads);
                        check_gemm(
                            &format!(
                                "{m}x{n}x{k} a_t={a_t} b_t={b_t} {threads:?} acc={accumulate}"
                            ),
                            (m, n, k),
                            |i, kk| if a_t { a[kk * m + i] } else { a[i * k + kk] },
                            |kk, j| if b_t { b[j * k + kk] } else { b[kk * n + j] },
                            &base,
                            accumulate,
                            &c,
                        );
                    }
                }
            }
        }
    }
}
