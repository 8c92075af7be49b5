//! The workspace's structure rule (ARCHITECTURE.md, "Invariants"): within each crate, the
//! top-level modules (a file `src/x.rs` or a directory `src/x/`) form no cycle through their
//! `crate::` references, and inside every directory module the child modules (`d/x.rs` or
//! `d/x/`) form none through their `super::…` and `crate::d::…` references. Test modules (from
//! `#[cfg(test)]` on) and comments are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module → the top-level modules its code names as `crate::…`.
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let code = code_of(&file);
        let edges = graph.entry(module.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            for name in named_modules(&code[at + "crate::".len()..]) {
                // Lower-case names are modules; `crate::Result` and the like are re-exports at
                // the root.
                let is_module = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
                if is_module && name != module && name != "self" {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

/// A file's code before its tests, without comments, as one string (uses span lines).
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
}

/// For every directory module under `src` (its path from the crate root, e.g. `["ops"]`): the
/// graph of its child modules, an edge `x → y` where code in `x` (any file under `d/x/`, or
/// `d/x.rs`) names its sibling `y` as `super::…::y` (as many `super`s as it sits deep) or as
/// `crate::d::y`.
fn child_graphs(src: &Path) -> Vec<(Vec<String>, Graph)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graphs: BTreeMap<Vec<String>, Graph> = BTreeMap::new();
    for file in &files {
        // The file's module path: `ops/conv2d/mod.rs` → [ops, conv2d], `ops/cuda.rs` → [ops, cuda].
        let rel = file.strip_prefix(src).unwrap();
        let mut path: Vec<String> = rel
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        if path.last().is_some_and(|l| l == "mod") {
            path.pop();
        }
        if path.len() < 2 || matches!(path[0].as_str(), "lib" | "main") {
            continue;
        }
        let code = code_of(file);
        // Every directory module above the file: the child it lies in, and its siblings.
        for depth in 1..path.len() {
            let dir = path[..depth].to_vec();
            let child = path[depth].clone();
            let supers = path.len() - depth;
            let mut named = sibling_names(&code, supers);
            let qualified = format!("crate::{}::", dir.join("::"));
            for (at, _) in code.match_indices(&qualified) {
                named.extend(named_modules(&code[at + qualified.len()..]));
            }
            let graph = graphs.entry(dir).or_default();
            let edges = graph.entry(child.clone()).or_default();
            for name in named {
                if name != child && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    edges.insert(name);
                }
            }
        }
    }
    // Only siblings that exist are modules (a `super::helper` fn is not one).
    graphs
        .into_iter()
        .map(|(dir, graph)| {
            let children: BTreeSet<String> = graph.keys().cloned().collect();
            let graph = graph
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().filter(|n| children.contains(n)).collect()))
                .collect();
            (dir, graph)
        })
        .collect()
}

/// The names reached by exactly `supers` leading `super::` (not more), e.g. `y` of
/// `super::super::y::Z` for 2.
fn sibling_names(code: &str, supers: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let before_ok = !rest[..at].ends_with("::")
            && !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        let mut tail = &rest[at..];
        let mut count = 0;
        while let Some(t) = tail.strip_prefix("super::") {
            tail = t;
            count += 1;
        }
        if before_ok && count == supers {
            names.extend(named_modules(tail));
        }
        rest = &rest[at + "super::".len() * count.max(1)..];
    }
    names
}

/// The first path segments of what follows `crate::`: one for `a::…`, each item's for
/// `{a, b::{c, d}, e}` (here a, b and e).
fn named_modules(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let (mut names, mut depth, mut item_start) = (Vec::new(), 1, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                names.push(ident(&group[item_start..i]));
                item_start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    names
}

/// A cycle in `graph`, as the path of modules around it, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        graph: &Graph,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|n| n == node).unwrap();
                let mut cycle = path[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut marks, &mut Vec::new()))
}

#[test]
fn no_crate_has_a_cycle_between_its_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["opt-core", "stages", "pipeline"] {
        let graph = module_graph(&root.join(krate).join("src"));
        assert!(graph.len() > 5, "{krate}: too few modules found: {graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate}: the modules {} form a cycle", cycle.join(" → "));
        }
    }
}

#[test]
fn no_directory_module_has_a_cycle_between_its_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for krate in ["opt-core", "stages", "pipeline"] {
        for (dir, graph) in child_graphs(&root.join(krate).join("src")) {
            checked += 1;
            if let Some(cycle) = find_cycle(&graph) {
                panic!(
                    "{krate}: inside `{}` the modules {} form a cycle",
                    dir.join("::"),
                    cycle.join(" → ")
                );
            }
        }
    }
    assert!(checked >= 5, "too few directory modules found: {checked}");
}

/// The file-level check sees a cycle through `super::` and through `crate::d::`, at any depth,
/// and not a reference to something that is no module.
#[test]
fn the_file_level_check_finds_a_cycle_between_files() {
    let dir = std::env::temp_dir().join(format!("orthopt-structure-{}", std::process::id()));
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("d/mod.rs", "mod a; mod b; mod c;");
    write("d/a.rs", "use super::b::Thing; fn f() { super::helper(); }");
    write("d/b/mod.rs", "mod deep;");
    write("d/b/deep.rs", "use super::super::c::X;");
    write("d/c.rs", "use crate::d::a::Y;");
    let graphs = child_graphs(&dir);
    let (_, graph) = graphs.iter().find(|(d, _)| d == &["d"]).expect("d's graph");
    assert_eq!(
        find_cycle(graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
    write("d/c.rs", "use crate::d::helper;");
    let graphs = child_graphs(&dir);
    let (_, graph) = graphs.iter().find(|(d, _)| d == &["d"]).expect("d's graph");
    assert_eq!(find_cycle(graph), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn use_groups_name_their_first_segments() {
    assert_eq!(named_modules("a::b::C;"), ["a"]);
    assert_eq!(
        named_modules("{a, b::{c, d},\n  e::F, Result};"),
        ["a", "b", "e", "Result"]
    );
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .map(|(f, t)| (f.to_string(), BTreeSet::from([t.to_string()])))
        .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
    let acyclic: Graph = [("a", "b"), ("b", "c")]
        .into_iter()
        .map(|(f, t)| (f.to_string(), BTreeSet::from([t.to_string()])))
        .collect();
    assert_eq!(find_cycle(&acyclic), None);
}
