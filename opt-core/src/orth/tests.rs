//! Oracles independent of the code under test: plain f64 loops of the spec's algorithms
//! (Gram–Schmidt, Householder reflections), an eigendecomposition route for Löwdin, the Cayley
//! identity, and central finite differences for every backward.

use super::{orthogonality_error, orthogonalize, OrthMap};
use crate::Rng;
use candle_core::{DType, Device, Tensor, Var};

type M = Vec<f64>; // row-major d×d

fn gauss(seed: u64, n: usize) -> M {
    Rng::seed(seed)
        .normal_vec(n, 1.0)
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `3I + N(0,1)/3`: a well-conditioned P for the maps whose gradient scales with 1/σ_min.
fn healthy(seed: u64, d: usize) -> M {
    let mut p = gauss(seed, d * d);
    for i in 0..d {
        for j in 0..d {
            p[i * d + j] = p[i * d + j] / 3.0 + if i == j { 3.0 } else { 0.0 };
        }
    }
    p
}

fn tensor(p: &M, d: usize, dtype: DType) -> Tensor {
    Tensor::from_vec(p.clone(), (d, d), &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("tensor")
}

fn rows(t: &Tensor) -> M {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("to_vec")
}

fn orth64(p: &M, d: usize, map: OrthMap) -> M {
    rows(&orthogonalize(&tensor(p, d, DType::F64), map).expect("orthogonalize"))
}

fn matmul(a: &M, b: &M, d: usize) -> M {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

fn transpose(a: &M, d: usize) -> M {
    (0..d * d).map(|k| a[(k % d) * d + k / d]).collect()
}

fn max_diff(a: &M, b: &M) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Determinant by Gaussian elimination with partial pivoting.
fn det(a: &M, d: usize) -> f64 {
    let mut a = a.clone();
    let mut det = 1.0;
    for c in 0..d {
        let piv = (c..d)
            .max_by(|&x, &y| a[x * d + c].abs().total_cmp(&a[y * d + c].abs()))
            .expect("non-empty");
        if piv != c {
            for j in 0..d {
                a.swap(c * d + j, piv * d + j);
            }
            det = -det;
        }
        det *= a[c * d + c];
        for i in c + 1..d {
            let f = a[i * d + c] / a[c * d + c];
            for j in c..d {
                a[i * d + j] -= f * a[c * d + j];
            }
        }
    }
    det
}

#[test]
fn orth_is_orthogonal_for_all_maps_and_sizes() {
    for (k, d) in [1usize, 2, 27, 64, 576, 1024].into_iter().enumerate() {
        let p = Tensor::from_vec(
            Rng::seed(100 + k as u64).normal_vec(d * d, 1.0),
            (d, d),
            &Device::Cpu,
        )
        .expect("tensor");
        for map in OrthMap::ALL {
            let t0 = std::time::Instant::now();
            let q = orthogonalize(&p, map).expect("orthogonalize");
            let secs = t0.elapsed().as_secs_f64();
            assert_eq!(q.dtype(), DType::F32);
            assert_eq!(q.dims(), &[d, d]);
            let err = orthogonality_error(&q).expect("error");
            eprintln!(
                "orth {} d={d}: ‖QQᵀ−I‖_F = {err:.3e} (f32), {secs:.3}s",
                map.name()
            );
            assert!(err <= 1e-4, "{} d={d}: {err}", map.name());
        }
    }
}

/// At a real layer's size (d = 576, a 3×3 conv over 64 channels) every backward agrees with a
/// central difference along a random direction: ⟨∇L, E⟩ = (L(P + hE) − L(P − hE)) / 2h.
#[test]
fn orth_backward_at_layer_size_matches_a_directional_difference() {
    let d = 576;
    let w = gauss(1001, d * d);
    let e = gauss(1002, d * d);
    let h = 1e-6;
    for map in OrthMap::ALL {
        let p = match map {
            OrthMap::Cayley => gauss(1000, d * d),
            _ => healthy(1000, d),
        };
        let t0 = std::time::Instant::now();
        let g = analytic_grad(&p, &tensor(&w, d, DType::F64), d, map);
        let secs = t0.elapsed().as_secs_f64();
        let (mut plus, mut minus) = (p.clone(), p.clone());
        for t in 0..d * d {
            plus[t] += h * e[t];
            minus[t] -= h * e[t];
        }
        let fd = (loss(&plus, &w, d, map) - loss(&minus, &w, d, map)) / (2.0 * h);
        let an = dot(&g, &e);
        eprintln!(
            "fwd+bwd {} d={d}: ⟨g,E⟩ {an:.6e} vs fd {fd:.6e}, {secs:.3}s",
            map.name()
        );
        assert!(an.abs() > 1e-3, "{}: gradient vanished", map.name());
        assert!(
            (fd - an).abs() <= 1e-5 * an.abs().max(fd.abs()),
            "{} d={d}: ⟨g,E⟩ {an} vs fd {fd}",
            map.name()
        );
    }
}

#[test]
fn orth_gs_matches_classical_gram_schmidt_of_rows() {
    for (k, d) in [1usize, 2, 5, 27, 64].into_iter().enumerate() {
        let p = gauss(200 + k as u64, d * d);
        // Spec §2.3: q_i = w/‖w‖, w = p_i − Σ_{j<i} (p_i·q_j) q_j, projections of the original p_i.
        let mut q = vec![0.0; d * d];
        for i in 0..d {
            let pi = &p[i * d..(i + 1) * d];
            let mut w = pi.to_vec();
            for j in 0..i {
                let c = dot(pi, &q[j * d..(j + 1) * d]);
                for t in 0..d {
                    w[t] -= c * q[j * d + t];
                }
            }
            let n = dot(&w, &w).sqrt();
            for t in 0..d {
                q[i * d + t] = w[t] / n;
            }
        }
        let got = orth64(&p, d, OrthMap::GramSchmidt);
        let diff = max_diff(&got, &q);
        eprintln!("gs oracle d={d}: {diff:.2e}");
        assert!(diff <= 1e-8, "d={d}: max |GS − CGS| = {diff}");
    }
}

#[test]
fn orth_hr_matches_explicit_householder_reflections() {
    for (k, d) in [1usize, 2, 3, 8, 32].into_iter().enumerate() {
        let p = gauss(300 + k as u64, d * d);
        // Spec §2.4: d − 1 reflections, u = x − ‖x‖e₁ (no sign safeguard), R ← H R, Q ← Q Hᵀ,
        // each applied as a rank-1 update.
        let mut r = p.clone();
        let mut q: M = (0..d * d)
            .map(|t| if t / d == t % d { 1.0 } else { 0.0 })
            .collect();
        for c in 0..d.saturating_sub(1) {
            let x: Vec<f64> = (c..d).map(|i| r[i * d + c]).collect();
            let mut u = x.clone();
            u[0] -= dot(&x, &x).sqrt();
            let nu = dot(&u, &u).sqrt();
            let v: Vec<f64> = u.iter().map(|ui| ui / nu).collect();
            for j in 0..d {
                let s: f64 = (c..d).map(|i| v[i - c] * r[i * d + j]).sum();
                for i in c..d {
                    r[i * d + j] -= 2.0 * v[i - c] * s;
                }
            }
            for i in 0..d {
                let s: f64 = (c..d).map(|j| q[i * d + j] * v[j - c]).sum();
                for j in c..d {
                    q[i * d + j] -= 2.0 * s * v[j - c];
                }
            }
        }
        let got = orth64(&p, d, OrthMap::Householder);
        let diff = max_diff(&got, &q);
        eprintln!("hr oracle d={d}: {diff:.2e}");
        assert!(diff <= 1e-8, "d={d}: max |HR − reflections| = {diff}");
        let expected_det = if d % 2 == 1 { 1.0 } else { -1.0 };
        assert!((det(&got, d) - expected_det).abs() < 1e-9, "d={d}");
    }
}

#[test]
fn orth_ls_matches_inverse_square_root_of_gram_matrix() {
    for (k, d) in [1usize, 2, 8, 27, 64].into_iter().enumerate() {
        let p = gauss(400 + k as u64, d * d);
        // Q = P (PᵀP)^{-1/2} with (PᵀP)^{-1/2} = W Λ^{-1/2} Wᵀ from a symmetric eigensolver.
        let ptp = matmul(&transpose(&p, d), &p, d);
        let ptp = faer::Mat::from_fn(d, d, |i, j| ptp[i * d + j]);
        let evd = ptp
            .self_adjoint_eigen(faer::Side::Lower)
            .expect("self-adjoint eigen");
        let (w, lam) = (evd.U(), evd.S().column_vector());
        let mut inv_sqrt = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                inv_sqrt[i * d + j] = (0..d).map(|t| w[(i, t)] * w[(j, t)] / lam[t].sqrt()).sum();
            }
        }
        let expected = matmul(&p, &inv_sqrt, d);
        let diff = max_diff(&orth64(&p, d, OrthMap::Lowdin), &expected);
        eprintln!("ls oracle d={d}: {diff:.2e}");
        assert!(diff <= 1e-8, "d={d}: max |LS − P(PᵀP)^-½| = {diff}");
    }
}

#[test]
fn orth_cp_satisfies_cayley_identity_with_det_one() {
    for (k, d) in [1usize, 2, 9, 64].into_iter().enumerate() {
        let p = gauss(500 + k as u64, d * d);
        let s: M = (0..d * d)
            .map(|t| {
                let (i, j) = (t / d, t % d);
                if i < j {
                    p[t]
                } else if i > j {
                    -p[j * d + i]
                } else {
                    0.0
                }
            })
            .collect();
        let eye = |t: usize| if t / d == t % d { 1.0 } else { 0.0 };
        let i_minus_s: M = (0..d * d).map(|t| eye(t) - s[t]).collect();
        let i_plus_s: M = (0..d * d).map(|t| eye(t) + s[t]).collect();
        let q = orth64(&p, d, OrthMap::Cayley);
        let diff = max_diff(&matmul(&q, &i_minus_s, d), &i_plus_s);
        eprintln!("cp oracle d={d}: {diff:.2e}");
        assert!(diff <= 1e-9, "d={d}: max |Q(I−S) − (I+S)| = {diff}");
        let qqt = matmul(&q, &transpose(&q, d), d);
        let ortho = (0..d * d)
            .map(|t| (qqt[t] - eye(t)).abs())
            .fold(0.0, f64::max);
        assert!(ortho <= 1e-12, "d={d}: {ortho}");
        assert!((det(&q, d) - 1.0).abs() < 1e-9, "d={d}: det {}", det(&q, d));
    }
}

#[test]
fn orth_d1_follows_the_definitions() {
    let p = vec![-2.0];
    assert_eq!(orth64(&p, 1, OrthMap::Cayley), vec![1.0]);
    assert_eq!(orth64(&p, 1, OrthMap::GramSchmidt), vec![-1.0]);
    assert_eq!(orth64(&p, 1, OrthMap::Householder), vec![1.0]); // no reflection at all
    assert_eq!(orth64(&p, 1, OrthMap::Lowdin), vec![-1.0]);
}

/// Analytic ∂L/∂P through `Var` for L = Σ W ⊙ Q.
fn analytic_grad(p: &M, w: &Tensor, d: usize, map: OrthMap) -> M {
    let var = Var::from_tensor(&tensor(p, d, DType::F64)).expect("var");
    let q = orthogonalize(var.as_tensor(), map).expect("orthogonalize");
    let loss = (q * w).and_then(|x| x.sum_all()).expect("loss");
    let grads = loss.backward().expect("backward");
    rows(grads.get(&var).expect("gradient of P"))
}

fn loss(p: &M, w: &M, d: usize, map: OrthMap) -> f64 {
    dot(&orth64(p, d, map), w)
}

fn check_gradient(map: OrthMap) {
    for (k, d) in [1usize, 3, 8].into_iter().enumerate() {
        let seed = 600 + 10 * k as u64;
        let p = match map {
            OrthMap::Cayley => gauss(seed, d * d),
            _ => healthy(seed, d),
        };
        let w = gauss(seed + 1, d * d);
        let g = analytic_grad(&p, &tensor(&w, d, DType::F64), d, map);
        let h = 1e-6;
        let fd: M = (0..d * d)
            .map(|t| {
                let (mut plus, mut minus) = (p.clone(), p.clone());
                plus[t] += h;
                minus[t] -= h;
                (loss(&plus, &w, d, map) - loss(&minus, &w, d, map)) / (2.0 * h)
            })
            .collect();
        let err: f64 = g
            .iter()
            .zip(&fd)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = dot(&g, &g).sqrt();
        eprintln!(
            "grad {} d={d}: ‖g‖ = {norm:.3e}, ‖g − fd‖ = {err:.3e}",
            map.name()
        );
        // d = 1 Cayley/Householder are constant maps: the gradient must be exactly zero.
        assert!(
            err <= 1e-6 * norm + 1e-9,
            "{} d={d}: {err} vs ‖g‖ {norm}",
            map.name()
        );
        if d > 1 {
            assert!(norm > 1e-3, "{} d={d}: gradient vanished", map.name());
        }
        // Directional check too, as a training step sees it.
        let e = gauss(seed + 2, d * d);
        let (mut plus, mut minus) = (p.clone(), p.clone());
        for t in 0..d * d {
            plus[t] += h * e[t];
            minus[t] -= h * e[t];
        }
        let fd_dir = (loss(&plus, &w, d, map) - loss(&minus, &w, d, map)) / (2.0 * h);
        let an_dir = dot(&g, &e);
        assert!(
            (fd_dir - an_dir).abs() <= 1e-6 * an_dir.abs().max(fd_dir.abs()) + 1e-9,
            "{} d={d}: ⟨g,E⟩ {an_dir} vs fd {fd_dir}",
            map.name()
        );
    }
}

#[test]
fn orth_cp_gradient_matches_finite_differences() {
    check_gradient(OrthMap::Cayley);
}

#[test]
fn orth_gs_gradient_matches_finite_differences() {
    check_gradient(OrthMap::GramSchmidt);
}

#[test]
fn orth_hr_gradient_matches_finite_differences() {
    check_gradient(OrthMap::Householder);
}

#[test]
fn orth_ls_gradient_matches_finite_differences() {
    check_gradient(OrthMap::Lowdin);
}

#[test]
fn orth_cp_gradient_ignores_diagonal_and_lower_triangle() {
    let d = 5;
    let p = gauss(700, d * d);
    let g = analytic_grad(
        &p,
        &tensor(&gauss(701, d * d), d, DType::F64),
        d,
        OrthMap::Cayley,
    );
    for i in 0..d {
        for j in 0..=i {
            assert_eq!(g[i * d + j], 0.0, "({i},{j})");
        }
    }
}

#[test]
fn orth_f32_in_f32_out_and_gradient_flows_through_var() {
    let d = 6;
    let p = healthy(800, d);
    let w = gauss(801, d * d);
    for map in OrthMap::ALL {
        let var = Var::from_tensor(&tensor(&p, d, DType::F32)).expect("var");
        let q = orthogonalize(var.as_tensor(), map).expect("orthogonalize");
        assert_eq!(q.dtype(), DType::F32);
        let loss = (&q * tensor(&w, d, DType::F32))
            .and_then(|x| x.sum_all())
            .expect("loss");
        let grads = loss.backward().expect("backward");
        let g = grads.get(&var).expect("gradient of P");
        assert_eq!(g.dtype(), DType::F32);
        assert_eq!(g.dims(), &[d, d]);
        // Same math as the f64 path, up to f32 rounding of P, W and the result.
        let g64 = analytic_grad(&p, &tensor(&w, d, DType::F64), d, map);
        let diff = max_diff(&rows(g), &g64);
        assert!(diff <= 1e-4, "{}: f32 vs f64 gradient {diff}", map.name());
        let q64 = orth64(&p, d, map);
        assert!(max_diff(&rows(&q), &q64) <= 1e-6, "{}", map.name());
    }
}

#[test]
fn orth_reads_strided_input() {
    let d = 7;
    let p = gauss(900, d * d);
    // A transposed view (non-contiguous) must give the map of the transposed matrix.
    let view = tensor(&p, d, DType::F64).t().expect("t");
    assert!(!view.is_contiguous());
    for map in OrthMap::ALL {
        let got = rows(&orthogonalize(&view, map).expect("orthogonalize"));
        let expected = orth64(&transpose(&p, d), d, map);
        assert_eq!(got, expected, "{}", map.name());
    }
}

#[test]
fn orth_reports_invalid_input() {
    let dev = Device::Cpu;
    let rect = Tensor::zeros((2, 3), DType::F32, &dev).expect("zeros");
    let ints = Tensor::zeros((2, 2), DType::U32, &dev).expect("zeros");
    let nan = Tensor::new(&[[1.0f32, f32::NAN], [0.0, 1.0]], &dev).expect("nan");
    // A zero row (GS) / zero column (HR): the maps divide by a zero norm.
    let zero_row = Tensor::new(&[[1.0f32, 2.0], [0.0, 0.0]], &dev).expect("zero row");
    for map in OrthMap::ALL {
        assert!(orthogonalize(&rect, map).is_err(), "{}", map.name());
        assert!(orthogonalize(&ints, map).is_err(), "{}", map.name());
        let e = orthogonalize(&nan, map).expect_err("NaN").to_string();
        assert!(e.contains("not finite"), "{}: {e}", map.name());
    }
    let e = orthogonalize(&zero_row, OrthMap::GramSchmidt)
        .expect_err("singular")
        .to_string();
    assert!(e.contains("singular"), "{e}");
    let e = orthogonalize(&zero_row.t().expect("t"), OrthMap::Householder)
        .expect_err("singular")
        .to_string();
    assert!(e.contains("singular"), "{e}");
}

/// The device-generic Newton–Schulz routes against the exact (faer, f64) Löwdin and Cayley
/// maps: values and gradients at the layer sizes OPT meets, from OPT's Gaussian init in f32.
#[test]
fn newton_schulz_routes_match_the_exact_maps() {
    use super::{cayley_newton_schulz, polar_newton_schulz, NEWTON_SCHULZ_MAX_ITERS as N};
    type Route = fn(&Tensor, usize) -> candle_core::Result<Tensor>;
    let routes: [(OrthMap, Route); 2] = [
        (OrthMap::Lowdin, polar_newton_schulz),
        (OrthMap::Cayley, cayley_newton_schulz),
    ];
    for (map, route) in routes {
        for (d, check_grad) in [(27, true), (576, true), (1024, false)] {
            let p = Var::from_tensor(&tensor(&gauss(d as u64, d * d), d, DType::F32)).expect("var");
            let w = tensor(&gauss(7 + d as u64, d * d), d, DType::F32);
            let ns = route(p.as_tensor(), N).expect("route");
            let exact = orthogonalize(p.as_tensor(), map).expect("exact");
            let diff = max_diff(&rows(&ns), &rows(&exact));
            assert!(
                diff < 2e-5,
                "{} d = {d}: values differ by {diff:.2e}",
                map.name()
            );
            let err = orthogonality_error(&ns).expect("error");
            assert!(
                err <= 1e-4,
                "{} d = {d}: ‖QQᵀ − I‖_F = {err:.2e} in f32",
                map.name()
            );
            if check_grad {
                let grad = |q: Tensor| {
                    let g = (q * &w)
                        .and_then(|t| t.sum_all())
                        .and_then(|l| l.backward());
                    rows(g.expect("backward").get(&p).expect("grad"))
                };
                let (a, b) = (grad(ns), grad(exact));
                let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
                let rel = max_diff(&a, &b) / scale;
                assert!(
                    rel < 1e-4,
                    "{} d = {d}: gradients differ by {rel:.2e}",
                    map.name()
                );
            }
        }
    }
    // A singular P is an error for the polar route, not a wrong rotation.
    let singular = tensor(&vec![1.0; 9], 3, DType::F64);
    assert!(polar_newton_schulz(&singular, N).is_err());
}

/// Loss `Σ_k ⟨Q_k, W_k⟩` of the given rotations and its gradient w.r.t. each `P_k`.
fn batch_grads(qs: &[Tensor], ws: &[Tensor], ps: &[Var]) -> Vec<M> {
    let mut loss = Tensor::zeros((), qs[0].dtype(), &Device::Cpu).expect("zero");
    for (q, w) in qs.iter().zip(ws) {
        loss = (loss + (q * w).and_then(|t| t.sum_all()).expect("term")).expect("sum");
    }
    let g = loss.backward().expect("backward");
    ps.iter().map(|p| rows(g.get(p).expect("grad"))).collect()
}

/// The batched op computes each matrix as a lone layer does: equal values (bit for bit where
/// both use faer's sequential kernels, d < 128) and gradients, each `Q_k` from its own `P_k`.
#[test]
fn batched_maps_match_the_lone_maps_in_values_and_gradients() {
    use super::orthogonalize_each;
    for map in OrthMap::ALL {
        for (d, b) in [(27, 3), (576, 5), (1024, 2)] {
            let ps: Vec<Var> = (0..b)
                .map(|k| {
                    let seed = (100 * d + k) as u64;
                    Var::from_tensor(&tensor(&gauss(seed, d * d), d, DType::F64)).expect("var")
                })
                .collect();
            let ws: Vec<Tensor> = (0..b)
                .map(|k| tensor(&gauss((7 + 100 * d + k) as u64, d * d), d, DType::F64))
                .collect();
            let pt: Vec<Tensor> = ps.iter().map(|p| p.as_tensor().clone()).collect();
            let batched = orthogonalize_each(&pt, map).expect("batched");
            let lone: Vec<Tensor> = pt
                .iter()
                .map(|p| orthogonalize(p, map).expect("lone"))
                .collect();
            let (gb, gl) = (
                batch_grads(&batched, &ws, &ps),
                batch_grads(&lone, &ws, &ps),
            );
            for k in 0..b {
                let (qb, ql) = (rows(&batched[k]), rows(&lone[k]));
                let diff = max_diff(&qb, &ql);
                let what = format!("{} d = {d} k = {k}", map.name());
                if d < 128 {
                    assert_eq!(qb, ql, "{what}");
                    assert_eq!(gb[k], gl[k], "{what}");
                }
                assert!(diff < 1e-12, "{what}: values differ by {diff:.2e}");
                let err = orthogonality_error(&batched[k]).expect("error");
                assert!(err < 1e-11, "{what}: ‖QQᵀ − I‖_F = {err:.2e}");
                let scale = gl[k].iter().fold(0f64, |m, v| m.max(v.abs()));
                let rel = max_diff(&gb[k], &gl[k]) / scale;
                assert!(rel < 1e-10, "{what}: gradients differ by {rel:.2e}");
            }
        }
    }
}

/// The batched Newton–Schulz routes (the GPU's LS/CP) against the exact maps, matrix by
/// matrix, with matrices of very different scales in one batch (each is normalised on its own).
#[test]
fn batched_newton_schulz_routes_match_the_exact_maps() {
    use super::NEWTON_SCHULZ_MAX_ITERS as N;
    use super::{cayley_newton_schulz_batched, polar_newton_schulz_batched};
    type Route = fn(&Tensor, usize) -> candle_core::Result<Tensor>;
    let routes: [(OrthMap, Route); 2] = [
        (OrthMap::Lowdin, polar_newton_schulz_batched),
        (OrthMap::Cayley, cayley_newton_schulz_batched),
    ];
    for (map, route) in routes {
        for (d, check_grad) in [(27, true), (576, true), (1024, false)] {
            let mats: Vec<Tensor> = [(1.0, 0u64), (30.0, 1)]
                .iter()
                .map(|&(s, k)| {
                    let p: M = gauss(3 * d as u64 + k, d * d)
                        .iter()
                        .map(|v| v * s)
                        .collect();
                    tensor(&p, d, DType::F32)
                })
                .collect();
            let stack = Var::from_tensor(&Tensor::stack(&mats, 0).expect("stack")).expect("var");
            let ns = route(stack.as_tensor(), N).expect("route");
            let exact = super::orthogonalize_batched(stack.as_tensor(), map).expect("exact");
            for k in 0..mats.len() {
                let (a, e) = (ns.get(k).expect("k"), exact.get(k).expect("k"));
                let diff = max_diff(&rows(&a), &rows(&e));
                let what = format!("{} d = {d} k = {k}", map.name());
                assert!(diff < 2e-5, "{what}: values differ by {diff:.2e}");
                let err = orthogonality_error(&a).expect("error");
                assert!(err <= 1e-4, "{what}: ‖QQᵀ − I‖_F = {err:.2e} in f32");
            }
            if check_grad {
                let w = Tensor::stack(
                    &[
                        tensor(&gauss(11, d * d), d, DType::F32),
                        tensor(&gauss(12, d * d), d, DType::F32),
                    ],
                    0,
                )
                .expect("w");
                let grad = |q: &Tensor| {
                    let g = (q * &w)
                        .and_then(|t| t.sum_all())
                        .and_then(|l| l.backward());
                    rows(g.expect("backward").get(&stack).expect("grad"))
                };
                let (a, b) = (grad(&ns), grad(&exact));
                let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
                let rel = max_diff(&a, &b) / scale;
                assert!(
                    rel < 1e-4,
                    "{} d = {d}: gradients differ by {rel:.2e}",
                    map.name()
                );
            }
        }
    }
}

type DeviceRoute = fn(&Tensor) -> candle_core::Result<Tensor>;

/// The GS and HR device routes (Cholesky-QR2; their small ops run here with the kernels'
/// algorithms) against the exact maps: values, gradients and orthogonality at OPT's layer
/// sizes, from OPT's Gaussian init in f32, each matrix of a batch on its own. For HR, every
/// batch holds matrices of both determinant signs (row 0 of matrix k negated for odd k), so
/// both sides of the last column's sign rule are checked.
#[test]
fn cholesky_qr_routes_match_the_exact_maps() {
    use super::{gram_schmidt_cholesky_qr, householder_cholesky_qr, orthogonalize_batched};
    let routes: [(OrthMap, DeviceRoute); 2] = [
        (OrthMap::GramSchmidt, gram_schmidt_cholesky_qr),
        (OrthMap::Householder, householder_cholesky_qr),
    ];
    for (map, route) in routes {
        for (d, b) in [(27, 3), (576, 2), (1024, 1)] {
            let mats: Vec<Tensor> = (0..b)
                .map(|k| {
                    let mut p = gauss((50 * d + k) as u64, d * d);
                    if k % 2 == 1 {
                        p[..d].iter_mut().for_each(|v| *v = -*v);
                    }
                    tensor(&p, d, DType::F32)
                })
                .collect();
            let stack = Var::from_tensor(&Tensor::stack(&mats, 0).expect("stack")).expect("var");
            let ws: Vec<Tensor> = (0..b)
                .map(|k| tensor(&gauss((60 * d + k) as u64, d * d), d, DType::F32))
                .collect();
            let w = Tensor::stack(&ws, 0).expect("w");
            let got = route(stack.as_tensor()).expect("route");
            let exact = orthogonalize_batched(stack.as_tensor(), map).expect("exact");
            for k in 0..b {
                let (a, e) = (got.get(k).expect("k"), exact.get(k).expect("k"));
                let diff = max_diff(&rows(&a), &rows(&e));
                let what = format!("{} d = {d} k = {k}", map.name());
                assert!(diff < 1e-6, "{what}: values differ by {diff:.2e}");
                let err = orthogonality_error(&a).expect("error");
                assert!(err <= 1e-4, "{what}: ‖QQᵀ − I‖_F = {err:.2e} in f32");
            }
            let grad = |q: &Tensor| {
                let g = (q * &w)
                    .and_then(|t| t.sum_all())
                    .and_then(|l| l.backward());
                rows(g.expect("backward").get(&stack).expect("grad"))
            };
            let (a, e) = (grad(&got), grad(&exact));
            let scale = e.iter().fold(0f64, |m, v| m.max(v.abs()));
            let rel = max_diff(&a, &e) / scale;
            assert!(
                rel < 1e-5,
                "{} d = {d}: gradients differ by {rel:.2e}",
                map.name()
            );
        }
        // In f64 the route agrees with the exact map to rounding.
        let d = 64;
        let p = tensor(&gauss(5, d * d), d, DType::F64)
            .unsqueeze(0)
            .expect("p");
        let got = route(&p).expect("route");
        let exact = orthogonalize_batched(&p, map).expect("exact");
        let diff = max_diff(
            &rows(&got.get(0).expect("0")),
            &rows(&exact.get(0).expect("0")),
        );
        assert!(
            diff < 1e-12,
            "{} f64: values differ by {diff:.2e}",
            map.name()
        );
    }
}

/// What the device routes cannot do well they refuse (the caller then takes the exact route):
/// a singular P, a P too ill-conditioned for Cholesky-QR2, a non-finite P.
#[test]
fn cholesky_qr_routes_refuse_what_they_cannot_orthogonalise() {
    use super::{gram_schmidt_cholesky_qr, householder_cholesky_qr};
    let d = 8;
    let mut near = gauss(9, d * d);
    for i in 0..d {
        // Row 1 ≈ row 0 and column 1 ≈ column 0: cond(P) ≈ 1e13 either way round.
        near[d + i] = near[i] + 1e-13 * near[d + i];
    }
    for i in 0..d {
        near[i * d + 1] = near[i * d] + 1e-13 * near[i * d + 1];
    }
    let mut singular = gauss(10, d * d);
    singular[..d].fill(0.0);
    let mut nan = gauss(11, d * d);
    nan[3] = f64::NAN;
    let routes: [DeviceRoute; 2] = [gram_schmidt_cholesky_qr, householder_cholesky_qr];
    for route in routes {
        for (what, p) in [
            ("near-singular", &near),
            ("singular", &singular),
            ("NaN", &nan),
        ] {
            let t = tensor(p, d, DType::F64).unsqueeze(0).expect("p");
            assert!(route(&t).is_err(), "{what}");
        }
    }
}
