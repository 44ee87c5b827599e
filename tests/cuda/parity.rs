//! The CUDA backend against the CPU backend, on a GPU: every op case of the
//! shared catalogue (tests/common/catalogue.rs: odd sizes, unfused and
//! fused, in-place launches) with
//! relative error < 1e-4 (1e-3 for reductions over more than 10,000
//! elements), then whole train steps (eager first run, then CUDA graph
//! capture and replay) and a classifier trained through the public API.
//! With no usable CUDA device each test prints one SKIPPED line and passes.

#![cfg(feature = "cuda")]

use crate::common::catalogue::{self, Prepared};
use crate::common::rel_err_f32;

use gpurt::backend::cuda;
use gpurt::backend::Backend;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use std::sync::Arc;

/// The device, or None after printing the SKIPPED line.
fn device(test: &str) -> Option<cuda::CudaBackend> {
    match cuda::open(0) {
        Ok(b) => Some(b),
        Err(e) => {
            let why = match e {
                gpurt::Error::Device { detail, .. } => detail,
                other => other.to_string(),
            };
            println!("SKIPPED: {test}: no CUDA driver ({why})");
            None
        }
    }
}

fn check(what: &str, backend: &cuda::CudaBackend, cases: Vec<Prepared>) {
    let compile = |m: Arc<gpurt::graph::plan::Module>| backend.compile(m);
    catalogue::check_all(what, &cases, &[("cuda", &compile)]);
}

#[test]
fn cuda_ops_match_cpu() {
    let Some(b) = device("cuda_ops_match_cpu") else {
        return;
    };
    println!("device: {}", b.name());
    check("cuda ops", &b, catalogue::op_cases());
}

#[test]
fn cuda_train_steps_match_cpu() {
    let Some(b) = device("cuda_train_steps_match_cpu") else {
        return;
    };
    let mut all = catalogue::model_cases();
    // Three steps: eager, captured, replayed. Several steps of Adam
    // amplify rounding differences in tiny gradients, hence 1e-3.
    all.push(catalogue::classifier_case(
        ModelSpec::cnn(10),
        vec![3, 32, 32],
        16,
        OptimizerKind::Adam,
        3,
        catalogue::TOL_BIG_REDUCTION,
    ));
    for p in &mut all {
        p.tol = p.tol.max(catalogue::TOL_BIG_REDUCTION);
    }
    check("cuda train steps", &b, all);
}

#[test]
fn cuda_graph_is_captured_and_replays_identically() {
    let Some(b) = device("cuda_graph_is_captured_and_replays_identically") else {
        return;
    };
    let p = catalogue::classifier_case(
        ModelSpec::cnn(10),
        vec![1, 28, 28],
        8,
        OptimizerKind::Sgd,
        1,
        0.0,
    );
    let mut exe = b.compile_cuda(Arc::clone(&p.module)).unwrap();
    use gpurt::backend::Executable;
    for (s, d) in &p.persistent {
        exe.write(*s, d).unwrap();
    }
    let loss_slot = p.module.programs[p.program].output("loss").unwrap().slot;
    let mut losses = Vec::new();
    for _ in 0..4 {
        for (s, d) in &p.inputs {
            exe.write(*s, d).unwrap();
        }
        exe.run(p.program, &p.scalars).unwrap();
        let mut l = [0.0f32];
        exe.read(loss_slot, &mut l).unwrap();
        losses.push(l[0]);
    }
    assert!(
        exe.is_captured(p.program),
        "the train program was not captured as a CUDA graph"
    );
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        losses[3] < losses[0],
        "SGD on a fixed batch must lower the loss: {losses:?}"
    );
    let ms = exe.time_program(p.program, &p.scalars, 5).unwrap();
    assert!(ms > 0.0);
}

#[test]
fn cuda_classifier_trains_like_cpu() {
    let Some(b) = device("cuda_classifier_trains_like_cpu") else {
        return;
    };
    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input: vec![1, 28, 28],
        classes: 10,
        train_batch: Some(16),
        infer_batch: 4,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 7,
        fuse: true,
    };
    let x: Vec<f32> = (0..16 * 784)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let y: Vec<u32> = (0..16).map(|i| (i % 10) as u32).collect();
    let mut gpu = Classifier::new(cfg.clone(), &b).unwrap();
    let mut cpu = Classifier::new(cfg, &gpurt::backend::cpu::CpuBackend::new()).unwrap();
    for step in 0..5 {
        let (lg, lc) = (
            gpu.train_step(&x, &y, 1e-3).unwrap(),
            cpu.train_step(&x, &y, 1e-3).unwrap(),
        );
        assert!(
            (lg - lc).abs() <= 1e-3 * lc.abs().max(1.0),
            "step {step}: loss {lg} vs {lc}"
        );
    }
    let (mut og, mut oc) = (vec![0.0; 40], vec![0.0; 40]);
    gpu.infer(&x[..4 * 784], &mut og).unwrap();
    cpu.infer(&x[..4 * 784], &mut oc).unwrap();
    let e = rel_err_f32(&og, &oc);
    assert!(e < 1e-3, "inference logits differ by {e:.2e}");
}

/// NCCL loads and all-reduces on one rank where the library is present;
/// where it is not, the error is one clean line that names it.
#[cfg(feature = "nccl")]
#[test]
fn nccl_world_of_one_all_reduce() {
    if device("nccl_world_of_one_all_reduce").is_none() {
        return;
    }
    match cuda::nccl_self_test(0) {
        Ok(s) => println!("{s}"),
        Err(e) if !gpurt::dist::nccl::available() => {
            assert!(e.to_string().contains("libnccl"), "{e}");
            println!("SKIPPED: nccl_world_of_one_all_reduce: {e}");
        }
        Err(e) => panic!("{e}"),
    }
}
