//! Bounds a recipe file before any parser sees it: a regular file of at most
//! [`MAX_RECIPE_BYTES`], nesting at most [`MAX_NESTING`] levels. The YAML parser needs minutes
//! (and the TOML parser deep recursion) for a 200 KB file nested 100 000 levels deep; a lexical
//! scan finds that in a millisecond. Recipes nest three or four levels.

use std::path::Path;

/// The largest recipe file read (the shipped ones are a few kilobytes).
pub const MAX_RECIPE_BYTES: u64 = 1 << 20;
/// The deepest nesting a recipe may have, as the scan counts it.
pub const MAX_NESTING: usize = 64;

/// Reads `path` if it is a regular file of bounded size whose nesting is bounded; else the
/// message saying why not.
pub fn check(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read recipe: {e}"))?;
    if !meta.is_file() {
        return Err("a recipe must be a regular file".into());
    }
    if meta.len() > MAX_RECIPE_BYTES {
        return Err(format!(
            "{} bytes is not a recipe (at most {MAX_RECIPE_BYTES} bytes)",
            meta.len()
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read recipe: {e}"))?;
    let text = String::from_utf8_lossy(&text);
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let depth = nesting(&text, yaml);
    if depth > MAX_NESTING {
        return Err(format!(
            "nests values more than {MAX_NESTING} levels deep (a recipe needs 3 or 4)"
        ));
    }
    Ok(())
}

/// An upper estimate of how deep `text` nests: brackets and braces outside strings and
/// comments, plus for YAML the indentation levels and `- ` sequence markers of each line,
/// and for TOML the dots of keys and table headers.
pub fn nesting(text: &str, yaml: bool) -> usize {
    let mut brackets: usize = 0;
    let mut deepest = 0;
    let mut indents: Vec<usize> = Vec::new();
    let mut quote: Option<char> = None;
    for line in text.lines() {
        let at_start = brackets;
        let mut dots = 0;
        let mut in_key = !yaml && quote.is_none();
        let mut escaped = false;
        for c in line.chars() {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                continue;
            }
            match c {
                '"' | '\'' => quote = Some(c),
                '#' => break,
                '[' | '{' => {
                    brackets += 1;
                    deepest = deepest.max(brackets);
                }
                ']' | '}' => brackets = brackets.saturating_sub(1),
                '=' => in_key = false,
                '.' if in_key => dots += 1,
                _ => {}
            }
        }
        // A YAML quoted scalar ends on its line or spans lines; TOML basic strings do not
        // span lines (multi-line ones open and close with three quotes, balanced per line
        // in practice): either way the next line starts outside.
        if !yaml {
            quote = None;
        }
        let line_depth = if yaml {
            block_depth(line, &mut indents)
        } else {
            dots + 1
        };
        deepest = deepest.max(at_start + line_depth);
    }
    deepest
}

/// The YAML block nesting of `line`: its indentation level among the open ones, plus its
/// leading `- ` sequence markers.
fn block_depth(line: &str, indents: &mut Vec<usize>) -> usize {
    let body = line.trim_start_matches(' ');
    if body.is_empty() || body.starts_with('#') {
        return indents.len();
    }
    let indent = line.len() - body.len();
    while indents.last().is_some_and(|&i| i > indent) {
        indents.pop();
    }
    if indents.last() != Some(&indent) {
        indents.push(indent);
    }
    let mut dashes = 0;
    let mut rest = body;
    while let Some(r) = rest.strip_prefix('-') {
        if !(r.is_empty() || r.starts_with(' ')) {
            break;
        }
        dashes += 1;
        rest = r.trim_start_matches(' ');
    }
    indents.len() + dashes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_recipes_nest_a_few_levels() {
        let toml = "name = \"x\"\n[dataset]\nsource = \"embedded\"\n[grid]\n\"schedule.lr\" = \
                    [0.1, 0.2]\nvariant = [{ method = { kind = \"gs\" } }]\n";
        assert!(nesting(toml, false) <= 4, "{}", nesting(toml, false));
        let yaml = "name: x\ndataset:\n  source: embedded\n  files:\n    - a.parquet\n    - \
                    b.parquet\nschedule:\n  milestones: [4, 8]\n";
        assert_eq!(nesting(yaml, true), 4);
        // Brackets inside strings and comments do not count.
        assert_eq!(nesting("a = \"[[[[\" # {{{{\n", false), 1);
        assert_eq!(nesting("a: '[[[[' # {{{{\n", true), 1);
    }

    #[test]
    fn deep_nesting_is_measured_in_every_form() {
        let n = 100_000;
        assert!(nesting(&format!("a = {}{}", "[".repeat(n), "]".repeat(n)), false) >= n);
        assert!(nesting(&format!("[{}]\nx = 1\n", vec!["a"; n].join(".")), false) >= n);
        assert!(nesting(&format!("a: {}", "[".repeat(n)), true) >= n);
        assert!(nesting(&format!("{}1\n", "- ".repeat(n)), true) >= n);
        let indented: String = (0..1000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        assert!(nesting(&indented, true) >= 1000);
    }
}
