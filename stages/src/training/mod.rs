//! The training half of the stages: the model and its method (how each layer's kernel is
//! made), the optimizers and regulariser, the train stage's configuration and loop, what a
//! training run leaves (the artifact, the model file, the resumable snapshot), the evaluation
//! that runs during training and after it, and where training runs (device, interrupt,
//! tracking). It reads the data half; it knows nothing of reports.

pub mod checkpoint;
pub mod device;
pub mod evaluation;
pub mod interrupt;
pub mod method;
pub mod metrics;
pub mod model;
/// Read by the report half's evaluate and export, never outside the crate.
pub(crate) mod model_file;
pub mod optimizers;
pub mod regularizer;
pub mod tracking;
pub mod train;
pub mod train_artifact;
pub mod train_config;
