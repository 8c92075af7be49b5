//! Real dataset layouts through the whole pipeline, and the `[dataset]` recipe keys.

mod common;

use common::write;
use opt_pipeline::plan::resolve;
use opt_pipeline::recipe::load;
use opt_stages::data::fetch::Source;
use opt_stages::data::preprocess::{DataFormat, LabelChoice};
use std::io::Write;
use std::path::Path;

/// A CIFAR-10 binary tarball in the official layout: `per_batch` images in each of the five
/// training batches and `test` test images; pixels and labels from the record index.
fn cifar10_binary(path: &Path, per_batch: usize, test: usize) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::fast(),
    ));
    let mut add = |name: &str, first: usize, n: usize| {
        let mut data = Vec::new();
        for k in first..first + n {
            data.push((k % 10) as u8);
            // A class-dependent brightness, so a few steps can learn something.
            data.extend((0..3072).map(|j| ((k % 10) * 20 + (j * 7 + k) % 40) as u8));
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), &data[..])
            .unwrap();
    };
    for i in 0..5 {
        add(
            &format!("data_batch_{}.bin", i + 1),
            i * per_batch,
            per_batch,
        );
    }
    add("test_batch.bin", 1000, test);
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

#[test]
fn a_tiny_cifar_run_from_a_local_archive_with_a_validation_split() {
    let tmp = tempfile::tempdir().unwrap();
    cifar10_binary(&tmp.path().join("cifar-10-binary.tar.gz"), 16, 24);
    let recipe = write(
        tmp.path(),
        "cifar.toml",
        r#"
[dataset]
name = "cifar-10"
source = "local"
path = "cifar-10-binary.tar.gz"
validation = 16
validation_seed = 5
[model]
width = 4
[schedule]
lr = 0.05
milestones = [3]
iterations = 4
batch_size = 16
eval_every = 2
[run]
device = "cpu"
eval_batch = 32
"#,
    );
    let plan = resolve(&load(&recipe, &[]).unwrap()).unwrap();
    assert_eq!(plan.preprocess.format, DataFormat::CifarBinary, "detected");
    // Through the command line, as a user runs it.
    let cache = tmp.path().join("cache");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orthopt"))
        .arg("-q")
        .arg("run")
        .arg(&recipe)
        .arg("--cache")
        .arg(&cache)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cifar-10"));
    let keys = plan.keys().unwrap();
    let eval =
        opt_stages::report::evaluate::load_report(&cache.join("evaluate").join(&keys.evaluate))
            .unwrap();
    assert_eq!(eval.final_metrics.count, 24);
    assert_eq!(eval.train.iterations, 4);
    assert_eq!(eval.validation.map(|v| v.count), Some(16));
    // The validation accuracy reaches the result table.
    let runs = opt_pipeline::runner::collect_runs(&tmp.path().join("run")).unwrap();
    assert_eq!(runs[0].row.val_acc, eval.validation.map(|v| v.top1));
    // The best evaluation is chosen on validation — at iteration 0, 2 or the final 4, the
    // earliest among equals — and the test accuracy reported is that evaluation's.
    let train_curves = cache.join("train").join(&keys.train).join("curves.json");
    let curves: opt_stages::training::train_artifact::Curves =
        serde_json::from_str(&std::fs::read_to_string(train_curves).unwrap()).unwrap();
    let mut evals: Vec<(u64, f64, f64)> = curves
        .eval
        .iter()
        .map(|e| (e.iteration, e.val_top1.unwrap(), e.top1))
        .collect();
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 2]);
    let v = eval.validation.unwrap();
    evals.push((4, v.top1, eval.final_metrics.top1));
    let best = evals
        .iter()
        .fold(evals[0], |b, &e| if e.1 > b.1 { e } else { b });
    let row = &runs[0].row;
    assert_eq!(row.best_iteration, Some(best.0));
    assert_eq!(row.best_val_acc, Some(best.1));
    assert_eq!(row.test_acc_at_best, Some(best.2));
    let csv = std::fs::read_to_string(tmp.path().join("run/results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains(",val_acc,"), "{csv}");
    let stats: opt_stages::data::preprocess::DatasetStats = serde_json::from_str(
        &std::fs::read_to_string(
            cache
                .join("preprocess")
                .join(&keys.preprocess)
                .join("stats.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!((stats.train_count, stats.shape), (80, (3, 32, 32)));

    // Another normalisation or split re-uses the decoded data: no second preprocess artifact.
    let other =
        resolve(&load(&recipe, &["dataset.normalization=per-channel".into()]).unwrap()).unwrap();
    assert_eq!(other.keys().unwrap().preprocess, keys.preprocess);
}

fn resolve_err(dir: &Path, text: &str) -> String {
    let p = write(dir, "bad.toml", text);
    match resolve(&load(&p, &[]).unwrap()) {
        Ok(_) => panic!("{text}: resolved"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn dataset_sources_resolve_with_defaults_and_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = write(
        d,
        "hub.toml",
        "[dataset]\nname = \"cifar-100\"\nsource = \"hub\"\nlabel = \"coarse\"\n",
    );
    let plan = resolve(&load(&p, &[]).unwrap()).unwrap();
    match &plan.fetch.source {
        Source::Hub {
            repo,
            revision,
            files,
            ..
        } => {
            assert_eq!(
                (repo.as_str(), revision.as_str()),
                ("uoft-cs/cifar100", "main")
            );
            assert_eq!(files[0], "cifar100/train-00000-of-00001.parquet");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (plan.preprocess.format, plan.preprocess.label),
        (DataFormat::Parquet, LabelChoice::Coarse)
    );
    let p = write(
        d,
        "url.toml",
        "[dataset]\nname = \"cifar-10\"\nsource = \"url\"\nformat = \"cifar-binary\"\n",
    );
    let plan = resolve(&load(&p, &[]).unwrap()).unwrap();
    match &plan.fetch.source {
        Source::Url { files } => {
            assert_eq!(
                files[0].url,
                "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
            );
            assert_eq!(files[0].md5, "c32a1d4ab5d03f1284b67883e8d87530");
        }
        other => panic!("{other:?}"),
    }

    let e = resolve_err(
        d,
        "[dataset]\nname = \"cifar-10\"\nsource = \"url\"\nurl = \"https://x/y.tgz\"\n",
    );
    assert!(
        e.contains("bad.toml") && e.contains("dataset.md5") && e.contains("MD5"),
        "{e}"
    );
    let e = resolve_err(
        d,
        "[dataset]\nname = \"cifar-10\"\nlabel = \"coarse\"\nsource = \"hub\"\n",
    );
    assert!(
        e.contains("dataset.label") && e.contains("cifar-100"),
        "{e}"
    );
    let e = resolve_err(d, "[dataset]\nname = \"image-folder\"\nsource = \"hub\"\n");
    assert!(e.contains("dataset.repo"), "{e}");
    let e = resolve_err(
        d,
        "[dataset]\nsource = \"embedded\"\nurl = \"https://x/y\"\n",
    );
    assert!(e.contains("dataset.url") && e.contains("\"url\""), "{e}");
    let e = resolve_err(
        d,
        "[dataset]\nname = \"mnist\"\nsource = \"hub\"\nformat = \"cifar-binary\"\n",
    );
    assert!(e.contains("dataset.format"), "{e}");
    // The embedded subset is Fashion-MNIST only: caught at plan time, not after a fetch.
    let e = resolve_err(d, "[dataset]\nname = \"cifar-100\"\n");
    assert!(
        e.contains("dataset.source") && e.contains("cifar-100") && e.contains("\"hub\""),
        "{e}"
    );
}

#[test]
fn bench_data_prints_the_data_path_throughput() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orthopt"))
        .args([
            "bench-data",
            "--images",
            "300",
            "--batch",
            "32",
            "--batches",
            "3",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("| cache →"))
        .unwrap_or_else(|| panic!("no result row in:\n{text}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // | path | images | batch | input | load ms | images/s | ms/batch |
    assert_eq!((cells[2], cells[3], cells[4]), ("300", "32", "3x32x32"));
    let ips: f64 = cells[6].parse().unwrap();
    assert!(ips > 0.0, "{row}");
    assert!(text.contains("25 000 images/s"), "{text}");
}
