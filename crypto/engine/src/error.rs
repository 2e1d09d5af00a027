//! The engine's errors.

/// What can go wrong in the protocol engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Microsoft SEAL reported an error.
    #[error("homomorphic encryption: {0}")]
    Seal(#[from] seal_fhe::Error),
    /// The network description is unusable.
    #[error(transparent)]
    Net(#[from] delphi_net::NetError),
    /// Transport, OT or garbling failed.
    #[error(transparent)]
    Crypto(#[from] delphi_crypto::Error),
    /// The peer sent something malformed.
    #[error("malformed message from the peer: {0}")]
    Malformed(String),
    /// A bundle store on disk failed.
    #[error("bundle store {path}: {reason}")]
    Store {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A layer the engine cannot run under the protocol.
    #[error("layer {layer}: {reason}")]
    Unsupported {
        /// The description layer.
        layer: usize,
        /// Why.
        reason: String,
    },
}

/// Result alias of the engine.
pub type Result<T> = std::result::Result<T, EngineError>;
