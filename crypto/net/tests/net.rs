//! The network description: built-ins, files, validation, evaluators.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use delphi_net::builtin::build;
use delphi_net::eval::{argmax, eval_float};
use delphi_net::{
    Activation, FixedOp, FixedProgram, NetError, Network, Op, Placement, WeightStorage,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delphi-net-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn random_input(net: &Network, seed: u64) -> Vec<f32> {
    delphi_net::eval::random_inputs(net.input.len(), 1, seed).remove(0)
}

#[test]
fn builtins_have_the_documented_shape() {
    for (arch, acts, classes) in [("small-cnn", 3, 10), ("minionn", 7, 10), ("resnet32", 31, 100)] {
        let net = build(arch, classes, 1).unwrap();
        assert_eq!(net.activation_layers().len(), acts, "{arch}");
        assert_eq!(net.output_shape().unwrap().len(), classes);
    }
    let r = build("resnet32", 100, 1).unwrap();
    let residuals = r.layers.iter().filter(|l| matches!(l.op, Op::Residual { .. })).count();
    let bns = r.layers.iter().filter(|l| matches!(l.op, Op::BatchNorm { .. })).count();
    assert_eq!(residuals, 15);
    assert_eq!(bns, 1 + 30 + 2);
    assert!(matches!(build("vgg", 10, 1), Err(NetError::Invalid(_))));
    // The two Fashion-MNIST ResNets: about the same compute, the deep one
    // with twice the activation layers (ReLUs, multiply-accumulates).
    let size = |net: &Network| -> (usize, usize, usize) {
        let prog = FixedProgram::lower(net).unwrap();
        let relus = prog
            .nodes
            .iter()
            .filter(|n| matches!(n.op, FixedOp::Relu { .. }))
            .map(|n| n.active_len())
            .sum();
        let macs = prog
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                FixedOp::Linear { op, .. } => Some(op.output.len() * op.macs_per_output()),
                _ => None,
            })
            .sum();
        (net.activation_layers().len(), relus, macs)
    };
    let (r14, r26) = (build("resnet14", 10, 1).unwrap(), build("resnet26", 10, 1).unwrap());
    let ((a14, relu14, mac14), (a26, relu26, mac26)) = (size(&r14), size(&r26));
    assert_eq!((a14, relu14), (13, 26_592));
    assert_eq!((a26, relu26), (25, 29_184));
    assert!(mac26 < mac14 && mac26 * 10 > mac14 * 8, "{mac26} against {mac14}");
    let (a38, relu38, mac38) = size(&build("resnet38", 10, 1).unwrap());
    assert_eq!((a38, relu38), (37, 30_480));
    assert!(mac38 < mac26 && mac38 * 10 > mac26 * 7, "{mac38} against {mac26}");
}

#[test]
fn files_round_trip_inline_and_with_a_sidecar() {
    let dir = tmp("roundtrip");
    let mut net = build("small-cnn", 10, 3).unwrap();
    "relu,quad,relu".parse::<Placement>().unwrap().apply(&mut net).unwrap();
    for (storage, file) in
        [(WeightStorage::Inline, "inline.json"), (WeightStorage::Sidecar, "side.json")]
    {
        let p = dir.join(file);
        net.save(&p, storage).unwrap();
        let back = Network::load(&p).unwrap();
        let mut expect = net.clone();
        expect.weights_file = back.weights_file.clone();
        assert_eq!(back, expect, "{file}");
    }
    assert!(dir.join("side.safetensors").exists());
    // A sidecar with the wrong number of values is a weights-size error naming the layer.
    let p = dir.join("side.json");
    let mut text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    text["layers"][0]["out_channels"] = 8.into();
    std::fs::write(&p, text.to_string()).unwrap();
    let e = Network::load(&p).unwrap_err();
    assert!(matches!(e, NetError::Layer { index: 0, .. }), "{e}");
    assert!(e.to_string().contains("weights of the wrong size"), "{e}");
}

#[test]
fn unrunnable_descriptions_are_rejected_with_the_layer_named() {
    let base = build("resnet32", 10, 2).unwrap();
    let first_residual =
        base.layers.iter().position(|l| matches!(l.op, Op::Residual { .. })).unwrap();

    let mut n = base.clone();
    n.layers[first_residual].op = Op::Residual { from: first_residual + 3 };
    let e = n.validate().unwrap_err();
    assert!(matches!(e, NetError::Layer { index, .. } if index == first_residual));
    assert!(e.to_string().contains("points forward"), "{e}");

    let mut n = base.clone();
    let last_dense = n.layers.len() - 1;
    n.layers.push(delphi_net::Layer::new(Op::Residual { from: 2 }));
    let e = n.validate().unwrap_err();
    assert!(
        matches!(e, NetError::Layer { index, kind: "residual", .. } if index == last_dense + 1)
    );
    assert!(e.to_string().contains("shape mismatch"), "{e}");

    let mut n = base.clone();
    if let Op::Conv2d { stride, .. } = &mut n.layers[0].op {
        *stride = 3;
    }
    let e = n.validate().unwrap_err();
    assert!(matches!(e, NetError::Layer { index: 0, kind: "conv2d", .. }));
    assert!(e.to_string().contains("stride 3"), "{e}");

    let mut n = base.clone();
    if let Op::Dense { weight, .. } = &mut n.layers[last_dense].op {
        weight.pop();
    }
    let e = n.validate().unwrap_err();
    assert!(
        e.to_string().contains(&format!("layer {last_dense} (dense): weights of the wrong size")),
        "{e}"
    );

    let dir = tmp("version");
    let p = dir.join("v4.json");
    let mut j = serde_json::to_value(build("small-cnn", 10, 1).unwrap()).unwrap();
    j["version"] = 4.into();
    std::fs::write(&p, j.to_string()).unwrap();
    assert!(matches!(Network::load(&p), Err(NetError::Version { found: 4, supported: 3 })));
    std::fs::write(&p, b"{ not json").unwrap();
    assert!(matches!(Network::load(&p), Err(NetError::Json { .. })));
}

#[test]
fn placements_apply_in_order() {
    let mut n = build("small-cnn", 10, 1).unwrap();
    "RQR".parse::<Placement>().unwrap().apply(&mut n).unwrap();
    assert_eq!(Placement::of(&n).to_string(), "RQR");
    "quad, quad, relu".parse::<Placement>().unwrap().apply(&mut n).unwrap();
    assert_eq!(Placement::of(&n).to_string(), "QQR");
    let short: Placement = "RQ".parse().unwrap();
    let e = short.apply(&mut n).unwrap_err().to_string();
    assert!(e.contains("2 entries") && e.contains("3 activation layers"), "{e}");
    assert!("RXR".parse::<Placement>().is_err());
    let mut r = build("resnet32", 100, 1).unwrap();
    Placement::last_quad(31, 26).unwrap().apply(&mut r).unwrap();
    assert_eq!(Placement::of(&r).to_string(), format!("{}{}", "R".repeat(5), "Q".repeat(26)));
}

fn max_rel_err(a: &[f64], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1.0);
    a.iter().zip(b).map(|(x, y)| (x - *y as f64).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn fixed_point_reference_tracks_the_float_network() {
    for (arch, classes) in [("small-cnn", 10), ("minionn", 10), ("resnet32", 100)] {
        let net = build(arch, classes, 5).unwrap();
        let prog = FixedProgram::lower(&net).unwrap();
        // All-ReLU networks need no probabilistic truncation anywhere.
        assert!(!prog.nodes.iter().any(|n| matches!(n.op, FixedOp::Trunc { .. })), "{arch}");
        for seed in 0..2 {
            let x = random_input(&net, seed);
            let fl = eval_float(&net, &x).unwrap();
            let fx = prog.decode_output(&prog.eval(&prog.encode_input(&x).unwrap()).unwrap());
            let err = max_rel_err(&fx, &fl);
            // 8 fractional bits through up to 33 random layers.
            assert!(err < 0.1, "{arch}: fixed point off by {err} of the logit range");
        }
    }
}

#[test]
fn mixed_placements_lower_and_evaluate() {
    let mut net = build("small-cnn", 10, 9).unwrap();
    "RQQ".parse::<Placement>().unwrap().apply(&mut net).unwrap();
    let prog = FixedProgram::lower(&net).unwrap();
    assert!(prog.nodes.iter().any(|n| matches!(n.op, FixedOp::Trunc { .. })));
    let (relus, quads) = prog.activation_counts();
    assert_eq!(relus, 16 * 28 * 28);
    assert_eq!(quads, 32 * 14 * 14 + 128);
    let mut agree = 0;
    for seed in 0..10 {
        let x = random_input(&net, seed);
        let fl = eval_float(&net, &x).unwrap();
        let fx = prog.decode_output(&prog.eval(&prog.encode_input(&x).unwrap()).unwrap());
        assert!(max_rel_err(&fx, &fl) < 0.05);
        let fx32: Vec<f32> = fx.iter().map(|v| *v as f32).collect();
        agree += (argmax(&fx32) == argmax(&fl)) as usize;
    }
    assert!(agree >= 9, "fixed and float disagree on {} of 10 classes", 10 - agree);
}

#[test]
fn folding_batch_norm_keeps_the_function_and_renumbers_references() {
    let mut net = build("resnet32", 10, 9).unwrap();
    delphi_net::builtin::quad_last_with(&mut net, 2, delphi_net::builtin::BENCH_QUAD).unwrap();
    let folded = net.fold_batch_norm().unwrap();
    let bns = net.layers.iter().filter(|l| matches!(l.op, Op::BatchNorm { .. })).count();
    assert!(bns > 30);
    assert_eq!(folded.layers.len(), net.layers.len() - bns);
    assert!(folded.layers.iter().all(|l| !matches!(l.op, Op::BatchNorm { .. })));
    for x in delphi_net::eval::random_inputs(net.input.len(), 2, 3) {
        let a = delphi_net::eval::eval_float(&net, &x).unwrap();
        let b = delphi_net::eval::eval_float(&folded, &x).unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-3 * p.abs().max(1.0), "{p} vs {q}");
        }
    }
    // Folding twice changes nothing.
    assert_eq!(folded.fold_batch_norm().unwrap(), folded);
}

#[test]
fn the_architecture_a_client_sees_has_no_weights_and_no_quadratic_constant() {
    let mut net = build("small-cnn", 10, 3).unwrap();
    "RQR".parse::<Placement>().unwrap().apply(&mut net).unwrap();
    let arch = net.architecture_only();
    for l in &arch.layers {
        if let Op::Activation(Activation::Quad { a, b, c }) = l.op {
            assert_eq!(c, 0.0);
            assert!(a != 0.0 && b != 0.0, "a and b are disclosed (the client needs them)");
        }
        if let Op::Conv2d { weight, .. } | Op::Dense { weight, .. } = &l.op {
            assert!(weight.iter().all(|w| *w == 0.0));
        }
    }
}

/// The truncation kinds of a program, in node order.
fn trunc_kinds(prog: &FixedProgram) -> Vec<delphi_crypto::trunc::TruncKind> {
    prog.nodes
        .iter()
        .filter_map(|n| match n.op {
            FixedOp::Trunc { kind, .. } => Some(kind),
            _ => None,
        })
        .collect()
}

#[test]
fn the_client_lowers_the_truncations_the_server_settled() {
    use delphi_crypto::trunc::TruncKind;
    // All quadratic: the first truncations are proven bounded, the deeper
    // ones are not (interval arithmetic squares the bound at each layer).
    let mut net = build("small-cnn", 10, 3).unwrap();
    "QQQ".parse::<Placement>().unwrap().apply(&mut net).unwrap();
    let server = trunc_kinds(&FixedProgram::lower(&net).unwrap());
    assert!(
        server.contains(&TruncKind::Exact) && server.contains(&TruncKind::ExactWide),
        "{server:?}"
    );
    // The architecture records them, so the client (with no weights, hence
    // tiny proven bounds) lowers the same program...
    let arch = net.architecture_only();
    assert_eq!(trunc_kinds(&FixedProgram::lower(&arch).unwrap()), server);
    // ... which it would not without the record.
    let mut bare = arch.clone();
    bare.layers.iter_mut().for_each(|l| l.truncations = None);
    assert_ne!(trunc_kinds(&FixedProgram::lower(&bare).unwrap()), server);
    // A record that claims a bounded truncation the weights cannot prove is
    // refused by name; one of the wrong length too.
    let mut lying = net.clone();
    for (l, a) in lying.layers.iter_mut().zip(&arch.layers) {
        l.truncations = a.truncations.as_ref().map(|k| vec![TruncKind::Exact; k.len()]);
    }
    let e = FixedProgram::lower(&lying).unwrap_err().to_string();
    assert!(e.contains("not proven"), "{e}");
    let mut short = net.clone();
    let i = arch.layers.iter().position(|l| l.truncations.is_some()).unwrap();
    short.layers[i].truncations = Some(vec![]);
    let e = FixedProgram::lower(&short).unwrap_err().to_string();
    assert!(e.contains("records 0 truncations"), "{e}");
    // A hand-written exact window narrower than the proven bound is refused.
    let mut narrow = build("small-cnn", 10, 3).unwrap();
    let first = narrow.activation_layers()[0];
    narrow.layers[first].relu_bits = Some(delphi_crypto::relu::spec::ReluBits::exact(14));
    narrow.version = narrow.version.max(3);
    let e = FixedProgram::lower(&narrow).unwrap_err().to_string();
    assert!(e.contains("does not hold its input's proven bound"), "{e}");
}

#[test]
fn unknown_fields_are_refused_not_dropped() {
    let d = tmp("unknown");
    let net = build("small-cnn", 10, 3).unwrap();
    let plan = d.join("plan.json");
    net.save(&plan, WeightStorage::Sidecar).unwrap();
    let text = std::fs::read_to_string(&plan).unwrap();
    for (from, to, named) in [
        ("\"out_channels\"", "\"out_chanels\"", "out_chanels"),
        ("\"fixed_point\"", "\"fixed_points\"", "fixed_points"),
        ("\"frac_bits\"", "\"frac_bit\"", "frac_bit"),
    ] {
        std::fs::write(&plan, text.replacen(from, to, 1)).unwrap();
        let e = Network::load(&plan).unwrap_err().to_string();
        assert!(e.contains(named), "{e}");
    }
    std::fs::write(&plan, &text).unwrap();
    Network::load(&plan).unwrap();
}

#[test]
fn devices_and_enormous_shapes_are_refused_before_allocating() {
    let e = Network::load(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A hostile architecture: an input of 2^40 elements (its length would
    // wrap a plain product on 32-bit targets and exhaust memory anywhere).
    let mut net = build("small-cnn", 10, 3).unwrap();
    net.input = delphi_net::Shape::new(1, 1 << 20, 1 << 20);
    let e = net.validate().unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
    assert_eq!(delphi_net::Shape::new(usize::MAX, 2, 2).len(), usize::MAX, "saturates");
}

#[test]
fn a_reversed_input_range_is_refused_not_sampled() {
    let mut net = build("small-cnn", 10, 3).unwrap();
    net.metadata.input_range = Some([1.0, -1.0]);
    let e = net.validate().unwrap_err();
    assert!(e.to_string().contains("input_range"), "{e}");
}

/// small-cnn with its activation layers mixed: per channel ReLU where
/// `relu(layer, channel)`, else that channel's own quadratic.
fn mixed_small_cnn(seed: u64, relu: impl Fn(usize, usize) -> bool) -> Network {
    let mut net = build("small-cnn", 10, seed).unwrap();
    let shapes = net.validate().unwrap();
    for (k, i) in net.activation_layers().into_iter().enumerate() {
        let n = shapes[i].channels;
        net.layers[i].op = Op::Activation(Activation::Mixed {
            relu: (0..n).map(|c| relu(k, c)).collect(),
            a: (0..n).map(|c| 0.1 + 0.01 * (c % 7) as f32).collect(),
            b: (0..n).map(|c| 0.4 + 0.02 * (c % 5) as f32).collect(),
            c: (0..n).map(|c| 0.05 * (c % 3) as f32 - 0.05).collect(),
        });
    }
    net.validate().unwrap();
    net
}

#[test]
fn mixed_layers_track_the_float_network_and_count_per_channel() {
    // Half the channels of every layer ReLU, the others their own quadratic.
    let net = mixed_small_cnn(4, |_, c| c % 2 == 0);
    let prog = FixedProgram::lower(&net).unwrap();
    let (relus, quads) = prog.activation_counts();
    assert_eq!(relus, 8 * 28 * 28 + 16 * 14 * 14 + 64);
    assert_eq!(quads, 8 * 28 * 28 + 16 * 14 * 14 + 64);
    for seed in 0..4 {
        let x = random_input(&net, seed);
        let fl = eval_float(&net, &x).unwrap();
        let fx = prog.decode_output(&prog.eval(&prog.encode_input(&x).unwrap()).unwrap());
        assert!(max_rel_err(&fx, &fl) < 0.05, "seed {seed}");
    }
    // All channels ReLU is the all-ReLU network, bit for bit.
    let relu = mixed_small_cnn(4, |_, _| true);
    let mut plain = relu.clone();
    Placement::all_relu(3).apply(&mut plain).unwrap();
    let (a, b) = (FixedProgram::lower(&relu).unwrap(), FixedProgram::lower(&plain).unwrap());
    let x = a.encode_input(&random_input(&relu, 9)).unwrap();
    assert_eq!(a.eval(&x).unwrap(), b.eval(&x).unwrap());
}

#[test]
fn mixed_layers_need_version_2_and_one_entry_per_channel() {
    let net = mixed_small_cnn(5, |k, c| (k + c) % 3 == 0);
    // Round trip through a file (version 2).
    let p = tmp("mixed").join("mixed.json");
    net.save(&p, delphi_net::WeightStorage::Inline).unwrap();
    let back = Network::load(&p).unwrap();
    assert_eq!(back, net);
    // A version-1 file with a mixed layer is refused, naming the layer.
    let first = net.activation_layers()[0];
    let mut v1 = net.clone();
    v1.version = 1;
    let e = v1.validate().unwrap_err();
    assert!(matches!(e, NetError::Layer { index, .. } if index == first), "{e}");
    assert!(e.to_string().contains("version 2"), "{e}");
    // Lists that do not match the channels are refused, naming the layer and list.
    let mut short = net.clone();
    if let Op::Activation(Activation::Mixed { b, .. }) = &mut short.layers[first].op {
        b.pop();
    }
    let e = short.validate().unwrap_err();
    assert!(matches!(e, NetError::Layer { index, .. } if index == first), "{e}");
    assert!(e.to_string().contains("\"b\" has 15 entries"), "{e}");
    // A version-1 file without mixed layers still loads unchanged.
    let mut old = build("small-cnn", 10, 6).unwrap();
    old.version = 1;
    let p1 = tmp("v1").join("v1.json");
    old.save(&p1, delphi_net::WeightStorage::Inline).unwrap();
    let text = std::fs::read_to_string(&p1).unwrap();
    assert!(text.contains("\"version\":1") || text.contains("\"version\": 1"));
    assert_eq!(Network::load(&p1).unwrap(), old);
    // The architecture a client sees keeps the masks and a, b, but no c.
    let arch = net.architecture_only();
    if let Op::Activation(Activation::Mixed { relu, c, .. }) = &arch.layers[first].op {
        assert_eq!(
            Some(relu),
            match &net.layers[first].op {
                Op::Activation(Activation::Mixed { relu, .. }) => Some(relu),
                _ => None,
            }
        );
        assert!(c.iter().all(|v| *v == 0.0));
    } else {
        panic!("not mixed");
    }
}

#[test]
fn batched_evaluation_equals_one_input_at_a_time() {
    let mut rq = build("resnet14", 10, 3).unwrap();
    "QRQRQRQRQRQRQ".parse::<Placement>().unwrap().apply(&mut rq).unwrap();
    for net in [
        build("small-cnn", 10, 2).unwrap(),
        build("minionn", 10, 2).unwrap(),
        rq,
        mixed_small_cnn(7, |k, c| (k + c) % 3 == 0),
    ] {
        let prog = FixedProgram::lower(&net).unwrap();
        let inputs: Vec<_> = delphi_net::eval::random_inputs(net.input.len(), 5, 11)
            .iter()
            .map(|x| prog.encode_input(x).unwrap())
            .collect();
        let batch = prog.eval_batch(&inputs).unwrap();
        assert_eq!(batch.len(), inputs.len());
        for (x, got) in inputs.iter().zip(&batch) {
            assert_eq!(got, &prog.eval(x).unwrap(), "{}", net.name);
        }
    }
}

/// Max pooling of integers, windows cut by the padding (never the maximum).
fn max_pool_ints(x: &[i64], s: delphi_net::Shape, k: usize, stride: usize, pad: usize) -> Vec<i64> {
    let (windows, _) = delphi_net::linear::pool_windows(s, k, stride, pad);
    windows.iter().map(|w| w.iter().map(|&i| x[i]).max().unwrap()).collect()
}

#[test]
fn max_pooling_is_exact_in_fixed_point_with_and_without_a_fused_relu() {
    let shape = delphi_net::Shape::new(3, 7, 7);
    for (k, stride, pad, relu) in
        [(2, 2, 0, false), (3, 2, 1, false), (3, 3, 0, true), (2, 2, 1, true), (7, 7, 0, true)]
    {
        let mut net = Network::new("pool", shape, 8);
        if relu {
            net.push(Op::Activation(Activation::Relu));
        }
        net.push(Op::MaxPool { kernel: k, stride, padding: pad });
        net.validate().unwrap();
        let prog = FixedProgram::lower(&net).unwrap();
        // k² − 1 comparisons per window, plus one ReLU per window when fused.
        let out = net.output_shape().unwrap();
        let relus: usize = prog
            .nodes
            .iter()
            .filter(|n| matches!(n.op, FixedOp::Relu { .. }))
            .map(|n| n.active_len())
            .sum();
        assert_eq!(relus, out.len() * (k * k - 1 + usize::from(relu)), "k {k} relu {relu}");
        // A ReLU layer read only by the pool has no node of its own before it.
        assert_eq!(prog.nodes[1].op.kind(), "gather", "k {k} relu {relu}");
        for seed in 0..4 {
            let x = random_input(&net, seed);
            let enc = prog.encode_input(&x).unwrap();
            let ints: Vec<i64> = enc
                .iter()
                .map(|v| v.to_signed())
                .map(|v| if relu { v.max(0) } else { v })
                .collect();
            let want = max_pool_ints(&ints, shape, k, stride, pad);
            let got: Vec<i64> = prog.eval(&enc).unwrap().iter().map(|v| v.to_signed()).collect();
            assert_eq!(got, want, "k {k} stride {stride} pad {pad} relu {relu}");
            // The float evaluator agrees to the encoding's precision.
            let f = eval_float(&net, &x).unwrap();
            for (a, b) in f.iter().zip(&want) {
                assert!((a - *b as f32 / 256.0).abs() <= 1.0 / 256.0, "{a} vs {b}");
            }
        }
        // The layer survives a file round trip.
        let file = tmp("pool").join(format!("pool-{k}-{pad}-{relu}.json"));
        net.save(&file, WeightStorage::Inline).unwrap();
        let back = Network::load(&file).unwrap();
        assert_eq!(back.layers.last().unwrap().op, net.layers.last().unwrap().op);
        // The proven bound of the pooled values is the input's, not a sum.
        let bounds = prog.proven_bounds_for(&net);
        assert!(bounds[prog.output] <= bounds[0] + 1.0, "{} vs {}", bounds[prog.output], bounds[0]);
    }
    // A padding of more than half the window is refused.
    let mut net = Network::new("pool", shape, 8);
    net.push(Op::MaxPool { kernel: 2, stride: 2, padding: 2 });
    assert!(net.validate().unwrap_err().to_string().contains("more than half the window"));
}
