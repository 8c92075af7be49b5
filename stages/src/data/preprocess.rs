//! Preprocess: decode the fetched files once into uint8 tensors (safetensors), check them, and
//! record dataset statistics (`stats.json`).
//!
//! The artifact depends only on what was fetched, its format and the label choice — never on a
//! recipe's normalisation, limits or validation split — so every recipe on the same dataset
//! shares one decoded copy. Those per-recipe choices are a [`DataView`], applied cheaply when the
//! artifact is loaded ([`load`]): limits and the validation split select images, and the
//! normalisation is an exact per-channel affine map applied when batches are assembled.

use crate::data::dataset::{Decoded, Normalizer, Split};
use crate::data::fetch;
use crate::data::readers::bundle::Bundle;
use crate::data::readers::cifar::{self, Cifar};
use crate::data::readers::input::InputLimits;
use crate::data::readers::{idx, image_folder, parquet_images};
pub use crate::data::spec::{known_shape, DataFormat, LabelChoice};
use crate::data::spec::{DatasetName, IDX_FILES};
use crate::error::{format_err, read_json, write_json};
use crate::progress::Progress;
use crate::{Result, StageError};
use candle_core::{Device, Tensor};
use opt_core::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const FORMAT_VERSION: u32 = 2;
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

/// Everything that determines the decoded artifact (hashed into its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    pub dataset: DatasetName,
    pub format: DataFormat,
    pub label: LabelChoice,
}

/// A recipe's selection and normalisation of a decoded dataset; applied at load time, so it is
/// part of the *train* key, not the preprocess key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataView {
    pub normalization: Normalization,
    /// Keep only the first N training / test images (tiny test recipes, quick looks); applied
    /// before the validation split is carved.
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    /// Images moved from train to a validation split (0 = none), chosen by `validation_seed`.
    pub validation: usize,
    pub validation_seed: u64,
}

impl Default for DataView {
    fn default() -> Self {
        Self {
            normalization: Normalization::Official,
            train_limit: None,
            test_limit: None,
            validation: 0,
            validation_seed: 0,
        }
    }
}

/// What preprocess records about the data (`stats.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    pub dataset: String,
    pub classes: usize,
    /// Class names in label order (sorted folder names for image folders).
    pub class_names: Vec<String>,
    /// `(channels, height, width)`.
    pub shape: (usize, usize, usize),
    pub train_count: usize,
    pub test_count: usize,
    /// Per-channel mean and (population) standard deviation of all training pixels, in [0, 1].
    pub channel_mean: Vec<f64>,
    pub channel_std: Vec<f64>,
    pub train_label_counts: Vec<usize>,
    pub test_label_counts: Vec<usize>,
}

fn read_split(dir: &Path, images_stem: &str, labels_stem: &str, classes: usize) -> Result<Split> {
    let ipath = fetch::locate(dir, images_stem)?;
    let lpath = fetch::locate(dir, labels_stem)?;
    let limits = input_limits(DataFormat::Idx);
    let images = idx::read_with(&ipath, limits)?;
    let labels = idx::read_with(&lpath, limits)?;
    let (n, h, w) = match images.dims[..] {
        [n, h, w] => (n, h, w),
        _ => {
            return Err(format_err(
                &ipath,
                format!("expected 3 dimensions (n, h, w), found {:?}", images.dims),
            ))
        }
    };
    if h == 0 || w == 0 {
        return Err(format_err(
            &ipath,
            format!("images of {h}×{w} pixels: an image needs at least one pixel"),
        ));
    }
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
                return Err(StageError::Setting {
                    field: "data.normalization",
                    message: format!(
                        "per-channel normalisation impossible: channel {ch} is constant"
                    ),
                });
            }
            Normalizer {
                scale: std.iter().map(|s| (1.0 / (255.0 * s)) as f32).collect(),
                shift: mean.iter().zip(std).map(|(m, s)| (-m / s) as f32).collect(),
            }
        }
    })
}

/// The most bytes the fixed-layout formats may expand to: four times the largest official
/// dataset of each (CIFAR-100 binary, 184 MB; MNIST, 55 MB), room for larger data in the same
/// layouts, and a gzip bomb stops there rather than at half the machine's memory.
const FIXED_FORMAT_MAX_BYTES: u64 = 1 << 30;

/// What a reader of `format` may hold: half the machine's free memory, and no more than the
/// fixed-layout formats can sensibly hold.
fn input_limits(format: DataFormat) -> InputLimits {
    let machine = InputLimits::of_machine();
    match format {
        DataFormat::Idx | DataFormat::CifarBinary | DataFormat::CifarPython => InputLimits {
            max_bytes: machine.max_bytes.min(FIXED_FORMAT_MAX_BYTES),
        },
        DataFormat::Parquet | DataFormat::ImageFolder => machine,
    }
}

/// Decodes the fetched files in `root` per `cfg`.
pub fn decode(cfg: &PreprocessConfig, root: &Path) -> Result<Decoded> {
    let load = |format| Bundle::load_with(root, input_limits(format));
    let cifar = match cfg.dataset {
        DatasetName::Cifar10 => Some(Cifar::Ten),
        DatasetName::Cifar100 => Some(Cifar::Hundred),
        _ => None,
    };
    let needs_cifar = || {
        cifar.ok_or_else(|| StageError::Setting {
            field: "format",
            message: format!(
                "format {:?} holds CIFAR; dataset `{}` needs another format",
                cfg.format,
                cfg.dataset.as_str()
            ),
        })
    };
    if cfg.label == LabelChoice::Coarse && cfg.dataset != DatasetName::Cifar100 {
        return Err(StageError::Setting {
            field: "label",
            message: format!(
                "label = \"coarse\" exists only for CIFAR-100, not `{}`",
                cfg.dataset.as_str()
            ),
        });
    }
    match cfg.format {
        DataFormat::Idx => {
            let classes = 10;
            let train = read_split(root, IDX_FILES[0], IDX_FILES[1], classes)?;
            let test = read_split(root, IDX_FILES[2], IDX_FILES[3], classes)?;
            Ok(Decoded {
                train,
                test,
                class_names: (0..classes).map(|i| i.to_string()).collect(),
            })
        }
        DataFormat::CifarBinary => {
            cifar::read_binary(&load(cfg.format)?, needs_cifar()?, cfg.label)
        }
        DataFormat::CifarPython => {
            cifar::read_python(&load(cfg.format)?, needs_cifar()?, cfg.label)
        }
        DataFormat::Parquet => {
            let (label, classes) = match (cfg.dataset, cfg.label) {
                (DatasetName::Cifar100, LabelChoice::Fine) => ("fine_label", 100),
                (DatasetName::Cifar100, LabelChoice::Coarse) => ("coarse_label", 20),
                (DatasetName::ImageFolder, _) => {
                    return Err(StageError::Setting {
                        field: "format",
                        message: "parquet files hold a named dataset (cifar-10, cifar-100, \
                                  mnist, fashion-mnist), not an image folder"
                            .into(),
                    })
                }
                _ => ("label", 10),
            };
            parquet_images::read(
                &load(cfg.format)?,
                &parquet_images::Columns { label, classes },
            )
        }
        DataFormat::ImageFolder => image_folder::read(&load(cfg.format)?),
    }
}

pub fn run(
    cfg: &PreprocessConfig,
    fetched: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<DatasetStats> {
    progress.begin("preprocess", 2);
    let root = fetch::data_root(fetched)?;
    let Decoded {
        train,
        test,
        class_names,
    } = decode(cfg, &root)?;
    progress.update(1, "decoded");
    if train.shape != test.shape {
        return Err(format_err(
            &root,
            format!(
                "train images are {:?} but test images are {:?}",
                train.shape, test.shape
            ),
        ));
    }
    if train.is_empty() || test.is_empty() {
        return Err(format_err(&root, "a dataset split is empty"));
    }
    if train.image_len() == 0 {
        return Err(format_err(
            &root,
            format!("images of shape {:?} hold no pixels", train.shape),
        ));
    }
    let classes = class_names.len();
    let (mean, std) = channel_stats(&train);
    let stats = DatasetStats {
        dataset: cfg.dataset.as_str().into(),
        classes,
        class_names,
        shape: train.shape,
        train_count: train.len(),
        test_count: test.len(),
        train_label_counts: label_counts(&train, classes),
        test_label_counts: label_counts(&test, classes),
        channel_mean: mean,
        channel_std: std,
    };
    write_artifact(out, &train, &test, &stats)?;
    progress.update(2, "written");
    progress.end();
    Ok(stats)
}

/// Writes a decoded dataset in the artifact layout [`load`] reads: the four uint8 tensors
/// (`data.safetensors`) and `stats.json`.
pub fn write_artifact(out: &Path, train: &Split, test: &Split, stats: &DatasetStats) -> Result<()> {
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
    candle_core::safetensors::save(&tensors, &data_path)
        .map_err(|e| format_err(&data_path, format!("cannot write: {e}")))?;
    crate::files::honour_umask(&data_path)?;
    write_json(&out.join(STATS_FILE), stats)
}

/// A preprocessed dataset loaded back from its artifact, with a recipe's view applied.
pub struct Prepared {
    pub train: Split,
    /// Carved from train when the view asks for it.
    pub validation: Option<Split>,
    pub test: Split,
    /// Statistics of the whole decoded dataset (the artifact's `stats.json`).
    pub stats: DatasetStats,
    /// The view's normalisation; per-channel statistics come from the view's training images.
    pub normalizer: Normalizer,
}

/// Loads the decoded splits without a view.
pub fn load_decoded(dir: &Path) -> Result<(Split, Split, DatasetStats)> {
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
    Ok((train, test, stats))
}

/// Applies a view: limits (first N), then the validation split — `validation` images drawn
/// without replacement by `validation_seed`, kept in their original order, the rest staying in
/// train in theirs — then the normalisation fitted on the remaining training images.
pub fn apply_view(
    mut train: Split,
    mut test: Split,
    view: &DataView,
) -> Result<(Split, Option<Split>, Split, Normalizer)> {
    if let Some(n) = view.train_limit {
        train.truncate(n);
    }
    if let Some(n) = view.test_limit {
        test.truncate(n);
    }
    let validation = if view.validation > 0 {
        if view.validation >= train.len() {
            return Err(StageError::Setting {
                field: "data.validation",
                message: format!(
                    "{} validation images leave no training images (the training split has {})",
                    view.validation,
                    train.len()
                ),
            });
        }
        let mut order: Vec<u32> = (0..train.len() as u32).collect();
        Rng::fork(view.validation_seed, "validation").shuffle(&mut order);
        let mut chosen = vec![false; train.len()];
        for &i in &order[..view.validation] {
            chosen[i as usize] = true;
        }
        let (keep, val): (Vec<usize>, Vec<usize>) = (0..train.len()).partition(|&i| !chosen[i]);
        let val_split = train.select(&val);
        train = train.select(&keep);
        Some(val_split)
    } else {
        None
    };
    if train.is_empty() || test.is_empty() {
        return Err(StageError::Setting {
            field: "data",
            message: "a dataset split is empty after the limits and the validation split".into(),
        });
    }
    // Only the per-channel normaliser reads the statistics: skip the pass over every pixel.
    let (mean, std) = match view.normalization {
        Normalization::PerChannel => channel_stats(&train),
        _ => (vec![0.0; train.shape.0], vec![0.0; train.shape.0]),
    };
    let norm = normalizer(view.normalization, &mean, &std)?;
    Ok((train, validation, test, norm))
}

pub fn load(dir: &Path, view: &DataView) -> Result<Prepared> {
    let (train, test, stats) = load_decoded(dir)?;
    let (train, validation, test, normalizer) = apply_view(train, test, view)?;
    Ok(Prepared {
        train,
        validation,
        test,
        stats,
        normalizer,
    })
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
