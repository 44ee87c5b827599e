//! One epoch of normalised, optionally shuffled and augmented batches,
//! prepared on a background thread.
//!
//! The training step runs on the compute backend while the next batches are
//! gathered, augmented and converted on a producer thread; a bounded channel
//! keeps a few batches ready without letting the producer run far ahead.
//!
//! Determinism: the visiting order is a permutation drawn from a
//! `ChaCha8Rng` seeded by mixing `(seed, epoch)`, and each image's
//! augmentation from one seeded by `(seed, epoch, dataset index)`. Neither
//! depends on thread timing, platform or batch size, so a run can be
//! repeated exactly.

use super::shard::Shard;
use super::{below, mix64, permutation, Dataset, Normalizer};
use crate::error::{Error, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Batches buffered ahead of the consumer: enough to hide a slow batch,
/// few enough that memory stays at a handful of batches.
const PREFETCH: usize = 3;

/// Distinguishes the order stream from the augmentation streams so that the
/// same `(seed, epoch)` never feeds both.
const ORDER_DOMAIN: u64 = 0x6f72_6465_7200_0001;
const AUGMENT_DOMAIN: u64 = 0x6175_676d_0000_0002;

/// Training-time augmentation, applied to the `u8` image before
/// normalisation. Crop padding is therefore a zero (black) pixel, which
/// after normalisation becomes `-mean/std` of its channel, as in the usual
/// CIFAR recipe.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Augment {
    /// Pad each side by this many zero pixels and take a random crop of the
    /// original size (offset uniform in `[0, 2*pad]` on each axis); 0 = off.
    pub crop_pad: usize,
    /// Mirror left-right with probability 1/2.
    pub hflip: bool,
    /// Rotate about the centre by an angle uniform in `[-rotate, rotate]`
    /// degrees (counter-clockwise positive, as torchvision); 0 = off.
    pub rotate: f32,
    /// Zoom about the centre by a factor uniform in `[1 - scale, 1 + scale]`;
    /// 0 = off. Rotation and zoom sample the nearest source pixel (uncovered
    /// pixels are 0), before the crop and flip.
    pub scale: f32,
}

impl Augment {
    /// No augmentation.
    pub fn none() -> Augment {
        Augment::default()
    }

    /// A crop padding of more than half the image would let crops be mostly
    /// (or, past the full size, entirely) blank.
    pub fn check(&self, height: usize, width: usize) -> crate::Result<()> {
        let most = height.min(width) / 2;
        if self.crop_pad > most {
            return Err(crate::Error::Usage(format!(
                "--crop-pad {} is more than half of the {height}x{width} images (at most {most})",
                self.crop_pad
            )));
        }
        if !(self.rotate.is_finite() && (0.0..=180.0).contains(&self.rotate)) {
            return Err(crate::Error::Usage(format!(
                "--rotate must be between 0 and 180 degrees, got {}",
                self.rotate
            )));
        }
        if !(self.scale.is_finite() && (0.0..1.0).contains(&self.scale)) {
            return Err(crate::Error::Usage(format!(
                "--scale must be in [0, 1), got {}",
                self.scale
            )));
        }
        Ok(())
    }

    /// Whether any augmentation is switched on.
    pub fn is_active(&self) -> bool {
        self.crop_pad > 0 || self.hflip || self.affine()
    }

    fn affine(&self) -> bool {
        self.rotate > 0.0 || self.scale > 0.0
    }
}

/// `out` = the CHW image `src` (planes of `h x w`) rotated by `angle`
/// radians counter-clockwise and zoomed by `zoom` about its centre,
/// sampling the nearest source pixel; pixels with no source are 0.
pub(crate) fn rotate_zoom(
    src: &[u8],
    (h, w): (usize, usize),
    angle: f32,
    zoom: f32,
    out: &mut [u8],
) {
    let (sin, cos) = angle.sin_cos();
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    for (plane_in, plane_out) in src.chunks_exact(h * w).zip(out.chunks_exact_mut(h * w)) {
        for (i, o) in plane_out.iter_mut().enumerate() {
            let (dy, dx) = ((i / w) as f32 - cy, (i % w) as f32 - cx);
            let sx = ((cos * dx - sin * dy) / zoom + cx + 0.5).floor();
            let sy = ((sin * dx + cos * dy) / zoom + cy + 0.5).floor();
            *o = if sx >= 0.0 && sy >= 0.0 && (sx as usize) < w && (sy as usize) < h {
                plane_in[sy as usize * w + sx as usize]
            } else {
                0
            };
        }
    }
}

/// One batch, ready for the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `B x C x H x W` normalised pixels (`B` being the loader's batch
    /// size), or `B` padded token sequences.
    pub input: BatchInput,
    /// `B` class labels.
    pub y: Vec<u32>,
    /// Number of real rows; rows `len..B` are zero padding with label 0 (only
    /// in the last batch of an epoch without `drop_last`). Losses and
    /// accuracy should count only the first `len` rows.
    pub len: usize,
}

/// A batch's model input, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchInput {
    Pixels(Vec<f32>),
    /// `B x T` ids (0 past each length) and `B` lengths.
    Tokens {
        ids: Vec<u32>,
        lengths: Vec<u32>,
    },
}

impl Batch {
    /// The input as the model takes it.
    pub fn input(&self) -> Input<'_> {
        match &self.input {
            BatchInput::Pixels(x) => Input::Pixels(x),
            BatchInput::Tokens { ids, lengths } => Input::Tokens { ids, lengths },
        }
    }

    /// The pixels of an image batch (empty for a text batch).
    pub fn pixels(&self) -> &[f32] {
        match &self.input {
            BatchInput::Pixels(x) => x,
            BatchInput::Tokens { .. } => &[],
        }
    }
}

/// One batch as a model reads it (borrowed).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// `[N, C, H, W]` normalised pixels (or any f32 input).
    Pixels(&'a [f32]),
    /// Token ids `[N, T]`, padded with 0 past each row's length, and the
    /// lengths `[N]`.
    Tokens { ids: &'a [u32], lengths: &'a [u32] },
}

/// Iterates the batches of one epoch; see the module docs.
///
/// Dropping it early is fine: the producer notices the closed channel after
/// at most one more batch and exits, and the drop waits for that.
pub struct BatchLoader {
    rx: Option<Receiver<Batch>>,
    producer: Option<JoinHandle<()>>,
    num_batches: usize,
    delivered: usize,
}

impl BatchLoader {
    /// Starts producing the batches of epoch `epoch`.
    ///
    /// `shuffle_seed`: `None` visits images in dataset order; `Some(seed)`
    /// visits them in an order that depends on `(seed, epoch)`. Augmentation
    /// is seeded by `shuffle_seed` too (0 when `None`). With `drop_last` a
    /// final partial batch is skipped; without it, it is padded to `batch`
    /// rows. Fails if `batch` is 0 or the normaliser's channel count differs
    /// from the dataset's.
    /// `shard`: this process's part of each epoch ([`Shard::WHOLE`] alone;
    /// one rank of a data-parallel run keeps its block of every global
    /// batch, the order being the same on every rank).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dataset: Arc<Dataset>,
        normalizer: Normalizer,
        batch: usize,
        shuffle_seed: Option<u64>,
        epoch: u64,
        augment: Augment,
        drop_last: bool,
        shard: Shard,
    ) -> Result<BatchLoader> {
        if batch == 0 {
            return Err(Error::Usage("batch size must be at least 1".into()));
        }
        if normalizer.channels() != dataset.channels || normalizer.std.len() != dataset.channels {
            return Err(Error::Usage(format!(
                "normaliser has {} means and {} stds but the dataset has {} channels",
                normalizer.mean.len(),
                normalizer.std.len(),
                dataset.channels
            )));
        }
        let n = shard.len(dataset.len(), batch, drop_last);
        let num_batches = if drop_last {
            n / batch
        } else {
            n.div_ceil(batch)
        };
        if num_batches == 0 {
            return Ok(BatchLoader {
                rx: None,
                producer: None,
                num_batches,
                delivered: 0,
            });
        }
        let (tx, rx) = sync_channel(PREFETCH);
        let job = Producer {
            dataset,
            normalizer,
            batch,
            seed: shuffle_seed.unwrap_or(0),
            shuffle: shuffle_seed.is_some(),
            epoch,
            augment,
            num_batches,
            shard,
            drop_last,
        };
        let producer = std::thread::Builder::new()
            .name("gpurt-batch-loader".into())
            .spawn(move || {
                // The order is made here rather than in `new` so that `new`
                // returns at once; it costs less than one batch of pixels.
                let order = job.order();
                for b in 0..job.num_batches {
                    if tx.send(job.build(b, &order)).is_err() {
                        return; // consumer gone
                    }
                }
            })
            .map_err(|e| Error::Limit(format!("cannot start the batch loader thread: {e}")))?;
        Ok(BatchLoader {
            rx: Some(rx),
            producer: Some(producer),
            num_batches,
            delivered: 0,
        })
    }

    /// Batches in this epoch.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.delivered == self.num_batches {
            return None;
        }
        match self.rx.as_ref()?.recv() {
            Ok(b) => {
                self.delivered += 1;
                Some(b)
            }
            Err(_) => {
                // The producer only hangs up early by panicking; surface
                // that bug here rather than end the epoch short.
                self.rx = None;
                if let Some(Err(panic)) = self.producer.take().map(JoinHandle::join) {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.num_batches - self.delivered;
        (left, Some(left))
    }
}

impl ExactSizeIterator for BatchLoader {}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the receiver first wakes a producer blocked on a full
        // channel; its send fails and it returns, so the join is short.
        self.rx = None;
        if let Some(handle) = self.producer.take() {
            // A producer panic was already reported on stderr; re-raising it
            // inside drop could abort the process.
            let _ = handle.join();
        }
    }
}

/// Everything the producer thread needs.
struct Producer {
    dataset: Arc<Dataset>,
    normalizer: Normalizer,
    batch: usize,
    seed: u64,
    shuffle: bool,
    epoch: u64,
    augment: Augment,
    num_batches: usize,
    shard: Shard,
    drop_last: bool,
}

impl Producer {
    /// The dataset indices of this epoch, in visiting order.
    fn order(&self) -> Vec<usize> {
        let n = self.dataset.len();
        let order = if self.shuffle {
            let key = mix64(self.seed ^ mix64(self.epoch ^ ORDER_DOMAIN));
            permutation(n, &mut ChaCha8Rng::seed_from_u64(key))
        } else {
            (0..n).collect()
        };
        match self.shard.is_whole() {
            true => order,
            false => self.shard.select(&order, self.batch, self.drop_last),
        }
    }

    /// Builds batch `b` of the epoch visiting images in `order`.
    fn build(&self, b: usize, order: &[usize]) -> Batch {
        let d = &*self.dataset;
        let per = d.image_len();
        let start = b * self.batch;
        let rows = &order[start..(start + self.batch).min(order.len())];
        let mut x = vec![0f32; self.batch * per];
        let mut y = vec![0u32; self.batch];
        let mut scratch = vec![0u8; per];
        let mut rotated = Vec::new();
        for (r, &idx) in rows.iter().enumerate() {
            let src = d.image(idx);
            let pixels = if self.augment.is_active() {
                self.augment_into(idx, src, &mut scratch, &mut rotated);
                &scratch[..]
            } else {
                src
            };
            self.normalizer
                .normalize_into(pixels, d.channels, &mut x[r * per..(r + 1) * per]);
            y[r] = u32::from(d.labels[idx]);
        }
        Batch {
            input: BatchInput::Pixels(x),
            y,
            len: rows.len(),
        }
    }

    /// Random crop (zero padded) and flip of one CHW image into `out`.
    /// `rotated` holds the rotated copy when rotation or zoom is on (reused
    /// across the images of a batch).
    fn augment_into(&self, idx: usize, src: &[u8], out: &mut [u8], rotated: &mut Vec<u8>) {
        let d = &*self.dataset;
        let (h, w) = (d.height, d.width);
        let key = mix64(mix64(self.seed ^ mix64(self.epoch ^ AUGMENT_DOMAIN)) ^ idx as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(key);
        let pad = self.augment.crop_pad as i64;
        let (dy, dx) = if pad > 0 {
            let span = 2 * pad as u64 + 1;
            (below(&mut rng, span) as i64, below(&mut rng, span) as i64)
        } else {
            (0, 0)
        };
        let flip = self.augment.hflip && rng.next_u32() & 1 == 1;
        // Rotation and zoom (drawn after crop and flip, so runs without
        // them keep their old draws), applied to a copy the crop reads.
        let src = if self.augment.affine() {
            let unit = |rng: &mut ChaCha8Rng| rng.next_u32() as f32 / u32::MAX as f32 * 2.0 - 1.0;
            let angle = (unit(&mut rng) * self.augment.rotate).to_radians();
            let zoom = 1.0 + unit(&mut rng) * self.augment.scale;
            rotated.resize(src.len(), 0);
            rotate_zoom(src, (h, w), angle, zoom, rotated);
            &rotated[..]
        } else {
            src
        };
        // Output (y, x) reads padded (y + dy, x' + dx), i.e. source
        // (y + dy - pad, x' + dx - pad), where x' is x mirrored if flipping.
        for (plane_in, plane_out) in src.chunks_exact(h * w).zip(out.chunks_exact_mut(h * w)) {
            for y in 0..h {
                let sy = y as i64 + dy - pad;
                let row_out = &mut plane_out[y * w..(y + 1) * w];
                if sy < 0 || sy >= h as i64 {
                    row_out.fill(0);
                    continue;
                }
                let row_in = &plane_in[sy as usize * w..(sy as usize + 1) * w];
                for (x, o) in row_out.iter_mut().enumerate() {
                    let xm = if flip { w - 1 - x } else { x } as i64;
                    let sx = xm + dx - pad;
                    *o = if sx < 0 || sx >= w as i64 {
                        0
                    } else {
                        row_in[sx as usize]
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// `n` images of 2x3x4 whose first pixel encodes the index, so a batch
    /// row can be traced back to its image.
    fn indexed(n: usize) -> Arc<Dataset> {
        let per = 2 * 3 * 4;
        let mut images = vec![0u8; n * per];
        for i in 0..n {
            for (k, v) in images[i * per..(i + 1) * per].iter_mut().enumerate() {
                *v = if k == 0 {
                    i as u8
                } else {
                    (i * 31 + k * 7) as u8
                };
            }
        }
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Arc::new(Dataset::new(images, labels, 2, 3, 4).unwrap())
    }

    fn loader(d: &Arc<Dataset>, batch: usize, seed: Option<u64>, epoch: u64) -> BatchLoader {
        let c = d.channels;
        BatchLoader::new(
            d.clone(),
            Normalizer::identity(c),
            batch,
            seed,
            epoch,
            Augment::none(),
            false,
            Shard::WHOLE,
        )
        .unwrap()
    }

    /// The dataset index of every real row, via the first pixel.
    fn visited(l: BatchLoader) -> Vec<usize> {
        let mut out = Vec::new();
        for b in l {
            let per = b.pixels().len() / b.y.len();
            for r in 0..b.len {
                out.push((b.pixels()[r * per] * 255.0).round() as usize);
            }
        }
        out
    }

    #[test]
    fn every_index_once_and_padding() {
        let d = indexed(103);
        let l = loader(&d, 10, Some(5), 0);
        assert_eq!(l.num_batches(), 11);
        assert_eq!(l.len(), 11);
        let batches: Vec<Batch> = l.collect();
        assert_eq!(batches.len(), 11);
        let last = &batches[10];
        assert_eq!(
            (last.len, last.pixels().len(), last.y.len()),
            (3, 10 * 24, 10)
        );
        assert!(last.pixels()[3 * 24..].iter().all(|&v| v == 0.0));
        assert!(last.y[3..].iter().all(|&v| v == 0));
        assert!(batches[..10].iter().all(|b| b.len == 10));

        let mut seen = visited(loader(&d, 10, Some(5), 0));
        assert_ne!(seen, (0..103).collect::<Vec<_>>(), "should be shuffled");
        seen.sort_unstable();
        assert_eq!(seen, (0..103).collect::<Vec<_>>());
    }

    #[test]
    fn labels_and_pixels_match_the_dataset() {
        let d = indexed(37);
        let norm = Normalizer {
            mean: vec![0.25, 0.5],
            std: vec![0.5, 2.0],
        };
        let l = BatchLoader::new(
            d.clone(),
            norm.clone(),
            8,
            Some(1),
            3,
            Augment::none(),
            false,
            Shard::WHOLE,
        )
        .unwrap();
        let order = visited(loader(&d, 8, Some(1), 3));
        let mut row = 0;
        for b in l {
            for r in 0..b.len {
                let idx = order[row];
                row += 1;
                assert_eq!(b.y[r], u32::from(d.labels[idx]));
                let mut want = vec![0f32; 24];
                norm.normalize_into(d.image(idx), 2, &mut want);
                assert_eq!(&b.pixels()[r * 24..(r + 1) * 24], &want[..]);
            }
        }
        assert_eq!(row, 37);
    }

    #[test]
    fn order_depends_on_seed_and_epoch_only() {
        let d = indexed(200);
        let a = visited(loader(&d, 16, Some(7), 0));
        assert_eq!(a, visited(loader(&d, 16, Some(7), 0)));
        // Batch size does not change the order.
        assert_eq!(a, visited(loader(&d, 9, Some(7), 0)));
        assert_ne!(a, visited(loader(&d, 16, Some(7), 1)));
        assert_ne!(a, visited(loader(&d, 16, Some(8), 0)));
        assert_eq!(
            visited(loader(&d, 16, None, 4)),
            (0..200).collect::<Vec<_>>()
        );
    }

    #[test]
    fn drop_last_skips_the_partial_batch() {
        let d = indexed(25);
        let l = BatchLoader::new(
            d,
            Normalizer::identity(2),
            10,
            None,
            0,
            Augment::none(),
            true,
            Shard::WHOLE,
        )
        .unwrap();
        assert_eq!(l.num_batches(), 2);
        let b: Vec<Batch> = l.collect();
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|b| b.len == 10));
    }

    #[test]
    fn bad_arguments_and_empty_dataset() {
        let d = indexed(5);
        let refused = |channels: usize, batch: usize| {
            let norm = Normalizer::identity(channels);
            BatchLoader::new(
                d.clone(),
                norm,
                batch,
                None,
                0,
                Augment::none(),
                false,
                Shard::WHOLE,
            )
            .err()
            .unwrap()
            .to_string()
        };
        let e = refused(2, 0);
        crate::test_support::assert_mentions(&e, &["batch size"]);
        let e = refused(3, 4);
        crate::test_support::assert_mentions(&e, &["3 means", "2 channels"]);
        let empty = Arc::new(Dataset::new(vec![], vec![], 1, 2, 2).unwrap());
        let mut l = loader(&empty, 4, Some(1), 0);
        assert_eq!(l.num_batches(), 0);
        assert!(l.next().is_none());
    }

    #[test]
    fn augmentation_is_seeded_and_keeps_shape() {
        let d = indexed(64);
        let aug = Augment {
            crop_pad: 1,
            hflip: true,
            ..Augment::default()
        };
        let run = |seed, epoch| -> Vec<Batch> {
            BatchLoader::new(
                d.clone(),
                Normalizer::identity(2),
                8,
                Some(seed),
                epoch,
                aug,
                false,
                Shard::WHOLE,
            )
            .unwrap()
            .collect()
        };
        let plain: Vec<Batch> = BatchLoader::new(
            d.clone(),
            Normalizer::identity(2),
            8,
            Some(3),
            0,
            Augment::none(),
            false,
            Shard::WHOLE,
        )
        .unwrap()
        .collect();
        let a = run(3, 0);
        assert_eq!(a, run(3, 0), "same seed and epoch, same pixels");
        assert_ne!(a, run(3, 1));
        assert_eq!(a.len(), plain.len());
        for (pa, pb) in a.iter().zip(&plain) {
            assert_eq!(pa.pixels().len(), pb.pixels().len());
            assert_eq!(pa.y, pb.y, "augmentation must not reorder");
        }
        let changed = a
            .iter()
            .zip(&plain)
            .flat_map(|(p, q)| p.pixels().chunks(24).zip(q.pixels().chunks(24)))
            .filter(|(p, q)| p != q)
            .count();
        assert!(changed > 32, "only {changed} of 64 images changed");
        // Every augmented pixel is either padding (0) or a source pixel.
        for v in a.iter().flat_map(|b| b.pixels()) {
            assert!((0.0..=1.0).contains(v));
        }
    }

    /// Exact pixels of rotation and zoom on a 3x3 image: +90° turns it
    /// counter-clockwise (as torchvision), 2x zoom reads the centre, and a
    /// 45° turn leaves the corners uncovered.
    #[test]
    fn rotate_zoom_exact_pixels() {
        let img = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut out = [0u8; 9];
        rotate_zoom(&img, (3, 3), 90f32.to_radians(), 1.0, &mut out);
        assert_eq!(out, [3, 6, 9, 2, 5, 8, 1, 4, 7]);
        rotate_zoom(&img, (3, 3), 0.0, 1.0, &mut out);
        assert_eq!(out, img);
        rotate_zoom(&img, (3, 3), 0.0, 2.0, &mut out);
        assert_eq!(out, [5, 5, 6, 5, 5, 6, 8, 8, 9]);
        rotate_zoom(&img, (3, 3), 0.0, 0.5, &mut out);
        assert_eq!(out, [0, 0, 0, 0, 5, 0, 0, 0, 0]);
        // Two planes turn alike.
        let two: Vec<u8> = img.iter().chain(&img).copied().collect();
        let mut out2 = [0u8; 18];
        rotate_zoom(&two, (3, 3), (-90f32).to_radians(), 1.0, &mut out2);
        assert_eq!(out2[..9], [7, 4, 1, 8, 5, 2, 9, 6, 3]);
        assert_eq!(out2[..9], out2[9..]);
    }

    /// Rotation and zoom are seeded per (seed, epoch, image) and off by
    /// default; out-of-range settings are refused.
    #[test]
    fn rotation_and_zoom_are_seeded_and_checked() {
        let pixels: Vec<u8> = (0..25).collect();
        let d = Arc::new(Dataset::new(pixels, vec![0], 1, 5, 5).unwrap());
        let job = |epoch| Producer {
            dataset: d.clone(),
            normalizer: Normalizer::identity(1),
            batch: 1,
            seed: 3,
            shuffle: true,
            epoch,
            augment: Augment {
                rotate: 30.0,
                scale: 0.2,
                ..Augment::default()
            },
            num_batches: 1,
            shard: Shard::WHOLE,
            drop_last: false,
        };
        let (mut a, mut b) = ([0u8; 25], [0u8; 25]);
        job(1).augment_into(0, &d.images, &mut a, &mut Vec::new());
        job(1).augment_into(0, &d.images, &mut b, &mut Vec::new());
        assert_eq!(a, b, "same seed and epoch, same image");
        let distinct: std::collections::HashSet<[u8; 25]> = (0..20)
            .map(|e| {
                job(e).augment_into(0, &d.images, &mut a, &mut Vec::new());
                a
            })
            .collect();
        assert!(distinct.len() > 10, "{} distinct of 20", distinct.len());
        assert!(!Augment::default().is_active());
        for bad in [
            Augment {
                rotate: 181.0,
                ..Augment::default()
            },
            Augment {
                rotate: f32::NAN,
                ..Augment::default()
            },
            Augment {
                scale: 1.0,
                ..Augment::default()
            },
            Augment {
                scale: -0.1,
                ..Augment::default()
            },
        ] {
            assert!(bad.check(28, 28).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn augment_geometry() {
        // One 1x2x3 image; pad 0 flip only: the result is either the image or
        // its mirror. With crop pad, each output pixel shifts by at most pad.
        let d = Arc::new(Dataset::new(vec![1, 2, 3, 4, 5, 6], vec![0], 1, 2, 3).unwrap());
        let job = |crop_pad, hflip, epoch| Producer {
            dataset: d.clone(),
            normalizer: Normalizer::identity(1),
            batch: 1,
            seed: 11,
            shuffle: true,
            epoch,
            augment: Augment {
                crop_pad,
                hflip,
                ..Augment::default()
            },
            num_batches: 1,
            shard: Shard::WHOLE,
            drop_last: false,
        };
        let mut out = [0u8; 6];
        let mut kinds = std::collections::HashSet::new();
        for epoch in 0..40 {
            job(0, true, epoch).augment_into(0, &d.images, &mut out, &mut Vec::new());
            assert!(
                out == [1, 2, 3, 4, 5, 6] || out == [3, 2, 1, 6, 5, 4],
                "{out:?}"
            );
            kinds.insert(out);
        }
        assert_eq!(kinds.len(), 2, "flip should happen about half the time");
        kinds.clear();
        for epoch in 0..200 {
            job(1, false, epoch).augment_into(0, &d.images, &mut out, &mut Vec::new());
            kinds.insert(out);
        }
        // 3x3 offsets, all distinct for this image.
        assert_eq!(kinds.len(), 9);
        assert!(kinds.contains(&[0, 0, 0, 0, 1, 2]));
        assert!(kinds.contains(&[5, 6, 0, 0, 0, 0]));
        assert!(kinds.contains(&[1, 2, 3, 4, 5, 6]));
    }

    #[test]
    fn dropping_midway_returns_promptly() {
        // Large enough that producing the whole epoch would take a while.
        let n = 20_000;
        let d = Arc::new(Dataset::new(vec![7; n * 3 * 32 * 32], vec![1; n], 3, 32, 32).unwrap());
        let aug = Augment {
            crop_pad: 4,
            hflip: true,
            ..Augment::default()
        };
        let start = Instant::now();
        let mut l = BatchLoader::new(
            d,
            Normalizer::identity(3),
            64,
            Some(1),
            0,
            aug,
            false,
            Shard::WHOLE,
        )
        .unwrap();
        assert!(l.next().is_some());
        assert!(l.next().is_some());
        // Let the producer fill the channel and block on it.
        std::thread::sleep(Duration::from_millis(50));
        drop(l);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "drop took {:?}",
            start.elapsed()
        );
    }
}
