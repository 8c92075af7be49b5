//! Per-op CPU timings of a CNN-6 step's fused ops at its real shapes (width 64, batch 128 by
//! default): where a step's time goes, op by op. A measurement tool, not a test.
//!
//!     cargo run --release -p opt-core --example op_timing -- [width] [batch] [reps]

use candle_core::{Device, Tensor, Var};
use opt_core::ops::{batch_norm_train, conv2d, max_pool2x2};
use std::time::Instant;

// The allocator and purge setting of the `orthopt` binary (pipeline/src/main.rs): with glibc's,
// every activation-sized buffer would be a fresh mapping and the timings mostly page faults.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn randn(shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let v = opt_core::Rng::seed(seed).normal_vec(n, 1.0);
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Median milliseconds of `reps` calls of `f`, after one warm-up call.
fn time(reps: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?;
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f().map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<candle_core::Result<_>>()?;
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

fn main() -> candle_core::Result<()> {
    // SAFETY: sets a process-wide allocator option (`mi_option_purge_delay` = -1).
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (width, batch, reps) = (
        *args.first().unwrap_or(&64),
        *args.get(1).unwrap_or(&128),
        *args.get(2).unwrap_or(&5),
    );
    println!("| op | shape | forward ms | forward+backward ms |");
    println!("|---|---|---:|---:|");
    for (c_in, hw) in [(3, 32), (width, 32), (width, 16), (width, 8)] {
        let x = Var::from_tensor(&randn(&[batch, c_in, hw, hw], 1)?)?;
        let k = Var::from_tensor(&randn(&[width, c_in, 3, 3], 2)?)?;
        let fwd = time(reps, || conv2d(&x, &k, 1, 1).map(|_| ()))?;
        let both = time(reps, || {
            conv2d(&x, &k, 1, 1)?.sum_all()?.backward().map(|_| ())
        })?;
        println!("| conv3x3 | {c_in}→{width} @ {hw}² | {fwd:.1} | {both:.1} |");
    }
    for hw in [32, 16, 8] {
        let x = Var::from_tensor(&randn(&[batch, width, hw, hw], 3)?)?;
        let g = Var::from_tensor(&Tensor::ones(width, candle_core::DType::F32, &Device::Cpu)?)?;
        let b = Var::from_tensor(&Tensor::zeros(
            width,
            candle_core::DType::F32,
            &Device::Cpu,
        )?)?;
        let fwd = time(reps, || {
            batch_norm_train(&x, &g, &b, 1e-3, true).map(|_| ())
        })?;
        let both = time(reps, || {
            let (y, _, _) = batch_norm_train(&x, &g, &b, 1e-3, true)?;
            y.sum_all()?.backward().map(|_| ())
        })?;
        println!("| bn+relu | {width} @ {hw}² | {fwd:.1} | {both:.1} |");
        let fwd = time(reps, || max_pool2x2(&x).map(|_| ()))?;
        let both = time(reps, || max_pool2x2(&x)?.sum_all()?.backward().map(|_| ()))?;
        println!("| max-pool | {width} @ {hw}² | {fwd:.1} | {both:.1} |");
        let both = time(reps, || x.sum_all()?.backward().map(|_| ()))?;
        println!("| (sum + backward alone) | {width} @ {hw}² | | {both:.1} |");
    }
    Ok(())
}
