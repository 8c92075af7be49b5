//! The train artifact's schema: its file names, the recorded curves and the summary, and
//! their readers. What the evaluate and export stages (and the pipeline) know of a trained run.

use crate::error::{read_json, IoContext};
use crate::training::evaluation::Evaluation;
use crate::training::metrics::{summarize, LayerMetrics};
use crate::training::train_config::TrainConfig;
use crate::{Result, StageError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The resolved [`TrainConfig`] the artifact was trained with.
pub const CONFIG_FILE: &str = "config.json";
/// The trained model's tensors (`model_file::save_model`).
pub const MODEL_FILE: &str = "model.safetensors";
/// The [`TrainSummary`].
pub const SUMMARY_FILE: &str = "summary.json";
/// The [`Curves`] recorded during training.
pub const CURVES_FILE: &str = "curves.json";
/// Where an unfinished run keeps its checkpoints (in the staging directory; removed when the
/// run finishes).
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// The newest checkpoint in [`CHECKPOINT_DIR`].
pub const CHECKPOINT_FILE: &str = "last.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainPoint {
    pub iteration: u64,
    pub lr: f64,
    pub loss: f64,
    pub acc: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub iteration: u64,
    pub loss: f64,
    pub top1: f64,
    /// `None` with fewer than 5 classes.
    #[serde(default)]
    pub top5: Option<f64>,
    /// Loss and top-1 on the validation split, when the data view carves one.
    #[serde(default)]
    pub val_loss: Option<f64>,
    #[serde(default)]
    pub val_top1: Option<f64>,
    /// Hyperspherical energy and orthogonality error per weight layer.
    #[serde(default)]
    pub layers: Vec<LayerMetrics>,
}

/// The evaluation chosen on the validation split: its iteration, validation top-1 and the test
/// top-1 of the same weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestPoint {
    pub iteration: u64,
    pub val_top1: f64,
    pub test_top1: f64,
}

/// Per-iteration training loss/accuracy and the periodic test evaluations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    pub train: Vec<TrainPoint>,
    pub eval: Vec<EvalPoint>,
}

/// Header of the per-layer metrics file (`layers.csv`).
pub const LAYER_COLUMNS: [&str; 9] = [
    "iteration",
    "layer",
    "energy_s0",
    "energy_s1",
    "energy_s2",
    "half_energy_s0",
    "half_energy_s1",
    "half_energy_s2",
    "orth_error",
];

impl Curves {
    /// Records evaluation `e`, made after `iteration` steps.
    pub fn push_eval(&mut self, iteration: u64, e: Evaluation) {
        let Evaluation {
            test,
            validation,
            layers,
        } = e;
        self.eval.push(EvalPoint {
            iteration,
            loss: test.loss,
            top1: test.top1,
            top5: test.top5,
            val_loss: validation.map(|v| v.loss),
            val_top1: validation.map(|v| v.top1),
            layers,
        });
    }

    /// The evaluation with the best validation top-1 (the earliest among equals), with the
    /// test top-1 there; `None` without a validation split. Never chosen on test: that would
    /// report the test set's own maximum, an optimistic number.
    pub fn best_by_validation(&self) -> Option<BestPoint> {
        self.eval
            .iter()
            .filter_map(|p| p.val_top1.map(|v| (p, v)))
            .fold(None, |best: Option<(&EvalPoint, f64)>, (p, v)| match best {
                Some((_, b)) if b >= v => best,
                _ => Some((p, v)),
            })
            .map(|(p, v)| BestPoint {
                iteration: p.iteration,
                val_top1: v,
                test_top1: p.top1,
            })
    }

    /// Every layer's energies and orthogonality error at every evaluation, one row per
    /// (evaluation, layer), full precision.
    pub fn write_layers_csv(&self, path: &Path) -> Result<()> {
        let csv_err = |source| StageError::Csv {
            path: path.to_path_buf(),
            source,
        };
        let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
        w.write_record(LAYER_COLUMNS).map_err(csv_err)?;
        for e in &self.eval {
            for l in &e.layers {
                let mut row = vec![e.iteration.to_string(), l.layer.clone()];
                row.extend(
                    [
                        l.energy_s0,
                        l.energy_s1,
                        l.energy_s2,
                        l.half_energy_s0,
                        l.half_energy_s1,
                        l.half_energy_s2,
                    ]
                    .map(|v| v.to_string()),
                );
                row.push(l.orth_error.map(|v| v.to_string()).unwrap_or_default());
                w.write_record(&row).map_err(csv_err)?;
            }
        }
        w.flush().at(path)
    }

    /// One row per iteration (1-based: the number of completed steps); test columns are
    /// filled where an evaluation happened after that step. Numbers are written in full
    /// (Rust's shortest round-tripping form), so the file reads back to the same bits.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let csv_err = |source| StageError::Csv {
            path: path.to_path_buf(),
            source,
        };
        let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
        w.write_record([
            "iteration",
            "lr",
            "train_loss",
            "train_acc",
            "test_loss",
            "test_top1",
            "test_top5",
            "val_loss",
            "val_top1",
            "energy_s1",
            "orth_error",
        ])
        .map_err(csv_err)?;
        let evals: HashMap<u64, &EvalPoint> = self.eval.iter().map(|e| (e.iteration, e)).collect();
        let mut iterations: Vec<u64> = self.train.iter().map(|t| t.iteration).collect();
        iterations.extend(self.eval.iter().map(|e| e.iteration));
        iterations.sort_unstable();
        iterations.dedup();
        let trains: HashMap<u64, &TrainPoint> =
            self.train.iter().map(|t| (t.iteration, t)).collect();
        for it in iterations {
            let mut row = vec![it.to_string()];
            match trains.get(&it) {
                Some(t) => row.extend([t.lr.to_string(), t.loss.to_string(), t.acc.to_string()]),
                None => row.extend([String::new(), String::new(), String::new()]),
            }
            match evals.get(&it) {
                Some(e) => {
                    let (energy, orth) = summarize(&e.layers);
                    row.extend([
                        e.loss.to_string(),
                        e.top1.to_string(),
                        e.top5.map(|t| t.to_string()).unwrap_or_default(),
                        e.val_loss.map(|t| t.to_string()).unwrap_or_default(),
                        e.val_top1.map(|t| t.to_string()).unwrap_or_default(),
                        energy.map(|v| v.to_string()).unwrap_or_default(),
                        orth.map(|v| v.to_string()).unwrap_or_default(),
                    ]);
                }
                None => row.extend(std::iter::repeat_n(String::new(), 7)),
            }
            w.write_record(&row).map_err(csv_err)?;
        }
        w.flush().at(path)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub iterations: u64,
    pub batch_size: usize,
    pub epochs: f64,
    /// Seconds spent in training steps (batch assembly, forward, backward, update), all sessions.
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    pub final_train_loss: f64,
    pub resumed_from: Option<u64>,
    pub trainable_params: usize,
    pub fixed_params: usize,
    pub device: String,
    /// The fused ops' routes the run used (`fused`, `composed`, `fused; composed: bn`; sessions
    /// that differed joined by `, then `); empty for artifacts older than the record.
    #[serde(default)]
    pub ops: String,
    /// The map route of the method's rotations (`exact`, `newton-schulz`, `cholesky-qr2`, `none`),
    /// with the batches that fell back to the exact route and the first reason.
    #[serde(default)]
    pub map_route: String,
}

pub fn load_summary(dir: &Path) -> Result<TrainSummary> {
    read_json(&dir.join(SUMMARY_FILE))
}

pub fn load_config(dir: &Path) -> Result<TrainConfig> {
    read_json(&dir.join(CONFIG_FILE))
}

pub fn load_curves(dir: &Path) -> Result<Curves> {
    read_json(&dir.join(CURVES_FILE))
}

/// The routes one training session ran with (a resumed run may open a device whose self-check
/// decided otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRoutes {
    /// The iteration the session started at.
    pub from: u64,
    /// `fused`, `composed`, `fused; composed: bn`.
    pub ops: String,
    /// The method's map route, `none` without one.
    pub map_route: String,
}

/// Which numerics produced a run: every session's routes and the map batches that fell back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub sessions: Vec<SessionRoutes>,
    /// Batches a gemm map route could not finish (the exact route computed them).
    pub fallbacks: u64,
    /// The first of them: why, and at which step.
    pub first_fallback: Option<String>,
}

impl RouteRecord {
    /// The sessions' values, each change with the iteration it starts at:
    /// `fused`, or `fused, then fused; composed: bn (from iteration 400)`.
    fn joined(&self, value: impl Fn(&SessionRoutes) -> &str) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut last: Option<&str> = None;
        for s in &self.sessions {
            let v = value(s);
            if last != Some(v) {
                parts.push(if last.is_none() {
                    v.to_string()
                } else {
                    format!("{v} (from iteration {})", s.from)
                });
                last = Some(v);
            }
        }
        parts.join(", then ")
    }

    /// The `ops` column.
    pub fn ops_label(&self) -> String {
        self.joined(|s| &s.ops)
    }

    /// The `map_route` column: the route, and the fallbacks when there were any.
    pub fn map_label(&self) -> String {
        let route = self.joined(|s| &s.map_route);
        match (&self.first_fallback, self.fallbacks) {
            (Some(first), n) if n > 0 => format!(
                "{route}; {n} batch{} fell back to exact (first: {first})",
                if n == 1 { "" } else { "es" }
            ),
            _ => route,
        }
    }
}
