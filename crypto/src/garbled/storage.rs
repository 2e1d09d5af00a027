//! Bundles on disk: a tagged, length-bounded encoding of each party's
//! offline material, read back only after every length is checked.

use crate::codec::{Decoder, Encoder, Stored};
use crate::error::{Error, Result};

use super::protocol::*;
use super::{GcFunction, MAX_VALUES};

/// Writes a bundle's head: tag, count, the function's codes, id.
fn store_head<W: std::io::Write, S: GcFunction>(
    e: &mut Encoder<W>,
    tag: u64,
    n: usize,
    spec: S,
    id: &[u8; 16],
) -> Result<()> {
    e.head(tag, n, &spec.codes(), id)
}

/// Reads what [`store_head`] wrote: the count, the function and the id.
fn load_head<R: std::io::Read, S: GcFunction>(
    d: &mut Decoder<R>,
    tag: u64,
    not_tagged: &'static str,
) -> Result<(usize, S, [u8; 16])> {
    let n = d.head(tag, MAX_VALUES, not_tagged, "stored value count")?;
    check_count::<S>(n)?;
    let codes = [d.u64()?, d.u64()?];
    let spec = S::from_codes(codes)
        .filter(|s| s.check().is_ok())
        .ok_or(Error::Stored { what: "stored circuit parameters are not valid" })?;
    Ok((n, spec, d.id()?))
}

impl<S: GcFunction> ServerGcBundle<S> {
    /// Writes the bundle (secrets included: the file must be protected like
    /// a key).
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        store_head(e, S::TAGS[0], self.n, self.spec, &s.id)?;
        e.block(s.delta)?;
        e.block(s.label_seed)?;
        e.fields(&s.rho)
    }

    /// Reads a bundle written by [`ServerGcBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        let (n, spec, id) = load_head(d, S::TAGS[0], S::NOT_TAGGED[0])?;
        let delta = d.block()?;
        let label_seed = d.block()?;
        let rho = d.fields(n, "stored output masks")?;
        Ok(ServerGcBundle { n, spec, inner: ServerSecrets { id, delta, label_seed, rho } })
    }
}

impl<S: GcFunction> ClientGcBundle<S> {
    /// Writes the bundle (secrets included).
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        store_head(e, S::TAGS[1], self.n, self.spec, &s.id)?;
        e.block(s.hash_key)?;
        e.stash_blocks(&s.labels)?;
        e.stash_blocks(&s.tables)?;
        e.stash_fields(&s.cts)
    }

    /// Reads a bundle written by [`ClientGcBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        let (n, spec, id) = load_head::<_, S>(d, S::TAGS[1], S::NOT_TAGGED[1])?;
        let gc = spec.gc();
        let nc = gc.elements();
        let per = 2 * gc.circuit.and_gates();
        let hash_key = d.block()?;
        let labels = d.stash_blocks(n * gc.circuit.evaluator_inputs(), "stored input labels")?;
        let tables = d.stash_blocks(n * per, "stored garbled tables")?;
        let cts = d.stash_fields(n * nc, "stored output conversions")?;
        Ok(ClientGcBundle { n, spec, inner: ClientSecrets { id, hash_key, labels, tables, cts } })
    }
}

impl<S: GcFunction> Stored for ServerGcBundle<S> {
    fn store_to<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        self.store(e)
    }
    fn load_from<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        Self::load(d)
    }
}

impl<S: GcFunction> Stored for ClientGcBundle<S> {
    fn store_to<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        self.store(e)
    }
    fn load_from<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        Self::load(d)
    }
}
