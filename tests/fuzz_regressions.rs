//! The fuzzing corpus and every input a fuzzer found a bug with, replayed
//! as ordinary tests, plus the resource limits the parsers promise.
//!
//! Each file under `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`
//! goes through the same check as the cargo-fuzz target of that name
//! (`fuzz/src/checks.rs`, included below), so `cargo test --release`
//! replays them in CI without cargo-fuzz or a nightly toolchain. Files named
//! `valid-*` must also be accepted.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use gpurt::data::{cifar, image, mnist};
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use gpurt::{DType, Error, Result, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// Allocation accounting: the largest single allocation made by this thread,
// so a test can assert that an absurd header is refused *before* anything
// large is allocated (other test threads do not disturb the count).

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it
/// made on this thread.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(|l| l.get()))
}

/// Nothing a refused input allocates may come near its claimed size.
const SMALL: usize = 1 << 20;

#[test]
fn allocation_tracking_works() {
    let (v, largest) = largest_alloc(|| vec![1u8; 3 << 20]);
    assert!(largest >= 3 << 20, "{largest}");
    drop(v);
    let ((), largest) = largest_alloc(|| ());
    assert_eq!(largest, 0);
}

// ---------------------------------------------------------------------------
// Corpus and regression replay.

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Replays every corpus and regression input of `target` through `check`;
/// returns how many ran. A panic names the input that caused it; a
/// `valid-*` seed must be accepted by `valid`.
fn replay(target: &str, check: fn(&[u8]) -> Result<()>, valid: fn(&[u8]) -> Result<()>) -> usize {
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    assert!(
        corpus.iter().any(|p| is_valid_seed(p)),
        "no valid-* seeds in fuzz/corpus/{target} (run the gen_seeds example)"
    );
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    let mut n = 0;
    for path in corpus.iter().chain(&regressions) {
        let bytes = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("{target}: {} panicked", path.display());
        }
        if is_valid_seed(path) {
            if let Err(e) = valid(&bytes) {
                panic!("{target}: valid seed {} refused: {e}", path.display());
            }
        }
        n += 1;
    }
    n
}

fn is_valid_seed(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("valid-"))
}

#[test]
fn replay_safetensors() {
    // The seeds are valid files, but not of the CNN preset's shapes.
    let parses = |b: &[u8]| gpurt::weights::parse(label(), b).map(|_| ());
    assert!(replay("safetensors", checks::safetensors, parses) > 0);
}

#[test]
fn replay_idx() {
    // A valid file is an image file or a label file, not both.
    let parses = |b: &[u8]| {
        mnist::parse_idx_images(label(), b)
            .map(|_| ())
            .or_else(|_| mnist::parse_idx_labels(label(), b).map(|_| ()))
    };
    assert!(replay("idx", checks::idx, parses) > 0);
}

#[test]
fn replay_cifar() {
    assert!(replay("cifar", checks::cifar, checks::cifar) > 0);
}

#[test]
fn replay_png() {
    assert!(replay("png", checks::png, checks::png) > 0);
}

#[test]
fn replay_checkpoint() {
    assert!(replay("checkpoint", checks::checkpoint, checks::checkpoint) > 0);
}

#[test]
fn replay_serve_request() {
    assert!(
        replay(
            "serve_request",
            checks::serve_request,
            checks::serve_request_valid
        ) > 0
    );
}

#[test]
fn replay_model_spec() {
    assert!(replay("model_spec", checks::model_spec, checks::model_spec) > 0);
}

// ---------------------------------------------------------------------------
// Resource limits: absurd sizes are refused from the header.

fn label() -> &'static Path {
    Path::new(checks::LABEL)
}

fn idx_file(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_header_of_2_pow_40_elements_is_refused_before_allocating() {
    // 2^20 images of 2^10 x 2^10 pixels = 2^40 bytes.
    let header = idx_file(
        mnist::IDX_IMAGES_MAGIC,
        &[1 << 20, 1 << 10, 1 << 10],
        &[0; 64],
    );
    for bytes in [header.clone(), gzip(&header)] {
        let (r, largest) = largest_alloc(|| mnist::parse_idx_images(label(), &bytes));
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Limit(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(checks::LABEL) && text.contains("over the limit"),
            "{text}"
        );
        assert!(largest < SMALL, "allocated {largest} bytes");
    }
    // Labels: one dimension of 2^32 - 1 is under no limit but the file's.
    let labels = idx_file(mnist::IDX_LABELS_MAGIC, &[u32::MAX], &[1, 2, 3]);
    let (r, largest) = largest_alloc(|| mnist::parse_idx_labels(label(), &labels));
    let text = r.unwrap_err().to_string();
    assert!(text.contains(checks::LABEL), "{text}");
    assert!(largest < SMALL, "allocated {largest} bytes");
    // Through the file API, the error names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-images-idx3-ubyte");
    std::fs::write(&path, &header).unwrap();
    let (r, largest) = largest_alloc(|| mnist::read_idx_images(&path));
    let text = r.unwrap_err().to_string();
    assert!(text.contains("train-images-idx3-ubyte"), "{text}");
    assert!(largest < SMALL, "allocated {largest} bytes");
}

#[test]
fn idx_gzip_bomb_is_capped_by_the_compressed_size() {
    // The header claims 1 GiB (under the 2 GiB limit); the stream is tiny.
    let header = idx_file(mnist::IDX_LABELS_MAGIC, &[1 << 30], &[0; 4096]);
    let bytes = gzip(&header);
    let (r, largest) = largest_alloc(|| mnist::parse_idx_labels(label(), &bytes));
    let text = r.unwrap_err().to_string();
    assert!(
        text.contains("truncated") && text.contains(checks::LABEL),
        "{text}"
    );
    assert!(largest < 64 << 20, "allocated {largest} bytes");
}

#[test]
fn safetensors_header_length_of_4_gib_is_refused() {
    let mut bytes = (4u64 << 30).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let (r, largest) = largest_alloc(|| gpurt::weights::parse(label(), &bytes));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    assert!(e.to_string().contains(checks::LABEL), "{e}");
    assert!(largest < SMALL, "allocated {largest} bytes");
    // u64::MAX, and a length longer than the file.
    for len in [u64::MAX, 1000] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let e = gpurt::weights::parse(label(), &bytes).unwrap_err();
        assert!(e.to_string().contains(checks::LABEL), "{e}");
    }
    // Too short for the prefix at all.
    let e = gpurt::weights::parse(label(), b"abc").unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e}");
}

/// A safetensors file built by hand.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn safetensors_tensor_of_2_pow_40_elements_is_refused() {
    // The header claims 2^40 f32 elements with 16 bytes of data.
    let header =
        r#"{"fc1.weight":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,16]}}"#;
    let bytes = raw_safetensors(header, &[0; 16]);
    let (r, largest) = largest_alloc(|| gpurt::weights::parse(label(), &bytes));
    let text = r.unwrap_err().to_string();
    assert!(text.contains(checks::LABEL), "{text}");
    assert!(largest < SMALL, "allocated {largest} bytes");
    // Shapes whose product overflows.
    let header =
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}}"#;
    let e = gpurt::weights::parse(label(), &raw_safetensors(header, &[])).unwrap_err();
    assert!(e.to_string().contains(checks::LABEL), "{e}");
}

#[test]
fn parse_matches_load() {
    let decls = ModelSpec::cnn(10).declare(&[1, 28, 28]).unwrap();
    let tensors: Vec<(String, Tensor)> = decls
        .iter()
        .map(|d| {
            let n = d.shape.numel();
            let data = (0..n).map(|i| (i % 97) as f32 * 0.01).collect();
            (d.name.clone(), Tensor::new(d.shape.clone(), data).unwrap())
        })
        .collect();
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    gpurt::weights::save(&path, &refs, DType::F16, None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let from_file = gpurt::weights::load(&path).unwrap();
    let from_bytes = gpurt::weights::parse(&path, &bytes).unwrap();
    assert_eq!(from_file.tensors, from_bytes.tensors);
    // The full CNN file passes the fuzz check's model comparison for the
    // MNIST input (and is refused, naming a tensor, for CIFAR's).
    let e = checks::safetensors(&bytes).unwrap_err();
    assert!(matches!(e, Error::Weights { .. }), "{e}");
    let mut lw = from_bytes;
    for d in &decls {
        lw.take(&d.name, &d.shape).unwrap();
    }
    lw.check_no_extra().unwrap();
}

fn toml_dense(units: u64) -> String {
    format!("[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"dense\"\nunits = {units}\n")
}

fn config(spec: ModelSpec, input: [usize; 3], classes: usize) -> ClassifierConfig {
    ClassifierConfig {
        spec,
        input: input.to_vec(),
        classes,
        train_batch: Some(2),
        infer_batch: 2,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 0,
        fuse: true,
    }
}

#[test]
fn dense_layer_of_2_pow_40_units_is_refused_before_allocating() {
    let spec = ModelSpec::from_toml(&toml_dense(1 << 40)).unwrap();
    let (r, largest) = largest_alloc(|| spec.declare(&[1, 28, 28]));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("layer 2 (dense)") && text.contains("fc1.weight"),
        "{text}"
    );
    assert!(largest < SMALL, "allocated {largest} bytes");
    // The graph builders refuse it too, whatever the class count.
    let c = config(spec, [1, 28, 28], 1 << 40);
    let (r, largest) = largest_alloc(|| Classifier::train_graph(&c, 2));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    assert!(largest < SMALL, "allocated {largest} bytes");
    let e = Classifier::infer_graph(&c, 2).unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    let e = Classifier::module(&c).unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    // 2^20 x 2^20 = 2^40 parameters from two moderate layers.
    let two = "[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"dense\"\nunits = 1048576\n\
               [[layer]]\ntype = \"dense\"\nunits = 1048576\n";
    let e = ModelSpec::from_toml(two)
        .unwrap()
        .declare(&[1, 28, 28])
        .unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    // usize::MAX units.
    let e = ModelSpec::from_toml(&toml_dense(u64::MAX))
        .and_then(|s| s.declare(&[1, 28, 28]))
        .unwrap_err();
    assert!(matches!(e, Error::Limit(_) | Error::Model(_)), "{e}");
}

#[test]
fn huge_activations_are_refused_before_allocating() {
    // Each layer's parameters are small but its output is 2^34 elements.
    let spec = "[[layer]]\ntype = \"conv2d\"\nfilters = 1\nkernel = 1\npadding = 65536\n\
                [[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"dense\"\nunits = 10\n";
    let spec = ModelSpec::from_toml(spec).unwrap();
    let (r, largest) = largest_alloc(|| spec.declare(&[1, 28, 28]));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    assert!(e.to_string().contains("layer 1 (conv2d)"), "{e}");
    assert!(largest < SMALL, "allocated {largest} bytes");
}

#[test]
fn absurd_layer_settings_are_model_errors() {
    for (layer, what) in [
        (
            "type = \"conv2d\"\nfilters = 4\nkernel = 3\npadding = 1099511627776",
            "padding",
        ),
        (
            "type = \"conv2d\"\nfilters = 4\nkernel = 3\ndilation = 1099511627776",
            "dilation",
        ),
        (
            "type = \"conv2d\"\nfilters = 4\nkernel = 4294967296",
            "kernel",
        ),
        ("type = \"conv2d\"\nfilters = 0\nkernel = 3", "filters"),
        ("type = \"max_pool2d\"\nkernel = 1099511627776", "kernel"),
        ("type = \"avg_pool2d\"\nstride = 0", "stride"),
        ("type = \"batch_norm2d\"\neps = -1.0", "eps"),
        ("type = \"batch_norm2d\"\nmomentum = nan", "momentum"),
        ("type = \"dropout\"\nrate = nan", "rate"),
    ] {
        let text = format!(
            "[[layer]]\n{layer}\n[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"dense\"\nunits = 10\n"
        );
        let e = ModelSpec::from_toml(&text)
            .unwrap()
            .declare(&[1, 28, 28])
            .unwrap_err();
        assert!(matches!(e, Error::Model(_)), "{layer}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("layer 1") && msg.contains(what),
            "{layer}: {msg}"
        );
    }
    let e = ModelSpec::from_toml(&toml_dense(0))
        .unwrap()
        .declare(&[1, 28, 28])
        .unwrap_err();
    assert!(e.to_string().contains("units"), "{e}");
    // An empty input.
    let e = ModelSpec::cnn(10).declare(&[1, 0, 28]).unwrap_err();
    assert!(matches!(e, Error::Model(_)), "{e}");
}

#[test]
fn png_larger_than_its_file_can_hold_is_refused_before_allocating() {
    // A valid IHDR for 8000 x 8000 RGBA 16-bit (64 Mpx: under the pixel
    // limit) in a 100-byte file.
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&8000u32.to_be_bytes());
    ihdr.extend_from_slice(&8000u32.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]);
    let mut body = b"IHDR".to_vec();
    body.extend_from_slice(&ihdr);
    let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
    file.extend_from_slice(&13u32.to_be_bytes());
    file.extend_from_slice(&body);
    file.extend_from_slice(&crc32(&body).to_be_bytes());
    let (r, largest) = largest_alloc(|| image::decode_png(label(), &file, 1, 28, 28));
    let text = r.unwrap_err().to_string();
    assert!(
        text.contains(checks::LABEL) && text.contains("8000x8000"),
        "{text}"
    );
    assert!(largest < SMALL, "allocated {largest} bytes");
    // Absurd output sizes are refused as well.
    let e = image::decode_png(label(), &file, 1, 1 << 20, 1 << 20).unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
}

#[test]
fn cifar_records_round_trip_and_refuse_bad_lengths() {
    let mut file = Vec::new();
    for label in [1u8, 7] {
        file.push(label);
        file.extend(std::iter::repeat_n(label * 10, 3072));
    }
    let d = cifar::parse_records(label(), &file).unwrap();
    assert_eq!(d.labels, vec![1, 7]);
    assert_eq!((d.channels, d.height, d.width), (3, 32, 32));
    let e = cifar::parse_records(label(), &file[..5000]).unwrap_err();
    assert!(e.to_string().contains(checks::LABEL), "{e}");
    let e = cifar::parse_records(label(), &[]).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

/// CRC-32 (IEEE) for hand-built PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ---------------------------------------------------------------------------
// One test per committed regression input: what it did before the fix, and
// the answer it must get now.

fn regression(target: &str, name: &str) -> Vec<u8> {
    let path = fuzz_dir().join("regressions").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn regression_text(name: &str) -> String {
    String::from_utf8(regression("model_spec", name)).unwrap()
}

/// `declare` and the graph builders for both inputs all refuse `text`;
/// returns the `declare` error for MNIST's input.
fn spec_refused(text: &str) -> Error {
    let spec = ModelSpec::from_toml(text).unwrap();
    for input in checks::INPUTS {
        let (r, largest) = largest_alloc(|| spec.declare(&input));
        assert!(r.is_err(), "{input:?} accepted");
        assert!(largest < SMALL, "allocated {largest} bytes");
        let c = config(spec.clone(), input, 10);
        assert!(Classifier::train_graph(&c, 2).is_err());
        assert!(Classifier::infer_graph(&c, 2).is_err());
    }
    spec.declare(&[1, 28, 28]).unwrap_err()
}

#[test]
fn regression_model_spec_conv_kernel_2p32() {
    // Panicked with "attempt to multiply with overflow" computing the fan-in
    // (channels * kernel * kernel) before the weight shape was checked.
    let e = spec_refused(&regression_text("panic-conv-kernel-2p32.toml"));
    assert!(matches!(e, Error::Model(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("layer 1 (conv2d): kernel 4294967296 is over the limit"),
        "{text}"
    );
}

#[test]
fn regression_model_spec_conv_padding_i64_max() {
    // Panicked with "attempt to add with overflow" in the conv2d shape
    // rule's error message (padded size h + 2 * padding).
    let e = spec_refused(&regression_text("panic-conv-padding-i64max.toml"));
    assert!(matches!(e, Error::Model(_)), "{e}");
    assert!(e.to_string().contains("padding"), "{e}");
}

#[test]
fn regression_model_spec_dense_2p40_units() {
    // Was accepted: `declare` returned a [2^40, 784] weight that
    // `Classifier::new` would then have tried to allocate (3.4 PB).
    let e = spec_refused(&regression_text("oom-dense-2p40-units.toml"));
    assert!(matches!(e, Error::Limit(_)), "{e}");
    assert!(e.to_string().contains("fc1.weight"), "{e}");
}

#[test]
fn regression_model_spec_zero_units() {
    // Was accepted: an empty hidden layer, then a layer with fan-in 0 (its
    // initialisation bound 1/sqrt(0) is infinite).
    let e = spec_refused(&regression_text("zero-dense-units.toml"));
    assert!(matches!(e, Error::Model(_)), "{e}");
    assert!(
        e.to_string()
            .contains("layer 2 (dense): units must be at least 1"),
        "{e}"
    );
}

#[test]
fn regression_png_slow_large_images_from_small_files() {
    // 2-4 kB files that took 2.2 s, 4.0 s and 7.1 s (over the 1 s budget) in
    // the fuzz build: the png crate expanded every one of their 17-32
    // million pixels to 8-bit samples (slowest for palettes and Adam7), and
    // gpurt then made full-size planes before resizing. Now the image stays
    // packed and only the pixels the resize samples are unpacked (~20 ms).
    for (name, grey, rgb) in [
        ("slow-grey1-5700x5700.png", 0, [0, 0, 0]),
        ("slow-grey1-trns-adam7-4096x4096.png", 0, [0, 0, 0]),
        // Index 0 of the palette is pure red.
        ("slow-palette1-adam7-5700x5700.png", 76, [255, 0, 0]),
    ] {
        let bytes = regression("png", name);
        let (out, largest) = largest_alloc(|| image::decode_png(label(), &bytes, 1, 28, 28));
        assert_eq!(out.unwrap(), vec![grey; 28 * 28], "{name}");
        // The packed image: 1 bit per pixel, a few MB at most.
        assert!(largest < 8 << 20, "{name}: allocated {largest} bytes");
        let out = image::decode_png(label(), &bytes, 3, 32, 32).unwrap();
        for (c, v) in rgb.into_iter().enumerate() {
            assert!(
                out[c * 1024..(c + 1) * 1024].iter().all(|&p| p == v),
                "{name}"
            );
        }
    }
    // A million rows cost time per row in the png crate itself: refused.
    let bytes = regression("png", "slow-grey1-1x2000000.png");
    let e = image::decode_png(label(), &bytes, 1, 28, 28).unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    assert!(
        e.to_string().contains("1x2000000") && e.to_string().contains(checks::LABEL),
        "{e}"
    );
}

#[test]
fn regression_png_header_without_data() {
    // Allocated the 256 MB frame buffer its header declares before finding
    // that the file holds no image data.
    let bytes = regression("png", "oom-header-8000x8000-rgba16.png");
    let (r, largest) = largest_alloc(|| image::decode_png(label(), &bytes, 3, 32, 32));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e}");
    assert!(
        e.to_string().contains("more than a 45-byte PNG can hold"),
        "{e}"
    );
    assert!(largest < SMALL, "allocated {largest} bytes");
}

#[test]
fn regression_limits_fixtures() {
    for name in ["limit-2p40-elements", "limit-2p40-elements.gz"] {
        let bytes = regression("idx", name);
        let (r, largest) = largest_alloc(|| mnist::parse_idx_images(label(), &bytes));
        assert!(matches!(r, Err(Error::Limit(_))), "{name}: {r:?}");
        assert!(largest < SMALL, "{name}: allocated {largest} bytes");
    }
    let bytes = regression("idx", "bomb-1gib-labels.gz");
    let (r, largest) = largest_alloc(|| mnist::parse_idx_labels(label(), &bytes));
    assert!(r.unwrap_err().to_string().contains("truncated"));
    assert!(largest < SMALL, "allocated {largest} bytes");
    for name in ["limit-header-4gib", "limit-tensor-2p40"] {
        let bytes = regression("safetensors", name);
        let (r, largest) = largest_alloc(|| gpurt::weights::parse(label(), &bytes));
        let e = r.unwrap_err();
        assert!(e.to_string().contains(checks::LABEL), "{name}: {e}");
        assert!(largest < SMALL, "{name}: allocated {largest} bytes");
    }
}

#[test]
fn png_reference_decoder_runs_on_every_valid_seed() {
    // The png check compares gpurt against the png crate's own expansion;
    // make sure that comparison is not silently skipped for the seeds.
    let dir = fuzz_dir().join("corpus").join("png");
    let seeds: Vec<PathBuf> = files(&dir)
        .into_iter()
        .filter(|p| is_valid_seed(p))
        .collect();
    assert!(seeds.len() >= 5);
    for path in seeds {
        let bytes = std::fs::read(&path).unwrap();
        for (c, h, w) in [(1, 28, 28), (3, 32, 32), (3, 5, 3)] {
            let want = checks::reference_png(&bytes, c, h, w)
                .unwrap_or_else(|| panic!("{}: reference refused", path.display()));
            let got = image::decode_png(label(), &bytes, c, h, w).unwrap();
            assert_eq!(got, want, "{} as {c}x{h}x{w}", path.display());
        }
    }
}

/// The request decoder's numeric fast path (`serve/numbers.rs`) against
/// serde_json's own reading, on the valid request seeds mutated at random
/// in the bytes numbers are made of (digits, signs, points, exponents,
/// commas, brackets, quotes, spaces): every mutant passes the
/// `serve_request` check (no panic; a refusal is a 4xx naming a field),
/// and every accepted numeric request holds exactly the values serde_json
/// reads in its `data` (as f32; within one f32 step, since serde_json's
/// default float reading may be an ulp off in f64).
#[test]
fn mutated_requests_decode_as_serde_json_reads_them() {
    use gpurt::serve::request::{decode, InputSpec, Rows};
    const ALPHABET: &[u8] = b"0123456789-+.eE,[] \"";
    let seeds: Vec<Vec<u8>> = ["valid-uint8.json", "valid-fp32-nested.json"]
        .iter()
        .map(|n| std::fs::read(fuzz_dir().join("corpus/serve_request").join(n)).unwrap())
        .collect();
    let spec = InputSpec::Image {
        dims: [1, 28, 28],
        normalizer: gpurt::data::Normalizer::identity(1),
    };
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n as u64) as usize
    };
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..4000 {
        let mut body = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next(4) {
            let at = next(body.len());
            let b = ALPHABET[next(ALPHABET.len())];
            match next(3) {
                0 => body[at] = b,
                1 => body.insert(at, b),
                _ => {
                    body.remove(at);
                }
            }
        }
        if std::panic::catch_unwind(|| checks::serve_request(&body)).is_err() {
            panic!(
                "round {round}: panicked on {}",
                String::from_utf8_lossy(&body)
            );
        }
        let Ok(r) = decode(&body, &spec, 16) else {
            refused += 1;
            continue;
        };
        accepted += 1;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        fn flat(v: &serde_json::Value, out: &mut Vec<f64>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|e| flat(e, out)),
                serde_json::Value::Number(n) => out.push(n.as_f64().unwrap()),
                other => panic!("accepted data holds {other}"),
            }
        }
        let mut want = Vec::new();
        flat(&v["inputs"][0]["data"], &mut want);
        let got: Vec<f32> = match &r.rows {
            Rows::Values(x) => x.clone(),
            Rows::Pixels(p) => p.iter().map(|&b| f32::from(b)).collect(),
            Rows::Texts(_) => panic!("numbers decoded as texts"),
        };
        assert_eq!(got.len(), want.len(), "round {round}");
        for (g, w) in got.iter().zip(&want) {
            // `-0` is pixel 0: equal values, not equal bits.
            let w = *w as f32;
            let steps = (g.to_bits() as i64 - w.to_bits() as i64).abs();
            assert!(
                *g == w || steps <= 1,
                "round {round}: {g} decoded where serde_json reads {w}"
            );
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}
