//! `orthopt`: run OPT experiments from recipes.

use anyhow::Result;
use clap::{Parser, Subcommand};
use opt_pipeline::commands::bench::BenchArgs;
use opt_pipeline::commands::gpu_check::GpuCheckArgs;
use opt_pipeline::commands::run::RunFlags;
use opt_pipeline::commands::{self, RecipeArgs, DEFAULT_CACHE};
use opt_stages::data::augment::AugmentConfig;
use opt_stages::training::train_config::ScheduleConfig;
use std::io::Write;
use std::path::PathBuf;
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

/// Runs candle's element-wise CPU ops on the calling thread (unless `CANDLE_NUM_THREADS` is set).
///
/// candle parallelises element-wise ops over 64 K elements on a second pool whose threads
/// spin-wait, beside rayon's (the convolution, BN and gemm): on a machine with few cores the two
/// pools spin against each other, and a training step's many small d×d element-wise ops (OGD,
/// S-OPT) waited on a descheduled worker. Measured at CNN-6 width 32 on 2 cores: OGD 519–564 →
/// 708–771 images/s, the baseline unchanged (its large tensors go through the fused ops).
fn run_elementwise_ops_inline() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Read by candle when its pool starts; no thread has started yet.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

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
    List {
        /// Print the book's reference page (docs/src/reference.md) instead.
        #[arg(long)]
        markdown: bool,
    },
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
    /// Check the GPU path: every op and gradient against the CPU, a short training of every
    /// method, the benchmark table; writes report.json and report.md (see `just gpu-check`).
    GpuCheck {
        #[command(flatten)]
        args: GpuCheckArgs,
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
        /// Images per batch.
        #[arg(long, default_value_t = ScheduleConfig::DEFAULT_BATCH_SIZE.get())]
        batch: usize,
        #[arg(long, default_value_t = 200)]
        batches: usize,
        /// Padding before the random crop.
        #[arg(long, default_value_t = AugmentConfig::OFFICIAL.pad)]
        pad: usize,
        #[arg(long, default_value_t = AugmentConfig::OFFICIAL.flip, action = clap::ArgAction::Set)]
        flip: bool,
    },
}

fn main() -> ExitCode {
    keep_freed_memory();
    run_elementwise_ops_inline();
    // Fault injection for the tests (`FAILPOINTS=ops::conv2d=return`); not in users' builds.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let stdout = &mut std::io::stdout().lock();
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
            let end = commands::run::run(&recipe, &flags, stdout);
            return finish(end.map(|end| ExitCode::from(end.exit_status())));
        }
        Command::Show { recipe } => commands::show::show(&recipe, stdout),
        Command::Plan {
            recipe,
            out,
            no_estimate,
        } => commands::plan::plan(&recipe, out, !no_estimate, stdout),
        Command::List { markdown } => {
            let text = if markdown {
                opt_pipeline::catalog::reference_page()
            } else {
                opt_pipeline::catalog::describe()
            };
            text.and_then(|text| Ok(write!(stdout, "{text}")?))
        }
        Command::Cache { cache, keep, clean } => {
            commands::cache::cache(&cache, &keep, clean, stdout)
        }
        Command::Report { dirs, out, title } => commands::report::report(dirs, out, title, stdout),
        Command::Export { path, out, cache } => opt_pipeline::export::export(&path, &cache, &out)
            .and_then(|shapes| {
                Ok(writeln!(
                    stdout,
                    "wrote {} ({} tensors)",
                    out.display(),
                    shapes.len()
                )?)
            }),
        Command::BenchData {
            images,
            input,
            batch,
            batches,
            pad,
            flip,
        } => commands::bench::bench_data(images, &input, batch, batches, pad, flip, stdout),
        Command::Bench { args } => commands::bench::bench(args, stdout),
        Command::GpuCheck { args } => {
            // 0 when every check passed, 1 when one failed (the report says which), 2 on an
            // error.
            return match commands::gpu_check::gpu_check(&args, stdout) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {}", opt_pipeline::progress::error_text(&e));
                    ExitCode::from(2)
                }
            };
        }
    };
    finish(result.map(|()| ExitCode::SUCCESS))
}

fn finish(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        // The reader went away (`orthopt list | head`): what it wanted was written.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", opt_pipeline::progress::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
