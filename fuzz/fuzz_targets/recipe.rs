//! Recipes (TOML and YAML): bounded, then parsed and resolved as `orthopt` does.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    for name in ["r.toml", "r.yaml"] {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        if let Ok(loaded) = opt_pipeline::recipe::load(&path, &[]) {
            let _ = opt_pipeline::plan::resolve(&loaded);
        }
    }
});
