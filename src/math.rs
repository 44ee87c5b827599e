//! Vectorisable scalar math, shared by the op definitions (`ops/`) and
//! the CPU kernels (as `backend::cpu::simd_math`), so every CPU path
//! computes a function the same way.
//!
//! `f32::exp` is a call into libm, which the compiler cannot vectorise: a
//! softmax over 4096-wide rows spent most of its time there. [`exp`] is
//! branch-free straight-line code (range reduction to `[-ln2/2, ln2/2]`, a
//! degree-6 polynomial, and the power of two built in the exponent bits),
//! so loops that call it inside an `isa::vectorized!` function run a vector of
//! lanes at a time. Its error is within 2 ulp of the true value over the whole range
//! (tested against f64 below); it returns 0 below `ln(f32::MIN_POSITIVE)`
//! (where libm would return a subnormal), `inf` above `ln(f32::MAX)`, and
//! NaN for NaN.

/// `1.5·2^23`: adding it rounds an `f32` of magnitude below `2^22` to an
/// integer, which then sits in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// Below `EXP_LO`, `e^x` is under f32::MIN_POSITIVE.
const EXP_LO: f32 = -87.336_55;
/// ln 2 split in a part exact in a few bits and a correction, so that
/// `x - n·ln2` loses nothing for |n| <= 128.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Minimax coefficients of (e^r - 1 - r) / r² on [-ln2/2, ln2/2].
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x`, vectorisable; see the module doc for its accuracy and range.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Above HI it overflows.
    const LO: f32 = EXP_LO;
    const HI: f32 = 88.722_84;
    const P: [f32; 6] = EXP_P;
    // NaN passes through the clamp.
    let t = x.clamp(LO, HI);
    let shifted = t * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = t - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let e = p * (r * r) + r + 1.0;
    // 2^n, with n (-126..=128) in the low bits of `shifted`'s pattern,
    // offset by ROUND's. 2^128 is not an f32, so positive n is applied as
    // 2^(n-1)·2.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let pos = n_int > 0;
    let half = if pos { n_int - 1 } else { n_int };
    let scale = f32::from_bits(((half + 127) as u32) << 23);
    let y = e * scale * if pos { 2.0 } else { 1.0 };
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// `e^x` for `x <= 0` (softmax's shifted inputs), with fused multiply-adds
/// when `FMA` (pass `true` only from code compiled for an FMA target:
/// elsewhere `mul_add` is a slow library call). Half the work of [`exp`]:
/// no overflow handling. Positive `x` gives garbage; NaN gives NaN.
#[inline(always)]
pub fn exp_nonpositive<const FMA: bool>(x: f32) -> f32 {
    const LO: f32 = EXP_LO;
    const P: [f32; 6] = EXP_P;
    let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let t = if x < LO { LO } else { x };
    let shifted = fma(t, std::f32::consts::LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = fma(n, -LN2_LO, fma(n, -LN2_HI, t));
    let mut p = P[0];
    for c in &P[1..] {
        p = fma(p, r, *c);
    }
    let e = fma(p, r * r, r) + 1.0;
    // n is in -126..=0 here, so 2^n is a normal number.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let y = e * f32::from_bits(n_bits.wrapping_add(127) << 23);
    if x < LO {
        0.0
    } else {
        y
    }
}

/// Φ(x), the standard normal CDF, as `erfc(−x/√2)/2` with Numerical
/// Recipes' `erfcc` (relative error under 1.2e-7 in exact arithmetic, so
/// the left tail keeps its precision) and the vectorisable [`exp`]: in f32
/// the relative error is under 5e-7·max(1, x²/2), the rounding of the
/// `−x²/2` exponent growing in the left tail (tested below). libm's `erff`
/// is a call per element that the compiler cannot vectorise: it made GELU
/// 5x slower than this on the transformer's feed-forward blocks.
#[inline(always)]
pub fn normal_cdf(x: f32) -> f32 {
    const C: [f32; 10] = [
        0.170_872_77,
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ];
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.5 * a);
    let mut p = C[0];
    for k in &C[1..] {
        p = p * t + k;
    }
    let e = t * exp(-a * a + p);
    0.5 * if z >= 0.0 { 2.0 - e } else { e }
}

/// The standard normal density φ(x).
#[inline(always)]
pub fn normal_pdf(x: f32) -> f32 {
    exp(-0.5 * x * x) * 0.398_942_3
}

#[cfg(test)]
mod tests {
    /// Φ against libm's f64 `erfc` at the same f32 arguments over
    /// [-9, 9]: relative error under 5e-7·max(1, x²/2) (the f32
    /// rounding of the exponent grows with x² in the left tail).
    #[test]
    fn normal_cdf_is_accurate_in_both_tails() {
        let mut worst = 0.0f64;
        for i in 0..=18_000 {
            let x = (-9.0 + i as f64 * 1e-3) as f32;
            let xd = x as f64;
            let want = 0.5 * libm::erfc(-xd / std::f64::consts::SQRT_2);
            let got = super::normal_cdf(x) as f64;
            let bound = 5e-7 * (xd * xd / 2.0).max(1.0);
            worst = worst.max(((got - want) / want).abs() / bound);
        }
        assert!(worst < 1.0, "worst error {worst:.2} times the bound");
    }

    use super::*;

    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
        (got as f64 - want).abs() / ulp
    }

    #[test]
    fn exp_is_within_2_ulp_of_f64() {
        let mut worst = (0.0f64, 0.0f32);
        let mut x = -87.0f32;
        while x < 88.5 {
            let u = ulps(exp(x), (x as f64).exp());
            if u > worst.0 {
                worst = (u, x);
            }
            x += 0.000_731;
        }
        assert!(worst.0 <= 2.0, "{} ulp at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_nonpositive_is_within_2_ulp_of_f64() {
        let mut x = -87.3f32;
        while x <= 0.0 {
            for got in [exp_nonpositive::<true>(x), exp_nonpositive::<false>(x)] {
                let u = ulps(got, (x as f64).exp());
                assert!(u <= 2.0, "{u} ulp at x = {x}");
            }
            x += 0.000_613;
        }
        assert_eq!(exp_nonpositive::<false>(0.0), 1.0);
        assert_eq!(exp_nonpositive::<true>(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive::<true>(f32::NAN).is_nan());
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.7).is_finite());
        let x = -87.3f32;
        let u = ulps(exp(x), (x as f64).exp());
        assert!(u <= 2.0, "{u} ulp at {x}");
    }
}
