//! Every tensor of a model, by name, with the role that decides who may change it.
//!
//! All state lives in `Var`s — also the fixed matrices and BN statistics — so that a checkpoint
//! can be restored in place and layers holding clones of a `Var` see the restored values.

use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;

/// How a tensor is treated by training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Updated by the optimizer; `decay` = carries the L2 regulariser `wd·½‖θ‖²`.
    Trainable { decay: bool },
    /// Never updated by gradient (OPT's fixed neurons `W0`); `decay` = counted in the logged L2
    /// sum as the official code does (a constant, no gradient effect).
    Fixed { decay: bool },
    /// Running statistics (BN moving mean/variance): updated by the forward pass in training.
    Statistic,
}

/// What a tensor is in its layer. Code that needs "every rotation" or "every BN scale" asks for
/// the kind, never for a spelling of the name (`rotation` is a suffix of `sparse_rotation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A plain convolution or classifier kernel.
    Kernel,
    /// OPT's neurons `W0` (fixed, or learned by `learn_w0` variants).
    Neurons,
    /// The raw matrix `P` of a full OPT layer (`R = orth(P)`, or `R = P` for OGD/OR/UPT).
    Rotation,
    /// The small `P` of an S-OPT layer, acting on a subset of the fan-in.
    SparseRotation,
    /// The S-OPT subset's indices.
    SubsetIndices,
    /// BN's `γ`.
    BnScale,
    /// BN's `β`.
    BnShift,
    /// BN's moving mean.
    BnMovingMean,
    /// BN's moving variance.
    BnMovingVar,
    /// Anything else (tests, optimizer fixtures).
    Other,
}

/// A registered tensor. Names are `<layer>.<part…>` (`conv1_1.rotation`, `conv1_1.bn.gamma`);
/// layer names contain no dot.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub var: Var,
    pub role: Role,
    pub kind: Kind,
}

impl Entry {
    /// The weight layer this tensor belongs to (its BN included).
    pub fn layer(&self) -> &str {
        self.name.split('.').next().unwrap_or(&self.name)
    }
}

#[derive(Debug)]
pub struct ParamStore {
    device: Device,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Registers `tensor` under `name` (unique) with its role and kind.
    pub fn add(&mut self, name: &str, tensor: Tensor, role: Role, kind: Kind) -> Result<Var> {
        if self.index.contains_key(name) {
            return Err(Error::DuplicateParam(name.to_string()));
        }
        let var = Var::from_tensor(&tensor.to_device(&self.device)?)?;
        self.index.insert(name.to_string(), self.entries.len());
        self.entries.push(Entry {
            name: name.to_string(),
            var: var.clone(),
            role,
            kind,
        });
        Ok(var)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// Every tensor of `kind`, in registration order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.kind == kind)
    }

    pub fn trainable(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.role, Role::Trainable { .. }))
    }

    /// Number of scalars with the given role filter.
    pub fn count(&self, pred: impl Fn(Role) -> bool) -> usize {
        self.entries
            .iter()
            .filter(|e| pred(e.role))
            .map(|e| e.var.elem_count())
            .sum()
    }

    /// The logged L2 sum `Σ wd·½‖θ‖²` over every tensor that carries the regulariser.
    pub fn l2_sum(&self, weight_decay: f64) -> Result<f64> {
        let mut total = 0.0;
        for e in &self.entries {
            let decayed = matches!(
                e.role,
                Role::Trainable { decay: true } | Role::Fixed { decay: true }
            );
            if decayed {
                let s = e
                    .var
                    .as_tensor()
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?;
                total += s.to_scalar::<f64>()?;
            }
        }
        Ok(weight_decay * 0.5 * total)
    }

    /// All tensors by name (for saving).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.var.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every registered tensor with the one of the same name in `tensors`.
    /// `prefix` is prepended to look-up names (checkpoints keep other state beside the model).
    pub fn load(&self, tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for e in &self.entries {
            load_var(tensors, &format!("{prefix}{}", e.name), &e.var)?;
        }
        Ok(())
    }
}

/// Sets `var` from the tensor named `key` in `state` (a checkpoint), moved to `var`'s device
/// and dtype; a missing tensor or another shape is an error naming it.
pub(crate) fn load_var(state: &HashMap<String, Tensor>, key: &str, var: &Var) -> Result<()> {
    let t = state
        .get(key)
        .ok_or_else(|| Error::MissingTensor(key.to_string()))?;
    if t.dims() != var.dims() {
        return Err(Error::ShapeMismatch {
            name: key.to_string(),
            expected: var.dims().to_vec(),
            found: t.dims().to_vec(),
        });
    }
    var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    Ok(())
}
