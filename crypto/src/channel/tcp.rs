//! TCP transport.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{Channel, DEFAULT_MAX_FRAME};
use crate::error::{Error, Result};

/// How long a read waits for the peer before giving up, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

const BUF: usize = 1 << 20;

/// A buffered TCP connection with a frame bound, an idle timeout on every
/// read and write, and an optional deadline for a whole phase.
///
/// The idle timeout alone does not bound a session: a peer that trickles one
/// byte just before each timeout (or reads one byte at a time) keeps every
/// single call alive. The deadline does: every read and write that reaches
/// the socket waits at most until it, so a phase ends by its deadline
/// whatever the peer does.
pub struct TcpChannel {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    max_frame: u64,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
}

impl TcpChannel {
    /// Wraps a connected stream (Nagle off, default timeout).
    pub fn new(stream: TcpStream) -> Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        stream.set_write_timeout(Some(DEFAULT_TIMEOUT))?;
        let w = stream.try_clone()?;
        Ok(TcpChannel {
            reader: BufReader::with_capacity(BUF, stream),
            writer: BufWriter::with_capacity(BUF, w),
            max_frame: DEFAULT_MAX_FRAME,
            timeout: Some(DEFAULT_TIMEOUT),
            deadline: None,
        })
    }

    /// Connects to `addr`.
    pub fn connect<A: ToSocketAddrs>(addr: A) -> Result<Self> {
        Self::new(TcpStream::connect(addr)?)
    }

    /// Two connected ends over loopback TCP (for tests and single-process runs).
    pub fn loopback_pair() -> Result<(TcpChannel, TcpChannel)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        Ok((Self::new(server)?, Self::new(client)?))
    }

    /// Sets how long one read or write may wait for the peer (`None`: forever).
    pub fn with_timeout(mut self, t: Option<Duration>) -> Result<Self> {
        self.reader.get_ref().set_read_timeout(t)?;
        self.writer.get_ref().set_write_timeout(t)?;
        self.timeout = t;
        Ok(self)
    }

    /// Sets (or with `None` clears) the instant by which every read and
    /// write must be done; past it they fail with [`Error::Timeout`].
    pub fn set_deadline(&mut self, deadline: Option<Instant>) -> Result<()> {
        self.deadline = deadline;
        let wait = self.wait()?;
        self.reader.get_ref().set_read_timeout(wait)?;
        self.writer.get_ref().set_write_timeout(wait)?;
        Ok(())
    }

    /// The wait for the next socket call: the idle timeout, shortened to the
    /// deadline. `Err(Timeout)` when the deadline has passed.
    fn wait(&self) -> Result<Option<Duration>> {
        match self.deadline {
            None => Ok(self.timeout),
            Some(d) => {
                let left = d
                    .checked_duration_since(Instant::now())
                    .filter(|l| !l.is_zero())
                    .ok_or(Error::Timeout)?;
                Ok(Some(self.timeout.map_or(left, |t| t.min(left))))
            }
        }
    }

    /// Sets the largest accepted frame.
    pub fn with_max_frame(mut self, max: u64) -> Self {
        self.max_frame = max;
        self
    }
}

impl Channel for TcpChannel {
    fn send_bytes(&mut self, buf: &[u8]) -> Result<()> {
        if self.deadline.is_some() && self.writer.buffer().len() + buf.len() > BUF {
            // This write reaches the socket: it may wait only until the deadline.
            self.writer.get_ref().set_write_timeout(self.wait()?)?;
        }
        Ok(self.writer.write_all(buf)?)
    }

    fn recv_bytes(&mut self, buf: &mut [u8]) -> Result<()> {
        if self.deadline.is_none() {
            return Ok(self.reader.read_exact(buf)?);
        }
        let mut filled = 0;
        while filled < buf.len() {
            if self.reader.buffer().is_empty() {
                self.reader.get_ref().set_read_timeout(self.wait()?)?;
            }
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.deadline.is_some() {
            self.writer.get_ref().set_write_timeout(self.wait()?)?;
        }
        Ok(self.writer.flush()?)
    }

    fn max_frame(&self) -> u64 {
        self.max_frame
    }
}
