//! The fused rotation `W = orth(P)·W0` of an OPT layer (`W0` is `d×n`, `n` neurons, `n ≪ d`),
//! computed from the map's factorisation without ever forming the `d×d` rotation, forward or
//! backward. The composed formulation — [`orthogonalize_batched`](super::orthogonalize_batched)
//! followed by a matmul — is its reference (tests here, the ops self-check).
//!
//! Same maps, same f64 factorisations, far fewer flops (per layer, `d³` units; the
//! composed route pays the factorisation, forming `Q`, and a closed-form backward in `d×d`
//! products):
//! * Cayley: `W = (I + S)(I − S)⁻¹ W0` is one LU of `I − S` (⅔d³) and solves with `n` columns;
//!   its backward `∂S = (I + Q)ᵀ G Xᵀ` (`X = (I − S)⁻¹W0`) is rank `n`, so it costs `O(d²n)`.
//! * Gram–Schmidt / Householder: one Householder QR (4⁄3 d³) applied to `W0`; the QR backward
//!   `(G_Q + Q·copyltu(M)) R⁻ᵀ` becomes `Q · tril(M − Mᵀ, −1) · R⁻ᵀ` because `Q` is square
//!   and orthogonal (`G_Q = −Q Mᵀ`), and `M = −G_Qᵀ Q` is a product of `d×n` factors: one
//!   triangular solve and one application of `Q` (≈ 3d³).
//! * Löwdin: the SVD `P = UΣVᵀ` gives `W = U (Vᵀ W0)`; in the backward `M = Uᵀ G_Q V =
//!   (UᵀG)(VᵀW0)ᵀ` is rank `n` and only `U K Vᵀ` is `d×d`.
//!
//! The result is the exact map's, computed in f64 and rounded once (the composed route rounds
//! `Q` to the input's dtype before its matmul), so it is at least as close to the f64 oracle.

use super::batch::per_matrix;
use super::dense::{self, HouseholderQr, Lu};
use super::OrthMap;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use faer::{Mat, MatRef, Par};
use std::sync::Mutex;

/// `W_k = orth(P_k)·W0_k` for a `[b, d, d]` stack of `P` and a `[b, d, n]` stack of `W0` (same
/// float dtype and device), differentiable w.r.t. both, by the exact f64 factorisations.
pub fn rotate_batched(ps: &Tensor, w0s: &Tensor, map: OrthMap) -> Result<Tensor> {
    check_pair(ps, w0s, map)?;
    ps.apply_op2(w0s, RotateOp::new(map))
}

/// An error unless `ps` is `[b, d, d]` and `w0s` `[b, d, n]` of one float dtype.
pub fn check_pair(ps: &Tensor, w0s: &Tensor, map: OrthMap) -> Result<()> {
    super::check_stack(ps, map)?;
    let (b, d, _) = ps.dims3()?;
    let (bw, dw, _) = w0s.dims3()?;
    if (bw, dw) != (b, d) || w0s.dtype() != ps.dtype() {
        bail!(
            "rotate ({}): W0 must be [{b}, {d}, n] of {:?}, got {:?} of {:?}",
            map.name(),
            ps.dtype(),
            w0s.dims(),
            w0s.dtype()
        );
    }
    Ok(())
}

/// One matrix's factorisation, kept from the forward for the backward.
enum Factors {
    /// LU of `A = I − S`, `S` itself, and `X = A⁻¹ W0`.
    Cayley { a: Lu, s: Mat<f64>, x: Mat<f64> },
    /// QR of `Pᵀ` (Gram–Schmidt, `W = Q̃ᵀ W0`) or of `P` (Householder, `W = Q̃ W0`), where
    /// `Q̃ = Q·diag(signs)` and `R̃ = diag(signs)·R` carry the map's sign convention.
    Qr {
        /// `A` itself: the backward applies `Q̃ = A R̃⁻¹` as a gemm with `A`.
        a: Mat<f64>,
        qr: HouseholderQr,
        signs: Vec<f64>,
        r: Mat<f64>,
        /// Gram–Schmidt (the rows of `P`) rather than Householder (its columns).
        rows: bool,
    },
    /// `P = U Σ Vᵀ` and `Vᵀ W0`.
    Lowdin {
        u: Mat<f64>,
        s: Vec<f64>,
        v: Mat<f64>,
        vt_w0: Mat<f64>,
    },
}

/// `S = triu(P, 1) − triu(P, 1)ᵀ`.
fn skew(p: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(p.nrows(), p.ncols(), |i, j| super::cayley::skew(p, i, j))
}

/// Multiplies row `i` of `m` by `signs[i]`.
fn scale_rows(m: &mut Mat<f64>, signs: &[f64]) {
    for j in 0..m.ncols() {
        for (i, &s) in signs.iter().enumerate() {
            m[(i, j)] *= s;
        }
    }
}

/// `(signs, R̃)` making the QR's diagonal positive; fails on a zero or non-finite pivot.
fn positive_signs(qr: &HouseholderQr, what: &str) -> Result<(Vec<f64>, Mat<f64>)> {
    let mut r = qr.r();
    let mut signs = Vec::with_capacity(qr.dim());
    for k in 0..qr.dim() {
        let rkk = r[(k, k)];
        if rkk == 0.0 || !rkk.is_finite() {
            bail!("{what} is singular (R[{k},{k}] = {rkk})");
        }
        signs.push(if rkk < 0.0 { -1.0 } else { 1.0 });
    }
    scale_rows(&mut r, &signs);
    Ok((signs, r))
}

impl Factors {
    /// The factorisation of `p` and `W = orth(P)·W0`.
    fn forward(
        map: OrthMap,
        p: MatRef<'_, f64>,
        w0: MatRef<'_, f64>,
        par: Par,
    ) -> Result<(Self, Mat<f64>)> {
        dense::check_finite(p, &format!("rotate ({})", map.name()))?;
        match map {
            OrthMap::Cayley => Self::cayley(p, w0, par),
            OrthMap::GramSchmidt => Self::qr(p.transpose().to_owned(), w0, true, par),
            OrthMap::Householder => Self::qr(p.to_owned(), w0, false, par),
            OrthMap::Lowdin => Self::lowdin(p, w0, par),
        }
    }

    fn cayley(p: MatRef<'_, f64>, w0: MatRef<'_, f64>, par: Par) -> Result<(Self, Mat<f64>)> {
        let d = p.nrows();
        let s = skew(p);
        let a = Lu::factor(
            Mat::from_fn(d, d, |i, j| if i == j { 1.0 } else { -s[(i, j)] }),
            "Cayley: I − S",
            par,
        )?;
        let mut x = w0.to_owned();
        a.solve_in_place(x.as_mut(), par);
        let mut w = x.clone();
        dense::mul_add(w.as_mut(), s.as_ref(), x.as_ref(), 1.0, par);
        Ok((Self::Cayley { a, s, x }, w))
    }

    /// `a` is `Pᵀ` for Gram–Schmidt (`rows`), `P` for Householder.
    fn qr(a: Mat<f64>, w0: MatRef<'_, f64>, rows: bool, par: Par) -> Result<(Self, Mat<f64>)> {
        let what = if rows {
            "Gram–Schmidt: P"
        } else {
            "Householder: P"
        };
        let d = a.nrows();
        let qr = HouseholderQr::factor(a.clone(), what, par)?;
        let (mut signs, mut r) = positive_signs(&qr, what)?;
        if !rows {
            // The official d − 1 reflections give det Q̃ = (−1)^(d−1); the positive QR has
            // det = det Q · Π signs. Where they differ, the last column (and R's last row) flips.
            let positive_det = qr.det_q_sign() * signs.iter().product::<f64>();
            let target = if d % 2 == 1 { 1.0 } else { -1.0 };
            if positive_det != target {
                signs[d - 1] = -signs[d - 1];
                for j in 0..d {
                    r[(d - 1, j)] = -r[(d - 1, j)];
                }
            }
        }
        let mut w = w0.to_owned();
        if rows {
            // W = (Q·diag(signs))ᵀ W0 = diag(signs) Qᵀ W0.
            qr.apply_qt(w.as_mut(), par);
            scale_rows(&mut w, &signs);
        } else {
            scale_rows(&mut w, &signs);
            qr.apply_q(w.as_mut(), par);
        }
        Ok((
            Self::Qr {
                a,
                qr,
                signs,
                r,
                rows,
            },
            w,
        ))
    }

    fn lowdin(p: MatRef<'_, f64>, w0: MatRef<'_, f64>, par: Par) -> Result<(Self, Mat<f64>)> {
        let (u, s, v) = polar_factors(p, par)?;
        let vt_w0 = dense::mul(v.transpose(), w0, 1.0, par);
        let w = dense::mul(u.as_ref(), vt_w0.as_ref(), 1.0, par);
        Ok((Self::Lowdin { u, s, v, vt_w0 }, w))
    }

    /// `(∂L/∂P, ∂L/∂W0)` from `G = ∂L/∂W`; `w` is the forward's output.
    fn backward(
        &self,
        w0: MatRef<'_, f64>,
        w: MatRef<'_, f64>,
        g: MatRef<'_, f64>,
        par: Par,
    ) -> Result<(Mat<f64>, Mat<f64>)> {
        match self {
            Self::Cayley { a, s, x } => Ok(cayley_backward(a, s, x, g, par)),
            Self::Qr {
                a,
                qr,
                signs,
                r,
                rows,
            } => Ok(qr_backward(a, qr, signs, r, *rows, w0, w, g, par)),
            Self::Lowdin { u, s, v, vt_w0 } => lowdin_backward(u, s, v, vt_w0, g, par),
        }
    }
}

/// Below this `σ_min/σ_max` the Gram route's squared condition number would cost accuracy in
/// f64 (`eps·cond²` > 1e-6), and the SVD of `P` itself is taken.
const GRAM_MIN_RATIO: f64 = 1e-5;

/// `P = U Σ Vᵀ`: from the eigendecomposition of `PᵀP = V Σ² Vᵀ` and `U = P V Σ⁻¹` (a gemm,
/// an EVD and a gemm: a third of the SVD's time at d = 1024), or by the SVD where `P` is too
/// ill-conditioned for the Gram matrix.
fn polar_factors(p: MatRef<'_, f64>, par: Par) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let gram = dense::mul(p.transpose(), p, 1.0, par);
    let (lambda, v) = dense::evd_symmetric(gram.as_ref(), "Löwdin: PᵀP", par)?;
    let max = lambda.iter().copied().fold(0.0, f64::max);
    let min = lambda.iter().copied().fold(f64::INFINITY, f64::min);
    if !(min > 0.0 && min >= GRAM_MIN_RATIO * GRAM_MIN_RATIO * max) {
        return dense::svd_square(p, "Löwdin: P", par);
    }
    let s: Vec<f64> = lambda.iter().map(|l| l.sqrt()).collect();
    let mut u = dense::mul(p, v.as_ref(), 1.0, par);
    for (j, sj) in s.iter().enumerate() {
        for i in 0..u.nrows() {
            u[(i, j)] /= sj;
        }
    }
    Ok((u, s, v))
}

/// Cayley: `Qᵀ G = (I + S)⁻¹(I − S) G = A⁻ᵀ A G`, `∂S = (G + QᵀG) Xᵀ`, `∂P = striu(∂S − ∂Sᵀ)`,
/// `∂W0 = Qᵀ G`.
fn cayley_backward(
    a: &Lu,
    s: &Mat<f64>,
    x: &Mat<f64>,
    g: MatRef<'_, f64>,
    par: Par,
) -> (Mat<f64>, Mat<f64>) {
    let d = g.nrows();
    let mut qt_g = g.to_owned();
    dense::mul_add(qt_g.as_mut(), s.as_ref(), g, -1.0, par);
    a.solve_transpose_in_place(qt_g.as_mut(), par);
    let y = Mat::from_fn(d, g.ncols(), |i, j| qt_g[(i, j)] + g[(i, j)]);
    let ds = dense::mul(y.as_ref(), x.transpose(), 1.0, par);
    let dp = Mat::from_fn(
        d,
        d,
        |i, j| if i < j { ds[(i, j)] - ds[(j, i)] } else { 0.0 },
    );
    (dp, qt_g)
}

/// QR maps, for `A = Q̃ R̃` (`A = Pᵀ` or `P`): `∂A = Q̃ · tril(M − Mᵀ, −1) · R̃⁻ᵀ` with
/// `M = −G_Qᵀ Q̃`, where `G_Q = W0 Gᵀ` (Gram–Schmidt, `W = Q̃ᵀ W0`; then `M = −G Wᵀ`) or
/// `G_Q = G W0ᵀ` (Householder, `W = Q̃ W0`; then `M = −W0 (Q̃ᵀG)ᵀ`).
#[allow(clippy::too_many_arguments)]
fn qr_backward(
    a: &Mat<f64>,
    qr: &HouseholderQr,
    signs: &[f64],
    r: &Mat<f64>,
    rows: bool,
    w0: MatRef<'_, f64>,
    w: MatRef<'_, f64>,
    g: MatRef<'_, f64>,
    par: Par,
) -> (Mat<f64>, Mat<f64>) {
    let d = qr.dim();
    // `apply(m)`: m ← Q̃ m;  `apply_t(m)`: m ← Q̃ᵀ m.
    let apply = |m: &mut Mat<f64>| {
        scale_rows(m, signs);
        qr.apply_q(m.as_mut(), par);
    };
    let apply_t = |m: &mut Mat<f64>| {
        qr.apply_qt(m.as_mut(), par);
        scale_rows(m, signs);
    };
    // N with M − Mᵀ = N − Nᵀ, and ∂W0.
    let (n, dw0) = if rows {
        let mut dw0 = g.to_owned();
        apply(&mut dw0);
        (dense::mul(w, g.transpose(), 1.0, par), dw0)
    } else {
        let mut qt_g = g.to_owned();
        apply_t(&mut qt_g);
        (dense::mul(qt_g.as_ref(), w0.transpose(), 1.0, par), qt_g)
    };
    // X = T R̃⁻ᵀ with T = tril(N − Nᵀ, −1), as Xᵀ = R̃⁻¹ Tᵀ (strictly upper, so is Xᵀ).
    let mut xt = Mat::from_fn(d, d, |i, j| if i < j { n[(j, i)] - n[(i, j)] } else { 0.0 });
    dense::solve_upper_strict_rhs_in_place(r.as_ref(), xt.as_mut(), par);
    // ∂A = Q̃ X = A (R̃⁻¹ X): a solve and a gemm, where applying Q̃'s reflectors to a d×d matrix
    // runs at a fraction of gemm's rate. (In f64 the product with A loses only eps·cond(A).)
    let mut y = xt.transpose().to_owned();
    dense::solve_upper_in_place(r.as_ref(), y.as_mut(), par);
    let dp = if rows {
        // A = Pᵀ: ∂P = ∂Aᵀ = Yᵀ Aᵀ.
        dense::mul(y.transpose(), a.transpose(), 1.0, par)
    } else {
        dense::mul(a.as_ref(), y.as_ref(), 1.0, par)
    };
    (dp, dw0)
}

/// Löwdin: `M = (UᵀG)(VᵀW0)ᵀ`, `∂P = U [(M − Mᵀ) ⊘ (σ_i + σ_j)] Vᵀ`, `∂W0 = V UᵀG`.
fn lowdin_backward(
    u: &Mat<f64>,
    s: &[f64],
    v: &Mat<f64>,
    vt_w0: &Mat<f64>,
    g: MatRef<'_, f64>,
    par: Par,
) -> Result<(Mat<f64>, Mat<f64>)> {
    let d = g.nrows();
    let ut_g = dense::mul(u.transpose(), g, 1.0, par);
    let m = dense::mul(ut_g.as_ref(), vt_w0.transpose(), 1.0, par);
    let mut k = Mat::zeros(d, d);
    for j in 0..d {
        for i in 0..d {
            if i == j {
                continue; // (M − Mᵀ) vanishes on the diagonal, even where σ_i = 0.
            }
            let sum = s[i] + s[j];
            if sum <= 0.0 {
                bail!(
                    "Löwdin backward: P has rank < d − 1, the polar factor is not differentiable"
                );
            }
            k[(i, j)] = (m[(i, j)] - m[(j, i)]) / sum;
        }
    }
    let uk = dense::mul(u.as_ref(), k.as_ref(), 1.0, par);
    let dp = dense::mul(uk.as_ref(), v.transpose(), 1.0, par);
    let dw0 = dense::mul(v.as_ref(), ut_g.as_ref(), 1.0, par);
    Ok((dp, dw0))
}

struct RotateOp {
    map: OrthMap,
    /// Each matrix's factorisation and output `W` (f64), kept from the forward for the backward.
    saved: Mutex<Vec<(Factors, Mat<f64>)>>,
}

impl RotateOp {
    fn new(map: OrthMap) -> Self {
        Self {
            map,
            saved: Mutex::new(Vec::new()),
        }
    }

    fn lock_err(&self) -> candle_core::Error {
        candle_core::Error::msg(format!(
            "rotate ({}): factor cache poisoned by an earlier panic",
            self.map.name()
        ))
    }

    fn compute(&self, ps: &[Mat<f64>], w0s: &[Mat<f64>]) -> Result<Vec<(Factors, Mat<f64>)>> {
        let d = ps.first().map_or(0, |p| p.nrows());
        per_matrix(ps.len(), d, |k, par| {
            Factors::forward(self.map, ps[k].as_ref(), w0s[k].as_ref(), par)
        })
    }
}

impl CustomOp2 for RotateOp {
    fn name(&self) -> &'static str {
        match self.map {
            OrthMap::Cayley => "rotate-cayley",
            OrthMap::GramSchmidt => "rotate-gram-schmidt",
            OrthMap::Householder => "rotate-householder",
            OrthMap::Lowdin => "rotate-lowdin",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ps = dense::mats_from_storage(s1, l1)?;
        let w0s = dense::mats_from_storage(s2, l2)?;
        let dtype = match s1 {
            CpuStorage::F64(_) => DType::F64,
            _ => DType::F32,
        };
        let saved = self.compute(&ps, &w0s)?;
        let out = dense::mats_to_storage(saved.iter().map(|(_, w)| w.as_ref()), dtype)?;
        *self.saved.lock().map_err(|_| self.lock_err())? = saved;
        Ok((out, Shape::from(l2.dims())))
    }

    /// Through host memory, as the exact maps do (see `batch`).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::{BackendDevice, BackendStorage};
        let (w, shape) = self.cpu_fwd(&s1.to_cpu_storage()?, l1, &s2.to_cpu_storage()?, l2)?;
        Ok((s1.device().storage_from_cpu_storage_owned(w)?, shape))
    }

    fn bwd(
        &self,
        p: &Tensor,
        w0: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gs = dense::mats_from_tensor(grad)?;
        let w0s = dense::mats_from_tensor(w0)?;
        let cache = self.saved.lock().map_err(|_| self.lock_err())?;
        // Not reached through `rotate_batched` (the forward always fills the cache).
        let recomputed;
        let saved: &[(Factors, Mat<f64>)] = if cache.len() == gs.len() {
            &cache
        } else {
            recomputed = self.compute(&dense::mats_from_tensor(p)?, &w0s)?;
            &recomputed
        };
        let d = p.dim(1)?;
        let grads = per_matrix(gs.len(), d, |k, par| {
            let (f, w) = &saved[k];
            f.backward(w0s[k].as_ref(), w.as_ref(), gs[k].as_ref(), par)
        })?;
        let (dps, dw0s): (Vec<Mat<f64>>, Vec<Mat<f64>>) = grads.into_iter().unzip();
        Ok((
            Some(dense::mats_to_tensor(&dps, p.dtype(), p.device())?),
            Some(dense::mats_to_tensor(&dw0s, w0.dtype(), w0.device())?),
        ))
    }
}
