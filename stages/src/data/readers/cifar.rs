//! CIFAR-10 and CIFAR-100 in their two official packagings
//! (<https://www.cs.toronto.edu/~kriz/cifar.html>):
//!
//! * binary: records of label byte(s) + 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
//!   row-major). CIFAR-10: `data_batch_{1..5}.bin`, `test_batch.bin`, 1 label byte (3073-byte
//!   records); CIFAR-100: `train.bin`, `test.bin`, coarse then fine label byte (3074 bytes).
//! * python: pickled dicts (see [`crate::data::readers::pickle`]) with `data` (`uint8`, N×3072, same pixel
//!   order) and `labels` (CIFAR-10: `data_batch_{1..5}`, `test_batch`) or `fine_labels` /
//!   `coarse_labels` (CIFAR-100: `train`, `test`); class names in `batches.meta` / `meta`.
//!
//! Both land in the same NCHW uint8 layout, which is the files' own pixel order.

use crate::data::dataset::{Decoded, Split};
use crate::data::readers::bundle::{Bundle, Entry};
use crate::data::readers::pickle::{self, Value};
use crate::data::spec::LabelChoice;
use crate::error::format_err;
use crate::Result;

pub const PIXELS: usize = 3 * 32 * 32;
const SHAPE: (usize, usize, usize) = (3, 32, 32);

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar {
    Ten,
    Hundred,
}

impl Cifar {
    fn classes(self, label: LabelChoice) -> usize {
        match (self, label) {
            (Cifar::Ten, _) => 10,
            (Cifar::Hundred, LabelChoice::Fine) => 100,
            (Cifar::Hundred, LabelChoice::Coarse) => 20,
        }
    }
}

fn check_label(entry: &Entry, record: usize, label: u32, classes: usize) -> Result<()> {
    if label as usize >= classes {
        return Err(format_err(
            &entry.display(),
            format!("label {label} of record {record} is out of range 0..{classes}"),
        ));
    }
    Ok(())
}

/// Appends the records of one binary file to `split`.
fn binary_file(entry: &Entry, cifar: Cifar, label: LabelChoice, split: &mut Split) -> Result<()> {
    let (label_bytes, pick) = match (cifar, label) {
        (Cifar::Ten, _) => (1, 0),
        (Cifar::Hundred, LabelChoice::Coarse) => (2, 0),
        (Cifar::Hundred, LabelChoice::Fine) => (2, 1),
    };
    let record = label_bytes + PIXELS;
    let data = entry.bytes()?;
    if data.is_empty() || !data.len().is_multiple_of(record) {
        return Err(format_err(
            &entry.display(),
            format!(
                "{} bytes is not a whole number of {record}-byte records ({label_bytes} label \
                 byte(s) + {PIXELS} pixels): wrong CIFAR variant, or a truncated file",
                data.len()
            ),
        ));
    }
    let classes = cifar.classes(label);
    for (i, r) in data.chunks_exact(record).enumerate() {
        let l = r[pick] as u32;
        check_label(entry, i, l, classes)?;
        split.labels.push(l);
        split.images.extend_from_slice(&r[label_bytes..]);
    }
    Ok(())
}

fn empty() -> Split {
    Split {
        images: Vec::new(),
        labels: Vec::new(),
        shape: SHAPE,
    }
}

fn names_txt(bundle: &Bundle, file: &str, classes: usize) -> Result<Vec<String>> {
    match bundle.find(file)? {
        Some(e) => {
            let names: Vec<String> = String::from_utf8_lossy(&e.bytes()?)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if names.len() != classes {
                return Err(format_err(
                    &e.display(),
                    format!("{} class names, expected {classes}", names.len()),
                ));
            }
            Ok(names)
        }
        None => Ok((0..classes).map(|i| i.to_string()).collect()),
    }
}

/// Reads the binary version.
pub fn read_binary(bundle: &Bundle, cifar: Cifar, label: LabelChoice) -> Result<Decoded> {
    let (train_files, test_file, names_file): (Vec<String>, &str, &str) = match (cifar, label) {
        (Cifar::Ten, _) => (
            (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            "test_batch.bin",
            "batches.meta.txt",
        ),
        (Cifar::Hundred, LabelChoice::Fine) => {
            (vec!["train.bin".into()], "test.bin", "fine_label_names.txt")
        }
        (Cifar::Hundred, LabelChoice::Coarse) => (
            vec!["train.bin".into()],
            "test.bin",
            "coarse_label_names.txt",
        ),
    };
    let mut train = empty();
    for f in &train_files {
        binary_file(
            bundle.require(f, "CIFAR binary training batch")?,
            cifar,
            label,
            &mut train,
        )?;
    }
    let mut test = empty();
    binary_file(
        bundle.require(test_file, "CIFAR binary test batch")?,
        cifar,
        label,
        &mut test,
    )?;
    Ok(Decoded {
        train,
        test,
        class_names: names_txt(bundle, names_file, cifar.classes(label))?,
    })
}

fn load_pickle(entry: &Entry) -> Result<Value> {
    pickle::parse(&entry.bytes()?).map_err(|m| format_err(&entry.display(), m))
}

fn python_file(entry: &Entry, cifar: Cifar, label: LabelChoice, split: &mut Split) -> Result<()> {
    let v = load_pickle(entry)?;
    let key = match (cifar, label) {
        (Cifar::Ten, _) => "labels",
        (Cifar::Hundred, LabelChoice::Fine) => "fine_labels",
        (Cifar::Hundred, LabelChoice::Coarse) => "coarse_labels",
    };
    let err = |m: String| format_err(&entry.display(), m);
    let (shape, data) = match v.get("data") {
        Some(Value::Array { shape, data, .. }) => (shape.clone(), data.clone()),
        Some(_) => return Err(err("`data` is not a NumPy uint8 array".into())),
        None => return Err(err("no `data` entry (not a CIFAR python batch)".into())),
    };
    let labels = match v.get(key) {
        Some(Value::List(l)) => l,
        _ => {
            return Err(err(format!(
                "no `{key}` list (wrong CIFAR variant for this file?)"
            )))
        }
    };
    if shape.len() != 2 || shape[1] != PIXELS || shape[0] != labels.len() {
        return Err(err(format!(
            "`data` has shape {shape:?} for {} labels; expected ({}, {PIXELS})",
            labels.len(),
            labels.len()
        )));
    }
    let classes = cifar.classes(label);
    for (i, l) in labels.iter().enumerate() {
        let l = match l {
            Value::Int(x) if *x >= 0 && *x <= u32::MAX as i64 => *x as u32,
            // The kind, not the value: a hostile label could be a list of a million items.
            Value::Int(x) => return Err(err(format!("label {i} is {x}, expected an int ≥ 0"))),
            other => {
                return Err(err(format!(
                    "label {i} is a {}, expected an int ≥ 0",
                    other.kind()
                )))
            }
        };
        check_label(entry, i, l, classes)?;
        split.labels.push(l);
    }
    split.images.extend_from_slice(&data);
    Ok(())
}

fn names_pickle(bundle: &Bundle, file: &str, key: &str, classes: usize) -> Result<Vec<String>> {
    let Some(e) = bundle.find(file)? else {
        return Ok((0..classes).map(|i| i.to_string()).collect());
    };
    let v = load_pickle(e)?;
    let Some(Value::List(items)) = v.get(key) else {
        return Err(format_err(&e.display(), format!("no `{key}` list")));
    };
    let names: Vec<String> = items
        .iter()
        .map(|n| {
            n.as_key()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        })
        .collect();
    if names.len() != classes {
        return Err(format_err(
            &e.display(),
            format!("{} class names, expected {classes}", names.len()),
        ));
    }
    Ok(names)
}

/// Reads the python (pickle) version.
pub fn read_python(bundle: &Bundle, cifar: Cifar, label: LabelChoice) -> Result<Decoded> {
    let (train_files, test_file): (Vec<String>, &str) = match cifar {
        Cifar::Ten => (
            (1..=5).map(|i| format!("data_batch_{i}")).collect(),
            "test_batch",
        ),
        Cifar::Hundred => (vec!["train".into()], "test"),
    };
    let mut train = empty();
    for f in &train_files {
        python_file(
            bundle.require(f, "CIFAR python training batch")?,
            cifar,
            label,
            &mut train,
        )?;
    }
    let mut test = empty();
    python_file(
        bundle.require(test_file, "CIFAR python test batch")?,
        cifar,
        label,
        &mut test,
    )?;
    let classes = cifar.classes(label);
    let class_names = match (cifar, label) {
        (Cifar::Ten, _) => names_pickle(bundle, "batches.meta", "label_names", classes)?,
        (Cifar::Hundred, LabelChoice::Fine) => {
            names_pickle(bundle, "meta", "fine_label_names", classes)?
        }
        (Cifar::Hundred, LabelChoice::Coarse) => {
            names_pickle(bundle, "meta", "coarse_label_names", classes)?
        }
    };
    Ok(Decoded {
        train,
        test,
        class_names,
    })
}
