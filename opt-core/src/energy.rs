//! Hyperspherical energy of a layer's neurons (spec §4, the MHE-code normalisation), and
//! related per-layer diagnostics.
//!
//! Neurons are the columns `w_i` of `W ∈ R^{d×n}`, normalised as the MHE code does:
//! `ŵ = w / sqrt(Σw² + 1e-4)`. With `c_ij = ŵ_i·ŵ_j` and `D_ij = 2 − 2c_ij` (squared chordal
//! distance), the energies are means over unordered pairs `i < j` of
//! `s = 0: −log D`, `s = 1: D^{−1/2}`, `s = 2: D^{−1}`.
//! The half-space variant uses the `2n` points `[W, −W]`.

use crate::Result;
use candle_core::{DType, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Energy {
    pub s0: f64,
    pub s1: f64,
    pub s2: f64,
    pub half_s0: f64,
    pub half_s1: f64,
    pub half_s2: f64,
}

/// Kernels `f(D)` for s = 0, 1, 2.
fn kernels(d: f64) -> [f64; 3] {
    [-d.ln(), d.powf(-0.5), 1.0 / d]
}

/// Energies of the columns of `w` (`[d, n]`, any float dtype and device).
pub fn hyperspherical_energy(w: &Tensor) -> Result<Energy> {
    let (d, n) = w.dims2()?;
    let data: Vec<f64> = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    // Column-normalised neurons, one Vec per neuron.
    let neurons: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            let col: Vec<f64> = (0..d).map(|i| data[i * n + j]).collect();
            let norm = (col.iter().map(|v| v * v).sum::<f64>() + 1e-4).sqrt();
            col.into_iter().map(|v| v / norm).collect()
        })
        .collect();
    let mut full = [0f64; 3];
    let mut opposite = [0f64; 3];
    for i in 0..n {
        for j in i + 1..n {
            let c: f64 = neurons[i].iter().zip(&neurons[j]).map(|(a, b)| a * b).sum();
            let (a, b) = (kernels(2.0 - 2.0 * c), kernels(2.0 + 2.0 * c));
            for s in 0..3 {
                full[s] += a[s];
                opposite[s] += b[s];
            }
        }
    }
    let pairs = (n * (n.saturating_sub(1)) / 2).max(1) as f64;
    // Half-space: pairs (i, j) and (−i, −j) give D = 2 − 2c, (i, −j) and (j, −i) give
    // D = 2 + 2c, and each (i, −i) gives D = 2 + 2‖ŵ_i‖².
    let mut self_pairs = [0f64; 3];
    for v in &neurons {
        let sq: f64 = v.iter().map(|x| x * x).sum();
        let k = kernels(2.0 + 2.0 * sq);
        for s in 0..3 {
            self_pairs[s] += k[s];
        }
    }
    let half_pairs = (n * (2 * n).saturating_sub(1)).max(1) as f64;
    let half = |s: usize| (2.0 * full[s] + 2.0 * opposite[s] + self_pairs[s]) / half_pairs;
    Ok(Energy {
        s0: full[0] / pairs,
        s1: full[1] / pairs,
        s2: full[2] / pairs,
        half_s0: half(0),
        half_s1: half(1),
        half_s2: half(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(rows: &[&[f64]]) -> Tensor {
        let d = rows.len();
        let n = rows[0].len();
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (d, n), &Device::Cpu).unwrap()
    }

    /// Two orthogonal unit neurons: c = 0, D = 2. Three at 120°: c = −½, D = 3.
    #[test]
    fn hand_computed_small_cases() -> Result<()> {
        let e = hyperspherical_energy(&t(&[&[1.0, 0.0], &[0.0, 1.0]]))?;
        assert!((e.s0 + 2f64.ln()).abs() < 1e-3, "{e:?}");
        assert!((e.s1 - 0.5f64.sqrt()).abs() < 1e-3);
        assert!((e.s2 - 0.5).abs() < 1e-3);
        // Half-space of two orthogonal neurons: 4 points on a square; 6 pairs: 4 sides (D = 2)
        // and 2 diagonals (D = 4). s2 = (4·½ + 2·¼)/6.
        assert!(
            (e.half_s2 - (4.0 * 0.5 + 2.0 * 0.25) / 6.0).abs() < 1e-3,
            "{e:?}"
        );
        let (c, s) = (
            (2.0 * std::f64::consts::PI / 3.0).cos(),
            (2.0 * std::f64::consts::PI / 3.0).sin(),
        );
        let e = hyperspherical_energy(&t(&[&[1.0, c, c], &[0.0, s, -s]]))?;
        assert!((e.s0 + 3f64.ln()).abs() < 1e-3, "{e:?}");
        assert!((e.s2 - 1.0 / 3.0).abs() < 1e-3);
        Ok(())
    }
}
