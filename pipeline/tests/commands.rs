//! The commands called in-process, as the binary calls them (no process spawned): what they
//! print on their writer, and what they leave in the cache and the run directory.

mod common;

use common::{write, TINY};
use opt_pipeline::commands::run::{cell_index, run, scheduler_index, RunEnd, RunFlags};
use opt_pipeline::commands::{self, RecipeArgs};
use opt_pipeline::grid;
use std::path::Path;

fn args(recipe: &Path, cache: &Path) -> RecipeArgs {
    RecipeArgs {
        cache: cache.to_path_buf(),
        ..RecipeArgs::new(recipe)
    }
}

fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap()
}

/// `show` prints the resolved recipe and the keys the plan computes, all still to compute.
#[test]
fn show_prints_the_resolved_recipe_and_the_plans_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let a = args(&recipe, &tmp.path().join("cache"));
    let mut out = Vec::new();
    commands::show::show(&a, &mut out).unwrap();
    let out = text(out);
    assert!(out.starts_with("# resolved recipe: "), "{out}");
    assert!(
        out.contains("name = \"tiny\"") && out.contains("iterations = 6"),
        "{out}"
    );
    let keys = grid::expand(&recipe, &[]).unwrap().base.keys().unwrap();
    for (stage, key) in keys.by_stage() {
        assert!(
            out.contains(&format!("{stage:<11} {key}  to compute")),
            "{stage}: {out}"
        );
    }
}

/// `plan` without estimates: one row, every stage to compute, nothing recorded.
#[test]
fn plan_lists_the_entry_and_what_it_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let a = args(&recipe, &tmp.path().join("cache"));
    let mut out = Vec::new();
    commands::plan::plan(&a, Some(tmp.path().join("run")), false, &mut out).unwrap();
    let out = text(out);
    assert!(out.contains("no grid axes"), "{out}");
    assert!(
        out.contains("to compute: 1 fetch, 1 preprocess, 1 train, 1 evaluate; 0 of 1 entries"),
        "{out}"
    );
    assert_eq!(out.matches("compute ").count(), 4, "{out}");
}

/// `run` in-process runs every stage, prints the result table and records the entry; `cache`
/// then counts one artifact per stage.
#[test]
fn run_records_the_entry_and_cache_counts_its_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let cache = tmp.path().join("cache");
    let flags = RunFlags {
        out: Some(tmp.path().join("run")),
        quiet: true,
        ..RunFlags::default()
    };
    let mut out = Vec::new();
    let end = run(&args(&recipe, &cache), &flags, &mut out).unwrap();
    assert_eq!(end, RunEnd::Finished);
    assert_eq!(end.exit_status(), 0);
    let out = text(out);
    assert!(out.contains("tiny"), "{out}");
    assert!(tmp.path().join("run").join("results.md").is_file());
    let mut listing = Vec::new();
    commands::cache::cache(&cache, &[], false, &mut listing).unwrap();
    let listing = text(listing);
    for stage in ["fetch", "preprocess", "train", "evaluate"] {
        assert!(
            listing.contains(&format!("| {stage} | 1 | 0 |")),
            "{stage}: {listing}"
        );
    }
}

#[test]
fn cell_indices_come_from_the_flag_or_the_scheduler() {
    assert_eq!(cell_index("2", 3).unwrap(), 2);
    let e = cell_index("3", 3).unwrap_err().to_string();
    assert!(e.contains("--cell = 3") && e.contains("3 entries"), "{e}");
    let e = cell_index("x", 3).unwrap_err().to_string();
    assert!(e.contains("expected an entry index"), "{e}");
    let env = |name: &str| match name {
        "SLURM_ARRAY_TASK_ID" => Some("4".to_string()),
        "JOB_COMPLETION_INDEX" => Some("5".to_string()),
        _ => None,
    };
    assert_eq!(
        scheduler_index(env),
        Some(("4".to_string(), "SLURM_ARRAY_TASK_ID"))
    );
    let k8s = |name: &str| (name == "JOB_COMPLETION_INDEX").then(|| "1".to_string());
    assert_eq!(
        scheduler_index(k8s),
        Some(("1".to_string(), "JOB_COMPLETION_INDEX"))
    );
}
