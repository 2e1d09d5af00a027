//! The DELPHI cost model: exact traffic formulas ([`bytes`]) and fast
//! per-plan predictions ([`model::CostModel::predict`]) for any link
//! (bandwidth, RTT), from primitive costs measured on this machine by the
//! `delphi-cost-calibrate` crate (`delphi cost calibrate`). The planner
//! scores candidates with it.
//!
//! This crate links no homomorphic-encryption library: the planner, which
//! also links polars, cannot link SEAL (both bundle zstd, and the linker
//! refuses the duplicate symbols).

pub mod bytes;
pub mod error;
pub mod link;
pub mod model;

pub use error::{CostError, Result};
pub use link::{Bandwidth, Link, Rtt};
pub use model::{Cost, CostModel, Prediction};
