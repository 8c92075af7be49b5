//! `results.csv`, `summary.csv` and `results.md`.

use super::{CellSummary, LayerMetrics, ResultRow};
use crate::{Result, StageError};
use std::fmt::Write as _;

fn csv_error(source: csv::Error) -> StageError {
    StageError::Internal(format!("cannot render a report table: {source}"))
}

/// Keys in order of first appearance over `lists`.
fn union<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in items {
        if !out.iter().any(|o| o == k) {
            out.push(k.to_string());
        }
    }
    out
}

/// The varied keys of `params` lists, in order of first appearance.
fn varied_keys<'a>(params: impl Iterator<Item = &'a [(String, String)]>) -> Vec<String> {
    union(params.flat_map(|p| p.iter().map(|(k, _)| k.as_str())))
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// A varied key's column name: the dotted key, or `grid.<key>` where that would collide with
/// a fixed column (varying whole sections: `grid.method = [{ name = "cp" }, ...]`).
fn column_name(key: &str) -> String {
    const FIXED: [&str; 6] = ["recipe", "cell", "seed", "dataset", "model", "method"];
    if FIXED.contains(&key) {
        format!("grid.{key}")
    } else {
        key.to_string()
    }
}

fn opt_num(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// One number of a layer's metrics.
type LayerValue = fn(&LayerMetrics) -> Option<f64>;

/// The per-layer columns of `results.csv`: every energy and the orthogonality error.
const LAYER_METRICS: [(&str, LayerValue); 7] = [
    ("energy_s0", |l| Some(l.energy_s0)),
    ("energy_s1", |l| Some(l.energy_s1)),
    ("energy_s2", |l| Some(l.energy_s2)),
    ("half_energy_s0", |l| Some(l.half_energy_s0)),
    ("half_energy_s1", |l| Some(l.half_energy_s1)),
    ("half_energy_s2", |l| Some(l.half_energy_s2)),
    ("orth_error", |l| l.orth_error),
];

/// One row per run: the varied keys as columns, results, per-layer energy and orthogonality
/// error, speed, device and provenance.
pub fn results_csv(rows: &[ResultRow]) -> Result<Vec<u8>> {
    let keys = varied_keys(rows.iter().map(|r| r.params.as_slice()));
    let layers = union(
        rows.iter()
            .flat_map(|r| r.layers.iter().map(|l| l.layer.as_str())),
    );
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = vec![
        "recipe".into(),
        "cell".into(),
        "index".into(),
        "seed".into(),
    ];
    header.extend(keys.iter().map(|k| column_name(k)));
    header.extend(
        [
            "dataset",
            "model",
            "method",
            "iterations",
            "test_acc",
            "test_err",
            "best_iteration",
            "best_val_acc",
            "test_acc_at_best",
            "test_err_at_best",
            "test_top5",
            "test_loss",
            "val_acc",
            "energy_s1",
            "orth_error",
        ]
        .map(String::from),
    );
    for (metric, _) in LAYER_METRICS {
        header.extend(layers.iter().map(|l| format!("{metric}.{l}")));
    }
    header.extend(
        [
            "train_seconds",
            "images_per_sec",
            "ms_per_step",
            "device",
            "ops",
            "map_route",
            "git_commit",
            "recipe_file",
            "recipe_hash",
            "fetch_key",
            "preprocess_key",
            "train_key",
            "evaluate_key",
            "command",
        ]
        .map(String::from),
    );
    w.write_record(&header).map_err(csv_error)?;
    for r in rows {
        let mut rec: Vec<String> = vec![
            r.recipe.clone(),
            r.cell.clone(),
            r.index.to_string(),
            r.seed.to_string(),
        ];
        rec.extend(keys.iter().map(|k| param(&r.params, k).to_string()));
        rec.extend([
            r.dataset.clone(),
            r.model.clone(),
            r.method.clone(),
            r.iterations.to_string(),
            r.test_acc.to_string(),
            r.test_err.to_string(),
            r.best_iteration.map(|i| i.to_string()).unwrap_or_default(),
            opt_num(r.best_val_acc),
            opt_num(r.test_acc_at_best),
            opt_num(r.test_err_at_best),
            opt_num(r.test_top5),
            r.test_loss.to_string(),
            opt_num(r.val_acc),
            r.energy_s1.to_string(),
            opt_num(r.orth_error),
        ]);
        let layer = |name: &str| r.layers.iter().find(|l| l.layer == name);
        for (_, value) in LAYER_METRICS {
            rec.extend(layers.iter().map(|l| opt_num(layer(l).and_then(value))));
        }
        let p = &r.provenance;
        rec.extend([
            r.train_seconds.to_string(),
            r.images_per_sec.to_string(),
            r.ms_per_step.to_string(),
            r.device.clone(),
            r.ops.clone(),
            r.map_route.clone(),
            p.git_commit.clone(),
            p.recipe_file.clone(),
            p.recipe_hash.clone(),
            p.fetch_key.clone(),
            p.preprocess_key.clone(),
            p.train_key.clone(),
            p.evaluate_key.clone(),
            p.command.clone(),
        ]);
        w.write_record(&rec).map_err(csv_error)?;
    }
    w.into_inner().map_err(|e| csv_error(e.into_error().into()))
}

/// One row per cell: mean and sample standard deviation over its seeds.
pub fn summary_csv(cells: &[CellSummary]) -> Result<Vec<u8>> {
    let keys = varied_keys(cells.iter().map(|c| c.params.as_slice()));
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = vec!["recipe".into(), "cell".into()];
    header.extend(keys.iter().map(|k| column_name(k)));
    header.extend(
        [
            "dataset",
            "model",
            "method",
            "seeds",
            "n",
            "test_err_mean",
            "test_err_std",
            "test_acc_mean",
            "test_acc_std",
            "test_err_at_best_mean",
            "test_err_at_best_std",
            "energy_s1_mean",
            "energy_s1_std",
            "orth_error_max",
            "images_per_sec_mean",
            "train_seconds_mean",
        ]
        .map(String::from),
    );
    w.write_record(&header).map_err(csv_error)?;
    for c in cells {
        let mut rec = vec![c.recipe.clone(), c.cell.clone()];
        rec.extend(keys.iter().map(|k| param(&c.params, k).to_string()));
        rec.extend([
            c.dataset.clone(),
            c.model.clone(),
            c.method.clone(),
            c.seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            c.seeds.len().to_string(),
            c.test_err.0.to_string(),
            opt_num(c.test_err.1),
            c.test_acc.0.to_string(),
            opt_num(c.test_acc.1),
            opt_num(c.test_err_at_best.map(|b| b.0)),
            opt_num(c.test_err_at_best.and_then(|b| b.1)),
            c.energy_s1.0.to_string(),
            opt_num(c.energy_s1.1),
            opt_num(c.orth_error),
            c.images_per_sec.to_string(),
            c.train_seconds.to_string(),
        ]);
        w.write_record(&rec).map_err(csv_error)?;
    }
    w.into_inner().map_err(|e| csv_error(e.into_error().into()))
}

/// `mean ± std` with `digits` decimals; the mean alone for a single seed.
fn pm((mean, std): (f64, Option<f64>), digits: usize) -> String {
    match std {
        Some(s) => format!("{mean:.digits$} ± {s:.digits$}"),
        None => format!("{mean:.digits$}"),
    }
}

fn bold_if(text: String, bold: bool) -> String {
    if bold {
        format!("**{text}**")
    } else {
        text
    }
}

/// Index of the smallest finite mean (the earliest among equals).
fn best(means: impl Iterator<Item = f64>) -> Option<usize> {
    means
        .enumerate()
        .filter(|(_, m)| m.is_finite())
        .fold(None, |b: Option<(usize, f64)>, (i, m)| match b {
            Some((_, bm)) if bm <= m => b,
            _ => Some((i, m)),
        })
        .map(|(i, _)| i)
}

/// Whether a varied key is shown by the paper-style table's columns or method names.
fn shown_elsewhere(key: &str) -> bool {
    key == "method"
        || key == "method.name"
        || key == "model"
        || key == "variant"
        || key == "regularizer"
        || key.starts_with("regularizer.")
        || key.starts_with("dataset.")
        || key.starts_with("model.")
}

/// A dataset as the paper writes it (`cifar-100` → `CIFAR-100`).
fn dataset_label(name: &str) -> String {
    match name {
        "cifar-100" => "CIFAR-100".into(),
        "cifar-10" => "CIFAR-10".into(),
        "mnist" => "MNIST".into(),
        "fashion-mnist" => "Fashion-MNIST".into(),
        other => other.into(),
    }
}

/// An architecture as the paper writes it (`cnn6-w64` → `CNN-6 (64)`,
/// `cnn6-32-64-128` → `CNN-6 (32/64/128)`, `cnn9-w64` → `CNN-9 (64)`, `resnet20-w16` →
/// `ResNet-20 (16)`).
fn model_label(name: &str) -> String {
    let (arch, rest) = if let Some(rest) = name.strip_prefix("cnn6-") {
        ("CNN-6".to_string(), rest)
    } else if let Some(rest) = name.strip_prefix("cnn9-") {
        ("CNN-9".to_string(), rest)
    } else if let Some((depth, rest)) = name
        .strip_prefix("resnet")
        .and_then(|r| r.split_once('-'))
        .filter(|(d, _)| d.parse::<usize>().is_ok())
    {
        (format!("ResNet-{depth}"), rest)
    } else {
        return name.into();
    };
    let widths = rest.strip_prefix('w').unwrap_or(rest);
    // Extra words (`opt-shortcuts`) follow the widths.
    let (widths, extra) = match widths.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (widths[..i].trim_end_matches('-'), Some(&widths[i..])),
        None => (widths, None),
    };
    match extra {
        Some(e) => format!("{arch} ({}, {e})", widths.replace('-', "/")),
        None => format!("{arch} ({})", widths.replace('-', "/")),
    }
}

/// The paper-style table's layout: which cell sits in which (row, column), and the best
/// (lowest mean error) cell of each column.
struct PaperGrid {
    columns: Vec<String>,
    rows: Vec<String>,
    /// `entry[row][column]`: index into the cells.
    entry: Vec<Vec<Option<usize>>>,
    best_in: Vec<Option<usize>>,
}

/// A cell as the paper names it: the method's label, then any other varied setting that the
/// table's columns do not show (`OPT (GS) (lr=0.1)`).
fn paper_label(c: &CellSummary) -> String {
    let extra: Vec<String> = c
        .params
        .iter()
        .filter(|(k, _)| !shown_elsewhere(k))
        .map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k)))
        .collect();
    if extra.is_empty() {
        c.method_label.clone()
    } else {
        format!("{} ({})", c.method_label, extra.join(", "))
    }
}

fn column_label(c: &CellSummary) -> String {
    format!("{}, {}", dataset_label(&c.dataset), model_label(&c.model))
}

/// The plots' series names: paper labels, with dataset and architecture where those vary, and
/// the cells' own names where labels would still repeat.
pub(super) fn paper_labels(cells: &[CellSummary]) -> Vec<String> {
    let columns: Vec<String> = cells.iter().map(column_label).collect();
    let one_column = columns.iter().all(|c| *c == columns[0]);
    let labels: Vec<String> = cells
        .iter()
        .zip(&columns)
        .map(|(c, col)| {
            if one_column {
                paper_label(c)
            } else {
                format!("{} — {col}", paper_label(c))
            }
        })
        .collect();
    let distinct = union(labels.iter().map(String::as_str)).len() == labels.len();
    if distinct {
        labels
    } else {
        cells.iter().map(|c| c.label.clone()).collect()
    }
}

fn paper_grid(cells: &[CellSummary]) -> PaperGrid {
    let cols: Vec<String> = cells.iter().map(column_label).collect();
    let mut rows: Vec<String> = cells.iter().map(paper_label).collect();
    // Two cells landing in one table entry: name rows by cell instead.
    let mut seen = std::collections::HashSet::new();
    if !rows.iter().zip(&cols).all(|entry| seen.insert(entry)) {
        rows = cells.iter().map(|c| c.label.clone()).collect();
    }
    let in_order = |items: &[String]| union(items.iter().map(String::as_str));
    let (columns, row_names) = (in_order(&cols), in_order(&rows));
    let best_in = columns
        .iter()
        .map(|col| {
            let members: Vec<usize> = (0..cells.len()).filter(|&i| cols[i] == *col).collect();
            best(members.iter().map(|&i| cells[i].test_err.0)).map(|k| members[k])
        })
        .collect();
    let entry = row_names
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|col| (0..cells.len()).find(|&i| rows[i] == *row && cols[i] == *col))
                .collect()
        })
        .collect();
    PaperGrid {
        columns,
        rows: row_names,
        entry,
        best_in,
    }
}

/// Methods (and any other varied settings) as rows, dataset and architecture as columns,
/// `error % ± std (n = seeds)`, the best entry of each column in bold.
pub fn paper_table(cells: &[CellSummary]) -> String {
    let g = paper_grid(cells);
    let mut s = String::new();
    let _ = writeln!(s, "| method | {} |", g.columns.join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(g.columns.len()));
    for (row, entries) in g.rows.iter().zip(&g.entry) {
        let mut line = format!("| {row} |");
        for (e, b) in entries.iter().zip(&g.best_in) {
            let text = match e {
                Some(i) => {
                    let c = &cells[*i];
                    let value = bold_if(pm(c.test_err, 2), b == e);
                    format!("{value} (n = {})", c.seeds.len())
                }
                None => "–".into(),
            };
            let _ = write!(line, " {text} |");
        }
        let _ = writeln!(s, "{line}");
    }
    s
}

/// Escapes LaTeX's special characters in a label.
fn latex_escape(text: &str) -> String {
    let mut out = String::new();
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str(r"\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(ch);
            }
            '~' => out.push_str(r"\textasciitilde{}"),
            '^' => out.push_str(r"\textasciicircum{}"),
            '±' => out.push_str(r"$\pm$"),
            '–' => out.push_str("--"),
            other => out.push(other),
        }
    }
    out
}

/// The paper-style table as a LaTeX `table` (booktabs: `\toprule`, `\midrule`, `\bottomrule`),
/// `error ± std` with the best of each column in bold and the number of seeds as `$n$`.
pub fn paper_latex(title: &str, cells: &[CellSummary]) -> String {
    let g = paper_grid(cells);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "% Generated by `orthopt report`; needs \\usepackage{{booktabs}}."
    );
    let _ = writeln!(s, "\\begin{{table}}[t]\n\\centering");
    let _ = writeln!(
        s,
        "\\caption{{{}: top-1 test error (\\%), mean $\\pm$ sample standard deviation over $n$ \
         seeds; best of each column in bold.}}",
        latex_escape(title)
    );
    let _ = writeln!(s, "\\begin{{tabular}}{{l{}}}", "r".repeat(g.columns.len()));
    let _ = writeln!(s, "\\toprule");
    let header: Vec<String> = g.columns.iter().map(|c| latex_escape(c)).collect();
    let _ = writeln!(s, "Method & {} \\\\", header.join(" & "));
    let _ = writeln!(s, "\\midrule");
    for (row, entries) in g.rows.iter().zip(&g.entry) {
        let mut line = latex_escape(row);
        for (e, b) in entries.iter().zip(&g.best_in) {
            let text = match e {
                Some(i) => {
                    let c = &cells[*i];
                    let mean = format!("{:.2}", c.test_err.0);
                    let mean = if b == e {
                        format!("\\textbf{{{mean}}}")
                    } else {
                        mean
                    };
                    let std = c
                        .test_err
                        .1
                        .map(|sd| format!(" $\\pm$ {sd:.2}"))
                        .unwrap_or_default();
                    format!("{mean}{std} ($n={}$)", c.seeds.len())
                }
                None => "--".into(),
            };
            let _ = write!(line, " & {text}");
        }
        let _ = writeln!(s, "{line} \\\\");
    }
    let _ = writeln!(s, "\\bottomrule\n\\end{{tabular}}\n\\end{{table}}");
    s
}

fn dash_or(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".into())
}

/// `results.md`: summary, paper-style table, plots, every run and its provenance.
pub fn markdown(
    title: &str,
    rows: &[ResultRow],
    cells: &[CellSummary],
    plots: &[String],
) -> String {
    let keys = varied_keys(cells.iter().map(|c| c.params.as_slice()));
    let mut s = String::new();
    let _ = writeln!(s, "# Results: {title}\n");
    let _ = writeln!(
        s,
        "{} runs in {} cells. Errors are top-1 test error in percent of the final weights, mean \
         ± sample standard deviation over seeds; the best cell is in bold. \"At best val\" is the \
         test error at the evaluation with the best validation accuracy (only with a validation \
         split: the best evaluation is never chosen on test).\n",
        rows.len(),
        cells.len()
    );
    let _ = writeln!(s, "## Summary\n");
    let mut header = String::from("| cell |");
    for k in &keys {
        let _ = write!(header, " {} |", column_name(k));
    }
    header.push_str(
        " method | seeds | test err % | test err % at best val | energy s=1 | orth err | images/s |",
    );
    let _ = writeln!(s, "{header}");
    let _ = writeln!(
        s,
        "|---|{}---|---:|---:|---:|---:|---:|---:|",
        "---|".repeat(keys.len())
    );
    let top = best(cells.iter().map(|c| c.test_err.0));
    for (i, c) in cells.iter().enumerate() {
        let mut line = format!("| {} |", c.label);
        for k in &keys {
            let _ = write!(line, " {} |", param(&c.params, k));
        }
        let _ = writeln!(
            s,
            "{line} {} | {} | {} | {} | {} | {} | {:.0} |",
            c.method_label,
            c.seeds.len(),
            bold_if(pm(c.test_err, 2), top == Some(i)),
            dash_or(c.test_err_at_best.map(|b| pm(b, 2))),
            pm(c.energy_s1, 4),
            dash_or(c.orth_error.map(|e| format!("{e:.1e}"))),
            c.images_per_sec
        );
    }
    let _ = writeln!(
        s,
        "\n## Paper-style table (test error %)\n\nAlso as LaTeX (booktabs) in `{}`.\n",
        super::RESULTS_TEX
    );
    s.push_str(&paper_table(cells));
    if !plots.is_empty() {
        let _ = writeln!(s, "\n## Plots\n");
        for p in plots {
            let _ = writeln!(
                s,
                "![{}]({}/{p})\n",
                super::plots::describe(p),
                super::PLOTS_DIR
            );
        }
    }
    let _ = writeln!(s, "\n## Runs\n");
    s.push_str(&runs_table(rows));
    s.push_str(&provenance_table(rows));
    s
}

/// Where each run came from: commit, recipe hash, train artifact and the command re-running it.
fn provenance_table(rows: &[ResultRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## Provenance\n");
    let _ = writeln!(
        s,
        "| cell | seed | commit | recipe hash | train artifact | re-run |"
    );
    let _ = writeln!(s, "|---|---:|---|---|---|---|");
    for r in rows {
        let p = &r.provenance;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | `{}` |",
            r.cell,
            r.seed,
            short(&p.git_commit),
            short(&p.recipe_hash),
            short(&p.train_key),
            p.command
        );
    }
    s
}

fn short(s: &str) -> &str {
    match s.char_indices().nth(12) {
        Some((i, _)) if !s.ends_with("-dirty") => &s[..i],
        _ => s,
    }
}

/// One line per run (also what `orthopt run` prints).
pub fn runs_table(rows: &[ResultRow]) -> String {
    let mut s = String::new();
    s.push_str("| cell | seed | dataset | model | method | iterations | test acc | test err % | best val acc (iter) | test acc at best val | top-5 | test loss | val acc | energy s=1 | orth err | train s | images/s | device |\n");
    s.push_str(
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let f4 = |v: Option<f64>| dash_or(v.map(|v| format!("{v:.4}")));
    for r in rows {
        let best_val = match (r.best_val_acc, r.best_iteration) {
            (Some(v), Some(i)) => format!("{v:.4} ({i})"),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.4} | {:.2} | {} | {} | {} | {:.4} | {} | {:.4} | {} | {:.1} | {:.0} | {} |",
            r.cell,
            r.seed,
            r.dataset,
            r.model,
            r.method,
            r.iterations,
            r.test_acc,
            r.test_err,
            best_val,
            f4(r.test_acc_at_best),
            f4(r.test_top5),
            r.test_loss,
            f4(r.val_acc),
            r.energy_s1,
            dash_or(r.orth_error.map(|e| format!("{e:.1e}"))),
            r.train_seconds,
            r.images_per_sec,
            r.device
        );
    }
    s
}
