//! Evaluation of trained networks on a split: float accuracy (Burn, in
//! inference mode), the protocol's fixed-point accuracy, the activation
//! ranges an export records, and the ReLU input peaks that reduced-ReLU
//! windows are chosen from (the window rule itself is
//! [`delphi_net::window`]'s).

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use delphi_crypto::field::F;
use delphi_crypto::relu::spec::ReluBits;
use delphi_net::eval::argmax_iter;
use delphi_net::{FixedProgram, Network, Normalization};

use crate::batch::batch;
use crate::data::Split;
use crate::error::{Result, TrainError};
use crate::model::{values, Net};

/// The predicted class of each row of `classes` logits.
pub fn argmax_rows(v: &[f32], classes: usize) -> Vec<usize> {
    v.chunks(classes.max(1)).map(delphi_net::eval::argmax).collect()
}

/// Images measured for the activation ranges an export records.
pub const RANGE_IMAGES: usize = 256;

/// Records in `net` the largest |input| of each activation layer on the
/// first `images` images of `split` (normalised as the network expects),
/// so that the engine's range check ([`delphi_net::range`]) knows what the
/// data does, not only what random inputs do.
pub fn record_ranges(net: &mut Network, split: &Split, images: usize) -> Result<()> {
    let norm = net
        .metadata
        .input_normalization
        .clone()
        .unwrap_or_else(|| split.kind.default_normalization());
    let images: Vec<Vec<f32>> =
        (0..split.len().min(images)).map(|i| split.image(i, None, &norm)).collect();
    net.metadata.activation_ranges = delphi_net::eval::activation_ranges(net, &images)?;
    Ok(())
}

/// Images per inference batch: up to 256, fewer where a layer's output for
/// the batch would pass 16 MiB. Larger buffers than glibc's largest mmap
/// threshold (32 MiB) come from fresh mappings each time, so every batch
/// faulted its activations in again (MiniONN at 256 images: 67 MB per
/// layer, 12 % of inference time in page faults).
pub fn inference_batch(model: &Net) -> usize {
    let per_image = model.largest_output.max(1) * std::mem::size_of::<f32>();
    ((16 << 20) / per_image).clamp(16, 256)
}

/// Float accuracy of a model (in inference mode) on a split whose images
/// are normalised with `norm`.
pub fn float_accuracy(model: &Net, split: &Split, device: &Device, norm: &Normalization) -> f64 {
    let device = device.clone().without_autodiff();
    let classes = split.kind.classes();
    let mut correct = 0;
    let idx: Vec<usize> = (0..split.len()).collect();
    for chunk in idx.chunks(inference_batch(model)) {
        let (x, _) = batch(split, chunk, None, &device, norm);
        let x = Tensor::<4>::from_data(x.into_data(), &device);
        let pred = argmax_rows(&values(model.forward(x)), classes);
        correct += pred.iter().zip(chunk).filter(|(p, &i)| **p == split.labels[i] as usize).count();
    }
    correct as f64 / split.len().max(1) as f64
}

/// The images of a split, normalised as `net` records (else with the
/// dataset's normalisation) and encoded for its fixed-point program.
fn encoded(prog: &FixedProgram, net: &Network, split: &Split, n: usize) -> Result<Vec<Vec<F>>> {
    let norm = net
        .metadata
        .input_normalization
        .clone()
        .unwrap_or_else(|| split.kind.default_normalization());
    (0..split.len().min(n)).map(|i| Ok(prog.encode_input(&split.image(i, None, &norm))?)).collect()
}

/// Each ReLU node's largest |input| over the first `images` images of
/// `split` (fixed-point units; see [`delphi_net::window::relu_peaks`]).
pub fn relu_input_peaks(
    net: &Network,
    split: &Split,
    images: usize,
) -> Result<Vec<delphi_net::window::ReluPeak>> {
    let prog = FixedProgram::lower(net)?;
    let xs = encoded(&prog, net, split, images)?;
    Ok(delphi_net::window::relu_peaks(&prog, &xs)?)
}

/// Reduced-ReLU windows for every activation layer with ReLU channels:
/// each ReLU node's largest |input| over the first `images` images of
/// `split`, times `margin`, with the low bit at the ReLU's truncation
/// (exact inside the window; see [`delphi_net::window`]). `None` where the
/// full circuit is needed (a peak beyond 2^36).
pub fn relu_windows(
    net: &Network,
    split: &Split,
    images: usize,
    margin: f64,
) -> Result<Vec<(usize, Option<ReluBits>)>> {
    Ok(delphi_net::window::windows_from_peaks(&relu_input_peaks(net, split, images)?, margin))
}

/// Accuracy of the fixed-point program on a split, its images normalised
/// as the network records (else with the dataset's normalisation). Every
/// ReLU gives what the two-party protocol gives: the reference for the
/// full circuit (bit-exact with the protocol for all-ReLU networks), and
/// for a reduced ReLU its output on a random split of the input into two
/// shares (seeded per image), which is the protocol's result in
/// distribution: the accuracy a client will see. Uses every core.
pub fn fixed_accuracy(net: &Network, split: &Split) -> Result<f64> {
    let correct = fixed_correct(net, split)?;
    Ok(correct.iter().filter(|&&c| c).count() as f64 / correct.len().max(1) as f64)
}

/// Per image of `split`, whether the fixed-point program classifies it
/// correctly (as [`fixed_accuracy`] counts it): what a paired comparison of
/// two plans on the same images needs.
pub fn fixed_correct(net: &Network, split: &Split) -> Result<Vec<bool>> {
    let prog = FixedProgram::lower(net)?;
    let norm = net
        .metadata
        .input_normalization
        .clone()
        .unwrap_or_else(|| split.kind.default_normalization());
    let norm = &norm;
    let n = split.len();
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    let per = n.div_ceil(threads.max(1)).max(1);
    let parts: Result<Vec<Vec<bool>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(per)
            .map(|start| {
                let prog = &prog;
                s.spawn(move || -> Result<Vec<bool>> {
                    let mut c = Vec::new();
                    let end = (start + per).min(n);
                    // Batches: the linear layers run over the batch.
                    let nb = prog.preferred_batch();
                    for from in (start..end).step_by(nb) {
                        let to = (from + nb).min(end);
                        let xs = (from..to)
                            .map(|i| prog.encode_input(&split.image(i, None, norm)))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                        let mut rng = ChaCha8Rng::seed_from_u64(from as u64);
                        let ys = prog.eval_batch_with(&xs, &mut |_, spec, v| {
                            if spec.bits.is_none() {
                                return spec.reference(v);
                            }
                            let a = F::random(&mut rng);
                            spec.protocol_output(a, v - a)
                        })?;
                        for (i, y) in (from..to).zip(ys) {
                            let pred = argmax_iter(y.iter().map(|v| v.to_signed()));
                            c.push(pred == split.labels[i] as usize);
                        }
                    }
                    Ok(c)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(TrainError::Worker("a fixed-point evaluation thread"))))
            .collect()
    });
    Ok(parts?.concat())
}
