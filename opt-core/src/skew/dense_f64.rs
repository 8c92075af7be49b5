//! Plain f64 matrices (`Vec` of rows) for the skew maps' oracles: products, sums and the
//! conversions from tensors, written out so they share nothing with the code under test.

use crate::Rng;
use candle_core::{DType, Device, Tensor};

pub(super) type M = Vec<Vec<f64>>;

pub(super) fn mul(a: &M, b: &M) -> M {
    let n = a.len();
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| (0..n).map(|k| a[i][k] * b[k][j]).sum())
                .collect()
        })
        .collect()
}

/// `a + alpha·b`.
pub(super) fn add(a: &M, alpha: f64, b: &M) -> M {
    a.iter()
        .zip(b)
        .map(|(r, s)| r.iter().zip(s).map(|(x, y)| x + alpha * y).collect())
        .collect()
}

pub(super) fn eye(n: usize) -> M {
    (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect()
}

pub(super) fn to_m(t: &Tensor) -> M {
    t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap()
}

pub(super) fn max_diff(a: &M, b: &M) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A `d×d` f64 tensor of i.i.d. N(0, std²) entries.
pub(super) fn gaussian(seed: u64, d: usize, std: f64) -> Tensor {
    let v = Rng::seed(seed).normal_vec(d * d, std);
    Tensor::from_vec(v, (d, d), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}
