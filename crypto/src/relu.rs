//! The ReLU circuit and the two-party ReLU-layer protocol.
//!
//! # The circuit (131 AND gates; DELPHI's ReLU6 circuit had 288)
//!
//! Inputs: the client's share `a` (evaluator, known offline, entered as
//! a' = a + K with K = 2^37 − 1, 41 bits) and the server's share `b`
//! (garbler, known online, 41 bits). With s' = a' + b (41 ANDs, 42 bits):
//!
//! * s = a + b wraps past p exactly when s' ≥ p + K = 2^41, i.e. bit 41 of s';
//! * y = s mod p is negative (y ≥ (p−1)/2) exactly when
//!   [s' ≥ 17·2^36 − 1] ⊕ [s' ≥ 2^41] ⊕ [s' ≥ 2^41 + 15·2^36];
//!   the last two read the top bits only, the first also needs "the low 36
//!   bits of s' are all ones", which is the AND of the adder's 36 propagate
//!   bits (35 ANDs) — 55 ANDs for the sign in all;
//! * ReLU(y) ≡ pos·(s' − K) (mod p), because s ≡ y: the circuit outputs the
//!   42 bits pos ∧ s'_j (42 ANDs) and pos, never reducing s mod p.
//!
//! With a truncation `shift` f > 0 the outputs give ReLU(y) >> f exactly
//! (132 ANDs for f = 8), so no probabilistic truncation is needed after a
//! linear layer that feeds a ReLU.
//!
//! # Output masking
//!
//! The outputs are not decoded. Each output label is turned into an additive
//! share with one field element per wire (see
//! [`Garbler::arith_outputs`](crate::gc::Garbler::arith_outputs)): the client
//! obtains ReLU(y) − ρ mod p for a fresh pseudorandom ρ that only the server
//! knows. This replaces a mod-p subtraction of a garbler-input mask (≈123 ANDs
//! plus 41 offline input labels) by 43 field elements, and the client never
//! sees a plaintext bit of the computation.
//!
//! # Protocol
//!
//! Offline (per bundle): the server picks a fresh bundle id and hash key;
//! correlated OT gives the client the labels of its 41 input bits per ReLU
//! and the server Δ; the server garbles and streams the tables and output
//! conversions. Online: the server sends the 41 labels of its share per ReLU
//! (656 bytes); the client evaluates. Each bundle runs online once.

use std::fmt;
use std::sync::OnceLock;

use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::block::{AesPrg, Block};
use crate::channel::Channel;
use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::field::{F, HALF};
use crate::gc::{Circuit, Evaluator, Fancy, Garbler, BATCH};
use crate::ot::{CotReceiver, CotSender};

/// Bits of the client's (evaluator's) input per ReLU.
pub const CLIENT_BITS: usize = 41;
/// Bits of the server's (garbler's) input per ReLU.
pub const SERVER_BITS: usize = 41;
/// The offset K = 2^37 − 1 the client adds to its share, so that the mod-p
/// wrap of a + b becomes bit 41 of a + K + b.
pub const CLIENT_OFFSET: u64 = (1 << 37) - 1;
/// The largest number of ReLUs in one bundle (bounds what a peer can ask for).
pub const MAX_RELUS: usize = 1 << 24;

/// The largest truncation the circuit applies after ReLU.
pub const MAX_SHIFT: u32 = 30;

/// Writes the ReLU circuit for any interpreter.
///
/// `a` holds the bits of a + [`CLIENT_OFFSET`] (client), `b` the bits of b
/// (server), least significant first. The outputs, combined with
/// [`ReluCircuit::weights`], give ReLU(y) >> `shift` exactly (floor of the
/// non-negative value): with shift 0, pos ∧ s'_j for j = 0..42 and pos
/// (131 ANDs); with shift f > 0 the low f bits are dropped and one carry is
/// kept (see [`ReluCircuit::weights`]; 132 ANDs for f = 8).
pub fn relu_gadget<Fy: Fancy>(
    f: &mut Fy,
    a: &[Fy::Item],
    b: &[Fy::Item],
    shift: u32,
) -> Vec<Fy::Item> {
    assert_eq!(a.len(), CLIENT_BITS);
    assert_eq!(b.len(), SERVER_BITS);
    assert!(shift <= MAX_SHIFT, "shift {shift} above {MAX_SHIFT}");
    // Ripple-carry adder, one AND per bit; keep the propagate bits.
    let mut sum = Vec::with_capacity(42);
    let mut propagate = Vec::with_capacity(36);
    let p0 = f.xor(&a[0], &b[0]);
    let mut carry = f.and(&a[0], &b[0]);
    sum.push(p0.clone());
    propagate.push(p0);
    for j in 1..CLIENT_BITS {
        let p = f.xor(&a[j], &b[j]);
        sum.push(f.xor(&p, &carry));
        if j < 36 {
            propagate.push(p);
        }
        let x = f.xor(&a[j], &carry);
        let y = f.xor(&b[j], &carry);
        let z = f.and(&x, &y);
        carry = f.xor(&carry, &z);
    }
    sum.push(carry);

    // Sign of y = (a + b) mod p from the top six bits and the propagates.
    let low_all_ones = f.and_all(&propagate);
    let (s36_39, s40, s41) = (&sum[36..40], &sum[40], &sum[41]);
    let any = f.or_all(s36_39);
    let all = f.and_all(s36_39);
    let s40_any = f.and(s40, &any);
    let ge17 = f.or(s41, &s40_any); // s' ≥ 17·2^36
    let not41 = f.not(s41);
    let not_any = f.not(&any);
    let t = f.and(&not41, s40);
    let eq16 = f.and(&t, &not_any); // s' >> 36 == 16
    let edge = f.and(&eq16, &low_all_ones);
    let ge_t1 = f.xor(&ge17, &edge); // s' ≥ 17·2^36 − 1 (exclusive cases)
    let hi = f.or(s40, &all);
    let ge_t2 = f.and(s41, &hi); // s' ≥ 2^41 + 15·2^36
    let x = f.xor(&ge_t1, s41);
    let neg = f.xor(&x, &ge_t2);
    let pos = f.not(&neg);

    if shift == 0 {
        // ReLU(y) ≡ pos·(s' − K): weights 2^j and −K.
        let mut out: Vec<Fy::Item> = sum.iter().map(|s| f.and(&pos, s)).collect();
        out.push(pos);
        return out;
    }
    // With W = s'_41: if W, y = s' − 2^41 (as p + K = 2^41) and y >> f is
    // bits f..40 of s'; otherwise y = (s' + 1) − 2^37 and
    // y >> f = (s' >> f) + [low f bits of s' all ones] − 2^(37−f). Hence
    // ReLU(y) >> f = pos·(Σ_{j=f}^{40} 2^(j−f) s'_j + (¬W ∧ c) − 2^(37−f) + 2^(37−f)·W).
    let sh = shift as usize;
    let mut out: Vec<Fy::Item> = sum[sh..].iter().map(|s| f.and(&pos, s)).collect();
    let carry = f.and_all(&sum[..sh]);
    let not_w = f.not(s41);
    let c = f.and(&not_w, &carry);
    out.push(f.and(&pos, &c));
    out.push(pos);
    out
}

/// The plaintext reference: ReLU on the field's signed reading.
pub fn relu_reference(y: F) -> F {
    relu_trunc_reference(y, 0)
}

/// The plaintext reference with truncation: ReLU(y) >> shift.
pub fn relu_trunc_reference(y: F, shift: u32) -> F {
    if y.value() >= HALF {
        F::ZERO
    } else {
        F::from_u64(y.value() >> shift)
    }
}

/// The client's circuit input bits for its share `a`.
pub fn client_bits(a: F) -> [bool; CLIENT_BITS] {
    let v = a.value() + CLIENT_OFFSET;
    std::array::from_fn(|j| (v >> j) & 1 == 1)
}

/// The server's circuit input bits for its share `b`.
pub fn server_bits(b: F) -> [bool; SERVER_BITS] {
    std::array::from_fn(|j| b.bit(j as u32))
}

/// The recorded ReLU circuit and the weights of its outputs.
#[derive(Debug)]
pub struct ReluCircuit {
    circuit: Circuit,
    weights: Vec<F>,
    shift: u32,
}

impl ReluCircuit {
    /// The recorded circuit.
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    /// The output weights. Shift 0: 2^j for the 42 masked sum bits, −K for
    /// `pos`. Shift f: 2^(j−f) for bits j = f..40, 2^(37−f) for bit 41,
    /// 1 for the carry term, −2^(37−f) for `pos`.
    pub fn weights(&self) -> &[F] {
        &self.weights
    }

    /// The truncation this circuit applies after ReLU.
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// Combines plaintext output bits into ReLU(y).
    pub fn combine(&self, bits: &[bool]) -> F {
        bits.iter()
            .zip(&self.weights)
            .map(|(&b, &w)| if b { w } else { F::ZERO })
            .sum()
    }
}

/// The ReLU circuit that truncates by `shift` bits, recorded once per shift.
///
/// # Panics
/// If `shift` exceeds [`MAX_SHIFT`].
pub fn relu_circuit(shift: u32) -> &'static ReluCircuit {
    static C: [OnceLock<ReluCircuit>; MAX_SHIFT as usize + 1] =
        [const { OnceLock::new() }; MAX_SHIFT as usize + 1];
    assert!(shift <= MAX_SHIFT, "shift {shift} above {MAX_SHIFT}");
    C[shift as usize].get_or_init(|| {
        let circuit = Circuit::record(CLIENT_BITS, SERVER_BITS, |f, a, b| {
            relu_gadget(f, a, b, shift)
        });
        let weights: Vec<F> = if shift == 0 {
            let mut w: Vec<F> = (0..42).map(|j| F::from_u64(1 << j)).collect();
            w.push(-F::from_u64(CLIENT_OFFSET));
            w
        } else {
            let mut w: Vec<F> = (shift..41).map(|j| F::from_u64(1 << (j - shift))).collect();
            w.push(F::from_u64(1 << (37 - shift)));
            w.push(F::ONE);
            w.push(-F::from_u64(1 << (37 - shift)));
            w
        };
        ReluCircuit {
            circuit,
            weights,
            shift,
        }
    })
}

/// Server's half of an offline ReLU bundle.
pub struct ServerReluBundle {
    n: usize,
    inner: ServerSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct ServerSecrets {
    id: [u8; 16],
    delta: Block,
    label_seed: Block,
    rho: Vec<F>,
}

/// Client's half of an offline ReLU bundle.
pub struct ClientReluBundle {
    n: usize,
    shift: u32,
    inner: ClientSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct ClientSecrets {
    id: [u8; 16],
    hash_key: Block,
    labels: Vec<Block>,
    tables: Vec<Block>,
    cts: Vec<F>,
}

impl fmt::Debug for ServerReluBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerReluBundle")
            .field("relus", &self.n)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientReluBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientReluBundle")
            .field("relus", &self.n)
            .finish_non_exhaustive()
    }
}

fn check_shift(shift: u32) -> Result<()> {
    if shift > MAX_SHIFT {
        return Err(Error::InvalidArgument(format!(
            "ReLU truncation of {shift} bits (at most {MAX_SHIFT})"
        )));
    }
    Ok(())
}

fn check_count(n: usize) -> Result<()> {
    if n == 0 || n > MAX_RELUS {
        return Err(Error::InvalidArgument(format!(
            "{n} ReLUs in one bundle (1 to {MAX_RELUS})"
        )));
    }
    Ok(())
}

/// Offline phase, server side: garbles `n` ReLUs and sends them.
pub fn server_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    n: usize,
    shift: u32,
    rng: &mut R,
) -> Result<ServerReluBundle> {
    check_count(n)?;
    check_shift(shift)?;
    ch.agree_u64("ReLU count", n as u64)?;
    ch.agree_u64("ReLU truncation", shift as u64)?;
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let hash_key = Block::random(rng);
    ch.send_bytes(&id)?;
    ch.send_block(hash_key)?;
    ch.flush()?;
    let mut cot = CotSender::setup(ch, rng)?;
    let ev_zero = cot.send(ch, n * CLIENT_BITS)?;
    let delta = cot.delta();

    let rc = relu_circuit(shift);
    let no = rc.circuit.outputs();
    let label_seed = Block::random(rng);
    let mut prg = AesPrg::new(label_seed);
    let mut garbler = Garbler::new(&rc.circuit, hash_key, delta);
    let mut ga_zero = vec![Block::ZERO; BATCH * SERVER_BITS];
    let mut tables = Vec::with_capacity(2 * rc.circuit.and_gates() * BATCH);
    let mut out_zero = vec![Block::ZERO; BATCH * no];
    let mut cts = vec![F::ZERO; BATCH * no];
    let mut rho = Vec::with_capacity(n);
    for start in (0..n).step_by(BATCH) {
        let k = BATCH.min(n - start);
        prg.fill_blocks(&mut ga_zero[..k * SERVER_BITS]);
        tables.clear();
        garbler.garble_batch(
            start as u64,
            &ev_zero[start * CLIENT_BITS..(start + k) * CLIENT_BITS],
            &ga_zero[..k * SERVER_BITS],
            &mut tables,
            &mut out_zero[..k * no],
        );
        ch.send_blocks(&tables)?;
        for i in 0..k {
            let off = garbler.arith_outputs(
                (start + i) as u64,
                &out_zero[i * no..(i + 1) * no],
                &rc.weights,
                &mut cts[i * no..(i + 1) * no],
            );
            rho.push(-off);
        }
        ch.send_fields(&cts[..k * no])?;
    }
    ch.flush()?;
    ga_zero.zeroize();
    out_zero.zeroize();
    tables.zeroize();
    let mut ev_zero = ev_zero;
    ev_zero.zeroize();
    Ok(ServerReluBundle {
        n,
        inner: ServerSecrets {
            id,
            delta,
            label_seed,
            rho,
        },
    })
}

/// Offline phase, client side: obtains the garbled ReLUs for its shares
/// (which it knows before the input exists).
pub fn client_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    shift: u32,
    rng: &mut R,
) -> Result<ClientReluBundle> {
    let n = shares.len();
    check_count(n)?;
    check_shift(shift)?;
    ch.agree_u64("ReLU count", n as u64)?;
    ch.agree_u64("ReLU truncation", shift as u64)?;
    let mut id = [0u8; 16];
    ch.recv_bytes(&mut id)?;
    let hash_key = ch.recv_block()?;
    let mut cot = CotReceiver::setup(ch, rng)?;
    let mut choices: Vec<bool> = shares.iter().flat_map(|&a| client_bits(a)).collect();
    let labels = cot.receive(ch, &choices)?;
    choices.zeroize();

    let rc = relu_circuit(shift);
    let no = rc.circuit.outputs();
    let per = 2 * rc.circuit.and_gates();
    let mut tables = vec![Block::ZERO; n * per];
    let mut cts = vec![F::ZERO; n * no];
    for start in (0..n).step_by(BATCH) {
        let k = BATCH.min(n - start);
        ch.recv_blocks(&mut tables[start * per..(start + k) * per])?;
        ch.recv_fields(&mut cts[start * no..(start + k) * no])?;
    }
    Ok(ClientReluBundle {
        n,
        shift,
        inner: ClientSecrets {
            id,
            hash_key,
            labels,
            tables,
            cts,
        },
    })
}

impl ServerReluBundle {
    /// Number of ReLUs in the bundle.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the bundle holds no ReLUs (never true for a built bundle).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Online phase, server side: sends the labels of its shares `b` and
    /// returns its output shares ρ. Takes the bundle by value, so a second
    /// use does not compile:
    ///
    /// ```compile_fail
    /// # fn twice(b: delphi_crypto::relu::ServerReluBundle, ch: &mut delphi_crypto::channel::MemChannel) {
    /// let _ = b.online(ch, &[]);
    /// let _ = b.online(ch, &[]); // error: use of moved value
    /// # }
    /// ```
    pub fn online<C: Channel>(self, ch: &mut C, shares: &[F]) -> Result<Vec<F>> {
        let mut s = self.inner;
        if shares.len() != self.n {
            return Err(Error::InvalidArgument(format!(
                "{} server shares for a bundle of {} ReLUs",
                shares.len(),
                self.n
            )));
        }
        ch.send_bytes(&s.id)?;
        let mut prg = AesPrg::new(s.label_seed);
        let mut buf = vec![Block::ZERO; BATCH * SERVER_BITS];
        for start in (0..self.n).step_by(BATCH) {
            let k = BATCH.min(self.n - start);
            let lab = &mut buf[..k * SERVER_BITS];
            prg.fill_blocks(lab);
            for (i, b) in shares[start..start + k].iter().enumerate() {
                for (j, bit) in server_bits(*b).into_iter().enumerate() {
                    lab[i * SERVER_BITS + j] ^= s.delta.and_bit(bit);
                }
            }
            ch.send_blocks(lab)?;
        }
        ch.flush()?;
        buf.zeroize();
        Ok(std::mem::take(&mut s.rho))
    }
}

impl ClientReluBundle {
    /// Number of ReLUs in the bundle.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the bundle holds no ReLUs (never true for a built bundle).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Online phase, client side: receives the server's labels, evaluates,
    /// and returns ReLU(y_i) − ρ_i. Takes the bundle by value (a second use
    /// does not compile).
    pub fn online<C: Channel>(self, ch: &mut C) -> Result<Vec<F>> {
        let s = self.inner;
        let mut id = [0u8; 16];
        ch.recv_bytes(&mut id)?;
        if !bool::from(id.ct_eq(&s.id)) {
            return Err(Error::Malformed {
                what: "online message belongs to a different offline bundle",
            });
        }
        let rc = relu_circuit(self.shift);
        let no = rc.circuit.outputs();
        let per = 2 * rc.circuit.and_gates();
        let mut ev = Evaluator::new(&rc.circuit, s.hash_key);
        let mut ga = vec![Block::ZERO; BATCH * SERVER_BITS];
        let mut out = vec![Block::ZERO; BATCH * no];
        let mut result = Vec::with_capacity(self.n);
        for start in (0..self.n).step_by(BATCH) {
            let k = BATCH.min(self.n - start);
            ch.recv_blocks(&mut ga[..k * SERVER_BITS])?;
            ev.eval_batch(
                start as u64,
                &s.labels[start * CLIENT_BITS..(start + k) * CLIENT_BITS],
                &ga[..k * SERVER_BITS],
                &s.tables[start * per..(start + k) * per],
                &mut out[..k * no],
            );
            for i in 0..k {
                let inst = start + i;
                result.push(ev.arith_outputs(
                    inst as u64,
                    &out[i * no..(i + 1) * no],
                    &s.cts[inst * no..(inst + 1) * no],
                ));
            }
        }
        ga.zeroize();
        out.zeroize();
        Ok(result)
    }
}

/// Tags that start each stored bundle (catch a file read as the wrong type).
const SERVER_TAG: u64 = u64::from_le_bytes(*b"dlRELUs1");
const CLIENT_TAG: u64 = u64::from_le_bytes(*b"dlRELUc1");

impl ServerReluBundle {
    /// Writes the bundle (secrets included: the file must be protected like
    /// a key).
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        e.u64(SERVER_TAG)?;
        e.u64(self.n as u64)?;
        e.bytes(&s.id)?;
        e.block(s.delta)?;
        e.block(s.label_seed)?;
        e.fields(&s.rho)
    }

    /// Reads a bundle written by [`ServerReluBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        if d.u64()? != SERVER_TAG {
            return Err(Error::Stored {
                what: "not a stored server ReLU bundle",
            });
        }
        let n = d.u64_at_most(MAX_RELUS as u64, "stored ReLU count")? as usize;
        check_count(n)?;
        let mut id = [0u8; 16];
        d.bytes(&mut id)?;
        let delta = d.block()?;
        let label_seed = d.block()?;
        let rho = d.fields(n, "stored ReLU masks")?;
        Ok(ServerReluBundle {
            n,
            inner: ServerSecrets {
                id,
                delta,
                label_seed,
                rho,
            },
        })
    }
}

impl ClientReluBundle {
    /// Writes the bundle (secrets included).
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        e.u64(CLIENT_TAG)?;
        e.u64(self.n as u64)?;
        e.u64(self.shift as u64)?;
        e.bytes(&s.id)?;
        e.block(s.hash_key)?;
        e.blocks(&s.labels)?;
        e.blocks(&s.tables)?;
        e.fields(&s.cts)
    }

    /// Reads a bundle written by [`ClientReluBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        if d.u64()? != CLIENT_TAG {
            return Err(Error::Stored {
                what: "not a stored client ReLU bundle",
            });
        }
        let n = d.u64_at_most(MAX_RELUS as u64, "stored ReLU count")? as usize;
        check_count(n)?;
        let shift = d.u64_at_most(MAX_SHIFT as u64, "stored ReLU truncation")? as u32;
        let rc = relu_circuit(shift);
        let no = rc.circuit.outputs();
        let per = 2 * rc.circuit.and_gates();
        let mut id = [0u8; 16];
        d.bytes(&mut id)?;
        let hash_key = d.block()?;
        let labels = d.blocks(n * CLIENT_BITS, "stored ReLU labels")?;
        let tables = d.blocks(n * per, "stored garbled tables")?;
        let cts = d.fields(n * no, "stored output conversions")?;
        Ok(ClientReluBundle {
            n,
            shift,
            inner: ClientSecrets {
                id,
                hash_key,
                labels,
                tables,
                cts,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::P;
    use crate::gc::{GateCounter, PlainEval};

    /// Shares of y: every split of a few y values into (a, b).
    fn edge_values() -> Vec<u64> {
        let fixed_max = (HALF - 1) >> 8 << 8;
        vec![
            0,
            1,
            2,
            P - 1,
            P - 2,
            HALF - 2,
            HALF - 1,
            HALF,
            HALF + 1,
            HALF + 2,
            fixed_max,
            P - fixed_max,
            CLIENT_OFFSET,
            (1 << 36) - 1,
            1 << 36,
            1 << 40,
            (1 << 41) - P % (1 << 41),
        ]
    }

    fn splits(y: u64) -> Vec<(F, F)> {
        let y = F::from_u64(y);
        let mut v = Vec::new();
        for a in [
            0,
            1,
            2,
            HALF - 1,
            HALF,
            HALF + 1,
            P - 2,
            P - 1,
            1 << 36,
            (1 << 37) + 5,
            12345678901,
        ] {
            let a = F::from_u64(a);
            v.push((a, y - a));
        }
        v
    }

    #[test]
    fn gadget_counts_131_ands() {
        let mut c = GateCounter::default();
        let a = vec![(); CLIENT_BITS];
        let b = vec![(); SERVER_BITS];
        let outs = relu_gadget(&mut c, &a, &b, 0);
        assert_eq!(outs.len(), 43);
        assert_eq!(c.ands, 131);
        assert_eq!(relu_circuit(0).circuit().and_gates(), 131);
        assert_eq!(relu_circuit(8).circuit().and_gates(), 132);
        for shift in 0..=MAX_SHIFT {
            let rc = relu_circuit(shift);
            assert_eq!(rc.weights().len(), rc.circuit().outputs());
        }
    }

    #[test]
    fn plaintext_interpreters_agree_with_relu_on_edges() {
        for shift in [0, 1, 8, 13, MAX_SHIFT] {
            let rc = relu_circuit(shift);
            for y in edge_values() {
                for (a, b) in splits(y) {
                    let ab = client_bits(a);
                    let bb = server_bits(b);
                    let direct = relu_gadget(&mut PlainEval, &ab, &bb, shift);
                    let recorded = rc.circuit().eval_plain(&ab, &bb);
                    assert_eq!(direct, recorded);
                    assert_eq!(
                        rc.combine(&direct),
                        relu_trunc_reference(a + b, shift),
                        "y = {y}, a = {a:?}, shift = {shift}"
                    );
                }
            }
        }
    }

    #[test]
    fn reference_follows_the_sign_convention() {
        assert_eq!(relu_reference(F::from_u64(HALF - 1)), F::from_u64(HALF - 1));
        assert_eq!(relu_reference(F::from_u64(HALF)), F::ZERO);
        assert_eq!(relu_reference(F::from_i64(-1)), F::ZERO);
        assert_eq!(relu_reference(F::from_u64(0)), F::ZERO);
    }

    #[test]
    fn garbled_protocol_matches_plaintext_on_every_edge_split() {
        use crate::channel::MemChannel;
        use rand::SeedableRng;
        let (mut a_shares, mut b_shares, mut ys) = (Vec::new(), Vec::new(), Vec::new());
        for y in edge_values() {
            for (a, b) in splits(y) {
                a_shares.push(a);
                b_shares.push(b);
                ys.push(F::from_u64(y));
            }
        }
        let n = ys.len();
        let (mut sc, mut cc) = MemChannel::pair();
        let server = std::thread::spawn(move || {
            let mut rng = crate::block::SecretRng::seed_from_u64(21);
            let bundle = server_offline(&mut sc, n, 8, &mut rng).unwrap();
            bundle.online(&mut sc, &b_shares).unwrap()
        });
        let mut rng = crate::block::SecretRng::seed_from_u64(22);
        let bundle = client_offline(&mut cc, &a_shares, 8, &mut rng).unwrap();
        let out = bundle.online(&mut cc).unwrap();
        let rho = server.join().unwrap();
        for i in 0..n {
            assert_eq!(
                out[i] + rho[i],
                relu_trunc_reference(ys[i], 8),
                "y = {:?}",
                ys[i]
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn plaintext_circuit_is_relu(a in 0..P, b in 0..P, shift in 0..=MAX_SHIFT) {
            let (a, b) = (F::from_u64(a), F::from_u64(b));
            let rc = relu_circuit(shift);
            let bits = rc.circuit().eval_plain(&client_bits(a), &server_bits(b));
            proptest::prop_assert_eq!(rc.combine(&bits), relu_trunc_reference(a + b, shift));
        }
    }
}
