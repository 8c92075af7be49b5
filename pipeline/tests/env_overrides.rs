//! `OPT_*` environment overrides (own test binary: the environment is process-wide).

mod common;

use common::{write, TINY};
use opt_pipeline::plan::resolve;
use opt_pipeline::recipe::load;
use std::sync::Mutex;

/// The environment is process-wide and tests run on threads: one test at a time touches it.
static ENV: Mutex<()> = Mutex::new(());

#[test]
fn environment_overrides_files_and_command_line_overrides_environment() {
    let _env = ENV.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "r.toml", TINY);
    std::env::set_var("OPT_SCHEDULE__LR", "0.02");
    std::env::set_var("OPT_RUN__SEED", "11");
    std::env::set_var(
        "OPT_LEVEL",
        "unrelated variables outside the recipe's sections are ignored",
    );
    let plan = resolve(&load(&p, &[]).unwrap()).unwrap();
    assert_eq!(plan.train.schedule.lr, 0.02);
    assert_eq!(plan.train.seed, 11);
    let plan = resolve(&load(&p, &["schedule.lr=0.03".into()]).unwrap()).unwrap();
    assert_eq!(plan.train.schedule.lr, 0.03);
    std::env::set_var("OPT_SCHEDULE__LR", "-1");
    let e = resolve(&load(&p, &[]).unwrap()).err().unwrap().to_string();
    assert!(e.contains("OPT_") && e.contains("schedule.lr"), "{e}");
    for v in ["OPT_SCHEDULE__LR", "OPT_RUN__SEED", "OPT_LEVEL"] {
        std::env::remove_var(v);
    }
}

/// Environment values parse as TOML values; a variable that looks like a recipe key but maps to
/// none (one underscore) is an error naming it, not silently ignored.
#[test]
fn environment_values_are_typed_and_near_misses_are_errors() {
    let _env = ENV.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "r.toml", TINY);
    std::env::set_var("OPT_SCHEDULE__LR", "1e-3");
    let plan = resolve(&load(&p, &[]).unwrap()).unwrap();
    assert_eq!(plan.train.schedule.lr, 1e-3);
    std::env::remove_var("OPT_SCHEDULE__LR");
    for bad in ["OPT_SCHEDULE_LR", "OPT_RUNSEED", "OPT_SCHEDULE__"] {
        std::env::set_var(bad, "0.5");
        let e = load(&p, &[]).err().map(|e| e.to_string());
        std::env::remove_var(bad);
        let e = e.unwrap_or_else(|| panic!("{bad} must be refused"));
        assert!(e.contains(bad) && e.contains("OPT_SCHEDULE__LR"), "{e}");
    }
}
