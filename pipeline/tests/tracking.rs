//! Tracking: every run's TensorBoard event files (`tb/` in its directory) hold exactly the
//! curves it records, survive a stop or a kill and the resume, and carry a grid cell's settings
//! for the HParams tab. The fast tier reads them back with this crate's reader; the slow tier
//! with TensorBoard's own (installed from PyPI into a virtual environment by
//! `scripts/tracking-venv.sh`).

mod common;

use common::{opt, run_ok, write, TINY};
use opt_stages::training::tracking::tensorboard::{event_files, read_scalars};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

type Scalars = BTreeMap<String, Vec<(u64, f32)>>;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `tb/` directories under a run directory, by cell.
fn tb_dirs(run_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run_dir.join("cells"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .flat_map(|cell| std::fs::read_dir(cell).unwrap().map(|e| e.unwrap().path()))
        .map(|seed| seed.join("tb"))
        .collect();
    dirs.sort();
    dirs
}

/// What TensorBoard must show for the run recorded in `dir`, from its `curves.csv` and
/// `layers.csv` (independently of the tracking code: the CSV files are the evaluate stage's),
/// as 32-bit floats as TensorBoard stores scalars.
fn expected_from_csv(dir: &Path) -> Scalars {
    expected_values(dir)
        .into_iter()
        .map(|(tag, points)| {
            (
                tag,
                points.into_iter().map(|(s, v)| (s, v as f32)).collect(),
            )
        })
        .collect()
}

/// Every tracked value of the run recorded in `dir`, from its CSV files, in full precision.
fn expected_values(dir: &Path) -> BTreeMap<String, Vec<(u64, f64)>> {
    let mut out: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    let mut push = |tag: String, step: u64, cell: &str| {
        if !cell.is_empty() {
            out.entry(tag)
                .or_default()
                .push((step, cell.parse().unwrap()));
        }
    };
    let columns = [
        ("lr", "train/lr"),
        ("train_loss", "train/loss"),
        ("train_acc", "train/accuracy"),
        ("test_loss", "test/loss"),
        ("test_top1", "test/top1"),
        ("test_top5", "test/top5"),
        ("val_loss", "validation/loss"),
        ("val_top1", "validation/top1"),
        ("energy_s1", "layers/mean_energy_s1"),
        ("orth_error", "layers/max_orth_error"),
    ];
    let mut curves = csv::Reader::from_path(dir.join("curves.csv")).unwrap();
    let header = curves.headers().unwrap().clone();
    for row in curves.records() {
        let row = row.unwrap();
        let step: u64 = row[0].parse().unwrap();
        for (column, tag) in columns {
            let at = header.iter().position(|h| h == column).unwrap();
            push(tag.to_string(), step, &row[at]);
        }
    }
    let mut layers = csv::Reader::from_path(dir.join("layers.csv")).unwrap();
    let header = layers.headers().unwrap().clone();
    for row in layers.records() {
        let row = row.unwrap();
        let step: u64 = row[0].parse().unwrap();
        for (at, column) in header.iter().enumerate().skip(2) {
            push(format!("layer/{}/{column}", &row[1]), step, &row[at]);
        }
    }
    out
}

/// The scalars without the throughput (a measurement of the machine, not of the run), which
/// must still be there: positive, at evaluations after step 0.
fn without_throughput(mut scalars: Scalars) -> Scalars {
    let throughput = scalars.remove("perf/images_per_sec").unwrap_or_default();
    assert!(!throughput.is_empty(), "no throughput in {scalars:?}");
    assert!(throughput.iter().all(|&(step, v)| step > 0 && v > 0.0));
    scalars
}

/// A run stopped after 3 steps (`--stop-after`) and resumed has, in TensorBoard, exactly the
/// scalars of its `curves.csv` and `layers.csv` and those of an uninterrupted run; a run whose
/// training came from the cache gets its event file too.
#[test]
fn tensorboard_holds_the_curves_through_a_stop_and_a_cached_training() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = write(
        tmp.path(),
        "tiny.toml",
        &TINY.replace("test_limit = 128", "test_limit = 128\nvalidation = 32"),
    );
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let run = |cache: &Path, out: &Path, more: &[&str]| {
        let mut args = vec![
            "run",
            s(&recipe),
            "--cache",
            s(cache),
            "--out",
            s(out),
            "-q",
        ];
        args.extend(more);
        run_ok(&args);
    };
    run(&cache, &out, &["--stop-after", "3"]);
    run(&cache, &out, &[]);
    let tb = &tb_dirs(&out)[0];
    assert_eq!(event_files(tb).len(), 1);
    let resumed = without_throughput(read_scalars(tb).unwrap());
    let expected = expected_from_csv(tb.parent().unwrap());
    assert!(
        expected.contains_key("validation/top1") && expected.contains_key("layer/fc6/energy_s2")
    );
    assert_eq!(resumed, expected);

    let (cache2, reference) = (tmp.path().join("c2"), tmp.path().join("r"));
    run(&cache2, &reference, &[]);
    let whole = without_throughput(read_scalars(&tb_dirs(&reference)[0]).unwrap());
    assert_eq!(resumed, whole);

    // The same training from the cache, recorded in another run directory.
    let again = tmp.path().join("again");
    run(&cache2, &again, &[]);
    let cached = read_scalars(&tb_dirs(&again)[0]).unwrap();
    assert!(!cached.contains_key("perf/images_per_sec"));
    assert_eq!(cached, whole);
}

/// The Python of the virtual environment with TensorBoard (installed on first use).
fn tracking_python() -> PathBuf {
    tracking_python_with(&[])
}

/// Every directory's scalars and HParams records as TensorBoard's own reader sees them.
fn read_with_tensorboard(dirs: &[PathBuf]) -> Vec<(Scalars, serde_json::Value)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/read_tensorboard.py");
    let out = std::process::Command::new(tracking_python())
        .arg(script)
        .args(dirs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    dirs.iter()
        .map(|d| {
            let run = &json[s(d)];
            let scalars = run["scalars"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(tag, points)| {
                    let points = points
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32))
                        .collect();
                    (tag.clone(), points)
                })
                .collect();
            (scalars, run["hparams"].clone())
        })
        .collect()
}

/// A two-cell grid killed (SIGKILL) while its first cell trains, past a checkpoint, then run
/// again to the end: through TensorBoard's own reader every run shows exactly its curves.csv
/// and layers.csv and the scalars of the same grid run without a kill; each cell's HParams
/// session holds its learning rate (a number), its cell as group, and a successful end.
#[test]
#[ignore = "slow tier (just test-slow)"]
fn tensorboard_reads_every_scalar_of_a_killed_and_resumed_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let text = TINY
        .replace("test_limit = 128", "test_limit = 128\nvalidation = 32")
        .replace("iterations = 6", "iterations = 1500")
        .replace("milestones = [4]", "milestones = [1000]")
        .replace("eval_every = 3", "eval_every = 400")
        .replace("checkpoint_every = 2", "checkpoint_every = 250");
    let recipe = write(
        tmp.path(),
        "grid.toml",
        &format!("{text}\n[grid]\n\"schedule.lr\" = [0.05, 0.02]\n"),
    );
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let args = [
        "run",
        s(&recipe),
        "--cache",
        s(&cache),
        "--out",
        s(&out),
        "-q",
    ];
    let mut child = opt()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Past the first checkpoint, then a little further: the steps after it are lost.
    let t = Instant::now();
    let checkpoint_written = || {
        std::fs::read_dir(cache.join("train"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| e.path().join("checkpoints/last.safetensors").is_file())
    };
    while !checkpoint_written() {
        assert!(t.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let (_, resumed) = run_ok(&["run", s(&recipe), "--cache", s(&cache), "--out", s(&out)]);
    assert!(
        resumed.contains("resuming from checkpoint at iteration"),
        "{resumed}"
    );

    let reference = tmp.path().join("r");
    run_ok(&[
        "run",
        s(&recipe),
        "--cache",
        s(&tmp.path().join("c2")),
        "--out",
        s(&reference),
        "-q",
    ]);
    let dirs = tb_dirs(&out);
    let reference_dirs = tb_dirs(&reference);
    assert_eq!(dirs.len(), 2);
    let seen = read_with_tensorboard(&dirs);
    let whole = read_with_tensorboard(&reference_dirs);
    for ((dir, (scalars, hparams)), (whole_scalars, _)) in dirs.iter().zip(seen).zip(whole) {
        let scalars = without_throughput(scalars);
        let expected = expected_from_csv(dir.parent().unwrap());
        assert_eq!(expected["train/loss"].len(), 1500);
        assert_eq!(scalars, expected, "{}", dir.display());
        assert_eq!(
            scalars,
            without_throughput(whole_scalars),
            "{}",
            dir.display()
        );

        let cell = dir.parent().unwrap().parent().unwrap();
        let cell = cell.file_name().unwrap().to_str().unwrap();
        let start = &hparams["_hparams_/session_start_info"]["sessionStartInfo"];
        let lr: f64 = cell.trim_start_matches("lr=").parse().unwrap();
        // A number (google.protobuf.Value's JSON form is the bare value), not text.
        assert_eq!(start["hparams"]["schedule.lr"], lr, "{hparams}");
        assert_eq!(start["groupName"], cell, "{hparams}");
        let end = &hparams["_hparams_/session_end_info"]["sessionEndInfo"];
        assert_eq!(end["status"], "STATUS_SUCCESS", "{hparams}");
    }
}

/// A real `mlflow server` (from PyPI, in the tracking virtual environment) on 127.0.0.1 with a
/// SQLite store and its artifact proxy, stopped (its whole process group) when dropped.
struct MlflowServer {
    child: std::process::Child,
    uri: String,
}

impl MlflowServer {
    fn start(dir: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let python = tracking_python_with(&["--mlflow"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("mlflow-server.log")).unwrap();
        let child = std::process::Command::new(python)
            .args(["-m", "mlflow", "server", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let server = Self {
            child,
            uri: format!("http://127.0.0.1:{port}"),
        };
        let t = Instant::now();
        while ureq::get(&format!("{}/health", server.uri)).call().is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(240),
                "mlflow server did not start:\n{}",
                std::fs::read_to_string(dir.join("mlflow-server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }

    fn get(&self, endpoint: &str) -> serde_json::Value {
        ureq::get(&format!("{}/api/2.0/mlflow/{endpoint}", self.uri))
            .call()
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"))
            .into_json()
            .unwrap()
    }

    fn post(&self, endpoint: &str, body: serde_json::Value) -> serde_json::Value {
        ureq::post(&format!("{}/api/2.0/mlflow/{endpoint}", self.uri))
            .send_json(body)
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"))
            .into_json()
            .unwrap()
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tracking_python_with(args: &[&str]) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tracking-venv.sh");
    let out = std::process::Command::new(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/tracking-venv.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A grid stopped after 3 steps and resumed, tracked in a real MLflow server: one MLflow run
/// per cell (the resume continued it), named after the cell in an experiment named after the
/// recipe, holding every value of its curves.csv and layers.csv at its step exactly once, the
/// recipe's settings as parameters, the cache keys as tags and the run's files as artifacts.
/// Then the server is killed while a longer run trains: the run still finishes, and says what
/// it could not send.
#[test]
#[ignore = "slow tier (just test-slow)"]
fn mlflow_records_every_run_and_survives_its_server_going_away() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = MlflowServer::start(tmp.path());
    let recipe = write(
        tmp.path(),
        "tracked.toml",
        &format!("{TINY}\n[grid]\n\"schedule.lr\" = [0.05, 0.02]\n"),
    );
    let (cache, out) = (tmp.path().join("c"), tmp.path().join("o"));
    let run = |more: &[&str]| {
        let mut args = vec![
            "run",
            s(&recipe),
            "--cache",
            s(&cache),
            "--out",
            s(&out),
            "-q",
        ];
        args.extend(more);
        let result = opt()
            .args(&args)
            .env("MLFLOW_TRACKING_URI", &server.uri)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr).to_string();
        assert!(result.status.success(), "{stderr}");
        stderr
    };
    run(&["--stop-after", "3"]);
    let quiet = run(&[]);
    assert!(!quiet.contains("MLflow"), "{quiet}");

    let experiment = server.get("experiments/get-by-name?experiment_name=tiny");
    let experiment_id = experiment["experiment"]["experiment_id"].as_str().unwrap();
    let runs = server.post(
        "runs/search",
        serde_json::json!({ "experiment_ids": [experiment_id], "max_results": 100 }),
    );
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "one MLflow run per cell: {runs:?}");
    for tb in tb_dirs(&out) {
        let dir = tb.parent().unwrap();
        let row: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("row.json")).unwrap()).unwrap();
        let run = runs
            .iter()
            .find(|r| r["info"]["run_name"] == format!("{}/seed-7", row["cell"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("no run for {}", dir.display()));
        assert_eq!(run["info"]["status"], "FINISHED");
        let run_id = run["info"]["run_id"].as_str().unwrap();
        let value_of = |list: &str, key: &str| {
            run["data"][list]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["key"] == key)
                .map(|p| p["value"].as_str().unwrap().to_string())
        };
        let lr = row["params"][0][1].as_str().unwrap();
        assert_eq!(
            value_of("params", "schedule.lr")
                .unwrap()
                .parse::<f64>()
                .unwrap(),
            lr.parse::<f64>().unwrap()
        );
        assert_eq!(value_of("params", "model.width").as_deref(), Some("4"));
        assert_eq!(
            value_of("params", "dataset.source").as_deref(),
            Some("embedded")
        );
        let provenance = &row["provenance"];
        assert_eq!(
            value_of("tags", "orthopt.key.train").as_deref(),
            provenance["train_key"].as_str()
        );
        assert_eq!(
            value_of("tags", "orthopt.key.evaluate").as_deref(),
            provenance["evaluate_key"].as_str()
        );
        assert_eq!(
            value_of("tags", "orthopt.method").as_deref(),
            Some("baseline")
        );

        for (tag, expected) in expected_values(dir) {
            let history = server.get(&format!(
                "metrics/get-history?run_id={run_id}&metric_key={}",
                tag.replace('/', "%2F")
            ));
            let mut points: Vec<(u64, f64)> = history["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["step"].as_u64().unwrap(), m["value"].as_f64().unwrap()))
                .collect();
            points.sort_by(|a, b| a.partial_cmp(b).unwrap());
            assert_eq!(points, expected, "{tag} in {}", dir.display());
        }
        let artifacts = server.get(&format!("artifacts/list?run_id={run_id}"));
        let mut files: Vec<&str> = artifacts["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["curves.csv", "layers.csv", "model.safetensors", "row.json"]
        );
    }

    // The server goes away while a longer run trains.
    let long = TINY
        .replace("name = \"tiny\"", "name = \"long\"")
        .replace("iterations = 6", "iterations = 1500")
        .replace("milestones = [4]", "milestones = [1000]")
        .replace("eval_every = 3", "eval_every = 300")
        .replace("checkpoint_every = 2", "checkpoint_every = 500");
    let long = write(tmp.path(), "long.toml", &long);
    let child = opt()
        .args([
            "run",
            s(&long),
            "--cache",
            s(&cache),
            "--out",
            s(&tmp.path().join("l")),
            "-q",
        ])
        .env("MLFLOW_TRACKING_URI", &server.uri)
        .env("ORTHOPT_MLFLOW_WAIT", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !std::fs::read_dir(cache.join("train"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|e| e.path().join("checkpoints/last.safetensors").is_file())
    {
        assert!(t.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("retrying in the background"), "{stderr}");
    assert!(stderr.contains("not sent:"), "{stderr}");
    let rows = std::fs::read_to_string(tmp.path().join("l/results.csv")).unwrap();
    assert_eq!(rows.lines().count(), 2, "{rows}");
}
