//! Recipes: TOML or YAML files describing one experiment.
//!
//! Loading happens in two steps, as ripgrep does with its arguments: the files (with their
//! `extends` chain), `OPT_*` environment variables and `--set key=value` overrides are merged
//! by figment into a raw [`Recipe`] (serde, unknown keys rejected), which is then resolved into
//! typed, validated stage configurations ([`crate::plan::Plan`]). Every error names the file (or
//! variable / override) a value came from, the key path, and what was expected.

use figment::providers::{Format, Serialized, Toml, Yaml};
use figment::value::Value;
use figment::{Figment, Metadata, Provider, Source};
use opt_core::batchnorm::BatchNormConfig;
use opt_core::ops::routes::{MapRouteChoice, OpsMode};
use opt_stages::data::augment::AugmentConfig;
use opt_stages::data::fetch::DatasetName;
use opt_stages::data::preprocess::{DataFormat, DataView, LabelChoice, Normalization};
use opt_stages::training::device::DeviceChoice;
use opt_stages::training::model::{Arch, MethodConfig};
use opt_stages::training::regularizer::Power;
use opt_stages::training::train::TrainOptions;
use opt_stages::training::train_config::{LossConfig, ScheduleConfig};
use serde::{Deserialize, Serialize};
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

/// Top-level sections (and what `OPT_<SECTION>__…` variables may name).
pub const SECTIONS: [&str; 12] = [
    "dataset",
    "model",
    "method",
    "regularizer",
    "schedule",
    "loss",
    "augment",
    "run",
    "report",
    "track",
    "name",
    "grid",
];

/// The grid axis whose values are whole recipe fragments, merged at the recipe's root.
pub const VARIANT: &str = "variant";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Run name (default: the recipe file's stem); names the output directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Parent recipe, relative to this file; consumed while loading.
    #[serde(default, skip_serializing)]
    pub extends: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub dataset: DatasetSection,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub method: MethodConfig,
    /// MHE / half-space MHE added to the loss of any method (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regularizer: Option<RegularizerSection>,
    #[serde(default)]
    pub schedule: ScheduleSection,
    /// The stage's own type: its `Default` is the official loss.
    #[serde(default)]
    pub loss: LossConfig,
    /// The stage's own type: its `Default` is the official augmentation.
    #[serde(default)]
    pub augment: AugmentConfig,
    #[serde(default)]
    pub run: RunSection,
    #[serde(default)]
    pub report: ReportSection,
    /// Where the runs are also tracked (MLflow). Not part of any result: left out of the
    /// resolved recipe a row's hash covers, so tracking a run never makes it another recipe.
    #[serde(default, skip_serializing)]
    pub track: TrackSection,
    /// Ablation grid: dotted keys → lists of values, plus `seeds = [...]`; expanded into cells
    /// by [`crate::grid`]. Each cell's own recipe has no grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<figment::value::Dict>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The Fashion-MNIST subset compiled into the binary.
    Embedded,
    /// A file or directory on disk (`path`), read in place.
    Local,
    /// HTTP(S) download (`url` + `md5`; defaults: the official files).
    Url,
    /// A Hugging Face dataset repository (`repo`, `revision`, `files`; defaults for CIFAR).
    Hub,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSection {
    pub name: DatasetName,
    pub source: SourceKind,
    /// File or directory for `source = "local"`, relative to the recipe declaring it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// How the files are laid out (default: from the dataset and source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// CIFAR-100: `fine` (100 classes) or `coarse` (20 superclasses).
    pub label: LabelChoice,
    /// `source = "url"`: the file to download and its published MD5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// `source = "hub"`: dataset repository, revision and files (defaults for CIFAR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    /// Hub endpoint (default: `HF_ENDPOINT`, else https://huggingface.co).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub normalization: Normalization,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<NonZeroUsize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_limit: Option<NonZeroUsize>,
    /// Images moved from train to a validation split (0 = none), drawn with `validation_seed`.
    pub validation: usize,
    pub validation_seed: u64,
}

impl DatasetSection {
    /// The train stage's view of the data this section selects.
    pub fn view(&self) -> DataView {
        DataView {
            normalization: self.normalization,
            train_limit: self.train_limit.map(NonZeroUsize::get),
            test_limit: self.test_limit.map(NonZeroUsize::get),
            validation: self.validation,
            validation_seed: self.validation_seed,
        }
    }
}

impl Default for DatasetSection {
    /// The embedded Fashion-MNIST subset, seen through the default [`DataView`].
    fn default() -> Self {
        let view = DataView::default();
        Self {
            name: DatasetName::FashionMnist,
            source: SourceKind::Embedded,
            path: None,
            format: None,
            label: LabelChoice::Fine,
            url: None,
            md5: None,
            repo: None,
            revision: None,
            files: None,
            endpoint: None,
            normalization: view.normalization,
            train_limit: None,
            test_limit: None,
            validation: view.validation,
            validation_seed: view.validation_seed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    pub arch: Arch,
    /// First-stage width (default per architecture: 64 for the CNNs, 16 for ResNet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<NonZeroUsize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub widths: Option<[NonZeroUsize; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fc6_width: Option<NonZeroUsize>,
    /// EMA decay of BN moving statistics (official 0.999).
    pub bn_decay: f64,
    /// BN epsilon (official 1e-3).
    pub bn_eps: f64,
    /// ResNet depth, 6n + 2 (default 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// ResNet: make the 1×1 projection shortcuts OPT layers too (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_shortcuts: Option<bool>,
    /// ResNet: make the classifier an OPT layer too (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_classifier: Option<bool>,
}

impl Default for ModelSection {
    /// CNN-6 with its architecture's widths and the official (TF) batch norm.
    fn default() -> Self {
        let bn = BatchNormConfig::default();
        Self {
            arch: Arch::Cnn6,
            width: None,
            widths: None,
            fc6_width: None,
            bn_decay: bn.decay,
            bn_eps: bn.eps,
            depth: None,
            opt_shortcuts: None,
            opt_classifier: None,
        }
    }
}

/// `regularizer.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegularizerChoice {
    /// No regulariser (what a grid variant writes to switch a parent's off).
    None,
    Mhe,
    HalfMhe,
}

/// `[regularizer]`: MHE (`wy1iu/MHE`) on top of any method. Weights default to the official
/// ones for the power (hidden 1, classifier 10; 0.1 and 1 for a1/a2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegularizerSection {
    pub kind: RegularizerChoice,
    /// `0`, `1`, `2`, `a0`, `a1`, `a2` (default `0`, the official script's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<Power>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_weight: Option<f64>,
    /// Hidden layers by name (default: every weight layer but the classifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerName {
    /// Heavy-ball momentum SGD (TF `MomentumOptimizer`).
    Momentum,
}

/// Defaults are the official OPT schedule (spec §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    pub optimizer: OptimizerName,
    pub momentum: f64,
    pub lr: f64,
    pub milestones: Vec<u64>,
    pub lr_factor: f64,
    /// The length in iterations (default: [`ScheduleConfig::DEFAULT_ITERATIONS`]), or:
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<NonZeroU64>,
    /// the length in passes over the training set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    pub batch_size: NonZeroUsize,
    pub weight_decay: f64,
    pub eval_every: u64,
}

impl Default for ScheduleSection {
    /// [`ScheduleConfig`]'s default, the official schedule.
    fn default() -> Self {
        let s = ScheduleConfig::default();
        Self {
            optimizer: OptimizerName::Momentum,
            momentum: s.momentum,
            lr: s.lr,
            milestones: s.milestones,
            lr_factor: s.lr_factor,
            iterations: None,
            epochs: None,
            batch_size: ScheduleConfig::DEFAULT_BATCH_SIZE,
            weight_decay: s.weight_decay,
            eval_every: s.eval_every,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    pub seed: u64,
    pub device: DeviceChoice,
    /// CPU threads (0 = all cores).
    pub threads: usize,
    pub checkpoint_every: u64,
    pub eval_batch: NonZeroUsize,
    /// Refuse a training step whose estimated memory exceeds what the machine has.
    pub memory_check: bool,
    /// TF32 tensor-core matmuls on a CUDA device (off: faithful f32; no effect on the CPU).
    pub tf32: bool,
    /// How the fused ops are chosen: `auto` (the device self-check decides; a failing op takes
    /// its composed formulation with a warning), `fused` (a failed check is an error) or
    /// `composed` (candle's own ops and the exact maps only).
    #[serde(with = "opt_stages::training::device::named")]
    pub ops: OpsMode,
    /// How the orthogonal maps are computed: `auto` (exact on the CPU; on a GPU gemm for ls and cp, exact for gs and hr), `exact`
    /// (the f64 factorisations of the spec, on the host) or `gemm` (Newton–Schulz for LS/CP,
    /// Cholesky-QR2 for GS/HR, where the tensors live; a batch they cannot finish falls back
    /// to exact).
    #[serde(with = "opt_stages::training::device::named")]
    pub map_route: MapRouteChoice,
}

impl Default for RunSection {
    /// Seed 0, the best device, every core, and [`TrainOptions`]' defaults.
    fn default() -> Self {
        let options = TrainOptions::default();
        Self {
            seed: 0,
            device: DeviceChoice::Auto,
            threads: 0,
            checkpoint_every: options.checkpoint_every,
            eval_batch: TrainOptions::DEFAULT_EVAL_BATCH,
            memory_check: options.memory_check,
            tf32: false,
            ops: OpsMode::Auto,
            map_route: MapRouteChoice::Auto,
        }
    }
}

/// `[track]`: the trackers a run reports to besides TensorBoard (which every run writes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackSection {
    /// An MLflow tracking server (`http://host:port`); without it, `MLFLOW_TRACKING_URI`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// Output directory of the run (default `outputs/runs/<name>`), relative to the working
    /// directory; `--out` overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_dir: Option<PathBuf>,
    /// Print the result table at the end of `orthopt run`.
    pub print_table: bool,
}

impl Default for ReportSection {
    fn default() -> Self {
        Self {
            out_dir: None,
            print_table: true,
        }
    }
}

/// A recipe problem, located.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Value {
        origin: String,
        key: String,
        message: String,
    },
    #[error("recipe `extends` chain has a cycle: {0}")]
    Cycle(String),
}

/// The merged recipe plus where each value came from.
pub struct Loaded {
    pub recipe: Recipe,
    pub figment: Figment,
    /// The file given on the command line.
    pub file: PathBuf,
    /// Files of the `extends` chain, root first, the given file last.
    pub chain: Vec<PathBuf>,
}

/// A `--set key=value` override; the value is parsed like TOML/env values (numbers, booleans,
/// arrays `[1, 2]`), falling back to a string.
struct CliOverride {
    key: String,
    value: Value,
    text: String,
}

impl Provider for CliOverride {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("command line `--set {}`", self.text))
    }
    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::default(&self.key, &self.value).data()
    }
}

pub fn parse_override(text: &str) -> Result<(String, Value), RecipeError> {
    let (key, value) = text.split_once('=').ok_or_else(|| RecipeError::File {
        file: "command line".into(),
        message: format!("`--set {text}`: expected KEY=VALUE, e.g. --set schedule.lr=0.05"),
    })?;
    let key = key.trim();
    if key.is_empty() || !SECTIONS.contains(&key.split('.').next().unwrap_or_default()) {
        return Err(RecipeError::File {
            file: "command line".into(),
            message: format!(
                "`--set {text}`: unknown key `{key}`; sections are {}",
                SECTIONS.join(", ")
            ),
        });
    }
    Ok((key.to_string(), parse_value(value)))
}

/// A value from `--set` or the environment, read as a TOML value is in a file (`1e-3`, `1E2`,
/// `[4, 8]`, `true`, `"quoted"`), else taken as a bare string (`gs`, `/data/cifar`).
pub fn parse_value(text: &str) -> Value {
    let text = text.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .and_then(|v| Value::serialize(v).ok());
    parsed.unwrap_or_else(|| Value::from(text.to_string()))
}

/// One `OPT_SECTION__KEY` environment variable, as a provider naming itself in errors.
struct EnvOverride {
    variable: String,
    key: String,
    value: Value,
    /// The value as written in the environment.
    text: String,
}

impl Provider for EnvOverride {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable `{}`", self.variable))
    }
    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::default(&self.key, &self.value).data()
    }
}

/// The `OPT_*` variables of the environment, sorted by name. A variable whose name starts
/// with a section but is not `OPT_SECTION__KEY` (`OPT_SCHEDULE_LR`, one underscore) is an
/// error, not ignored; variables that name no section at all (`OPT_LEVEL`) belong to other
/// tools and are left alone, with a note.
fn env_overrides() -> Result<Vec<EnvOverride>, RecipeError> {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OPT_"))
        .collect();
    vars.sort();
    let mut out = Vec::new();
    for (variable, text) in vars {
        let path: Vec<String> = variable["OPT_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let section = path[0].as_str();
        if SECTIONS.contains(&section) && path.iter().all(|p| !p.is_empty()) {
            out.push(EnvOverride {
                key: path.join("."),
                value: parse_value(&text),
                variable,
                text,
            });
        } else if SECTIONS.iter().any(|s| section.starts_with(s)) || path.len() > 1 {
            return Err(RecipeError::File {
                file: format!("environment variable `{variable}`"),
                message: format!(
                    "names no recipe key: recipe variables are OPT_<SECTION>__<KEY>, with two \
                     underscores between levels (e.g. OPT_SCHEDULE__LR=0.05); sections are {}",
                    SECTIONS.join(", ")
                ),
            });
        } else {
            note_ignored_variable(&variable);
        }
    }
    Ok(out)
}

/// A short hash of what `--set` and `OPT_*` variables change (8 hex digits), `None` when
/// nothing does: names the run directory of a variant of a recipe.
pub fn variant_hash(overrides: &[String]) -> Result<Option<String>, RecipeError> {
    let mut parts: Vec<String> = overrides.iter().map(|o| o.trim().to_string()).collect();
    parts.extend(
        env_overrides()?
            .into_iter()
            .map(|e| format!("{}={}", e.key, e.text.trim())),
    );
    if parts.is_empty() {
        return Ok(None);
    }
    parts.sort();
    let hash = blake3::hash(parts.join("\0").as_bytes()).to_hex();
    Ok(Some(hash[..8].to_string()))
}

/// Says once per process that an `OPT_*` variable outside the recipe's sections is ignored.
fn note_ignored_variable(variable: &str) {
    static NOTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if let Ok(mut noted) = NOTED.lock() {
        if !noted.iter().any(|v| v == variable) {
            eprintln!(
                "note: environment variable {variable} is not a recipe key (those are \
                 OPT_<SECTION>__<KEY>); ignored"
            );
            noted.push(variable.to_string());
        }
    }
}

fn provider_for(path: &Path) -> Result<Box<dyn Provider>, RecipeError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => Ok(Box::new(Toml::file_exact(path))),
        Some("yaml") | Some("yml") => Ok(Box::new(Yaml::file_exact(path))),
        _ => Err(RecipeError::File {
            file: path.display().to_string(),
            message: "a recipe must be a .toml, .yaml or .yml file".into(),
        }),
    }
}

/// Describes where a value came from, for messages.
pub fn origin(meta: Option<&Metadata>) -> String {
    match meta {
        Some(m) => match &m.source {
            Some(Source::File(p)) => p.display().to_string(),
            Some(Source::Code(_)) | Some(Source::Custom(_)) | None => m.name.to_string(),
            Some(other) => other.to_string(),
        },
        None => "recipe".into(),
    }
}

/// Why a key is unknown where serde lists no alternatives: an option-less method (an empty
/// struct variant of the internally tagged method enum) takes nothing but its `name`.
fn no_options_hint(fig: &Figment, path: &[String]) -> Option<String> {
    if path.first().is_none_or(|p| p != "method") {
        return None;
    }
    let name = fig.find_value("method.name").ok()?.into_string()?;
    Some(format!("method `{name}` takes no options besides `name`"))
}

fn figment_errors(err: figment::Error, fallback: &Path, fig: &Figment) -> RecipeError {
    let messages: Vec<(String, String, String)> = err
        .into_iter()
        .map(|e| {
            let origin = match &e.metadata {
                Some(m) => origin(Some(m)),
                None => fallback.display().to_string(),
            };
            let message = match &e.kind {
                figment::error::Kind::UnknownField(found, expected) => {
                    if expected.is_empty() {
                        match no_options_hint(fig, &e.path) {
                            Some(hint) => format!("unknown key `{found}`; {hint}"),
                            None => format!("unknown key `{found}`"),
                        }
                    } else {
                        format!(
                            "unknown key `{found}`; expected one of: {}",
                            expected.join(", ")
                        )
                    }
                }
                kind => kind.to_string(),
            };
            (origin, e.path.join("."), message)
        })
        .collect();
    let (origin, key, message) = messages.first().cloned().unwrap_or_default();
    let mut message = message;
    for (o, k, m) in messages.iter().skip(1) {
        message.push_str(&format!("; also {o}: key `{k}`: {m}"));
    }
    if key.is_empty() {
        RecipeError::File {
            file: origin,
            message,
        }
    } else {
        RecipeError::Value {
            origin,
            key,
            message,
        }
    }
}

/// The `extends` chain of `file`, root first.
fn chain(file: &Path) -> Result<Vec<PathBuf>, RecipeError> {
    let mut out: Vec<PathBuf> = Vec::new();
    let given = file.canonicalize().map_err(|e| RecipeError::File {
        file: file.display().to_string(),
        message: format!("cannot read recipe: {e}"),
    })?;
    let mut current = Some(given);
    while let Some(canonical) = current.take() {
        if out.contains(&canonical) {
            // The chain as followed: the given file first, then each parent, back to the repeat.
            let mut names: Vec<String> = out.iter().map(|p| p.display().to_string()).collect();
            names.push(canonical.display().to_string());
            return Err(RecipeError::Cycle(names.join(" → ")));
        }
        crate::recipe_bounds::check(&canonical).map_err(|message| RecipeError::File {
            file: canonical.display().to_string(),
            message,
        })?;
        let fig = Figment::from(provider_for_boxed(&canonical)?);
        refuse_empty(&canonical, &fig)?;
        // A file that does not parse has no readable `extends`; the full extraction below
        // reports its syntax error with the file name.
        let parent = match fig.find_value("extends") {
            Ok(v) => Some(v.into_string().ok_or_else(|| RecipeError::Value {
                origin: canonical.display().to_string(),
                key: "extends".into(),
                message: "expected the path of a parent recipe, relative to this file".into(),
            })?),
            Err(_) => None,
        };
        current = match parent {
            Some(p) => Some(parent_file(&canonical, &p)?),
            None => None,
        };
        out.push(canonical);
    }
    out.reverse();
    Ok(out)
}

/// The file `extends = "<target>"` in `child` names; a missing or unreadable target is an
/// error of the child's `extends` key.
fn parent_file(child: &Path, target: &str) -> Result<PathBuf, RecipeError> {
    let path = child.parent().unwrap_or(Path::new(".")).join(target);
    let problem = match path.canonicalize() {
        Ok(p) if p.is_file() => return Ok(p),
        Ok(_) => "is not a file".to_string(),
        Err(e) => format!("cannot be read: {e}"),
    };
    Err(RecipeError::Value {
        origin: child.display().to_string(),
        key: "extends".into(),
        message: format!(
            "the parent recipe `{target}` ({}) {problem}",
            path.display()
        ),
    })
}

/// An empty recipe would silently run every default (the full 75 000-iteration schedule).
fn refuse_empty(path: &Path, fig: &Figment) -> Result<(), RecipeError> {
    let empty = match fig.data() {
        Ok(profiles) => profiles.values().all(|d| d.is_empty()),
        // A syntax error: the full extraction reports it with the file name.
        Err(_) => false,
    };
    if empty {
        return Err(RecipeError::File {
            file: path.display().to_string(),
            message: "the recipe is empty; give at least the keys that differ from the \
                      defaults (the defaults alone are the official 75 000-iteration schedule), \
                      or `extends = \"other.toml\"` to start from another recipe"
                .into(),
        });
    }
    Ok(())
}

fn provider_for_boxed(path: &Path) -> Result<ProviderBox, RecipeError> {
    provider_for(path).map(ProviderBox)
}

/// Lets a boxed provider be merged into a figment.
struct ProviderBox(Box<dyn Provider>);

impl Provider for ProviderBox {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }
    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.0.data()
    }
}

/// One grid cell's value for a key, merged above the files and environment.
struct CellValue<'a> {
    /// The recipe whose `[grid]` declares the key.
    file: &'a Path,
    key: &'a str,
    value: &'a Value,
    cell: &'a str,
}

impl Provider for CellValue<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!(
            "{} (grid cell `{}`, grid.{})",
            self.file.display(),
            self.cell,
            self.key
        ))
    }
    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        if self.key == VARIANT {
            // A variant is a fragment of the recipe itself, merged at its root.
            return Serialized::defaults(self.value).data();
        }
        Serialized::default(self.key, self.value).data()
    }
}

/// Which of `schedule.iterations` and `schedule.epochs` the strongest layer that sets one of
/// them chose. A child recipe (or an override) that sets one replaces a parent's other: a TOML
/// file cannot write `iterations = null` the way YAML can.
#[derive(Default)]
struct LengthChoice {
    /// `(iterations, epochs)` set by the last layer that set either.
    last: Option<(bool, bool)>,
}

impl LengthChoice {
    fn see(&mut self, provider: &dyn Provider) {
        let Ok(data) = provider.data() else { return };
        let set = |key: &str| {
            data.values().any(|dict| {
                let schedule = match dict.get("schedule") {
                    Some(Value::Dict(_, d)) => d,
                    _ => return false,
                };
                schedule
                    .get(key)
                    .is_some_and(|v| !matches!(v, Value::Empty(..)))
            })
        };
        let (iterations, epochs) = (set("iterations"), set("epochs"));
        if iterations || epochs {
            self.last = Some((iterations, epochs));
        }
    }

    fn apply(&self, schedule: &mut ScheduleSection) {
        match self.last {
            Some((true, false)) => schedule.epochs = None,
            Some((false, true)) => schedule.iterations = None,
            // Both in one layer: `plan::resolve` refuses that, naming the key.
            _ => {}
        }
    }
}

/// Loads `file` with its `extends` chain, `OPT_*` environment variables (`__` separates key
/// levels: `OPT_SCHEDULE__LR=0.05`) and `--set` overrides, in increasing precedence.
pub fn load(file: &Path, overrides: &[String]) -> Result<Loaded, RecipeError> {
    load_cell(file, overrides, "", &[])
}

/// Like [`load`], with one grid cell's values merged above the environment and below `--set`
/// (the grid refuses `--set` on a key it varies). The cell's recipe carries no grid.
pub fn load_cell(
    file: &Path,
    overrides: &[String],
    cell: &str,
    values: &[(String, Value)],
) -> Result<Loaded, RecipeError> {
    let chain = chain(file)?;
    let mut fig = Figment::new();
    let mut length = LengthChoice::default();
    for f in &chain {
        let provider = provider_for_boxed(f)?;
        length.see(&provider);
        fig = fig.merge(provider);
    }
    for env in env_overrides()? {
        length.see(&env);
        fig = fig.merge(env);
    }
    for (key, value) in values {
        let provider = CellValue {
            file,
            key,
            value,
            cell,
        };
        length.see(&provider);
        fig = fig.merge(provider);
    }
    for text in overrides {
        let (key, value) = parse_override(text)?;
        let provider = CliOverride {
            key,
            value,
            text: text.clone(),
        };
        length.see(&provider);
        fig = fig.merge(provider);
    }
    let fallback = chain.last().cloned().unwrap_or_else(|| file.to_path_buf());
    let mut recipe: Recipe = fig
        .extract()
        .map_err(|e| figment_errors(e, &fallback, &fig))?;
    length.apply(&mut recipe.schedule);
    if !values.is_empty() {
        recipe.grid = None;
    }
    // Relative dataset paths are relative to the file that declared them.
    if let Some(p) = recipe.dataset.path.clone() {
        if p.is_relative() {
            if let Some(Source::File(declaring)) = fig
                .find_metadata("dataset.path")
                .and_then(|m| m.source.clone())
            {
                recipe.dataset.path = Some(declaring.parent().unwrap_or(Path::new(".")).join(p));
            }
        }
    }
    Ok(Loaded {
        recipe,
        figment: fig,
        file: file.to_path_buf(),
        chain,
    })
}

/// An error about recipe key `key`, naming the file, variable or override that set it (or
/// the recipe file, for a default).
pub(crate) fn invalid(loaded: &Loaded, key: &str, message: impl Into<String>) -> RecipeError {
    located(&loaded.figment, &loaded.file, key, message)
}

pub(crate) fn located(
    figment: &Figment,
    file: &Path,
    key: &str,
    message: impl Into<String>,
) -> RecipeError {
    let meta = figment.find_metadata(key);
    let origin = if meta.is_some() {
        origin(meta)
    } else {
        format!("{} (default)", file.display())
    };
    RecipeError::Value {
        origin,
        key: key.into(),
        message: message.into(),
    }
}
