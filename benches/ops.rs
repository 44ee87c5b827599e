//! CPU benchmarks: GEMM, conv2d, softmax, Adam, and whole train steps.
//! Throughput is reported by criterion from the FLOP/byte counts written
//! next to each case. Compare against `../shared/peers/torch_bench.py`
//! run on the same machine.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gpurt::backend::cpu::conv2d::{self as conv2d_cpu, Conv2dGeom};
use gpurt::backend::cpu::matmul::{sgemm, Threads};
use gpurt::backend::cpu::CpuBackend;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use rand::{Rng, SeedableRng};
use std::time::Duration;

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_f32");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for n in [256usize, 1024, 2048] {
        let (a, b) = (rand_vec(n * n, 1), rand_vec(n * n, 2));
        let mut out = vec![0.0; n * n];
        // FLOPs: 2·n³.
        g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bch, &n| {
            bch.iter(|| {
                sgemm(
                    n,
                    n,
                    n,
                    &a,
                    false,
                    &b,
                    false,
                    &mut out,
                    false,
                    Threads::Parallel,
                )
            })
        });
    }
    // The MLP train step's two large products (batch 256, 2048 -> 512):
    // forward `X · W1ᵀ` and the weight gradient `dHᵀ · X`.
    for (name, m, n, k, a_t, b_t) in [
        ("mlp_fwd_256x512x2048_bt", 256, 512, 2048, false, true),
        ("mlp_fwd_256x512x2048_nn", 256, 512, 2048, false, false),
        ("mlp_dw_512x2048x256_at", 512, 2048, 256, true, false),
    ] {
        let (a, b) = (rand_vec(m * k, 1), rand_vec(k * n, 2));
        let mut out = vec![0.0; m * n];
        g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| {
                sgemm(
                    m,
                    n,
                    k,
                    &a,
                    a_t,
                    &b,
                    b_t,
                    &mut out,
                    false,
                    Threads::Parallel,
                )
            })
        });
    }
    g.finish();
}

fn conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv2d");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let geoms = [
        (
            "N64_C32to64_32x32_pad1",
            Conv2dGeom {
                n: 64,
                c_in: 32,
                h: 32,
                w: 32,
                c_out: 64,
                kh: 3,
                kw: 3,
                stride: (1, 1),
                pad: (1, 1),
                dilation: (1, 1),
            },
        ),
        (
            "N64_C3to32_32x32_pad1",
            Conv2dGeom {
                n: 64,
                c_in: 3,
                h: 32,
                w: 32,
                c_out: 32,
                kh: 3,
                kw: 3,
                stride: (1, 1),
                pad: (1, 1),
                dilation: (1, 1),
            },
        ),
    ];
    for (name, geo) in geoms {
        let (oh, ow) = geo.out_hw().unwrap();
        let x = rand_vec(geo.n * geo.c_in * geo.h * geo.w, 3);
        let w = rand_vec(geo.c_out * geo.c_in * 9, 4);
        let b = rand_vec(geo.c_out, 5);
        let dy = rand_vec(geo.n * geo.c_out * oh * ow, 6);
        let mut y = vec![0.0; dy.len()];
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        // FLOPs: 2·N·Cout·OH·OW·Cin·KH·KW forward; twice that for dx + dw.
        let f = geo.flops_forward();
        g.throughput(Throughput::Elements(f));
        g.bench_function(format!("forward/{name}"), |bch| {
            bch.iter(|| conv2d_cpu::conv2d_forward(&geo, &x, &w, Some(&b), &mut y))
        });
        g.throughput(Throughput::Elements(2 * f));
        g.bench_function(format!("backward_dx_dw/{name}"), |bch| {
            bch.iter(|| {
                conv2d_cpu::conv2d_grad_input(&geo, &dy, &w, &mut dx);
                conv2d_cpu::conv2d_grad_weight(&geo, &x, &dy, &mut dw);
            })
        });
    }
    g.finish();
}

fn train_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let cases: [(&str, ModelSpec, Vec<usize>, usize); 3] = [
        ("cnn_cifar_b64", ModelSpec::cnn(10), vec![3, 32, 32], 64),
        ("cnn_mnist_b64", ModelSpec::cnn(10), vec![1, 28, 28], 64),
        (
            "mlp_2048_512_20_b256",
            ModelSpec::sequential(
                "mlp",
                vec![
                    gpurt::nn::Layer::Flatten,
                    gpurt::nn::Layer::Dense {
                        units: 512,
                        bias: true,
                    },
                    gpurt::nn::Layer::Relu,
                    gpurt::nn::Layer::Dense {
                        units: 20,
                        bias: true,
                    },
                ],
            ),
            vec![2048, 1, 1],
            256,
        ),
    ];
    for (name, spec, input, batch) in cases {
        let classes = if name.starts_with("mlp") { 20 } else { 10 };
        // Fused is the default; unfused is the same build with the passes off.
        for fuse in [true, false] {
            let cfg = ClassifierConfig {
                spec: spec.clone(),
                input: input.clone(),
                classes,
                train_batch: Some(batch),
                infer_batch: 1,
                optim: OptimConfig::new(OptimizerKind::Adam),
                seed: 1,
                fuse,
            };
            let mut m = Classifier::new(cfg, &CpuBackend::new()).unwrap();
            let x = rand_vec(batch * input.iter().product::<usize>(), 7);
            let y: Vec<u32> = (0..batch as u32).map(|i| i % classes as u32).collect();
            g.throughput(Throughput::Elements(batch as u64));
            let label = format!("{name}/{}", if fuse { "fused" } else { "unfused" });
            g.bench_function(label, |bch| {
                bch.iter(|| m.train_step(&x, &y, 1e-4).unwrap())
            });
        }
    }
    g.finish();
}

/// Softmax over 4096 rows of 4096 (bytes: x read once, y written once, as
/// PyTorch counts them) and one Adam step over 10M parameters (bytes: g, p,
/// m, v read; p, m, v written).
fn softmax_adam(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_bound");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let n = 4096;
    let x = rand_vec(n * n, 3);
    let mut y = vec![0.0; n * n];
    g.throughput(Throughput::Bytes(2 * 4 * (n * n) as u64));
    g.bench_function("softmax_4096x4096", |b| {
        b.iter(|| gpurt::backend::cpu::softmax::cpu_softmax(n, false, &x, &mut y))
    });
    let n = 10_000_000;
    let grad = rand_vec(n, 4);
    let (mut p, mut m, mut v) = (rand_vec(n, 5), vec![0.0; n], vec![0.0; n]);
    let cfg = gpurt::ops::adam::AdamConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        lr: gpurt::graph::ir::ScalarId(0),
        step: gpurt::graph::ir::ScalarId(1),
    };
    g.throughput(Throughput::Bytes(7 * 4 * n as u64));
    g.bench_function("adam_10M", |b| {
        b.iter(|| {
            gpurt::backend::cpu::adam::cpu_update(&cfg, 1e-3, 1.0, &grad, &mut p, &mut m, &mut v)
        })
    });
    g.finish();
}

/// Batch-1 inference of the small CNN (CIFAR shape) through the embedding
/// API, on the calling thread: criterion's mean; `gpurt bench` reports the
/// median and p99.
fn infer_batch1(c: &mut Criterion) {
    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input: vec![3, 32, 32],
        classes: 10,
        train_batch: None,
        infer_batch: 1,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 1,
        fuse: true,
    };
    let backend = CpuBackend::new();
    let mut model = Classifier::new(cfg, &backend).unwrap();
    let weights = gpurt::embed::SharedWeights::from_model(&mut model).unwrap();
    let mut p = gpurt::embed::Predictor::new(&weights, 1, &backend).unwrap();
    let x = rand_vec(3 * 32 * 32, 6);
    let mut g = c.benchmark_group("infer_batch1");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    g.bench_function("cnn_cifar", |b| b.iter(|| p.run(&x).unwrap()[0]));
    g.finish();
}

/// The kernel cases of `gpurt bench` (`gpurt::bench::kernel_cases`: GEMM,
/// conv forward/backward, softmax, Adam) on a wgpu adapter, through the
/// executor; skipped with a line on stderr when no adapter opens. Cases over
/// 4 GFLOP are skipped on a software adapter (lavapipe runs ~3 GFLOP/s).
#[cfg(feature = "wgpu")]
fn kernels_wgpu(c: &mut Criterion) {
    use gpurt::bench::{case_session, kernel_cases, Rate};
    let backend = match gpurt::backend::wgpu::open(None) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: kernels_wgpu: {e}");
            return;
        }
    };
    use gpurt::backend::Backend;
    let software = {
        let name = backend.name().to_lowercase();
        name.contains("llvmpipe") || name.contains("lavapipe") || name.contains("cpu")
    };
    let mut g = c.benchmark_group("kernels_wgpu");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for case in kernel_cases().unwrap() {
        let id = case.name.replace(' ', "_");
        match case.rate {
            Rate::Flops(f) if software && f > 4e9 => {
                eprintln!(
                    "SKIPPED: kernels_wgpu/{id}: {:.1} GFLOP on a software adapter",
                    f / 1e9
                );
                continue;
            }
            Rate::Flops(f) => g.throughput(Throughput::Elements(f as u64)),
            Rate::Bytes(b) => g.throughput(Throughput::Bytes(b as u64)),
        };
        let mut s = match case_session(&backend, &case.graph) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("SKIPPED: kernels_wgpu/{id}: {e}");
                continue;
            }
        };
        g.bench_function(id, |b| {
            b.iter(|| {
                s.run(0).unwrap();
                s.finish().unwrap()
            })
        });
    }
    g.finish();
}

#[cfg(not(feature = "wgpu"))]
fn kernels_wgpu(_: &mut Criterion) {}

/// The CNN train step on a wgpu adapter (lavapipe in CI), fused and
/// unfused; skipped with a line on stderr when no adapter opens.
#[cfg(feature = "wgpu")]
fn train_step_wgpu(c: &mut Criterion) {
    let backend = match gpurt::backend::wgpu::open(None) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: train_step_wgpu: {e}");
            return;
        }
    };
    let mut g = c.benchmark_group("train_step_wgpu");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for fuse in [true, false] {
        let cfg = ClassifierConfig {
            spec: ModelSpec::cnn(10),
            input: vec![1, 28, 28],
            classes: 10,
            train_batch: Some(64),
            infer_batch: 1,
            optim: OptimConfig::new(OptimizerKind::Adam),
            seed: 1,
            fuse,
        };
        let mut m = Classifier::new(cfg, &backend).unwrap();
        let x = rand_vec(64 * 784, 7);
        let y: Vec<u32> = (0..64u32).map(|i| i % 10).collect();
        g.throughput(Throughput::Elements(64));
        let label = format!("cnn_mnist_b64/{}", if fuse { "fused" } else { "unfused" });
        g.bench_function(label, |bch| {
            bch.iter(|| m.train_step(&x, &y, 1e-4).unwrap())
        });
    }
    g.finish();
}

#[cfg(not(feature = "wgpu"))]
fn train_step_wgpu(_: &mut Criterion) {}

criterion_group!(
    benches,
    gemm,
    conv,
    softmax_adam,
    infer_batch1,
    train_step,
    kernels_wgpu,
    train_step_wgpu
);
criterion_main!(benches);
