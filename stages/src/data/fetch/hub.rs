//! `hub` sources: files of a Hugging Face dataset repository, in `hf-hub`'s cache (its layout,
//! shared with Python's `huggingface_hub`; its cache and token settings), each verified against
//! the content hash its blob is named after.
//!
//! The transfers are ours, not `hf-hub`'s: it sends the token to whatever host a redirect
//! names, copies a body of any length, and panics on some malformed answers. Here the token
//! goes only to the endpoint's own host (a redirect elsewhere — the hub's CDN — gets none), a
//! plain `http://` endpoint is warned about, a body is held to the size the hub announced,
//! and names are checked before they become paths.

use super::http::{hex, redact, transfer, Transfer};
use super::local_advice;
use crate::error::{format_err, IoContext};
use crate::progress::Progress;
use crate::{Result, StageError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Redirects followed when resolving a file (the hub uses one or two).
const MAX_REDIRECTS: usize = 8;

/// Checks one `/`-separated name: relative, no empty, `.` or `..` segment, no backslash or
/// control character. `what` says which setting it is, for the message.
fn check_relative(name: &str, what: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("{what} {name:?} {why}"));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.starts_with('/') {
        return bad("is absolute; expected a path inside the repository");
    }
    if name.chars().any(|c| c == '\\' || c.is_control()) {
        return bad("contains a backslash or a control character");
    }
    if name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("has an empty, `.` or `..` segment; expected a path inside the repository");
    }
    Ok(())
}

/// Validates a hub repository id (`owner/name`), revision and file names before any of them
/// becomes a URL or a path in the cache (`files = ["../../x"]` made hf-hub write a symlink
/// outside its cache).
pub fn check_hub_names(repo: &str, revision: &str, files: &[String]) -> Result<()> {
    let setting = |field: &'static str, message: String| StageError::Setting { field, message };
    let repo_ok = !repo.is_empty()
        && repo.split('/').count() <= 2
        && repo.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        });
    if !repo_ok {
        return Err(setting(
            "dataset.repo",
            format!("{repo:?} is not a hub repository id (expected `owner/name`)"),
        ));
    }
    check_relative(revision, "revision").map_err(|m| setting("dataset.revision", m))?;
    for f in files {
        check_relative(f, "file").map_err(|m| setting("dataset.files", m))?;
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL, lower-cased, without credentials.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    )
}

/// Where a `Location` header leads from `base`.
fn join(base: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("https");
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or(base);
        format!("{dir}/{location}")
    }
}

/// What the hub says about a file: where its bytes are, the commit, its content hash and size.
#[derive(Debug)]
struct Resolved {
    url: String,
    commit: String,
    etag: String,
    size: u64,
}

/// Follows the redirects of the hub's `resolve` URL with `Range: bytes=0-0` probes, as
/// `huggingface_hub` does, sending `auth` only to the endpoint's own origin.
fn resolve(
    agent: &ureq::Agent,
    start: &str,
    endpoint: &str,
    auth: Option<&str>,
) -> std::result::Result<Resolved, String> {
    let home = origin(endpoint);
    let (mut commit, mut etag, mut size) = (None, None, None);
    let mut url = start.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let mut req = agent.get(&url).set("Range", "bytes=0-0");
        if let Some(a) = auth.filter(|_| origin(&url) == home) {
            req = req.set("Authorization", a);
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                return Err(format!("HTTP {code} {}", r.status_text()))
            }
            Err(e) => return Err(e.to_string()),
        };
        let header = |k: &str| resp.header(k).map(|v| v.trim_matches('"').to_string());
        commit = commit.or_else(|| header("x-repo-commit"));
        etag = etag.or_else(|| header("x-linked-etag"));
        size = size.or_else(|| header("x-linked-size").and_then(|v| v.parse::<u64>().ok()));
        if (300..400).contains(&resp.status()) {
            let location = header("Location").ok_or("a redirect without a Location")?;
            url = join(&url, &location);
            continue;
        }
        let etag = etag.or_else(|| header("etag")).ok_or("no ETag header")?;
        let size = resp
            .header("Content-Range")
            .and_then(|r| r.rsplit('/').next())
            .and_then(|n| n.parse::<u64>().ok())
            .or(size)
            .ok_or("no Content-Range header giving the file's size")?;
        let commit = commit.ok_or("no x-repo-commit header")?;
        return Ok(Resolved {
            url,
            commit,
            etag,
            size,
        });
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
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

/// The token: `HF_TOKEN`, else the one `huggingface-cli login` stored in the cache.
fn token(cache: &hf_hub::Cache) -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| cache.token())
}

/// Places a verified blob in the cache layout `hf-hub` and `huggingface_hub` read:
/// `snapshots/<commit>/<file>` pointing at `blobs/<etag>`, and `refs/<revision>`.
fn place(cache_repo: &Path, r: &Resolved, name: &str) -> Result<PathBuf> {
    let pointer = cache_repo.join("snapshots").join(&r.commit).join(name);
    if let Some(parent) = pointer.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let blob = cache_repo.join("blobs").join(&r.etag);
    let _ = std::fs::remove_file(&pointer);
    #[cfg(unix)]
    {
        // Relative, as hf-hub links: the cache can move.
        let depth = name.split('/').count() + 1;
        let up: PathBuf = std::iter::repeat_n("..", depth).collect();
        std::os::unix::fs::symlink(up.join("blobs").join(&r.etag), &pointer).at(&pointer)?;
    }
    #[cfg(not(unix))]
    std::fs::copy(&blob, &pointer).at(&pointer)?;
    let _ = blob;
    Ok(pointer)
}

/// Downloads one file into the cache (or finds its blob there), returning its snapshot path.
#[allow(clippy::too_many_arguments)]
fn download(
    agent: &ureq::Agent,
    endpoint: &str,
    repo: &hf_hub::Repo,
    cache: &hf_hub::Cache,
    name: &str,
    auth: Option<&str>,
    progress: &dyn Progress,
) -> std::result::Result<PathBuf, String> {
    let url = format!(
        "{endpoint}/{}/resolve/{}/{name}",
        repo.url(),
        repo.url_revision()
    );
    let r = resolve(agent, &url, endpoint, auth)?;
    check_relative(&r.commit, "commit").and_then(|_| check_relative(&r.etag, "etag"))?;
    if r.commit.contains('/') || r.etag.contains('/') {
        return Err(format!(
            "the hub answered a commit {:?} / etag {:?}",
            r.commit, r.etag
        ));
    }
    let cache_repo = cache.path().join(repo.folder_name());
    let blobs = cache_repo.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| format!("{}: {e}", blobs.display()))?;
    let blob = blobs.join(&r.etag);
    if !blob.is_file() {
        let part = blobs.join(format!("{}.part", r.etag));
        let same_host = origin(&r.url) == origin(endpoint);
        let t = Transfer {
            url: &r.url,
            auth: auth.filter(|_| same_host),
            max_bytes: r.size,
            name,
        };
        transfer(agent, &t, &part, progress)?;
        let got = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if got != r.size {
            let _ = std::fs::remove_file(&part);
            return Err(format!(
                "received {got} bytes of the {} the hub announced; deleted",
                r.size
            ));
        }
        std::fs::rename(&part, &blob).map_err(|e| format!("{}: {e}", blob.display()))?;
    }
    let pointer = place(&cache_repo, &r, name).map_err(|e| e.to_string())?;
    cache
        .repo(repo.clone())
        .create_ref(&r.commit)
        .map_err(|e| format!("cannot record the revision: {e}"))?;
    Ok(pointer)
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
    use hf_hub::{Repo, RepoType};
    check_hub_names(repo, revision, names)?;
    let cache = match cache_dir {
        Some(dir) => hf_hub::Cache::new(dir.to_path_buf()),
        None => hf_hub::Cache::from_env(),
    };
    let token = token(&cache);
    let shown = redact(endpoint, token.as_deref());
    if token.is_some() && endpoint.to_ascii_lowercase().starts_with("http://") {
        progress.warn(&format!(
            "HF_TOKEN goes to {shown} over plain http://, readable by anyone on the way; use an \
             https:// endpoint, or unset HF_TOKEN for a public repository"
        ));
    }
    let auth = token.as_ref().map(|t| format!("Bearer {t}"));
    let fail = |file: &str, e: String| StageError::Download {
        what: format!(
            "`{file}` from the hub dataset repository `{repo}` (revision `{revision}`, \
             endpoint {shown})"
        ),
        message: format!(
            "{}. {}",
            redact(&e, token.as_deref()),
            local_advice(&format!(
                "{shown}/datasets/{repo}/resolve/{revision}/{file}"
            ))
        ),
    };
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let repo_ref = Repo::with_revision(repo.to_string(), RepoType::Dataset, revision.to_string());
    let mut written = Vec::new();
    for name in names {
        // Files already in the hub cache (ours or Python's: same layout) are used without
        // asking the network, as `huggingface_hub` does offline; they are verified all the same.
        let cached = match cache.repo(repo_ref.clone()).get(name) {
            Some(path) => path,
            None => download(
                &agent,
                endpoint,
                &repo_ref,
                &cache,
                name,
                auth.as_deref(),
                progress,
            )
            .map_err(|e| fail(name, e))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_the_cache_are_refused() {
        let ok = |f: &str| check_hub_names("uoft-cs/cifar10", "main", &[f.to_string()]);
        assert!(ok("plain_text/train-00000-of-00001.parquet").is_ok());
        for bad in [
            "../../etc/x",
            "a/../../b",
            "/abs",
            "a//b",
            "a\\..\\b",
            "./a",
            "",
        ] {
            let e = ok(bad).unwrap_err().to_string();
            assert!(e.starts_with("dataset.files: file "), "{bad}: {e}");
        }
        let e = check_hub_names("uoft-cs/cifar10", "../x", &[]).unwrap_err();
        assert!(e.to_string().starts_with("dataset.revision:"), "{e}");
        assert!(check_hub_names("refs/pr/../x", "main", &[]).is_err());
        assert!(check_hub_names("a/b/c", "main", &[]).is_err());
        assert!(check_hub_names("uoft-cs/cifar10", "refs/pr/1", &[]).is_ok());
    }

    #[test]
    fn redirects_resolve_against_their_base() {
        let base = "https://hub.example/datasets/a/b/resolve/main/x.parquet";
        assert_eq!(join(base, "/api/y"), "https://hub.example/api/y");
        assert_eq!(join(base, "https://cdn.example/z"), "https://cdn.example/z");
        assert_eq!(join(base, "//cdn.example/z"), "https://cdn.example/z");
        assert_eq!(
            join(base, "y"),
            "https://hub.example/datasets/a/b/resolve/main/y"
        );
        assert_eq!(
            origin("HTTP://u:p@Hub.Example:8080/x"),
            "http://hub.example:8080"
        );
    }
}
