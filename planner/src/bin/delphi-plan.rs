//! `delphi-plan`: finds the cheapest network configuration (which activation
//! layers stay ReLU) that meets an accuracy threshold, by population-based
//! training scored with the cost model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use delphi_planner::config::{ExperimentFile, Objective, PlanConfig};
use delphi_planner::report::{self, Final};
use delphi_planner::search;
use delphi_train::data::DatasetKind;

#[derive(Parser)]
#[command(
    name = "delphi-plan",
    version,
    about = "Search for the cheapest ReLU/quadratic placement that meets an accuracy threshold",
    long_about = "Trains an all-ReLU network once, then a population of members that swap activation \
                  layers to quadratics, scored by the cost model's predicted cost under the real \
                  protocol. Writes plan.json (feed it to `delphi verify`/`serve`), members.csv, \
                  pareto.csv/.parquet/.svg, lineage.log and summary.md to the run folder. Killing it \
                  and rerunning the same command resumes.\n\n\
                  Examples:\n  delphi-plan --dataset fashion-mnist --accuracy 0.88\n  \
                  delphi-plan --dataset cifar100 --accuracy 0.7 --data-dir ~/data\n  \
                  delphi-plan --config configs/fashion-mnist.toml"
)]
struct Cli {
    /// fashion-mnist, cifar10 or cifar100.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: DatasetKind,
    /// Validation accuracy the plan must reach (e.g. 0.88).
    #[arg(long, required_unless_present = "config")]
    accuracy: Option<f64>,
    /// Architecture (default: small-cnn for Fashion-MNIST, minionn for
    /// CIFAR-10, resnet32 for CIFAR-100).
    #[arg(long)]
    arch: Option<String>,
    /// Members in the population.
    #[arg(long, default_value_t = 6)]
    population: usize,
    /// Epochs each member trains.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Epochs of the all-ReLU base network.
    #[arg(long, default_value_t = 4)]
    base_epochs: usize,
    /// Ready intervals per epoch.
    #[arg(long, default_value_t = 2)]
    intervals_per_epoch: usize,
    /// Wall-time budget in minutes (no new interval starts after it).
    #[arg(long)]
    budget: Option<f64>,
    /// What to minimise: online-time, online-bytes, offline-time or mix.
    #[arg(long, default_value = "online-time")]
    objective: Objective,
    /// Price plans for this link (e.g. 100Mbit) instead of loopback.
    #[arg(long, requires = "rtt")]
    bandwidth: Option<String>,
    /// Round-trip time of that link (e.g. 20ms).
    #[arg(long, requires = "bandwidth")]
    rtt: Option<String>,
    /// Cost model (default results/cost-model.json; calibrated quickly if missing).
    #[arg(long)]
    cost_model: Option<PathBuf>,
    /// Compute device: cpu, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Dataset folder.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run folder (default results/plan/<dataset>-<arch>-<accuracy>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Validation images carved from the training set.
    #[arg(long, default_value_t = 5000)]
    valid_size: usize,
    /// Use only the first N test images for the final report.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run the chosen plan through the protocol engine and record measured
    /// cost beside predicted.
    #[arg(long)]
    verify: bool,
    /// Run the experiments of a TOML file instead (see configs/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn from_cli(a: &Cli) -> PlanConfig {
    PlanConfig {
        name: None,
        dataset: a.dataset,
        data_dir: a.data_dir.clone(),
        arch: a.arch.clone(),
        accuracy: a.accuracy.unwrap_or(0.0),
        population: a.population,
        epochs: a.epochs,
        base_epochs: a.base_epochs,
        intervals_per_epoch: a.intervals_per_epoch,
        quantile: 0.25,
        budget_minutes: a.budget,
        objective: a.objective,
        bandwidth: a.bandwidth.clone(),
        rtt: a.rtt.clone(),
        cost_model: a.cost_model.clone(),
        device: a.device.clone(),
        batch_size: 64,
        train_limit: a.train_limit,
        valid_size: a.valid_size,
        test_limit: a.test_limit,
        seed: a.seed,
        out: a.out.clone(),
        verify: a.verify,
    }
}

fn run_one(c: &PlanConfig, quiet: bool) -> Result<()> {
    let start = Instant::now();
    let out = c.out();
    let say = |m: &str| eprintln!("[delphi-plan] {m}");
    let outcome = search::run(c, quiet, &say).with_context(|| format!("search {}", c.name()))?;
    let net = delphi_net::Network::load(&outcome.plan)
        .with_context(|| format!("reading {}", outcome.plan.display()))?;
    let data = search::load_data(c)?;
    // The test set, once, for the chosen plan.
    let device = c
        .device
        .parse::<delphi_train::device::DeviceChoice>()
        .map_err(anyhow::Error::msg)?
        .device()?;
    let mut tc = delphi_train::train::TrainConfig::new(c.dataset);
    tc.arch = c.arch();
    tc.init = Some(outcome.plan.clone());
    tc.activations = Some(
        net.layers
            .iter()
            .filter_map(|l| match &l.op {
                delphi_net::Op::Activation(delphi_net::Activation::Relu) => Some('R'),
                delphi_net::Op::Activation(_) => Some('Q'),
                _ => None,
            })
            .collect(),
    );
    let tr = delphi_train::train::Trainer::new(tc, &device)?;
    let float = tr.accuracy(&data.test);
    let fixed = delphi_train::train::fixed_accuracy(&net, &data.test)?;
    let layers = net.activation_layers().len();
    let quads = layers
        - net
            .layers
            .iter()
            .filter(|l| {
                matches!(
                    l.op,
                    delphi_net::Op::Activation(delphi_net::Activation::Relu)
                )
            })
            .count();
    let verify = if c.verify {
        say("running the plan through the protocol engine (delphi verify --compare-cost)");
        let model = out.join("cost-model.json");
        let model = c
            .cost_model
            .clone()
            .filter(|p| p.is_file())
            .unwrap_or(if model.is_file() {
                model
            } else {
                PathBuf::from("results/cost-model.json")
            });
        let o = search::delphi_command()
            .args(["verify", "--json", "--compare-cost", "--plan"])
            .arg(&outcome.plan)
            .arg("--cost-model")
            .arg(&model)
            .output()
            .context(
                "running `delphi verify` (build it with cargo build --release -p delphi-cli)",
            )?;
        if !o.status.success() {
            bail!(
                "delphi verify failed on the plan: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        Some(serde_json::json!({
            "predicted": v["predicted"],
            "measured": v["measured"],
            "same_class": v["same_class"],
        }))
    } else {
        None
    };
    let fin = Final {
        test_accuracy_float: float,
        test_accuracy_fixed: fixed,
        quads,
        layers,
        verify,
        seconds: start.elapsed().as_secs_f64(),
    };
    report::write(&out, c, &outcome, &fin)?;
    let summary = serde_json::json!({
        "name": c.name(),
        "chosen": outcome.chosen,
        "closest": outcome.closest,
        "final": fin,
        "config": c,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    match &outcome.chosen {
        Some(e) => println!(
            "plan {}: placement {} ({quads}/{layers} quadratic), validation {:.2} %, test {:.2} % float / {:.2} % fixed, {} {:.4}; see {}",
            outcome.plan.display(),
            e.placement,
            e.valid_accuracy * 100.0,
            float * 100.0,
            fixed * 100.0,
            c.objective.label(),
            e.cost,
            out.join("summary.md").display()
        ),
        None => println!(
            "no plan met {:.1} %; the closest is {} (test {:.2} %); see {}",
            c.accuracy * 100.0,
            outcome.plan.display(),
            float * 100.0,
            out.join("summary.md").display()
        ),
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let configs = match &cli.config {
        Some(p) => {
            ExperimentFile::load(p)
                .map_err(anyhow::Error::msg)?
                .experiment
        }
        None => vec![from_cli(&cli)],
    };
    if configs.is_empty() {
        bail!("no experiments to run");
    }
    for c in &configs {
        c.check().map_err(anyhow::Error::msg)?;
    }
    for c in &configs {
        run_one(c, cli.quiet)?;
    }
    Ok(())
}
