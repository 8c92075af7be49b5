//! The files of a fetched dataset, whatever their packaging: a directory tree, a single file,
//! and `.tar` / `.tar.gz` / `.tgz` archives (expanded in memory) anywhere among them.
//!
//! Format readers look files up by their last path components, so an archive's top-level
//! folder (`cifar-10-batches-py/…`) or an extra directory level never matters. Loose files are
//! read only when a reader asks for them, so pointing at a large directory costs a listing,
//! not its contents.

use crate::error::{format_err, IoContext};
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
}

impl Entry {
    /// The file's bytes (read from disk for a loose file).
    pub fn bytes(&self) -> Result<Cow<'_, [u8]>> {
        match &self.data {
            Some(d) => Ok(Cow::Borrowed(d)),
            None => Ok(Cow::Owned(std::fs::read(&self.origin).at(&self.origin)?)),
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
}

fn is_archive(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
}

/// Reads every regular file of a tar (optionally gzip-compressed) archive, and notes its
/// directories.
fn expand(path: &Path, entries: &mut Vec<Entry>, dirs: &mut Vec<String>) -> Result<()> {
    let file = std::fs::File::open(path).at(path)?;
    let lower = path.to_string_lossy().to_ascii_lowercase();
    let reader: Box<dyn Read> = if lower.ends_with(".tar") {
        Box::new(std::io::BufReader::new(file))
    } else {
        Box::new(GzDecoder::new(std::io::BufReader::new(file)))
    };
    let corrupt = |e: std::io::Error| {
        format_err(
            path,
            format!("corrupt or truncated archive ({e}); delete it and fetch it again"),
        )
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let name = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if entry.header().entry_type().is_dir() {
            dirs.push(name);
            continue;
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data).map_err(corrupt)?;
        entries.push(Entry {
            name,
            origin: path.to_path_buf(),
            data: Some(data),
        });
    }
    Ok(())
}

fn walk(dir: &Path, rel: &str, entries: &mut Vec<Entry>, dirs: &mut Vec<String>) -> Result<()> {
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .at(dir)?;
    children.sort();
    for p in children {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue; // .DS_Store, editor droppings, our own `.part` files
        }
        let rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if p.is_dir() {
            dirs.push(rel.clone());
            walk(&p, &rel, entries, dirs)?;
        } else {
            add_file(&p, rel, entries, dirs)?;
        }
    }
    Ok(())
}

fn add_file(
    path: &Path,
    rel: String,
    entries: &mut Vec<Entry>,
    dirs: &mut Vec<String>,
) -> Result<()> {
    if is_archive(&rel) {
        expand(path, entries, dirs)
    } else {
        entries.push(Entry {
            name: rel,
            origin: path.to_path_buf(),
            data: None,
        });
        Ok(())
    }
}

impl Bundle {
    /// Loads `root`: a directory (recursively) or a single file; archives are expanded.
    pub fn load(root: &Path) -> Result<Self> {
        let (mut entries, mut dirs) = (Vec::new(), Vec::new());
        if root.is_dir() {
            walk(root, "", &mut entries, &mut dirs)?;
        } else {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            add_file(root, name, &mut entries, &mut dirs)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            entries,
            dirs,
        })
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
