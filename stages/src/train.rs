//! Train: the official training protocol (spec §5) on any device candle offers.
//!
//! Momentum SGD with L2 decay, piecewise-constant learning rate, the official loss, BN with
//! batch statistics, per-image augmentation, the official batching; periodic test evaluations;
//! checkpoints every N iterations into the stage's (resumable) staging directory. A run that
//! finds a checkpoint there continues from it and ends with exactly the weights an
//! uninterrupted run would have.

use crate::augment::AugmentConfig;
use crate::batches::Sampler;
use crate::checkpoint;
use crate::device::DeviceChoice;
use crate::error::{read_json, write_json, IoContext};
use crate::evaluate::{evaluate, EvalMetrics};
use crate::interrupt::Interrupt;
use crate::metrics::{layer_metrics, summarize, LayerMetrics};
use crate::model::{
    available_memory, build, check_step_memory, step_memory, MethodConfig, ModelConfig,
};
use crate::preprocess::{self, DataView, DatasetStats};
use crate::progress::Progress;
use crate::regularizer::RegularizerConfig;
use crate::{Result, StageError};
use candle_core::{Device, Tensor};
use opt_core::cayley_sgd::CayleySgd;
use opt_core::loss::{loss, LossKind};
use opt_core::metrics::topk_correct;
use opt_core::{Entry, Kind, MomentumSgd, Network, ParamStore, PiecewiseLr, Rng, Role};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// 2: evaluations at iteration 0 and on the validation split; top-k ties counted by their
/// share.
pub const FORMAT_VERSION: u32 = 2;
pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const SUMMARY_FILE: &str = "summary.json";
pub const CURVES_FILE: &str = "curves.json";
pub const CHECKPOINT_DIR: &str = "checkpoints";
pub const CHECKPOINT_FILE: &str = "last.safetensors";

/// Training length: a number of iterations, or of passes over the training set
/// (`⌈epochs · ⌊n / batch⌋⌉` iterations).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Length {
    Iterations(u64),
    Epochs(f64),
}

impl Length {
    pub fn iterations(self, batches_per_epoch: u64) -> u64 {
        match self {
            Length::Iterations(n) => n,
            Length::Epochs(e) => (e * batches_per_epoch as f64).ceil() as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Heavy-ball momentum (0.9 in the official code).
    pub momentum: f64,
    pub lr: f64,
    /// Iterations at which the learning rate is multiplied by `lr_factor` (before that step).
    pub milestones: Vec<u64>,
    pub lr_factor: f64,
    pub length: Length,
    pub batch_size: usize,
    /// L2 coefficient `wd` of `wd·½‖θ‖²` (5e-4 official).
    pub weight_decay: f64,
    /// Evaluate on the test (and validation) set before the first step and every this many
    /// iterations (0 = only at the end).
    pub eval_every: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossName {
    /// `−Σ y·log(softmax + floor)` with smoothed labels (the official loss).
    Official,
    /// Standard cross-entropy (with optional label smoothing).
    CrossEntropy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    pub kind: LossName,
    pub label_smoothing: f64,
    pub log_floor: f64,
}

impl LossConfig {
    pub fn kind(&self) -> LossKind {
        match self.kind {
            LossName::Official => LossKind::Official {
                smoothing: self.label_smoothing,
                log_floor: self.log_floor,
            },
            LossName::CrossEntropy => LossKind::CrossEntropy {
                smoothing: self.label_smoothing,
            },
        }
    }
}

/// Everything that determines the trained weights (hashed into the cache key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Which decoded images train on and how they are normalised.
    pub data: DataView,
    pub model: ModelConfig,
    pub method: MethodConfig,
    pub schedule: ScheduleConfig,
    pub loss: LossConfig,
    pub augment: AugmentConfig,
    pub seed: u64,
    /// The resolved device (never `auto`): results differ across devices.
    pub device: DeviceChoice,
    /// MHE / half-space MHE added to the loss (absent: none, and the key of every recipe
    /// without one is what it was before regularisers existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regularizer: Option<RegularizerConfig>,
}

impl TrainConfig {
    /// The method as the paper's tables name it, with its regulariser: `OPT (GS)`, `MHE (s=0)`
    /// (baseline + MHE), `UPT + HS-MHE (s=2)`.
    pub fn method_label(&self) -> String {
        match (&self.regularizer, &self.method) {
            (None, m) => m.paper_name(),
            (Some(r), MethodConfig::Baseline {}) => r.label(),
            (Some(r), m) => format!("{} + {}", m.paper_name(), r.label()),
        }
    }
}

/// How to run, without changing what is computed (not part of the cache key).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Write a checkpoint every this many iterations (0 = never).
    pub checkpoint_every: u64,
    pub eval_batch: usize,
    /// Checkpoint and stop after this many iterations (time-limited jobs); resumes next run.
    pub stop_after: Option<u64>,
    /// Refuse to start when a step's estimated memory exceeds what the machine has (CPU).
    pub memory_check: bool,
    /// Raised (by a signal handler) to checkpoint at the end of the current step and stop.
    pub interrupt: Interrupt,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 500,
            eval_batch: 500,
            stop_after: None,
            memory_check: true,
            interrupt: Interrupt::default(),
        }
    }
}

impl PartialEq for TrainOptions {
    /// The interrupt is a channel, not a setting: options compare by their settings.
    fn eq(&self, other: &Self) -> bool {
        (
            self.checkpoint_every,
            self.eval_batch,
            self.stop_after,
            self.memory_check,
        ) == (
            other.checkpoint_every,
            other.eval_batch,
            other.stop_after,
            other.memory_check,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainPoint {
    pub iteration: u64,
    pub lr: f64,
    pub loss: f64,
    pub acc: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub iteration: u64,
    pub loss: f64,
    pub top1: f64,
    /// `None` with fewer than 5 classes.
    #[serde(default)]
    pub top5: Option<f64>,
    /// Loss and top-1 on the validation split, when the data view carves one.
    #[serde(default)]
    pub val_loss: Option<f64>,
    #[serde(default)]
    pub val_top1: Option<f64>,
    /// Hyperspherical energy and orthogonality error per weight layer.
    #[serde(default)]
    pub layers: Vec<LayerMetrics>,
}

/// The evaluation chosen on the validation split: its iteration, validation top-1 and the test
/// top-1 of the same weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestPoint {
    pub iteration: u64,
    pub val_top1: f64,
    pub test_top1: f64,
}

/// Per-iteration training loss/accuracy and the periodic test evaluations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    pub train: Vec<TrainPoint>,
    pub eval: Vec<EvalPoint>,
}

/// Header of the per-layer metrics file (`layers.csv`).
pub const LAYER_COLUMNS: [&str; 9] = [
    "iteration",
    "layer",
    "energy_s0",
    "energy_s1",
    "energy_s2",
    "half_energy_s0",
    "half_energy_s1",
    "half_energy_s2",
    "orth_error",
];

impl Curves {
    pub fn push_eval(
        &mut self,
        iteration: u64,
        m: EvalMetrics,
        val: Option<EvalMetrics>,
        layers: Vec<LayerMetrics>,
    ) {
        self.eval.push(EvalPoint {
            iteration,
            loss: m.loss,
            top1: m.top1,
            top5: m.top5,
            val_loss: val.map(|v| v.loss),
            val_top1: val.map(|v| v.top1),
            layers,
        });
    }

    /// The evaluation with the best validation top-1 (the earliest among equals), with the
    /// test top-1 there; `None` without a validation split. Never chosen on test: that would
    /// report the test set's own maximum, an optimistic number.
    pub fn best_by_validation(&self) -> Option<BestPoint> {
        self.eval
            .iter()
            .filter_map(|p| p.val_top1.map(|v| (p, v)))
            .fold(None, |best: Option<(&EvalPoint, f64)>, (p, v)| match best {
                Some((_, b)) if b >= v => best,
                _ => Some((p, v)),
            })
            .map(|(p, v)| BestPoint {
                iteration: p.iteration,
                val_top1: v,
                test_top1: p.top1,
            })
    }

    /// Every layer's energies and orthogonality error at every evaluation, one row per
    /// (evaluation, layer), full precision.
    pub fn write_layers_csv(&self, path: &Path) -> Result<()> {
        let csv_err = |source| StageError::Csv {
            path: path.to_path_buf(),
            source,
        };
        let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
        w.write_record(LAYER_COLUMNS).map_err(csv_err)?;
        for e in &self.eval {
            for l in &e.layers {
                let mut row = vec![e.iteration.to_string(), l.layer.clone()];
                row.extend(
                    [
                        l.energy_s0,
                        l.energy_s1,
                        l.energy_s2,
                        l.half_energy_s0,
                        l.half_energy_s1,
                        l.half_energy_s2,
                    ]
                    .map(|v| v.to_string()),
                );
                row.push(l.orth_error.map(|v| v.to_string()).unwrap_or_default());
                w.write_record(&row).map_err(csv_err)?;
            }
        }
        w.flush().at(path)
    }

    /// One row per iteration (1-based: the number of completed steps); test columns are
    /// filled where an evaluation happened after that step. Numbers are written in full
    /// (Rust's shortest round-tripping form), so the file reads back to the same bits.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let csv_err = |source| StageError::Csv {
            path: path.to_path_buf(),
            source,
        };
        let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
        w.write_record([
            "iteration",
            "lr",
            "train_loss",
            "train_acc",
            "test_loss",
            "test_top1",
            "test_top5",
            "val_loss",
            "val_top1",
            "energy_s1",
            "orth_error",
        ])
        .map_err(csv_err)?;
        let evals: HashMap<u64, &EvalPoint> = self.eval.iter().map(|e| (e.iteration, e)).collect();
        let mut iterations: Vec<u64> = self.train.iter().map(|t| t.iteration).collect();
        iterations.extend(self.eval.iter().map(|e| e.iteration));
        iterations.sort_unstable();
        iterations.dedup();
        let trains: HashMap<u64, &TrainPoint> =
            self.train.iter().map(|t| (t.iteration, t)).collect();
        for it in iterations {
            let mut row = vec![it.to_string()];
            match trains.get(&it) {
                Some(t) => row.extend([t.lr.to_string(), t.loss.to_string(), t.acc.to_string()]),
                None => row.extend([String::new(), String::new(), String::new()]),
            }
            match evals.get(&it) {
                Some(e) => {
                    let (energy, orth) = summarize(&e.layers);
                    row.extend([
                        e.loss.to_string(),
                        e.top1.to_string(),
                        e.top5.map(|t| t.to_string()).unwrap_or_default(),
                        e.val_loss.map(|t| t.to_string()).unwrap_or_default(),
                        e.val_top1.map(|t| t.to_string()).unwrap_or_default(),
                        energy.map(|v| v.to_string()).unwrap_or_default(),
                        orth.map(|v| v.to_string()).unwrap_or_default(),
                    ]);
                }
                None => row.extend(std::iter::repeat_n(String::new(), 7)),
            }
            w.write_record(&row).map_err(csv_err)?;
        }
        w.flush().at(path)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub iterations: u64,
    pub batch_size: usize,
    pub epochs: f64,
    /// Seconds spent in training steps (batch assembly, forward, backward, update), all sessions.
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    pub final_train_loss: f64,
    pub resumed_from: Option<u64>,
    pub trainable_params: usize,
    pub fixed_params: usize,
    pub device: String,
}

pub enum TrainOutcome {
    Finished(TrainSummary),
    /// Stopped before the end, with a checkpoint the next run resumes from.
    Suspended(Suspension),
}

/// Why training stopped before its last iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspension {
    /// On request (`stop_after`), with a checkpoint at this iteration.
    Stopped(u64),
    /// By an interrupt `signal`, with a checkpoint at `iteration`.
    Interrupted { iteration: u64, signal: i32 },
}

/// The optimizers of a run: momentum SGD for everything trainable, except OGD's rotations,
/// which Cayley SGD updates with their own learning-rate schedule.
pub struct Optimizers {
    pub sgd: MomentumSgd,
    pub cayley: Option<(CayleySgd, PiecewiseLr)>,
}

impl Optimizers {
    pub fn new(cfg: &TrainConfig, store: &ParamStore) -> Result<Self> {
        let s = &cfg.schedule;
        let is_rotation = |e: &Entry| e.kind == Kind::Rotation;
        let ogd = cfg.method.is_ogd();
        let sgd = MomentumSgd::for_params(
            store,
            s.momentum,
            s.weight_decay * cfg.method.weight_decay_scale(),
            |e| !(ogd && is_rotation(e)),
        )?;
        let cayley = match &cfg.method {
            MethodConfig::Ogd {
                rotation_lr,
                rotation_lr_factor,
                ..
            } => Some((
                CayleySgd::new(store, s.momentum, is_rotation)?,
                PiecewiseLr {
                    base: *rotation_lr,
                    milestones: s.milestones.clone(),
                    factor: *rotation_lr_factor,
                },
            )),
            _ => None,
        };
        Ok(Self { sgd, cayley })
    }

    pub fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
        iteration: u64,
    ) -> Result<()> {
        self.sgd.step(grads, lr)?;
        if let Some((c, schedule)) = &mut self.cayley {
            c.step(grads, schedule.at(iteration))?;
        }
        Ok(())
    }

    /// Optimizer state by prefixed name (`momentum.*`, `cayley.*`), for checkpoints.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> = self
            .sgd
            .state()
            .into_iter()
            .map(|(k, v)| (format!("momentum.{k}"), v))
            .collect();
        if let Some((c, _)) = &self.cayley {
            out.extend(
                c.state()
                    .into_iter()
                    .map(|(k, v)| (format!("cayley.{k}"), v)),
            );
        }
        out
    }

    pub fn load_state(&self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.sgd.load_state(state, "momentum.")?;
        if let Some((c, _)) = &self.cayley {
            c.load_state(state, "cayley.")?;
        }
        Ok(())
    }
}

/// One training step: forward in training mode, backward, optimizer update.
/// Returns the batch loss (data loss plus any method penalty and regulariser) and the expected
/// number of correct top-1 predictions (before the update; ties count their share).
#[allow(clippy::too_many_arguments)]
pub fn step(
    model: &Network,
    optimizers: &mut Optimizers,
    loss_kind: LossKind,
    regularizer: Option<&RegularizerConfig>,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
    iteration: u64,
) -> Result<(f64, f64)> {
    let logits = model.forward(x, true)?;
    let mut l = loss(loss_kind, &logits, y)?;
    if let Some(p) = model.penalty()? {
        l = (l + p)?;
    }
    if let Some(r) = regularizer.map(|r| r.loss(model)).transpose()?.flatten() {
        l = (l + r)?;
    }
    let loss_value = l.to_scalar::<f32>()? as f64;
    // A non-finite loss is divergence, said as such (the lr is the usual cause), before NaN
    // logits reach the accuracy count or a NaN gradient reaches the weights.
    if !loss_value.is_finite() {
        return Err(StageError::Diverged {
            iteration,
            loss: loss_value,
        });
    }
    let grads = l.backward()?;
    optimizers.step(&grads, lr, iteration)?;
    Ok((loss_value, topk_correct(&logits, y, 1)?))
}

pub fn build_model(
    cfg: &TrainConfig,
    stats: &DatasetStats,
    device: &Device,
) -> Result<(Network, ParamStore)> {
    build(
        &cfg.model,
        &cfg.method,
        stats.shape,
        stats.classes,
        cfg.seed,
        device,
    )
}

/// The end of S-OPT episode `episode`: merge and re-sample every sparse layer (subsets drawn
/// from a stream that depends only on the seed and the episode, so resumes agree), reset the
/// small rotations' momentum unless the stale-momentum quirk is asked for, and reset the sparse
/// layers' BN γ/β if the BN quirk is.
fn end_sopt_episode(
    cfg: &TrainConfig,
    model: &Network,
    store: &ParamStore,
    optimizers: &Optimizers,
    episode: u64,
) -> Result<()> {
    let MethodConfig::Sopt {
        reset_bn,
        stale_momentum,
        ..
    } = &cfg.method
    else {
        return Ok(());
    };
    model.end_episode(&mut Rng::fork(cfg.seed, &format!("sopt-episode-{episode}")))?;
    if !stale_momentum {
        optimizers.sgd.reset(Kind::SparseRotation)?;
    }
    if *reset_bn {
        // The BN of the layers that are sparse (hold a small rotation): in CNN-6 every layer
        // but the input one, as the official name-based re-initialisation; in ResNet not the
        // plain projections either.
        let sparse: std::collections::HashSet<&str> = store
            .of_kind(Kind::SparseRotation)
            .map(Entry::layer)
            .collect();
        for e in store.of_kind(Kind::BnScale) {
            if sparse.contains(e.layer()) {
                e.var.set(&e.var.as_tensor().ones_like()?)?;
            }
        }
        for e in store.of_kind(Kind::BnShift) {
            if sparse.contains(e.layer()) {
                e.var.set(&e.var.as_tensor().zeros_like()?)?;
            }
        }
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct ResumeMeta {
    curves: Curves,
    train_seconds: f64,
    eval_seconds: f64,
}

/// What a periodic evaluation needs from the run.
struct Evaluator<'a> {
    model: &'a Network,
    data: &'a preprocess::Prepared,
    device: &'a Device,
    loss_kind: LossKind,
    batch: usize,
    progress: &'a dyn Progress,
}

impl Evaluator<'_> {
    /// One periodic evaluation after `done` steps: test (and validation) metrics and every
    /// layer's energies. Reads the weights only (BN in inference mode, no RNG), so a run trains
    /// the same with or without evaluations.
    fn record(&self, meta: &mut ResumeMeta, done: u64) -> Result<()> {
        let t1 = Instant::now();
        let data = self.data;
        let on = |split| {
            evaluate(
                self.model,
                split,
                &data.normalizer,
                self.loss_kind,
                self.batch,
                self.device,
            )
        };
        let m = on(&data.test)?;
        let val = data.validation.as_ref().map(on).transpose()?;
        let layers = layer_metrics(self.model)?;
        meta.eval_seconds += t1.elapsed().as_secs_f64();
        meta.curves.push_eval(done, m, val, layers);
        let val_note = val
            .map(|v| format!("; validation top-1 {:.4}", v.top1))
            .unwrap_or_default();
        self.progress.note(&format!(
            "iteration {done}: test {}{val_note}",
            m.describe()
        ));
        Ok(())
    }
}

fn status(loss: f64, acc: f64, images_per_sec: f64) -> String {
    format!("loss {loss:.4} acc {acc:.3} {images_per_sec:.0} img/s")
}

pub fn run(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    prepared_dir: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<TrainOutcome> {
    let data = preprocess::load(prepared_dir, &cfg.data)?;
    let device = cfg.device.open()?;
    if opts.memory_check && device.is_cpu() {
        if let Some(available) = available_memory() {
            let need = step_memory(
                &cfg.model,
                &cfg.method,
                data.stats.shape,
                data.stats.classes,
                cfg.schedule.batch_size,
            );
            check_step_memory(need, available)?;
        }
    }
    let (model, store) = build_model(cfg, &data.stats, &device)?;
    if let Some(r) = &cfg.regularizer {
        r.check_layers(&model)?;
    }
    let s = &cfg.schedule;
    let mut optimizers = Optimizers::new(cfg, &store)?;
    let mut sampler = Sampler::new(data.train.len(), s.batch_size, Rng::fork(cfg.seed, "data"))?;
    let iterations = s.length.iterations(sampler.batches_per_epoch());
    let schedule = PiecewiseLr {
        base: s.lr,
        milestones: s.milestones.clone(),
        factor: s.lr_factor,
    };
    let loss_kind = cfg.loss.kind();
    let sopt_episode = match &cfg.method {
        MethodConfig::Sopt { episode_length, .. } if *episode_length > 0 => Some(*episode_length),
        _ => None,
    };
    write_json(&out.join(CONFIG_FILE), cfg)?;

    let ckpt_dir = out.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&ckpt_dir).at(&ckpt_dir)?;
    let ckpt = ckpt_dir.join(CHECKPOINT_FILE);
    let mut meta = ResumeMeta {
        curves: Curves::default(),
        train_seconds: 0.0,
        eval_seconds: 0.0,
    };
    let mut start = 0;
    let mut resumed_from = None;
    if let Some((iteration, restored)) =
        restore_checkpoint(&ckpt, &store, &optimizers, &mut sampler, progress)?
    {
        meta = restored;
        start = iteration;
        resumed_from = Some(start);
        progress.note(&format!(
            "resuming from checkpoint at iteration {start}/{iterations}"
        ));
    }
    let save_checkpoint =
        |meta: &ResumeMeta, optimizers: &Optimizers, sampler: &Sampler, done: u64| -> Result<()> {
            let text = serde_json::to_string(meta).map_err(|source| StageError::Json {
                path: ckpt.clone(),
                source,
            })?;
            let md = HashMap::from([(checkpoint::META_CURVES.to_string(), text)]);
            checkpoint::save(&ckpt, &store, optimizers, sampler, done, md)
        };

    // The initial network, so curves start where training starts (not on resume: the
    // checkpoint's curves already hold it).
    let evaluator = Evaluator {
        model: &model,
        data: &data,
        device: &device,
        loss_kind,
        batch: opts.eval_batch,
        progress,
    };
    if start == 0 && s.eval_every > 0 && iterations > 0 {
        evaluator.record(&mut meta, 0)?;
    }
    progress.begin("train", iterations);
    progress.update(start, "");
    let _honoured = opts.interrupt.honoured_while();
    let session_train_start = meta.train_seconds;
    for i in start..iterations {
        let t0 = Instant::now();
        let lr = schedule.at(i);
        // S-OPT reshuffles at the start of each episode (and every pass within it).
        let data_iteration = match sopt_episode {
            Some(ep) => i % ep,
            None => i,
        };
        let (x, y) = sampler.batch(
            data_iteration,
            &data.train,
            &cfg.augment,
            &data.normalizer,
            &device,
        )?;
        let (loss_v, correct) = step(
            &model,
            &mut optimizers,
            loss_kind,
            cfg.regularizer.as_ref(),
            &x,
            &y,
            lr,
            i,
        )?;
        let acc = correct / s.batch_size as f64;
        meta.train_seconds += t0.elapsed().as_secs_f64();
        let done = i + 1;
        meta.curves.train.push(TrainPoint {
            iteration: done,
            lr,
            loss: loss_v,
            acc,
        });
        if s.eval_every > 0 && done % s.eval_every == 0 && done < iterations {
            evaluator.record(&mut meta, done)?;
        }
        if let Some(ep) = sopt_episode {
            if done % ep == 0 && done < iterations {
                end_sopt_episode(cfg, &model, &store, &optimizers, done / ep)?;
            }
        }
        let session_steps = (done - start) as f64;
        let ips = session_steps * s.batch_size as f64
            / (meta.train_seconds - session_train_start).max(1e-9);
        progress.update(done, &status(loss_v, acc, ips));
        let stop_here = opts.stop_after == Some(done) && done < iterations;
        if done < iterations
            && (stop_here || (opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0))
        {
            save_checkpoint(&meta, &optimizers, &sampler, done)?;
        }
        if stop_here {
            progress.end();
            progress.note(&format!(
                "stopped after iteration {done}; checkpoint written"
            ));
            return Ok(TrainOutcome::Suspended(Suspension::Stopped(done)));
        }
        if let Some(signal) = opts.interrupt.requested().filter(|_| done < iterations) {
            save_checkpoint(&meta, &optimizers, &sampler, done)?;
            progress.end();
            return Ok(TrainOutcome::Suspended(Suspension::Interrupted {
                iteration: done,
                signal,
            }));
        }
    }
    progress.end();

    checkpoint::save_model(&out.join(MODEL_FILE), &store)?;
    write_json(&out.join(CURVES_FILE), &meta.curves)?;
    let steps = iterations.max(1) as f64;
    let summary = TrainSummary {
        iterations,
        batch_size: s.batch_size,
        epochs: iterations as f64 * s.batch_size as f64 / data.train.len() as f64,
        train_seconds: meta.train_seconds,
        eval_seconds: meta.eval_seconds,
        images_per_sec: steps * s.batch_size as f64 / meta.train_seconds.max(1e-9),
        ms_per_step: 1e3 * meta.train_seconds / steps,
        final_train_loss: meta.curves.train.last().map(|t| t.loss).unwrap_or(f64::NAN),
        resumed_from,
        trainable_params: store.count(|r| matches!(r, Role::Trainable { .. })),
        fixed_params: store.count(|r| matches!(r, Role::Fixed { .. })),
        device: cfg.device.to_string(),
    };
    write_json(&out.join(SUMMARY_FILE), &summary)?;
    std::fs::remove_dir_all(&ckpt_dir).at(&ckpt_dir)?;
    Ok(TrainOutcome::Finished(summary))
}

/// Restores the newest readable checkpoint (`last`, else `previous`) into the model, the
/// optimizers and the sampler; `None` when there is none to resume from. An unreadable one is
/// kept aside as `*.corrupt`, with a warning, and the next one tried: a truncated checkpoint
/// must not block every later run.
fn restore_checkpoint(
    ckpt: &Path,
    store: &ParamStore,
    optimizers: &Optimizers,
    sampler: &mut Sampler,
    progress: &dyn Progress,
) -> Result<Option<(u64, ResumeMeta)>> {
    let candidates = [ckpt.to_path_buf(), checkpoint::previous_of(ckpt)];
    let mut skipped = false;
    for path in candidates.iter().filter(|p| p.is_file()) {
        let read = checkpoint::read(path).and_then(|snapshot| {
            let meta = resume_meta(path, &snapshot)?;
            Ok((snapshot, meta))
        });
        match read {
            Ok((snapshot, meta)) => {
                let iteration = snapshot.apply(store, optimizers, sampler)?;
                if skipped {
                    progress.warn(&format!(
                        "resuming from the previous checkpoint {} (iteration {iteration})",
                        path.display()
                    ));
                }
                return Ok(Some((iteration, meta)));
            }
            Err(e) => {
                let aside = path.with_extension("safetensors.corrupt");
                progress.warn(&format!(
                    "{e}; kept aside as {} and not used",
                    aside.display()
                ));
                std::fs::rename(path, &aside).at(&aside)?;
                skipped = true;
            }
        }
    }
    if skipped {
        progress.warn("no readable checkpoint left: training starts from iteration 0");
    }
    Ok(None)
}

fn resume_meta(path: &Path, snapshot: &checkpoint::Snapshot) -> Result<ResumeMeta> {
    let text = snapshot
        .metadata
        .get(checkpoint::META_CURVES)
        .ok_or_else(|| crate::error::format_err(path, "checkpoint has no curves"))?;
    serde_json::from_str(text).map_err(|source| StageError::Json {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load_summary(dir: &Path) -> Result<TrainSummary> {
    read_json(&dir.join(SUMMARY_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sopt_config(reset_bn: bool) -> TrainConfig {
        serde_json::from_value(serde_json::json!({
            "augment": { "flip": false, "pad": 0 },
            "data": { "normalization": "official", "test_limit": null, "train_limit": null,
                      "validation": 0, "validation_seed": 0 },
            "device": "cpu",
            "loss": { "kind": "official", "label_smoothing": 0.01, "log_floor": 0.0001 },
            "method": { "name": "sopt", "base": "gs", "budget_channels": 2, "episode_length": 10,
                        "reset_bn": reset_bn, "stale_momentum": false },
            "model": { "arch": "cnn6", "bn_decay": 0.9, "bn_eps": 0.001, "fc6_width": null,
                       "width": 4, "widths": null },
            "schedule": { "batch_size": 8, "eval_every": 0, "length": { "iterations": 20 },
                          "lr": 0.05, "lr_factor": 0.1, "milestones": [], "momentum": 0.9,
                          "weight_decay": 0.0005 },
            "seed": 3
        }))
        .expect("a valid train config")
    }

    /// The official S-OPT quirk re-initialises γ/β of the sparse layers' BN at each episode
    /// end, and only theirs: the dense input layer `conv1_0` keeps its values; without the
    /// quirk nothing is touched.
    #[test]
    fn reset_bn_reinitialises_exactly_the_sparse_layers_bn() -> Result<()> {
        for reset_bn in [true, false] {
            let cfg = sopt_config(reset_bn);
            let (model, store) = build(
                &cfg.model,
                &cfg.method,
                (1, 28, 28),
                10,
                cfg.seed,
                &Device::Cpu,
            )?;
            let optimizers = Optimizers::new(&cfg, &store)?;
            let bn: Vec<String> = store
                .entries()
                .iter()
                .filter(|e| matches!(e.kind, Kind::BnScale | Kind::BnShift))
                .map(|e| e.name.clone())
                .collect();
            assert_eq!(bn.len(), 12, "{bn:?}");
            for e in store.entries() {
                if bn.contains(&e.name) {
                    e.var.set(&(e.var.as_tensor().ones_like()? * 2.5)?)?;
                }
            }
            end_sopt_episode(&cfg, &model, &store, &optimizers, 1)?;
            for e in store.entries().iter().filter(|e| bn.contains(&e.name)) {
                let values: Vec<f32> = e.var.as_tensor().to_vec1()?;
                let reset = reset_bn && !e.name.starts_with("conv1_0.");
                let expected = match (reset, e.kind == Kind::BnScale) {
                    (false, _) => 2.5,
                    (true, true) => 1.0,
                    (true, false) => 0.0,
                };
                assert!(
                    values.iter().all(|&v| v == expected),
                    "reset_bn = {reset_bn}: {} = {values:?}, expected {expected}",
                    e.name
                );
            }
        }
        Ok(())
    }
}
