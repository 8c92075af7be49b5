/// Errors of the method library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("parameter `{0}` is registered twice")]
    DuplicateParam(String),
    #[error("checkpoint has no tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?} in the checkpoint but {expected:?} in the model")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A value that must be finite is not (a diverged network).
    #[error("non-finite values: {0}")]
    NonFinite(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;
