//! Allocation-free GEMM micro-kernels for convolution and for the small
//! products of low-latency inference, where the `gemm` crate's packing
//! (and the heap buffers it allocates for it on every call) cost more than
//! the arithmetic.
//!
//! [`gemm_windows`] multiplies a row-major left operand by a right operand
//! whose rows are arbitrary *windows* of one buffer: row `kk` is
//! `b[offs[kk]..]`. With `offs[kk] = kk·ldb` that is an ordinary GEMM; with
//! the tap offsets of a stride-1 convolution it is the convolution itself,
//! with no im2col copy (see `conv2d_small`). The right operand is never
//! packed: each register tile of `MR` rows × up to three vectors of columns
//! streams its `k` window rows once, and the column panel stays in L1 while
//! every row block of the left operand passes over it. For wide products
//! the left operand (the weights) is packed tile-major into a thread-local
//! buffer first.
//!
//! No `unsafe` here: the windowed kernel is written against `pulp`'s safe
//! SIMD types (dispatched at run time to AVX-512, AVX2 or NEON) because the
//! auto-vectoriser reloads the panel for every row, which costs ~40% on the
//! unaligned windows of a convolution; the dot-product kernel is plain Rust
//! compiled per instruction set by [`isa::vectorized!`]. Both follow
//! `GPURT_CPU_ISA` (see [`isa`]).

use super::isa;

/// Column granularity of the register tiles (one AVX-512 vector; tiles
/// are two or three vectors wide where the columns allow). Callers pad the right
/// operand's windows and the output rows to a multiple of this (see
/// [`padded`]).
pub const GRANULE: usize = 16;

/// `n` rounded up to whole granules.
pub fn padded(n: usize) -> usize {
    n.next_multiple_of(GRANULE)
}

/// `c[i·ldc + j] = Σ_kk a[i·lda + kk] · b[offs[kk] + j]` for `i < m` and
/// `j < padded(n)`, with `k = offs.len()`. Columns from `n` to `padded(n)`
/// are computed from whatever `b` holds there and are the caller's to
/// ignore.
///
/// Panics if an operand is too short for those indices (a caller bug).
#[allow(clippy::too_many_arguments)]
pub fn gemm_windows(
    m: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    offs: &[usize],
    c: &mut [f32],
    ldc: usize,
) {
    let (k, np) = (offs.len(), padded(n));
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && a.len() >= (m - 1) * lda + k, "gemm_windows: a");
    assert!(
        ldc >= np && c.len() >= (m - 1) * ldc + np,
        "gemm_windows: c"
    );
    let reach = offs.iter().max().map_or(0, |&o| o + np);
    assert!(
        reach <= b.len(),
        "gemm_windows: b has {} < {reach}",
        b.len()
    );
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..np].fill(0.0);
        }
        return;
    }
    let mut packed = PACKED.take();
    isa::dispatch(Windows {
        m,
        np,
        a,
        lda,
        b,
        offs,
        c,
        ldc,
        packed: &mut packed,
    });
    PACKED.set(packed);
}

/// Wide products pack the left operand first (see [`Windows::pack`]) and
/// use three-vector tiles: on the 32->64 CIFAR layer (1088 columns) that is
/// 10.0 -> 8.6 -> 7.3 ms. Below this many
/// columns the copy costs more than it saves (batch-1 inference: +10%).
const PACK_MIN_COLS: usize = 512;

thread_local! {
    /// The packed left operand, kept for the next call so steady-state
    /// calls do not allocate.
    static PACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The [`gemm_windows`] problem, run by `pulp` on the widest vector
/// instruction set the CPU has.
struct Windows<'a> {
    m: usize,
    np: usize,
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    offs: &'a [usize],
    c: &'a mut [f32],
    ldc: usize,
    /// The left operand in `MR`-row tiles, when `np >= PACK_MIN_COLS`.
    packed: &'a mut Vec<f32>,
}

impl pulp::WithSimd for Windows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        // Rows per tile: enough accumulator pairs to amortise the loop and
        // bounds-check overhead of each window, within the register file
        // (8 rows measured best on AVX-512: 6 was 10% slower, 12 no
        // better). AVX2 has 16 registers: 6 rows x 2 vectors is 12
        // accumulators, 2 panel vectors and a broadcast (batch-1 CNN
        // inference: 211-212 us; packed 4 rows 230-233, 3 rows x 3
        // vectors 225-235).
        if S::REGISTER_COUNT >= 32 {
            self.tiles::<S, 8>(simd)
        } else {
            self.tiles::<S, 6>(simd)
        }
    }
}

impl Windows<'_> {
    /// Copies the left operand into `packed` as `MR`-row tiles, each `k`
    /// groups of `MR` values (zero rows past `m`): a tile's broadcasts then
    /// read one contiguous stream instead of `MR` rows `lda` apart.
    fn pack<const MR: usize>(&mut self) {
        let k = self.offs.len();
        let tiles = self.m.div_ceil(MR);
        self.packed.clear();
        self.packed.resize(tiles * k * MR, 0.0);
        for (t, dst) in self.packed.chunks_exact_mut(k * MR).enumerate() {
            let live = MR.min(self.m - t * MR);
            let rows: [&[f32]; MR] =
                std::array::from_fn(|r| &self.a[(t * MR + r.min(live - 1)) * self.lda..][..k]);
            for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
                for r in 0..live {
                    d[r] = rows[r][kk];
                }
            }
        }
    }

    /// Whether the left operand is packed first. On AVX-512 only for wide
    /// products (below, the copy costs more than it saves); on AVX2's 16
    /// registers always: unpacked, the six row pointers of a tile do not
    /// fit the general registers beside the loop's own, and packed 6x2
    /// tiles run the batch-1 CNN inference in 211 us against 220 for the
    /// unpacked 4x2 tiles (conv fwd N64 32->64: 18.7 -> 17.6-18.0 ms).
    #[inline(always)]
    fn packs<S: pulp::Simd>(np: usize) -> bool {
        np >= PACK_MIN_COLS || S::REGISTER_COUNT < 32
    }

    /// Walks the column panels (outer, so a panel stays in L1 while every
    /// row block passes over it), then row blocks of `MR` and the leftover.
    /// A last panel of at most one vector runs at single width.
    #[inline(always)]
    fn tiles<S: pulp::Simd, const MR: usize>(mut self, simd: S) {
        if Self::packs::<S>(self.np) {
            self.pack::<MR>();
        }
        let lanes = S::F32_LANES;
        debug_assert!(GRANULE.is_multiple_of(lanes));
        let mut j0 = 0;
        // Three vectors per tile where the register file allows: more FMAs
        // per loop iteration's overhead.
        if S::REGISTER_COUNT >= 32 {
            while self.np - j0 >= 3 * lanes {
                self.rows::<S, MR, 3>(simd, j0);
                j0 += 3 * lanes;
            }
        }
        while j0 < self.np {
            if self.np - j0 <= lanes {
                self.rows::<S, MR, 1>(simd, j0);
                j0 += lanes;
            } else {
                self.rows::<S, MR, 2>(simd, j0);
                j0 += 2 * lanes;
            }
        }
    }

    #[inline(always)]
    fn rows<S: pulp::Simd, const MR: usize, const V: usize>(&mut self, simd: S, j0: usize) {
        if !self.packed.is_empty() && Self::packs::<S>(self.np) {
            let mut i = 0;
            while i + MR <= self.m {
                self.packed_tile::<S, MR, MR, V>(simd, i, j0);
                i += MR;
            }
            // The last tile's live rows only: a 4-row remainder of 6-row
            // tiles costs 4/6 of a tile, not a whole one on zeros.
            match self.m - i {
                0 => {}
                1 => self.packed_tile::<S, MR, 1, V>(simd, i, j0),
                2 => self.packed_tile::<S, MR, 2, V>(simd, i, j0),
                3 => self.packed_tile::<S, MR, 3, V>(simd, i, j0),
                4 => self.packed_tile::<S, MR, 4, V>(simd, i, j0),
                5 => self.packed_tile::<S, MR, 5, V>(simd, i, j0),
                6 => self.packed_tile::<S, MR, 6, V>(simd, i, j0),
                _ => self.packed_tile::<S, MR, 7, V>(simd, i, j0),
            }
            return;
        }
        let mut i = 0;
        while i + MR <= self.m {
            self.tile::<S, MR, V>(simd, i, j0);
            i += MR;
        }
        match self.m - i {
            0 => {}
            1 => self.tile::<S, 1, V>(simd, i, j0),
            2 => self.tile::<S, 2, V>(simd, i, j0),
            3 => self.tile::<S, 3, V>(simd, i, j0),
            4 => self.tile::<S, 4, V>(simd, i, j0),
            5 => self.tile::<S, 5, V>(simd, i, j0),
            6 => self.tile::<S, 6, V>(simd, i, j0),
            _ => self.tile::<S, 7, V>(simd, i, j0),
        }
    }

    /// One register tile: rows `i0..i0 + R`, `V` vectors of columns from
    /// `j0`. Each panel vector is loaded once per `kk` and used `R` times.
    #[inline(always)]
    fn tile<S: pulp::Simd, const R: usize, const V: usize>(
        &mut self,
        simd: S,
        i0: usize,
        j0: usize,
    ) {
        let (k, width) = (self.offs.len(), V * S::F32_LANES);
        let rows: [&[f32]; R] = std::array::from_fn(|r| &self.a[(i0 + r) * self.lda..][..k]);
        let mut acc = [[simd.splat_f32s(0.0); V]; R];
        for (kk, &o) in self.offs.iter().enumerate() {
            let (v, _) = S::as_simd_f32s(&self.b[o + j0..o + j0 + width]);
            let p: [S::f32s; V] = std::array::from_fn(|q| v[q]);
            for r in 0..R {
                let av = simd.splat_f32s(rows[r][kk]);
                for q in 0..V {
                    acc[r][q] = simd.mul_add_f32s(av, p[q], acc[r][q]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let at = (i0 + r) * self.ldc + j0;
            let (v, _) = S::as_mut_simd_f32s(&mut self.c[at..at + width]);
            v.copy_from_slice(acc);
        }
    }
}

impl Windows<'_> {
    /// [`Windows::tile`] reading the packed left operand (tiles of `MR`
    /// rows): the first `R <= MR` rows of the tile at row `i0`.
    #[inline(always)]
    fn packed_tile<S: pulp::Simd, const MR: usize, const R: usize, const V: usize>(
        &mut self,
        simd: S,
        i0: usize,
        j0: usize,
    ) {
        let (k, width) = (self.offs.len(), V * S::F32_LANES);
        let tile = &self.packed[(i0 / MR) * k * MR..][..k * MR];
        let mut acc = [[simd.splat_f32s(0.0); V]; R];
        for (&o, a) in self.offs.iter().zip(tile.chunks_exact(MR)) {
            let (v, _) = S::as_simd_f32s(&self.b[o + j0..o + j0 + width]);
            let p: [S::f32s; V] = std::array::from_fn(|q| v[q]);
            for r in 0..R {
                let av = simd.splat_f32s(a[r]);
                for q in 0..V {
                    acc[r][q] = simd.mul_add_f32s(av, p[q], acc[r][q]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(self.m - i0) {
            let at = (i0 + r) * self.ldc + j0;
            let (v, _) = S::as_mut_simd_f32s(&mut self.c[at..at + width]);
            v.copy_from_slice(acc);
        }
    }
}

/// `y[i·n + j] (+)= Σ_kk x[i·k + kk] · w[j·k + kk]` for `i < m`, `j < n`:
/// a product with the right operand transposed (PyTorch's `[out, in]`
/// linear weight) as dot products over contiguous rows. For the few rows of
/// small-batch inference, where it beats packing; no allocation.
pub fn gemm_nt_small(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    accumulate: bool,
) {
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    nt_mv(m, n, k, x, w, y, accumulate)
}

isa::vectorized! {
    fn nt_mv(m: usize, n: usize, k: usize, x: &[f32], w: &[f32], y: &mut [f32], accumulate: bool) {
        if isa::active().has_fma() {
            nt::<true>(m, n, k, x, w, y, accumulate)
        } else {
            nt::<false>(m, n, k, x, w, y, accumulate)
        }
    }
}

/// Lanes of the dot-product accumulators.
const LANES: usize = 16;

#[inline(always)]
fn nt<const FMA: bool>(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    accumulate: bool,
) {
    let body = k - k % LANES;
    for i in 0..m {
        let xr = &x[i * k..][..k];
        let yr = &mut y[i * n..][..n];
        // Four weight rows at once share each load of `x`.
        let mut j = 0;
        while j < n {
            let rows = (n - j).min(4);
            let mut acc = [[0.0f32; LANES]; 4];
            let wr: [&[f32]; 4] = std::array::from_fn(|r| &w[(j + r.min(rows - 1)) * k..][..k]);
            for kk in (0..body).step_by(LANES) {
                let xv: &[f32; LANES] = xr[kk..kk + LANES].try_into().expect("LANES long");
                for r in 0..4 {
                    let wv: &[f32; LANES] = wr[r][kk..kk + LANES].try_into().expect("LANES long");
                    for l in 0..LANES {
                        acc[r][l] = if FMA {
                            xv[l].mul_add(wv[l], acc[r][l])
                        } else {
                            acc[r][l] + xv[l] * wv[l]
                        };
                    }
                }
            }
            for r in 0..rows {
                let mut s: f32 = acc[r].iter().sum();
                for kk in body..k {
                    s += xr[kk] * wr[r][kk];
                }
                yr[j + r] = if accumulate { yr[j + r] + s } else { s };
            }
            j += rows;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::cpu::testing::{check_gemm, rand_vec};

    #[test]
    fn windows_match_f64_on_odd_shapes() {
        for (m, n, k, ldb) in [
            (1, 1, 1, 40),
            (7, 33, 5, 70),
            (13, 65, 29, 100),
            (64, 193, 288, 200),
            (6, 32, 3, 32),
            (5, 31, 17, 31),
            // Wide enough to take the packed path, odd rows included.
            (13, 600, 29, 700),
            (8, 512, 64, 520),
            (11, 580, 40, 600),
        ] {
            let a = rand_vec(m * k, 1);
            // Overlapping windows, like a convolution's taps.
            let offs: Vec<usize> = (0..k).map(|kk| (kk * 7) % ldb + kk).collect();
            let b = rand_vec(offs.iter().max().unwrap() + padded(n), 2);
            let ldc = padded(n) + 3;
            let mut c = vec![f32::NAN; m * ldc];
            gemm_windows(m, n, &a, k, &b, &offs, &mut c, ldc);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|kk| a[i * k + kk] as f64 * b[offs[kk] + j] as f64)
                        .sum();
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                        "{m}x{n}x{k} at ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn nt_matches_f64_and_accumulates() {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 64, 1024),
            (3, 10, 64),
            (2, 7, 33),
            (5, 9, 15),
        ] {
            let x = rand_vec(m * k, 3);
            let w = rand_vec(n * k, 4);
            let base = rand_vec(m * n, 5);
            for accumulate in [false, true] {
                let mut y = base.clone();
                gemm_nt_small(m, n, k, &x, &w, &mut y, accumulate);
                check_gemm(
                    &format!("{m}x{n}x{k}"),
                    (m, n, k),
                    |i, kk| x[i * k + kk],
                    |kk, j| w[j * k + kk],
                    &base,
                    accumulate,
                    &y,
                );
            }
        }
    }
}
