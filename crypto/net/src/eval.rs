//! The float evaluator: the network as trained, in f32.

use crate::desc::{Activation, Network, Op, Padding};
use crate::error::Result;
use crate::linear::{sum_pool, LinearOp};

/// Runs the network on one input (CHW, `net.input.len()` values) and
/// returns the logits. Batch norm is applied as written (not folded).
pub fn eval_float(net: &Network, input: &[f32]) -> Result<Vec<f32>> {
    let shapes = net.validate()?;
    if input.len() != net.input.len() {
        return Err(crate::error::NetError::Invalid(format!(
            "input has {} values, the network takes {}",
            input.len(),
            net.input.len()
        )));
    }
    let mut outs: Vec<Vec<f32>> = Vec::with_capacity(net.layers.len());
    for (i, layer) in net.layers.iter().enumerate() {
        let src = layer.input.or(i.checked_sub(1));
        let (x, xs) = match src {
            Some(j) => (&outs[j][..], shapes[j]),
            None => (input, net.input),
        };
        let y = match &layer.op {
            Op::Conv2d {
                out_channels,
                kernel,
                stride,
                padding,
                weight,
                bias_values,
                ..
            } => {
                let pad = if *padding == Padding::Same {
                    (kernel - 1) / 2
                } else {
                    0
                };
                let op = LinearOp::conv(xs, *out_channels, *kernel, *stride, pad);
                linear_f32(&op, x, weight, bias_values)
            }
            Op::Dense {
                out_features,
                weight,
                bias_values,
                ..
            } => linear_f32(
                &LinearOp::dense(xs.channels, *out_features),
                x,
                weight,
                bias_values,
            ),
            Op::AvgPool { kernel, stride } => {
                let (v, _) = sum_pool(x, xs, *kernel, *stride, 0f32, |a, b| a + b);
                let inv = 1.0 / (kernel * kernel) as f32;
                v.into_iter().map(|s| s * inv).collect()
            }
            Op::BatchNorm {
                eps,
                gamma,
                beta,
                mean,
                var,
            } => {
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
        };
        outs.push(y);
    }
    Ok(outs.pop().unwrap_or_default())
}

fn linear_f32(op: &LinearOp, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    op.apply(
        x,
        w,
        |oc| b.get(oc).copied().unwrap_or(0.0),
        |acc, w, x| *acc += w * x,
        |acc| acc,
    )
}

/// Index of the largest logit.
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}
