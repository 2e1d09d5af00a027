//! The run folder's tables, plot and summary.
//!
//! `members.csv` (every evaluation), `pareto.csv` and `pareto.parquet` (the
//! front: settled evaluations no other beats in both accuracy and cost),
//! `pareto.svg` (accuracy against predicted cost, drawn with plotters: every
//! evaluation, the front, the chosen plan, the threshold) and `summary.md`.
//! Tables are built with polars.

use std::fs::File;
use std::path::Path;

use plotters::prelude::*;
use polars::prelude::*;

use crate::engine::VerifyReport;
use crate::error::{PlanError, Result};
use crate::search::{Evaluation, Outcome};

pub(crate) fn perr(path: &Path, e: impl std::fmt::Display) -> PlanError {
    crate::error::file_err(path, e.to_string())
}

/// A table column: `f` of every row.
pub(crate) fn column<T, V>(name: &str, rows: &[T], f: impl Fn(&T) -> V) -> Column
where
    polars::prelude::Series: NamedFrom<Vec<V>, [V]>,
{
    Column::new(name.into(), rows.iter().map(f).collect::<Vec<V>>())
}

/// The evaluations as a polars table.
pub fn table(evals: &[Evaluation]) -> std::result::Result<DataFrame, PolarsError> {
    let col_u = |name: &str, f: &dyn Fn(&Evaluation) -> u64| column(name, evals, f);
    let col_f = |name: &str, f: &dyn Fn(&Evaluation) -> f64| column(name, evals, f);
    let col_s = |name: &str, f: &dyn Fn(&Evaluation) -> String| column(name, evals, f);
    DataFrame::new(
        evals.len(),
        vec![
            col_u("index", &|e| e.index as u64),
            col_s("stage", &|e| e.stage.clone()),
            col_u("interval", &|e| e.interval as u64),
            col_u("member", &|e| e.member as u64),
            col_s("placement", &|e| e.placement.to_string()),
            col_u("quads", &|e| e.quads as u64),
            col_u("relus", &|e| e.relus as u64),
            column("settled", evals, |e| e.settled),
            // true / false for settled evaluations (checked against the
            // protocol's range); empty while mid-swap.
            col_s("provable", &|e| e.provable.map_or(String::new(), |p| p.to_string())),
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
            col_u("steps", &|e| e.steps as u64),
            col_s("relu_channels", &|e| e.relu_channels.clone()),
            col_f("budget", &|e| e.budget),
        ],
    )
}

/// Writes a table as CSV.
pub fn write_csv(path: &Path, df: &mut DataFrame) -> Result<()> {
    let mut f = File::create(path).map_err(|e| perr(path, e))?;
    CsvWriter::new(&mut f).finish(df).map_err(|e| perr(path, e))
}

fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<()> {
    let f = File::create(path).map_err(|e| perr(path, e))?;
    ParquetWriter::new(f).finish(df).map(|_| ()).map_err(|e| perr(path, e))
}

/// How a series of points is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mark {
    /// Small filled dots.
    Dot,
    /// Filled dots joined by a line (a front, in cost order).
    Line,
    /// Large hollow circles (chosen plans).
    Ring,
    /// Triangles (test accuracy of chosen plans).
    Triangle,
}

/// Points of one legend entry: (cost, accuracy).
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text (empty: no legend entry).
    pub name: String,
    /// Colour.
    pub color: RGBColor,
    /// Style.
    pub mark: Mark,
    /// (x = cost, y = accuracy in [0, 1]).
    pub points: Vec<(f64, f64)>,
}

/// A scatter/line plot of accuracy against cost, with dashed horizontal
/// lines (thresholds), written as SVG with plotters.
pub fn plot(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
    hlines: &[(f64, String)],
) -> Result<()> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
    let (mut x0, mut x1) =
        all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = all
        .iter()
        .map(|p| p.1)
        .chain(hlines.iter().map(|h| h.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let dx = (x1 - x0).max(1e-9) * 0.05;
    let dy = (y1 - y0).max(1e-3) * 0.08;
    let (x0, x1, y0, y1) = ((x0 - dx).max(0.0), x1 + dx, (y0 - dy) * 100.0, (y1 + dy) * 100.0);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| perr(path, e);
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("accuracy (%)")
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;
    for (y, label) in hlines {
        let style = ShapeStyle::from(RGBColor(230, 140, 0)).stroke_width(1);
        let y = y * 100.0;
        let mut x = x0;
        let step = (x1 - x0) / 60.0;
        let mut dashes = Vec::new();
        while x < x1 {
            dashes.push(vec![(x, y), ((x + step * 0.6).min(x1), y)]);
            x += step;
        }
        chart
            .draw_series(dashes.into_iter().map(|d| PathElement::new(d, style)))
            .map_err(|e| err(&e))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    for s in series {
        let color = s.color;
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x, y * 100.0)).collect();
        let anno = match s.mark {
            Mark::Dot => chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 2, color.filled())))
                .map_err(|e| err(&e))?,
            Mark::Line => {
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| err(&e))?;
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(|e| err(&e))?
            }
            Mark::Ring => chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 9, color.stroke_width(2))))
                .map_err(|e| err(&e))?,
            Mark::Triangle => chart
                .draw_series(pts.iter().map(|&p| TriangleMarker::new(p, 7, color.filled())))
                .map_err(|e| err(&e))?,
        };
        if s.name.is_empty() {
            // No legend entry (e.g. a second seed of a series already named).
            continue;
        }
        let anno = anno.label(s.name.clone());
        match s.mark {
            Mark::Triangle => {
                anno.legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, color.filled()));
            }
            Mark::Ring => {
                anno.legend(move |(x, y)| Circle::new((x + 8, y), 6, color.stroke_width(2)));
            }
            _ => {
                anno.legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
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
    /// `delphi verify --compare-cost`'s measurement, if asked.
    pub verify: Option<VerifyReport>,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
    /// The plan's reduced-ReLU windows and the accuracy check that kept
    /// them (`--relu-bits reduced-leaky`), from its metadata.
    pub relu_bits: Option<delphi_net::window::WindowChoice>,
    /// The plan's roundings that depend on the shares (reduced ReLUs,
    /// truncated values), what a client can learn from beyond the prediction.
    pub share_dependent_roundings: Option<(usize, usize)>,
}

/// Writes members.csv, pareto.csv/.parquet, pareto.svg and summary.md.
pub fn write(out: &Path, c: &crate::config::PlanConfig, o: &Outcome, fin: &Final) -> Result<()> {
    let mut all = table(&o.evaluations).map_err(|e| perr(out, e))?;
    write_csv(&out.join("members.csv"), &mut all)?;
    let front: Vec<Evaluation> = o.front.iter().map(|(e, _)| e.clone()).collect();
    let mut pf = table(&front).map_err(|e| perr(out, e))?;
    write_csv(&out.join("pareto.csv"), &mut pf)?;
    write_parquet(&out.join("pareto.parquet"), &mut pf)?;
    let chosen = o.chosen.as_ref().or(o.closest.as_ref());
    let pt = |e: &Evaluation| (e.cost, e.valid_accuracy);
    let mut series = vec![
        Series {
            name: "evaluations (mid-swap: light)".into(),
            color: RGBColor(200, 200, 200),
            mark: Mark::Dot,
            points: o.evaluations.iter().filter(|e| !e.settled).map(pt).collect(),
        },
        Series {
            name: "evaluations".into(),
            color: RGBColor(140, 140, 140),
            mark: Mark::Dot,
            points: o.evaluations.iter().filter(|e| e.settled).map(pt).collect(),
        },
        Series {
            name: "Pareto front".into(),
            color: RGBColor(31, 119, 180),
            mark: Mark::Line,
            points: front.iter().map(pt).collect(),
        },
    ];
    if let Some(e) = chosen {
        series.push(Series {
            name: format!("chosen: {}", e.placement),
            color: RGBColor(214, 39, 40),
            mark: Mark::Ring,
            points: vec![pt(e)],
        });
    }
    plot(
        &out.join("pareto.svg"),
        &format!("{} — {} search", c.name(), c.strategy.name()),
        c.objective.label(),
        &series,
        &[(c.accuracy, format!("threshold {:.1} %", c.accuracy * 100.0))],
    )?;

    let relu = c.objective.of(&o.relu_cost);
    let mut md = format!(
        "# Plan `{}`\n\n{} on {}, {} search, threshold {:.1} % validation accuracy, objective: {}.\n\n",
        c.name(),
        c.arch(),
        c.dataset.name(),
        c.strategy.name(),
        c.accuracy * 100.0,
        c.objective.label()
    );
    match (&o.chosen, &o.closest) {
        (Some(e), _) => md += &format!(
            "**Chosen plan** (`plan.json`): placement `{}` — {} of {} activation layers quadratic, \
             {} of {} ReLUs left; validation {:.2} %; test {:.2} % float, {:.2} % fixed point; {} {:.4} \
             (all-ReLU: {:.4}, {}); predicted online {:.3} s / {:.1} MB, offline {:.2} s / {:.1} MB.\n\n",
            e.placement,
            fin.quads,
            fin.layers,
            e.relus,
            o.relus,
            e.valid_accuracy * 100.0,
            fin.test_accuracy_float * 100.0,
            fin.test_accuracy_fixed * 100.0,
            c.objective.label(),
            e.cost,
            relu,
            ratio_words(relu, e.cost),
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
    match fin.share_dependent_roundings {
        Some((0, 0)) => {
            md += "What a client learns: the prediction and the architecture only (every \
                   rounding is a function of the hidden value; the architecture's exact ReLU \
                   windows and truncation circuits say no more than the bit lengths of the \
                   bounds proven for their inputs).\n\n"
        }
        Some((r, t)) => {
            md += &format!(
                "What a client learns: **more than the prediction**. The plan rounds depending on \
                 the shares at {r} reduced ReLUs (`--relu-bits reduced-leaky`) and {t} truncated values \
                 (`--truncation faithful-leaky`); a client that repeats a query can learn about the weights \
                 (docs/security.md).\n\n"
            )
        }
        None => {}
    }
    if let Some(w) = fin.relu_bits.as_ref().filter(|w| w.valid_images.is_none()) {
        md += &format!(
            "ReLU circuits (`--relu-bits {}`): per layer `{}` (layer:0..hi: the exact windowed \
             circuit, whose range holds the bound proven for the layer's inputs; `full`: all 41 \
             bits). Outputs equal the full-width circuit's for every input in the declared \
             range.\n\n",
            c.relu_bits.name(),
            w.windows
        );
    } else if let Some(w) = &fin.relu_bits {
        let acc = |a: Option<f64>| a.map_or("-".into(), |a| format!("{:.2} %", a * 100.0));
        md += &format!(
            "ReLU circuits (`--relu-bits {}`): per layer `{}` (layer:lo..hi: the garbled circuit \
             sees bits lo..hi of the ReLU input; `full`: all 41). Fixed-point validation accuracy \
             on {} images: {} with these windows, {} at full width. Costs above are priced with \
             them, the all-ReLU figure with the base network's.\n\n",
            c.relu_bits.name(),
            w.windows,
            w.valid_images.unwrap_or(0),
            acc(w.fixed_valid_accuracy_reduced),
            acc(w.fixed_valid_accuracy_full),
        );
    }
    if let Some(e) = o.chosen.as_ref().or(o.closest.as_ref()) {
        if !e.relu_channels.is_empty() {
            md += &format!(
                "Per channel: the percentage of each activation layer's channels that keep ReLU, \
                 in order: `{}` (the member's budget: {:.1} % of the all-ReLU cost).\n\n",
                e.relu_channels,
                e.budget * 100.0
            );
        }
    }
    md += &format!(
        "All-ReLU base: validation {:.2} %{}.\n\nSearch: {} training steps of a budget of {} \
         ({:.1} member-epochs), {} evaluations ({}), {:.0} s of search (base network included) \
         and {:.0} s in this process{}.\n\n",
        o.base_valid_accuracy * 100.0,
        if o.base_given {
            " (the given trained network, not retrained)"
        } else {
            " (trained here)"
        },
        o.steps.0,
        o.steps.1,
        c.budget_epochs(),
        o.evaluations.len(),
        "`members.csv`",
        o.search_seconds,
        fin.seconds,
        if o.resumed { ", resumed from a saved state" } else { "" }
    );
    for n in &o.notes {
        md += &format!("Note: {n}\n\n");
    }
    md += "Pareto front (`pareto.csv`, `pareto.svg`):\n\n| placement | % ReLU channels per layer | ReLUs | validation | cost |\n|---|---|---|---|---|\n";
    for e in &front {
        md += &format!(
            "| `{}` | {} | {} | {:.2} % | {:.4} |\n",
            e.placement,
            if e.relu_channels.is_empty() { "(per layer)" } else { &e.relu_channels },
            e.relus,
            e.valid_accuracy * 100.0,
            e.cost
        );
    }
    if let Some(v) = &fin.verify {
        md += "\nProtocol check (`--verify`, `delphi verify --compare-cost`):\n\n\
               | | offline s | online s | offline MB | online MB |\n|---|---|---|---|---|\n";
        for (side, c) in [("predicted", &v.predicted), ("measured", &v.measured)] {
            md += &format!(
                "| {side} | {:.3} | {:.4} | {:.2} | {:.3} |\n",
                c.offline_s,
                c.online_s,
                c.offline_bytes / 1e6,
                c.online_bytes / 1e6
            );
        }
    }
    md += "\nEvery exploit/explore step (or greedy round) is in `lineage.log`.\n";
    let mp = out.join("summary.md");
    std::fs::write(&mp, md).map_err(|e| perr(&mp, e))
}

/// "2.5× cheaper", "as cheap" or "1.3× dearer": a plan's cost against the
/// all-ReLU network's.
fn ratio_words(relu: f64, cost: f64) -> String {
    let r = relu / cost.max(1e-12);
    if (r - 1.0).abs() < 0.005 {
        "as cheap".into()
    } else if r > 1.0 {
        format!("{r:.1}× cheaper")
    } else {
        format!("{:.1}× dearer", 1.0 / r.max(1e-12))
    }
}
