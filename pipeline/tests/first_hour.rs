//! A newcomer's path (issue "The first hour"): the command's name, `just` covering every
//! command, `orthopt list`, time estimates in `orthopt plan`, `orthopt cache`, recipe paths.

mod common;

use common::{count_artifacts, run_ok, write, TINY};
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The subcommands `orthopt --help` lists.
fn subcommands() -> Vec<String> {
    let (help, _) = run_ok(&["--help"]);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_command_is_orthopt_and_just_covers_every_subcommand() {
    let (help, _) = run_ok(&["--help"]);
    assert!(help.contains("Usage: orthopt"), "{help}");
    let justfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../justfile")).unwrap();
    let commands = subcommands();
    assert!(commands.len() >= 8, "{commands:?}");
    for c in &commands {
        let covered = justfile
            .lines()
            .any(|l| l.trim_start().starts_with("{{orthopt}}") && l.contains(&format!(" {c} ")))
            || justfile.contains(&format!("{{{{orthopt}}}} {c} \"$@\""))
            || justfile.contains(&format!("{{{{orthopt}}}} {c}\n"))
            // A task that runs a script of the same name (which runs the command itself).
            || justfile.contains(&format!("scripts/{c}.sh \"$@\""));
        assert!(covered, "`orthopt {c}` has no just task");
    }
    // Every task's doc line is a sentence: a capital first letter and a full stop.
    let docs: Vec<&str> = justfile
        .lines()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| {
            let task = w[1];
            task.starts_with(|c: char| c.is_ascii_lowercase())
                && task.ends_with(':')
                && !task.contains(":=")
        })
        .filter_map(|w| w[0].strip_prefix("# "))
        .collect();
    assert!(docs.len() >= commands.len(), "{docs:?}");
    for d in docs {
        assert!(
            d.starts_with(|c: char| c.is_uppercase()) && d.ends_with('.'),
            "not a sentence: {d:?}"
        );
    }
}

#[test]
fn list_shows_methods_architectures_datasets_and_defaults() {
    let (text, _) = run_ok(&["list"]);
    for needle in [
        "| `gs` | OPT (GS)",
        "`cnn6`",
        "`cifar-100`",
        "[schedule]",
        "75000",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

#[test]
fn plan_estimates_training_time_measured_then_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let cache = tmp.path().join("c");
    let out = tmp.path().join("o");
    let args = ["plan", s(&recipe), "--cache", s(&cache), "--out", s(&out)];
    let (plan, _) = run_ok(&args);
    assert!(
        plan.contains("ms/step)") && plan.contains("from steps timed now"),
        "{plan}"
    );
    run_ok(&[
        "run",
        s(&recipe),
        "--cache",
        s(&cache),
        "--out",
        s(&out),
        "-q",
    ]);
    // Recorded now: nothing left to train, no time to estimate.
    let (plan, _) = run_ok(&args);
    assert!(!plan.contains("training time on this machine"), "{plan}");
    // A longer variant of the same network re-uses the recorded step time.
    let longer = write(
        tmp.path(),
        "longer.toml",
        &TINY.replace("iterations = 6", "iterations = 6000"),
    );
    let (plan, _) = run_ok(&["plan", s(&longer), "--cache", s(&cache), "--out", s(&out)]);
    assert!(plan.contains("from a recorded run"), "{plan}");
    let (plan, _) = run_ok(&["plan", s(&longer), "--cache", s(&cache), "--no-estimate"]);
    assert!(!plan.contains("training time on this machine"), "{plan}");
}

#[test]
fn cache_reports_sizes_and_cleans_what_no_recipe_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let (kept_dir, other_dir) = (tmp.path().join("kept"), tmp.path().join("other"));
    std::fs::create_dir_all(&kept_dir).unwrap();
    std::fs::create_dir_all(&other_dir).unwrap();
    let kept = write(&kept_dir, "tiny.toml", TINY);
    let other = write(
        &other_dir,
        "other.toml",
        &TINY.replace("lr = 0.05", "lr = 0.02"),
    );
    let cache = tmp.path().join("c");
    for r in [&kept, &other] {
        run_ok(&[
            "run",
            s(r),
            "--cache",
            s(&cache),
            "--out",
            s(&tmp.path().join("o")),
            "-q",
        ]);
    }
    assert_eq!(count_artifacts(&cache, "train"), 2);
    let (table, _) = run_ok(&["cache", "--cache", s(&cache)]);
    assert!(
        table.contains("| train | 2 | 0 |") && table.contains("| fetch | 1 | 0 |"),
        "{table}"
    );
    // The other recipe's train and evaluate artifacts are unused by `kept/`; fetch and
    // preprocess are shared.
    let (listing, _) = run_ok(&["cache", "--cache", s(&cache), "--keep", s(&kept_dir)]);
    assert!(listing.contains("2 artifacts"), "{listing}");
    run_ok(&[
        "cache",
        "--cache",
        s(&cache),
        "--keep",
        s(&kept_dir),
        "--clean",
    ]);
    for (stage, n) in [
        ("fetch", 1),
        ("preprocess", 1),
        ("train", 1),
        ("evaluate", 1),
    ] {
        assert_eq!(count_artifacts(&cache, stage), n, "{stage}");
    }
    // What is left is the kept recipe's: running it trains nothing.
    let (_, again) = run_ok(&[
        "run",
        s(&kept),
        "--cache",
        s(&cache),
        "--out",
        s(&tmp.path().join("k")),
    ]);
    assert!(again.contains("nothing to train"), "{again}");
}

/// Results name a recipe inside the repository by its path from the repository root, whatever
/// the working directory; commands printed for it use the command's real name.
#[test]
fn recipes_are_recorded_relative_to_the_repository() {
    let inside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/quickstart.toml");
    let recorded = opt_pipeline::runner::recipe_path(&inside);
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git {
        assert_eq!(recorded, "recipes/quickstart.toml");
    } else {
        assert_eq!(Path::new(&recorded), inside.canonicalize().unwrap());
    }
    let (plan, _) = run_ok(&["plan", s(&inside), "--no-estimate"]);
    assert!(
        plan.contains(&format!("one process: orthopt run {recorded}")),
        "{plan}"
    );
}

/// `orthopt list | head`: a reader that goes away is no error (no panic, no message, exit 0).
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::process::{Command, Stdio};
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orthopt"))
            .arg("list")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // closed before the command writes
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{stderr}"
        );
    }
}
