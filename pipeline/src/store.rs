//! The content-addressed artifact store.
//!
//! Layout: `<root>/<stage>/<key>/` holds a finished artifact — the stage's files plus
//! `manifest.json`. A stage runs in `<root>/<stage>/<key>.staging/` and the directory is renamed
//! into place only after the stage succeeded and its manifest is written, so a killed or failed
//! stage never leaves anything that looks like a result. Resumable stages (train) keep their
//! staging directory across runs: the checkpoints in it let the next run continue.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub key: String,
    pub format_version: u32,
    /// The stage's resolved configuration (what the key hashes).
    pub config: serde_json::Value,
    /// Keys of the input artifacts.
    pub inputs: Vec<String>,
    pub files: Vec<FileEntry>,
    pub created_unix: u64,
    pub seconds: f64,
    pub crate_version: String,
    pub git_commit: Option<String>,
}

pub struct ArtifactStore {
    root: PathBuf,
}

/// What a stage invocation needs to be stored.
pub struct StageSpec<'a, C: Serialize> {
    pub stage: &'a str,
    pub key: &'a str,
    pub format_version: u32,
    pub config: &'a C,
    pub inputs: Vec<String>,
    /// Keep the staging directory of an interrupted run (train checkpoints).
    pub resumable: bool,
}

/// What a build produced: its value, or a suspension that leaves the artifact unfinished.
pub enum Built<T, S> {
    Done(T),
    Suspended(S),
}

pub enum Outcome<T> {
    /// Found in the cache.
    Cached(PathBuf),
    /// Computed now; `T` is what the stage returned.
    Built(PathBuf, T),
}

impl<T> Outcome<T> {
    pub fn dir(&self) -> &Path {
        match self {
            Outcome::Cached(d) | Outcome::Built(d, _) => d,
        }
    }
}

fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut h = blake3::Hasher::new();
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let bytes = std::io::copy(&mut f, &mut h)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok((bytes, h.finalize().to_hex().to_string()))
}

fn list_files(dir: &Path, base: &Path, out: &mut Vec<FileEntry>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            list_files(&p, base, out)?;
        } else {
            let (bytes, blake3) = hash_file(&p)?;
            let rel = p
                .strip_prefix(base)
                .unwrap_or(&p)
                .to_string_lossy()
                .replace('\\', "/");
            out.push(FileEntry {
                path: rel,
                bytes,
                blake3,
            });
        }
    }
    Ok(())
}

/// See [`ArtifactStore::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactState {
    Cached,
    Partial,
    Missing,
}

/// The trimmed output of a successful `git` command in the working directory.
pub fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The current git commit, when run inside a work tree.
pub fn git_commit() -> Option<String> {
    git(&["rev-parse", "HEAD"]).filter(|s| !s.is_empty())
}

impl ArtifactStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(key)
    }

    pub fn staging_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(format!("{key}.staging"))
    }

    /// Whether an artifact is finished, started (a staging directory a run will resume), or
    /// absent.
    pub fn state(&self, stage: &str, key: &str) -> ArtifactState {
        if self.lookup(stage, key).is_some() {
            ArtifactState::Cached
        } else if self.staging_dir(stage, key).exists() {
            ArtifactState::Partial
        } else {
            ArtifactState::Missing
        }
    }

    /// The manifest of a finished artifact, if there is one.
    pub fn lookup(&self, stage: &str, key: &str) -> Option<Manifest> {
        let path = self.dir(stage, key).join(MANIFEST);
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str::<Manifest>(&text)
            .ok()
            .filter(|m| m.key == key && m.stage == stage)
    }

    /// Takes the artifact's exclusive lock (flock-style; released when the file closes). Its
    /// stage directory must exist.
    fn lock(&self, stage: &str, key: &str) -> Result<std::fs::File> {
        let lock_path = self.root.join(stage).join(format!("{key}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("{}: cannot open lock file", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("{}: cannot lock", lock_path.display()))?;
        Ok(lock)
    }

    /// Deletes an artifact and its staging directory (`--force`), under the artifact's lock so
    /// no other process is building it meanwhile. Returns whether anything was there.
    pub fn remove(&self, stage: &str, key: &str) -> Result<bool> {
        let stage_dir = self.root.join(stage);
        if !stage_dir.is_dir() {
            return Ok(false);
        }
        let _lock = self.lock(stage, key)?;
        let mut removed = false;
        for dir in [self.dir(stage, key), self.staging_dir(stage, key)] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("{}: cannot remove", dir.display()))?;
                removed = true;
            }
        }
        Ok(removed)
    }

    /// Returns the cached artifact, or runs `build` in a staging directory and commits it.
    pub fn get_or_build<C: Serialize, T>(
        &self,
        spec: StageSpec<'_, C>,
        build: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<Outcome<T>> {
        let built = self.get_or_build_suspendable(spec, |dir| {
            build(dir).map(Built::<T, std::convert::Infallible>::Done)
        })?;
        match built {
            Ok(outcome) => Ok(outcome),
            Err(never) => match never {},
        }
    }

    /// Like [`ArtifactStore::get_or_build`], for a build that may stop before it is done
    /// (training stopped on request): `Ok(Err(s))` is that suspension; the staging directory
    /// is kept (the spec must be resumable) and nothing is committed.
    pub fn get_or_build_suspendable<C: Serialize, T, S>(
        &self,
        spec: StageSpec<'_, C>,
        build: impl FnOnce(&Path) -> Result<Built<T, S>>,
    ) -> Result<std::result::Result<Outcome<T>, S>> {
        let final_dir = self.dir(spec.stage, spec.key);
        if self.lookup(spec.stage, spec.key).is_some() {
            return Ok(Ok(Outcome::Cached(final_dir)));
        }
        // One builder per artifact across processes sharing the cache: the others wait here,
        // then find the finished artifact. (flock-style lock; released when the file closes.)
        let stage_dir = self.root.join(spec.stage);
        std::fs::create_dir_all(&stage_dir)
            .with_context(|| format!("{}: cannot create", stage_dir.display()))?;
        let lock = self.lock(spec.stage, spec.key)?;
        if self.lookup(spec.stage, spec.key).is_some() {
            return Ok(Ok(Outcome::Cached(final_dir)));
        }
        if final_dir.exists() {
            // A directory without a valid manifest is not a result (e.g. written by hand).
            std::fs::remove_dir_all(&final_dir).with_context(|| {
                format!("{}: cannot remove incomplete artifact", final_dir.display())
            })?;
        }
        let staging = self.staging_dir(spec.stage, spec.key);
        if staging.exists() && !spec.resumable {
            std::fs::remove_dir_all(&staging).with_context(|| {
                format!(
                    "{}: cannot clear stale staging directory",
                    staging.display()
                )
            })?;
        }
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("{}: cannot create", staging.display()))?;
        let started = Instant::now();
        let value = match build(&staging) {
            Ok(Built::Done(v)) => v,
            Ok(Built::Suspended(s)) => {
                debug_assert!(spec.resumable, "only a resumable stage can suspend");
                return Ok(Err(s));
            }
            Err(e) => {
                // A failed stage leaves no litter, unless its staging directory is how it
                // resumes (a train checkpoint, a partial download).
                if !spec.resumable {
                    let _ = std::fs::remove_dir_all(&staging);
                }
                return Err(e);
            }
        };
        let mut files = Vec::new();
        list_files(&staging, &staging, &mut files)?;
        let manifest = Manifest {
            stage: spec.stage.into(),
            key: spec.key.into(),
            format_version: spec.format_version,
            config: serde_json::to_value(spec.config)?,
            inputs: spec.inputs,
            files,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            seconds: started.elapsed().as_secs_f64(),
            crate_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: git_commit(),
        };
        let mpath = staging.join(MANIFEST);
        std::fs::write(&mpath, serde_json::to_string_pretty(&manifest)? + "\n")
            .with_context(|| format!("{}: cannot write", mpath.display()))?;
        std::fs::rename(&staging, &final_dir)
            .with_context(|| format!("cannot move {} into place", staging.display()))?;
        drop(lock);
        Ok(Ok(Outcome::Built(final_dir, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(key: &'a str, cfg: &'a serde_json::Value) -> StageSpec<'a, serde_json::Value> {
        StageSpec {
            stage: "s",
            key,
            format_version: 1,
            config: cfg,
            inputs: vec![],
            resumable: false,
        }
    }

    #[test]
    fn builds_once_then_hits_and_failed_builds_leave_no_artifact() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(tmp.path());
        let cfg = serde_json::json!({"a": 1});
        let failed = store.get_or_build(spec("k1", &cfg), |dir| -> Result<()> {
            std::fs::write(dir.join("half.bin"), b"partial")?;
            anyhow::bail!("killed midway")
        });
        assert!(failed.is_err());
        assert!(store.lookup("s", "k1").is_none());
        assert!(!store.dir("s", "k1").exists());

        let mut runs = 0;
        for _ in 0..2 {
            let out = store
                .get_or_build(spec("k1", &cfg), |dir| {
                    runs += 1;
                    std::fs::write(dir.join("x.txt"), b"hello")?;
                    Ok(())
                })
                .unwrap();
            assert_eq!(std::fs::read(out.dir().join("x.txt")).unwrap(), b"hello");
        }
        assert_eq!(runs, 1, "second call must be a cache hit");
        let m = store.lookup("s", "k1").unwrap();
        assert_eq!(m.files.len(), 1);
        assert_eq!(
            m.files[0].blake3,
            blake3::hash(b"hello").to_hex().to_string()
        );
        assert!(
            !store.dir("s", "k1").join("half.bin").exists(),
            "stale staging content was cleared"
        );
    }

    /// A suspended build commits nothing and keeps its staging directory for the next call,
    /// which finds what the first left there.
    #[test]
    fn a_suspended_build_keeps_its_staging_directory_and_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(tmp.path());
        let cfg = serde_json::json!({"a": 3});
        let resumable = || StageSpec {
            resumable: true,
            ..spec("k2", &cfg)
        };
        let first = store
            .get_or_build_suspendable(resumable(), |dir| {
                std::fs::write(dir.join("checkpoint"), b"step 4")?;
                Ok(Built::<(), u64>::Suspended(4))
            })
            .unwrap();
        assert!(matches!(first, Err(4)));
        assert!(store.lookup("s", "k2").is_none());
        assert_eq!(store.state("s", "k2"), ArtifactState::Partial);
        let second = store
            .get_or_build_suspendable(resumable(), |dir| {
                let resumed = std::fs::read(dir.join("checkpoint"))?;
                Ok(Built::<Vec<u8>, u64>::Done(resumed))
            })
            .unwrap();
        match second {
            Ok(Outcome::Built(_, resumed)) => assert_eq!(resumed, b"step 4"),
            _ => panic!("the second call should finish the artifact"),
        }
        assert_eq!(store.state("s", "k2"), ArtifactState::Cached);
    }

    /// Two builders of the same artifact at once (threads here; processes behave the same with
    /// file locks): one builds, the other waits and gets the cached result.
    #[test]
    fn concurrent_builders_build_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let builds = AtomicUsize::new(0);
        let cfg = serde_json::json!({"a": 2});
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let store = ArtifactStore::new(tmp.path());
                    let out = store
                        .get_or_build(spec("k", &cfg), |dir| {
                            builds.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            std::fs::write(dir.join("x"), b"1")?;
                            Ok(())
                        })
                        .unwrap();
                    assert!(out.dir().join("x").is_file());
                });
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }
}
