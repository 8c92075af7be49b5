// CUDA kernels of opt_core::orth's device route for Gram–Schmidt (Cholesky-QR2), compiled to
// PTX by build.rs with the `cuda` feature. Each mirrors the loop of the same name in
// opt-core/src/orth/cholesky_qr.rs, which the CPU tests run; `orthopt gpu-check` compares the
// device route with the exact map. f64 throughout; one thread block per matrix of the batch.

#include <stdint.h>

// r = upper Cholesky factor of g (g = rᵀr), row-major [b, n, n]; info[k] = j + 1 when pivot j
// of matrix k is not positive (r is then garbage and the caller falls back).
extern "C" __global__ void cholesky_upper_f64(const double *g, double *r, int *info, int n) {
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
            if (threadIdx.x == 0) info[blockIdx.x] = failed;
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
extern "C" __global__ void upper_inverse_f64(const double *r, double *x, int n) {
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
