//! `baseline`: standard training — every kernel an ordinary trainable tensor.

use super::{plain_layer_bytes, LayerDims, Method, OracleTest};
use opt_core::layers::{KernelFactory, PlainFactory};
use serde::{Deserialize, Serialize};

/// No options (an empty struct, so `deny_unknown_fields` rejects any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {}

impl Method for Baseline {
    fn summary(&self) -> &'static str {
        "standard training: every kernel an ordinary trainable tensor (He-normal init)"
    }

    fn label(&self) -> String {
        "Baseline".into()
    }

    fn factory(&self) -> Box<dyn KernelFactory> {
        Box::new(PlainFactory)
    }

    fn oracle_tests(&self) -> &'static [OracleTest] {
        &[OracleTest {
            file: "opt-core/src/ops/conv2d/mod.rs",
            test: "matches_candle_conv_forward_and_backward",
        }]
    }

    fn orthogonality_tolerance(&self) -> Option<f64> {
        None
    }

    fn is_plain(&self) -> bool {
        true
    }

    fn layer_bytes(&self, layer: &LayerDims) -> u64 {
        plain_layer_bytes(layer)
    }
}
