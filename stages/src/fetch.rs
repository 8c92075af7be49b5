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

use crate::error::{format_err, read_json, write_json, IoContext};
use crate::progress::Progress;
use crate::{Result, StageError};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bumped whenever the artifact's layout or content rules change.
pub const FORMAT_VERSION: u32 = 2;
/// Downloaded and embedded files, inside the artifact.
pub const FILES_DIR: &str = "files";
/// For in-place sources: where the data are and their fingerprint at fetch time.
pub const SOURCE_FILE: &str = "source.json";

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
    #[serde(rename = "cifar-100")]
    Cifar100,
    #[serde(rename = "cifar-10")]
    Cifar10,
    /// Any `train/<class>/…`, `test/<class>/…` image folder.
    ImageFolder,
}

impl DatasetName {
    pub const ALL: [DatasetName; 5] = [
        DatasetName::FashionMnist,
        DatasetName::Mnist,
        DatasetName::Cifar10,
        DatasetName::Cifar100,
        DatasetName::ImageFolder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Mnist => "mnist",
            DatasetName::Cifar100 => "cifar-100",
            DatasetName::Cifar10 => "cifar-10",
            DatasetName::ImageFolder => "image-folder",
        }
    }
}

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

/// What a `local` fetch records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct InPlace {
    path: PathBuf,
    fingerprint: Vec<String>,
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

/// Locates the IDX file for `stem` in `dir` (raw or `.gz`).
pub fn locate(dir: &Path, stem: &str) -> Result<PathBuf> {
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

/// `name:size:mtime` of every file under `path` (sorted), so editing the data changes keys.
fn fingerprint_path(path: &Path) -> Result<Vec<String>> {
    fn walk(p: &Path, out: &mut Vec<String>) -> Result<()> {
        let meta = std::fs::metadata(p).at(p)?;
        if meta.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(p)
                .at(p)?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .at(p)?;
            children.sort();
            for c in children {
                walk(&c, out)?;
            }
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            out.push(format!("{}:{}:{}", p.display(), meta.len(), mtime));
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(path, &mut out)?;
    Ok(out)
}

/// How to supply the data by hand, for error messages.
fn local_advice(what: &str) -> String {
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
            Source::Embedded => Ok(embedded_fingerprint().to_vec()),
            Source::Local { path } => {
                if !path.exists() {
                    return Err(StageError::Config(format!(
                        "dataset path {} does not exist",
                        path.display()
                    )));
                }
                fingerprint_path(path)
            }
            Source::Url { .. } | Source::Hub { .. } => Ok(vec![]),
        }
    }
}

/// The embedded files' fingerprint: constant for a build, so checksummed once per process
/// (every cell of a grid asks for it when computing its keys).
fn embedded_fingerprint() -> &'static [String] {
    static FINGERPRINT: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FINGERPRINT.get_or_init(|| {
        EMBEDDED
            .iter()
            .map(|(name, bytes)| format!("{name}:{}:{:08x}", bytes.len(), crc(bytes)))
            .collect()
    })
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

/// Runs the stage into `out`. Returns the names of the files it wrote or recorded.
pub fn run(cfg: &FetchConfig, out: &Path, progress: &dyn Progress) -> Result<Vec<String>> {
    let files = out.join(FILES_DIR);
    match &cfg.source {
        Source::Embedded => {
            if cfg.dataset != DatasetName::FashionMnist {
                return Err(StageError::Config(format!(
                    "the embedded data is Fashion-MNIST; dataset `{}` needs another source \
                     (\"local\", \"url\" or \"hub\")",
                    cfg.dataset.as_str()
                )));
            }
            std::fs::create_dir_all(&files).at(&files)?;
            progress.begin("fetch", EMBEDDED.len() as u64);
            let mut written = Vec::new();
            for (i, (name, bytes)) in EMBEDDED.iter().enumerate() {
                let dst = files.join(name);
                std::fs::write(&dst, bytes).at(&dst)?;
                written.push(name.to_string());
                progress.update(i as u64 + 1, name);
            }
            progress.end();
            Ok(written)
        }
        Source::Local { path } => {
            let record = InPlace {
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
                download(&agent, d, &files, progress)?;
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
            hub(
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
        let rec: InPlace = read_json(&record)?;
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
        return Ok(rec.path);
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MD5 of a file, streamed.
fn md5_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// How many times one download is re-tried after a cut connection.
const ATTEMPTS: usize = 4;

/// One attempt: requests the rest of the file after the bytes already in `part`. `Ok` when
/// the server says the file is complete.
fn attempt(
    agent: &ureq::Agent,
    d: &Download,
    part: &Path,
    progress: &dyn Progress,
) -> std::result::Result<(), String> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(&d.url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // Range starts at the end: everything is there already.
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(ureq::Error::Status(code, r)) => {
            return Err(format!("HTTP {code} {}", r.status_text()));
        }
        Err(e) => return Err(e.to_string()),
    };
    // A server that ignores Range answers 200 with the whole file, and one that answers
    // another range cannot be appended: start over in both cases.
    let resumed = resp.status() == 206
        && have > 0
        && resp
            .header("Content-Range")
            .is_some_and(|r| r.starts_with(&format!("bytes {have}-")));
    let start = if resumed { have } else { 0 };
    let total = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| n + start);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(|e| format!("{}: {e}", part.display()))?;
    file.set_len(start)
        .and_then(|_| file.seek(std::io::SeekFrom::Start(start)).map(|_| ()))
        .map_err(|e| format!("{}: {e}", part.display()))?;
    progress.begin(&format!("download {}", d.file_name()), total.unwrap_or(0));
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = start;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                progress.end();
                return Err(format!("connection cut after {done} bytes: {e}"));
            }
        };
        file.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", part.display()))?;
        done += n as u64;
        progress.update(done, "");
    }
    progress.end();
    file.sync_all()
        .map_err(|e| format!("{}: {e}", part.display()))?;
    match total {
        Some(t) if done < t => Err(format!("connection cut after {done} of {t} bytes")),
        _ => Ok(()),
    }
}

/// Downloads `d` into `dir` (resuming a `.part` left by an earlier attempt or run), verifies
/// its MD5 and only then renames it into place.
fn download(agent: &ureq::Agent, d: &Download, dir: &Path, progress: &dyn Progress) -> Result<()> {
    let name = d.file_name();
    let dst = dir.join(&name);
    if dst.is_file() {
        return Ok(());
    }
    let part = dir.join(format!(".{name}.part"));
    let mut last = String::new();
    let mut complete = false;
    for n in 0..ATTEMPTS {
        if n > 0 {
            // A short, growing pause: a flapping connection gets a moment to come back.
            std::thread::sleep(Duration::from_millis(200 * n as u64));
        }
        match attempt(agent, d, &part, progress) {
            Ok(()) => {
                complete = true;
                break;
            }
            Err(e) => {
                tracing::warn!("download of {} failed: {e}", d.url);
                last = e;
                // Client errors (404, 401…) do not heal by retrying.
                if last.starts_with("HTTP 4") {
                    break;
                }
            }
        }
    }
    if !complete {
        let kept = match std::fs::metadata(&part) {
            Ok(m) if m.len() > 0 => format!(
                "; the {} bytes received are kept in {} and the next run resumes there",
                m.len(),
                part.display()
            ),
            _ => String::new(),
        };
        return Err(StageError::Config(format!(
            "could not download {} ({last}){kept}. {}",
            d.url,
            local_advice(&d.url)
        )));
    }
    let got = md5_file(&part)?;
    if !got.eq_ignore_ascii_case(&d.md5) {
        std::fs::remove_file(&part).at(&part)?;
        return Err(format_err(
            &dst,
            format!(
                "checksum mismatch for {}: expected MD5 {}, got {got}; the download was \
                 deleted (a changed or corrupt file is never used)",
                d.url, d.md5
            ),
        ));
    }
    std::fs::rename(&part, &dst).at(&dst)?;
    Ok(())
}

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

fn hub(
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
    let fail = |file: &str, e: String| {
        StageError::Config(format!(
            "could not fetch `{file}` from the hub dataset repository `{repo}` (revision \
             `{revision}`, endpoint {endpoint}): {e}. {}",
            local_advice(&format!(
                "{endpoint}/datasets/{repo}/resolve/{revision}/{file}"
            ))
        ))
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

/// The official downloads of a dataset in a format: CIFAR from its authors' page, MNIST from
/// the PyTorch mirror (the original site is unreliable), Fashion-MNIST from Zalando's bucket;
/// each with its published MD5.
pub fn default_downloads(
    dataset: DatasetName,
    format: crate::preprocess::DataFormat,
) -> Option<Vec<Download>> {
    use crate::preprocess::DataFormat;
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
pub fn default_format(dataset: DatasetName, source: &Source) -> crate::preprocess::DataFormat {
    use crate::preprocess::DataFormat;
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
            let mut names = Vec::new();
            if path.is_dir() {
                if let Ok(fp) = fingerprint_path(path) {
                    names = fp;
                }
            }
            let inside = |pat: &str| {
                names.iter().any(|n| {
                    let file = n
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    file.contains(pat)
                })
            };
            if name.contains("binary") || inside(".bin:") || inside("binary") {
                DataFormat::CifarBinary
            } else if name.ends_with(".parquet") || inside(".parquet:") {
                DataFormat::Parquet
            } else {
                DataFormat::CifarPython
            }
        }
        _ => DataFormat::CifarPython,
    }
}
