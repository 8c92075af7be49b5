use faer::{Mat, Par};
use std::time::Instant;
fn t<F: FnMut()>(name: &str, mut f: F) {
    f();
    let mut xs = vec![];
    for _ in 0..3 {
        let s = Instant::now();
        f();
        xs.push(s.elapsed().as_secs_f64() * 1e3);
    }
    xs.sort_by(f64::total_cmp);
    println!("{name}: {:.1} ms", xs[1]);
}
fn main() {
    for d in [576usize, 1024] {
        let a = Mat::<f64>::from_fn(d, d, |i, j| {
            ((i * 7 + j * 13) % 17) as f64 - 8.0 + if i == j { 30.0 } else { 0.0 }
        });
        let b = Mat::<f64>::from_fn(d, 64, |i, j| ((i + j) % 5) as f64);
        for (pn, par) in [("seq", Par::Seq), ("rayon2", Par::rayon(2))] {
            t(&format!("d={d} {pn} gemm dxd"), || {
                let mut c = Mat::<f64>::zeros(d, d);
                faer::linalg::matmul::matmul(
                    c.as_mut(),
                    faer::Accum::Replace,
                    a.as_ref(),
                    a.as_ref(),
                    1.0,
                    par,
                );
            });
            t(&format!("d={d} {pn} gemm dxdx64"), || {
                let mut c = Mat::<f64>::zeros(d, 64);
                faer::linalg::matmul::matmul(
                    c.as_mut(),
                    faer::Accum::Replace,
                    a.as_ref(),
                    b.as_ref(),
                    1.0,
                    par,
                );
            });
            t(&format!("d={d} {pn} lu"), || {
                let _ = a.partial_piv_lu();
            });
            t(&format!("d={d} {pn} qr"), || {
                let _ = a.qr();
            });
            t(&format!("d={d} {pn} svd"), || {
                let _ = a.svd();
            });
            t(&format!("d={d} {pn} evd"), || {
                let _ = a.self_adjoint_eigen(faer::Side::Lower);
            });
            let _ = par;
        }
    }
}
