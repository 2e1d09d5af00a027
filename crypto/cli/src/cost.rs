//! `delphi cost`: calibrate the cost model on this machine, predict a
//! plan's costs per layer.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use delphi_net::{FixedProgram, Network};

use crate::common::{load_cost_model, load_plan};
use crate::table::{predicted_rows, print_layer_table};

#[derive(Subcommand)]
pub(crate) enum CostCmd {
    /// Measures the primitive costs with the real crypto over loopback TCP
    /// (≈ 35 s on a 2-core machine; --quick ≈ 12 s; --check runs it twice and compares) and writes the model.
    Calibrate(CostCalibrateArgs),
    /// Predicts a plan's offline and online time and bytes, per layer.
    Predict(CostPredictArgs),
}

#[derive(clap::Args)]
pub(crate) struct CostCalibrateArgs {
    /// Where to write the model (default <results>/cost-model.json; <results> is $DELPHI_RESULTS, else results/ of the checkout the binary was built in, else ./results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fewer, smaller samples.
    #[arg(long)]
    quick: bool,
    /// Calibrate twice, back to back, and report how far apart the two are:
    /// every coefficient, and the predicted times of a fixed set of plans
    /// (built-in networks with random weights); writes the figures to
    /// <results>/bench/calibration-check.json and the second model to --out.
    #[arg(long)]
    check: bool,
}

#[derive(clap::Args)]
pub(crate) struct CostPredictArgs {
    /// The network description (plan).
    #[arg(long)]
    plan: PathBuf,
    /// The cost model (default <results>/cost-model.json).
    #[arg(long)]
    cost_model: Option<PathBuf>,
    /// Link bandwidth: bits as 100Mbit, 100Mbps or 1Gbit/s, bytes as
    /// 12.5MB/s; ambiguous units are refused (default: the calibration's
    /// loopback).
    #[arg(long, requires = "rtt")]
    bandwidth: Option<delphi_cost::Bandwidth>,
    /// Link round-trip time, e.g. 20ms or 500us.
    #[arg(long, requires = "bandwidth")]
    rtt: Option<delphi_cost::Rtt>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn print_prediction(
    net: &Network,
    p: &delphi_cost::Prediction,
    link: &delphi_cost::Link,
) {
    println!(
        "{}: predicted per inference over {:.0} MB/s, RTT {:.2} ms",
        net.name,
        link.bytes_per_s / 1e6,
        link.rtt_s * 1e3
    );
    print_layer_table(&predicted_rows(p), "-");
    let t = &p.total;
    println!(
        "total: offline {:.2} s, {:.1} MB; online {:.3} s, {:.1} MB; key setup {:.2} s, {:.1} MB once per client",
        t.offline_s,
        t.offline_bytes / 1e6,
        t.online_s,
        t.online_bytes / 1e6,
        p.setup_s,
        p.setup_bytes / 1e6
    );
}

/// One calibration in a child process of this binary, written beside `out`
/// and read back.
fn calibrate_in_child(quick: bool, out: &Path, k: usize) -> Result<delphi_cost::CostModel> {
    let file = out.with_extension(format!("check-{k}.json"));
    let exe = std::env::current_exe().context("finding this binary to run a calibration")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["cost", "calibrate", "--out"]).arg(&file);
    if quick {
        cmd.arg("--quick");
    }
    let status = cmd.status().context("starting a calibration")?;
    anyhow::ensure!(status.success(), "calibration {k} of --check failed ({status})");
    let model = delphi_cost::CostModel::load(&file)?;
    std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    Ok(model)
}

pub(crate) fn run_cost_calibrate(args: CostCalibrateArgs) -> Result<()> {
    let CostCalibrateArgs { out, quick, check } = args;
    let out = out.unwrap_or_else(delphi_net::paths::default_cost_model);

    let model = if check {
        // Each calibration in a process of its own: the fresh-memory probe
        // needs a process that has not held gigabytes yet, as a client's
        // has not when its first inference starts.
        let first = calibrate_in_child(quick, &out, 1)?;
        eprintln!("[calibrate] --check: the second calibration");
        let second = calibrate_in_child(quick, &out, 2)?;
        report_spread(&first, &second)?;
        second
    } else {
        delphi_cost_calibrate::calibrate(quick, &|m| eprintln!("[calibrate] {m}"))
            .context("calibration failed")?
    };
    model.save(&out)?;
    eprintln!(
        "wrote {} ({:.0} s; rerun: delphi cost calibrate{} --out {})",
        out.display(),
        model.provenance.seconds,
        if quick { " --quick" } else { "" },
        out.display()
    );

    Ok(())
}

pub(crate) fn run_cost_predict(args: CostPredictArgs) -> Result<()> {
    let CostPredictArgs { plan, cost_model, bandwidth, rtt, json } = args;

    let net = load_plan(&plan)?;
    let prog = FixedProgram::lower(&net)?;
    let model = load_cost_model(&cost_model.unwrap_or_else(delphi_net::paths::default_cost_model))?;
    let link = match (bandwidth, rtt) {
        (Some(b), Some(r)) => Some(delphi_cost::Link::new(b, r)),
        _ => None,
    };
    let t = std::time::Instant::now();
    let reps = 100;
    for _ in 1..reps {
        std::hint::black_box(model.predict(&prog, link.as_ref()));
    }
    let p = model.predict(&prog, link.as_ref());
    let micros = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
    eprintln!("(one prediction: {micros:.0} µs)");
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print_prediction(&net, &p, link.as_ref().unwrap_or(&model.loopback));
    }

    Ok(())
}

/// The plans `--check` predicts: built-ins with random weights, one of each
/// kind the planner produces.
fn check_plans() -> Result<Vec<(String, Network)>> {
    use delphi_net::builtin::build;
    use delphi_net::Placement;
    let mut plans = Vec::new();
    let placed = |arch: &str, classes: usize, p: Option<&str>| -> Result<Network> {
        let mut net = build(arch, classes, 1)?;
        if let Some(p) = p {
            p.parse::<Placement>()?.apply(&mut net)?;
        }
        Ok(net)
    };
    plans.push(("small-cnn RRR".to_string(), placed("small-cnn", 10, None)?));
    plans.push(("small-cnn QQQ".into(), placed("small-cnn", 10, Some("QQQ"))?));
    let mut windows = placed("small-cnn", 10, None)?;
    let w = delphi_net::window::exact_windows(&windows)?;
    delphi_net::window::set_windows(&mut windows, &w)?;
    plans.push(("small-cnn, exact windows".into(), windows));
    plans.push(("minionn all-ReLU".into(), placed("minionn", 10, None)?));
    plans.push(("resnet14 all-ReLU".into(), placed("resnet14", 10, None)?));
    let q = "Q".repeat(4) + &"R".repeat(9);
    plans.push(("resnet14 4 quadratic".into(), placed("resnet14", 10, Some(&q))?));
    plans.push(("resnet32 all-ReLU".into(), placed("resnet32", 100, None)?));
    Ok(plans)
}

/// Prints and writes how far apart two calibrations are.
fn report_spread(a: &delphi_cost::CostModel, b: &delphi_cost::CostModel) -> Result<()> {
    let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(y.abs()).max(1e-300);
    let coeffs = |m: &delphi_cost::CostModel| -> Vec<(&'static str, f64)> {
        let g = |l: Option<delphi_cost::model::GcLine>| l.unwrap_or_default();
        vec![
            ("gc offline fixed s", g(m.gc_offline).fixed_s),
            ("gc offline s per AND", g(m.gc_offline).per_and_s),
            ("gc offline s per label", g(m.gc_offline).per_label_s),
            ("gc online fixed s", g(m.gc_online).fixed_s),
            ("gc online s per AND", g(m.gc_online).per_and_s),
            ("gc online s per label", g(m.gc_online).per_label_s),
            ("HE s per input poly", m.he_linear.per_input_poly_s),
            ("HE s per output poly", m.he_linear.per_output_poly_s),
            ("HE s per product", m.he_linear.per_product_s),
            ("linear online s per MAC", m.linear_online_per_mac_s),
            ("faithful trunc offline s per value", m.trunc_offline.per_item_s),
            ("quad offline s per value", m.quad_offline.per_item_s),
            ("fresh memory s per byte", m.fresh_memory_per_byte_s),
            ("silent OT s per extension", m.silent_extension_s),
            ("IKNP s per OT", m.iknp_per_ot_s),
            ("OT pool set-up s", m.ot_setup_s),
        ]
    };
    let mut rows = Vec::new();
    println!("{:<36} {:>12} {:>12} {:>8}", "coefficient", "first", "second", "apart");
    for ((name, x), (_, y)) in coeffs(a).into_iter().zip(coeffs(b)) {
        println!("{name:<36} {x:>12.4e} {y:>12.4e} {:>7.1}%", 100.0 * rel(x, y));
        rows.push(
            serde_json::json!({"coefficient": name, "first": x, "second": y, "apart": rel(x, y)}),
        );
    }
    let mut preds = Vec::new();
    println!("\n{:<28} {:>22} {:>22}", "plan", "online s (1st, 2nd)", "offline s (1st, 2nd)");
    for (name, net) in check_plans()? {
        let prog = FixedProgram::lower(&net)?;
        let (p, q) = (a.predict(&prog, None).total, b.predict(&prog, None).total);
        println!(
            "{name:<28} {:>9.4} {:>9.4} {:>4.0}% {:>9.3} {:>9.3} {:>4.0}%",
            p.online_s,
            q.online_s,
            100.0 * rel(p.online_s, q.online_s),
            p.offline_s,
            q.offline_s,
            100.0 * rel(p.offline_s, q.offline_s)
        );
        preds.push(serde_json::json!({
            "plan": name,
            "online_s": [p.online_s, q.online_s],
            "offline_s": [p.offline_s, q.offline_s],
            "online_apart": rel(p.online_s, q.online_s),
            "offline_apart": rel(p.offline_s, q.offline_s),
        }));
    }
    let path = delphi_net::paths::results_dir().join("bench/calibration-check.json");
    let doc = serde_json::json!({
        "rerun": format!("delphi cost calibrate --check{}", if b.provenance.quick { " --quick" } else { "" }),
        "cpu_model": b.provenance.cpu_model,
        "cores": b.provenance.cores,
        "quick": b.provenance.quick,
        "seconds": [a.provenance.seconds, b.provenance.seconds],
        "coefficients": rows,
        "predictions": preds,
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
