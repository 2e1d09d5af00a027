//! The two-party network protocol: offline preprocessing and online inference.
//!
//! Every tensor is shared as v = c + s with the client's share c fixed
//! offline and the server's share s known online:
//!
//! * input: the client draws c, sends x − c online;
//! * linear: offline the client sends Enc(c) and gets M·c − σ back; online
//!   the server computes M·s + b + σ (σ its random mask);
//! * ReLU: a garbled circuit on (c offline, s online) gives the client
//!   ReLU(v) >> shift − ρ; the client sends that minus a fresh offline share
//!   c', and the server adds ρ;
//! * quadratic: a square triple (a, a²) from BFV; the client sends c − a_c
//!   offline, the server opens e = v − a online, both compute shares of
//!   a·v² + b·v + c and the client re-masks as for ReLU;
//! * a node that works on some channels only (a mixed activation's ReLU,
//!   quadratic and truncations) runs its protocol on those elements; both
//!   shares of the others are 0;
//! * truncation: the faithful protocol of [`delphi_crypto::trunc`] (one OT
//!   per value offline, one field element online), then the client re-masks;
//!   sums, pools and constant products: local.
//!
//! Every client share is therefore fixed offline, which is what the HE
//! linear layers, the garbled ReLUs and the truncation all rely on.
//! * output: the server sends its share of the logits; only the client
//!   learns them.
//!
//! The server learns only values masked by client randomness; the client
//! learns only masked values and the logits.

use std::io::{Read, Write};

use rand::{CryptoRng, RngCore};
use seal_fhe::Ciphertext;

use delphi_crypto::channel::Channel;
use delphi_crypto::codec::Stored;
use delphi_crypto::codec::{Decoder, Encoder};
use delphi_crypto::field::F;
use delphi_crypto::ot::{CotKind, CotReceiverPool, CotSenderPool};
use delphi_crypto::relu::{
    client_offline_with as relu_client_offline, server_offline_with as relu_server_offline,
};
use delphi_crypto::relu::{ClientReluBundle, ReluSpec, ServerReluBundle};
use delphi_crypto::spool::Spool;
use delphi_crypto::trunc::{self, ClientTruncBundle, ServerTruncBundle, TruncKind};
use delphi_net::fixed::{linear_field, FixedOp, FixedProgram};
use delphi_net::linear::sum_pool;

use crate::error::{EngineError, Result};
use crate::he::{ClientHe, Packing, ServerHe, N, SLOTS};
use delphi_net::packing::{result_frame_bytes, FRESH_CT_BYTES};

use crate::seal_check::Expect;

/// Sends a ciphertext frame; returns its bytes on the wire (with the prefix).
fn send_fresh<C: Channel>(ch: &mut C, b: &[u8]) -> Result<u64> {
    ch.send_frame(b)?;
    Ok(8 + b.len() as u64)
}

/// Sends a result ciphertext in its compact form ([`ServerHe::result_to_wire`]).
fn send_result<C: Channel>(
    ch: &mut C,
    he: &ServerHe,
    c: &Ciphertext,
    kept: Option<&[u32]>,
) -> Result<()> {
    ch.send_frame(&he.result_to_wire(c, kept)?)?;
    Ok(())
}

/// Receives a compact result ciphertext that keeps the c₀ coefficients
/// `kept`; adds its bytes on the wire to `count`.
fn recv_result<C: Channel>(
    ch: &mut C,
    he: &ClientHe,
    kept: Option<&[u32]>,
    count: &mut HeCount,
) -> Result<Ciphertext> {
    let b = ch.recv_frame_bounded(result_frame_bytes(N) as u64)?;
    count.received(8 + b.len() as u64);
    he.result_from_wire(&b, kept)
}

/// Ciphertext traffic of one node, as the client sees it.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct HeCount {
    /// Ciphertext frames sent.
    pub sent_frames: u64,
    /// Their bytes (length prefixes included).
    pub sent_bytes: u64,
    /// Ciphertext frames received.
    pub received_frames: u64,
    /// Their bytes (length prefixes included).
    pub received_bytes: u64,
}

impl HeCount {
    fn sent(&mut self, bytes: u64) {
        self.sent_frames += 1;
        self.sent_bytes += bytes;
    }

    fn received(&mut self, bytes: u64) {
        self.received_frames += 1;
        self.received_bytes += bytes;
    }

    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.sent_bytes + self.received_bytes
    }
}

fn packing(prog: &FixedProgram, node: usize) -> Result<Packing> {
    match &prog.nodes[node].op {
        FixedOp::Linear { op, .. } => Packing::new(op).map_err(|reason| EngineError::Unsupported {
            layer: prog.nodes[node].layer.unwrap_or(0),
            reason,
        }),
        _ => Err(EngineError::Unsupported { layer: 0, reason: "not a linear node".into() }),
    }
}

/// The channel of each element a node works on.
fn active_channels(node: &delphi_net::fixed::Node) -> Vec<usize> {
    let per = (node.shape.height * node.shape.width).max(1);
    node.active().into_iter().map(|k| k / per).collect()
}

/// Applies the local operations (the same on both sides) to node `i`.
fn local_op(prog: &FixedProgram, i: usize, vals: &[Vec<F>]) -> Option<Vec<F>> {
    let node = &prog.nodes[i];
    let x = node.inputs.first().map(|&j| &vals[j][..])?;
    Some(match &node.op {
        FixedOp::MulConst(m) => {
            let m = F::from_i64(*m);
            x.iter().map(|v| *v * m).collect()
        }
        FixedOp::SumPool { kernel, stride } => {
            sum_pool(x, prog.nodes[node.inputs[0]].shape, *kernel, *stride, F::ZERO, |a, b| a + b).0
        }
        FixedOp::Add => x.iter().zip(&vals[node.inputs[1]]).map(|(a, b)| *a + *b).collect(),
        FixedOp::Sub => x.iter().zip(&vals[node.inputs[1]]).map(|(a, b)| *a - *b).collect(),
        FixedOp::Gather { index } => delphi_net::fixed::gather(index, &node.inputs, vals, 1),
        _ => return None,
    })
}

/// Time and bytes (both directions, seen by the client) of one program node.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NodeTrace {
    /// The program node.
    pub node: usize,
    /// The description layer it implements.
    pub layer: Option<usize>,
    /// The node's operation.
    pub kind: &'static str,
    /// Seconds spent.
    pub seconds: f64,
    /// Bytes exchanged (0 where the channel does not count).
    pub bytes: u64,
    /// Of which ciphertext frames (offline only).
    pub he: HeCount,
}

struct Tracer {
    nodes: Vec<NodeTrace>,
    start: std::time::Instant,
    bytes: u64,
}

impl Tracer {
    fn new<C: Channel>(ch: &C) -> Self {
        Tracer {
            nodes: Vec::new(),
            start: std::time::Instant::now(),
            bytes: ch.counted_bytes().unwrap_or(0),
        }
    }

    fn mark<C: Channel>(&mut self, ch: &C, prog: &FixedProgram, i: usize) {
        let now = std::time::Instant::now();
        let b = ch.counted_bytes().unwrap_or(0);
        let n = &prog.nodes[i];
        self.nodes.push(NodeTrace {
            node: i,
            layer: n.layer,
            kind: n.op.kind(),
            seconds: now.duration_since(self.start).as_secs_f64(),
            bytes: b - self.bytes,
            he: HeCount::default(),
        });
        self.start = now;
        self.bytes = b;
    }
}

/// What the client's online phase gives.
#[derive(Debug)]
pub struct ClientOutput {
    /// The logits, field elements at the program's output scale.
    pub logits: Vec<F>,
    /// Per-node time and bytes of the online phase.
    pub trace: Vec<NodeTrace>,
}

/// Client state for one inference.
pub struct ClientBundle {
    id: [u8; 16],
    offline_trace: Vec<NodeTrace>,
    shares: Vec<Vec<F>>,
    relus: Vec<Option<ClientReluBundle>>,
    truncs: Vec<Option<ClientTruncBundle>>,
    quads: Vec<Option<(Vec<F>, Vec<F>)>>,
}

/// Server state for one inference.
pub struct ServerBundle {
    id: [u8; 16],
    sigmas: Vec<Option<Vec<F>>>,
    relus: Vec<Option<ServerReluBundle>>,
    truncs: Vec<Option<ServerTruncBundle>>,
    quads: Vec<Option<(Vec<F>, Vec<F>)>>,
}

// Shares, masks and triples are wiped when a bundle is dropped (the relu
// and truncation halves wipe themselves).
impl Drop for ClientBundle {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.shares.iter_mut().for_each(|s| s.zeroize());
        for (a, b) in self.quads.iter_mut().flatten() {
            a.zeroize();
            b.zeroize();
        }
    }
}

impl Drop for ServerBundle {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.sigmas.iter_mut().flatten().for_each(|s| s.zeroize());
        for (a, b) in self.quads.iter_mut().flatten() {
            a.zeroize();
            b.zeroize();
        }
    }
}

impl std::fmt::Debug for ClientBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBundle").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ServerBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBundle").finish_non_exhaustive()
    }
}

/// Session setup, client side: makes keys and sends the public key.
pub fn client_setup<C: Channel>(ch: &mut C) -> Result<ClientHe> {
    let he = ClientHe::new()?;
    ch.send_frame(&he.public_key_bytes()?)?;
    ch.flush()?;
    Ok(he)
}

/// Session setup, server side: receives the client's public key.
pub fn server_setup<C: Channel>(ch: &mut C) -> Result<ServerHe> {
    let pk = ch.recv_frame_bounded(Expect::PublicKey.max_frame())?;
    ServerHe::new(&pk)
}

/// Bytes the client holds for one offline bundle of `prog` (every node's
/// share, the ReLUs' and truncations' garbled material, the quadratic
/// layers' masks), computed from the program alone: a client checks it
/// against its memory limit before it agrees to prepare anything, so a
/// server cannot make it allocate more than it allows.
pub fn client_bundle_bytes(prog: &FixedProgram) -> u64 {
    let f = std::mem::size_of::<F>() as u64;
    prog.nodes
        .iter()
        .map(|node| {
            let (len, active) = (node.shape.len(), node.active_len());
            let own = match &node.op {
                FixedOp::Relu { shift, bits } => delphi_crypto::relu::client_bundle_bytes(
                    active,
                    ReluSpec { shift: *shift, bits: *bits },
                ),
                FixedOp::Trunc { shift, kind } => trunc::client_bundle_bytes(active, *shift, *kind),
                FixedOp::Quad { .. } => 2 * f * active as u64,
                _ => 0,
            };
            f * len as u64 + own
        })
        .fold(0u64, u64::saturating_add)
}

/// The part of [`client_bundle_bytes`] that is garbled material (input
/// labels, tables, output conversions of the ReLUs and exact truncations):
/// what [`Material::Disk`] keeps out of memory.
pub fn client_spooled_bytes(prog: &FixedProgram) -> u64 {
    prog.nodes
        .iter()
        .map(|node| match &node.op {
            FixedOp::Relu { shift, bits } => delphi_crypto::relu::client_bundle_bytes(
                node.active_len(),
                ReluSpec { shift: *shift, bits: *bits },
            ),
            FixedOp::Trunc { shift, kind } => {
                trunc::client_spooled_bytes(node.active_len(), *shift, *kind)
            }
            _ => 0,
        })
        .fold(0u64, u64::saturating_add)
}

/// Where a client keeps a bundle's garbled material until its online phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Material {
    /// In memory (fastest; the client's memory grows with the network).
    #[default]
    Memory,
    /// In a temporary file in this directory, one per bundle, unlinked as it
    /// is made, and streamed back a chunk at a time online
    /// ([`delphi_crypto::spool`]): memory holds the shares, the quadratic
    /// layers' triples and one chunk of garbled material.
    Disk(std::path::PathBuf),
}

impl Material {
    /// A fresh spool for one bundle (none in memory).
    pub fn spool(&self) -> Result<Option<Spool>> {
        match self {
            Material::Memory => Ok(None),
            Material::Disk(dir) => Ok(Some(Spool::create(dir)?)),
        }
    }
}

/// Offline phase, client side. `prog` needs the architecture only (weights unused).
pub fn client_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    prog: &FixedProgram,
    he: &ClientHe,
    rng: &mut R,
) -> Result<ClientBundle> {
    client_offline_to(ch, prog, he, rng, &Material::Memory)
}

/// [`client_offline`] keeping the garbled material where `material` says.
pub fn client_offline_to<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    prog: &FixedProgram,
    he: &ClientHe,
    rng: &mut R,
    material: &Material,
) -> Result<ClientBundle> {
    let spool = material.spool()?;
    let n = prog.nodes.len();
    ch.agree_u64("program nodes", n as u64)?;
    let mut id = [0u8; 16];
    ch.recv_bytes(&mut id)?;
    let mut shares: Vec<Vec<F>> = Vec::with_capacity(n);
    let mut relus: Vec<Option<ClientReluBundle>> = (0..n).map(|_| None).collect();
    let mut truncs: Vec<Option<ClientTruncBundle>> = (0..n).map(|_| None).collect();
    let mut quads: Vec<Option<(Vec<F>, Vec<F>)>> = vec![None; n];
    let random = |len: usize, rng: &mut R| -> Vec<F> { (0..len).map(|_| F::random(rng)).collect() };
    let mut tracer = Tracer::new(ch);
    let mut ot = CotReceiverPool::new(CotKind::for_count(prog.correlated_ots()));
    for i in 0..n {
        let node = &prog.nodes[i];
        let len = node.shape.len();
        let mut hc = HeCount::default();
        let share = match &node.op {
            FixedOp::Input => random(len, rng),
            FixedOp::Linear { .. } => {
                let p = packing(prog, i)?;
                for c in he.encrypt_input(&p, &shares[node.inputs[0]])? {
                    hc.sent(send_fresh(ch, &c)?);
                }
                ch.flush()?;
                let mut res = Vec::with_capacity(p.output_polys());
                for kept in p.kept() {
                    res.push(recv_result(ch, he, Some(&kept), &mut hc)?);
                }
                he.decrypt_output(&p, &res)?
            }
            FixedOp::Relu { shift, bits } => {
                relus[i] = Some(relu_client_offline(
                    ch,
                    &node.gather(&shares[node.inputs[0]]),
                    ReluSpec { shift: *shift, bits: *bits },
                    rng,
                    spool.as_ref(),
                    &mut ot,
                )?);
                node.scatter(random(node.active_len(), rng), F::ZERO)
            }
            FixedOp::Trunc { shift, kind } => {
                truncs[i] = Some(trunc::client_offline_with(
                    ch,
                    &node.gather(&shares[node.inputs[0]]),
                    *shift,
                    *kind,
                    rng,
                    spool.as_ref(),
                    &mut ot,
                )?);
                node.scatter(random(node.active_len(), rng), F::ZERO)
            }
            FixedOp::Quad { .. } => {
                let x = &node.gather(&shares[node.inputs[0]]);
                let a_c = random(node.active_len(), rng);
                let mut sq = Vec::with_capacity(len);
                for chunk in a_c.chunks(SLOTS) {
                    hc.sent(send_fresh(ch, &he.encrypt_slots(chunk)?)?);
                    ch.flush()?;
                    let u = he.decrypt_slots(&recv_result(ch, he, None, &mut hc)?, chunk.len())?;
                    sq.extend(chunk.iter().zip(u).map(|(a, u)| *a * *a + u));
                }
                let opened: Vec<F> = x.iter().zip(&a_c).map(|(x, a)| *x - *a).collect();
                ch.send_fields(&opened)?;
                ch.flush()?;
                quads[i] = Some((a_c, sq));
                node.scatter(random(node.active_len(), rng), F::ZERO)
            }
            _ => local_op(prog, i, &shares).ok_or_else(|| EngineError::Unsupported {
                layer: node.layer.unwrap_or(0),
                reason: format!("{} has no input", node.op.kind()),
            })?,
        };
        shares.push(share);
        tracer.mark(ch, prog, i);
        if let Some(t) = tracer.nodes.last_mut() {
            t.he = hc;
        }
    }
    Ok(ClientBundle { id, offline_trace: tracer.nodes, shares, relus, truncs, quads })
}

/// Offline phase, server side.
pub fn server_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    prog: &FixedProgram,
    he: &ServerHe,
    rng: &mut R,
) -> Result<ServerBundle> {
    let n = prog.nodes.len();
    ch.agree_u64("program nodes", n as u64)?;
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    ch.send_bytes(&id)?;
    ch.flush()?;
    let mut sigmas: Vec<Option<Vec<F>>> = vec![None; n];
    let mut relus: Vec<Option<ServerReluBundle>> = (0..n).map(|_| None).collect();
    let mut truncs: Vec<Option<ServerTruncBundle>> = (0..n).map(|_| None).collect();
    let mut quads: Vec<Option<(Vec<F>, Vec<F>)>> = vec![None; n];
    let mut ot = CotSenderPool::new(CotKind::for_count(prog.correlated_ots()));
    for i in 0..n {
        let node = &prog.nodes[i];
        match &node.op {
            FixedOp::Linear { weight, .. } => {
                let p = packing(prog, i)?;
                let mut cts = Vec::with_capacity(p.input_polys());
                for _ in 0..p.input_polys() {
                    cts.push(he.fresh_from_wire(&ch.recv_frame_bounded(FRESH_CT_BYTES as u64)?)?);
                }
                let (res, sigma) = he.linear(&p, weight, &cts, rng)?;
                for (c, kept) in res.iter().zip(p.kept()) {
                    send_result(ch, he, c, Some(&kept))?;
                }
                ch.flush()?;
                sigmas[i] = Some(sigma);
            }
            FixedOp::Relu { shift, bits } => {
                let spec = ReluSpec { shift: *shift, bits: *bits };
                relus[i] = Some(relu_server_offline(ch, node.active_len(), spec, rng, &mut ot)?);
            }
            FixedOp::Trunc { shift, kind } => {
                truncs[i] = Some(trunc::server_offline_with(
                    ch,
                    node.active_len(),
                    *shift,
                    *kind,
                    rng,
                    &mut ot,
                )?);
            }
            FixedOp::Quad { .. } => {
                let len = node.active_len();
                let mut a_s = Vec::with_capacity(len);
                let mut sq = Vec::with_capacity(len);
                let mut remaining = len;
                while remaining > 0 {
                    let k = remaining.min(SLOTS);
                    let enc = he.fresh_from_wire(&ch.recv_frame_bounded(FRESH_CT_BYTES as u64)?)?;
                    let a: Vec<F> = (0..k).map(|_| F::random(rng)).collect();
                    let t: Vec<F> = (0..k).map(|_| F::random(rng)).collect();
                    send_result(ch, he, &he.square_cross(&enc, &a, &t)?, None)?;
                    ch.flush()?;
                    sq.extend(a.iter().zip(&t).map(|(a, t)| *a * *a + *t));
                    a_s.extend(a);
                    remaining -= k;
                }
                let mut opened = vec![F::ZERO; len];
                ch.recv_fields(&mut opened)?;
                // e's offline part: (c − a_c) − a_s; the online part adds the server's share.
                let pre: Vec<F> = opened.iter().zip(&a_s).map(|(o, a)| *o - *a).collect();
                quads[i] = Some((pre, a_s.into_iter().zip(sq).flat_map(|(a, s)| [a, s]).collect()));
            }
            _ => {}
        }
    }
    Ok(ServerBundle { id, sigmas, relus, truncs, quads })
}

impl ClientBundle {
    /// The bundle's id (shared with the server's half).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Per-node time and bytes of the offline phase.
    pub fn offline_trace(&self) -> &[NodeTrace] {
        &self.offline_trace
    }

    /// The client's share of every node (fixed offline). A local run that
    /// plays both parties adds the server's shares to check the protocol
    /// node by node ([`crate::run::run_local_with`]); a real client never
    /// needs them.
    pub fn shares(&self) -> &[Vec<F>] {
        &self.shares
    }

    /// Online phase, client side: returns the logits (field elements at the
    /// program's output scale) and the per-node trace. Takes the bundle by
    /// value: a bundle runs once, and a second use does not compile.
    ///
    /// ```compile_fail
    /// # use delphi_engine::protocol::ClientBundle;
    /// # fn twice(b: ClientBundle, ch: &mut delphi_crypto::channel::MemChannel, p: &delphi_net::FixedProgram) {
    /// let _ = b.online(ch, p, &[]);
    /// let _ = b.online(ch, p, &[]); // error: use of moved value
    /// # }
    /// ```
    pub fn online<C: Channel>(
        mut self,
        ch: &mut C,
        prog: &FixedProgram,
        input: &[F],
    ) -> Result<ClientOutput> {
        if input.len() != prog.nodes[0].shape.len() {
            return Err(EngineError::Input(format!("input of {} values", input.len())));
        }
        let mut tracer = Tracer::new(ch);
        let masked: Vec<F> = input.iter().zip(&self.shares[0]).map(|(x, r)| *x - *r).collect();
        ch.send_fields(&masked)?;
        ch.flush()?;
        for i in 0..prog.nodes.len() {
            if i > 0 {
                tracer.mark(ch, prog, i - 1);
            }
            let node = &prog.nodes[i];
            match &node.op {
                FixedOp::Relu { .. } => {
                    let bundle =
                        self.relus[i].take().ok_or(delphi_crypto::Error::BundleConsumed)?;
                    let out = bundle.online(ch)?;
                    let msg: Vec<F> =
                        out.iter().zip(node.gather(&self.shares[i])).map(|(o, r)| *o - r).collect();
                    ch.send_fields(&msg)?;
                    ch.flush()?;
                }
                FixedOp::Trunc { .. } => {
                    let bundle =
                        self.truncs[i].take().ok_or(delphi_crypto::Error::BundleConsumed)?;
                    let out = bundle.online(ch)?;
                    let msg: Vec<F> =
                        out.iter().zip(node.gather(&self.shares[i])).map(|(o, r)| *o - r).collect();
                    ch.send_fields(&msg)?;
                    ch.flush()?;
                }
                FixedOp::Quad { a, b, .. } => {
                    let (a_c, sq_c) =
                        self.quads[i].take().ok_or(delphi_crypto::Error::BundleConsumed)?;
                    let mut e = vec![F::ZERO; node.active_len()];
                    ch.recv_fields(&mut e)?;
                    let x = node.gather(&self.shares[node.inputs[0]]);
                    let mine = node.gather(&self.shares[i]);
                    let chans = active_channels(node);
                    let msg: Vec<F> = (0..e.len())
                        .map(|k| {
                            let (a, b) = (F::from_i64(a[chans[k]]), F::from_i64(b[chans[k]]));
                            let sq = e[k] * a_c[k] + e[k] * a_c[k] + sq_c[k];
                            a * sq + b * x[k] - mine[k]
                        })
                        .collect();
                    ch.send_fields(&msg)?;
                    ch.flush()?;
                }
                _ => {}
            }
        }
        let mut theirs = vec![F::ZERO; prog.nodes[prog.output].shape.len()];
        ch.recv_fields(&mut theirs)?;
        tracer.mark(ch, prog, prog.nodes.len() - 1);
        Ok(ClientOutput {
            logits: theirs.iter().zip(&self.shares[prog.output]).map(|(s, c)| *s + *c).collect(),
            trace: tracer.nodes,
        })
    }
}

impl ServerBundle {
    /// The bundle's id (shared with the client's half).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Online phase, server side. Takes the bundle by value: a bundle runs
    /// once, and a second use does not compile.
    pub fn online<C: Channel>(self, ch: &mut C, prog: &FixedProgram) -> Result<()> {
        self.online_keeping_shares(ch, prog).map(|_| ())
    }

    /// [`ServerBundle::online`] that returns the server's share of every
    /// node (for a local run that checks the protocol node by node).
    pub fn online_keeping_shares<C: Channel>(
        mut self,
        ch: &mut C,
        prog: &FixedProgram,
    ) -> Result<Vec<Vec<F>>> {
        let mut vals: Vec<Vec<F>> = Vec::with_capacity(prog.nodes.len());
        for i in 0..prog.nodes.len() {
            let node = &prog.nodes[i];
            let len = node.shape.len();
            let v = match &node.op {
                FixedOp::Input => {
                    let mut x = vec![F::ZERO; len];
                    ch.recv_fields(&mut x)?;
                    x
                }
                FixedOp::Linear { op, weight, bias } => {
                    let sigma =
                        self.sigmas[i].take().ok_or(delphi_crypto::Error::BundleConsumed)?;
                    let y = linear_field(op, &vals[node.inputs[0]], weight, bias);
                    y.into_iter().zip(sigma).map(|(y, s)| y + s).collect()
                }
                FixedOp::Relu { .. } => {
                    let bundle =
                        self.relus[i].take().ok_or(delphi_crypto::Error::BundleConsumed)?;
                    let rho = bundle.online(ch, &node.gather(&vals[node.inputs[0]]))?;
                    let mut msg = vec![F::ZERO; node.active_len()];
                    ch.recv_fields(&mut msg)?;
                    node.scatter(msg.into_iter().zip(rho).map(|(m, r)| m + r).collect(), F::ZERO)
                }
                FixedOp::Trunc { .. } => {
                    let bundle =
                        self.truncs[i].take().ok_or(delphi_crypto::Error::BundleConsumed)?;
                    let t = bundle.online(ch, &node.gather(&vals[node.inputs[0]]))?;
                    let mut msg = vec![F::ZERO; node.active_len()];
                    ch.recv_fields(&mut msg)?;
                    node.scatter(msg.into_iter().zip(t).map(|(m, t)| m + t).collect(), F::ZERO)
                }
                FixedOp::Quad { a, b, c } => {
                    let (pre, pairs) =
                        self.quads[i].take().ok_or(delphi_crypto::Error::BundleConsumed)?;
                    let x = node.gather(&vals[node.inputs[0]]);
                    let e: Vec<F> = pre.iter().zip(&x).map(|(p, x)| *p + *x).collect();
                    ch.send_fields(&e)?;
                    ch.flush()?;
                    let mut msg = vec![F::ZERO; e.len()];
                    ch.recv_fields(&mut msg)?;
                    let chans = active_channels(node);
                    let out = (0..e.len())
                        .map(|k| {
                            let j = chans[k];
                            let (a, b, c) =
                                (F::from_i64(a[j]), F::from_i64(b[j]), F::from_i64(c[j]));
                            let (a_s, sq_s) = (pairs[2 * k], pairs[2 * k + 1]);
                            let sq = e[k] * e[k] + e[k] * a_s + e[k] * a_s + sq_s;
                            a * sq + b * x[k] + c + msg[k]
                        })
                        .collect();
                    node.scatter(out, F::ZERO)
                }
                _ => local_op(prog, i, &vals).ok_or_else(|| EngineError::Unsupported {
                    layer: node.layer.unwrap_or(0),
                    reason: format!("{} has no input", node.op.kind()),
                })?,
            };
            vals.push(v);
        }
        ch.send_fields(&vals[prog.output])?;
        ch.flush()?;
        Ok(vals)
    }
}

/// A digest of what both halves of a bundle depend on: the program's
/// operations, wiring, shapes and public parameters (not the weights).
pub fn program_digest(prog: &FixedProgram) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"delphi program v2");
    for n in &prog.nodes {
        h.update(n.op.kind().as_bytes());
        let params: [i64; 3] = match &n.op {
            FixedOp::Relu { shift, bits: Some(b) } => [*shift as i64, b.lo as i64, b.hi as i64],
            FixedOp::Relu { shift, bits: None } => [*shift as i64, 0, 0],
            FixedOp::Trunc { shift, kind } => {
                let code = match kind {
                    TruncKind::Faithful => 0,
                    TruncKind::Exact => 1,
                    TruncKind::ExactWide => 2,
                };
                [*shift as i64, code, 0]
            }
            FixedOp::Quad { a, b, c } => {
                for v in a.iter().chain(b).chain(c) {
                    h.update(v.to_le_bytes());
                }
                [a.len() as i64, 0, 0]
            }
            FixedOp::MulConst(m) => [*m, 0, 0],
            FixedOp::SumPool { kernel, stride } => [*kernel as i64, *stride as i64, 0],
            FixedOp::Linear { op, .. } => [op.kernel as i64, op.stride as i64, op.pad as i64],
            FixedOp::Gather { index } => {
                for v in index {
                    h.update(v.to_le_bytes());
                }
                [index.len() as i64, 0, 0]
            }
            FixedOp::Input | FixedOp::Add | FixedOp::Sub => [0; 3],
        };
        for v in params {
            h.update(v.to_le_bytes());
        }
        for v in [n.shape.channels, n.shape.height, n.shape.width] {
            h.update((v as u64).to_le_bytes());
        }
        for &i in &n.inputs {
            h.update((i as u64).to_le_bytes());
        }
        if let Some(ch) = &n.channels {
            h.update(b"channels");
            h.update(ch.iter().map(|&on| on as u8).collect::<Vec<u8>>());
        }
        h.update(b";");
    }
    h.finalize().into()
}

const BUNDLE_MAGIC: u64 = u64::from_le_bytes(*b"DLPHBND1");
const SIDE_CLIENT: u64 = 1;
const SIDE_SERVER: u64 = 2;
/// Node flags: which parts a stored node has.
const HAS_SIGMA: u64 = 1 << 0;
const HAS_RELU: u64 = 1 << 1;
const HAS_TRUNC: u64 = 1 << 2;
const HAS_QUAD: u64 = 1 << 3;

fn write_header<W: Write>(
    e: &mut Encoder<W>,
    side: u64,
    prog: &FixedProgram,
    id: &[u8; 16],
) -> Result<()> {
    e.u64(BUNDLE_MAGIC)?;
    e.u64(side)?;
    e.bytes(&program_digest(prog))?;
    e.bytes(id)?;
    e.u64(prog.nodes.len() as u64)?;
    Ok(())
}

fn read_header<R: Read>(d: &mut Decoder<R>, side: u64, prog: &FixedProgram) -> Result<[u8; 16]> {
    if d.u64()? != BUNDLE_MAGIC {
        return Err(EngineError::Bundle("not a stored DELPHI bundle".into()));
    }
    let s = d.u64()?;
    if s != side {
        return Err(EngineError::Bundle(format!(
            "a stored {} bundle where a {} bundle was expected",
            if s == SIDE_CLIENT { "client" } else { "server" },
            if side == SIDE_CLIENT { "client" } else { "server" },
        )));
    }
    let mut digest = [0u8; 32];
    d.bytes(&mut digest)?;
    if digest != program_digest(prog) {
        return Err(EngineError::Bundle(
            "the stored bundle was made for a different network".into(),
        ));
    }
    let mut id = [0u8; 16];
    d.bytes(&mut id)?;
    if d.u64()? != prog.nodes.len() as u64 {
        return Err(EngineError::Bundle("stored bundle: wrong node count".into()));
    }
    Ok(id)
}

fn flag(present: bool, bit: u64) -> u64 {
    if present {
        bit
    } else {
        0
    }
}

fn flags_of(flags: u64, allowed: u64) -> Result<u64> {
    if flags & !allowed != 0 {
        return Err(EngineError::Bundle("stored bundle: unknown node flags".into()));
    }
    Ok(flags)
}

/// One node's parts that both sides' bundles have: its ReLU bundle, its
/// truncation bundle and its quadratic material (two vectors).
struct NodeParts<'a, R, T> {
    relu: &'a Option<R>,
    trunc: &'a Option<T>,
    quad: &'a Option<(Vec<F>, Vec<F>)>,
}

impl<R: Stored, T: Stored> NodeParts<'_, R, T> {
    /// Their flags.
    fn flags(&self) -> u64 {
        flag(self.relu.is_some(), HAS_RELU)
            | flag(self.trunc.is_some(), HAS_TRUNC)
            | flag(self.quad.is_some(), HAS_QUAD)
    }

    /// Writes the present ones, in flag order.
    fn store<W: Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        if let Some(r) = self.relu {
            r.store_to(e)?;
        }
        if let Some(t) = self.trunc {
            t.store_to(e)?;
        }
        if let Some((x, y)) = self.quad {
            e.fields(x)?;
            e.fields(y)?;
        }
        Ok(())
    }
}

/// A node's parts as read back: ReLU, truncation, quadratic material.
type LoadedParts<R, T> = (Option<R>, Option<T>, Option<(Vec<F>, Vec<F>)>);

/// Reads the parts `flags` names (quadratic vectors of `quad_lens`).
fn load_parts<Rd: Read, R: Stored, T: Stored>(
    d: &mut Decoder<Rd>,
    flags: u64,
    quad_lens: (usize, usize),
) -> Result<LoadedParts<R, T>> {
    let relu = (flags & HAS_RELU != 0).then(|| R::load_from(d)).transpose()?;
    let trunc = (flags & HAS_TRUNC != 0).then(|| T::load_from(d)).transpose()?;
    let quad = if flags & HAS_QUAD != 0 {
        Some((d.fields(quad_lens.0, "stored triples")?, d.fields(quad_lens.1, "stored triples")?))
    } else {
        None
    };
    Ok((relu, trunc, quad))
}

/// Appends a node's loaded parts to a bundle's per-node lists.
fn push_parts<R, T>(
    (relu, trunc, quad): LoadedParts<R, T>,
    relus: &mut Vec<Option<R>>,
    truncs: &mut Vec<Option<T>>,
    quads: &mut Vec<Option<(Vec<F>, Vec<F>)>>,
) {
    relus.push(relu);
    truncs.push(trunc);
    quads.push(quad);
}

impl ClientBundle {
    fn parts(&self, i: usize) -> NodeParts<'_, ClientReluBundle, ClientTruncBundle> {
        NodeParts { relu: &self.relus[i], trunc: &self.truncs[i], quad: &self.quads[i] }
    }

    /// Writes the bundle (secret material: protect the file like a key).
    pub fn store<W: Write>(&self, prog: &FixedProgram, w: W) -> Result<()> {
        let mut e = Encoder::new(w);
        write_header(&mut e, SIDE_CLIENT, prog, &self.id)?;
        for i in 0..prog.nodes.len() {
            let parts = self.parts(i);
            e.u64(parts.flags())?;
            e.fields(&self.shares[i])?;
            parts.store(&mut e)?;
        }
        Ok(())
    }

    /// Reads a bundle written by [`ClientBundle::store`] for the same program.
    pub fn load<R: Read>(prog: &FixedProgram, r: R) -> Result<Self> {
        Self::load_to(prog, r, &Material::Memory)
    }

    /// [`ClientBundle::load`] keeping the garbled material where `material`
    /// says (read a piece at a time: a spooled load never holds it).
    pub fn load_to<R: Read>(prog: &FixedProgram, r: R, material: &Material) -> Result<Self> {
        let mut d = Decoder::with_spool(r, material.spool()?);
        let id = read_header(&mut d, SIDE_CLIENT, prog)?;
        let n = prog.nodes.len();
        let mut b = ClientBundle {
            id,
            offline_trace: Vec::new(),
            shares: Vec::with_capacity(n),
            relus: Vec::with_capacity(n),
            truncs: Vec::with_capacity(n),
            quads: Vec::with_capacity(n),
        };
        for node in &prog.nodes {
            let flags = flags_of(d.u64()?, HAS_RELU | HAS_TRUNC | HAS_QUAD)?;
            b.shares.push(d.fields(node.shape.len(), "stored shares")?);
            let q = node.active_len();
            push_parts(
                load_parts(&mut d, flags, (q, q))?,
                &mut b.relus,
                &mut b.truncs,
                &mut b.quads,
            );
        }
        Ok(b)
    }
}

impl ServerBundle {
    fn parts(&self, i: usize) -> NodeParts<'_, ServerReluBundle, ServerTruncBundle> {
        NodeParts { relu: &self.relus[i], trunc: &self.truncs[i], quad: &self.quads[i] }
    }

    /// Writes the bundle (secret material: protect the file like a key).
    pub fn store<W: Write>(&self, prog: &FixedProgram, w: W) -> Result<()> {
        let mut e = Encoder::new(w);
        write_header(&mut e, SIDE_SERVER, prog, &self.id)?;
        for i in 0..prog.nodes.len() {
            let parts = self.parts(i);
            e.u64(flag(self.sigmas[i].is_some(), HAS_SIGMA) | parts.flags())?;
            if let Some(s) = &self.sigmas[i] {
                e.fields(s)?;
            }
            parts.store(&mut e)?;
        }
        Ok(())
    }

    /// Reads a bundle written by [`ServerBundle::store`] for the same program.
    pub fn load<R: Read>(prog: &FixedProgram, r: R) -> Result<Self> {
        let mut d = Decoder::new(r);
        let id = read_header(&mut d, SIDE_SERVER, prog)?;
        let n = prog.nodes.len();
        let mut b = ServerBundle {
            id,
            sigmas: Vec::with_capacity(n),
            relus: Vec::with_capacity(n),
            truncs: Vec::with_capacity(n),
            quads: Vec::with_capacity(n),
        };
        for node in &prog.nodes {
            let flags = flags_of(d.u64()?, HAS_SIGMA | HAS_RELU | HAS_TRUNC | HAS_QUAD)?;
            let sigma = (flags & HAS_SIGMA != 0)
                .then(|| d.fields(node.shape.len(), "stored masks"))
                .transpose()?;
            b.sigmas.push(sigma);
            let q = node.active_len();
            let parts = load_parts(&mut d, flags, (q, 2 * q))?;
            push_parts(parts, &mut b.relus, &mut b.truncs, &mut b.quads);
        }
        Ok(b)
    }
}
