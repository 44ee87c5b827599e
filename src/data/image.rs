//! Single PNG images for inference: decode any common PNG, convert it to
//! the channel count the model expects and resize it to the model's input.

use crate::error::{Error, Result};
use png::{BitDepth, ColorType, Decoder, Encoder, Transformations};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Cursor, Seek};
use std::path::Path;

/// Largest image accepted, in pixels (64 Mpx). Checked from the header so a
/// forged size cannot make the decoder allocate gigabytes.
pub const MAX_PNG_PIXELS: u64 = 1 << 26;

/// Longest image side accepted, in pixels. Decoding costs time per row,
/// and a 4 KiB file can hold a 1-pixel-wide image of millions of rows.
pub const MAX_PNG_SIDE: u32 = 1 << 16;

/// DEFLATE expands its input at most about 1032-fold.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Loads a PNG as `channels x height x width` bytes (CHW).
///
/// Any PNG colour type and bit depth is accepted: palettes and low bit
/// depths are expanded and 16-bit samples reduced to 8 bits. Colour becomes
/// grey by luminance (0.299 R + 0.587 G + 0.114 B), grey becomes colour by
/// replication, and alpha is dropped (not composited: MNIST-style images
/// are opaque). If the image is not `height x width` it is resized with
/// bilinear interpolation (pixel centres aligned, as in most image
/// libraries; no anti-aliasing, so large reductions alias).
pub fn load_png(path: &Path, channels: usize, height: usize, width: usize) -> Result<Vec<u8>> {
    check_target(path, channels, height, width)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let img = decode(path, BufReader::new(file), file_len)?;
    Ok(convert(&img, channels, height, width))
}

/// [`load_png`] for a PNG already in memory; `label` names it in errors.
/// Never panics; the pixel buffer is bounded by [`MAX_PNG_PIXELS`] and by
/// what `bytes` could possibly decompress to, both checked from the header.
pub fn decode_png(
    label: &Path,
    bytes: &[u8],
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<u8>> {
    check_target(label, channels, height, width)?;
    let img = decode(label, Cursor::new(bytes), bytes.len() as u64)?;
    Ok(convert(&img, channels, height, width))
}

/// The requested output must be 1 or 3 non-empty planes of a size that fits
/// the pixel limit.
fn check_target(path: &Path, channels: usize, height: usize, width: usize) -> Result<()> {
    if channels != 1 && channels != 3 {
        return Err(Error::Usage(format!(
            "load_png {}: can produce 1 or 3 channels, asked for {channels}",
            path.display()
        )));
    }
    if height == 0 || width == 0 {
        return Err(Error::Usage(format!(
            "load_png {}: target size {height}x{width} is empty",
            path.display()
        )));
    }
    if (height as u64).saturating_mul(width as u64) > MAX_PNG_PIXELS {
        return Err(Error::Limit(format!(
            "load_png {}: target size {height}x{width} is over the limit of {MAX_PNG_PIXELS} pixels",
            path.display()
        )));
    }
    Ok(())
}

/// Decoded pixels to `channels` planes of `height x width`.
///
/// Only the pixels the output needs are unpacked: one per output pixel at
/// the image's own size, four (the bilinear taps) when resizing. So the
/// cost after decoding is in proportion to the output, and a huge image
/// that compresses to a few kilobytes costs little more than its inflating.
fn convert(img: &Raw, channels: usize, height: usize, width: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(channels * height * width);
    for c in 0..channels {
        if (img.height, img.width) == (height, width) {
            for y in 0..height {
                for x in 0..width {
                    out.push(img.channel(y, x, c, channels));
                }
            }
        } else {
            resize_bilinear(img, c, channels, height, width, &mut out);
        }
    }
    out
}

/// Writes an 8-bit greyscale PNG of `width x height` row-major bytes.
pub fn save_png_gray(path: &Path, width: usize, height: usize, data: &[u8]) -> Result<()> {
    encode(
        path,
        width,
        height,
        ColorType::Grayscale,
        BitDepth::Eight,
        data,
    )
}

/// The Adam7 passes: `(x0, y0, dx, dy)`, first column and row and the
/// steps between them.
const ADAM7: [(usize, usize, usize, usize); 7] = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
];

/// A decoded image still in its PNG sample layout: rows of packed samples
/// of 1, 2, 4, 8 or 16 bits, one sub-image per Adam7 pass if interlaced.
/// Expanding every pixel to 8-bit samples up front would cost time per
/// pixel, and a 4 KiB file can declare millions of them.
struct Raw {
    width: usize,
    height: usize,
    color: ColorType,
    /// Bits per sample.
    depth: usize,
    /// RGB triples (indexed images only).
    palette: Vec<u8>,
    passes: Vec<Pass>,
}

/// The pixels `(x0 + i*dx, y0 + j*dy)` of an image, `cols x rows` of them,
/// packed in rows of `stride` bytes.
struct Pass {
    x0: usize,
    y0: usize,
    dx: usize,
    dy: usize,
    cols: usize,
    rows: usize,
    stride: usize,
    data: Vec<u8>,
}

impl Raw {
    /// Sample `k` of pixel `(y, x)`, scaled to 8 bits (16-bit samples keep
    /// their high byte, as PNG's own reduction does); for an indexed image,
    /// the palette index.
    fn sample(&self, y: usize, x: usize, k: usize) -> u8 {
        let Some(p) = self.passes.iter().find(|p| {
            x >= p.x0
                && y >= p.y0
                && (x - p.x0).is_multiple_of(p.dx)
                && (y - p.y0).is_multiple_of(p.dy)
        }) else {
            return 0;
        };
        let (row, col) = ((y - p.y0) / p.dy, (x - p.x0) / p.dx);
        let line = &p.data[row * p.stride..(row + 1) * p.stride];
        let i = col * self.color.samples() + k;
        match self.depth {
            8 => line[i],
            16 => line[2 * i],
            bits => {
                let bit = i * bits;
                let max = (1u8 << bits) - 1;
                let v = (line[bit / 8] >> (8 - bits - bit % 8)) & max;
                if self.color == ColorType::Indexed {
                    v
                } else {
                    v * (255 / max)
                }
            }
        }
    }

    /// Output channel `c` of `out_ch` at pixel `(y, x)`: grey is
    /// replicated, colour becomes grey by luminance, alpha is dropped, and
    /// a palette index past the palette is black.
    fn channel(&self, y: usize, x: usize, c: usize, out_ch: usize) -> u8 {
        let rgb = |i: usize| {
            let (r, g, b) = match self.color {
                ColorType::Indexed => {
                    let at = 3 * usize::from(self.sample(y, x, 0));
                    match self.palette.get(at..at + 3) {
                        Some(px) => (px[0], px[1], px[2]),
                        None => (0, 0, 0),
                    }
                }
                _ => (
                    self.sample(y, x, 0),
                    self.sample(y, x, 1),
                    self.sample(y, x, 2),
                ),
            };
            match i {
                0 => r,
                1 => g,
                2 => b,
                _ => luminance(r, g, b),
            }
        };
        match (self.color, out_ch) {
            (ColorType::Grayscale | ColorType::GrayscaleAlpha, _) => self.sample(y, x, 0),
            (_, 1) => rgb(3),
            _ => rgb(c),
        }
    }
}

/// Decodes the image data, keeping its packed layout (see [`Raw`]).
/// `file_len` is the size of the whole file, which bounds how large an
/// image it can really hold.
fn decode<R: BufRead + Seek>(path: &Path, src: R, file_len: u64) -> Result<Raw> {
    let bad = |e: png::DecodingError| match e {
        png::DecodingError::IoError(io) => Error::io(path, io),
        other => Error::format(path, format!("not a readable PNG: {other}")),
    };
    let mut decoder = Decoder::new(src);
    decoder.set_transformations(Transformations::IDENTITY);
    let header = decoder.read_header_info().map_err(bad)?;
    let (w, h) = header.size();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PNG_PIXELS {
        return Err(Error::Limit(format!(
            "{}: image is {w}x{h} = {pixels} pixels, over the limit of {MAX_PNG_PIXELS}",
            path.display()
        )));
    }
    if w.max(h) > MAX_PNG_SIDE {
        return Err(Error::Limit(format!(
            "{}: image is {w}x{h}, a side over the limit of {MAX_PNG_SIDE} pixels",
            path.display()
        )));
    }
    let (width, height) = (w as usize, h as usize);
    let (color, depth) = (header.color_type, header.bit_depth as usize);
    let bits_per_pixel = color.samples() * depth;
    let layout: &[(usize, usize, usize, usize)] = if header.interlaced {
        &ADAM7
    } else {
        &[(0, 0, 1, 1)]
    };
    let mut passes: Vec<Pass> = layout
        .iter()
        .map(|&(x0, y0, dx, dy)| {
            let cols = width.saturating_sub(x0).div_ceil(dx);
            let rows = height.saturating_sub(y0).div_ceil(dy);
            Pass {
                x0,
                y0,
                dx,
                dy,
                cols,
                rows,
                stride: (cols * bits_per_pixel).div_ceil(8),
                data: Vec::new(),
            }
        })
        .filter(|p| p.cols > 0 && p.rows > 0)
        .collect();
    // The image data is deflate-compressed (each row led by a filter-type
    // byte), and deflate cannot shrink data more than about 1032-fold, so a
    // small file declaring a large image is truncated or hostile: refuse it
    // before the pixel buffers are allocated.
    let raw: u64 = passes
        .iter()
        .map(|p| (p.rows as u64) * (1 + p.stride as u64))
        .sum();
    let most = file_len
        .saturating_mul(MAX_DEFLATE_RATIO)
        .saturating_add(MAX_DEFLATE_RATIO);
    if raw > most {
        return Err(Error::format(
            path,
            format!(
                "image is {w}x{h} ({raw} bytes of image data), more than a {file_len}-byte PNG can hold (truncated or corrupt)"
            ),
        ));
    }
    let mut reader = decoder.read_info().map_err(bad)?;
    let info = reader.info();
    if (
        info.width,
        info.height,
        info.color_type,
        info.bit_depth as usize,
    ) != (w, h, color, depth)
    {
        return Err(Error::format(
            path,
            "the image header changed while decoding",
        ));
    }
    let palette = info.palette.as_deref().unwrap_or_default().to_vec();
    if color == ColorType::Indexed && palette.is_empty() {
        return Err(Error::format(path, "palette image without a PLTE chunk"));
    }
    for p in &mut passes {
        p.data.reserve_exact(p.stride * p.rows);
    }
    // Rows come pass after pass, each pass top to bottom.
    let mut current = 0;
    while let Some(row) = reader.next_row().map_err(bad)? {
        while passes
            .get(current)
            .is_some_and(|p| p.data.len() == p.stride * p.rows)
        {
            current += 1;
        }
        let Some(pass) = passes.get_mut(current) else {
            return Err(Error::format(
                path,
                "more image rows than the header declares",
            ));
        };
        if row.data().len() != pass.stride {
            return Err(Error::format(
                path,
                format!(
                    "decoded a row of {} bytes where {} were expected",
                    row.data().len(),
                    pass.stride
                ),
            ));
        }
        pass.data.extend_from_slice(row.data());
    }
    if passes.iter().any(|p| p.data.len() != p.stride * p.rows) {
        return Err(Error::format(
            path,
            "decoded image is shorter than its size",
        ));
    }
    Ok(Raw {
        width,
        height,
        color,
        depth,
        palette,
        passes,
    })
}

/// ITU-R BT.601 luma, the weights MNIST-style greyscale conversions use.
fn luminance(r: u8, g: u8, b: u8) -> u8 {
    let y = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
    y.round().clamp(0.0, 255.0) as u8
}

/// Resizes output channel `c` of `out_ch` (see [`Raw::channel`]) to
/// `dh x dw` and appends it to `out`. Sample positions use pixel centres:
/// destination pixel `x` maps to source `(x + 0.5) * sw / dw - 0.5`,
/// clamped to the edge, which keeps the image centred at any scale.
fn resize_bilinear(img: &Raw, c: usize, out_ch: usize, dh: usize, dw: usize, out: &mut Vec<u8>) {
    let taps = |d: usize, s: usize| -> Vec<(usize, usize, f32)> {
        let scale = s as f64 / d as f64;
        (0..d)
            .map(|i| {
                let pos = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (s - 1) as f64);
                let i0 = pos.floor() as usize;
                let i1 = (i0 + 1).min(s - 1);
                (i0, i1, (pos - i0 as f64) as f32)
            })
            .collect()
    };
    let at = |y: usize, x: usize| f32::from(img.channel(y, x, c, out_ch));
    let ys = taps(dh, img.height);
    let xs = taps(dw, img.width);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bot = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            let v = top * (1.0 - fy) + bot * fy;
            out.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
}

/// Writes a PNG of the given colour type at 8 or 16 bits; `data` is
/// interleaved rows, with 16-bit samples big-endian as PNG stores them.
fn encode(
    path: &Path,
    width: usize,
    height: usize,
    color: ColorType,
    depth: BitDepth,
    data: &[u8],
) -> Result<()> {
    let samples = match color {
        ColorType::Grayscale | ColorType::Indexed => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
    };
    let bytes_per_sample = match depth {
        BitDepth::Eight => 1,
        BitDepth::Sixteen => 2,
        other => {
            return Err(Error::Usage(format!(
                "save png {}: only 8 and 16-bit output is supported, not {other:?}",
                path.display()
            )))
        }
    };
    let expected = width
        .checked_mul(height)
        .and_then(|v| v.checked_mul(samples * bytes_per_sample));
    if expected != Some(data.len()) {
        return Err(Error::Usage(format!(
            "save png {}: {width}x{height} image needs {} bytes, got {}",
            path.display(),
            expected.map_or_else(|| "too many".to_string(), |n| n.to_string()),
            data.len()
        )));
    }
    let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(Error::Usage(format!(
            "save png {}: {width}x{height} is too large for PNG",
            path.display()
        )));
    };
    let bad = |e: png::EncodingError| match e {
        png::EncodingError::IoError(io) => Error::io(path, io),
        other => Error::format(path, format!("cannot encode PNG: {other}")),
    };
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut encoder = Encoder::new(BufWriter::new(file), w, h);
    encoder.set_color(color);
    encoder.set_depth(depth);
    let mut writer = encoder.write_header().map_err(bad)?;
    writer.write_image_data(data).map_err(bad)?;
    writer.finish().map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    #[test]
    fn gray_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        let img = random_bytes(7 * 5, 1);
        save_png_gray(&p, 7, 5, &img).unwrap();
        assert_eq!(load_png(&p, 1, 5, 7).unwrap(), img);
        // Grey to RGB replicates the plane.
        let rgb = load_png(&p, 3, 5, 7).unwrap();
        assert_eq!(rgb, [img.clone(), img.clone(), img].concat());
    }

    #[test]
    fn colour_types_and_depths() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (6, 4);
        let n = w * h;
        let rgb = random_bytes(n * 3, 2);
        let alpha = random_bytes(n, 3);
        let planes = |px: &[u8], stride: usize| -> Vec<u8> {
            (0..3)
                .flat_map(|c| (0..n).map(move |i| (c, i)))
                .map(|(c, i)| px[i * stride + c])
                .collect()
        };

        // RGB 8-bit: exact planes; grey by luminance.
        let p = dir.path().join("rgb.png");
        encode(&p, w, h, ColorType::Rgb, BitDepth::Eight, &rgb).unwrap();
        assert_eq!(load_png(&p, 3, h, w).unwrap(), planes(&rgb, 3));
        let grey = load_png(&p, 1, h, w).unwrap();
        for i in 0..n {
            let want = luminance(rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]);
            assert_eq!(grey[i], want);
        }

        // RGBA: alpha dropped.
        let rgba: Vec<u8> = (0..n)
            .flat_map(|i| [rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2], alpha[i]])
            .collect();
        let p = dir.path().join("rgba.png");
        encode(&p, w, h, ColorType::Rgba, BitDepth::Eight, &rgba).unwrap();
        assert_eq!(load_png(&p, 3, h, w).unwrap(), planes(&rgb, 3));

        // Grey + alpha.
        let ga: Vec<u8> = (0..n).flat_map(|i| [rgb[i], alpha[i]]).collect();
        let p = dir.path().join("ga.png");
        encode(&p, w, h, ColorType::GrayscaleAlpha, BitDepth::Eight, &ga).unwrap();
        assert_eq!(load_png(&p, 1, h, w).unwrap(), rgb[..n].to_vec());

        // 16-bit RGB: the high byte survives.
        let rgb16: Vec<u8> = rgb.iter().flat_map(|&v| [v, 0x7f]).collect();
        let p = dir.path().join("rgb16.png");
        encode(&p, w, h, ColorType::Rgb, BitDepth::Sixteen, &rgb16).unwrap();
        assert_eq!(load_png(&p, 3, h, w).unwrap(), planes(&rgb, 3));

        // 16-bit grey.
        let g16: Vec<u8> = rgb[..n].iter().flat_map(|&v| [v, 0xff]).collect();
        let p = dir.path().join("g16.png");
        encode(&p, w, h, ColorType::Grayscale, BitDepth::Sixteen, &g16).unwrap();
        assert_eq!(load_png(&p, 1, h, w).unwrap(), rgb[..n].to_vec());

        // 1-bit grey expands to 0 / 255.
        let bits = vec![0b1010_0000u8; h]; // one byte per 6-pixel row
        let p = dir.path().join("g1.png");
        let mut enc = Encoder::new(
            BufWriter::new(File::create(&p).unwrap()),
            w as u32,
            h as u32,
        );
        enc.set_color(ColorType::Grayscale);
        enc.set_depth(BitDepth::One);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(&bits).unwrap();
        wr.finish().unwrap();
        let g = load_png(&p, 1, h, w).unwrap();
        assert_eq!(&g[..6], &[255, 0, 255, 0, 0, 0]);
    }

    #[test]
    fn resize_bilinear_behaves() {
        let dir = tempfile::tempdir().unwrap();
        // A constant image stays constant at any size.
        let p = dir.path().join("flat.png");
        save_png_gray(&p, 9, 13, &[77; 9 * 13]).unwrap();
        let out = load_png(&p, 1, 28, 28).unwrap();
        assert_eq!(out.len(), 28 * 28);
        assert!(out.iter().all(|&v| v == 77));
        // A horizontal ramp upsampled 2x: interior samples interpolate.
        let p = dir.path().join("ramp.png");
        save_png_gray(&p, 3, 1, &[0, 100, 200]).unwrap();
        let out = load_png(&p, 1, 1, 6).unwrap();
        assert_eq!(out, vec![0, 25, 75, 125, 175, 200]);
        // Downsampling 2x averages pairs.
        let p = dir.path().join("pairs.png");
        save_png_gray(&p, 4, 2, &[0, 100, 50, 150, 0, 100, 50, 150]).unwrap();
        assert_eq!(load_png(&p, 1, 1, 2).unwrap(), vec![50, 100]);
        // Random image, random target: output shape and value range.
        let p = dir.path().join("rnd.png");
        let img = random_bytes(3 * 40 * 30, 9);
        encode(&p, 40, 30, ColorType::Rgb, BitDepth::Eight, &img).unwrap();
        assert_eq!(load_png(&p, 3, 32, 32).unwrap().len(), 3 * 32 * 32);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let e = load_png(&missing, 1, 28, 28).unwrap_err().to_string();
        crate::test_support::assert_mentions(&e, &["missing.png"]);

        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"definitely not a png").unwrap();
        let e = load_png(&junk, 1, 28, 28).unwrap_err().to_string();
        crate::test_support::assert_mentions(&e, &["junk.png", "PNG"]);

        let p = dir.path().join("ok.png");
        save_png_gray(&p, 2, 2, &[1, 2, 3, 4]).unwrap();
        let e = load_png(&p, 2, 28, 28).unwrap_err().to_string();
        crate::test_support::assert_mentions(&e, &["ok.png", "1 or 3"]);
        let e = save_png_gray(&p, 3, 3, &[0; 4]).unwrap_err().to_string();
        crate::test_support::assert_mentions(&e, &["needs 9 bytes, got 4"]);

        // Truncated PNG: header fine, data cut.
        let bytes = std::fs::read(&p).unwrap();
        let cut = dir.path().join("cut.png");
        std::fs::write(&cut, &bytes[..bytes.len() - 20]).unwrap();
        let e = load_png(&cut, 1, 2, 2).unwrap_err().to_string();
        crate::test_support::assert_mentions(&e, &["cut.png"]);
    }

    #[test]
    fn huge_header_rejected_before_decoding() {
        // A valid PNG header declaring 100000 x 100000 pixels and no data.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge.png");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, no interlace
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&ihdr);
        let crc = crc32(&chunk);
        let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
        file.extend_from_slice(&13u32.to_be_bytes());
        file.extend_from_slice(&chunk);
        file.extend_from_slice(&crc.to_be_bytes());
        std::fs::write(&p, file).unwrap();
        let e = load_png(&p, 1, 28, 28).unwrap_err().to_string();
        crate::test_support::assert_mentions(&e, &["huge.png", "100000x100000"]);
        crate::test_support::assert_mentions(&e, &["over the limit"]);
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
}
