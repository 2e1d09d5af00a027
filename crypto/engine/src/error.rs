//! The engine's errors.

/// What can go wrong in the protocol engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Microsoft SEAL reported an error.
    #[error("homomorphic encryption (SEAL) failed")]
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
    /// A homomorphic-encryption object from the peer was refused before
    /// SEAL saw it (see [`crate::seal_check`]).
    #[error("the peer's {what} is refused: {reason}")]
    HeObject {
        /// Which object.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// This side's own input is unusable (not the peer's fault).
    #[error("bad input: {0}")]
    Input(String),
    /// A stored bundle file is unusable.
    #[error("stored bundle: {0}")]
    Bundle(String),
    /// Something that should not happen (a thread died, our own message
    /// could not be encoded).
    #[error("internal error: {0}")]
    Internal(String),
    /// The server refused the request (busy, or a limit reached).
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The client declines the server's network: serving it would take more
    /// than this client allows (`--max-memory`, the spool's free space).
    #[error("beyond this client's limits: {0}")]
    OverLimit(String),
    /// A bundle store on disk failed.
    #[error("bundle store {path}: {problem}")]
    Store {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        problem: StoreProblem,
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

/// What went wrong with a bundle store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreProblem {
    /// The file system failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file's authentication tag does not verify.
    #[error("its authentication tag does not verify (altered, or made with another store key)")]
    Forged,
    /// The id inside the file is not the id it was asked for by.
    #[error("the bundle inside has another id (a renamed or copied file): refused")]
    WrongId,
    /// No such bundle here: already taken, expired, or never stored.
    #[error("no such bundle (already taken, expired, or never stored here)")]
    Missing,
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

impl From<&str> for StoreProblem {
    fn from(s: &str) -> Self {
        StoreProblem::Other(s.to_string())
    }
}

impl From<String> for StoreProblem {
    fn from(s: String) -> Self {
        StoreProblem::Other(s)
    }
}

/// Result alias of the engine.
pub type Result<T> = std::result::Result<T, EngineError>;
