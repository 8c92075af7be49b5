//! Progress bars (indicatif) and logs (tracing): stderr shows bars and log lines without
//! tearing each other; the run directory gets a plain-text `opt.log`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use opt_stages::Progress;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Shared between the log writer and the bars so log lines are printed above the bars.
#[derive(Clone)]
pub struct Terminal {
    multi: MultiProgress,
    quiet: bool,
}

impl Terminal {
    pub fn new(quiet: bool) -> Self {
        let multi = MultiProgress::new();
        if quiet {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self { multi, quiet }
    }
}

struct TermWriter(MultiProgress);

impl Write for TermWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Installs the global subscriber: stderr at `info` (`warn` with `--quiet`; `RUST_LOG`
/// overrides), and `log_file` (if given) at `info` without colours.
pub fn init_logging(term: &Terminal, log_file: Option<&Path>) -> anyhow::Result<()> {
    let level = if term.quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let multi = term.multi.clone();
    // Colours only for a terminal: a redirected log or a Slurm output file gets plain text.
    let stderr_layer = fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .with_writer(move || TermWriter(multi.clone()))
        .with_filter(filter);
    let file_layer = match log_file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let file = Arc::new(Mutex::new(file));
            Some(
                fmt::layer()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(move || SharedFile(file.clone()))
                    .with_filter(EnvFilter::new("info")),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init()?;
    Ok(())
}

struct SharedFile(Arc<Mutex<std::fs::File>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut f = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("log file lock poisoned"))?;
        f.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A [`Progress`] that draws one bar per phase.
pub struct Bars {
    term: Terminal,
    current: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new(term: &Terminal) -> Self {
        Self {
            term: term.clone(),
            current: Mutex::new(None),
        }
    }
}

impl Progress for Bars {
    fn begin(&self, label: &str, total: u64) {
        let bar = if total > 0 {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {pos}/{len} {msg} (ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        } else {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{prefix:>10} {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        };
        bar.set_prefix(label.to_string());
        let bar = self.term.multi.add(bar);
        if let Ok(mut cur) = self.current.lock() {
            if let Some(old) = cur.take() {
                old.finish_and_clear();
            }
            *cur = Some(bar);
        }
    }

    fn update(&self, position: u64, status: &str) {
        if let Ok(cur) = self.current.lock() {
            if let Some(bar) = cur.as_ref() {
                bar.set_position(position);
                bar.set_message(status.to_string());
            }
        }
    }

    fn note(&self, line: &str) {
        tracing::info!("{line}");
    }

    fn warn(&self, line: &str) {
        tracing::warn!("{line}");
    }

    fn end(&self) {
        if let Ok(mut cur) = self.current.lock() {
            if let Some(bar) = cur.take() {
                bar.finish_and_clear();
            }
        }
    }
}

/// An error and its causes, each said once: `{e:#}` repeats a cause that the error's own text
/// already shows (`path: No space left on device (os error 28): No space left on device
/// (os error 28)`), as every `"{path}: {source}"` error with a `#[source]` does.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod error_text_tests {
    use super::error_text;

    #[test]
    fn a_cause_already_shown_is_not_repeated() {
        let full = opt_stages::StageError::Io {
            path: "/cache/train/x/model.safetensors".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        let e = anyhow::Error::new(full).context("stage train");
        let text = error_text(&e);
        assert_eq!(
            text,
            "stage train: /cache/train/x/model.safetensors: No space left on device (os error 28)"
        );
        assert_eq!(format!("{e:#}").matches("No space left").count(), 2);
    }
}
