//! Measurements of the engine's primitives, shared by the `delphi bench`
//! command and (later) the cost model. Nothing here is a test: figures depend
//! on the machine and are written to `results/` by the binary.

use std::net::TcpListener;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::aesni::HashPath;
use crate::block::{AesPrg, Block, SecretRng};

/// AES calls per hash (TMMO: π(π(x) ⊕ i) ⊕ π(x)).
pub const AES_CALLS_PER_HASH: usize = 2;
use crate::channel::{Counting, TcpChannel};
use crate::error::{Error, Result};
use crate::field::F;
use crate::gc::{Evaluator, Garbler, BATCH};
use crate::relu::{client_offline, relu_circuit_for, server_offline, ReluSpec};

/// Results of the ReLU benchmark: one row per circuit width, all measured
/// in one run on one machine beside the machine's AES bound.
#[derive(Debug, Clone, Serialize)]
pub struct ReluBench {
    /// ReLUs run through the two-party protocol per row.
    pub relus: usize,
    /// Truncation after each ReLU (as after a conv layer: f_w = 12).
    pub shift: u32,
    /// Inputs were drawn uniformly with |v| < this (fixed-point units at
    /// f + f_w = 20 fractional bits: 2^24 is 16.0).
    pub input_magnitude: i64,
    /// Fixed-key AES-128 blocks per second on one core through AES-NI,
    /// many blocks in flight (the `aes` crate's pipelined path): the AES-NI
    /// bound every garbling rate is compared with.
    pub aes_blocks_per_s: f64,
    /// AES calls per hash in this build (TMMO: π(π(x) ⊕ i) ⊕ π(x)).
    pub aes_calls_per_hash: usize,
    /// AND gates per second the AES-NI bound (at the start of the run)
    /// allows when garbling: four hashes per AND (half-gates), each
    /// `aes_calls_per_hash` AES calls. Each row has its own bound too.
    pub garble_and_bound_per_s: f64,
    /// The same for evaluating: two hashes per AND.
    pub eval_and_bound_per_s: f64,
    /// The hash paths this CPU has (`portable`, `aesni`, `vaes`); every
    /// width is measured on each, in this run.
    pub hash_paths: Vec<String>,
    /// The path the engine uses by default here.
    pub default_hash_path: String,
    /// One row per width.
    pub rows: Vec<ReluRow>,
    /// Logical CPUs of the machine.
    pub cores: usize,
    /// The CPU model, where the system says.
    pub cpu_model: String,
    /// The engine's version.
    pub version: &'static str,
    /// Seconds since the Unix epoch when the run finished.
    pub unix_time: u64,
}

/// One circuit width in the ReLU benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ReluRow {
    /// "full" (the exact 41-bit circuit) or the reduced window "lo..hi".
    pub bits: String,
    /// The hash path this row ran on (`portable`: the `aes` crate, two
    /// passes per hash; `aesni`/`vaes`: fused in registers).
    pub hash_path: String,
    /// The AES-NI rate measured right before each of the row's passes
    /// (blocks/s, one core; the median of the passes'): each pass's rates
    /// are taken against the rate measured just before it.
    pub aes_blocks_per_s: f64,
    /// Circuit input bits per party (41, or hi − lo).
    pub input_bits_per_party: usize,
    /// AND gates in one ReLU circuit.
    pub and_gates_per_relu: usize,
    /// Garbling throughput on one core (AND gates per second, no network;
    /// best of [`GATE_PASSES`] passes).
    pub garble_and_gates_per_s: f64,
    /// Evaluation throughput on one core (AND gates per second, no network;
    /// best of [`GATE_PASSES`] passes).
    pub eval_and_gates_per_s: f64,
    /// Garbling rate over the AES-NI bound (4 hashes of
    /// `aes_calls_per_hash` AES calls per AND), the best pass's, each pass
    /// against the AES-NI rate measured just before it; VAES can pass 1.
    pub garble_fraction_of_aes_bound: f64,
    /// Evaluation rate over the AES-NI bound (2 hashes per AND), as the
    /// garbling one.
    pub eval_fraction_of_aes_bound: f64,
    /// Bytes exchanged offline (both directions, including base OT and OT extension), per ReLU.
    pub offline_bytes_per_relu: f64,
    /// Bytes exchanged online by the ReLU protocol (both directions), per
    /// ReLU; in a network each ReLU adds one field element (6 bytes) for
    /// the client's re-masked output.
    pub online_bytes_per_relu: f64,
    /// Total offline bytes.
    pub offline_bytes: u64,
    /// Total online bytes.
    pub online_bytes: u64,
    /// Offline wall time over loopback TCP (both parties done), seconds.
    pub offline_s: f64,
    /// Online wall time over loopback TCP (server starts sending to client holding all outputs), seconds.
    pub online_s: f64,
    /// Secure outputs equal to what the circuit computes on the plaintext shares.
    pub correct: usize,
    /// Inputs inside the window where the bound is stated (|v| below
    /// 2^(hi−1) − 2^lo; all of them for the full circuit).
    pub inside_window: usize,
    /// Of those, secure outputs within the stated bound of the reference
    /// (for the full circuit: equal to it).
    pub within_bound: usize,
    /// The stated bound (output units; 0 for the full circuit).
    pub error_bound: u64,
    /// Secure outputs that differ from the exact ReLU(v) >> shift.
    pub differ_from_exact_relu: usize,
}

/// Fixed-key AES blocks per second on this thread (8 MB of blocks in flight
/// through the `aes` crate's parallel path, best of 5).
pub fn aes_blocks_per_s() -> f64 {
    let perm = crate::block::AesPerm::new(Block(0x5eed));
    let mut buf = vec![Block::ZERO; 4096];
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..256 {
            perm.encrypt_in_place(&mut buf);
        }
        let rate = (256 * buf.len()) as f64 / t.elapsed().as_secs_f64();
        best = best.max(rate);
    }
    std::hint::black_box(&buf);
    best
}

/// The CPU model from /proc/cpuinfo, or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Logical CPUs available.
pub fn cores() -> usize {
    thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Timed passes of garbling and evaluation per row of [`relu_bench`].
pub const GATE_PASSES: usize = 5;

/// Garbles and evaluates `count` ReLU instances of `spec` on this thread
/// with random inputs, timing each side separately. Returns
/// (garble AND/s, eval AND/s).
pub fn gate_throughput(count: usize, spec: ReluSpec, seed: u64) -> (f64, f64) {
    let rc = relu_circuit_for(spec);
    let c = rc.circuit();
    let (ne, ng, no) = (c.evaluator_inputs(), c.garbler_inputs(), c.outputs());
    let mut rng = SecretRng::seed_from_u64(seed);
    let mut delta = Block::random(&mut rng);
    delta.0 |= 1;
    let key = Block::random(&mut rng);
    let mut prg = AesPrg::new(Block::random(&mut rng));
    let mut g = Garbler::new(c, key, delta);
    let mut e = Evaluator::new(c, key);
    let mut ev0 = vec![Block::ZERO; BATCH * ne];
    let mut ga0 = vec![Block::ZERO; BATCH * ng];
    let mut tables = Vec::with_capacity(2 * c.and_gates() * BATCH);
    let mut out0 = vec![Block::ZERO; BATCH * no];
    let mut out = vec![Block::ZERO; BATCH * no];
    let (mut tg, mut te) = (0f64, 0f64);
    for start in (0..count).step_by(BATCH) {
        let k = BATCH.min(count - start);
        prg.fill_blocks(&mut ev0[..k * ne]);
        prg.fill_blocks(&mut ga0[..k * ng]);
        tables.clear();
        let t = Instant::now();
        g.garble_batch(
            start as u64,
            &ev0[..k * ne],
            &ga0[..k * ng],
            &mut tables,
            &mut out0[..k * no],
        );
        tg += t.elapsed().as_secs_f64();
        // Evaluate on the zero labels (all-zero inputs): same work as any input.
        let t = Instant::now();
        e.eval_batch(start as u64, &ev0[..k * ne], &ga0[..k * ng], &tables, &mut out[..k * no]);
        te += t.elapsed().as_secs_f64();
    }
    let ands = (count * c.and_gates()) as f64;
    (ands / tg, ands / te)
}

/// This machine's speed at a fixed workload: garbled-and-evaluated AND
/// gates per second on one thread (2,048 full 12-bit ReLUs garbled then
/// evaluated, fastest of 5 after a warm-up; ≈ 0.1 s). A cost model records
/// it when calibrated, so that a machine that reports the same CPU but runs
/// at another speed (two VMs reporting one CPU model differed by 1.5×) is
/// noticed before its predictions are trusted.
pub fn speed_probe() -> f64 {
    let spec = ReluSpec::full(12);
    let _ = gate_throughput(512, spec, 1);
    (0..5)
        .map(|k| {
            let (g, e) = gate_throughput(2048, spec, k);
            // Seconds per AND over both sides, as a rate.
            1.0 / (1.0 / g + 1.0 / e)
        })
        .fold(0.0, f64::max)
}

/// Runs `count` ReLUs of each spec through the two-party protocol over
/// loopback TCP (two threads), checks them, and measures time and bytes.
pub fn relu_bench(
    count: usize,
    specs: &[ReluSpec],
    seed: u64,
    progress: &dyn Fn(&str),
) -> Result<ReluBench> {
    let shift = specs.first().map_or(12, |s| s.shift);
    if specs.iter().any(|s| s.shift != shift) {
        return Err(Error::InvalidArgument(
            "every row of one ReLU benchmark uses the same truncation".into(),
        ));
    }
    for s in specs {
        s.check()?;
    }
    progress("measuring the AES bound");
    let aes = aes_blocks_per_s();
    let calls = AES_CALLS_PER_HASH as f64;
    let (garble_bound, eval_bound) = (aes / (4.0 * calls), aes / (2.0 * calls));
    let default_path = HashPath::detect();
    let paths = HashPath::available();
    let magnitude = 1i64 << 24;
    let mut rng = SecretRng::seed_from_u64(seed ^ 0x5eed);
    let ys: Vec<F> =
        (0..count).map(|_| F::from_i64(rng.gen_range(-magnitude..magnitude))).collect();
    let a: Vec<F> = (0..count).map(|_| F::random(&mut rng)).collect();
    let b: Vec<F> = ys.iter().zip(&a).map(|(y, a)| *y - *a).collect();
    let mut rows = Vec::with_capacity(specs.len() * paths.len());
    for (&spec, &path) in specs.iter().flat_map(|s| paths.iter().map(move |p| (s, p))) {
        HashPath::limit_to(path);
        let name = spec.bits.map_or("full".to_string(), |b| b.to_string());
        progress(&format!("{name} on {}: single-core garbling and evaluation", path.name()));
        // This shared machine's speed drifts within a run (up to 1.5× here):
        // the AES-NI rate is measured again just before every pass, and
        // each pass's rates are taken against it.
        let mut bounds = Vec::with_capacity(GATE_PASSES);
        let (mut garble, mut eval, mut garble_frac, mut eval_frac) = (0f64, 0f64, 0f64, 0f64);
        for r in 0..GATE_PASSES {
            let aes = aes_blocks_per_s();
            let (g, e) = gate_throughput(count.min(100_000), spec, seed + r as u64);
            bounds.push(aes);
            (garble, eval) = (garble.max(g), eval.max(e));
            garble_frac = garble_frac.max(g / (aes / (4.0 * calls)));
            eval_frac = eval_frac.max(e / (aes / (2.0 * calls)));
        }
        bounds.sort_by(f64::total_cmp);
        let row_aes = bounds[bounds.len() / 2];
        progress(&format!("{name} on {}: offline and online over loopback TCP", path.name()));
        let run = relu_protocol_run(spec, &a, &b);
        HashPath::limit_to(default_path);
        let run = run?;
        let rc = relu_circuit_for(spec);
        let plain = |i: usize| -> F {
            let (mut ab, mut bb) = (Vec::new(), Vec::new());
            spec.client_input(a[i], &mut ab);
            spec.server_input(b[i], &mut bb);
            rc.combine(&rc.circuit().eval_plain(&ab, &bb))
        };
        let bound = spec.error_bound();
        let limit = spec.bits.map_or(i64::MAX, |b| b.exact_sign_limit());
        let (mut correct, mut inside, mut within, mut differ) = (0, 0, 0, 0);
        for (i, y) in ys.iter().enumerate() {
            let got = run.outputs[i];
            correct += usize::from(got == plain(i));
            if y.to_signed().abs() < limit {
                inside += 1;
                let err = (got.to_signed() - spec.reference(*y).to_signed()).unsigned_abs();
                within += usize::from(err <= bound);
            }
            differ += usize::from(got != ReluSpec::full(shift).reference(*y));
        }
        let ands = rc.circuit().and_gates();
        rows.push(ReluRow {
            bits: name,
            hash_path: path.name().into(),
            aes_blocks_per_s: row_aes,
            input_bits_per_party: spec.input_bits(),
            and_gates_per_relu: ands,
            garble_and_gates_per_s: garble,
            eval_and_gates_per_s: eval,
            garble_fraction_of_aes_bound: garble_frac,
            eval_fraction_of_aes_bound: eval_frac,
            offline_bytes_per_relu: run.offline_bytes as f64 / count as f64,
            online_bytes_per_relu: run.online_bytes as f64 / count as f64,
            offline_bytes: run.offline_bytes,
            online_bytes: run.online_bytes,
            offline_s: run.offline_s,
            online_s: run.online_s,
            correct,
            inside_window: inside,
            within_bound: within,
            error_bound: bound,
            differ_from_exact_relu: differ,
        });
    }
    HashPath::limit_to(default_path);
    Ok(ReluBench {
        relus: count,
        shift,
        input_magnitude: magnitude,
        aes_blocks_per_s: aes,
        aes_calls_per_hash: AES_CALLS_PER_HASH,
        garble_and_bound_per_s: garble_bound,
        eval_and_bound_per_s: eval_bound,
        hash_paths: paths.iter().map(|p| p.name().to_string()).collect(),
        default_hash_path: default_path.name().into(),
        rows,
        cores: cores(),
        cpu_model: cpu_model(),
        version: env!("CARGO_PKG_VERSION"),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

/// What one protocol run of the benchmark gives.
struct ProtocolRun {
    /// Reconstructed secure outputs.
    outputs: Vec<F>,
    offline_bytes: u64,
    online_bytes: u64,
    offline_s: f64,
    online_s: f64,
}

fn relu_protocol_run(spec: ReluSpec, a: &[F], b: &[F]) -> Result<ProtocolRun> {
    let count = a.len();
    let b = b.to_vec();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let barrier = Arc::new(Barrier::new(2));
    let sb = barrier.clone();
    let server = thread::spawn(move || -> Result<(Vec<F>, u64, u64, f64)> {
        let (stream, _) = listener.accept()?;
        let mut ch = Counting::new(TcpChannel::new(stream)?);
        let mut rng = crate::block::secret_rng();
        let t = Instant::now();
        let bundle = server_offline(&mut ch, count, spec, &mut rng)?;
        let offline_s = t.elapsed().as_secs_f64();
        let off = ch.stats();
        sb.wait();
        let rho = bundle.online(&mut ch, &b)?;
        let on = ch.stats().since(&off);
        Ok((rho, off.sent, on.sent, offline_s))
    });
    let mut ch = Counting::new(TcpChannel::connect(addr)?);
    let mut crng = crate::block::secret_rng();
    let t = Instant::now();
    let bundle = client_offline(&mut ch, a, spec, &mut crng)?;
    let client_offline_s = t.elapsed().as_secs_f64();
    let off = ch.stats();
    barrier.wait();
    let t = Instant::now();
    let out = bundle.online(&mut ch)?;
    let online_s = t.elapsed().as_secs_f64();
    let on = ch.stats().since(&off);
    let (rho, s_off_sent, s_on_sent, server_offline_s) =
        server.join().map_err(|_| Error::InvalidArgument("server thread panicked".into()))??;
    Ok(ProtocolRun {
        outputs: out.iter().zip(&rho).map(|(o, r)| *o + *r).collect(),
        offline_bytes: off.sent + s_off_sent,
        online_bytes: on.sent + s_on_sent,
        offline_s: client_offline_s.max(server_offline_s),
        online_s,
    })
}
