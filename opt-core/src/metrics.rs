//! Classification metrics.

use crate::Result;
use candle_core::{DType, Tensor};

/// Number of rows of `logits` (`[N, C]`) whose label is among the `k` largest logits.
pub fn topk_correct(logits: &Tensor, labels: &Tensor, k: usize) -> Result<usize> {
    let (n, c) = logits.dims2()?;
    let k = k.min(c);
    let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1()?;
    let mut correct = 0;
    for (row, &label) in logits.iter().zip(&labels).take(n) {
        let target = row[label as usize];
        // Rank = number of logits strictly greater than the target's (ties count in its favour).
        let rank = row.iter().filter(|&&v| v > target).count();
        if rank < k {
            correct += 1;
        }
    }
    Ok(correct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn counts_top1_and_top2() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[[0.1f32, 0.7, 0.2], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]],
            &dev,
        )?;
        let labels = Tensor::new(&[1u32, 1, 0], &dev)?;
        assert_eq!(topk_correct(&logits, &labels, 1)?, 1);
        assert_eq!(topk_correct(&logits, &labels, 2)?, 2);
        assert_eq!(topk_correct(&logits, &labels, 3)?, 3);
        Ok(())
    }
}
