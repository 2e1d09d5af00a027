//! `delphi`: the protocol engine's command line.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use delphi_net::builtin::{apply_placement, build, placement_string, quad_last, ARCHITECTURES};
use delphi_net::{FixedProgram, WeightStorage};

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
    /// Writes a built-in architecture with random weights as a network description.
    Export {
        /// Architecture: small-cnn, minionn or resnet32.
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
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Garbled-circuit ReLU layer: throughput, bytes and end-to-end time over loopback TCP.
    Relu {
        /// Number of ReLUs.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// Where to write the JSON figures.
        #[arg(long, default_value = "results/bench/relu.json")]
        out: PathBuf,
        /// Seed for the benchmark's inputs (the protocol's own randomness always comes from the OS).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(Bench::Relu { count, out, seed }) => {
            ensure!(count > 0, "--count must be at least 1");
            let r =
                delphi_crypto::bench::relu_bench(count, seed, &|m| eprintln!("[relu bench] {m}"))
                    .context("ReLU benchmark failed")?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let json = serde_json::to_string_pretty(&r)?;
            std::fs::write(&out, format!("{json}\n"))
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{json}");
            eprintln!("[relu bench] wrote {}", out.display());
            ensure!(
                r.correct == r.relus,
                "{} of {} secure ReLUs were wrong",
                r.relus - r.correct,
                r.relus
            );
        }
        Command::Export {
            arch,
            classes,
            quad_layers,
            placement,
            seed,
            sidecar,
            out,
        } => {
            if !ARCHITECTURES.contains(&arch.as_str()) {
                bail!(
                    "unknown architecture {arch:?} (known: {})",
                    ARCHITECTURES.join(", ")
                );
            }
            let mut net = build(&arch, classes, seed)?;
            if let Some(q) = quad_layers {
                quad_last(&mut net, q)?;
            }
            if let Some(p) = placement {
                apply_placement(&mut net, &p)?;
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
                placement_string(&net)
            );
        }
    }
    Ok(())
}
