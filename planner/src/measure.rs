//! Measurements of a finished plan: its test accuracy (float and the
//! protocol's fixed point). Its real cost beside the predicted one comes
//! from [`crate::engine::verify`].

use std::path::Path;

use delphi_net::{Network, Placement};
use delphi_train::data::Dataset;
use delphi_train::evaluate::fixed_accuracy;
use delphi_train::{TrainConfig, Trainer};

use crate::config::PlanConfig;
use crate::error::Result;
use crate::search::device;

/// Test accuracy of a plan: (float, fixed point).
pub fn test_accuracy(c: &PlanConfig, plan: &Path, data: &Dataset) -> Result<(f64, f64)> {
    let net = Network::load(plan)?;
    let mut tc = TrainConfig::new(c.dataset);
    tc.init = Some(plan.to_path_buf());
    tc.placement = Some(Placement::of(&net));
    let tr = Trainer::new(tc, &device(c)?)?;
    let float = tr.accuracy(&data.test);
    let fixed = fixed_accuracy(&net, &data.test)?;
    Ok((float, fixed))
}
