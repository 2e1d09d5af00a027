//! The ReLU circuit and the two-party ReLU-layer protocol.
//!
//! # The circuit (131 AND gates; DELPHI's ReLU6 circuit had 288)
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
//! * ReLU(y) ≡ pos·(s' − K) (mod p), because s ≡ y: the circuit outputs the
//!   42 bits pos ∧ s'_j (42 ANDs) and pos, never reducing s mod p.
//!
//! With a truncation `shift` f > 0 the outputs give ReLU(y) >> f exactly
//! (132 ANDs for f = 8), so no probabilistic truncation is needed after a
//! linear layer that feeds a ReLU.
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
//! random shares). The top bit of S is the sign; the outputs are
//! pos ∧ S_j (so the multiplication by the sign happens in the circuit:
//! n − 1 − max(0, shift − lo) more ANDs, no extra round online).
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
//! The outputs are not decoded. Each output label is turned into an additive
//! share with one field element per wire (see
//! [`Garbler::arith_outputs`](crate::gc::Garbler::arith_outputs)): the client
//! obtains ReLU(y) − ρ mod p for a fresh pseudorandom ρ that only the server
//! knows. This replaces a mod-p subtraction of a garbler-input mask (≈123 ANDs
//! plus 41 offline input labels) by 43 field elements, and the client never
//! sees a plaintext bit of the computation.
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

use std::fmt;
use std::sync::OnceLock;

use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::block::{AesPrg, Block};
use crate::channel::Channel;
use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::field::{F, HALF};
use crate::gc::{Circuit, Evaluator, Fancy, Garbler, BATCH};
use crate::ot::{CotReceiver, CotSender};

/// Bits of the client's (evaluator's) input per ReLU.
pub const CLIENT_BITS: usize = 41;
/// Bits of the server's (garbler's) input per ReLU.
pub const SERVER_BITS: usize = 41;
/// The offset K = 2^37 − 1 the client adds to its share, so that the mod-p
/// wrap of a + b becomes bit 41 of a + K + b.
pub const CLIENT_OFFSET: u64 = (1 << 37) - 1;
/// The largest number of ReLUs in one bundle (bounds what a peer can ask for).
pub const MAX_RELUS: usize = 1 << 24;

/// The largest truncation the circuit applies after ReLU.
pub const MAX_SHIFT: u32 = 30;

/// The highest window a reduced ReLU may use: p ≡ 1 (mod 2^37).
pub const MAX_HI: u32 = 37;

/// The window of a reduced ReLU: the circuit sees bits `lo..hi` of the
/// input (see the module documentation for what it computes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReluBits {
    /// Low bits each party drops locally.
    pub lo: u32,
    /// Inputs are read modulo 2^hi (signed: |v| < 2^(hi−1) is inside).
    pub hi: u32,
}

impl ReluBits {
    /// Bits of each party's input to the circuit (hi − lo).
    pub fn width(self) -> u32 {
        self.hi.saturating_sub(self.lo)
    }

    /// Checks the window for a ReLU that truncates by `shift`:
    /// 1 ≤ lo, lo + 2 ≤ hi ≤ [`MAX_HI`], hi ≥ shift + 2 (so some output bit
    /// remains).
    pub fn check(self, shift: u32) -> Result<()> {
        let ReluBits { lo, hi } = self;
        if lo < 1 || hi > MAX_HI || lo.saturating_add(2) > hi || hi < shift.saturating_add(2) {
            return Err(Error::InvalidArgument(format!(
                "ReLU bits {lo}..{hi} with truncation {shift}: need 1 ≤ lo, lo + 2 ≤ hi ≤ {MAX_HI} \
                 and hi ≥ truncation + 2"
            )));
        }
        Ok(())
    }

    /// The largest |secure − reference| in output units for inputs with
    /// |v| < [`ReluBits::exact_sign_limit`]: max(1, 2^(lo − shift)).
    pub fn error_bound(self, shift: u32) -> u64 {
        1u64 << self.lo.saturating_sub(shift)
    }

    /// The magnitude below which the error bound holds: 2^(hi−1) − 2^lo.
    pub fn exact_sign_limit(self) -> i64 {
        (1i64 << (self.hi - 1)) - (1i64 << self.lo)
    }

    /// The bits' code in agreements and stored bundles (0 = full width).
    fn code(spec: Option<ReluBits>) -> u64 {
        spec.map_or(0, |b| (1 << 16) | ((b.lo as u64) << 8) | b.hi as u64)
    }

    fn from_code(code: u64) -> Option<Option<ReluBits>> {
        match code {
            0 => Some(None),
            c if c >> 16 == 1 && (c >> 8) & 0xff <= 64 && c & 0xff <= 64 => Some(Some(ReluBits {
                lo: ((c >> 8) & 0xff) as u32,
                hi: (c & 0xff) as u32,
            })),
            _ => None,
        }
    }
}

impl std::fmt::Display for ReluBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.lo, self.hi)
    }
}

/// Which ReLU circuit: the truncation after it and, for a reduced ReLU, its
/// window (`None`: the exact 41-bit circuit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReluSpec {
    /// Bits dropped from the output (ReLU(v) >> shift).
    pub shift: u32,
    /// The window of a reduced ReLU, or `None` for the full-width one.
    pub bits: Option<ReluBits>,
}

impl From<u32> for ReluSpec {
    fn from(shift: u32) -> Self {
        ReluSpec { shift, bits: None }
    }
}

impl ReluSpec {
    /// A full-width ReLU truncating by `shift`.
    pub fn full(shift: u32) -> Self {
        shift.into()
    }

    /// A reduced ReLU truncating by `shift` with window `bits`.
    pub fn reduced(shift: u32, bits: ReluBits) -> Self {
        ReluSpec {
            shift,
            bits: Some(bits),
        }
    }

    /// Checks the truncation and the window.
    pub fn check(self) -> Result<()> {
        check_shift(self.shift)?;
        match self.bits {
            Some(b) => b.check(self.shift),
            None => Ok(()),
        }
    }

    /// Circuit input bits per party.
    pub fn input_bits(self) -> usize {
        self.bits.map_or(CLIENT_BITS, |b| b.width() as usize)
    }

    /// The plaintext result this ReLU is specified to compute.
    pub fn reference(self, y: F) -> F {
        match self.bits {
            None => relu_trunc_reference(y, self.shift),
            Some(b) => relu_reduced_reference(y, self.shift, b),
        }
    }

    /// What the two-party protocol outputs for shares (a, b) of its input:
    /// the reference for the full circuit; for a reduced one, g(S) with S
    /// the sum of the shares' windows (module documentation). With a
    /// uniformly random `a` this is the protocol's result in distribution,
    /// which is how accuracy is measured honestly without running it.
    pub fn protocol_output(self, a: F, b: F) -> F {
        match self.bits {
            None => self.reference(a + b),
            Some(bits) => {
                let s =
                    (client_window(a, bits) + server_window(b, bits)) & ((1 << bits.width()) - 1);
                reduced_output(s, self.shift, bits)
            }
        }
    }

    /// Largest |secure − reference| (output units) inside the window: 0 for
    /// the full-width circuit.
    pub fn error_bound(self) -> u64 {
        self.bits.map_or(0, |b| b.error_bound(self.shift))
    }

    /// Writes the client's circuit input bits for its share `a`.
    pub fn client_input(self, a: F, out: &mut Vec<bool>) {
        match self.bits {
            None => out.extend(client_bits(a)),
            Some(b) => {
                let v = client_window(a, b);
                out.extend((0..b.width()).map(|j| (v >> j) & 1 == 1));
            }
        }
    }

    /// Writes the server's circuit input bits for its share `b`.
    pub fn server_input(self, s: F, out: &mut Vec<bool>) {
        match self.bits {
            None => out.extend(server_bits(s)),
            Some(b) => {
                let v = server_window(s, b);
                out.extend((0..b.width()).map(|j| (v >> j) & 1 == 1));
            }
        }
    }
}

/// The client's circuit input for a reduced ReLU, before taking n bits:
/// ⌊(a + 2^lo − 1) / 2^lo⌋ on the integer a ∈ [0, p). This is the carry
/// correction one party can make alone: dropping the low bits of both
/// shares loses their carry, which on random shares makes the sum
/// (2^lo − 1 − r)/2^lo units low on average (r: the input's low bits),
/// almost a whole unit; adding 2^lo − 1 first makes the sum an unbiased
/// estimate of (v + 2^(hi−1)) / 2^lo. The bound (S − T ∈ {−1, 0, 1}) is
/// unchanged.
fn client_window(a: F, bits: ReluBits) -> u64 {
    (a.value() + (1u64 << bits.lo) - 1) >> bits.lo
}

/// The server's circuit input for a reduced ReLU, before taking n bits:
/// ⌊(b + 2^(hi−1) mod p) / 2^lo⌋.
fn server_window(b: F, bits: ReluBits) -> u64 {
    (b + F::from_u64(1u64 << (bits.hi - 1))).value() >> bits.lo
}

/// The reduced ReLU circuit with window `bits` and truncation `shift`.
///
/// `a` and `b` hold bits lo..hi of the client's A and the server's B (see
/// the module documentation), least significant first. Outputs pos ∧ S_j
/// for j = max(0, shift − lo) .. n − 1, with weights 2^(j + lo − shift).
pub fn relu_reduced_gadget<Fy: Fancy>(
    f: &mut Fy,
    a: &[Fy::Item],
    b: &[Fy::Item],
    shift: u32,
    bits: ReluBits,
) -> Vec<Fy::Item> {
    let n = bits.width() as usize;
    assert!(
        n >= 2 && a.len() == n && b.len() == n,
        "reduced ReLU inputs"
    );
    // Adder mod 2^n: the carry out of the top bit is not needed.
    let mut sum = Vec::with_capacity(n);
    sum.push(f.xor(&a[0], &b[0]));
    let mut carry = f.and(&a[0], &b[0]);
    for j in 1..n {
        let p = f.xor(&a[j], &b[j]);
        sum.push(f.xor(&p, &carry));
        if j + 1 < n {
            let x = f.xor(&a[j], &carry);
            let y = f.xor(&b[j], &carry);
            let z = f.and(&x, &y);
            carry = f.xor(&carry, &z);
        }
    }
    let pos = sum[n - 1].clone();
    let j0 = shift.saturating_sub(bits.lo) as usize;
    sum[j0..n - 1].iter().map(|s| f.and(&pos, s)).collect()
}

/// The plaintext reference of a reduced ReLU: g(T) with
/// T = ⌊(v + 2^(hi−1)) / 2^lo⌋ mod 2^n for the signed input v (module
/// documentation).
pub fn relu_reduced_reference(y: F, shift: u32, bits: ReluBits) -> F {
    F::from_u64(relu_reduced_int(y.to_signed(), shift, bits))
}

/// [`relu_reduced_reference`] on any integer input (the output is below
/// 2^(hi−1−shift), hence non-negative and small).
pub fn relu_reduced_int(v: i64, shift: u32, bits: ReluBits) -> u64 {
    let n = bits.width();
    let t = (v.saturating_add(1i64 << (bits.hi - 1))) >> bits.lo;
    reduced_output(t.rem_euclid(1i64 << n) as u64, shift, bits).value()
}

/// g(S): the output a reduced ReLU gives for the circuit's sum S.
pub fn reduced_output(s: u64, shift: u32, bits: ReluBits) -> F {
    let n = bits.width();
    if s >> (n - 1) & 1 == 0 {
        return F::ZERO;
    }
    let low = s & ((1u64 << (n - 1)) - 1);
    if bits.lo >= shift {
        F::from_u64(low << (bits.lo - shift))
    } else {
        F::from_u64(low >> (shift - bits.lo))
    }
}

/// Writes the ReLU circuit for any interpreter.
///
/// `a` holds the bits of a + [`CLIENT_OFFSET`] (client), `b` the bits of b
/// (server), least significant first. The outputs, combined with
/// [`ReluCircuit::weights`], give ReLU(y) >> `shift` exactly (floor of the
/// non-negative value): with shift 0, pos ∧ s'_j for j = 0..42 and pos
/// (131 ANDs); with shift f > 0 the low f bits are dropped and one carry is
/// kept (see [`ReluCircuit::weights`]; 132 ANDs for f = 8).
pub fn relu_gadget<Fy: Fancy>(
    f: &mut Fy,
    a: &[Fy::Item],
    b: &[Fy::Item],
    shift: u32,
) -> Vec<Fy::Item> {
    assert_eq!(a.len(), CLIENT_BITS);
    assert_eq!(b.len(), SERVER_BITS);
    assert!(shift <= MAX_SHIFT, "shift {shift} above {MAX_SHIFT}");
    // Ripple-carry adder, one AND per bit; keep the propagate bits.
    let mut sum = Vec::with_capacity(42);
    let mut propagate = Vec::with_capacity(36);
    let p0 = f.xor(&a[0], &b[0]);
    let mut carry = f.and(&a[0], &b[0]);
    sum.push(p0.clone());
    propagate.push(p0);
    for j in 1..CLIENT_BITS {
        let p = f.xor(&a[j], &b[j]);
        sum.push(f.xor(&p, &carry));
        if j < 36 {
            propagate.push(p);
        }
        let x = f.xor(&a[j], &carry);
        let y = f.xor(&b[j], &carry);
        let z = f.and(&x, &y);
        carry = f.xor(&carry, &z);
    }
    sum.push(carry);

    // Sign of y = (a + b) mod p from the top six bits and the propagates.
    let low_all_ones = f.and_all(&propagate);
    let (s36_39, s40, s41) = (&sum[36..40], &sum[40], &sum[41]);
    let any = f.or_all(s36_39);
    let all = f.and_all(s36_39);
    let s40_any = f.and(s40, &any);
    let ge17 = f.or(s41, &s40_any); // s' ≥ 17·2^36
    let not41 = f.not(s41);
    let not_any = f.not(&any);
    let t = f.and(&not41, s40);
    let eq16 = f.and(&t, &not_any); // s' >> 36 == 16
    let edge = f.and(&eq16, &low_all_ones);
    let ge_t1 = f.xor(&ge17, &edge); // s' ≥ 17·2^36 − 1 (exclusive cases)
    let hi = f.or(s40, &all);
    let ge_t2 = f.and(s41, &hi); // s' ≥ 2^41 + 15·2^36
    let x = f.xor(&ge_t1, s41);
    let neg = f.xor(&x, &ge_t2);
    let pos = f.not(&neg);

    if shift == 0 {
        // ReLU(y) ≡ pos·(s' − K): weights 2^j and −K.
        let mut out: Vec<Fy::Item> = sum.iter().map(|s| f.and(&pos, s)).collect();
        out.push(pos);
        return out;
    }
    // With W = s'_41: if W, y = s' − 2^41 (as p + K = 2^41) and y >> f is
    // bits f..40 of s'; otherwise y = (s' + 1) − 2^37 and
    // y >> f = (s' >> f) + [low f bits of s' all ones] − 2^(37−f). Hence
    // ReLU(y) >> f = pos·(Σ_{j=f}^{40} 2^(j−f) s'_j + (¬W ∧ c) − 2^(37−f) + 2^(37−f)·W).
    let sh = shift as usize;
    let mut out: Vec<Fy::Item> = sum[sh..].iter().map(|s| f.and(&pos, s)).collect();
    let carry = f.and_all(&sum[..sh]);
    let not_w = f.not(s41);
    let c = f.and(&not_w, &carry);
    out.push(f.and(&pos, &c));
    out.push(pos);
    out
}

/// The plaintext reference: ReLU on the field's signed reading.
pub fn relu_reference(y: F) -> F {
    relu_trunc_reference(y, 0)
}

/// The plaintext reference with truncation: ReLU(y) >> shift.
pub fn relu_trunc_reference(y: F, shift: u32) -> F {
    if y.value() >= HALF {
        F::ZERO
    } else {
        F::from_u64(y.value() >> shift)
    }
}

/// The client's circuit input bits for its share `a`.
pub fn client_bits(a: F) -> [bool; CLIENT_BITS] {
    let v = a.value() + CLIENT_OFFSET;
    std::array::from_fn(|j| (v >> j) & 1 == 1)
}

/// The server's circuit input bits for its share `b`.
pub fn server_bits(b: F) -> [bool; SERVER_BITS] {
    std::array::from_fn(|j| b.bit(j as u32))
}

/// The recorded ReLU circuit and the weights of its outputs.
#[derive(Debug)]
pub struct ReluCircuit {
    circuit: Circuit,
    weights: Vec<F>,
    shift: u32,
}

impl ReluCircuit {
    /// The recorded circuit.
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    /// The output weights. Shift 0: 2^j for the 42 masked sum bits, −K for
    /// `pos`. Shift f: 2^(j−f) for bits j = f..40, 2^(37−f) for bit 41,
    /// 1 for the carry term, −2^(37−f) for `pos`.
    pub fn weights(&self) -> &[F] {
        &self.weights
    }

    /// The truncation this circuit applies after ReLU.
    pub fn shift(&self) -> u32 {
        self.shift
    }

    /// Combines plaintext output bits into ReLU(y).
    pub fn combine(&self, bits: &[bool]) -> F {
        bits.iter()
            .zip(&self.weights)
            .map(|(&b, &w)| if b { w } else { F::ZERO })
            .sum()
    }
}

/// The circuit of `spec`, recorded once per spec.
///
/// # Panics
/// If the spec fails [`ReluSpec::check`].
pub fn relu_circuit_for(spec: ReluSpec) -> &'static ReluCircuit {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let bits = match spec.bits {
        None => return relu_circuit(spec.shift),
        Some(b) => b,
    };
    assert!(spec.check().is_ok(), "invalid ReLU spec {spec:?}");
    static C: OnceLock<Mutex<HashMap<ReluSpec, &'static ReluCircuit>>> = OnceLock::new();
    let map = C.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = match map.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(spec).or_insert_with(|| {
        let n = bits.width() as usize;
        let circuit = Circuit::record(n, n, |f, a, b| {
            relu_reduced_gadget(f, a, b, spec.shift, bits)
        });
        let j0 = spec.shift.saturating_sub(bits.lo);
        let weights = (j0..n as u32 - 1)
            .map(|j| F::from_u64(1u64 << (j + bits.lo - spec.shift)))
            .collect();
        Box::leak(Box::new(ReluCircuit {
            circuit,
            weights,
            shift: spec.shift,
        }))
    })
}

/// The ReLU circuit that truncates by `shift` bits, recorded once per shift.
///
/// # Panics
/// If `shift` exceeds [`MAX_SHIFT`].
pub fn relu_circuit(shift: u32) -> &'static ReluCircuit {
    static C: [OnceLock<ReluCircuit>; MAX_SHIFT as usize + 1] =
        [const { OnceLock::new() }; MAX_SHIFT as usize + 1];
    assert!(shift <= MAX_SHIFT, "shift {shift} above {MAX_SHIFT}");
    C[shift as usize].get_or_init(|| {
        let circuit = Circuit::record(CLIENT_BITS, SERVER_BITS, |f, a, b| {
            relu_gadget(f, a, b, shift)
        });
        let weights: Vec<F> = if shift == 0 {
            let mut w: Vec<F> = (0..42).map(|j| F::from_u64(1 << j)).collect();
            w.push(-F::from_u64(CLIENT_OFFSET));
            w
        } else {
            let mut w: Vec<F> = (shift..41).map(|j| F::from_u64(1 << (j - shift))).collect();
            w.push(F::from_u64(1 << (37 - shift)));
            w.push(F::ONE);
            w.push(-F::from_u64(1 << (37 - shift)));
            w
        };
        ReluCircuit {
            circuit,
            weights,
            shift,
        }
    })
}

/// Server's half of an offline ReLU bundle.
pub struct ServerReluBundle {
    n: usize,
    spec: ReluSpec,
    inner: ServerSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct ServerSecrets {
    id: [u8; 16],
    delta: Block,
    label_seed: Block,
    rho: Vec<F>,
}

/// Client's half of an offline ReLU bundle.
pub struct ClientReluBundle {
    n: usize,
    spec: ReluSpec,
    inner: ClientSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct ClientSecrets {
    id: [u8; 16],
    hash_key: Block,
    labels: Vec<Block>,
    tables: Vec<Block>,
    cts: Vec<F>,
}

impl fmt::Debug for ServerReluBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerReluBundle")
            .field("relus", &self.n)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientReluBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientReluBundle")
            .field("relus", &self.n)
            .finish_non_exhaustive()
    }
}

fn check_shift(shift: u32) -> Result<()> {
    if shift > MAX_SHIFT {
        return Err(Error::InvalidArgument(format!(
            "ReLU truncation of {shift} bits (at most {MAX_SHIFT})"
        )));
    }
    Ok(())
}

fn check_count(n: usize) -> Result<()> {
    if n == 0 || n > MAX_RELUS {
        return Err(Error::InvalidArgument(format!(
            "{n} ReLUs in one bundle (1 to {MAX_RELUS})"
        )));
    }
    Ok(())
}

/// Offline phase, server side: garbles `n` ReLUs and sends them.
pub fn server_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    n: usize,
    spec: impl Into<ReluSpec>,
    rng: &mut R,
) -> Result<ServerReluBundle> {
    let spec = spec.into();
    check_count(n)?;
    spec.check()?;
    agree_spec(ch, n, spec)?;
    let bits_in = spec.input_bits();
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let hash_key = Block::random(rng);
    ch.send_bytes(&id)?;
    ch.send_block(hash_key)?;
    ch.flush()?;
    let mut cot = CotSender::setup(ch, rng)?;
    let ev_zero = cot.send(ch, n * bits_in)?;
    let delta = cot.delta();

    let rc = relu_circuit_for(spec);
    let no = rc.circuit.outputs();
    let label_seed = Block::random(rng);
    let mut prg = AesPrg::new(label_seed);
    let mut garbler = Garbler::new(&rc.circuit, hash_key, delta);
    let mut ga_zero = vec![Block::ZERO; BATCH * bits_in];
    let mut tables = Vec::with_capacity(2 * rc.circuit.and_gates() * BATCH);
    let mut out_zero = vec![Block::ZERO; BATCH * no];
    let mut cts = vec![F::ZERO; BATCH * no];
    let mut rho = Vec::with_capacity(n);
    for start in (0..n).step_by(BATCH) {
        let k = BATCH.min(n - start);
        prg.fill_blocks(&mut ga_zero[..k * bits_in]);
        tables.clear();
        garbler.garble_batch(
            start as u64,
            &ev_zero[start * bits_in..(start + k) * bits_in],
            &ga_zero[..k * bits_in],
            &mut tables,
            &mut out_zero[..k * no],
        );
        ch.send_blocks(&tables)?;
        let before = rho.len();
        garbler.arith_outputs_batch(
            start as u64,
            &out_zero[..k * no],
            &rc.weights,
            &mut cts[..k * no],
            &mut rho,
        );
        for r in &mut rho[before..] {
            *r = -*r;
        }
        ch.send_fields(&cts[..k * no])?;
    }
    ch.flush()?;
    ga_zero.zeroize();
    out_zero.zeroize();
    tables.zeroize();
    let mut ev_zero = ev_zero;
    ev_zero.zeroize();
    Ok(ServerReluBundle {
        n,
        spec,
        inner: ServerSecrets {
            id,
            delta,
            label_seed,
            rho,
        },
    })
}

/// Both parties state the bundle's size and circuit.
fn agree_spec<C: Channel>(ch: &mut C, n: usize, spec: ReluSpec) -> Result<()> {
    ch.agree_u64("ReLU count", n as u64)?;
    ch.agree_u64("ReLU truncation", spec.shift as u64)?;
    ch.agree_u64("ReLU bits", ReluBits::code(spec.bits))
}

/// Offline phase, client side: obtains the garbled ReLUs for its shares
/// (which it knows before the input exists).
pub fn client_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    spec: impl Into<ReluSpec>,
    rng: &mut R,
) -> Result<ClientReluBundle> {
    let spec = spec.into();
    let n = shares.len();
    check_count(n)?;
    spec.check()?;
    agree_spec(ch, n, spec)?;
    let mut id = [0u8; 16];
    ch.recv_bytes(&mut id)?;
    let hash_key = ch.recv_block()?;
    let mut cot = CotReceiver::setup(ch, rng)?;
    let mut choices: Vec<bool> = Vec::with_capacity(n * spec.input_bits());
    for &a in shares {
        spec.client_input(a, &mut choices);
    }
    let labels = cot.receive(ch, &choices)?;
    choices.zeroize();

    let rc = relu_circuit_for(spec);
    let no = rc.circuit.outputs();
    let per = 2 * rc.circuit.and_gates();
    let mut tables = vec![Block::ZERO; n * per];
    let mut cts = vec![F::ZERO; n * no];
    for start in (0..n).step_by(BATCH) {
        let k = BATCH.min(n - start);
        ch.recv_blocks(&mut tables[start * per..(start + k) * per])?;
        ch.recv_fields(&mut cts[start * no..(start + k) * no])?;
    }
    Ok(ClientReluBundle {
        n,
        spec,
        inner: ClientSecrets {
            id,
            hash_key,
            labels,
            tables,
            cts,
        },
    })
}

impl ServerReluBundle {
    /// Number of ReLUs in the bundle.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the bundle holds no ReLUs (never true for a built bundle).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Online phase, server side: sends the labels of its shares `b` and
    /// returns its output shares ρ. Takes the bundle by value, so a second
    /// use does not compile:
    ///
    /// ```compile_fail
    /// # fn twice(b: delphi_crypto::relu::ServerReluBundle, ch: &mut delphi_crypto::channel::MemChannel) {
    /// let _ = b.online(ch, &[]);
    /// let _ = b.online(ch, &[]); // error: use of moved value
    /// # }
    /// ```
    pub fn online<C: Channel>(self, ch: &mut C, shares: &[F]) -> Result<Vec<F>> {
        let mut s = self.inner;
        if shares.len() != self.n {
            return Err(Error::InvalidArgument(format!(
                "{} server shares for a bundle of {} ReLUs",
                shares.len(),
                self.n
            )));
        }
        ch.send_bytes(&s.id)?;
        let per = self.spec.input_bits();
        let mut prg = AesPrg::new(s.label_seed);
        let mut buf = vec![Block::ZERO; BATCH * per];
        let mut bits = Vec::with_capacity(BATCH * per);
        for start in (0..self.n).step_by(BATCH) {
            let k = BATCH.min(self.n - start);
            let lab = &mut buf[..k * per];
            prg.fill_blocks(lab);
            bits.clear();
            for b in &shares[start..start + k] {
                self.spec.server_input(*b, &mut bits);
            }
            for (l, &bit) in lab.iter_mut().zip(&bits) {
                *l ^= s.delta.and_bit(bit);
            }
            ch.send_blocks(lab)?;
        }
        ch.flush()?;
        buf.zeroize();
        bits.zeroize();
        Ok(std::mem::take(&mut s.rho))
    }
}

impl ClientReluBundle {
    /// Number of ReLUs in the bundle.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the bundle holds no ReLUs (never true for a built bundle).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Online phase, client side: receives the server's labels, evaluates,
    /// and returns ReLU(y_i) − ρ_i. Takes the bundle by value (a second use
    /// does not compile).
    pub fn online<C: Channel>(self, ch: &mut C) -> Result<Vec<F>> {
        let s = self.inner;
        let mut id = [0u8; 16];
        ch.recv_bytes(&mut id)?;
        if !bool::from(id.ct_eq(&s.id)) {
            return Err(Error::Malformed {
                what: "online message belongs to a different offline bundle",
            });
        }
        use rayon::prelude::*;
        let rc = relu_circuit_for(self.spec);
        let no = rc.circuit.outputs();
        let per = 2 * rc.circuit.and_gates();
        let bits_in = self.spec.input_bits();
        // Labels arrive a chunk at a time; the chunk's batches are evaluated
        // on every core (each worker its own engine), in order of the result.
        let chunk = EVAL_CHUNK_BATCHES * BATCH;
        let mut ga = zeroize::Zeroizing::new(vec![Block::ZERO; chunk * bits_in]);
        let mut result = vec![F::ZERO; self.n];
        for (c, res) in result.chunks_mut(chunk).enumerate() {
            let first = c * chunk;
            let ck = res.len();
            ch.recv_blocks(&mut ga[..ck * bits_in])?;
            res.par_chunks_mut(BATCH)
                .zip(ga[..ck * bits_in].par_chunks(BATCH * bits_in))
                .enumerate()
                .for_each_init(
                    || {
                        (
                            Evaluator::new(&rc.circuit, s.hash_key),
                            zeroize::Zeroizing::new(vec![Block::ZERO; BATCH * no]),
                            Vec::with_capacity(BATCH),
                        )
                    },
                    |(ev, out, vals), (b, (res, ga))| {
                        let start = first + b * BATCH;
                        let k = res.len();
                        ev.eval_batch(
                            start as u64,
                            &s.labels[start * bits_in..(start + k) * bits_in],
                            ga,
                            &s.tables[start * per..(start + k) * per],
                            &mut out[..k * no],
                        );
                        vals.clear();
                        ev.arith_outputs_batch(
                            start as u64,
                            no,
                            &out[..k * no],
                            &s.cts[start * no..(start + k) * no],
                            vals,
                        );
                        res.copy_from_slice(vals);
                    },
                );
        }
        Ok(result)
    }
}

/// Batches of [`BATCH`] ReLUs the client receives before evaluating them
/// in parallel (4,096 ReLUs: enough work per chunk to keep every core busy,
/// small enough that evaluation follows the server's sending closely).
const EVAL_CHUNK_BATCHES: usize = 64;

/// Tags that start each stored bundle (catch a file read as the wrong type).
const SERVER_TAG: u64 = u64::from_le_bytes(*b"dlRELUs2");
const CLIENT_TAG: u64 = u64::from_le_bytes(*b"dlRELUc2");

fn load_spec<R: std::io::Read>(d: &mut Decoder<R>) -> Result<ReluSpec> {
    let shift = d.u64_at_most(MAX_SHIFT as u64, "stored ReLU truncation")? as u32;
    let bits = ReluBits::from_code(d.u64()?).ok_or(Error::Stored {
        what: "stored ReLU bits are not a window",
    })?;
    let spec = ReluSpec { shift, bits };
    spec.check().map_err(|_| Error::Stored {
        what: "stored ReLU bits are not a valid window",
    })?;
    Ok(spec)
}

impl ServerReluBundle {
    /// Writes the bundle (secrets included: the file must be protected like
    /// a key).
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        e.u64(SERVER_TAG)?;
        e.u64(self.n as u64)?;
        e.u64(self.spec.shift as u64)?;
        e.u64(ReluBits::code(self.spec.bits))?;
        e.bytes(&s.id)?;
        e.block(s.delta)?;
        e.block(s.label_seed)?;
        e.fields(&s.rho)
    }

    /// Reads a bundle written by [`ServerReluBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        if d.u64()? != SERVER_TAG {
            return Err(Error::Stored {
                what: "not a stored server ReLU bundle",
            });
        }
        let n = d.u64_at_most(MAX_RELUS as u64, "stored ReLU count")? as usize;
        check_count(n)?;
        let spec = load_spec(d)?;
        let mut id = [0u8; 16];
        d.bytes(&mut id)?;
        let delta = d.block()?;
        let label_seed = d.block()?;
        let rho = d.fields(n, "stored ReLU masks")?;
        Ok(ServerReluBundle {
            n,
            spec,
            inner: ServerSecrets {
                id,
                delta,
                label_seed,
                rho,
            },
        })
    }
}

impl ClientReluBundle {
    /// Writes the bundle (secrets included).
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        e.u64(CLIENT_TAG)?;
        e.u64(self.n as u64)?;
        e.u64(self.spec.shift as u64)?;
        e.u64(ReluBits::code(self.spec.bits))?;
        e.bytes(&s.id)?;
        e.block(s.hash_key)?;
        e.blocks(&s.labels)?;
        e.blocks(&s.tables)?;
        e.fields(&s.cts)
    }

    /// Reads a bundle written by [`ClientReluBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        if d.u64()? != CLIENT_TAG {
            return Err(Error::Stored {
                what: "not a stored client ReLU bundle",
            });
        }
        let n = d.u64_at_most(MAX_RELUS as u64, "stored ReLU count")? as usize;
        check_count(n)?;
        let spec = load_spec(d)?;
        let rc = relu_circuit_for(spec);
        let no = rc.circuit.outputs();
        let per = 2 * rc.circuit.and_gates();
        let mut id = [0u8; 16];
        d.bytes(&mut id)?;
        let hash_key = d.block()?;
        let labels = d.blocks(n * spec.input_bits(), "stored ReLU labels")?;
        let tables = d.blocks(n * per, "stored garbled tables")?;
        let cts = d.fields(n * no, "stored output conversions")?;
        Ok(ClientReluBundle {
            n,
            spec,
            inner: ClientSecrets {
                id,
                hash_key,
                labels,
                tables,
                cts,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::P;
    use crate::gc::{GateCounter, PlainEval};

    /// Shares of y: every split of a few y values into (a, b).
    fn edge_values() -> Vec<u64> {
        let fixed_max = (HALF - 1) >> 8 << 8;
        vec![
            0,
            1,
            2,
            P - 1,
            P - 2,
            HALF - 2,
            HALF - 1,
            HALF,
            HALF + 1,
            HALF + 2,
            fixed_max,
            P - fixed_max,
            CLIENT_OFFSET,
            (1 << 36) - 1,
            1 << 36,
            1 << 40,
            (1 << 41) - P % (1 << 41),
        ]
    }

    fn splits(y: u64) -> Vec<(F, F)> {
        let y = F::from_u64(y);
        let mut v = Vec::new();
        for a in [
            0,
            1,
            2,
            HALF - 1,
            HALF,
            HALF + 1,
            P - 2,
            P - 1,
            1 << 36,
            (1 << 37) + 5,
            12345678901,
        ] {
            let a = F::from_u64(a);
            v.push((a, y - a));
        }
        v
    }

    #[test]
    fn gadget_counts_131_ands() {
        let mut c = GateCounter::default();
        let a = vec![(); CLIENT_BITS];
        let b = vec![(); SERVER_BITS];
        let outs = relu_gadget(&mut c, &a, &b, 0);
        assert_eq!(outs.len(), 43);
        assert_eq!(c.ands, 131);
        assert_eq!(relu_circuit(0).circuit().and_gates(), 131);
        assert_eq!(relu_circuit(8).circuit().and_gates(), 132);
        for shift in 0..=MAX_SHIFT {
            let rc = relu_circuit(shift);
            assert_eq!(rc.weights().len(), rc.circuit().outputs());
        }
    }

    #[test]
    fn plaintext_interpreters_agree_with_relu_on_edges() {
        for shift in [0, 1, 8, 13, MAX_SHIFT] {
            let rc = relu_circuit(shift);
            for y in edge_values() {
                for (a, b) in splits(y) {
                    let ab = client_bits(a);
                    let bb = server_bits(b);
                    let direct = relu_gadget(&mut PlainEval, &ab, &bb, shift);
                    let recorded = rc.circuit().eval_plain(&ab, &bb);
                    assert_eq!(direct, recorded);
                    assert_eq!(
                        rc.combine(&direct),
                        relu_trunc_reference(a + b, shift),
                        "y = {y}, a = {a:?}, shift = {shift}"
                    );
                }
            }
        }
    }

    #[test]
    fn reference_follows_the_sign_convention() {
        assert_eq!(relu_reference(F::from_u64(HALF - 1)), F::from_u64(HALF - 1));
        assert_eq!(relu_reference(F::from_u64(HALF)), F::ZERO);
        assert_eq!(relu_reference(F::from_i64(-1)), F::ZERO);
        assert_eq!(relu_reference(F::from_u64(0)), F::ZERO);
    }

    #[test]
    fn garbled_protocol_matches_plaintext_on_every_edge_split() {
        use crate::channel::MemChannel;
        use rand::SeedableRng;
        let (mut a_shares, mut b_shares, mut ys) = (Vec::new(), Vec::new(), Vec::new());
        for y in edge_values() {
            for (a, b) in splits(y) {
                a_shares.push(a);
                b_shares.push(b);
                ys.push(F::from_u64(y));
            }
        }
        let n = ys.len();
        let (mut sc, mut cc) = MemChannel::pair();
        let server = std::thread::spawn(move || {
            let mut rng = crate::block::SecretRng::seed_from_u64(21);
            let bundle = server_offline(&mut sc, n, 8, &mut rng).unwrap();
            bundle.online(&mut sc, &b_shares).unwrap()
        });
        let mut rng = crate::block::SecretRng::seed_from_u64(22);
        let bundle = client_offline(&mut cc, &a_shares, 8, &mut rng).unwrap();
        let out = bundle.online(&mut cc).unwrap();
        let rho = server.join().unwrap();
        for i in 0..n {
            assert_eq!(
                out[i] + rho[i],
                relu_trunc_reference(ys[i], 8),
                "y = {:?}",
                ys[i]
            );
        }
    }

    /// The circuit's sum S for shares (a, b) of a reduced spec, computed on integers.
    fn plain_sum(a: F, b: F, bits: ReluBits) -> u64 {
        let n = bits.width();
        let aa = a.value() + (1 << bits.lo) - 1;
        let bb = (b + F::from_u64(1 << (bits.hi - 1))).value();
        ((aa >> bits.lo) + (bb >> bits.lo)) & ((1 << n) - 1)
    }

    #[test]
    fn the_carry_correction_centres_the_error() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let bits = ReluBits { lo: 6, hi: 24 };
        let spec = ReluSpec::reduced(6, bits);
        let (mut sum, n) = (0i64, 20_000);
        for _ in 0..n {
            let v = rng.gen_range(0..(1i64 << 20));
            let a = F::random(&mut rng);
            let got = spec.protocol_output(a, F::from_i64(v) - a).to_signed();
            let exact = v as f64 / 64.0;
            sum += ((got as f64 - exact) * 1000.0) as i64;
        }
        // Without the correction the mean error against v/64 is ≈ −1 unit.
        let mean = sum as f64 / 1000.0 / n as f64;
        assert!(mean.abs() < 0.05, "mean error {mean} units");
    }

    #[test]
    fn protocol_output_is_what_the_circuit_computes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        for bits in [ReluBits { lo: 12, hi: 27 }, ReluBits { lo: 3, hi: 9 }] {
            let spec = ReluSpec::reduced(2, bits);
            let rc = relu_circuit_for(spec);
            for _ in 0..2000 {
                let a = F::random(&mut rng);
                let b = F::from_i64(rng.gen_range(-(1i64 << 28)..(1 << 28))) - a;
                let (mut ab, mut bb) = (Vec::new(), Vec::new());
                spec.client_input(a, &mut ab);
                spec.server_input(b, &mut bb);
                let bits_out = rc.circuit().eval_plain(&ab, &bb);
                assert_eq!(spec.protocol_output(a, b), rc.combine(&bits_out));
            }
        }
        let full = ReluSpec::full(12);
        let a = F::from_u64(77);
        assert_eq!(full.protocol_output(a, F::from_i64(5000) - a), F::ONE);
    }

    fn check_reduced(a: F, b: F, shift: u32, bits: ReluBits) {
        let spec = ReluSpec::reduced(shift, bits);
        let rc = relu_circuit_for(spec);
        let (mut ab, mut bb) = (Vec::new(), Vec::new());
        spec.client_input(a, &mut ab);
        spec.server_input(b, &mut bb);
        let out = rc.circuit().eval_plain(&ab, &bb);
        assert_eq!(
            out,
            relu_reduced_gadget(&mut PlainEval, &ab, &bb, shift, bits)
        );
        let got = rc.combine(&out);
        let s = plain_sum(a, b, bits);
        assert_eq!(got, reduced_output(s, shift, bits), "g(S)");
        let v = (a + b).to_signed();
        let n = bits.width();
        let t = ((v + (1i64 << (bits.hi - 1))) >> bits.lo).rem_euclid(1 << n) as u64;
        let d = (s as i64 - t as i64).rem_euclid(1 << n);
        assert!(d <= 1 || d == (1 << n) - 1, "S − T = {d}, v = {v}, {bits}");
        let want = spec.reference(a + b);
        if v.abs() < bits.exact_sign_limit() {
            let err = (got.to_signed() - want.to_signed()).unsigned_abs();
            assert!(
                err <= bits.error_bound(shift),
                "v = {v}: secure {got:?}, reference {want:?}, {bits}, shift {shift}"
            );
            // Inside the window the reference is ReLU, exactly when lo ≤ shift.
            let exact = relu_trunc_reference(a + b, shift);
            if bits.lo <= shift {
                assert_eq!(want, exact, "v = {v}");
            } else {
                assert!(want.to_signed() <= exact.to_signed());
                assert!(exact.to_signed() - want.to_signed() < 1 << (bits.lo - shift));
            }
        }
    }

    #[test]
    fn reduced_gadget_counts() {
        let bits = ReluBits { lo: 12, hi: 27 };
        let rc = relu_circuit_for(ReluSpec::reduced(12, bits));
        assert_eq!(rc.circuit().and_gates(), 28);
        assert_eq!(rc.circuit().evaluator_inputs(), 15);
        assert_eq!(rc.circuit().garbler_inputs(), 15);
        assert_eq!(rc.weights().len(), rc.circuit().outputs());
        // lo below the truncation: the low sum bits only feed carries.
        let rc = relu_circuit_for(ReluSpec::reduced(12, ReluBits { lo: 8, hi: 24 }));
        assert_eq!(rc.circuit().and_gates(), 15 + 11);
    }

    #[test]
    fn reduced_windows_are_checked() {
        for (lo, hi, shift) in [
            (0, 20, 12),
            (12, 13, 0),
            (5, 38, 12),
            (4, 13, 12),
            (9, 9, 0),
            (u32::MAX, 20, 0),
            (4, 20, u32::MAX),
        ] {
            assert!(ReluSpec::reduced(shift, ReluBits { lo, hi })
                .check()
                .is_err());
        }
        assert!(ReluSpec::reduced(12, ReluBits { lo: 1, hi: 14 })
            .check()
            .is_ok());
        for b in [None, Some(ReluBits { lo: 3, hi: 37 })] {
            assert_eq!(ReluBits::from_code(ReluBits::code(b)), Some(b));
        }
        assert_eq!(ReluBits::from_code(7), None);
    }

    #[test]
    fn reduced_edges_and_window_boundaries() {
        for (lo, hi, shift) in [
            (12, 27, 12),
            (8, 24, 12),
            (14, 26, 12),
            (1, 3, 0),
            (2, 37, 8),
        ] {
            let bits = ReluBits { lo, hi };
            let h = 1i64 << (hi - 1);
            let l = 1i64 << lo;
            for v in [
                0,
                1,
                -1,
                l - 1,
                l,
                -l,
                -l - 1,
                h - l - 1,
                -(h - l - 1),
                h - 1,
                -h,
                h,
                5 * l + 3,
            ] {
                for a in [
                    0,
                    1,
                    2,
                    l as u64 - 1,
                    l as u64,
                    HALF - 1,
                    HALF,
                    P - 1,
                    P - 2,
                    12345678901,
                ] {
                    let a = F::from_u64(a % P);
                    check_reduced(a, F::from_i64(v) - a, shift, bits);
                }
            }
        }
    }

    #[test]
    fn garbled_reduced_protocol_matches_the_plaintext_circuit() {
        use crate::channel::MemChannel;
        use rand::{Rng, SeedableRng};
        let bits = ReluBits { lo: 10, hi: 26 };
        let spec = ReluSpec::reduced(12, bits);
        let mut rng = crate::block::SecretRng::seed_from_u64(23);
        let n = 300;
        let ys: Vec<F> = (0..n)
            .map(|_| F::from_i64(rng.gen_range(-(1i64 << 26)..(1 << 26))))
            .collect();
        let a: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
        let b: Vec<F> = ys.iter().zip(&a).map(|(y, a)| *y - *a).collect();
        let (mut sc, mut cc) = MemChannel::pair();
        let bs = b.clone();
        let server = std::thread::spawn(move || {
            let mut rng = crate::block::SecretRng::seed_from_u64(24);
            let bundle = server_offline(&mut sc, n, spec, &mut rng).unwrap();
            bundle.online(&mut sc, &bs).unwrap()
        });
        let mut crng = crate::block::SecretRng::seed_from_u64(25);
        let bundle = client_offline(&mut cc, &a, spec, &mut crng).unwrap();
        let out = bundle.online(&mut cc).unwrap();
        let rho = server.join().unwrap();
        for i in 0..n {
            let want = reduced_output(plain_sum(a[i], b[i], bits), 12, bits);
            assert_eq!(out[i] + rho[i], want, "y = {:?}", ys[i]);
        }
    }

    proptest::proptest! {
        #[test]
        fn plaintext_circuit_is_relu(a in 0..P, b in 0..P, shift in 0..=MAX_SHIFT) {
            let (a, b) = (F::from_u64(a), F::from_u64(b));
            let rc = relu_circuit(shift);
            let bits = rc.circuit().eval_plain(&client_bits(a), &server_bits(b));
            proptest::prop_assert_eq!(rc.combine(&bits), relu_trunc_reference(a + b, shift));
        }

        #[test]
        fn reduced_circuit_stays_within_its_bound(
            a in 0..P,
            lo in 1u32..16,
            width in 2u32..22,
            shift in 0u32..20,
            frac in -1.2f64..1.2,
        ) {
            let hi = (lo + width).min(MAX_HI);
            let shift = shift.min(hi - 2);
            let bits = ReluBits { lo, hi };
            proptest::prop_assume!(bits.check(shift).is_ok());
            let v = (frac * (1i64 << (hi - 1)) as f64) as i64;
            let a = F::from_u64(a);
            check_reduced(a, F::from_i64(v) - a, shift, bits);
        }
    }
}
