//! The BFV parameter set, named and stated once: what SEAL is built with
//! and what a peer's serialised objects are checked against
//! ([`crate::seal_check`]) before SEAL parses them.
//!
//! [`BFV_N8192`]: N = 8192, plaintext modulus p = 2061584302081 (the sharing
//! field, p ≡ 1 mod 2N), coefficient modulus of 169 bits (60 + 60 data
//! primes, 49-bit special prime): 128-bit security per the
//! HomomorphicEncryption.org standard (which allows up to 218 bits at this
//! N), enforced by SEAL at context creation.
//!
//! Two data primes are enough: the protocol never multiplies two
//! ciphertexts, only a ciphertext by a plaintext. A fresh encryption has
//! about 71 bits of noise budget; the costliest product, a square triple's
//! (a plaintext of uniformly random field elements in the slots), leaves
//! 26; a dense layer's 16 products of 8,192 weights of 13 bits leave 50
//! (measured). Modulus switching to the one 60-bit prime then leaves about
//! 11 bits, whatever came before: its own rounding dominates. (A third data
//! prime, as this once had, bought nothing but a third more bytes in every
//! fresh ciphertext and a third more work in every product.)

use seal_fhe::{
    BfvEncryptionParametersBuilder, CoefficientModulus, Context, EncryptionParameters, Modulus,
    SecurityLevel,
};

use delphi_crypto::field::P;

use crate::error::Result;

pub use delphi_net::packing::{Packing, N};
/// Coefficient-modulus prime sizes: data primes then the special prime.
pub const COEFF_BITS: [i32; 3] = [60, 60, 49];
/// Primes dropped (by modulus switching) before a result goes back: results
/// travel at the lowest level (one 60-bit prime), where about 11 bits of
/// noise budget remain (measured; the switch's rounding noise dominates).
pub const RESULT_LEVEL_DROPS: usize = 1;
/// Index of the result level in the modulus chain (0 = top data level).
pub const RESULT_LEVEL: usize = RESULT_LEVEL_DROPS;

/// The named BFV parameter set: N = 8192, t = p (41-bit prime, p ≡ 1 mod 2N),
/// q = 169 bits: 128-bit security (HomomorphicEncryption.org standard).
pub struct BfvParams;

/// The parameter set used throughout.
pub const BFV_N8192: BfvParams = BfvParams;

impl BfvParams {
    /// Builds SEAL's parameters.
    pub fn encryption_parameters(&self) -> Result<EncryptionParameters> {
        Ok(BfvEncryptionParametersBuilder::new()
            .set_poly_modulus_degree(N as u64)
            .set_coefficient_modulus(CoefficientModulus::create(N as u64, &COEFF_BITS)?)
            .set_plain_modulus(Modulus::new(P)?)
            .build()?)
    }

    /// A SEAL context that enforces 128-bit security.
    pub fn context(&self) -> Result<Context> {
        Ok(Context::new(&self.encryption_parameters()?, true, SecurityLevel::TC128)?)
    }
}

/// Slots per batched ciphertext.
pub const SLOTS: usize = N;
