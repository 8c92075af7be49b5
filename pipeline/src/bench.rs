//! Training throughput of any network on synthetic data: the real training step (forward, backward,
//! momentum update, BN statistics), without data loading, so it measures the model's cost.

use anyhow::Result;
use candle_core::Tensor;
use opt_core::ops::orthogonalize;
use opt_core::orth::{orthogonality_error, OrthMap};
use opt_stages::training::device::open_checked;
use opt_stages::training::device::DeviceChoice;
use opt_stages::training::model::{build, MethodConfig, ModelConfig};
use opt_stages::training::optimizers::Optimizers;
use opt_stages::training::train::step;
use opt_stages::training::train_config::{Length, LossConfig, ScheduleConfig, TrainConfig};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub method: MethodConfig,
    pub model: ModelConfig,
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
    /// From the median step (see [`measure_step`]).
    pub images_per_sec: f64,
    /// The median step.
    pub ms_per_step: f64,
    /// The mean step over the timed window, spikes included.
    pub mean_ms_per_step: f64,
    pub device: String,
}

pub fn run(cfg: &BenchConfig) -> Result<BenchResult> {
    measure_step(
        &train_config(cfg),
        cfg.input,
        cfg.classes,
        cfg.warmup,
        cfg.steps,
    )
}

/// The training configuration a benchmark runs: the official schedule's optimizer and loss,
/// no augmentation, seed 0.
pub fn train_config(cfg: &BenchConfig) -> TrainConfig {
    TrainConfig {
        data: opt_stages::data::preprocess::DataView::default(),
        model: cfg.model.clone(),
        method: cfg.method.clone(),
        schedule: ScheduleConfig {
            lr: 0.01,
            milestones: vec![],
            length: Length::Iterations(1),
            batch_size: cfg.batch,
            eval_every: 0,
            ..ScheduleConfig::default()
        },
        loss: LossConfig::default(),
        augment: opt_stages::data::augment::AugmentConfig::NONE,
        seed: 0,
        device: cfg.device.resolve(),
        regularizer: None,
        tf32: false,
        ops: Default::default(),
        map_route: Default::default(),
    }
}

/// Times `steps` real training steps (after `warmup` untimed ones) of the network and method
/// `train` describes, on synthetic inputs of shape `input` with `classes` classes, at its
/// batch size and on its device, one by one.
///
/// Throughput comes from the median step, the mean is kept beside it: a process's first ~50
/// steps still grow the allocator's heap now and then (the threads' peaks differ from step to
/// step until each has held every size), and a step that first touches new memory is an
/// outlier a long run does not repeat — on this project's VM, up to 1 s against 260 ms, as
/// the process's resident set grew by ~100 MB (CNN-6 width 64, GS, 2026-12-04). Over 10
/// timed steps one such step moved the mean by 20 %.
pub fn measure_step(
    train: &TrainConfig,
    input: (usize, usize, usize),
    classes: usize,
    warmup: usize,
    steps: usize,
) -> Result<BenchResult> {
    let (device, _) = open_checked(train.device, train.ops, train.map_route, &|w| {
        tracing::warn!("{w}")
    })?;
    let batch = train.schedule.batch_size;
    let (model, store) = build(&train.model, &train.method, input, classes, 0, &device)?;
    let mut opt = Optimizers::new(train, &store)?;
    let (c, h, w) = input;
    let x = Tensor::randn(0f32, 1f32, (batch, c, h, w), &device)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes as u32).collect();
    let y = Tensor::from_vec(labels, batch, &device)?;
    let kind = train.loss.kind();
    for i in 0..warmup {
        step(&model, &mut opt, kind, None, &x, &y, 0.01, i as u64)?;
    }
    device.synchronize()?;
    let mut step_ms = Vec::with_capacity(steps.max(1));
    for i in 0..steps.max(1) {
        let t = Instant::now();
        step(&model, &mut opt, kind, None, &x, &y, 0.01, i as u64)?;
        device.synchronize()?;
        step_ms.push(1e3 * t.elapsed().as_secs_f64());
    }
    let mean_ms_per_step = step_ms.iter().sum::<f64>() / step_ms.len() as f64;
    let ms_per_step = median(step_ms);
    Ok(BenchResult {
        method: train.method.name().into(),
        images_per_sec: 1e3 * batch as f64 / ms_per_step,
        ms_per_step,
        mean_ms_per_step,
        device: train.device.to_string(),
    })
}

/// Time of one orthogonal map at size `d`: forward, and forward + backward, in ms (median of
/// `reps`), and the orthogonality error `‖QQᵀ − I‖_F` reached in f32.
pub struct MapTiming {
    pub map: &'static str,
    pub d: usize,
    pub forward_ms: f64,
    pub forward_backward_ms: f64,
    pub orth_error: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

pub fn time_map(map: OrthMap, d: usize, reps: usize, device: DeviceChoice) -> Result<MapTiming> {
    let device = device.open()?;
    let mut rng = opt_core::Rng::seed(d as u64);
    let p = candle_core::Var::from_tensor(&Tensor::from_vec(
        rng.normal_vec(d * d, 1.0),
        (d, d),
        &device,
    )?)?;
    let weights = Tensor::from_vec(rng.normal_vec(d * d, 1.0), (d, d), &device)?;
    let (mut fwd, mut both) = (Vec::new(), Vec::new());
    let mut q = orthogonalize(p.as_tensor(), map)?;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        q = orthogonalize(p.as_tensor(), map)?;
        device.synchronize()?;
        fwd.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let loss = (orthogonalize(p.as_tensor(), map)? * &weights)?.sum_all()?;
        let grads = loss.backward()?;
        let _ = grads.get(p.as_tensor());
        device.synchronize()?;
        both.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(MapTiming {
        map: map.name(),
        d,
        forward_ms: median(fwd),
        forward_backward_ms: median(both),
        orth_error: orthogonality_error(&q)?,
    })
}

/// Data-path throughput: the decoded dataset loaded from a preprocess artifact (safetensors),
/// then per batch the training path — sampling, symmetric pad + random crop + flip,
/// normalisation and the batch tensor — on the CPU.
#[derive(Debug, Clone)]
pub struct DataBenchConfig {
    pub images: usize,
    pub input: (usize, usize, usize),
    pub batch: usize,
    pub batches: usize,
    pub augment: opt_stages::data::augment::AugmentConfig,
}

#[derive(Debug, Clone)]
pub struct DataBenchResult {
    /// Loading the artifact and applying the view, once per run.
    pub load_ms: f64,
    pub images_per_sec: f64,
    pub ms_per_batch: f64,
}

pub fn data(cfg: &DataBenchConfig) -> Result<DataBenchResult> {
    use opt_stages::data::batches::Sampler;
    use opt_stages::data::dataset::Split;
    use opt_stages::data::preprocess::{self, DataView};
    let (c, h, w) = cfg.input;
    // A decoded artifact as preprocess writes it; pixel values from a fixed generator (the
    // data path's cost does not depend on them).
    let mut rng = opt_core::Rng::seed(1);
    let n = cfg.images;
    let split = |n: usize, rng: &mut opt_core::Rng| Split {
        images: (0..n * c * h * w).map(|_| rng.below(256) as u8).collect(),
        labels: (0..n as u32).map(|i| i % 10).collect(),
        shape: (c, h, w),
    };
    let train = split(n, &mut rng);
    let test = split(cfg.batch, &mut rng);
    let dir = tempfile::tempdir()?;
    let stats = preprocess::DatasetStats {
        dataset: "synthetic".into(),
        classes: 10,
        class_names: (0..10).map(|i| i.to_string()).collect(),
        shape: (c, h, w),
        train_count: n,
        test_count: cfg.batch,
        channel_mean: vec![0.5; c],
        channel_std: vec![0.29; c],
        train_label_counts: vec![n / 10; 10],
        test_label_counts: vec![cfg.batch / 10; 10],
    };
    preprocess::write_artifact(dir.path(), &train, &test, &stats)?;
    drop((train, test));

    let t = Instant::now();
    let data = preprocess::load(dir.path(), &DataView::default())?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut sampler = Sampler::new(data.train.len(), cfg.batch, opt_core::Rng::seed(2))?;
    let device = candle_core::Device::Cpu;
    // One warm-up batch (first-touch page faults, allocator), then the timed ones.
    sampler.batch(0, &data.train, &cfg.augment, &data.normalizer, &device)?;
    let t = Instant::now();
    for i in 1..=cfg.batches as u64 {
        let (x, _) = sampler.batch(i, &data.train, &cfg.augment, &data.normalizer, &device)?;
        std::hint::black_box(&x);
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(DataBenchResult {
        load_ms,
        images_per_sec: (cfg.batches * cfg.batch) as f64 / secs,
        ms_per_batch: 1e3 * secs / cfg.batches as f64,
    })
}
