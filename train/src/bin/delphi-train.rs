//! `delphi-train`: trains a network with ReLU and/or quadratic activations
//! and exports the description the protocol engine runs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use delphi_train::cli::DataArgs;
use delphi_train::config::{Distill, OptimizerKind, Schedule, Swap, TrainConfig};
use delphi_train::device::DeviceChoice;
use delphi_train::evaluate::fixed_accuracy;
use delphi_train::train::Trainer;

#[derive(Parser)]
#[command(
    name = "delphi-train",
    version,
    about = "Train networks for private inference (ReLU or quadratic activations) and export them",
    long_about = "Trains a built-in architecture, a network description or an ONNX model on \
                  Fashion-MNIST, CIFAR-10, CIFAR-100 or your own images (a folder of class \
                  folders, or NumPy arrays) with Burn, \
                  evaluates it in floating point and in the protocol's fixed point, and writes a run \
                  folder with metrics.json and model.json (loadable by `delphi verify`/`serve`).",
    after_help = "Examples:\n  \
                  delphi-train train --dataset fashion-mnist --arch small-cnn --epochs 5 --out runs/relu\n  \
                  delphi-train train --arch small-cnn --placement RQR --init runs/relu/model.json --out runs/rqr\n  \
                  delphi-train train --dataset /tmp/fashion-png:3x32x32 --arch minionn --out runs/png-rgb\n  \
                  delphi-train bench --archs small-cnn --steps 10"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Opt {
    Sgd,
    Adam,
}

#[derive(Clone, Copy, ValueEnum)]
enum Sched {
    Cosine,
    Constant,
    Step,
}

#[derive(Subcommand)]
enum Command {
    /// Trains one network and writes metrics.json and model.json to --out.
    Train(Box<TrainArgs>),
    /// Measures training and inference images/s on the trainer's own path
    /// (batch assembly, forward, backward, update), optionally beside a
    /// reference measured on the same machine.
    #[command(
        long_about = "Measures training and inference images/s of built-in architectures on \
                      the trainer's own path (batch assembly, forward, backward, optimizer step; \
                      inference as the accuracy pass runs it), after one untimed warm-up.\n\n\
                      With --compare FILE, prints each figure beside a reference measured on the \
                      same machine and records the ratios: train/scripts/compare-keras.sh runs \
                      Keras/TensorFlow CPU (train/scripts/keras_bench.py) and then this."
    )]
    Bench {
        /// Where to write the figures (default <results>/bench/train.json;
        /// <results> is $DELPHI_RESULTS, else results/ of the checkout the
        /// binary was built in, else ./results).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Architectures (built-in names), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "small-cnn,minionn,resnet32")]
        archs: Vec<String>,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Timed steps per architecture (after one warm-up step).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Timed passes per architecture; the fastest is reported (shared
        /// machines vary from one run to the next).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Compute device.
        #[arg(long, default_value = "cpu", value_parser = delphi_train::device::parse_available)]
        device: DeviceChoice,
        /// Folder with Fashion-MNIST's files (default: $DELPHI_DATA, then
        /// Debian's); random images when absent.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A reference's figures from the same machine
        /// (train/scripts/keras_bench.py's JSON): adds the ratios.
        #[arg(long)]
        compare: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Architecture: small-cnn, small-cnn-max, minionn, resnet32, resnet14, resnet26 or resnet38 (default: per
    /// dataset), or a path to a network description (.json) or an ONNX model
    /// (.onnx). A file with weights is the starting point (fine-tuning); one
    /// without is initialised from --seed.
    #[arg(long, help_heading = "Network")]
    arch: Option<String>,
    /// Start from this description's weights (e.g. a trained all-ReLU model).
    #[arg(long, help_heading = "Network")]
    init: Option<PathBuf>,
    /// Activation per layer: `RQR` or `relu,quad,relu` (default: all ReLU).
    #[arg(long, visible_alias = "activations", help_heading = "Network")]
    placement: Option<delphi_net::Placement>,
    #[command(flatten)]
    data: DataArgs,
    /// Passes over the training set.
    #[arg(long, default_value_t = 5, help_heading = "Training")]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64, help_heading = "Training")]
    batch_size: usize,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "sgd", help_heading = "Training")]
    optimizer: Opt,
    /// Peak learning rate (default: 0.05 for SGD, 0.001 for Adam).
    #[arg(long, allow_negative_numbers = true, value_parser = positive, help_heading = "Training")]
    lr: Option<f64>,
    /// SGD momentum, in [0, 1).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true, value_parser = fraction, help_heading = "Training")]
    momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true, value_parser = non_negative, help_heading = "Training")]
    weight_decay: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cosine", help_heading = "Training")]
    schedule: Sched,
    /// Clip each parameter's gradient to this L2 norm (default: 1 when the
    /// network has quadratic layers, which diverge now and then without it;
    /// none otherwise).
    #[arg(long, help_heading = "Training")]
    grad_clip: Option<f32>,
    /// Label smoothing (0: off).
    #[arg(long, default_value_t = 0.0, help_heading = "Training")]
    label_smoothing: f32,
    /// Distil from this teacher description (with weights).
    #[arg(long, help_heading = "Training")]
    teacher: Option<PathBuf>,
    /// Weight of the distillation term.
    #[arg(long, default_value_t = 0.5, help_heading = "Training")]
    distill_weight: f32,
    /// Distillation temperature.
    #[arg(long, default_value_t = 4.0, help_heading = "Training")]
    temperature: f32,
    /// Swap ReLU → quadratic gradually between these fractions of the run
    /// (e.g. `0.1,0.6`); default: quadratic from the start.
    #[arg(long, value_parser = parse_swap, help_heading = "Training")]
    swap: Option<Swap>,
    /// Seed of everything random.
    #[arg(long, default_value_t = 1, help_heading = "Training")]
    seed: u64,
    /// Compute device: cpu (Burn's flex backend), wgpu, cuda or cuda:N (the
    /// GPU ones need the binary built with the feature of that name).
    #[arg(long, default_value = "cpu", value_parser = delphi_train::device::parse_available, help_heading = "Compute")]
    device: DeviceChoice,
    /// Run folder: metrics.json, model.json, checkpoint/.
    #[arg(long, help_heading = "Output")]
    out: PathBuf,
    /// Also write a checkpoint every N steps inside an epoch (one is always
    /// written at each epoch's end; 0: only there).
    #[arg(long, default_value_t = 500, help_heading = "Output")]
    checkpoint_every: usize,
    /// Start over even if --out holds a checkpoint (default: resume).
    #[arg(long, help_heading = "Output")]
    restart: bool,
    /// No progress bars.
    #[arg(long, help_heading = "Output")]
    quiet: bool,
}

fn number(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() {
        return Err(format!("{s} is not finite"));
    }
    Ok(v)
}

fn positive(s: &str) -> std::result::Result<f64, String> {
    let v = number(s)?;
    if v <= 0.0 {
        return Err(format!("must be positive, not {v}"));
    }
    Ok(v)
}

fn non_negative(s: &str) -> std::result::Result<f64, String> {
    let v = number(s)?;
    if v < 0.0 {
        return Err(format!("must be at least 0, not {v}"));
    }
    Ok(v)
}

fn fraction(s: &str) -> std::result::Result<f64, String> {
    let v = number(s)?;
    if !(0.0..1.0).contains(&v) {
        return Err(format!("must be in [0, 1), not {v}"));
    }
    Ok(v)
}

/// Checks that the files `--init` and `--teacher` name load, naming the flag
/// when one does not.
fn check_inputs(a: &TrainArgs) -> Result<()> {
    for (flag, path) in [("--init", &a.init), ("--teacher", &a.teacher)] {
        if let Some(p) = path {
            delphi_onnx::load_network(p).with_context(|| format!("{flag} {}", p.display()))?;
        }
    }
    Ok(())
}

fn parse_swap(s: &str) -> std::result::Result<Swap, String> {
    let (a, b) =
        s.split_once(',').ok_or_else(|| "expected START,END (fractions of the run)".to_string())?;
    let p = |x: &str| x.trim().parse::<f32>().map_err(|e| format!("{x:?}: {e}"));
    Ok(Swap { start: p(a)?, end: p(b)? })
}

fn config(a: &TrainArgs) -> TrainConfig {
    let mut c = TrainConfig::new(a.data.dataset.clone());
    if let Some(arch) = &a.arch {
        c.arch = arch.clone();
    }
    c.data_dir = a.data.data_dir.clone();
    c.init = a.init.clone();
    c.placement = a.placement.clone();
    c.epochs = a.epochs;
    c.batch_size = a.batch_size;
    c.optimizer = match a.optimizer {
        Opt::Sgd => OptimizerKind::Sgd,
        Opt::Adam => OptimizerKind::Adam,
    };
    c.lr = a.lr.unwrap_or(match c.optimizer {
        OptimizerKind::Sgd => 0.05,
        OptimizerKind::Adam => 1e-3,
    });
    c.momentum = a.momentum;
    c.weight_decay = a.weight_decay;
    c.schedule = match a.schedule {
        Sched::Cosine => Schedule::Cosine,
        Sched::Constant => Schedule::Constant,
        Sched::Step => Schedule::Step { every: (a.epochs / 3).max(1), gamma: 0.1 },
    };
    let has_quad = a.placement.as_ref().is_some_and(|p| p.quad_count() > 0);
    c.grad_clip = a.grad_clip.or(has_quad.then_some(1.0));
    c.label_smoothing = a.label_smoothing;
    c.distill = a.teacher.as_ref().map(|t| Distill {
        teacher: t.clone(),
        weight: a.distill_weight,
        temperature: a.temperature,
    });
    c.swap = a.swap;
    c.seed = a.seed;
    c.train_limit = a.data.train_limit;
    c.valid_size = a.data.valid_size;
    c.test_limit = a.data.test_limit;
    c
}

fn train(a: &TrainArgs) -> Result<()> {
    let device = a.device.device()?;
    let ckpt = a.out.join("checkpoint");
    check_inputs(a)?;
    let mut tr = if !a.restart && Trainer::has_checkpoint(&ckpt) {
        let tr = Trainer::load_checkpoint(&ckpt, &device)
            .with_context(|| format!("resuming from {}", ckpt.display()))?;
        let diff = delphi_train::config::config_changes(&tr.config, &config(a));
        if !diff.is_empty() {
            bail!(
                "{} holds a run with another configuration ({}); pass --restart to start over, \
                 or another --out",
                a.out.display(),
                diff.join("; ")
            );
        }
        if tr.finished() {
            eprintln!(
                "{} holds a finished run (all {} epoch(s)): evaluating it again (--restart trains anew)",
                a.out.display(),
                tr.config.epochs
            );
        } else {
            eprintln!(
                "resuming {} at epoch {}, step {}",
                a.out.display(),
                tr.epoch + 1,
                tr.step_in_epoch
            );
        }
        tr
    } else {
        Trainer::new(config(a), &device)?
    };
    for n in &tr.notes {
        eprintln!("note: {n}");
    }
    let c = tr.config.clone();
    let data = c.load_data()?;
    eprintln!(
        "{} on {}: {} training, {} validation, {} test images; activations {}",
        c.arch,
        c.dataset.name(),
        data.train.len(),
        data.valid.len(),
        data.test.len(),
        c.placement.as_ref().map_or("all ReLU".to_string(), |p| p.to_string())
    );
    let start = Instant::now();
    let per_epoch = tr.steps_per_epoch(&data.train);
    while !tr.finished() {
        // A checkpoint at every epoch's end and every --checkpoint-every
        // steps inside it (chunks never straddle an epoch's end).
        let chunk = tr.steps_to_checkpoint(per_epoch, a.checkpoint_every);
        tr.train_steps(&data, chunk, a.quiet)?;
        tr.save_checkpoint(&ckpt)?;
        if tr.step_in_epoch == 0 {
            if let Some(m) = tr.history.last() {
                eprintln!(
                    "epoch {}/{}: loss {:.4}, train {:.2}%, valid {:.2}%, {:.0} images/s",
                    m.epoch,
                    c.epochs,
                    m.loss,
                    100.0 * m.train_accuracy,
                    100.0 * m.valid_accuracy,
                    m.images_per_s
                );
            }
        }
    }
    let float_acc = tr.accuracy(&data.test);
    let mut net = tr.export()?;
    delphi_train::evaluate::record_ranges(
        &mut net,
        &data.train,
        delphi_train::evaluate::RANGE_IMAGES,
    )?;
    eprintln!("evaluating {} test images in fixed point", data.test.len());
    let t = Instant::now();
    let fixed_acc = fixed_accuracy(&net, &data.test)?;
    let fixed_rate = data.test.len() as f64 / t.elapsed().as_secs_f64().max(1e-9);
    eprintln!("fixed point: {fixed_rate:.0} images/s");
    net.metadata.accuracy_float = Some(float_acc);
    net.metadata.accuracy_fixed = Some(fixed_acc);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let model = a.out.join("model.json");
    net.save(&model, delphi_net::WeightStorage::Inline)
        .with_context(|| format!("writing {}", model.display()))?;
    let metrics = serde_json::json!({
        "dataset": c.dataset.name(),
        "arch": c.arch,
        "placement": delphi_net::Placement::of(&net),
        "test_accuracy_float": float_acc,
        "test_accuracy_fixed": fixed_acc,
        "test_images": data.test.len(),
        "fixed_point_images_per_s": fixed_rate,
        "epochs": c.epochs,
        "seconds": tr.history.iter().map(|m| m.seconds).sum::<f64>(),
        "wall_seconds_this_process": start.elapsed().as_secs_f64(),
        "history": tr.history,
        "config": c,
        "rerun": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let mpath = a.out.join("metrics.json");
    std::fs::write(&mpath, serde_json::to_string_pretty(&metrics)? + "\n")
        .with_context(|| format!("writing {}", mpath.display()))?;
    println!(
        "test accuracy: float {:.2}%, fixed point {:.2}%  ({} and {} written)",
        100.0 * float_acc,
        100.0 * fixed_acc,
        model.display(),
        mpath.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    delphi_train::tune_allocator();
    let cli = Cli::parse();
    if delphi_net::paths::check_args_only() {
        return Ok(());
    }
    match cli.command {
        Command::Train(a) => train(&a),
        Command::Bench { out, archs, batch_size, steps, rounds, device, data_dir, compare } => {
            if batch_size == 0 || steps == 0 || rounds == 0 {
                bail!("--batch-size, --steps and --rounds must be at least 1");
            }
            let out = out.unwrap_or_else(|| delphi_net::paths::results_path("bench/train.json"));
            // Read the reference first: a bad file fails before minutes of timing.
            let reference = match &compare {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    let r: delphi_train::bench::Reference = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a reference's figures", p.display()))?;
                    let names: Vec<&str> = archs.iter().map(String::as_str).collect();
                    if !r.covers_any(&names) {
                        bail!(
                            "{} has figures for none of {} (it has {})",
                            p.display(),
                            archs.join(", "),
                            r.archs.iter().map(|a| a.arch.as_str()).collect::<Vec<_>>().join(", ")
                        );
                    }
                    Some(r)
                }
                None => None,
            };
            let mut report = delphi_train::bench::train_bench(
                &archs,
                batch_size,
                steps,
                rounds,
                device,
                data_dir.as_deref(),
            )?;
            if let Some(r) = reference {
                report.compare(r)?;
            }
            if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            print!("{}", report.table());
            println!("written to {}", out.display());
            Ok(())
        }
    }
}
