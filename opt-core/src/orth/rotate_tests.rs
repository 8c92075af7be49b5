//! The fused rotation `W = orth(P)·W0` against its composed formulation (the exact map, itself
//! checked against independent oracles in `tests`, then a matmul) in f64, against finite
//! differences, and against the rotation invariance `WᵀW = W0ᵀW0` at layer size in f32.

use super::{orthogonalize_batched, rotate_batched, rotate_ragged, OrthMap};
use crate::Rng;
use candle_core::{DType, Device, Tensor, Var};

fn gauss(seed: u64, shape: &[usize], dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(Rng::seed(seed).normal_vec(n, 1.0), shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("tensor")
}

/// `3I + N(0,1)/3` per matrix: well conditioned, for the maps whose gradient scales with 1/σ_min.
fn healthy(seed: u64, b: usize, d: usize) -> Tensor {
    let eye = Tensor::eye(d, DType::F64, &Device::Cpu)
        .and_then(|e| e.unsqueeze(0))
        .and_then(|e| e.broadcast_as((b, d, d)))
        .expect("eye");
    ((gauss(seed, &[b, d, d], DType::F64) / 3.0).expect("scale") + (eye * 3.0).expect("3I"))
        .expect("healthy")
}

fn p_for(map: OrthMap, seed: u64, b: usize, d: usize) -> Tensor {
    match map {
        OrthMap::Cayley => gauss(seed, &[b, d, d], DType::F64),
        _ => healthy(seed, b, d),
    }
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("values")
}

/// `‖a − b‖_F / ‖b‖_F`.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (vals(a), vals(b));
    let err: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    (err / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// `W` and the gradients of `L = Σ W ⊙ C` w.r.t. P and W0, fused or composed.
fn run(p: &Tensor, w0: &Tensor, c: &Tensor, map: OrthMap, fused: bool) -> [Tensor; 3] {
    let (pv, wv) = (
        Var::from_tensor(p).expect("p"),
        Var::from_tensor(w0).expect("w0"),
    );
    let w = if fused {
        rotate_batched(pv.as_tensor(), wv.as_tensor(), map).expect("rotate")
    } else {
        orthogonalize_batched(pv.as_tensor(), map)
            .and_then(|q| q.matmul(wv.as_tensor()))
            .expect("composed")
    };
    let grads = (&w * c)
        .and_then(|l| l.sum_all())
        .and_then(|l| l.backward())
        .expect("backward");
    let gp = grads.get(&pv).expect("∂P").clone();
    let gw = grads.get(&wv).expect("∂W0").clone();
    [w, gp, gw]
}

#[test]
fn rotate_equals_the_composed_map_in_values_and_both_gradients() {
    for map in OrthMap::ALL {
        for (k, (b, d, n)) in [
            (1, 1, 1),
            (2, 2, 3),
            (3, 3, 1),
            (2, 8, 5),
            (3, 37, 4),
            (1, 40, 40),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 100 * k as u64;
            let p = p_for(map, seed, b, d);
            let w0 = gauss(seed + 1, &[b, d, n], DType::F64);
            let c = gauss(seed + 2, &[b, d, n], DType::F64);
            let fused = run(&p, &w0, &c, map, true);
            let composed = run(&p, &w0, &c, map, false);
            for (what, f, r) in [("W", 0, 0), ("∂P", 1, 1), ("∂W0", 2, 2)] {
                let e = rel(&fused[f], &composed[r]);
                assert!(
                    e <= 1e-10
                        || (d == 1
                            && what == "∂P"
                            && vals(&composed[r]).iter().all(|x| *x == 0.0)
                            && vals(&fused[f]).iter().all(|x| *x == 0.0)),
                    "{} b={b} d={d} n={n}: {what} differs by {e:e}",
                    map.name()
                );
            }
        }
    }
}

/// `∂L/∂P` along a random direction against a central difference of the fused op itself.
#[test]
fn rotate_gradients_match_finite_differences() {
    let (b, d, n, h) = (2, 9, 4, 1e-6);
    for map in OrthMap::ALL {
        let p = p_for(map, 7, b, d);
        let w0 = gauss(8, &[b, d, n], DType::F64);
        let c = gauss(9, &[b, d, n], DType::F64);
        let [_, gp, gw] = run(&p, &w0, &c, map, true);
        let loss = |p: &Tensor, w0: &Tensor| -> f64 {
            vals(&(rotate_batched(p, w0, map).expect("rotate") * &c).expect("prod"))
                .iter()
                .sum()
        };
        let dot = |a: &Tensor, b: &Tensor| -> f64 {
            vals(a).iter().zip(vals(b)).map(|(x, y)| x * y).sum()
        };
        let e = gauss(10, &[b, d, d], DType::F64);
        let fd = (loss(&(&p + (&e * h).expect("h")).expect("+"), &w0)
            - loss(&(&p - (&e * h).expect("h")).expect("-"), &w0))
            / (2.0 * h);
        let an = dot(&gp, &e);
        assert!(an.abs() > 1e-3, "{}: ∂P vanished", map.name());
        assert!(
            (fd - an).abs() <= 1e-6 * an.abs(),
            "{}: ∂P·E {an} vs fd {fd}",
            map.name()
        );
        let e = gauss(11, &[b, d, n], DType::F64);
        let fd = (loss(&p, &(&w0 + (&e * h).expect("h")).expect("+"))
            - loss(&p, &(&w0 - (&e * h).expect("h")).expect("-")))
            / (2.0 * h);
        let an = dot(&gw, &e);
        assert!(
            (fd - an).abs() <= 1e-6 * an.abs(),
            "{}: ∂W0·E {an} vs fd {fd}",
            map.name()
        );
    }
}

/// Householder's sign rule (`det Q = (−1)^(d−1)`) where faer's QR applies no reflector for a
/// column that is already reduced: identity, negative diagonals, triangular and permutation
/// matrices — the fused op counts reflectors, the composed one takes an LU's determinant.
#[test]
fn rotate_householder_keeps_the_determinant_rule_on_structured_matrices() {
    for d in [2usize, 3, 4, 5] {
        let eye: Vec<f64> = (0..d * d)
            .map(|k| if k % (d + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let neg_diag: Vec<f64> = (0..d * d)
            .map(|k| {
                if k % (d + 1) == 0 {
                    -(1.0 + (k / d) as f64)
                } else {
                    0.0
                }
            })
            .collect();
        // Non-singular by construction: the diagonal is ±(1 + i).
        let diag = |i: usize| {
            if i.is_multiple_of(2) {
                1.0 + i as f64
            } else {
                -(1.0 + i as f64)
            }
        };
        let upper: Vec<f64> = (0..d * d)
            .map(|k| match (k / d).cmp(&(k % d)) {
                std::cmp::Ordering::Equal => diag(k / d),
                std::cmp::Ordering::Less => 0.5 - ((k * 7) % 5) as f64,
                std::cmp::Ordering::Greater => 0.0,
            })
            .collect();
        let perm: Vec<f64> = (0..d * d)
            .map(|k| if (k / d + 1) % d == k % d { 1.0 } else { 0.0 })
            .collect();
        let lower_tri: Vec<f64> = (0..d * d)
            .map(|k| match (k / d).cmp(&(k % d)) {
                std::cmp::Ordering::Equal => diag(d - 1 - k / d),
                std::cmp::Ordering::Greater => 2.0 - (k % 3) as f64,
                std::cmp::Ordering::Less => 0.0,
            })
            .collect();
        for (what, m) in [
            ("I", eye),
            ("−diag", neg_diag),
            ("upper", upper),
            ("perm", perm),
            ("lower", lower_tri),
        ] {
            let p = Tensor::from_vec(m, (1, d, d), &Device::Cpu).expect("p");
            let w0 = gauss(3, &[1, d, 2], DType::F64);
            let c = gauss(4, &[1, d, 2], DType::F64);
            let fused = run(&p, &w0, &c, OrthMap::Householder, true);
            let composed = run(&p, &w0, &c, OrthMap::Householder, false);
            assert!(
                rel(&fused[0], &composed[0]) <= 1e-12,
                "d={d} {what}: W differs"
            );
            assert!(
                rel(&fused[2], &composed[2]) <= 1e-12,
                "d={d} {what}: ∂W0 differs"
            );
        }
    }
}

/// At CNN-6's sizes in f32, from the Gaussian `P` of the official init (condition ~10³–10⁴):
/// `WᵀW = W0ᵀW0` (Q orthogonal), and `W` and both gradients within the bounds of the
/// f64 composed map (values 1e-6, gradients 1e-4, relative).
#[test]
fn rotate_in_f32_at_layer_size_keeps_the_f64_maps_accuracy() {
    for (d, maps) in [(576usize, &OrthMap::ALL[..]), (1024, &OrthMap::ALL[..])] {
        let n = 64;
        for &map in maps {
            let p = gauss(d as u64, &[1, d, d], DType::F64);
            let w0 = (gauss(d as u64 + 1, &[1, d, n], DType::F64) * (2.0 / d as f64).sqrt())
                .expect("he");
            let c = gauss(d as u64 + 2, &[1, d, n], DType::F64);
            // The oracle takes the f32 inputs exactly (the map's sensitivity to rounding P is
            // cond(P)·eps, not the route's error).
            let f32s = |t: &Tensor| t.to_dtype(DType::F32).expect("f32");
            let back = |t: &Tensor| f32s(t).to_dtype(DType::F64).expect("f64");
            let fused = run(&f32s(&p), &f32s(&w0), &f32s(&c), map, true);
            let exact = run(&back(&p), &back(&w0), &back(&c), map, false);
            let gram = |w: &Tensor| {
                let w = w
                    .to_dtype(DType::F64)
                    .and_then(|w| w.squeeze(0))
                    .expect("w");
                w.t().and_then(|t| t.matmul(&w)).expect("gram")
            };
            let invariance = rel(&gram(&fused[0]), &gram(&f32s(&w0)));
            let errs = [
                rel(&fused[0], &exact[0]),
                rel(&fused[1], &exact[1]),
                rel(&fused[2], &exact[2]),
            ];
            eprintln!("rotate {} d={d} f32: WᵀW vs W0ᵀW0 {invariance:.1e}, W {:.1e}, ∂P {:.1e}, ∂W0 {:.1e}", map.name(), errs[0], errs[1], errs[2]);
            assert!(
                invariance <= 1e-6,
                "{} d={d}: WᵀW differs from W0ᵀW0 by {invariance:e}",
                map.name()
            );
            assert!(
                errs[0] <= 1e-6,
                "{} d={d}: W off by {:e}",
                map.name(),
                errs[0]
            );
            assert!(
                errs[1] <= 1e-4 && errs[2] <= 1e-4,
                "{} d={d}: gradients off by {errs:?}",
                map.name()
            );
        }
    }
}

#[test]
fn rotate_reads_strided_inputs_and_refuses_mismatched_ones() {
    let p = healthy(1, 2, 6);
    let w0 = gauss(2, &[2, 4, 6], DType::F64)
        .transpose(1, 2)
        .expect("strided W0");
    let fused =
        rotate_batched(&p.transpose(1, 2).expect("pᵀ"), &w0, OrthMap::Lowdin).expect("rotate");
    let composed = orthogonalize_batched(
        &p.transpose(1, 2).expect("pᵀ").contiguous().expect("c"),
        OrthMap::Lowdin,
    )
    .and_then(|q| q.matmul(&w0.contiguous()?))
    .expect("composed");
    assert!(rel(&fused, &composed) <= 1e-12);
    let err = rotate_batched(&p, &gauss(3, &[2, 5, 3], DType::F64), OrthMap::GramSchmidt)
        .expect_err("mismatch")
        .to_string();
    assert!(err.contains("W0 must be [2, 6, n]"), "{err}");
    let err = rotate_batched(&p, &gauss(3, &[2, 6, 3], DType::F32), OrthMap::GramSchmidt)
        .expect_err("dtype")
        .to_string();
    assert!(err.contains("F64"), "{err}");
}

/// Löwdin takes the SVD of `P` itself where the Gram route's squared condition would cost
/// accuracy: a `P` with one row scaled by 1e-7 (condition ~10⁸) still equals the composed map.
#[test]
fn rotate_lowdin_stays_exact_for_an_ill_conditioned_p() {
    let d = 12;
    let scale: Vec<f64> = (0..d * d)
        .map(|k| if k / d == 3 { 1e-7 } else { 1.0 })
        .collect();
    let scale = Tensor::from_vec(scale, (1, d, d), &Device::Cpu).expect("scale");
    let p = (healthy(5, 1, d) * scale).expect("ill-conditioned");
    let w0 = gauss(6, &[1, d, 3], DType::F64);
    let c = gauss(7, &[1, d, 3], DType::F64);
    let fused = run(&p, &w0, &c, OrthMap::Lowdin, true);
    let composed = run(&p, &w0, &c, OrthMap::Lowdin, false);
    for k in 0..3 {
        let e = rel(&fused[k], &composed[k]);
        assert!(e <= 1e-9, "output {k} differs by {e:e}");
    }
}

/// Layers of different sizes in one ragged op give each layer what it gets alone: the weight
/// and both gradients, in f64 and f32, for every map, with more matrices than threads so the
/// largest-first queue hands them out in a different order than they are packed.
#[test]
fn rotate_ragged_equals_each_layer_alone() {
    let shapes = [(7usize, 3usize), (12, 5), (7, 3), (4, 6), (12, 2)];
    for dtype in [DType::F64, DType::F32] {
        for map in OrthMap::ALL {
            let mut inputs = Vec::new();
            for (k, &(d, n)) in shapes.iter().enumerate() {
                let seed = 100 + 10 * k as u64;
                let p = p_for(map, seed, 1, d).squeeze(0).expect("p");
                let to = |t: Tensor| t.to_dtype(dtype).expect("dtype");
                inputs.push((
                    to(p),
                    to(gauss(seed + 1, &[d, n], DType::F64)),
                    to(gauss(seed + 2, &[d, n], DType::F64)),
                ));
            }
            let vars: Vec<(Var, Var)> = inputs
                .iter()
                .map(|(p, w0, _)| {
                    (
                        Var::from_tensor(p).expect("p"),
                        Var::from_tensor(w0).expect("w0"),
                    )
                })
                .collect();
            let ps: Vec<Tensor> = vars.iter().map(|(p, _)| p.as_tensor().clone()).collect();
            let w0s: Vec<Tensor> = vars.iter().map(|(_, w)| w.as_tensor().clone()).collect();
            let ws = rotate_ragged(&ps, &w0s, map).expect("ragged");
            let loss = ws
                .iter()
                .zip(&inputs)
                .map(|(w, (_, _, c))| (w * c).and_then(|l| l.sum_all()))
                .reduce(|a, b| a.and_then(|a| b.and_then(|b| a + b)))
                .expect("layers")
                .expect("loss");
            let grads = loss.backward().expect("backward");
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            for (k, ((p, w0, c), (pv, wv))) in inputs.iter().zip(&vars).enumerate() {
                let alone = run(
                    &p.unsqueeze(0).expect("p"),
                    &w0.unsqueeze(0).expect("w0"),
                    &c.unsqueeze(0).expect("c"),
                    map,
                    true,
                );
                let got = [
                    ws[k].clone(),
                    grads.get(pv).expect("∂P").clone(),
                    grads.get(wv).expect("∂W0").clone(),
                ];
                for (what, (g, a)) in ["W", "∂P", "∂W0"].iter().zip(got.iter().zip(&alone)) {
                    let err = rel(g, a);
                    assert!(
                        err <= tol,
                        "{} {dtype:?} layer {k}: {what} off by {err:e}",
                        map.name()
                    );
                }
            }
        }
    }
}

/// Mismatched inputs are refused with what was expected: counts, square P, W0's rows, dtypes.
#[test]
fn rotate_ragged_refuses_mismatched_inputs() {
    let p = gauss(1, &[4, 4], DType::F32);
    let w0 = gauss(2, &[4, 2], DType::F32);
    let err = |ps: &[Tensor], w0s: &[Tensor]| {
        rotate_ragged(ps, w0s, OrthMap::GramSchmidt)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let one = std::slice::from_ref;
    assert!(err(one(&p), &[]).contains("1 matrices P but 0 W0"));
    assert!(err(&[gauss(3, &[4, 3], DType::F32)], one(&w0)).contains("square"));
    assert!(err(one(&p), &[gauss(4, &[3, 2], DType::F32)]).contains("W0 must be"));
    let p64 = gauss(5, &[4, 4], DType::F64);
    let w64 = gauss(6, &[4, 2], DType::F64);
    assert!(err(&[p.clone(), p64], &[w0.clone(), w64]).contains("one dtype"));
    assert!(rotate_ragged(&[], &[], OrthMap::Cayley)
        .expect("empty")
        .is_empty());
}
