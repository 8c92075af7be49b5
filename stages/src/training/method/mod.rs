//! The training methods: what each weight layer of a network is and how it trains.
//!
//! A method is one type in one file of this module, implementing [`Method`], and one line of
//! the registry below. Everything else derives from the registry: the recipe schema
//! (`method.name` and the type's serde options, unknown keys rejected), `orthopt list`, the
//! cache keys (the method's canonical JSON inside the train configuration), report labels, the
//! memory estimate, the optimizers, episodes, `bench` and `gpu-check`.
//! The docs' "Adding a method" page walks through one, file by file.

mod baseline;
mod block;
mod cayley_neumann;
mod cp;
mod expm;
mod gs;
mod hr;
mod ls;
mod ogd;
mod or;
mod poet;
mod sopt;
mod upt;

pub use baseline::Baseline;
pub use block::{Block, BlockBase};
pub use cayley_neumann::CayleyNeumann;
pub use cp::Cp;
pub use expm::Expm;
pub use gs::Gs;
pub use hr::Hr;
pub use ls::Ls;
pub use ogd::Ogd;
pub use or::Or;
pub use poet::Poet;
pub use sopt::{BaseMap, Sopt};
pub use upt::Upt;

use opt_core::layers::KernelFactory;
use opt_core::orth::OrthMap;
use opt_core::Kind;
use serde::{Deserialize, Serialize};

/// How a method's rotations are updated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RotationOptimizer {
    /// Momentum SGD with every other trainable tensor.
    MomentumSgd,
    /// Cayley SGD (OGD) with its own learning rate, scaled by `lr_factor` at each milestone.
    CayleySgd { lr: f64, lr_factor: f64 },
}

/// Periodic work between steps: every `length` iterations the network's layers end an episode
/// (`KernelSource::end_episode`: merge, reset, re-sample), as S-OPT and POET do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Episodes {
    /// Iterations per episode (> 0).
    pub length: u64,
    /// The name of the random stream each episode's draws fork from (with its number).
    pub stream: &'static str,
    /// Zero the momentum of the tensors of this kind at each episode end (the rotations the
    /// episode restarts: S-OPT's and POET's `Kind::SparseRotation`).
    pub reset_momentum: Option<Kind>,
    /// Re-initialise the BN γ/β of the layers holding small rotations (S-OPT's official quirk).
    pub reset_bn: bool,
    /// Restart the data sampler's passes at each episode (S-OPT's official order).
    pub restart_data: bool,
}

/// One weight layer as the memory estimate sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerDims {
    /// Fan-in `k_h·k_w·c_in`.
    pub fan_in: u64,
    /// Output channels (neurons).
    pub c_out: u64,
    /// `k_h·k_w`.
    pub taps: u64,
}

/// What a method may check about the network before anything trains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkFacts {
    /// The narrowest stage width (the fewest input channels of a layer after the first).
    pub narrowest_width: usize,
}

/// A method setting that cannot work with the network: the option's key under `method.`
/// and the expectation.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSettingError {
    pub key: &'static str,
    pub message: String,
}

/// Bytes of a plain layer: kernel, gradient, momentum (f32).
pub fn plain_layer_bytes(l: &LayerDims) -> u64 {
    l.fan_in * l.c_out * 4 * 3
}

/// Bytes of an `r×r` learned rotation: `P`, `R`, their gradients and momentum in f32, plus
/// three f64 work copies of the map.
pub fn rotation_bytes(r: u64) -> u64 {
    r * r * (4 * 4 + 8 * 3)
}

/// Bytes of the fixed neurons `W0` and the effective weight (f32).
pub fn neuron_bytes(l: &LayerDims) -> u64 {
    l.fan_in * l.c_out * 4 * 2
}

/// A test that checks a method's math against an independent oracle (an f64 formulation
/// written out, finite differences, an invariant): its file from the repository root and its
/// function. `pipeline/tests/registry.rs` fails when a listed test is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OracleTest {
    pub file: &'static str,
    pub test: &'static str,
}

/// How one method makes and trains a layer's kernel. Its options are the implementing type's
/// serde fields (with defaults); the registry names it.
pub trait Method {
    /// One line for `orthopt list` and the docs: what the method is and where it comes from.
    fn summary(&self) -> &'static str;

    /// The method as tables name it (`OPT (GS)`, `S-OPT (GS, 16 ch)`).
    fn label(&self) -> String;

    /// What each weight layer of a network becomes: its parameters with their roles and kinds,
    /// and the map from them to the kernel.
    fn factory(&self) -> Box<dyn KernelFactory>;

    /// The tests that check what the layers compute against independent oracles (at least
    /// one; the registry test checks they exist).
    fn oracle_tests(&self) -> &'static [OracleTest];

    /// The exact map of its rotations, when they are computed by one (route tables, bench).
    fn orth_map(&self) -> Option<OrthMap> {
        None
    }

    /// The largest `‖RRᵀ − I‖_F` its layers' rotations may show after training (gpu-check):
    /// `None` where nothing keeps them orthogonal (baseline, OR, UPT).
    fn orthogonality_tolerance(&self) -> Option<f64> {
        Some(1e-3)
    }

    /// Whether the layers are the plain kernels of standard training (tables then name a
    /// regulariser alone: `MHE (s=0)`).
    fn is_plain(&self) -> bool {
        false
    }

    /// Bytes of one weight layer built by the method (the memory estimate): by default one
    /// `d×d` rotation and the neurons.
    fn layer_bytes(&self, layer: &LayerDims) -> u64 {
        rotation_bytes(layer.fan_in) + neuron_bytes(layer)
    }

    /// Multiplier of the weight decay of the momentum-SGD tensors.
    fn weight_decay_scale(&self) -> f64 {
        1.0
    }

    /// How the rotations (`Kind::Rotation`) are updated.
    fn rotation_optimizer(&self) -> RotationOptimizer {
        RotationOptimizer::MomentumSgd
    }

    /// The episodes of training, if the method has any.
    fn episodes(&self) -> Option<Episodes> {
        None
    }

    /// Refuses settings that cannot work with the network (checked before anything trains).
    fn check(&self, _network: &NetworkFacts) -> Result<(), MethodSettingError> {
        Ok(())
    }
}

/// The registry: `"name" => Variant(Type)`, one line per method. It generates
/// [`MethodConfig`] (the recipe's `[method]`, internally tagged by `name`), its `NAMES` and the
/// dispatch to each type's [`Method`] implementation.
macro_rules! registry {
    ($($name:literal => $variant:ident($ty:ty)),* $(,)?) => {
        /// The training method of a recipe (`[method]`, tagged by `name`), one variant per
        /// registered method; its options are the method type's fields.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "name")]
        pub enum MethodConfig {
            $(#[serde(rename = $name)] $variant($ty),)*
        }

        impl MethodConfig {
            /// All method names, in registry order.
            pub const NAMES: [&'static str; registry!(@count $($name)*)] = [$($name),*];

            /// The method behind the configuration.
            pub fn method(&self) -> &dyn Method {
                match self {
                    $(MethodConfig::$variant(m) => m,)*
                }
            }

            /// The name recipes use.
            pub fn name(&self) -> &'static str {
                match self {
                    $(MethodConfig::$variant(_) => $name,)*
                }
            }
        }

        $(impl From<$ty> for MethodConfig {
            fn from(m: $ty) -> Self {
                MethodConfig::$variant(m)
            }
        })*
    };
    (@count) => { 0usize };
    (@count $head:literal $($tail:literal)*) => { 1usize + registry!(@count $($tail)*) };
}

registry! {
    "baseline" => Baseline(Baseline),
    "cp" => Cp(Cp),
    "gs" => Gs(Gs),
    "hr" => Hr(Hr),
    "ls" => Ls(Ls),
    "ogd" => Ogd(Ogd),
    "or" => Or(Or),
    "upt" => Upt(Upt),
    "sopt" => Sopt(Sopt),
    "expm" => Expm(Expm),
    "cayley_neumann" => CayleyNeumann(CayleyNeumann),
    "block" => Block(Block),
    "poet" => Poet(Poet),
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig::Baseline(Baseline {})
    }
}

impl MethodConfig {
    /// The method with its default options, by name.
    pub fn from_name(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::json!({ "name": name })).ok()
    }

    /// The method as the paper's tables name it (`OPT (GS)`, `S-OPT (GS, 16 ch)`).
    pub fn paper_name(&self) -> String {
        self.method().label()
    }

    /// The orthogonal map the method's layers compute, if it has one.
    pub fn orth_map(&self) -> Option<OrthMap> {
        self.method().orth_map()
    }

    /// Multiplier of the weight decay of the momentum-SGD tensors.
    pub fn weight_decay_scale(&self) -> f64 {
        self.method().weight_decay_scale()
    }

    /// Whether the rotations are updated by Cayley SGD instead of momentum SGD.
    pub fn is_ogd(&self) -> bool {
        matches!(
            self.method().rotation_optimizer(),
            RotationOptimizer::CayleySgd { .. }
        )
    }

    pub(crate) fn factory(&self) -> Box<dyn KernelFactory> {
        self.method().factory()
    }
}

/// The layer config every exact-map method shares (CP, GS, HR, LS and the family's maps):
/// Gaussian `P`, decayed, `W0` fixed.
pub(crate) fn exact_layers(
    rotation: opt_core::opt_layer::Rotation,
) -> opt_core::opt_layer::OptLayerConfig {
    opt_core::opt_layer::OptLayerConfig {
        rotation,
        init: opt_core::opt_layer::RotationInit::Gaussian,
        decay_rotation: true,
        decay_fixed: true,
        learn_w0: false,
        penalty: 0.0,
        merge_on_episode: false,
    }
}
