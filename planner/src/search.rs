//! What every search strategy shares: the data, the all-ReLU base network,
//! the cost model, the training budget, evaluation and pricing, the Pareto
//! front of plans (with their weights), the lineage log and the saved state
//! that lets a killed search resume.
//!
//! 1. The base is the provider's trained network when `--arch` names one
//!    with weights (not retrained; its validation accuracy is measured),
//!    otherwise an all-ReLU network trained once and cached in
//!    `<out>/base/`. Every member starts from it and may distil from it.
//! 2. The budget is counted in training steps: `budget_epochs` member-epochs
//!    (default population × epochs) × steps per epoch, the same for every
//!    strategy. Every strategy trains through [`Search::train`], which
//!    counts.
//! 3. Every evaluation (validation accuracy, predicted cost under the real
//!    protocol, fitness) is a row of `members.csv`. Settled evaluations
//!    (no layer mid-swap) that no other settled evaluation beats in both
//!    accuracy and cost form the front; their networks are kept in
//!    `<out>/front/`, so the plan for any threshold — the cheapest front
//!    plan that meets it — is known after the run, for every strategy alike.
//! 4. State is saved after every unit of work (an interval, a probe): killing
//!    the process loses at most one, and rerunning the same command resumes.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use delphi_cost::{Cost, CostModel, Link};
use delphi_net::{FixedProgram, Network, Placement, WeightStorage};
use delphi_train::arch;
use delphi_train::data::{self, Dataset};
use delphi_train::device::DeviceChoice;
use delphi_train::train::{Distill, Gates, Swap, TrainConfig, Trainer};

use crate::config::{Granularity, PlanConfig, ReluBitsMode, Strategy, RELU_BITS_TOLERANCE};
use crate::policy::{self, Genome};

/// Errors of the planner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Training failed.
    #[error(transparent)]
    Train(#[from] delphi_train::train::TrainError),
    /// Data could not be read.
    #[error(transparent)]
    Data(#[from] delphi_train::data::DataError),
    /// The cost model failed.
    #[error(transparent)]
    Cost(#[from] delphi_cost::CostError),
    /// A network description problem.
    #[error(transparent)]
    Net(#[from] delphi_net::NetError),
    /// Files of the run.
    #[error("file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bad setting.
    #[error("{0}")]
    Config(String),
}

/// Result alias of the planner.
pub type Result<T> = std::result::Result<T, PlanError>;

pub(crate) fn file_err(
    path: &Path,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> PlanError {
    PlanError::File {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// One evaluation of one member (a row of `members.csv`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Position in the run (from 0).
    pub index: usize,
    /// What was evaluated: `interval 3`, `n=9 interval 2`, `probe layer 4`, ….
    pub stage: String,
    /// Round of the strategy (interval, or greedy round), from 1.
    pub interval: usize,
    /// Member (or probe) index.
    pub member: usize,
    /// Placement.
    pub placement: Placement,
    /// Quadratic layers.
    pub quads: usize,
    /// ReLU activations (elements) left.
    pub relus: usize,
    /// Whether every swap had finished (the network is what the placement says).
    pub settled: bool,
    /// Validation accuracy (float).
    pub valid_accuracy: f64,
    /// Predicted online seconds.
    pub online_s: f64,
    /// Predicted online bytes.
    pub online_bytes: f64,
    /// Predicted offline seconds.
    pub offline_s: f64,
    /// Predicted offline bytes.
    pub offline_bytes: f64,
    /// The objective's value.
    pub cost: f64,
    /// Fitness under the strategy's own rule (higher is better).
    pub fitness: f64,
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Distillation weight.
    pub distill_weight: f32,
    /// Swap span.
    pub swap_span: f32,
    /// Training steps the whole search had used when this was evaluated.
    pub steps: usize,
    /// Per-channel placement: per activation layer, the percentage of its
    /// channels that keep ReLU (`100 42 0 …`); empty at layer granularity.
    #[serde(default)]
    pub relu_channels: String,
    /// Per-channel placement: the member's cost budget (fraction of the
    /// all-ReLU cost); 0 at layer granularity.
    #[serde(default)]
    pub budget: f64,
}

/// Per-strategy progress, saved with the state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub(crate) enum Progress {
    /// Not started.
    Start,
    /// Population-based training.
    Pbt {
        interval: usize,
        genomes: Vec<Genome>,
    },
    /// DELPHI's planner: one population per count of quadratic layers.
    Delphi {
        run: usize,
        interval: usize,
        genomes: Vec<Genome>,
    },
    /// The greedy rule.
    Greedy(crate::strategy::greedy::GreedyState),
    /// Finished.
    Done,
}

/// The saved state of a search (besides the members' checkpoints).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct State {
    pub version: u32,
    pub config: PlanConfig,
    pub progress: Progress,
    pub evaluations: Vec<Evaluation>,
    /// Indices (into `evaluations`) of the front, whose networks are kept.
    pub front: Vec<usize>,
    /// Training steps used.
    pub steps: usize,
    /// Seconds spent, over all processes (base training included).
    pub seconds: f64,
}

const STATE_VERSION: u32 = 2;

/// What a finished search returns.
#[derive(Debug)]
pub struct Outcome {
    /// The strategy that ran.
    pub strategy: Strategy,
    /// Every evaluation.
    pub evaluations: Vec<Evaluation>,
    /// The front: evaluations and where their networks are, cheapest first.
    pub front: Vec<(Evaluation, PathBuf)>,
    /// The chosen evaluation (cheapest meeting the threshold), if any.
    pub chosen: Option<Evaluation>,
    /// The closest plan (the most accurate) when none met the threshold.
    pub closest: Option<Evaluation>,
    /// Where the chosen (or closest) plan was written.
    pub plan: PathBuf,
    /// Cost of the all-ReLU network.
    pub relu_cost: Cost,
    /// ReLU activations of the all-ReLU network.
    pub relus: usize,
    /// Validation accuracy of the all-ReLU base.
    pub base_valid_accuracy: f64,
    /// Whether the base was the provider's trained network (not trained here).
    pub base_given: bool,
    /// Whether this run resumed a saved state.
    pub resumed: bool,
    /// Seconds spent searching, over all processes.
    pub search_seconds: f64,
    /// Training steps used and allowed.
    pub steps: (usize, usize),
    /// Notes for the user (assumed normalisation, import notes).
    pub notes: Vec<String>,
}

impl Outcome {
    /// The plan for `threshold`: the cheapest front plan meeting it.
    pub fn plan_for(&self, threshold: f64) -> Option<&(Evaluation, PathBuf)> {
        let pts: Vec<(f64, f64)> = self
            .front
            .iter()
            .map(|(e, _)| (e.valid_accuracy, e.cost))
            .collect();
        policy::choose(&pts, threshold).map(|i| &self.front[i])
    }
}

/// Loads the dataset the configuration names.
pub fn load_data(c: &PlanConfig) -> Result<Dataset> {
    let mut d = data::load(c.dataset, c.data_dir.as_deref(), c.valid_size, c.seed)?;
    if let Some(n) = c.train_limit {
        d.train = d.train.take(n);
    }
    if let Some(n) = c.test_limit {
        d.test = d.test.take(n);
    }
    Ok(d)
}

/// The compute device the configuration names.
pub fn device(c: &PlanConfig) -> Result<Device> {
    let choice: DeviceChoice = c.device.parse().map_err(PlanError::Config)?;
    choice
        .device()
        .map_err(|e| PlanError::Config(e.to_string()))
}

/// The `delphi` command (protocol side): next to this executable, else on
/// the PATH. The planner does not link the protocol engine itself (SEAL and
/// polars both bundle zstd and cannot share one binary), so it calibrates
/// and verifies through `delphi`.
pub fn delphi_command() -> std::process::Command {
    let local = std::env::current_exe()
        .ok()
        .map(|p| p.with_file_name("delphi"))
        .filter(|p| p.is_file());
    std::process::Command::new(local.unwrap_or_else(|| PathBuf::from("delphi")))
}

/// Where the cost model is: `--cost-model`, else results/cost-model.json,
/// else one calibrated (quickly, with `delphi cost calibrate`) into `out`.
pub fn cost_model_path(c: &PlanConfig, out: &Path, say: &dyn Fn(&str)) -> Result<PathBuf> {
    let path = c
        .cost_model
        .clone()
        .unwrap_or_else(|| PathBuf::from("results/cost-model.json"));
    if path.is_file() {
        let differs = CostModel::load(&path)
            .ok()
            .and_then(|m| m.provenance.differs_from_here());
        match differs {
            None => return Ok(path),
            // The user's own model: used as given, with a warning.
            Some(why) if c.cost_model.is_some() => {
                say(&format!("warning: {why}"));
                return Ok(path);
            }
            // The default model from another machine: recalibrated here.
            Some(why) => {
                let local = out.join("cost-model.json");
                let local_ok = CostModel::load(&local)
                    .ok()
                    .is_some_and(|m| m.provenance.differs_from_here().is_none());
                if local_ok {
                    return Ok(local);
                }
                say(&format!("{why}; calibrating (quick) for this run"));
                return calibrate_into(out, &local);
            }
        }
    }
    if c.cost_model.is_some() {
        return Err(PlanError::Config(format!(
            "no cost model at {} (run `delphi cost calibrate --out {}`)",
            path.display(),
            path.display()
        )));
    }
    let local = out.join("cost-model.json");
    if local.is_file() {
        return Ok(local);
    }
    say(&format!(
        "no cost model at {}: calibrating (quick) into {}",
        path.display(),
        local.display()
    ));
    calibrate_into(out, &local)
}

/// Runs a quick `delphi cost calibrate` into `local` (in the run folder `out`).
fn calibrate_into(out: &Path, local: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    let status = delphi_command()
        .args(["cost", "calibrate", "--quick", "--out"])
        .arg(local)
        .status()
        .map_err(|e| {
            PlanError::Config(format!(
                "running `delphi cost calibrate` ({e}); build it with `cargo build --release -p delphi-cli` \
                 or pass --cost-model"
            ))
        })?;
    if !status.success() {
        return Err(PlanError::Config(format!(
            "`delphi cost calibrate` failed ({status})"
        )));
    }
    Ok(local.to_path_buf())
}

/// The all-ReLU base of a search.
#[derive(Clone, Debug)]
pub struct Base {
    /// Its description (batch norms kept, weights in a sidecar).
    pub plan: PathBuf,
    /// Whether it is the provider's trained network (not trained here).
    pub given: bool,
    /// What resolving the architecture noted.
    pub notes: Vec<String>,
}

fn base_train_config(c: &PlanConfig) -> TrainConfig {
    let mut t = TrainConfig::new(c.dataset);
    t.arch = c.arch();
    t.data_dir = c.data_dir.clone();
    t.epochs = c.base_epochs;
    t.batch_size = c.batch_size;
    t.seed = c.seed;
    t.train_limit = c.train_limit;
    t.valid_size = c.valid_size;
    t
}

/// Makes (or finds, cached in `<out>/base/model.json`) the all-ReLU base:
/// the provider's trained network as it is, or the architecture trained for
/// `base_epochs` epochs.
pub fn prepare_base(
    c: &PlanConfig,
    data: &Dataset,
    device: &Device,
    quiet: bool,
    say: &dyn Fn(&str),
) -> Result<Base> {
    let resolved = arch::resolve(&c.arch(), c.dataset, c.seed)?;
    let mut notes = resolved.notes.clone();
    for n in &notes {
        say(&format!("note: {n}"));
    }
    let base_dir = c.out().join("base");
    let plan = base_dir.join("model.json");
    let given = resolved.trained;
    if !plan.is_file() {
        let mut net = resolved.network.clone();
        if given {
            let quads = Placement::of(&net).quad_count();
            if quads > 0 {
                notes.push(format!(
                    "the given network has {quads} quadratic activation layers; the search \
                     starts from it with every layer ReLU"
                ));
            }
            Placement::all_relu(net.activation_layers().len()).apply(&mut net)?;
            say("the given network is the all-ReLU base (not retrained)");
        } else {
            say("training the all-ReLU base network (once; cached)");
            let ck = base_dir.join("checkpoint");
            let mut tr = if Trainer::has_checkpoint(&ck) {
                Trainer::load_checkpoint(&ck, device)?
            } else {
                Trainer::new(base_train_config(c), device)?
            };
            let per = tr.steps_per_epoch(&data.train);
            while !tr.finished() {
                tr.train_steps(data, per, quiet)?;
                tr.save_checkpoint(&ck)?;
            }
            net = tr.export_unfolded()?;
        }
        net.save(&plan, WeightStorage::Sidecar)?;
    }
    Ok(Base { plan, given, notes })
}

/// Prices placements of one architecture.
pub(crate) struct Pricing {
    pub model: CostModel,
    pub link: Option<Link>,
    template: Network,
    /// ReLU activations (elements) of each activation layer.
    pub layer_relus: Vec<usize>,
    /// Reduced-ReLU windows (description layer, window) that every priced
    /// placement gets on its ReLU layers: the base network's
    /// (`--relu-bits auto`), or none.
    pub windows: Vec<(usize, Option<delphi_crypto::relu::ReluBits>)>,
}

impl Pricing {
    fn new(model: CostModel, link: Option<Link>, base: &Network) -> Result<Pricing> {
        let shapes = base.validate()?;
        let layer_relus = base
            .activation_layers()
            .iter()
            .map(|&i| shapes[i].len())
            .collect();
        Ok(Pricing {
            model,
            link,
            template: base.architecture_only(),
            layer_relus,
            windows: Vec::new(),
        })
    }

    /// Predicted cost of a network's architecture as it stands (its own
    /// activations and ReLU windows).
    pub fn price_net(&self, net: &Network) -> Result<Cost> {
        let prog = FixedProgram::lower(&net.architecture_only())?;
        Ok(self.model.predict(&prog, self.link.as_ref()).total)
    }

    /// Predicted cost of a per-channel placement (per activation layer, a
    /// mask with `true` for ReLU channels; `None` or missing: the layer's
    /// `placement` entry decides).
    pub fn price_masks(&self, p: &Placement, masks: &[Option<Vec<bool>>]) -> Result<Cost> {
        let mut net = self.template.clone();
        p.apply(&mut net)?;
        apply_masks(&mut net, masks);
        for &(layer, bits) in &self.windows {
            if let Some(l) = net.layers.get_mut(layer).filter(|l| l.has_relu()) {
                l.relu_bits = bits;
            }
        }
        if net.layers.iter().any(|l| l.relu_bits.is_some()) {
            net.version = net.version.max(3);
        }
        let prog = FixedProgram::lower(&net)?;
        Ok(self.model.predict(&prog, self.link.as_ref()).total)
    }

    /// ReLU activations left under a per-channel placement.
    pub fn relus_masks(&self, p: &Placement, masks: &[Option<Vec<bool>>]) -> usize {
        self.layer_relus
            .iter()
            .enumerate()
            .map(|(k, &n)| match masks.get(k) {
                Some(Some(m)) if !m.is_empty() => n / m.len() * m.iter().filter(|&&r| r).count(),
                _ if p.is_quad(k) => 0,
                _ => n,
            })
            .sum()
    }

    /// Per activation layer: what turning one of its channels quadratic
    /// saves under `objective` (the layer made quadratic, the others ReLU,
    /// against all-ReLU, divided by its channels).
    pub fn channel_savings(&self, objective: crate::config::Objective) -> Result<Vec<f64>> {
        let layers = self.layer_relus.len();
        let all = objective.of(&self.price(&Placement::all_relu(layers))?);
        let shapes = self.template.validate()?;
        let acts = self.template.activation_layers();
        (0..layers)
            .map(|k| {
                let mut p = Placement::all_relu(layers);
                p.set(k, true);
                let one = objective.of(&self.price(&p)?);
                let channels = shapes[acts[k]].channels.max(1) as f64;
                Ok(((all - one) / channels).max(0.0))
            })
            .collect()
    }

    /// Predicted cost of a placement.
    pub fn price(&self, p: &Placement) -> Result<Cost> {
        self.price_masks(p, &[])
    }

    /// ReLU activations left under a placement.
    pub fn relus(&self, p: &Placement) -> usize {
        self.relus_masks(p, &[])
    }
}

/// Makes the activation layers with a mask mixed (ReLU where `true`), with
/// the default quadratic on the others; all-ReLU and all-quadratic masks
/// give plain layers. Only the architecture matters (pricing).
pub(crate) fn apply_masks(net: &mut Network, masks: &[Option<Vec<bool>>]) {
    use delphi_net::{Activation, Op};
    let acts = net.activation_layers();
    for (k, &i) in acts.iter().enumerate() {
        let Some(Some(m)) = masks.get(k) else {
            continue;
        };
        let n = m.len();
        let Activation::Quad { a, b, c } = Activation::DEFAULT_QUAD else {
            continue;
        };
        net.layers[i].op = Op::Activation(if m.iter().all(|&r| r) {
            Activation::Relu
        } else if m.iter().all(|&r| !r) {
            Activation::DEFAULT_QUAD
        } else {
            Activation::Mixed {
                relu: m.clone(),
                a: vec![a; n],
                b: vec![b; n],
                c: vec![c; n],
            }
        });
    }
    if acts.iter().any(|&i| {
        matches!(
            net.layers[i].op,
            Op::Activation(delphi_net::Activation::Mixed { .. })
        )
    }) {
        net.version = net.version.max(2);
    }
}

/// Per activation layer, the percentage of channels that keep ReLU.
pub fn relu_channel_percent(masks: &[Option<Vec<bool>>], p: &Placement) -> String {
    masks
        .iter()
        .enumerate()
        .map(|(k, m)| match m {
            Some(m) if !m.is_empty() => {
                let pct = 100.0 * m.iter().filter(|&&r| r).count() as f64 / m.len() as f64;
                format!("{pct:.0}")
            }
            _ if p.is_quad(k) => "0".into(),
            _ => "100".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Training images whose ReLU inputs size the reduced-ReLU windows.
pub const RELU_BITS_IMAGES: usize = 2000;
/// Validation images on which reduced windows must keep the accuracy.
pub const RELU_BITS_VALID_IMAGES: usize = 2000;

type Windows = Vec<(usize, Option<delphi_crypto::relu::ReluBits>)>;

/// Gives a trained `net` its own reduced-ReLU windows (`--relu-bits auto`):
/// per layer the narrowest window holding twice the largest ReLU input seen
/// on [`RELU_BITS_IMAGES`] training images (else eight times), low bit at
/// the truncation; then the low bit raised for every layer together, one
/// bit at a time (at most four), while the accuracy holds. A choice is
/// kept when the fixed-point accuracy on the first
/// [`RELU_BITS_VALID_IMAGES`] validation images — every ReLU giving the
/// protocol's result in distribution, paired on the same images — stays
/// within [`RELU_BITS_TOLERANCE`] of the full-width network's; with no
/// such choice the network keeps full-width ReLUs. Returns what was
/// decided (for the plan's metadata).
pub fn choose_relu_windows(
    net: &mut Network,
    data: &Dataset,
    say: &dyn Fn(&str),
) -> Result<serde_json::Value> {
    use delphi_train::train::{fixed_accuracy, relu_input_peaks, windows_from_peaks};
    if !net.layers.iter().any(|l| l.has_relu()) {
        return Ok(serde_json::json!({
            "mode": "auto",
            "windows": "none (no ReLU layers)",
        }));
    }
    let n = data.valid.len().min(RELU_BITS_VALID_IMAGES);
    let valid = data.valid.select(&(0..n).collect::<Vec<_>>());
    let full = fixed_accuracy(net, &valid)?;
    say(&format!(
        "full-width ReLUs: fixed-point validation accuracy {:.2} % on {n} images",
        full * 100.0
    ));
    let try_windows = |w: &Windows| -> Result<Option<(Network, f64)>> {
        let mut cand = net.clone();
        delphi_net::window::set_windows(&mut cand, w)?;
        let acc = fixed_accuracy(&cand, &valid)?;
        say(&format!(
            "windows {}: {:.2} %",
            describe_windows(w),
            acc * 100.0
        ));
        Ok((acc >= full - RELU_BITS_TOLERANCE).then_some((cand, acc)))
    };
    let peaks = relu_input_peaks(net, &data.train, RELU_BITS_IMAGES)?;
    for margin in [2.0, 8.0] {
        let w = windows_from_peaks(&peaks, margin);
        if w.iter().all(|(_, b)| b.is_none()) {
            break;
        }
        let Some(mut best) = try_windows(&w)?.map(|(c, a)| (w.clone(), c, a)) else {
            continue;
        };
        for extra in 1..=4u32 {
            let coarser: Windows = w
                .iter()
                .map(|&(l, b)| {
                    let b = b.map(|b| delphi_crypto::relu::ReluBits {
                        lo: b.lo + extra,
                        hi: b.hi,
                    });
                    // A window that cannot drop more bits keeps the last one.
                    let prev = best.0.iter().find(|(pl, _)| *pl == l).and_then(|x| x.1);
                    (l, b.filter(|b| b.lo + 2 <= b.hi).or(prev))
                })
                .collect();
            match try_windows(&coarser)? {
                Some((c, a)) => best = (coarser, c, a),
                None => break,
            }
        }
        let (w, cand, acc) = best;
        *net = cand;
        return Ok(serde_json::json!({
            "mode": "auto",
            "margin": margin,
            "windows": describe_windows(&w),
            "fixed_valid_accuracy_full": full,
            "fixed_valid_accuracy_reduced": acc,
            "valid_images": n,
        }));
    }
    Ok(serde_json::json!({
        "mode": "auto",
        "windows": "full (no window kept the accuracy: every layer keeps the 41-bit circuit)",
        "fixed_valid_accuracy_full": full,
        "valid_images": n,
    }))
}

/// `layer:lo..hi` per window (`full` where none), space separated.
pub fn describe_windows(w: &[(usize, Option<delphi_crypto::relu::ReluBits>)]) -> String {
    w.iter()
        .map(|(l, b)| match b {
            Some(b) => format!("{l}:{b}"),
            None => format!("{l}:full"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per-channel placement: the fraction of a member's run by which its mask
/// must be frozen (the rest fine-tunes with it).
pub const GATE_FREEZE_BY: f32 = 0.5;
/// Per-channel placement: λ at the start of a member's mask learning.
pub const GATE_PENALTY: f32 = 0.1;

/// A search in progress: what the strategies share.
pub struct Search<'a> {
    /// The configuration.
    pub c: PlanConfig,
    /// The run folder.
    pub out: PathBuf,
    pub(crate) device: Device,
    /// Training, validation and test images.
    pub data: Dataset,
    pub(crate) pricing: Pricing,
    /// The base network (unfolded, with weights), as saved.
    pub base_plan: PathBuf,
    pub(crate) base_cfg: TrainConfig,
    /// Validation accuracy of the base.
    pub base_valid_accuracy: f64,
    base_given: bool,
    /// Cost of the all-ReLU network.
    pub relu_cost: Cost,
    /// Activation layers.
    pub layers: usize,
    /// Training steps per epoch.
    pub steps_per_epoch: usize,
    /// Steps between evaluations of a population.
    pub interval_steps: usize,
    /// Per-channel placement: per activation layer, the saving of one
    /// channel turned quadratic (objective units; empty at layer granularity).
    pub channel_saving: Vec<f64>,
    /// The all-quadratic network's cost as a fraction of the all-ReLU's.
    pub quad_floor: f64,
    /// Training steps allowed.
    pub budget: usize,
    pub(crate) st: State,
    pub(crate) resumed: bool,
    notes: Vec<String>,
    lineage: std::fs::File,
    say: &'a dyn Fn(&str),
    started: Instant,
    last: Instant,
    bar: ProgressBar,
}

impl<'a> Search<'a> {
    /// Opens (or resumes) the search the configuration describes: loads the
    /// data and cost model and makes the base network.
    pub fn open(c: &PlanConfig, quiet: bool, say: &'a dyn Fn(&str)) -> Result<Search<'a>> {
        c.check().map_err(PlanError::Config)?;
        let started = Instant::now();
        let out = c.out();
        std::fs::create_dir_all(&out).map_err(|e| file_err(&out, e))?;
        let device = device(c)?;
        let data = load_data(c)?;
        say(&format!(
            "{} on {} ({} strategy): {} training, {} validation, {} test images; threshold {:.1} %",
            c.arch(),
            c.dataset.name(),
            c.strategy.name(),
            data.train.len(),
            data.valid.len(),
            data.test.len(),
            c.accuracy * 100.0
        ));
        let model = CostModel::load(&cost_model_path(c, &out, say)?)?;
        let link = match (&c.bandwidth, &c.rtt) {
            (Some(b), Some(r)) => Some(Link::parse(b, r)?),
            _ => None,
        };

        let base = prepare_base(c, &data, &device, quiet, say)?;
        let (base_plan, base_given, mut notes) = (base.plan, base.given, base.notes);
        let base_cfg = base_train_config(c);
        let base_net = Network::load(&base_plan)?;
        let mut pricing = Pricing::new(model, link, &base_net)?;
        if c.relu_bits == ReluBitsMode::Auto {
            pricing.windows =
                delphi_train::train::relu_windows(&base_net, &data.train, RELU_BITS_IMAGES, 2.0)?;
            say(&format!(
                "ReLU windows of the base (priced for every placement; each plan gets its own): {}",
                describe_windows(&pricing.windows)
            ));
            if !pricing.model.has_reduced_relus() {
                notes.push(
                    "the cost model predates reduced ReLUs: their time is scaled from the full \
                     circuit by AND gates (recalibrate with `delphi cost calibrate`)"
                        .into(),
                );
            }
        }
        let layers = base_net.activation_layers().len();
        if layers == 0 {
            return Err(PlanError::Config(format!(
                "{} has no activation layers: there is nothing to plan",
                c.arch()
            )));
        }
        let relu_cost = pricing.price(&Placement::all_relu(layers))?;
        let base_tr = Trainer::new(
            TrainConfig {
                init: Some(base_plan.clone()),
                ..base_cfg.clone()
            },
            &device,
        )?;
        let base_valid_accuracy = base_tr.accuracy(&data.valid);
        let steps_per_epoch = base_tr.steps_per_epoch(&data.train);
        drop(base_tr);
        say(&format!(
            "base: validation {:.2} %, {} ReLUs, {} {:.4}",
            base_valid_accuracy * 100.0,
            pricing.relus(&Placement::all_relu(layers)),
            c.objective.label(),
            c.objective.of(&relu_cost)
        ));
        if base_given && base_valid_accuracy < 1.5 / c.dataset.classes() as f64 {
            notes.push(format!(
                "the given network scores {:.1} % on the validation images, near chance: check \
                 its input normalisation (delphi import --input-mean/--input-std)",
                base_valid_accuracy * 100.0
            ));
            say(notes.last().map_or("", |s| s.as_str()));
        }
        let (channel_saving, quad_floor) = if c.granularity == Granularity::Channel {
            let all_quad = c
                .objective
                .of(&pricing.price(&Placement::all_quad(layers))?);
            (
                pricing.channel_savings(c.objective)?,
                all_quad / c.objective.of(&relu_cost).max(1e-30),
            )
        } else {
            (Vec::new(), 0.0)
        };
        let budget = ((c.budget_epochs() * steps_per_epoch as f64).round() as usize).max(1);
        let interval_steps = steps_per_epoch.div_ceil(c.intervals_per_epoch).max(1);

        let state_path = out.join("state.json");
        let (st, resumed) = if state_path.is_file() {
            let text =
                std::fs::read_to_string(&state_path).map_err(|e| file_err(&state_path, e))?;
            let st: State = serde_json::from_str(&text).map_err(|e| {
                file_err(
                    &state_path,
                    format!("{e} (a search saved by another version? use another --out)"),
                )
            })?;
            if st.version != STATE_VERSION {
                return Err(file_err(
                    &state_path,
                    format!(
                        "state version {} (this build writes {STATE_VERSION}); use another --out",
                        st.version
                    ),
                ));
            }
            if st.config != *c {
                return Err(PlanError::Config(format!(
                    "{} holds a search with another configuration ({}); use another --out or delete it",
                    out.display(),
                    delphi_train::train::config_changes(&st.config, c).join("; ")
                )));
            }
            (st, true)
        } else {
            (
                State {
                    version: STATE_VERSION,
                    config: c.clone(),
                    progress: Progress::Start,
                    evaluations: Vec::new(),
                    front: Vec::new(),
                    steps: 0,
                    seconds: started.elapsed().as_secs_f64(),
                },
                false,
            )
        };
        let lineage_path = out.join("lineage.log");
        let lineage = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&lineage_path)
            .map_err(|e| file_err(&lineage_path, e))?;
        let bar = ProgressBar::new(budget as u64);
        if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(bar_style(
            "search [{bar:30}] {percent:>3}% of the training budget ({elapsed} elapsed, ~{eta} left)  {msg}",
        ));
        bar.set_position(st.steps as u64);
        Ok(Search {
            c: c.clone(),
            out,
            device,
            data,
            pricing,
            base_plan,
            base_cfg,
            base_valid_accuracy,
            base_given,
            relu_cost,
            layers,
            steps_per_epoch,
            interval_steps,
            channel_saving,
            quad_floor,
            budget,
            st,
            resumed,
            notes,
            lineage,
            say,
            started,
            last: Instant::now(),
            bar,
        })
    }

    /// Prints a progress line (and keeps the bar's message).
    pub fn say(&self, m: &str) {
        self.bar.suspend(|| (self.say)(m));
    }

    /// The training configuration of a member with `genome`, training
    /// `steps` steps from the base; `k` varies its seed.
    pub fn member_config(&self, g: &Genome, k: u64, steps: usize) -> TrainConfig {
        let mut t = self.base_cfg.clone();
        t.init = Some(self.base_plan.clone());
        t.steps = Some(steps.max(1));
        t.epochs = steps.max(1).div_ceil(self.steps_per_epoch.max(1));
        t.activations = Some(g.placement.to_string());
        t.lr = g.lr;
        t.momentum = g.momentum;
        t.weight_decay = g.weight_decay;
        t.grad_clip = Some(1.0);
        t.distill = (g.distill_weight > 0.0).then(|| Distill {
            teacher: self.base_plan.clone(),
            weight: g.distill_weight,
            temperature: 4.0,
        });
        t.swap = (g.swap_span > 0.0).then_some(Swap {
            start: 0.0,
            end: g.swap_span,
        });
        t.seed = self.c.seed.wrapping_add(1000 * (k + 1));
        t.validate_epochs = false;
        if self.c.granularity == Granularity::Channel {
            // Every layer starts ReLU; the mask is learned per channel.
            let relu_cost = self.c.objective.of(&self.relu_cost);
            t.activations = None;
            t.swap = None;
            t.gates = Some(Gates {
                budget: g.budget * relu_cost,
                relu_cost,
                channel_saving: self.channel_saving.clone(),
                freeze_by: GATE_FREEZE_BY,
                penalty: GATE_PENALTY,
            });
        }
        t
    }

    /// A new member.
    pub fn member(&self, g: &Genome, k: u64, steps: usize) -> Result<Trainer> {
        Ok(Trainer::new(self.member_config(g, k, steps), &self.device)?)
    }

    /// Trains `tr` for at most `steps` steps, counting them against the budget.
    pub fn train(&mut self, tr: &mut Trainer, steps: usize) -> Result<usize> {
        let taken = tr.train_steps(&self.data, steps, true)?;
        self.st.steps += taken;
        self.bar.set_position(self.st.steps as u64);
        Ok(taken)
    }

    /// Training steps left in the budget.
    pub fn budget_left(&self) -> usize {
        self.budget.saturating_sub(self.st.steps)
    }

    /// Whether the wall-time budget (`--budget`) is spent.
    pub fn out_of_time(&self) -> bool {
        self.c
            .budget_minutes
            .is_some_and(|b| self.started.elapsed().as_secs_f64() > b * 60.0)
    }

    /// Evaluates a member: validation accuracy, predicted cost, fitness
    /// (from `fitness(accuracy, cost, ReLUs left)`); records it and keeps its
    /// network if it joins the front.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate(
        &mut self,
        tr: &mut Trainer,
        g: &Genome,
        interval: usize,
        member: usize,
        stage: String,
        fitness: &dyn Fn(f64, f64, usize) -> f64,
    ) -> Result<Evaluation> {
        let progress = tr.progress(&self.data.train);
        let modes = tr.modes_at(progress);
        let settled = modes.iter().all(|m| {
            !matches!(
                m,
                delphi_train::model::ActMode::Blend { .. } | delphi_train::model::ActMode::Gated
            )
        });
        let acc = tr.accuracy(&self.data.valid);
        let placement = Placement::new(tr.placement());
        let masks = tr.channel_masks();
        let cost = self.pricing.price_masks(&placement, &masks)?;
        let relus = self.pricing.relus_masks(&placement, &masks);
        let relu_channels = if masks.iter().any(Option::is_some) {
            relu_channel_percent(&masks, &placement)
        } else {
            String::new()
        };
        let obj = self.c.objective.of(&cost);
        let e = Evaluation {
            index: self.st.evaluations.len(),
            stage,
            interval,
            member,
            quads: placement.quad_count(),
            placement,
            relus,
            settled,
            valid_accuracy: acc,
            online_s: cost.online_s,
            online_bytes: cost.online_bytes,
            offline_s: cost.offline_s,
            offline_bytes: cost.offline_bytes,
            cost: obj,
            fitness: fitness(acc, obj, relus),
            lr: g.lr,
            momentum: g.momentum,
            weight_decay: g.weight_decay,
            distill_weight: g.distill_weight,
            swap_span: g.swap_span,
            steps: self.st.steps,
            relu_channels,
            budget: g.budget,
        };
        self.st.evaluations.push(e.clone());
        if settled {
            self.offer(tr, &e)?;
        }
        Ok(e)
    }

    fn front_file(&self, index: usize) -> PathBuf {
        self.out.join("front").join(format!("{index}.json"))
    }

    /// Adds a settled evaluation to the front if nothing there beats it,
    /// keeping its network; drops what it beats.
    fn offer(&mut self, tr: &Trainer, e: &Evaluation) -> Result<()> {
        let mut idx = self.st.front.clone();
        idx.push(e.index);
        let pts: Vec<(f64, f64)> = idx
            .iter()
            .map(|&i| {
                let x = &self.st.evaluations[i];
                (x.valid_accuracy, x.cost)
            })
            .collect();
        let keep: Vec<usize> = policy::pareto(&pts).into_iter().map(|k| idx[k]).collect();
        if !keep.contains(&e.index) {
            return Ok(());
        }
        // A plan whose values can leave the protocol's exact range (on the
        // training data's measured activation ranges or sampled inputs) is
        // never a candidate: the engine would refuse it. Checked only for a
        // plan that would join the front; the front is left as it was.
        let mut net = tr.export()?;
        let windows = match self.c.relu_bits {
            ReluBitsMode::Auto => Some(self.choose_windows(&mut net)?),
            ReluBitsMode::Full => None,
        };
        delphi_train::train::record_ranges(&mut net, &self.data.train, 64)?;
        let prog = delphi_net::FixedProgram::lower(&net)?;
        if let Err(why) = delphi_net::range::analyse_network(&net, &prog)?.check() {
            self.say(&format!(
                "placement {} left out of the front: {why}",
                e.placement
            ));
            return Ok(());
        }
        net.metadata.planner_run = Some(self.c.name());
        let cost = self.pricing.price_net(&net)?;
        net.metadata.predicted_cost = serde_json::to_value(cost).ok();
        if let Some(w) = windows {
            net.metadata.extra.insert("relu_bits".into(), w);
        }
        net.metadata
            .extra
            .insert("valid_accuracy".into(), serde_json::json!(e.valid_accuracy));
        net.save(&self.front_file(e.index), WeightStorage::Sidecar)?;
        for &old in &self.st.front {
            if !keep.contains(&old) {
                let f = self.front_file(old);
                let _ = std::fs::remove_file(&f);
                let _ = std::fs::remove_file(f.with_extension("safetensors"));
            }
        }
        self.st.front = keep;
        let best = policy::choose(
            &self
                .st
                .front
                .iter()
                .map(|&i| {
                    let x = &self.st.evaluations[i];
                    (x.valid_accuracy, x.cost)
                })
                .collect::<Vec<_>>(),
            self.c.accuracy,
        )
        .map(|k| &self.st.evaluations[self.st.front[k]]);
        self.bar.set_message(match best {
            Some(b) => format!(
                "best {} ({} quad) valid {:.2}% cost {:.4}",
                b.placement,
                b.quads,
                b.valid_accuracy * 100.0,
                b.cost
            ),
            None => "no plan meets the threshold yet".into(),
        });
        Ok(())
    }

    fn choose_windows(&self, net: &mut Network) -> Result<serde_json::Value> {
        choose_relu_windows(net, &self.data, &|_| {})
    }

    /// Appends a line to `lineage.log`.
    pub fn lineage(&mut self, line: serde_json::Value) -> Result<()> {
        writeln!(self.lineage, "{line}").map_err(|e| file_err(&self.out.join("lineage.log"), e))
    }

    /// Saves members' checkpoints (under `members/<k>`) and then the state
    /// that points at them.
    pub(crate) fn save(&mut self, members: &[&Trainer]) -> Result<()> {
        for (k, tr) in members.iter().enumerate() {
            tr.save_checkpoint(&self.out.join(format!("members/{k}")))?;
        }
        self.st.seconds += self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let tmp = self.out.join("state.json.tmp");
        let bytes = serde_json::to_vec(&self.st).map_err(|e| file_err(&tmp, e))?;
        std::fs::write(&tmp, bytes).map_err(|e| file_err(&tmp, e))?;
        let path = self.out.join("state.json");
        std::fs::rename(&tmp, &path).map_err(|e| file_err(&path, e))
    }

    /// Loads the members saved by [`Search::save`].
    pub(crate) fn load_members(&self, n: usize) -> Result<Vec<Trainer>> {
        (0..n)
            .map(|k| {
                Ok(Trainer::load_checkpoint(
                    &self.out.join(format!("members/{k}")),
                    &self.device,
                )?)
            })
            .collect()
    }

    /// Ends the search: writes `plan.json` (the cheapest front plan meeting
    /// the threshold, else the most accurate) and returns the outcome.
    pub fn finish(mut self) -> Result<Outcome> {
        self.st.progress = Progress::Done;
        self.save(&[])?;
        self.bar.finish_and_clear();
        let front: Vec<(Evaluation, PathBuf)> = self
            .st
            .front
            .iter()
            .map(|&i| (self.st.evaluations[i].clone(), self.front_file(i)))
            .collect();
        let pts: Vec<(f64, f64)> = front
            .iter()
            .map(|(e, _)| (e.valid_accuracy, e.cost))
            .collect();
        let plan = self.out.join("plan.json");
        let (chosen, closest) = match policy::choose(&pts, self.c.accuracy) {
            Some(k) => (Some(front[k].clone()), None),
            None => (
                None,
                front
                    .iter()
                    .max_by(|a, b| a.0.valid_accuracy.total_cmp(&b.0.valid_accuracy))
                    .cloned(),
            ),
        };
        if let Some((_, file)) = chosen.as_ref().or(closest.as_ref()) {
            let net = Network::load(file)?;
            net.save(&plan, WeightStorage::Inline)?;
        }
        Ok(Outcome {
            strategy: self.c.strategy,
            evaluations: self.st.evaluations.clone(),
            front,
            chosen: chosen.map(|c| c.0),
            closest: closest.map(|c| c.0),
            plan,
            relu_cost: self.relu_cost,
            relus: self.pricing.relus(&Placement::all_relu(self.layers)),
            base_valid_accuracy: self.base_valid_accuracy,
            base_given: self.base_given,
            resumed: self.resumed,
            search_seconds: self.st.seconds,
            steps: (self.st.steps, self.budget),
            notes: self.notes,
        })
    }
}

/// Runs (or resumes) the search the configuration describes.
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
    match c.strategy {
        Strategy::Pbt => crate::strategy::pbt::run(&mut s)?,
        Strategy::Delphi => crate::strategy::delphi::run(&mut s)?,
        Strategy::Greedy => crate::strategy::greedy::run(&mut s)?,
    }
    s.finish()
}
