//! Report: the run's result table (`results.csv`, `results.md`) and curves (`curves.csv`),
//! written into the run's output directory.

use crate::error::IoContext;
use crate::{Result, StageError};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

pub const RESULTS_CSV: &str = "results.csv";
pub const RESULTS_MD: &str = "results.md";
pub const CURVES_CSV: &str = "curves.csv";

/// One row per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub recipe: String,
    pub dataset: String,
    pub model: String,
    pub method: String,
    pub seed: u64,
    pub iterations: u64,
    /// Final top-1 test accuracy, a fraction.
    pub test_acc: f64,
    /// Final top-1 test error, percent.
    pub test_err: f64,
    pub best_test_acc: f64,
    pub best_iteration: u64,
    pub test_top5: f64,
    pub test_loss: f64,
    /// Mean over the seven OPT-able layers of the s = 1 hyperspherical energy (final weights).
    pub energy_s1: f64,
    /// Largest `‖RRᵀ − I‖_F` over the OPT layers' rotations; empty for plain training.
    pub orth_error: Option<f64>,
    pub train_seconds: f64,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    pub device: String,
    /// Cache key of the train artifact: traces the row to its weights.
    pub train_key: String,
}

fn csv_err(path: &Path) -> impl Fn(csv::Error) -> StageError + '_ {
    move |source| StageError::Csv {
        path: path.to_path_buf(),
        source,
    }
}

pub fn write_csv(path: &Path, rows: &[ResultRow]) -> Result<()> {
    let mut w = csv::Writer::from_path(path).map_err(csv_err(path))?;
    for r in rows {
        w.serialize(r).map_err(csv_err(path))?;
    }
    w.flush().at(path)
}

pub fn read_csv(path: &Path) -> Result<Vec<ResultRow>> {
    let mut r = csv::Reader::from_path(path).map_err(csv_err(path))?;
    r.deserialize()
        .map(|row| row.map_err(csv_err(path)))
        .collect()
}

/// The markdown table (also what `opt run` prints).
pub fn markdown(rows: &[ResultRow]) -> String {
    let mut s = String::new();
    s.push_str("| recipe | dataset | model | method | seed | iterations | test acc | test err % | best acc (iter) | top-5 | test loss | energy s=1 | orth err | train s | images/s | device |\n");
    s.push_str("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.4} | {:.2} | {:.4} ({}) | {:.4} | {:.4} | {:.4} | {} | {:.1} | {:.0} | {} |",
            r.recipe,
            r.dataset,
            r.model,
            r.method,
            r.seed,
            r.iterations,
            r.test_acc,
            r.test_err,
            r.best_test_acc,
            r.best_iteration,
            r.test_top5,
            r.test_loss,
            r.energy_s1,
            r.orth_error.map(|e| format!("{e:.1e}")).unwrap_or_else(|| "–".into()),
            r.train_seconds,
            r.images_per_sec,
            r.device
        );
    }
    s
}

/// Writes `results.csv`, `results.md` and copies the curves into `run_dir`. Each file is written
/// to a temporary name and renamed, so a reader never sees half a table.
pub fn run(run_dir: &Path, rows: &[ResultRow], curves_csv: &Path) -> Result<()> {
    std::fs::create_dir_all(run_dir).at(run_dir)?;
    let tmp = run_dir.join(format!(".{RESULTS_CSV}.tmp"));
    write_csv(&tmp, rows)?;
    std::fs::rename(&tmp, run_dir.join(RESULTS_CSV)).at(run_dir)?;
    let md = format!("# Results\n\n{}", markdown(rows));
    let tmp = run_dir.join(format!(".{RESULTS_MD}.tmp"));
    std::fs::write(&tmp, md).at(&tmp)?;
    std::fs::rename(&tmp, run_dir.join(RESULTS_MD)).at(run_dir)?;
    let tmp = run_dir.join(format!(".{CURVES_CSV}.tmp"));
    std::fs::copy(curves_csv, &tmp).at(curves_csv)?;
    std::fs::rename(&tmp, run_dir.join(CURVES_CSV)).at(run_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ResultRow {
        ResultRow {
            recipe: "quickstart".into(),
            dataset: "fashion-mnist".into(),
            model: "cnn6-w32".into(),
            method: "baseline".into(),
            seed: 1,
            iterations: 300,
            test_acc: 0.8512,
            test_err: 14.88,
            best_test_acc: 0.86,
            best_iteration: 250,
            test_top5: 0.99,
            test_loss: 0.41,
            energy_s1: 0.7123,
            orth_error: Some(2.5e-6),
            train_seconds: 61.5,
            images_per_sec: 624.0,
            ms_per_step: 102.5,
            device: "cpu".into(),
            train_key: "abc".into(),
        }
    }

    #[test]
    fn csv_roundtrips_and_markdown_shows_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.csv");
        write_csv(&p, &[row()]).unwrap();
        assert_eq!(read_csv(&p).unwrap(), vec![row()]);
        let header = std::fs::read_to_string(&p).unwrap();
        assert!(header.starts_with(
            "recipe,dataset,model,method,seed,iterations,test_acc,test_err,best_test_acc"
        ));
        let md = markdown(&[row()]);
        assert!(md.contains("| quickstart | fashion-mnist | cnn6-w32 | baseline | 1 | 300 | 0.8512 | 14.88 | 0.8600 (250) | 0.9900 | 0.4100 | 0.7123 | 2.5e-6 |"), "{md}");
    }
}
