//! The data half of the stages: fetch (files from a source into a directory) and preprocess
//! (files into the decoded, normalised tensors training reads), with what both stand on: the
//! dataset's description, the readers of outside bytes, the split in memory, augmentation and
//! the batch sampler. Nothing here knows of models or training.

pub mod augment;
pub mod batches;
pub mod catalogue;
pub mod dataset;
pub mod fetch;
pub mod preprocess;
pub mod readers;
/// Its types reach users through `fetch` and `preprocess`, which re-export them.
mod spec;
