//! Client–server sessions over TCP: what `delphi serve` and `delphi infer` run.
//!
//! Messages, after the TCP connection:
//! 1. server → client: a hello frame (JSON: protocol version, bundles to
//!    preprocess ahead, whether the server keeps bundles across connections)
//!    and the architecture frame (the network description with weights
//!    replaced by neutral values: the client learns the architecture, not
//!    the weights);
//! 2. client → server: its BFV public key;
//! 3. then commands from the client, one `u64` each: [`CMD_OFFLINE`] runs one
//!    offline phase (a new bundle on each side, both knowing its id),
//!    [`CMD_ONLINE`] followed by a bundle id runs the online phase on that
//!    bundle (the server answers [`STATUS_OK`] or [`STATUS_UNKNOWN`] first;
//!    after "unknown" — expired, used, or never made here — the session
//!    goes on),
//!    [`CMD_BYE`] ends the session.
//!
//! With a [`BundleStore`] a party keeps its halves on disk instead of in
//! memory, so bundles prepared in one connection (or process) are used in a
//! later one — each exactly once.
//!
//! Both sides bound what they read (frame sizes, number of bundles held) and
//! time out instead of waiting forever.

use std::collections::VecDeque;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use delphi_crypto::block::secret_rng;
use delphi_crypto::channel::tls::{ServerConfig, TlsClient};
use delphi_crypto::channel::{Channel, Counting, TcpChannel};
use delphi_net::{FixedProgram, Network};

use crate::error::{EngineError, Result, StoreProblem};
use crate::he::ClientHe;
use crate::protocol::{
    client_bundle_bytes, client_offline_to, client_setup, client_spooled_bytes, server_offline,
    server_setup, ClientBundle, Material, ServerBundle,
};
use crate::store::{BundleStore, StoreLimits};

/// Version of the session messages.
pub const SESSION_VERSION: u32 = 7;
/// Command: run one offline phase (the server answers [`STATUS_OK`] or
/// [`STATUS_FULL`] first).
pub const CMD_OFFLINE: u64 = 1;
/// Command: run one online phase (followed by the 16-byte bundle id).
pub const CMD_ONLINE: u64 = 2;
/// Command: end the session.
pub const CMD_BYE: u64 = 0;
/// Server's answer: the bundle is here (or will be made), the phase follows.
pub const STATUS_OK: u64 = 1;
/// Server's answer to [`CMD_ONLINE`]: no such bundle.
pub const STATUS_UNKNOWN: u64 = 2;
/// Server's answer to [`CMD_OFFLINE`]: it takes no more bundles (its store
/// is full, or this client's quota is); a frame of at most [`MAX_REASON`]
/// bytes saying why follows.
pub const STATUS_FULL: u64 = 3;
/// The most bundles a server holds in memory for one client.
pub const MAX_BUNDLES: usize = 64;
/// The longest reason a server gives with [`STATUS_FULL`], bytes.
pub const MAX_REASON: usize = 1024;
/// The largest architecture frame accepted: 256 MiB.
pub const MAX_ARCH_FRAME: u64 = 256 << 20;

#[derive(Serialize, Deserialize)]
struct Hello {
    version: u32,
    preprocess: usize,
    persistent: bool,
    /// Set when the server refuses the connection (too many clients): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    busy: Option<String>,
}

/// How a server bounds what one client can hold and how long it can take.
///
/// A session is bounded in time phase by phase: the handshake (hello,
/// architecture, the client's public key), each wait for a command, each
/// offline and each online phase must end by its deadline, and no single
/// read or write waits longer than `io_timeout` — so a client that stops
/// reading, trickles bytes or sits idle loses its session instead of
/// holding a worker.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Sessions served at once (each on its own worker thread).
    pub workers: usize,
    /// Connections served or waiting for a worker; beyond this a connection
    /// is answered "busy" and closed at once.
    pub max_connections: usize,
    /// The longest one read or write waits, and the longest wait for the
    /// client's next command.
    pub io_timeout: Duration,
    /// Deadline of the handshake.
    pub handshake_timeout: Duration,
    /// Deadline of one offline or one online phase.
    pub phase_timeout: Duration,
    /// Bundles held in memory for one client (without a store).
    pub max_bundles: usize,
    /// What the bundle store allows (with `--bundle-dir`): bundles and
    /// bytes in all, bundles per client, their time to live.
    pub store: StoreLimits,
    /// The longest a session may last in all, however it is paced.
    pub session_lifetime: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            workers: 8,
            max_connections: 32,
            io_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(30),
            phase_timeout: Duration::from_secs(600),
            max_bundles: 16,
            store: StoreLimits::default(),
            session_lifetime: Duration::from_secs(3600),
        }
    }
}

/// What one served session did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SessionReport {
    /// Online phases run.
    pub predictions: usize,
    /// Offline phases run.
    pub offline_phases: usize,
    /// Online phases asked for bundles this server does not hold.
    pub unknown_bundles: usize,
    /// Bytes sent and received.
    pub bytes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

fn session_error(report: &SessionReport, e: EngineError) -> (SessionReport, EngineError) {
    (report.clone(), e)
}

fn lifetime_reached(limits: &ServeLimits) -> EngineError {
    EngineError::Refused(format!(
        "the session reached its lifetime ({} s, --session-lifetime); reconnect",
        limits.session_lifetime.as_secs_f64()
    ))
}

/// Sets the deadline of the next phase: `limit` from now, and never past
/// the session's end (`Err(Timeout)` once it has passed).
fn phase(ch: &mut Counting<TcpChannel>, limit: Duration, end: Instant) -> Result<()> {
    let now = Instant::now();
    if now >= end {
        return Err(delphi_crypto::Error::Timeout.into());
    }
    Ok(ch.inner_mut().set_deadline(Some((now + limit).min(end)))?)
}

/// Serves one client on `stream` until it says goodbye or fails; returns
/// what the session did (also on failure). With `store`, the server's
/// bundles live on disk and survive the connection. With `tls`, the TLS
/// handshake comes first, within the handshake timeout.
pub fn serve_connection(
    stream: TcpStream,
    net: &Network,
    prog: &FixedProgram,
    preprocess: usize,
    limits: &ServeLimits,
    store: Option<&BundleStore>,
    tls: Option<&Arc<ServerConfig>>,
) -> std::result::Result<SessionReport, (SessionReport, EngineError)> {
    let start = Instant::now();
    let mut report = SessionReport::default();
    let ch = match tls {
        Some(cfg) => TcpChannel::tls_server(stream, cfg.clone(), limits.handshake_timeout),
        None => TcpChannel::new(stream),
    };
    let mut ch = match ch.and_then(|c| c.with_timeout(Some(limits.io_timeout))) {
        Ok(c) => Counting::new(c),
        Err(e) => return Err(session_error(&report, e.into())),
    };
    let owner = ch.inner_mut().peer_ip();
    let end = start + limits.session_lifetime;
    let store = store.map(|st| (st, owner.as_str()));
    let out =
        serve_session(&mut ch, net, prog, preprocess, limits, store, &mut report).map_err(|e| {
            match e {
                EngineError::Crypto(delphi_crypto::Error::Timeout) if Instant::now() >= end => {
                    lifetime_reached(limits)
                }
                e => e,
            }
        });
    report.bytes = ch.stats().total();
    report.seconds = start.elapsed().as_secs_f64();
    match out {
        Ok(()) => Ok(report),
        Err(e) => Err(session_error(&report, e)),
    }
}

fn serve_session(
    ch: &mut Counting<TcpChannel>,
    net: &Network,
    prog: &FixedProgram,
    preprocess: usize,
    limits: &ServeLimits,
    store: Option<(&BundleStore, &str)>,
    report: &mut SessionReport,
) -> Result<()> {
    let end = Instant::now() + limits.session_lifetime;
    phase(ch, limits.handshake_timeout, end)?;
    let hello = Hello {
        version: SESSION_VERSION,
        preprocess: preprocess.clamp(1, limits.max_bundles.clamp(1, MAX_BUNDLES)),
        persistent: store.is_some(),
        busy: None,
    };
    ch.send_frame(&serde_json::to_vec(&hello).map_err(|e| EngineError::Internal(e.to_string()))?)?;
    let arch = serde_json::to_vec(&net.architecture_only())
        .map_err(|e| EngineError::Internal(e.to_string()))?;
    ch.send_frame(&arch)?;
    ch.flush()?;
    let he = server_setup(ch)?;
    let mut rng = secret_rng();
    let mut bundles: VecDeque<ServerBundle> = VecDeque::new();
    loop {
        phase(ch, limits.io_timeout, end)?;
        match ch.recv_u64()? {
            CMD_OFFLINE => {
                // Room is reserved before any work (a store's limits count
                // reservations in flight); refused, the client hears "full".
                let room = match store {
                    Some((st, owner)) => st.reserve(owner, &limits.store).map(Some),
                    None if bundles.len() >= limits.max_bundles.clamp(1, MAX_BUNDLES) => {
                        Err(EngineError::Refused(format!(
                            "a client may hold at most {} unused bundles",
                            limits.max_bundles.clamp(1, MAX_BUNDLES)
                        )))
                    }
                    None => Ok(None),
                };
                let room = match room {
                    Ok(r) => r,
                    Err(e) => {
                        // "Full", and why (a quota, the store's limit).
                        ch.send_u64(STATUS_FULL)?;
                        let why = match &e {
                            EngineError::Refused(why) => why.clone(),
                            _ => "the bundle store cannot take a bundle".into(),
                        };
                        ch.send_frame(&why.as_bytes()[..why.len().min(MAX_REASON)])?;
                        ch.flush()?;
                        return Err(e);
                    }
                };
                ch.send_u64(STATUS_OK)?;
                ch.flush()?;
                phase(ch, limits.phase_timeout, end)?;
                let b = server_offline(ch, prog, &he, &mut rng)?;
                match (store, room) {
                    (Some((st, _)), Some(r)) => st.put_server(prog, &b, r)?,
                    _ => bundles.push_back(b),
                }
                report.offline_phases += 1;
            }
            CMD_ONLINE => {
                let mut id = [0u8; 16];
                ch.recv_bytes(&mut id)?;
                let found = match bundles.iter().position(|b| b.id() == id) {
                    Some(k) => bundles.remove(k),
                    None => match store {
                        Some((st, _)) => {
                            // Expired bundles go first: they are not served.
                            st.evict(limits.store.ttl, limits.store.stale_reservation)?;
                            match st.take_server(prog, &id) {
                                Ok(b) => Some(b),
                                Err(EngineError::Store {
                                    problem: StoreProblem::Missing, ..
                                }) => None,
                                Err(e) => return Err(e),
                            }
                        }
                        None => None,
                    },
                };
                let Some(b) = found else {
                    // Expired, already used, or never made here: the client
                    // may go on with another.
                    ch.send_u64(STATUS_UNKNOWN)?;
                    ch.flush()?;
                    report.unknown_bundles += 1;
                    continue;
                };
                ch.send_u64(STATUS_OK)?;
                ch.flush()?;
                phase(ch, limits.phase_timeout, end)?;
                b.online(ch, prog)?;
                report.predictions += 1;
            }
            CMD_BYE => return Ok(()),
            other => return Err(EngineError::Malformed(format!("unknown command {other}"))),
        }
    }
}

/// Answers a connection the server has no room for: a hello that says so.
/// Writes at most a few hundred bytes with a one-second limit, so a client
/// that does not read cannot hold the caller.
pub fn refuse_busy(stream: TcpStream, why: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if let Ok(ch) = TcpChannel::new(stream) {
        send_busy(ch, why);
    }
}

fn send_busy(ch: TcpChannel, why: &str) {
    let hello = Hello {
        version: SESSION_VERSION,
        preprocess: 1,
        persistent: false,
        busy: Some(why.to_string()),
    };
    let Ok(json) = serde_json::to_vec(&hello) else {
        return;
    };
    if let Ok(mut ch) = ch.with_timeout(Some(Duration::from_secs(1))) {
        let _ = ch.send_frame(&json).and_then(|()| ch.flush());
    }
}

/// Refusals over TLS in flight at once (each a handshake of at most a
/// second on a thread of its own); beyond them a connection is closed
/// without a word.
const TLS_REFUSALS: usize = 16;

/// [`refuse_busy`] over TLS when the server speaks it: the handshake and
/// the hello on a short-lived thread (so the accepting loop never waits on
/// a client), at most [`TLS_REFUSALS`] at once.
fn refuse(
    stream: TcpStream,
    why: String,
    tls: Option<&Arc<ServerConfig>>,
    busy: &Arc<AtomicUsize>,
) {
    let Some(cfg) = tls else {
        return refuse_busy(stream, &why);
    };
    if busy.fetch_add(1, Ordering::SeqCst) >= TLS_REFUSALS {
        busy.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let (cfg, busy) = (cfg.clone(), busy.clone());
    std::thread::spawn(move || {
        if let Ok(ch) = TcpChannel::tls_server(stream, cfg, Duration::from_secs(1)) {
            send_busy(ch, &why);
        }
        busy.fetch_sub(1, Ordering::SeqCst);
    });
}

/// A session's outcome, as [`serve`] reports it.
pub struct SessionEvent {
    /// The client's address.
    pub peer: String,
    /// What the session did.
    pub report: SessionReport,
    /// Why it ended early, if it did.
    pub error: Option<EngineError>,
}

/// What a server serves and how it bounds its clients.
pub struct Server {
    /// The network (with weights).
    pub net: Arc<Network>,
    /// Its fixed-point program.
    pub prog: Arc<FixedProgram>,
    /// Bundles each client prepares ahead.
    pub preprocess: usize,
    /// The bounds on each client.
    pub limits: ServeLimits,
    /// Where bundles are kept across connections (none: memory).
    pub store: Option<BundleStore>,
    /// TLS (none: plaintext, for loopback and tests).
    pub tls: Option<Arc<ServerConfig>>,
}

impl Server {
    /// Serves clients on `listener`: `limits.workers` sessions at once, up
    /// to `limits.max_connections` served or waiting, the rest answered
    /// "busy". Returns after `sessions` accepted sessions have ended (never,
    /// with `None`). `on_event` is called from the workers as each session
    /// ends.
    pub fn run(
        self,
        listener: std::net::TcpListener,
        sessions: Option<usize>,
        on_event: Arc<dyn Fn(SessionEvent) + Send + Sync>,
    ) -> Result<()> {
        serve(self, listener, sessions, on_event)
    }
}

fn serve(
    server: Server,
    listener: std::net::TcpListener,
    sessions: Option<usize>,
    on_event: Arc<dyn Fn(SessionEvent) + Send + Sync>,
) -> Result<()> {
    let Server { net, prog, preprocess, limits, store, tls } = server;
    let refusing = Arc::new(AtomicUsize::new(0));
    let workers = limits.workers.max(1);
    let max_connections = limits.max_connections.max(1);
    // Connections served or waiting; bounded here, not by the queue.
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    let limits = Arc::new(limits);
    let store = Arc::new(store);
    let active = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (rx, net, prog, limits, store, active, on_event, tls) = (
            rx.clone(),
            net.clone(),
            prog.clone(),
            limits.clone(),
            store.clone(),
            active.clone(),
            on_event.clone(),
            tls.clone(),
        );
        handles.push(std::thread::spawn(move || loop {
            let next = match rx.lock() {
                Ok(r) => r.recv(),
                Err(_) => return,
            };
            let Ok(stream) = next else { return };
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
            let out = serve_connection(
                stream,
                &net,
                &prog,
                preprocess,
                &limits,
                store.as_ref().as_ref(),
                tls.as_ref(),
            );
            active.fetch_sub(1, Ordering::SeqCst);
            let (report, error) = match out {
                Ok(r) => (r, None),
                Err((r, e)) => (r, Some(e)),
            };
            on_event(SessionEvent { peer, report, error });
        }));
    }
    let mut accepted = 0;
    for stream in listener.incoming() {
        if sessions.is_some_and(|s| accepted >= s) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if active.load(Ordering::SeqCst) >= max_connections {
            refuse(
                stream,
                format!(
                    "the server is busy ({max_connections} clients served or waiting); try again later"
                ),
                tls.as_ref(),
                &refusing,
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(stream)) = tx.send(stream) {
            active.fetch_sub(1, Ordering::SeqCst);
            refuse(stream, "the server is shutting down".into(), tls.as_ref(), &refusing);
            continue;
        }
        accepted += 1;
        if sessions.is_some_and(|s| accepted >= s) {
            break;
        }
    }
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// One prediction as the client sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// The logits (decoded reals).
    pub logits: Vec<f64>,
    /// The predicted class.
    pub class: usize,
    /// Online time, seconds.
    pub online_s: f64,
    /// Online bytes, both directions.
    pub online_bytes: u64,
    /// Online bytes on the link, both directions: with TLS its records
    /// included (plaintext: `online_bytes`).
    pub online_wire_bytes: u64,
    /// Seconds of the offline phase that prepared this prediction's bundle
    /// in this session, its request's round trip included (`None` when the
    /// bundle came from the store).
    pub offline_s: Option<f64>,
    /// That offline phase's bytes, both directions.
    pub offline_bytes: Option<u64>,
}

/// How the client runs a session.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long to wait for the server.
    pub timeout: Duration,
    /// Where the client keeps its bundles between sessions (none: memory).
    pub store: Option<BundleStore>,
    /// Inputs are raw (pixels / 255 for images): apply the input
    /// normalisation the served network records before encoding. When it
    /// records none, inputs are used as they are. `false`: the inputs are
    /// already normalised.
    pub normalize: bool,
    /// TLS: the CA and the server's name (none: plaintext, for loopback
    /// and tests).
    pub tls: Option<TlsClient>,
    /// The most memory the client's preprocessed material may take, bytes:
    /// a server's network whose one bundle needs more is refused before any
    /// work, and the client prepares only as many bundles ahead as fit
    /// (whatever the server asks). Default [`default_max_memory`].
    pub max_memory: u64,
    /// Where the garbled material of prepared bundles is kept.
    pub keep: Keep,
}

/// Where a client keeps its bundles' garbled material (labels, tables,
/// output conversions) between the offline and the online phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// On disk in this directory when one bundle's material is more than
    /// [`SPOOL_ABOVE`] bytes, in memory otherwise (the default, in the
    /// system's temporary directory).
    Auto(PathBuf),
    /// Always in memory.
    Memory,
    /// Always on disk, in this directory.
    Disk(PathBuf),
}

impl Default for Keep {
    fn default() -> Self {
        Keep::Auto(default_spool_dir())
    }
}

/// Garbled material per bundle above which [`Keep::Auto`] spools it to disk
/// (256 MiB: small networks keep theirs in memory — an all-ReLU small-cnn's
/// is 97 MB — and a larger one's client stays under about 400 MB however
/// large the network; an all-ReLU ResNet-32's material is 1.27 GB).
pub const SPOOL_ABOVE: u64 = 256 << 20;

impl Keep {
    /// Where `prog`'s material goes.
    pub fn material(&self, prog: &FixedProgram) -> Material {
        match self {
            Keep::Memory => Material::Memory,
            Keep::Disk(d) => Material::Disk(d.clone()),
            Keep::Auto(d) if client_spooled_bytes(prog) > SPOOL_ABOVE => Material::Disk(d.clone()),
            Keep::Auto(_) => Material::Memory,
        }
    }
}

/// Where material kept on disk goes by default: `$TMPDIR` if set, else
/// `/var/tmp` (on a disk on Debian and most systems, where `/tmp` may be a
/// RAM file system), else the system's temporary directory.
pub fn default_spool_dir() -> PathBuf {
    if std::env::var_os("TMPDIR").is_some_and(|d| !d.is_empty()) {
        return std::env::temp_dir();
    }
    let var_tmp = Path::new("/var/tmp");
    if var_tmp.is_dir() {
        var_tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Whether `dir` is on a file system held in memory (tmpfs, ramfs), where
/// material "on disk" would stay in memory after all.
pub fn in_memory_file_system(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: a NUL-terminated path and a struct statfs to fill.
    if unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded and filled it.
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let kind = unsafe { st.assume_init() }.f_type as i64;
    kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
}

/// Bytes free for this user on the file system that holds `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| EngineError::Input(format!("{}: a path with a NUL byte", dir.display())))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a NUL-terminated path and a struct statvfs to fill.
    if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(delphi_crypto::Error::Spool {
            dir: dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        }
        .into());
    }
    // SAFETY: statvfs succeeded and filled it.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u64 on 64-bit Linux).
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(blocks.saturating_mul(size))
}

/// Three quarters of this machine's memory (`MemTotal`), or 8 GiB where it
/// cannot be read.
pub fn default_max_memory() -> u64 {
    crate::run::proc_kb("/proc/meminfo", "MemTotal:").map_or(8 << 30, |kb| kb * 1024 / 4 * 3)
}

/// What the client holds for one bundle of `prog`, checked against
/// `max_memory` (and, with material on disk, the disk's free space) before
/// anything is prepared; returns how many bundles fit.
fn bundles_that_fit(prog: &FixedProgram, max_memory: u64, material: &Material) -> Result<usize> {
    let all = client_bundle_bytes(prog);
    let spooled = client_spooled_bytes(prog);
    let (one, disk) = match material {
        Material::Memory => (all, None),
        Material::Disk(dir) => (all.saturating_sub(spooled), Some((dir, spooled))),
    };
    // The online phase works beside the bundle on every node's values (and
    // on one chunk of mapped material, a few tens of MB at most).
    let mut working: u64 = prog.nodes.iter().map(|n| 8 * n.shape.len() as u64).sum();
    if disk.is_some() {
        working = working.saturating_add(SPOOL_WINDOW);
    }
    let need = one.saturating_add(working);
    if need > max_memory {
        return Err(EngineError::OverLimit(format!(
            "the server's network needs {:.1} MB for one prediction's preprocessed material \
             and working values, more than this client allows ({:.1} MB, --max-memory)",
            need as f64 / 1e6,
            max_memory as f64 / 1e6
        )));
    }
    let mut fit = usize::try_from((max_memory - working) / one.max(1)).unwrap_or(usize::MAX);
    if let Some((dir, spooled)) = disk {
        // Leave a tenth of the free space to everything else.
        let free = free_bytes(dir)? / 10 * 9;
        if spooled > free {
            return Err(EngineError::OverLimit(format!(
                "the server's network needs {:.1} MB on disk for one prediction's garbled \
                 material, more than {} has free ({:.1} MB usable; choose another --spool-dir, \
                 or --keep-material memory)",
                spooled as f64 / 1e6,
                dir.display(),
                free as f64 / 1e6
            )));
        }
        fit = fit.min(usize::try_from(free / spooled.max(1)).unwrap_or(usize::MAX));
    }
    Ok(fit.max(1))
}

/// Memory a spooled online phase maps at once, bounded: one chunk of each
/// piece of material and the next one read ahead.
const SPOOL_WINDOW: u64 = 64 << 20;

/// A connected client: the session's hello, architecture and keys.
struct ClientSession {
    ch: Counting<TcpChannel>,
    hello: Hello,
    arch: Network,
    prog: FixedProgram,
    he: ClientHe,
    /// Bundles prepared ahead: what the server asks, at most what fits.
    ahead: usize,
    /// Where their garbled material is kept.
    material: Material,
}

fn connect<A: ToSocketAddrs>(addr: A, options: &ClientOptions) -> Result<ClientSession> {
    let (timeout, tls, max_memory) = (options.timeout, options.tls.as_ref(), options.max_memory);
    let ch = match tls {
        Some(t) => TcpChannel::tls_connect(addr, t, timeout)?,
        None => TcpChannel::connect(addr)?,
    };
    let mut ch = Counting::new(ch.with_timeout(Some(timeout))?);
    let hello: Hello = serde_json::from_slice(&ch.recv_frame_bounded(4096)?)
        .map_err(|e| EngineError::Malformed(format!("hello: {e}")))?;
    if let Some(why) = hello.busy {
        return Err(EngineError::Refused(why));
    }
    if hello.version != SESSION_VERSION {
        return Err(EngineError::Malformed(format!(
            "server speaks session version {}, this client {SESSION_VERSION}",
            hello.version
        )));
    }
    let arch: Network = serde_json::from_slice(&ch.recv_frame_bounded(MAX_ARCH_FRAME)?)
        .map_err(|e| EngineError::Malformed(format!("architecture: {e}")))?;
    // Its shapes bound what lowering it allocates: checked first.
    let values: u64 = arch.validate()?.iter().map(|s| s.len() as u64).sum();
    if values.saturating_mul(16) > max_memory {
        return Err(EngineError::OverLimit(format!(
            "the server's network has {values} values per prediction, more than this client's \
             memory limit allows ({:.1} MB, --max-memory)",
            max_memory as f64 / 1e6
        )));
    }
    let prog = FixedProgram::lower(&arch)?;
    let material = options.keep.material(&prog);
    let fit = bundles_that_fit(&prog, max_memory, &material)?;
    let he = client_setup(&mut ch)?;
    let ahead = hello.preprocess.clamp(1, MAX_BUNDLES).min(fit);
    Ok(ClientSession { ch, hello, arch, prog, he, ahead, material })
}

impl ClientSession {
    fn offline(&mut self) -> Result<ClientBundle> {
        self.ch.send_u64(CMD_OFFLINE)?;
        self.ch.flush()?;
        match self.ch.recv_u64()? {
            STATUS_OK => {}
            STATUS_FULL => {
                let why = self.ch.recv_frame_bounded(MAX_REASON as u64)?;
                return Err(EngineError::Refused(format!(
                    "the server takes no more bundles from this client: {}",
                    String::from_utf8_lossy(&why)
                )));
            }
            other => return Err(EngineError::Malformed(format!("offline status {other}"))),
        }
        client_offline_to(&mut self.ch, &self.prog, &self.he, &mut secret_rng(), &self.material)
    }

    fn bye(mut self) -> Result<()> {
        self.ch.send_u64(CMD_BYE)?;
        self.ch.flush()?;
        Ok(())
    }
}

/// Connects to a server that keeps its bundles (`delphi serve --bundle-dir`)
/// and prepares `count` bundles ahead, stored on both sides; returns how many
/// the client's store then holds.
pub fn preprocess<A: ToSocketAddrs>(
    addr: A,
    count: usize,
    options: &ClientOptions,
    progress: &dyn Fn(&str),
) -> Result<usize> {
    let store = options.store.as_ref().ok_or_else(|| EngineError::Store {
        path: ".".into(),
        problem: "preprocessing ahead needs a bundle directory".into(),
    })?;
    let mut s = connect(addr, options)?;
    if !s.hello.persistent {
        return Err(EngineError::Refused(
            "the server keeps no bundles across connections (start it with --bundle-dir)".into(),
        ));
    }
    for k in 0..count {
        progress(&format!("offline phase {}/{count}", k + 1));
        let b = s.offline()?;
        store.put_client(&s.prog, &b)?;
    }
    s.bye()?;
    store.len()
}

/// Connects to a server and runs one private inference per input, using
/// stored bundles first (oldest first) and preparing the rest in the session.
/// `progress` receives human-readable phase messages.
pub fn infer<A: ToSocketAddrs>(
    addr: A,
    inputs: &[Vec<f32>],
    options: &ClientOptions,
    progress: &dyn Fn(&str),
) -> Result<Vec<Prediction>> {
    let mut s = connect(addr, options)?;
    for x in inputs {
        if x.len() != s.arch.input.len() {
            return Err(EngineError::Input(format!(
                "an input has {} values but the served network takes {} ({})",
                x.len(),
                s.arch.input.len(),
                s.arch.input
            )));
        }
    }
    let (relus, quads) = s.prog.activation_counts();
    progress(&format!(
        "connected: {} ({relus} ReLUs, {quads} quadratics per inference)",
        s.arch.name
    ));
    if let Material::Disk(dir) = &s.material {
        progress(&format!(
            "garbled material kept on disk in {} ({:.0} MB per prediction, streamed back online)",
            dir.display(),
            client_spooled_bytes(&s.prog) as f64 / 1e6
        ));
        if in_memory_file_system(dir) {
            progress(&format!(
                "warning: {} is a file system in memory (tmpfs): the material kept there still \
                 takes memory; choose a --spool-dir on a disk",
                dir.display()
            ));
        }
    }
    let norm = s.arch.metadata.input_normalization.clone();
    let inputs: Vec<Vec<f32>> = match (&norm, options.normalize) {
        (Some(n), true) => {
            progress(&format!(
                "normalising inputs as the network expects: (x − {:?}) / {:?}",
                n.mean, n.std
            ));
            inputs
                .iter()
                .map(|x| {
                    let mut x = x.clone();
                    n.apply(&mut x, s.arch.input)?;
                    Ok(x)
                })
                .collect::<Result<_>>()?
        }
        (None, true) => {
            progress("the network records no input normalisation: inputs are used as they are");
            inputs.to_vec()
        }
        (_, false) => inputs.to_vec(),
    };
    for x in &inputs {
        s.arch.check_input_range(x)?;
    }
    let inputs = &inputs[..];
    let mut stored: VecDeque<[u8; 16]> = match (&options.store, s.hello.persistent) {
        (Some(st), true) => st.ids()?.into_iter().collect(),
        _ => VecDeque::new(),
    };
    if !stored.is_empty() {
        progress(&format!("{} stored bundle(s) available", stored.len()));
    }
    let mut bundles: VecDeque<(ClientBundle, (f64, u64))> = VecDeque::new();
    let ahead = s.ahead;
    if ahead < s.hello.preprocess.clamp(1, MAX_BUNDLES) {
        progress(&format!(
            "preparing {ahead} bundle(s) ahead, not the {} the server asks: more would not fit \
             in --max-memory",
            s.hello.preprocess
        ));
    }
    let mut out = Vec::with_capacity(inputs.len());
    let mut prepared = 0;
    let mut top_up = |s: &mut ClientSession,
                      bundles: &mut VecDeque<(ClientBundle, (f64, u64))>,
                      stored: &VecDeque<[u8; 16]>,
                      used: usize|
     -> Result<()> {
        let remaining = inputs.len() - used;
        while bundles.len() + stored.len() < ahead.min(remaining) {
            progress(&format!("offline phase {}", prepared + 1));
            let (before, t) = (s.ch.stats(), Instant::now());
            let b = s.offline()?;
            bundles
                .push_back((b, (t.elapsed().as_secs_f64(), s.ch.stats().since(&before).total())));
            prepared += 1;
        }
        Ok(())
    };
    for (k, x) in inputs.iter().enumerate() {
        let enc = s.prog.encode_input(x)?;
        // A stored bundle the server no longer holds (expired there, or
        // made with another server) is discarded and the next one tried.
        let (b, offline, before, wire_before, t) = loop {
            top_up(&mut s, &mut bundles, &stored, k)?;
            let (b, offline) = match (stored.pop_front(), &options.store) {
                (Some(id), Some(st)) => (st.take_client_to(&s.prog, &id, &s.material)?, None),
                _ => bundles
                    .pop_front()
                    .map(|(b, cost)| (b, Some(cost)))
                    .ok_or_else(|| EngineError::Internal("no bundle prepared".into()))?,
            };
            progress(&format!("online phase {}", k + 1));
            let before = s.ch.stats();
            let wire_before = s.ch.inner_mut().wire_bytes();
            let t = Instant::now();
            s.ch.send_u64(CMD_ONLINE)?;
            s.ch.send_bytes(&b.id())?;
            s.ch.flush()?;
            match s.ch.recv_u64()? {
                STATUS_OK => break (b, offline, before, wire_before, t),
                STATUS_UNKNOWN if offline.is_none() => progress(
                    "a stored bundle is no longer held by the server (expired, or made with \
                     another server); discarded",
                ),
                _ => {
                    return Err(EngineError::Refused(
                        "the server does not hold the bundle prepared in this session".into(),
                    ))
                }
            }
        };
        let y = b.online(&mut s.ch, &s.prog, &enc)?.logits;
        let online_s = t.elapsed().as_secs_f64();
        let logits = s.prog.decode_output(&y);
        let class = delphi_net::eval::argmax(&logits);
        out.push(Prediction {
            logits,
            class,
            online_s,
            online_bytes: s.ch.stats().since(&before).total(),
            online_wire_bytes: s.ch.inner_mut().wire_bytes() - wire_before,
            offline_s: offline.map(|o| o.0),
            offline_bytes: offline.map(|o| o.1),
        });
    }
    s.bye()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file system /proc/mounts lists as tmpfs or ramfs is one, and the
    /// others are not.
    #[test]
    fn file_systems_in_memory_are_recognised() {
        let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return };
        // A path mounted over keeps its last (visible) mount.
        let mut top = std::collections::BTreeMap::new();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 2 {
                top.insert(f[1], (f[2], line));
            }
        }
        let mut seen = 0;
        for (dir, (kind, line)) in top {
            let dir = Path::new(dir);
            if !dir.is_dir() || dir.read_dir().is_err() {
                continue;
            }
            if kind == "tmpfs" || kind == "ramfs" {
                assert!(in_memory_file_system(dir), "{line}");
                seen += 1;
            } else if ["ext4", "xfs", "btrfs", "overlay"].contains(&kind) {
                assert!(!in_memory_file_system(dir), "{line}");
                seen += 1;
            }
        }
        assert!(seen > 0, "no file system of a known kind in /proc/mounts");
    }
}
