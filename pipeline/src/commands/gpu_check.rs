//! `orthopt gpu-check`: every op and gradient on the device against the CPU, a short training
//! of every method, the benchmark table; report.json and report.md.

use crate::gpu_check::{GpuCheckConfig, Size};
use anyhow::{Context, Result};
use clap::Args;
use opt_stages::training::device::DeviceChoice;
use std::io::Write;
use std::path::PathBuf;

/// `orthopt gpu-check`'s options.
#[derive(Args, Debug, Clone)]
pub struct GpuCheckArgs {
    /// The device under test ("cuda", "cuda:N"; "cpu" checks the plumbing against the composed
    /// formulations, as CI does).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceChoice,
    /// CI's size: a tiny network, a few steps, no map timings unless --maps says so.
    #[arg(long)]
    pub quick: bool,
    /// Time each orthogonal map at these sizes (default 576,1024; none with --quick).
    #[arg(long, value_name = "D,...")]
    pub maps: Option<String>,
    /// Where report.json and report.md go.
    #[arg(long, default_value = "outputs/gpu-check")]
    pub out: PathBuf,
}

/// Runs the checks and writes the report into `args.out`; whether every check passed.
pub fn gpu_check(args: &GpuCheckArgs, out: &mut dyn Write) -> Result<bool> {
    let default_maps = if args.quick { "" } else { "576,1024" };
    let map_sizes = parse_sizes(args.maps.as_deref().unwrap_or(default_maps), "--maps")?;
    let cfg = GpuCheckConfig {
        device: args.device,
        size: if args.quick { Size::Quick } else { Size::Full },
        map_sizes,
    };
    let report = crate::gpu_check::run(&cfg, &args.out)?;
    writeln!(
        out,
        "gpu-check {} on {} in {:.0} s: {}",
        if report.pass { "passed" } else { "FAILED" },
        report.device,
        report.seconds,
        args.out.join("report.md").display()
    )?;
    Ok(report.pass)
}

/// Comma-separated sizes; empty means none.
fn parse_sizes(text: &str, flag: &str) -> Result<Vec<usize>> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse()
                .with_context(|| format!("{flag}: {t:?} is not a size"))
        })
        .collect()
}
