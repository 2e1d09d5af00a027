//! `delphi serve` and `delphi infer` as separate processes.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use delphi_net::builtin::build;
use delphi_net::{FixedProgram, WeightStorage};

fn delphi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_delphi"))
}

/// Starts `delphi serve` on a free port; returns the child and its address.
fn serve(plan: &std::path::Path, sessions: usize) -> (Child, String) {
    let mut child = delphi()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--timeout",
            "20",
            "--sessions",
            &sessions.to_string(),
            "--plan",
        ])
        .arg(plan)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split(" on ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    // Keep draining the server's log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, addr)
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("delphi-serve-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn two_processes_give_the_reference_logits() {
    let d = dir("ok");
    let net = build("small-cnn", 10, 21).unwrap();
    let plan = d.join("plan.json");
    net.save(&plan, WeightStorage::Sidecar).unwrap();
    let x: Vec<f32> = (0..784)
        .map(|i| ((i * 37 % 100) as f32 / 50.0) - 1.0)
        .collect();
    let input = d.join("input.json");
    std::fs::write(
        &input,
        serde_json::to_string(&vec![x.clone(), x.iter().map(|v| -v).collect()]).unwrap(),
    )
    .unwrap();

    let (mut server, addr) = serve(&plan, 1);
    let out = delphi()
        .args(["infer", "--json", "--connect", &addr, "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.wait().unwrap().success());

    let preds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    for (k, xi) in [x.clone(), x.iter().map(|v| -v).collect::<Vec<f32>>()]
        .iter()
        .enumerate()
    {
        let want = prog.decode_output(&prog.eval(&prog.encode_input(xi).unwrap()).unwrap());
        let got: Vec<f64> = preds[k]["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // Exact field results; the JSON text round trip costs at most an ulp of f64.
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                "inference {k}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn garbage_and_dropped_peers_end_with_errors_not_hangs() {
    let d = dir("bad");
    let plan = d.join("plan.json");
    build("small-cnn", 10, 22)
        .unwrap()
        .save(&plan, WeightStorage::Inline)
        .unwrap();

    // A peer that sends an absurd frame length instead of a public key.
    let (mut server, addr) = serve(&plan, 1);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut junk = Vec::new();
    r.read_until(b'}', &mut junk).unwrap(); // part of the hello; the rest is ignored
    s.write_all(&u64::MAX.to_le_bytes()).unwrap();
    assert!(
        server.wait().unwrap().success(),
        "the server must survive a bad session"
    );

    // A server that is not there: a clear error, non-zero exit.
    let input = d.join("input.json");
    std::fs::write(&input, serde_json::to_string(&vec![0.0f32; 784]).unwrap()).unwrap();
    let out = delphi()
        .args(["infer", "--connect", &addr, "--timeout", "5", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("private inference with"), "{err}");

    // A wrongly sized input is refused before any cryptography.
    let (mut server, addr) = serve(&plan, 1);
    std::fs::write(&input, "[1, 2, 3]").unwrap();
    let out = delphi()
        .args(["infer", "--connect", &addr, "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("takes 784"));
    server.kill().ok();
}
