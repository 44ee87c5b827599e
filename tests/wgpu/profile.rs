//! Per-kernel timing of the small CNN's train step on the wgpu adapter
//! (timestamp queries). Not a pass/fail test: run with
//! `cargo test --release --test wgpu profile:: -- --ignored --nocapture`.

#![cfg(feature = "wgpu")]

use gpurt::backend::wgpu;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use std::collections::BTreeMap;
use std::sync::Arc;

#[test]
#[ignore]
fn profile_cnn_train_step() {
    profile_cnn(vec![1, 28, 28], Some(64), 256);
}

/// The CIFAR-shape CNN's batch-1 inference program, as `gpurt bench`'s
/// latency figure runs it.
#[test]
#[ignore]
fn profile_cnn_infer_batch1() {
    profile_cnn(vec![3, 32, 32], None, 1);
}

fn profile_cnn(input: Vec<usize>, train_batch: Option<usize>, infer_batch: usize) {
    let b = match wgpu::open(None) {
        Ok(b) => b,
        Err(e) => {
            println!("SKIPPED: profile_cnn: no wgpu adapter ({e})");
            return;
        }
    };
    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input,
        classes: 10,
        train_batch,
        infer_batch,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 1,
        fuse: true,
    };
    let module = Arc::new(Classifier::module(&cfg).unwrap());
    let scalars: Vec<f32> = module
        .scalars
        .iter()
        .map(|s| if s == "lr" { 1e-3 } else { 1.0 })
        .collect();
    let mut exe = b.compile_wgpu(Arc::clone(&module)).unwrap();
    for (p, prog) in module.programs.iter().enumerate() {
        // The first run pays for first touches; time the second.
        let _ = exe.profile(p, &scalars);
        let times = match exe.profile(p, &scalars) {
            Ok(t) => t,
            Err(e) => {
                println!("no timings: {e}");
                return;
            }
        };
        let total: f64 = times.iter().map(|t| t.1).sum();
        println!(
            "program '{}': {} dispatches, {:.2} ms",
            prog.name,
            times.len(),
            total * 1e3
        );
        let mut by: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for (k, s) in &times {
            let e = by.entry(k).or_default();
            e.0 += 1;
            e.1 += s;
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        for (k, (n, s)) in v {
            println!("  {k:28} x{n:<3} {:9.3} ms", s * 1e3);
        }
        for (i, (k, s)) in times.iter().enumerate() {
            println!("    #{i:<3} {k:28} {:9.3} ms", s * 1e3);
        }
    }
}

/// GFLOP/s of one large matmul and one convolution, for tuning.
#[test]
#[ignore]
fn profile_gemm_rates() {
    use gpurt::graph::ir::Graph;
    use gpurt::graph::plan;
    use gpurt::ops::ConvParams;
    use gpurt::tensor::DType;
    let b = match wgpu::open(None) {
        Ok(b) => b,
        Err(e) => {
            println!("SKIPPED: profile_gemm_rates: no wgpu adapter ({e})");
            return;
        }
    };
    let mut cases: Vec<(String, Graph, f64)> = Vec::new();
    for n in [256usize, 512, 1024] {
        let mut g = Graph::new(false);
        let x = g.input("a", [n, n], DType::F32).unwrap();
        let y = g.input("b", [n, n], DType::F32).unwrap();
        let z = g.matmul(x, y).unwrap();
        g.set_output("z", z);
        cases.push((format!("matmul {n}^3"), g, 2.0 * (n * n * n) as f64));
    }
    let mut g = Graph::new(false);
    let x = g.input("x", [64, 32, 13, 13], DType::F32).unwrap();
    let w = g.input("w", [64, 32, 3, 3], DType::F32).unwrap();
    let y = g.conv2d(x, w, None, ConvParams::default()).unwrap();
    g.set_output("y", y);
    cases.push((
        "conv 64x32x13x13 -> 64".into(),
        g,
        2.0 * 64.0 * 64.0 * 121.0 * 288.0,
    ));
    for (name, g, flops) in cases {
        let m = Arc::new(plan::compile(&[("p", &g)]).unwrap());
        let mut exe = b.compile_wgpu(m).unwrap();
        let _ = exe.profile(0, &[]).unwrap();
        let t = exe.profile(0, &[]).unwrap();
        let s: f64 = t.iter().map(|x| x.1).sum();
        println!("{name}: {:.2} ms, {:.2} GFLOP/s", s * 1e3, flops / s * 1e-9);
    }
}
