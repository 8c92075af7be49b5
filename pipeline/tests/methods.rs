//! Every method trains on the embedded Fashion-MNIST subset, and OPT methods keep their
//! layers' hyperspherical energy at its initial value.

mod common;

use common::write;
use opt_pipeline::grid::GridEntry;
use opt_pipeline::plan::resolve;
use opt_pipeline::recipe::load;
use opt_pipeline::runner::{entry_dir, run, RunContext, RunResult};
use opt_pipeline::store::ArtifactStore;
use opt_stages::Silent;

const RECIPE: &str = r#"
[dataset]
source = "embedded"
train_limit = 2000
test_limit = 500
[model]
width = 8
bn_decay = 0.9
[schedule]
lr = 0.05
milestones = [150]
iterations = 200
batch_size = 64
eval_every = 100
[augment]
pad = 0
flip = false
[run]
device = "cpu"
checkpoint_every = 0
"#;

#[test]
#[ignore = "slow tier (just test-slow)"]
fn every_method_lowers_the_loss_and_beats_chance_by_a_wide_margin() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let recipe = write(tmp.path(), "m.toml", RECIPE);
    for method in [
        "baseline", "cp", "gs", "hr", "ls", "ogd", "or", "upt", "sopt",
    ] {
        let mut sets = vec![format!("method.name={method}")];
        if method == "sopt" {
            // Four episodes of 50 iterations: merges and re-samples happen during the test.
            sets.extend([
                "method.episode_length=50".to_string(),
                "method.budget_channels=4".to_string(),
            ]);
        }
        let plan = resolve(&load(&recipe, &sets).unwrap()).unwrap();
        let store = ArtifactStore::new(&cache);
        let out = tmp.path().join(method);
        let ctx = RunContext::new(&store, out.clone(), &Silent);
        let entry = GridEntry::single(plan);
        let r = match run(&entry, &ctx).unwrap() {
            RunResult::Finished { row, .. } => row,
            RunResult::Stopped { .. } | RunResult::Interrupted { .. } => {
                panic!("{method}: the run stopped before finishing")
            }
        };
        assert_eq!(r.method, method);
        // 10 classes: chance is 0.1.
        assert!(
            r.test_acc > 0.5,
            "{method}: test accuracy {} after 200 iterations",
            r.test_acc
        );
        let curves = std::fs::read_to_string(entry_dir(&out, &entry).join("curves.csv")).unwrap();
        let losses: Vec<f64> = curves
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(2).and_then(|v| v.parse().ok()))
            .collect();
        let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
        let last: f64 = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
        assert!(last < 0.7 * first, "{method}: loss {first:.3} → {last:.3}");
        match method {
            "baseline" => assert!(r.orth_error.is_none()),
            "cp" | "gs" | "hr" | "ls" => {
                let e = r.orth_error.unwrap();
                assert!(e < 1e-4, "{method}: ‖RRᵀ − I‖ = {e}");
            }
            "ogd" => assert!(r.orth_error.unwrap() < 1e-2, "ogd drift {:?}", r.orth_error),
            "sopt" => assert!(
                r.orth_error.unwrap() < 1e-4,
                "sopt small rotations {:?}",
                r.orth_error
            ),
            "or" | "upt" => {
                // Per layer, ‖RRᵀ − I‖_F at the first and the last evaluation (layers.csv).
                let layers =
                    std::fs::read_to_string(entry_dir(&out, &entry).join("layers.csv")).unwrap();
                let orth: Vec<(u64, String, f64)> = layers
                    .lines()
                    .skip(1)
                    .map(|l| {
                        let f: Vec<&str> = l.split(',').collect();
                        (
                            f[0].parse().unwrap(),
                            f[1].to_string(),
                            f[8].parse().unwrap(),
                        )
                    })
                    .collect();
                let at = |it: u64| -> Vec<f64> {
                    orth.iter().filter(|o| o.0 == it).map(|o| o.2).collect()
                };
                let (start, end) = (at(0), at(orth.last().unwrap().0));
                assert_eq!(start.len(), 7, "{method}: {layers}");
                for (s, e) in start.iter().zip(&end) {
                    if method == "or" {
                        // R starts N(0, 1): far from orthogonal; the penalty pulls it in.
                        assert!(*s > 1.0 && e < s, "or: ‖RRᵀ − I‖ {s} → {e}");
                    } else {
                        // UPT's R starts at the identity and is free to leave it.
                        assert!(*s == 0.0 && *e > 1e-6, "upt: ‖RRᵀ − I‖ {s} → {e}");
                    }
                }
            }
            other => panic!("no check for method {other}"),
        }
    }
}
