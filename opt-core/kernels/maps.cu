// CUDA kernels of opt_core::orth's device route for Gram–Schmidt (Cholesky-QR2), compiled to
// PTX by build.rs with the `cuda` feature. Each mirrors the loop of the same name in
// opt-core/src/orth/cholesky_qr.rs, which the CPU tests run; `orthopt gpu-check` compares the
// device route with the exact map. f64 throughout; one thread block per matrix of the batch.

#include <stdint.h>

// Threads per block of every kernel here (one block per matrix); THREADS in orth/cuda.rs. Each
// kernel declares it as its launch bound, so ptxas keeps its registers within what a block of
// that size may use (scripts/ptxas-check.sh fails on a spill).
#define MAPS_THREADS 512

// r = upper Cholesky factor of g (g = rᵀr), row-major [b, n, n]; matrix k of r is all NaN when
// one of its pivots is not positive (the caller's one orthogonality read then falls back).
extern "C" __global__ void __launch_bounds__(MAPS_THREADS)
cholesky_upper_f64(const double *g, double *r, int n) {
    const size_t nn = (size_t)n * n;
    const double *src = g + blockIdx.x * nn;
    double *a = r + blockIdx.x * nn;
    __shared__ int failed;
    for (size_t t = threadIdx.x; t < nn; t += blockDim.x) a[t] = src[t];
    if (threadIdx.x == 0) failed = 0;
    __syncthreads();
    for (int j = 0; j < n; ++j) {
        if (threadIdx.x == 0) {
            const double p = a[(size_t)j * n + j];
            if (!(p > 0.0) || isinf(p)) {
                failed = j + 1;
            } else {
                a[(size_t)j * n + j] = sqrt(p);
            }
        }
        __syncthreads();
        if (failed) {
            for (size_t t = threadIdx.x; t < nn; t += blockDim.x) a[t] = nan("");
            return;
        }
        const double rjj = a[(size_t)j * n + j];
        for (int c = j + 1 + threadIdx.x; c < n; c += blockDim.x) a[(size_t)j * n + c] /= rjj;
        __syncthreads();
        // The trailing upper triangle: a[i][c] -= r[j][i]·r[j][c] for j < i <= c.
        const size_t m = (size_t)(n - j - 1);
        for (size_t t = threadIdx.x; t < m * m; t += blockDim.x) {
            const int i = j + 1 + (int)(t / m), c = j + 1 + (int)(t % m);
            if (c >= i) a[(size_t)i * n + c] -= a[(size_t)j * n + i] * a[(size_t)j * n + c];
        }
        __syncthreads();
    }
    for (size_t t = threadIdx.x; t < nn; t += blockDim.x) {
        if (t % n < t / n) a[t] = 0.0;
    }
}

// x = r⁻¹ for upper-triangular r, row-major [b, n, n]: each thread back-substitutes columns.
extern "C" __global__ void __launch_bounds__(MAPS_THREADS)
upper_inverse_f64(const double *r, double *x, int n) {
    const size_t nn = (size_t)n * n;
    const double *R = r + blockIdx.x * nn;
    double *X = x + blockIdx.x * nn;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        for (int i = c + 1; i < n; ++i) X[(size_t)i * n + c] = 0.0;
        X[(size_t)c * n + c] = 1.0 / R[(size_t)c * n + c];
        for (int i = c - 1; i >= 0; --i) {
            double s = 0.0;
            for (int m = i + 1; m <= c; ++m) s += R[(size_t)i * n + m] * X[(size_t)m * n + c];
            X[(size_t)i * n + c] = -s / R[(size_t)i * n + i];
        }
    }
}

// det_sign_f64's pivot search reduces over the block's threads (a power of two).
#define DET_THREADS MAPS_THREADS

// sign_out[k] = sign(det m_k) (±1, 0 for an exactly zero or non-finite pivot) by LU with
// partial pivoting (the first largest |a_ij| of the column) in `work`, row-major [b, n, n].
extern "C" __global__ void __launch_bounds__(MAPS_THREADS)
det_sign_f64(const double *m, double *work, double *sign_out, int n) {
    const size_t nn = (size_t)n * n;
    const double *src = m + blockIdx.x * nn;
    double *a = work + blockIdx.x * nn;
    __shared__ double best[DET_THREADS];
    __shared__ int where[DET_THREADS];
    __shared__ double sign;
    __shared__ int stop;
    for (size_t t = threadIdx.x; t < nn; t += blockDim.x) a[t] = src[t];
    if (threadIdx.x == 0) {
        sign = 1.0;
        stop = 0;
    }
    __syncthreads();
    for (int j = 0; j < n; ++j) {
        double v = -1.0;
        int w = n;
        for (int i = j + threadIdx.x; i < n; i += blockDim.x) {
            const double x = fabs(a[(size_t)i * n + j]);
            if (x > v) {
                v = x;
                w = i;
            }
        }
        best[threadIdx.x] = v;
        where[threadIdx.x] = w;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) {
                const double o = best[threadIdx.x + s];
                const int ow = where[threadIdx.x + s];
                if (o > best[threadIdx.x] || (o == best[threadIdx.x] && ow < where[threadIdx.x])) {
                    best[threadIdx.x] = o;
                    where[threadIdx.x] = ow;
                }
            }
            __syncthreads();
        }
        const int p = where[0];
        if (threadIdx.x == 0) {
            const double pivot = p < n ? a[(size_t)p * n + j] : 0.0;
            if (pivot == 0.0 || !isfinite(pivot)) {
                sign = 0.0;
                stop = 1;
            } else {
                if (p != j) sign = -sign;
                if (pivot < 0.0) sign = -sign;
            }
        }
        __syncthreads();
        if (stop) break;
        if (p != j) {
            for (int c = threadIdx.x; c < n; c += blockDim.x) {
                const double t = a[(size_t)j * n + c];
                a[(size_t)j * n + c] = a[(size_t)p * n + c];
                a[(size_t)p * n + c] = t;
            }
        }
        __syncthreads();
        const double pivot = a[(size_t)j * n + j];
        // The trailing block; the multipliers a[i][j] / pivot are read from column j, untouched.
        const size_t m2 = (size_t)(n - j - 1);
        for (size_t t = threadIdx.x; t < m2 * m2; t += blockDim.x) {
            const int i = j + 1 + (int)(t / m2), c = j + 1 + (int)(t % m2);
            a[(size_t)i * n + c] -= a[(size_t)i * n + j] / pivot * a[(size_t)j * n + c];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) sign_out[blockIdx.x] = sign;
}
