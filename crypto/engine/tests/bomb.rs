//! A decompression bomb as the first message: refused by name before SEAL
//! sees it, with the server's memory flat. (Alone in its binary, so that the
//! peak-memory reading is this test's.)
#![allow(clippy::unwrap_used)]

mod common;
use common::bomb;

use std::net::TcpListener;
use std::thread;

use delphi_crypto::channel::{Channel, TcpChannel};
use delphi_engine::run::peak_rss_bytes;
use delphi_engine::session::{serve_connection, ServeLimits};
use delphi_engine::EngineError;
use delphi_net::builtin::build;
use delphi_net::FixedProgram;

#[test]
fn a_decompression_bomb_is_refused_with_memory_flat() {
    let net = build("small-cnn", 10, 1).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    let frame = bomb(2 << 30);
    assert!(frame.len() < 256 << 10, "{} bytes", frame.len());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = thread::spawn(move || {
        let mut ch = TcpChannel::connect(addr).unwrap();
        ch.recv_frame_bounded(4096).unwrap();
        ch.recv_frame_bounded(1 << 30).unwrap();
        ch.send_frame(&frame).unwrap();
        ch.flush().unwrap();
        // The server hangs up without a word.
        assert!(ch.recv_u64().is_err());
    });
    let (stream, _) = listener.accept().unwrap();
    let before = peak_rss_bytes();
    let e = serve_connection(stream, &net, &prog, 1, &ServeLimits::default(), None, None)
        .unwrap_err()
        .1;
    let grew = peak_rss_bytes().saturating_sub(before);
    client.join().unwrap();
    assert!(matches!(&e, EngineError::HeObject { what: "public key", .. }), "{e}");
    assert!(e.to_string().contains("inflates to"), "{e}");
    assert!(grew < 64 << 20, "peak memory grew by {} MB", grew >> 20);
}
