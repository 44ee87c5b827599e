//! A PNG chart of the training curves: loss on the left, accuracy on the
//! right, train and validation series in each.
//!
//! Everything is drawn by hand into an RGB buffer with a tiny built-in 5x7
//! bitmap font, so the runtime needs no font files, system libraries or
//! plotting crates; the `png` crate only encodes the finished pixels.

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;
use crate::weights::write_atomic;
use std::path::Path;

/// Size of the whole image; each panel takes half the width.
pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 400;

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [40, 40, 40];
const GRID: Rgb = [228, 228, 228];
/// Train and validation colours (the common blue/orange pair, which stays
/// distinguishable for the usual forms of colour blindness).
const TRAIN: Rgb = [31, 119, 180];
const VAL: Rgb = [255, 127, 14];

/// Panel geometry, relative to the panel's left edge.
const FRAME_LEFT: i64 = 62;
const FRAME_RIGHT: i64 = 385;
const FRAME_TOP: i64 = 36;
const FRAME_BOTTOM: i64 = 340;
/// Gap between the frame and the data, so markers never sit on the axes.
const INSET: i64 = 10;
const GRID_DIVISIONS: i64 = 4;
const MARKER_RADIUS: i64 = 3;

/// Draw `rows` as an 800x400 RGB PNG at `path`, replacing any old chart
/// atomically (a viewer refreshing during training never sees half a file).
///
/// Validation points that are `None`, and any non-finite value, are skipped.
/// Accuracies are fractions in [0, 1] and are labelled as percentages.
pub fn plot_training(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let canvas = render(rows);
    let png = canvas.encode_png(path)?;
    write_atomic(path, &png)
}

/// One curve: (epoch, value) points in order, and its colour.
struct Series {
    points: Vec<(f64, f64)>,
    color: Rgb,
}

/// What one panel shows.
struct PanelSpec {
    title: &'static str,
    /// Label values as percentages (accuracy) rather than plain numbers.
    percent: bool,
    series: [Series; 2],
}

fn render(rows: &[EpochMetrics]) -> Canvas {
    let mut canvas = Canvas::new(WIDTH as usize, HEIGHT as usize);
    for (i, spec) in panel_specs(rows).iter().enumerate() {
        let layout = Layout::new(i as i64 * (WIDTH as i64 / 2), spec);
        draw_panel(&mut canvas, &layout, spec);
    }
    canvas
}

fn panel_specs(rows: &[EpochMetrics]) -> [PanelSpec; 2] {
    let series = |color, value: fn(&EpochMetrics) -> Option<f64>| Series {
        points: rows
            .iter()
            .filter_map(|r| value(r).map(|v| (r.epoch as f64, v)))
            .filter(|(_, v)| v.is_finite())
            .collect(),
        color,
    };
    [
        PanelSpec {
            title: "loss",
            percent: false,
            series: [
                series(TRAIN, |r| Some(r.train_loss)),
                series(VAL, |r| r.val_loss),
            ],
        },
        PanelSpec {
            title: "accuracy",
            percent: true,
            series: [
                series(TRAIN, |r| Some(r.train_acc)),
                series(VAL, |r| r.val_acc),
            ],
        },
    ]
}

/// Maps data values in `[lo, hi]` to pixels in `[px_lo, px_hi]`. A zero
/// span (one epoch, or a constant series) maps everything to the middle
/// instead of dividing by zero.
#[derive(Clone, Copy, Debug)]
struct Scale {
    lo: f64,
    hi: f64,
    px_lo: i64,
    px_hi: i64,
}

impl Scale {
    fn fit(values: impl Iterator<Item = f64>, px_lo: i64, px_hi: i64) -> Option<Scale> {
        let (lo, hi) = values.fold(None, |acc: Option<(f64, f64)>, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })?;
        Some(Scale {
            lo,
            hi,
            px_lo,
            px_hi,
        })
    }

    fn span(&self) -> f64 {
        self.hi - self.lo
    }

    fn map(&self, v: f64) -> i64 {
        let span = self.span();
        if span <= 0.0 {
            return (self.px_lo + self.px_hi) / 2;
        }
        let t = (v - self.lo) / span;
        self.px_lo + (t * (self.px_hi - self.px_lo) as f64).round() as i64
    }
}

/// Where a panel's frame is and how its data maps to pixels.
struct Layout {
    left: i64,
    right: i64,
    top: i64,
    bottom: i64,
    /// `None` when the panel has no data to scale to.
    x: Option<Scale>,
    y: Option<Scale>,
}

impl Layout {
    fn new(offset: i64, spec: &PanelSpec) -> Layout {
        let (left, right) = (offset + FRAME_LEFT, offset + FRAME_RIGHT);
        let points = || spec.series.iter().flat_map(|s| s.points.iter());
        Layout {
            left,
            right,
            top: FRAME_TOP,
            bottom: FRAME_BOTTOM,
            x: Scale::fit(points().map(|p| p.0), left + INSET, right - INSET),
            // Pixel rows grow downwards, so the low value maps to the bottom.
            y: Scale::fit(
                points().map(|p| p.1),
                FRAME_BOTTOM - INSET,
                FRAME_TOP + INSET,
            ),
        }
    }

    fn to_pixel(&self, point: (f64, f64)) -> Option<(i64, i64)> {
        Some((self.x?.map(point.0), self.y?.map(point.1)))
    }
}

fn draw_panel(canvas: &mut Canvas, layout: &Layout, spec: &PanelSpec) {
    draw_grid(canvas, layout);
    draw_frame(canvas, layout);
    let centre = (layout.left + layout.right) / 2;
    canvas.text_centred(centre, 8, spec.title, 2, INK);
    canvas.text_centred(centre, layout.bottom + 20, "epoch", 1, INK);
    draw_ticks(canvas, layout, spec.percent);
    for series in &spec.series {
        draw_line(canvas, layout, series);
    }
    // Markers after all lines, so no line hides a data point.
    for series in &spec.series {
        for &p in &series.points {
            if let Some((x, y)) = layout.to_pixel(p) {
                canvas.disc(x, y, MARKER_RADIUS, series.color);
            }
        }
    }
    draw_legend(canvas, centre, layout.bottom + 40);
}

fn draw_grid(canvas: &mut Canvas, l: &Layout) {
    for i in 1..GRID_DIVISIONS {
        let x = l.left + (l.right - l.left) * i / GRID_DIVISIONS;
        let y = l.top + (l.bottom - l.top) * i / GRID_DIVISIONS;
        canvas.line(x, l.top, x, l.bottom, GRID);
        canvas.line(l.left, y, l.right, y, GRID);
    }
}

fn draw_frame(canvas: &mut Canvas, l: &Layout) {
    canvas.line(l.left, l.top, l.right, l.top, INK);
    canvas.line(l.left, l.bottom, l.right, l.bottom, INK);
    canvas.line(l.left, l.top, l.left, l.bottom, INK);
    canvas.line(l.right, l.top, l.right, l.bottom, INK);
}

/// Tick marks and labels at the data's minimum and maximum on both axes;
/// a constant axis gets a single tick in the middle.
fn draw_ticks(canvas: &mut Canvas, l: &Layout, percent: bool) {
    if let Some(x) = l.x {
        for v in tick_values(&x) {
            let px = x.map(v);
            canvas.line(px, l.bottom, px, l.bottom + 4, INK);
            canvas.text_centred(px, l.bottom + 7, &format!("{v}"), 1, INK);
        }
    }
    if let Some(y) = l.y {
        let scale = if percent { 100.0 } else { 1.0 };
        let decimals = decimals_for(y.span() * scale);
        for v in tick_values(&y) {
            let py = y.map(v);
            canvas.line(l.left - 3, py, l.left, py, INK);
            let mut label = format!("{:.*}", decimals, v * scale);
            if percent {
                label.push('%');
            }
            let width = text_width(&label, 1);
            canvas.text(l.left - 8 - width, py - GLYPH_H / 2, &label, 1, INK);
        }
    }
}

fn tick_values(scale: &Scale) -> Vec<f64> {
    if scale.span() > 0.0 {
        vec![scale.lo, scale.hi]
    } else {
        vec![scale.lo]
    }
}

/// About three significant digits of the axis span, so the min and max
/// labels differ visibly; capped at 5. For a constant value two are plenty.
fn decimals_for(span: f64) -> usize {
    if span <= 0.0 || !span.is_finite() {
        return 2;
    }
    ((2.0 - span.log10()).ceil()).clamp(0.0, 5.0) as usize
}

/// Straight segments between consecutive points of a series; gaps where a
/// value was `None` are bridged, so sparse validation still reads as a curve.
fn draw_line(canvas: &mut Canvas, layout: &Layout, series: &Series) {
    let pixels: Vec<(i64, i64)> = series
        .points
        .iter()
        .filter_map(|&p| layout.to_pixel(p))
        .collect();
    for pair in pixels.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        canvas.thick_line(x0, y0, x1, y1, series.color);
    }
}

/// "— ● train   — ● val", centred at `(centre, y)`.
fn draw_legend(canvas: &mut Canvas, centre: i64, y: i64) {
    let entries = [("train", TRAIN), ("val", VAL)];
    const SWATCH: i64 = 18;
    const GAP: i64 = 16;
    let entry_width = |label: &str| SWATCH + 4 + text_width(label, 1);
    let total: i64 = entries.iter().map(|(l, _)| entry_width(l)).sum::<i64>() + GAP;
    let mut x = centre - total / 2;
    for (label, color) in entries {
        let mid = y + GLYPH_H / 2;
        canvas.thick_line(x, mid, x + SWATCH, mid, color);
        canvas.disc(x + SWATCH / 2, mid, MARKER_RADIUS, color);
        canvas.text(x + SWATCH + 4, y, label, 1, INK);
        x += entry_width(label) + GAP;
    }
}

/// An RGB image being drawn; every write is clipped, so no coordinate can
/// panic.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            pixels: WHITE.repeat(width * height),
        }
    }

    fn set(&mut self, x: i64, y: i64, color: Rgb) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        self.pixels[i..i + 3].copy_from_slice(&color);
    }

    #[cfg(test)]
    fn get(&self, x: i64, y: i64) -> Rgb {
        let i = (y as usize * self.width + x as usize) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// One-pixel line (Bresenham), used for axes and grid.
    fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb) {
        self.trace(x0, y0, x1, y1, |c, x, y| c.set(x, y, color));
    }

    /// Two-pixel-wide line for data curves, which must stand out from the grid.
    fn thick_line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb) {
        self.trace(x0, y0, x1, y1, |c, x, y| {
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                c.set(x + dx, y + dy, color);
            }
        });
    }

    /// Visit every pixel of the segment from (x0, y0) to (x1, y1).
    fn trace(
        &mut self,
        x0: i64,
        y0: i64,
        x1: i64,
        y1: i64,
        mut plot: impl FnMut(&mut Self, i64, i64),
    ) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = ((x1 - x0).signum(), (y1 - y0).signum());
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            plot(self, x, y);
            if x == x1 && y == y1 {
                return;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn disc(&mut self, cx: i64, cy: i64, r: i64, color: Rgb) {
        for dy in -r..=r {
            for dx in -r..=r {
                if dx * dx + dy * dy <= r * r + 1 {
                    self.set(cx + dx, cy + dy, color);
                }
            }
        }
    }

    /// Draw `s` with its top-left corner at (x, y), each font pixel
    /// `scale` x `scale` image pixels.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, color: Rgb) {
        for (i, c) in s.chars().enumerate() {
            let gx = x + i as i64 * GLYPH_ADVANCE * scale;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                        let (px, py) = (gx + col * scale, y + row as i64 * scale);
                        self.fill(px, py, scale, scale, color);
                    }
                }
            }
        }
    }

    fn text_centred(&mut self, cx: i64, y: i64, s: &str, scale: i64, color: Rgb) {
        self.text(cx - text_width(s, scale) / 2, y, s, scale, color);
    }

    fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, color);
            }
        }
    }

    fn encode_png(&self, path: &Path) -> Result<Vec<u8>> {
        let fail = |e: png::EncodingError| Error::format(path, format!("cannot encode PNG: {e}"));
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(&self.pixels).map_err(fail)?;
        writer.finish().map_err(fail)?;
        Ok(out)
    }
}

const GLYPH_W: i64 = 5;
const GLYPH_H: i64 = 7;
/// Glyph width plus one column of spacing.
const GLYPH_ADVANCE: i64 = GLYPH_W + 1;

fn text_width(s: &str, scale: i64) -> i64 {
    let n = s.chars().count() as i64;
    (n * GLYPH_ADVANCE - 1).max(0) * scale
}

/// The 5x7 bitmap of `c`, one byte per row, bit 4 the leftmost column.
/// Only the characters the chart needs exist; anything else is blank.
#[rustfmt::skip]
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],
        '.' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100],
        '%' => [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011],
        '-' => [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000],
        'a' => [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111],
        'c' => [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110],
        'e' => [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110],
        'h' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'i' => [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110],
        'l' => [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'n' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'o' => [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110],
        'p' => [0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000],
        'r' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000],
        's' => [0b00000, 0b00000, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110],
        't' => [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110],
        'u' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101],
        'v' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'y' => [0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: usize, train: (f64, f64), val: Option<(f64, f64)>) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: train.0,
            train_acc: train.1,
            val_loss: val.map(|v| v.0),
            val_acc: val.map(|v| v.1),
            lr: 0.01,
            seconds: 3.0,
            images_per_sec: 1000.0,
        }
    }

    fn sample_rows() -> Vec<EpochMetrics> {
        vec![
            row(1, (2.1, 0.42), Some((1.6, 0.55))),
            row(2, (1.2, 0.71), None),
            row(3, (0.6, 0.86), Some((0.9, 0.80))),
            row(4, (0.3, 0.93), Some((0.8, 0.83))),
        ]
    }

    /// Decode a PNG file into (width, height, RGB pixels).
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let bytes = std::fs::read(path).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn pixel(pixels: &[u8], x: i64, y: i64) -> Rgb {
        let i = (y as usize * WIDTH as usize + x as usize) * 3;
        [pixels[i], pixels[i + 1], pixels[i + 2]]
    }

    /// Every data point's marker centre, with the colour it should have.
    fn expected_markers(rows: &[EpochMetrics]) -> Vec<((i64, i64), Rgb)> {
        let mut out = Vec::new();
        for (i, spec) in panel_specs(rows).iter().enumerate() {
            let layout = Layout::new(i as i64 * (WIDTH as i64 / 2), spec);
            for series in &spec.series {
                for &p in &series.points {
                    out.push((layout.to_pixel(p).unwrap(), series.color));
                }
            }
        }
        out
    }

    #[test]
    fn writes_a_decodable_chart_with_markers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let rows = sample_rows();
        plot_training(&path, &rows).unwrap();
        let (w, h, pixels) = decode(&path);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        assert!(pixels.chunks(3).any(|p| p != &pixels[..3]));

        let markers = expected_markers(&rows);
        // 4 train + 3 val points in each of the two panels.
        assert_eq!(markers.len(), 14);
        for ((x, y), color) in markers {
            assert_eq!(pixel(&pixels, x, y), color, "marker at ({x}, {y})");
        }
    }

    #[test]
    fn extreme_points_sit_at_the_data_edges() {
        let spec = &panel_specs(&sample_rows())[0];
        let layout = Layout::new(0, spec);
        assert_eq!(
            layout.to_pixel((1.0, 2.1)),
            Some((FRAME_LEFT + INSET, FRAME_TOP + INSET))
        );
        assert_eq!(
            layout.to_pixel((4.0, 0.3)),
            Some((FRAME_RIGHT - INSET, FRAME_BOTTOM - INSET))
        );
    }

    #[test]
    fn single_epoch_and_constant_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.png");
        let rows = vec![row(1, (0.5, 0.5), None)];
        plot_training(&path, &rows).unwrap();
        let (_, _, pixels) = decode(&path);
        let mid_x = (FRAME_LEFT + FRAME_RIGHT) / 2;
        let mid_y = (FRAME_TOP + FRAME_BOTTOM) / 2;
        assert_eq!(pixel(&pixels, mid_x, mid_y), TRAIN);

        let flat = vec![
            row(1, (1.0, 0.9), Some((1.0, 0.9))),
            row(2, (1.0, 0.9), Some((1.0, 0.9))),
        ];
        let canvas = render(&flat);
        for ((x, y), _) in expected_markers(&flat) {
            assert_eq!(y, mid_y);
            // Val is drawn last and covers train at identical points.
            assert_eq!(canvas.get(x, y), VAL);
        }
    }

    #[test]
    fn empty_and_non_finite_inputs_do_not_panic() {
        let _ = render(&[]);
        let _ = render(&[row(1, (f64::NAN, f64::INFINITY), Some((f64::NAN, 0.5)))]);
        let _ = render(&[
            row(1, (1e-9, 0.0), None),
            row(usize::MAX, (1e12, 1.0), None),
        ]);
    }

    #[test]
    fn labels_have_enough_decimals() {
        assert_eq!(decimals_for(2.3), 2);
        assert_eq!(decimals_for(55.0), 1);
        assert_eq!(decimals_for(0.05), 4);
        assert_eq!(decimals_for(450.0), 0);
        assert_eq!(decimals_for(0.0), 2);
        assert_eq!(decimals_for(1e-12), 5);
    }

    #[test]
    fn every_label_character_has_a_glyph() {
        for c in "0123456789.%-lossaccuracyepochtrainval".chars() {
            assert_ne!(glyph(c), [0; 7], "{c:?}");
        }
    }
}
