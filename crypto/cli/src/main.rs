//! `delphi`: the protocol engine's command line. One module per command;
//! what several share is in [`common`] and [`table`].

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod common;
mod cost;
mod import;
mod relay;
mod serve;
mod table;
mod verify;

/// Large buffers (preprocessed material above all) on huge pages.
#[global_allocator]
static ALLOC: delphi_crypto::alloc::HugePages = delphi_crypto::alloc::HugePages;

#[derive(Parser)]
#[command(
    name = "delphi",
    version,
    about = "Private neural-network prediction: the two-party protocol engine",
    long_about = "Private neural-network prediction: the two-party protocol engine.\n\n\
                  Default files: the cost model is <results>/cost-model.json and benchmarks \
                  write under <results>/bench/; <results> is $DELPHI_RESULTS, else results/ of \
                  the checkout the binary was built in, else ./results.",
    after_help = "Examples:\n  \
                  delphi import model.onnx --out net.json\n  \
                  delphi verify --plan net.json --inputs 2 --compare-cost\n  \
                  delphi tls-cert --name localhost --out certs\n  \
                  delphi serve --plan net.json --listen 127.0.0.1:7878 --tls-cert certs/server.pem --tls-key certs/server-key.pem &\n  \
                  delphi infer --connect localhost:7878 --tls-ca certs/ca.pem --input image.json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks that write machine-readable figures under <results>/bench/.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Runs a plan between a server and a client (two threads, loopback TCP) and checks
    /// every secure result against the plaintext fixed-point reference.
    Verify(verify::VerifyArgs),
    /// The cost model: calibrate it on this machine, predict a plan's costs.
    #[command(subcommand)]
    Cost(cost::CostCmd),
    /// Serves private predictions of a plan to clients (`delphi infer`),
    /// several sessions at once, each bounded in time and in what it may hold.
    ///
    /// Each client learns the prediction and the architecture: layer kinds
    /// and shapes, which activations are ReLU or quadratic, the input
    /// normalisation and range, and the trained coefficients a and b of
    /// every quadratic layer (its share of a·x² + b·x needs them). Weights,
    /// batch-norm statistics and the quadratic constants c stay here. The
    /// protocol is semi-honest: a client that deviates from it can learn
    /// more than the prediction (see docs/security.md).
    Serve(serve::ServeArgs),
    /// Gets private predictions from a server: the input stays hidden from it.
    Infer(serve::InferArgs),
    /// Makes a private CA and a server certificate it signed, for `delphi
    /// serve --tls-cert/--tls-key` and `delphi infer --tls-ca` (a provider
    /// with its own CA uses that instead).
    TlsCert(serve::TlsCertArgs),
    /// Converts an ONNX model (as PyTorch or Keras/tf2onnx export it) into a
    /// network description; unsupported operators are refused by name.
    Import(import::ImportArgs),
    /// Writes a built-in architecture with random weights as a network description.
    Export(import::ExportArgs),
    /// Forwards TCP connections through a shaped link (a bandwidth each way
    /// and a round-trip time), to measure `delphi serve`/`infer` over a
    /// WAN-like link on one machine: `delphi infer --connect` the relay.
    Relay(relay::RelayArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if delphi_net::paths::check_args_only() {
        return Ok(());
    }
    match cli.command {
        Command::Import(a) => import::run_import(a),
        Command::Bench(bench::Bench::Relu(a)) => bench::run_bench_relu(a),
        Command::Bench(bench::Bench::Serve(a)) => bench::run_bench_serve(a),
        Command::Bench(bench::Bench::Network(a)) => bench::run_bench_network(a),
        Command::Bench(bench::Bench::Replicas(a)) => bench::run_bench_replicas(a),
        Command::Verify(a) => verify::run_verify(a),
        Command::Cost(cost::CostCmd::Calibrate(a)) => cost::run_cost_calibrate(a),
        Command::Cost(cost::CostCmd::Predict(a)) => cost::run_cost_predict(a),
        Command::Serve(a) => serve::run_serve(a),
        Command::Infer(a) => serve::run_infer(a),
        Command::TlsCert(a) => serve::run_tls_cert(a),
        Command::Export(a) => import::run_export(a),
        Command::Relay(a) => relay::run_relay(a),
    }
}
