//! `gpurt bench`: the benchmark suite from the command line. Every figure
//! comes with its work count (FLOPs or bytes) and as a percentage of this
//! machine's peak, measured at start-up: an FMA loop for compute-bound
//! kernels, a large copy for memory-bound ones. Times are medians.

use crate::backend::cpu::isa;
use crate::backend::Backend;
use crate::embed::{Predictor, SharedWeights};
use crate::error::Result;
use crate::graph::exec::Session;
use crate::graph::ir::Graph;
use crate::graph::plan;
use crate::model::{Classifier, ClassifierConfig};
use crate::nn::{Layer, ModelSpec};
use crate::ops::adam::AdamConfig;
use crate::ops::{ConvParams, Op};
use crate::optim::{OptimConfig, OptimizerKind};
use crate::tensor::DType;
use rayon::prelude::*;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    /// Median seconds per call.
    pub seconds: f64,
    /// "GFLOP/s", "GB/s", "img/s" or "us".
    pub unit: String,
    pub value: f64,
    /// Percentage of the measured machine peak, where one applies.
    pub percent_of_peak: Option<f64>,
    /// What was counted: "2*n^3 FLOP", "bytes read + written", ...
    pub work: String,
    /// Why the case could not run on this device (e.g. an adapter limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl Figure {
    /// A measured figure with no peak to compare against.
    fn plain(name: String, seconds: f64, unit: &str, value: f64, work: String) -> Self {
        Figure {
            name,
            seconds,
            unit: unit.into(),
            value,
            percent_of_peak: None,
            work,
            skipped: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Peaks {
    /// The instruction set the probe (and gpurt's own kernels) ran on.
    pub isa: String,
    /// The one the `gemm` crate's kernels run on (see `isa::gemm_isa`).
    pub gemm_isa: String,
    pub fma_gflops: f64,
    /// FLOP per cycle per core the theoretical figure assumes.
    pub flops_per_cycle: usize,
    /// The clock measured during the probes (GHz).
    pub clock_ghz: f64,
    /// threads × `flops_per_cycle` × the measured clock: a check on the
    /// probe (a single 512-bit FMA pipe, or a lower clock under wide
    /// vectors, reads below it).
    pub theoretical_gflops: f64,
    pub mem_gbps: f64,
    pub threads: usize,
}

/// Twelve independent chains of vector FMAs, held in registers: enough to
/// hide the FMA latency (4 cycles, 2 pipes: 8 chains) and, with the two
/// constants, within AVX2's 16 registers. Each chain is one vector of the
/// instruction set's width, so the probe counts `lanes` floats per FMA.
struct FmaChains {
    iters: usize,
}

impl pulp::WithSimd for FmaChains {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
        // Opaque constants: a chain that starts at a fixed point of
        // `v·a + b` in f32 (1.0 is one) would be folded away at compile time.
        let bb = std::hint::black_box::<f32>;
        let (a, b) = (simd.splat_f32s(bb(0.999_999_9)), simd.splat_f32s(bb(1e-7)));
        let mut acc: [S::f32s; 12] =
            std::array::from_fn(|i| simd.splat_f32s(bb(1.0 + 0.1 * i as f32)));
        for _ in 0..self.iters {
            for v in acc.iter_mut() {
                *v = simd.mul_add_f32s(*v, a, b);
            }
        }
        acc.iter().map(|&v| simd.reduce_sum_f32s(v)).sum()
    }
}

fn fma_chains(iters: usize) -> f32 {
    isa::dispatch(FmaChains { iters })
}

/// Vector FMA pipes per core that the theoretical peak assumes: two, as
/// on every AVX2 and AVX-512 core since Haswell (some AVX-512 Xeons have
/// only one 512-bit pipe: there the probe reads about half the
/// theoretical figure, and the printed percentage shows it).
pub const FMA_PIPES: usize = 2;

/// The core clock now, in GHz, from a chain of dependent integer
/// operations (xor then add: one cycle each on every x86-64 and ARM core,
/// and nothing the compiler can fold across iterations), timed on every
/// thread at once, as the FMA probe is. A VM's `/proc/cpuinfo` reports
/// the nominal clock, not the turbo clock the cores run at.
fn clock_ghz(threads: usize) -> f64 {
    fn chain(iters: u64) -> u64 {
        let (mut x, k1, k2) = (
            std::hint::black_box(1u64),
            std::hint::black_box(0x9e37_79b9u64),
            std::hint::black_box(7u64),
        );
        for _ in 0..iters {
            x = (x ^ k1).wrapping_add(k2);
        }
        x
    }
    const ITERS: u64 = 50_000_000;
    chain(ITERS / 10);
    let secs = best(3, || {
        let s: u64 = (0..threads).into_par_iter().map(|_| chain(ITERS)).sum();
        std::hint::black_box(s);
    });
    2.0 * ITERS as f64 / secs / 1e9
}

/// FMA peak (all threads) and memory bandwidth, measured now. Each is the
/// best of a few trials: a peak is what the machine can do, and on a shared
/// machine a single trial can land on a busy moment.
pub fn measure_peaks() -> Peaks {
    let threads = rayon::current_num_threads();
    let iters = 1_000_000;
    let _ = fma_chains(1000);
    let fma_secs = best(7, || {
        let s: f32 = (0..threads)
            .into_par_iter()
            .map(|_| fma_chains(iters))
            .sum();
        std::hint::black_box(s);
    });
    let isa = isa::active();
    let lanes = isa.f32_lanes();
    let fma_gflops = (threads * iters * 12 * lanes * 2) as f64 / fma_secs / 1e9;
    // FLOP per cycle per core: pipes × lanes × 2 (multiply and add).
    let flops_per_cycle = if isa.has_fma() {
        FMA_PIPES * lanes * 2
    } else {
        2
    };
    let clock_ghz = clock_ghz(threads);
    let theoretical_gflops = (threads * flops_per_cycle) as f64 * clock_ghz;
    let n = 32 << 20; // 128 MiB each way
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    // One contiguous `memcpy` per thread: at these sizes the C library uses
    // non-temporal stores, the fastest copy the machine has (PyTorch's
    // `copy_` measures the same).
    let per = n.div_ceil(threads);
    let copy = |dst: &mut [f32]| {
        dst.par_chunks_mut(per)
            .zip(src.par_chunks(per))
            .for_each(|(d, s)| d.copy_from_slice(s))
    };
    copy(&mut dst);
    let copy_secs = best(5, || copy(&mut dst));
    // In-place updates of two arrays (read and write the same lines, as
    // optimisers do) skip the read-for-ownership of a plain store to new
    // lines and keep more streams in flight: they can move more bytes than
    // a copy. The bandwidth peak is the better of the two.
    let (a, b) = dst.split_at_mut(n / 2);
    let mut update = || {
        a.par_chunks_mut(1 << 15)
            .zip(b.par_chunks_mut(1 << 15))
            .for_each(|(a, b)| {
                for (x, y) in a.iter_mut().zip(b.iter_mut()) {
                    *x = *x * 0.5 + *y;
                    *y = *y * 0.5 + 1.0;
                }
            })
    };
    let update_secs = best(5, &mut update);
    std::hint::black_box(&dst);
    Peaks {
        isa: isa.name().to_string(),
        gemm_isa: isa::gemm_isa().name().to_string(),
        fma_gflops,
        flops_per_cycle,
        clock_ghz,
        theoretical_gflops,
        mem_gbps: 2.0 * (n * 4) as f64 / copy_secs.min(update_secs) / 1e9,
        threads,
    }
}

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Repetitions so a case takes about `budget` in total.
fn reps_for(once: f64, budget: Duration) -> usize {
    ((budget.as_secs_f64() / once.max(1e-9)) as usize).clamp(3, 200)
}

struct Suite<'a> {
    backend: &'a dyn Backend,
    peaks: Peaks,
    budget: Duration,
    out: Vec<Figure>,
}

impl Suite<'_> {
    fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let s = Instant::now();
        f()?;
        let reps = reps_for(s.elapsed().as_secs_f64(), self.budget);
        let mut err = Ok(());
        let t = median(reps, || {
            if let Err(e) = f() {
                err = Err(e);
            }
        });
        err.map(|_| t)
    }

    fn skip(&mut self, name: &str, e: crate::Error) {
        self.out.push(Figure {
            name: name.into(),
            seconds: f64::NAN,
            unit: String::new(),
            value: f64::NAN,
            percent_of_peak: None,
            work: String::new(),
            skipped: Some(e.to_string()),
        });
    }

    fn compute(&mut self, name: &str, secs: Result<f64>, flops: f64, work: &str) {
        let peak = self.peaks.fma_gflops;
        self.rate(name, secs, (flops, "GFLOP/s", peak), work);
    }

    fn memory(&mut self, name: &str, secs: Result<f64>, bytes: f64, work: &str) {
        let peak = self.peaks.mem_gbps;
        self.rate(name, secs, (bytes, "GB/s", peak), work);
    }

    /// A figure of `amount / seconds` in units of 1e9, against `peak`.
    fn rate(&mut self, name: &str, secs: Result<f64>, per: (f64, &str, f64), work: &str) {
        let (amount, unit, peak) = per;
        let secs = match secs {
            Ok(t) => t,
            Err(e) => return self.skip(name, e),
        };
        let g = amount / secs / 1e9;
        self.out.push(Figure {
            name: name.into(),
            seconds: secs,
            unit: unit.into(),
            value: g,
            percent_of_peak: Some(100.0 * g / peak),
            work: work.into(),
            skipped: None,
        });
    }

    /// One figure per kernel of program `program` of `cfg`'s module, its
    /// dispatches' device times summed (the second of two runs), largest
    /// first; nothing on devices without timers.
    fn kernel_times(&mut self, what: &str, cfg: &ClassifierConfig, program: &str) -> Result<()> {
        let module = std::sync::Arc::new(Classifier::module(cfg)?);
        let Some(p) = module.programs.iter().position(|p| p.name == program) else {
            return Ok(());
        };
        let scalars: Vec<f32> = module
            .scalars
            .iter()
            .map(|s| if s == "lr" { 1e-4 } else { 1.0 })
            .collect();
        let mut exe = self.backend.compile(std::sync::Arc::clone(&module))?;
        if exe.kernel_times(p, &scalars)?.is_none() {
            return Ok(());
        }
        let Some(times) = exe.kernel_times(p, &scalars)? else {
            return Ok(());
        };
        let total: f64 = times.iter().map(|t| t.1).sum();
        let mut by: Vec<(&str, usize, f64)> = Vec::new();
        for (k, t) in times {
            match by.iter_mut().find(|e| e.0 == k) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += t;
                }
                None => by.push((k, 1, t)),
            }
        }
        by.sort_by(|a, b| b.2.total_cmp(&a.2));
        let dispatches: usize = by.iter().map(|e| e.1).sum();
        self.out.push(Figure::plain(
            format!("{what}: device time, all kernels"),
            total,
            "ms",
            total * 1e3,
            format!("timestamp queries, {dispatches} dispatches"),
        ));
        for (k, n, t) in by {
            self.out.push(Figure::plain(
                format!("  {k} (x{n})"),
                t,
                "%",
                100.0 * t / total.max(f64::MIN_POSITIVE),
                format!("{what}: share of device time"),
            ));
        }
        Ok(())
    }

    /// Time one graph's program on the backend (inputs random, not zero).
    fn graph(&mut self, g: &Graph) -> Result<f64> {
        let mut s = case_session(self.backend, g)?;
        self.time(|| {
            s.run(0)?;
            s.finish()
        })
    }
}

/// The work a [`KernelCase`] does per run, for its rate.
#[derive(Clone, Copy, Debug)]
pub enum Rate {
    /// Floating-point operations (a multiply-add is 2).
    Flops(f64),
    /// Bytes moved, counted as PyTorch's harness counts them.
    Bytes(f64),
}

/// One kernel benchmark: a one-program graph and what it computes. Shared
/// by `gpurt bench` and the criterion benches, so both time the same thing.
pub struct KernelCase {
    pub name: String,
    pub graph: Graph,
    pub rate: Rate,
    /// How the rate's amount is counted.
    pub work: &'static str,
}

/// GEMM 1024^3 and 2048^3, conv2d N64 C32->64 32x32 3x3 pad 1 forward and
/// backward, softmax 4096x4096 and Adam over 10M parameters: the shapes of
/// the PyTorch peer harness.
pub fn kernel_cases() -> Result<Vec<KernelCase>> {
    let mut cases = Vec::new();
    for n in [1024usize, 2048] {
        let mut g = Graph::new(false);
        let a = g.input("a", [n, n], DType::F32)?;
        let b = g.input("b", [n, n], DType::F32)?;
        let c = g.matmul(a, b)?;
        g.set_output("c", c);
        cases.push(KernelCase {
            name: format!("gemm {n}^3"),
            graph: g,
            rate: Rate::Flops(2.0 * (n * n * n) as f64),
            work: "2*n^3 FLOP",
        });
    }

    let p = ConvParams {
        stride: (1, 1),
        pad: (1, 1),
        dilation: (1, 1),
    };
    let flops = 2.0 * (64 * 64 * 32 * 32 * 32 * 9) as f64;
    let mut g = Graph::new(false);
    let x = g.input("x", [64, 32, 32, 32], DType::F32)?;
    let w = g.param("w", [64, 32, 3, 3])?;
    let bias = g.param("b", [64])?;
    let y = g.conv2d(x, w, Some(bias), p)?;
    g.set_output("y", y);
    cases.push(KernelCase {
        name: "conv2d fwd N64 C32->64 32x32 3x3 pad1".into(),
        graph: g,
        rate: Rate::Flops(flops),
        // The direct convolution's count, as cuDNN's benchmarks count it:
        // an effective rate (the CPU's Winograd path does fewer).
        work: "2*N*Cout*OH*OW*Cin*KH*KW FLOP (direct count)",
    });
    let mut g = Graph::new(false);
    let x = g.input("x", [64, 32, 32, 32], DType::F32)?;
    let w = g.param("w", [64, 32, 3, 3])?;
    let dy = g.input("dy", [64, 64, 32, 32], DType::F32)?;
    let dx = g.push1(
        Op::Conv2dGradInput { p },
        vec![dy, w],
        [64, 32, 32, 32].into(),
    )?;
    let dw = g.push1(
        Op::Conv2dGradWeight { p },
        vec![x, dy],
        [64, 32, 3, 3].into(),
    )?;
    g.set_output("dx", dx);
    g.set_output("dw", dw);
    cases.push(KernelCase {
        name: "conv2d bwd (dx + dw) same shape".into(),
        graph: g,
        rate: Rate::Flops(2.0 * flops),
        work: "2 x forward FLOP",
    });

    let mut g = Graph::new(false);
    let x = g.input("x", [4096, 4096], DType::F32)?;
    let y = g.softmax(x)?;
    g.set_output("y", y);
    cases.push(KernelCase {
        name: "softmax 4096x4096".into(),
        graph: g,
        rate: Rate::Bytes(2.0 * 4.0 * 4096.0 * 4096.0),
        work: "bytes read + written (x, y)",
    });

    let n = 10_000_000usize;
    let mut g = Graph::new(true);
    let grad = g.input("grad", [n], DType::F32)?;
    let (pv, m, v) = (g.param("p", [n])?, g.state("m", [n])?, g.state("v", [n])?);
    let (lr, step) = (g.scalar("lr"), g.scalar("step"));
    g.push_node(
        Op::AdamUpdate(AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            lr,
            step,
        }),
        vec![grad],
        vec![],
        vec![pv, m, v],
    )?;
    cases.push(KernelCase {
        name: "adam 10M params".into(),
        graph: g,
        rate: Rate::Bytes(7.0 * 4.0 * n as f64),
        work: "bytes: read g,p,m,v; write p,m,v",
    });
    Ok(cases)
}

/// A session running `g` (one program) on `backend`, its inputs and
/// parameters filled with deterministic non-zero data and its optimiser
/// state zeroed (as in a fresh optimiser; a random negative second moment
/// would make Adam run on NaNs).
pub fn case_session(backend: &dyn Backend, g: &Graph) -> Result<Session> {
    let module = plan::compile(&[("p", g)])?;
    let mut s = Session::new(backend, module)?;
    for (name, v) in g.inputs() {
        let n = g.shape(v).numel();
        s.write_input(0, &name, &pseudo_random(n))?;
    }
    for (name, v) in g.persistent() {
        let n = g.shape(v).numel();
        let data = match g.value(v).role {
            crate::graph::ir::Role::State(_) => vec![0.0; n],
            _ => pseudo_random(n),
        };
        s.write_persistent(&name, &data)?;
    }
    // Only the train steps read these; a kernel case declares neither.
    for (name, v) in [("lr", 1e-3), ("step", 1.0)] {
        if s.has_scalar(name) {
            s.set_scalar(name, v)?;
        }
    }
    Ok(s)
}

fn pseudo_random(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 7) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Run the suite. `quick` keeps every case to a fraction of a second.
pub fn run(
    backend: &dyn Backend,
    quick: bool,
    process_start: Instant,
) -> Result<(Peaks, Vec<Figure>)> {
    // Cold start first: from process start to one finished train step.
    let mut cnn = Classifier::new(cnn_config(vec![1, 28, 28], 64), backend)?;
    let (x, y) = (
        pseudo_random(64 * 784),
        (0..64).map(|i| i % 10).collect::<Vec<u32>>(),
    );
    cnn.train_step(&x, &y, 1e-3)?;
    let cold = process_start.elapsed().as_secs_f64();

    let peaks = measure_peaks();
    let budget = Duration::from_millis(if quick { 300 } else { 2000 });
    let mut s = Suite {
        backend,
        peaks,
        budget,
        out: Vec::new(),
    };
    s.out.push(Figure::plain(
        "cold start to first train step (cnn, mnist shape)".to_string(),
        cold,
        "ms",
        cold * 1e3,
        "process start to one finished step".to_string(),
    ));

    for case in kernel_cases()? {
        let t = s.graph(&case.graph);
        match case.rate {
            Rate::Flops(f) => s.compute(&case.name, t, f, case.work),
            Rate::Bytes(b) => s.memory(&case.name, t, b, case.work),
        }
    }

    let mlp = ModelSpec::sequential(
        "mlp-2048-512-20",
        vec![
            Layer::Flatten,
            Layer::Dense {
                units: 512,
                bias: true,
            },
            Layer::Relu,
            Layer::Dense {
                units: 20,
                bias: true,
            },
        ],
    );
    let cases = [
        (
            "cnn train step cifar b64",
            ModelSpec::cnn(10),
            vec![3, 32, 32],
            64,
            10,
        ),
        (
            "cnn train step mnist b64",
            ModelSpec::cnn(10),
            vec![1, 28, 28],
            64,
            10,
        ),
        (
            "mlp 2048-512-20 train step b256",
            mlp,
            vec![2048, 1, 1],
            256,
            20,
        ),
    ];
    for (name, spec, input, batch, classes) in cases {
        let mut cfg = cnn_config(input.clone(), batch);
        cfg.spec = spec;
        cfg.classes = classes;
        let mut m = Classifier::new(cfg, backend)?;
        let x = pseudo_random(batch * input.iter().product::<usize>());
        let y: Vec<u32> = (0..batch as u32).map(|i| i % classes as u32).collect();
        let t = s.time(|| m.train_step(&x, &y, 1e-4).map(|_| ()))?;
        s.out.push(Figure::plain(
            name.into(),
            t,
            "img/s",
            batch as f64 / t,
            format!("{batch} examples per step"),
        ));
    }

    // Where a device's time goes: per-kernel device times of the CIFAR
    // train step and of batch-1 inference, where the device has timers.
    for (what, batch, train) in [
        ("cifar b64 train step", 64, true),
        ("batch-1 inference", 1, false),
    ] {
        let mut cfg = cnn_config(vec![3, 32, 32], batch);
        if !train {
            cfg.train_batch = None;
        }
        s.kernel_times(what, &cfg, if train { "train" } else { "infer" })?;
    }

    // Batch-1 inference latency of the CNN (CIFAR shape) through the
    // embedding API, median and p99: on as many threads as the rest of the
    // bench (a predictor with a team, like PyTorch's `set_num_threads`),
    // then on the calling thread alone (a service's one predictor per
    // core).
    let mut cfg = cnn_config(vec![3, 32, 32], 1);
    cfg.train_batch = None;
    let weights = SharedWeights::from_model(&mut Classifier::new(cfg, backend)?)?;
    let x = pseudo_random(3 * 32 * 32);
    let all = if backend.is_cpu() {
        rayon::current_num_threads()
    } else {
        1
    };
    let runs: &[(usize, &str)] = if all > 1 {
        &[(all, ""), (1, " (1 thread)")]
    } else {
        &[(1, "")]
    };
    for &(threads, suffix) in runs {
        let mut p = Predictor::new(&weights, 1, backend)?.threads(threads)?;
        // Warm-up calls first, as the PyTorch and burn harnesses do.
        for _ in 0..20 {
            p.run(&x)?;
        }
        let mut lat: Vec<f64> = Vec::with_capacity(1 << 16);
        let deadline = Instant::now() + budget * 2;
        while Instant::now() < deadline || lat.len() < 50 {
            let t = Instant::now();
            p.run(&x)?;
            lat.push(t.elapsed().as_secs_f64());
        }
        lat.sort_by(f64::total_cmp);
        for (q, label) in [(0.5, "median"), (0.99, "p99")] {
            let v = lat[((lat.len() - 1) as f64 * q) as usize];
            s.out.push(Figure::plain(
                format!("cnn batch-1 inference {label}{suffix}"),
                v,
                "us",
                v * 1e6,
                format!("{} calls, {threads} thread(s)", lat.len()),
            ));
        }
    }
    Ok((s.peaks, s.out))
}

fn cnn_config(input: Vec<usize>, batch: usize) -> ClassifierConfig {
    ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input,
        classes: 10,
        train_batch: Some(batch),
        infer_batch: 1,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 1,
        fuse: true,
    }
}

pub fn render(peaks: &Peaks, figs: &[Figure]) -> String {
    let theory = format!(
        "; theoretical {:.1} = {} FLOP/cycle/core at {:.2} GHz, probe at {:.0}% of it",
        peaks.theoretical_gflops,
        peaks.flops_per_cycle,
        peaks.clock_ghz,
        100.0 * peaks.fma_gflops / peaks.theoretical_gflops
    );
    let mut s = format!(
        "machine peak: {:.1} GFLOP/s FMA on {} ({} threads{theory}), {:.1} GB/s memory\n",
        peaks.fma_gflops, peaks.isa, peaks.threads, peaks.mem_gbps
    );
    if peaks.gemm_isa != peaks.isa {
        s += &format!(
            "note: the gemm crate runs {} kernels, so GEMM percentages exceed this peak (build with --no-default-features to cap it)\n",
            peaks.gemm_isa
        );
    }
    s += &format!(
        "{:<52} {:>12} {:>14} {:>8}\n",
        "benchmark", "time", "rate", "% peak"
    );
    for f in figs {
        if let Some(why) = &f.skipped {
            s += &format!("{:<52} skipped: {why}\n", f.name);
            continue;
        }
        let time = if f.seconds < 1e-3 {
            format!("{:.1} us", f.seconds * 1e6)
        } else {
            format!("{:.3} ms", f.seconds * 1e3)
        };
        let pct = f
            .percent_of_peak
            .map_or(String::new(), |p| format!("{p:.0}%"));
        s += &format!(
            "{:<52} {:>12} {:>14} {:>8}\n",
            f.name,
            time,
            format!("{:.1} {}", f.value, f.unit),
            pct
        );
    }
    s
}
