//! What a reliability battery found (issue "Nothing silently wrong"): results kept apart and
//! never skipped on stale evidence, interrupts that checkpoint, a truncated checkpoint that
//! does not block, errors that name the recipe key, no litter, no colour codes in logs.

mod common;

use common::{count_artifacts, opt, run_ok, write, TINY};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rows(dir: &Path) -> Vec<opt_stages::report::ResultRow> {
    opt_pipeline::runner::collect_runs(dir)
        .unwrap()
        .into_iter()
        .map(|r| r.row)
        .collect()
}

fn only_subdir(dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// A recorded row does not stand in for a deleted artifact, and `--force` retrains.
#[test]
fn a_deleted_train_artifact_is_retrained_and_force_retrains() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let args = ["run", s(&recipe), "--cache", s(&cache), "--out", s(&out)];
    let (_, first) = run_ok(&args);
    // Colour codes only on a terminal: captured stderr is plain text.
    assert!(!first.contains('\u{1b}'), "{first:?}");
    std::fs::remove_dir_all(only_subdir(&cache.join("train"))).unwrap();
    let (_, second) = run_ok(&args);
    assert!(
        !second.contains("finished earlier") && second.contains("train: 6 iterations"),
        "{second}"
    );
    assert_eq!(count_artifacts(&cache, "train"), 1);
    let (_, cached) = run_ok(&args);
    assert!(cached.contains("finished earlier, skipped"), "{cached}");
    let mut forced = args.to_vec();
    forced.push("--force");
    let (_, third) = run_ok(&forced);
    assert!(
        third.contains("--force: removed the cached train artifact")
            && third.contains("train: 6 iterations"),
        "{third}"
    );
    // Retraining reproduces the numbers.
    let all = rows(&out);
    assert_eq!(all.len(), 1);
}

/// `--set` variants get their own default run directory; the plain recipe's row survives.
#[test]
fn set_variants_never_replace_the_recipes_recorded_row() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let run = |extra: &[&str]| {
        let out = opt()
            .current_dir(tmp.path())
            .args(["run", s(&recipe), "-q"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    run(&[]);
    let plain = tmp.path().join("outputs/runs/tiny");
    assert_eq!(rows(&plain)[0].iterations, 6);
    let said = run(&["--set", "schedule.iterations=4"]);
    assert_eq!(rows(&plain)[0].iterations, 6, "the plain row is untouched");
    let variants: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("outputs/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &plain)
        .collect();
    assert_eq!(variants.len(), 1);
    let name = variants[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("tiny-set-") && said.contains(&name),
        "{said}"
    );
    assert_eq!(rows(&variants[0])[0].iterations, 4);
    // The same overrides find the same directory again.
    let again = run(&["--set", "schedule.iterations=4"]);
    assert!(again.contains(&name), "{again}");
}

fn spawn_run(recipe: &Path, cache: &Path, out: &Path) -> std::process::Child {
    opt()
        .args(["run", s(recipe), "--cache", s(cache), "--out", s(out), "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the train stage of the run in `cache` is under way (its staging directory holds
/// the config it writes first), then a little longer so some steps have run.
fn wait_for_training(cache: &Path) {
    let t = Instant::now();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "training never started"
        );
        let started = std::fs::read_dir(cache.join("train"))
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| e.path().join("config.json").is_file());
        if started {
            std::thread::sleep(Duration::from_millis(700));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The iteration an "interrupted … at iteration N" message names.
fn interrupted_at(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("interrupted"))
        .unwrap_or_else(|| panic!("no interruption in: {stderr}"));
    let at = line
        .split("at iteration ")
        .nth(1)
        .unwrap_or_else(|| panic!("no iteration in: {line}"));
    at.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The run recorded in `out` has exactly the numbers of the same recipe run without
/// interruption in a fresh cache.
fn assert_matches_an_uninterrupted_run(tmp: &Path, recipe: &Path, out: &Path) {
    let (cache, reference) = (tmp.join("reference-cache"), tmp.join("reference-run"));
    run_ok(&[
        "run",
        s(recipe),
        "--cache",
        s(&cache),
        "--out",
        s(&reference),
        "-q",
    ]);
    let (a, b) = (&rows(out)[0], &rows(&reference)[0]);
    assert_eq!((a.test_acc, a.test_loss), (b.test_acc, b.test_loss));
}

/// SIGINT and SIGTERM checkpoint the step in flight and exit 130 / 143; the same command
/// resumes there and ends with exactly the numbers of an uninterrupted run.
#[test]
#[ignore = "slow tier (just test-slow)"]
fn interrupts_checkpoint_and_the_same_command_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    // Long enough that a resumed run is still training when the next signal lands (700 ms
    // after it starts): at 300 iterations a resumed run once finished first on a fast step.
    const ITERATIONS: u64 = 1000;
    let long = TINY
        .replace("iterations = 6", &format!("iterations = {ITERATIONS}"))
        .replace("eval_every = 3", "eval_every = 100")
        .replace("checkpoint_every = 2", "checkpoint_every = 0");
    let recipe = write(tmp.path(), "long.toml", &long);
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));

    let mut done = 0;
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let child = spawn_run(&recipe, &cache, &out);
        wait_for_training(&cache);
        signal(&child, sig);
        let result = child.wait_with_output().unwrap();
        let stderr = text(&result);
        assert_eq!(result.status.code(), Some(code), "{stderr}");
        assert!(
            stderr.contains("run the same command to resume"),
            "{stderr}"
        );
        let at = interrupted_at(&stderr);
        assert!(at > done && at < ITERATIONS, "{stderr}");
        done = at;
        let staging = only_subdir(&cache.join("train"));
        assert!(staging.join("checkpoints/last.safetensors").is_file());
    }
    let (_, resumed) = run_ok(&["run", s(&recipe), "--cache", s(&cache), "--out", s(&out)]);
    assert!(
        resumed.contains(&format!(
            "resuming from checkpoint at iteration {done}/{ITERATIONS}"
        )),
        "{resumed}"
    );
    assert_matches_an_uninterrupted_run(tmp.path(), &recipe, &out);
}

/// A truncated last checkpoint is set aside with a warning and training resumes from the one
/// before, still reproducing the uninterrupted run exactly.
#[test]
fn a_truncated_checkpoint_falls_back_to_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let args = ["run", s(&recipe), "--cache", s(&cache), "--out", s(&out)];
    let mut stop = args.to_vec();
    stop.extend(["--stop-after", "4"]);
    run_ok(&stop);
    let checkpoints = only_subdir(&cache.join("train")).join("checkpoints");
    let last = checkpoints.join("last.safetensors");
    assert!(checkpoints.join("previous.safetensors").is_file());
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 3]).unwrap();
    let (_, stderr) = run_ok(&args);
    assert!(
        stderr.contains("corrupt checkpoint")
            && stderr.contains("kept aside")
            && stderr.contains("resuming from the previous checkpoint"),
        "{stderr}"
    );
    assert!(
        stderr.contains("resuming from checkpoint at iteration 2/6"),
        "{stderr}"
    );
    assert_matches_an_uninterrupted_run(tmp.path(), &recipe, &out);
    // Artifacts honour the umask, as a plain create does: a shared cache stays readable.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let plain = tmp.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let model = only_subdir(&cache.join("train")).join("model.safetensors");
        assert_eq!(mode(&model), mode(&plain));
    }
}

/// Runs `recipe` with a cache and run directory under `tmp`; it must fail. Returns stderr.
fn failed_run(tmp: &Path, recipe: &Path) -> String {
    let out = opt()
        .args(["run", s(recipe), "--cache", s(&tmp.join("c"))])
        .args(["--out", s(&tmp.join("o"))])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{} should have failed",
        recipe.display()
    );
    text(&out)
}

/// Settings the data cannot satisfy are errors of the recipe key, in the file that set it.
#[test]
fn settings_the_data_cannot_satisfy_name_the_key_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            TINY.replace("train_limit = 256", "train_limit = 16"),
            "schedule.batch_size",
        ),
        (
            TINY.replace("train_limit = 256", "train_limit = 256\nvalidation = 256"),
            "dataset.validation",
        ),
    ];
    for (i, (recipe_text, key)) in cases.iter().enumerate() {
        let recipe = write(tmp.path(), &format!("r{i}.toml"), recipe_text);
        let stderr = failed_run(tmp.path(), &recipe);
        assert!(
            stderr.contains(&format!("r{i}.toml")) && stderr.contains(&format!("key `{key}`")),
            "{stderr}"
        );
    }
}

/// An image folder with an empty class folder is refused, naming it, and the failed preprocess
/// leaves no staging directory behind.
#[test]
fn an_empty_class_folder_is_an_error_and_a_failed_stage_leaves_no_litter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("imgs");
    for dir in ["train/cat", "train/dog", "test/cat"] {
        std::fs::create_dir_all(data.join(dir)).unwrap();
    }
    // Never decoded: the folder check comes first.
    std::fs::write(data.join("train/cat/a.png"), b"png").unwrap();
    std::fs::write(data.join("test/cat/b.png"), b"png").unwrap();
    let recipe = write(
        tmp.path(),
        "folder.toml",
        "[dataset]\nname = \"image-folder\"\nsource = \"local\"\npath = \"imgs\"\n\
         [schedule]\niterations = 2\n[run]\ndevice = \"cpu\"\n",
    );
    let cache = tmp.path().join("c");
    let stderr = failed_run(tmp.path(), &recipe);
    assert!(
        stderr.contains("`dog`") && stderr.contains("no images"),
        "{stderr}"
    );
    let litter: Vec<_> = std::fs::read_dir(cache.join("preprocess"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".staging"))
        .collect();
    assert!(litter.is_empty(), "{litter:?}");
}

/// `orthopt plan --out DIR` prints follow-up commands that use the same directory.
#[test]
fn plan_prints_commands_with_its_out_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let out = tmp.path().join("elsewhere");
    let (plan, _) = run_ok(&["plan", s(&recipe), "--out", s(&out)]);
    let line = plan
        .lines()
        .find(|l| l.starts_with("one process:"))
        .unwrap();
    assert!(line.contains(&format!("--out {}", s(&out))), "{plan}");
}

/// A diverging run stops with an error that says so and where, not with NaN metrics.
#[test]
fn divergence_is_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(
        tmp.path(),
        "wild.toml",
        &TINY.replace("lr = 0.05", "lr = 1e30"),
    );
    let stderr = failed_run(tmp.path(), &recipe);
    assert!(
        stderr.contains("training diverged at iteration") && stderr.contains("schedule.lr"),
        "{stderr}"
    );
}
