//! MLflow tracking through its REST API (`/api/2.0/mlflow/…`): a run's parameters, tags,
//! metrics with their steps and, at the end, its files as artifacts. Everything goes through a
//! background thread, so a slow or absent server never slows training: a failed request costs
//! one warning and is retried with back-off, and what could not be sent by the end (after a
//! bounded wait) is said then.
//!
//! The run's id is kept in a state file in the run's directory, so a resumed run continues its
//! MLflow run; metrics the server already holds (a killed session's, after its last checkpoint:
//! a resume recomputes the same values) are not sent twice — on connecting, the thread reads
//! the run's latest step per metric and skips every point at or before it.

use super::{eval_scalars, train_scalars, Tracker, THROUGHPUT};
use crate::training::train_artifact::{Curves, EvalPoint, TrainPoint};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// MLflow's limits per `log-batch` request.
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_PARAMS_PER_BATCH: usize = 100;
/// MLflow's longest parameter value (2.x and later).
const MAX_PARAM_LENGTH: usize = 6000;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const LONGEST_BACKOFF: Duration = Duration::from_secs(30);

/// What one run sends, and where.
#[derive(Debug, Clone)]
pub struct MlflowConfig {
    /// The tracking server, `http://host:port`.
    pub uri: String,
    pub experiment: String,
    pub run_name: String,
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    /// Where the run's MLflow id is kept (in the run's directory).
    pub state_file: PathBuf,
    /// How long the end of the run waits for unsent data before giving up on it.
    pub finish_wait: Duration,
}

/// The state file: which MLflow run this directory's run is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunState {
    uri: String,
    experiment_id: String,
    run_id: String,
}

struct Metric {
    key: String,
    value: f64,
    step: u64,
    timestamp: i64,
}

enum Message {
    Metrics(Vec<Metric>),
    Artifacts(Vec<PathBuf>),
    /// The run ended: send what is left (within the wait), mark the run finished if `finished`.
    End {
        finished: bool,
    },
}

/// A run's MLflow tracker: the sending thread and its channel.
pub struct Mlflow {
    uri: String,
    sender: Mutex<Option<Sender<Message>>>,
    worker: Mutex<Option<JoinHandle<Unsent>>>,
}

/// What could not be sent by the end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unsent {
    pub metrics: usize,
    pub params: usize,
    pub artifacts: usize,
    pub run_not_finished: bool,
}

impl Unsent {
    fn is_nothing(&self) -> bool {
        *self == Unsent::default()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Mlflow {
    /// Starts the sending thread (it connects, creates or finds the experiment and the run,
    /// and logs the parameters and tags, retrying until the end of the run).
    pub fn start(config: MlflowConfig) -> Self {
        let (sender, receiver) = channel();
        let uri = config.uri.clone();
        let worker = std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || Worker::new(config, receiver).run())
            .ok();
        if worker.is_none() {
            tracing::warn!("MLflow at {uri}: could not start the sending thread; nothing is sent");
        }
        Self {
            uri,
            sender: Mutex::new(Some(sender)),
            worker: Mutex::new(worker),
        }
    }

    fn send(&self, message: Message) {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sender.as_ref() {
            // A worker that has ended has said why already.
            let _ = s.send(message);
        }
    }

    fn metrics(&self, step: u64, values: impl IntoIterator<Item = (String, f64)>) {
        let timestamp = now_ms();
        let metrics = values
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(key, value)| Metric {
                key,
                value,
                step,
                timestamp,
            })
            .collect();
        self.send(Message::Metrics(metrics));
    }

    /// Ends the thread: what is queued is sent within the configured wait, and what could not
    /// be is said.
    fn end(&self, finished: bool) {
        self.send(Message::End { finished });
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(unsent) = worker.and_then(|w| w.join().ok()) else {
            return;
        };
        if !unsent.is_nothing() {
            tracing::warn!(
                "MLflow at {}: not sent: {} metric values, {} parameters, {} artifacts{}",
                self.uri,
                unsent.metrics,
                unsent.params,
                unsent.artifacts,
                if unsent.run_not_finished {
                    "; the run is not marked finished"
                } else {
                    ""
                }
            );
        }
    }
}

impl Drop for Mlflow {
    /// A run that stops early (a requested stop, an interrupt, an error) still sends what it
    /// queued, without marking the MLflow run finished.
    fn drop(&mut self) {
        self.end(false);
    }
}

impl Tracker for Mlflow {
    fn begin(&self, start: u64, history: &Curves) {
        for p in history.train.iter().filter(|p| p.iteration <= start) {
            self.train_points(std::slice::from_ref(p));
        }
        for e in history.eval.iter().filter(|e| e.iteration <= start) {
            self.evaluation(e);
        }
    }

    fn train_points(&self, points: &[TrainPoint]) {
        for p in points {
            let values = train_scalars(p).map(|(k, v)| (k.to_string(), v));
            self.metrics(p.iteration, values);
        }
    }

    fn evaluation(&self, point: &EvalPoint) {
        self.metrics(point.iteration, eval_scalars(point));
    }

    fn throughput(&self, iteration: u64, images_per_sec: f64) {
        self.metrics(iteration, [(THROUGHPUT.to_string(), images_per_sec)]);
    }

    fn attach(&self, files: &[&Path]) {
        self.send(Message::Artifacts(
            files.iter().map(|f| f.to_path_buf()).collect(),
        ));
    }

    fn finish(&self) {
        self.end(true);
    }
}

/// Why a request failed: worth retrying (no server, a server error) or not (the server
/// refused the request itself).
enum Failure {
    Retry(String),
    Refused(String),
}

/// The connected run.
struct Session {
    run_id: String,
    artifact_uri: String,
    /// The latest step the server holds per metric when this session connected.
    latest: HashMap<String, u64>,
}

struct Worker {
    config: MlflowConfig,
    receiver: Receiver<Message>,
    agent: ureq::Agent,
    base: String,
    session: Option<Session>,
    params_sent: bool,
    queue: VecDeque<Metric>,
    artifacts: Vec<PathBuf>,
    end: Option<(bool, Instant)>,
    unsent: Unsent,
    warned: bool,
}

impl Worker {
    fn new(config: MlflowConfig, receiver: Receiver<Message>) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .build();
        let base = config.uri.trim_end_matches('/').to_string();
        Self {
            config,
            receiver,
            agent,
            base,
            session: None,
            params_sent: false,
            queue: VecDeque::new(),
            artifacts: Vec::new(),
            end: None,
            unsent: Unsent::default(),
            warned: false,
        }
    }

    fn take(&mut self, message: Message) {
        match message {
            Message::Metrics(m) => self.queue.extend(m),
            Message::Artifacts(a) => self.artifacts.extend(a),
            Message::End { finished } => {
                self.end = Some((finished, Instant::now() + self.config.finish_wait))
            }
        }
    }

    /// Sends until the end message and the queue are through (or the wait after the end has
    /// passed), backing off after each failure.
    fn run(mut self) -> Unsent {
        let mut backoff = FIRST_BACKOFF;
        loop {
            while let Ok(m) = self.receiver.try_recv() {
                self.take(m);
            }
            match self.progress() {
                Ok(true) => return self.unsent,
                Ok(false) => backoff = FIRST_BACKOFF,
                Err(why) => {
                    if !self.warned {
                        tracing::warn!(
                            "MLflow at {}: {why}; training goes on, retrying in the background",
                            self.config.uri
                        );
                        self.warned = true;
                    }
                    if let Some((_, deadline)) = self.end {
                        if Instant::now() >= deadline {
                            return self.give_up();
                        }
                        backoff = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    }
                    match self.receiver.recv_timeout(backoff) {
                        Ok(m) => self.take(m),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) if self.end.is_none() => {
                            self.take(Message::End { finished: false })
                        }
                        Err(RecvTimeoutError::Disconnected) => {}
                    }
                    backoff = (backoff * 2).min(LONGEST_BACKOFF);
                    continue;
                }
            }
            if self.end.is_none() && self.queue.is_empty() {
                match self.receiver.recv() {
                    Ok(m) => self.take(m),
                    Err(_) => self.take(Message::End { finished: false }),
                }
            }
        }
    }

    /// Everything still queued, counted as unsent.
    fn give_up(mut self) -> Unsent {
        self.unsent.metrics += self.queue.len();
        if !self.params_sent {
            self.unsent.params += self.config.params.len();
        }
        self.unsent.artifacts += self.artifacts.len();
        if matches!(self.end, Some((true, _))) {
            self.unsent.run_not_finished = true;
        }
        self.unsent
    }

    /// One round of sending: connect, parameters, metrics, and at the end the artifacts and
    /// the run's status. `Ok(true)` when everything is through after the end.
    fn progress(&mut self) -> Result<bool, String> {
        if self.session.is_none() {
            self.session = Some(self.connect()?);
        }
        if !self.params_sent {
            self.send_params()?;
            self.params_sent = true;
        }
        self.send_metrics()?;
        let Some((finished, _)) = self.end else {
            return Ok(false);
        };
        self.send_artifacts()?;
        if finished {
            let run_id = self.session.as_ref().map(|s| s.run_id.clone());
            let body = json!({"run_id": run_id, "status": "FINISHED", "end_time": now_ms()});
            if let Err(why) = self.retry_only(self.call("POST", "runs/update", Some(body)))? {
                tracing::warn!(
                    "MLflow at {}: marking the run finished refused: {why}",
                    self.config.uri
                );
                self.unsent.run_not_finished = true;
            }
        }
        Ok(true)
    }

    fn call(&self, method: &str, endpoint: &str, body: Option<Value>) -> Result<Value, Failure> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let request = self.agent.request(method, &url);
        let response = match body {
            Some(b) => request.send_json(b),
            None => request.call(),
        };
        match response {
            Ok(r) => r
                .into_json()
                .map_err(|e| Failure::Retry(format!("{url}: unreadable answer: {e}"))),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let why = format!("{url}: HTTP {code}: {}", text.trim());
                if (400..500).contains(&code) {
                    Err(Failure::Refused(why))
                } else {
                    Err(Failure::Retry(why))
                }
            }
            Err(e) => Err(Failure::Retry(format!("{url}: {e}"))),
        }
    }

    /// A transient failure is an error to retry; a refusal is final.
    fn retry_only(&self, r: Result<Value, Failure>) -> Result<Result<Value, String>, String> {
        match r {
            Ok(v) => Ok(Ok(v)),
            Err(Failure::Refused(why)) => Ok(Err(why)),
            Err(Failure::Retry(why)) => Err(why),
        }
    }

    /// The experiment's id, created when it does not exist (another process may create it
    /// meanwhile: then it is read again).
    fn experiment_id(&self) -> Result<String, String> {
        let name = &self.config.experiment;
        let url = format!("experiments/get-by-name?experiment_name={}", encode(name));
        if let Ok(found) = self.retry_only(self.call("GET", &url, None))? {
            if let Some(id) = found["experiment"]["experiment_id"].as_str() {
                return Ok(id.to_string());
            }
        }
        let created = self.retry_only(self.call(
            "POST",
            "experiments/create",
            Some(json!({ "name": name })),
        ))?;
        match created {
            Ok(v) => v["experiment_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("experiments/create answered {v}")),
            Err(_) => {
                let again = self.retry_only(self.call("GET", &url, None))?;
                again
                    .ok()
                    .and_then(|v| {
                        v["experiment"]["experiment_id"]
                            .as_str()
                            .map(str::to_string)
                    })
                    .ok_or_else(|| format!("cannot create or find experiment {name:?}"))
            }
        }
    }

    /// The run this directory's run already has (state file), or a new one.
    fn connect(&mut self) -> Result<Session, String> {
        let state: Option<RunState> = std::fs::read(&self.config.state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|s: &RunState| s.uri == self.config.uri);
        if let Some(state) = state {
            let url = format!("runs/get?run_id={}", encode(&state.run_id));
            if let Ok(run) = self.retry_only(self.call("GET", &url, None))? {
                let info = &run["run"]["info"];
                if info["lifecycle_stage"].as_str() != Some("deleted") {
                    return Ok(session(&run, &state.run_id));
                }
            }
        }
        let experiment_id = self.experiment_id()?;
        let tags: Vec<Value> = self
            .config
            .tags
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let body = json!({
            "experiment_id": experiment_id,
            "run_name": self.config.run_name,
            "start_time": now_ms(),
            "tags": tags,
        });
        let created = self
            .retry_only(self.call("POST", "runs/create", Some(body)))?
            .map_err(|why| format!("cannot create the run: {why}"))?;
        let run_id = created["run"]["info"]["run_id"]
            .as_str()
            .ok_or_else(|| format!("runs/create answered {created}"))?
            .to_string();
        let state = RunState {
            uri: self.config.uri.clone(),
            experiment_id,
            run_id: run_id.clone(),
        };
        if let Err(e) = write_state(&self.config.state_file, &state) {
            tracing::warn!(
                "{}: {e}; a resumed run will open a new MLflow run",
                self.config.state_file.display()
            );
        }
        Ok(session(&created, &run_id))
    }

    fn send_params(&mut self) -> Result<(), String> {
        let run_id = self.session.as_ref().map(|s| s.run_id.clone());
        let params: Vec<Value> = self
            .config
            .params
            .iter()
            .map(|(k, v)| {
                let v: String = v.chars().take(MAX_PARAM_LENGTH).collect();
                json!({"key": k, "value": v})
            })
            .collect();
        let tags: Vec<Value> = self
            .config
            .tags
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        for (i, chunk) in params.chunks(MAX_PARAMS_PER_BATCH).enumerate() {
            let tags = if i == 0 { tags.clone() } else { vec![] };
            let body = json!({"run_id": run_id, "params": chunk, "tags": tags});
            if let Err(why) = self.retry_only(self.call("POST", "runs/log-batch", Some(body)))? {
                tracing::warn!("MLflow at {}: parameters refused: {why}", self.config.uri);
                self.unsent.params += chunk.len();
            }
        }
        Ok(())
    }

    /// Sends the queue in batches, skipping what the server held when this session connected.
    fn send_metrics(&mut self) -> Result<(), String> {
        let Some(session) = self.session.as_ref() else {
            return Ok(());
        };
        let run_id = session.run_id.clone();
        self.queue
            .retain(|m| session.latest.get(&m.key).is_none_or(|&l| m.step > l));
        while !self.queue.is_empty() {
            let n = self.queue.len().min(MAX_METRICS_PER_BATCH);
            let batch: Vec<Value> = self
                .queue
                .iter()
                .take(n)
                .map(|m| {
                    json!({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step})
                })
                .collect();
            let body = json!({"run_id": run_id, "metrics": batch});
            if let Err(why) = self.retry_only(self.call("POST", "runs/log-batch", Some(body)))? {
                tracing::warn!("MLflow at {}: metrics refused: {why}", self.config.uri);
                self.unsent.metrics += n;
            }
            self.queue.drain(..n);
        }
        Ok(())
    }

    /// Uploads each file through the server's artifact proxy (`mlflow server`'s default).
    fn send_artifacts(&mut self) -> Result<(), String> {
        let Some(session) = self.session.as_ref() else {
            return Ok(());
        };
        let Some(root) = session.artifact_uri.strip_prefix("mlflow-artifacts:/") else {
            if !self.artifacts.is_empty() {
                tracing::warn!(
                    "MLflow at {}: the run's artifact store ({}) is not the server's proxy; \
                     artifacts not sent (start the server with --serve-artifacts)",
                    self.config.uri,
                    session.artifact_uri
                );
                self.unsent.artifacts += self.artifacts.len();
                self.artifacts.clear();
            }
            return Ok(());
        };
        let root = root.trim_start_matches('/').to_string();
        while let Some(file) = self.artifacts.first().cloned() {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let url = format!(
                "{}/api/2.0/mlflow-artifacts/artifacts/{root}/{}",
                self.base,
                encode(&name)
            );
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("MLflow: cannot read {}: {e}", file.display());
                    self.unsent.artifacts += 1;
                    self.artifacts.remove(0);
                    continue;
                }
            };
            match self.agent.put(&url).send_bytes(&bytes) {
                Ok(_) => {}
                Err(ureq::Error::Status(code, r)) if (400..500).contains(&code) => {
                    let text = r.into_string().unwrap_or_default();
                    tracing::warn!("MLflow: {url}: HTTP {code}: {}", text.trim());
                    self.unsent.artifacts += 1;
                }
                Err(e) => return Err(format!("{url}: {e}")),
            }
            self.artifacts.remove(0);
        }
        Ok(())
    }
}

fn session(run: &Value, run_id: &str) -> Session {
    let latest = run["run"]["data"]["metrics"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| Some((m["key"].as_str()?.to_string(), m["step"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    Session {
        run_id: run_id.to_string(),
        artifact_uri: run["run"]["info"]["artifact_uri"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        latest,
    }
}

fn write_state(path: &Path, state: &RunState) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let aside = path.with_extension("json.tmp");
    std::fs::write(
        &aside,
        serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(aside, path)
}

/// Percent-encoding of a query or path component.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
