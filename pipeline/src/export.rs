//! `orthopt export`: finds a run's trained model in the cache and writes it as a plain CNN-6 for
//! PyTorch (see [`opt_stages::report::export`]).
//!
//! A run is named by its directory (`<run>/cells/<cell>/seed-<s>/`, whose `row.json` names the
//! train and preprocess artifacts it came from) or by a train artifact directly
//! (`<cache>/train/<key>/`, whose manifest names its preprocess input).

use crate::store::{ArtifactStore, Manifest, MANIFEST};
use anyhow::{bail, Context, Result};
use opt_stages::report::{ResultRow, ROW_FILE};
use std::path::{Path, PathBuf};

/// The train and preprocess artifact directories a run or train artifact stands for.
pub fn locate(path: &Path, cache: &Path) -> Result<(PathBuf, PathBuf)> {
    let read = |file: &Path| {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    };
    let row_file = path.join(ROW_FILE);
    if row_file.is_file() {
        let row: ResultRow = serde_json::from_str(&read(&row_file)?)
            .with_context(|| format!("{} is not a run's row", row_file.display()))?;
        let store = ArtifactStore::new(cache);
        let p = &row.provenance;
        for (stage, key) in [("train", &p.train_key), ("preprocess", &p.preprocess_key)] {
            if store.lookup(stage, key).is_none() {
                bail!(
                    "the run in {} was trained from {stage} artifact {key}, which is not in the \
                     cache {} (another --cache? it may have been deleted: `orthopt run` the recipe \
                     again to rebuild it)",
                    path.display(),
                    cache.display()
                );
            }
        }
        return Ok((
            store.dir("train", &p.train_key),
            store.dir("preprocess", &p.preprocess_key),
        ));
    }
    let manifest_file = path.join(MANIFEST);
    if !manifest_file.is_file() {
        bail!(
            "{} is neither a run directory (with {ROW_FILE}) nor a train artifact (with {MANIFEST})",
            path.display()
        );
    }
    let manifest: Manifest = serde_json::from_str(&read(&manifest_file)?)
        .with_context(|| format!("{} is not an artifact manifest", manifest_file.display()))?;
    if manifest.stage != "train" {
        bail!(
            "{} is a {} artifact; export needs a train artifact or a run directory",
            path.display(),
            manifest.stage
        );
    }
    let Some(preprocess_key) = manifest.inputs.first() else {
        bail!("{} names no preprocess input", manifest_file.display());
    };
    // `<cache>/train/<key>`: the cache is two levels up.
    let root = path
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cache.to_path_buf());
    Ok((
        path.to_path_buf(),
        ArtifactStore::new(root).dir("preprocess", preprocess_key),
    ))
}

/// Writes the model of `path` (a run directory or train artifact) to `out`; returns the
/// exported tensors' names and shapes.
pub fn export(
    path: &Path,
    cache: &Path,
    out: &Path,
) -> Result<opt_stages::report::export::ExportedShapes> {
    let (train_dir, prepared_dir) = locate(path, cache)?;
    opt_stages::report::export::run(&prepared_dir, &train_dir, out).with_context(|| {
        format!(
            "exporting the model of {} to {}",
            train_dir.display(),
            out.display()
        )
    })
}
