//! Exact traffic of every protocol step, both directions, from the protocol
//! itself (message by message). Ciphertexts travel in compact forms of fixed
//! size (the client's fresh ones as a seed and c₀, [`FRESH_CT_BYTES`]; the
//! server's results as c₁ and the kept part of c₀) and are counted exactly;
//! a [`CtSizes`] keeps what calibration measured, for the record (and the
//! public key, which SEAL serialises with zstd).
//!
//! The test `tests/bytes.rs` runs real networks and checks every non-
//! ciphertext byte and every ciphertext frame against these formulas.

use delphi_crypto::channel::FIELD_BYTES;
use delphi_crypto::garbled::{GcCircuit, GcFunction};
use delphi_crypto::ot::iknp::KAPPA;
use delphi_crypto::ot::silent::{iknp_bytes, silent_extensions, CotKind, FERRET};
use delphi_crypto::relu::{relu_circuit_for, ReluSpec};
use delphi_net::fixed::{FixedOp, FixedProgram};
use delphi_net::packing::{result_frame_bytes, Packing, FRESH_CT_BYTES, N as SLOTS};

/// A `u64` agreed by both sides: 8 bytes each way.
const AGREE: u64 = 16;
/// A bundle id (16) and a hash key (16), server to client.
const ID_AND_KEY: u64 = 32;
/// One bundle id.
const ID: u64 = 16;
/// Chou–Orlandi base OTs for the extension: one point from the sender and
/// one per base OT from the receiver, 32 bytes each.
pub const BASE_OT: u64 = 32 + KAPPA as u64 * 32;
/// A correlated-OT pool's set-up: the base OTs, then its hash key and code
/// seed (two blocks).
pub const POOL_SETUP: u64 = BASE_OT + 32;
/// Bytes of a frame's length prefix.
pub const FRAME_PREFIX: u64 = 8;

/// Field elements on the wire.
fn fields(n: usize) -> u64 {
    (n * FIELD_BYTES) as u64
}

/// Correlated-OT extension of `m` OTs: one 128-bit column per OT, padded to
/// a multiple of 128.
fn cot(m: usize) -> u64 {
    (m.div_ceil(KAPPA) * KAPPA * KAPPA / 8) as u64
}

/// Mean serialised ciphertext sizes as calibration measured them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CtSizes {
    /// A fresh encryption (the client's Enc(r) for linear layers and
    /// triples), compact: for the record, predictions count
    /// [`FRESH_CT_BYTES`] a frame.
    pub fresh: f64,
    /// A linear layer's result after switching to the last prime, in its
    /// compact form (a mean over the calibration's layers, for the record:
    /// predictions count results exactly, [`Traffic::result_bytes`]).
    pub linear_result: f64,
    /// A square-triple reply, compact (for the record, likewise).
    pub triple_reply: f64,
    /// The client's public key (setup).
    pub public_key: f64,
}

/// Traffic of one step: plain bytes (exact) and ciphertext frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Traffic {
    /// Non-ciphertext bytes, both directions.
    pub bytes: u64,
    /// Fresh ciphertext frames (client to server).
    pub fresh_frames: u64,
    /// Linear-result frames (server to client).
    pub result_frames: u64,
    /// Triple-reply frames (server to client).
    pub triple_frames: u64,
    /// Bytes of both kinds of result frames, prefixes included: exact (a
    /// result's compact form has a fixed size,
    /// [`delphi_net::packing::result_frame_bytes`]).
    pub result_bytes: u64,
    /// Round trips (a message each way that the other side waits for).
    pub rounds: f64,
}

impl Traffic {
    /// Total bytes, every ciphertext frame included.
    pub fn total(&self) -> f64 {
        (self.bytes
            + self.fresh_frames * (FRAME_PREFIX + FRESH_CT_BYTES as u64)
            + self.result_bytes) as f64
    }

    /// Ciphertext frames of all kinds.
    pub fn frames(&self) -> u64 {
        self.fresh_frames + self.result_frames + self.triple_frames
    }
}

fn with_pool((mut off, on): (Traffic, Traffic), ot: Traffic) -> (Traffic, Traffic) {
    off.bytes += ot.bytes;
    off.rounds += ot.rounds;
    (off, on)
}

/// Offline and online traffic of one program node.
pub fn node_traffic(prog: &FixedProgram, i: usize) -> (Traffic, Traffic) {
    node_traffic_with(prog, i, &OtPlan::of(prog))
}

/// [`node_traffic`] with the program's [`OtPlan`] at hand.
pub fn node_traffic_with(prog: &FixedProgram, i: usize, ots: &OtPlan) -> (Traffic, Traffic) {
    let node = &prog.nodes[i];
    let n = node.shape.len();
    let mut off = Traffic::default();
    let mut on = Traffic::default();
    match &node.op {
        FixedOp::Input => {
            on.bytes = fields(n);
            on.rounds = 0.5;
        }
        FixedOp::Linear { op, .. } => {
            if let Ok(p) = Packing::new(op) {
                off.fresh_frames = p.input_polys() as u64;
                off.result_frames = p.output_polys() as u64;
                off.result_bytes =
                    p.kept_counts().map(|k| FRAME_PREFIX + result_frame_bytes(k) as u64).sum();
                off.rounds = 1.0;
            }
        }
        // A node working on some channels only runs on those elements.
        // Garbled-circuit layers take their correlated OTs from the pool.
        FixedOp::Relu { shift, bits } => {
            let spec = ReluSpec { shift: *shift, bits: *bits };
            let c = relu_circuit_for(spec);
            return with_pool(gc_traffic_of(node.active_len(), c), ots.traffic(i));
        }
        FixedOp::Trunc { shift, kind } => {
            return match kind.exact(*shift) {
                Some(e) => with_pool(gc_traffic_of(node.active_len(), e.gc()), ots.traffic(i)),
                None => node_traffic_trunc(node.active_len()),
            };
        }
        FixedOp::Quad { .. } => {
            let n = node.active_len();
            let chunks = n.div_ceil(SLOTS) as u64;
            off.fresh_frames = chunks;
            off.triple_frames = chunks;
            off.result_bytes = chunks * (FRAME_PREFIX + result_frame_bytes(SLOTS) as u64);
            off.bytes = fields(n);
            off.rounds = chunks as f64 + 0.5;
            on.bytes = 2 * fields(n);
            on.rounds = 1.0;
        }
        FixedOp::MulConst(_)
        | FixedOp::SumPool { .. }
        | FixedOp::Add
        | FixedOp::Sub
        | FixedOp::Gather { .. } => {}
    }
    (off, on)
}

/// Offline and online traffic of a ReLU layer of `n` values (the circuit
/// `spec`: its truncation and, for a reduced ReLU, its window).
pub fn relu_traffic(n: usize, spec: impl Into<ReluSpec>) -> (Traffic, Traffic) {
    gc_traffic(n, relu_circuit_for(spec.into()))
}

/// Offline and online traffic of `n` values of a garbled-circuit layer
/// ([`delphi_crypto::garbled`]: ReLUs, exact truncations) of circuit `gc`,
/// run alone (its own pool of IKNP correlated OTs).
pub fn gc_traffic(n: usize, gc: &GcCircuit) -> (Traffic, Traffic) {
    let (mut off, on) = gc_traffic_of(n, gc);
    off.bytes += POOL_SETUP + cot(n * gc.circuit().evaluator_inputs());
    (off, on)
}

/// A garbled-circuit layer's traffic but for its correlated OTs (which
/// come from the offline phase's pool, [`OtPlan`]).
pub fn gc_traffic_of(n: usize, gc: &GcCircuit) -> (Traffic, Traffic) {
    let c = gc.circuit();
    let off = Traffic {
        bytes: 3 * AGREE
            + ID_AND_KEY
            + (n * 2 * c.and_gates() * 16) as u64
            + fields(n * gc.elements()),
        rounds: 4.0,
        ..Traffic::default()
    };
    let on = Traffic {
        bytes: ID + (n * c.garbler_inputs() * 16) as u64 + fields(n),
        rounds: 1.0,
        ..Traffic::default()
    };
    (off, on)
}

/// The offline phase's correlated OTs over a program: one pool serves every
/// garbled-circuit layer in order ([`delphi_crypto::ot::CotSenderPool`],
/// of the kind that sends fewer bytes for the program's OTs), set up at
/// the first; a silent pool runs an extension whenever its ready OTs run
/// out (the first from IKNP, the later ones from its reserve) and corrects
/// each OT's choice bit with one bit.
#[derive(Clone, Debug)]
pub struct OtPlan {
    /// Each node's OTs.
    ots: Vec<usize>,
    /// The OTs of the nodes before each.
    before: Vec<usize>,
    /// The pool's kind.
    pub kind: CotKind,
}

impl OtPlan {
    /// The plan of `prog`'s offline phase.
    pub fn of(prog: &FixedProgram) -> OtPlan {
        let ots: Vec<usize> = (0..prog.nodes.len()).map(|i| prog.node_ots(i)).collect();
        let mut sum = 0;
        let before = ots
            .iter()
            .map(|&m| {
                sum += m;
                sum - m
            })
            .collect();
        OtPlan { ots, before, kind: CotKind::for_count(sum) }
    }

    /// Node `i`'s correlated OTs.
    pub fn ots(&self, i: usize) -> usize {
        self.ots[i]
    }

    /// Whether node `i` draws on the pool after another node set it up
    /// (its garbled-circuit line, measured on layers run alone, counts a
    /// set-up it does not run).
    pub fn joins(&self, i: usize) -> bool {
        self.ots[i] > 0 && self.before[i] > 0
    }

    /// Silent extensions node `i` runs (0 for an IKNP pool).
    pub fn extensions(&self, i: usize) -> usize {
        match self.kind {
            CotKind::Iknp => 0,
            CotKind::Silent => {
                silent_extensions(self.before[i] + self.ots[i]) - silent_extensions(self.before[i])
            }
        }
    }

    /// What node `i`'s OTs cost: bytes both ways and round trips.
    pub fn traffic(&self, i: usize) -> Traffic {
        let (m, before) = (self.ots[i], self.before[i]);
        if m == 0 {
            return Traffic::default();
        }
        let setup = if before == 0 { POOL_SETUP } else { 0 };
        match self.kind {
            CotKind::Iknp => Traffic { bytes: setup + cot(m), ..Traffic::default() },
            CotKind::Silent => {
                let (e0, e1) = (silent_extensions(before), silent_extensions(before + m));
                let runs: u64 = (e0..e1)
                    .map(|e| {
                        let base = if e == 0 {
                            iknp_bytes(FERRET.base())
                        } else {
                            FERRET.base().div_ceil(8) as u64
                        };
                        base + FERRET.extension_bytes()
                    })
                    .sum();
                Traffic {
                    bytes: setup + runs + m.div_ceil(8) as u64,
                    rounds: (e1 - e0) as f64,
                    ..Traffic::default()
                }
            }
        }
    }
}

/// [`relu_traffic`] with the engine's usual truncation (12 bits).
pub fn node_traffic_relu(n: usize) -> (Traffic, Traffic) {
    relu_traffic(n, 12)
}

/// Offline and online traffic of a truncation layer of `n` values.
pub fn node_traffic_trunc(n: usize) -> (Traffic, Traffic) {
    let off = Traffic {
        bytes: 2 * AGREE + ID_AND_KEY + BASE_OT + cot(n) + fields(n),
        rounds: 4.0,
        ..Traffic::default()
    };
    let on =
        Traffic { bytes: ID + n.div_ceil(8) as u64 + fields(n), rounds: 1.0, ..Traffic::default() };
    (off, on)
}

/// Per-inference traffic outside the nodes: the program agreement and bundle
/// id offline, the logits online.
pub fn program_traffic(prog: &FixedProgram) -> (Traffic, Traffic) {
    let off = Traffic { bytes: AGREE + ID, rounds: 1.5, ..Traffic::default() };
    let on = Traffic {
        bytes: fields(prog.nodes[prog.output].shape.len()),
        rounds: 0.5,
        ..Traffic::default()
    };
    (off, on)
}

/// Session setup: the public-key frame.
pub fn setup_bytes(ct: &CtSizes) -> f64 {
    FRAME_PREFIX as f64 + ct.public_key
}
