//! Real-data training through the library: one epoch (batch 32, all of it
//! used for training) on a 10,000-image
//! MNIST subset reaches at least 95% test accuracy, fused and unfused, and
//! the two agree within 0.3 points.

use gpurt::backend::DeviceSpec;
use gpurt::data::{Augment, DataSpec};
use gpurt::optim::{LrSchedule, OptimizerKind};
use gpurt::train::{train, TrainOptions};
use std::path::PathBuf;

fn options(out: PathBuf, fuse: bool) -> TrainOptions {
    TrainOptions {
        model: Some("cnn".into()),
        data: DataSpec::Mnist(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist")),
        epochs: 1,
        batch: 32,
        optimizer: OptimizerKind::Adam,
        lr: 1e-3,
        lr_schedule: LrSchedule::Constant,
        early_stop: None,
        label_smoothing: 0.0,
        clip_grad_norm: None,
        warmup: 0,
        weight_decay: None,
        seed: 42,
        device: DeviceSpec::Cpu,
        out,
        resume: None,
        val_split: 0.0,
        augment: Augment::none(),
        limit: Some(10_000),
        progress: false,
        fuse,
    }
}

#[test]
fn one_epoch_on_10k_images_reaches_95_percent_fused_and_unfused() {
    let t = tempfile::tempdir().unwrap();
    let mut acc = Vec::new();
    for fuse in [true, false] {
        let s = train(
            &options(t.path().join(format!("fuse-{fuse}")), fuse),
            &mut |l| eprintln!("{l}"),
        )
        .unwrap();
        let (_, a) = s.test.expect("not interrupted");
        assert!(
            a >= 0.95,
            "fuse={fuse}: test accuracy {:.2}% < 95%",
            a * 100.0
        );
        acc.push(a);
    }
    let diff = (acc[0] - acc[1]).abs() * 100.0;
    assert!(
        diff <= 0.3,
        "fused {:.2}% vs unfused {:.2}%: {diff:.2} points apart",
        acc[0] * 100.0,
        acc[1] * 100.0
    );
}
