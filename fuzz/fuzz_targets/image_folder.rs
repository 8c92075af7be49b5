//! Image folders: PNG and JPEG headers and pixels, one image per split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use opt_stages::data::readers::bundle::Bundle;
use opt_stages::data::readers::input::InputLimits;

fuzz_target!(|data: &[u8]| {
    for ext in ["png", "jpg"] {
        let members = vec![
            (format!("train/a/0.{ext}"), data.to_vec()),
            (format!("test/a/0.{ext}"), data.to_vec()),
        ];
        let b = Bundle::from_members(
            std::path::Path::new("fuzz"),
            members,
            InputLimits {
                max_bytes: 64 << 20,
            },
        );
        let _ = opt_stages::data::readers::image_folder::read(&b);
    }
});
