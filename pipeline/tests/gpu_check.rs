//! `orthopt gpu-check`'s CPU mode (the plumbing CI keeps working): every op against its
//! composed formulation, every method's short training, the benchmark table, both reports.

use opt_pipeline::gpu_check::{run, GpuCheckConfig, Size};
use opt_stages::training::device::DeviceChoice;

#[test]
fn cpu_mode_passes_and_writes_both_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = GpuCheckConfig {
        device: DeviceChoice::Cpu,
        size: Size::Quick,
        map_sizes: vec![27],
    };
    let report = run(&cfg, dir.path()).expect("gpu-check runs");
    for o in &report.ops {
        assert!(
            o.pass,
            "{} {}: {:.2e} > {:.0e}",
            o.op, o.value, o.normalised, o.tolerance
        );
    }
    // Each op contributes its outputs and a gradient per input.
    let conv = report
        .ops
        .iter()
        .filter(|o| o.op.starts_with("conv2d"))
        .count();
    assert_eq!(conv, 4 * 3);
    // The batched maps: LS and CP against the batched Newton–Schulz routes, GS and HR against
    // Cholesky-QR2, values and gradients.
    let batched: Vec<_> = report
        .ops
        .iter()
        .filter(|o| o.op.starts_with("orthogonalize_batched"))
        .map(|o| (o.op.as_str(), o.value.as_str()))
        .collect();
    assert_eq!(
        batched,
        [
            ("orthogonalize_batched cp b=5 d=27", "out[0]"),
            ("orthogonalize_batched cp b=5 d=27", "grad[0]"),
            ("orthogonalize_batched gs b=5 d=27", "out[0]"),
            ("orthogonalize_batched gs b=5 d=27", "grad[0]"),
            ("orthogonalize_batched hr b=5 d=27", "out[0]"),
            ("orthogonalize_batched hr b=5 d=27", "grad[0]"),
            ("orthogonalize_batched ls b=5 d=27", "out[0]"),
            ("orthogonalize_batched ls b=5 d=27", "grad[0]"),
        ]
    );
    // Every registered method trains and is benchmarked.
    let methods = opt_stages::training::method::MethodConfig::NAMES.len();
    assert_eq!(report.training.len(), methods);
    for t in &report.training {
        assert!(
            t.pass,
            "{}: {} → {} (orth {:?})",
            t.method, t.first_loss, t.last_loss, t.max_orth_error
        );
    }
    assert_eq!(report.bench.len(), methods);
    assert_eq!(report.bench[0].vs_baseline, 1.0);
    assert_eq!(report.maps.len(), 4);
    assert!(report.maps.iter().all(|m| m.orth_error < 1e-4));
    assert_eq!(report.batched_maps.len(), 4);
    assert!(report
        .batched_maps
        .iter()
        .all(|m| m.b == 5 && m.orth_error < 1e-4 && m.forward_backward_ms > 0.0));
    assert!(report.pass);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report.json")).expect("report.json"),
    )
    .expect("valid JSON");
    assert_eq!(json["pass"], true);
    let md = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
    assert!(md.contains("PASSED") && md.contains("| sopt |"), "{md}");
    assert!(md.contains("## Batched maps"), "{md}");
}
