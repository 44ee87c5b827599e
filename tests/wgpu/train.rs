//! Whole train steps on wgpu against the CPU backend: the same loss and the
//! same updated weights and optimiser state (relative error below 1e-4 per
//! tensor), for the small CNN preset, ResNet-20, and a model that uses
//! batch norm, dropout, average pooling, GELU and SGD with Nesterov
//! momentum.
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

fn batch_seeded(n: usize, len: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
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
    train_on(cfg, b, steps, 7)
}

fn train_on(
    cfg: &ClassifierConfig,
    b: &dyn Backend,
    steps: usize,
    data_seed: u64,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let mut c = Classifier::new(cfg.clone(), b).unwrap();
    let n = cfg.train_batch.unwrap();
    let (x, y) = batch_seeded(n, cfg.input.iter().product(), data_seed);
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
    compare_on(test, g, cfg, steps, 7)
}

fn compare_on(test: &str, g: &WgpuBackend, cfg: &ClassifierConfig, steps: usize, seed: u64) {
    let (l_cpu, w_cpu) = train_on(cfg, &CpuBackend::new(), steps, seed);
    let (l_gpu, w_gpu) = train_on(cfg, g, steps, seed);
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

/// The smallest |input| of any relu in one forward pass of the train
/// step on the CPU, for the batch drawn from `seed`.
fn relu_margin(cfg: &ClassifierConfig, seed: u64) -> f32 {
    use gpurt::graph::exec::Session;
    use gpurt::graph::ir::Role;
    use gpurt::ops::{Activation, Op};
    let n = cfg.train_batch.unwrap();
    let mut graph = Classifier::train_graph(cfg, n).unwrap();
    let relu_inputs: Vec<_> = graph
        .nodes
        .iter()
        .filter(|node| node.op == Op::Act(Activation::Relu))
        .map(|node| node.inputs[0])
        .collect();
    for (k, v) in relu_inputs.iter().enumerate() {
        graph.set_output(&format!("relu_in{k}"), *v);
    }
    let module = gpurt::graph::plan::compile(&[("train", &graph)]).unwrap();
    let mut s = Session::new(&CpuBackend::new(), module).unwrap();
    let decls = cfg.spec.declare(&cfg.input).unwrap();
    for (name, t) in gpurt::nn::init::init_params(&decls, cfg.seed) {
        s.write_persistent(&name, &t.data).unwrap();
    }
    let p = s.program("train").unwrap();
    s.set_scalar("lr", 1e-3).unwrap();
    let (x, y) = batch_seeded(n, cfg.input.iter().product(), seed);
    s.write_input(p, "x", &x).unwrap();
    s.write_input_u32(p, "y", &y).unwrap();
    s.run(p).unwrap();
    let mut margin = f32::INFINITY;
    for (k, v) in relu_inputs.iter().enumerate() {
        assert!(matches!(graph.values[v.0 as usize].role, Role::Computed));
        let mut out = vec![0.0; graph.shape(*v).numel()];
        s.read_output(p, &format!("relu_in{k}"), &mut out).unwrap();
        margin = out.iter().fold(margin, |m, z| m.min(z.abs()));
    }
    margin
}

/// The #14 acceptance: a ResNet-20 train step on Fashion-MNIST-shaped
/// input (SGD with momentum and weight decay, as `gpurt train` runs it)
/// gives the CPU's loss and every weight, running statistic and momentum
/// buffer to 1e-4.
///
/// A relu input within rounding of 0 can fall on different sides of the
/// kink on the two backends, and then the gradients differ by that
/// element's whole value: batch norm makes relu inputs dense around 0, so
/// with 19 relus over 25k values each one usually is. As in the gradient
/// checks, the batch is drawn again until every relu input on the CPU is
/// at least 2e-6 from 0 (forward values agree to about 1e-7 here).
#[test]
fn resnet20_train_step_matches_cpu() {
    let test = "resnet20_train_step_matches_cpu";
    let Some(g) = gpu(test) else { return };
    let mut optim = OptimConfig::new(OptimizerKind::Sgd);
    optim.weight_decay = 5e-4;
    let cfg = ClassifierConfig {
        spec: ModelSpec::resnet(20, 10),
        input: vec![1, 28, 28],
        classes: 10,
        train_batch: Some(8),
        infer_batch: 2,
        optim,
        seed: 20,
        fuse: true,
    };
    let seed = (1..40)
        .find(|&s| relu_margin(&cfg, s) > 2e-6)
        .expect("a batch with every relu input 2e-6 from its kink");
    compare_on(test, g, &cfg, 1, seed);
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

/// The adapter asks for no CPU-only fusion, and a module fused with the
/// CPU's extras (a pooled convolution) is refused with a typed error.
#[test]
fn a_cpu_only_fusion_is_refused_with_a_typed_error() {
    let Some(g) = gpu("a_cpu_only_fusion_is_refused_with_a_typed_error") else {
        return;
    };
    assert_eq!(g.fuse_extras(), Default::default());
    let module = std::sync::Arc::new(crate::common::pooled_conv_module());
    crate::common::assert_refuses_pooled_conv("wgpu", g.compile(module));
}
