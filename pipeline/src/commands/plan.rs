//! `orthopt plan`: a recipe's grid entries, what each would re-use or compute, and how long
//! its training takes on this machine.

use super::{rerun_command, run_dir_of, RecipeArgs};
use crate::estimate::{self, Estimator};
use crate::grid::{self, Grid, GridEntry};
use crate::plan::Keys;
use crate::runner;
use crate::store::{ArtifactState, ArtifactStore};
use anyhow::Result;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Prints the grid's axes, one table row per entry (each stage's state, whether the run
/// directory records it, its training time when `estimate`), what is left to compute, and the
/// commands that run it.
pub fn plan(
    args: &RecipeArgs,
    run_out: Option<PathBuf>,
    estimate: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let grid = grid::expand(&args.recipe, &args.set)?;
    let store = ArtifactStore::new(&args.cache);
    let run_dir = run_dir_of(run_out.clone(), &grid, &args.set)?;
    write_header(&grid, args, &store, &run_dir, out)?;
    let mut tally = Tally::new(&store, estimate);
    for e in &grid.entries {
        let row = tally.row(e, &run_dir)?;
        writeln!(out, "{row}")?;
    }
    tally.write_totals(grid.entries.len(), out)?;
    let command = rerun_command(args, run_out.as_ref());
    writeln!(
        out,
        "one process: {command}\ncluster: sbatch --array=0-{} (each job: {command} --cell)",
        grid.entries.len().saturating_sub(1)
    )?;
    Ok(())
}

/// The grid's axes and size, where it reads and records, and the table's header.
fn write_header(
    grid: &Grid,
    args: &RecipeArgs,
    store: &ArtifactStore,
    run_dir: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let n = grid.entries.len();
    writeln!(out, "# {} ({})", grid.name, args.recipe.display())?;
    if grid.axes.is_empty() {
        writeln!(out, "no grid axes")?;
    }
    for a in &grid.axes {
        let values: Vec<String> = a
            .values
            .iter()
            .map(|v| grid::render_axis_value(&a.key, v))
            .collect();
        writeln!(out, "axis {} = [{}]", a.key, values.join(", "))?;
    }
    writeln!(
        out,
        "seeds = {:?}; {} cells × {} seeds = {n} entries",
        grid.seeds,
        n / grid.seeds.len().max(1),
        grid.seeds.len()
    )?;
    writeln!(
        out,
        "cache {}; run directory {}\n",
        store.root().display(),
        run_dir.display()
    )?;
    writeln!(
        out,
        "| # | cell | seed | fetch | preprocess | train | evaluate | recorded | training time |"
    )?;
    writeln!(out, "|---:|---|---:|---|---|---|---|---|---:|")?;
    Ok(())
}

/// What the rows so far add up to.
struct Tally<'a> {
    store: &'a ArtifactStore,
    estimator: Estimator<'a>,
    /// Whether to estimate training times (they may time two steps per distinct network).
    estimate: bool,
    /// Entries the run directory records.
    recorded: usize,
    total_seconds: f64,
    /// Entries that train but whose time is unknown (their data not decoded yet).
    unknown_time: usize,
    /// Where the step times came from.
    sources: BTreeSet<&'static str>,
    /// Where an earlier entry of this plan computes the same artifact, this one re-uses it.
    first_user: HashMap<String, usize>,
    /// Artifacts to compute per stage.
    counts: [usize; 4],
}

impl<'a> Tally<'a> {
    fn new(store: &'a ArtifactStore, estimate: bool) -> Self {
        Self {
            store,
            estimator: Estimator::new(store),
            estimate,
            recorded: 0,
            total_seconds: 0.0,
            unknown_time: 0,
            sources: BTreeSet::new(),
            first_user: HashMap::new(),
            counts: [0; 4],
        }
    }

    /// Entry `e`'s row.
    fn row(&mut self, e: &GridEntry, run_dir: &Path) -> Result<String> {
        let keys = e.plan.keys()?;
        let cols = self.stage_columns(e, &keys);
        let done = runner::finished(run_dir, e, &keys, self.store).is_some();
        self.recorded += usize::from(done);
        let trains = !done && self.store.state("train", &keys.train) != ArtifactState::Cached;
        let time = if !trains {
            "–".to_string()
        } else if !self.estimate {
            "?".to_string()
        } else {
            self.training_time(e, &keys)
        };
        Ok(format!(
            "| {} | {} | {} | {} | {} | {time} |",
            e.index,
            e.cell,
            e.seed,
            cols.join(" | "),
            if done { "yes" } else { "no" }
        ))
    }

    /// Each stage's state: cached, re-used from an earlier entry, resumed or computed.
    fn stage_columns(&mut self, e: &GridEntry, keys: &Keys) -> Vec<String> {
        let mut cols = Vec::new();
        for (s, (stage, key)) in keys.by_stage().into_iter().enumerate() {
            let state = self.store.state(stage, key);
            let text = match (self.first_user.get(key), state) {
                (_, ArtifactState::Cached) => "cached".to_string(),
                (Some(&i), _) => format!("re-use #{i}"),
                (None, _) => {
                    self.first_user.insert(key.to_string(), e.index);
                    self.counts[s] += 1;
                    match state {
                        ArtifactState::Partial => "resume".to_string(),
                        _ => "compute".to_string(),
                    }
                }
            };
            cols.push(format!("{text} {}", &key[..8]));
        }
        cols
    }

    /// How long entry `e` trains, from a recorded run or steps timed now; `?` when unknown.
    fn training_time(&mut self, e: &GridEntry, keys: &Keys) -> String {
        match (
            self.estimator.iterations(&e.plan, keys),
            self.estimator.step(&e.plan, keys),
        ) {
            (Some(n), Some(step)) => {
                let seconds = n as f64 * step.ms / 1e3;
                self.total_seconds += seconds;
                self.sources.insert(match step.source {
                    estimate::Source::Recorded(_) => "a recorded run",
                    estimate::Source::Measured => "steps timed now",
                });
                format!("{} ({:.0} ms/step)", estimate::duration(seconds), step.ms)
            }
            _ => {
                self.unknown_time += 1;
                "?".to_string()
            }
        }
    }

    /// What is left to compute, and the training time of all entries.
    fn write_totals(&self, n: usize, out: &mut dyn Write) -> Result<()> {
        let (counts, recorded) = (self.counts, self.recorded);
        writeln!(
            out,
            "\nto compute: {} fetch, {} preprocess, {} train, {} evaluate; {recorded} of {n} \
             entries recorded in the run directory",
            counts[0], counts[1], counts[2], counts[3]
        )?;
        if self.total_seconds > 0.0 {
            let sources: Vec<&str> = self.sources.iter().copied().collect();
            writeln!(
                out,
                "training time on this machine, one process: ≈ {} (from {}; evaluations add to \
                 it){}",
                estimate::duration(self.total_seconds),
                sources.join(" and "),
                if self.unknown_time > 0 {
                    format!(
                        "; {} entries unknown until their data is decoded",
                        self.unknown_time
                    )
                } else {
                    String::new()
                }
            )?;
        }
        Ok(())
    }
}
