//! The training loop: a custom loop that can be paused, copied and
//! perturbed between steps (what population-based search needs), seeded and
//! resumable from checkpoints ([`crate::checkpoint`]).
//!
//! Reproducibility: the order of the training images in epoch e is a
//! permutation drawn from (seed, e); the augmentation of step s from
//! (seed, e, s). A checkpoint stores the model, the optimizer state, the
//! configuration, the activation modes and the position (epoch, step), so
//! resuming replays exactly the batches an uninterrupted run would have seen.

use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{activation, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use delphi_net::{Network, Normalization};

use crate::batch::HostBatch;
use crate::config::{Gates, OptimizerKind, Schedule, TrainConfig, GATE_CHECK_STEPS, GATE_RANGE};
use crate::data::{Dataset, Split};
use crate::error::{Result, TrainError};
use crate::evaluate::{argmax_rows, float_accuracy};
use crate::model::{values, ActMode, ModelError, Net};
use crate::progress::progress_bar;

/// JSON has no NaN: serde_json writes a non-finite float as `null`, which
/// reads back as NaN here (a diverged run's loss, an unmeasured accuracy).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`nan_if_null`] for a running-sums tuple (loss × images, correct, images,
/// seconds).
pub(crate) fn running_nan_if_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<(f64, usize, usize, f64), D::Error> {
    let (loss, correct, images, seconds) =
        <(Option<f64>, usize, usize, Option<f64>)>::deserialize(d)?;
    Ok((loss.unwrap_or(f64::NAN), correct, images, seconds.unwrap_or(f64::NAN)))
}

/// One epoch's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number (from 1).
    pub epoch: usize,
    /// Mean training loss (NaN once training diverged, written as null).
    #[serde(deserialize_with = "nan_if_null")]
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
    pub(crate) optim: ModuleOptimizer,
    pub(crate) device: Device,
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
    pub(crate) legacy_position: bool,
    /// Per-channel gates: `Gated` while the mask is learned, `Masked` once
    /// frozen (or for a description with mixed layers); `None`: no gates.
    pub gate_mode: Option<ActMode>,
    /// λ of the gates' penalty now.
    pub penalty: f32,
    /// Per-epoch figures so far.
    pub history: Vec<EpochMetrics>,
    pub(crate) running: (f64, usize, usize, f64),
}

/// What varies the seeded order of [`Trainer::recalibrate_batch_norm`]'s
/// batches from the run's seed.
const RECALIBRATION_SEED: u64 = 0x5ec0_11b8;

pub(crate) fn build_optimizer(c: &TrainConfig) -> ModuleOptimizer {
    let wd = (c.weight_decay > 0.0).then(|| WeightDecayConfig::new(c.weight_decay as f32));
    let clip = c.grad_clip.map(GradientClippingConfig::Norm);
    match c.optimizer {
        OptimizerKind::Sgd => SgdConfig::new()
            .with_weight_decay(wd)
            .with_momentum(
                (c.momentum > 0.0)
                    .then(|| MomentumConfig::new().with_momentum(c.momentum).with_dampening(0.0)),
            )
            .with_gradient_clipping(clip)
            .init(),
        OptimizerKind::Adam => {
            AdamConfig::new().with_weight_decay(wd).with_grad_clipping(clip).init()
        }
    }
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
                crate::arch::check_fits(&net, &config.dataset, &p.display().to_string())?;
                (net, true)
            }
            None => {
                let r = crate::arch::resolve(&config.arch, &config.dataset, config.seed)?;
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
        let target_quad = match &config.placement {
            Some(p) => p.quads().to_vec(),
            None => vec![false; n_act],
        };
        if target_quad.len() != n_act {
            return Err(ModelError::Placement { given: target_quad.len(), expected: n_act }.into());
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
                largest_output: 0,
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
                Some((start, end)) => {
                    ActMode::Blend { t: 1.0 - (progress - start) / (end - start).max(1e-9) }
                }
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
        if self.config.gates.as_ref().is_some_and(|g| g.cost(&masks) > budget) {
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
    pub(crate) fn progress_fraction(&self) -> f32 {
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
    ///
    /// The batch norms get statistics of their own: Burn's `clone()` shares
    /// a running state between the copies, so without this, training one
    /// would move the other's statistics.
    pub fn copy_from(&mut self, other: &Trainer) {
        self.model = other.model.clone();
        self.set_batch_norm_statistics(&other.batch_norm_statistics());
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
                quiet,
            );
            pb.set_prefix(format!("{}/{}", epoch + 1, self.config.epochs));
            pb.set_position(self.step_in_epoch as u64);
            // The next batches are decoded (and augmented) on a second
            // thread while this one runs the step; the stream ends with the
            // epoch or when this loop stops (the receiver is dropped).
            let (seed, augment, norm) =
                (self.config.seed, self.config.dataset.augment(), self.norm.clone());
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
                        .map_err(|_| TrainError::Worker("the batch-preparing thread"))?
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
                        Net { layers: Vec::new(), input: self.template.input, largest_output: 0 },
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
                        // The steps this call was given are spent: the run
                        // moves on over them (to its end at most), so a
                        // diverged member stays in step with the others —
                        // a member that later copies weights into it, or a
                        // budget that charged them, sees the position it
                        // was paid for.
                        let rest = (max_steps - taken).min(total.saturating_sub(self.steps_done));
                        self.steps_done += rest;
                        self.epoch = self.steps_done / per_epoch;
                        self.step_in_epoch = self.steps_done % per_epoch;
                        self.running = Default::default();
                        // The model's modes stay where the run stands, as
                        // after any call: what is said of a diverged
                        // member is then that its parameters are not
                        // finite, not that it is mid-swap.
                        let modes = self.modes_at(self.steps_done as f32 / total as f32);
                        self.model.set_modes(&modes)?;
                        return Err(TrainError::Diverged {
                            loss: lv,
                            epoch: epoch + 1,
                            step: s,
                            spent: taken + rest,
                        });
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
        let now = if self.finished() { 1.0 } else { self.progress(&data.train) };
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
                let term = gate.val().clamp(0.0, 1.0).sum().mul_scalar(w as f32 * self.penalty);
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

    /// Re-estimates the batch-norm running statistics from the first
    /// `batches` batches of a fixed, seeded order of `train` (no
    /// augmentation), the weights and the activation modes of the current
    /// position unchanged ("precise batch norm", Wu & Johnson 2021): each
    /// layer's statistics become the plain average of those batches'
    /// (momentum 1/k for the k-th), whatever they were before.
    ///
    /// Why: training keeps them as a moving average of the last steps' batches
    /// (momentum 0.1), which lags the weights while they change. Measured on
    /// `resnet38` (Fashion-MNIST) made all-quadratic from its base: mid-run,
    /// 2,000 validation images scored 13.6–61 % with the running
    /// statistics and 85.8–88.5 % after re-estimating them on 16 batches;
    /// at the end of one run 83.1 % against 87.6 %
    /// (`examples/quad_stability.rs`; docs/planner.md has the table). An
    /// evaluation with lagging statistics judges the network by numbers it
    /// will not keep, and a network exported with them (batch norm folded)
    /// is worse than its weights. A layer whose re-estimated statistics are
    /// not finite (an image's activations overflowed) keeps its old ones;
    /// and where the old statistics classify the images used here better
    /// than the new ones (a deep network of quadratics amplifies small
    /// differences; measured once in about fifteen), the network keeps its
    /// old statistics.
    /// No-op for `batches` = 0 or a network without batch norm.
    pub fn recalibrate_batch_norm(&mut self, train: &Split, batches: usize) -> Result<()> {
        let has_bn = self.model.layers.iter().any(|l| l.bn.is_some());
        if batches == 0 || !has_bn || train.is_empty() {
            return Ok(());
        }
        let modes = self.modes_at(self.progress(train));
        self.model.set_modes(&modes)?;
        let momentum: Vec<Option<f64>> =
            self.model.layers.iter().map(|l| l.bn.as_ref().map(|b| b.momentum)).collect();
        let before = self.batch_norm_statistics();
        let bs = self.config.batch_size.max(1);
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(self.config.seed ^ RECALIBRATION_SEED));
        for (k, chunk) in order.chunks(bs).take(batches).enumerate() {
            for bn in self.model.layers.iter_mut().filter_map(|l| l.bn.as_mut()) {
                bn.momentum = 1.0 / (k + 1) as f64;
            }
            let (x, _) = HostBatch::new(train, chunk, None, &self.norm).to_device(&self.device);
            let _ = self.model.forward(x);
        }
        for ((l, m), old) in self.model.layers.iter_mut().zip(momentum).zip(&before) {
            if let (Some(bn), Some(m), Some((mean, var))) = (l.bn.as_mut(), m, old) {
                bn.momentum = m;
                // (Syncing also takes in the last batch's statistics,
                // pending until then.)
                let finite = |t: Tensor<1>| values(t).iter().all(|v| v.is_finite());
                if !(finite(bn.running_mean.value_sync()) && finite(bn.running_var.value_sync())) {
                    // Some image's activations overflowed: the layer keeps
                    // what it had (a network that far out of range is no
                    // plan either way; the range check says so).
                    bn.running_mean = burn::module::RunningState::new(mean.clone());
                    bn.running_var = burn::module::RunningState::new(var.clone());
                }
            }
        }
        // A deep network of quadratics amplifies small differences in its
        // statistics layer after layer, so now and then the re-estimate is
        // the worse of the two: the network keeps whichever statistics
        // classify the images they were estimated on better (training
        // images — no validation image takes part in the choice), the new
        // ones on a tie.
        let used = train.select(&order[..(batches * bs).min(order.len())]);
        let new_accuracy = self.accuracy(&used);
        let after = self.batch_norm_statistics();
        self.set_batch_norm_statistics(&before);
        if self.accuracy(&used) <= new_accuracy {
            self.set_batch_norm_statistics(&after);
        }
        Ok(())
    }

    /// Per layer, its batch norm's running (mean, variance), if it has one.
    fn batch_norm_statistics(&self) -> Vec<Option<(Tensor<1>, Tensor<1>)>> {
        self.model
            .layers
            .iter()
            .map(|l| {
                l.bn.as_ref().map(|b| (b.running_mean.value_sync(), b.running_var.value_sync()))
            })
            .collect()
    }

    fn set_batch_norm_statistics(&mut self, stats: &[Option<(Tensor<1>, Tensor<1>)>]) {
        for (l, st) in self.model.layers.iter_mut().zip(stats) {
            if let (Some(bn), Some((mean, var))) = (l.bn.as_mut(), st) {
                bn.running_mean = burn::module::RunningState::new(mean.clone());
                bn.running_var = burn::module::RunningState::new(var.clone());
            }
        }
    }

    /// Float accuracy on a split (inference mode: batch-norm running statistics).
    pub fn accuracy(&self, split: &Split) -> f64 {
        float_accuracy(&self.model.valid(), split, &self.device, &self.norm)
    }

    /// The trained network as a description, batch norm folded into the
    /// layers it follows (activation modes must be final).
    pub fn export(&self) -> Result<Network> {
        let mut net = self.model.valid().to_description(&self.template)?.fold_batch_norm()?;
        net.name = format!("{}-{}", self.template.name, self.config.dataset.name());
        net.metadata.extra.remove("input_normalization");
        net.metadata.input_normalization = Some(self.norm.clone());
        net.metadata.dataset = Some(self.config.dataset.name().into());
        if let crate::data::DatasetKind::Disk(d) = &self.config.dataset {
            // Which output is which class: the folder names (or label numbers).
            net.metadata.extra.insert("classes".into(), serde_json::json!(d.class_names));
        }
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
}
