//! Errors of the planner and its `Result` alias.

use std::path::{Path, PathBuf};

/// Errors of the planner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Training failed.
    #[error(transparent)]
    Train(#[from] delphi_train::TrainError),
    /// Data could not be read.
    #[error(transparent)]
    Data(#[from] delphi_train::data::DataError),
    /// The cost model failed.
    #[error(transparent)]
    Cost(#[from] delphi_cost::CostError),
    /// A network description problem.
    #[error(transparent)]
    Net(#[from] delphi_net::NetError),
    /// Files of the run.
    #[error("file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bad setting.
    #[error("{0}")]
    Config(String),
}

/// Result alias of the planner.
pub type Result<T> = std::result::Result<T, PlanError>;

/// A [`PlanError::File`] for `path`.
pub(crate) fn file_err(
    path: &Path,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> PlanError {
    PlanError::File { path: path.to_path_buf(), source: e.into() }
}
