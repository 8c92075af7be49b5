//! Hostile servers (issue "Hostile inputs", items 7–9): a hub that redirects to another host,
//! an endpoint with credentials in it, a body without end, a length beyond reason, and file
//! names that climb out of the cache. Local servers only.

use opt_stages::data::fetch::{self, DatasetName, Download, FetchConfig, FetchLimits, Source};
use opt_stages::Progress;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A request as the server saw it: path and headers (lower-case names).
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

enum Body {
    Bytes(Vec<u8>),
    /// Zeros until the client hangs up, with no length announced.
    Endless,
}

type Handler = dyn Fn(&Seen) -> (String, Vec<(String, String)>, Body) + Send + Sync;

/// Serves `handler` on `host` (`127.0.0.1` or `localhost`: two hosts to a client), logging
/// every request.
fn serve(handler: Arc<Handler>) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let l = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (h, l) = (handler.clone(), l.clone());
            std::thread::spawn(move || {
                let _ = answer(stream, &*h, &l);
            });
        }
    });
    (port, log)
}

fn answer(mut s: TcpStream, handler: &Handler, log: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let seen = Seen { path, headers };
    log.lock().unwrap().push(seen.clone());
    let (status, headers, body) = handler(&seen);
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    match body {
        Body::Bytes(b) => s.write_all(&b)?,
        Body::Endless => {
            let zeros = vec![0u8; 1 << 16];
            loop {
                s.write_all(&zeros)?;
            }
        }
    }
    Ok(())
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Serves `data` with Range support (the hub's `bytes=0-0` probe included).
fn ranged(seen: &Seen, data: &[u8]) -> (String, Vec<(String, String)>, Body) {
    let start: usize = seen
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let end = if seen.header("range") == Some("bytes=0-0") {
        1
    } else {
        data.len()
    };
    let body = data[start..end].to_vec();
    let headers = vec![
        ("Content-Length".into(), body.len().to_string()),
        (
            "Content-Range".into(),
            format!("bytes {start}-{}/{}", end - 1, data.len()),
        ),
    ];
    ("206 Partial Content".into(), headers, Body::Bytes(body))
}

/// Collects warnings.
#[derive(Default)]
struct Warnings(Mutex<Vec<String>>);

impl Progress for Warnings {
    fn begin(&self, _: &str, _: u64) {}
    fn update(&self, _: u64, _: &str) {}
    fn note(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
    fn end(&self) {}
}

fn hub_cfg(endpoint: String, files: &[&str], cache: &Path) -> FetchConfig {
    FetchConfig {
        dataset: DatasetName::Cifar10,
        source: Source::Hub {
            endpoint,
            repo: "uoft-cs/cifar10".into(),
            revision: "main".into(),
            files: files.iter().map(|s| s.to_string()).collect(),
            cache_dir: Some(cache.to_path_buf()),
        },
    }
}

/// The only test here that sets `HF_TOKEN` (the environment is the process's).
#[test]
fn the_token_stays_on_its_host_and_credentials_never_show() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let etag = sha256_hex(&data);
    // The CDN: another host (`localhost` vs `127.0.0.1`), serving the blob.
    let blob = data.clone();
    let (cdn_port, cdn_log) = serve(Arc::new(move |s: &Seen| ranged(s, &blob)));
    // The hub: the resolve URL redirects first within itself (relative), then to the CDN.
    let etag2 = etag.clone();
    let (hub_port, hub_log) = serve(Arc::new(move |s: &Seen| {
        let mut headers = vec![
            (
                "x-repo-commit".to_string(),
                "0123456789abcdef0123456789abcdef01234567".to_string(),
            ),
            ("x-linked-etag".into(), format!("\"{etag2}\"")),
        ];
        if s.path.contains("/resolve/") {
            headers.push(("Location".into(), "/api/moved/train.parquet".into()));
        } else {
            headers.push((
                "Location".into(),
                format!("http://localhost:{cdn_port}/blob/train.parquet"),
            ));
        }
        ("302 Found".into(), headers, Body::Bytes(vec![]))
    }));
    std::env::set_var("HF_TOKEN", "hf_secret_token_1234");
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let warnings = Warnings::default();
    let endpoint = format!("http://127.0.0.1:{hub_port}");
    fetch::run(
        &hub_cfg(endpoint.clone(), &["train.parquet"], cache.path()),
        out.path(),
        &warnings,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(out.path().join("files/train.parquet")).unwrap(),
        data
    );
    let hub = hub_log.lock().unwrap().clone();
    assert_eq!(hub.len(), 2, "{hub:?}");
    for s in &hub {
        assert_eq!(
            s.header("authorization"),
            Some("Bearer hf_secret_token_1234"),
            "{s:?}"
        );
    }
    let cdn = cdn_log.lock().unwrap().clone();
    assert!(cdn.len() >= 2, "probe and download: {cdn:?}");
    assert!(
        cdn.iter().all(|s| s.header("authorization").is_none()),
        "the token went to another host: {cdn:?}"
    );
    // Plain http with a token: said out loud.
    let w = warnings.0.lock().unwrap().join("\n");
    assert!(
        w.contains(&format!(
            "warning: HF_TOKEN goes to {endpoint} over plain http://"
        )),
        "{w}"
    );

    // Credentials in the endpoint, and the token, never appear in an error.
    let cache = tempfile::tempdir().unwrap();
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let endpoint = format!("http://alice:pa55word@127.0.0.1:{dead_port}");
    let e = fetch::run(
        &hub_cfg(endpoint, &["train.parquet"], cache.path()),
        out.path(),
        &Warnings::default(),
    )
    .unwrap_err()
    .to_string();
    std::env::remove_var("HF_TOKEN");
    assert!(!e.contains("pa55word") && !e.contains("hf_secret"), "{e}");
    assert!(
        e.contains(&format!("http://***@127.0.0.1:{dead_port}")),
        "{e}"
    );
}

#[test]
fn hub_file_names_are_checked_before_any_request_or_path() {
    let (port, log) = serve(Arc::new(|s: &Seen| ranged(s, b"x")));
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = fetch::run(
        &hub_cfg(
            format!("http://127.0.0.1:{port}"),
            &["../../escaped.parquet"],
            cache.path(),
        ),
        out.path(),
        &Warnings::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("dataset.files: file \"../../escaped.parquet\" has an empty, `.` or `..`"),
        "{e}"
    );
    assert!(log.lock().unwrap().is_empty());
    assert!(!cache
        .path()
        .parent()
        .unwrap()
        .join("escaped.parquet")
        .exists());
}

#[test]
fn bodies_are_held_to_their_expected_size() {
    // A server that never stops, announcing no length.
    let (port, _) = serve(Arc::new(|_: &Seen| {
        ("200 OK".into(), vec![], Body::Endless)
    }));
    let dir = tempfile::tempdir().unwrap();
    let cfg = FetchConfig {
        dataset: DatasetName::Cifar10,
        source: Source::Url {
            files: vec![Download {
                url: format!("http://127.0.0.1:{port}/endless.tar.gz"),
                md5: "0".repeat(32),
            }],
        },
    };
    let limits = FetchLimits {
        max_download_bytes: 4 << 20,
    };
    let t = std::time::Instant::now();
    let e = fetch::run_with(&cfg, dir.path(), limits, &Warnings::default())
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
    assert!(
        e.contains("the server sent more than the 4.0 MiB expected of this file"),
        "{e}"
    );
    let files = dir.path().join("files");
    let left: Vec<_> = std::fs::read_dir(&files).unwrap().collect();
    assert!(left.is_empty(), "nothing past the limit is kept: {left:?}");

    // One announcing 100 GB: refused before a byte is read.
    let (port, _) = serve(Arc::new(|_: &Seen| {
        (
            "200 OK".into(),
            vec![("Content-Length".into(), (100u64 << 30).to_string())],
            Body::Bytes(vec![0; 10]),
        )
    }));
    let cfg = FetchConfig {
        dataset: DatasetName::Cifar10,
        source: Source::Url {
            files: vec![Download {
                url: format!("http://127.0.0.1:{port}/huge.tar.gz"),
                md5: "0".repeat(32),
            }],
        },
    };
    let e = fetch::run_with(&cfg, dir.path(), limits, &Warnings::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("announces 100.0 GiB, more than the 4.0 MiB expected of it"),
        "{e}"
    );

    // A hub file is held to the size the hub announced for it.
    let (cdn_port, _) = serve(Arc::new(|s: &Seen| {
        if s.header("range") == Some("bytes=0-0") {
            ranged(s, &[0u8; 1000])
        } else {
            ("200 OK".into(), vec![], Body::Endless)
        }
    }));
    let (hub_port, _) = serve(Arc::new(move |_: &Seen| {
        let headers = vec![
            ("x-repo-commit".to_string(), "c0ffee".to_string()),
            ("x-linked-etag".into(), "\"abc\"".into()),
            (
                "Location".into(),
                format!("http://localhost:{cdn_port}/blob"),
            ),
        ];
        ("302 Found".into(), headers, Body::Bytes(vec![]))
    }));
    let cache = tempfile::tempdir().unwrap();
    let e = fetch::run(
        &hub_cfg(
            format!("http://127.0.0.1:{hub_port}"),
            &["train.parquet"],
            cache.path(),
        ),
        dir.path(),
        &Warnings::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the server sent more than the 1000 bytes expected of this file"),
        "{e}"
    );
}
