//! A member's unit of work, as files: resume the member from its
//! checkpoint, train it `steps` steps, evaluate it on validation split A,
//! export the plan it would be (range-checked) and write the new
//! checkpoint and the metrics. The controller (the search) writes a
//! [`Unit`] (`unit.json`) and the input checkpoint, an executor runs the
//! unit — in this process, in a child process (`delphi-plan step --unit
//! …`) or as a task on a Ray cluster — and the controller reads the
//! [`UnitResult`] (`result.json`) back, prices it with the cost model and
//! records it. Everything a unit reads and writes lies in its own folder,
//! so any machine that sees the run folder at the same path and has the
//! binaries can run it.
//!
//! A unit is a pure function of its input checkpoint and its
//! configuration: the data split, the members' data order and every draw
//! are seeded, so a retried unit (its worker killed) writes what the first
//! attempt would have, and the same seeds give the same fronts whatever
//! runs the units and however many at once (`planner/tests/executor.rs`).
//! The output checkpoint is written to a temporary folder and renamed, the
//! result last, so a killed worker leaves no half of either.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use delphi_net::window::WindowChoice;
use delphi_net::{Network, Placement, WeightStorage};
use delphi_train::data::Dataset;
use delphi_train::error::TrainError;
use delphi_train::train::Trainer;

use crate::config::{PlanConfig, ReluBitsMode};
use crate::error::{file_err, PlanError, Result};
use crate::windows::{choose_relu_windows, exact_relu_windows};

/// The format tag of `unit.json` and `result.json`.
pub const UNIT_FORMAT: &str = "delphi-plan unit";
/// The version of [`Unit`] and [`UnitResult`] written now.
pub const UNIT_VERSION: u32 = 1;
/// The largest `unit.json` or `result.json` read (they are a few KiB; the
/// configuration dominates).
const MAX_UNIT_FILE: u64 = 4 << 20;

/// One unit of work: what `unit.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Always [`UNIT_FORMAT`].
    pub format: String,
    /// Always [`UNIT_VERSION`].
    pub version: u32,
    /// The search's configuration (data, split, truncations, ReLU circuits).
    pub config: PlanConfig,
    /// The member (its index in the population).
    pub member: usize,
    /// Training steps to take.
    pub steps: usize,
}

/// Why a member's training stopped: its loss was no longer finite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diverged {
    /// The loss, as printed.
    pub loss: String,
    /// Epoch of the run.
    pub epoch: usize,
    /// Step of the epoch.
    pub step: usize,
}

/// What a unit measured: what `result.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitResult {
    /// Always [`UNIT_FORMAT`].
    pub format: String,
    /// Always [`UNIT_VERSION`].
    pub version: u32,
    /// The member.
    pub member: usize,
    /// Steps charged to the budget (those taken; all that were asked when
    /// training diverged).
    pub charged: usize,
    /// Set when the training diverged.
    pub diverged: Option<Diverged>,
    /// What the evaluation found.
    #[serde(flatten)]
    pub found: Found,
    /// Whether the plan was written (`plan.json` in the unit's folder).
    pub plan: bool,
    /// Seconds the unit took (training and evaluation).
    pub seconds: f64,
    /// The machine that ran it.
    pub host: String,
}

/// The files of a unit, all in one folder.
#[derive(Clone, Debug)]
pub struct UnitDir(pub PathBuf);

impl UnitDir {
    /// `unit.json`.
    pub fn unit(&self) -> PathBuf {
        self.0.join("unit.json")
    }
    /// The checkpoint the unit resumes from.
    pub fn input(&self) -> PathBuf {
        self.0.join("in")
    }
    /// The checkpoint the unit writes.
    pub fn output(&self) -> PathBuf {
        self.0.join("out")
    }
    /// `result.json`.
    pub fn result(&self) -> PathBuf {
        self.0.join("result.json")
    }
    /// The plan the member would be (`plan.json` + weights beside it).
    pub fn plan(&self) -> PathBuf {
        self.0.join("plan.json")
    }
    /// One line per attempt when it starts (`start HOST pid N`), and one
    /// per failed attempt, written by the executor (`failed WHY`).
    pub fn attempts(&self) -> PathBuf {
        self.0.join("attempts.log")
    }
    /// A worker process's standard error (local executor).
    pub fn log(&self) -> PathBuf {
        self.0.join("worker.log")
    }

    /// Attempts made so far: those that started, and at least one more
    /// than those that failed (a worker killed before it wrote its line).
    pub fn attempt_count(&self) -> usize {
        let t = std::fs::read_to_string(self.attempts()).unwrap_or_default();
        let started = t.lines().filter(|l| l.starts_with("start ")).count();
        let failed = t.lines().filter(|l| l.starts_with("failed ")).count();
        started.max(failed + 1)
    }

    /// Notes a failed attempt (the executor, not the worker, writes it).
    pub fn note_failure(&self, why: &str) {
        if let Ok(mut f) =
            std::fs::OpenOptions::new().create(true).append(true).open(self.attempts())
        {
            let first = why.lines().next().unwrap_or("");
            let _ = writeln!(f, "failed {first}");
        }
    }

    /// Writes `unit` and the input checkpoint `tr` (the folder made afresh).
    pub fn write(&self, unit: &Unit, tr: &Trainer) -> Result<()> {
        if self.0.exists() {
            std::fs::remove_dir_all(&self.0).map_err(|e| file_err(&self.0, e))?;
        }
        std::fs::create_dir_all(&self.0).map_err(|e| file_err(&self.0, e))?;
        tr.save_checkpoint(&self.input())?;
        write_json(&self.unit(), unit)
    }

    /// Reads `unit.json` (its format and version first, so a unit of
    /// another build is named as such).
    pub fn read_unit(&self) -> Result<Unit> {
        let v: serde_json::Value = read_json(&self.unit())?;
        let (format, version) = (v.get("format"), v.get("version"));
        if format.and_then(|f| f.as_str()) != Some(UNIT_FORMAT)
            || version.and_then(|v| v.as_u64()) != Some(u64::from(UNIT_VERSION))
        {
            let shown = |x: Option<&serde_json::Value>| x.map_or("none".into(), |x| x.to_string());
            return Err(file_err(
                &self.unit(),
                format!(
                    "format {} version {} (this build reads {UNIT_FORMAT:?} version \
                     {UNIT_VERSION}): are the workers' binaries the controller's?",
                    shown(format),
                    shown(version)
                ),
            ));
        }
        serde_json::from_value(v).map_err(|e| file_err(&self.unit(), e))
    }

    /// Reads `result.json`, checking that it answers this unit.
    pub fn read_result(&self, member: usize) -> Result<UnitResult> {
        let r: UnitResult = read_json(&self.result())?;
        if r.format != UNIT_FORMAT || r.version != UNIT_VERSION || r.member != member {
            return Err(file_err(
                &self.result(),
                format!(
                    "not the result of member {member} (format {:?} version {}, member {})",
                    r.format, r.version, r.member
                ),
            ));
        }
        Ok(r)
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| file_err(path, e))?;
    std::fs::write(&tmp, bytes).map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    let mut text = String::new();
    f.take(MAX_UNIT_FILE + 1).read_to_string(&mut text).map_err(|e| file_err(path, e))?;
    if text.len() as u64 > MAX_UNIT_FILE {
        return Err(file_err(path, format!("larger than {MAX_UNIT_FILE} bytes")));
    }
    serde_json::from_str(&text).map_err(|e| file_err(path, e))
}

/// This machine's name (for the attempt log and results).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the unit in `dir` here: resumes the member, trains, re-estimates
/// its batch-norm statistics ([`PlanConfig::bn_recalibration`]), evaluates,
/// writes the checkpoint, the plan (if any) and the result. `data` must be
/// the configuration's ([`crate::search::load_data`]).
pub fn run(dir: &UnitDir, data: &Dataset, device: &burn::tensor::Device) -> Result<UnitResult> {
    let started = Instant::now();
    let unit = dir.read_unit()?;
    {
        let path = dir.attempts();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| file_err(&path, e))?;
        writeln!(f, "start {} pid {}", host(), std::process::id())
            .map_err(|e| file_err(&path, e))?;
    }
    let _ = std::fs::remove_file(dir.result());
    let mut tr = Trainer::load_checkpoint(&dir.input(), device)?;
    let (charged, diverged) = match tr.train_steps(data, unit.steps, true) {
        Ok(taken) => (taken, None),
        Err(TrainError::Diverged { loss, epoch, step, spent }) => {
            (spent, Some(Diverged { loss: loss.to_string(), epoch, step }))
        }
        Err(e) => return Err(e.into()),
    };
    if diverged.is_none() {
        tr.recalibrate_batch_norm(&data.train, unit.config.bn_recalibration)?;
    }
    let m = measure(&unit.config, data, &tr)?;
    let plan = match &m.plan {
        Some((net, windows)) => {
            let mut net = net.clone();
            if let Some(w) = windows {
                net.metadata.relu_bits = Some(w.clone());
            }
            net.save(&dir.plan(), WeightStorage::Sidecar)?;
            true
        }
        None => false,
    };
    tr.save_checkpoint(&dir.output())?;
    let r = UnitResult {
        format: UNIT_FORMAT.into(),
        version: UNIT_VERSION,
        member: unit.member,
        charged,
        diverged,
        found: m.found,
        plan,
        seconds: started.elapsed().as_secs_f64(),
        host: host(),
    };
    write_json(&dir.result(), &r)?;
    Ok(r)
}

/// A member's plan: its network as exported, and its ReLU circuits' choice.
pub(crate) type PlanNet = (Network, Option<WindowChoice>);

/// What evaluating a trained member finds (besides its plan).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Found {
    /// Whether every swap had finished (the network is what the placement says).
    pub settled: bool,
    /// Validation accuracy (split A, float).
    pub valid_accuracy: f64,
    /// Placement after training.
    pub placement: Placement,
    /// Per activation layer, the channel mask (per-channel placement).
    pub masks: Vec<Option<Vec<bool>>>,
    /// Settled members: whether the plan is proven inside the protocol's
    /// range (`None`: not settled, not checked).
    pub provable: Option<bool>,
    /// Why the member is no plan, when it is not.
    pub why: Option<String>,
}

/// What evaluating a trained member finds, with the plan it would be.
pub(crate) struct Measured {
    pub found: Found,
    pub plan: Option<PlanNet>,
}

/// Evaluates a trained member: settled or not, validation accuracy,
/// placement and masks, and — settled — the plan it would be, or why it
/// is none.
pub(crate) fn measure(c: &PlanConfig, data: &Dataset, tr: &Trainer) -> Result<Measured> {
    let progress = tr.progress(&data.train);
    let settled = tr.modes_at(progress).iter().all(|m| {
        !matches!(
            m,
            delphi_train::model::ActMode::Blend { .. } | delphi_train::model::ActMode::Gated
        )
    });
    let valid_accuracy = tr.accuracy(&data.valid);
    let placement = Placement::new(tr.placement());
    let masks = tr.channel_masks();
    let (plan, why) = if settled { plan_network(c, data, tr)? } else { (None, None) };
    Ok(Measured {
        found: Found {
            settled,
            valid_accuracy,
            placement,
            masks,
            provable: settled.then_some(why.is_none()),
            why,
        },
        plan,
    })
}

/// The plan a trained member would be — exported, batch norm folded, the
/// run's truncations and ReLU circuits, activation ranges recorded on
/// training images — and why it is no plan, if it is not: the engine's
/// range check refuses it, or it cannot even be exported (a member whose
/// training diverged holds non-finite parameters; it is no plan, and the
/// search goes on).
fn plan_network(
    c: &PlanConfig,
    data: &Dataset,
    tr: &Trainer,
) -> Result<(Option<PlanNet>, Option<String>)> {
    let mut net = match tr.export() {
        Ok(n) => n,
        Err(e) => return Ok((None, Some(format!("the trained network cannot be exported: {e}")))),
    };
    net.fixed_point.truncation = c.truncation;
    let windows = match c.relu_bits {
        ReluBitsMode::ReducedLeaky => Some(choose_relu_windows(&mut net, data, &|_| {})?),
        ReluBitsMode::Auto => Some(exact_relu_windows(&mut net)?),
        ReluBitsMode::Full => None,
    };
    delphi_train::evaluate::record_ranges(&mut net, &data.train, 64)?;
    let prog = delphi_net::FixedProgram::lower(&net)?;
    match delphi_net::range::analyse_network(&net, &prog)?.check() {
        Ok(()) => Ok((Some((net, windows)), None)),
        Err(why) => Ok((None, Some(why.to_string()))),
    }
}

/// Loads the plan a unit wrote, with its ReLU circuits' choice.
pub(crate) fn read_plan(dir: &UnitDir) -> Result<PlanNet> {
    let mut net = Network::load(&dir.plan())?;
    let windows = net.metadata.relu_bits.take();
    Ok((net, windows))
}

/// `delphi-plan step --unit DIR`: loads the unit's data and runs it here.
pub fn run_command(dir: &Path) -> Result<UnitResult> {
    let d = UnitDir(dir.to_path_buf());
    let unit = d.read_unit()?;
    let data = crate::search::load_data(&unit.config)?;
    let device = crate::search::device(&unit.config)?;
    run(&d, &data, &device).map_err(|e| match e {
        PlanError::Config(m) => PlanError::Config(format!("unit {}: {m}", dir.display())),
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_starts_and_failures_written_by_the_executor() {
        let dir = std::env::temp_dir().join(format!("delphi-unit-attempts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = UnitDir(dir.clone());
        assert_eq!(d.attempt_count(), 1, "no file: the first attempt");
        // A worker killed before it wrote its line: the failure still counts.
        d.note_failure("signal: 9 (SIGKILL)\nmore");
        assert_eq!(d.attempt_count(), 2);
        std::fs::write(d.attempts(), "start h pid 1\nfailed signal 9\nstart h pid 2\n").unwrap();
        assert_eq!(d.attempt_count(), 2);
        let text = std::fs::read_to_string(d.attempts()).unwrap();
        assert!(!text.contains("more"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
