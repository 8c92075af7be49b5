//! With the `cuda` feature: compiles `kernels/ops.cu` and `kernels/maps.cu` to PTX for
//! `opt_core::ops`'s and `opt_core::orth`'s CUDA paths
//! (the driver JIT-compiles it for the GPU at hand). Without it: nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    // PTX for the lowest architecture asked for JIT-compiles on every later one.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".to_string());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // ops.cu: the ops of `opt_core::ops`; maps.cu: the orthogonal maps' device route.
    for name in ["ops", "maps"] {
        let src = format!("kernels/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
            .arg(out_dir.join(format!("{name}.ptx")))
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("running {nvcc} (set NVCC or use `just build-cuda`): {e}"));
        assert!(status.success(), "{nvcc} failed to compile {src}");
    }
}
