//! The report: aggregation over seeds against hand-computed values, the CSV and markdown files
//! against golden files, and the SVG plots parsed back.
//!
//! Golden files live in `tests/golden/`; after an intended change, regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p opt-stages --test report` and review the diff.

use opt_stages::report::{
    self, CurvePoint, LayerMetrics, Provenance, ResultRow, RunRecord, TrainSample,
};
use std::path::Path;

fn layer(name: &str, energy_s1: f64, orth_error: Option<f64>) -> LayerMetrics {
    LayerMetrics {
        layer: name.into(),
        energy_s0: energy_s1 + 1.0,
        energy_s1,
        energy_s2: energy_s1 / 2.0,
        half_energy_s0: energy_s1 + 2.0,
        half_energy_s1: energy_s1 * 3.0,
        half_energy_s2: energy_s1 / 4.0,
        orth_error,
    }
}

fn row(cell: &str, index: usize, method: &str, label: &str, seed: u64, err: f64) -> ResultRow {
    let acc = 1.0 - err / 100.0;
    // A validation split in the first cell only: its columns are empty elsewhere.
    let has_val = method == "baseline";
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
        best_iteration: has_val.then_some(750),
        best_val_acc: has_val.then_some(acc - 0.01),
        test_acc_at_best: has_val.then_some(acc + 0.005),
        test_err_at_best: has_val.then_some(err - 0.5),
        test_top5: Some(0.75),
        test_loss: 1.5,
        val_acc: has_val.then_some(acc - 0.02),
        energy_s1: 0.5 + seed as f64 * 0.01,
        orth_error: (method != "baseline").then_some(1e-6 * (seed + 1) as f64),
        layers: vec![
            layer("conv1_0", 0.4, (method != "baseline").then_some(1e-6)),
            layer("fc6", 0.6, (method != "baseline").then_some(2e-6)),
        ],
        train_seconds: 100.0,
        images_per_sec: 1280.0,
        ms_per_step: 100.0,
        device: "cpu".into(),
        ops: "fused".into(),
        map_route: "exact".into(),
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

/// Two cells with three seeds each and one with a single seed; evaluations at 0, 250, …,
/// 1000 (the baseline's energy grows, the OPT cells' stays put, as rotations keep it); 1000
/// training steps at lr 0.1, then 0.01 from step 501.
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
            let growth = if method == "baseline" {
                0.01 * (1 + seed) as f64
            } else {
                0.0
            };
            let curve = (0..=4)
                .map(|k| CurvePoint {
                    iteration: 250 * k,
                    test_err: err + 10.0 * (4 - k) as f64,
                    val_err: (method == "baseline").then_some(err + 1.0),
                    energy_s1: Some(r.energy_s1 + growth * k as f64),
                })
                .collect();
            let train = (1..=1000u64)
                .map(|i| TrainSample {
                    iteration: i,
                    lr: if i <= 500 { 0.1 } else { 0.01 },
                    loss: 2.0 + seed as f64 - i as f64 / 1000.0,
                })
                .collect();
            out.push(RunRecord {
                row: r,
                curve,
                train,
            });
            index += 1;
        }
    }
    out
}

/// Rounds every decimal number written with more than 10 decimals in `text` to 10 decimal
/// places (`1.2000000000000002` → `1.2`), leaving formatted numbers (`42.00`), hex keys, names
/// and integers alone: the snapshots pin what the tables say, not the
/// last bit of float arithmetic (the exact values are checked against hand-computed ones in
/// `summary_is_the_mean_and_sample_std_over_seeds`).
fn round_floats(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let decimals = token.split_once('.').map_or(0, |(_, f)| f.len());
        let is_decimal = decimals > 10
            && token
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-'))
            && token
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '-');
        match token.parse::<f64>() {
            Ok(v) if is_decimal => {
                let r = (v * 1e10).round() / 1e10;
                out.push_str(&format!("{r}"));
            }
            _ => out.push_str(token),
        }
        token.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || (c == '-' && token.is_empty()) {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// Compares `actual`, floats rounded, with the snapshot `tests/golden/<name>`
/// (`UPDATE_EXPECT=1 cargo test` rewrites it; read the diff before committing).
fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    expect_test::expect_file![path].assert_eq(&round_floats(actual));
}

#[test]
fn round_floats_rounds_decimals_only() {
    assert_eq!(
        round_floats("a,1.2000000000000002,0.30000000000000004,ff01.5,3,-0.1250000000001,x"),
        "a,1.2,0.3,ff01.5,3,-0.125,x"
    );
    assert_eq!(
        round_floats("| 42.00 | 1.7999999999999998 |"),
        "| 42.00 | 1.8 |"
    );
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
    check_golden("results.tex", &report::paper_latex("ablation", &cells));

    // The paper-style table: paper labels, dataset and architecture as the paper writes them,
    // the lowest mean error of its column in bold, std and the number of seeds beside it.
    let paper = report::paper_table(&cells);
    assert!(
        paper.starts_with("| method | CIFAR-100, CNN-6 (64) |"),
        "{paper}"
    );
    assert!(
        paper.contains("| OPT (GS) (lr=0.1) | **39.33 ± 1.53** (n = 3) |"),
        "{paper}"
    );
    assert!(
        paper.contains("| Baseline (lr=0.1) | 42.00 ± 2.00 (n = 3) |"),
        "{paper}"
    );
    assert!(
        paper.contains("| OPT (CP) (lr=0.1) | 39.50 (n = 1) |"),
        "{paper}"
    );

    // Every CSV row parses back with the header's width, and carries its provenance and every
    // layer's energies.
    let mut r = csv::Reader::from_reader(results.as_bytes());
    let header = r.headers().unwrap().clone();
    for needed in [
        "method.name",
        "schedule.lr",
        "energy_s0.conv1_0",
        "energy_s1.fc6",
        "energy_s2.fc6",
        "half_energy_s0.fc6",
        "half_energy_s1.fc6",
        "half_energy_s2.fc6",
        "orth_error.conv1_0",
        "best_val_acc",
        "test_acc_at_best",
        "git_commit",
        "train_key",
        "command",
    ] {
        assert!(
            header.iter().any(|h| h == needed),
            "{needed} missing from {header:?}"
        );
    }
    let records: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), 7);
    // Raw values in the machine-readable file: 3 · 0.6 for fc6's half-space s = 1 energy.
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let half: f64 = records[0][col("half_energy_s1.fc6")].parse().unwrap();
    assert_eq!(half, 0.6 * 3.0);
    // The best evaluation only where validation chose it.
    assert_eq!(&records[0][col("best_iteration")], "750");
    assert_eq!(&records[3][col("best_iteration")], "");
}

#[test]
fn latex_table_is_booktabs_with_escaped_labels() {
    let rows: Vec<ResultRow> = runs().into_iter().map(|r| r.row).collect();
    let cells = report::summarize(&rows);
    let tex = report::paper_latex("50% of_data & more", &cells);
    for needed in [
        "\\toprule",
        "\\midrule",
        "\\bottomrule",
        "\\begin{tabular}{lr}",
        "Method & CIFAR-100, CNN-6 (64) \\\\",
        "OPT (GS) (lr=0.1) & \\textbf{39.33} $\\pm$ 1.53 ($n=3$) \\\\",
        "OPT (CP) (lr=0.1) & 39.50 ($n=1$) \\\\",
        "50\\% of\\_data \\& more",
    ] {
        assert!(tex.contains(needed), "{needed} missing from\n{tex}");
    }
    // Booktabs only: no vertical rules or \hline.
    assert!(!tex.contains("\\hline") && !tex.contains('|'), "{tex}");
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

/// The `(x, y)` pixels of a polyline's points.
fn points(node: &roxmltree::Node) -> Vec<(f64, f64)> {
    node.attribute("points")
        .unwrap_or("")
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

fn texts<'a>(doc: &'a roxmltree::Document) -> Vec<(f64, f64, &'a str)> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| {
            let x = n.attribute("x")?.parse().ok()?;
            let y = n.attribute("y")?.parse().ok()?;
            Some((x, y, n.text()?.trim()))
        })
        .collect()
}

/// Okabe–Ito without yellow, Tol's wine and indigo (the palette the plots promise).
const SAFE: [&str; 9] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#882255",
    "#332288",
];

const LABELS: [&str; 3] = [
    "Baseline (lr=0.1)",
    "OPT (GS) (lr=0.1)",
    "OPT (CP) (lr=0.1)",
];

#[test]
fn plots_have_paper_labels_outside_the_data_safe_colours_and_bands() {
    let dir = tempfile::tempdir().unwrap();
    let files = report::write(dir.path(), "ablation", &runs()).unwrap();
    for f in [
        "results.tex",
        "plots/test_error.svg",
        "plots/energy.svg",
        "plots/train_loss.svg",
        "plots/lr.svg",
        "plots/final_error.svg",
    ] {
        assert!(files.contains(&f.to_string()), "{f} not in {files:?}");
    }
    for name in ["test_error.svg", "energy.svg", "train_loss.svg", "lr.svg"] {
        let text = svg(&dir.path().join("plots").join(name));
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(doc.root_element().has_tag_name("svg"));
        let lines = series(&doc);
        assert_eq!(lines.len(), 3, "{name}: one line per cell, found {lines:?}");
        let mut colours = lines.clone();
        colours.sort();
        colours.dedup();
        assert_eq!(colours.len(), 3, "{name}: each cell its own colour");
        assert!(
            lines.iter().all(|c| SAFE.contains(&c.as_str())),
            "{name}: {lines:?} outside the colour-blind-safe palette"
        );
        // The legend: paper labels, right of every data point.
        let data_right = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
            .flat_map(|n| points(&n))
            .map(|p| p.0)
            .fold(0.0f64, f64::max);
        let texts = texts(&doc);
        for label in LABELS {
            let (x, _, _) = texts
                .iter()
                .find(|t| t.2 == label)
                .unwrap_or_else(|| panic!("{name}: legend lacks {label}: {texts:?}"));
            assert!(*x > data_right, "{name}: legend at x = {x} overlaps data");
        }
        // Integer iteration ticks: the lowest row of numbers, below the plotting area.
        let numbers = texts.iter().filter(|t| t.2.parse::<f64>().is_ok());
        let axis_y = numbers.clone().map(|t| t.1).fold(0.0f64, f64::max);
        let ticks: Vec<&str> = numbers.filter(|t| t.1 == axis_y).map(|t| t.2).collect();
        assert!(ticks.len() >= 3, "{name}: x ticks {ticks:?}");
        assert!(
            ticks.iter().all(|t| t.parse::<u64>().is_ok()),
            "{name}: {ticks:?}"
        );
        // ± std bands: the two cells with three seeds, none for the single-seed cell or where
        // seeds agree (the learning rate; the OPT cells' unchanged energy).
        let bands: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polygon") && n.attribute("opacity") == Some("0.2"))
            .map(|n| n.attribute("fill").unwrap_or(""))
            .collect();
        let expected = match name {
            "lr.svg" => vec![],
            "energy.svg" => vec![lines[0].as_str()],
            _ => vec![lines[0].as_str(), lines[1].as_str()],
        };
        assert_eq!(bands, expected, "{name}: bands");
    }

    // Curves start at iteration 0: the test-error line has the 5 evaluations 0 … 1000.
    let text = svg(&dir.path().join("plots/test_error.svg"));
    let doc = roxmltree::Document::parse(&text).unwrap();
    let lines: Vec<Vec<(f64, f64)>> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .map(|n| points(&n))
        .collect();
    assert_eq!(lines[0].len(), 5);
    // Energy as the change from iteration 0: the OPT cells' constant energy is a flat line
    // (every point at one height), the baseline's growing energy rises (smaller y) from it.
    let text = svg(&dir.path().join("plots/energy.svg"));
    let doc = roxmltree::Document::parse(&text).unwrap();
    let lines: Vec<Vec<(f64, f64)>> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .map(|n| points(&n))
        .collect();
    for flat in &lines[1..] {
        assert!(flat.iter().all(|p| p.1 == flat[0].1), "{flat:?}");
    }
    let (base, gs) = (&lines[0], &lines[1]);
    assert_eq!(base[0].1, gs[0].1, "both start at ΔE = 0");
    assert!(base[4].1 < base[0].1 - 100.0, "{base:?}");
    // The learning rate is a step function: 0.1 for steps 1–500, 0.01 after (4 points).
    let text = svg(&dir.path().join("plots/lr.svg"));
    let doc = roxmltree::Document::parse(&text).unwrap();
    let lr = doc
        .descendants()
        .find(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"))
        .map(|n| points(&n))
        .unwrap();
    assert_eq!(lr.len(), 4, "{lr:?}");
    assert!(lr[0].1 == lr[1].1 && lr[1].0 == lr[2].0 && lr[2].1 > lr[1].1);

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
    let bars: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("opacity") == Some("0.6"))
        .map(|n| n.attribute("fill").unwrap_or(""))
        .collect();
    assert_eq!(bars, SAFE[..3].to_vec());
    let texts = texts(&doc);
    assert!(LABELS.iter().all(|l| texts.iter().any(|t| t.2 == *l)));

    // results.md links the plots it was written with.
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    assert!(md.contains("(plots/final_error.svg)"), "{md}");
    assert!(md.contains("(plots/train_loss.svg)"), "{md}");
}

/// A run recorded with `write_run` reads back: its row, its evaluations (with validation) and
/// its training steps; the per-layer file is copied beside it.
#[test]
fn a_recorded_run_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let curves = src.join("curves.csv");
    std::fs::write(
        &curves,
        "iteration,lr,train_loss,train_acc,test_loss,test_top1,test_top5,val_loss,val_top1,energy_s1,orth_error\n\
         0,,,,2.3,0.1,0.5,2.3,0.125,0.7,\n\
         1,0.1,2.2,0.2,,,,,,,\n\
         2,0.1,2.1,0.3,2.0,0.4,0.8,2.0,0.375,0.75,1e-6\n",
    )
    .unwrap();
    let layers = src.join("layers.csv");
    std::fs::write(&layers, "iteration,layer\n0,conv1_0\n").unwrap();
    let row = runs().remove(0).row;
    let run_dir = dir.path().join("run");
    report::write_run(&run_dir, &row, &[&curves, &layers]).unwrap();
    assert!(run_dir.join("layers.csv").is_file());
    let back = report::read_run(&run_dir).unwrap();
    assert_eq!(back.row, row);
    assert_eq!(
        back.curve,
        vec![
            CurvePoint {
                iteration: 0,
                test_err: 90.0,
                val_err: Some(87.5),
                energy_s1: Some(0.7)
            },
            CurvePoint {
                iteration: 2,
                test_err: 60.0,
                val_err: Some(62.5),
                energy_s1: Some(0.75)
            },
        ]
    );
    assert_eq!(
        back.train,
        vec![
            TrainSample {
                iteration: 1,
                lr: 0.1,
                loss: 2.2
            },
            TrainSample {
                iteration: 2,
                lr: 0.1,
                loss: 2.1
            },
        ]
    );
}
