//! Errors of the network description.

use std::path::PathBuf;

/// What can be wrong with a network description or its files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A layer the engine cannot run, with the reason.
    #[error("layer {index} ({kind}): {reason}")]
    Layer {
        /// The layer's position in `layers`.
        index: usize,
        /// The layer's type.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The file names a format version this build does not know.
    #[error("unsupported description version {found} (this build reads version {supported})")]
    Version {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The description as a whole is wrong.
    #[error("invalid network description: {0}")]
    Invalid(String),
    /// The JSON could not be parsed.
    #[error("{path}: not a valid network description: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The weights sidecar could not be read.
    #[error("{path}: bad weights file: {reason}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A value left the fixed-point range.
    #[error(transparent)]
    Crypto(#[from] delphi_crypto::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, NetError>;

pub(crate) fn layer_err(index: usize, kind: &'static str, reason: impl Into<String>) -> NetError {
    NetError::Layer {
        index,
        kind,
        reason: reason.into(),
    }
}
