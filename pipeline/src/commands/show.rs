//! `orthopt show`: the fully resolved recipe, each stage's configuration, and each stage's
//! cache key and status.

use super::RecipeArgs;
use crate::grid;
use crate::recipe;
use crate::store::{ArtifactState, ArtifactStore};
use anyhow::{Context, Result};
use std::io::Write;

/// Prints the resolved recipe (with its grid), the base entry's stage configurations as JSON,
/// and its stage keys with their state in the cache.
pub fn show(args: &RecipeArgs, out: &mut dyn Write) -> Result<()> {
    let grid = grid::expand(&args.recipe, &args.set)?;
    let plan = &grid.base;
    let keys = plan.keys()?;
    // The recipe as written (with its grid), resolved; the stage configurations are the base's.
    let mut recipe = recipe::load(&args.recipe, &args.set)?.recipe;
    recipe.name = Some(plan.name.clone());
    writeln!(out, "# resolved recipe: {}", plan.recipe_file.display())?;
    writeln!(
        out,
        "{}",
        toml::to_string(&recipe).context("rendering the recipe as TOML")?
    )?;
    writeln!(out, "# resolved stage configurations")?;
    let resolved = serde_json::json!({
        "fetch": plan.fetch,
        "preprocess": plan.preprocess,
        "train": plan.train,
        "evaluate": plan.evaluate,
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&resolved)?)?;
    if grid.is_grid() {
        writeln!(
            out,
            "\n# grid: {} entries; the configurations and keys here are the base recipe's (the \
             first cell's where the base is valid only through its cells); `orthopt plan` lists \
             every entry's",
            grid.entries.len()
        )?;
    }
    writeln!(out, "\n# stage cache keys ({})", args.cache.display())?;
    let store = ArtifactStore::new(&args.cache);
    for (stage, key) in keys.by_stage() {
        let status = match store.state(stage, key) {
            ArtifactState::Cached => "cached",
            ArtifactState::Partial => "partial (will resume)",
            ArtifactState::Missing => "to compute",
        };
        writeln!(out, "{stage:<11} {key}  {status}")?;
    }
    Ok(())
}
