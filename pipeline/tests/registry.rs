//! Every registered method is complete: a recipe of its own under `recipes/`, a row in the
//! book's methods page, and oracle tests that exist (`Method::oracle_tests`). Adding a method
//! to the registry without any of them fails here (docs/src/adding-a-method.md).

use opt_pipeline::plan::resolve;
use opt_pipeline::recipe::{load, SourceKind};
use opt_stages::training::method::MethodConfig;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn recipe_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            recipe_files(&p, out);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("toml" | "yaml" | "yml")
        ) {
            out.push(p);
        }
    }
}

/// The methods the shipped recipes run themselves (not only as a grid cell).
fn methods_with_a_recipe() -> BTreeSet<&'static str> {
    let mut files = Vec::new();
    recipe_files(&root().join("recipes"), &mut files);
    files
        .iter()
        .filter_map(|f| {
            let loaded = load(f, &[]).ok()?;
            (loaded.recipe.dataset.source != SourceKind::Local).then_some(())?;
            Some(resolve(&loaded).ok()?.train.method.name())
        })
        .collect()
}

/// Whether `text` defines the test function `name` (a `#[test]` attribute before its `fn`).
fn defines_test(text: &str, name: &str) -> bool {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.iter().enumerate().any(|(i, l)| {
        (l.starts_with(&format!("fn {name}(")) || l.starts_with(&format!("pub fn {name}(")))
            && lines[..i]
                .iter()
                .rev()
                .take_while(|p| p.starts_with("#[") || p.starts_with("///"))
                .any(|p| p.starts_with("#[test]"))
    })
}

/// What a registered method lacks, one line each.
fn gaps(recipes: &BTreeSet<&str>, methods_page: &str) -> Vec<String> {
    let mut gaps = Vec::new();
    for name in MethodConfig::NAMES {
        let Some(method) = MethodConfig::from_name(name) else {
            gaps.push(format!("{name}: no defaults (from_name fails)"));
            continue;
        };
        if !recipes.contains(name) {
            gaps.push(format!("{name}: no recipe under recipes/ runs it"));
        }
        if !methods_page.contains(&format!("| `{name}` |")) {
            gaps.push(format!("{name}: no row in docs/src/methods.md"));
        }
        let oracles = method.method().oracle_tests();
        if oracles.is_empty() {
            gaps.push(format!("{name}: no oracle test listed"));
        }
        for o in oracles {
            let text = std::fs::read_to_string(root().join(o.file)).unwrap_or_default();
            if !defines_test(&text, o.test) {
                gaps.push(format!(
                    "{name}: oracle test {}::{} not found",
                    o.file, o.test
                ));
            }
        }
    }
    gaps
}

#[test]
fn every_registered_method_has_a_recipe_a_docs_row_and_oracle_tests() {
    let page = std::fs::read_to_string(root().join("docs/src/methods.md")).unwrap();
    let gaps = gaps(&methods_with_a_recipe(), &page);
    assert!(gaps.is_empty(), "incomplete methods:\n{}", gaps.join("\n"));
}

/// The check itself finds each kind of gap (so the test above can fail).
#[test]
fn the_completeness_check_finds_missing_pieces() {
    let page = std::fs::read_to_string(root().join("docs/src/methods.md")).unwrap();
    let all: BTreeSet<&str> = MethodConfig::NAMES.into_iter().collect();
    let without_expm: BTreeSet<&str> = all.iter().copied().filter(|m| *m != "expm").collect();
    let gaps_found = gaps(&without_expm, &page);
    assert!(
        gaps_found.iter().any(|g| g.starts_with("expm: no recipe")),
        "{gaps_found:?}"
    );
    let page_without_poet = page.replace("| `poet` |", "| poet |");
    let gaps_found = gaps(&all, &page_without_poet);
    assert!(
        gaps_found
            .iter()
            .any(|g| g == "poet: no row in docs/src/methods.md"),
        "{gaps_found:?}"
    );
    assert!(defines_test("#[test]\nfn real() {}\n", "real"));
    assert!(!defines_test(
        "fn helper() {}\n#[test]\nfn other() {}\n",
        "helper"
    ));
    assert!(!defines_test("#[test]\nfn other() {}\n", "missing"));
}
