//! Batch-1 inference latency of the small CNN (CIFAR shape, random
//! weights) through the embedding API, for profiling:
//!
//!     cargo run --release --example infer_latency -- 20000 [THREADS] [DEVICE]
//!     perf record -g target/release/examples/infer_latency 20000
//!
//! DEVICE as `gpurt --device` takes it (cpu by default; wgpu, cuda:0).

use gpurt::embed::{Predictor, SharedWeights};
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use std::time::Instant;

fn main() -> gpurt::Result<()> {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
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
    let threads: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let device: gpurt::backend::DeviceSpec = std::env::args()
        .nth(3)
        .unwrap_or_else(|| "cpu".into())
        .parse()?;
    let backend = gpurt::backend::select(&device)?;
    let weights = SharedWeights::from_model(&mut Classifier::new(cfg, backend.as_ref())?)?;
    let mut p = Predictor::new(&weights, 1, backend.as_ref())?.threads(threads)?;
    let x: Vec<f32> = (0..3 * 32 * 32)
        .map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        p.run(&x)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let q = |f: f64| lat[((lat.len() - 1) as f64 * f) as usize];
    println!(
        "{calls} calls: median {:.1} us, p99 {:.1} us, min {:.1} us",
        q(0.5),
        q(0.99),
        q(0.0)
    );
    Ok(())
}
