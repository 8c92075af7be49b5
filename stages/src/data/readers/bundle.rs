//! The files of a fetched dataset, whatever their packaging: a directory tree, a single file,
//! and `.tar` / `.tar.gz` / `.tgz` archives (expanded in memory) anywhere among them.
//!
//! Format readers look files up by their last path components, so an archive's top-level
//! folder (`cifar-10-batches-py/…`) or an extra directory level never matters. Loose files are
//! read only when a reader asks for them, so pointing at a large directory costs a listing,
//! not its contents.

use crate::data::readers::input::{self, size_text, Capped, InputLimits};
use crate::error::format_err;
use crate::Result;
use flate2::read::GzDecoder;
use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One file of the bundle.
pub struct Entry {
    /// Path relative to the bundle root (or inside its archive), `/`-separated.
    pub name: String,
    /// The file on disk it came from: itself, or the archive holding it (for messages).
    pub origin: PathBuf,
    /// An archive member's bytes; `None` for a loose file, read on demand.
    data: Option<Vec<u8>>,
    /// The most a loose file may hold (the bundle's limit).
    max_bytes: u64,
}

impl Entry {
    /// The file's bytes (read from disk for a loose file, refusing one over the limit).
    pub fn bytes(&self) -> Result<Cow<'_, [u8]>> {
        match &self.data {
            Some(d) => Ok(Cow::Borrowed(d)),
            None => Ok(Cow::Owned(input::read_file(&self.origin, self.max_bytes)?)),
        }
    }

    /// How to name this file in an error: `archive.tar.gz!/inner/path` or the file path.
    pub fn display(&self) -> PathBuf {
        if self.origin.ends_with(&self.name) {
            self.origin.clone()
        } else {
            PathBuf::from(format!("{}!/{}", self.origin.display(), self.name))
        }
    }
}

pub struct Bundle {
    pub root: PathBuf,
    pub entries: Vec<Entry>,
    /// Every directory, `/`-separated relative names (archive members included): readers that
    /// give folders a meaning (image-folder classes) can see the empty ones.
    pub dirs: Vec<String>,
    /// What readers of this bundle may hold in memory.
    pub limits: InputLimits,
}

fn is_archive(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
}

/// Deflate cannot expand data more than 1032-fold: a gzip stream longer than that many times
/// its file (plus slack for headers) is not a gzip stream.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// The bundle being collected, with the archive bytes held so far.
struct Collect {
    entries: Vec<Entry>,
    dirs: Vec<String>,
    limits: InputLimits,
    held: u64,
}

impl Collect {
    /// Reads every regular file of a tar (optionally gzip-compressed) archive, and notes its
    /// directories. Streamed: a member's declared size is checked against what the archive can
    /// hold and the memory left before anything is allocated, and the decompressed stream is
    /// capped (a gzip bomb stops at the limit, not at the end of memory).
    fn expand(&mut self, path: &Path) -> Result<()> {
        let (file, len) = input::open_regular(path)?;
        let lower = path.to_string_lossy().to_ascii_lowercase();
        let budget = self.limits.max_bytes;
        // Headers, padding and skipped members pass through the stream too.
        let slack = 64 << 20;
        let (reader, holds): (Box<dyn Read>, u64) = if lower.ends_with(".tar") {
            (Box::new(std::io::BufReader::new(file)), len)
        } else {
            let holds = len
                .saturating_mul(DEFLATE_MAX_RATIO)
                .saturating_add(1 << 20);
            let cap = holds.min(budget.saturating_add(slack));
            let gz = GzDecoder::new(std::io::BufReader::new(file));
            (
                Box::new(Capped::new(gz, cap, "the decompressed archive")),
                holds,
            )
        };
        let failed = |e: std::io::Error| {
            let text = e.to_string();
            if text.contains("exceeds the limit") {
                format_err(
                    path,
                    format!("{text} (more than a dataset may take in memory here)"),
                )
            } else {
                format_err(
                    path,
                    format!("corrupt or truncated archive ({text}); delete it and fetch it again"),
                )
            }
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(failed)? {
            let mut entry = entry.map_err(failed)?;
            let name = entry
                .path()
                .map_err(failed)?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            if entry.header().entry_type().is_dir() {
                self.dirs.push(name);
                continue;
            }
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let member = PathBuf::from(format!("{}!/{name}", path.display()));
            let declared = entry.size();
            if declared > holds {
                return Err(format_err(
                    &member,
                    format!(
                        "the tar header declares {}, more than the {} archive can hold: a \
                         corrupt or forged archive",
                        size_text(declared),
                        size_text(len)
                    ),
                ));
            }
            let left = budget.saturating_sub(self.held);
            if declared > left {
                return Err(format_err(
                    &member,
                    format!(
                        "{} does not fit in the {} left of the {} a dataset may take \
                         in memory here",
                        size_text(declared),
                        size_text(left),
                        size_text(budget)
                    ),
                ));
            }
            // Grown as the bytes arrive: the declared size is only believed up to a point.
            let mut data = Vec::with_capacity(declared.min(1 << 26) as usize);
            (&mut entry)
                .take(declared)
                .read_to_end(&mut data)
                .map_err(failed)?;
            if (data.len() as u64) < declared {
                return Err(failed(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "member {name} ends after {} of {declared} bytes",
                        data.len()
                    ),
                )));
            }
            self.held += data.len() as u64;
            self.entries.push(Entry {
                name,
                origin: path.to_path_buf(),
                data: Some(data),
                max_bytes: budget,
            });
        }
        Ok(())
    }

    fn add_file(&mut self, path: &Path, rel: String) -> Result<()> {
        if is_archive(&rel) {
            self.expand(path)
        } else {
            input::open_regular(path)?;
            self.entries.push(Entry {
                name: rel,
                origin: path.to_path_buf(),
                data: None,
                max_bytes: self.limits.max_bytes,
            });
            Ok(())
        }
    }
}

impl Bundle {
    /// Loads `root`: a directory (recursively) or a single file; archives are expanded. What
    /// it may hold in memory is half of what the machine has free.
    pub fn load(root: &Path) -> Result<Self> {
        Self::load_with(root, InputLimits::of_machine())
    }

    /// [`Bundle::load`] within explicit limits.
    pub fn load_with(root: &Path, limits: InputLimits) -> Result<Self> {
        let mut c = Collect {
            entries: Vec::new(),
            dirs: Vec::new(),
            limits,
            held: 0,
        };
        if root.is_dir() {
            let (files, dirs) = input::walk_tree(root, true)?;
            c.dirs = dirs;
            for f in files {
                c.add_file(&f.path, f.rel)?;
            }
        } else {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            c.add_file(root, name)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            entries: c.entries,
            dirs: c.dirs,
            limits,
        })
    }

    /// A bundle of in-memory files (`(name, bytes)`), as if expanded from an archive at `root`:
    /// for tools and fuzzing, which feed readers without touching the disk.
    pub fn from_members(root: &Path, members: Vec<(String, Vec<u8>)>, limits: InputLimits) -> Self {
        let mut dirs: Vec<String> = Vec::new();
        for (name, _) in &members {
            let mut at = name.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                if !dirs.iter().any(|d| d == parent) {
                    dirs.push(parent.to_string());
                }
                at = parent;
            }
        }
        let entries = members
            .into_iter()
            .map(|(name, data)| Entry {
                name,
                origin: root.to_path_buf(),
                data: Some(data),
                max_bytes: limits.max_bytes,
            })
            .collect();
        Self {
            root: root.to_path_buf(),
            entries,
            dirs,
            limits,
        }
    }

    /// The entry whose last path component(s) equal `suffix` (e.g. `data_batch_1` or
    /// `cifar-100-python/train`). `None` when absent; an error when ambiguous.
    pub fn find(&self, suffix: &str) -> Result<Option<&Entry>> {
        let mut hits = self
            .entries
            .iter()
            .filter(|e| e.name == suffix || e.name.ends_with(&format!("/{suffix}")));
        let first = hits.next();
        if let (Some(a), Some(b)) = (first, hits.next()) {
            return Err(format_err(
                &self.root,
                format!(
                    "two files match `{suffix}`: {} and {}; point the recipe at one dataset",
                    a.display().display(),
                    b.display().display()
                ),
            ));
        }
        Ok(first)
    }

    /// Like [`Bundle::find`], but a missing file is an error naming what was expected.
    pub fn require(&self, suffix: &str, what: &str) -> Result<&Entry> {
        self.find(suffix)?.ok_or_else(|| {
            let mut seen: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
            seen.truncate(8);
            format_err(
                &self.root,
                format!(
                    "no file `{suffix}` ({what}) here; found {} file(s){}{}",
                    self.entries.len(),
                    if seen.is_empty() { "" } else { ": " },
                    seen.join(", ")
                ),
            )
        })
    }
}
