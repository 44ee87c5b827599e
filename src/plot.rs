//! A PNG chart of the training curves: loss on the left, accuracy on the
//! right, train and validation series in each, drawn with `plotters` into
//! an RGB buffer and encoded with `png`.
//!
//! Text uses an ASCII subset of DejaVu Sans embedded in the binary
//! (`data/fonts/`, 14 KB; `tools/subset-font.sh` makes it), so a chart
//! looks the same on every machine and needs no system font or library.

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;
use crate::weights::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

/// Size of the whole image; each panel takes half the width.
pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 400;

/// Train and validation colours (the common blue/orange pair, which stays
/// distinguishable for the usual forms of colour blindness).
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const INK: RGBColor = RGBColor(40, 40, 40);
const MARKER_RADIUS: i32 = 3;
/// Height of the legend strip under the panels.
const LEGEND_HEIGHT: u32 = 26;

const FONT: &[u8] = include_bytes!("../data/fonts/DejaVuSans-ascii.ttf");

/// Draw `rows` as an 800x400 RGB PNG at `path`, replacing any old chart
/// atomically (a viewer refreshing during training never sees half a file).
///
/// Validation points that are `None`, and any non-finite value, are skipped.
/// Accuracies are fractions in [0, 1] and are labelled as percentages.
pub fn plot_training(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let (pixels, _) =
        render(rows).map_err(|e| Error::format(path, format!("cannot draw the chart: {e}")))?;
    let png = encode_png(path, &pixels)?;
    write_atomic(path, &png)
}

/// One curve: (epoch, value) points in order, and its colour.
struct Series {
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

/// What one panel shows.
struct PanelSpec {
    title: &'static str,
    /// Label values as percentages (accuracy) rather than plain numbers.
    percent: bool,
    series: [Series; 2],
}

fn panel_specs(rows: &[EpochMetrics]) -> [PanelSpec; 2] {
    type Value = fn(&EpochMetrics) -> Option<f64>;
    let series = |color, value: Value| Series {
        points: rows
            .iter()
            .filter_map(|r| value(r).map(|v| (r.epoch as f64, v)))
            .filter(|(_, v)| v.is_finite())
            .collect(),
        color,
    };
    let panel = |title, percent, train: Value, val: Value| PanelSpec {
        title,
        percent,
        series: [series(TRAIN, train), series(VAL, val)],
    };
    [
        panel("loss", false, |r| Some(r.train_loss), |r| r.val_loss),
        panel("accuracy", true, |r| Some(r.train_acc), |r| r.val_acc),
    ]
}

/// The axis range of `values` with 5% of margin each side, so markers never
/// sit on the frame; one value (one epoch, a constant series) is centred.
fn axis_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let Some((lo, hi)) = values.fold(None, |acc: Option<(f64, f64)>, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    }) else {
        return 0.0..1.0;
    };
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        (lo.abs() * 0.05).max(0.5)
    };
    lo - pad..hi + pad
}

/// About three significant digits of the axis span, so neighbouring tick
/// labels differ visibly; capped at 5. For a constant value two are plenty.
fn decimals_for(span: f64) -> usize {
    if span <= 0.0 || !span.is_finite() {
        return 2;
    }
    ((2.0 - span.log10()).ceil()).clamp(0.0, 5.0) as usize
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is part of the binary and checked by the tests.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// A data point's marker centre in image pixels, and its colour.
type Marker = ((i32, i32), RGBColor);

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The chart's RGB pixels, and each data point's marker centre with its
/// colour (for the tests).
fn render(rows: &[EpochMetrics]) -> DrawResult<(Vec<u8>, Vec<Marker>)> {
    register_font();
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    let mut markers = Vec::new();
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (panels, legend) = root.split_vertically(HEIGHT - LEGEND_HEIGHT);
        let (left, right) = panels.split_horizontally(WIDTH / 2);
        for (area, spec) in [left, right].iter().zip(panel_specs(rows)) {
            draw_panel(area, &spec, &mut markers)?;
        }
        draw_legend(&legend)?;
        root.present()?;
    }
    Ok((pixels, markers))
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    spec: &PanelSpec,
    markers: &mut Vec<Marker>,
) -> DrawResult<()> {
    let points = || spec.series.iter().flat_map(|s| s.points.iter());
    let xs = axis_range(points().map(|p| p.0));
    let ys = axis_range(points().map(|p| p.1));
    let scale = if spec.percent { 100.0 } else { 1.0 };
    let decimals = decimals_for((ys.end - ys.start) * scale);
    let mut chart = ChartBuilder::on(area)
        .caption(spec.title, ("sans-serif", 16).into_font().color(&INK))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(xs, ys)?;
    let y_label = |v: &f64| {
        let s = format!("{:.*}", decimals, v * scale);
        if spec.percent {
            s + "%"
        } else {
            s
        }
    };
    // Epochs are whole numbers: other tick positions get no label.
    let x_label = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            format!("{:.0}", v)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(8)
        .y_labels(5)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(("sans-serif", 12).into_font().color(&INK))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(228, 228, 228))
        .axis_style(INK)
        .draw()?;
    for s in &spec.series {
        chart.draw_series(LineSeries::new(
            s.points.iter().copied(),
            s.color.stroke_width(2),
        ))?;
        chart.draw_series(
            s.points
                .iter()
                .map(|&p| Circle::new(p, MARKER_RADIUS, s.color.filled())),
        )?;
        markers.extend(s.points.iter().map(|&p| (chart.backend_coord(&p), s.color)));
    }
    Ok(())
}

/// "— train  — val", centred under the panels.
fn draw_legend(area: &DrawingArea<BitMapBackend, Shift>) -> DrawResult<()> {
    let (w, h) = area.dim_in_pixel();
    let y = h as i32 / 2;
    let style = ("sans-serif", 13).into_font().color(&INK);
    let mut x = w as i32 / 2 - 80;
    for (label, color) in [("train", TRAIN), ("val", VAL)] {
        area.draw(&PathElement::new(
            vec![(x, y), (x + 24, y)],
            color.stroke_width(2),
        ))?;
        area.draw(&Circle::new((x + 12, y), MARKER_RADIUS, color.filled()))?;
        area.draw(&Text::new(label, (x + 30, y - 7), style.clone()))?;
        x += 90;
    }
    Ok(())
}

fn encode_png(path: &Path, pixels: &[u8]) -> Result<Vec<u8>> {
    let fail = |e: png::EncodingError| Error::format(path, format!("cannot encode PNG: {e}"));
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(pixels).map_err(fail)?;
    writer.finish().map_err(fail)?;
    Ok(out)
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

    fn pixel(pixels: &[u8], (x, y): (i32, i32)) -> RGBColor {
        let i = (y as usize * WIDTH as usize + x as usize) * 3;
        RGBColor(pixels[i], pixels[i + 1], pixels[i + 2])
    }

    #[test]
    fn writes_a_decodable_chart_with_markers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let rows = sample_rows();
        plot_training(&path, &rows).unwrap();
        let (w, h, pixels) = decode(&path);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        let (rendered, markers) = render(&rows).unwrap();
        assert_eq!(pixels, rendered, "the file holds the rendered chart");
        // 4 train + 3 val points in each of the two panels.
        assert_eq!(markers.len(), 14);
        for (at, color) in markers {
            assert!(at.0 >= 0 && at.0 < WIDTH as i32 && at.1 >= 0, "{at:?}");
            assert_eq!(pixel(&pixels, at), color, "marker at {at:?}");
        }
    }

    /// Text is drawn with the embedded font: the caption area of each
    /// panel has ink of the text colour's hue.
    #[test]
    fn labels_are_drawn() {
        let (pixels, _) = render(&sample_rows()).unwrap();
        let dark = |x0: u32, x1: u32, y0: u32, y1: u32| {
            (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| pixel(&pixels, (x as i32, y as i32)).0 < 120)
                .count()
        };
        // Captions ("loss", "accuracy") in the top 30 rows of each panel.
        assert!(dark(100, 300, 0, 30) > 20);
        assert!(dark(500, 700, 0, 30) > 20);
        // Legend text in the bottom strip.
        assert!(dark(300, 500, HEIGHT - LEGEND_HEIGHT, HEIGHT) > 20);
    }

    #[test]
    fn extreme_points_are_inside_the_frame_and_ordered() {
        let (_, markers) = render(&sample_rows()).unwrap();
        // Loss panel, train series: epoch 1 is leftmost and highest.
        let train: Vec<_> = markers[..4].iter().map(|m| m.0).collect();
        assert!(train.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert!(train.iter().all(|p| p.0 > 0 && p.0 < WIDTH as i32 / 2));
    }

    #[test]
    fn single_epoch_and_constant_series_are_centred() {
        let (pixels, markers) = render(&[row(1, (0.5, 0.5), None)]).unwrap();
        assert_eq!(markers.len(), 2);
        assert_eq!(pixel(&pixels, markers[0].0), TRAIN);
        let flat = vec![
            row(1, (1.0, 0.9), Some((1.0, 0.9))),
            row(2, (1.0, 0.9), Some((1.0, 0.9))),
        ];
        let (pixels, markers) = render(&flat).unwrap();
        let y = markers[0].0 .1;
        for (at, _) in &markers[..4] {
            assert_eq!(at.1, y);
            // Val is drawn last and covers train at identical points.
            assert_eq!(pixel(&pixels, *at), VAL);
        }
    }

    #[test]
    fn empty_and_non_finite_inputs_do_not_panic() {
        render(&[]).unwrap();
        render(&[row(1, (f64::NAN, f64::INFINITY), Some((f64::NAN, 0.5)))]).unwrap();
        render(&[
            row(1, (1e-9, 0.0), None),
            row(usize::MAX, (1e12, 1.0), None),
        ])
        .unwrap();
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
    fn the_embedded_font_has_every_label_character() {
        let face = plotters::style::FontDesc::new(FontFamily::SansSerif, 12.0, FontStyle::Normal);
        register_font();
        for c in "0123456789.%-lossaccuracyepochtrainval".chars() {
            let (w, _) = face.box_size(&c.to_string()).unwrap();
            assert!(w > 0, "{c:?}");
        }
    }
}
