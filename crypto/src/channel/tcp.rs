//! TCP transport.

use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use super::tls::{explain, TlsClient};
use super::{Channel, DEFAULT_MAX_FRAME};
use crate::error::{Error, Result};

/// How long a read waits for the peer before giving up, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

const BUF: usize = 1 << 20;

/// The socket, counting the bytes that cross it (TLS records included).
struct Wire {
    s: TcpStream,
    bytes: u64,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.s.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.s.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}

/// The byte stream under a channel: plain TCP or TLS over it.
enum Io {
    Plain(Wire),
    Server(Box<StreamOwned<ServerConnection, Wire>>),
    Client(Box<StreamOwned<ClientConnection, Wire>>),
}

impl Io {
    fn wire(&self) -> &Wire {
        match self {
            Io::Plain(w) => w,
            Io::Server(t) => &t.sock,
            Io::Client(t) => &t.sock,
        }
    }

    fn set_timeouts(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.wire().s.set_read_timeout(t)?;
        self.wire().s.set_write_timeout(t)
    }
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Server(t) => t.read(buf),
            Io::Client(t) => t.read(buf),
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(buf),
            Io::Server(t) => t.write(buf),
            Io::Client(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Server(t) => t.flush(),
            Io::Client(t) => t.flush(),
        }
    }
}

/// A buffered TCP connection (plain, or TLS 1.3 over it) with a frame
/// bound, an idle timeout on every read and write, and an optional
/// deadline for a whole phase.
///
/// The idle timeout alone does not bound a session: a peer that trickles one
/// byte just before each timeout (or reads one byte at a time) keeps every
/// single call alive. The deadline does: every read and write that reaches
/// the socket waits at most until it, so a phase ends by its deadline
/// whatever the peer does.
pub struct TcpChannel {
    /// Reads are buffered here; writes go to `out` and then to the same
    /// stream (`reader.get_mut()`): one TLS connection serves both ways.
    reader: BufReader<Io>,
    out: Vec<u8>,
    max_frame: u64,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
}

impl TcpChannel {
    /// Wraps a connected stream (Nagle off, default timeout), in plaintext.
    pub fn new(stream: TcpStream) -> Result<Self> {
        stream.set_nodelay(true)?;
        Self::over(Io::Plain(Wire { s: stream, bytes: 0 }), Some(DEFAULT_TIMEOUT))
    }

    fn over(io: Io, timeout: Option<Duration>) -> Result<Self> {
        io.set_timeouts(timeout)?;
        Ok(TcpChannel {
            reader: BufReader::with_capacity(BUF, io),
            out: Vec::with_capacity(BUF),
            max_frame: DEFAULT_MAX_FRAME,
            timeout,
            deadline: None,
        })
    }

    /// The server's end of a TLS connection on an accepted stream: the
    /// handshake is done here, within `handshake` (every read and write of
    /// it; the whole of it by the same deadline).
    pub fn tls_server(
        stream: TcpStream,
        config: Arc<rustls::ServerConfig>,
        handshake: Duration,
    ) -> Result<Self> {
        stream.set_nodelay(true)?;
        let conn = ServerConnection::new(config).map_err(|e| Error::Tls(e.to_string()))?;
        let mut t = StreamOwned::new(conn, Wire { s: stream, bytes: 0 });
        complete_handshake(&mut t.conn, &mut t.sock, handshake)?;
        Self::over(Io::Server(Box::new(t)), Some(DEFAULT_TIMEOUT))
    }

    /// The client's end of a TLS connection: connects to `addr`, checks the
    /// server's certificate against `tls` (its CA and the name) within
    /// `handshake`.
    pub fn tls_connect<A: ToSocketAddrs>(
        addr: A,
        tls: &TlsClient,
        handshake: Duration,
    ) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let conn = ClientConnection::new(tls.config.clone(), tls.name.clone())
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut t = StreamOwned::new(conn, Wire { s: stream, bytes: 0 });
        complete_handshake(&mut t.conn, &mut t.sock, handshake)?;
        Self::over(Io::Client(Box::new(t)), Some(DEFAULT_TIMEOUT))
    }

    /// Bytes that crossed the socket both ways so far: with TLS, its
    /// records and handshake included (what the link carries).
    pub fn wire_bytes(&self) -> u64 {
        self.reader.get_ref().wire().bytes
    }

    /// The peer's IP address, as text ("?" when the socket cannot say).
    pub fn peer_ip(&self) -> String {
        self.reader
            .get_ref()
            .wire()
            .s
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.ip().to_string())
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self.reader.get_ref(), Io::Plain(_))
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
        self.reader.get_ref().set_timeouts(t)?;
        self.timeout = t;
        Ok(self)
    }

    /// Sets (or with `None` clears) the instant by which every read and
    /// write must be done; past it they fail with [`Error::Timeout`].
    pub fn set_deadline(&mut self, deadline: Option<Instant>) -> Result<()> {
        self.deadline = deadline;
        let wait = self.wait()?;
        self.reader.get_ref().set_timeouts(wait)?;
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

impl TcpChannel {
    /// Writes the buffered bytes to the stream.
    fn write_out(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.reader.get_mut().write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Before a call that reaches the socket: it may wait only until the
    /// deadline (reads and writes share the socket's settings).
    fn arm(&mut self) -> Result<()> {
        if self.deadline.is_some() {
            let wait = self.wait()?;
            self.reader.get_ref().set_timeouts(wait)?;
        }
        Ok(())
    }
}

impl Drop for TcpChannel {
    /// Sends what is still buffered (as a `BufWriter` would) and, over TLS,
    /// the closing alert; errors are ignored, the socket's timeouts bound it.
    fn drop(&mut self) {
        let _ = self.write_out();
        let io = self.reader.get_mut();
        match io {
            Io::Plain(_) => {}
            Io::Server(t) => t.conn.send_close_notify(),
            Io::Client(t) => t.conn.send_close_notify(),
        }
        let _ = io.flush();
    }
}

/// Drives a handshake to its end (or the deadline `within` from now).
fn complete_handshake<C, D>(conn: &mut C, sock: &mut Wire, within: Duration) -> Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
{
    let deadline = Instant::now() + within;
    while conn.is_handshaking() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|l| !l.is_zero())
            .ok_or(Error::Timeout)?;
        sock.s.set_read_timeout(Some(left))?;
        sock.s.set_write_timeout(Some(left))?;
        match conn.complete_io(sock) {
            Ok((0, 0)) if conn.is_handshaking() => return Err(Error::Closed),
            Ok(_) => {}
            Err(e) => return Err(explain(e)),
        }
    }
    Ok(())
}

impl Channel for TcpChannel {
    fn send_bytes(&mut self, buf: &[u8]) -> Result<()> {
        if self.out.len() + buf.len() > BUF {
            // This write reaches the socket: it may wait only until the deadline.
            self.arm()?;
            self.write_out()?;
            if buf.len() >= BUF {
                return Ok(self.reader.get_mut().write_all(buf)?);
            }
        }
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn recv_bytes(&mut self, buf: &mut [u8]) -> Result<()> {
        if self.deadline.is_none() {
            return Ok(self.reader.read_exact(buf)?);
        }
        let mut filled = 0;
        while filled < buf.len() {
            if self.reader.buffer().is_empty() {
                self.arm()?;
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
        self.arm()?;
        self.write_out()?;
        Ok(self.reader.get_mut().flush()?)
    }

    fn max_frame(&self) -> u64 {
        self.max_frame
    }
}
