//! Per-layer diagnostics recorded at each evaluation: hyperspherical energy of the effective
//! neurons (all weight layers) and `‖RRᵀ − I‖_F` of the rotation (OPT layers).

use crate::Result;
use opt_core::energy::hyperspherical_energy;
use opt_core::opt_layer::kernel_to_weight;
use opt_core::orth::orthogonality_error;
use opt_core::Network;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerMetrics {
    pub layer: String,
    /// MHE-code energies (spec §4) of the layer's neurons: s = 0, 1, 2 and half-space.
    pub energy_s0: f64,
    pub energy_s1: f64,
    pub energy_s2: f64,
    pub half_energy_s0: f64,
    pub half_energy_s1: f64,
    pub half_energy_s2: f64,
    /// `‖RRᵀ − I‖_F` of the layer's rotation; `None` for plain layers.
    pub orth_error: Option<f64>,
}

/// Metrics of every weight layer but the classifier `score` (plain in every method unless a
/// ResNet recipe makes it an OPT layer), in forward order under the network's layer names.
pub fn layer_metrics(model: &Network) -> Result<Vec<LayerMetrics>> {
    let mut out = Vec::new();
    for conv in model.weight_layers().filter(|c| c.name != "score") {
        let w = kernel_to_weight(&conv.source.kernel()?.detach())?;
        let e = hyperspherical_energy(&w)?;
        let orth_error = match conv.source.rotation_matrix()? {
            Some(r) => Some(orthogonality_error(&r.detach())?),
            None => None,
        };
        out.push(LayerMetrics {
            layer: conv.name.clone(),
            energy_s0: e.s0,
            energy_s1: e.s1,
            energy_s2: e.s2,
            half_energy_s0: e.half_s0,
            half_energy_s1: e.half_s1,
            half_energy_s2: e.half_s2,
            orth_error,
        });
    }
    Ok(out)
}

/// `(mean s = 1 energy over layers, largest orthogonality error)`.
pub fn summarize(layers: &[LayerMetrics]) -> (Option<f64>, Option<f64>) {
    let energy = (!layers.is_empty())
        .then(|| layers.iter().map(|l| l.energy_s1).sum::<f64>() / layers.len() as f64);
    let orth = layers
        .iter()
        .filter_map(|l| l.orth_error)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    (energy, orth)
}
