//! The small CNN's train-step program on random data: the loss goes down
//! over 20 Adam steps, and the same seed gives bitwise identical weights.

use gpurt::backend::cpu::CpuBackend;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use rand::{Rng, SeedableRng};

fn random_batch(seed: u64, n: usize, len: usize) -> (Vec<f32>, Vec<u32>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = (0..n * len)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let y = (0..n).map(|_| rng.random_range(0..10u32)).collect();
    (x, y)
}

fn train(seed: u64) -> (Vec<f32>, Vec<(String, gpurt::Tensor)>) {
    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input: vec![3, 32, 32],
        classes: 10,
        train_batch: Some(16),
        infer_batch: 4,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed,
        fuse: true,
    };
    let mut c = Classifier::new(cfg, &CpuBackend::new()).unwrap();
    let (x, y) = random_batch(7, 16, 3 * 32 * 32);
    let losses = (0..20)
        .map(|_| c.train_step(&x, &y, 1e-3).unwrap())
        .collect();
    (losses, c.model_tensors().unwrap())
}

#[test]
fn cnn_loss_decreases_and_is_deterministic() {
    let (l1, w1) = train(42);
    assert!(l1.iter().all(|l| l.is_finite()));
    assert!(l1[19] < 0.8 * l1[0], "loss did not fall: {l1:?}");
    let (l2, w2) = train(42);
    assert_eq!(l1, l2);
    for ((n1, t1), (n2, t2)) in w1.iter().zip(&w2) {
        assert_eq!(n1, n2);
        assert!(
            t1.data
                .iter()
                .zip(&t2.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{n1} differs"
        );
    }
}
