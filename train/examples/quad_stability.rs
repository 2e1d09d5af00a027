//! How an all-quadratic network trained from its all-ReLU base behaves,
//! interval by interval: the recipe a planner member uses (gradual swap,
//! distillation from the base, per-parameter gradient clipping 0.5, cosine
//! schedule; momentum 0.9 and clipping 0.5 unless given), with the accuracy on 2,000 validation images
//! printed every `every` steps
//! twice — with the batch-norm running statistics as training left them,
//! and after recalibrating them on `RECAL_BATCHES` training batches (the
//! weights unchanged) — and the largest |a| of the quadratic coefficients.
//!
//! `cargo run --release -p delphi-train --example quad_stability -- \
//!    BASE.json LR SEED [STEPS] [EVERY] [SPAN] [TRAIN_LIMIT] [MOMENTUM] [CLIP]`
//!
//! BASE.json: a trained all-ReLU description with its batch norms (e.g. a
//! planner run's `base/model.json`); given a delphi-train checkpoint folder
//! instead, writes such a description beside it and stops. Prints one line
//! per interval.

use std::path::PathBuf;

use delphi_net::{Network, Placement};
use delphi_train::config::{Distill, Swap, TrainConfig};
use delphi_train::data::DatasetKind;
use delphi_train::model::values;
use delphi_train::train::Trainer;

/// Training batches the running statistics are recalibrated on.
const RECAL_BATCHES: usize = 16;

/// Argument `i`, or `default` when it is not given; one given that does
/// not parse is an error (a typo must not run with the default).
fn arg<T: std::str::FromStr>(v: &[String], i: usize, default: T) -> Result<T, String> {
    match v.get(i) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| format!("argument {i}: {s:?} is not a valid value")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    delphi_train::tune_allocator();
    let v: Vec<String> = std::env::args().skip(1).collect();
    let Some(base) = v.first().map(PathBuf::from) else {
        eprintln!(
            "usage: quad_stability BASE.json LR SEED [STEPS] [EVERY] [SPAN] [TRAIN_LIMIT] \
             [MOMENTUM] [CLIP]"
        );
        std::process::exit(2);
    };
    let lr: f64 = arg(&v, 1, 0.005)?;
    let seed: u64 = arg(&v, 2, 1)?;
    let steps: usize = arg(&v, 3, 314)?;
    let every: usize = arg(&v, 4, 40)?;
    let span: f32 = arg(&v, 5, 0.46)?;
    let limit: usize = arg(&v, 6, 10_000)?;
    let momentum: f64 = arg(&v, 7, 0.9)?;
    let clip: f32 = arg(&v, 8, 0.5)?;
    if base.is_dir() {
        // A delphi-train checkpoint: its model with the batch norms kept
        // (a run's model.json has them folded, and a network without batch
        // norm is not what the planner's members start from).
        let unfolded = base.with_extension("unfolded.json");
        let tr = Trainer::load_checkpoint(&base, &burn::tensor::Device::flex())?;
        tr.export_unfolded()?.save(&unfolded, delphi_net::WeightStorage::Inline)?;
        eprintln!("wrote {}", unfolded.display());
        return Ok(());
    }
    let layers = Placement::of(&Network::load(&base)?).len();
    let mut t = TrainConfig::new(DatasetKind::FashionMnist);
    t.arch = base.display().to_string();
    t.init = Some(base.clone());
    t.train_limit = Some(limit);
    t.valid_size = 5000;
    t.steps = Some(steps);
    t.epochs = steps.div_ceil((limit / t.batch_size).max(1)).max(1);
    t.placement = Some(Placement::all_quad(layers));
    t.lr = lr;
    t.momentum = momentum;
    t.grad_clip = Some(clip);
    t.distill = Some(Distill { teacher: base.clone(), weight: 0.5, temperature: 4.0 });
    t.swap = (span > 0.0).then_some(Swap { start: 0.0, end: span });
    t.seed = seed;
    t.validate_epochs = false;
    let data = t.load_data()?;
    let valid = data.valid.clone().take(2000);
    let mut tr = Trainer::new(t, &burn::tensor::Device::flex())?;
    println!("step,valid,valid_recalibrated,max_abs_a");
    let mut done = 0;
    while done < steps {
        let n = tr.train_steps(&data, every.min(steps - done), true);
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                println!("{done},diverged: {e}");
                break;
            }
        };
        done += n.max(1);
        let acc = tr.accuracy(&valid);
        let max_a = tr
            .model
            .layers
            .iter()
            .filter_map(|l| l.act.as_ref())
            .flat_map(|q| values(q.a.val()))
            .fold(0f32, |m, a| m.max(a.abs()));
        // The recalibrated statistics stay (a clone of the model would share
        // them): the next interval's steps move them on as training does.
        tr.recalibrate_batch_norm(&data.train, RECAL_BATCHES)?;
        let recal = tr.accuracy(&valid);
        println!("{done},{acc:.4},{recal:.4},{max_a:.3}");
    }
    Ok(())
}
