//! The float evaluator: the network as trained, in f32.

use crate::desc::{Activation, Network, Op};
use crate::error::Result;
use crate::linear::{sum_pool, LinearOp};

/// Runs the network on one input (CHW, `net.input.len()` values) and
/// returns the logits. Batch norm is applied as written (not folded).
pub fn eval_float(net: &Network, input: &[f32]) -> Result<Vec<f32>> {
    let shapes = net.validate()?;
    check_input(net, input)?;
    let mut outs: Vec<Vec<f32>> = Vec::with_capacity(net.layers.len());
    for i in 0..net.layers.len() {
        let y = eval_layer(net, &shapes, i, &outs, input);
        outs.push(y);
    }
    Ok(outs.pop().unwrap_or_default())
}

/// The largest |input| of each activation layer over `inputs` (as the
/// network takes them): what [`crate::desc::Metadata::activation_ranges`]
/// records.
pub fn activation_ranges(
    net: &Network,
    inputs: &[Vec<f32>],
) -> Result<Vec<crate::desc::ActivationRange>> {
    let shapes = net.validate()?;
    let acts = net.activation_layers();
    let mut peak = vec![0f64; acts.len()];
    for input in inputs {
        check_input(net, input)?;
        let mut outs: Vec<Vec<f32>> = Vec::with_capacity(net.layers.len());
        for i in 0..net.layers.len() {
            if let Some(k) = acts.iter().position(|&a| a == i) {
                let src = net.layers[i].source(i);
                let x: &[f32] = src.map_or(&input[..], |j| &outs[j][..]);
                peak[k] = x.iter().fold(peak[k], |m, v| m.max(v.abs() as f64));
            }
            let y = eval_layer(net, &shapes, i, &outs, input);
            outs.push(y);
        }
    }
    Ok(acts
        .into_iter()
        .zip(peak)
        .map(|(layer, max_abs)| crate::desc::ActivationRange { layer, max_abs })
        .collect())
}

fn check_input(net: &Network, input: &[f32]) -> Result<()> {
    if input.len() != net.input.len() {
        return Err(crate::error::NetError::Invalid(format!(
            "input has {} values, the network takes {}",
            input.len(),
            net.input.len()
        )));
    }
    Ok(())
}

/// Sets every batch norm's running statistics to the per-channel mean and
/// variance its input actually has on `inputs` (γ and β are kept), the way
/// a data-dependent initialisation does: a random network then keeps its
/// activations near unit scale at any depth, as a trained one would.
pub fn calibrate_batch_norm(net: &mut Network, inputs: &[Vec<f32>]) -> Result<()> {
    let shapes = net.validate()?;
    for x in inputs {
        check_input(net, x)?;
    }
    let mut outs: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(net.layers.len()); inputs.len()];
    for i in 0..net.layers.len() {
        if let Op::BatchNorm { .. } = net.layers[i].op {
            let src = net.layers[i].source(i);
            let (c, per) = (shapes[i].channels, shapes[i].height * shapes[i].width);
            let (mut sum, mut sq) = (vec![0f64; c], vec![0f64; c]);
            for (k, o) in outs.iter().enumerate() {
                let x = src.map(|j| &o[j][..]).unwrap_or(&inputs[k][..]);
                for (idx, v) in x.iter().enumerate() {
                    sum[idx / per] += *v as f64;
                    sq[idx / per] += (*v as f64) * (*v as f64);
                }
            }
            let cnt = (per * inputs.len()).max(1) as f64;
            if let Op::BatchNorm { mean, var, .. } = &mut net.layers[i].op {
                for ch in 0..c {
                    let m = sum[ch] / cnt;
                    mean[ch] = m as f32;
                    var[ch] = (sq[ch] / cnt - m * m).max(1e-4) as f32;
                }
            }
        }
        for (k, o) in outs.iter_mut().enumerate() {
            let y = eval_layer(net, &shapes, i, o, &inputs[k]);
            o.push(y);
        }
    }
    Ok(())
}

/// Evaluates layer `i` given the outputs of the layers before it.
fn eval_layer(
    net: &Network,
    shapes: &[crate::desc::Shape],
    i: usize,
    outs: &[Vec<f32>],
    input: &[f32],
) -> Vec<f32> {
    let layer = &net.layers[i];
    let src = layer.source(i);
    let (x, xs) = match src {
        Some(j) => (&outs[j][..], shapes[j]),
        None => (input, net.input),
    };
    match &layer.op {
        Op::Conv2d {
            out_channels, kernel, stride, padding, weight, bias_values, groups, ..
        } => {
            let pad = padding.amount(*kernel);
            let op = LinearOp::conv(xs, *out_channels, *kernel, *stride, pad);
            let kk = kernel * kernel;
            let w = crate::linear::expand_groups(weight, *out_channels, xs.channels, *groups, kk);
            linear_f32(&op, x, &w, bias_values)
        }
        Op::Dense { out_features, weight, bias_values, .. } => {
            linear_f32(&LinearOp::dense(xs.channels, *out_features), x, weight, bias_values)
        }
        Op::AvgPool { kernel, stride } => {
            let (v, _) = sum_pool(x, xs, *kernel, *stride, 0f32, |a, b| a + b);
            let inv = 1.0 / (kernel * kernel) as f32;
            v.into_iter().map(|s| s * inv).collect()
        }
        Op::MaxPool { kernel, stride, padding } => {
            let (windows, _) = crate::linear::pool_windows(xs, *kernel, *stride, *padding);
            windows
                .iter()
                .map(|w| w.iter().map(|&i| x[i]).fold(f32::NEG_INFINITY, f32::max))
                .collect()
        }
        Op::BatchNorm { eps, gamma, beta, mean, var } => {
            let per = xs.height * xs.width;
            x.iter()
                .enumerate()
                .map(|(k, v)| {
                    let c = k / per;
                    (v - mean[c]) / (var[c] + eps).sqrt() * gamma[c] + beta[c]
                })
                .collect()
        }
        Op::Residual { from } => x.iter().zip(&outs[*from]).map(|(a, b)| a + b).collect(),
        Op::Flatten => x.to_vec(),
        Op::Activation(Activation::Relu) => x.iter().map(|v| v.max(0.0)).collect(),
        Op::Activation(Activation::Quad { a, b, c }) => {
            x.iter().map(|v| a * v * v + b * v + c).collect()
        }
        Op::Activation(act @ Activation::Mixed { .. }) => {
            let per_channel = act.per_channel(xs.channels);
            let per = (xs.height * xs.width).max(1);
            x.iter()
                .enumerate()
                .map(|(k, &v)| match per_channel[k / per] {
                    None => v.max(0.0),
                    Some((a, b, c)) => a * v * v + b * v + c,
                })
                .collect()
        }
    }
}

fn linear_f32(op: &LinearOp, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    op.apply(x, w, |oc| b.get(oc).copied().unwrap_or(0.0), |acc, w, x| *acc += w * x, |acc| acc)
}

/// `n` reproducible random inputs of `len` values, uniform in [−1, 1)
/// (ChaCha20 from `seed`): for benchmarks, calibration and tests.
pub fn random_inputs(len: usize, n: usize, seed: u64) -> Vec<Vec<f32>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    (0..n).map(|_| (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()).collect()
}

/// Index of the largest logit (the first of equal ones; a NaN never wins;
/// 0 for an empty slice).
pub fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    argmax_iter(v.iter().copied())
}

/// [`argmax`] over any sequence: e.g. field elements read as signed values,
/// `argmax_iter(v.iter().map(|x| x.to_signed()))`.
pub fn argmax_iter<T: PartialOrd>(v: impl IntoIterator<Item = T>) -> usize {
    let mut best: Option<(usize, T)> = None;
    for (i, x) in v.into_iter().enumerate() {
        let better = match &best {
            // A value unordered with itself is a NaN.
            None => x.partial_cmp(&x).is_some(),
            Some((_, b)) => x > *b,
        };
        if better {
            best = Some((i, x));
        }
    }
    best.map_or(0, |(i, _)| i)
}
