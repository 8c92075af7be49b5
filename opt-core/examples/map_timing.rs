//! Map timings for the batching decision: `b` lone `orthogonalize` calls (one op per layer, what
//! every OPT layer did before the rotation bank) against one `orthogonalize_each` of the same
//! `b` matrices, forward and forward + backward, rounds interleaved so drift hits both alike.
//!
//! A second table does the same for CNN-6 width 64's seven rotations (d = 27, five at 576,
//! 1024): each layer's lone call against one forward's rotation context (the groups computed
//! concurrently), which is what an OPT network's forward now does.
//!
//! `cargo run --release -p opt-core --example map_timing -- [d] [b] [rounds] [threads]`

use candle_core::{Device, Result, Tensor, Var};
use opt_core::orth::{orthogonalize, orthogonalize_each, OrthMap};
use opt_core::rotations::{RotationRequest, Rotations};
use std::time::Instant;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Milliseconds of the forward and of forward + backward (`Σ⟨Q_k, 1⟩` as the loss).
fn time(ps: &[Var], map: OrthMap, batched: bool) -> Result<(f64, f64)> {
    let tensors: Vec<Tensor> = ps.iter().map(|p| p.as_tensor().clone()).collect();
    let qs = |ts: &[Tensor]| -> Result<Vec<Tensor>> {
        if batched {
            orthogonalize_each(ts, map)
        } else {
            ts.iter().map(|p| orthogonalize(p, map)).collect()
        }
    };
    let t = Instant::now();
    let fwd = qs(&tensors)?;
    let fwd_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(fwd);
    let t = Instant::now();
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
    for q in qs(&tensors)? {
        loss = (loss + q.sum_all()?)?;
    }
    loss.backward()?;
    Ok((fwd_ms, t.elapsed().as_secs_f64() * 1e3))
}

/// Forward + backward ms of every rotation of `ps`: lone calls, or one forward's context.
fn time_network(ps: &[Var], map: OrthMap, bank: bool) -> Result<f64> {
    let t = Instant::now();
    let qs: Vec<Tensor> = if bank {
        let requests: Vec<RotationRequest> =
            ps.iter().map(|p| RotationRequest::of(p, map)).collect();
        let rotations = Rotations::compute_requests(&requests).map_err(candle_core::Error::wrap)?;
        requests
            .iter()
            .map(|r| rotations.get(r))
            .collect::<opt_core::Result<_>>()
            .map_err(candle_core::Error::wrap)?
    } else {
        ps.iter()
            .map(|p| orthogonalize(p.as_tensor(), map))
            .collect::<Result<_>>()?
    };
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
    for q in qs {
        loss = (loss + q.sum_all()?)?;
    }
    loss.backward()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn gaussian(rng: &mut opt_core::Rng, d: usize) -> Result<Var> {
    Var::from_tensor(&Tensor::from_vec(
        rng.normal_vec(d * d, 1.0),
        (d, d),
        &Device::Cpu,
    )?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let (d, b, rounds, threads) = (arg(1, 576), arg(2, 5), arg(3, 5), arg(4, 2));
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let mut rng = opt_core::Rng::seed(1);
    let ps: Vec<Var> = (0..b)
        .map(|_| {
            Var::from_tensor(&Tensor::from_vec(
                rng.normal_vec(d * d, 1.0),
                (d, d),
                &Device::Cpu,
            )?)
        })
        .collect::<Result<_>>()?;
    println!(
        "d = {d}, b = {b}, {rounds} interleaved rounds, {} threads (median ms)",
        candle_core::utils::get_num_threads()
    );
    println!("map  lone fwd  batch fwd  lone fwd+bwd  batch fwd+bwd");
    for map in OrthMap::ALL {
        time(&ps, map, true)?; // warm-up (allocator, rayon pool)
        let mut r: [Vec<f64>; 4] = Default::default();
        for _ in 0..rounds {
            let (f, fb) = time(&ps, map, false)?;
            r[0].push(f);
            r[2].push(fb);
            let (f, fb) = time(&ps, map, true)?;
            r[1].push(f);
            r[3].push(fb);
        }
        let [a, bb, c, e] = r.map(median);
        println!("{:<4} {a:>8.1} {bb:>10.1} {c:>13.1} {e:>14.1}", map.name());
    }
    let net: Vec<Var> = [27, 576, 576, 576, 576, 576, 1024]
        .iter()
        .map(|&d| gaussian(&mut rng, d))
        .collect::<Result<_>>()?;
    println!("CNN-6 width 64's rotations, forward + backward (median ms)");
    println!("map  lone layers  bank");
    for map in OrthMap::ALL {
        time_network(&net, map, true)?;
        let (mut lone, mut bank) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            lone.push(time_network(&net, map, false)?);
            bank.push(time_network(&net, map, true)?);
        }
        println!(
            "{:<4} {:>11.1} {:>5.1}",
            map.name(),
            median(lone),
            median(bank)
        );
    }
    Ok(())
}
