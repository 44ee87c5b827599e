//! One check per fuzz target: feed arbitrary bytes to a parser's byte-level
//! entry point and assert what must hold whatever the input. A check panics
//! only when gpurt misbehaves (a result that contradicts itself, or an error
//! that does not name the input); the parser itself must return `Err` for
//! bad input, never panic, hang or allocate without bound.
//!
//! This file is compiled twice: as `gpurt_fuzz::checks` for the fuzz
//! targets, and through `#[path]` in the main crate's
//! `tests/fuzz_regressions.rs`, which replays the committed corpus and
//! regression inputs with it. It may therefore use only `std`, `gpurt` and
//! gpurt's own dependencies (`png`).

use gpurt::checkpoint::Checkpoint;
use gpurt::data::{cifar, image, mnist};
use gpurt::graph::Graph;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use gpurt::{DType, Error, Result};
use std::path::Path;

/// The name every byte-level entry point is given; errors about the input
/// must mention it.
pub const LABEL: &str = "fuzz-input";

/// Model inputs `[c, h, w]` the spec and weights checks try: MNIST's and
/// CIFAR-10's.
pub const INPUTS: [[usize; 3]; 2] = [[1, 28, 28], [3, 32, 32]];

/// Batch of the graphs built from a fuzzed spec.
const BATCH: usize = 2;

/// PNG targets: `(channels, height, width)`.
const PNG_TARGETS: [(usize, usize, usize); 2] = [(1, 28, 28), (3, 32, 32)];

fn label() -> &'static Path {
    Path::new(LABEL)
}

/// Panics unless `e` names the input: a one-line error that does not say
/// which file is wrong is a bug too.
fn names_input(e: &Error) {
    let text = e.to_string();
    assert!(
        text.contains(LABEL),
        "error does not name the input: {text}"
    );
}

/// Returns the first error (after checking it names the input).
fn named<T>(r: Result<T>) -> Result<T> {
    if let Err(e) = &r {
        names_input(e);
    }
    r
}

/// A safetensors file, then its names, shapes and dtypes against the CNN
/// preset (as `gpurt predict --model cnn` would load it) for both inputs.
pub fn safetensors(data: &[u8]) -> Result<()> {
    let loaded = named(gpurt::weights::parse(label(), data))?;
    for (name, (t, _)) in &loaded.tensors {
        assert_eq!(
            t.data.len(),
            t.shape.checked_numel().expect("shape checked by parse"),
            "tensor {name}"
        );
    }
    let mut first = Ok(());
    for input in INPUTS {
        let decls = ModelSpec::cnn(10).declare(&input)?;
        let mut weights = loaded.clone();
        let mut result = Ok(());
        for d in &decls {
            match weights.take(&d.name, &d.shape) {
                Ok(t) => assert_eq!(t.shape, d.shape, "{}", d.name),
                Err(e) => {
                    names_input(&e);
                    result = result.and(Err(e));
                }
            }
        }
        if result.is_ok() {
            result = named(weights.check_no_extra());
        }
        first = first.and(result);
    }
    first
}

/// An IDX file, read both as images and as labels.
pub fn idx(data: &[u8]) -> Result<()> {
    let images = named(mnist::parse_idx_images(label(), data));
    if let Ok((count, rows, cols, pixels)) = &images {
        assert_eq!(pixels.len(), count * rows * cols);
    }
    let labels = named(mnist::parse_idx_labels(label(), data));
    images.and(labels).map(|_| ())
}

/// A CIFAR-10 batch file.
pub fn cifar(data: &[u8]) -> Result<()> {
    let set = named(cifar::parse_records(label(), data))?;
    assert_eq!(set.len() * cifar::CIFAR_RECORD_BYTES, data.len());
    assert_eq!(set.images.len(), set.len() * 3 * 32 * 32);
    Ok(())
}

/// A PNG given to `predict`, converted to MNIST's and CIFAR-10's inputs.
/// Small images are also decoded by the `png` crate's own expansion to
/// 8-bit samples, and the two results must agree exactly: gpurt unpacks
/// only the pixels it samples, so this checks its unpacking of bit depths,
/// palettes and interlacing.
pub fn png(data: &[u8]) -> Result<()> {
    let mut first = Ok(());
    for (c, h, w) in PNG_TARGETS {
        let ours = named(image::decode_png(label(), data, c, h, w));
        if let Some(want) = reference_png(data, c, h, w) {
            match &ours {
                Ok(got) => assert_eq!(got, &want, "{c}x{h}x{w} differs from the png crate"),
                Err(e) => panic!("the png crate decodes it but gpurt says: {e}"),
            }
        }
        match ours {
            Ok(px) => assert_eq!(px.len(), c * h * w),
            Err(e) => first = first.and(Err(e)),
        }
    }
    first
}

/// Largest image the reference decoder is run on, in pixels.
const REFERENCE_PIXELS: u64 = 1 << 16;

/// `c x h x w` planes the straightforward way: the `png` crate expands every
/// pixel to 8-bit samples, then grey is replicated, colour turned grey by
/// BT.601 luminance, alpha dropped, and the planes resized bilinearly with
/// pixel centres aligned. `None` if the crate refuses the file or the image
/// is large.
pub fn reference_png(data: &[u8], c: usize, h: usize, w: usize) -> Option<Vec<u8>> {
    use png::{BitDepth, ColorType, Decoder, Transformations};
    let mut decoder = Decoder::new(std::io::Cursor::new(data));
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let (sw, sh) = decoder.read_header_info().ok()?.size();
    if u64::from(sw) * u64::from(sh) > REFERENCE_PIXELS {
        return None;
    }
    let mut reader = decoder.read_info().ok()?;
    let mut buf = vec![0u8; reader.output_buffer_size()?];
    let info = reader.next_frame(&mut buf).ok()?;
    assert_eq!(info.bit_depth, BitDepth::Eight);
    let (samples, colour) = match info.color_type {
        ColorType::Grayscale => (1, 1),
        ColorType::GrayscaleAlpha => (2, 1),
        ColorType::Rgb => (3, 3),
        ColorType::Rgba => (4, 3),
        ColorType::Indexed => unreachable!("palettes are expanded"),
    };
    let (sw, sh) = (info.width as usize, info.height as usize);
    let luma = |r: u8, g: u8, b: u8| {
        let y = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
        y.round().clamp(0.0, 255.0) as u8
    };
    let at = |ch: usize, y: usize, x: usize| {
        let px = &buf[(y * sw + x) * samples..][..samples];
        match (colour, c) {
            (1, _) => px[0],
            (_, 1) => luma(px[0], px[1], px[2]),
            _ => px[ch],
        }
    };
    let taps = |d: usize, s: usize| -> Vec<(usize, usize, f32)> {
        let scale = s as f64 / d as f64;
        (0..d)
            .map(|i| {
                let pos = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (s - 1) as f64);
                let i0 = pos.floor() as usize;
                (i0, (i0 + 1).min(s - 1), (pos - i0 as f64) as f32)
            })
            .collect()
    };
    let mut out = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        if (sh, sw) == (h, w) {
            for y in 0..h {
                for x in 0..w {
                    out.push(at(ch, y, x));
                }
            }
            continue;
        }
        for &(y0, y1, fy) in &taps(h, sh) {
            for &(x0, x1, fx) in &taps(w, sw) {
                let p = |y, x| f32::from(at(ch, y, x));
                let top = p(y0, x0) * (1.0 - fx) + p(y0, x1) * fx;
                let bot = p(y1, x0) * (1.0 - fx) + p(y1, x1) * fx;
                let v = top * (1.0 - fy) + bot * fy;
                out.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    Some(out)
}

/// A TOML model spec: parse it, declare its parameters for both inputs,
/// and where that succeeds build, fuse and plan the training and inference
/// graphs at batch 2 (shape rules of every layer, autodiff, the optimiser
/// update and the arena plan), without allocating any tensor.
pub fn model_spec(data: &[u8]) -> Result<()> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let spec = ModelSpec::from_toml(text)?;
    let optim = match data.len() % 3 {
        0 => OptimizerKind::Sgd,
        1 => OptimizerKind::Adam,
        _ => OptimizerKind::AdamW,
    };
    let mut first = Ok(());
    for input in INPUTS {
        first = first.and(build_spec(&spec, &input, optim));
    }
    first
}

fn build_spec(spec: &ModelSpec, input: &[usize; 3], optim: OptimizerKind) -> Result<()> {
    let decls = spec.declare(input)?;
    for d in &decls {
        d.shape.checked_numel()?;
    }
    // The class count is whatever the spec outputs.
    let mut g = Graph::new(false);
    let x = g.input("x", [BATCH, input[0], input[1], input[2]], DType::F32)?;
    let logits = spec.build(&mut g, x)?;
    let classes = g.shape(logits).dim(1);
    let config = ClassifierConfig {
        spec: spec.clone(),
        input: input.to_vec(),
        classes,
        train_batch: Some(BATCH),
        infer_batch: BATCH,
        optim: OptimConfig::new(optim),
        seed: 0,
        fuse: true,
    };
    Classifier::train_graph(&config, BATCH)?;
    Classifier::module(&config)?;
    Ok(())
}

/// `checkpoint.json`: whatever `Checkpoint::parse` accepts must be usable
/// as `eval` and `predict` use it without a panic: its normaliser fits its
/// input and turns every pixel value into a finite number, and its model
/// either builds for that input or is refused with an error.
pub fn checkpoint(data: &[u8]) -> Result<()> {
    let ck = named(Checkpoint::parse(label(), data))?;
    let [c, h, w] = ck.input[..] else {
        panic!("accepted input {:?} is not [C, H, W]", ck.input)
    };
    let norm = ck.normalizer();
    assert_eq!(norm.channels(), c, "normaliser does not fit the input");
    // Every byte value once per channel (the image size is irrelevant to
    // the arithmetic, and keeps a huge accepted input cheap here).
    let px: Vec<u8> = (0..c).flat_map(|_| 0..=255u8).collect();
    let mut x = vec![0.0f32; px.len()];
    norm.normalize_into(&px, c, &mut x);
    assert!(
        x.iter().all(|v| v.is_finite()),
        "normaliser gives non-finite inputs"
    );
    if c * h * w <= 1 << 16 {
        let config = ClassifierConfig {
            spec: ck.spec.clone(),
            input: ck.input.clone(),
            classes: ck.classes,
            train_batch: None,
            infer_batch: 1,
            optim: OptimConfig::new(OptimizerKind::Adam),
            seed: ck.seed,
            fuse: true,
        };
        let _ = Classifier::module(&config);
    }
    Ok(())
}

/// The models a `serve_request` body is decoded for: MNIST's image input
/// and a text input.
fn serve_specs() -> [gpurt::serve::request::InputSpec; 2] {
    use gpurt::serve::request::InputSpec;
    [
        InputSpec::Image {
            dims: [1, 28, 28],
            normalizer: gpurt::data::Normalizer::identity(1),
        },
        InputSpec::Text { max_len: 256 },
    ]
}

/// A `gpurt serve` infer request body (`serve::request::decode`) for an
/// image and a text model: a refusal is a 4xx with a field and a one-line
/// message; an accepted request holds 1 to 16 examples whose values are
/// exactly what the shape says, and finite.
pub fn serve_request(data: &[u8]) -> Result<()> {
    use gpurt::serve::request::{decode, Rows};
    let mut first = Ok(());
    for spec in serve_specs() {
        match decode(data, &spec, 16) {
            Ok(r) => {
                assert!((1..=16).contains(&r.n), "accepted {} examples", r.n);
                assert!((1..=gpurt::serve::request::MAX_TOP_K).contains(&r.top_k));
                match (&r.rows, &spec) {
                    (Rows::Values(v), _) => {
                        assert_eq!(v.len(), r.n * 784);
                        assert!(v.iter().all(|x| x.is_finite()), "non-finite value accepted");
                    }
                    (Rows::Pixels(p), _) => assert_eq!(p.len(), r.n * 784),
                    (Rows::Texts(t), _) => assert_eq!(t.len(), r.n),
                }
            }
            Err(e) => {
                assert!((400..500).contains(&e.status), "{e}");
                assert!(!e.field.is_empty() && !e.message.contains('\n'), "{e:?}");
                if first.is_ok() {
                    first = Err(Error::Usage(format!("{LABEL}: {e}")));
                }
            }
        }
    }
    first
}

/// A valid seed of `serve_request` must be accepted by one of the models.
pub fn serve_request_valid(data: &[u8]) -> Result<()> {
    let accepted = serve_specs()
        .iter()
        .any(|spec| gpurt::serve::request::decode(data, spec, 16).is_ok());
    if accepted {
        Ok(())
    } else {
        serve_request(data)
    }
}
