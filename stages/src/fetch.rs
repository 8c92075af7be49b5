//! Fetch: bring a dataset's original files into an artifact, unchanged.
//!
//! Sources in this version: the Fashion-MNIST subset embedded in the binary, and IDX files
//! (raw or gzip) in a local directory. The artifact holds the four IDX files under their
//! official names, so preprocess never cares where they came from.

use crate::error::{format_err, IoContext};
use crate::progress::Progress;
use crate::{Result, StageError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bumped whenever the artifact's layout or content rules change.
pub const FORMAT_VERSION: u32 = 1;

/// The four files of an IDX dataset, by their official stems.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Datasets this stage knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    FashionMnist,
    Mnist,
    /// Named so the paper's recipes can be written today; reading arrives with the datasets work.
    #[serde(rename = "cifar-100")]
    Cifar100,
    #[serde(rename = "cifar-10")]
    Cifar10,
}

impl DatasetName {
    pub fn classes(self) -> usize {
        match self {
            DatasetName::Cifar100 => 100,
            _ => 10,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Mnist => "mnist",
            DatasetName::Cifar100 => "cifar-100",
            DatasetName::Cifar10 => "cifar-10",
        }
    }

    /// Stored as MNIST-style IDX files (readable by this version).
    pub fn is_idx(self) -> bool {
        matches!(self, DatasetName::FashionMnist | DatasetName::Mnist)
    }
}

/// Why a CIFAR recipe cannot run in this version, and what to do.
fn cifar_unsupported(name: DatasetName) -> StageError {
    StageError::Config(format!(
        "dataset `{}`: this version of opt cannot read CIFAR yet (the CIFAR readers — python \
         pickle and binary versions, fetched from a URL, the hub or disk — are the next dataset \
         milestone). The recipe is otherwise complete; until then, run the same method on \
         Fashion-MNIST (recipes/fashion_mnist/) or on IDX files with dataset.source = \"local\"",
        name.as_str()
    ))
}

/// Where the files come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// The 6000/1000-image Fashion-MNIST subset compiled into the binary
    /// (`data/fashion-mnist-subset/SOURCE.md` records its origin).
    Embedded,
    /// A directory holding the four IDX files (each raw or `.gz`).
    Local { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchConfig {
    pub dataset: DatasetName,
    pub source: Source,
}

const EMBEDDED: [(&str, &[u8]); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        include_bytes!("../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz"),
    ),
    (
        "train-labels-idx1-ubyte.gz",
        include_bytes!("../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz"),
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        include_bytes!("../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz"),
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        include_bytes!("../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz"),
    ),
];

/// Locates the file for `stem` in `dir` (raw or `.gz`).
fn locate(dir: &Path, stem: &str) -> Result<PathBuf> {
    let candidates = [dir.join(stem), dir.join(format!("{stem}.gz"))];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            StageError::Config(format!(
                "dataset file not found: looked for {} and {}; put the IDX files (raw or gzip) \
             there, or on Debian `apt-get install dataset-fashion-mnist` and use \
             path = \"/usr/share/datasets/fashion-mnist\"",
                candidates[0].display(),
                candidates[1].display()
            ))
        })
}

impl FetchConfig {
    /// What identifies the *content* of the source beyond this config: for local files, their
    /// names, sizes and modification times, so editing the data invalidates the cache.
    pub fn fingerprint(&self) -> Result<Vec<String>> {
        if !self.dataset.is_idx() {
            return Ok(vec![]);
        }
        match &self.source {
            Source::Embedded => Ok(EMBEDDED
                .iter()
                .map(|(name, bytes)| format!("{name}:{}:{:08x}", bytes.len(), crc(bytes)))
                .collect()),
            Source::Local { path } => IDX_FILES
                .iter()
                .map(|stem| {
                    let file = locate(path, stem)?;
                    let meta = std::fs::metadata(&file).at(&file)?;
                    let mtime = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    Ok(format!("{}:{}:{}", file.display(), meta.len(), mtime))
                })
                .collect(),
        }
    }
}

/// A cheap checksum of the embedded bytes (Adler-style; only distinguishes builds).
fn crc(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// Runs the stage: writes the four IDX files into `out`. Returns the written file names.
pub fn run(cfg: &FetchConfig, out: &Path, progress: &dyn Progress) -> Result<Vec<String>> {
    if !cfg.dataset.is_idx() {
        return Err(cifar_unsupported(cfg.dataset));
    }
    progress.begin("fetch", IDX_FILES.len() as u64);
    let mut written = Vec::new();
    match &cfg.source {
        Source::Embedded => {
            if cfg.dataset != DatasetName::FashionMnist {
                return Err(StageError::Config(format!(
                    "the embedded data is Fashion-MNIST; dataset `{}` needs source = \"local\"",
                    cfg.dataset.as_str()
                )));
            }
            for (i, (name, bytes)) in EMBEDDED.iter().enumerate() {
                let dst = out.join(name);
                std::fs::write(&dst, bytes).at(&dst)?;
                written.push(name.to_string());
                progress.update(i as u64 + 1, name);
            }
        }
        Source::Local { path } => {
            if !path.is_dir() {
                return Err(StageError::Config(format!(
                    "dataset path {} is not a directory",
                    path.display()
                )));
            }
            for (i, stem) in IDX_FILES.iter().enumerate() {
                let src = locate(path, stem)?;
                let name = src
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| format_err(&src, "file name is not UTF-8"))?
                    .to_string();
                let dst = out.join(&name);
                std::fs::copy(&src, &dst).at(&src)?;
                written.push(name);
                progress.update(i as u64 + 1, stem);
            }
        }
    }
    progress.end();
    Ok(written)
}

/// Finds a fetched file in a fetch artifact.
pub fn artifact_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    locate(dir, stem)
}
