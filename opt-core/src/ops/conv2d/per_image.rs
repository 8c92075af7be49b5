//! The CPU convolution, lowered image by image (Caffe's layout).
//!
//! Each image's patch matrix is `[c·k_h·k_w, ho·wo]` (row `ci·k_h·k_w + kh·k_w + kw`), built in
//! a per-worker scratch buffer of a few MB that stays in cache, and one single-threaded gemm
//! per image works on it:
//!
//! * forward: `y_img[c_out, ho·wo] = K[c_out, ckk] · cols[ckk, ho·wo]`, written straight into
//!   NCHW (no transpose, no batch-sized patch matrix);
//! * kernel gradient: `∂K += ∂y_img · colsᵀ`, accumulated per fixed group of images and summed
//!   in group order, so the result does not depend on the thread count;
//! * input gradient: `∂cols = Kᵀ · ∂y_img`, then the adjoint scatter-add (col2im) into `∂x_img`.
//!
//! Images run in parallel on rayon's pool. Layers whose kernel covers the whole (unpadded)
//! input — `fc6` and the 1×1 classifier on a 1×1 map — are fully connected layers: one gemm
//! over the batch does them, parallel inside gemm.
//!
//! Before this, the whole batch's patch matrix (`[n·ho·wo, ckk]`, 302 MB for a 64-wide CNN-6
//! layer at batch 128) was built and multiplied at once: a quarter of the step went to the
//! kernel zeroing fresh pages for it, and the `[n, ho·wo, c_out]` product needed a transposing
//! copy into NCHW.

use super::Patches;
use gemm::Parallelism;
use rayon::prelude::*;

/// Images whose kernel-gradient products accumulate into one partial sum. Fixed (not per
/// thread) so the summation order, and with it every bit of `∂K`, is the same on any machine.
const IMAGES_PER_PARTIAL: usize = 8;

/// Row-major `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, each operand given by its row and column
/// strides (in elements).
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    parallel: bool,
}

impl Gemm {
    /// # Safety
    /// The strides must keep every index of the `m×k`, `k×n` and `m×n` operands inside the
    /// slices, which the callers guarantee by construction (checked by debug assertions).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        dst: &mut [f32],
        (dst_rs, dst_cs): (usize, usize),
        lhs: &[f32],
        (lhs_rs, lhs_cs): (usize, usize),
        rhs: &[f32],
        (rhs_rs, rhs_cs): (usize, usize),
    ) {
        let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
            (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
        };
        assert!(dst.len() > last(self.m, self.n, dst_rs, dst_cs));
        assert!(lhs.len() > last(self.m, self.k, lhs_rs, lhs_cs));
        assert!(rhs.len() > last(self.k, self.n, rhs_rs, rhs_cs));
        let parallelism = if self.parallel {
            Parallelism::Rayon(candle_core::utils::get_num_threads().max(1))
        } else {
            Parallelism::None
        };
        // SAFETY: the three asserts above bound every element the strides reach.
        unsafe {
            gemm::gemm(
                self.m,
                self.n,
                self.k,
                dst.as_mut_ptr(),
                dst_cs as isize,
                dst_rs as isize,
                self.accumulate,
                lhs.as_ptr(),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs.as_ptr(),
                rhs_cs as isize,
                rhs_rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    }
}

impl Patches {
    /// The kernel covers the whole unpadded input: the convolution is a fully connected layer
    /// on the flattened image (`fc6`, and `score` on a 1×1 map).
    fn is_fully_connected(&self) -> bool {
        self.pad == 0 && self.h == self.k_h && self.w == self.k_w
    }

    /// A 1×1, stride-1, unpadded convolution: the image itself is its patch matrix.
    fn is_pointwise(&self) -> bool {
        self.pad == 0 && self.stride == 1 && self.k_h == 1 && self.k_w == 1
    }

    /// The output columns `ox` whose input column `ox·stride + kw − pad` lies inside the image.
    fn valid_columns(&self, kw: usize) -> std::ops::Range<usize> {
        let (_, wo) = self.out_hw();
        let lo = self.pad.saturating_sub(kw).div_ceil(self.stride).min(wo);
        let hi = if self.w + self.pad > kw {
            ((self.w + self.pad - kw - 1) / self.stride + 1).min(wo)
        } else {
            0
        };
        lo..hi.max(lo)
    }

    /// Calls `f(line_start, input_row_start, valid_columns, kw)` for every patch row
    /// (`ci, kh, kw`) and output row `oy`: the line starts at `row·ho·wo + oy·wo` in the patch
    /// matrix, and its input row starts at `input_row_start` (`None` where the window is in
    /// the padding).
    #[inline]
    fn for_each_line(
        &self,
        mut f: impl FnMut(usize, Option<usize>, std::ops::Range<usize>, usize),
    ) {
        let (ho, wo) = self.out_hw();
        for ci in 0..self.c {
            for kh in 0..self.k_h {
                for kw in 0..self.k_w {
                    let row = (ci * self.k_h + kh) * self.k_w + kw;
                    let valid = self.valid_columns(kw);
                    for oy in 0..ho {
                        let iy = (oy * self.stride + kh) as isize - self.pad as isize;
                        let input_row = (iy >= 0 && (iy as usize) < self.h)
                            .then(|| (ci * self.h + iy as usize) * self.w);
                        f((row * ho + oy) * wo, input_row, valid.clone(), kw);
                    }
                }
            }
        }
    }

    /// The input column of output column `ox` for kernel column `kw` (inside `valid_columns`).
    #[inline]
    fn input_column(&self, ox: usize, kw: usize) -> usize {
        ox * self.stride + kw - self.pad
    }

    /// One image's patch matrix `[ckk, ho·wo]`, zeros where the window leaves the image.
    fn im2col_image(&self, img: &[f32], cols: &mut [f32]) {
        let (_, wo) = self.out_hw();
        if self.stride == 1 && wo == self.w {
            return self.im2col_same_width(img, cols);
        }
        self.im2col_by_lines(img, cols);
    }

    /// [`Self::im2col_image`] line by line, for any geometry.
    fn im2col_by_lines(&self, img: &[f32], cols: &mut [f32]) {
        let (_, wo) = self.out_hw();
        self.for_each_line(|start, input_row, valid, kw| {
            let line = &mut cols[start..start + wo];
            let Some(in_row) = input_row else {
                line.fill(0.0);
                return;
            };
            line[..valid.start].fill(0.0);
            line[valid.end..].fill(0.0);
            if valid.is_empty() {
                return;
            }
            if self.stride == 1 {
                let from = in_row + self.input_column(valid.start, kw);
                line[valid.clone()].copy_from_slice(&img[from..from + valid.len()]);
            } else {
                for ox in valid {
                    line[ox] = img[in_row + self.input_column(ox, kw)];
                }
            }
        });
    }

    /// [`Self::im2col_image`] for stride 1 and an output as wide as the input (3×3 SAME, 1×1):
    /// the valid lines of a patch row are the image's rows shifted by `kw − pad`, so each patch
    /// row is one block copy plus zeroed border columns (a copy per line cost more than the
    /// copying at CNN-6's 8–32-pixel rows).
    fn im2col_same_width(&self, img: &[f32], cols: &mut [f32]) {
        let (ho, wo) = self.out_hw();
        for ci in 0..self.c {
            for kh in 0..self.k_h {
                // Output rows whose input row oy + kh − pad is inside the image.
                let oy_lo = self.pad.saturating_sub(kh).min(ho);
                let oy_hi = (self.h + self.pad).saturating_sub(kh).clamp(oy_lo, ho);
                for kw in 0..self.k_w {
                    let row = (ci * self.k_h + kh) * self.k_w + kw;
                    let dst = &mut cols[row * ho * wo..(row + 1) * ho * wo];
                    dst[..oy_lo * wo].fill(0.0);
                    dst[oy_hi * wo..].fill(0.0);
                    if oy_lo == oy_hi {
                        continue;
                    }
                    let block = &mut dst[oy_lo * wo..oy_hi * wo];
                    let valid = self.valid_columns(kw);
                    // Entry k of the block is input pixel start + k + kw − pad.
                    let start = (ci * self.h + oy_lo + kh - self.pad) * self.w;
                    let (skip_front, skip_back) =
                        (self.pad.saturating_sub(kw), kw.saturating_sub(self.pad));
                    let len = block.len().saturating_sub(skip_front + skip_back);
                    let from = start + skip_front + kw - self.pad;
                    if len > 0 {
                        block[skip_front..skip_front + len].copy_from_slice(&img[from..from + len]);
                    }
                    for line in block.chunks_exact_mut(wo) {
                        line[..valid.start].fill(0.0);
                        line[valid.end..].fill(0.0);
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::im2col_image`]: adds every patch entry into its input pixel.
    fn col2im_image_add(&self, cols: &[f32], img: &mut [f32]) {
        let (_, wo) = self.out_hw();
        self.for_each_line(|start, input_row, valid, kw| {
            let Some(in_row) = input_row.filter(|_| !valid.is_empty()) else {
                return;
            };
            let line = &cols[start..start + wo];
            if self.stride == 1 {
                let from = in_row + self.input_column(valid.start, kw);
                let dst = &mut img[from..from + valid.len()];
                for (d, s) in dst.iter_mut().zip(&line[valid]) {
                    *d += s;
                }
            } else {
                for ox in valid {
                    img[in_row + self.input_column(ox, kw)] += line[ox];
                }
            }
        });
    }
}

/// `y = conv(x, K)`: `x` `[n, c, h, w]`, `k` `[c_out, ckk]`, result `[n, c_out, ho, wo]`.
pub(super) fn forward(p: &Patches, x: &[f32], k: &[f32], c_out: usize) -> Vec<f32> {
    let (hw, ckk) = (p.rows_per_image(), p.cols());
    let mut out = vec![0f32; p.n * c_out * hw];
    if p.is_fully_connected() {
        // y[n, c_out] = x[n, ckk] · Kᵀ
        let g = Gemm {
            m: p.n,
            n: c_out,
            k: ckk,
            accumulate: false,
            parallel: true,
        };
        g.run(&mut out, (c_out, 1), x, (ckk, 1), k, (1, ckk));
        return out;
    }
    let in_len = p.c * p.h * p.w;
    let g = Gemm {
        m: c_out,
        n: hw,
        k: ckk,
        accumulate: false,
        parallel: false,
    };
    out.par_chunks_mut(c_out * hw).enumerate().for_each_init(
        || scratch(p),
        |cols, (i, y)| {
            let img = &x[i * in_len..(i + 1) * in_len];
            let cols = patches_of(p, img, cols);
            g.run(y, (hw, 1), k, (ckk, 1), cols, (hw, 1));
        },
    );
    out
}

/// `∂K` `[c_out, ckk]` from `x` and `∂y` `[n, c_out, ho, wo]`.
pub(super) fn grad_kernel(p: &Patches, x: &[f32], gy: &[f32], c_out: usize) -> Vec<f32> {
    let (hw, ckk) = (p.rows_per_image(), p.cols());
    if p.is_fully_connected() {
        // ∂K[c_out, ckk] = ∂yᵀ · x
        let mut gk = vec![0f32; c_out * ckk];
        let g = Gemm {
            m: c_out,
            n: ckk,
            k: p.n,
            accumulate: false,
            parallel: true,
        };
        g.run(&mut gk, (ckk, 1), gy, (1, c_out), x, (ckk, 1));
        return gk;
    }
    let in_len = p.c * p.h * p.w;
    // Each partial is ∂Kᵀ (`[ckk, c_out]`), the orientation in which gemm reads the patch
    // matrix without a transposing pack (it packs only the small ∂y_img); one transpose at the
    // end gives ∂K.
    let partials: Vec<Vec<f32>> = (0..p.n.div_ceil(IMAGES_PER_PARTIAL))
        .into_par_iter()
        .map_init(
            || scratch(p),
            |cols, group| {
                let mut partial = vec![0f32; c_out * ckk];
                let first = group * IMAGES_PER_PARTIAL;
                for i in first..(first + IMAGES_PER_PARTIAL).min(p.n) {
                    let img = &x[i * in_len..(i + 1) * in_len];
                    let cols = patches_of(p, img, cols);
                    let g = Gemm {
                        m: c_out,
                        n: ckk,
                        k: hw,
                        accumulate: i > first,
                        parallel: false,
                    };
                    let gy_img = &gy[i * c_out * hw..(i + 1) * c_out * hw];
                    g.run(&mut partial, (1, c_out), gy_img, (hw, 1), cols, (1, hw));
                }
                partial
            },
        )
        .collect();
    let mut partials = partials.into_iter();
    let mut sum = partials.next().unwrap_or_else(|| vec![0f32; c_out * ckk]);
    for partial in partials {
        for (a, b) in sum.iter_mut().zip(&partial) {
            *a += b;
        }
    }
    transpose(&sum, ckk, c_out)
}

/// `a` `[rows, cols]` row-major → `aᵀ` `[cols, rows]`.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    for (r, row) in a.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// `∂x` `[n, c, h, w]` from `∂y` `[n, c_out, ho, wo]` and `k` `[c_out, ckk]`.
pub(super) fn grad_input(p: &Patches, gy: &[f32], k: &[f32], c_out: usize) -> Vec<f32> {
    let (hw, ckk) = (p.rows_per_image(), p.cols());
    let in_len = p.c * p.h * p.w;
    let mut gx = vec![0f32; p.n * in_len];
    if p.is_fully_connected() {
        // ∂x[n, ckk] = ∂y[n, c_out] · K
        let g = Gemm {
            m: p.n,
            n: ckk,
            k: c_out,
            accumulate: false,
            parallel: true,
        };
        g.run(&mut gx, (ckk, 1), gy, (c_out, 1), k, (ckk, 1));
        return gx;
    }
    let pointwise = p.is_pointwise();
    // Kᵀ once per call, so gemm reads it without a strided pack per image.
    let kt = transpose(k, c_out, ckk);
    let g = Gemm {
        m: ckk,
        n: hw,
        k: c_out,
        accumulate: false,
        parallel: false,
    };
    gx.par_chunks_mut(in_len).enumerate().for_each_init(
        || if pointwise { Vec::new() } else { scratch(p) },
        |cols, (i, gx_img)| {
            let gy_img = &gy[i * c_out * hw..(i + 1) * c_out * hw];
            if pointwise {
                g.run(gx_img, (hw, 1), &kt, (c_out, 1), gy_img, (hw, 1));
            } else {
                g.run(cols, (hw, 1), &kt, (c_out, 1), gy_img, (hw, 1));
                p.col2im_image_add(cols, gx_img);
            }
        },
    );
    gx
}

/// The whole batch's patch matrix in the row layout of the CUDA path's [`super::Im2Col`],
/// `[n·ho·wo, ckk]`: each image's `[ckk, ho·wo]` patches, transposed. (The CPU training path
/// never builds it; this is that op's CPU form.)
pub(super) fn im2col_rows(p: &Patches, x: &[f32]) -> Vec<f32> {
    let (hw, ckk, in_len) = (p.rows_per_image(), p.cols(), p.c * p.h * p.w);
    let mut out = vec![0f32; p.n * hw * ckk];
    out.par_chunks_mut(hw * ckk).enumerate().for_each_init(
        || vec![0f32; ckk * hw],
        |cols, (i, o)| {
            p.im2col_image(&x[i * in_len..(i + 1) * in_len], cols);
            o.copy_from_slice(&transpose(cols, ckk, hw));
        },
    );
    out
}

/// The adjoint of [`im2col_rows`]: `[n·ho·wo, ckk] → [n, c, h, w]`, summing overlapping taps.
pub(super) fn col2im_rows(p: &Patches, rows: &[f32]) -> Vec<f32> {
    let (hw, ckk, in_len) = (p.rows_per_image(), p.cols(), p.c * p.h * p.w);
    let mut out = vec![0f32; p.n * in_len];
    out.par_chunks_mut(in_len).enumerate().for_each(|(i, img)| {
        let cols = transpose(&rows[i * hw * ckk..(i + 1) * hw * ckk], hw, ckk);
        p.col2im_image_add(&cols, img);
    });
    out
}

/// One worker's patch-matrix buffer (empty for a pointwise convolution, which needs none).
fn scratch(p: &Patches) -> Vec<f32> {
    if p.is_pointwise() {
        Vec::new()
    } else {
        vec![0f32; p.cols() * p.rows_per_image()]
    }
}

/// The image's patch matrix: the image itself for a pointwise convolution, else built in
/// `cols`.
fn patches_of<'a>(p: &Patches, img: &'a [f32], cols: &'a mut [f32]) -> &'a [f32] {
    if p.is_pointwise() {
        img
    } else {
        p.im2col_image(img, cols);
        cols
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The valid output columns are exactly those whose input column is inside the image, for
    /// every stride, padding and kernel column (checked against the definition).
    #[test]
    fn valid_columns_match_the_definition() {
        for w in 1..9 {
            for k_w in 1..=w.min(5) + 2 {
                for pad in 0..3 {
                    for stride in 1..4 {
                        if w + 2 * pad < k_w {
                            continue;
                        }
                        let p = Patches {
                            n: 1,
                            c: 1,
                            h: 1,
                            w,
                            k_h: 1,
                            k_w,
                            pad,
                            stride,
                        };
                        let (_, wo) = p.out_hw();
                        for kw in 0..k_w {
                            let expect: Vec<usize> = (0..wo)
                                .filter(|&ox| {
                                    let ix = (ox * stride + kw) as isize - pad as isize;
                                    ix >= 0 && (ix as usize) < w
                                })
                                .collect();
                            let got: Vec<usize> = p.valid_columns(kw).collect();
                            assert_eq!(
                                got, expect,
                                "w {w} k_w {k_w} pad {pad} stride {stride} kw {kw}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The block-copy im2col equals the line-by-line one wherever it applies (stride 1, output
    /// as wide as the input), including paddings wider than the kernel's reach.
    #[test]
    fn same_width_im2col_matches_the_line_by_line_one() {
        let mut rng = crate::Rng::seed(11);
        let mut checked = 0;
        for (c, h, w) in [(2, 5, 4), (1, 1, 1), (3, 2, 7), (2, 8, 8)] {
            for k_h in 1..=5 {
                for k_w in 1..=5 {
                    for pad in 0..4 {
                        let p = Patches {
                            n: 1,
                            c,
                            h,
                            w,
                            k_h,
                            k_w,
                            pad,
                            stride: 1,
                        };
                        if h + 2 * pad < k_h || w + 2 * pad < k_w || p.out_hw().1 != w {
                            continue;
                        }
                        let img = rng.normal_vec(c * h * w, 1.0);
                        let mut fast = vec![f32::NAN; p.cols() * p.rows_per_image()];
                        let mut lines = vec![f32::NAN; fast.len()];
                        p.im2col_same_width(&img, &mut fast);
                        p.im2col_by_lines(&img, &mut lines);
                        assert_eq!(fast, lines, "{c}×{h}×{w} k {k_h}×{k_w} pad {pad}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 20, "only {checked} geometries checked");
    }

    /// The row-layout im2col times the flattened kernel is candle's convolution (an independent
    /// implementation), and its col2im is its adjoint, on a strided, padded geometry.
    #[test]
    fn row_layout_ops_match_candle_and_are_adjoint() -> candle_core::Result<()> {
        use candle_core::{Device, Tensor};
        let mut rng = crate::Rng::seed(13);
        let p = Patches {
            n: 3,
            c: 2,
            h: 7,
            w: 6,
            k_h: 3,
            k_w: 3,
            pad: 1,
            stride: 2,
        };
        let x = rng.normal_vec(p.n * p.c * p.h * p.w, 1.0);
        let k = rng.normal_vec(4 * p.cols(), 1.0);
        let rows = Tensor::from_vec(
            im2col_rows(&p, &x),
            (p.n * p.rows_per_image(), p.cols()),
            &Device::Cpu,
        )?;
        let kt = Tensor::from_vec(k.clone(), (4, p.cols()), &Device::Cpu)?;
        let (ho, wo) = p.out_hw();
        let ours = rows
            .matmul(&kt.t()?)?
            .reshape((p.n, ho * wo, 4))?
            .transpose(1, 2)?;
        let xt = Tensor::from_vec(x.clone(), (p.n, p.c, p.h, p.w), &Device::Cpu)?;
        let theirs = xt
            .conv2d(&kt.reshape((4, p.c, 3, 3))?, 1, 2, 1, 1)?
            .reshape((p.n, 4, ho * wo))?;
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff < 1e-4,
            "im2col_rows · K differs from candle's conv2d by {diff}"
        );
        let c = rng.normal_vec(p.n * p.rows_per_image() * p.cols(), 1.0);
        let back = col2im_rows(&p, &c);
        let lhs: f64 = rows
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .zip(&c)
            .map(|(a, b)| (a * b) as f64)
            .sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
        assert!(
            (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
        Ok(())
    }

    /// col2im is the adjoint of im2col: ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ for random x and c.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let mut rng = crate::Rng::seed(7);
        // The last: a padding so wide that some kernel columns never meet the image.
        for (c, h, w, k, pad, stride) in [
            (2, 5, 4, 3, 1, 1),
            (3, 7, 6, 3, 1, 2),
            (1, 4, 4, 2, 0, 1),
            (1, 1, 1, 5, 3, 1),
        ] {
            let p = Patches {
                n: 1,
                c,
                h,
                w,
                k_h: k,
                k_w: k,
                pad,
                stride,
            };
            let x = rng.normal_vec(c * h * w, 1.0);
            let cols_in = rng.normal_vec(p.cols() * p.rows_per_image(), 1.0);
            let mut cols = vec![0f32; cols_in.len()];
            p.im2col_image(&x, &mut cols);
            let mut back = vec![0f32; x.len()];
            p.col2im_image_add(&cols_in, &mut back);
            let lhs: f64 = cols.iter().zip(&cols_in).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }
}
