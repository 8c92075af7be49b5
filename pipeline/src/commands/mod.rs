//! The commands of `orthopt`, callable without the binary: each takes its parsed arguments
//! and a writer for what it prints on stdout (warnings go to stderr), so `main.rs` keeps only
//! argument parsing and dispatch, and tests run commands in-process.

pub mod bench;
pub mod cache;
pub mod gpu_check;
pub mod plan;
pub mod report;
pub mod run;
pub mod show;

use crate::grid::Grid;
use crate::{recipe, runner};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// The artifact cache when `--cache` is not given.
pub const DEFAULT_CACHE: &str = "outputs/cache";

/// A recipe and how to read it: the arguments of `run`, `show` and `plan`.
#[derive(Args, Debug, Clone)]
pub struct RecipeArgs {
    /// Recipe file (.toml, .yaml or .yml).
    pub recipe: PathBuf,
    /// Override a recipe value, e.g. `--set schedule.lr=0.05` (repeatable; wins over the file
    /// and over OPT_* environment variables such as OPT_SCHEDULE__LR=0.05).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Artifact cache directory (shared safely by concurrent processes).
    #[arg(long, default_value = DEFAULT_CACHE)]
    pub cache: PathBuf,
}

impl RecipeArgs {
    /// The recipe at `recipe`, without overrides, in the default cache.
    pub fn new(recipe: impl Into<PathBuf>) -> Self {
        Self {
            recipe: recipe.into(),
            set: Vec::new(),
            cache: PathBuf::from(DEFAULT_CACHE),
        }
    }
}

/// Sets the number of CPU threads (0 = all cores) before any pool starts.
pub fn set_threads(n: usize) {
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
pub fn rerun_command(args: &RecipeArgs, out: Option<&PathBuf>) -> String {
    let mut words = vec![
        crate::BIN.to_string(),
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

/// `--out`, else the recipe's `report.out_dir`, else `outputs/runs/<name>`; a variant of the
/// recipe (`--set` or `OPT_*` overrides) gets `outputs/runs/<name>-set-<hash>` so it never
/// replaces the plain recipe's results.
pub fn run_dir_of(out: Option<PathBuf>, grid: &Grid, overrides: &[String]) -> Result<PathBuf> {
    if let Some(dir) = out.or_else(|| grid.base.out_dir.clone()) {
        return Ok(dir);
    }
    let name = match recipe::variant_hash(overrides)? {
        Some(hash) => format!("{}-set-{hash}", grid.name),
        None => grid.name.clone(),
    };
    Ok(runner::default_run_dir(&name))
}

/// `--input CxHxW`.
pub fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
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
