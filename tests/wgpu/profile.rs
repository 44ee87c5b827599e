//! Per-kernel timing of the small CNN's train step on the wgpu adapter
//! (timestamp queries). Not a pass/fail test: run with
//! `cargo test --release --test wgpu profile:: -- --ignored --nocapture`.

#![cfg(feature = "wgpu")]

use gpurt::backend::wgpu;
use gpurt::graph::plan::Module;
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

/// The small CNN's module (Adam, fused) for one input shape.
fn cnn_module(input: Vec<usize>, train_batch: Option<usize>, infer_batch: usize) -> Arc<Module> {
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
    Arc::new(Classifier::module(&cfg).unwrap())
}

fn profile_cnn(input: Vec<usize>, train_batch: Option<usize>, infer_batch: usize) {
    let b = match wgpu::open(None) {
        Ok(b) => b,
        Err(e) => {
            println!("SKIPPED: profile_cnn: no wgpu adapter ({e})");
            return;
        }
    };
    let module = cnn_module(input, train_batch, infer_batch);
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

/// Where the batch-1 inference latency goes on the adapter: writing the
/// input, recording and submitting the program, and reading the logits
/// back (copy, submit, map, wait), each the median of 300 calls, against
/// the device time of the kernels alone (timestamp queries).
#[test]
#[ignore]
fn profile_batch1_latency_phases() {
    use gpurt::backend::Executable;
    use std::time::Instant;
    let b = match wgpu::open(None) {
        Ok(b) => b,
        Err(e) => {
            println!("SKIPPED: profile_batch1_latency_phases: no wgpu adapter ({e})");
            return;
        }
    };
    let module = cnn_module(vec![3, 32, 32], None, 1);
    let p = module
        .programs
        .iter()
        .position(|p| p.name == "infer")
        .unwrap();
    let prog = &module.programs[p];
    let input = prog.inputs[0].slot;
    let output = prog
        .outputs
        .iter()
        .find(|o| o.name == "logits")
        .unwrap()
        .slot;
    let scalars = vec![1.0; module.scalars.len()];
    let mut exe = b.compile_wgpu(Arc::clone(&module)).unwrap();
    let x: Vec<f32> = (0..3 * 32 * 32)
        .map(|i| ((i * 37 % 101) as f32) / 101.0 - 0.5)
        .collect();
    let mut logits = vec![0.0; output.len];
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e6
    };
    let (mut w, mut r, mut rd, mut all) = (vec![], vec![], vec![], vec![]);
    for i in 0..350 {
        let t0 = Instant::now();
        exe.write(input, &x).unwrap();
        let t1 = Instant::now();
        exe.run(p, &scalars).unwrap();
        let t2 = Instant::now();
        exe.read(output, &mut logits).unwrap();
        let t3 = Instant::now();
        if i >= 50 {
            w.push((t1 - t0).as_secs_f64());
            r.push((t2 - t1).as_secs_f64());
            rd.push((t3 - t2).as_secs_f64());
            all.push((t3 - t0).as_secs_f64());
        }
    }
    let device: f64 = exe.profile(p, &scalars).unwrap().iter().map(|t| t.1).sum();
    println!(
        "batch-1 phases (median us): write {:.1}, record+submit {:.1}, read-back incl. the wait {:.1}, total {:.1}; kernels' device time {:.1}",
        median(&mut w),
        median(&mut r),
        median(&mut rd),
        median(&mut all),
        device * 1e6
    );
}

/// Seconds to compile the small CNN's MNIST module (train step at batch
/// 64 and inference) on a fresh device, with each GEMM style: most of
/// `gpurt bench`'s cold start is the adapter compiling pipelines.
#[test]
#[ignore]
fn profile_module_compile() {
    use gpurt::backend::wgpu::GemmStyle;
    use std::time::Instant;
    let module = cnn_module(vec![1, 28, 28], Some(64), 256);
    for style in [GemmStyle::Direct, GemmStyle::Tiled] {
        let b = match wgpu::open(None) {
            Ok(b) => b,
            Err(e) => {
                println!("SKIPPED: profile_module_compile: no wgpu adapter ({e})");
                return;
            }
        };
        let Ok(b) = b.with_gemm_style(style) else {
            continue;
        };
        let t = Instant::now();
        b.compile_wgpu(Arc::clone(&module)).unwrap();
        println!("{style:?}: {:.2} s", t.elapsed().as_secs_f64());
    }
}
