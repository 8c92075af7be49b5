//! Resolution of a raw recipe into typed, validated stage configurations, and their cache keys.
//!
//! A stage's key hashes its stage name, its format version, the canonical JSON of its own
//! configuration, its input artifacts' keys and (for fetch) a fingerprint of the source files —
//! nothing else, so e.g. changing the schedule re-uses fetch and preprocess.

use crate::recipe::{invalid, located, Loaded, Recipe, RecipeError, RegularizerChoice};
use figment::Figment;
use opt_stages::data::fetch::{self, FetchConfig};
use opt_stages::data::preprocess::{self, DataView, PreprocessConfig};
use opt_stages::report::evaluate::{self, EvaluateConfig};
use opt_stages::training::device::DeviceChoice;
use opt_stages::training::model::{Arch, ModelConfig};
use opt_stages::training::regularizer::{RegularizerConfig, RegularizerKind};
use opt_stages::training::train::{self, TrainOptions};
use opt_stages::training::train_config::{Length, LossConfig, ScheduleConfig, TrainConfig};
use opt_stages::StageError;
use serde::Serialize;
use std::num::NonZeroUsize;
use std::path::PathBuf;

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub recipe: Recipe,
    pub recipe_file: PathBuf,
    pub fetch: FetchConfig,
    pub preprocess: PreprocessConfig,
    pub train: TrainConfig,
    pub evaluate: EvaluateConfig,
    pub train_options: TrainOptions,
    pub threads: usize,
    pub out_dir: Option<PathBuf>,
    pub print_table: bool,
    /// Where each value came from, for errors found after resolution (by a stage).
    pub figment: Figment,
}

impl Plan {
    /// An error about recipe key `key`, naming the file, variable or override that set it.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> RecipeError {
        located(&self.figment, &self.recipe_file, key, message)
    }

    /// Turns a stage's complaint about one of its settings into an error naming the recipe key
    /// and the file (or variable, or override) the value came from; other errors pass as they
    /// are.
    pub fn locate_setting_error(&self, error: anyhow::Error) -> anyhow::Error {
        match error.downcast_ref::<StageError>() {
            Some(StageError::Setting { field, message }) => {
                anyhow::Error::new(self.invalid(&recipe_key_of(field), message.clone()))
            }
            _ => error,
        }
    }
}

/// The recipe key of a stage configuration field: the train config's `data.*` is the
/// recipe's `dataset.*`; the fetch and preprocess configs' fields live in `[dataset]` too.
fn recipe_key_of(field: &str) -> String {
    match field {
        "format" | "label" | "source" => format!("dataset.{field}"),
        "source.path" => "dataset.path".into(),
        "data" => "dataset".into(),
        _ => match field.strip_prefix("data.") {
            Some(rest) => format!("dataset.{rest}"),
            None => field.to_string(),
        },
    }
}

/// Stage keys (64 hex digits, blake3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Keys {
    pub fetch: String,
    pub preprocess: String,
    pub train: String,
    pub evaluate: String,
}

impl Keys {
    /// `(stage, key)` in pipeline order.
    pub fn by_stage(&self) -> [(&'static str, &str); 4] {
        [
            ("fetch", &self.fetch),
            ("preprocess", &self.preprocess),
            ("train", &self.train),
            ("evaluate", &self.evaluate),
        ]
    }
}

fn positive(loaded: &Loaded, key: &str, v: f64) -> Result<(), RecipeError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            loaded,
            key,
            format!("expected a positive number, found {v}"),
        ))
    }
}

fn fraction(loaded: &Loaded, key: &str, v: f64) -> Result<(), RecipeError> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(
            loaded,
            key,
            format!("expected a number in [0, 1), found {v}"),
        ))
    }
}

/// Validates a loaded recipe into the stage configurations, one concern at a time (ripgrep's
/// flag resolution as the model): the name, the data, the model and method, the regulariser,
/// the schedule, the loss and the run settings; then what the machine must allow.
pub fn resolve(loaded: &Loaded) -> Result<Plan, RecipeError> {
    let r = &loaded.recipe;
    let name = resolve_name(loaded)?;
    let (fetch, preprocess, data) = resolve_data(loaded)?;
    let model = resolve_model(loaded)?;
    check_method(loaded, &model)?;
    let regularizer = resolve_regularizer(loaded)?;
    let schedule = resolve_schedule(loaded)?;
    let loss = resolve_loss(loaded)?;
    let (train_options, evaluate) = resolve_run(loaded)?;
    let train = TrainConfig {
        data,
        model,
        method: r.method.clone(),
        schedule,
        loss,
        augment: r.augment.clone(),
        seed: r.run.seed,
        device: r.run.device.resolve(),
        regularizer,
        tf32: r.run.tf32,
        ops: r.run.ops,
        map_route: r.run.map_route,
    };
    check_device(loaded, train.device)?;
    check_memory(loaded, &train)?;
    Ok(Plan {
        name,
        recipe: r.clone(),
        recipe_file: loaded.file.clone(),
        fetch,
        preprocess,
        train,
        evaluate,
        train_options,
        threads: r.run.threads,
        out_dir: r.report.out_dir.clone(),
        print_table: r.report.print_table,
        figment: loaded.figment.clone(),
    })
}

/// `name`, else the recipe file's stem: a plain name, usable as a directory.
fn resolve_name(loaded: &Loaded) -> Result<String, RecipeError> {
    match &loaded.recipe.name {
        Some(n) if !n.is_empty() && !n.contains(['/', '\\']) && n != "." && n != ".." => {
            Ok(n.clone())
        }
        Some(n) => Err(invalid(
            loaded,
            "name",
            format!("expected a plain name usable as a directory, found {n:?}"),
        )),
        None => Ok(loaded
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("recipe")
            .to_string()),
    }
}

/// `[dataset]`: where the files come from (fetch), how they are decoded (preprocess) and the
/// view training sees.
fn resolve_data(loaded: &Loaded) -> Result<(FetchConfig, PreprocessConfig, DataView), RecipeError> {
    let d = &loaded.recipe.dataset;
    let (source, format) = crate::datasets::resolve_source(loaded, d)?;
    let fetch = FetchConfig {
        dataset: d.name,
        source,
    };
    let preprocess = PreprocessConfig {
        dataset: d.name,
        format,
        label: d.label,
    };
    Ok((fetch, preprocess, d.view()))
}

/// The method's own check of its settings against the network (S-OPT's budget must fit the
/// narrowest input), caught here, before any cell trains.
fn check_method(loaded: &Loaded, model: &ModelConfig) -> Result<(), RecipeError> {
    match loaded.recipe.method.method().check(&model.network_facts()) {
        Ok(()) => Ok(()),
        Err(e) => Err(invalid(loaded, &format!("method.{}", e.key), e.message)),
    }
}

/// `[schedule]`: the optimizer's settings and the training length.
fn resolve_schedule(loaded: &Loaded) -> Result<ScheduleConfig, RecipeError> {
    let s = &loaded.recipe.schedule;
    positive(loaded, "schedule.lr", s.lr)?;
    positive(loaded, "schedule.lr_factor", s.lr_factor)?;
    fraction(loaded, "schedule.momentum", s.momentum)?;
    if !(s.weight_decay.is_finite() && s.weight_decay >= 0.0) {
        return Err(invalid(
            loaded,
            "schedule.weight_decay",
            format!("expected a number ≥ 0, found {}", s.weight_decay),
        ));
    }
    if s.milestones.windows(2).any(|w| w[0] >= w[1]) {
        return Err(invalid(
            loaded,
            "schedule.milestones",
            format!(
                "expected strictly increasing iterations, found {:?}",
                s.milestones
            ),
        ));
    }
    Ok(ScheduleConfig {
        momentum: s.momentum,
        lr: s.lr,
        milestones: s.milestones.clone(),
        lr_factor: s.lr_factor,
        length: resolve_length(loaded)?,
        batch_size: s.batch_size.get(),
        weight_decay: s.weight_decay,
        eval_every: s.eval_every,
    })
}

/// `schedule.iterations` or `schedule.epochs` (not both; neither: the official length).
fn resolve_length(loaded: &Loaded) -> Result<Length, RecipeError> {
    let s = &loaded.recipe.schedule;
    match (s.iterations, s.epochs) {
        (Some(_), Some(_)) => Err(invalid(
            loaded,
            "schedule.epochs",
            "set either schedule.iterations or schedule.epochs, not both",
        )),
        (Some(n), None) => Ok(Length::Iterations(n.get())),
        (None, Some(e)) => {
            positive(loaded, "schedule.epochs", e)?;
            Ok(Length::Epochs(e))
        }
        (None, None) => Ok(Length::Iterations(ScheduleConfig::DEFAULT_ITERATIONS.get())),
    }
}

/// `[loss]`.
fn resolve_loss(loaded: &Loaded) -> Result<LossConfig, RecipeError> {
    let l = &loaded.recipe.loss;
    fraction(loaded, "loss.label_smoothing", l.label_smoothing)?;
    if !(l.log_floor.is_finite() && l.log_floor >= 0.0) {
        return Err(invalid(
            loaded,
            "loss.log_floor",
            format!("expected a number ≥ 0, found {}", l.log_floor),
        ));
    }
    Ok(l.clone())
}

/// `[run]`: how training runs (checkpoints, evaluation batches, the memory check) and the
/// evaluate stage's configuration.
fn resolve_run(loaded: &Loaded) -> Result<(TrainOptions, EvaluateConfig), RecipeError> {
    let run = &loaded.recipe.run;
    let options = TrainOptions {
        checkpoint_every: run.checkpoint_every,
        eval_batch: run.eval_batch.get(),
        stop_after: None,
        memory_check: run.memory_check,
        interrupt: Default::default(),
        tracking: Default::default(),
    };
    let evaluate = EvaluateConfig {
        batch_size: run.eval_batch.get(),
    };
    Ok((options, evaluate))
}

/// `[model]` with the architecture's defaults filled in. Keys that belong to another
/// architecture are refused rather than ignored.
fn resolve_model(loaded: &Loaded) -> Result<ModelConfig, RecipeError> {
    let m = &loaded.recipe.model;
    let width = m.width.map_or(m.arch.default_width(), NonZeroUsize::get);
    fraction(loaded, "model.bn_decay", m.bn_decay)?;
    positive(loaded, "model.bn_eps", m.bn_eps)?;
    let resnet = m.arch == Arch::Resnet;
    let misplaced = [
        ("model.depth", m.depth.is_some(), !resnet),
        ("model.opt_shortcuts", m.opt_shortcuts.is_some(), !resnet),
        ("model.opt_classifier", m.opt_classifier.is_some(), !resnet),
        ("model.fc6_width", m.fc6_width.is_some(), resnet),
    ];
    for (key, set, wrong_arch) in misplaced {
        if set && wrong_arch {
            return Err(invalid(
                loaded,
                key,
                format!(
                    "does not apply to model.arch = \"{}\" ({} is for {})",
                    m.arch.as_str(),
                    key,
                    if resnet { "cnn6 and cnn9" } else { "resnet" }
                ),
            ));
        }
    }
    let depth = resnet.then(|| m.depth.unwrap_or(ModelConfig::DEFAULT_RESNET_DEPTH));
    if let Some(d) = depth.filter(|d| *d < 8 || !(d - 2).is_multiple_of(6)) {
        return Err(invalid(
            loaded,
            "model.depth",
            format!("expected 6n + 2 with n ≥ 1 (20, 32, 56, …), found {d}"),
        ));
    }
    Ok(ModelConfig {
        arch: m.arch,
        width,
        widths: m.widths.map(|w| w.map(NonZeroUsize::get)),
        fc6_width: m.fc6_width.map(NonZeroUsize::get),
        bn_decay: m.bn_decay,
        bn_eps: m.bn_eps,
        depth,
        opt_shortcuts: resnet.then(|| m.opt_shortcuts.unwrap_or(false)),
        opt_classifier: resnet.then(|| m.opt_classifier.unwrap_or(false)),
    })
}

/// `[regularizer]` with the official weights of its power filled in; `None` without one or
/// with `kind = "none"`.
fn resolve_regularizer(loaded: &Loaded) -> Result<Option<RegularizerConfig>, RecipeError> {
    let Some(r) = &loaded.recipe.regularizer else {
        return Ok(None);
    };
    let kind = match r.kind {
        RegularizerChoice::None => return Ok(None),
        RegularizerChoice::Mhe => RegularizerKind::Mhe,
        RegularizerChoice::HalfMhe => RegularizerKind::HalfMhe,
    };
    let power = r.power.unwrap_or_default();
    let (weight, classifier_weight) = power.official_weights();
    let weight = r.weight.unwrap_or(weight);
    let classifier_weight = r.classifier_weight.unwrap_or(classifier_weight);
    for (key, v) in [
        ("regularizer.weight", weight),
        ("regularizer.classifier_weight", classifier_weight),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(invalid(
                loaded,
                key,
                format!("expected a number ≥ 0, found {v}"),
            ));
        }
    }
    if r.layers.as_ref().is_some_and(|l| l.is_empty()) {
        return Err(invalid(
            loaded,
            "regularizer.layers",
            "expected at least one layer name (leave the key out for every hidden layer)",
        ));
    }
    Ok(Some(RegularizerConfig {
        kind,
        power,
        weight,
        classifier_weight,
        layers: r.layers.clone(),
    }))
}

/// A device this build cannot open is refused now, before anything is downloaded.
fn check_device(loaded: &Loaded, device: DeviceChoice) -> Result<(), RecipeError> {
    match device {
        DeviceChoice::Cuda(n) if !candle_core::utils::cuda_is_available() => Err(invalid(
            loaded,
            "run.device",
            format!(
                "\"cuda:{n}\" needs a build with CUDA support, and this one has none (the \
                 cargo feature `cuda`); use \"cpu\" or \"auto\""
            ),
        )),
        _ => Ok(()),
    }
}

/// Refuses, before any stage runs, a training step that cannot fit in this machine's memory
/// (when the dataset's image shape is known without decoding it; the train stage checks the
/// others). `run.memory_check = false` lets it try anyway.
fn check_memory(loaded: &Loaded, train: &TrainConfig) -> Result<(), RecipeError> {
    let r = &loaded.recipe;
    let shape = preprocess::known_shape(r.dataset.name, r.dataset.label);
    let Some((input, classes)) = shape else {
        return Ok(());
    };
    if !r.run.memory_check || train.device != DeviceChoice::Cpu {
        return Ok(());
    }
    match train.check_memory(input, classes, &candle_core::Device::Cpu) {
        Err(StageError::Setting { field, message }) => Err(invalid(loaded, field, message)),
        _ => Ok(()),
    }
}

/// `blake3(stage, version, canonical config JSON, input keys, extra)`.
pub fn stage_key<C: Serialize>(
    stage: &str,
    version: u32,
    config: &C,
    inputs: &[&str],
    extra: &[String],
) -> String {
    let mut h = blake3::Hasher::new();
    let json = serde_json::to_string(config).expect("stage configs serialise");
    for part in [stage, &version.to_string(), &json] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    for part in inputs
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex().to_string()
}

impl Plan {
    pub fn keys(&self) -> anyhow::Result<Keys> {
        let fingerprint = self
            .fetch
            .fingerprint()
            .map_err(|e| self.locate_setting_error(e.into()))?;
        let fetch = stage_key(
            "fetch",
            fetch::FORMAT_VERSION,
            &self.fetch,
            &[],
            &fingerprint,
        );
        let preprocess = stage_key(
            "preprocess",
            preprocess::FORMAT_VERSION,
            &self.preprocess,
            &[&fetch],
            &[],
        );
        let train = stage_key(
            "train",
            train::FORMAT_VERSION,
            &self.train,
            &[&preprocess],
            &[],
        );
        let evaluate = stage_key(
            "evaluate",
            evaluate::FORMAT_VERSION,
            &self.evaluate,
            &[&preprocess, &train],
            &[],
        );
        Ok(Keys {
            fetch,
            preprocess,
            train,
            evaluate,
        })
    }
}
