//! The two-party ReLU layer over real TCP, checked against plaintext ReLU.
#![allow(clippy::unwrap_used)]

use std::thread;

use delphi_crypto::block::SecretRng;
use delphi_crypto::channel::{Channel, Counting, TcpChannel};
use delphi_crypto::field::{F, HALF, P};
use delphi_crypto::relu::{client_offline, relu_reference, server_offline, CLIENT_BITS};
use delphi_crypto::Error;
use rand::{Rng, SeedableRng};

fn tcp_pair() -> (TcpChannel, TcpChannel) {
    TcpChannel::loopback_pair().unwrap()
}

/// Runs offline and online for the given shares; returns (client out, server ρ).
fn run(client_shares: Vec<F>, server_shares: Vec<F>) -> (Vec<F>, Vec<F>) {
    let (s, c) = tcp_pair();
    let n = client_shares.len();
    let server = thread::spawn(move || {
        let mut ch = s;
        let mut rng = SecretRng::seed_from_u64(1);
        let bundle = server_offline(&mut ch, n, 0, &mut rng).unwrap();
        // `online` takes the bundle by value: a second run does not compile.
        bundle.online(&mut ch, &server_shares).unwrap()
    });
    let mut ch = c;
    let mut rng = SecretRng::seed_from_u64(2);
    let bundle = client_offline(&mut ch, &client_shares, 0, &mut rng).unwrap();
    let out = bundle.online(&mut ch).unwrap();
    (out, server.join().unwrap())
}

#[test]
fn ten_thousand_random_relus_over_tcp() {
    let mut rng = SecretRng::seed_from_u64(3);
    let n = 10_007; // not a multiple of the batch size
    let mut ys: Vec<F> = (0..n)
        .map(|i| match i % 3 {
            // Fixed-point sized values of both signs, and arbitrary field values.
            0 => F::from_i64(rng.gen_range(-(1i64 << 24)..(1 << 24))),
            1 => F::from_i64(rng.gen_range(-300i64..300)),
            _ => F::random(&mut rng),
        })
        .collect();
    ys[..6].copy_from_slice(&[
        F::ZERO,
        F::ONE,
        F::from_u64(P - 1),
        F::from_u64(HALF - 1),
        F::from_u64(HALF),
        F::from_u64(HALF + 1),
    ]);
    let a: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
    let b: Vec<F> = ys.iter().zip(&a).map(|(y, a)| *y - *a).collect();
    let (out, rho) = run(a, b);
    let mut wrong = 0;
    for ((y, o), r) in ys.iter().zip(&out).zip(&rho) {
        if *o + *r != relu_reference(*y) {
            wrong += 1;
        }
    }
    assert_eq!(wrong, 0, "{wrong} of {n} secure ReLUs differ from plaintext");
    // The server's shares are masks: not all equal, not the ReLU values.
    assert!(rho.iter().zip(&ys).filter(|(r, y)| **r == relu_reference(**y)).count() < 5);
}

#[test]
fn online_traffic_is_one_label_per_server_bit() {
    let (s, c) = tcp_pair();
    let n = 100;
    let server = thread::spawn(move || {
        let mut ch = Counting::new(s);
        let mut rng = SecretRng::seed_from_u64(4);
        let bundle = server_offline(&mut ch, n, 0, &mut rng).unwrap();
        let before = ch.stats();
        bundle.online(&mut ch, &vec![F::ZERO; n]).unwrap();
        ch.stats().since(&before)
    });
    let mut ch = Counting::new(c);
    let mut rng = SecretRng::seed_from_u64(5);
    let bundle = client_offline(&mut ch, &vec![F::ONE; n], 0, &mut rng).unwrap();
    let before = ch.stats();
    bundle.online(&mut ch).unwrap();
    let client = ch.stats().since(&before);
    let server = server.join().unwrap();
    assert_eq!(server.sent, 16 + (n * CLIENT_BITS * 16) as u64);
    assert_eq!(client.sent, 0);
    assert_eq!(client.received, server.sent);
}

#[test]
fn mismatched_bundle_is_rejected_and_dropped_peer_is_an_error() {
    // Server and client disagree on the number of ReLUs: a typed mismatch.
    let (s, c) = tcp_pair();
    let h = thread::spawn(move || {
        let mut ch = s;
        server_offline(&mut ch, 10, 0, &mut SecretRng::seed_from_u64(6)).map(|_| ())
    });
    let mut ch = c;
    let r = client_offline(&mut ch, &[F::ZERO; 11], 0, &mut SecretRng::seed_from_u64(7));
    assert!(matches!(r, Err(Error::Mismatch { ours: 11, theirs: 10, .. })));
    assert!(matches!(h.join().unwrap(), Err(Error::Mismatch { .. })));

    // The server vanishes after the offline phase: the client's online run fails cleanly.
    let (s, c) = tcp_pair();
    let h = thread::spawn(move || {
        let mut ch = s;
        let b = server_offline(&mut ch, 40, 0, &mut SecretRng::seed_from_u64(8)).unwrap();
        drop(b);
        drop(ch);
    });
    let mut ch = c;
    let bundle =
        client_offline(&mut ch, &[F::ZERO; 40], 0, &mut SecretRng::seed_from_u64(9)).unwrap();
    h.join().unwrap();
    assert!(matches!(bundle.online(&mut ch), Err(Error::Closed)));
    let _ = ch.flush();
}

#[test]
fn reduced_relus_send_one_label_per_window_bit_and_survive_storage() {
    use delphi_crypto::codec::{Decoder, Encoder};
    use delphi_crypto::relu::{
        reduced_output, ClientReluBundle, ReluBits, ReluSpec, ServerReluBundle,
    };
    let bits = ReluBits { lo: 12, hi: 26 };
    let spec = ReluSpec::reduced(12, bits);
    let n = 300;
    let mut rng = SecretRng::seed_from_u64(12);
    let ys: Vec<F> = (0..n).map(|_| F::from_i64(rng.gen_range(-(1i64 << 24)..(1 << 24)))).collect();
    let a: Vec<F> = (0..n).map(|_| F::random(&mut rng)).collect();
    let b: Vec<F> = ys.iter().zip(&a).map(|(y, a)| *y - *a).collect();
    let (s, c) = tcp_pair();
    let bs = b.clone();
    let server = thread::spawn(move || {
        let mut ch = Counting::new(s);
        let bundle = server_offline(&mut ch, n, spec, &mut SecretRng::seed_from_u64(13)).unwrap();
        // Through storage: the window travels with the bundle.
        let mut buf = Vec::new();
        bundle.store(&mut Encoder::new(&mut buf)).unwrap();
        drop(bundle);
        let bundle = ServerReluBundle::load(&mut Decoder::new(&buf[..])).unwrap();
        let before = ch.stats();
        let rho = bundle.online(&mut ch, &bs).unwrap();
        (rho, ch.stats().since(&before))
    });
    let mut ch = Counting::new(c);
    let bundle = client_offline(&mut ch, &a, spec, &mut SecretRng::seed_from_u64(14)).unwrap();
    let mut buf = Vec::new();
    bundle.store(&mut Encoder::new(&mut buf)).unwrap();
    drop(bundle);
    let bundle = ClientReluBundle::load(&mut Decoder::new(&buf[..])).unwrap();
    let out = bundle.online(&mut ch).unwrap();
    let (rho, sent) = server.join().unwrap();
    assert_eq!(sent.sent, 16 + (n * 14 * 16) as u64);
    for i in 0..n {
        let hb = (b[i] + F::from_u64(1 << 25)).value();
        let s = (((a[i].value() + (1 << 12) - 1) >> 12) + (hb >> 12)) & ((1 << 14) - 1);
        assert_eq!(out[i] + rho[i], reduced_output(s, 12, bits));
        let err = (out[i] + rho[i]).to_signed() - spec.reference(ys[i]).to_signed();
        assert!(err.unsigned_abs() <= spec.error_bound());
    }
    // A stored bundle whose window is not a window is refused by name.
    let mut bad = buf.clone();
    bad[24..32].copy_from_slice(&((1u64 << 16) | (30 << 8) | 20).to_le_bytes());
    assert!(matches!(
        ClientReluBundle::load(&mut Decoder::new(&bad[..])),
        Err(Error::Stored { .. })
    ));
}

#[test]
fn parties_disagreeing_on_the_window_stop_offline() {
    use delphi_crypto::relu::{ReluBits, ReluSpec};
    let (s, c) = tcp_pair();
    let h = thread::spawn(move || {
        let mut ch = s;
        let spec = ReluSpec::reduced(12, ReluBits { lo: 12, hi: 26 });
        server_offline(&mut ch, 10, spec, &mut SecretRng::seed_from_u64(15)).map(|_| ())
    });
    let mut ch = c;
    let spec = ReluSpec::reduced(12, ReluBits { lo: 12, hi: 25 });
    let r = client_offline(&mut ch, &[F::ZERO; 10], spec, &mut SecretRng::seed_from_u64(16));
    assert!(matches!(r, Err(Error::Mismatch { what: "ReLU bits", .. })), "{r:?}");
    assert!(h.join().unwrap().is_err());
}
