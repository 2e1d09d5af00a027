//! What a client learns from the rounding of reduced ReLUs: the regression
//! attack of the security review, run against a small trained network (the
//! PyTorch CNN `fm-cnn.onnx`, 86 % on Fashion-MNIST).
//!
//! The client follows the protocol but keeps its shares. It asks for the
//! prediction of one input Q times; each time the protocol draws fresh
//! shares, and a reduced ReLU's output is the reference plus an error that
//! depends on the low bits of the client's own share (`ReluSpec::
//! protocol_output`, which the ReLU protocol tests hold equal to the garbled
//! circuit). Where no rounding follows — the last ReLU layer feeds the
//! final dense layer — the logits move by that layer's weight column each
//! time a ReLU's error flips, so regressing the logits on the client's
//! share bits recovers the columns.
//!
//! The statistic: for every ReLU of the last layer that passes its input
//! (v > 0), the |cosine| between the regression's coefficients over the ten
//! logits and the true weight column; its median. Two random directions in
//! ten dimensions give a median |cosine| of about 0.2. The client regresses
//! on the same bits of its share (the low bits the leaky window drops) in
//! every case; with the default circuits — full width, or the exact
//! windows `--relu-bits auto` picks — the logits are the same every time,
//! so there is nothing to regress on (|cosine| 0).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use delphi_crypto::field::F;
use delphi_net::window::{exact_windows, relu_peaks, set_windows, windows_from_peaks};
use delphi_net::{FixedOp, FixedProgram, Network, Op};
use delphi_onnx::{import, ImportOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Repetitions of the one input.
const QUERIES: usize = 8000;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The fixture's three test images (already normalised as the network expects).
fn images() -> Vec<Vec<f32>> {
    let text = std::fs::read_to_string(fixture("fm-cnn.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

/// The ReLU circuits under attack.
#[derive(Clone, Copy, PartialEq)]
enum Circuits {
    /// The 41-bit circuit everywhere.
    Full,
    /// `--relu-bits auto`: exact windows from proven bounds.
    Exact,
    /// `--relu-bits reduced-leaky`: the planner's measured windows (twice
    /// the largest input seen, low bit at the truncation).
    Leaky,
}

/// The trained network with `circuits`.
fn network(circuits: Circuits) -> Network {
    let mut net = import(&fixture("fm-cnn.onnx"), &ImportOptions::default()).unwrap().network;
    let windows = match circuits {
        Circuits::Full => return net,
        Circuits::Exact => exact_windows(&net).unwrap(),
        Circuits::Leaky => {
            let prog = FixedProgram::lower(&net).unwrap();
            let xs: Vec<Vec<F>> = images().iter().map(|x| prog.encode_input(x).unwrap()).collect();
            windows_from_peaks(&relu_peaks(&prog, &xs).unwrap(), 2.0)
        }
    };
    assert!(windows.iter().any(|(_, w)| w.is_some()), "some layer gets a window");
    set_windows(&mut net, &windows).unwrap();
    net
}

/// What the client sees over `QUERIES` predictions of `x`: per query, the
/// low bits of its share of every input of the last ReLU node (the bits a
/// reduced ReLU drops) and the logits; plus that node's hidden inputs (to
/// pick the ReLUs that pass, for the statistic only).
struct Observed {
    share_bits: Vec<Vec<f64>>,
    logits: Vec<Vec<f64>>,
    hidden: Vec<i64>,
}

fn observe(net: &Network, x: &[f32], seed: u64) -> Observed {
    let prog = FixedProgram::lower(net).unwrap();
    let last =
        prog.nodes.iter().rposition(|n| matches!(n.op, FixedOp::Relu { .. })).expect("a ReLU node");
    // The bits the leaky window of that node drops (its truncation + 4 at
    // most; the rule puts lo at the truncation): the client regresses on
    // these whatever the circuit.
    let low = match prog.nodes[last].op {
        FixedOp::Relu { bits: Some(b), .. } if !b.is_exact() => b.lo,
        FixedOp::Relu { shift, .. } => shift,
        _ => unreachable!(),
    };
    let enc = prog.encode_input(x).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut obs = Observed { share_bits: Vec::new(), logits: Vec::new(), hidden: Vec::new() };
    for q in 0..QUERIES {
        let mut bits = Vec::new();
        let mut hidden = Vec::new();
        let y = prog
            .eval_batch_with(std::slice::from_ref(&enc), &mut |node, spec, v| {
                // Fresh shares for every ReLU, as the protocol draws them.
                let a = F::random(&mut rng);
                if node == last {
                    bits.push((a.value() & ((1u64 << low) - 1)) as f64);
                    hidden.push(v.to_signed());
                }
                spec.protocol_output(a, v - a)
            })
            .unwrap();
        obs.share_bits.push(bits);
        obs.logits.push(prog.decode_output(&y[0]));
        if q == 0 {
            obs.hidden = hidden;
        }
    }
    obs
}

/// The regression: for each ReLU j, the coefficients of every logit on
/// the client's bits of ReLU j (the bits of different ReLUs are
/// independent, so one regression per ReLU is the least-squares fit), and
/// their |cosine| with the true weight column; the median over the ReLUs
/// that pass. A coefficient vector of zeros has cosine 0.
fn median_cosine(obs: &Observed, weights: &[f32], classes: usize) -> f64 {
    let m = obs.hidden.len();
    let q = obs.logits.len() as f64;
    let mean = |f: &dyn Fn(usize) -> f64| (0..obs.logits.len()).map(f).sum::<f64>() / q;
    let mut cosines = Vec::new();
    for j in 0..m {
        if obs.hidden[j] <= 0 {
            continue;
        }
        let xm = mean(&|r| obs.share_bits[r][j]);
        let var = mean(&|r| (obs.share_bits[r][j] - xm).powi(2));
        let beta: Vec<f64> = (0..classes)
            .map(|k| {
                let ym = mean(&|r| obs.logits[r][k]);
                let cov = mean(&|r| (obs.share_bits[r][j] - xm) * (obs.logits[r][k] - ym));
                if var > 0.0 {
                    cov / var
                } else {
                    0.0
                }
            })
            .collect();
        let column: Vec<f64> = (0..classes).map(|k| weights[k * m + j] as f64).collect();
        let dot: f64 = beta.iter().zip(&column).map(|(b, w)| b * w).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let (nb, nw) = (norm(&beta), norm(&column));
        cosines.push(if nb > 0.0 && nw > 0.0 { (dot / (nb * nw)).abs() } else { 0.0 });
    }
    assert!(cosines.len() >= 8, "only {} ReLUs pass", cosines.len());
    cosines.sort_by(f64::total_cmp);
    cosines[cosines.len() / 2]
}

/// The final dense layer's weights (`[classes][inputs]`).
fn last_dense(net: &Network) -> (Vec<f32>, usize) {
    net.layers
        .iter()
        .rev()
        .find_map(|l| match &l.op {
            Op::Dense { weight, out_features, .. } => Some((weight.clone(), *out_features)),
            _ => None,
        })
        .expect("a dense layer")
}

#[test]
fn the_default_circuits_give_the_client_nothing_to_regress_on() {
    for (circuits, name) in [(Circuits::Full, "full width"), (Circuits::Exact, "exact windows")] {
        let net = network(circuits);
        let obs = observe(&net, &images()[0], 1);
        // The same input gives the same logits every time: a function of the input.
        assert!(obs.logits.iter().all(|l| l == &obs.logits[0]), "{name}: logits vary");
        let (w, classes) = last_dense(&net);
        let c = median_cosine(&obs, &w, classes);
        eprintln!("{name}: median |cosine| {c:.3} over {QUERIES} queries");
        assert!(c < 0.35, "{name}: median |cosine| {c:.3}: better than chance (≈ 0.2)");
    }
}

#[test]
fn leaky_windows_leak_the_last_layers_weights_to_a_regression() {
    // The opt-in `--relu-bits reduced-leaky`: its share-dependent rounding
    // is a threshold test the client can repeat.
    let net = network(Circuits::Leaky);
    let obs = observe(&net, &images()[0], 2);
    assert!(obs.logits.iter().any(|l| l != &obs.logits[0]), "logits never vary");
    let (w, classes) = last_dense(&net);
    let c = median_cosine(&obs, &w, classes);
    eprintln!("reduced windows: median |cosine| {c:.3} over {QUERIES} queries");
    assert!(c > 0.8, "median |cosine| {c:.3}: the regression should recover the columns");
}
