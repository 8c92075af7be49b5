#![allow(dead_code)]
//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// A tiny recipe that runs all five stages in about a second.
pub const TINY: &str = r#"
name = "tiny"
[dataset]
source = "embedded"
train_limit = 256
test_limit = 128
[model]
width = 4
[schedule]
lr = 0.05
milestones = [4]
iterations = 6
batch_size = 32
eval_every = 3
[run]
seed = 7
device = "cpu"
checkpoint_every = 2
eval_batch = 64
"#;

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The `orthopt` binary with logs on and the caller's overrides out of the way.
pub fn opt() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_orthopt"));
    c.env("RUST_LOG", "info")
        .env_remove("OPT_SCHEDULE__LR")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

/// Runs `orthopt` and returns (stdout, stderr), failing the test with stderr if it fails.
pub fn run_ok(args: &[&str]) -> (String, String) {
    let out = opt().args(args).output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "opt {args:?} failed:\n{se}");
    (so, se)
}

/// Finished artifacts (those with a manifest) of `stage` in `cache`.
pub fn count_artifacts(cache: &Path, stage: &str) -> usize {
    std::fs::read_dir(cache.join(stage))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("manifest.json").is_file())
                .count()
        })
        .unwrap_or(0)
}
