#![allow(dead_code)]
//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// A tiny recipe that runs all five stages in about a second.
pub const TINY: &str = r#"
name = "tiny"
[dataset]
source = "embedded"
train_limit = 256
test_limit = 128
[model]
width = 4
[schedule]
lr = 0.05
milestones = [4]
iterations = 6
batch_size = 32
eval_every = 3
[run]
seed = 7
device = "cpu"
checkpoint_every = 2
eval_batch = 64
"#;

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
