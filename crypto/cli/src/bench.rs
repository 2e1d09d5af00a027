//! `delphi bench`: benchmarks that write machine-readable figures (JSON)
//! under `<results>/bench/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::Subcommand;
use delphi_crypto::channel::tls::{ServerConfig, TlsClient};
use delphi_engine::run::{peak_rss_bytes, run_local};
use delphi_engine::session::{ClientOptions, ServeLimits, Server, SessionEvent};
use delphi_net::builtin::{build, quad_last_with, BENCH_QUAD};
use delphi_net::eval::{calibrate_batch_norm, random_inputs as random_inputs_f32};
use delphi_net::{FixedProgram, Network, Placement};

use crate::common::{
    chain, checked_program, load_plan, mean, random_inputs, sampled_inputs, write_json,
};

#[derive(Subcommand)]
pub(crate) enum Bench {
    /// A whole network under the protocol (random weights): time, bytes, memory.
    Network(BenchNetworkArgs),
    /// A server under load: N concurrent clients, each running sessions of
    /// one private inference (keys, offline, online) against one `serve`
    /// on loopback; throughput and p50/p99 latency.
    Serve(BenchServeArgs),
    /// Garbled-circuit ReLU layer: throughput, bytes and end-to-end time over loopback TCP.
    Relu(BenchReluArgs),
    /// Replicas on one PostgreSQL ledger: each client prepares a bundle on
    /// one replica and uses it on the next (1 and 2 replicas, one run), and
    /// the ledger's cost per reservation, store and claim.
    Replicas(BenchReplicasArgs),
}

#[derive(clap::Args)]
pub(crate) struct BenchReplicasArgs {
    /// The ledger (PostgreSQL connection settings or URL); the bench makes
    /// its table in it and leaves its rows there.
    #[arg(long)]
    ledger: String,
    /// Replica counts measured, one after another in this run.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    replicas: Vec<usize>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Predictions each client makes (each: an offline phase on one
    /// replica, the online phase on the next).
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Where to write the JSON figures (default <results>/bench/replicas.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct BenchNetworkArgs {
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
pub(crate) struct BenchServeArgs {
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
    /// TLS between the clients and the server: off, on (a private CA made
    /// for the run), or both (plaintext, then TLS, in one run: what TLS
    /// adds).
    #[arg(long, default_value = "off")]
    tls: TlsMode,
    /// Where to write the JSON figures (default <results>/bench/serve.json;
    /// <results> is $DELPHI_RESULTS, else results/ of the checkout the
    /// binary was built in, else ./results).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Which transports `delphi bench serve` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TlsMode {
    /// Plaintext TCP.
    Off,
    /// TLS 1.3.
    On,
    /// Plaintext, then TLS.
    Both,
}

/// A server and client TLS set-up on a private CA made for this run.
fn bench_tls() -> Result<(Arc<ServerConfig>, TlsClient)> {
    use delphi_crypto::channel::tls::{client_config, make_pki, server_config, server_name};
    let pki = make_pki(&["127.0.0.1".to_string()], 1)?;
    let dir = std::env::temp_dir().join(format!("delphi-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&ca, &pki.ca_cert)?;
    std::fs::write(&cert, &pki.server_cert)?;
    std::fs::write(&key, &pki.server_key)?;
    let out = (
        server_config(&cert, &key)?,
        TlsClient { config: client_config(&ca)?, name: server_name("127.0.0.1")? },
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(out)
}

#[derive(clap::Args)]
pub(crate) struct BenchReluArgs {
    /// Number of ReLUs.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Where to write the JSON figures (default <results>/bench/relu.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed for the benchmark's inputs (the protocol's own randomness always comes from the OS).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Circuit widths, one row each: `full` (the exact 41-bit circuit) or a
    /// reduced window `lo..hi` (the circuit sees bits lo..hi of the input;
    /// see `delphi_crypto::relu`).
    #[arg(long, value_delimiter = ',', default_value = "full,12..27,16..27,16..25")]
    bits: Vec<String>,
    /// Truncation after each ReLU (12: the ReLU after a conv layer).
    #[arg(long, default_value_t = 12)]
    shift: u32,
}

/// Parses `full` or `lo..hi` into the ReLU circuit it names.
pub(crate) fn parse_relu_bits(s: &str, shift: u32) -> Result<delphi_crypto::relu::ReluSpec> {
    use delphi_crypto::relu::{ReluBits, ReluSpec};
    if s.trim() == "full" {
        return Ok(ReluSpec::full(shift));
    }
    let spec = ReluSpec::reduced(shift, s.parse::<ReluBits>()?);
    spec.check()?;
    Ok(spec)
}

/// The p-th percentile (0–100) of `v`, nearest rank.
pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Runs `clients` concurrent clients of `sessions` one-inference sessions
/// each against an in-process server; returns the figures.
pub(crate) fn serve_bench(
    net: Network,
    clients: usize,
    sessions: usize,
    workers: usize,
    tls: Option<(Arc<ServerConfig>, TlsClient)>,
) -> Result<serde_json::Value> {
    let (server_tls, client_tls) = match tls {
        Some((s, c)) => (Some(s), Some(c)),
        None => (None, None),
    };
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
        tls: server_tls.clone(),
    };
    let total = clients * sessions;
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = failures.clone();
    let on_event = Arc::new(move |e: SessionEvent| {
        if let Some(err) = e.error {
            eprintln!("[serve bench] session with {} failed: {}", e.peer, chain(&err));
            f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let server = std::thread::spawn(move || server.run(listener, Some(total), on_event));
    let t = std::time::Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, tls) = (addr.clone(), client_tls.clone());
            std::thread::spawn(move || -> Result<Vec<(f64, f64, u64)>> {
                let options = ClientOptions {
                    timeout: Duration::from_secs(600),
                    store: None,
                    normalize: false,
                    tls,
                    max_memory: delphi_engine::session::default_max_memory(),
                    keep: delphi_engine::session::Keep::default(),
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
                        Ok((t.elapsed().as_secs_f64(), p[0].online_s, p[0].online_wire_bytes))
                    })
                    .collect()
            })
        })
        .collect();
    let mut session = Vec::with_capacity(total);
    let mut online = Vec::with_capacity(total);
    let mut wire = Vec::with_capacity(total);
    for h in handles {
        let got = h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        for (s, o, w) in got {
            session.push(s);
            online.push(o);
            wire.push(w as f64);
        }
    }
    let wall = t.elapsed().as_secs_f64();
    server.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
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
        "online_wire_bytes": {
            "p50": percentile(&mut wire.clone(), 50.0),
            "max": wire.iter().cloned().fold(0.0, f64::max),
        },
        "tls": server_tls.is_some(),
        "note": "each session: key generation (and a TLS 1.3 handshake with --tls), one offline and one online phase; server and clients share the machine; online wire bytes are what crossed the socket (TLS records included)",
        "cores": delphi_crypto::bench::cores(),
        "cpu_model": delphi_crypto::bench::cpu_model(),
        "peak_rss_bytes_all": peak_rss_bytes(),
    }))
}

pub(crate) fn run_bench_relu(args: BenchReluArgs) -> Result<()> {
    let BenchReluArgs { count, out, seed, bits, shift } = args;
    let out = out.unwrap_or_else(|| delphi_net::paths::results_path("bench/relu.json"));

    ensure!(count > 0, "--count must be at least 1");
    let specs = bits.iter().map(|b| parse_relu_bits(b, shift)).collect::<Result<Vec<_>>>()?;
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
        "[relu bench] AES-NI bound {:.0} M blocks/s on one core ({}): {} AES calls per hash, so \
         {:.0} M AND/s garbling (4 hashes per AND), {:.0} M AND/s evaluating (2); default hash \
         path {}",
        r.aes_blocks_per_s / 1e6,
        r.cpu_model,
        r.aes_calls_per_hash,
        r.garble_and_bound_per_s / 1e6,
        r.eval_and_bound_per_s / 1e6,
        r.default_hash_path
    );
    for row in &r.rows {
        eprintln!(
            "[relu bench] {:>6} {:>8}: {:>3} AND, online {:>5.0} B, offline {:>5.0} B per ReLU, online {:.3} s; garble {:.0} M AND/s ({:.0} % of bound), eval {:.0} M AND/s ({:.0} %), best of the passes, each against the AES-NI rate just before it ({:.0} M blocks/s, median)",
            row.bits,
            row.hash_path,
            row.and_gates_per_relu,
            row.online_bytes_per_relu,
            row.offline_bytes_per_relu,
            row.online_s,
            row.garble_and_gates_per_s / 1e6,
            100.0 * row.garble_fraction_of_aes_bound,
            row.eval_and_gates_per_s / 1e6,
            100.0 * row.eval_fraction_of_aes_bound,
            row.aes_blocks_per_s / 1e6
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

pub(crate) fn run_bench_serve(args: BenchServeArgs) -> Result<()> {
    let BenchServeArgs { plan, clients, sessions, workers, tls, out } = args;
    let out = out.unwrap_or_else(|| delphi_net::paths::results_path("bench/serve.json"));

    ensure!(clients > 0 && sessions > 0, "--clients and --sessions must be at least 1");
    let net = match &plan {
        Some(p) => load_plan(p)?,
        None => {
            let mut net = build("small-cnn", 10, 1)?;
            let calib = random_inputs_f32(net.input.len(), 2, 2);
            calibrate_batch_norm(&mut net, &calib)?;
            net
        }
    };
    let mut summary = match tls {
        TlsMode::Off => serve_bench(net, clients, sessions, workers, None)?,
        TlsMode::On => serve_bench(net, clients, sessions, workers, Some(bench_tls()?))?,
        TlsMode::Both => {
            let plain = serve_bench(net.clone(), clients, sessions, workers, None)?;
            let tls = serve_bench(net, clients, sessions, workers, Some(bench_tls()?))?;
            let ratio = |a: &serde_json::Value, b: &serde_json::Value| {
                a.as_f64().zip(b.as_f64()).map(|(a, b)| a / b)
            };
            serde_json::json!({
                "tls_over_plaintext": {
                    "online_p50": ratio(&tls["online_latency_s"]["p50"], &plain["online_latency_s"]["p50"]),
                    "online_wire_bytes_p50": ratio(&tls["online_wire_bytes"]["p50"], &plain["online_wire_bytes"]["p50"]),
                    "session_p50": ratio(&tls["session_latency_s"]["p50"], &plain["session_latency_s"]["p50"]),
                    "predictions_per_s": ratio(&tls["predictions_per_s"], &plain["predictions_per_s"]),
                },
                "plaintext": plain,
                "tls": tls,
                "cores": delphi_crypto::bench::cores(),
                "cpu_model": delphi_crypto::bench::cpu_model(),
            })
        }
    };
    summary["plan"] = plan
        .as_ref()
        .map_or("small-cnn (random weights)".to_string(), |p| p.display().to_string())
        .into();
    summary["rerun"] = format!(
                "cargo run --release --bin delphi -- bench serve{} --clients {clients} --sessions {sessions} --workers {workers} --tls {} --out {}",
                plan.as_ref().map_or(String::new(), |p| format!(" --plan {}", p.display())),
                format!("{tls:?}").to_lowercase(),
                out.display()
            )
            .into();
    write_json(&out, &summary)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);

    Ok(())
}

pub(crate) fn run_bench_network(args: BenchNetworkArgs) -> Result<()> {
    let BenchNetworkArgs { arch, classes, quad_layers, inputs, plan, out } = args;

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
    let report =
        run_local(&prog, &random_inputs(&prog, inputs, 1)?, &|m| eprintln!("[network bench] {m}"))?;
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
pub(crate) fn network_figures(
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

/// `delphi bench network --plan`: a given network, checked node by node.
pub(crate) fn bench_network_plan(
    plan: &std::path::Path,
    inputs: usize,
    out: &std::path::Path,
) -> Result<()> {
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
    let checks_ok = report.inferences.iter().all(|i| i.node_check.as_ref().is_some_and(|c| c.ok()));
    let mut summary = network_figures(&report);
    summary.extend([
        (
            "plan".to_string(),
            serde_json::json!(plan.file_name().map(|f| f.to_string_lossy().into_owned())),
        ),
        ("name".into(), net.name.clone().into()),
        ("placement".into(), Placement::of(&net).to_string().into()),
        ("relu_windows".into(), windows.join(" ").into()),
        ("exact".into(), report.inferences.iter().all(|i| i.correct).into()),
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

/// One measurement of `replicas` servers sharing a store directory and the
/// ledger: `clients` clients, each `sessions` times preparing a bundle on
/// replica k and using it on replica k + 1.
fn replicas_bench(
    net: &Network,
    ledger: &str,
    replicas: usize,
    clients: usize,
    sessions: usize,
) -> Result<serde_json::Value> {
    use delphi_engine::ledger::Ledger;
    use delphi_engine::store::{BundleStore, Side};
    let dir = std::env::temp_dir()
        .join(format!("delphi-bench-replicas-{}-{replicas}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let prog = Arc::new(checked_program(net, false)?.0);
    let total = clients * sessions;
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    for r in 0..replicas {
        let store =
            BundleStore::open_with_key(dir.join("bundles"), Side::Server, &dir.join("key"))?
                .with_ledger(Arc::new(Ledger::connect(ledger, &format!("bench-{r}"))?));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        addrs.push(listener.local_addr()?.to_string());
        let server = Server {
            net: Arc::new(net.clone()),
            prog: prog.clone(),
            preprocess: 1,
            limits: ServeLimits {
                workers: clients.max(1),
                max_connections: 4 * clients + 4,
                ..ServeLimits::default()
            },
            store: Some(store),
            tls: None,
        };
        servers.push(std::thread::spawn(move || {
            server.run(listener, None, Arc::new(|_: SessionEvent| {}))
        }));
    }
    let (input_len, range) = (net.input.len(), net.input_range());
    let t = std::time::Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (addrs, dir) = (addrs.clone(), dir.clone());
            std::thread::spawn(move || -> Result<Vec<f64>> {
                let options = ClientOptions {
                    timeout: Duration::from_secs(600),
                    store: Some(BundleStore::open(dir.join(format!("client-{c}")), Side::Client)?),
                    normalize: false,
                    tls: None,
                    max_memory: delphi_engine::session::default_max_memory(),
                    keep: delphi_engine::session::Keep::default(),
                };
                let inputs =
                    delphi_net::range::sample_inputs(input_len, range, sessions, c as u64 + 11);
                (0..sessions)
                    .map(|k| {
                        let t = std::time::Instant::now();
                        let (a, b) =
                            (&addrs[(c + k) % addrs.len()], &addrs[(c + k + 1) % addrs.len()]);
                        delphi_engine::session::preprocess(a.as_str(), 1, &options, &|_| {})?;
                        let p = delphi_engine::session::infer(
                            b.as_str(),
                            &inputs[k..k + 1],
                            &options,
                            &|_| {},
                        )?;
                        ensure!(
                            p[0].offline_s.is_none(),
                            "the bundle prepared on {a} was not used on {b}"
                        );
                        Ok(t.elapsed().as_secs_f64())
                    })
                    .collect()
            })
        })
        .collect();
    let mut latency = Vec::with_capacity(total);
    for h in handles {
        latency.extend(h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
    }
    let wall = t.elapsed().as_secs_f64();
    // The servers serve forever: they end with the process.
    drop(servers);
    std::fs::remove_dir_all(&dir).ok();
    Ok(serde_json::json!({
        "replicas": replicas,
        "clients": clients,
        "predictions": total,
        "wall_s": wall,
        "predictions_per_s": total as f64 / wall,
        "latency_s": {"p50": percentile(&mut latency.clone(), 50.0), "p99": percentile(&mut latency, 99.0)},
    }))
}

/// Milliseconds per ledger operation (reserve, store, claim), over `n` bundles.
fn ledger_cost(ledger: &str, n: usize) -> Result<serde_json::Value> {
    use delphi_engine::ledger::{Claim, Ledger};
    let l = Ledger::connect(ledger, "bench-cost")?;
    let (ttl, stale) = (Duration::from_secs(3600), Duration::from_secs(3600));
    let mut ms = [0.0f64; 3];
    for k in 0..n {
        let mut res = [0u8; 16];
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut res);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let t = std::time::Instant::now();
        l.reserve(
            &res,
            &format!("bench-{}", k % 16),
            1,
            (usize::MAX, u64::MAX, usize::MAX),
            ttl,
            stale,
        )?
        .map_err(|why| anyhow::anyhow!(why))?;
        ms[0] += t.elapsed().as_secs_f64() * 1e3;
        let t = std::time::Instant::now();
        l.ready(&res, &id, 1, ttl)?;
        ms[1] += t.elapsed().as_secs_f64() * 1e3;
        let t = std::time::Instant::now();
        ensure!(l.claim(&id)? == Claim::Won, "a fresh bundle was not claimed");
        ms[2] += t.elapsed().as_secs_f64() * 1e3;
    }
    Ok(serde_json::json!({
        "operations": n,
        "reserve_ms": ms[0] / n as f64,
        "store_ms": ms[1] / n as f64,
        "claim_ms": ms[2] / n as f64,
    }))
}

pub(crate) fn run_bench_replicas(args: BenchReplicasArgs) -> Result<()> {
    let BenchReplicasArgs { ledger, replicas, clients, sessions, out } = args;
    let out = out.unwrap_or_else(|| delphi_net::paths::results_path("bench/replicas.json"));
    ensure!(clients > 0 && sessions > 0, "--clients and --sessions must be at least 1");
    ensure!(replicas.iter().all(|&r| r > 0), "--replicas counts must be at least 1");
    let mut net = build("small-cnn", 10, 1)?;
    let calib = random_inputs_f32(net.input.len(), 2, 2);
    calibrate_batch_norm(&mut net, &calib)?;
    let runs: Vec<serde_json::Value> = replicas
        .iter()
        .map(|&r| replicas_bench(&net, &ledger, r, clients, sessions))
        .collect::<Result<_>>()?;
    let summary = serde_json::json!({
        "plan": "small-cnn (random weights)",
        "runs": runs,
        "ledger_cost": ledger_cost(&ledger, 200)?,
        "note": "each prediction: an offline phase stored on one replica (reserved in the ledger), then the online phase on the next replica (claimed in the ledger); every replica, client and the PostgreSQL server share this machine",
        "cores": delphi_crypto::bench::cores(),
        "cpu_model": delphi_crypto::bench::cpu_model(),
        "rerun": format!(
            "cargo run --release --bin delphi -- bench replicas --ledger '<settings>' --replicas {} --clients {clients} --sessions {sessions} --out {}",
            replicas.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(","),
            out.display()
        ),
    });
    write_json(&out, &summary)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
