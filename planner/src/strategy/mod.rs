//! The search strategies, all driven through [`crate::search::Search`] with
//! the same base network, cost model and training budget:
//!
//! * [`pbt`] — ours: population-based training whose genome is the
//!   placement and the hyperparameters, scored by the predicted cost;
//! * [`delphi`] — DELPHI's published planner: one population per count of
//!   quadratic layers, random placements, PBT over learning rate and
//!   momentum, fitness = accuracy × (1 + replaced ReLUs / all ReLUs), the
//!   threshold applied afterwards;
//! * [`greedy`] — a simple rule: from all-ReLU, repeatedly make quadratic
//!   the layer that loses the least accuracy per unit of predicted saving.

pub mod delphi;
pub mod greedy;
pub mod pbt;
