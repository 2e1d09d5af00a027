//! `delphi relay`: a TCP relay that shapes what it forwards like a link of a
//! given bandwidth and round-trip time, so that a plan can be measured over
//! a WAN-like link on one machine where the kernel has no `netem` qdisc.
//!
//! Each direction of each connection is shaped on its own, as a full-duplex
//! link is: a chunk read from one side departs when the link is free
//! (`depart = max(now, previous departure) + len / bandwidth`) and is
//! written to the other side half an RTT later. Chunks are at most
//! [`CHUNK`] bytes, so the serialisation of one chunk (1.3 ms at
//! 100 Mbit/s) bounds how far a delivery lags the ideal link's. The relay
//! holds at most [`QUEUE`] chunks per direction; beyond that it stops
//! reading and TCP's flow control slows the sender, as a full router
//! buffer would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use delphi_cost::{Bandwidth, Link, Rtt};

/// The most bytes one read forwards as one chunk.
pub(crate) const CHUNK: usize = 16 * 1024;
/// The most chunks held per direction (16 MiB).
pub(crate) const QUEUE: usize = 1024;

#[derive(clap::Args)]
pub(crate) struct RelayArgs {
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:7879")]
    listen: SocketAddr,
    /// The server every connection is forwarded to.
    #[arg(long, default_value = "127.0.0.1:7878")]
    to: SocketAddr,
    /// Bandwidth of each direction: bits as 100Mbit, 100Mbps or 1Gbit/s,
    /// bytes as 12.5MB/s or 12.5MBps.
    #[arg(long)]
    bandwidth: Bandwidth,
    /// Round-trip time added: 20ms, 0.5ms, 500us (half of it each way).
    #[arg(long)]
    rtt: Rtt,
    /// Stop after this many connections have been relayed and closed
    /// (default: run until killed).
    #[arg(long)]
    connections: Option<usize>,
}

pub(crate) fn run_relay(args: RelayArgs) -> Result<()> {
    let RelayArgs { listen, to, bandwidth, rtt, connections } = args;
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let link = Link::new(bandwidth, rtt);
    eprintln!("relaying {listen} -> {to} over {bandwidth} with {rtt} RTT");
    let mut handles = Vec::new();
    for (n, conn) in listener.incoming().enumerate() {
        let client = conn.context("accepting a connection")?;
        let server = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
        handles.push(thread::spawn(move || {
            if let Err(e) = relay_pair(client, server, link) {
                eprintln!("relay: connection {n}: {e:#}");
            }
        }));
        if connections.is_some_and(|c| n + 1 >= c) {
            break;
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Relays one connection both ways until both sides have closed.
pub(crate) fn relay_pair(a: TcpStream, b: TcpStream, link: Link) -> Result<()> {
    for s in [&a, &b] {
        s.set_nodelay(true)?;
    }
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let up = thread::spawn(move || shape(a, b2, link));
    let down = shape(b, a2, link);
    let up = up.join().map_err(|_| anyhow::anyhow!("relay thread panicked"))?;
    down.and(up)
}

/// One direction: reads `from`, delivers to `to` as the link would.
fn shape(from: TcpStream, to: TcpStream, link: Link) -> Result<()> {
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(QUEUE);
    let writer = thread::spawn(move || deliver(rx, to));
    let read = read_side(from, tx, link);
    let written = writer.join().map_err(|_| anyhow::anyhow!("relay thread panicked"))?;
    read.and(written)
}

fn read_side(mut from: TcpStream, tx: SyncSender<(Instant, Vec<u8>)>, link: Link) -> Result<()> {
    let half_rtt = Duration::from_secs_f64(link.rtt_s / 2.0);
    let mut free_at = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading"),
        };
        let start = free_at.max(Instant::now());
        free_at = start + Duration::from_secs_f64(n as f64 / link.bytes_per_s);
        if tx.send((free_at + half_rtt, buf[..n].to_vec())).is_err() {
            break; // the other side is gone
        }
    }
    Ok(())
}

fn deliver(rx: Receiver<(Instant, Vec<u8>)>, mut to: TcpStream) -> Result<()> {
    while let Ok((at, bytes)) = rx.recv() {
        let now = Instant::now();
        if at > now {
            thread::sleep(at - now);
        }
        to.write_all(&bytes).context("writing")?;
    }
    // The sender closed its side: pass the half-close on.
    let _ = to.shutdown(Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay between a listener here and an echo-less peer: bytes arrive
    /// whole and in order each way, half-closes pass through, and nothing
    /// arrives before the link could have carried it.
    #[test]
    fn relays_both_ways_intact_and_no_earlier_than_the_link() {
        let link = Link::parse("80Mbit", "40ms").expect("link");
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let front = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (server_addr, front_addr) =
            (server.local_addr().expect("addr"), front.local_addr().expect("addr"));
        let relay = thread::spawn(move || {
            let (c, _) = front.accept().expect("accept");
            let s = TcpStream::connect(server_addr).expect("connect");
            relay_pair(c, s, link).expect("relay");
        });
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let reply: Vec<u8> = payload.iter().rev().copied().collect();
        let srv = {
            let reply = reply.clone();
            thread::spawn(move || {
                let (mut s, _) = server.accept().expect("accept");
                let mut got = Vec::new();
                s.read_to_end(&mut got).expect("read");
                s.write_all(&reply).expect("write");
                got
            })
        };
        let start = Instant::now();
        let mut c = TcpStream::connect(front_addr).expect("connect");
        c.write_all(&payload).expect("write");
        c.shutdown(Shutdown::Write).expect("half-close");
        let mut back = Vec::new();
        c.read_to_end(&mut back).expect("read");
        let took = start.elapsed().as_secs_f64();
        assert_eq!(srv.join().expect("server"), payload);
        assert_eq!(back, reply);
        relay.join().expect("relay");
        // 1 MB each way at 10 MB/s, plus one RTT: at least 0.24 s.
        let floor = 2.0 * 1e6 / link.bytes_per_s + link.rtt_s;
        assert!(took >= floor * 0.99, "took {took} s, the link needs {floor} s");
    }
}
