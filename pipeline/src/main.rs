//! `orthopt`: run OPT experiments from recipes.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use opt_core::orth::OrthMap;
use opt_pipeline::bench::{self, BenchConfig};
use opt_pipeline::cache::human;
use opt_pipeline::estimate::{self, Estimator};
use opt_pipeline::grid;
use opt_pipeline::progress::{init_logging, Bars, Terminal};
use opt_pipeline::recipe;
use opt_pipeline::runner::{self, RunContext, RunResult};
use opt_pipeline::signals;
use opt_pipeline::store::{ArtifactState, ArtifactStore};
use opt_stages::device::DeviceChoice;
use opt_stages::interrupt::Interrupt;
use opt_stages::model::{Arch, MethodConfig, ModelConfig};
use opt_stages::report::{self, RunRecord};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// Training allocates and frees tensors of tens of MB every step; glibc returns them to the OS
// and takes page faults to get them back (a third of CPU time in profiles). mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (index 15 in mimalloc v2 and v3's `mi_option_e`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped: by default mimalloc purges it after 10 ms, and a training step
/// (seconds) then pays to fault every page back in.
fn keep_freed_memory() {
    // SAFETY: sets a process-wide allocator option; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

const DEFAULT_CACHE: &str = "outputs/cache";

#[derive(Parser)]
#[command(
    name = opt_pipeline::BIN,
    version,
    about = "Orthogonal Over-Parameterized Training experiments from recipes"
)]
struct Cli {
    /// Only warnings and errors on stderr; no progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct RecipeArgs {
    /// Recipe file (.toml, .yaml or .yml).
    recipe: PathBuf,
    /// Override a recipe value, e.g. `--set schedule.lr=0.05` (repeatable; wins over the file
    /// and over OPT_* environment variables such as OPT_SCHEDULE__LR=0.05).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Artifact cache directory (shared safely by concurrent processes).
    #[arg(long, default_value = DEFAULT_CACHE)]
    cache: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run a recipe: fetch → preprocess → train → evaluate → report, re-using cached stages.
    Run {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Run directory for results and logs (default: report.out_dir or outputs/runs/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Checkpoint and stop training after this many iterations; the next run resumes.
        #[arg(long, value_name = "N")]
        stop_after: Option<u64>,
        /// Run only entry I of the grid (see `orthopt plan`), as one job of a cluster array; without
        /// a value, I is read from SLURM_ARRAY_TASK_ID (Slurm) or JOB_COMPLETION_INDEX (Kubernetes
        /// indexed Job). Gather the results with `orthopt report`.
        #[arg(long, value_name = "I", num_args = 0..=1, default_missing_value = "slurm")]
        cell: Option<String>,
        /// Train and evaluate again even where the cache and the run directory hold a result
        /// (fetch and preprocess are still re-used).
        #[arg(long)]
        force: bool,
    },
    /// Print the fully resolved recipe and each stage's cache key and status.
    Show {
        #[command(flatten)]
        recipe: RecipeArgs,
    },
    /// List a recipe's grid entries (cell × seed), what each would re-use or compute, and how
    /// long its training takes on this machine.
    Plan {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Run directory to check for recorded entries (default as for `orthopt run`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Skip the time estimate (it may time two training steps per distinct network).
        #[arg(long)]
        no_estimate: bool,
    },
    /// List the methods, architectures and datasets with their options and defaults, and every
    /// recipe section's defaults.
    List,
    /// Show the artifact cache (size per stage); with --keep, the artifacts no recipe under the
    /// given files or directories refers to, which --clean removes.
    Cache {
        /// Artifact cache directory.
        #[arg(long, default_value = DEFAULT_CACHE)]
        cache: PathBuf,
        /// Recipes (files or directories searched for .toml/.yaml) whose artifacts to keep.
        #[arg(long, value_name = "PATH", num_args = 1..)]
        keep: Vec<PathBuf>,
        /// Remove the artifacts no --keep recipe refers to.
        #[arg(long, requires = "keep")]
        clean: bool,
    },
    /// Gather finished runs into results.csv, summary.csv, results.md and SVG plots.
    Report {
        /// Run directories (or directories holding them); default outputs/runs.
        dirs: Vec<PathBuf>,
        /// Where to write the report (default: the run directory when one is given, else
        /// outputs/report).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Title of results.md (default: the directory names).
        #[arg(long)]
        title: Option<String>,
    },
    /// Export a run's trained model as a plain CNN-6 for PyTorch (safetensors, effective
    /// weights W = R·W0 per layer; `bench/load_export.py` loads it).
    Export {
        /// A run's directory (`<run>/cells/<cell>/seed-<s>`) or a train artifact
        /// (`<cache>/train/<key>`).
        path: PathBuf,
        /// The safetensors file to write.
        #[arg(long)]
        out: PathBuf,
        /// Artifact cache the run was trained in.
        #[arg(long, default_value = DEFAULT_CACHE)]
        cache: PathBuf,
    },
    /// Measure training throughput (images/s, ms/step) of a network on synthetic data, per
    /// method, and the time of each orthogonal map.
    Bench {
        #[command(flatten)]
        args: BenchArgs,
    },
    /// Measure the data path: a decoded dataset loaded from its cache artifact, then per batch
    /// sampling, pad + crop + flip, normalisation and batch assembly (CPU), in images/s.
    BenchData {
        /// Training images in the synthetic decoded dataset (CIFAR: 50 000).
        #[arg(long, default_value_t = 50_000)]
        images: usize,
        /// Input shape CxHxW.
        #[arg(long, default_value = "3x32x32")]
        input: String,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 200)]
        batches: usize,
        #[arg(long, default_value_t = 4)]
        pad: usize,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        flip: bool,
    },
}

fn set_threads(n: usize) {
    if n > 0 {
        // Read by rayon and candle's gemm when their pools start; nothing has started yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Quotes a command-line word for a POSIX shell when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command that runs this recipe again (without `--cell`).
fn rerun_command(args: &RecipeArgs, out: Option<&PathBuf>) -> String {
    let mut words = vec![
        opt_pipeline::BIN.to_string(),
        "run".into(),
        runner::recipe_path(&args.recipe),
    ];
    for s in &args.set {
        words.push("--set".into());
        words.push(s.clone());
    }
    if args.cache != Path::new(DEFAULT_CACHE) {
        words.push("--cache".into());
        words.push(args.cache.display().to_string());
    }
    if let Some(out) = out {
        words.push("--out".into());
        words.push(out.display().to_string());
    }
    words
        .iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--cell I`, or `--cell` alone: the array index a cluster scheduler gives the process.
/// The index a scheduler gives an array task, and the variable it came from: Slurm's
/// `SLURM_ARRAY_TASK_ID`, else a Kubernetes indexed Job's `JOB_COMPLETION_INDEX`. Both set
/// (a Slurm job inside a pod, say) would be ambiguous only if they differed; Slurm wins, since
/// the array is what `sbatch --array` sized from `orthopt plan`.
fn scheduler_index(var: impl Fn(&str) -> Option<String>) -> Option<(String, &'static str)> {
    ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
        .into_iter()
        .find_map(|name| var(name).map(|v| (v, name)))
}

/// The network `orthopt bench --arch/--depth/--width` asks for.
fn bench_model(arch: &str, depth: usize, width: Option<usize>) -> Result<ModelConfig> {
    let arch = Arch::ALL
        .into_iter()
        .find(|a| a.as_str() == arch)
        .with_context(|| {
            let known: Vec<&str> = Arch::ALL.iter().map(|a| a.as_str()).collect();
            format!(
                "--arch: unknown architecture {arch:?}; known: {}",
                known.join(", ")
            )
        })?;
    let mut model = ModelConfig::cnn6(width.unwrap_or(arch.default_width()));
    model.arch = arch;
    if arch == Arch::Resnet {
        model.depth = Some(depth);
        model.opt_shortcuts = Some(false);
        model.opt_classifier = Some(false);
    }
    Ok(model)
}

fn cell_index(cell: &str, count: usize) -> Result<usize> {
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

/// How `orthopt run` is asked to behave, beyond the recipe.
struct RunFlags {
    out: Option<PathBuf>,
    stop_after: Option<u64>,
    cell: Option<String>,
    force: bool,
    quiet: bool,
}

fn run(args: RecipeArgs, flags: RunFlags) -> Result<ExitCode> {
    let RunFlags {
        out,
        stop_after,
        cell,
        force,
        quiet,
    } = flags;
    let grid = grid::expand(&args.recipe, &args.set)?;
    let plan = &grid.base;
    set_threads(plan.threads);
    let run_dir = run_dir_of(out.clone(), &grid, &args.set)?;
    let only = cell
        .map(|c| cell_index(&c, grid.entries.len()))
        .transpose()?;
    let log = match only {
        Some(i) => run_dir.join("logs").join(format!("cell-{i}.log")),
        None => run_dir.join("opt.log"),
    };
    let term = Terminal::new(quiet);
    init_logging(&term, Some(&log))?;
    tracing::info!(
        "recipe {} ({}): {} on {}, {}, device {}{}",
        plan.name,
        plan.recipe_file.display(),
        plan.train.method.name(),
        plan.fetch.dataset.as_str(),
        match plan.train.schedule.length {
            opt_stages::train_config::Length::Iterations(n) => format!("{n} iterations"),
            opt_stages::train_config::Length::Epochs(e) => format!("{e} epochs"),
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
    );
    if out.is_none()
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
        stop_after,
        git_commit: runner::git_commit(),
        command: rerun_command(&args, out.as_ref()),
        interrupt,
    };
    let total = grid.entries.len();
    let mut trained_any = false;
    // This grid's entries, each once: exactly what the report covers.
    let mut runs: Vec<RunRecord> = Vec::new();
    for entry in &grid.entries {
        if only.is_some_and(|i| i != entry.index) {
            continue;
        }
        let what = format!(
            "[{}/{total}] {} seed {}",
            entry.index + 1,
            entry.cell,
            entry.seed
        );
        let keys = entry.plan.keys()?;
        if force {
            for (stage, key) in [("train", &keys.train), ("evaluate", &keys.evaluate)] {
                if store.remove(stage, key)? {
                    tracing::info!(
                        "--force: removed the cached {stage} artifact {}",
                        &key[..12]
                    );
                }
            }
        } else if let Some(record) = runner::finished(&run_dir, entry, &keys, &store) {
            tracing::info!("{what}: finished earlier, skipped (`--force` runs it again)");
            runs.push(record);
            continue;
        }
        if grid.is_grid() {
            tracing::info!("{what}");
        }
        match runner::run_with_keys(entry, &keys, &ctx)? {
            RunResult::Stopped { iteration } => {
                eprintln!(
                    "stopped {what} after iteration {iteration}; run the same command again to \
                     resume"
                );
                return Ok(ExitCode::SUCCESS);
            }
            RunResult::Interrupted { iteration, signal } => {
                let at = iteration
                    .map(|i| format!(" at iteration {i} (checkpoint written)"))
                    .unwrap_or_default();
                eprintln!(
                    "{}: interrupted {what}{at}; run the same command to resume",
                    signals::name(signal)
                );
                return Ok(ExitCode::from(signals::exit_status(signal)));
            }
            RunResult::Finished { row, trained } => {
                trained_any |= trained;
                let curves = runner::entry_dir(&run_dir, entry).join(report::CURVES_CSV);
                let (curve, train) = report::read_curves(&curves)?;
                runs.push(RunRecord {
                    row: *row,
                    curve,
                    train,
                });
            }
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
        return Ok(ExitCode::SUCCESS);
    }
    report::write(&run_dir, &grid.name, &runs)
        .with_context(|| format!("writing the report into {}", run_dir.display()))?;
    tracing::info!("report: {}", run_dir.join(report::RESULTS_MD).display());
    if plan.print_table {
        let rows: Vec<_> = runs.iter().map(|r| r.row.clone()).collect();
        println!("{}", report::runs_table(&rows));
        if grid.is_grid() {
            println!("{}", report::paper_table(&report::summarize(&rows)));
        }
    }
    eprintln!("results: {}", run_dir.join(report::RESULTS_MD).display());
    Ok(ExitCode::SUCCESS)
}

/// `--out`, else the recipe's `report.out_dir`, else `outputs/runs/<name>`; a variant of the
/// recipe (`--set` or `OPT_*` overrides) gets `outputs/runs/<name>-set-<hash>` so it never
/// replaces the plain recipe's results.
fn run_dir_of(out: Option<PathBuf>, grid: &grid::Grid, overrides: &[String]) -> Result<PathBuf> {
    if let Some(dir) = out.or_else(|| grid.base.out_dir.clone()) {
        return Ok(dir);
    }
    let name = match recipe::variant_hash(overrides)? {
        Some(hash) => format!("{}-set-{hash}", grid.name),
        None => grid.name.clone(),
    };
    Ok(runner::default_run_dir(&name))
}

fn plan_cmd(args: RecipeArgs, out: Option<PathBuf>, estimate: bool) -> Result<()> {
    let grid = grid::expand(&args.recipe, &args.set)?;
    let store = ArtifactStore::new(&args.cache);
    let run_dir = run_dir_of(out.clone(), &grid, &args.set)?;
    let n = grid.entries.len();
    println!("# {} ({})", grid.name, args.recipe.display());
    if grid.axes.is_empty() {
        println!("no grid axes");
    }
    for a in &grid.axes {
        let values: Vec<String> = a
            .values
            .iter()
            .map(|v| grid::render_axis_value(&a.key, v))
            .collect();
        println!("axis {} = [{}]", a.key, values.join(", "));
    }
    println!(
        "seeds = {:?}; {} cells × {} seeds = {n} entries",
        grid.seeds,
        n / grid.seeds.len().max(1),
        grid.seeds.len()
    );
    println!(
        "cache {}; run directory {}\n",
        store.root().display(),
        run_dir.display()
    );
    println!(
        "| # | cell | seed | fetch | preprocess | train | evaluate | recorded | training time |"
    );
    println!("|---:|---|---:|---|---|---|---|---|---:|");
    let mut recorded = 0;
    let mut estimator = Estimator::new(&store);
    let mut total_seconds = 0.0;
    let mut unknown_time = 0;
    let mut sources = std::collections::BTreeSet::new();
    // Where an earlier entry of this plan computes the same artifact, this one re-uses it.
    let mut first_user: std::collections::HashMap<String, usize> = Default::default();
    let mut counts = [0usize; 4];
    for e in &grid.entries {
        let keys = e.plan.keys()?;
        let mut cols = Vec::new();
        for (s, (stage, key)) in keys.by_stage().into_iter().enumerate() {
            let state = store.state(stage, key);
            let text = match (first_user.get(key), state) {
                (_, ArtifactState::Cached) => "cached".to_string(),
                (Some(&i), _) => format!("re-use #{i}"),
                (None, _) => {
                    first_user.insert(key.to_string(), e.index);
                    counts[s] += 1;
                    match state {
                        ArtifactState::Partial => "resume".to_string(),
                        _ => "compute".to_string(),
                    }
                }
            };
            cols.push(format!("{text} {}", &key[..8]));
        }
        let done = runner::finished(&run_dir, e, &keys, &store).is_some();
        recorded += usize::from(done);
        let trains = !done && store.state("train", &keys.train) != ArtifactState::Cached;
        let time = if !trains {
            "–".to_string()
        } else if !estimate {
            "?".to_string()
        } else {
            match (
                estimator.iterations(&e.plan, &keys),
                estimator.step(&e.plan, &keys),
            ) {
                (Some(n), Some(step)) => {
                    let seconds = n as f64 * step.ms / 1e3;
                    total_seconds += seconds;
                    sources.insert(match step.source {
                        estimate::Source::Recorded(_) => "a recorded run",
                        estimate::Source::Measured => "steps timed now",
                    });
                    format!("{} ({:.0} ms/step)", estimate::duration(seconds), step.ms)
                }
                _ => {
                    unknown_time += 1;
                    "?".to_string()
                }
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {time} |",
            e.index,
            e.cell,
            e.seed,
            cols.join(" | "),
            if done { "yes" } else { "no" }
        );
    }
    println!(
        "\nto compute: {} fetch, {} preprocess, {} train, {} evaluate; {recorded} of {n} entries \
         recorded in the run directory",
        counts[0], counts[1], counts[2], counts[3]
    );
    if total_seconds > 0.0 {
        let sources: Vec<&str> = sources.into_iter().collect();
        println!(
            "training time on this machine, one process: ≈ {} (from {}; evaluations add to \
             it){}",
            estimate::duration(total_seconds),
            sources.join(" and "),
            if unknown_time > 0 {
                format!("; {unknown_time} entries unknown until their data is decoded")
            } else {
                String::new()
            }
        );
    }
    let command = rerun_command(&args, out.as_ref());
    println!(
        "one process: {command}\ncluster: sbatch --array=0-{} (each job: {command} --cell)",
        n.saturating_sub(1)
    );
    Ok(())
}

fn report_cmd(dirs: Vec<PathBuf>, out: Option<PathBuf>, title: Option<String>) -> Result<()> {
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
    println!("{}", report::paper_table(&cells));
    eprintln!(
        "{} runs in {} cells → {}: {}",
        runs.len(),
        cells.len(),
        out.display(),
        files.join(", ")
    );
    Ok(())
}

fn cache_cmd(cache: PathBuf, keep: Vec<PathBuf>, clean: bool) -> Result<()> {
    let store = ArtifactStore::new(&cache);
    let all = opt_pipeline::cache::artifacts(&store);
    println!("# cache {}\n", cache.display());
    println!("| stage | artifacts | partial | size |");
    println!("|---|---:|---:|---:|");
    for stage in opt_pipeline::cache::STAGES {
        let of: Vec<_> = all.iter().filter(|a| a.stage == stage).collect();
        println!(
            "| {stage} | {} | {} | {} |",
            of.iter().filter(|a| !a.partial).count(),
            of.iter().filter(|a| a.partial).count(),
            human(of.iter().map(|a| a.bytes).sum())
        );
    }
    println!(
        "| all | {} | | {} |",
        all.len(),
        human(all.iter().map(|a| a.bytes).sum())
    );
    if keep.is_empty() {
        return Ok(());
    }
    let refs = opt_pipeline::cache::references(&keep);
    for (file, error) in &refs.unresolved {
        eprintln!("warning: {}: not resolvable ({error})", file.display());
    }
    let unused = opt_pipeline::cache::unused(&all, &refs);
    println!(
        "\n{} artifacts ({}) are used by none of the {} recipes under {}:",
        unused.len(),
        human(unused.iter().map(|a| a.bytes).sum()),
        refs.recipes,
        keep.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for a in &unused {
        let partial = if a.partial { " (partial)" } else { "" };
        println!(
            "  {:<10} {}  {}{partial}",
            a.stage,
            &a.key[..16.min(a.key.len())],
            human(a.bytes)
        );
    }
    if !clean {
        if !unused.is_empty() {
            println!("`--clean` removes them.");
        }
        return Ok(());
    }
    if !refs.unresolved.is_empty() {
        anyhow::bail!(
            "not cleaning: {} recipe(s) could not be resolved, so their artifacts cannot be told \
             apart (see the warnings); fix or exclude them",
            refs.unresolved.len()
        );
    }
    let freed = opt_pipeline::cache::remove(&store, &unused)?;
    println!("removed {} artifacts, {}", unused.len(), human(freed));
    Ok(())
}

fn show(args: RecipeArgs) -> Result<()> {
    let grid = grid::expand(&args.recipe, &args.set)?;
    let plan = &grid.base;
    let keys = plan.keys()?;
    // The recipe as written (with its grid), resolved; the stage configurations are the base's.
    let mut recipe = recipe::load(&args.recipe, &args.set)?.recipe;
    recipe.name = Some(plan.name.clone());
    println!("# resolved recipe: {}", plan.recipe_file.display());
    println!(
        "{}",
        toml::to_string(&recipe).context("rendering the recipe as TOML")?
    );
    println!("# resolved stage configurations");
    let resolved = serde_json::json!({
        "fetch": plan.fetch,
        "preprocess": plan.preprocess,
        "train": plan.train,
        "evaluate": plan.evaluate,
    });
    println!("{}", serde_json::to_string_pretty(&resolved)?);
    if grid.is_grid() {
        println!(
            "\n# grid: {} entries; the configurations and keys here are the base recipe's (the \
             first cell's where the base is valid only through its cells); `orthopt plan` lists \
             every entry's",
            grid.entries.len()
        );
    }
    println!("\n# stage cache keys ({})", args.cache.display());
    let store = ArtifactStore::new(&args.cache);
    for (stage, key) in keys.by_stage() {
        let status = match store.state(stage, key) {
            ArtifactState::Cached => "cached",
            ArtifactState::Partial => "partial (will resume)",
            ArtifactState::Missing => "to compute",
        };
        println!("{stage:<11} {key}  {status}");
    }
    Ok(())
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let parts: Vec<usize> = s
        .split('x')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--input {s:?}: expected CxHxW, e.g. 3x32x32"))?;
    match parts[..] {
        [c, h, w] => Ok((c, h, w)),
        _ => anyhow::bail!("--input {s:?}: expected CxHxW, e.g. 3x32x32"),
    }
}

fn bench_data(
    images: usize,
    input: &str,
    batch: usize,
    batches: usize,
    pad: usize,
    flip: bool,
) -> Result<()> {
    let cfg = bench::DataBenchConfig {
        images,
        input: parse_shape(input)?,
        batch,
        batches: batches.max(1),
        augment: opt_stages::augment::AugmentConfig { pad, flip },
    };
    let r = bench::data(&cfg)?;
    println!("| data path | images | batch | input | load ms | images/s | ms/batch |");
    println!("|---|---:|---:|---|---:|---:|---:|");
    println!(
        "| cache → pad {pad} + crop{} → batch (CPU, 1 thread) | {images} | {batch} | {input} | {:.0} | {:.0} | {:.2} |",
        if flip { " + flip" } else { "" },
        r.load_ms,
        r.images_per_sec,
        r.ms_per_batch
    );
    println!(
        "\nFor scale: CNN-6 training on an H100 consumes about 25 000 images/s; the data path \
         must stay above that (it runs on one core here)."
    );
    Ok(())
}

/// `orthopt bench`'s options.
#[derive(Args)]
struct BenchArgs {
    /// Methods to measure, comma-separated, or `all`.
    #[arg(long, default_value = "baseline")]
    methods: String,
    /// Architecture: cnn6, cnn9 or resnet.
    #[arg(long, default_value = "cnn6")]
    arch: String,
    /// ResNet depth (6n + 2).
    #[arg(long, default_value_t = 20)]
    depth: usize,
    /// First-stage width (default: the architecture's, 64 for the CNNs, 16 for ResNet).
    #[arg(long)]
    width: Option<usize>,
    /// Input shape CxHxW.
    #[arg(long, default_value = "3x32x32")]
    input: String,
    #[arg(long, default_value_t = 100)]
    classes: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Also time each orthogonal map at these sizes (comma-separated, e.g. 576,1024).
    #[arg(long, value_name = "D,...")]
    maps: Option<String>,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Training throughput per method, then (with `maps`) each orthogonal map's time.
fn bench_cmd(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        methods,
        arch,
        depth,
        width,
        input,
        classes,
        batch,
        warmup,
        steps,
        maps,
        device,
        threads,
    } = args;
    set_threads(threads);
    let names: Vec<&str> = if methods == "all" {
        MethodConfig::NAMES.to_vec()
    } else {
        methods.split(',').map(str::trim).collect()
    };
    let shape = parse_shape(&input)?;
    let model = bench_model(&arch, depth, width)?;
    println!("| model | method | device | batch | input | images/s | ms/step | vs baseline |");
    println!("|---|---|---|---:|---|---:|---:|---:|");
    let mut baseline: Option<f64> = None;
    for name in names {
        let method = MethodConfig::from_name(name).with_context(|| {
            format!(
                "--methods: unknown method {name:?}; known: {}",
                MethodConfig::NAMES.join(", ")
            )
        })?;
        let cfg = BenchConfig {
            method,
            model: model.clone(),
            input: shape,
            classes,
            batch,
            warmup,
            steps,
            device,
        };
        let r = bench::run(&cfg)?;
        if name == "baseline" {
            baseline = Some(r.images_per_sec);
        }
        let ratio = baseline
            .map(|b| format!("{:.2}×", r.images_per_sec / b))
            .unwrap_or_else(|| "–".into());
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {} |",
            model.describe(),
            r.method,
            r.device,
            batch,
            input,
            r.images_per_sec,
            r.ms_per_step,
            ratio
        );
    }
    if let Some(sizes) = maps {
        println!("\n| map | d | forward ms | forward+backward ms | ‖QQᵀ − I‖_F (f32) |");
        println!("|---|---:|---:|---:|---:|");
        for d in sizes.split(',') {
            let d: usize = d
                .trim()
                .parse()
                .with_context(|| format!("--maps: {d:?} is not a size"))?;
            for map in [
                OrthMap::Cayley,
                OrthMap::GramSchmidt,
                OrthMap::Householder,
                OrthMap::Lowdin,
            ] {
                let t = bench::time_map(map, d, 3, device)?;
                println!(
                    "| {} | {} | {:.1} | {:.1} | {:.1e} |",
                    t.map, t.d, t.forward_ms, t.forward_backward_ms, t.orth_error
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            recipe,
            out,
            stop_after,
            cell,
            force,
        } => {
            let flags = RunFlags {
                out,
                stop_after,
                cell,
                force,
                quiet: cli.quiet,
            };
            return finish(run(recipe, flags));
        }
        Command::Show { recipe } => show(recipe),
        Command::Plan {
            recipe,
            out,
            no_estimate,
        } => plan_cmd(recipe, out, !no_estimate),
        Command::List => opt_pipeline::catalog::describe().map(|text| print!("{text}")),
        Command::Cache { cache, keep, clean } => cache_cmd(cache, keep, clean),
        Command::Report { dirs, out, title } => report_cmd(dirs, out, title),
        Command::Export { path, out, cache } => opt_pipeline::export::export(&path, &cache, &out)
            .map(|shapes| {
                println!("wrote {} ({} tensors)", out.display(), shapes.len());
            }),
        Command::BenchData {
            images,
            input,
            batch,
            batches,
            pad,
            flip,
        } => bench_data(images, &input, batch, batches, pad, flip),
        Command::Bench { args } => bench_cmd(args),
    };
    finish(result.map(|()| ExitCode::SUCCESS))
}

fn finish(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
