//! The OPT family beyond the paper (expm, Cayley–Neumann, block, POET) trains on the embedded
//! Fashion-MNIST subset well above chance, and its rotations stay as orthogonal as each
//! parameterization promises (layers.csv's per-layer `‖RRᵀ − I‖_F`).

mod common;

use common::write;
use opt_pipeline::grid::GridEntry;
use opt_pipeline::plan::resolve;
use opt_pipeline::recipe::load;
use opt_pipeline::runner::{entry_dir, run, RunContext, RunResult};
use opt_pipeline::store::ArtifactStore;
use opt_stages::Silent;

/// The slow tier's method recipe (`methods.rs`): 200 iterations of a width-8 CNN-6.
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
fn every_family_method_lowers_the_loss_beats_chance_and_stays_orthogonal() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let recipe = write(tmp.path(), "m.toml", RECIPE);
    for (method, sets, max_orth) in [
        ("expm", vec![], 1e-3),
        // The plain parameterization drifts (reported, bounded); merges keep it orthogonal.
        ("cayley_neumann", vec![], 1.0),
        ("cayley_neumann", vec!["method.merge_every=50"], 1e-3),
        ("block", vec!["method.base=\"gs\""], 1e-4),
        ("block", vec!["method.base=\"expm\""], 1e-3),
        // Four merges of both sides during the run.
        (
            "poet",
            vec!["method.merge_every=50", "method.block_size=16"],
            1e-2,
        ),
        (
            "poet",
            vec!["method.merge_every=50", "method.base=\"cp\""],
            1e-4,
        ),
    ] {
        let mut all = vec![format!("method.name={method}")];
        all.extend(sets.iter().map(|s| s.to_string()));
        let plan = resolve(&load(&recipe, &all).unwrap()).unwrap();
        let store = ArtifactStore::new(&cache);
        let out = tmp.path().join(all.join("-").replace(['"', '='], "_"));
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
            "{all:?}: test accuracy {} after 200 iterations",
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
        assert!(last < 0.7 * first, "{all:?}: loss {first:.3} → {last:.3}");
        let e = r.orth_error.expect("an orthogonality error per layer");
        assert!(e < max_orth, "{all:?}: ‖RRᵀ − I‖ = {e:e}");
        eprintln!("{all:?}: test acc {:.3}, orth {e:.2e}", r.test_acc);
    }
}
