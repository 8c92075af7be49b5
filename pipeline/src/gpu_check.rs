//! `orthopt gpu-check`: the GPU path checked in minutes, on a machine with nothing but the
//! binary. Three parts, written to `report.json` and `report.md`:
//! 1. every op of `opt_core::ops` and its gradients on the device under test against a
//!    reference — the same op on the CPU when the device is a GPU, the op's composed candle
//!    formulation when it is the CPU (CI's plumbing run) — as max absolute and normalised
//!    differences;
//! 2. a short training of every method on a fixed synthetic batch: the loss must fall and
//!    the exact maps' rotations stay orthogonal;
//! 3. the benchmark table (images/s and ms/step per method beside `baseline` from the same
//!    run, each map's time at the given sizes, and the batched maps — one op for `b` layers, as
//!    an OPT network computes them — beside `b` lone calls).

use crate::bench::{self, BenchConfig};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};
use opt_core::ops;
use opt_core::orth::orthogonality_error;
use opt_stages::training::device::DeviceChoice;
use opt_stages::training::model::{build, MethodConfig, ModelConfig};
use opt_stages::training::optimizers::Optimizers;
use opt_stages::training::train::step;
use serde::Serialize;
use std::path::Path;

/// How much to do: `full` is the GPU run's size (minutes on an H200), `quick` CI's CPU run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Quick,
    Full,
}

#[derive(Debug, Clone)]
pub struct GpuCheckConfig {
    pub device: DeviceChoice,
    pub size: Size,
    /// Map sizes to time (576 and 1024 in the full run).
    pub map_sizes: Vec<usize>,
}

#[derive(Debug, Serialize)]
pub struct OpAgreement {
    pub op: String,
    /// Which value: `out`, `out[1]`, `grad[0]`, …
    pub value: String,
    pub max_abs: f64,
    /// `max_abs / max |reference|`.
    pub normalised: f64,
    pub tolerance: f64,
    pub pass: bool,
}

/// One row of the device self-check a run performs when it opens the device
/// (`opt_core::ops::self_check`), as the check reports it.
#[derive(Debug, Serialize)]
pub struct SelfCheckRow {
    pub case: String,
    /// The op or map route under test.
    pub subject: String,
    pub same_device: Option<f64>,
    pub cpu: Option<f64>,
    pub tolerance: f64,
    pub error: Option<String>,
    pub pass: bool,
}

#[derive(Debug, Serialize)]
pub struct TrainingCheck {
    pub method: String,
    pub steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    /// The largest `‖RRᵀ − I‖_F` over the layers' rotations (none for baseline).
    pub max_orth_error: Option<f64>,
    pub pass: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchRow {
    pub method: String,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    pub vs_baseline: f64,
}

#[derive(Debug, Serialize)]
pub struct MapRow {
    pub map: String,
    pub d: usize,
    pub forward_ms: f64,
    pub forward_backward_ms: f64,
    pub orth_error: f64,
}

/// One batched map (`orthogonalize_batched` of `b` matrices) beside `b` lone `orthogonalize`
/// calls of the same matrices, on the device under test.
#[derive(Debug, Serialize)]
pub struct BatchedMapRow {
    pub map: String,
    pub d: usize,
    pub b: usize,
    pub forward_ms: f64,
    pub forward_backward_ms: f64,
    pub lone_forward_backward_ms: f64,
    /// The largest `‖QQᵀ − I‖_F` over the batch (f32).
    pub orth_error: f64,
}

#[derive(Debug, Serialize)]
pub struct GpuReport {
    pub device: String,
    /// The self-check every run performs first, as a run on this device would see it, and the
    /// routes it installed (`ops`, and each map's route).
    pub self_check: Vec<SelfCheckRow>,
    pub self_check_seconds: f64,
    pub routes: String,
    pub reference: String,
    pub ops: Vec<OpAgreement>,
    pub training: Vec<TrainingCheck>,
    pub bench_model: String,
    pub bench: Vec<BenchRow>,
    pub maps: Vec<MapRow>,
    pub batched_maps: Vec<BatchedMapRow>,
    pub seconds: f64,
    pub pass: bool,
}

/// Runs the check, writes `report.json` and `report.md` into `out`, returns the report.
pub fn run(cfg: &GpuCheckConfig, out: &Path) -> Result<GpuReport> {
    let start = std::time::Instant::now();
    let device = cfg.device.resolve().open()?;
    let on_cpu = device.is_cpu();
    eprintln!("gpu-check on {}: the self-check", cfg.device.resolve());
    let (self_check, self_check_seconds, routes) = self_check(&device)?;
    eprintln!("gpu-check on {}: ops", cfg.device.resolve());
    let ops = op_agreement(&device, cfg.size)?;
    eprintln!("gpu-check: training every method");
    let training = training_checks(&device, cfg.size)?;
    eprintln!("gpu-check: benchmark");
    let (bench_model, bench) = bench_table(cfg)?;
    let mut maps = Vec::new();
    let mut batched_maps = Vec::new();
    for &d in &cfg.map_sizes {
        for map in ops::OrthMap::ALL {
            batched_maps.push(time_batched_map(map, d, BATCH, 3, &device)?);
            let t = bench::time_map(map, d, 3, cfg.device)?;
            maps.push(MapRow {
                map: t.map.into(),
                d,
                forward_ms: t.forward_ms,
                forward_backward_ms: t.forward_backward_ms,
                orth_error: t.orth_error,
            });
        }
    }
    let pass = self_check.iter().all(|c| c.pass)
        && ops.iter().all(|o| o.pass)
        && training.iter().all(|t| t.pass);
    let report = GpuReport {
        device: cfg.device.resolve().to_string(),
        self_check,
        self_check_seconds,
        routes,
        reference: if on_cpu {
            "each op's composed candle formulation, on the CPU".into()
        } else {
            "the same op on the CPU".into()
        },
        ops,
        training,
        bench_model,
        bench,
        maps,
        batched_maps,
        seconds: start.elapsed().as_secs_f64(),
        pass,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = out.join("report.md");
    std::fs::write(&md, markdown(&report)).with_context(|| format!("writing {}", md.display()))?;
    Ok(report)
}

/// The self-check a training run performs when it opens `device` (`run.ops = "auto"`, the
/// device's default map route), its warnings printed as a run prints them; the routes it
/// installed stay for the training checks below, as in a run.
fn self_check(device: &Device) -> Result<(Vec<SelfCheckRow>, f64, String)> {
    use opt_core::ops::routes::{MapRouteChoice, OpsMode};
    let checked =
        opt_core::ops::self_check::check_and_install(device, OpsMode::Auto, MapRouteChoice::Auto)
            .map_err(anyhow::Error::msg)?;
    for w in &checked.warnings {
        eprintln!("warning: {w}");
    }
    let maps: Vec<String> = ops::OrthMap::ALL
        .iter()
        .map(|m| format!("{} {}", m.name(), checked.routes.map_label(*m)))
        .collect();
    let routes = format!(
        "ops: {}; maps: {}",
        checked.routes.ops_label(),
        maps.join(", ")
    );
    let rows = checked
        .check
        .rows
        .iter()
        .map(|r| SelfCheckRow {
            case: r.case.clone(),
            subject: r.subject.label(),
            same_device: r.same_device,
            cpu: r.cpu,
            tolerance: r.tolerance,
            error: r.error.clone(),
            pass: r.passed(),
        })
        .collect();
    Ok((rows, checked.check.seconds, routes))
}

fn host_tensor(rng: &mut opt_core::Rng, dims: &[usize], std: f64) -> Result<Tensor> {
    let n = dims.iter().product();
    Ok(Tensor::from_vec(
        rng.normal_vec(n, std),
        dims,
        &Device::Cpu,
    )?)
}

type OpFn = dyn Fn(&[Tensor]) -> candle_core::Result<Vec<Tensor>>;

/// Outputs and the gradients of `Σ_i sum(out_i · w_i)` w.r.t. every input, on `device`.
fn evaluate(
    f: &OpFn,
    inputs: &[Tensor],
    weights: &[Tensor],
    device: &Device,
) -> Result<Vec<Tensor>> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(device)?))
        .collect::<candle_core::Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let outs = f(&tensors)?;
    let mut loss: Option<Tensor> = None;
    for (o, w) in outs.iter().zip(weights) {
        let term = (o * w.to_device(device)?)?.sum_all()?;
        loss = Some(match loss {
            Some(l) => (l + term)?,
            None => term,
        });
    }
    let grads = loss.context("an op with no output")?.backward()?;
    let mut values: Vec<Tensor> = outs
        .iter()
        .map(|o| o.to_device(&Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    for v in &vars {
        let g = grads
            .get(v.as_tensor())
            .context("an input without a gradient")?;
        values.push(g.to_device(&Device::Cpu)?);
    }
    Ok(values)
}

fn compare(
    op: &str,
    n_out: usize,
    got: &[Tensor],
    want: &[Tensor],
    tolerance: f64,
) -> Result<Vec<OpAgreement>> {
    let mut rows = Vec::new();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g = g.to_dtype(candle_core::DType::F64)?;
        let w = w.to_dtype(candle_core::DType::F64)?;
        let max_abs = (&g - &w)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        let scale = w
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?
            .max(1e-30);
        let normalised = max_abs / scale;
        rows.push(OpAgreement {
            op: op.into(),
            value: if i < n_out {
                format!("out[{i}]")
            } else {
                format!("grad[{}]", i - n_out)
            },
            max_abs,
            normalised,
            tolerance,
            pass: normalised <= tolerance && max_abs.is_finite(),
        });
    }
    Ok(rows)
}

struct OpCase {
    name: String,
    inputs: Vec<Tensor>,
    op: Box<OpFn>,
    /// An independent formulation to check the op against on the CPU; `None` where there is
    /// none here (GS, HR: their oracles are the f64 loops of `opt-core`'s tests), so the case
    /// runs only against a GPU.
    composed: Option<Box<OpFn>>,
    tolerance: f64,
}

fn conv_case(
    rng: &mut opt_core::Rng,
    x: [usize; 4],
    k: [usize; 4],
    pad: usize,
    stride: usize,
) -> Result<OpCase> {
    Ok(OpCase {
        name: format!("conv2d x{x:?} k{k:?} pad {pad} stride {stride}"),
        inputs: vec![host_tensor(rng, &x, 1.0)?, host_tensor(rng, &k, 0.3)?],
        op: Box::new(move |t| Ok(vec![ops::conv2d_fused(&t[0], &t[1], pad, stride)?])),
        composed: Some(Box::new(move |t| {
            Ok(vec![ops::conv2d_composed(&t[0], &t[1], pad, stride)?])
        })),
        tolerance: 1e-4,
    })
}

fn bn_case(rng: &mut opt_core::Rng, relu: bool) -> Result<OpCase> {
    let c = 32;
    let mut gamma = host_tensor(rng, &[c], 0.5)?;
    gamma = (gamma + 1.0)?;
    let bn = |relu: bool, composed: bool| -> Box<OpFn> {
        Box::new(move |t: &[Tensor]| {
            let f = if composed {
                ops::batch_norm_train_composed
            } else {
                ops::batch_norm_train_fused
            };
            let (y, m, v) = f(&t[0], &t[1], &t[2], 1e-3, relu)?;
            Ok(vec![y, m, v])
        })
    };
    Ok(OpCase {
        name: format!("batch_norm_train{}", if relu { " + relu" } else { "" }),
        inputs: vec![
            (host_tensor(rng, &[16, c, 12, 12], 2.0)? + 0.5)?,
            gamma,
            host_tensor(rng, &[c], 0.5)?,
        ],
        op: bn(relu, false),
        composed: Some(bn(relu, true)),
        tolerance: 1e-4,
    })
}

fn orth_case(rng: &mut opt_core::Rng, map: ops::OrthMap, d: usize) -> Result<OpCase> {
    // Near the identity, as OPT's P during training; well conditioned for every map.
    let p = (Tensor::eye(d, candle_core::DType::F32, &Device::Cpu)?
        + host_tensor(rng, &[d, d], 0.3 / (d as f64).sqrt())?)?;
    let n = opt_core::orth::NEWTON_SCHULZ_MAX_ITERS;
    let composed: Option<Box<OpFn>> = match map {
        ops::OrthMap::Lowdin => Some(Box::new(move |t| {
            Ok(vec![opt_core::orth::polar_newton_schulz(&t[0], n)?])
        })),
        ops::OrthMap::Cayley => Some(Box::new(move |t| {
            Ok(vec![opt_core::orth::cayley_newton_schulz(&t[0], n)?])
        })),
        ops::OrthMap::GramSchmidt | ops::OrthMap::Householder => None,
    };
    Ok(OpCase {
        name: format!("orthogonalize {} d={d}", map.name()),
        inputs: vec![p],
        op: Box::new(move |t| Ok(vec![ops::orthogonalize(&t[0], map)?])),
        composed,
        tolerance: 1e-4,
    })
}

/// How many layers the batched cases and timings stack (CNN-6 has five 576×576 rotations).
const BATCH: usize = 5;

/// `orthogonalize_batched` of `BATCH` matrices from OPT's Gaussian init. On a GPU it is checked
/// against the same op on the CPU (the exact maps; on the device LS/CP run as batched
/// Newton–Schulz, GS/HR as Cholesky-QR2); on the CPU, against those device routes (independent
/// formulations of the same maps).
fn batched_orth_case(rng: &mut opt_core::Rng, map: ops::OrthMap, d: usize) -> Result<OpCase> {
    let p = host_tensor(rng, &[BATCH, d, d], 1.0)?;
    let n = opt_core::orth::NEWTON_SCHULZ_MAX_ITERS;
    let composed: Option<Box<OpFn>> = match map {
        ops::OrthMap::Lowdin => Some(Box::new(move |t| {
            Ok(vec![opt_core::orth::polar_newton_schulz_batched(&t[0], n)?])
        })),
        ops::OrthMap::Cayley => Some(Box::new(move |t| {
            Ok(vec![opt_core::orth::cayley_newton_schulz_batched(
                &t[0], n,
            )?])
        })),
        ops::OrthMap::GramSchmidt => Some(Box::new(|t| {
            Ok(vec![opt_core::orth::gram_schmidt_cholesky_qr(&t[0])?])
        })),
        ops::OrthMap::Householder => Some(Box::new(|t| {
            Ok(vec![opt_core::orth::householder_cholesky_qr(&t[0])?])
        })),
    };
    Ok(OpCase {
        name: format!("orthogonalize_batched {} b={BATCH} d={d}", map.name()),
        inputs: vec![p],
        op: Box::new(move |t| Ok(vec![ops::orthogonalize_batched(&t[0], map)?])),
        composed,
        tolerance: 1e-4,
    })
}

/// Median ms of `f` over `reps` runs, the device synchronised after each.
fn median_ms(reps: usize, device: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        f()?;
        device.synchronize()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// [`BatchedMapRow`] for `b` Gaussian `d×d` matrices on `device`.
fn time_batched_map(
    map: ops::OrthMap,
    d: usize,
    b: usize,
    reps: usize,
    device: &Device,
) -> Result<BatchedMapRow> {
    use opt_core::ops::orthogonalize_batched;
    let mut rng = opt_core::Rng::seed(d as u64);
    let p = Var::from_tensor(&host_tensor(&mut rng, &[b, d, d], 1.0)?.to_device(device)?)?;
    let w = host_tensor(&mut rng, &[b, d, d], 1.0)?.to_device(device)?;
    let q = orthogonalize_batched(p.as_tensor(), map)?; // warm-up, and the error below
    let forward_ms = median_ms(reps, device, || {
        orthogonalize_batched(p.as_tensor(), map)?;
        Ok(())
    })?;
    let forward_backward_ms = median_ms(reps, device, || {
        let loss = (orthogonalize_batched(p.as_tensor(), map)? * &w)?.sum_all()?;
        loss.backward()?;
        Ok(())
    })?;
    let lone: Vec<Var> = (0..b)
        .map(|k| Var::from_tensor(&p.as_tensor().get(k)?))
        .collect::<candle_core::Result<_>>()?;
    let lone_forward_backward_ms = median_ms(reps, device, || {
        let mut loss = Tensor::zeros((), p.dtype(), device)?;
        for (k, v) in lone.iter().enumerate() {
            let q = ops::orthogonalize(v.as_tensor(), map)?;
            loss = (loss + (q * w.get(k)?)?.sum_all()?)?;
        }
        loss.backward()?;
        Ok(())
    })?;
    let mut orth_error = 0f64;
    for k in 0..b {
        orth_error = orth_error.max(orthogonality_error(&q.get(k)?)?);
    }
    Ok(BatchedMapRow {
        map: map.name().into(),
        d,
        b,
        forward_ms,
        forward_backward_ms,
        lone_forward_backward_ms,
        orth_error,
    })
}

fn op_cases(size: Size) -> Result<Vec<OpCase>> {
    let mut rng = opt_core::Rng::seed(11);
    let mut cases = vec![
        conv_case(&mut rng, [8, 3, 32, 32], [16, 3, 3, 3], 1, 1)?,
        conv_case(&mut rng, [8, 16, 16, 16], [32, 16, 3, 3], 1, 1)?,
        conv_case(&mut rng, [8, 16, 15, 15], [32, 16, 3, 3], 1, 2)?,
        conv_case(&mut rng, [8, 16, 16, 16], [32, 16, 1, 1], 0, 2)?,
        bn_case(&mut rng, false)?,
        bn_case(&mut rng, true)?,
    ];
    let x = host_tensor(&mut rng, &[8, 16, 9, 9], 1.0)?;
    cases.push(OpCase {
        name: "max_pool2x2 [8, 16, 9, 9]".into(),
        inputs: vec![x],
        op: Box::new(|t| Ok(vec![ops::max_pool2x2_fused(&t[0])?])),
        composed: Some(Box::new(|t| Ok(vec![ops::max_pool2x2_composed(&t[0])?]))),
        tolerance: 1e-6,
    });
    for d in [27, 576] {
        for map in ops::OrthMap::ALL {
            cases.push(orth_case(&mut rng, map, d)?);
        }
    }
    let batched: &[usize] = match size {
        Size::Quick => &[27],
        Size::Full => &[27, 576],
    };
    for &d in batched {
        for map in ops::OrthMap::ALL {
            cases.push(batched_orth_case(&mut rng, map, d)?);
        }
    }
    // The device-generic Löwdin and Cayley routes against the exact maps on the CPU, from
    // OPT's Gaussian init.
    let polar_sizes: &[usize] = match size {
        Size::Quick => &[27, 144],
        Size::Full => &[27, 576, 1024],
    };
    type Route = fn(&Tensor, usize) -> candle_core::Result<Tensor>;
    let routes: [(ops::OrthMap, Route); 2] = [
        (ops::OrthMap::Lowdin, opt_core::orth::polar_newton_schulz),
        (ops::OrthMap::Cayley, opt_core::orth::cayley_newton_schulz),
    ];
    for (map, route) in routes {
        for &d in polar_sizes {
            let p = host_tensor(&mut rng, &[d, d], 1.0)?;
            cases.push(OpCase {
                name: format!("{} Newton–Schulz vs exact d={d}", map.name()),
                inputs: vec![p],
                op: Box::new(move |t| {
                    Ok(vec![route(&t[0], opt_core::orth::NEWTON_SCHULZ_MAX_ITERS)?])
                }),
                composed: Some(Box::new(move |t| Ok(vec![ops::orthogonalize(&t[0], map)?]))),
                tolerance: 1e-4,
            });
        }
    }
    Ok(cases)
}

/// Every op case on `device` against its reference.
fn op_agreement(device: &Device, size: Size) -> Result<Vec<OpAgreement>> {
    let mut rows = Vec::new();
    let mut rng = opt_core::Rng::seed(12);
    for case in op_cases(size)? {
        let reference = match &case.composed {
            Some(c) if device.is_cpu() || case.name.contains("Newton–Schulz") => c.as_ref(),
            None if device.is_cpu() => continue,
            _ => case.op.as_ref(),
        };
        let probe = (case.op)(&case.inputs)?;
        let weights: Vec<Tensor> = probe
            .iter()
            .map(|o| host_tensor(&mut rng, o.dims(), 1.0))
            .collect::<Result<_>>()?;
        let got = evaluate(case.op.as_ref(), &case.inputs, &weights, device)?;
        let want = evaluate(reference, &case.inputs, &weights, &Device::Cpu)?;
        rows.extend(compare(
            &case.name,
            probe.len(),
            &got,
            &want,
            case.tolerance,
        )?);
    }
    Ok(rows)
}

/// A fixed batch whose labels a network can learn: one random template per class plus noise.
fn learnable_batch(
    batch: usize,
    classes: usize,
    shape: (usize, usize, usize),
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (c, h, w) = shape;
    let mut rng = opt_core::Rng::seed(3);
    let templates = host_tensor(&mut rng, &[classes, c * h * w], 1.0)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes as u32).collect();
    let idx = Tensor::from_vec(labels.clone(), batch, &Device::Cpu)?;
    let x = (templates.index_select(&idx, 0)? + host_tensor(&mut rng, &[batch, c * h * w], 0.5)?)?
        .reshape((batch, c, h, w))?;
    Ok((x.to_device(device)?, idx.to_device(device)?))
}

fn training_checks(device: &Device, size: Size) -> Result<Vec<TrainingCheck>> {
    let (width, shape, batch, steps) = match size {
        Size::Quick => (16, (3, 8, 8), 16, 12),
        Size::Full => (16, (3, 32, 32), 64, 200),
    };
    let classes = 10;
    let (x, y) = learnable_batch(batch, classes, shape, device)?;
    let mut rows = Vec::new();
    for name in MethodConfig::NAMES {
        let method = MethodConfig::from_name(name).context("a method of NAMES")?;
        let bench_cfg = BenchConfig {
            method: method.clone(),
            model: ModelConfig::cnn6(width),
            input: shape,
            classes,
            batch,
            warmup: 0,
            steps,
            device: DeviceChoice::Cpu,
        };
        let mut train = bench::train_config(&bench_cfg);
        train.schedule.lr = 0.02;
        let (model, store) = build(&train.model, &train.method, shape, classes, 0, device)?;
        let mut opt = Optimizers::new(&train, &store)?;
        let kind = train.loss.kind();
        let mut losses = Vec::with_capacity(steps);
        for i in 0..steps {
            let (l, _) = step(
                &model,
                &mut opt,
                kind,
                None,
                &x,
                &y,
                train.schedule.lr,
                i as u64,
            )?;
            losses.push(l);
        }
        let mut max_orth: Option<f64> = None;
        for conv in model.weight_layers() {
            if let Some(r) = conv.source.rotation_matrix()? {
                let e = orthogonality_error(&r)?;
                max_orth = Some(max_orth.map_or(e, |m: f64| m.max(e)));
            }
        }
        let k = (steps / 5).max(1);
        let first = losses[..k].iter().sum::<f64>() / k as f64;
        let last = losses[steps - k..].iter().sum::<f64>() / k as f64;
        // Each method says how orthogonal its rotations stay (none for baseline, OR, UPT).
        let orth_ok = match method.method().orthogonality_tolerance() {
            Some(tolerance) => max_orth.is_some_and(|e| e <= tolerance),
            None => true,
        };
        rows.push(TrainingCheck {
            method: name.into(),
            steps,
            first_loss: first,
            last_loss: last,
            max_orth_error: max_orth,
            pass: last < first && orth_ok,
        });
    }
    Ok(rows)
}

fn bench_table(cfg: &GpuCheckConfig) -> Result<(String, Vec<BenchRow>)> {
    let (model, shape, batch, warmup, steps) = match cfg.size {
        Size::Quick => (ModelConfig::cnn6(16), (3, 8, 8), 8, 1, 2),
        Size::Full => (ModelConfig::cnn6(64), (3, 32, 32), 128, 5, 30),
    };
    let mut rows = Vec::new();
    let mut baseline = None;
    for name in MethodConfig::NAMES {
        let r = bench::run(&BenchConfig {
            method: MethodConfig::from_name(name).context("a method of NAMES")?,
            model: model.clone(),
            input: shape,
            classes: 100,
            batch,
            warmup,
            steps,
            device: cfg.device,
        })?;
        let base = *baseline.get_or_insert(r.images_per_sec);
        rows.push(BenchRow {
            method: name.into(),
            images_per_sec: r.images_per_sec,
            ms_per_step: r.ms_per_step,
            vs_baseline: r.images_per_sec / base,
        });
    }
    let (c, h, w) = shape;
    Ok((
        format!("{}, input {c}×{h}×{w}, batch {batch}", model.describe()),
        rows,
    ))
}

fn markdown(r: &GpuReport) -> String {
    let mut s = format!(
        "# orthopt gpu-check on {}\n\n{} in {:.0} s. Reference for the ops: {}.\n\n",
        r.device,
        if r.pass { "PASSED" } else { "FAILED" },
        r.seconds,
        r.reference
    );
    s += &format!(
        "## Self-check (what every run does first, {:.0} ms)\n\nRoutes installed: {}.\n\n| case | vs reference on the device | vs reference on the CPU | tolerance | |\n|---|---:|---:|---:|---|\n",
        1e3 * r.self_check_seconds,
        r.routes
    );
    let num = |d: Option<f64>| d.map_or("–".into(), |d| format!("{d:.1e}"));
    for c in &r.self_check {
        let status = match (&c.error, c.pass) {
            (Some(e), _) => format!("FAIL: {e}"),
            (None, true) => "ok".into(),
            (None, false) => "FAIL".into(),
        };
        s += &format!(
            "| {} | {} | {} | {:.0e} | {} |\n",
            c.case,
            num(c.same_device),
            num(c.cpu),
            c.tolerance,
            status
        );
    }
    s += "\n## Ops and gradients\n\n| op | value | max abs diff | normalised | tolerance | |\n|---|---|---:|---:|---:|---|\n";
    for o in &r.ops {
        s += &format!(
            "| {} | {} | {:.2e} | {:.2e} | {:.0e} | {} |\n",
            o.op,
            o.value,
            o.max_abs,
            o.normalised,
            o.tolerance,
            if o.pass { "ok" } else { "FAIL" }
        );
    }
    s += "\n## Training (fixed synthetic batch)\n\n| method | steps | first loss | last loss | max ‖RRᵀ − I‖_F | |\n|---|---:|---:|---:|---:|---|\n";
    for t in &r.training {
        let orth = t.max_orth_error.map_or("–".into(), |e| format!("{e:.1e}"));
        s += &format!(
            "| {} | {} | {:.4} | {:.4} | {} | {} |\n",
            t.method,
            t.steps,
            t.first_loss,
            t.last_loss,
            orth,
            if t.pass { "ok" } else { "FAIL" }
        );
    }
    s += &format!("\n## Throughput ({})\n\n| method | images/s | ms/step | vs baseline |\n|---|---:|---:|---:|\n", r.bench_model);
    for b in &r.bench {
        s += &format!(
            "| {} | {:.1} | {:.2} | {:.2}× |\n",
            b.method, b.images_per_sec, b.ms_per_step, b.vs_baseline
        );
    }
    if !r.maps.is_empty() {
        s += "\n## Orthogonal maps\n\n| map | d | forward ms | forward+backward ms | ‖QQᵀ − I‖_F (f32) |\n|---|---:|---:|---:|---:|\n";
        for m in &r.maps {
            s += &format!(
                "| {} | {} | {:.2} | {:.2} | {:.1e} |\n",
                m.map, m.d, m.forward_ms, m.forward_backward_ms, m.orth_error
            );
        }
    }
    if !r.batched_maps.is_empty() {
        s += "\n## Batched maps (one op for b layers)\n\n| map | d | b | forward ms | forward+backward ms | b lone calls, forward+backward ms | max ‖QQᵀ − I‖_F (f32) |\n|---|---:|---:|---:|---:|---:|---:|\n";
        for m in &r.batched_maps {
            s += &format!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1e} |\n",
                m.map,
                m.d,
                m.b,
                m.forward_ms,
                m.forward_backward_ms,
                m.lone_forward_backward_ms,
                m.orth_error
            );
        }
    }
    s
}
