//! Resolution of a recipe's `[dataset]` source into a typed fetch source and data format, with
//! the defaults for known datasets (official URLs and checksums, the usual hub repositories).

use crate::recipe::{invalid, DatasetSection, Loaded, RecipeError, SourceKind};
use opt_stages::data::catalogue;
use opt_stages::data::fetch::{DatasetName, Download, Source};
use opt_stages::data::preprocess::DataFormat;

/// The hub endpoint when the recipe names none: `HF_ENDPOINT`, else the public hub.
pub fn default_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

fn unused(loaded: &Loaded, d: &DatasetSection, kind: &str) -> Result<(), RecipeError> {
    let keys: [(&str, bool, &str); 7] = [
        ("dataset.path", d.path.is_some(), "local"),
        ("dataset.url", d.url.is_some(), "url"),
        ("dataset.md5", d.md5.is_some(), "url"),
        ("dataset.repo", d.repo.is_some(), "hub"),
        ("dataset.revision", d.revision.is_some(), "hub"),
        ("dataset.files", d.files.is_some(), "hub"),
        ("dataset.endpoint", d.endpoint.is_some(), "hub"),
    ];
    for (key, set, owner) in keys {
        if set && owner != kind {
            return Err(invalid(
                loaded,
                key,
                format!("only used with dataset.source = \"{owner}\""),
            ));
        }
    }
    Ok(())
}

fn is_md5(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `source = "embedded"`: the Fashion-MNIST subset in the binary, for that dataset only.
fn embedded_source(loaded: &Loaded, d: &DatasetSection) -> Result<Source, RecipeError> {
    unused(loaded, d, "embedded")?;
    if d.name != DatasetName::FashionMnist {
        return Err(invalid(
            loaded,
            "dataset.source",
            format!(
                "the embedded data is a Fashion-MNIST subset; dataset `{}` needs \
                 source = \"hub\", \"url\" or \"local\"",
                d.name.as_str()
            ),
        ));
    }
    Ok(Source::Embedded)
}

/// `source = "local"`: a file or directory read in place.
fn local_source(loaded: &Loaded, d: &DatasetSection) -> Result<Source, RecipeError> {
    unused(loaded, d, "local")?;
    let path = d.path.clone().ok_or_else(|| {
        invalid(
            loaded,
            "dataset.path",
            "dataset.source = \"local\" needs a directory or archive path",
        )
    })?;
    let path = path.canonicalize().map_err(|e| {
        invalid(
            loaded,
            "dataset.path",
            format!("cannot open {}: {e}", path.display()),
        )
    })?;
    Ok(Source::Local { path })
}

/// `source = "url"`: the given URL and MD5, or the official downloads of the dataset.
fn url_source(loaded: &Loaded, d: &DatasetSection) -> Result<Source, RecipeError> {
    unused(loaded, d, "url")?;
    let files = match (&d.url, &d.md5) {
        (Some(url), Some(md5)) => {
            if !is_md5(md5) {
                return Err(invalid(
                    loaded,
                    "dataset.md5",
                    format!("expected 32 hex digits, found {md5:?}"),
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    loaded,
                    "dataset.url",
                    format!("expected an http(s) URL, found {url:?}"),
                ));
            }
            vec![Download {
                url: url.clone(),
                md5: md5.to_ascii_lowercase(),
            }]
        }
        (Some(_), None) => {
            return Err(invalid(
                loaded,
                "dataset.md5",
                "a download needs its published MD5 (32 hex digits), so a changed or \
                 corrupt file is never used",
            ))
        }
        (None, Some(_)) => return Err(invalid(loaded, "dataset.url", "dataset.md5 without a url")),
        (None, None) => {
            let format = d.format.unwrap_or_else(|| {
                catalogue::default_format(d.name, &Source::Url { files: vec![] })
            });
            catalogue::default_downloads(d.name, format).ok_or_else(|| {
                invalid(
                    loaded,
                    "dataset.url",
                    format!(
                        "no default download for dataset `{}` in format {format:?}; set \
                         dataset.url and dataset.md5",
                        d.name.as_str()
                    ),
                )
            })?
        }
    };
    Ok(Source::Url { files })
}

/// `source = "hub"`: a dataset repository, the usual one of the dataset by default.
fn hub_source(loaded: &Loaded, d: &DatasetSection) -> Result<Source, RecipeError> {
    unused(loaded, d, "hub")?;
    let defaults = catalogue::default_hub(d.name);
    let repo = match (&d.repo, &defaults) {
        (Some(r), _) => r.clone(),
        (None, Some((r, _))) => r.to_string(),
        (None, None) => {
            return Err(invalid(
                loaded,
                "dataset.repo",
                format!(
                    "no default hub repository for dataset `{}`; set dataset.repo and \
                     dataset.files",
                    d.name.as_str()
                ),
            ))
        }
    };
    let files = match (&d.files, defaults) {
        (Some(f), _) if !f.is_empty() => f.clone(),
        (None, Some((r, f))) if r == repo => f,
        _ => {
            return Err(invalid(
                loaded,
                "dataset.files",
                "expected the list of files to fetch from the repository",
            ))
        }
    };
    let revision = d.revision.clone().unwrap_or_else(|| "main".into());
    // Names become URLs and paths in the hub cache: checked here, naming the recipe key.
    match opt_stages::data::fetch::check_hub_names(&repo, &revision, &files) {
        Err(opt_stages::StageError::Setting { field, message }) => {
            return Err(invalid(loaded, field, message))
        }
        Err(e) => return Err(invalid(loaded, "dataset.files", e.to_string())),
        Ok(()) => {}
    }
    Ok(Source::Hub {
        endpoint: d
            .endpoint
            .clone()
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(default_endpoint),
        repo,
        revision,
        files,
        cache_dir: None,
    })
}

/// `(source, format)` of a recipe's dataset.
pub fn resolve_source(
    loaded: &Loaded,
    d: &DatasetSection,
) -> Result<(Source, DataFormat), RecipeError> {
    let source = match d.source {
        SourceKind::Embedded => embedded_source(loaded, d)?,
        SourceKind::Local => local_source(loaded, d)?,
        SourceKind::Url => url_source(loaded, d)?,
        SourceKind::Hub => hub_source(loaded, d)?,
    };
    let format = d
        .format
        .unwrap_or_else(|| catalogue::default_format(d.name, &source));
    let fits = match d.name {
        DatasetName::FashionMnist | DatasetName::Mnist => {
            matches!(format, DataFormat::Idx | DataFormat::Parquet)
        }
        DatasetName::Cifar10 | DatasetName::Cifar100 => matches!(
            format,
            DataFormat::CifarBinary
                | DataFormat::CifarPython
                | DataFormat::Parquet
                | DataFormat::ImageFolder
        ),
        DatasetName::ImageFolder => format == DataFormat::ImageFolder,
    };
    if !fits {
        return Err(invalid(
            loaded,
            "dataset.format",
            format!(
                "format {format:?} does not hold dataset `{}`",
                d.name.as_str()
            ),
        ));
    }
    if d.label == opt_stages::data::preprocess::LabelChoice::Coarse
        && d.name != DatasetName::Cifar100
    {
        return Err(invalid(
            loaded,
            "dataset.label",
            "\"coarse\" exists only for cifar-100",
        ));
    }
    Ok((source, format))
}
