//! What `--arch` accepts: built-ins, descriptions with or without weights,
//! ONNX models; and the refusal of a network that does not fit the data.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use delphi_net::builtin::build;
use delphi_net::{Network, WeightStorage};
use delphi_train::arch::resolve;
use delphi_train::data::DatasetKind;
use delphi_train::TrainError;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delphi-arch-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn builtins_descriptions_and_onnx_resolve() {
    let b = resolve("resnet14", &DatasetKind::FashionMnist, 1).unwrap();
    assert!(!b.trained);
    assert_eq!(b.network.activation_layers().len(), 13);

    // A description with weights is a trained network, used as it is.
    let p = tmp("cnn.json");
    let net = build("small-cnn", 10, 3).unwrap();
    net.save(&p, WeightStorage::Sidecar).unwrap();
    let r = resolve(p.to_str().unwrap(), &DatasetKind::FashionMnist, 1).unwrap();
    assert!(r.trained);
    assert_eq!(r.network.layers.len(), net.layers.len());
    // It records no normalisation: the dataset's is assumed, and said.
    assert!(r.notes.iter().any(|n| n.contains("records no input normalisation")));
    assert_eq!(
        r.network.metadata.input_normalization,
        Some(DatasetKind::FashionMnist.default_normalization())
    );

    // Without weights: initialised from the seed (and trained by the caller).
    let mut bare: serde_json::Value = serde_json::to_value(net.architecture_only()).unwrap();
    for l in bare["layers"].as_array_mut().unwrap() {
        for k in ["weight", "bias_values", "gamma", "beta", "mean", "var"] {
            l.as_object_mut().unwrap().remove(k);
        }
    }
    let q = tmp("bare.json");
    std::fs::write(&q, bare.to_string()).unwrap();
    assert!(Network::load(&q).is_err(), "a bare architecture is not a runnable plan");
    let r = resolve(q.to_str().unwrap(), &DatasetKind::FashionMnist, 5).unwrap();
    assert!(!r.trained);
    r.network.validate().unwrap();
    let r2 = resolve(q.to_str().unwrap(), &DatasetKind::FashionMnist, 5).unwrap();
    assert_eq!(r.network.layers, r2.network.layers, "seeded initialisation");

    // An ONNX model (a provider's trained PyTorch CNN).
    let onnx =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crypto/onnx/tests/fixtures/fm-cnn.onnx");
    let r = resolve(onnx.to_str().unwrap(), &DatasetKind::FashionMnist, 1).unwrap();
    assert!(r.trained);
    assert_eq!(r.network.activation_layers().len(), 3);
}

#[test]
fn a_network_that_does_not_fit_the_data_is_refused_with_both_shapes() {
    let p = tmp("minionn.json");
    build("minionn", 10, 1).unwrap().save(&p, WeightStorage::Sidecar).unwrap();
    let e = resolve(p.to_str().unwrap(), &DatasetKind::FashionMnist, 1).unwrap_err();
    assert!(matches!(e, TrainError::Mismatch { .. }), "{e}");
    let m = e.to_string();
    assert!(m.contains("3×32×32") && m.contains("1×28×28"), "{m}");

    // Right input, wrong number of classes.
    let p = tmp("cnn100.json");
    build("small-cnn", 100, 1).unwrap().save(&p, WeightStorage::Sidecar).unwrap();
    let m = resolve(p.to_str().unwrap(), &DatasetKind::FashionMnist, 1).unwrap_err().to_string();
    assert!(m.contains("100 outputs") && m.contains("10 classes"), "{m}");

    let m = resolve("no-such-net", &DatasetKind::FashionMnist, 1).unwrap_err().to_string();
    assert!(m.contains("resnet14") && m.contains("no such file"), "{m}");
}
