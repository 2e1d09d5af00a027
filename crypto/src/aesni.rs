//! The TMMO hash ([`crate::block::TweakHash`]) fused on AES instructions:
//! both AES calls of each hash, the tweak and the feed-forward in
//! registers, many blocks in flight — with VAES on 512-bit registers (four
//! blocks per instruction) where the CPU has it (AVX-512F + VAES), else
//! AES-NI on 128-bit registers. Chosen once at run time
//! ([`HashPath::detect`]); the portable path (the `aes` crate, used where
//! neither exists) stays available and the tests check that every path
//! gives the same hashes.
//!
//! `DELPHI_AES=portable|aesni|vaes` caps the path (a slower one can be
//! forced for measurement, as `delphi bench relu` does for each path in one
//! run; a faster one than the CPU has is never used).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::block::Block;

/// The fastest path of this CPU (detected once).
static BEST: OnceLock<HashPath> = OnceLock::new();
/// The cap on the path ([`UNSET`] until `DELPHI_AES` is read).
static CAP: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;

/// How the hash runs on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum HashPath {
    /// The `aes` crate, two passes over memory per hash.
    Portable,
    /// Fused, AES-NI on 128-bit registers, eight blocks in flight.
    AesNi,
    /// Fused, VAES on 512-bit registers, 32 blocks in flight (needs
    /// AVX-512F/VL, AVX2 and VAES; the garbling loops are compiled for
    /// AVX-512 on this path too).
    Vaes,
}

impl HashPath {
    /// The fastest path this CPU has, capped by `DELPHI_AES` (read once)
    /// or by [`HashPath::limit_to`]. Hashes made from now on use it.
    pub fn detect() -> HashPath {
        let best = *BEST
            .get_or_init(|| HashPath::available().into_iter().max().unwrap_or(HashPath::Portable));
        let cap = match CAP.load(Ordering::Relaxed) {
            UNSET => {
                let cap = match std::env::var("DELPHI_AES").as_deref() {
                    Ok("portable") => HashPath::Portable,
                    Ok("aesni") => HashPath::AesNi,
                    _ => HashPath::Vaes,
                };
                CAP.store(cap as u8, Ordering::Relaxed);
                cap
            }
            v => HashPath::from_u8(v),
        };
        best.min(cap)
    }

    /// Caps the path of hashes made from now on (benchmarks compare the
    /// paths in one run; a path the CPU lacks is never used).
    pub fn limit_to(cap: HashPath) {
        CAP.store(cap as u8, Ordering::Relaxed);
    }

    fn from_u8(v: u8) -> HashPath {
        match v {
            0 => HashPath::Portable,
            1 => HashPath::AesNi,
            _ => HashPath::Vaes,
        }
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<HashPath> {
        let mut v = vec![HashPath::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("sse2")
            {
                v.push(HashPath::AesNi);
                if std::arch::is_x86_feature_detected!("vaes")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx2")
                {
                    v.push(HashPath::Vaes);
                }
            }
        }
        v
    }

    /// Its name (as `DELPHI_AES` spells it).
    pub fn name(self) -> &'static str {
        match self {
            HashPath::Portable => "portable",
            HashPath::AesNi => "aesni",
            HashPath::Vaes => "vaes",
        }
    }
}

/// AES-128 round keys, expanded once per hash key (public: the hash key is
/// sent in the clear).
#[derive(Clone)]
pub(crate) struct RoundKeys(pub(crate) [u128; 11]);

/// The S-box, for the key schedule (run once per key; the hot paths use
/// the CPU's instructions).
const SBOX: [u8; 256] = {
    // Computed from the field inverse and the affine map at compile time.
    let mut s = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        // Inverse in GF(2^8) by exponentiation: x^254.
        let x = i as u8;
        let mut inv = 1u8;
        let mut base = x;
        let mut e = 254u32;
        while e > 0 {
            if e & 1 == 1 {
                inv = gmul(inv, base);
            }
            base = gmul(base, base);
            e >>= 1;
        }
        if x == 0 {
            inv = 0;
        }
        let b = inv;
        let v =
            b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63;
        s[i] = v;
        i += 1;
    }
    s
};

const fn gmul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 == 1 {
            p ^= a;
        }
        let hi = a & 0x80;
        a <<= 1;
        if hi != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

impl RoundKeys {
    /// The AES-128 key schedule of `key` (its little-endian bytes, as the
    /// `aes` crate reads a [`Block`]).
    pub(crate) fn new(key: Block) -> RoundKeys {
        let kb = key.to_bytes();
        let mut w = [[0u8; 4]; 44];
        for (i, wi) in w.iter_mut().take(4).enumerate() {
            wi.copy_from_slice(&kb[4 * i..4 * i + 4]);
        }
        let mut rcon = 1u8;
        for i in 4..44 {
            let mut t = w[i - 1];
            if i % 4 == 0 {
                t = [
                    SBOX[t[1] as usize],
                    SBOX[t[2] as usize],
                    SBOX[t[3] as usize],
                    SBOX[t[0] as usize],
                ];
                t[0] ^= rcon;
                rcon = gmul(rcon, 2);
            }
            for j in 0..4 {
                w[i][j] = w[i - 4][j] ^ t[j];
            }
        }
        let mut rk = [0u128; 11];
        for (r, k) in rk.iter_mut().enumerate() {
            let mut b = [0u8; 16];
            for j in 0..4 {
                b[4 * j..4 * j + 4].copy_from_slice(&w[4 * r + j]);
            }
            *k = u128::from_le_bytes(b);
        }
        RoundKeys(rk)
    }
}

impl Drop for RoundKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.0.zeroize();
    }
}

/// `xs[i] ← π(π(xs[i]) ⊕ tweaks[i]) ⊕ π(xs[i])` on `path`; `false` (and
/// nothing done) for [`HashPath::Portable`], which the caller runs. `path`
/// must be one of [`HashPath::available`].
pub(crate) fn tmmo(path: HashPath, rk: &RoundKeys, xs: &mut [Block], tweaks: &[u128]) -> bool {
    assert!(tweaks.len() >= xs.len());
    #[cfg(target_arch = "x86_64")]
    {
        let mut done = 0;
        if path == HashPath::Vaes {
            // SAFETY: the path is only chosen when the CPU has AVX-512F and
            // VAES (HashPath::available).
            done = unsafe { x86::tmmo_vaes(&rk.0, xs, tweaks) };
        }
        if path >= HashPath::AesNi {
            // SAFETY: AES-NI and SSE2 are present for these paths.
            unsafe { x86::tmmo_aesni(&rk.0, &mut xs[done..], &tweaks[done..]) };
            return true;
        }
    }
    let _ = (path, rk, xs, tweaks);
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::block::Block;

    /// Ten AES rounds on `$v` (an array of registers) with round keys `$k`.
    macro_rules! aes10 {
        ($v:ident, $k:ident, $xor:ident, $enc:ident, $last:ident) => {
            for r in $v.iter_mut() {
                *r = $xor(*r, $k[0]);
            }
            for key in &$k[1..10] {
                for r in $v.iter_mut() {
                    *r = $enc(*r, *key);
                }
            }
            for r in $v.iter_mut() {
                *r = $last(*r, $k[10]);
            }
        };
    }

    /// The fused hash on `4·R` blocks from `i` (R 512-bit registers).
    macro_rules! vaes_chunk {
        ($R:literal, $k:ident, $xs:ident, $tweaks:ident, $i:ident) => {{
            let px = $xs.as_mut_ptr().add($i).cast::<__m512i>();
            let pt = $tweaks.as_ptr().add($i).cast::<__m512i>();
            let mut p = [_mm512_setzero_si512(); $R];
            for (j, r) in p.iter_mut().enumerate() {
                *r = _mm512_loadu_si512(px.add(j));
            }
            aes10!(p, $k, _mm512_xor_si512, _mm512_aesenc_epi128, _mm512_aesenclast_epi128);
            let mut y = [_mm512_setzero_si512(); $R];
            for (j, r) in y.iter_mut().enumerate() {
                *r = _mm512_xor_si512(p[j], _mm512_loadu_si512(pt.add(j)));
            }
            aes10!(y, $k, _mm512_xor_si512, _mm512_aesenc_epi128, _mm512_aesenclast_epi128);
            for j in 0..$R {
                _mm512_storeu_si512(px.add(j), _mm512_xor_si512(y[j], p[j]));
            }
        }};
    }

    /// The fused hash on 32 blocks at a time (8 × 512-bit registers: with
    /// the 11 round keys, 27 of the 32), then 16; returns how many blocks
    /// it did (a multiple of 16).
    #[target_feature(enable = "avx512f,vaes")]
    pub(super) unsafe fn tmmo_vaes(rk: &[u128; 11], xs: &mut [Block], tweaks: &[u128]) -> usize {
        // SAFETY: loads and stores are unaligned ones
        // inside the slices (i + 32, then i + 16, ≤ len for both); Block
        // and u128 are 16 bytes, so 4 of them are one 64-byte register.
        unsafe {
            let mut k = [_mm512_setzero_si512(); 11];
            for (d, s) in k.iter_mut().zip(rk) {
                *d = _mm512_broadcast_i32x4(_mm_loadu_si128((s as *const u128).cast()));
            }
            let len = xs.len();
            let mut i = 0;
            while i + 32 <= len {
                vaes_chunk!(8, k, xs, tweaks, i);
                i += 32;
            }
            while i + 16 <= len {
                vaes_chunk!(4, k, xs, tweaks, i);
                i += 16;
            }
            i
        }
    }

    /// The fused hash on 8 blocks at a time (8 × 128-bit registers), then
    /// one at a time.
    #[target_feature(enable = "aes,sse2")]
    pub(super) unsafe fn tmmo_aesni(rk: &[u128; 11], xs: &mut [Block], tweaks: &[u128]) {
        // SAFETY: unaligned loads and stores inside the
        // slices (i + 8 ≤ len, then i < len, for both).
        unsafe {
            let mut k = [_mm_setzero_si128(); 11];
            for (d, s) in k.iter_mut().zip(rk) {
                *d = _mm_loadu_si128((s as *const u128).cast());
            }
            let len = xs.len();
            let mut i = 0;
            while i + 8 <= len {
                let px = xs.as_mut_ptr().add(i).cast::<__m128i>();
                let pt = tweaks.as_ptr().add(i).cast::<__m128i>();
                let mut p = [_mm_setzero_si128(); 8];
                for (j, r) in p.iter_mut().enumerate() {
                    *r = _mm_loadu_si128(px.add(j));
                }
                aes10!(p, k, _mm_xor_si128, _mm_aesenc_si128, _mm_aesenclast_si128);
                let mut y = [_mm_setzero_si128(); 8];
                for (j, r) in y.iter_mut().enumerate() {
                    *r = _mm_xor_si128(p[j], _mm_loadu_si128(pt.add(j)));
                }
                aes10!(y, k, _mm_xor_si128, _mm_aesenc_si128, _mm_aesenclast_si128);
                for j in 0..8 {
                    _mm_storeu_si128(px.add(j), _mm_xor_si128(y[j], p[j]));
                }
                i += 8;
            }
            while i < len {
                let px = xs.as_mut_ptr().add(i).cast::<__m128i>();
                let mut p = [_mm_loadu_si128(px)];
                aes10!(p, k, _mm_xor_si128, _mm_aesenc_si128, _mm_aesenclast_si128);
                let mut y = [_mm_xor_si128(p[0], _mm_loadu_si128(tweaks.as_ptr().add(i).cast()))];
                aes10!(y, k, _mm_xor_si128, _mm_aesenc_si128, _mm_aesenclast_si128);
                _mm_storeu_si128(px, _mm_xor_si128(y[0], p[0]));
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::AesPerm;
    use rand::SeedableRng;

    fn portable(key: Block, xs: &[Block], ts: &[u128]) -> Vec<Block> {
        let perm = AesPerm::new(key);
        let pi = |x: Block| {
            let mut v = [x];
            perm.encrypt_in_place(&mut v);
            v[0]
        };
        xs.iter().zip(ts).map(|(x, t)| pi(Block(pi(*x).0 ^ t)) ^ pi(*x)).collect()
    }

    #[test]
    fn every_path_this_cpu_has_gives_the_portable_hashes() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        for key in [Block(0), Block(0x5eed), Block::random(&mut rng), Block(u128::MAX)] {
            let rk = RoundKeys::new(key);
            // Lengths around the 16- and 8-block strides.
            for n in [0usize, 1, 7, 8, 15, 16, 17, 33, 256, 257] {
                let xs: Vec<Block> = (0..n).map(|_| Block::random(&mut rng)).collect();
                let ts: Vec<u128> = (0..n as u128).map(|i| i * 0x9e37_79b9 + 3).collect();
                let want = portable(key, &xs, &ts);
                for path in HashPath::available().into_iter().filter(|p| *p != HashPath::Portable) {
                    let mut got = xs.clone();
                    assert!(tmmo(path, &rk, &mut got, &ts));
                    assert_eq!(got, want, "{path:?}, n = {n}, key {:x}", key.0);
                }
            }
        }
    }

    #[test]
    fn the_key_schedule_is_fips_197s() {
        // FIPS-197 appendix A.1: key 2b7e1516 28aed2a6 abf71588 09cf4f3c,
        // last round key d014f9a8 c9ee2589 e13f0cc8 b6630ca6.
        let key: [u8; 16] = [
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ];
        let rk = RoundKeys::new(Block::from_bytes(key));
        let last: [u8; 16] = [
            0xd0, 0x14, 0xf9, 0xa8, 0xc9, 0xee, 0x25, 0x89, 0xe1, 0x3f, 0x0c, 0xc8, 0xb6, 0x63,
            0x0c, 0xa6,
        ];
        assert_eq!(rk.0[10].to_le_bytes(), last);
        assert_eq!(rk.0[0].to_le_bytes(), key);
    }

    #[test]
    fn the_cap_never_goes_above_the_cpu() {
        let best = *HashPath::available().last().unwrap_or(&HashPath::Portable);
        assert!(HashPath::detect() <= best);
        assert_eq!(HashPath::available()[0], HashPath::Portable);
    }
}
