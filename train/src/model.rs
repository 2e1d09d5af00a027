//! A Burn module built from the shared network description, so that what is
//! trained is exactly what the protocol engine runs.
//!
//! Every layer of the description becomes one [`Layer`]: conv2d → Burn
//! `Conv2d`, dense → `Linear` (on the flattened CHW vector), batch norm →
//! `BatchNorm` (running statistics are what the engine folds into the
//! preceding conv), average pool, flatten and residual add are stateless,
//! and every activation layer holds learnable quadratic coefficients
//! (a, b, c) whatever its current [`ActMode`], so that the planner can switch
//! a layer between ReLU, quadratic and the blend (1−t)·quad + t·ReLU between
//! steps without rebuilding the model or the optimizer state.
//!
//! Per-channel placement (the planner's `--granularity channel`) gives an
//! activation layer per-channel coefficients and a per-channel gate g ∈ [0, 1]
//! ([`Net::enable_gates`]): y = g·ReLU(x) + (1 − g)·(a·x² + b·x + c) per
//! channel. While the mask is learned ([`ActMode::Gated`]) g = clamp(m, 0, 1)
//! is trained with the network — SNL's relaxed mask (Cho et al., ICML 2022)
//! with AutoReP's per-channel quadratics (Peng et al., ICCV 2023) in place of
//! SNL's identity; once frozen ([`ActMode::Masked`]) g is the binary mask
//! m > ½ and the layer exports as a `mixed` activation.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{activation, Device, Tensor, TensorData};

use delphi_net::{Activation, Network, Op, Shape};

/// What an activation layer computes now.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum ActMode {
    /// max(x, 0).
    Relu,
    /// a·x² + b·x + c with the layer's learnable coefficients.
    Quad,
    /// (1 − t)·quad + t·ReLU: t goes from 1 to 0 during a gradual swap.
    Blend {
        /// Weight of the ReLU.
        t: f32,
    },
    /// Per channel g·ReLU + (1 − g)·quad with g = clamp(gate, 0, 1) learned.
    Gated,
    /// Per channel ReLU where gate > ½, else the channel's quadratic (frozen).
    Masked,
}

/// Errors building or exporting a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The description is invalid.
    #[error(transparent)]
    Net(#[from] delphi_net::NetError),
    /// A layer or setting the trainer does not support.
    #[error("layer {layer}: {reason}")]
    Unsupported {
        /// The description layer.
        layer: usize,
        /// Why.
        reason: String,
    },
    /// A placement with the wrong number of activation layers.
    #[error("{given} activation modes for a network with {expected} activation layers")]
    Placement {
        /// Modes given.
        given: usize,
        /// Activation layers in the network.
        expected: usize,
    },
}

/// Result alias of the model code.
pub type Result<T> = std::result::Result<T, ModelError>;

/// A convolution through [`crate::fast::conv`] (the trainer's faster
/// backward on flex) when its padding is explicit and symmetric, as the
/// descriptions build it; else Burn's module. With `relu`, followed by ReLU
/// ([`crate::fast::conv_relu`]: applied as the outputs are written, at
/// inference).
fn conv_forward(conv: &Conv2d, x: Tensor<4>, relu: bool) -> Tensor<4> {
    match conv_options(conv) {
        Some(options) => {
            let (w, bias) = (conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
            if relu {
                crate::fast::conv_relu(x, w, bias, options)
            } else {
                crate::fast::conv(x, w, bias, options)
            }
        }
        None if relu => activation::relu(conv.forward(x)),
        None => conv.forward(x),
    }
}

/// The options of a convolution with explicit, symmetric padding (what
/// descriptions build), for [`crate::fast`].
fn conv_options(conv: &Conv2d) -> Option<burn::tensor::ops::ConvOptions<2>> {
    match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && t == b && t == r => Some(
            burn::tensor::ops::ConvOptions::new(conv.stride, [t, t], conv.dilation, conv.groups),
        ),
        _ => None,
    }
}

/// At inference, a convolution followed by the batch norm that alone reads
/// it, as one convolution: weights times γ / √(var + ε) per output
/// channel, bias (b − mean) · γ / √(var + ε) + β (the running statistics);
/// then ReLU as the outputs are written where `relu`. `None` where the
/// convolution's padding is not explicit and symmetric.
fn conv_bn_forward(conv: &Conv2d, bn: &BatchNorm, x: Tensor<4>, relu: bool) -> Option<Tensor<4>> {
    let options = conv_options(conv)?;
    let w = conv.weight.val();
    let o = w.dims()[0];
    let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt();
    let w = w * scale.clone().reshape([o, 1, 1, 1]);
    let b = match &conv.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([o], &scale.device()),
    };
    let b = (b - bn.running_mean.value()) * scale + bn.beta.val();
    Some(if relu {
        crate::fast::conv_relu(x, w, Some(b), options)
    } else {
        crate::fast::conv(x, w, Some(b), options)
    })
}

/// The learnable coefficients of an activation layer (scalars).
#[derive(Module, Debug)]
pub struct QuadCoeffs {
    /// Coefficient of x².
    pub a: Param<Tensor<1>>,
    /// Coefficient of x.
    pub b: Param<Tensor<1>>,
    /// Constant.
    pub c: Param<Tensor<1>>,
}

/// The stateless part of a layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// Convolution (module in `conv`).
    Conv,
    /// Dense layer (module in `dense`), output `[n, out, 1, 1]`.
    Dense,
    /// Batch norm (module in `bn`).
    BatchNorm,
    /// Average pooling.
    AvgPool {
        /// Window.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Max pooling (padding never the maximum).
    MaxPool {
        /// Window.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding on every side.
        padding: usize,
    },
    /// Adds the output of layer `from`.
    Residual {
        /// The other operand.
        from: usize,
    },
    /// Reshapes (C, H, W) to (C·H·W, 1, 1).
    Flatten,
    /// Activation (coefficients in `act`).
    Activation(ActMode),
}

/// One layer of the description.
#[derive(Module, Debug)]
pub struct Layer {
    /// Convolution weights.
    pub conv: Option<Conv2d>,
    /// Dense weights.
    pub dense: Option<Linear>,
    /// Batch-norm parameters and statistics.
    pub bn: Option<BatchNorm>,
    /// Quadratic coefficients (activation layers): one value, or one per channel.
    pub act: Option<QuadCoeffs>,
    /// Per-channel gates (activation layers planned per channel).
    pub gate: Option<Param<Tensor<1>>>,
    /// What the layer does.
    #[module(skip)]
    pub kind: Kind,
    /// The layer it reads (none: the network's input), resolved from the
    /// description with [`delphi_net::Layer::source`].
    #[module(skip)]
    pub source: Option<usize>,
}

/// A network as a Burn module.
#[derive(Module, Debug)]
pub struct Net {
    /// The layers, in description order.
    pub layers: Vec<Layer>,
    /// The input shape.
    #[module(skip)]
    pub input: Shape,
    /// The largest layer output of one image (values).
    #[module(skip)]
    pub largest_output: usize,
}

fn scalar(v: f32, device: &Device) -> Param<Tensor<1>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(vec![v], [1]), device))
}

fn tensor<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

/// Reads a tensor's values.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
}

impl Net {
    /// Builds the module for `net`. With `load_weights` the description's
    /// weights (and batch-norm statistics, quadratic coefficients) are
    /// copied in; otherwise Burn's initialisers are used (Kaiming uniform,
    /// batch norm γ = 1, β = 0) and quadratics start at 0.2·x² + 0.5·x + 0.2,
    /// the least-squares fit of ReLU on N(0, 1).
    pub fn from_description(net: &Network, load_weights: bool, device: &Device) -> Result<Net> {
        let shapes = net.validate()?;
        let mut layers = Vec::with_capacity(net.layers.len());
        for (i, l) in net.layers.iter().enumerate() {
            let src = l.source(i);
            let in_shape = src.map(|j| shapes[j]).unwrap_or(net.input);
            let mut layer = Layer {
                conv: None,
                dense: None,
                bn: None,
                act: None,
                gate: None,
                kind: Kind::Flatten,
                source: src,
            };
            match &l.op {
                Op::Conv2d {
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    bias,
                    weight,
                    bias_values,
                    groups,
                } => {
                    let pad = padding.amount(*kernel);
                    let mut conv =
                        Conv2dConfig::new([in_shape.channels, *out_channels], [*kernel; 2])
                            .with_stride([*stride; 2])
                            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                            .with_bias(*bias)
                            .with_groups(*groups)
                            .init(device);
                    if load_weights {
                        // Burn and the description both store [out][in / groups][k][k].
                        conv.weight = Param::from_tensor(tensor(
                            weight,
                            [*out_channels, in_shape.channels / groups, *kernel, *kernel],
                            device,
                        ));
                        if *bias {
                            conv.bias = Some(Param::from_tensor(tensor(
                                bias_values,
                                [*out_channels],
                                device,
                            )));
                        }
                    }
                    layer.conv = Some(conv);
                    layer.kind = Kind::Conv;
                }
                Op::Dense { out_features, bias, weight, bias_values } => {
                    let d_in = in_shape.len();
                    let mut lin =
                        LinearConfig::new(d_in, *out_features).with_bias(*bias).init(device);
                    if load_weights {
                        // Burn stores [in, out]; the description [out][in].
                        let w = tensor(weight, [*out_features, d_in], device).transpose();
                        lin.weight = Param::from_tensor(w);
                        if *bias {
                            lin.bias = Some(Param::from_tensor(tensor(
                                bias_values,
                                [*out_features],
                                device,
                            )));
                        }
                    }
                    layer.dense = Some(lin);
                    layer.kind = Kind::Dense;
                }
                Op::BatchNorm { eps, gamma, beta, mean, var } => {
                    let c = in_shape.channels;
                    let mut bn = BatchNormConfig::new(c).with_epsilon(*eps as f64).init(device);
                    if load_weights {
                        bn.gamma = Param::from_tensor(tensor(gamma, [c], device));
                        bn.beta = Param::from_tensor(tensor(beta, [c], device));
                        bn.running_mean =
                            burn::module::RunningState::new(tensor(mean, [c], device));
                        bn.running_var = burn::module::RunningState::new(tensor(var, [c], device));
                    }
                    layer.bn = Some(bn);
                    layer.kind = Kind::BatchNorm;
                }
                Op::AvgPool { kernel, stride } => {
                    layer.kind = Kind::AvgPool { kernel: *kernel, stride: *stride }
                }
                Op::MaxPool { kernel, stride, padding } => {
                    layer.kind =
                        Kind::MaxPool { kernel: *kernel, stride: *stride, padding: *padding }
                }
                Op::Residual { from } => layer.kind = Kind::Residual { from: *from },
                Op::Flatten => layer.kind = Kind::Flatten,
                Op::Activation(a) => {
                    let (mode, (qa, qb, qc)) = match a {
                        Activation::Relu => (ActMode::Relu, (0.2, 0.5, 0.2)),
                        Activation::Quad { a, b, c } if load_weights => {
                            (ActMode::Quad, (*a, *b, *c))
                        }
                        Activation::Quad { .. } => (ActMode::Quad, (0.2, 0.5, 0.2)),
                        Activation::Mixed { relu, a, b, c } => {
                            let n = relu.len();
                            let pick = |v: &[f32], d: f32| {
                                if load_weights {
                                    v.to_vec()
                                } else {
                                    vec![d; n]
                                }
                            };
                            layer.act = Some(QuadCoeffs {
                                a: Param::from_tensor(tensor(&pick(a, 0.2), [n], device)),
                                b: Param::from_tensor(tensor(&pick(b, 0.5), [n], device)),
                                c: Param::from_tensor(tensor(&pick(c, 0.2), [n], device)),
                            });
                            let g: Vec<f32> = relu.iter().map(|&r| gate_value(r)).collect();
                            layer.gate = Some(Param::from_tensor(tensor(&g, [n], device)));
                            layer.kind = Kind::Activation(ActMode::Masked);
                            layers.push(layer);
                            continue;
                        }
                    };
                    layer.act = Some(QuadCoeffs {
                        a: scalar(qa, device),
                        b: scalar(qb, device),
                        c: scalar(qc, device),
                    });
                    layer.kind = Kind::Activation(mode);
                }
            }
            layers.push(layer);
        }
        let largest_output = shapes.iter().map(|s| s.len()).max().unwrap_or(0).max(net.input.len());
        Ok(Net { layers, input: net.input, largest_output })
    }

    /// Logits `[n, classes]` for a batch `[n, c, h, w]`.
    ///
    /// Each layer's output is dropped after its last reader (a ResNet-32
    /// batch of 256 otherwise held every output, 1.5 GB, which glibc gave
    /// back and faulted in again on every batch: a third of inference time);
    /// autodiff keeps what the backward pass needs on its own.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let n = self.layers.len();
        let mut last_use: Vec<usize> = (0..n).collect();
        for (i, l) in self.layers.iter().enumerate() {
            for j in l.source.into_iter().chain(match l.kind {
                Kind::Residual { from } => Some(from),
                _ => None,
            }) {
                if j < n {
                    last_use[j] = last_use[j].max(i);
                }
            }
        }
        let mut outs: Vec<Option<Tensor<4>>> = Vec::with_capacity(n);
        let read = |outs: &[Option<Tensor<4>>], j: usize| match &outs[j] {
            Some(t) => t.clone(),
            None => unreachable!("layer {j}'s output is kept until its last reader"),
        };
        // A convolution whose only reader is the layer right after it may
        // take that layer along: at inference a batch norm (folded into its
        // weights), then a ReLU (applied as the outputs are written). `plan`
        // gives the last layer taken along, the batch norm and whether a
        // ReLU is.
        let inference = !x.device().is_autodiff();
        let only_reader = |a: usize, b: usize| {
            self.layers.get(b).is_some_and(|l| l.source == Some(a)) && last_use[a] == b
        };
        let plan = |i: usize| -> Option<(usize, Option<&BatchNorm>, bool)> {
            if !matches!(self.layers[i].kind, Kind::Conv) {
                return None;
            }
            let (mut j, mut bn) = (i, None);
            if inference && only_reader(j, j + 1) {
                if let (Kind::BatchNorm, Some(b)) =
                    (&self.layers[j + 1].kind, &self.layers[j + 1].bn)
                {
                    (j, bn) = (j + 1, Some(b));
                }
            }
            let relu =
                only_reader(j, j + 1) && self.layers[j + 1].kind == Kind::Activation(ActMode::Relu);
            let last = if relu { j + 1 } else { j };
            (last > i).then_some((last, bn, relu))
        };
        // The output of layer `.0`, computed with an earlier convolution.
        let mut ahead: Option<(usize, Tensor<4>)> = None;
        for (i, l) in self.layers.iter().enumerate() {
            let source = |outs: &[Option<Tensor<4>>]| match l.source {
                Some(j) => read(outs, j),
                None => x.clone(),
            };
            let y = match ahead.take() {
                Some((j, y)) if j == i => y,
                Some(later) => {
                    // A layer taken along keeps no output of its own.
                    ahead = Some(later);
                    outs.push(None);
                    continue;
                }
                None => match (plan(i), &l.conv) {
                    (Some((last, bn, relu)), Some(conv)) => {
                        let src = source(&outs);
                        let y = match bn {
                            Some(bn) => conv_bn_forward(conv, bn, src, relu),
                            None => Some(conv_forward(conv, src, relu)),
                        };
                        match y {
                            Some(y) => {
                                ahead = Some((last, y));
                                outs.push(None);
                                continue;
                            }
                            None => conv_forward(conv, source(&outs), false),
                        }
                    }
                    _ => self.layer_forward(l, source(&outs), &outs, read),
                },
            };
            outs.push(Some(y));
            // Outputs no later layer reads (the last layer's is the result).
            for (j, out) in outs.iter_mut().enumerate().take(i) {
                if last_use[j] <= i {
                    *out = None;
                }
            }
        }
        let last = outs.pop().flatten().unwrap_or(x);
        let [n, c, h, w] = last.dims();
        last.reshape([n, c * h * w])
    }

    /// One layer's output (not a convolution fused with its ReLU), `src`
    /// its input and `outs` the outputs so far (`read` gives one).
    fn layer_forward(
        &self,
        l: &Layer,
        src: Tensor<4>,
        outs: &[Option<Tensor<4>>],
        read: impl Fn(&[Option<Tensor<4>>], usize) -> Tensor<4>,
    ) -> Tensor<4> {
        match (&l.kind, &l.conv, &l.dense, &l.bn, &l.act) {
            (Kind::Conv, Some(conv), ..) => conv_forward(conv, src, false),
            (Kind::Dense, _, Some(lin), ..) => {
                let [n, c, h, w] = src.dims();
                let y = lin.forward(src.reshape([n, c * h * w]));
                let out = y.dims()[1];
                y.reshape([n, out, 1, 1])
            }
            (Kind::BatchNorm, _, _, Some(bn), _) => bn.forward(src),
            (Kind::AvgPool { kernel, stride }, ..) => crate::fast::avg_pool(src, *kernel, *stride),
            (Kind::MaxPool { kernel, stride, padding }, ..) => burn::tensor::module::max_pool2d(
                src,
                burn::tensor::ops::MaxPoolOptions::new([*kernel; 2])
                    .with_stride([*stride; 2])
                    .with_padding([*padding; 2]),
            ),
            (Kind::Residual { from }, ..) => src + read(outs, *from),
            (Kind::Flatten, ..) => {
                let [n, c, h, w] = src.dims();
                src.reshape([n, c * h * w, 1, 1])
            }
            (Kind::Activation(mode), _, _, _, Some(q)) => activate(*mode, q, l.gate.as_ref(), src),
            // A layer whose module is missing cannot be built by `from_description`.
            _ => src,
        }
    }

    /// Indices of the activation layers.
    pub fn activation_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| matches!(self.layers[i].kind, Kind::Activation(_)))
            .collect()
    }

    /// The current mode of every activation layer.
    pub fn modes(&self) -> Vec<ActMode> {
        self.layers
            .iter()
            .filter_map(|l| match l.kind {
                Kind::Activation(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// Sets the mode of every activation layer.
    pub fn set_modes(&mut self, modes: &[ActMode]) -> Result<()> {
        let idx = self.activation_layers();
        if idx.len() != modes.len() {
            return Err(ModelError::Placement { given: modes.len(), expected: idx.len() });
        }
        for (i, m) in idx.into_iter().zip(modes) {
            self.layers[i].kind = Kind::Activation(*m);
        }
        Ok(())
    }

    /// Writes the trained weights into a copy of `template` (the description
    /// this module was built from). Blended layers cannot be exported.
    pub fn to_description(&self, template: &Network) -> Result<Network> {
        let mut net = template.clone();
        net.weights_file = None;
        let mut net_version_2 = false;
        for (i, (l, d)) in self.layers.iter().zip(net.layers.iter_mut()).enumerate() {
            match (&mut d.op, &l.kind) {
                (Op::Conv2d { weight, bias_values, bias, .. }, Kind::Conv) => {
                    if let Some(conv) = &l.conv {
                        *weight = values(conv.weight.val());
                        *bias_values = match (&conv.bias, *bias) {
                            (Some(b), true) => values(b.val()),
                            _ => Vec::new(),
                        };
                    }
                }
                (Op::Dense { weight, bias_values, bias, .. }, Kind::Dense) => {
                    if let Some(lin) = &l.dense {
                        *weight = values(lin.weight.val().transpose());
                        *bias_values = match (&lin.bias, *bias) {
                            (Some(b), true) => values(b.val()),
                            _ => Vec::new(),
                        };
                    }
                }
                (Op::BatchNorm { gamma, beta, mean, var, .. }, Kind::BatchNorm) => {
                    if let Some(bn) = &l.bn {
                        *gamma = values(bn.gamma.val());
                        *beta = values(bn.beta.val());
                        *mean = values(bn.running_mean.value());
                        *var = values(bn.running_var.value());
                    }
                }
                (Op::Activation(a), Kind::Activation(mode)) => {
                    *a = match (mode, &l.act) {
                        (ActMode::Relu, _) => Activation::Relu,
                        (ActMode::Masked, Some(q)) => {
                            let relu = l.channel_mask().unwrap_or_default();
                            let n = relu.len();
                            let per = |p: &Param<Tensor<1>>| {
                                let v = values(p.val());
                                if v.len() == n {
                                    v
                                } else {
                                    vec![v.first().copied().unwrap_or(0.0); n]
                                }
                            };
                            if relu.iter().all(|&r| r) {
                                Activation::Relu
                            } else {
                                net_version_2 = true;
                                Activation::Mixed { a: per(&q.a), b: per(&q.b), c: per(&q.c), relu }
                            }
                        }
                        (ActMode::Gated, _) => return Err(ModelError::Unsupported {
                            layer: i,
                            reason:
                                "its channel mask is still being learned; freeze it before export"
                                    .into(),
                        }),
                        (ActMode::Quad, Some(q)) => {
                            let v = |p: &Param<Tensor<1>>| {
                                values(p.val()).first().copied().unwrap_or(0.0)
                            };
                            Activation::Quad { a: v(&q.a), b: v(&q.b), c: v(&q.c) }
                        }
                        (ActMode::Blend { t }, _) => {
                            return Err(ModelError::Unsupported {
                                layer: i,
                                reason: format!(
                                "activation is mid-swap (t = {t}); finish the swap before export"
                            ),
                            })
                        }
                        (ActMode::Quad | ActMode::Masked, None) => {
                            return Err(ModelError::Unsupported {
                                layer: i,
                                reason: "quadratic without coefficients".into(),
                            })
                        }
                    };
                }
                _ => {}
            }
        }
        if net_version_2 {
            net.version = delphi_net::desc::VERSION.max(2);
        }
        // A reduced-ReLU window stays with its layer while the layer keeps
        // ReLU channels; a layer that became quadratic has no ReLU left.
        for l in &mut net.layers {
            if !l.has_relu() {
                l.relu_bits = None;
            }
        }
        net.validate()?;
        Ok(net)
    }

    /// Gives every activation layer per-channel quadratic coefficients
    /// (from its current ones) and per-channel gates, all ReLU (gate 0.99,
    /// inside the clamp so that it learns), in `Gated` mode. Layers that
    /// already have gates keep them.
    pub fn enable_gates(&mut self, shapes: &[Shape], device: &Device) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            if !matches!(l.kind, Kind::Activation(_)) || l.gate.is_some() {
                continue;
            }
            let n = shapes[i].channels;
            if let Some(q) = &mut l.act {
                let widen = |p: &Param<Tensor<1>>| {
                    let v = values(p.val()).first().copied().unwrap_or(0.0);
                    Param::from_tensor(tensor(&vec![v; n], [n], device))
                };
                *q = QuadCoeffs { a: widen(&q.a), b: widen(&q.b), c: widen(&q.c) };
            }
            l.gate = Some(Param::from_tensor(tensor(&vec![gate_value(true); n], [n], device)));
            l.kind = Kind::Activation(ActMode::Gated);
        }
    }

    /// Per activation layer: whether it has per-channel gates (no tensor
    /// is read: cheap enough for every step).
    pub fn gated(&self) -> Vec<bool> {
        self.layers
            .iter()
            .filter(|l| matches!(l.kind, Kind::Activation(_)))
            .map(|l| l.gate.is_some())
            .collect()
    }

    /// Per activation layer: its gates (clamped to [0, 1]), if it has any.
    pub fn gates(&self) -> Vec<Option<Vec<f32>>> {
        self.layers
            .iter()
            .filter(|l| matches!(l.kind, Kind::Activation(_)))
            .map(|l| {
                l.gate
                    .as_ref()
                    .map(|g| values(g.val()).into_iter().map(|v| v.clamp(0.0, 1.0)).collect())
            })
            .collect()
    }

    /// Sets the gates of every gated activation layer to the binary mask
    /// `relu` (per activation layer, per channel) — 0.99 for ReLU, 0 for
    /// quadratic — and the mode to `mode`. Layers without gates are left.
    pub fn set_masks(&mut self, relu: &[Vec<bool>], mode: ActMode, device: &Device) {
        let idx = self.activation_layers();
        for (k, i) in idx.into_iter().enumerate() {
            let l = &mut self.layers[i];
            if let (Some(_), Some(mask)) = (&l.gate, relu.get(k)) {
                let g: Vec<f32> = mask.iter().map(|&r| gate_value(r)).collect();
                l.gate = Some(Param::from_tensor(tensor(&g, [g.len()], device)));
                l.kind = Kind::Activation(mode);
            }
        }
    }
}

/// The gate value of a ReLU (`true`) or quadratic channel: inside the clamp
/// for a ReLU so that learning can lower it, 0 for a quadratic.
pub fn gate_value(relu: bool) -> f32 {
    if relu {
        0.99
    } else {
        0.0
    }
}

impl Layer {
    /// The binary channel mask of a gated layer (`true`: ReLU, gate > ½).
    pub fn channel_mask(&self) -> Option<Vec<bool>> {
        self.gate.as_ref().map(|g| values(g.val()).into_iter().map(|v| v > 0.5).collect())
    }
}

fn activate(
    mode: ActMode,
    q: &QuadCoeffs,
    gate: Option<&Param<Tensor<1>>>,
    x: Tensor<4>,
) -> Tensor<4> {
    let per_channel = |p: &Param<Tensor<1>>| {
        let n = p.val().dims()[0];
        p.val().reshape([1, n, 1, 1])
    };
    let quad = |x: Tensor<4>| {
        let a = per_channel(&q.a);
        let b = per_channel(&q.b);
        let c = per_channel(&q.c);
        x.clone().powi_scalar(2).mul(a) + x.mul(b) + c
    };
    match (mode, gate) {
        (ActMode::Relu, _) => activation::relu(x),
        (ActMode::Quad, _) => quad(x),
        (ActMode::Blend { t }, _) => {
            quad(x.clone()).mul_scalar(1.0 - t) + activation::relu(x).mul_scalar(t)
        }
        (ActMode::Gated, Some(g)) => {
            let g = per_channel(g).clamp(0.0, 1.0);
            let r = activation::relu(x.clone());
            let p = quad(x);
            p.clone() + (r - p).mul(g)
        }
        (ActMode::Masked, Some(g)) => {
            let g = per_channel(g).detach().greater_elem(0.5).float();
            let r = activation::relu(x.clone());
            let p = quad(x);
            p.clone() + (r - p).mul(g)
        }
        // No gates: a gated mode means all ReLU (gates start there).
        (ActMode::Gated | ActMode::Masked, None) => activation::relu(x),
    }
}
