//! `orthopt cache`: the cache's size per stage, and the artifacts no recipe refers to.

use crate::cache::human;
use crate::store::ArtifactStore;
use anyhow::Result;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The artifacts per stage; with `keep`, those no recipe under these paths refers to, which
/// `clean` removes.
pub fn cache(cache: &Path, keep: &[PathBuf], clean: bool, out: &mut dyn Write) -> Result<()> {
    let store = ArtifactStore::new(cache);
    let all = crate::cache::artifacts(&store);
    writeln!(out, "# cache {}\n", cache.display())?;
    writeln!(out, "| stage | artifacts | partial | size |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    for stage in crate::cache::STAGES {
        let of: Vec<_> = all.iter().filter(|a| a.stage == stage).collect();
        writeln!(
            out,
            "| {stage} | {} | {} | {} |",
            of.iter().filter(|a| !a.partial).count(),
            of.iter().filter(|a| a.partial).count(),
            human(of.iter().map(|a| a.bytes).sum())
        )?;
    }
    writeln!(
        out,
        "| all | {} | | {} |",
        all.len(),
        human(all.iter().map(|a| a.bytes).sum())
    )?;
    if keep.is_empty() {
        return Ok(());
    }
    let refs = crate::cache::references(keep);
    for (file, error) in &refs.unresolved {
        eprintln!("warning: {}: not resolvable ({error})", file.display());
    }
    let unused = crate::cache::unused(&all, &refs);
    writeln!(
        out,
        "\n{} artifacts ({}) are used by none of the {} recipes under {}:",
        unused.len(),
        human(unused.iter().map(|a| a.bytes).sum()),
        refs.recipes,
        keep.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    for a in &unused {
        let partial = if a.partial { " (partial)" } else { "" };
        writeln!(
            out,
            "  {:<10} {}  {}{partial}",
            a.stage,
            &a.key[..16.min(a.key.len())],
            human(a.bytes)
        )?;
    }
    if !clean {
        if !unused.is_empty() {
            writeln!(out, "`--clean` removes them.")?;
        }
        return Ok(());
    }
    if !refs.unresolved.is_empty() {
        anyhow::bail!(
            "not cleaning: {} recipe(s) could not be resolved, so their artifacts cannot be told \
             apart (see the warnings); fix or exclude them",
            refs.unresolved.len()
        );
    }
    let freed = crate::cache::remove(&store, &unused)?;
    writeln!(out, "removed {} artifacts, {}", unused.len(), human(freed))?;
    Ok(())
}
