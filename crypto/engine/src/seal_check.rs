//! Checks every SEAL object that comes from the peer *before* SEAL sees it.
//!
//! SEAL's own loader trusts the size a compressed object declares: a 10 KiB
//! zstd frame that inflates to gigabytes is decompressed in full before any
//! check runs (a decompression bomb). Here, for each object in SEAL's format
//! (the client's public key, the one the protocol sends so; fresh
//! ciphertexts and results, though the protocol sends both in compact forms
//! of its own, [`crate::he::ServerHe::fresh_from_wire`],
//! [`crate::he::ClientHe::result_from_wire`]), the exact uncompressed layout
//! is known from the agreed parameters, so:
//!
//! * the outer header must be SEAL's (magic, header size, this SEAL major
//!   version), with compression `none` or `zstd` only (zlib is refused: no
//!   party here sends it), and declare exactly the frame's length;
//! * zstd data is inflated here, with a 4 MiB window limit, reading at most
//!   one byte more than the object's exact size;
//! * the inflated object must have that exact size and layout: 2 polynomials
//!   (never more: a size-3 ciphertext is refused), degree N, the number of
//!   coefficient primes of its level, the expected NTT form;
//! * SEAL then loads the *uncompressed* bytes (and checks the parameter id
//!   and every coefficient against the moduli itself).
//!
//! Layout (SEAL 4, `Ciphertext::save_members`, uncompressed): a 16-byte
//! header; parms_id (32 bytes), is_ntt_form (1), size (u64), degree (u64),
//! coefficient-modulus count (u64), scale (f64), correction factor (u64);
//! then the coefficient array with its own 16-byte header, its length (u64)
//! and `size · degree · count` 64-bit words.

use std::io::Read;

use crate::error::{EngineError, Result};
use crate::params::N;

const MAGIC: u16 = 0xA15E;
/// Bytes of a SEAL header (every serialised object, and its arrays, start with one).
pub(crate) const HEADER: usize = 16;
/// SEAL's `compr_mode_type` values (byte 5 of the header).
mod compr {
    pub(super) const NONE: u8 = 0;
    pub(super) const ZLIB: u8 = 1;
    pub(super) const ZSTD: u8 = 2;
}
/// SEAL's major version (the only one whose layout is checked here).
const SEAL_MAJOR: u8 = 4;
/// Bytes of `Ciphertext::save_members` before the coefficient array.
const CT_MEMBERS: usize = 32 + 1 + 8 + 8 + 8 + 8 + 8;
/// The largest zstd window accepted (2^22 = 4 MiB): the decoder's memory.
const WINDOW_LOG_MAX: u32 = 22;

/// A SEAL object the protocol expects from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The client's public key (key level: every prime, NTT form).
    PublicKey,
    /// A fresh encryption from the client (top data level).
    Fresh,
    /// A result from the server (the lowest level, after modulus switching).
    Result,
}

impl Expect {
    fn what(self) -> &'static str {
        match self {
            Expect::PublicKey => "public key",
            Expect::Fresh => "ciphertext",
            Expect::Result => "result ciphertext",
        }
    }

    /// Coefficient primes at this object's level.
    fn primes(self) -> usize {
        let all = crate::params::COEFF_BITS.len();
        match self {
            Expect::PublicKey => all,
            Expect::Fresh => all - 1,
            Expect::Result => all - 1 - crate::params::RESULT_LEVEL_DROPS,
        }
    }

    fn ntt(self) -> bool {
        matches!(self, Expect::PublicKey)
    }

    fn words(self) -> usize {
        2 * N * self.primes()
    }

    /// Where the coefficients start in the uncompressed serialised object
    /// (after the outer header, the members and the array's header and length).
    pub fn coefficients_at(self) -> usize {
        HEADER + CT_MEMBERS + HEADER + 8
    }

    /// The exact size of the uncompressed serialised object.
    pub fn plain_len(self) -> usize {
        self.coefficients_at() + 8 * self.words()
    }

    /// The largest frame accepted for it (zstd's worst-case expansion of
    /// incompressible data is well under 1 %).
    pub fn max_frame(self) -> u64 {
        let n = self.plain_len();
        (n + n / 64 + 4096) as u64
    }
}

fn refuse(expect: Expect, reason: impl Into<String>) -> EngineError {
    EngineError::HeObject { what: expect.what(), reason: reason.into() }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

/// Checks the outer SEAL header of `bytes`; returns its compression mode.
fn outer_header(bytes: &[u8], expect: Expect) -> Result<u8> {
    if bytes.len() < HEADER {
        return Err(refuse(expect, format!("{} bytes is too short", bytes.len())));
    }
    if u16::from_le_bytes([bytes[0], bytes[1]]) != MAGIC || bytes[2] as usize != HEADER {
        return Err(refuse(expect, "not a SEAL object (bad magic or header size)"));
    }
    if bytes[3] != SEAL_MAJOR {
        return Err(refuse(
            expect,
            format!("SEAL version {}.x, expected {SEAL_MAJOR}.x", bytes[3]),
        ));
    }
    let declared = u64_at(bytes, 8);
    if declared != bytes.len() as u64 {
        return Err(refuse(
            expect,
            format!("declares {declared} bytes but the frame holds {}", bytes.len()),
        ));
    }
    match bytes[5] {
        m @ (compr::NONE | compr::ZSTD) => Ok(m),
        compr::ZLIB => Err(refuse(expect, "zlib compression is not accepted")),
        m => Err(refuse(expect, format!("unknown compression mode {m}"))),
    }
}

/// Checks a peer's serialised SEAL object and returns it uncompressed, ready
/// for SEAL's loader. Never allocates more than the object's exact size.
pub fn checked(bytes: &[u8], expect: Expect) -> Result<Vec<u8>> {
    if bytes.len() as u64 > expect.max_frame() {
        return Err(refuse(
            expect,
            format!("{} bytes, more than the {} it can take", bytes.len(), expect.max_frame()),
        ));
    }
    let want = expect.plain_len();
    let plain = match outer_header(bytes, expect)? {
        compr::NONE => bytes.to_vec(),
        _ => {
            let mut out = Vec::with_capacity(want);
            out.extend_from_slice(&bytes[..HEADER]);
            out[5] = compr::NONE;
            let mut dec = zstd::stream::read::Decoder::with_buffer(&bytes[HEADER..])
                .and_then(|mut d| {
                    d.window_log_max(WINDOW_LOG_MAX)?;
                    Ok(d)
                })
                .map_err(|e| refuse(expect, format!("zstd: {e}")))?;
            let limit = (want - HEADER + 1) as u64;
            (&mut dec)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| refuse(expect, format!("zstd: {e}")))?;
            let len = out.len() as u64;
            out[8..16].copy_from_slice(&len.to_le_bytes());
            out
        }
    };
    if plain.len() != want {
        return Err(refuse(
            expect,
            format!(
                "inflates to {}{} bytes; the agreed parameters give exactly {want}",
                plain.len(),
                if plain.len() > want { "+" } else { "" }
            ),
        ));
    }
    let body = &plain[HEADER..];
    let ntt = body[32];
    let size = u64_at(body, 33);
    let degree = u64_at(body, 41);
    let primes = u64_at(body, 49);
    if size != 2 {
        return Err(refuse(expect, format!("{size} polynomials; the protocol uses exactly 2")));
    }
    if degree != N as u64 || primes != expect.primes() as u64 {
        return Err(refuse(
            expect,
            format!("degree {degree} with {primes} primes; expected {N} with {}", expect.primes()),
        ));
    }
    if ntt != u8::from(expect.ntt()) {
        return Err(refuse(expect, "wrong NTT form"));
    }
    let array = &body[CT_MEMBERS..];
    let array_len = (HEADER + 8 + 8 * expect.words()) as u64;
    if u16::from_le_bytes([array[0], array[1]]) != MAGIC
        || array[5] != compr::NONE
        || u64_at(array, 8) != array_len
        || u64_at(array, HEADER) != expect.words() as u64
    {
        return Err(refuse(expect, "malformed coefficient array header"));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::he::{ClientHe, ServerHe};
    use delphi_crypto::field::F;
    use std::io::Write;

    fn seal_header(mode: u8, total: usize) -> Vec<u8> {
        let mut h = vec![0u8; HEADER];
        h[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        h[2] = HEADER as u8;
        h[3] = SEAL_MAJOR;
        h[5] = mode;
        h[8..16].copy_from_slice(&(total as u64).to_le_bytes());
        h
    }

    /// A zstd frame of `inflated` zero bytes behind a SEAL header.
    fn zstd_bomb(inflated: usize, level: i32) -> Vec<u8> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..inflated >> 20 {
            enc.write_all(&zeros).unwrap();
        }
        let body = enc.finish().unwrap();
        let mut out = seal_header(compr::ZSTD, HEADER + body.len());
        out.extend(body);
        out
    }

    #[test]
    fn our_own_objects_pass_and_load() {
        let client = ClientHe::new().unwrap();
        let pk = client.public_key_bytes().unwrap();
        assert_eq!(checked(&pk, Expect::PublicKey).unwrap().len(), Expect::PublicKey.plain_len());
        let server = ServerHe::new(&pk).unwrap();
        let packing = crate::he::Packing::new(&delphi_net::linear::LinearOp::dense(10, 3)).unwrap();
        let r: Vec<F> = (0..10).map(F::from_u64).collect();
        let fresh = client.encrypt_input(&packing, &r).unwrap();
        let cts = vec![server.fresh_from_wire(&fresh[0]).unwrap()];
        // A fresh ciphertext in SEAL's format passes as one, not as a
        // result, and the other way round.
        let bytes = ServerHe::to_bytes(&cts[0]).unwrap();
        assert_eq!(checked(&bytes, Expect::Fresh).unwrap().len(), Expect::Fresh.plain_len());
        assert!(matches!(checked(&bytes, Expect::Result), Err(EngineError::HeObject { .. })));
        let (res, _) = server.linear(&packing, &[1; 30], &cts, &mut rand::thread_rng()).unwrap();
        let rb = ServerHe::to_bytes(&res[0]).unwrap();
        assert!(checked(&rb, Expect::Fresh).is_err());
        let back = client.result_from_bytes(&rb).unwrap();
        assert!(client.noise_budget(&back).unwrap() > 0);
    }

    #[test]
    fn bombs_and_lies_are_refused_by_name() {
        for expect in [Expect::PublicKey, Expect::Fresh, Expect::Result] {
            let bomb = zstd_bomb(64 << 20, 1);
            assert!(bomb.len() < 48 << 10, "a bomb frame is small");
            let e = checked(&bomb, expect).unwrap_err();
            assert!(e.to_string().contains("inflates to"), "{expect:?}: {e}");
            // A frame that asks for a large window is refused before inflating.
            let wide = zstd_bomb(64 << 20, 19);
            let e = checked(&wide, expect).unwrap_err();
            assert!(e.to_string().contains("too much memory"), "{expect:?}: {e}");
            // zlib is refused before anything is inflated.
            let mut z = bomb.clone();
            z[5] = compr::ZLIB;
            assert!(checked(&z, expect).unwrap_err().to_string().contains("zlib"));
            // A header that lies about the length.
            let mut lie = bomb.clone();
            lie[8] ^= 1;
            assert!(checked(&lie, expect).unwrap_err().to_string().contains("declares"));
        }
    }

    #[test]
    fn a_third_polynomial_is_refused() {
        let client = ClientHe::new().unwrap();
        let server = ServerHe::new(&client.public_key_bytes().unwrap()).unwrap();
        let packing = crate::he::Packing::new(&delphi_net::linear::LinearOp::dense(10, 3)).unwrap();
        let r: Vec<F> = (0..10).map(F::from_u64).collect();
        let fresh =
            server.fresh_from_wire(&client.encrypt_input(&packing, &r).unwrap()[0]).unwrap();
        let mut plain = checked(&ServerHe::to_bytes(&fresh).unwrap(), Expect::Fresh).unwrap();
        plain[HEADER + 33] = 3;
        let e = checked(&plain, Expect::Fresh).unwrap_err();
        assert!(e.to_string().contains("3 polynomials"), "{e}");
    }
}
