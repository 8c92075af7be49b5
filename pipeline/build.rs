//! With the `cuda` feature: a RUNPATH that finds the CUDA libraries where GPU machines keep
//! them — next to the binary (`$ORIGIN/lib`), the system toolkit, and the CUDA 13 wheels of a
//! PyTorch virtual environment — so a carried binary runs without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ORTHOPT_CUDA_LIB");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let mut dirs = vec![
        "$ORIGIN/lib".to_string(),
        "/usr/local/cuda/lib64".to_string(),
        "/usr/lib/x86_64-linux-gnu".to_string(),
    ];
    for python in ["python3.12", "python3.11", "python3.10", "python3.13"] {
        for venv in ["/opt/torch/.venv", "/usr/local", "/usr"] {
            for sub in [
                "cu13/lib",
                "cublas/lib",
                "cusolver/lib",
                "cusparse/lib",
                "nvjitlink/lib",
            ] {
                let site = if venv == "/usr" {
                    "dist-packages"
                } else {
                    "site-packages"
                };
                dirs.push(format!("{venv}/lib/{python}/{site}/nvidia/{sub}"));
            }
        }
    }
    // The toolkit this binary was linked against (a PyPI install on the build machine).
    if let Ok(lib) = std::env::var("ORTHOPT_CUDA_LIB") {
        dirs.push(lib);
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", dirs.join(":"));
}
