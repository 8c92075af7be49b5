//! Checkpoints whose contents lie (issue "Hostile inputs", items 5 and 6): an iteration out of
//! the run, an empty or mistyped tensor, a permutation out of range, NaN weights. Each is set
//! aside with a warning naming the file and the key, the run resumes from the checkpoint before
//! (or starts over), and a rerun never panics on it again; NaN weights never reach a result.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{opt, run_ok, write, TINY};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The staging directory of the one train artifact in `cache`.
fn train_dir(cache: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("train"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// Rewrites a checkpoint with `change` applied to its tensors, keeping its metadata.
fn rewrite(path: &Path, change: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = meta.metadata().clone();
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    change(&mut tensors);
    safetensors::serialize_to_file(&tensors, metadata, path).unwrap();
}

fn first_weight(tensors: &HashMap<String, Tensor>) -> String {
    let mut keys: Vec<&String> = tensors
        .keys()
        .filter(|k| k.starts_with("model.") && k.ends_with("weight"))
        .collect();
    keys.sort();
    keys[0].clone()
}

fn set(t: &mut HashMap<String, Tensor>, k: &str, v: Tensor) {
    t.insert(k.to_string(), v);
}

type Change = Box<dyn Fn(&mut HashMap<String, Tensor>) -> String>;

/// Each corruption, with the message (after `corrupt checkpoint: `) it must produce.
fn corruptions() -> Vec<(&'static str, Change)> {
    vec![
        (
            "iteration 2^62",
            Box::new(|t| {
                set(
                    t,
                    "iteration",
                    Tensor::new(&[1i64 << 62], &Device::Cpu).unwrap(),
                );
                "`iteration` is 4611686018427387904, outside this run's 0..6".into()
            }),
        ),
        (
            "iteration -1",
            Box::new(|t| {
                set(t, "iteration", Tensor::new(&[-1i64], &Device::Cpu).unwrap());
                "`iteration` is -1, outside this run's 0..6".into()
            }),
        ),
        (
            "empty iteration",
            Box::new(|t| {
                let empty = Tensor::zeros(0, DType::I64, &Device::Cpu).unwrap();
                set(t, "iteration", empty);
                "`iteration` has shape [0], expected [1]".into()
            }),
        ),
        (
            "permutation out of range",
            Box::new(|t| {
                let mut p: Vec<u32> = t["permutation"].to_vec1().unwrap();
                p[3] = u32::MAX;
                let n = p.len();
                set(
                    t,
                    "permutation",
                    Tensor::from_vec(p, n, &Device::Cpu).unwrap(),
                );
                "`permutation` entry 3 is 4294967295: not a permutation of 0..256".into()
            }),
        ),
        (
            "weights of another dtype",
            Box::new(|t| {
                let k = first_weight(t);
                let f64s = t[&k].to_dtype(DType::F64).unwrap();
                set(t, &k, f64s);
                format!("`{k}` is F64, expected F32")
            }),
        ),
        (
            "NaN weights",
            Box::new(|t| {
                let k = first_weight(t);
                let nan = (t[&k].ones_like().unwrap() * f64::NAN).unwrap();
                set(t, &k, nan);
                format!("`{k}` holds NaN at flat index 0")
            }),
        ),
    ]
}

/// Stops a run after iteration 4 (checkpoints at 2 and 4), corrupts the last checkpoint, and
/// reruns: the bad one is set aside, naming file and key, and the run resumes from iteration 2.
#[test]
fn a_lying_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before() {
    for (what, change) in corruptions() {
        let tmp = tempfile::tempdir().unwrap();
        let recipe = write(tmp.path(), "tiny.toml", TINY);
        let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
        let args = ["run", s(&recipe), "--cache", s(&cache), "--out", s(&out)];
        let mut stop = args.to_vec();
        stop.extend(["--stop-after", "4"]);
        run_ok(&stop);
        let checkpoints = train_dir(&cache).join("checkpoints");
        let last = checkpoints.join("last.safetensors");
        let mut expected = String::new();
        rewrite(&last, |t| expected = change(t));
        let (_, stderr) = run_ok(&args);
        let aside = checkpoints.join("last.safetensors.corrupt");
        assert!(
            stderr.contains(&format!(
                "{}: corrupt checkpoint: {expected}; kept aside as {}",
                last.display(),
                aside.display()
            )),
            "{what}: {stderr}"
        );
        assert!(
            stderr.contains("resuming from checkpoint at iteration 2/6"),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        // The result is a finished, finite run.
        let evaluated: Vec<String> = std::fs::read_dir(cache.join("evaluate"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("metrics.json")).ok())
            .collect();
        assert_eq!(evaluated.len(), 1, "{what}");
        let m: serde_json::Value = serde_json::from_str(&evaluated[0]).unwrap();
        let loss = m["final_metrics"]["loss"].as_f64();
        assert!(loss.is_some_and(f64::is_finite), "{what}: {}", evaluated[0]);
    }
}

/// Both checkpoints bad: both set aside, training starts over, and the rerun after that has
/// nothing left to trip on.
#[test]
fn with_every_checkpoint_bad_the_run_starts_over_and_reruns_are_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let args = ["run", s(&recipe), "--cache", s(&cache), "--out", s(&out)];
    let mut stop = args.to_vec();
    stop.extend(["--stop-after", "4"]);
    run_ok(&stop);
    let checkpoints = train_dir(&cache).join("checkpoints");
    let changes = corruptions();
    rewrite(&checkpoints.join("last.safetensors"), |t| {
        (changes[2].1)(t);
    });
    rewrite(&checkpoints.join("previous.safetensors"), |t| {
        (changes[5].1)(t);
    });
    let (_, stderr) = run_ok(&args);
    assert!(
        stderr.contains("no readable checkpoint left: training starts from iteration 0"),
        "{stderr}"
    );
    assert!(stderr.contains("train: 6 iterations"), "{stderr}");
    let (_, again) = run_ok(&args);
    assert!(again.contains("finished earlier, skipped"), "{again}");
}

/// A model artifact whose weights are NaN is refused by evaluate, naming the file and the
/// key, and nothing is cached for it.
#[test]
fn nan_weights_never_become_a_cached_result() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "tiny.toml", TINY);
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let args = ["run", s(&recipe), "--cache", s(&cache), "--out", s(&out)];
    run_ok(&args);
    let model = train_dir(&cache).join("model.safetensors");
    let mut key = String::new();
    let mut tensors = candle_core::safetensors::load(&model, &Device::Cpu).unwrap();
    let mut keys: Vec<String> = tensors.keys().cloned().collect();
    keys.sort();
    for k in keys.iter().filter(|k| k.ends_with("weight")).take(1) {
        key = k.clone();
        let nan = (tensors[k].ones_like().unwrap() * f64::NAN).unwrap();
        tensors.insert(k.clone(), nan);
    }
    candle_core::safetensors::save(&tensors, &model).unwrap();
    std::fs::remove_dir_all(cache.join("evaluate")).unwrap();
    let failed = opt().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: unusable model: `{key}` holds NaN at flat index 0",
            model.display()
        )),
        "{stderr}"
    );
    let cached_metrics = std::fs::read_dir(cache.join("evaluate"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("metrics.json").is_file())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(cached_metrics, 0);
}
