//! IKNP OT extension with the ALSZ optimisations, producing correlated OTs.
//!
//! The extension sender (the garbler) plays the base-OT receiver with a
//! secret choice vector s, which becomes the free-XOR offset Δ (its least
//! significant bit forced to 1 for point-and-permute). The extension
//! receiver (the evaluator) plays the base-OT sender with 128 seed pairs.
//! For m OTs with choices r the receiver sends one 128 × m bit matrix
//! u_j = G(k_j^0) ⊕ G(k_j^1) ⊕ r (ALSZ: one matrix, seeds expanded with
//! AES-CTR); after transposition the sender holds q_i and the receiver
//! t_i = q_i ⊕ r_i·Δ. The q_i are used directly as the zero labels of the
//! evaluator's input wires, as in semi-honest garbled-circuit 2PC
//! (e.g. emp-sh2pc); no hashing is needed because the labels are only ever
//! used through the garbling hash. Cost: 16 bytes per OT plus 128 base OTs.

use std::fmt;

use rand::{CryptoRng, Rng, RngCore};
use zeroize::Zeroize;

use super::base::{base_ot_receive, base_ot_send};
use super::transpose::transpose128;
use crate::block::{AesPrg, Block};
use crate::channel::Channel;
use crate::error::{Error, Result};

/// Security parameter: number of base OTs and width of a label.
pub const KAPPA: usize = 128;

/// OTs processed per chunk (bounds memory at 2 MiB per party).
const CHUNK: usize = 1 << 16;

/// The most correlated OTs one call extends.
pub const MAX_OTS: usize = 1 << 30;

/// The garbler's side: knows Δ and gets zero labels.
pub struct CotSender {
    delta: Block,
    bits: [bool; KAPPA],
    prgs: Vec<AesPrg>,
}

/// The evaluator's side: gets one label per choice bit.
pub struct CotReceiver {
    prgs: Vec<(AesPrg, AesPrg)>,
}

impl fmt::Debug for CotSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CotSender").finish_non_exhaustive()
    }
}

impl fmt::Debug for CotReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CotReceiver").finish_non_exhaustive()
    }
}

impl Drop for CotSender {
    fn drop(&mut self) {
        self.delta.zeroize();
        self.bits.zeroize();
    }
}

fn check_len(m: usize) -> Result<usize> {
    if m > MAX_OTS {
        return Err(Error::InvalidArgument(format!("{m} OTs (at most {MAX_OTS})")));
    }
    Ok(m.div_ceil(KAPPA) * KAPPA)
}

impl CotSender {
    /// Runs the base OTs (as their receiver) and fixes Δ.
    pub fn setup<C: Channel, R: RngCore + CryptoRng>(ch: &mut C, rng: &mut R) -> Result<Self> {
        let mut bits = [false; KAPPA];
        for b in bits.iter_mut() {
            *b = rng.gen();
        }
        bits[0] = true; // lsb(Δ) = 1 for point-and-permute
        let keys = base_ot_receive(ch, &bits, rng)?;
        let delta =
            Block(bits.iter().enumerate().fold(0u128, |acc, (j, &b)| acc | ((b as u128) << j)));
        Ok(CotSender { delta, bits, prgs: keys.into_iter().map(AesPrg::new).collect() })
    }

    /// The global offset Δ (lsb set).
    pub fn delta(&self) -> Block {
        self.delta
    }

    /// Extends `m` correlated OTs; returns the zero labels q_i (the
    /// receiver's labels are q_i ⊕ r_i·Δ).
    pub fn send<C: Channel>(&mut self, ch: &mut C, m: usize) -> Result<Vec<Block>> {
        let total = check_len(m)?;
        let mut out = vec![Block::ZERO; total];
        let mut matrix = vec![0u8; KAPPA * CHUNK / 8];
        let mut u = vec![0u8; CHUNK / 8];
        for dst in out.chunks_mut(CHUNK) {
            let n = dst.len();
            let rb = n / 8;
            for j in 0..KAPPA {
                let row = &mut matrix[j * rb..(j + 1) * rb];
                self.prgs[j].fill_bytes_blocks(row);
                ch.recv_bytes(&mut u[..rb])?;
                if self.bits[j] {
                    for (r, x) in row.iter_mut().zip(&u[..rb]) {
                        *r ^= x;
                    }
                }
            }
            transpose128(&matrix[..KAPPA * rb], n, dst);
        }
        matrix.zeroize();
        out.truncate(m);
        Ok(out)
    }
}

impl CotReceiver {
    /// Runs the base OTs (as their sender).
    pub fn setup<C: Channel, R: RngCore + CryptoRng>(ch: &mut C, rng: &mut R) -> Result<Self> {
        let keys = base_ot_send(ch, KAPPA, rng)?;
        Ok(CotReceiver {
            prgs: keys.into_iter().map(|(k0, k1)| (AesPrg::new(k0), AesPrg::new(k1))).collect(),
        })
    }

    /// Extends one correlated OT per choice bit; returns t_i = q_i ⊕ r_i·Δ.
    pub fn receive<C: Channel>(&mut self, ch: &mut C, choices: &[bool]) -> Result<Vec<Block>> {
        let m = choices.len();
        let total = check_len(m)?;
        let mut out = vec![Block::ZERO; total];
        let mut matrix = vec![0u8; KAPPA * CHUNK / 8];
        let mut other = vec![0u8; CHUNK / 8];
        let mut r = vec![0u8; CHUNK / 8];
        for (c, dst) in out.chunks_mut(CHUNK).enumerate() {
            let n = dst.len();
            let rb = n / 8;
            r[..rb].fill(0);
            for (i, &b) in choices.iter().skip(c * CHUNK).take(n).enumerate() {
                r[i / 8] |= (b as u8) << (i % 8);
            }
            for j in 0..KAPPA {
                let row = &mut matrix[j * rb..(j + 1) * rb];
                self.prgs[j].0.fill_bytes_blocks(row);
                self.prgs[j].1.fill_bytes_blocks(&mut other[..rb]);
                for ((o, t), x) in other[..rb].iter_mut().zip(row.iter()).zip(&r[..rb]) {
                    *o ^= t ^ x;
                }
                ch.send_bytes(&other[..rb])?;
            }
            transpose128(&matrix[..KAPPA * rb], n, dst);
        }
        ch.flush()?;
        matrix.zeroize();
        r.zeroize();
        out.truncate(m);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{Channel, MemChannel, TcpChannel};
    use rand::SeedableRng;
    use std::net::TcpListener;
    use std::thread;

    /// Generic harness: extends twice over the given pair and checks the
    /// correlation for every OT.
    fn test_cot<C: Channel + Send + 'static>(mut s: C, mut r: C, sizes: &[usize]) {
        let sizes_s = sizes.to_vec();
        let h = thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
            let mut snd = CotSender::setup(&mut s, &mut rng).unwrap();
            let qs: Vec<Vec<Block>> =
                sizes_s.iter().map(|&m| snd.send(&mut s, m).unwrap()).collect();
            (snd.delta(), qs)
        });
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        let mut rcv = CotReceiver::setup(&mut r, &mut rng).unwrap();
        let mut all = Vec::new();
        for &m in sizes {
            let choices: Vec<bool> = (0..m).map(|_| rng.gen()).collect();
            let ts = rcv.receive(&mut r, &choices).unwrap();
            all.push((choices, ts));
        }
        let (delta, qs) = h.join().unwrap();
        assert!(delta.lsb());
        for ((choices, ts), qs) in all.iter().zip(&qs) {
            assert_eq!(ts.len(), qs.len());
            for ((c, t), q) in choices.iter().zip(ts).zip(qs) {
                assert_eq!(*t, *q ^ delta.and_bit(*c));
            }
        }
    }

    #[test]
    fn cot_over_memory() {
        let (a, b) = MemChannel::pair();
        test_cot(a, b, &[1, 200, CHUNK + 77]);
    }

    #[test]
    fn cot_over_tcp() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || TcpChannel::connect(addr).unwrap());
        let s = TcpChannel::new(l.accept().unwrap().0).unwrap();
        test_cot(s, h.join().unwrap(), &[1000, 3]);
    }
}
