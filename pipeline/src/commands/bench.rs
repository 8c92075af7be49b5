//! `orthopt bench` and `orthopt bench-data`: training throughput of a network on synthetic
//! data, per method, the time of each orthogonal map, and the data path's throughput.

use super::{parse_shape, set_threads};
use crate::bench::{self as measure, BenchConfig};
use anyhow::{Context, Result};
use clap::Args;
use opt_core::orth::OrthMap;
use opt_stages::training::device::DeviceChoice;
use opt_stages::training::model::{Arch, MethodConfig, ModelConfig};
use opt_stages::training::train_config::ScheduleConfig;
use std::io::Write;

/// `orthopt bench`'s options.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Methods to measure, comma-separated, or `all`.
    #[arg(long, default_value = "baseline")]
    pub methods: String,
    /// Architecture: cnn6, cnn9 or resnet.
    #[arg(long, default_value = "cnn6")]
    pub arch: String,
    /// ResNet depth (6n + 2).
    #[arg(long, default_value_t = ModelConfig::DEFAULT_RESNET_DEPTH)]
    pub depth: usize,
    /// First-stage width (default: the architecture's, 64 for the CNNs, 16 for ResNet).
    #[arg(long)]
    pub width: Option<usize>,
    /// Input shape CxHxW.
    #[arg(long, default_value = "3x32x32")]
    pub input: String,
    #[arg(long, default_value_t = 100)]
    pub classes: usize,
    /// Images per step.
    #[arg(long, default_value_t = ScheduleConfig::DEFAULT_BATCH_SIZE.get())]
    pub batch: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Also time each orthogonal map at these sizes (comma-separated, e.g. 576,1024).
    #[arg(long, value_name = "D,...")]
    pub maps: Option<String>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Training throughput per method, then (with `maps`) each orthogonal map's time.
pub fn bench(args: BenchArgs, out: &mut dyn Write) -> Result<()> {
    let BenchArgs {
        methods,
        arch,
        depth,
        width,
        input,
        classes,
        batch,
        warmup,
        steps,
        maps,
        device,
        threads,
    } = args;
    set_threads(threads);
    let names: Vec<&str> = if methods == "all" {
        MethodConfig::NAMES.to_vec()
    } else {
        methods.split(',').map(str::trim).collect()
    };
    let shape = parse_shape(&input)?;
    let model = bench_model(&arch, depth, width)?;
    writeln!(
        out,
        "| model | method | device | batch | input | images/s | ms/step | vs baseline | mean ms/step |"
    )?;
    writeln!(out, "|---|---|---|---:|---|---:|---:|---:|---:|")?;
    // The process's first training steps pay for page faults, the allocator's growth and the
    // thread pools' start: untimed, so the first method measured is not the slowest for it.
    if let Some(first) = names.first().and_then(|n| MethodConfig::from_name(n)) {
        measure::run(&BenchConfig {
            method: first,
            model: model.clone(),
            input: shape,
            classes,
            batch,
            warmup: warmup.max(2),
            steps: 1,
            device,
        })?;
    }
    let mut baseline: Option<f64> = None;
    for name in names {
        let method = MethodConfig::from_name(name).with_context(|| {
            format!(
                "--methods: unknown method {name:?}; known: {}",
                MethodConfig::NAMES.join(", ")
            )
        })?;
        let cfg = BenchConfig {
            method,
            model: model.clone(),
            input: shape,
            classes,
            batch,
            warmup,
            steps,
            device,
        };
        let r = measure::run(&cfg)?;
        if name == "baseline" {
            baseline = Some(r.images_per_sec);
        }
        let ratio = baseline
            .map(|b| format!("{:.2}×", r.images_per_sec / b))
            .unwrap_or_else(|| "–".into());
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {} | {:.2} |",
            model.describe(),
            r.method,
            r.device,
            batch,
            input,
            r.images_per_sec,
            r.ms_per_step,
            ratio,
            r.mean_ms_per_step
        )?;
    }
    if let Some(sizes) = maps {
        bench_maps(&sizes, device, out)?;
    }
    Ok(())
}

/// Each orthogonal map's forward and forward + backward time at the sizes `sizes` lists
/// (comma-separated).
fn bench_maps(sizes: &str, device: DeviceChoice, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "\n| map | d | forward ms | forward+backward ms | ‖QQᵀ − I‖_F (f32) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for d in sizes.split(',') {
        let d: usize = d
            .trim()
            .parse()
            .with_context(|| format!("--maps: {d:?} is not a size"))?;
        for map in [
            OrthMap::Cayley,
            OrthMap::GramSchmidt,
            OrthMap::Householder,
            OrthMap::Lowdin,
        ] {
            let t = measure::time_map(map, d, 3, device)?;
            writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.1e} |",
                t.map, t.d, t.forward_ms, t.forward_backward_ms, t.orth_error
            )?;
        }
    }
    Ok(())
}

/// The data path's throughput on a synthetic decoded dataset.
pub fn bench_data(
    images: usize,
    input: &str,
    batch: usize,
    batches: usize,
    pad: usize,
    flip: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let cfg = measure::DataBenchConfig {
        images,
        input: parse_shape(input)?,
        batch,
        batches: batches.max(1),
        augment: opt_stages::data::augment::AugmentConfig { pad, flip },
    };
    let r = measure::data(&cfg)?;
    writeln!(
        out,
        "| data path | images | batch | input | load ms | images/s | ms/batch |"
    )?;
    writeln!(out, "|---|---:|---:|---|---:|---:|---:|")?;
    writeln!(out,
        "| cache → pad {pad} + crop{} → batch (CPU, 1 thread) | {images} | {batch} | {input} | {:.0} | {:.0} | {:.2} |",
        if flip { " + flip" } else { "" },
        r.load_ms,
        r.images_per_sec,
        r.ms_per_batch
    )?;
    writeln!(
        out,
        "\nFor scale: CNN-6 training on an H100 consumes about 25 000 images/s; the data path \
         must stay above that (it runs on one core here)."
    )?;
    Ok(())
}

/// The network `orthopt bench --arch/--depth/--width` asks for.
pub fn bench_model(arch: &str, depth: usize, width: Option<usize>) -> Result<ModelConfig> {
    let arch = Arch::ALL
        .into_iter()
        .find(|a| a.as_str() == arch)
        .with_context(|| {
            let known: Vec<&str> = Arch::ALL.iter().map(|a| a.as_str()).collect();
            format!(
                "--arch: unknown architecture {arch:?}; known: {}",
                known.join(", ")
            )
        })?;
    let mut model = ModelConfig::cnn6(width.unwrap_or(arch.default_width()));
    model.arch = arch;
    if arch == Arch::Resnet {
        model.depth = Some(depth);
        model.opt_shortcuts = Some(false);
        model.opt_classifier = Some(false);
    }
    Ok(model)
}
