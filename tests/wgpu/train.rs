//! Whole train steps on wgpu against the CPU backend: the same loss and the
//! same updated weights and optimiser state (relative error below 1e-4 per
//! tensor), for the small CNN preset and for a model that uses batch norm,
//! dropout, average pooling, GELU and SGD with Nesterov momentum.
//!
//! With no adapter every test prints `SKIPPED: <test>: no wgpu adapter
//! (<reason>)` and passes, unless GPURT_REQUIRE_WGPU=1.

#![cfg(feature = "wgpu")]

use crate::common::rel_err_f32 as rel_err;
use crate::gate::gpu;
use gpurt::backend::cpu::CpuBackend;
use gpurt::backend::wgpu::WgpuBackend;
use gpurt::backend::Backend;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::spec::Layer;
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use rand::{Rng, SeedableRng};

const TOL: f64 = 1e-4;

fn batch(n: usize, len: usize) -> (Vec<f32>, Vec<u32>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let x = (0..n * len)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let y = (0..n).map(|_| rng.random_range(0..10u32)).collect();
    (x, y)
}

/// `steps` train steps; the losses, then every weight and optimiser
/// tensor.
fn train(
    cfg: &ClassifierConfig,
    b: &dyn Backend,
    steps: usize,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let mut c = Classifier::new(cfg.clone(), b).unwrap();
    let n = cfg.train_batch.unwrap();
    let (x, y) = batch(n, cfg.input.iter().product());
    let losses = (0..steps)
        .map(|_| c.train_step(&x, &y, 1e-3).unwrap())
        .collect();
    let mut tensors: Vec<(String, Vec<f32>)> = c
        .model_tensors()
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.data))
        .collect();
    tensors.extend(
        c.optim_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.data)),
    );
    (losses, tensors)
}

fn compare(test: &str, g: &WgpuBackend, cfg: &ClassifierConfig, steps: usize) {
    let (l_cpu, w_cpu) = train(cfg, &CpuBackend::new(), steps);
    let (l_gpu, w_gpu) = train(cfg, g, steps);
    let e = rel_err(&l_gpu, &l_cpu);
    assert!(e < TOL, "{test}: losses {l_gpu:?} vs cpu {l_cpu:?}");
    assert_eq!(w_cpu.len(), w_gpu.len());
    for ((n, c), (_, w)) in w_cpu.iter().zip(&w_gpu) {
        let e = rel_err(w, c);
        assert!(
            e < TOL,
            "{test}: '{n}' relative error {e:.3e}\n  wgpu {:?}\n  cpu  {:?}",
            &w[..w.len().min(6)],
            &c[..c.len().min(6)]
        );
    }
}

#[test]
fn cnn_train_step_matches_cpu() {
    let Some(g) = gpu("cnn_train_step_matches_cpu") else {
        return;
    };
    for fuse in [true, false] {
        let cfg = ClassifierConfig {
            spec: ModelSpec::cnn(10),
            input: vec![1, 28, 28],
            classes: 10,
            train_batch: Some(16),
            infer_batch: 4,
            optim: OptimConfig::new(OptimizerKind::Adam),
            seed: 42,
            fuse,
        };
        compare(
            &format!("cnn_train_step_matches_cpu fuse={fuse}"),
            g,
            &cfg,
            1,
        );
    }
}

#[test]
fn batchnorm_dropout_model_matches_cpu() {
    use Layer::*;
    let Some(g) = gpu("batchnorm_dropout_model_matches_cpu") else {
        return;
    };
    let spec = ModelSpec::sequential(
        "bn",
        vec![
            Conv2d {
                filters: 8,
                kernel: 3,
                stride: 1,
                padding: 1,
                dilation: 1,
                bias: false,
            },
            BatchNorm2d {
                eps: 1e-5,
                momentum: 0.1,
            },
            Gelu,
            AvgPool2d {
                kernel: 2,
                stride: None,
            },
            Conv2d {
                filters: 7,
                kernel: 3,
                stride: 2,
                padding: 1,
                dilation: 1,
                bias: true,
            },
            Tanh,
            Dropout { rate: 0.25 },
            GlobalAvgPool,
            Dense {
                units: 33,
                bias: true,
            },
            Sigmoid,
            Dense {
                units: 10,
                bias: true,
            },
        ],
    );
    let mut optim = OptimConfig::new(OptimizerKind::Sgd);
    optim.nesterov = true;
    optim.weight_decay = 1e-4;
    let cfg = ClassifierConfig {
        spec,
        input: vec![3, 15, 15],
        classes: 10,
        train_batch: Some(7),
        infer_batch: 3,
        optim,
        seed: 3,
        fuse: true,
    };
    compare("batchnorm_dropout_model_matches_cpu", g, &cfg, 3);
}

/// Fixed-order reductions: the same steps on the same adapter give
/// bitwise-identical weights.
#[test]
fn wgpu_training_is_deterministic() {
    let test = "wgpu_training_is_deterministic";
    let Some(g) = gpu(test) else { return };
    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input: vec![1, 28, 28],
        classes: 10,
        train_batch: Some(16),
        infer_batch: 4,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 9,
        fuse: true,
    };
    let (l1, w1) = train(&cfg, g, 3);
    let (l2, w2) = train(&cfg, g, 3);
    assert_eq!(l1, l2, "{test}: losses differ");
    for ((n, a), (_, b)) in w1.iter().zip(&w2) {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{test}: '{n}' differs between identical runs"
        );
    }
}
