//! `url` sources: HTTP(S) downloads with a published MD5, resumed with `Range` into a hidden
//! `.part` file, verified, then renamed into place.

use super::{local_advice, Download};
use crate::error::{format_err, IoContext};
use crate::progress::Progress;
use crate::{Result, StageError};
use md5::{Digest, Md5};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

pub(super) fn hex(bytes: &[u8]) -> String {
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

/// Why one attempt failed, and so whether another can help.
#[derive(Debug)]
enum AttemptError {
    /// The server refused the request (4xx: not found, forbidden…): retrying cannot heal it.
    Refused { code: u16, status: String },
    /// Anything else (a cut connection, a 5xx, a local write error): worth another attempt.
    Transient(String),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Refused { code, status } => write!(f, "HTTP {code} {status}"),
            AttemptError::Transient(message) => f.write_str(message),
        }
    }
}

/// One attempt: requests the rest of the file after the bytes already in `part`. `Ok` when
/// the server says the file is complete.
fn attempt(
    agent: &ureq::Agent,
    d: &Download,
    part: &Path,
    progress: &dyn Progress,
) -> std::result::Result<(), AttemptError> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(&d.url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // Range starts at the end: everything is there already.
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(ureq::Error::Status(code, r)) if (400..500).contains(&code) => {
            return Err(AttemptError::Refused {
                code,
                status: r.status_text().to_string(),
            });
        }
        Err(ureq::Error::Status(code, r)) => {
            return Err(AttemptError::Transient(format!(
                "HTTP {code} {}",
                r.status_text()
            )));
        }
        Err(e) => return Err(AttemptError::Transient(e.to_string())),
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
        .map_err(|e| AttemptError::Transient(format!("{}: {e}", part.display())))?;
    file.set_len(start)
        .and_then(|_| file.seek(std::io::SeekFrom::Start(start)).map(|_| ()))
        .map_err(|e| AttemptError::Transient(format!("{}: {e}", part.display())))?;
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
                return Err(AttemptError::Transient(format!(
                    "connection cut after {done} bytes: {e}"
                )));
            }
        };
        file.write_all(&buf[..n])
            .map_err(|e| AttemptError::Transient(format!("{}: {e}", part.display())))?;
        done += n as u64;
        progress.update(done, "");
    }
    progress.end();
    file.sync_all()
        .map_err(|e| AttemptError::Transient(format!("{}: {e}", part.display())))?;
    match total {
        Some(t) if done < t => Err(AttemptError::Transient(format!(
            "connection cut after {done} of {t} bytes"
        ))),
        _ => Ok(()),
    }
}

/// Downloads `d` into `dir` (resuming a `.part` left by an earlier attempt or run), verifies
/// its MD5 and only then renames it into place.
pub(super) fn download(
    agent: &ureq::Agent,
    d: &Download,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<()> {
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
                last = e.to_string();
                if matches!(e, AttemptError::Refused { .. }) {
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
        return Err(StageError::Download {
            what: d.url.clone(),
            message: format!("{last}{kept}. {}", local_advice(&d.url)),
        });
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
