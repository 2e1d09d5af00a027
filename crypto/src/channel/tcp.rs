//! TCP transport.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{Channel, DEFAULT_MAX_FRAME};
use crate::error::{Error, Result};

/// How long a read waits for the peer before giving up, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

const BUF: usize = 1 << 20;

/// A buffered TCP connection with read timeouts and a frame bound.
pub struct TcpChannel {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    max_frame: u64,
}

impl TcpChannel {
    /// Wraps a connected stream (Nagle off, default timeout).
    pub fn new(stream: TcpStream) -> Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        let w = stream.try_clone()?;
        Ok(TcpChannel {
            reader: BufReader::with_capacity(BUF, stream),
            writer: BufWriter::with_capacity(BUF, w),
            max_frame: DEFAULT_MAX_FRAME,
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

    /// Sets how long a read may wait (`None`: forever).
    pub fn with_timeout(self, t: Option<Duration>) -> Result<Self> {
        self.reader.get_ref().set_read_timeout(t)?;
        Ok(self)
    }

    /// Sets the largest accepted frame.
    pub fn with_max_frame(mut self, max: u64) -> Self {
        self.max_frame = max;
        self
    }
}

impl Channel for TcpChannel {
    fn send_bytes(&mut self, buf: &[u8]) -> Result<()> {
        Ok(self.writer.write_all(buf)?)
    }

    fn recv_bytes(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.reader.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::from(e)),
        }
    }

    fn flush(&mut self) -> Result<()> {
        Ok(self.writer.flush()?)
    }

    fn max_frame(&self) -> u64 {
        self.max_frame
    }
}
