//! Training-time augmentation, per image (spec §5): pad with NumPy's `symmetric` mode (mirror
//! *including* the edge pixel: `[a b c] → [b a | a b c | c b]`), crop back to the original size
//! at offsets drawn uniformly from `0..=2·pad` (rows, then columns), then flip horizontally with
//! probability ½. The random draws per image are, in order: row offset, column offset, flip.

use crate::data::dataset::Normalizer;
use opt_core::Rng;
use serde::{Deserialize, Serialize};

/// Per-image augmentation (also the recipe's `[augment]` section; absent keys take the
/// official values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Padding on each side before the random crop; 0 disables cropping.
    pub pad: usize,
    pub flip: bool,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::OFFICIAL
    }
}

impl AugmentConfig {
    /// The official augmentation: pad 4, random crop, random horizontal flip.
    pub const OFFICIAL: AugmentConfig = AugmentConfig { pad: 4, flip: true };
    pub const NONE: AugmentConfig = AugmentConfig {
        pad: 0,
        flip: false,
    };
}

/// Index into `0..n` of padded coordinate `p ∈ [−pad, n + pad)` under symmetric padding.
/// Valid while `pad ≤ n` (one reflection).
#[inline]
pub fn symmetric(p: isize, n: usize) -> usize {
    let n = n as isize;
    let q = if p < 0 {
        -p - 1
    } else if p >= n {
        2 * n - p - 1
    } else {
        p
    };
    q.clamp(0, n - 1) as usize
}

/// Augments one CHW uint8 image into `dst` (normalised f32, same CHW size).
pub fn augment_into(
    src: &[u8],
    shape: (usize, usize, usize),
    cfg: &AugmentConfig,
    norm: &Normalizer,
    rng: &mut Rng,
    dst: &mut [f32],
) {
    let (c, h, w) = shape;
    let pad = cfg.pad as isize;
    let (oy, ox) = if cfg.pad > 0 {
        let span = 2 * cfg.pad as u64 + 1;
        (rng.below(span) as isize, rng.below(span) as isize)
    } else {
        (0, 0)
    };
    let flip = cfg.flip && rng.bernoulli(0.5);
    let cols: Vec<usize> = (0..w)
        .map(|j| {
            let j = if flip { w - 1 - j } else { j };
            symmetric(ox + j as isize - pad, w)
        })
        .collect();
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let (scale, shift) = (norm.scale[ch], norm.shift[ch]);
        for i in 0..h {
            let row = symmetric(oy + i as isize - pad, h) * w;
            let out = &mut dst[(ch * h + i) * w..(ch * h + i + 1) * w];
            for (o, &col) in out.iter_mut().zip(&cols) {
                *o = plane[row + col] as f32 * scale + shift;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_padding_matches_numpy() {
        // np.pad([a b c], 2, 'symmetric') = [b a a b c c b]
        let idx: Vec<usize> = (-2..5).map(|p| symmetric(p, 3)).collect();
        assert_eq!(idx, vec![1, 0, 0, 1, 2, 2, 1]);
    }

    #[test]
    fn crop_offsets_and_flip_follow_the_seed() {
        let norm = Normalizer {
            scale: vec![1.0],
            shift: vec![0.0],
        };
        let src: Vec<u8> = (0..16).collect(); // 4×4, value = 4·row + col
        let cfg = AugmentConfig { pad: 1, flip: true };
        let mut r1 = Rng::seed(3);
        let mut r2 = Rng::seed(3);
        let mut out = vec![0f32; 16];
        augment_into(&src, (1, 4, 4), &cfg, &norm, &mut r1, &mut out);
        // Re-derive the draws and the expected image independently.
        let oy = r2.below(3) as isize - 1;
        let ox = r2.below(3) as isize - 1;
        let flip = r2.bernoulli(0.5);
        let refl = |p: isize| -> usize {
            if p < 0 {
                (-p - 1) as usize
            } else if p > 3 {
                (7 - p) as usize
            } else {
                p as usize
            }
        };
        for i in 0..4 {
            for j in 0..4 {
                let jj = if flip { 3 - j } else { j };
                let want = 4 * refl(i as isize + oy) + refl(jj as isize + ox);
                assert_eq!(out[i * 4 + j], want as f32);
            }
        }
        assert_eq!(r1, r2);
    }

    #[test]
    fn every_crop_of_a_tiny_image_is_a_window_of_numpy_symmetric_padding() {
        // np.pad([[1,2,3],[4,5,6],[7,8,9]], 2, 'symmetric'), written out by hand.
        let padded: [[u8; 7]; 7] = [
            [5, 4, 4, 5, 6, 6, 5],
            [2, 1, 1, 2, 3, 3, 2],
            [2, 1, 1, 2, 3, 3, 2],
            [5, 4, 4, 5, 6, 6, 5],
            [8, 7, 7, 8, 9, 9, 8],
            [8, 7, 7, 8, 9, 9, 8],
            [5, 4, 4, 5, 6, 6, 5],
        ];
        let window = |oy: usize, ox: usize, flip: bool| -> Vec<f32> {
            let mut v = Vec::new();
            for i in 0..3 {
                for j in 0..3 {
                    let j = if flip { 2 - j } else { j };
                    v.push(padded[oy + i][ox + j] as f32);
                }
            }
            v
        };
        let norm = Normalizer {
            scale: vec![1.0],
            shift: vec![0.0],
        };
        let src = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let cfg = AugmentConfig { pad: 2, flip: true };
        let mut rng = Rng::seed(11);
        let key = |v: &[f32]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
        let windows: std::collections::BTreeSet<Vec<u8>> = (0..5)
            .flat_map(|oy| (0..5).flat_map(move |ox| [(oy, ox, false), (oy, ox, true)]))
            .map(|(oy, ox, f)| key(&window(oy, ox, f)))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let mut out = vec![0f32; 9];
            augment_into(&src, (1, 3, 3), &cfg, &norm, &mut rng, &mut out);
            assert!(
                windows.contains(&key(&out)),
                "{out:?} is no window of the padded image"
            );
            seen.insert(key(&out));
        }
        // Every window (all offsets in 0..=2·pad, flipped or not) occurs.
        assert_eq!(seen, windows);
    }
}
