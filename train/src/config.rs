//! What defines a training run: [`TrainConfig`] and its parts (optimizer,
//! schedule, distillation, the gradual swap, per-channel gates), checked
//! once when a run starts, and [`config_changes`] to say how two differ.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use delphi_net::Placement;

use crate::data::DatasetKind;
use crate::error::{Result, TrainError};

/// Which optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with (heavy-ball) momentum.
    Sgd,
    /// Adam.
    Adam,
}

/// Learning-rate schedule over the whole run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// Cosine decay from the rate to 0.
    Cosine,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// Factor.
        gamma: f64,
    },
}

/// Knowledge distillation from a teacher network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Distill {
    /// The teacher's description (with weights).
    pub teacher: PathBuf,
    /// Weight of the distillation term (the label term gets 1 − weight).
    pub weight: f32,
    /// Softmax temperature.
    pub temperature: f32,
}

/// The gradual swap: quadratic layers start as ReLU and blend into their
/// quadratic between two points of the run (fractions of all steps).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Swap {
    /// Where the blend starts (t = 1, pure ReLU).
    pub start: f32,
    /// Where it ends (t = 0, pure quadratic).
    pub end: f32,
}

/// Per-channel placement learned during training (the planner's
/// `--granularity channel`): SNL's relaxed mask with an L1 term, each
/// channel weighted by what turning it quadratic saves under the cost model.
///
/// Every activation layer gets per-channel gates g ∈ [0, 1] (starting at
/// ReLU). The loss gains λ·Σ_l Σ_c (saving_l / relu_cost)·g_lc; every
/// [`GATE_CHECK_STEPS`] steps the binary mask (g > ½) is priced with the
/// per-channel savings, and λ grows while the price is above `budget` — by
/// a factor that spans [`GATE_RANGE`] over the first 80 % of the time
/// before `freeze_by`, whatever the run's length. Once it is not, the mask
/// freezes (each gate snaps to ReLU or quadratic) and the rest of the run
/// fine-tunes with it (distilling from the teacher, if any). If the mask
/// has not met the budget by `freeze_by`, the channels with the lowest
/// gates turn quadratic until it does (SNL's final selection).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// The target cost (the planner's objective: seconds or bytes).
    pub budget: f64,
    /// The cost of the network with every channel ReLU.
    pub relu_cost: f64,
    /// Per activation layer: what one channel turned quadratic saves.
    pub channel_saving: Vec<f64>,
    /// Fraction of the run by which the mask must be frozen.
    pub freeze_by: f32,
    /// λ at the start.
    pub penalty: f32,
}

/// Steps between checks of the mask against the budget.
pub const GATE_CHECK_STEPS: usize = 10;
/// How far λ grows (a factor) while the mask is learned.
pub const GATE_RANGE: f64 = 1e4;

impl Gates {
    /// The predicted cost of a mask (per activation layer, per channel, `true` = ReLU).
    pub fn cost(&self, mask: &[Vec<bool>]) -> f64 {
        self.relu_cost
            - mask
                .iter()
                .zip(&self.channel_saving)
                .map(|(m, s)| m.iter().filter(|&&r| !r).count() as f64 * s)
                .sum::<f64>()
    }

    /// SNL's final selection: the ReLU channels with the lowest gates turn
    /// quadratic, one by one, until the mask meets the budget (channels
    /// whose layer saves nothing are left ReLU).
    pub fn select(&self, gates: &[Vec<f32>]) -> Vec<Vec<bool>> {
        let mut mask: Vec<Vec<bool>> =
            gates.iter().map(|g| g.iter().map(|&v| v > 0.5).collect()).collect();
        let mut order: Vec<(usize, usize)> = gates
            .iter()
            .enumerate()
            .flat_map(|(l, g)| (0..g.len()).map(move |c| (l, c)))
            .filter(|&(l, c)| mask[l][c] && self.channel_saving.get(l).is_some_and(|&s| s > 0.0))
            .collect();
        order.sort_by(|&(l, c), &(m, d)| gates[l][c].total_cmp(&gates[m][d]));
        let mut cost = self.cost(&mask);
        for (l, c) in order {
            if cost <= self.budget {
                break;
            }
            mask[l][c] = false;
            cost -= self.channel_saving[l];
        }
        mask
    }
}

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The dataset.
    pub dataset: DatasetKind,
    /// Folder with the dataset's files (else `$DELPHI_DATA`, else Debian's).
    pub data_dir: Option<PathBuf>,
    /// Architecture: a built-in name, or a description (.json) or ONNX
    /// model (.onnx) file; with weights, training starts from them.
    pub arch: String,
    /// Start from this description's weights instead of a fresh initialisation.
    pub init: Option<PathBuf>,
    /// Per activation layer: ReLU or quadratic (written `RQR` or
    /// `relu,quad,relu`); none: all ReLU. Files written before it had this
    /// name call it `activations`.
    #[serde(alias = "activations")]
    pub placement: Option<Placement>,
    /// Passes over the training set.
    pub epochs: usize,
    /// Stop after this many steps instead (the learning-rate schedule and
    /// the swap span them); at most `epochs` epochs' worth. The planner's
    /// unit of budget.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Images per step.
    pub batch_size: usize,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Momentum (SGD).
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Clip each parameter's gradient to this norm.
    pub grad_clip: Option<f32>,
    /// Label smoothing (0: off).
    pub label_smoothing: f32,
    /// Knowledge distillation.
    pub distill: Option<Distill>,
    /// Gradual ReLU → quadratic swap.
    pub swap: Option<Swap>,
    /// Per-channel placement learned during the run (see [`Gates`]).
    #[serde(default)]
    pub gates: Option<Gates>,
    /// Seed of everything random.
    pub seed: u64,
    /// Use only the first N training images (after the validation split).
    pub train_limit: Option<usize>,
    /// Validation images carved from the training set.
    pub valid_size: usize,
    /// Use only the first N test images.
    pub test_limit: Option<usize>,
    /// Measure validation accuracy at the end of every epoch (for the
    /// history); the planner, which evaluates members itself, turns it off.
    #[serde(default = "yes")]
    pub validate_epochs: bool,
}

fn yes() -> bool {
    true
}

impl TrainConfig {
    /// Defaults for a dataset: its default architecture, SGD 0.05 with
    /// momentum 0.9, weight decay 5e-4, cosine schedule, batch 64.
    pub fn new(dataset: DatasetKind) -> Self {
        TrainConfig {
            arch: dataset.default_arch().into(),
            dataset,
            data_dir: None,
            init: None,
            placement: None,
            epochs: 5,
            steps: None,
            batch_size: 64,
            optimizer: OptimizerKind::Sgd,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: Schedule::Cosine,
            grad_clip: None,
            label_smoothing: 0.0,
            distill: None,
            swap: None,
            gates: None,
            seed: 1,
            train_limit: None,
            valid_size: 5000,
            test_limit: None,
            validate_epochs: true,
        }
    }

    /// Loads the data the run names (its validation split drawn from the
    /// seed, the limits applied).
    pub fn load_data(&self) -> Result<crate::data::Dataset> {
        Ok(crate::data::load_limited(
            self.dataset.clone(),
            self.data_dir.as_deref(),
            self.valid_size,
            self.seed,
            self.train_limit,
            self.test_limit,
        )?)
    }

    pub(crate) fn check(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("epochs and batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} must be positive", self.lr));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad("label smoothing must be in [0, 1)".into());
        }
        if let Some(s) = self.swap {
            if !(0.0 <= s.start && s.start <= s.end && s.end <= 1.0) {
                return bad("swap needs 0 ≤ start ≤ end ≤ 1".into());
            }
        }
        if let Some(d) = &self.distill {
            if !(0.0..=1.0).contains(&d.weight) || d.temperature <= 0.0 {
                return bad("distillation weight in [0, 1] and temperature > 0".into());
            }
        }
        if let Some(g) = &self.gates {
            if !(g.budget.is_finite()
                && g.relu_cost.is_finite()
                && g.channel_saving.iter().all(|v| v.is_finite())
                && (0.0..=1.0).contains(&g.freeze_by)
                && g.penalty.is_finite()
                && g.penalty > 0.0)
            {
                return bad("gates: finite costs, freeze_by in [0, 1], a positive penalty".into());
            }
        }
        Ok(())
    }
}

/// The settings that differ between two configurations (any serialisable
/// settings struct), by name: `epochs: 1 then, 2 now`.
pub fn config_changes<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["(a configuration that cannot be compared)".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| v.map_or("-".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} then, {} now", show(a.get(k)), show(b.get(k))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Gates;

    fn gates() -> Gates {
        Gates {
            budget: 6.0,
            relu_cost: 10.0,
            channel_saving: vec![2.0, 1.0],
            freeze_by: 0.5,
            penalty: 0.1,
        }
    }

    #[test]
    fn a_mask_is_priced_by_its_quadratic_channels() {
        let g = gates();
        assert_eq!(g.cost(&[vec![true, true], vec![true, true, true]]), 10.0);
        assert_eq!(g.cost(&[vec![false, true], vec![true, false, false]]), 6.0);
    }

    #[test]
    fn the_final_selection_drops_the_lowest_gates_until_the_budget_is_met() {
        let g = gates();
        // Gates above ½ are ReLU; the lowest go first: 0.55 (layer 1, saves
        // 1), then 0.6 (layer 0, saves 2), then 0.7 (layer 1): cost 10 → 9 → 7 → 6.
        let mask = g.select(&[vec![0.9, 0.6], vec![0.55, 0.7, 0.95]]);
        assert_eq!(mask, vec![vec![true, false], vec![false, false, true]]);
        assert!(g.cost(&mask) <= g.budget);
        // A layer whose channels save nothing is never turned quadratic.
        let mut free = gates();
        free.channel_saving = vec![2.0, 0.0];
        let mask = free.select(&[vec![0.9, 0.6], vec![0.55, 0.7, 0.95]]);
        assert_eq!(mask, vec![vec![false, false], vec![true, true, true]]);
        // A mask that already meets it is left alone.
        let mask = g.select(&[vec![0.1, 0.2], vec![0.9, 0.3, 0.9]]);
        assert_eq!(mask, vec![vec![false, false], vec![true, false, true]]);
    }
}
