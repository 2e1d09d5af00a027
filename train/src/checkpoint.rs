//! Checkpoints of a training run: the model (a Burn record), the optimizer
//! state and a typed [`CheckpointState`] (configuration, position, history,
//! activation plan, the template description), written to a temporary
//! folder and renamed into place so that a killed process leaves either
//! the old checkpoint or the new one, never half of one.
//!
//! Layout: `<dir>/current/{model.mpk, optim.mpk, state.json}` (Burn's
//! recorder names the first two); `<dir>/previous` exists only for the
//! moment of the swap.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use delphi_net::Network;

use crate::config::TrainConfig;
use crate::error::{Cause, Result, TrainError};
use crate::model::{ActMode, Net};
use crate::train::{build_optimizer, EpochMetrics, Trainer};

/// The format tag written into every checkpoint's `state.json`.
pub const CHECKPOINT_FORMAT: &str = "delphi-train checkpoint";
/// The version of [`CheckpointState`] written now.
pub const CHECKPOINT_VERSION: u32 = 1;

/// Everything of a run's state except the model and optimizer tensors:
/// what `state.json` holds. Fields added after version 1 was first written
/// are optional, so older checkpoints still load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Always [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// Always [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// The run's configuration.
    pub config: TrainConfig,
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed in the current epoch.
    pub step_in_epoch: usize,
    /// Steps completed in the whole run (absent in the first checkpoints,
    /// which counted steps per epoch only).
    #[serde(default)]
    pub steps_done: Option<usize>,
    /// The current epoch's running sums: loss × images, correct, images,
    /// seconds (a diverged run's loss sum is NaN, written as null).
    #[serde(default, deserialize_with = "crate::train::running_nan_if_null")]
    pub running: (f64, usize, usize, f64),
    /// Per-epoch figures so far.
    pub history: Vec<EpochMetrics>,
    /// Per activation layer: where it blends into its quadratic.
    #[serde(default)]
    pub quad_from: Option<Vec<Option<(f32, f32)>>>,
    /// The per-channel gates' mode.
    #[serde(default)]
    pub gate_mode: Option<ActMode>,
    /// λ of the gates' penalty.
    #[serde(default)]
    pub penalty: Option<f32>,
    /// The description the model was built from.
    pub template: Network,
}

impl Trainer {
    /// Writes a checkpoint into `dir`: the model and optimizer records
    /// (Burn's files `model.*` and `optim.*`) and `state.json` (a
    /// [`CheckpointState`]), all in `dir/current`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let err = |e: Cause| TrainError::Checkpoint { path: dir.to_path_buf(), source: e.0 };
        std::fs::create_dir_all(dir).map_err(|e| err(Cause::from(e)))?;
        let tmp = dir.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| err(Cause::from(e)))?;
        self.model
            .clone()
            .save_file(tmp.join("model"))
            .map_err(|e| err(Cause::from(format!("model: {e:?}"))))?;
        self.optim
            .save(tmp.join("optim"))
            .map_err(|e| err(Cause::from(format!("optimizer: {e:?}"))))?;
        let state = CheckpointState {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            config: self.config.clone(),
            epoch: self.epoch,
            step_in_epoch: self.step_in_epoch,
            steps_done: Some(self.steps_done),
            running: self.running,
            history: self.history.clone(),
            quad_from: Some(self.quad_from.clone()),
            gate_mode: self.gate_mode,
            penalty: Some(self.penalty),
            template: self.template.clone(),
        };
        std::fs::write(
            tmp.join("state.json"),
            serde_json::to_vec(&state).map_err(|e| err(Cause::from(e)))?,
        )
        .map_err(|e| err(Cause::from(e)))?;
        let done = dir.join("current");
        let old = dir.join("previous");
        let _ = std::fs::remove_dir_all(&old);
        if done.exists() {
            std::fs::rename(&done, &old).map_err(|e| err(Cause::from(e)))?;
        }
        std::fs::rename(&tmp, &done).map_err(|e| err(Cause::from(e)))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Whether `dir` holds a checkpoint.
    pub fn has_checkpoint(dir: &Path) -> bool {
        dir.join("current").join("state.json").is_file()
    }

    /// Resumes from a checkpoint written by [`Trainer::save_checkpoint`].
    pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<Trainer> {
        let cur = dir.join("current");
        let err = |e: Cause| TrainError::Checkpoint { path: cur.clone(), source: e.0 };
        let text =
            std::fs::read_to_string(cur.join("state.json")).map_err(|e| err(Cause::from(e)))?;
        let state: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| err(Cause::from(format!("state.json: {e}"))))?;
        if state.format != CHECKPOINT_FORMAT || state.version != CHECKPOINT_VERSION {
            return Err(err(Cause::from(format!(
                "unknown checkpoint format {:?} version {} (this build reads {CHECKPOINT_FORMAT:?} \
                 version {CHECKPOINT_VERSION})",
                state.format, state.version
            ))));
        }
        let mut tr = Trainer::new(TrainConfig { init: None, ..state.config.clone() }, device)?;
        tr.config = state.config;
        let template = state.template;
        tr.model = Net::from_description(&template, true, &tr.device)?;
        if tr.config.gates.is_some() {
            tr.model.enable_gates(&template.validate()?, &tr.device);
        }
        if let Some(n) = &template.metadata.input_normalization {
            tr.norm = n.clone();
        }
        tr.template = template;
        let modes = tr.modes_at(0.0);
        tr.model.set_modes(&modes)?;
        let model = std::mem::replace(
            &mut tr.model,
            Net { layers: Vec::new(), input: tr.template.input, largest_output: 0 },
        );
        tr.model = model
            .try_load_file(cur.join("model"))
            .map_err(|e| err(Cause::from(format!("model: {e:?}"))))?;
        let optim = std::mem::replace(&mut tr.optim, build_optimizer(&tr.config));
        tr.optim = optim
            .load(cur.join("optim"))
            .map_err(|e| err(Cause::from(format!("optimizer: {e:?}"))))?;
        tr.epoch = state.epoch;
        tr.step_in_epoch = state.step_in_epoch;
        // Checkpoints of earlier versions count steps per epoch only.
        match state.steps_done {
            Some(v) => tr.steps_done = v,
            None => {
                tr.steps_done = 0;
                tr.legacy_position = true;
            }
        }
        tr.running = state.running;
        tr.history = state.history;
        if state.gate_mode.is_some() {
            tr.gate_mode = state.gate_mode;
        }
        if let Some(p) = state.penalty {
            tr.penalty = p;
        }
        if let Some(q) = state.quad_from {
            tr.quad_from = q;
        }
        let modes = tr.modes_at(tr.progress_fraction());
        tr.model.set_modes(&modes)?;
        Ok(tr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_without_the_later_fields_still_reads() {
        // The first checkpoints had no steps_done, gate_mode, penalty or quad_from.
        let template = delphi_net::builtin::build("small-cnn", 10, 1).expect("built-in");
        let mut v = serde_json::to_value(CheckpointState {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            config: TrainConfig::new(crate::data::DatasetKind::FashionMnist),
            epoch: 2,
            step_in_epoch: 5,
            steps_done: None,
            running: (1.0, 2, 3, 4.0),
            history: Vec::new(),
            quad_from: None,
            gate_mode: None,
            penalty: None,
            template,
        })
        .expect("serialises");
        let obj = v.as_object_mut().expect("an object");
        for k in ["steps_done", "gate_mode", "penalty", "quad_from"] {
            obj.remove(k);
        }
        let back: CheckpointState = serde_json::from_value(v).expect("reads");
        assert_eq!((back.epoch, back.step_in_epoch, back.steps_done), (2, 5, None));
        assert_eq!(back.running, (1.0, 2, 3, 4.0));
    }

    #[test]
    fn a_diverged_runs_state_reads_back_with_its_nans() {
        // serde_json writes NaN as null; a diverged member's checkpoint must
        // still load (the search then counts it as no plan and goes on).
        let template = delphi_net::builtin::build("small-cnn", 10, 1).expect("built-in");
        let nan_epoch = EpochMetrics {
            epoch: 1,
            loss: f64::NAN,
            train_accuracy: 0.1,
            valid_accuracy: f64::NAN,
            images_per_s: 100.0,
            seconds: 1.0,
        };
        let text = serde_json::to_string(&CheckpointState {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            config: TrainConfig::new(crate::data::DatasetKind::FashionMnist),
            epoch: 1,
            step_in_epoch: 31,
            steps_done: Some(188),
            running: (f64::NAN, 1647, 1984, 2.9),
            history: vec![nan_epoch],
            quad_from: None,
            gate_mode: None,
            penalty: None,
            template,
        })
        .expect("serialises");
        assert!(text.contains("\"running\":[null,1647,1984,2.9]"), "NaN is written as null");
        let back: CheckpointState = serde_json::from_str(&text).expect("reads");
        assert!(back.running.0.is_nan());
        assert_eq!((back.running.1, back.running.2, back.running.3), (1647, 1984, 2.9));
        assert!(back.history[0].loss.is_nan() && back.history[0].valid_accuracy.is_nan());
    }
}
