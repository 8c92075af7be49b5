//! `orthopt list`: what exists — methods, architectures, datasets and every recipe section —
//! with options and defaults, read from the very definitions recipes are validated against
//! (serde defaults of the method and section types), so it cannot drift from them.

use crate::recipe::Recipe;
use opt_stages::data::fetch::DatasetName;
use opt_stages::data::preprocess::{known_shape, LabelChoice};
use opt_stages::training::model::{Arch, MethodConfig};
use opt_stages::training::train_config::ScheduleConfig;
use std::fmt::Write;

/// A method's options and their defaults, as `key = value` pairs (empty for none).
pub fn method_options(method: &MethodConfig) -> Vec<(String, String)> {
    match serde_json::to_value(method) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(k, _)| k != "name")
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

fn methods(out: &mut String) {
    let _ = writeln!(out, "## Methods (`method.name`)\n");
    let _ = writeln!(out, "| name | in tables | options (defaults) | what |");
    let _ = writeln!(out, "|---|---|---|---|");
    for name in MethodConfig::NAMES {
        let Some(method) = MethodConfig::from_name(name) else {
            continue;
        };
        let options = method_options(&method)
            .into_iter()
            .map(|(k, v)| format!("`{k}` = {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let options = if options.is_empty() {
            "–".into()
        } else {
            options
        };
        let _ = writeln!(
            out,
            "| `{name}` | {} | {options} | {} |",
            method.paper_name(),
            method.method().summary()
        );
    }
}

fn architectures(out: &mut String) {
    let _ = writeln!(out, "\n## Architectures (`model.arch`)\n");
    for arch in Arch::ALL {
        let _ = writeln!(out, "* `{}`: {}", arch.as_str(), arch.summary());
    }
}

fn regularizers(out: &mut String) {
    use opt_core::mhe::MhePower;
    use opt_stages::training::regularizer::Power;
    let _ = writeln!(
        out,
        "\n## Regularizers (`[regularizer]`, with any method)\n"
    );
    let _ = writeln!(
        out,
        "`kind` = `mhe` or `half-mhe` (`none`: off); `power` (default 0), `weight`, \
         `classifier_weight` (defaults per power, the official ones), `layers` (default: every \
         weight layer but the classifier).\n"
    );
    let _ = writeln!(out, "| power | weight | classifier_weight |");
    let _ = writeln!(out, "|---|---:|---:|");
    for p in MhePower::ALL {
        let (w, c) = Power(p).official_weights();
        let _ = writeln!(out, "| `{}` | {w} | {c} |", p.as_str());
    }
}

fn datasets(out: &mut String) {
    let _ = writeln!(out, "\n## Datasets (`dataset.name`)\n");
    let _ = writeln!(out, "| name | images | classes | sources |");
    let _ = writeln!(out, "|---|---|---|---|");
    for d in DatasetName::ALL {
        let (shape, classes) = match known_shape(d, LabelChoice::Fine) {
            Some(((c, h, w), k)) => (format!("{c}×{h}×{w}"), k.to_string()),
            None => ("any (one size per folder)".into(), "its folders".into()),
        };
        let classes = match d {
            DatasetName::Cifar100 => format!("{classes} (`label = \"coarse\"`: 20)"),
            _ => classes,
        };
        let sources = match d {
            DatasetName::FashionMnist => "embedded (the default source), hub, url, local",
            DatasetName::ImageFolder => "local",
            _ => "hub, url, local (`dataset.source`)",
        };
        let _ = writeln!(
            out,
            "| `{}` | {shape} | {classes} | {sources} |",
            d.as_str()
        );
    }
}

/// Every recipe section with its defaults, as TOML.
fn defaults(out: &mut String) -> anyhow::Result<()> {
    let recipe: Recipe = toml::from_str("")?;
    let _ = writeln!(
        out,
        "\n## Recipe defaults (the official code's; `method` as above)\n\n```toml\n{}```",
        toml::to_string(&recipe)?
    );
    let _ = writeln!(
        out,
        "Without `schedule.iterations` or `schedule.epochs`: schedule.iterations = {}.",
        ScheduleConfig::DEFAULT_ITERATIONS
    );
    Ok(())
}

/// The whole catalogue, as markdown.
pub fn describe() -> anyhow::Result<String> {
    let mut out = String::new();
    methods(&mut out);
    architectures(&mut out);
    regularizers(&mut out);
    datasets(&mut out);
    defaults(&mut out)?;
    Ok(out)
}

/// Where the book keeps [`reference_page`] (relative to the repository root).
pub const REFERENCE_PAGE: &str = "docs/src/reference.md";

/// The book's reference page: the catalogue under a title, with a note that it is generated
/// (`orthopt list --markdown`; a test compares the committed page with it).
pub fn reference_page() -> anyhow::Result<String> {
    Ok(format!(
        "# Reference: every option and default\n\n\
         <!-- Generated by `orthopt list --markdown` (`just docs-reference`) from the definitions \
         recipes are validated against; do not edit by hand. -->\n\n\
         Every method, architecture, regularizer and dataset with its options and defaults, and \
         every recipe section's defaults, as `orthopt list` prints them.\n\n{}",
        describe()?.trim_start()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_method_with_the_defaults_recipes_get() {
        let text = describe().unwrap();
        for name in MethodConfig::NAMES {
            assert!(text.contains(&format!("| `{name}` |")), "{name} missing");
        }
        // The defaults shown are the ones a recipe without the option resolves to.
        let sopt: MethodConfig = toml::from_str("name = \"sopt\"").unwrap();
        let MethodConfig::Sopt(opt_stages::training::method::Sopt {
            budget_channels,
            episode_length,
            ..
        }) = sopt
        else {
            panic!("not sopt")
        };
        assert!(text.contains(&format!("`budget_channels` = {budget_channels}")));
        assert!(text.contains(&format!("`episode_length` = {episode_length}")));
        assert!(text.contains("`cifar-100` | 3×32×32 | 100"));
        // The official schedule (spec §5).
        for line in [
            "lr = 0.1",
            "momentum = 0.9",
            "batch_size = 128",
            "weight_decay = 0.0005",
        ] {
            assert!(text.contains(line), "{line} missing");
        }
        assert!(text.contains("schedule.iterations = 75000"));
    }
}
