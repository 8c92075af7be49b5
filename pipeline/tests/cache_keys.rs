//! Which recipe fields change which stage's cache key.

mod common;

use common::{write, TINY};
use opt_pipeline::plan::{resolve, Keys};
use opt_pipeline::recipe::load;

fn keys(overrides: &[&str]) -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "tiny.toml", TINY);
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    resolve(&load(&p, &o).unwrap()).unwrap().keys().unwrap()
}

/// `[fetch, preprocess, train, evaluate]` changed?
fn changed(overrides: &[&str]) -> [bool; 4] {
    let a = keys(&[]);
    let b = keys(overrides);
    [
        a.fetch != b.fetch,
        a.preprocess != b.preprocess,
        a.train != b.train,
        a.evaluate != b.evaluate,
    ]
}

#[test]
fn each_field_changes_only_the_stages_that_depend_on_it() {
    assert_eq!(changed(&[]), [false; 4], "keys are deterministic");
    // The decoded dataset is shared by every recipe on it: limits, normalisation and the
    // validation split are views applied by train, so only train and evaluate change.
    assert_eq!(
        changed(&["dataset.train_limit=200"]),
        [false, false, true, true]
    );
    assert_eq!(
        changed(&["dataset.normalization=per-channel"]),
        [false, false, true, true]
    );
    assert_eq!(
        changed(&["dataset.validation=16"]),
        [false, false, true, true]
    );
    assert_eq!(changed(&["schedule.lr=0.02"]), [false, false, true, true]);
    assert_eq!(
        changed(&["schedule.iterations=7"]),
        [false, false, true, true]
    );
    assert_eq!(changed(&["model.width=8"]), [false, false, true, true]);
    assert_eq!(changed(&["run.seed=8"]), [false, false, true, true]);
    assert_eq!(changed(&["augment.flip=false"]), [false, false, true, true]);
    assert_eq!(
        changed(&["loss.kind=cross-entropy"]),
        [false, false, true, true]
    );
    assert_eq!(changed(&["run.eval_batch=32"]), [false, false, false, true]);
    // How a run is executed does not change what it computes.
    assert_eq!(changed(&["run.checkpoint_every=50"]), [false; 4]);
    assert_eq!(changed(&["run.threads=1"]), [false; 4]);
    assert_eq!(changed(&["name=other"]), [false; 4]);
    assert_eq!(changed(&["report.print_table=false"]), [false; 4]);
}

#[test]
fn local_data_is_keyed_by_its_content_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir(&data).unwrap();
    for stem in opt_stages::data::fetch::IDX_FILES {
        std::fs::write(data.join(stem), b"x").unwrap();
    }
    let p = write(
        dir.path(),
        "r.toml",
        "[dataset]\nsource = \"local\"\npath = \"d\"\n",
    );
    let k1 = resolve(&load(&p, &[]).unwrap()).unwrap().keys().unwrap();
    std::fs::write(data.join(opt_stages::data::fetch::IDX_FILES[0]), b"xy").unwrap();
    let k2 = resolve(&load(&p, &[]).unwrap()).unwrap().keys().unwrap();
    assert_ne!(
        k1.fetch, k2.fetch,
        "changed data must not hit the old cache entry"
    );
}
