//! The ReLU circuit and the two-party ReLU-layer protocol.
//!
//! # The circuit (89 AND gates and 42 products; DELPHI's ReLU6 circuit had 288 ANDs)
//!
//! Inputs: the client's share `a` (evaluator, known offline, entered as
//! a' = a + K with K = 2^37 − 1, 41 bits) and the server's share `b`
//! (garbler, known online, 41 bits). With s' = a' + b (41 ANDs, 42 bits):
//!
//! * s = a + b wraps past p exactly when s' ≥ p + K = 2^41, i.e. bit 41 of s';
//! * y = s mod p is negative (y ≥ (p−1)/2) exactly when
//!   [s' ≥ 17·2^36 − 1] ⊕ [s' ≥ 2^41] ⊕ [s' ≥ 2^41 + 15·2^36];
//!   the last two read the top bits only, the first also needs "the low 36
//!   bits of s' are all ones", which is the AND of the adder's 36 propagate
//!   bits (35 ANDs) — 55 ANDs for the sign in all;
//! * ReLU(y) ≡ pos·(s' − K) (mod p), because s ≡ y: the circuit outputs
//!   pos and the 42 bits s'_j, never reducing s mod p; the 42 products
//!   pos ∧ s'_j are formed by the output conversion from the two wires'
//!   labels ([`crate::gc::Conversion`]: two field elements each, no AND gate).
//!
//! With a truncation `shift` f > 0 the outputs give ReLU(y) >> f exactly
//! (89 + f ANDs), so no probabilistic truncation is needed after a linear
//! layer that feeds a ReLU.
//!
//! # Reduced ReLUs (fewer bits, fewer gates, fewer bytes)
//!
//! A trained network's ReLU inputs are small and its outputs are truncated
//! anyway, so most of the 41 bits do not matter. A reduced ReLU with window
//! [`ReluBits`] `{lo, hi}` feeds the circuit bits lo..hi only (n = hi − lo
//! from each party) and uses p ≡ 1 (mod 2^37): for hi ≤ 37, with
//! A = a and B = b + 2^(hi−1) mod p as integers in [0, p) and w = [A + B ≥ p]
//! (so A + B = v + 2^(hi−1) + w·p),
//!
//! > A + B − w ≡ v + 2^(hi−1) (mod 2^hi),
//!
//! for the signed input v, so the mod-p wrap costs nothing but a unit in the
//! last place. Each party drops the low `lo` bits of its own integer
//! locally (the client after adding 2^lo − 1, which centres the error of the
//! lost carry); the circuit adds the two n-bit halves mod 2^n (n − 1 ANDs) and
//! obtains S = T + e with T = ⌊(v + 2^(hi−1)) / 2^lo⌋ mod 2^n and
//! e ∈ {−1, 0, 1} (the carry of the dropped bits and w, which depend on the
//! random shares). The top bit of S is the sign; the value is
//! Σ 2^(j + lo − shift)·(pos ∧ S_j) (so the multiplication by the sign
//! happens in the output conversion: n − 1 − max(0, shift − lo) products,
//! no extra round online).
//!
//! **What it computes.** The reference ([`relu_reduced_reference`]) is
//! g(T), where g(S) = [S ≥ 2^(n−1)]·⌊(S mod 2^(n−1))·2^lo / 2^shift⌋; the
//! secure output is g(S). Hence:
//! * for |v| < 2^(hi−1) (inside the window) the reference's sign is exact and,
//!   when lo ≤ shift, g(T) is exactly ReLU(v) >> shift; with lo > shift it is
//!   ReLU(v) rounded down to a multiple of 2^lo;
//! * outside the window T wraps around (mod 2^n) and the reference says so:
//!   it is a deterministic function of v that planners must account for;
//! * the secure output differs from the reference by at most
//!   [`ReluBits::error_bound`] = max(1, 2^(lo − shift)) units, for every
//!   input with |v| < 2^(hi−1) − 2^lo (T away from the wrap); its sign can
//!   differ only where |v| < 2^lo, where both outputs are within that bound
//!   of zero.
//!
//! # Output masking
//!
//! The outputs are not decoded. The output labels are turned into an
//! additive share with one field element per plain output and two per
//! product (see [`crate::gc::Conversion`] and
//! [`Garbler::arith_outputs_batch`](crate::gc::Garbler::arith_outputs_batch)):
//! the client obtains ReLU(y) − ρ mod p for a fresh pseudorandom ρ that only
//! the server knows. This replaces a mod-p subtraction of a garbler-input
//! mask (≈123 ANDs plus 41 offline input labels), and the client never sees
//! a plaintext bit of the computation.
//!
//! # Protocol
//!
//! Offline (per bundle): the server picks a fresh bundle id and hash key;
//! correlated OT gives the client the labels of its 41 input bits per ReLU
//! (n for a reduced one) and the server Δ; the server garbles and streams
//! the tables and output conversions. Online: the server sends the 41 (n)
//! labels of its share per ReLU (656 bytes; 16·n); the client evaluates,
//! a chunk of batches at a time on every core. Each bundle runs online once.
//! Both parties state the count, truncation and window before anything
//! else, so a disagreement is a typed [`Error::Mismatch`].

mod circuit;
pub mod spec;
#[cfg(test)]
mod tests;

pub use circuit::{
    relu_circuit, relu_circuit_for, relu_exact_window_gadget, relu_gadget, relu_reduced_gadget,
    ReluCircuit,
};
pub use spec::*;

use rand::{CryptoRng, RngCore};

use crate::channel::Channel;
use crate::error::Result;
use crate::field::F;
use crate::garbled::{ClientGcBundle, GcCircuit, GcFunction, ServerGcBundle};
use crate::ot::{CotReceiverPool, CotSenderPool};

/// Server's half of an offline ReLU bundle.
pub type ServerReluBundle = ServerGcBundle<ReluSpec>;
/// Client's half of an offline ReLU bundle.
pub type ClientReluBundle = ClientGcBundle<ReluSpec>;

/// Offline phase, server side: garbles `n` ReLUs and sends them.
pub fn server_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    n: usize,
    spec: impl Into<ReluSpec>,
    rng: &mut R,
) -> Result<ServerReluBundle> {
    ServerGcBundle::offline(ch, n, spec.into(), rng)
}

/// [`server_offline`] with the correlated OTs of `ot`, a pool that serves
/// a whole offline phase.
pub fn server_offline_with<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    n: usize,
    spec: impl Into<ReluSpec>,
    rng: &mut R,
    ot: &mut CotSenderPool,
) -> Result<ServerReluBundle> {
    ServerGcBundle::offline_with(ch, n, spec.into(), rng, ot)
}

/// Offline phase, client side: obtains the garbled ReLUs for its shares
/// (which it knows before the input exists).
pub fn client_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    spec: impl Into<ReluSpec>,
    rng: &mut R,
) -> Result<ClientReluBundle> {
    ClientGcBundle::offline(ch, shares, spec.into(), rng)
}

/// [`client_offline`] that keeps the garbled material in `spool` when given
/// one ([`crate::spool`]).
pub fn client_offline_to<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    spec: impl Into<ReluSpec>,
    rng: &mut R,
    spool: Option<&crate::spool::Spool>,
) -> Result<ClientReluBundle> {
    ClientGcBundle::offline_to(ch, shares, spec.into(), rng, spool)
}

/// [`client_offline_to`] with the correlated OTs of `ot`, a pool that
/// serves a whole offline phase.
pub fn client_offline_with<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    spec: impl Into<ReluSpec>,
    rng: &mut R,
    spool: Option<&crate::spool::Spool>,
    ot: &mut CotReceiverPool,
) -> Result<ClientReluBundle> {
    ClientGcBundle::offline_with(ch, shares, spec.into(), rng, spool, ot)
}

/// Bytes the client's half of an offline bundle of `n` ReLUs holds.
pub fn client_bundle_bytes(n: usize, spec: impl Into<ReluSpec>) -> u64 {
    crate::garbled::client_bundle_bytes(spec.into(), n)
}

impl GcFunction for ReluSpec {
    const WHAT: &'static str = "ReLUs";
    const AGREE: [&'static str; 3] = ["ReLU count", "ReLU truncation", "ReLU bits"];
    const TAGS: [u64; 2] = [u64::from_le_bytes(*b"dlRELUs3"), u64::from_le_bytes(*b"dlRELUc3")];
    const NOT_TAGGED: [&'static str; 2] =
        ["not a stored server ReLU bundle", "not a stored client ReLU bundle"];

    fn check(self) -> Result<()> {
        ReluSpec::check(self)
    }
    fn codes(self) -> [u64; 2] {
        [self.shift as u64, ReluBits::code(self.bits)]
    }
    fn from_codes([shift, bits]: [u64; 2]) -> Option<Self> {
        let shift = u32::try_from(shift).ok().filter(|&s| s <= MAX_SHIFT)?;
        Some(ReluSpec { shift, bits: ReluBits::from_code(bits)? })
    }
    fn gc(self) -> &'static GcCircuit {
        relu_circuit_for(self)
    }
    fn client_input(self, a: F, out: &mut Vec<bool>) {
        ReluSpec::client_input(self, a, out)
    }
    fn server_input(self, b: F, out: &mut Vec<bool>) {
        ReluSpec::server_input(self, b, out)
    }
}
