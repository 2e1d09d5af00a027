//! The network description format (version 3; versions 1 and 2 load unchanged).
//!
//! A description is JSON:
//!
//! ```json
//! {
//!   "format": "delphi-network",
//!   "version": 3,
//!   "name": "small-cnn",
//!   "input": { "channels": 1, "height": 28, "width": 28 },
//!   "fixed_point": { "frac_bits": 8, "weight_frac_bits": 12 },
//!   "layers": [
//!     { "type": "conv2d", "out_channels": 16, "kernel": 3, "stride": 1, "padding": "same",
//!       "bias": true, "weight": [ ... ], "bias_values": [ ... ] },
//!     { "type": "batch_norm", "eps": 1e-5, "gamma": [..], "beta": [..], "mean": [..], "var": [..] },
//!     { "type": "activation", "kind": "relu" },
//!     { "type": "activation", "kind": "relu", "relu_bits": { "lo": 12, "hi": 27 } },
//!     { "type": "activation", "kind": "quad", "a": 0.2, "b": 0.5, "c": 0.2 },
//!     { "type": "activation", "kind": "mixed", "relu": [true, false, ...],
//!       "a": [...], "b": [...], "c": [...] },
//!     { "type": "avg_pool", "kernel": 2, "stride": 2 },
//!     { "type": "conv2d", "input": 2, ... },
//!     { "type": "residual", "from": 4 },
//!     { "type": "flatten" },
//!     { "type": "dense", "out_features": 10, "bias": true, "weight": [ ... ], "bias_values": [ ... ] }
//!   ],
//!   "weights_file": null,
//!   "metadata": { "dataset": "fashion-mnist" }
//! }
//! ```
//!
//! Layers run in order; each reads the previous layer's output unless it
//! names another earlier layer in `input` (a shortcut branch). `residual`
//! adds the output of layer `from` to its input. Tensors are CHW; conv
//! weights are `[out][in][kh][kw]`, dense weights `[out][in]`, flattening is
//! in CHW order. `padding: "same"` pads (k−1)/2 on every side (odd kernels),
//! `"valid"` pads nothing, a number pads that many zeros on every side. Weights are inline, or in a safetensors sidecar
//! named by `weights_file` (tensors `layers.<i>.<field>`, f32) — then the
//! inline arrays are empty. Batch norm folds into the conv or dense layer it
//! follows. Quadratic coefficients are part of the architecture and are
//! known to the client.
//!
//! A `mixed` activation (version 2) chooses per channel: `relu[ch]` keeps
//! ReLU on channel `ch`, otherwise the channel computes its own quadratic
//! `a[ch]·x² + b[ch]·x + c[ch]` (the coefficients of ReLU channels are
//! unused). Each list has one entry per channel of the layer's input (a
//! flat vector's channels are its elements). Version 1 has no `mixed`.
//!
//! `relu_bits` (version 3) on a `relu` or `mixed` activation makes its ReLUs
//! *reduced*: the garbled circuit sees only bits `lo..hi` of the ReLU's
//! fixed-point input (the integer at that point of the program: f + f_w
//! fractional bits after a conv, times any pending pooling divisor). Inside
//! the window (|v| < 2^(hi−1)) its sign is exact and its output is
//! ReLU(v) rounded down to a multiple of 2^lo (exact when lo ≤ f_w);
//! outside, the input wraps around modulo 2^hi. The protocol's result
//! differs from that by at most max(1, 2^(lo − f_w)) units of the output
//! (see `delphi_crypto::relu`). The window is part of the architecture: the
//! client learns it. Absent: the exact 41-bit circuit.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{layer_err, NetError, Result};

/// The `format` field's value.
pub const FORMAT: &str = "delphi-network";
/// The format version this build writes.
pub const VERSION: u32 = 3;
/// The format versions this build reads (1 has no mixed activations, 2 no
/// reduced ReLUs).
pub const VERSIONS: [u32; 3] = [1, 2, 3];
/// The largest description file read (inline weights included): 1 GiB.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// The most elements one tensor (a layer's input or output) may hold: 2^24.
pub const MAX_ELEMENTS: usize = 1 << 24;

/// A tensor shape: channels × height × width (a flat vector is n × 1 × 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
}

impl Shape {
    /// A CHW shape.
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Shape { channels, height, width }
    }

    /// The shape a `kernel`×`kernel` window sliding by `stride` over this
    /// shape, zero-padded by `pad` on every side, produces with `channels`
    /// output channels (a convolution; a pooling keeps the channels). The
    /// caller has checked that the window fits and the stride is positive.
    pub fn windowed(&self, channels: usize, kernel: usize, stride: usize, pad: usize) -> Shape {
        Shape::new(
            channels,
            (self.height + 2 * pad - kernel) / stride + 1,
            (self.width + 2 * pad - kernel) / stride + 1,
        )
    }

    /// Number of elements (saturating: a shape too large to count is
    /// refused by validation, see [`MAX_ELEMENTS`]).
    pub fn len(&self) -> usize {
        self.channels.saturating_mul(self.height).saturating_mul(self.width)
    }

    /// Whether the shape holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}×{}", self.channels, self.height, self.width)
    }
}

/// Convolution padding, the same on every side. Written `"same"`
/// ((k − 1)/2, odd kernels), `"valid"` (none) or a number of zero rows and
/// columns (what an imported model states explicitly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// (k − 1)/2 on every side.
    Same,
    /// No padding.
    Valid,
    /// This many zeros on every side.
    Explicit(usize),
}

impl Padding {
    /// Zero padding on every side for a `kernel`×`kernel` window.
    pub fn amount(self, kernel: usize) -> usize {
        match self {
            Padding::Same => kernel.saturating_sub(1) / 2,
            Padding::Valid => 0,
            Padding::Explicit(p) => p,
        }
    }

    /// The simplest way to write `amount` zeros for a `kernel`×`kernel`
    /// window: `same` or `valid` when one of them means it.
    pub fn for_amount(amount: usize, kernel: usize) -> Padding {
        if amount == 0 {
            Padding::Valid
        } else if kernel % 2 == 1 && amount == (kernel - 1) / 2 {
            Padding::Same
        } else {
            Padding::Explicit(amount)
        }
    }
}

impl Serialize for Padding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Padding::Same => s.serialize_str("same"),
            Padding::Valid => s.serialize_str("valid"),
            Padding::Explicit(p) => s.serialize_u64(*p as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Padding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Word(String),
            Amount(u64),
        }
        match Repr::deserialize(d)? {
            Repr::Word(w) if w == "same" => Ok(Padding::Same),
            Repr::Word(w) if w == "valid" => Ok(Padding::Valid),
            Repr::Word(w) => Err(serde::de::Error::custom(format!(
                "padding {w:?}: expected \"same\", \"valid\" or a number"
            ))),
            Repr::Amount(p) if p <= 64 => Ok(Padding::Explicit(p as usize)),
            Repr::Amount(p) => Err(serde::de::Error::custom(format!("padding {p}: at most 64"))),
        }
    }
}

/// An activation function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    /// max(x, 0), run as a garbled circuit.
    Relu,
    /// a·x² + b·x + c, run with a Beaver multiplication.
    Quad {
        /// Coefficient of x².
        a: f32,
        /// Coefficient of x.
        b: f32,
        /// Constant.
        c: f32,
    },
    /// Per channel: ReLU where `relu` is true, else that channel's
    /// quadratic `a·x² + b·x + c` (format version 2).
    Mixed {
        /// Per channel: keeps ReLU.
        relu: Vec<bool>,
        /// Per channel: coefficient of x².
        a: Vec<f32>,
        /// Per channel: coefficient of x.
        b: Vec<f32>,
        /// Per channel: constant.
        c: Vec<f32>,
    },
}

impl Activation {
    /// The default quadratic, 0.2·x² + 0.5·x + 0.2 (close to ReLU on [−2, 2]).
    pub const DEFAULT_QUAD: Activation = Activation::Quad { a: 0.2, b: 0.5, c: 0.2 };

    /// Whether this is a ReLU.
    pub fn is_relu(&self) -> bool {
        matches!(self, Activation::Relu)
    }

    /// Per channel of a `channels`-channel input: `None` for a ReLU
    /// channel, else its quadratic's (a, b, c).
    pub fn per_channel(&self, channels: usize) -> Vec<Option<(f32, f32, f32)>> {
        match self {
            Activation::Relu => vec![None; channels],
            Activation::Quad { a, b, c } => vec![Some((*a, *b, *c)); channels],
            Activation::Mixed { relu, a, b, c } => (0..channels)
                .map(|k| {
                    (!relu.get(k).copied().unwrap_or(true)).then(|| {
                        (
                            a.get(k).copied().unwrap_or(0.0),
                            b.get(k).copied().unwrap_or(0.0),
                            c.get(k).copied().unwrap_or(0.0),
                        )
                    })
                })
                .collect(),
        }
    }
}

/// One layer's operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// 2-D convolution.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Square kernel size.
        kernel: usize,
        /// Stride (1 or 2).
        stride: usize,
        /// Padding.
        padding: Padding,
        /// Whether the layer has a bias.
        bias: bool,
        /// Weights `[out][in / groups][kh][kw]` (empty when in the sidecar).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        weight: Vec<f32>,
        /// Bias values `[out]` (empty when in the sidecar or without bias).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bias_values: Vec<f32>,
        /// Channel groups: input and output channels split into `groups`
        /// equal parts, output group g reading input group g only
        /// (depthwise: groups = input channels). 1: an ordinary convolution.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
    },
    /// Fully connected layer on a flat input.
    Dense {
        /// Output features.
        out_features: usize,
        /// Whether the layer has a bias.
        bias: bool,
        /// Weights `[out][in]`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        weight: Vec<f32>,
        /// Bias values `[out]`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bias_values: Vec<f32>,
    },
    /// Average pooling over square windows (no padding).
    AvgPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Max pooling over square windows; padding positions are never the
    /// maximum (PyTorch's −∞ padding). Under the protocol: a tree of
    /// comparisons, each max(a, b) = b + ReLU(a − b) by a garbled circuit
    /// (k² − 1 per window, ⌈log₂ k²⌉ rounds); after a ReLU layer the two
    /// are fused (ReLU(max) = max(ReLU)), so that ReLU costs one per window.
    MaxPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding on every side (at most kernel / 2).
        #[serde(default, skip_serializing_if = "is_zero")]
        padding: usize,
    },
    /// Batch normalisation (inference form), folded into the preceding linear layer.
    BatchNorm {
        /// Numerical epsilon.
        eps: f32,
        /// Scale per channel.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gamma: Vec<f32>,
        /// Shift per channel.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        beta: Vec<f32>,
        /// Running mean per channel.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mean: Vec<f32>,
        /// Running variance per channel.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        var: Vec<f32>,
    },
    /// Adds the output of layer `from` to this layer's input.
    Residual {
        /// The earlier layer whose output is added.
        from: usize,
    },
    /// CHW → flat vector.
    Flatten,
    /// An activation.
    Activation(Activation),
}

impl Op {
    /// The layer type's name as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::Dense { .. } => "dense",
            Op::AvgPool { .. } => "avg_pool",
            Op::MaxPool { .. } => "max_pool",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Residual { .. } => "residual",
            Op::Flatten => "flatten",
            Op::Activation(Activation::Relu) => "relu",
            Op::Activation(Activation::Quad { .. }) => "quad",
            Op::Activation(Activation::Mixed { .. }) => "mixed",
        }
    }

    /// Folds a per-output-channel scale and shift — y·scale + shift, one
    /// value for all channels or one per channel — into a conv or dense
    /// layer's weights and bias (computed in f64). Returns false (and
    /// changes nothing) for other layers.
    pub fn fold_scale_shift(&mut self, scale: &[f64], shift: &[f64]) -> bool {
        let (weight, bias, bias_values, out) = match self {
            Op::Conv2d { weight, bias, bias_values, out_channels, .. } => {
                (weight, bias, bias_values, *out_channels)
            }
            Op::Dense { weight, bias, bias_values, out_features, .. } => {
                (weight, bias, bias_values, *out_features)
            }
            _ => return false,
        };
        let at = |v: &[f64], c: usize| v.get(c).or(v.first()).copied().unwrap_or(0.0);
        let per = weight.len() / out.max(1);
        for c in 0..out {
            let s = at(scale, c);
            for w in &mut weight[c * per..(c + 1) * per] {
                *w = (*w as f64 * s) as f32;
            }
        }
        let old = std::mem::take(bias_values);
        *bias_values = (0..out)
            .map(|c| {
                let b = old.get(c).copied().unwrap_or(0.0) as f64;
                (b * at(scale, c) + at(shift, c)) as f32
            })
            .collect();
        *bias = true;
        true
    }

    /// The named parameter tensors of this layer (for the sidecar).
    pub(crate) fn tensors_mut(&mut self) -> Vec<(&'static str, &mut Vec<f32>)> {
        match self {
            Op::Conv2d { weight, bias_values, .. } | Op::Dense { weight, bias_values, .. } => {
                vec![("weight", weight), ("bias_values", bias_values)]
            }
            Op::BatchNorm { gamma, beta, mean, var, .. } => {
                vec![("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)]
            }
            _ => Vec::new(),
        }
    }
}

/// A layer: an operation and, optionally, which earlier layer it reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// The operation.
    #[serde(flatten)]
    pub op: Op,
    /// The layer whose output this layer reads (default: the previous one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<usize>,
    /// On an activation with ReLU channels: the reduced ReLU's window
    /// (format version 3; absent: the exact circuit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relu_bits: Option<delphi_crypto::relu::spec::ReluBits>,
    /// The protocol of each of the layer's truncations, in program order,
    /// as the server settled them from its weights (the bounded exact
    /// circuit only where the bound is proven). Recorded in the
    /// architecture a client receives, so both parties run the same
    /// program; absent: lowering settles them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncations: Option<Vec<delphi_crypto::trunc::TruncKind>>,
}

impl Layer {
    /// The layer this one reads, when it is layer `index` of its network:
    /// its `input`, else the previous layer (none for the first, which
    /// reads the network's input).
    pub fn source(&self, index: usize) -> Option<usize> {
        self.input.or(index.checked_sub(1))
    }

    /// Whether the layer is an activation with ReLU channels (where
    /// `relu_bits` may go).
    pub fn has_relu(&self) -> bool {
        match &self.op {
            Op::Activation(Activation::Relu) => true,
            Op::Activation(Activation::Mixed { relu, .. }) => relu.iter().any(|r| *r),
            _ => false,
        }
    }

    /// A layer reading the previous layer's output.
    pub fn new(op: Op) -> Self {
        Layer { op, input: None, relu_bits: None, truncations: None }
    }
}

/// Fixed-point parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedPointSpec {
    /// Fractional bits of activations.
    pub frac_bits: u32,
    /// Fractional bits of weights (default 12: batch-norm folding makes small
    /// weights that 8 bits would round by tens of percent).
    #[serde(default = "default_weight_bits")]
    pub weight_frac_bits: u32,
    /// How truncations round: `exact` (the default: a deterministic
    /// function of the value) or `faithful-leaky` (the opt-in whose
    /// rounding depends on the shares; docs/security.md).
    #[serde(default, skip_serializing_if = "TruncChoice::is_default")]
    pub truncation: TruncChoice,
}

crate::text_enum! {
    /// How a network's truncations round (`fixed_point.truncation`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub enum TruncChoice("truncation") {
        /// Exact: ⌊(v + 2^(f−1))/2^f⌋, a deterministic function of the
        /// value — the bounded circuit where the plan proves |v| ≤ 2^38,
        /// the wide one elsewhere.
        #[default]
        Exact = "exact",
        /// The one-bit faithful truncation: cheapest online, but it rounds
        /// up or down depending on the shares, which a client that repeats
        /// a query can exploit.
        FaithfulLeaky = "faithful-leaky",
    }
}

impl TruncChoice {
    fn is_default(&self) -> bool {
        *self == TruncChoice::Exact
    }
}

fn default_weight_bits() -> u32 {
    DEFAULT_WEIGHT_FRAC_BITS
}

/// Default fractional bits of weights.
pub const DEFAULT_WEIGHT_FRAC_BITS: u32 = 12;

/// Free-form facts about where a description came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Dataset the network was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Test accuracy in floating point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_float: Option<f64>,
    /// Test accuracy in fixed point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_fixed: Option<f64>,
    /// Predicted cost, as the cost model wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_cost: Option<serde_json::Value>,
    /// The planner run that produced the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner_run: Option<String>,
    /// The per-channel normalisation the network expects of its raw input.
    /// Public: a client needs it to prepare its input, so it is kept in
    /// the architecture the server shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_normalization: Option<Normalization>,
    /// The range `[lo, hi]` of the values the network takes (after any
    /// input normalisation). Public, like the normalisation: the client's
    /// inputs are checked against it, and the value ranges of the plan are
    /// bounded from it ([`crate::range`]). Absent: what the normalisation
    /// implies for raw values in [0, 1], or else [-1, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_range: Option<[f64; 2]>,
    /// The largest |input| of each activation layer on the training data,
    /// as the trainer measured it when it exported the network (server-side
    /// only: not part of the architecture a client sees).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activation_ranges: Vec<ActivationRange>,
    /// How the layers' reduced-ReLU windows were chosen, when a planner
    /// chose them (server-side, like the ranges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relu_bits: Option<WindowChoice>,
    /// Anything else.
    #[serde(default, flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// How a network's reduced-ReLU windows were chosen: what the planner
/// records in the description's metadata (`metadata.relu_bits`) beside the
/// windows the layers carry. A figure not measured is `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WindowChoice {
    /// The rule that chose them: `auto` (exact windows `0..hi` from proven
    /// bounds, `--relu-bits auto`) or `reduced-leaky` (measured windows
    /// `lo..hi`, lo ≥ 1). Older files say `auto` for measured windows too:
    /// the windows themselves tell (lo = 0 is exact).
    pub mode: String,
    /// The margin over the largest measured ReLU input the windows hold
    /// (none when no window was kept).
    pub margin: Option<f64>,
    /// Fixed-point validation accuracy with full-width ReLUs.
    pub fixed_valid_accuracy_full: Option<f64>,
    /// Fixed-point validation accuracy with these windows.
    pub fixed_valid_accuracy_reduced: Option<f64>,
    /// Validation images both accuracies were measured on (none: nothing
    /// measured, e.g. a network without ReLU layers).
    pub valid_images: Option<usize>,
    /// `layer:lo..hi` per layer ([`crate::window::describe_windows`]), or a
    /// sentence saying why there are none.
    pub windows: String,
    /// Fixed-point test accuracy with full-width ReLUs (measured after the
    /// choice, which never sees the test split; `delphi-plan windows --test`).
    pub fixed_test_accuracy_full: Option<f64>,
    /// Fixed-point test accuracy with these windows.
    pub fixed_test_accuracy_reduced: Option<f64>,
    /// Test images both were measured on.
    pub test_images: Option<usize>,
    /// The cost model's prediction for the network at full width, as it
    /// wrote it (the prediction with these windows is
    /// `metadata.predicted_cost`).
    pub predicted_full_width: Option<serde_json::Value>,
}

impl WindowChoice {
    /// A choice by `mode` with nothing measured yet.
    pub fn new(mode: &str, windows: String) -> WindowChoice {
        WindowChoice { mode: mode.into(), windows, ..WindowChoice::default() }
    }
}

/// The measured input range of one activation layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationRange {
    /// The activation layer's index in `layers`.
    pub layer: usize,
    /// The largest |value| entering it, in real units.
    pub max_abs: f64,
}

/// The normalisation a network expects: its input is
/// `(raw − mean[c]) / std[c]` per channel `c`, `raw` being what the data
/// holds before normalisation (pixels / 255 for the image datasets). One
/// value applies to every channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// Mean per channel (or one for all).
    pub mean: Vec<f32>,
    /// Standard deviation per channel (or one for all).
    pub std: Vec<f32>,
    /// What the raw input is, for people (e.g. "u8 / 255, CHW").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixels: Option<String>,
}

impl Normalization {
    /// The identity (the network takes its input as it is).
    pub fn identity() -> Self {
        Normalization { mean: vec![0.0], std: vec![1.0], pixels: None }
    }

    /// Whether it changes nothing.
    pub fn is_identity(&self) -> bool {
        self.mean.iter().all(|m| *m == 0.0) && self.std.iter().all(|s| *s == 1.0)
    }

    /// Checks the values against an input with `channels` channels.
    pub fn check(&self, channels: usize) -> std::result::Result<(), String> {
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != channels {
                return Err(format!(
                    "input normalisation: {} {name} values for {channels} channels (give 1 or {channels})",
                    v.len()
                ));
            }
            if !v.iter().all(|x| x.is_finite()) {
                return Err(format!("input normalisation: a {name} value is not finite"));
            }
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return Err("input normalisation: every std must be positive".into());
        }
        Ok(())
    }

    /// Mean and standard deviation of channel `c`.
    pub fn channel(&self, c: usize) -> (f32, f32) {
        let pick = |v: &[f32]| v.get(c).or(v.first()).copied();
        (pick(&self.mean).unwrap_or(0.0), pick(&self.std).unwrap_or(1.0))
    }

    /// Normalises one raw CHW input of `shape` in place.
    pub fn apply(&self, x: &mut [f32], shape: Shape) -> Result<()> {
        self.check(shape.channels).map_err(NetError::Invalid)?;
        if x.len() != shape.len() {
            return Err(NetError::Invalid(format!(
                "input has {} values, the network takes {} ({shape})",
                x.len(),
                shape.len()
            )));
        }
        let per = (shape.height * shape.width).max(1);
        for (k, v) in x.iter_mut().enumerate() {
            let (m, s) = self.channel(k / per);
            *v = (*v - m) / s;
        }
        Ok(())
    }
}

/// A network description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version.
    pub version: u32,
    /// A name for people.
    pub name: String,
    /// The input's shape.
    pub input: Shape,
    /// Fixed-point parameters.
    pub fixed_point: FixedPointSpec,
    /// The layers, in order.
    pub layers: Vec<Layer>,
    /// Safetensors sidecar holding the weights, relative to the description file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_file: Option<String>,
    /// Provenance.
    #[serde(default)]
    pub metadata: Metadata,
}

/// Where weights go when saving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightStorage {
    /// Inside the JSON.
    Inline,
    /// In a `.safetensors` file beside the JSON.
    Sidecar,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NetError + '_ {
    move |source| NetError::Io { path: path.to_path_buf(), source }
}

impl Network {
    /// An empty network on `input` with `frac_bits` fractional bits.
    pub fn new(name: &str, input: Shape, frac_bits: u32) -> Self {
        Network {
            format: FORMAT.into(),
            version: VERSION,
            name: name.into(),
            input,
            fixed_point: FixedPointSpec {
                frac_bits,
                weight_frac_bits: DEFAULT_WEIGHT_FRAC_BITS,
                truncation: TruncChoice::Exact,
            },
            layers: Vec::new(),
            weights_file: None,
            metadata: Metadata::default(),
        }
    }

    /// Appends a layer; returns its index.
    pub fn push(&mut self, op: Op) -> usize {
        self.layers.push(Layer::new(op));
        self.layers.len() - 1
    }

    /// Appends a layer reading the output of `input`; returns its index.
    pub fn push_from(&mut self, input: usize, op: Op) -> usize {
        self.layers.push(Layer { op, input: Some(input), relu_bits: None, truncations: None });
        self.layers.len() - 1
    }

    /// The same network with every weight replaced by a neutral value
    /// (zeros; identity batch norm) and quadratic constants set to 0: what
    /// a client may learn. The quadratic coefficients a and b stay: the
    /// client's share of a·x² + b·x needs them (disclosed, see
    /// docs/security.md).
    pub fn architecture_only(&self) -> Network {
        let mut n = self.clone();
        // What the weights decide about the program, recorded so that the
        // client lowers the same one: each truncation's circuit.
        if let Ok(prog) = crate::fixed::FixedProgram::lower(self) {
            for (i, l) in n.layers.iter_mut().enumerate() {
                let kinds: Vec<_> = prog
                    .nodes
                    .iter()
                    .filter(|x| x.layer == Some(i))
                    .filter_map(|x| match x.op {
                        crate::fixed::FixedOp::Trunc { kind, .. } => Some(kind),
                        _ => None,
                    })
                    .collect();
                l.truncations = (!kinds.is_empty()).then_some(kinds);
            }
        }
        n.weights_file = None;
        n.metadata = Metadata {
            input_normalization: self.metadata.input_normalization.clone(),
            input_range: self.metadata.input_range,
            ..Metadata::default()
        };
        for l in &mut n.layers {
            // The client computes its share of a·x² + b·x; the constant c
            // is the server's alone, so the client does not receive it.
            match &mut l.op {
                Op::Activation(Activation::Quad { c, .. }) => *c = 0.0,
                Op::Activation(Activation::Mixed { c, .. }) => c.iter_mut().for_each(|v| *v = 0.0),
                _ => {}
            }
            for (name, t) in l.op.tensors_mut() {
                let neutral = if name == "gamma" || name == "var" { 1.0 } else { 0.0 };
                t.iter_mut().for_each(|v| *v = neutral);
            }
        }
        n
    }

    /// The range of the values the network takes: `metadata.input_range`
    /// if set; else what the input normalisation implies for raw values in
    /// [0, 1]; else [-1, 1].
    pub fn input_range(&self) -> (f64, f64) {
        if let Some([lo, hi]) = self.metadata.input_range {
            return (lo, hi);
        }
        match &self.metadata.input_normalization {
            Some(n) => (0..self.input.channels.max(1)).fold(
                (f64::INFINITY, f64::NEG_INFINITY),
                |(lo, hi), c| {
                    let (m, s) = n.channel(c);
                    let (a, b) = ((0.0 - m as f64) / s as f64, (1.0 - m as f64) / s as f64);
                    (lo.min(a.min(b)), hi.max(a.max(b)))
                },
            ),
            None => (-1.0, 1.0),
        }
    }

    /// Refuses an input (as the network takes it, normalised) with a value
    /// outside [`Network::input_range`], naming the first such value.
    pub fn check_input_range(&self, x: &[f32]) -> Result<()> {
        let (lo, hi) = self.input_range();
        // Rounding in the normalisation may move a value by an ulp.
        let slack = 1e-4 * (hi - lo).abs().max(1.0);
        match x
            .iter()
            .position(|&v| !v.is_finite() || (v as f64) < lo - slack || (v as f64) > hi + slack)
        {
            None => Ok(()),
            Some(index) => Err(NetError::InputRange { index, value: x[index], lo, hi }),
        }
    }

    /// Indices of the activation layers, in order.
    pub fn activation_layers(&self) -> Vec<usize> {
        self.layers
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l.op, Op::Activation(_)))
            .map(|(i, _)| i)
            .collect()
    }

    /// Parses a description from JSON text (weights must be inline).
    pub fn from_json(text: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Loads and validates a description, reading its sidecar if it names one.
    pub fn load(path: &Path) -> Result<Self> {
        let net = Self::read(path)?;
        net.validate()?;
        Ok(net)
    }

    /// Loads a description that may have no weights at all (an
    /// architecture to be trained): returns it and whether it carries
    /// weights. A description with some tensors but not all is an error
    /// naming the first incomplete layer.
    pub fn load_architecture(path: &Path) -> Result<(Self, bool)> {
        let net = Self::read(path)?;
        if net.weights_file.is_none() && !net.has_weights() {
            net.validate_architecture()?;
            return Ok((net, false));
        }
        net.validate()?;
        Ok((net, true))
    }

    /// Whether any parameter tensor holds values.
    pub fn has_weights(&self) -> bool {
        self.layers.iter().any(|l| layer_values(&l.op).next().is_some())
    }

    fn read(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if !meta.is_file() {
            // A device or a pipe reports no size; /dev/zero would be read
            // up to the bound before failing.
            return Err(NetError::Invalid(format!("{} is not a regular file", path.display())));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(NetError::Invalid(format!(
                "{} is {} bytes (at most {MAX_FILE_BYTES})",
                path.display(),
                meta.len()
            )));
        }
        // The size is checked again while reading: a device or a growing
        // file can report less than it yields.
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(io_err(path))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(NetError::Invalid(format!(
                "{} holds more than {MAX_FILE_BYTES} bytes",
                path.display()
            )));
        }
        // Check the header first so an unknown version is reported as such.
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let header: Header = serde_json::from_str(&text)
            .map_err(|error| NetError::Json { path: path.to_path_buf(), error })?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(NetError::Invalid(format!(
                "{}: \"format\" must be \"{FORMAT}\"",
                path.display()
            )));
        }
        match header.version {
            Some(v) if VERSIONS.contains(&v) => {}
            Some(found) => return Err(NetError::Version { found, supported: VERSION }),
            None => return Err(NetError::Invalid(format!("{}: no \"version\"", path.display()))),
        }
        let keys: keys::Keys = serde_json::from_str(&text)
            .map_err(|error| NetError::Json { path: path.to_path_buf(), error })?;
        if let Some(unknown) = keys.first_unknown() {
            return Err(NetError::Invalid(format!(
                "{}: unknown field {unknown} (a misspelling? it would be ignored)",
                path.display()
            )));
        }
        let mut net: Network = serde_json::from_str(&text)
            .map_err(|error| NetError::Json { path: path.to_path_buf(), error })?;
        if let Some(w) = net.weights_file.clone() {
            let side = path.parent().unwrap_or(Path::new(".")).join(&w);
            net.read_sidecar(&side)?;
        }
        Ok(net)
    }

    /// Saves the description (validated first).
    pub fn save(&self, path: &Path, storage: WeightStorage) -> Result<()> {
        match storage {
            WeightStorage::Inline => self.save_to(path, None),
            WeightStorage::Sidecar => self.save_to(path, Some(&path.with_extension("safetensors"))),
        }
    }

    /// Saves the description with its weights in the safetensors file
    /// `sidecar`, named relative to the description when it sits in the
    /// same folder (else by its absolute path).
    pub fn save_with_sidecar(&self, path: &Path, sidecar: &Path) -> Result<()> {
        self.save_to(path, Some(sidecar))
    }

    fn save_to(&self, path: &Path, sidecar: Option<&Path>) -> Result<()> {
        self.validate()?;
        let dir_of = |p: &Path| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        let dir = dir_of(path);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut out = self.clone();
        out.weights_file = None;
        if let Some(side) = sidecar {
            let name = side
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| NetError::Invalid(format!("{}: no file name", side.display())))?;
            let side_dir = dir_of(side);
            std::fs::create_dir_all(&side_dir).map_err(io_err(&side_dir))?;
            let same = match (dir.canonicalize(), side_dir.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
            out.write_sidecar(side)?;
            out.weights_file = Some(if same {
                name
            } else {
                let abs = side_dir.canonicalize().map_err(io_err(&side_dir))?;
                abs.join(name).to_string_lossy().into_owned()
            });
        }
        let json = serde_json::to_string(&out).map_err(|e| NetError::Invalid(e.to_string()))?;
        std::fs::write(path, json).map_err(io_err(path))
    }

    /// Moves every parameter tensor into a safetensors file (and empties them here).
    fn write_sidecar(&mut self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Vec<u8>, usize)> = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, t) in layer.op.tensors_mut() {
                if t.is_empty() {
                    continue;
                }
                let bytes: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((format!("layers.{i}.{name}"), bytes, t.len()));
                t.clear();
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, b, len)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| NetError::Weights {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(views, None, path)
            .map_err(|e| NetError::Weights { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Fills parameter tensors from a safetensors file.
    fn read_sidecar(&mut self, path: &Path) -> Result<()> {
        let bad = |reason: String| NetError::Weights { path: path.to_path_buf(), reason };
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if !meta.is_file() {
            // A device or a pipe reports no size; /dev/zero would be read
            // up to the bound before failing.
            return Err(NetError::Invalid(format!("{} is not a regular file", path.display())));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(bad(format!("{} bytes (at most {MAX_FILE_BYTES})", meta.len())));
        }
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, t) in layer.op.tensors_mut() {
                let key = format!("layers.{i}.{name}");
                let Ok(view) = st.tensor(&key) else { continue };
                if view.dtype() != safetensors::Dtype::F32 {
                    return Err(bad(format!("{key} is {:?}, not F32", view.dtype())));
                }
                *t = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
            }
        }
        Ok(())
    }

    /// Checks that the engine can run this description and returns every
    /// layer's output shape. Errors name the layer and the reason.
    pub fn validate(&self) -> Result<Vec<Shape>> {
        self.check(true)
    }

    /// Checks the architecture as [`Network::validate`] does but accepts
    /// empty parameter tensors (a network still to be initialised and
    /// trained); returns every layer's output shape.
    pub fn validate_architecture(&self) -> Result<Vec<Shape>> {
        self.check(false)
    }

    fn check(&self, weights: bool) -> Result<Vec<Shape>> {
        if self.format != FORMAT {
            return Err(NetError::Invalid(format!("\"format\" must be \"{FORMAT}\"")));
        }
        if !VERSIONS.contains(&self.version) {
            return Err(NetError::Version { found: self.version, supported: VERSION });
        }
        let (f, fw) = (self.fixed_point.frac_bits, self.fixed_point.weight_frac_bits);
        if f == 0 || fw == 0 || f + fw > 28 || 2 * f > 28 {
            return Err(NetError::Invalid(format!(
                "frac_bits {f} and weight_frac_bits {fw}: each at least 1, products carry f + f_w \
                 (and 2f) bits, at most 28 in a 41-bit field"
            )));
        }
        if self.input.is_empty() {
            return Err(NetError::Invalid("the input shape is empty".into()));
        }
        if self.input.len() > MAX_ELEMENTS {
            return Err(NetError::Invalid(format!(
                "the input shape {} has more than {MAX_ELEMENTS} elements",
                self.input
            )));
        }
        if let Some(n) = &self.metadata.input_normalization {
            n.check(self.input.channels).map_err(NetError::Invalid)?;
        }
        if let Some([lo, hi]) = self.metadata.input_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(NetError::Invalid(format!(
                    "metadata.input_range [{lo}, {hi}] must be two finite numbers, the lower first"
                )));
            }
        }
        if self.layers.is_empty() {
            return Err(NetError::Invalid("no layers".into()));
        }
        let mut shapes: Vec<Shape> = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let kind = layer.op.kind();
            let err = |reason: String| layer_err(i, kind, reason);
            let src = match layer.input {
                Some(j) if j >= i => {
                    return Err(err(format!("input {j} is not an earlier layer")));
                }
                Some(j) => Some(j),
                None => i.checked_sub(1),
            };
            let x = src.map(|j| shapes[j]).unwrap_or(self.input);
            if let Some(bits) = layer.relu_bits {
                if self.version < 3 {
                    return Err(err(format!(
                        "\"relu_bits\" needs format version 3 (this file says {})",
                        self.version
                    )));
                }
                let pool = matches!(layer.op, Op::MaxPool { .. });
                if pool && !bits.is_exact() {
                    return Err(err(format!(
                        "a max pool's comparisons take an exact window (0..hi), not {bits}"
                    )));
                }
                if !layer.has_relu() && !pool {
                    return Err(err(
                        "\"relu_bits\" belongs on an activation with ReLU channels (or a max \
                         pool, for its comparisons)"
                            .into(),
                    ));
                }
                // The truncation is known once lowered; here the window alone.
                bits.check(0).map_err(|e| err(e.to_string()))?;
            }
            let out = match &layer.op {
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
                    if *groups == 0 || x.channels % groups != 0 || out_channels % groups != 0 {
                        return Err(err(format!(
                            "{groups} groups do not divide {} input and {out_channels} output \
                             channels",
                            x.channels
                        )));
                    }
                    if *stride != 1 && *stride != 2 {
                        return Err(err(format!("stride {stride} unsupported (1 or 2)")));
                    }
                    if *kernel == 0 || *out_channels == 0 {
                        return Err(err("kernel and out_channels must be positive".into()));
                    }
                    if *kernel > 64 || *out_channels > MAX_ELEMENTS {
                        return Err(err(format!(
                            "kernel {kernel} (at most 64) or {out_channels} output channels (at most {MAX_ELEMENTS})"
                        )));
                    }
                    if *padding == Padding::Same && kernel % 2 == 0 {
                        return Err(err(format!(
                            "\"same\" padding needs an odd kernel, not {kernel}"
                        )));
                    }
                    let pad = padding.amount(*kernel);
                    if pad >= *kernel {
                        return Err(err(format!(
                            "padding {pad} must be smaller than the kernel {kernel}"
                        )));
                    }
                    if x.height + 2 * pad < *kernel || x.width + 2 * pad < *kernel {
                        return Err(err(format!(
                            "kernel {kernel} larger than the padded input {x}"
                        )));
                    }
                    let cin = x.channels / groups;
                    let want = out_channels.saturating_mul(cin).saturating_mul(kernel * kernel);
                    if weight.len() != want && (weights || !weight.is_empty()) {
                        return Err(err(format!(
                            "weights of the wrong size: {} values, expected {want} ({out_channels}×{cin}×{kernel}×{kernel})",
                            weight.len(),
                        )));
                    }
                    if weights || !bias_values.is_empty() {
                        check_bias(*bias, bias_values, *out_channels).map_err(err)?;
                    }
                    x.windowed(*out_channels, *kernel, *stride, pad)
                }
                Op::Dense { out_features, bias, weight, bias_values } => {
                    if x.height != 1 || x.width != 1 {
                        return Err(err(format!("input {x} is not flat (add a flatten layer)")));
                    }
                    if *out_features == 0 {
                        return Err(err("out_features must be positive".into()));
                    }
                    let want = out_features.saturating_mul(x.channels);
                    if weight.len() != want && (weights || !weight.is_empty()) {
                        return Err(err(format!(
                            "weights of the wrong size: {} values, expected {want} ({out_features}×{})",
                            weight.len(),
                            x.channels
                        )));
                    }
                    if weights || !bias_values.is_empty() {
                        check_bias(*bias, bias_values, *out_features).map_err(err)?;
                    }
                    Shape::new(*out_features, 1, 1)
                }
                Op::AvgPool { kernel, stride } => {
                    if *kernel == 0 || *stride == 0 {
                        return Err(err("kernel and stride must be positive".into()));
                    }
                    if x.height < *kernel || x.width < *kernel {
                        return Err(err(format!("window {kernel} larger than the input {x}")));
                    }
                    x.windowed(x.channels, *kernel, *stride, 0)
                }
                Op::MaxPool { kernel, stride, padding } => {
                    if *kernel == 0 || *stride == 0 {
                        return Err(err("kernel and stride must be positive".into()));
                    }
                    if 2 * padding > *kernel {
                        return Err(err(format!(
                            "padding {padding} more than half the window {kernel}"
                        )));
                    }
                    if x.height + 2 * padding < *kernel || x.width + 2 * padding < *kernel {
                        return Err(err(format!("window {kernel} larger than the input {x}")));
                    }
                    x.windowed(x.channels, *kernel, *stride, *padding)
                }
                Op::BatchNorm { eps, gamma, beta, mean, var } => {
                    let prev = src.map(|j| &self.layers[j].op);
                    if !matches!(prev, Some(Op::Conv2d { .. } | Op::Dense { .. })) {
                        return Err(err(
                            "batch norm must read a conv2d or dense layer (it is folded into it)"
                                .into(),
                        ));
                    }
                    if let Some(j) = src {
                        if self.readers(j) > 1 {
                            return Err(err(format!(
                                "layer {j} is also read elsewhere, so this batch norm cannot be folded into it"
                            )));
                        }
                    }
                    for (name, v) in
                        [("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)]
                    {
                        if v.len() != x.channels && (weights || !v.is_empty()) {
                            return Err(err(format!(
                                "{name} has {} values for {} channels",
                                v.len(),
                                x.channels
                            )));
                        }
                    }
                    if eps.is_nan()
                        || *eps < 0.0
                        || var.iter().any(|v| (*v + eps).is_nan() || *v + eps <= 0.0)
                    {
                        return Err(err("variance + eps must be positive".into()));
                    }
                    x
                }
                Op::Residual { from } => {
                    if *from >= i {
                        return Err(err(format!(
                            "residual points forward (from {from}, at layer {i})"
                        )));
                    }
                    if shapes[*from] != x {
                        return Err(err(format!(
                            "shape mismatch: input {x} but layer {from} gives {}",
                            shapes[*from]
                        )));
                    }
                    x
                }
                Op::Flatten => Shape::new(x.len(), 1, 1),
                Op::Activation(Activation::Quad { a, b, c }) => {
                    if ![a, b, c].iter().all(|v| v.is_finite()) {
                        return Err(err("quadratic coefficients must be finite".into()));
                    }
                    x
                }
                Op::Activation(Activation::Relu) => x,
                Op::Activation(Activation::Mixed { relu, a, b, c }) => {
                    if self.version < 2 {
                        return Err(err(
                            "a mixed activation needs format version 2 (this file says 1)".into(),
                        ));
                    }
                    for (name, len) in
                        [("relu", relu.len()), ("a", a.len()), ("b", b.len()), ("c", c.len())]
                    {
                        if len != x.channels {
                            return Err(err(format!(
                                "\"{name}\" has {len} entries but the input {x} has {} channels",
                                x.channels
                            )));
                        }
                    }
                    if ![a, b, c].iter().all(|v| v.iter().all(|v| v.is_finite())) {
                        return Err(err("quadratic coefficients must be finite".into()));
                    }
                    x
                }
            };
            for v in layer_values(&layer.op) {
                if !v.is_finite() {
                    return Err(err("a parameter is not finite".into()));
                }
            }
            if out.len() > MAX_ELEMENTS {
                return Err(err(format!("its output {out} has more than {MAX_ELEMENTS} elements")));
            }
            shapes.push(out);
        }
        Ok(shapes)
    }

    /// How many layers read the output of layer `j` (as input or residual).
    pub fn readers(&self, j: usize) -> usize {
        self.layers
            .iter()
            .enumerate()
            .filter(|(i, l)| {
                let reads = l.input.unwrap_or(i.wrapping_sub(1)) == j;
                let adds = matches!(l.op, Op::Residual { from } if from == j);
                reads || adds
            })
            .count()
    }

    /// The same network with every batch norm folded into the conv2d or
    /// dense layer it reads (w·γ/√(σ²+ε), (b − μ)·γ/√(σ²+ε) + β, computed
    /// in f64) and removed; layer references are renumbered. The engine
    /// folds the same way when lowering, so both forms compute the same
    /// function (up to f32 rounding of the folded weights).
    pub fn fold_batch_norm(&self) -> Result<Network> {
        self.validate()?;
        let n = self.layers.len();
        let src = |k: usize| self.layers[k].source(k);
        let mut layers: Vec<Layer> = self.layers.clone();
        let mut keep = vec![true; n];
        for (j, layer) in self.layers.iter().enumerate() {
            if let Op::BatchNorm { eps, gamma, beta, mean, var } = &layer.op {
                let Some(i) = src(j) else { continue };
                let scale: Vec<f64> = gamma
                    .iter()
                    .zip(var)
                    .map(|(g, v)| *g as f64 / (*v as f64 + *eps as f64).sqrt())
                    .collect();
                let shift: Vec<f64> =
                    (0..scale.len()).map(|c| beta[c] as f64 - mean[c] as f64 * scale[c]).collect();
                if !layers[i].op.fold_scale_shift(&scale, &shift) {
                    continue;
                }
                keep[j] = false;
            }
        }
        // Old index -> new index (a removed batch norm maps to its conv's).
        let mut map = vec![0usize; n];
        let mut next = 0;
        for k in 0..n {
            if keep[k] {
                map[k] = next;
                next += 1;
            } else if let Some(i) = src(k) {
                map[k] = map[i];
            }
        }
        let out = renumber(&layers, &keep, &map);
        let mut net = self.clone();
        net.layers = out;
        net.validate()?;
        Ok(net)
    }

    /// The output shape (validates).
    pub fn output_shape(&self) -> Result<Shape> {
        let shapes = self.validate()?;
        shapes.last().copied().ok_or_else(|| NetError::Invalid("no layers".into()))
    }
}

/// The layers marked in `keep`, with every reference (`input`, a
/// residual's `from`) renumbered by `map` (old index → new index).
pub fn renumber(layers: &[Layer], keep: &[bool], map: &[usize]) -> Vec<Layer> {
    let mut out = Vec::with_capacity(keep.iter().filter(|&&k| k).count());
    for (k, layer) in layers.iter().enumerate() {
        if !keep.get(k).copied().unwrap_or(false) {
            continue;
        }
        let mut l = layer.clone();
        let src = layer.source(k).map(|s| map[s]);
        l.input = match src {
            Some(s) if s + 1 == map[k] => None,
            other => other,
        };
        if let Op::Residual { from } = &mut l.op {
            *from = map[*from];
        }
        out.push(l);
    }
    out
}

fn layer_values(op: &Op) -> impl Iterator<Item = &f32> {
    let slices: Vec<&[f32]> = match op {
        Op::Conv2d { weight, bias_values, .. } | Op::Dense { weight, bias_values, .. } => {
            vec![weight, bias_values]
        }
        Op::BatchNorm { gamma, beta, mean, var, .. } => vec![gamma, beta, mean, var],
        _ => Vec::new(),
    };
    slices.into_iter().flatten()
}

fn check_bias(bias: bool, values: &[f32], n: usize) -> std::result::Result<(), String> {
    match (bias, values.len()) {
        (true, len) if len != n => {
            Err(format!("bias of the wrong size: {len} values, expected {n}"))
        }
        (false, len) if len != 0 => Err(format!("{len} bias values but \"bias\": false")),
        _ => Ok(()),
    }
}

/// The field names of a description, read without holding any value, to
/// refuse a field this format does not have (which serde would drop).
mod keys {
    use std::fmt;

    use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

    const TOP: &[&str] = &[
        "format",
        "version",
        "name",
        "input",
        "fixed_point",
        "layers",
        "weights_file",
        "metadata",
    ];

    fn allowed(ty: &str) -> &'static [&'static str] {
        match ty {
            "conv2d" => &[
                "out_channels",
                "kernel",
                "stride",
                "padding",
                "bias",
                "weight",
                "bias_values",
                "groups",
            ],
            "dense" => &["out_features", "bias", "weight", "bias_values"],
            "avg_pool" => &["kernel", "stride"],
            "max_pool" => &["kernel", "stride", "padding", "relu_bits"],
            "batch_norm" => &["eps", "gamma", "beta", "mean", "var"],
            "residual" => &["from"],
            "activation" => &["kind", "a", "b", "c", "relu", "relu_bits"],
            _ => &[],
        }
    }

    /// One layer's field names and its type.
    pub(super) struct LayerKeys {
        ty: String,
        keys: Vec<String>,
    }

    /// The top-level field names and each layer's.
    pub(super) struct Keys {
        top: Vec<String>,
        layers: Vec<LayerKeys>,
    }

    impl Keys {
        /// The first field the format does not have, as `layers[3].wieght`.
        pub(super) fn first_unknown(&self) -> Option<String> {
            if let Some(k) = self.top.iter().find(|k| !TOP.contains(&k.as_str())) {
                return Some(format!("{k:?}"));
            }
            self.layers.iter().enumerate().find_map(|(i, l)| {
                l.keys
                    .iter()
                    .find(|k| {
                        !matches!(k.as_str(), "type" | "input")
                            && !allowed(&l.ty).contains(&k.as_str())
                    })
                    .map(|k| format!("\"{k}\" in layer {i} ({})", l.ty))
            })
        }
    }

    /// A map's keys in order, with the value of one of them (`special`)
    /// read as `T` and every other value skipped.
    struct KeysVisitor<T> {
        special: &'static str,
        expecting: &'static str,
        _value: std::marker::PhantomData<T>,
    }

    impl<T> KeysVisitor<T> {
        fn new(special: &'static str, expecting: &'static str) -> Self {
            KeysVisitor { special, expecting, _value: std::marker::PhantomData }
        }
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for KeysVisitor<T> {
        type Value = (Vec<String>, Option<T>);
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut keys, mut value) = (Vec::new(), None);
            while let Some(k) = map.next_key::<String>()? {
                if k == self.special {
                    value = Some(map.next_value::<T>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
                keys.push(k);
            }
            Ok((keys, value))
        }
    }

    impl<'de> Deserialize<'de> for LayerKeys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let (keys, ty) =
                d.deserialize_map(KeysVisitor::<String>::new("type", "a layer object"))?;
            Ok(LayerKeys { ty: ty.unwrap_or_default(), keys })
        }
    }

    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let (top, layers) = d.deserialize_map(KeysVisitor::<Vec<LayerKeys>>::new(
                "layers",
                "a network description object",
            ))?;
            Ok(Keys { top, layers: layers.unwrap_or_default() })
        }
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}
