//! Errors of the training crate and its `Result` alias.

use std::path::PathBuf;

use crate::model::ModelError;

/// Errors of the training code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Reading the dataset failed.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Building or exporting the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The network description is unusable.
    #[error(transparent)]
    Net(#[from] delphi_net::NetError),
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The network does not fit the dataset.
    #[error("{arch} does not fit the data: the network {network}, but {dataset}")]
    Mismatch {
        /// The architecture as given.
        arch: String,
        /// The network's input and output.
        network: String,
        /// The dataset's images and classes.
        dataset: String,
    },
    /// Training diverged: the loss stopped being a finite number.
    #[error(
        "training diverged (loss {loss}) at epoch {epoch} step {step}; lower the learning rate \
         (or clip gradients)"
    )]
    Diverged {
        /// The loss of the step that diverged.
        loss: f64,
        /// The epoch (from 1).
        epoch: usize,
        /// The step inside the epoch (from 0).
        step: usize,
        /// Steps of the run the call used up: those taken and the rest it
        /// was given (to the run's end at most), over which the run has
        /// moved on.
        spent: usize,
    },
    /// A worker thread of the trainer stopped (it panicked or hung up).
    #[error("{0} stopped unexpectedly")]
    Worker(&'static str),
    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The cause of a checkpoint error: an I/O or parse error kept as it is,
/// or words where there is none.
pub(crate) struct Cause(pub(crate) Box<dyn std::error::Error + Send + Sync>);

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for Cause {
    fn from(e: E) -> Self {
        Cause(e.into())
    }
}

/// Result alias of the training code.
pub type Result<T> = std::result::Result<T, TrainError>;
