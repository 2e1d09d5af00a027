//! Bundles on disk: a tagged, length-bounded encoding of each party's
//! offline material, read back only after every length is checked.

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};

use super::circuit::*;
use super::protocol::*;
use super::spec::*;

crate::codec::impl_stored!(ServerReluBundle, ClientReluBundle);

/// Tags that start each stored bundle (catch a file read as the wrong type).
pub(super) const SERVER_TAG: u64 = u64::from_le_bytes(*b"dlRELUs2");
pub(super) const CLIENT_TAG: u64 = u64::from_le_bytes(*b"dlRELUc2");

/// Writes a bundle's head: tag, count, truncation, window, id.
fn store_head<W: std::io::Write>(
    e: &mut Encoder<W>,
    tag: u64,
    n: usize,
    spec: ReluSpec,
    id: &[u8; 16],
) -> Result<()> {
    e.head(tag, n, &[spec.shift as u64, ReluBits::code(spec.bits)], id)
}

/// Reads what [`store_head`] wrote: the count, the spec and the id.
fn load_head<R: std::io::Read>(
    d: &mut Decoder<R>,
    tag: u64,
    not_tagged: &'static str,
) -> Result<(usize, ReluSpec, [u8; 16])> {
    let n = d.head(tag, MAX_RELUS, not_tagged, "stored ReLU count")?;
    check_count(n)?;
    let spec = load_spec(d)?;
    Ok((n, spec, d.id()?))
}

pub(super) fn load_spec<R: std::io::Read>(d: &mut Decoder<R>) -> Result<ReluSpec> {
    let shift = d.u64_at_most(MAX_SHIFT as u64, "stored ReLU truncation")? as u32;
    let bits = ReluBits::from_code(d.u64()?)
        .ok_or(Error::Stored { what: "stored ReLU bits are not a window" })?;
    let spec = ReluSpec { shift, bits };
    spec.check().map_err(|_| Error::Stored { what: "stored ReLU bits are not a valid window" })?;
    Ok(spec)
}

impl ServerReluBundle {
    /// Writes the bundle (secrets included: the file must be protected like
    /// a key).
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        store_head(e, SERVER_TAG, self.n, self.spec, &s.id)?;
        e.block(s.delta)?;
        e.block(s.label_seed)?;
        e.fields(&s.rho)
    }

    /// Reads a bundle written by [`ServerReluBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        let (n, spec, id) = load_head(d, SERVER_TAG, "not a stored server ReLU bundle")?;
        let delta = d.block()?;
        let label_seed = d.block()?;
        let rho = d.fields(n, "stored ReLU masks")?;
        Ok(ServerReluBundle { n, spec, inner: ServerSecrets { id, delta, label_seed, rho } })
    }
}

impl ClientReluBundle {
    /// Writes the bundle (secrets included).
    pub fn store<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
        let s = &self.inner;
        store_head(e, CLIENT_TAG, self.n, self.spec, &s.id)?;
        e.block(s.hash_key)?;
        e.blocks(&s.labels)?;
        e.blocks(&s.tables)?;
        e.fields(&s.cts)
    }

    /// Reads a bundle written by [`ClientReluBundle::store`].
    pub fn load<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
        let (n, spec, id) = load_head(d, CLIENT_TAG, "not a stored client ReLU bundle")?;
        let rc = relu_circuit_for(spec);
        let no = rc.circuit.outputs();
        let per = 2 * rc.circuit.and_gates();
        let hash_key = d.block()?;
        let labels = d.blocks(n * spec.input_bits(), "stored ReLU labels")?;
        let tables = d.blocks(n * per, "stored garbled tables")?;
        let cts = d.fields(n * no, "stored output conversions")?;
        Ok(ClientReluBundle { n, spec, inner: ClientSecrets { id, hash_key, labels, tables, cts } })
    }
}
