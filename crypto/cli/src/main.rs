//! `delphi`: the protocol engine's command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use delphi_cost::CostModel;
use delphi_engine::run::{current_rss_bytes, peak_rss_bytes, run_local, RunReport};
use delphi_engine::session::{ClientOptions, ServeLimits, Server, SessionEvent};
use delphi_engine::store::{default_key_path, BundleStore, Side};
use delphi_net::builtin::{build, quad_last_with, ARCHITECTURES, BENCH_QUAD};
use delphi_net::eval::{calibrate_batch_norm, random_inputs as random_inputs_f32};
use delphi_net::{FixedProgram, Network, Normalization, Placement, WeightStorage};

#[derive(Parser)]
#[command(
    name = "delphi",
    version,
    about = "Private neural-network prediction: the two-party protocol engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks that write machine-readable figures under results/.
    #[command(subcommand)]
    Bench(Bench),
    /// Runs a plan between a server and a client (two threads, loopback TCP) and checks
    /// every secure result against the plaintext fixed-point reference.
    Verify(VerifyArgs),
    /// The cost model: calibrate it on this machine, predict a plan's costs.
    #[command(subcommand)]
    Cost(CostCmd),
    /// Serves private predictions of a plan to clients (`delphi infer`),
    /// several sessions at once, each bounded in time and in what it may hold.
    ///
    /// Each client learns the prediction and the architecture: layer kinds
    /// and shapes, which activations are ReLU or quadratic, the input
    /// normalisation and range, and the trained coefficients a and b of
    /// every quadratic layer (its share of a·x² + b·x needs them). Weights,
    /// batch-norm statistics and the quadratic constants c stay here. The
    /// protocol is semi-honest: a client that deviates from it can learn
    /// more than the prediction (see the README's security notes).
    Serve(ServeArgs),
    /// Gets private predictions from a server: the input stays hidden from it.
    Infer(InferArgs),
    /// Converts an ONNX model (as PyTorch or Keras/tf2onnx export it) into a
    /// network description; unsupported operators are refused by name.
    Import(ImportArgs),
    /// Writes a built-in architecture with random weights as a network description.
    Export(ExportArgs),
}

#[derive(Subcommand)]
enum CostCmd {
    /// Measures the primitive costs with the real crypto over loopback TCP
    /// (≈ 20 s on a 2-core machine; --quick ≈ 5 s) and writes the model.
    Calibrate(CostCalibrateArgs),
    /// Predicts a plan's offline and online time and bytes, per layer.
    Predict(CostPredictArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// A whole network under the protocol (random weights): time, bytes, memory.
    Network(BenchNetworkArgs),
    /// A server under load: N concurrent clients, each running sessions of
    /// one private inference (keys, offline, online) against one `serve`
    /// on loopback; throughput and p50/p99 latency.
    Serve(BenchServeArgs),
    /// Garbled-circuit ReLU layer: throughput, bytes and end-to-end time over loopback TCP.
    Relu(BenchReluArgs),
}

#[derive(clap::Args)]
struct VerifyArgs {
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
    /// The cost model (from `delphi cost calibrate`).
    #[arg(long, default_value = "results/cost-model.json")]
    cost_model: PathBuf,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The network description (plan) to serve, or an ONNX model.
    #[arg(long)]
    plan: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// Offline bundles each client prepares ahead of its inputs.
    #[arg(long, default_value_t = 1)]
    preprocess: usize,
    /// Seconds one read or write may wait for a client, and a client may
    /// sit idle between requests.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Seconds a client has to finish the handshake (hello, architecture,
    /// its public key).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout: u64,
    /// Seconds one offline or online phase may take in all, however the
    /// client paces it.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    phase_timeout: u64,
    /// Sessions served at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: u64,
    /// Connections served or waiting for a worker; more are told the
    /// server is busy and closed at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_connections: u64,
    /// Serve a plan whose values can leave the range the protocol
    /// computes exactly in (refused by default), with a warning. Such a
    /// plan can give wrong answers, and a truncation outside its range
    /// leaks a threshold test on a hidden value to the client.
    #[arg(long)]
    allow_overflow: bool,
    /// Unused bundles one client may have the server hold in memory.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=64))]
    max_bundles: u64,
    /// Stop after this many sessions (default: serve forever).
    #[arg(long)]
    sessions: Option<usize>,
    /// Keep the server's offline bundles in this directory (private, one
    /// file per bundle, each used once) so that clients can preprocess in
    /// one connection and predict in a later one.
    #[arg(long)]
    bundle_dir: Option<PathBuf>,
    /// The key that authenticates the stored bundles (made if absent;
    /// kept outside the directory). Default: `<bundle-dir>.key` beside it.
    #[arg(long, requires = "bundle_dir")]
    bundle_key: Option<PathBuf>,
    /// Most bundles the store may hold.
    #[arg(long, default_value_t = 1000, requires = "bundle_dir")]
    max_stored_bundles: usize,
    /// Most disk the store may use, in MB.
    #[arg(long, default_value_t = 20_000, requires = "bundle_dir")]
    max_store_mb: u64,
}

#[derive(clap::Args)]
struct InferArgs {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    connect: String,
    /// JSON file: one input (array of CHW numbers) or an array of inputs.
    /// Inputs are raw — pixels / 255 for images — and are normalised as
    /// the served network records (see --normalized).
    #[arg(long, required_unless_present = "preprocess_only")]
    input: Option<PathBuf>,
    /// The inputs are already normalised: send them as they are instead
    /// of applying the network's recorded input normalisation.
    #[arg(long)]
    normalized: bool,
    /// Seconds to wait for the peer before giving up.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Keep the client's offline bundles in this directory; stored
    /// bundles are used first (needs a server started with --bundle-dir).
    #[arg(long)]
    bundle_dir: Option<PathBuf>,
    /// The key that authenticates the stored bundles (made if absent;
    /// kept outside the directory). Default: `<bundle-dir>.key` beside it.
    #[arg(long, requires = "bundle_dir")]
    bundle_key: Option<PathBuf>,
    /// Only run N offline phases and store the bundles (with
    /// --bundle-dir); a later `infer` uses them, so its online phase
    /// starts at once.
    #[arg(
        long,
        value_name = "N",
        requires = "bundle_dir",
        conflicts_with = "input"
    )]
    preprocess_only: Option<usize>,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Output path of the description (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Put the weights in this safetensors file instead of inline.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// The per-channel mean the model's input was normalised with
    /// (raw pixels / 255), e.g. 0.2860 or 0.4914,0.4822,0.4465.
    #[arg(long, value_delimiter = ',', requires = "input_std")]
    input_mean: Option<Vec<f32>>,
    /// The per-channel standard deviation of that normalisation.
    #[arg(long, value_delimiter = ',', requires = "input_mean")]
    input_std: Option<Vec<f32>>,
    /// The dataset it was trained on (recorded in the metadata).
    #[arg(long)]
    dataset: Option<String>,
    /// The description's name (default: the file's).
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Architecture: small-cnn, minionn, resnet32 or resnet14.
    #[arg(long)]
    arch: String,
    /// Number of output classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Make the last N activation layers quadratic (the first keep ReLU).
    #[arg(long, conflicts_with = "placement")]
    quad_layers: Option<usize>,
    /// Activation placement: `relu,quad,...` or a string of R/Q, one per activation layer.
    #[arg(long)]
    placement: Option<String>,
    /// Seed for the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Put the weights in a safetensors file beside the description instead of inline.
    #[arg(long)]
    sidecar: bool,
    /// Output path of the description (JSON).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct CostCalibrateArgs {
    /// Where to write the model.
    #[arg(long, default_value = "results/cost-model.json")]
    out: PathBuf,
    /// Fewer, smaller samples.
    #[arg(long)]
    quick: bool,
}

#[derive(clap::Args)]
struct CostPredictArgs {
    /// The network description (plan).
    #[arg(long)]
    plan: PathBuf,
    /// The cost model.
    #[arg(long, default_value = "results/cost-model.json")]
    cost_model: PathBuf,
    /// Link bandwidth, e.g. 100Mbit, 1Gbit, 500MB/s (default: the
    /// calibration's loopback).
    #[arg(long, requires = "rtt")]
    bandwidth: Option<String>,
    /// Link round-trip time, e.g. 20ms.
    #[arg(long, requires = "bandwidth")]
    rtt: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BenchNetworkArgs {
    /// Architecture: small-cnn, minionn or resnet32.
    #[arg(long, default_value = "resnet32")]
    arch: String,
    /// Number of output classes.
    #[arg(long, default_value_t = 100)]
    classes: usize,
    /// Make the last N activation layers quadratic.
    #[arg(long, default_value_t = 0)]
    quad_layers: usize,
    /// Number of inferences.
    #[arg(long, default_value_t = 1)]
    inputs: usize,
    /// Run this plan (a description with weights, e.g. with reduced-ReLU
    /// windows from `delphi-plan windows`) instead of a built-in with random
    /// weights; its inputs are sampled in its declared input range, and
    /// every node of the run is checked against the reference.
    #[arg(long, conflicts_with_all = ["arch", "classes", "quad_layers"])]
    plan: Option<PathBuf>,
    /// Where to write the JSON figures.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct BenchServeArgs {
    /// The plan to serve (default: small-cnn with random weights).
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Sessions each client runs, one after another.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Server worker threads (sessions served at once).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "results/bench/serve.json")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct BenchReluArgs {
    /// Number of ReLUs.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "results/bench/relu.json")]
    out: PathBuf,
    /// Seed for the benchmark's inputs (the protocol's own randomness always comes from the OS).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Circuit widths, one row each: `full` (the exact 41-bit circuit) or a
    /// reduced window `lo..hi` (the circuit sees bits lo..hi of the input;
    /// see `delphi_crypto::relu`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "full,12..27,16..27,16..25"
    )]
    bits: Vec<String>,
    /// Truncation after each ReLU (12: the ReLU after a conv layer).
    #[arg(long, default_value_t = 12)]
    shift: u32,
}

/// Parses `full` or `lo..hi` into the ReLU circuit it names.
fn parse_relu_bits(s: &str, shift: u32) -> Result<delphi_crypto::relu::ReluSpec> {
    use delphi_crypto::relu::{ReluBits, ReluSpec};
    let s = s.trim();
    if s == "full" {
        return Ok(ReluSpec::full(shift));
    }
    let (lo, hi) = s
        .split_once("..")
        .with_context(|| format!("ReLU bits {s:?}: expected `full` or `lo..hi`"))?;
    let bits = ReluBits {
        lo: lo
            .trim()
            .parse()
            .with_context(|| format!("ReLU bits {s:?}: lo"))?,
        hi: hi
            .trim()
            .parse()
            .with_context(|| format!("ReLU bits {s:?}: hi"))?,
    };
    let spec = ReluSpec::reduced(shift, bits);
    spec.check()?;
    Ok(spec)
}

fn random_inputs(
    prog: &FixedProgram,
    n: usize,
    seed: u64,
) -> Result<Vec<Vec<delphi_crypto::field::F>>> {
    random_inputs_f32(prog.nodes[0].shape.len(), n, seed)
        .iter()
        .map(|x| Ok(prog.encode_input(x)?))
        .collect()
}

/// The largest gap allowed between the secure logits and the float
/// network's, relative to the float logits' largest magnitude. Fixed point
/// with 8 fractional bits moves logits by well under 1 % on the networks
/// here; a wrap-around moves them by tens of percent.
const FLOAT_TOLERANCE: f64 = 0.1;

/// Lowers a plan and checks its value ranges ([`delphi_net::range`]):
/// refused if a node can leave its range, unless `allow_overflow`. Returns
/// the program and a line that says how the ranges stand.
fn checked_program(net: &Network, allow_overflow: bool) -> Result<(FixedProgram, String)> {
    let prog = FixedProgram::lower(net)?;
    let report = delphi_net::range::analyse_network(net, &prog)?;
    let line = match report.check() {
        Ok(()) => report.summary(),
        Err(e) if allow_overflow => format!("warning (--allow-overflow): {e}"),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(
                "the plan is refused: it can compute wrong answers without a sign \
                 (--allow-overflow runs it anyway)",
            ))
        }
    };
    Ok((prog, line))
}

/// Per inference: the gap between the secure logits and the float
/// network's (relative), and whether their classes agree.
fn float_gaps(net: &Network, inputs: &[Vec<f32>], r: &RunReport) -> Result<Vec<(f64, bool)>> {
    inputs
        .iter()
        .zip(&r.inferences)
        .map(|(x, inf)| {
            let want = delphi_net::eval::eval_float(net, x)?;
            let scale = want.iter().fold(1e-9f64, |m, v| m.max(v.abs() as f64));
            let gap = inf
                .logits
                .iter()
                .zip(&want)
                .fold(0f64, |m, (g, w)| m.max((g - *w as f64).abs()));
            let class = |v: &[f64]| {
                v.iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                    )
                    .0
            };
            let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
            Ok((gap / scale, class(&inf.logits) == class(&want64)))
        })
        .collect()
}

fn parse_inputs(v: &serde_json::Value) -> Option<Vec<Vec<f32>>> {
    let arr = v.as_array()?;
    let one = |a: &Vec<serde_json::Value>| {
        a.iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
    };
    if arr.iter().all(|x| x.is_number()) {
        return Some(vec![one(arr)?]);
    }
    arr.iter().map(|x| one(x.as_array()?)).collect()
}

fn mean(r: &RunReport, f: impl Fn(&delphi_engine::run::Inference) -> f64) -> f64 {
    r.inferences.iter().map(f).sum::<f64>() / r.inferences.len().max(1) as f64
}

fn write_json(out: &std::path::Path, v: &serde_json::Value) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, format!("{}\n", serde_json::to_string_pretty(v)?))
        .with_context(|| format!("writing {}", out.display()))
}

fn verify_json(r: &RunReport) -> serde_json::Value {
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

/// Per-layer costs, averaged over the inferences.
fn print_layers(r: &RunReport) {
    let Some(first) = r.inferences.first() else {
        return;
    };
    let n = r.inferences.len() as f64;
    println!(
        "\nper layer (mean of {} inference{}; client's view of the channel):",
        r.inferences.len(),
        if r.inferences.len() == 1 { "" } else { "s" }
    );
    println!(
        "{:>6}  {:<28} {:>10} {:>11} {:>10} {:>11}",
        "layer", "operations", "offline s", "offline MB", "online ms", "online kB"
    );
    for (k, l) in first.layers.iter().enumerate() {
        let sum = |f: &dyn Fn(&delphi_engine::run::LayerCost) -> f64| {
            r.inferences
                .iter()
                .filter_map(|i| i.layers.get(k))
                .map(f)
                .sum::<f64>()
                / n
        };
        let name = l.layer.map_or("input".to_string(), |i| i.to_string());
        let mut ops = l.ops.join("+");
        if ops.len() > 28 {
            ops.truncate(25);
            ops.push_str("...");
        }
        println!(
            "{:>6}  {:<28} {:>10.3} {:>11.2} {:>10.2} {:>11.1}",
            name,
            ops,
            sum(&|c| c.offline_s),
            sum(&|c| c.offline_bytes as f64) / 1e6,
            sum(&|c| c.online_s) * 1e3,
            sum(&|c| c.online_bytes as f64) / 1e3,
        );
    }
}

/// Predicted beside measured (means over the inferences).
fn compare(r: &RunReport, p: &delphi_cost::Prediction) -> serde_json::Value {
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

fn print_comparison(c: &serde_json::Value) {
    println!("\ncost model vs measurement:");
    println!(
        "{:<14} {:>14} {:>14} {:>8}",
        "", "predicted", "measured", "error"
    );
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

fn print_table(r: &RunReport) {
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
    print_layers(r);
    println!(
        "peak memory (both parties, one process): {:.0} MB",
        r.peak_rss_bytes as f64 / 1e6
    );
}

fn print_prediction(net: &Network, p: &delphi_cost::Prediction, link: &delphi_cost::Link) {
    println!(
        "{}: predicted per inference over {:.0} MB/s, RTT {:.2} ms",
        net.name,
        link.bytes_per_s / 1e6,
        link.rtt_s * 1e3
    );
    println!(
        "{:>6}  {:<28} {:>10} {:>11} {:>10} {:>11}",
        "layer", "operations", "offline s", "offline MB", "online ms", "online kB"
    );
    for (l, ops, c) in &p.layers {
        let mut ops = ops.join("+");
        if ops.len() > 28 {
            ops.truncate(25);
            ops.push_str("...");
        }
        println!(
            "{:>6}  {:<28} {:>10.3} {:>11.2} {:>10.2} {:>11.1}",
            l.map_or("-".to_string(), |i| i.to_string()),
            ops,
            c.offline_s,
            c.offline_bytes / 1e6,
            c.online_s * 1e3,
            c.online_bytes / 1e3
        );
    }
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

/// Loads a cost model, warning when it was calibrated on another machine.
fn load_cost_model(path: &std::path::Path) -> Result<CostModel> {
    let model = CostModel::load(path).with_context(|| {
        format!(
            "loading the cost model (run `delphi cost calibrate --out {}` first)",
            path.display()
        )
    })?;
    if let Some(why) = model.provenance.differs_from_here() {
        eprintln!("warning: {why}");
    }
    Ok(model)
}

/// An error and its causes on one line: "what: why: why".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// The p-th percentile (0–100) of `v`, nearest rank.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Runs `clients` concurrent clients of `sessions` one-inference sessions
/// each against an in-process server; returns the figures.
fn serve_bench(
    net: Network,
    clients: usize,
    sessions: usize,
    workers: usize,
) -> Result<serde_json::Value> {
    let (prog, _) = checked_program(&net, false)?;
    let input_len = net.input.len();
    let range = net.input_range();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let server = Server {
        net: Arc::new(net),
        prog: Arc::new(prog),
        preprocess: 1,
        limits: ServeLimits {
            workers,
            max_connections: clients.max(workers) * 2,
            ..ServeLimits::default()
        },
        store: None,
    };
    let total = clients * sessions;
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = failures.clone();
    let on_event = Arc::new(move |e: SessionEvent| {
        if let Some(err) = e.error {
            eprintln!(
                "[serve bench] session with {} failed: {}",
                e.peer,
                chain(&err)
            );
            f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let server = std::thread::spawn(move || server.run(listener, Some(total), on_event));
    let t = std::time::Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || -> Result<Vec<(f64, f64)>> {
                let options = ClientOptions {
                    timeout: Duration::from_secs(600),
                    store: None,
                    normalize: false,
                };
                let inputs =
                    delphi_net::range::sample_inputs(input_len, range, sessions + 2, c as u64 + 7);
                (0..sessions)
                    .map(|k| {
                        let t = std::time::Instant::now();
                        let p = delphi_engine::session::infer(
                            addr.as_str(),
                            &inputs[k + 2..k + 3],
                            &options,
                            &|_| {},
                        )?;
                        Ok((t.elapsed().as_secs_f64(), p[0].online_s))
                    })
                    .collect()
            })
        })
        .collect();
    let mut session = Vec::with_capacity(total);
    let mut online = Vec::with_capacity(total);
    for h in handles {
        let got = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        for (s, o) in got {
            session.push(s);
            online.push(o);
        }
    }
    let wall = t.elapsed().as_secs_f64();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    Ok(serde_json::json!({
        "clients": clients,
        "sessions_per_client": sessions,
        "workers": workers,
        "predictions": total,
        "failed_sessions": failures.load(std::sync::atomic::Ordering::SeqCst),
        "wall_s": wall,
        "predictions_per_s": total as f64 / wall,
        "session_latency_s": {
            "p50": percentile(&mut session.clone(), 50.0),
            "p99": percentile(&mut session, 99.0),
        },
        "online_latency_s": {
            "p50": percentile(&mut online.clone(), 50.0),
            "p99": percentile(&mut online, 99.0),
        },
        "note": "each session: key generation, one offline and one online phase; server and clients share the machine",
        "cores": delphi_crypto::bench::cores(),
        "cpu_model": delphi_crypto::bench::cpu_model(),
        "peak_rss_bytes_all": peak_rss_bytes(),
    }))
}

/// Opens a bundle store when a directory is given.
fn open_store(
    dir: Option<PathBuf>,
    key: Option<PathBuf>,
    side: Side,
) -> Result<Option<BundleStore>> {
    let Some(dir) = dir else { return Ok(None) };
    let key = key.unwrap_or_else(|| default_key_path(&dir));
    Ok(Some(
        BundleStore::open_with_key(&dir, side, &key)
            .with_context(|| format!("opening the bundle store {}", dir.display()))?,
    ))
}

/// Loads a plan: a network description, or an ONNX model imported on the fly.
fn load_plan(path: &std::path::Path) -> Result<Network> {
    delphi_onnx::load_network(path).with_context(|| format!("loading {}", path.display()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Import(a) => run_import(a),
        Command::Bench(Bench::Relu(a)) => run_bench_relu(a),
        Command::Bench(Bench::Serve(a)) => run_bench_serve(a),
        Command::Bench(Bench::Network(a)) => run_bench_network(a),
        Command::Verify(a) => run_verify(a),
        Command::Cost(CostCmd::Calibrate(a)) => run_cost_calibrate(a),
        Command::Cost(CostCmd::Predict(a)) => run_cost_predict(a),
        Command::Serve(a) => run_serve(a),
        Command::Infer(a) => run_infer(a),
        Command::Export(a) => run_export(a),
    }
}

fn run_import(args: ImportArgs) -> Result<()> {
    let ImportArgs {
        model,
        out,
        weights,
        input_mean,
        input_std,
        dataset,
        name,
    } = args;

    let normalization = match (input_mean, input_std) {
        (Some(mean), Some(std)) => Some(Normalization {
            mean,
            std,
            pixels: Some("raw input (pixels / 255 for images), CHW".into()),
        }),
        _ => None,
    };
    let imported = delphi_onnx::import(
        &model,
        &delphi_onnx::ImportOptions {
            name,
            normalization,
            dataset,
        },
    )
    .with_context(|| format!("importing {}", model.display()))?;
    let net = imported.network;
    match &weights {
        Some(w) => net.save_with_sidecar(&out, w),
        None => net.save(&out, WeightStorage::Inline),
    }
    .with_context(|| format!("writing {}", out.display()))?;
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    let shapes = net.validate()?;
    let (relus, quads) = FixedProgram::lower(&net)?.activation_counts();
    eprintln!(
                "wrote {}: {} layers, input {}, {} outputs, placement {} ({relus} ReLUs, {quads} quadratics)",
                out.display(),
                net.layers.len(),
                net.input,
                shapes.last().map_or(0, |s| s.len()),
                Placement::of(&net)
            );

    Ok(())
}

fn run_bench_relu(args: BenchReluArgs) -> Result<()> {
    let BenchReluArgs {
        count,
        out,
        seed,
        bits,
        shift,
    } = args;

    ensure!(count > 0, "--count must be at least 1");
    let specs = bits
        .iter()
        .map(|b| parse_relu_bits(b, shift))
        .collect::<Result<Vec<_>>>()?;
    ensure!(!specs.is_empty(), "--bits names no circuit");
    let r =
        delphi_crypto::bench::relu_bench(count, &specs, seed, &|m| eprintln!("[relu bench] {m}"))
            .context("ReLU benchmark failed")?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&r)?;
    std::fs::write(&out, format!("{json}\n"))
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{json}");
    eprintln!("[relu bench] wrote {}", out.display());
    eprintln!(
        "[relu bench] AES bound {:.0} M blocks/s on one core ({})",
        r.aes_blocks_per_s / 1e6,
        r.cpu_model
    );
    for row in &r.rows {
        eprintln!(
            "[relu bench] {:>6}: {:>3} AND, online {:>5.0} B, offline {:>5.0} B per ReLU; garble {:.0} M AND/s ({:.0} % of bound), eval {:.0} M AND/s ({:.0} %)",
            row.bits,
            row.and_gates_per_relu,
            row.online_bytes_per_relu,
            row.offline_bytes_per_relu,
            row.garble_and_gates_per_s / 1e6,
            100.0 * row.garble_fraction_of_aes_bound,
            row.eval_and_gates_per_s / 1e6,
            100.0 * row.eval_fraction_of_aes_bound
        );
    }
    for row in &r.rows {
        ensure!(
            row.correct == r.relus && row.within_bound == row.inside_window,
            "{}: {} of {} secure ReLUs differ from the circuit, {} inside the window exceed the stated bound",
            row.bits,
            r.relus - row.correct,
            r.relus,
            row.inside_window - row.within_bound
        );
    }

    Ok(())
}

fn run_bench_serve(args: BenchServeArgs) -> Result<()> {
    let BenchServeArgs {
        plan,
        clients,
        sessions,
        workers,
        out,
    } = args;

    ensure!(
        clients > 0 && sessions > 0,
        "--clients and --sessions must be at least 1"
    );
    let net = match &plan {
        Some(p) => load_plan(p)?,
        None => {
            let mut net = build("small-cnn", 10, 1)?;
            let calib = random_inputs_f32(net.input.len(), 2, 2);
            calibrate_batch_norm(&mut net, &calib)?;
            net
        }
    };
    let summary = serve_bench(net, clients, sessions, workers)?;
    let mut summary = summary;
    summary["plan"] = plan
        .as_ref()
        .map_or("small-cnn (random weights)".to_string(), |p| {
            p.display().to_string()
        })
        .into();
    summary["rerun"] = format!(
                "cargo run --release --bin delphi -- bench serve{} --clients {clients} --sessions {sessions} --workers {workers} --out {}",
                plan.as_ref().map_or(String::new(), |p| format!(" --plan {}", p.display())),
                out.display()
            )
            .into();
    write_json(&out, &summary)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);

    Ok(())
}

fn run_bench_network(args: BenchNetworkArgs) -> Result<()> {
    let BenchNetworkArgs {
        arch,
        classes,
        quad_layers,
        inputs,
        plan,
        out,
    } = args;

    if let Some(plan) = plan {
        return bench_network_plan(&plan, inputs, &out);
    }
    let mut net = build(&arch, classes, 1)?;
    // Random weights: a contractive quadratic and batch-norm statistics
    // calibrated for this placement keep values in range, as training would.
    quad_last_with(&mut net, quad_layers, BENCH_QUAD)?;
    let calib = random_inputs_f32(net.input.len(), 2, 2);
    calibrate_batch_norm(&mut net, &calib)?;
    let prog = FixedProgram::lower(&net)?;
    let report = run_local(&prog, &random_inputs(&prog, inputs, 1)?, &|m| {
        eprintln!("[network bench] {m}")
    })?;
    let mut summary = network_figures(&report);
    summary.extend([
        ("arch".to_string(), serde_json::json!(arch)),
        ("classes".into(), classes.into()),
        ("quad_layers".into(), quad_layers.into()),
        ("placement".into(), Placement::of(&net).to_string().into()),
        ("correct".into(), report.inferences.iter().all(|i| i.correct).into()),
        ("rerun".into(), format!("cargo run --release --bin delphi -- bench network --arch {arch} --classes {classes} --quad-layers {quad_layers} --out {}", out.display()).into()),
    ]);
    let summary = serde_json::Value::Object(summary);
    write_json(&out, &summary)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);

    Ok(())
}

/// The figures every network benchmark records: sizes, mean times and
/// bytes, setup, memory, the machine, and each inference.
fn network_figures(
    report: &delphi_engine::run::RunReport,
) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "relus": report.relus,
        "quads": report.quads,
        "offline_s": mean(report, |i| i.offline_s),
        "online_s": mean(report, |i| i.online_s),
        "offline_bytes": mean(report, |i| i.offline_bytes as f64),
        "online_bytes": mean(report, |i| i.online_bytes as f64),
        "setup_s": report.setup_s,
        "setup_bytes": report.setup_bytes,
        "peak_rss_bytes_both_parties": report.peak_rss_bytes,
        "cores": delphi_crypto::bench::cores(),
        "cpu_model": delphi_crypto::bench::cpu_model(),
        "inferences": report.inferences,
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// `n` inputs sampled in the network's declared input range (after the two
/// the range check samples first, so they are not the same), as floats and
/// encoded for `prog`.
type Sampled = (Vec<Vec<f32>>, Vec<Vec<delphi_crypto::field::F>>);
fn sampled_inputs(net: &Network, prog: &FixedProgram, n: usize, seed: u64) -> Result<Sampled> {
    let raw: Vec<Vec<f32>> =
        delphi_net::range::sample_inputs(net.input.len(), net.input_range(), n + 2, seed)
            .split_off(2);
    let encoded = raw
        .iter()
        .map(|x| Ok(prog.encode_input(x)?))
        .collect::<Result<Vec<_>>>()?;
    Ok((raw, encoded))
}

/// `delphi bench network --plan`: a given network, checked node by node.
fn bench_network_plan(plan: &std::path::Path, inputs: usize, out: &std::path::Path) -> Result<()> {
    ensure!(inputs > 0, "--inputs must be at least 1");
    let net = load_plan(plan)?;
    let (prog, ranges) = checked_program(&net, false)?;
    eprintln!("[network bench] {ranges}");
    let (_, encoded) = sampled_inputs(&net, &prog, inputs, 1)?;
    let report = delphi_engine::run::run_local_with(
        &prog,
        &encoded,
        &|m| eprintln!("[network bench] {m}"),
        true,
    )?;
    let windows: Vec<String> = net
        .layers
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.relu_bits.map(|b| format!("{i}:{b}")))
        .collect();
    let checks_ok = report
        .inferences
        .iter()
        .all(|i| i.node_check.as_ref().is_some_and(|c| c.ok()));
    let mut summary = network_figures(&report);
    summary.extend([
        (
            "plan".to_string(),
            serde_json::json!(plan.file_name().map(|f| f.to_string_lossy().into_owned())),
        ),
        ("name".into(), net.name.clone().into()),
        ("placement".into(), Placement::of(&net).to_string().into()),
        ("relu_windows".into(), windows.join(" ").into()),
        (
            "exact".into(),
            report.inferences.iter().all(|i| i.correct).into(),
        ),
        ("node_checks_ok".into(), checks_ok.into()),
        (
            "rerun".into(),
            format!(
                "delphi bench network --plan {} --inputs {inputs} --out {}",
                plan.display(),
                out.display()
            )
            .into(),
        ),
    ]);
    let summary = serde_json::Value::Object(summary);
    write_json(out, &summary)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    ensure!(
        checks_ok,
        "the run differs from the reference beyond what the protocol allows (see node_check in {})",
        out.display()
    );
    Ok(())
}

fn run_verify(args: VerifyArgs) -> Result<()> {
    let VerifyArgs {
        plan,
        inputs,
        allow_overflow,
        seed,
        json,
        compare_cost,
        cost_model,
    } = args;

    ensure!(inputs > 0, "--inputs must be at least 1");
    let net = load_plan(&plan)?;
    let (prog, ranges) = checked_program(&net, allow_overflow)?;
    if !json || ranges.starts_with("warning") {
        eprintln!("{ranges}");
    }
    let model = if compare_cost {
        Some(load_cost_model(&cost_model)?)
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
    let compared = model
        .as_ref()
        .map(|m| compare(&report, &m.predict(&prog, None)));
    if json {
        let mut v = verify_json(&report);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("float_max_rel_error".into(), worst_gap.into());
            obj.insert("float_same_class".into(), float_classes.into());
            if let Some(c) = compared {
                obj.insert("predicted".into(), c["predicted"].clone());
                obj.insert("measured".into(), c["measured"].clone());
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_table(&report);
        let truncations = prog
            .nodes
            .iter()
            .filter(|n| matches!(n.op, delphi_net::FixedOp::Trunc { .. }))
            .count();
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
        let check = inf
            .node_check
            .as_ref()
            .context("the run was not checked node by node")?;
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

fn run_cost_calibrate(args: CostCalibrateArgs) -> Result<()> {
    let CostCalibrateArgs { out, quick } = args;

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

fn run_cost_predict(args: CostPredictArgs) -> Result<()> {
    let CostPredictArgs {
        plan,
        cost_model,
        bandwidth,
        rtt,
        json,
    } = args;

    let net = load_plan(&plan)?;
    let prog = FixedProgram::lower(&net)?;
    let model = load_cost_model(&cost_model)?;
    let link = match (bandwidth, rtt) {
        (Some(b), Some(r)) => Some(delphi_cost::Link::parse(&b, &r)?),
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

fn run_serve(args: ServeArgs) -> Result<()> {
    let ServeArgs {
        plan,
        listen,
        preprocess,
        timeout,
        handshake_timeout,
        phase_timeout,
        workers,
        max_connections,
        max_bundles,
        sessions,
        bundle_dir,
        bundle_key,
        max_stored_bundles,
        max_store_mb,
        allow_overflow,
    } = args;

    let net = load_plan(&plan)?;
    let (prog, ranges) = checked_program(&net, allow_overflow)?;
    let store = open_store(bundle_dir, bundle_key, Side::Server)?;
    let listener =
        std::net::TcpListener::bind(&listen).with_context(|| format!("listening on {listen}"))?;
    let (relus, quads) = prog.activation_counts();
    eprintln!(
                "serving {} on {} ({relus} ReLUs, {quads} quadratics per inference; {preprocess} bundle(s) ahead; {workers} session(s) at once)",
                net.name,
                listener.local_addr()?
            );
    eprintln!("{ranges}");
    if let Some(st) = &store {
        eprintln!(
            "bundle store {}: {} bundle(s) ready",
            st.dir().display(),
            st.len()?
        );
    }
    let limits = ServeLimits {
        workers: workers as usize,
        max_connections: max_connections as usize,
        io_timeout: Duration::from_secs(timeout),
        handshake_timeout: Duration::from_secs(handshake_timeout),
        phase_timeout: Duration::from_secs(phase_timeout),
        max_bundles: max_bundles as usize,
        store_bundles: max_stored_bundles,
        store_bytes: max_store_mb.saturating_mul(1 << 20),
    };
    let log = |e: SessionEvent| {
        let r = &e.report;
        let what = format!(
                    "{} prediction(s), {} offline phase(s), {:.1} MB, {:.1} s; server memory now {:.0} MB (all sessions)",
                    r.predictions,
                    r.offline_phases,
                    r.bytes as f64 / 1e6,
                    r.seconds,
                    current_rss_bytes() as f64 / 1e6
                );
        match e.error {
            None => eprintln!("session with {}: {what}", e.peer),
            Some(err) => {
                eprintln!(
                    "session with {} failed after {what}: {}",
                    e.peer,
                    chain(&err)
                )
            }
        }
    };
    Server {
        net: Arc::new(net),
        prog: Arc::new(prog),
        preprocess,
        limits,
        store,
    }
    .run(listener, sessions, Arc::new(log))?;

    Ok(())
}

fn run_infer(args: InferArgs) -> Result<()> {
    let InferArgs {
        connect,
        input,
        normalized,
        timeout,
        json,
        bundle_dir,
        bundle_key,
        preprocess_only,
    } = args;

    let options = ClientOptions {
        normalize: !normalized,
        timeout: Duration::from_secs(timeout),
        store: open_store(bundle_dir, bundle_key, Side::Client)?,
    };
    if let Some(count) = preprocess_only {
        let held = delphi_engine::session::preprocess(connect.as_str(), count, &options, &|m| {
            eprintln!("[infer] {m}")
        })
        .with_context(|| format!("preprocessing with {connect}"))?;
        eprintln!(
            "{held} bundle(s) stored; client peak memory {:.0} MB",
            peak_rss_bytes() as f64 / 1e6
        );
        return Ok(());
    }
    let input = input.context("--input is required")?;
    let text =
        std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", input.display()))?;
    let inputs = parse_inputs(&v).with_context(|| {
        format!(
            "{}: expected an array of numbers or an array of such arrays",
            input.display()
        )
    })?;
    let preds = delphi_engine::session::infer(connect.as_str(), &inputs, &options, &|m| {
        if !json {
            eprintln!("[infer] {m}")
        }
    })
    .with_context(|| format!("private inference with {connect}"))?;
    let peak = peak_rss_bytes();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "predictions": preds,
                "client_peak_rss_bytes": peak,
            }))?
        );
    } else {
        for (k, p) in preds.iter().enumerate() {
            let logits: Vec<String> = p.logits.iter().map(|v| format!("{v:.4}")).collect();
            println!(
                "input {}: class {}  (online {:.3} s, {:.1} MB)  logits [{}]",
                k + 1,
                p.class,
                p.online_s,
                p.online_bytes as f64 / 1e6,
                logits.join(", ")
            );
        }
        eprintln!("client peak memory {:.0} MB", peak as f64 / 1e6);
    }

    Ok(())
}

fn run_export(args: ExportArgs) -> Result<()> {
    let ExportArgs {
        arch,
        classes,
        quad_layers,
        placement,
        seed,
        sidecar,
        out,
    } = args;

    if !ARCHITECTURES.contains(&arch.as_str()) {
        bail!(
            "unknown architecture {arch:?} (known: {})",
            ARCHITECTURES.join(", ")
        );
    }
    let mut net = build(&arch, classes, seed)?;
    let layers = net.activation_layers().len();
    if let Some(q) = quad_layers {
        Placement::last_quad(layers, q)?.apply(&mut net)?;
    }
    if let Some(p) = placement {
        p.parse::<Placement>()?.apply(&mut net)?;
    }
    let storage = if sidecar {
        WeightStorage::Sidecar
    } else {
        WeightStorage::Inline
    };
    net.save(&out, storage)
        .with_context(|| format!("writing {}", out.display()))?;
    let (relus, quads) = FixedProgram::lower(&net)?.activation_counts();
    eprintln!(
        "wrote {} ({arch}, {classes} classes, placement {}, {relus} ReLUs, {quads} quadratics)",
        out.display(),
        Placement::of(&net)
    );

    Ok(())
}
