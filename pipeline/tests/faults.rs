//! Fault injection (feature `failpoints`; `just test-faults`): a failure injected into one fused
//! op makes exactly that op fall back to its composed formulation, the run finishes with the
//! accuracy of the all-composed run, and `results.csv` says which ops fell back; a failure of a
//! gemm map route in the middle of training is a warning at its step and a count in the record.

#![cfg(feature = "failpoints")]

mod common;

use common::{opt, write};
use std::path::Path;

const RECIPE: &str = r#"
name = "faults"
[dataset]
source = "embedded"
train_limit = 2000
test_limit = 500
[model]
width = 8
[method]
name = "gs"
[schedule]
lr = 0.05
milestones = [100]
iterations = 120
batch_size = 64
eval_every = 60
[augment]
pad = 0
flip = false
[run]
seed = 3
device = "cpu"
checkpoint_every = 0
"#;

/// One run in its own cache (an injected run must never take a cached result), with
/// `failpoints` in the environment: (success, stderr, results.csv as header → value).
fn run(
    dir: &Path,
    name: &str,
    failpoints: &str,
    sets: &[&str],
) -> (bool, String, Vec<(String, String)>) {
    let recipe = write(dir, "faults.toml", RECIPE);
    let out = dir.join(name);
    let mut cmd = opt();
    cmd.args(["run", recipe.to_str().unwrap(), "--cache"])
        .arg(dir.join(format!("cache-{name}")))
        .arg("--out")
        .arg(&out)
        .env("FAILPOINTS", failpoints);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let mut columns = Vec::new();
    if let Ok(text) = std::fs::read_to_string(out.join("results.csv")) {
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header = r.headers().unwrap().clone();
        let row = r.records().next().unwrap().unwrap();
        columns = header
            .iter()
            .zip(row.iter())
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect();
    }
    (output.status.success(), stderr, columns)
}

fn column<'a>(columns: &'a [(String, String)], name: &str) -> &'a str {
    columns
        .iter()
        .find(|(h, _)| h == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {name} in {columns:?}"))
}

fn test_acc(columns: &[(String, String)]) -> f64 {
    column(columns, "test_acc").parse().unwrap()
}

#[test]
#[ignore = "slow tier (just test-faults)"]
fn a_failing_fused_op_falls_back_alone_and_the_record_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, stderr, composed) = run(tmp.path(), "composed", "", &["run.ops=composed"]);
    assert!(ok, "{stderr}");
    assert_eq!(column(&composed, "ops"), "composed");
    assert_eq!(column(&composed, "map_route"), "exact");
    let (ok, stderr, clean) = run(tmp.path(), "clean", "", &[]);
    assert!(ok, "{stderr}");
    assert_eq!(column(&clean, "ops"), "fused");
    assert!(!stderr.contains("self-check"), "{stderr}");
    for (failpoint, action, op, case) in [
        (
            "ops::conv2d",
            "return",
            "conv2d",
            "conv2d 3×3 SAME failed: injected failure",
        ),
        (
            "ops::batch_norm",
            "return",
            "bn",
            "batch norm failed: injected failure",
        ),
        (
            "ops::max_pool",
            "return",
            "max_pool",
            "max-pool 2×2 failed: injected failure",
        ),
        (
            "ops::acos",
            "return",
            "acos",
            "acos failed: injected failure",
        ),
        // A kernel that computes wrong values rather than failing.
        (
            "ops::batch_norm",
            "return(corrupt)",
            "bn",
            "batch norm differs from its reference",
        ),
    ] {
        let name = format!("{op}-{}", action.len());
        let (ok, stderr, row) = run(tmp.path(), &name, &format!("{failpoint}={action}"), &[]);
        assert!(ok, "{failpoint}={action}: {stderr}");
        assert!(stderr.contains(case), "{failpoint}={action}: {stderr}");
        assert!(
            stderr.contains(&format!("{op} takes its composed formulation for this run")),
            "{stderr}"
        );
        assert_eq!(column(&row, "ops"), format!("fused; composed: {op}"));
        let (got, want) = (test_acc(&row), test_acc(&composed));
        assert!(
            (got - want).abs() <= 0.02,
            "{failpoint}={action}: test accuracy {got}, the composed run's {want}"
        );
    }
}

#[test]
#[ignore = "slow tier (just test-faults)"]
fn fused_mode_refuses_a_failed_self_check() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, stderr, _) = run(
        tmp.path(),
        "fused",
        "ops::max_pool=return",
        &["run.ops=fused"],
    );
    assert!(!ok, "the run should have been refused");
    assert!(
        stderr.contains("max-pool 2×2: failed: injected failure")
            && stderr.contains("run.ops = \"fused\""),
        "{stderr}"
    );
}

#[test]
#[ignore = "slow tier (just test-faults)"]
fn a_map_route_failing_mid_run_warns_at_its_step_and_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    // The self-check and the first steps pass; one batch later fails, then the route recovers.
    let (ok, stderr, row) = run(
        tmp.path(),
        "map",
        "ops::map_route=30*off->1*return(breakdown)->off",
        &["run.map_route=gemm"],
    );
    assert!(ok, "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("map gs (cholesky-qr2) at step"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].to_lowercase().contains("warn"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("injected failure"), "{}", warnings[0]);
    let step: u64 = warnings[0]
        .split("at step ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!((1..=120).contains(&step), "{step}");
    let route = column(&row, "map_route");
    assert!(
        route.starts_with(
            "cholesky-qr2; 1 batch fell back to exact (first: gs (cholesky-qr2) at step "
        ) && route.contains(&format!("at step {step}: injected failure")),
        "{route}"
    );
    assert!(test_acc(&row) > 0.5, "{}", test_acc(&row));
}
