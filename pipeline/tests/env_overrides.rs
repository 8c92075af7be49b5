//! `OPT_*` environment overrides (own test binary: the environment is process-wide).

mod common;

use common::{write, TINY};
use opt_pipeline::plan::resolve;
use opt_pipeline::recipe::load;

#[test]
fn environment_overrides_files_and_command_line_overrides_environment() {
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
}
