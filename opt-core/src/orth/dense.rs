//! Thin f64 wrappers around faer's blocked dense routines, plus conversions between candle's
//! row-major (possibly strided) storage and faer's column-major `Mat`.
//!
//! faer's convenience API (`Mat::qr`, `Mat::svd`, ...) reads a process-wide parallelism setting;
//! the low-level routines used here take an explicit [`Par`] instead, so the orthogonal maps
//! follow candle's thread count without touching global state.

use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Tensor};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::triangular::{matmul as triangular_matmul, BlockStructure};
use faer::linalg::{evd, householder, lu, matmul, qr, svd, triangular_solve};
use faer::perm::PermRef;
use faer::{Accum, Conj, Mat, MatMut, MatRef, Par};

/// Below this size the fork/join overhead of threading outweighs the O(d³) work.
const PAR_MIN_DIM: usize = 128;

/// Parallelism for a d×d problem: candle's thread count for large d, sequential otherwise.
pub(super) fn par_for(d: usize) -> Par {
    if d >= PAR_MIN_DIM {
        Par::rayon(candle_core::utils::get_num_threads())
    } else {
        Par::Seq
    }
}

/// `alpha · lhs · rhs`.
pub(super) fn mul(lhs: MatRef<'_, f64>, rhs: MatRef<'_, f64>, alpha: f64, par: Par) -> Mat<f64> {
    let mut out = Mat::zeros(lhs.nrows(), rhs.ncols());
    matmul::matmul(out.as_mut(), Accum::Replace, lhs, rhs, alpha, par);
    out
}

/// `dst += alpha · lhs · rhs`.
pub(super) fn mul_add(
    dst: MatMut<'_, f64>,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    alpha: f64,
    par: Par,
) {
    matmul::matmul(dst, Accum::Add, lhs, rhs, alpha, par);
}

/// The lower triangle of `aᵀa` (a syrk: half a gemm's flops); the rest stays zero.
pub(super) fn gram_lower(a: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    let mut gram = Mat::zeros(a.ncols(), a.ncols());
    triangular_matmul(
        gram.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        a.transpose(),
        BlockStructure::Rectangular,
        a,
        BlockStructure::Rectangular,
        1.0,
        par,
    );
    gram
}

/// Solves `R X = B` in place for upper-triangular `R` (only its upper triangle is read).
pub(super) fn solve_upper_in_place(r: MatRef<'_, f64>, rhs: MatMut<'_, f64>, par: Par) {
    triangular_solve::solve_upper_triangular_in_place(r, rhs, par);
}

/// An error naming the first entry of `p` that is not finite (`what`: the map, for the message).
pub(super) fn check_finite(p: MatRef<'_, f64>, what: &str) -> Result<()> {
    if let Some((i, j)) = (0..p.ncols()).find_map(|j| {
        (0..p.nrows())
            .find(|&i| !p[(i, j)].is_finite())
            .map(|i| (i, j))
    }) {
        bail!("{what}: P[{i}, {j}] = {} is not finite", p[(i, j)]);
    }
    Ok(())
}

/// `P A = L U` in place (partial pivoting) for a square `a` of any float type:
/// `(forward permutation, backward permutation, number of row transpositions)`.
pub(super) fn lu_in_place<T: faer::traits::ComplexField>(
    a: &mut Mat<T>,
    par: Par,
) -> (Vec<usize>, Vec<usize>, usize) {
    let n = a.nrows();
    let mut perm_fwd = vec![0usize; n];
    let mut perm_bwd = vec![0usize; n];
    let mut buf = MemBuffer::new(
        lu::partial_pivoting::factor::lu_in_place_scratch::<usize, T>(
            n,
            n,
            par,
            Default::default(),
        ),
    );
    let (info, _) = lu::partial_pivoting::factor::lu_in_place(
        a.as_mut(),
        &mut perm_fwd,
        &mut perm_bwd,
        par,
        MemStack::new(&mut buf),
        Default::default(),
    );
    (perm_fwd, perm_bwd, info.transposition_count)
}

/// LU factorisation with partial pivoting, `P A = L U`, of a square matrix.
pub(super) struct Lu {
    /// L (strictly below the diagonal, unit diagonal implied) and U, packed as faer leaves them.
    lu: Mat<f64>,
    perm_fwd: Vec<usize>,
    perm_bwd: Vec<usize>,
    transpositions: usize,
}

impl Lu {
    /// Factors `a`; fails when a pivot is exactly zero or not finite (a singular matrix).
    pub(super) fn factor(mut a: Mat<f64>, what: &str, par: Par) -> Result<Self> {
        let n = a.nrows();
        let (perm_fwd, perm_bwd, transpositions) = lu_in_place(&mut a, par);
        if let Some(k) = (0..n).find(|&k| {
            let u = a[(k, k)];
            u == 0.0 || !u.is_finite()
        }) {
            bail!("{what} is singular (LU pivot {k} is {})", a[(k, k)]);
        }
        Ok(Self {
            lu: a,
            perm_fwd,
            perm_bwd,
            transpositions,
        })
    }

    fn perm(&self) -> PermRef<'_, usize> {
        PermRef::new_checked(&self.perm_fwd, &self.perm_bwd, self.perm_fwd.len())
    }

    /// Solves `A X = B` in place.
    pub(super) fn solve_in_place(&self, rhs: MatMut<'_, f64>, par: Par) {
        let n = self.lu.nrows();
        let mut buf = MemBuffer::new(lu::partial_pivoting::solve::solve_in_place_scratch::<
            usize,
            f64,
        >(n, rhs.ncols(), par));
        lu::partial_pivoting::solve::solve_in_place_with_conj(
            self.lu.as_ref(),
            self.lu.as_ref(),
            self.perm(),
            Conj::No,
            rhs,
            par,
            MemStack::new(&mut buf),
        );
    }

    /// Solves `Aᵀ X = B` in place.
    pub(super) fn solve_transpose_in_place(&self, rhs: MatMut<'_, f64>, par: Par) {
        let n = self.lu.nrows();
        let mut buf = MemBuffer::new(
            lu::partial_pivoting::solve::solve_transpose_in_place_scratch::<usize, f64>(
                n,
                rhs.ncols(),
                par,
            ),
        );
        lu::partial_pivoting::solve::solve_transpose_in_place_with_conj(
            self.lu.as_ref(),
            self.lu.as_ref(),
            self.perm(),
            Conj::No,
            rhs,
            par,
            MemStack::new(&mut buf),
        );
    }

    /// The sign of `det A` (`±1`; `factor` already rejected a zero determinant).
    pub(super) fn det_sign(&self) -> f64 {
        let mut sign = if self.transpositions.is_multiple_of(2) {
            1.0
        } else {
            -1.0
        };
        for k in 0..self.lu.nrows() {
            if self.lu[(k, k)] < 0.0 {
                sign = -sign;
            }
        }
        sign
    }
}

/// Householder QR of a square matrix, `A = Q R`, kept as faer leaves it: R on and above the
/// diagonal, the Householder vectors below it and their block coefficients beside. `Q` is
/// applied, never formed, where a product with it is all that is needed (the fused maps).
pub(super) struct HouseholderQr {
    packed: Mat<f64>,
    coeff: Mat<f64>,
}

impl HouseholderQr {
    /// Factors `a`. faer's QR drops numerically dependent columns (it reports a rank); the
    /// orthogonal maps are defined only for full rank, so anything else is an error.
    pub(super) fn factor(mut a: Mat<f64>, what: &str, par: Par) -> Result<Self> {
        let n = a.nrows();
        let block = qr::no_pivoting::factor::recommended_block_size::<f64>(n, n);
        let mut coeff = Mat::zeros(block, n);
        let mut buf = MemBuffer::new(qr::no_pivoting::factor::qr_in_place_scratch::<f64>(
            n,
            n,
            block,
            par,
            Default::default(),
        ));
        let info = qr::no_pivoting::factor::qr_in_place(
            a.as_mut(),
            coeff.as_mut(),
            par,
            MemStack::new(&mut buf),
            Default::default(),
        );
        if info.rank < n {
            bail!(
                "{what} is numerically singular (QR rank {} < {n})",
                info.rank
            );
        }
        Ok(Self { packed: a, coeff })
    }

    pub(super) fn dim(&self) -> usize {
        self.packed.nrows()
    }

    /// `R` (upper triangular).
    pub(super) fn r(&self) -> Mat<f64> {
        let a = &self.packed;
        Mat::from_fn(
            a.nrows(),
            a.ncols(),
            |i, j| if i <= j { a[(i, j)] } else { 0.0 },
        )
    }

    /// `m ← Q m`.
    pub(super) fn apply_q(&self, m: MatMut<'_, f64>, par: Par) {
        let (n, block) = (self.dim(), self.coeff.nrows());
        let mut buf = MemBuffer::new(
            householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
                n,
                block,
                m.ncols(),
            ),
        );
        householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
            // faer reads only the vectors below the diagonal (their leading 1 is implicit).
            self.packed.as_ref(),
            self.coeff.as_ref(),
            Conj::No,
            m,
            par,
            MemStack::new(&mut buf),
        );
    }

    /// `Q` formed explicitly.
    pub(super) fn q(&self, par: Par) -> Mat<f64> {
        let mut q = Mat::identity(self.dim(), self.dim());
        self.apply_q(q.as_mut(), par);
        q
    }
}

/// `mᵀ` as a column-major matrix, copied in cache-sized tiles (an element-by-element copy
/// through a transposed view strides a page per element at d ≥ 512).
pub(super) fn transposed<T: faer::traits::ComplexField + Copy>(m: MatRef<'_, T>) -> Mat<T> {
    const TILE: usize = 32;
    let (rows, cols) = m.shape();
    let mut out = Mat::<T>::zeros(cols, rows);
    for j0 in (0..cols).step_by(TILE) {
        for i0 in (0..rows).step_by(TILE) {
            for i in i0..(i0 + TILE).min(rows) {
                for j in j0..(j0 + TILE).min(cols) {
                    out[(j, i)] = m[(i, j)];
                }
            }
        }
    }
    out
}

/// Householder QR of a square matrix, `A = Q R`, with `Q` formed explicitly.
pub(super) fn qr_square(a: Mat<f64>, what: &str, par: Par) -> Result<(Mat<f64>, Mat<f64>)> {
    let qr = HouseholderQr::factor(a, what, par)?;
    Ok((qr.q(par), qr.r()))
}

/// Full SVD of a square matrix, `A = U diag(s) Vᵀ`.
pub(super) fn svd_square(
    a: MatRef<'_, f64>,
    what: &str,
    par: Par,
) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let n = a.nrows();
    let mut u = Mat::zeros(n, n);
    let mut v = Mat::zeros(n, n);
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    let full = svd::ComputeSvdVectors::Full;
    let mut buf = MemBuffer::new(svd::svd_scratch::<f64>(
        n,
        n,
        full,
        full,
        par,
        Default::default(),
    ));
    if let Err(e) = svd::svd(
        a,
        s.as_mut(),
        Some(u.as_mut()),
        Some(v.as_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    ) {
        bail!("SVD of {what} failed: {e:?}");
    }
    let s = s.column_vector().iter().copied().collect();
    Ok((u, s, v))
}

/// Eigendecomposition of a symmetric matrix, `A = V diag(λ) Vᵀ` (only `a`'s lower triangle
/// is read).
pub(super) fn evd_symmetric(
    a: MatRef<'_, f64>,
    what: &str,
    par: Par,
) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = a.nrows();
    let mut v = Mat::zeros(n, n);
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    let mut buf = MemBuffer::new(evd::self_adjoint_evd_scratch::<f64>(
        n,
        evd::ComputeEigenvectors::Yes,
        par,
        Default::default(),
    ));
    if let Err(e) = evd::self_adjoint_evd(
        a,
        s.as_mut(),
        Some(v.as_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    ) {
        bail!("eigendecomposition of {what} failed: {e:?}");
    }
    Ok((s.column_vector().iter().copied().collect(), v))
}

/// Solves `R X = B` in place for upper-triangular `R` where `B` is strictly upper triangular
/// (so is `X`): each block of columns only meets the leading block of `R` above it, ⅓ of a
/// full solve's flops.
pub(super) fn solve_upper_strict_rhs_in_place(
    r: MatRef<'_, f64>,
    mut rhs: MatMut<'_, f64>,
    par: Par,
) {
    const BLOCK: usize = 64;
    let n = r.nrows();
    let mut c0 = 0;
    while c0 < n {
        let c1 = (c0 + BLOCK).min(n);
        // Rows ≥ c1 of these columns are zero in B, hence in X.
        triangular_solve::solve_upper_triangular_in_place(
            r.get(..c1, ..c1),
            rhs.as_mut().get_mut(..c1, c0..c1),
            par,
        );
        c0 = c1;
    }
}

/// Reads the matrices of a 3-D `[b, rows, cols]` f32/f64 CPU storage (any strides) into f64.
pub(super) fn mats_from_storage(storage: &CpuStorage, layout: &Layout) -> Result<Vec<Mat<f64>>> {
    let &[b, rows, cols] = layout.dims() else {
        bail!(
            "expected a batch of matrices, got shape {:?}",
            layout.dims()
        );
    };
    let &[bs, rs, cs] = layout.stride() else {
        bail!("expected 3 strides, got {:?}", layout.stride());
    };
    let read = |k: usize, x: &dyn Fn(usize) -> f64| {
        let at = |i: usize, j: usize| layout.start_offset() + k * bs + i * rs + j * cs;
        Mat::from_fn(rows, cols, |i, j| x(at(i, j)))
    };
    Ok(match storage {
        CpuStorage::F32(x) => (0..b).map(|k| read(k, &|a| f64::from(x[a]))).collect(),
        CpuStorage::F64(x) => (0..b).map(|k| read(k, &|a| x[a])).collect(),
        _ => bail!("expected an f32 or f64 matrix"),
    })
}

fn row_major(m: MatRef<'_, f64>) -> Vec<f64> {
    let (rows, cols) = m.shape();
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        out.extend((0..cols).map(|j| m[(i, j)]));
    }
    out
}

/// Writes matrices, one after the other, as contiguous row-major storage of `dtype` (f32 or
/// f64): a `[b, rows, cols]` tensor's storage.
pub(super) fn mats_to_storage<'a>(
    ms: impl Iterator<Item = MatRef<'a, f64>>,
    dtype: DType,
) -> Result<CpuStorage> {
    let data: Vec<f64> = ms.flat_map(row_major).collect();
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(data.into_iter().map(|x| x as f32).collect()),
        DType::F64 => CpuStorage::F64(data),
        other => bail!("expected an f32 or f64 matrix, got {other:?}"),
    })
}

/// Copies any 2-D tensor (any device, dtype, layout) into an f64 matrix.
pub(super) fn mat_from_tensor(t: &Tensor) -> Result<Mat<f64>> {
    let (rows, cols) = t.dims2()?;
    let data = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Ok(Mat::from_fn(rows, cols, |i, j| data[i * cols + j]))
}

/// Copies any `[b, rows, cols]` tensor (any device, dtype, layout) into f64 matrices.
pub(super) fn mats_from_tensor(t: &Tensor) -> Result<Vec<Mat<f64>>> {
    let (b, rows, cols) = t.dims3()?;
    let data = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let n = rows * cols;
    Ok((0..b)
        .map(|k| Mat::from_fn(rows, cols, |i, j| data[k * n + i * cols + j]))
        .collect())
}

/// Matrices as one `[b, rows, cols]` tensor of `dtype` on `device` (no autograd history).
pub(super) fn mats_to_tensor(ms: &[Mat<f64>], dtype: DType, device: &Device) -> Result<Tensor> {
    let (rows, cols) = ms.first().map_or((0, 0), |m| m.shape());
    let data: Vec<f64> = ms.iter().flat_map(|m| row_major(m.as_ref())).collect();
    Tensor::from_vec(data, (ms.len(), rows, cols), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// One matrix's slot in a row-major `[b, rows, cols]` result of the tensor's dtype, written where
/// it is computed (no f64 copy of it, no second pass to round and transpose it).
pub(super) enum RowMajorOut<'a> {
    F32(MatMut<'a, f32>),
    F64(MatMut<'a, f64>),
}

impl RowMajorOut<'_> {
    /// `out[i, j] = f(i, j)`, visiting the entries in memory order.
    pub(super) fn fill(&mut self, f: impl Fn(usize, usize) -> f64) {
        match self {
            Self::F32(m) => {
                for i in 0..m.nrows() {
                    for j in 0..m.ncols() {
                        m[(i, j)] = f(i, j) as f32;
                    }
                }
            }
            Self::F64(m) => {
                for i in 0..m.nrows() {
                    for j in 0..m.ncols() {
                        m[(i, j)] = f(i, j);
                    }
                }
            }
        }
    }

    /// `out = lhs · rhs`, reading only the given triangles of the factors, computed in the
    /// output's precision. Callers use it where one factor is orthogonal, so f32 products
    /// keep their relative accuracy (error `≈ √k·eps₃₂·‖lhs‖‖rhs‖ = √k·eps₃₂·‖out‖`), and the
    /// rounding to f32 happens once, in the factors, instead of in the result.
    pub(super) fn product(
        &mut self,
        lhs: MatRef<'_, f64>,
        lhs_structure: BlockStructure,
        rhs: MatRef<'_, f64>,
        rhs_structure: BlockStructure,
        par: Par,
    ) {
        match self {
            Self::F64(out) => triangular_matmul(
                out.as_mut(),
                BlockStructure::Rectangular,
                Accum::Replace,
                lhs,
                lhs_structure,
                rhs,
                rhs_structure,
                1.0,
                par,
            ),
            Self::F32(out) => {
                let lhs = to_f32(lhs);
                let rhs = to_f32(rhs);
                triangular_matmul(
                    out.as_mut(),
                    BlockStructure::Rectangular,
                    Accum::Replace,
                    lhs.as_ref(),
                    lhs_structure,
                    rhs.as_ref(),
                    rhs_structure,
                    1.0f32,
                    par,
                );
            }
        }
    }
}

impl RowMajorOut<'_> {
    /// `out = a · b · c` in the output's precision, for orthogonal `a` and `c` (Löwdin's
    /// `U K Vᵀ`): both products then keep their relative accuracy in f32.
    pub(super) fn product_of_three(
        &mut self,
        a: MatRef<'_, f64>,
        b: MatRef<'_, f64>,
        c: MatRef<'_, f64>,
        par: Par,
    ) {
        match self {
            Self::F64(out) => {
                let ab = mul(a, b, 1.0, par);
                matmul::matmul(out.as_mut(), Accum::Replace, ab.as_ref(), c, 1.0, par);
            }
            Self::F32(out) => {
                let (a, b, c) = (to_f32(a), to_f32(b), to_f32(c));
                let mut ab = Mat::<f32>::zeros(a.nrows(), b.ncols());
                matmul::matmul(
                    ab.as_mut(),
                    Accum::Replace,
                    a.as_ref(),
                    b.as_ref(),
                    1.0,
                    par,
                );
                matmul::matmul(
                    out.as_mut(),
                    Accum::Replace,
                    ab.as_ref(),
                    c.as_ref(),
                    1.0,
                    par,
                );
            }
        }
    }
}

fn to_f32(m: MatRef<'_, f64>) -> Mat<f32> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] as f32)
}
