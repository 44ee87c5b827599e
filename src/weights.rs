//! Weights files in the safetensors format, with PyTorch's tensor names and
//! layouts, so a checkpoint written here loads in PyTorch and the other way
//! round. Parameters and optimiser state use the same functions: optimiser
//! tensors are simply named `optim.m.<param>` and the like, and the string
//! metadata map carries things such as the step count and a format tag.
//!
//! Compute is always f32; files may store f32, f16 or bf16 and are converted
//! on load. Every error names the file, and where it makes sense the tensor.

use crate::error::{Error, Result};
use crate::tensor::{bytes_to_f32, f32_to_bytes, DType, Shape, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest header we accept, in bytes. This is the limit the `safetensors`
/// crate enforces itself; checking it before reading the file means a
/// corrupt length prefix can never make us allocate gigabytes.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Size of the little-endian header-length prefix of a safetensors file.
const LEN_PREFIX: u64 = 8;

/// How many available tensor names a "missing tensor" error lists.
const NAMES_IN_ERROR: usize = 5;

/// Tensors read from one weights file, waiting to be claimed by a model.
///
/// The model takes each parameter by name with [`LoadedWeights::take`] and
/// then calls [`LoadedWeights::check_no_extra`], so both a missing and a
/// superfluous tensor are reported instead of silently ignored.
#[derive(Debug, Clone)]
pub struct LoadedWeights {
    pub path: PathBuf,
    /// Each tensor converted to f32, with the dtype it was stored as.
    pub tensors: BTreeMap<String, (Tensor, DType)>,
    pub metadata: HashMap<String, String>,
}

impl LoadedWeights {
    /// Remove and return the tensor `name`, checking its shape and that
    /// every value is finite (a NaN or infinity in a parameter or optimiser
    /// state only ever spreads). On a failed check the tensor stays in place
    /// so the caller may inspect it.
    pub fn take(&mut self, name: &str, expected: &Shape) -> Result<Tensor> {
        self.take_in(name, expected, f32::NEG_INFINITY)
    }

    /// [`take`](Self::take) for a tensor that cannot be negative: a
    /// variance, or Adam's second moment, whose square root is taken.
    pub fn take_non_negative(&mut self, name: &str, expected: &Shape) -> Result<Tensor> {
        self.take_in(name, expected, 0.0)
    }

    fn take_in(&mut self, name: &str, expected: &Shape, min: f32) -> Result<Tensor> {
        let Some((tensor, _)) = self.tensors.get(name) else {
            return Err(self.weights_error(name, self.missing_detail()));
        };
        if &tensor.shape != expected {
            let detail = format!("expected shape {expected}, found {}", tensor.shape);
            return Err(self.weights_error(name, detail));
        }
        if let Some(i) = tensor
            .data
            .iter()
            .position(|v| !(v.is_finite() && *v >= min))
        {
            let what = if min == 0.0 {
                "finite and >= 0"
            } else {
                "finite"
            };
            let detail = format!("value {} at index {i} is not {what}", tensor.data[i]);
            return Err(self.weights_error(name, detail));
        }
        match self.tensors.remove(name) {
            Some((tensor, _)) => Ok(tensor),
            None => Err(self.weights_error(name, "missing")),
        }
    }

    /// Fail if any tensor was never taken: a file with extra tensors usually
    /// belongs to a different model, which should not load silently.
    pub fn check_no_extra(&self) -> Result<()> {
        let Some(first) = self.tensors.keys().next() else {
            return Ok(());
        };
        let detail = match self.tensors.len() {
            1 => "unexpected tensor".to_string(),
            n => format!(
                "unexpected tensor ({} more: {})",
                n - 1,
                name_list(self.tensors.keys().skip(1))
            ),
        };
        Err(self.weights_error(first, detail))
    }

    fn missing_detail(&self) -> String {
        if self.tensors.is_empty() {
            return "missing (no tensors left in the file)".to_string();
        }
        format!("missing (available: {})", name_list(self.tensors.keys()))
    }

    fn weights_error(&self, tensor: &str, detail: impl Into<String>) -> Error {
        Error::Weights {
            path: self.path.clone(),
            tensor: tensor.to_string(),
            detail: detail.into(),
        }
    }
}

/// The first few names, and how many more there are.
fn name_list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&String> = names.collect();
    let mut list = names
        .iter()
        .take(NAMES_IN_ERROR)
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_IN_ERROR {
        list.push_str(&format!(", … {} more", names.len() - NAMES_IN_ERROR));
    }
    list
}

/// Write `tensors` to `path` as safetensors, converted to `dtype`.
///
/// The write is atomic (see [`write_atomic`]): a crash or a failure leaves
/// any previous file at `path` as it was, so a checkpoint is never half
/// written. `dtype` must be a float type; `U32` is refused because
/// parameters and optimiser state are real-valued.
pub fn save(
    path: &Path,
    tensors: &[(String, &Tensor)],
    dtype: DType,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let stored = to_safetensors_dtype(dtype).ok_or_else(|| {
        Error::Usage(format!(
            "cannot save weights as {dtype}: use f32, f16 or bf16 ({})",
            path.display()
        ))
    })?;
    check_unique_names(path, tensors)?;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| f32_to_bytes(dtype, &t.data))
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            TensorView::new(stored, t.shape.dims().to_vec(), b)
                .map(|view| (name.as_str(), view))
                .map_err(|e| Error::Weights {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    detail: format!("cannot serialise: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let file = safetensors::serialize(views, metadata)
        .map_err(|e| Error::format(path, format!("cannot serialise safetensors: {e}")))?;
    write_atomic(path, &canonical_header(path, file)?)
}

/// The same file with its JSON header's keys sorted: `safetensors` writes
/// the metadata map in hash order, so two saves of the same tensors would
/// differ byte for byte. The header stays padded to 8 bytes, as the format
/// asks, and the data section is untouched.
fn canonical_header(path: &Path, file: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |d: &str| Error::format(path, format!("cannot serialise safetensors: {d}"));
    let n = file
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .ok_or_else(|| bad("no header"))?;
    let header: serde_json::Value = file
        .get(8..8 + n)
        .and_then(|h| serde_json::from_slice(h).ok())
        .ok_or_else(|| bad("unreadable header"))?;
    // serde_json's map is ordered by key (no `preserve_order` feature).
    let mut text = serde_json::to_vec(&header).map_err(|e| bad(&e.to_string()))?;
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + text.len() + file.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&file[8 + n..]);
    Ok(out)
}

/// Duplicate names would collapse into one header entry and corrupt the
/// file's offsets, so they are a caller error.
fn check_unique_names(path: &Path, tensors: &[(String, &Tensor)]) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                tensor: name.clone(),
                detail: "name given twice".to_string(),
            });
        }
    }
    Ok(())
}

/// Read a safetensors file, converting every tensor to f32.
///
/// The header length is validated against the file size and
/// [`MAX_HEADER_BYTES`] before the file is read, so a corrupt prefix fails
/// fast. Stored dtypes other than F32, F16 and BF16 are an error naming the
/// tensor, not a silent cast.
pub fn load(path: &Path) -> Result<LoadedWeights> {
    let buffer = read_checked(path)?;
    parse(path, &buffer)
}

/// Parse a whole safetensors file held in memory; `label` names it in
/// errors (and becomes [`LoadedWeights::path`]). This is [`load`] without
/// the file system, for callers that already hold the bytes and for fuzzing.
///
/// Never panics, and allocates at most about twice `bytes.len()` (f16 data
/// widened to f32): the header length is checked against the buffer before
/// the header is parsed, and every tensor's size against the data present.
pub fn parse(label: &Path, bytes: &[u8]) -> Result<LoadedWeights> {
    let path = label;
    let Some(prefix) = bytes.first_chunk::<{ LEN_PREFIX as usize }>() else {
        return Err(Error::format(
            path,
            format!(
                "file is {} bytes, too short for a safetensors header",
                bytes.len()
            ),
        ));
    };
    check_header_len(path, u64::from_le_bytes(*prefix), bytes.len() as u64)?;
    // `read_metadata` checks that the offsets tile the data section exactly
    // and that each tensor's byte size matches its shape and dtype (with
    // overflow checks), so the slices below are in range.
    let (header_len, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let data = bytes
        .get(LEN_PREFIX as usize + header_len..)
        .unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for name in header.offset_keys() {
        // PyTorch's batch-norm step counter (an i64 scalar) is bookkeeping
        // gpurt does not use; every other tensor must be a float type.
        if name.ends_with(".num_batches_tracked") {
            continue;
        }
        let Some(info) = header.info(&name) else {
            continue;
        };
        let (start, end) = info.data_offsets;
        let Some(raw) = data.get(start..end) else {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                tensor: name,
                detail: format!("data offsets {start}..{end} are outside the data section"),
            });
        };
        let loaded = convert_view(path, &name, info.dtype, &info.shape, raw)?;
        tensors.insert(name, loaded);
    }
    Ok(LoadedWeights {
        path: path.to_path_buf(),
        tensors,
        metadata: header.metadata().clone().unwrap_or_default(),
    })
}

/// Read the whole file after checking that its header-length prefix is
/// plausible.
fn read_checked(path: &Path) -> Result<Vec<u8>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len < LEN_PREFIX {
        return Err(Error::format(
            path,
            format!("file is {file_len} bytes, too short for a safetensors header"),
        ));
    }
    let mut prefix = [0u8; LEN_PREFIX as usize];
    file.read_exact(&mut prefix)
        .map_err(|e| Error::io(path, e))?;
    check_header_len(path, u64::from_le_bytes(prefix), file_len)?;
    let capacity = usize::try_from(file_len)
        .map_err(|_| Error::Limit(format!("{}: file too large to read", path.display())))?;
    let mut buffer = Vec::with_capacity(capacity);
    buffer.extend_from_slice(&prefix);
    file.read_to_end(&mut buffer)
        .map_err(|e| Error::io(path, e))?;
    Ok(buffer)
}

fn check_header_len(path: &Path, header_len: u64, file_len: u64) -> Result<()> {
    if header_len > MAX_HEADER_BYTES {
        return Err(Error::Limit(format!(
            "{}: safetensors header length {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte cap \
             (corrupt file?)",
            path.display()
        )));
    }
    if header_len + LEN_PREFIX > file_len {
        return Err(Error::format(
            path,
            format!(
                "safetensors header length {header_len} bytes does not fit in a {file_len}-byte \
                 file (truncated or corrupt)"
            ),
        ));
    }
    Ok(())
}

fn convert_view(
    path: &Path,
    name: &str,
    stored: Dtype,
    shape: &[usize],
    raw: &[u8],
) -> Result<(Tensor, DType)> {
    let weights_error = |detail: String| Error::Weights {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        detail,
    };
    let dtype = from_safetensors_dtype(stored).ok_or_else(|| {
        weights_error(format!(
            "stored dtype {stored} is not supported (use F32, F16 or BF16)"
        ))
    })?;
    let shape = Shape::new(shape);
    let numel = shape
        .checked_numel()
        .map_err(|e| weights_error(e.to_string()))?;
    if numel.checked_mul(dtype.size_bytes()) != Some(raw.len()) {
        return Err(weights_error(format!(
            "shape {shape} as {dtype} needs {numel} elements, the data holds {} bytes",
            raw.len()
        )));
    }
    let data = bytes_to_f32(dtype, raw).map_err(|e| weights_error(e.to_string()))?;
    let tensor = Tensor::new(shape, data).map_err(|e| weights_error(e.to_string()))?;
    Ok((tensor, dtype))
}

/// The float storage types we can write; `None` for `U32`.
fn to_safetensors_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F32 => Some(Dtype::F32),
        DType::F16 => Some(Dtype::F16),
        DType::BF16 => Some(Dtype::BF16),
        DType::U32 => None,
    }
}

/// The stored types we convert to f32; `None` for everything else.
fn from_safetensors_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Replace `path` with `bytes` so that readers see either the old file or
/// the complete new one, never a partial write.
///
/// The bytes go to a hidden sibling temp file (same directory, hence same
/// filesystem, so the rename is atomic), which is synced before being
/// renamed over `path`; the directory is then synced, best effort, so the
/// rename itself survives a power loss. On failure the temp file is removed
/// and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path)?;
    let written = write_synced(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    sync_parent_dir(path);
    Ok(())
}

/// `dir/.name.<pid>.tmp`: hidden, and unique per process so two processes
/// writing the same file cannot clobber each other's temp file.
fn temp_sibling(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file path", path.display())))?;
    let tmp_name = format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(tmp_name))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Best effort: some platforms and filesystems cannot open or sync a
/// directory, and the data itself is already safely on disk.
fn sync_parent_dir(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|i| (i as f32 - n as f32 / 3.0) * scale)
            .collect();
        Tensor::new(shape.to_vec(), data).unwrap()
    }

    fn sample() -> Vec<(String, Tensor)> {
        vec![
            ("conv1.weight".to_string(), ramp(&[4, 1, 3, 3], 0.0137)),
            ("conv1.bias".to_string(), ramp(&[4], -0.71)),
            ("fc.weight".to_string(), ramp(&[3, 5], 1.0e-3)),
        ]
    }

    fn refs(tensors: &[(String, Tensor)]) -> Vec<(String, &Tensor)> {
        tensors.iter().map(|(n, t)| (n.clone(), t)).collect()
    }

    /// A safetensors file built by hand, as PyTorch would write it.
    fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.expect_err("expected an error").to_string()
    }

    /// `sample()` saved in f32 and loaded back (the folder lives as long
    /// as the returned guard).
    fn reloaded_sample() -> (tempfile::TempDir, LoadedWeights) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        save(&path, &refs(&sample()), DType::F32, None).unwrap();
        let loaded = load(&path).unwrap();
        (dir, loaded)
    }

    /// `sample()` saved in f32: the folder, the file, the tensors and the
    /// file's bytes.
    fn saved_sample_file() -> (tempfile::TempDir, PathBuf, Vec<(String, Tensor)>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let tensors = sample();
        save(&path, &refs(&tensors), DType::F32, None).unwrap();
        let before = std::fs::read(&path).unwrap();
        (dir, path, tensors, before)
    }

    #[test]
    fn f32_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let tensors = sample();
        save(&path, &refs(&tensors), DType::F32, None).unwrap();
        let mut loaded = load(&path).unwrap();
        for (name, t) in &tensors {
            assert_eq!(loaded.tensors[name].1, DType::F32);
            assert_eq!(&loaded.take(name, &t.shape).unwrap(), t);
        }
        loaded.check_no_extra().unwrap();
    }

    #[test]
    fn half_round_trips_match_half_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = sample();
        for dtype in [DType::F16, DType::BF16] {
            let path = dir.path().join(format!("model-{dtype}.safetensors"));
            save(&path, &refs(&tensors), dtype, None).unwrap();
            let loaded = load(&path).unwrap();
            for (name, t) in &tensors {
                let (got, stored) = &loaded.tensors[name];
                assert_eq!(*stored, dtype);
                let want: Vec<f32> = t
                    .data
                    .iter()
                    .map(|&v| match dtype {
                        DType::F16 => half::f16::from_f32(v).to_f32(),
                        _ => half::bf16::from_f32(v).to_f32(),
                    })
                    .collect();
                assert_eq!(got.data, want, "{name} as {dtype}");
                assert_eq!(got.shape, t.shape);
            }
        }
    }

    #[test]
    fn u32_is_refused_for_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let err = save(&path, &refs(&sample()), DType::U32, None).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn metadata_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optim.safetensors");
        let tensors = vec![("optim.m.conv1.weight".to_string(), ramp(&[2, 2], 0.5))];
        let meta: HashMap<String, String> = [("step", "123"), ("format", "gpurt-optim-v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        save(&path, &refs(&tensors), DType::F32, Some(meta.clone())).unwrap();
        assert_eq!(load(&path).unwrap().metadata, meta);
    }

    #[test]
    fn loads_a_hand_written_pytorch_style_file() {
        let weight: Vec<f32> = (0..288).map(|i| i as f32 * 0.25 - 3.0).collect();
        let bias: Vec<f32> = (0..32).map(|i| -(i as f32)).collect();
        let mut data = f32_to_bytes(DType::F32, &weight);
        data.extend(f32_to_bytes(DType::F32, &bias));
        let header = r#"{"__metadata__":{"format":"pt"},"conv1.weight":{"dtype":"F32","shape":[32,1,3,3],"data_offsets":[0,1152]},"conv1.bias":{"dtype":"F32","shape":[32],"data_offsets":[1152,1280]}}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("torch.safetensors");
        std::fs::write(&path, raw_file(header, &data)).unwrap();

        let mut loaded = load(&path).unwrap();
        assert_eq!(loaded.metadata["format"], "pt");
        let w = loaded
            .take("conv1.weight", &Shape::new(&[32, 1, 3, 3]))
            .unwrap();
        assert_eq!(w.data, weight);
        let b = loaded.take("conv1.bias", &Shape::new(&[32])).unwrap();
        assert_eq!(b.data, bias);
        loaded.check_no_extra().unwrap();
    }

    #[test]
    fn truncated_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.safetensors");
        save(&path, &refs(&sample()), DType::F32, None).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let text = err_text(load(&path));
        crate::test_support::assert_mentions(&text, &["cut.safetensors"]);
    }

    #[test]
    fn short_and_garbage_files_are_format_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.safetensors");
        for bytes in [&b"abc"[..], &raw_file("not json", &[])] {
            std::fs::write(&path, bytes).unwrap();
            let err = load(&path).unwrap_err();
            assert!(matches!(err, Error::Format { .. }), "{err}");
            assert!(err.to_string().contains("junk.safetensors"), "{err}");
        }
    }

    #[test]
    fn unsupported_dtype_names_the_tensor() {
        let header = r#"{"num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[0,8]}}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bn.safetensors");
        std::fs::write(&path, raw_file(header, &7i64.to_le_bytes())).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, Error::Weights { .. }), "{err}");
        let text = err.to_string();
        crate::test_support::assert_mentions(&text, &["num_batches_tracked"]);
        crate::test_support::assert_mentions(&text, &["I64"]);
    }

    #[test]
    fn missing_tensor_is_named_with_alternatives() {
        let (_dir, mut loaded) = reloaded_sample();
        let text = err_text(loaded.take("conv2.weight", &Shape::new(&[4])));
        crate::test_support::assert_mentions(&text, &["conv2.weight"]);
        crate::test_support::assert_mentions(&text, &["missing"]);
        crate::test_support::assert_mentions(&text, &["conv1.bias"]);
    }

    #[test]
    fn shape_mismatch_names_both_shapes() {
        let (_dir, mut loaded) = reloaded_sample();
        let text = err_text(loaded.take("fc.weight", &Shape::new(&[5, 3])));
        crate::test_support::assert_mentions(&text, &["fc.weight"]);
        crate::test_support::assert_mentions(&text, &["[5, 3]", "[3, 5]"]);
        assert!(loaded.tensors.contains_key("fc.weight"));
    }

    #[test]
    fn extra_tensor_is_reported() {
        let (_dir, mut loaded) = reloaded_sample();
        loaded
            .take("conv1.weight", &Shape::new(&[4, 1, 3, 3]))
            .unwrap();
        loaded.take("conv1.bias", &Shape::new(&[4])).unwrap();
        let text = err_text(loaded.check_no_extra());
        crate::test_support::assert_mentions(&text, &["fc.weight", "unexpected tensor"]);
    }

    #[test]
    fn huge_header_length_fails_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.safetensors");
        let mut bytes = (4u64 << 30).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&path, bytes).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err}");
        assert!(err.to_string().contains("huge.safetensors"), "{err}");

        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&path, bytes).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{err}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let t = ramp(&[2], 1.0);
        let list = vec![("a".to_string(), &t), ("a".to_string(), &t)];
        let text = err_text(save(&path, &list, DType::F32, None));
        crate::test_support::assert_mentions(&text, &["'a'"]);
    }

    #[test]
    fn failed_save_leaves_old_file_intact() {
        let (dir, path, tensors, before) = saved_sample_file();

        // A tensor whose data does not match its shape fails to serialise.
        let bad = Tensor {
            shape: Shape::new(&[7]),
            data: vec![1.0; 3],
        };
        let list = vec![("bad".to_string(), &bad)];
        assert!(save(&path, &list, DType::F32, None).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);

        // A destination directory that does not exist.
        let nowhere = dir.path().join("no-such-dir").join("model.safetensors");
        assert!(save(&nowhere, &refs(&tensors), DType::F32, None).is_err());

        // Making the target a directory makes the final rename fail after
        // the temp file was written; the temp file must be cleaned up.
        let blocked = dir.path().join("blocked.safetensors");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("keep"), b"x").unwrap();
        assert!(save(&blocked, &refs(&tensors), DType::F32, None).is_err());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[cfg(unix)]
    #[test]
    fn read_only_dir_save_fails_and_keeps_old_file() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path, _tensors, before) = saved_sample_file();
        let set_mode = |mode| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set_mode(0o555);
        // Root ignores directory permissions; then there is nothing to test.
        let writable = File::create(dir.path().join("probe")).is_ok();
        let result = save(
            &path,
            &refs(&[("x".to_string(), ramp(&[1], 1.0))]),
            DType::F32,
            None,
        );
        set_mode(0o755);
        if !writable {
            assert!(result.is_err());
            assert_eq!(std::fs::read(&path).unwrap(), before);
        }
    }
}
