//! How long a plan's training takes on this machine, said before it starts: the time of one
//! step from a finished run of the same network, method, batch, device and data in the cache,
//! else measured now (one warm-up and two real steps on synthetic inputs of the data's shape).

use crate::bench;
use crate::plan::{Keys, Plan};
use crate::store::ArtifactStore;
use opt_stages::data::preprocess::{self, DatasetStats};
use opt_stages::training::train_artifact;
use opt_stages::training::train_config::{Length, TrainConfig};

/// Where a step time came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A finished train artifact (its key).
    Recorded(String),
    /// Timed now.
    Measured,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepTime {
    pub ms: f64,
    pub source: Source,
}

/// Step times, measured at most once per distinct network, method, batch and device.
pub struct Estimator<'a> {
    store: &'a ArtifactStore,
    measured: Vec<(TrainConfig, f64)>,
}

/// The parts of a training configuration that decide a step's cost.
fn same_cost(a: &TrainConfig, b: &TrainConfig) -> bool {
    a.model == b.model
        && a.method == b.method
        && a.schedule.batch_size == b.schedule.batch_size
        && a.device == b.device
}

impl<'a> Estimator<'a> {
    pub fn new(store: &'a ArtifactStore) -> Self {
        Self {
            store,
            measured: Vec::new(),
        }
    }

    /// The data's statistics: a cached decode artifact's, else `None`.
    fn stats(&self, keys: &Keys) -> Option<DatasetStats> {
        let dir = self.store.dir("preprocess", &keys.preprocess);
        let text = std::fs::read_to_string(dir.join(preprocess::STATS_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn recorded(&self, plan: &Plan, keys: &Keys) -> Option<StepTime> {
        let dir = self.store.root().join("train");
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let key = entry.file_name().to_string_lossy().into_owned();
            let Some(manifest) = self.store.lookup("train", &key) else {
                continue;
            };
            let Ok(config) = serde_json::from_value::<TrainConfig>(manifest.config) else {
                continue;
            };
            let same_data = manifest.inputs.first() == Some(&keys.preprocess);
            if same_data && same_cost(&config, &plan.train) {
                let summary = train_artifact::load_summary(&entry.path()).ok()?;
                return Some(StepTime {
                    ms: summary.ms_per_step,
                    source: Source::Recorded(key),
                });
            }
        }
        None
    }

    /// One step's time for `plan`, or `None` when the data's shape is not known yet (an image
    /// folder not decoded) or the step cannot be built.
    pub fn step(&mut self, plan: &Plan, keys: &Keys) -> Option<StepTime> {
        if let Some(t) = self.recorded(plan, keys) {
            return Some(t);
        }
        if let Some((_, ms)) = self
            .measured
            .iter()
            .find(|(c, _)| same_cost(c, &plan.train))
        {
            return Some(StepTime {
                ms: *ms,
                source: Source::Measured,
            });
        }
        let (input, classes) = preprocess::known_shape(plan.fetch.dataset, plan.preprocess.label)
            .or_else(|| self.stats(keys).map(|s| (s.shape, s.classes)))?;
        let r = bench::measure_step(&plan.train, input, classes, 1, 2).ok()?;
        self.measured.push((plan.train.clone(), r.ms_per_step));
        Some(StepTime {
            ms: r.ms_per_step,
            source: Source::Measured,
        })
    }

    /// The training iterations of `plan`: known for `iterations`, and for `epochs` once the
    /// training set's size is (a cached decode artifact).
    pub fn iterations(&self, plan: &Plan, keys: &Keys) -> Option<u64> {
        match plan.train.schedule.length {
            Length::Iterations(n) => Some(n),
            Length::Epochs(_) => {
                let stats = self.stats(keys)?;
                let view = &plan.train.data;
                let n = view
                    .train_limit
                    .map_or(stats.train_count, |l| l.min(stats.train_count))
                    .saturating_sub(view.validation);
                let per_epoch = (n / plan.train.schedule.batch_size.max(1)) as u64;
                Some(plan.train.schedule.length.iterations(per_epoch))
            }
        }
    }
}

/// `3 min`, `11.6 h`, `2.1 days`.
pub fn duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 90.0 * 60.0 {
        format!("{:.0} min", seconds / 60.0)
    } else if seconds < 36.0 * 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.1} days", seconds / 86400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_a_readable_unit() {
        assert_eq!(duration(42.0), "42 s");
        assert_eq!(duration(600.0), "10 min");
        assert_eq!(duration(75_000.0 * 0.555), "11.6 h");
        assert_eq!(duration(3.0 * 86400.0), "3.0 days");
    }
}
