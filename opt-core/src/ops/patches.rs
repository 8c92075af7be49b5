//! The geometry of a strided, zero-padded 2-D convolution's patch matrix: what the CPU
//! convolution (`conv2d`) and its CUDA kernels (`cuda`) both lower a convolution to, kept apart
//! so neither module needs the other's.

/// Geometry of a strided, zero-padded 2-D convolution's patch matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Patches {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub pad: usize,
    pub stride: usize,
}

impl Patches {
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.k_h) / self.stride + 1,
            (self.w + 2 * self.pad - self.k_w) / self.stride + 1,
        )
    }

    pub fn rows_per_image(&self) -> usize {
        let (ho, wo) = self.out_hw();
        ho * wo
    }

    pub fn cols(&self) -> usize {
        self.c * self.k_h * self.k_w
    }
}
