//! A small binary codec for storing preprocessed material on disk.
//!
//! Little-endian integers, length-prefixed vectors. Everything read is
//! untrusted: every length is checked against a caller-supplied bound before
//! anything is allocated, field elements are checked below p, and a short
//! file is [`Error::Stored`] ("truncated"), not an I/O error.

use std::io::{self, Read, Write};

use crate::block::Block;
use crate::error::{Error, Result};
use crate::field::F;
use crate::spool::{Spool, Stash, StashBuilder};

/// Items read at a time into a stash (a stored length never allocates more
/// than this ahead of the data that fills it).
const STASH_PIECE: usize = 1 << 16;

/// Writes values to a byte sink.
pub struct Encoder<W: Write> {
    w: W,
}

impl<W: Write> Encoder<W> {
    /// An encoder over `w` (buffer it: values are written one by one).
    pub fn new(w: W) -> Self {
        Encoder { w }
    }

    /// The sink back.
    pub fn into_inner(self) -> W {
        self.w
    }

    /// Writes raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(Error::Io)
    }

    /// Writes the head of a stored bundle: its type tag, its count, its
    /// parameters and its 16-byte id ([`Decoder::head`] reads the first
    /// two, the caller its parameters, [`Decoder::id`] the id).
    pub fn head(&mut self, tag: u64, count: usize, params: &[u64], id: &[u8; 16]) -> Result<()> {
        self.u64(tag)?;
        self.u64(count as u64)?;
        for &p in params {
            self.u64(p)?;
        }
        self.bytes(id)
    }

    /// Writes a `u64` (little endian).
    pub fn u64(&mut self, v: u64) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    /// Writes a block.
    pub fn block(&mut self, b: Block) -> Result<()> {
        self.bytes(&b.to_bytes())
    }

    /// Writes a length-prefixed vector of blocks.
    pub fn blocks(&mut self, bs: &[Block]) -> Result<()> {
        self.u64(bs.len() as u64)?;
        bs.iter().try_for_each(|b| self.block(*b))
    }

    /// Writes a length-prefixed vector of field elements.
    pub fn fields(&mut self, xs: &[F]) -> Result<()> {
        self.u64(xs.len() as u64)?;
        xs.iter().try_for_each(|x| self.u64(x.value()))
    }

    /// Writes a stash of blocks as [`Encoder::blocks`] does (read back a
    /// piece at a time when it is on disk).
    pub fn stash_blocks(&mut self, s: &Stash<Block>) -> Result<()> {
        self.u64(s.len() as u64)?;
        s.for_each_piece(|p| p.iter().try_for_each(|b| self.block(*b)))
    }

    /// Writes a stash of field elements as [`Encoder::fields`] does.
    pub fn stash_fields(&mut self, s: &Stash<F>) -> Result<()> {
        self.u64(s.len() as u64)?;
        s.for_each_piece(|p| p.iter().try_for_each(|x| self.u64(x.value())))
    }
}

/// Reads values from a byte source, bounding every length.
pub struct Decoder<R: Read> {
    r: R,
    /// Where large material goes as it is read (none: memory).
    spool: Option<Spool>,
}

fn read_err(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::Stored { what: "truncated stored bundle" }
    } else {
        Error::Io(e)
    }
}

impl<R: Read> Decoder<R> {
    /// A decoder over `r`.
    pub fn new(r: R) -> Self {
        Decoder { r, spool: None }
    }

    /// A decoder over `r` that writes the garbled material it reads
    /// ([`Decoder::stash_blocks`], [`Decoder::stash_fields`]) to `spool`
    /// instead of memory, when given one.
    pub fn with_spool(r: R, spool: Option<Spool>) -> Self {
        Decoder { r, spool }
    }

    /// Fills `out` with raw bytes.
    pub fn bytes(&mut self, out: &mut [u8]) -> Result<()> {
        self.r.read_exact(out).map_err(read_err)
    }

    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads the head [`Encoder::head`] wrote: the tag must be `tag`
    /// (else `not_tagged`) and the count at most `max` (else `count`).
    pub fn head(
        &mut self,
        tag: u64,
        max: usize,
        not_tagged: &'static str,
        count: &'static str,
    ) -> Result<usize> {
        if self.u64()? != tag {
            return Err(Error::Stored { what: not_tagged });
        }
        Ok(self.u64_at_most(max as u64, count)? as usize)
    }

    /// Reads a 16-byte bundle id.
    pub fn id(&mut self) -> Result<[u8; 16]> {
        let mut id = [0u8; 16];
        self.bytes(&mut id)?;
        Ok(id)
    }

    /// Reads a `u64` that must be at most `max` (`what` names it in the error).
    pub fn u64_at_most(&mut self, max: u64, what: &'static str) -> Result<u64> {
        let v = self.u64()?;
        if v > max {
            return Err(Error::Stored { what });
        }
        Ok(v)
    }

    /// Reads a block.
    pub fn block(&mut self) -> Result<Block> {
        let mut b = [0u8; 16];
        self.bytes(&mut b)?;
        Ok(Block::from_bytes(b))
    }

    /// Reads a vector of exactly `len` blocks (the stored length must match).
    pub fn blocks(&mut self, len: usize, what: &'static str) -> Result<Vec<Block>> {
        if self.u64()? != len as u64 {
            return Err(Error::Stored { what });
        }
        self.read_vec(len, |d| d.block())
    }

    /// Reads what [`Encoder::stash_blocks`] wrote: exactly `len` blocks, into
    /// this decoder's spool if it has one.
    pub fn stash_blocks(&mut self, len: usize, what: &'static str) -> Result<Stash<Block>> {
        self.read_stash(len, what, |d| d.block())
    }

    /// Reads what [`Encoder::stash_fields`] wrote: exactly `len` field
    /// elements, into this decoder's spool if it has one.
    pub fn stash_fields(&mut self, len: usize, what: &'static str) -> Result<Stash<F>> {
        self.read_stash(len, what, |d| d.field())
    }

    fn read_stash<T: crate::spool::Raw>(
        &mut self,
        len: usize,
        what: &'static str,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Stash<T>> {
        if self.u64()? != len as u64 {
            return Err(Error::Stored { what });
        }
        let mut b = StashBuilder::new(len, self.spool.clone().as_ref());
        let mut start = 0;
        while start < len {
            let k = STASH_PIECE.min(len - start);
            b.fill(k, |out| out.iter_mut().try_for_each(|x| item(self).map(|v| *x = v)))?;
            start += k;
        }
        b.finish()
    }

    /// Reads `len` items, growing the vector only as items actually arrive
    /// (a stored length never allocates memory the file does not fill).
    fn read_vec<T>(
        &mut self,
        len: usize,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(len.min(1 << 16));
        for _ in 0..len {
            out.push(item(self)?);
        }
        Ok(out)
    }

    fn field(&mut self) -> Result<F> {
        F::new(self.u64()?)
            .ok_or(Error::Stored { what: "stored field element not below the modulus" })
    }

    /// Reads a vector of exactly `len` field elements.
    pub fn fields(&mut self, len: usize, what: &'static str) -> Result<Vec<F>> {
        if self.u64()? != len as u64 {
            return Err(Error::Stored { what });
        }
        self.read_vec(len, |d| d.field())
    }

    /// Reads a length-prefixed vector of field elements of at most `max`.
    pub fn fields_at_most(&mut self, max: usize, what: &'static str) -> Result<Vec<F>> {
        let len = self.u64_at_most(max as u64, what)? as usize;
        self.read_vec(len, |d| d.field())
    }
}

/// Offline material that a stored bundle holds, written and read back with
/// the codec: what a container (a whole network's bundle) needs to store
/// each layer's part without knowing its type.
pub trait Stored: Sized {
    /// Writes it.
    fn store_to<W: Write>(&self, e: &mut Encoder<W>) -> Result<()>;
    /// Reads what [`Stored::store_to`] wrote, every length checked.
    fn load_from<R: Read>(d: &mut Decoder<R>) -> Result<Self>;
}

/// Implements [`Stored`] for types with inherent `store` and `load`.
macro_rules! impl_stored {
    ($($t:ty),+) => {
        $(impl $crate::codec::Stored for $t {
            fn store_to<W: std::io::Write>(&self, e: &mut $crate::codec::Encoder<W>) -> $crate::Result<()> {
                self.store(e)
            }
            fn load_from<R: std::io::Read>(d: &mut $crate::codec::Decoder<R>) -> $crate::Result<Self> {
                Self::load(d)
            }
        })+
    };
}
pub(crate) use impl_stored;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let mut e = Encoder::new(Vec::new());
        e.u64(7).unwrap();
        e.blocks(&[Block(1), Block(u128::MAX)]).unwrap();
        e.fields(&[F::from_u64(3), -F::ONE]).unwrap();
        let buf = e.into_inner();
        let mut d = Decoder::new(&buf[..]);
        assert_eq!(d.u64().unwrap(), 7);
        assert_eq!(d.blocks(2, "b").unwrap(), vec![Block(1), Block(u128::MAX)]);
        assert_eq!(d.fields(2, "f").unwrap(), vec![F::from_u64(3), -F::ONE]);
        // Wrong length, truncation, out-of-range element.
        assert!(Decoder::new(&buf[..]).blocks(3, "b").is_err());
        let short = &buf[..buf.len() - 3];
        let mut d = Decoder::new(short);
        d.u64().unwrap();
        d.blocks(2, "b").unwrap();
        assert!(matches!(d.fields(2, "f"), Err(Error::Stored { what: "truncated stored bundle" })));
        let mut e = Encoder::new(Vec::new());
        e.u64(1).unwrap();
        e.u64(u64::MAX).unwrap();
        let bad = e.into_inner();
        assert!(Decoder::new(&bad[..]).fields(1, "f").is_err());
        assert!(Decoder::new(&bad[..]).u64_at_most(0, "n").is_err());
    }

    #[test]
    fn a_huge_stored_length_allocates_nothing_it_cannot_fill() {
        let n = 1usize << 40;
        let mut e = Encoder::new(Vec::new());
        e.u64(n as u64).unwrap();
        e.block(Block(1)).unwrap();
        let buf = e.into_inner();
        assert!(matches!(
            Decoder::new(&buf[..]).blocks(n, "b"),
            Err(Error::Stored { what: "truncated stored bundle" })
        ));
        assert!(Decoder::new(&buf[..]).fields(n, "f").is_err());
    }
}
