//! Stage scheduling: runs one grid entry (a cell with one seed) through fetch → preprocess →
//! train → evaluate in the artifact store and records its result row and curves in its
//! directory under the run directory; and gathers recorded runs for the report.

use crate::grid::GridEntry;
use crate::plan::{Keys, Plan};
use crate::store::{ArtifactStore, Built, Outcome, StageSpec};
use anyhow::{Context, Result};
use opt_stages::data::{fetch, preprocess};
use opt_stages::report::evaluate;
use opt_stages::report::{self, Provenance, ResultRow, RunRecord};
use opt_stages::training::evaluation::Evaluation;
use opt_stages::training::interrupt::Interrupt;
use opt_stages::training::tracking::mlflow::{Mlflow, MlflowConfig};
use opt_stages::training::tracking::tensorboard::TensorBoard;
use opt_stages::training::tracking::{Tracker, Tracking};
use opt_stages::training::train;
use opt_stages::training::train::{Suspension, TrainOutcome};
use opt_stages::training::train_artifact::{self, Curves, TrainSummary};
use opt_stages::Progress;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct RunContext<'a> {
    pub store: &'a ArtifactStore,
    /// The run directory of the whole recipe (all cells).
    pub run_dir: PathBuf,
    pub progress: &'a dyn Progress,
    /// Checkpoint and stop the train stage after this many iterations.
    pub stop_after: Option<u64>,
    pub git_commit: String,
    /// The command that runs the recipe, without `--cell` (provenance of each row).
    pub command: String,
    /// Raised by SIGINT/SIGTERM: training checkpoints and the run stops between stages.
    pub interrupt: Interrupt,
}

impl<'a> RunContext<'a> {
    /// A context that runs to the end and records this checkout's commit.
    pub fn new(store: &'a ArtifactStore, run_dir: PathBuf, progress: &'a dyn Progress) -> Self {
        Self {
            store,
            run_dir,
            progress,
            stop_after: None,
            git_commit: git_commit(),
            command: format!("{} run", crate::BIN),
            interrupt: Interrupt::default(),
        }
    }

    fn command_for(&self, index: usize) -> String {
        format!("{} --cell {index}", self.command)
    }
}

pub enum RunResult {
    Finished {
        row: Box<ResultRow>,
        trained: bool,
    },
    Stopped {
        iteration: u64,
    },
    /// A signal asked to stop; training (if it ran) checkpointed at `iteration`.
    Interrupted {
        iteration: Option<u64>,
        signal: i32,
    },
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

/// Runs one (cell, seed) entry through every stage and records it in its directory.
pub fn run(entry: &GridEntry, ctx: &RunContext<'_>) -> Result<RunResult> {
    run_with_keys(entry, &entry.plan.keys()?, ctx)
}

/// [`run`] with the entry's keys already computed (they fingerprint local data: a walk of
/// its files).
pub fn run_with_keys(entry: &GridEntry, keys: &Keys, ctx: &RunContext<'_>) -> Result<RunResult> {
    let plan = &entry.plan;
    let dir = entry_dir(&ctx.run_dir, entry);
    let tracking = tracking_for(entry, keys, ctx, &dir)?;
    let (_, prepared) = fetch_and_preprocess(plan, keys, ctx)?;
    if let Some(signal) = ctx.interrupt.requested() {
        return Ok(RunResult::Interrupted {
            iteration: None,
            signal,
        });
    }
    let trained = match train_stage(plan, keys, ctx, prepared.dir(), &tracking)? {
        Ok(outcome) => outcome,
        Err(Suspension::Stopped(iteration)) => {
            tracing::info!(
                "train: stopped at iteration {iteration}; run the same command again to resume"
            );
            return Ok(RunResult::Stopped { iteration });
        }
        Err(Suspension::Interrupted { iteration, signal }) => {
            return Ok(RunResult::Interrupted {
                iteration: Some(iteration),
                signal,
            });
        }
    };
    if let Some(signal) = ctx.interrupt.requested() {
        return Ok(RunResult::Interrupted {
            iteration: None,
            signal,
        });
    }
    let evaluated = ctx.store.get_or_build(
        StageSpec {
            stage: "evaluate",
            key: &keys.evaluate,
            format_version: evaluate::FORMAT_VERSION,
            config: &plan.evaluate,
            inputs: vec![keys.preprocess.clone(), keys.train.clone()],
            resumable: false,
        },
        |out| {
            let (prepared, trained) = (prepared.dir(), trained.dir());
            Ok(evaluate::run(
                &plan.evaluate,
                prepared,
                trained,
                out,
                ctx.progress,
            )?)
        },
    )?;
    log_outcome("evaluate", &keys.evaluate, &evaluated);
    let report = evaluate::load_report(evaluated.dir())?;
    track_the_end(&tracking, &trained, &report)?;
    let row = result_row(entry, keys, ctx, &report);
    warn_if_replacing_another_recipe(&dir, &row);
    let files = [evaluate::CURVES_FILE, evaluate::LAYERS_FILE].map(|f| evaluated.dir().join(f));
    report::write_run(&dir, &row, &files.each_ref().map(|p| p.as_path()))
        .with_context(|| format!("recording the run in {}", dir.display()))?;
    let recorded = [report::ROW_FILE, report::CURVES_CSV, report::LAYERS_CSV].map(|f| dir.join(f));
    let model = trained.dir().join(train_artifact::MODEL_FILE);
    let mut attached: Vec<&Path> = recorded.iter().map(PathBuf::as_path).collect();
    attached.push(&model);
    tracking.attach(&attached);
    tracking.finish();
    Ok(RunResult::Finished {
        row: Box::new(row),
        trained: matches!(trained, Outcome::Built(..)),
    })
}

/// Where a (cell, seed) run's TensorBoard event files go, inside its directory.
pub const TENSORBOARD_DIR: &str = "tb";

/// Where a (cell, seed) run keeps the id of its MLflow run, so a resume continues it.
pub const MLFLOW_STATE: &str = "mlflow.json";

/// The trackers of one entry: TensorBoard always, into its directory's `tb/`, with the cell's
/// varied settings as hyperparameters and the cell as the session group (its seeds together);
/// MLflow when the recipe or `MLFLOW_TRACKING_URI` names a server.
fn tracking_for(
    entry: &GridEntry,
    keys: &Keys,
    ctx: &RunContext<'_>,
    dir: &Path,
) -> Result<Tracking> {
    let tensorboard = TensorBoard::new(
        dir.join(TENSORBOARD_DIR),
        entry.params.clone(),
        entry.cell.clone(),
    );
    let mut trackers: Vec<Arc<dyn Tracker>> = vec![Arc::new(tensorboard)];
    if let Some(uri) = mlflow_uri(&entry.plan)? {
        trackers.push(Arc::new(Mlflow::start(mlflow_config(
            entry, keys, ctx, dir, uri,
        )?)));
    }
    Ok(Tracking::new(trackers))
}

/// The MLflow server: the recipe's `track.mlflow`, else `MLFLOW_TRACKING_URI` (MLflow's own
/// convention). Only HTTP servers can be reached through the REST API: a recipe naming
/// anything else is an error, the variable naming anything else is skipped with a warning.
fn mlflow_uri(plan: &Plan) -> Result<Option<String>> {
    let is_http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    if let Some(uri) = &plan.recipe.track.mlflow {
        if !is_http(uri) {
            return Err(plan
                .invalid(
                    "track.mlflow",
                    format!("expected an http:// or https:// MLflow server, found {uri:?}"),
                )
                .into());
        }
        return Ok(Some(uri.clone()));
    }
    match std::env::var("MLFLOW_TRACKING_URI") {
        Ok(uri) if is_http(&uri) => Ok(Some(uri)),
        Ok(uri) if !uri.is_empty() => {
            tracing::warn!(
                "MLFLOW_TRACKING_URI={uri:?} is not an http:// or https:// server; not tracked in MLflow"
            );
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// The entry's MLflow run: the experiment named after the recipe, the run after the cell and
/// seed, the resolved recipe's keys flattened as parameters, the cache keys and the grid cell
/// as tags.
fn mlflow_config(
    entry: &GridEntry,
    keys: &Keys,
    ctx: &RunContext<'_>,
    dir: &Path,
    uri: String,
) -> Result<MlflowConfig> {
    let plan = &entry.plan;
    let recipe = serde_json::to_value(&plan.recipe).context("serialising the recipe")?;
    let mut params = Vec::new();
    flatten("", &recipe, &mut params);
    let mut tags: Vec<(String, String)> = [
        ("orthopt.cell", entry.cell.clone()),
        ("orthopt.seed", entry.seed.to_string()),
        ("orthopt.method", plan.train.method.name().to_string()),
        ("orthopt.dataset", plan.fetch.dataset.as_str().to_string()),
        ("orthopt.recipe_file", recipe_path(&plan.recipe_file)),
        ("orthopt.git_commit", ctx.git_commit.clone()),
        ("orthopt.key.fetch", keys.fetch.clone()),
        ("orthopt.key.preprocess", keys.preprocess.clone()),
        ("orthopt.key.train", keys.train.clone()),
        ("orthopt.key.evaluate", keys.evaluate.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if !entry.params.is_empty() {
        let varied: Vec<String> = entry
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        tags.push(("orthopt.grid".into(), varied.join(",")));
    }
    let finish_wait = std::env::var("ORTHOPT_MLFLOW_WAIT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(
            std::time::Duration::from_secs(30),
            std::time::Duration::from_secs_f64,
        );
    Ok(MlflowConfig {
        uri,
        experiment: plan.name.clone(),
        run_name: entry.dir_name(),
        params,
        tags,
        state_file: dir.join(MLFLOW_STATE),
        finish_wait,
    })
}

/// `value`'s leaves under dotted keys (`schedule.lr`); lists as JSON text.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        serde_json::Value::Null => {}
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Reports the final evaluation and the run's end. A train artifact re-used from the cache
/// trained no session here: the trackers get its whole record at once.
fn track_the_end(
    tracking: &Tracking,
    trained: &Outcome<TrainSummary>,
    report: &evaluate::EvalReport,
) -> Result<()> {
    let mut last = Curves::default();
    last.push_eval(
        report.train.iterations,
        Evaluation {
            test: report.final_metrics,
            validation: report.validation,
            layers: report.layers.clone(),
        },
    );
    let final_point = &last.eval[0];
    match trained {
        Outcome::Built(..) => tracking.evaluation(final_point),
        Outcome::Cached(dir) => {
            let mut curves = train_artifact::load_curves(dir)
                .with_context(|| format!("reading the curves in {}", dir.display()))?;
            curves.eval.push(final_point.clone());
            tracking.begin(report.train.iterations, &curves);
        }
    }
    Ok(())
}

/// The fetch and decode artifacts of `plan` (built once per dataset, whatever the recipe).
fn fetch_and_preprocess(
    plan: &Plan,
    keys: &Keys,
    ctx: &RunContext<'_>,
) -> Result<(Outcome<Vec<String>>, Outcome<preprocess::DatasetStats>)> {
    let p = ctx.progress;
    let fetched = ctx
        .store
        .get_or_build(
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
        )
        .map_err(|e| plan.locate_setting_error(e))?;
    log_outcome("fetch", &keys.fetch, &fetched);
    let prepared = ctx
        .store
        .get_or_build(
            StageSpec {
                stage: "preprocess",
                key: &keys.preprocess,
                format_version: preprocess::FORMAT_VERSION,
                config: &plan.preprocess,
                inputs: vec![keys.fetch.clone()],
                resumable: false,
            },
            |out| Ok(preprocess::run(&plan.preprocess, fetched.dir(), out, p)?),
        )
        .map_err(|e| plan.locate_setting_error(e))?;
    log_outcome("preprocess", &keys.preprocess, &prepared);
    Ok((fetched, prepared))
}

/// The train artifact: cached, trained now, or suspended (stopped on request, interrupted).
fn train_stage(
    plan: &Plan,
    keys: &Keys,
    ctx: &RunContext<'_>,
    prepared: &Path,
    tracking: &Tracking,
) -> Result<std::result::Result<Outcome<TrainSummary>, Suspension>> {
    let mut options = plan.train_options.clone();
    options.tracking = tracking.clone();
    options.stop_after = ctx.stop_after;
    options.interrupt = ctx.interrupt.clone();
    let trained = ctx
        .store
        .get_or_build_suspendable(
            StageSpec {
                stage: "train",
                key: &keys.train,
                format_version: train::FORMAT_VERSION,
                config: &plan.train,
                inputs: vec![keys.preprocess.clone()],
                resumable: true,
            },
            |out| {
                let outcome = train::run(&plan.train, &options, prepared, out, ctx.progress)?;
                Ok(match outcome {
                    TrainOutcome::Finished(summary) => Built::Done(summary),
                    TrainOutcome::Suspended(s) => Built::Suspended(s),
                })
            },
        )
        .map_err(|e| plan.locate_setting_error(e))?;
    match &trained {
        Ok(Outcome::Cached(_)) => tracing::info!(
            "train: cached artifact {} re-used — nothing to train (`--force` retrains)",
            short(&keys.train)
        ),
        Ok(Outcome::Built(_, s)) => tracing::info!(
            "train: {} iterations in {:.1} s ({:.0} images/s, {:.1} ms/step)",
            s.iterations,
            s.train_seconds,
            s.images_per_sec,
            s.ms_per_step
        ),
        Err(_) => {}
    }
    Ok(trained)
}

/// The entry's result row, from its evaluation report, with its provenance.
fn result_row(
    entry: &GridEntry,
    keys: &Keys,
    ctx: &RunContext<'_>,
    rep: &evaluate::EvalReport,
) -> ResultRow {
    let plan = &entry.plan;
    let m = rep.final_metrics;
    let (energy_s1, orth_error) = opt_stages::training::metrics::summarize(&rep.layers);
    ResultRow {
        recipe: plan.name.clone(),
        cell: entry.cell.clone(),
        index: entry.index,
        params: entry.params.clone(),
        dataset: plan.fetch.dataset.as_str().into(),
        model: plan.train.model.describe(),
        method: plan.train.method.name().into(),
        method_label: plan.train.method_label(),
        seed: plan.train.seed,
        iterations: rep.train.iterations,
        test_acc: m.top1,
        test_err: 100.0 * (1.0 - m.top1),
        best_iteration: rep.best.map(|b| b.iteration),
        best_val_acc: rep.best.map(|b| b.val_top1),
        test_acc_at_best: rep.best.map(|b| b.test_top1),
        test_err_at_best: rep.best.map(|b| 100.0 * (1.0 - b.test_top1)),
        test_top5: m.top5,
        test_loss: m.loss,
        val_acc: rep.validation.map(|v| v.top1),
        energy_s1: energy_s1.unwrap_or(f64::NAN),
        orth_error,
        layers: rep.layers.clone(),
        train_seconds: rep.train.train_seconds,
        images_per_sec: rep.train.images_per_sec,
        ms_per_step: rep.train.ms_per_step,
        device: rep.train.device.clone(),
        ops: rep.train.ops.clone(),
        map_route: rep.train.map_route.clone(),
        provenance: Provenance {
            recipe_file: recipe_path(&plan.recipe_file),
            recipe_hash: recipe_hash(plan),
            fetch_key: keys.fetch.clone(),
            preprocess_key: keys.preprocess.clone(),
            train_key: keys.train.clone(),
            evaluate_key: keys.evaluate.clone(),
            git_commit: ctx.git_commit.clone(),
            command: ctx.command_for(entry.index),
        },
    }
}

/// A run directory shared by two different resolved recipes (an explicit `--out`, an edited
/// recipe) would have one's row silently replace the other's: say so.
fn warn_if_replacing_another_recipe(dir: &Path, row: &ResultRow) {
    let Ok(old) = report::read_run(dir) else {
        return;
    };
    let (before, now) = (&old.row.provenance.recipe_hash, &row.provenance.recipe_hash);
    if before != now {
        tracing::warn!(
            "{}: replacing the recorded run of a different resolved recipe (recipe hash {} → {}); \
             give each variant its own --out to keep both",
            dir.display(),
            &before[..12.min(before.len())],
            &now[..12.min(now.len())]
        );
    }
}

/// blake3 of the cell's fully resolved recipe.
pub fn recipe_hash(plan: &Plan) -> String {
    let json = serde_json::to_string(&plan.recipe).expect("recipes serialise");
    blake3::hash(json.as_bytes()).to_hex().to_string()
}

/// A (cell, seed) run's directory: `<run dir>/cells/<cell>/seed-<seed>`.
pub fn entry_dir(run_dir: &Path, entry: &GridEntry) -> PathBuf {
    run_dir
        .join(CELLS_DIR)
        .join(&entry.cell)
        .join(format!("seed-{}", entry.seed))
}

pub const CELLS_DIR: &str = "cells";

/// The run recorded in `entry`'s directory, if it is there, was computed from exactly the
/// artifacts this plan would use, and those artifacts are still in `store` (a deleted train
/// artifact means "train again", not "skip").
pub fn finished(
    run_dir: &Path,
    entry: &GridEntry,
    keys: &Keys,
    store: &ArtifactStore,
) -> Option<RunRecord> {
    let record = report::read_run(&entry_dir(run_dir, entry)).ok()?;
    let same_keys = record.row.provenance.train_key == keys.train
        && record.row.provenance.evaluate_key == keys.evaluate;
    let artifacts_there = store.lookup("train", &keys.train).is_some()
        && store.lookup("evaluate", &keys.evaluate).is_some();
    (same_keys && artifacts_there).then_some(record)
}

/// Every finished run under `dir` (a run directory, or a directory of run directories), in
/// grid order.
pub fn collect_runs(dir: &Path) -> Result<Vec<RunRecord>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.join(report::ROW_FILE).is_file() {
            found.push(
                report::read_run(&d)
                    .with_context(|| format!("reading the run in {}", d.display()))?,
            );
            continue;
        }
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if d == dir => {
                return Err(e).with_context(|| format!("cannot read {}", d.display()))
            }
            Err(_) => continue,
        };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            }
        }
    }
    found.sort_by(|a, b| {
        (&a.row.recipe, a.row.index, a.row.seed).cmp(&(&b.row.recipe, b.row.index, b.row.seed))
    });
    Ok(found)
}

/// `git rev-parse HEAD` of the working directory, `-dirty` when tracked files changed;
/// `unknown` outside a repository or without git.
pub fn git_commit() -> String {
    match crate::store::git_commit() {
        Some(head) => {
            let dirty = crate::store::git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head}-dirty")
            } else {
                head
            }
        }
        None => "unknown".into(),
    }
}

/// A recipe's path as results record it: relative to the repository root when the recipe is
/// inside the repository the command runs in (so a row reads the same from any working
/// directory, and in any clone), else absolute.
pub fn recipe_path(file: &Path) -> String {
    static ROOT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let root = ROOT.get_or_init(|| {
        crate::store::git(&["rev-parse", "--show-toplevel"])
            .filter(|s| !s.is_empty())
            .and_then(|s| PathBuf::from(s).canonicalize().ok())
    });
    let Ok(full) = file.canonicalize() else {
        return file.display().to_string();
    };
    match root.as_ref().and_then(|r| full.strip_prefix(r).ok()) {
        Some(rel) => rel.display().to_string(),
        None => full.display().to_string(),
    }
}

/// Default run directory: `outputs/runs/<name>`.
pub fn default_run_dir(name: &str) -> PathBuf {
    Path::new("outputs").join("runs").join(name)
}
