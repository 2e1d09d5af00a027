//! The TMMO hash ([`crate::block::TweakHash`]) fused on AES instructions:
//! both AES calls of each hash, the tweak and the feed-forward in
//! registers, many blocks in flight — with VAES on 512-bit registers (four
//! blocks per instruction) where the CPU has it (AVX-512F + VAES), with
//! VAES on 256-bit registers (two blocks per instruction) where it has VAES
//! and AVX2 only (AMD Zen 3), else AES-NI on 128-bit registers — and the
//! garbled AND gate fused on the same registers ([`garble_and`],
//! [`eval_and`]: labels, tweaks and tables loaded beside the hashes, no
//! pass over memory between them), one body for the three widths. Chosen
//! once at run time ([`HashPath::detect`]); the portable path (the `aes` crate, used where
//! neither exists) stays available and the tests check that every path
//! gives the same hashes.
//!
//! `DELPHI_AES=portable|aesni|vaes256|vaes` caps the path (a slower one can be
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
    /// Fused, VAES on 256-bit registers, 16 blocks in flight (needs VAES
    /// and AVX2; the garbling loops are compiled for AVX2 on this path).
    Vaes256,
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
                    Ok("vaes256") => HashPath::Vaes256,
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
            2 => HashPath::Vaes256,
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
                    && std::arch::is_x86_feature_detected!("avx2")
                {
                    v.push(HashPath::Vaes256);
                }
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
            HashPath::Vaes256 => "vaes256",
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
        } else if path == HashPath::Vaes256 {
            // SAFETY: the path is only chosen when the CPU has VAES and
            // AVX2 (HashPath::available).
            done = unsafe { x86::tmmo_vaes256(&rk.0, xs, tweaks) };
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

/// Checks a fused gate's ranges (n labels from `a`, `b` and to `o` inside
/// `wires`, the output's apart from the inputs', 2n table rows) and says
/// whether it runs fused: on the AES-NI and VAES paths, n a multiple of 16.
fn fused_gate(
    path: HashPath,
    wires: usize,
    (a, b, o): (usize, usize, usize),
    n: usize,
    tables: usize,
) -> bool {
    assert!(tables == 2 * n, "two table rows per instance");
    assert!(a + n <= wires && b + n <= wires && o + n <= wires, "labels inside the wires");
    assert!((o + n <= a || a + n <= o) && (o + n <= b || b + n <= o), "output apart from inputs");
    path >= HashPath::AesNi && n.is_multiple_of(16)
}

/// One evaluated AND gate of n = 16·m instances in one pass, on the AES-NI
/// or a VAES path. The batch's wire labels lie in `wires`, n per wire; the
/// gate's inputs start at `a` and `b`, its output at `o` (not overlapping
/// either). For instance i with labels x = `wires[a + i]`, y =
/// `wires[b + i]`, tweak t = `tweaks[i]` + 2·`gate` (even) and tables
/// (g, e) = `tables[2i]`, `tables[2i + 1]`: `wires[o + i]` ← H(x, t) ⊕
/// lsb(x)·g ⊕ H(y, t | 1) ⊕ lsb(y)·(e ⊕ x), H the TMMO hash — what the
/// evaluator's gate loop computes through [`tmmo`], with the hash inputs,
/// tweaks and tables kept in registers. Returns `false` (nothing done) on
/// the portable path or unless n is a multiple of 16. Every `tweaks[i]` +
/// 2·`gate` must fit in 64 bits (the caller checks).
pub(crate) fn eval_and(
    path: HashPath,
    rk: &RoundKeys,
    wires: &mut [Block],
    (a, b, o): (usize, usize, usize),
    tweaks: &[u64],
    gate: u64,
    tables: &[Block],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if fused_gate(path, wires.len(), (a, b, o), tweaks.len(), tables.len()) {
        let w = wires.as_mut_ptr();
        // SAFETY: each path is only chosen when the CPU has its features
        // (HashPath::available); the ranges were checked to lie in `wires`,
        // the output's apart from the inputs'.
        unsafe {
            let ws = (w.add(a).cast_const(), w.add(b).cast_const(), w.add(o));
            match path {
                HashPath::Vaes => x86::eval_and_vaes(&rk.0, ws, tweaks, gate, tables),
                HashPath::Vaes256 => x86::eval_and_vaes256(&rk.0, ws, tweaks, gate, tables),
                _ => x86::eval_and_aesni(&rk.0, ws, tweaks, gate, tables),
            }
        };
        return true;
    }
    let _ = (path, rk, wires, a, b, o, tweaks, gate, tables);
    false
}

/// One garbled AND gate of n = 16·m instances in one pass, on the AES-NI
/// or a VAES path, in the layout of [`eval_and`]: for instance i with zero
/// labels x = `wires[a + i]`, y = `wires[b + i]` and tweak t as there,
/// with p = lsb(x), q = lsb(y), the half gates g = H(x, t) ⊕ H(x ⊕ Δ, t) ⊕
/// q·Δ and e = H(y, t | 1) ⊕ H(y ⊕ Δ, t | 1) ⊕ x go to `tables[2i]`,
/// `tables[2i + 1]` and the output's zero label H(x, t) ⊕ p·g ⊕
/// H(y, t | 1) ⊕ q·(e ⊕ x) to `wires[o + i]` — what the garbler's gate loop
/// computes through [`tmmo`]. Returns `false` (nothing done) on the
/// portable path or unless n is a multiple of 16.
#[allow(clippy::too_many_arguments)]
pub(crate) fn garble_and(
    path: HashPath,
    rk: &RoundKeys,
    wires: &mut [Block],
    (a, b, o): (usize, usize, usize),
    delta: Block,
    tweaks: &[u64],
    gate: u64,
    tables: &mut [Block],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if fused_gate(path, wires.len(), (a, b, o), tweaks.len(), tables.len()) {
        let w = wires.as_mut_ptr();
        // SAFETY: as in `eval_and`.
        unsafe {
            let ws = (w.add(a).cast_const(), w.add(b).cast_const(), w.add(o));
            match path {
                HashPath::Vaes => x86::garble_and_vaes(&rk.0, ws, delta, tweaks, gate, tables),
                HashPath::Vaes256 => {
                    x86::garble_and_vaes256(&rk.0, ws, delta, tweaks, gate, tables)
                }
                _ => x86::garble_and_aesni(&rk.0, ws, delta, tweaks, gate, tables),
            }
        };
        return true;
    }
    let _ = (path, rk, wires, a, b, o, delta, tweaks, gate, tables);
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::block::Block;

    /// The operations of the fused hash and gates on `W`-bit registers
    /// (`W` = 512 or 256 with VAES, 128 with AES-NI; L = W / 128 blocks to
    /// a register), so that one body of each serves the three widths.
    macro_rules! v {
        (512, ty) => {
            __m512i
        };
        (256, ty) => {
            __m256i
        };
        (128, ty) => {
            __m128i
        };
        (512, zero) => {
            _mm512_setzero_si512()
        };
        (256, zero) => {
            _mm256_setzero_si256()
        };
        (128, zero) => {
            _mm_setzero_si128()
        };
        (512, load, $p:expr) => {
            _mm512_loadu_si512($p)
        };
        (256, load, $p:expr) => {
            _mm256_loadu_si256($p)
        };
        (128, load, $p:expr) => {
            _mm_loadu_si128($p)
        };
        (512, store, $p:expr, $x:expr) => {
            _mm512_storeu_si512($p, $x)
        };
        (256, store, $p:expr, $x:expr) => {
            _mm256_storeu_si256($p, $x)
        };
        (128, store, $p:expr, $x:expr) => {
            _mm_storeu_si128($p, $x)
        };
        (512, xor, $a:expr, $b:expr) => {
            _mm512_xor_si512($a, $b)
        };
        (256, xor, $a:expr, $b:expr) => {
            _mm256_xor_si256($a, $b)
        };
        (128, xor, $a:expr, $b:expr) => {
            _mm_xor_si128($a, $b)
        };
        (512, and, $a:expr, $b:expr) => {
            _mm512_and_si512($a, $b)
        };
        (256, and, $a:expr, $b:expr) => {
            _mm256_and_si256($a, $b)
        };
        (128, and, $a:expr, $b:expr) => {
            _mm_and_si128($a, $b)
        };
        (512, or, $a:expr, $b:expr) => {
            _mm512_or_si512($a, $b)
        };
        (256, or, $a:expr, $b:expr) => {
            _mm256_or_si256($a, $b)
        };
        (128, or, $a:expr, $b:expr) => {
            _mm_or_si128($a, $b)
        };
        // Ten AES rounds on the registers of array `$r` with round keys `$k`.
        (512, aes10, $r:ident, $k:ident) => {
            aes10!($r, $k, _mm512_xor_si512, _mm512_aesenc_epi128, _mm512_aesenclast_epi128)
        };
        (256, aes10, $r:ident, $k:ident) => {
            aes10!($r, $k, _mm256_xor_si256, _mm256_aesenc_epi128, _mm256_aesenclast_epi128)
        };
        (128, aes10, $r:ident, $k:ident) => {
            aes10!($r, $k, _mm_xor_si128, _mm_aesenc_si128, _mm_aesenclast_si128)
        };
        // The 16 bytes at `$p` in each lane.
        (512, bcast, $p:expr) => {
            _mm512_broadcast_i32x4(_mm_loadu_si128($p))
        };
        (256, bcast, $p:expr) => {
            _mm256_broadcastsi128_si256(_mm_loadu_si128($p))
        };
        (128, bcast, $p:expr) => {
            _mm_loadu_si128($p)
        };
        // Each lane 1 (the tweak bit of a gate's second hash).
        (512, one) => {
            _mm512_set_epi64(0, 1, 0, 1, 0, 1, 0, 1)
        };
        (256, one) => {
            _mm256_set_epi64x(0, 1, 0, 1)
        };
        (128, one) => {
            _mm_set_epi64x(0, 1)
        };
        // Each lane all ones where its least significant bit is set.
        (512, lsb, $x:expr) => {
            _mm512_shuffle_epi32::<0x44>(_mm512_srai_epi64::<63>(_mm512_slli_epi64::<63>($x)))
        };
        (256, lsb, $x:expr) => {
            _mm256_shuffle_epi32::<0>(_mm256_srai_epi32::<31>(_mm256_slli_epi32::<31>($x)))
        };
        (128, lsb, $x:expr) => {
            _mm_shuffle_epi32::<0>(_mm_srai_epi32::<31>(_mm_slli_epi32::<31>($x)))
        };
        // 2L instances' tweaks for gate `$gate` from the register of u64s at
        // `$pt` (each 2·base): two registers of L (2·(base + gate), 0) lanes.
        (512, tweaks, $pt:expr, $gate:ident) => {{
            let raw =
                _mm512_add_epi64(_mm512_loadu_si512($pt), _mm512_set1_epi64((2 * $gate) as i64));
            let zero = _mm512_setzero_si512();
            [
                _mm512_permutex2var_epi64(raw, _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0), zero),
                _mm512_permutex2var_epi64(raw, _mm512_set_epi64(11, 7, 10, 6, 9, 5, 8, 4), zero),
            ]
        }};
        (256, tweaks, $pt:expr, $gate:ident) => {{
            let raw =
                _mm256_add_epi64(_mm256_loadu_si256($pt), _mm256_set1_epi64x((2 * $gate) as i64));
            // [t0 t1 t2 t3] → lanes (t0, t2), (t1, t3), then each lane's low
            // and high u64 beside a zero.
            let r = _mm256_permute4x64_epi64::<0xd8>(raw);
            let zero = _mm256_setzero_si256();
            [_mm256_unpacklo_epi64(r, zero), _mm256_unpackhi_epi64(r, zero)]
        }};
        (128, tweaks, $pt:expr, $gate:ident) => {{
            let raw = _mm_add_epi64(_mm_loadu_si128($pt), _mm_set1_epi64x((2 * $gate) as i64));
            let zero = _mm_setzero_si128();
            [_mm_unpacklo_epi64(raw, zero), _mm_unpackhi_epi64(raw, zero)]
        }};
        // Two registers of table rows [g0 e0 g1 e1 …] → ([g0 g1 …], [e0 e1 …]).
        (512, split, $z0:expr, $z1:expr) => {{
            let (z0, z1) = ($z0, $z1);
            (
                _mm512_permutex2var_epi64(z0, _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0), z1),
                _mm512_permutex2var_epi64(z0, _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2), z1),
            )
        }};
        (256, split, $z0:expr, $z1:expr) => {{
            let (z0, z1) = ($z0, $z1);
            (_mm256_permute2x128_si256::<0x20>(z0, z1), _mm256_permute2x128_si256::<0x31>(z0, z1))
        }};
        (128, split, $z0:expr, $z1:expr) => {
            ($z0, $z1)
        };
        // The inverse of `split`.
        (512, join, $g:expr, $e:expr) => {{
            let (g, e) = ($g, $e);
            (
                _mm512_permutex2var_epi64(g, _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), e),
                _mm512_permutex2var_epi64(g, _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4), e),
            )
        }};
        // (With one or two lanes a register, the exchange is its own inverse.)
        (256, join, $g:expr, $e:expr) => {
            v!(256, split, $g, $e)
        };
        (128, join, $g:expr, $e:expr) => {
            ($g, $e)
        };
    }

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

    /// The 11 round keys `$rk`, each in every lane of a `W`-bit register.
    macro_rules! keys {
        ($W:tt, $rk:ident) => {{
            let mut k = [v!($W, zero); 11];
            for (d, s) in k.iter_mut().zip($rk) {
                *d = v!($W, bcast, (s as *const u128).cast());
            }
            k
        }};
    }

    /// The fused hash on R `W`-bit registers of blocks from `i`.
    macro_rules! fused_chunk {
        ($W:tt, $R:literal, $k:ident, $xs:ident, $tweaks:ident, $i:ident) => {{
            let px = $xs.as_mut_ptr().add($i).cast::<v!($W, ty)>();
            let pt = $tweaks.as_ptr().add($i).cast::<v!($W, ty)>();
            let mut p = [v!($W, zero); $R];
            for (j, r) in p.iter_mut().enumerate() {
                *r = v!($W, load, px.add(j));
            }
            v!($W, aes10, p, $k);
            let mut y = [v!($W, zero); $R];
            for (j, r) in y.iter_mut().enumerate() {
                *r = v!($W, xor, p[j], v!($W, load, pt.add(j)));
            }
            v!($W, aes10, y, $k);
            for j in 0..$R {
                v!($W, store, px.add(j), v!($W, xor, y[j], p[j]));
            }
        }};
    }

    /// The fused hash over `$xs`: R1 registers of blocks at a time, then R2;
    /// returns how many blocks it did (a multiple of R2 · L).
    macro_rules! tmmo_body {
        ($W:tt, $R1:literal, $R2:literal, $rk:ident, $xs:ident, $tweaks:ident) => {{
            let k = keys!($W, $rk);
            let (len, lanes) = ($xs.len(), $W / 128);
            let mut i = 0;
            while i + $R1 * lanes <= len {
                fused_chunk!($W, $R1, k, $xs, $tweaks, i);
                i += $R1 * lanes;
            }
            while i + $R2 * lanes <= len {
                fused_chunk!($W, $R2, k, $xs, $tweaks, i);
                i += $R2 * lanes;
            }
            i
        }};
    }

    /// The fused hash on 32 blocks at a time (8 × 512-bit registers: with
    /// the 11 round keys, 27 of the 32), then 16; returns how many blocks
    /// it did (a multiple of 16).
    #[target_feature(enable = "avx512f,vaes")]
    pub(super) unsafe fn tmmo_vaes(rk: &[u128; 11], xs: &mut [Block], tweaks: &[u128]) -> usize {
        // SAFETY: loads and stores are unaligned ones inside the slices
        // (i + 32, then i + 16, ≤ len for both); Block and u128 are 16
        // bytes, so 4 of them are one 64-byte register.
        unsafe { tmmo_body!(512, 8, 4, rk, xs, tweaks) }
    }

    /// The fused hash on 16 blocks at a time (8 × 256-bit registers; the
    /// round keys come from memory, as AVX2 has 16 registers), then 4;
    /// returns how many blocks it did (a multiple of 4).
    #[target_feature(enable = "avx2,vaes")]
    pub(super) unsafe fn tmmo_vaes256(rk: &[u128; 11], xs: &mut [Block], tweaks: &[u128]) -> usize {
        // SAFETY: as in `tmmo_vaes` (i + 16, then i + 4; 2 blocks to a
        // 32-byte register).
        unsafe { tmmo_body!(256, 8, 2, rk, xs, tweaks) }
    }

    /// The fused hash on 8 blocks at a time (8 × 128-bit registers), then
    /// one at a time: all of them.
    #[target_feature(enable = "aes,sse2")]
    pub(super) unsafe fn tmmo_aesni(rk: &[u128; 11], xs: &mut [Block], tweaks: &[u128]) {
        // SAFETY: as in `tmmo_vaes` (i + 8, then i + 1; one block to a
        // register).
        let _all = unsafe { tmmo_body!(128, 8, 1, rk, xs, tweaks) };
    }

    /// The tweaks of label registers `$i` .. `$i` + R for gate `$gate`, one
    /// register of lanes each, from the u64 tweaks at `$pt` (a register of
    /// them serves two label registers).
    macro_rules! tweak_lanes {
        ($W:tt, $R:literal, $pt:ident, $i:ident, $gate:ident) => {{
            let mut t = [v!($W, zero); $R];
            for h in 0..$R / 2 {
                [t[2 * h], t[2 * h + 1]] = v!($W, tweaks, $pt.add($i / 2 + h), $gate);
            }
            t
        }};
    }

    /// [`super::eval_and`] on `W`-bit registers: R registers of A labels
    /// and R of B per step (R·L instances, 2R hashes in flight), the tables
    /// and tweaks loaded beside them.
    macro_rules! eval_and_body {
        ($W:tt, $R:literal, $rk:ident, $wa:ident, $wb:ident, $wo:ident, $tweaks:ident,
         $gate:ident, $tables:ident) => {{
            let k = keys!($W, $rk);
            let one = v!($W, one);
            let zero = v!($W, zero);
            let (pa, pb) = ($wa.cast::<v!($W, ty)>(), $wb.cast::<v!($W, ty)>());
            let pt = $tweaks.as_ptr().cast::<v!($W, ty)>();
            let ptab = $tables.as_ptr().cast::<v!($W, ty)>();
            let pout = $wo.cast::<v!($W, ty)>();
            let regs = $tweaks.len() / ($W / 128);
            let mut i = 0;
            while i < regs {
                // Registers i .. i + R of labels.
                let t = tweak_lanes!($W, $R, pt, i, $gate);
                // p = π(x) for the A and B registers, then y = π(p ⊕ tweak) ⊕ p.
                let mut p = [zero; 2 * $R];
                for j in 0..$R {
                    p[j] = v!($W, load, pa.add(i + j));
                    p[$R + j] = v!($W, load, pb.add(i + j));
                }
                let x = p;
                v!($W, aes10, p, k);
                let mut y = [zero; 2 * $R];
                for j in 0..$R {
                    y[j] = v!($W, xor, p[j], t[j]);
                    y[$R + j] = v!($W, xor, p[$R + j], v!($W, or, t[j], one));
                }
                v!($W, aes10, y, k);
                for j in 0..$R {
                    let (a, b) = (x[j], x[$R + j]);
                    let ha = v!($W, xor, y[j], p[j]);
                    let hb = v!($W, xor, y[$R + j], p[$R + j]);
                    let (g, e) = v!(
                        $W,
                        split,
                        v!($W, load, ptab.add(2 * (i + j))),
                        v!($W, load, ptab.add(2 * (i + j) + 1))
                    );
                    let wg = v!($W, xor, ha, v!($W, and, g, v!($W, lsb, a)));
                    let we = v!($W, xor, hb, v!($W, and, v!($W, xor, e, a), v!($W, lsb, b)));
                    v!($W, store, pout.add(i + j), v!($W, xor, wg, we));
                }
                i += $R;
            }
        }};
    }

    /// [`super::garble_and`] on `W`-bit registers: R registers of A labels
    /// and R of B per step, each hashed as itself and ⊕ Δ (R·L instances,
    /// 4R hashes in flight).
    macro_rules! garble_and_body {
        ($W:tt, $R:literal, $rk:ident, $wa:ident, $wb:ident, $wo:ident, $delta:ident,
         $tweaks:ident, $gate:ident, $tables:ident) => {{
            let k = keys!($W, $rk);
            let d = v!($W, bcast, (&$delta.0 as *const u128).cast());
            let one = v!($W, one);
            let zero = v!($W, zero);
            let (pa, pb) = ($wa.cast::<v!($W, ty)>(), $wb.cast::<v!($W, ty)>());
            let pt = $tweaks.as_ptr().cast::<v!($W, ty)>();
            let ptab = $tables.as_mut_ptr().cast::<v!($W, ty)>();
            let pout = $wo.cast::<v!($W, ty)>();
            let regs = $tweaks.len() / ($W / 128);
            let mut i = 0;
            while i < regs {
                // Registers i .. i + R of labels.
                let t = tweak_lanes!($W, $R, pt, i, $gate);
                // A₀, A₀ ⊕ Δ for each register, then B₀, B₀ ⊕ Δ.
                let mut p = [zero; 4 * $R];
                for j in 0..$R {
                    let (a, b) = (v!($W, load, pa.add(i + j)), v!($W, load, pb.add(i + j)));
                    p[2 * j] = a;
                    p[2 * j + 1] = v!($W, xor, a, d);
                    p[2 * $R + 2 * j] = b;
                    p[2 * $R + 2 * j + 1] = v!($W, xor, b, d);
                }
                let x = p;
                v!($W, aes10, p, k);
                let mut y = [zero; 4 * $R];
                for j in 0..$R {
                    let tb = v!($W, or, t[j], one);
                    y[2 * j] = v!($W, xor, p[2 * j], t[j]);
                    y[2 * j + 1] = v!($W, xor, p[2 * j + 1], t[j]);
                    y[2 * $R + 2 * j] = v!($W, xor, p[2 * $R + 2 * j], tb);
                    y[2 * $R + 2 * j + 1] = v!($W, xor, p[2 * $R + 2 * j + 1], tb);
                }
                v!($W, aes10, y, k);
                for j in 0..$R {
                    let (a, b) = (x[2 * j], x[2 * $R + 2 * j]);
                    let ha0 = v!($W, xor, y[2 * j], p[2 * j]);
                    let ha1 = v!($W, xor, y[2 * j + 1], p[2 * j + 1]);
                    let hb0 = v!($W, xor, y[2 * $R + 2 * j], p[2 * $R + 2 * j]);
                    let hb1 = v!($W, xor, y[2 * $R + 2 * j + 1], p[2 * $R + 2 * j + 1]);
                    let (ma, mb) = (v!($W, lsb, a), v!($W, lsb, b));
                    let tg = v!($W, xor, v!($W, xor, ha0, ha1), v!($W, and, d, mb));
                    let wg = v!($W, xor, ha0, v!($W, and, tg, ma));
                    let te = v!($W, xor, v!($W, xor, hb0, hb1), a);
                    let we = v!($W, xor, hb0, v!($W, and, v!($W, xor, te, a), mb));
                    v!($W, store, pout.add(i + j), v!($W, xor, wg, we));
                    let (z0, z1) = v!($W, join, tg, te);
                    v!($W, store, ptab.add(2 * (i + j)), z0);
                    v!($W, store, ptab.add(2 * (i + j) + 1), z1);
                }
                i += $R;
            }
        }};
    }

    /// The fused gates on one width: `$eval` and `$garble`, compiled for
    /// `$features`.
    macro_rules! fused_gates {
        ($W:tt, $features:literal, $eval:ident, $RE:literal, $garble:ident, $RG:literal) => {
            /// [`super::eval_and`] on this width.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $eval(
                rk: &[u128; 11],
                (wa, wb, wo): (*const Block, *const Block, *mut Block),
                tweaks: &[u64],
                gate: u64,
                tables: &[Block],
            ) {
                // SAFETY: unaligned loads and stores of n = tweaks.len()
                // labels from wa, wb and to wo (the caller checked they lie
                // in one slice, wo's apart), n tweaks and 2n table rows (n a
                // multiple of 16); Block is 16 bytes, L to a register, and
                // 2L u64 tweaks are one.
                unsafe { eval_and_body!($W, $RE, rk, wa, wb, wo, tweaks, gate, tables) }
            }

            /// [`super::garble_and`] on this width.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $garble(
                rk: &[u128; 11],
                (wa, wb, wo): (*const Block, *const Block, *mut Block),
                delta: Block,
                tweaks: &[u64],
                gate: u64,
                tables: &mut [Block],
            ) {
                // SAFETY: as in the evaluator's; the tables are 2n blocks.
                unsafe { garble_and_body!($W, $RG, rk, wa, wb, wo, delta, tweaks, gate, tables) }
            }
        };
    }

    fused_gates!(512, "avx512f,vaes", eval_and_vaes, 4, garble_and_vaes, 2);
    fused_gates!(256, "avx2,vaes", eval_and_vaes256, 4, garble_and_vaes256, 2);
    fused_gates!(128, "aes,sse2", eval_and_aesni, 8, garble_and_aesni, 4);
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
            // Lengths around the 16-, 8- and 4-block strides.
            for n in [0usize, 1, 3, 4, 5, 7, 8, 15, 16, 17, 21, 33, 256, 257] {
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
