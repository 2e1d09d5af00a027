//! `delphi cost`: calibrate the cost model on this machine, predict a
//! plan's costs per layer.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use delphi_net::{FixedProgram, Network};

use crate::common::{load_cost_model, load_plan};
use crate::table::{predicted_rows, print_layer_table};

#[derive(Subcommand)]
pub(crate) enum CostCmd {
    /// Measures the primitive costs with the real crypto over loopback TCP
    /// (≈ 20 s on a 2-core machine; --quick ≈ 5 s) and writes the model.
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

pub(crate) fn run_cost_calibrate(args: CostCalibrateArgs) -> Result<()> {
    let CostCalibrateArgs { out, quick } = args;
    let out = out.unwrap_or_else(delphi_net::paths::default_cost_model);

    let model = delphi_cost_calibrate::calibrate(quick, &|m| eprintln!("[calibrate] {m}"))
        .context("calibration failed")?;
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
