//! `orthopt cache`: what the artifact store holds (size per stage), which artifacts no recipe
//! in a set of directories refers to, and removing those.

use crate::grid;
use crate::store::{ArtifactStore, MANIFEST};
use anyhow::Result;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const STAGES: [&str; 4] = ["fetch", "preprocess", "train", "evaluate"];

/// One artifact directory of the store (finished, or a staging directory a run would resume).
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub stage: &'static str,
    pub key: String,
    pub dir: PathBuf,
    pub bytes: u64,
    /// A `<key>.staging` directory: an interrupted build (a train checkpoint, a partial download).
    pub partial: bool,
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Every artifact in the store, stage by stage, sorted by key.
pub fn artifacts(store: &ArtifactStore) -> Vec<Artifact> {
    let mut out = Vec::new();
    for stage in STAGES {
        let Ok(entries) = std::fs::read_dir(store.root().join(stage)) else {
            continue;
        };
        let mut found: Vec<Artifact> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (key, partial) = match name.strip_suffix(".staging") {
                    Some(key) => (key.to_string(), true),
                    None if e.path().join(MANIFEST).is_file() => (name, false),
                    None => return None,
                };
                Some(Artifact {
                    stage,
                    key,
                    dir: e.path(),
                    bytes: dir_bytes(&e.path()),
                    partial,
                })
            })
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        out.extend(found);
    }
    out
}

/// Recipe files (`.toml`, `.yaml`, `.yml`) under `paths` (files or directories), sorted.
pub fn recipe_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), out);
            }
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("toml" | "yaml" | "yml")
        ) {
            out.push(p.to_path_buf());
        }
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out);
    }
    out.sort();
    out
}

/// What the recipes under `paths` refer to: every stage key of every grid entry, and the
/// recipes that could not be resolved (their artifacts cannot be told apart).
pub struct References {
    pub keys: HashSet<String>,
    pub recipes: usize,
    pub unresolved: Vec<(PathBuf, String)>,
}

pub fn references(paths: &[PathBuf]) -> References {
    let mut refs = References {
        keys: HashSet::new(),
        recipes: 0,
        unresolved: Vec::new(),
    };
    for file in recipe_files(paths) {
        let keys = grid::expand(&file, &[])
            .map_err(anyhow::Error::from)
            .and_then(|g| {
                g.entries
                    .iter()
                    .map(|e| e.plan.keys())
                    .collect::<Result<Vec<_>>>()
            });
        match keys {
            Ok(keys) => {
                refs.recipes += 1;
                for k in keys {
                    refs.keys
                        .extend([k.fetch, k.preprocess, k.train, k.evaluate]);
                }
            }
            Err(e) => refs
                .unresolved
                .push((file, crate::progress::error_text(&e))),
        }
    }
    refs
}

/// Artifacts whose key none of `refs` uses.
pub fn unused(all: &[Artifact], refs: &References) -> Vec<Artifact> {
    all.iter()
        .filter(|a| !refs.keys.contains(&a.key))
        .cloned()
        .collect()
}

/// Removes `artifacts` (under each one's lock); returns the bytes freed.
pub fn remove(store: &ArtifactStore, artifacts: &[Artifact]) -> Result<u64> {
    let mut freed = 0;
    for a in artifacts {
        store.remove(a.stage, &a.key)?;
        freed += a.bytes;
    }
    Ok(freed)
}

/// `12.3 MB`-style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500), "1.5 kB");
        assert_eq!(human(2_340_000_000), "2.3 GB");
    }
}
