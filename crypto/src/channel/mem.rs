//! In-memory transport for tests and single-process runs.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::{Channel, DEFAULT_MAX_FRAME};
use crate::error::{Error, Result};

const CHUNK: usize = 1 << 16;

/// One end of an in-memory pipe pair. Sends are buffered until `flush` (or
/// until 64 KiB accumulate), like a buffered socket.
pub struct MemChannel {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    pos: usize,
    timeout: Duration,
}

impl MemChannel {
    /// A connected pair with a 300 s read timeout.
    pub fn pair() -> (MemChannel, MemChannel) {
        Self::pair_with_timeout(super::tcp::DEFAULT_TIMEOUT)
    }

    /// A connected pair whose reads give up after `timeout`.
    pub fn pair_with_timeout(timeout: Duration) -> (MemChannel, MemChannel) {
        let (t1, r1) = channel();
        let (t2, r2) = channel();
        let mk =
            |tx, rx| MemChannel { tx, rx, out: Vec::new(), inbuf: Vec::new(), pos: 0, timeout };
        (mk(t1, r2), mk(t2, r1))
    }

    fn push(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            let v = std::mem::take(&mut self.out);
            self.tx.send(v).map_err(|_| Error::Closed)?;
        }
        Ok(())
    }
}

impl Channel for MemChannel {
    fn send_bytes(&mut self, buf: &[u8]) -> Result<()> {
        self.out.extend_from_slice(buf);
        if self.out.len() >= CHUNK {
            self.push()?;
        }
        Ok(())
    }

    fn recv_bytes(&mut self, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            if self.pos == self.inbuf.len() {
                self.inbuf = match self.rx.recv_timeout(self.timeout) {
                    Ok(v) => v,
                    Err(RecvTimeoutError::Timeout) => return Err(Error::Timeout),
                    Err(RecvTimeoutError::Disconnected) => return Err(Error::Closed),
                };
                self.pos = 0;
            }
            let n = buf.len().min(self.inbuf.len() - self.pos);
            buf[..n].copy_from_slice(&self.inbuf[self.pos..self.pos + n]);
            self.pos += n;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.push()
    }

    fn max_frame(&self) -> u64 {
        DEFAULT_MAX_FRAME
    }
}
