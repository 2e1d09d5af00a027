//! Training throughput: images/s of a full training step (forward, backward,
//! SGD update) for `resnet32` and `minionn` on 32×32×3 inputs.
//!
//! `delphi-train bench --out results/bench/train.json` (synthetic images:
//! throughput does not depend on the pixels).

use std::time::Instant;

use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;

use delphi_net::builtin::build;

use crate::device::DeviceChoice;
use crate::model::{values, Net};
use crate::train::Result;

/// One architecture's figures.
#[derive(Debug, Serialize)]
pub struct ArchFigures {
    /// Architecture.
    pub arch: String,
    /// Images per second of training steps.
    pub train_images_per_s: f64,
    /// Images per second of inference (no autodiff).
    pub infer_images_per_s: f64,
}

/// The benchmark report.
#[derive(Debug, Serialize)]
pub struct TrainBench {
    /// Backend.
    pub device: String,
    /// Images per step.
    pub batch_size: usize,
    /// Timed steps.
    pub steps: usize,
    /// Logical cores.
    pub cores: usize,
    /// Per architecture.
    pub archs: Vec<ArchFigures>,
    /// How to rerun.
    pub rerun: String,
}

/// Times `steps` training steps of each architecture.
pub fn train_bench(batch_size: usize, steps: usize, choice: DeviceChoice) -> Result<TrainBench> {
    let base = choice
        .device()
        .map_err(|e| crate::train::TrainError::Config(e.to_string()))?;
    let device = base.clone().autodiff();
    let mut archs = Vec::new();
    for arch in ["resnet32", "minionn"] {
        let net = build(arch, 10, 1)?;
        let mut model = Net::from_description(&net, false, &device)?;
        let mut optim = SgdConfig::new().init();
        let n = batch_size;
        let px: Vec<f32> = (0..n * 3072)
            .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
            .collect();
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
        let x = Tensor::<4>::from_data(TensorData::new(px.clone(), [n, 3, 32, 32]), &device);
        let y = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(labels, [n]), &device);
        let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(&device);
        let mut elapsed = 0.0;
        for s in 0..=steps {
            let t = Instant::now();
            let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(0.01, model, grads);
            // Reading the loss waits for the step to finish.
            let _ = values(loss);
            if s > 0 {
                elapsed += t.elapsed().as_secs_f64();
            }
        }
        let inf = burn::module::Module::valid(&model);
        let xi = Tensor::<4>::from_data(TensorData::new(px, [n, 3, 32, 32]), &base);
        let t = Instant::now();
        for _ in 0..steps.max(1) {
            let _ = values(inf.forward(xi.clone()));
        }
        let ielapsed = t.elapsed().as_secs_f64();
        archs.push(ArchFigures {
            arch: arch.into(),
            train_images_per_s: (steps * n) as f64 / elapsed.max(1e-9),
            infer_images_per_s: (steps.max(1) * n) as f64 / ielapsed.max(1e-9),
        });
    }
    Ok(TrainBench {
        device: choice.to_string(),
        batch_size,
        steps,
        cores: std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1),
        archs,
        rerun: format!(
            "cargo run --release -p delphi-train -- bench --batch-size {batch_size} --steps {steps} --device {choice}"
        ),
    })
}
