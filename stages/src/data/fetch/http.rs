//! `url` sources: HTTP(S) downloads with a published MD5, resumed with `Range` into a hidden
//! `.part` file, verified, then renamed into place.

use super::{local_advice, Download};
use crate::data::readers::input::size_text;
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

/// One transfer into a `.part` file: the URL, the credentials it may carry and the most bytes
/// it may bring.
pub(super) struct Transfer<'a> {
    pub(super) url: &'a str,
    /// `Authorization` header value, only for the host it belongs to.
    pub(super) auth: Option<&'a str>,
    /// The file's expected size when known (a hub file), else the configured maximum: a
    /// server announcing more is refused, one sending more is cut off.
    pub(super) max_bytes: u64,
    /// The file name, for progress lines.
    pub(super) name: &'a str,
}

/// Credentials in text shown to people — a URL's `user:password@`, a token — replaced by
/// `***`: errors and logs are pasted into issues.
pub fn redact(text: &str, secret: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || "\"'`()<>".contains(c)
            })
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    match secret.filter(|s| s.len() >= 4) {
        Some(s) => out.replace(s, "***"),
        None => out,
    }
}

/// One attempt: requests the rest of the file after the bytes already in `part`. `Ok` when
/// the server says the file is complete.
fn attempt(
    agent: &ureq::Agent,
    t: &Transfer<'_>,
    part: &Path,
    progress: &dyn Progress,
) -> std::result::Result<(), AttemptError> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(t.url);
    if let Some(auth) = t.auth {
        req = req.set("Authorization", auth);
    }
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
    if (300..400).contains(&resp.status()) {
        return Err(AttemptError::Refused {
            code: resp.status(),
            status: format!(
                "{} (a redirect where the file was expected)",
                resp.status_text()
            ),
        });
    }
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
        .map(|n| n.saturating_add(start));
    if let Some(total) = total.filter(|&n| n > t.max_bytes) {
        return Err(AttemptError::Refused {
            code: resp.status(),
            status: format!(
                "announces {}, more than the {} expected of it",
                size_text(total),
                size_text(t.max_bytes)
            ),
        });
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(|e| AttemptError::Transient(format!("{}: {e}", part.display())))?;
    file.set_len(start)
        .and_then(|_| file.seek(std::io::SeekFrom::Start(start)).map(|_| ()))
        .map_err(|e| AttemptError::Transient(format!("{}: {e}", part.display())))?;
    progress.begin(&format!("download {}", t.name), total.unwrap_or(0));
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
        if done + n as u64 > t.max_bytes {
            progress.end();
            drop(file);
            // Garbage past the limit: nothing to resume from.
            let _ = std::fs::remove_file(part);
            return Err(AttemptError::Refused {
                code: 200,
                status: format!(
                    "the server sent more than the {} expected of this file; the \
                     download was stopped and deleted",
                    size_text(t.max_bytes)
                ),
            });
        }
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

/// Transfers `t` into `part`, resuming what an earlier attempt or run left there, with
/// retries. The error is the last attempt's, credentials redacted, with what was kept.
pub(super) fn transfer(
    agent: &ureq::Agent,
    t: &Transfer<'_>,
    part: &Path,
    progress: &dyn Progress,
) -> std::result::Result<(), String> {
    let mut last = String::new();
    for n in 0..ATTEMPTS {
        if n > 0 {
            // A short, growing pause: a flapping connection gets a moment to come back.
            std::thread::sleep(Duration::from_millis(200 * n as u64));
        }
        match attempt(agent, t, part, progress) {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = redact(&e.to_string(), t.auth);
                tracing::warn!("download of {} failed: {last}", redact(t.url, None));
                if matches!(e, AttemptError::Refused { .. }) {
                    break;
                }
            }
        }
    }
    let kept = match std::fs::metadata(part) {
        Ok(m) if m.len() > 0 => format!(
            "; the {} bytes received are kept in {} and the next run resumes there",
            m.len(),
            part.display()
        ),
        _ => String::new(),
    };
    Err(format!("{last}{kept}"))
}

/// Downloads `d` into `dir` (resuming a `.part` left by an earlier attempt or run), verifies
/// its MD5 and only then renames it into place. At most `max_bytes` are accepted.
pub(super) fn download(
    agent: &ureq::Agent,
    d: &Download,
    dir: &Path,
    max_bytes: u64,
    progress: &dyn Progress,
) -> Result<()> {
    let name = d.file_name();
    let dst = dir.join(&name);
    if dst.is_file() {
        return Ok(());
    }
    let part = dir.join(format!(".{name}.part"));
    let url = redact(&d.url, None);
    let t = Transfer {
        url: &d.url,
        auth: None,
        max_bytes,
        name: &name,
    };
    if let Err(message) = transfer(agent, &t, &part, progress) {
        return Err(StageError::Download {
            what: url.clone(),
            message: format!("{message}. {}", local_advice(&url)),
        });
    }
    let got = md5_file(&part)?;
    if !got.eq_ignore_ascii_case(&d.md5) {
        std::fs::remove_file(&part).at(&part)?;
        return Err(format_err(
            &dst,
            format!(
                "checksum mismatch for {url}: expected MD5 {}, got {got}; the download was \
                 deleted (a changed or corrupt file is never used)",
                d.md5
            ),
        ));
    }
    std::fs::rename(&part, &dst).at(&dst)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_are_redacted_wherever_they_appear() {
        assert_eq!(
            redact(
                "http://user:secret@hub.local:8080/api: Connection refused",
                None
            ),
            "http://***@hub.local:8080/api: Connection refused"
        );
        assert_eq!(
            redact("`https://tok@h/x` and (http://a:b@c)", None),
            "`https://***@h/x` and (http://***@c)"
        );
        assert_eq!(redact("https://h/a@b", None), "https://h/a@b");
        assert_eq!(
            redact("bad token hf_abcdef here", Some("hf_abcdef")),
            "bad token *** here"
        );
    }
}
