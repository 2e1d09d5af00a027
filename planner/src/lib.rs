//! The DELPHI planner: searches for the ReLU/quadratic placement that is
//! cheapest under the real protocol (as the cost model predicts) while
//! meeting an accuracy threshold, starting from a trained all-ReLU network —
//! the provider's own or one trained here. Our population-based search,
//! DELPHI's published planner and a greedy rule share one code path
//! ([`search::Search`]) and one budget, and `delphi-plan bench` compares
//! them.

pub mod bench;
pub mod config;
pub mod engine;
pub mod error;
pub mod executor;
pub mod measure;
pub mod policy;
pub mod pricing;
pub mod report;
pub mod search;
pub mod stats;
pub mod strategy;
pub mod unit;
pub mod windows;

pub use error::{PlanError, Result};
