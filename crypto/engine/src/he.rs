//! BFV linear layers: Enc(r) from the client, Enc(M·r − s) back from the server.
//!
//! Parameters: [`crate::params::BFV_N8192`] (N = 8192, t = p, 128-bit security).
//!
//! Packing: coefficient encoding (Cheetah, Huang et al. 2022) instead of
//! Gazelle's slot packing. A convolution becomes one plaintext–ciphertext
//! polynomial product per (output channel, input-channel block), and a dense
//! layer one per (row group, input chunk); neither needs a single rotation,
//! so the client sends no Galois keys at all (and no relinearisation keys).
//! The server masks *every* coefficient of each result with fresh randomness
//! (only the output positions are kept as its share), adds a fresh
//! encryption of zero and switches to the lowest modulus level that still
//! decrypts ([`RESULT_LEVEL`]), so neither the unused coefficients nor the
//! noise reveal the weights.

use rand::{CryptoRng, RngCore};
use seal_fhe::{
    BFVEncoder, BFVEvaluator, Ciphertext, Context, Decryptor, Encryptor, Evaluator, FromBytes,
    KeyGenerator, Plaintext, PublicKey, ToBytes,
};

use delphi_crypto::field::F;

use crate::error::{EngineError, Result};
use crate::seal_check::{checked, Expect};

pub use crate::params::{
    BfvParams, Packing, BFV_N8192, COEFF_BITS, N, RESULT_LEVEL, RESULT_LEVEL_DROPS, SLOTS,
};
use delphi_net::packing::{
    result_frame_bytes, FRESH_CT_BYTES, FRESH_PRIME_BITS, FRESH_SEED_BYTES, RESULT_C0_BITS,
    RESULT_C0_DROP, RESULT_C1_BITS, RESULT_C1_DROP, RESULT_PRIME_BITS,
};

fn plaintext_from(coeffs: impl Iterator<Item = u64>) -> Result<Plaintext> {
    let mut pt = Plaintext::new()?;
    pt.resize(N);
    for (i, c) in coeffs.enumerate() {
        if c != 0 {
            pt.set_coefficient(i, c);
        }
    }
    Ok(pt)
}

fn coefficients(pt: &Plaintext) -> Vec<u64> {
    let len = pt.len().min(N);
    let mut v = vec![0u64; N];
    for (i, c) in v.iter_mut().enumerate().take(len) {
        *c = pt.get_coefficient(i);
    }
    v
}

/// The client's keys and operations.
pub struct ClientHe {
    ctx: Context,
    public: PublicKey,
    /// Symmetric-key encryption with a seeded c₁ ([`fresh`]).
    seeded: fresh::SeededEncryptor,
    decryptor: Decryptor,
    encoder: BFVEncoder,
    /// A ciphertext at the result level, whose coefficients a compact
    /// result overwrites ([`wire`]).
    template: Ciphertext,
    q: u64,
}

impl std::fmt::Debug for ClientHe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHe").finish_non_exhaustive()
    }
}

impl ClientHe {
    /// Generates a fresh key pair (SEAL draws from the OS randomness).
    pub fn new() -> Result<Self> {
        let ctx = BFV_N8192.context()?;
        let keygen = KeyGenerator::new(&ctx)?;
        let public = keygen.create_public_key();
        let secret = keygen.secret_key();
        let encryptor = Encryptor::with_public_and_secret_key(&ctx, &public, &secret)?;
        let seeded = fresh::SeededEncryptor::new(&ctx, &public, &secret)?;
        let decryptor = Decryptor::new(&ctx, &secret)?;
        let encoder = BFVEncoder::new(&ctx)?;
        let template = encryptor.encrypt(&plaintext_from(std::iter::empty())?)?;
        let evaluator = BFVEvaluator::new(&ctx)?;
        for _ in 0..RESULT_LEVEL_DROPS {
            evaluator.mod_switch_to_next_inplace(&template)?;
        }
        let q = wire::result_prime()?;
        Ok(ClientHe { ctx, public, seeded, decryptor, encoder, template, q })
    }

    /// The public key, serialised for the server.
    pub fn public_key_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.public.as_bytes()?)
    }

    /// Encrypts the layer-input mask `r` as the packing lays it out: one
    /// fresh ciphertext per input polynomial, each in its compact form on
    /// the wire ([`fresh`], [`FRESH_CT_BYTES`] bytes).
    pub fn encrypt_input(&self, packing: &Packing, r: &[F]) -> Result<Vec<Vec<u8>>> {
        packing
            .pack_input(r)
            .into_iter()
            .map(|v| self.seeded.encrypt(&plaintext_from(v.into_iter())?))
            .collect()
    }

    /// Decrypts the server's results and reads the outputs: M·r − s.
    pub fn decrypt_output(&self, packing: &Packing, cts: &[Ciphertext]) -> Result<Vec<F>> {
        if cts.len() != packing.output_polys() {
            return Err(EngineError::Malformed(format!(
                "{} result ciphertexts for a layer that has {}",
                cts.len(),
                packing.output_polys()
            )));
        }
        let polys: Vec<Vec<u64>> = cts
            .iter()
            .map(|c| Ok(coefficients(&self.decryptor.decrypt(c)?)))
            .collect::<Result<_>>()?;
        Ok(packing.output_positions().into_iter().map(|(p, c)| F::from_u64(polys[p][c])).collect())
    }

    /// Encrypts a vector in the batching slots (for Beaver triples), in
    /// the compact form of a fresh ciphertext on the wire ([`fresh`]).
    pub fn encrypt_slots(&self, v: &[F]) -> Result<Vec<u8>> {
        let vals: Vec<u64> = v.iter().map(|x| x.value()).collect();
        self.seeded.encrypt(&self.encoder.encode_unsigned(&vals)?)
    }

    /// Decrypts batching slots.
    pub fn decrypt_slots(&self, c: &Ciphertext, n: usize) -> Result<Vec<F>> {
        let v = self.encoder.decode_unsigned(&self.decryptor.decrypt(c)?)?;
        Ok(v.into_iter().take(n).map(F::from_u64).collect())
    }

    /// The remaining noise budget of a ciphertext, in bits (for tests).
    pub fn noise_budget(&self, c: &Ciphertext) -> Result<u32> {
        Ok(self.decryptor.invariant_noise_budget(c)?)
    }

    /// Parses a result ciphertext from the server: checked against the
    /// agreed parameters ([`crate::seal_check`]) before SEAL loads it.
    pub fn result_from_bytes(&self, b: &[u8]) -> Result<Ciphertext> {
        let plain = checked(b, Expect::Result)?;
        Ciphertext::from_bytes(&self.ctx, &plain)
            .map_err(|e| EngineError::Malformed(format!("result ciphertext: {e}")))
    }

    /// Reads a compact result ([`ServerHe::result_to_wire`]) that keeps the
    /// c₀ coefficients `kept` (`None`: all of them): exactly
    /// [`result_frame_bytes`] long, every value in range, or refused.
    pub fn result_from_wire(&self, b: &[u8], kept: Option<&[u32]>) -> Result<Ciphertext> {
        let ct = self.template.clone();
        wire::expand(b, kept, self.q, &ct)?;
        Ok(ct)
    }
}

/// Result ciphertexts on the wire, compact. A result lives at the last
/// level (one 60-bit prime q); the client decrypts coefficient i as
/// c₀[i] + (c₁·s)[i], so
///
/// * of c₀ only the coefficients that hold outputs are sent (the others
///   decrypt to values nobody reads): a convolution's result polynomial
///   holds one or a few output planes;
/// * every coefficient is rounded to a multiple of 2^d before it is sent
///   (d = [`RESULT_C1_DROP`] for c₁, [`RESULT_C0_DROP`] for c₀), which
///   adds Σ sⱼ·eⱼ + e₀ to the decryption's noise: at most 2^16 + 2^13 in
///   all except with probability 2^−91 per coefficient (Hoeffding over the
///   client's uniform ternary secret, which the rounding errors — functions
///   of c₁ = a·u + …, computed without the secret — do not depend on),
///   against the 2^18 − noise that decryption at t ≈ 2^41 tolerates
///   (a result keeps about 11 of its 18 bits of budget; tests measure what
///   is left after the rounding);
/// * the rounded values are bit-packed: [`RESULT_C1_BITS`] bits per c₁
///   coefficient, [`RESULT_C0_BITS`] per kept c₀ coefficient.
///
/// What is sent is a public function of the ciphertext the server would
/// otherwise send, so the client learns nothing more (and the server's
/// masking and re-randomisation are unchanged).
mod wire {
    use std::os::raw::{c_long, c_void};

    use seal_fhe::{Ciphertext, CoefficientModulus};

    use super::{
        result_frame_bytes, COEFF_BITS, N, RESULT_C0_BITS, RESULT_C0_DROP, RESULT_C1_BITS,
        RESULT_C1_DROP, RESULT_PRIME_BITS,
    };
    use crate::error::{EngineError, Result};

    // SEAL's C API (native/src/seal/c), linked through seal_fhe.
    unsafe extern "C" {
        pub(super) fn Ciphertext_GetDataAt1(
            thisptr: *mut c_void,
            index: u64,
            data: *mut u64,
        ) -> c_long;
        fn Ciphertext_SetDataAt(thisptr: *mut c_void, index: u64, value: u64) -> c_long;
    }

    /// The result level's prime (SEAL drops the last primes first, so the
    /// first data prime remains), checked against the widths on the wire.
    pub(super) fn result_prime() -> Result<u64> {
        let primes = CoefficientModulus::create(N as u64, &COEFF_BITS)?;
        let q = primes
            .first()
            .map(|m| m.value())
            .ok_or_else(|| EngineError::Internal("no coefficient primes".into()))?;
        let width = |d: u32| 64 - ((q - 1 + (1 << (d - 1))) >> d).leading_zeros();
        if 64 - q.leading_zeros() != RESULT_PRIME_BITS
            || width(RESULT_C1_DROP) != RESULT_C1_BITS
            || width(RESULT_C0_DROP) != RESULT_C0_BITS
        {
            return Err(EngineError::Internal(format!(
                "result prime {q:#x} does not fit the wire widths"
            )));
        }
        Ok(q)
    }

    fn check(ct: &Ciphertext) -> Result<()> {
        if ct.num_polynomials() != 2 || ct.coeff_modulus_size() != 1 || ct.is_ntt_form() {
            return Err(EngineError::Internal(format!(
                "a result ciphertext of {} polynomials at {} primes",
                ct.num_polynomials(),
                ct.coeff_modulus_size()
            )));
        }
        Ok(())
    }

    /// c rounded to a multiple of 2^d, divided by 2^d.
    fn round(c: u64, d: u32) -> u64 {
        (c + (1 << (d - 1))) >> d
    }

    /// Little-endian bit packing of values of a fixed width.
    pub(super) struct Bits {
        pub(super) out: Vec<u8>,
        pub(super) acc: u128,
        pub(super) n: u32,
    }

    impl Bits {
        pub(super) fn put(&mut self, v: u64, w: u32) {
            self.acc |= (v as u128) << self.n;
            self.n += w;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }

        pub(super) fn finish(mut self) -> Vec<u8> {
            if self.n > 0 {
                self.out.push(self.acc as u8);
            }
            self.out
        }
    }

    /// Reads back what [`Bits`] wrote (zeros past the end).
    pub(super) struct Unbits<'a> {
        pub(super) b: &'a [u8],
        pub(super) at: usize,
        pub(super) acc: u128,
        pub(super) n: u32,
    }

    impl Unbits<'_> {
        pub(super) fn get(&mut self, w: u32) -> u64 {
            while self.n < w {
                let byte = self.b.get(self.at).copied().unwrap_or(0);
                self.acc |= (byte as u128) << self.n;
                self.at += 1;
                self.n += 8;
            }
            let v = (self.acc & ((1u128 << w) - 1)) as u64;
            self.acc >>= w;
            self.n -= w;
            v
        }
    }

    /// A result's compact bytes: c₁ whole, then c₀ at `kept` (all if `None`).
    pub(super) fn compact(ct: &Ciphertext, kept: Option<&[u32]>, q: u64) -> Result<Vec<u8>> {
        check(ct)?;
        let len = kept.map_or(N, <[u32]>::len);
        let mut bits = Bits { out: Vec::with_capacity(result_frame_bytes(len)), acc: 0, n: 0 };
        let get = |i: usize| -> Result<u64> {
            let mut v = 0u64;
            // SAFETY: a live ciphertext of 2 polynomials of N coefficients at
            // one prime (checked above); i < 2N; SEAL writes one u64.
            let code = unsafe { Ciphertext_GetDataAt1(ct.get_handle(), i as u64, &mut v) };
            if code != 0 || v >= q {
                return Err(EngineError::Internal(format!("result coefficient {i}: {code:#x}")));
            }
            Ok(v)
        };
        for i in 0..N {
            bits.put(round(get(N + i)?, RESULT_C1_DROP), RESULT_C1_BITS);
        }
        match kept {
            None => {
                for i in 0..N {
                    bits.put(round(get(i)?, RESULT_C0_DROP), RESULT_C0_BITS);
                }
            }
            Some(k) => {
                for &i in k {
                    let i = i as usize;
                    if i >= N {
                        return Err(EngineError::Internal(format!("kept coefficient {i}")));
                    }
                    bits.put(round(get(i)?, RESULT_C0_DROP), RESULT_C0_BITS);
                }
            }
        }
        Ok(bits.finish())
    }

    /// Writes a compact result into `ct` (a result-level ciphertext): c₁
    /// whole, c₀ at `kept` and zero elsewhere.
    pub(super) fn expand(b: &[u8], kept: Option<&[u32]>, q: u64, ct: &Ciphertext) -> Result<()> {
        check(ct)?;
        let len = kept.map_or(N, <[u32]>::len);
        if len > N || b.len() != result_frame_bytes(len) {
            return Err(EngineError::Malformed(format!(
                "a result of {} bytes where {} coefficients make {}",
                b.len(),
                len,
                result_frame_bytes(len.min(N))
            )));
        }
        let mut bits = Unbits { b, at: 0, acc: 0, n: 0 };
        let set = |i: usize, v: u64, d: u32| -> Result<()> {
            // v ≤ ⌈(q − 1)/2^d⌉ (checked by the caller), so v·2^d < 2q.
            let c = v << d;
            let c = if c >= q { c - q } else { c };
            // SAFETY: as in `compact`; i < 2N.
            let code = unsafe { Ciphertext_SetDataAt(ct.get_handle(), i as u64, c) };
            if code != 0 {
                return Err(EngineError::Internal(format!("result coefficient {i}: {code:#x}")));
            }
            Ok(())
        };
        let top = |d: u32| round(q - 1, d);
        let bad = |what: &str| EngineError::Malformed(format!("a result's {what} out of range"));
        for i in 0..N {
            let v = bits.get(RESULT_C1_BITS);
            if v > top(RESULT_C1_DROP) {
                return Err(bad("c1 coefficient"));
            }
            set(N + i, v, RESULT_C1_DROP)?;
        }
        let mut next = 0usize;
        for j in 0..len {
            let i = kept.map_or(j, |k| k[j] as usize);
            if i >= N || (j > 0 && i < next) {
                return Err(EngineError::Internal(format!("kept coefficient {i}")));
            }
            for z in next..i {
                set(z, 0, RESULT_C0_DROP)?;
            }
            let v = bits.get(RESULT_C0_BITS);
            if v > top(RESULT_C0_DROP) {
                return Err(bad("c0 coefficient"));
            }
            set(i, v, RESULT_C0_DROP)?;
            next = i + 1;
        }
        for z in next..N {
            set(z, 0, RESULT_C0_DROP)?;
        }
        // Padding bits of the last byte must be zero.
        if bits.acc != 0 {
            return Err(bad("padding"));
        }
        Ok(())
    }
}

/// Fresh ciphertexts on the wire, compact. The client encrypts with its
/// secret key (SEAL's symmetric encryption: c₁ = a uniform, c₀ = −a·s + e +
/// Δ·m), and a uniform c₁ need not travel: SEAL draws it from a public
/// 64-byte seed, which goes instead (SEAL's own "seeded" serialisation does
/// the same). c₀ travels whole, at both data primes, bit-packed at
/// [`FRESH_PRIME_BITS`] bits. Layout: SEAL's PRNG type (one byte: 1
/// Blake2xb, 2 SHAKE-256), the seed (64 bytes), then c₀'s 2·N coefficients
/// prime by prime: exactly [`FRESH_CT_BYTES`], less than half of a public-key
/// encryption in SEAL's format (262 kB).
///
/// Security is that of SEAL's seeded ciphertexts: a is public in any RLWE
/// sample, and symmetric-key BFV is semantically secure under the same RLWE
/// assumption as public-key BFV (with less noise: e alone, no e·u terms).
/// The server never hands the client's bytes to SEAL's parser as they come:
/// it checks the length, the PRNG type and every coefficient against its
/// prime, then writes SEAL's seeded serialisation itself, from the head of a
/// fresh ciphertext it encrypted ([`head`]), and SEAL expands the seed.
mod fresh {
    use std::os::raw::{c_long, c_void};

    use seal_fhe::{
        Ciphertext, CoefficientModulus, Context, Plaintext, PublicKey, SecretKey, ToBytes,
    };

    use super::wire::{Bits, Ciphertext_GetDataAt1, Unbits};
    use super::{COEFF_BITS, FRESH_CT_BYTES, FRESH_PRIME_BITS, FRESH_SEED_BYTES, N};
    use crate::error::{EngineError, Result};
    use crate::seal_check::{checked, Expect, HEADER};

    // SEAL's C API (native/src/seal/c), linked through seal_fhe.
    unsafe extern "C" {
        fn Encryptor_Create(
            context: *mut c_void,
            public_key: *mut c_void,
            secret_key: *mut c_void,
            encryptor: *mut *mut c_void,
        ) -> c_long;
        fn Encryptor_Destroy(thisptr: *mut c_void) -> c_long;
        fn Encryptor_EncryptSymmetric(
            thisptr: *mut c_void,
            plaintext: *mut c_void,
            save_seed: bool,
            destination: *mut c_void,
            pool: *mut c_void,
        ) -> c_long;
    }

    /// SEAL's seed marker: the first word of a seeded ciphertext's c₁.
    const SEED_MARKER: u64 = u64::MAX;
    /// Bytes of SEAL's serialised PRNG info (its header, type and seed).
    const PRNG_INFO: usize = HEADER + FRESH_SEED_BYTES;
    /// SEAL's PRNG types (`prng_type`): Blake2xb and SHAKE-256.
    const PRNG_TYPES: [u8; 2] = [1, 2];

    fn check(code: c_long, what: &str) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(EngineError::Internal(format!("SEAL {what}: error {code:#x}")))
        }
    }

    /// The two data primes, checked against the wire's width.
    fn data_primes() -> Result<[u64; 2]> {
        let primes = CoefficientModulus::create(N as u64, &COEFF_BITS)?;
        match primes.as_slice() {
            [a, b, _] if a.value() < 1 << FRESH_PRIME_BITS && b.value() < 1 << FRESH_PRIME_BITS => {
                Ok([a.value(), b.value()])
            }
            _ => Err(EngineError::Internal("the data primes do not fit the wire width".into())),
        }
    }

    /// A SEAL encryptor with the client's secret key (`seal_fhe` wraps one
    /// but exposes neither its handle nor symmetric encryption).
    pub(super) struct SeededEncryptor {
        handle: *mut c_void,
        primes: [u64; 2],
    }

    // SAFETY: SEAL's Encryptor keeps no per-call state (each encryption
    // creates its own PRNGs and memory), as `seal_fhe`'s own wrapper of it,
    // which is `Send + Sync`, relies on.
    unsafe impl Send for SeededEncryptor {}
    // SAFETY: as above.
    unsafe impl Sync for SeededEncryptor {}

    impl Drop for SeededEncryptor {
        fn drop(&mut self) {
            // SAFETY: the handle was created by Encryptor_Create and is
            // destroyed once.
            unsafe {
                Encryptor_Destroy(self.handle);
            }
        }
    }

    impl SeededEncryptor {
        pub(super) fn new(ctx: &Context, public: &PublicKey, secret: &SecretKey) -> Result<Self> {
            let mut handle: *mut c_void = std::ptr::null_mut();
            // SAFETY: live SEAL objects; SEAL copies the keys and writes the
            // new encryptor's handle.
            let code = unsafe {
                Encryptor_Create(
                    ctx.get_handle(),
                    public.get_handle(),
                    secret.get_handle(),
                    &mut handle,
                )
            };
            check(code, "encryptor")?;
            Ok(SeededEncryptor { handle, primes: data_primes()? })
        }

        /// Encrypts `pt` with the secret key; returns the compact form.
        pub(super) fn encrypt(&self, pt: &Plaintext) -> Result<Vec<u8>> {
            let ct = Ciphertext::new()?;
            // SAFETY: live SEAL objects; SEAL resizes and writes `ct`; a null
            // pool is SEAL's global pool.
            let code = unsafe {
                Encryptor_EncryptSymmetric(
                    self.handle,
                    pt.get_handle(),
                    true,
                    ct.get_handle(),
                    std::ptr::null_mut(),
                )
            };
            check(code, "symmetric encryption")?;
            if ct.num_polynomials() != 2 || ct.coeff_modulus_size() != 2 || ct.is_ntt_form() {
                return Err(EngineError::Internal("an unexpected fresh ciphertext".into()));
            }
            let word = |i: usize| -> Result<u64> {
                let mut v = 0u64;
                // SAFETY: a live ciphertext of 2 polynomials of N coefficients
                // at 2 primes (checked above); i < 4N; SEAL writes one u64.
                let code = unsafe { Ciphertext_GetDataAt1(ct.get_handle(), i as u64, &mut v) };
                check(code, "ciphertext coefficient")?;
                Ok(v)
            };
            // c₁ holds the marker, then SEAL's serialised PRNG info.
            let c1 = 2 * N;
            if word(c1)? != SEED_MARKER {
                return Err(EngineError::Internal("SEAL did not seed the encryption".into()));
            }
            let mut info = Vec::with_capacity(PRNG_INFO + 8);
            for w in 0..PRNG_INFO.div_ceil(8) {
                info.extend_from_slice(&word(c1 + 1 + w)?.to_le_bytes());
            }
            let mut bits = Bits { out: Vec::with_capacity(FRESH_CT_BYTES), acc: 0, n: 0 };
            bits.out.extend_from_slice(&info[HEADER..PRNG_INFO]);
            for (j, q) in self.primes.iter().enumerate() {
                for i in 0..N {
                    let v = word(j * N + i)?;
                    if v >= *q {
                        return Err(EngineError::Internal(format!("c0 coefficient {v:#x}")));
                    }
                    bits.put(v, FRESH_PRIME_BITS);
                }
            }
            let out = bits.finish();
            if out.len() != FRESH_CT_BYTES || !PRNG_TYPES.contains(&out[0]) {
                return Err(EngineError::Internal("a malformed fresh ciphertext".into()));
            }
            Ok(out)
        }
    }

    /// SEAL's uncompressed serialisation of `template` (a fresh ciphertext)
    /// up to its coefficients: outer header, members, array header.
    pub(super) fn head(template: &Ciphertext) -> Result<Vec<u8>> {
        let plain = checked(&template.as_bytes()?, Expect::Fresh)?;
        Ok(plain[..Expect::Fresh.coefficients_at()].to_vec())
    }

    /// SEAL's seeded serialisation of the compact fresh ciphertext `b`.
    pub(super) fn expand(head: &[u8], b: &[u8]) -> Result<Vec<u8>> {
        let bad = |what: String| EngineError::Malformed(format!("fresh ciphertext: {what}"));
        if b.len() != FRESH_CT_BYTES {
            return Err(bad(format!("{} bytes; the format has exactly {FRESH_CT_BYTES}", b.len())));
        }
        if !PRNG_TYPES.contains(&b[0]) {
            return Err(bad(format!("PRNG type {}", b[0])));
        }
        let words = 2 * N;
        let mut out = Vec::with_capacity(head.len() + 8 * words + PRNG_INFO);
        out.extend_from_slice(head);
        let array = head.len() - HEADER - 8;
        // The array holds c₀ only: SEAL reads that as seeded.
        out[array + 8..array + 16]
            .copy_from_slice(&((HEADER + 8 + 8 * words) as u64).to_le_bytes());
        out[head.len() - 8..].copy_from_slice(&(words as u64).to_le_bytes());
        let primes = data_primes()?;
        let mut bits = Unbits { b: &b[FRESH_SEED_BYTES..], at: 0, acc: 0, n: 0 };
        for q in primes {
            for _ in 0..N {
                let v = bits.get(FRESH_PRIME_BITS);
                if v >= q {
                    return Err(bad("a coefficient past its prime".into()));
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        // SEAL's PRNG info: a SEAL header (the outer one's, resized), then
        // the type and the seed.
        let mut info = head[..HEADER].to_vec();
        info[8..16].copy_from_slice(&(PRNG_INFO as u64).to_le_bytes());
        out.extend_from_slice(&info);
        out.extend_from_slice(&b[..FRESH_SEED_BYTES]);
        let total = out.len() as u64;
        out[8..16].copy_from_slice(&total.to_le_bytes());
        Ok(out)
    }
}

/// NTT-domain transforms of SEAL's evaluator, which `seal_fhe` does not
/// wrap: its C API functions, called on the handles `seal_fhe` exposes.
mod ntt {
    use std::os::raw::{c_long, c_void};

    use seal_fhe::{BFVEvaluator, Ciphertext, Plaintext};

    use crate::error::{EngineError, Result};

    // SEAL's C API (native/src/seal/c), linked through seal_fhe.
    unsafe extern "C" {
        fn Evaluator_TransformToNTT1(
            thisptr: *mut c_void,
            plain: *mut c_void,
            parms_id: *mut u64,
            destination_ntt: *mut c_void,
            pool: *mut c_void,
        ) -> c_long;
        fn Evaluator_TransformToNTT2(
            thisptr: *mut c_void,
            encrypted: *mut c_void,
            destination_ntt: *mut c_void,
        ) -> c_long;
        fn Evaluator_TransformFromNTT(
            thisptr: *mut c_void,
            encrypted_ntt: *mut c_void,
            destination: *mut c_void,
        ) -> c_long;
        fn Ciphertext_ParmsId(thisptr: *mut c_void, parms_id: *mut u64) -> c_long;
    }

    fn check(code: c_long, what: &str) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(EngineError::Internal(format!("SEAL {what}: error {code:#x}")))
        }
    }

    /// A SEAL transform of a ciphertext into a new one.
    type Transform = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> c_long;

    fn transform(
        ev: &BFVEvaluator,
        ct: &Ciphertext,
        f: Transform,
        what: &str,
    ) -> Result<Ciphertext> {
        let out = Ciphertext::new()?;
        // SAFETY: `f` is one of SEAL's C transforms (evaluator, source,
        // destination); live SEAL objects owned by their wrappers; SEAL reads
        // `ct` and writes `out`, which it resizes itself.
        let code = unsafe { f(ev.get_handle(), ct.get_handle(), out.get_handle()) };
        check(code, what)?;
        Ok(out)
    }

    /// The ciphertext in NTT form.
    pub(super) fn ciphertext_to_ntt(ev: &BFVEvaluator, ct: &Ciphertext) -> Result<Ciphertext> {
        transform(ev, ct, Evaluator_TransformToNTT2, "ciphertext to NTT")
    }

    /// The ciphertext back from NTT form.
    pub(super) fn ciphertext_from_ntt(ev: &BFVEvaluator, ct: &Ciphertext) -> Result<Ciphertext> {
        transform(ev, ct, Evaluator_TransformFromNTT, "ciphertext from NTT")
    }

    /// The plaintext in NTT form at the level of `like` (lifted to the
    /// ciphertext modulus as multiply_plain lifts it: centred).
    pub(super) fn plaintext_to_ntt(
        ev: &BFVEvaluator,
        pt: &Plaintext,
        like: &Ciphertext,
    ) -> Result<Plaintext> {
        let mut parms = [0u64; 4];
        let out = Plaintext::new()?;
        // SAFETY: live SEAL objects; a parms_id is four u64s, which SEAL
        // writes and then reads; a null pool is SEAL's global pool.
        unsafe {
            check(Ciphertext_ParmsId(like.get_handle(), parms.as_mut_ptr()), "parms id")?;
            check(
                Evaluator_TransformToNTT1(
                    ev.get_handle(),
                    pt.get_handle(),
                    parms.as_mut_ptr(),
                    out.get_handle(),
                    std::ptr::null_mut(),
                ),
                "plaintext to NTT",
            )?;
        }
        Ok(out)
    }
}

/// The server's side: the client's public key and the evaluator.
pub struct ServerHe {
    ctx: Context,
    encryptor: Encryptor,
    /// SEAL's serialisation of a fresh ciphertext up to its coefficients,
    /// which a compact fresh ciphertext completes ([`fresh`]).
    fresh_head: Vec<u8>,
    evaluator: BFVEvaluator,
    encoder: BFVEncoder,
    q: u64,
}

impl ServerHe {
    /// Sets up with the client's public key.
    pub fn new(public_key: &[u8]) -> Result<Self> {
        let ctx = BFV_N8192.context()?;
        let plain = checked(public_key, Expect::PublicKey)?;
        let pk = PublicKey::from_bytes(&ctx, &plain)
            .map_err(|e| EngineError::Malformed(format!("public key: {e}")))?;
        let encryptor = Encryptor::with_public_key(&ctx, &pk)?;
        let evaluator = BFVEvaluator::new(&ctx)?;
        let encoder = BFVEncoder::new(&ctx)?;
        let q = wire::result_prime()?;
        let fresh_head = fresh::head(&encryptor.encrypt(&plaintext_from(std::iter::empty())?)?)?;
        Ok(ServerHe { ctx, encryptor, fresh_head, evaluator, encoder, q })
    }

    /// Reads a fresh ciphertext from the client in its compact form
    /// ([`ClientHe::encrypt_input`]): exactly [`FRESH_CT_BYTES`] long, every
    /// coefficient below its prime and a PRNG SEAL knows, or refused
    /// ([`EngineError::Malformed`]); SEAL then expands c₁ from the seed.
    pub fn fresh_from_wire(&self, b: &[u8]) -> Result<Ciphertext> {
        let plain = fresh::expand(&self.fresh_head, b)?;
        Ciphertext::from_bytes(&self.ctx, &plain)
            .map_err(|e| EngineError::Malformed(format!("fresh ciphertext: {e}")))
    }

    /// Adds a fresh encryption of zero and drops to the result level.
    fn rerandomize(&self, c: &mut Ciphertext) -> Result<()> {
        let zero = self.encryptor.encrypt(&plaintext_from(std::iter::empty())?)?;
        self.evaluator.add_inplace(c, &zero)?;
        for _ in 0..RESULT_LEVEL_DROPS {
            self.evaluator.mod_switch_to_next_inplace(c)?;
        }
        Ok(())
    }

    /// Computes Enc(M·r − s) for a linear layer with integer weights `w`;
    /// returns the result ciphertexts and s at the output positions (the
    /// server's offline share of M·r is +s... see the protocol).
    pub fn linear<R: RngCore + CryptoRng>(
        &self,
        packing: &Packing,
        w: &[i64],
        inputs: &[Ciphertext],
        rng: &mut R,
    ) -> Result<(Vec<Ciphertext>, Vec<F>)> {
        if inputs.len() != packing.input_polys() {
            return Err(EngineError::Malformed(format!(
                "{} input ciphertexts for a layer that takes {}",
                inputs.len(),
                packing.input_polys()
            )));
        }
        let mut results = Vec::with_capacity(packing.output_polys());
        let mut masks: Vec<Vec<u64>> = Vec::with_capacity(packing.output_polys());
        // Products in the NTT domain: each input ciphertext is transformed
        // once, each weight polynomial once, a product is a pointwise one
        // and the sum goes back once per output (SEAL's multiply_plain on a
        // normal ciphertext transforms both of its polynomials there and
        // back for every product). The same exact ring products, so the same
        // ciphertexts (tested).
        let inputs_ntt = inputs
            .iter()
            .map(|ct| ntt::ciphertext_to_ntt(&self.evaluator, ct))
            .collect::<Result<Vec<_>>>()?;
        for out in 0..packing.output_polys() {
            let mut acc: Option<Ciphertext> = None;
            for (inp, ct) in inputs_ntt.iter().enumerate() {
                let wp = packing.weight_poly(w, out, inp);
                if wp.iter().all(|&c| c == 0) {
                    continue;
                }
                let pt = plaintext_from(wp.into_iter().map(|c| F::from_i64(c).value()))?;
                let pt = ntt::plaintext_to_ntt(&self.evaluator, &pt, ct)?;
                let prod = self.evaluator.multiply_plain(ct, &pt)?;
                match acc.as_mut() {
                    None => acc = Some(prod),
                    Some(a) => self.evaluator.add_inplace(a, &prod)?,
                }
            }
            let mut c = match acc {
                Some(c) => ntt::ciphertext_from_ntt(&self.evaluator, &c)?,
                None => self.encryptor.encrypt(&plaintext_from(std::iter::empty())?)?,
            };
            let s: Vec<u64> = (0..N).map(|_| F::random(rng).value()).collect();
            self.evaluator.sub_plain_inplace(&mut c, &plaintext_from(s.iter().copied())?)?;
            self.rerandomize(&mut c)?;
            results.push(c);
            masks.push(s);
        }
        let s_out =
            packing.output_positions().into_iter().map(|(p, c)| F::from_u64(masks[p][c])).collect();
        Ok((results, s_out))
    }

    /// For square triples: Enc(2·a_c·a_s − t) from Enc(a_c) and the server's a_s, t.
    pub fn square_cross(&self, enc_ac: &Ciphertext, a_s: &[F], t: &[F]) -> Result<Ciphertext> {
        let two_as: Vec<u64> = a_s.iter().map(|a| (*a + *a).value()).collect();
        let tv: Vec<u64> = t.iter().map(|x| x.value()).collect();
        let mut c =
            self.evaluator.multiply_plain(enc_ac, &self.encoder.encode_unsigned(&two_as)?)?;
        self.evaluator.sub_plain_inplace(&mut c, &self.encoder.encode_unsigned(&tv)?)?;
        self.rerandomize(&mut c)?;
        Ok(c)
    }

    /// Serialises a ciphertext.
    pub fn to_bytes(c: &Ciphertext) -> Result<Vec<u8>> {
        Ok(c.as_bytes()?)
    }

    /// A result ciphertext in its compact form on the wire ([`wire`]),
    /// keeping the c₀ coefficients `kept` (ascending; `None`: all).
    pub fn result_to_wire(&self, c: &Ciphertext, kept: Option<&[u32]>) -> Result<Vec<u8>> {
        wire::compact(c, kept, self.q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use delphi_net::fixed::linear_field;
    use delphi_net::linear::LinearOp;
    use delphi_net::Shape;
    use rand::{Rng, SeedableRng};

    fn check(op: LinearOp, seed: u64) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let packing = Packing::new(&op).unwrap();
        let client = ClientHe::new().unwrap();
        let server = ServerHe::new(&client.public_key_bytes().unwrap()).unwrap();
        let r: Vec<F> = (0..op.input.len()).map(|_| F::random(&mut rng)).collect();
        // A grouped layer's weights: its own, zero outside each group.
        let (out, cin, kk) = (op.output.channels, op.input.channels, op.kernel * op.kernel);
        let own: Vec<i64> =
            (0..out * cin / op.groups * kk).map(|_| rng.gen_range(-2000..2000)).collect();
        let w = delphi_net::linear::expand_groups(&own, out, cin, op.groups, kk);
        let wired = client.encrypt_input(&packing, &r).unwrap();
        // Through the compact form, as over the wire.
        let cts: Vec<Ciphertext> = wired
            .iter()
            .map(|b| {
                assert_eq!(b.len(), FRESH_CT_BYTES);
                server.fresh_from_wire(b).unwrap()
            })
            .collect();
        let (res, s) = server.linear(&packing, &w, &cts, &mut rng).unwrap();
        let kept = packing.kept();
        let counts: Vec<usize> = kept.iter().map(Vec::len).collect();
        assert_eq!(packing.kept_counts().collect::<Vec<_>>(), counts, "{op:?}");
        let mut wired = Vec::new();
        for (c, k) in res.iter().zip(&kept) {
            // Measured: 11 bits left at the 60-bit level, whatever the weights
            // (the modulus-switch rounding noise dominates) ...
            assert!(client.noise_budget(c).unwrap() >= 6, "too little noise budget left");
            // ... and what the compact form's rounding leaves (c₀ whole, to
            // measure: a result sent keeps only the outputs' coefficients).
            let all = client.result_from_wire(&server.result_to_wire(c, None).unwrap(), None);
            let left = client.noise_budget(&all.unwrap()).unwrap();
            assert!(left >= 2, "{left} bits of noise budget left on the wire");
            let b = server.result_to_wire(c, Some(k)).unwrap();
            assert_eq!(b.len(), result_frame_bytes(k.len()));
            wired.push(client.result_from_wire(&b, Some(k)).unwrap());
        }
        let got = client.decrypt_output(&packing, &wired).unwrap();
        // SEAL's own serialisation still loads and decrypts to the same.
        assert_eq!(got, client.decrypt_output(&packing, &res).unwrap());
        let want = linear_field(&op, &r, &w, &[]);
        for ((g, s), w) in got.iter().zip(&s).zip(&want) {
            assert_eq!(*g + *s, *w);
        }
    }

    /// A product in the NTT domain is the very ciphertext SEAL's
    /// multiply_plain gives on the normal one (centred lift included: the
    /// weights are small negative and positive field elements, and large
    /// ones near p).
    #[test]
    fn ntt_domain_products_are_seals_products_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        let client = ClientHe::new().unwrap();
        let server = ServerHe::new(&client.public_key_bytes().unwrap()).unwrap();
        let r: Vec<F> = (0..N).map(|_| F::random(&mut rng)).collect();
        let ct = server
            .encryptor
            .encrypt(&plaintext_from(r.iter().map(|x| x.value())).unwrap())
            .unwrap();
        let w: Vec<u64> = (0..N)
            .map(|i| match i % 3 {
                0 => F::from_i64(rng.gen_range(-2000..2000)).value(),
                1 => F::random(&mut rng).value(),
                _ => 0,
            })
            .collect();
        let pt = plaintext_from(w.into_iter()).unwrap();
        let want = server.evaluator.multiply_plain(&ct, &pt).unwrap();
        let ct_ntt = ntt::ciphertext_to_ntt(&server.evaluator, &ct).unwrap();
        let pt_ntt = ntt::plaintext_to_ntt(&server.evaluator, &pt, &ct_ntt).unwrap();
        let prod = server.evaluator.multiply_plain(&ct_ntt, &pt_ntt).unwrap();
        let got = ntt::ciphertext_from_ntt(&server.evaluator, &prod).unwrap();
        assert!(got.as_bytes().unwrap() == want.as_bytes().unwrap(), "NTT product differs");
    }

    /// A compact result that is not what the format allows is refused by
    /// name: a byte short or long, a coefficient at or past q, padding
    /// bits set.
    #[test]
    fn malformed_compact_results_are_refused() {
        let client = ClientHe::new().unwrap();
        let server = ServerHe::new(&client.public_key_bytes().unwrap()).unwrap();
        let one = [F::ONE; 4];
        let enc = server.fresh_from_wire(&client.encrypt_slots(&one).unwrap()).unwrap();
        let c = server.square_cross(&enc, &one, &one).unwrap();
        let kept: Vec<u32> = (0..101).map(|i| i * 3).collect();
        let good = server.result_to_wire(&c, Some(&kept)).unwrap();
        assert!(client.result_from_wire(&good, Some(&kept)).is_ok());
        let malformed = |b: &[u8]| {
            matches!(client.result_from_wire(b, Some(&kept)), Err(EngineError::Malformed(_)))
        };
        assert!(malformed(&good[1..]));
        assert!(malformed(&[good.clone(), vec![0]].concat()));
        let mut top = good.clone();
        // The first c₁ coefficient all ones: 2^53 − 1 > ⌈(q − 1)/2^7⌉.
        for b in &mut top[..6] {
            *b = 0xff;
        }
        top[6] |= 0x1f;
        assert!(malformed(&top));
        let mut pad = good.clone();
        let bits = N * RESULT_C1_BITS as usize + kept.len() * RESULT_C0_BITS as usize;
        assert!(!bits.is_multiple_of(8), "the test needs padding bits");
        *pad.last_mut().unwrap() |= 0x80;
        assert!(malformed(&pad));
    }

    /// A compact fresh ciphertext that is not what the format allows is
    /// refused by name: a byte short or long, an unknown PRNG, a coefficient
    /// at or past its prime. One that is well formed decrypts to what was
    /// encrypted.
    #[test]
    fn malformed_compact_fresh_ciphertexts_are_refused() {
        let client = ClientHe::new().unwrap();
        let server = ServerHe::new(&client.public_key_bytes().unwrap()).unwrap();
        let v: Vec<F> = (0..50).map(|i| F::from_u64(i * 1_000_003)).collect();
        let good = client.encrypt_slots(&v).unwrap();
        assert_eq!(good.len(), FRESH_CT_BYTES);
        let ct = server.fresh_from_wire(&good).unwrap();
        assert_eq!(client.decrypt_slots(&ct, v.len()).unwrap(), v);
        let malformed =
            |b: &[u8]| matches!(server.fresh_from_wire(b), Err(EngineError::Malformed(_)));
        assert!(malformed(&good[1..]));
        assert!(malformed(&[good.clone(), vec![0]].concat()));
        for t in [0u8, 3, 255] {
            let mut b = good.clone();
            b[0] = t;
            assert!(malformed(&b), "PRNG type {t}");
        }
        // The first coefficient all ones: 2^60 − 1 is past the 60-bit prime.
        let mut top = good.clone();
        for b in &mut top[FRESH_SEED_BYTES..FRESH_SEED_BYTES + 7] {
            *b = 0xff;
        }
        top[FRESH_SEED_BYTES + 7] |= 0x0f;
        assert!(malformed(&top));
        // Another seed expands to another c₁: a valid ciphertext of noise.
        let mut reseeded = good.clone();
        reseeded[1] ^= 1;
        let other = server.fresh_from_wire(&reseeded).unwrap();
        assert_ne!(client.decrypt_slots(&other, v.len()).unwrap(), v);
    }

    #[test]
    fn square_triples_from_bfv() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let client = ClientHe::new().unwrap();
        let server = ServerHe::new(&client.public_key_bytes().unwrap()).unwrap();
        let n = 1000;
        let ac: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
        let a_s: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
        let t: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
        let enc = server.fresh_from_wire(&client.encrypt_slots(&ac).unwrap()).unwrap();
        // Measured: 71 bits fresh (the symmetric encryption's e alone).
        assert!(client.noise_budget(&enc).unwrap() >= 65);
        let c = server.square_cross(&enc, &a_s, &t).unwrap();
        assert!(client.noise_budget(&c).unwrap() >= 6);
        let c = client.result_from_wire(&server.result_to_wire(&c, None).unwrap(), None).unwrap();
        assert!(client.noise_budget(&c).unwrap() >= 2);
        let u = client.decrypt_slots(&c, n).unwrap();
        for i in 0..n {
            let a = ac[i] + a_s[i];
            // Client share a_c² + u, server share a_s² + t.
            assert_eq!(ac[i] * ac[i] + u[i] + a_s[i] * a_s[i] + t[i], a * a);
        }
    }

    #[test]
    fn conv_and_dense_match_the_plaintext_layer() {
        check(LinearOp::conv(Shape::new(3, 8, 8), 4, 3, 1, 1), 1);
        check(LinearOp::conv(Shape::new(5, 9, 9), 3, 3, 2, 1), 2);
        check(LinearOp::conv(Shape::new(20, 10, 10), 2, 1, 2, 0), 3);
        check(LinearOp::conv(Shape::new(16, 32, 32), 2, 3, 1, 1), 4);
        // Several output channels per result: small planes, many channels
        // (plain, strided, 1×1 with stride and an odd count).
        for (i, op) in [
            LinearOp::conv(Shape::new(64, 8, 8), 64, 3, 1, 1),
            LinearOp::conv(Shape::new(32, 16, 16), 64, 3, 2, 1),
            LinearOp::conv(Shape::new(24, 9, 9), 37, 1, 2, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let p = Packing::new(&op).unwrap();
            assert!(matches!(p, Packing::Conv { outs, .. } if outs > 1), "{p:?}");
            check(op, 20 + i as u64);
        }
        // Depthwise (the spaced layout, weights given in full, zero off the
        // diagonal), strided and not, and one whose planes allow 2 per polynomial.
        let dw = |s: Shape, k: usize, stride: usize, pad: usize| {
            LinearOp::conv(s, s.channels, k, stride, pad).with_groups(s.channels)
        };
        for (i, op) in [
            dw(Shape::new(7, 14, 14), 3, 1, 1),
            dw(Shape::new(12, 9, 9), 3, 2, 1),
            dw(Shape::new(20, 14, 14), 5, 1, 2),
        ]
        .into_iter()
        .enumerate()
        {
            assert!(matches!(Packing::new(&op).unwrap(), Packing::Depthwise { .. }), "{op:?}");
            check(op, 10 + i as u64);
        }
        check(LinearOp::dense(100, 7), 5);
        check(LinearOp::dense(9000, 3), 6);
    }
}
/// Side by side, by hand: `cargo test --release -p delphi-engine --lib
/// ntt_products -- --ignored --nocapture` times 64 products and their sum
/// through SEAL's multiply_plain on the normal ciphertext and in the NTT
/// domain (and checks that both give the same ciphertext).
#[cfg(test)]
mod ntt_products {
    use super::*;
    use rand::SeedableRng;

    #[test]
    #[ignore]
    fn timed_beside_seals_multiply_plain() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let client = ClientHe::new().unwrap();
        let server = ServerHe::new(&client.public_key_bytes().unwrap()).unwrap();
        let ev = &server.evaluator;
        let r = (0..N).map(|_| F::random(&mut rng).value());
        let ct = server.encryptor.encrypt(&plaintext_from(r).unwrap()).unwrap();
        let pts: Vec<Plaintext> = (0..64)
            .map(|_| plaintext_from((0..N).map(|_| F::random(&mut rng).value())).unwrap())
            .collect();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let mut normal = ev.multiply_plain(&ct, &pts[0]).unwrap();
            for p in &pts[1..] {
                ev.add_inplace(&mut normal, &ev.multiply_plain(&ct, p).unwrap()).unwrap();
            }
            let a = t.elapsed();
            let t = std::time::Instant::now();
            let c = ntt::ciphertext_to_ntt(ev, &ct).unwrap();
            let mut acc = ev.multiply_plain(&c, &ntt::plaintext_to_ntt(ev, &pts[0], &c).unwrap());
            let acc = acc.as_mut().unwrap();
            for p in &pts[1..] {
                let x = ev.multiply_plain(&c, &ntt::plaintext_to_ntt(ev, p, &c).unwrap()).unwrap();
                ev.add_inplace(acc, &x).unwrap();
            }
            let back = ntt::ciphertext_from_ntt(ev, acc).unwrap();
            let b = t.elapsed();
            assert!(back.as_bytes().unwrap() == normal.as_bytes().unwrap());
            eprintln!("64 products and their sum: multiply_plain {a:?}, NTT domain {b:?}");
        }
    }
}
