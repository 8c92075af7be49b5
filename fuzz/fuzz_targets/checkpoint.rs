//! Safetensors checkpoints: read, run record parsed from the metadata, every tensor checked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use opt_stages::training::checkpoint;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last.safetensors");
    std::fs::write(&path, data).unwrap();
    if let Ok(snapshot) = checkpoint::read(&path) {
        let _ = snapshot.record();
        let _ = snapshot.check_all_finite();
    }
});
