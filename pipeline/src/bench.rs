//! Training throughput of CNN-6 on synthetic data: the real training step (forward, backward,
//! momentum update, BN statistics), without data loading, so it measures the model's cost.

use anyhow::Result;
use candle_core::Tensor;
use opt_core::loss::LossKind;
use opt_core::MomentumSgd;
use opt_stages::device::DeviceChoice;
use opt_stages::model::{build, MethodConfig, ModelConfig};
use opt_stages::train::step;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub method: MethodConfig,
    pub width: usize,
    pub input: (usize, usize, usize),
    pub classes: usize,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub device: DeviceChoice,
}

#[derive(Debug, Clone)]
pub struct BenchResult {
    pub method: String,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    pub device: String,
}

pub fn run(cfg: &BenchConfig) -> Result<BenchResult> {
    let device = cfg.device.open()?;
    let model_cfg = ModelConfig {
        arch: opt_stages::model::Arch::Cnn6,
        width: cfg.width,
        widths: None,
        fc6_width: None,
        bn_decay: 0.999,
        bn_eps: 1e-3,
    };
    let (model, store) = build(&model_cfg, &cfg.method, cfg.input, cfg.classes, 0, &device)?;
    let mut opt = MomentumSgd::new(&store, 0.9, 5e-4)?;
    let (c, h, w) = cfg.input;
    let x = Tensor::randn(0f32, 1f32, (cfg.batch, c, h, w), &device)?;
    let labels: Vec<u32> = (0..cfg.batch as u32)
        .map(|i| i % cfg.classes as u32)
        .collect();
    let y = Tensor::from_vec(labels, cfg.batch, &device)?;
    for _ in 0..cfg.warmup {
        step(&model, &mut opt, LossKind::OFFICIAL, &x, &y, 0.01)?;
    }
    device.synchronize()?;
    let t = Instant::now();
    for _ in 0..cfg.steps {
        step(&model, &mut opt, LossKind::OFFICIAL, &x, &y, 0.01)?;
    }
    device.synchronize()?;
    let secs = t.elapsed().as_secs_f64();
    Ok(BenchResult {
        method: cfg.method.name().into(),
        images_per_sec: (cfg.steps * cfg.batch) as f64 / secs,
        ms_per_step: 1e3 * secs / cfg.steps as f64,
        device: cfg.device.resolve().to_string(),
    })
}
