//! Embedding gpurt in a service: load a trained run once, compile a
//! batch-1 inference program, and classify in a loop with no allocation
//! per call.
//!
//!     cargo run --release -- train --epochs 1
//!     cargo run --release --example embed -- runs/latest

use gpurt::backend::DeviceSpec;
use gpurt::embed::{Predictor, SharedWeights};
use std::time::Instant;

fn main() -> gpurt::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "runs/latest".into());
    let weights = SharedWeights::from_run(std::path::Path::new(&dir))?;
    let mut p = Predictor::on_device(&weights, 1, &DeviceSpec::Cpu)?;
    let test =
        gpurt::data::load_mnist(std::path::Path::new("data/mnist"), gpurt::data::Split::Test)?;
    let norm = weights
        .normalizer
        .clone()
        .expect("a training run records its normaliser");
    let mut x = vec![0.0f32; p.input_shape().numel()];
    let (mut correct, n) = (0, 1000);
    let t = Instant::now();
    for i in 0..n {
        norm.normalize_into(test.image(i), test.channels, &mut x);
        let logits = p.run(&x)?;
        correct += (gpurt::eval::argmax(logits) == test.labels[i] as usize) as usize;
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    println!("{correct}/{n} correct, {:.1} us per image", per * 1e6);
    Ok(())
}
