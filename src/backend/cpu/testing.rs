//! Helpers shared by the CPU kernels' unit tests.

use rand::{rngs::StdRng, Rng, SeedableRng};

/// Uniform in [-1, 1] from `seed`; the first entry is forced to 0.75 so a
/// vector is never all zeros.
pub fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
    rand_vec_from(&mut StdRng::seed_from_u64(seed), len)
}

/// [`rand_vec`] drawing from a caller's generator.
pub fn rand_vec_from(rng: &mut StdRng, len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..=1.0)).collect();
    if let Some(first) = v.first_mut() {
        *first = 0.75;
    }
    v
}

/// ‖got − want‖ / ‖want‖; the reference must not be all zeros.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (f64::from(a) - b).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|b| b * b).sum();
    assert!(norm > 0.0, "reference is all zeros");
    (diff / norm).sqrt()
}

/// Checks an `m x n` GEMM result `c` element by element against an f64
/// product of `a(i, kk)` and `b(kk, j)` (plus `base` when accumulating),
/// within `1e-5·sqrt(k)·(1 + |want|)`.
#[allow(clippy::too_many_arguments)]
pub fn check_gemm(
    what: &str,
    (m, n, k): (usize, usize, usize),
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
    base: &[f32],
    accumulate: bool,
    c: &[f32],
) {
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|kk| a(i, kk) as f64 * b(kk, j) as f64).sum();
            let want = dot
                + if accumulate {
                    base[i * n + j] as f64
                } else {
                    0.0
                };
            let got = c[i * n + j] as f64;
            assert!(
                (got - want).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + want.abs()),
                "{what} at ({i},{j}): {got} vs {want}"
            );
        }
    }
}
