//! `hub` sources: files of a Hugging Face dataset repository through `hf-hub` (its cache,
//! endpoint and token settings), each verified against the content hash its blob is named
//! after.

use super::http::hex;
use super::local_advice;
use crate::error::{format_err, IoContext};
use crate::progress::Progress;
use crate::{Result, StageError};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Forwards hf-hub's byte counts to a [`Progress`].
struct HubProgress<'a> {
    progress: &'a dyn Progress,
    done: u64,
}

impl hf_hub::api::Progress for HubProgress<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.done = 0;
        self.progress
            .begin(&format!("download {filename}"), size as u64);
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        self.progress.update(self.done, "");
    }
    fn finish(&mut self) {
        self.progress.end();
    }
}

/// Checks a file from hf-hub's cache against the content hash its blob is named after: the
/// SHA-256 for LFS files (64 hex digits), git's blob SHA-1 otherwise (40 hex digits). hf-hub
/// renames a download into place without checking its length, so a cut transfer would
/// otherwise pass as the file.
fn verify_hub_blob(path: &Path) -> Result<()> {
    let blob = path.canonicalize().at(path)?;
    let etag = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let data = std::fs::read(&blob).at(&blob)?;
    let got = match etag.len() {
        64 => hex(&Sha256::digest(&data)),
        40 => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", data.len()).as_bytes());
            h.update(&data);
            hex(&h.finalize())
        }
        _ => return Ok(()), // an etag that is no content hash: nothing to check against
    };
    if got != etag {
        // Remove the bad blob so the next attempt downloads it again.
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(path);
        return Err(format_err(
            path,
            format!(
                "downloaded file does not match its content hash (expected {etag}, got {got}): \
                 a cut or corrupted transfer; it was deleted from the hub cache, run again"
            ),
        ));
    }
    Ok(())
}

pub(super) fn fetch(
    endpoint: &str,
    repo: &str,
    revision: &str,
    names: &[String],
    cache_dir: Option<&Path>,
    files: &Path,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let mut builder = ApiBuilder::from_env()
        .with_endpoint(endpoint.to_string())
        .with_progress(false)
        .with_retries(2);
    if let Some(dir) = cache_dir {
        builder = builder.with_cache_dir(dir.to_path_buf());
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        if !token.is_empty() {
            builder = builder.with_token(Some(token));
        }
    }
    let fail = |file: &str, e: String| StageError::Download {
        what: format!(
            "`{file}` from the hub dataset repository `{repo}` (revision `{revision}`, \
                 endpoint {endpoint})"
        ),
        message: format!(
            "{e}. {}",
            local_advice(&format!(
                "{endpoint}/datasets/{repo}/resolve/{revision}/{file}"
            ))
        ),
    };
    let api = builder.build().map_err(|e| {
        fail(
            names.first().map(String::as_str).unwrap_or(""),
            e.to_string(),
        )
    })?;
    let repo_ref = Repo::with_revision(repo.to_string(), RepoType::Dataset, revision.to_string());
    let cache = match cache_dir {
        Some(dir) => hf_hub::Cache::new(dir.to_path_buf()),
        None => hf_hub::Cache::from_env(),
    };
    let handle = api.repo(repo_ref.clone());
    let mut written = Vec::new();
    for name in names {
        // Files already in the hub cache (ours or Python's: same layout) are used without
        // asking the network, as `huggingface_hub` does offline; they are verified all the same.
        let cached = match cache.repo(repo_ref.clone()).get(name) {
            Some(path) => path,
            None => handle
                .download_with_progress(name, HubProgress { progress, done: 0 })
                .map_err(|e| fail(name, e.to_string()))?,
        };
        verify_hub_blob(&cached)?;
        let dst = files.join(name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        // A copy, not a link: the artifact must survive a cleaned hub cache.
        std::fs::copy(&cached, &dst).at(&cached)?;
        written.push(name.clone());
    }
    Ok(written)
}
