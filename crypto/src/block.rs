//! 128-bit blocks, fixed-key AES hashing and AES-CTR pseudorandom generators.

use std::fmt;
use std::ops::{BitAnd, BitXor, BitXorAssign};

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use rand::{CryptoRng, RngCore, SeedableRng};
use zeroize::Zeroize;

/// A 128-bit block: a wire label, an OT message, a hash output.
///
/// Blocks usually hold secrets, so `Debug` does not print them. On the wire a
/// block is 16 little-endian bytes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Block(pub u128);

impl Block {
    /// The all-zero block.
    pub const ZERO: Block = Block(0);

    /// The least significant bit (the point-and-permute colour of a label).
    #[inline(always)]
    pub fn lsb(self) -> bool {
        self.0 & 1 == 1
    }

    /// `self` if `bit`, else zero, without a branch.
    #[inline(always)]
    pub fn and_bit(self, bit: bool) -> Block {
        // One 64-bit mask for both halves (vectorises; a 128-bit negation
        // does not).
        let m = (bit as u64).wrapping_neg() as u128;
        Block(self.0 & (m | (m << 64)))
    }

    /// The little-endian bytes.
    #[inline]
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    /// From little-endian bytes.
    #[inline]
    pub fn from_bytes(b: [u8; 16]) -> Block {
        Block(u128::from_le_bytes(b))
    }

    /// The linear orthomorphism σ(x_L ‖ x_R) = (x_L ⊕ x_R) ‖ x_L used by the
    /// circular-correlation-robust hash (Guo et al., eprint 2019/074, §7.3).
    #[inline(always)]
    pub fn sigma(self) -> Block {
        let hi = (self.0 >> 64) as u64;
        let lo = self.0 as u64;
        Block((((hi ^ lo) as u128) << 64) | hi as u128)
    }

    /// A uniformly random block.
    pub fn random<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Block {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        Block::from_bytes(b)
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Block(..)")
    }
}

impl BitXor for Block {
    type Output = Block;
    #[inline(always)]
    fn bitxor(self, rhs: Block) -> Block {
        Block(self.0 ^ rhs.0)
    }
}

impl BitXorAssign for Block {
    #[inline(always)]
    fn bitxor_assign(&mut self, rhs: Block) {
        self.0 ^= rhs.0;
    }
}

impl BitAnd for Block {
    type Output = Block;
    #[inline(always)]
    fn bitand(self, rhs: Block) -> Block {
        Block(self.0 & rhs.0)
    }
}

/// `out[i] = a[i] ⊕ b[i]` over the shortest of the three, on the blocks'
/// 64-bit halves: loops over those vectorise (to 256-bit registers where
/// the caller is compiled for AVX2) where a loop of u128 XORs is split into
/// scalar halves.
#[inline(always)]
pub(crate) fn xor_blocks(out: &mut [Block], a: &[Block], b: &[Block]) {
    for ((d, x), y) in words_mut(out).iter_mut().zip(words(a)).zip(words(b)) {
        *d = x ^ y;
    }
}

/// `out[i] = a[i] ⊕ c` over the shorter of the two, as [`xor_blocks`].
#[inline(always)]
pub(crate) fn xor_block_const(out: &mut [Block], a: &[Block], c: Block) {
    let c = [c.0 as u64, (c.0 >> 64) as u64];
    for (d, x) in words_mut(out).chunks_exact_mut(2).zip(words(a).chunks_exact(2)) {
        d[0] = x[0] ^ c[0];
        d[1] = x[1] ^ c[1];
    }
}

#[inline(always)]
fn words(b: &[Block]) -> &[u64] {
    // SAFETY: Block is a transparent u128 (16 bytes, aligned to 16): two
    // u64s (aligned to 8) in the target's byte order cover each exactly,
    // and every bit pattern is valid for both types.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u64>(), 2 * b.len()) }
}

#[inline(always)]
fn words_mut(b: &mut [Block]) -> &mut [u64] {
    // SAFETY: as in `words`; the borrow is exclusive for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<u64>(), 2 * b.len()) }
}

impl Zeroize for Block {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

/// Views blocks as their in-memory bytes.
///
/// Only used on little-endian targets, where that is also the wire format.
#[cfg(target_endian = "little")]
pub(crate) fn blocks_as_bytes(b: &[Block]) -> &[u8] {
    // SAFETY: Block is repr(transparent) over u128, which has no padding; any
    // byte view of initialised u128s is valid and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), std::mem::size_of_val(b)) }
}

/// Views blocks as mutable bytes (every bit pattern is a valid block).
#[cfg(target_endian = "little")]
pub(crate) fn blocks_as_bytes_mut(b: &mut [Block]) -> &mut [u8] {
    // SAFETY: as above; additionally every byte pattern is a valid u128, so
    // writes through the byte view cannot create an invalid Block.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(b)) }
}

/// An AES-128 permutation π under a public key, applied to many blocks at a
/// time so that AES-NI pipelines (8 blocks in flight).
#[derive(Clone)]
pub struct AesPerm {
    aes: Aes128,
}

impl AesPerm {
    /// The permutation keyed by `key`.
    pub fn new(key: Block) -> Self {
        AesPerm { aes: Aes128::new(&key.to_bytes().into()) }
    }

    /// Encrypts `input` into `output` (same length).
    #[inline]
    pub fn encrypt_to(&self, input: &[Block], output: &mut [Block]) {
        assert_eq!(input.len(), output.len());
        #[cfg(target_endian = "little")]
        {
            // SAFETY: as in `encrypt_in_place`; both views cover exactly the
            // given slices, which do not overlap (one is shared, one unique).
            let (i, o) = unsafe {
                (
                    std::slice::from_raw_parts(input.as_ptr().cast::<aes::Block>(), input.len()),
                    std::slice::from_raw_parts_mut(
                        output.as_mut_ptr().cast::<aes::Block>(),
                        output.len(),
                    ),
                )
            };
            if self.aes.encrypt_blocks_b2b(i, o).is_err() {
                unreachable!("lengths checked above");
            }
        }
        #[cfg(not(target_endian = "little"))]
        {
            output.copy_from_slice(input);
            self.encrypt_in_place(output);
        }
    }

    /// Encrypts blocks in place.
    #[inline]
    pub fn encrypt_in_place(&self, blocks: &mut [Block]) {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: aes::Block is GenericArray<u8, U16>, a repr(transparent)
            // wrapper of [u8; 16]; Block is 16 bytes with alignment 16 >= 1.
            // The AES state is read as the block's little-endian bytes, which
            // is exactly its memory layout here.
            let view = unsafe {
                std::slice::from_raw_parts_mut(
                    blocks.as_mut_ptr().cast::<aes::Block>(),
                    blocks.len(),
                )
            };
            self.aes.encrypt_blocks(view);
        }
        #[cfg(not(target_endian = "little"))]
        for b in blocks.iter_mut() {
            let mut g = aes::Block::from(b.to_bytes());
            self.aes.encrypt_block(&mut g);
            *b = Block::from_bytes(g.into());
        }
    }
}

/// Tweakable circular-correlation-robust hash from two AES calls, the TMMO
/// construction of Guo, Katz, Wang, Weng and Yu ("Better concrete security
/// for half-gates garbling (in the multi-instance setting)", CRYPTO 2020):
///
/// > H(x, i) = π(π(x) ⊕ i) ⊕ π(x), π keyed per session.
///
/// They prove it tweakable circular correlation robust (TCCR) in the
/// ideal-permutation model, which is what half-gates garbling and the
/// correlated OT keys of the truncation need. The one-call alternative,
/// π(σ(x) ⊕ i) ⊕ σ(x) ⊕ i (σ-MMO with the tweak XORed into the input), is
/// not TCCR — a tweak and a correlation can cancel — so it is not used; the
/// second AES call roughly halves the hash's throughput (see
/// docs/protocol.md's measured garbling rates). The permutation key is drawn fresh for every
/// garbling session and sent in the clear.
///
/// Where the CPU has them, both AES calls run fused in registers on VAES
/// (four blocks per instruction) or AES-NI ([`crate::aesni`]); the `aes`
/// crate's path is the portable fallback, and every path gives the same
/// hashes.
#[derive(Clone)]
pub struct TweakHash {
    perm: AesPerm,
    keys: crate::aesni::RoundKeys,
    path: crate::aesni::HashPath,
}

impl TweakHash {
    /// The hash under a (public) session key, on the fastest path this CPU
    /// has ([`crate::aesni::HashPath::detect`]).
    pub fn new(key: Block) -> Self {
        Self::with_path(key, crate::aesni::HashPath::detect())
    }

    /// The hash on a given path (one of [`crate::aesni::HashPath::available`];
    /// the portable one otherwise), for measurements and tests.
    pub fn with_path(key: Block, path: crate::aesni::HashPath) -> Self {
        let path = if crate::aesni::HashPath::available().contains(&path) {
            path
        } else {
            crate::aesni::HashPath::Portable
        };
        TweakHash { perm: AesPerm::new(key), keys: crate::aesni::RoundKeys::new(key), path }
    }

    /// The path this hash runs on.
    pub fn path(&self) -> crate::aesni::HashPath {
        self.path
    }

    /// Replaces each `xs[i]` by `H(xs[i], tweaks[i])`; `scratch` holds at
    /// least `xs.len()` blocks (used by the portable path). Pipelined over
    /// the whole slice.
    #[inline]
    pub fn hash_many(&self, xs: &mut [Block], tweaks: &[u128], scratch: &mut [Block]) {
        let n = xs.len();
        assert!(tweaks.len() >= n && scratch.len() >= n);
        if crate::aesni::tmmo(self.path, &self.keys, xs, tweaks) {
            return;
        }
        let s = &mut scratch[..n];
        self.perm.encrypt_to(xs, s);
        for ((x, p), t) in xs.iter_mut().zip(s.iter()).zip(tweaks) {
            *x = Block(p.0 ^ *t);
        }
        self.perm.encrypt_in_place(xs);
        for (x, p) in xs.iter_mut().zip(s.iter()) {
            *x ^= *p;
        }
    }

    /// The AES round keys (for the fused kernels of [`crate::aesni`]).
    pub(crate) fn keys(&self) -> &crate::aesni::RoundKeys {
        &self.keys
    }

    /// Hashes one block (slow path; for tests and small uses).
    pub fn hash(&self, x: Block, tweak: u128) -> Block {
        let mut v = [x];
        let mut s = [Block::ZERO];
        self.hash_many(&mut v, &[tweak], &mut s);
        v[0]
    }
}

/// An AES-128-CTR pseudorandom generator: the stream expanded from a seed.
pub struct AesPrg {
    perm: AesPerm,
    counter: u128,
}

impl AesPrg {
    /// The generator seeded by `seed`.
    pub fn new(seed: Block) -> Self {
        AesPrg { perm: AesPerm::new(seed), counter: 0 }
    }

    /// Fills `out` with the next blocks of the stream.
    pub fn fill_blocks(&mut self, out: &mut [Block]) {
        for b in out.iter_mut() {
            *b = Block(self.counter);
            self.counter += 1;
        }
        self.perm.encrypt_in_place(out);
    }

    /// Fills `out` with the next bytes of the stream (whole blocks are consumed).
    pub fn fill_bytes_blocks(&mut self, out: &mut [u8]) {
        let mut buf = [Block::ZERO; 64];
        for chunk in out.chunks_mut(64 * 16) {
            let nb = chunk.len().div_ceil(16);
            self.fill_blocks(&mut buf[..nb]);
            for (i, c) in chunk.chunks_mut(16).enumerate() {
                c.copy_from_slice(&buf[i].to_bytes()[..c.len()]);
            }
        }
        buf.zeroize();
    }
}

/// The generator for secret randomness (labels, masks, keys): ChaCha20
/// seeded from the operating system unless a test fixes the seed.
pub type SecretRng = rand_chacha::ChaCha20Rng;

/// A secret-randomness generator seeded from the operating system.
pub fn secret_rng() -> SecretRng {
    SecretRng::from_entropy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_xors_equal_block_xors() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let a: Vec<Block> = (0..37).map(|_| Block::random(&mut rng)).collect();
        let b: Vec<Block> = (0..37).map(|_| Block::random(&mut rng)).collect();
        let c = Block::random(&mut rng);
        let mut out = vec![Block::ZERO; 37];
        xor_blocks(&mut out, &a, &b);
        assert!(out.iter().zip(a.iter().zip(&b)).all(|(o, (x, y))| *o == *x ^ *y));
        xor_block_const(&mut out[..20], &a, c);
        assert!(out[..20].iter().zip(&a).all(|(o, x)| *o == *x ^ c));
        assert!(out[20..]
            .iter()
            .zip(a[20..].iter().zip(&b[20..]))
            .all(|(o, (x, y))| *o == *x ^ *y));
    }

    #[test]
    fn aes_matches_fips197_vector() {
        // FIPS-197 appendix C.1.
        let key = Block::from_bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        let pt = Block::from_bytes([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        let mut v = vec![pt; 19];
        AesPerm::new(key).encrypt_in_place(&mut v);
        let want = [
            0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4,
            0xc5, 0x5a,
        ];
        assert!(v.iter().all(|b| b.to_bytes() == want));
    }

    #[test]
    fn sigma_is_an_orthomorphism_on_samples() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        for _ in 0..1000 {
            let x = Block::random(&mut rng);
            let y = Block::random(&mut rng);
            assert_eq!((x ^ y).sigma(), x.sigma() ^ y.sigma());
            if x != y {
                assert_ne!(x.sigma(), y.sigma());
                assert_ne!(x.sigma() ^ x, y.sigma() ^ y);
            }
        }
    }

    #[test]
    fn the_hash_is_tmmo() {
        // H(x, i) = π(π(x) ⊕ i) ⊕ π(x), one block at a time and batched.
        let key = Block(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        let (h, perm) = (TweakHash::new(key), AesPerm::new(key));
        let pi = |x: Block| {
            let mut v = [x];
            perm.encrypt_in_place(&mut v);
            v[0]
        };
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let xs: Vec<Block> = (0..37).map(|_| Block::random(&mut rng)).collect();
        let ts: Vec<u128> = (0..37u128).map(|i| i * 0x9e37_79b9 + 1).collect();
        let mut batch = xs.clone();
        h.hash_many(&mut batch, &ts, &mut vec![Block::ZERO; 37]);
        for ((x, t), got) in xs.iter().zip(&ts).zip(&batch) {
            let want = pi(Block(pi(*x).0 ^ t)) ^ pi(*x);
            assert_eq!(*got, want);
            assert_eq!(h.hash(*x, *t), want);
        }
    }

    #[test]
    fn hash_depends_on_tweak_and_input() {
        let h = TweakHash::new(Block(5));
        let x = Block(42);
        assert_ne!(h.hash(x, 0), h.hash(x, 1));
        assert_ne!(h.hash(x, 0), h.hash(Block(43), 0));
        assert_eq!(h.hash(x, 9), h.hash(x, 9));
    }

    #[test]
    fn prg_streams_continue() {
        let mut a = AesPrg::new(Block(3));
        let mut b = AesPrg::new(Block(3));
        let mut one = vec![Block::ZERO; 10];
        a.fill_blocks(&mut one);
        let mut first = vec![Block::ZERO; 4];
        let mut rest = vec![Block::ZERO; 6];
        b.fill_blocks(&mut first);
        b.fill_blocks(&mut rest);
        assert_eq!(&one[..4], &first[..]);
        assert_eq!(&one[4..], &rest[..]);
    }
}
