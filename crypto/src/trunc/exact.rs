//! Exact truncation: ⌊(v + 2^(f−1)) / 2^f⌋, a deterministic function of the
//! shared value v, computed by one small garbled circuit per value.
//!
//! # Bounded (|v| ≤ 2^38, proven by the caller): f + 1 labels online
//!
//! The server adds the public offset B = 2^38 + 2^(f−1) to its share s, so
//! v' = v + B lies in [0, (p−1)/2] and the wrap bit w of c + s' = v' + w·p
//! is msb(c) ∨ msb(s') (the faithful truncation's argument,
//! [`super::faithful`]). With x = x₁·2^f + x₀ and p = P₁·2^f + 1,
//!
//! > ⌊v'/2^f⌋ = c₁ + s'₁ − w·P₁ + ⌊(c₀ + s'₀ − w) / 2^f⌋,
//!
//! and the last term, the one the faithful protocol leaves to the shares,
//! is computed exactly: the client enters c₀ + 2^f − 1 (f + 1 bits) and
//! ¬msb(c), the server s'₀ (f bits) and ¬msb(s'); the circuit adds them
//! with carry-in 1 − w = ¬msb(c) ∧ ¬msb(s'), so bits f and f + 1 of the sum
//! are 1 + ⌊(c₀ + s'₀ − w)/2^f⌋ ∈ {0, 1, 2}. Its outputs (those two bits
//! and 1 − w, weights 1, 2 and P₁) become additive shares as every garbled
//! output does; each party adds its own high part (c₁, s'₁) and the server
//! the constants. f + 2 ANDs; the server sends f + 1 labels online.
//!
//! The argument needs v' ≤ (p−1)/2. For a larger |v| the result would
//! depend on the shares again, so the plan that uses this circuit must
//! *prove* the bound from its weights and its declared input range.
//!
//! # Wide (any v): the full ReLU circuit, 41 labels online
//!
//! Where no bound is proven, the server adds H = 2^39 + 2^(f−1) and both
//! parties run the full-width ReLU circuit with truncation f
//! ([`crate::relu::relu_gadget`]), which is exact for every pair of shares;
//! the server subtracts 2^(39−f). The result is ⌊(v + 2^(f−1))/2^f⌋ for
//! −2^39 ≤ v < 2^38.8 and a fixed function of v beyond (the reference,
//! [`ExactTrunc::reference`], says which): never a function of the shares.

use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::channel::Channel;
use crate::codec::{Decoder, Encoder, Stored};
use crate::error::{Error, Result};
use crate::field::{F, HALF, P};
use crate::garbled::{add_gadget, ClientGcBundle, GcCircuit, GcFunction, ServerGcBundle};
use crate::gc::{Circuit, Fancy};
use crate::ot::{CotReceiverPool, CotSenderPool};
use crate::relu::{client_bits, relu_circuit, relu_trunc_reference, server_bits};

use super::faithful::{trunc_reference, MAX_SHIFT, OFFSET_BITS};

/// log₂ of the wide circuit's offset.
pub const WIDE_OFFSET_BITS: u32 = 39;

/// An exact truncation by `shift` bits: bounded (needs a proven
/// |v| ≤ [`ExactTrunc::max_abs`]) or wide (any v).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExactTrunc {
    /// Bits dropped.
    pub shift: u32,
    /// The wide circuit (exact for every input) instead of the bounded one.
    pub wide: bool,
}

impl ExactTrunc {
    /// The largest |v| the circuit is exact for: 2^38 bounded; wide, the
    /// largest for which its result is v/2^shift rounded (it is a fixed
    /// function of v everywhere).
    pub fn max_abs(self) -> u64 {
        1 << OFFSET_BITS
    }

    /// The largest truncation the variant supports.
    pub fn max_shift(wide: bool) -> u32 {
        if wide {
            crate::relu::MAX_SHIFT
        } else {
            MAX_SHIFT
        }
    }

    fn offset(self) -> F {
        let bits = if self.wide { WIDE_OFFSET_BITS } else { OFFSET_BITS };
        F::from_u64((1 << bits) + (1 << (self.shift - 1)))
    }

    /// What the protocol computes: signed(v)/2^shift rounded to nearest
    /// (ties up) for |v| ≤ 2^38; the wide circuit's fixed result beyond.
    pub fn reference(self, v: F) -> F {
        if self.wide {
            let back = F::from_u64(1 << (WIDE_OFFSET_BITS - self.shift));
            relu_trunc_reference(v + self.offset(), self.shift) - back
        } else {
            trunc_reference(v, self.shift)
        }
    }

    /// Online labels the server sends per value (16 bytes each).
    pub fn server_bits(self) -> usize {
        self.gc().circuit().garbler_inputs()
    }

    /// The client's part of its result, known offline.
    fn client_local(self, c: F) -> F {
        if self.wide {
            F::ZERO
        } else {
            F::from_u64(c.value() >> self.shift)
        }
    }

    /// The server's part of its result, from its share `s`.
    fn server_local(self, s: F) -> F {
        let f = self.shift;
        if self.wide {
            return -F::from_u64(1 << (WIDE_OFFSET_BITS - f));
        }
        let sp = s + self.offset();
        F::from_u64(sp.value() >> f)
            - F::ONE
            - F::from_u64(P >> f)
            - F::from_u64(1 << (OFFSET_BITS - f))
    }
}

fn msb(x: F) -> bool {
    x.value() > HALF
}

/// The bounded circuit (module documentation): client c₀ + 2^f − 1
/// (f + 1 bits) and ¬msb(c); server s'₀ (f bits) and ¬msb(s').
fn bounded_gadget<Fy: Fancy>(
    f: &mut Fy,
    a: &[Fy::Item],
    b: &[Fy::Item],
    shift: u32,
) -> Vec<Fy::Item> {
    let k = shift as usize;
    assert!(a.len() == k + 2 && b.len() == k + 1, "bounded truncation inputs");
    let cin = f.and(&a[k + 1], &b[k]);
    let sum = add_gadget(f, &a[..k + 1], &b[..k], Some(&cin), k + 2);
    vec![sum[k].clone(), sum[k + 1].clone(), cin]
}

/// The bounded circuit for `shift`, recorded once per shift.
fn bounded_circuit(shift: u32) -> &'static GcCircuit {
    use std::sync::OnceLock;
    static C: [OnceLock<GcCircuit>; MAX_SHIFT as usize + 1] =
        [const { OnceLock::new() }; MAX_SHIFT as usize + 1];
    C[shift as usize].get_or_init(|| {
        let k = shift as usize;
        let circuit = Circuit::record(k + 2, k + 1, |f, a, b| bounded_gadget(f, a, b, shift));
        GcCircuit::new(circuit, vec![F::ONE, F::from_u64(2), F::from_u64(P >> shift)], shift)
    })
}

fn push_low_bits(v: u64, width: u32, out: &mut Vec<bool>) {
    out.extend((0..width).map(|j| (v >> j) & 1 == 1));
}

impl GcFunction for ExactTrunc {
    const WHAT: &'static str = "truncated values";
    const AGREE: [&'static str; 3] =
        ["exact truncation count", "exact truncation shift", "exact truncation circuit"];
    const TAGS: [u64; 2] = [u64::from_le_bytes(*b"dlTRXs01"), u64::from_le_bytes(*b"dlTRXc01")];
    const NOT_TAGGED: [&'static str; 2] = [
        "not a stored server exact-truncation bundle",
        "not a stored client exact-truncation bundle",
    ];

    fn check(self) -> Result<()> {
        let max = ExactTrunc::max_shift(self.wide);
        if !(1..=max).contains(&self.shift) {
            return Err(Error::InvalidArgument(format!(
                "exact truncation by {} bits (1 to {max} with the {} circuit)",
                self.shift,
                if self.wide { "wide" } else { "bounded" }
            )));
        }
        Ok(())
    }
    fn codes(self) -> [u64; 2] {
        [self.shift as u64, self.wide as u64]
    }
    fn from_codes([shift, wide]: [u64; 2]) -> Option<Self> {
        let shift = u32::try_from(shift).ok()?;
        let wide = match wide {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(ExactTrunc { shift, wide })
    }
    fn gc(self) -> &'static GcCircuit {
        assert!(self.check().is_ok(), "invalid exact truncation {self:?}");
        if self.wide {
            relu_circuit(self.shift)
        } else {
            bounded_circuit(self.shift)
        }
    }
    fn client_input(self, c: F, out: &mut Vec<bool>) {
        if self.wide {
            return out.extend(client_bits(c));
        }
        let f = self.shift;
        let low = c.value() & ((1 << f) - 1);
        push_low_bits(low + (1 << f) - 1, f + 1, out);
        out.push(!msb(c));
    }
    fn server_input(self, s: F, out: &mut Vec<bool>) {
        let sp = s + self.offset();
        if self.wide {
            return out.extend(server_bits(sp));
        }
        push_low_bits(sp.value(), self.shift, out);
        out.push(!msb(sp));
    }
}

/// Server's half of an offline exact-truncation bundle.
#[derive(Debug)]
pub struct ServerExactBundle {
    gc: ServerGcBundle<ExactTrunc>,
}

/// Client's half of an offline exact-truncation bundle.
pub struct ClientExactBundle {
    gc: ClientGcBundle<ExactTrunc>,
    /// The client's offline part of each result (c₁), a secret.
    local: Zeroizing<Vec<F>>,
}

impl std::fmt::Debug for ClientExactBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientExactBundle").field("gc", &self.gc).finish_non_exhaustive()
    }
}

impl ServerExactBundle {
    /// Offline phase, server side, for `n` values.
    pub fn offline<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        n: usize,
        spec: ExactTrunc,
        rng: &mut R,
    ) -> Result<Self> {
        Ok(ServerExactBundle { gc: ServerGcBundle::offline(ch, n, spec, rng)? })
    }

    /// [`ServerExactBundle::offline`] with the correlated OTs of `ot`.
    pub fn offline_with<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        n: usize,
        spec: ExactTrunc,
        rng: &mut R,
        ot: &mut CotSenderPool,
    ) -> Result<Self> {
        Ok(ServerExactBundle { gc: ServerGcBundle::offline_with(ch, n, spec, rng, ot)? })
    }

    /// Values in the bundle.
    pub fn len(&self) -> usize {
        self.gc.len()
    }

    /// Whether the bundle holds no values (never, once built).
    pub fn is_empty(&self) -> bool {
        self.gc.is_empty()
    }

    /// Online phase, server side: sends the labels of its shares and
    /// returns its shares of the truncated values (consumes the bundle).
    pub fn online<C: Channel>(self, ch: &mut C, shares: &[F]) -> Result<Vec<F>> {
        let spec = self.gc.spec();
        let rho = self.gc.online(ch, shares)?;
        Ok(rho.iter().zip(shares).map(|(r, s)| *r + spec.server_local(*s)).collect())
    }
}

impl ClientExactBundle {
    /// Offline phase, client side: `shares` are its offline-known shares.
    pub fn offline<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        shares: &[F],
        spec: ExactTrunc,
        rng: &mut R,
    ) -> Result<Self> {
        Self::offline_to(ch, shares, spec, rng, None)
    }

    /// [`ClientExactBundle::offline`] that keeps the garbled material in
    /// `spool` when given one.
    pub fn offline_to<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        shares: &[F],
        spec: ExactTrunc,
        rng: &mut R,
        spool: Option<&crate::spool::Spool>,
    ) -> Result<Self> {
        let mut ot = CotReceiverPool::new(crate::garbled::own_ot_kind(spec, shares.len()));
        Self::offline_with(ch, shares, spec, rng, spool, &mut ot)
    }

    /// [`ClientExactBundle::offline_to`] with the correlated OTs of `ot`.
    pub fn offline_with<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        shares: &[F],
        spec: ExactTrunc,
        rng: &mut R,
        spool: Option<&crate::spool::Spool>,
        ot: &mut CotReceiverPool,
    ) -> Result<Self> {
        let gc = ClientGcBundle::offline_with(ch, shares, spec, rng, spool, ot)?;
        let local = Zeroizing::new(shares.iter().map(|c| spec.client_local(*c)).collect());
        Ok(ClientExactBundle { gc, local })
    }

    /// Values in the bundle.
    pub fn len(&self) -> usize {
        self.gc.len()
    }

    /// Whether the bundle holds no values (never, once built).
    pub fn is_empty(&self) -> bool {
        self.gc.is_empty()
    }

    /// Online phase, client side: returns its shares of the truncated
    /// values (consumes the bundle).
    pub fn online<C: Channel>(self, ch: &mut C) -> Result<Vec<F>> {
        let out = self.gc.online(ch)?;
        Ok(out.iter().zip(self.local.iter()).map(|(o, l)| *o + *l).collect())
    }
}

impl Stored for ServerExactBundle {
    fn store_to<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        self.gc.store(e)
    }
    fn load_from<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        Ok(ServerExactBundle { gc: ServerGcBundle::load(d)? })
    }
}

impl Stored for ClientExactBundle {
    fn store_to<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        self.gc.store(e)?;
        e.fields(&self.local)
    }
    fn load_from<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        let gc = ClientGcBundle::load(d)?;
        let local = Zeroizing::new(d.fields(gc.len(), "stored truncation parts")?);
        Ok(ClientExactBundle { gc, local })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::MemChannel;
    use rand::{Rng, SeedableRng};

    /// The plaintext circuit plus both local parts, on shares (c, s).
    fn plain(spec: ExactTrunc, c: F, s: F) -> F {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        spec.client_input(c, &mut a);
        spec.server_input(s, &mut b);
        let gc = spec.gc();
        gc.combine(&gc.circuit().eval_plain(&a, &b)) + spec.client_local(c) + spec.server_local(s)
    }

    fn splits(v: F) -> Vec<(F, F)> {
        [0, 1, 2, 4095, 4096, HALF - 1, HALF, HALF + 1, P - 1, P - 2, 1 << 38, 98765432101]
            .iter()
            .map(|&c| {
                let c = F::from_u64(c % P);
                (c, v - c)
            })
            .collect()
    }

    #[test]
    fn bounded_is_round_to_nearest_for_every_split_in_range() {
        let lim = 1i64 << 38;
        for f in [1, 2, 8, 12, 20, 24, MAX_SHIFT] {
            let spec = ExactTrunc { shift: f, wide: false };
            let h = 1i64 << (f - 1);
            for v in
                [0, 1, -1, h, h - 1, -h, -h - 1, 2 * h, 3 * h, -3 * h, lim, -lim, lim - 1, 777777]
            {
                let v = F::from_i64(v);
                for (c, s) in splits(v) {
                    assert_eq!(plain(spec, c, s), trunc_reference(v, f), "f {f} v {v:?} c {c:?}");
                }
            }
        }
        assert_eq!(bounded_circuit(20).circuit().and_gates(), 22);
        assert_eq!(ExactTrunc { shift: 20, wide: false }.server_bits(), 21);
    }

    #[test]
    fn wide_is_a_function_of_the_value_for_every_input() {
        for f in [1, 8, 12, 20, 30] {
            let spec = ExactTrunc { shift: f, wide: true };
            let lim = 1i64 << 38;
            for v in [0, 1, -1, 1 << (f - 1), lim, -lim, -(1 << 39)] {
                let v = F::from_i64(v);
                assert_eq!(spec.reference(v), trunc_reference(v, f), "in range: f {f} v {v:?}");
            }
            for v in [0u64, 1, HALF - 1, HALF, HALF + 1, P - 1, 1 << 40, 3 << 38] {
                let v = F::from_u64(v);
                for (c, s) in splits(v) {
                    assert_eq!(plain(spec, c, s), spec.reference(v), "f {f} v {v:?} c {c:?}");
                }
            }
        }
        assert_eq!(ExactTrunc { shift: 12, wide: true }.server_bits(), 41);
    }

    fn run(spec: ExactTrunc, vals: &[F], seed: u64) -> Vec<F> {
        let mut rng = crate::block::SecretRng::seed_from_u64(seed);
        let c: Vec<F> = vals.iter().map(|_| F::random(&mut rng)).collect();
        let s: Vec<F> = vals.iter().zip(&c).map(|(v, c)| *v - *c).collect();
        let n = vals.len();
        let (mut sc, mut cc) = MemChannel::pair();
        let server = std::thread::spawn(move || {
            let mut rng = crate::block::SecretRng::seed_from_u64(seed + 1);
            let b = ServerExactBundle::offline(&mut sc, n, spec, &mut rng).unwrap();
            // Through storage, as the engine's bundle store does.
            let mut e = Encoder::new(Vec::new());
            b.store_to(&mut e).unwrap();
            let bytes = e.into_inner();
            let b = ServerExactBundle::load_from(&mut Decoder::new(&bytes[..])).unwrap();
            b.online(&mut sc, &s).unwrap()
        });
        let mut crng = crate::block::SecretRng::seed_from_u64(seed + 2);
        let b = ClientExactBundle::offline(&mut cc, &c, spec, &mut crng).unwrap();
        let mut e = Encoder::new(Vec::new());
        b.store_to(&mut e).unwrap();
        let bytes = e.into_inner();
        let b = ClientExactBundle::load_from(&mut Decoder::new(&bytes[..])).unwrap();
        let out = b.online(&mut cc).unwrap();
        let rho = server.join().unwrap();
        out.iter().zip(&rho).map(|(a, b)| *a + *b).collect()
    }

    #[test]
    fn garbled_truncations_equal_the_reference_and_repeat() {
        let mut rng = crate::block::SecretRng::seed_from_u64(5);
        let vals: Vec<F> =
            (0..500).map(|_| F::from_i64(rng.gen_range(-(1i64 << 30)..(1i64 << 30)))).collect();
        for spec in [ExactTrunc { shift: 20, wide: false }, ExactTrunc { shift: 12, wide: true }] {
            let want: Vec<F> = vals.iter().map(|v| spec.reference(*v)).collect();
            // Fresh shares every run: the same values, the same results.
            assert_eq!(run(spec, &vals, 10), want, "{spec:?}");
            assert_eq!(run(spec, &vals, 20), want, "{spec:?}");
        }
    }

    #[test]
    fn parameters_are_checked() {
        for spec in [
            ExactTrunc { shift: 0, wide: false },
            ExactTrunc { shift: 37, wide: false },
            ExactTrunc { shift: 31, wide: true },
        ] {
            assert!(spec.check().is_err(), "{spec:?}");
        }
        assert_eq!(ExactTrunc::from_codes([12, 2]), None);
        let s = ExactTrunc { shift: 12, wide: true };
        assert_eq!(ExactTrunc::from_codes(s.codes()), Some(s));
    }
}
