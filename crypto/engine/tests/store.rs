//! Offline bundles written to disk, read back, and used exactly once.
#![allow(clippy::unwrap_used)]

use std::thread;

use delphi_crypto::block::SecretRng;
use delphi_crypto::channel::TcpChannel;
use delphi_engine::protocol::{
    client_offline, client_setup, server_offline, server_setup, ClientBundle,
};
use delphi_engine::store::{BundleStore, Side};
use delphi_engine::EngineError;
use delphi_net::builtin::build;
use delphi_net::FixedProgram;
use delphi_net::Placement;
use rand::SeedableRng;

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("delphi-store-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn stored_bundles_run_like_fresh_ones_and_only_once() {
    let mut net = build("small-cnn", 10, 31).unwrap();
    "RQR".parse::<Placement>().unwrap().apply(&mut net).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    let arch = FixedProgram::lower(&net.architecture_only()).unwrap();
    let d = dir("run");
    let (sdir, cdir) = (d.join("s"), d.join("c"));

    // Offline in one "session", stored by both parties.
    let (s, c) = TcpChannel::loopback_pair().unwrap();
    let (sp, sd) = (prog.clone(), sdir.clone());
    let server = thread::spawn(move || {
        let mut ch = s;
        let mut rng = SecretRng::seed_from_u64(1);
        let he = server_setup(&mut ch).unwrap();
        let b = server_offline(&mut ch, &sp, &he, &mut rng).unwrap();
        BundleStore::open(&sd, Side::Server).unwrap().put_server(&sp, &b).unwrap();
        b.id()
    });
    let mut ch = c;
    let mut rng = SecretRng::seed_from_u64(2);
    let he = client_setup(&mut ch).unwrap();
    let b = client_offline(&mut ch, &arch, &he, &mut rng).unwrap();
    let cstore = BundleStore::open(&cdir, Side::Client).unwrap();
    cstore.put_client(&arch, &b).unwrap();
    let id = server.join().unwrap();
    assert_eq!(id, b.id());
    drop(b);

    // A truncated copy and a bundle for another network are refused by name.
    let file = cdir.join(format!(
        "{}.client.bundle",
        id.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ));
    let bytes = std::fs::read(&file).unwrap();
    let err = ClientBundle::load(&arch, &bytes[..bytes.len() / 2]).unwrap_err();
    assert!(err.to_string().contains("truncated stored bundle"), "{err}");
    let other = FixedProgram::lower(&build("small-cnn", 10, 31).unwrap()).unwrap();
    let err = ClientBundle::load(&other, &bytes[..]).unwrap_err();
    assert!(err.to_string().contains("different network"), "{err}");

    // Online in a later "session", from the stores.
    let x = prog.encode_input(&delphi_net::eval::random_inputs(784, 1, 9)[0]).unwrap();
    let (s, c) = TcpChannel::loopback_pair().unwrap();
    let (sp, sd) = (prog.clone(), sdir.clone());
    let server = thread::spawn(move || {
        let mut ch = s;
        let st = BundleStore::open(&sd, Side::Server).unwrap();
        let b = st.take_server(&sp, &id).unwrap();
        b.online(&mut ch, &sp).unwrap();
        assert!(st.is_empty().unwrap());
    });
    let mut ch = c;
    let b = cstore.take_client(&arch, &id).unwrap();
    let got = b.online(&mut ch, &arch, &x).unwrap().logits;
    server.join().unwrap();
    let want = prog.decode_output(&prog.eval(&x).unwrap());
    let got = prog.decode_output(&got);
    let range = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 0.02 * range, "{g} vs {w}");
    }

    // Taken once: gone, and a restored copy is refused.
    assert!(cstore.take_client(&arch, &id).is_err());
    std::fs::write(&file, &bytes).unwrap();
    assert!(matches!(
        cstore.take_client(&arch, &id),
        Err(EngineError::Crypto(delphi_crypto::Error::BundleConsumed))
    ));
    std::fs::remove_dir_all(&d).ok();
}

/// Runs one offline phase over loopback and stores the client's half.
fn stored_client_bundle(
    prog: &FixedProgram,
    arch: &FixedProgram,
    cstore: &BundleStore,
    seed: u64,
) -> [u8; 16] {
    let (s, c) = TcpChannel::loopback_pair().unwrap();
    let sp = prog.clone();
    let server = thread::spawn(move || {
        let mut ch = s;
        let mut rng = SecretRng::seed_from_u64(seed);
        let he = server_setup(&mut ch).unwrap();
        server_offline(&mut ch, &sp, &he, &mut rng).unwrap();
    });
    let mut ch = c;
    let mut rng = SecretRng::seed_from_u64(2);
    let he = client_setup(&mut ch).unwrap();
    let b = client_offline(&mut ch, arch, &he, &mut rng).unwrap();
    server.join().unwrap();
    cstore.put_client(arch, &b).unwrap();
    b.id()
}

#[test]
fn renamed_altered_and_foreign_bundles_are_refused() {
    use delphi_engine::StoreProblem;
    let net = build("small-cnn", 10, 32).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    let arch = FixedProgram::lower(&net.architecture_only()).unwrap();
    let d = dir("forged");
    let cdir = d.join("c");
    let cstore = BundleStore::open(&cdir, Side::Client).unwrap();
    let a = stored_client_bundle(&prog, &arch, &cstore, 10);
    let b = stored_client_bundle(&prog, &arch, &cstore, 11);
    assert_ne!(a, b);
    let name = |id: &[u8; 16]| {
        cdir.join(format!(
            "{}.client.bundle",
            id.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ))
    };
    let problem = |e: EngineError| match e {
        EngineError::Store { problem, .. } => problem,
        e => panic!("{e}"),
    };

    // The same directory under another key (another server): refused.
    let foreign = BundleStore::open_with_key(&cdir, Side::Client, &d.join("other.key")).unwrap();
    let e = foreign.take_client(&arch, &a).unwrap_err();
    assert!(matches!(problem(e), StoreProblem::Forged));

    // A copy of b under a fresh name: the id inside is not the one asked for.
    let fresh = [7u8; 16];
    std::fs::copy(name(&b), name(&fresh)).unwrap();
    let e = cstore.take_client(&arch, &fresh).unwrap_err();
    assert!(matches!(problem(e), StoreProblem::WrongId));

    // One byte changed: the tag does not verify.
    let mut bytes = std::fs::read(name(&b)).unwrap();
    bytes[100] ^= 1;
    std::fs::write(name(&b), &bytes).unwrap();
    let e = cstore.take_client(&arch, &b).unwrap_err();
    assert!(matches!(problem(e), StoreProblem::Forged));

    // The key may not live inside the directory it protects.
    let e = BundleStore::open_with_key(&cdir, Side::Client, &cdir.join("k")).unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}
