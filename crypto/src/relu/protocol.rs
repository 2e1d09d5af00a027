//! The two-party ReLU-layer protocol: offline (OT for the client's input
//! labels, garbled tables and output conversions streamed by the server)
//! and online (the server's labels, the client's evaluation on every core).
//! Each bundle runs online once: `online` consumes it.

use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::block::{AesPrg, Block};
use crate::channel::Channel;
use crate::error::{Error, Result};
use crate::field::F;
use crate::gc::{Evaluator, Garbler, BATCH};
use crate::ot::{CotReceiver, CotSender};

use super::circuit::*;
use super::spec::*;

/// Batches of [`BATCH`] ReLUs the client receives before evaluating them
/// in parallel (4,096 ReLUs: enough work per chunk to keep every core busy,
/// small enough that evaluation follows the server's sending closely).
pub(super) const EVAL_CHUNK_BATCHES: usize = 64;

/// Server's half of an offline ReLU bundle.
pub struct ServerReluBundle {
    pub(super) n: usize,
    pub(super) spec: ReluSpec,
    pub(super) inner: ServerSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
pub(super) struct ServerSecrets {
    pub(super) id: [u8; 16],
    pub(super) delta: Block,
    pub(super) label_seed: Block,
    pub(super) rho: Vec<F>,
}

/// Client's half of an offline ReLU bundle.
pub struct ClientReluBundle {
    pub(super) n: usize,
    pub(super) spec: ReluSpec,
    pub(super) inner: ClientSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
pub(super) struct ClientSecrets {
    pub(super) id: [u8; 16],
    pub(super) hash_key: Block,
    pub(super) labels: Vec<Block>,
    pub(super) tables: Vec<Block>,
    pub(super) cts: Vec<F>,
}

crate::redacted_debug!(ServerReluBundle { relus: n }, ClientReluBundle { relus: n });

pub(super) fn check_count(n: usize) -> Result<()> {
    if n == 0 || n > MAX_RELUS {
        return Err(Error::InvalidArgument(format!("{n} ReLUs in one bundle (1 to {MAX_RELUS})")));
    }
    Ok(())
}

/// Offline phase, server side: garbles `n` ReLUs and sends them.
pub fn server_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    n: usize,
    spec: impl Into<ReluSpec>,
    rng: &mut R,
) -> Result<ServerReluBundle> {
    let spec = spec.into();
    check_count(n)?;
    spec.check()?;
    agree_spec(ch, n, spec)?;
    let bits_in = spec.input_bits();
    let (id, hash_key) = ch.start_bundle(rng)?;
    let mut cot = CotSender::setup(ch, rng)?;
    let ev_zero = cot.send(ch, n * bits_in)?;
    let delta = cot.delta();

    let rc = relu_circuit_for(spec);
    let no = rc.circuit.outputs();
    let label_seed = Block::random(rng);
    let mut prg = AesPrg::new(label_seed);
    let mut garbler = Garbler::new(&rc.circuit, hash_key, delta);
    let mut ga_zero = vec![Block::ZERO; BATCH * bits_in];
    let mut tables = Vec::with_capacity(2 * rc.circuit.and_gates() * BATCH);
    let mut out_zero = vec![Block::ZERO; BATCH * no];
    let mut cts = vec![F::ZERO; BATCH * no];
    let mut rho = Vec::with_capacity(n);
    for start in (0..n).step_by(BATCH) {
        let k = BATCH.min(n - start);
        prg.fill_blocks(&mut ga_zero[..k * bits_in]);
        tables.clear();
        garbler.garble_batch(
            start as u64,
            &ev_zero[start * bits_in..(start + k) * bits_in],
            &ga_zero[..k * bits_in],
            &mut tables,
            &mut out_zero[..k * no],
        );
        ch.send_blocks(&tables)?;
        let before = rho.len();
        garbler.arith_outputs_batch(
            start as u64,
            &out_zero[..k * no],
            &rc.weights,
            &mut cts[..k * no],
            &mut rho,
        );
        for r in &mut rho[before..] {
            *r = -*r;
        }
        ch.send_fields(&cts[..k * no])?;
    }
    ch.flush()?;
    ga_zero.zeroize();
    out_zero.zeroize();
    tables.zeroize();
    let mut ev_zero = ev_zero;
    ev_zero.zeroize();
    Ok(ServerReluBundle { n, spec, inner: ServerSecrets { id, delta, label_seed, rho } })
}

/// Both parties state the bundle's size and circuit.
pub(super) fn agree_spec<C: Channel>(ch: &mut C, n: usize, spec: ReluSpec) -> Result<()> {
    ch.agree_u64("ReLU count", n as u64)?;
    ch.agree_u64("ReLU truncation", spec.shift as u64)?;
    ch.agree_u64("ReLU bits", ReluBits::code(spec.bits))
}

/// Offline phase, client side: obtains the garbled ReLUs for its shares
/// (which it knows before the input exists).
pub fn client_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    spec: impl Into<ReluSpec>,
    rng: &mut R,
) -> Result<ClientReluBundle> {
    let spec = spec.into();
    let n = shares.len();
    check_count(n)?;
    spec.check()?;
    agree_spec(ch, n, spec)?;
    let (id, hash_key) = ch.join_bundle()?;
    let mut cot = CotReceiver::setup(ch, rng)?;
    let mut choices: Vec<bool> = Vec::with_capacity(n * spec.input_bits());
    for &a in shares {
        spec.client_input(a, &mut choices);
    }
    let labels = cot.receive(ch, &choices)?;
    choices.zeroize();

    let rc = relu_circuit_for(spec);
    let no = rc.circuit.outputs();
    let per = 2 * rc.circuit.and_gates();
    let mut tables = vec![Block::ZERO; n * per];
    let mut cts = vec![F::ZERO; n * no];
    for start in (0..n).step_by(BATCH) {
        let k = BATCH.min(n - start);
        ch.recv_blocks(&mut tables[start * per..(start + k) * per])?;
        ch.recv_fields(&mut cts[start * no..(start + k) * no])?;
    }
    Ok(ClientReluBundle { n, spec, inner: ClientSecrets { id, hash_key, labels, tables, cts } })
}

crate::impl_bundle_len!("ReLUs": ServerReluBundle, ClientReluBundle);

impl ServerReluBundle {
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
        let per = self.spec.input_bits();
        let mut prg = AesPrg::new(s.label_seed);
        let mut buf = vec![Block::ZERO; BATCH * per];
        let mut bits = Vec::with_capacity(BATCH * per);
        for start in (0..self.n).step_by(BATCH) {
            let k = BATCH.min(self.n - start);
            let lab = &mut buf[..k * per];
            prg.fill_blocks(lab);
            bits.clear();
            for b in &shares[start..start + k] {
                self.spec.server_input(*b, &mut bits);
            }
            for (l, &bit) in lab.iter_mut().zip(&bits) {
                *l ^= s.delta.and_bit(bit);
            }
            ch.send_blocks(lab)?;
        }
        ch.flush()?;
        buf.zeroize();
        bits.zeroize();
        Ok(std::mem::take(&mut s.rho))
    }
}

impl ClientReluBundle {
    /// Online phase, client side: receives the server's labels, evaluates,
    /// and returns ReLU(y_i) − ρ_i. Takes the bundle by value (a second use
    /// does not compile).
    pub fn online<C: Channel>(self, ch: &mut C) -> Result<Vec<F>> {
        let s = self.inner;
        ch.expect_bundle_id(&s.id)?;
        use rayon::prelude::*;
        let rc = relu_circuit_for(self.spec);
        let no = rc.circuit.outputs();
        let per = 2 * rc.circuit.and_gates();
        let bits_in = self.spec.input_bits();
        // Labels arrive a chunk at a time; the chunk's batches are evaluated
        // on every core (each worker its own engine), in order of the result.
        let chunk = EVAL_CHUNK_BATCHES * BATCH;
        let mut ga = zeroize::Zeroizing::new(vec![Block::ZERO; chunk * bits_in]);
        let mut result = vec![F::ZERO; self.n];
        for (c, res) in result.chunks_mut(chunk).enumerate() {
            let first = c * chunk;
            let ck = res.len();
            ch.recv_blocks(&mut ga[..ck * bits_in])?;
            res.par_chunks_mut(BATCH)
                .zip(ga[..ck * bits_in].par_chunks(BATCH * bits_in))
                .enumerate()
                .for_each_init(
                    || {
                        (
                            Evaluator::new(&rc.circuit, s.hash_key),
                            zeroize::Zeroizing::new(vec![Block::ZERO; BATCH * no]),
                            Vec::with_capacity(BATCH),
                        )
                    },
                    |(ev, out, vals), (b, (res, ga))| {
                        let start = first + b * BATCH;
                        let k = res.len();
                        ev.eval_batch(
                            start as u64,
                            &s.labels[start * bits_in..(start + k) * bits_in],
                            ga,
                            &s.tables[start * per..(start + k) * per],
                            &mut out[..k * no],
                        );
                        vals.clear();
                        ev.arith_outputs_batch(
                            start as u64,
                            no,
                            &out[..k * no],
                            &s.cts[start * no..(start + k) * no],
                            vals,
                        );
                        res.copy_from_slice(vals);
                    },
                );
        }
        Ok(result)
    }
}
