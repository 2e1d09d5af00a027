//! What `--arch` names: a built-in architecture, a network description
//! (`.json`, with or without weights) or an ONNX model (`.onnx`).
//!
//! A network that carries weights is a provider's trained network: it is
//! the starting point (the planner's all-ReLU base, not retrained); one
//! without weights is initialised from the seed and trained. Either way it
//! must fit the dataset — same input shape, one output per class — or it is
//! refused with both shapes in the message. A trained network that records
//! no input normalisation (an ONNX file never does) is given the dataset's,
//! with a note saying so.

use std::path::Path;

use delphi_net::builtin::{build, initialise, ARCHITECTURES};
use delphi_net::Network;

use crate::data::DatasetKind;
use crate::error::{Result, TrainError};

/// A resolved `--arch`.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The network (weights included; batch norms as written).
    pub network: Network,
    /// Whether the weights came with it (a trained network).
    pub trained: bool,
    /// What a user should know (normalisation assumed, import notes).
    pub notes: Vec<String>,
}

/// Whether `arch` names a file rather than a built-in architecture.
pub fn is_path(arch: &str) -> bool {
    !ARCHITECTURES.contains(&arch)
}

/// Resolves `arch` for `dataset` (`seed` initialises weights a network
/// does not have).
pub fn resolve(arch: &str, dataset: &DatasetKind, seed: u64) -> Result<Resolved> {
    let mut notes = Vec::new();
    let (mut network, trained) = if !is_path(arch) {
        (build(arch, dataset.classes(), seed)?, false)
    } else {
        let path = Path::new(arch);
        if !path.is_file() {
            return Err(TrainError::Config(format!(
                "unknown architecture {arch:?}: not a built-in ({}) and no such file (a network \
                 description .json or an ONNX model .onnx)",
                ARCHITECTURES.join(", ")
            )));
        }
        if delphi_onnx::is_onnx(path) {
            let imported = delphi_onnx::import(
                path,
                &delphi_onnx::ImportOptions {
                    dataset: Some(dataset.name().into()),
                    ..Default::default()
                },
            )
            .map_err(|e| TrainError::Config(format!("{arch}: {e}")))?;
            notes.extend(
                imported
                    .notes
                    .into_iter()
                    .filter(|n| !n.contains("does not say how its input is normalised")),
            );
            (imported.network, true)
        } else {
            let (mut net, trained) = Network::load_architecture(path)?;
            if !trained {
                initialise(&mut net, seed)?;
                notes.push(format!(
                    "{arch} has no weights: initialised from seed {seed} and trained"
                ));
            }
            (net, trained)
        }
    };
    check_fits(&network, dataset, arch)?;
    if trained && network.metadata.input_normalization.is_none() {
        let n = dataset.default_normalization();
        notes.push(format!(
            "{arch} records no input normalisation; it is evaluated and trained on {} images \
             normalised with mean {:?} and std {:?} (pixels / 255). If it was trained on other \
             inputs, record them: delphi import --input-mean … --input-std …",
            dataset.name(),
            n.mean,
            n.std
        ));
        network.metadata.input_normalization = Some(n);
    }
    Ok(Resolved { network, trained, notes })
}

/// Checks that `net` takes the dataset's images and gives one output per
/// class; the error names both shapes.
pub fn check_fits(net: &Network, dataset: &DatasetKind, arch: &str) -> Result<()> {
    let [c, h, w] = dataset.shape();
    let out = net.output_shape().or_else(|_| {
        net.validate_architecture()?
            .last()
            .copied()
            .ok_or_else(|| delphi_net::NetError::Invalid("no layers".into()))
    })?;
    let classes = dataset.classes();
    let input_ok = (net.input.channels, net.input.height, net.input.width) == (c, h, w);
    let output_ok = out.len() == classes;
    if input_ok && output_ok {
        return Ok(());
    }
    let mut data = format!("{} has {c}×{h}×{w} images and {classes} classes", dataset.name());
    if let (DatasetKind::Disk(d), false) = (dataset, input_ok) {
        let (nc, nh, nw) = (net.input.channels, net.input.height, net.input.width);
        let fit = if nc == c { format!("{nh}x{nw}") } else { format!("{nc}x{nh}x{nw}") };
        data.push_str(&format!(
            " (fit the data to the network's input with --dataset {}:{fit})",
            d.path.display()
        ));
    }
    Err(TrainError::Mismatch {
        arch: arch.to_string(),
        network: format!("takes {} inputs and gives {} outputs", net.input, out.len()),
        dataset: data,
    })
}
