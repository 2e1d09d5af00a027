//! Whole networks between two parties over real TCP, against the fixed-point reference.
#![allow(clippy::unwrap_used)]

use std::thread;

use delphi_crypto::block::SecretRng;
use delphi_crypto::channel::{Channel, Counting, TcpChannel};
use delphi_crypto::field::F;
use delphi_engine::protocol::{
    client_offline_to, client_setup, server_offline, server_setup, Material,
};
use delphi_net::builtin::build;
use delphi_net::Placement;
use delphi_net::{Activation, FixedProgram, Network, Op, Padding, Shape};
use rand::{Rng, SeedableRng};

fn tcp_pair() -> (TcpChannel, TcpChannel) {
    TcpChannel::loopback_pair().unwrap()
}

/// Runs `inputs.len()` inferences; returns the secure logits of each.
fn run(prog: &FixedProgram, inputs: &[Vec<F>]) -> Vec<Vec<F>> {
    run_seeded(prog, inputs, 1)
}

/// [`run`] in a session whose randomness (keys, masks, shares) comes from `seed`.
fn run_seeded(prog: &FixedProgram, inputs: &[Vec<F>], seed: u64) -> Vec<Vec<F>> {
    run_keeping(prog, inputs, seed, &Material::Memory)
}

/// [`run_seeded`] with the client's garbled material kept where `material` says.
fn run_keeping(
    prog: &FixedProgram,
    inputs: &[Vec<F>],
    seed: u64,
    material: &Material,
) -> Vec<Vec<F>> {
    let (s, c) = tcp_pair();
    let sp = prog.clone();
    let n = inputs.len();
    let server = thread::spawn(move || {
        let mut ch = Counting::new(s);
        let mut rng = SecretRng::seed_from_u64(2 * seed + 1);
        let he = server_setup(&mut ch).unwrap();
        for _ in 0..n {
            // `online` takes the bundle: running it twice does not compile.
            let b = server_offline(&mut ch, &sp, &he, &mut rng).unwrap();
            b.online(&mut ch, &sp).unwrap();
        }
    });
    let mut ch = c;
    let mut rng = SecretRng::seed_from_u64(2 * seed + 2);
    let he = client_setup(&mut ch).unwrap();
    let mut out = Vec::new();
    for x in inputs {
        let b = client_offline_to(&mut ch, prog, &he, &mut rng, material).unwrap();
        out.push(b.online(&mut ch, prog, x).unwrap().logits);
    }
    server.join().unwrap();
    let _ = ch.flush();
    out
}

fn random_inputs(prog: &FixedProgram, n: usize, seed: u64) -> Vec<Vec<F>> {
    delphi_net::eval::random_inputs(prog.nodes[0].shape.len(), n, seed)
        .iter()
        .map(|x| prog.encode_input(x).unwrap())
        .collect()
}

/// A network with every layer kind: conv (stride 1 and 2, same and valid),
/// batch norm, ReLU, quadratic, residual, average pool, flatten, dense.
fn every_kind(seed: u64) -> Network {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut w = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-s..s)).collect() };
    let mut net = Network::new("every-kind", Shape::new(2, 8, 8), 8);
    let conv = |w: &mut dyn FnMut(usize, f32) -> Vec<f32>,
                cin: usize,
                cout: usize,
                k: usize,
                stride: usize,
                pad: Padding| Op::Conv2d {
        out_channels: cout,
        kernel: k,
        stride,
        padding: pad,
        bias: true,
        weight: w(cout * cin * k * k, 0.5),
        bias_values: w(cout, 0.1),
        groups: 1,
    };
    let bn = |w: &mut dyn FnMut(usize, f32) -> Vec<f32>, c: usize| Op::BatchNorm {
        eps: 1e-5,
        gamma: w(c, 0.2).into_iter().map(|v| 1.0 + v).collect(),
        beta: w(c, 0.1),
        mean: w(c, 0.1),
        var: w(c, 0.2).into_iter().map(|v| 1.0 + v.abs()).collect(),
    };
    net.push(conv(&mut w, 2, 4, 3, 1, Padding::Same));
    net.push(bn(&mut w, 4));
    let a = net.push(Op::Activation(Activation::Relu));
    net.push(conv(&mut w, 4, 4, 3, 1, Padding::Same));
    let main = net.push(bn(&mut w, 4));
    net.push_from(a, Op::Residual { from: main });
    net.push(Op::Activation(Activation::Relu));
    net.push(Op::AvgPool { kernel: 2, stride: 2 });
    net.push(conv(&mut w, 4, 3, 3, 2, Padding::Valid));
    net.push(Op::Activation(Activation::Quad { a: 0.25, b: 0.5, c: 0.1 }));
    net.push(Op::Flatten);
    net.push(dense(&mut w, 5, 3, 0.5, 0.1));
    net.validate().unwrap();
    net
}

/// Runs `prog` securely on two inputs and checks the logits against the
/// reference exactly: every truncation and ReLU is a function of its input.
fn assert_exact(prog: &FixedProgram, seed: u64, label: &str) {
    let inputs = random_inputs(prog, 2, seed);
    for (x, got) in inputs.iter().zip(run(prog, &inputs)) {
        assert_eq!(got, prog.eval(x).unwrap(), "{label}");
    }
}

/// Runs `prog` securely on two inputs and checks the logits against the
/// reference: with the faithful truncation (the leaky opt-in) each truncated
/// value may be off by one unit, which stays far below the logits' spread
/// through a few layers.
fn assert_matches_up_to_truncation(prog: &FixedProgram, seed: u64, label: &str) {
    let inputs = random_inputs(prog, 2, seed);
    for (x, got) in inputs.iter().zip(run(prog, &inputs)) {
        let want = prog.decode_output(&prog.eval(x).unwrap());
        let got = prog.decode_output(&got);
        let range = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 0.02 * range, "{label}: {g} vs {w}");
        }
    }
}

#[test]
fn all_relu_networks_equal_the_reference_exactly() {
    // Small CNN with ReLUs and a residual block with batch norm (no quadratic: no
    // probabilistic truncation anywhere, so the secure logits are bit-exact).
    let mut net = every_kind(3);
    net.layers[9].op = Op::Activation(Activation::Relu);
    for net in [net, build("small-cnn", 10, 4).unwrap()] {
        let prog = FixedProgram::lower(&net).unwrap();
        let inputs = random_inputs(&prog, 2, 5);
        for (x, got) in inputs.iter().zip(run(&prog, &inputs)) {
            assert_eq!(got, prog.eval(x).unwrap(), "{}", net.name);
        }
    }
}

#[test]
fn material_kept_on_disk_gives_what_it_gives_in_memory() {
    // ReLUs, exact truncations after quadratics and a residual: every kind of
    // spooled material, more than one evaluation chunk in the ReLU layer.
    let spool = std::env::temp_dir().join(format!("delphi-spool-test-{}", std::process::id()));
    std::fs::create_dir_all(&spool).unwrap();
    let disk = Material::Disk(spool.clone());
    let mut relu = every_kind(7);
    relu.layers[9].op = Op::Activation(Activation::Relu);
    for net in [every_kind(7), relu, build("small-cnn", 10, 8).unwrap()] {
        let prog = FixedProgram::lower(&net).unwrap();
        let inputs = random_inputs(&prog, 2, 9);
        let on_disk = run_keeping(&prog, &inputs, 3, &disk);
        assert_eq!(on_disk, run_keeping(&prog, &inputs, 3, &Material::Memory), "{}", net.name);
        for (x, got) in inputs.iter().zip(&on_disk) {
            assert_eq!(*got, prog.eval(x).unwrap(), "{}", net.name);
        }
    }
    // Spool files are unlinked as they are made: nothing is left behind.
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    std::fs::remove_dir_all(&spool).ok();
}

#[test]
fn quadratic_placements_equal_the_reference_exactly() {
    use delphi_crypto::trunc::TruncKind;
    let mut cnn = build("small-cnn", 10, 6).unwrap();
    "RQQ".parse::<Placement>().unwrap().apply(&mut cnn).unwrap();
    for mut net in [every_kind(7), cnn] {
        let prog = FixedProgram::lower(&net).unwrap();
        let kinds: Vec<TruncKind> = prog
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                delphi_net::fixed::FixedOp::Trunc { kind, .. } => Some(kind),
                _ => None,
            })
            .collect();
        assert!(kinds.iter().all(|k| k.is_exact()) && !kinds.is_empty(), "{kinds:?}");
        assert_exact(&prog, 8, &net.name);
        // The leaky opt-in rounds by the shares: within a unit per value.
        net.fixed_point.truncation = delphi_net::desc::TruncChoice::FaithfulLeaky;
        let prog = FixedProgram::lower(&net).unwrap();
        assert!(prog.share_dependent_roundings().1 > 0);
        assert_matches_up_to_truncation(&prog, 8, &net.name);
    }
}

#[test]
fn the_same_input_gives_the_same_logits_in_every_session() {
    // The default plan of the README (small-cnn, all quadratic) and one with
    // exact ReLU windows: fresh keys, masks and shares each session.
    let mut qqq = build("small-cnn", 10, 12).unwrap();
    "QQQ".parse::<Placement>().unwrap().apply(&mut qqq).unwrap();
    let mut windows = build("small-cnn", 10, 13).unwrap();
    let w = delphi_net::window::exact_windows(&windows).unwrap();
    assert!(w.iter().any(|(_, b)| b.is_some()), "{w:?}");
    delphi_net::window::set_windows(&mut windows, &w).unwrap();
    for net in [qqq, windows] {
        let prog = FixedProgram::lower(&net).unwrap();
        assert_eq!(prog.share_dependent_roundings(), (0, 0));
        let x = random_inputs(&prog, 1, 14);
        let want = prog.eval(&x[0]).unwrap();
        for session in 0..3 {
            assert_eq!(run_seeded(&prog, &x, 100 + session), vec![want.clone()], "{}", net.name);
        }
    }
}

/// A mixed activation: ReLU on the channels where `relu` is true, a
/// different quadratic on each of the others.
fn mixed(relu: &[bool], seed: u64) -> Op {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let n = relu.len();
    let mut v = |lo: f32, hi: f32| (0..n).map(|_| rng.gen_range(lo..hi)).collect::<Vec<f32>>();
    Op::Activation(Activation::Mixed {
        relu: relu.to_vec(),
        a: v(0.1, 0.3),
        b: v(0.3, 0.7),
        c: v(-0.2, 0.2),
    })
}

/// Mixed layers after a conv, after a pool (a pending divisor), inside a
/// residual block, after its addition and on a flat vector; `masks` gives
/// the five layers' masks.
fn mixed_net(masks: [&[bool]; 5], seed: u64) -> Network {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut w = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-s..s)).collect() };
    let conv = |w: &mut dyn FnMut(usize, f32) -> Vec<f32>, cin: usize, cout: usize| Op::Conv2d {
        out_channels: cout,
        kernel: 3,
        stride: 1,
        padding: Padding::Same,
        bias: true,
        weight: w(cout * cin * 9, 0.4),
        bias_values: w(cout, 0.1),
        groups: 1,
    };
    let mut net = Network::new("mixed", Shape::new(2, 6, 6), 8);
    net.push(conv(&mut w, 2, 4));
    net.push(mixed(masks[0], seed + 1));
    net.push(Op::AvgPool { kernel: 2, stride: 2 });
    let a = net.push(mixed(masks[1], seed + 2));
    net.push(conv(&mut w, 4, 4));
    net.push(mixed(masks[2], seed + 3));
    let main = net.push(conv(&mut w, 4, 4));
    net.push_from(a, Op::Residual { from: main });
    net.push(mixed(masks[4], seed + 5));
    net.push(Op::Flatten);
    net.push(dense(&mut w, 4, 36, 0.3, 0.1));
    net.push(mixed(masks[3], seed + 4));
    net.push(dense(&mut w, 3, 4, 0.5, 0.1));
    net.validate().unwrap();
    net
}

#[test]
fn mixed_channel_layers_equal_the_reference() {
    let relu: &[bool] = &[true; 4];
    let quad: &[bool] = &[false; 4];
    let one_each: &[bool] = &[true, false, false, true];
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let mut random = || -> Vec<bool> { (0..4).map(|_| rng.gen_bool(0.5)).collect() };
    let (r1, r2, r3, r4, r5) = (random(), random(), random(), random(), random());
    // All-ReLU channels everywhere: no truncation, bit-exact.
    let prog = FixedProgram::lower(&mixed_net([relu; 5], 20)).unwrap();
    let inputs = random_inputs(&prog, 2, 21);
    for (x, got) in inputs.iter().zip(run(&prog, &inputs)) {
        assert_eq!(got, prog.eval(x).unwrap());
    }
    // All-quadratic, one of each, random masks: exact truncations.
    for (k, masks) in [
        [quad; 5],
        [one_each, quad, one_each, one_each, one_each],
        [&r1[..], &r2[..], &r3[..], &r4[..], &r5[..]],
    ]
    .into_iter()
    .enumerate()
    {
        let prog = FixedProgram::lower(&mixed_net(masks, 30 + k as u64)).unwrap();
        assert_exact(&prog, 31 + k as u64, &format!("masks {k}"));
    }
}

#[test]
fn reduced_relus_stay_within_their_bound_node_by_node() {
    use delphi_engine::run::run_local_with;
    use delphi_net::window::{relu_peaks, set_windows, window_for};
    let mut net = every_kind(7);
    net.layers[9].op = Op::Activation(Activation::Relu);
    let full = FixedProgram::lower(&net).unwrap();
    let inputs = random_inputs(&full, 2, 11);
    let peaks = relu_peaks(&full, &inputs).unwrap();
    assert_eq!(peaks.len(), 3);
    // One window exact (lo = shift), two coarser (bounds 2 and 4 units).
    let windows: Vec<_> = peaks
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let lo = p.shift + k as u32;
            (p.layer, Some(window_for(p.peak, 2.0, lo, p.shift).unwrap()))
        })
        .collect();
    set_windows(&mut net, &windows).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    let reduced = run_local_with(&prog, &inputs, &|_| {}, true).unwrap();
    let baseline = run_local_with(&full, &inputs, &|_| {}, true).unwrap();
    let mut deviations = 0;
    for (inf, base) in reduced.inferences.iter().zip(&baseline.inferences) {
        let check = inf.node_check.as_ref().unwrap();
        assert!(check.ok(), "{:?}", check.failing);
        assert_eq!(check.reduced_relus.len(), 3);
        assert_eq!(check.outside_window, 0);
        for d in &check.reduced_relus {
            assert!(d.max_units <= d.allowed_units);
            deviations += usize::from(d.max_units > 0);
        }
        // The full-width network is exact node by node and at the logits.
        assert!(base.node_check.as_ref().unwrap().ok() && base.correct);
        // Fewer bytes online and offline.
        assert!(inf.online_bytes < base.online_bytes);
        assert!(inf.offline_bytes < base.offline_bytes);
        assert!(inf.max_rel_error < 0.05, "{}", inf.max_rel_error);
    }
    // The coarse windows do round: the check is not vacuous.
    assert!(deviations > 0);
}

/// A dense layer of `inputs` → `out` with weights of scale `ws` and biases
/// of scale `bs`, drawn from `w`.
fn dense(
    w: &mut dyn FnMut(usize, f32) -> Vec<f32>,
    out: usize,
    inputs: usize,
    ws: f32,
    bs: f32,
) -> Op {
    Op::Dense {
        out_features: out,
        bias: true,
        weight: w(out * inputs, ws),
        bias_values: w(out, bs),
    }
}

#[test]
fn a_depthwise_separable_block_equals_the_reference_and_skips_zero_products() {
    // Depthwise 3×3 (groups = channels), batch norm, ReLU, pointwise 1×1,
    // a grouped 3×3 (2 groups), ReLU, max pool, dense: as MobileNet builds.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let mut w = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-s..s)).collect() };
    let mut net = Network::new("separable", Shape::new(4, 8, 8), 8);
    let mut conv = |cin: usize, cout: usize, k: usize, groups: usize| Op::Conv2d {
        out_channels: cout,
        kernel: k,
        stride: 1,
        padding: Padding::Same,
        bias: true,
        weight: w(cout * cin / groups * k * k, 0.5),
        bias_values: w(cout, 0.1),
        groups,
    };
    net.push(conv(4, 4, 3, 4));
    net.push(Op::Activation(Activation::Relu));
    net.push(conv(4, 8, 1, 1));
    net.push(Op::Activation(Activation::Relu));
    net.push(conv(8, 8, 3, 2));
    net.push(Op::Activation(Activation::Relu));
    net.push(Op::MaxPool { kernel: 2, stride: 2, padding: 0 });
    net.push(Op::Flatten);
    let dense =
        Op::Dense { out_features: 3, bias: true, weight: w(3 * 128, 0.3), bias_values: w(3, 0.1) };
    net.push(dense);
    net.validate().unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    assert_exact(&prog, 12, "separable");
    // The float evaluator agrees with the fixed-point program.
    let x = delphi_net::eval::random_inputs(net.input.len(), 1, 4).remove(0);
    let f = delphi_net::eval::eval_float(&net, &x).unwrap();
    let q = prog.decode_output(&prog.eval(&prog.encode_input(&x).unwrap()).unwrap());
    for (a, b) in f.iter().zip(&q) {
        assert!((*a as f64 - b).abs() < 0.05, "{a} vs {b}");
    }
}

#[test]
fn grouped_products_are_the_nonzero_weight_polynomials() {
    use delphi_net::linear::{expand_groups, LinearOp};
    use delphi_net::packing::Packing;
    // Grouped: 64 channels of 14×14 fill two input polynomials (32 padded
    // 16×16 planes each), one output channel per result. (Ungrouped, the
    // layout with several output channels per result may be cheaper.)
    for groups in [1, 2, 4, 16] {
        let s = Shape::new(64, 14, 14);
        let op = LinearOp::conv(s, 64, 3, 1, 1).with_groups(groups);
        let p = Packing::new(&op).unwrap();
        if groups > 1 {
            assert_eq!((p.input_polys(), p.output_polys()), (2, 64));
        }
        let w: Vec<i64> = (0..64 * 64 / groups * 9).map(|i| (i % 7) as i64 - 3).collect();
        let full = expand_groups(&w, 64, 64, groups, 9);
        let nonzero: usize = (0..p.output_polys())
            .map(|o| {
                (0..p.input_polys())
                    .filter(|&b| p.weight_poly(&full, o, b).iter().any(|&v| v != 0))
                    .count()
            })
            .sum();
        assert_eq!(p.products(), nonzero, "groups {groups}");
        // 16 groups of 4 channels: one input polynomial each, 64 products.
        if groups == 16 {
            assert_eq!(p.products(), 64);
        }
    }
    // Depthwise: 5 channels per polynomial both ways (5² planes of 16×16
    // fit 8,192), 13 products and 26 polynomials where the ungrouped layer
    // has 169 products and 26 polynomials (5 channels per input block, 5
    // output channels per result).
    let op = LinearOp::conv(Shape::new(64, 14, 14), 64, 3, 1, 1).with_groups(64);
    let p = Packing::new(&op).unwrap();
    assert!(matches!(p, Packing::Depthwise { per: 5, .. }), "{p:?}");
    assert_eq!((p.input_polys(), p.output_polys(), p.products()), (13, 13, 13));
    let dense = Packing::new(&LinearOp::conv(Shape::new(64, 14, 14), 64, 3, 1, 1)).unwrap();
    assert_eq!((dense.input_polys(), dense.output_polys(), dense.products()), (13, 13, 169));
}
