//! OPT layers rotate their fixed neurons: the hyperspherical energy of `R·W0` equals that of
//! `W0` for the exact maps, at initialisation and after training steps.

use candle_core::Device;
use opt_core::energy::hyperspherical_energy;
use opt_core::Cnn6;
use opt_stages::model::{build, MethodConfig, ModelConfig};

fn model() -> ModelConfig {
    ModelConfig {
        arch: opt_stages::model::Arch::Cnn6,
        width: 8,
        widths: None,
        fc6_width: None,
        bn_decay: 0.999,
        bn_eps: 1e-3,
    }
}

fn energies(net: &Cnn6, store: &opt_core::ParamStore) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for conv in net.weight_layers().filter(|c| c.name != "score") {
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
        for e in store
            .entries()
            .iter()
            .filter(|e| e.name.ends_with("rotation"))
        {
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

#[test]
fn unconstrained_rotations_change_the_energy() {
    let m = MethodConfig::from_name("upt").unwrap();
    let (net, store) = build(&model(), &m, (3, 16, 16), 10, 1, &Device::Cpu).unwrap();
    let mut rng = opt_core::Rng::seed(9);
    for e in store
        .entries()
        .iter()
        .filter(|e| e.name.ends_with("rotation"))
    {
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
