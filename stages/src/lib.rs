//! The five stages of an opt experiment: fetch → preprocess → train → evaluate → report.
//!
//! Each stage is a typed configuration (serialisable: its canonical JSON is what the pipeline
//! hashes into the stage's cache key) plus a function from input artifact directories to an
//! output directory. Stages know nothing of recipes, caches or the command line; they write only
//! into the directory they are given, and report progress through [`progress::Progress`].

pub mod augment;
pub mod batches;
pub mod bundle;
pub mod catalogue;
pub mod checkpoint;
pub mod cifar;
pub mod dataset;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod evaluation;
pub mod export;
pub mod fetch;
pub mod files;
pub mod idx;
pub mod image_folder;
pub mod input;
pub mod interrupt;
pub mod method;
pub mod metrics;
pub mod model;
pub mod model_file;
pub mod optimizers;
pub mod parquet_images;
pub mod pickle;
pub mod preprocess;
pub mod progress;
pub mod regularizer;
pub mod report;
pub mod spec;
pub mod tracking;
pub mod train;
pub mod train_artifact;
pub mod train_config;

pub use error::{Result, StageError};
