//! A client safe from its server: a server that sends a network too large
//! for the client's memory, asks for too many bundles ahead, announces
//! oversized or truncated frames, stalls, or answers with a decompression
//! bomb. Each ends with a named error and the client's memory flat.
//! (In a binary of its own, so that the peak-memory readings are these
//! tests'; they run one at a time through a lock for the same reason.)
#![allow(clippy::unwrap_used)]

mod common;
use common::bomb;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use delphi_engine::protocol::client_bundle_bytes;
use delphi_engine::run::peak_rss_bytes;
use delphi_engine::session::{
    infer, ClientOptions, Keep, ServeLimits, Server, SessionEvent, SESSION_VERSION,
};
use delphi_engine::EngineError;
use delphi_net::builtin::build;
use delphi_net::{FixedProgram, Network};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn options(max_memory: u64) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(3),
        store: None,
        normalize: false,
        tls: None,
        max_memory,
        keep: Keep::default(),
    }
}

fn frame(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(&(payload.len() as u64).to_le_bytes()).unwrap();
    s.write_all(payload).unwrap();
}

fn hello(preprocess: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "version": SESSION_VERSION, "preprocess": preprocess, "persistent": false,
    }))
    .unwrap()
}

/// A server that runs `script` on the first connection; returns its address.
fn fake(script: impl FnOnce(TcpStream) + Send + 'static) -> (String, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        script(s)
    });
    (addr, h)
}

/// Runs one client against `addr`; returns its error and how much the
/// process's peak memory grew.
fn client(addr: &str, net: &Network, opts: &ClientOptions) -> (EngineError, u64) {
    let before = peak_rss_bytes();
    let x = vec![0.0f32; net.input.len()];
    let e = infer(addr, &[x], opts, &|_| {}).unwrap_err();
    (e, peak_rss_bytes().saturating_sub(before))
}

/// Reads frames and commands until the client hangs up.
fn drain(mut s: TcpStream) {
    let mut buf = [0u8; 1 << 16];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

#[test]
fn a_network_beyond_the_memory_limit_is_refused_before_any_work() {
    let _one = ONE_AT_A_TIME.lock();
    // All-ReLU ResNet-32: about 1.2 GB of garbled material per bundle.
    let net = build("resnet32", 100, 1).unwrap();
    let need = client_bundle_bytes(&FixedProgram::lower(&net).unwrap());
    assert!(need > 1 << 30, "{need}");
    // Held in memory, it needs more than 256 MB; kept on disk, its shares
    // and one chunk still need more than 48 MB.
    let on_disk = Keep::Disk(std::env::temp_dir());
    for (keep, limit) in [(Keep::Memory, 256 << 20), (on_disk, 48 << 20)] {
        let arch = serde_json::to_vec(&net.architecture_only()).unwrap();
        let (addr, server) = fake(move |mut s| {
            frame(&mut s, &hello(1));
            frame(&mut s, &arch);
            // The client must hang up without asking for an offline phase.
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            assert!(got.len() < 64, "the client sent {} bytes", got.len());
        });
        let opts = ClientOptions { keep: keep.clone(), ..options(limit) };
        let (e, grew) = client(&addr, &net, &opts);
        server.join().unwrap();
        assert!(
            matches!(&e, EngineError::OverLimit(why) if why.contains("--max-memory")),
            "{keep:?}: {e}"
        );
        assert!(grew < 128 << 20, "peak memory grew by {} MB", grew >> 20);
    }
}

#[test]
fn a_server_asking_for_many_bundles_ahead_gets_what_fits() {
    let _one = ONE_AT_A_TIME.lock();
    let net = build("small-cnn", 10, 3).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    let one = client_bundle_bytes(&prog);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let limits = ServeLimits { max_bundles: 64, ..ServeLimits::default() };
    let server = Server {
        net: Arc::new(net.clone()),
        prog: Arc::new(prog),
        preprocess: 64,
        limits,
        store: None,
        tls: None,
    };
    let h = thread::spawn(move || server.run(l, Some(1), Arc::new(|_: SessionEvent| {})));
    let said = Mutex::new(Vec::new());
    let inputs = vec![vec![0.1f32; 784]; 3];
    // Room for two bundles and the working values, not three.
    let opts = options(2 * one + one / 2);
    let preds = infer(addr.as_str(), &inputs, &opts, &|m| said.lock().unwrap().push(m.to_string()))
        .unwrap();
    h.join().unwrap().unwrap();
    assert_eq!(preds.len(), 3);
    let said = said.into_inner().unwrap().join("\n");
    assert!(said.contains("preparing 2 bundle(s) ahead, not the 64"), "{said}");
}

#[test]
fn oversized_truncated_and_stalled_messages_end_with_named_errors() {
    let _one = ONE_AT_A_TIME.lock();
    let net = build("small-cnn", 10, 4).unwrap();
    // An architecture frame announced at 1 TB.
    let (addr, h) = fake(|mut s| {
        frame(&mut s, &hello(1));
        s.write_all(&(1u64 << 40).to_le_bytes()).unwrap();
        drain(s);
    });
    let (e, grew) = client(&addr, &net, &options(1 << 30));
    h.join().unwrap();
    assert!(e.to_string().contains("exceeds the bound"), "{e}");
    assert!(grew < 64 << 20, "peak memory grew by {} MB", grew >> 20);
    // A frame cut short.
    let (addr, h) = fake(|mut s| {
        frame(&mut s, &hello(1));
        s.write_all(&1000u64.to_le_bytes()).unwrap();
        s.write_all(&[b'{'; 10]).unwrap();
    });
    let (e, _) = client(&addr, &net, &options(1 << 30));
    h.join().unwrap();
    assert!(e.to_string().contains("closed the connection"), "{e}");
    // A server that says hello and then nothing: the client's timeout.
    let (addr, h) = fake(|mut s| {
        frame(&mut s, &hello(1));
        thread::sleep(Duration::from_secs(5));
        drop(s);
    });
    let (e, _) = client(&addr, &net, &options(1 << 30));
    assert!(e.to_string().contains("timed out"), "{e}");
    h.join().unwrap();
    // A hello that is not one.
    let (addr, h) = fake(|mut s| {
        frame(&mut s, b"{\"version\": \"three\"}");
        drain(s);
    });
    let (e, _) = client(&addr, &net, &options(1 << 30));
    h.join().unwrap();
    assert!(matches!(&e, EngineError::Malformed(why) if why.starts_with("hello")), "{e}");
}

#[test]
fn a_decompression_bomb_from_the_server_is_refused_with_memory_flat() {
    let _one = ONE_AT_A_TIME.lock();
    let net = build("small-cnn", 10, 5).unwrap();
    let nodes = FixedProgram::lower(&net).unwrap().nodes.len() as u64;
    let arch = serde_json::to_vec(&net.architecture_only()).unwrap();
    let payload = bomb(2 << 30);
    let (addr, h) = fake(move |mut s| {
        frame(&mut s, &hello(1));
        frame(&mut s, &arch);
        let mut r = s.try_clone().unwrap();
        let u64_at = |r: &mut TcpStream| {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).unwrap();
            u64::from_le_bytes(b)
        };
        // The client's public key, then its offline command.
        let pk = u64_at(&mut r);
        std::io::copy(&mut (&mut r).take(pk), &mut std::io::sink()).unwrap();
        assert_eq!(u64_at(&mut r), 1, "CMD_OFFLINE");
        s.write_all(&1u64.to_le_bytes()).unwrap(); // STATUS_OK
        assert_eq!(u64_at(&mut r), nodes, "program nodes");
        s.write_all(&nodes.to_le_bytes()).unwrap();
        s.write_all(&[7u8; 16]).unwrap(); // bundle id
                                          // The first layer's result: a bomb. The client's ciphertexts are
                                          // drained meanwhile.
        let d = thread::spawn(move || drain(r));
        frame(&mut s, &payload);
        drop(s);
        d.join().unwrap();
    });
    let (e, grew) = client(&addr, &net, &options(1 << 30));
    h.join().unwrap();
    // Results travel in a compact form of fixed size: the bomb is refused
    // by its length before anything is inflated.
    assert!(e.to_string().contains("a result of"), "{e}");
    assert!(grew < 64 << 20, "peak memory grew by {} MB", grew >> 20);
}
