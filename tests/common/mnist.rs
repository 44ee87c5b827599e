//! Tiny MNIST-format datasets for CLI and crash tests.

use std::path::Path;

pub fn idx_images(n: usize, seed: u32) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        v.extend(d.to_be_bytes());
    }
    // Class-dependent blobs so a model can learn something quickly.
    let mut s = seed;
    for i in 0..n {
        let label = i % 10;
        for p in 0..784 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let (r, c) = (p / 28, p % 28);
            let on = r / 3 == label || c / 3 == label;
            v.push(if on {
                200 + (s >> 29) as u8
            } else {
                (s >> 27) as u8
            });
        }
    }
    v
}

pub fn idx_labels(n: usize) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend((n as u32).to_be_bytes());
    v.extend((0..n).map(|i| (i % 10) as u8));
    v
}

/// A tiny MNIST-format dataset in a fresh folder.
pub fn tiny_mnist(dir: &Path, n_train: usize, n_test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx_images(n_train, 1)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(n_train)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx_images(n_test, 2)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_labels(n_test)).unwrap();
}
