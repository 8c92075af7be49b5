//! `orthopt run`: a recipe's entries through the stages, recorded in the run directory, and
//! the grid's report.

use super::{rerun_command, run_dir_of, set_threads, RecipeArgs};
use crate::grid::{self, Grid, GridEntry};
use crate::progress::{init_logging, Bars, Terminal};
use crate::runner::{self, RunContext, RunResult};
use crate::signals;
use crate::store::ArtifactStore;
use anyhow::{Context, Result};
use opt_stages::report::{self, RunRecord};
use opt_stages::training::interrupt::Interrupt;
use opt_stages::training::train_config::Length;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How `orthopt run` is asked to behave, beyond the recipe.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    /// The run directory (`--out`).
    pub out: Option<PathBuf>,
    /// Checkpoint and stop training after this many iterations.
    pub stop_after: Option<u64>,
    /// Only this grid entry (`--cell I`; `slurm` reads the scheduler's index).
    pub cell: Option<String>,
    /// Train and evaluate again what is recorded.
    pub force: bool,
    /// Only warnings and errors on stderr.
    pub quiet: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every entry asked for is recorded.
    Finished,
    /// `--stop-after` stopped training (checkpointed; the same command resumes).
    Stopped,
    /// A signal stopped the run.
    Interrupted { signal: i32 },
}

impl RunEnd {
    /// The process's exit status: 0, or 128 + the signal's number.
    pub fn exit_status(self) -> u8 {
        match self {
            RunEnd::Finished | RunEnd::Stopped => 0,
            RunEnd::Interrupted { signal } => signals::exit_status(signal),
        }
    }
}

/// Runs the recipe's entries (or only `flags.cell`'s) through the stages, skipping those the
/// run directory records, then writes the grid's report and prints its tables on `out`.
pub fn run(args: &RecipeArgs, flags: &RunFlags, out: &mut dyn Write) -> Result<RunEnd> {
    let grid = grid::expand(&args.recipe, &args.set)?;
    set_threads(grid.base.threads);
    let run_dir = run_dir_of(flags.out.clone(), &grid, &args.set)?;
    let only = flags
        .cell
        .as_deref()
        .map(|c| cell_index(c, grid.entries.len()))
        .transpose()?;
    let log = match only {
        Some(i) => run_dir.join("logs").join(format!("cell-{i}.log")),
        None => run_dir.join("opt.log"),
    };
    let term = Terminal::new(flags.quiet);
    init_logging(&term, Some(&log))?;
    tracing::info!("{}", describe(&grid));
    if flags.out.is_none()
        && grid.base.out_dir.is_none()
        && run_dir != runner::default_run_dir(&grid.name)
    {
        eprintln!(
            "results of this variant (--set / OPT_* overrides) go to {}",
            run_dir.display()
        );
    }
    let store = ArtifactStore::new(&args.cache);
    let bars = Bars::new(&term);
    let interrupt = Interrupt::default();
    signals::install(&interrupt)?;
    let ctx = RunContext {
        store: &store,
        run_dir: run_dir.clone(),
        progress: &bars,
        stop_after: flags.stop_after,
        git_commit: runner::git_commit(),
        command: rerun_command(args, flags.out.as_ref()),
        interrupt,
    };
    let mut trained_any = false;
    // This grid's entries, each once: exactly what the report covers.
    let mut runs: Vec<RunRecord> = Vec::new();
    for entry in &grid.entries {
        if only.is_some_and(|i| i != entry.index) {
            continue;
        }
        match run_entry(entry, &grid, &ctx, flags.force)? {
            Entry::Recorded { record, trained } => {
                trained_any |= trained;
                runs.push(*record);
            }
            Entry::Suspended(end) => return Ok(end),
        }
    }
    if !trained_any {
        eprintln!(
            "nothing to train: every stage was cached (artifacts in {})",
            store.root().display()
        );
    }
    if let Some(i) = only {
        eprintln!(
            "entry {i} recorded in {}; when every entry has run: orthopt report {}",
            run_dir.join(runner::CELLS_DIR).display(),
            run_dir.display()
        );
        return Ok(RunEnd::Finished);
    }
    write_report(&grid, &run_dir, &runs, out)?;
    Ok(RunEnd::Finished)
}

/// The log's first line: the recipe, its method, data, length and device, and the grid's size.
fn describe(grid: &Grid) -> String {
    let plan = &grid.base;
    format!(
        "recipe {} ({}): {} on {}, {}, device {}{}",
        plan.name,
        plan.recipe_file.display(),
        plan.train.method.name(),
        plan.fetch.dataset.as_str(),
        match plan.train.schedule.length {
            Length::Iterations(n) => format!("{n} iterations"),
            Length::Epochs(e) => format!("{e} epochs"),
        },
        plan.train.device,
        if grid.is_grid() {
            format!(
                "; grid of {} cells × {} seeds = {} runs",
                grid.entries.len() / grid.seeds.len(),
                grid.seeds.len(),
                grid.entries.len()
            )
        } else {
            String::new()
        }
    )
}

/// What became of one entry.
enum Entry {
    /// Recorded (now, or by an earlier run); `trained` when this run trained it.
    Recorded {
        record: Box<RunRecord>,
        trained: bool,
    },
    /// The run stops here.
    Suspended(RunEnd),
}

/// One entry: skipped when recorded (unless `force`, which removes its train and evaluate
/// artifacts first), else run through the stages and read back for the report.
fn run_entry(entry: &GridEntry, grid: &Grid, ctx: &RunContext<'_>, force: bool) -> Result<Entry> {
    let what = format!(
        "[{}/{}] {} seed {}",
        entry.index + 1,
        grid.entries.len(),
        entry.cell,
        entry.seed
    );
    let keys = entry.plan.keys()?;
    if force {
        for (stage, key) in [("train", &keys.train), ("evaluate", &keys.evaluate)] {
            if ctx.store.remove(stage, key)? {
                tracing::info!(
                    "--force: removed the cached {stage} artifact {}",
                    &key[..12]
                );
            }
        }
    } else if let Some(record) = runner::finished(&ctx.run_dir, entry, &keys, ctx.store) {
        tracing::info!("{what}: finished earlier, skipped (`--force` runs it again)");
        return Ok(Entry::Recorded {
            record: Box::new(record),
            trained: false,
        });
    }
    if grid.is_grid() {
        tracing::info!("{what}");
    }
    match runner::run_with_keys(entry, &keys, ctx)? {
        RunResult::Stopped { iteration } => {
            eprintln!(
                "stopped {what} after iteration {iteration}; run the same command again to \
                 resume"
            );
            Ok(Entry::Suspended(RunEnd::Stopped))
        }
        RunResult::Interrupted { iteration, signal } => {
            let at = iteration
                .map(|i| format!(" at iteration {i} (checkpoint written)"))
                .unwrap_or_default();
            eprintln!(
                "{}: interrupted {what}{at}; run the same command to resume",
                signals::name(signal)
            );
            Ok(Entry::Suspended(RunEnd::Interrupted { signal }))
        }
        RunResult::Finished { row, trained } => {
            let curves = runner::entry_dir(&ctx.run_dir, entry).join(report::CURVES_CSV);
            let (curve, train) = report::read_curves(&curves)?;
            let record = Box::new(RunRecord {
                row: *row,
                curve,
                train,
            });
            Ok(Entry::Recorded { record, trained })
        }
    }
}

/// The grid's report in the run directory, and its tables on `out` when the recipe asks.
fn write_report(
    grid: &Grid,
    run_dir: &Path,
    runs: &[RunRecord],
    out: &mut dyn Write,
) -> Result<()> {
    report::write(run_dir, &grid.name, runs)
        .with_context(|| format!("writing the report into {}", run_dir.display()))?;
    tracing::info!("report: {}", run_dir.join(report::RESULTS_MD).display());
    if grid.base.print_table {
        let rows: Vec<_> = runs.iter().map(|r| r.row.clone()).collect();
        writeln!(out, "{}", report::runs_table(&rows))?;
        if grid.is_grid() {
            writeln!(out, "{}", report::paper_table(&report::summarize(&rows)))?;
        }
    }
    eprintln!("results: {}", run_dir.join(report::RESULTS_MD).display());
    Ok(())
}

/// `--cell I`, or `--cell` alone: the array index a cluster scheduler gives the process.
/// The index a scheduler gives an array task, and the variable it came from: Slurm's
/// `SLURM_ARRAY_TASK_ID`, else a Kubernetes indexed Job's `JOB_COMPLETION_INDEX`. Both set
/// (a Slurm job inside a pod, say) would be ambiguous only if they differed; Slurm wins, since
/// the array is what `sbatch --array` sized from `orthopt plan`.
pub fn scheduler_index(var: impl Fn(&str) -> Option<String>) -> Option<(String, &'static str)> {
    ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
        .into_iter()
        .find_map(|name| var(name).map(|v| (v, name)))
}

/// The entry `--cell` names, checked against the grid's `count` entries.
pub fn cell_index(cell: &str, count: usize) -> Result<usize> {
    let (text, origin) = if cell == "slurm" {
        scheduler_index(|name| std::env::var(name).ok()).ok_or_else(|| {
            anyhow::anyhow!(
                "--cell without a value reads SLURM_ARRAY_TASK_ID (Slurm job arrays) or \
                 JOB_COMPLETION_INDEX (Kubernetes indexed Jobs), and neither is set; give the \
                 entry's index (0..{count}, see `orthopt plan`)"
            )
        })?
    } else {
        (cell.to_string(), "--cell")
    };
    let i: usize = text
        .trim()
        .parse()
        .with_context(|| format!("{origin} = {text:?}: expected an entry index"))?;
    if i >= count {
        anyhow::bail!(
            "{origin} = {i}: the grid has {count} entries (0..{}); `orthopt plan` lists them",
            count.saturating_sub(1)
        );
    }
    Ok(i)
}
