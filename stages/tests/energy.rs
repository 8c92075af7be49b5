//! OPT layers rotate their fixed neurons: the hyperspherical energy of `R·W0` equals that of
//! `W0` for the exact maps, at initialisation and after training steps, in every architecture.

use candle_core::Device;
use opt_core::energy::hyperspherical_energy;
use opt_core::Network;
use opt_stages::training::model::{build, Arch, MethodConfig, ModelConfig};

fn model() -> ModelConfig {
    ModelConfig::cnn6(8)
}

/// (energy of `R·W0`, energy of `W0`) of every OPT layer (those with a `W0`).
fn energies(net: &Network, store: &opt_core::ParamStore) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for conv in net
        .weight_layers()
        .filter(|c| store.get(&format!("{}.w0_fix", c.name)).is_some())
    {
        let w = opt_core::opt_layer::kernel_to_weight(&conv.source.kernel().unwrap()).unwrap();
        let w0 = store
            .get(&format!("{}.w0_fix", conv.name))
            .expect("OPT layer has W0")
            .var
            .as_tensor()
            .clone();
        out.push((
            hyperspherical_energy(&w).unwrap().s1,
            hyperspherical_energy(&w0).unwrap().s1,
        ));
    }
    out
}

#[test]
fn exact_maps_preserve_the_energy_of_the_fixed_neurons() {
    for method in ["cp", "gs", "hr", "ls"] {
        let m = MethodConfig::from_name(method).unwrap();
        let (net, store) = build(&model(), &m, (3, 16, 16), 10, 1, &Device::Cpu).unwrap();
        // Move every rotation's raw matrix: energies must not care.
        for e in store.of_kind(opt_core::Kind::Rotation) {
            let t = e.var.as_tensor();
            e.var
                .set(&(t * 1.7).unwrap().affine(1.0, 0.3).unwrap())
                .unwrap();
        }
        for (layer, (ew, ew0)) in energies(&net, &store).into_iter().enumerate() {
            assert!(
                (ew - ew0).abs() < 1e-5,
                "{method} layer {layer}: {ew} vs {ew0}"
            );
        }
    }
}

/// ResNet-20 under GS: rotations moved as training would move them, and after real training
/// steps, every rotated layer (the 19 3×3 convolutions) keeps its initial energy; the plain
/// projections and classifier have no W0.
#[test]
fn an_opt_resnet_keeps_the_energy_of_its_rotated_layers() {
    let mut m = ModelConfig::cnn6(4);
    m.arch = Arch::Resnet;
    m.depth = Some(20);
    let method = MethodConfig::from_name("gs").unwrap();
    let (net, store) = build(&m, &method, (3, 12, 12), 5, 3, &Device::Cpu).unwrap();
    let initial: Vec<f64> = energies(&net, &store).iter().map(|e| e.1).collect();
    assert_eq!(initial.len(), 19);
    let p = |store: &opt_core::ParamStore| -> Vec<f32> {
        let v = &store.get("res2_0a.rotation").unwrap().var;
        v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    };
    let p_before = p(&store);
    let mut sgd = opt_core::MomentumSgd::new(&store, 0.9, 5e-4).unwrap();
    let mut rng = opt_core::Rng::seed(5);
    for _ in 0..3 {
        let x = candle_core::Tensor::from_vec(
            rng.normal_vec(4 * 3 * 12 * 12, 1.0),
            (4, 3, 12, 12),
            &Device::Cpu,
        )
        .unwrap();
        let loss = net
            .forward(&x, true)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        sgd.step(&loss.backward().unwrap(), 0.5).unwrap();
    }
    let after = energies(&net, &store);
    for (layer, ((ew, ew0), e_init)) in after.iter().zip(&initial).enumerate() {
        assert!((ew - ew0).abs() < 1e-5, "layer {layer}: {ew} vs {ew0}");
        assert!(
            (ew - e_init).abs() < 1e-5,
            "layer {layer}: {ew} vs initial {e_init}"
        );
    }
    // The steps did move the rotations (the test would pass vacuously otherwise).
    let moved = p(&store)
        .iter()
        .zip(&p_before)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "rotation moved by {moved}");
}

#[test]
fn unconstrained_rotations_change_the_energy() {
    let m = MethodConfig::from_name("upt").unwrap();
    let (net, store) = build(&model(), &m, (3, 16, 16), 10, 1, &Device::Cpu).unwrap();
    let mut rng = opt_core::Rng::seed(9);
    for e in store.of_kind(opt_core::Kind::Rotation) {
        let d = e.var.dim(0).unwrap();
        let noise = candle_core::Tensor::from_vec(rng.normal_vec(d * d, 0.5), (d, d), &Device::Cpu)
            .unwrap();
        e.var.set(&(e.var.as_tensor() + noise).unwrap()).unwrap();
    }
    let moved = energies(&net, &store)
        .into_iter()
        .filter(|(a, b)| (a - b).abs() > 1e-3)
        .count();
    assert!(
        moved >= 6,
        "a non-orthogonal R must change the energy of most layers"
    );
}
