//! The ReLU circuits, written once for any [`Fancy`] interpreter (the
//! garbler, the evaluator, the plaintext interpreter, the gate counter),
//! and recorded once per [`ReluSpec`].

use std::sync::OnceLock;

use crate::field::F;
use crate::garbled::{add_gadget, GcCircuit};
use crate::gc::{Circuit, Conversion, Fancy, Product};

use super::spec::*;

/// The reduced ReLU circuit with window `bits` (lo ≥ 1) and truncation
/// `shift`.
///
/// `a` and `b` hold bits lo..hi of the client's A and the server's B (see
/// the module documentation), least significant first. Outputs pos, then
/// S_j for j = max(0, shift − lo) .. n − 2: the value is Σ_j
/// 2^(j + lo − shift)·(pos ∧ S_j), products the output conversion computes
/// ([`relu_circuit_for`]), not AND gates.
pub fn relu_reduced_gadget<Fy: Fancy>(
    f: &mut Fy,
    a: &[Fy::Item],
    b: &[Fy::Item],
    shift: u32,
    bits: ReluBits,
) -> Vec<Fy::Item> {
    let n = bits.width() as usize;
    assert!(n >= 2 && a.len() == n && b.len() == n, "reduced ReLU inputs");
    // Adder mod 2^n: the carry out of the top bit is not needed.
    let sum = add_gadget(f, a, b, None, n);
    let j0 = shift.saturating_sub(bits.lo) as usize;
    sign_and_bits::<Fy>(&sum, j0)
}

/// pos (the top bit of S), then S_j for j = j0 .. n − 2: the outputs whose
/// products pos ∧ S_j the conversion computes ([`sign_products`]).
fn sign_and_bits<Fy: Fancy>(sum: &[Fy::Item], j0: usize) -> Vec<Fy::Item> {
    let n = sum.len();
    let mut out = vec![sum[n - 1].clone()];
    out.extend_from_slice(&sum[j0..n - 1]);
    out
}

/// Products of the selector output `sel` with the outputs `first ..` that
/// follow it, one per weight.
fn sign_products(sel: usize, first: usize, weights: impl Iterator<Item = F>) -> Vec<Product> {
    weights.enumerate().map(|(i, weight)| Product { sel, bit: first + i, weight }).collect()
}

/// The exact windowed ReLU circuit (window `0..hi`, truncation `shift`).
///
/// `a` holds the low hi bits of a − 1 then z = [a < 2^hi] (client), `b`
/// the low hi bits of B = b + 2^(hi−1) mod p then y = [B < 2^hi] (server),
/// least significant first. The circuit adds them mod 2^hi with carry-in
/// z ∧ y, which is exactly the carry the mod-p wrap removes (module
/// documentation): hi ANDs. Outputs pos and S_j for j = shift .. hi − 2;
/// the value is Σ_j 2^(j − shift)·(pos ∧ S_j), products the conversion
/// computes.
pub fn relu_exact_window_gadget<Fy: Fancy>(
    f: &mut Fy,
    a: &[Fy::Item],
    b: &[Fy::Item],
    shift: u32,
    hi: u32,
) -> Vec<Fy::Item> {
    let n = hi as usize;
    assert!(n >= 2 && a.len() == n + 1 && b.len() == n + 1, "exact window inputs");
    let cin = f.and(&a[n], &b[n]);
    let sum = add_gadget(f, &a[..n], &b[..n], Some(&cin), n);
    sign_and_bits::<Fy>(&sum, shift as usize)
}

/// Writes the ReLU circuit for any interpreter.
///
/// `a` holds the bits of a + [`CLIENT_OFFSET`] (client), `b` the bits of b
/// (server), least significant first. The outputs, combined by the
/// circuit's conversion ([`relu_circuit`]), give ReLU(y) >> `shift` exactly
/// (floor of the non-negative value): pos first, then with shift 0 the 42
/// bits s'_j (the value is Σ 2^j·(pos ∧ s'_j) − K·pos; 89 ANDs); with
/// shift f > 0 the bits s'_f..s'_41 and one carry c (90 ANDs for f = 8).
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

    let mut out = vec![pos];
    if shift == 0 {
        // ReLU(y) ≡ pos·(s' − K): products with weights 2^j, pos with −K.
        out.extend(sum);
        return out;
    }
    // With W = s'_41: if W, y = s' − 2^41 (as p + K = 2^41) and y >> f is
    // bits f..40 of s'; otherwise y = (s' + 1) − 2^37 and
    // y >> f = (s' >> f) + [low f bits of s' all ones] − 2^(37−f). Hence
    // ReLU(y) >> f = pos·(Σ_{j=f}^{40} 2^(j−f) s'_j + (¬W ∧ c) − 2^(37−f) + 2^(37−f)·W).
    let sh = shift as usize;
    let carry = f.and_all(&sum[..sh]);
    let not_w = f.not(s41);
    let c = f.and(&not_w, &carry);
    out.extend_from_slice(&sum[sh..]);
    out.push(c);
    out
}

/// A recorded ReLU circuit and its conversion. Full width: `pos` is a plain
/// output (weight −K for shift 0, −2^(37−f) for shift f) and the selector of
/// products with the sum bits: 2^j for the 42 bits at shift 0; at shift f,
/// 2^(j−f) for bits j = f..40, 2^(37−f) for bit 41 and 1 for the carry term.
/// Reduced and exact windows: products of `pos` with 2^(j + lo − shift) per
/// sum bit, no plain output.
pub type ReluCircuit = GcCircuit;

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
        let circuit = if bits.is_exact() {
            Circuit::record(n + 1, n + 1, |f, a, b| {
                relu_exact_window_gadget(f, a, b, spec.shift, bits.hi)
            })
        } else {
            Circuit::record(n, n, |f, a, b| relu_reduced_gadget(f, a, b, spec.shift, bits))
        };
        let j0 = spec.shift.saturating_sub(bits.lo);
        let products = sign_products(
            0,
            1,
            (j0..n as u32 - 1).map(|j| F::from_u64(1u64 << (j + bits.lo - spec.shift))),
        );
        let conversion = Conversion::new(circuit.outputs(), Vec::new(), products);
        Box::leak(Box::new(GcCircuit::with_conversion(circuit, conversion, spec.shift)))
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
        let circuit =
            Circuit::record(CLIENT_BITS, SERVER_BITS, |f, a, b| relu_gadget(f, a, b, shift));
        let (pos_weight, weights): (F, Vec<F>) = if shift == 0 {
            (-F::from_u64(CLIENT_OFFSET), (0..42).map(|j| F::from_u64(1 << j)).collect())
        } else {
            let mut w: Vec<F> = (shift..41).map(|j| F::from_u64(1 << (j - shift))).collect();
            w.push(F::from_u64(1 << (37 - shift)));
            w.push(F::ONE);
            (-F::from_u64(1 << (37 - shift)), w)
        };
        let products = sign_products(0, 1, weights.into_iter());
        let conversion = Conversion::new(circuit.outputs(), vec![pos_weight], products);
        GcCircuit::with_conversion(circuit, conversion, shift)
    })
}
