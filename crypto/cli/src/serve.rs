//! `delphi serve` and `delphi infer`: the server of private predictions and
//! its client, as separate processes over TCP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use delphi_crypto::channel::tls::{ServerConfig, TlsClient};
use delphi_engine::run::{current_rss_bytes, peak_rss_bytes};
use delphi_engine::session::{ClientOptions, Keep, ServeLimits, Server, SessionEvent};
use delphi_engine::store::{default_key_path, BundleStore, Side, StoreLimits};
use delphi_engine::EngineError;

use crate::common::{chain, checked_program, load_plan};

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
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
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits")]
    timeout: u64,
    /// Seconds a client has to finish the handshake (hello, architecture,
    /// its public key).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits")]
    handshake_timeout: u64,
    /// Seconds one offline or online phase may take in all, however the
    /// client paces it.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits")]
    phase_timeout: u64,
    /// Sessions served at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024), help_heading = "Limits")]
    workers: u64,
    /// Connections served or waiting for a worker; more are told the
    /// server is busy and closed at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65536), help_heading = "Limits")]
    max_connections: u64,
    /// Serve a plan whose values can leave the range the protocol
    /// computes exactly in (refused by default), with a warning. Such a
    /// plan can give wrong answers, and a truncation outside its range
    /// leaks a threshold test on a hidden value to the client.
    #[arg(long)]
    allow_overflow: bool,
    /// Unused bundles one client may have the server hold in memory.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=64), help_heading = "Limits")]
    max_bundles: u64,
    /// Stop after this many sessions (default: serve forever).
    #[arg(long, help_heading = "Limits")]
    sessions: Option<usize>,
    /// Keep the server's offline bundles in this directory (private, one
    /// file per bundle, each used once) so that clients can preprocess in
    /// one connection and predict in a later one.
    #[arg(long, help_heading = "Bundle store")]
    bundle_dir: Option<PathBuf>,
    /// The key that authenticates the stored bundles (made if absent;
    /// kept outside the directory). Default: `<bundle-dir>.key` beside it.
    #[arg(long, requires = "bundle_dir", help_heading = "Bundle store")]
    bundle_key: Option<PathBuf>,
    /// Most bundles the store may hold.
    #[arg(long, default_value_t = 1000, requires = "bundle_dir", help_heading = "Bundle store")]
    max_stored_bundles: usize,
    /// Most disk the store may use, in MB.
    #[arg(long, default_value_t = 20_000, requires = "bundle_dir", help_heading = "Bundle store")]
    max_store_mb: u64,
    /// Most unused bundles one client (by IP address) may hold in the
    /// store, so no client can fill it for the others.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..), requires = "bundle_dir", help_heading = "Bundle store")]
    max_bundles_per_client: u64,
    /// Hours an unused bundle is kept before it is deleted (its client did
    /// not come back for it).
    #[arg(long, default_value_t = 24.0, requires = "bundle_dir", help_heading = "Bundle store")]
    bundle_ttl_hours: f64,
    /// Keep the bundle ledger (ids, owners, state, expiry, quotas) in
    /// PostgreSQL, shared by replicas of this service: a URL
    /// (`postgres://user@host/db`) or settings (`host=/run/postgresql
    /// user=delphi dbname=delphi`). The bundles' bytes stay in --bundle-dir,
    /// which every replica must read (shared storage, one --bundle-key).
    #[arg(long, requires = "bundle_dir", help_heading = "Bundle store")]
    ledger: Option<String>,
    /// This replica's name in the ledger [default: host name and port].
    #[arg(long, requires = "ledger", help_heading = "Bundle store")]
    replica: Option<String>,
    /// Seconds one session may last in all, whatever it does.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits")]
    session_lifetime: u64,
    #[command(flatten)]
    tls: ServerTls,
}

/// TLS for `delphi serve`: a certificate and key, or plaintext by name.
#[derive(clap::Args)]
pub(crate) struct ServerTls {
    /// The server's certificate chain (PEM, its own certificate first).
    /// Clients check it against their CA (`delphi infer --tls-ca`) and the
    /// name they connect to. `delphi tls-cert` makes a private CA and one.
    #[arg(long, requires = "tls_key", help_heading = "TLS")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, requires = "tls_cert", help_heading = "TLS")]
    tls_key: Option<PathBuf>,
    /// Serve without TLS: anyone on the path can pose as this server, and
    /// read what clients send. For loopback and tests only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"], help_heading = "TLS")]
    plaintext: bool,
}

impl ServerTls {
    /// The TLS configuration, `None` with `--plaintext`; neither is an error.
    pub(crate) fn config(&self, listen: &str) -> Result<Option<Arc<ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key, self.plaintext) {
            (Some(cert), Some(key), false) => Ok(Some(
                delphi_crypto::channel::tls::server_config(cert, key)
                    .context("setting up TLS (--tls-cert, --tls-key)")?,
            )),
            (None, None, true) => {
                warn_plaintext("serve", listen, "this server");
                Ok(None)
            }
            _ => bail!(
                "no TLS: give --tls-cert and --tls-key (`delphi tls-cert` makes a private CA \
                 and a certificate; see docs/operating.md), or --plaintext for loopback and tests"
            ),
        }
    }
}

/// TLS for `delphi infer`: the CA to trust, or plaintext by name.
#[derive(clap::Args)]
pub(crate) struct ClientTls {
    /// The CA certificate(s) (PEM) that signed the server's certificate;
    /// no other root is trusted.
    #[arg(long, help_heading = "TLS")]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of
    /// --connect].
    #[arg(long, requires = "tls_ca", help_heading = "TLS")]
    tls_name: Option<String>,
    /// Connect without TLS: anyone on the path can pose as the server. For
    /// loopback and tests only.
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_name"], help_heading = "TLS")]
    plaintext: bool,
}

impl ClientTls {
    /// What the client checks, `None` with `--plaintext`.
    pub(crate) fn client(&self, connect: &str) -> Result<Option<TlsClient>> {
        use delphi_crypto::channel::tls::{client_config, host_of, server_name};
        match (&self.tls_ca, self.plaintext) {
            (Some(ca), false) => {
                let name = self.tls_name.as_deref().unwrap_or_else(|| host_of(connect));
                Ok(Some(TlsClient {
                    config: client_config(ca).context("setting up TLS (--tls-ca)")?,
                    name: server_name(name).context("--tls-name")?,
                }))
            }
            (None, true) => {
                warn_plaintext("infer", connect, "the server");
                Ok(None)
            }
            _ => bail!(
                "no TLS: give --tls-ca (the CA that signed the server's certificate; see \
                 docs/operating.md), or --plaintext for loopback and tests"
            ),
        }
    }
}

/// Warns when `--plaintext` is used on an address other than loopback.
fn warn_plaintext(who: &str, addr: &str, server: &str) {
    if !is_loopback(addr) {
        eprintln!(
            "[{who}] warning: --plaintext on {addr}, which is not a loopback address: anyone on \
             the path can pose as {server}"
        );
    }
}

/// Whether `addr` (`host:port`) names this machine's loopback.
fn is_loopback(addr: &str) -> bool {
    let host =
        delphi_crypto::channel::tls::host_of(addr).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(clap::Args)]
pub(crate) struct InferArgs {
    /// The server's address (host:port); several, comma separated, are
    /// tried in turn when one cannot be reached, is busy or drops the
    /// session (replicas of one service).
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
    #[arg(long, value_name = "N", requires = "bundle_dir", conflicts_with = "input")]
    preprocess_only: Option<usize>,
    /// Most memory, in MB, the client's preprocessed material may take:
    /// a served network that needs more for one prediction is refused
    /// before any work, and fewer bundles than the server asks are
    /// prepared ahead when they would not fit [default: three quarters of
    /// this machine's memory].
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..))]
    max_memory: Option<u64>,
    /// Where a prepared bundle's garbled material (labels, tables, output
    /// conversions) waits for its online phase: `disk` writes it to an
    /// unlinked temporary file in --spool-dir as it arrives and streams it
    /// back a chunk at a time online, so memory does not grow with the
    /// network; `memory` holds it; `auto` chooses disk when one bundle's
    /// material is over 256 MiB.
    #[arg(long, value_enum, default_value_t = KeepArg::Auto)]
    keep_material: KeepArg,
    /// The directory for material kept on disk [default: $TMPDIR if set,
    /// else /var/tmp]. Put it on a disk, not a file system in memory
    /// (tmpfs: a warning says so), and somewhere as private as a key.
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    #[command(flatten)]
    tls: ClientTls,
}

/// `--keep-material`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KeepArg {
    /// Disk when one bundle's material is over 256 MiB, memory otherwise.
    Auto,
    /// Always in memory.
    Memory,
    /// Always on disk.
    Disk,
}

impl KeepArg {
    /// The engine's choice, with the spool directory (checked to exist).
    pub(crate) fn keep(self, dir: Option<PathBuf>) -> Result<Keep> {
        if self == KeepArg::Memory && dir.is_some() {
            bail!("--spool-dir with --keep-material memory: nothing would be kept on disk");
        }
        let dir = dir.unwrap_or_else(delphi_engine::session::default_spool_dir);
        if self != KeepArg::Memory && !dir.is_dir() {
            bail!("--spool-dir {}: not a directory", dir.display());
        }
        Ok(match self {
            KeepArg::Auto => Keep::Auto(dir),
            KeepArg::Memory => Keep::Memory,
            KeepArg::Disk => Keep::Disk(dir),
        })
    }
}

pub(crate) fn parse_inputs(v: &serde_json::Value) -> Option<Vec<Vec<f32>>> {
    let arr = v.as_array()?;
    let one = |a: &Vec<serde_json::Value>| {
        a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect::<Option<Vec<f32>>>()
    };
    if arr.iter().all(|x| x.is_number()) {
        return Some(vec![one(arr)?]);
    }
    arr.iter().map(|x| one(x.as_array()?)).collect()
}

/// Opens a bundle store when a directory is given.
pub(crate) fn open_store(
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

pub(crate) fn run_serve(args: ServeArgs) -> Result<()> {
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
        max_bundles_per_client,
        bundle_ttl_hours,
        session_lifetime,
        ledger,
        replica,
        allow_overflow,
        tls,
    } = args;
    if !(bundle_ttl_hours.is_finite() && bundle_ttl_hours > 0.0) {
        bail!("--bundle-ttl-hours {bundle_ttl_hours} must be a positive number of hours");
    }
    let tls = tls.config(&listen)?;

    let net = load_plan(&plan)?;
    let (prog, ranges) = checked_program(&net, allow_overflow)?;
    if let Some(w) = prog.rounding_warning() {
        eprintln!("[serve] warning: {w}");
    }
    let listener =
        std::net::TcpListener::bind(&listen).with_context(|| format!("listening on {listen}"))?;
    let mut store = open_store(bundle_dir, bundle_key, Side::Server)?;
    if let Some(url) = &ledger {
        let name = replica.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            format!("{}:{port}", host.trim())
        });
        let l = delphi_engine::ledger::Ledger::connect(url, &name)
            .context("connecting to the ledger (--ledger)")?;
        store = store.map(|st| st.with_ledger(Arc::new(l)));
    }
    let (relus, quads) = prog.activation_counts();
    eprintln!(
                "serving {} on {} {} ({relus} ReLUs, {quads} quadratics per inference; {preprocess} bundle(s) ahead; {workers} session(s) at once)",
                net.name,
                listener.local_addr()?,
                if tls.is_some() { "over TLS 1.3" } else { "in plaintext" }
            );
    eprintln!("{ranges}");
    if let Some(st) = &store {
        let gone = st.evict(
            Duration::from_secs_f64(bundle_ttl_hours * 3600.0),
            Duration::from_secs(phase_timeout.saturating_mul(2)),
        )?;
        let ready = match st.ledger() {
            Some(l) => format!(
                "{} bundle(s) ready on all replicas (ledger, replica {})",
                l.ready_count()?,
                l.replica()
            ),
            None => format!("{} bundle(s) ready", st.len()?),
        };
        eprintln!(
            "bundle store {}: {ready}{}",
            st.dir().display(),
            if gone > 0 { format!(", {gone} expired ones deleted") } else { String::new() }
        );
    }
    let limits = ServeLimits {
        workers: workers as usize,
        max_connections: max_connections as usize,
        io_timeout: Duration::from_secs(timeout),
        handshake_timeout: Duration::from_secs(handshake_timeout),
        phase_timeout: Duration::from_secs(phase_timeout),
        max_bundles: max_bundles as usize,
        store: StoreLimits {
            bundles: max_stored_bundles,
            bytes: max_store_mb.saturating_mul(1 << 20),
            per_owner: usize::try_from(max_bundles_per_client).unwrap_or(usize::MAX),
            ttl: Duration::from_secs_f64(bundle_ttl_hours * 3600.0),
            // A reservation outlives its offline phase only if its worker died.
            stale_reservation: Duration::from_secs(phase_timeout.saturating_mul(2)),
        },
        session_lifetime: Duration::from_secs(session_lifetime),
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
                eprintln!("session with {} failed after {what}: {}", e.peer, chain(&err))
            }
        }
    };
    Server { net: Arc::new(net), prog: Arc::new(prog), preprocess, limits, store, tls }.run(
        listener,
        sessions,
        Arc::new(log),
    )?;

    Ok(())
}

pub(crate) fn run_infer(args: InferArgs) -> Result<()> {
    let InferArgs {
        connect,
        input,
        normalized,
        timeout,
        json,
        bundle_dir,
        bundle_key,
        preprocess_only,
        max_memory,
        keep_material,
        spool_dir,
        tls,
    } = args;
    let keep = keep_material.keep(spool_dir)?;

    let store = open_store(bundle_dir, bundle_key, Side::Client)?;
    let max_memory = max_memory
        .map_or_else(delphi_engine::session::default_max_memory, |mb| mb.saturating_mul(1 << 20));
    let addrs: Vec<&str> = connect.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
    if addrs.is_empty() {
        bail!(
            "--connect needs an address (host:port; several, comma separated, are tried in turn)"
        );
    }
    let options_for = |addr: &str| -> Result<ClientOptions> {
        Ok(ClientOptions {
            normalize: !normalized,
            timeout: Duration::from_secs(timeout),
            store: store.clone(),
            tls: tls.client(addr)?,
            max_memory,
            keep: keep.clone(),
        })
    };
    if let Some(count) = preprocess_only {
        let held = failover(&addrs, |addr| {
            delphi_engine::session::preprocess(addr, count, &options_for(addr)?, &|m| {
                eprintln!("[infer] {m}")
            })
            .with_context(|| format!("preprocessing with {addr}"))
        })?;
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
        format!("{}: expected an array of numbers or an array of such arrays", input.display())
    })?;
    let preds = failover(&addrs, |addr| {
        delphi_engine::session::infer(addr, &inputs, &options_for(addr)?, &|m| {
            if !json {
                eprintln!("[infer] {m}")
            }
        })
        .with_context(|| format!("private inference with {addr}"))
    })?;
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

#[derive(clap::Args)]
pub(crate) struct TlsCertArgs {
    /// A name clients connect to (DNS name or IP address); repeat for more.
    #[arg(long = "name", required = true)]
    names: Vec<String>,
    /// Folder to write ca.pem, ca-key.pem, server.pem and server-key.pem
    /// into (made if absent; existing files are not overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
}

/// `delphi tls-cert`: a private CA and a server certificate it signed.
pub(crate) fn run_tls_cert(args: TlsCertArgs) -> Result<()> {
    let TlsCertArgs { names, out, days } = args;
    let pki = delphi_crypto::channel::tls::make_pki(&names, days)?;
    std::fs::create_dir_all(&out).with_context(|| format!("making {}", out.display()))?;
    let files = [
        ("ca.pem", &pki.ca_cert, false),
        ("ca-key.pem", &pki.ca_key, true),
        ("server.pem", &pki.server_cert, false),
        ("server-key.pem", &pki.server_key, true),
    ];
    for (name, _, _) in &files {
        let p = out.join(name);
        if p.exists() {
            bail!("{} exists; not overwritten (choose another --out)", p.display());
        }
    }
    for (name, text, private) in files {
        let p = out.join(name);
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(if private { 0o600 } else { 0o644 });
        }
        let _ = private;
        use std::io::Write;
        o.open(&p)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    eprintln!(
        "wrote {dir}/ca.pem (give it to clients: --tls-ca), {dir}/server.pem and \
         {dir}/server-key.pem (delphi serve --tls-cert/--tls-key) for {names}, valid {days} days; \
         keep {dir}/ca-key.pem offline",
        dir = out.display(),
        names = names.join(", ")
    );
    Ok(())
}

/// Runs `f` on each address in turn until one serves: the next is tried
/// when a server cannot be reached, is busy, or drops the session (a
/// replica that died); any other error (a refused input, an untrusted
/// certificate, a malformed message) ends it at once.
fn failover<T>(addrs: &[&str], mut f: impl FnMut(&str) -> Result<T>) -> Result<T> {
    use delphi_crypto::Error as C;
    let mut last = None;
    for (k, addr) in addrs.iter().enumerate() {
        match f(addr) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let retry = e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<EngineError>(),
                        Some(EngineError::Crypto(C::Closed | C::Io(_) | C::Timeout))
                            | Some(EngineError::Refused(_))
                    ) || c.downcast_ref::<std::io::Error>().is_some()
                });
                if !retry || k + 1 == addrs.len() {
                    return Err(e);
                }
                eprintln!("[infer] {}; trying {}", chain_anyhow(&e), addrs[k + 1]);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no address to connect to")))
}

fn chain_anyhow(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}
