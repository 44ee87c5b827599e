//! Which vector instruction set the CPU kernels run on: the widest the
//! host has, or a narrower one forced with `GPURT_CPU_ISA` (`avx512`,
//! `avx2`, `scalar`) or [`force`], so that the AVX2 and scalar kernels are
//! tested and timed on an AVX-512 host too.
//!
//! Every vectorised kernel is either a [`vectorized!`] function (compiled
//! once per instruction set, as `multiversion` would) or a `pulp`
//! operation run by [`dispatch`] (which picks its register tile from the
//! set's vector type). The choice is one relaxed atomic load per call.
//!
//! The `gemm` crate, which runs the large matrix products, chooses its own
//! kernels at run time and has no such switch: its AVX-512 kernels are
//! compiled in only with this crate's `gemm-avx512` feature (on by
//! default). [`gemm_isa`] says what it runs.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the CPU kernels are compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No vector extension assumed (the compiler's baseline: SSE2 on
    /// x86-64), also the choice on other architectures when forced.
    Scalar,
    /// AArch64 NEON (on ARM hosts; always present there).
    Neon,
    /// AVX2 with FMA (x86-64-v3): 16 vector registers of 8 floats.
    Avx2,
    /// AVX-512 F/BW/CD/DQ/VL (x86-64-v4): 32 registers of 16 floats.
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Floats per vector register.
    pub fn f32_lanes(self) -> usize {
        match self {
            Isa::Scalar => 1,
            Isa::Neon => 4,
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }

    /// Whether the set has a fused multiply-add (every vector set here).
    pub fn has_fma(self) -> bool {
        self != Isa::Scalar
    }

    /// Parse a `GPURT_CPU_ISA` value.
    pub fn parse(s: &str) -> Result<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" | "x86-64-v4" => Ok(Isa::Avx512),
            "avx2" | "x86-64-v3" => Ok(Isa::Avx2),
            "neon" => Ok(Isa::Neon),
            "scalar" | "none" | "baseline" => Ok(Isa::Scalar),
            other => Err(Error::Usage(format!(
                "GPURT_CPU_ISA='{other}' is not an instruction set (use avx512, avx2, neon or scalar)"
            ))),
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The sets this host can run, widest first (always ending in `Scalar`).
pub fn available() -> Vec<Isa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if pulp::x86::V4::try_new().is_some() {
            v.push(Isa::Avx512);
        }
        if pulp::x86::V3::try_new().is_some() {
            v.push(Isa::Avx2);
        }
    }
    #[cfg(target_arch = "aarch64")]
    v.push(Isa::Neon);
    v.push(Isa::Scalar);
    v
}

/// The widest set the host has.
pub fn detected() -> Isa {
    available()[0]
}

/// 0: not chosen yet; otherwise `Isa as u8 + 1`.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

fn encode(i: Isa) -> u8 {
    i as u8 + 1
}

fn decode(v: u8) -> Isa {
    match v {
        1 => Isa::Scalar,
        2 => Isa::Neon,
        3 => Isa::Avx2,
        _ => Isa::Avx512,
    }
}

/// The set `GPURT_CPU_ISA` asks for, checked against the host; `None`
/// when the variable is unset or empty.
pub fn from_env() -> Result<Option<Isa>> {
    let Some(v) = std::env::var_os("GPURT_CPU_ISA") else {
        return Ok(None);
    };
    let v = v.to_string_lossy();
    if v.trim().is_empty() {
        return Ok(None);
    }
    let isa = Isa::parse(&v)?;
    check(isa)?;
    Ok(Some(isa))
}

fn check(isa: Isa) -> Result<()> {
    let have = available();
    if have.contains(&isa) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "this CPU cannot run {isa} kernels (it has: {})",
            have.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
        )))
    }
}

/// The set the kernels run on now: forced, else `GPURT_CPU_ISA`, else the
/// widest. An invalid `GPURT_CPU_ISA` falls back to the widest here; the
/// CLI checks it with [`from_env`] first and refuses to start.
#[inline]
pub fn active() -> Isa {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => {
            let isa = from_env().ok().flatten().unwrap_or_else(detected);
            // A concurrent `force` wins over the environment.
            let _ = ACTIVE.compare_exchange(0, encode(isa), Ordering::Relaxed, Ordering::Relaxed);
            decode(ACTIVE.load(Ordering::Relaxed))
        }
        v => decode(v),
    }
}

/// Run every later kernel on `isa` (process-wide); an error if the host
/// lacks it.
pub fn force(isa: Isa) -> Result<()> {
    check(isa)?;
    ACTIVE.store(encode(isa), Ordering::Relaxed);
    Ok(())
}

/// The widest set the `gemm` crate's kernels use on this host: it ignores
/// [`force`] and `GPURT_CPU_ISA` (see the module doc).
pub fn gemm_isa() -> Isa {
    let host = detected();
    if cfg!(feature = "gemm-avx512") || host < Isa::Avx512 {
        host
    } else {
        Isa::Avx2
    }
}

/// Run a `pulp` operation on the active set.
#[inline]
pub fn dispatch<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    match active() {
        Isa::Avx512 => {
            if let Some(s) = pulp::x86::V4::try_new() {
                return pulp::Simd::vectorize(s, op);
            }
        }
        Isa::Avx2 => {
            if let Some(s) = pulp::x86::V3::try_new() {
                return pulp::Simd::vectorize(s, op);
            }
        }
        Isa::Neon | Isa::Scalar => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    if active() != Isa::Scalar {
        return pulp::Arch::new().dispatch(op);
    }
    pulp::Simd::vectorize(pulp::Scalar::new(), op)
}

/// For the test suites: runs this test binary again once per other
/// instruction set the host has, with `GPURT_CPU_ISA` set, skipping
/// `this_test` (the caller) and keeping only tests matching `filters` (all
/// when empty). Prints how many passed on each; panics with the run's
/// output if one fails or runs no test.
#[cfg(any(test, feature = "test-hooks"))]
pub fn rerun_tests_on_other_sets(this_test: &str, filters: &[&str]) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let now = active();
    for isa in available().into_iter().filter(|&i| i != now) {
        let out = std::process::Command::new(&exe)
            .env("GPURT_CPU_ISA", isa.name())
            .args(["--skip", this_test])
            .args(filters)
            .output()
            .expect("could not run the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let passed = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("test result: ok. "))
            .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
            .sum::<usize>();
        assert!(
            out.status.success() && passed > 0,
            "the tests on {isa} failed or ran nothing ({passed} passed):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("on {isa}: {passed} tests passed");
    }
}

/// A function compiled once per instruction set and run on the active one
/// (what `multiversion` does, following [`active`]):
///
/// ```ignore
/// isa::vectorized! {
///     /// `y = a·x`.
///     fn scale(y: &mut [f32], x: &[f32], a: f32) {
///         for (y, &x) in y.iter_mut().zip(x) {
///             *y = a * x;
///         }
///     }
/// }
/// ```
///
/// Each copy is a `#[target_feature]` function around the same inlined
/// body, so closures inside the body are compiled with the wider set too
/// (a closure run through `pulp` is not: `pulp` passes its captures
/// as plain integers, and loops over two slices then stayed scalar; the
/// batch-1 convolution epilogue did, +12% on the small CNN's inference).
/// The feature lists are `pulp`'s `V4` and `V3`, whose detection decides
/// [`active`].
macro_rules! vectorized {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "sse,sse2,fxsr,sse3,ssse3,sse4.1,sse4.2,popcnt,avx,avx2,bmi1,bmi2,fma,lzcnt,avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "sse,sse2,fxsr,sse3,ssse3,sse4.1,sse4.2,popcnt,avx,avx2,bmi1,bmi2,fma,lzcnt")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            match $crate::backend::cpu::isa::active() {
                // SAFETY: `active()` is `Avx512` only where `pulp::x86::V4`
                // detected every feature `avx512` is compiled with.
                #[cfg(target_arch = "x86_64")]
                $crate::backend::cpu::isa::Isa::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: likewise `Avx2` only where `V3` detected them.
                #[cfg(target_arch = "x86_64")]
                $crate::backend::cpu::isa::Isa::Avx2 => unsafe { avx2($($arg),*) },
                // NEON is in the AArch64 baseline; scalar is the baseline.
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use vectorized;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for i in [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::parse(i.name()).unwrap(), i);
        }
        let e = Isa::parse("sse9").unwrap_err().to_string();
        assert!(e.contains("GPURT_CPU_ISA='sse9'"), "{e}");
    }

    #[test]
    fn the_host_always_has_scalar_and_cannot_be_forced_past_it() {
        let have = available();
        assert_eq!(*have.last().unwrap(), Isa::Scalar);
        assert!(have.windows(2).all(|w| w[0] > w[1]));
        #[cfg(target_arch = "x86_64")]
        assert!(check(Isa::Neon).is_err());
    }

    vectorized! {
        fn sum_of_squares(x: &[f32]) -> f32 {
            x.iter().map(|v| v * v).sum()
        }
    }

    /// Every CPU kernel test again on each narrower set (the plain run
    /// covers the widest): AVX2 and scalar on an AVX-512 host.
    #[test]
    fn kernel_tests_pass_on_every_instruction_set() {
        rerun_tests_on_other_sets(
            "kernel_tests_pass_on_every_instruction_set",
            &["backend::cpu::", "math::"],
        );
    }

    #[test]
    fn a_vectorized_function_runs_on_the_active_set() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let want: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let s = sum_of_squares(&x);
        assert!((s as f64 - want).abs() < 1e-3, "{s} vs {want}");
    }
}
