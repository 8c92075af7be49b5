#![allow(dead_code)]
//! A local HTTP server playing a download site and the Hugging Face hub, with failure modes.
//!
//! Paths (`<mode>` decides the behaviour, the rest names a served file):
//! * `/ok/<name>`: the file; `Range: bytes=N-` answered with 206 and the rest.
//! * `/cut/<name>`: without `Range`, announces the whole length but stops halfway and closes;
//!   with `Range`, serves the rest properly (a flaky connection).
//! * `/slow/<name>`: the file in small chunks with pauses.
//! * `/norange/<name>`: the whole file with 200 whatever `Range` asks.
//! * `/e500/<name>`, `/e404/<name>`: that status.
//! * `/<mode>/datasets/<repo>/resolve/<rev>/<file>`: the hub API as hf-hub 0.4 calls it: a
//!   `Range: bytes=0-0` probe answered with `x-repo-commit`, `x-linked-etag` (the SHA-256 the
//!   blob is named after) and `Content-Range`, then ranged downloads. Mode `short` serves a
//!   shortened body with a matching Content-Length (a silently short file); `cut` always stops
//!   halfway; `lie` serves other bytes than the etag promises.

pub mod pickle_write;

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// `(path, Range header)` of every request, in arrival order.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

pub struct Server {
    pub base: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub log: Log,
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let log: Log = Arc::default();
        let (f, l) = (files.clone(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (f, l) = (f.clone(), l.clone());
                std::thread::spawn(move || {
                    let _ = handle(stream, &f, &l);
                });
            }
        });
        Server { base, files, log }
    }

    /// Serves `data` under `name` (for hub files: the file path inside the repository).
    pub fn put(&self, name: &str, data: Vec<u8>) {
        self.files.lock().unwrap().insert(name.to_string(), data);
    }

    pub fn requests(&self, fragment: &str) -> Vec<Option<String>> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.contains(fragment))
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

fn handle(
    mut s: TcpStream,
    files: &Mutex<HashMap<String, Vec<u8>>>,
    log: &Mutex<Vec<(String, Option<String>)>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    log.lock().unwrap().push((path.clone(), range.clone()));
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let mode = parts.next().unwrap_or_default().to_string();
    let rest = parts.next().unwrap_or_default().to_string();
    // Hub paths carry the file after `resolve/<rev>/`.
    let (hub, name) = match rest.find("/resolve/") {
        Some(i) => {
            let after = &rest[i + "/resolve/".len()..];
            (
                true,
                after.split_once('/').map(|x| x.1).unwrap_or("").to_string(),
            )
        }
        None => (false, rest.clone()),
    };
    match mode.as_str() {
        "e500" => {
            respond(&mut s, "500 Internal Server Error", &[], b"");
            return Ok(());
        }
        "e404" => {
            respond(&mut s, "404 Not Found", &[], b"");
            return Ok(());
        }
        _ => {}
    }
    let Some(full) = files.lock().unwrap().get(&name).cloned() else {
        respond(&mut s, "404 Not Found", &[], b"");
        return Ok(());
    };
    let etag = sha256_hex(&full);
    let data = match mode.as_str() {
        "short" => full[..full.len() / 2].to_vec(),
        "lie" => full.iter().map(|b| b ^ 1).collect(),
        _ => full.clone(),
    };
    // `norange`: a server that ignores Range and always sends the whole file with 200.
    let range = if mode == "norange" { None } else { range };
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut headers = vec![];
    if hub {
        headers.push((
            "x-repo-commit".into(),
            "0123456789abcdef0123456789abcdef01234567".into(),
        ));
        headers.push(("x-linked-etag".into(), format!("\"{etag}\"")));
        headers.push(("etag".into(), "\"weak\"".into()));
        if range.as_deref() == Some("bytes=0-0") {
            headers.push(("Content-Range".into(), format!("bytes 0-0/{}", data.len())));
            headers.push(("Content-Length".into(), "1".into()));
            respond(&mut s, "206 Partial Content", &headers, &data[..1]);
            return Ok(());
        }
    }
    if start > data.len() {
        respond(&mut s, "416 Range Not Satisfiable", &[], b"");
        return Ok(());
    }
    let body = &data[start..];
    headers.push(("Content-Length".into(), body.len().to_string()));
    let status = if range.is_some() {
        headers.push((
            "Content-Range".into(),
            format!(
                "bytes {start}-{}/{}",
                data.len().saturating_sub(1),
                data.len()
            ),
        ));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let cut = mode == "cut" && (hub || range.is_none());
    if cut {
        respond(&mut s, status, &headers, &body[..body.len() / 2]);
        let _ = s.flush();
        let _ = s.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    if mode == "slow" {
        respond(&mut s, status, &headers, b"");
        for chunk in body.chunks(body.len().div_ceil(8).max(1)) {
            std::thread::sleep(std::time::Duration::from_millis(30));
            s.write_all(chunk)?;
            s.flush()?;
        }
        return Ok(());
    }
    respond(&mut s, status, &headers, body);
    // Drain anything the client still sends so it sees a clean close.
    let _ = r.read(&mut [0u8; 1]);
    Ok(())
}

/// MD5 (hex) of bytes, for download specs.
pub fn md5_hex(b: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}
