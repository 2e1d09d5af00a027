//! Chou–Orlandi "simplest OT" on the Ristretto group, batched.
//!
//! Sender: a ← Z_q, A = a·G. Receiver, choice c: b ← Z_q, B = b·G + c·A.
//! Keys: k0 = H(A, B, a·B), k1 = H(A, B, a·(B − A)); the receiver gets
//! k_c = H(A, B, b·A). Secure against semi-honest parties under CDH in the
//! random-oracle model (SHA-256 here). Points that fail to decode are errors.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable};
use zeroize::Zeroize;

use crate::block::Block;
use crate::channel::Channel;
use crate::error::{Error, Result};

/// The most base OTs one call runs (bounds what a peer can make us read).
pub const MAX_BASE_OTS: usize = 1 << 12;

fn kdf(
    index: usize,
    a: &CompressedRistretto,
    b: &CompressedRistretto,
    p: &RistrettoPoint,
) -> Block {
    let mut h = Sha256::new();
    h.update(b"delphi-co-ot");
    h.update((index as u64).to_le_bytes());
    h.update(a.as_bytes());
    h.update(b.as_bytes());
    h.update(p.compress().as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    Block::from_bytes(k)
}

fn recv_point<C: Channel>(ch: &mut C) -> Result<(CompressedRistretto, RistrettoPoint)> {
    let mut b = [0u8; 32];
    ch.recv_bytes(&mut b)?;
    let c = CompressedRistretto(b);
    let p = c.decompress().ok_or(Error::Malformed { what: "not a Ristretto point" })?;
    Ok((c, p))
}

/// Runs `n` base OTs as the sender; returns the key pairs `(k0, k1)`.
pub fn base_ot_send<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    n: usize,
    rng: &mut R,
) -> Result<Vec<(Block, Block)>> {
    if n > MAX_BASE_OTS {
        return Err(Error::InvalidArgument(format!("{n} base OTs (at most {MAX_BASE_OTS})")));
    }
    let mut a = Scalar::random(rng);
    let big_a = RistrettoPoint::mul_base(&a);
    let ca = big_a.compress();
    ch.send_bytes(ca.as_bytes())?;
    ch.flush()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (cb, b) = recv_point(ch)?;
        let ab = a * b;
        let k0 = kdf(i, &ca, &cb, &ab);
        let k1 = kdf(i, &ca, &cb, &(ab - a * big_a));
        out.push((k0, k1));
    }
    a.zeroize();
    Ok(out)
}

/// Runs base OTs as the receiver with the given choice bits; returns k_c.
pub fn base_ot_receive<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    choices: &[bool],
    rng: &mut R,
) -> Result<Vec<Block>> {
    if choices.len() > MAX_BASE_OTS {
        return Err(Error::InvalidArgument(format!(
            "{} base OTs (at most {MAX_BASE_OTS})",
            choices.len()
        )));
    }
    let (ca, big_a) = recv_point(ch)?;
    let mut out = Vec::with_capacity(choices.len());
    for (i, &c) in choices.iter().enumerate() {
        let mut b = Scalar::random(rng);
        let bg = RistrettoPoint::mul_base(&b);
        let with_a = bg + big_a;
        let big_b = RistrettoPoint::conditional_select(&bg, &with_a, Choice::from(c as u8));
        let cb = big_b.compress();
        ch.send_bytes(cb.as_bytes())?;
        out.push(kdf(i, &ca, &cb, &(b * big_a)));
        b.zeroize();
    }
    ch.flush()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{MemChannel, TcpChannel};
    use rand::{Rng, SeedableRng};
    use std::net::TcpListener;
    use std::thread;

    fn check<C: Channel + Send + 'static>(mut s: C, mut r: C) {
        let h = thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
            base_ot_send(&mut s, 128, &mut rng).unwrap()
        });
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let choices: Vec<bool> = (0..128).map(|_| rng.gen()).collect();
        let got = base_ot_receive(&mut r, &choices, &mut rng).unwrap();
        let keys = h.join().unwrap();
        for ((c, g), (k0, k1)) in choices.iter().zip(&got).zip(&keys) {
            assert_eq!(*g, if *c { *k1 } else { *k0 });
            assert_ne!(*g, if *c { *k0 } else { *k1 });
        }
    }

    #[test]
    fn base_ot_over_memory() {
        let (a, b) = MemChannel::pair();
        check(a, b);
    }

    #[test]
    fn base_ot_over_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || TcpChannel::connect(addr).unwrap());
        let s = TcpChannel::new(l.accept().unwrap().0).unwrap();
        check(s, h.join().unwrap());
    }

    #[test]
    fn invalid_point_is_rejected() {
        let (mut a, mut b) = MemChannel::pair();
        // 0xff.. is not a canonical Ristretto encoding.
        a.send_bytes(&[0xff; 32]).unwrap();
        a.flush().unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        assert!(matches!(base_ot_receive(&mut b, &[true], &mut rng), Err(Error::Malformed { .. })));
    }
}
