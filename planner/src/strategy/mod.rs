//! The search strategies, all driven through [`crate::search::Search`] with
//! the same base network, cost model and training budget:
//!
//! * [`pbt`] — ours: population-based training whose genome is the
//!   placement and the hyperparameters, ordered by non-dominated sorting
//!   in (accuracy, predicted cost): one run makes a front for every
//!   threshold;
//! * [`delphi`] — DELPHI's planner as its code runs: one population per
//!   count of quadratic layers, descending until the threshold is met,
//!   random placements exchanged gradually, PBT over learning rate and
//!   momentum, fitness = accuracy × (1 + replaced ReLUs / all ReLUs);
//! * [`greedy`] — a simple rule: from all-ReLU, repeatedly make quadratic
//!   the layer that loses the least accuracy per unit of predicted saving;
//! * [`control`] — the two controls, no search: the all-ReLU base
//!   fine-tuned, and every layer quadratic with our recipe.

pub mod control;
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
        Strategy::ReluControl => control::run(&mut s, false)?,
        Strategy::QuadControl => control::run(&mut s, true)?,
    }
    s.finish()
}
