//! Every recipe shipped in `recipes/` loads and resolves (a typo in one is a test failure).

use opt_pipeline::grid::expand;
use opt_pipeline::plan::resolve;
use opt_pipeline::recipe::{load, SourceKind};
use std::path::{Path, PathBuf};

fn recipes(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            recipes(&p, out);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("toml" | "yaml" | "yml")
        ) {
            out.push(p);
        }
    }
}

#[test]
fn all_shipped_recipes_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut files = Vec::new();
    recipes(&root, &mut files);
    assert!(files.len() >= 20, "found only {} recipes", files.len());
    // An IDX directory (empty files: keys only fingerprint them) for recipes with local data.
    let data = tempfile::tempdir().unwrap();
    for stem in opt_stages::data::fetch::IDX_FILES {
        std::fs::write(data.path().join(stem), b"").unwrap();
    }
    let mut methods = std::collections::BTreeSet::new();
    for f in &files {
        let loaded = load(f, &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        // Local data need not be on this machine: point it at an existing directory.
        let overrides = if loaded.recipe.dataset.source == SourceKind::Local {
            vec![format!("dataset.path={}", data.path().display())]
        } else {
            vec![]
        };
        let plan = resolve(&load(f, &overrides).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        plan.keys()
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        methods.insert(plan.train.method.name());
        // Every cell of a grid resolves too.
        let grid = expand(f, &overrides).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for entry in &grid.entries {
            entry
                .plan
                .keys()
                .unwrap_or_else(|e| panic!("{} cell {}: {e}", f.display(), entry.cell));
            methods.insert(entry.plan.train.method.name());
        }
        if f.parent().is_some_and(|d| d.ends_with("ablations")) {
            assert!(
                grid.is_grid(),
                "{}: an ablation without a grid",
                f.display()
            );
        }
    }
    for m in opt_stages::training::model::MethodConfig::NAMES {
        assert!(methods.contains(m), "no shipped recipe uses method {m}");
    }
}

/// The paper's comparisons: grids over three seeds, each cell a resolvable run, covering the
/// methods, regularisers and networks each table needs.
#[test]
fn paper_recipes_cover_their_tables() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/paper");
    let labels = |file: &str| -> (Vec<String>, std::collections::BTreeSet<String>) {
        let grid = expand(&dir.join(file), &[]).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(grid.seeds, [0, 1, 2], "{file}");
        let rows = grid
            .entries
            .iter()
            .map(|e| e.plan.train.method_label())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let models = grid
            .entries
            .iter()
            .map(|e| e.plan.train.model.describe())
            .collect();
        (rows, models)
    };
    let (rows, models) = labels("methods.toml");
    for row in [
        "Baseline",
        "UPT",
        "MHE (s=0)",
        "HS-MHE (s=0)",
        "OPT (CP)",
        "OPT (GS)",
        "OPT (HR)",
        "OPT (LS)",
        "OPT (OGD)",
        "OPT (OR)",
        "S-OPT (GS, 16 ch)",
    ] {
        assert!(
            rows.iter().any(|r| r == row),
            "methods.toml lacks {row}: {rows:?}"
        );
    }
    assert_eq!(rows.len(), 11);
    assert_eq!(models, ["cnn6-w64", "cnn9-w64"].map(String::from).into());
    let (rows, models) = labels("architectures.toml");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(
        models,
        ["cnn6-w64", "cnn9-w64", "resnet20-w16", "resnet32-w16"]
            .map(String::from)
            .into()
    );
    let (rows, models) = labels("width.toml");
    assert!(rows.len() >= 3 && models.len() == 4, "{rows:?} {models:?}");
    let (rows, _) = labels("sopt_budget.toml");
    assert!(
        rows.len() >= 5 && rows.iter().all(|r| r.starts_with("S-OPT")),
        "{rows:?}"
    );
}
