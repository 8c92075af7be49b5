//! Train: the official training protocol (spec §5) on any device candle offers.
//!
//! Momentum SGD with L2 decay, piecewise-constant learning rate, the official loss, BN with
//! batch statistics, per-image augmentation, the official batching; periodic test evaluations;
//! checkpoints every N iterations into the stage's (resumable) staging directory. A run that
//! finds a checkpoint there continues from it and ends with exactly the weights an
//! uninterrupted run would have.
//!
//! The configuration is [`crate::training::train_config`], the artifact's files and record
//! [`crate::training::train_artifact`]; this module is the loop, a [`Trainer`] whose methods are the
//! protocol's concerns (resume, step, evaluation, S-OPT episodes, progress, checkpoint
//! cadence, stop and interrupt, finish).

use crate::data::batches::{HostBatch, Sampler};
use crate::data::preprocess::{self, Prepared};
use crate::error::{write_json, IoContext};
use crate::progress::Progress;
use crate::training::checkpoint::{self, RunRecord};
use crate::training::device::open_checked;
use crate::training::evaluation::evaluate_view;
use crate::training::interrupt::Interrupt;
use crate::training::method::Episodes;
use crate::training::optimizers::Optimizers;
use crate::training::regularizer::RegularizerConfig;
use crate::training::tracking::{Tracker, Tracking};
use crate::training::train_artifact::{
    SessionRoutes, TrainPoint, TrainSummary, CHECKPOINT_DIR, CHECKPOINT_FILE, CONFIG_FILE,
    CURVES_FILE, MODEL_FILE, SUMMARY_FILE,
};
use crate::training::train_config::{build_model, TrainConfig};
use crate::{Result, StageError};
use candle_core::{Device, Tensor};
use opt_core::loss::{loss, LossKind};
use opt_core::metrics::topk_correct_on_device;
use opt_core::ops::routes::DeviceRoutes;
use opt_core::{Entry, Kind, Network, ParamStore, PiecewiseLr, Rng, Role};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// 2: evaluations at iteration 0 and on the validation split; top-k ties counted by their
/// share.
pub const FORMAT_VERSION: u32 = 2;

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
    /// Who watches the run (TensorBoard, MLflow): told every point the run records.
    pub tracking: Tracking,
}

impl TrainOptions {
    /// Images per evaluation batch unless a recipe says otherwise.
    pub const DEFAULT_EVAL_BATCH: NonZeroUsize = NonZeroUsize::new(500).unwrap();
}

impl Default for TrainOptions {
    /// A checkpoint every 500 iterations, evaluations in batches of 500, the memory check on.
    fn default() -> Self {
        Self {
            checkpoint_every: 500,
            eval_batch: Self::DEFAULT_EVAL_BATCH.get(),
            stop_after: None,
            memory_check: true,
            interrupt: Interrupt::default(),
            tracking: Tracking::default(),
        }
    }
}

impl PartialEq for TrainOptions {
    /// The interrupt and the tracking are channels, not settings: options compare by their
    /// settings.
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

/// How a run ended.
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

/// One training step: forward in training mode, backward, optimizer update, and the results
/// read back (a wait for the device: the trainer uses [`step_on_device`] and reads in batches).
/// Returns the batch loss (data loss plus any method penalty and regulariser) and the expected
/// number of correct top-1 predictions (before the update; ties count their share); a
/// non-finite loss is [`StageError::Diverged`] and the model is then not to be used.
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
    let point = step_on_device(
        model,
        optimizers,
        loss_kind,
        regularizer,
        x,
        y,
        lr,
        iteration,
    )?;
    let loss = point.loss.to_scalar::<f32>()? as f64;
    let correct = point.correct.to_scalar::<f64>()?;
    // A non-finite loss (or NaN logits) is divergence, said as such: the lr is the usual cause.
    if !loss.is_finite() || correct.is_nan() {
        return Err(StageError::Diverged { iteration, loss });
    }
    Ok((loss, correct))
}

/// The data loss plus any method penalty and regulariser.
fn total_loss(
    model: &Network,
    loss_kind: LossKind,
    regularizer: Option<&RegularizerConfig>,
    logits: &Tensor,
    y: &Tensor,
) -> Result<Tensor> {
    let mut l = loss(loss_kind, logits, y)?;
    if let Some(p) = model.penalty()? {
        l = (l + p)?;
    }
    if let Some(r) = regularizer.map(|r| r.loss(model)).transpose()?.flatten() {
        l = (l + r)?;
    }
    Ok(l)
}

/// A step's loss and top-1 count, still where the step ran (read at the next flush).
struct PendingPoint {
    iteration: u64,
    lr: f64,
    loss: Tensor,
    correct: Tensor,
}

/// [`step`] without host reads: the loss and the top-1 count stay on the device, so a GPU
/// never waits for the host between steps. The trainer reads them in batches ([`Trainer`]'s
/// flush), where a non-finite loss is reported as divergence at its own iteration.
#[allow(clippy::too_many_arguments)]
fn step_on_device(
    model: &Network,
    optimizers: &mut Optimizers,
    loss_kind: LossKind,
    regularizer: Option<&RegularizerConfig>,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
    iteration: u64,
) -> Result<PendingPoint> {
    let logits = model.forward(x, true)?;
    let l = total_loss(model, loss_kind, regularizer, &logits, y)?;
    let grads = l.backward()?;
    optimizers.step(&grads, lr, iteration)?;
    Ok(PendingPoint {
        iteration: iteration + 1,
        lr,
        loss: l.detach(),
        correct: topk_correct_on_device(&logits.detach(), y, 1)?,
    })
}

/// The end of episode `episode` (S-OPT, POET): merge and re-sample every layer that has
/// episodes (subsets drawn from a stream that depends only on the seed and the episode, so
/// resumes agree), reset the small rotations' momentum unless the method keeps it (S-OPT's
/// stale-momentum quirk), and reset the sparse layers' BN γ/β if it asks (S-OPT's BN quirk).
fn end_episode(
    cfg: &TrainConfig,
    model: &Network,
    store: &ParamStore,
    optimizers: &Optimizers,
    episode: u64,
) -> Result<()> {
    let Some(episodes) = cfg.method.method().episodes() else {
        return Ok(());
    };
    let stream = format!("{}-{episode}", episodes.stream);
    model.end_episode(&mut Rng::fork(cfg.seed, &stream))?;
    if let Some(kind) = episodes.reset_momentum {
        optimizers.sgd.reset(kind)?;
    }
    if episodes.reset_bn {
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

/// Trains `cfg` on the decoded data in `prepared_dir` into `out`, resuming from a checkpoint
/// there if one is readable.
pub fn run(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    prepared_dir: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<TrainOutcome> {
    Trainer::new(cfg, opts, prepared_dir, out, progress)?.train()
}

/// One training run: the model, its optimizers and data stream, and what the run has recorded,
/// with each concern of the protocol a method (burn's `Learner` as the model).
struct Trainer<'a> {
    cfg: &'a TrainConfig,
    opts: &'a TrainOptions,
    progress: &'a dyn Progress,
    out: &'a Path,
    data: Prepared,
    device: Device,
    model: Network,
    store: ParamStore,
    optimizers: Optimizers,
    sampler: Sampler,
    schedule: PiecewiseLr,
    loss_kind: LossKind,
    iterations: u64,
    /// The method's episodes (S-OPT, POET), if it has any.
    episodes: Option<Episodes>,
    /// The checkpoint file (`checkpoints/last.safetensors`).
    checkpoint: PathBuf,
    record: RunRecord,
    /// The iteration this session starts at: 0, or the checkpoint's.
    start: u64,
    resumed_from: Option<u64>,
    /// Steps whose loss and top-1 count have not been read from the device yet.
    pending: Vec<PendingPoint>,
    last_flush: Instant,
    /// The next step's batch, built by a worker thread during this step.
    next_batch: Option<HostBatch>,
    /// The sampler as of the batch of the last step (the live one has drawn the next batch
    /// already): what a checkpoint after that step stores.
    sampler_at_step: Option<Sampler>,
    /// The device's routes as its self-check installed them; map fallbacks are drained from it
    /// after every step.
    routes: Arc<DeviceRoutes>,
    /// The iteration and training seconds of the last throughput report to the tracking.
    rate_mark: (u64, f64),
}

/// How often the trainer reads the pending steps' losses from the device (and updates the
/// progress bar) at the latest: every step on a CPU (steps are slower than this), every few
/// hundred on a GPU.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

impl<'a> Trainer<'a> {
    /// Loads the data view, checks the step fits in memory, builds the model, its optimizers
    /// and data stream, and writes the config into `out`.
    fn new(
        cfg: &'a TrainConfig,
        opts: &'a TrainOptions,
        prepared_dir: &Path,
        out: &'a Path,
        progress: &'a dyn Progress,
    ) -> Result<Self> {
        let data = preprocess::load(prepared_dir, &cfg.data)?;
        let (device, checked) =
            open_checked(cfg.device, cfg.ops, cfg.map_route, &|w| progress.warn(w))?;
        // A process-wide switch of candle's CUDA matmuls (a no-op on the CPU): set for every run
        // so one recipe's TF32 never leaks into the next run of the same process.
        candle_core::cuda::set_gemm_reduced_precision_f32(cfg.tf32);
        if opts.memory_check {
            cfg.check_memory(data.stats.shape, data.stats.classes, &device)?;
        }
        let (model, store) = build_model(cfg, &data.stats, &device)?;
        if let Some(r) = &cfg.regularizer {
            r.check_layers(&model)?;
        }
        let s = &cfg.schedule;
        let optimizers = Optimizers::new(cfg, &store)?;
        let sampler = Sampler::new(data.train.len(), s.batch_size, Rng::fork(cfg.seed, "data"))?;
        let iterations = s.length.iterations(sampler.batches_per_epoch());
        let schedule = PiecewiseLr {
            base: s.lr,
            milestones: s.milestones.clone(),
            factor: s.lr_factor,
        };
        let episodes = cfg.method.method().episodes();
        write_json(&out.join(CONFIG_FILE), cfg)?;
        let ckpt_dir = out.join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&ckpt_dir).at(&ckpt_dir)?;
        Ok(Self {
            cfg,
            opts,
            progress,
            out,
            data,
            device,
            model,
            store,
            optimizers,
            sampler,
            schedule,
            loss_kind: cfg.loss.kind(),
            iterations,
            episodes,
            checkpoint: ckpt_dir.join(CHECKPOINT_FILE),
            record: RunRecord::default(),
            start: 0,
            resumed_from: None,
            pending: Vec::new(),
            last_flush: Instant::now(),
            next_batch: None,
            sampler_at_step: None,
            routes: checked.routes,
            rate_mark: (0, 0.0),
        })
    }

    /// The whole run: resume, the initial evaluation, the steps with everything due after
    /// each, and the finish — or a suspension with a checkpoint.
    fn train(mut self) -> Result<TrainOutcome> {
        self.resume()?;
        self.record.routes.sessions.push(SessionRoutes {
            from: self.start,
            ops: self.routes.ops_label(),
            map_route: self
                .cfg
                .method
                .orth_map()
                .map_or_else(|| "none".to_string(), |m| self.routes.map_label(m)),
        });
        self.rate_mark = (self.start, self.record.train_seconds);
        self.opts.tracking.begin(self.start, &self.record.curves);
        // The initial network, so curves start where training starts (not on resume: the
        // checkpoint's curves already hold it).
        if self.start == 0 && self.cfg.schedule.eval_every > 0 && self.iterations > 0 {
            self.evaluate(0)?;
        }
        self.progress.begin("train", self.iterations);
        self.progress.update(self.start, "");
        let _honoured = self.opts.interrupt.honoured_while();
        let session_seconds = self.record.train_seconds;
        for i in self.start..self.iterations {
            if let Err(e) = self.step(i) {
                // Weights a diverged step made non-finite fail later steps in other ways (a
                // map refuses a NaN matrix): the divergence is the cause to report.
                return Err(self.flush().err().unwrap_or(e));
            }
            let done = i + 1;
            self.note_map_fallbacks(done);
            let evaluating = self.evaluation_due(done);
            if evaluating || self.last_flush.elapsed() >= FLUSH_INTERVAL {
                self.flush()?;
                if let Some(point) = self.record.curves.train.last().copied() {
                    self.show_progress(&point, session_seconds);
                }
            }
            if evaluating {
                self.evaluate(done)?;
            }
            self.end_episode_if_due(done)?;
            if let Some(suspension) = self.checkpoint_or_suspend(done)? {
                return Ok(TrainOutcome::Suspended(suspension));
            }
        }
        self.flush()?;
        self.report_throughput(self.iterations);
        self.progress.end();
        self.finish().map(TrainOutcome::Finished)
    }

    /// Continues from the newest readable checkpoint, if there is one.
    fn resume(&mut self) -> Result<()> {
        let restored = checkpoint::restore_run(
            &self.checkpoint,
            &self.store,
            &self.optimizers,
            &mut self.sampler,
            self.iterations,
            self.progress,
        )?;
        if let Some((iteration, record)) = restored {
            self.record = record;
            self.start = iteration;
            self.resumed_from = Some(iteration);
            self.progress.note(&format!(
                "resuming from checkpoint at iteration {iteration}/{}",
                self.iterations
            ));
        }
        Ok(())
    }

    /// The sampler's iteration for step `i`: S-OPT reshuffles at the start of each episode
    /// (and every pass within it).
    fn data_iteration(&self, i: u64) -> u64 {
        match self.episodes {
            Some(ep) if ep.restart_data => i % ep.length,
            _ => i,
        }
    }

    /// Step `i` (0-based) on its batch, timed; its loss and top-1 count join the pending
    /// points. A worker thread builds the next step's batch meanwhile (the same draws in the
    /// same order as building it afterwards, so results do not change).
    fn step(&mut self, i: u64) -> Result<()> {
        let t0 = Instant::now();
        let lr = self.schedule.at(i);
        let batch = match self.next_batch.take() {
            Some(b) => b,
            None => self.sampler.host_batch(
                self.data_iteration(i),
                &self.data.train,
                &self.cfg.augment,
                &self.data.normalizer,
            ),
        };
        let (x, y) = batch.to_device(&self.device)?;
        let prefetch = i + 1 < self.iterations;
        self.sampler_at_step = prefetch.then(|| self.sampler.clone());
        let next_iteration = self.data_iteration(i + 1);
        let Self {
            cfg,
            data,
            sampler,
            model,
            optimizers,
            loss_kind,
            ..
        } = self;
        let (data, cfg, kind) = (&*data, *cfg, *loss_kind);
        let (point, next) = std::thread::scope(|scope| {
            let worker = prefetch.then(|| {
                scope.spawn(move || {
                    sampler.host_batch(next_iteration, &data.train, &cfg.augment, &data.normalizer)
                })
            });
            let point = step_on_device(
                model,
                optimizers,
                kind,
                cfg.regularizer.as_ref(),
                &x,
                &y,
                lr,
                i,
            );
            (point, worker.map(|w| w.join()))
        });
        self.next_batch = match next {
            Some(Ok(b)) => Some(b),
            Some(Err(_)) => {
                return Err(StageError::Internal(
                    "the batch-building thread panicked".into(),
                ))
            }
            None => None,
        };
        self.pending.push(point?);
        self.record.train_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Warns of every map batch a gemm route could not finish since the last step (the exact
    /// route computed it) and counts it in the record, the first with its reason and step.
    fn note_map_fallbacks(&mut self, done: u64) {
        for f in self.routes.take_fallbacks() {
            let what = format!(
                "{} ({}) at step {done}: {}",
                f.map.name(),
                f.route.name(),
                f.reason
            );
            self.progress
                .warn(&format!("map {what}; the exact route computed this batch"));
            self.record.routes.fallbacks += 1;
            self.record.routes.first_fallback.get_or_insert(what);
        }
    }

    /// Reads the pending steps' losses and top-1 counts from the device (one transfer each)
    /// into the curves; the first non-finite loss is divergence at its own iteration.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let read = |values: Vec<Tensor>| -> Result<Vec<f64>> {
            let stacked = Tensor::stack(&values, 0)?;
            Ok(stacked
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?)
        };
        let losses = read(pending.iter().map(|p| p.loss.clone()).collect())?;
        let corrects = read(pending.iter().map(|p| p.correct.clone()).collect())?;
        let batch = self.cfg.schedule.batch_size as f64;
        let first_new = self.record.curves.train.len();
        for ((p, loss), correct) in pending.iter().zip(losses).zip(corrects) {
            if !loss.is_finite() || correct.is_nan() {
                return Err(StageError::Diverged {
                    iteration: p.iteration - 1,
                    loss,
                });
            }
            self.record.curves.train.push(TrainPoint {
                iteration: p.iteration,
                lr: p.lr,
                loss,
                acc: correct / batch,
            });
        }
        let tracking = &self.opts.tracking;
        tracking.train_points(&self.record.curves.train[first_new..]);
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Whether a periodic evaluation follows step `done` (the last one is the evaluate
    /// stage's).
    fn evaluation_due(&self, done: u64) -> bool {
        let every = self.cfg.schedule.eval_every;
        every > 0 && done.is_multiple_of(every) && done < self.iterations
    }

    /// One periodic evaluation after `done` steps, recorded in the curves.
    fn evaluate(&mut self, done: u64) -> Result<()> {
        let t1 = Instant::now();
        let e = evaluate_view(
            &self.model,
            &self.data,
            self.loss_kind,
            self.opts.eval_batch,
            &self.device,
        )?;
        self.record.eval_seconds += t1.elapsed().as_secs_f64();
        let val_note = e
            .validation
            .map(|v| format!("; validation top-1 {:.4}", v.top1))
            .unwrap_or_default();
        let note = format!("iteration {done}: test {}{val_note}", e.test.describe());
        self.record.curves.push_eval(done, e);
        if let Some(point) = self.record.curves.eval.last() {
            self.opts.tracking.evaluation(point);
        }
        self.report_throughput(done);
        self.progress.note(&note);
        Ok(())
    }

    /// Tells the tracking the images per second trained since the last report (none when no
    /// step ran since).
    fn report_throughput(&mut self, done: u64) {
        let (iteration, seconds) = self.rate_mark;
        let elapsed = self.record.train_seconds - seconds;
        if done > iteration && elapsed > 0.0 {
            let images = (done - iteration) as f64 * self.cfg.schedule.batch_size as f64;
            self.opts.tracking.throughput(done, images / elapsed);
            self.rate_mark = (done, self.record.train_seconds);
        }
    }

    /// Ends an episode (S-OPT, POET) when step `done` completes one (and is not the last step).
    fn end_episode_if_due(&self, done: u64) -> Result<()> {
        match self.episodes.map(|e| e.length) {
            Some(ep) if done.is_multiple_of(ep) && done < self.iterations => end_episode(
                self.cfg,
                &self.model,
                &self.store,
                &self.optimizers,
                done / ep,
            ),
            _ => Ok(()),
        }
    }

    /// The bar's position and status after `point`, with this session's throughput.
    fn show_progress(&self, point: &TrainPoint, session_seconds: f64) {
        let session_steps = (point.iteration - self.start) as f64;
        let ips = session_steps * self.cfg.schedule.batch_size as f64
            / (self.record.train_seconds - session_seconds).max(1e-9);
        self.progress
            .update(point.iteration, &status(point.loss, point.acc, ips));
    }

    /// After step `done` (not the last): a checkpoint when the cadence, a requested stop or an
    /// interrupt asks for one, and the suspension when the run stops here.
    fn checkpoint_or_suspend(&mut self, done: u64) -> Result<Option<Suspension>> {
        if done >= self.iterations {
            return Ok(None);
        }
        let every = self.opts.checkpoint_every;
        let stop_here = self.opts.stop_after == Some(done);
        if stop_here || (every > 0 && done.is_multiple_of(every)) {
            self.save_checkpoint(done)?;
        }
        if stop_here {
            self.progress.end();
            self.progress.note(&format!(
                "stopped after iteration {done}; checkpoint written"
            ));
            return Ok(Some(Suspension::Stopped(done)));
        }
        if let Some(signal) = self.opts.interrupt.requested() {
            self.save_checkpoint(done)?;
            self.progress.end();
            return Ok(Some(Suspension::Interrupted {
                iteration: done,
                signal,
            }));
        }
        Ok(None)
    }

    /// A checkpoint after step `done`, with every pending point read first (so it never holds
    /// the weights of a diverged run) and the sampler as of that step's batch.
    fn save_checkpoint(&mut self, done: u64) -> Result<()> {
        self.flush()?;
        checkpoint::save_run(
            &self.checkpoint,
            &self.store,
            &self.optimizers,
            self.sampler_at_step.as_ref().unwrap_or(&self.sampler),
            done,
            &self.record,
        )
    }

    /// Writes the artifact (model, curves, summary) and removes the checkpoints.
    fn finish(self) -> Result<TrainSummary> {
        let (s, out, record) = (&self.cfg.schedule, self.out, &self.record);
        crate::training::model_file::save_model(&out.join(MODEL_FILE), &self.store)?;
        write_json(&out.join(CURVES_FILE), &record.curves)?;
        let iterations = self.iterations;
        let steps = iterations.max(1) as f64;
        let summary = TrainSummary {
            iterations,
            batch_size: s.batch_size,
            epochs: iterations as f64 * s.batch_size as f64 / self.data.train.len() as f64,
            train_seconds: record.train_seconds,
            eval_seconds: record.eval_seconds,
            images_per_sec: steps * s.batch_size as f64 / record.train_seconds.max(1e-9),
            ms_per_step: 1e3 * record.train_seconds / steps,
            final_train_loss: record
                .curves
                .train
                .last()
                .map(|t| t.loss)
                .unwrap_or(f64::NAN),
            resumed_from: self.resumed_from,
            trainable_params: self.store.count(|r| matches!(r, Role::Trainable { .. })),
            fixed_params: self.store.count(|r| matches!(r, Role::Fixed { .. })),
            device: self.cfg.device.to_string(),
            ops: record.routes.ops_label(),
            map_route: record.routes.map_label(),
        };
        write_json(&out.join(SUMMARY_FILE), &summary)?;
        let ckpt_dir = out.join(CHECKPOINT_DIR);
        std::fs::remove_dir_all(&ckpt_dir).at(&ckpt_dir)?;
        Ok(summary)
    }
}

fn status(loss: f64, acc: f64, images_per_sec: f64) -> String {
    format!("loss {loss:.4} acc {acc:.3} {images_per_sec:.0} img/s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::model::build;

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
            end_episode(&cfg, &model, &store, &optimizers, 1)?;
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
