//! CIFAR-10 in its binary form (`cifar-10-binary.tar.gz`, unpacked).
//!
//! Each file is a run of 3073-byte records: one label byte, then a 32x32
//! colour image as three 1024-byte planes (red, green, blue). That is already
//! CHW order, so records are copied straight into the dataset.

use super::{check_labels, Dataset, Split};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Image side length.
const SIDE: usize = 32;
/// Bytes of one image: 3 planes of 32x32.
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// Bytes of one record: the label byte and the image.
pub const CIFAR_RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Largest file accepted. The real files are 30 MB each; this only stops a
/// wrong path (say, a disk image) from being read into memory whole.
const MAX_FILE_BYTES: u64 = 1 << 31;
/// The official archive unpacks into this folder; accepting its parent too
/// saves a confusing "not found" when the user names the download folder.
const ARCHIVE_FOLDER: &str = "cifar-10-batches-bin";

/// Loads one CIFAR-10 split from `dir`: the training set from whichever of
/// `data_batch_1.bin` .. `data_batch_5.bin` exist (at least one), in order,
/// or the test set from `test_batch.bin`. If `dir` holds none of these but
/// has a `cifar-10-batches-bin` folder, that folder is used.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::format(dir, "CIFAR-10 folder not found"));
    }
    let mut files = batch_files(dir, split);
    if files.is_empty() {
        let nested = dir.join(ARCHIVE_FOLDER);
        if nested.is_dir() {
            files = batch_files(&nested, split);
        }
    }
    if files.is_empty() {
        let wanted = match split {
            Split::Train => "data_batch_1.bin .. data_batch_5.bin",
            Split::Test => "test_batch.bin",
        };
        return Err(Error::format(
            dir,
            format!("no CIFAR-10 {split} files: looked for {wanted} here and in {ARCHIVE_FOLDER}/"),
        ));
    }

    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in &files {
        read_batch(path, &mut images, &mut labels)?;
    }
    Dataset::new(images, labels, 3, SIDE, SIDE)
}

/// The files of `split` present in `dir`, in load order.
fn batch_files(dir: &Path, split: Split) -> Vec<PathBuf> {
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    };
    names
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect()
}

/// Appends the records of one batch file, checking its length first so a
/// wrong file is refused before it is read.
fn read_batch(path: &Path, images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    check_length(path, len)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    // The file may have changed between the two calls; this checks again.
    append_records(path, &bytes, images, labels)
}

/// Parses one CIFAR-10 batch file already in memory (a run of 3073-byte
/// records); `label` names it in errors. Never panics; allocates no more
/// than `bytes.len()`.
pub fn parse_records(label: &Path, bytes: &[u8]) -> Result<Dataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    append_records(label, bytes, &mut images, &mut labels)?;
    Dataset::new(images, labels, 3, SIDE, SIDE)
}

/// Checks the length and the labels of one batch and appends its records.
fn append_records(
    path: &Path,
    bytes: &[u8],
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    check_length(path, bytes.len() as u64)?;
    let first = labels.len();
    let records = bytes.len() / CIFAR_RECORD_BYTES;
    images.reserve(records * IMAGE_BYTES);
    labels.reserve(records);
    for record in bytes.chunks_exact(CIFAR_RECORD_BYTES) {
        labels.push(record[0]);
        images.extend_from_slice(&record[1..]);
    }
    check_labels(path, &labels[first..])
}

fn check_length(path: &Path, len: u64) -> Result<()> {
    if len > MAX_FILE_BYTES {
        return Err(Error::Limit(format!(
            "{}: {len} bytes is over the limit of {MAX_FILE_BYTES} for a CIFAR-10 batch",
            path.display()
        )));
    }
    if len == 0 {
        return Err(Error::format(
            path,
            "file is empty, expected CIFAR-10 records",
        ));
    }
    if !len.is_multiple_of(CIFAR_RECORD_BYTES as u64) {
        return Err(Error::format(
            path,
            format!(
                "length {len} is not a multiple of the {CIFAR_RECORD_BYTES}-byte CIFAR-10 record ({} whole records and {} bytes over)",
                len / CIFAR_RECORD_BYTES as u64,
                len % CIFAR_RECORD_BYTES as u64
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Writes `n` random records; returns (labels, CHW images).
    fn write_batch(path: &Path, n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bytes = Vec::new();
        let mut labels = Vec::new();
        let mut images = Vec::new();
        for _ in 0..n {
            let label = (rng.next_u32() % 10) as u8;
            let mut img = vec![0u8; IMAGE_BYTES];
            rng.fill_bytes(&mut img);
            bytes.push(label);
            bytes.extend_from_slice(&img);
            labels.push(label);
            images.extend_from_slice(&img);
        }
        std::fs::write(path, bytes).unwrap();
        (labels, images)
    }

    /// The error loading `split` from `dir`, as text.
    fn load_err(dir: &Path, split: Split) -> String {
        load_cifar10(dir, split).unwrap_err().to_string()
    }

    #[test]
    fn train_uses_existing_batches_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (l1, i1) = write_batch(&dir.path().join("data_batch_1.bin"), 3, 1);
        let (l3, i3) = write_batch(&dir.path().join("data_batch_3.bin"), 2, 3);
        let d = load_cifar10(dir.path(), Split::Train).unwrap();
        assert_eq!((d.len(), d.channels, d.height, d.width), (5, 3, 32, 32));
        assert_eq!(d.labels, [l1, l3].concat());
        assert_eq!(d.images, [i1, i3].concat());
        // Plane order survives: red plane of image 0 is bytes 1..1025 of record 0.
        let raw = std::fs::read(dir.path().join("data_batch_1.bin")).unwrap();
        assert_eq!(&d.image(0)[..1024], &raw[1..1025]);
        assert_eq!(&d.image(0)[2048..], &raw[2049..3073]);
    }

    #[test]
    fn test_split_and_nested_folder() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join(ARCHIVE_FOLDER);
        std::fs::create_dir(&nested).unwrap();
        let (l, i) = write_batch(&nested.join("test_batch.bin"), 4, 7);
        let d = load_cifar10(dir.path(), Split::Test).unwrap();
        assert_eq!((d.labels, d.images), (l, i));
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_cifar10(&dir.path().join("absent"), Split::Train)
            .unwrap_err()
            .to_string();
        crate::test_support::assert_mentions(&e, &["absent", "not found"]);
        let e = load_err(dir.path(), Split::Train);
        crate::test_support::assert_mentions(&e, &["data_batch_1.bin"]);
        write_batch(&dir.path().join("data_batch_2.bin"), 1, 0);
        let e = load_err(dir.path(), Split::Test);
        crate::test_support::assert_mentions(&e, &["test_batch.bin"]);
    }

    #[test]
    fn bad_length_names_file_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("test_batch.bin");
        write_batch(&p, 2, 0);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(2 * CIFAR_RECORD_BYTES - 100);
        std::fs::write(&p, &bytes).unwrap();
        let e = load_err(dir.path(), Split::Test);
        crate::test_support::assert_mentions(&e, &["test_batch.bin", "length 6046"]);
        std::fs::write(&p, b"").unwrap();
        let e = load_err(dir.path(), Split::Test);
        crate::test_support::assert_mentions(&e, &["test_batch.bin", "empty"]);
    }

    #[test]
    fn bad_label_names_file_index_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data_batch_1.bin");
        write_batch(&p, 3, 0);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[CIFAR_RECORD_BYTES] = 10;
        std::fs::write(&p, &bytes).unwrap();
        let e = load_err(dir.path(), Split::Train);
        crate::test_support::assert_mentions(&e, &["data_batch_1.bin", "label 10 at index 1"]);
    }
}
