//! `delphi serve` and `delphi infer` as separate processes.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

#[path = "../../engine/tests/common/postgres.rs"]
mod pg;

use delphi_net::builtin::build;
use delphi_net::{FixedProgram, WeightStorage};

fn delphi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_delphi"))
}

/// `delphi infer` in plaintext (these tests run on loopback; TLS has its
/// own test below).
fn infer() -> Command {
    let mut c = delphi();
    c.args(["infer", "--plaintext"]);
    c
}

/// Starts `delphi serve` on a free port; returns the child and its address.
fn serve(plan: &std::path::Path, sessions: usize) -> (Child, String) {
    serve_with(plan, sessions, &[])
}

fn serve_with(plan: &std::path::Path, sessions: usize, extra: &[&str]) -> (Child, String) {
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
        .args(extra)
        .args(if extra.contains(&"--tls-cert") { &[][..] } else { &["--plaintext"][..] })
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.split(" on ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    // Keep draining the server's log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, addr)
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("delphi-serve-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small-cnn with random weights (`seed`), saved as `d/plan.json`.
fn small_cnn_plan(
    d: &std::path::Path,
    seed: u64,
    storage: WeightStorage,
) -> (delphi_net::Network, std::path::PathBuf) {
    let net = build("small-cnn", 10, seed).unwrap();
    let plan = d.join("plan.json");
    net.save(&plan, storage).unwrap();
    (net, plan)
}

/// Runs `cmd` and checks that it succeeds (its stderr in the message).
fn succeeds(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn two_processes_give_the_reference_logits() {
    let d = dir("ok");
    let (net, plan) = small_cnn_plan(&d, 21, WeightStorage::Sidecar);
    two_processes_on(&d, &net, &plan, &[]);
}

/// The README's default plan shape (every activation quadratic: bounded and
/// wide exact truncations, which the client learns from the architecture
/// the server sends) and exact ReLU windows, served by one process to
/// another: the logits equal the reference exactly.
#[test]
fn exact_truncations_and_windows_give_the_reference_logits_across_processes() {
    let d = dir("exact");
    let mut qqq = build("small-cnn", 10, 24).unwrap();
    "QQQ".parse::<delphi_net::Placement>().unwrap().apply(&mut qqq).unwrap();
    let mut windows = build("small-cnn", 10, 26).unwrap();
    let w = delphi_net::window::exact_windows(&windows).unwrap();
    delphi_net::window::set_windows(&mut windows, &w).unwrap();
    // The client keeps its garbled material on disk (in a directory of the
    // test's own, left empty: spool files are unlinked as they are made).
    let spool = d.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let on_disk = ["--keep-material", "disk", "--spool-dir", spool.to_str().unwrap()];
    for (k, net) in [qqq, windows].into_iter().enumerate() {
        let plan = d.join(format!("plan-{k}.json"));
        net.save(&plan, WeightStorage::Inline).unwrap();
        two_processes_on(&d, &net, &plan, &on_disk);
    }
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    // A spool directory that is not one, or one with nothing to keep on
    // disk, is refused before connecting.
    for (args, why) in [
        (&["--spool-dir", "/nonexistent/spool"][..], "not a directory"),
        (&["--keep-material", "memory", "--spool-dir", "/tmp"][..], "nothing would be kept"),
    ] {
        let out =
            infer().args(["--connect", "127.0.0.1:9", "--input", "x.json"]).args(args).output();
        let err = String::from_utf8_lossy(&out.unwrap().stderr).to_string();
        assert!(err.contains(why), "{err}");
    }
}

fn two_processes_on(
    d: &std::path::Path,
    net: &delphi_net::Network,
    plan: &std::path::Path,
    extra: &[&str],
) {
    let x: Vec<f32> = (0..784).map(|i| ((i * 37 % 100) as f32 / 50.0) - 1.0).collect();
    let input = d.join("input.json");
    std::fs::write(
        &input,
        serde_json::to_string(&vec![x.clone(), x.iter().map(|v| -v).collect()]).unwrap(),
    )
    .unwrap();

    let (mut server, addr) = serve(plan, 1);
    let out =
        succeeds(infer().args(["--json", "--connect", &addr, "--input"]).arg(&input).args(extra));
    assert!(server.wait().unwrap().success());

    let out: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out["client_peak_rss_bytes"].as_u64().unwrap() > 0);
    check_logits(net, &[x.clone(), x.iter().map(|v| -v).collect()], &out["predictions"]);
}

fn check_logits(net: &delphi_net::Network, inputs: &[Vec<f32>], preds: &serde_json::Value) {
    let prog = FixedProgram::lower(net).unwrap();
    for (k, xi) in inputs.iter().enumerate() {
        let want = prog.decode_output(&prog.eval(&prog.encode_input(xi).unwrap()).unwrap());
        let got: Vec<f64> =
            preds[k]["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        // Exact field results; the JSON text round trip costs at most an ulp of f64.
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "inference {k}: {g} vs {w}");
        }
    }
}

#[test]
fn bundles_prepared_in_one_process_are_used_once_in_another() {
    let d = dir("store");
    let (net, plan) = small_cnn_plan(&d, 23, WeightStorage::Inline);
    let (sdir, cdir) = (d.join("server-bundles"), d.join("client-bundles"));
    let (mut server, addr) = serve_with(&plan, 2, &["--bundle-dir", sdir.to_str().unwrap()]);
    succeeds(
        infer().args(["--connect", &addr, "--preprocess-only", "2", "--bundle-dir"]).arg(&cdir),
    );
    let count = |p: &std::path::Path| {
        std::fs::read_dir(p)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "bundle"))
            .count()
    };
    assert_eq!((count(&sdir), count(&cdir)), (2, 2));
    // A copy of a client bundle, to try to use it a second time.
    let file = std::fs::read_dir(&cdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "bundle"))
        .unwrap();
    let copy = std::fs::read(&file).unwrap();

    let inputs: Vec<Vec<f32>> = (0..2)
        .map(|k| (0..784).map(|i| ((i * (k + 3)) % 17) as f32 / 9.0 - 0.9).collect())
        .collect();
    let input = d.join("inputs.json");
    std::fs::write(&input, serde_json::to_string(&inputs).unwrap()).unwrap();
    let out = succeeds(
        infer()
            .args(["--json", "--connect", &addr, "--bundle-dir"])
            .arg(&cdir)
            .arg("--input")
            .arg(&input),
    );
    assert!(server.wait().unwrap().success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_logits(&net, &inputs, &v["predictions"]);
    // Both stores are empty: the stored bundles were used, none prepared anew.
    assert_eq!((count(&sdir), count(&cdir)), (0, 0));
    // Restoring the used file does not make it usable again.
    std::fs::write(&file, copy).unwrap();
    let store =
        delphi_engine::store::BundleStore::open(&cdir, delphi_engine::store::Side::Client).unwrap();
    let id = store.ids().unwrap()[0];
    let prog = FixedProgram::lower(&net.architecture_only()).unwrap();
    assert!(matches!(
        store.take_client(&prog, &id),
        Err(delphi_engine::EngineError::Crypto(delphi_crypto::Error::BundleConsumed))
    ));
}

#[test]
fn garbage_and_dropped_peers_end_with_errors_not_hangs() {
    let d = dir("bad");
    let plan = d.join("plan.json");
    build("small-cnn", 10, 22).unwrap().save(&plan, WeightStorage::Inline).unwrap();

    // A peer that sends an absurd frame length instead of a public key.
    let (mut server, addr) = serve(&plan, 1);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut junk = Vec::new();
    r.read_until(b'}', &mut junk).unwrap(); // part of the hello; the rest is ignored
    s.write_all(&u64::MAX.to_le_bytes()).unwrap();
    assert!(server.wait().unwrap().success(), "the server must survive a bad session");

    // A server that is not there: a clear error, non-zero exit.
    let input = d.join("input.json");
    std::fs::write(&input, serde_json::to_string(&vec![0.0f32; 784]).unwrap()).unwrap();
    let out = infer()
        .args(["--connect", &addr, "--timeout", "5", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("private inference with"), "{err}");

    // A wrongly sized input is refused before any cryptography.
    let (mut server, addr) = serve(&plan, 1);
    std::fs::write(&input, "[1, 2, 3]").unwrap();
    let out = infer().args(["--connect", &addr, "--input"]).arg(&input).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("takes 784"));
    server.kill().ok();
}

#[test]
fn infer_applies_the_recorded_input_normalisation() {
    let d = dir("norm");
    let mut net = build("small-cnn", 10, 25).unwrap();
    net.metadata.input_normalization =
        Some(delphi_net::Normalization { mean: vec![0.5], std: vec![0.25], pixels: None });
    let plan = d.join("plan.json");
    net.save(&plan, WeightStorage::Inline).unwrap();
    let raw: Vec<f32> = (0..784).map(|i| (i * 13 % 256) as f32 / 255.0).collect();
    let normalised: Vec<f32> = raw.iter().map(|v| (v - 0.5) / 0.25).collect();
    let (raw_file, norm_file) = (d.join("raw.json"), d.join("norm.json"));
    std::fs::write(&raw_file, serde_json::to_string(&raw).unwrap()).unwrap();
    std::fs::write(&norm_file, serde_json::to_string(&normalised).unwrap()).unwrap();

    let (mut server, addr) = serve(&plan, 2);
    // Raw input: the client normalises it as the plan says.
    let a =
        infer().args(["--json", "--connect", &addr, "--input"]).arg(&raw_file).output().unwrap();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    // Already normalised input, sent as it is.
    let b = infer()
        .args(["--json", "--normalized", "--connect", &addr, "--input"])
        .arg(&norm_file)
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert!(server.wait().unwrap().success());
    for out in [a, b] {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        check_logits(&net, std::slice::from_ref(&normalised), &v["predictions"]);
    }
}

/// TLS end to end: `delphi tls-cert` makes a private CA, the server proves
/// itself with its certificate, the client checks it and gets the
/// reference logits; a client that trusts another CA, or none, is refused
/// by name, and so is a server with no TLS and no --plaintext.
#[test]
fn predictions_over_tls_and_an_untrusted_server_refused() {
    let d = dir("tls");
    let (net, plan) = small_cnn_plan(&d, 27, WeightStorage::Inline);
    let (certs, other) = (d.join("certs"), d.join("other"));
    for (dir, name) in [(&certs, "127.0.0.1"), (&other, "127.0.0.1")] {
        succeeds(delphi().args(["tls-cert", "--name", name, "--out"]).arg(dir));
    }
    // Never overwritten.
    let again = delphi().args(["tls-cert", "--name", "x", "--out"]).arg(&certs).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not overwritten"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("server-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the private key is readable by others: {mode:o}");
    }

    let x: Vec<f32> = (0..784).map(|i| ((i * 29 % 100) as f32 / 50.0) - 1.0).collect();
    let input = d.join("input.json");
    std::fs::write(&input, serde_json::to_string(&x).unwrap()).unwrap();
    let cert = certs.join("server.pem").to_string_lossy().into_owned();
    let key = certs.join("server-key.pem").to_string_lossy().into_owned();
    let (mut server, addr) = serve_with(&plan, 3, &["--tls-cert", &cert, "--tls-key", &key]);
    let out = succeeds(
        delphi()
            .args(["infer", "--json", "--connect", &addr, "--tls-ca"])
            .arg(certs.join("ca.pem"))
            .arg("--input")
            .arg(&input),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_logits(&net, std::slice::from_ref(&x), &v["predictions"]);
    let p = &v["predictions"][0];
    // TLS records cost bytes on the link beyond the protocol's own.
    assert!(p["online_wire_bytes"].as_u64().unwrap() > p["online_bytes"].as_u64().unwrap(), "{p}");

    // Another CA: refused by name, before anything is sent.
    let bad = delphi()
        .args(["infer", "--connect", &addr, "--tls-ca"])
        .arg(other.join("ca.pem"))
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("not trusted") && err.contains("--tls-ca"), "{err}");
    // A plaintext client at a TLS server gets no prediction.
    let plain = infer()
        .args(["--connect", &addr, "--timeout", "3", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!plain.status.success());
    assert!(server.wait().unwrap().success(), "the server must survive both bad sessions");

    // Neither TLS nor --plaintext: refused by name on both sides.
    let c = delphi().args(["infer", "--connect", &addr, "--input"]).arg(&input).output().unwrap();
    assert!(!c.status.success());
    assert!(String::from_utf8_lossy(&c.stderr).contains("--plaintext"));
    let s =
        delphi().args(["serve", "--listen", "127.0.0.1:0", "--plan"]).arg(&plan).output().unwrap();
    assert!(!s.status.success());
    let err = String::from_utf8_lossy(&s.stderr);
    assert!(err.contains("--tls-cert") && err.contains("--plaintext"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

/// Two replicas on one PostgreSQL ledger and one shared bundle directory:
/// bundles prepared on A; A is killed with a session open; the client,
/// given both addresses, goes on with B, where its bundles still work.
#[test]
fn a_killed_replica_loses_only_its_session_and_the_client_goes_on_with_another() {
    let pg = pg::Pg::get("kill");
    let db = pg.fresh_db();
    let d = dir("replicas");
    let (net, plan) = small_cnn_plan(&d, 28, WeightStorage::Inline);
    let shared = |p: &str| d.join("shared").join(p).to_string_lossy().into_owned();
    let replica = |name: &str, sessions: usize| {
        let args = [
            "--bundle-dir",
            &shared("bundles"),
            "--bundle-key",
            &shared("k"),
            "--ledger",
            &db,
            "--replica",
            name,
        ];
        serve_with(&plan, sessions, &args)
    };
    std::fs::create_dir_all(d.join("shared")).unwrap();
    let (mut a, a_addr) = replica("a", 100);
    let (mut b, b_addr) = replica("b", 1);
    let client = d.join("client");
    succeeds(
        infer().args(["--connect", &a_addr, "--preprocess-only", "3", "--bundle-dir"]).arg(&client),
    );
    // A session in progress on A when it dies.
    let mut open = std::net::TcpStream::connect(&a_addr).unwrap();
    let mut hello = [0u8; 8];
    std::io::Read::read_exact(&mut open, &mut hello).unwrap();
    a.kill().unwrap();
    a.wait().unwrap();
    // That session is lost: its connection ends (not a silent hang).
    open.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let ended = loop {
        match std::io::Read::read(&mut open, &mut [0u8; 1 << 16]) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) => {
                break !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    };
    assert!(ended, "the killed replica's session did not end");

    let inputs: Vec<Vec<f32>> =
        (0..3).map(|k| (0..784).map(|i| ((i * (k + 5)) % 23) as f32 / 23.0).collect()).collect();
    let input = d.join("input.json");
    std::fs::write(&input, serde_json::to_string(&inputs).unwrap()).unwrap();
    let out = infer()
        .args(["--json", "--connect", &format!("{a_addr},{b_addr}"), "--bundle-dir"])
        .arg(&client)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("trying {b_addr}")), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_logits(&net, &inputs, &v["predictions"]);
    // All three from the bundles prepared on A.
    for p in v["predictions"].as_array().unwrap() {
        assert!(p["offline_s"].is_null(), "{p}");
    }
    assert!(b.wait().unwrap().success());
    std::fs::remove_dir_all(&d).ok();
}
