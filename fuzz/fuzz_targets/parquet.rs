//! Hugging Face parquet files of images and labels.
#![no_main]
use libfuzzer_sys::fuzz_target;
use opt_stages::data::readers::bundle::Bundle;
use opt_stages::data::readers::input::InputLimits;
use opt_stages::data::readers::parquet_images::{read, Columns};

fuzz_target!(|data: &[u8]| {
    let members = vec![
        (
            "plain_text/train-00000-of-00001.parquet".to_string(),
            data.to_vec(),
        ),
        (
            "plain_text/test-00000-of-00001.parquet".to_string(),
            data.to_vec(),
        ),
    ];
    let b = Bundle::from_members(
        std::path::Path::new("fuzz"),
        members,
        InputLimits {
            max_bytes: 64 << 20,
        },
    );
    let _ = read(
        &b,
        &Columns {
            label: "label",
            classes: 10,
        },
    );
});
