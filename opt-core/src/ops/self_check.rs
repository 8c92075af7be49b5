//! The device self-check: before a run uses a device, every fused op runs once on small fixed
//! inputs there — forward and gradients — and is compared with its composed candle formulation
//! on the same device and on the CPU; every map's route is compared with the other route (the
//! gemm route with the exact maps, or the exact maps with the gemm route). An op that errors
//! (PTX load, launch, out of memory, a panic inside) or differs beyond the tolerance written
//! beside its case is switched to its composed formulation for the run, with a warning that
//! names it, the measured difference and the tolerance; a failing gemm map route is switched to
//! the exact host route. The whole check is a few small tensors: milliseconds on a CPU.

use super::routes::{self, DeviceRoutes, FusedOp, MapRoute, MapRouteChoice, OpsMode};
use super::OrthMap;
use candle_core::{DType, Device, Result, Tensor, Var};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

/// What a row checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Op(FusedOp),
    Map(OrthMap, MapRoute),
}

impl Subject {
    /// `conv2d`, `map gs (cholesky-qr2)`.
    pub fn label(&self) -> String {
        match self {
            Subject::Op(op) => op.name().to_string(),
            Subject::Map(map, route) => format!("map {} ({})", map.name(), route.name()),
        }
    }
}

/// One case of the check.
#[derive(Debug, Clone)]
pub struct CheckRow {
    /// The case, e.g. `conv2d 3×3 stride 2`.
    pub case: String,
    pub subject: Subject,
    /// Largest difference of outputs and gradients from the reference on the same device,
    /// normalised by the reference's largest magnitude.
    pub same_device: Option<f64>,
    /// The same against the reference on the CPU (absent when the device is the CPU).
    pub cpu: Option<f64>,
    pub tolerance: f64,
    /// Why the op could not run, when it could not.
    pub error: Option<String>,
}

impl CheckRow {
    pub fn passed(&self) -> bool {
        let within = |d: Option<f64>| d.is_none_or(|d| d <= self.tolerance);
        self.error.is_none() && within(self.same_device) && within(self.cpu)
    }

    /// What went wrong, for a warning: `differs from its reference by 3.1e-2 on the device
    /// (tolerance 1e-4)` or `failed: …`.
    pub fn problem(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(format!("failed: {e}"));
        }
        // NaN is over the tolerance too.
        let over = |d: Option<f64>| d.filter(|d| d.is_nan() || *d > self.tolerance);
        if let Some(d) = over(self.same_device) {
            return Some(format!(
                "differs from its reference on the device by {d:.1e} (tolerance {:.0e})",
                self.tolerance
            ));
        }
        over(self.cpu).map(|d| {
            format!(
                "differs from its reference on the CPU by {d:.1e} (tolerance {:.0e})",
                self.tolerance
            )
        })
    }
}

/// Every row of one device's check.
#[derive(Debug, Clone)]
pub struct SelfCheck {
    pub device: String,
    pub rows: Vec<CheckRow>,
    pub seconds: f64,
}

impl SelfCheck {
    pub fn passed(&self) -> bool {
        self.rows.iter().all(CheckRow::passed)
    }
}

/// A device opened for a run: its check (empty in `composed` mode), the routes installed for it,
/// and the warnings the check gave.
#[derive(Debug, Clone)]
pub struct CheckedDevice {
    pub check: SelfCheck,
    pub routes: Arc<DeviceRoutes>,
    pub warnings: Vec<String>,
}

/// Runs the check on `device` (unless `mode` is `composed`), decides the routes and installs them
/// for everything that runs on the device from now on. An error only in `fused` mode, when a
/// check failed.
pub fn check_and_install(
    device: &Device,
    mode: OpsMode,
    choice: MapRouteChoice,
) -> std::result::Result<CheckedDevice, String> {
    let check = match mode {
        OpsMode::Composed => SelfCheck {
            device: describe(device),
            rows: Vec::new(),
            seconds: 0.0,
        },
        OpsMode::Auto | OpsMode::Fused | OpsMode::ComposedOps(_) => run(device, choice),
    };
    let (table, warnings) = decide(&check, device, mode, choice)?;
    Ok(CheckedDevice {
        routes: routes::install(device, table),
        check,
        warnings,
    })
}

/// The routes `check` leads to under `mode`, with a warning per switched op or map; an error in
/// `fused` mode when any row failed.
pub fn decide(
    check: &SelfCheck,
    device: &Device,
    mode: OpsMode,
    choice: MapRouteChoice,
) -> std::result::Result<(DeviceRoutes, Vec<String>), String> {
    let mut table = DeviceRoutes::new(device, choice);
    if mode == OpsMode::Composed {
        for op in FusedOp::ALL {
            table.set_composed(op);
        }
        for map in OrthMap::ALL {
            table.set_exact(map);
        }
        return Ok((table, Vec::new()));
    }
    // Ops the recipe composes need no fallback, whatever their check says.
    let pinned = match mode {
        OpsMode::ComposedOps(set) => set,
        _ => Default::default(),
    };
    for op in pinned.iter() {
        table.set_composed(op);
    }
    let failures: Vec<(&CheckRow, String)> = check
        .rows
        .iter()
        .filter(|r| !matches!(r.subject, Subject::Op(op) if pinned.contains(op)))
        .filter_map(|r| r.problem().map(|p| (r, p)))
        .collect();
    if mode == OpsMode::Fused && !failures.is_empty() {
        let lines: Vec<String> = failures
            .iter()
            .map(|(r, p)| format!("  {}: {p}", r.case))
            .collect();
        return Err(format!(
            "the self-check of {} failed with run.ops = \"fused\":\n{}\n(run.ops = \"auto\" \
             takes the composed formulation of a failing op; \"composed\" uses candle's ops only)",
            check.device,
            lines.join("\n")
        ));
    }
    let mut warnings = Vec::new();
    for (row, problem) in failures {
        let consequence = match row.subject {
            Subject::Op(op) => {
                table.set_composed(op);
                format!("{} takes its composed formulation for this run", op.name())
            }
            Subject::Map(map, MapRoute::Exact) => format!(
                "the exact {} map has no other route; its results are kept",
                map.name()
            ),
            Subject::Map(map, _) => {
                table.set_exact(map);
                format!("{} takes the exact host route for this run", map.name())
            }
        };
        warnings.push(format!(
            "self-check on {}: {} {problem}; {consequence}",
            check.device, row.case
        ));
    }
    Ok((table, warnings))
}

/// `cpu` or `cuda:0`.
fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

type CaseFn = Box<dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>>;

/// A case: the op under test and its reference, on fixed host inputs.
struct Case {
    name: String,
    subject: Subject,
    inputs: Vec<Tensor>,
    under_test: CaseFn,
    reference: CaseFn,
    tolerance: f64,
}

/// Runs every case on `device`; a case that errors or panics becomes a failed row.
pub fn run(device: &Device, choice: MapRouteChoice) -> SelfCheck {
    let start = Instant::now();
    let rows = match cases(device, choice) {
        Ok(cases) => cases.iter().map(|c| check_case(c, device)).collect(),
        Err(e) => vec![CheckRow {
            case: "self-check inputs".into(),
            subject: Subject::Op(FusedOp::Conv2d),
            same_device: None,
            cpu: None,
            tolerance: 0.0,
            error: Some(e.to_string()),
        }],
    };
    SelfCheck {
        device: describe(device),
        rows,
        seconds: start.elapsed().as_secs_f64(),
    }
}

fn check_case(case: &Case, device: &Device) -> CheckRow {
    let mut row = CheckRow {
        case: case.name.clone(),
        subject: case.subject,
        same_device: None,
        cpu: None,
        tolerance: case.tolerance,
        error: None,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(f64, Option<f64>)> {
        let weights = probe_weights(case)?;
        let got = evaluate(&case.under_test, &case.inputs, &weights, device)?;
        let here = evaluate(&case.reference, &case.inputs, &weights, device)?;
        let same = difference(&got, &here)?;
        let cpu = if device.is_cpu() {
            None
        } else {
            let there = evaluate(&case.reference, &case.inputs, &weights, &Device::Cpu)?;
            Some(difference(&got, &there)?)
        };
        Ok((same, cpu))
    }));
    match outcome {
        Ok(Ok((same, cpu))) => {
            row.same_device = Some(same);
            row.cpu = cpu;
        }
        Ok(Err(e)) => row.error = Some(e.to_string()),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            row.error = Some(format!("panicked: {message}"));
        }
    }
    row
}

/// Fixed weights of the scalar `Σ_i sum(out_i · w_i)` whose gradients are compared, shaped like
/// the reference's outputs on the CPU.
fn probe_weights(case: &Case) -> Result<Vec<Tensor>> {
    let outs = (case.reference)(&case.inputs)?;
    let mut rng = crate::Rng::seed(0x5e1f);
    outs.iter()
        .map(|o| {
            Tensor::from_vec(rng.normal_vec(o.elem_count(), 1.0), o.dims(), &Device::Cpu)?
                .to_dtype(o.dtype())
        })
        .collect()
}

/// Outputs and the gradients w.r.t. every input of `Σ_i sum(out_i · w_i)` on `device`, on the
/// host in f64.
fn evaluate(
    f: &CaseFn,
    inputs: &[Tensor],
    weights: &[Tensor],
    device: &Device,
) -> Result<Vec<Tensor>> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(device)?))
        .collect::<Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let outs = f(&tensors)?;
    let mut loss = Tensor::zeros((), DType::F64, device)?;
    for (o, w) in outs.iter().zip(weights) {
        let term = (o * w.to_device(device)?)?
            .sum_all()?
            .to_dtype(DType::F64)?;
        loss = (loss + term)?;
    }
    let grads = loss.backward()?;
    let mut values = Vec::with_capacity(outs.len() + vars.len());
    for o in &outs {
        values.push(o.to_device(&Device::Cpu)?.to_dtype(DType::F64)?);
    }
    for v in &vars {
        let g = match grads.get(v.as_tensor()) {
            Some(g) => g.clone(),
            None => v.as_tensor().zeros_like()?,
        };
        values.push(g.to_device(&Device::Cpu)?.to_dtype(DType::F64)?);
    }
    Ok(values)
}

/// The largest over values of `max |a − b| / max |b|`; infinite when anything is not finite.
fn difference(got: &[Tensor], want: &[Tensor]) -> Result<f64> {
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(want) {
        let g = g.flatten_all()?.to_vec1::<f64>()?;
        let w = w.flatten_all()?.to_vec1::<f64>()?;
        let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        for (a, b) in g.iter().zip(&w) {
            let d = (a - b).abs() / scale;
            if !d.is_finite() {
                return Ok(f64::INFINITY);
            }
            worst = worst.max(d);
        }
    }
    Ok(worst)
}

fn host(rng: &mut crate::Rng, dims: &[usize], std: f64) -> Result<Tensor> {
    let n = dims.iter().product();
    Tensor::from_vec(rng.normal_vec(n, std), dims, &Device::Cpu)
}

fn conv_case(
    rng: &mut crate::Rng,
    name: &str,
    x: [usize; 4],
    k: [usize; 4],
    (pad, stride): (usize, usize),
) -> Result<Case> {
    Ok(Case {
        name: format!("conv2d {name}"),
        subject: Subject::Op(FusedOp::Conv2d),
        inputs: vec![host(rng, &x, 1.0)?, host(rng, &k, 0.3)?],
        under_test: Box::new(move |t| Ok(vec![super::conv2d_fused(&t[0], &t[1], pad, stride)?])),
        reference: Box::new(move |t| Ok(vec![super::conv2d_composed(&t[0], &t[1], pad, stride)?])),
        tolerance: 1e-4,
    })
}

fn bn_case(rng: &mut crate::Rng, relu: bool) -> Result<Case> {
    let c = 3;
    let bn = |relu: bool, fused: bool| -> CaseFn {
        Box::new(move |t: &[Tensor]| {
            let f = if fused {
                super::batch_norm_train_fused
            } else {
                super::batch_norm_train_composed
            };
            let (y, m, v) = f(&t[0], &t[1], &t[2], 1e-3, relu)?;
            Ok(vec![y, m, v])
        })
    };
    Ok(Case {
        name: format!("batch norm{}", if relu { " + relu" } else { "" }),
        subject: Subject::Op(FusedOp::BatchNorm),
        inputs: vec![
            (host(rng, &[4, c, 5, 5], 2.0)? + 0.5)?,
            (host(rng, &[c], 0.5)? + 1.0)?,
            host(rng, &[c], 0.5)?,
        ],
        under_test: bn(relu, true),
        reference: bn(relu, false),
        tolerance: 1e-4,
    })
}

/// The fused ops' cases, then one per map at a small size.
fn cases(device: &Device, choice: MapRouteChoice) -> Result<Vec<Case>> {
    let mut rng = crate::Rng::seed(0xc4ec);
    let mut cases = vec![
        conv_case(&mut rng, "3×3 SAME", [2, 3, 6, 6], [4, 3, 3, 3], (1, 1))?,
        conv_case(&mut rng, "3×3 VALID", [2, 3, 5, 5], [4, 3, 3, 3], (0, 1))?,
        conv_case(&mut rng, "3×3 stride 2", [2, 3, 7, 7], [4, 3, 3, 3], (1, 2))?,
        bn_case(&mut rng, false)?,
        bn_case(&mut rng, true)?,
        Case {
            name: "max-pool 2×2".into(),
            subject: Subject::Op(FusedOp::MaxPool),
            inputs: vec![host(&mut rng, &[2, 3, 6, 6], 1.0)?],
            under_test: Box::new(|t| Ok(vec![super::max_pool2x2_fused(&t[0])?])),
            reference: Box::new(|t| Ok(vec![super::max_pool2x2_composed(&t[0])?])),
            tolerance: 1e-6,
        },
        Case {
            name: "acos".into(),
            subject: Subject::Op(FusedOp::Acos),
            // Cosines as MHE meets them, away from ±1 where the derivative is floored.
            inputs: vec![host(&mut rng, &[64], 0.4)?.clamp(-0.95, 0.95)?],
            under_test: Box::new(|t| Ok(vec![super::acos_fused(&t[0])?])),
            reference: Box::new(|t| Ok(vec![super::acos_composed(&t[0])?])),
            tolerance: 1e-4,
        },
    ];
    let table = DeviceRoutes::new(device, choice);
    for map in OrthMap::ALL {
        cases.push(map_case(&mut rng, map, table.map_route(map))?);
    }
    Ok(cases)
}

/// The route `route` of `map` against the other route, as the network meets them — the layer's
/// weight `W = orth(P)·W0` (the exact route's fused op, the gemm route's `Q` times `W0`) — on two
/// P near the identity (OPT's P during training), at d = 12.
fn map_case(rng: &mut crate::Rng, map: OrthMap, route: MapRoute) -> Result<Case> {
    let d = 12;
    let eye = Tensor::eye(d, DType::F32, &Device::Cpu)?.unsqueeze(0)?;
    let p = host(rng, &[2, d, d], 0.3 / (d as f64).sqrt())?.broadcast_add(&eye)?;
    let w0 = host(rng, &[2, d, 3], (2.0 / d as f64).sqrt())?;
    let exact: CaseFn =
        Box::new(move |t| Ok(vec![crate::orth::rotate_batched(&t[0], &t[1], map)?]));
    let gemm: CaseFn = Box::new(move |t| {
        let scratch = DeviceRoutes::new(t[0].device(), MapRouteChoice::Gemm);
        Ok(vec![super::gemm_route(&t[0], map, &scratch)?.matmul(&t[1])?])
    });
    let (under_test, reference) = match route {
        MapRoute::Exact => (exact, gemm),
        _ => (gemm, exact),
    };
    Ok(Case {
        name: format!("map {} ({}) d={d}", map.name(), route.name()),
        subject: Subject::Map(map, route),
        inputs: vec![p, w0],
        under_test,
        reference,
        tolerance: 1e-4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case passes on the CPU, with both map routes, well inside its tolerance, and the
    /// check takes well under a second.
    #[test]
    fn every_case_passes_on_the_cpu() {
        for choice in [MapRouteChoice::Exact, MapRouteChoice::Gemm] {
            let check = run(&Device::Cpu, choice);
            assert_eq!(check.rows.len(), 11, "{:?}", check.rows);
            for row in &check.rows {
                assert!(row.passed(), "{row:?}");
                assert!(row.same_device.is_some() && row.cpu.is_none(), "{row:?}");
            }
            assert!(check.seconds < 1.0, "{} s", check.seconds);
        }
    }

    fn failed(subject: Subject, case: &str, error: Option<&str>, diff: f64) -> CheckRow {
        CheckRow {
            case: case.into(),
            subject,
            same_device: error.is_none().then_some(diff),
            cpu: None,
            tolerance: 1e-4,
            error: error.map(str::to_string),
        }
    }

    /// A failing op takes its composed formulation alone (the warning names the op, the
    /// difference and the tolerance); a failing gemm map route takes the exact route; `fused`
    /// refuses; `composed` switches everything.
    #[test]
    fn decisions_switch_exactly_what_failed() {
        let check = SelfCheck {
            device: "cpu".into(),
            rows: vec![
                failed(Subject::Op(FusedOp::BatchNorm), "batch norm", None, 3e-2),
                failed(Subject::Op(FusedOp::Conv2d), "conv2d 3×3 SAME", None, 1e-7),
                failed(
                    Subject::Map(OrthMap::GramSchmidt, MapRoute::CholeskyQr2),
                    "map gs",
                    Some("launch failed"),
                    0.0,
                ),
            ],
            seconds: 0.0,
        };
        let (table, warnings) =
            decide(&check, &Device::Cpu, OpsMode::Auto, MapRouteChoice::Gemm).unwrap();
        assert_eq!(table.ops_label(), "fused; composed: bn");
        assert_eq!(table.map_route(OrthMap::GramSchmidt), MapRoute::Exact);
        assert_eq!(table.map_route(OrthMap::Householder), MapRoute::CholeskyQr2);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("batch norm differs"),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("3.0e-2") && warnings[0].contains("1e-4"));
        assert!(warnings[1].contains("launch failed") && warnings[1].contains("exact host route"));

        let err = decide(&check, &Device::Cpu, OpsMode::Fused, MapRouteChoice::Gemm).unwrap_err();
        assert!(
            err.contains("batch norm") && err.contains("map gs"),
            "{err}"
        );
        assert!(!err.contains("conv2d"), "{err}");

        let (table, warnings) = decide(
            &check,
            &Device::Cpu,
            OpsMode::Composed,
            MapRouteChoice::Gemm,
        )
        .unwrap();
        assert_eq!(table.ops_label(), "composed");
        assert!(OrthMap::ALL
            .iter()
            .all(|m| table.map_route(*m) == MapRoute::Exact));
        assert!(warnings.is_empty());
    }

    /// A NaN difference fails its row (never passes by comparison with NaN).
    #[test]
    fn nan_differences_fail() {
        let row = failed(Subject::Op(FusedOp::Acos), "acos", None, f64::NAN);
        assert!(!row.passed());
        assert!(row.problem().unwrap().contains("NaN"));
    }
}
