//! The engine's one error type. Every variant that concerns a file names it, and every variant
//! that concerns a tensor names the tensor, so that a user with a broken download knows what to fix.

use std::path::PathBuf;

/// Errors from loading models and running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file the layout requires is not there.
    #[error("missing file {path} ({what})")]
    MissingFile {
        /// Where we looked.
        path: PathBuf,
        /// What the file is for.
        what: String,
    },
    /// A config or index file is not what its format says.
    #[error("{path}: invalid config: {msg}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A model folder or file that matches no layout we know.
    #[error("{path}: unknown model layout: {msg}")]
    UnknownLayout {
        /// The folder or file.
        path: PathBuf,
        /// Why it was not recognised.
        msg: String,
    },
    /// A safetensors file is malformed.
    #[error("{path}: not a valid safetensors file: {msg}")]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        msg: String,
    },
    /// A tensor a model needs is not in any of its weight files.
    #[error("tensor `{name}` not found in {files}")]
    MissingTensor {
        /// The tensor name, as looked up in the files.
        name: String,
        /// The files searched, comma-separated.
        files: String,
    },
    /// A tensor has another shape than the config implies.
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file holding it.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// What the config implies.
        expected: Vec<usize>,
        /// What the file has.
        actual: Vec<usize>,
    },
    /// A tensor's dtype is one we cannot load.
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The file holding it.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The dtype as the file spells it.
        dtype: String,
    },
    /// A tokenizer could not be loaded or run.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer {
        /// The tokenizer file or folder.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// A request the engine cannot serve (bad size, bad step count...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The model does not fit the memory it may use; the message holds the memory plan.
    #[error("the model does not fit in memory: {0}")]
    InsufficientMemory(String),
    /// The caller cancelled the generation between two steps.
    #[error("generation cancelled")]
    Cancelled,
    /// Encoding the output image failed.
    #[error("image encoding: {0}")]
    Image(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A config error for `path`.
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::BadConfig {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
