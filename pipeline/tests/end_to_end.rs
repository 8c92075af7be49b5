//! The whole pipeline on a tiny recipe: all five stages, the cache, and resume.

mod common;

use common::{count_artifacts, write, TINY};
use opt_pipeline::grid::GridEntry;
use opt_pipeline::plan::{resolve, Plan};
use opt_pipeline::recipe::load;
use opt_pipeline::runner::{collect_runs, run, RunContext, RunResult};
use opt_pipeline::store::ArtifactStore;
use opt_stages::report::{self, ResultRow};
use opt_stages::Silent;
use std::path::Path;

fn plan(dir: &Path, overrides: &[&str]) -> Plan {
    let p = write(dir, "tiny.toml", TINY);
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    resolve(&load(&p, &o).unwrap()).unwrap()
}

fn run_to_end(plan: &Plan, cache: &Path, out: &Path, stop_after: Option<u64>) -> RunResult {
    let store = ArtifactStore::new(cache);
    let mut ctx = RunContext::new(&store, out.to_path_buf(), &Silent);
    ctx.stop_after = stop_after;
    run(&GridEntry::single(plan.clone()), &ctx).unwrap()
}

fn finished(r: RunResult) -> (Vec<ResultRow>, bool) {
    match r {
        RunResult::Finished { row, trained } => (vec![*row], trained),
        RunResult::Stopped { iteration } => panic!("stopped at {iteration}"),
        RunResult::Interrupted { signal, .. } => panic!("interrupted by signal {signal}"),
    }
}

#[test]
fn tiny_recipe_runs_all_five_stages_and_a_rerun_trains_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("run"));
    let p = plan(tmp.path(), &[]);
    let (rows, trained) = finished(run_to_end(&p, &cache, &out, None));
    assert!(trained);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.recipe.as_str(), r.method.as_str(), r.iterations, r.seed),
        ("tiny", "baseline", 6, 7)
    );
    assert!(
        (0.0..=1.0).contains(&r.test_acc) && (r.test_err - 100.0 * (1.0 - r.test_acc)).abs() < 1e-9
    );
    assert!(r.images_per_sec > 0.0);
    // No validation split: no best evaluation (it is never chosen on test).
    assert_eq!((r.best_iteration, r.test_acc_at_best), (None, None));

    // The run is recorded in its directory (row and curves), and the report gathers it; curves
    // have every iteration, and test columns at the initial (0), periodic (3) and final (6)
    // evaluations.
    let runs = collect_runs(&out).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].row, r.clone());
    report::write(&out, "tiny", &runs).unwrap();
    assert!(std::fs::read_to_string(out.join("results.md"))
        .unwrap()
        .contains("| tiny | 7 | fashion-mnist | cnn6-w4 | baseline | 6 |"));
    let curves = std::fs::read_to_string(out.join("cells/tiny/seed-7").join("curves.csv")).unwrap();
    let lines: Vec<&str> = curves.lines().collect();
    assert_eq!(lines.len(), 8, "{curves}");
    let with_test: Vec<&str> = lines[1..]
        .iter()
        .filter(|l| !l.ends_with(",,"))
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(with_test, vec!["0", "3", "6"]);
    // Every layer's energies at each evaluation: 7 layers × 3 evaluations.
    let layers = std::fs::read_to_string(out.join("cells/tiny/seed-7/layers.csv")).unwrap();
    assert_eq!(layers.lines().count(), 1 + 7 * 3, "{layers}");
    assert!(layers.starts_with("iteration,layer,energy_s0,energy_s1,energy_s2,half_energy_s0"));

    // Manifests list every file with a hash an independent hasher agrees with.
    let store = ArtifactStore::new(&cache);
    let keys = p.keys().unwrap();
    let m = store
        .lookup("preprocess", &keys.preprocess)
        .expect("preprocess manifest");
    let f = m
        .files
        .iter()
        .find(|f| f.path == "data.safetensors")
        .unwrap();
    let bytes = std::fs::read(store.dir("preprocess", &keys.preprocess).join(&f.path)).unwrap();
    assert_eq!(f.blake3, blake3::hash(&bytes).to_hex().to_string());
    assert_eq!(m.inputs, vec![keys.fetch.clone()]);
    let tm = store.lookup("train", &keys.train).unwrap();
    assert!(tm.files.iter().any(|f| f.path == "model.safetensors"));
    assert!(
        !tm.files.iter().any(|f| f.path.contains("checkpoint")),
        "checkpoints are dropped once finished"
    );

    // Unchanged recipe: nothing is trained, same numbers.
    let (rows2, trained2) = finished(run_to_end(&p, &cache, &out, None));
    assert!(!trained2);
    assert_eq!(rows2, rows);

    // A schedule change re-uses fetch and preprocess, and trains a second model.
    let p3 = plan(tmp.path(), &["schedule.lr=0.02"]);
    let (_, trained3) = finished(run_to_end(&p3, &cache, &tmp.path().join("run3"), None));
    assert!(trained3);
    assert_eq!(count_artifacts(&cache, "fetch"), 1);
    assert_eq!(count_artifacts(&cache, "preprocess"), 1);
    assert_eq!(count_artifacts(&cache, "train"), 2);
}

fn model_tensors(
    cache: &Path,
    key: &str,
) -> std::collections::HashMap<String, candle_core::Tensor> {
    let path = cache.join("train").join(key).join("model.safetensors");
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

#[test]
fn resuming_from_a_checkpoint_gives_the_weights_of_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let p = plan(tmp.path(), &["run.checkpoint_every=0"]);
    let key = p.keys().unwrap().train;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (rows_a, _) = finished(run_to_end(&p, &a, &tmp.path().join("ra"), None));

    match run_to_end(&p, &b, &tmp.path().join("rb"), Some(4)) {
        RunResult::Stopped { iteration } => assert_eq!(iteration, 4),
        RunResult::Finished { .. } | RunResult::Interrupted { .. } => {
            panic!("should have stopped")
        }
    }
    let store = ArtifactStore::new(&b);
    assert!(
        store.lookup("train", &key).is_none(),
        "an interrupted stage is not a result"
    );
    assert!(store
        .staging_dir("train", &key)
        .join("checkpoints/last.safetensors")
        .is_file());
    let (rows_b, trained) = finished(run_to_end(&p, &b, &tmp.path().join("rb"), None));
    assert!(trained);

    let (ta, tb) = (model_tensors(&a, &key), model_tensors(&b, &key));
    assert_eq!(ta.len(), tb.len());
    for (name, x) in &ta {
        let y = &tb[name];
        let diff: f32 = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0, "tensor {name} differs after resume");
    }
    assert_eq!(rows_a[0].test_acc, rows_b[0].test_acc);
    assert_eq!(rows_a[0].energy_s1, rows_b[0].energy_s1);
    // The evaluations, the one at iteration 0 included, once each and equal after a resume.
    let curves = |cache: &Path| -> opt_stages::training::train_artifact::Curves {
        let path = cache.join("train").join(&key).join("curves.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (ca, cb) = (curves(&a), curves(&b));
    let iterations: Vec<u64> = cb.eval.iter().map(|e| e.iteration).collect();
    assert_eq!(iterations, vec![0, 3]);
    assert_eq!(ca.eval, cb.eval);
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(b.join("train").join(&key).join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["resumed_from"], 4);
}
