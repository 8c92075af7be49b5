//! The opt pipeline: recipe loading and validation ([`recipe`], [`plan`]), the
//! content-addressed [`store`], stage scheduling ([`runner`]), progress and logs
//! ([`progress`]) and the throughput benchmark ([`bench`]). The commands of the `orthopt` binary are [`commands`]; the binary itself only parses
//! arguments and dispatches.

pub mod bench;
pub mod cache;
pub mod catalog;
pub mod commands;
pub mod datasets;
pub mod estimate;
pub mod export;
pub mod gpu_check;
pub mod grid;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod recipe_bounds;
pub mod runner;
pub mod signals;
pub mod store;

/// The command's name: `orthopt` would be shadowed by (or shadow) LLVM's `orthopt` wherever LLVM is
/// installed, so every printed command uses this one.
pub const BIN: &str = "orthopt";
