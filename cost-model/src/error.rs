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
    /// The model was calibrated for an older protocol than this build runs.
    #[error(
        "{path}: a stale cost model, calibrated for protocol version {calibrated} while this \
         build runs version {current}: recalibrate (`delphi cost calibrate --out {path}`)"
    )]
    Stale {
        /// The file.
        path: std::path::PathBuf,
        /// The protocol version it records.
        calibrated: u32,
        /// This build's.
        current: u32,
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
