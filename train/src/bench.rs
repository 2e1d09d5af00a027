//! Training and inference throughput, timed on the trainer's own path.
//!
//! `delphi-train bench --out results/bench/train.json` times
//! [`Trainer::train_steps`] — batch assembly, forward, backward, optimizer
//! step, the per-step loss and accuracy read-back, exactly what a training
//! run does — and [`Trainer::accuracy`] (batches built from the images,
//! forward in inference mode, arg-max), after one untimed warm-up of each. Networks
//! on 28×28×1 inputs train on Fashion-MNIST when its files are found, else on
//! random images (throughput does not depend on the pixels); 32×32×3
//! networks on random images.
//!
//! With `--compare FILE` (the figures `train/scripts/keras_bench.py` writes on
//! the same machine) the report gains each ratio to that reference.

use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::{self, Dataset, DatasetKind, Split};
use crate::device::DeviceChoice;
use crate::error::{Result, TrainError};
use crate::train::Trainer;

/// One architecture's figures.
#[derive(Debug, Serialize, Deserialize)]
pub struct ArchFigures {
    /// Architecture.
    pub arch: String,
    /// Where the images came from (`fashion-mnist` or `random`).
    #[serde(default)]
    pub data: String,
    /// Images per second of training steps.
    pub train_images_per_s: f64,
    /// Images per second of inference (no autodiff).
    pub infer_images_per_s: f64,
    /// Training images/s over the reference's (with `--compare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_ratio: Option<f64>,
    /// Inference images/s over the reference's (with `--compare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_ratio: Option<f64>,
}

/// A reference measured on the same machine (`keras_bench.py`'s output).
#[derive(Debug, Serialize, Deserialize)]
pub struct Reference {
    /// Framework and version.
    pub framework: String,
    /// CPU model the reference ran on.
    #[serde(default)]
    pub cpu: String,
    /// Per architecture.
    pub archs: Vec<ArchFigures>,
}

impl Reference {
    /// Whether the reference has figures for any of `archs`.
    pub fn covers_any(&self, archs: &[&str]) -> bool {
        self.archs.iter().any(|r| archs.contains(&r.arch.as_str()))
    }
}

/// The benchmark report.
#[derive(Debug, Serialize)]
pub struct TrainBench {
    /// Backend.
    pub device: String,
    /// The device's name as the backend reports it (CPU model for `cpu`).
    pub device_name: String,
    /// Images per step.
    pub batch_size: usize,
    /// Timed steps per round.
    pub steps: usize,
    /// Timed rounds (the fastest is reported).
    pub rounds: usize,
    /// Logical cores.
    pub cores: usize,
    /// Per architecture.
    pub archs: Vec<ArchFigures>,
    /// The reference compared against, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// How to rerun.
    pub rerun: String,
}

fn random_split(kind: DatasetKind, n: usize) -> Split {
    let len: usize = kind.shape().iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let classes = kind.classes() as u8;
    Split {
        kind,
        pixels: (0..n * len).map(|_| rng.gen()).collect(),
        labels: (0..n).map(|_| rng.gen_range(0..classes)).collect(),
    }
}

/// Images for `kind`: Fashion-MNIST's files when found (a `data_dir` given
/// explicitly must hold them), else random.
fn bench_data(
    kind: DatasetKind,
    n: usize,
    data_dir: Option<&Path>,
) -> Result<(Dataset, &'static str)> {
    if kind == DatasetKind::FashionMnist {
        match data::load(kind.clone(), data_dir, 0, 1) {
            Ok(mut d) if d.train.len() >= n => {
                d.train = d.train.take(n);
                return Ok((d, "fashion-mnist"));
            }
            Err(e) if data_dir.is_some() => return Err(e.into()),
            _ => {}
        }
    }
    let train = random_split(kind.clone(), n);
    let empty = random_split(kind, 0);
    Ok((Dataset { train, valid: empty.clone(), test: empty }, "random"))
}

/// Times `steps` training steps and `steps` batches of inference of each
/// architecture (built-in names), each after one untimed warm-up, `rounds`
/// times, keeping the fastest.
pub fn train_bench(
    archs: &[String],
    batch_size: usize,
    steps: usize,
    rounds: usize,
    choice: DeviceChoice,
    data_dir: Option<&Path>,
) -> Result<TrainBench> {
    let device: Device = choice.device().map_err(|e| TrainError::Config(e.to_string()))?;
    // Unknown names are refused before minutes of timing.
    if let Some(a) =
        archs.iter().find(|a| !delphi_net::builtin::ARCHITECTURES.contains(&a.as_str()))
    {
        return Err(TrainError::Config(format!(
            "unknown architecture {a:?} (known: {})",
            delphi_net::builtin::ARCHITECTURES.join(", ")
        )));
    }
    let mut rows = Vec::new();
    for arch in archs {
        let net = delphi_net::builtin::build(arch, 10, 1)?;
        let kind =
            if net.input.channels == 1 { DatasetKind::FashionMnist } else { DatasetKind::Cifar10 };
        // Enough images that warm-up and timed steps stay inside one epoch.
        let rounds = rounds.max(1);
        let n = batch_size * (rounds * steps + 2);
        let (data, source) = bench_data(kind.clone(), n, data_dir)?;
        let mut config = TrainConfig::new(kind);
        config.arch = arch.clone();
        config.batch_size = batch_size;
        config.epochs = 1;
        config.valid_size = 0;
        config.validate_epochs = false;
        let mut tr = Trainer::new(config, &device)?;
        tr.train_steps(&data, 1, true)?;
        let (mut train_s, mut infer_s) = (f64::INFINITY, f64::INFINITY);
        let images = data.train.clone().take(batch_size * steps.max(1));
        let warm = images.clone().take(batch_size);
        tr.accuracy(&warm);
        // The fastest of `rounds` passes (shared machines vary run to run).
        for _ in 0..rounds {
            let t = Instant::now();
            tr.train_steps(&data, steps, true)?;
            train_s = train_s.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            tr.accuracy(&images);
            infer_s = infer_s.min(t.elapsed().as_secs_f64());
        }
        rows.push(ArchFigures {
            arch: arch.clone(),
            data: source.into(),
            train_images_per_s: (steps * batch_size) as f64 / train_s.max(1e-9),
            infer_images_per_s: images.len() as f64 / infer_s.max(1e-9),
            train_ratio: None,
            infer_ratio: None,
        });
    }
    Ok(TrainBench {
        device: choice.to_string(),
        device_name: match choice {
            DeviceChoice::Cpu => delphi_crypto::bench::cpu_model(),
            _ => format!("{device:?}"),
        },
        batch_size,
        steps,
        rounds: rounds.max(1),
        cores: std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1),
        archs: rows,
        reference: None,
        rerun: std::env::args().collect::<Vec<_>>().join(" "),
    })
}

impl TrainBench {
    /// Adds the ratios to a reference measured on the same machine; an
    /// architecture the reference lacks keeps no ratio (the table shows
    /// "-"), and a reference sharing none of them is refused.
    pub fn compare(&mut self, reference: Reference) -> Result<()> {
        let names: Vec<&str> = self.archs.iter().map(|r| r.arch.as_str()).collect();
        if !reference.covers_any(&names) {
            return Err(TrainError::Config(format!(
                "the reference ({}) has none of the architectures measured",
                reference.framework
            )));
        }
        for row in &mut self.archs {
            if let Some(r) = reference.archs.iter().find(|r| r.arch == row.arch) {
                row.train_ratio = Some(row.train_images_per_s / r.train_images_per_s);
                row.infer_ratio = Some(row.infer_images_per_s / r.infer_images_per_s);
            }
        }
        self.reference = Some(reference);
        Ok(())
    }

    /// A table for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<10} {:>12} {:>12} {:>12} {:>12}\n",
            "arch", "train img/s", "ref", "infer img/s", "ref"
        );
        for row in &self.archs {
            let r =
                self.reference.as_ref().and_then(|r| r.archs.iter().find(|r| r.arch == row.arch));
            let cell = |ours: f64, theirs: Option<f64>| match theirs {
                Some(t) => format!("{:>12.0} {:>6.0} ({:.2}x)", ours, t, ours / t),
                None => format!("{ours:>12.0} {:>12}", "-"),
            };
            s += &format!(
                "{:<10} {} {}\n",
                row.arch,
                cell(row.train_images_per_s, r.map(|r| r.train_images_per_s)),
                cell(row.infer_images_per_s, r.map(|r| r.infer_images_per_s))
            );
        }
        if let Some(r) = &self.reference {
            s += &format!("reference: {} on {}\n", r.framework, r.cpu);
        }
        s
    }
}
