//! The layer seam: a convolution asks a [`KernelSource`] for its effective kernel.
//!
//! Standard training uses [`PlainKernel`] (the kernel is itself a trainable tensor). OPT layers
//! implement the same trait with a fixed `W0` and a learned rotation (`W = orth(P)·W0`), so the
//! network code never changes with the method. A [`KernelFactory`] decides what each weight layer
//! of a network becomes.

use crate::rotations::{RotationRequest, Rotations};
use crate::{Kind, ParamStore, Result, Rng, Role};
use candle_core::{Tensor, Var};

/// Shape of a convolution kernel in candle's OIHW layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelShape {
    pub c_out: usize,
    pub c_in: usize,
    pub k_h: usize,
    pub k_w: usize,
}

impl KernelShape {
    /// Fan-in `d = k_h·k_w·c_in`: the dimension OPT rotates.
    pub fn fan_in(&self) -> usize {
        self.k_h * self.k_w * self.c_in
    }

    pub fn dims(&self) -> (usize, usize, usize, usize) {
        (self.c_out, self.c_in, self.k_h, self.k_w)
    }

    /// He-normal (fan-in) standard deviation `sqrt(2/d)`, the official init of every kernel.
    pub fn he_std(&self) -> f64 {
        (2.0 / self.fan_in() as f64).sqrt()
    }
}

/// Anything that yields the effective kernel of a layer.
pub trait KernelSource: Send + Sync {
    /// The effective kernel, `[c_out, c_in, k_h, k_w]`, differentiable w.r.t. trainable params,
    /// taking the rotations it requested from `rotations` (those it finds there; any other it
    /// computes alone).
    fn kernel_in(&self, rotations: &Rotations) -> Result<Tensor>;

    /// The effective kernel outside a forward pass: every rotation computed alone.
    fn kernel(&self) -> Result<Tensor> {
        self.kernel_in(&Rotations::none())
    }

    /// The exact maps this layer's kernel needs, so a forward pass computes them with the other
    /// layers' of the same size and map (see [`Rotations`]).
    fn rotation_requests(&self) -> Vec<RotationRequest> {
        Vec::new()
    }

    /// An extra loss term this layer adds (OR's orthogonality penalty).
    fn penalty(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The rotation this layer applies to its fixed neurons, for OPT layers (metrics).
    fn rotation_matrix(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// End of an S-OPT episode: merge the learned rotation into the fixed neurons, reset it
    /// and draw a new subset. Returns whether this layer did anything.
    fn end_episode(&self, _rng: &mut Rng) -> Result<bool> {
        Ok(false)
    }
}

/// Builds the kernel source of one weight layer, registering its tensors in the store.
pub trait KernelFactory {
    fn build(
        &self,
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        rng: &mut Rng,
    ) -> Result<Box<dyn KernelSource>>;
}

/// A standard trainable kernel (He-normal init, L2-decayed).
pub struct PlainKernel {
    weight: Var,
}

impl PlainKernel {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        rng: &mut Rng,
    ) -> Result<Self> {
        let (o, i, h, w) = shape.dims();
        let data = rng.normal_vec(o * i * h * w, shape.he_std());
        let t = Tensor::from_vec(data, (o, i, h, w), store.device())?;
        let weight = store.add(
            &format!("{name}.weight"),
            t,
            Role::Trainable { decay: true },
            Kind::Kernel,
        )?;
        Ok(Self { weight })
    }
}

impl KernelSource for PlainKernel {
    fn kernel_in(&self, _rotations: &Rotations) -> Result<Tensor> {
        Ok(self.weight.as_tensor().clone())
    }
}

/// Factory of [`PlainKernel`]s: the `baseline` method.
pub struct PlainFactory;

impl KernelFactory for PlainFactory {
    fn build(
        &self,
        store: &mut ParamStore,
        name: &str,
        shape: KernelShape,
        rng: &mut Rng,
    ) -> Result<Box<dyn KernelSource>> {
        Ok(Box::new(PlainKernel::new(store, name, shape, rng)?))
    }
}

/// The name every network gives its first convolution (the one that sees the input), so
/// methods that treat it specially (S-OPT keeps it a full OPT layer) find it in any network.
pub const INPUT_LAYER: &str = "conv1_0";

/// A convolution without bias whose kernel comes from a [`KernelSource`].
pub struct Conv {
    pub name: String,
    pub shape: KernelShape,
    pub padding: usize,
    pub stride: usize,
    pub source: Box<dyn KernelSource>,
}

impl Conv {
    /// A stride-1 convolution with `padding` whose kernel comes from `source`.
    pub fn new(
        name: &str,
        shape: KernelShape,
        padding: usize,
        source: Box<dyn KernelSource>,
    ) -> Self {
        Self {
            name: name.to_string(),
            shape,
            padding,
            stride: 1,
            source,
        }
    }

    /// The convolution of `x`, its kernel's rotations computed alone.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_in(x, &Rotations::none())
    }

    /// The convolution of `x`, its kernel's rotations taken from the forward's `rotations`.
    pub fn forward_in(&self, x: &Tensor, rotations: &Rotations) -> Result<Tensor> {
        let k = self.source.kernel_in(rotations)?;
        Ok(crate::ops::conv2d(x, &k, self.padding, self.stride)?)
    }
}

/// The sum of the layers' extra loss terms (OR's penalty), if any layer has one.
pub fn total_penalty<'a>(layers: impl Iterator<Item = &'a Conv>) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    for conv in layers {
        if let Some(p) = conv.source.penalty()? {
            total = Some(match total {
                Some(t) => (t + p)?,
                None => p,
            });
        }
    }
    Ok(total)
}

/// The rotations of one forward through `layers`: every layer's requests, computed together
/// (one batched op per size and map, see [`Rotations::compute_requests`]).
pub fn forward_rotations<'a>(layers: impl Iterator<Item = &'a Conv>) -> Result<Rotations> {
    let requests: Vec<RotationRequest> = layers
        .flat_map(|conv| conv.source.rotation_requests())
        .collect();
    Rotations::compute_requests(&requests)
}

/// Ends an S-OPT episode in every layer that has one; returns how many layers did.
pub fn end_episode<'a>(layers: impl Iterator<Item = &'a Conv>, rng: &mut Rng) -> Result<usize> {
    let mut n = 0;
    for conv in layers {
        if conv.source.end_episode(rng)? {
            n += 1;
        }
    }
    Ok(n)
}
