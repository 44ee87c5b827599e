//! Fused vs unfused train step, interleaved step by step so both see the
//! same machine load; prints the median of each.
//!
//!     cargo run --release --example fuse_ab -- [cifar|mnist] [steps]

use gpurt::backend::cpu::CpuBackend;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use std::time::Instant;

fn main() -> gpurt::Result<()> {
    let shape = std::env::args().nth(1).unwrap_or_else(|| "cifar".into());
    let steps: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let input = if shape == "mnist" {
        vec![1, 28, 28]
    } else {
        vec![3, 32, 32]
    };
    let make = |fuse| {
        let cfg = ClassifierConfig {
            spec: ModelSpec::cnn(10),
            input: input.clone(),
            classes: 10,
            train_batch: Some(64),
            infer_batch: 1,
            optim: OptimConfig::new(OptimizerKind::Adam),
            seed: 1,
            fuse,
        };
        Classifier::new(cfg, &CpuBackend::new())
    };
    let (mut fused, mut unfused) = (make(true)?, make(false)?);
    let n: usize = input.iter().product();
    let x: Vec<f32> = (0..64 * n)
        .map(|i| ((i * 2_654_435_761) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let y: Vec<u32> = (0..64u32).map(|i| i % 10).collect();
    let (mut tf, mut tu) = (Vec::new(), Vec::new());
    for i in 0..steps + 10 {
        for (m, t) in [(&mut fused, &mut tf), (&mut unfused, &mut tu)] {
            let s = Instant::now();
            m.train_step(&x, &y, 1e-4)?;
            if i >= 10 {
                t.push(s.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    tf.sort_by(f64::total_cmp);
    tu.sort_by(f64::total_cmp);
    let (mf, mu) = (tf[tf.len() / 2], tu[tu.len() / 2]);
    println!("{shape} b64, {steps} interleaved steps: fused median {mf:.3} ms, unfused median {mu:.3} ms, unfused/fused {:.3}", mu / mf);
    Ok(())
}
