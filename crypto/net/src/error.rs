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
    #[error(
        "unsupported description version {found} (this build reads versions 1 to {supported})"
    )]
    Version {
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The description as a whole is wrong.
    #[error("invalid network description: {0}")]
    Invalid(String),
    /// The JSON could not be parsed (the parser's message is part of this
    /// error's text, not a separate cause).
    #[error("{path}: not a valid network description: {error}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        error: serde_json::Error,
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
    #[error("reading or writing {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A node's values can leave the range the protocol computes exactly in.
    #[error(
        "layer {layer} ({kind}): values can exceed {what}: measured peak {measured:.3e} against a limit of {limit:.3e}; \
         {overflowing} of {sampled} sampled inputs overflowed. Lower the weights or the input range, \
         use fewer fractional bits, or train the plan with its ranges recorded"
    )]
    Range {
        /// The description layer.
        layer: usize,
        /// The program operation.
        kind: &'static str,
        /// What the limit protects.
        what: &'static str,
        /// The measured peak (field units).
        measured: f64,
        /// The limit (field units).
        limit: f64,
        /// Sampled inputs that overflowed.
        overflowing: usize,
        /// Inputs sampled.
        sampled: usize,
    },
    /// An input value outside the range the network declares.
    #[error(
        "input value {index} is {value}, outside the range [{lo}, {hi}] the network declares \
         (metadata.input_range, or what its input normalisation implies for raw values in [0, 1])"
    )]
    InputRange {
        /// Position in the input.
        index: usize,
        /// The value.
        value: f32,
        /// The declared lower end.
        lo: f64,
        /// The declared upper end.
        hi: f64,
    },
    /// A value left the fixed-point range.
    #[error(transparent)]
    Crypto(#[from] delphi_crypto::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, NetError>;

pub(crate) fn layer_err(index: usize, kind: &'static str, reason: impl Into<String>) -> NetError {
    NetError::Layer { index, kind, reason: reason.into() }
}
