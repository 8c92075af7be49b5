//! Fetch and preprocess on real and on deliberately broken data.

use opt_stages::data::fetch::{self, DatasetName, FetchConfig, Source, IDX_FILES};
use opt_stages::data::preprocess::{self, DataFormat, DataView, LabelChoice, PreprocessConfig};
use opt_stages::data::readers::idx::encode;
use opt_stages::Silent;
use std::io::Write;
use std::path::Path;

fn pre() -> PreprocessConfig {
    PreprocessConfig {
        dataset: DatasetName::FashionMnist,
        format: DataFormat::Idx,
        label: LabelChoice::Fine,
    }
}

/// Writes a 4-file IDX dataset: `n` train and `n` test 2×3 images with labels `labels`.
fn write_idx(dir: &Path, n: usize, labels: &[u8], gzip: bool) {
    let images: Vec<u8> = (0..n * 6).map(|i| (i * 7 % 256) as u8).collect();
    let files = [
        encode(&[n, 2, 3], &images),
        encode(&[n], labels),
        encode(&[n, 2, 3], &images),
        encode(&[n], labels),
    ];
    for (stem, bytes) in IDX_FILES.iter().zip(files) {
        if gzip {
            let f = std::fs::File::create(dir.join(format!("{stem}.gz"))).unwrap();
            let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            gz.finish().unwrap();
        } else {
            std::fs::write(dir.join(stem), bytes).unwrap();
        }
    }
}

fn fetch_and_preprocess(src: &Path, work: &Path) -> opt_stages::Result<preprocess::DatasetStats> {
    let (f, p) = (work.join("f"), work.join("p"));
    std::fs::create_dir_all(&f).unwrap();
    std::fs::create_dir_all(&p).unwrap();
    let cfg = FetchConfig {
        dataset: DatasetName::FashionMnist,
        source: Source::Local {
            path: src.to_path_buf(),
        },
    };
    fetch::run(&cfg, &f, &Silent)?;
    preprocess::run(&pre(), &f, &p, &Silent)
}

#[test]
fn raw_and_gzip_idx_decode_to_the_same_pixels_and_statistics() {
    for gzip in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        write_idx(&src, 3, &[0, 9, 4], gzip);
        let stats = fetch_and_preprocess(&src, tmp.path()).unwrap();
        assert_eq!(
            (stats.shape, stats.train_count, stats.classes),
            ((1, 2, 3), 3, 10)
        );
        assert_eq!(stats.train_label_counts[9], 1);
        // Mean of pixel values (i·7 mod 256)/255 for i in 0..18, computed independently.
        let mean: f64 = (0..18).map(|i| (i * 7 % 256) as f64 / 255.0).sum::<f64>() / 18.0;
        assert!((stats.channel_mean[0] - mean).abs() < 1e-12);
        let data = preprocess::load(&tmp.path().join("p"), &DataView::default()).unwrap();
        assert_eq!(data.train.image(1), &[42, 49, 56, 63, 70, 77]);
        assert_eq!(data.test.labels, vec![0, 9, 4]);
    }
}

#[test]
fn broken_inputs_give_errors_naming_the_file() {
    // Label out of range.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_idx(&src, 2, &[1, 10], false);
    let e = fetch_and_preprocess(&src, tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-labels-idx1-ubyte")
            && e.contains("label 10")
            && e.contains("out of range"),
        "{e}"
    );

    // Truncated image file.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_idx(&src, 2, &[1, 2], false);
    let p = src.join(IDX_FILES[2]);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    let e = fetch_and_preprocess(&src, tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t10k-images-idx3-ubyte") && e.contains("truncated"),
        "{e}"
    );

    // Corrupt gzip.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_idx(&src, 2, &[1, 2], true);
    let p = src.join(format!("{}.gz", IDX_FILES[0]));
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes.truncate(n / 2);
    std::fs::write(&p, bytes).unwrap();
    let e = fetch_and_preprocess(&src, tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains("gzip"),
        "{e}"
    );

    // Missing file: says where it looked and how to get the data.
    let (empty, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let e = fetch_and_preprocess(empty.path(), work.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("dataset-fashion-mnist"),
        "{e}"
    );
}

#[test]
fn the_embedded_subset_is_the_documented_real_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, p) = (tmp.path().join("f"), tmp.path().join("p"));
    std::fs::create_dir_all(&f).unwrap();
    std::fs::create_dir_all(&p).unwrap();
    let cfg = FetchConfig {
        dataset: DatasetName::FashionMnist,
        source: Source::Embedded,
    };
    fetch::run(&cfg, &f, &Silent).unwrap();
    let stats = preprocess::run(&pre(), &f, &p, &Silent).unwrap();
    assert_eq!(
        (stats.train_count, stats.test_count, stats.shape),
        (6000, 1000, (1, 28, 28))
    );
    // Fashion-MNIST is balanced: every class is well represented in the first 6000 images.
    assert!(
        stats
            .train_label_counts
            .iter()
            .all(|&c| (500..700).contains(&c)),
        "{:?}",
        stats.train_label_counts
    );
    // Known statistic of Fashion-MNIST: mean pixel ≈ 0.286.
    assert!(
        (stats.channel_mean[0] - 0.286).abs() < 0.01,
        "{}",
        stats.channel_mean[0]
    );
}

/// Slow tier: needs Debian's `dataset-fashion-mnist` (`just fetch-fashion-mnist`), and fails,
/// saying so, when it is absent: a test that passes without its data checks nothing.
#[test]
#[ignore = "slow tier (just test-slow); needs apt-get install dataset-fashion-mnist"]
fn full_fashion_mnist_loads_from_the_debian_package() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    assert!(
        dir.is_dir(),
        "{} is absent: apt-get install dataset-fashion-mnist (just fetch-fashion-mnist)",
        dir.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let stats = fetch_and_preprocess(dir, tmp.path()).unwrap();
    assert_eq!(
        (stats.train_count, stats.test_count, stats.shape),
        (60_000, 10_000, (1, 28, 28))
    );
    assert!(stats.train_label_counts.iter().all(|&c| c == 6000));
    assert!(stats.test_label_counts.iter().all(|&c| c == 1000));
}
