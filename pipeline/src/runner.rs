//! Stage scheduling: runs fetch → preprocess → train → evaluate through the artifact store,
//! then writes the report into the run directory.

use crate::plan::{Keys, Plan};
use crate::store::{ArtifactStore, Outcome, StageSpec};
use anyhow::{bail, Context, Result};
use opt_stages::progress::Progress;
use opt_stages::report::{self, ResultRow};
use opt_stages::train::TrainOutcome;
use opt_stages::{evaluate, fetch, preprocess, train};
use std::path::{Path, PathBuf};

pub struct RunContext<'a> {
    pub store: &'a ArtifactStore,
    pub run_dir: PathBuf,
    pub progress: &'a dyn Progress,
    /// Checkpoint and stop the train stage after this many iterations.
    pub stop_after: Option<u64>,
}

pub enum RunResult {
    Finished { rows: Vec<ResultRow>, trained: bool },
    Stopped { iteration: u64 },
}

fn short(key: &str) -> &str {
    &key[..12.min(key.len())]
}

fn log_outcome<T>(stage: &str, key: &str, outcome: &Outcome<T>) {
    match outcome {
        Outcome::Cached(_) => tracing::info!("{stage}: cached artifact {} re-used", short(key)),
        Outcome::Built(dir, _) => {
            tracing::info!("{stage}: built artifact {} ({})", short(key), dir.display())
        }
    }
}

pub fn run(plan: &Plan, ctx: &RunContext<'_>) -> Result<RunResult> {
    let keys: Keys = plan.keys()?;
    let store = ctx.store;
    let p = ctx.progress;

    let fetched = store.get_or_build(
        StageSpec {
            stage: "fetch",
            key: &keys.fetch,
            format_version: fetch::FORMAT_VERSION,
            config: &plan.fetch,
            inputs: vec![],
            // Keeps a cut download's `.part` file for the next run to resume.
            resumable: true,
        },
        |out| Ok(fetch::run(&plan.fetch, out, p)?),
    )?;
    log_outcome("fetch", &keys.fetch, &fetched);

    let prepared = store.get_or_build(
        StageSpec {
            stage: "preprocess",
            key: &keys.preprocess,
            format_version: preprocess::FORMAT_VERSION,
            config: &plan.preprocess,
            inputs: vec![keys.fetch.clone()],
            resumable: false,
        },
        |out| Ok(preprocess::run(&plan.preprocess, fetched.dir(), out, p)?),
    )?;
    log_outcome("preprocess", &keys.preprocess, &prepared);

    let mut options = plan.train_options.clone();
    options.stop_after = ctx.stop_after;
    let mut stopped = None;
    let trained = store.get_or_build(
        StageSpec {
            stage: "train",
            key: &keys.train,
            format_version: train::FORMAT_VERSION,
            config: &plan.train,
            inputs: vec![keys.preprocess.clone()],
            resumable: true,
        },
        |out| match train::run(&plan.train, &options, prepared.dir(), out, p)? {
            TrainOutcome::Finished(summary) => Ok(summary),
            TrainOutcome::Stopped(i) => {
                stopped = Some(i);
                bail!("stopped")
            }
        },
    );
    if let Some(iteration) = stopped {
        tracing::info!(
            "train: stopped at iteration {iteration}; run the same command again to resume"
        );
        return Ok(RunResult::Stopped { iteration });
    }
    let trained = trained?;
    let did_train = matches!(trained, Outcome::Built(..));
    match &trained {
        Outcome::Cached(_) => tracing::info!(
            "train: cached artifact {} re-used — nothing to train (delete it or change the recipe to retrain)",
            short(&keys.train)
        ),
        Outcome::Built(_, s) => tracing::info!(
            "train: {} iterations in {:.1} s ({:.0} images/s, {:.1} ms/step)",
            s.iterations,
            s.train_seconds,
            s.images_per_sec,
            s.ms_per_step
        ),
    }

    let evaluated = store.get_or_build(
        StageSpec {
            stage: "evaluate",
            key: &keys.evaluate,
            format_version: evaluate::FORMAT_VERSION,
            config: &plan.evaluate,
            inputs: vec![keys.preprocess.clone(), keys.train.clone()],
            resumable: false,
        },
        |out| {
            Ok(evaluate::run(
                &plan.evaluate,
                prepared.dir(),
                trained.dir(),
                out,
                p,
            )?)
        },
    )?;
    log_outcome("evaluate", &keys.evaluate, &evaluated);

    let rep = evaluate::load_report(evaluated.dir())?;
    let m = rep.final_metrics;
    let row = ResultRow {
        recipe: plan.name.clone(),
        dataset: plan.fetch.dataset.as_str().into(),
        model: plan.train.model.describe(),
        method: plan.train.method.name().into(),
        seed: plan.train.seed,
        iterations: rep.train.iterations,
        test_acc: m.top1,
        test_err: 100.0 * (1.0 - m.top1),
        best_test_acc: rep.best_top1,
        best_iteration: rep.best_iteration,
        test_top5: m.top5,
        test_loss: m.loss,
        energy_s1: opt_stages::metrics::summarize(&rep.layers)
            .0
            .unwrap_or(f64::NAN),
        orth_error: opt_stages::metrics::summarize(&rep.layers).1,
        train_seconds: rep.train.train_seconds,
        images_per_sec: rep.train.images_per_sec,
        ms_per_step: rep.train.ms_per_step,
        device: rep.train.device.clone(),
        train_key: keys.train.clone(),
    };
    let rows = vec![row];
    report::run(
        &ctx.run_dir,
        &rows,
        &evaluated.dir().join(evaluate::CURVES_FILE),
    )
    .with_context(|| format!("writing the report into {}", ctx.run_dir.display()))?;
    tracing::info!("report: {}", ctx.run_dir.join(report::RESULTS_MD).display());
    Ok(RunResult::Finished {
        rows,
        trained: did_train,
    })
}

/// Default run directory: `outputs/runs/<name>`.
pub fn default_run_dir(name: &str) -> PathBuf {
    Path::new("outputs").join("runs").join(name)
}
