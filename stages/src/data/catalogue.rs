//! The catalogue of known datasets: their official downloads with published checksums, their
//! usual hub repositories, and the format a source delivers when a recipe does not say.

use crate::data::fetch::{Download, Source};
use crate::data::spec::{DataFormat, DatasetName, IDX_FILES};
use std::path::Path;

/// The official downloads of a dataset in a format: CIFAR from its authors' page, MNIST from
/// the PyTorch mirror (the original site is unreliable), Fashion-MNIST from Zalando's bucket;
/// each with its published MD5.
pub fn default_downloads(dataset: DatasetName, format: DataFormat) -> Option<Vec<Download>> {
    let one = |url: &str, md5: &str| {
        Some(vec![Download {
            url: url.into(),
            md5: md5.into(),
        }])
    };
    let idx = |base: &str, md5s: [&str; 4]| {
        Some(
            IDX_FILES
                .iter()
                .zip(md5s)
                .map(|(stem, md5)| Download {
                    url: format!("{base}/{stem}.gz"),
                    md5: md5.into(),
                })
                .collect(),
        )
    };
    const KRIZ: &str = "https://www.cs.toronto.edu/~kriz";
    match (dataset, format) {
        (DatasetName::Cifar10, DataFormat::CifarPython) => one(
            &format!("{KRIZ}/cifar-10-python.tar.gz"),
            "c58f30108f718f92721af3b95e74349a",
        ),
        (DatasetName::Cifar100, DataFormat::CifarPython) => one(
            &format!("{KRIZ}/cifar-100-python.tar.gz"),
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
        (DatasetName::Cifar10, DataFormat::CifarBinary) => one(
            &format!("{KRIZ}/cifar-10-binary.tar.gz"),
            "c32a1d4ab5d03f1284b67883e8d87530",
        ),
        (DatasetName::Cifar100, DataFormat::CifarBinary) => one(
            &format!("{KRIZ}/cifar-100-binary.tar.gz"),
            "03b5dce01913d631647c71ecec9e9cb8",
        ),
        (DatasetName::Mnist, DataFormat::Idx) => idx(
            "https://ossci-datasets.s3.amazonaws.com/mnist",
            [
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ],
        ),
        (DatasetName::FashionMnist, DataFormat::Idx) => idx(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
            [
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ],
        ),
        _ => None,
    }
}

/// The usual hub repository of a dataset and the parquet files of its train and test splits.
pub fn default_hub(dataset: DatasetName) -> Option<(&'static str, Vec<String>)> {
    let files = |dir: &str| {
        ["train", "test"]
            .iter()
            .map(|s| format!("{dir}/{s}-00000-of-00001.parquet"))
            .collect()
    };
    match dataset {
        DatasetName::Cifar10 => Some(("uoft-cs/cifar10", files("plain_text"))),
        DatasetName::Cifar100 => Some(("uoft-cs/cifar100", files("cifar100"))),
        DatasetName::Mnist => Some(("ylecun/mnist", files("mnist"))),
        DatasetName::FashionMnist => {
            Some(("zalando-datasets/fashion_mnist", files("fashion_mnist")))
        }
        DatasetName::ImageFolder => None,
    }
}

/// The format a dataset comes in from a source when the recipe does not say.
pub fn default_format(dataset: DatasetName, source: &Source) -> DataFormat {
    match (dataset, source) {
        (DatasetName::ImageFolder, _) => DataFormat::ImageFolder,
        (_, Source::Hub { .. }) => DataFormat::Parquet,
        (DatasetName::FashionMnist | DatasetName::Mnist, _) => DataFormat::Idx,
        (_, Source::Url { files }) if files.iter().any(|f| f.url.contains("binary")) => {
            DataFormat::CifarBinary
        }
        (_, Source::Local { path }) => {
            // A local CIFAR copy: the binary version has `.bin` batches or says so in its name;
            // hub downloads are parquet; otherwise the python version (the common one).
            let name = path.to_string_lossy().to_ascii_lowercase();
            let names = file_names(path);
            let inside = |pat: &str| names.iter().any(|n| n.contains(pat));
            if name.contains("binary") || inside_suffix(&names, ".bin") || inside("binary") {
                DataFormat::CifarBinary
            } else if name.ends_with(".parquet") || inside_suffix(&names, ".parquet") {
                DataFormat::Parquet
            } else {
                DataFormat::CifarPython
            }
        }
        _ => DataFormat::CifarPython,
    }
}

/// Lower-case names of the files under `path` (a directory, walked), for format detection.
fn file_names(path: &Path) -> Vec<String> {
    fn walk(p: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let child = e.path();
            if child.is_dir() {
                walk(&child, out);
            } else {
                out.push(e.file_name().to_string_lossy().to_ascii_lowercase());
            }
        }
    }
    let mut out = Vec::new();
    if path.is_dir() {
        walk(path, &mut out);
    }
    out
}

fn inside_suffix(names: &[String], suffix: &str) -> bool {
    names.iter().any(|n| n.ends_with(suffix))
}
