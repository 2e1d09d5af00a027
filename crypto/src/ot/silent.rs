//! Silent correlated OT: Ferret (Yang, Weng, Lan, Zhang, Wang, "Ferret:
//! Fast Extension for coRRElated oT with small communication", CCS 2020),
//! semi-honest, and the pools that serve a whole offline phase's
//! correlated OTs from one Δ ([`CotSenderPool`], [`CotReceiverPool`]).
//!
//! One extension turns `base` correlated OTs into `n` (primal LPN with
//! regular noise, [`FERRET`]):
//!
//! * base COTs: the receiver holds (u, w), the sender v, w = v ⊕ u·Δ, for a
//!   uniformly random k-bit u, and t·h more whose choice bits the receiver
//!   picks (the trees' OTs below);
//! * single-point COTs: for each of t blocks of 2^h positions the sender
//!   expands a GGM tree from a random seed (leaves s); the receiver, with a
//!   random point α in the block, learns every leaf but α's through one
//!   1-out-of-2 OT per level (the XOR of the level's left or right
//!   children, whichever is off its path, masked by the TCCR hash of the
//!   base COT), and s_α ⊕ Δ from c = Δ ⊕ ⊕ᵢ sᵢ, which the sender sends: so
//!   r = s ⊕ e·Δ with e the unit vector at α;
//! * LPN: with a public local linear code A (each of n rows XORs D = 10
//!   positions of the k-long secret, drawn from a public seed), the
//!   receiver gets x = A·u ⊕ e and z = A·w ⊕ r, the sender y = A·v ⊕ s:
//!   z = y ⊕ x·Δ. x is pseudorandom to the sender (LPN with regular noise:
//!   u is hidden by the base COTs, e by the trees' OTs).
//!
//! Communication: t·h pairs of blocks and t blocks from the sender, the
//! base COTs' choice bits' corrections from the receiver. The first
//! extension's base COTs come from IKNP ([`super::iknp`]); each extension
//! keeps `base` of its own outputs as the next one's base (Ferret's
//! bootstrapping), so after the first one a pool costs about 3 bits per
//! new OT (and one more to choose its bit) rather than IKNP's 128. Outputs have random choice bits; a pool turns
//! them into the caller's chosen bits with one bit each (d = b ⊕ x, and the
//! sender's zero label becomes y ⊕ d·Δ).

use std::fmt;

use rand::{CryptoRng, Rng, RngCore};
use zeroize::Zeroize;

use super::iknp::{CotReceiver, CotSender, KAPPA, MAX_OTS};
use crate::block::{AesPerm, AesPrg, Block, TweakHash};
use crate::channel::Channel;
use crate::error::{Error, Result};

/// Primal-LPN parameters with regular noise: n = t·2^h outputs from a
/// k-long secret, one noisy position in each of t blocks of 2^h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpnParams {
    /// Outputs of one extension.
    pub n: usize,
    /// Length of the LPN secret.
    pub k: usize,
    /// Noisy positions (GGM trees).
    pub t: usize,
    /// Depth of each tree (block of 2^h positions).
    pub h: usize,
}

/// The set emp-ot's Ferret uses for its extensions of this size
/// (`N_REG_PRIMAL_RD2`, `K_REG_PRIMAL_RD2`, `T_REG_PRIMAL_RD2`,
/// `BIN_SZ_REG_PRIMAL_RD2`: 607,232 = 593 · 2^10 outputs from a secret of
/// 69,454), chosen there for 128-bit security against the known attacks on
/// LPN with regular noise and a local code of 10 nonzeros per row.
pub const FERRET: LpnParams = LpnParams { n: 607_232, k: 69_454, t: 593, h: 10 };

/// Nonzeros per row of the local linear code.
const D: usize = 10;

impl LpnParams {
    /// Base COTs one extension consumes: k for the secret, t·h for the
    /// trees' OTs.
    pub const fn base(&self) -> usize {
        self.k + self.t * self.h
    }

    /// New COTs one extension adds to a pool (it keeps [`Self::base`] of
    /// its outputs for the next).
    pub const fn fresh(&self) -> usize {
        self.n - self.base()
    }

    /// Bytes one extension sends (both ways) once its base COTs are at
    /// hand: the trees' OTs and corrections from the sender, and, when the
    /// base comes from the pool, the receiver's choice-bit corrections.
    pub const fn extension_bytes(&self) -> u64 {
        (self.t * self.h * 32 + self.t * 16) as u64
    }
}

/// How a run of garbled-circuit layers gets its correlated OTs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CotKind {
    /// IKNP extension: 16 bytes per OT.
    Iknp,
    /// Silent OT (Ferret) bootstrapped from IKNP: ≈ 0.5 bytes per OT
    /// (its choice-bit correction included) after a first extension of
    /// ≈ 1.4 MB.
    Silent,
}

/// Bytes of IKNP's matrix for `m` OTs (one 128-bit column per OT, padded
/// to a multiple of 128).
pub const fn iknp_bytes(m: usize) -> u64 {
    (m.div_ceil(KAPPA) * KAPPA * KAPPA / 8) as u64
}

/// Extensions a silent pool runs to serve `m` OTs in all.
pub const fn silent_extensions(m: usize) -> usize {
    m.div_ceil(FERRET.fresh())
}

/// Bytes a silent pool sends to serve `m` chosen-bit OTs in all (base OTs
/// not included; a pool of either kind runs the same 128).
pub const fn silent_bytes(m: usize) -> u64 {
    let e = silent_extensions(m);
    if e == 0 {
        return 0;
    }
    iknp_bytes(FERRET.base())
        + (e - 1) as u64 * FERRET.base().div_ceil(8) as u64
        + e as u64 * FERRET.extension_bytes()
}

impl CotKind {
    /// The kind that sends fewer bytes for `m` OTs in all (chosen-bit
    /// corrections included).
    pub fn for_count(m: usize) -> CotKind {
        if silent_bytes(m) + (m.div_ceil(8) as u64) < iknp_bytes(m) {
            CotKind::Silent
        } else {
            CotKind::Iknp
        }
    }
}

/// The GGM tree's length-doubling PRG: G(s) = (π₀(s) ⊕ s, π₁(s) ⊕ s) with
/// AES under two fixed public keys (as emp-ot's).
struct Ggm {
    left: AesPerm,
    right: AesPerm,
}

impl Ggm {
    fn new() -> Self {
        Ggm {
            left: AesPerm::new(Block(0x6465_6c70_6869_2d67_676d_2d6c_6566_7430)),
            right: AesPerm::new(Block(0x6465_6c70_6869_2d67_676d_2d72_6967_6874)),
        }
    }

    /// Expands level `len` nodes in `buf[..len]` into `2·len` children in
    /// place (children of node i at 2i, 2i + 1); `tmp` holds 2·len blocks.
    fn expand(&self, buf: &mut [Block], len: usize, tmp: &mut [Block]) {
        let (l, r) = tmp[..2 * len].split_at_mut(len);
        self.left.encrypt_to(&buf[..len], l);
        self.right.encrypt_to(&buf[..len], r);
        for i in (0..len).rev() {
            let p = buf[i];
            buf[2 * i] = l[i] ^ p;
            buf[2 * i + 1] = r[i] ^ p;
        }
    }
}

/// The public local linear code: row i's D positions in the secret.
struct Code {
    prg_seed: Block,
}

impl Code {
    /// Calls `f(row, positions)` for every row, in order.
    fn rows(&self, n: usize, k: usize, mut f: impl FnMut(usize, &[usize; D])) {
        const ROWS: usize = 1024;
        let mut prg = AesPrg::new(self.prg_seed);
        let mut blocks = vec![Block::ZERO; ROWS * D / 2];
        let mut pos = [0usize; D];
        for start in (0..n).step_by(ROWS) {
            let rows = ROWS.min(n - start);
            prg.fill_blocks(&mut blocks[..rows * D / 2]);
            for r in 0..rows {
                for (j, p) in pos.iter_mut().enumerate() {
                    let b = blocks[r * D / 2 + j / 2].0;
                    let w = if j % 2 == 0 { b as u64 } else { (b >> 64) as u64 };
                    // ⌊w·k / 2^64⌋ for a uniform 64-bit w: each position
                    // within 2^-47 of 1/k (k < 2^17), without a division.
                    *p = ((w as u128 * k as u128) >> 64) as usize;
                }
                f(start + r, &pos);
            }
        }
    }
}

fn xor_rows(code: &Code, p: &LpnParams, secret: &[Block], noise: &mut [Block]) {
    code.rows(p.n, p.k, |i, pos| {
        let mut acc = noise[i];
        for &j in pos {
            acc ^= secret[j];
        }
        noise[i] = acc;
    });
}

/// Where a pool's next COTs come from.
enum Source<T> {
    Iknp(T),
    Silent {
        iknp: T,
        reserve: Vec<Block>,
        ready: Vec<Block>,
        pos: usize,
        ext: u64,
        /// An extension's outputs, reused (no fresh pages per extension).
        scratch: Vec<Block>,
    },
}

/// The garbler's side of a run's correlated OTs: one Δ for every layer.
pub struct CotSenderPool {
    kind: CotKind,
    state: Option<(Source<CotSender>, TweakHash, Code)>,
}

/// The evaluator's side.
pub struct CotReceiverPool {
    kind: CotKind,
    state: Option<(Source<CotReceiver>, TweakHash, Code)>,
    /// The choice bits of the silent pool's reserve and ready COTs, and
    /// of an extension's outputs.
    bits: (Vec<bool>, Vec<bool>, Vec<bool>),
}

impl fmt::Debug for CotSenderPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CotSenderPool").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl fmt::Debug for CotReceiverPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CotReceiverPool").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl<T> Source<T> {
    /// A source of `kind` over an IKNP extension just set up.
    fn new(kind: CotKind, iknp: T) -> Self {
        match kind {
            CotKind::Iknp => Source::Iknp(iknp),
            CotKind::Silent => Source::Silent {
                iknp,
                reserve: Vec::new(),
                ready: Vec::new(),
                pos: 0,
                ext: 0,
                scratch: Vec::new(),
            },
        }
    }
}

impl<T> Drop for Source<T> {
    fn drop(&mut self) {
        if let Source::Silent { reserve, ready, scratch, .. } = self {
            reserve.zeroize();
            ready.zeroize();
            scratch.zeroize();
        }
    }
}

impl Drop for CotReceiverPool {
    fn drop(&mut self) {
        self.bits.0.zeroize();
        self.bits.1.zeroize();
        self.bits.2.zeroize();
    }
}

fn check_count(m: usize) -> Result<()> {
    if m > MAX_OTS {
        return Err(Error::InvalidArgument(format!("{m} OTs (at most {MAX_OTS})")));
    }
    Ok(())
}

/// Packs bits little-endian, 8 to a byte.
fn pack(bits: impl Iterator<Item = bool>, out: &mut Vec<u8>) {
    out.clear();
    for (i, b) in bits.enumerate() {
        if i % 8 == 0 {
            out.push(0);
        }
        if let Some(last) = out.last_mut() {
            *last |= (b as u8) << (i % 8);
        }
    }
}

fn bit(bytes: &[u8], i: usize) -> bool {
    bytes[i / 8] >> (i % 8) & 1 == 1
}

impl CotSenderPool {
    /// A pool of the given kind; nothing runs before the first [`Self::send`].
    pub fn new(kind: CotKind) -> Self {
        CotSenderPool { kind, state: None }
    }

    /// The kind of this pool.
    pub fn kind(&self) -> CotKind {
        self.kind
    }

    /// `m` correlated OTs on the receiver's chosen bits: Δ and the zero
    /// labels (the receiver's labels are zero ⊕ bᵢ·Δ). The first call runs
    /// the base OTs (and the IKNP set-up), as the receiver's first call does.
    pub fn send<C: Channel, R: RngCore + CryptoRng>(
        &mut self,
        ch: &mut C,
        m: usize,
        rng: &mut R,
    ) -> Result<(Block, Vec<Block>)> {
        check_count(m)?;
        if self.state.is_none() {
            let iknp = CotSender::setup(ch, rng)?;
            let hash_key = Block::random(rng);
            let code = Code { prg_seed: Block::random(rng) };
            ch.send_blocks(&[hash_key, code.prg_seed])?;
            ch.flush()?;
            let source = Source::new(self.kind, iknp);
            self.state = Some((source, TweakHash::new(hash_key), code));
        }
        let Some((source, hash, code)) = self.state.as_mut() else {
            return Err(Error::InvalidArgument("no OT pool".into()));
        };
        match source {
            Source::Iknp(iknp) => Ok((iknp.delta(), iknp.send(ch, m)?)),
            Source::Silent { iknp, reserve, ready, pos, ext, scratch } => {
                let delta = iknp.delta();
                while ready.len() - *pos < m {
                    let base = if reserve.is_empty() {
                        iknp.send(ch, FERRET.base())?
                    } else {
                        derandomize_send(ch, reserve, FERRET.base(), delta)?
                    };
                    extend_send(ch, &FERRET, (hash, code), delta, &base, *ext, scratch, rng)?;
                    *ext += 1;
                    ready.drain(..*pos);
                    *pos = 0;
                    reserve.clear();
                    reserve.extend_from_slice(&scratch[..FERRET.base()]);
                    ready.extend_from_slice(&scratch[FERRET.base()..]);
                }
                let take = &ready[*pos..*pos + m];
                *pos += m;
                let out = derandomize_send(ch, take, m, delta)?;
                Ok((delta, out))
            }
        }
    }
}

/// The sender's side of turning random-choice COTs `y` into `m` COTs on
/// the receiver's chosen bits: reads the corrections d, returns y ⊕ d·Δ.
fn derandomize_send<C: Channel>(
    ch: &mut C,
    y: &[Block],
    m: usize,
    delta: Block,
) -> Result<Vec<Block>> {
    let mut d = vec![0u8; m.div_ceil(8)];
    ch.recv_bytes(&mut d)?;
    Ok(y[..m].iter().enumerate().map(|(i, &v)| v ^ delta.and_bit(bit(&d, i))).collect())
}

/// One extension, sender side: `base` holds k COTs for the secret, then
/// t·h for the trees' OTs; writes the n outputs to `s`.
#[allow(clippy::too_many_arguments)]
fn extend_send<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    p: &LpnParams,
    (hash, code): (&TweakHash, &Code),
    delta: Block,
    base: &[Block],
    ext: u64,
    s: &mut Vec<Block>,
    rng: &mut R,
) -> Result<()> {
    let leaves = 1 << p.h;
    let ggm = Ggm::new();
    s.resize(p.n, Block::ZERO);
    let mut tmp = vec![Block::ZERO; leaves];
    let mut msgs = Vec::with_capacity(2 * p.h + 1);
    let mut hx = [Block::ZERO; 2];
    let mut scratch = [Block::ZERO; 2];
    for tree in 0..p.t {
        let buf = &mut s[tree * leaves..(tree + 1) * leaves];
        buf[0] = Block::random(rng);
        msgs.clear();
        for level in 0..p.h {
            ggm.expand(buf, 1 << level, &mut tmp);
            let (mut k0, mut k1) = (Block::ZERO, Block::ZERO);
            for pair in buf[..2 << level].chunks_exact(2) {
                k0 ^= pair[0];
                k1 ^= pair[1];
            }
            let q = base[p.k + tree * p.h + level];
            let tweak = tweak(ext, tree, level);
            hx[0] = q;
            hx[1] = q ^ delta;
            hash.hash_many(&mut hx, &[tweak, tweak], &mut scratch);
            msgs.push(k0 ^ hx[0]);
            msgs.push(k1 ^ hx[1]);
        }
        let sum = buf.iter().fold(Block::ZERO, |a, &b| a ^ b);
        msgs.push(sum ^ delta);
        ch.send_blocks(&msgs)?;
    }
    ch.flush()?;
    tmp.zeroize();
    xor_rows(code, p, &base[..p.k], s);
    Ok(())
}

/// A unique tweak per (extension, tree, level).
fn tweak(ext: u64, tree: usize, level: usize) -> u128 {
    (ext as u128) << 64 | (tree as u128) << 8 | level as u128
}

impl CotReceiverPool {
    /// A pool of the given kind; nothing runs before the first
    /// [`Self::receive`].
    pub fn new(kind: CotKind) -> Self {
        CotReceiverPool { kind, state: None, bits: (Vec::new(), Vec::new(), Vec::new()) }
    }

    /// The kind of this pool.
    pub fn kind(&self) -> CotKind {
        self.kind
    }

    /// One correlated OT per choice bit: tᵢ = zeroᵢ ⊕ bᵢ·Δ.
    pub fn receive<C: Channel, R: RngCore + CryptoRng>(
        &mut self,
        ch: &mut C,
        choices: &[bool],
        rng: &mut R,
    ) -> Result<Vec<Block>> {
        let m = choices.len();
        check_count(m)?;
        if self.state.is_none() {
            let iknp = CotReceiver::setup(ch, rng)?;
            let mut keys = [Block::ZERO; 2];
            ch.recv_blocks(&mut keys)?;
            let source = Source::new(self.kind, iknp);
            self.state = Some((source, TweakHash::new(keys[0]), Code { prg_seed: keys[1] }));
        }
        let Some((source, hash, code)) = self.state.as_mut() else {
            return Err(Error::InvalidArgument("no OT pool".into()));
        };
        match source {
            Source::Iknp(iknp) => iknp.receive(ch, choices),
            Source::Silent { iknp, reserve, ready, pos, ext, scratch } => {
                let (reserve_bits, ready_bits, x) = &mut self.bits;
                while ready.len() - *pos < m {
                    // The secret u is random; the trees' choice bits are
                    // the complements of each α's bits, most significant
                    // first.
                    let alphas: Vec<usize> =
                        (0..FERRET.t).map(|_| rng.gen_range(0..1 << FERRET.h)).collect();
                    let mut want: Vec<bool> = (0..FERRET.k).map(|_| rng.gen()).collect();
                    for &a in &alphas {
                        for level in 0..FERRET.h {
                            want.push((a >> (FERRET.h - 1 - level)) & 1 == 0);
                        }
                    }
                    let base = if reserve.is_empty() {
                        iknp.receive(ch, &want)?
                    } else {
                        derandomize_receive(ch, reserve, reserve_bits, &want)?
                    };
                    let z = &mut *scratch;
                    let tree = (&want[..], &alphas[..]);
                    extend_receive(ch, &FERRET, (hash, code), &base, tree, *ext, (x, z))?;
                    want.zeroize();
                    *ext += 1;
                    ready.drain(..*pos);
                    ready_bits.drain(..*pos);
                    *pos = 0;
                    reserve.clear();
                    reserve.extend_from_slice(&z[..FERRET.base()]);
                    reserve_bits.clear();
                    reserve_bits.extend_from_slice(&x[..FERRET.base()]);
                    ready.extend_from_slice(&z[FERRET.base()..]);
                    ready_bits.extend_from_slice(&x[FERRET.base()..]);
                }
                let out = derandomize_receive(
                    ch,
                    &ready[*pos..*pos + m],
                    &ready_bits[*pos..*pos + m],
                    choices,
                )?;
                *pos += m;
                Ok(out)
            }
        }
    }
}

/// The receiver's side of [`derandomize_send`]: sends d = b ⊕ x for the
/// wanted bits b, returns the first `want.len()` of `z`.
fn derandomize_receive<C: Channel>(
    ch: &mut C,
    z: &[Block],
    x: &[bool],
    want: &[bool],
) -> Result<Vec<Block>> {
    let mut d = Vec::with_capacity(want.len().div_ceil(8));
    pack(want.iter().zip(x).map(|(b, x)| b ^ x), &mut d);
    ch.send_bytes(&d)?;
    ch.flush()?;
    Ok(z[..want.len()].to_vec())
}

/// One extension, receiver side: `base` holds the COTs on the bits `want`
/// (the secret's, then the trees' complements of each α's bits); writes x
/// (random choice bits) and z.
fn extend_receive<C: Channel>(
    ch: &mut C,
    p: &LpnParams,
    (hash, code): (&TweakHash, &Code),
    base: &[Block],
    (want, alphas): (&[bool], &[usize]),
    ext: u64,
    (x, r): (&mut Vec<bool>, &mut Vec<Block>),
) -> Result<()> {
    let leaves = 1 << p.h;
    let ggm = Ggm::new();
    r.resize(p.n, Block::ZERO);
    let mut tmp = vec![Block::ZERO; leaves];
    let mut msgs = vec![Block::ZERO; 2 * p.h + 1];
    let mut hx = [Block::ZERO; 1];
    let mut scratch = [Block::ZERO; 1];
    for (tree, &alpha) in alphas.iter().enumerate() {
        ch.recv_blocks(&mut msgs)?;
        let buf = &mut r[tree * leaves..(tree + 1) * leaves];
        buf[0] = Block::ZERO;
        for level in 0..p.h {
            // The path's node at this level (unknown) is at `path`.
            let path = alpha >> (p.h - level);
            ggm.expand(buf, 1 << level, &mut tmp);
            let b = want[p.k + tree * p.h + level];
            let off = usize::from(b);
            buf[2 * path] = Block::ZERO;
            buf[2 * path + 1] = Block::ZERO;
            hx[0] = base[p.k + tree * p.h + level];
            hash.hash_many(&mut hx, &[tweak(ext, tree, level)], &mut scratch);
            let mut k = msgs[2 * level + off] ^ hx[0];
            for pair in buf[..2 << level].chunks_exact(2) {
                k ^= pair[off];
            }
            buf[2 * path + off] = k;
        }
        let sum = buf.iter().fold(Block::ZERO, |a, &b| a ^ b);
        buf[alpha] = msgs[2 * p.h] ^ sum;
    }
    tmp.zeroize();
    x.clear();
    x.resize(p.n, false);
    for (tree, &alpha) in alphas.iter().enumerate() {
        x[tree * leaves + alpha] = true;
    }
    let (w, u) = (&base[..p.k], &want[..p.k]);
    code.rows(p.n, p.k, |i, pos| {
        let (mut z, mut b) = (r[i], x[i]);
        for &j in pos {
            z ^= w[j];
            b ^= u[j];
        }
        r[i] = z;
        x[i] = b;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{MemChannel, TcpChannel};
    use rand::SeedableRng;
    use std::net::TcpListener;
    use std::thread;

    /// Runs a pool of `kind` over several requests and checks the
    /// correlation of every OT.
    fn run<C: Channel + Send + 'static>(mut s: C, mut r: C, kind: CotKind, sizes: &[usize]) {
        let sizes_s = sizes.to_vec();
        let h = thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(21);
            let mut pool = CotSenderPool::new(kind);
            let out: Vec<(Block, Vec<Block>)> =
                sizes_s.iter().map(|&m| pool.send(&mut s, m, &mut rng).unwrap()).collect();
            out
        });
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(22);
        let mut pool = CotReceiverPool::new(kind);
        let mut got = Vec::new();
        for &m in sizes {
            let choices: Vec<bool> = (0..m).map(|_| rng.gen()).collect();
            let t = pool.receive(&mut r, &choices, &mut rng).unwrap();
            got.push((choices, t));
        }
        let sent = h.join().unwrap();
        let delta = sent[0].0;
        assert!(delta.lsb());
        for ((choices, t), (d, zero)) in got.iter().zip(&sent) {
            assert_eq!(*d, delta, "one Δ for the whole pool");
            assert_eq!(t.len(), choices.len());
            for ((c, t), z) in choices.iter().zip(t).zip(zero) {
                assert_eq!(*t, *z ^ delta.and_bit(*c));
            }
        }
    }

    /// Requests that span extensions: the first from IKNP, the later ones
    /// bootstrapped from the pool's reserve.
    #[test]
    fn silent_pool_gives_correlated_ots_across_extensions() {
        let (a, b) = MemChannel::pair();
        let f = FERRET.fresh();
        run(a, b, CotKind::Silent, &[1, 1000, f - 1001, 2, f + 5, 3 * f / 2]);
    }

    #[test]
    fn iknp_pool_over_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || TcpChannel::connect(addr).unwrap());
        let s = TcpChannel::new(l.accept().unwrap().0).unwrap();
        run(s, h.join().unwrap(), CotKind::Iknp, &[1000, 3, 0]);
    }

    /// The silent pool's choice bits look random: about half of each
    /// extension's outputs have x = 1 (a broken code or tree gives far
    /// fewer), and no output's label equals another's.
    #[test]
    fn silent_outputs_are_balanced_and_distinct() {
        let (mut s, mut r) = MemChannel::pair();
        let h = thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
            let mut pool = CotSenderPool::new(CotKind::Silent);
            pool.send(&mut s, 1, &mut rng).unwrap();
            pool
        });
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let mut pool = CotReceiverPool::new(CotKind::Silent);
        pool.receive(&mut r, &[true], &mut rng).unwrap();
        let sender = h.join().unwrap();
        let ones = pool.bits.1.iter().filter(|&&b| b).count() as f64;
        let n = pool.bits.1.len() as f64;
        assert!((ones / n - 0.5).abs() < 0.01, "{ones} of {n}");
        let Some((Source::Silent { ready, .. }, _, _)) = sender.state.as_ref() else {
            panic!("a silent pool");
        };
        let mut v: Vec<u128> = ready.iter().map(|b| b.0).collect();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), ready.len());
    }

    #[test]
    fn the_kind_follows_the_bytes() {
        assert_eq!(CotKind::for_count(1000), CotKind::Iknp);
        assert_eq!(CotKind::for_count(3_000_000), CotKind::Silent);
        // Three million OTs: 48 MB by IKNP, under 3 MB silent.
        // (Timing by hand: `cargo test --release -p delphi-crypto --lib
        // silent_extension_speed -- --ignored --nocapture`.)
        assert!(silent_bytes(3_000_000) < 3_000_000, "{}", silent_bytes(3_000_000));
        assert_eq!(iknp_bytes(3_000_000), 48_001_024);
    }

    /// Wall time of a silent pool's extensions over memory, both sides.
    #[test]
    #[ignore]
    fn silent_extension_speed() {
        let m = 4 * FERRET.fresh();
        for _ in 0..3 {
            let (mut s, mut r) = MemChannel::pair();
            let h = thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
                CotSenderPool::new(CotKind::Silent).send(&mut s, m, &mut rng).unwrap();
            });
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
            let choices = vec![true; m];
            let t = std::time::Instant::now();
            CotReceiverPool::new(CotKind::Silent).receive(&mut r, &choices, &mut rng).unwrap();
            h.join().unwrap();
            eprintln!("4 extensions: {:?}", t.elapsed());
        }
    }
}
