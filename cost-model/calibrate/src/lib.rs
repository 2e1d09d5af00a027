//! `delphi cost calibrate`: measures the primitive costs of the DELPHI cost
//! model with the real crypto over real loopback TCP.
//!
//! Garbled-circuit layers (ReLUs of any window, exact truncations) run on
//! four circuits at four sizes, several runs after a warm-up (every run's
//! material held until the online phases, as a network holds it; offline
//! the fastest run, online the median), and are fitted as a fixed cost per
//! layer plus, per value, a cost per AND gate and per input label (least
//! squares on relative residuals, no coefficient negative; a fit that
//! misses its own timings by more than 20 % is an error). Other primitives
//! run at two sizes (both parties in two threads of this process).
//! Computation is the measured wall time minus the transfer predicted for
//! the loopback link (bytes / bandwidth + round trips × RTT). Linear layers
//! are measured on several convolution and dense shapes and fitted per
//! input polynomial, output polynomial and plaintext–ciphertext product
//! (least squares, no coefficient negative), which extrapolates to
//! ResNet-32 sizes because those are exactly the operations it performs.
//! The first touch of fresh memory is measured on its own
//! ([`fresh_memory_per_byte`]) and priced per byte of offline material.

use std::thread;
use std::time::Instant;

use rand::SeedableRng;

use delphi_crypto::block::SecretRng;
use delphi_crypto::channel::{Channel, TcpChannel};
use delphi_crypto::field::F;
use delphi_engine::he::{ClientHe, Packing, ServerHe, SLOTS};
use delphi_engine::protocol::{client_setup, server_setup};
use delphi_net::fixed::linear_field;
use delphi_net::linear::LinearOp;
use delphi_net::Shape;

use delphi_cost::bytes::{CtSizes, Traffic};
use delphi_cost::model::{Affine, CostModel, GcLine, HeLinear, Provenance, FORMAT};
use delphi_cost::Link;
use delphi_crypto::garbled::{ClientGcBundle, GcCircuit, GcFunction, ServerGcBundle};
use delphi_crypto::ot::{CotKind, CotReceiverPool, CotSenderPool};

/// What can go wrong while calibrating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CalibrateError {
    /// The protocol engine failed.
    #[error(transparent)]
    Engine(#[from] delphi_engine::EngineError),
    /// The crypto core failed.
    #[error(transparent)]
    Crypto(#[from] delphi_crypto::Error),
    /// Something else (a thread, a packing).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the calibration.
pub type Result<T> = std::result::Result<T, CalibrateError>;

fn pair() -> Result<(TcpChannel, TcpChannel)> {
    Ok(TcpChannel::loopback_pair()?)
}

fn rng(seed: u64) -> SecretRng {
    SecretRng::seed_from_u64(seed)
}

fn random_fields(n: usize, seed: u64) -> Vec<F> {
    let mut r = rng(seed);
    (0..n).map(|_| F::random(&mut r)).collect()
}

/// Runs `server` and `client` on a fresh loopback pair; returns the wall time
/// until both are done and the client's result.
fn timed<S, C, T>(server: S, client: C) -> Result<(f64, T)>
where
    S: FnOnce(&mut TcpChannel) -> Result<()> + Send + 'static,
    C: FnOnce(&mut TcpChannel) -> Result<T>,
{
    let (mut s, mut c) = pair()?;
    let t = Instant::now();
    let h = thread::spawn(move || {
        let r = server(&mut s);
        let _ = s.flush();
        r
    });
    let out = client(&mut c)?;
    let _ = c.flush();
    h.join().map_err(|_| CalibrateError::Invalid("calibration thread panicked".into()))??;
    Ok((t.elapsed().as_secs_f64(), out))
}

fn measure_link() -> Result<Link> {
    const BYTES: usize = 64 << 20;
    let (secs, _) = timed(
        |s| {
            let buf = vec![7u8; 1 << 20];
            for _ in 0..BYTES >> 20 {
                s.send_bytes(&buf)?;
            }
            s.flush()?;
            Ok(())
        },
        |c| {
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..BYTES >> 20 {
                c.recv_bytes(&mut buf)?;
            }
            Ok(())
        },
    )?;
    const PINGS: u64 = 2000;
    let (rtt, _) = timed(
        |s| {
            for _ in 0..PINGS {
                let v = s.recv_u64()?;
                s.send_u64(v)?;
                s.flush()?;
            }
            Ok(())
        },
        |c| {
            for i in 0..PINGS {
                c.send_u64(i)?;
                c.flush()?;
                c.recv_u64()?;
            }
            Ok(())
        },
    )?;
    Ok(Link { bytes_per_s: BYTES as f64 / secs, rtt_s: rtt / PINGS as f64 })
}

/// Seconds per byte that writing memory fresh to the process costs beyond
/// writing memory it has used before: the cost of the first touch, which a
/// client pays on every byte of the material its offline phase holds.
///
/// Writes 1 GiB in 64 MiB buffers (the size of a large layer's garbled
/// tables) through the global allocator, all held, then frees them and
/// writes the same amount again (the pages now come back warm). Run first,
/// while the process is fresh. On the 2-core VMs measured, the first pass
/// cost 2.4–3.0 ns/B and the second 0.16–0.17 ns/B (a C probe of the same
/// shape); on bare metal the gap is the kernel's page zeroing, far less.
/// The garbled-circuit fits take the fastest of several runs, which write
/// warm memory, so the model adds this gap per byte held.
fn fresh_memory_per_byte() -> f64 {
    const PIECE: usize = 64 << 20;
    const PIECES: usize = 16;
    let pass = || -> f64 {
        let t = Instant::now();
        let held: Vec<Vec<u8>> = (0..PIECES)
            .map(|i| {
                let mut v = vec![0u8; PIECE];
                v.fill(i as u8 | 1);
                v
            })
            .collect();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(&held);
        secs
    };
    let (cold, warm) = (pass(), pass());
    ((cold - warm) / (PIECE * PIECES) as f64).max(0.0)
}

fn transfer(t: &Traffic, link: &Link) -> f64 {
    t.total() / link.bytes_per_s + t.rounds * link.rtt_s
}

/// Seconds of one silent-OT extension, and of one IKNP OT, over `link`
/// (loopback), transfers excluded: a pool of each kind serving three
/// silent extensions' worth of OTs in one request (the first extension
/// from IKNP, two bootstrapped), both sides at once; the fastest of `runs`.
fn ot_times(runs: usize, link: &Link) -> Result<(f64, f64)> {
    use delphi_crypto::ot::silent::{iknp_bytes, silent_bytes, FERRET};
    let m = 3 * FERRET.fresh();
    let time = |kind: CotKind, run: usize| -> Result<f64> {
        let (mut s, mut c) = pair()?;
        let h = thread::spawn(move || -> Result<()> {
            let mut r = rng(40 + run as u64);
            CotSenderPool::new(kind).send(&mut s, m, &mut r)?;
            Ok(())
        });
        let mut r = rng(41 + run as u64);
        let choices: Vec<bool> = (0..m).map(|i| i % 3 == 0).collect();
        let t = Instant::now();
        CotReceiverPool::new(kind).receive(&mut c, &choices, &mut r)?;
        let secs = t.elapsed().as_secs_f64();
        h.join().map_err(|_| CalibrateError::Invalid("calibration thread panicked".into()))??;
        let (bytes, rounds) = match kind {
            CotKind::Silent => (silent_bytes(m) + m.div_ceil(8) as u64, 4.0),
            CotKind::Iknp => (iknp_bytes(m), 1.0),
        };
        let bytes = (bytes + delphi_cost::bytes::POOL_SETUP) as f64;
        Ok(secs - bytes / link.bytes_per_s - rounds * link.rtt_s)
    };
    let (mut silent, mut iknp) = (f64::INFINITY, f64::INFINITY);
    for run in 0..runs.max(1) {
        silent = silent.min(time(CotKind::Silent, run)?);
        iknp = iknp.min(time(CotKind::Iknp, run)?);
    }
    Ok(((silent / 3.0).max(0.0), (iknp / m as f64).max(0.0)))
}

/// Seconds to set up a pool of correlated OTs (base OTs, IKNP set-up,
/// one OT), transfers excluded, both sides at once: the median of `runs`.
fn ot_setup_time(runs: usize, link: &Link) -> Result<f64> {
    let mut times = Vec::new();
    for run in 0..runs.max(1) {
        let (mut s, mut c) = pair()?;
        let h = thread::spawn(move || -> Result<()> {
            let mut r = rng(60 + run as u64);
            CotSenderPool::new(CotKind::Iknp).send(&mut s, 1, &mut r)?;
            Ok(())
        });
        let mut r = rng(61 + run as u64);
        let t = Instant::now();
        CotReceiverPool::new(CotKind::Iknp).receive(&mut c, &[true], &mut r)?;
        let secs = t.elapsed().as_secs_f64();
        h.join().map_err(|_| CalibrateError::Invalid("calibration thread panicked".into()))??;
        let bytes =
            (delphi_cost::bytes::POOL_SETUP + delphi_crypto::ot::silent::iknp_bytes(1)) as f64;
        times.push(secs - bytes / link.bytes_per_s - 3.0 * link.rtt_s);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2].max(0.0))
}

/// Measurements of the garbled-circuit layers a calibration makes before it
/// gives up on fits that miss their own timings.
const GC_ATTEMPTS: usize = 3;

/// Offline and online wall times of a layer of `n` values run with a
/// single-use bundle protocol (ReLU, truncation), the client re-masking its
/// output as the network protocol does: offline the fastest of `runs`
/// runs, online the median.
///
/// Offline, the fastest: the runs after the first few write memory fresh
/// to the process (each run's material is held, as below), and on the VMs
/// measured that doubles a large layer's offline time in some runs and
/// not others (0.57–0.63 s against 1.25–1.59 s for 65,536 ReLUs in one
/// set of five); the fastest run is the computation on warm memory, and
/// the first touch is priced on its own ([`fresh_memory_per_byte`]).
/// (The median of both phases was tried on an AMD EPYC VM whose speed
/// comes in modes: its offline fits missed their own timings by 23–25 %.)
/// Online, the median: online runs write little and spread by 5–20 %, and
/// a network of many small layers pays their typical time, not their best
/// (with the fastest run, ResNet-14's online time was predicted 10–38 %
/// short on both CPUs measured).
///
/// As in a network, every run's offline phase happens before any online
/// phase and its material stays held until then, so each offline phase
/// pays for fresh memory the way a network's layers do (freeing each
/// bundle before the next run would let the allocator hand the same warm
/// pages back).
fn bundle_times<S, C, SO, SN, CO, CN>(
    n: usize,
    runs: usize,
    (server_off, server_on): (SO, SN),
    (client_off, client_on): (CO, CN),
) -> Result<(f64, f64)>
where
    S: Send + 'static,
    SO: FnOnce(&mut TcpChannel, usize, &mut SecretRng) -> delphi_crypto::Result<S>
        + Clone
        + Send
        + 'static,
    SN: FnOnce(S, &mut TcpChannel, &[F]) -> delphi_crypto::Result<Vec<F>> + Clone + Send + 'static,
    CO: FnOnce(&mut TcpChannel, &[F], &mut SecretRng) -> delphi_crypto::Result<C> + Clone,
    CN: FnOnce(C, &mut TcpChannel) -> delphi_crypto::Result<Vec<F>> + Clone,
{
    let shares = random_fields(n, 3);
    let theirs = random_fields(n, 4);
    let mut held = Vec::with_capacity(runs);
    for run in 0..runs.max(1) {
        let (s, mut c) = pair()?;
        let (server_off, server_on, theirs) =
            (server_off.clone(), server_on.clone(), theirs.clone());
        let h = thread::spawn(move || -> Result<f64> {
            let mut s = s;
            let mut r = rng(1 + 2 * run as u64);
            let t = Instant::now();
            let b = server_off(&mut s, n, &mut r)?;
            s.flush()?;
            let off = t.elapsed().as_secs_f64();
            let _ = s.recv_u64()?;
            server_on(b, &mut s, &theirs)?;
            let mut msg = vec![F::ZERO; n];
            s.recv_fields(&mut msg)?;
            Ok(off)
        });
        let mut r = rng(2 + 2 * run as u64);
        let t = Instant::now();
        let b = client_off.clone()(&mut c, &shares, &mut r)?;
        held.push((h, c, b, t.elapsed().as_secs_f64()));
    }
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for (h, mut c, b, off_c) in held {
        let t = Instant::now();
        c.send_u64(0)?;
        c.flush()?;
        let out = client_on.clone()(b, &mut c)?;
        c.send_fields(&out)?;
        c.flush()?;
        on.push(t.elapsed().as_secs_f64());
        let off_s = h
            .join()
            .map_err(|_| CalibrateError::Invalid("calibration thread panicked".into()))??;
        off.push(off_c.max(off_s));
    }
    let fastest = off.iter().copied().fold(f64::INFINITY, f64::min);
    on.sort_by(f64::total_cmp);
    let median = on[on.len() / 2];
    Ok((fastest, median))
}

/// Offline and online wall times of a garbled-circuit layer of `n` values
/// of `spec` (any [`GcFunction`]: a ReLU of any window, an exact truncation),
/// its correlated OTs from IKNP (the per-label cost; a silent pool's
/// extensions are priced apart, [`ot_times`]).
fn gc_times<G: GcFunction>(n: usize, runs: usize, spec: G) -> Result<(f64, f64)> {
    bundle_times(
        n,
        runs,
        (
            move |ch: &mut TcpChannel, n, r: &mut SecretRng| {
                ServerGcBundle::offline_with(ch, n, spec, r, &mut CotSenderPool::new(CotKind::Iknp))
            },
            |b: ServerGcBundle<G>, ch: &mut TcpChannel, x: &[F]| b.online(ch, x),
        ),
        (
            move |ch: &mut TcpChannel, x: &[F], r: &mut SecretRng| {
                let mut ot = CotReceiverPool::new(CotKind::Iknp);
                ClientGcBundle::offline_with(ch, x, spec, r, None, &mut ot)
            },
            |b: ClientGcBundle<G>, ch: &mut TcpChannel| b.online(ch),
        ),
    )
}

/// Offline and online wall times of a faithful truncation layer of `n`
/// values (exact truncations are garbled circuits, priced from the ReLU
/// measurements).
fn trunc_times(n: usize, runs: usize) -> Result<(f64, f64)> {
    use delphi_crypto::trunc::{client_offline, server_offline, TruncKind::Faithful};
    use delphi_crypto::trunc::{ClientTruncBundle, ServerTruncBundle};
    bundle_times(
        n,
        runs,
        (
            |ch: &mut TcpChannel, n, r: &mut SecretRng| server_offline(ch, n, 12, Faithful, r),
            |b: ServerTruncBundle, ch: &mut TcpChannel, x: &[F]| b.online(ch, x),
        ),
        (
            |ch: &mut TcpChannel, x: &[F], r: &mut SecretRng| {
                client_offline(ch, x, 12, Faithful, r)
            },
            |b: ClientTruncBundle, ch: &mut TcpChannel| b.online(ch),
        ),
    )
}

/// Offline and online wall times of a layer of n values over the given
/// number of runs (see [`bundle_times`]).
type LayerTimes = Box<dyn Fn(usize, usize) -> Result<(f64, f64)>>;

/// The circuits the garbled-circuit lines are fitted on: the full ReLU,
/// an exact window, the reduced anchor and a bounded exact truncation —
/// 20 to 132 AND gates and sign products, 11 to 41 labels a party.
fn gc_circuits() -> Vec<(&'static str, LayerTimes, &'static GcCircuit)> {
    use delphi_crypto::relu::{relu_circuit_for, ReluBits, ReluSpec};
    use delphi_crypto::trunc::ExactTrunc;
    let full = ReluSpec::full(12);
    let exact = ReluSpec::reduced(12, ReluBits::exact(27));
    let anchor = delphi_cost::model::REDUCED_ANCHOR;
    let trunc = ExactTrunc { shift: 20, wide: false };
    vec![
        ("full ReLU", Box::new(move |n, k| gc_times(n, k, full)), relu_circuit_for(full)),
        (
            "exact window 0..27",
            Box::new(move |n, k| gc_times(n, k, exact)),
            relu_circuit_for(exact),
        ),
        ("reduced 12..27", Box::new(move |n, k| gc_times(n, k, anchor)), relu_circuit_for(anchor)),
        ("exact truncation", Box::new(move |n, k| gc_times(n, k, trunc)), trunc.gc()),
    ]
}

/// Fits `t ≈ fixed + n·(ands·per_and + labels·per_label)` by least squares
/// on relative residuals (timing noise grows with the time) with every
/// coefficient non-negative (a layer cannot get cheaper with
/// more gates or labels): the best of the fits with each subset of the
/// coefficients held at zero whose free coefficients all come out
/// non-negative. The four circuits' gates and labels rise together, so
/// noise can push one per-unit cost below zero in the free fit; it is then
/// zero and the other carries the work. A fit that leaves no cost per gate
/// nor per label, or misses the timings by more than 20 % (root mean square),
/// is an error (the machine was too noisy), not a number to price plans with.
fn fit_gc_line(what: &str, rows: &[(f64, f64, f64, f64)]) -> Result<GcLine> {
    if rows.iter().any(|r| !(r.3.is_finite() && r.3 > 0.0)) {
        return Err(CalibrateError::Invalid(format!(
            "{what}: a timing came out zero or negative once the loopback transfer was taken out \
             (the machine was too noisy): rerun"
        )));
    }
    // Each row divided by its timing: the residuals are relative.
    let cols = |n: f64, a: f64, l: f64, t: f64| [1.0 / t, n * a / t, n * l / t];
    let sse = |c: &[f64; 3]| -> f64 {
        rows.iter()
            .map(|&(n, a, l, t)| {
                let x = cols(n, a, l, t);
                (1.0 - (c[0] * x[0] + c[1] * x[1] + c[2] * x[2])).powi(2)
            })
            .sum()
    };
    let data: Vec<([f64; 3], f64)> =
        rows.iter().map(|&(n, a, l, t)| (cols(n, a, l, t), 1.0)).collect();
    let best = nonneg_least_squares(&data).map(|c| (c, sse(&c)));
    let Some((c @ [fixed, per_and, per_label], _)) = best else {
        return Err(CalibrateError::Invalid(format!("{what}: no timings to fit")));
    };
    let unexplained = (sse(&c) / rows.len().max(1) as f64).sqrt();
    if per_and + per_label <= 0.0 || unexplained > 0.2 {
        return Err(CalibrateError::Invalid(format!(
            "{what}: the fit came out {per_and:.3e} s per AND gate and {per_label:.3e} s per \
             label, off by {:.0} % of a timing (root mean square) — the timings were too noisy to \
             price gates and labels by (another process on the machine?): rerun",
            unexplained * 100.0
        )));
    }
    Ok(GcLine { fixed_s: fixed, per_and_s: per_and, per_label_s: per_label })
}

/// Computation of one linear layer under BFV (client encrypts, server
/// multiplies and masks, client decrypts; serialisation included), and the
/// ciphertext sizes seen.
fn he_linear_time(
    he_c: &ClientHe,
    he_s: &ServerHe,
    op: &LinearOp,
) -> Result<(f64, Packing, f64, f64)> {
    let p = Packing::new(op).map_err(CalibrateError::Invalid)?;
    let x = random_fields(op.input.len(), 7);
    let w: Vec<i64> = (0..op.weights()).map(|i| (i as i64 % 255) - 127).collect();
    let mut r = rng(8);
    let t = Instant::now();
    let cts = he_c.encrypt_input(&p, &x)?;
    let mut fresh = 0.0;
    let mut received = Vec::with_capacity(cts.len());
    for b in &cts {
        fresh += b.len() as f64;
        received.push(he_s.fresh_from_wire(b)?);
    }
    let (res, _) = he_s.linear(&p, &w, &received, &mut r)?;
    let mut result = 0.0;
    let mut back = Vec::with_capacity(res.len());
    for (c, kept) in res.iter().zip(p.kept()) {
        let b = he_s.result_to_wire(c, Some(&kept))?;
        result += b.len() as f64;
        back.push(he_c.result_from_wire(&b, Some(&kept))?);
    }
    he_c.decrypt_output(&p, &back)?;
    let secs = t.elapsed().as_secs_f64();
    Ok((secs, p, fresh / cts.len().max(1) as f64, result / res.len().max(1) as f64))
}

/// Least squares for t ≈ a·x₀ + b·x₁ + c·x₂ with every coefficient
/// non-negative: the best (least squared error) of the fits with each
/// subset of the coefficients held at zero whose free coefficients all come
/// out non-negative. (Clamping a free fit's negative coefficient to zero
/// without refitting the others, as this once did, left BFV linear layers
/// priced 19 % apart by two calibrations.) `None` without rows.
fn nonneg_least_squares(rows: &[([f64; 3], f64)]) -> Option<[f64; 3]> {
    let sse = |c: &[f64; 3]| -> f64 {
        rows.iter().map(|(x, t)| (t - (c[0] * x[0] + c[1] * x[1] + c[2] * x[2])).powi(2)).sum()
    };
    let mut best: Option<([f64; 3], f64)> = None;
    for free in 1u8..8 {
        // The free columns first, zero columns after (the solver handles a
        // trailing singular column, not a leading one).
        let idx: Vec<usize> = (0..3).filter(|i| free & (1 << i) != 0).collect();
        let data: Vec<([f64; 3], f64)> = rows
            .iter()
            .map(|(x, t)| {
                let mut packed = [0.0; 3];
                for (k, &i) in idx.iter().enumerate() {
                    packed[k] = x[i];
                }
                (packed, *t)
            })
            .collect();
        let solved = least_squares_raw(&data);
        let mut c = [0.0; 3];
        for (k, &i) in idx.iter().enumerate() {
            c[i] = solved[k];
        }
        if c.iter().all(|v| v.is_finite() && *v >= 0.0) {
            let e = sse(&c);
            if best.as_ref().is_none_or(|(_, b)| e < *b) {
                best = Some((c, e));
            }
        }
    }
    best.map(|(c, _)| c)
}

/// Least squares for t ≈ a·x₀ + b·x₁ + c·x₂ (normal equations, 3×3).
fn least_squares_raw(rows: &[([f64; 3], f64)]) -> [f64; 3] {
    let mut m = [[0f64; 4]; 3];
    for (x, t) in rows {
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] += x[i] * x[j];
            }
            m[i][3] += x[i] * t;
        }
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..3 {
        let piv =
            (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs())).unwrap_or(col);
        m.swap(col, piv);
        let d = m[col][col];
        if d.abs() < 1e-300 {
            continue;
        }
        let pivot_row = m[col].map(|v| v / d);
        m[col] = pivot_row;
        for (i, row) in m.iter_mut().enumerate() {
            if i != col {
                let f = row[col];
                for (v, p) in row.iter_mut().zip(pivot_row) {
                    *v -= f * p;
                }
            }
        }
    }
    [m[0][3], m[1][3], m[2][3]]
}

/// Runs the calibration. `quick` uses fewer and smaller samples (≈ 10 s on
/// a 2-core Xeon VM; the full one ≈ 30 s). `progress` receives a
/// line per step.
pub fn calibrate(quick: bool, progress: &dyn Fn(&str)) -> Result<CostModel> {
    let start = Instant::now();
    let steps = 8;
    let mut step = 0;
    let mut say = |m: &str| {
        step += 1;
        progress(&format!("[{step}/{steps}] {m}"));
    };

    say("fresh memory, loopback bandwidth and round trip, and this machine's speed");
    let fresh_memory_per_byte_s = fresh_memory_per_byte();
    let link = measure_link()?;
    let speed_probe = delphi_crypto::bench::speed_probe();

    say("key generation and setup");
    let (setup_wall, pk_len) = timed(
        |s| {
            server_setup(s)?;
            Ok(())
        },
        |c| {
            let he = client_setup(c)?;
            Ok(he.public_key_bytes()?.len())
        },
    )?;
    let mut ct =
        CtSizes { fresh: 0.0, linear_result: 0.0, triple_reply: 0.0, public_key: pk_len as f64 };
    let setup_s = (setup_wall - (8.0 + pk_len as f64) / link.bytes_per_s).max(0.0);

    say("linear layers under BFV (several shapes)");
    let he_c = ClientHe::new()?;
    let he_s = ServerHe::new(&he_c.public_key_bytes()?)?;
    let mut shapes = vec![
        LinearOp::conv(Shape::new(16, 32, 32), 16, 3, 1, 1),
        LinearOp::conv(Shape::new(32, 16, 16), 32, 3, 1, 1),
        LinearOp::conv(Shape::new(16, 32, 32), 32, 1, 2, 0),
        LinearOp::dense(1024, 100),
    ];
    // Both modes measure all eight shapes; the full calibration three times
    // (rounds over the shapes), each shape fitted at its fastest run: a
    // product now costs a tenth of a result polynomial, and single runs'
    // hiccups moved the fitted product and input costs by 40–86 % between
    // two calibrations.
    {
        shapes.extend([
            LinearOp::conv(Shape::new(64, 8, 8), 64, 3, 1, 1),
            LinearOp::conv(Shape::new(3, 32, 32), 64, 3, 1, 1),
            LinearOp::conv(Shape::new(32, 16, 16), 64, 3, 2, 1),
            LinearOp::dense(4096, 256),
        ]);
    }
    let reps = if quick { 1 } else { 3 };
    let mut rows: Vec<([f64; 3], f64)> = Vec::new();
    let (mut fresh, mut result, mut nf, mut nr) = (0.0, 0.0, 0.0, 0.0);
    for rep in 0..reps {
        for (k, op) in shapes.iter().enumerate() {
            let (secs, p, f, r) = he_linear_time(&he_c, &he_s, op)?;
            let x = [p.input_polys() as f64, p.output_polys() as f64, p.products() as f64];
            if rep == 0 {
                rows.push((x, secs));
                fresh += f * x[0];
                nf += x[0];
                result += r * x[1];
                nr += x[1];
            } else if let Some(row) = rows.get_mut(k) {
                row.1 = row.1.min(secs);
            }
        }
    }
    ct.fresh = fresh / nf.max(1.0);
    ct.linear_result = result / nr.max(1.0);
    // Relative residuals (the shapes' times span 10 ms to 1 s).
    let relative: Vec<([f64; 3], f64)> =
        rows.iter().map(|(x, t)| (x.map(|v| v / t), 1.0)).collect();
    let [a, b, c] = nonneg_least_squares(&relative).ok_or_else(|| {
        CalibrateError::Invalid("linear layers: no non-negative fit of the BFV timings".into())
    })?;
    let he_linear = HeLinear { per_input_poly_s: a, per_output_poly_s: b, per_product_s: c };

    say("linear layers online (plaintext field arithmetic)");
    let op = LinearOp::conv(Shape::new(32, 16, 16), 32, 3, 1, 1);
    let x = random_fields(op.input.len(), 9);
    let w: Vec<i64> = (0..op.weights()).map(|i| (i as i64 % 255) - 127).collect();
    let bias = vec![0i64; 32];
    let reps = if quick { 3 } else { 10 };
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(linear_field(&op, &x, &w, &bias));
    }
    let macs = (op.output.len() * op.macs_per_output() * reps) as f64;
    let linear_online_per_mac_s = t.elapsed().as_secs_f64() / macs;

    say("garbled-circuit layers (4 circuits, 4 sizes, several runs each)");
    let sizes: &[usize] =
        if quick { &[1024, 4096, 16384, 32768] } else { &[1024, 8192, 32768, 65536] };
    let runs = if quick { 2 } else { 5 };
    // Three times the runs at the two smaller sizes: they pin the fixed
    // cost per layer, a few milliseconds online whose median moves by
    // tens of percent between sets of five (and they are cheap).
    let runs_at = |n: usize| if n <= sizes[1] { 3 * runs } else { runs };
    // A fit that misses its own timings (a burst of noise from the VM's
    // neighbours) is measured again, up to GC_ATTEMPTS times in all, before
    // the calibration gives up.
    let mut attempt = 1;
    let (gc_offline, gc_online) = loop {
        let (mut off_rows, mut on_rows) = (Vec::new(), Vec::new());
        for (_, times, circuit) in gc_circuits() {
            // A warm-up run (page faults, thread pool, AES key schedules).
            times(sizes[0], 1)?;
            for &n in sizes {
                let (off, on) = times(n, runs_at(n))?;
                let (t_off, t_on) = delphi_cost::bytes::gc_traffic(n, circuit);
                let (a, l_off, l_on) = (
                    circuit.and_work() as f64,
                    circuit.circuit().evaluator_inputs() as f64,
                    circuit.circuit().garbler_inputs() as f64,
                );
                off_rows.push((n as f64, a, l_off, off - transfer(&t_off, &link)));
                on_rows.push((n as f64, a, l_on, on - transfer(&t_on, &link)));
            }
        }
        let fits = fit_gc_line("garbled-circuit layers offline", &off_rows)
            .and_then(|off| Ok((off, fit_gc_line("garbled-circuit layers online", &on_rows)?)));
        match fits {
            Ok(lines) => break lines,
            Err(e) if attempt < GC_ATTEMPTS => {
                progress(&format!("{e}; measuring again ({} of {GC_ATTEMPTS})", attempt + 1));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let line_of = |spec: delphi_crypto::relu::ReluSpec| {
        let gc = delphi_crypto::relu::relu_circuit_for(spec);
        let c = gc.circuit();
        (
            gc_offline.for_circuit(gc.and_work(), c.evaluator_inputs()),
            gc_online.for_circuit(gc.and_work(), c.garbler_inputs()),
        )
    };
    let (relu_offline, relu_online) = line_of(delphi_crypto::relu::ReluSpec::full(12));
    let (relu_reduced_offline, relu_reduced_online) = line_of(delphi_cost::model::REDUCED_ANCHOR);
    let fit = |(n1, n2): (usize, usize),
               times: fn(usize, usize) -> Result<(f64, f64)>,
               traffic: &dyn Fn(usize) -> (Traffic, Traffic)|
     -> Result<(Affine, Affine)> {
        let ((o1, p1), (o2, p2)) = (times(n1, runs)?, times(n2, runs)?);
        let (t1, t2) = (traffic(n1), traffic(n2));
        let line = |a: f64, ta: &Traffic, b: f64, tb: &Traffic| {
            Affine::fit(n1 as f64, a - transfer(ta, &link), n2 as f64, b - transfer(tb, &link))
        };
        Ok((line(o1, &t1.0, o2, &t2.0), line(p1, &t1.1, p2, &t2.1)))
    };

    say("correlated OTs (set-up, silent extensions, IKNP)");
    let (silent_extension_s, iknp_per_ot_s) = ot_times(if quick { 2 } else { 3 }, &link)?;
    let ot_setup_s = ot_setup_time(if quick { 5 } else { 15 }, &link)?;

    say("truncations (OT)");
    let sizes = if quick { (4096, 32768) } else { (16384, 262144) };
    let (trunc_offline, trunc_online) =
        fit(sizes, trunc_times, &delphi_cost::bytes::node_traffic_trunc)?;

    say("square triples and local operations");
    let chunks = if quick { 4 } else { 12 };
    let a = random_fields(SLOTS, 10);
    let mut r = rng(11);
    let t = Instant::now();
    let mut reply = 0.0;
    for _ in 0..chunks {
        let enc = he_s.fresh_from_wire(&he_c.encrypt_slots(&a)?)?;
        let a_s: Vec<F> = (0..SLOTS).map(|_| F::random(&mut r)).collect();
        let tv: Vec<F> = (0..SLOTS).map(|_| F::random(&mut r)).collect();
        let rep = he_s.result_to_wire(&he_s.square_cross(&enc, &a_s, &tv)?, None)?;
        reply += rep.len() as f64;
        he_c.decrypt_slots(&he_c.result_from_wire(&rep, None)?, SLOTS)?;
    }
    ct.triple_reply = reply / chunks as f64;
    let quad_offline =
        Affine { fixed_s: 0.0, per_item_s: t.elapsed().as_secs_f64() / (chunks * SLOTS) as f64 };
    // Online: e and the client's message are field arithmetic (a few
    // multiplications per value); local operations likewise.
    let v = random_fields(1 << 20, 12);
    let t = Instant::now();
    let s: F = v.iter().fold(F::ZERO, |acc, x| acc + *x * *x + *x);
    std::hint::black_box(s);
    let per = t.elapsed().as_secs_f64() / v.len() as f64;
    let quad_online = Affine { fixed_s: 0.0, per_item_s: 6.0 * per };

    Ok(CostModel {
        format: FORMAT.into(),
        version: 1,
        provenance: Provenance {
            protocol: delphi_cost::model::PROTOCOL_VERSION,
            cores: delphi_crypto::bench::cores(),
            cpu_model: delphi_crypto::bench::cpu_model(),
            delphi_version: env!("CARGO_PKG_VERSION").into(),
            seal_fhe_version: "0.8.1".into(),
            date: iso_now(),
            quick,
            seconds: start.elapsed().as_secs_f64(),
            speed_probe: Some(speed_probe),
        },
        loopback: link,
        ct,
        setup_s,
        he_linear,
        linear_online_per_mac_s,
        relu_offline,
        relu_online,
        relu_reduced_offline: Some(relu_reduced_offline),
        relu_reduced_online: Some(relu_reduced_online),
        gc_offline: Some(gc_offline),
        gc_online: Some(gc_online),
        trunc_offline,
        trunc_online,
        quad_offline,
        quad_online,
        local_per_value_s: per,
        fresh_memory_per_byte_s,
        silent_extension_s,
        iknp_per_ot_s,
        ot_setup_s,
    })
}

/// The current UTC time as ISO 8601 (no time-zone database needed).
fn iso_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of the four calibration circuits at three sizes under a known line.
    fn rows(line: GcLine, noise: &dyn Fn(usize) -> f64) -> Vec<(f64, f64, f64, f64)> {
        let circuits = [(132.0, 41.0), (41.0, 28.0), (28.0, 15.0), (22.0, 22.0)];
        let mut out = Vec::new();
        for (k, &(a, l)) in circuits.iter().enumerate() {
            for (j, n) in [8192.0, 32768.0, 65536.0].into_iter().enumerate() {
                let t = line.for_circuit(a as usize, l as usize).at(n) + noise(3 * k + j);
                out.push((n, a, l, t));
            }
        }
        out
    }

    #[test]
    fn the_gc_fit_recovers_its_coefficients_and_refuses_nonsense() {
        let line = GcLine { fixed_s: 0.004, per_and_s: 3e-8, per_label_s: 2e-8 };
        let fit = fit_gc_line("test", &rows(line, &|_| 0.0)).unwrap();
        assert!((fit.fixed_s - 0.004).abs() < 1e-9, "{fit:?}");
        assert!((fit.per_and_s - 3e-8).abs() < 1e-14 && (fit.per_label_s - 2e-8).abs() < 1e-14);
        // A true fixed cost of 0 measured with noise that pushes the free
        // intercept below 0: no coefficient is negative and the line still
        // prices every row as the truth does, within the noise.
        let zero = GcLine { fixed_s: 0.0, ..line };
        let noise = |i: usize| if i.is_multiple_of(3) { -2e-3 } else { 0.0 };
        let fit = fit_gc_line("test", &rows(zero, &noise)).unwrap();
        assert!(fit.fixed_s >= 0.0 && fit.per_and_s >= 0.0 && fit.per_label_s >= 0.0, "{fit:?}");
        // The best non-negative fit: no worse than the one through the
        // origin (the old rule), and it prices the rows the noise did not
        // touch as the truth does, within 15 % (the noise is 5–20 % of the
        // rows it touches).
        let sse = |c: &GcLine| -> f64 {
            rows(zero, &noise)
                .iter()
                .map(|&(n, a, l, t)| {
                    (c.for_circuit(a as usize, l as usize).at(n) / t - 1.0).powi(2)
                })
                .sum()
        };
        let origin = {
            let data: Vec<([f64; 3], f64)> = rows(zero, &noise)
                .into_iter()
                .map(|(n, a, l, t)| ([n * a / t, n * l / t, 0.0], 1.0))
                .collect();
            let [a, l, _] = least_squares_raw(&data);
            GcLine { fixed_s: 0.0, per_and_s: a, per_label_s: l }
        };
        assert!(sse(&fit) <= sse(&origin) * (1.0 + 1e-9), "{fit:?} against {origin:?}");
        for (i, (n, a, l, t)) in rows(zero, &|_| 0.0).into_iter().enumerate() {
            let got = fit.for_circuit(a as usize, l as usize).at(n);
            assert!(
                noise(i) != 0.0 || (got - t).abs() < 0.15 * t,
                "{n} × ({a}, {l}): {got} vs {t}"
            );
        }
        // Noise that pushes the free per-label cost below zero: it is held at
        // zero and the gates carry the work.
        let gates = GcLine { fixed_s: 0.004, per_and_s: 5e-8, per_label_s: 0.0 };
        // The circuits with the most labels per gate measured 8 % fast.
        let noisy: Vec<_> = rows(gates, &|_| 0.0)
            .into_iter()
            .map(|(n, a, l, t)| (n, a, l, if l / a > 0.6 { t * 0.92 } else { t }))
            .collect();
        let free = {
            let data: Vec<([f64; 3], f64)> =
                noisy.iter().map(|&(n, a, l, t)| ([1.0 / t, n * a / t, n * l / t], 1.0)).collect();
            least_squares_raw(&data)
        };
        assert!(free[2] < 0.0, "the free fit goes negative: {free:?}");
        let fit = fit_gc_line("test", &noisy).unwrap();
        assert_eq!(fit.per_label_s, 0.0);
        assert!((fit.per_and_s - 5e-8).abs() < 5e-9, "{fit:?}");
        // Timings that fall with the work are an error, not a model.
        let falling: Vec<_> =
            rows(line, &|_| 0.0).into_iter().map(|(n, a, l, t)| (n, a, l, 1.0 - t)).collect();
        let e = fit_gc_line("test", &falling).unwrap_err().to_string();
        assert!(e.contains("too noisy"), "{e}");
    }
}
