//! One garbled circuit per value: the offline/online protocol that ReLUs
//! ([`crate::relu`]) and exact truncations ([`crate::trunc`]) share.
//!
//! A [`GcFunction`] names a circuit, how each party turns its additive
//! share of a value into circuit input bits, and the codes both parties
//! agree on before anything else. The protocol is the one the ReLU module
//! documents: offline, correlated OT gives the client (evaluator) the
//! labels of its input bits and the server garbles and streams the tables
//! and the output conversions; online, the server sends the labels of its
//! own input bits (16 bytes per bit) and the client evaluates. The outputs
//! are never decoded: the client obtains Σ wⱼ·outⱼ − ρ for a fresh ρ only
//! the server knows. Each bundle runs online once (`online` consumes it).

mod protocol;
mod storage;

pub use protocol::{client_bundle_bytes, own_ot_kind, ClientGcBundle, ServerGcBundle};

use crate::error::Result;
use crate::field::F;
use crate::gc::{Circuit, Conversion, Fancy};

/// The most values one bundle holds (bounds what a peer can ask for).
pub const MAX_VALUES: usize = 1 << 24;

/// A recorded circuit and how its outputs combine into a field element
/// (weighted bits and weighted products of two bits, [`Conversion`]).
#[derive(Debug)]
pub struct GcCircuit {
    pub(crate) circuit: Circuit,
    pub(crate) conversion: Conversion,
    pub(crate) shift: u32,
}

impl GcCircuit {
    /// Records `circuit` with one `weight` per output.
    pub(crate) fn new(circuit: Circuit, weights: Vec<F>, shift: u32) -> GcCircuit {
        assert_eq!(circuit.outputs(), weights.len(), "one weight per output");
        GcCircuit { circuit, conversion: Conversion::plain(weights), shift }
    }

    /// Records `circuit` with the outputs' `conversion`.
    pub(crate) fn with_conversion(
        circuit: Circuit,
        conversion: Conversion,
        shift: u32,
    ) -> GcCircuit {
        assert_eq!(circuit.outputs(), conversion.labels(), "a conversion of every output");
        GcCircuit { circuit, conversion, shift }
    }

    /// The recorded circuit.
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    /// How the outputs combine.
    pub fn conversion(&self) -> &Conversion {
        &self.conversion
    }

    /// The truncation this circuit applies.
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// Combines plaintext output bits into the value.
    pub fn combine(&self, bits: &[bool]) -> F {
        self.conversion.value(bits)
    }

    /// Field elements the server sends per value for the output conversion.
    pub fn elements(&self) -> usize {
        self.conversion.elements()
    }

    /// The work per value in AND gates: the circuit's, plus one per
    /// converted product (it hashes as much as an AND gate: four hashes to
    /// garble, two to evaluate). What the cost model's per-AND line counts.
    pub fn and_work(&self) -> usize {
        self.circuit.and_gates() + self.conversion.products().len()
    }
}

/// A function of a shared value computed by one garbled circuit per value.
pub trait GcFunction: Copy + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    /// What the values are called in errors ("ReLUs", "truncated values").
    const WHAT: &'static str;
    /// What each agreement states: the count, then each [`GcFunction::codes`] entry.
    const AGREE: [&'static str; 3];
    /// Tags that start a stored server and client bundle.
    const TAGS: [u64; 2];
    /// Errors for a file that is not a stored server or client bundle.
    const NOT_TAGGED: [&'static str; 2];

    /// Checks the parameters.
    fn check(self) -> Result<()>;
    /// The parameters as two numbers (agreed online, stored in bundles).
    fn codes(self) -> [u64; 2];
    /// The function two [`GcFunction::codes`] name (`None`: not a code).
    fn from_codes(codes: [u64; 2]) -> Option<Self>;
    /// The circuit, recorded once per function.
    fn gc(self) -> &'static GcCircuit;
    /// Appends the client's circuit input bits for its share `a`.
    fn client_input(self, a: F, out: &mut Vec<bool>);
    /// Appends the server's circuit input bits for its share `b`.
    fn server_input(self, b: F, out: &mut Vec<bool>);
}

/// Ripple-carry sum of `a` and `b` plus an optional carry-in, `len` bits
/// of it, least significant first. `b` may be shorter than `a` (its missing
/// bits are 0); `len` is at most `a.len() + 1` (the last is the carry out,
/// absent when it is always 0: no `b` and no carry-in).
/// One AND per carry computed: `len − 1` at most.
pub fn add_gadget<Fy: Fancy>(
    f: &mut Fy,
    a: &[Fy::Item],
    b: &[Fy::Item],
    cin: Option<&Fy::Item>,
    len: usize,
) -> Vec<Fy::Item> {
    assert!(b.len() <= a.len() && len <= a.len() + 1, "adder operands");
    let mut carry: Option<Fy::Item> = cin.cloned();
    let mut sum = Vec::with_capacity(len);
    for j in 0..len {
        if j == a.len() {
            // The carry out; with no b and no carry-in it is 0 (no wire).
            if let Some(c) = carry.take() {
                sum.push(c);
            }
            break;
        }
        let p = match b.get(j) {
            Some(bj) => f.xor(&a[j], bj),
            None => a[j].clone(),
        };
        sum.push(match &carry {
            Some(c) => f.xor(&p, c),
            None => p,
        });
        if j + 1 == len {
            break;
        }
        carry = match (b.get(j), carry.take()) {
            (Some(bj), Some(c)) => {
                let x = f.xor(&a[j], &c);
                let y = f.xor(bj, &c);
                let z = f.and(&x, &y);
                Some(f.xor(&c, &z))
            }
            (Some(bj), None) => Some(f.and(&a[j], bj)),
            (None, Some(c)) => Some(f.and(&a[j], &c)),
            (None, None) => None,
        };
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::{GateCounter, PlainEval};

    fn bits(v: u64, n: usize) -> Vec<bool> {
        (0..n).map(|j| (v >> j) & 1 == 1).collect()
    }

    fn value(b: &[bool]) -> u64 {
        b.iter().enumerate().map(|(j, &x)| (x as u64) << j).sum()
    }

    #[test]
    fn adder_adds_with_and_without_carry_in() {
        for (na, nb) in [(5, 5), (6, 5), (4, 2), (3, 0)] {
            for a in 0..1u64 << na {
                for b in 0..1u64 << nb {
                    for cin in [None, Some(false), Some(true)] {
                        let (ab, bb) = (bits(a, na), bits(b, nb));
                        let c = cin.unwrap_or(false) as u64;
                        for len in [na, na + 1] {
                            if len == na + 1 && nb == 0 && cin.is_none() {
                                continue;
                            }
                            let s = add_gadget(&mut PlainEval, &ab, &bb, cin.as_ref(), len);
                            assert_eq!(value(&s), (a + b + c) % (1 << len), "{a}+{b}+{c}");
                        }
                    }
                }
            }
        }
        let mut g = GateCounter::default();
        let x = vec![(); 8];
        add_gadget(&mut g, &x, &x, Some(&()), 8);
        assert_eq!(g.ands, 7);
    }
}
