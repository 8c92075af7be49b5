//! The documentation: the README stays a newcomer's page that names the commands CI runs, the
//! book's reference page is exactly what `orthopt list --markdown` prints (so it cannot drift
//! from the definitions), and no internal link of the README, ARCHITECTURE.md or the book
//! points at a missing file or heading. (`mdbook build docs`, in CI, checks the book builds.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_reference_page_is_what_orthopt_list_prints() {
    let committed = read(&root().join(opt_pipeline::catalog::REFERENCE_PAGE));
    let generated = opt_pipeline::catalog::reference_page().unwrap();
    assert!(
        committed == generated,
        "{} is stale: run `just docs-reference` and commit it",
        opt_pipeline::catalog::REFERENCE_PAGE
    );
}

#[test]
fn the_readme_is_short_and_names_the_commands_ci_runs() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines; the reference belongs in docs/"
    );
    let ci = read(&root().join(".ci/run"));
    for command in ["just test", "just test-slow", "just run", "just docs"] {
        assert!(
            readme.contains(command),
            "README.md does not say `{command}`"
        );
    }
    for command in ["just test", "just test-slow", "scripts/docs.sh"] {
        assert!(ci.contains(command), ".ci/run does not run `{command}`");
    }
}

/// `(line, target)` of every markdown link `[text](target)` outside code blocks and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Code spans hold examples, not links.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n + 1, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// mdBook's (and GitHub's) anchor of a heading: lower case, spaces to `-`, other punctuation
/// but `-` and `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// The files whose links are checked: the README, ARCHITECTURE.md and every book page.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs/src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// Every broken internal link of `text` (a document at `path`).
fn broken_links(path: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    for (line, target) in links(text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((f, a)) => (f, Some(a)),
            None => (target.as_str(), None),
        };
        let resolved = if file.is_empty() {
            path.to_path_buf()
        } else {
            path.parent().unwrap().join(file)
        };
        let here = format!("{}:{line}: `{target}`", path.display());
        if !resolved.exists() {
            broken.push(format!("{here}: no {}", resolved.display()));
            continue;
        }
        if let Some(anchor) = anchor {
            if !anchors(&read(&resolved)).contains(anchor) {
                broken.push(format!("{here}: no heading #{anchor}"));
            }
        }
    }
    broken
}

#[test]
fn every_internal_link_resolves() {
    let mut broken = Vec::new();
    for doc in documents() {
        broken.extend(broken_links(&doc, &read(&doc)));
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every page of the book is in its table of contents, and every entry there has its page.
#[test]
fn the_book_lists_every_page() {
    let src = root().join("docs/src");
    let summary = read(&src.join("SUMMARY.md"));
    let listed: BTreeSet<String> = links(&summary).into_iter().map(|(_, t)| t).collect();
    let pages: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md") && n != "SUMMARY.md")
        .collect();
    assert_eq!(listed, pages);
}

/// The checker finds what it must: a missing file, a missing heading; and passes what is there.
#[test]
fn the_link_checker_finds_broken_links() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("other.md"),
        "# A heading, with: punctuation\n",
    )
    .unwrap();
    let page = dir.path().join("page.md");
    let text =
        "[ok](other.md) [ok](other.md#a-heading-with-punctuation) [web](https://x.invalid)\n\
                [gone](missing.md) [no anchor](other.md#nowhere) `[code](skipped.md)`\n\
                ```\n[in a block](skipped.md)\n```\n";
    let broken = broken_links(&page, text);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].contains("missing.md") && broken[1].contains("#nowhere"));
}
