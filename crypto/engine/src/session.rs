//! Client–server sessions over TCP: what `delphi serve` and `delphi infer` run.
//!
//! Messages, after the TCP connection:
//! 1. server → client: a hello frame (JSON: protocol version, bundles to
//!    preprocess ahead) and the architecture frame (the network description
//!    with weights replaced by neutral values: the client learns the
//!    architecture, not the weights);
//! 2. client → server: its BFV public key;
//! 3. then commands from the client, one `u64` each: [`CMD_OFFLINE`] runs one
//!    offline phase (a new bundle on each side), [`CMD_ONLINE`] runs the
//!    online phase on the oldest unused bundle, [`CMD_BYE`] ends the session.
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
use crate::protocol::{
    client_offline, client_setup, server_offline, server_setup, ClientBundle, ServerBundle,
};

/// Version of the session messages.
pub const SESSION_VERSION: u32 = 1;
/// Command: run one offline phase.
pub const CMD_OFFLINE: u64 = 1;
/// Command: run one online phase.
pub const CMD_ONLINE: u64 = 2;
/// Command: end the session.
pub const CMD_BYE: u64 = 0;
/// The most bundles a server holds for one client.
pub const MAX_BUNDLES: usize = 64;
/// The largest architecture frame accepted: 256 MiB.
pub const MAX_ARCH_FRAME: u64 = 256 << 20;

#[derive(Serialize, Deserialize)]
struct Hello {
    version: u32,
    preprocess: usize,
}

/// Serves one client on `stream` until it says goodbye or fails.
pub fn serve_connection(
    stream: TcpStream,
    net: &Network,
    prog: &FixedProgram,
    preprocess: usize,
    timeout: Duration,
) -> Result<usize> {
    let mut ch = TcpChannel::new(stream)?.with_timeout(Some(timeout))?;
    let hello = Hello {
        version: SESSION_VERSION,
        preprocess: preprocess.clamp(1, MAX_BUNDLES),
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
                if bundles.len() >= MAX_BUNDLES {
                    return Err(EngineError::Malformed(format!(
                        "client asked for more than {MAX_BUNDLES} bundles"
                    )));
                }
                bundles.push_back(server_offline(&mut ch, prog, &he, &mut rng)?);
            }
            CMD_ONLINE => {
                let mut b = bundles.pop_front().ok_or_else(|| {
                    EngineError::Malformed("online phase requested with no offline bundle".into())
                })?;
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

/// Connects to a server and runs one private inference per input.
/// `progress` receives human-readable phase messages.
pub fn infer<A: ToSocketAddrs>(
    addr: A,
    inputs: &[Vec<f32>],
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> Result<Vec<Prediction>> {
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
    for x in inputs {
        if x.len() != arch.input.len() {
            return Err(EngineError::Malformed(format!(
                "an input has {} values but the served network takes {} ({})",
                x.len(),
                arch.input.len(),
                arch.input
            )));
        }
    }
    progress(&format!(
        "connected: {} ({} ReLUs, {} quadratics per inference)",
        arch.name,
        prog.activation_counts().0,
        prog.activation_counts().1
    ));
    let he = client_setup(&mut ch)?;
    let mut rng = secret_rng();
    let mut bundles: VecDeque<ClientBundle> = VecDeque::new();
    let ahead = hello
        .preprocess
        .clamp(1, MAX_BUNDLES)
        .min(inputs.len().max(1));
    let mut out = Vec::with_capacity(inputs.len());
    let mut prepared = 0;
    while bundles.len() < ahead && prepared < inputs.len() {
        progress(&format!("offline phase {}", prepared + 1));
        ch.send_u64(CMD_OFFLINE)?;
        bundles.push_back(client_offline(&mut ch, &prog, &he, &mut rng)?);
        prepared += 1;
    }
    for (k, x) in inputs.iter().enumerate() {
        let enc = prog.encode_input(x)?;
        let mut b = bundles
            .pop_front()
            .ok_or_else(|| EngineError::Malformed("no bundle".into()))?;
        progress(&format!("online phase {}", k + 1));
        let before = ch.stats();
        let t = Instant::now();
        ch.send_u64(CMD_ONLINE)?;
        let y = b.online(&mut ch, &prog, &enc)?;
        let online_s = t.elapsed().as_secs_f64();
        let logits = prog.decode_output(&y);
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
            online_bytes: ch.stats().since(&before).total(),
        });
        if prepared < inputs.len() {
            progress(&format!("offline phase {}", prepared + 1));
            ch.send_u64(CMD_OFFLINE)?;
            bundles.push_back(client_offline(&mut ch, &prog, &he, &mut rng)?);
            prepared += 1;
        }
    }
    ch.send_u64(CMD_BYE)?;
    ch.flush()?;
    Ok(out)
}
