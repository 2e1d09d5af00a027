//! `delphi-plan bench`: the strategies side by side, at equal training
//! budget, on one base network, cost model and data.
//!
//! The all-ReLU base is made once (trained, or the provider's network) and
//! every run starts from it. Our search (`pbt`) runs once per threshold,
//! since the threshold shapes its fitness; DELPHI's planner runs once (its
//! search ignores the threshold, which is applied afterwards, as in the
//! original); the greedy rule runs once down to the lowest threshold (its
//! path to a higher threshold is a prefix of that one). Every run gets the
//! same budget of training steps. For each strategy and threshold the plan
//! is the cheapest front plan meeting the threshold (near-ties in cost to
//! the more accurate: [`crate::policy::choose`]) — the same rule for all.
//! With `--granularity layer,channel`, `pbt` also runs once per threshold
//! with per-channel placement (rows with `granularity` = `channel`).
//!
//! Written to the bench folder: `fronts.csv` (one row per front plan and
//! threshold: strategy, granularity, threshold, placement, ReLUs, validation
//! and test accuracy in float and fixed point, predicted and — for chosen
//! plans — measured online and offline cost), `fronts.svg`, `summary.md`,
//! `bench.json`; each run's own folder holds its tables and plans.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use plotters::style::RGBColor;
use polars::prelude::*;

use crate::config::{Granularity, PlanConfig, Strategy};
use crate::engine::VerifyReport;
use crate::error::Result;
use crate::measure;
use crate::policy;
use crate::report::{self, perr, Final, Mark, Series};
use crate::search::{self, Evaluation, Outcome};

/// What the benchmark runs.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Settings shared by every run (dataset, architecture, population,
    /// epochs, budget, seed, data limits, objective, cost model).
    pub plan: PlanConfig,
    /// Validation-accuracy thresholds.
    pub thresholds: Vec<f64>,
    /// Strategies compared.
    pub strategies: Vec<Strategy>,
    /// Granularities: `layer` runs every strategy, `channel` adds `pbt` per channel.
    pub granularities: Vec<Granularity>,
    /// The bench folder.
    pub out: PathBuf,
    /// Run each chosen plan through `delphi verify --compare-cost`.
    pub verify: bool,
}

/// One row of `fronts.csv`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// Strategy.
    pub strategy: String,
    /// Placement granularity (`layer` or `channel`).
    pub granularity: String,
    /// Threshold the row belongs to.
    pub threshold: f64,
    /// Whether this is the strategy's plan for the threshold.
    pub chosen: bool,
    /// Placement.
    pub placement: String,
    /// Per activation layer, the percentage of channels kept ReLU
    /// (`channel` rows; empty for `layer` rows).
    pub relu_channels: String,
    /// Quadratic layers.
    pub quads: usize,
    /// ReLU activations left.
    pub relus: usize,
    /// Validation accuracy.
    pub valid_accuracy: f64,
    /// Test accuracy, float.
    pub test_accuracy_float: f64,
    /// Test accuracy, the protocol's fixed point.
    pub test_accuracy_fixed: f64,
    /// Predicted online seconds.
    pub predicted_online_s: f64,
    /// Predicted online bytes.
    pub predicted_online_bytes: f64,
    /// Predicted offline seconds.
    pub predicted_offline_s: f64,
    /// Predicted offline bytes.
    pub predicted_offline_bytes: f64,
    /// Measured online seconds (chosen plans with verification).
    pub measured_online_s: f64,
    /// Measured online bytes.
    pub measured_online_bytes: f64,
    /// Measured offline seconds.
    pub measured_offline_s: f64,
    /// Measured offline bytes.
    pub measured_offline_bytes: f64,
    /// Training steps the run used / its budget.
    pub steps_used: usize,
    /// The budget in steps.
    pub budget_steps: usize,
    /// The plan's file.
    pub file: String,
}

/// A strategy at a granularity: what one series of the benchmark is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// The strategy.
    pub strategy: Strategy,
    /// The granularity.
    pub granularity: Granularity,
}

impl Variant {
    /// `pbt`, `delphi`, `greedy`, or `pbt-channel`.
    pub fn name(self) -> String {
        match self.granularity {
            Granularity::Layer => self.strategy.name().to_string(),
            g => format!("{}-{}", self.strategy.name(), g.name()),
        }
    }

    fn of(r: &Row) -> impl Fn(&Variant) -> bool + '_ {
        move |v| v.strategy.name() == r.strategy && v.granularity.name() == r.granularity
    }

    fn matches(self, r: &Row) -> bool {
        Variant::of(r)(&self)
    }
}

impl BenchConfig {
    /// The variants run: every strategy per layer, then `pbt` per channel.
    pub fn variants(&self) -> Vec<Variant> {
        let mut v = Vec::new();
        if self.granularities.contains(&Granularity::Layer) {
            v.extend(
                self.strategies
                    .iter()
                    .map(|&strategy| Variant { strategy, granularity: Granularity::Layer }),
            );
        }
        if self.granularities.contains(&Granularity::Channel) {
            v.push(Variant { strategy: Strategy::Pbt, granularity: Granularity::Channel });
        }
        v
    }
}

fn color(v: Variant) -> RGBColor {
    match (v.strategy, v.granularity) {
        (_, Granularity::Channel) => RGBColor(148, 103, 189),
        (Strategy::Pbt, _) => RGBColor(31, 119, 180),
        (Strategy::Delphi, _) => RGBColor(214, 39, 40),
        (Strategy::Greedy, _) => RGBColor(44, 160, 44),
    }
}

fn rows_table(rows: &[Row]) -> std::result::Result<DataFrame, PolarsError> {
    let s = |n: &str, f: &dyn Fn(&Row) -> String| report::column(n, rows, f);
    let f = |n: &str, f: &dyn Fn(&Row) -> f64| report::column(n, rows, f);
    let u = |n: &str, f: &dyn Fn(&Row) -> u64| report::column(n, rows, f);
    DataFrame::new(
        rows.len(),
        vec![
            s("strategy", &|r| r.strategy.clone()),
            s("granularity", &|r| r.granularity.clone()),
            f("threshold", &|r| r.threshold),
            report::column("chosen", rows, |r| r.chosen),
            s("placement", &|r| r.placement.clone()),
            s("relu_channels", &|r| r.relu_channels.clone()),
            u("quads", &|r| r.quads as u64),
            u("relus", &|r| r.relus as u64),
            f("valid_accuracy", &|r| r.valid_accuracy),
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

/// Runs the benchmark; returns the rows of `fronts.csv`.
pub fn run(b: &BenchConfig, quiet: bool, say: &dyn Fn(&str)) -> Result<Vec<Row>> {
    let variants = b.variants();
    if b.thresholds.is_empty() || variants.is_empty() {
        return Err(crate::error::PlanError::Config(
            "the benchmark needs at least one threshold and one strategy".into(),
        ));
    }
    let started = Instant::now();
    std::fs::create_dir_all(&b.out).map_err(|e| perr(&b.out, e))?;
    let mut shared = b.plan.clone();
    shared.out = Some(b.out.clone());
    shared.verify = false;
    let cost_model = crate::pricing::cost_model_path(&shared, &b.out, say)?;
    shared.cost_model = Some(cost_model.clone());
    let data = search::load_data(&shared)?;
    let device = search::device(&shared)?;
    let base = search::prepare_base(&shared, &data, &device, quiet, say)?;
    let lowest = b.thresholds.iter().cloned().fold(f64::INFINITY, f64::min);

    // The runs: (strategy, threshold it serves (None: all), config).
    let mut runs: Vec<(Variant, Option<f64>, PlanConfig)> = Vec::new();
    for &v in &variants {
        let s = v.strategy;
        let mk = |acc: f64, dir: String| {
            let mut c = shared.clone();
            c.strategy = s;
            c.granularity = v.granularity;
            c.accuracy = acc;
            c.arch = Some(base.plan.to_string_lossy().into_owned());
            c.name = Some(format!(
                "{}-{dir}",
                b.out.file_name().map_or("bench".into(), |n| n.to_string_lossy().into_owned())
            ));
            c.out = Some(b.out.join(&dir));
            c
        };
        match s {
            Strategy::Pbt => {
                for &t in &b.thresholds {
                    runs.push((v, Some(t), mk(t, format!("{}-{:.0}", v.name(), t * 1000.0))));
                }
            }
            _ => runs.push((v, None, mk(lowest, v.name()))),
        }
    }
    let mut outcomes: Vec<(Variant, Option<f64>, PlanConfig, Outcome)> = Vec::new();
    let n_runs = runs.len();
    for (k, (s, t, c)) in runs.into_iter().enumerate() {
        say(&format!(
            "run {}/{n_runs}: {} {}",
            k + 1,
            s.name(),
            t.map_or("(every threshold)".to_string(), |t| format!("threshold {:.1} %", t * 100.0))
        ));
        let o = crate::strategy::run(&c, quiet, say)?;
        outcomes.push((s, t, c, o));
    }

    // Test accuracy of every front plan (kept in test-accuracy.json, so a
    // rerun of a finished bench measures only what is new), verification
    // of chosen ones (always measured afresh).
    let cache_path = b.out.join("test-accuracy.json");
    // Keyed by the plan's path and modification time.
    let key = |f: &Path| -> String {
        let t = std::fs::metadata(f)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("{}@{t}", f.display())
    };
    let mut cache: HashMap<String, (f64, f64)> = std::fs::read_to_string(&cache_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut acc: HashMap<PathBuf, (f64, f64)> = HashMap::new();
    let mut measured: HashMap<PathBuf, VerifyReport> = HashMap::new();
    let mut rows = Vec::new();
    for &t in &b.thresholds {
        for &s in &variants {
            let Some((_, _, c, o)) =
                outcomes.iter().find(|(os, ot, _, _)| *os == s && ot.is_none_or(|x| x == t))
            else {
                continue;
            };
            let chosen = o.plan_for(t).map(|(_, f)| f.clone());
            for (e, file) in &o.front {
                if !acc.contains_key(file) {
                    let k = key(file);
                    let v = match cache.get(&k) {
                        Some(v) => *v,
                        None => {
                            say(&format!("test accuracy of {} ({})", e.placement, s.name()));
                            let v = measure::test_accuracy(c, file, &data)?;
                            cache.insert(k, v);
                            std::fs::write(
                                &cache_path,
                                serde_json::to_string(&cache).unwrap_or_default(),
                            )
                            .map_err(|e| perr(&cache_path, e))?;
                            v
                        }
                    };
                    acc.insert(file.clone(), v);
                }
                let is_chosen = chosen.as_ref() == Some(file);
                if is_chosen && b.verify && !measured.contains_key(file) {
                    say(&format!("delphi verify on {} ({})", e.placement, s.name()));
                    measured.insert(file.clone(), crate::engine::verify(file, &cost_model)?);
                }
                let (tf, tx) = acc[file];
                let m = |k: fn(&delphi_cost::Cost) -> f64| {
                    measured.get(file).filter(|_| is_chosen).map_or(f64::NAN, |v| k(&v.measured))
                };
                rows.push(Row {
                    strategy: s.strategy.name().into(),
                    granularity: s.granularity.name().into(),
                    threshold: t,
                    chosen: is_chosen,
                    placement: e.placement.to_string(),
                    relu_channels: e.relu_channels.clone(),
                    quads: e.quads,
                    relus: e.relus,
                    valid_accuracy: e.valid_accuracy,
                    test_accuracy_float: tf,
                    test_accuracy_fixed: tx,
                    predicted_online_s: e.online_s,
                    predicted_online_bytes: e.online_bytes,
                    predicted_offline_s: e.offline_s,
                    predicted_offline_bytes: e.offline_bytes,
                    measured_online_s: m(|c| c.online_s),
                    measured_online_bytes: m(|c| c.online_bytes),
                    measured_offline_s: m(|c| c.offline_s),
                    measured_offline_bytes: m(|c| c.offline_bytes),
                    steps_used: o.steps.0,
                    budget_steps: o.steps.1,
                    file: file.strip_prefix(&b.out).unwrap_or(file).to_string_lossy().into_owned(),
                });
            }
        }
    }
    // Each run's own folder: tables, plot and summary.
    for (_, _, c, o) in &outcomes {
        let fin = match o.chosen.as_ref().or(o.closest.as_ref()) {
            Some(e) => {
                let file = o.front.iter().find(|(f, _)| f.index == e.index).map(|x| x.1.clone());
                let net = file.as_ref().and_then(|f| delphi_net::Network::load(f).ok());
                let share_dependent_roundings = net.as_ref().and_then(|n| {
                    delphi_net::FixedProgram::lower(n).ok().map(|p| p.share_dependent_roundings())
                });
                let relu_bits = net.and_then(|n| n.metadata.relu_bits);
                let (tf, tx) =
                    file.and_then(|f| acc.get(&f).copied()).unwrap_or((f64::NAN, f64::NAN));
                Final {
                    test_accuracy_float: tf,
                    test_accuracy_fixed: tx,
                    quads: e.quads,
                    layers: e.placement.len(),
                    verify: None,
                    seconds: 0.0,
                    relu_bits,
                    share_dependent_roundings,
                }
            }
            None => Final::default(),
        };
        report::write(&c.out(), c, o, &fin)?;
    }
    let mut df = rows_table(&rows).map_err(|e| perr(&b.out, e))?;
    report::write_csv(&b.out.join("fronts.csv"), &mut df)?;
    plot(b, &outcomes, &rows)?;
    summary(b, &outcomes, &rows, &cost_model, started.elapsed().as_secs_f64())?;
    Ok(rows)
}

fn plot(
    b: &BenchConfig,
    outcomes: &[(Variant, Option<f64>, PlanConfig, Outcome)],
    rows: &[Row],
) -> Result<()> {
    let mut series = Vec::new();
    for s in b.variants() {
        let evals: Vec<&Evaluation> = outcomes
            .iter()
            .filter(|o| o.0 == s)
            .flat_map(|o| o.3.front.iter().map(|(e, _)| e))
            .collect();
        let pts: Vec<(f64, f64)> = evals.iter().map(|e| (e.online_s, e.valid_accuracy)).collect();
        let front: Vec<(f64, f64)> =
            policy::pareto(&pts.iter().map(|&(c, a)| (a, c)).collect::<Vec<_>>())
                .into_iter()
                .map(|i| pts[i])
                .collect();
        series.push(Series {
            name: format!("{}: front (validation)", s.name()),
            color: color(s),
            mark: Mark::Line,
            points: front,
        });
        let chosen: Vec<&Row> = rows.iter().filter(|r| r.chosen && s.matches(r)).collect();
        series.push(Series {
            name: format!("{}: chosen plans (fixed-point test accuracy)", s.name()),
            color: color(s),
            mark: Mark::Triangle,
            points: chosen.iter().map(|r| (r.predicted_online_s, r.test_accuracy_fixed)).collect(),
        });
        let measured: Vec<(f64, f64)> = chosen
            .iter()
            .filter(|r| r.measured_online_s.is_finite())
            .map(|r| (r.measured_online_s, r.test_accuracy_fixed))
            .collect();
        if !measured.is_empty() {
            series.push(Series {
                name: format!("{}: chosen plans at measured online time", s.name()),
                color: color(s),
                mark: Mark::Ring,
                points: measured,
            });
        }
    }
    let hlines: Vec<(f64, String)> =
        b.thresholds.iter().map(|t| (*t, format!("threshold {:.1} %", t * 100.0))).collect();
    report::plot(
        &b.out.join("fronts.svg"),
        &format!(
            "{} on {}: placement strategies at equal training budget",
            b.plan.arch_label(),
            b.plan.dataset.name()
        ),
        "predicted online seconds (loopback)",
        &series,
        &hlines,
    )
}

/// For every front plan of `pbt` per channel: the most accurate `pbt` per
/// layer front plan that costs no more, and the cheapest that is at least
/// as accurate (validation accuracy, predicted online time), per threshold.
fn granularity_comparison(b: &BenchConfig, rows: &[Row]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for &t in &b.thresholds {
        let front = |g: &str| -> Vec<&Row> {
            rows.iter()
                .filter(|r| r.strategy == "pbt" && r.granularity == g && r.threshold == t)
                .collect()
        };
        let (channel, layer) = (front("channel"), front("layer"));
        if channel.is_empty() || layer.is_empty() {
            continue;
        }
        for c in channel {
            let at_cost = layer
                .iter()
                .filter(|l| l.predicted_online_s <= c.predicted_online_s * 1.0001)
                .map(|l| l.valid_accuracy)
                .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
            let at_accuracy = layer
                .iter()
                .filter(|l| l.valid_accuracy >= c.valid_accuracy)
                .map(|l| l.predicted_online_s)
                .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.min(s))));
            out.push(serde_json::json!({
                "threshold": t,
                "relu_channels": c.relu_channels,
                "relus": c.relus,
                "online_s": c.predicted_online_s,
                "valid_accuracy": c.valid_accuracy,
                "test_accuracy_fixed": c.test_accuracy_fixed,
                "layer_at_cost": at_cost,
                "accuracy_gain_points": at_cost.map(|a| (c.valid_accuracy - a) * 100.0),
                "layer_at_accuracy_s": at_accuracy,
                "cost_ratio": at_accuracy.map(|s| s / c.predicted_online_s.max(1e-12)),
            }));
        }
    }
    out
}

fn summary(
    b: &BenchConfig,
    outcomes: &[(Variant, Option<f64>, PlanConfig, Outcome)],
    rows: &[Row],
    cost_model: &Path,
    seconds: f64,
) -> Result<()> {
    let base = outcomes.first().map(|o| &o.3);
    let mut md = format!(
        "# Planner benchmark `{}`\n\n{} on {}; strategies {} at equal training budget ({:.1} \
         member-epochs each); population {}; thresholds {}; objective: {}; cost model `{}`. \
         {:.0} s of search in all (each run's own, resumed runs included), {:.0} s in the \
         process that wrote this summary.\n\n",
        b.out.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        b.plan.arch(),
        b.plan.dataset.name(),
        b.variants().iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        b.plan.budget_epochs(),
        b.plan.population,
        b.thresholds.iter().map(|t| format!("{:.1} %", t * 100.0)).collect::<Vec<_>>().join(", "),
        b.plan.objective.label(),
        cost_model.display(),
        outcomes.iter().map(|o| o.3.search_seconds).sum::<f64>(),
        seconds
    );
    if let Some(o) = base {
        md += &format!(
            "All-ReLU base: validation {:.2} %, {} ReLUs, predicted online {:.4} s / {:.2} MB.\n\n",
            o.base_valid_accuracy * 100.0,
            o.relus,
            o.relu_cost.online_s,
            o.relu_cost.online_bytes / 1e6
        );
    }
    md += "| threshold | strategy | placement | ReLUs | valid | test float | test fixed | predicted online s | measured online s | predicted online MB | measured online MB |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for &t in &b.thresholds {
        for s in b.variants() {
            match rows
                .iter()
                .find(|r| r.chosen && s.matches(r) && r.threshold == t)
            {
                Some(r) => {
                    md += &format!(
                        "| {:.1} % | {} | `{}` | {} | {:.2} % | {:.2} % | {:.2} % | {:.4} | {:.4} | {:.3} | {:.3} |\n",
                        t * 100.0,
                        s.name(),
                        if r.granularity == "channel" {
                            format!("% ReLU per layer: {}", r.relu_channels)
                        } else {
                            r.placement.clone()
                        },
                        r.relus,
                        r.valid_accuracy * 100.0,
                        r.test_accuracy_float * 100.0,
                        r.test_accuracy_fixed * 100.0,
                        r.predicted_online_s,
                        r.measured_online_s,
                        r.predicted_online_bytes / 1e6,
                        r.measured_online_bytes / 1e6
                    )
                }
                None => md += &format!("| {:.1} % | {} | none met it | | | | | | | | |\n", t * 100.0, s.name()),
            }
        }
    }
    let mut verdicts = Vec::new();
    let both = b.strategies.contains(&Strategy::Pbt)
        && b.strategies.contains(&Strategy::Delphi)
        && b.granularities.contains(&Granularity::Layer);
    if both {
        md += "\nOurs against DELPHI's planner (online time of the chosen plans: measured by \
               `delphi verify` where it ran, predicted beside it):\n\n";
    }
    for &t in b.thresholds.iter().filter(|_| both) {
        let get = |s: &str| {
            rows.iter()
                .find(|r| {
                    r.chosen && r.strategy == s && r.granularity == "layer" && r.threshold == t
                })
                .map(|r| (r.predicted_online_s, r.measured_online_s))
        };
        let line = match (get("pbt"), get("delphi")) {
            (Some((p, pm)), Some((d, dm))) => {
                let measured = pm.is_finite() && dm.is_finite();
                // The verdict follows measured time where both were measured.
                let (mine, theirs) = if measured { (pm, dm) } else { (p, d) };
                verdicts.push(mine <= theirs * 1.0001);
                let verdict = if mine <= theirs * 1.0001 {
                    "(ours at least as cheap)"
                } else {
                    "(DELPHI's cheaper)"
                };
                let predicted = format!("pbt {p:.4} s, delphi {d:.4} s → {:.2}×", d / p.max(1e-12));
                if measured {
                    format!(
                        "- {:.1} %: measured pbt {pm:.4} s, delphi {dm:.4} s → {:.2}× {verdict}; \
                         predicted {predicted}\n",
                        t * 100.0,
                        dm / pm.max(1e-12),
                    )
                } else {
                    format!("- {:.1} %: predicted {predicted} {verdict}\n", t * 100.0)
                }
            }
            (Some((p, _)), None) => {
                format!("- {:.1} %: pbt {:.4} s, delphi found no plan\n", t * 100.0, p)
            }
            (None, Some((d, _))) => {
                verdicts.push(false);
                format!("- {:.1} %: pbt found no plan, delphi {:.4} s\n", t * 100.0, d)
            }
            (None, None) => format!("- {:.1} %: neither found a plan\n", t * 100.0),
        };
        md += &line;
    }
    let granularity = granularity_comparison(b, rows);
    if !granularity.is_empty() {
        md += "\nPer channel against per layer (`pbt`, each plan of one front against the other \
               front; validation accuracy, predicted online time):\n\n";
        for g in &granularity {
            md += &format!(
                "- {:.1} %: channel plan `{}` at {:.4} s, validation {:.2} % (test fixed {:.2} %); \
                 the best layer plan at no more cost: {}; the cheapest layer plan at least as \
                 accurate: {}\n",
                g["threshold"].as_f64().unwrap_or(f64::NAN) * 100.0,
                g["relu_channels"].as_str().unwrap_or(""),
                g["online_s"].as_f64().unwrap_or(f64::NAN),
                g["valid_accuracy"].as_f64().unwrap_or(f64::NAN) * 100.0,
                g["test_accuracy_fixed"].as_f64().unwrap_or(f64::NAN) * 100.0,
                match g["layer_at_cost"].as_f64() {
                    Some(a) => format!(
                        "{:.2} % ({:+.2} points)",
                        a * 100.0,
                        g["accuracy_gain_points"].as_f64().unwrap_or(f64::NAN)
                    ),
                    None => "none".into(),
                },
                match g["layer_at_accuracy_s"].as_f64() {
                    Some(c) => format!(
                        "{c:.4} s ({:.2}× the channel plan's cost)",
                        g["cost_ratio"].as_f64().unwrap_or(f64::NAN)
                    ),
                    None => "none".into(),
                },
            );
        }
    }
    md += &format!(
        "\nFiles: `fronts.csv` (every front plan per threshold; `chosen` marks each strategy's \
         plan), `fronts.svg`, `bench.json`; each run's folder holds `members.csv`, `pareto.csv`, \
         `lineage.log`, `summary.md` and its front plans under `front/`.\n\nRerun: `{}`\n",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let p = b.out.join("summary.md");
    std::fs::write(&p, md).map_err(|e| perr(&p, e))?;
    let json = serde_json::json!({
        "arch": b.plan.arch(),
        "dataset": b.plan.dataset.name(),
        "thresholds": b.thresholds,
        "strategies": b.variants().iter().map(|s| s.name()).collect::<Vec<_>>(),
        "budget_member_epochs": b.plan.budget_epochs(),
        "population": b.plan.population,
        "cpu_model": delphi_crypto::bench::cpu_model(),
        "cores": delphi_crypto::bench::cores(),
        "seconds": seconds,
        "search_seconds_total": outcomes.iter().map(|o| o.3.search_seconds).sum::<f64>(),
        "ours_at_least_as_cheap_at_every_threshold": (!verdicts.is_empty()).then(|| verdicts.iter().all(|v| *v)),
        "channel_vs_layer": granularity,
        "rows": rows,
        "runs": outcomes.iter().map(|(s, t, c, o)| serde_json::json!({
            "strategy": s.name(), "threshold": t, "out": c.out(),
            "steps_used": o.steps.0, "budget_steps": o.steps.1,
            "evaluations": o.evaluations.len(), "search_seconds": o.search_seconds,
        })).collect::<Vec<_>>(),
        "rerun": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let p = b.out.join("bench.json");
    std::fs::write(&p, serde_json::to_string_pretty(&json).unwrap_or_default() + "\n")
        .map_err(|e| perr(&p, e))
}
