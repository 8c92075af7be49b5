//! The trained model's file (`model.safetensors` of the train artifact): the model's tensors
//! by name, nothing of the optimizers or the data stream, so the stages that read a trained
//! model (evaluate, export) depend on this alone, not on the training snapshot
//! (`checkpoint`).

use crate::error::format_err;
use crate::Result;
use candle_core::{DType, Device, Tensor};
use opt_core::ParamStore;
use std::collections::HashMap;
use std::path::Path;

/// Checks one stored tensor: its shape, dtype and (for floats) finiteness, naming the file,
/// `what` the file is to the reader and the key.
pub(crate) fn check_stored(
    path: &Path,
    what: &str,
    key: &str,
    t: &Tensor,
    dims: &[usize],
    dtype: DType,
) -> Result<()> {
    let bad = |m: String| format_err(path, format!("{what}: `{key}` {m}"));
    if t.dims() != dims {
        return Err(bad(format!("has shape {:?}, expected {dims:?}", t.dims())));
    }
    if t.dtype() != dtype {
        return Err(bad(format!("is {:?}, expected {dtype:?}", t.dtype())));
    }
    if dtype.is_float() {
        let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("holds {} at flat index {i}", values[i])));
        }
    }
    Ok(())
}

/// Checks that every tensor a model restores is finite, naming the file and key of the first
/// that is not: weights that are NaN give metrics that are NaN, which must never be cached.
pub fn check_finite(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for key in keys {
        let t = &tensors[key];
        check_stored(path, "unusable model", key, t, t.dims(), t.dtype())?;
    }
    Ok(())
}

/// Saves only the model tensors (the train artifact's `model.safetensors`).
pub fn save_model(path: &Path, store: &ParamStore) -> Result<()> {
    let cpu = Device::Cpu;
    let tensors = store
        .tensors()
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(&cpu)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    candle_core::safetensors::save(&tensors, path).map_err(|e| format_err(path, e.to_string()))?;
    crate::files::honour_umask(path)
}

/// Restores the model tensors of `path` into `store` in place, refusing non-finite values.
pub fn load_model(path: &Path, store: &ParamStore) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| format_err(path, e.to_string()))?;
    check_finite(path, &tensors)?;
    store
        .load(&tensors, "")
        .map_err(|e| format_err(path, e.to_string()))
}
