//! CIFAR binary batches (both variants, both label choices).
#![no_main]
use libfuzzer_sys::fuzz_target;
use opt_stages::data::preprocess::LabelChoice;
use opt_stages::data::readers::bundle::Bundle;
use opt_stages::data::readers::cifar::{read_binary, Cifar};
use opt_stages::data::readers::input::InputLimits;

fuzz_target!(|data: &[u8]| {
    let limits = InputLimits {
        max_bytes: 64 << 20,
    };
    let root = std::path::Path::new("fuzz");
    let ten: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string(), "batches.meta.txt".to_string()])
        .map(|n| (n, data.to_vec()))
        .collect();
    let _ = read_binary(
        &Bundle::from_members(root, ten, limits),
        Cifar::Ten,
        LabelChoice::Fine,
    );
    let hundred: Vec<(String, Vec<u8>)> = ["train.bin", "test.bin", "coarse_label_names.txt"]
        .iter()
        .map(|n| (n.to_string(), data.to_vec()))
        .collect();
    let b = Bundle::from_members(root, hundred, limits);
    let _ = read_binary(&b, Cifar::Hundred, LabelChoice::Coarse);
    let _ = read_binary(&b, Cifar::Hundred, LabelChoice::Fine);
});
