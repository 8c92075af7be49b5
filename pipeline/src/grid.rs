//! Ablation grids: a recipe's `[grid]` table (dotted keys → lists of values, and `seeds`)
//! expanded into the cartesian product of *cells*, each run once per seed.
//!
//! Besides recipe keys, a grid may have one `variant` axis: a list of recipe fragments (tables
//! of sections), each merged at the recipe's root, for cells that differ in several sections
//! at once — `variant = [{ method = { name = "gs" } }, { regularizer = { kind = "mhe" } }]` —
//! where a cartesian product of `method` and `regularizer` would be the wrong set of runs.
//!
//! Cells are ordered by axis key (sorted), the last axis varying fastest, seeds innermost; the
//! position of a (cell, seed) pair in that order is its *index*, which `orthopt run --cell I` and
//! Slurm job arrays use. A cell is named by its varied values (`name=cp,budget_channels=8`),
//! so its directory, its rows and its cache keys say what it is.

use crate::plan::{self, Plan};
use crate::recipe::{self, Loaded, RecipeError, SECTIONS, VARIANT};
use figment::value::{Dict, Num, Value};
use std::path::Path;

/// One varied key and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Dotted recipe key, e.g. `method.name`.
    pub key: String,
    /// Short label used in cell names (the last key segment, unless two axes share it).
    pub label: String,
    pub values: Vec<Value>,
}

/// One unit of work: a cell of the grid with one seed.
#[derive(Debug, Clone)]
pub struct GridEntry {
    /// Position in the grid's order (`--cell I`).
    pub index: usize,
    /// The cell's name (without the seed); the recipe's name for a recipe without a grid.
    pub cell: String,
    pub seed: u64,
    /// The varied keys of this cell and their values, rendered (`method.name` → `cp`).
    pub params: Vec<(String, String)>,
    pub plan: Plan,
}

impl GridEntry {
    /// A recipe without a grid: one entry named after the recipe.
    pub fn single(plan: Plan) -> Self {
        Self {
            index: 0,
            cell: plan.name.clone(),
            seed: plan.train.seed,
            params: vec![],
            plan,
        }
    }

    /// The entry's directory inside the run directory.
    pub fn dir_name(&self) -> String {
        format!("{}/seed-{}", self.cell, self.seed)
    }
}

/// The expanded grid of a recipe.
#[derive(Debug, Clone)]
pub struct Grid {
    /// The base recipe's name (names the run directory).
    pub name: String,
    pub axes: Vec<Axis>,
    pub seeds: Vec<u64>,
    pub entries: Vec<GridEntry>,
    /// The base recipe's plan (what a run without the grid would do), or the first cell's when
    /// the base is only valid through its cells' values.
    pub base: Plan,
}

impl Grid {
    /// Whether the recipe declared a grid (axes or several seeds).
    pub fn is_grid(&self) -> bool {
        !self.axes.is_empty() || self.seeds.len() > 1
    }

    /// The varied keys, in column order.
    pub fn varied_keys(&self) -> Vec<String> {
        self.axes.iter().map(|a| a.key.clone()).collect()
    }
}

fn grid_error(loaded: &Loaded, key: &str, message: impl Into<String>) -> RecipeError {
    let meta = loaded.figment.find_metadata(key);
    RecipeError::Value {
        origin: recipe::origin(meta),
        key: key.into(),
        message: message.into(),
    }
}

/// Flattens nested tables into dotted keys; every leaf must be a list.
fn flatten(
    loaded: &Loaded,
    prefix: &str,
    dict: &Dict,
    out: &mut Vec<(String, Vec<Value>)>,
) -> Result<(), RecipeError> {
    for (k, v) in dict {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Dict(_, inner) => flatten(loaded, &key, inner, out)?,
            Value::Array(_, values) => {
                if values.is_empty() {
                    return Err(grid_error(
                        loaded,
                        &format!("grid.{key}"),
                        "expected a non-empty list of values",
                    ));
                }
                out.push((key, values.clone()));
            }
            _ => {
                return Err(grid_error(
                    loaded,
                    &format!("grid.{key}"),
                    "expected a list of values, e.g. [\"cp\", \"gs\"] (a single value belongs \
                     in the recipe itself)",
                ))
            }
        }
    }
    Ok(())
}

/// The dotted keys a `variant` axis sets (for refusing `--set` on them), after checking that
/// every value is a table of recipe sections.
fn variant_keys(loaded: &Loaded, values: &[Value]) -> Result<Vec<String>, RecipeError> {
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Dict(_, d) => d
                .iter()
                .for_each(|(k, v)| leaves(&format!("{prefix}.{k}"), v, out)),
            _ => out.push(prefix.to_string()),
        }
    }
    let mut keys = Vec::new();
    for v in values {
        let Value::Dict(_, dict) = v else {
            return Err(grid_error(
                loaded,
                "grid.variant",
                format!(
                    "expected tables of recipe sections, e.g. {{ method = {{ name = \"gs\" }} }}, \
                     found {}",
                    render(v)
                ),
            ));
        };
        for (section, inner) in dict {
            if !SECTIONS.contains(&section.as_str()) || matches!(section.as_str(), "grid" | "name")
            {
                return Err(grid_error(
                    loaded,
                    "grid.variant",
                    format!("unknown section `{section}` in a variant"),
                ));
            }
            leaves(section, inner, &mut keys);
        }
    }
    Ok(keys)
}

/// Renders a value for a cell name or a table column: strings bare, numbers as written, lists
/// joined by `-`, tables by their values (`name` first).
pub fn render(value: &Value) -> String {
    match value {
        Value::String(_, s) => s.clone(),
        Value::Char(_, c) => c.to_string(),
        Value::Bool(_, b) => b.to_string(),
        // f32 values (from `--set`) print as written, not widened to f64's digits.
        Value::Num(_, Num::F32(f)) => format!("{f}"),
        Value::Num(_, Num::F64(f)) => format!("{f}"),
        Value::Num(_, n) => n
            .to_i128()
            .map(|i| i.to_string())
            .unwrap_or_else(|| format!("{n:?}")),
        Value::Empty(..) => "none".into(),
        Value::Array(_, items) => items.iter().map(render).collect::<Vec<_>>().join("-"),
        Value::Dict(_, dict) => {
            let mut parts: Vec<String> = dict.get("name").map(render).into_iter().collect();
            parts.extend(
                dict.iter()
                    .filter(|(k, _)| k.as_str() != "name")
                    .map(|(_, v)| render(v)),
            );
            parts.join("-")
        }
    }
}

/// A variant by what it trains — its model, method and regulariser (`sopt-gs`, `mhe-0`) —
/// rather than by every value it carries (a schedule that comes with a method would drown the name);
/// the whole fragment when it sets neither.
pub fn render_axis_value(key: &str, value: &Value) -> String {
    let (VARIANT, Value::Dict(_, dict)) = (key, value) else {
        return render(value);
    };
    let parts: Vec<String> = ["model", "method", "regularizer"]
        .iter()
        .filter_map(|k| dict.get(*k).map(render))
        .collect();
    if parts.is_empty() {
        render(value)
    } else {
        parts.join("-")
    }
}

/// Keeps a rendered value usable inside a directory name.
fn path_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' => '_',
            c => c,
        })
        .collect()
}

fn seed_of(loaded: &Loaded, v: &Value, key: &str) -> Result<u64, RecipeError> {
    v.to_i128()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| {
            grid_error(
                loaded,
                key,
                format!("expected non-negative integer seeds, found {}", render(v)),
            )
        })
}

/// The grid's seeds (`seeds` or `run.seed`, `None` when neither is varied) and its other
/// axes, each checked: a known section, not also set by `--set`.
#[allow(clippy::type_complexity)]
fn seeds_and_axes(
    loaded: &Loaded,
    flat: Vec<(String, Vec<Value>)>,
    overrides: &[String],
) -> Result<(Option<Vec<u64>>, Vec<(String, Vec<Value>)>), RecipeError> {
    let mut seeds: Option<Vec<u64>> = None;
    let mut axes_raw = Vec::new();
    for (key, values) in flat {
        if key == "seeds" || key == "run.seed" {
            if seeds.is_some() {
                return Err(grid_error(
                    loaded,
                    "grid.seeds",
                    "seeds are given twice (grid.seeds and grid.run.seed); keep one",
                ));
            }
            let list = values
                .iter()
                .map(|v| seed_of(loaded, v, &format!("grid.{key}")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut unique = list.clone();
            unique.sort_unstable();
            unique.dedup();
            if unique.len() != list.len() {
                return Err(grid_error(
                    loaded,
                    &format!("grid.{key}"),
                    format!("seeds repeat: {list:?}"),
                ));
            }
            seeds = Some(list);
            continue;
        }
        let section = key.split('.').next().unwrap_or_default();
        let leaf_keys = if key == VARIANT {
            variant_keys(loaded, &values)?
        } else {
            vec![key.clone()]
        };
        if key != VARIANT
            && (!SECTIONS.contains(&section) || section == "grid" || section == "name")
        {
            return Err(grid_error(
                loaded,
                &format!("grid.{key}"),
                format!(
                    "unknown key `{key}`; a grid varies recipe keys in the sections {}",
                    SECTIONS
                        .iter()
                        .filter(|s| !matches!(**s, "grid" | "name"))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        for text in overrides {
            // Malformed overrides were refused by `recipe::load` above.
            let set_key = recipe::parse_override(text)
                .map(|(k, _)| k)
                .unwrap_or_default();
            let set_key = set_key.as_str();
            let overlaps = leaf_keys.iter().any(|key| {
                set_key == key
                    || set_key.starts_with(&format!("{key}."))
                    || key.starts_with(&format!("{set_key}."))
            });
            if overlaps {
                return Err(RecipeError::File {
                    file: "command line".into(),
                    message: format!(
                        "`--set {text}` sets a key the grid varies (grid.{key}); change the \
                         grid instead, e.g. --set 'grid.{key}=[...]'"
                    ),
                });
            }
        }
        axes_raw.push((key, values));
    }
    Ok((seeds, axes_raw))
}

/// Axes with their cell-name labels: the key's last segment, unless two axes share it.
fn label_axes(axes_raw: Vec<(String, Vec<Value>)>) -> Vec<Axis> {
    // Short labels unless two axes end in the same segment.
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    axes_raw
        .iter()
        .map(|(key, values)| {
            let short = last(key);
            let clash = axes_raw
                .iter()
                .filter(|(other, _)| last(other) == short)
                .count()
                > 1;
            Axis {
                key: key.clone(),
                label: if clash { key.clone() } else { short },
                values: values.clone(),
            }
        })
        .collect()
}

/// Every (cell, seed) entry: the cartesian product of the axes (last axis fastest), each cell
/// re-loaded with its values and resolved like any recipe, seeds innermost.
fn build_entries(
    file: &Path,
    overrides: &[String],
    loaded: &Loaded,
    base: Option<&Plan>,
    axes: &[Axis],
    seeds: &[u64],
) -> Result<Vec<GridEntry>, RecipeError> {
    // Cartesian product, last axis fastest.
    let mut combos: Vec<Vec<usize>> = vec![vec![]];
    for axis in axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                (0..axis.values.len()).map(move |i| {
                    let mut c = c.clone();
                    c.push(i);
                    c
                })
            })
            .collect();
    }

    let mut entries = Vec::new();
    let mut names = std::collections::HashSet::new();
    for combo in &combos {
        let params: Vec<(String, String)> = axes
            .iter()
            .zip(combo)
            .map(|(a, &i)| (a.key.clone(), render_axis_value(&a.key, &a.values[i])))
            .collect();
        let cell = if let (true, Some(base)) = (axes.is_empty(), base) {
            base.name.clone()
        } else {
            axes.iter()
                .zip(&params)
                .map(|(a, (_, v))| format!("{}={}", a.label, path_safe(v)))
                .collect::<Vec<_>>()
                .join(",")
        };
        if !names.insert(cell.clone()) {
            return Err(grid_error(
                loaded,
                "grid",
                format!("two cells would both be named `{cell}`; make the values distinct"),
            ));
        }
        for &seed in seeds {
            let mut values: Vec<(String, Value)> = axes
                .iter()
                .zip(combo)
                .map(|(a, &i)| (a.key.clone(), a.values[i].clone()))
                .collect();
            values.push(("run.seed".into(), Value::from(seed)));
            let cell_loaded = recipe::load_cell(file, overrides, &cell, &values)?;
            let mut plan = plan::resolve(&cell_loaded)?;
            // Every cell shares the base recipe's name and run directory.
            if let Some(base) = base {
                plan.name = base.name.clone();
                plan.out_dir = base.out_dir.clone();
            }
            entries.push(GridEntry {
                index: entries.len(),
                cell: cell.clone(),
                seed,
                params: params.clone(),
                plan,
            });
        }
    }
    Ok(entries)
}

/// Expands `file` (with its overrides) into its grid. A recipe without `[grid]` is a grid of
/// one cell named after the recipe.
pub fn expand(file: &Path, overrides: &[String]) -> Result<Grid, RecipeError> {
    let loaded = recipe::load(file, overrides)?;
    let mut flat = Vec::new();
    if let Some(grid) = &loaded.recipe.grid {
        flatten(&loaded, "", grid, &mut flat)?;
    }
    // The base recipe need not be valid on its own when every cell overrides what makes it
    // invalid (a budget sweep past the base's default, say): then its cells speak for it.
    let varies = flat.iter().any(|(k, _)| k != "seeds" && k != "run.seed");
    let base = match plan::resolve(&loaded) {
        Ok(plan) => Some(plan),
        Err(_) if varies => None,
        Err(e) => return Err(e),
    };

    let (seeds, axes_raw) = seeds_and_axes(&loaded, flat, overrides)?;
    let seeds = seeds.unwrap_or_else(|| vec![loaded.recipe.run.seed]);
    let axes = label_axes(axes_raw);
    let entries = build_entries(file, overrides, &loaded, base.as_ref(), &axes, &seeds)?;
    let base = match base {
        Some(base) => base,
        // `varies`: at least one axis, so at least one entry.
        None => entries[0].plan.clone(),
    };
    Ok(Grid {
        name: base.name.clone(),
        axes,
        seeds,
        entries,
        base,
    })
}
