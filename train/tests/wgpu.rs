//! The `wgpu` backend trains for real (CI runs it on Mesa's software Vulkan
//! device, lavapipe): `cargo test --release -p delphi-train --features wgpu
//! --test wgpu`. Built only with the feature.
#![cfg(feature = "wgpu")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use burn::tensor::Device;
use delphi_train::batch::batch;
use delphi_train::data::{self, DatasetKind};
use delphi_train::device::DeviceChoice;
use delphi_train::model::values;
use delphi_train::train::Trainer;
use delphi_train::TrainConfig;

/// Largest |a − b| over max |b| (at least 1).
fn gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Mean cross-entropy of `logits` (rows of 10) against `labels`.
fn loss(logits: &[f32], labels: &[u8]) -> f64 {
    logits
        .chunks(10)
        .zip(labels)
        .map(|(row, &l)| {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            m + z.ln() - row[l as usize] as f64
        })
        .sum::<f64>()
        / labels.len() as f64
}

#[test]
fn small_cnn_trains_on_wgpu_like_on_flex_and_checkpoints_cross_devices() {
    let wgpu = DeviceChoice::Wgpu.device().expect("wgpu device");
    let flex = Device::flex();
    let mut d = data::load(DatasetKind::FashionMnist, None, 200, 1)
        .expect("Fashion-MNIST (install Debian's dataset-fashion-mnist or set DELPHI_DATA)");
    d.train = d.train.take(2_000);
    let mut c = TrainConfig::new(DatasetKind::FashionMnist);
    // Start both devices from the same weights (each device's seeded
    // initialiser draws its own).
    let dir = std::env::temp_dir().join(format!("delphi-wgpu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let init = dir.join("small-cnn.json");
    delphi_net::builtin::build("small-cnn", 10, 1)
        .unwrap()
        .save(&init, delphi_net::WeightStorage::Inline)
        .unwrap();
    c.init = Some(init);
    c.epochs = 1;
    c.steps = Some(25);
    c.valid_size = 200;
    c.validate_epochs = false;
    let mut on_gpu = Trainer::new(c.clone(), &wgpu).unwrap();
    let on_cpu = Trainer::new(c, &flex).unwrap();
    let idx: Vec<usize> = (0..64).collect();
    let labels: Vec<u8> = idx.iter().map(|&i| d.valid.labels[i]).collect();
    let logits = |tr: &Trainer, dev: &Device| {
        let (x, _) = batch(&d.valid, &idx, None, &dev.clone().autodiff(), &tr.norm);
        values(tr.model.forward(x))
    };

    // Same weights, same batch: the same logits within f32
    // rounding of differently ordered sums.
    let (g0, c0) = (logits(&on_gpu, &wgpu), logits(&on_cpu, &flex));
    let g = gap(&g0, &c0);
    assert!(g < 1e-3, "wgpu and flex forward passes differ by {g}");

    // 25 steps of SGD on wgpu lower the loss on a held-out batch.
    on_gpu.train_steps(&d, 25, true).unwrap();
    let g1 = logits(&on_gpu, &wgpu);
    let (before, after) = (loss(&g0, &labels), loss(&g1, &labels));
    assert!(after < before - 0.2, "loss {before:.3} -> {after:.3}");

    // A checkpoint written on wgpu resumes on flex with the same model, and
    // back again.
    let ckpt = dir.join("checkpoint");
    on_gpu.save_checkpoint(&ckpt).unwrap();
    let resumed = Trainer::load_checkpoint(&ckpt, &flex).unwrap();
    assert_eq!(resumed.steps_done, 25);
    let r = gap(&logits(&resumed, &flex), &g1);
    assert!(r < 1e-3, "wgpu checkpoint on flex differs by {r}");
    let back_dir = dir.join("back");
    resumed.save_checkpoint(&back_dir).unwrap();
    let back = Trainer::load_checkpoint(&back_dir, &wgpu).unwrap();
    let b = gap(&logits(&back, &wgpu), &g1);
    assert!(b < 1e-3, "flex checkpoint on wgpu differs by {b}");

    // The exported description evaluates in fixed point as the float model.
    let net = on_gpu.export().unwrap();
    let acc_fixed = delphi_train::evaluate::fixed_accuracy(&net, &d.valid).unwrap();
    let acc_float = on_gpu.accuracy(&d.valid);
    assert!((acc_fixed - acc_float).abs() < 0.02, "fixed {acc_fixed} float {acc_float}");
    assert!(acc_float > 0.5, "25 steps reach {acc_float}");
    std::fs::remove_dir_all(&dir).ok();
}
