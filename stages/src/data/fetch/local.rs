//! `local` sources: a file or directory read in place. The artifact records the path and a
//! fingerprint (names, sizes, modification times), re-checked before every read.

use crate::data::readers::input;
use crate::error::{format_err, read_json, IoContext};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a `local` fetch records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InPlace {
    pub(super) path: PathBuf,
    pub(super) fingerprint: Vec<String>,
}

/// Locates the IDX file for `stem` in `dir` (raw or `.gz`).
pub fn locate(dir: &Path, stem: &str) -> Result<PathBuf> {
    let candidates = [dir.join(stem), dir.join(format!("{stem}.gz"))];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format_err(
                dir,
                format!(
                    "dataset file not found: looked for {} and {}; put the IDX files (raw or \
                     gzip) there, or on Debian `apt-get install dataset-fashion-mnist` and use \
                     path = \"/usr/share/datasets/fashion-mnist\"",
                    candidates[0].display(),
                    candidates[1].display()
                ),
            )
        })
}

/// `name:size:mtime` of every file under `path` (sorted), so editing the data changes keys.
/// The walk refuses what preprocess would refuse: FIFOs, devices, symlinks out of the data.
pub(super) fn fingerprint_path(path: &Path) -> Result<Vec<String>> {
    let line = |p: &Path, len: u64, modified: Option<std::time::SystemTime>| {
        let mtime = modified
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{}:{}:{}", p.display(), len, mtime)
    };
    if !std::fs::metadata(path).at(path)?.is_dir() {
        let (file, len) = input::open_regular(path)?;
        let modified = file.metadata().at(path)?.modified().ok();
        return Ok(vec![line(path, len, modified)]);
    }
    let (files, _) = input::walk_tree(path, false)?;
    Ok(files
        .iter()
        .map(|f| line(&f.path, f.meta_len, f.modified))
        .collect())
}

/// The data an in-place record points at, after checking they still match their fingerprint.
pub(super) fn checked_root(record: &Path) -> Result<PathBuf> {
    let rec: InPlace = read_json(record)?;
    let now = if rec.path.exists() {
        fingerprint_path(&rec.path)?
    } else {
        vec![]
    };
    if now != rec.fingerprint {
        return Err(format_err(
            &rec.path,
            "the data changed or disappeared since they were fetched; run again to \
             re-fetch (the new content gets its own cache entry)",
        ));
    }
    Ok(rec.path)
}
