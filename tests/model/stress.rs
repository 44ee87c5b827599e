//! Concurrency: eight threads, each with its own compiled predictor built
//! from one shared read-only weights object, run for a while and must give
//! exactly the single-threaded results. `GPURT_STRESS_SECS` sets the
//! duration (default 5 s; the hardening check runs it for 60 s).

use gpurt::backend::cpu::CpuBackend;
use gpurt::embed::{Predictor, SharedWeights};
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn shared() -> (Arc<SharedWeights>, tempfile::TempDir) {
    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input: vec![1, 28, 28],
        classes: 10,
        train_batch: None,
        infer_batch: 1,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 21,
        fuse: true,
    };
    let mut c = Classifier::new(cfg, &CpuBackend::new()).unwrap();
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("w.safetensors");
    c.save_weights(&p, gpurt::DType::F32).unwrap();
    (
        Arc::new(SharedWeights::from_file(ModelSpec::cnn(10), vec![1, 28, 28], 10, &p).unwrap()),
        t,
    )
}

fn inputs() -> Vec<Vec<f32>> {
    (0..16)
        .map(|k| {
            (0..784)
                .map(|i| (((i * 31 + k * 977) % 255) as f32 / 127.5) - 1.0)
                .collect()
        })
        .collect()
}

#[test]
fn eight_threads_match_single_threaded_results() {
    let secs: u64 = std::env::var("GPURT_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (w, _t) = shared();
    let xs = Arc::new(inputs());
    let mut single = Predictor::new(&w, 1, &CpuBackend::new()).unwrap();
    let want: Arc<Vec<Vec<u32>>> = Arc::new(
        xs.iter()
            .map(|x| single.run(x).unwrap().iter().map(|v| v.to_bits()).collect())
            .collect(),
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..8)
        .map(|tid| {
            let (w, xs, want) = (Arc::clone(&w), Arc::clone(&xs), Arc::clone(&want));
            std::thread::spawn(move || {
                let mut p = Predictor::new(&w, 1, &CpuBackend::new()).unwrap();
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    let k = (calls as usize * 7 + tid) % xs.len();
                    let got: Vec<u32> =
                        p.run(&xs[k]).unwrap().iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want[k], "thread {tid}, call {calls}, input {k}");
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let total: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .sum();
    assert!(total > 8, "only {total} calls");
    eprintln!("{total} calls in {secs} s across 8 threads, all identical to single-threaded");
}
