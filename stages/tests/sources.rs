//! The `url` and `hub` sources against a local server (no network): verified, resumable
//! downloads, and clear errors that never leave a half-downloaded file in use.

mod common;

use common::{md5_hex, Server};
use opt_stages::data::fetch::{self, DatasetName, Download, FetchConfig, Source, FILES_DIR};
use opt_stages::Silent;
use std::path::Path;

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn url_cfg(files: Vec<Download>) -> FetchConfig {
    FetchConfig {
        dataset: DatasetName::Cifar10,
        source: Source::Url { files },
    }
}

fn fetch_into(cfg: &FetchConfig, out: &Path) -> opt_stages::Result<Vec<String>> {
    std::fs::create_dir_all(out).unwrap();
    fetch::run(cfg, out, &Silent)
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join(FILES_DIR))
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn url_downloads_are_verified_resumed_and_fail_clearly() {
    let server = Server::start();
    let data = payload(300_000, 1);
    server.put("cifar.tar.gz", data.clone());
    let md5 = md5_hex(&data);
    let dl = |mode: &str, md5: &str| Download {
        url: format!("{}/{mode}/cifar.tar.gz", server.base),
        md5: md5.into(),
    };

    // Plain, slow, and cut-then-resumed downloads all land complete and verified.
    for mode in ["ok", "slow", "cut"] {
        let out = tempfile::tempdir().unwrap();
        let written = fetch_into(&url_cfg(vec![dl(mode, &md5)]), out.path()).unwrap();
        assert_eq!(written, vec!["cifar.tar.gz"]);
        let got = std::fs::read(out.path().join(FILES_DIR).join("cifar.tar.gz")).unwrap();
        assert!(got == data, "{mode}: content differs");
        assert_eq!(
            leftovers(out.path()),
            vec!["cifar.tar.gz"],
            "{mode}: no .part left"
        );
    }
    // The cut transfer was resumed with a Range request from where it stopped.
    let ranges = server.requests("/cut/");
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    assert_eq!(ranges[1], Some(format!("bytes={}-", data.len() / 2)));

    // A `.part` left by an earlier run is resumed, not restarted.
    let out = tempfile::tempdir().unwrap();
    let files = out.path().join(FILES_DIR);
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join(".cifar.tar.gz.part"), &data[..1000]).unwrap();
    fetch_into(&url_cfg(vec![dl("ok", &md5)]), out.path()).unwrap();
    assert_eq!(std::fs::read(files.join("cifar.tar.gz")).unwrap(), data);
    assert_eq!(
        server.requests("/ok/").last().unwrap(),
        &Some("bytes=1000-".to_string())
    );

    // A server that ignores Range: the stale `.part` (here: wrong bytes) is restarted, not
    // appended to.
    let out = tempfile::tempdir().unwrap();
    let files = out.path().join(FILES_DIR);
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join(".cifar.tar.gz.part"), vec![0xAB; 1000]).unwrap();
    fetch_into(&url_cfg(vec![dl("norange", &md5)]), out.path()).unwrap();
    assert_eq!(std::fs::read(files.join("cifar.tar.gz")).unwrap(), data);

    // A checksum mismatch names the URL and the file, and deletes the download.
    let out = tempfile::tempdir().unwrap();
    let wrong = "0123456789abcdef0123456789abcdef";
    let e = fetch_into(&url_cfg(vec![dl("ok", wrong)]), out.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cifar.tar.gz") && e.contains("checksum mismatch") && e.contains(wrong),
        "{e}"
    );
    assert!(
        leftovers(out.path()).is_empty(),
        "{:?}",
        leftovers(out.path())
    );

    // Server errors and unreachable hosts say what was tried and how to supply the data.
    for (url, what) in [
        (format!("{}/e500/cifar.tar.gz", server.base), "HTTP 500"),
        (format!("{}/e404/cifar.tar.gz", server.base), "HTTP 404"),
        ("http://127.0.0.1:9/cifar.tar.gz".to_string(), "127.0.0.1:9"),
    ] {
        let out = tempfile::tempdir().unwrap();
        let e = fetch_into(
            &url_cfg(vec![Download {
                url: url.clone(),
                md5: md5.clone(),
            }]),
            out.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&url) && e.contains(what) && e.contains("dataset.source = \"local\""),
            "{e}"
        );
        assert!(!out.path().join(FILES_DIR).join("cifar.tar.gz").exists());
    }
    assert_eq!(server.requests("/e404/").len(), 1, "a 404 is not retried");
}

fn hub_cfg(server: &Server, mode: &str, files: &[&str], cache: &Path) -> FetchConfig {
    FetchConfig {
        dataset: DatasetName::Cifar100,
        source: Source::Hub {
            endpoint: format!("{}/{mode}", server.base),
            repo: "uoft-cs/cifar100".into(),
            revision: "main".into(),
            files: files.iter().map(|s| s.to_string()).collect(),
            cache_dir: Some(cache.to_path_buf()),
        },
    }
}

#[test]
fn hub_files_come_through_hf_hub_and_are_verified() {
    let server = Server::start();
    let train = payload(200_000, 2);
    let test = payload(50_000, 3);
    let names = [
        "cifar100/train-00000-of-00001.parquet",
        "cifar100/test-00000-of-00001.parquet",
    ];
    server.put(names[0], train.clone());
    server.put(names[1], test.clone());

    for mode in ["ok", "slow"] {
        let cache = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        fetch_into(&hub_cfg(&server, mode, &names, cache.path()), out.path()).unwrap();
        let files = out.path().join(FILES_DIR);
        assert_eq!(
            std::fs::read(files.join(names[0])).unwrap(),
            train,
            "{mode}"
        );
        assert_eq!(std::fs::read(files.join(names[1])).unwrap(), test, "{mode}");
        // hf-hub probed with `Range: bytes=0-0` on the resolve path.
        assert!(server
            .requests(&format!(
                "/{mode}/datasets/uoft-cs/cifar100/resolve/main/{}",
                names[0]
            ))
            .contains(&Some("bytes=0-0".into())));
    }

    // Files already in the hub cache are used without the network (this endpoint fails).
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    fetch_into(&hub_cfg(&server, "ok", &names, cache.path()), out.path()).unwrap();
    let again = tempfile::tempdir().unwrap();
    let before = server.log.lock().unwrap().len();
    fetch_into(
        &hub_cfg(&server, "e500", &names, cache.path()),
        again.path(),
    )
    .unwrap();
    assert_eq!(
        server.log.lock().unwrap().len(),
        before,
        "no request for cached files"
    );
    assert_eq!(
        std::fs::read(again.path().join(FILES_DIR).join(names[1])).unwrap(),
        test
    );

    // Short, cut and corrupted transfers are refused; nothing lands in the artifact.
    for (mode, what) in [
        ("short", "content hash"),
        ("lie", "content hash"),
        ("cut", "uoft-cs/cifar100"),
        ("e500", "500"),
        ("e404", "404"),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let e = fetch_into(
            &hub_cfg(&server, mode, &names[1..], cache.path()),
            out.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(what) && e.contains("test-00000-of-00001.parquet"),
            "{mode}: {e}"
        );
        assert!(
            !out.path().join(FILES_DIR).join(names[1]).exists(),
            "{mode}: a bad file was kept"
        );
        if mode != "short" && mode != "lie" {
            assert!(e.contains("dataset.source = \"local\""), "{mode}: {e}");
        }
    }
}
