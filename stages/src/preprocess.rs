//! Preprocess: decode the fetched files once into uint8 tensors (safetensors), check them, and
//! record dataset statistics and the normalisation the recipe names.
//!
//! Images stay uint8 in the artifact (4× smaller than f32); the normalisation is an exact
//! per-channel affine map stored beside them and applied when batches are assembled.

use crate::dataset::{Normalizer, Split};
use crate::error::{format_err, read_json, write_json};
use crate::fetch::{artifact_file, DatasetName, IDX_FILES};
use crate::progress::Progress;
use crate::{idx, Result, StageError};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const FORMAT_VERSION: u32 = 1;
pub const DATA_FILE: &str = "data.safetensors";
pub const STATS_FILE: &str = "stats.json";

/// How raw pixels `x ∈ [0, 255]` become network inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// The official `(x − 127.5)/128`.
    Official,
    /// `(x/255 − mean_c)/std_c` with the training split's per-channel statistics.
    PerChannel,
    /// `x/255`.
    UnitRange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    pub dataset: DatasetName,
    pub normalization: Normalization,
    /// Keep only the first N training / test images (tiny test recipes, quick looks).
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
}

/// What preprocess records about the data (`stats.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    pub dataset: String,
    pub classes: usize,
    /// `(channels, height, width)`.
    pub shape: (usize, usize, usize),
    pub train_count: usize,
    pub test_count: usize,
    /// Per-channel mean and (population) standard deviation of training pixels, in [0, 1].
    pub channel_mean: Vec<f64>,
    pub channel_std: Vec<f64>,
    pub train_label_counts: Vec<usize>,
    pub test_label_counts: Vec<usize>,
    pub normalization: Normalization,
    pub normalizer: Normalizer,
}

fn read_split(dir: &Path, images_stem: &str, labels_stem: &str, classes: usize) -> Result<Split> {
    let ipath = artifact_file(dir, images_stem)?;
    let lpath = artifact_file(dir, labels_stem)?;
    let images = idx::read(&ipath)?;
    let labels = idx::read(&lpath)?;
    let (n, h, w) = match images.dims[..] {
        [n, h, w] => (n, h, w),
        _ => {
            return Err(format_err(
                &ipath,
                format!("expected 3 dimensions (n, h, w), found {:?}", images.dims),
            ))
        }
    };
    if labels.dims != [n] {
        return Err(format_err(
            &lpath,
            format!(
                "{} labels for {n} images in {}",
                labels.dims.iter().product::<usize>(),
                ipath.display()
            ),
        ));
    }
    if let Some((i, &l)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(format_err(
            &lpath,
            format!("label {l} of record {i} is out of range 0..{classes}"),
        ));
    }
    Ok(Split {
        images: images.data,
        labels: labels.data.into_iter().map(u32::from).collect(),
        shape: (1, h, w),
    })
}

fn channel_stats(split: &Split) -> (Vec<f64>, Vec<f64>) {
    let (c, h, w) = split.shape;
    let plane = h * w;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for i in 0..split.len() {
        for (ch, pixels) in split.image(i).chunks(plane).enumerate() {
            for &p in pixels {
                let v = p as f64 / 255.0;
                sum[ch] += v;
                sq[ch] += v * v;
            }
        }
    }
    let count = (split.len() * plane).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / count - m * m).max(0.0).sqrt())
        .collect();
    (mean, std)
}

fn label_counts(split: &Split, classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &l in &split.labels {
        counts[l as usize] += 1;
    }
    counts
}

pub fn normalizer(kind: Normalization, mean: &[f64], std: &[f64]) -> Result<Normalizer> {
    let c = mean.len();
    Ok(match kind {
        Normalization::Official => Normalizer {
            scale: vec![1.0 / 128.0; c],
            shift: vec![-127.5 / 128.0; c],
        },
        Normalization::UnitRange => Normalizer {
            scale: vec![1.0 / 255.0; c],
            shift: vec![0.0; c],
        },
        Normalization::PerChannel => {
            if let Some(ch) = std.iter().position(|&s| s <= 0.0) {
                return Err(StageError::Config(format!(
                    "per-channel normalisation impossible: channel {ch} is constant"
                )));
            }
            Normalizer {
                scale: std.iter().map(|s| (1.0 / (255.0 * s)) as f32).collect(),
                shift: mean.iter().zip(std).map(|(m, s)| (-m / s) as f32).collect(),
            }
        }
    })
}

pub fn run(
    cfg: &PreprocessConfig,
    fetched: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<DatasetStats> {
    progress.begin("preprocess", 3);
    let classes = cfg.dataset.classes();
    let mut train = read_split(fetched, IDX_FILES[0], IDX_FILES[1], classes)?;
    progress.update(1, "train decoded");
    let mut test = read_split(fetched, IDX_FILES[2], IDX_FILES[3], classes)?;
    progress.update(2, "test decoded");
    if train.shape != test.shape {
        return Err(StageError::Config(format!(
            "train images are {:?} but test images are {:?}",
            train.shape, test.shape
        )));
    }
    if let Some(n) = cfg.train_limit {
        train.truncate(n);
    }
    if let Some(n) = cfg.test_limit {
        test.truncate(n);
    }
    if train.is_empty() || test.is_empty() {
        return Err(StageError::Config(
            "a dataset split is empty after limits".into(),
        ));
    }
    let (mean, std) = channel_stats(&train);
    let stats = DatasetStats {
        dataset: cfg.dataset.as_str().into(),
        classes,
        shape: train.shape,
        train_count: train.len(),
        test_count: test.len(),
        train_label_counts: label_counts(&train, classes),
        test_label_counts: label_counts(&test, classes),
        normalization: cfg.normalization,
        normalizer: normalizer(cfg.normalization, &mean, &std)?,
        channel_mean: mean,
        channel_std: std,
    };
    let dev = Device::Cpu;
    let (ti, tl) = train.to_tensors(&dev)?;
    let (vi, vl) = test.to_tensors(&dev)?;
    let tensors: HashMap<String, Tensor> = [
        ("train_images".to_string(), ti),
        ("train_labels".to_string(), tl),
        ("test_images".to_string(), vi),
        ("test_labels".to_string(), vl),
    ]
    .into();
    let data_path = out.join(DATA_FILE);
    candle_core::safetensors::save(&tensors, &data_path)?;
    write_json(&out.join(STATS_FILE), &stats)?;
    progress.update(3, "written");
    progress.end();
    Ok(stats)
}

/// A preprocessed dataset loaded back from its artifact.
pub struct Prepared {
    pub train: Split,
    pub test: Split,
    pub stats: DatasetStats,
}

pub fn load(dir: &Path) -> Result<Prepared> {
    let stats: DatasetStats = read_json(&dir.join(STATS_FILE))?;
    let path = dir.join(DATA_FILE);
    if !path.is_file() {
        return Err(StageError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing preprocess artifact file",
            ),
        });
    }
    let t = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| format_err(&path, e.to_string()))?;
    let get = |k: &str| {
        t.get(k)
            .ok_or_else(|| format_err(&path, format!("no tensor `{k}`")))
    };
    let train = Split::from_tensors(get("train_images")?, get("train_labels")?, &path)?;
    let test = Split::from_tensors(get("test_images")?, get("test_labels")?, &path)?;
    Ok(Prepared { train, test, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizers_map_known_pixels() {
        let n = normalizer(Normalization::Official, &[0.5], &[0.25]).unwrap();
        assert_eq!(n.apply(0, 0), -127.5 / 128.0);
        assert_eq!(n.apply(0, 255), 127.5 / 128.0);
        let n = normalizer(Normalization::PerChannel, &[0.5], &[0.25]).unwrap();
        assert!((n.apply(0, 255) - 2.0).abs() < 1e-6);
        assert!(normalizer(Normalization::PerChannel, &[0.5], &[0.0]).is_err());
    }
}
