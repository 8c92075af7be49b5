//! Reading data that comes from outside within bounds: only regular files (a FIFO would hang
//! the run, `/dev/zero` never ends), never a symlink out of the dataset, and never more bytes
//! than a limit — whatever a file, an archive header or a compressed stream claims.

use crate::error::{format_err, IoContext};
use crate::Result;
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the machine's free memory cannot be read, the most one dataset may expand to.
const FALLBACK_MAX_BYTES: u64 = 8 << 30;

/// How many bytes a reader may hold in memory for one dataset: decompressed archive members,
/// loose files, and the decoded pixels of an image folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    pub max_bytes: u64,
}

impl InputLimits {
    /// Half the memory this process may still use (the decoded copy and the artifact need the
    /// rest), or 8 GiB where that is unknown.
    pub fn of_machine() -> Self {
        let max_bytes = crate::host::available_memory()
            .map(|a| a / 2)
            .unwrap_or(FALLBACK_MAX_BYTES);
        Self { max_bytes }
    }
}

/// `n` bytes, readably.
pub fn size_text(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// What a path (after following symlinks) is, refusing anything but files and directories.
fn kind_of(path: &Path) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).at(path)?;
    if meta.is_file() || meta.is_dir() {
        return Ok(meta);
    }
    let ft = meta.file_type();
    #[cfg(unix)]
    let what = {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        }
    };
    #[cfg(not(unix))]
    let what = {
        let _ = ft;
        "not a regular file"
    };
    Err(format_err(
        path,
        format!("{what}, not a regular file: datasets are read only from regular files"),
    ))
}

/// Opens a regular file for reading: a FIFO, socket or device is refused before it is opened
/// (opening a FIFO blocks until a writer comes).
pub fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let meta = kind_of(path)?;
    if meta.is_dir() {
        return Err(format_err(path, "is a directory, expected a file"));
    }
    let file = std::fs::File::open(path).at(path)?;
    // The file checked is the file opened (it may have been replaced in between).
    let opened = file.metadata().at(path)?;
    if !opened.is_file() {
        return Err(format_err(path, "changed into something else while opened"));
    }
    Ok((file, opened.len()))
}

/// A reader that fails once more than `left` bytes come through, naming what it caps.
pub struct Capped<R> {
    inner: R,
    left: u64,
    cap: u64,
    what: &'static str,
}

impl<R: Read> Capped<R> {
    pub fn new(inner: R, cap: u64, what: &'static str) -> Self {
        Self {
            inner,
            left: cap,
            cap,
            what,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte past the cap is asked for, so reaching it exactly is not an error.
        let want = buf.len().min(self.left.saturating_add(1) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "{} exceeds the limit of {}",
                self.what,
                size_text(self.cap)
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads a whole regular file of at most `max` bytes (checked before reading, and while
/// reading, should the file grow).
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > max {
        return Err(format_err(
            path,
            format!(
                "{} is more than the {} a dataset file may take in memory here",
                size_text(len),
                size_text(max)
            ),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    Capped::new(file, max, "the file")
        .read_to_end(&mut out)
        .at(path)?;
    Ok(out)
}

/// One file found under a dataset root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `/`-separated path relative to the root.
    pub rel: String,
    /// The path to open (through the symlink, if one).
    pub path: PathBuf,
    pub meta_len: u64,
    pub modified: Option<std::time::SystemTime>,
}

/// Every regular file and directory under `root`, sorted, hidden names (`.DS_Store`, `.part`
/// files) skipped when `skip_hidden`. A symlink must stay inside the root and a directory is
/// visited once (no loops); FIFOs, sockets and devices are errors naming them.
pub fn walk_tree(root: &Path, skip_hidden: bool) -> Result<(Vec<Found>, Vec<String>)> {
    let canonical = root.canonicalize().at(root)?;
    let mut walk = Walk {
        root: canonical.clone(),
        seen: HashSet::from([canonical]),
        files: Vec::new(),
        dirs: Vec::new(),
        skip_hidden,
    };
    walk.dir(root, "")?;
    Ok((walk.files, walk.dirs))
}

struct Walk {
    root: PathBuf,
    seen: HashSet<PathBuf>,
    files: Vec<Found>,
    dirs: Vec<String>,
    skip_hidden: bool,
}

impl Walk {
    fn dir(&mut self, dir: &Path, rel: &str) -> Result<()> {
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
            if self.skip_hidden && name.starts_with('.') {
                continue;
            }
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            self.entry(&p, rel)?;
        }
        Ok(())
    }

    fn entry(&mut self, p: &Path, rel: String) -> Result<()> {
        let link = std::fs::symlink_metadata(p).at(p)?.file_type().is_symlink();
        if link {
            let target = p.canonicalize().at(p)?;
            if !target.starts_with(&self.root) {
                return Err(format_err(
                    p,
                    format!(
                        "symlink to {}, outside the dataset {}: a dataset is read only \
                         inside its own folder",
                        target.display(),
                        self.root.display()
                    ),
                ));
            }
        }
        let meta = kind_of(p)?;
        if meta.is_dir() {
            let canonical = p.canonicalize().at(p)?;
            if !self.seen.insert(canonical) {
                return Err(format_err(
                    p,
                    "a symlink loop (this folder was already read through another path)",
                ));
            }
            self.dirs.push(rel.clone());
            return self.dir(p, &rel);
        }
        self.files.push(Found {
            rel,
            path: p.to_path_buf(),
            meta_len: meta.len(),
            modified: meta.modified().ok(),
        });
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn capped_reader_allows_the_cap_and_refuses_one_byte_more() {
        let mut out = Vec::new();
        Capped::new(&[7u8; 10][..], 10, "x")
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 10);
        let e = Capped::new(&[7u8; 11][..], 10, "the stream")
            .read_to_end(&mut Vec::new())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "the stream exceeds the limit of 10 bytes");
    }

    #[test]
    fn sizes_read_as_binary_units() {
        assert_eq!(size_text(1000), "1000 bytes");
        assert_eq!(size_text(3 << 20), "3.0 MiB");
        assert_eq!(size_text(60 << 30), "60.0 GiB");
    }
}
