//! The TMMO hash ([`crate::block::TweakHash`]) fused on AES instructions:
//! both AES calls of each hash, the tweak and the feed-forward in
//! registers, many blocks in flight — with VAES on 512-bit registers (four
//! blocks per instruction) where the CPU has it (AVX-512F + VAES), with
//! VAES on 256-bit registers (two blocks per instruction) where it has VAES
//! and AVX2 only (AMD Zen 3), else AES-NI on 128-bit registers. Chosen once
//! at run time
//! ([`HashPath::detect`]); the portable path (the `aes` crate, used where
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
    /// and AVX2): the hash only; the gate loops are AES-NI's.
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
/// whether it runs fused: on the VAES path, n a multiple of 16.
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
    path == HashPath::Vaes && n.is_multiple_of(16)
}

/// One evaluated AND gate of n = 16·m instances in one pass, on the VAES
/// path. The batch's wire labels lie in `wires`, n per wire; the gate's
/// inputs start at `a` and `b`, its output at `o` (not overlapping either).
/// For instance i with labels x = `wires[a + i]`, y = `wires[b + i]`,
/// tweak t = `tweaks[i]` + 2·`gate` (even) and tables (g, e) =
/// `tables[2i]`, `tables[2i + 1]`: `wires[o + i]` ← H(x, t) ⊕ lsb(x)·g ⊕
/// H(y, t | 1) ⊕ lsb(y)·(e ⊕ x), H the TMMO hash — what the evaluator's
/// gate loop computes through [`tmmo`], with the hash inputs, tweaks and
/// tables kept in registers. Returns `false` (nothing done) unless `path`
/// is VAES and n a multiple of 16. Every `tweaks[i]` + 2·`gate` must fit in
/// 64 bits (the caller checks).
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
        // SAFETY: the path is only chosen when the CPU has AVX-512F and
        // VAES; the ranges were checked to lie in `wires`, the output's
        // apart from the inputs'.
        unsafe {
            let w = wires.as_mut_ptr();
            x86::eval_and_vaes(&rk.0, (w.add(a), w.add(b), w.add(o)), tweaks, gate, tables)
        };
        return true;
    }
    let _ = (path, rk, wires, a, b, o, tweaks, gate, tables);
    false
}

/// One garbled AND gate of n = 16·m instances in one pass, on the VAES
/// path, in the layout of [`eval_and`]: for instance i with zero labels
/// x = `wires[a + i]`, y = `wires[b + i]` and tweak t as there, with
/// p = lsb(x), q = lsb(y), the half gates g = H(x, t) ⊕ H(x ⊕ Δ, t) ⊕ q·Δ
/// and e = H(y, t | 1) ⊕ H(y ⊕ Δ, t | 1) ⊕ x go to `tables[2i]`,
/// `tables[2i + 1]` and the output's zero label H(x, t) ⊕ p·g ⊕
/// H(y, t | 1) ⊕ q·(e ⊕ x) to `wires[o + i]` — what the garbler's gate loop
/// computes through [`tmmo`]. Returns `false` (nothing done) unless `path`
/// is VAES and n a multiple of 16.
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
        // SAFETY: as in `eval_and`.
        unsafe {
            let w = wires.as_mut_ptr();
            x86::garble_and_vaes(&rk.0, (w.add(a), w.add(b), w.add(o)), delta, tweaks, gate, tables)
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

    /// The 11 round keys `$rk`, each broadcast to the four lanes of a register.
    macro_rules! keys512 {
        ($rk:ident) => {{
            let mut k = [_mm512_setzero_si512(); 11];
            for (d, s) in k.iter_mut().zip($rk) {
                *d = _mm512_broadcast_i32x4(_mm_loadu_si128((s as *const u128).cast()));
            }
            k
        }};
    }

    /// Eight instances' tweaks for gate `$gate` from the u64 register at
    /// `$pt` (each 2·base): two registers of four (2·(base + gate), 0) lanes.
    macro_rules! tweaks8 {
        ($pt:expr, $gate:ident) => {{
            let raw =
                _mm512_add_epi64(_mm512_loadu_si512($pt), _mm512_set1_epi64((2 * $gate) as i64));
            let zero = _mm512_setzero_si512();
            [
                _mm512_permutex2var_epi64(raw, _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0), zero),
                _mm512_permutex2var_epi64(raw, _mm512_set_epi64(11, 7, 10, 6, 9, 5, 8, 4), zero),
            ]
        }};
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

    /// The fused hash on R registers of blocks from `i`, with the
    /// register type and the load, store, XOR and AES intrinsics given
    /// (`$w`: 512 or 256-bit ones).
    macro_rules! fused_chunk {
        ($R:literal, $k:ident, $xs:ident, $tweaks:ident, $i:ident,
         $ty:ty, $zero:ident, $load:ident, $store:ident, $xor:ident, $enc:ident, $last:ident) => {{
            let px = $xs.as_mut_ptr().add($i).cast::<$ty>();
            let pt = $tweaks.as_ptr().add($i).cast::<$ty>();
            let mut p = [$zero(); $R];
            for (j, r) in p.iter_mut().enumerate() {
                *r = $load(px.add(j));
            }
            aes10!(p, $k, $xor, $enc, $last);
            let mut y = [$zero(); $R];
            for (j, r) in y.iter_mut().enumerate() {
                *r = $xor(p[j], $load(pt.add(j)));
            }
            aes10!(y, $k, $xor, $enc, $last);
            for j in 0..$R {
                $store(px.add(j), $xor(y[j], p[j]));
            }
        }};
    }

    /// The fused hash on `4·R` blocks from `i` (R 512-bit registers).
    macro_rules! vaes_chunk {
        ($R:literal, $k:ident, $xs:ident, $tweaks:ident, $i:ident) => {
            fused_chunk!(
                $R,
                $k,
                $xs,
                $tweaks,
                $i,
                __m512i,
                _mm512_setzero_si512,
                _mm512_loadu_si512,
                _mm512_storeu_si512,
                _mm512_xor_si512,
                _mm512_aesenc_epi128,
                _mm512_aesenclast_epi128
            )
        };
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
            let k = keys512!(rk);
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

    /// The fused hash on `2·R` blocks from `i` (R 256-bit registers; the
    /// round keys `$k` are 256-bit broadcasts).
    macro_rules! vaes256_chunk {
        ($R:literal, $k:ident, $xs:ident, $tweaks:ident, $i:ident) => {
            fused_chunk!(
                $R,
                $k,
                $xs,
                $tweaks,
                $i,
                __m256i,
                _mm256_setzero_si256,
                _mm256_loadu_si256,
                _mm256_storeu_si256,
                _mm256_xor_si256,
                _mm256_aesenc_epi128,
                _mm256_aesenclast_epi128
            )
        };
    }

    /// The fused hash on 16 blocks at a time (8 × 256-bit registers; the
    /// round keys come from memory, as AVX2 has 16 registers), then 4;
    /// returns how many blocks it did (a multiple of 4).
    #[target_feature(enable = "avx2,vaes")]
    pub(super) unsafe fn tmmo_vaes256(rk: &[u128; 11], xs: &mut [Block], tweaks: &[u128]) -> usize {
        // SAFETY: loads and stores are unaligned ones inside the slices
        // (i + 16, then i + 4, ≤ len for both); Block and u128 are 16
        // bytes, so 2 of them are one 32-byte register.
        unsafe {
            let mut k = [_mm256_setzero_si256(); 11];
            for (d, s) in k.iter_mut().zip(rk) {
                *d = _mm256_broadcastsi128_si256(_mm_loadu_si128((s as *const u128).cast()));
            }
            let len = xs.len();
            let mut i = 0;
            while i + 16 <= len {
                vaes256_chunk!(8, k, xs, tweaks, i);
                i += 16;
            }
            while i + 4 <= len {
                vaes256_chunk!(2, k, xs, tweaks, i);
                i += 4;
            }
            i
        }
    }

    /// Each 128-bit lane of `$x` all ones where its least significant bit
    /// is set: the low qword's bit 0 moved to its top and spread over the
    /// qword, then copied to the lane's high qword.
    macro_rules! lsb_mask {
        ($x:expr) => {
            _mm512_shuffle_epi32::<0x44>(_mm512_srai_epi64::<63>(_mm512_slli_epi64::<63>($x)))
        };
    }

    /// [`super::eval_and`] on 16 instances per step (4 registers of A
    /// labels and 4 of B: 8 hashes in flight, as in [`tmmo_vaes`]).
    #[target_feature(enable = "avx512f,vaes")]
    pub(super) unsafe fn eval_and_vaes(
        rk: &[u128; 11],
        (wa, wb, wo): (*const Block, *const Block, *mut Block),
        tweaks: &[u64],
        gate: u64,
        tables: &[Block],
    ) {
        // SAFETY: unaligned loads and stores of n = tweaks.len() labels
        // from wa, wb and to wo (the caller checked they lie in one slice,
        // wo's apart), n tweaks and 2n table rows (n a multiple of 16);
        // Block is 16 bytes, 4 to a register, and 8 u64 tweaks are one.
        unsafe {
            let k = keys512!(rk);
            let one = _mm512_set_epi64(0, 1, 0, 1, 0, 1, 0, 1);
            // Tables: [g0 e0 g1 e1] [g2 e2 g3 e3] → [g0 g1 g2 g3], [e0 e1 e2 e3].
            let gi = _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0);
            let ei = _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2);
            let zero = _mm512_setzero_si512();
            let (pa, pb) = (wa.cast::<__m512i>(), wb.cast::<__m512i>());
            let (pt, ptab) = (tweaks.as_ptr().cast::<__m512i>(), tables.as_ptr().cast::<__m512i>());
            let pout = wo.cast::<__m512i>();
            let mut i = 0;
            while i < tweaks.len() / 4 {
                // Registers i .. i + 4 of labels: 16 instances.
                let mut a = [zero; 4];
                let mut b = [zero; 4];
                let mut t = [zero; 4];
                for j in 0..4 {
                    a[j] = _mm512_loadu_si512(pa.add(i + j));
                    b[j] = _mm512_loadu_si512(pb.add(i + j));
                }
                for h in 0..2 {
                    [t[2 * h], t[2 * h + 1]] = tweaks8!(pt.add(i / 2 + h), gate);
                }
                // p = π(x) for the 8 registers, then y = π(p ⊕ tweak) ⊕ p.
                let mut p = [zero; 8];
                p[..4].copy_from_slice(&a);
                p[4..].copy_from_slice(&b);
                aes10!(p, k, _mm512_xor_si512, _mm512_aesenc_epi128, _mm512_aesenclast_epi128);
                let mut y = [zero; 8];
                for j in 0..4 {
                    y[j] = _mm512_xor_si512(p[j], t[j]);
                    y[4 + j] = _mm512_xor_si512(p[4 + j], _mm512_or_si512(t[j], one));
                }
                aes10!(y, k, _mm512_xor_si512, _mm512_aesenc_epi128, _mm512_aesenclast_epi128);
                for j in 0..4 {
                    let ha = _mm512_xor_si512(y[j], p[j]);
                    let hb = _mm512_xor_si512(y[4 + j], p[4 + j]);
                    let z0 = _mm512_loadu_si512(ptab.add(2 * (i + j)));
                    let z1 = _mm512_loadu_si512(ptab.add(2 * (i + j) + 1));
                    let g = _mm512_permutex2var_epi64(z0, gi, z1);
                    let e = _mm512_permutex2var_epi64(z0, ei, z1);
                    let wg = _mm512_xor_si512(ha, _mm512_and_si512(g, lsb_mask!(a[j])));
                    let we = _mm512_xor_si512(
                        hb,
                        _mm512_and_si512(_mm512_xor_si512(e, a[j]), lsb_mask!(b[j])),
                    );
                    _mm512_storeu_si512(pout.add(i + j), _mm512_xor_si512(wg, we));
                }
                i += 4;
            }
        }
    }

    /// [`super::garble_and`] on 8 instances per step (2 registers of A
    /// labels, 2 of B, each hashed as itself and ⊕ Δ: 8 hashes in flight).
    #[target_feature(enable = "avx512f,vaes")]
    pub(super) unsafe fn garble_and_vaes(
        rk: &[u128; 11],
        (wa, wb, wo): (*const Block, *const Block, *mut Block),
        delta: Block,
        tweaks: &[u64],
        gate: u64,
        tables: &mut [Block],
    ) {
        // SAFETY: as in `eval_and_vaes`; the tables are 2n blocks.
        unsafe {
            let k = keys512!(rk);
            let d = _mm512_broadcast_i32x4(_mm_loadu_si128((&delta.0 as *const u128).cast()));
            let one = _mm512_set_epi64(0, 1, 0, 1, 0, 1, 0, 1);
            // [g0 g1 g2 g3], [e0 e1 e2 e3] → [g0 e0 g1 e1], [g2 e2 g3 e3].
            let z0i = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
            let z1i = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
            let zero = _mm512_setzero_si512();
            let (pa, pb) = (wa.cast::<__m512i>(), wb.cast::<__m512i>());
            let (pt, ptab) =
                (tweaks.as_ptr().cast::<__m512i>(), tables.as_mut_ptr().cast::<__m512i>());
            let pout = wo.cast::<__m512i>();
            let mut i = 0;
            while i < tweaks.len() / 4 {
                // Registers i, i + 1 of labels: 8 instances, one tweak register.
                let a = [_mm512_loadu_si512(pa.add(i)), _mm512_loadu_si512(pa.add(i + 1))];
                let b = [_mm512_loadu_si512(pb.add(i)), _mm512_loadu_si512(pb.add(i + 1))];
                let t = tweaks8!(pt.add(i / 2), gate);
                // A₀, A₀ ⊕ Δ, B₀, B₀ ⊕ Δ for both registers.
                let mut p = [
                    a[0],
                    _mm512_xor_si512(a[0], d),
                    a[1],
                    _mm512_xor_si512(a[1], d),
                    b[0],
                    _mm512_xor_si512(b[0], d),
                    b[1],
                    _mm512_xor_si512(b[1], d),
                ];
                aes10!(p, k, _mm512_xor_si512, _mm512_aesenc_epi128, _mm512_aesenclast_epi128);
                let mut y = [zero; 8];
                for j in 0..2 {
                    let tb = _mm512_or_si512(t[j], one);
                    y[2 * j] = _mm512_xor_si512(p[2 * j], t[j]);
                    y[2 * j + 1] = _mm512_xor_si512(p[2 * j + 1], t[j]);
                    y[4 + 2 * j] = _mm512_xor_si512(p[4 + 2 * j], tb);
                    y[4 + 2 * j + 1] = _mm512_xor_si512(p[4 + 2 * j + 1], tb);
                }
                aes10!(y, k, _mm512_xor_si512, _mm512_aesenc_epi128, _mm512_aesenclast_epi128);
                for j in 0..2 {
                    let ha0 = _mm512_xor_si512(y[2 * j], p[2 * j]);
                    let ha1 = _mm512_xor_si512(y[2 * j + 1], p[2 * j + 1]);
                    let hb0 = _mm512_xor_si512(y[4 + 2 * j], p[4 + 2 * j]);
                    let hb1 = _mm512_xor_si512(y[4 + 2 * j + 1], p[4 + 2 * j + 1]);
                    let (ma, mb) = (lsb_mask!(a[j]), lsb_mask!(b[j]));
                    let tg = _mm512_xor_si512(_mm512_xor_si512(ha0, ha1), _mm512_and_si512(d, mb));
                    let wg = _mm512_xor_si512(ha0, _mm512_and_si512(tg, ma));
                    let te = _mm512_xor_si512(_mm512_xor_si512(hb0, hb1), a[j]);
                    let we =
                        _mm512_xor_si512(hb0, _mm512_and_si512(_mm512_xor_si512(te, a[j]), mb));
                    _mm512_storeu_si512(pout.add(i + j), _mm512_xor_si512(wg, we));
                    _mm512_storeu_si512(
                        ptab.add(2 * (i + j)),
                        _mm512_permutex2var_epi64(tg, z0i, te),
                    );
                    _mm512_storeu_si512(
                        ptab.add(2 * (i + j) + 1),
                        _mm512_permutex2var_epi64(tg, z1i, te),
                    );
                }
                i += 2;
            }
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
                fused_chunk!(
                    8,
                    k,
                    xs,
                    tweaks,
                    i,
                    __m128i,
                    _mm_setzero_si128,
                    _mm_loadu_si128,
                    _mm_storeu_si128,
                    _mm_xor_si128,
                    _mm_aesenc_si128,
                    _mm_aesenclast_si128
                );
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
