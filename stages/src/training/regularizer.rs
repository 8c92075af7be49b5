//! The `[regularizer]` of a training configuration: MHE or half-space MHE added to the loss of
//! any method — the controls the OPT paper compares against (`wy1iu/MHE`, `code/train.py`:
//! `loss = fit + L2 + thomson (hidden layers) + thomson_final (classifier)`).

use crate::{Result, StageError};
use candle_core::Tensor;
use opt_core::mhe::{mhe_energy, MhePower};
use opt_core::opt_layer::kernel_to_weight;
use opt_core::Network;
use serde::{Deserialize, Serialize};

/// The classifier's name in every network.
pub const CLASSIFIER: &str = "score";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegularizerKind {
    /// MHE on the neurons of each layer.
    Mhe,
    /// Half-space MHE: on `[W, −W]` (hidden layers; the classifier keeps full MHE, as in the
    /// official code).
    HalfMhe,
}

/// `power` as the official `power_s`: `0`, `1`, `2` (Riesz s on the chordal distance) or
/// `a0`, `a1`, `a2` (angular). Numbers and strings are both accepted (`power = 1`,
/// `--set regularizer.power=1`, `power = "a1"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PowerText", into = "String")]
pub struct Power(pub MhePower);

impl Default for Power {
    /// `0`, the official script's power.
    fn default() -> Self {
        Power(MhePower::S0)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PowerText {
    Number(u64),
    Text(String),
}

impl TryFrom<PowerText> for Power {
    type Error = String;
    fn try_from(v: PowerText) -> std::result::Result<Self, String> {
        let text = match v {
            PowerText::Number(n) => n.to_string(),
            PowerText::Text(t) => t,
        };
        MhePower::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .map(Power)
            .ok_or_else(|| {
                format!("unknown MHE power {text:?}; expected one of 0, 1, 2, a0, a1, a2")
            })
    }
}

impl From<Power> for String {
    fn from(p: Power) -> String {
        p.0.as_str().to_string()
    }
}

impl Power {
    /// The official weights: hidden layers 1 (0.1 for a1, a2), the classifier 10 (1 for a1, a2)
    /// (`_add_thomson_constraint` / `_add_thomson_constraint_final`).
    pub fn official_weights(self) -> (f64, f64) {
        match self.0 {
            MhePower::A1 | MhePower::A2 => (0.1, 1.0),
            _ => (1.0, 10.0),
        }
    }
}

/// A resolved regulariser (every default filled in, so the cache key names it fully).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegularizerConfig {
    pub kind: RegularizerKind,
    pub power: Power,
    /// Weight of each hidden layer's energy.
    pub weight: f64,
    /// Weight of the classifier's (full-space) energy; 0 leaves the classifier alone.
    pub classifier_weight: f64,
    /// The hidden layers it applies to, by name; `None`: every weight layer but the classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
}

impl RegularizerConfig {
    /// As the paper's tables name it: `MHE (s=1)`, `HS-MHE (a2)`.
    pub fn label(&self) -> String {
        let name = match self.kind {
            RegularizerKind::Mhe => "MHE",
            RegularizerKind::HalfMhe => "HS-MHE",
        };
        let p = self.power.0;
        if p.is_angular() {
            format!("{name} ({})", p.as_str())
        } else {
            format!("{name} (s={})", p.as_str())
        }
    }

    /// Fails, naming the key, when `layers` names a layer the network does not have.
    pub fn check_layers(&self, net: &Network) -> Result<()> {
        let Some(layers) = &self.layers else {
            return Ok(());
        };
        let names: Vec<&str> = net
            .weight_layers()
            .map(|c| c.name.as_str())
            .filter(|n| *n != CLASSIFIER)
            .collect();
        for l in layers {
            if !names.contains(&l.as_str()) {
                return Err(StageError::Setting {
                    field: "regularizer.layers",
                    message: format!(
                        "the network has no hidden weight layer `{l}`; it has: {}",
                        names.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// `Σ weight·E(W_layer)` over the selected hidden layers plus `classifier_weight·E(W_score)`,
    /// on the effective weights (`R·W0` under OPT, where it is constant: the energy is
    /// rotation invariant). Recomputes each kernel, so an OPT method pays its maps twice.
    pub fn loss(&self, net: &Network) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for conv in net.weight_layers() {
            let (weight, half) = if conv.name == CLASSIFIER {
                (self.classifier_weight, false)
            } else if self.layers.as_ref().is_none_or(|l| l.contains(&conv.name)) {
                (self.weight, self.kind == RegularizerKind::HalfMhe)
            } else {
                continue;
            };
            if weight == 0.0 {
                continue;
            }
            let w = kernel_to_weight(&conv.source.kernel()?)?;
            let term = (mhe_energy(&w, self.power.0, half)? * weight)?;
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::model::{build, MethodConfig, ModelConfig};
    use candle_core::Device;
    use opt_core::energy::hyperspherical_energy;

    fn reg(kind: RegularizerKind, power: &str, layers: Option<Vec<String>>) -> RegularizerConfig {
        let power: Power = serde_json::from_value(serde_json::json!(power)).unwrap();
        RegularizerConfig {
            kind,
            power,
            weight: 0.5,
            classifier_weight: 3.0,
            layers,
        }
    }

    /// The regulariser's value is `weight × energy` summed with the metric's energies of the
    /// same layers (half-space for hidden layers under HS-MHE, full for the classifier).
    #[test]
    fn value_is_weight_times_the_energy_metric() {
        let (net, _) = build(
            &ModelConfig::cnn6(8),
            &MethodConfig::from_name("gs").unwrap(),
            (3, 16, 16),
            10,
            0,
            &Device::Cpu,
        )
        .unwrap();
        for (kind, half) in [
            (RegularizerKind::Mhe, false),
            (RegularizerKind::HalfMhe, true),
        ] {
            let r = reg(kind, "1", Some(vec!["conv2_0".into(), "fc6".into()]));
            let ours = r.loss(&net).unwrap().unwrap().to_scalar::<f32>().unwrap() as f64;
            let mut expected = 0.0;
            for conv in net.weight_layers() {
                let w = kernel_to_weight(&conv.source.kernel().unwrap()).unwrap();
                let e = hyperspherical_energy(&w).unwrap();
                expected += match conv.name.as_str() {
                    "conv2_0" | "fc6" => 0.5 * if half { e.half_s1 } else { e.s1 },
                    CLASSIFIER => 3.0 * e.s1,
                    _ => 0.0,
                };
            }
            assert!(
                (ours - expected).abs() < 1e-4 * expected,
                "{kind:?}: {ours} vs {expected}"
            );
        }
    }

    #[test]
    fn powers_parse_from_numbers_and_strings_and_reject_others() {
        for (v, p) in [
            (serde_json::json!(0), MhePower::S0),
            (serde_json::json!("2"), MhePower::S2),
            (serde_json::json!("a1"), MhePower::A1),
        ] {
            assert_eq!(serde_json::from_value::<Power>(v).unwrap().0, p);
        }
        assert!(serde_json::from_value::<Power>(serde_json::json!("a3")).is_err());
        assert_eq!(serde_json::to_value(Power(MhePower::A0)).unwrap(), "a0");
    }

    #[test]
    fn unknown_layers_are_refused_by_name() {
        let (net, _) = build(
            &ModelConfig::cnn6(8),
            &MethodConfig::default(),
            (3, 16, 16),
            10,
            0,
            &Device::Cpu,
        )
        .unwrap();
        let e = reg(RegularizerKind::Mhe, "0", Some(vec!["conv9_9".into()]))
            .check_layers(&net)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("regularizer.layers") && e.contains("conv9_9"),
            "{e}"
        );
    }
}
