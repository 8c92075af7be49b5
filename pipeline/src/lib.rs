//! The opt pipeline: recipe loading and validation ([`recipe`], [`plan`]), the
//! content-addressed [`store`], stage scheduling ([`runner`]), progress and logs
//! ([`progress`]) and the throughput benchmark ([`bench`]). The `opt` binary is a thin CLI over
//! these.

pub mod bench;
pub mod datasets;
pub mod export;
pub mod grid;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod runner;
pub mod store;
