//! The five stages of an opt experiment: fetch → preprocess → train → evaluate → report.
//!
//! Each stage is a typed configuration (serialisable: its canonical JSON is what the pipeline
//! hashes into the stage's cache key) plus a function from input artifact directories to an
//! output directory. Stages know nothing of recipes, caches or the command line; they write only
//! into the directory they are given, and report progress through a [`Progress`].
//!
//! The crate is three groups, each depending only on those before it (no module cycle):
//! [`data`] (fetch, preprocess and the readers), [`training`] (model, methods, the train stage)
//! and [`report`] (evaluate, export, the result tables and plots). At the root are only what
//! every group shares: the error type and the progress sink.

pub mod data;
pub mod report;
pub mod training;

mod error;
mod files;
mod host;
mod progress;

pub use error::{Result, StageError};
pub use progress::{Progress, Silent};
