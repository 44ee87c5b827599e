//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/`
//! as `valid-*` files: small, valid files of each format. The corpus replay
//! in `tests/fuzz_regressions.rs` asserts that every `valid-*` input is
//! accepted, so a parser that starts refusing good files is caught too.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds

use flate2::write::GzEncoder;
use flate2::Compression;
use gpurt::data::mnist::{IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC};
use gpurt::tensor::{DType, Tensor};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    idx(&root.join("idx"));
    cifar(&root.join("cifar"));
    safetensors(&root.join("safetensors"));
    model_spec(&root.join("model_spec"));
    png(&root.join("png"));
    checkpoint(&root.join("checkpoint"));
    serve_request(&root.join("serve_request"));
}

/// `gpurt serve` infer bodies: UINT8 pixels (flat), FP32 values (nested),
/// a base64 PNG, and strings for a text model.
fn serve_request(dir: &Path) {
    use base64::Engine;
    let px: Vec<String> = bytes(784, 7).iter().map(u8::to_string).collect();
    let uint8 = format!(
        r#"{{"id":"a","inputs":[{{"name":"input","shape":[1,1,28,28],"datatype":"UINT8","data":[{}]}}],"parameters":{{"top_k":3}}}}"#,
        px.join(",")
    );
    write(dir, "uint8.json", uint8.as_bytes());
    let rows: Vec<String> = bytes(2 * 784, 8)
        .chunks(28)
        .map(|r| {
            let v: Vec<String> = r.iter().map(|&b| format!("{:.3}", b as f32 / 255.0 - 0.5)).collect();
            format!("[{}]", v.join(","))
        })
        .collect();
    let images: Vec<String> = rows.chunks(28).map(|c| format!("[[{}]]", c.join(","))).collect();
    let fp32 = format!(
        r#"{{"inputs":[{{"name":"input","shape":[2,1,28,28],"datatype":"FP32","data":[{}]}}]}}"#,
        images.join(",")
    );
    write(dir, "fp32-nested.json", fp32.as_bytes());
    let mut png_bytes = Vec::new();
    {
        let mut e = png::Encoder::new(&mut png_bytes, 28, 28);
        e.set_color(png::ColorType::Grayscale);
        e.set_depth(png::BitDepth::Eight);
        e.write_header().unwrap().write_image_data(&bytes(784, 9)).unwrap();
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png_bytes);
    let png_body = format!(r#"{{"inputs":[{{"name":"input","shape":[1],"datatype":"BYTES","data":["{b64}"]}}]}}"#);
    write(dir, "png.json", png_body.as_bytes());
    let text = r#"{"inputs":[{"name":"text","shape":[3],"datatype":"BYTES","data":["Shares rose 3% after the results.","央行宣布下调存款准备金率。",""]}]}"#;
    write(dir, "text.json", text.as_bytes());
}

/// What `gpurt train` writes for the MLP preset on MNIST, and a
/// three-channel CNN run stopped mid-epoch.
fn checkpoint(dir: &Path) {
    use gpurt::checkpoint::{Checkpoint, FORMAT};
    use gpurt::nn::ModelSpec;
    let mlp = Checkpoint {
        format: FORMAT.into(),
        epoch: 3,
        batch: 0,
        batch_size: Some(64),
        step: 2532,
        files: "ckpt/step-000002532".into(),
        spec: ModelSpec::mlp(10),
        input: vec![1, 28, 28],
        classes: 10,
        mean: vec![0.1307],
        std: vec![0.3081],
        seed: 42,
        data: "mnist:/data/mnist".into(),
        best_epoch: None,
        text: None,
    };
    write(dir, "mlp.json", &serde_json::to_vec_pretty(&mlp).unwrap());
    let cnn = Checkpoint {
        epoch: 1,
        batch: 17,
        step: 798,
        files: "ckpt/step-000000798".into(),
        spec: ModelSpec::cnn(10),
        input: vec![3, 32, 32],
        mean: vec![0.49, 0.48, 0.45],
        std: vec![0.25, 0.24, 0.26],
        data: "cifar10:/data/cifar".into(),
        ..mlp
    };
    write(dir, "cnn-mid-epoch.json", &serde_json::to_vec(&cnn).unwrap());
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("valid-{name}")), bytes).unwrap();
}

/// Deterministic filler bytes.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn idx_file(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn idx(dir: &Path) {
    let images = idx_file(IDX_IMAGES_MAGIC, &[2, 4, 3], &bytes(24, 1));
    let labels = idx_file(IDX_LABELS_MAGIC, &[5], &[5, 0, 4, 1, 9]);
    write(dir, "images", &images);
    write(dir, "labels", &labels);
    write(dir, "images.gz", &gzip(&images));
    write(dir, "labels.gz", &gzip(&labels));
    // Two gzip members, as `cat a.gz b.gz` makes.
    let (a, b) = labels.split_at(6);
    write(dir, "labels-2members.gz", &[gzip(a), gzip(b)].concat());
}

fn cifar(dir: &Path) {
    let mut file = Vec::new();
    for (i, label) in [3u8, 9].into_iter().enumerate() {
        file.push(label);
        file.extend(bytes(3 * 32 * 32, i as u32));
    }
    write(dir, "2records.bin", &file);
}

/// Tensors named as the CNN preset names them but with small shapes, so
/// the names match and the shapes do not: the fuzzer starts next to both
/// the accepting and the refusing paths of `take`.
fn safetensors(dir: &Path) {
    let small = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n).map(|i| i as f32 * 0.5 - 1.0).collect(),
        )
        .unwrap()
    };
    let tensors = [
        ("conv1.weight", small(&[2, 1, 3, 3])),
        ("conv1.bias", small(&[2])),
        ("fc1.weight", small(&[3, 4])),
        ("fc2.bias", small(&[10])),
    ];
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.to_string(), t)).collect();
    let tmp = std::env::temp_dir().join(format!("gen_seeds.{}.safetensors", std::process::id()));
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    for (dtype, meta) in [
        (DType::F32, Some(meta)),
        (DType::F16, None),
        (DType::BF16, None),
    ] {
        gpurt::weights::save(&tmp, &refs, dtype, meta).unwrap();
        write(
            dir,
            &format!("{dtype}.safetensors"),
            &std::fs::read(&tmp).unwrap(),
        );
    }
    let _ = std::fs::remove_file(&tmp);
    // PyTorch's batch-norm counter, which loading skips.
    let header = r#"{"bn1.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"fc2.bias":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&7i64.to_le_bytes());
    file.extend_from_slice(&1.5f32.to_le_bytes());
    write(dir, "torch-bn.safetensors", &file);
}

fn model_spec(dir: &Path) {
    let readme = r#"name = "small"
[[layer]]
type = "conv2d"     # filters, kernel, stride=1, padding=0, dilation=1, bias=true
filters = 16
kernel = 3
[[layer]]
type = "batch_norm2d"
[[layer]]
type = "relu"       # also gelu, sigmoid, tanh
[[layer]]
type = "max_pool2d" # kernel=2, stride=kernel; also avg_pool2d, global_avg_pool
[[layer]]
type = "flatten"
[[layer]]
type = "dropout"
rate = 0.25
[[layer]]
type = "dense"      # units, bias=true
units = 10
"#;
    write(dir, "readme.toml", readme.as_bytes());
    let every = r#"name = "every-layer"
[[layer]]
type = "conv2d"
filters = 4
kernel = 3
stride = 2
padding = 1
dilation = 1
bias = false
[[layer]]
type = "batch_norm2d"
eps = 1e-3
momentum = 0.2
[[layer]]
type = "gelu"
[[layer]]
type = "avg_pool2d"
kernel = 2
stride = 1
[[layer]]
type = "conv2d"
filters = 6
kernel = 2
dilation = 2
[[layer]]
type = "tanh"
[[layer]]
type = "max_pool2d"
kernel = 3
stride = 2
[[layer]]
type = "global_avg_pool"
[[layer]]
type = "dense"
units = 8
bias = false
[[layer]]
type = "sigmoid"
[[layer]]
type = "dropout"
rate = 0.5
[[layer]]
type = "dense"
units = 3
"#;
    write(dir, "every-layer.toml", every.as_bytes());
    let mlp = r#"[[layer]]
type = "flatten"
[[layer]]
type = "dense"
units = 32
[[layer]]
type = "relu"
[[layer]]
type = "dense"
units = 10
"#;
    write(dir, "mlp.toml", mlp.as_bytes());
}

fn png(dir: &Path) {
    let tmp: PathBuf = std::env::temp_dir().join(format!("gen_seeds.{}.png", std::process::id()));
    let digit: Vec<u8> = (0..28 * 28)
        .map(|i| {
            let (y, x) = (i / 28, i % 28);
            if (8..20).contains(&x) && (6..22).contains(&y) && !(11..17).contains(&x) {
                255
            } else {
                0
            }
        })
        .collect();
    gpurt::data::save_png_gray(&tmp, 28, 28, &digit).unwrap();
    write(dir, "digit-28x28.png", &std::fs::read(&tmp).unwrap());
    // A small grey image that must be resized.
    gpurt::data::save_png_gray(&tmp, 5, 7, &bytes(35, 3)).unwrap();
    write(dir, "grey-5x7.png", &std::fs::read(&tmp).unwrap());
    let _ = std::fs::remove_file(&tmp);
    write(
        dir,
        "rgba-4x3.png",
        &encode(4, 3, png_color::Rgba, 8, &bytes(48, 4)),
    );
    write(
        dir,
        "rgb16-3x2.png",
        &encode(3, 2, png_color::Rgb, 16, &bytes(36, 5)),
    );
    write(
        dir,
        "grey1-9x2.png",
        &encode(9, 2, png_color::Grey, 1, &[0xa5, 0x80, 0x3c, 0x00]),
    );
    write(dir, "palette-2x2.png", &palette_png());
    // Adam7-interlaced images, with sizes that leave some passes empty.
    let i = Interlace::Adam7;
    write(
        dir,
        "adam7-grey1-9x7.png",
        &encode_with(9, 7, png_color::Grey, 1, &bytes(14, 6), &[], i),
    );
    write(
        dir,
        "adam7-grey2-3x3.png",
        &encode_with(3, 3, png_color::Grey, 2, &bytes(3, 7), &[], i),
    );
    write(
        dir,
        "adam7-rgb16-5x6.png",
        &encode_with(5, 6, png_color::Rgb, 16, &bytes(180, 8), &[], i),
    );
    write(
        dir,
        "adam7-greyalpha-10x3.png",
        &encode_with(10, 3, png_color::GreyAlpha, 8, &bytes(60, 9), &[], i),
    );
    let plte = vec![10, 20, 30, 200, 100, 50, 0, 255, 0];
    let trns = vec![0, 128];
    // 4-bit indices, some past the 3-entry palette.
    write(
        dir,
        "adam7-palette4-trns-7x5.png",
        &encode_with(
            7,
            5,
            png_color::Indexed,
            4,
            &bytes(20, 10),
            &[(b"PLTE", plte), (b"tRNS", trns)],
            i,
        ),
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Interlace {
    None,
    Adam7,
}

/// PNG colour types, as the IHDR byte.
#[allow(non_camel_case_types, dead_code)]
#[derive(Clone, Copy)]
enum png_color {
    Grey = 0,
    Rgb = 2,
    Indexed = 3,
    GreyAlpha = 4,
    Rgba = 6,
}

/// A minimal PNG encoder (stored zlib blocks) so the seeds cover colour
/// types and bit depths gpurt itself never writes.
fn encode(w: u32, h: u32, color: png_color, depth: u8, raw: &[u8]) -> Vec<u8> {
    encode_with(w, h, color, depth, raw, &[], Interlace::None)
}

/// `raw` holds the image's rows packed as PNG packs them (rows start on a
/// byte); Adam7 interlacing repacks them pass by pass.
fn encode_with(
    w: u32,
    h: u32,
    color: png_color,
    depth: u8,
    raw: &[u8],
    extra: &[(&[u8; 4], Vec<u8>)],
    interlace: Interlace,
) -> Vec<u8> {
    let samples = match color {
        png_color::Grey | png_color::Indexed => 1,
        png_color::GreyAlpha => 2,
        png_color::Rgb => 3,
        png_color::Rgba => 4,
    };
    let (w, h) = (w as usize, h as usize);
    let bpp = samples * depth as usize;
    let row = (w * bpp).div_ceil(8);
    let passes: &[(usize, usize, usize, usize)] = match interlace {
        Interlace::None => &[(0, 0, 1, 1)],
        Interlace::Adam7 => &[
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        ],
    };
    let bit = |y: usize, b: usize| (raw[y * row + b / 8] >> (7 - b % 8)) & 1;
    let mut filtered = Vec::new();
    for &(x0, y0, dx, dy) in passes {
        let cols = w.saturating_sub(x0).div_ceil(dx);
        if cols == 0 {
            continue;
        }
        for y in (y0..h).step_by(dy) {
            filtered.push(0u8);
            let mut line = vec![0u8; (cols * bpp).div_ceil(8)];
            for (i, x) in (x0..w).step_by(dx).enumerate() {
                for k in 0..bpp {
                    line[(i * bpp + k) / 8] |= bit(y, x * bpp + k) << (7 - (i * bpp + k) % 8);
                }
            }
            filtered.extend_from_slice(&line);
        }
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[depth, color as u8, 0, 0, interlace as u8]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        chunk(&mut out, kind, data);
    }
    chunk(&mut out, b"IDAT", &zlib_stored(&filtered));
    chunk(&mut out, b"IEND", &[]);
    out
}

fn palette_png() -> Vec<u8> {
    let plte = vec![255, 0, 0, 0, 255, 0, 0, 0, 255];
    encode_with(
        2,
        2,
        png_color::Indexed,
        8,
        &[0, 1, 2, 1],
        &[(b"PLTE", plte)],
        Interlace::None,
    )
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn zlib_stored(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 65536);
    let mut out = vec![0x78, 0x01, 1];
    let len = data.len() as u16;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

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
