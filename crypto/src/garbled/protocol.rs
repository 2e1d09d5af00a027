//! The protocol of a [`GcFunction`] layer: offline (OT for the client's
//! input labels, garbled tables and output conversions streamed by the
//! server) and online (the server's labels, the client's evaluation on
//! every core). Each bundle runs online once: `online` consumes it.

use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::block::{AesPrg, Block};
use crate::channel::Channel;
use crate::error::{Error, Result};
use crate::field::F;
use crate::gc::{Evaluator, Garbler, BATCH};
use crate::ot::{CotKind, CotReceiverPool, CotSenderPool};
use crate::spool::{Spool, Stash, StashBuilder};

use super::{GcFunction, MAX_VALUES};

/// Batches of [`BATCH`] values the client receives before evaluating them
/// in parallel (4,096 values: enough work per chunk to keep every core
/// busy, small enough that evaluation follows the server's sending closely).
pub(super) const EVAL_CHUNK_BATCHES: usize = 64;

/// Server's half of an offline bundle.
pub struct ServerGcBundle<S: GcFunction> {
    pub(super) n: usize,
    pub(super) spec: S,
    pub(super) inner: ServerSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
pub(super) struct ServerSecrets {
    pub(super) id: [u8; 16],
    pub(super) delta: Block,
    pub(super) label_seed: Block,
    pub(super) rho: Vec<F>,
}

/// Client's half of an offline bundle.
pub struct ClientGcBundle<S: GcFunction> {
    pub(super) n: usize,
    pub(super) spec: S,
    pub(super) inner: ClientSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
pub(super) struct ClientSecrets {
    pub(super) id: [u8; 16],
    pub(super) hash_key: Block,
    pub(super) labels: Stash<Block>,
    pub(super) tables: Stash<Block>,
    pub(super) cts: Stash<F>,
}

impl<S: GcFunction> std::fmt::Debug for ServerGcBundle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerGcBundle")
            .field("spec", &self.spec)
            .field("values", &self.n)
            .finish_non_exhaustive()
    }
}

impl<S: GcFunction> std::fmt::Debug for ClientGcBundle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientGcBundle")
            .field("spec", &self.spec)
            .field("values", &self.n)
            .finish_non_exhaustive()
    }
}

/// Bytes a client's bundle of `n` values of `spec` holds (its input
/// labels, garbled tables and output ciphertexts), computed from the
/// circuit before anything is received: what a client checks against its
/// memory limit before it agrees to a plan.
pub fn client_bundle_bytes<S: GcFunction>(spec: S, n: usize) -> u64 {
    let gc = spec.gc();
    let c = &gc.circuit;
    let per = 16 * (2 * c.and_gates() + c.evaluator_inputs()) + 8 * gc.elements();
    n as u64 * per as u64
}

/// The kind of correlated OT a bundle of `n` values run alone uses: the one
/// that sends fewer bytes for its `n` × (client input bits) OTs.
/// (An invalid `spec` gets IKNP; the bundle then refuses it by name.)
pub fn own_ot_kind<S: GcFunction>(spec: S, n: usize) -> CotKind {
    if spec.check().is_err() {
        return CotKind::Iknp;
    }
    CotKind::for_count(n.saturating_mul(spec.gc().circuit.evaluator_inputs()))
}

pub(super) fn check_count<S: GcFunction>(n: usize) -> Result<()> {
    if n == 0 || n > MAX_VALUES {
        return Err(Error::InvalidArgument(format!(
            "{n} {} in one bundle (1 to {MAX_VALUES})",
            S::WHAT
        )));
    }
    Ok(())
}

/// Both parties state the bundle's size and circuit.
fn agree<C: Channel, S: GcFunction>(ch: &mut C, n: usize, spec: S) -> Result<()> {
    ch.agree_u64(S::AGREE[0], n as u64)?;
    let [c0, c1] = spec.codes();
    ch.agree_u64(S::AGREE[1], c0)?;
    ch.agree_u64(S::AGREE[2], c1)
}

impl<S: GcFunction> ServerGcBundle<S> {
    /// Offline phase, server side: garbles `n` circuits and sends them,
    /// with correlated OTs of its own ([`own_ot_kind`]).
    pub fn offline<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        n: usize,
        spec: S,
        rng: &mut R,
    ) -> Result<Self> {
        let mut ot = CotSenderPool::new(own_ot_kind(spec, n));
        Self::offline_with(ch, n, spec, rng, &mut ot)
    }

    /// [`ServerGcBundle::offline`] with the correlated OTs (and so Δ) of
    /// `ot`, a pool that serves a whole offline phase.
    pub fn offline_with<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        n: usize,
        spec: S,
        rng: &mut R,
        ot: &mut CotSenderPool,
    ) -> Result<Self> {
        check_count::<S>(n)?;
        spec.check()?;
        agree(ch, n, spec)?;
        let gc = spec.gc();
        let (ev_bits, ga_bits) = (gc.circuit.evaluator_inputs(), gc.circuit.garbler_inputs());
        let (id, hash_key) = ch.start_bundle(rng)?;
        let (delta, ev_zero) = ot.send(ch, n * ev_bits, rng)?;

        let (no, nc) = (gc.circuit.outputs(), gc.elements());
        let label_seed = Block::random(rng);
        let mut prg = AesPrg::new(label_seed);
        let mut garbler = Garbler::new(&gc.circuit, hash_key, delta);
        let mut ga_zero = vec![Block::ZERO; BATCH * ga_bits];
        let mut tables = Vec::with_capacity(2 * gc.circuit.and_gates() * BATCH);
        let mut out_zero = vec![Block::ZERO; BATCH * no];
        let mut cts = vec![F::ZERO; BATCH * nc];
        let mut rho = Vec::with_capacity(n);
        for start in (0..n).step_by(BATCH) {
            let k = BATCH.min(n - start);
            prg.fill_blocks(&mut ga_zero[..k * ga_bits]);
            tables.clear();
            garbler.garble_batch(
                start as u64,
                &ev_zero[start * ev_bits..(start + k) * ev_bits],
                &ga_zero[..k * ga_bits],
                &mut tables,
                &mut out_zero[..k * no],
            );
            ch.send_blocks(&tables)?;
            let before = rho.len();
            garbler.arith_outputs_batch(
                start as u64,
                &out_zero[..k * no],
                &gc.conversion,
                &mut cts[..k * nc],
                &mut rho,
            );
            for r in &mut rho[before..] {
                *r = -*r;
            }
            ch.send_fields(&cts[..k * nc])?;
        }
        ch.flush()?;
        ga_zero.zeroize();
        out_zero.zeroize();
        tables.zeroize();
        let mut ev_zero = ev_zero;
        ev_zero.zeroize();
        Ok(ServerGcBundle { n, spec, inner: ServerSecrets { id, delta, label_seed, rho } })
    }

    /// The function this bundle computes.
    pub fn spec(&self) -> S {
        self.spec
    }

    /// Online phase, server side: sends the labels of its shares `b` and
    /// returns its output shares ρ. Takes the bundle by value, so a second
    /// use does not compile.
    pub fn online<C: Channel>(self, ch: &mut C, shares: &[F]) -> Result<Vec<F>> {
        let mut s = self.inner;
        if shares.len() != self.n {
            return Err(Error::InvalidArgument(format!(
                "{} server shares for a bundle of {} {}",
                shares.len(),
                self.n,
                S::WHAT
            )));
        }
        ch.send_bytes(&s.id)?;
        let per = self.spec.gc().circuit.garbler_inputs();
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
            debug_assert_eq!(bits.len(), k * per);
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

impl<S: GcFunction> ClientGcBundle<S> {
    /// Offline phase, client side: obtains the garbled circuits for its
    /// shares (which it knows before the input exists), held in memory.
    pub fn offline<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        shares: &[F],
        spec: S,
        rng: &mut R,
    ) -> Result<Self> {
        Self::offline_to(ch, shares, spec, rng, None)
    }

    /// [`ClientGcBundle::offline`] that writes the garbled material (input
    /// labels, tables, output conversions) to `spool` as it arrives, when
    /// given one: the online phase then streams it back a chunk at a time.
    pub fn offline_to<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        shares: &[F],
        spec: S,
        rng: &mut R,
        spool: Option<&Spool>,
    ) -> Result<Self> {
        let mut ot = CotReceiverPool::new(own_ot_kind(spec, shares.len()));
        Self::offline_with(ch, shares, spec, rng, spool, &mut ot)
    }

    /// [`ClientGcBundle::offline_to`] with the correlated OTs of `ot`, a
    /// pool that serves a whole offline phase.
    pub fn offline_with<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        shares: &[F],
        spec: S,
        rng: &mut R,
        spool: Option<&Spool>,
        ot: &mut CotReceiverPool,
    ) -> Result<Self> {
        let n = shares.len();
        check_count::<S>(n)?;
        spec.check()?;
        agree(ch, n, spec)?;
        let gc = spec.gc();
        let (id, hash_key) = ch.join_bundle()?;
        let mut choices: Vec<bool> = Vec::with_capacity(n * gc.circuit.evaluator_inputs());
        for &a in shares {
            spec.client_input(a, &mut choices);
        }
        debug_assert_eq!(choices.len(), n * gc.circuit.evaluator_inputs());
        let labels = Stash::keep(ot.receive(ch, &choices, rng)?, spool)?;
        choices.zeroize();

        let nc = gc.elements();
        let per = 2 * gc.circuit.and_gates();
        let mut tables = StashBuilder::new(n * per, spool);
        let mut cts = StashBuilder::new(n * nc, spool);
        // The server sends a batch's tables, then its conversions; a spool
        // is written a chunk of batches at a time.
        let step = if spool.is_some() { EVAL_CHUNK_BATCHES * BATCH } else { n.max(1) };
        for group in (0..n).step_by(step) {
            let g = step.min(n - group);
            tables.fill(g * per, |t| {
                cts.fill(g * nc, |c| {
                    for start in (0..g).step_by(BATCH) {
                        let k = BATCH.min(g - start);
                        ch.recv_blocks(&mut t[start * per..(start + k) * per])?;
                        ch.recv_fields(&mut c[start * nc..(start + k) * nc])?;
                    }
                    Ok(())
                })
            })?;
        }
        let (tables, cts) = (tables.finish()?, cts.finish()?);
        Ok(ClientGcBundle { n, spec, inner: ClientSecrets { id, hash_key, labels, tables, cts } })
    }

    /// The function this bundle computes.
    pub fn spec(&self) -> S {
        self.spec
    }

    /// Online phase, client side: receives the server's labels, evaluates,
    /// and returns f(y_i) − ρ_i. Takes the bundle by value (a second use
    /// does not compile).
    pub fn online<C: Channel>(self, ch: &mut C) -> Result<Vec<F>> {
        let s = self.inner;
        ch.expect_bundle_id(&s.id)?;
        use rayon::prelude::*;
        let gc = self.spec.gc();
        let (no, nc) = (gc.circuit.outputs(), gc.elements());
        let per = 2 * gc.circuit.and_gates();
        let (ev_bits, ga_bits) = (gc.circuit.evaluator_inputs(), gc.circuit.garbler_inputs());
        // Labels arrive a chunk at a time; the chunk's batches are evaluated
        // on every core (each worker its own engine), in order of the result.
        let chunk = EVAL_CHUNK_BATCHES * BATCH;
        // (No larger than the layer: a small layer's buffer, zeroed here and
        // again on drop, would otherwise cost more than its evaluation.)
        let mut ga = zeroize::Zeroizing::new(vec![Block::ZERO; chunk.min(self.n) * ga_bits]);
        let mut result = vec![F::ZERO; self.n];
        // Material on disk is mapped and read a chunk at a time: each chunk
        // is populated before its labels arrive and handed back after use.
        let (mut labels, mut tables, mut cts) = (s.labels.view()?, s.tables.view()?, s.cts.view()?);
        let n = self.n;
        let prepare = |c: usize,
                       l: &crate::spool::StashView<'_, Block>,
                       t: &crate::spool::StashView<'_, Block>,
                       o: &crate::spool::StashView<'_, F>| {
            let (a, b) = (c * chunk, ((c + 1) * chunk).min(n));
            if a < b {
                l.prepare(a * ev_bits..b * ev_bits);
                t.prepare(a * per..b * per);
                o.prepare(a * nc..b * nc);
            }
        };
        prepare(0, &labels, &tables, &cts);
        for (c, res) in result.chunks_mut(chunk).enumerate() {
            let first = c * chunk;
            let ck = res.len();
            ch.recv_blocks(&mut ga[..ck * ga_bits])?;
            let (lv, tv, ov) = (&labels, &tables, &cts);
            res.par_chunks_mut(BATCH)
                .zip(ga[..ck * ga_bits].par_chunks(BATCH * ga_bits))
                .enumerate()
                .for_each_init(
                    || {
                        (
                            Evaluator::new(&gc.circuit, s.hash_key),
                            zeroize::Zeroizing::new(vec![Block::ZERO; BATCH * no]),
                            Vec::with_capacity(BATCH),
                        )
                    },
                    |(ev, out, vals), (b, (res, ga))| {
                        let start = first + b * BATCH;
                        let k = res.len();
                        ev.eval_batch(
                            start as u64,
                            lv.get(start * ev_bits..(start + k) * ev_bits),
                            ga,
                            tv.get(start * per..(start + k) * per),
                            &mut out[..k * no],
                        );
                        vals.clear();
                        ev.arith_outputs_batch(
                            start as u64,
                            &out[..k * no],
                            &gc.conversion,
                            ov.get(start * nc..(start + k) * nc),
                            vals,
                        );
                        res.copy_from_slice(vals);
                    },
                );
            let end = first + ck;
            labels.done(end * ev_bits);
            tables.done(end * per);
            cts.done(end * nc);
            prepare(c + 1, &labels, &tables, &cts);
        }
        Ok(result)
    }
}

impl<S: GcFunction> ServerGcBundle<S> {
    /// Values in the bundle.
    pub fn len(&self) -> usize {
        self.n
    }
    /// Whether the bundle holds no values (never, once built).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl<S: GcFunction> ClientGcBundle<S> {
    /// Values in the bundle.
    pub fn len(&self) -> usize {
        self.n
    }
    /// Whether the bundle holds no values (never, once built).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}
