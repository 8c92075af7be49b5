// CUDA kernels of opt_core::ops (compiled to PTX by build.rs with the `cuda` feature).
// Every kernel mirrors a CPU forward in opt-core/src/ops/*.rs and is checked against it by
// `orthopt gpu-check`. f32 data, f64 accumulation where the CPU path accumulates in f64.

#include <stdint.h>

// Threads per block of the element-wise kernels (grid-stride loops); ELEMENTWISE_THREADS in
// ops/cuda.rs. Every kernel declares its block size as its launch bound, so ptxas keeps its
// registers within what a block of that size may use (scripts/ptxas-check.sh fails on a spill).
#define ELEMENTWISE_THREADS 1024
// Threads per block of the per-channel reductions (a power of two); BN_THREADS in ops/cuda.rs.
#define BN_THREADS 256

#define GRID_STRIDE(i, total) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (total); \
         i += (size_t)blockDim.x * gridDim.x)

// x [n, c, h, w] -> cols [n*ho*wo, c*kh*kw], column order ci*kh*kw + ky*kw + kx (OIHW).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
im2col_f32(const float *x, float *cols, int n, int c, int h, int w,
                                      int kh, int kw, int pad, int stride, int ho, int wo) {
    const size_t ncols = (size_t)c * kh * kw;
    const size_t total = (size_t)n * ho * wo * ncols;
    GRID_STRIDE(i, total) {
        const size_t row = i / ncols;
        const int col = (int)(i % ncols);
        const int img = (int)(row / ((size_t)ho * wo));
        const int r = (int)(row % ((size_t)ho * wo));
        const int oy = r / wo, ox = r % wo;
        const int ci = col / (kh * kw), t = col % (kh * kw);
        const int ky = t / kw, kx = t % kw;
        const int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
        float v = 0.f;
        if (iy >= 0 && iy < h && ix >= 0 && ix < w) {
            v = x[(((size_t)img * c + ci) * h + iy) * w + ix];
        }
        cols[i] = v;
    }
}

// The adjoint of im2col: each input element gathers the taps that read it (no atomics).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
col2im_f32(const float *cols, float *x, int n, int c, int h, int w,
                                      int kh, int kw, int pad, int stride, int ho, int wo) {
    const size_t ncols = (size_t)c * kh * kw;
    const size_t total = (size_t)n * c * h * w;
    GRID_STRIDE(i, total) {
        const int ix = (int)(i % w);
        const int iy = (int)((i / w) % h);
        const int ci = (int)((i / ((size_t)w * h)) % c);
        const int img = (int)(i / ((size_t)w * h * c));
        float s = 0.f;
        for (int ky = 0; ky < kh; ++ky) {
            const int ty = iy + pad - ky;
            if (ty < 0 || ty % stride != 0) continue;
            const int oy = ty / stride;
            if (oy >= ho) continue;
            for (int kx = 0; kx < kw; ++kx) {
                const int tx = ix + pad - kx;
                if (tx < 0 || tx % stride != 0) continue;
                const int ox = tx / stride;
                if (ox >= wo) continue;
                const size_t row = ((size_t)img * ho + oy) * wo + ox;
                const size_t col = ((size_t)ci * kh + ky) * kw + kx;
                s += cols[row * ncols + col];
            }
        }
        x[i] = s;
    }
}

// Offset (within one h*w plane) of the first maximum of 2x2 window (oy, ox): TF's rule.
__device__ __forceinline__ size_t window_argmax(const float *plane, int w, int oy, int ox) {
    const size_t base = 2 * (size_t)oy * w + 2 * ox;
    size_t best = base;
    const size_t offs[3] = {base + 1, base + w, base + w + 1};
    for (int k = 0; k < 3; ++k) {
        if (plane[offs[k]] > plane[best]) best = offs[k];
    }
    return best;
}

extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
max_pool2x2_f32(const float *x, float *y, int planes, int h, int w) {
    const int ho = h / 2, wo = w / 2;
    const size_t total = (size_t)planes * ho * wo;
    GRID_STRIDE(i, total) {
        const size_t p = i / ((size_t)ho * wo);
        const int r = (int)(i % ((size_t)ho * wo));
        const float *plane = x + p * h * w;
        y[i] = plane[window_argmax(plane, w, r / wo, r % wo)];
    }
}

// dx must be zeroed; windows are disjoint, so each thread owns its writes.
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
max_pool2x2_backward_f32(const float *x, const float *g, float *dx,
                                                    int planes, int h, int w) {
    const int ho = h / 2, wo = w / 2;
    const size_t total = (size_t)planes * ho * wo;
    GRID_STRIDE(i, total) {
        const size_t p = i / ((size_t)ho * wo);
        const int r = (int)(i % ((size_t)ho * wo));
        const float *plane = x + p * h * w;
        dx[p * h * w + window_argmax(plane, w, r / wo, r % wo)] = g[i];
    }
}


// Sum of `v` over the block, in f64; every thread gets the result.
__device__ double block_sum(double v, double *shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = BN_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    const double total = shared[0];
    __syncthreads();
    return total;
}

// One block per channel: mean, then the biased variance from centred squares (two passes, as
// the CPU path), written to packed[len + ch] and packed[len + c + ch].
extern "C" __global__ void __launch_bounds__(BN_THREADS)
bn_stats_f32(const float *x, float *packed, int n, int c, int hw) {
    __shared__ double shared[BN_THREADS];
    const int ch = blockIdx.x;
    const size_t m = (size_t)n * hw;
    double s = 0.0;
    for (size_t k = threadIdx.x; k < m; k += BN_THREADS) {
        s += x[((k / hw) * c + ch) * hw + k % hw];
    }
    const double mean = block_sum(s, shared) / (double)m;
    double q = 0.0;
    for (size_t k = threadIdx.x; k < m; k += BN_THREADS) {
        const double d = x[((k / hw) * c + ch) * hw + k % hw] - mean;
        q += d * d;
    }
    const double var = block_sum(q, shared) / (double)m;
    if (threadIdx.x == 0) {
        const size_t len = m * c;
        packed[len + ch] = (float)mean;
        packed[len + c + ch] = (float)var;
    }
}

// y = relu?(x * scale + shift) with scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
bn_apply_f32(const float *x, const float *gamma, const float *beta,
                                        float *packed, int n, int c, int hw, double eps,
                                        int relu) {
    const size_t len = (size_t)n * c * hw;
    GRID_STRIDE(i, len) {
        const int ch = (int)((i / hw) % c);
        const float mean = packed[len + ch];
        const double var = packed[len + c + ch];
        const float scale = (float)((double)gamma[ch] / sqrt(var + eps));
        const float shift = beta[ch] - mean * scale;
        const float v = x[i] * scale + shift;
        packed[i] = relu ? fmaxf(v, 0.f) : v;
    }
}

// One block per channel: db = sum g, dg = sum g * xhat with g = dy (masked by y > 0 after a
// ReLU), into out[len + ch] (dgamma) and out[len + c + ch] (dbeta).
extern "C" __global__ void __launch_bounds__(BN_THREADS)
bn_backward_sums_f32(const float *x, const float *dy,
                                                const float *res, float *out, int n, int c,
                                                int hw, double eps, int relu) {
    __shared__ double shared[BN_THREADS];
    const int ch = blockIdx.x;
    const size_t m = (size_t)n * hw;
    const size_t len = m * c;
    const double mean = res[len + ch];
    const double inv_std = 1.0 / sqrt((double)res[len + c + ch] + eps);
    double a = 0.0, b = 0.0;
    for (size_t k = threadIdx.x; k < m; k += BN_THREADS) {
        const size_t i = ((k / hw) * c + ch) * hw + k % hw;
        const double g = (!relu || res[i] > 0.f) ? dy[i] : 0.f;
        a += g;
        b += g * (x[i] - mean) * inv_std;
    }
    const double dbeta = block_sum(a, shared);
    const double dgamma = block_sum(b, shared);
    if (threadIdx.x == 0) {
        out[len + ch] = (float)dgamma;
        out[len + c + ch] = (float)dbeta;
    }
}

// dx = gamma / sigma * (g - dbeta / M - xhat * dgamma / M).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
bn_backward_apply_f32(const float *x, const float *dy,
                                                 const float *res, const float *gamma,
                                                 float *out, int n, int c, int hw, double eps,
                                                 int relu) {
    const size_t len = (size_t)n * c * hw;
    const double m = (double)n * hw;
    GRID_STRIDE(i, len) {
        const int ch = (int)((i / hw) % c);
        const double mean = res[len + ch];
        const double inv_std = 1.0 / sqrt((double)res[len + c + ch] + eps);
        const double g = (!relu || res[i] > 0.f) ? dy[i] : 0.f;
        const double xhat = (x[i] - mean) * inv_std;
        const double mg = out[len + ch] / m, mb = out[len + c + ch] / m;
        out[i] = (float)(gamma[ch] * inv_std * (g - mb - xhat * mg));
    }
}

// Clamped arccos (the MHE angular energies).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
acos_f32(const float *x, float *y, unsigned long long n) {
    GRID_STRIDE(i, n) { y[i] = acosf(fminf(fmaxf(x[i], -1.f), 1.f)); }
}

extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
acos_f64(const double *x, double *y, unsigned long long n) {
    GRID_STRIDE(i, n) { y[i] = acos(fmin(fmax(x[i], -1.0), 1.0)); }
}
