//! Offline bundles written to disk, read back, and used exactly once.
#![allow(clippy::unwrap_used)]

use std::thread;

use delphi_crypto::block::SecretRng;
use delphi_crypto::channel::TcpChannel;
use delphi_engine::protocol::{
    client_offline, client_offline_to, client_setup, server_offline, server_setup, ClientBundle,
    Material,
};
use delphi_engine::store::{BundleStore, Side, StoreLimits};
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
        let st = BundleStore::open(&sd, Side::Server).unwrap();
        let room = st.reserve("127.0.0.1", &StoreLimits::default()).unwrap();
        st.put_server(&sp, &b, room).unwrap();
        b.id()
    });
    let mut ch = c;
    let mut rng = SecretRng::seed_from_u64(2);
    let he = client_setup(&mut ch).unwrap();
    // The client keeps its garbled material on disk: stored from the spool,
    // and loaded back into one.
    let spool = d.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Material::Disk(spool.clone());
    let b = client_offline_to(&mut ch, &arch, &he, &mut rng, &disk).unwrap();
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
    let b = cstore.take_client_to(&arch, &id, &disk).unwrap();
    let got = b.online(&mut ch, &arch, &x).unwrap().logits;
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "spool files are unlinked");
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

/// A client bundle stored under `cstore`, made by a real offline phase of
/// the tiny program; returns (program, id).
fn one_bundle(cstore: &BundleStore, seed: u64) -> (FixedProgram, [u8; 16]) {
    let net = build("small-cnn", 10, 33).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    let arch = FixedProgram::lower(&net.architecture_only()).unwrap();
    let id = stored_client_bundle(&prog, &arch, cstore, seed);
    (arch, id)
}

#[test]
fn unused_bundles_expire_and_are_not_served() {
    let d = dir("ttl");
    let cstore = BundleStore::open(d.join("c"), Side::Client).unwrap();
    let (arch, id) = one_bundle(&cstore, 40);
    // Kept while young.
    assert_eq!(
        cstore.evict(std::time::Duration::from_secs(3600), std::time::Duration::MAX).unwrap(),
        0
    );
    assert_eq!(cstore.ids().unwrap(), vec![id]);
    // Older than the time to live: evicted, and then absent by name.
    thread::sleep(std::time::Duration::from_millis(20));
    let n = cstore.evict(std::time::Duration::from_millis(10), std::time::Duration::MAX).unwrap();
    assert_eq!(n, 1);
    let e = cstore.take_client(&arch, &id).unwrap_err();
    assert!(
        matches!(e, EngineError::Store { problem: delphi_engine::StoreProblem::Missing, .. }),
        "{e}"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn reservations_are_atomic_and_quotas_per_client_hold() {
    let d = dir("reserve");
    let st = BundleStore::open(d.join("s"), Side::Server).unwrap();
    let limits = StoreLimits { bundles: 5, per_owner: 2, ..StoreLimits::default() };
    // Twelve workers of six clients race for five places: exactly five win,
    // and no client gets more than two.
    let won: Vec<(usize, bool)> = thread::scope(|sc| {
        let hs: Vec<_> = (0..12)
            .map(|k| {
                let (st, limits) = (st.clone(), limits.clone());
                sc.spawn(move || {
                    let owner = format!("10.0.0.{}", k % 6);
                    (k % 6, st.reserve(&owner, &limits).map(std::mem::forget).is_ok())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(won.iter().filter(|w| w.1).count(), 5, "{won:?}");
    for owner in 0..6 {
        assert!(won.iter().filter(|w| w.0 == owner && w.1).count() <= 2, "{won:?}");
    }
    // The refusals say which limit.
    let e = st.reserve("10.0.0.9", &limits).unwrap_err();
    assert!(e.to_string().contains("store is full"), "{e}");
    let st2 = BundleStore::open(d.join("s2"), Side::Server).unwrap();
    let _a = st2.reserve("10.0.0.1", &limits).unwrap();
    let _b = st2.reserve("10.0.0.1", &limits).unwrap();
    let e = st2.reserve("10.0.0.1", &limits).unwrap_err();
    assert!(e.to_string().contains("quota"), "{e}");
    assert!(st2.reserve("10.0.0.2", &limits).is_ok());
    // A reservation dropped (its offline phase failed) frees its place.
    drop(_a);
    assert!(st2.reserve("10.0.0.1", &limits).is_ok());
    // Abandoned reservations (a worker that died) go after their time.
    thread::sleep(std::time::Duration::from_millis(20));
    let stale = StoreLimits { stale_reservation: std::time::Duration::from_millis(10), ..limits };
    assert!(st.reserve("10.0.0.9", &stale).is_ok());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn two_takers_of_one_bundle_one_wins_and_nothing_is_left_behind() {
    let d = dir("race");
    let cdir = d.join("c");
    let cstore = BundleStore::open(&cdir, Side::Client).unwrap();
    for round in 0..4 {
        let (arch, id) = one_bundle(&cstore, 50 + round);
        let got: Vec<bool> = thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let (st, arch) = (cstore.clone(), arch.clone());
                    sc.spawn(move || st.take_client(&arch, &id).is_ok())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got.iter().filter(|&&ok| ok).count(), 1, "round {round}: {got:?}");
    }
    // No temporary or taken file remains.
    let left: Vec<String> = std::fs::read_dir(&cdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "used-ids" && n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_new_key_is_never_read_half_written() {
    let d = dir("key");
    std::fs::create_dir_all(&d).unwrap();
    // Sixteen openers race to make the key: every one gets it whole (a
    // half-written key would be refused as "not a bundle-store key"), and
    // all the same one (a bundle stored through one is taken through
    // another).
    let stores: Vec<BundleStore> = thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|k| {
                let d = d.clone();
                sc.spawn(move || {
                    BundleStore::open_with_key(
                        d.join(format!("c{k}")),
                        Side::Client,
                        &d.join("shared.key"),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    let (arch, id) = one_bundle(&stores[3], 60);
    std::fs::rename(
        stores[3].dir().join(format!(
            "{}.client.bundle",
            id.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
        stores[11].dir().join(format!(
            "{}.client.bundle",
            id.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
    )
    .unwrap();
    assert!(stores[11].take_client(&arch, &id).is_ok());
    let key = std::fs::read_to_string(d.join("shared.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    let leftovers = std::fs::read_dir(&d)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0);
    std::fs::remove_dir_all(&d).ok();
}
