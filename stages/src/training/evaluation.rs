//! The evaluation loop both the train stage (periodic evaluations) and the evaluate stage (the
//! final one) use: loss, top-1 and top-5 of a model on a split (BN in inference mode, no
//! augmentation), and everything one evaluation records.

use crate::data::dataset::{Normalizer, Split};
use crate::data::preprocess::Prepared;
use crate::training::metrics::{layer_metrics, LayerMetrics};
use crate::Result;
use candle_core::Device;
use opt_core::loss::{loss, LossKind};
use opt_core::metrics::{topk_correct, ExactSum};
use opt_core::Network;
use serde::{Deserialize, Serialize};

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
    let mut loss_sum = 0.0;
    let (mut top1, mut top5) = (ExactSum::default(), ExactSum::default());
    let mut classes = 0;
    let n = split.len();
    // The weights do not change within an evaluation: the maps once, not once per batch.
    let rotations = model.rotations()?;
    let mut start = 0;
    while start < n {
        let end = (start + batch.max(1)).min(n);
        let x = norm.tensor(split, start..end, device)?;
        let y = candle_core::Tensor::from_slice(&split.labels[start..end], end - start, device)?;
        let logits = model.forward_with(&x, false, &rotations)?;
        loss_sum += loss(kind, &logits, &y)?.to_scalar::<f32>()? as f64 * (end - start) as f64;
        classes = logits.dim(1)?;
        top1.add(topk_correct(&logits, &y, 1)?);
        if classes >= 5 {
            top5.add(topk_correct(&logits, &y, 5)?);
        }
        start = end;
    }
    Ok(EvalMetrics {
        loss: loss_sum / n as f64,
        top1: top1.value() / n as f64,
        top5: (classes >= 5).then(|| top5.value() / n as f64),
        count: n,
    })
}

/// One evaluation of a run: test metrics, validation metrics when the view carves a split,
/// and every weight layer's energies and orthogonality error.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub test: EvalMetrics,
    pub validation: Option<EvalMetrics>,
    pub layers: Vec<LayerMetrics>,
}

/// Evaluates `model` on the view's test split (and validation split, if any) in batches of
/// `batch`, and measures its layers. Reads the weights only (BN in inference mode, no RNG), so
/// a run trains the same with or without evaluations.
pub fn evaluate_view(
    model: &Network,
    data: &Prepared,
    kind: LossKind,
    batch: usize,
    device: &Device,
) -> Result<Evaluation> {
    let on = |split| evaluate(model, split, &data.normalizer, kind, batch, device);
    let test = on(&data.test)?;
    let validation = data.validation.as_ref().map(on).transpose()?;
    let layers = layer_metrics(model)?;
    Ok(Evaluation {
        test,
        validation,
        layers,
    })
}
