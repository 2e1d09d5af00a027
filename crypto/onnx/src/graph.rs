//! The translation of an ONNX graph into a description.
//!
//! Nodes are visited in the graph's (topological) order. Every tensor is
//! either a constant (initializers, `Constant` nodes and the shape
//! arithmetic exporters write around `Reshape`, folded here) or a value of
//! the network: an output of a description layer `x` (or of the input)
//! together with a pending scalar polynomial `a·x² + b·x + c`. The
//! polynomial is how the quadratic activation is recognised whatever order
//! the `Mul`/`Add` nodes come in; it becomes a layer only when something
//! needs it (a conv, a ReLU, a residual add, the output): a quadratic
//! activation when `a ≠ 0`, otherwise a scale and shift folded into the
//! conv, dense or batch-norm layer before it (or into the input
//! normalisation). Per-channel scales and shifts (a `BatchNormalization`
//! after something other than a conv, a bias `Add` after `MatMul`) fold at
//! once the same way. A layer is folded into in place only when nothing
//! else reads it; otherwise a copy is folded and the unused original is
//! pruned at the end.

use std::collections::HashMap;

use delphi_net::desc::Metadata;
use delphi_net::{Activation, Layer, Network, Normalization, Op, Padding, Shape};
use onnx_ir::{ModelProto, NodeProto};

use crate::proto::{self, Attrs, Const, Data};
use crate::{ImportOptions, Imported, OnnxError, Result, MIN_OPSET};

/// The symbolic batch dimension inside folded shape arithmetic.
const BATCH: i64 = i64::MIN / 4;

/// Where a value of the network comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    /// The network's input (after the input normalisation).
    Input,
    /// The output of description layer `k`.
    Layer(usize),
}

/// How a four-dimensional ONNX tensor lays out the description's CHW data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Nchw,
    Nhwc,
}

/// A tensor of the network: `a·x² + b·x + c` of a description value `x`.
#[derive(Clone, Debug)]
struct Val {
    src: Src,
    /// Logical CHW shape (a vector is n×1×1).
    shape: Shape,
    /// ONNX rank 2 (`[N, n]`) rather than 4.
    flat: bool,
    layout: Layout,
    /// For a vector: ONNX element `j` is description element `perm[j]`.
    perm: Option<Vec<usize>>,
    a: f32,
    b: f32,
    c: f32,
}

impl Val {
    fn identity(src: Src, shape: Shape, flat: bool, layout: Layout) -> Val {
        Val { src, shape, flat, layout, perm: None, a: 0.0, b: 1.0, c: 0.0 }
    }

    fn is_identity(&self) -> bool {
        self.a == 0.0 && self.b == 1.0 && self.c == 0.0
    }

    fn degree(&self) -> usize {
        if self.a != 0.0 {
            2
        } else if self.b != 0.0 {
            1
        } else {
            0
        }
    }

    /// The same value relabelled onto `src` (after it became a layer).
    fn at(&self, src: Src) -> Val {
        Val { src, a: 0.0, b: 1.0, c: 0.0, ..self.clone() }
    }

    /// The dimensions ONNX sees, batch first.
    fn view(&self) -> Vec<i64> {
        let s = self.shape;
        if self.flat {
            vec![BATCH, s.channels as i64]
        } else {
            match self.layout {
                Layout::Nchw => vec![BATCH, s.channels as i64, s.height as i64, s.width as i64],
                Layout::Nhwc => vec![BATCH, s.height as i64, s.width as i64, s.channels as i64],
            }
        }
    }

    fn same_frame(&self, o: &Val) -> bool {
        self.shape == o.shape
            && self.flat == o.flat
            && self.layout == o.layout
            && self.perm == o.perm
    }
}

#[derive(Clone, Debug)]
enum Value {
    Const(Const),
    Val(Val),
}

struct Importer {
    net: Network,
    shapes: Vec<Shape>,
    /// Whether a layer reads this layer (then it is never folded into).
    frozen: Vec<bool>,
    values: HashMap<String, Value>,
    /// Consumers of each tensor not visited yet (graph outputs count one).
    remaining: HashMap<String, usize>,
    memo: HashMap<String, Src>,
    /// The graph's own affine map of its input: description input =
    /// scale ⊙ (ONNX input) + shift, per channel.
    input_scale: Vec<f64>,
    input_shift: Vec<f64>,
    notes: Vec<String>,
    node: String,
    op: String,
}

fn node_name(n: &NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        format!("producing {}", n.output.first().map_or("?", |s| s.as_str()))
    }
}

/// What to use instead of an operator the description cannot express.
fn refusal(op: &str) -> String {
    match op {
        "MaxRoiPool" | "LpPool" | "GlobalLpPool" => {
            format!("{op} is not supported; use MaxPool or AveragePool")
        }
        "Clip" => "Clip (ReLU6 as MobileNet exports it, or a clamp) is not supported: its \
                   upper bound would need a second comparison per value; use Relu \
                   (nn.ReLU for nn.ReLU6) and fine-tune, e.g. with delphi-train --arch"
            .into(),
        "Sigmoid" | "Tanh" | "Gelu" | "Elu" | "Selu" | "Celu" | "LeakyRelu" | "PRelu"
        | "HardSigmoid" | "HardSwish" | "Softplus" | "Softsign" | "Mish" | "Swish" | "Erf"
        | "Exp" | "Log" | "ThresholdedRelu" | "Abs" | "Sqrt" | "Reciprocal" => format!(
            "the activation {op} is not supported; use Relu, or a quadratic a·x·x + b·x + c \
             written with Mul and Add"
        ),
        "Concat" => "concatenating network tensors is not supported; join branches with a \
                     residual Add of tensors of the same shape"
            .into(),
        "Pad" => "a separate Pad is not supported; put the padding in the Conv's pads".into(),
        "ConvTranspose" => {
            "transposed convolutions are not supported; use Conv with stride 1 or 2".into()
        }
        "LayerNormalization"
        | "InstanceNormalization"
        | "GroupNormalization"
        | "LpNormalization"
        | "MeanVarianceNormalization"
        | "LRN" => format!(
            "{op} depends on the input's statistics, which the protocol cannot compute cheaply; \
             use BatchNormalization after a conv or dense layer"
        ),
        "Softmax" | "LogSoftmax" => format!(
            "{op} is only accepted as the model's final node (it is dropped: the engine returns \
             logits and the class is the same)"
        ),
        _ => "this operator is not supported. The importer knows Conv, Gemm, MatMul, \
              BatchNormalization, Relu, AveragePool, GlobalAveragePool, MaxPool, GlobalMaxPool, \
              ReduceMean, Add, Sub, \
              Mul, Div, Neg, Pow, Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Identity, \
              Dropout, Cast, a final Softmax, and the shape arithmetic around Reshape"
            .into(),
    }
}

fn layer_kind(op: &Op) -> &'static str {
    op.kind()
}

impl Importer {
    fn unsupported(&self, reason: impl Into<String>) -> OnnxError {
        OnnxError::Unsupported {
            node: self.node.clone(),
            op: self.op.clone(),
            reason: reason.into(),
        }
    }

    fn input(&self, n: &NodeProto, k: usize) -> Result<Value> {
        let name = n
            .input
            .get(k)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.unsupported(format!("input {k} is missing")))?;
        self.values.get(name).cloned().ok_or_else(|| {
            OnnxError::Model(format!(
                "node {:?} ({}) reads {name:?}, which no earlier node or initializer produces \
                 (the graph is not in topological order, or uses a subgraph)",
                self.node, self.op
            ))
        })
    }

    fn opt_input(&self, n: &NodeProto, k: usize) -> Result<Option<Value>> {
        match n.input.get(k) {
            Some(s) if !s.is_empty() => self.input(n, k).map(Some),
            _ => Ok(None),
        }
    }

    fn val(&self, n: &NodeProto, k: usize) -> Result<(String, Val)> {
        match self.input(n, k)? {
            Value::Val(v) => Ok((n.input[k].clone(), v)),
            Value::Const(_) => Err(self.unsupported(format!(
                "input {k} is a constant where a network tensor is expected"
            ))),
        }
    }

    /// The node's first input, which must be an image (NCHW) tensor for
    /// `what` (e.g. "a convolution").
    fn image(&self, n: &NodeProto, what: &str) -> Result<(String, Val)> {
        let (name, x) = self.val(n, 0)?;
        if x.flat || x.layout != Layout::Nchw {
            return Err(self.unsupported(format!("{what} needs an NCHW image tensor")));
        }
        Ok((name, x))
    }

    fn konst(&self, n: &NodeProto, k: usize) -> Result<Const> {
        match self.input(n, k)? {
            Value::Const(c) => Ok(c),
            Value::Val(_) => Err(self.unsupported(format!(
                "input {k} must be a constant (an initializer), not a network tensor"
            ))),
        }
    }

    fn set(&mut self, n: &NodeProto, v: Value) {
        if let Some(out) = n.output.first() {
            self.values.insert(out.clone(), v);
        }
    }

    fn src_shape(&self, s: Src) -> Shape {
        match s {
            Src::Input => self.net.input,
            Src::Layer(k) => self.shapes[k],
        }
    }

    /// Appends a layer reading `src`; returns its index.
    fn emit(&mut self, src: Src, op: Op) -> Result<usize> {
        let i = self.net.layers.len();
        let input =
            match src {
                Src::Input if i == 0 => None,
                Src::Input => return Err(self.unsupported(
                    "it reads the network's input, which only the first layer of a description \
                     can read (a shortcut from the input is not supported)",
                )),
                Src::Layer(j) => {
                    self.frozen[j] = true;
                    (j + 1 != i).then_some(j)
                }
            };
        if let Op::Residual { from } = op {
            self.frozen[from] = true;
        }
        let x = self.src_shape(src);
        let out = self.out_shape(&op, x)?;
        self.net.layers.push(Layer { op, input, relu_bits: None, truncations: None });
        self.shapes.push(out);
        self.frozen.push(false);
        Ok(i)
    }

    fn out_shape(&self, op: &Op, x: Shape) -> Result<Shape> {
        Ok(match op {
            Op::Conv2d { out_channels, kernel, stride, padding, .. } => {
                let p = padding.amount(*kernel);
                if x.height + 2 * p < *kernel || x.width + 2 * p < *kernel || *stride == 0 {
                    return Err(self.unsupported(format!(
                        "kernel {kernel} is larger than its padded input {x}"
                    )));
                }
                x.windowed(*out_channels, *kernel, *stride, p)
            }
            Op::Dense { out_features, .. } => Shape::new(*out_features, 1, 1),
            Op::AvgPool { kernel, stride } => {
                if x.height < *kernel || x.width < *kernel || *stride == 0 {
                    return Err(self.unsupported(format!(
                        "pooling window {kernel} is larger than its input {x}"
                    )));
                }
                x.windowed(x.channels, *kernel, *stride, 0)
            }
            Op::MaxPool { kernel, stride, padding } => {
                if x.height + 2 * padding < *kernel
                    || x.width + 2 * padding < *kernel
                    || *stride == 0
                {
                    return Err(self.unsupported(format!(
                        "pooling window {kernel} is larger than its padded input {x}"
                    )));
                }
                x.windowed(x.channels, *kernel, *stride, *padding)
            }
            Op::Flatten => Shape::new(x.len(), 1, 1),
            _ => x,
        })
    }

    /// Tensors other than `except` that later nodes (or the output) still
    /// read and that stand on `src`.
    fn live_refs(&self, src: Src, except: &str) -> usize {
        self.values
            .iter()
            .filter(|(name, v)| {
                name.as_str() != except
                    && matches!(v, Value::Val(v) if v.src == src)
                    && self.remaining.get(name.as_str()).copied().unwrap_or(0) > 0
            })
            .count()
    }

    fn src_of(&self, l: usize) -> Src {
        match self.net.layers[l].source(l) {
            Some(j) => Src::Layer(j),
            None => Src::Input,
        }
    }

    /// A copy of layer `l` (a conv/dense layer, or a batch norm with a copy
    /// of its conv) reading what it reads.
    fn copy_layer(&mut self, l: usize) -> Result<usize> {
        let op = self.net.layers[l].op.clone();
        match op {
            Op::BatchNorm { .. } => {
                let Src::Layer(conv) = self.src_of(l) else {
                    return Err(self.unsupported("a batch norm reading the input cannot be copied"));
                };
                let c = self.copy_layer(conv)?;
                self.emit(Src::Layer(c), op)
            }
            _ => {
                let src = self.src_of(l);
                self.emit(src, op)
            }
        }
    }

    /// Applies `scale ⊙ x + shift` (per channel, or one value for all) to
    /// the value `src`, folding it into the layer that produced it.
    fn fold_affine(&mut self, src: Src, scale: &[f32], shift: &[f32], tensor: &str) -> Result<Src> {
        let channels = self.src_shape(src).channels;
        let at =
            |v: &[f32], c: usize| -> f64 { v.get(c).or(v.first()).copied().unwrap_or(0.0) as f64 };
        match src {
            Src::Input => {
                if !self.net.layers.is_empty() || self.live_refs(Src::Input, tensor) > 0 {
                    return Err(self.unsupported(
                        "a scale or shift of the input that other nodes also read raw cannot be \
                         represented",
                    ));
                }
                let c = channels.max(self.input_scale.len());
                let (mut sc, mut sh) = (vec![0f64; c], vec![0f64; c]);
                for ch in 0..c {
                    let (s0, t0) = (
                        self.input_scale
                            .get(ch)
                            .or(self.input_scale.first())
                            .copied()
                            .unwrap_or(1.0),
                        self.input_shift
                            .get(ch)
                            .or(self.input_shift.first())
                            .copied()
                            .unwrap_or(0.0),
                    );
                    sc[ch] = at(scale, ch) * s0;
                    sh[ch] = at(scale, ch) * t0 + at(shift, ch);
                }
                self.input_scale = sc;
                self.input_shift = sh;
                Ok(Src::Input)
            }
            Src::Layer(l) => {
                let kind = layer_kind(&self.net.layers[l].op);
                if !matches!(
                    self.net.layers[l].op,
                    Op::Conv2d { .. } | Op::Dense { .. } | Op::BatchNorm { .. }
                ) {
                    return Err(self.unsupported(format!(
                        "a scale or shift after a {kind} layer cannot be represented: it must \
                         directly follow a Conv, Gemm/MatMul or BatchNormalization"
                    )));
                }
                let target = if self.frozen[l] || self.live_refs(Src::Layer(l), tensor) > 0 {
                    self.copy_layer(l)?
                } else {
                    l
                };
                let sc: Vec<f64> = scale.iter().map(|&v| v as f64).collect();
                let sh: Vec<f64> = shift.iter().map(|&v| v as f64).collect();
                let op = &mut self.net.layers[target].op;
                if !op.fold_scale_shift(&sc, &sh) {
                    if let Op::BatchNorm { gamma, beta, .. } = op {
                        for (c, (g, b)) in gamma.iter_mut().zip(beta.iter_mut()).enumerate() {
                            *g = (*g as f64 * at(scale, c)) as f32;
                            *b = (*b as f64 * at(scale, c) + at(shift, c)) as f32;
                        }
                    }
                }
                Ok(Src::Layer(target))
            }
        }
    }

    /// Makes the value of tensor `name` a description value (emitting a
    /// quadratic activation or folding a scale and shift) and returns it.
    fn materialize(&mut self, name: &str, v: &Val) -> Result<Src> {
        if let Some(&s) = self.memo.get(name) {
            return Ok(s);
        }
        let out = if v.is_identity() {
            v.src
        } else if v.a == 0.0 {
            self.fold_affine(v.src, &[v.b], &[v.c], name)?
        } else {
            Src::Layer(
                self.emit(v.src, Op::Activation(Activation::Quad { a: v.a, b: v.b, c: v.c }))?,
            )
        };
        self.memo.insert(name.to_string(), out);
        self.values.insert(name.to_string(), Value::Val(v.at(out)));
        Ok(out)
    }

    /// A constant as a per-channel vector for the value `v` (one value, or
    /// one per channel, broadcast the way ONNX broadcasts it against `v`).
    fn per_channel(&self, k: &Const, v: &Val) -> Result<Vec<f32>> {
        let vals = k.floats();
        if vals.len() == 1 {
            return Ok(vals);
        }
        let rank = if v.flat { 2 } else { 4 };
        if k.dims.len() > rank {
            return Err(self.unsupported(format!(
                "a constant of shape {:?} does not broadcast against a network tensor",
                k.dims
            )));
        }
        let mut d = vec![1usize; rank - k.dims.len()];
        d.extend(&k.dims);
        let c = v.shape.channels;
        let axis = if v.flat || v.layout == Layout::Nchw { 1 } else { 3 };
        let ok = d.iter().enumerate().all(|(i, &x)| x == 1 || (i == axis && x == c));
        if !ok {
            return Err(self.unsupported(format!(
                "a constant of shape {:?} varies over more than the channels; only one value, or \
                 one per channel, can be folded",
                k.dims
            )));
        }
        match &v.perm {
            Some(p) => {
                let mut out = vec![0f32; vals.len()];
                for (j, &x) in vals.iter().enumerate() {
                    out[p[j]] = x;
                }
                Ok(out)
            }
            None => Ok(vals),
        }
    }

    /// `scale ⊙ v + shift` where scale/shift may be per channel.
    fn affine(&mut self, name: &str, v: &Val, scale: Vec<f32>, shift: Vec<f32>) -> Result<Val> {
        if scale.len() == 1 && shift.len() == 1 {
            let (s, t) = (scale[0], shift[0]);
            return Ok(Val { a: v.a * s, b: v.b * s, c: v.c * s + t, ..v.clone() });
        }
        // Per channel: the pending polynomial becomes a layer first; the
        // input tensor stays what it was if later nodes read it too.
        let src = self.materialize(name, v)?;
        let out = self.fold_affine(src, &scale, &shift, "")?;
        Ok(v.at(out))
    }

    fn binary(&mut self, n: &NodeProto) -> Result<()> {
        let op = n.op_type.as_str();
        let (x, y) = (self.input(n, 0)?, self.input(n, 1)?);
        let out = match (x, y) {
            (Value::Const(a), Value::Const(b)) => Value::Const(self.const_binary(op, &a, &b)?),
            (Value::Val(v), Value::Const(k)) => {
                let name = n.input[0].clone();
                let kv = self.per_channel(&k, &v)?;
                let ones = vec![1.0f32];
                let zeros = vec![0.0f32];
                Value::Val(match op {
                    "Add" => self.affine(&name, &v, ones, kv)?,
                    "Sub" => self.affine(&name, &v, ones, kv.iter().map(|x| -x).collect())?,
                    "Mul" => self.affine(&name, &v, kv, zeros)?,
                    _ => {
                        if kv.contains(&0.0) {
                            return Err(self.unsupported("division by zero"));
                        }
                        self.affine(&name, &v, kv.iter().map(|x| 1.0 / x).collect(), zeros)?
                    }
                })
            }
            (Value::Const(k), Value::Val(v)) => {
                let name = n.input[1].clone();
                let kv = self.per_channel(&k, &v)?;
                Value::Val(match op {
                    "Add" => self.affine(&name, &v, vec![1.0], kv)?,
                    "Sub" => self.affine(&name, &v, vec![-1.0], kv)?,
                    "Mul" => self.affine(&name, &v, kv, vec![0.0])?,
                    _ => {
                        return Err(
                            self.unsupported("dividing by a network tensor is not supported")
                        )
                    }
                })
            }
            (Value::Val(a), Value::Val(b)) => {
                let (na, nb) = (n.input[0].clone(), n.input[1].clone());
                if !a.same_frame(&b) {
                    return Err(self.unsupported(format!(
                        "its operands have different shapes ({} and {})",
                        a.shape, b.shape
                    )));
                }
                match op {
                    "Add" | "Sub" => {
                        let sign = if op == "Sub" { -1.0 } else { 1.0 };
                        if a.src == b.src {
                            Value::Val(Val {
                                a: a.a + sign * b.a,
                                b: a.b + sign * b.b,
                                c: a.c + sign * b.c,
                                ..a.clone()
                            })
                        } else {
                            let sa = self.materialize(&na, &a)?;
                            let b = if sign < 0.0 {
                                self.affine(&nb, &b, vec![-1.0], vec![0.0])?
                            } else {
                                b
                            };
                            let sb = self.materialize(&nb, &b)?;
                            let (Src::Layer(la), Src::Layer(lb)) = (sa, sb) else {
                                return Err(self.unsupported(
                                    "a residual add of the network's input is not supported \
                                     (start the network with a conv)",
                                ));
                            };
                            let r = self.emit(Src::Layer(la), Op::Residual { from: lb })?;
                            Value::Val(a.at(Src::Layer(r)))
                        }
                    }
                    "Mul" => {
                        if a.src != b.src {
                            return Err(self.unsupported(
                                "it multiplies two different tensors; only a tensor times \
                                 itself (x·x, a quadratic activation) is supported",
                            ));
                        }
                        if a.degree() + b.degree() > 2 {
                            return Err(self.unsupported(
                                "the product has degree above 2; a quadratic activation is \
                                 a·x·x + b·x + c",
                            ));
                        }
                        // (a1 x² + b1 x + c1)(a2 x² + b2 x + c2) with degrees summing to ≤ 2.
                        Value::Val(Val {
                            a: a.a * b.c + a.b * b.b + a.c * b.a,
                            b: a.b * b.c + a.c * b.b,
                            c: a.c * b.c,
                            ..a.clone()
                        })
                    }
                    _ => {
                        return Err(
                            self.unsupported("dividing two network tensors is not supported")
                        )
                    }
                }
            }
        };
        self.set(n, out);
        Ok(())
    }

    fn const_binary(&self, op: &str, a: &Const, b: &Const) -> Result<Const> {
        let f = |x: f64, y: f64| -> f64 {
            match op {
                "Add" => x + y,
                "Sub" => x - y,
                "Mul" => x * y,
                _ => {
                    if y == 0.0 {
                        f64::NAN
                    } else {
                        x / y
                    }
                }
            }
        };
        // Which operand broadcasts: 0 neither, 1 the second, 2 the first.
        let (dims, scalar) = if a.dims == b.dims {
            (a.dims.clone(), 0)
        } else if b.len() == 1 {
            (a.dims.clone(), 1)
        } else if a.len() == 1 {
            (b.dims.clone(), 2)
        } else {
            return Err(self.unsupported(format!(
                "constant operands of shapes {:?} and {:?} (only equal shapes or a scalar are folded)",
                a.dims, b.dims
            )));
        };
        let idx = |i: usize| match scalar {
            1 => (i, 0),
            2 => (0, i),
            _ => (i, i),
        };
        let n = a.len().max(b.len());
        // Element i of the result from the broadcast operands' elements.
        let each = |g: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    let (p, q) = idx(i);
                    g(p, q)
                })
                .collect()
        };
        Ok(match (&a.data, &b.data) {
            (Data::I(x), Data::I(y)) if op != "Div" => Const::int(
                dims,
                each(&|p, q| f(x[p] as f64, y[q] as f64)).into_iter().map(|v| v as i64).collect(),
            ),
            // Integer division: ONNX's floor division; by zero gives 0.
            (Data::I(x), Data::I(y)) => Const::int(
                dims,
                (0..n)
                    .map(|i| {
                        let (p, q) = idx(i);
                        if y[q] == 0 {
                            0
                        } else {
                            x[p].div_euclid(y[q])
                        }
                    })
                    .collect(),
            ),
            _ => {
                let (x, y) = (a.floats(), b.floats());
                Const::float(
                    dims,
                    each(&|p, q| f(x[p] as f64, y[q] as f64))
                        .into_iter()
                        .map(|v| v as f32)
                        .collect(),
                )
            }
        })
    }

    fn axes(&self, n: &NodeProto, input: usize, rank: usize) -> Result<Option<Vec<usize>>> {
        let raw = match self.opt_input(n, input)? {
            Some(Value::Const(c)) => c.ints(),
            Some(Value::Val(_)) => return Err(self.unsupported("its axes must be constant")),
            None => Attrs::of(n).ints("axes"),
        };
        raw.map(|v| {
            v.iter()
                .map(|&a| {
                    let a = if a < 0 { a + rank as i64 } else { a };
                    if a < 0 || a as usize >= rank {
                        Err(self.unsupported(format!("axis {a} out of range for rank {rank}")))
                    } else {
                        Ok(a as usize)
                    }
                })
                .collect()
        })
        .transpose()
    }

    /// Turns a value into a vector `[N, n]` (a flatten layer when needed).
    fn flatten_val(&mut self, name: &str, v: &Val) -> Result<Val> {
        if v.flat {
            return Ok(v.clone());
        }
        let s = v.shape;
        if s.height == 1 && s.width == 1 {
            return Ok(Val { flat: true, layout: Layout::Nchw, ..v.clone() });
        }
        let src = self.materialize(name, v)?;
        let f = self.emit(src, Op::Flatten)?;
        let mut out = Val::identity(Src::Layer(f), Shape::new(s.len(), 1, 1), true, Layout::Nchw);
        if v.layout == Layout::Nhwc {
            // ONNX element (y, x, c) of the NHWC tensor is CHW element (c, y, x).
            let mut perm = Vec::with_capacity(s.len());
            for y in 0..s.height {
                for x in 0..s.width {
                    for c in 0..s.channels {
                        perm.push((c * s.height + y) * s.width + x);
                    }
                }
            }
            out.perm = Some(perm);
        }
        Ok(out)
    }

    fn reshape(&mut self, n: &NodeProto) -> Result<()> {
        let shape = self.konst(n, 1)?;
        let target =
            shape.ints().ok_or_else(|| self.unsupported("its target shape is not integral"))?;
        match self.input(n, 0)? {
            Value::Const(c) => {
                let mut dims = Vec::new();
                let mut unknown = None;
                for (i, &t) in target.iter().enumerate() {
                    match t {
                        -1 => {
                            unknown = Some(i);
                            dims.push(1)
                        }
                        0 => dims.push(c.dims.get(i).copied().unwrap_or(1)),
                        t if t > 0 => dims.push(t as usize),
                        _ => {
                            return Err(self.unsupported("a constant reshaped with a symbolic size"))
                        }
                    }
                }
                if let Some(i) = unknown {
                    let known: usize = dims.iter().product();
                    dims[i] = c.len() / known.max(1);
                }
                if dims.iter().product::<usize>() != c.len() {
                    return Err(self.unsupported("a constant reshaped to a different size"));
                }
                self.set(n, Value::Const(Const { dims, data: c.data }));
            }
            Value::Val(v) => {
                let name = n.input[0].clone();
                let view = v.view();
                let total: i64 = view[1..].iter().product();
                let mut rest: Vec<i64> = Vec::new();
                let first = target.first().copied().unwrap_or(1);
                if !(first == BATCH || first == -1 || first == 0 || first == 1) {
                    return Err(self.unsupported(format!(
                        "reshape to {target:?} changes the batch dimension"
                    )));
                }
                let mut infer = first == -1;
                for (i, &t) in target.iter().enumerate().skip(1) {
                    match t {
                        0 => rest.push(*view.get(i).unwrap_or(&1)),
                        -1 if !infer => {
                            infer = true;
                            rest.push(-1)
                        }
                        t if t > 0 => rest.push(t),
                        _ => {
                            return Err(
                                self.unsupported(format!("reshape to {target:?} is not supported"))
                            )
                        }
                    }
                }
                let known: i64 = rest.iter().filter(|&&t| t > 0).product();
                for t in &mut rest {
                    if *t == -1 {
                        *t = total / known.max(1);
                    }
                }
                if rest.iter().product::<i64>() != total {
                    return Err(self.unsupported(format!(
                        "reshape to {target:?} changes the number of values ({total} per input)"
                    )));
                }
                let out = if rest.len() == 1 {
                    self.flatten_val(&name, &v)?
                } else if rest == view[1..] {
                    v
                } else if v.flat && rest.len() == 3 && rest[1] == 1 && rest[2] == 1 {
                    Val { flat: false, ..v }
                } else {
                    return Err(self.unsupported(format!(
                        "reshape of a {} tensor to {target:?}; only flattening to a vector is \
                         supported",
                        v.shape
                    )));
                };
                self.set(n, Value::Val(out));
            }
        }
        Ok(())
    }

    fn conv(&mut self, n: &NodeProto) -> Result<()> {
        let a = Attrs::of(n);
        let (name, x) = self.image(n, "a convolution")?;
        let w = self.konst(n, 1)?;
        if w.dims.len() != 4 {
            return Err(self.unsupported(format!(
                "only 2-D convolutions are supported (weights of shape {:?})",
                w.dims
            )));
        }
        let (o, ci, kh, kw) = (w.dims[0], w.dims[1], w.dims[2], w.dims[3]);
        let group = a.int("group").unwrap_or(1);
        if group < 1 || o % group as usize != 0 {
            return Err(self
                .unsupported(format!("group = {group} does not divide the {o} output channels")));
        }
        let group = group as usize;
        if ci * group != x.shape.channels {
            return Err(self.unsupported(format!(
                "weights expect {ci} input channels per group ({group} groups), the tensor has {}",
                x.shape.channels
            )));
        }
        if kh != kw {
            return Err(self.unsupported(format!("kernel {kh}×{kw} is not square")));
        }
        if let Some(d) = a.ints("dilations") {
            if d.iter().any(|&v| v != 1) {
                return Err(self.unsupported(format!("dilations {d:?} are not supported")));
            }
        }
        let strides = a.ints("strides").unwrap_or_else(|| vec![1, 1]);
        if strides.len() != 2 || strides[0] != strides[1] || !(1..=2).contains(&strides[0]) {
            return Err(self.unsupported(format!(
                "strides {strides:?}: the engine runs equal strides of 1 or 2"
            )));
        }
        let stride = strides[0] as usize;
        let auto = a.string("auto_pad").unwrap_or_default();
        let pads: Vec<i64> = match auto.as_str() {
            "" | "NOTSET" => a.ints("pads").unwrap_or_else(|| vec![0; 4]),
            "VALID" => vec![0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut p = Vec::new();
                for size in [x.shape.height, x.shape.width] {
                    let out = size.div_ceil(stride);
                    let total = ((out - 1) * stride + kh).saturating_sub(size) as i64;
                    let (lo, hi) = if auto == "SAME_UPPER" {
                        (total / 2, total - total / 2)
                    } else {
                        (total - total / 2, total / 2)
                    };
                    p.push((lo, hi));
                }
                vec![p[0].0, p[1].0, p[0].1, p[1].1]
            }
            other => return Err(self.unsupported(format!("auto_pad {other:?}"))),
        };
        if pads.len() != 4 || pads.iter().any(|&p| p != pads[0]) || pads[0] < 0 {
            return Err(self.unsupported(format!(
                "padding {pads:?} is not the same on every side; the engine pads symmetrically \
                 (in PyTorch: padding=k//2 with an odd kernel, or an explicit padding)"
            )));
        }
        let pad = pads[0] as usize;
        if pad >= kh {
            return Err(
                self.unsupported(format!("padding {pad} is not smaller than the kernel {kh}"))
            );
        }
        let bias = match self.opt_input(n, 2)? {
            Some(Value::Const(b)) if b.len() == o => Some(b.floats()),
            Some(Value::Const(b)) => {
                return Err(self.unsupported(format!("{} bias values for {o} channels", b.len())))
            }
            Some(Value::Val(_)) => return Err(self.unsupported("its bias must be constant")),
            None => None,
        };
        let src = self.materialize(&name, &x)?;
        let l = self.emit(
            src,
            Op::Conv2d {
                out_channels: o,
                kernel: kh,
                stride,
                padding: Padding::for_amount(pad, kh),
                bias: bias.is_some(),
                weight: w.floats(),
                bias_values: bias.unwrap_or_default(),
                groups: group,
            },
        )?;
        let shape = self.shapes[l];
        self.set(n, Value::Val(Val::identity(Src::Layer(l), shape, false, Layout::Nchw)));
        Ok(())
    }

    /// A dense layer on vector `x` with weights `w[out][in]` (ONNX input order).
    fn dense(
        &mut self,
        n: &NodeProto,
        name: &str,
        x: &Val,
        w: Vec<f32>,
        out: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<()> {
        if !x.flat {
            return Err(self.unsupported(format!(
                "a matrix product needs a vector input, not a {} tensor (flatten it first)",
                x.shape
            )));
        }
        let inp = x.shape.channels;
        let mut weight = w;
        if let Some(p) = &x.perm {
            let mut re = vec![0f32; weight.len()];
            for o in 0..out {
                for (j, &pj) in p.iter().enumerate() {
                    re[o * inp + pj] = weight[o * inp + j];
                }
            }
            weight = re;
        }
        let src = self.materialize(name, x)?;
        let l = self.emit(
            src,
            Op::Dense {
                out_features: out,
                bias: bias.is_some(),
                weight,
                bias_values: bias.unwrap_or_default(),
            },
        )?;
        self.set(
            n,
            Value::Val(Val::identity(Src::Layer(l), Shape::new(out, 1, 1), true, Layout::Nchw)),
        );
        Ok(())
    }

    fn gemm(&mut self, n: &NodeProto) -> Result<()> {
        let a = Attrs::of(n);
        let (name, x) = self.val(n, 0)?;
        if a.int("transA").unwrap_or(0) != 0 {
            return Err(self.unsupported("transA = 1 is not supported"));
        }
        let w = self.konst(n, 1)?;
        if w.dims.len() != 2 {
            return Err(self.unsupported(format!("weights of shape {:?}", w.dims)));
        }
        let alpha = a.float("alpha").unwrap_or(1.0);
        let beta = a.float("beta").unwrap_or(1.0);
        let trans_b = a.int("transB").unwrap_or(0) != 0;
        let (inp, out) = if trans_b { (w.dims[1], w.dims[0]) } else { (w.dims[0], w.dims[1]) };
        if inp != x.shape.channels || !x.flat {
            return Err(self.unsupported(format!(
                "weights take {inp} inputs but the tensor is {}{}",
                x.shape,
                if x.flat { "" } else { " (not flattened)" }
            )));
        }
        let wv = w.floats();
        let weight: Vec<f32> = (0..out)
            .flat_map(|o| {
                let wv = &wv;
                (0..inp)
                    .map(move |i| alpha * if trans_b { wv[o * inp + i] } else { wv[i * out + o] })
            })
            .collect();
        let bias = match self.opt_input(n, 2)? {
            Some(Value::Const(c)) => {
                let v = c.floats();
                if v.len() == out {
                    Some(v.iter().map(|b| b * beta).collect())
                } else if v.len() == 1 {
                    Some(vec![v[0] * beta; out])
                } else {
                    return Err(
                        self.unsupported(format!("bias of shape {:?} for {out} outputs", c.dims))
                    );
                }
            }
            Some(Value::Val(_)) => return Err(self.unsupported("its bias must be constant")),
            None => None,
        };
        self.dense(n, &name, &x, weight, out, bias)
    }

    fn matmul(&mut self, n: &NodeProto) -> Result<()> {
        let (name, x) = self.val(n, 0)?;
        let w = self.konst(n, 1)?;
        if w.dims.len() != 2 {
            return Err(self.unsupported(format!(
                "only a vector times a constant matrix is supported (weights of shape {:?})",
                w.dims
            )));
        }
        let (inp, out) = (w.dims[0], w.dims[1]);
        if inp != x.shape.channels || !x.flat {
            return Err(self
                .unsupported(format!("weights take {inp} inputs but the tensor is {}", x.shape)));
        }
        let wv = w.floats();
        let weight = (0..out)
            .flat_map(|o| {
                let wv = &wv;
                (0..inp).map(move |i| wv[i * out + o])
            })
            .collect();
        self.dense(n, &name, &x, weight, out, None)
    }

    fn batch_norm(&mut self, n: &NodeProto) -> Result<()> {
        let a = Attrs::of(n);
        if a.int("training_mode").unwrap_or(0) != 0 {
            return Err(self.unsupported("training_mode = 1; export the model in eval mode"));
        }
        let (name, x) = self.val(n, 0)?;
        let c = x.shape.channels;
        let mut params = Vec::new();
        for k in 1..5 {
            let p = self.konst(n, k)?.floats();
            if p.len() != c && p.len() != 1 {
                return Err(self.unsupported(format!("{} values for {c} channels", p.len())));
            }
            params.push(if p.len() == 1 { vec![p[0]; c] } else { p });
        }
        let eps = a.float("epsilon").unwrap_or(1e-5);
        if params[3].iter().any(|v| v + eps <= 0.0) {
            return Err(self.unsupported("variance + epsilon must be positive"));
        }
        let (gamma, beta, mean, var) =
            (params[0].clone(), params[1].clone(), params[2].clone(), params[3].clone());
        if x.layout == Layout::Nchw && !x.flat {
            let src = self.materialize(&name, &x)?;
            if let Src::Layer(l) = src {
                if matches!(self.net.layers[l].op, Op::Conv2d { .. } | Op::Dense { .. }) {
                    let target = if self.frozen[l] || self.live_refs(Src::Layer(l), "") > 0 {
                        self.copy_layer(l)?
                    } else {
                        l
                    };
                    let b = self
                        .emit(Src::Layer(target), Op::BatchNorm { eps, gamma, beta, mean, var })?;
                    self.set(n, Value::Val(x.at(Src::Layer(b))));
                    return Ok(());
                }
            }
        }
        // Elsewhere: its inference form, a per-channel scale and shift.
        let scale: Vec<f32> = (0..c)
            .map(|k| (gamma[k] as f64 / (var[k] as f64 + eps as f64).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..c).map(|k| beta[k] - mean[k] * scale[k]).collect();
        let src = self.materialize(&name, &x)?;
        let out = self.fold_affine(src, &scale, &shift, "")?;
        self.set(n, Value::Val(x.at(out)));
        Ok(())
    }

    fn avg_pool(&mut self, n: &NodeProto) -> Result<()> {
        self.pool(n, false)
    }

    /// `AveragePool` (no padding) or `MaxPool` (symmetric padding up to
    /// half the window, never the maximum).
    fn pool(&mut self, n: &NodeProto, max: bool) -> Result<()> {
        let a = Attrs::of(n);
        let (name, x) = self.image(n, "pooling")?;
        if max && n.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(self.unsupported("MaxPool's indices output is not supported"));
        }
        let k = a.ints("kernel_shape").unwrap_or_default();
        if k.len() != 2 || k[0] != k[1] || k[0] <= 0 {
            return Err(self.unsupported(format!("pooling window {k:?} is not square")));
        }
        let kernel = k[0] as usize;
        let s = a.ints("strides").unwrap_or_else(|| vec![1, 1]);
        if s.len() != 2 || s[0] != s[1] || s[0] <= 0 {
            return Err(self.unsupported(format!("strides {s:?} are not equal")));
        }
        let stride = s[0] as usize;
        let pads = a.ints("pads").unwrap_or_default();
        let auto = a.string("auto_pad").unwrap_or_default();
        if !matches!(auto.as_str(), "" | "NOTSET" | "VALID") {
            return Err(
                self.unsupported(format!("auto_pad {auto} is not supported; give explicit pads"))
            );
        }
        let pad = pads.first().copied().unwrap_or(0);
        if pads.iter().any(|&p| p != pad) || pad < 0 {
            return Err(self.unsupported(format!("pads {pads:?} are not the same on every side")));
        }
        let pad = pad as usize;
        if pad != 0 && !max {
            return Err(
                self.unsupported("padded average pooling is not supported; pool without padding")
            );
        }
        if 2 * pad > kernel {
            return Err(
                self.unsupported(format!("padding {pad} is more than half the window {kernel}"))
            );
        }
        if let Some(d) = a.ints("dilations") {
            if d.iter().any(|&v| v != 1) {
                return Err(self.unsupported(format!("dilations {d:?} are not supported")));
            }
        }
        if a.int("ceil_mode").unwrap_or(0) != 0
            && (!(x.shape.height + 2 * pad).saturating_sub(kernel).is_multiple_of(stride)
                || !(x.shape.width + 2 * pad).saturating_sub(kernel).is_multiple_of(stride))
        {
            return Err(
                self.unsupported("ceil_mode = 1 with a partial last window is not supported")
            );
        }
        let src = self.materialize(&name, &x)?;
        let op = if max {
            Op::MaxPool { kernel, stride, padding: pad }
        } else {
            Op::AvgPool { kernel, stride }
        };
        let l = self.emit(src, op)?;
        let shape = self.shapes[l];
        self.set(n, Value::Val(Val::identity(Src::Layer(l), shape, false, Layout::Nchw)));
        Ok(())
    }

    /// Global average pooling: `keep` four dimensions or give a vector.
    fn global_pool(&mut self, n: &NodeProto, name: &str, x: &Val, keep: bool) -> Result<()> {
        let s = x.shape;
        if s.height != s.width {
            return Err(self.unsupported(format!(
                "global average pooling of a non-square {s} tensor is not supported"
            )));
        }
        let src = self.materialize(name, x)?;
        let l = if s.height == 1 {
            match src {
                Src::Layer(l) => l,
                Src::Input => return Err(self.unsupported("pooling the raw input")),
            }
        } else {
            self.emit(src, Op::AvgPool { kernel: s.height, stride: s.height })?
        };
        let shape = Shape::new(s.channels, 1, 1);
        self.set(n, Value::Val(Val::identity(Src::Layer(l), shape, !keep, x.layout)));
        Ok(())
    }

    fn reduce_mean(&mut self, n: &NodeProto) -> Result<()> {
        let (name, x) = self.val(n, 0)?;
        if x.flat {
            return Err(self.unsupported("a mean over a vector's features is not supported"));
        }
        let mut axes = self
            .axes(n, 1, 4)?
            .ok_or_else(|| self.unsupported("a mean over every axis is not supported"))?;
        axes.sort_unstable();
        let spatial = match x.layout {
            Layout::Nchw => vec![2, 3],
            Layout::Nhwc => vec![1, 2],
        };
        if axes != spatial {
            return Err(self.unsupported(format!(
                "a mean over axes {axes:?}; only the spatial mean (global average pooling) is \
                 supported"
            )));
        }
        let keep = Attrs::of(n).int("keepdims").unwrap_or(1) != 0;
        self.global_pool(n, &name, &x, keep)
    }

    fn transpose(&mut self, n: &NodeProto) -> Result<()> {
        let perm = Attrs::of(n).ints("perm");
        match self.input(n, 0)? {
            Value::Const(c) => {
                if c.dims.len() != 2 || perm.as_deref().is_some_and(|p| p != [1, 0]) {
                    return Err(self.unsupported("only 2-D constants can be transposed"));
                }
                let (r, k) = (c.dims[0], c.dims[1]);
                let v = c.floats();
                let t = (0..k)
                    .flat_map(|j| (0..r).map(move |i| (i, j)))
                    .map(|(i, j)| v[i * k + j])
                    .collect();
                self.set(n, Value::Const(Const::float(vec![k, r], t)));
            }
            Value::Val(v) => {
                let p = perm.unwrap_or_else(|| if v.flat { vec![1, 0] } else { vec![3, 2, 1, 0] });
                let out = match (v.flat, v.layout, p.as_slice()) {
                    (true, _, [0, 1]) | (false, _, [0, 1, 2, 3]) => v,
                    (false, Layout::Nchw, [0, 2, 3, 1]) => Val { layout: Layout::Nhwc, ..v },
                    (false, Layout::Nhwc, [0, 3, 1, 2]) => Val { layout: Layout::Nchw, ..v },
                    _ => {
                        return Err(self.unsupported(format!(
                            "transpose {p:?}; only NCHW ↔ NHWC is supported"
                        )))
                    }
                };
                self.set(n, Value::Val(out));
            }
        }
        Ok(())
    }

    fn constant(&mut self, n: &NodeProto) -> Result<()> {
        let a = Attrs::of(n);
        let c = if let Some(t) = a.tensor("value") {
            proto::tensor(t)?
        } else if let Some(f) = a.float("value_float").filter(|_| a.has("value_float")) {
            Const::float(Vec::new(), vec![f])
        } else if let Some(v) = a.floats("value_floats") {
            Const::float(vec![v.len()], v)
        } else if let Some(i) = a.int("value_int").filter(|_| a.has("value_int")) {
            Const::int(Vec::new(), vec![i])
        } else if let Some(v) = a.ints("value_ints") {
            Const::int(vec![v.len()], v)
        } else {
            return Err(
                self.unsupported(format!("a constant given as {:?} is not supported", a.names()))
            );
        };
        self.set(n, Value::Const(c));
        Ok(())
    }

    fn shape_ops(&mut self, n: &NodeProto) -> Result<()> {
        let op = n.op_type.as_str();
        match op {
            "Shape" => {
                let dims: Vec<i64> = match self.input(n, 0)? {
                    Value::Val(v) => v.view(),
                    Value::Const(c) => c.dims.iter().map(|&d| d as i64).collect(),
                };
                let a = Attrs::of(n);
                let r = dims.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = clamp(a.int("start").unwrap_or(0));
                let end = clamp(a.int("end").unwrap_or(r));
                let d = dims[start..end.max(start)].to_vec();
                self.set(n, Value::Const(Const::int(vec![d.len()], d)));
            }
            "Gather" => {
                let data = self.konst(n, 0).map_err(|_| {
                    self.unsupported("gathering from a network tensor is not supported")
                })?;
                let idx = self.konst(n, 1)?.ints().unwrap_or_default();
                if data.dims.len() > 1 {
                    return Err(self.unsupported("gathering from a constant of rank above 1"));
                }
                let len = data.len() as i64;
                let pick: Vec<usize> = idx
                    .iter()
                    .map(|&i| {
                        let i = if i < 0 { i + len } else { i };
                        if i < 0 || i >= len {
                            Err(self.unsupported(format!("index {i} out of range")))
                        } else {
                            Ok(i as usize)
                        }
                    })
                    .collect::<Result<_>>()?;
                let scalar_index = self.konst(n, 1)?.dims.is_empty();
                let dims = if scalar_index { Vec::new() } else { vec![pick.len()] };
                let c = match &data.data {
                    Data::I(v) => Const::int(dims, pick.iter().map(|&i| v[i]).collect()),
                    Data::F(v) => Const::float(dims, pick.iter().map(|&i| v[i]).collect()),
                };
                self.set(n, Value::Const(c));
            }
            "Unsqueeze" | "Squeeze" => match self.input(n, 0)? {
                Value::Const(c) => {
                    let added = if op == "Unsqueeze" {
                        self.axes(n, 1, usize::MAX / 2)?.map_or(0, |a| a.len())
                    } else {
                        0
                    };
                    let axes = self.axes(n, 1, (c.dims.len() + added).max(1))?;
                    let mut dims = c.dims.clone();
                    if op == "Unsqueeze" {
                        let mut axes = axes.unwrap_or_default();
                        axes.sort_unstable();
                        for a in axes {
                            dims.insert(a.min(dims.len()), 1);
                        }
                    } else {
                        dims = match axes {
                            Some(ax) => dims
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| !ax.contains(i))
                                .map(|(_, &d)| d)
                                .collect(),
                            None => dims.into_iter().filter(|&d| d != 1).collect(),
                        };
                    }
                    self.set(n, Value::Const(Const { dims, data: c.data }));
                }
                Value::Val(v) => {
                    let rank = (if v.flat { 2 } else { 4 }) + if op == "Unsqueeze" { 2 } else { 0 };
                    let axes = self.axes(n, 1, rank)?;
                    let s = v.shape;
                    let out = match (op, v.flat) {
                        ("Squeeze", false)
                            if s.height == 1
                                && s.width == 1
                                && axes.as_ref().is_none_or(|a| {
                                    let mut a = a.clone();
                                    a.sort_unstable();
                                    a == [2, 3] || (v.layout == Layout::Nhwc && a == [1, 2])
                                }) =>
                        {
                            Val { flat: true, layout: Layout::Nchw, ..v }
                        }
                        ("Unsqueeze", true)
                            if axes.as_ref().is_some_and(|a| {
                                let mut a = a.clone();
                                a.sort_unstable();
                                a == [2, 3]
                            }) && v.perm.is_none() =>
                        {
                            Val { flat: false, ..v }
                        }
                        _ => {
                            return Err(self.unsupported(format!(
                                "{op} of a {} tensor; only changes between C×1×1 and a vector \
                                 are supported",
                                s
                            )))
                        }
                    };
                    self.set(n, Value::Val(out));
                }
            },
            "Concat" => {
                let mut ints = Vec::new();
                let mut floats = Vec::new();
                let mut all_int = true;
                for k in 0..n.input.len() {
                    let c = match self.input(n, k)? {
                        Value::Const(c) => c,
                        Value::Val(_) => return Err(self.unsupported(refusal("Concat"))),
                    };
                    if c.dims.len() > 1 {
                        return Err(self.unsupported("concatenating constants of rank above 1"));
                    }
                    match &c.data {
                        Data::I(v) => ints.extend(v),
                        Data::F(_) => all_int = false,
                    }
                    floats.extend(c.floats());
                }
                let c = if all_int {
                    Const::int(vec![ints.len()], ints)
                } else {
                    Const::float(vec![floats.len()], floats)
                };
                self.set(n, Value::Const(c));
            }
            "Slice" => {
                let data = self
                    .konst(n, 0)
                    .map_err(|_| self.unsupported("slicing a network tensor is not supported"))?;
                if data.dims.len() > 1 {
                    return Err(self.unsupported("slicing a constant of rank above 1"));
                }
                let a = Attrs::of(n);
                let get = |k: usize, attr: &str| -> Result<Option<Vec<i64>>> {
                    Ok(match self.opt_input(n, k)? {
                        Some(Value::Const(c)) => c.ints(),
                        Some(Value::Val(_)) => {
                            return Err(self.unsupported("slice bounds must be constant"))
                        }
                        None => a.ints(attr),
                    })
                };
                let len = data.len() as i64;
                let start = get(1, "starts")?.and_then(|v| v.first().copied()).unwrap_or(0);
                let end = get(2, "ends")?.and_then(|v| v.first().copied()).unwrap_or(len);
                let step = get(4, "steps")?.and_then(|v| v.first().copied()).unwrap_or(1);
                if step != 1 {
                    return Err(self.unsupported("slices with a step are not supported"));
                }
                let norm = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
                let (s, e) = (norm(start), norm(end));
                let e = e.max(s);
                let c = match &data.data {
                    Data::I(v) => Const::int(vec![e - s], v[s..e].to_vec()),
                    Data::F(v) => Const::float(vec![e - s], v[s..e].to_vec()),
                };
                self.set(n, Value::Const(c));
            }
            _ => {}
        }
        Ok(())
    }

    fn node(&mut self, n: &NodeProto, outputs: &[String]) -> Result<()> {
        self.node = node_name(n);
        self.op = n.op_type.clone();
        for i in n.input.iter().filter(|s| !s.is_empty()) {
            if let Some(r) = self.remaining.get_mut(i) {
                *r = r.saturating_sub(1);
            }
        }
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(self.unsupported(format!(
                "an operator of the domain {:?} is not supported (only standard ONNX operators)",
                n.domain
            )));
        }
        let pass = |me: &mut Self| -> Result<()> {
            let v = me.input(n, 0)?;
            me.set(n, v);
            Ok(())
        };
        match n.op_type.as_str() {
            "Constant" => self.constant(n),
            "Identity" => pass(self),
            "Dropout" => {
                if n.output
                    .iter()
                    .skip(1)
                    .any(|o| !o.is_empty() && self.remaining.get(o).copied().unwrap_or(0) > 0)
                {
                    return Err(self.unsupported("its mask output is used"));
                }
                pass(self)
            }
            "Cast" => match self.input(n, 0)? {
                Value::Const(c) => {
                    let to = Attrs::of(n).int("to").unwrap_or(1);
                    let c = if matches!(to, 6 | 7 | 9) {
                        Const::int(
                            c.dims.clone(),
                            c.ints()
                                .unwrap_or_else(|| c.floats().iter().map(|&x| x as i64).collect()),
                        )
                    } else {
                        Const::float(c.dims.clone(), c.floats())
                    };
                    self.set(n, Value::Const(c));
                    Ok(())
                }
                Value::Val(_) => {
                    if Attrs::of(n).int("to").unwrap_or(1) != 1 {
                        return Err(
                            self.unsupported("casting a network tensor to a non-float type")
                        );
                    }
                    pass(self)
                }
            },
            "Shape" | "Gather" | "Unsqueeze" | "Squeeze" | "Concat" | "Slice" => self.shape_ops(n),
            "Reshape" => self.reshape(n),
            "Flatten" => {
                let axis = Attrs::of(n).int("axis").unwrap_or(1);
                let (name, v) = self.val(n, 0)?;
                if axis != 1 && !(v.flat && axis == -1) {
                    return Err(self.unsupported(format!(
                        "Flatten with axis {axis}; only axis 1 (keep the batch) is supported"
                    )));
                }
                let out = self.flatten_val(&name, &v)?;
                self.set(n, Value::Val(out));
                Ok(())
            }
            "Transpose" => self.transpose(n),
            "Add" | "Sub" | "Mul" | "Div" => self.binary(n),
            "Neg" => match self.input(n, 0)? {
                Value::Const(c) => {
                    let c = Const::float(c.dims.clone(), c.floats().iter().map(|x| -x).collect());
                    self.set(n, Value::Const(c));
                    Ok(())
                }
                Value::Val(v) => {
                    let name = n.input[0].clone();
                    let out = self.affine(&name, &v, vec![-1.0], vec![0.0])?;
                    self.set(n, Value::Val(out));
                    Ok(())
                }
            },
            "Pow" => {
                let (_, v) = self.val(n, 0)?;
                let e = self.konst(n, 1)?.scalar();
                let out = match e {
                    Some(1.0) => v,
                    Some(2.0) => {
                        if v.degree() > 1 {
                            return Err(self.unsupported("squaring a quadratic gives degree 4"));
                        }
                        Val { a: v.b * v.b, b: 2.0 * v.b * v.c, c: v.c * v.c, ..v }
                    }
                    other => {
                        return Err(self.unsupported(format!(
                            "exponent {other:?}; only x² (a quadratic activation) is supported"
                        )))
                    }
                };
                self.set(n, Value::Val(out));
                Ok(())
            }
            "Relu" => {
                let (name, v) = self.val(n, 0)?;
                let src = self.materialize(&name, &v)?;
                let l = self.emit(src, Op::Activation(Activation::Relu))?;
                self.set(n, Value::Val(v.at(Src::Layer(l))));
                Ok(())
            }
            "Conv" => self.conv(n),
            "Gemm" => self.gemm(n),
            "MatMul" => self.matmul(n),
            "BatchNormalization" => self.batch_norm(n),
            "AveragePool" => self.avg_pool(n),
            "MaxPool" => self.pool(n, true),
            "GlobalMaxPool" => {
                let (name, v) = self.image(n, "pooling")?;
                let s = v.shape;
                if s.height != s.width {
                    return Err(self.unsupported(format!(
                        "global max pooling of a non-square {s} tensor is not supported"
                    )));
                }
                let src = self.materialize(&name, &v)?;
                let op = Op::MaxPool { kernel: s.height, stride: s.height, padding: 0 };
                let l = self.emit(src, op)?;
                let shape = self.shapes[l];
                self.set(n, Value::Val(Val::identity(Src::Layer(l), shape, false, Layout::Nchw)));
                Ok(())
            }
            "GlobalAveragePool" => {
                let (name, v) = self.val(n, 0)?;
                if v.flat || v.layout != Layout::Nchw {
                    return Err(self.unsupported("pooling needs an NCHW image tensor"));
                }
                self.global_pool(n, &name, &v, true)
            }
            "ReduceMean" => self.reduce_mean(n),
            "Softmax" | "LogSoftmax" => {
                let out = n.output.first().cloned().unwrap_or_default();
                let (_, v) = self.val(n, 0)?;
                if !outputs.contains(&out) || !v.flat {
                    return Err(self.unsupported(refusal(&n.op_type)));
                }
                self.notes.push(format!(
                    "the final {} ({:?}) was dropped: the engine returns logits, whose largest \
                     entry is the same class",
                    n.op_type, self.node
                ));
                self.set(n, Value::Val(v));
                Ok(())
            }
            other => Err(self.unsupported(refusal(other))),
        }
    }

    /// Removes layers the output does not depend on; renumbers references.
    fn prune(&mut self, out: usize) {
        let n = out + 1;
        let mut live = vec![false; n];
        live[out] = true;
        for k in (0..n).rev() {
            if !live[k] {
                continue;
            }
            if let Some(j) = self.net.layers[k].source(k) {
                live[j] = true;
            }
            if let Op::Residual { from } = self.net.layers[k].op {
                live[from] = true;
            }
        }
        let mut map = vec![0usize; n];
        let mut next = 0;
        for k in 0..n {
            if live[k] {
                map[k] = next;
                next += 1;
            }
        }
        self.net.layers = delphi_net::desc::renumber(&self.net.layers[..n], &live, &map);
    }
}

/// Whether the input is NHWC: every path from it passes, through
/// elementwise operations only (a Keras `Rescaling`, say), into a
/// `Transpose` to NCHW.
fn nhwc_input(nodes: &[NodeProto], input: &str) -> bool {
    let mut frontier = vec![input.to_string()];
    let mut found = false;
    let mut steps = 0;
    while let Some(t) = frontier.pop() {
        steps += 1;
        if steps > 64 {
            return false;
        }
        let readers: Vec<&NodeProto> = nodes.iter().filter(|n| n.input.contains(&t)).collect();
        if readers.is_empty() {
            return false;
        }
        for n in readers {
            match n.op_type.as_str() {
                "Transpose" if Attrs::of(n).ints("perm").as_deref() == Some(&[0, 3, 1, 2]) => {
                    found = true
                }
                "Mul" | "Add" | "Sub" | "Div" | "Cast" | "Identity" => {
                    frontier.extend(n.output.iter().take(1).cloned())
                }
                _ => return false,
            }
        }
    }
    found
}

fn opset(model: &ModelProto) -> Result<i64> {
    let v = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .ok_or_else(|| OnnxError::Model("the model imports no standard ONNX opset".into()))?;
    if v < MIN_OPSET {
        return Err(OnnxError::Model(format!(
            "opset {v} is older than {MIN_OPSET}; re-export with opset_version=13 or later"
        )));
    }
    Ok(v)
}

/// Imports a parsed ONNX model (`file` names it in the metadata).
pub fn import_model(model: &ModelProto, file: &str, options: &ImportOptions) -> Result<Imported> {
    let opset = opset(model)?;
    let g =
        model.graph.as_ref().ok_or_else(|| OnnxError::Model("the model has no graph".into()))?;
    let mut values: HashMap<String, Value> = HashMap::new();
    for t in &g.initializer {
        values.insert(t.name.clone(), Value::Const(proto::tensor(t)?));
    }
    if !g.sparse_initializer.is_empty() {
        return Err(OnnxError::Model(
            "sparse initializers are not supported; export dense weights".into(),
        ));
    }
    let inputs: Vec<_> = g.input.iter().filter(|i| !values.contains_key(&i.name)).collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        [] => return Err(OnnxError::Model("the graph has no input".into())),
        many => {
            return Err(OnnxError::Model(format!(
                "the graph has {} inputs ({}); a network takes one image or vector",
                many.len(),
                many.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let outputs: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
    if outputs.len() != 1 {
        return Err(OnnxError::Model(format!(
            "the graph has {} outputs; a network gives one vector of class scores",
            outputs.len()
        )));
    }
    // Input type and shape.
    let tt = input
        .type_
        .as_ref()
        .map(|t| t.tensor_type().clone())
        .ok_or_else(|| OnnxError::Model(format!("input {:?} has no type", input.name)))?;
    if tt.elem_type != 1 {
        return Err(OnnxError::Model(format!(
            "input {:?} has element type {}; only float32 inputs are supported",
            input.name, tt.elem_type
        )));
    }
    let dims: Vec<Option<usize>> = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| {
                    d.has_dim_value().then(|| d.dim_value()).filter(|&v| v > 0).map(|v| v as usize)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut consumers: HashMap<String, usize> = HashMap::new();
    for n in &g.node {
        for i in n.input.iter().filter(|s| !s.is_empty()) {
            *consumers.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &outputs {
        *consumers.entry(o.clone()).or_default() += 1;
    }
    let input_is_nhwc = dims.len() == 4 && nhwc_input(&g.node, &input.name);
    let known = |k: usize| -> Result<usize> {
        dims.get(k).copied().flatten().ok_or_else(|| {
            OnnxError::Model(format!(
                "input {:?}: dimension {k} is not fixed; export with a fixed image size",
                input.name
            ))
        })
    };
    let (shape, flat, layout) = match dims.len() {
        4 if input_is_nhwc => (Shape::new(known(3)?, known(1)?, known(2)?), false, Layout::Nhwc),
        4 => (Shape::new(known(1)?, known(2)?, known(3)?), false, Layout::Nchw),
        2 => (Shape::new(known(1)?, 1, 1), true, Layout::Nchw),
        r => {
            return Err(OnnxError::Model(format!(
                "input {:?} has rank {r}; expected [N, C, H, W] (or [N, H, W, C] followed by a \
                 transpose, or [N, features])",
                input.name
            )))
        }
    };
    values.insert(input.name.clone(), Value::Val(Val::identity(Src::Input, shape, flat, layout)));
    let name = options
        .name
        .clone()
        .or_else(|| (!g.name.is_empty()).then(|| g.name.clone()))
        .unwrap_or_else(|| "imported".into());
    let net = Network::new(&name, shape, 8);
    let mut imp = Importer {
        net,
        shapes: Vec::new(),
        frozen: Vec::new(),
        values,
        remaining: consumers,
        memo: HashMap::new(),
        input_scale: vec![1.0],
        input_shift: vec![0.0],
        notes: Vec::new(),
        node: String::new(),
        op: String::new(),
    };
    if input_is_nhwc {
        imp.notes.push(format!(
            "the model takes NHWC input ({} × {} × {}) and transposes it; the description takes \
             the same image in CHW order",
            shape.height, shape.width, shape.channels
        ));
    }
    for n in &g.node {
        imp.node(n, &outputs)?;
    }
    // The output.
    imp.node = outputs[0].clone();
    imp.op = "graph output".into();
    if let Some(r) = imp.remaining.get_mut(&outputs[0]) {
        *r = 0;
    }
    let out = match imp.values.get(&outputs[0]).cloned() {
        Some(Value::Val(v)) => v,
        Some(Value::Const(_)) => {
            return Err(OnnxError::Model("the graph's output is a constant".into()))
        }
        None => {
            return Err(OnnxError::Model(format!("no node produces the output {:?}", outputs[0])))
        }
    };
    if !out.flat && (out.shape.height != 1 || out.shape.width != 1) {
        return Err(OnnxError::Model(format!(
            "the output is a {} tensor; a network must end in a vector of class scores",
            out.shape
        )));
    }
    if out.perm.is_some() {
        return Err(OnnxError::Model(
            "the output is a flattened NHWC tensor; end the network with a dense layer".into(),
        ));
    }
    let last = match imp.materialize(&outputs[0], &out)? {
        Src::Layer(l) => l,
        Src::Input => return Err(OnnxError::Model("the output is the input itself".into())),
    };
    imp.prune(last);
    // Input normalisation: the provider's (if given) followed by the graph's own.
    let c = shape.channels;
    let graph_affine =
        imp.input_scale.iter().any(|&s| s != 1.0) || imp.input_shift.iter().any(|&t| t != 0.0);
    let pick = |v: &[f64], k: usize, d: f64| v.get(k).or(v.first()).copied().unwrap_or(d);
    let normalization = match (&options.normalization, graph_affine) {
        (None, false) => {
            imp.notes.push(
                "the ONNX file does not say how its input is normalised: none is recorded, so \
                 clients send the model's input as it is (give --input-mean/--input-std to \
                 record the normalisation your training used)"
                    .into(),
            );
            None
        }
        (user, _) => {
            let mut mean = Vec::with_capacity(c);
            let mut std = Vec::with_capacity(c);
            for k in 0..c {
                let (m, s) = user.as_ref().map_or((0.0, 1.0), |u| {
                    let (m, s) = u.channel(k);
                    (m as f64, s as f64)
                });
                let sc = pick(&imp.input_scale, k, 1.0);
                let sh = pick(&imp.input_shift, k, 0.0);
                if sc <= 0.0 {
                    return Err(OnnxError::Model(format!(
                        "the model scales its input channel {k} by {sc}; only positive scales \
                         fold into an input normalisation"
                    )));
                }
                std.push((s / sc) as f32);
                mean.push((m - sh * s / sc) as f32);
            }
            if graph_affine {
                imp.notes.push(format!(
                    "the model normalises its input itself; recorded as the description's input \
                     normalisation (mean {mean:?}, std {std:?})"
                ));
            }
            Some(Normalization { mean, std, pixels: user.as_ref().and_then(|u| u.pixels.clone()) })
        }
    };
    let producer = format!("{} {}", model.producer_name, model.producer_version).trim().to_string();
    imp.net.metadata = Metadata {
        dataset: options.dataset.clone(),
        input_normalization: normalization,
        ..Metadata::default()
    };
    imp.net.metadata.extra.insert(
        "imported_from".into(),
        serde_json::json!({"file": file, "producer": producer, "opset": opset, "notes": imp.notes}),
    );
    imp.net.validate()?;
    Ok(Imported { network: imp.net, notes: imp.notes })
}
