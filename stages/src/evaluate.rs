//! Evaluate: test loss, top-1 and top-5 accuracy of a trained model (BN in inference mode,
//! no augmentation), and the per-iteration curves of the run.

use crate::dataset::{Normalizer, Split};
use crate::error::{read_json, write_json};
use crate::progress::Progress;
use crate::train::{self, BestPoint, Curves, TrainConfig, TrainSummary};
use crate::{preprocess, Result};
use candle_core::Device;
use opt_core::loss::{loss, LossKind};
use opt_core::metrics::topk_correct;
use opt_core::Network;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// 2: `layers.csv`, validation curves, the best evaluation chosen on validation; ties in
/// top-k counted by their share, top-5 left out below 5 classes.
pub const FORMAT_VERSION: u32 = 2;
pub const METRICS_FILE: &str = "metrics.json";
pub const CURVES_FILE: &str = "curves.csv";
/// Every layer's energies and orthogonality error at every evaluation.
pub const LAYERS_FILE: &str = "layers.csv";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub loss: f64,
    /// Expected fraction correct with ties broken at random (a collapsed net scores chance).
    pub top1: f64,
    /// `None` with fewer than 5 classes, where top-5 would be trivially 1.
    pub top5: Option<f64>,
    pub count: usize,
}

impl EvalMetrics {
    /// `loss …, top-1 …[, top-5 …] on N images`.
    pub fn describe(&self) -> String {
        let top5 = self
            .top5
            .map(|t| format!(", top-5 {t:.4}"))
            .unwrap_or_default();
        format!(
            "loss {:.4}, top-1 {:.4}{top5} on {} images",
            self.loss, self.top1, self.count
        )
    }
}

/// Evaluates `model` on `split` in batches of `batch`.
pub fn evaluate(
    model: &Network,
    split: &Split,
    norm: &Normalizer,
    kind: LossKind,
    batch: usize,
    device: &Device,
) -> Result<EvalMetrics> {
    let (mut loss_sum, mut top1, mut top5) = (0.0, 0.0, 0.0);
    let mut classes = 0;
    let n = split.len();
    let mut start = 0;
    while start < n {
        let end = (start + batch.max(1)).min(n);
        let x = norm.tensor(split, start..end, device)?;
        let y = candle_core::Tensor::from_slice(&split.labels[start..end], end - start, device)?;
        let logits = model.forward(&x, false)?;
        loss_sum += loss(kind, &logits, &y)?.to_scalar::<f32>()? as f64 * (end - start) as f64;
        classes = logits.dim(1)?;
        top1 += topk_correct(&logits, &y, 1)?;
        if classes >= 5 {
            top5 += topk_correct(&logits, &y, 5)?;
        }
        start = end;
    }
    Ok(EvalMetrics {
        loss: loss_sum / n as f64,
        top1: top1 / n as f64,
        top5: (classes >= 5).then(|| top5 / n as f64),
        count: n,
    })
}

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
    pub layers: Vec<crate::metrics::LayerMetrics>,
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
    let tcfg: TrainConfig = read_json(&train_dir.join(train::CONFIG_FILE))?;
    let data = preprocess::load(prepared_dir, &tcfg.data)?;
    let summary: TrainSummary = read_json(&train_dir.join(train::SUMMARY_FILE))?;
    let mut curves: Curves = read_json(&train_dir.join(train::CURVES_FILE))?;
    let device = tcfg.device.open()?;
    let (model, store) = train::build_model(&tcfg, &data.stats, &device)?;
    crate::checkpoint::load_model(&train_dir.join(train::MODEL_FILE), &store)?;
    let m = evaluate(
        &model,
        &data.test,
        &data.normalizer,
        tcfg.loss.kind(),
        cfg.batch_size,
        &device,
    )?;
    let validation = match &data.validation {
        Some(v) => {
            let vm = evaluate(
                &model,
                v,
                &data.normalizer,
                tcfg.loss.kind(),
                cfg.batch_size,
                &device,
            )?;
            progress.note(&format!("validation {}", vm.describe()));
            Some(vm)
        }
        None => None,
    };
    let layers = crate::metrics::layer_metrics(&model)?;
    curves.push_eval(summary.iterations, m, validation, layers.clone());
    curves.write_csv(&out.join(CURVES_FILE))?;
    curves.write_layers_csv(&out.join(LAYERS_FILE))?;
    let report = EvalReport {
        final_metrics: m,
        validation,
        layers,
        best: curves.best_by_validation(),
        train: summary,
    };
    write_json(&out.join(METRICS_FILE), &report)?;
    progress.note(&format!("test {}", m.describe()));
    progress.end();
    Ok(report)
}

pub fn load_report(dir: &Path) -> Result<EvalReport> {
    read_json(&dir.join(METRICS_FILE))
}
