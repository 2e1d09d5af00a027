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
//!    bundle (the server answers [`STATUS_OK`] or [`STATUS_UNKNOWN`] first),
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
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use delphi_crypto::block::secret_rng;
use delphi_crypto::channel::{Channel, Counting, TcpChannel};
use delphi_net::{FixedProgram, Network};

use crate::error::{EngineError, Result};
use crate::he::ClientHe;
use crate::protocol::{
    client_offline, client_setup, server_offline, server_setup, ClientBundle, ServerBundle,
};
use crate::store::BundleStore;

/// Version of the session messages.
pub const SESSION_VERSION: u32 = 2;
/// Command: run one offline phase.
pub const CMD_OFFLINE: u64 = 1;
/// Command: run one online phase (followed by the 16-byte bundle id).
pub const CMD_ONLINE: u64 = 2;
/// Command: end the session.
pub const CMD_BYE: u64 = 0;
/// Server's answer to [`CMD_ONLINE`]: the bundle is here, online follows.
pub const STATUS_OK: u64 = 1;
/// Server's answer to [`CMD_ONLINE`]: no such bundle.
pub const STATUS_UNKNOWN: u64 = 2;
/// The most bundles a server holds in memory for one client.
pub const MAX_BUNDLES: usize = 64;
/// The largest architecture frame accepted: 256 MiB.
pub const MAX_ARCH_FRAME: u64 = 256 << 20;

#[derive(Serialize, Deserialize)]
struct Hello {
    version: u32,
    preprocess: usize,
    persistent: bool,
}

/// Serves one client on `stream` until it says goodbye or fails; returns the
/// number of predictions served. With `store`, the server's bundles live on
/// disk and survive the connection.
pub fn serve_connection(
    stream: TcpStream,
    net: &Network,
    prog: &FixedProgram,
    preprocess: usize,
    timeout: Duration,
    store: Option<&BundleStore>,
) -> Result<usize> {
    let mut ch = TcpChannel::new(stream)?.with_timeout(Some(timeout))?;
    let hello = Hello {
        version: SESSION_VERSION,
        preprocess: preprocess.clamp(1, MAX_BUNDLES),
        persistent: store.is_some(),
    };
    ch.send_frame(&serde_json::to_vec(&hello).map_err(|e| EngineError::Malformed(e.to_string()))?)?;
    let arch = serde_json::to_vec(&net.architecture_only())
        .map_err(|e| EngineError::Malformed(e.to_string()))?;
    ch.send_frame(&arch)?;
    ch.flush()?;
    let he = server_setup(&mut ch)?;
    let mut rng = secret_rng();
    let mut bundles: VecDeque<ServerBundle> = VecDeque::new();
    let mut served = 0;
    loop {
        match ch.recv_u64()? {
            CMD_OFFLINE => {
                if store.is_none() && bundles.len() >= MAX_BUNDLES {
                    return Err(EngineError::Malformed(format!(
                        "client asked for more than {MAX_BUNDLES} bundles"
                    )));
                }
                let b = server_offline(&mut ch, prog, &he, &mut rng)?;
                match store {
                    Some(st) => st.put_server(prog, &b)?,
                    None => bundles.push_back(b),
                }
            }
            CMD_ONLINE => {
                let mut id = [0u8; 16];
                ch.recv_bytes(&mut id)?;
                let found = match bundles.iter().position(|b| b.id() == id) {
                    Some(k) => bundles.remove(k),
                    None => match store {
                        Some(st) if st.ids()?.contains(&id) => Some(st.take_server(prog, &id)?),
                        _ => None,
                    },
                };
                let Some(mut b) = found else {
                    ch.send_u64(STATUS_UNKNOWN)?;
                    ch.flush()?;
                    return Err(EngineError::Malformed(
                        "online phase requested for a bundle this server does not hold".into(),
                    ));
                };
                ch.send_u64(STATUS_OK)?;
                ch.flush()?;
                b.online(&mut ch, prog)?;
                served += 1;
            }
            CMD_BYE => return Ok(served),
            other => return Err(EngineError::Malformed(format!("unknown command {other}"))),
        }
    }
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
}

/// A connected client: the session's hello, architecture and keys.
struct ClientSession {
    ch: Counting<TcpChannel>,
    hello: Hello,
    arch: Network,
    prog: FixedProgram,
    he: ClientHe,
}

fn connect<A: ToSocketAddrs>(addr: A, timeout: Duration) -> Result<ClientSession> {
    let mut ch = Counting::new(TcpChannel::connect(addr)?.with_timeout(Some(timeout))?);
    let hello: Hello = serde_json::from_slice(&ch.recv_frame_bounded(4096)?)
        .map_err(|e| EngineError::Malformed(format!("hello: {e}")))?;
    if hello.version != SESSION_VERSION {
        return Err(EngineError::Malformed(format!(
            "server speaks session version {}, this client {SESSION_VERSION}",
            hello.version
        )));
    }
    let arch: Network = serde_json::from_slice(&ch.recv_frame_bounded(MAX_ARCH_FRAME)?)
        .map_err(|e| EngineError::Malformed(format!("architecture: {e}")))?;
    let prog = FixedProgram::lower(&arch)?;
    let he = client_setup(&mut ch)?;
    Ok(ClientSession {
        ch,
        hello,
        arch,
        prog,
        he,
    })
}

impl ClientSession {
    fn offline(&mut self) -> Result<ClientBundle> {
        self.ch.send_u64(CMD_OFFLINE)?;
        client_offline(&mut self.ch, &self.prog, &self.he, &mut secret_rng())
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
        reason: "preprocessing ahead needs a bundle directory".into(),
    })?;
    let mut s = connect(addr, options.timeout)?;
    if !s.hello.persistent {
        return Err(EngineError::Malformed(
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
    let mut s = connect(addr, options.timeout)?;
    for x in inputs {
        if x.len() != s.arch.input.len() {
            return Err(EngineError::Malformed(format!(
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
    let inputs = &inputs[..];
    let mut stored: VecDeque<[u8; 16]> = match (&options.store, s.hello.persistent) {
        (Some(st), true) => st.ids()?.into_iter().collect(),
        _ => VecDeque::new(),
    };
    if !stored.is_empty() {
        progress(&format!("{} stored bundle(s) available", stored.len()));
    }
    let mut bundles: VecDeque<ClientBundle> = VecDeque::new();
    let ahead = s.hello.preprocess.clamp(1, MAX_BUNDLES);
    let mut out = Vec::with_capacity(inputs.len());
    let mut prepared = 0;
    let mut top_up = |s: &mut ClientSession,
                      bundles: &mut VecDeque<ClientBundle>,
                      stored: &VecDeque<[u8; 16]>,
                      used: usize|
     -> Result<()> {
        let remaining = inputs.len() - used;
        while bundles.len() + stored.len() < ahead.min(remaining) {
            progress(&format!("offline phase {}", prepared + 1));
            bundles.push_back(s.offline()?);
            prepared += 1;
        }
        Ok(())
    };
    for (k, x) in inputs.iter().enumerate() {
        top_up(&mut s, &mut bundles, &stored, k)?;
        let enc = s.prog.encode_input(x)?;
        let mut b = match (stored.pop_front(), &options.store) {
            (Some(id), Some(st)) => st.take_client(&s.prog, &id)?,
            _ => bundles
                .pop_front()
                .ok_or_else(|| EngineError::Malformed("no bundle".into()))?,
        };
        progress(&format!("online phase {}", k + 1));
        let before = s.ch.stats();
        let t = Instant::now();
        s.ch.send_u64(CMD_ONLINE)?;
        s.ch.send_bytes(&b.id())?;
        s.ch.flush()?;
        if s.ch.recv_u64()? != STATUS_OK {
            return Err(EngineError::Malformed(
                "the server does not hold this bundle (it was made with another server or \
                 already used); it is discarded"
                    .into(),
            ));
        }
        let y = b.online(&mut s.ch, &s.prog, &enc)?;
        let online_s = t.elapsed().as_secs_f64();
        let logits = s.prog.decode_output(&y);
        let class = logits
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0;
        out.push(Prediction {
            logits,
            class,
            online_s,
            online_bytes: s.ch.stats().since(&before).total(),
        });
    }
    s.bye()?;
    Ok(out)
}
