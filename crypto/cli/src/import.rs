//! `delphi import` (an ONNX model into a network description) and
//! `delphi export` (a built-in architecture with random weights).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use delphi_net::builtin::{build, ARCHITECTURES, BENCH_QUAD};
use delphi_net::eval::{calibrate_batch_norm, random_inputs};
use delphi_net::{Activation, FixedProgram, Normalization, Op, Placement, WeightStorage};

#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Output path of the description (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Put the weights in this safetensors file instead of inline.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// The per-channel mean the model's input was normalised with
    /// (raw pixels / 255), e.g. 0.2860 or 0.4914,0.4822,0.4465.
    #[arg(long, value_delimiter = ',', requires = "input_std")]
    input_mean: Option<Vec<f32>>,
    /// The per-channel standard deviation of that normalisation.
    #[arg(long, value_delimiter = ',', requires = "input_mean")]
    input_std: Option<Vec<f32>>,
    /// The dataset it was trained on (recorded in the metadata).
    #[arg(long)]
    dataset: Option<String>,
    /// The description's name (default: the file's).
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// Architecture: small-cnn, small-cnn-max, minionn, resnet32, resnet14, resnet26 or resnet38.
    #[arg(long)]
    arch: String,
    /// Number of output classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Make the last N activation layers quadratic (the first keep ReLU).
    #[arg(long, conflicts_with = "placement")]
    quad_layers: Option<usize>,
    /// Activation placement: `relu,quad,...` or a string of R/Q, one per activation layer.
    #[arg(long)]
    placement: Option<String>,
    /// Seed for the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Random weights that stay in range on deep quadratic plans, as
    /// `delphi bench network` makes them: every quadratic layer computes
    /// 0.02·x² + 0.25·x and the batch-norm statistics are calibrated on
    /// random inputs for this placement (without it, the squares of a few
    /// random quadratic layers outgrow the field and the range check
    /// refuses the plan).
    #[arg(long)]
    bench_weights: bool,
    /// Put the weights in a safetensors file beside the description instead of inline.
    #[arg(long)]
    sidecar: bool,
    /// Output path of the description (JSON).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run_import(args: ImportArgs) -> Result<()> {
    let ImportArgs { model, out, weights, input_mean, input_std, dataset, name } = args;

    let normalization = match (input_mean, input_std) {
        (Some(mean), Some(std)) => Some(Normalization {
            mean,
            std,
            pixels: Some("raw input (pixels / 255 for images), CHW".into()),
        }),
        _ => None,
    };
    let imported =
        delphi_onnx::import(&model, &delphi_onnx::ImportOptions { name, normalization, dataset })
            .with_context(|| format!("importing {}", model.display()))?;
    let net = imported.network;
    match &weights {
        Some(w) => net.save_with_sidecar(&out, w),
        None => net.save(&out, WeightStorage::Inline),
    }
    .with_context(|| format!("writing {}", out.display()))?;
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    let shapes = net.validate()?;
    let (relus, quads) = FixedProgram::lower(&net)?.activation_counts();
    eprintln!(
                "wrote {}: {} layers, input {}, {} outputs, placement {} ({relus} ReLUs, {quads} quadratics)",
                out.display(),
                net.layers.len(),
                net.input,
                shapes.last().map_or(0, |s| s.len()),
                Placement::of(&net)
            );

    Ok(())
}

pub(crate) fn run_export(args: ExportArgs) -> Result<()> {
    let ExportArgs { arch, classes, quad_layers, placement, seed, bench_weights, sidecar, out } =
        args;

    if !ARCHITECTURES.contains(&arch.as_str()) {
        bail!("unknown architecture {arch:?} (known: {})", ARCHITECTURES.join(", "));
    }
    let mut net = build(&arch, classes, seed)?;
    let layers = net.activation_layers().len();
    if let Some(q) = quad_layers {
        Placement::last_quad(layers, q)?.apply(&mut net)?;
    }
    if let Some(p) = placement {
        p.parse::<Placement>()?.apply(&mut net)?;
    }
    if bench_weights {
        for layer in &mut net.layers {
            if let Op::Activation(Activation::Quad { .. }) = layer.op {
                layer.op = Op::Activation(BENCH_QUAD);
            }
        }
        let calib = random_inputs(net.input.len(), 2, 2);
        calibrate_batch_norm(&mut net, &calib)?;
    }
    let storage = if sidecar { WeightStorage::Sidecar } else { WeightStorage::Inline };
    net.save(&out, storage).with_context(|| format!("writing {}", out.display()))?;
    let (relus, quads) = FixedProgram::lower(&net)?.activation_counts();
    eprintln!(
        "wrote {} ({arch}, {classes} classes, placement {}, {relus} ReLUs, {quads} quadratics)",
        out.display(),
        Placement::of(&net)
    );

    Ok(())
}
