//! Truncation of shared values: the division by 2^shift that brings a
//! product back to its fixed-point scale (after a quadratic, and before one
//! where a linear layer's output enters it).
//!
//! Three protocols ([`TruncKind`]):
//!
//! * **exact** ([`exact`], the default): ⌊(v + 2^(f−1))/2^f⌋ by a small
//!   garbled circuit, exact for every split of v into shares when
//!   |v| ≤ 2^38 — a bound the plan must *prove*; f + 2 ANDs offline,
//!   f + 1 labels (16 bytes each) online;
//! * **exact-wide**: the full-width ReLU circuit on v + 2^39, exact for
//!   every input (41 labels online) — what a plan uses where the bound
//!   cannot be proven;
//! * **faithful** ([`faithful`], opt-in, leaks): one bit online, but
//!   whether it rounds up or down depends on the low bits of the two shares,
//!   which the client partly knows: a client that repeats one input learns
//!   about the hidden value through the rounding. Only a user who accepts
//!   that leak should choose it.

mod exact;
mod faithful;

pub use exact::{ClientExactBundle, ExactTrunc, ServerExactBundle, WIDE_OFFSET_BITS};
pub use faithful::{max_abs, trunc_reference, MAX_SHIFT, MAX_VALUES, MIN_SHIFT, OFFSET_BITS};

use rand::{CryptoRng, RngCore};

use crate::channel::Channel;
use crate::codec::{Decoder, Encoder, Stored};
use crate::error::{Error, Result};
use crate::field::F;
use crate::ot::{CotKind, CotReceiverPool, CotSenderPool};

/// Which truncation protocol a node runs (in descriptions: `exact`,
/// `exact-wide`, `faithful-leaky`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TruncKind {
    /// Exact for |v| ≤ 2^38 (the bound must be proven): f + 1 labels online.
    #[serde(rename = "exact")]
    Exact,
    /// Exact for every input: 41 labels online.
    #[serde(rename = "exact-wide")]
    ExactWide,
    /// One bit online; rounds by the shares (leaks; opt-in).
    #[serde(rename = "faithful-leaky")]
    Faithful,
}

impl TruncKind {
    /// Its name in reports and plans.
    pub fn name(self) -> &'static str {
        match self {
            TruncKind::Exact => "exact",
            TruncKind::ExactWide => "exact-wide",
            TruncKind::Faithful => "faithful-leaky",
        }
    }

    /// The exact circuit, or `None` for the faithful protocol.
    pub fn exact(self, shift: u32) -> Option<ExactTrunc> {
        match self {
            TruncKind::Exact => Some(ExactTrunc { shift, wide: false }),
            TruncKind::ExactWide => Some(ExactTrunc { shift, wide: true }),
            TruncKind::Faithful => None,
        }
    }

    /// Whether the result is a function of the value alone (given the
    /// bound the bounded circuit needs).
    pub fn is_exact(self) -> bool {
        self != TruncKind::Faithful
    }

    /// The smallest truncation the protocol supports.
    pub fn min_shift(self) -> u32 {
        if self.is_exact() {
            1
        } else {
            MIN_SHIFT
        }
    }

    /// The largest truncation the protocol supports.
    pub fn max_shift(self) -> u32 {
        match self {
            TruncKind::ExactWide => ExactTrunc::max_shift(true),
            _ => MAX_SHIFT,
        }
    }

    /// The plaintext result the protocol is specified to compute (the
    /// faithful one is this or one unit away).
    pub fn reference(self, v: F, shift: u32) -> F {
        match self.exact(shift) {
            Some(e) => e.reference(v),
            None => trunc_reference(v, shift),
        }
    }
}

impl std::fmt::Display for TruncKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Server's half of an offline truncation bundle.
#[derive(Debug)]
pub enum ServerTruncBundle {
    /// The exact protocols.
    Exact(ServerExactBundle),
    /// The faithful protocol.
    Faithful(faithful::ServerTruncBundle),
}

/// Client's half of an offline truncation bundle.
#[derive(Debug)]
pub enum ClientTruncBundle {
    /// The exact protocols.
    Exact(ClientExactBundle),
    /// The faithful protocol.
    Faithful(faithful::ClientTruncBundle),
}

/// Offline phase, server side, for `n` values truncated by `shift` bits.
pub fn server_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    n: usize,
    shift: u32,
    kind: TruncKind,
    rng: &mut R,
) -> Result<ServerTruncBundle> {
    let mut ot = CotSenderPool::new(own_ot_kind(kind, shift, n));
    server_offline_with(ch, n, shift, kind, rng, &mut ot)
}

/// The kind of correlated OT a truncation layer of `n` values run alone
/// uses (the faithful protocol runs its own random OTs and takes none).
fn own_ot_kind(kind: TruncKind, shift: u32, n: usize) -> CotKind {
    kind.exact(shift).map_or(CotKind::Iknp, |e| crate::garbled::own_ot_kind(e, n))
}

/// [`server_offline`] whose exact protocol takes its correlated OTs from
/// `ot`, a pool that serves a whole offline phase (the faithful one runs
/// its own random OTs).
pub fn server_offline_with<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    n: usize,
    shift: u32,
    kind: TruncKind,
    rng: &mut R,
    ot: &mut CotSenderPool,
) -> Result<ServerTruncBundle> {
    Ok(match kind.exact(shift) {
        Some(e) => ServerTruncBundle::Exact(ServerExactBundle::offline_with(ch, n, e, rng, ot)?),
        None => ServerTruncBundle::Faithful(faithful::server_offline(ch, n, shift, rng)?),
    })
}

/// Bytes the client's half of an offline bundle of `n` truncated values
/// holds (a garbled circuit each when exact; a share and a key each when
/// faithful).
pub fn client_bundle_bytes(n: usize, shift: u32, kind: TruncKind) -> u64 {
    match kind.exact(shift) {
        Some(e) => crate::garbled::client_bundle_bytes(e, n) + 8 * n as u64,
        None => 16 * n as u64,
    }
}

/// The part of [`client_bundle_bytes`] that is garbled material (what a
/// [`crate::spool::Spool`] keeps out of memory): the exact protocols' circuits.
pub fn client_spooled_bytes(n: usize, shift: u32, kind: TruncKind) -> u64 {
    kind.exact(shift).map_or(0, |e| crate::garbled::client_bundle_bytes(e, n))
}

/// Offline phase, client side: `shares` are the client's (offline-known)
/// shares of the values to truncate.
pub fn client_offline<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    shift: u32,
    kind: TruncKind,
    rng: &mut R,
) -> Result<ClientTruncBundle> {
    client_offline_to(ch, shares, shift, kind, rng, None)
}

/// [`client_offline`] that keeps an exact truncation's garbled material in
/// `spool` when given one ([`crate::spool`]; the faithful protocol's
/// material, 16 bytes per value, stays in memory).
pub fn client_offline_to<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    shift: u32,
    kind: TruncKind,
    rng: &mut R,
    spool: Option<&crate::spool::Spool>,
) -> Result<ClientTruncBundle> {
    let mut ot = CotReceiverPool::new(own_ot_kind(kind, shift, shares.len()));
    client_offline_with(ch, shares, shift, kind, rng, spool, &mut ot)
}

/// [`client_offline_to`] whose exact protocol takes its correlated OTs
/// from `ot`.
pub fn client_offline_with<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    shares: &[F],
    shift: u32,
    kind: TruncKind,
    rng: &mut R,
    spool: Option<&crate::spool::Spool>,
    ot: &mut CotReceiverPool,
) -> Result<ClientTruncBundle> {
    Ok(match kind.exact(shift) {
        Some(e) => ClientTruncBundle::Exact(ClientExactBundle::offline_with(
            ch, shares, e, rng, spool, ot,
        )?),
        None => ClientTruncBundle::Faithful(faithful::client_offline(ch, shares, shift, rng)?),
    })
}

impl ServerTruncBundle {
    /// Online phase, server side: returns its shares of the truncated
    /// values (consumes the bundle: a second use does not compile).
    pub fn online<C: Channel>(self, ch: &mut C, shares: &[F]) -> Result<Vec<F>> {
        match self {
            ServerTruncBundle::Exact(b) => b.online(ch, shares),
            ServerTruncBundle::Faithful(b) => b.online(ch, shares),
        }
    }
}

impl ClientTruncBundle {
    /// Online phase, client side: returns its shares of the truncated
    /// values (consumes the bundle).
    pub fn online<C: Channel>(self, ch: &mut C) -> Result<Vec<F>> {
        match self {
            ClientTruncBundle::Exact(b) => b.online(ch),
            ClientTruncBundle::Faithful(b) => b.online(ch),
        }
    }
}

/// The stored marker of each protocol (before the bundle's own tagged head).
const MARK_EXACT: u64 = 1;
const MARK_FAITHFUL: u64 = 2;

fn load_mark<R: std::io::Read>(d: &mut Decoder<R>) -> Result<u64> {
    match d.u64()? {
        m @ (MARK_EXACT | MARK_FAITHFUL) => Ok(m),
        _ => Err(Error::Stored { what: "not a stored truncation bundle" }),
    }
}

/// `len`, `is_empty` and [`Stored`] (the marker, then the inner bundle)
/// for a side's truncation bundle.
macro_rules! impl_either {
    ($t:ident, $exact:ty, $faithful:ty) => {
        impl $t {
            /// Values in the bundle.
            pub fn len(&self) -> usize {
                match self {
                    $t::Exact(b) => b.len(),
                    $t::Faithful(b) => b.len(),
                }
            }

            /// Whether the bundle holds no values (never, once built).
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }
        }

        impl Stored for $t {
            fn store_to<W: std::io::Write>(&self, e: &mut Encoder<W>) -> Result<()> {
                match self {
                    $t::Exact(b) => {
                        e.u64(MARK_EXACT)?;
                        b.store_to(e)
                    }
                    $t::Faithful(b) => {
                        e.u64(MARK_FAITHFUL)?;
                        b.store_to(e)
                    }
                }
            }
            fn load_from<R: std::io::Read>(d: &mut Decoder<R>) -> Result<Self> {
                Ok(match load_mark(d)? {
                    MARK_EXACT => $t::Exact(<$exact>::load_from(d)?),
                    _ => $t::Faithful(<$faithful>::load_from(d)?),
                })
            }
        }
    };
}

impl_either!(ServerTruncBundle, ServerExactBundle, faithful::ServerTruncBundle);
impl_either!(ClientTruncBundle, ClientExactBundle, faithful::ClientTruncBundle);
