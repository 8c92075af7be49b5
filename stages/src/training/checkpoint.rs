//! The training snapshot: one safetensors file holding every model tensor (`model.*`:
//! parameters, fixed tensors, BN statistics), the optimizer state (`momentum.*`, `cayley.*`),
//! the data stream's RNG state and current permutation, and the iteration; curves so far ride
//! in the metadata. Written to a temporary name and renamed, so a kill never leaves a
//! half-written checkpoint. Only training reads it; the trained model's own file (what
//! evaluate and export read) is `model_file`, which knows no optimizer or sampler.

use crate::data::batches::Sampler;
use crate::error::{format_err, IoContext};
use crate::progress::Progress;
use crate::training::optimizers::Optimizers;
use crate::training::train_artifact::{Curves, RouteRecord};
use crate::{Result, StageError};
use candle_core::{DType, Device, Tensor};
use opt_core::{ParamStore, Rng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The metadata key holding the [`RunRecord`] (JSON).
pub const META_CURVES: &str = "curves";

/// What a run has recorded so far, carried in a checkpoint's metadata so a resumed run's
/// curves and timings continue where they stopped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRecord {
    pub curves: Curves,
    /// Seconds spent in training steps, all sessions.
    pub train_seconds: f64,
    /// Seconds spent in periodic evaluations, all sessions.
    pub eval_seconds: f64,
    /// The routes every session used (absent in checkpoints older than the record).
    #[serde(default)]
    pub routes: RouteRecord,
}

/// Saves a training checkpoint with the run's record in its metadata.
pub fn save_run(
    path: &Path,
    store: &ParamStore,
    optimizers: &Optimizers,
    sampler: &Sampler,
    iteration: u64,
    record: &RunRecord,
) -> Result<()> {
    let text = serde_json::to_string(record).map_err(|source| StageError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let metadata = HashMap::from([(META_CURVES.to_string(), text)]);
    save(path, store, optimizers, sampler, iteration, metadata)
}

/// Restores the newest valid checkpoint (`path`, else its `previous`) into the model, the
/// optimizers and the sampler, returning its iteration and record; `None` when there is none
/// to resume from. A checkpoint is valid when it reads, and every tensor the run restores is
/// there with its shape and dtype, finite, and the iteration lies inside the run of
/// `iterations` steps. An invalid one is kept aside as `*.corrupt`, with a warning, and the
/// next one tried: a bad checkpoint must not block (or falsify) every later run.
pub fn restore_run(
    path: &Path,
    store: &ParamStore,
    optimizers: &Optimizers,
    sampler: &mut Sampler,
    iterations: u64,
    progress: &dyn Progress,
) -> Result<Option<(u64, RunRecord)>> {
    let candidates = [path.to_path_buf(), previous_of(path)];
    let mut skipped = false;
    for path in candidates.iter().filter(|p| p.is_file()) {
        let read = read(path).and_then(|snapshot| {
            let record = snapshot.record()?;
            snapshot.validate(store, optimizers, sampler.permutation.len(), iterations)?;
            Ok((snapshot, record))
        });
        match read {
            Ok((snapshot, record)) => {
                let iteration = snapshot.apply(store, optimizers, sampler)?;
                if skipped {
                    progress.warn(&format!(
                        "resuming from the previous checkpoint {} (iteration {iteration})",
                        path.display()
                    ));
                }
                return Ok(Some((iteration, record)));
            }
            Err(e) => {
                let aside = path.with_extension("safetensors.corrupt");
                progress.warn(&format!(
                    "{e}; kept aside as {} and not used",
                    aside.display()
                ));
                std::fs::rename(path, &aside).at(&aside)?;
                skipped = true;
            }
        }
    }
    if skipped {
        progress.warn("no readable checkpoint left: training starts from iteration 0");
    }
    Ok(None)
}

pub fn save(
    path: &Path,
    store: &ParamStore,
    optimizers: &Optimizers,
    sampler: &Sampler,
    iteration: u64,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let cpu = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in store.tensors() {
        tensors.insert(format!("model.{k}"), v.to_device(&cpu)?);
    }
    for (k, v) in optimizers.state() {
        tensors.insert(k, v.to_device(&cpu)?);
    }
    let rng: Vec<i64> = sampler.rng.state().iter().map(|&w| w as i64).collect();
    tensors.insert("rng_state".into(), Tensor::from_vec(rng, 4, &cpu)?);
    tensors.insert(
        "permutation".into(),
        Tensor::from_slice(&sampler.permutation, sampler.permutation.len(), &cpu)?,
    );
    tensors.insert(
        "iteration".into(),
        Tensor::from_vec(vec![iteration as i64], 1, &cpu)?,
    );
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(&tensors, Some(metadata), &tmp)
        .map_err(|e| format_err(&tmp, format!("cannot write checkpoint: {e}")))?;
    crate::files::sync(&tmp)?;
    crate::files::honour_umask(&tmp)?;
    // The last good checkpoint stays as `previous`, the fallback should the new one turn out
    // unreadable (a disk that filled up, a crash the file system did not survive whole).
    if path.is_file() {
        let previous = previous_of(path);
        std::fs::rename(path, &previous).at(&previous)?;
    }
    std::fs::rename(&tmp, path).at(path)
}

/// The checkpoint before `path` (`last.safetensors` → `previous.safetensors`).
pub fn previous_of(path: &Path) -> std::path::PathBuf {
    path.with_file_name("previous.safetensors")
}

/// A checkpoint read and parsed, not yet applied: reading is where a truncated or corrupt file
/// fails, before anything in the model changes.
pub struct Snapshot {
    path: std::path::PathBuf,
    tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Reads and parses a checkpoint file.
pub fn read(path: &Path) -> Result<Snapshot> {
    let bytes = std::fs::read(path).at(path)?;
    let bad = |m: String| format_err(path, format!("corrupt checkpoint: {m}"));
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Snapshot {
        path: path.to_path_buf(),
        tensors,
        metadata,
    })
}

impl Snapshot {
    /// The run's record in the metadata.
    pub fn record(&self) -> Result<RunRecord> {
        let path = &self.path;
        let text = self
            .metadata
            .get(META_CURVES)
            .ok_or_else(|| format_err(path, "checkpoint has no curves"))?;
        serde_json::from_str(text).map_err(|source| StageError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    fn tensor(&self, key: &str) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .ok_or_else(|| format_err(&self.path, format!("corrupt checkpoint: no `{key}`")))
    }

    /// Checks everything [`Snapshot::apply`] reads: the model's and the optimizers' tensors
    /// (present, of the run's shapes and dtypes, finite), the data stream's state (a live RNG,
    /// a permutation of the `images` training images) and the iteration (inside `0..iterations`:
    /// a checkpoint is never written after the last step). Returns the iteration.
    pub fn validate(
        &self,
        store: &ParamStore,
        optimizers: &Optimizers,
        images: usize,
        iterations: u64,
    ) -> Result<u64> {
        let expected = store
            .tensors()
            .into_iter()
            .map(|(k, v)| (format!("model.{k}"), v))
            .chain(optimizers.state());
        for (key, like) in expected {
            check_tensor(
                &self.path,
                &key,
                self.tensor(&key)?,
                like.dims(),
                like.dtype(),
            )?;
        }
        let rng = self.tensor("rng_state")?;
        check_tensor(&self.path, "rng_state", rng, &[4], DType::I64)?;
        if rng.to_vec1::<i64>()?.iter().all(|&w| w == 0) {
            return Err(self.bad("`rng_state` is all zeros (a generator that never leaves 0)"));
        }
        let perm = self.tensor("permutation")?;
        check_tensor(&self.path, "permutation", perm, &[images], DType::U32)?;
        let mut seen = vec![false; images];
        for (i, &p) in perm.to_vec1::<u32>()?.iter().enumerate() {
            match seen.get_mut(p as usize) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(self.bad(&format!(
                        "`permutation` entry {i} is {p}: not a permutation of 0..{images}"
                    )))
                }
            }
        }
        let it = self.tensor("iteration")?;
        check_tensor(&self.path, "iteration", it, &[1], DType::I64)?;
        let iteration = it.to_vec1::<i64>()?[0];
        if iteration < 0 || iteration as u64 >= iterations {
            return Err(self.bad(&format!(
                "`iteration` is {iteration}, outside this run's 0..{iterations}"
            )));
        }
        Ok(iteration as u64)
    }

    /// Checks that every tensor the file holds is finite (those of the run or not).
    pub fn check_all_finite(&self) -> Result<()> {
        crate::training::model_file::check_finite(&self.path, &self.tensors)
    }

    fn bad(&self, message: &str) -> StageError {
        format_err(&self.path, format!("corrupt checkpoint: {message}"))
    }

    /// Restores the model, the optimizers and the data stream; returns the iteration. The
    /// snapshot must have passed [`Snapshot::validate`] against the same run.
    pub fn apply(
        &self,
        store: &ParamStore,
        optimizers: &Optimizers,
        sampler: &mut Sampler,
    ) -> Result<u64> {
        let bad = |m: String| self.bad(&m);
        store
            .load(&self.tensors, "model.")
            .map_err(|e| bad(e.to_string()))?;
        optimizers
            .load_state(&self.tensors)
            .map_err(|e| bad(e.to_string()))?;
        let rng: Vec<i64> = self.tensor("rng_state")?.to_vec1()?;
        let rng: [u64; 4] = rng
            .iter()
            .map(|&w| w as u64)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| bad("rng_state must have 4 words".into()))?;
        sampler.rng = Rng::from_state(rng);
        let perm: Vec<u32> = self.tensor("permutation")?.to_vec1()?;
        if perm.len() != sampler.permutation.len() {
            return Err(bad(format!(
                "permutation of {} images, dataset has {}",
                perm.len(),
                sampler.permutation.len()
            )));
        }
        sampler.permutation = perm;
        let iteration = self.tensor("iteration")?.to_vec1::<i64>()?;
        match iteration.as_slice() {
            [i] if *i >= 0 => Ok(*i as u64),
            _ => Err(bad(format!("`iteration` is {iteration:?}"))),
        }
    }
}

/// Checks one stored tensor against what the run expects, naming the file and the key.
fn check_tensor(path: &Path, key: &str, t: &Tensor, dims: &[usize], dtype: DType) -> Result<()> {
    crate::training::model_file::check_stored(path, "corrupt checkpoint", key, t, dims, dtype)
}
