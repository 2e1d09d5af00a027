//! The smallest reproduction of where training time goes: one layer's
//! forward (inference) and forward + backward (training, batch 64) on Burn's
//! flex backend, Burn's own operation beside the trainer's
//! (`delphi_train::fast`), for the layer shapes of small-cnn, MiniONN and
//! ResNet-32, in milliseconds per call (median of `reps`, default 10); where
//! Winograd's transform applies, also ours by the direct kernel alone.
//!
//! `cargo run --release -p delphi-train --example conv_speed [reps] [name filter]`

use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::{AvgPoolOptions, ConvOptions};
use burn::tensor::{Device, Distribution, Tensor};
use delphi_train::fast;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn row(name: &str, burn: (f64, f64), ours: (f64, f64), direct: Option<(f64, f64)>) {
    let d = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!(
        "{name:<28} {:>9.2} {:>9.2} {:>9} {:>11.2} {:>11.2} {:>11}",
        burn.0,
        ours.0,
        d(direct.map(|d| d.0)),
        burn.1,
        ours.1,
        d(direct.map(|d| d.1))
    );
}

fn main() {
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    // Only the rows whose name contains this (all without it).
    let only = std::env::args().nth(2).unwrap_or_default();
    let base = Device::flex();
    let ad = base.clone().autodiff();
    let n = 64;
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11}",
        "layer (batch 64, ms)",
        "fwd burn",
        "fwd ours",
        "fwd dir.",
        "train burn",
        "train ours",
        "train dir."
    );
    for (name, c, o, hw, k, s) in [
        ("conv 1->16 3x3 28x28", 1, 16, 28, 3, 1),
        ("conv 16->32 3x3 14x14", 16, 32, 14, 3, 1),
        ("conv 3->64 3x3 32x32", 3, 64, 32, 3, 1),
        ("conv 64->64 3x3 32x32", 64, 64, 32, 3, 1),
        ("conv 64->64 3x3 16x16", 64, 64, 16, 3, 1),
        ("conv 64->64 1x1 8x8", 64, 64, 8, 1, 1),
        ("conv 16->16 3x3 32x32", 16, 16, 32, 3, 1),
        ("conv 32->32 3x3 16x16", 32, 32, 16, 3, 1),
        ("conv 64->64 3x3 8x8", 64, 64, 8, 3, 1),
        ("conv 16->32 3x3 s2 32x32", 16, 32, 32, 3, 2),
    ] {
        if !name.contains(&only) {
            continue;
        }
        let conv = Conv2dConfig::new([c, o], [k, k])
            .with_stride([s, s])
            .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
            .init(&ad);
        let inf = conv.valid();
        let x = Tensor::<4>::random([n, c, hw, hw], Distribution::Default, &ad);
        let xb = Tensor::<4>::random([n, c, hw, hw], Distribution::Default, &base);
        let opts = ConvOptions::new([s, s], [k / 2, k / 2], [1, 1], 1);
        let (w, b) = (conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
        let (wi, bi) = (inf.weight.val(), inf.bias.as_ref().map(|b| b.val()));
        let burn = (
            time(reps, || {
                let _ = inf.forward(xb.clone()).into_data();
            }),
            time(reps, || {
                let _ = conv.forward(x.clone().require_grad()).sum().backward();
            }),
        );
        let ours = (
            time(reps, || {
                let _ = fast::conv(xb.clone(), wi.clone(), bi.clone(), opts.clone()).into_data();
            }),
            time(reps, || {
                let y = fast::conv(x.clone().require_grad(), w.clone(), b.clone(), opts.clone());
                let _ = y.sum().backward();
            }),
        );
        // Ours pinned to the direct kernel, on the 3×3 stride-1 layers
        // (where Winograd's transform may run instead).
        let direct = (k == 3 && s == 1).then(|| {
            let by = fast::Path::Direct;
            (
                time(reps, || {
                    let y = fast::conv_with(xb.clone(), wi.clone(), bi.clone(), opts.clone(), by);
                    let _ = y.into_data();
                }),
                time(reps, || {
                    let x = x.clone().require_grad();
                    let y = fast::conv_with(x, w.clone(), b.clone(), opts.clone(), by);
                    let _ = y.sum().backward();
                }),
            )
        });
        row(name, burn, ours, direct);
    }
    for (name, c, hw) in [("avgpool2 16ch 28x28", 16, 28), ("avgpool2 64ch 32x32", 64, 32)] {
        if !name.contains(&only) {
            continue;
        }
        let x = Tensor::<4>::random([n, c, hw, hw], Distribution::Default, &ad);
        let xb = Tensor::<4>::random([n, c, hw, hw], Distribution::Default, &base);
        let opts = AvgPoolOptions::new([2, 2]).with_stride([2, 2]);
        let burn = (
            time(reps, || {
                let _ = avg_pool2d(xb.clone(), opts.clone()).into_data();
            }),
            time(reps, || {
                let y = avg_pool2d(x.clone().require_grad(), opts.clone());
                let _ = y.sum().backward();
            }),
        );
        let ours = (
            time(reps, || {
                let _ = fast::avg_pool(xb.clone(), 2, 2).into_data();
            }),
            time(reps, || {
                let _ = fast::avg_pool(x.clone().require_grad(), 2, 2).sum().backward();
            }),
        );
        row(name, burn, ours, None);
    }
}
