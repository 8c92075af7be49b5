//! `opt`: run OPT experiments from recipes.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use opt_core::orth::OrthMap;
use opt_pipeline::bench::{self, BenchConfig};
use opt_pipeline::plan::{self, Plan};
use opt_pipeline::progress::{init_logging, Bars, Terminal};
use opt_pipeline::recipe;
use opt_pipeline::runner::{self, RunContext, RunResult};
use opt_pipeline::store::ArtifactStore;
use opt_stages::device::DeviceChoice;
use opt_stages::model::MethodConfig;
use opt_stages::report;
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

#[derive(Parser)]
#[command(
    name = "opt",
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
    /// Artifact cache directory.
    #[arg(long, default_value = "outputs/cache")]
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
    },
    /// Print the fully resolved recipe and each stage's cache key and status.
    Show {
        #[command(flatten)]
        recipe: RecipeArgs,
    },
    /// Measure training throughput (images/s, ms/step) of CNN-6 on synthetic data, per method,
    /// and the time of each orthogonal map.
    Bench {
        /// Methods to measure, comma-separated, or `all`.
        #[arg(long, default_value = "baseline")]
        methods: String,
        #[arg(long, default_value_t = 64)]
        width: usize,
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

fn load_plan(args: &RecipeArgs) -> Result<Plan> {
    let loaded = recipe::load(&args.recipe, &args.set)?;
    Ok(plan::resolve(&loaded)?)
}

fn run(args: RecipeArgs, out: Option<PathBuf>, stop_after: Option<u64>, quiet: bool) -> Result<()> {
    let plan = load_plan(&args)?;
    set_threads(plan.threads);
    let run_dir = out
        .or_else(|| plan.out_dir.clone())
        .unwrap_or_else(|| runner::default_run_dir(&plan.name));
    let term = Terminal::new(quiet);
    init_logging(&term, Some(&run_dir.join("opt.log")))?;
    tracing::info!(
        "recipe {} ({}): {} on {}, {}, device {}",
        plan.name,
        plan.recipe_file.display(),
        plan.train.method.name(),
        plan.fetch.dataset.as_str(),
        match plan.train.schedule.length {
            opt_stages::train::Length::Iterations(n) => format!("{n} iterations"),
            opt_stages::train::Length::Epochs(e) => format!("{e} epochs"),
        },
        plan.train.device
    );
    let store = ArtifactStore::new(&args.cache);
    let bars = Bars::new(&term);
    let ctx = RunContext {
        store: &store,
        run_dir: run_dir.clone(),
        progress: &bars,
        stop_after,
    };
    match runner::run(&plan, &ctx)? {
        RunResult::Stopped { iteration } => {
            eprintln!("stopped after iteration {iteration}; run the same command again to resume");
        }
        RunResult::Finished { rows, trained } => {
            if !trained {
                eprintln!(
                    "nothing to train: every stage was cached (results from {})",
                    store.root().display()
                );
            }
            if plan.print_table {
                println!("{}", report::markdown(&rows));
            }
            eprintln!("results: {}", run_dir.join(report::RESULTS_MD).display());
        }
    }
    Ok(())
}

fn show(args: RecipeArgs) -> Result<()> {
    let plan = load_plan(&args)?;
    let keys = plan.keys()?;
    let mut recipe = plan.recipe.clone();
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
    println!("\n# stage cache keys ({})", args.cache.display());
    let store = ArtifactStore::new(&args.cache);
    for (stage, key) in [
        ("fetch", &keys.fetch),
        ("preprocess", &keys.preprocess),
        ("train", &keys.train),
        ("evaluate", &keys.evaluate),
    ] {
        let status = if store.lookup(stage, key).is_some() {
            "cached"
        } else if store.staging_dir(stage, key).exists() {
            "partial (will resume)"
        } else {
            "to compute"
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

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            recipe,
            out,
            stop_after,
        } => run(recipe, out, stop_after, cli.quiet),
        Command::Show { recipe } => show(recipe),
        Command::BenchData {
            images,
            input,
            batch,
            batches,
            pad,
            flip,
        } => bench_data(images, &input, batch, batches, pad, flip),
        Command::Bench {
            methods,
            width,
            input,
            classes,
            batch,
            warmup,
            steps,
            maps,
            device,
            threads,
        } => (|| -> Result<()> {
            set_threads(threads);
            let names: Vec<&str> = if methods == "all" {
                MethodConfig::NAMES.to_vec()
            } else {
                methods.split(',').map(str::trim).collect()
            };
            let shape = parse_shape(&input)?;
            println!("| method | device | batch | input | images/s | ms/step | vs baseline |");
            println!("|---|---|---:|---|---:|---:|---:|");
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
                    width,
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
                    "| {} | {} | {} | {} | {:.1} | {:.2} | {} |",
                    r.method, r.device, batch, input, r.images_per_sec, r.ms_per_step, ratio
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
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
