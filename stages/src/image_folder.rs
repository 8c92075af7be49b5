//! Image folders: `train/<class>/<image>` and `test/<class>/<image>` (`val/` is accepted for
//! `test/`), PNG or JPEG, as a directory or inside a `.tar` / `.tar.gz` (any leading folders).
//!
//! Class indices follow the sorted names of the training sub-folders, which are recorded. Every
//! image must have the same size; the data are RGB unless every image is grayscale.

use crate::bundle::{Bundle, Entry};
use crate::dataset::{push_chw, Decoded, Split};
use crate::error::format_err;
use crate::{Result, StageError};
use image::DynamicImage;
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

fn decode(entry: &Entry) -> Result<DynamicImage> {
    image::load_from_memory(&entry.bytes()?)
        .map_err(|e| format_err(&entry.display(), format!("cannot decode image: {e}")))
}

pub fn read(bundle: &Bundle) -> Result<Decoded> {
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
    let decoded: Vec<(&Entry, &str, &str, DynamicImage)> = images
        .iter()
        .map(|&(e, s, c)| Ok((e, s, c, decode(e)?)))
        .collect::<Result<_>>()?;
    let (first, _, _, img0) = &decoded[0];
    let (w, h) = (img0.width() as usize, img0.height() as usize);
    let gray = decoded.iter().all(|(.., img)| !img.color().has_color());
    let c = if gray { 1 } else { 3 };
    let mut train = Split {
        images: Vec::new(),
        labels: Vec::new(),
        shape: (c, h, w),
    };
    let mut test = train.clone();
    for (e, s, class, img) in &decoded {
        if (img.width() as usize, img.height() as usize) != (w, h) {
            return Err(format_err(
                &e.display(),
                format!(
                    "image is {}×{} but {} is {w}×{h}; every image must have the same size",
                    img.width(),
                    img.height(),
                    first.display().display()
                ),
            ));
        }
        let label = class_names.iter().position(|n| n == class).ok_or_else(|| {
            format_err(
                &e.display(),
                format!("test class `{class}` has no training folder"),
            )
        })?;
        let dst = if *s == "train" { &mut train } else { &mut test };
        dst.labels.push(label as u32);
        push_chw(img, gray, &mut dst.images);
    }
    Ok(Decoded {
        train,
        test,
        class_names,
    })
}
