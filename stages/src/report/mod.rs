//! The report half of the stages: the result tables and plots of one run or of a whole grid.
//!
//! Every finished (cell, seed) run leaves a [`ResultRow`] (`row.json`) and its curves
//! (`curves.csv`) in its own directory; the report gathers any number of them into
//! `results.csv` (one row per cell and seed), `summary.csv` (mean ± std over seeds per cell),
//! `results.md` (the tables, a paper-style table and links to the plots), `results.tex` (the
//! paper-style table for LaTeX, booktabs) and SVG plots.
//! Everything is regenerated from the rows each time, so re-running never duplicates a row.
//!
//! The evaluate stage (a trained model on the test split) and the export to PyTorch live here
//! too: they read what training left and never feed it.

pub mod evaluate;
pub mod export;
mod plots;
mod summary;
mod tables;

pub use plots::{write_plots, PLOTS_DIR};
pub use summary::{mean_std, summarize, CellSummary};
pub use tables::{markdown, paper_latex, paper_table, results_csv, runs_table, summary_csv};

pub use crate::training::metrics::LayerMetrics;

use crate::error::{format_err, read_json, IoContext};
use crate::{Result, StageError};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const RESULTS_CSV: &str = "results.csv";
pub const SUMMARY_CSV: &str = "summary.csv";
pub const RESULTS_MD: &str = "results.md";
pub const RESULTS_TEX: &str = "results.tex";
/// A run's own files, in its directory.
pub const ROW_FILE: &str = "row.json";
pub const CURVES_CSV: &str = "curves.csv";
/// Every layer's energies and orthogonality error at every evaluation.
pub const LAYERS_CSV: &str = "layers.csv";

/// Where a number came from, so it can be traced and re-run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub recipe_file: String,
    /// blake3 of the cell's fully resolved recipe.
    pub recipe_hash: String,
    pub fetch_key: String,
    pub preprocess_key: String,
    pub train_key: String,
    pub evaluate_key: String,
    /// `git rev-parse HEAD` of the working directory (`-dirty` with local changes), or
    /// `unknown` outside a repository.
    pub git_commit: String,
    /// The command that reproduces the row.
    pub command: String,
}

/// One finished run: a cell of a grid with one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// Name of the run (the base recipe's name).
    pub recipe: String,
    /// The cell's name (its varied values; the recipe's name without a grid).
    pub cell: String,
    /// Position in the grid (`orthopt run --cell I`).
    pub index: usize,
    /// The cell's varied keys and their values, in grid order.
    pub params: Vec<(String, String)>,
    pub dataset: String,
    pub model: String,
    /// Method name as in recipes (`gs`) and as in the paper (`OPT (GS)`).
    pub method: String,
    pub method_label: String,
    pub seed: u64,
    pub iterations: u64,
    /// Final top-1 test accuracy, a fraction, and error, percent.
    pub test_acc: f64,
    pub test_err: f64,
    /// The evaluation with the best validation top-1 (the final one included): its iteration,
    /// that validation accuracy, and the test accuracy and error of the same weights. Only with
    /// a validation split: choosing the best evaluation on test would be optimistic.
    #[serde(default)]
    pub best_iteration: Option<u64>,
    #[serde(default)]
    pub best_val_acc: Option<f64>,
    #[serde(default)]
    pub test_acc_at_best: Option<f64>,
    #[serde(default)]
    pub test_err_at_best: Option<f64>,
    /// Final top-5 test accuracy; `None` with fewer than 5 classes.
    pub test_top5: Option<f64>,
    pub test_loss: f64,
    /// Final top-1 accuracy on the validation split, when the recipe carves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    /// Mean over the OPT-able layers of the s = 1 hyperspherical energy (final weights).
    pub energy_s1: f64,
    /// Largest `‖RRᵀ − I‖_F` over the rotations; `None` for plain training.
    pub orth_error: Option<f64>,
    /// Every energy (s = 0, 1, 2, half-space) and the orthogonality error of each layer, final
    /// weights.
    pub layers: Vec<LayerMetrics>,
    pub train_seconds: f64,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    pub device: String,
    /// The fused ops' routes the training used (`fused`, `composed`, `fused; composed: bn`);
    /// empty in rows recorded before routes were.
    #[serde(default)]
    pub ops: String,
    /// The method's map route (`exact`, `newton-schulz`, `cholesky-qr2`, `none`) and the batches
    /// that fell back to the exact route.
    #[serde(default)]
    pub map_route: String,
    pub provenance: Provenance,
}

impl ResultRow {
    /// Identifies the row's cell across run directories.
    pub fn cell_id(&self) -> (String, String) {
        (self.recipe.clone(), self.cell.clone())
    }
}

/// One evaluation of a run's curves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub iteration: u64,
    /// Top-1 test error, percent.
    pub test_err: f64,
    /// Top-1 validation error, percent, when the run has a validation split.
    pub val_err: Option<f64>,
    pub energy_s1: Option<f64>,
}

/// One training step of a run's curves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainSample {
    /// Completed steps (1-based).
    pub iteration: u64,
    pub lr: f64,
    pub loss: f64,
}

/// A finished run: its row, its evaluations and its training steps.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub row: ResultRow,
    pub curve: Vec<CurvePoint>,
    pub train: Vec<TrainSample>,
}

/// Reads a `curves.csv`: the evaluations (rows with a test accuracy) and the training steps
/// (rows with a train loss). Files without validation columns (older runs) read as without a
/// split.
pub fn read_curves(path: &Path) -> Result<(Vec<CurvePoint>, Vec<TrainSample>)> {
    let csv_err = |source| StageError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut r = csv::Reader::from_path(path).map_err(csv_err)?;
    let headers = r.headers().map_err(csv_err)?.clone();
    let find = |name: &str| headers.iter().position(|h| h == name);
    let col = |name: &str| {
        find(name).ok_or_else(|| StageError::Format {
            path: path.to_path_buf(),
            message: format!("no `{name}` column"),
        })
    };
    let (it, top1, energy) = (col("iteration")?, col("test_top1")?, col("energy_s1")?);
    let (lr, loss, val) = (col("lr")?, col("train_loss")?, find("val_top1"));
    let (mut evals, mut train) = (Vec::new(), Vec::new());
    for record in r.records() {
        let record = record.map_err(csv_err)?;
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        let number = |i: usize| -> Result<Option<f64>> {
            let text = field(i);
            if text.is_empty() {
                return Ok(None);
            }
            text.parse().map(Some).map_err(|_| StageError::Format {
                path: path.to_path_buf(),
                message: format!("`{text}` is not a number"),
            })
        };
        let iteration = number(it)?.unwrap_or(0.0) as u64;
        if let (Some(lr), Some(loss)) = (number(lr)?, number(loss)?) {
            train.push(TrainSample {
                iteration,
                lr,
                loss,
            });
        }
        let Some(acc) = number(top1)? else { continue };
        let val_acc = match val {
            Some(v) => number(v)?,
            None => None,
        };
        evals.push(CurvePoint {
            iteration,
            test_err: 100.0 * (1.0 - acc),
            val_err: val_acc.map(|a| 100.0 * (1.0 - a)),
            energy_s1: number(energy)?,
        });
    }
    Ok((evals, train))
}

/// Writes `contents` to `path` through a temporary file and a rename: readers never see half a
/// file, and a killed report leaves the previous one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    sweep_stale_temporaries(path, &name);
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, contents)
        .at(&tmp)
        .and_then(|()| std::fs::rename(&tmp, path).at(path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether process `pid` may still be writing: `/proc/<pid>` exists, or there is no `/proc` to
/// tell.
fn writer_may_live(pid: &str) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || pid.parse::<u32>().is_err() || proc.join(pid).exists()
}

/// Removes `.<name>.<pid>.tmp` files that a killed writer left beside `path`: those whose
/// process is gone, and any older than a minute (a live writer — another process on a shared
/// run directory — renames its temporary file within milliseconds; a pid can be reused).
fn sweep_stale_temporaries(path: &Path, name: &str) {
    let Some(dir) = path.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    let minute = std::time::Duration::from_secs(60);
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > minute);
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
        else {
            continue;
        };
        if stale || !writer_may_live(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Records a finished run in its directory: `files` (its curves, its per-layer metrics) copied
/// under their own names first, the row last (its presence marks the run as finished).
pub fn write_run(dir: &Path, row: &ResultRow, files: &[&Path]) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    for file in files {
        let name = file
            .file_name()
            .ok_or_else(|| format_err(file, "not a file name"))?;
        let bytes = std::fs::read(file).at(file)?;
        write_atomic(&dir.join(name), &bytes)?;
    }
    let path = dir.join(ROW_FILE);
    let json = serde_json::to_vec_pretty(row).map_err(|source| StageError::Json {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, &json)
}

/// Reads a run recorded by [`write_run`].
pub fn read_run(dir: &Path) -> Result<RunRecord> {
    let row: ResultRow = read_json(&dir.join(ROW_FILE))?;
    let (curve, train) = read_curves(&dir.join(CURVES_CSV))?;
    Ok(RunRecord { row, curve, train })
}

/// Writes the whole report for `runs` into `out_dir`; returns the files written.
pub fn write(out_dir: &Path, title: &str, runs: &[RunRecord]) -> Result<Vec<String>> {
    std::fs::create_dir_all(out_dir).at(out_dir)?;
    let rows: Vec<ResultRow> = runs.iter().map(|r| r.row.clone()).collect();
    let summaries = summarize(&rows);
    write_atomic(&out_dir.join(RESULTS_CSV), &results_csv(&rows)?)?;
    write_atomic(&out_dir.join(SUMMARY_CSV), &summary_csv(&summaries)?)?;
    let labels = tables::paper_labels(&summaries);
    let plots = write_plots(&out_dir.join(PLOTS_DIR), runs, &summaries, &labels)?;
    let md = markdown(title, &rows, &summaries, &plots);
    write_atomic(&out_dir.join(RESULTS_MD), md.as_bytes())?;
    write_atomic(
        &out_dir.join(RESULTS_TEX),
        paper_latex(title, &summaries).as_bytes(),
    )?;
    let mut files = vec![
        RESULTS_CSV.to_string(),
        SUMMARY_CSV.to_string(),
        RESULTS_MD.to_string(),
        RESULTS_TEX.to_string(),
    ];
    files.extend(plots.iter().map(|p| format!("{PLOTS_DIR}/{p}")));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Temporary files a killed writer left are swept by the next write; a fresh one (a live
    /// writer's) is left alone.
    #[test]
    fn stale_temporaries_are_swept_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("results.csv");
        let stale = dir.path().join(".results.csv.4242.tmp");
        // A live writer: init (pid 1) lives as long as the machine.
        let fresh = dir.path().join(".results.csv.1.tmp");
        // Fresh, but its writer is gone (pids never reach 2^31 on Linux): a killed report.
        let orphan = dir.path().join(".results.csv.2147483647.tmp");
        let other = dir.path().join(".summary.csv.4242.tmp");
        for p in [&stale, &fresh, &orphan, &other] {
            std::fs::write(p, b"half").unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [&stale, &other] {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(hour_ago).unwrap();
        }
        write_atomic(&target, b"a,b\n").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"a,b\n");
        assert!(!stale.exists(), "a killed writer's temporary file is swept");
        #[cfg(target_os = "linux")]
        assert!(
            !orphan.exists(),
            "a fresh one whose writer is gone is swept too"
        );
        assert!(fresh.exists(), "a live writer's temporary file is kept");
        assert!(
            other.exists(),
            "only the written file's temporaries are touched"
        );
    }

    /// Every f64 survives JSON exactly (serde_json's `float_roundtrip`): a resumed run's curves
    /// and a re-read row equal the originals to the bit.
    #[test]
    fn floats_round_trip_through_json_exactly() {
        let mut rng = opt_core::Rng::seed(11);
        let mut values: Vec<f64> = (0..20_000)
            .map(|_| {
                let mantissa = rng.next_u64() as f64 / u64::MAX as f64;
                let exponent = (rng.next_u64() % 40) as i32 - 20;
                mantissa * 10f64.powi(exponent)
            })
            .collect();
        values.extend([
            0.1 + 0.2,
            1.0 / 3.0,
            2.0f64.sqrt(),
            f64::MIN_POSITIVE,
            5e-324,
        ]);
        let text = serde_json::to_string(&values).unwrap();
        let back: Vec<f64> = serde_json::from_str(&text).unwrap();
        let differ = values
            .iter()
            .zip(&back)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differ, 0, "{differ} of {} values changed", values.len());
    }
}
