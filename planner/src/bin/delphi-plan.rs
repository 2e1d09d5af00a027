//! `delphi-plan`: finds the cheapest network configuration (which activation
//! layers stay ReLU) that meets an accuracy threshold, scored with the cost
//! model; `delphi-plan bench` compares the search strategies.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use delphi_cost::{Bandwidth, Rtt};
use delphi_planner::bench::{self, BenchConfig};
use delphi_planner::config::{
    ExperimentFile, Granularity, Objective, PlanConfig, ReluBitsMode, Strategy,
};
use delphi_planner::executor::{ExecConfig, ExecutorKind};
use delphi_planner::measure;
use delphi_planner::report::{self, Final};
use delphi_planner::search;

/// Large buffers (the protocol's preprocessed material when plans are
/// measured) on huge pages.
#[global_allocator]
static ALLOC: delphi_crypto::alloc::HugePages = delphi_crypto::alloc::HugePages;
use delphi_train::cli::DataArgs;
use delphi_train::device::DeviceChoice;

#[derive(Parser)]
#[command(
    name = "delphi-plan",
    version,
    about = "Search for the cheapest ReLU/quadratic placement that meets an accuracy threshold",
    long_about = "Starts from a trained all-ReLU network — yours (--arch net.onnx or a description \
                  with weights, not retrained) or a built-in trained here — and searches which \
                  activation layers become quadratic, scored by the cost model's predicted cost \
                  under the real protocol. Writes plan.json (feed it to `delphi verify`/`serve`), \
                  members.csv, pareto.csv/.parquet/.svg, lineage.log and summary.md to the run \
                  folder. Killing it and rerunning the same command resumes.\n\n\
                  Default files: the cost model is <results>/cost-model.json and run folders go \
                  under <results>/plan/; <results> is $DELPHI_RESULTS, else results/ of the \
                  checkout the binary was built in, else ./results.",
    after_help = "Examples:\n  \
                  delphi-plan --dataset fashion-mnist --accuracy 0.88 --verify\n  \
                  delphi-plan --arch net.onnx --dataset fashion-mnist --accuracy 0.85\n  \
                  delphi-plan --config configs/fashion-mnist.toml\n  \
                  delphi-plan bench --arch resnet14 --thresholds 0.89,0.90,0.91",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    search: SearchArgs,
    /// Validation accuracy the plan must reach (e.g. 0.88).
    #[arg(long, required_unless_present = "config", help_heading = "Search")]
    accuracy: Option<f64>,
    /// How placements are searched: pbt (ours), delphi (DELPHI's planner) or greedy.
    #[arg(long, default_value = "pbt", help_heading = "Search")]
    strategy: Strategy,
    /// What a placement chooses: layer (each activation layer ReLU or
    /// quadratic) or channel (each channel, learned inside every member with
    /// a penalty weighted by the cost model; pbt only).
    #[arg(long, default_value = "layer", help_heading = "Search")]
    granularity: Granularity,
    /// Run folder (default <results>/plan/<dataset>-<arch>-<accuracy %>[-<strategy>][-channel]).
    #[arg(long, help_heading = "Output")]
    out: Option<PathBuf>,
    /// Run the chosen plan through the protocol engine and record measured
    /// cost beside predicted.
    #[arg(long, help_heading = "Output")]
    verify: bool,
    /// Run the experiments of a TOML file instead (see configs/).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the strategies side by side at equal training budget on one base
    /// network and writes fronts.csv, fronts.svg, summary.md and bench.json.
    Bench(Box<BenchArgs>),
    /// Gives a trained network ReLU windows as it is (no placement search,
    /// no retraining) and writes it. --mode auto (the default): per layer
    /// the exact window holding the input bound proven from the weights
    /// (outputs identical to full width). --mode reduced-leaky: the
    /// narrowest bits of each ReLU's input that keep the fixed-point
    /// validation accuracy within 0.3 points of full width; such a network
    /// leaks, its rounding depends on the client's share (docs/security.md).
    Windows(WindowsArgs),
    /// Runs one unit of a search's work (what a worker does: resume a
    /// member from the unit's checkpoint, train, evaluate, write the new
    /// checkpoint, the plan and result.json). Started by the local
    /// executor's worker processes and by the Ray driver; see
    /// docs/cluster.md.
    Step(StepArgs),
}

#[derive(Args)]
struct StepArgs {
    /// The unit's folder (holding unit.json and the input checkpoint).
    #[arg(long)]
    unit: PathBuf,
}

/// Where a search's units of work run (docs/cluster.md).
#[derive(Args, Clone)]
struct ExecArgs {
    /// local: this machine (--workers processes; 1 = in this process) or
    /// ray: every unit a task on a Ray cluster (--ray-address). The same
    /// seeds give the same front whatever runs the units.
    #[arg(long, default_value = "local", help_heading = "Executor")]
    executor: ExecutorKind,
    /// Units at once. Local: worker processes, each with cores/K threads
    /// (1 = in this process) [default: min(cores, population) on the CPU
    /// (two one-thread workers trained 1.7x faster than one two-thread
    /// process on 2 cores), 1 on a GPU]. Ray: units in flight [default: all
    /// of an interval].
    #[arg(long, help_heading = "Executor")]
    workers: Option<usize>,
    /// Retries of a unit whose worker fails or is killed.
    #[arg(long, default_value_t = 2, help_heading = "Executor")]
    retries: usize,
    /// The delphi-plan the workers run [default: this executable; on a
    /// cluster it must exist at that path on every node].
    #[arg(long, help_heading = "Executor")]
    worker_program: Option<PathBuf>,
    /// Ray: the cluster's address (host:port of the head's GCS, or auto).
    #[arg(long, help_heading = "Executor")]
    ray_address: Option<String>,
    /// Ray: a Python with `ray` installed (the driver runs in it).
    #[arg(long, default_value = "python3", help_heading = "Executor")]
    ray_python: PathBuf,
    /// Ray: CPUs each unit asks for (its training threads).
    #[arg(long, default_value_t = 1.0, help_heading = "Executor")]
    ray_cpus: f64,
    /// Ray: GPUs each unit asks for (with --device cuda or wgpu).
    #[arg(long, default_value_t = 0.0, help_heading = "Executor")]
    ray_gpus: f64,
}

impl ExecArgs {
    /// The executor for a search of `population` members on `device`.
    fn config(&self, population: usize, device: DeviceChoice) -> ExecConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ExecConfig {
            kind: self.executor,
            workers: self.workers.unwrap_or(match (self.executor, device) {
                (ExecutorKind::Local, DeviceChoice::Cpu) => cores.min(population).max(1),
                (ExecutorKind::Local, _) => 1,
                (ExecutorKind::Ray, _) => 0,
            }),
            retries: self.retries,
            program: self.worker_program.clone(),
            ray_address: self.ray_address.clone(),
            ray_python: self.ray_python.clone(),
            ray_cpus: self.ray_cpus,
            ray_gpus: self.ray_gpus,
        }
    }
}

#[derive(Args)]
struct WindowsArgs {
    /// The trained network: a description with weights (.json) or an ONNX model.
    #[arg(long)]
    arch: String,
    /// Training images size the windows, validation images check the accuracy.
    #[command(flatten)]
    data: DataArgs,
    /// Where to write the network with its windows.
    #[arg(long, default_value = "windows.json")]
    out: PathBuf,
    /// auto (exact windows from proven bounds) or reduced-leaky (measured
    /// windows whose rounding depends on the shares).
    #[arg(long, default_value = "auto")]
    mode: ReluBitsMode,
    /// Cost model to price the network with and without windows (default
    /// <results>/cost-model.json; skipped when absent).
    #[arg(long)]
    cost_model: Option<PathBuf>,
    /// Seed (validation split).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also measure the fixed-point test accuracy with and without the
    /// windows (the whole test split; the choice itself never sees it).
    #[arg(long)]
    test: bool,
}

fn run_windows(a: &WindowsArgs) -> Result<()> {
    let say = |m: &str| eprintln!("[delphi-plan windows] {m}");
    match a.mode {
        ReluBitsMode::ReducedLeaky => say(
            "warning: reduced ReLUs round depending on the client's share; a client that repeats \
             queries can recover weights (docs/security.md). Serve the result only if that is acceptable.",
        ),
        ReluBitsMode::Full => bail!("--mode full chooses no windows (a network without relu_bits is full width)"),
        ReluBitsMode::Auto => {}
    }
    let resolved = delphi_train::arch::resolve(&a.arch, &a.data.dataset, a.seed)?;
    if !resolved.trained {
        bail!(
            "{} has no weights: windows are chosen for a trained network (train it with \
             delphi-train, or run delphi-plan, which trains a base)",
            a.arch
        );
    }
    for n in &resolved.notes {
        say(&format!("note: {n}"));
    }
    let mut net = resolved.network;
    let full = net.clone();
    // Exact windows need no data (nothing is measured) unless --test asks.
    let data = (a.mode != ReluBitsMode::Auto || a.test).then(|| a.data.load(a.seed)).transpose()?;
    let mut choice = match &data {
        Some(d) if a.mode == ReluBitsMode::ReducedLeaky => {
            delphi_planner::windows::choose_relu_windows(&mut net, d, &say)?
        }
        _ => delphi_planner::windows::exact_relu_windows(&mut net)?,
    };
    if let (true, Some(data)) = (a.test, &data) {
        say("test accuracy in fixed point, full width and with the windows");
        let t_full = delphi_train::evaluate::fixed_accuracy(&full, &data.test)?;
        let t_red = delphi_train::evaluate::fixed_accuracy(&net, &data.test)?;
        println!(
            "fixed-point test accuracy on {} images: {:.2} % with the windows, {:.2} % at full width ({:+.2} points)",
            data.test.len(),
            t_red * 100.0,
            t_full * 100.0,
            (t_red - t_full) * 100.0
        );
        choice.fixed_test_accuracy_full = Some(t_full);
        choice.fixed_test_accuracy_reduced = Some(t_red);
        choice.test_images = Some(data.test.len());
    }
    let model_path = a.cost_model.clone().unwrap_or_else(delphi_net::paths::default_cost_model);
    match delphi_cost::CostModel::load(&model_path) {
        Ok(model) => {
            let price = |n: &delphi_net::Network| -> Result<delphi_cost::Cost> {
                let prog = delphi_net::FixedProgram::lower(&n.architecture_only())?;
                Ok(model.predict(&prog, None).total)
            };
            let (f, r) = (price(&full)?, price(&net)?);
            println!(
                "predicted online {:.3} s / {:.1} MB → {:.3} s / {:.1} MB; offline {:.2} s / {:.1} MB → {:.2} s / {:.1} MB ({}, {})",
                f.online_s,
                f.online_bytes / 1e6,
                r.online_s,
                r.online_bytes / 1e6,
                f.offline_s,
                f.offline_bytes / 1e6,
                r.offline_s,
                r.offline_bytes / 1e6,
                model_path.display(),
                model.provenance.cpu_model
            );
            choice.predicted_full_width = Some(serde_json::to_value(f)?);
            net.metadata.predicted_cost = Some(serde_json::to_value(r)?);
        }
        Err(e) if a.cost_model.is_some() => {
            return Err(anyhow::Error::new(e).context("reading --cost-model"));
        }
        Err(_) => say(&format!(
            "no cost model at {}: costs not predicted (delphi cost calibrate writes one)",
            model_path.display()
        )),
    }
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2} %", v * 100.0));
    let summary = format!(
        "windows {} (fixed-point validation {} reduced, {} full)",
        choice.windows,
        pct(choice.fixed_valid_accuracy_reduced),
        pct(choice.fixed_valid_accuracy_full)
    );
    net.metadata.relu_bits = Some(choice);
    net.save(&a.out, delphi_net::WeightStorage::Inline)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!("{summary}; wrote {}", a.out.display());
    Ok(())
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    search: SearchArgs,
    /// Validation-accuracy thresholds, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    thresholds: Vec<f64>,
    /// Strategies and controls compared (pbt, delphi, greedy, relu-control,
    /// quad-control).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pbt,delphi,greedy,relu-control,quad-control"
    )]
    strategies: Vec<Strategy>,
    /// Granularities compared: `layer` runs every strategy; `channel` adds
    /// pbt with per-channel placement.
    #[arg(long, value_delimiter = ',', default_value = "layer")]
    granularity: Vec<Granularity>,
    /// Also run our search with the whole population to the end
    /// (`pbt-whole`: what halving the population at --halve-at buys).
    #[arg(long)]
    whole_population: bool,
    /// Search seeds, comma separated: every variant runs once per seed, on
    /// the same data split and base (--seed). Run one seed per command
    /// and all of them in the last: finished runs are only reread.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Images held back from every search (split B, carved from the
    /// training set beside the validation split A): each threshold's plan
    /// is chosen among a run's front by its accuracy here.
    #[arg(long, default_value_t = 5000)]
    select_size: usize,
    /// Run every front plan through `delphi verify`, not only the chosen
    /// ones (the hypervolume in measured cost; slow on deep networks).
    #[arg(long)]
    measure_fronts: bool,
    /// Runs of `delphi verify` per measured plan: a plan's measured cost is
    /// their median. The runs go in rounds (every plan once, then every
    /// plan again), so a slow spell of the machine falls on one round's
    /// plans alike rather than on one variant's. A finished benchmark
    /// rerun with a larger number only adds the missing rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=99))]
    measure_repeats: u64,
    /// Hypervolume's accuracy reference [default: 2 points below the
    /// lowest threshold].
    #[arg(long)]
    hv_floor: Option<f64>,
    /// Bench folder (default <results>/plan-bench/<dataset>-<arch>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip `delphi verify --compare-cost` on the chosen plans.
    #[arg(long)]
    no_verify: bool,
}

/// Settings shared by a search and the benchmark.
#[derive(Args)]
struct SearchArgs {
    /// Architecture: a built-in (small-cnn, small-cnn-max, minionn, resnet32, resnet14,
    /// resnet26, resnet38;
    /// default per dataset), or a network description (.json) or ONNX model
    /// (.onnx). With weights it is the trained all-ReLU base and is not
    /// retrained; without, it is trained first (--base-epochs).
    #[arg(long, help_heading = "Network")]
    arch: Option<String>,
    /// Epochs of the all-ReLU base network (when it is trained here).
    #[arg(long, default_value_t = 4, help_heading = "Network")]
    base_epochs: usize,
    /// Members in the population.
    #[arg(long, default_value_t = 6, help_heading = "Search")]
    population: usize,
    /// Epochs each member trains (the budget is population × epochs
    /// member-epochs for every strategy unless --budget-epochs says otherwise)
    /// [default: 4; 2 for resnet14, resnet26 and resnet38, sized so its default search fits in 45
    /// minutes on 2 cores]
    #[arg(long, help_heading = "Search")]
    epochs: Option<usize>,
    /// Training budget in member-epochs.
    #[arg(long, help_heading = "Search")]
    budget_epochs: Option<f64>,
    /// DELPHI's planner: how many counts of quadratic layers it tries.
    #[arg(long, default_value_t = 3, help_heading = "Search")]
    delphi_runs: usize,
    /// Ready intervals per epoch.
    #[arg(long, default_value_t = 2, help_heading = "Search")]
    intervals_per_epoch: usize,
    /// Our search: once this fraction of the budget is spent, the
    /// population keeps its better half (the front's ends among them) and
    /// the survivors train on with the others' steps; 1 keeps the whole
    /// population to the end (per-channel searches always do).
    #[arg(long, default_value_t = delphi_planner::config::DEFAULT_HALVE_AT, help_heading = "Search")]
    halve_at: f64,
    /// Keep on the run's front, besides the plans no other beats, every
    /// plan that no cheaper one beats by more than this many standard
    /// errors of a validation estimate (at most 24 plans): a choice on
    /// held-back images (the benchmark's split B) then sees the plans
    /// validation cannot tell apart. 0: the plain front.
    #[arg(long, default_value_t = 0.0, help_heading = "Search")]
    front_slack: f64,
    /// Re-estimate each member's batch-norm statistics on this many
    /// training batches after it trains, before it is evaluated and
    /// exported (the moving averages training keeps lag the weights while
    /// layers turn quadratic); 0: keep the statistics training left.
    #[arg(long, default_value_t = delphi_planner::config::DEFAULT_BN_RECALIBRATION, help_heading = "Search")]
    bn_recalibration: usize,
    /// Wall-time budget in minutes (no new interval starts after it).
    #[arg(long, help_heading = "Search")]
    budget: Option<f64>,
    /// ReLU circuits: auto (per layer, the exact window 0..hi that holds the
    /// layer's input bound proven from the weights, else the 41-bit
    /// circuit: outputs identical to full width, fewer bytes), full (the
    /// 41-bit circuit everywhere) or reduced-leaky (the narrowest window
    /// holding the inputs the network is seen to take, 2-5x cheaper online,
    /// but its rounding depends on the client's share and a client that
    /// repeats queries can recover weights; see docs/security.md).
    #[arg(long, default_value = "auto", help_heading = "Search")]
    relu_bits: ReluBitsMode,
    /// Truncations (after quadratic layers): exact (a garbled circuit per
    /// value, a deterministic function of the value) or faithful-leaky (one
    /// bit online, but it rounds up or down depending on the shares, which
    /// lets a client that repeats queries learn about the weights; see
    /// docs/security.md).
    #[arg(long, default_value = "exact", help_heading = "Search")]
    truncation: delphi_net::desc::TruncChoice,
    /// Seed.
    #[arg(long, default_value_t = 1, help_heading = "Search")]
    seed: u64,
    /// What to minimise: online-time (alias latency), online-bytes (alias
    /// bytes), offline-time or mix.
    #[arg(long, default_value = "online-time", help_heading = "Cost")]
    objective: Objective,
    /// Price plans for this link instead of loopback: bits as 100Mbit,
    /// 100Mbps or 1Gbit/s, bytes as 12.5MB/s (ambiguous units are refused).
    #[arg(long, requires = "rtt", help_heading = "Cost")]
    bandwidth: Option<Bandwidth>,
    /// Round-trip time of that link (e.g. 20ms, 500us).
    #[arg(long, requires = "bandwidth", help_heading = "Cost")]
    rtt: Option<Rtt>,
    /// Cost model (default <results>/cost-model.json; calibrated quickly if missing).
    #[arg(long, help_heading = "Cost")]
    cost_model: Option<PathBuf>,
    /// Compute device: cpu, wgpu, cuda or cuda:N (the GPU ones need the
    /// binary built with the feature of that name).
    #[arg(long, default_value = "cpu", value_parser = delphi_train::device::parse_available, help_heading = "Compute")]
    device: DeviceChoice,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    exec: ExecArgs,
    /// No progress bars.
    #[arg(long, help_heading = "Output")]
    quiet: bool,
}

fn plan_config(a: &SearchArgs) -> PlanConfig {
    PlanConfig {
        name: None,
        dataset: a.data.dataset.clone(),
        data_dir: a.data.data_dir.clone(),
        arch: a.arch.clone(),
        strategy: Strategy::Pbt,
        granularity: Granularity::Layer,
        relu_bits: a.relu_bits,
        truncation: a.truncation,
        budget_epochs: a.budget_epochs,
        delphi_runs: a.delphi_runs,
        accuracy: 0.0,
        population: a.population,
        epochs: a.epochs,
        base_epochs: a.base_epochs,
        intervals_per_epoch: a.intervals_per_epoch,
        quantile: 0.25,
        halve_at: (a.halve_at != 1.0).then_some(a.halve_at),
        front_slack: a.front_slack,
        bn_recalibration: a.bn_recalibration,
        budget_minutes: a.budget,
        objective: a.objective,
        bandwidth: a.bandwidth,
        rtt: a.rtt,
        cost_model: a.cost_model.clone(),
        device: a.device,
        batch_size: 64,
        train_limit: a.data.train_limit,
        valid_size: a.data.valid_size,
        test_limit: a.data.test_limit,
        seed: a.seed,
        search_seed: None,
        select_size: 0,
        out: None,
        verify: false,
        exec: a.exec.config(a.population, a.device),
    }
}

/// Whether `dir` holds any file (at any depth).
fn holds_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let p = e.path();
            if p.is_dir() {
                holds_files(&p)
            } else {
                true
            }
        })
    })
}

fn run_one(c: &PlanConfig, quiet: bool) -> Result<()> {
    let start = Instant::now();
    let out = c.out();
    let existed = out.exists();
    let say = |m: &str| eprintln!("[delphi-plan] {m}");
    let outcome = match delphi_planner::strategy::run(c, quiet, &say) {
        Ok(o) => o,
        Err(e) => {
            // A run that failed before writing anything leaves no folder.
            if !existed && !holds_files(&out) {
                let _ = std::fs::remove_dir_all(&out);
            }
            return Err(anyhow::Error::new(e).context(format!("search {}", c.name())));
        }
    };
    let net = delphi_net::Network::load(&outcome.plan)
        .with_context(|| format!("reading {}", outcome.plan.display()))?;
    let data = search::load_data(c)?;
    say("measuring the plan's test accuracy (float and fixed point)");
    let (float, fixed) = measure::test_accuracy(c, &outcome.plan, &data)?;
    let placement = delphi_net::Placement::of(&net);
    let verify = if c.verify {
        say("running the plan through the protocol engine (delphi verify --compare-cost)");
        let model = delphi_planner::pricing::cost_model_path(c, &out, &say)?;
        Some(delphi_planner::engine::verify(&outcome.plan, &model)?)
    } else {
        None
    };
    let fin = Final {
        test_accuracy_float: float,
        test_accuracy_fixed: fixed,
        quads: placement.quad_count(),
        layers: placement.len(),
        verify,
        seconds: start.elapsed().as_secs_f64(),
        relu_bits: net.metadata.relu_bits.clone(),
        share_dependent_roundings: Some(
            delphi_net::FixedProgram::lower(&net)?.share_dependent_roundings(),
        ),
    };
    report::write(&out, c, &outcome, &fin)?;
    let summary = serde_json::json!({
        "name": c.name(),
        "strategy": c.strategy.name(),
        "chosen": outcome.chosen,
        "closest": outcome.closest,
        "base_valid_accuracy": outcome.base_valid_accuracy,
        "base_given": outcome.base_given,
        "steps_used": outcome.steps.0,
        "budget_steps": outcome.steps.1,
        "notes": outcome.notes,
        "final": fin,
        "config": c,
    });
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    match &outcome.chosen {
        Some(e) => println!(
            "plan {}: placement {} ({}/{} quadratic, {} ReLUs left), validation {:.2} %, test {:.2} % float / {:.2} % fixed, {} {:.4}; see {}",
            outcome.plan.display(),
            e.placement,
            fin.quads,
            fin.layers,
            e.relus,
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

/// The executor's flags (allowed beside `--config`).
const EXEC_FLAGS: [&str; 8] = [
    "executor",
    "workers",
    "retries",
    "worker_program",
    "ray_address",
    "ray_python",
    "ray_cpus",
    "ray_gpus",
];

/// Flags the user typed beside `--config` (which they would expect to
/// apply, but the experiment file decides everything): refused by name.
fn flags_beside_config(m: &clap::ArgMatches) -> Vec<String> {
    m.ids()
        .map(|id| id.as_str())
        // Argument groups (the flattened structs) are not flags.
        .filter(|id| !matches!(*id, "config" | "quiet") && !id.starts_with(char::is_uppercase))
        // How units run is not a search setting.
        .filter(|id| !EXEC_FLAGS.contains(id))
        .filter(|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect()
}

fn main() -> Result<()> {
    delphi_train::tune_allocator();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
    if cli.config.is_some() {
        let extra = flags_beside_config(&matches);
        if !extra.is_empty() {
            bail!(
                "{} given beside --config would not apply (the experiment file sets every \
                 search setting): put them in the file, or drop --config",
                extra.join(", ")
            );
        }
    }
    if delphi_net::paths::check_args_only() {
        return Ok(());
    }
    if let Some(Cmd::Windows(w)) = &cli.command {
        return run_windows(w);
    }
    if let Some(Cmd::Step(st)) = &cli.command {
        let r = delphi_planner::unit::run_command(&st.unit)
            .with_context(|| format!("unit {}", st.unit.display()))?;
        eprintln!(
            "[delphi-plan step] member {}: {} steps, validation {:.2} %, {:.1} s on {}",
            r.member,
            r.charged,
            r.found.valid_accuracy * 100.0,
            r.seconds,
            r.host
        );
        return Ok(());
    }
    if let Some(Cmd::Bench(b)) = &cli.command {
        let mut plan = plan_config(&b.search);
        plan.epochs = Some(plan.epochs());
        plan.check().map_err(anyhow::Error::msg)?;
        plan.check_runnable().map_err(anyhow::Error::msg)?;
        for t in &b.thresholds {
            if !(0.0..=1.0).contains(t) {
                bail!("threshold {t} must be in [0, 1]");
            }
        }
        plan.accuracy = b.thresholds.iter().cloned().fold(f64::INFINITY, f64::min);
        plan.select_size = b.select_size;
        let out = b.out.clone().unwrap_or_else(|| {
            delphi_net::paths::results_path("plan-bench").join(format!(
                "{}-{}",
                plan.dataset.name(),
                plan.arch_label()
            ))
        });
        let cfg = BenchConfig {
            plan,
            thresholds: b.thresholds.clone(),
            strategies: b.strategies.clone(),
            granularities: b.granularity.clone(),
            whole_population: b.whole_population,
            seeds: b.seeds.clone(),
            out: out.clone(),
            verify: !b.no_verify,
            measure_fronts: b.measure_fronts,
            measure_repeats: b.measure_repeats as usize,
            hv_floor: b.hv_floor,
        };
        let say = |m: &str| eprintln!("[delphi-plan bench] {m}");
        let rows = bench::run(&cfg, b.search.quiet, &say)?;
        println!(
            "{} front rows; see {} and {}",
            rows.len(),
            out.join("summary.md").display(),
            out.join("fronts.svg").display()
        );
        return Ok(());
    }
    let mut configs = match &cli.config {
        Some(p) => {
            let mut v = ExperimentFile::load(p).map_err(anyhow::Error::msg)?.experiment;
            for c in &mut v {
                c.exec = cli.search.exec.config(c.population, c.device);
            }
            v
        }
        None => {
            let mut c = plan_config(&cli.search);
            c.accuracy = cli.accuracy.unwrap_or(0.0);
            c.strategy = cli.strategy;
            c.granularity = cli.granularity;
            c.out = cli.out.clone();
            c.verify = cli.verify;
            vec![c]
        }
    };
    if configs.is_empty() {
        bail!("no experiments to run");
    }
    for c in &mut configs {
        // The default written out, so that state, summaries and a rerun
        // that spells it agree.
        c.epochs = Some(c.epochs());
        c.check().map_err(anyhow::Error::msg)?;
        c.check_runnable().map_err(anyhow::Error::msg)?;
    }
    for c in &configs {
        run_one(c, cli.search.quiet)?;
    }
    Ok(())
}
