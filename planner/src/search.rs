//! Population-based search over ReLU/quadratic placements.
//!
//! 1. An all-ReLU network is trained once (cached in `<out>/base/`); it is
//!    every member's starting point and the teacher they distil from.
//! 2. Each member has weights and a genome: which activation layers are
//!    quadratic, learning rate, momentum, weight decay, distillation weight
//!    and how long a swap takes. Quadratic layers start as ReLU and blend
//!    into their quadratic over that span, so no member falls off a cliff.
//! 3. At every ready interval each member trains, is evaluated on the
//!    validation set and priced by the cost model (its *predicted* cost
//!    under the real protocol). Fitness: −cost if the accuracy meets the
//!    threshold, otherwise −cost minus a penalty that grows with the
//!    shortfall — members below the threshold rank last but stay in play.
//! 4. The bottom quantile copies weights and genome from a top-quantile
//!    member (exploit) and perturbs them (explore: hyperparameters ×0.8 or
//!    ×1.2, sometimes resampled, within bounds; with probability ½ one more
//!    ReLU layer starts swapping to quadratic — toward cheaper plans).
//! 5. Every evaluation is a row of `members.csv`; every exploit/explore a
//!    line of the append-only `lineage.log`. Evaluations of finished swaps
//!    that meet the threshold and are the cheapest so far are exported as
//!    the candidate plan. State is saved after every interval: killing the
//!    process loses at most one interval, and rerunning the same command
//!    resumes.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use delphi_cost::{CostModel, Link};
use delphi_net::builtin::apply_placement;
use delphi_net::{FixedProgram, Network};
use delphi_train::data::{self, Dataset};
use delphi_train::device::DeviceChoice;
use delphi_train::train::{Distill, Swap, TrainConfig, Trainer};

use crate::config::PlanConfig;

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
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A bad setting.
    #[error("{0}")]
    Config(String),
}

/// Result alias of the planner.
pub type Result<T> = std::result::Result<T, PlanError>;

fn file_err(path: &Path, e: impl std::fmt::Display) -> PlanError {
    PlanError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A member's hyperparameters and placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Genome {
    /// Per activation layer: quadratic?
    pub quad: Vec<bool>,
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Weight of the distillation term.
    pub distill_weight: f32,
    /// Fraction of the run a swap takes.
    pub swap_span: f32,
}

/// Declared bounds of the hyperparameters.
const LR: (f64, f64) = (1e-3, 0.2);
const MOMENTUM: (f64, f64) = (0.5, 0.99);
const WEIGHT_DECAY: (f64, f64) = (1e-5, 1e-2);
const DISTILL: (f32, f32) = (0.0, 1.0);
const SPAN: (f32, f32) = (0.05, 0.6);

fn log_uniform(rng: &mut ChaCha8Rng, (lo, hi): (f64, f64)) -> f64 {
    (lo.ln() + rng.gen::<f64>() * (hi.ln() - lo.ln())).exp()
}

impl Genome {
    fn random(layers: usize, quads: usize, rng: &mut ChaCha8Rng) -> Genome {
        let mut quad = vec![false; layers];
        let mut idx: Vec<usize> = (0..layers).collect();
        rand::seq::SliceRandom::shuffle(&mut idx[..], rng);
        for &i in idx.iter().take(quads) {
            quad[i] = true;
        }
        Genome {
            quad,
            lr: log_uniform(rng, (0.01, 0.05)),
            momentum: rng.gen_range(0.85..0.95),
            weight_decay: log_uniform(rng, (1e-4, 1e-3)),
            distill_weight: rng.gen_range(0.3..0.8),
            swap_span: rng.gen_range(0.2..0.5),
        }
    }

    /// Explore: each hyperparameter ×0.8 or ×1.2 (resampled with
    /// probability 0.2), clamped to its bounds.
    fn perturb(&mut self, rng: &mut ChaCha8Rng) {
        let f = |v: f64, b: (f64, f64), log: bool, rng: &mut ChaCha8Rng| -> f64 {
            let v = if rng.gen_bool(0.2) {
                if log {
                    log_uniform(rng, b)
                } else {
                    rng.gen_range(b.0..b.1)
                }
            } else if rng.gen_bool(0.5) {
                v * 0.8
            } else {
                v * 1.2
            };
            v.clamp(b.0, b.1)
        };
        self.lr = f(self.lr, LR, true, rng);
        self.momentum = f(self.momentum, MOMENTUM, false, rng);
        self.weight_decay = f(self.weight_decay, WEIGHT_DECAY, true, rng);
        self.distill_weight = f(
            self.distill_weight as f64,
            (DISTILL.0 as f64, DISTILL.1 as f64),
            false,
            rng,
        ) as f32;
        self.swap_span = f(
            self.swap_span as f64,
            (SPAN.0 as f64, SPAN.1 as f64),
            false,
            rng,
        ) as f32;
    }

    /// The placement as a string (`RQR`).
    pub fn placement(&self) -> String {
        self.quad
            .iter()
            .map(|&q| if q { 'Q' } else { 'R' })
            .collect()
    }
}

/// One evaluation of one member (a row of `members.csv`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evaluation {
    /// Interval (from 1).
    pub interval: usize,
    /// Member index.
    pub member: usize,
    /// Placement (`RQR`).
    pub placement: String,
    /// Quadratic layers.
    pub quads: usize,
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
    /// Fitness (higher is better).
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
}

/// The saved state of a search (besides the members' checkpoints).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    config: PlanConfig,
    interval: usize,
    genomes: Vec<Genome>,
    evaluations: Vec<Evaluation>,
    best: Option<Evaluation>,
    /// Seconds spent searching, over all processes (base training included).
    #[serde(default)]
    seconds: f64,
}

/// What a finished search returns.
#[derive(Debug)]
pub struct Outcome {
    /// Every evaluation.
    pub evaluations: Vec<Evaluation>,
    /// The chosen evaluation (cheapest above the threshold), if any.
    pub chosen: Option<Evaluation>,
    /// The closest plan when none met the threshold.
    pub closest: Option<Evaluation>,
    /// Where the chosen (or closest) plan was written.
    pub plan: PathBuf,
    /// Cost of the all-ReLU network.
    pub relu_cost: delphi_cost::Cost,
    /// Validation accuracy of the all-ReLU base.
    pub base_valid_accuracy: f64,
    /// Whether this run resumed a saved state.
    pub resumed: bool,
    /// Seconds spent searching, over all processes.
    pub search_seconds: f64,
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

fn device(c: &PlanConfig) -> Result<Device> {
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

/// Loads the cost model, calibrating (quickly, with `delphi cost calibrate`)
/// into the run folder when the file does not exist.
pub fn cost_model(c: &PlanConfig, out: &Path, say: &dyn Fn(&str)) -> Result<CostModel> {
    let path = c
        .cost_model
        .clone()
        .unwrap_or_else(|| PathBuf::from("results/cost-model.json"));
    if path.is_file() {
        return Ok(CostModel::load(&path)?);
    }
    let local = out.join("cost-model.json");
    if local.is_file() {
        return Ok(CostModel::load(&local)?);
    }
    say(&format!(
        "no cost model at {}: calibrating (quick) into {}",
        path.display(),
        local.display()
    ));
    let status = delphi_command()
        .args(["cost", "calibrate", "--quick", "--out"])
        .arg(&local)
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
    Ok(CostModel::load(&local)?)
}

struct Pricing {
    model: CostModel,
    link: Option<Link>,
    template: Network,
}

impl Pricing {
    fn price(&self, quad: &[bool]) -> Result<delphi_cost::Cost> {
        let mut net = self.template.clone();
        let p: String = quad.iter().map(|&q| if q { 'Q' } else { 'R' }).collect();
        apply_placement(&mut net, &p)?;
        let prog = FixedProgram::lower(&net)?;
        Ok(self.model.predict(&prog, self.link.as_ref()).total)
    }
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Runs (or resumes) a search. `say` receives progress lines for logs.
pub fn run(c: &PlanConfig, quiet: bool, say: &dyn Fn(&str)) -> Result<Outcome> {
    c.check().map_err(PlanError::Config)?;
    let start = Instant::now();
    let out = c.out();
    std::fs::create_dir_all(&out).map_err(|e| file_err(&out, e))?;
    let device = device(c)?;
    let data = load_data(c)?;
    say(&format!(
        "{} on {}: {} training, {} validation, {} test images; threshold {:.1} %",
        c.arch(),
        c.dataset.name(),
        data.train.len(),
        data.valid.len(),
        data.test.len(),
        c.accuracy * 100.0
    ));
    let model = cost_model(c, &out, say)?;
    let link = match (&c.bandwidth, &c.rtt) {
        (Some(b), Some(r)) => Some(Link::parse(b, r)?),
        _ => None,
    };

    // 1. The all-ReLU base, trained once.
    let base_dir = out.join("base");
    let base_plan = base_dir.join("model.json");
    let mut base_cfg = TrainConfig::new(c.dataset);
    base_cfg.arch = c.arch();
    base_cfg.data_dir = c.data_dir.clone();
    base_cfg.epochs = c.base_epochs;
    base_cfg.batch_size = c.batch_size;
    base_cfg.seed = c.seed;
    base_cfg.train_limit = c.train_limit;
    base_cfg.valid_size = c.valid_size;
    if !base_plan.is_file() {
        say("training the all-ReLU base network (once; cached)");
        let ck = base_dir.join("checkpoint");
        let mut tr = if Trainer::has_checkpoint(&ck) {
            Trainer::load_checkpoint(&ck, &device)?
        } else {
            Trainer::new(base_cfg.clone(), &device)?
        };
        let per = tr.steps_per_epoch(&data.train);
        while !tr.finished() {
            tr.train_steps(&data, per, quiet)?;
            tr.save_checkpoint(&ck)?;
        }
        let net = tr.export()?;
        net.save(&base_plan, delphi_net::WeightStorage::Inline)?;
    }
    let base_net = Network::load(&base_plan)?;
    let pricing = Pricing {
        model,
        link,
        template: base_net.architecture_only(),
    };
    let layers = base_net.activation_layers().len();
    let relu_cost = pricing.price(&vec![false; layers])?;
    let base_valid_accuracy = {
        let tr = Trainer::new(
            TrainConfig {
                init: Some(base_plan.clone()),
                ..base_cfg.clone()
            },
            &device,
        )?;
        tr.accuracy(&data.valid)
    };
    say(&format!(
        "base: validation {:.2} %, {} {:.4}",
        base_valid_accuracy * 100.0,
        c.objective.label(),
        c.objective.of(&relu_cost)
    ));

    // 2. The population (fresh or resumed).
    let state_path = out.join("state.json");
    let member_cfg = |g: &Genome, k: usize| -> TrainConfig {
        let mut t = base_cfg.clone();
        t.init = Some(base_plan.clone());
        t.epochs = c.epochs;
        t.activations = Some(g.placement());
        t.lr = g.lr;
        t.momentum = g.momentum;
        t.weight_decay = g.weight_decay;
        t.grad_clip = Some(1.0);
        t.distill = Some(Distill {
            teacher: base_plan.clone(),
            weight: g.distill_weight,
            temperature: 4.0,
        });
        t.swap = Some(Swap {
            start: 0.0,
            end: g.swap_span,
        });
        t.seed = c.seed.wrapping_add(1000 * (k as u64 + 1));
        t
    };
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed ^ 0x9e37_79b9_7f4a_7c15);
    let (mut st, mut members, resumed) = if state_path.is_file() {
        let text = std::fs::read_to_string(&state_path).map_err(|e| file_err(&state_path, e))?;
        let st: State = serde_json::from_str(&text).map_err(|e| file_err(&state_path, e))?;
        if st.config != *c {
            return Err(PlanError::Config(format!(
                "{} holds a search with another configuration; use another --out or delete it",
                out.display()
            )));
        }
        let mut members = Vec::new();
        for k in 0..c.population {
            members.push(Trainer::load_checkpoint(
                &out.join(format!("members/{k}")),
                &device,
            )?);
        }
        say(&format!("resuming after interval {}", st.interval));
        (st, members, true)
    } else {
        let mut genomes = Vec::new();
        let mut members = Vec::new();
        for k in 0..c.population {
            // Spread the starting placements from few to many quadratics.
            let quads = ((k + 1) * layers).div_ceil(c.population).min(layers);
            let g = Genome::random(layers, quads, &mut rng);
            members.push(Trainer::new(member_cfg(&g, k), &device)?);
            genomes.push(g);
        }
        (
            State {
                version: 1,
                config: c.clone(),
                interval: 0,
                genomes,
                evaluations: Vec::new(),
                best: None,
                seconds: start.elapsed().as_secs_f64(),
            },
            members,
            false,
        )
    };

    let per_epoch = members[0].steps_per_epoch(&data.train);
    let interval_steps = per_epoch.div_ceil(c.intervals_per_epoch).max(1);
    let intervals = (per_epoch * c.epochs).div_ceil(interval_steps);
    let mp = MultiProgress::new();
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        mp.set_draw_target(ProgressDrawTarget::hidden());
    }
    let overall = mp.add(ProgressBar::new(intervals as u64));
    overall.set_style(bar_style(
        "search   [{bar:30}] {pos}/{len} intervals  {msg}",
    ));
    overall.set_position(st.interval as u64);
    let bars: Vec<ProgressBar> = (0..c.population)
        .map(|k| {
            let b = mp.add(ProgressBar::new((per_epoch * c.epochs) as u64));
            b.set_style(bar_style(&format!("member {k} [{{bar:30}}] {{msg}}")));
            b
        })
        .collect();
    let lineage_path = out.join("lineage.log");
    let mut lineage = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&lineage_path)
        .map_err(|e| file_err(&lineage_path, e))?;
    let plan_path = out.join("plan.json");

    let mut last = Instant::now();
    while st.interval < intervals {
        if let Some(b) = c.budget_minutes {
            if start.elapsed().as_secs_f64() > b * 60.0 {
                say(&format!("budget of {b} minutes spent; stopping the search"));
                break;
            }
        }
        st.interval += 1;
        // A generator per interval: a resumed run draws what an
        // uninterrupted one would have.
        let mut rng = ChaCha8Rng::seed_from_u64(c.seed ^ ((st.interval as u64) << 24));
        let mut evals = Vec::with_capacity(c.population);
        for (k, tr) in members.iter_mut().enumerate() {
            let g = &st.genomes[k];
            tr.train_steps(&data, interval_steps, true)?;
            let progress = tr.progress(&data.train);
            let modes = tr.modes_at(progress);
            let settled = modes
                .iter()
                .all(|m| !matches!(m, delphi_train::model::ActMode::Blend { .. }));
            let acc = tr.accuracy(&data.valid);
            let placement = tr.placement();
            let cost = pricing.price(&placement)?;
            let obj = c.objective.of(&cost);
            let shortfall = (c.accuracy - acc).max(0.0);
            let relu_obj = c.objective.of(&relu_cost);
            let fitness = if shortfall == 0.0 {
                -obj
            } else {
                -obj - relu_obj * (1.0 + 20.0 * shortfall)
            };
            let e = Evaluation {
                interval: st.interval,
                member: k,
                placement: placement
                    .iter()
                    .map(|&q| if q { 'Q' } else { 'R' })
                    .collect(),
                quads: placement.iter().filter(|&&q| q).count(),
                settled,
                valid_accuracy: acc,
                online_s: cost.online_s,
                online_bytes: cost.online_bytes,
                offline_s: cost.offline_s,
                offline_bytes: cost.offline_bytes,
                cost: obj,
                fitness,
                lr: g.lr,
                momentum: g.momentum,
                weight_decay: g.weight_decay,
                distill_weight: g.distill_weight,
                swap_span: g.swap_span,
            };
            // A settled evaluation above the threshold and cheaper than the
            // best so far (or as cheap and more accurate) becomes the plan.
            let better = settled
                && shortfall == 0.0
                && st
                    .best
                    .as_ref()
                    .is_none_or(|b| obj < b.cost || (obj == b.cost && acc > b.valid_accuracy));
            if better {
                let mut net = tr.export()?;
                net.metadata.planner_run = Some(c.name());
                net.metadata.predicted_cost = serde_json::to_value(&cost).ok();
                net.save(&plan_path, delphi_net::WeightStorage::Inline)?;
                st.best = Some(e.clone());
            }
            bars[k].set_position((tr.epoch * per_epoch + tr.step_in_epoch) as u64);
            bars[k].set_message(format!(
                "{} valid {:.2}% cost {:.4}",
                e.placement,
                acc * 100.0,
                obj
            ));
            evals.push(e);
        }
        // Exploit and explore (not after the last interval).
        if st.interval < intervals && c.quantile > 0.0 {
            let mut order: Vec<usize> = (0..c.population).collect();
            order.sort_by(|&a, &b| evals[b].fitness.total_cmp(&evals[a].fitness));
            let q = ((c.population as f64 * c.quantile).round() as usize).max(1);
            let (top, bottom) = (order[..q].to_vec(), order[c.population - q..].to_vec());
            for &lo in &bottom {
                if top.contains(&lo) {
                    continue;
                }
                let hi = top[rng.gen_range(0..top.len())];
                let (lo_tr, hi_tr) = if lo < hi {
                    let (a, b) = members.split_at_mut(hi);
                    (&mut a[lo], &b[0])
                } else {
                    let (a, b) = members.split_at_mut(lo);
                    (&mut b[0], &a[hi])
                };
                lo_tr.copy_from(hi_tr);
                let mut g = st.genomes[hi].clone();
                g.perturb(&mut rng);
                let tr = lo_tr;
                tr.set_hyperparameters(g.lr, g.momentum, g.weight_decay);
                tr.set_distill_weight(g.distill_weight);
                let mut flipped = None;
                if rng.gen_bool(0.5) {
                    let relus: Vec<usize> = (0..layers).filter(|&i| !g.quad[i]).collect();
                    if !relus.is_empty() {
                        let i = relus[rng.gen_range(0..relus.len())];
                        g.quad[i] = true;
                        let now = tr.progress(&data.train);
                        tr.swap_to_quad(i, now, g.swap_span);
                        flipped = Some(i);
                    }
                }
                let line = serde_json::json!({
                    "interval": st.interval,
                    "exploit": {"member": lo, "copies": hi,
                                "fitness": evals[lo].fitness, "source_fitness": evals[hi].fitness},
                    "explore": {"genome": &g, "swapped_layer": flipped},
                });
                writeln!(lineage, "{line}").map_err(|e| file_err(&lineage_path, e))?;
                st.genomes[lo] = g;
            }
        }
        st.evaluations.extend(evals);
        st.seconds += last.elapsed().as_secs_f64();
        last = Instant::now();
        // Save: members first, then the state that points at them.
        for (k, tr) in members.iter().enumerate() {
            tr.save_checkpoint(&out.join(format!("members/{k}")))?;
        }
        let tmp = out.join("state.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(&st).map_err(|e| file_err(&tmp, e))?,
        )
        .map_err(|e| file_err(&tmp, e))?;
        std::fs::rename(&tmp, &state_path).map_err(|e| file_err(&state_path, e))?;
        overall.set_position(st.interval as u64);
        overall.set_message(match &st.best {
            Some(b) => format!(
                "best {} ({} quad) valid {:.2}% cost {:.4}",
                b.placement,
                b.quads,
                b.valid_accuracy * 100.0,
                b.cost
            ),
            None => "no plan meets the threshold yet".into(),
        });
        say(&format!(
            "interval {}/{intervals}: {}",
            st.interval,
            overall.message()
        ));
    }
    overall.finish();
    for b in &bars {
        b.finish();
    }

    let mut closest = None;
    if st.best.is_none() {
        // Nothing met the threshold: export the most accurate settled member.
        let best_k = (0..c.population)
            .max_by(|&a, &b| {
                let ea = st.evaluations.iter().rev().find(|e| e.member == a);
                let eb = st.evaluations.iter().rev().find(|e| e.member == b);
                let va = ea.map_or(0.0, |e| e.valid_accuracy);
                let vb = eb.map_or(0.0, |e| e.valid_accuracy);
                va.total_cmp(&vb)
            })
            .unwrap_or(0);
        if let Some(e) = st.evaluations.iter().rev().find(|e| e.member == best_k) {
            let tr = &mut members[best_k];
            let modes = tr.modes_at(1.0);
            tr.model
                .set_modes(&modes)
                .map_err(delphi_train::train::TrainError::from)?;
            let net = tr.export()?;
            net.save(&plan_path, delphi_net::WeightStorage::Inline)?;
            closest = Some(e.clone());
        }
    }
    Ok(Outcome {
        evaluations: st.evaluations,
        chosen: st.best,
        closest,
        plan: plan_path,
        relu_cost,
        base_valid_accuracy,
        resumed,
        search_seconds: st.seconds,
    })
}
