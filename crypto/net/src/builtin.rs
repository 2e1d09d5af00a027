//! Built-in architectures with random weights, and activation placements.
//!
//! * `small-cnn`: 28×28×1 input; conv3×3(16)–act–avgpool2–conv3×3(32)–act–
//!   avgpool2–dense(128)–act–dense(classes). Three activation layers.
//! * `minionn`: the MiniONN CIFAR-10 network (as used by DELPHI): 32×32×3;
//!   conv3×3(64)–act–conv3×3(64)–act–avgpool2–conv3×3(64)–act–conv3×3(64)–act–
//!   avgpool2–conv3×3(64)–act–conv1×1(64)–act–conv1×1(16)–act–dense(classes).
//!   Seven activation layers.
//! * `resnet32`: CIFAR ResNet-32: conv3×3(16)–bn–act, then 3 stages × 5 basic
//!   blocks (16/32/64 channels; conv–bn–act–conv–bn, plus the shortcut, then
//!   act), the first block of stages 2 and 3 downsampling with stride 2 and a
//!   1×1 conv + bn projection shortcut; global average pool, dense(classes).
//!   31 activation layers, real residual connections and batch norm.
//! * `resnet14`: the same design for 28×28×1 inputs (Fashion-MNIST), small
//!   enough to plan on two cores: conv3×3(12)–bn–act–avgpool2, then 3 stages
//!   × 2 basic blocks (12/24/48 channels at 14×14, 7×7, 4×4), global average
//!   pool, dense(classes). 13 activation layers, 26,592 ReLUs, of which the
//!   first layer holds a third — so which layers stay ReLU matters; made all
//!   quadratic it trains to chance from scratch and loses points from a
//!   trained all-ReLU network.
//! * `resnet26`: the deep, narrow variant for 28×28×1 inputs, at about
//!   `resnet14`'s compute (2.9 M against 3.2 M multiply-accumulates):
//!   conv3×3(8)–bn–act–avgpool2, then 3 stages × 4 basic blocks (8/16/32
//!   channels at 14×14, 7×7, 4×4), global average pool, dense(classes).
//!   25 activation layers, 29,184 ReLUs: many small layers, so where the
//!   ReLUs stay matters more than how many (the planner's benchmark
//!   network).
//! * `resnet38`: deeper and narrower still, for 28×28×1 inputs, at about
//!   the same compute (2.4 M multiply-accumulates): conv3×3(6)–bn–act–
//!   avgpool2, then 3 stages × 6 basic blocks (6/12/24 channels at 14×14,
//!   7×7, 4×4), global average pool, dense(classes). 37 activation layers,
//!   30,480 ReLUs: enough layers in a row that an all-quadratic network
//!   loses accuracy, so placement decides (the planner's harder benchmark
//!   network).
//!
//! Weights are He-initialised from a seed; batch-norm statistics are then
//! calibrated on random inputs ([`crate::eval::calibrate_batch_norm`]) so
//! that activations stay near unit scale.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::desc::{Activation, Network, Op, Padding, Shape};
use crate::error::{NetError, Result};

/// Names of the built-in architectures.
pub const ARCHITECTURES: [&str; 7] =
    ["small-cnn", "small-cnn-max", "minionn", "resnet32", "resnet14", "resnet26", "resnet38"];

struct Init {
    rng: ChaCha20Rng,
}

impl Init {
    fn normal(&mut self, std: f32) -> f32 {
        // Box–Muller.
        let u1: f32 = self.rng.gen_range(f32::EPSILON..1.0);
        let u2: f32 = self.rng.gen();
        std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }

    fn conv(&mut self, in_c: usize, out_c: usize, k: usize, stride: usize, bias: bool) -> Op {
        let std = (2.0 / (in_c * k * k) as f32).sqrt();
        Op::Conv2d {
            out_channels: out_c,
            kernel: k,
            stride,
            padding: Padding::Same,
            bias,
            weight: (0..out_c * in_c * k * k).map(|_| self.normal(std)).collect(),
            bias_values: if bias {
                (0..out_c).map(|_| self.normal(0.05)).collect()
            } else {
                Vec::new()
            },
            groups: 1,
        }
    }

    fn dense(&mut self, inp: usize, out: usize) -> Op {
        let std = (2.0 / inp as f32).sqrt();
        Op::Dense {
            out_features: out,
            bias: true,
            weight: (0..out * inp).map(|_| self.normal(std)).collect(),
            bias_values: (0..out).map(|_| self.normal(0.05)).collect(),
        }
    }

    fn bn(&mut self, c: usize) -> Op {
        Op::BatchNorm {
            eps: 1e-5,
            gamma: (0..c).map(|_| 1.0 + self.normal(0.1)).collect(),
            beta: (0..c).map(|_| self.normal(0.1)).collect(),
            mean: (0..c).map(|_| self.normal(0.1)).collect(),
            var: (0..c).map(|_| 1.0 + self.normal(0.1).abs()).collect(),
        }
    }
}

const RELU: Op = Op::Activation(Activation::Relu);

/// A CIFAR-style ResNet (He et al. 2016, 6n + 2 layers): conv3×3(w)–bn–act
/// (then avgpool2 with `stem_pool`), 3 stages × `blocks` basic blocks
/// (w/2w/4w channels; conv–bn–act–conv–bn plus the shortcut, then act; the
/// first block of stages 2 and 3 downsamples with stride 2 and a 1×1 conv +
/// bn projection), global average pool, dense(classes).
fn resnet(
    init: &mut Init,
    name: &str,
    input: Shape,
    stem_pool: bool,
    blocks: usize,
    width: usize,
    classes: usize,
) -> Network {
    let mut n = Network::new(name, input, 8);
    n.push(init.conv(input.channels, width, 3, 1, false));
    n.push(init.bn(width));
    let mut x = n.push(RELU);
    let mut side = input.height;
    if stem_pool {
        x = n.push(Op::AvgPool { kernel: 2, stride: 2 });
        side /= 2;
    }
    let mut in_c = width;
    for (stage, out_c) in [width, 2 * width, 4 * width].into_iter().enumerate() {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            n.push_from(x, init.conv(in_c, out_c, 3, stride, false));
            n.push(init.bn(out_c));
            n.push(RELU);
            n.push(init.conv(out_c, out_c, 3, 1, false));
            let main = n.push(init.bn(out_c));
            let shortcut = if stride != 1 || in_c != out_c {
                let mut proj = init.conv(in_c, out_c, 1, stride, false);
                if let Op::Conv2d { padding, .. } = &mut proj {
                    *padding = Padding::Valid;
                }
                n.push_from(x, proj);
                n.push(init.bn(out_c))
            } else {
                x
            };
            // The residual layer reads the shortcut and adds the main branch.
            n.push_from(shortcut, Op::Residual { from: main });
            x = n.push(RELU);
            in_c = out_c;
            if stride == 2 {
                side = (side + 2 - 3) / 2 + 1;
            }
        }
    }
    n.push(Op::AvgPool { kernel: side, stride: side });
    n.push(Op::Flatten);
    n.push(init.dense(4 * width, classes));
    n
}

/// Builds a built-in architecture with random weights (all activations ReLU).
pub fn build(arch: &str, classes: usize, seed: u64) -> Result<Network> {
    if classes == 0 {
        return Err(NetError::Invalid("at least one class".into()));
    }
    let mut init = Init { rng: ChaCha20Rng::seed_from_u64(seed) };
    let net = match arch {
        // small-cnn with max pooling, as ordinary PyTorch CNNs pool (each
        // ReLU before a pool fused into it under the protocol).
        "small-cnn-max" => {
            let mut n = Network::new("small-cnn-max", Shape::new(1, 28, 28), 8);
            n.push(init.conv(1, 16, 3, 1, true));
            n.push(RELU);
            n.push(Op::MaxPool { kernel: 2, stride: 2, padding: 0 });
            n.push(init.conv(16, 32, 3, 1, true));
            n.push(RELU);
            n.push(Op::MaxPool { kernel: 2, stride: 2, padding: 0 });
            n.push(Op::Flatten);
            n.push(init.dense(32 * 7 * 7, 128));
            n.push(RELU);
            n.push(init.dense(128, classes));
            n
        }
        "small-cnn" => {
            let mut n = Network::new("small-cnn", Shape::new(1, 28, 28), 8);
            n.push(init.conv(1, 16, 3, 1, true));
            n.push(RELU);
            n.push(Op::AvgPool { kernel: 2, stride: 2 });
            n.push(init.conv(16, 32, 3, 1, true));
            n.push(RELU);
            n.push(Op::AvgPool { kernel: 2, stride: 2 });
            n.push(Op::Flatten);
            n.push(init.dense(32 * 7 * 7, 128));
            n.push(RELU);
            n.push(init.dense(128, classes));
            n
        }
        "minionn" => {
            let mut n = Network::new("minionn", Shape::new(3, 32, 32), 8);
            n.push(init.conv(3, 64, 3, 1, true));
            n.push(RELU);
            n.push(init.conv(64, 64, 3, 1, true));
            n.push(RELU);
            n.push(Op::AvgPool { kernel: 2, stride: 2 });
            n.push(init.conv(64, 64, 3, 1, true));
            n.push(RELU);
            n.push(init.conv(64, 64, 3, 1, true));
            n.push(RELU);
            n.push(Op::AvgPool { kernel: 2, stride: 2 });
            n.push(init.conv(64, 64, 3, 1, true));
            n.push(RELU);
            n.push(init.conv(64, 64, 1, 1, true));
            n.push(RELU);
            n.push(init.conv(64, 16, 1, 1, true));
            n.push(RELU);
            n.push(Op::Flatten);
            n.push(init.dense(16 * 8 * 8, classes));
            n
        }
        "resnet32" => resnet(&mut init, "resnet32", Shape::new(3, 32, 32), false, 5, 16, classes),
        "resnet14" => resnet(&mut init, "resnet14", Shape::new(1, 28, 28), true, 2, 12, classes),
        "resnet26" => resnet(&mut init, "resnet26", Shape::new(1, 28, 28), true, 4, 8, classes),
        "resnet38" => resnet(&mut init, "resnet38", Shape::new(1, 28, 28), true, 6, 6, classes),
        other => {
            return Err(NetError::Invalid(format!(
                "unknown architecture {other:?} (known: {})",
                ARCHITECTURES.join(", ")
            )))
        }
    };
    let mut net = net;
    // Data-dependent batch-norm statistics on two random inputs, so that the
    // random network keeps unit-scale activations (and stays inside the
    // fixed-point range even with many quadratic layers).
    let inputs = crate::eval::random_inputs(net.input.len(), 2, seed ^ 0xca1b);
    crate::eval::calibrate_batch_norm(&mut net, &inputs)?;
    Ok(net)
}

/// A contractive quadratic for benchmarks on random weights,
/// 0.02·x² + 0.25·x: repeated on a ResNet's residual stream it stays
/// bounded, where the default (0.2·x² + 0.5·x + 0.2, unstable above x = 2)
/// overflows any fixed-point range after a few untrained blocks.
pub const BENCH_QUAD: Activation = Activation::Quad { a: 0.02, b: 0.25, c: 0.0 };

/// Replaces the last `count` activation layers by `quad`.
pub fn quad_last_with(net: &mut Network, count: usize, quad: Activation) -> Result<()> {
    let acts = net.activation_layers();
    if count > acts.len() {
        return Err(NetError::Invalid(format!(
            "{count} quadratic layers requested but the network has {} activation layers",
            acts.len()
        )));
    }
    for &i in &acts[acts.len() - count..] {
        net.layers[i].op = Op::Activation(quad.clone());
    }
    Ok(())
}

/// Gives a description without weights (see
/// [`Network::load_architecture`]) the same start a built-in gets: convs
/// and dense layers He-initialised from `seed`, biases small, batch norms
/// identity, then batch-norm statistics calibrated on random inputs.
/// Tensors that already hold values are kept.
pub fn initialise(net: &mut Network, seed: u64) -> Result<()> {
    let shapes = net.validate_architecture()?;
    let mut init = Init { rng: ChaCha20Rng::seed_from_u64(seed) };
    for i in 0..net.layers.len() {
        let src = net.layers[i].source(i);
        let in_c = src.map_or(net.input.channels, |j| shapes[j].channels);
        let out_c = shapes[i].channels;
        let mut fresh = match &net.layers[i].op {
            // A grouped conv's output channel reads in_c / groups inputs.
            Op::Conv2d { kernel, stride, groups, .. } => {
                init.conv(in_c / (*groups).max(1), out_c, *kernel, *stride, true)
            }
            Op::Dense { .. } => init.dense(in_c, out_c),
            Op::BatchNorm { .. } => Op::BatchNorm {
                eps: 1e-5,
                gamma: vec![1.0; out_c],
                beta: vec![0.0; out_c],
                mean: vec![0.0; out_c],
                var: vec![1.0; out_c],
            },
            _ => continue,
        };
        let fresh: Vec<(&str, Vec<f32>)> =
            fresh.tensors_mut().into_iter().map(|(name, t)| (name, std::mem::take(t))).collect();
        let has_bias = !matches!(
            net.layers[i].op,
            Op::Conv2d { bias: false, .. } | Op::Dense { bias: false, .. }
        );
        for (name, t) in net.layers[i].op.tensors_mut() {
            if !t.is_empty() || (name == "bias_values" && !has_bias) {
                continue;
            }
            if let Some((_, v)) = fresh.iter().find(|(n, _)| *n == name) {
                t.clone_from(v);
            }
        }
    }
    net.validate()?;
    let inputs = crate::eval::random_inputs(net.input.len(), 2, seed ^ 0xca1b);
    crate::eval::calibrate_batch_norm(net, &inputs)
}
