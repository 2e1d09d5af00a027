//! `delphi-plan bench`: the strategies and the controls side by side, at
//! equal training budget, on one base network, cost model and data, over
//! several seeds, with plans chosen on images no search saw.
//!
//! 1. The all-ReLU base is made once (trained, or the provider's network);
//!    every run of every seed starts from it. The data are split once
//!    (seeded by `--seed`): training images, validation split A (the
//!    searches see it; fronts are built on it), split B (`--select-size`
//!    images held back) and the test images.
//! 2. Per search seed (`--seeds`), every variant runs once, with the same
//!    budget of training steps: `pbt` (one front-producing run serves every
//!    threshold), `delphi` (its counts descend until the highest threshold
//!    is met), `greedy` (down to the lowest threshold), the controls
//!    `relu-control` and `quad-control`, and `pbt` per channel with
//!    `--granularity layer,channel`. Runs are resumable; a finished run is
//!    only reread.
//! 3. Each front plan (from split A) is measured on split B (float) and on
//!    the test images (float). For each threshold, each run's plan is the
//!    cheapest front plan whose split-B accuracy meets it (near-ties in
//!    cost to the more accurate: [`policy::choose`]); the test images are
//!    never used for any choice. Chosen plans are measured on the test
//!    images in the protocol's fixed point, image by image, and run through
//!    `delphi verify --compare-cost` (measured cost); with
//!    `--measure-fronts`, every front plan is. A plan's measured cost is
//!    the median of `--measure-repeats` runs, taken in rounds (every plan
//!    once, then every plan again), so that a slow spell of the machine
//!    falls on the plans of one round alike, not on one variant's plans.
//! 4. Statistics ([`crate::stats`]): every figure as mean ± 95 % CI over
//!    seeds; each front's hypervolume in (online cost as a fraction of the
//!    all-ReLU network's, test accuracy) — over the plans no other of the
//!    run beats on split A, so the extra candidates a front with slack
//!    keeps (`--front-slack`) earn no area — and its difference from ours
//!    paired by seed; at each threshold, the chosen plans' measured online
//!    cost and a paired bootstrap over the test images of the accuracy
//!    difference from ours.
//!
//! Written to the bench folder: `fronts.csv` (one row per front plan per
//! seed and variant), `hypervolume.csv`, `chosen.csv`, `fronts.svg`,
//! `summary.md`, `bench.json`; each run's own folder (`seed-<s>/<variant>`)
//! holds its tables and plans. Caches of measurements
//! (`measurements.json`) make a rerun measure only what is new.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use plotters::style::RGBColor;
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{threshold_label, Granularity, PlanConfig, Strategy};
use crate::engine::VerifyReport;
use crate::error::{PlanError, Result};
use crate::measure;
use crate::policy;
use crate::report::{self, perr, Final, Mark, Series};
use crate::search::{self, Outcome};
use crate::stats::{hypervolume, mean_ci, paired_bootstrap};

/// What the benchmark runs.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Settings shared by every run (dataset, architecture, population,
    /// epochs, budget, data seed, data limits, split B, objective, cost model).
    pub plan: PlanConfig,
    /// Validation-accuracy thresholds.
    pub thresholds: Vec<f64>,
    /// Strategies (and controls) compared.
    pub strategies: Vec<Strategy>,
    /// Granularities: `layer` runs every strategy, `channel` adds `pbt` per channel.
    pub granularities: Vec<Granularity>,
    /// Also run our search with the whole population to the end
    /// (`pbt-whole`, the ablation of [`PlanConfig::halve_at`]).
    pub whole_population: bool,
    /// Search seeds: every variant runs once per seed.
    pub seeds: Vec<u64>,
    /// The bench folder.
    pub out: PathBuf,
    /// Run each chosen plan through `delphi verify --compare-cost`.
    pub verify: bool,
    /// Run every front plan through it too (hypervolume in measured cost).
    pub measure_fronts: bool,
    /// Runs of `delphi verify` per measured plan, in rounds over all the
    /// plans; a plan's measured cost is their median (at least 1).
    pub measure_repeats: usize,
    /// Hypervolume's accuracy reference (default: 2 points below the lowest
    /// threshold).
    pub hv_floor: Option<f64>,
}

/// Bootstrap resamples of the test images.
pub const BOOTSTRAP_REPS: usize = 2000;

impl BenchConfig {
    /// The variants run: every strategy per layer, then `pbt` per channel.
    pub fn variants(&self) -> Vec<Variant> {
        let mut v = Vec::new();
        if self.granularities.contains(&Granularity::Layer) {
            v.extend(self.strategies.iter().map(|&strategy| Variant {
                strategy,
                granularity: Granularity::Layer,
                whole: false,
            }));
            if self.whole_population {
                v.push(Variant {
                    strategy: Strategy::Pbt,
                    granularity: Granularity::Layer,
                    whole: true,
                });
            }
        }
        if self.granularities.contains(&Granularity::Channel) {
            v.push(Variant {
                strategy: Strategy::Pbt,
                granularity: Granularity::Channel,
                whole: false,
            });
        }
        v
    }

    /// The hypervolume's accuracy reference.
    pub fn hv_floor(&self) -> f64 {
        self.hv_floor
            .unwrap_or_else(|| self.thresholds.iter().cloned().fold(f64::INFINITY, f64::min) - 0.02)
    }
}

/// A strategy at a granularity: what one series of the benchmark is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// The strategy.
    pub strategy: Strategy,
    /// The granularity.
    pub granularity: Granularity,
    /// Our search with the whole population to the end (no halving).
    pub whole: bool,
}

impl Variant {
    /// `pbt`, `delphi`, `greedy`, `relu-control`, `quad-control`,
    /// `pbt-whole` or `pbt-channel`.
    pub fn name(self) -> String {
        match (self.granularity, self.whole) {
            (Granularity::Layer, false) => self.strategy.name().to_string(),
            (Granularity::Layer, true) => format!("{}-whole", self.strategy.name()),
            (g, _) => format!("{}-{}", self.strategy.name(), g.name()),
        }
    }

    fn ours(self) -> bool {
        self == Variant { strategy: Strategy::Pbt, granularity: Granularity::Layer, whole: false }
    }
}

/// One row of `fronts.csv`: a front plan of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Search seed.
    pub seed: u64,
    /// Variant (`pbt`, `delphi`, …, `pbt-channel`).
    pub variant: String,
    /// Thresholds this plan is the run's choice for (`;`-separated).
    pub chosen_for: String,
    /// Placement.
    pub placement: String,
    /// Per activation layer, the percentage of channels kept ReLU
    /// (per-channel plans; empty otherwise).
    pub relu_channels: String,
    /// Quadratic layers.
    pub quads: usize,
    /// ReLU activations left.
    pub relus: usize,
    /// Accuracy on validation split A (the search's).
    pub split_a_accuracy: f64,
    /// Accuracy on split B (held back; the choice's).
    pub split_b_accuracy: f64,
    /// Whether no other plan of the run beats it on split A (true for
    /// every plan but those a front with slack keeps; the all-ReLU base
    /// may be kept too): only these count in the hypervolume, so a front
    /// with slack is not credited for its extra candidates.
    pub on_a_front: bool,
    /// Test accuracy, float.
    pub test_accuracy_float: f64,
    /// Test accuracy, the protocol's fixed point (chosen plans; NaN otherwise).
    pub test_accuracy_fixed: f64,
    /// Predicted online seconds.
    pub predicted_online_s: f64,
    /// Predicted online bytes.
    pub predicted_online_bytes: f64,
    /// Predicted offline seconds.
    pub predicted_offline_s: f64,
    /// Predicted offline bytes.
    pub predicted_offline_bytes: f64,
    /// Measured online seconds (NaN where not verified).
    pub measured_online_s: f64,
    /// Measured online bytes.
    pub measured_online_bytes: f64,
    /// Measured offline seconds.
    pub measured_offline_s: f64,
    /// Measured offline bytes.
    pub measured_offline_bytes: f64,
    /// Training steps the run used.
    pub steps_used: usize,
    /// The budget in steps.
    pub budget_steps: usize,
    /// The plan's file (relative to the bench folder).
    pub file: String,
}

/// What is measured once per plan file and cached.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Measured {
    split_b: Option<f64>,
    test_float: Option<f64>,
    /// Fixed-point correctness per test image, as `0`/`1` characters.
    test_fixed: Option<String>,
    /// The first run of `delphi verify`.
    verify: Option<VerifyReport>,
    /// Its further runs (`--measure-repeats`), one per later round.
    #[serde(default)]
    repeats: Vec<VerifyReport>,
}

impl Measured {
    /// Runs of `delphi verify` so far.
    fn runs(&self) -> usize {
        self.verify.iter().len() + self.repeats.len()
    }

    /// The median of one measured figure over the first `n` runs (NaN:
    /// none): a rerun asking for fewer rounds than the cache holds reports
    /// what it says it reports.
    fn median(&self, n: usize, k: fn(&delphi_cost::Cost) -> f64) -> f64 {
        let mut v: Vec<f64> =
            self.verify.iter().chain(&self.repeats).take(n).map(|r| k(&r.measured)).collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

struct Cache {
    path: PathBuf,
    map: HashMap<String, Measured>,
}

impl Cache {
    fn open(path: PathBuf) -> Cache {
        let map = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Cache { path, map }
    }

    /// Keyed by the plan's path and modification time.
    fn key(f: &Path) -> String {
        let t = std::fs::metadata(f)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("{}@{t}", f.display())
    }

    fn get(&mut self, f: &Path) -> &mut Measured {
        self.map.entry(Cache::key(f)).or_default()
    }

    fn save(&self) -> Result<()> {
        let text = serde_json::to_string(&self.map).map_err(|e| perr(&self.path, e))?;
        std::fs::write(&self.path, text).map_err(|e| perr(&self.path, e))
    }
}

/// Per run, per front plan: its split-B accuracy and the thresholds it
/// is chosen for; and which front plans no other beats on split A.
struct Picks {
    b_acc: Vec<f64>,
    chosen_for: Vec<Vec<f64>>,
    on_a_front: Vec<usize>,
}

/// One finished run of the benchmark.
struct Run {
    seed: u64,
    variant: Variant,
    config: PlanConfig,
    outcome: Outcome,
}

fn color(v: Variant) -> RGBColor {
    match (v.strategy, v.granularity) {
        (_, Granularity::Channel) => RGBColor(148, 103, 189),
        (Strategy::Pbt, _) => RGBColor(31, 119, 180),
        (Strategy::Delphi, _) => RGBColor(214, 39, 40),
        (Strategy::Greedy, _) => RGBColor(44, 160, 44),
        (Strategy::ReluControl, _) => RGBColor(127, 127, 127),
        (Strategy::QuadControl, _) => RGBColor(255, 127, 14),
    }
}

fn rows_table(rows: &[Row]) -> std::result::Result<DataFrame, PolarsError> {
    let s = |n: &str, f: &dyn Fn(&Row) -> String| report::column(n, rows, f);
    let f = |n: &str, f: &dyn Fn(&Row) -> f64| report::column(n, rows, f);
    let u = |n: &str, f: &dyn Fn(&Row) -> u64| report::column(n, rows, f);
    DataFrame::new(
        rows.len(),
        vec![
            u("seed", &|r| r.seed),
            s("variant", &|r| r.variant.clone()),
            s("chosen_for", &|r| r.chosen_for.clone()),
            s("placement", &|r| r.placement.clone()),
            s("relu_channels", &|r| r.relu_channels.clone()),
            u("quads", &|r| r.quads as u64),
            u("relus", &|r| r.relus as u64),
            f("split_a_accuracy", &|r| r.split_a_accuracy),
            f("split_b_accuracy", &|r| r.split_b_accuracy),
            s("on_a_front", &|r| r.on_a_front.to_string()),
            f("test_accuracy_float", &|r| r.test_accuracy_float),
            f("test_accuracy_fixed", &|r| r.test_accuracy_fixed),
            f("predicted_online_s", &|r| r.predicted_online_s),
            f("predicted_online_bytes", &|r| r.predicted_online_bytes),
            f("predicted_offline_s", &|r| r.predicted_offline_s),
            f("predicted_offline_bytes", &|r| r.predicted_offline_bytes),
            f("measured_online_s", &|r| r.measured_online_s),
            f("measured_online_bytes", &|r| r.measured_online_bytes),
            f("measured_offline_s", &|r| r.measured_offline_s),
            f("measured_offline_bytes", &|r| r.measured_offline_bytes),
            u("steps_used", &|r| r.steps_used as u64),
            u("budget_steps", &|r| r.budget_steps as u64),
            s("file", &|r| r.file.clone()),
        ],
    )
}

/// Per seed, variant and threshold: the chosen plan's figures (a row of
/// `chosen.csv`).
#[derive(Clone, Debug, Serialize)]
pub struct Chosen {
    /// Search seed.
    pub seed: u64,
    /// Variant.
    pub variant: String,
    /// Threshold (split-B accuracy).
    pub threshold: f64,
    /// Placement (or per-channel percentages).
    pub placement: String,
    /// ReLUs left.
    pub relus: usize,
    /// Split-B accuracy.
    pub split_b_accuracy: f64,
    /// Test accuracy, fixed point.
    pub test_accuracy_fixed: f64,
    /// Predicted online seconds.
    pub predicted_online_s: f64,
    /// Measured online seconds (NaN without verification).
    pub measured_online_s: f64,
    /// Measured online bytes.
    pub measured_online_bytes: f64,
    #[serde(skip)]
    correct: Vec<bool>,
}

/// Runs the benchmark; returns the rows of `fronts.csv`.
pub fn run(b: &BenchConfig, quiet: bool, say: &dyn Fn(&str)) -> Result<Vec<Row>> {
    let variants = b.variants();
    if b.thresholds.is_empty() || variants.is_empty() || b.seeds.is_empty() {
        return Err(PlanError::Config(
            "the benchmark needs at least one threshold, one strategy and one seed".into(),
        ));
    }
    if b.plan.select_size == 0 {
        return Err(PlanError::Config(
            "the benchmark chooses plans on held-back images: --select-size must be positive"
                .into(),
        ));
    }
    let started = Instant::now();
    std::fs::create_dir_all(&b.out).map_err(|e| perr(&b.out, e))?;
    let mut shared = b.plan.clone();
    shared.out = Some(b.out.clone());
    shared.verify = false;
    shared.search_seed = None;
    let cost_model = crate::pricing::cost_model_path(&shared, &b.out, say)?;
    shared.cost_model = Some(cost_model.clone());
    let (data, split_b) = search::load_splits(&shared)?;
    say(&format!(
        "data: {} training, {} validation (split A), {} held back (split B), {} test images",
        data.train.len(),
        data.valid.len(),
        split_b.len(),
        data.test.len()
    ));
    let device = search::device(&shared)?;
    let base = search::prepare_base(&shared, &data, &device, quiet, say)?;
    let lowest = b.thresholds.iter().cloned().fold(f64::INFINITY, f64::min);
    let highest = b.thresholds.iter().cloned().fold(f64::NEG_INFINITY, f64::max);

    let mut runs: Vec<Run> = Vec::new();
    let total = b.seeds.len() * variants.len();
    for &seed in &b.seeds {
        for &v in &variants {
            let mut c = shared.clone();
            c.strategy = v.strategy;
            c.granularity = v.granularity;
            if v.whole {
                c.halve_at = None;
            }
            // DELPHI's counts descend until the highest threshold is met;
            // the others' plan.json answers the lowest.
            c.accuracy = if v.strategy == Strategy::Delphi { highest } else { lowest };
            c.search_seed = Some(seed);
            c.arch = Some(base.plan.to_string_lossy().into_owned());
            let bench =
                b.out.file_name().map_or("bench".into(), |n| n.to_string_lossy().into_owned());
            c.name = Some(format!("{bench}-s{seed}-{}", v.name()));
            c.out = Some(b.out.join(format!("seed-{seed}")).join(v.name()));
            say(&format!("run {}/{total}: seed {seed}, {}", runs.len() + 1, v.name()));
            let outcome = crate::strategy::run(&c, quiet, say)?;
            runs.push(Run { seed, variant: v, config: c, outcome });
        }
    }

    // Measurements of the front plans: split B and test accuracy, and the
    // choice at each threshold.
    let mut cache = Cache::open(b.out.join("measurements.json"));
    let mut rows = Vec::new();
    let mut chosen: Vec<Chosen> = Vec::new();
    let mut picks: Vec<Picks> = Vec::with_capacity(runs.len());
    for r in &runs {
        let pts_cost: Vec<f64> = r.outcome.front.iter().map(|(e, _)| e.cost).collect();
        let mut b_acc = Vec::new();
        for (e, file) in &r.outcome.front {
            let m = cache.get(file);
            if m.split_b.is_none() || m.test_float.is_none() {
                say(&format!(
                    "seed {}: {} plan {}: split B and test accuracy",
                    r.seed,
                    r.variant.name(),
                    e.placement
                ));
                let bv = measure::float_accuracy(&r.config, file, &split_b)?;
                let tv = measure::float_accuracy(&r.config, file, &data.test)?;
                let m = cache.get(file);
                m.split_b = Some(bv);
                m.test_float = Some(tv);
                cache.save()?;
            }
            b_acc.push(cache.get(file).split_b.unwrap_or(f64::NAN));
        }
        let pts: Vec<(f64, f64)> = b_acc.iter().copied().zip(pts_cost.iter().copied()).collect();
        let on_a_front = policy::pareto(
            &r.outcome.front.iter().map(|(e, _)| (e.valid_accuracy, e.cost)).collect::<Vec<_>>(),
        );
        let mut chosen_for: Vec<Vec<f64>> = vec![Vec::new(); r.outcome.front.len()];
        for &t in &b.thresholds {
            if let Some(k) = policy::choose(&pts, t) {
                chosen_for[k].push(t);
            }
        }
        for (k, (e, file)) in r.outcome.front.iter().enumerate() {
            if !chosen_for[k].is_empty() && cache.get(file).test_fixed.is_none() {
                say(&format!(
                    "seed {}: {} plan {}: fixed-point test",
                    r.seed,
                    r.variant.name(),
                    e.placement
                ));
                let v = measure::fixed_correct_images(file, &data.test)?;
                cache.get(file).test_fixed =
                    Some(v.iter().map(|&x| if x { '1' } else { '0' }).collect());
                cache.save()?;
            }
        }
        picks.push(Picks { b_acc, chosen_for, on_a_front });
    }

    // Measured cost: rounds of `delphi verify` over every plan to measure,
    // each plan's figure the median of its rounds.
    let mut timed: Vec<(&Run, &crate::search::Evaluation, &PathBuf)> = Vec::new();
    for (r, Picks { chosen_for, .. }) in runs.iter().zip(&picks) {
        for (k, (e, file)) in r.outcome.front.iter().enumerate() {
            let is_chosen = !chosen_for[k].is_empty();
            if (is_chosen && b.verify || b.measure_fronts) && !timed.iter().any(|t| t.2 == file) {
                timed.push((r, e, file));
            }
        }
    }
    let repeats = b.measure_repeats.max(1);
    for round in 0..repeats {
        for &(r, e, file) in &timed {
            if cache.get(file).runs() > round {
                continue;
            }
            say(&format!(
                "seed {}: {} plan {}: delphi verify (round {}/{repeats})",
                r.seed,
                r.variant.name(),
                e.placement,
                round + 1
            ));
            let v = crate::engine::verify(file, &cost_model)?;
            let m = cache.get(file);
            if m.verify.is_none() {
                m.verify = Some(v);
            } else {
                m.repeats.push(v);
            }
            cache.save()?;
        }
    }

    for (r, Picks { b_acc, chosen_for, on_a_front }) in runs.iter().zip(&picks) {
        for (k, (e, file)) in r.outcome.front.iter().enumerate() {
            let m = cache.get(file).clone();
            let correct: Vec<bool> = m
                .test_fixed
                .as_deref()
                .map(|s| s.chars().map(|c| c == '1').collect())
                .unwrap_or_default();
            let fixed = if correct.is_empty() { f64::NAN } else { measure::share(&correct) };
            let meas = |k: fn(&delphi_cost::Cost) -> f64| m.median(repeats, k);
            let placement = if r.variant.granularity == Granularity::Channel {
                format!("% ReLU per layer: {}", e.relu_channels)
            } else {
                e.placement.to_string()
            };
            for &t in &chosen_for[k] {
                chosen.push(Chosen {
                    seed: r.seed,
                    variant: r.variant.name(),
                    threshold: t,
                    placement: placement.clone(),
                    relus: e.relus,
                    split_b_accuracy: b_acc[k],
                    test_accuracy_fixed: fixed,
                    predicted_online_s: e.online_s,
                    measured_online_s: meas(|c| c.online_s),
                    measured_online_bytes: meas(|c| c.online_bytes),
                    correct: correct.clone(),
                });
            }
            rows.push(Row {
                seed: r.seed,
                variant: r.variant.name(),
                chosen_for: chosen_for[k]
                    .iter()
                    .map(|t| format!("{t}"))
                    .collect::<Vec<_>>()
                    .join(";"),
                placement: e.placement.to_string(),
                relu_channels: e.relu_channels.clone(),
                quads: e.quads,
                relus: e.relus,
                split_a_accuracy: e.valid_accuracy,
                split_b_accuracy: b_acc[k],
                on_a_front: on_a_front.contains(&k),
                test_accuracy_float: m.test_float.unwrap_or(f64::NAN),
                test_accuracy_fixed: fixed,
                predicted_online_s: e.online_s,
                predicted_online_bytes: e.online_bytes,
                predicted_offline_s: e.offline_s,
                predicted_offline_bytes: e.offline_bytes,
                measured_online_s: meas(|c| c.online_s),
                measured_online_bytes: meas(|c| c.online_bytes),
                measured_offline_s: meas(|c| c.offline_s),
                measured_offline_bytes: meas(|c| c.offline_bytes),
                steps_used: r.outcome.steps.0,
                budget_steps: r.outcome.steps.1,
                file: file.strip_prefix(&b.out).unwrap_or(file).to_string_lossy().into_owned(),
            });
        }
    }
    // Each run's own folder: tables, plot and summary (its plan.json
    // answers the run's own threshold on split A, as a plain search would).
    for r in &runs {
        let fin = match r.outcome.chosen.as_ref().or(r.outcome.closest.as_ref()) {
            Some(e) => {
                let file =
                    r.outcome.front.iter().find(|(f, _)| f.index == e.index).map(|x| x.1.clone());
                let m = file.as_ref().map(|f| cache.get(f).clone()).unwrap_or_default();
                Final {
                    test_accuracy_float: m.test_float.unwrap_or(f64::NAN),
                    test_accuracy_fixed: m.test_fixed.as_deref().map_or(f64::NAN, |s| {
                        measure::share(&s.chars().map(|c| c == '1').collect::<Vec<_>>())
                    }),
                    quads: e.quads,
                    layers: e.placement.len(),
                    ..Final::default()
                }
            }
            None => Final::default(),
        };
        report::write(&r.config.out(), &r.config, &r.outcome, &fin)?;
    }
    let mut df = rows_table(&rows).map_err(|e| perr(&b.out, e))?;
    report::write_csv(&b.out.join("fronts.csv"), &mut df)?;
    let relu_online = runs.first().map_or(f64::NAN, |r| r.outcome.relu_cost.online_s);
    let hv = hypervolumes(b, &runs, &rows, relu_online);
    write_hypervolume(b, &hv)?;
    write_chosen(b, &chosen)?;
    plot(b, &rows, relu_online)?;
    summary(b, &runs, &hv, &chosen, &cost_model, started.elapsed().as_secs_f64())?;
    Ok(rows)
}

/// One row of `hypervolume.csv`.
#[derive(Clone, Debug, Serialize)]
pub struct Hv {
    /// Search seed.
    pub seed: u64,
    /// Variant.
    pub variant: String,
    /// Hypervolume in (predicted online cost / all-ReLU's, test float
    /// accuracy), in accuracy points × cost fraction.
    pub hv_predicted: f64,
    /// The same in measured online cost (NaN unless every front plan was
    /// verified: `--measure-fronts`).
    pub hv_measured: f64,
    /// Plans on the front.
    pub front_plans: usize,
    /// Training steps used by the run.
    pub steps_used: usize,
    /// Its budget.
    pub budget_steps: usize,
    /// Steps one member (or probe) trains.
    pub steps_per_member: usize,
    /// Evaluations the run made.
    pub evaluations: usize,
}

fn hypervolumes(b: &BenchConfig, runs: &[Run], rows: &[Row], relu_online: f64) -> Vec<Hv> {
    let floor = b.hv_floor();
    runs.iter()
        .map(|r| {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|x| x.seed == r.seed && x.variant == r.variant.name() && x.on_a_front)
                .collect();
            let hv = |cost: &dyn Fn(&Row) -> f64| {
                100.0
                    * hypervolume(
                        &mine
                            .iter()
                            .map(|x| (cost(x) / relu_online, x.test_accuracy_float))
                            .collect::<Vec<_>>(),
                        1.0,
                        floor,
                    )
            };
            let all_measured = mine.iter().all(|x| x.measured_online_s.is_finite());
            let relu_measured = rows
                .iter()
                .filter(|x| {
                    x.quads == 0 && x.relu_channels.is_empty() && x.measured_online_s.is_finite()
                })
                .map(|x| x.measured_online_s)
                .fold(f64::NAN, f64::min);
            Hv {
                seed: r.seed,
                variant: r.variant.name(),
                hv_predicted: hv(&|x| x.predicted_online_s),
                hv_measured: if all_measured && relu_measured.is_finite() {
                    100.0
                        * hypervolume(
                            &mine
                                .iter()
                                .map(|x| {
                                    (x.measured_online_s / relu_measured, x.test_accuracy_float)
                                })
                                .collect::<Vec<_>>(),
                            1.0,
                            floor,
                        )
                } else {
                    f64::NAN
                },
                front_plans: mine.len(),
                steps_used: r.outcome.steps.0,
                budget_steps: r.outcome.steps.1,
                steps_per_member: steps_per_member(r),
                evaluations: r.outcome.evaluations.len(),
            }
        })
        .collect()
}

/// Steps one member (or greedy probe) trains, as the strategy splits the
/// budget.
fn steps_per_member(r: &Run) -> usize {
    let budget = r.outcome.steps.1;
    let n = r.config.population.max(1);
    let layers = r.outcome.front.first().map_or(0, |(e, _)| e.placement.len());
    match r.variant.strategy {
        Strategy::Delphi => {
            budget / (policy::delphi_counts(layers, r.config.delphi_runs).len().max(1) * n)
        }
        Strategy::Greedy => policy::greedy_steps(layers, budget),
        _ => budget / n,
    }
}

fn write_hypervolume(b: &BenchConfig, hv: &[Hv]) -> Result<()> {
    let f = |n: &str, f: &dyn Fn(&Hv) -> f64| report::column(n, hv, f);
    let u = |n: &str, f: &dyn Fn(&Hv) -> u64| report::column(n, hv, f);
    let mut df = DataFrame::new(
        hv.len(),
        vec![
            u("seed", &|h| h.seed),
            report::column("variant", hv, |h| h.variant.clone()),
            f("hv_predicted", &|h| h.hv_predicted),
            f("hv_measured", &|h| h.hv_measured),
            u("front_plans", &|h| h.front_plans as u64),
            u("steps_used", &|h| h.steps_used as u64),
            u("budget_steps", &|h| h.budget_steps as u64),
            u("steps_per_member", &|h| h.steps_per_member as u64),
            u("evaluations", &|h| h.evaluations as u64),
        ],
    )
    .map_err(|e| perr(&b.out, e))?;
    report::write_csv(&b.out.join("hypervolume.csv"), &mut df)
}

fn write_chosen(b: &BenchConfig, chosen: &[Chosen]) -> Result<()> {
    let f = |n: &str, f: &dyn Fn(&Chosen) -> f64| report::column(n, chosen, f);
    let mut df = DataFrame::new(
        chosen.len(),
        vec![
            report::column("seed", chosen, |c| c.seed),
            report::column("variant", chosen, |c| c.variant.clone()),
            f("threshold", &|c| c.threshold),
            report::column("placement", chosen, |c| c.placement.clone()),
            report::column("relus", chosen, |c| c.relus as u64),
            f("split_b_accuracy", &|c| c.split_b_accuracy),
            f("test_accuracy_fixed", &|c| c.test_accuracy_fixed),
            f("predicted_online_s", &|c| c.predicted_online_s),
            f("measured_online_s", &|c| c.measured_online_s),
            f("measured_online_bytes", &|c| c.measured_online_bytes),
        ],
    )
    .map_err(|e| perr(&b.out, e))?;
    report::write_csv(&b.out.join("chosen.csv"), &mut df)
}

fn plot(b: &BenchConfig, rows: &[Row], relu_online: f64) -> Result<()> {
    let mut series = Vec::new();
    for v in b.variants() {
        for (k, &seed) in b.seeds.iter().enumerate() {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.seed == seed && r.variant == v.name() && r.on_a_front)
                .collect();
            // The front as tested: plans no other of the run beats on test.
            let pts: Vec<(f64, f64)> = mine
                .iter()
                .map(|r| (r.predicted_online_s / relu_online, r.test_accuracy_float))
                .collect();
            let front: Vec<(f64, f64)> =
                policy::pareto(&pts.iter().map(|&(c, a)| (a, c)).collect::<Vec<_>>())
                    .into_iter()
                    .map(|i| pts[i])
                    .collect();
            series.push(Series {
                name: if k == 0 {
                    format!("{} (one line per seed; test accuracy)", v.name())
                } else {
                    String::new()
                },
                color: color(v),
                mark: Mark::Line,
                points: front,
            });
        }
    }
    let hlines: Vec<(f64, String)> =
        b.thresholds.iter().map(|t| (*t, format!("threshold {} %", threshold_label(*t)))).collect();
    report::plot(
        &b.out.join("fronts.svg"),
        &format!(
            "{} on {}: fronts over {} seeds at equal training budget",
            b.plan.arch_label(),
            b.plan.dataset.name(),
            b.seeds.len()
        ),
        "predicted online time / all-ReLU network's (loopback)",
        &series,
        &hlines,
    )
}

/// A path as the reader of a committed summary should see it: relative to
/// the working directory when it lies inside it (no machine's folders).
fn relative(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|d| p.strip_prefix(d).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

/// This process's command line, paths inside the working directory made
/// relative to it; a program outside it is named by its file name alone
/// (where this machine keeps it says nothing to another).
fn rerun_command() -> String {
    let cwd = std::env::current_dir().map(|d| format!("{}/", d.display())).unwrap_or_default();
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let rel = if cwd.len() > 1 { a.replace(&cwd, "") } else { a };
            match std::path::Path::new(&rel).file_name() {
                Some(name) if i == 0 && rel.starts_with('/') => name.to_string_lossy().into_owned(),
                _ => rel,
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn pm(m: (f64, f64), scale: f64, digits: usize) -> String {
    if m.1.is_finite() {
        format!("{:.*} ± {:.*}", digits, m.0 * scale, digits, m.1 * scale)
    } else {
        format!("{:.*}", digits, m.0 * scale)
    }
}

/// The statistics `summary.md` and `bench.json` report.
fn statistics(b: &BenchConfig, hv: &[Hv], chosen: &[Chosen]) -> serde_json::Value {
    let variants = b.variants();
    let ours = variants.iter().find(|v| v.ours()).map(|v| v.name());
    let hv_of = |v: &str, s: u64| hv.iter().find(|h| h.variant == v && h.seed == s);
    let mut per_variant = Vec::new();
    for v in &variants {
        let name = v.name();
        let vals: Vec<f64> =
            b.seeds.iter().filter_map(|&s| hv_of(&name, s)).map(|h| h.hv_predicted).collect();
        let meas: Vec<f64> =
            b.seeds.iter().filter_map(|&s| hv_of(&name, s)).map(|h| h.hv_measured).collect();
        let diff: Vec<f64> = match &ours {
            Some(o) if *o != name => b
                .seeds
                .iter()
                .filter_map(|&s| Some(hv_of(o, s)?.hv_predicted - hv_of(&name, s)?.hv_predicted))
                .collect(),
            _ => Vec::new(),
        };
        let steps: Vec<f64> =
            b.seeds.iter().filter_map(|&s| hv_of(&name, s)).map(|h| h.steps_used as f64).collect();
        let per_member: Vec<f64> = b
            .seeds
            .iter()
            .filter_map(|&s| hv_of(&name, s))
            .map(|h| h.steps_per_member as f64)
            .collect();
        let (d, dh) = mean_ci(&diff);
        per_variant.push(serde_json::json!({
            "variant": name,
            "seeds": vals.len(),
            "hv_predicted": mean_ci(&vals),
            "hv_measured": mean_ci(&meas),
            "ours_minus_this": (!diff.is_empty()).then_some((d, dh)),
            "ours_better_ci_above_zero": (!diff.is_empty()).then_some(d - dh > 0.0),
            "steps_used": mean_ci(&steps),
            "steps_per_member": mean_ci(&per_member),
        }));
    }
    let mut per_threshold = Vec::new();
    for &t in &b.thresholds {
        let of = |v: &str| -> Vec<&Chosen> {
            b.seeds
                .iter()
                .filter_map(|&s| {
                    chosen.iter().find(|c| c.variant == v && c.seed == s && c.threshold == t)
                })
                .collect()
        };
        let mut entries = Vec::new();
        let our = ours.as_deref().map(of).unwrap_or_default();
        for v in &variants {
            let name = v.name();
            let c = of(&name);
            let online: Vec<f64> = c.iter().map(|x| x.measured_online_s).collect();
            let predicted: Vec<f64> = c.iter().map(|x| x.predicted_online_s).collect();
            let acc: Vec<f64> = c.iter().map(|x| x.test_accuracy_fixed).collect();
            // Paired over seeds that both chose a plan.
            let (mut a, mut o) = (Vec::new(), Vec::new());
            // log(this ÷ ours) of the measured and predicted online time.
            let (mut log_measured, mut log_predicted) = (Vec::new(), Vec::new());
            for &s in &b.seeds {
                let mine = our.iter().find(|x| x.seed == s);
                let theirs = c.iter().find(|x| x.seed == s);
                if let (Some(m), Some(th)) = (mine, theirs) {
                    a.push(m.correct.clone());
                    o.push(th.correct.clone());
                    let r = (th.measured_online_s / m.measured_online_s).ln();
                    if r.is_finite() {
                        log_measured.push(r);
                    }
                    let r = (th.predicted_online_s / m.predicted_online_s).ln();
                    if r.is_finite() {
                        log_predicted.push(r);
                    }
                }
            }
            // A geometric mean over seeds with its 95 % interval.
            let ratio = |logs: &[f64]| {
                (!v.ours() && !logs.is_empty()).then(|| {
                    let (m, h) = mean_ci(logs);
                    let h = if h.is_finite() { h } else { f64::NAN };
                    serde_json::json!({"geomean": m.exp(), "ci95": [(m - h).exp(), (m + h).exp()]})
                })
            };
            let boot = (!v.ours() && !a.is_empty())
                .then(|| paired_bootstrap(&a, &o, BOOTSTRAP_REPS, 7 + (t * 1e4) as u64));
            entries.push(serde_json::json!({
                "variant": name,
                "plans": c.len(),
                "measured_online_s": mean_ci(&online),
                "predicted_online_s": mean_ci(&predicted),
                "test_accuracy_fixed": mean_ci(&acc),
                "ours_minus_this_accuracy": boot.map(|(m, lo, hi)| serde_json::json!({"mean": m, "ci95": [lo, hi]})),
                "this_over_ours_measured_online": ratio(&log_measured),
                "this_over_ours_predicted_online": ratio(&log_predicted),
            }));
        }
        per_threshold.push(serde_json::json!({"threshold": t, "variants": entries}));
    }
    serde_json::json!({"hypervolume": per_variant, "thresholds": per_threshold,
                       "hv_floor": b.hv_floor(), "bootstrap_reps": BOOTSTRAP_REPS})
}

/// A geometric-mean ratio with its interval (`2.10× [1.40, 3.15]`; no
/// interval from one seed).
fn ratio_cell(v: &serde_json::Value) -> String {
    let g = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    match v.get("geomean").map(g) {
        None => String::new(),
        Some(m) => {
            let (lo, hi) = (g(&v["ci95"][0]), g(&v["ci95"][1]));
            if lo.is_finite() && hi.is_finite() {
                format!("{m:.2}× [{lo:.2}, {hi:.2}]")
            } else {
                format!("{m:.2}×")
            }
        }
    }
}

fn num(v: &serde_json::Value) -> (f64, f64) {
    let g = |i: usize| v.get(i).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    (g(0), g(1))
}

fn summary(
    b: &BenchConfig,
    runs: &[Run],
    hv: &[Hv],
    chosen: &[Chosen],
    cost_model: &Path,
    seconds: f64,
) -> Result<()> {
    let stats = statistics(b, hv, chosen);
    let first = runs.first().map(|r| &r.outcome);
    let mut md = format!(
        "# Planner benchmark `{}`\n\n{} on {}; variants {}; search seeds {}; equal training budget \
         of {:.1} member-epochs per run; population {}; thresholds {} (on split B); objective: \
         {}; cost model `{}`. {:.0} s of search in all (the runs' own, resumed runs included), \
         {:.0} s in the process that wrote this summary. CPU: {} ({} cores).\n\n",
        b.out.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        b.plan.arch(),
        b.plan.dataset.name(),
        b.variants().iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        b.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
        b.plan.budget_epochs(),
        b.plan.population,
        b.thresholds.iter().map(|t| format!("{} %", threshold_label(*t))).collect::<Vec<_>>().join(", "),
        b.plan.objective.label(),
        relative(cost_model),
        runs.iter().map(|r| r.outcome.search_seconds).sum::<f64>(),
        seconds,
        delphi_crypto::bench::cpu_model(),
        delphi_crypto::bench::cores(),
    );
    if let Some(o) = first {
        md += &format!(
            "All-ReLU base: split-A validation {:.2} %, {} ReLUs, predicted online {:.4} s / {:.2} MB. \
             Fronts are built on split A ({} images){}; plans are chosen on split B ({} images); test \
             ({} images) is used for no choice. Every figure is the mean ± the half-width of its \
             95 % confidence interval over seeds (Student's t).\n\n",
            o.base_valid_accuracy * 100.0,
            o.relus,
            o.relu_cost.online_s,
            o.relu_cost.online_bytes / 1e6,
            b.plan.valid_size,
            if b.plan.front_slack > 0.0 {
                format!(
                    ", with a slack of {} standard errors (plans within it of the front kept for \
                     the choice, at most {}; the hypervolume counts the plain front only)",
                    b.plan.front_slack,
                    policy::FRONT_MAX
                )
            } else {
                String::new()
            },
            b.plan.select_size,
            b.plan.test_limit.map_or("all".to_string(), |n| n.to_string()),
        );
    }
    md += &format!(
        "## Fronts: hypervolume\n\nIn (predicted online time as a fraction of the all-ReLU \
         network's, test float accuracy), reference (1, {:.1} %), in accuracy points × cost \
         fraction; `ours − this` is paired by seed.\n\n| variant | hypervolume | ours − this | \
         training steps used | steps per member/probe |\n|---|---|---|---|---|\n",
        b.hv_floor() * 100.0
    );
    for v in stats["hypervolume"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {} | {} | {} | {} |\n",
            v["variant"].as_str().unwrap_or(""),
            pm(num(&v["hv_predicted"]), 1.0, 3),
            v["ours_minus_this"].as_array().map_or("".into(), |_| pm(
                num(&v["ours_minus_this"]),
                1.0,
                3
            )),
            pm(num(&v["steps_used"]), 1.0, 0),
            pm(num(&v["steps_per_member"]), 1.0, 0),
        );
    }
    md += &format!(
        "\n## Chosen plans per threshold\n\nMeasured online time by `delphi verify` (loopback; \
         each plan's median of {} run(s), taken in rounds over all measured plans), ",
        b.measure_repeats.max(1)
    );
    md += "fixed-point test accuracy, and ours − this in test accuracy by a paired bootstrap over \
           the test images (mean over seeds, 95 % interval); this ÷ ours is the measured online \
           time of this variant's plan over ours, paired by seed (geometric mean over seeds, 95 % \
           interval).\n\n| threshold | variant | plans | measured online s | predicted online s | \
           test fixed % | ours − this (points) | this ÷ ours, measured online |\n\
           |---|---|---|---|---|---|---|---|\n";
    for t in stats["thresholds"].as_array().into_iter().flatten() {
        let th = t["threshold"].as_f64().unwrap_or(f64::NAN);
        for v in t["variants"].as_array().into_iter().flatten() {
            let boot = &v["ours_minus_this_accuracy"];
            md += &format!(
                "| {} % | {} | {} | {} | {} | {} | {} | {} |\n",
                threshold_label(th),
                v["variant"].as_str().unwrap_or(""),
                v["plans"],
                pm(num(&v["measured_online_s"]), 1.0, 4),
                pm(num(&v["predicted_online_s"]), 1.0, 4),
                pm(num(&v["test_accuracy_fixed"]), 100.0, 2),
                if boot.is_null() {
                    String::new()
                } else {
                    format!(
                        "{:+.2} [{:+.2}, {:+.2}]",
                        boot["mean"].as_f64().unwrap_or(f64::NAN) * 100.0,
                        boot["ci95"][0].as_f64().unwrap_or(f64::NAN) * 100.0,
                        boot["ci95"][1].as_f64().unwrap_or(f64::NAN) * 100.0
                    )
                },
                ratio_cell(&v["this_over_ours_measured_online"]),
            );
        }
    }
    let unprovable: usize = runs.iter().map(|r| r.outcome.unprovable).sum();
    md += &format!(
        "\nSettled evaluations whose trained network could not be proven inside the protocol's \
         range (never plans; ranked behind every plan): {unprovable}.\n\nFiles: `fronts.csv` (every front plan per seed and variant, split-A \
         and split-B accuracy, test accuracy, predicted and measured cost; `chosen_for` lists the \
         thresholds it was chosen for), `chosen.csv`, `hypervolume.csv`, `fronts.svg`, \
         `bench.json`; each run's folder (`seed-<s>/<variant>/`) holds `members.csv`, \
         `pareto.csv`, `lineage.log` and its front plans under `front/`.\n\nRerun: `{}`\n",
        rerun_command()
    );
    let p = b.out.join("summary.md");
    std::fs::write(&p, md).map_err(|e| perr(&p, e))?;
    let json = serde_json::json!({
        "arch": b.plan.arch(),
        "dataset": b.plan.dataset.name(),
        "thresholds": b.thresholds,
        "variants": b.variants().iter().map(|s| s.name()).collect::<Vec<_>>(),
        "seeds": b.seeds,
        "budget_member_epochs": b.plan.budget_epochs(),
        "population": b.plan.population,
        "split_a_images": b.plan.valid_size,
        "split_b_images": b.plan.select_size,
        "cpu_model": delphi_crypto::bench::cpu_model(),
        "cores": delphi_crypto::bench::cores(),
        "seconds": seconds,
        "search_seconds_total": runs.iter().map(|r| r.outcome.search_seconds).sum::<f64>(),
        "statistics": stats,
        "unprovable_evaluations": unprovable,
        "runs": runs.iter().map(|r| serde_json::json!({
            "seed": r.seed, "variant": r.variant.name(), "out": r.config.out(),
            "steps_used": r.outcome.steps.0, "budget_steps": r.outcome.steps.1,
            "evaluations": r.outcome.evaluations.len(), "search_seconds": r.outcome.search_seconds,
        })).collect::<Vec<_>>(),
        "rerun": rerun_command(),
    });
    let p = b.out.join("bench.json");
    std::fs::write(&p, serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")
        .map_err(|e| perr(&p, e))
}
