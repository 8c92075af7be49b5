//! An evaluation computes the maps once and reuses them over its batches
//! (`Network::rotations` + `forward_with`): the logits are those of a plain forward, bit for
//! bit, for as long as the weights do not change.

use candle_core::{DType, Device, Tensor};
use opt_stages::training::model::{build, MethodConfig, ModelConfig};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn a_forward_with_precomputed_rotations_is_the_plain_forward() {
    for method in ["cp", "gs", "hr", "ls", "ogd", "or"] {
        let m = MethodConfig::from_name(method).unwrap();
        let (net, store) =
            build(&ModelConfig::cnn6(8), &m, (3, 16, 16), 10, 1, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &Device::Cpu).unwrap();
        let rotations = net.rotations().unwrap();
        if ["cp", "gs", "hr", "ls"].contains(&method) {
            assert!(
                !rotations.is_empty(),
                "{method}: the maps are computed ahead"
            );
        }
        // Two batches through one context, each equal to its own plain forward.
        for batch in [x.narrow(0, 0, 2).unwrap(), x.narrow(0, 2, 2).unwrap()] {
            let cached = net.forward_with(&batch, false, &rotations).unwrap();
            let plain = net.forward(&batch, false).unwrap();
            assert_eq!(bits(&cached), bits(&plain), "{method}");
        }
        // A weight step makes the context stale: a fresh one follows the weights again.
        for e in store.of_kind(opt_core::Kind::Rotation) {
            let t = e.var.as_tensor();
            e.var
                .set(&(t + 0.05).unwrap().to_dtype(DType::F32).unwrap())
                .unwrap();
        }
        if !rotations.is_empty() {
            let stale = net.forward_with(&x, false, &rotations).unwrap();
            let plain = net.forward(&x, false).unwrap();
            assert_ne!(
                bits(&stale),
                bits(&plain),
                "{method}: the context holds the old weights"
            );
        }
        let fresh = net
            .forward_with(&x, false, &net.rotations().unwrap())
            .unwrap();
        assert_eq!(
            bits(&fresh),
            bits(&net.forward(&x, false).unwrap()),
            "{method}"
        );
    }
}
