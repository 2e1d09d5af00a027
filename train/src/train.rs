//! The training loop: a custom loop that can be paused, copied and
//! perturbed between steps (what population-based search needs), seeded and
//! resumable from checkpoints.
//!
//! Reproducibility: the order of the training images in epoch e is a
//! permutation drawn from (seed, e); the augmentation of step s from
//! (seed, e, s). A checkpoint stores the model, the optimizer state, the
//! configuration, the activation modes and the position (epoch, step), so
//! resuming replays exactly the batches an uninterrupted run would have seen.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{activation, Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use delphi_crypto::field::F;
use delphi_net::{FixedProgram, Network, Normalization, Placement};

use crate::data::{Dataset, DatasetKind, Split};
use crate::model::{values, ActMode, ModelError, Net};

/// Errors of the training code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Reading the dataset failed.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Building or exporting the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The network description is unusable.
    #[error(transparent)]
    Net(#[from] delphi_net::NetError),
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The network does not fit the dataset.
    #[error("{arch} does not fit the data: the network {network}, but {dataset}")]
    Mismatch {
        /// The architecture as given.
        arch: String,
        /// The network's input and output.
        network: String,
        /// The dataset's images and classes.
        dataset: String,
    },
    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The cause of a checkpoint error: an I/O or parse error kept as it is,
/// or words where there is none.
struct Cause(Box<dyn std::error::Error + Send + Sync>);

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for Cause {
    fn from(e: E) -> Self {
        Cause(e.into())
    }
}

/// Result alias of the training code.
pub type Result<T> = std::result::Result<T, TrainError>;

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
        let mut mask: Vec<Vec<bool>> = gates
            .iter()
            .map(|g| g.iter().map(|&v| v > 0.5).collect())
            .collect();
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
    /// Per activation layer: relu or quad (`RQR` or `relu,quad,relu`); none: all ReLU.
    pub activations: Option<String>,
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
            dataset,
            data_dir: None,
            arch: dataset.default_arch().into(),
            init: None,
            activations: None,
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

    fn check(&self) -> Result<()> {
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

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One epoch's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number (from 1).
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy (on augmented batches).
    pub train_accuracy: f64,
    /// Validation accuracy (float; not measured: NaN, written as null).
    #[serde(deserialize_with = "nan_if_null")]
    pub valid_accuracy: f64,
    /// Images per second of training.
    pub images_per_s: f64,
    /// Seconds of the epoch.
    pub seconds: f64,
}

/// A training run in progress.
pub struct Trainer {
    /// The run's configuration.
    pub config: TrainConfig,
    /// The description the model was built from (architecture, start weights).
    pub template: Network,
    /// The model (on the autodiff device).
    pub model: Net,
    optim: ModuleOptimizer,
    device: Device,
    teacher: Option<Net>,
    /// How the network's input is normalised (the description's, else the dataset's).
    pub norm: Normalization,
    /// What resolving the architecture noted (assumed normalisation, import notes).
    pub notes: Vec<String>,
    /// Per activation layer: `None` for ReLU, or the fractions of the run
    /// between which it blends from ReLU into its quadratic.
    pub quad_from: Vec<Option<(f32, f32)>>,
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed in the current epoch.
    pub step_in_epoch: usize,
    /// Steps completed in the whole run.
    pub steps_done: usize,
    legacy_position: bool,
    /// Per-channel gates: `Gated` while the mask is learned, `Masked` once
    /// frozen (or for a description with mixed layers); `None`: no gates.
    pub gate_mode: Option<ActMode>,
    /// λ of the gates' penalty now.
    pub penalty: f32,
    /// Per-epoch figures so far.
    pub history: Vec<EpochMetrics>,
    running: (f64, usize, usize, f64),
}

fn build_optimizer(c: &TrainConfig) -> ModuleOptimizer {
    let wd = (c.weight_decay > 0.0).then(|| WeightDecayConfig::new(c.weight_decay as f32));
    let clip = c.grad_clip.map(GradientClippingConfig::Norm);
    match c.optimizer {
        OptimizerKind::Sgd => SgdConfig::new()
            .with_weight_decay(wd)
            .with_momentum((c.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(c.momentum)
                    .with_dampening(0.0)
            }))
            .with_gradient_clipping(clip)
            .init(),
        OptimizerKind::Adam => AdamConfig::new()
            .with_weight_decay(wd)
            .with_grad_clipping(clip)
            .init(),
    }
}

/// Converts host images (normalised with `norm`) and labels into a batch on `device`.
pub fn batch(
    split: &Split,
    idx: &[usize],
    augment: Option<u64>,
    device: &Device,
    norm: &Normalization,
) -> (Tensor<4>, Tensor<1, Int>) {
    HostBatch::new(split, idx, augment, norm).to_device(device)
}

/// A batch's pixels (normalised, optionally augmented) and labels in host
/// memory: what the prefetching thread of [`Trainer::train_steps`] prepares
/// while the device runs the previous step.
pub struct HostBatch {
    pixels: Vec<f32>,
    labels: Vec<i64>,
    shape: [usize; 4],
}

impl HostBatch {
    /// The images at `idx` (augmented with the seed `augment`, if given).
    pub fn new(split: &Split, idx: &[usize], augment: Option<u64>, norm: &Normalization) -> Self {
        let [c, h, w] = split.kind.shape();
        let mut rng = augment.map(ChaCha8Rng::seed_from_u64);
        let mut pixels = Vec::with_capacity(idx.len() * c * h * w);
        for &i in idx {
            let img = match rng.as_mut() {
                Some(r) => split.image(i, Some(r), norm),
                None => split.image(i, None, norm),
            };
            pixels.extend(img);
        }
        HostBatch {
            pixels,
            labels: idx.iter().map(|&i| split.labels[i] as i64).collect(),
            shape: [idx.len(), c, h, w],
        }
    }

    /// The batch as tensors on `device`.
    pub fn to_device(self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = self.labels.len();
        (
            Tensor::from_data(TensorData::new(self.pixels, self.shape), device),
            Tensor::from_data(TensorData::new(self.labels, [n]), device),
        )
    }
}

fn argmax_rows(v: &[f32], classes: usize) -> Vec<usize> {
    v.chunks(classes)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
                    if x > bv {
                        (i, x)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        })
        .collect()
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

impl Trainer {
    /// Starts a run: builds the architecture (or loads `init`), sets the
    /// activation placement, the optimizer and the teacher.
    pub fn new(config: TrainConfig, device: &Device) -> Result<Trainer> {
        config.check()?;
        let device = device.clone().autodiff();
        let [c, h, w] = config.dataset.shape();
        let mut notes = Vec::new();
        let (template, load) = match &config.init {
            Some(p) => {
                let net = Network::load(p)?;
                crate::arch::check_fits(&net, config.dataset, &p.display().to_string())?;
                (net, true)
            }
            None => {
                let r = crate::arch::resolve(&config.arch, config.dataset, config.seed)?;
                notes = r.notes;
                (r.network, r.trained)
            }
        };
        let norm = template
            .metadata
            .input_normalization
            .clone()
            .unwrap_or_else(|| config.dataset.default_normalization());
        device.seed(config.seed);
        let mut model = Net::from_description(&template, load, &device)?;
        let has_mixed = model.gated().iter().any(|&g| g);
        if let Some(g) = &config.gates {
            let layers = model.activation_layers().len();
            if g.channel_saving.len() != layers || g.channel_saving.iter().any(|&s| s < 0.0) {
                return Err(TrainError::Config(format!(
                    "gates: {} per-layer channel savings (none negative) for a network with {layers} \
                     activation layers",
                    g.channel_saving.len()
                )));
            }
        }
        let gate_mode = if config.gates.is_some() {
            model.enable_gates(&template.validate()?, &device);
            Some(ActMode::Gated)
        } else {
            has_mixed.then_some(ActMode::Masked)
        };
        let penalty = config.gates.as_ref().map_or(0.0, |g| g.penalty);
        let n_act = model.activation_layers().len();
        let target_quad = match &config.activations {
            Some(p) => p.parse::<Placement>()?.quads().to_vec(),
            None => vec![false; n_act],
        };
        if target_quad.len() != n_act {
            return Err(ModelError::Placement {
                given: target_quad.len(),
                expected: n_act,
            }
            .into());
        }
        let teacher = match &config.distill {
            Some(d) => {
                let t = Network::load(&d.teacher)?;
                Some(Net::from_description(&t, true, &Device::flex())?.valid())
            }
            None => None,
        };
        let optim = build_optimizer(&config);
        let window = config.swap.map_or((0.0, 0.0), |s| (s.start, s.end));
        let quad_from = target_quad.iter().map(|&q| q.then_some(window)).collect();
        let mut tr = Trainer {
            config,
            template,
            model: Net {
                layers: Vec::new(),
                input: delphi_net::Shape::new(c, h, w),
            },
            optim,
            device,
            teacher,
            norm,
            notes,
            quad_from,
            epoch: 0,
            step_in_epoch: 0,
            steps_done: 0,
            legacy_position: false,
            gate_mode,
            penalty,
            history: Vec::new(),
            running: (0.0, 0, 0, 0.0),
        };
        tr.model = model;
        let modes = tr.modes_at(0.0);
        tr.model.set_modes(&modes)?;
        Ok(tr)
    }

    /// The activation modes at a point of the run (fraction of all steps).
    pub fn modes_at(&self, progress: f32) -> Vec<ActMode> {
        let gated = self.model.gated();
        self.quad_from
            .iter()
            .enumerate()
            .map(|(k, q)| match *q {
                _ if gated.get(k).copied().unwrap_or(false) => {
                    self.gate_mode.unwrap_or(ActMode::Masked)
                }
                None => ActMode::Relu,
                Some((_, end)) if progress >= end => ActMode::Quad,
                Some((start, _)) if progress <= start => ActMode::Blend { t: 1.0 },
                Some((start, end)) => ActMode::Blend {
                    t: 1.0 - (progress - start) / (end - start).max(1e-9),
                },
            })
            .collect()
    }

    /// Which activation layers are (or are becoming) quadratic; a gated
    /// layer counts when any of its channels is quadratic now.
    pub fn placement(&self) -> Vec<bool> {
        let masks = self.channel_masks();
        self.quad_from
            .iter()
            .enumerate()
            .map(|(k, q)| match masks.get(k) {
                Some(Some(m)) => m.iter().any(|r| !r),
                _ => q.is_some(),
            })
            .collect()
    }

    /// Per activation layer: its binary channel mask (`true`: ReLU) if it is gated.
    pub fn channel_masks(&self) -> Vec<Option<Vec<bool>>> {
        self.model
            .gates()
            .into_iter()
            .map(|g| g.map(|g| g.iter().map(|&v| v > 0.5).collect()))
            .collect()
    }

    /// Whether the channel mask is frozen (or there is none to learn).
    pub fn mask_frozen(&self) -> bool {
        self.gate_mode != Some(ActMode::Gated)
    }

    /// Freezes the channel mask at `mask` (per activation layer, per channel).
    pub fn freeze_mask(&mut self, mask: &[Vec<bool>]) {
        self.model.set_masks(mask, ActMode::Masked, &self.device);
        self.gate_mode = Some(ActMode::Masked);
    }

    /// Sets a new budget for the channel mask; when the frozen mask costs
    /// more, learning resumes from it (λ halved). No effect without gates.
    pub fn set_gate_budget(&mut self, budget: f64) -> Result<()> {
        let Some(g) = &mut self.config.gates else {
            return Ok(());
        };
        g.budget = budget;
        let masks: Vec<Vec<bool>> = self.channel_masks().into_iter().flatten().collect();
        if self
            .config
            .gates
            .as_ref()
            .is_some_and(|g| g.cost(&masks) > budget)
        {
            self.gate_mode = Some(ActMode::Gated);
            self.penalty = (self.penalty * 0.5).max(1e-6);
            let modes = self.modes_at(self.progress_fraction());
            self.model.set_modes(&modes)?;
        }
        Ok(())
    }

    /// Fraction of the run done.
    pub fn progress(&self, train: &Split) -> f32 {
        self.steps_done as f32 / self.total_steps(train).max(1) as f32
    }

    /// Steps of the whole run on `train`.
    pub fn total_steps(&self, train: &Split) -> usize {
        let all = self.steps_per_epoch(train) * self.config.epochs;
        self.config.steps.map_or(all, |s| s.min(all))
    }

    /// Fraction of the run done, by epochs only (before the data is known).
    fn progress_fraction(&self) -> f32 {
        match self.config.steps {
            Some(s) => self.steps_done as f32 / s.max(1) as f32,
            None => self.epoch as f32 / self.config.epochs.max(1) as f32,
        }
    }

    /// Starts swapping activation layer `k` (0-based among the activation
    /// layers) to its quadratic: it blends from now over `span` of the run
    /// (never past its end). A layer already quadratic is left as it is.
    pub fn swap_to_quad(&mut self, k: usize, now: f32, span: f32) {
        if let Some(q @ None) = self.quad_from.get_mut(k) {
            *q = Some((now, (now + span).min(1.0)));
        }
    }

    /// Makes activation layer `k` ReLU again (at once; its quadratic
    /// coefficients are kept, unused).
    pub fn revert_to_relu(&mut self, k: usize) {
        if let Some(q) = self.quad_from.get_mut(k) {
            *q = None;
        }
    }

    /// Changes the optimizer's hyperparameters (the optimizer state restarts).
    pub fn set_hyperparameters(&mut self, lr: f64, momentum: f64, weight_decay: f64) {
        self.config.lr = lr;
        self.config.momentum = momentum;
        self.config.weight_decay = weight_decay;
        self.optim = build_optimizer(&self.config);
    }

    /// Sets the weight of the distillation term (if distilling).
    pub fn set_distill_weight(&mut self, w: f32) {
        if let Some(d) = &mut self.config.distill {
            d.weight = w.clamp(0.0, 1.0);
        }
    }

    /// Copies another member's weights and activation plan (exploit); the
    /// optimizer state restarts, the position in the run is kept.
    pub fn copy_from(&mut self, other: &Trainer) {
        self.model = other.model.clone();
        self.quad_from = other.quad_from.clone();
        self.gate_mode = other.gate_mode;
        self.penalty = other.penalty;
        if let (Some(mine), Some(theirs)) = (&mut self.config.gates, &other.config.gates) {
            mine.budget = theirs.budget;
        }
        self.optim = build_optimizer(&self.config);
    }

    /// Steps per epoch for `train`.
    pub fn steps_per_epoch(&self, train: &Split) -> usize {
        train.len().div_ceil(self.config.batch_size)
    }

    /// Steps from the current position to the next checkpoint: the next
    /// multiple of `every` steps into the epoch (`every` = 0: none), or the
    /// epoch's end, whichever comes first — so that checkpoints land at
    /// every epoch's end and every `every` steps inside an epoch.
    pub fn steps_to_checkpoint(&self, per_epoch: usize, every: usize) -> usize {
        let s = self.step_in_epoch.min(per_epoch);
        let to_end = per_epoch - s;
        let to_every = match every {
            0 => to_end,
            e => e - s % e,
        };
        to_end.min(to_every).max(1)
    }

    /// Whether all epochs are done.
    pub fn finished(&self) -> bool {
        self.epoch >= self.config.epochs || self.config.steps.is_some_and(|s| self.steps_done >= s)
    }

    fn lr_at(&self, progress: f64) -> f64 {
        let lr = self.config.lr;
        match self.config.schedule {
            Schedule::Constant => lr,
            Schedule::Cosine => 0.5 * lr * (1.0 + (std::f64::consts::PI * progress).cos()),
            Schedule::Step { every, gamma } => {
                let e = (progress * self.config.epochs as f64).floor() as usize;
                lr * gamma.powi((e / every.max(1)) as i32)
            }
        }
    }

    /// Trains at most `max_steps` steps (stopping at the end of the run);
    /// returns the steps taken. Validation runs at the end of each epoch.
    pub fn train_steps(&mut self, data: &Dataset, max_steps: usize, quiet: bool) -> Result<usize> {
        let train = &data.train;
        if train.is_empty() {
            return Err(TrainError::Config("no training images".into()));
        }
        let per_epoch = self.steps_per_epoch(train);
        if std::mem::take(&mut self.legacy_position) {
            self.steps_done = self.epoch * per_epoch + self.step_in_epoch;
        }
        let total = self.total_steps(train);
        let bs = self.config.batch_size;
        let classes = self.config.dataset.classes();
        let loss_fn = CrossEntropyLossConfig::new()
            .with_smoothing(
                (self.config.label_smoothing > 0.0).then_some(self.config.label_smoothing),
            )
            .init(&self.device);
        let mut taken = 0;
        while taken < max_steps && !self.finished() {
            let epoch = self.epoch;
            let mut order: Vec<usize> = (0..train.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                self.config.seed ^ ((epoch as u64 + 1) << 20),
            ));
            let pb = progress_bar(
                per_epoch as u64,
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})",
            );
            if quiet {
                pb.set_draw_target(ProgressDrawTarget::hidden());
            }
            pb.set_prefix(format!("{}/{}", epoch + 1, self.config.epochs));
            pb.set_position(self.step_in_epoch as u64);
            // The next batches are decoded (and augmented) on a second
            // thread while this one runs the step; the stream ends with the
            // epoch or when this loop stops (the receiver is dropped).
            let (seed, augment, norm) = (
                self.config.seed,
                self.config.dataset.augment(),
                self.norm.clone(),
            );
            let (first, order_ref) = (self.step_in_epoch, &order);
            std::thread::scope(|scope| -> Result<()> {
                let (tx, batches) = std::sync::mpsc::sync_channel::<HostBatch>(2);
                scope.spawn(move || {
                    for s in first..per_epoch {
                        let idx = &order_ref[s * bs..((s + 1) * bs).min(train.len())];
                        let aug = augment.then_some(
                            seed ^ ((epoch as u64) << 32) ^ (s as u64).wrapping_mul(0x9e37_79b9),
                        );
                        if tx.send(HostBatch::new(train, idx, aug, &norm)).is_err() {
                            break;
                        }
                    }
                });
                while self.step_in_epoch < per_epoch && taken < max_steps && !self.finished() {
                    let s = self.step_in_epoch;
                    let global = self.steps_done;
                    let progress = global as f32 / total as f32;
                    let modes = self.modes_at(progress);
                    self.model.set_modes(&modes)?;
                    let idx = &order[s * bs..((s + 1) * bs).min(train.len())];
                    let t0 = Instant::now();
                    let (x, y) = batches
                        .recv()
                        .map_err(|_| {
                            TrainError::Config("the batch-preparing thread stopped".into())
                        })?
                        .to_device(&self.device);
                    let logits = self.model.forward(x.clone());
                    let mut loss = loss_fn.forward(logits.clone(), y.clone());
                    if let (Some(teacher), Some(d)) = (&self.teacher, &self.config.distill) {
                        let tx = Tensor::<4>::from_data(x.into_data(), &Device::flex());
                        let tl = teacher.forward(tx).div_scalar(d.temperature);
                        let p_t = activation::softmax(
                            Tensor::<2>::from_data(tl.into_data(), &self.device),
                            1,
                        );
                        let log_s =
                            activation::log_softmax(logits.clone().div_scalar(d.temperature), 1);
                        let log_t = p_t.clone().clamp_min(1e-12).log();
                        let kl = (p_t * (log_t - log_s)).sum_dim(1).mean();
                        let t2 = d.temperature * d.temperature;
                        loss = loss.mul_scalar(1.0 - d.weight) + kl.mul_scalar(d.weight * t2);
                    }
                    if let (Some(ActMode::Gated), Some(g)) = (self.gate_mode, &self.config.gates) {
                        loss = loss + self.gate_penalty(g);
                    }
                    let grads = GradientsParams::from_grads(loss.backward(), &self.model);
                    let lr = self.lr_at(global as f64 / total as f64);
                    let model = std::mem::replace(
                        &mut self.model,
                        Net {
                            layers: Vec::new(),
                            input: self.template.input,
                        },
                    );
                    self.model = self.optim.step(lr, model, grads);
                    let lv = values(loss).first().copied().unwrap_or(f32::NAN) as f64;
                    let pred = argmax_rows(&values(logits), classes);
                    let correct = pred
                        .iter()
                        .zip(idx)
                        .filter(|(p, &i)| **p == train.labels[i] as usize)
                        .count();
                    let r = &mut self.running;
                    r.0 += lv * idx.len() as f64;
                    r.1 += correct;
                    r.2 += idx.len();
                    r.3 += t0.elapsed().as_secs_f64();
                    self.step_in_epoch += 1;
                    self.steps_done += 1;
                    taken += 1;
                    pb.set_position(self.step_in_epoch as u64);
                    pb.set_message(format!(
                        "loss {:.3} acc {:.3} {:.0} img/s",
                        r.0 / r.2 as f64,
                        r.1 as f64 / r.2 as f64,
                        r.2 as f64 / r.3.max(1e-9)
                    ));
                    self.check_mask(total);
                    if !lv.is_finite() {
                        pb.finish_and_clear();
                        return Err(TrainError::Config(format!(
                            "training diverged (loss {lv}) at epoch {} step {s}; lower the learning rate",
                            epoch + 1
                        )));
                    }
                }
                Ok(())
            })?;
            pb.finish_and_clear();
            if self.step_in_epoch == per_epoch {
                let r = std::mem::take(&mut self.running);
                let valid_accuracy = if data.valid.is_empty() || !self.config.validate_epochs {
                    f64::NAN
                } else {
                    self.accuracy(&data.valid)
                };
                self.history.push(EpochMetrics {
                    epoch: epoch + 1,
                    loss: r.0 / r.2.max(1) as f64,
                    train_accuracy: r.1 as f64 / r.2.max(1) as f64,
                    valid_accuracy,
                    images_per_s: r.2 as f64 / r.3.max(1e-9),
                    seconds: r.3,
                });
                self.epoch += 1;
                self.step_in_epoch = 0;
            }
        }
        // The model's modes are those of where the run now stands (what an
        // evaluation between calls sees and an export writes); past the end
        // of the run they are final.
        let now = if self.finished() {
            1.0
        } else {
            self.progress(&data.train)
        };
        let modes = self.modes_at(now);
        self.model.set_modes(&modes)?;
        Ok(taken)
    }

    /// λ·Σ_l Σ_c (saving_l / relu_cost)·clamp(g_lc, 0, 1).
    fn gate_penalty(&self, g: &Gates) -> Tensor<1> {
        let mut total: Option<Tensor<1>> = None;
        let acts = self.model.activation_layers();
        for (k, &i) in acts.iter().enumerate() {
            if let Some(gate) = &self.model.layers[i].gate {
                let w = g.channel_saving.get(k).copied().unwrap_or(0.0) / g.relu_cost.max(1e-30);
                let term = gate
                    .val()
                    .clamp(0.0, 1.0)
                    .sum()
                    .mul_scalar(w as f32 * self.penalty);
                total = Some(match total {
                    Some(t) => t + term,
                    None => term,
                });
            }
        }
        total.unwrap_or_else(|| Tensor::zeros([1], &self.device))
    }

    /// Every [`GATE_CHECK_STEPS`] steps while the mask is learned: freezes
    /// it once it meets the budget (or selects and freezes at `freeze_by`),
    /// else grows λ.
    fn check_mask(&mut self, total: usize) {
        if self.gate_mode != Some(ActMode::Gated)
            || !self.steps_done.is_multiple_of(GATE_CHECK_STEPS)
        {
            return;
        }
        let Some(g) = self.config.gates.clone() else {
            return;
        };
        let progress = self.steps_done as f32 / total.max(1) as f32;
        let masks: Vec<Vec<bool>> = self.channel_masks().into_iter().flatten().collect();
        if g.cost(&masks) <= g.budget {
            self.freeze_mask(&masks);
        } else if progress >= g.freeze_by {
            let gates: Vec<Vec<f32>> = self.model.gates().into_iter().flatten().collect();
            let mask = g.select(&gates);
            self.freeze_mask(&mask);
        } else {
            let checks =
                (0.8 * g.freeze_by as f64 * total as f64 / GATE_CHECK_STEPS as f64).max(1.0);
            self.penalty *= GATE_RANGE.powf(1.0 / checks) as f32;
        }
    }

    /// Trains to the end of the run.
    pub fn train(&mut self, data: &Dataset, quiet: bool) -> Result<()> {
        self.train_steps(data, usize::MAX, quiet).map(|_| ())
    }

    /// Float accuracy on a split (inference mode: batch-norm running statistics).
    pub fn accuracy(&self, split: &Split) -> f64 {
        float_accuracy(&self.model.valid(), split, &self.device, &self.norm)
    }

    /// The trained network as a description, batch norm folded into the
    /// layers it follows (activation modes must be final).
    pub fn export(&self) -> Result<Network> {
        let mut net = self
            .model
            .valid()
            .to_description(&self.template)?
            .fold_batch_norm()?;
        net.name = format!("{}-{}", self.template.name, self.config.dataset.name());
        net.metadata.extra.remove("input_normalization");
        net.metadata.input_normalization = Some(self.norm.clone());
        net.metadata.dataset = Some(self.config.dataset.name().into());
        Ok(net)
    }

    /// The trained network as a description with its batch norms kept
    /// (what further training starts from; activation modes must be final).
    pub fn export_unfolded(&self) -> Result<Network> {
        let mut net = self.model.valid().to_description(&self.template)?;
        net.metadata.extra.remove("input_normalization");
        net.metadata.input_normalization = Some(self.norm.clone());
        net.metadata.dataset = Some(self.config.dataset.name().into());
        Ok(net)
    }

    /// Writes a checkpoint: `model.bin` (Burn record), `optim.bin`, `state.json`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let err = |e: Cause| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            source: e.0,
        };
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
        let state = serde_json::json!({
            "format": "delphi-train checkpoint",
            "version": 1,
            "config": self.config,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "steps_done": self.steps_done,
            "running": [self.running.0, self.running.1, self.running.2, self.running.3],
            "history": self.history,
            "quad_from": self.quad_from,
            "gate_mode": self.gate_mode,
            "penalty": self.penalty,
            "template": self.template,
        });
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
        let err = |e: Cause| TrainError::Checkpoint {
            path: cur.clone(),
            source: e.0,
        };
        let text =
            std::fs::read_to_string(cur.join("state.json")).map_err(|e| err(Cause::from(e)))?;
        let state: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(Cause::from(e)))?;
        if state["version"] != 1 {
            return Err(err(Cause::from(format!(
                "unknown checkpoint version {}",
                state["version"]
            ))));
        }
        let config: TrainConfig = serde_json::from_value(state["config"].clone())
            .map_err(|e| err(Cause::from(format!("config: {e}"))))?;
        let template: Network = serde_json::from_value(state["template"].clone())
            .map_err(|e| err(Cause::from(format!("template: {e}"))))?;
        let mut tr = Trainer::new(
            TrainConfig {
                init: None,
                ..config.clone()
            },
            device,
        )?;
        tr.config = config;
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
            Net {
                layers: Vec::new(),
                input: tr.template.input,
            },
        );
        tr.model = model
            .try_load_file(cur.join("model"))
            .map_err(|e| err(Cause::from(format!("model: {e:?}"))))?;
        let optim = std::mem::replace(&mut tr.optim, build_optimizer(&tr.config));
        tr.optim = optim
            .load(cur.join("optim"))
            .map_err(|e| err(Cause::from(format!("optimizer: {e:?}"))))?;
        let num = |k: &str| {
            state[k]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| err(Cause::from(format!("missing {k}"))))
        };
        tr.epoch = num("epoch")?;
        tr.step_in_epoch = num("step_in_epoch")?;
        // Checkpoints of earlier versions count steps per epoch only.
        tr.steps_done = match state["steps_done"].as_u64() {
            Some(v) => v as usize,
            None => {
                tr.legacy_position = true;
                0
            }
        };
        let r = &state["running"];
        tr.running = (
            r[0].as_f64().unwrap_or(0.0),
            r[1].as_u64().unwrap_or(0) as usize,
            r[2].as_u64().unwrap_or(0) as usize,
            r[3].as_f64().unwrap_or(0.0),
        );
        tr.history = serde_json::from_value(state["history"].clone())
            .map_err(|e| err(Cause::from(format!("history: {e}"))))?;
        if !state["gate_mode"].is_null() {
            tr.gate_mode = serde_json::from_value(state["gate_mode"].clone())
                .map_err(|e| err(Cause::from(format!("gate_mode: {e}"))))?;
        }
        if let Some(p) = state["penalty"].as_f64() {
            tr.penalty = p as f32;
        }
        if !state["quad_from"].is_null() {
            tr.quad_from = serde_json::from_value(state["quad_from"].clone())
                .map_err(|e| err(Cause::from(format!("quad_from: {e}"))))?;
        }
        let modes = tr.modes_at(tr.progress_fraction());
        tr.model.set_modes(&modes)?;
        Ok(tr)
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

/// Images measured for the activation ranges an export records.
pub const RANGE_IMAGES: usize = 256;

/// Records in `net` the largest |input| of each activation layer on the
/// first `images` images of `split` (normalised as the network expects),
/// so that the engine's range check ([`delphi_net::range`]) knows what the
/// data does, not only what random inputs do.
pub fn record_ranges(net: &mut Network, split: &Split, images: usize) -> Result<()> {
    let norm = net
        .metadata
        .input_normalization
        .clone()
        .unwrap_or_else(|| split.kind.default_normalization());
    let images: Vec<Vec<f32>> = (0..split.len().min(images))
        .map(|i| split.image(i, None, &norm))
        .collect();
    net.metadata.activation_ranges = delphi_net::eval::activation_ranges(net, &images)?;
    Ok(())
}

/// Float accuracy of a model (in inference mode) on a split whose images
/// are normalised with `norm`.
pub fn float_accuracy(model: &Net, split: &Split, device: &Device, norm: &Normalization) -> f64 {
    let device = device.clone().without_autodiff();
    let classes = split.kind.classes();
    let mut correct = 0;
    let idx: Vec<usize> = (0..split.len()).collect();
    for chunk in idx.chunks(256) {
        let (x, _) = batch(split, chunk, None, &device, norm);
        let x = Tensor::<4>::from_data(x.into_data(), &device);
        let pred = argmax_rows(&values(model.forward(x)), classes);
        correct += pred
            .iter()
            .zip(chunk)
            .filter(|(p, &i)| **p == split.labels[i] as usize)
            .count();
    }
    correct as f64 / split.len().max(1) as f64
}

/// The images of a split, normalised as `net` records (else with the
/// dataset's normalisation) and encoded for its fixed-point program.
fn encoded(prog: &FixedProgram, net: &Network, split: &Split, n: usize) -> Result<Vec<Vec<F>>> {
    let norm = net
        .metadata
        .input_normalization
        .clone()
        .unwrap_or_else(|| split.kind.default_normalization());
    (0..split.len().min(n))
        .map(|i| Ok(prog.encode_input(&split.image(i, None, &norm))?))
        .collect()
}

/// Each ReLU node's largest |input| over the first `images` images of
/// `split` (fixed-point units; see [`delphi_net::window::relu_peaks`]).
pub fn relu_input_peaks(
    net: &Network,
    split: &Split,
    images: usize,
) -> Result<Vec<delphi_net::window::ReluPeak>> {
    let prog = FixedProgram::lower(net)?;
    let xs = encoded(&prog, net, split, images)?;
    Ok(delphi_net::window::relu_peaks(&prog, &xs)?)
}

/// Reduced-ReLU windows for every activation layer with ReLU channels:
/// each ReLU node's largest |input| over the first `images` images of
/// `split`, times `margin`, with the low bit at the ReLU's truncation
/// (exact inside the window; see [`delphi_net::window`]). `None` where the
/// full circuit is needed (a peak beyond 2^36).
pub fn relu_windows(
    net: &Network,
    split: &Split,
    images: usize,
    margin: f64,
) -> Result<Vec<(usize, Option<delphi_crypto::relu::ReluBits>)>> {
    Ok(windows_from_peaks(
        &relu_input_peaks(net, split, images)?,
        margin,
    ))
}

/// One window per activation layer from measured peaks ([`relu_windows`]).
pub fn windows_from_peaks(
    peaks: &[delphi_net::window::ReluPeak],
    margin: f64,
) -> Vec<(usize, Option<delphi_crypto::relu::ReluBits>)> {
    use delphi_net::window::window_for;
    let mut out: Vec<(usize, Option<delphi_crypto::relu::ReluBits>)> = Vec::new();
    for p in peaks {
        // The low bit at the truncation (at least 1: a window drops a bit).
        let w = window_for(p.peak, margin, p.shift.max(1), p.shift);
        // One window per layer: a layer's nodes share it (the widest).
        match out.iter_mut().find(|(l, _)| *l == p.layer) {
            Some((_, cur)) => {
                *cur = match (*cur, w) {
                    (Some(a), Some(b)) if a.lo == b.lo => Some(if a.hi >= b.hi { a } else { b }),
                    _ => None,
                }
            }
            None => out.push((p.layer, w)),
        }
    }
    out
}

/// Accuracy of the fixed-point program on a split, its images normalised
/// as the network records (else with the dataset's normalisation). Every
/// ReLU gives what the two-party protocol gives: the reference for the
/// full circuit (bit-exact with the protocol for all-ReLU networks), and
/// for a reduced ReLU its output on a random split of the input into two
/// shares (seeded per image), which is the protocol's result in
/// distribution: the accuracy a client will see. Uses every core.
pub fn fixed_accuracy(net: &Network, split: &Split) -> Result<f64> {
    let prog = FixedProgram::lower(net)?;
    let norm = net
        .metadata
        .input_normalization
        .clone()
        .unwrap_or_else(|| split.kind.default_normalization());
    let norm = &norm;
    let n = split.len();
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1);
    let per = n.div_ceil(threads.max(1)).max(1);
    let correct: Result<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(per)
            .map(|start| {
                let prog = &prog;
                s.spawn(move || -> Result<usize> {
                    let mut c = 0;
                    let end = (start + per).min(n);
                    // Batches: the linear layers run over the batch.
                    let nb = prog.preferred_batch();
                    for from in (start..end).step_by(nb) {
                        let to = (from + nb).min(end);
                        let xs = (from..to)
                            .map(|i| prog.encode_input(&split.image(i, None, norm)))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                        let mut rng = ChaCha8Rng::seed_from_u64(from as u64);
                        let ys = prog.eval_batch_with(&xs, &mut |_, spec, v| {
                            if spec.bits.is_none() {
                                return spec.reference(v);
                            }
                            let a = F::random(&mut rng);
                            spec.protocol_output(a, v - a)
                        })?;
                        for (i, y) in (from..to).zip(ys) {
                            let pred = y
                                .iter()
                                .enumerate()
                                .max_by_key(|(_, v)| v.to_signed())
                                .map(|(k, _)| k)
                                .unwrap_or(0);
                            c += usize::from(pred == split.labels[i] as usize);
                        }
                    }
                    Ok(c)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Config("evaluation thread panicked".into()))
                })
            })
            .sum()
    });
    Ok(correct? as f64 / n.max(1) as f64)
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
