//! A server under hostile and careless clients: idle connections, tricklers
//! and slow readers lose their sessions by deadline while a normal client is
//! served correctly; a full server says so; a client cannot make the server
//! store bundles without bound.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use delphi_crypto::block::secret_rng;
use delphi_crypto::channel::{Channel, TcpChannel};
use delphi_engine::protocol::{client_offline, client_setup};
use delphi_engine::session::{
    infer, preprocess, ClientOptions, ServeLimits, Server, SessionEvent, CMD_OFFLINE, STATUS_OK,
};
use delphi_engine::store::{BundleStore, Side, StoreLimits};
use delphi_engine::EngineError;
use delphi_net::{Activation, FixedProgram, Network, Op, Padding, Shape};

/// A small network: conv, ReLU, dense.
fn tiny() -> Network {
    let mut net = Network::new("tiny", Shape::new(1, 4, 4), 8);
    let w = |n: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0).collect() };
    net.push(Op::Conv2d {
        out_channels: 2,
        kernel: 3,
        stride: 1,
        padding: Padding::Same,
        bias: true,
        weight: w(18),
        bias_values: w(2),
        groups: 1,
    });
    net.push(Op::Activation(Activation::Relu));
    net.push(Op::Flatten);
    net.push(Op::Dense { out_features: 3, bias: true, weight: w(96), bias_values: w(3) });
    net
}

type Events = Arc<Mutex<Vec<(Option<String>, usize)>>>;

/// Starts a server for `sessions` sessions; returns its address, the events
/// of ended sessions (error text, predictions) and the server thread.
fn start(
    limits: ServeLimits,
    store: Option<BundleStore>,
    sessions: usize,
) -> (String, Events, thread::JoinHandle<()>) {
    let net = tiny();
    let prog = FixedProgram::lower(&net).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let events: Events = Arc::default();
    let ev = events.clone();
    let on_event = Arc::new(move |e: SessionEvent| {
        ev.lock().unwrap().push((e.error.map(|e| e.to_string()), e.report.predictions));
    });
    let server = Server {
        net: Arc::new(net),
        prog: Arc::new(prog),
        preprocess: 1,
        limits,
        store,
        tls: None,
    };
    let h = thread::spawn(move || server.run(listener, Some(sessions), on_event).unwrap());
    (addr, events, h)
}

fn limits(workers: usize, max_connections: usize) -> ServeLimits {
    ServeLimits {
        workers,
        max_connections,
        io_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(5),
        phase_timeout: Duration::from_secs(5),
        ..ServeLimits::default()
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(30),
        store: None,
        normalize: false,
        tls: None,
        max_memory: 1 << 30,
        keep: delphi_engine::session::Keep::default(),
    }
}

/// A channel that waits before every read (for its first 20 reads: longer
/// than the server's phase deadline): a client that reads slowly.
struct Slow(TcpChannel, usize);

impl Channel for Slow {
    fn send_bytes(&mut self, buf: &[u8]) -> delphi_crypto::Result<()> {
        self.0.send_bytes(buf)
    }
    fn recv_bytes(&mut self, buf: &mut [u8]) -> delphi_crypto::Result<()> {
        if self.1 < 20 {
            self.1 += 1;
            thread::sleep(Duration::from_millis(400));
        }
        self.0.recv_bytes(buf)
    }
    fn flush(&mut self) -> delphi_crypto::Result<()> {
        self.0.flush()
    }
}

fn input() -> Vec<f32> {
    (0..16).map(|i| (i as f32 - 8.0) / 8.0).collect()
}

fn reference() -> Vec<f64> {
    let prog = FixedProgram::lower(&tiny()).unwrap();
    let x = prog.encode_input(&input()).unwrap();
    prog.decode_output(&prog.eval(&x).unwrap())
}

#[test]
fn idle_trickling_and_slow_clients_do_not_hold_up_a_normal_one() {
    let (addr, events, server) = start(limits(4, 8), None, 4);

    // 1. Connects and does nothing.
    let idle = TcpStream::connect(&addr).unwrap();
    // 2. Trickles one byte of its "public key" every 300 ms: each read on
    //    the server is within the idle timeout, only the deadline ends it.
    let cut = Arc::new(AtomicBool::new(false));
    let trickler = {
        let (addr, cut) = (addr.clone(), cut.clone());
        thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            // A length within the public key's bound (≈ 400 kB), never reached.
            s.write_all(&(1u64 << 18).to_le_bytes()).unwrap();
            for _ in 0..100 {
                thread::sleep(Duration::from_millis(300));
                if s.write_all(&[0xA5]).and_then(|()| s.flush()).is_err() {
                    break;
                }
            }
            cut.store(true, Ordering::SeqCst);
        })
    };
    // 3. Runs the handshake and an offline phase properly, but reads slowly.
    let slow = {
        let addr = addr.clone();
        thread::spawn(move || -> Result<(), EngineError> {
            let prog = FixedProgram::lower(&tiny().architecture_only())?;
            let mut ch = Slow(TcpChannel::connect(&addr)?, 0);
            ch.recv_frame_bounded(4096)?;
            ch.recv_frame_bounded(1 << 20)?;
            let he = client_setup(&mut ch)?;
            ch.send_u64(CMD_OFFLINE)?;
            ch.flush()?;
            assert_eq!(ch.recv_u64()?, STATUS_OK);
            client_offline(&mut ch, &prog, &he, &mut secret_rng())?;
            Ok(())
        })
    };
    thread::sleep(Duration::from_millis(200));

    // 4. A normal client, served while the others still hold connections.
    let got = infer(addr.as_str(), &[input()], &options(), &|_| {}).unwrap();
    assert!(
        !cut.load(Ordering::SeqCst),
        "the normal client was served only after the trickler was cut off"
    );
    assert_eq!(got[0].logits, reference());
    // Its bundle was prepared in this session: the offline phase is reported.
    assert!(got[0].offline_bytes.is_some_and(|b| b > got[0].online_bytes), "{:?}", got[0]);
    assert!(got[0].offline_s.is_some_and(|s| s > 0.0), "{:?}", got[0]);

    assert!(slow.join().unwrap().is_err(), "the slow reader was cut off");
    trickler.join().unwrap();
    assert!(cut.load(Ordering::SeqCst));
    server.join().unwrap();
    drop(idle);
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 4);
    let served: Vec<_> = events.iter().filter(|e| e.0.is_none()).collect();
    assert_eq!(served.len(), 1, "{events:?}");
    assert_eq!(served[0].1, 1);
    for (err, _) in events.iter().filter_map(|e| e.0.as_ref().map(|x| (x, e.1))) {
        assert!(err.contains("timed out"), "{err}");
    }
}

#[test]
fn a_full_server_says_it_is_busy() {
    let (addr, events, server) = start(limits(1, 1), None, 2);
    let idle = TcpStream::connect(&addr).unwrap();
    thread::sleep(Duration::from_millis(300));
    let e = infer(addr.as_str(), &[input()], &options(), &|_| {}).unwrap_err();
    assert!(matches!(&e, EngineError::Refused(why) if why.contains("busy")), "{e}");
    // Once the idle client leaves, the next one is served.
    drop(idle);
    let mut got = None;
    for _ in 0..50 {
        match infer(addr.as_str(), &[input()], &options(), &|_| {}) {
            Ok(p) => {
                got = Some(p);
                break;
            }
            Err(EngineError::Refused(_)) => thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got.unwrap()[0].logits, reference());
    server.join().unwrap();
    assert_eq!(events.lock().unwrap().len(), 2);
}

#[test]
fn a_client_cannot_fill_the_store_without_bound() {
    let d = std::env::temp_dir().join(format!("delphi-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let store = BundleStore::open(d.join("server"), Side::Server).unwrap();
    let (addr, _events, server) = start(
        ServeLimits { store: StoreLimits { bundles: 2, ..StoreLimits::default() }, ..limits(2, 4) },
        Some(store.clone()),
        1,
    );
    let opts = ClientOptions {
        store: Some(BundleStore::open(d.join("client"), Side::Client).unwrap()),
        ..options()
    };
    let e = preprocess(addr.as_str(), 3, &opts, &|_| {}).unwrap_err();
    assert!(matches!(&e, EngineError::Refused(why) if why.contains("full")), "{e}");
    server.join().unwrap();
    assert_eq!(store.len().unwrap(), 2);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn an_input_outside_the_declared_range_is_refused_before_anything_runs() {
    let (addr, events, server) = start(limits(1, 2), None, 1);
    let big: Vec<f32> = input().iter().map(|v| v * 1e5).collect();
    let e = infer(addr.as_str(), &[big], &options(), &|_| {}).unwrap_err();
    assert!(
        matches!(&e, EngineError::Net(delphi_net::NetError::InputRange { index: 0, .. })),
        "{e}"
    );
    assert!(e.to_string().contains("[-1, 1]"), "{e}");
    server.join().unwrap();
    assert_eq!(events.lock().unwrap()[0].1, 0, "no prediction was made");
}

#[test]
fn one_client_cannot_take_every_place_in_the_store() {
    let d = std::env::temp_dir().join(format!("delphi-hostile-quota-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let store = BundleStore::open(d.join("server"), Side::Server).unwrap();
    let quota = StoreLimits { bundles: 10, per_owner: 2, ..StoreLimits::default() };
    let (addr, _events, server) =
        start(ServeLimits { store: quota, ..limits(2, 4) }, Some(store.clone()), 1);
    let opts = ClientOptions {
        store: Some(BundleStore::open(d.join("client"), Side::Client).unwrap()),
        ..options()
    };
    let e = preprocess(addr.as_str(), 3, &opts, &|_| {}).unwrap_err();
    assert!(matches!(&e, EngineError::Refused(why) if why.contains("quota")), "{e}");
    server.join().unwrap();
    // Two places taken; eight left for other clients.
    assert_eq!(store.len().unwrap(), 2);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn an_expired_stored_bundle_is_skipped_and_the_prediction_still_made() {
    let d = std::env::temp_dir().join(format!("delphi-hostile-ttl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let store = BundleStore::open(d.join("server"), Side::Server).unwrap();
    let ttl = StoreLimits { ttl: Duration::from_millis(500), ..StoreLimits::default() };
    let (addr, _events, server) =
        start(ServeLimits { store: ttl, ..limits(2, 4) }, Some(store.clone()), 2);
    let opts = ClientOptions {
        store: Some(BundleStore::open(d.join("client"), Side::Client).unwrap()),
        ..options()
    };
    assert_eq!(preprocess(addr.as_str(), 1, &opts, &|_| {}).unwrap(), 1);
    thread::sleep(Duration::from_millis(700));
    let said = Mutex::new(Vec::new());
    let p = infer(addr.as_str(), &[input()], &opts, &|m| said.lock().unwrap().push(m.to_string()))
        .unwrap();
    server.join().unwrap();
    assert_eq!(p[0].logits, reference());
    // Made in the session, not taken from the store.
    assert!(p[0].offline_s.is_some());
    let said = said.into_inner().unwrap().join("\n");
    assert!(said.contains("no longer held by the server"), "{said}");
    assert!(store.is_empty().unwrap());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_session_ends_at_its_lifetime_however_it_is_paced() {
    let lifetime = ServeLimits { session_lifetime: Duration::from_millis(800), ..limits(1, 2) };
    let (addr, events, server) = start(lifetime, None, 1);
    let mut ch = TcpChannel::connect(&addr).unwrap();
    ch.recv_frame_bounded(4096).unwrap();
    ch.recv_frame_bounded(1 << 30).unwrap();
    delphi_engine::protocol::client_setup(&mut ch).unwrap();
    // Every wait within the idle timeout, but the session outlives its cap.
    thread::sleep(Duration::from_millis(1000));
    let _ = ch.send_u64(delphi_engine::session::CMD_OFFLINE).and_then(|()| ch.flush());
    server.join().unwrap();
    let ev = events.lock().unwrap();
    assert!(ev[0].0.as_deref().is_some_and(|e| e.contains("lifetime")), "{:?}", ev[0]);
}
