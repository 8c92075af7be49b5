//! Evaluate: test loss, top-1 and top-5 accuracy of a trained model (BN in inference mode,
//! no augmentation; the loop is [`crate::training::evaluation`]), and the per-iteration curves of the
//! run.

use crate::data::preprocess;
use crate::error::{format_err, read_json, write_json};
use crate::progress::Progress;
use crate::training::evaluation::{evaluate_view, EvalMetrics};
use crate::training::metrics::LayerMetrics;
use crate::training::model_file;
use crate::training::train_artifact::{self as artifact, BestPoint, TrainSummary};
use crate::training::train_config::build_model;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// 2: `layers.csv`, validation curves, the best evaluation chosen on validation; ties in
/// top-k counted by their share, top-5 left out below 5 classes.
pub const FORMAT_VERSION: u32 = 2;
pub const METRICS_FILE: &str = "metrics.json";
pub const CURVES_FILE: &str = "curves.csv";
/// Every layer's energies and orthogonality error at every evaluation.
pub const LAYERS_FILE: &str = "layers.csv";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluateConfig {
    pub batch_size: usize,
}

/// The evaluate artifact's `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub final_metrics: EvalMetrics,
    /// On the validation split carved from train, when the recipe asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<EvalMetrics>,
    /// Final per-layer hyperspherical energy and orthogonality error.
    pub layers: Vec<LayerMetrics>,
    /// The evaluation with the best validation top-1 (final one included) and its test top-1;
    /// `None` without a validation split (never chosen on test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestPoint>,
    pub train: TrainSummary,
}

pub fn run(
    cfg: &EvaluateConfig,
    prepared_dir: &Path,
    train_dir: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<EvalReport> {
    progress.begin("evaluate", 0);
    let tcfg = artifact::load_config(train_dir)?;
    let data = preprocess::load(prepared_dir, &tcfg.data)?;
    let summary = artifact::load_summary(train_dir)?;
    let mut curves = artifact::load_curves(train_dir)?;
    let (device, _) =
        crate::training::device::open_checked(tcfg.device, tcfg.ops, tcfg.map_route, &|w| {
            progress.warn(w)
        })?;
    let (model, store) = build_model(&tcfg, &data.stats, &device)?;
    model_file::load_model(&train_dir.join(artifact::MODEL_FILE), &store)?;
    let e = evaluate_view(&model, &data, tcfg.loss.kind(), cfg.batch_size, &device)?;
    if let Some(v) = &e.validation {
        progress.note(&format!("validation {}", v.describe()));
    }
    let (test, validation) = (e.test, e.validation);
    // NaN metrics would be cached as nulls that no later run can read back: never written.
    for (split, m) in [("test", Some(&test)), ("validation", validation.as_ref())] {
        if let Some(m) = m.filter(|m| !(m.loss.is_finite() && m.top1.is_finite())) {
            return Err(format_err(
                &train_dir.join(artifact::MODEL_FILE),
                format!(
                    "the model's {split} metrics are not finite ({}); nothing was recorded",
                    m.describe()
                ),
            ));
        }
    }
    let layers = e.layers.clone();
    curves.push_eval(summary.iterations, e);
    curves.write_csv(&out.join(CURVES_FILE))?;
    curves.write_layers_csv(&out.join(LAYERS_FILE))?;
    let report = EvalReport {
        final_metrics: test,
        validation,
        layers,
        best: curves.best_by_validation(),
        train: summary,
    };
    write_json(&out.join(METRICS_FILE), &report)?;
    progress.note(&format!("test {}", test.describe()));
    progress.end();
    Ok(report)
}

pub fn load_report(dir: &Path) -> Result<EvalReport> {
    read_json(&dir.join(METRICS_FILE))
}
