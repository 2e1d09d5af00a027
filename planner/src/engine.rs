//! The planner's only door to the protocol engine: the `delphi` binary,
//! run as a child process for a quick calibration and for `delphi verify`.
//!
//! The planner does not link the engine itself (SEAL and polars both bundle
//! zstd and cannot share one binary). `delphi` is looked for next to the
//! running executable, then on the PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use delphi_cost::Cost;

use crate::error::{PlanError, Result};

/// The `delphi` command: next to this executable, else on the PATH.
fn delphi_command() -> Command {
    let local =
        std::env::current_exe().ok().map(|p| p.with_file_name("delphi")).filter(|p| p.is_file());
    Command::new(local.unwrap_or_else(|| PathBuf::from("delphi")))
}

/// What running `delphi` failed at, with how to get it.
fn not_runnable(what: &str, e: std::io::Error) -> PlanError {
    PlanError::Config(format!(
        "running `delphi {what}` ({e}); build it with `cargo build --release -p delphi-cli`"
    ))
}

/// Calibrates a quick cost model into `file` (`delphi cost calibrate --quick`).
pub fn calibrate_quick(file: &Path) -> Result<()> {
    let status = delphi_command()
        .args(["cost", "calibrate", "--quick", "--out"])
        .arg(file)
        .status()
        .map_err(|e| not_runnable("cost calibrate", e))?;
    if !status.success() {
        return Err(PlanError::Config(format!("`delphi cost calibrate` failed ({status})")));
    }
    Ok(())
}

/// A plan run under the real two-party protocol: the cost model's
/// prediction beside the measurement (means over the inferences).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// What the cost model predicted.
    pub predicted: Cost,
    /// What the run measured.
    pub measured: Cost,
    /// Inferences whose secure class equals the reference's.
    pub same_class: usize,
}

/// Runs `plan` under the real protocol (`delphi verify --json
/// --compare-cost`), priced with `cost_model`.
pub fn verify(plan: &Path, cost_model: &Path) -> Result<VerifyReport> {
    let o = delphi_command()
        .args(["verify", "--json", "--compare-cost", "--plan"])
        .arg(plan)
        .arg("--cost-model")
        .arg(cost_model)
        .output()
        .map_err(|e| not_runnable("verify", e))?;
    if !o.status.success() {
        return Err(PlanError::Config(format!(
            "delphi verify failed on {}: {}",
            plan.display(),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| {
        PlanError::Config(format!("delphi verify printed no report for {} ({e})", plan.display()))
    })
}
