//! SVG plots (plotters, no fonts or browser needed): test error and hyperspherical energy vs
//! iteration, one line per cell (mean over its seeds), and the final error per cell as bars
//! with each seed as a point and ± one standard deviation.

use super::{CellSummary, CurvePoint, RunRecord};
use crate::error::format_err;
use crate::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

pub const PLOTS_DIR: &str = "plots";
const SIZE: (u32, u32) = (900, 560);

/// Which number of a curve point a line plot shows.
type CurveValue = fn(&CurvePoint) -> Option<f64>;

/// A cell's curve: per iteration, the mean over the seeds that evaluated there.
fn mean_curve(runs: &[&RunRecord], value: fn(&CurvePoint) -> Option<f64>) -> Vec<(f64, f64)> {
    let mut iterations: Vec<u64> = runs
        .iter()
        .flat_map(|r| r.curve.iter().map(|p| p.iteration))
        .collect();
    iterations.sort_unstable();
    iterations.dedup();
    iterations
        .into_iter()
        .filter_map(|it| {
            let vals: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.curve.iter().find(|p| p.iteration == it).and_then(value))
                .filter(|v| v.is_finite())
                .collect();
            (!vals.is_empty()).then(|| (it as f64, vals.iter().sum::<f64>() / vals.len() as f64))
        })
        .collect()
}

/// A non-degenerate range around `values`, with a margin.
fn range(values: impl Iterator<Item = f64>, floor_zero: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if floor_zero {
        lo = lo.min(0.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-9);
    hi += pad;
    if !floor_zero {
        lo -= pad;
    }
    lo..hi
}

fn draw_err(path: &Path) -> impl Fn(String) -> crate::StageError + '_ {
    move |e| format_err(path, format!("cannot draw the plot: {e}"))
}

fn line_plot(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<String> {
    let err = draw_err(path);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let xs = range(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)), true);
        let ys = range(
            series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)),
            false,
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(xs, ys)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc(y_desc)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            // Legend marks are rectangles, so each cell is exactly one polyline in the file.
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(e.to_string()))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 4), (x + 18, y + 4)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

fn bar_plot(path: &Path, cells: &[CellSummary], runs: &[RunRecord]) -> Result<String> {
    let err = draw_err(path);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let seed_values = |c: &CellSummary| -> Vec<f64> {
            runs.iter()
                .filter(|r| c.contains(&r.row))
                .map(|r| r.row.test_err)
                .collect()
        };
        let top = cells
            .iter()
            .flat_map(|c| {
                let mut v = seed_values(c);
                v.push(c.test_err.0 + c.test_err.1.unwrap_or(0.0));
                v
            })
            .fold(0.0f64, f64::max);
        let n = cells.len().max(1) as f64;
        let labels: Vec<String> = cells.iter().map(|c| c.label.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption("Final test error per cell", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..n, 0f64..(top * 1.1).max(1e-6))
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|_| String::new())
            .y_desc("test error (%)")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        // Cell names under their bars (the x axis is only positions).
        let size = if labels.len() > 6 { 11 } else { 13 };
        let style = ("sans-serif", size)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (i, label) in labels.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(label.clone(), (px, py + 8), style.clone()))
                .map_err(|e| err(e.to_string()))?;
        }
        for (i, c) in cells.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let x = i as f64;
            let (mean, std) = c.test_err;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, mean)],
                    color.mix(0.6).filled(),
                )))
                .map_err(|e| err(e.to_string()))?;
            if let Some(s) = std {
                chart
                    .draw_series(std::iter::once(ErrorBar::new_vertical(
                        x + 0.5,
                        mean - s,
                        mean,
                        mean + s,
                        BLACK.stroke_width(2),
                        12,
                    )))
                    .map_err(|e| err(e.to_string()))?;
            }
            chart
                .draw_series(
                    seed_values(c)
                        .into_iter()
                        .map(|v| Circle::new((x + 0.5, v), 4, BLACK.filled())),
                )
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// Writes the plots into `dir`; returns their file names.
pub fn write_plots(dir: &Path, runs: &[RunRecord], cells: &[CellSummary]) -> Result<Vec<String>> {
    if runs.is_empty() {
        return Ok(vec![]);
    }
    std::fs::create_dir_all(dir).map_err(|e| format_err(dir, e.to_string()))?;
    let of_cell = |c: &CellSummary| -> Vec<&RunRecord> {
        runs.iter().filter(|r| c.contains(&r.row)).collect()
    };
    let mut written = Vec::new();
    let lines: [(&str, &str, &str, CurveValue); 2] = [
        (
            "test_error.svg",
            "Test error vs iteration",
            "test error (%)",
            |p| Some(p.test_err),
        ),
        (
            "energy.svg",
            "Hyperspherical energy vs iteration",
            "energy (s = 1, mean over layers)",
            |p| p.energy_s1,
        ),
    ];
    for (file, title, y_desc, value) in lines {
        let series: Vec<(String, Vec<(f64, f64)>)> = cells
            .iter()
            .map(|c| (c.label.clone(), mean_curve(&of_cell(c), value)))
            .collect();
        let path = dir.join(file);
        let svg = line_plot(&path, title, y_desc, &series)?;
        super::write_atomic(&path, svg.as_bytes())?;
        written.push(file.to_string());
    }

    let path = dir.join("final_error.svg");
    let svg = bar_plot(&path, cells, runs)?;
    super::write_atomic(&path, svg.as_bytes())?;
    written.push("final_error.svg".to_string());
    Ok(written)
}
