//! The parquet files the Hugging Face hub serves for image-classification datasets
//! (`uoft-cs/cifar10`, `uoft-cs/cifar100`, `ylecun/mnist`, `zalando-datasets/fashion_mnist`):
//! one row per image, an image column `img` (or `image`) holding a struct
//! `{bytes: binary (PNG/JPEG), path: string}`, and integer label columns (`label`;
//! `fine_label` and `coarse_label` for CIFAR-100). Grayscale images give one channel.
//!
//! Files whose name starts with `train` / `test` are the splits (`train-00000-of-00001.parquet`).
//! Class names come from the `huggingface` key of the file metadata when present.

use crate::data::dataset::{decode_image, image_header, push_chw, Decoded, Split};
use crate::data::readers::bundle::{Bundle, Entry};
use crate::data::readers::input::size_text;
use crate::error::format_err;
use crate::{Result, StageError};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

/// Which columns to read.
pub struct Columns<'a> {
    pub label: &'a str,
    pub classes: usize,
}

fn split_files<'a>(bundle: &'a Bundle, prefix: &str) -> Vec<&'a Entry> {
    bundle
        .entries
        .iter()
        .filter(|e| {
            let last = e.name.rsplit('/').next().unwrap_or_default();
            last.ends_with(".parquet") && last.starts_with(prefix)
        })
        .collect()
}

/// Class names from the datasets library's metadata (`info.features.<label>.names`).
fn class_names(reader: &SerializedFileReader<bytes::Bytes>, label: &str) -> Option<Vec<String>> {
    let kv = reader.metadata().file_metadata().key_value_metadata()?;
    let text = kv.iter().find(|k| k.key == "huggingface")?.value.as_ref()?;
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let names = json.pointer(&format!("/info/features/{label}/names"))?;
    names
        .as_array()?
        .iter()
        .map(|n| n.as_str().map(String::from))
        .collect()
}

fn image_bytes<'r>(entry: &Entry, row: usize, field: &'r Field) -> Result<&'r [u8]> {
    match field {
        Field::Group(g) => g
            .get_column_iter()
            .find(|(n, _)| n.as_str() == "bytes")
            .and_then(|(_, f)| match f {
                Field::Bytes(b) => Some(b.data()),
                _ => None,
            })
            .ok_or_else(|| format_err(&entry.display(), format!("row {row}: image has no bytes"))),
        Field::Bytes(b) => Ok(b.data()),
        _ => Err(format_err(
            &entry.display(),
            format!("row {row}: the image column is not a struct of bytes"),
        )),
    }
}

fn read_file(
    entry: &Entry,
    cols: &Columns<'_>,
    split: &mut Option<Split>,
    names: &mut Option<Vec<String>>,
    left: &mut u64,
    max_bytes: u64,
) -> Result<()> {
    let err = |m: String| format_err(&entry.display(), m);
    let reader = SerializedFileReader::new(bytes::Bytes::from(entry.bytes()?.into_owned()))
        .map_err(|e| err(format!("not a readable parquet file: {e}")))?;
    if names.is_none() {
        *names = class_names(&reader, cols.label);
    }
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| err(format!("cannot read rows: {e}")))?;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| err(format!("row {i}: {e}")))?;
        let (mut img, mut label) = (None, None);
        for (name, field) in row.get_column_iter() {
            match name.as_str() {
                "img" | "image" => img = Some(image_bytes(entry, i, field)?),
                n if n == cols.label => {
                    label = Some(match field {
                        Field::Long(v) => *v,
                        Field::Int(v) => *v as i64,
                        Field::Short(v) => *v as i64,
                        Field::Byte(v) => *v as i64,
                        other => return Err(err(format!("row {i}: label is {other:?}"))),
                    })
                }
                _ => {}
            }
        }
        let img = img.ok_or_else(|| err(format!("row {i}: no `img` or `image` column")))?;
        let label = label.ok_or_else(|| err(format!("row {i}: no `{}` column", cols.label)))?;
        if label < 0 || label as usize >= cols.classes {
            return Err(err(format!(
                "label {label} of record {i} is out of range 0..{}",
                cols.classes
            )));
        }
        // The header first: an image's size is checked before its pixels are decoded.
        let header = image_header(img).map_err(|m| err(format!("row {i}: {m}")))?;
        // MNIST-family images are grayscale PNGs: one channel; everything else RGB.
        let gray = !header.color;
        let c = if gray { 1 } else { 3 };
        let shape = (c, header.height as usize, header.width as usize);
        let bytes = header.pixels_bytes(c as u64);
        *left = left.checked_sub(bytes).ok_or_else(|| {
            err(format!(
                "row {i}: the images so far decode to more than the {} a dataset may take \
                 in memory here",
                size_text(max_bytes)
            ))
        })?;
        let s = split.get_or_insert_with(|| Split {
            images: Vec::new(),
            labels: Vec::new(),
            shape,
        });
        if s.shape != shape {
            return Err(err(format!(
                "row {i}: image is {:?} but earlier ones are {:?}",
                shape, s.shape
            )));
        }
        let decoded = decode_image(img, &header).map_err(|m| err(format!("row {i}: {m}")))?;
        push_chw(&decoded, gray, &mut s.images);
        s.labels.push(label as u32);
    }
    Ok(())
}

pub fn read(bundle: &Bundle, cols: &Columns<'_>) -> Result<Decoded> {
    let mut names = None;
    let max_bytes = bundle.limits.max_bytes;
    let mut left = max_bytes;
    let mut read_split = |prefix: &str| -> Result<Split> {
        let files = split_files(bundle, prefix);
        if files.is_empty() {
            return Err(StageError::Format {
                path: bundle.root.clone(),
                message: format!("no `{prefix}-*.parquet` file here"),
            });
        }
        let mut split = None;
        for f in &files {
            read_file(f, cols, &mut split, &mut names, &mut left, max_bytes)?;
        }
        split.ok_or_else(|| StageError::Format {
            path: files[0].display(),
            message: "no rows".into(),
        })
    };
    let train = read_split("train")?;
    let test = read_split("test")?;
    let class_names = names
        .filter(|n| n.len() == cols.classes)
        .unwrap_or_else(|| (0..cols.classes).map(|i| i.to_string()).collect());
    Ok(Decoded {
        train,
        test,
        class_names,
    })
}
