//! Measurements of the engine's primitives, shared by the `delphi bench`
//! command and (later) the cost model. Nothing here is a test: figures depend
//! on the machine and are written to `results/` by the binary.

use std::net::TcpListener;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::block::{AesPrg, Block, SecretRng};
use crate::channel::{Counting, TcpChannel};
use crate::error::{Error, Result};
use crate::field::F;
use crate::gc::{Evaluator, Garbler, BATCH};
use crate::relu::{client_offline, relu_circuit, relu_reference, server_offline};

/// Results of the ReLU benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ReluBench {
    /// ReLUs run through the two-party protocol.
    pub relus: usize,
    /// AND gates in one ReLU circuit.
    pub and_gates_per_relu: usize,
    /// AND gates in the ReLU circuit that also truncates by 8 bits (as in a network).
    pub and_gates_per_relu_truncating_8_bits: usize,
    /// Garbling throughput on one core (AND gates per second, no network).
    pub garble_and_gates_per_s: f64,
    /// Evaluation throughput on one core (AND gates per second, no network).
    pub eval_and_gates_per_s: f64,
    /// Bytes exchanged offline (both directions, including base OT and OT extension), per ReLU.
    pub offline_bytes_per_relu: f64,
    /// Bytes exchanged online (both directions), per ReLU.
    pub online_bytes_per_relu: f64,
    /// Total offline bytes.
    pub offline_bytes: u64,
    /// Total online bytes.
    pub online_bytes: u64,
    /// Offline wall time over loopback TCP (both parties done), seconds.
    pub offline_s: f64,
    /// Online wall time over loopback TCP (server starts sending to client holding all outputs), seconds.
    pub online_s: f64,
    /// Secure outputs equal to the plaintext ReLU.
    pub correct: usize,
    /// Logical CPUs of the machine.
    pub cores: usize,
    /// The CPU model, where the system says.
    pub cpu_model: String,
    /// The engine's version.
    pub version: &'static str,
    /// Seconds since the Unix epoch when the run finished.
    pub unix_time: u64,
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
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Garbles and evaluates `count` ReLU instances on this thread with random
/// inputs, timing each side separately. Returns (garble AND/s, eval AND/s).
pub fn gate_throughput(count: usize, seed: u64) -> (f64, f64) {
    let rc = relu_circuit(0);
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
        e.eval_batch(
            start as u64,
            &ev0[..k * ne],
            &ga0[..k * ng],
            &tables,
            &mut out[..k * no],
        );
        te += t.elapsed().as_secs_f64();
    }
    let ands = (count * c.and_gates()) as f64;
    (ands / tg, ands / te)
}

/// Runs `count` ReLUs through the two-party protocol over loopback TCP (two
/// threads), checks them against plaintext, and measures time and bytes.
pub fn relu_bench(count: usize, seed: u64, progress: &dyn Fn(&str)) -> Result<ReluBench> {
    progress("measuring single-core garbling and evaluation throughput");
    let (garble, eval) = gate_throughput(count.min(200_000), seed);

    progress("preparing shares");
    let mut rng = SecretRng::seed_from_u64(seed ^ 0x5eed);
    let ys: Vec<F> = (0..count)
        .map(|_| F::from_i64(rng.gen_range(-(1i64 << 20)..(1 << 20))))
        .collect();
    let a: Vec<F> = (0..count).map(|_| F::random(&mut rng)).collect();
    let b: Vec<F> = ys.iter().zip(&a).map(|(y, a)| *y - *a).collect();

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let barrier = Arc::new(Barrier::new(2));
    let sb = barrier.clone();
    let server = thread::spawn(move || -> Result<(Vec<F>, u64, u64, f64)> {
        let (stream, _) = listener.accept()?;
        let mut ch = Counting::new(TcpChannel::new(stream)?);
        let mut rng = crate::block::secret_rng();
        let t = Instant::now();
        let bundle = server_offline(&mut ch, count, 0, &mut rng)?;
        let offline_s = t.elapsed().as_secs_f64();
        let off = ch.stats();
        sb.wait();
        let rho = bundle.online(&mut ch, &b)?;
        let on = ch.stats().since(&off);
        Ok((rho, off.sent, on.sent, offline_s))
    });
    let mut ch = Counting::new(TcpChannel::connect(addr)?);
    let mut crng = crate::block::secret_rng();
    progress("offline phase (OT, garbling, transfer)");
    let t = Instant::now();
    let bundle = client_offline(&mut ch, &a, 0, &mut crng)?;
    let client_offline_s = t.elapsed().as_secs_f64();
    let off = ch.stats();
    barrier.wait();
    progress("online phase");
    let t = Instant::now();
    let out = bundle.online(&mut ch)?;
    let online_s = t.elapsed().as_secs_f64();
    let on = ch.stats().since(&off);
    let (rho, s_off_sent, s_on_sent, server_offline_s) = server
        .join()
        .map_err(|_| Error::InvalidArgument("server thread panicked".into()))??;
    let correct = ys
        .iter()
        .zip(&out)
        .zip(&rho)
        .filter(|((y, o), r)| **o + **r == relu_reference(**y))
        .count();
    let offline_bytes = off.sent + s_off_sent;
    let online_bytes = on.sent + s_on_sent;
    Ok(ReluBench {
        relus: count,
        and_gates_per_relu: relu_circuit(0).circuit().and_gates(),
        and_gates_per_relu_truncating_8_bits: relu_circuit(8).circuit().and_gates(),
        garble_and_gates_per_s: garble,
        eval_and_gates_per_s: eval,
        offline_bytes_per_relu: offline_bytes as f64 / count as f64,
        online_bytes_per_relu: online_bytes as f64 / count as f64,
        offline_bytes,
        online_bytes,
        offline_s: client_offline_s.max(server_offline_s),
        online_s,
        correct,
        cores: cores(),
        cpu_model: cpu_model(),
        version: env!("CARGO_PKG_VERSION"),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}
