//! A decorator that counts bytes and rounds.

use super::Channel;
use crate::error::Result;

/// Communication statistics of one party.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommStats {
    /// Bytes this party sent.
    pub sent: u64,
    /// Bytes this party received.
    pub received: u64,
    /// Flights this party sent: a send that follows a receive (or opens the
    /// session) starts a new round.
    pub rounds: u64,
}

impl CommStats {
    /// Bytes in both directions.
    pub fn total(&self) -> u64 {
        self.sent + self.received
    }

    /// The difference `self - earlier`, for measuring one phase.
    pub fn since(&self, earlier: &CommStats) -> CommStats {
        CommStats {
            sent: self.sent - earlier.sent,
            received: self.received - earlier.received,
            rounds: self.rounds - earlier.rounds,
        }
    }
}

/// Wraps a channel and records what passes through it.
pub struct Counting<C> {
    inner: C,
    stats: CommStats,
    sending: bool,
}

impl<C: Channel> Counting<C> {
    /// Starts counting on `inner`.
    pub fn new(inner: C) -> Self {
        Counting { inner, stats: CommStats::default(), sending: false }
    }

    /// The statistics so far.
    pub fn stats(&self) -> CommStats {
        self.stats
    }

    /// The wrapped channel, to change its settings (what passes through it
    /// directly is not counted).
    pub fn inner_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwraps the channel.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C: Channel> Channel for Counting<C> {
    fn send_bytes(&mut self, buf: &[u8]) -> Result<()> {
        if !self.sending {
            self.sending = true;
            self.stats.rounds += 1;
        }
        self.stats.sent += buf.len() as u64;
        self.inner.send_bytes(buf)
    }

    fn recv_bytes(&mut self, buf: &mut [u8]) -> Result<()> {
        self.sending = false;
        self.inner.recv_bytes(buf)?;
        self.stats.received += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }

    fn max_frame(&self) -> u64 {
        self.inner.max_frame()
    }

    fn counted_bytes(&self) -> Option<u64> {
        Some(self.stats.total())
    }
}
