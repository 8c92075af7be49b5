//! OPT layers: a fixed random `W0 ∈ R^{d×n}` (column j = neuron j) and a learned rotation
//! `R ∈ R^{d×d}` acting on the fan-in space; the effective weight is `W = R·W0` (spec §1, §2.1).
//!
//! Row ↔ kernel mapping (one fixed bijection, spec §2.1): row `r` of `W0`/`W` is the kernel
//! tap `(ci, kh, kw)` with `r = ci·k_h·k_w + kh·k_w + kw` — candle's OIHW flattening — so the
//! kernel is `Wᵀ` reshaped to `[n, c_in, k_h, k_w]`.

use crate::layers::{KernelFactory, KernelShape, KernelSource};
use crate::orth::OrthMap;
use crate::rotations::{RotationRequest, Rotations};
use crate::skew::SkewMap;
use crate::{Kind, ParamStore, Result, Rng, Role};
use candle_core::{DType, Tensor, Var};

/// How the learned matrix `P` becomes the rotation `R`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// `R = orth(P)` by an exact map (CP, GS, HR, LS).
    Exact(OrthMap),
    /// `R = P` used as is: OGD (kept orthogonal by its optimizer), OR (by a penalty), UPT (not at all).
    Raw,
    /// `R = map(P − Pᵀ)` by a skew map of the family (`expm`, `cayley_neumann`).
    Skew(SkewMap),
}

/// How `P` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationInit {
    /// i.i.d. N(0, 1) (CP, GS, HR, LS, OR in the official code).
    Gaussian,
    /// The identity, so the initial network is the random `W0` network (OGD, S-OPT, UPT).
    Identity,
    /// Zero: the identity rotation of a skew map (`exp(0) = I`).
    Zero,
}

/// Everything that defines the OPT layers of a network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptLayerConfig {
    pub rotation: Rotation,
    pub init: RotationInit,
    /// `P` carries the L2 regulariser (all official folders except OGD).
    pub decay_rotation: bool,
    /// `W0` counts in the logged L2 sum (constant; all official folders except OGD).
    pub decay_fixed: bool,
    /// `W0` is learned too (the UPT control with learnable neurons); never in faithful OPT.
    pub learn_w0: bool,
    /// Weight of the orthogonality penalty `Σ‖RRᵀ − I‖_F` (OR: 0.1), 0 for none.
    pub penalty: f64,
    /// At each episode end, merge `R` into the neurons (`W0 ← R·W0`) and restart `P` where it
    /// started (identity or zero init): keeps a near-identity map (Cayley–Neumann) near the
    /// identity, as POET's merge-then-reinitialise.
    pub merge_on_episode: bool,
}

/// Parameter-name suffixes, so optimizers and metrics can find the pieces.
pub const ROTATION: &str = "rotation";
pub const FIXED: &str = "w0_fix";

pub struct OptKernel {
    pub shape: KernelShape,
    pub w0: Var,
    pub p: Var,
    pub config: OptLayerConfig,
}

impl OptKernel {
    /// Registers `W0` and `P` in `store`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        cfg: OptLayerConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        let (d, n) = (shape.fan_in(), shape.c_out);
        let dev = store.device().clone();
        // Same draw order as the plain kernel (W0 first) so seeds compare across methods.
        let w0 = Tensor::from_vec(rng.normal_vec(d * n, shape.he_std()), (d, n), &dev)?;
        let p = match cfg.init {
            RotationInit::Gaussian => Tensor::from_vec(rng.normal_vec(d * d, 1.0), (d, d), &dev)?,
            RotationInit::Identity => Tensor::eye(d, DType::F32, &dev)?,
            RotationInit::Zero => Tensor::zeros((d, d), DType::F32, &dev)?,
        };
        let w0_role = if cfg.learn_w0 {
            Role::Trainable { decay: true }
        } else {
            Role::Fixed {
                decay: cfg.decay_fixed,
            }
        };
        let w0 = store.add(&format!("{name}.{FIXED}"), w0, w0_role, Kind::Neurons)?;
        let p = store.add(
            &format!("{name}.{ROTATION}"),
            p,
            Role::Trainable {
                decay: cfg.decay_rotation,
            },
            Kind::Rotation,
        )?;
        Ok(Self {
            shape,
            w0,
            p,
            config: cfg,
        })
    }

    /// `R = orth(P)` of an exact map (computed alone: metrics, exports).
    fn request(&self) -> Option<RotationRequest> {
        match self.config.rotation {
            Rotation::Exact(map) => Some(RotationRequest::of(&self.p, map)),
            Rotation::Raw | Rotation::Skew(_) => None,
        }
    }

    /// `W = orth(P)·W0` of an exact map, fused, as the forward computes it with the other
    /// layers of its size and map (the rotation is never formed).
    fn weight_request(&self) -> Option<RotationRequest> {
        match self.config.rotation {
            Rotation::Exact(map) => Some(RotationRequest::weight_of(&self.p, &self.w0, map)),
            Rotation::Raw | Rotation::Skew(_) => None,
        }
    }

    /// The rotation `R` actually applied, from `rotations` where the forward computed it.
    pub fn rotation_in(&self, rotations: &Rotations) -> Result<Tensor> {
        match (self.request(), self.config.rotation) {
            (Some(r), _) => rotations.get(&r),
            (None, Rotation::Skew(map)) => map.rotation(self.p.as_tensor()),
            (None, _) => Ok(self.p.as_tensor().clone()),
        }
    }

    /// The rotation `R` actually applied, computed alone.
    pub fn rotation(&self) -> Result<Tensor> {
        self.rotation_in(&Rotations::none())
    }

    /// The effective weight `W = R·W0`, `[d, n]`.
    pub fn weight_in(&self, rotations: &Rotations) -> Result<Tensor> {
        match self.weight_request() {
            Some(r) => rotations.get(&r),
            None => Ok(self.rotation_in(rotations)?.matmul(self.w0.as_tensor())?),
        }
    }

    /// The effective weight `W = R·W0`, `[d, n]`, its rotation computed alone.
    pub fn weight(&self) -> Result<Tensor> {
        self.weight_in(&Rotations::none())
    }
}

/// `W [d, n]` → kernel `[n, c_in, k_h, k_w]` under the documented row mapping.
pub fn weight_to_kernel(w: &Tensor, shape: KernelShape) -> Result<Tensor> {
    let (o, i, h, k) = shape.dims();
    Ok(w.t()?.contiguous()?.reshape((o, i, h, k))?)
}

/// Kernel `[n, c_in, k_h, k_w]` → neurons as columns `[d, n]`.
pub fn kernel_to_weight(kernel: &Tensor) -> Result<Tensor> {
    let n = kernel.dim(0)?;
    Ok(kernel.reshape((n, ()))?.t()?.contiguous()?)
}

impl OptKernel {
    /// `P`'s starting value, when it is a fixed one (identity or zero).
    fn restart_value(&self) -> Result<Option<Tensor>> {
        let (d, dev) = (self.shape.fan_in(), self.p.device());
        Ok(match self.config.init {
            RotationInit::Identity => Some(Tensor::eye(d, DType::F32, dev)?),
            RotationInit::Zero => Some(Tensor::zeros((d, d), DType::F32, dev)?),
            RotationInit::Gaussian => None,
        })
    }
}

impl KernelSource for OptKernel {
    fn kernel_in(&self, rotations: &Rotations) -> Result<Tensor> {
        weight_to_kernel(&self.weight_in(rotations)?, self.shape)
    }

    fn rotation_requests(&self) -> Vec<RotationRequest> {
        self.weight_request().into_iter().collect()
    }

    fn penalty(&self) -> Result<Option<Tensor>> {
        if self.config.penalty == 0.0 {
            return Ok(None);
        }
        // Non-squared Frobenius norm ‖RRᵀ − I‖_F (spec §2.7), gradient in closed form.
        let penalty = crate::penalty::orthogonality_penalty(self.p.as_tensor())?;
        Ok(Some((penalty * self.config.penalty)?))
    }

    fn rotation_matrix(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.rotation()?))
    }

    /// With `merge_on_episode`: `W0 ← R·W0` and `P` back to its start, which leaves `W`
    /// unchanged (tested).
    fn end_episode(&self, _rng: &mut Rng) -> Result<bool> {
        if !self.config.merge_on_episode {
            return Ok(false);
        }
        let Some(start) = self.restart_value()? else {
            return Err(crate::Error::Config(
                "a merge restarts P at a fixed value (identity or zero init), not a random one"
                    .into(),
            ));
        };
        let merged = self.weight()?.detach();
        self.w0.set(&merged)?;
        self.p.set(&start)?;
        Ok(true)
    }
}

/// Builds [`OptKernel`]s for every OPT layer (a forward pass computes their rotations per
/// (size, map) group: `crate::rotations`).
pub struct OptFactory {
    pub config: OptLayerConfig,
}

impl OptFactory {
    pub fn new(config: OptLayerConfig) -> Self {
        Self { config }
    }
}

impl KernelFactory for OptFactory {
    fn build(
        &self,
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        rng: &mut Rng,
    ) -> Result<Box<dyn KernelSource>> {
        Ok(Box::new(OptKernel::new(
            store,
            name,
            shape,
            self.config,
            rng,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn layer(cfg: OptLayerConfig, seed: u64) -> Result<OptKernel> {
        let shape = KernelShape {
            c_out: 4,
            c_in: 2,
            k_h: 2,
            k_w: 3,
        };
        let mut store = ParamStore::new(Device::Cpu);
        OptKernel::new(&mut store, "conv", shape, cfg, &mut Rng::seed(seed))
    }

    fn raw(init: RotationInit, penalty: f64) -> OptLayerConfig {
        OptLayerConfig {
            rotation: Rotation::Raw,
            init,
            decay_rotation: true,
            decay_fixed: true,
            learn_w0: false,
            penalty,
            merge_on_episode: false,
        }
    }

    /// UPT's and OR's kernel is `(P·W0)ᵀ` reshaped under the documented row mapping: kernel
    /// `[o, ci, kh, kw]` = `Σ_t P[r, t]·W0[t, o]` with `r = ci·k_h·k_w + kh·k_w + kw`, written out
    /// in f64 loops.
    #[test]
    fn the_kernel_is_p_times_w0_under_the_row_mapping() -> Result<()> {
        let l = layer(raw(RotationInit::Gaussian, 0.0), 3)?;
        let p: Vec<Vec<f32>> = l.p.as_tensor().to_vec2()?;
        let w0: Vec<Vec<f32>> = l.w0.as_tensor().to_vec2()?;
        let k: Vec<f32> = l.kernel()?.flatten_all()?.to_vec1()?;
        let (o_n, ci_n, kh, kw) = l.shape.dims();
        let mut worst = 0.0f64;
        for o in 0..o_n {
            for ci in 0..ci_n {
                for h in 0..kh {
                    for w in 0..kw {
                        let r = ci * kh * kw + h * kw + w;
                        let want: f64 = (0..p.len())
                            .map(|t| f64::from(p[r][t]) * f64::from(w0[t][o]))
                            .sum();
                        let got = k[((o * ci_n + ci) * kh + h) * kw + w];
                        worst = worst.max((f64::from(got) - want).abs());
                    }
                }
            }
        }
        assert!(worst < 1e-5, "{worst:e}");
        Ok(())
    }

    /// OR's penalty is `weight·‖PPᵀ − I‖_F` (not squared), against the f64 sum written out;
    /// zero weight adds no term.
    #[test]
    fn or_penalty_is_the_frobenius_norm_written_out() -> Result<()> {
        let l = layer(raw(RotationInit::Gaussian, 0.1), 4)?;
        let p: Vec<Vec<f32>> = l.p.as_tensor().to_vec2()?;
        let d = p.len();
        let mut sum = 0.0f64;
        for i in 0..d {
            for j in 0..d {
                let g: f64 = (0..d)
                    .map(|t| f64::from(p[i][t]) * f64::from(p[j][t]))
                    .sum();
                sum += (g - f64::from(u8::from(i == j))).powi(2);
            }
        }
        let got = l
            .penalty()?
            .expect("a penalty")
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let want = 0.1 * sum.sqrt();
        assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
        assert!(layer(raw(RotationInit::Identity, 0.0), 4)?
            .penalty()?
            .is_none());
        Ok(())
    }

    /// A merge folds `R` into `W0` and restarts `P` at zero, leaving the kernel unchanged.
    #[test]
    fn a_merge_keeps_the_kernel_and_restarts_p() -> Result<()> {
        let cfg = OptLayerConfig {
            rotation: Rotation::Skew(SkewMap::CayleyNeumann {
                terms: 5,
                scaled: true,
            }),
            init: RotationInit::Zero,
            decay_rotation: true,
            decay_fixed: true,
            learn_w0: false,
            penalty: 0.0,
            merge_on_episode: true,
        };
        let l = layer(cfg, 5)?;
        let d = l.shape.fan_in();
        let noise = Tensor::from_vec(Rng::seed(6).normal_vec(d * d, 0.05), (d, d), &Device::Cpu)?;
        l.p.set(&noise)?;
        let before = l.kernel()?;
        let w0_before = l.w0.as_tensor().copy()?;
        assert!(l.end_episode(&mut Rng::seed(1))?);
        let diff = crate::test_util::max_abs_diff(&before, &l.kernel()?);
        assert!(diff < 1e-5, "{diff:e}");
        assert!(crate::test_util::max_abs_diff(&w0_before, l.w0.as_tensor()) > 1e-3);
        assert_eq!(l.p.as_tensor().abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
