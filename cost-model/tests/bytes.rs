//! The byte predictions against real two-party runs: every non-ciphertext
//! byte, every ciphertext frame and every result ciphertext's bytes, exactly.
#![allow(clippy::unwrap_used)]

use delphi_cost::bytes::{node_traffic, program_traffic, OtPlan, Traffic};
use delphi_crypto::ot::CotKind;
use delphi_engine::run::run_local;
use delphi_net::builtin::build;
use delphi_net::FixedProgram;
use delphi_net::Placement;

fn predicted(prog: &FixedProgram) -> (Traffic, Traffic) {
    let (mut off, mut on) = program_traffic(prog);
    for i in 0..prog.nodes.len() {
        let (a, b) = node_traffic(prog, i);
        off.bytes += a.bytes;
        off.fresh_frames += a.fresh_frames;
        off.result_frames += a.result_frames;
        off.triple_frames += a.triple_frames;
        off.result_bytes += a.result_bytes;
        on.bytes += b.bytes;
        on.fresh_frames += b.fresh_frames;
    }
    (off, on)
}

#[test]
fn byte_predictions_are_exact_on_real_runs() {
    let mut mixed = build("small-cnn", 10, 41).unwrap();
    "RQR".parse::<Placement>().unwrap().apply(&mut mixed).unwrap();
    // Per-channel: every activation layer mixed (a third of its channels ReLU).
    let mut channels = build("small-cnn", 10, 43).unwrap();
    let shapes = channels.validate().unwrap();
    for i in channels.activation_layers() {
        let n = shapes[i].channels;
        channels.layers[i].op = delphi_net::Op::Activation(delphi_net::Activation::Mixed {
            relu: (0..n).map(|c| c % 3 == 0).collect(),
            a: vec![0.2; n],
            b: vec![0.5; n],
            c: vec![0.1; n],
        });
    }
    // Reduced ReLUs of two widths, one on the mixed layer's ReLU channels.
    let mut reduced = channels.clone();
    let acts = reduced.activation_layers();
    let windows: Vec<_> = acts
        .iter()
        .enumerate()
        .map(|(k, &l)| {
            let hi = 24 + 3 * k as u32;
            (l, Some(delphi_crypto::relu::ReluBits { lo: 12, hi }))
        })
        .collect();
    delphi_net::window::set_windows(&mut reduced, &windows).unwrap();
    reduced.name = "reduced".into();
    // ReLUs in the last activation layer only and faithful truncations
    // (their own random OTs): few correlated OTs, an IKNP pool.
    let mut last = build("small-cnn", 10, 44).unwrap();
    "QQR".parse::<Placement>().unwrap().apply(&mut last).unwrap();
    last.fixed_point.truncation = delphi_net::desc::TruncChoice::FaithfulLeaky;
    let mut kinds = Vec::new();
    for net in [mixed, channels, reduced, last, build("small-cnn", 10, 42).unwrap()] {
        let prog = FixedProgram::lower(&net).unwrap();
        kinds.push(OtPlan::of(&prog).kind);
        let inputs: Vec<_> = delphi_net::eval::random_inputs(784, 1, 3)
            .iter()
            .map(|x| prog.encode_input(x).unwrap())
            .collect();
        let report = run_local(&prog, &inputs, &|_| {}).unwrap();
        let (off, on) = predicted(&prog);
        for inf in &report.inferences {
            assert_eq!(inf.online_bytes, on.bytes, "{}: online bytes", net.name);
            assert_eq!(on.frames(), 0);
            assert_eq!(
                inf.offline_he.sent_frames, off.fresh_frames,
                "{}: fresh ciphertexts",
                net.name
            );
            assert_eq!(
                inf.offline_he.received_frames,
                off.result_frames + off.triple_frames,
                "{}: returned ciphertexts",
                net.name
            );
            assert_eq!(
                inf.offline_he.received_bytes, off.result_bytes,
                "{}: returned ciphertexts' bytes",
                net.name
            );
            assert_eq!(
                inf.offline_bytes - inf.offline_he.bytes(),
                off.bytes,
                "{}: offline bytes outside ciphertexts",
                net.name
            );
            // Fresh ciphertexts have a fixed size too: every byte predicted.
            assert_eq!(inf.offline_bytes as f64, off.total(), "{}: offline bytes", net.name);
        }
    }
    // Both kinds of correlated-OT pool were counted against real runs.
    assert!(kinds.contains(&CotKind::Silent) && kinds.contains(&CotKind::Iknp), "{kinds:?}");
}
