//! What a ReLU computes, without any cryptography: the parameters
//! ([`ReluBits`], [`ReluSpec`]), the circuit inputs each party derives from
//! its share, and the plaintext references the protocol is checked
//! against. Crates that only need the semantics import this module alone.

use crate::error::{Error, Result};
use crate::field::{F, HALF};

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
/// input (see the module documentation for what it computes). `lo = 0` is
/// the exact windowed ReLU: ReLU(v) >> shift exactly for |v| < 2^(hi−1);
/// `lo ≥ 1` drops low bits locally, and its rounding depends on the shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReluBits {
    /// Low bits each party drops locally.
    pub lo: u32,
    /// Inputs are read modulo 2^hi (signed: |v| < 2^(hi−1) is inside).
    pub hi: u32,
}

impl ReluBits {
    /// The exact windowed ReLU `0..hi`.
    pub fn exact(hi: u32) -> ReluBits {
        ReluBits { lo: 0, hi }
    }

    /// Whether this is the exact windowed circuit (lo = 0): its output is a
    /// deterministic function of the input for |v| < 2^(hi−1).
    pub fn is_exact(self) -> bool {
        self.lo == 0
    }

    /// Bits of the window (hi − lo); each party enters one more (the
    /// wrap's carry) in the exact circuit.
    pub fn width(self) -> u32 {
        self.hi.saturating_sub(self.lo)
    }

    /// Checks the window for a ReLU that truncates by `shift`:
    /// lo + 2 ≤ hi ≤ [`MAX_HI`], hi ≥ shift + 2 (so some output bit
    /// remains).
    pub fn check(self, shift: u32) -> Result<()> {
        let ReluBits { lo, hi } = self;
        if hi > MAX_HI || lo.saturating_add(2) > hi || hi < shift.saturating_add(2) {
            return Err(Error::InvalidArgument(format!(
                "ReLU bits {lo}..{hi} with truncation {shift}: need lo + 2 ≤ hi ≤ {MAX_HI} \
                 and hi ≥ truncation + 2"
            )));
        }
        Ok(())
    }

    /// The largest |secure − reference| in output units for inputs with
    /// |v| < [`ReluBits::exact_sign_limit`]: 0 for the exact window, else
    /// max(1, 2^(lo − shift)).
    pub fn error_bound(self, shift: u32) -> u64 {
        if self.is_exact() {
            0
        } else {
            1u64 << self.lo.saturating_sub(shift)
        }
    }

    /// The magnitude below which the error bound holds: 2^(hi−1) for the
    /// exact window (its whole range), else 2^(hi−1) − 2^lo.
    pub fn exact_sign_limit(self) -> i64 {
        if self.is_exact() {
            1i64 << (self.hi - 1)
        } else {
            (1i64 << (self.hi - 1)) - (1i64 << self.lo)
        }
    }

    /// The bits' code in agreements and stored bundles (0 = full width).
    pub(super) fn code(spec: Option<ReluBits>) -> u64 {
        spec.map_or(0, |b| (1 << 16) | ((b.lo as u64) << 8) | b.hi as u64)
    }

    /// The bits a [`ReluBits::code`] names (`None`: not a code).
    pub(super) fn from_code(code: u64) -> Option<Option<ReluBits>> {
        match code {
            0 => Some(None),
            c if c >> 16 == 1 && (c >> 8) & 0xff <= 64 && c & 0xff <= 64 => {
                Some(Some(ReluBits { lo: ((c >> 8) & 0xff) as u32, hi: (c & 0xff) as u32 }))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for ReluBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.lo, self.hi)
    }
}

impl std::str::FromStr for ReluBits {
    type Err = Error;
    /// `lo..hi` as [`Display`](std::fmt::Display) writes it; the window is
    /// checked for shape (lo + 2 ≤ hi ≤ [`MAX_HI`]), not against a
    /// truncation ([`ReluBits::check`] does that).
    fn from_str(s: &str) -> Result<ReluBits> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!("ReLU window {s:?}: {why} (write lo..hi, e.g. 12..27)"))
        };
        let (lo, hi) = s.trim().split_once("..").ok_or_else(|| bad("no `..`"))?;
        let num = |x: &str| x.trim().parse::<u32>().map_err(|_| bad("not a number"));
        let bits = ReluBits { lo: num(lo)?, hi: num(hi)? };
        if bits.lo.saturating_add(2) > bits.hi || bits.hi > MAX_HI {
            return Err(bad(&format!("needs lo + 2 <= hi <= {MAX_HI}")));
        }
        Ok(bits)
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
        ReluSpec { shift, bits: Some(bits) }
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
        self.bits.map_or(CLIENT_BITS, |b| (b.width() + b.is_exact() as u32) as usize)
    }

    /// Whether the protocol's output is a deterministic function of the
    /// input for every input: the full-width circuit. (The exact window is
    /// deterministic inside its window only; the leaky window nowhere.)
    pub fn is_deterministic(self) -> bool {
        self.bits.is_none()
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
            Some(bits) if bits.is_exact() => {
                let (ca, z) = exact_client_window(a, bits.hi);
                let (sb, y) = exact_server_window(b, bits.hi);
                let s = (ca + sb + (z && y) as u64) & ((1 << bits.hi) - 1);
                reduced_output(s, self.shift, bits)
            }
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
            Some(b) if b.is_exact() => {
                let (w, z) = exact_client_window(a, b.hi);
                push_low_bits(w, b.hi, out);
                out.push(z);
            }
            Some(b) => push_low_bits(client_window(a, b), b.width(), out),
        }
    }

    /// Writes the server's circuit input bits for its share `b`.
    pub fn server_input(self, s: F, out: &mut Vec<bool>) {
        match self.bits {
            None => out.extend(server_bits(s)),
            Some(b) if b.is_exact() => {
                let (w, y) = exact_server_window(s, b.hi);
                push_low_bits(w, b.hi, out);
                out.push(y);
            }
            Some(b) => push_low_bits(server_window(s, b), b.width(), out),
        }
    }
}

/// Appends the low `width` bits of `v`, least significant first.
fn push_low_bits(v: u64, width: u32, out: &mut Vec<bool>) {
    out.extend((0..width).map(|j| (v >> j) & 1 == 1));
}

/// The client's input to the exact window: (a − 1) mod 2^hi and
/// z = [a < 2^hi], for the integer a ∈ [0, p).
fn exact_client_window(a: F, hi: u32) -> (u64, bool) {
    let a = a.value();
    (a.wrapping_sub(1) & ((1u64 << hi) - 1), a < 1u64 << hi)
}

/// The server's input to the exact window: B mod 2^hi and y = [B < 2^hi]
/// for B = b + 2^(hi−1) mod p.
fn exact_server_window(b: F, hi: u32) -> (u64, bool) {
    let big = (b + F::from_u64(1u64 << (hi - 1))).value();
    (big & ((1u64 << hi) - 1), big < 1u64 << hi)
}

/// The client's circuit input for a reduced ReLU, before taking n bits:
/// ⌊(a + 2^lo − 1) / 2^lo⌋ on the integer a ∈ [0, p). This is the carry
/// correction one party can make alone: dropping the low bits of both
/// shares loses their carry, which on random shares makes the sum
/// (2^lo − 1 − r)/2^lo units low on average (r: the input's low bits),
/// almost a whole unit; adding 2^lo − 1 first makes the sum an unbiased
/// estimate of (v + 2^(hi−1)) / 2^lo. The bound (S − T ∈ {−1, 0, 1}) is
/// unchanged.
pub(super) fn client_window(a: F, bits: ReluBits) -> u64 {
    (a.value() + (1u64 << bits.lo) - 1) >> bits.lo
}

/// The server's circuit input for a reduced ReLU, before taking n bits:
/// ⌊(b + 2^(hi−1) mod p) / 2^lo⌋.
pub(super) fn server_window(b: F, bits: ReluBits) -> u64 {
    (b + F::from_u64(1u64 << (bits.hi - 1))).value() >> bits.lo
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

pub(super) fn check_shift(shift: u32) -> Result<()> {
    if shift > MAX_SHIFT {
        return Err(Error::InvalidArgument(format!(
            "ReLU truncation of {shift} bits (at most {MAX_SHIFT})"
        )));
    }
    Ok(())
}
