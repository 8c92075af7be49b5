//! CIFAR "python version" pickles: any bytes parse to a value or an error, within bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = opt_stages::data::readers::pickle::parse(data);
    // The whole reader too: a bundle holding the bytes as every file CIFAR-10 asks for.
    let names = [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    ];
    let members = names
        .iter()
        .map(|n| (format!("cifar-10-batches-py/{n}"), data.to_vec()))
        .collect();
    let bundle = opt_stages::data::readers::bundle::Bundle::from_members(
        std::path::Path::new("fuzz"),
        members,
        opt_stages::data::readers::input::InputLimits {
            max_bytes: 64 << 20,
        },
    );
    let _ = opt_stages::data::readers::cifar::read_python(
        &bundle,
        opt_stages::data::readers::cifar::Cifar::Ten,
        opt_stages::data::preprocess::LabelChoice::Fine,
    );
});
