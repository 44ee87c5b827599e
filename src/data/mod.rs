//! Datasets on the host: loaders for MNIST (IDX) and CIFAR-10 (binary),
//! PNG images, per-channel normalisation and a background batch loader.
//!
//! Everything here keeps pixels as `u8` until the last moment: a dataset is
//! stored once in its compact file form and each batch is normalised to
//! `f32` on the loader thread, so a 60 000-image set costs 47 MB rather than
//! 188 MB and the training loop never waits on conversion.
//!
//! Every problem with a file (missing, truncated, wrong magic, absurd header,
//! bad label) becomes an [`Error`] whose one-line message names the file and
//! the problem; nothing here panics on bad input.

pub mod cifar;
pub mod examples;
pub mod image;
pub mod loader;
pub mod mnist;
pub mod sequences;
pub mod shard;
pub mod text;
pub mod tokenize;

pub use cifar::load_cifar10;
pub use examples::Examples;
pub use image::{load_png, save_png_gray};
pub use loader::{Augment, Batch, BatchInput, BatchLoader, Input};
pub use mnist::{load_mnist, read_idx_images, read_idx_labels};
pub use shard::Shard;

use crate::error::{Error, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Which half of a dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// Labelled images held as raw bytes.
///
/// `images` holds `len() * channels * height * width` bytes in NCHW order
/// (each image is its channel planes one after another), `labels` one class
/// index per image. The fields are public so tests and tools can build small
/// sets by hand; [`Dataset::new`] checks that they agree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// Both supported datasets have ten classes.
const NUM_CLASSES: usize = 10;

impl Dataset {
    /// Builds a dataset, checking that the image bytes fit the label count
    /// and image shape exactly.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Dataset> {
        let per_image = channels
            .checked_mul(height)
            .and_then(|v| v.checked_mul(width))
            .ok_or_else(|| {
                Error::Limit(format!(
                    "dataset image shape {channels}x{height}x{width} overflows"
                ))
            })?;
        let expected = per_image.checked_mul(labels.len()).ok_or_else(|| {
            Error::Limit(format!(
                "dataset of {} images of {channels}x{height}x{width} overflows",
                labels.len()
            ))
        })?;
        if images.len() != expected {
            return Err(Error::Usage(format!(
                "dataset has {} labels of {channels}x{height}x{width} images, so expects {expected} pixel bytes, got {}",
                labels.len(),
                images.len()
            )));
        }
        Ok(Dataset {
            images,
            labels,
            channels,
            height,
            width,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes; both MNIST and CIFAR-10 have ten.
    pub fn num_classes(&self) -> usize {
        NUM_CLASSES
    }

    /// Bytes per image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The CHW bytes of image `i`.
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The first `n` images (all of them if there are fewer), for quick runs.
    pub fn subset(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    /// The images at `indices`, in that order (repeats allowed).
    ///
    /// # Panics
    /// If an index is `>= len()`; indices come from the program, not from
    /// files, so this is a caller bug like slice indexing.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            assert!(
                i < self.len(),
                "Dataset::select: index {i} out of range for {} images",
                self.len()
            );
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    /// Splits off a validation set: a seeded shuffle of the indices picks
    /// `round(frac * len)` images for validation and leaves the rest for
    /// training. Returns `(train, validation)`; each keeps the original file
    /// order (the loader shuffles anyway) so the split is a pure function of
    /// `(frac, seed)`. `frac` must be in `[0, 1)`; 0 gives an empty
    /// validation set.
    pub fn split_validation(&self, frac: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&frac) {
            return Err(Error::Usage(format!(
                "validation fraction must be in [0, 1), got {frac}"
            )));
        }
        let n = self.len();
        let n_val = ((f64::from(frac) * n as f64).round() as usize).min(n);
        let mut order = permutation(n, &mut ChaCha8Rng::seed_from_u64(seed));
        let mut train = order.split_off(n_val);
        let mut val = order;
        train.sort_unstable();
        val.sort_unstable();
        Ok((self.select(&train), self.select(&val)))
    }
}

/// Per-channel mean and standard deviation of pixels scaled to `[0, 1]`.
///
/// Normalising with statistics of the training set keeps inputs centred and
/// of unit scale, which lets one learning rate suit both datasets.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Smallest standard deviation used, so a constant channel cannot divide by 0.
const MIN_STD: f64 = 1e-6;

impl Normalizer {
    /// Mean 0, std 1: only scales bytes to `[0, 1]`.
    pub fn identity(channels: usize) -> Normalizer {
        Normalizer {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Computes the statistics of `data`. Pixels are bytes, so a 256-bin
    /// histogram per channel gives the exact mean and variance (in f64) in
    /// one cheap pass. An empty dataset gives mean 0, std 1.
    pub fn fit(data: &Dataset) -> Normalizer {
        let plane = data.height * data.width;
        let mut hist = vec![[0u64; 256]; data.channels];
        if plane > 0 {
            for image in data.images.chunks_exact(data.image_len()) {
                for (h, p) in hist.iter_mut().zip(image.chunks_exact(plane)) {
                    for &v in p {
                        h[usize::from(v)] += 1;
                    }
                }
            }
        }
        let mut mean = Vec::with_capacity(data.channels);
        let mut std = Vec::with_capacity(data.channels);
        for h in &hist {
            let count: u64 = h.iter().sum();
            if count == 0 {
                mean.push(0.0);
                std.push(1.0);
                continue;
            }
            let count = count as f64;
            let m = h
                .iter()
                .enumerate()
                .map(|(v, &c)| v as f64 / 255.0 * c as f64)
                .sum::<f64>()
                / count;
            let var = h
                .iter()
                .enumerate()
                .map(|(v, &c)| {
                    let d = v as f64 / 255.0 - m;
                    d * d * c as f64
                })
                .sum::<f64>()
                / count;
            mean.push(m as f32);
            std.push(var.sqrt().max(MIN_STD) as f32);
        }
        Normalizer { mean, std }
    }

    /// Number of channels this normaliser describes.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Writes `(p / 255 - mean[c]) / std[c]` for one CHW image: `pixels_u8`
    /// is `channels` equal planes and `out` has the same length.
    ///
    /// # Panics
    /// If `channels` differs from the normaliser's channel count, does not
    /// divide the pixel count, or `out` has a different length. These are
    /// fixed by the program's shapes, not by file contents; callers such as
    /// [`BatchLoader::new`] check them up front.
    pub fn normalize_into(&self, pixels_u8: &[u8], channels: usize, out: &mut [f32]) {
        assert_eq!(
            channels,
            self.mean.len(),
            "normalize_into: image has {channels} channels, normaliser {}",
            self.mean.len()
        );
        assert_eq!(
            pixels_u8.len(),
            out.len(),
            "normalize_into: {} pixels but output holds {}",
            pixels_u8.len(),
            out.len()
        );
        if channels == 0 || pixels_u8.is_empty() {
            return;
        }
        assert!(
            pixels_u8.len().is_multiple_of(channels),
            "normalize_into: {} pixels do not split into {channels} planes",
            pixels_u8.len()
        );
        let plane = pixels_u8.len() / channels;
        let mut lut = [0f32; 256];
        for c in 0..channels {
            // A byte has only 256 values, so a table computed in f64 is both
            // exact and cheaper per pixel than the arithmetic; folding into
            // one f32 multiply-add instead would cancel catastrophically when
            // std is tiny.
            let (m, s) = (f64::from(self.mean[c]), f64::from(self.std[c]));
            for (v, l) in lut.iter_mut().enumerate() {
                *l = ((v as f64 / 255.0 - m) / s) as f32;
            }
            let src = &pixels_u8[c * plane..(c + 1) * plane];
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (o, &p) in dst.iter_mut().zip(src) {
                *o = lut[usize::from(p)];
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSpec {
    Mnist(PathBuf),
    /// Zalando's Fashion-MNIST: MNIST's format and sizes, ten kinds of
    /// clothing; harder than the digits.
    FashionMnist(PathBuf),
    Cifar10(PathBuf),
    /// Text: a folder per class of `.txt` files, or a CSV/TSV file (read
    /// by the text pipeline, `data::text`).
    Text(PathBuf),
}

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// CIFAR-10's class names, by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

impl DataSpec {
    /// Loads one split from the named folder.
    pub fn load(&self, split: Split) -> Result<Dataset> {
        match self {
            DataSpec::Mnist(dir) | DataSpec::FashionMnist(dir) => load_mnist(dir, split),
            DataSpec::Cifar10(dir) => load_cifar10(dir, split),
            DataSpec::Text(p) => Err(Error::Usage(format!(
                "text:{} is not an image dataset",
                p.display()
            ))),
        }
    }

    /// The names of the classes, by label, where they are not the labels
    /// themselves (MNIST's digits).
    pub fn class_names(&self) -> Option<&'static [&'static str]> {
        match self {
            DataSpec::Mnist(_) | DataSpec::Text(_) => None,
            DataSpec::FashionMnist(_) => Some(&FASHION_MNIST_CLASSES),
            DataSpec::Cifar10(_) => Some(&CIFAR10_CLASSES),
        }
    }

    /// The same kind of dataset in another folder.
    pub fn with_dir(&self, dir: PathBuf) -> DataSpec {
        match self {
            DataSpec::Mnist(_) => DataSpec::Mnist(dir),
            DataSpec::FashionMnist(_) => DataSpec::FashionMnist(dir),
            DataSpec::Cifar10(_) => DataSpec::Cifar10(dir),
            DataSpec::Text(_) => DataSpec::Text(dir),
        }
    }

    /// The folder the dataset is read from.
    pub fn dir(&self) -> &Path {
        match self {
            DataSpec::Mnist(dir)
            | DataSpec::FashionMnist(dir)
            | DataSpec::Cifar10(dir)
            | DataSpec::Text(dir) => dir,
        }
    }
}

const SPEC_FORMS: &str =
    "expected mnist:DIR, fashion-mnist[:DIR] (default /usr/share/datasets/fashion-mnist), cifar10:DIR or text:DIR|FILE.csv|FILE.tsv";

impl FromStr for DataSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<DataSpec> {
        if s.eq_ignore_ascii_case("fashion-mnist") {
            return Ok(DataSpec::FashionMnist(PathBuf::from(FASHION_MNIST_DIR)));
        }
        let Some((kind, dir)) = s.split_once(':') else {
            return Err(Error::Usage(format!(
                "dataset '{s}' has no kind: {SPEC_FORMS}"
            )));
        };
        if dir.is_empty() {
            return Err(Error::Usage(format!(
                "dataset '{s}' has an empty folder: {SPEC_FORMS}"
            )));
        }
        match kind.to_ascii_lowercase().as_str() {
            "mnist" => Ok(DataSpec::Mnist(PathBuf::from(dir))),
            "fashion-mnist" => Ok(DataSpec::FashionMnist(PathBuf::from(dir))),
            "cifar10" => Ok(DataSpec::Cifar10(PathBuf::from(dir))),
            "text" => Ok(DataSpec::Text(PathBuf::from(dir))),
            _ => Err(Error::Usage(format!(
                "unknown dataset kind '{kind}' in '{s}': {SPEC_FORMS}"
            ))),
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Mnist(dir) => write!(f, "mnist:{}", dir.display()),
            DataSpec::FashionMnist(dir) => write!(f, "fashion-mnist:{}", dir.display()),
            DataSpec::Cifar10(dir) => write!(f, "cifar10:{}", dir.display()),
            DataSpec::Text(p) => write!(f, "text:{}", p.display()),
        }
    }
}

/// Fails if any label is not a class index; labels index the loss's one-hot
/// targets, so an out-of-range one would corrupt training silently.
pub(crate) fn check_labels(path: &Path, labels: &[u8]) -> Result<()> {
    match labels
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= NUM_CLASSES)
    {
        Some((i, &l)) => Err(Error::format(
            path,
            format!(
                "label {l} at index {i} is out of range (classes are 0..={})",
                NUM_CLASSES - 1
            ),
        )),
        None => Ok(()),
    }
}

/// SplitMix64's finaliser: spreads every input bit over the output so that
/// nearby seeds (seed, seed+1) or epochs give unrelated generator states.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform integer in `[0, n)` for `n > 0`, by Lemire's widening multiply
/// with rejection: unbiased and defined only in terms of `next_u64`, so the
/// results are the same on every platform and rand version.
pub(crate) fn below(rng: &mut impl RngCore, n: u64) -> u64 {
    debug_assert!(n > 0);
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// A uniformly random permutation of `0..n` (Fisher-Yates), written out here
/// rather than taken from `rand::seq` so that orders stay identical across
/// dependency upgrades: reproducible runs depend on it.
pub(crate) fn permutation(n: usize, rng: &mut impl RngCore) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let images = (0..n * 2 * 2 * 3).map(|v| (v * 7 % 256) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Dataset::new(images, labels, 2, 2, 3).unwrap()
    }

    #[test]
    fn new_checks_lengths() {
        let err = Dataset::new(vec![0; 11], vec![0; 1], 1, 3, 4).unwrap_err();
        assert!(err.to_string().contains("expects 12"), "{err}");
    }

    #[test]
    fn subset_and_select() {
        let d = toy(7);
        assert_eq!(d.len(), 7);
        assert_eq!(d.image_len(), 12);
        assert_eq!(d.num_classes(), 10);
        let s = d.subset(3);
        assert_eq!(s.len(), 3);
        assert_eq!(s.images, d.images[..36]);
        assert_eq!(d.subset(100).len(), 7);
        let sel = d.select(&[4, 1, 4]);
        assert_eq!(sel.labels, vec![4, 1, 4]);
        assert_eq!(sel.image(0), d.image(4));
        assert_eq!(sel.image(1), d.image(1));
    }

    #[test]
    fn split_validation_partitions_deterministically() {
        let d = toy(50);
        let (tr, va) = d.split_validation(0.2, 9).unwrap();
        assert_eq!((tr.len(), va.len()), (40, 10));
        let (tr2, va2) = d.split_validation(0.2, 9).unwrap();
        assert_eq!((tr.clone(), va.clone()), (tr2, va2));
        let (_, va3) = d.split_validation(0.2, 10).unwrap();
        assert_ne!(va.images, va3.images);
        // Every image lands in exactly one half (images are distinct here
        // because each starts at a different offset of the pattern).
        let mut all: Vec<&[u8]> = (0..tr.len()).map(|i| tr.image(i)).collect();
        all.extend((0..va.len()).map(|i| va.image(i)));
        all.sort();
        let mut orig: Vec<&[u8]> = (0..d.len()).map(|i| d.image(i)).collect();
        orig.sort();
        assert_eq!(all, orig);

        let (tr0, va0) = d.split_validation(0.0, 1).unwrap();
        assert_eq!((tr0.len(), va0.len()), (50, 0));
        for bad in [1.0, -0.1, f32::NAN, 2.0] {
            let err = d.split_validation(bad, 1).unwrap_err();
            assert!(err.to_string().contains("[0, 1)"), "{err}");
        }
    }

    #[test]
    fn normalizer_fit_matches_direct_computation() {
        let d = toy(13);
        let n = Normalizer::fit(&d);
        for c in 0..2 {
            let px: Vec<f64> = (0..d.len())
                .flat_map(|i| d.image(i)[c * 6..(c + 1) * 6].to_vec())
                .map(|v| f64::from(v) / 255.0)
                .collect();
            let m = px.iter().sum::<f64>() / px.len() as f64;
            let var = px.iter().map(|v| (v - m).powi(2)).sum::<f64>() / px.len() as f64;
            assert!((f64::from(n.mean[c]) - m).abs() < 1e-6);
            assert!((f64::from(n.std[c]) - var.sqrt()).abs() < 1e-6);
        }
        let mut out = vec![0f32; 12];
        n.normalize_into(d.image(3), 2, &mut out);
        for (i, &o) in out.iter().enumerate() {
            let c = i / 6;
            let want = (f32::from(d.image(3)[i]) / 255.0 - n.mean[c]) / n.std[c];
            assert!((o - want).abs() < 1e-4, "{o} vs {want}");
        }
    }

    #[test]
    fn normalizer_floors_std_of_constant_channel() {
        let d = Dataset::new(vec![128; 8], vec![0, 1], 1, 2, 2).unwrap();
        let n = Normalizer::fit(&d);
        assert_eq!(n.std[0], 1e-6);
        let mut out = vec![1f32; 4];
        n.normalize_into(&d.images[..4], 1, &mut out);
        // Only the f32 rounding of the mean is left: (128/255 - mean) / 1e-6.
        assert!(
            out.iter().all(|v| v.is_finite() && v.abs() < 0.1),
            "{out:?}"
        );
        let e = Normalizer::fit(&Dataset::new(vec![], vec![], 3, 4, 4).unwrap());
        assert_eq!(e, Normalizer::identity(3));
    }

    #[test]
    fn data_spec_parses() {
        assert_eq!(
            "mnist:/tmp/m".parse::<DataSpec>().unwrap(),
            DataSpec::Mnist("/tmp/m".into())
        );
        assert_eq!(
            "cifar10:data/c".parse::<DataSpec>().unwrap(),
            DataSpec::Cifar10("data/c".into())
        );
        assert_eq!(
            "cifar10:data/c".parse::<DataSpec>().unwrap().to_string(),
            "cifar10:data/c"
        );
        assert_eq!(
            "fashion-mnist".parse::<DataSpec>().unwrap(),
            DataSpec::FashionMnist(FASHION_MNIST_DIR.into())
        );
        let f = "fashion-mnist:/d/f".parse::<DataSpec>().unwrap();
        assert_eq!(f, DataSpec::FashionMnist("/d/f".into()));
        assert_eq!(f.to_string().parse::<DataSpec>().unwrap(), f);
        assert_eq!(f.class_names().unwrap()[9], "Ankle boot");
        for bad in ["mnist", "imagenet:/x", "mnist:", "", "fashion-mnist:"] {
            let err = bad.parse::<DataSpec>().unwrap_err().to_string();
            crate::test_support::assert_mentions(
                &err,
                &["mnist:DIR", "fashion-mnist", "cifar10:DIR"],
            );
        }
    }

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let p = permutation(1000, &mut ChaCha8Rng::seed_from_u64(3));
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, permutation(1000, &mut ChaCha8Rng::seed_from_u64(3)));
        assert_ne!(p, permutation(1000, &mut ChaCha8Rng::seed_from_u64(4)));
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!((0..1000).all(|_| below(&mut rng, 7) < 7));
    }
}
