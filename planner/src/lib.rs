//! The DELPHI planner: population-based training over ReLU/quadratic
//! placements, scored by the cost model's predicted cost under the real
//! protocol, with the all-ReLU network as starting point and teacher.

pub mod config;
pub mod report;
pub mod search;
