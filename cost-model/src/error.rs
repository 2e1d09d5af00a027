//! Errors of the cost model and its `Result` alias.

/// Errors of the cost model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CostError {
    /// The model file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The crypto core failed during calibration.
    #[error(transparent)]
    Crypto(#[from] delphi_crypto::Error),
    /// The network is unusable.
    #[error(transparent)]
    Net(#[from] delphi_net::NetError),
    /// A bad argument (e.g. a link speed that does not parse).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the cost model.
pub type Result<T> = std::result::Result<T, CostError>;
