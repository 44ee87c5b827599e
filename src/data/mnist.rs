//! MNIST in its original IDX format, raw or gzipped.
//!
//! An IDX file is a big-endian header (a magic number whose low byte is the
//! number of dimensions, then one `u32` per dimension) followed by the data.
//! Headers come from the file, so every size is checked against a fixed
//! limit and against the bytes actually present before anything large is
//! allocated; a forged header or a gzip bomb yields an error, not an
//! out-of-memory abort.

use super::{check_labels, Dataset, Split};
use crate::error::{Error, Result};
use flate2::bufread::MultiGzDecoder;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Magic number of an IDX file of unsigned bytes with three dimensions.
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension.
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;
/// Largest data section accepted, in bytes. MNIST's training images are
/// 47 MB; anything past 2 GiB is a corrupt or hostile header.
pub const MAX_IDX_BYTES: u64 = 1 << 31;

/// Gzip streams start with these two bytes, whatever the file is called.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// DEFLATE expands its input at most about 1032-fold, so the compressed size
/// bounds how much memory it is sensible to reserve up front.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Reads an IDX image file: returns `(count, rows, cols, pixels)` with the
/// pixels row-major, image after image.
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (dims, data) = read_idx(path, IDX_IMAGES_MAGIC)?;
    images_from(path, &dims, data)
}

/// Splits an image file's three dimensions out, refusing empty images.
fn images_from(
    path: &Path,
    dims: &[usize],
    data: Vec<u8>,
) -> Result<(usize, usize, usize, Vec<u8>)> {
    let &[count, rows, cols] = dims else {
        return Err(Error::format(
            path,
            format!("expected 3 dimensions, header has {}", dims.len()),
        ));
    };
    if count > 0 && (rows == 0 || cols == 0) {
        return Err(Error::format(
            path,
            format!(
                "header declares {count} images of {rows}x{cols} pixels; images cannot be empty"
            ),
        ));
    }
    Ok((count, rows, cols, data))
}

/// Reads an IDX label file: one byte per item. Label values are not checked
/// here (see [`load_mnist`]) so other one-byte IDX files can be read too.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let (_, data) = read_idx(path, IDX_LABELS_MAGIC)?;
    Ok(data)
}

/// [`read_idx_images`] for a file already in memory (raw or gzipped);
/// `label` names it in errors. Never panics, and never allocates more than
/// the header declares, capped by what `bytes` could hold or decompress to.
pub fn parse_idx_images(label: &Path, bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (dims, data) = parse_idx(label, bytes, IDX_IMAGES_MAGIC)?;
    images_from(label, &dims, data)
}

/// [`read_idx_labels`] for a file already in memory (raw or gzipped).
pub fn parse_idx_labels(label: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let (_, data) = parse_idx(label, bytes, IDX_LABELS_MAGIC)?;
    Ok(data)
}

/// Loads one MNIST split from `dir`, which holds the four standard files
/// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-...`), each
/// either raw or with a `.gz` suffix. Images are 1 x rows x cols.
pub fn load_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::format(dir, "MNIST folder not found"));
    }
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_path = find_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;

    let (count, rows, cols, images) = read_idx_images(&images_path)?;
    let labels = read_idx_labels(&labels_path)?;
    if count != labels.len() {
        return Err(Error::format(
            &images_path,
            format!(
                "holds {count} images but {} holds {} labels",
                labels_path.display(),
                labels.len()
            ),
        ));
    }
    if count == 0 {
        return Err(Error::format(&images_path, "holds no images"));
    }
    check_labels(&labels_path, &labels)?;
    Dataset::new(images, labels, 1, rows, cols)
}

/// The raw file if present, else the `.gz` one; names both when neither is.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if raw.is_file() {
        Ok(raw)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(Error::format(
            &raw,
            format!("MNIST file not found (also tried {})", gz.display()),
        ))
    }
}

/// Reads as many bytes as are available up to `buf.len()`; a short count
/// means end of input. `read_exact` would not say how much was there.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Human name of the IDX kinds this module knows, for error hints.
fn idx_kind(magic: u32) -> Option<&'static str> {
    match magic {
        IDX_IMAGES_MAGIC => Some("image"),
        IDX_LABELS_MAGIC => Some("label"),
        _ => None,
    }
}

/// Reads an IDX file of unsigned bytes whose magic must be `magic` (the low
/// byte of which gives the number of dimensions). Returns the dimensions and
/// the data section.
fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let io = |e| Error::io(path, e);
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    read_idx_from(path, BufReader::new(file), file_len, magic)
}

/// [`read_idx`] over bytes in memory.
fn parse_idx(label: &Path, bytes: &[u8], magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    read_idx_from(label, Cursor::new(bytes), bytes.len() as u64, magic)
}

/// The IDX reader proper, over any seekable source of `file_len` bytes
/// (a file or a buffer). The source is streamed, never read whole.
fn read_idx_from<'a, R: BufRead + Seek + 'a>(
    path: &Path,
    mut src: R,
    file_len: u64,
    magic: u32,
) -> Result<(Vec<usize>, Vec<u8>)> {
    let io = |e| Error::io(path, e);
    let mut sniff = [0u8; 2];
    let sniffed = read_up_to(&mut src, &mut sniff).map_err(io)?;
    src.seek(SeekFrom::Start(0)).map_err(io)?;
    let gz = sniffed == 2 && sniff == GZIP_MAGIC;
    let mut reader: Box<dyn Read + 'a> = if gz {
        Box::new(MultiGzDecoder::new(src))
    } else {
        Box::new(src)
    };
    // Errors inside a gzip stream are about the file's contents, not the
    // file system, so say so.
    let read_err = |e: std::io::Error| {
        if gz {
            Error::format(path, format!("gzip data is corrupt or truncated: {e}"))
        } else {
            Error::io(path, e)
        }
    };

    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    let mut header = vec![0u8; header_len];
    let got = read_up_to(&mut reader, &mut header).map_err(read_err)?;
    if got >= 4 {
        let found = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if found != magic {
            let hint = match idx_kind(found) {
                Some(kind) => format!(" (this is an IDX {kind} file)"),
                None => String::new(),
            };
            return Err(Error::format(
                path,
                format!(
                    "wrong magic number 0x{found:08x}, expected 0x{magic:08x} for an IDX {} file{hint}",
                    idx_kind(magic).unwrap_or("data")
                ),
            ));
        }
    }
    if got < header_len {
        return Err(Error::format(
            path,
            format!("truncated header: expected {header_len} bytes, got {got}"),
        ));
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let dims_text = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x");
    let payload = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            Error::Limit(format!(
                "{}: header declares {dims_text} bytes of data, over the limit of {MAX_IDX_BYTES}",
                path.display()
            ))
        })?;
    let expected_total = header_len as u64 + payload;

    if !gz {
        // The file length is known, so a lying header is caught before the
        // data buffer is allocated.
        if file_len < expected_total {
            return Err(Error::format(
                path,
                format!(
                    "truncated: header declares {dims_text}, so expected {expected_total} bytes, got {file_len}"
                ),
            ));
        }
        if file_len > expected_total {
            return Err(Error::format(
                path,
                format!(
                    "header declares {dims_text}, so expected {expected_total} bytes, but the file has {file_len} ({} extra)",
                    file_len - expected_total
                ),
            ));
        }
    }

    // For gzip the decompressed length is unknown until it is read; `take`
    // caps the read at what the header declares, and the reservation is
    // capped by what the compressed size could possibly expand to, so a tiny
    // file with a huge header cannot make us allocate gigabytes.
    let reserve = payload.min(file_len.saturating_mul(MAX_DEFLATE_RATIO)) as usize;
    let mut data = Vec::with_capacity(reserve);
    (&mut reader)
        .take(payload)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if (data.len() as u64) < payload {
        let what = if gz { "decompressed data" } else { "data" };
        return Err(Error::format(
            path,
            format!(
                "truncated: header declares {dims_text}, so expected {payload} bytes of {what} after the header, got {}",
                data.len()
            ),
        ));
    }
    let mut extra = [0u8; 1];
    if read_up_to(&mut reader, &mut extra).map_err(read_err)? > 0 {
        return Err(Error::format(
            path,
            format!(
                "header declares {dims_text}, so expected {expected_total} bytes, but the data goes on past that"
            ),
        ));
    }
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::io::Write;

    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    /// Writes a small MNIST-style folder; `gz` picks the compressed names.
    fn write_mnist(dir: &Path, prefix: &str, n: usize, gz: bool) -> (Vec<u8>, Vec<u8>) {
        let pixels = random_bytes(n * 5 * 4, n as u64);
        let labels: Vec<u8> = random_bytes(n, 99).iter().map(|b| b % 10).collect();
        let img = idx_bytes(IDX_IMAGES_MAGIC, &[n as u32, 5, 4], &pixels);
        let lab = idx_bytes(IDX_LABELS_MAGIC, &[n as u32], &labels);
        let (img, lab, sfx) = if gz {
            (gzip(&img), gzip(&lab), ".gz")
        } else {
            (img, lab, "")
        };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{sfx}")), img).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{sfx}")), lab).unwrap();
        (pixels, labels)
    }

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn round_trip_raw_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let (px, lb) = write_mnist(dir.path(), "train", 17, false);
        let d = load_mnist(dir.path(), Split::Train).unwrap();
        assert_eq!((d.len(), d.channels, d.height, d.width), (17, 1, 5, 4));
        assert_eq!((d.images, d.labels), (px, lb));

        let (px, lb) = write_mnist(dir.path(), "t10k", 9, true);
        let d = load_mnist(dir.path(), Split::Test).unwrap();
        assert_eq!(d.len(), 9);
        assert_eq!((d.images, d.labels), (px, lb));
    }

    #[test]
    fn gzip_detected_by_magic_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let px = random_bytes(3 * 2 * 2, 5);
        // Gzipped content under a raw name, raw content under a .gz name.
        let a = dir.path().join("a-images");
        std::fs::write(&a, gzip(&idx_bytes(IDX_IMAGES_MAGIC, &[3, 2, 2], &px))).unwrap();
        let b = dir.path().join("b-images.gz");
        std::fs::write(&b, idx_bytes(IDX_IMAGES_MAGIC, &[3, 2, 2], &px)).unwrap();
        assert_eq!(read_idx_images(&a).unwrap(), (3, 2, 2, px.clone()));
        assert_eq!(read_idx_images(&b).unwrap(), (3, 2, 2, px));
    }

    #[test]
    fn wrong_magic_names_found_and_expected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels-as-images");
        std::fs::write(&p, idx_bytes(IDX_LABELS_MAGIC, &[2], &[1, 2])).unwrap();
        let e = err_text(read_idx_images(&p));
        crate::test_support::assert_mentions(&e, &["labels-as-images"]);
        crate::test_support::assert_mentions(&e, &["0x00000801", "0x00000803", "label file"]);
        let g = dir.path().join("garbage.gz");
        std::fs::write(&g, gzip(b"hello world, not idx")).unwrap();
        let e = err_text(read_idx_labels(&g));
        crate::test_support::assert_mentions(&e, &["garbage.gz", "wrong magic number"]);
    }

    #[test]
    fn truncated_files_say_expected_and_got() {
        let dir = tempfile::tempdir().unwrap();
        let full = idx_bytes(IDX_IMAGES_MAGIC, &[4, 3, 3], &random_bytes(36, 1));
        let p = dir.path().join("short");
        std::fs::write(&p, &full[..30]).unwrap();
        let e = err_text(read_idx_images(&p));
        crate::test_support::assert_mentions(&e, &["short", "truncated"]);
        crate::test_support::assert_mentions(&e, &["expected 52 bytes, got 30"]);

        let p = dir.path().join("short.gz");
        std::fs::write(&p, gzip(&full[..30])).unwrap();
        let e = err_text(read_idx_images(&p));
        crate::test_support::assert_mentions(&e, &["short.gz", "expected 36 bytes"]);
        crate::test_support::assert_mentions(&e, &["got 14"]);

        // A gzip stream cut in the middle is reported, not silently accepted.
        let z = gzip(&full);
        let p = dir.path().join("cut.gz");
        std::fs::write(&p, &z[..z.len() - 12]).unwrap();
        let e = err_text(read_idx_images(&p));
        crate::test_support::assert_mentions(&e, &["cut.gz"]);

        let p = dir.path().join("header");
        std::fs::write(&p, &full[..10]).unwrap();
        let e = err_text(read_idx_images(&p));
        crate::test_support::assert_mentions(&e, &["truncated header: expected 16 bytes, got 10"]);

        let p = dir.path().join("empty");
        std::fs::write(&p, b"").unwrap();
        let e = err_text(read_idx_labels(&p));
        crate::test_support::assert_mentions(&e, &["empty", "expected 8 bytes, got 0"]);
    }

    #[test]
    fn trailing_data_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = idx_bytes(IDX_LABELS_MAGIC, &[3], &[1, 2, 3]);
        bytes.push(7);
        let p = dir.path().join("long");
        std::fs::write(&p, &bytes).unwrap();
        let e = err_text(read_idx_labels(&p));
        crate::test_support::assert_mentions(&e, &["long", "1 extra"]);
        let p = dir.path().join("long.gz");
        std::fs::write(&p, gzip(&bytes)).unwrap();
        let e = err_text(read_idx_labels(&p));
        crate::test_support::assert_mentions(&e, &["long.gz", "goes on past"]);
    }

    #[test]
    fn absurd_header_rejected_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        // 65535^3 bytes would be 2.8e14; must be refused from the header.
        let huge = idx_bytes(IDX_IMAGES_MAGIC, &[65535, 65535, 65535], &[0; 16]);
        let p = dir.path().join("huge");
        std::fs::write(&p, &huge).unwrap();
        let e = err_text(read_idx_images(&p));
        crate::test_support::assert_mentions(&e, &["huge", "over the limit"]);
        // Under the limit but far more than the file holds: raw files are
        // checked against their length before the buffer is made.
        let big = idx_bytes(IDX_IMAGES_MAGIC, &[1 << 20, 28, 28], &[0; 16]);
        let p = dir.path().join("big");
        std::fs::write(&p, &big).unwrap();
        let e = err_text(read_idx_images(&p));
        crate::test_support::assert_mentions(&e, &["expected 822083600 bytes, got 32"]);
        // A gzip bomb: header claims 1 GiB and the stream really is that long
        // (highly compressible zeros, written incrementally). The read is
        // capped by the header, so it allocates at most what was declared;
        // here we declare less than the stream holds and get a clean error.
        let p = dir.path().join("bomb.gz");
        let mut enc = GzEncoder::new(File::create(&p).unwrap(), Compression::best());
        enc.write_all(&idx_bytes(IDX_LABELS_MAGIC, &[1000], &[]))
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap();
        let e = err_text(read_idx_labels(&p));
        crate::test_support::assert_mentions(&e, &["bomb.gz", "goes on past"]);
    }

    #[test]
    fn missing_folder_and_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = err_text(load_mnist(&missing, Split::Train));
        crate::test_support::assert_mentions(&e, &["nope", "not found"]);
        let e = err_text(load_mnist(dir.path(), Split::Test));
        crate::test_support::assert_mentions(
            &e,
            &["t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"],
        );
        write_mnist(dir.path(), "t10k", 3, false);
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let e = err_text(load_mnist(dir.path(), Split::Test));
        crate::test_support::assert_mentions(&e, &["t10k-labels-idx1-ubyte"]);
    }

    #[test]
    fn count_mismatch_names_both_counts() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), "train", 6, true);
        let lab = idx_bytes(IDX_LABELS_MAGIC, &[5], &[0, 1, 2, 3, 4]);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), gzip(&lab)).unwrap();
        let e = err_text(load_mnist(dir.path(), Split::Train));
        crate::test_support::assert_mentions(&e, &["6 images", "5 labels"]);
        crate::test_support::assert_mentions(&e, &["train-labels-idx1-ubyte.gz"]);
    }

    #[test]
    fn bad_label_names_index_and_value() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), "train", 4, false);
        let lab = idx_bytes(IDX_LABELS_MAGIC, &[4], &[0, 9, 12, 3]);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), lab).unwrap();
        let e = err_text(load_mnist(dir.path(), Split::Train));
        crate::test_support::assert_mentions(&e, &["train-labels-idx1-ubyte"]);
        crate::test_support::assert_mentions(&e, &["label 12 at index 2"]);
    }

    /// Loads the real dataset when the repository has it (data/mnist).
    #[test]
    fn real_mnist_if_present() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
        let dir = if dir.is_dir() {
            dir
        } else {
            PathBuf::from("/work/main/data/mnist")
        };
        if !dir.is_dir() {
            eprintln!("skipping: no MNIST at {}", dir.display());
            return;
        }
        let train = load_mnist(&dir, Split::Train).unwrap();
        let test = load_mnist(&dir, Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (60000, 10000));
        assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
        assert_eq!(train.labels[0], 5);
        assert!(train.labels.iter().chain(&test.labels).all(|&l| l <= 9));
        let n = super::super::Normalizer::fit(&train);
        assert!((n.mean[0] - 0.1307).abs() < 1e-3, "{:?}", n);
        assert!((n.std[0] - 0.3081).abs() < 1e-3, "{:?}", n);
    }
}
