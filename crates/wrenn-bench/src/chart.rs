//! The PNG chart of a report: one row per latency operation (unit `ms`) with every sample as a
//! dot, the interquartile box, the median bar and a min–max whisker, on a logarithmic time
//! axis. Text is drawn with `ab_glyph` from a TrueType file read at run time (DejaVu Sans from
//! Debian's `fonts-dejavu-core` by default, `WRENN_BENCH_FONT` to choose another), so no system
//! font library is needed. It only reads the report.

use crate::report::{Op, Report};
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Where Debian's `fonts-dejavu-core` puts its sans-serif font.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const ROW_PX: u32 = 34;
const LABEL_PX: u32 = 470;
const WIDTH_PX: u32 = 1500;

/// Registers the font plotters draws every text with (once per process).
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var("WRENN_BENCH_FONT").unwrap_or_else(|_| DEFAULT_FONT.into());
        let bytes = std::fs::read(&path).map_err(|e| {
            format!("read font {path}: {e} (install fonts-dejavu-core or set WRENN_BENCH_FONT)")
        })?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType/OpenType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Draws the latency distribution of every `ms` operation of `report` into `path`.
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    register_font()?;
    let rows: Vec<Row> = report
        .sections
        .iter()
        .enumerate()
        .flat_map(|(k, s)| {
            s.ops
                .iter()
                .filter(|o| o.unit == "ms" && o.summary.is_some())
                .map(move |o| Row {
                    label: format!("{}: {}", s.name, o.name),
                    op: o,
                    colour: SECTION_COLOURS[k % SECTION_COLOURS.len()],
                })
        })
        .collect();
    if rows.is_empty() {
        return Err(anyhow!("no latency samples to draw"));
    }
    let height = 130 + ROW_PX * rows.len() as u32;
    let root = BitMapBackend::new(path, (WIDTH_PX, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    draw_rows(report, &rows, &root)?;
    root.present()
        .map_err(plot_err)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// One line of the chart.
struct Row<'a> {
    label: String,
    op: &'a Op,
    colour: RGBColor,
}

/// One colour per report section (api, agent).
const SECTION_COLOURS: [RGBColor; 3] = [
    RGBColor(31, 100, 180),
    RGBColor(214, 90, 20),
    RGBColor(40, 150, 60),
];

fn draw_rows(
    report: &Report,
    rows: &[Row<'_>],
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
) -> Result<()> {
    let (lo, hi) = rows
        .iter()
        .flat_map(|r| r.op.samples.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = (lo / 1.5, hi * 1.5);
    let n = rows.len() as f64;
    let title = format!(
        "Wrenn latency per operation ({}, {} mode; guests under {}; load {:.1} → {:.1})",
        report.started_at.get(..16).unwrap_or(&report.started_at),
        report.mode,
        report.accel.to_uppercase(),
        report.host.load_start[0],
        report.host.load_end[0],
    );
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .margin_left(LABEL_PX)
        .margin_right(36)
        .x_label_area_size(40)
        .build_cartesian_2d((lo..hi).log_scale(), -0.5..(n - 0.5))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("milliseconds (log scale); dots: samples, box: quartiles, bar: median")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;

    let label = ("sans-serif", 14).into_font().color(&BLACK);
    for (i, row) in rows.iter().enumerate() {
        let op = row.op;
        // Row 0 at the top.
        let y = n - 1.0 - i as f64;
        let s = op.summary.as_ref().expect("rows have summaries");
        let colour = row.colour;
        if i % 2 == 0 {
            chart
                .draw_series([Rectangle::new(
                    [(lo, y - 0.5), (hi, y + 0.5)],
                    RGBColor(244, 244, 248).filled(),
                )])
                .map_err(plot_err)?;
        }
        chart
            .draw_series([
                PathElement::new(vec![(s.min, y), (s.max, y)], colour.stroke_width(1)),
                PathElement::new(vec![(s.min, y - 0.15), (s.min, y + 0.15)], colour),
                PathElement::new(vec![(s.max, y - 0.15), (s.max, y + 0.15)], colour),
            ])
            .map_err(plot_err)?;
        chart
            .draw_series([Rectangle::new(
                [(s.q1.max(lo), y - 0.3), (s.q3.max(lo), y + 0.3)],
                colour.mix(0.25).filled(),
            )])
            .map_err(plot_err)?;
        chart
            .draw_series([Rectangle::new(
                [(s.q1.max(lo), y - 0.3), (s.q3.max(lo), y + 0.3)],
                colour.stroke_width(1),
            )])
            .map_err(plot_err)?;
        chart
            .draw_series([PathElement::new(
                vec![(s.median, y - 0.38), (s.median, y + 0.38)],
                BLACK.stroke_width(3),
            )])
            .map_err(plot_err)?;
        let count = op.samples.len().max(1) as f64;
        chart
            .draw_series(op.samples.iter().enumerate().map(|(k, v)| {
                // Spread the dots vertically so equal values stay visible.
                let dy = if count > 1.0 {
                    -0.22 + 0.44 * k as f64 / (count - 1.0)
                } else {
                    0.0
                };
                Circle::new((v.max(lo), y + dy), 3, colour.mix(0.7).filled())
            }))
            .map_err(plot_err)?;
        let (_, py) = chart.backend_coord(&(lo, y));
        let text = format!("{}  (n={}, median {:.0})", row.label, s.n, s.median);
        root.draw(&Text::new(
            text,
            (LABEL_PX as i32 - 8, py),
            label.clone().pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(plot_err)?;
    }
    Ok(())
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Section;

    fn report(unit: &str) -> Report {
        let mut op = Op::new("exec", "exec", unit);
        for v in [40.0, 55.0, 61.0, 90.0] {
            op.add(v);
        }
        let mut r = Report {
            mode: "quick".into(),
            accel: "tcg".into(),
            sections: vec![Section {
                name: "api".into(),
                how: "test".into(),
                ops: vec![op],
            }],
            ..Default::default()
        };
        r.finish();
        r
    }

    #[test]
    fn draws_a_png_with_one_row_per_latency_operation() {
        let dir = std::env::temp_dir().join(format!("wrenn-bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bench.png");
        draw(&report("ms"), &path).expect("chart drawn (needs fonts-dejavu-core)");
        let png = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((w, h), (WIDTH_PX, 130 + ROW_PX));
    }

    #[test]
    fn refuses_a_report_without_latencies() {
        let path = std::env::temp_dir().join("wrenn-bench-never-written.png");
        let err = draw(&report("MB/s"), &path).unwrap_err();
        assert!(err.to_string().contains("no latency samples"), "{err}");
        assert!(!path.exists());
    }
}
