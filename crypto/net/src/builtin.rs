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
//!
//! Weights are He-initialised from a seed; batch-norm statistics are then
//! calibrated on random inputs ([`crate::eval::calibrate_batch_norm`]) so
//! that activations stay near unit scale.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::desc::{Activation, Network, Op, Padding, Shape};
use crate::error::{NetError, Result};

/// Names of the built-in architectures.
pub const ARCHITECTURES: [&str; 3] = ["small-cnn", "minionn", "resnet32"];

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
            weight: (0..out_c * in_c * k * k)
                .map(|_| self.normal(std))
                .collect(),
            bias_values: if bias {
                (0..out_c).map(|_| self.normal(0.05)).collect()
            } else {
                Vec::new()
            },
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

/// Builds a built-in architecture with random weights (all activations ReLU).
pub fn build(arch: &str, classes: usize, seed: u64) -> Result<Network> {
    if classes == 0 {
        return Err(NetError::Invalid("at least one class".into()));
    }
    let mut init = Init {
        rng: ChaCha20Rng::seed_from_u64(seed),
    };
    let net = match arch {
        "small-cnn" => {
            let mut n = Network::new("small-cnn", Shape::new(1, 28, 28), 8);
            n.push(init.conv(1, 16, 3, 1, true));
            n.push(RELU);
            n.push(Op::AvgPool {
                kernel: 2,
                stride: 2,
            });
            n.push(init.conv(16, 32, 3, 1, true));
            n.push(RELU);
            n.push(Op::AvgPool {
                kernel: 2,
                stride: 2,
            });
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
            n.push(Op::AvgPool {
                kernel: 2,
                stride: 2,
            });
            n.push(init.conv(64, 64, 3, 1, true));
            n.push(RELU);
            n.push(init.conv(64, 64, 3, 1, true));
            n.push(RELU);
            n.push(Op::AvgPool {
                kernel: 2,
                stride: 2,
            });
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
        "resnet32" => {
            let mut n = Network::new("resnet32", Shape::new(3, 32, 32), 8);
            n.push(init.conv(3, 16, 3, 1, false));
            n.push(init.bn(16));
            let mut x = n.push(RELU);
            let mut in_c = 16;
            for (stage, out_c) in [16usize, 32, 64].into_iter().enumerate() {
                for block in 0..5 {
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
                }
            }
            n.push(Op::AvgPool {
                kernel: 8,
                stride: 8,
            });
            n.push(Op::Flatten);
            n.push(init.dense(64, classes));
            n
        }
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

/// Sets each activation layer from a placement: a list of `relu`/`quad`
/// (comma separated), or a string of `R`/`Q` letters, one per activation
/// layer in order.
pub fn apply_placement(net: &mut Network, placement: &str) -> Result<()> {
    let acts = net.activation_layers();
    let p = placement.trim();
    let choices: Vec<bool> =
        if p.contains(',') || p.eq_ignore_ascii_case("relu") || p.eq_ignore_ascii_case("quad") {
            p.split(',')
                .map(|s| match s.trim().to_ascii_lowercase().as_str() {
                    "relu" => Ok(false),
                    "quad" => Ok(true),
                    other => Err(NetError::Invalid(format!(
                        "placement entry {other:?} is neither relu nor quad"
                    ))),
                })
                .collect::<Result<_>>()?
        } else {
            p.chars()
                .map(|c| match c.to_ascii_uppercase() {
                    'R' => Ok(false),
                    'Q' => Ok(true),
                    other => Err(NetError::Invalid(format!(
                        "placement letter {other:?} is neither R nor Q"
                    ))),
                })
                .collect::<Result<_>>()?
        };
    if choices.len() != acts.len() {
        return Err(NetError::Invalid(format!(
            "placement has {} entries but the network has {} activation layers",
            choices.len(),
            acts.len()
        )));
    }
    for (&i, quad) in acts.iter().zip(choices) {
        net.layers[i].op = Op::Activation(if quad {
            Activation::DEFAULT_QUAD
        } else {
            Activation::Relu
        });
    }
    Ok(())
}

/// Replaces the last `count` activation layers by the default quadratic
/// (the first layers, closest to the input, keep ReLU).
pub fn quad_last(net: &mut Network, count: usize) -> Result<()> {
    quad_last_with(net, count, Activation::DEFAULT_QUAD)
}

/// A contractive quadratic for benchmarks on random weights,
/// 0.05·x² + 0.5·x: repeated on a ResNet's residual stream it stays
/// bounded, where the default (0.2·x² + 0.5·x + 0.2, unstable above x = 2)
/// overflows any fixed-point range after a few untrained blocks.
pub const BENCH_QUAD: Activation = Activation::Quad {
    a: 0.02,
    b: 0.25,
    c: 0.0,
};

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
        net.layers[i].op = Op::Activation(quad);
    }
    Ok(())
}

/// The placement string (`R`/`Q` per activation layer).
pub fn placement_string(net: &Network) -> String {
    net.activation_layers()
        .iter()
        .map(|&i| match net.layers[i].op {
            Op::Activation(Activation::Relu) => 'R',
            _ => 'Q',
        })
        .collect()
}
