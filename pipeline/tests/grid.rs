//! Ablation grids: expansion and naming, cache sharing between cells, resume after a kill in
//! the middle of a grid, concurrent `--cell` processes on one cache, and `orthopt report`.

mod common;

use common::{count_artifacts, opt, run_ok, write, TINY};
use opt_pipeline::grid::expand;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Data rows of a CSV file, as (cell, seed) pairs.
fn csv_cells(path: &Path) -> Vec<(String, String)> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let h = r.headers().unwrap().clone();
    let (c, sd) = (
        h.iter().position(|x| x == "cell").unwrap(),
        h.iter().position(|x| x == "seed").unwrap(),
    );
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[c].to_string(), rec[sd].to_string())
        })
        .collect()
}

#[test]
fn grids_expand_into_named_cells_with_seeds_innermost() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "{TINY}\n[grid]\nseeds = [1, 2]\nschedule.lr = [0.05, 0.1]\nmethod = [{{ name = \"baseline\" }}, {{ name = \"sopt\", budget_channels = 2 }}]\n"
    );
    let recipe = write(tmp.path(), "g.toml", &text);
    let g = expand(&recipe, &[]).unwrap();
    assert!(g.is_grid());
    assert_eq!(g.varied_keys(), vec!["method", "schedule.lr"]);
    assert_eq!(g.seeds, vec![1, 2]);
    let names: Vec<(usize, String, u64)> = g
        .entries
        .iter()
        .map(|e| (e.index, e.cell.clone(), e.seed))
        .collect();
    assert_eq!(
        names,
        vec![
            (0, "method=baseline,lr=0.05".into(), 1),
            (1, "method=baseline,lr=0.05".into(), 2),
            (2, "method=baseline,lr=0.1".into(), 1),
            (3, "method=baseline,lr=0.1".into(), 2),
            (4, "method=sopt-2,lr=0.05".into(), 1),
            (5, "method=sopt-2,lr=0.05".into(), 2),
            (6, "method=sopt-2,lr=0.1".into(), 1),
            (7, "method=sopt-2,lr=0.1".into(), 2),
        ]
    );
    // Each entry's plan carries its values; everything else is the base recipe's.
    let e = &g.entries[7];
    assert_eq!(e.plan.train.schedule.lr, 0.1);
    assert_eq!(e.plan.train.seed, 2);
    assert_eq!(e.plan.train.method.name(), "sopt");
    assert_eq!(e.plan.train.model.width, 4);
    assert_eq!(e.plan.name, "tiny");
    assert_eq!(
        e.params,
        vec![
            ("method".to_string(), "sopt-2".to_string()),
            ("schedule.lr".to_string(), "0.1".to_string())
        ]
    );
    // Cells share fetch and preprocess keys and differ in train keys.
    let k: Vec<_> = g.entries.iter().map(|e| e.plan.keys().unwrap()).collect();
    assert!(k.iter().all(|x| x.preprocess == k[0].preprocess));
    let mut trains: Vec<&String> = k.iter().map(|x| &x.train).collect();
    trains.sort();
    trains.dedup();
    assert_eq!(trains.len(), 8);

    // Without a grid: one entry named after the recipe, with the recipe's seed.
    let plain = expand(&write(tmp.path(), "p.toml", TINY), &[]).unwrap();
    assert!(!plain.is_grid());
    assert_eq!(plain.entries.len(), 1);
    assert_eq!(
        (plain.entries[0].cell.as_str(), plain.entries[0].seed),
        ("tiny", 7)
    );

    // Two axes ending in the same word are labelled by their full keys; --set changes a grid.
    let text = format!("{TINY}\n[grid]\nschedule.lr = [0.05]\n\"loss.lr\" = [1]\n");
    let g = expand(
        &write(tmp.path(), "c.toml", &text),
        &["grid.schedule.lr=[0.01, 0.02]".into()],
    );
    // `loss.lr` is not a key of the loss section: the cell's recipe names the origin.
    let err = g.unwrap_err().to_string();
    assert!(
        err.contains("c.toml") && err.contains("grid cell") && err.contains("lr"),
        "{err}"
    );
    let text = format!("{TINY}\n[grid]\nschedule.lr = [0.05]\n");
    let g = expand(
        &write(tmp.path(), "d.toml", &text),
        &["grid.schedule.lr=[0.01, 0.02]".into()],
    )
    .unwrap();
    assert_eq!(g.entries.len(), 2);
    assert_eq!(g.entries[1].cell, "lr=0.02");
}

#[test]
fn bad_grids_are_rejected_with_the_key_and_what_was_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &str); 6] = [
        ("[grid]\nschedule.lr = 0.1\n", &[], "grid.schedule.lr"),
        ("[grid]\nschedule.lr = []\n", &[], "non-empty list"),
        ("[grid]\nbogus.lr = [1, 2]\n", &[], "unknown key `bogus.lr`"),
        ("[grid]\nseeds = [1, 1]\n", &[], "seeds repeat"),
        ("[grid]\nseeds = [-1]\n", &[], "non-negative integer seeds"),
        (
            "[grid]\nschedule.lr = [0.1, 0.2]\n",
            &["schedule.lr=0.3"],
            "sets a key the grid varies",
        ),
    ];
    for (i, (grid, sets, expected)) in cases.iter().enumerate() {
        let recipe = write(
            tmp.path(),
            &format!("b{i}.toml"),
            &format!("{TINY}\n{grid}"),
        );
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let err = expand(&recipe, &sets).unwrap_err().to_string();
        assert!(err.contains(expected), "case {i}: {err}");
    }
    // A cell that cannot be built is refused before anything runs, naming the cell; a base
    // recipe valid only through its cells' values is fine (S-OPT's default budget of 16
    // channels does not fit width 4, budgets 2 and 4 do).
    let sopt = format!("{TINY}\n[method]\nname = \"sopt\"\n");
    let recipe = write(
        tmp.path(),
        "budget.toml",
        &format!("{sopt}[grid]\nmethod.budget_channels = [2, 4, 8]\n"),
    );
    let err = expand(&recipe, &[]).unwrap_err().to_string();
    assert!(
        err.contains("grid cell `budget_channels=8`") && err.contains("expected 1 to 4"),
        "{err}"
    );
    let recipe = write(
        tmp.path(),
        "budget_ok.toml",
        &format!("{sopt}[grid]\nmethod.budget_channels = [2, 4]\n"),
    );
    let g = expand(&recipe, &[]).unwrap();
    assert_eq!(g.entries.len(), 2);
    assert_eq!(g.name, "tiny");
    // Without a grid the same recipe is an error at its default.
    let recipe = write(tmp.path(), "budget_bad.toml", &sopt);
    let err = expand(&recipe, &[]).unwrap_err().to_string();
    assert!(
        err.contains("method.budget_channels") && err.contains("found 16"),
        "{err}"
    );

    // Two cells with the same name.
    let recipe = write(
        tmp.path(),
        "dup.toml",
        &format!("{TINY}\n[grid]\nschedule.lr = [0.1, \"0.1\"]\n"),
    );
    let err = expand(&recipe, &[]).unwrap_err().to_string();
    assert!(err.contains("both be named"), "{err}");
    // --cell out of range and a missing SLURM_ARRAY_TASK_ID are clear errors.
    let recipe = write(
        tmp.path(),
        "ok.toml",
        &format!("{TINY}\n[grid]\nseeds = [1, 2]\n"),
    );
    for (args, expected) in [
        (vec!["--cell", "2"], "the grid has 2 entries"),
        (vec!["--cell"], "SLURM_ARRAY_TASK_ID"),
        (vec!["--cell"], "JOB_COMPLETION_INDEX"),
    ] {
        let mut all = vec!["run", s(&recipe), "--cache", s(tmp.path())];
        all.extend(args);
        let out = opt().args(&all).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{err}");
    }
}

fn grid_recipe(dir: &Path, name: &str, grid: &str) -> PathBuf {
    write(dir, name, &format!("{TINY}\n[grid]\n{grid}\n"))
}

#[test]
fn cells_share_fetch_and_preprocess_and_a_rerun_skips_finished_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = grid_recipe(
        tmp.path(),
        "g.toml",
        "method.name = [\"baseline\", \"gs\"]\nseeds = [1, 2]",
    );
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));

    let (plan, _) = run_ok(&["plan", s(&recipe), "--cache", s(&cache), "--out", s(&out)]);
    assert!(plan.contains("2 cells × 2 seeds = 4 entries"), "{plan}");
    assert!(plan.contains("| 3 | name=gs | 2 | re-use #0"), "{plan}");
    assert!(
        plan.contains("to compute: 1 fetch, 1 preprocess, 4 train, 4 evaluate; 0 of 4"),
        "{plan}"
    );
    assert!(plan.contains("sbatch --array=0-3"), "{plan}");

    let args = ["run", s(&recipe), "--cache", s(&cache), "--out", s(&out)];
    let (stdout, _) = run_ok(&args);
    assert!(
        stdout.contains("| OPT (GS) |"),
        "paper table printed:\n{stdout}"
    );
    assert_eq!(count_artifacts(&cache, "fetch"), 1);
    assert_eq!(count_artifacts(&cache, "preprocess"), 1);
    assert_eq!(count_artifacts(&cache, "train"), 4);
    let log = std::fs::read_to_string(out.join("opt.log")).unwrap();
    assert_eq!(log.matches("fetch: built").count(), 1, "{log}");
    assert_eq!(log.matches("fetch: cached").count(), 3, "{log}");
    assert_eq!(log.matches("preprocess: cached").count(), 3, "{log}");

    let expected: Vec<(String, String)> = [
        ("name=baseline", "1"),
        ("name=baseline", "2"),
        ("name=gs", "1"),
        ("name=gs", "2"),
    ]
    .iter()
    .map(|(c, s)| (c.to_string(), s.to_string()))
    .collect();
    assert_eq!(csv_cells(&out.join("results.csv")), expected);
    let summary = csv_cells_summary(&out.join("summary.csv"));
    assert_eq!(summary, vec!["name=baseline", "name=gs"]);

    // Re-run: every entry is skipped; the tables are rewritten, never appended to.
    let (_, stderr) = run_ok(&args);
    assert!(stderr.contains("nothing to train"), "{stderr}");
    let log = std::fs::read_to_string(out.join("opt.log")).unwrap();
    assert_eq!(log.matches("finished earlier, skipped").count(), 4, "{log}");
    assert_eq!(csv_cells(&out.join("results.csv")), expected);
    let plan = run_ok(&["plan", s(&recipe), "--cache", s(&cache), "--out", s(&out)]).0;
    assert_eq!(plan.matches("cached").count(), 16, "{plan}");
    assert!(plan.contains("4 of 4 entries recorded"), "{plan}");
}

fn csv_cells_summary(path: &Path) -> Vec<String> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let c = r
        .headers()
        .unwrap()
        .iter()
        .position(|x| x == "cell")
        .unwrap();
    r.records().map(|rec| rec.unwrap()[c].to_string()).collect()
}

/// SIGKILL while the second cell trains: the re-run skips the first cell, resumes the second
/// from its checkpoint, and the report has each row once.
#[test]
#[ignore = "slow tier (just test-slow)"]
fn a_grid_killed_in_its_second_cell_resumes_without_duplicate_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let text = TINY
        .replace("eval_every = 3", "eval_every = 100")
        .replace("checkpoint_every = 2", "checkpoint_every = 5");
    let recipe = write(
        tmp.path(),
        "k.toml",
        &format!("{text}\n[grid]\nschedule.iterations = [6, 300]\n"),
    );
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let g = expand(&recipe, &[]).unwrap();
    let second = g.entries[1].plan.keys().unwrap().train;
    let staging_ckpt = opt_pipeline::store::ArtifactStore::new(&cache)
        .staging_dir("train", &second)
        .join("checkpoints/last.safetensors");

    let mut child = opt()
        .args([
            "run",
            s(&recipe),
            "--cache",
            s(&cache),
            "--out",
            s(&out),
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !staging_ckpt.is_file() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    assert!(
        !child.wait().unwrap().success(),
        "killed before the grid finished"
    );
    assert!(out.join("cells/iterations=6/seed-7/row.json").is_file());
    assert!(!out.join("cells/iterations=300/seed-7/row.json").exists());

    let (_, stderr) = run_ok(&["run", s(&recipe), "--cache", s(&cache), "--out", s(&out)]);
    assert!(
        stderr.contains("resuming from checkpoint at iteration"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(out.join("opt.log")).unwrap();
    assert!(
        log.contains("[1/2] iterations=6 seed 7: finished earlier, skipped"),
        "{log}"
    );
    assert_eq!(
        csv_cells(&out.join("results.csv")),
        vec![
            ("iterations=6".to_string(), "7".to_string()),
            ("iterations=300".to_string(), "7".to_string())
        ]
    );
    assert_eq!(count_artifacts(&cache, "train"), 2);
}

/// Slurm-style: one process per entry (and one duplicate) against one cache, started together;
/// every artifact is built once, and `orthopt report` gathers the cells. Two processes read
/// their index from the environment: a Slurm array task's and a Kubernetes indexed Job's.
#[test]
#[ignore = "slow tier (just test-slow)"]
fn concurrent_cell_processes_share_one_cache_and_report_gathers_them() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = grid_recipe(tmp.path(), "g.toml", "schedule.lr = [0.01, 0.02, 0.05]");
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let children: Vec<_> = ["0", "1", "2", "0"]
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let mut c = opt();
            c.args([
                "run",
                s(&recipe),
                "--cache",
                s(&cache),
                "--out",
                s(&out),
                "-q",
            ]);
            // The last process reads its index as a Slurm array task would, the third as a pod of
            // a Kubernetes indexed Job.
            if i == 3 {
                c.arg("--cell").env("SLURM_ARRAY_TASK_ID", cell);
            } else if i == 2 {
                c.arg("--cell").env("JOB_COMPLETION_INDEX", cell);
            } else {
                c.args(["--cell", cell]);
            }
            c.stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(count_artifacts(&cache, "fetch"), 1);
    assert_eq!(count_artifacts(&cache, "preprocess"), 1);
    assert_eq!(count_artifacts(&cache, "train"), 3);
    let logs: String = (0..3)
        .map(|i| std::fs::read_to_string(out.join(format!("logs/cell-{i}.log"))).unwrap())
        .collect();
    assert_eq!(logs.matches("fetch: built").count(), 1, "{logs}");
    assert_eq!(logs.matches("preprocess: built").count(), 1, "{logs}");
    // Entry processes leave the gathering to `orthopt report`.
    assert!(!out.join("results.csv").exists());

    let (stdout, stderr) = run_ok(&["report", s(&out)]);
    assert!(stderr.contains("3 runs in 3 cells"), "{stderr}");
    assert!(stdout.contains("| method |"), "{stdout}");
    let cells: Vec<String> = csv_cells(&out.join("results.csv"))
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(cells, vec!["lr=0.01", "lr=0.02", "lr=0.05"]);
    for f in [
        "summary.csv",
        "results.md",
        "plots/test_error.svg",
        "plots/energy.svg",
        "plots/final_error.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Reports over several run directories go to --out; no runs is an error.
    let other = tmp.path().join("elsewhere");
    run_ok(&["report", s(&out), s(&out), "--out", s(&other)]);
    assert!(other.join("results.md").is_file());
    assert_eq!(
        csv_cells(&other.join("results.csv")).len(),
        3,
        "no duplicate rows"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = opt().args(["report", s(&empty)]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no finished runs"));
}

/// Grid values from `--set` parse as TOML values do in a file: integers label cells as written
/// and seeds are accepted.
#[test]
fn grid_values_from_the_command_line_are_typed_like_file_values() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "g.toml", TINY);
    let sets = [
        "grid.model.width=[4, 8]".to_string(),
        "grid.seeds=[0, 5]".into(),
    ];
    let g = expand(&recipe, &sets).unwrap();
    let cells: Vec<&str> = g.entries.iter().map(|e| e.cell.as_str()).collect();
    assert_eq!(cells, ["width=4", "width=4", "width=8", "width=8"]);
    let seeds: Vec<u64> = g.entries.iter().map(|e| e.seed).collect();
    assert_eq!(seeds, [0, 5, 0, 5]);
    assert_eq!(g.entries[2].plan.train.model.width, 8);
    assert_eq!(
        g.entries[2].params,
        [("model.width".to_string(), "8".to_string())]
    );
}

/// A `variant` axis merges whole recipe fragments: cells differ in several sections at once,
/// are named by model, method and regulariser, refuse `--set` on any key a fragment sets, and
/// reject fragments that are not tables of sections.
#[test]
fn variant_axis_merges_fragments_and_guards_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = grid_recipe(
        tmp.path(),
        "v.toml",
        r#"seeds = [0, 1]
variant = [
    { method = { name = "gs" } },
    { regularizer = { kind = "mhe", power = "a2" }, schedule = { lr = 0.02 } },
]"#,
    );
    let g = expand(&recipe, &[]).unwrap();
    assert_eq!(g.entries.len(), 4);
    let cells: Vec<&str> = g.entries.iter().map(|e| e.cell.as_str()).collect();
    assert_eq!(
        cells,
        [
            "variant=gs",
            "variant=gs",
            "variant=mhe-a2",
            "variant=mhe-a2"
        ]
    );
    let gs = &g.entries[0].plan.train;
    assert_eq!(gs.method.name(), "gs");
    assert!(gs.regularizer.is_none());
    let mhe = &g.entries[2].plan.train;
    assert_eq!(mhe.method.name(), "baseline");
    assert_eq!(mhe.schedule.lr, 0.02);
    let r = mhe.regularizer.as_ref().unwrap();
    // The official weights of the angular a2 power: 0.1 hidden, 1 on the classifier.
    assert_eq!((r.weight, r.classifier_weight), (0.1, 1.0));
    assert_eq!(mhe.method_label(), "MHE (a2)");
    // Other keys stay free for --set; the fragments' keys do not.
    assert!(expand(&recipe, &["schedule.batch_size=16".into()]).is_ok());
    let err = expand(&recipe, &["schedule.lr=0.5".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("grid.variant"), "{err}");
    let bad = grid_recipe(
        tmp.path(),
        "bad.toml",
        "variant = [{ methd = { name = \"gs\" } }]",
    );
    let err = expand(&bad, &[]).unwrap_err().to_string();
    assert!(
        err.contains("grid.variant") && err.contains("methd"),
        "{err}"
    );
    let bad = grid_recipe(tmp.path(), "bad2.toml", "variant = [\"gs\"]");
    let err = expand(&bad, &[]).unwrap_err().to_string();
    assert!(err.contains("expected tables"), "{err}");
}
