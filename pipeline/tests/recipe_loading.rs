//! Recipe loading: formats, extends, overrides, and the error messages users see.

mod common;

use common::{write, TINY};
use opt_pipeline::plan::resolve;
use opt_pipeline::recipe::load;

fn err(dir: &std::path::Path, text: &str, overrides: &[&str]) -> String {
    let p = write(dir, "bad.toml", text);
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match load(&p, &overrides)
        .map_err(|e| e.to_string())
        .and_then(|l| resolve(&l).map_err(|e| e.to_string()))
    {
        Ok(_) => panic!("recipe should have been rejected:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn toml_and_yaml_resolve_to_the_same_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(dir.path(), "r.toml", TINY);
    let yaml = write(
        dir.path(),
        "r.yaml",
        "name: tiny\ndataset:\n  source: embedded\n  train_limit: 256\n  test_limit: 128\nmodel:\n  width: 4\n\
         schedule:\n  lr: 0.05\n  milestones: [4]\n  iterations: 6\n  batch_size: 32\n  eval_every: 3\n\
         run:\n  seed: 7\n  device: cpu\n  checkpoint_every: 2\n  eval_batch: 64\n",
    );
    let a = resolve(&load(&toml, &[]).unwrap()).unwrap();
    let b = resolve(&load(&yaml, &[]).unwrap()).unwrap();
    assert_eq!(a.recipe, b.recipe);
    assert_eq!(a.train, b.train);
    assert_eq!(a.keys().unwrap(), b.keys().unwrap());
    // Spot-check that values arrived (not just equal defaults).
    assert_eq!(a.train.schedule.lr, 0.05);
    assert_eq!(a.train.model.width, 4);
    assert_eq!(a.train.data.train_limit, Some(256));
}

#[test]
fn extends_chains_override_parents_and_resolve_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("base")).unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    write(
        &dir.path().join("base"),
        "root.toml",
        "[dataset]\nsource = \"local\"\npath = \"../data\"\n[schedule]\nlr = 0.3\nbatch_size = 16\n",
    );
    write(
        &dir.path().join("base"),
        "mid.yaml",
        "extends: root.toml\nschedule:\n  lr: 0.2\n  momentum: 0.5\n",
    );
    let leaf = write(
        dir.path(),
        "leaf.toml",
        "extends = \"base/mid.yaml\"\n[schedule]\nlr = 0.1\n",
    );
    let loaded = load(&leaf, &[]).unwrap();
    assert_eq!(loaded.chain.len(), 3);
    let s = &loaded.recipe.schedule;
    assert_eq!((s.lr, s.momentum, s.batch_size.get()), (0.1, 0.5, 16));
    let plan = resolve(&loaded).unwrap();
    match &plan.fetch.source {
        opt_stages::data::fetch::Source::Local { path } => {
            assert_eq!(path, &dir.path().join("data").canonicalize().unwrap())
        }
        other => panic!("expected a local source, got {other:?}"),
    }
    assert_eq!(
        plan.name, "leaf",
        "the name defaults to the file given, not a parent"
    );
}

#[test]
fn extends_cycles_are_rejected_in_the_order_followed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.toml", "extends = \"b.toml\"\n");
    let b = write(dir.path(), "b.toml", "extends = \"a.toml\"\n");
    let e = load(&b, &[])
        .err()
        .expect("cycle must be rejected")
        .to_string();
    assert!(e.contains("cycle"), "{e}");
    // b extends a, which extends b again: b → a → b.
    let (first_b, a, last_b) = (
        e.find("b.toml").unwrap(),
        e.find("a.toml").unwrap(),
        e.rfind("b.toml").unwrap(),
    );
    assert!(first_b < a && a < last_b, "{e}");
}

#[test]
fn a_missing_or_directory_parent_is_an_error_of_the_extending_recipe() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("folder.toml")).unwrap();
    for target in ["missing.toml", "folder.toml"] {
        let child = write(
            dir.path(),
            "child.toml",
            &format!("extends = \"{target}\"\n[run]\nseed = 1\n"),
        );
        let e = load(&child, &[]).err().unwrap().to_string();
        assert!(
            e.starts_with(&child.canonicalize().unwrap().display().to_string())
                && e.contains("key `extends`")
                && e.contains(target),
            "{e}"
        );
    }
}

#[test]
fn an_empty_recipe_is_an_error_unless_it_extends_another() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("empty.toml", ""),
        ("comments.toml", "# nothing\n"),
        ("empty.yaml", ""),
    ] {
        let p = write(dir.path(), name, text);
        let e = load(&p, &[]).err().unwrap().to_string();
        assert!(e.contains(name) && e.contains("empty"), "{e}");
    }
    write(dir.path(), "base.toml", TINY);
    let p = write(dir.path(), "child.toml", "extends = \"base.toml\"\n");
    let plan = resolve(&load(&p, &[]).unwrap()).unwrap();
    assert_eq!(plan.train.schedule.lr, 0.05);
}

#[test]
fn a_child_switches_its_parent_between_iterations_and_epochs() {
    use opt_stages::training::train_config::Length;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.toml", TINY);
    let child = write(
        dir.path(),
        "child.toml",
        "extends = \"base.toml\"\n[schedule]\nepochs = 2.5\n",
    );
    let plan = resolve(&load(&child, &[]).unwrap()).unwrap();
    assert_eq!(plan.train.schedule.length, Length::Epochs(2.5));
    // And back, from the command line.
    let plan = resolve(&load(&child, &["schedule.iterations=9".into()]).unwrap()).unwrap();
    assert_eq!(plan.train.schedule.length, Length::Iterations(9));
    // One layer setting both is still refused.
    let both = write(
        dir.path(),
        "both.toml",
        "extends = \"base.toml\"\n[schedule]\nepochs = 2.5\niterations = 3\n",
    );
    let e = resolve(&load(&both, &[]).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not both"), "{e}");
}

#[test]
fn override_values_parse_as_toml_values_do_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "r.toml", TINY);
    for (text, lr) in [
        ("1e-3", 1e-3),
        ("1E2", 100.0),
        ("2.5e-2", 0.025),
        ("3", 3.0),
    ] {
        let plan = resolve(&load(&p, &[format!("schedule.lr={text}")]).unwrap()).unwrap();
        assert_eq!(plan.train.schedule.lr, lr, "--set schedule.lr={text}");
    }
    let plan = resolve(&load(&p, &["method.name=gs".into()]).unwrap()).unwrap();
    assert_eq!(plan.train.method.name(), "gs");
    let plan = resolve(&load(&p, &["schedule.milestones=[2, 4]".into()]).unwrap()).unwrap();
    assert_eq!(plan.train.schedule.milestones, vec![2, 4]);
    // Quoted, a number is a string, as in a file.
    let e = load(&p, &["schedule.lr=\"0.1\"".into()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("schedule.lr") && e.contains("string"), "{e}");
}

#[test]
fn options_given_to_a_method_without_options_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["baseline", "cp", "gs", "hr", "ls"] {
        let text = format!("{TINY}\n[method]\nname = \"{name}\"\nweight = 0.5\n");
        let e = err(dir.path(), &text, &[]);
        assert!(
            e.contains("bad.toml") && e.contains("weight"),
            "{name}: {e}"
        );
    }
    let p = write(dir.path(), "r.toml", TINY);
    let e = load(&p, &["method.name=gs".into(), "method.weight=0.5".into()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("weight"), "{e}");
}

#[test]
fn unknown_grid_keys_name_the_recipe_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "grid.toml",
        &format!("{TINY}\n[grid]\nmodel.wdth = [4, 8]\n"),
    );
    let e = opt_pipeline::grid::expand(&p, &[])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("grid.toml") && e.contains("wdth"), "{e}");
}

#[test]
fn a_device_this_build_lacks_is_refused_before_any_stage() {
    if candle_core::utils::cuda_is_available() {
        return; // a CUDA build can open it
    }
    let dir = tempfile::tempdir().unwrap();
    // An unreachable URL: were fetch attempted, the error would be a download's.
    let text = TINY.replace("device = \"cpu\"", "device = \"cuda\"").replace(
        "source = \"embedded\"",
        "source = \"url\"\nurl = \"http://127.0.0.1:9/x.tar.gz\"\nmd5 = \"0123456789abcdef0123456789abcdef\"",
    );
    let e = err(dir.path(), &text, &[]);
    assert!(
        e.contains("bad.toml") && e.contains("run.device") && e.contains("CUDA"),
        "{e}"
    );
}

#[test]
fn a_step_too_large_for_this_machine_is_refused_naming_the_width() {
    let dir = tempfile::tempdir().unwrap();
    let text = TINY.replace("width = 4", "width = 100000");
    let e = err(dir.path(), &text, &[]);
    assert!(
        e.contains("bad.toml") && e.contains("model.width") && e.contains("GiB"),
        "{e}"
    );
    // The explicit override lets it resolve (what happens next is the user's choice).
    let p = write(
        dir.path(),
        "big.toml",
        &format!("{text}memory_check = false\n"),
    );
    assert!(resolve(&load(&p, &[]).unwrap()).is_ok());
}

#[test]
fn command_line_overrides_win_over_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "r.toml", TINY);
    let sets = vec![
        "schedule.lr=0.01".to_string(),
        "schedule.milestones=[2, 5]".to_string(),
        "run.device=cpu".into(),
    ];
    let plan = resolve(&load(&p, &sets).unwrap()).unwrap();
    assert_eq!(plan.train.schedule.lr, 0.01);
    assert_eq!(plan.train.schedule.milestones, vec![2, 5]);
}

#[test]
fn unknown_keys_name_the_file_the_key_and_the_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(dir.path(), "[schedule]\nlrr = 0.1\n", &[]);
    assert!(
        e.contains("bad.toml") && e.contains("lrr") && e.contains("expected one of"),
        "{e}"
    );
    let e = err(dir.path(), "[scedule]\nlr = 0.1\n", &[]);
    assert!(e.contains("bad.toml") && e.contains("scedule"), "{e}");
}

#[test]
fn invalid_values_name_the_file_the_key_and_the_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(dir.path(), "[schedule]\nlr = \"fast\"\n", &[]);
    assert!(
        e.contains("bad.toml") && e.contains("schedule.lr") && e.contains("f64"),
        "{e}"
    );
    let e = err(dir.path(), "[schedule]\nlr = -1.0\n", &[]);
    assert!(
        e.contains("bad.toml") && e.contains("schedule.lr") && e.contains("positive"),
        "{e}"
    );
    let e = err(dir.path(), "[run]\ndevice = \"tpu\"\n", &[]);
    assert!(
        e.contains("bad.toml") && e.contains("run.device") && e.contains("cuda:N"),
        "{e}"
    );
    let e = err(dir.path(), "[run]\nops = \"fast\"\n", &[]);
    assert!(
        e.contains("bad.toml") && e.contains("run.ops") && e.contains("\"composed: OP, …\""),
        "{e}"
    );
    let e = err(dir.path(), "[run]\nmap_route = \"qr\"\n", &[]);
    assert!(
        e.contains("bad.toml") && e.contains("run.map_route") && e.contains("\"gemm\""),
        "{e}"
    );
    let e = err(dir.path(), "[schedule]\nmilestones = [5, 3]\n", &[]);
    assert!(
        e.contains("schedule.milestones") && e.contains("increasing"),
        "{e}"
    );
    let e = err(
        dir.path(),
        "[schedule]\niterations = 10\nepochs = 2.0\n",
        &[],
    );
    assert!(
        e.contains("schedule.epochs") && e.contains("not both"),
        "{e}"
    );
    let e = err(dir.path(), "[dataset]\nsource = \"local\"\n", &[]);
    assert!(
        e.contains("dataset.path") && e.contains("needs a directory"),
        "{e}"
    );
    let e = err(dir.path(), "[method]\nname = \"magic\"\n", &[]);
    assert!(
        e.contains("bad.toml") && e.contains("method") && e.contains("baseline"),
        "{e}"
    );
    let e = err(dir.path(), "[run]\nseed = 0\n", &["schedule.lr=-3"]);
    assert!(
        e.contains("--set schedule.lr=-3") && e.contains("schedule.lr"),
        "{e}"
    );
    let e = err(dir.path(), "[run]\nseed = 0\n", &["nonsense"]);
    assert!(e.contains("KEY=VALUE"), "{e}");
}

/// Zero where a count must be positive is refused while reading (the types are non-zero),
/// naming the file or override and the key.
#[test]
fn zero_counts_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (section, key) in [
        ("schedule", "batch_size"),
        ("schedule", "iterations"),
        ("run", "eval_batch"),
        ("model", "width"),
        ("model", "fc6_width"),
        ("dataset", "train_limit"),
        ("dataset", "test_limit"),
    ] {
        let e = err(dir.path(), &format!("[{section}]\n{key} = 0\n"), &[]);
        assert!(
            e.contains("bad.toml")
                && e.contains(&format!("`{section}.{key}`"))
                && e.contains("nonzero"),
            "{e}"
        );
    }
    let e = err(dir.path(), "[run]\nseed = 0\n", &["schedule.batch_size=0"]);
    assert!(
        e.contains("--set schedule.batch_size=0") && e.contains("`schedule.batch_size`"),
        "{e}"
    );
    let e = err(dir.path(), "[model]\nwidths = [8, 0, 8]\n", &[]);
    assert!(e.contains("bad.toml") && e.contains("model.widths"), "{e}");
}

/// A recipe that sets nothing resolves to the stage configurations' own defaults: the
/// official values are written once, in the stages.
#[test]
fn recipe_defaults_are_the_stage_defaults() {
    use opt_core::batchnorm::BatchNormConfig;
    use opt_stages::data::augment::AugmentConfig;
    use opt_stages::data::preprocess::DataView;
    use opt_stages::training::train::TrainOptions;
    use opt_stages::training::train_config::{LossConfig, ScheduleConfig};
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "r.toml", "[run]\nseed = 0\n");
    let plan = resolve(&load(&p, &[]).unwrap()).unwrap();
    assert_eq!(plan.train.schedule, ScheduleConfig::default());
    assert_eq!(plan.train.loss, LossConfig::default());
    assert_eq!(plan.train.augment, AugmentConfig::OFFICIAL);
    assert_eq!(plan.train.data, DataView::default());
    assert_eq!(plan.train_options, TrainOptions::default());
    assert_eq!(
        plan.evaluate.batch_size,
        TrainOptions::DEFAULT_EVAL_BATCH.get()
    );
    let bn = BatchNormConfig::default();
    assert_eq!(
        (plan.train.model.bn_decay, plan.train.model.bn_eps),
        (bn.decay, bn.eps)
    );
}

#[test]
fn missing_and_unsupported_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = load(&dir.path().join("nope.toml"), &[])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nope.toml") && e.contains("cannot read"), "{e}");
    let p = write(dir.path(), "r.json", "{}");
    let e = load(&p, &[]).err().unwrap().to_string();
    assert!(e.contains("r.json") && e.contains(".toml"), "{e}");
    let p = write(dir.path(), "broken.toml", "[schedule\nlr = 1");
    let e = load(&p, &[]).err().unwrap().to_string();
    assert!(e.contains("broken.toml"), "{e}");
}
