//! Byte channels between the two parties.
//!
//! One small trait, [`Channel`], with typed helpers as default methods; TCP
//! ([`TcpChannel`]) and in-memory ([`MemChannel`]) transports; and a
//! [`Counting`] decorator that records bytes and rounds, which the cost model
//! reads. Frames carry a length prefix that is checked against a bound before
//! anything is allocated.

mod counting;
mod mem;
mod tcp;
pub mod tls;

pub use counting::{CommStats, Counting};
pub use mem::MemChannel;
pub use tcp::TcpChannel;
pub use tls::TlsClient;

use crate::block::Block;
use crate::error::{Error, Result};
use crate::field::F;

/// The default bound on a single length-prefixed frame: 64 MiB.
pub const DEFAULT_MAX_FRAME: u64 = 64 << 20;

/// Bytes per field element on the wire: p < 2^41 fits in six.
pub const FIELD_BYTES: usize = 6;
const _: () = assert!(crate::field::P < 1 << (8 * FIELD_BYTES));

/// A reliable, ordered, bidirectional byte stream to the other party.
///
/// Writes may be buffered: a party must [`Channel::flush`] before it waits
/// for the peer's answer.
pub trait Channel {
    /// Sends all of `buf`.
    fn send_bytes(&mut self, buf: &[u8]) -> Result<()>;
    /// Fills all of `buf` from the stream.
    fn recv_bytes(&mut self, buf: &mut [u8]) -> Result<()>;
    /// Pushes buffered data to the peer.
    fn flush(&mut self) -> Result<()>;
    /// The largest frame [`Channel::recv_frame`] accepts.
    fn max_frame(&self) -> u64 {
        DEFAULT_MAX_FRAME
    }
    /// Bytes moved so far in both directions, where the channel counts them
    /// (the [`Counting`] decorator does); used for per-layer reports.
    fn counted_bytes(&self) -> Option<u64> {
        None
    }

    /// Sends a `u64` (little endian).
    fn send_u64(&mut self, v: u64) -> Result<()> {
        self.send_bytes(&v.to_le_bytes())
    }

    /// Receives a `u64`.
    fn recv_u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.recv_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Starts an offline bundle on the side that owns it: draws a fresh
    /// 16-byte bundle id and a fresh public hash key, and sends both.
    fn start_bundle<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        rng: &mut R,
    ) -> Result<([u8; 16], Block)>
    where
        Self: Sized,
    {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let hash_key = Block::random(rng);
        self.send_bytes(&id)?;
        self.send_block(hash_key)?;
        self.flush()?;
        Ok((id, hash_key))
    }

    /// The other side of [`Channel::start_bundle`]: the bundle's id and hash key.
    fn join_bundle(&mut self) -> Result<([u8; 16], Block)> {
        let mut id = [0u8; 16];
        self.recv_bytes(&mut id)?;
        Ok((id, self.recv_block()?))
    }

    /// Receives the 16-byte id an online message starts with and checks
    /// (in constant time) that it is `id`, the offline bundle's: a message
    /// for another bundle is refused before anything of it is used.
    fn expect_bundle_id(&mut self, id: &[u8; 16]) -> Result<()> {
        let mut got = [0u8; 16];
        self.recv_bytes(&mut got)?;
        if bool::from(subtle::ConstantTimeEq::ct_eq(&got[..], &id[..])) {
            Ok(())
        } else {
            Err(crate::error::Error::Malformed {
                what: "online message belongs to a different offline bundle",
            })
        }
    }

    /// Sends a block.
    fn send_block(&mut self, b: Block) -> Result<()> {
        self.send_bytes(&b.to_bytes())
    }

    /// Receives a block.
    fn recv_block(&mut self) -> Result<Block> {
        let mut b = [0u8; 16];
        self.recv_bytes(&mut b)?;
        Ok(Block::from_bytes(b))
    }

    /// Sends many blocks.
    fn send_blocks(&mut self, bs: &[Block]) -> Result<()> {
        #[cfg(target_endian = "little")]
        {
            self.send_bytes(crate::block::blocks_as_bytes(bs))
        }
        #[cfg(not(target_endian = "little"))]
        {
            for b in bs {
                self.send_block(*b)?;
            }
            Ok(())
        }
    }

    /// Fills `bs` with blocks from the stream.
    fn recv_blocks(&mut self, bs: &mut [Block]) -> Result<()> {
        #[cfg(target_endian = "little")]
        {
            self.recv_bytes(crate::block::blocks_as_bytes_mut(bs))
        }
        #[cfg(not(target_endian = "little"))]
        {
            for b in bs.iter_mut() {
                *b = self.recv_block()?;
            }
            Ok(())
        }
    }

    /// Sends field elements, [`FIELD_BYTES`] bytes each, little-endian
    /// (no allocation).
    fn send_fields(&mut self, xs: &[F]) -> Result<()> {
        let mut buf = [0u8; 64 * FIELD_BYTES];
        for chunk in xs.chunks(64) {
            for (c, x) in buf.chunks_exact_mut(FIELD_BYTES).zip(chunk) {
                c.copy_from_slice(&x.value().to_le_bytes()[..FIELD_BYTES]);
            }
            self.send_bytes(&buf[..chunk.len() * FIELD_BYTES])?;
        }
        Ok(())
    }

    /// Receives `out.len()` field elements; a value at or above p is rejected.
    fn recv_fields(&mut self, out: &mut [F]) -> Result<()> {
        let mut buf = [0u8; 64 * FIELD_BYTES];
        for chunk in out.chunks_mut(64) {
            let bytes = &mut buf[..chunk.len() * FIELD_BYTES];
            self.recv_bytes(bytes)?;
            for (o, c) in chunk.iter_mut().zip(bytes.chunks_exact(FIELD_BYTES)) {
                let mut w = [0u8; 8];
                w[..FIELD_BYTES].copy_from_slice(c);
                *o = F::new(u64::from_le_bytes(w))
                    .ok_or(Error::Malformed { what: "field element not below the modulus" })?;
            }
        }
        Ok(())
    }

    /// Sends a length-prefixed frame.
    fn send_frame(&mut self, payload: &[u8]) -> Result<()> {
        self.send_u64(payload.len() as u64)?;
        self.send_bytes(payload)
    }

    /// Receives a length-prefixed frame of at most [`Channel::max_frame`] bytes.
    fn recv_frame(&mut self) -> Result<Vec<u8>> {
        let max = self.max_frame();
        self.recv_frame_bounded(max)
    }

    /// Receives a length-prefixed frame of at most `max` bytes. A larger
    /// announced length is an error before any allocation.
    fn recv_frame_bounded(&mut self, max: u64) -> Result<Vec<u8>> {
        let len = self.recv_u64()?;
        if len > max.min(self.max_frame()) {
            return Err(Error::FrameTooLarge { len, max: max.min(self.max_frame()) });
        }
        let len = usize::try_from(len).map_err(|_| Error::FrameTooLarge { len, max })?;
        let mut buf = vec![0u8; len];
        self.recv_bytes(&mut buf)?;
        Ok(buf)
    }

    /// Checks that the peer agrees on a parameter: sends ours, reads theirs.
    ///
    /// Both sides send first, so the channel must buffer at least 8 bytes
    /// (every transport here does).
    fn agree_u64(&mut self, what: &'static str, ours: u64) -> Result<()> {
        self.send_u64(ours)?;
        self.flush()?;
        let theirs = self.recv_u64()?;
        if theirs != ours {
            return Err(Error::Mismatch { what, ours, theirs });
        }
        Ok(())
    }
}

impl<C: Channel + ?Sized> Channel for &mut C {
    fn send_bytes(&mut self, buf: &[u8]) -> Result<()> {
        (**self).send_bytes(buf)
    }
    fn recv_bytes(&mut self, buf: &mut [u8]) -> Result<()> {
        (**self).recv_bytes(buf)
    }
    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
    fn max_frame(&self) -> u64 {
        (**self).max_frame()
    }
    fn counted_bytes(&self) -> Option<u64> {
        (**self).counted_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;
    use std::time::Duration;

    /// A generic two-party harness: runs `a` and `b` on a connected pair.
    fn both<C: Channel + Send + 'static>(
        (x, y): (C, C),
        a: impl FnOnce(C) -> Result<()> + Send + 'static,
        b: impl FnOnce(C) -> Result<()> + Send + 'static,
    ) -> (Result<()>, Result<()>) {
        let h = thread::spawn(move || a(x));
        let rb = b(y);
        (h.join().expect("thread"), rb)
    }

    fn tcp_pair() -> (TcpChannel, TcpChannel) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || TcpChannel::connect(addr).unwrap());
        let (s, _) = l.accept().unwrap();
        (TcpChannel::new(s).unwrap(), h.join().unwrap())
    }

    fn round_trip<C: Channel + Send + 'static>(pair: (C, C)) {
        let (ra, rb) = both(
            pair,
            |mut c| {
                c.send_u64(17)?;
                c.send_blocks(&[Block(1), Block(u128::MAX)])?;
                c.send_frame(b"hello")?;
                c.send_fields(&[F::from_u64(5)])?;
                c.flush()?;
                assert_eq!(c.recv_u64()?, 99);
                Ok(())
            },
            |mut c| {
                assert_eq!(c.recv_u64()?, 17);
                let mut bs = [Block::ZERO; 2];
                c.recv_blocks(&mut bs)?;
                assert_eq!(bs, [Block(1), Block(u128::MAX)]);
                assert_eq!(c.recv_frame()?, b"hello");
                let mut f = [F::ZERO];
                c.recv_fields(&mut f)?;
                assert_eq!(f[0], F::from_u64(5));
                c.send_u64(99)?;
                c.flush()
            },
        );
        ra.unwrap();
        rb.unwrap();
    }

    #[test]
    fn round_trip_over_memory_and_tcp() {
        round_trip(MemChannel::pair());
        round_trip(tcp_pair());
    }

    fn oversized_frame_is_rejected<C: Channel + Send + 'static>(pair: (C, C)) {
        let (ra, rb) = both(
            pair,
            |mut c| {
                // A prefix claiming 2^60 bytes: must fail before allocating.
                c.send_u64(1 << 60)?;
                c.flush()
            },
            |mut c| match c.recv_frame() {
                Err(Error::FrameTooLarge { len, max }) => {
                    assert_eq!(len, 1 << 60);
                    assert_eq!(max, DEFAULT_MAX_FRAME);
                    Ok(())
                }
                other => panic!("expected FrameTooLarge, got {other:?}"),
            },
        );
        ra.unwrap();
        rb.unwrap();
    }

    #[test]
    fn oversized_frames_are_errors_on_both_transports() {
        oversized_frame_is_rejected(MemChannel::pair());
        oversized_frame_is_rejected(tcp_pair());
    }

    #[test]
    fn bad_field_element_is_malformed() {
        let (mut a, mut b) = MemChannel::pair();
        a.send_bytes(&[0xff; FIELD_BYTES]).unwrap();
        a.flush().unwrap();
        let mut f = [F::ZERO];
        assert!(matches!(b.recv_fields(&mut f), Err(Error::Malformed { .. })));
    }

    #[test]
    fn closed_peer_and_silence_are_typed_errors() {
        let (a, mut b) = MemChannel::pair();
        drop(a);
        assert!(matches!(b.recv_u64(), Err(Error::Closed)));

        let (mut a, mut b) = tcp_pair();
        a.send_u64(1).unwrap();
        drop(a);
        assert_eq!(b.recv_u64().unwrap(), 1);
        assert!(matches!(b.recv_u64(), Err(Error::Closed)));

        let (_a, mut b) = MemChannel::pair_with_timeout(Duration::from_millis(50));
        assert!(matches!(b.recv_u64(), Err(Error::Timeout)));
        let (_a, b) = tcp_pair();
        let mut b = b.with_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(matches!(b.recv_u64(), Err(Error::Timeout)));
    }

    #[test]
    fn counting_records_bytes_and_rounds() {
        let (a, b) = MemChannel::pair();
        let (mut a, mut b) = (Counting::new(a), Counting::new(b));
        a.send_u64(1).unwrap();
        a.send_u64(2).unwrap();
        a.flush().unwrap();
        b.recv_u64().unwrap();
        b.recv_u64().unwrap();
        b.send_blocks(&[Block(3)]).unwrap();
        b.flush().unwrap();
        a.recv_block().unwrap();
        a.send_u64(4).unwrap();
        a.flush().unwrap();
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!((sa.sent, sa.received, sa.rounds), (24, 16, 2));
        assert_eq!((sb.sent, sb.received, sb.rounds), (16, 16, 1));
    }
}
