//! With the `cuda` feature: a RUNPATH that finds the CUDA libraries where GPU machines keep
//! them — next to the binary (`$ORIGIN/lib`), the system toolkit, and the CUDA 13 wheels of a
//! PyTorch virtual environment — so a carried binary runs without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ORTHOPT_CUDA_LIB");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let mut dirs: Vec<String> = ["$ORIGIN/lib", "/usr/local/cuda/lib64"]
        .into_iter()
        .map(String::from)
        .collect();
    // CUDA 13 wheels put their libraries in nvidia/cu13/lib (the H100/H200 machines' PyTorch).
    for python in ["python3.12", "python3.11"] {
        dirs.push(format!(
            "/opt/torch/.venv/lib/{python}/site-packages/nvidia/cu13/lib"
        ));
    }
    // The toolkit this binary was linked against (a PyPI install on the build machine).
    if let Ok(lib) = std::env::var("ORTHOPT_CUDA_LIB") {
        dirs.push(lib);
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", dirs.join(":"));
}
