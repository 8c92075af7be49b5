//! The `orthopt` binary: exit codes, printed table, errors, and a real kill in the middle of training.

mod common;

use common::{opt, run_ok, write, TINY};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn run_prints_the_table_and_a_second_run_says_nothing_was_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let args = [
        "run",
        recipe.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let (stdout, _) = run_ok(&args);
    assert!(
        stdout.contains("| tiny | 7 | fashion-mnist | cnn6-w4 | baseline | 6 |"),
        "{stdout}"
    );
    for f in [
        "results.csv",
        "summary.csv",
        "results.md",
        "plots/test_error.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(out.join("cells/tiny/seed-7/curves.csv").is_file());
    assert!(out.join("cells/tiny/seed-7/row.json").is_file());
    let log = std::fs::read_to_string(out.join("opt.log")).unwrap();
    assert!(log.contains("train: 6 iterations"), "{log}");
    let (_, stderr) = run_ok(&args);
    assert!(stderr.contains("nothing to train"), "{stderr}");

    let (shown, _) = run_ok(&[
        "show",
        recipe.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(
        shown.contains("lr = 0.05") && shown.contains("[schedule]"),
        "{shown}"
    );
    for stage in ["fetch", "preprocess", "train", "evaluate"] {
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(stage) && l.ends_with("cached")),
            "{shown}"
        );
    }
}

#[test]
fn bad_recipes_fail_with_a_located_message() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "bad.toml", "[schedule]\nbatch_size = \"big\"\n");
    let out = opt()
        .args([
            "run",
            recipe.to_str().unwrap(),
            "--cache",
            tmp.path().join("c").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("schedule.batch_size"),
        "{err}"
    );
    let out = opt()
        .args(["run", "/nonexistent/recipe.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if path.is_file() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A process killed (SIGKILL) in the middle of training leaves no artifact; the next run
/// resumes from its last checkpoint and reaches the numbers of an uninterrupted run.
#[test]
#[ignore = "slow tier (just test-slow)"]
fn a_killed_run_resumes_and_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let text = TINY
        .replace("iterations = 6", "iterations = 400")
        .replace("checkpoint_every = 2", "checkpoint_every = 5");
    let recipe = write(tmp.path(), "long.toml", &text);
    let r = recipe.to_str().unwrap();
    let (ca, cb) = (tmp.path().join("a"), tmp.path().join("b"));
    let (oa, ob) = (tmp.path().join("oa"), tmp.path().join("ob"));

    let mut child = opt()
        .args([
            "run",
            r,
            "--cache",
            cb.to_str().unwrap(),
            "--out",
            ob.to_str().unwrap(),
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Find the train staging checkpoint once it appears.
    let t = Instant::now();
    let ckpt = loop {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        let found = std::fs::read_dir(cb.join("train")).ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("checkpoints/last.safetensors"))
                .find(|p| p.is_file())
        });
        if let Some(p) = found {
            break p;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(wait_for(&ckpt, Duration::from_secs(5)));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run should have been killed before finishing"
    );
    let finished: Vec<_> = std::fs::read_dir(cb.join("train"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").exists())
        .collect();
    assert!(
        finished.is_empty(),
        "a killed train stage must not look finished"
    );

    let (_, stderr) = run_ok(&[
        "run",
        r,
        "--cache",
        cb.to_str().unwrap(),
        "--out",
        ob.to_str().unwrap(),
    ]);
    assert!(
        stderr.contains("resuming from checkpoint at iteration"),
        "{stderr}"
    );
    run_ok(&[
        "run",
        r,
        "--cache",
        ca.to_str().unwrap(),
        "--out",
        oa.to_str().unwrap(),
        "-q",
    ]);
    let rows = |d: &Path| opt_pipeline::runner::collect_runs(d).unwrap();
    let (ra, rb) = (rows(&oa), rows(&ob));
    assert_eq!((ra.len(), rb.len()), (1, 1));
    assert_eq!(ra[0].row.test_acc, rb[0].row.test_acc);
    assert_eq!(ra[0].row.test_loss, rb[0].row.test_loss);
    assert_eq!(
        ra[0].row.provenance.train_key,
        rb[0].row.provenance.train_key
    );
}
