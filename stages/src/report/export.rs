//! Export: a trained model as a *plain* CNN-6 in PyTorch's names and layouts, one safetensors
//! file that `bench/load_export.py` (or any `nn.Module` with the same structure) loads with
//! `load_state_dict(strict=True)`.
//!
//! OPT's parameters (`P`, `W0`) are folded into each layer's effective weight `W = R·W0`
//! (S-OPT: the merged weight), so the exported network is an ordinary CNN-6 whatever the
//! method: conv weights `[out, in, kh, kw]`, batch norm as `weight` (γ), `bias` (β),
//! `running_mean`, `running_var`. The names are those of `bench/torch_cnn6.py`'s baseline:
//! `features.<i>` for the six 3×3 convs and their BNs (an `nn.Sequential` of conv, BN, ReLU per
//! layer and a 2×2 max-pool after every second), `fc6` (a VALID conv over the last feature map)
//! and `score` (1×1 conv). The metadata carries what a loader needs to rebuild and feed it.

use crate::data::preprocess;
use crate::error::{format_err, IoContext};
use crate::training::model_file;
use crate::training::train_artifact::{self as artifact, MODEL_FILE};
use crate::{Result, StageError};
use candle_core::{Device, Tensor};
use opt_core::{Cnn6, ParamStore};
use std::collections::HashMap;
use std::path::Path;

/// `format` in the exported file's metadata.
pub const FORMAT: &str = "opt-cnn6-plain-v1";

/// Position of 3×3 layer `i` (0–5) in the PyTorch `features` sequence: conv, BN, ReLU per
/// layer, plus a max-pool after layers 1, 3 and 5.
fn features_index(i: usize) -> usize {
    3 * i + i / 2
}

/// The exported tensors, by PyTorch name, taken from a model whose parameters are loaded:
/// effective kernels (`KernelSource::kernel`, i.e. `R·W0` reshaped) and BN tensors.
pub fn plain_tensors(model: &Cnn6, store: &ParamStore) -> Result<Vec<(String, Tensor)>> {
    let cpu = Device::Cpu;
    let mut out = Vec::new();
    for (i, conv) in model.weight_layers().enumerate() {
        let kernel = conv.source.kernel()?.detach().to_device(&cpu)?;
        let name = match (i, conv.name.as_str()) {
            (0..=5, _) => format!("features.{}", features_index(i)),
            (_, "fc6") | (_, "score") => conv.name.clone(),
            (_, other) => {
                return Err(StageError::Internal(format!(
                    "unexpected CNN-6 layer `{other}` at position {i}"
                )))
            }
        };
        out.push((format!("{name}.weight"), kernel));
        if i <= 5 {
            let bn = format!("features.{}", features_index(i) + 1);
            for (ours, torch) in [
                ("gamma", "weight"),
                ("beta", "bias"),
                ("moving_mean", "running_mean"),
                ("moving_var", "running_var"),
            ] {
                let key = format!("{}.bn.{ours}", conv.name);
                let entry = store.get(&key).ok_or_else(|| {
                    StageError::Internal(format!("the model has no batch-norm tensor `{key}`"))
                })?;
                out.push((
                    format!("{bn}.{torch}"),
                    entry.var.as_tensor().to_device(&cpu)?,
                ));
            }
        }
    }
    Ok(out)
}

/// What an export wrote: each tensor's name and shape, in network order.
pub type ExportedShapes = Vec<(String, Vec<usize>)>;

/// Loads the train artifact in `train_dir` (with its decoded data in `prepared_dir`, for the
/// input shape, classes and normalisation) and writes the plain network to `out`.
pub fn run(prepared_dir: &Path, train_dir: &Path, out: &Path) -> Result<ExportedShapes> {
    let cfg = artifact::load_config(train_dir)?;
    // The PyTorch side (`bench/load_export.py`) builds CNN-6 only.
    if cfg.model.arch != crate::training::model::Arch::Cnn6 {
        return Err(StageError::Setting {
            field: "model.arch",
            message: format!(
            "{}: export writes a plain CNN-6 for PyTorch; this model is {} (model.arch = {:?}), \
             whose trained tensors are in {}",
            train_dir.display(),
            cfg.model.describe(),
            cfg.model.arch.as_str(),
            train_dir.join(MODEL_FILE).display()
            ),
        });
    }
    let data = preprocess::load(prepared_dir, &cfg.data)?;
    let stats = &data.stats;
    // Weights do not depend on where they are evaluated: always export from the CPU.
    let (model, store) = crate::training::model::build(
        &cfg.model,
        &cfg.method,
        stats.shape,
        stats.classes,
        cfg.seed,
        &Device::Cpu,
    )?;
    model_file::load_model(&train_dir.join(MODEL_FILE), &store)?;
    let model = model
        .as_cnn()
        .ok_or_else(|| StageError::Internal("export: the model is not a plain CNN".into()))?;
    let tensors = plain_tensors(model, &store)?;
    let c = &model.config;
    let json = |v: serde_json::Value| v.to_string();
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("input".into(), json(serde_json::json!(stats.shape))),
        ("classes".into(), stats.classes.to_string()),
        (
            "class_names".into(),
            json(serde_json::json!(stats.class_names)),
        ),
        ("widths".into(), json(serde_json::json!(c.widths))),
        ("fc6_width".into(), c.fc6_width.to_string()),
        ("bn_eps".into(), c.batchnorm.eps.to_string()),
        ("method".into(), cfg.method.paper_name()),
        // x = pixel · scale + shift per channel, pixels in 0–255, as training saw them.
        (
            "input_scale".into(),
            json(serde_json::json!(data.normalizer.scale)),
        ),
        (
            "input_shift".into(),
            json(serde_json::json!(data.normalizer.shift)),
        ),
        ("train_config".into(), json(serde_json::json!(cfg))),
    ]);
    let shapes = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let tmp = out.with_extension("safetensors.tmp");
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    safetensors::serialize_to_file(&map, Some(metadata), &tmp)
        .map_err(|e| format_err(&tmp, format!("cannot write the exported model: {e}")))?;
    std::fs::rename(&tmp, out).at(out)?;
    Ok(shapes)
}
