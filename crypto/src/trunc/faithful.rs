//! Faithful truncation of shared values (opt-in: it leaks through its rounding): one OT per value, one message online.
//!
//! Local share truncation (SecureML) is wrong by a huge amount whenever the
//! two shares wrap around p, which for p ≈ 2^41 and values of 2^22 happens
//! once in a few hundred thousand values — about once per inference of a
//! ResNet with quadratic activations. This protocol removes the wrap.
//!
//! # The idea
//!
//! The server adds a public offset B = 2^38 (plus 2^f, see below) to its
//! share, so that the shared value v' = v + B + 2^f lies in [0, (p−1)/2]
//! whenever |v| < 2^38 − 2^f. For shares c (client) and
//! s (server) of such a v', the wrap bit w of c + s = v' + w·p is simply
//!
//! > w = msb(c) ∨ msb(s), where msb(x) = [x > (p−1)/2]
//!
//! (both small: no wrap; both large: wrap; one of each: the sum is at least
//! (p+1)/2, so it must have wrapped to land below (p−1)/2). Writing
//! x = x₁·2^f + x₀ and p = P₁·2^f + p₀,
//!
//! > ⌊v'/2^f⌋ = c₁ + s₁ − w·P₁ + δ,  δ ∈ {−1, 0, 1},
//!
//! so shares of w give shares of the truncation. Since p ≡ 1 (mod 2^f) for
//! every f ≤ 36 (p = 15·2^37 + 1), c₁ + s₁ − w·P₁ = (v' − c₀ − s₀ + w)/2^f:
//! the low parts of the two shares decide whether the result rounds up or
//! down, and with the extra 2^f in the offset the result is v/2^f rounded
//! stochastically — unbiased, the floor or the ceiling, never a wrap. (A
//! 2^(f−1) offset would round to nearest *minus* half a unit on average, a
//! bias that deep networks amplify.)
//!
//! # Shares of w
//!
//! w = m_c + m_s − m_c·m_s. The client's bit m_c is known offline (its
//! shares are fixed before the input exists), the server's m_s online.
//! Offline, one OT per value with the *server* choosing a random bit b:
//! OT extension gives the client two keys K₀, K₁ and the server K_b; the
//! client sends u = K₀ − K₁ + m_c, so the server holds S = K_b + b·u =
//! K₀ + b·m_c and the client −K₀: shares of b·m_c. Online the server sends
//! the bit d = m_s ⊕ b; since m_s·m_c = b·m_c if d = 0 and m_c − b·m_c if
//! d = 1, both sides turn their shares into shares of m_s·m_c locally. The
//! server learns nothing (u is masked by the key it lacks), the client a
//! uniformly random bit.
//!
//! Cost: 16 bytes of OT extension and 8 bytes of u per value offline (plus
//! 128 base OTs per bundle), **one bit per value online**, no garbled circuit.

use rand::{CryptoRng, Rng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::block::{Block, TweakHash};
use crate::channel::Channel;
use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::field::{F, HALF, P};
use crate::ot::{CotReceiver, CotSender};

/// log₂ of the offset B: values must satisfy |v| < 2^38 − 2^f.
pub const OFFSET_BITS: u32 = 38;

/// The most values one bundle truncates.
pub const MAX_VALUES: usize = 1 << 24;

/// The largest truncation (bits dropped).
pub const MAX_SHIFT: u32 = 36;

/// The smallest truncation (bits dropped). The result is the floor or the
/// ceiling of v/2^shift, except that when the low `shift` bits of v are all
/// ones it can be one more than the ceiling, with probability about
/// 2^-(shift+0.4) (measured: 0.29 % at 8 bits, 0.02 % at 12): within one
/// unit of v/2^shift rounded to nearest either way, but a relative error
/// that only small shifts make noticeable; they are refused.
pub const MIN_SHIFT: u32 = 8;

/// The largest |v| the protocol truncates faithfully for a given shift.
pub fn max_abs(shift: u32) -> u64 {
    (1u64 << OFFSET_BITS) - (1u64 << shift)
}

/// The deterministic rule closest to the protocol: signed(v)/2^shift rounded
/// to nearest (ties up). The protocol rounds stochastically without bias, so
/// its result is this or one unit away.
pub fn trunc_reference(v: F, shift: u32) -> F {
    if shift == 0 {
        return v;
    }
    F::from_i64((v.to_signed() + (1 << (shift - 1))) >> shift)
}

// The rounding argument above needs p ≡ 1 (mod 2^MAX_SHIFT).
const _: () = assert!(P % (1 << MAX_SHIFT) == 1);

fn msb(x: F) -> bool {
    x.value() > HALF
}

fn key_to_field(h: &TweakHash, k: Block, i: usize) -> F {
    F::from_u128(h.hash(k, i as u128).0)
}

fn check(n: usize, shift: u32) -> Result<()> {
    if n == 0 || n > MAX_VALUES {
        return Err(Error::InvalidArgument(format!(
            "{n} values in one truncation bundle (1 to {MAX_VALUES})"
        )));
    }
    if !(MIN_SHIFT..=MAX_SHIFT).contains(&shift) {
        return Err(Error::InvalidArgument(format!(
            "truncation by {shift} bits ({MIN_SHIFT} to {MAX_SHIFT})"
        )));
    }
    Ok(())
}

/// The server's offset: B plus one unit of the result (which makes the
/// share-wise floor an unbiased stochastic rounding).
fn server_offset(shift: u32) -> F {
    F::from_u64((1 << OFFSET_BITS) + (1 << shift))
}

/// Server's half of an offline truncation bundle.
pub struct ServerTruncBundle {
    n: usize,
    shift: u32,
    inner: ServerSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct ServerSecrets {
    id: [u8; 16],
    /// The random OT choice b per value.
    choice: Vec<bool>,
    /// S = K₀ + b·m_c per value.
    prod: Vec<F>,
}

/// Client's half of an offline truncation bundle.
pub struct ClientTruncBundle {
    n: usize,
    shift: u32,
    inner: ClientSecrets,
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct ClientSecrets {
    id: [u8; 16],
    /// The client's shares.
    shares: Vec<F>,
    /// K₀ per value.
    keys: Vec<F>,
}

crate::redacted_debug!(
    ServerTruncBundle { values: n, shift: shift },
    ClientTruncBundle { values: n, shift: shift },
);

/// Offline phase, server side, for `n` values truncated by `shift` bits.
pub fn server_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    n: usize,
    shift: u32,
    rng: &mut R,
) -> Result<ServerTruncBundle> {
    check(n, shift)?;
    ch.agree_u64("truncation count", n as u64)?;
    ch.agree_u64("truncation shift", shift as u64)?;
    let (id, hash_key) = ch.start_bundle(rng)?;
    let mut cot = CotReceiver::setup(ch, rng)?;
    let choice: Vec<bool> = (0..n).map(|_| rng.gen()).collect();
    let mut t = cot.receive(ch, &choice)?;
    let mut u = vec![F::ZERO; n];
    ch.recv_fields(&mut u)?;
    let h = TweakHash::new(hash_key);
    let prod = t
        .iter()
        .zip(&choice)
        .zip(&u)
        .enumerate()
        .map(|(i, ((ti, &b), ui))| {
            let k = key_to_field(&h, *ti, i);
            if b {
                k + *ui
            } else {
                k
            }
        })
        .collect();
    t.zeroize();
    u.zeroize();
    Ok(ServerTruncBundle { n, shift, inner: ServerSecrets { id, choice, prod } })
}

/// Offline phase, client side: `shares` are the client's (offline-known)
/// shares of the values to truncate.
pub fn client_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    shift: u32,
    rng: &mut R,
) -> Result<ClientTruncBundle> {
    let n = shares.len();
    check(n, shift)?;
    ch.agree_u64("truncation count", n as u64)?;
    ch.agree_u64("truncation shift", shift as u64)?;
    let (id, hash_key) = ch.join_bundle()?;
    let mut cot = CotSender::setup(ch, rng)?;
    let mut q = cot.send(ch, n)?;
    let delta = cot.delta();
    let h = TweakHash::new(hash_key);
    let mut keys = Vec::with_capacity(n);
    let mut u = Vec::with_capacity(n);
    for (i, (qi, c)) in q.iter().zip(shares).enumerate() {
        let k0 = key_to_field(&h, *qi, i);
        let k1 = key_to_field(&h, *qi ^ delta, i);
        u.push(k0 - k1 + F::from_u64(msb(*c) as u64));
        keys.push(k0);
    }
    ch.send_fields(&u)?;
    ch.flush()?;
    q.zeroize();
    u.zeroize();
    Ok(ClientTruncBundle { n, shift, inner: ClientSecrets { id, shares: shares.to_vec(), keys } })
}

crate::impl_bundle_len!("values": ServerTruncBundle, ClientTruncBundle);

impl ServerTruncBundle {
    /// Online phase, server side: sends one field element per value and
    /// returns the server's shares of the truncated values. Takes the
    /// bundle by value, so a second use does not compile:
    ///
    /// ```compile_fail
    /// # fn twice(b: delphi_crypto::trunc::ServerTruncBundle, ch: &mut delphi_crypto::channel::MemChannel) {
    /// let _ = b.online(ch, &[]);
    /// let _ = b.online(ch, &[]); // error: use of moved value
    /// # }
    /// ```
    pub fn online<C: Channel>(self, ch: &mut C, shares: &[F]) -> Result<Vec<F>> {
        let s = self.inner;
        if shares.len() != self.n {
            return Err(Error::InvalidArgument(format!(
                "{} server shares for a truncation bundle of {}",
                shares.len(),
                self.n
            )));
        }
        let f = self.shift;
        let off = server_offset(f);
        let p1 = F::from_u64(P >> f);
        let back = F::from_u64(1 << (OFFSET_BITS - f));
        let mut bits = vec![0u8; self.n.div_ceil(8)];
        let mut out = Vec::with_capacity(self.n);
        for (i, ((x, &b), prod)) in shares.iter().zip(&s.choice).zip(&s.prod).enumerate() {
            let sp = *x + off;
            let ms = msb(sp);
            let d = ms ^ b;
            bits[i / 8] |= (d as u8) << (i % 8);
            let p = if d { -*prod } else { *prod };
            let w = F::from_u64(ms as u64) - p;
            out.push(F::from_u64(sp.value() >> f) - w * p1 - back);
        }
        ch.send_bytes(&s.id)?;
        ch.send_bytes(&bits)?;
        ch.flush()?;
        Ok(out)
    }
}

impl ClientTruncBundle {
    /// Online phase, client side: returns the client's shares of the
    /// truncated values. Takes the bundle by value (a second use does not
    /// compile).
    pub fn online<C: Channel>(self, ch: &mut C) -> Result<Vec<F>> {
        let s = self.inner;
        ch.expect_bundle_id(&s.id)?;
        let mut bits = vec![0u8; self.n.div_ceil(8)];
        ch.recv_bytes(&mut bits)?;
        let f = self.shift;
        let p1 = F::from_u64(P >> f);
        let out = s
            .shares
            .iter()
            .zip(&s.keys)
            .enumerate()
            .map(|(i, (c, k0))| {
                let m = F::from_u64(msb(*c) as u64);
                let d = (bits[i / 8] >> (i % 8)) & 1 == 1;
                let p = if d { m + *k0 } else { -*k0 };
                let w = m - p;
                F::from_u64(c.value() >> f) - w * p1
            })
            .collect();
        Ok(out)
    }
}

crate::codec::impl_stored!(ServerTruncBundle, ClientTruncBundle);

const SERVER_TAG: u64 = u64::from_le_bytes(*b"dlTRCs01");
const CLIENT_TAG: u64 = u64::from_le_bytes(*b"dlTRCc01");

/// Reads a bundle's head: the count, the shift and the id.
fn load_head<R: std::io::Read>(
    d: &mut Decoder<R>,
    tag: u64,
    not_tagged: &'static str,
) -> Result<(usize, u32, [u8; 16])> {
    let n = d.head(tag, MAX_VALUES, not_tagged, "stored truncation count")?;
    let shift = d.u64_at_most(MAX_SHIFT as u64, "stored truncation shift")? as u32;
    check(n, shift)?;
    Ok((n, shift, d.id()?))
}

impl ServerTruncBundle {
    /// Writes the bundle (secrets included). A consumed bundle cannot be stored.
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        e.head(SERVER_TAG, self.n, &[self.shift as u64], &s.id)?;
        let bits: Vec<F> = s.choice.iter().map(|&b| F::from_u64(b as u64)).collect();
        e.fields(&bits)?;
        e.fields(&s.prod)
    }

    /// Reads a bundle written by [`ServerTruncBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        let (n, shift, id) = load_head(d, SERVER_TAG, "not a stored server truncation bundle")?;
        let mut bits = d.fields(n, "stored OT choices")?;
        if bits.iter().any(|b| b.value() > 1) {
            return Err(Error::Stored { what: "stored OT choice is not a bit" });
        }
        let choice = bits.iter().map(|b| b.value() == 1).collect();
        bits.zeroize();
        let prod = d.fields(n, "stored OT products")?;
        Ok(ServerTruncBundle { n, shift, inner: ServerSecrets { id, choice, prod } })
    }
}

impl ClientTruncBundle {
    /// Writes the bundle (secrets included).
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        e.head(CLIENT_TAG, self.n, &[self.shift as u64], &s.id)?;
        e.fields(&s.shares)?;
        e.fields(&s.keys)
    }

    /// Reads a bundle written by [`ClientTruncBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        let (n, shift, id) = load_head(d, CLIENT_TAG, "not a stored client truncation bundle")?;
        let shares = d.fields(n, "stored shares")?;
        let keys = d.fields(n, "stored OT keys")?;
        Ok(ClientTruncBundle { n, shift, inner: ClientSecrets { id, shares, keys } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::MemChannel;
    use rand::{Rng, SeedableRng};

    fn run(values: &[i64], shift: u32, seed: u64) -> Vec<i64> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let client: Vec<F> = values.iter().map(|_| F::random(&mut rng)).collect();
        let server: Vec<F> =
            values.iter().zip(&client).map(|(v, c)| F::from_i64(*v) - *c).collect();
        let (mut a, mut b) = MemChannel::pair();
        let n = values.len();
        let h = std::thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed + 1);
            let stored = server_offline(&mut a, n, shift, &mut rng).unwrap();
            let mut e = Encoder::new(Vec::new());
            stored.store(&mut e).unwrap();
            let buf = e.into_inner();
            let bundle = ServerTruncBundle::load(&mut Decoder::new(&buf[..])).unwrap();
            // A second use does not compile (see `online`'s example).
            bundle.online(&mut a, &server).unwrap()
        });
        let stored = client_offline(&mut b, &client, shift, &mut rng).unwrap();
        let mut e = Encoder::new(Vec::new());
        stored.store(&mut e).unwrap();
        let buf = e.into_inner();
        let cb = ClientTruncBundle::load(&mut Decoder::new(&buf[..])).unwrap();
        assert!(ServerTruncBundle::load(&mut Decoder::new(&buf[..])).is_err());
        let mine = cb.online(&mut b).unwrap();
        let theirs = h.join().unwrap();
        mine.iter().zip(&theirs).map(|(a, b)| (*a + *b).to_signed()).collect()
    }

    #[test]
    fn within_one_unit_everywhere_in_range() {
        for shift in [8, 12, 20, 28] {
            let m = max_abs(shift) as i64;
            let mut values = vec![0, 1, -1, m, -m, m - 1, -m + 1, 1 << shift, -(1 << shift)];
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(shift as u64);
            values.extend((0..3000).map(|_| rng.gen_range(-m..=m)));
            values.extend((0..1000).map(|_| rng.gen_range(-(1i64 << 24)..(1 << 24))));
            let got = run(&values, shift, 40 + shift as u64);
            for (v, g) in values.iter().zip(&got) {
                let want = trunc_reference(F::from_i64(*v), shift).to_signed();
                assert!((g - want).abs() <= 1, "{v} >> {shift}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn all_ones_low_bits_can_round_past_the_ceiling_but_stay_within_one_unit() {
        // v ≡ −1 (mod 2^8): v/2^8 = 4.996..., floor 4, nearest 5; the
        // protocol gives 5, or rarely 6 (never 4).
        let v = 5 * 256 - 1;
        let got = run(&vec![v; 20000], 8, 77);
        let above = got.iter().filter(|g| **g == 6).count();
        assert!(got.iter().all(|g| *g == 5 || *g == 6), "{got:?}");
        assert!(above > 0 && above < 200, "{above} of 20000 past the ceiling");
    }

    #[test]
    fn rounding_is_unbiased() {
        // v/2^12 = 3.25 and −7.75: the mean of many truncations must be close
        // to the true quotient (a biased rule would be off by about 0.5).
        for (v, want) in [(13 << 10, 3.25f64), (-(31 << 10), -7.75)] {
            let got = run(&vec![v; 4000], 12, 9);
            assert!(got.iter().all(|g| (*g as f64 - want).abs() < 1.0));
            let mean = got.iter().sum::<i64>() as f64 / got.len() as f64;
            assert!((mean - want).abs() < 0.05, "{v}: mean {mean}, want {want}");
        }
    }

    #[test]
    fn shares_at_the_wrap_point() {
        // Client shares right at msb boundaries: every (m_c, m_s) combination.
        let shift = 12;
        for &c in &[0, 1, HALF - 1, HALF, HALF + 1, P - 1] {
            for &v in &[0i64, 5 << 12, -(5 << 12), 1 << 37, -(1 << 37)] {
                let cf = F::from_u64(c);
                let sf = F::from_i64(v) - cf;
                let (mut a, mut b) = MemChannel::pair();
                let h = std::thread::spawn(move || {
                    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
                    let s = server_offline(&mut a, 1, shift, &mut rng).unwrap();
                    s.online(&mut a, &[sf]).unwrap()[0]
                });
                let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
                let cb = client_offline(&mut b, &[cf], shift, &mut rng).unwrap();
                let got = (cb.online(&mut b).unwrap()[0] + h.join().unwrap()).to_signed();
                let want = trunc_reference(F::from_i64(v), shift).to_signed();
                assert!((got - want).abs() <= 1, "c={c} v={v}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn online_is_one_bit_per_value() {
        use crate::channel::Counting;
        let n = 1001;
        let (a, b) = MemChannel::pair();
        let (mut a, mut b) = (Counting::new(a), Counting::new(b));
        let h = std::thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
            let s = server_offline(&mut a, n, 12, &mut rng).unwrap();
            let before = a.stats();
            s.online(&mut a, &vec![F::ONE; n]).unwrap();
            a.stats().since(&before)
        });
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
        let c = client_offline(&mut b, &vec![F::ZERO; n], 12, &mut rng).unwrap();
        c.online(&mut b).unwrap();
        let sent = h.join().unwrap();
        assert_eq!(sent.sent, 16 + n.div_ceil(8) as u64);
        assert_eq!(sent.received, 0);
    }

    #[test]
    fn rejects_bad_parameters() {
        let (mut a, _b) = MemChannel::pair();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        assert!(server_offline(&mut a, 0, 8, &mut rng).is_err());
        assert!(server_offline(&mut a, 4, 0, &mut rng).is_err());
        assert!(server_offline(&mut a, 4, MAX_SHIFT + 1, &mut rng).is_err());
        assert!(server_offline(&mut a, 4, MIN_SHIFT - 1, &mut rng).is_err());
    }
}
