//! Fused rotation `W = orth(P)·W0` against the composed `orth(P)` then matmul, at CNN-6 width
//! 64's sizes (five 576×576 maps in one batch, one 1024×1024), forward and forward + backward,
//! rounds interleaved (A B A B) so drift hits both alike; medians with min–max.
//!
//! `cargo run --release -p opt-core --example rotate_timing -- [rounds] [threads]`

use candle_core::{Device, Result, Tensor, Var};
use opt_core::orth::{orthogonalize_batched, rotate_batched, OrthMap};
use std::time::Instant;

// The allocator and purge setting of the `orthopt` binary (pipeline/src/main.rs): with glibc's,
// every d×d buffer would be a fresh mapping and the timings partly page faults.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn stack(rng: &mut opt_core::Rng, shape: (usize, usize, usize), std: f64) -> Result<Tensor> {
    Tensor::from_vec(
        rng.normal_vec(shape.0 * shape.1 * shape.2, std),
        shape,
        &Device::Cpu,
    )
}

/// ms of forward + backward of `L = Σ W ⊙ C`.
fn once(p: &Var, w0: &Tensor, c: &Tensor, map: OrthMap, fused: bool) -> Result<f64> {
    let t = Instant::now();
    let w = if fused {
        rotate_batched(p.as_tensor(), w0, map)?
    } else {
        orthogonalize_batched(p.as_tensor(), map)?.matmul(w0)?
    };
    let grads = (w * c)?.sum_all()?.backward()?;
    let _ = grads.get(p.as_tensor());
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn stats(mut xs: Vec<f64>) -> String {
    xs.sort_by(f64::total_cmp);
    format!(
        "{:7.1} ({:.1}–{:.1})",
        xs[xs.len() / 2],
        xs[0],
        xs[xs.len() - 1]
    )
}

fn main() -> Result<()> {
    // SAFETY: sets a process-wide allocator option (`mi_option_purge_delay` = -1).
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    let rounds = arg(1, 5);
    let threads = arg(2, 0);
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .ok();
    }
    let mut rng = opt_core::Rng::seed(1);
    let n = 64;
    println!("| map | d × b | composed ms | fused ms | speed-up |");
    println!("|---|---|---:|---:|---:|");
    for map in OrthMap::ALL {
        for (d, b) in [(576usize, 5usize), (1024, 1)] {
            let p = Var::from_tensor(&stack(&mut rng, (b, d, d), 1.0)?)?;
            let w0 = stack(&mut rng, (b, d, n), (2.0 / d as f64).sqrt())?;
            let c = stack(&mut rng, (b, d, n), 1.0)?;
            let (mut composed, mut fused) = (Vec::new(), Vec::new());
            once(&p, &w0, &c, map, true)?;
            for _ in 0..rounds {
                composed.push(once(&p, &w0, &c, map, false)?);
                fused.push(once(&p, &w0, &c, map, true)?);
            }
            let ratio = {
                let mut r: Vec<f64> = composed.iter().zip(&fused).map(|(a, b)| a / b).collect();
                r.sort_by(f64::total_cmp);
                r[r.len() / 2]
            };
            println!(
                "| {} | {d} × {b} | {} | {} | {ratio:.2}× |",
                map.name(),
                stats(composed),
                stats(fused)
            );
        }
    }
    Ok(())
}
