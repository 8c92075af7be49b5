//! Fetch: bring a dataset's original files into reach, unchanged.
//!
//! Sources:
//! * `embedded` — the Fashion-MNIST subset compiled into the binary;
//! * `local` — a file or directory already on disk, read in place: the artifact records its
//!   path and a fingerprint (names, sizes, modification times) instead of a copy;
//! * `url` — HTTP(S) downloads with a published MD5, resumable (`Range` requests into a
//!   `.part` file, verified, then renamed);
//! * `hub` — files of a Hugging Face dataset repository through `hf-hub` (its cache, endpoint
//!   and token settings), verified against the hub's content hash.
//!
//! Whatever the source, [`data_root`] gives preprocess the directory (or file) holding the
//! dataset's files; downloaded and embedded files live in the artifact's `files/`.

mod embedded;
mod http;
mod hub;
mod local;

pub use crate::data::spec::{DatasetName, IDX_FILES};
pub use http::redact;
pub use hub::check_hub_names;
pub use local::locate;

use crate::error::{format_err, write_json, IoContext};
use crate::progress::Progress;
use crate::{Result, StageError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bumped whenever the artifact's layout or content rules change.
pub const FORMAT_VERSION: u32 = 2;
/// Downloaded and embedded files, inside the artifact.
pub const FILES_DIR: &str = "files";
/// For in-place sources: where the data are and their fingerprint at fetch time.
pub const SOURCE_FILE: &str = "source.json";

/// One file to download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub url: String,
    /// Published MD5 (hex) the file must have.
    pub md5: String,
}

impl Download {
    /// The file name the download is stored under (the URL's last path segment).
    pub fn file_name(&self) -> String {
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        let name = path.rsplit('/').next().unwrap_or_default();
        if name.is_empty() {
            "download".into()
        } else {
            name.into()
        }
    }
}

/// Where the files come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// The 6000/1000-image Fashion-MNIST subset compiled into the binary
    /// (`data/fashion-mnist-subset/SOURCE.md` records its origin).
    Embedded,
    /// A file or directory on disk, read in place.
    Local { path: PathBuf },
    /// HTTP(S) downloads, each checked against its MD5.
    Url { files: Vec<Download> },
    /// Files of a Hugging Face dataset repository.
    Hub {
        endpoint: String,
        repo: String,
        revision: String,
        files: Vec<String>,
        /// hf-hub's cache directory (`…/huggingface/hub`); `None`: `HF_HOME` or the default.
        /// Where bytes are cached never changes them, so it is not part of the key.
        #[serde(skip)]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchConfig {
    pub dataset: DatasetName,
    pub source: Source,
}

/// How to supply the data by hand, for error messages.
pub(super) fn local_advice(what: &str) -> String {
    format!(
        "To use a copy on disk instead, download {what} on a machine with network access and \
         set dataset.source = \"local\" and dataset.path = \"<that file or directory>\" \
         (or `--set dataset.source=local --set dataset.path=…`)"
    )
}

impl FetchConfig {
    /// What identifies the *content* of the source beyond this config: for local files, their
    /// names, sizes and modification times (every file under a directory), so editing the data
    /// invalidates the cache. Downloads are pinned by their checksums, already in the config.
    pub fn fingerprint(&self) -> Result<Vec<String>> {
        match &self.source {
            Source::Embedded => Ok(embedded::fingerprint().to_vec()),
            Source::Local { path } => {
                if !path.exists() {
                    return Err(StageError::Setting {
                        field: "source.path",
                        message: format!("{} does not exist", path.display()),
                    });
                }
                local::fingerprint_path(path)
            }
            Source::Url { .. } | Source::Hub { .. } => Ok(vec![]),
        }
    }
}

/// The most one `url` download may bring when its server announces no length (or announces
/// more): far above any dataset this pipeline reads, far below a full disk.
pub const MAX_DOWNLOAD_BYTES: u64 = 16 << 30;

/// Bounds on what a fetch accepts from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// The most bytes one `url` download may have (hub files are held to the size the hub
    /// announces for them).
    pub max_download_bytes: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_download_bytes: MAX_DOWNLOAD_BYTES,
        }
    }
}

/// Runs the stage into `out`. Returns the names of the files it wrote or recorded.
pub fn run(cfg: &FetchConfig, out: &Path, progress: &dyn Progress) -> Result<Vec<String>> {
    run_with(cfg, out, FetchLimits::default(), progress)
}

/// [`run`] within explicit limits.
pub fn run_with(
    cfg: &FetchConfig,
    out: &Path,
    limits: FetchLimits,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let files = out.join(FILES_DIR);
    match &cfg.source {
        Source::Embedded => {
            if cfg.dataset != DatasetName::FashionMnist {
                return Err(StageError::Setting {
                    field: "source",
                    message: format!(
                        "the embedded data is Fashion-MNIST; dataset `{}` needs another source \
                         (\"local\", \"url\" or \"hub\")",
                        cfg.dataset.as_str()
                    ),
                });
            }
            embedded::write(&files, progress)
        }
        Source::Local { path } => {
            let record = local::InPlace {
                path: path.clone(),
                fingerprint: cfg.fingerprint()?,
            };
            write_json(&out.join(SOURCE_FILE), &record)?;
            Ok(vec![SOURCE_FILE.into()])
        }
        Source::Url { files: downloads } => {
            std::fs::create_dir_all(&files).at(&files)?;
            let agent = ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(30))
                .timeout_read(Duration::from_secs(60))
                .build();
            let mut written = Vec::new();
            for d in downloads {
                http::download(&agent, d, &files, limits.max_download_bytes, progress)?;
                written.push(d.file_name());
            }
            Ok(written)
        }
        Source::Hub {
            endpoint,
            repo,
            revision,
            files: names,
            cache_dir,
        } => {
            std::fs::create_dir_all(&files).at(&files)?;
            hub::fetch(
                endpoint,
                repo,
                revision,
                names,
                cache_dir.as_deref(),
                &files,
                progress,
            )
        }
    }
}

/// The directory (or single file) holding a fetch artifact's dataset files. For in-place
/// sources it checks that the data still match the fingerprint taken at fetch time.
pub fn data_root(dir: &Path) -> Result<PathBuf> {
    let record = dir.join(SOURCE_FILE);
    if record.is_file() {
        return local::checked_root(&record);
    }
    let files = dir.join(FILES_DIR);
    if files.is_dir() {
        Ok(files)
    } else {
        Err(format_err(
            dir,
            "not a fetch artifact (no files/ or source.json)",
        ))
    }
}
