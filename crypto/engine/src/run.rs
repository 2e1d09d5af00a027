//! Running both parties in one process over loopback TCP: the engine behind
//! `delphi verify` and `delphi bench network`.

use std::net::TcpListener;
use std::thread;
use std::time::Instant;

use serde::Serialize;

use delphi_crypto::block::secret_rng;
use delphi_crypto::channel::{Counting, TcpChannel};
use delphi_crypto::field::F;
use delphi_net::fixed::{FixedOp, FixedProgram, NodeDeviation};

use crate::error::{EngineError, Result};
use crate::protocol::{client_offline, client_setup, server_offline, server_setup, NodeTrace};

/// Measurements of one inference.
#[derive(Clone, Debug, Serialize)]
pub struct Inference {
    /// Offline wall time (both parties done), seconds.
    pub offline_s: f64,
    /// Online wall time (client sends its input to client holding the logits), seconds.
    pub online_s: f64,
    /// Offline bytes, both directions.
    pub offline_bytes: u64,
    /// Online bytes, both directions.
    pub online_bytes: u64,
    /// The secure logits equal the fixed-point reference exactly.
    pub correct: bool,
    /// Logits that differ from the reference (probabilistic truncation).
    pub logits_differing: usize,
    /// Largest difference from the reference, in units of the last place.
    pub max_ulp_error: u64,
    /// Largest difference from the reference over the largest reference logit
    /// (magnitudes): how much truncation errors moved the logits.
    pub max_rel_error: f64,
    /// The predicted class agrees with the reference's.
    pub same_class: bool,
    /// The secure logits, decoded.
    pub logits: Vec<f64>,
    /// Ciphertext traffic of the offline phase (included in `offline_bytes`).
    pub offline_he: crate::protocol::HeCount,
    /// Per description layer, measured on the client's side of the channel: the
    /// server's online work on a linear layer shows up in the layer that waits
    /// for it (the next ReLU or quadratic).
    pub layers: Vec<LayerCost>,
    /// The node-by-node check of this run ([`run_local_with`] with checking on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_check: Option<NodeCheck>,
}

/// Every node of a run compared with the reference applied to the run's
/// own inputs ([`FixedProgram::check_node`]).
#[derive(Clone, Debug, Serialize)]
pub struct NodeCheck {
    /// Nodes compared.
    pub nodes: usize,
    /// Nodes outside what the protocol allows (none when correct).
    pub failing: Vec<NodeDeviation>,
    /// Reduced-ReLU nodes: the largest deviation seen and the bound.
    pub reduced_relus: Vec<NodeDeviation>,
    /// Reduced ReLU inputs outside their windows (where no bound is stated).
    pub outside_window: usize,
}

impl NodeCheck {
    /// Whether every node is within what the protocol allows.
    pub fn ok(&self) -> bool {
        self.failing.is_empty()
    }

    fn of(prog: &FixedProgram, client: &[Vec<F>], server: &[Vec<F>]) -> NodeCheck {
        let vals: Vec<Vec<F>> = client
            .iter()
            .zip(server)
            .map(|(c, s)| c.iter().zip(s).map(|(c, s)| *c + *s).collect())
            .collect();
        let mut check = NodeCheck {
            nodes: vals.len(),
            failing: Vec::new(),
            reduced_relus: Vec::new(),
            outside_window: 0,
        };
        for i in 0..vals.len().min(prog.nodes.len()) {
            let d = prog.check_node(i, &vals);
            check.outside_window += d.outside_window;
            if matches!(prog.nodes[i].op, FixedOp::Relu { bits: Some(_), .. }) {
                check.reduced_relus.push(d.clone());
            }
            if !d.ok() {
                check.failing.push(d);
            }
        }
        check
    }
}

/// Time and bytes of one description layer in one inference.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerCost {
    /// Index in the description's `layers` (none: the input).
    pub layer: Option<usize>,
    /// The program operations that implement it.
    pub ops: Vec<&'static str>,
    /// Offline seconds.
    pub offline_s: f64,
    /// Online seconds.
    pub online_s: f64,
    /// Offline bytes, both directions.
    pub offline_bytes: u64,
    /// Online bytes, both directions.
    pub online_bytes: u64,
}

fn per_layer(offline: &[NodeTrace], online: &[NodeTrace]) -> Vec<LayerCost> {
    fn slot(out: &mut Vec<LayerCost>, t: &NodeTrace) -> usize {
        match out.iter().position(|l| l.layer == t.layer) {
            Some(p) => p,
            None => {
                out.push(LayerCost { layer: t.layer, ..Default::default() });
                out.len() - 1
            }
        }
    }
    let mut out: Vec<LayerCost> = Vec::new();
    for t in offline {
        let p = slot(&mut out, t);
        let l = &mut out[p];
        l.offline_s += t.seconds;
        l.offline_bytes += t.bytes;
        if !l.ops.contains(&t.kind) {
            l.ops.push(t.kind);
        }
    }
    for t in online {
        let p = slot(&mut out, t);
        out[p].online_s += t.seconds;
        out[p].online_bytes += t.bytes;
    }
    out
}

/// Summary of a local two-party run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// ReLUs per inference.
    pub relus: usize,
    /// Quadratic activations per inference.
    pub quads: usize,
    /// Key generation and key transfer, seconds.
    pub setup_s: f64,
    /// Public-key bytes sent.
    pub setup_bytes: u64,
    /// One entry per inference.
    pub inferences: Vec<Inference>,
    /// Peak resident memory of the process holding both parties, bytes.
    pub peak_rss_bytes: u64,
}

/// Peak resident set size of this process (Linux), or 0.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:")
}

/// The process's resident memory now, bytes (Linux; 0 elsewhere).
pub fn current_rss_bytes() -> u64 {
    proc_status_kb("VmRSS:")
}

fn proc_status_kb(field: &str) -> u64 {
    proc_kb("/proc/self/status", field).map_or(0, |kb| kb * 1024)
}

/// The kB figure after `field` in a /proc file (`None` where it cannot be
/// read).
pub(crate) fn proc_kb(file: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(file).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
    })
}

fn argmax(v: &[F]) -> usize {
    delphi_net::eval::argmax_iter(v.iter().map(|x| x.to_signed()))
}

/// Runs one inference per input between a server thread and a client
/// thread over loopback TCP, and compares each result with the reference.
pub fn run_local(
    prog: &FixedProgram,
    inputs: &[Vec<F>],
    progress: &dyn Fn(&str),
) -> Result<RunReport> {
    run_local_with(prog, inputs, progress, false)
}

/// [`run_local`]; with `check_nodes`, also keeps both parties' shares of
/// every node and checks the run node by node ([`NodeCheck`]): each node
/// against the reference applied to the run's own inputs, so a bounded
/// error (a reduced ReLU, a truncation) is checked where it arises instead
/// of through everything after it.
pub fn run_local_with(
    prog: &FixedProgram,
    inputs: &[Vec<F>],
    progress: &dyn Fn(&str),
    check_nodes: bool,
) -> Result<RunReport> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(delphi_crypto::Error::from)?;
    let addr = listener.local_addr().map_err(delphi_crypto::Error::from)?;
    let sp = prog.clone();
    let n = inputs.len();
    type ServerRuns = Vec<(u64, u64, Option<Vec<Vec<F>>>)>;
    let server = thread::spawn(move || -> Result<ServerRuns> {
        let (stream, _) = listener.accept().map_err(delphi_crypto::Error::from)?;
        let mut ch = Counting::new(TcpChannel::new(stream)?);
        let mut rng = secret_rng();
        let he = server_setup(&mut ch)?;
        let mut bytes = Vec::with_capacity(n);
        for _ in 0..n {
            let a = ch.stats();
            let b = server_offline(&mut ch, &sp, &he, &mut rng)?;
            let m = ch.stats();
            let shares = if check_nodes {
                Some(b.online_keeping_shares(&mut ch, &sp)?)
            } else {
                b.online(&mut ch, &sp)?;
                None
            };
            let e = ch.stats();
            bytes.push((m.since(&a).sent, e.since(&m).sent, shares));
        }
        Ok(bytes)
    });
    let mut ch = Counting::new(TcpChannel::connect(addr)?);
    let mut rng = secret_rng();
    let t = Instant::now();
    progress("generating keys");
    let he = client_setup(&mut ch)?;
    let setup_s = t.elapsed().as_secs_f64();
    let setup_bytes = ch.stats().sent;
    let mut runs = Vec::with_capacity(n);
    for (k, x) in inputs.iter().enumerate() {
        progress(&format!("inference {}/{n}: offline", k + 1));
        let a = ch.stats();
        let t = Instant::now();
        let b = client_offline(&mut ch, prog, &he, &mut rng)?;
        let offline_trace = b.offline_trace().to_vec();
        let client_shares = check_nodes.then(|| b.shares().to_vec());
        let offline_s = t.elapsed().as_secs_f64();
        let m = ch.stats();
        progress(&format!("inference {}/{n}: online", k + 1));
        let t = Instant::now();
        let crate::protocol::ClientOutput { logits: got, trace: online_trace } =
            b.online(&mut ch, prog, x)?;
        let online_s = t.elapsed().as_secs_f64();
        let e = ch.stats();
        let want = prog.eval(x)?;
        let diffs: Vec<u64> = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g.to_signed() - w.to_signed()).unsigned_abs())
            .collect();
        runs.push((
            offline_s,
            online_s,
            m.since(&a).sent,
            e.since(&m).sent,
            Inference {
                offline_s,
                online_s,
                offline_bytes: 0,
                online_bytes: 0,
                correct: got == want,
                logits_differing: diffs.iter().filter(|d| **d != 0).count(),
                max_ulp_error: diffs.iter().copied().max().unwrap_or(0),
                max_rel_error: diffs.iter().copied().max().unwrap_or(0) as f64
                    / want.iter().map(|w| w.to_signed().unsigned_abs()).max().unwrap_or(0).max(1)
                        as f64,
                same_class: argmax(&got) == argmax(&want),
                logits: prog.decode_output(&got),
                offline_he: offline_trace.iter().fold(
                    crate::protocol::HeCount::default(),
                    |mut acc, t| {
                        acc.sent_frames += t.he.sent_frames;
                        acc.sent_bytes += t.he.sent_bytes;
                        acc.received_frames += t.he.received_frames;
                        acc.received_bytes += t.he.received_bytes;
                        acc
                    },
                ),
                layers: per_layer(&offline_trace, &online_trace),
                node_check: None,
            },
            client_shares,
        ));
    }
    let server_bytes =
        server.join().map_err(|_| EngineError::Internal("the server thread panicked".into()))??;
    let inferences = runs
        .into_iter()
        .zip(server_bytes)
        .map(|((_, _, c_off, c_on, mut inf, cs), (s_off, s_on, ss))| {
            inf.offline_bytes = c_off + s_off;
            inf.online_bytes = c_on + s_on;
            if let (Some(c), Some(s)) = (cs, ss) {
                inf.node_check = Some(NodeCheck::of(prog, &c, &s));
            }
            inf
        })
        .collect();
    let (relus, quads) = prog.activation_counts();
    Ok(RunReport {
        relus,
        quads,
        setup_s,
        setup_bytes,
        inferences,
        peak_rss_bytes: peak_rss_bytes(),
    })
}
