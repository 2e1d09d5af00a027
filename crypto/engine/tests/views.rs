//! What each party sees: the online messages are masked.
#![allow(clippy::unwrap_used)]

use std::thread;

use delphi_crypto::block::SecretRng;
use delphi_crypto::channel::{Channel, TcpChannel, FIELD_BYTES};
use delphi_crypto::field::{F, P};
use delphi_crypto::Result as CResult;
use delphi_engine::protocol::{client_offline, client_setup, server_offline, server_setup};
use delphi_net::builtin::build;
use delphi_net::FixedProgram;
use delphi_net::Placement;
use rand::SeedableRng;

/// A channel that records every byte it receives once `recording` is set.
struct Recorder<C> {
    inner: C,
    recording: bool,
    seen: Vec<u8>,
}

impl<C: Channel> Channel for Recorder<C> {
    fn send_bytes(&mut self, buf: &[u8]) -> CResult<()> {
        self.inner.send_bytes(buf)
    }
    fn recv_bytes(&mut self, buf: &mut [u8]) -> CResult<()> {
        self.inner.recv_bytes(buf)?;
        if self.recording {
            self.seen.extend_from_slice(buf);
        }
        Ok(())
    }
    fn flush(&mut self) -> CResult<()> {
        self.inner.flush()
    }
}

fn pair() -> (TcpChannel, TcpChannel) {
    TcpChannel::loopback_pair().unwrap()
}

/// Runs one inference; returns (bytes the client received online except the
/// final logit share, field elements the server received online).
fn views(prog: &FixedProgram, input: &[F]) -> (Vec<u8>, Vec<F>) {
    let (s, c) = pair();
    let sp = prog.clone();
    let server = thread::spawn(move || {
        let mut ch = Recorder { inner: s, recording: false, seen: Vec::new() };
        let mut rng = SecretRng::from_entropy();
        let he = server_setup(&mut ch).unwrap();
        let b = server_offline(&mut ch, &sp, &he, &mut rng).unwrap();
        ch.recording = true;
        b.online(&mut ch, &sp).unwrap();
        ch.seen
    });
    let mut ch = Recorder { inner: c, recording: false, seen: Vec::new() };
    let mut rng = SecretRng::from_entropy();
    let he = client_setup(&mut ch).unwrap();
    let b = client_offline(&mut ch, prog, &he, &mut rng).unwrap();
    ch.recording = true;
    b.online(&mut ch, prog, input).unwrap();
    let server_seen = server.join().unwrap();
    let out_len = prog.nodes[prog.output].shape.len() * FIELD_BYTES;
    let client_seen = ch.seen[..ch.seen.len() - out_len].to_vec();
    let fields = server_seen
        .chunks_exact(FIELD_BYTES)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..FIELD_BYTES].copy_from_slice(c);
            F::new(u64::from_le_bytes(w)).unwrap()
        })
        .collect();
    (client_seen, fields)
}

/// Chi-square statistic of values against 16 equal buckets of [0, p).
fn chi2_uniform(v: &[F]) -> f64 {
    let mut b = [0f64; 16];
    for x in v {
        b[(x.value() as u128 * 16 / P as u128) as usize] += 1.0;
    }
    let e = v.len() as f64 / 16.0;
    b.iter().map(|o| (o - e) * (o - e) / e).sum()
}

fn ones_fraction(bytes: &[u8]) -> f64 {
    bytes.iter().map(|b| b.count_ones() as f64).sum::<f64>() / (bytes.len() * 8) as f64
}

#[test]
fn the_server_sees_only_uniform_values_whatever_the_input() {
    let mut net = build("small-cnn", 10, 11).unwrap();
    "RQR".parse::<Placement>().unwrap().apply(&mut net).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    let zeros = prog.encode_input(&vec![0.0; 784]).unwrap();
    let ones = prog.encode_input(&vec![1.0; 784]).unwrap();
    for input in [zeros, ones] {
        let (_, seen) = views(&prog, &input);
        assert!(seen.len() > 10_000);
        // 15 degrees of freedom: 50 is far in the tail (p < 1e-5) for uniform
        // data, while unmasked activations (small values) would give ~10^5.
        let chi2 = chi2_uniform(&seen);
        assert!(chi2 < 50.0, "server's online view is not uniform: chi² = {chi2}");
    }
}

#[test]
fn the_client_sees_only_masked_material_whatever_the_weights() {
    let mut fractions = Vec::new();
    for seed in [1, 2] {
        let mut net = build("small-cnn", 10, seed).unwrap();
        "RQR".parse::<Placement>().unwrap().apply(&mut net).unwrap();
        let prog = FixedProgram::lower(&net).unwrap();
        let input = prog.encode_input(&vec![0.5; 784]).unwrap();
        let (seen, _) = views(&prog, &input);
        // Garbled labels and masked openings: balanced bits.
        let f = ones_fraction(&seen);
        assert!((f - 0.5).abs() < 0.005, "client's online view is biased: {f}");
        fractions.push(f);
    }
    assert!((fractions[0] - fractions[1]).abs() < 0.005);
}
