//! The report: aggregation over seeds against hand-computed values, the CSV and markdown files
//! against golden files, and the SVG plots parsed back.
//!
//! Golden files live in `tests/golden/`; after an intended change, regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p opt-stages --test report` and review the diff.

use opt_stages::report::{self, CurvePoint, LayerSummary, Provenance, ResultRow, RunRecord};
use std::path::Path;

fn row(cell: &str, index: usize, method: &str, label: &str, seed: u64, err: f64) -> ResultRow {
    let acc = 1.0 - err / 100.0;
    ResultRow {
        recipe: "ablation".into(),
        cell: cell.into(),
        index,
        params: vec![
            ("method.name".into(), method.into()),
            ("schedule.lr".into(), "0.1".into()),
        ],
        dataset: "cifar-100".into(),
        model: "cnn6-w64".into(),
        method: method.into(),
        method_label: label.into(),
        seed,
        iterations: 1000,
        test_acc: acc,
        test_err: err,
        best_test_acc: acc + 0.01,
        best_test_err: err - 1.0,
        best_iteration: 900,
        test_top5: Some(0.75),
        test_loss: 1.5,
        // A validation split in the first cell only: the column is empty elsewhere.
        val_acc: (method == "baseline").then_some(acc - 0.02),
        energy_s1: 0.5 + seed as f64 * 0.01,
        orth_error: (method != "baseline").then_some(1e-6 * (seed + 1) as f64),
        layers: vec![
            LayerSummary {
                layer: "conv1_0".into(),
                energy_s1: 0.4,
                orth_error: (method != "baseline").then_some(1e-6),
            },
            LayerSummary {
                layer: "fc6".into(),
                energy_s1: 0.6,
                orth_error: (method != "baseline").then_some(2e-6),
            },
        ],
        train_seconds: 100.0,
        images_per_sec: 1280.0,
        ms_per_step: 100.0,
        device: "cpu".into(),
        provenance: Provenance {
            recipe_file: "recipes/ablations/methods.toml".into(),
            recipe_hash: format!("{:064x}", index * 10 + seed as usize),
            fetch_key: "f".repeat(64),
            preprocess_key: "p".repeat(64),
            train_key: format!("{:064x}", 1000 + index * 10 + seed as usize),
            evaluate_key: "e".repeat(64),
            git_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            command: format!("opt run recipes/ablations/methods.toml --cell {index}"),
        },
    }
}

/// Two cells with three seeds each and one with a single seed.
fn runs() -> Vec<RunRecord> {
    let mut out = Vec::new();
    let cells = [
        (
            "name=baseline",
            "baseline",
            "Baseline",
            vec![40.0, 42.0, 44.0],
        ),
        ("name=gs", "gs", "OPT (GS)", vec![38.0, 39.0, 41.0]),
        ("name=cp", "cp", "OPT (CP)", vec![39.5]),
    ];
    let mut index = 0;
    for (cell, method, label, errs) in cells {
        for (seed, err) in errs.into_iter().enumerate() {
            let r = row(cell, index, method, label, seed as u64, err);
            let curve = (1..=4)
                .map(|k| CurvePoint {
                    iteration: 250 * k,
                    test_err: err + 10.0 * (4 - k) as f64,
                    energy_s1: Some(r.energy_s1),
                })
                .collect();
            out.push(RunRecord { row: r, curve });
            index += 1;
        }
    }
    out
}

fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from the golden file at line {}:\n  golden: {:?}\n  actual: {:?}",
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

#[test]
fn summary_is_the_mean_and_sample_std_over_seeds() {
    let rows: Vec<ResultRow> = runs().into_iter().map(|r| r.row).collect();
    let cells = report::summarize(&rows);
    assert_eq!(cells.len(), 3);
    // baseline: 40, 42, 44 → mean 42, sample variance (4 + 0 + 4)/2 = 4, std 2.
    assert_eq!(cells[0].cell, "name=baseline");
    assert_eq!(cells[0].seeds, vec![0, 1, 2]);
    assert!((cells[0].test_err.0 - 42.0).abs() < 1e-12);
    assert!((cells[0].test_err.1.unwrap() - 2.0).abs() < 1e-12);
    // gs: 38, 39, 41 → mean 39.333…, deviations −4/3, −1/3, 5/3: variance (16+1+25)/9/2 = 7/3.
    assert!((cells[1].test_err.0 - 118.0 / 3.0).abs() < 1e-12);
    assert!((cells[1].test_err.1.unwrap() - (7.0f64 / 3.0).sqrt()).abs() < 1e-12);
    // Accuracy is the complement, with the same spread (as a fraction).
    assert!((cells[1].test_acc.0 - (1.0 - 118.0 / 300.0)).abs() < 1e-12);
    assert!((cells[1].test_acc.1.unwrap() - (7.0f64 / 3.0).sqrt() / 100.0).abs() < 1e-12);
    // One seed: no spread.
    assert_eq!(cells[2].test_err, (39.5, None));
    // Orthogonality error: the largest over seeds; none for plain training.
    assert_eq!(cells[0].orth_error, None);
    assert!((cells[1].orth_error.unwrap() - 3e-6).abs() < 1e-18);
}

#[test]
fn csv_and_markdown_match_the_golden_files() {
    let runs = runs();
    let rows: Vec<ResultRow> = runs.iter().map(|r| r.row.clone()).collect();
    let cells = report::summarize(&rows);
    let results = String::from_utf8(report::results_csv(&rows).unwrap()).unwrap();
    let summary = String::from_utf8(report::summary_csv(&cells).unwrap()).unwrap();
    let plots = vec![
        "test_error.svg".to_string(),
        "energy.svg".to_string(),
        "final_error.svg".to_string(),
    ];
    let md = report::markdown("ablation", &rows, &cells, &plots);
    check_golden("results.csv", &results);
    check_golden("summary.csv", &summary);
    check_golden("results.md", &md);

    // The paper-style table: the lowest mean error of its column in bold, std beside it.
    let paper = report::paper_table(&cells);
    assert!(
        paper.contains("| OPT (GS) (lr=0.1) | **39.33 ± 1.53** |"),
        "{paper}"
    );
    assert!(
        paper.contains("| Baseline (lr=0.1) | 42.00 ± 2.00 |"),
        "{paper}"
    );
    assert!(paper.contains("| OPT (CP) (lr=0.1) | 39.50 |"), "{paper}");

    // Every CSV row parses back with the header's width, and carries its provenance.
    let mut r = csv::Reader::from_reader(results.as_bytes());
    let header = r.headers().unwrap().clone();
    for needed in [
        "method.name",
        "schedule.lr",
        "energy_s1.fc6",
        "orth_error.conv1_0",
        "git_commit",
        "train_key",
        "command",
    ] {
        assert!(
            header.iter().any(|h| h == needed),
            "{needed} missing from {header:?}"
        );
    }
    assert_eq!(r.records().count(), 7);
}

fn svg(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Polylines drawn as data series (the axes and ticks are 1 px wide; series 2 px).
fn series(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .map(|n| n.attribute("stroke").unwrap_or("").to_string())
        .collect()
}

#[test]
fn plots_are_svg_with_one_series_per_cell() {
    let dir = tempfile::tempdir().unwrap();
    let files = report::write(dir.path(), "ablation", &runs()).unwrap();
    assert!(
        files.contains(&"plots/test_error.svg".to_string()),
        "{files:?}"
    );
    for name in ["test_error.svg", "energy.svg"] {
        let text = svg(&dir.path().join("plots").join(name));
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(doc.root_element().has_tag_name("svg"));
        let lines = series(&doc);
        assert_eq!(lines.len(), 3, "{name}: one line per cell, found {lines:?}");
        let mut colours = lines.clone();
        colours.dedup();
        assert_eq!(colours.len(), 3, "{name}: each cell its own colour");
        let texts: String = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        for cell in ["name=baseline", "name=gs", "name=cp"] {
            assert!(texts.contains(cell), "{name}: legend lacks {cell}");
        }
    }
    // The test-error line of a cell averages its seeds: 4 points, each 4 evaluations.
    let text = svg(&dir.path().join("plots/test_error.svg"));
    let doc = roxmltree::Document::parse(&text).unwrap();
    let points = doc
        .descendants()
        .find(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .and_then(|n| n.attribute("points"))
        .unwrap()
        .split_whitespace()
        .count();
    assert_eq!(points, 4);

    // Bars: one per cell; seeds as points (3 + 3 + 1); error bars where there is a spread.
    let text = svg(&dir.path().join("plots/final_error.svg"));
    let doc = roxmltree::Document::parse(&text).unwrap();
    let filled =
        |n: &roxmltree::Node| n.has_tag_name("circle") && n.attribute("fill") != Some("none");
    assert_eq!(doc.descendants().filter(filled).count(), 7);
    // The error bar's own mark (a hollow circle at the mean) only where seeds spread.
    let hollow =
        |n: &roxmltree::Node| n.has_tag_name("circle") && n.attribute("fill") == Some("none");
    assert_eq!(doc.descendants().filter(hollow).count(), 2);
    let bars = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("opacity") == Some("0.6"))
        .count();
    assert_eq!(bars, 3);

    // results.md links the plots it was written with.
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    assert!(md.contains("(plots/final_error.svg)"), "{md}");
}
