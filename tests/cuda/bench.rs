//! GPU kernel timings for tools/gpu-check.sh (ignored by `cargo test`; run
//! with `--ignored`). For each shape of `cases::benches` (SGEMM 4096³, conv
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

use super::cases;

use gpurt::backend::Executable;
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
    for bench in cases::benches() {
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
