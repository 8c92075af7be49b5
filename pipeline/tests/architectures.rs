//! Every architecture trains under standard training, OPT, S-OPT and the MHE regulariser
//! (one tiny grid on the embedded Fashion-MNIST subset, through the `orthopt` binary), lowers
//! its loss, keeps OPT's rotations orthogonal, and `orthopt report` lays the grid out as the
//! paper does: methods as rows, networks as columns.

mod common;

use common::{run_ok, write};

const RECIPE: &str = r#"
name = "archs"
[dataset]
source = "embedded"
train_limit = 640
test_limit = 100
[model]
bn_decay = 0.9
[schedule]
lr = 0.05
milestones = [60]
iterations = 80
batch_size = 32
eval_every = 40
[augment]
pad = 0
flip = false
[run]
device = "cpu"
checkpoint_every = 0
eval_batch = 100

# One variant per (network, method) pair worth a run: the regulariser's weights are small so
# the recorded loss (data + regulariser) still shows the fit.
[grid]
variant = [
    { model = { arch = "cnn9", width = 8 }, method = { name = "baseline" } },
    { model = { arch = "cnn9", width = 8 }, regularizer = { kind = "half-mhe", power = 1, weight = 0.01, classifier_weight = 0.01 } },
    { model = { arch = "resnet", depth = 20, width = 4 }, method = { name = "baseline" } },
    { model = { arch = "resnet", depth = 20, width = 4, opt_shortcuts = true }, method = { name = "gs" } },
    { model = { arch = "resnet", depth = 20, width = 4 }, method = { name = "sopt", budget_channels = 2, episode_length = 30 } },
]
"#;

#[test]
fn every_architecture_trains_and_reports_methods_as_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(tmp.path(), "archs.toml", RECIPE);
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    run_ok(&[
        "run",
        &s(&recipe),
        "--cache",
        &s(&cache),
        "--out",
        &s(&out),
        "-q",
    ]);

    let mut cells = 0;
    for dir in std::fs::read_dir(out.join("cells")).unwrap() {
        let dir = dir.unwrap().path();
        let cell = dir.file_name().unwrap().to_string_lossy().to_string();
        cells += 1;
        // Each run lowered its training loss (window means of the first and last 10 steps).
        let curves = std::fs::read_to_string(dir.join("seed-0/curves.csv")).unwrap();
        let losses: Vec<f64> = curves
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(2).and_then(|v| v.parse().ok()))
            .collect();
        let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
        let last: f64 = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
        assert!(last < 0.8 * first, "{cell}: loss {first:.3} → {last:.3}");
        // Exact maps stay orthogonal in every network (S-OPT: its small rotations).
        let row: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("seed-0/row.json")).unwrap())
                .unwrap();
        if cell.ends_with("-gs") || cell.contains("-sopt-") {
            let e = row["orth_error"].as_f64().unwrap();
            assert!(e < 1e-4, "{cell}: ‖RRᵀ − I‖ = {e}");
        }
        // ResNet's projections are OPT layers here (`opt_shortcuts`), and are named readably.
        if cell.contains("resnet") && cell.ends_with("-gs") {
            let layers: Vec<&str> = row["layers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["orth_error"].is_number())
                .map(|l| l["layer"].as_str().unwrap())
                .collect();
            assert!(
                layers.contains(&"res2_0p") && layers.contains(&"res3_0p"),
                "{layers:?}"
            );
            assert_eq!(layers.len(), 19 + 2, "{layers:?}");
        }
    }
    assert_eq!(cells, 5);

    // The paper-style table: one row per method, one column per network.
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for label in [
        "| Baseline |",
        "| OPT (GS) |",
        "| S-OPT (GS, 2 ch) |",
        "| HS-MHE (s=1) |",
        "Fashion-MNIST, CNN-9 (8)",
        "Fashion-MNIST, ResNet-20 (4)",
        "Fashion-MNIST, ResNet-20 (4, opt-shortcuts)",
    ] {
        assert!(md.contains(label), "results.md lacks {label}:\n{md}");
    }
    // The per-layer columns name the layers readably.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    for layer in [
        "energy_s1.res3_0b",
        "orth_error.res2_0p",
        "energy_s1.conv3_2",
    ] {
        assert!(header.contains(layer), "no column {layer}");
    }
}

/// Architecture defaults resolve per network, keys of another architecture and impossible
/// depths are refused by name, and the CNN-6 train key does not see the new optional keys.
#[test]
fn model_keys_resolve_per_architecture() {
    use opt_pipeline::plan::resolve;
    use opt_pipeline::recipe::load;
    let tmp = tempfile::tempdir().unwrap();
    let plan = |model: &str| {
        let r = write(tmp.path(), "m.toml", &format!("[model]\n{model}\n"));
        load(&r, &[]).and_then(|l| resolve(&l))
    };
    let resnet = plan("arch = \"resnet\"").unwrap();
    let m = &resnet.train.model;
    assert_eq!(
        (m.width, m.depth, m.stage_widths()),
        (16, Some(20), [16, 32, 64])
    );
    assert_eq!(m.describe(), "resnet20-w16");
    let cnn9 = plan("arch = \"cnn9\"").unwrap();
    assert_eq!(cnn9.train.model.stage_widths(), [64, 128, 256]);
    let cnn6 = plan("arch = \"cnn6\"").unwrap();
    let json = serde_json::to_string(&cnn6.train.model).unwrap();
    assert!(!json.contains("depth") && !json.contains("opt_"), "{json}");
    assert!(cnn6.train.regularizer.is_none());
    for (model, key) in [
        ("arch = \"cnn6\"\ndepth = 20", "model.depth"),
        (
            "arch = \"cnn9\"\nopt_shortcuts = true",
            "model.opt_shortcuts",
        ),
        ("arch = \"resnet\"\nfc6_width = 10", "model.fc6_width"),
        ("arch = \"resnet\"\ndepth = 21", "model.depth"),
    ] {
        let err = plan(model).unwrap_err().to_string();
        assert!(err.contains(key), "{model}: {err}");
    }
}
