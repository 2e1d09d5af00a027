//! `delphi`: the protocol engine's command line.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use clap::{Parser, Subcommand};

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
    }
    Ok(())
}
