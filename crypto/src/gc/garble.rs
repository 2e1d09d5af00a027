//! Batched half-gates garbling and evaluation.
//!
//! Free-XOR with a global offset Δ (lsb(Δ) = 1), point-and-permute, and
//! half-gates (Zahur–Rosulek–Evans 2015): two ciphertexts per AND, four
//! hashes to garble it and two to evaluate it. The hash is
//! [`TweakHash`](crate::block::TweakHash) (TMMO), two AES calls per use.
//!
//! The circuit is run over [`BATCH`] instances side by side: every gate is
//! applied to all instances before the next, so the hashes of one gate are
//! independent and AES-NI works on many blocks at once even though a ReLU's
//! carry chain is sequential. All buffers are allocated once per engine.
//!
//! Table order (both sides rely on it): for each batch, for each AND gate in
//! circuit order, for each instance of the batch: T_G then T_E. An AND
//! gate's hash inputs are laid out in planes (all instances' A₀, then all
//! A₀ ⊕ Δ, …) so that gathering them is a copy.
//!
//! Tweaks: AND gate a of instance i uses 2·(i·n_and + a) and that plus one;
//! arithmetic output j of instance i uses 2^127 + i·n_out + j. Instance
//! numbers must never repeat under one Δ and hash key.

use std::fmt;

use zeroize::Zeroize;

use super::circuit::{Circuit, Gate};
use crate::aesni::HashPath;
use crate::block::{Block, TweakHash};

/// Instances garbled or evaluated side by side.
pub const BATCH: usize = 64;

const OUTPUT_DOMAIN: u128 = 1 << 127;

/// Tweak of AND gate `a` given the instance's base `inst·n_and`.
#[inline(always)]
fn and_tweak(base: u128, a: usize) -> u128 {
    (base + a as u128) << 1
}

/// Fills planes 1.. of `tw` (each `k` long) from plane 0: plane p's tweak
/// is plane 0's with `or[p]` set.
#[inline(always)]
fn planes(tw: &mut [u128], k: usize, or: &[u128]) {
    let (first, rest) = tw.split_at_mut(k);
    for (p, plane) in rest.chunks_exact_mut(k).enumerate() {
        let bit = or[p + 1];
        for (d, s) in plane.iter_mut().zip(first.iter()) {
            *d = *s | bit;
        }
    }
}

/// Whether a batch of `k` instances runs the fused gates of
/// [`crate::aesni`] (hash, tweaks and tables in registers): on the AES-NI
/// and VAES paths, for whole registers of instances, when every tweak of
/// the batch, 2·(base + gate), fits in 64 bits. With it, each instance's
/// first tweak 2·base.
fn fused_tweaks(
    path: crate::aesni::HashPath,
    k: usize,
    n_and: usize,
    bases: &[u128; BATCH],
) -> (bool, [u64; BATCH]) {
    let mut tw = [0u64; BATCH];
    let fused = path >= crate::aesni::HashPath::AesNi
        && k.is_multiple_of(16)
        && bases[k - 1] + (n_and as u128) < 1 << 63;
    if fused {
        for (d, b) in tw.iter_mut().zip(&bases[..k]) {
            *d = (*b as u64) << 1;
        }
    }
    (fused, tw)
}

fn tweak_bases(first: u64, k: usize, n_and: usize, out: &mut [u128; BATCH]) {
    for (i, b) in out.iter_mut().take(k).enumerate() {
        *b = (first + i as u64) as u128 * n_and as u128;
    }
}

#[inline(always)]
pub(super) fn out_tweak(inst: u64, n_out: usize, j: usize) -> u128 {
    OUTPUT_DOMAIN | (inst as u128 * n_out as u128 + j as u128)
}

fn load_inputs(wires: &mut [Block], first_wire: usize, per: usize, k: usize, src: &[Block]) {
    assert_eq!(src.len(), per * k, "input labels for {k} instances");
    // Plane by plane: each instance's j-th label into plane j (the
    // instances' rows read at stride `per`; every index is in range by
    // construction, so the loops run without bounds checks).
    let planes = &mut wires[first_wire * BATCH..(first_wire + per) * BATCH];
    for (j, plane) in planes.chunks_exact_mut(BATCH).enumerate() {
        for (d, row) in plane[..k].iter_mut().zip(src.chunks_exact(per)) {
            *d = row[j];
        }
    }
}

fn instances(c: &Circuit, ev: &[Block], ga: &[Block]) -> usize {
    ev.len().checked_div(c.evaluator_inputs).unwrap_or_else(|| ga.len() / c.garbler_inputs.max(1))
}

fn store_outputs(circ: &Circuit, wires: &[Block], k: usize, out: &mut [Block]) {
    let no = circ.outputs.len();
    assert_eq!(out.len(), no * k, "output buffer for {k} instances");
    for (j, &w) in circ.outputs.iter().enumerate() {
        let plane = &wires[w as usize * BATCH..][..k];
        for (row, s) in out.chunks_exact_mut(no).zip(plane) {
            row[j] = *s;
        }
    }
}

/// A batch method `$name` that runs `$body` compiled for the hash path's
/// registers — AVX-512 on the 512-bit VAES path, AVX2 on the 256-bit one, so
/// that the free XORs and label moves vectorise to those widths — else as
/// it is, through the wrappers `$avx2` and `$avx512`.
macro_rules! compiled_per_path {
    ($(#[$doc:meta])* $name:ident, $avx2:ident, $avx512:ident => $body:ident(
        $($arg:ident: $ty:ty),* $(,)?
    )) => {
        $(#[$doc])*
        pub fn $name(&mut self, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if self.hash.path() == HashPath::Vaes {
                // SAFETY: the VAES path is only chosen where the CPU has
                // AVX-512F/VL and AVX2 (HashPath::available).
                unsafe { self.$avx512($($arg),*) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if self.hash.path() == HashPath::Vaes256 {
                // SAFETY: the 256-bit VAES path is only chosen where the CPU
                // has AVX2 (HashPath::available).
                unsafe { self.$avx2($($arg),*) };
                return;
            }
            self.$body($($arg),*);
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2(&mut self, $($arg: $ty),*) {
            self.$body($($arg),*);
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2")]
        unsafe fn $avx512(&mut self, $($arg: $ty),*) {
            self.$body($($arg),*);
        }
    };
}

/// Buffers shared by both engines: the batch's wire labels and the hash
/// inputs/outputs. Allocated once, zeroized on drop.
struct Work {
    wires: Vec<Block>,
    x: Vec<Block>,
    tweaks: Vec<u128>,
    scratch: Vec<Block>,
}

impl Work {
    fn new(circ: &Circuit, hashes_per_and: usize) -> Self {
        Work {
            wires: vec![Block::ZERO; circ.n_wires * BATCH],
            x: vec![Block::ZERO; hashes_per_and * BATCH],
            tweaks: vec![0; hashes_per_and * BATCH],
            scratch: vec![Block::ZERO; hashes_per_and * BATCH],
        }
    }

    /// Makes room for `n` hash inputs.
    fn reserve_hashes(&mut self, n: usize) {
        if self.x.len() < n {
            self.x.resize(n, Block::ZERO);
            self.tweaks.resize(n, 0);
            self.scratch.resize(n, Block::ZERO);
        }
    }

    /// Hashes `n` inputs that `fill` writes (with their tweaks).
    fn hash_with(
        &mut self,
        hash: &TweakHash,
        n: usize,
        fill: impl FnOnce(&mut [Block], &mut [u128]),
    ) -> &[Block] {
        self.reserve_hashes(n);
        let Work { x, tweaks, scratch, .. } = self;
        fill(&mut x[..n], &mut tweaks[..n]);
        hash.hash_many(&mut x[..n], &tweaks[..n], scratch);
        &x[..n]
    }

    /// Loads the batch's input labels.
    fn load(&mut self, c: &Circuit, k: usize, ev: &[Block], ga: &[Block]) {
        load_inputs(&mut self.wires, 0, c.evaluator_inputs, k, ev);
        load_inputs(&mut self.wires, c.evaluator_inputs, c.garbler_inputs, k, ga);
    }

    /// out = a ⊕ b for the batch: free-XOR, the same on both sides.
    #[inline(always)]
    fn xor(&mut self, a: u32, b: u32, o: u32, k: usize) {
        let (a, b, o) = (a as usize * BATCH, b as usize * BATCH, o as usize * BATCH);
        if o >= a.max(b) + k {
            // The output's plane after both inputs' (as the circuit builder
            // numbers wires): one pass over three slices, no bounds checks.
            let (before, out) = self.wires.split_at_mut(o);
            crate::block::xor_blocks(&mut out[..k], &before[a..a + k], &before[b..b + k]);
        } else {
            let w = &mut self.wires;
            for i in 0..k {
                w[o + i] = w[a + i] ^ w[b + i];
            }
        }
    }

    /// out = a ⊕ `offset` (Δ for the garbler's NOT, zero for the evaluator's).
    #[inline(always)]
    fn xor_const(&mut self, a: u32, o: u32, k: usize, offset: Block) {
        let (a, o) = (a as usize * BATCH, o as usize * BATCH);
        if o >= a + k {
            let (before, out) = self.wires.split_at_mut(o);
            crate::block::xor_block_const(&mut out[..k], &before[a..a + k], offset);
        } else {
            let w = &mut self.wires;
            for i in 0..k {
                w[o + i] = w[a + i] ^ offset;
            }
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.wires.zeroize();
        self.x.zeroize();
        self.scratch.zeroize();
    }
}

/// The garbler's engine for one circuit, one Δ and one hash key.
pub struct Garbler<'c> {
    circ: &'c Circuit,
    hash: TweakHash,
    pub(super) delta: Block,
    work: Work,
}

impl fmt::Debug for Garbler<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Garbler").finish_non_exhaustive()
    }
}

impl Drop for Garbler<'_> {
    fn drop(&mut self) {
        self.delta.zeroize();
    }
}

impl<'c> Garbler<'c> {
    /// An engine for `circ` with offset `delta` (lsb must be 1) and the
    /// session's public hash key.
    pub fn new(circ: &'c Circuit, hash_key: Block, delta: Block) -> Self {
        Self::with_hash(circ, TweakHash::new(hash_key), delta)
    }

    /// An engine whose hash runs on a given path (for tests and
    /// measurements; every path gives the same tables).
    pub fn with_hash(circ: &'c Circuit, hash: TweakHash, delta: Block) -> Self {
        assert!(delta.lsb(), "point-and-permute needs lsb(Δ) = 1");
        Garbler { circ, hash, delta, work: Work::new(circ, 4) }
    }

    compiled_per_path!(
        /// Garbles instances `first .. first + k` (k ≤ [`BATCH`]).
        ///
        /// `ev_zero` and `ga_zero` hold the zero labels of the evaluator's and
        /// the garbler's inputs, instance by instance; 2·n_and·k table blocks are
        /// appended to `tables`; the outputs' zero labels go to `out_zero`.
        garble_batch, garble_batch_avx2, garble_batch_avx512 => garble_batch_body(
            first: u64,
            ev_zero: &[Block],
            ga_zero: &[Block],
            tables: &mut Vec<Block>,
            out_zero: &mut [Block]
        )
    );

    #[inline(always)]
    fn garble_batch_body(
        &mut self,
        first: u64,
        ev_zero: &[Block],
        ga_zero: &[Block],
        tables: &mut Vec<Block>,
        out_zero: &mut [Block],
    ) {
        let c = self.circ;
        let k = instances(c, ev_zero, ga_zero);
        assert!(k <= BATCH && k > 0);
        self.work.load(c, k, ev_zero, ga_zero);
        let delta = self.delta;
        let mut and_idx = 0usize;
        let mut bases = [0u128; BATCH];
        tweak_bases(first, k, c.n_and, &mut bases);
        let mut table_at = tables.len();
        tables.resize(table_at + 2 * c.n_and * k, Block::ZERO);
        let (fused, tw64) = fused_tweaks(self.hash.path(), k, c.n_and, &bases);
        for g in &c.gates {
            match *g {
                Gate::Xor(a, b, o) => self.work.xor(a, b, o, k),
                Gate::Not(a, o) => self.work.xor_const(a, o, k, delta),
                Gate::And(a, b, o) => {
                    let (a, b, o) = (a as usize * BATCH, b as usize * BATCH, o as usize * BATCH);
                    if fused
                        && crate::aesni::garble_and(
                            self.hash.path(),
                            self.hash.keys(),
                            &mut self.work.wires,
                            (a, b, o),
                            delta,
                            &tw64[..k],
                            and_idx as u64,
                            &mut tables[table_at..table_at + 2 * k],
                        )
                    {
                        table_at += 2 * k;
                        and_idx += 1;
                        continue;
                    }
                    let Work { wires: w, x, tweaks, scratch } = &mut self.work;
                    // Four planes of k hash inputs: A₀, A₀ ⊕ Δ, B₀, B₀ ⊕ Δ
                    // (tweaks t, t, t | 1, t | 1).
                    let x = &mut x[..4 * k];
                    let tw = &mut tweaks[..4 * k];
                    for i in 0..k {
                        tw[i] = and_tweak(bases[i], and_idx);
                    }
                    planes(tw, k, &[0, 0, 1, 1]);
                    let (wa, wb) = (&w[a..a + k], &w[b..b + k]);
                    let (xa, xb) = x.split_at_mut(2 * k);
                    let (xa0, xa1) = xa.split_at_mut(k);
                    let (xb0, xb1) = xb.split_at_mut(k);
                    for i in 0..k {
                        xa0[i] = wa[i];
                        xa1[i] = wa[i] ^ delta;
                        xb0[i] = wb[i];
                        xb1[i] = wb[i] ^ delta;
                    }
                    self.hash.hash_many(x, tw, scratch);
                    let (xa, xb) = x.split_at(2 * k);
                    let (ha0, ha1) = xa.split_at(k);
                    let (hb0, hb1) = xb.split_at(k);
                    let tab = &mut tables[table_at..table_at + 2 * k];
                    table_at += 2 * k;
                    for i in 0..k {
                        let (a0, b0) = (w[a + i], w[b + i]);
                        let (pa, pb) = (a0.lsb(), b0.lsb());
                        // Garbler half-gate: a ∧ p_b.
                        let tg = ha0[i] ^ ha1[i] ^ delta.and_bit(pb);
                        let wg = ha0[i] ^ tg.and_bit(pa);
                        // Evaluator half-gate: a ∧ (b ⊕ p_b).
                        let te = hb0[i] ^ hb1[i] ^ a0;
                        let we = hb0[i] ^ (te ^ a0).and_bit(pb);
                        w[o + i] = wg ^ we;
                        tab[2 * i] = tg;
                        tab[2 * i + 1] = te;
                    }
                    and_idx += 1;
                }
            }
        }
        store_outputs(c, &self.work.wires, k, out_zero);
    }

    /// Hashes `n` inputs that `fill` writes (with their tweaks) in the
    /// engine's buffers; returns the hashes.
    pub(super) fn hash_with(
        &mut self,
        n: usize,
        fill: impl FnOnce(&mut [Block], &mut [u128]),
    ) -> &[Block] {
        self.work.hash_with(&self.hash, n, fill)
    }
}

/// The evaluator's engine for one circuit and one hash key.
pub struct Evaluator<'c> {
    circ: &'c Circuit,
    hash: TweakHash,
    work: Work,
}

impl fmt::Debug for Evaluator<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evaluator").finish_non_exhaustive()
    }
}

impl<'c> Evaluator<'c> {
    /// An engine for `circ` under the session's public hash key.
    pub fn new(circ: &'c Circuit, hash_key: Block) -> Self {
        Self::with_hash(circ, TweakHash::new(hash_key))
    }

    /// An engine whose hash runs on a given path (for tests and
    /// measurements).
    pub fn with_hash(circ: &'c Circuit, hash: TweakHash) -> Self {
        Evaluator { circ, hash, work: Work::new(circ, 2) }
    }

    compiled_per_path!(
        /// Evaluates instances `first .. first + k` on active input labels and
        /// the batch's `tables` (exactly 2·n_and·k blocks); writes output labels.
        eval_batch, eval_batch_avx2, eval_batch_avx512 => eval_batch_body(
            first: u64,
            ev: &[Block],
            ga: &[Block],
            tables: &[Block],
            out: &mut [Block]
        )
    );

    #[inline(always)]
    fn eval_batch_body(
        &mut self,
        first: u64,
        ev: &[Block],
        ga: &[Block],
        tables: &[Block],
        out: &mut [Block],
    ) {
        let c = self.circ;
        let k = instances(c, ev, ga);
        assert!(k <= BATCH && k > 0);
        assert_eq!(tables.len(), 2 * c.n_and * k, "garbled tables for {k} instances");
        self.work.load(c, k, ev, ga);
        let mut and_idx = 0usize;
        let mut bases = [0u128; BATCH];
        tweak_bases(first, k, c.n_and, &mut bases);
        let (fused, tw64) = fused_tweaks(self.hash.path(), k, c.n_and, &bases);
        let mut tab = tables.chunks_exact(2 * k);
        for g in &c.gates {
            match *g {
                Gate::Xor(a, b, o) => self.work.xor(a, b, o, k),
                Gate::Not(a, o) => self.work.xor_const(a, o, k, Block::ZERO),
                Gate::And(a, b, o) => {
                    let (a, b, o) = (a as usize * BATCH, b as usize * BATCH, o as usize * BATCH);
                    let t = match tab.next() {
                        Some(t) => t,
                        None => unreachable!("table length checked above"),
                    };
                    if fused
                        && crate::aesni::eval_and(
                            self.hash.path(),
                            self.hash.keys(),
                            &mut self.work.wires,
                            (a, b, o),
                            &tw64[..k],
                            and_idx as u64,
                            t,
                        )
                    {
                        and_idx += 1;
                        continue;
                    }
                    let Work { wires: w, x, tweaks, scratch } = &mut self.work;
                    // Two planes of k hash inputs: A, B (tweaks t, t | 1).
                    let x = &mut x[..2 * k];
                    let tw = &mut tweaks[..2 * k];
                    for i in 0..k {
                        tw[i] = and_tweak(bases[i], and_idx);
                    }
                    planes(tw, k, &[0, 1]);
                    x[..k].copy_from_slice(&w[a..a + k]);
                    x[k..].copy_from_slice(&w[b..b + k]);
                    self.hash.hash_many(x, tw, scratch);
                    let (ha, hb) = x.split_at(k);
                    for i in 0..k {
                        let (la, lb) = (w[a + i], w[b + i]);
                        let (tg, te) = (t[2 * i], t[2 * i + 1]);
                        let wg = ha[i] ^ tg.and_bit(la.lsb());
                        let we = hb[i] ^ (te ^ la).and_bit(lb.lsb());
                        w[o + i] = wg ^ we;
                    }
                    and_idx += 1;
                }
            }
        }
        store_outputs(c, &self.work.wires, k, out);
    }

    /// Hashes `n` inputs that `fill` writes (with their tweaks) in the
    /// engine's buffers; returns the hashes.
    pub(super) fn hash_with(
        &mut self,
        n: usize,
        fill: impl FnOnce(&mut [Block], &mut [u128]),
    ) -> &[Block] {
        self.work.hash_with(&self.hash, n, fill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::F;
    use crate::gc::{Circuit, Conversion, Fancy, Product};
    use rand::{Rng, SeedableRng};

    /// A 16-bit adder with a comparison: exercises XOR, NOT and AND.
    fn adder() -> Circuit {
        Circuit::record(16, 16, |f, a, b| {
            let mut c = f.and(&a[0], &b[0]);
            let mut out = vec![f.xor(&a[0], &b[0])];
            for i in 1..16 {
                let s = f.xor(&a[i], &b[i]);
                out.push(f.xor(&s, &c));
                let x = f.xor(&a[i], &c);
                let y = f.xor(&b[i], &c);
                let z = f.and(&x, &y);
                c = f.xor(&c, &z);
            }
            let nc = f.not(&c);
            out.push(nc);
            out
        })
    }

    #[test]
    fn garbled_matches_plaintext_on_random_inputs() {
        let circ = adder();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let mut delta = Block::random(&mut rng);
        delta.0 |= 1;
        let key = Block::random(&mut rng);
        let mut g = Garbler::new(&circ, key, delta);
        let mut e = Evaluator::new(&circ, key);
        for first in [0u64, 1000] {
            let k = if first == 0 { BATCH } else { 7 };
            let ev_zero: Vec<Block> = (0..16 * k).map(|_| Block::random(&mut rng)).collect();
            let ga_zero: Vec<Block> = (0..16 * k).map(|_| Block::random(&mut rng)).collect();
            let mut tables = Vec::new();
            let no = circ.outputs();
            let mut out_zero = vec![Block::ZERO; no * k];
            g.garble_batch(first, &ev_zero, &ga_zero, &mut tables, &mut out_zero);
            let ebits: Vec<bool> = (0..16 * k).map(|_| rng.gen()).collect();
            let gbits: Vec<bool> = (0..16 * k).map(|_| rng.gen()).collect();
            let act = |z: &[Block], bits: &[bool]| -> Vec<Block> {
                z.iter().zip(bits).map(|(z, b)| *z ^ delta.and_bit(*b)).collect()
            };
            let mut out = vec![Block::ZERO; no * k];
            e.eval_batch(first, &act(&ev_zero, &ebits), &act(&ga_zero, &gbits), &tables, &mut out);
            for i in 0..k {
                let want =
                    circ.eval_plain(&ebits[i * 16..(i + 1) * 16], &gbits[i * 16..(i + 1) * 16]);
                for j in 0..no {
                    let z = out_zero[i * no + j];
                    let l = out[i * no + j];
                    assert!(l == z || l == z ^ delta, "label is neither zero nor one label");
                    assert_eq!(l == z ^ delta, want[j]);
                }
            }
            // Arithmetic outputs: Σ w_j out_j plainly, and products of
            // outputs with two selectors (one of them also a plain output).
            let weights: Vec<F> = (0..no).map(|j| F::from_u64(3 * j as u64 + 1)).collect();
            for conv in [
                Conversion::plain(weights.clone()),
                Conversion::new(
                    no,
                    weights[..3].to_vec(),
                    (0..no)
                        .map(|j| Product {
                            sel: if j % 3 == 0 { 2 } else { no - 1 },
                            bit: j,
                            weight: F::from_u64(1 << j) - F::from_u64(5),
                        })
                        .collect(),
                ),
            ] {
                let ne = conv.elements();
                let (mut cts, mut offs) = (vec![F::ZERO; ne * k], Vec::new());
                g.arith_outputs_batch(first, &out_zero, &conv, &mut cts, &mut offs);
                let mut vals = Vec::new();
                e.arith_outputs_batch(first, &out, &conv, &cts, &mut vals);
                for i in 0..k {
                    let want =
                        circ.eval_plain(&ebits[i * 16..(i + 1) * 16], &gbits[i * 16..(i + 1) * 16]);
                    assert_eq!(vals[i] - offs[i], conv.value(&want), "instance {i}");
                }
                // One instance converted alone gives the same elements.
                let (mut one, mut off) = (vec![F::ZERO; ne], Vec::new());
                let r = no * (k - 1)..no * k;
                g.arith_outputs_batch(
                    first + k as u64 - 1,
                    &out_zero[r],
                    &conv,
                    &mut one,
                    &mut off,
                );
                assert_eq!((off[0], &one[..]), (offs[k - 1], &cts[ne * (k - 1)..]));
            }
        }
    }

    #[test]
    fn every_hash_path_garbles_the_same_tables_and_evaluates_the_others() {
        use crate::aesni::HashPath;
        let circ = adder();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let mut delta = Block::random(&mut rng);
        delta.0 |= 1;
        let key = Block::random(&mut rng);
        let paths = HashPath::available();
        // 64 and 48, 16: whole registers, which the VAES path fuses; 33, 1: not.
        for k in [BATCH, 48, 33, 16, 1] {
            let ev_zero: Vec<Block> = (0..16 * k).map(|_| Block::random(&mut rng)).collect();
            let ga_zero: Vec<Block> = (0..16 * k).map(|_| Block::random(&mut rng)).collect();
            let no = circ.outputs();
            let garbled: Vec<(Vec<Block>, Vec<Block>)> = paths
                .iter()
                .map(|&p| {
                    let h = TweakHash::with_path(key, p);
                    assert_eq!(h.path(), p);
                    let mut g = Garbler::with_hash(&circ, h, delta);
                    let (mut tables, mut out0) = (Vec::new(), vec![Block::ZERO; no * k]);
                    g.garble_batch(5, &ev_zero, &ga_zero, &mut tables, &mut out0);
                    (tables, out0)
                })
                .collect();
            for (p, gb) in paths.iter().zip(&garbled) {
                assert!(gb == &garbled[0], "{p:?} garbles other tables than portable, k = {k}");
            }
            // Each path evaluates the portable path's tables: all-zero
            // inputs give the labels of the circuit's value on zeros.
            let plain = circ.eval_plain(&[false; 16], &[false; 16]);
            let want: Vec<Block> =
                (0..no * k).map(|e| garbled[0].1[e] ^ delta.and_bit(plain[e % no])).collect();
            for &p in &paths {
                let mut e = Evaluator::with_hash(&circ, TweakHash::with_path(key, p));
                let mut out = vec![Block::ZERO; no * k];
                e.eval_batch(5, &ev_zero, &ga_zero, &garbled[0].0, &mut out);
                assert!(out == want, "{p:?} evaluates other labels, k = {k}");
            }
        }
    }

    #[test]
    fn corrupted_table_breaks_the_output() {
        let circ = adder();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
        let mut delta = Block::random(&mut rng);
        delta.0 |= 1;
        let mut g = Garbler::new(&circ, Block(1), delta);
        let mut e = Evaluator::new(&circ, Block(1));
        let ev_zero: Vec<Block> = (0..16).map(|_| Block::random(&mut rng)).collect();
        let ga_zero: Vec<Block> = (0..16).map(|_| Block::random(&mut rng)).collect();
        let mut tables = Vec::new();
        let mut out_zero = vec![Block::ZERO; 17];
        g.garble_batch(0, &ev_zero, &ga_zero, &mut tables, &mut out_zero);
        for t in tables.iter_mut() {
            t.0 ^= 1 << 77;
        }
        let mut out = vec![Block::ZERO; 17];
        e.eval_batch(0, &ev_zero, &ga_zero, &tables, &mut out);
        let valid =
            out.iter().zip(&out_zero).filter(|(l, z)| **l == **z || **l == **z ^ delta).count();
        assert!(valid < 17, "tampered tables still decoded everywhere");
    }
}
