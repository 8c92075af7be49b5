//! TensorBoard event files: every scalar a run records, written as training goes (TFRecord
//! framing of `tensorflow.Event` protobufs, [`super::record`], [`super::proto`]), with the
//! HParams plugin's session data so the HParams tab compares a grid's cells.
//!
//! A training session's [`Tracker::begin`] rewrites the directory's event file from the run's
//! record (the checkpoint's curves) and only then continues it: a resumed run shows exactly the
//! steps an uninterrupted one shows, whatever a killed session had written after its last
//! checkpoint. What the record does not hold — wall times and throughput — is carried over from
//! the previous file for the steps the record keeps.

use super::proto::{
    event, hparams_plugin_data, proto_value, summary_value, Event, HParamsPluginData, PluginData,
    ProtoValue, SessionEndInfo, SessionStartInfo, Summary, SummaryMetadata, SummaryValue,
    TensorProto, TensorShapeDim, TensorShapeProto, DT_FLOAT, STATUS_SUCCESS,
};
use super::record::{read_records, write_record, RecordError};
use super::{eval_scalars, train_scalars, Tracker, THROUGHPUT};
use crate::error::{format_err, IoContext};
use crate::training::train_artifact::{Curves, EvalPoint, TrainPoint};
use crate::Result;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The first record of every event file.
const FILE_VERSION: &str = "brain.Event:2";
/// What TensorBoard looks for in an event file's name.
const EVENT_FILE_MARK: &str = "tfevents";
const HPARAMS_PLUGIN: &str = "hparams";
const SESSION_START_TAG: &str = "_hparams_/session_start_info";
const SESSION_END_TAG: &str = "_hparams_/session_end_info";

/// One event file, written record by record.
struct EventWriter {
    file: BufWriter<File>,
}

impl EventWriter {
    /// Creates `path` with its file-version record.
    fn create(path: &Path) -> std::io::Result<Self> {
        let mut w = Self {
            file: BufWriter::new(File::create(path)?),
        };
        w.write(&Event {
            wall_time: now(),
            step: 0,
            what: Some(event::What::FileVersion(FILE_VERSION.into())),
        })?;
        Ok(w)
    }

    fn write(&mut self, e: &Event) -> std::io::Result<()> {
        write_record(&mut self.file, &e.encode_to_vec())
    }
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An event holding scalars (TensorBoard's `simple_value`, a 32-bit float).
pub fn scalar_event(step: u64, wall_time: f64, values: &[(String, f64)]) -> Event {
    let value = values
        .iter()
        .map(|(tag, v)| SummaryValue {
            tag: tag.clone(),
            metadata: None,
            value: Some(summary_value::Value::SimpleValue(*v as f32)),
        })
        .collect();
    summary_event(step, wall_time, value)
}

fn summary_event(step: u64, wall_time: f64, value: Vec<SummaryValue>) -> Event {
    Event {
        wall_time,
        step: step as i64,
        what: Some(event::What::Summary(Summary { value })),
    }
}

/// An HParams plugin record, as TensorBoard's `hparams` summary API writes it: the data in the
/// metadata, an empty float tensor as the value.
fn hparams_event(step: u64, wall_time: f64, tag: &str, data: hparams_plugin_data::Data) -> Event {
    let content = HParamsPluginData {
        version: 0,
        data: Some(data),
    };
    let value = SummaryValue {
        tag: tag.into(),
        metadata: Some(SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: HPARAMS_PLUGIN.into(),
                content: content.encode_to_vec(),
            }),
        }),
        value: Some(summary_value::Value::Tensor(TensorProto {
            dtype: DT_FLOAT,
            tensor_shape: Some(TensorShapeProto {
                dim: vec![TensorShapeDim { size: 0 }],
            }),
            float_val: vec![],
        })),
    };
    summary_event(step, wall_time, vec![value])
}

/// A hyperparameter's value as the HParams tab compares it: a number, a boolean, or text.
fn hparam_value(text: &str) -> ProtoValue {
    let kind = match text {
        "true" => proto_value::Kind::BoolValue(true),
        "false" => proto_value::Kind::BoolValue(false),
        _ => match text.parse::<f64>() {
            Ok(v) if v.is_finite() => proto_value::Kind::NumberValue(v),
            _ => proto_value::Kind::StringValue(text.into()),
        },
    };
    ProtoValue { kind: Some(kind) }
}

/// The event files in `dir`, in the order TensorBoard reads them (by name).
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(EVENT_FILE_MARK))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// The events of one file, and the damage that stopped the reading, if any.
pub fn read_event_file(path: &Path) -> Result<(Vec<Event>, Option<RecordError>)> {
    let bytes = std::fs::read(path).at(path)?;
    let (records, damage) = read_records(&bytes);
    let events = records
        .into_iter()
        .map(|r| Event::decode(r).map_err(|e| format_err(path, format!("not an event: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    Ok((events, damage))
}

/// Every scalar in `dir`'s event files: tag → (step, value) in file order. Damage is an error
/// naming the file.
pub fn read_scalars(dir: &Path) -> Result<BTreeMap<String, Vec<(u64, f32)>>> {
    let mut out: BTreeMap<String, Vec<(u64, f32)>> = BTreeMap::new();
    for path in event_files(dir) {
        let (events, damage) = read_event_file(&path)?;
        if let Some(d) = damage {
            return Err(format_err(&path, d.to_string()));
        }
        for e in events {
            let Some(event::What::Summary(s)) = e.what else {
                continue;
            };
            for v in s.value {
                if let Some(summary_value::Value::SimpleValue(x)) = v.value {
                    out.entry(v.tag).or_default().push((e.step as u64, x));
                }
            }
        }
    }
    Ok(out)
}

/// What a previous session's files say that the run's record does not: the wall time of each
/// step and the throughput scalars.
#[derive(Default)]
struct Previous {
    wall_times: HashMap<u64, f64>,
    throughput: BTreeMap<u64, f64>,
}

/// Reads what `dir`'s event files hold, as far as they are readable (a killed writer leaves a
/// cut last record; what comes before it counts).
fn read_previous(dir: &Path) -> Previous {
    let mut previous = Previous::default();
    for path in event_files(dir) {
        let Ok((events, _)) = read_event_file(&path) else {
            continue;
        };
        for e in events {
            let Some(event::What::Summary(s)) = e.what else {
                continue;
            };
            let step = e.step.max(0) as u64;
            previous.wall_times.entry(step).or_insert(e.wall_time);
            for v in s.value {
                if let (THROUGHPUT, Some(summary_value::Value::SimpleValue(x))) =
                    (v.tag.as_str(), v.value)
                {
                    previous.throughput.insert(step, x as f64);
                }
            }
        }
    }
    previous
}

/// A run's TensorBoard directory (one run in TensorBoard's run list).
pub struct TensorBoard {
    dir: PathBuf,
    /// The cell's varied settings (the HParams tab's columns) and its name (the session group:
    /// a cell's seeds are one group).
    hparams: Vec<(String, String)>,
    group: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// `None` before `begin`, and after a write failed (said once; the run goes on).
    writer: Option<EventWriter>,
    last_step: u64,
}

impl TensorBoard {
    pub fn new(dir: PathBuf, hparams: Vec<(String, String)>, group: String) -> Self {
        Self {
            dir,
            hparams,
            group,
            state: Mutex::new(State::default()),
        }
    }

    /// Runs `f` on the open writer and flushes; a failure is said once and ends this
    /// session's writing (the curves the run records are unaffected).
    fn with_writer(&self, f: impl FnOnce(&mut EventWriter, &mut u64) -> std::io::Result<()>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { writer, last_step } = &mut *state;
        let Some(w) = writer.as_mut() else {
            return;
        };
        if let Err(e) = f(w, last_step).and_then(|()| w.file.flush()) {
            self.give_up(&mut state, &e.to_string());
        }
    }

    fn give_up(&self, state: &mut State, why: &str) {
        state.writer = None;
        tracing::warn!(
            "TensorBoard events in {} stop here: {why} (curves.csv still records the run)",
            self.dir.display()
        );
    }

    fn session_start(&self, wall_time: f64) -> Event {
        let info = SessionStartInfo {
            hparams: self
                .hparams
                .iter()
                .map(|(k, v)| (k.clone(), hparam_value(v)))
                .collect(),
            group_name: self.group.clone(),
            start_time_secs: wall_time,
        };
        hparams_event(
            0,
            wall_time,
            SESSION_START_TAG,
            hparams_plugin_data::Data::SessionStartInfo(info),
        )
    }

    /// Writes a new event file holding the session start and `history` up to step `start`,
    /// then replaces the directory's old files with it (written aside and renamed, so a kill
    /// at any moment leaves either the old files or the new one, never both).
    fn rewrite(&self, start: u64, history: &Curves) -> std::io::Result<(EventWriter, u64)> {
        std::fs::create_dir_all(&self.dir)?;
        let previous = read_previous(&self.dir);
        let wall = |step: u64| previous.wall_times.get(&step).copied().unwrap_or_else(now);
        let mut steps: BTreeMap<u64, Vec<(String, f64)>> = BTreeMap::new();
        for p in history.train.iter().filter(|p| p.iteration <= start) {
            let values = train_scalars(p).map(|(tag, v)| (tag.to_string(), v));
            steps.entry(p.iteration).or_default().extend(values);
        }
        for e in history.eval.iter().filter(|e| e.iteration <= start) {
            steps
                .entry(e.iteration)
                .or_default()
                .extend(eval_scalars(e));
        }
        for (&step, &v) in previous.throughput.range(..=start) {
            steps
                .entry(step)
                .or_default()
                .push((THROUGHPUT.to_string(), v));
        }
        let aside = self.dir.join(format!(".events.{}.tmp", std::process::id()));
        let mut w = EventWriter::create(&aside)?;
        w.write(&self.session_start(wall(0)))?;
        for (&step, values) in &steps {
            w.write(&scalar_event(step, wall(step), values))?;
        }
        w.file.flush()?;
        for old in event_files(&self.dir) {
            std::fs::remove_file(old)?;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', '.'], "-"))
            .unwrap_or_else(|_| "localhost".into());
        let name = format!(
            "events.out.{EVENT_FILE_MARK}.{}.{host}.{}.0",
            now() as u64,
            std::process::id()
        );
        std::fs::rename(&aside, self.dir.join(name))?;
        Ok((w, steps.keys().next_back().copied().unwrap_or(0)))
    }
}

impl Tracker for TensorBoard {
    fn begin(&self, start: u64, history: &Curves) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match self.rewrite(start, history) {
            Ok((writer, last_step)) => {
                *state = State {
                    writer: Some(writer),
                    last_step,
                }
            }
            Err(e) => self.give_up(&mut state, &e.to_string()),
        }
    }

    fn train_points(&self, points: &[TrainPoint]) {
        self.with_writer(|w, last| {
            for p in points {
                let values = train_scalars(p).map(|(tag, v)| (tag.to_string(), v));
                w.write(&scalar_event(p.iteration, now(), &values))?;
                *last = p.iteration;
            }
            Ok(())
        });
    }

    fn evaluation(&self, point: &EvalPoint) {
        self.with_writer(|w, last| {
            *last = point.iteration;
            w.write(&scalar_event(point.iteration, now(), &eval_scalars(point)))
        });
    }

    fn throughput(&self, iteration: u64, images_per_sec: f64) {
        self.with_writer(|w, last| {
            *last = iteration;
            let values = [(THROUGHPUT.to_string(), images_per_sec)];
            w.write(&scalar_event(iteration, now(), &values))
        });
    }

    /// The HParams session's end, at the last step (a session that ends is a finished cell in
    /// the HParams tab).
    fn finish(&self) {
        self.with_writer(|w, last| {
            let end = SessionEndInfo {
                status: STATUS_SUCCESS,
                end_time_secs: now(),
            };
            w.write(&hparams_event(
                *last,
                now(),
                SESSION_END_TAG,
                hparams_plugin_data::Data::SessionEndInfo(end),
            ))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::metrics::LayerMetrics;

    fn train_point(i: u64) -> TrainPoint {
        TrainPoint {
            iteration: i,
            lr: if i <= 5 { 0.1 } else { 0.01 },
            loss: 2.0 / (i as f64 + 1.0),
            acc: i as f64 / 10.0,
        }
    }

    fn eval_point(i: u64) -> EvalPoint {
        EvalPoint {
            iteration: i,
            loss: 1.0 + 1.0 / (i as f64 + 1.0),
            top1: 0.1 + i as f64 / 100.0,
            top5: Some(0.5),
            val_loss: None,
            val_top1: None,
            layers: vec![LayerMetrics {
                layer: "conv1".into(),
                energy_s0: 1.5,
                energy_s1: 0.75 + i as f64,
                energy_s2: 0.5,
                half_energy_s0: 1.0,
                half_energy_s1: 0.25,
                half_energy_s2: 0.125,
                orth_error: Some(1e-6 * i as f64),
            }],
        }
    }

    /// A session of a run with 10 steps and an evaluation every 4, from `start` to the end (or
    /// to `stop`, like a process killed there), told to `tb` as the trainer tells it.
    fn session(tb: &TensorBoard, start: u64, stop: u64) {
        let history = Curves {
            train: (1..=start).map(train_point).collect(),
            eval: match start {
                0 => vec![],
                _ => (0..=start).step_by(4).map(eval_point).collect(),
            },
        };
        tb.begin(start, &history);
        if start == 0 {
            tb.evaluation(&eval_point(0));
        }
        for i in start + 1..=stop {
            tb.train_points(&[train_point(i)]);
            if i % 4 == 0 {
                tb.evaluation(&eval_point(i));
                tb.throughput(i, 1000.0 + i as f64);
            }
        }
        if stop == 10 {
            tb.evaluation(&eval_point(10));
            tb.finish();
        }
    }

    fn tracker(dir: &Path) -> TensorBoard {
        let hparams = vec![("method.name".into(), "gs".into())];
        TensorBoard::new(dir.to_path_buf(), hparams, "method=gs".into())
    }

    /// Every scalar reads back under its name at its step, in 32 bits; the run's three
    /// evaluations carry the per-layer energies and orthogonality error.
    #[test]
    fn scalars_read_back_at_their_steps() {
        let dir = tempfile::tempdir().unwrap();
        session(&tracker(dir.path()), 0, 10);
        let scalars = read_scalars(dir.path()).unwrap();
        let loss: Vec<(u64, f32)> = (1..=10)
            .map(|i| (i, (2.0 / (i as f64 + 1.0)) as f32))
            .collect();
        assert_eq!(scalars["train/loss"], loss);
        assert_eq!(scalars["train/lr"][5], (6, 0.01f32));
        assert_eq!(
            scalars["test/top1"],
            vec![(0, 0.1f32), (4, 0.14), (8, 0.18), (10, 0.2)]
        );
        assert_eq!(scalars["layer/conv1/energy_s1"][1], (4, 4.75f32));
        assert_eq!(scalars["layer/conv1/orth_error"][2], (8, 8e-6f32));
        assert_eq!(scalars["layers/max_orth_error"][2], (8, 8e-6f32));
        assert_eq!(scalars[THROUGHPUT], vec![(4, 1004.0f32), (8, 1008.0)]);
        assert!(!scalars.contains_key("validation/top1"));
    }

    /// A session killed at step 7 (its file cut inside a record) and resumed from the
    /// checkpoint at step 4 ends with exactly the scalars of an uninterrupted run: the steps
    /// 5–7 the killed session wrote are not repeated, the throughput it measured up to the
    /// checkpoint is kept, and one event file remains.
    #[test]
    fn a_killed_then_resumed_run_has_the_scalars_of_an_uninterrupted_one() {
        let (whole, killed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        session(&tracker(whole.path()), 0, 10);

        session(&tracker(killed.path()), 0, 7);
        let file = &event_files(killed.path())[0];
        let bytes = std::fs::read(file).unwrap();
        std::fs::write(file, &bytes[..bytes.len() - 5]).unwrap();
        session(&tracker(killed.path()), 4, 10);

        assert_eq!(event_files(killed.path()).len(), 1);
        assert_eq!(
            read_scalars(killed.path()).unwrap(),
            read_scalars(whole.path()).unwrap()
        );
    }

    /// The HParams records decode as TensorBoard's plugin reads them: the cell's settings
    /// (numbers as numbers), its group, and a successful end.
    #[test]
    fn hparams_session_records_decode() {
        let dir = tempfile::tempdir().unwrap();
        let tb = TensorBoard::new(
            dir.path().to_path_buf(),
            vec![
                ("schedule.lr".into(), "0.05".into()),
                ("method.name".into(), "gs".into()),
                ("augment.flip".into(), "false".into()),
            ],
            "cell".into(),
        );
        tb.begin(0, &Curves::default());
        tb.finish();
        let (events, damage) = read_event_file(&event_files(dir.path())[0]).unwrap();
        assert_eq!(damage, None);
        assert_eq!(
            events[0].what,
            Some(event::What::FileVersion(FILE_VERSION.into()))
        );
        let plugin = |e: &Event| match &e.what {
            Some(event::What::Summary(s)) => {
                let v = &s.value[0];
                let data = v.metadata.clone().unwrap().plugin_data.unwrap();
                assert_eq!(data.plugin_name, "hparams");
                (
                    v.tag.clone(),
                    HParamsPluginData::decode(&data.content[..]).unwrap(),
                )
            }
            other => panic!("not a summary: {other:?}"),
        };
        let (tag, start) = plugin(&events[1]);
        assert_eq!(tag, SESSION_START_TAG);
        let Some(hparams_plugin_data::Data::SessionStartInfo(info)) = start.data else {
            panic!("{start:?}")
        };
        assert_eq!(info.group_name, "cell");
        let kind = |k: &str| info.hparams[k].kind.clone().unwrap();
        assert_eq!(kind("schedule.lr"), proto_value::Kind::NumberValue(0.05));
        assert_eq!(
            kind("method.name"),
            proto_value::Kind::StringValue("gs".into())
        );
        assert_eq!(kind("augment.flip"), proto_value::Kind::BoolValue(false));
        let (tag, end) = plugin(&events[2]);
        assert_eq!(tag, SESSION_END_TAG);
        assert!(matches!(
            end.data,
            Some(hparams_plugin_data::Data::SessionEndInfo(SessionEndInfo {
                status: 1,
                ..
            }))
        ));
    }

    /// A directory that cannot be written costs a warning, not the run.
    #[test]
    fn an_unwritable_directory_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"").unwrap();
        let tb = tracker(&blocked.join("tb"));
        session(&tb, 0, 10);
        assert!(event_files(&blocked).is_empty());
    }
}
