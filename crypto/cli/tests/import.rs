//! `delphi import` on the ONNX fixtures of delphi-onnx, then `delphi verify`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn delphi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_delphi"))
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../onnx/tests/fixtures").join(name)
}

#[test]
fn import_then_verify_and_refusals() {
    let d = std::env::temp_dir().join(format!("delphi-import-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let out = d.join("cnn.json");
    let weights = d.join("weights").join("cnn.safetensors");
    let o = delphi()
        .args(["import"])
        .arg(fixture("residual_bn.onnx"))
        .arg("--out")
        .arg(&out)
        .arg("--weights")
        .arg(&weights)
        .args(["--input-mean", "0.2860", "--input-std", "0.3530"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("5 ReLU") || err.contains("ReLUs"), "{err}");
    assert!(weights.is_file());
    let net = delphi_net::Network::load(&out).unwrap();
    assert_eq!(net.metadata.input_normalization.unwrap().mean, vec![0.2860f32]);
    // The imported network runs under the protocol, bit-exact with its reference.
    let v = delphi().args(["verify", "--json", "--plan"]).arg(&out).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["correct"], true, "{v}");
    // An ONNX file is also accepted directly as a plan.
    let v =
        delphi().args(["verify", "--json", "--plan"]).arg(fixture("cnn.onnx")).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    // Refused by name, with what to use instead: the CNN with its ReLUs
    // turned into SELUs (the same length, so the protobuf stays valid).
    let bytes = std::fs::read(fixture("cnn.onnx")).unwrap();
    let mut selu = bytes.clone();
    for k in 0..selu.len().saturating_sub(4) {
        if &bytes[k..k + 4] == b"Relu" {
            selu[k..k + 4].copy_from_slice(b"Selu");
        }
    }
    std::fs::write(d.join("selu.onnx"), &selu).unwrap();
    let r = delphi()
        .args(["import"])
        .arg(d.join("selu.onnx"))
        .arg("--out")
        .arg(d.join("no.json"))
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("Selu") && err.contains("use Relu"), "{err}");
    assert!(!d.join("no.json").exists());
    std::fs::remove_dir_all(&d).ok();
}
