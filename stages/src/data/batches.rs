//! The official batching (spec §5): iteration `i` uses batch `t = i mod B` of the current
//! permutation, with `B = ⌊n / batch⌋`; a fresh permutation is drawn whenever `t = 0`, so the
//! last `n mod batch` images of each permutation are skipped.

use crate::data::augment::{augment_into, AugmentConfig};
use crate::data::dataset::{Normalizer, Split};
use crate::{Result, StageError};
use candle_core::{Device, Tensor};
use opt_core::Rng;

#[derive(Debug, Clone)]
pub struct Sampler {
    pub batch: usize,
    pub permutation: Vec<u32>,
    /// One stream for shuffles and augmentation; its state goes into checkpoints.
    pub rng: Rng,
}

impl Sampler {
    pub fn new(n: usize, batch: usize, rng: Rng) -> Result<Self> {
        if batch == 0 || n < batch {
            return Err(StageError::Setting {
                field: "schedule.batch_size",
                message: format!(
                    "a batch of {batch} needs at least that many training images; the training \
                     split has {n}"
                ),
            });
        }
        Ok(Self {
            batch,
            permutation: (0..n as u32).collect(),
            rng,
        })
    }

    pub fn batches_per_epoch(&self) -> u64 {
        (self.permutation.len() / self.batch) as u64
    }

    /// Indices of the batch of `iteration`, reshuffling at the start of each pass.
    pub fn indices(&mut self, iteration: u64) -> &[u32] {
        let t = (iteration % self.batches_per_epoch()) as usize;
        if t == 0 {
            let mut p = std::mem::take(&mut self.permutation);
            self.rng.shuffle(&mut p);
            self.permutation = p;
        }
        &self.permutation[t * self.batch..(t + 1) * self.batch]
    }

    /// Assembles the augmented, normalised batch of `iteration` on `device`:
    /// `([batch, c, h, w] f32, [batch] u32)`.
    pub fn batch(
        &mut self,
        iteration: u64,
        split: &Split,
        aug: &AugmentConfig,
        norm: &Normalizer,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        self.host_batch(iteration, split, aug, norm)
            .to_device(device)
    }

    /// The same batch in host memory, so a worker thread can build the next one while the
    /// device trains on this one.
    pub fn host_batch(
        &mut self,
        iteration: u64,
        split: &Split,
        aug: &AugmentConfig,
        norm: &Normalizer,
    ) -> HostBatch {
        let indices = self.indices(iteration).to_vec();
        let len = split.image_len();
        let mut pixels = vec![0f32; indices.len() * len];
        let mut labels = Vec::with_capacity(indices.len());
        for (k, &i) in indices.iter().enumerate() {
            augment_into(
                split.image(i as usize),
                split.shape,
                aug,
                norm,
                &mut self.rng,
                &mut pixels[k * len..(k + 1) * len],
            );
            labels.push(split.labels[i as usize]);
        }
        let (c, h, w) = split.shape;
        HostBatch {
            shape: (indices.len(), c, h, w),
            pixels,
            labels,
        }
    }
}

/// An augmented, normalised batch in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// `(n, c, h, w)` of `pixels`.
    pub shape: (usize, usize, usize, usize),
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
}

impl HostBatch {
    /// `([n, c, h, w] f32, [n] u32)` on `device`.
    pub fn to_device(self, device: &Device) -> Result<(Tensor, Tensor)> {
        let n = self.labels.len();
        Ok((
            Tensor::from_vec(self.pixels, self.shape, device)?,
            Tensor::from_vec(self.labels, n, device)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pass_is_a_permutation_and_drops_the_remainder() {
        let mut s = Sampler::new(10, 3, Rng::seed(1)).unwrap();
        assert_eq!(s.batches_per_epoch(), 3);
        let mut seen: Vec<u32> = (0..3).flat_map(|i| s.indices(i).to_vec()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9);
        let first = s.permutation.clone();
        s.indices(3);
        assert_ne!(first, s.permutation, "a new pass reshuffles");
        assert!(Sampler::new(2, 3, Rng::seed(1)).is_err());
    }

    #[test]
    fn augmented_batches_follow_the_seed() {
        let split = Split {
            images: (0..20 * 2 * 4 * 4).map(|i| (i * 37 % 251) as u8).collect(),
            labels: (0..20).collect(),
            shape: (2, 4, 4),
        };
        let norm = Normalizer {
            scale: vec![1.0, 0.5],
            shift: vec![0.0, 1.0],
        };
        let aug = AugmentConfig { pad: 2, flip: true };
        let batches = |seed: u64| -> Vec<(Vec<f32>, Vec<u32>)> {
            let mut s = Sampler::new(20, 8, Rng::seed(seed)).unwrap();
            (0..5)
                .map(|i| {
                    let (x, y) = s.batch(i, &split, &aug, &norm, &Device::Cpu).unwrap();
                    (
                        x.flatten_all().unwrap().to_vec1().unwrap(),
                        y.to_vec1().unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(batches(4), batches(4), "same seed, same batches");
        assert_ne!(batches(4), batches(5), "another seed, other batches");
    }
}
