//! `delphi verify`: runs a plan between a server and a client thread over
//! loopback TCP and checks every secure result against the plaintext
//! fixed-point reference (node by node), optionally beside the cost model.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use delphi_engine::run::RunReport;
use delphi_net::Network;

use crate::common::{checked_program, load_cost_model, load_plan, mean, sampled_inputs};
use crate::table::{measured_rows, print_layer_table};

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// The network description (plan) to run, or an ONNX model.
    #[arg(long)]
    plan: PathBuf,
    /// Number of inferences (random inputs drawn from the range the
    /// network declares, see `metadata.input_range`).
    #[arg(long, default_value_t = 1)]
    inputs: usize,
    /// Run a plan whose values can leave the range the protocol computes
    /// exactly in (refused by default), with a warning that says how
    /// often they did on sampled inputs.
    #[arg(long)]
    allow_overflow: bool,
    /// Seed for the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also predict the costs with the cost model and print them beside
    /// the measured ones.
    #[arg(long)]
    compare_cost: bool,
    /// The cost model (from `delphi cost calibrate`; default
    /// <results>/cost-model.json, <results> being $DELPHI_RESULTS, else
    /// results/ of the checkout the binary was built in, else ./results).
    #[arg(long)]
    cost_model: Option<PathBuf>,
}

/// The largest gap allowed between the secure logits and the float
/// network's, relative to the float logits' largest magnitude. Fixed point
/// with 8 fractional bits moves logits by well under 1 % on the networks
/// here; a wrap-around moves them by tens of percent.
pub(crate) const FLOAT_TOLERANCE: f64 = 0.1;

/// Per inference: the gap between the secure logits and the float
/// network's (relative), and whether their classes agree.
pub(crate) fn float_gaps(
    net: &Network,
    inputs: &[Vec<f32>],
    r: &RunReport,
) -> Result<Vec<(f64, bool)>> {
    inputs
        .iter()
        .zip(&r.inferences)
        .map(|(x, inf)| {
            let want = delphi_net::eval::eval_float(net, x)?;
            let scale = want.iter().fold(1e-9f64, |m, v| m.max(v.abs() as f64));
            let gap =
                inf.logits.iter().zip(&want).fold(0f64, |m, (g, w)| m.max((g - *w as f64).abs()));
            let class = |v: &[f64]| {
                v.iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
                    .0
            };
            let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
            Ok((gap / scale, class(&inf.logits) == class(&want64)))
        })
        .collect()
}

pub(crate) fn verify_json(r: &RunReport) -> serde_json::Value {
    let exact = r.inferences.iter().filter(|i| i.correct).count();
    serde_json::json!({
        "offline_s": mean(r, |i| i.offline_s),
        "online_s": mean(r, |i| i.online_s),
        "offline_bytes": mean(r, |i| i.offline_bytes as f64),
        "online_bytes": mean(r, |i| i.online_bytes as f64),
        "correct": exact == r.inferences.len(),
        "exact_inferences": exact,
        "same_class": r.inferences.iter().filter(|i| i.same_class).count(),
        "truncation_error_rate": r.inferences.iter().map(|i| i.logits_differing as f64).sum::<f64>()
            / r.inferences.len().max(1) as f64,
        "relus": r.relus,
        "quads": r.quads,
        "setup_s": r.setup_s,
        "setup_bytes": r.setup_bytes,
        "peak_rss_bytes_both_parties": r.peak_rss_bytes,
        "inferences": r.inferences,
    })
}

/// Predicted beside measured (means over the inferences).
pub(crate) fn compare(r: &RunReport, p: &delphi_cost::Prediction) -> serde_json::Value {
    serde_json::json!({
        "predicted": {
            "offline_s": p.total.offline_s,
            "online_s": p.total.online_s,
            "offline_bytes": p.total.offline_bytes,
            "online_bytes": p.total.online_bytes,
        },
        "measured": {
            "offline_s": mean(r, |i| i.offline_s),
            "online_s": mean(r, |i| i.online_s),
            "offline_bytes": mean(r, |i| i.offline_bytes as f64),
            "online_bytes": mean(r, |i| i.online_bytes as f64),
        },
    })
}

pub(crate) fn print_comparison(c: &serde_json::Value) {
    println!("\ncost model vs measurement:");
    println!("{:<14} {:>14} {:>14} {:>8}", "", "predicted", "measured", "error");
    for (k, unit, scale) in [
        ("offline_s", "s", 1.0),
        ("online_s", "s", 1.0),
        ("offline_bytes", "MB", 1e-6),
        ("online_bytes", "MB", 1e-6),
    ] {
        let p = c["predicted"][k].as_f64().unwrap_or(f64::NAN);
        let m = c["measured"][k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<14} {:>11.3} {:<2} {:>11.3} {:<2} {:>+7.1}%",
            k,
            p * scale,
            unit,
            m * scale,
            unit,
            100.0 * (p - m) / m
        );
    }
}

pub(crate) fn print_table(r: &RunReport) {
    println!(
        "ReLUs {}  quadratics {}  key setup {:.2} s, {:.1} MB",
        r.relus,
        r.quads,
        r.setup_s,
        r.setup_bytes as f64 / 1e6
    );
    println!(
        "{:>4} {:>11} {:>13} {:>10} {:>12} {:>7} {:>8} {:>9} {:>9}",
        "#",
        "offline s",
        "offline MB",
        "online s",
        "online MB",
        "exact",
        "class",
        "max ulp",
        "max rel"
    );
    for (k, i) in r.inferences.iter().enumerate() {
        println!(
            "{:>4} {:>11.2} {:>13.1} {:>10.3} {:>12.1} {:>7} {:>8} {:>9} {:>9.2e}",
            k + 1,
            i.offline_s,
            i.offline_bytes as f64 / 1e6,
            i.online_s,
            i.online_bytes as f64 / 1e6,
            if i.correct { "yes" } else { "no" },
            if i.same_class { "same" } else { "differs" },
            i.max_ulp_error,
            i.max_rel_error
        );
    }
    if !r.inferences.is_empty() {
        println!(
            "\nper layer (mean of {} inference{}; client's view of the channel):",
            r.inferences.len(),
            if r.inferences.len() == 1 { "" } else { "s" }
        );
        print_layer_table(&measured_rows(r), "input");
    }
    println!("peak memory (both parties, one process): {:.0} MB", r.peak_rss_bytes as f64 / 1e6);
}

pub(crate) fn run_verify(args: VerifyArgs) -> Result<()> {
    let VerifyArgs { plan, inputs, allow_overflow, seed, json, compare_cost, cost_model } = args;

    ensure!(inputs > 0, "--inputs must be at least 1");
    let net = load_plan(&plan)?;
    let (prog, ranges) = checked_program(&net, allow_overflow)?;
    if !json || ranges.starts_with("warning") {
        eprintln!("{ranges}");
    }
    if let Some(w) = prog.rounding_warning() {
        eprintln!("warning: {w}");
    }
    let model = if compare_cost {
        Some(load_cost_model(&cost_model.unwrap_or_else(delphi_net::paths::default_cost_model))?)
    } else {
        None
    };
    let (raw, encoded) = sampled_inputs(&net, &prog, inputs, seed)?;
    let report = delphi_engine::run::run_local_with(
        &prog,
        &encoded,
        &|m| {
            if !json {
                eprintln!("[verify] {m}")
            }
        },
        true,
    )?;
    let gaps = float_gaps(&net, &raw, &report)?;
    let worst_gap = gaps.iter().fold(0f64, |m, g| m.max(g.0));
    let float_classes = gaps.iter().filter(|g| g.1).count();
    let compared = model.as_ref().map(|m| compare(&report, &m.predict(&prog, None)));
    if json {
        let mut v = verify_json(&report);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("float_max_rel_error".into(), worst_gap.into());
            obj.insert("float_same_class".into(), float_classes.into());
            let (reduced, truncated) = prog.share_dependent_roundings();
            obj.insert(
                "share_dependent_roundings".into(),
                serde_json::json!({ "reduced_relus": reduced, "truncated_values": truncated }),
            );
            if let Some(c) = compared {
                obj.insert("predicted".into(), c["predicted"].clone());
                obj.insert("measured".into(), c["measured"].clone());
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_table(&report);
        let truncations =
            prog.nodes.iter().filter(|n| matches!(n.op, delphi_net::FixedOp::Trunc { .. })).count();
        let reduced = prog
            .nodes
            .iter()
            .filter(|n| matches!(n.op, delphi_net::FixedOp::Relu { bits: Some(_), .. }))
            .count();
        println!(
            "{truncations} truncation node(s), {reduced} reduced ReLU node(s): {}",
            if truncations + reduced == 0 {
                "every secure result must equal the fixed-point reference exactly"
            } else {
                "checked node by node: each node equals the reference applied to the run's own \
                 inputs, a truncation within one unit, a reduced ReLU within its stated bound \
                 inside its window"
            }
        );
        for (k, inf) in report.inferences.iter().enumerate() {
            if let Some(c) = &inf.node_check {
                for d in &c.reduced_relus {
                    println!(
                        "  input {k}: reduced ReLU node {} (layer {}): largest deviation {} unit(s), bound {}; {} input(s) outside the window",
                        d.node,
                        d.layer.map_or("-".into(), |l| l.to_string()),
                        d.max_units,
                        d.allowed_units,
                        d.outside_window
                    );
                }
            }
        }
        println!(
                    "float network: largest logit gap {:.2} % of the largest logit; same class on {float_classes} of {inputs}",
                    100.0 * worst_gap
                );
        if let Some(c) = compared {
            print_comparison(&c);
        }
    }
    for (k, inf) in report.inferences.iter().enumerate() {
        let check = inf.node_check.as_ref().context("the run was not checked node by node")?;
        if let Some(d) = check.failing.first() {
            bail!(
                "input {k}: node {} ({}, layer {}) differs from the reference on its own inputs by up to {} unit(s) on {} element(s); the protocol allows {}",
                d.node,
                d.kind,
                d.layer.map_or("-".into(), |l| l.to_string()),
                d.max_units,
                d.elements_over,
                d.allowed_units
            );
        }
    }
    let exact = report.inferences.iter().filter(|i| i.correct).count();
    if prog.nodes.iter().all(|n| {
        !matches!(
            n.op,
            delphi_net::FixedOp::Trunc { .. } | delphi_net::FixedOp::Relu { bits: Some(_), .. }
        )
    }) {
        ensure!(
            exact == inputs,
            "{} of {inputs} secure results differ from the fixed-point reference",
            inputs - exact
        );
    }
    // Reduced ReLUs wrap inputs beyond their windows by design (a function
    // the float network does not have); where sampled inputs reached that,
    // the float gap says nothing about the lowering, and the node-by-node
    // check above is what holds.
    let outside: usize = report
        .inferences
        .iter()
        .filter_map(|i| i.node_check.as_ref())
        .map(|c| c.outside_window)
        .sum();
    if worst_gap > FLOAT_TOLERANCE && outside > 0 {
        eprintln!(
            "warning: {outside} reduced-ReLU input(s) fell outside their windows on these sampled \
             inputs, where the plan computes a wrapped ReLU by design; the float gap of {:.1} % is \
             not enforced (every node matched the reference)",
            100.0 * worst_gap
        );
        return Ok(());
    }
    ensure!(
        worst_gap <= FLOAT_TOLERANCE,
        "the secure logits are {:.1} % away from the float network's (more than {:.0} %): \
                 the fixed-point program does not compute this network",
        100.0 * worst_gap,
        100.0 * FLOAT_TOLERANCE
    );

    Ok(())
}
