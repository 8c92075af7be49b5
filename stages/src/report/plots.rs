//! SVG plots (plotters, no fonts or browser needed): test error, hyperspherical energy (as the
//! change from its initial value), train loss and learning rate vs iteration — one line per
//! cell, the mean over its seeds with a ± one standard deviation band — and the final error per
//! cell as bars with each seed as a point and ± one standard deviation.
//!
//! Publication conventions: the legend sits right of the plotting area (never over data),
//! colours come from a colour-blind-safe palette without yellow, series are named as in the
//! paper (`OPT (GS)`), and the iteration axis is an integer axis.

use super::{CellSummary, RunRecord, TrainSample};
use crate::error::format_err;
use crate::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

pub const PLOTS_DIR: &str = "plots";
/// Width of the plotting part and height of every plot; the legend adds its own width.
const PLOT_WIDTH: u32 = 760;
const HEIGHT: u32 = 520;
/// Most points a train-loss line keeps (each the mean of a window of iterations).
const LOSS_POINTS: u64 = 200;

/// Okabe & Ito's colour-blind-safe palette without its yellow (unreadable on white), then
/// Tol's wine and indigo, so nine methods get nine colours; more cells re-use them in order.
pub const PALETTE: [RGBColor; 9] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0x00, 0x9E, 0x73), // bluish green
    RGBColor(0xCC, 0x79, 0xA7), // reddish purple
    RGBColor(0xE6, 0x9F, 0x00), // orange
    RGBColor(0x56, 0xB4, 0xE9), // sky blue
    RGBColor(0x00, 0x00, 0x00), // black
    RGBColor(0x88, 0x22, 0x55), // wine
    RGBColor(0x33, 0x22, 0x88), // indigo
];

/// Opacity of the ± std bands.
const BAND_OPACITY: f64 = 0.2;

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// What each plot shows, for `results.md`.
pub(super) fn describe(file: &str) -> &str {
    match file {
        "test_error.svg" => "Test error vs iteration (mean ± std over seeds)",
        "energy.svg" => "Change of the hyperspherical energy (s = 1) from its initial value",
        "train_loss.svg" => "Training loss vs iteration (window means; mean ± std over seeds)",
        "lr.svg" => "Learning rate vs iteration",
        "final_error.svg" => "Final test error per cell (bars: mean; points: seeds)",
        other => other,
    }
}

/// One line of a plot: per iteration, the mean over seeds and their standard deviation.
struct Series {
    label: String,
    points: Vec<(u64, f64, Option<f64>)>,
}

/// Per iteration, mean and sample std over the runs' `(iteration, value)` lists (each run
/// counts where it has a finite value).
fn mean_band(per_run: &[Vec<(u64, f64)>]) -> Vec<(u64, f64, Option<f64>)> {
    let mut iterations: Vec<u64> = per_run.iter().flatten().map(|p| p.0).collect();
    iterations.sort_unstable();
    iterations.dedup();
    iterations
        .into_iter()
        .filter_map(|it| {
            let vals: Vec<f64> = per_run
                .iter()
                .filter_map(|r| r.iter().find(|p| p.0 == it).map(|p| p.1))
                .filter(|v| v.is_finite())
                .collect();
            let (mean, std) = super::mean_std(&vals);
            (!vals.is_empty()).then_some((it, mean, std))
        })
        .collect()
}

/// A run's training loss as window means: windows of `width` iterations, each plotted at its
/// last iteration, so every run of a report shares the same x positions.
fn loss_windows(train: &[TrainSample], width: u64) -> Vec<(u64, f64)> {
    let mut out: Vec<(u64, f64, usize)> = Vec::new();
    for t in train.iter().filter(|t| t.loss.is_finite()) {
        let end = t.iteration.div_ceil(width) * width;
        match out.last_mut() {
            Some((e, sum, n)) if *e == end => {
                *sum += t.loss;
                *n += 1;
            }
            _ => out.push((end, t.loss, 1)),
        }
    }
    let last = train.last().map_or(0, |t| t.iteration);
    out.into_iter()
        .map(|(end, sum, n)| (end.min(last), sum / n as f64))
        .collect()
}

/// A run's learning rate as a step function: for each constant stretch, its first and last
/// iteration (the step before the first one included), so a 75 000-step run is a few points.
fn lr_steps(train: &[TrainSample]) -> Vec<(u64, f64)> {
    let mut out: Vec<(u64, f64)> = Vec::new();
    for t in train {
        match out.len() {
            0 => out.extend([(t.iteration.saturating_sub(1), t.lr), (t.iteration, t.lr)]),
            n if out[n - 1].1 == t.lr => out[n - 1].0 = t.iteration,
            _ => {
                let prev = out[out.len() - 1].0;
                out.extend([(prev, t.lr), (t.iteration, t.lr)]);
            }
        }
    }
    out
}

/// A run's mean s = 1 energy minus its value at the first evaluation (iteration 0).
fn energy_change(run: &RunRecord) -> Vec<(u64, f64)> {
    let points: Vec<(u64, f64)> = run
        .curve
        .iter()
        .filter_map(|p| p.energy_s1.map(|e| (p.iteration, e)))
        .collect();
    let Some(&(_, first)) = points.first() else {
        return vec![];
    };
    points.into_iter().map(|(i, e)| (i, e - first)).collect()
}

/// A non-degenerate range around `values`, at least `min_span` wide, with a margin.
fn range(values: impl Iterator<Item = f64>, min_span: f64) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = (hi - lo).max(min_span).max(hi.abs() * 1e-3).max(1e-9);
    let mid = (hi + lo) / 2.0;
    lo = lo.min(mid - span / 2.0);
    hi = hi.max(mid + span / 2.0);
    let pad = span * 0.05;
    (lo - pad)..(hi + pad)
}

fn draw_err(path: &Path) -> impl Fn(String) -> crate::StageError + '_ {
    move |e| format_err(path, format!("cannot draw the plot: {e}"))
}

/// The legend's width for these labels (plotters' SVG text has no measuring; about 7.5 px per
/// character at 14 px).
fn legend_width(labels: &[String]) -> u32 {
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    (longest as u32 * 15 / 2 + 48).clamp(120, 480)
}

/// The legend, in its own area right of the plot: a colour swatch and the label per series.
fn draw_legend(
    area: &DrawingArea<SVGBackend, Shift>,
    labels: &[String],
) -> std::result::Result<(), String> {
    let style = ("sans-serif", 14)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, label) in labels.iter().enumerate() {
        let y = 60 + 24 * i as i32;
        let c = colour(i);
        area.draw(&Rectangle::new([(8, y - 5), (30, y + 5)], c.filled()))
            .map_err(|e| e.to_string())?;
        area.draw(&Text::new(label.clone(), (38, y), style.clone()))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// How a line plot's y axis is drawn.
struct Axis<'a> {
    title: &'a str,
    y_desc: &'a str,
    /// Smallest y span, so a flat line is not magnified into noise.
    min_span: f64,
    /// Values are log10 of the quantity; ticks are labelled `1e-3`.
    log10: bool,
    /// The quantity is the same for every seed (a schedule): drawn from a cell's first run as
    /// is, which keeps a step's two points at one iteration.
    seeds_agree: bool,
}

fn line_plot(path: &Path, axis: &Axis, series: &[Series]) -> Result<String> {
    let err = draw_err(path);
    let labels: Vec<String> = series.iter().map(|s| s.label.clone()).collect();
    let legend = legend_width(&labels);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (PLOT_WIDTH + legend, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let (plot_area, legend_area) = root.split_horizontally(PLOT_WIDTH);
        let all = || series.iter().flat_map(|s| s.points.iter());
        let x_max = all().map(|p| p.0).max().unwrap_or(1).max(1);
        let ys = range(
            all().flat_map(|&(_, m, s)| {
                let s = s.unwrap_or(0.0);
                [m - s, m + s]
            }),
            axis.min_span,
        );
        let ys = if axis.log10 {
            ys.start.floor()..ys.end.ceil()
        } else {
            ys
        };
        let decades = (ys.end - ys.start).round() as usize + 1;
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(axis.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(0u64..x_max, ys)
            .map_err(|e| err(e.to_string()))?;
        let log_label = |v: &f64| format!("{:.0e}", 10f64.powf(*v));
        let mut mesh = chart.configure_mesh();
        mesh.x_desc("iteration").y_desc(axis.y_desc);
        if axis.log10 {
            mesh.y_labels(decades).y_label_formatter(&log_label);
        }
        mesh.draw().map_err(|e| err(e.to_string()))?;
        for (i, s) in series.iter().enumerate() {
            let c = colour(i);
            let upper = s
                .points
                .iter()
                .filter_map(|&(x, m, sd)| sd.map(|d| (x, m + d)));
            let lower = s
                .points
                .iter()
                .rev()
                .filter_map(|&(x, m, sd)| sd.map(|d| (x, m - d)));
            let band: Vec<(u64, f64)> = upper.chain(lower).collect();
            // No band where seeds agree exactly (the learning rate): it would have no area.
            let spread = s.points.iter().any(|p| p.2.is_some_and(|d| d > 0.0));
            if band.len() >= 4 && spread {
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        band,
                        c.mix(BAND_OPACITY).filled(),
                    )))
                    .map_err(|e| err(e.to_string()))?;
            }
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|&(x, m, _)| (x, m)),
                    c.stroke_width(2),
                ))
                .map_err(|e| err(e.to_string()))?;
        }
        draw_legend(&legend_area, &labels).map_err(&err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

fn bar_plot(
    path: &Path,
    cells: &[CellSummary],
    labels: &[String],
    runs: &[RunRecord],
) -> Result<String> {
    let err = draw_err(path);
    let mut svg = String::new();
    {
        let legend = legend_width(labels);
        let root =
            SVGBackend::with_string(&mut svg, (PLOT_WIDTH + legend, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let (plot_area, legend_area) = root.split_horizontally(PLOT_WIDTH);
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
        let mut chart = ChartBuilder::on(&plot_area)
            .caption("Final test error per cell", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(20)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..n, 0f64..(top * 1.1).max(1e-6))
            .map_err(|e| err(e.to_string()))?;
        // The bars are named by the legend (colour) and ordered as it is; no x ticks.
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("test error (%)")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, c) in cells.iter().enumerate() {
            let x = i as f64;
            let (mean, std) = c.test_err;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, mean)],
                    colour(i).mix(0.6).filled(),
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
        draw_legend(&legend_area, labels).map_err(&err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// Which line plots a report draws: file, axis and each run's `(iteration, value)` list.
type RunValues = fn(&RunRecord, u64) -> Vec<(u64, f64)>;

fn line_plots() -> [(&'static str, Axis<'static>, RunValues); 4] {
    let axis = |title, y_desc, log10| Axis {
        title,
        y_desc,
        min_span: 0.0,
        log10,
        seeds_agree: false,
    };
    [
        (
            "test_error.svg",
            axis("Test error", "test error (%)", false),
            |r, _| r.curve.iter().map(|p| (p.iteration, p.test_err)).collect(),
        ),
        (
            "energy.svg",
            axis(
                "Hyperspherical energy (s = 1): change from iteration 0",
                "ΔE (mean over layers)",
                false,
            ),
            |r, _| energy_change(r),
        ),
        (
            "train_loss.svg",
            axis("Training loss (window means)", "train loss", false),
            |r, window| loss_windows(&r.train, window),
        ),
        (
            "lr.svg",
            Axis {
                seeds_agree: true,
                ..axis("Learning rate", "learning rate (log scale)", true)
            },
            |r, _| {
                lr_steps(&r.train)
                    .into_iter()
                    .filter(|p| p.1 > 0.0)
                    .map(|(i, lr)| (i, lr.log10()))
                    .collect()
            },
        ),
    ]
}

/// Writes the plots into `dir`, series named by `labels` (one per cell); returns their file
/// names.
pub fn write_plots(
    dir: &Path,
    runs: &[RunRecord],
    cells: &[CellSummary],
    labels: &[String],
) -> Result<Vec<String>> {
    if runs.is_empty() {
        return Ok(vec![]);
    }
    std::fs::create_dir_all(dir).map_err(|e| format_err(dir, e.to_string()))?;
    let of_cell = |c: &CellSummary| -> Vec<&RunRecord> {
        runs.iter().filter(|r| c.contains(&r.row)).collect()
    };
    let last = runs
        .iter()
        .filter_map(|r| r.train.last().map(|t| t.iteration))
        .max()
        .unwrap_or(1);
    let window = last.div_ceil(LOSS_POINTS).max(1);
    // The energy's natural scale: a change far below it is drawn as the flat line it is.
    let initial_energy = runs
        .iter()
        .filter_map(|r| r.curve.iter().find_map(|p| p.energy_s1))
        .fold(0.0f64, |m, e| m.max(e.abs()));
    let mut written = Vec::new();
    for (file, mut axis, values) in line_plots() {
        if file == "energy.svg" {
            axis.min_span = 1e-3 * initial_energy;
        }
        let series: Vec<Series> = cells
            .iter()
            .zip(labels)
            .map(|(c, label)| {
                let per_run: Vec<Vec<(u64, f64)>> =
                    of_cell(c).iter().map(|r| values(r, window)).collect();
                let points = match per_run.first() {
                    Some(first) if axis.seeds_agree => {
                        first.iter().map(|&(x, y)| (x, y, None)).collect()
                    }
                    _ => mean_band(&per_run),
                };
                Series {
                    label: label.clone(),
                    points,
                }
            })
            .collect();
        let path = dir.join(file);
        let svg = line_plot(&path, &axis, &series)?;
        super::write_atomic(&path, svg.as_bytes())?;
        written.push(file.to_string());
    }
    let path = dir.join("final_error.svg");
    let svg = bar_plot(&path, cells, labels, runs)?;
    super::write_atomic(&path, svg.as_bytes())?;
    written.push("final_error.svg".to_string());
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(lrs: &[f64]) -> Vec<TrainSample> {
        lrs.iter()
            .enumerate()
            .map(|(i, &lr)| TrainSample {
                iteration: i as u64 + 1,
                lr,
                loss: i as f64,
            })
            .collect()
    }

    #[test]
    fn lr_is_a_step_function_of_few_points() {
        // Steps 1–3 at 0.1, 4–5 at 0.01: the segment [0, 3] at 0.1, then [3, 5] at 0.01.
        let t = steps(&[0.1, 0.1, 0.1, 0.01, 0.01]);
        assert_eq!(lr_steps(&t), vec![(0, 0.1), (3, 0.1), (3, 0.01), (5, 0.01)]);
    }

    #[test]
    fn loss_windows_average_and_end_at_the_last_step() {
        // Losses 0..5 at steps 1..6, windows of 4: steps 1–4 (mean 1.5) at 4, 5–6 (4.5) at 6.
        assert_eq!(loss_windows(&steps(&[0.1; 6]), 4), vec![(4, 1.5), (6, 4.5)]);
    }

    #[test]
    fn bands_are_mean_and_sample_std_per_iteration() {
        let band = mean_band(&[vec![(0, 1.0), (10, 2.0)], vec![(0, 3.0)]]);
        assert_eq!(band[0], (0, 2.0, Some(std::f64::consts::SQRT_2)));
        assert_eq!(band[1], (10, 2.0, None));
    }

    #[test]
    fn a_flat_line_is_not_magnified() {
        let r = range([1e-9, -1e-9].into_iter(), 1e-3);
        assert!(r.end - r.start >= 1e-3, "{r:?}");
    }
}
