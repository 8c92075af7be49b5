use std::path::{Path, PathBuf};

/// Errors of the stages. Every error about data names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A download that failed after its retries (`what`: the URL or hub file).
    #[error("could not download {what}: {message}")]
    Download { what: String, message: String },
    /// Training produced a non-finite loss.
    #[error("training diverged at iteration {iteration}: loss is {loss} (lower schedule.lr?)")]
    Diverged { iteration: u64, loss: f64 },
    /// The device asked for cannot be opened.
    #[error("{0}")]
    Device(String),
    /// Something that cannot happen unless the code disagrees with itself.
    #[error("internal error: {0}")]
    Internal(String),
    /// A configuration value that cannot work with this data or machine; `field` is its path
    /// in the stage's configuration (`schedule.batch_size`, `data.validation`, `model.width`),
    /// so the caller can name the setting it came from.
    #[error("{field}: {message}")]
    Setting {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Method(#[from] opt_core::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
}

pub type Result<T> = std::result::Result<T, StageError>;

/// Attaches a path to I/O errors.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| StageError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

pub(crate) fn format_err(path: &Path, message: impl Into<String>) -> StageError {
    StageError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| StageError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text + "\n").at(path)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|source| StageError::Json {
        path: path.to_path_buf(),
        source,
    })
}
