//! The engine's error type.

use std::io;

/// Everything that can go wrong in the protocol engine.
///
/// Errors keep their cause and carry structured fields so that a caller can
/// react to them (and a user can read them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer closed the connection before the protocol finished.
    #[error("the peer closed the connection")]
    Closed,
    /// No data arrived from the peer within the configured timeout.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// An I/O error on the transport.
    #[error("transport error")]
    Io(#[source] io::Error),
    /// A length prefix announced a frame larger than the configured bound.
    #[error("frame of {len} bytes exceeds the bound of {max} bytes")]
    FrameTooLarge {
        /// The length the peer announced.
        len: u64,
        /// The largest length this side accepts.
        max: u64,
    },
    /// The peer sent something that is not a valid protocol message.
    #[error("malformed message from the peer: {what}")]
    Malformed {
        /// What was wrong.
        what: &'static str,
    },
    /// A stored bundle (a file of this party's own) is unusable.
    #[error("stored bundle unusable: {what}")]
    Stored {
        /// What was wrong.
        what: &'static str,
    },
    /// A value does not fit the fixed-point range of the field.
    #[error("{value} does not fit in fixed point with {frac_bits} fractional bits")]
    OutOfRange {
        /// The real number that was to be encoded.
        value: f64,
        /// The number of fractional bits in use.
        frac_bits: u32,
    },
    /// The two parties disagree on sizes or parameters.
    #[error("parameter mismatch: {what} (ours {ours}, theirs {theirs})")]
    Mismatch {
        /// Which parameter.
        what: &'static str,
        /// This side's value.
        ours: u64,
        /// The peer's value.
        theirs: u64,
    },
    /// Preprocessed material was used a second time (which would break security).
    #[error("this offline bundle was already consumed by an online run")]
    BundleConsumed,
    /// TLS could not be set up: a certificate or key file, or a handshake
    /// (an untrusted certificate, a peer that does not speak TLS).
    #[error("TLS: {0}")]
    Tls(String),
    /// Preprocessed material could not be kept on disk or read back (a
    /// [`crate::spool::Spool`] in `dir`: full, not writable, not mappable).
    #[error("preprocessed material on disk (in {}): {source}", dir.display())]
    Spool {
        /// The spool's directory.
        dir: std::path::PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A caller passed arguments the engine cannot use.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Error::Closed,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            _ => Error::Io(e),
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
