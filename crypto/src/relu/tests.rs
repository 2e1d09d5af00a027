//! The ReLU protocol's unit tests.

use crate::field::{F, HALF};

use super::circuit::*;
use super::spec::*;
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
    for a in [0, 1, 2, HALF - 1, HALF, HALF + 1, P - 2, P - 1, 1 << 36, (1 << 37) + 5, 12345678901]
    {
        let a = F::from_u64(a);
        v.push((a, y - a));
    }
    v
}

#[test]
fn gadget_counts_89_ands() {
    let mut c = GateCounter::default();
    let a = vec![(); CLIENT_BITS];
    let b = vec![(); SERVER_BITS];
    let outs = relu_gadget(&mut c, &a, &b, 0);
    assert_eq!(outs.len(), 43);
    assert_eq!(c.ands, 89);
    assert_eq!(relu_circuit(0).circuit().and_gates(), 89);
    // pos ∧ s'_j are 42 products of the conversion: pos plain, pos as the
    // selector, two elements per product.
    assert_eq!(relu_circuit(0).conversion().products().len(), 42);
    assert_eq!(relu_circuit(0).elements(), 1 + 1 + 2 * 42);
    assert_eq!(relu_circuit(8).circuit().and_gates(), 97);
    assert_eq!(relu_circuit(8).conversion().products().len(), 35);
    for shift in 0..=MAX_SHIFT {
        let rc = relu_circuit(shift);
        assert_eq!(rc.conversion().labels(), rc.circuit().outputs());
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
        assert_eq!(out[i] + rho[i], relu_trunc_reference(ys[i], 8), "y = {:?}", ys[i]);
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
    assert_eq!(out, relu_reduced_gadget(&mut PlainEval, &ab, &bb, shift, bits));
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
    // The adder's 14 carries; the 14 products pos ∧ S_j are converted.
    assert_eq!(rc.circuit().and_gates(), 14);
    assert_eq!(rc.conversion().products().len(), 14);
    assert_eq!(rc.elements(), 1 + 2 * 14);
    assert_eq!(rc.circuit().evaluator_inputs(), 15);
    assert_eq!(rc.circuit().garbler_inputs(), 15);
    assert_eq!(rc.conversion().labels(), rc.circuit().outputs());
    // lo below the truncation: the low sum bits only feed carries.
    let rc = relu_circuit_for(ReluSpec::reduced(12, ReluBits { lo: 8, hi: 24 }));
    assert_eq!(rc.circuit().and_gates(), 15);
    assert_eq!(rc.conversion().products().len(), 11);
}

#[test]
fn reduced_windows_are_checked() {
    for (lo, hi, shift) in [
        (0, 13, 12),
        (12, 13, 0),
        (5, 38, 12),
        (4, 13, 12),
        (9, 9, 0),
        (u32::MAX, 20, 0),
        (4, 20, u32::MAX),
    ] {
        assert!(ReluSpec::reduced(shift, ReluBits { lo, hi }).check().is_err());
    }
    assert!(ReluSpec::reduced(12, ReluBits { lo: 1, hi: 14 }).check().is_ok());
    for b in [None, Some(ReluBits { lo: 3, hi: 37 })] {
        assert_eq!(ReluBits::from_code(ReluBits::code(b)), Some(b));
    }
    assert_eq!(ReluBits::from_code(7), None);
}

#[test]
fn reduced_edges_and_window_boundaries() {
    for (lo, hi, shift) in [(12, 27, 12), (8, 24, 12), (14, 26, 12), (1, 3, 0), (2, 37, 8)] {
        let bits = ReluBits { lo, hi };
        let h = 1i64 << (hi - 1);
        let l = 1i64 << lo;
        for v in [0, 1, -1, l - 1, l, -l, -l - 1, h - l - 1, -(h - l - 1), h - 1, -h, h, 5 * l + 3]
        {
            for a in [0, 1, 2, l as u64 - 1, l as u64, HALF - 1, HALF, P - 1, P - 2, 12345678901] {
                let a = F::from_u64(a % P);
                check_reduced(a, F::from_i64(v) - a, shift, bits);
            }
        }
    }
}

#[test]
fn garbled_reduced_protocol_matches_the_plaintext_circuit() {
    let bits = ReluBits { lo: 10, hi: 26 };
    let (a, b, ys, sum) = run_garbled(ReluSpec::reduced(12, bits), 1 << 26, 23);
    for i in 0..ys.len() {
        let want = reduced_output(plain_sum(a[i], b[i], bits), 12, bits);
        assert_eq!(sum[i], want, "y = {:?}", ys[i]);
    }
}

/// Runs 300 garbled ReLUs of `spec` on random |y| < `range` split into
/// random shares; returns the shares, the values and the secure outputs
/// (client's plus server's).
fn run_garbled(spec: ReluSpec, range: i64, seed: u64) -> (Vec<F>, Vec<F>, Vec<F>, Vec<F>) {
    use crate::channel::MemChannel;
    use rand::{Rng, SeedableRng};
    let mut rng = crate::block::SecretRng::seed_from_u64(seed);
    let n = 300;
    let ys: Vec<F> = (0..n).map(|_| F::from_i64(rng.gen_range(-range..range))).collect();
    let a: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
    let b: Vec<F> = ys.iter().zip(&a).map(|(y, a)| *y - *a).collect();
    let (mut sc, mut cc) = MemChannel::pair();
    let bs = b.clone();
    let server = std::thread::spawn(move || {
        let mut rng = crate::block::SecretRng::seed_from_u64(seed + 1);
        let bundle = server_offline(&mut sc, n, spec, &mut rng).unwrap();
        bundle.online(&mut sc, &bs).unwrap()
    });
    let mut crng = crate::block::SecretRng::seed_from_u64(seed + 2);
    let bundle = client_offline(&mut cc, &a, spec, &mut crng).unwrap();
    let out = bundle.online(&mut cc).unwrap();
    let rho = server.join().unwrap();
    let sum = out.iter().zip(&rho).map(|(o, r)| *o + *r).collect();
    (a, b, ys, sum)
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

#[test]
fn windows_parse_as_they_print() {
    let b: ReluBits = "12..27".parse().expect("parses");
    assert_eq!(b, ReluBits { lo: 12, hi: 27 });
    assert_eq!(b.to_string().parse::<ReluBits>().expect("parses"), b);
    for bad in ["12", "a..27", "5..6", "12..13", "12..40", ""] {
        let e = bad.parse::<ReluBits>().unwrap_err().to_string();
        assert!(e.contains("ReLU window"), "{bad}: {e}");
    }
}

/// The exact window's plaintext circuit on shares (a, b) of v.
fn exact_circuit_output(a: F, b: F, shift: u32, bits: ReluBits) -> F {
    let spec = ReluSpec::reduced(shift, bits);
    let (mut ca, mut sb) = (Vec::new(), Vec::new());
    spec.client_input(a, &mut ca);
    spec.server_input(b, &mut sb);
    let rc = relu_circuit_for(spec);
    rc.combine(&rc.circuit().eval_plain(&ca, &sb))
}

#[test]
fn exact_window_counts() {
    let rc = relu_circuit_for(ReluSpec::reduced(12, ReluBits::exact(27)));
    // The wrap's carry and 26 carries; 27 − 1 − 12 products pos ∧ S_j.
    assert_eq!(rc.circuit().and_gates(), 27);
    assert_eq!(rc.conversion().products().len(), 27 - 1 - 12);
    assert_eq!(rc.circuit().evaluator_inputs(), 28);
    assert_eq!(rc.circuit().garbler_inputs(), 28);
    assert_eq!(ReluSpec::reduced(12, ReluBits::exact(27)).input_bits(), 28);
    assert_eq!(ReluSpec::reduced(12, ReluBits::exact(27)).error_bound(), 0);
    assert_eq!(ReluBits::exact(27).exact_sign_limit(), 1 << 26);
    assert_eq!("0..27".parse::<ReluBits>().expect("parses"), ReluBits::exact(27));
}

/// Inside its window the exact circuit is ReLU(v) >> shift for every split
/// of v, the wrap of a + b mod p included.
#[test]
fn exact_window_is_exact_on_every_split_inside() {
    for (hi, shift) in [(27, 12), (14, 12), (2, 0), (20, 0), (37, 30), (37, 8)] {
        let bits = ReluBits::exact(hi);
        let h = 1i64 << (hi - 1);
        for v in [0, 1, -1, 2, -2, h - 1, -h, h / 2, -h / 2 - 1, 4095, 4096, -4096, 12345 % h] {
            if !(-h..h).contains(&v) {
                continue;
            }
            let y = F::from_i64(v);
            for a in
                [0, 1, 2, 3, h as u64 - 1, h as u64, 2 * h as u64, HALF, P - 1, P - 2, 98765432101]
            {
                let a = F::from_u64(a % P);
                let b = y - a;
                let want = relu_trunc_reference(y, shift);
                let spec = ReluSpec::reduced(shift, bits);
                assert_eq!(spec.reference(y), want, "reference v = {v}, hi = {hi}");
                assert_eq!(spec.protocol_output(a, b), want, "v = {v}, a = {a:?}, hi = {hi}");
                assert_eq!(exact_circuit_output(a, b, shift, bits), want, "v = {v}, a = {a:?}");
            }
        }
    }
}

#[test]
fn garbled_exact_window_protocol_is_relu() {
    let (_, _, ys, sum) = run_garbled(ReluSpec::reduced(12, ReluBits::exact(26)), 1 << 25, 26);
    for (y, s) in ys.iter().zip(&sum) {
        assert_eq!(*s, relu_trunc_reference(*y, 12), "y = {y:?}");
    }
}

proptest::proptest! {
    #[test]
    fn exact_window_is_relu_inside(a in 0..P, hi in 2u32..=MAX_HI, shift in 0u32..=MAX_SHIFT, frac in -1.0f64..1.0) {
        let shift = shift.min(hi - 2);
        let v = ((frac * (1i64 << (hi - 1)) as f64) as i64).clamp(-(1i64 << (hi - 1)), (1i64 << (hi - 1)) - 1);
        let (a, y) = (F::from_u64(a), F::from_i64(v));
        let bits = ReluBits::exact(hi);
        proptest::prop_assert_eq!(exact_circuit_output(a, y - a, shift, bits), relu_trunc_reference(y, shift));
    }
}
