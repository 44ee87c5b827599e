//! GPU kernel timings for tools/gpu-check.sh (ignored by `cargo test`; run
//! with `--ignored`). For each shape of [`benches`] (SGEMM 4096³, conv
//! forward and backward N64 C32→64 32×32 3×3 pad 1, softmax 4096², Adam
//! over 10M parameters, the small-CNN train step at batch 64 on CIFAR-shaped
//! input) it prints one tab-separated line:
//!
//!   BENCH <key> <ms per run> <work> <unit>
//!
//! where work is FLOPs (unit GFLOP/s) or bytes moved (GB/s). Device time is
//! measured with CUDA events over back-to-back replays of the captured
//! program (the batch stays on the device, as in tools/torch_gpu_bench.py).

#![cfg(feature = "cuda")]

use crate::common::input;
use gpurt::backend::Executable;
use gpurt::graph::ir::Graph;
use gpurt::graph::plan::Module;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::ops::{ConvParams, Op};
use gpurt::optim::{OptimConfig, OptimizerKind};
use gpurt::tensor::Shape;
use std::sync::Arc;

#[test]
#[ignore = "needs a GPU; run by tools/gpu-check.sh"]
fn cuda_bench() {
    let b = match gpurt::backend::cuda::open(0) {
        Ok(b) => b,
        Err(e) => {
            println!("SKIPPED: cuda_bench: no CUDA driver ({e})");
            return;
        }
    };
    let iters: usize = std::env::var("GPURT_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for bench in benches() {
        let module = Arc::new(bench.module);
        let mut exe = b.compile_cuda(Arc::clone(&module)).unwrap();
        // Deterministic, moderate data (Adam's second moment must be >= 0).
        let words = module.arena_words;
        let mut fill = vec![0.0f32; words.min(1 << 24)];
        for (i, v) in fill.iter_mut().enumerate() {
            *v = ((i % 97) as f32 + 1.0) / 97.0;
        }
        let mut off = 0;
        while off < words {
            let n = fill.len().min(words - off);
            exe.write(
                gpurt::graph::plan::Slot {
                    offset: off,
                    len: n,
                },
                &fill[..n],
            )
            .unwrap();
            off += n;
        }
        // Labels must be valid class indices.
        let prog = &module.programs[bench.program];
        for inp in &prog.inputs {
            if inp.dtype == gpurt::DType::U32 {
                let labels: Vec<f32> = (0..inp.slot.len)
                    .map(|i| f32::from_bits((i % 10) as u32))
                    .collect();
                exe.write(inp.slot, &labels).unwrap();
            }
        }
        let scalars: Vec<f32> = module
            .scalars
            .iter()
            .map(|s| if s == "lr" { 1e-3 } else { 1.0 })
            .collect();
        let ms = exe.time_program(bench.program, &scalars, iters).unwrap();
        println!(
            "BENCH\t{}\t{ms:.4}\t{}\t{}",
            bench.key, bench.work, bench.unit
        );
    }
}

/// A benchmark: a module, the program to time, and its work (FLOPs or
/// bytes moved) for the throughput column.
pub struct Bench {
    pub key: &'static str,
    pub module: Module,
    pub program: usize,
    pub work: f64,
    /// "GFLOP/s" or "GB/s".
    pub unit: &'static str,
}

fn single(g: &Graph) -> Module {
    gpurt::graph::plan::compile(&[("p", g)]).unwrap()
}

/// The shapes tools/gpu-check.sh times against PyTorch (same keys as
/// tools/torch_gpu_bench.py).
pub fn benches() -> Vec<Bench> {
    let mut v = Vec::new();
    let n = 4096;
    let mut g = Graph::new(false);
    let a = input(&mut g, "a", &[n, n]);
    let b = input(&mut g, "b", &[n, n]);
    let y = g.matmul(a, b).unwrap();
    g.set_output("y", y);
    v.push(Bench {
        key: "sgemm_4096",
        module: single(&g),
        program: 0,
        work: 2.0 * (n * n * n) as f64,
        unit: "GFLOP/s",
    });

    let p = ConvParams {
        stride: (1, 1),
        pad: (1, 1),
        dilation: (1, 1),
    };
    let conv_flops = 2.0 * (64 * 64 * 32 * 32 * 32 * 9) as f64;
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[64, 32, 32, 32]);
    let w = g.param("w", [64, 32, 3, 3]).unwrap();
    let y = g.conv2d(x, w, None, p).unwrap();
    g.set_output("y", y);
    v.push(Bench {
        key: "conv_fwd",
        module: single(&g),
        program: 0,
        work: conv_flops,
        unit: "GFLOP/s",
    });

    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[64, 32, 32, 32]);
    let dy = input(&mut g, "dy", &[64, 64, 32, 32]);
    let w = g.param("w", [64, 32, 3, 3]).unwrap();
    let dx = g
        .push1(
            Op::Conv2dGradInput { p },
            vec![dy, w],
            Shape(vec![64, 32, 32, 32]),
        )
        .unwrap();
    let dw = g
        .push1(
            Op::Conv2dGradWeight { p },
            vec![x, dy],
            Shape(vec![64, 32, 3, 3]),
        )
        .unwrap();
    g.set_output("dx", dx);
    g.set_output("dw", dw);
    v.push(Bench {
        key: "conv_bwd",
        module: single(&g),
        program: 0,
        work: 2.0 * conv_flops,
        unit: "GFLOP/s",
    });

    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[n, n]);
    let y = g.softmax(x).unwrap();
    g.set_output("y", y);
    v.push(Bench {
        key: "softmax_4096",
        module: single(&g),
        program: 0,
        work: 2.0 * 4.0 * (n * n) as f64,
        unit: "GB/s",
    });

    let len = 10_000_000;
    let mut g = Graph::new(true);
    let grad = input(&mut g, "grad", &[len]);
    let w = g.param("w", [len]).unwrap();
    let m = g.state("optim.exp_avg.w", [len]).unwrap();
    let s = g.state("optim.exp_avg_sq.w", [len]).unwrap();
    let lr = g.scalar("lr");
    let step = g.scalar("step");
    let c = OptimConfig::new(OptimizerKind::Adam);
    let op = Op::AdamUpdate(gpurt::ops::adam::AdamConfig {
        beta1: c.beta1,
        beta2: c.beta2,
        eps: c.eps,
        weight_decay: 0.0,
        decoupled: false,
        lr,
        step,
    });
    g.push_node(op, vec![grad], vec![], vec![w, m, s]).unwrap();
    v.push(Bench {
        key: "adam_10m",
        module: single(&g),
        program: 0,
        work: 7.0 * 4.0 * len as f64,
        unit: "GB/s",
    });

    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input: vec![3, 32, 32],
        classes: 10,
        train_batch: Some(64),
        infer_batch: 1,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 1,
        fuse: true,
    };
    let module = Classifier::module(&cfg).unwrap();
    let program = module.program("train").unwrap();
    let work = module.programs[program]
        .launches
        .iter()
        .map(|l| gpurt::graph::cost::flops(l) as f64)
        .sum();
    v.push(Bench {
        key: "cnn_train_b64",
        module,
        program,
        work,
        unit: "GFLOP/s",
    });
    v
}
