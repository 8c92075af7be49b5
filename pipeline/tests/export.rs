//! `orthopt export`: a trained run's model as a plain CNN-6 for PyTorch — names and shapes of
//! `bench/torch_cnn6.py`'s baseline, effective weights checked against the stored `P` and `W0`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{write, TINY};
use opt_pipeline::grid::GridEntry;
use opt_pipeline::plan::resolve;
use opt_pipeline::recipe::load;
use opt_pipeline::runner::{entry_dir, run, RunContext, RunResult};
use opt_pipeline::store::ArtifactStore;
use opt_stages::Silent;
use std::collections::HashMap;
use std::path::Path;

/// Trains the tiny recipe with `method` and returns (cache, the run's entry directory).
fn trained(tmp: &Path, method: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let recipe = write(tmp, "tiny.toml", TINY);
    let plan = resolve(&load(&recipe, &[format!("method.name={method}")]).unwrap()).unwrap();
    let cache = tmp.join("cache");
    let store = ArtifactStore::new(&cache);
    let out = tmp.join("run");
    let ctx = RunContext::new(&store, out.clone(), &Silent);
    let entry = GridEntry::single(plan);
    assert!(matches!(
        run(&entry, &ctx).unwrap(),
        RunResult::Finished { .. }
    ));
    (cache, entry_dir(&out, &entry))
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The PyTorch names and shapes of the tiny recipe's CNN-6 (1×28×28 input, width 4, 10
/// classes): `features` is conv, BN, ReLU per layer with a max-pool after every second.
fn expected_shapes() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for (i, conv) in [0, 3, 7, 10, 14, 17].into_iter().enumerate() {
        let c_in = if i == 0 { 1 } else { 4 };
        out.push((format!("features.{conv}.weight"), vec![4, c_in, 3, 3]));
        for t in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("features.{}.{t}", conv + 1), vec![4]));
        }
    }
    // fc6 covers the last 3×3 map (28 → 14 → 7 → 3); score is 1×1.
    out.push(("fc6.weight".into(), vec![4, 4, 3, 3]));
    out.push(("score.weight".into(), vec![10, 4, 1, 1]));
    out
}

#[test]
fn export_writes_effective_weights_under_pytorch_names() {
    let tmp = tempfile::tempdir().unwrap();
    // UPT: R = P as learned (from the identity), so W = P·W0 is a plain product to check.
    let (cache, run_dir) = trained(tmp.path(), "upt");
    let file = tmp.path().join("model.safetensors");
    let shapes = opt_pipeline::export::export(&run_dir, &cache, &file).unwrap();
    let mut expected = expected_shapes();
    assert_eq!(shapes, expected);

    // The file itself: exactly these names and shapes, f32, with the loader's metadata.
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut found: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{n}");
            (n, v.shape().to_vec())
        })
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], opt_stages::report::export::FORMAT);
    assert_eq!(meta["input"], "[1,28,28]");
    assert_eq!(meta["widths"], "[4,4,4]");
    assert_eq!(meta["bn_eps"], "0.001");
    assert_eq!(meta["method"], "UPT");
    // The official normalisation (x − 127.5)/128 as x·scale + shift.
    assert_eq!(meta["input_scale"], format!("[{}]", 1.0f32 / 128.0));

    // Effective weights against the trained P and W0: kernel = (P·W0)ᵀ reshaped to
    // [out, in, kh, kw] (row r = ci·9 + kh·3 + kw).
    let row: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("row.json")).unwrap()).unwrap();
    let key = row["provenance"]["train_key"].as_str().unwrap();
    let trained = tensors(&cache.join("train").join(key).join("model.safetensors"));
    let exported = tensors(&file);
    for (layer, torch, bn) in [
        ("conv1_0", "features.0", "features.1"),
        ("conv3_1", "features.17", "features.18"),
    ] {
        let p = &trained[&format!("{layer}.rotation")];
        let w0 = &trained[&format!("{layer}.w0_fix")];
        assert!(
            max_diff(
                p,
                &Tensor::eye(p.dim(0).unwrap(), DType::F32, &Device::Cpu).unwrap()
            ) > 1e-6,
            "{layer}: P moved from the identity in training"
        );
        let kernel = exported[&format!("{torch}.weight")].clone();
        let oracle = p
            .matmul(w0)
            .unwrap()
            .t()
            .unwrap()
            .reshape(kernel.dims())
            .unwrap();
        assert!(max_diff(&kernel, &oracle) < 1e-6, "{layer}");
        // Batch norm: γ, β and the moving statistics as they were trained.
        for (ours, theirs) in [
            ("gamma", "weight"),
            ("beta", "bias"),
            ("moving_mean", "running_mean"),
            ("moving_var", "running_var"),
        ] {
            let a = &trained[&format!("{layer}.bn.{ours}")];
            assert_eq!(max_diff(a, &exported[&format!("{bn}.{theirs}")]), 0.0);
        }
    }
    assert_eq!(
        max_diff(&trained["score.weight"], &exported["score.weight"]),
        0.0
    );

    // The same export from the train artifact directly.
    let again = tmp.path().join("again.safetensors");
    opt_pipeline::export::export(&cache.join("train").join(key), &cache, &again).unwrap();
    assert_eq!(
        max_diff(&tensors(&again)["fc6.weight"], &exported["fc6.weight"]),
        0.0
    );
}

#[test]
fn exported_gram_schmidt_weights_keep_the_neurons_geometry() {
    // W = R·W0 with R orthogonal: the neurons' Gram matrix WᵀW equals W0ᵀW0, whatever R is.
    let tmp = tempfile::tempdir().unwrap();
    let (cache, run_dir) = trained(tmp.path(), "gs");
    let file = tmp.path().join("model.safetensors");
    opt_pipeline::export::export(&run_dir, &cache, &file).unwrap();
    let row: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("row.json")).unwrap()).unwrap();
    let key = row["provenance"]["train_key"].as_str().unwrap();
    let trained = tensors(&cache.join("train").join(key).join("model.safetensors"));
    let exported = tensors(&file);
    let w0 = &trained["conv2_0.w0_fix"];
    let kernel = &exported["features.7.weight"];
    let k = kernel.flatten_from(1).unwrap(); // [n, d] = Wᵀ
    let gram = k.matmul(&k.t().unwrap()).unwrap();
    let gram0 = w0.t().unwrap().matmul(w0).unwrap();
    let scale: f32 = gram0
        .abs()
        .unwrap()
        .max_keepdim(0)
        .unwrap()
        .max(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    assert!(max_diff(&gram, &gram0) < 1e-4 * scale.max(1.0));
    // And it is not W0 itself: the rotation is applied.
    let w0_kernel = w0.t().unwrap().reshape(kernel.dims()).unwrap();
    assert!(max_diff(kernel, &w0_kernel) > 1e-3);
}

#[test]
fn export_names_what_it_cannot_find() {
    let tmp = tempfile::tempdir().unwrap();
    let err = opt_pipeline::export::export(tmp.path(), tmp.path(), &tmp.path().join("m"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither a run directory"), "{err}");
}
