//! The readers of outside bytes, one per format (CIFAR's binary and pickled batches, IDX,
//! image folders, Parquet image tables, Python pickles), over the archive or directory they
//! come in (`bundle`) and the size limits every reader honours (`input`).
//!
//! The pipeline reaches them only through [`crate::data::preprocess`]; they are public for the
//! fuzz targets (`fuzz/`) and the format tests (`stages/tests/`), which feed them hostile input
//! directly.

pub mod bundle;
pub mod cifar;
pub mod idx;
pub mod image_folder;
pub mod input;
pub mod parquet_images;
pub mod pickle;
