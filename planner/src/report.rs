//! The run folder's tables, plot and summary.
//!
//! `members.csv` (every evaluation), `pareto.csv` and `pareto.parquet` (the
//! non-dominated evaluations: no other is both more accurate and cheaper),
//! `pareto.svg` (accuracy against predicted cost, the front highlighted and
//! the chosen plan circled) and `summary.md`. Tables are built with polars.

use std::fs::File;
use std::path::Path;

use polars::prelude::*;

use crate::search::{Evaluation, Outcome, PlanError, Result};

fn perr(path: &Path, e: impl std::fmt::Display) -> PlanError {
    PlanError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The evaluations as a polars table.
pub fn table(evals: &[Evaluation]) -> std::result::Result<DataFrame, PolarsError> {
    let col_u = |name: &str, f: &dyn Fn(&Evaluation) -> u64| {
        Column::new(name.into(), evals.iter().map(f).collect::<Vec<u64>>())
    };
    let col_f = |name: &str, f: &dyn Fn(&Evaluation) -> f64| {
        Column::new(name.into(), evals.iter().map(f).collect::<Vec<f64>>())
    };
    DataFrame::new(
        evals.len(),
        vec![
            col_u("interval", &|e| e.interval as u64),
            col_u("member", &|e| e.member as u64),
            Column::new(
                "placement".into(),
                evals
                    .iter()
                    .map(|e| e.placement.clone())
                    .collect::<Vec<String>>(),
            ),
            col_u("quads", &|e| e.quads as u64),
            Column::new(
                "settled".into(),
                evals.iter().map(|e| e.settled).collect::<Vec<bool>>(),
            ),
            col_f("valid_accuracy", &|e| e.valid_accuracy),
            col_f("cost", &|e| e.cost),
            col_f("online_s", &|e| e.online_s),
            col_f("online_bytes", &|e| e.online_bytes),
            col_f("offline_s", &|e| e.offline_s),
            col_f("offline_bytes", &|e| e.offline_bytes),
            col_f("fitness", &|e| e.fitness),
            col_f("lr", &|e| e.lr),
            col_f("momentum", &|e| e.momentum),
            col_f("weight_decay", &|e| e.weight_decay),
            col_f("distill_weight", &|e| e.distill_weight as f64),
            col_f("swap_span", &|e| e.swap_span as f64),
        ],
    )
}

/// The Pareto front (accuracy up, cost down) of the settled evaluations,
/// cheapest first.
pub fn pareto(evals: &[Evaluation]) -> Vec<Evaluation> {
    let settled: Vec<&Evaluation> = evals.iter().filter(|e| e.settled).collect();
    let mut front: Vec<Evaluation> = settled
        .iter()
        .filter(|e| {
            !settled.iter().any(|o| {
                (o.valid_accuracy >= e.valid_accuracy && o.cost < e.cost)
                    || (o.valid_accuracy > e.valid_accuracy && o.cost <= e.cost)
            })
        })
        .map(|e| (*e).clone())
        .collect();
    front.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    front.dedup_by(|a, b| a.cost == b.cost && a.valid_accuracy == b.valid_accuracy);
    front
}

fn write_csv(path: &Path, df: &mut DataFrame) -> Result<()> {
    let mut f = File::create(path).map_err(|e| perr(path, e))?;
    CsvWriter::new(&mut f).finish(df).map_err(|e| perr(path, e))
}

fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<()> {
    let f = File::create(path).map_err(|e| perr(path, e))?;
    ParquetWriter::new(f)
        .finish(df)
        .map(|_| ())
        .map_err(|e| perr(path, e))
}

/// A small SVG scatter plot: every evaluation grey, the front blue, the
/// chosen plan circled red, the threshold dashed.
pub fn svg(
    evals: &[Evaluation],
    front: &[Evaluation],
    chosen: Option<&Evaluation>,
    threshold: f64,
    cost_label: &str,
) -> String {
    let (w, h, m) = (640.0, 420.0, 60.0);
    let xs = evals.iter().map(|e| e.cost);
    let (xmin, xmax) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let ys = evals.iter().map(|e| e.valid_accuracy).chain([threshold]);
    let (ymin, ymax) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    let (xmin, xmax) = if xmax > xmin {
        (xmin, xmax)
    } else {
        (xmin - 1.0, xmax + 1.0)
    };
    let (ymin, ymax) = if ymax > ymin {
        (ymin - 0.005, ymax + 0.005)
    } else {
        (ymin - 0.05, ymax + 0.05)
    };
    let px = |x: f64| m + (x - xmin) / (xmax - xmin) * (w - 2.0 * m);
    let py = |y: f64| h - m - (y - ymin) / (ymax - ymin) * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{cx}\" y=\"{t}\" text-anchor=\"middle\">{cost_label}</text>\n\
         <text x=\"15\" y=\"{cy}\" transform=\"rotate(-90 15 {cy})\" text-anchor=\"middle\">validation accuracy</text>\n",
        b = h - m,
        r = w - m,
        cx = w / 2.0,
        t = h - 15.0,
        cy = h / 2.0,
    );
    for (v, anchor_x, anchor_y) in [
        (format!("{xmin:.4}"), px(xmin), h - m + 18.0),
        (format!("{xmax:.4}"), px(xmax), h - m + 18.0),
    ] {
        s +=
            &format!("<text x=\"{anchor_x}\" y=\"{anchor_y}\" text-anchor=\"middle\">{v}</text>\n");
    }
    for v in [ymin, ymax] {
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1}%</text>\n",
            m - 5.0,
            py(v) + 4.0,
            v * 100.0
        );
    }
    s += &format!(
        "<line x1=\"{m}\" y1=\"{y}\" x2=\"{r}\" y2=\"{y}\" stroke=\"orange\" stroke-dasharray=\"5,4\"/>\n\
         <text x=\"{r}\" y=\"{ty}\" text-anchor=\"end\" fill=\"orange\">threshold {:.1}%</text>\n",
        threshold * 100.0,
        y = py(threshold),
        ty = py(threshold) - 4.0,
        r = w - m
    );
    for e in evals {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>\n",
            px(e.cost),
            py(e.valid_accuracy),
            if e.settled { "#999" } else { "#ddd" }
        );
    }
    let pts: Vec<String> = front
        .iter()
        .map(|e| format!("{:.1},{:.1}", px(e.cost), py(e.valid_accuracy)))
        .collect();
    s += &format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\"/>\n",
        pts.join(" ")
    );
    for e in front {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#1f77b4\"/>\n",
            px(e.cost),
            py(e.valid_accuracy)
        );
    }
    if let Some(e) = chosen {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"8\" fill=\"none\" stroke=\"red\" stroke-width=\"2\"/>\n",
            px(e.cost),
            py(e.valid_accuracy)
        );
    }
    s + "</svg>\n"
}

/// Figures measured once at the end.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Final {
    /// Test accuracy in float.
    pub test_accuracy_float: f64,
    /// Test accuracy in fixed point.
    pub test_accuracy_fixed: f64,
    /// Activation layers replaced.
    pub quads: usize,
    /// Activation layers.
    pub layers: usize,
    /// `delphi verify`-style measurement, if asked: (predicted, measured) JSON.
    pub verify: Option<serde_json::Value>,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
}

/// Writes members.csv, pareto.csv/.parquet, pareto.svg and summary.md.
pub fn write(out: &Path, c: &crate::config::PlanConfig, o: &Outcome, fin: &Final) -> Result<()> {
    let mut all = table(&o.evaluations).map_err(|e| perr(out, e))?;
    write_csv(&out.join("members.csv"), &mut all)?;
    let front = pareto(&o.evaluations);
    let mut pf = table(&front).map_err(|e| perr(out, e))?;
    write_csv(&out.join("pareto.csv"), &mut pf)?;
    write_parquet(&out.join("pareto.parquet"), &mut pf)?;
    let chosen = o.chosen.as_ref().or(o.closest.as_ref());
    let plot = svg(
        &o.evaluations,
        &front,
        chosen,
        c.accuracy,
        c.objective.label(),
    );
    let sp = out.join("pareto.svg");
    std::fs::write(&sp, plot).map_err(|e| perr(&sp, e))?;

    let relu = c.objective.of(&o.relu_cost);
    let mut md = format!(
        "# Plan `{}`\n\n{} on {}, threshold {:.1} % validation accuracy, objective: {}.\n\n",
        c.name(),
        c.arch(),
        c.dataset.name(),
        c.accuracy * 100.0,
        c.objective.label()
    );
    match (&o.chosen, &o.closest) {
        (Some(e), _) => md += &format!(
            "**Chosen plan** (`plan.json`): placement `{}` — {} of {} activation layers quadratic; \
             validation {:.2} %; test {:.2} % float, {:.2} % fixed point; {} {:.4} \
             (all-ReLU: {:.4}, {:.1}× cheaper); predicted online {:.3} s / {:.1} MB, offline {:.2} s / {:.1} MB.\n\n",
            e.placement,
            fin.quads,
            fin.layers,
            e.valid_accuracy * 100.0,
            fin.test_accuracy_float * 100.0,
            fin.test_accuracy_fixed * 100.0,
            c.objective.label(),
            e.cost,
            relu,
            relu / e.cost.max(1e-12),
            e.online_s,
            e.online_bytes / 1e6,
            e.offline_s,
            e.offline_bytes / 1e6
        ),
        (None, Some(e)) => md += &format!(
            "**No plan met the threshold.** The closest (`plan.json`): placement `{}`, validation {:.2} %, \
             test {:.2} % float, {:.2} % fixed point, {} {:.4}.\n\n",
            e.placement,
            e.valid_accuracy * 100.0,
            fin.test_accuracy_float * 100.0,
            fin.test_accuracy_fixed * 100.0,
            c.objective.label(),
            e.cost
        ),
        (None, None) => md += "**No plan was evaluated.**\n\n",
    }
    md += &format!(
        "All-ReLU base: validation {:.2} %.\n\nSearch: {} members, {} epochs each, {} intervals per epoch, \
         {} evaluations ({}), {:.0} s of search (base network and all intervals) and {:.0} s \
         in this process{}.\n\n",
        o.base_valid_accuracy * 100.0,
        c.population,
        c.epochs,
        c.intervals_per_epoch,
        o.evaluations.len(),
        "`members.csv`",
        o.search_seconds,
        fin.seconds,
        if o.resumed { ", resumed from a saved state" } else { "" }
    );
    md += "Pareto front (`pareto.csv`, `pareto.svg`):\n\n| placement | validation | cost |\n|---|---|---|\n";
    for e in &front {
        md += &format!(
            "| `{}` | {:.2} % | {:.4} |\n",
            e.placement,
            e.valid_accuracy * 100.0,
            e.cost
        );
    }
    if let Some(v) = &fin.verify {
        md += "\nProtocol check (`--verify`, `delphi verify --compare-cost`):\n\n\
               | | offline s | online s | offline MB | online MB |\n|---|---|---|---|---|\n";
        for side in ["predicted", "measured"] {
            let g = |k: &str| v[side][k].as_f64().unwrap_or(f64::NAN);
            md += &format!(
                "| {side} | {:.3} | {:.4} | {:.2} | {:.3} |\n",
                g("offline_s"),
                g("online_s"),
                g("offline_bytes") / 1e6,
                g("online_bytes") / 1e6
            );
        }
    }
    md += "\nEvery exploit/explore step is in `lineage.log`.\n";
    let mp = out.join("summary.md");
    std::fs::write(&mp, md).map_err(|e| perr(&mp, e))
}
