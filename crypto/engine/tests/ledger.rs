//! Replicas of one service on one PostgreSQL ledger: a bundle prepared on
//! one replica is consumed on another exactly once, races for one bundle
//! have one winner, and the store's limits and quotas count every replica.
#![allow(clippy::unwrap_used)]

#[path = "common/postgres.rs"]
mod pg;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use delphi_engine::ledger::{Claim, Ledger};
use delphi_engine::session::{infer, preprocess, ClientOptions, ServeLimits, Server, SessionEvent};
use delphi_engine::store::{BundleStore, Side, StoreLimits};
use delphi_engine::EngineError;
use delphi_net::builtin::build;
use delphi_net::{FixedProgram, Network};

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("delphi-ledger-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn two_replicas_racing_for_one_bundle_exactly_one_wins() {
    let pg = Pg::get("race");
    let db = pg.fresh_db();
    let (a, b) = (Ledger::connect(&db, "a").unwrap(), Ledger::connect(&db, "b").unwrap());
    let (a, b) = (Arc::new(a), Arc::new(b));
    let limits = (1000, u64::MAX, 1000);
    let (ttl, stale) = (Duration::from_secs(60), Duration::from_secs(60));
    let mut wins = [0usize; 2];
    for round in 0..100u8 {
        let (res, id) = ([round; 16], [round ^ 0xff; 16]);
        a.reserve(&res, "client", 10, limits, ttl, stale).unwrap().unwrap();
        a.ready(&res, &id, 10, ttl).unwrap();
        let claims: Vec<Claim> = [a.clone(), b.clone()]
            .into_iter()
            .map(|l| thread::spawn(move || l.claim(&id).unwrap()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let won: Vec<usize> = (0..2).filter(|&k| claims[k] == Claim::Won).collect();
        assert_eq!(won.len(), 1, "round {round}: {claims:?}");
        assert!(claims.contains(&Claim::Consumed), "round {round}: {claims:?}");
        wins[won[0]] += 1;
        // And never again, by either.
        assert_eq!(a.claim(&id).unwrap(), Claim::Consumed);
        let by = a.taken_by(&id).unwrap().unwrap();
        assert_eq!(by, ["a", "b"][won[0]]);
    }
    assert_eq!(wins[0] + wins[1], 100);
    // Unknown ids are missing, not consumed.
    assert_eq!(b.claim(&[0x5a; 16]).unwrap(), Claim::Missing);
}

type Events = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A replica: a server on its own port with the shared store directory and
/// key, and its own connection to the ledger.
fn replica(
    net: &Network,
    shared: &std::path::Path,
    db: &str,
    name: &str,
    limits: ServeLimits,
    sessions: usize,
    events: Events,
) -> (String, thread::JoinHandle<()>) {
    let store = BundleStore::open_with_key(shared.join("bundles"), Side::Server, &shared.join("k"))
        .unwrap()
        .with_ledger(Arc::new(Ledger::connect(db, name).unwrap()));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let server = Server {
        net: Arc::new(net.clone()),
        prog: Arc::new(FixedProgram::lower(net).unwrap()),
        preprocess: 1,
        limits,
        store: Some(store),
        tls: None,
    };
    let name = name.to_string();
    let h = thread::spawn(move || {
        let ev = events.clone();
        let on = Arc::new(move |e: SessionEvent| {
            ev.lock().unwrap().push((name.clone(), e.error.map(|e| e.to_string())));
        });
        server.run(l, Some(sessions), on).unwrap()
    });
    (addr, h)
}

fn options(client_dir: &std::path::Path) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(60),
        store: Some(BundleStore::open(client_dir, Side::Client).unwrap()),
        normalize: false,
        tls: None,
        max_memory: 1 << 30,
        keep: delphi_engine::session::Keep::default(),
    }
}

#[test]
fn bundles_prepared_on_one_replica_are_used_once_on_another() {
    let pg = Pg::get("replicas");
    let db = pg.fresh_db();
    let d = dir("replicas");
    let net = build("small-cnn", 10, 41).unwrap();
    let events: Events = Arc::default();
    let limits = ServeLimits::default();
    let (a, ha) = replica(&net, &d, &db, "a", limits.clone(), 1, events.clone());
    let (b, hb) = replica(&net, &d, &db, "b", limits, 2, events.clone());
    let opts = options(&d.join("client"));
    assert_eq!(preprocess(a.as_str(), 2, &opts, &|_| {}).unwrap(), 2);
    ha.join().unwrap();
    let ids = opts.store.as_ref().unwrap().ids().unwrap();

    let x: Vec<Vec<f32>> =
        (0..2).map(|k| (0..784).map(|i| ((i * (k + 3)) % 17) as f32 / 17.0).collect()).collect();
    let preds = infer(b.as_str(), &x, &opts, &|_| {}).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    for (p, xi) in preds.iter().zip(&x) {
        let want = prog.decode_output(&prog.eval(&prog.encode_input(xi).unwrap()).unwrap());
        assert_eq!(p.logits, want);
        // From the store: no offline phase in this session.
        assert!(p.offline_s.is_none());
    }
    let ledger = Ledger::connect(&db, "check").unwrap();
    for id in &ids {
        assert_eq!(ledger.taken_by(id).unwrap().as_deref(), Some("b"));
        assert_eq!(ledger.claim(id).unwrap(), Claim::Consumed);
    }
    // Its stored bundles used, the client's next prediction is prepared
    // in the session.
    let again = infer(b.as_str(), &x[..1], &opts, &|_| {});
    hb.join().unwrap();
    assert!(again.is_ok(), "a fresh bundle is made in the session: {again:?}");
    let errs: Vec<_> = events.lock().unwrap().iter().filter_map(|e| e.1.clone()).collect();
    assert!(errs.is_empty(), "{errs:?}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn limits_and_quotas_count_every_replica() {
    let pg = Pg::get("quota");
    let db = pg.fresh_db();
    let d = dir("quota");
    let net = build("small-cnn", 10, 42).unwrap();
    let events: Events = Arc::default();
    let limits = ServeLimits {
        store: StoreLimits { per_owner: 2, ..StoreLimits::default() },
        ..ServeLimits::default()
    };
    let (a, ha) = replica(&net, &d, &db, "a", limits.clone(), 1, events.clone());
    let (b, hb) = replica(&net, &d, &db, "b", limits, 1, events.clone());
    let opts = options(&d.join("client"));
    assert_eq!(preprocess(a.as_str(), 2, &opts, &|_| {}).unwrap(), 2);
    // The third, on the other replica: over this client's quota.
    let e = preprocess(b.as_str(), 1, &opts, &|_| {}).unwrap_err();
    assert!(matches!(&e, EngineError::Refused(why) if why.contains("quota")), "{e}");
    ha.join().unwrap();
    hb.join().unwrap();
    std::fs::remove_dir_all(&d).ok();
}

use pg::Pg;
