//! IDX files, raw and gzip-compressed, read from disk as preprocess reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use opt_stages::data::readers::idx;
use opt_stages::data::readers::input::InputLimits;

fuzz_target!(|data: &[u8]| {
    let _ = idx::parse(data, std::path::Path::new("fuzz.idx"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-images-idx3-ubyte");
    std::fs::write(&path, data).unwrap();
    let _ = idx::read_with(
        &path,
        InputLimits {
            max_bytes: 64 << 20,
        },
    );
});
