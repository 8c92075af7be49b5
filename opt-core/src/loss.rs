//! Classification losses.

use crate::{Error, Result};
use candle_core::{DType, Tensor, D};

/// Which loss the training minimises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossKind {
    /// The official loss: `mean(−Σ_c y_c·log(softmax_c + floor))` with
    /// `y = (1−ε)·onehot + ε/C` (ε = 0.01, floor = 1e-4 in the official code). The floor caps
    /// the loss at ≈ 9.21 and kills the gradient of confidently wrong samples.
    Official { smoothing: f64, log_floor: f64 },
    /// Standard cross-entropy `−Σ y_c·log_softmax_c` with optional label smoothing.
    CrossEntropy { smoothing: f64 },
}

impl LossKind {
    pub const OFFICIAL: LossKind = LossKind::Official {
        smoothing: 0.01,
        log_floor: 1e-4,
    };
}

fn smoothed_targets(labels: &Tensor, classes: usize, smoothing: f64) -> Result<Tensor> {
    let n = labels.dim(0)?;
    let classes_t = Tensor::arange(0u32, classes as u32, labels.device())?.reshape((1, classes))?;
    let onehot = labels
        .to_dtype(DType::U32)?
        .reshape((n, 1))?
        .broadcast_eq(&classes_t)?
        .to_dtype(DType::F32)?;
    Ok(((onehot * (1.0 - smoothing))? + smoothing / classes as f64)?)
}

/// Mean loss over the batch. `logits`: `[N, C]` f32, `labels`: `[N]` u32.
pub fn loss(kind: LossKind, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (_, classes) = logits.dims2()?;
    let (smoothing, log_probs) = match kind {
        LossKind::Official {
            smoothing,
            log_floor,
        } => {
            if log_floor < 0.0 {
                return Err(Error::Config(format!(
                    "log floor must be ≥ 0, got {log_floor}"
                )));
            }
            let p = candle_nn::ops::softmax(logits, D::Minus1)?;
            (smoothing, (p + log_floor)?.log()?)
        }
        LossKind::CrossEntropy { smoothing } => {
            (smoothing, candle_nn::ops::log_softmax(logits, D::Minus1)?)
        }
    };
    let y = smoothed_targets(labels, classes, smoothing)?;
    Ok((y * log_probs)?.sum(D::Minus1)?.mean_all()?.neg()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn official_loss_matches_hand_computation() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2f32, 0., -1.], [0., 0., 0.]], &dev)?;
        let labels = Tensor::new(&[0u32, 2], &dev)?;
        let got = loss(LossKind::OFFICIAL, &logits, &labels)?.to_scalar::<f32>()? as f64;
        let mut want = 0.0;
        for (row, label) in [([2f64, 0., -1.], 0usize), ([0., 0., 0.], 2)] {
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            for (c, v) in row.iter().enumerate() {
                let y = if c == label { 0.99 } else { 0.0 } + 0.01 / 3.0;
                want -= y * ((v.exp() / z) + 1e-4).ln();
            }
        }
        want /= 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn official_loss_is_capped_but_cross_entropy_is_not() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[100f32, 0.]], &dev)?;
        let labels = Tensor::new(&[1u32], &dev)?;
        let official = loss(
            LossKind::Official {
                smoothing: 0.0,
                log_floor: 1e-4,
            },
            &logits,
            &labels,
        )?
        .to_scalar::<f32>()?;
        assert!((official as f64 - (1e-4f64).ln().abs()).abs() < 1e-3);
        let ce = loss(LossKind::CrossEntropy { smoothing: 0.0 }, &logits, &labels)?
            .to_scalar::<f32>()?;
        assert!((ce - 100.0).abs() < 1e-3);
        Ok(())
    }
}
