//! Measurements of a finished plan: its test accuracy (float and the
//! protocol's fixed point) and, through `delphi verify --compare-cost`, its
//! real cost beside the predicted one.

use std::path::Path;

use delphi_net::{Network, Placement};
use delphi_train::data::Dataset;
use delphi_train::train::{fixed_accuracy, TrainConfig, Trainer};

use crate::config::PlanConfig;
use crate::search::{delphi_command, device, PlanError, Result};

/// Test accuracy of a plan: (float, fixed point).
pub fn test_accuracy(c: &PlanConfig, plan: &Path, data: &Dataset) -> Result<(f64, f64)> {
    let net = Network::load(plan)?;
    let mut tc = TrainConfig::new(c.dataset);
    tc.init = Some(plan.to_path_buf());
    tc.activations = Some(Placement::of(&net).to_string());
    let tr = Trainer::new(tc, &device(c)?)?;
    let float = tr.accuracy(&data.test);
    let fixed = fixed_accuracy(&net, &data.test)?;
    Ok((float, fixed))
}

/// Runs the plan under the real two-party protocol (`delphi verify --json
/// --compare-cost`) and returns `{predicted, measured, same_class}`.
pub fn verify(plan: &Path, cost_model: &Path) -> Result<serde_json::Value> {
    let o = delphi_command()
        .args(["verify", "--json", "--compare-cost", "--plan"])
        .arg(plan)
        .arg("--cost-model")
        .arg(cost_model)
        .output()
        .map_err(|e| {
            PlanError::Config(format!(
                "running `delphi verify` ({e}); build it with cargo build --release -p delphi-cli"
            ))
        })?;
    if !o.status.success() {
        return Err(PlanError::Config(format!(
            "delphi verify failed on {}: {}",
            plan.display(),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .map_err(|e| PlanError::Config(format!("delphi verify printed no JSON: {e}")))?;
    Ok(serde_json::json!({
        "predicted": v["predicted"],
        "measured": v["measured"],
        "same_class": v["same_class"],
    }))
}
