//! Plans whose values leave the range the protocol computes exactly in are
//! refused by name, and `verify` checks against the float network too.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use delphi_net::builtin::build;
use delphi_net::{Network, Op, Placement, WeightStorage};

fn delphi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_delphi"))
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("delphi-ranges-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn verify(net: &Network, d: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let plan = d.join("plan.json");
    net.save(&plan, WeightStorage::Inline).unwrap();
    let o = delphi()
        .args(["verify", "--inputs", "2", "--plan"])
        .arg(&plan)
        .args(extra)
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn a_huge_weight_is_refused_naming_its_layer_and_verify_sees_the_float_gap() {
    let d = dir("weight");
    let mut net = build("small-cnn", 10, 5).unwrap();
    let (ok, err) = verify(&net, &d, &[]);
    assert!(ok, "{err}");
    // One weight of 1e6 in the second convolution.
    let conv = net
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l.op, Op::Conv2d { .. }))
        .nth(1)
        .unwrap()
        .0;
    if let Op::Conv2d { weight, .. } = &mut net.layers[conv].op {
        weight[0] = 1e6;
    }
    let (ok, err) = verify(&net, &d, &[]);
    assert!(!ok);
    assert!(err.contains("values can exceed"), "{err}");
    assert!(err.contains(&format!("layer {conv}")), "{err}");
    // Run anyway: the secure result equals the (equally wrapped) fixed-point
    // reference, and the float comparison catches it.
    let (ok, err) = verify(&net, &d, &["--allow-overflow"]);
    assert!(!ok);
    assert!(err.contains("away from the float network"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_quadratic_outside_its_range_is_refused() {
    let d = dir("quad");
    let mut net = build("small-cnn", 10, 6).unwrap();
    "QQQ".parse::<Placement>().unwrap().apply(&mut net).unwrap();
    // Inputs declared up to 1e3: the first quadratic's input is far beyond
    // what its square can hold.
    net.metadata.input_range = Some([-1e3, 1e3]);
    let (ok, err) = verify(&net, &d, &[]);
    assert!(!ok);
    assert!(err.contains("values can exceed"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn verify_runs_a_mixed_per_channel_plan_unchanged() {
    let d = dir("mixed");
    let mut net = build("small-cnn", 10, 8).unwrap();
    let shapes = net.validate().unwrap();
    for i in net.activation_layers() {
        let n = shapes[i].channels;
        net.layers[i].op = Op::Activation(delphi_net::Activation::Mixed {
            relu: (0..n).map(|c| c % 4 == 1).collect(),
            a: vec![0.15; n],
            b: vec![0.5; n],
            c: vec![0.05; n],
        });
    }
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../../results/cost-model.json");
    let (ok, err) = verify(&net, &d, &["--compare-cost", "--cost-model", model]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn verify_names_the_roundings_that_depend_on_the_shares() {
    let d = dir("roundings");
    let run = |net: &Network| {
        let plan = d.join("plan.json");
        net.save(&plan, WeightStorage::Inline).unwrap();
        let o = delphi().args(["verify", "--json", "--plan"]).arg(&plan).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v["share_dependent_roundings"].clone(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    // All ReLU at full width: nothing depends on the shares, and no warning.
    let net = build("small-cnn", 10, 9).unwrap();
    let (r, err) = run(&net);
    assert_eq!((r["reduced_relus"].as_u64(), r["truncated_values"].as_u64()), (Some(0), Some(0)));
    assert!(!err.contains("depending on the shares"), "{err}");
    // Quadratic layers truncate exactly by default: nothing to warn about
    // (and verify holds every node to the reference exactly).
    let mut net = build("small-cnn", 10, 9).unwrap();
    "QQR".parse::<Placement>().unwrap().apply(&mut net).unwrap();
    let (r, err) = run(&net);
    assert_eq!((r["reduced_relus"].as_u64(), r["truncated_values"].as_u64()), (Some(0), Some(0)));
    assert!(!err.contains("depending on the shares"), "{err}");
    // The faithful opt-in: counted and warned about.
    net.fixed_point.truncation = delphi_net::desc::TruncChoice::FaithfulLeaky;
    let (r, err) = run(&net);
    assert!(r["truncated_values"].as_u64().unwrap() > 0, "{r}");
    assert!(err.contains("depending on the shares"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}
