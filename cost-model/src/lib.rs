//! The DELPHI cost model: primitive costs measured from the real protocol
//! engine on this machine ([`calibrate`]), exact traffic formulas
//! ([`bytes`]) and fast per-plan predictions ([`model::CostModel::predict`])
//! for any link (bandwidth, RTT). The planner scores candidates with it.

pub mod bytes;
pub mod calibrate;
pub mod model;

pub use model::{Cost, CostError, CostModel, Link, Prediction};
