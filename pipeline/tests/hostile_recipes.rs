//! Recipes built to exhaust the parser (issue "Hostile inputs", item 10): refused in
//! milliseconds, naming the file, before a parser sees them.

use opt_pipeline::recipe;
use std::time::{Duration, Instant};

fn refused_quickly(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let t = Instant::now();
    let e = match recipe::load(&path, &[]) {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "{name}: {:?}",
        t.elapsed()
    );
    let canonical = path.canonicalize().unwrap();
    assert!(e.starts_with(&canonical.display().to_string()), "{e}");
    e
}

#[test]
fn deeply_nested_recipes_are_refused_before_parsing() {
    let n = 100_000;
    let cases = [
        // 200 KB of YAML flow sequences, 100k deep (203 s of CPU in the YAML parser before).
        (
            "flow.yaml",
            format!("name: x\nmodel: {}{}\n", "[".repeat(n), "]".repeat(n)),
        ),
        ("block.yaml", format!("{}1\n", "- ".repeat(n))),
        (
            "arrays.toml",
            format!("name = {}{}\n", "[".repeat(n), "]".repeat(n)),
        ),
        (
            "tables.toml",
            format!("[{}]\nx = 1\n", vec!["a"; n].join(".")),
        ),
        (
            "inline.toml",
            format!("x = {}{}\n", "{a = ".repeat(n), "}".repeat(n)),
        ),
    ];
    for (name, text) in cases {
        let e = refused_quickly(name, &text);
        assert!(
            e.ends_with("nests values more than 64 levels deep (a recipe needs 3 or 4)"),
            "{e}"
        );
    }
    let huge = format!("name = \"{}\"\n", "x".repeat(2 << 20));
    let e = refused_quickly("huge.toml", &huge);
    assert!(e.contains("is not a recipe (at most 1048576 bytes)"), "{e}");
}

#[cfg(unix)]
#[test]
fn a_recipe_that_is_a_fifo_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("r.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let t = Instant::now();
    let e = recipe::load(&fifo, &[]).err().unwrap().to_string();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(e.ends_with("a recipe must be a regular file"), "{e}");
}

#[test]
fn hub_file_names_climbing_out_are_a_recipe_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("hub.toml");
    std::fs::write(
        &recipe,
        "name = \"hub\"\n[dataset]\nname = \"cifar-10\"\nsource = \"hub\"\nrepo = \"a/b\"\n\
         files = [\"../../../outside.parquet\"]\nformat = \"parquet\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orthopt"))
        .args(["run", recipe.to_str().unwrap(), "--cache"])
        .arg(dir.path().join("c"))
        .arg("--out")
        .arg(dir.path().join("o"))
        .env("HF_HOME", dir.path().join("hf"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("hub.toml: key `dataset.files`: file \"../../../outside.parquet\""),
        "{stderr}"
    );
    assert!(!dir.path().join("hf").exists(), "nothing was fetched");
}

/// An unknown option of a method lists the options that method has; for a method without
/// options, says so (the message listed nothing after "expected one of:").
#[test]
fn an_unknown_method_option_lists_the_method_options() {
    let dir = tempfile::tempdir().unwrap();
    for (method, known) in [
        (
            "ogd",
            "; expected one of: rotation_lr, rotation_lr_factor, weight_decay_scale",
        ),
        ("gs", "; method `gs` takes no options besides `name`"),
    ] {
        let path = dir.path().join(format!("{method}.toml"));
        std::fs::write(
            &path,
            format!("name = \"m\"\n[method]\nname = \"{method}\"\nrotation_lrr = 0.1\n"),
        )
        .unwrap();
        let e = match recipe::load(&path, &[]) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.ends_with(&format!("unknown key `rotation_lrr`{known}")),
            "{e}"
        );
    }
}
