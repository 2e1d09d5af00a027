//! Measurements of a finished plan: its accuracy on a split (float, and the
//! protocol's fixed point image by image). Its real cost beside the
//! predicted one comes from [`crate::engine::verify`].

use std::path::Path;

use delphi_net::{Network, Placement};
use delphi_train::data::{Dataset, Split};
use delphi_train::evaluate::fixed_correct;
use delphi_train::{TrainConfig, Trainer};

use crate::config::PlanConfig;
use crate::error::Result;
use crate::search::device;

/// Test accuracy of a plan: (float, fixed point).
pub fn test_accuracy(c: &PlanConfig, plan: &Path, data: &Dataset) -> Result<(f64, f64)> {
    let float = float_accuracy(c, plan, &data.test)?;
    let correct = fixed_correct(&Network::load(plan)?, &data.test)?;
    Ok((float, share(&correct)))
}

/// Float accuracy of a plan on `split` (Burn, inference mode).
pub fn float_accuracy(c: &PlanConfig, plan: &Path, split: &Split) -> Result<f64> {
    let net = Network::load(plan)?;
    let mut tc = TrainConfig::new(c.dataset.clone());
    tc.init = Some(plan.to_path_buf());
    tc.placement = Some(Placement::of(&net));
    let tr = Trainer::new(tc, &device(c)?)?;
    Ok(tr.accuracy(split))
}

/// Per image of `split`, whether the plan's fixed-point program (what the
/// protocol computes) classifies it correctly.
pub fn fixed_correct_images(plan: &Path, split: &Split) -> Result<Vec<bool>> {
    Ok(fixed_correct(&Network::load(plan)?, split)?)
}

/// The fraction of `true`.
pub fn share(v: &[bool]) -> f64 {
    v.iter().filter(|&&x| x).count() as f64 / v.len().max(1) as f64
}
