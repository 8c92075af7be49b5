//! Image folders: `train/<class>/<image>` and `test/<class>/<image>` (`val/` is accepted for
//! `test/`), PNG or JPEG, as a directory or inside a `.tar` / `.tar.gz` (any leading folders).
//!
//! Class indices follow the sorted names of the training sub-folders, which are recorded. Every
//! image must have the same size; the data are RGB unless every image is grayscale. Sizes come
//! from the images' headers, checked (and the folder's decoded total against the machine's
//! memory) before any image is decoded; then one image at a time is decoded into its split.

use crate::data::dataset::{decode_image, image_header, push_chw, Decoded, ImageHeader, Split};
use crate::data::readers::bundle::{Bundle, Entry};
use crate::data::readers::input::size_text;
use crate::error::format_err;
use crate::{Result, StageError};
use std::collections::BTreeSet;

fn is_image(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.ends_with(".png") || n.ends_with(".jpg") || n.ends_with(".jpeg")
}

/// `(split, class)` of an entry named `…/<split>/<class>/<file>`.
fn place(name: &str) -> Option<(&'static str, &str)> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() < 3 {
        return None;
    }
    let split = match parts[parts.len() - 3] {
        "train" => "train",
        "test" | "val" => "test",
        _ => return None,
    };
    Some((split, parts[parts.len() - 2]))
}

/// `(split, class)` of a directory named `…/<split>/<class>`.
fn class_dir(name: &str) -> Option<(&'static str, &str)> {
    let (parent, class) = name.rsplit_once('/').unwrap_or(("", name));
    let split = parent.rsplit('/').next().unwrap_or(parent);
    match split {
        "train" => Some(("train", class)),
        "test" | "val" => Some(("test", class)),
        _ => None,
    }
}

/// Every file of a class folder must be an image, and every class folder must hold one:
/// nothing in an image folder is dropped without a word.
fn check_class_folders(bundle: &Bundle) -> Result<()> {
    if let Some(e) = bundle
        .entries
        .iter()
        .find(|e| place(&e.name).is_some() && !is_image(&e.name))
    {
        return Err(format_err(
            &e.display(),
            "not a PNG or JPEG image (class folders hold only images; move other files out)",
        ));
    }
    for dir in &bundle.dirs {
        let Some((split, class)) = class_dir(dir) else {
            continue;
        };
        let prefix = format!("{dir}/");
        let has_image = bundle
            .entries
            .iter()
            .any(|e| e.name.starts_with(&prefix) && place(&e.name) == Some((split, class)));
        if !has_image {
            return Err(format_err(
                &bundle.root.join(dir),
                format!(
                    "class folder `{class}` of the {split} split holds no images; remove it or \
                     add its images"
                ),
            ));
        }
    }
    Ok(())
}

pub fn read(bundle: &Bundle) -> Result<Decoded> {
    check_class_folders(bundle)?;
    let mut images: Vec<(&Entry, &'static str, &str)> = bundle
        .entries
        .iter()
        .filter(|e| is_image(&e.name))
        .filter_map(|e| place(&e.name).map(|(s, c)| (e, s, c)))
        .collect();
    // Image order is path order, whatever order an archive stores its members in.
    images.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let classes: BTreeSet<&str> = images
        .iter()
        .filter(|(_, s, _)| *s == "train")
        .map(|(_, _, c)| *c)
        .collect();
    let class_names: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
    if class_names.is_empty() || !images.iter().any(|(_, s, _)| *s == "test") {
        return Err(StageError::Format {
            path: bundle.root.clone(),
            message: "expected an image folder with train/<class>/<image> and \
                      test/<class>/<image> (PNG or JPEG), found no such images"
                .into(),
        });
    }
    // First the headers: sizes and colour are known, and the folder's total checked against
    // what the machine can hold, before any pixel is decoded.
    let headers: Vec<ImageHeader> = images
        .iter()
        .map(|(e, ..)| image_header(&e.bytes()?).map_err(|m| format_err(&e.display(), m)))
        .collect::<Result<_>>()?;
    let first = &headers[0];
    let (w, h) = (first.width as usize, first.height as usize);
    for ((e, ..), hd) in images.iter().zip(&headers) {
        if (hd.width, hd.height) != (first.width, first.height) {
            return Err(format_err(
                &e.display(),
                format!(
                    "image is {}×{} but {} is {w}×{h}; every image must have the same size",
                    hd.width,
                    hd.height,
                    images[0].0.display().display()
                ),
            ));
        }
    }
    let gray = headers.iter().all(|hd| !hd.color);
    let c = if gray { 1 } else { 3 };
    let total = first.pixels_bytes(c as u64) * images.len() as u64;
    if total > bundle.limits.max_bytes {
        return Err(format_err(
            &bundle.root,
            format!(
                "{} images of {w}×{h} decode to {}, more than the {} a dataset may take in \
                 memory here",
                images.len(),
                size_text(total),
                size_text(bundle.limits.max_bytes)
            ),
        ));
    }
    let mut train = Split {
        images: Vec::new(),
        labels: Vec::new(),
        shape: (c, h, w),
    };
    let mut test = train.clone();
    // One image decoded at a time, straight into its split.
    for ((e, s, class), hd) in images.iter().zip(&headers) {
        let label = class_names.iter().position(|n| n == class).ok_or_else(|| {
            format_err(
                &e.display(),
                format!("test class `{class}` has no training folder"),
            )
        })?;
        let img = decode_image(&e.bytes()?, hd).map_err(|m| format_err(&e.display(), m))?;
        let dst = if *s == "train" { &mut train } else { &mut test };
        dst.labels.push(label as u32);
        push_chw(&img, gray, &mut dst.images);
    }
    Ok(Decoded {
        train,
        test,
        class_names,
    })
}
