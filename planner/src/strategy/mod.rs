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

use crate::config::{PlanConfig, Strategy};
use crate::error::Result;
use crate::search::{Outcome, Progress, Search};

/// Runs (or resumes) the search the configuration describes, with its
/// strategy, and writes its outcome.
pub fn run(c: &PlanConfig, quiet: bool, say: &dyn Fn(&str)) -> Result<Outcome> {
    let mut s = Search::open(c, quiet, say)?;
    if matches!(s.st.progress, Progress::Done) {
        s.say("the search had finished; rewriting its outputs");
        return s.finish();
    }
    if s.resumed {
        let at = s.st.evaluations.len();
        s.say(&format!(
            "resuming after {at} evaluations ({} of {} training steps used)",
            s.st.steps, s.budget
        ));
    }
    if s.st.evaluations.is_empty() {
        s.consider_base()?;
    }
    match c.strategy {
        Strategy::Pbt => pbt::run(&mut s)?,
        Strategy::Delphi => delphi::run(&mut s)?,
        Strategy::Greedy => greedy::run(&mut s)?,
    }
    s.finish()
}
