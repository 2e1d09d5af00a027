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
    result_frame_bytes, RESULT_C0_BITS, RESULT_C0_DROP, RESULT_C1_BITS, RESULT_C1_DROP,
    RESULT_PRIME_BITS,
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
    encryptor: Encryptor,
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
        let decryptor = Decryptor::new(&ctx, &secret)?;
        let encoder = BFVEncoder::new(&ctx)?;
        let template = encryptor.encrypt(&plaintext_from(std::iter::empty())?)?;
        let evaluator = BFVEvaluator::new(&ctx)?;
        for _ in 0..RESULT_LEVEL_DROPS {
            evaluator.mod_switch_to_next_inplace(&template)?;
        }
        let q = wire::result_prime()?;
        Ok(ClientHe { ctx, public, encryptor, decryptor, encoder, template, q })
    }

    /// The public key, serialised for the server.
    pub fn public_key_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.public.as_bytes()?)
    }

    /// Encrypts the layer-input mask `r` as the packing lays it out.
    pub fn encrypt_input(&self, packing: &Packing, r: &[F]) -> Result<Vec<Ciphertext>> {
        packing
            .pack_input(r)
            .into_iter()
            .map(|v| Ok(self.encryptor.encrypt(&plaintext_from(v.into_iter())?)?))
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

    /// Encrypts a vector in the batching slots (for Beaver triples).
    pub fn encrypt_slots(&self, v: &[F]) -> Result<Ciphertext> {
        let vals: Vec<u64> = v.iter().map(|x| x.value()).collect();
        Ok(self.encryptor.encrypt(&self.encoder.encode_unsigned(&vals)?)?)
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
        fn Ciphertext_GetDataAt1(thisptr: *mut c_void, index: u64, data: *mut u64) -> c_long;
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
    struct Bits {
        out: Vec<u8>,
        acc: u128,
        n: u32,
    }

    impl Bits {
        fn put(&mut self, v: u64, w: u32) {
            self.acc |= (v as u128) << self.n;
            self.n += w;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }

        fn finish(mut self) -> Vec<u8> {
            if self.n > 0 {
                self.out.push(self.acc as u8);
            }
            self.out
        }
    }

    struct Unbits<'a> {
        b: &'a [u8],
        at: usize,
        acc: u128,
        n: u32,
    }

    impl Unbits<'_> {
        fn get(&mut self, w: u32) -> u64 {
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
        Ok(ServerHe { ctx, encryptor, evaluator, encoder, q })
    }

    /// Parses a fresh ciphertext from the client: checked against the
    /// agreed parameters ([`crate::seal_check`]) before SEAL loads it.
    pub fn ciphertext_from_bytes(&self, b: &[u8]) -> Result<Ciphertext> {
        let plain = checked(b, Expect::Fresh)?;
        Ciphertext::from_bytes(&self.ctx, &plain)
            .map_err(|e| EngineError::Malformed(format!("ciphertext: {e}")))
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
        let cts = client.encrypt_input(&packing, &r).unwrap();
        // Round trip through bytes, as over the wire.
        let cts: Vec<Ciphertext> = cts
            .iter()
            .map(|c| server.ciphertext_from_bytes(&ServerHe::to_bytes(c).unwrap()).unwrap())
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
        let ct = client
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
        let c = server.square_cross(&client.encrypt_slots(&one).unwrap(), &one, &one).unwrap();
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

    #[test]
    fn square_triples_from_bfv() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let client = ClientHe::new().unwrap();
        let server = ServerHe::new(&client.public_key_bytes().unwrap()).unwrap();
        let n = 1000;
        let ac: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
        let a_s: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
        let t: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
        let c = server.square_cross(&client.encrypt_slots(&ac).unwrap(), &a_s, &t).unwrap();
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
        let ct = client.encryptor.encrypt(&plaintext_from(r).unwrap()).unwrap();
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
