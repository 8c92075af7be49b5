//! Where researchers watch a run while it trains: the trainer reports what it records (train
//! points, evaluations, throughput) to a [`Tracking`], a list of [`Tracker`]s the caller chose —
//! TensorBoard event files ([`tensorboard`]), an MLflow server. Trackers are views: the curves
//! the train artifact records stay the record, and a tracker that cannot write warns and stops
//! rather than fail the run.

pub mod mlflow;
pub mod proto;
pub mod record;
pub mod tensorboard;

use crate::training::train_artifact::{Curves, EvalPoint, TrainPoint};
use std::path::Path;
use std::sync::Arc;

/// What a training run tells whoever watches it. Called on the training thread, so an
/// implementation returns quickly (a slow destination sends from its own thread).
pub trait Tracker: Send + Sync {
    /// A training session starts with `start` steps done; `history` is everything the run
    /// recorded before it (nothing on a fresh run, the checkpoint's curves on a resume, the
    /// whole run when it was trained before). From here on the tracker shows exactly `history`:
    /// what a killed session sent after its last checkpoint is withdrawn, so a resumed run
    /// neither repeats nor loses a step.
    fn begin(&self, start: u64, history: &Curves);
    /// Training steps just completed, in order.
    fn train_points(&self, points: &[TrainPoint]);
    /// An evaluation (periodic, or the final one).
    fn evaluation(&self, point: &EvalPoint);
    /// Training throughput since the previous report, measured at `iteration`.
    fn throughput(&self, iteration: u64, images_per_sec: f64);
    /// The run's files (its result row, curves, model), recorded once it is complete.
    fn attach(&self, _files: &[&Path]) {}
    /// The run is complete: its final evaluation has been reported.
    fn finish(&self);
}

/// The trackers a run reports to (none by default).
#[derive(Clone, Default)]
pub struct Tracking(Vec<Arc<dyn Tracker>>);

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tracking({} trackers)", self.0.len())
    }
}

impl Tracking {
    pub fn new(trackers: Vec<Arc<dyn Tracker>>) -> Self {
        Self(trackers)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Tracker for Tracking {
    fn begin(&self, start: u64, history: &Curves) {
        self.0.iter().for_each(|t| t.begin(start, history));
    }
    fn train_points(&self, points: &[TrainPoint]) {
        if !points.is_empty() {
            self.0.iter().for_each(|t| t.train_points(points));
        }
    }
    fn evaluation(&self, point: &EvalPoint) {
        self.0.iter().for_each(|t| t.evaluation(point));
    }
    fn throughput(&self, iteration: u64, images_per_sec: f64) {
        self.0
            .iter()
            .for_each(|t| t.throughput(iteration, images_per_sec));
    }
    fn attach(&self, files: &[&Path]) {
        self.0.iter().for_each(|t| t.attach(files));
    }
    fn finish(&self) {
        self.0.iter().for_each(|t| t.finish());
    }
}

/// The scalars of one training step, under their tracking names.
pub fn train_scalars(p: &TrainPoint) -> [(&'static str, f64); 3] {
    [
        ("train/loss", p.loss),
        ("train/accuracy", p.acc),
        ("train/lr", p.lr),
    ]
}

/// The scalars of one evaluation, under their tracking names: test and validation metrics,
/// the layers' summary (curves.csv's `energy_s1` and `orth_error`: the mean s = 1 energy, the
/// largest ‖RRᵀ − I‖_F) and every layer's energies and ‖RRᵀ − I‖_F.
pub fn eval_scalars(e: &EvalPoint) -> Vec<(String, f64)> {
    let mut out = vec![
        ("test/loss".to_string(), e.loss),
        ("test/top1".to_string(), e.top1),
    ];
    let optional = [
        ("test/top5", e.top5),
        ("validation/loss", e.val_loss),
        ("validation/top1", e.val_top1),
    ];
    let (energy, orth) = crate::training::metrics::summarize(&e.layers);
    let summary = [
        ("layers/mean_energy_s1", energy),
        ("layers/max_orth_error", orth),
    ];
    for (tag, value) in optional.into_iter().chain(summary) {
        if let Some(v) = value {
            out.push((tag.to_string(), v));
        }
    }
    for l in &e.layers {
        let values = [
            ("energy_s0", Some(l.energy_s0)),
            ("energy_s1", Some(l.energy_s1)),
            ("energy_s2", Some(l.energy_s2)),
            ("half_energy_s0", Some(l.half_energy_s0)),
            ("half_energy_s1", Some(l.half_energy_s1)),
            ("half_energy_s2", Some(l.half_energy_s2)),
            ("orth_error", l.orth_error),
        ];
        for (name, value) in values {
            if let Some(v) = value {
                out.push((format!("layer/{}/{name}", l.layer), v));
            }
        }
    }
    out
}

/// The throughput scalar's name.
pub const THROUGHPUT: &str = "perf/images_per_sec";
