//! `orthopt report`: finished runs gathered into one report.

use crate::runner;
use anyhow::Result;
use opt_stages::report::{self, RunRecord};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Gathers the finished runs under `dirs` (default `outputs/runs`), one row per recipe, cell
/// and seed, into a report in `out`, and prints the paper-style table.
pub fn report(
    dirs: Vec<PathBuf>,
    out: Option<PathBuf>,
    title: Option<String>,
    stdout: &mut dyn Write,
) -> Result<()> {
    let dirs = if dirs.is_empty() {
        vec![Path::new("outputs").join("runs")]
    } else {
        dirs
    };
    let mut runs: Vec<RunRecord> = Vec::new();
    for d in &dirs {
        let found = runner::collect_runs(d)?;
        if found.is_empty() {
            eprintln!("warning: no finished runs under {}", d.display());
        }
        // One row per (recipe, cell, seed), even when directories overlap or repeat.
        for run in found {
            let id = |r: &RunRecord| (r.row.cell_id(), r.row.seed);
            match runs.iter().find(|r| id(r) == id(&run)) {
                None => runs.push(run),
                Some(kept)
                    if kept.row.provenance.evaluate_key != run.row.provenance.evaluate_key =>
                {
                    eprintln!(
                        "warning: {} / {} seed {} appears twice with different results; \
                         keeping the first (from an earlier directory)",
                        run.row.recipe, run.row.cell, run.row.seed
                    )
                }
                Some(_) => {}
            }
        }
    }
    if runs.is_empty() {
        anyhow::bail!(
            "no finished runs under {}; `orthopt run` records each run there",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let out = out.unwrap_or_else(|| match &dirs[..] {
        [one] if one.join(runner::CELLS_DIR).is_dir() => one.clone(),
        _ => Path::new("outputs").join("report"),
    });
    let title = title.unwrap_or_else(|| {
        dirs.iter()
            .map(|d| {
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| d.display().to_string())
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    let files = report::write(&out, &title, &runs)?;
    let cells = report::summarize(&runs.iter().map(|r| r.row.clone()).collect::<Vec<_>>());
    writeln!(stdout, "{}", report::paper_table(&cells))?;
    eprintln!(
        "{} runs in {} cells → {}: {}",
        runs.len(),
        cells.len(),
        out.display(),
        files.join(", ")
    );
    Ok(())
}
