//! `.tar` and `.tar.gz` archives, expanded as a dataset is, then every member read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use opt_stages::data::readers::bundle::Bundle;
use opt_stages::data::readers::input::InputLimits;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    for name in ["d.tar", "d.tar.gz"] {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        if let Ok(b) = Bundle::load_with(
            &path,
            InputLimits {
                max_bytes: 64 << 20,
            },
        ) {
            for e in &b.entries {
                let _ = e.bytes();
            }
            let _ = b.find("data_batch_1");
        }
    }
});
