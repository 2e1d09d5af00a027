//! Lowering to the fixed-point program the protocol runs, and its plaintext
//! reference evaluator.
//!
//! Values are field elements read as signed fixed-point numbers; every node
//! records its number of fractional bits: f for activations, f + f_w after a
//! linear layer (f_w is the weights' fractional bits), 2f + f_w inside a
//! quadratic. The rules, shared by the reference and the two-party protocol:
//!
//! * a linear layer (conv or dense, batch norm folded in) takes its input at
//!   f bits and produces f + f_w: weights are round(w·2^f_w), biases
//!   round(b·d·2^(f+f_w)) where d is the input's pending divisor (below);
//! * average pooling is a window *sum* (local, exact); the 1/k² it owes is
//!   carried as a pending divisor d through ReLUs and linear layers and
//!   divided out when the logits are decoded, so no precision is lost;
//! * a ReLU takes f or f + f_w bits and returns f: after a linear layer the
//!   garbled circuit truncates by f_w bits exactly (`Relu { shift: f_w }`);
//! * a quadratic A·x² + B·x + C takes x at f bits (d = 1) and computes
//!   a·x² + b·x + c at 2f + f_w bits (a = round(A·2^f_w),
//!   b = round(B·2^(f+f_w)), c = round(C·2^(2f+f_w))), followed by one
//!   `Trunc` by f + f_w back to f bits;
//! * where a value with more than f bits must enter a linear layer or a
//!   quadratic, a `Trunc` node divides by 2^(bits − f), rounding to nearest.
//!   The protocol truncates faithfully ([`delphi_crypto::trunc`]): never a
//!   wrap-around error, but off by one unit now and then, so networks with
//!   `Trunc` nodes match the reference within a small tolerance, and
//!   all-ReLU networks (which have none) match it exactly. Values entering a
//!   `Trunc` must stay below 2^38 in magnitude (2^10 in real terms at
//!   2f + f_w = 28 bits);
//! * a mixed activation (ReLU on some channels, quadratics on the others)
//!   lowers to both paths on the same input, each node working on its own
//!   channels only ([`Node::channels`]; the others are 0, at no cost): a
//!   `Relu` on the ReLU channels; on the quadratic channels a `Trunc` to f
//!   bits (after a `MulConst` by 2^f_w/d where a divisor d is pending), the
//!   `Quad` with its coefficients multiplied by d (so its result keeps the
//!   ReLU channels' divisor, exactly) and the `Trunc` back to f bits; then
//!   an `Add` joins the two;
//! * residual additions align the two operands (multiplying the one with
//!   fewer fractional bits by a power of two, normalising pending divisors)
//!   and add.

use delphi_crypto::field::{F, HALF, P};
use delphi_crypto::relu::spec::{ReluBits, ReluSpec};
use delphi_crypto::trunc::{ExactTrunc, TruncKind, OFFSET_BITS};

use crate::desc::{Activation, Network, Op, Shape, TruncChoice};
use crate::error::{layer_err, NetError, Result};
use crate::linear::{sum_pool, LinearOp};

/// How one node of a two-party run compares with the reference applied
/// to the run's own inputs ([`FixedProgram::check_node`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeDeviation {
    /// Node index in the program.
    pub node: usize,
    /// Description layer it implements.
    pub layer: Option<usize>,
    /// Operation.
    pub kind: &'static str,
    /// Largest difference, in units of the node's last place.
    pub max_units: u64,
    /// The difference the protocol allows (0: exact).
    pub allowed_units: u64,
    /// Elements that differ by more than allowed.
    pub elements_over: usize,
    /// Reduced ReLU inputs outside the window where the bound is stated.
    pub outside_window: usize,
}

impl NodeDeviation {
    /// Whether the node is within what the protocol allows.
    pub fn ok(&self) -> bool {
        self.elements_over == 0
    }
}

/// One step of the fixed-point program.
#[derive(Clone, Debug, PartialEq)]
pub enum FixedOp {
    /// The client's input, encoded with f fractional bits.
    Input,
    /// A conv or dense layer: weights at f_w bits, bias at f + f_w (times the divisor).
    Linear {
        /// Geometry.
        op: LinearOp,
        /// Integer weights `[out][in][k][k]`.
        weight: Vec<i64>,
        /// Integer biases `[out]`.
        bias: Vec<i64>,
    },
    /// ReLU, then an exact floor division by 2^shift; with `bits`, the
    /// reduced ReLU of that window ([`delphi_crypto::relu`]).
    Relu {
        /// Bits dropped.
        shift: u32,
        /// The reduced ReLU's window (`None`: the exact circuit).
        bits: Option<ReluBits>,
    },
    /// a·x² + b·x + c per channel, exactly (x at f bits, the result at 2f + f_w).
    Quad {
        /// Per channel: coefficient of x², f_w fractional bits.
        a: Vec<i64>,
        /// Per channel: coefficient of x, f + f_w fractional bits.
        b: Vec<i64>,
        /// Per channel: constant, 2f + f_w fractional bits.
        c: Vec<i64>,
    },
    /// Division by 2^shift rounded to nearest: exactly (a deterministic
    /// function of the value) or, with the leaky opt-in, within one unit.
    Trunc {
        /// Bits dropped.
        shift: u32,
        /// The protocol ([`TruncKind`]): lowering picks `Exact` where the
        /// input's proven bound allows it, `ExactWide` elsewhere, and
        /// `Faithful` only for a network that opts in.
        kind: TruncKind,
    },
    /// Multiplication by a public integer.
    MulConst(i64),
    /// Window sums.
    SumPool {
        /// Window.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Element-wise sum of the two inputs.
    Add,
    /// Element-wise difference of the two inputs (first minus second).
    Sub,
    /// Picks elements of its inputs, read one after another as one vector:
    /// output `i` is element `index[i]` of that vector (max pooling's
    /// windows and comparison tree).
    Gather {
        /// Positions in the inputs' concatenation.
        index: Vec<u32>,
    },
}

impl FixedOp {
    /// A short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            FixedOp::Input => "input",
            FixedOp::Linear { op, .. } if op.kernel == 1 && op.input.height == 1 => "dense",
            FixedOp::Linear { .. } => "conv2d",
            FixedOp::Relu { .. } => "relu",
            FixedOp::Quad { .. } => "quad",
            FixedOp::Trunc { .. } => "trunc",
            FixedOp::MulConst(_) => "mul_const",
            FixedOp::SumPool { .. } => "sum_pool",
            FixedOp::Add => "add",
            FixedOp::Sub => "sub",
            FixedOp::Gather { .. } => "gather",
        }
    }
}

/// A node: an operation on earlier nodes' outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: FixedOp,
    /// The nodes it reads (one, or two for `Add`).
    pub inputs: Vec<usize>,
    /// Its output shape.
    pub shape: Shape,
    /// The description layer it comes from (none for the input).
    pub layer: Option<usize>,
    /// The output's fractional bits and its pending divisor: the real
    /// value is signed(v) / (2^bits · divisor).
    pub scale: (u32, u64),
    /// For `Relu`, `Quad` and `Trunc`: the channels it works on (`true`);
    /// its output is 0 on the others, which cost nothing. `None`: all.
    pub channels: Option<Vec<bool>>,
}

impl Node {
    /// The elements the node works on, in order (all when `channels` is None).
    pub fn active(&self) -> Vec<usize> {
        let per = self.shape.height * self.shape.width;
        match &self.channels {
            None => (0..self.shape.len()).collect(),
            Some(ch) => ch
                .iter()
                .enumerate()
                .filter(|(_, &on)| on)
                .flat_map(|(c, _)| c * per..(c + 1) * per)
                .collect(),
        }
    }

    /// How many elements the node works on.
    pub fn active_len(&self) -> usize {
        match &self.channels {
            None => self.shape.len(),
            Some(ch) => ch.iter().filter(|&&on| on).count() * self.shape.height * self.shape.width,
        }
    }

    /// Applies `f(channel, value)` to the elements the node works on; the
    /// others become `zero`.
    pub fn map_active<T: Copy>(
        &self,
        x: &[T],
        zero: T,
        mut f: impl FnMut(usize, T) -> T,
    ) -> Vec<T> {
        let per = (self.shape.height * self.shape.width).max(1);
        x.iter()
            .enumerate()
            .map(|(k, &v)| {
                let c = k / per;
                match &self.channels {
                    Some(ch) if !ch.get(c).copied().unwrap_or(false) => zero,
                    _ => f(c, v),
                }
            })
            .collect()
    }

    /// Gathers the elements the node works on from a full-length vector.
    pub fn gather<T: Copy>(&self, x: &[T]) -> Vec<T> {
        match &self.channels {
            None => x.to_vec(),
            Some(_) => self.active().into_iter().map(|k| x[k]).collect(),
        }
    }

    /// Spreads values of the active elements into a full-length vector
    /// (`zero` elsewhere).
    pub fn scatter<T: Copy>(&self, v: Vec<T>, zero: T) -> Vec<T> {
        match &self.channels {
            None => v,
            Some(_) => {
                let mut out = vec![zero; self.shape.len()];
                for (k, x) in self.active().into_iter().zip(v) {
                    out[k] = x;
                }
                out
            }
        }
    }
}

/// The fixed-point program of a network.
#[derive(Clone, Debug, PartialEq)]
pub struct FixedProgram {
    /// Fractional bits f of activations.
    pub frac_bits: u32,
    /// Fractional bits f_w of weights.
    pub weight_frac_bits: u32,
    /// Nodes in topological order; node 0 is the input.
    pub nodes: Vec<Node>,
    /// The node holding the logits.
    pub output: usize,
    /// The logits' fractional bits.
    pub output_bits: u32,
    /// The logits' pending divisor.
    pub output_divisor: u64,
}

#[derive(Clone, Copy)]
struct Tensor {
    node: usize,
    /// Fractional bits.
    bits: u32,
    div: u64,
    shape: Shape,
}

fn round_fixed(v: f64, bits: u32, index: usize, kind: &'static str) -> Result<i64> {
    let x = (v * (1u64 << bits) as f64).round();
    // Keep weights far from the field's range so that sums cannot wrap.
    if !x.is_finite() || x.abs() > (1u64 << 36) as f64 {
        return Err(layer_err(index, kind, format!("parameter {v} too large for fixed point")));
    }
    Ok(x as i64)
}

struct Lowering {
    f: u32,
    fw: u32,
    /// The truncation every `Trunc` starts with (exact ones are settled
    /// against the proven bounds afterwards).
    trunc: TruncKind,
    /// Per description layer, the kinds its truncations recorded
    /// ([`crate::desc::Layer::truncations`]) and how many were used.
    records: Vec<(Option<Vec<TruncKind>>, usize)>,
    /// Program nodes whose truncation kind came from a record.
    recorded: Vec<usize>,
    nodes: Vec<Node>,
}

impl Lowering {
    fn push(&mut self, op: FixedOp, inputs: Vec<usize>, shape: Shape, layer: usize) -> usize {
        self.nodes.push(Node {
            op,
            inputs,
            shape,
            layer: Some(layer),
            scale: (0, 0),
            channels: None,
        });
        self.nodes.len() - 1
    }

    /// The next truncation of `layer`: its recorded kind, else the default.
    fn trunc_op(&mut self, shift: u32, layer: usize) -> FixedOp {
        let kind = match self.records.get_mut(layer) {
            Some((Some(kinds), used)) => {
                let k = kinds.get(*used).copied();
                *used += 1;
                if k.is_some() {
                    self.recorded.push(self.nodes.len());
                }
                k.unwrap_or(self.trunc)
            }
            _ => self.trunc,
        };
        FixedOp::Trunc { shift, kind }
    }

    /// Pushes a node that works on `channels` only.
    fn push_on(
        &mut self,
        op: FixedOp,
        input: usize,
        shape: Shape,
        layer: usize,
        channels: &[bool],
    ) -> usize {
        let n = self.push(op, vec![input], shape, layer);
        self.nodes[n].channels = Some(channels.to_vec());
        n
    }

    /// Max pooling of node `x` (shape `src`, scale `scale`) by a tree of
    /// comparisons: the windows gathered item by item (a window cut by
    /// the padding repeats its first element: max(a, a) = a), then per
    /// level max(a, b) = b + ReLU(a − b), all pairs of a level in one ReLU
    /// node (one round). Returns the node holding the maxima (CHW).
    fn max_tree(
        &mut self,
        x: usize,
        src: Shape,
        (kernel, stride, pad): (usize, usize, usize),
        scale: (u32, u64),
        layer: usize,
        bits: Option<ReluBits>,
    ) -> Result<(usize, Shape)> {
        let (windows, out) = crate::linear::pool_windows(src, kernel, stride, pad);
        let w = windows.len();
        let flat = |n: usize| Shape::new(n, 1, 1);
        let push = |lw: &mut Lowering, op: FixedOp, inputs: Vec<usize>, len: usize| {
            let n = lw.push(op, inputs, flat(len), layer);
            lw.nodes[n].scale = scale;
            n
        };
        let mut index = Vec::with_capacity(kernel * kernel * w);
        for j in 0..kernel * kernel {
            for win in &windows {
                let at = win.get(j).or(win.first()).ok_or_else(|| {
                    layer_err(layer, "max_pool", "a window lies wholly in the padding")
                })?;
                index.push(*at as u32);
            }
        }
        let mut items = kernel * kernel;
        let mut v = push(self, FixedOp::Gather { index }, vec![x], items * w);
        while items > 1 {
            let half = items / 2;
            let range = |a: usize, b: usize| (a as u32..b as u32).collect::<Vec<u32>>();
            let a = push(self, FixedOp::Gather { index: range(0, half * w) }, vec![v], half * w);
            let b = push(
                self,
                FixedOp::Gather { index: range(half * w, 2 * half * w) },
                vec![v],
                half * w,
            );
            let d = push(self, FixedOp::Sub, vec![a, b], half * w);
            let r = push(self, FixedOp::Relu { shift: 0, bits }, vec![d], half * w);
            let m = push(self, FixedOp::Add, vec![b, r], half * w);
            if items % 2 == 1 {
                // The odd item out joins the next level.
                let mut index = range(0, half * w);
                let last = (half * w + (items - 1) * w) as u32;
                index.extend(last..last + w as u32);
                v = push(self, FixedOp::Gather { index }, vec![m, v], (half + 1) * w);
            } else {
                v = m;
            }
            items = items.div_ceil(2);
        }
        self.nodes[v].shape = out;
        Ok((v, out))
    }

    /// Brings a tensor to f bits with no pending divisor.
    fn normalize(&mut self, mut t: Tensor, layer: usize) -> Tensor {
        if t.div > 1 {
            let m = ((1u64 << self.fw) as f64 / t.div as f64).round() as i64;
            t.node = self.push(FixedOp::MulConst(m), vec![t.node], t.shape, layer);
            t.bits += self.fw;
            t.div = 1;
            self.nodes[t.node].scale = (t.bits, 1);
        }
        self.rescale(t, layer)
    }

    /// Brings a tensor to f bits, keeping its divisor.
    fn rescale(&mut self, mut t: Tensor, layer: usize) -> Tensor {
        if t.bits > self.f {
            let shift = t.bits - self.f;
            let op = self.trunc_op(shift, layer);
            t.node = self.push(op, vec![t.node], t.shape, layer);
            self.nodes[t.node].scale = (self.f, t.div);
            t.bits = self.f;
        }
        t
    }
}

impl FixedProgram {
    /// The correlated OTs node `i`'s offline phase takes: one per client
    /// input bit of its garbled circuits (ReLUs, exact truncations).
    pub fn node_ots(&self, i: usize) -> usize {
        let node = &self.nodes[i];
        let per = match &node.op {
            FixedOp::Relu { shift, bits } => {
                let spec = ReluSpec { shift: *shift, bits: *bits };
                delphi_crypto::relu::relu_circuit_for(spec).circuit().evaluator_inputs()
            }
            FixedOp::Trunc { shift, kind } => kind.exact(*shift).map_or(0, |e| {
                use delphi_crypto::garbled::GcFunction;
                e.gc().circuit().evaluator_inputs()
            }),
            _ => 0,
        };
        node.active_len() * per
    }

    /// The correlated OTs of the whole offline phase (one pool serves
    /// them all, [`delphi_crypto::ot::CotSenderPool`]).
    pub fn correlated_ots(&self) -> usize {
        (0..self.nodes.len()).map(|i| self.node_ots(i)).sum()
    }

    /// Lowers a (validated) network.
    pub fn lower(net: &Network) -> Result<FixedProgram> {
        let shapes = net.validate()?;
        let f = net.fixed_point.frac_bits;
        let fw = net.fixed_point.weight_frac_bits;
        // Batch norms fold into the layer they read.
        let mut bn_of: Vec<Option<usize>> = vec![None; net.layers.len()];
        for (j, l) in net.layers.iter().enumerate() {
            if let Op::BatchNorm { .. } = l.op {
                let src = l.source(j).ok_or_else(|| layer_err(j, "batch_norm", "no input"))?;
                bn_of[src] = Some(j);
            }
        }
        let mut lw = Lowering {
            f,
            fw,
            trunc: match net.fixed_point.truncation {
                TruncChoice::Exact => TruncKind::Exact,
                TruncChoice::FaithfulLeaky => TruncKind::Faithful,
            },
            records: net.layers.iter().map(|l| (l.truncations.clone(), 0)).collect(),
            recorded: Vec::new(),
            nodes: vec![Node {
                op: FixedOp::Input,
                inputs: vec![],
                shape: net.input,
                layer: None,
                scale: (f, 1),
                channels: None,
            }],
        };
        let input = Tensor { node: 0, bits: f, div: 1, shape: net.input };
        let mut out: Vec<Tensor> = Vec::with_capacity(net.layers.len());
        // A ReLU layer read only by a max pool is fused into it: the pool's
        // comparisons run on the ReLU's input and one ReLU per window
        // follows (ReLU and the truncation are monotone, so
        // ReLU(max x) >> s = max(ReLU(x) >> s) exactly).
        let fused = |i: usize| -> bool {
            let next = net.layers.get(i + 1);
            next.is_some_and(|l| matches!(l.op, Op::MaxPool { .. }) && l.source(i + 1) == Some(i))
                && net.readers(i) == 1
                && matches!(net.layers[i].op, Op::Activation(Activation::Relu))
                && net.layers[i].relu_bits.is_none_or(|b| b.is_exact())
        };
        let mut deferred: Vec<Option<FixedOp>> = vec![None; net.layers.len()];
        for (i, layer) in net.layers.iter().enumerate() {
            let kind = layer.op.kind();
            let src = layer.source(i);
            let t = src.map(|j| out[j]).unwrap_or(input);
            let res = match &layer.op {
                Op::Conv2d { .. } | Op::Dense { .. } => {
                    let t = lw.rescale(t, i);
                    let (op, w, b) = linear_params(net, i, t.shape, bn_of[i])?;
                    let weight = w
                        .iter()
                        .map(|&v| round_fixed(v, fw, i, kind))
                        .collect::<Result<Vec<_>>>()?;
                    let bias = b
                        .iter()
                        .map(|&v| round_fixed(v * t.div as f64, f + fw, i, kind))
                        .collect::<Result<Vec<_>>>()?;
                    let node =
                        lw.push(FixedOp::Linear { op, weight, bias }, vec![t.node], op.output, i);
                    Tensor { node, bits: f + fw, div: t.div, shape: op.output }
                }
                Op::BatchNorm { .. } => t,
                Op::AvgPool { kernel, stride } => {
                    let shape = shapes[i];
                    let node = lw.push(
                        FixedOp::SumPool { kernel: *kernel, stride: *stride },
                        vec![t.node],
                        shape,
                        i,
                    );
                    Tensor { node, bits: t.bits, div: t.div * (kernel * kernel) as u64, shape }
                }
                Op::MaxPool { kernel, stride, padding } => {
                    let (node, shape) = lw.max_tree(
                        t.node,
                        t.shape,
                        (*kernel, *stride, *padding),
                        (t.bits, t.div),
                        i,
                        layer.relu_bits,
                    )?;
                    match src.and_then(|j| deferred[j].take().map(|op| (j, op))) {
                        Some((j, relu)) => {
                            let r = lw.push(relu, vec![node], shape, j);
                            Tensor { node: r, bits: f, div: t.div, shape }
                        }
                        None => Tensor { node, shape, ..t },
                    }
                }
                Op::Residual { from } => {
                    let mut a = t;
                    let mut b = out[*from];
                    if a.div != b.div {
                        a = lw.normalize(a, i);
                        b = lw.normalize(b, i);
                    }
                    let bits = a.bits.max(b.bits);
                    for x in [&mut a, &mut b] {
                        if x.bits < bits {
                            let m = 1i64 << (bits - x.bits);
                            x.node = lw.push(FixedOp::MulConst(m), vec![x.node], x.shape, i);
                            lw.nodes[x.node].scale = (bits, x.div);
                            x.bits = bits;
                        }
                    }
                    let node = lw.push(FixedOp::Add, vec![a.node, b.node], a.shape, i);
                    Tensor { node, bits, div: a.div, shape: a.shape }
                }
                Op::Flatten => Tensor { shape: shapes[i], ..t },
                Op::Activation(act) => {
                    let per = act.per_channel(t.shape.channels);
                    let relu: Vec<bool> = per.iter().map(Option::is_none).collect();
                    let coeffs = |d: u64| -> Result<FixedOp> {
                        let (mut a, mut b, mut c) = (vec![], vec![], vec![]);
                        for q in &per {
                            let (qa, qb, qc) = q.unwrap_or((0.0, 0.0, 0.0));
                            let d = d as i64;
                            a.push(round_fixed(qa as f64, fw, i, kind)? * d);
                            b.push(round_fixed(qb as f64, f + fw, i, kind)? * d);
                            c.push(round_fixed(qc as f64, 2 * f + fw, i, kind)? * d);
                        }
                        Ok(FixedOp::Quad { a, b, c })
                    };
                    let relu_op = |shift: u32| -> Result<FixedOp> {
                        let spec = ReluSpec { shift, bits: layer.relu_bits };
                        spec.check().map_err(|e| layer_err(i, kind, e.to_string()))?;
                        Ok(FixedOp::Relu { shift, bits: layer.relu_bits })
                    };
                    if relu.iter().all(|&r| r) && fused(i) {
                        // Applied after the max pool that reads it.
                        deferred[i] = Some(relu_op(t.bits - f)?);
                        t
                    } else if relu.iter().all(|&r| r) {
                        let shift = t.bits - f;
                        let node = lw.push(relu_op(shift)?, vec![t.node], t.shape, i);
                        Tensor { node, bits: f, div: t.div, shape: t.shape }
                    } else if relu.iter().all(|&r| !r) {
                        let t = lw.normalize(t, i);
                        let node = lw.push(coeffs(1)?, vec![t.node], t.shape, i);
                        lw.nodes[node].scale = (2 * f + fw, 1);
                        lw.rescale(Tensor { node, bits: 2 * f + fw, div: 1, shape: t.shape }, i)
                    } else {
                        let quad: Vec<bool> = relu.iter().map(|r| !r).collect();
                        let r = lw.push_on(relu_op(t.bits - f)?, t.node, t.shape, i, &relu);
                        lw.nodes[r].scale = (f, t.div);
                        // The quadratic channels: to f bits with no divisor
                        // (the product by 2^f_w/d is local and harmless on
                        // the ReLU channels, which the truncation drops).
                        let mut q = t;
                        if q.div > 1 {
                            let m = ((1u64 << fw) as f64 / q.div as f64).round() as i64;
                            q.node = lw.push(FixedOp::MulConst(m), vec![q.node], q.shape, i);
                            q.bits += fw;
                            lw.nodes[q.node].scale = (q.bits, 1);
                        }
                        if q.bits > f {
                            let op = lw.trunc_op(q.bits - f, i);
                            q.node = lw.push_on(op, q.node, q.shape, i, &quad);
                            lw.nodes[q.node].scale = (f, 1);
                        }
                        let sq = lw.push_on(coeffs(t.div)?, q.node, q.shape, i, &quad);
                        lw.nodes[sq].scale = (2 * f + fw, t.div);
                        let op = lw.trunc_op(f + fw, i);
                        let back = lw.push_on(op, sq, q.shape, i, &quad);
                        lw.nodes[back].scale = (f, t.div);
                        let node = lw.push(FixedOp::Add, vec![r, back], t.shape, i);
                        Tensor { node, bits: f, div: t.div, shape: t.shape }
                    }
                }
            };
            lw.nodes[res.node].scale = (res.bits, res.div);
            out.push(res);
        }
        let last = *out.last().ok_or_else(|| NetError::Invalid("no layers".into()))?;
        let mut prog = FixedProgram {
            frac_bits: f,
            weight_frac_bits: fw,
            nodes: lw.nodes,
            output: last.node,
            output_bits: last.bits,
            output_divisor: last.div,
        };
        for (i, (rec, used)) in lw.records.iter().enumerate() {
            if let Some(kinds) = rec.as_ref().filter(|k| k.len() != *used) {
                return Err(layer_err(
                    i,
                    net.layers[i].op.kind(),
                    format!("records {} truncations; its program has {used}", kinds.len()),
                ));
            }
        }
        prog.settle(net, &lw.recorded)?;
        Ok(prog)
    }

    /// Whether node `i` is one of max pooling's comparisons (a ReLU of a
    /// difference, no truncation): it belongs to the pooling layer, not to
    /// an activation layer, and takes no ReLU window.
    pub fn is_comparison(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        let exact = match n.op {
            FixedOp::Relu { shift: 0, bits } => bits.is_none_or(|b| b.is_exact()),
            _ => false,
        };
        exact && n.inputs.first().is_some_and(|&j| matches!(self.nodes[j].op, FixedOp::Sub))
    }

    /// Settles what needs the program's proven bounds (interval arithmetic
    /// from the weights and the declared input range,
    /// [`crate::range::proven_bounds`]): each exact truncation runs the
    /// bounded circuit where its input is proven within 2^38 and the wide
    /// one elsewhere; an exact ReLU window must hold its input's proven
    /// bound (otherwise its result could depend on the shares).
    /// A kind a layer records (`recorded` nodes) is kept, but a bounded
    /// one must still be proven where the weights are known.
    fn settle(&mut self, net: &Network, recorded: &[usize]) -> Result<()> {
        let bounds = self.proven_bounds_for(net);
        for i in 0..self.nodes.len() {
            let x = self.nodes[i].inputs.first().map_or(0.0, |&j| bounds[j]);
            let layer = self.nodes[i].layer.unwrap_or(0);
            let err = |why: String| layer_err(layer, net.layers[layer].op.kind(), why);
            match &mut self.nodes[i].op {
                FixedOp::Trunc { shift, kind } => {
                    let bounded = ExactTrunc { shift: *shift, wide: false };
                    if *kind == TruncKind::Exact && x > bounded.max_abs() as f64 {
                        if recorded.contains(&i) {
                            return Err(err(format!(
                                "records a bounded exact truncation whose input is not proven \
                                 within 2^{OFFSET_BITS} (2^{:.1}): record exact-wide",
                                x.log2()
                            )));
                        }
                        *kind = TruncKind::ExactWide;
                    }
                    if *shift < kind.min_shift() || *shift > kind.max_shift() {
                        return Err(err(format!(
                            "a truncation by {shift} bits: the {kind} truncation takes {} to {} \
                             (change frac_bits or weight_frac_bits)",
                            kind.min_shift(),
                            kind.max_shift()
                        )));
                    }
                }
                FixedOp::Relu { bits: Some(b), .. }
                    if b.is_exact() && x >= b.exact_sign_limit() as f64 =>
                {
                    let need = (x + 1.0).log2().ceil() as u32 + 1;
                    return Err(err(format!(
                        "the exact ReLU window {b} does not hold its input's proven bound \
                         (2^{:.1}): it needs 0..{need}, or full width",
                        x.max(1.0).log2()
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The program's proven bound per node (field units) for its declared
    /// input range: what [`FixedProgram::lower`] settles truncations and
    /// exact ReLU windows against.
    pub fn proven_bounds_for(&self, net: &Network) -> Vec<f64> {
        let (lo, hi) = net.input_range();
        crate::range::proven_bounds(self, lo.abs().max(hi.abs()))
    }

    /// Encodes a real input with f fractional bits.
    pub fn encode_input(&self, x: &[f32]) -> Result<Vec<F>> {
        let fp = delphi_crypto::fixed::FixedPoint::new(self.frac_bits)?;
        x.iter().map(|&v| fp.encode(v as f64).map_err(NetError::from)).collect()
    }

    /// Decodes the logits.
    pub fn decode_output(&self, y: &[F]) -> Vec<f64> {
        let denom = (1u64 << self.output_bits) as f64 * self.output_divisor as f64;
        y.iter().map(|v| v.to_signed() as f64 / denom).collect()
    }

    /// Number of ReLUs and quadratic activations (element counts).
    pub fn activation_counts(&self) -> (usize, usize) {
        let mut relus = 0;
        let mut quads = 0;
        for n in &self.nodes {
            match n.op {
                FixedOp::Relu { .. } => relus += n.active_len(),
                FixedOp::Quad { .. } => quads += n.active_len(),
                _ => {}
            }
        }
        (relus, quads)
    }

    /// The roundings whose direction depends on the shares (element
    /// counts): leaky reduced ReLUs (windows with lo ≥ 1) and faithful truncations. Each is a threshold
    /// test on a hidden value that a client repeating a query can observe
    /// (docs/security.md); `(0, 0)`: the client's view is a function of its
    /// input alone.
    pub fn share_dependent_roundings(&self) -> (usize, usize) {
        let mut reduced = 0;
        let mut truncs = 0;
        for n in &self.nodes {
            match n.op {
                FixedOp::Relu { bits: Some(b), .. } if !b.is_exact() => reduced += n.active_len(),
                FixedOp::Trunc { kind: TruncKind::Faithful, .. } => truncs += n.active_len(),
                _ => {}
            }
        }
        (reduced, truncs)
    }

    /// A warning naming the share-dependent roundings, if there are any.
    pub fn rounding_warning(&self) -> Option<String> {
        match self.share_dependent_roundings() {
            (0, 0) => None,
            (r, t) => Some(format!(
                "this plan rounds depending on the shares at {r} reduced ReLUs and {t} truncated \
                 values: a client that repeats a query can learn about the weights \
                 (docs/security.md); exact or full-width ReLU windows and exact truncations \
                 (the defaults) avoid it"
            )),
        }
    }

    /// Runs the program on an encoded input; returns every node's value.
    pub fn eval_all(&self, input: &[F]) -> Result<Vec<Vec<F>>> {
        self.eval_all_with(input, &mut trunc)
    }

    /// [`FixedProgram::eval_all`] with another rule for `Trunc` nodes (for
    /// example one that is off by a unit now and then, as the protocol is,
    /// to measure how a network amplifies truncation errors).
    pub fn eval_all_with(
        &self,
        input: &[F],
        truncate: &mut dyn FnMut(F, u32, TruncKind) -> F,
    ) -> Result<Vec<Vec<F>>> {
        if input.len() != self.nodes[0].shape.len() {
            return Err(NetError::Invalid(format!(
                "input has {} values, the network takes {}",
                input.len(),
                self.nodes[0].shape.len()
            )));
        }
        let mut vals: Vec<Vec<F>> = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            let v = self.eval_node(i, &vals, input, truncate);
            vals.push(v);
        }
        Ok(vals)
    }

    /// Node `i` computed from the values `vals` of the nodes before it (and
    /// the encoded `input` for the input node), with `truncate` for `Trunc`
    /// nodes. Checking a two-party run node by node uses it on the run's own
    /// (reconstructed) values.
    ///
    /// # Panics
    /// If `vals` lacks a node that node `i` reads.
    pub fn eval_node(
        &self,
        i: usize,
        vals: &[Vec<F>],
        input: &[F],
        truncate: &mut dyn FnMut(F, u32, TruncKind) -> F,
    ) -> Vec<F> {
        let node = &self.nodes[i];
        {
            let x = node.inputs.first().map(|&j| &vals[j][..]).unwrap_or(input);
            match &node.op {
                FixedOp::Input => input.to_vec(),
                FixedOp::Linear { op, weight, bias } => linear_field(op, x, weight, bias),
                FixedOp::Relu { shift, bits } => {
                    let spec = ReluSpec { shift: *shift, bits: *bits };
                    node.map_active(x, F::ZERO, |_, v| spec.reference(v))
                }
                FixedOp::Quad { a, b, c } => node.map_active(x, F::ZERO, |ch, v| {
                    let (a, b, c) = (F::from_i64(a[ch]), F::from_i64(b[ch]), F::from_i64(c[ch]));
                    a * v * v + b * v + c
                }),
                FixedOp::Trunc { shift, kind } => {
                    node.map_active(x, F::ZERO, |_, v| truncate(v, *shift, *kind))
                }
                FixedOp::MulConst(m) => {
                    let m = F::from_i64(*m);
                    x.iter().map(|&v| v * m).collect()
                }
                FixedOp::SumPool { kernel, stride } => {
                    let src = self.nodes[node.inputs[0]].shape;
                    sum_pool(x, src, *kernel, *stride, F::ZERO, |a, b| a + b).0
                }
                FixedOp::Add => {
                    let y = &vals[node.inputs[1]];
                    x.iter().zip(y).map(|(a, b)| *a + *b).collect()
                }
                FixedOp::Sub => {
                    let y = &vals[node.inputs[1]];
                    x.iter().zip(y).map(|(a, b)| *a - *b).collect()
                }
                FixedOp::Gather { index } => gather(index, &node.inputs, vals, 1),
            }
        }
    }

    /// Compares node `i` of a two-party run with the reference applied to
    /// the run's own values of the nodes it reads (`vals`: every node's
    /// reconstructed value, c + s): linear, pooling, sums and full-width
    /// ReLUs must match exactly, a `Trunc` within one unit, a reduced ReLU
    /// within its stated bound wherever its input lies inside the window.
    pub fn check_node(&self, i: usize, vals: &[Vec<F>]) -> NodeDeviation {
        let node = &self.nodes[i];
        let mut dev = NodeDeviation {
            node: i,
            layer: node.layer,
            kind: node.op.kind(),
            max_units: 0,
            allowed_units: 0,
            elements_over: 0,
            outside_window: 0,
        };
        if matches!(node.op, FixedOp::Input) {
            return dev;
        }
        // Trunc: the reference rounds to nearest; the protocol is within one.
        let want = self.eval_node(i, vals, &vals[0], &mut trunc);
        let got = &vals[i];
        let limit = match &node.op {
            FixedOp::Relu { shift, bits } => {
                let spec = ReluSpec { shift: *shift, bits: *bits };
                dev.allowed_units = spec.error_bound();
                bits.map(|b| b.exact_sign_limit())
            }
            FixedOp::Trunc { kind, .. } => {
                dev.allowed_units = u64::from(!kind.is_exact());
                None
            }
            _ => None,
        };
        let input = node.inputs.first().map(|&j| &vals[j]);
        for k in 0..got.len().min(want.len()) {
            let d = (got[k].to_signed() - want[k].to_signed()).unsigned_abs();
            if let (Some(limit), Some(x)) = (limit, input) {
                if x[k].to_signed().abs() >= limit {
                    // Outside the window the bound is not stated.
                    dev.outside_window += 1;
                    continue;
                }
            }
            dev.max_units = dev.max_units.max(d);
            if d > dev.allowed_units {
                dev.elements_over += 1;
            }
        }
        if got.len() != want.len() {
            dev.elements_over += got.len().abs_diff(want.len());
        }
        dev
    }

    /// A batch size for [`FixedProgram::eval_batch`]: as many images as
    /// keep the largest layer's values of the whole batch within ~8 MB
    /// (they stay in cache), between 1 and 64.
    pub fn preferred_batch(&self) -> usize {
        let widest = self.nodes.iter().map(|n| n.shape.len()).max().unwrap_or(1);
        ((8 << 20) / (8 * widest.max(1))).clamp(1, 64)
    }

    /// Runs the program on many inputs at once — every node's values
    /// interleaved input by input, so linear layers run over the batch in
    /// their innermost loops — and returns each input's logits: exactly
    /// what [`FixedProgram::eval`] returns for it.
    pub fn eval_batch(&self, inputs: &[Vec<F>]) -> Result<Vec<Vec<F>>> {
        self.eval_batch_with(inputs, &mut |_, spec, v| spec.reference(v))
    }

    /// [`FixedProgram::eval_batch`] with another rule for ReLU elements:
    /// `relu(node, spec, v)` gives the output for input v of ReLU node
    /// `node` (for example the protocol's own randomised result, see
    /// [`ReluSpec::protocol_output`], or the reference while recording
    /// what the ReLUs see).
    pub fn eval_batch_with(
        &self,
        inputs: &[Vec<F>],
        relu: &mut dyn FnMut(usize, ReluSpec, F) -> F,
    ) -> Result<Vec<Vec<F>>> {
        let nb = inputs.len();
        if nb == 0 {
            return Ok(Vec::new());
        }
        let len0 = self.nodes[0].shape.len();
        if let Some(x) = inputs.iter().find(|x| x.len() != len0) {
            return Err(NetError::Invalid(format!(
                "input has {} values, the network takes {len0}",
                x.len()
            )));
        }
        // The last reader of every node, so values are dropped once used.
        let mut last_use: Vec<usize> = (0..self.nodes.len()).collect();
        for (i, n) in self.nodes.iter().enumerate() {
            for &j in &n.inputs {
                last_use[j] = last_use[j].max(i);
            }
        }
        last_use[self.output] = usize::MAX;
        let mut vals: Vec<Vec<F>> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let x: &[F] = node.inputs.first().map(|&j| &vals[j][..]).unwrap_or(&[]);
            // Interleaved elements per channel.
            let per = (node.shape.height * node.shape.width * nb).max(1);
            let channels = node.channels.as_deref();
            let v = match &node.op {
                FixedOp::Input => {
                    let mut v = vec![F::ZERO; len0 * nb];
                    for (n, x) in inputs.iter().enumerate() {
                        for (e, &value) in x.iter().enumerate() {
                            v[e * nb + n] = value;
                        }
                    }
                    v
                }
                FixedOp::Linear { op, weight, bias } => {
                    let signed: Vec<i64> = x.iter().map(|v| v.to_signed()).collect();
                    match op.apply_i64_batch(&signed, weight, bias, nb) {
                        Some(y) => y.into_iter().map(F::from_i64).collect(),
                        None => {
                            // The exact general path, input by input.
                            let ins = self.nodes[node.inputs[0]].shape.len();
                            let outs: Vec<Vec<F>> = (0..nb)
                                .map(|n| {
                                    let xi: Vec<F> = (0..ins).map(|e| x[e * nb + n]).collect();
                                    linear_field(op, &xi, weight, bias)
                                })
                                .collect();
                            (0..op.output.len())
                                .flat_map(|e| outs.iter().map(move |o| o[e]))
                                .collect()
                        }
                    }
                }
                FixedOp::Relu { shift, bits } => {
                    let spec = ReluSpec { shift: *shift, bits: *bits };
                    map_channels(x, per, channels, |_, v| relu(i, spec, v))
                }
                FixedOp::Quad { a, b, c } => map_channels(x, per, channels, |ch, v| {
                    let (a, b, c) = (F::from_i64(a[ch]), F::from_i64(b[ch]), F::from_i64(c[ch]));
                    a * v * v + b * v + c
                }),
                FixedOp::Trunc { shift, kind } => {
                    map_channels(x, per, channels, |_, v| trunc(v, *shift, *kind))
                }
                FixedOp::MulConst(m) => {
                    let m = F::from_i64(*m);
                    x.iter().map(|&v| v * m).collect()
                }
                FixedOp::SumPool { kernel, stride } => {
                    let src = self.nodes[node.inputs[0]].shape;
                    let out = node.shape;
                    let mut y = vec![F::ZERO; out.len() * nb];
                    for c in 0..out.channels {
                        for oy in 0..out.height {
                            for ox in 0..out.width {
                                let o = ((c * out.height + oy) * out.width + ox) * nb;
                                let dst = &mut y[o..o + nb];
                                for ky in 0..*kernel {
                                    for kx in 0..*kernel {
                                        let (sy, sx) = (oy * stride + ky, ox * stride + kx);
                                        let e = ((c * src.height + sy) * src.width + sx) * nb;
                                        for (d, v) in dst.iter_mut().zip(&x[e..e + nb]) {
                                            *d += *v;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    y
                }
                FixedOp::Add => {
                    let y = &vals[node.inputs[1]];
                    x.iter().zip(y).map(|(a, b)| *a + *b).collect()
                }
                FixedOp::Sub => {
                    let y = &vals[node.inputs[1]];
                    x.iter().zip(y).map(|(a, b)| *a - *b).collect()
                }
                FixedOp::Gather { index } => gather(index, &node.inputs, &vals, nb),
            };
            vals.push(v);
            for &j in &node.inputs {
                if last_use[j] == i {
                    vals[j] = Vec::new();
                }
            }
        }
        let out = std::mem::take(&mut vals[self.output]);
        let m = self.nodes[self.output].shape.len();
        Ok((0..nb).map(|n| (0..m).map(|e| out[e * nb + n]).collect()).collect())
    }

    /// Runs the program; returns the logits (field elements).
    pub fn eval(&self, input: &[F]) -> Result<Vec<F>> {
        let mut all = self.eval_all(input)?;
        Ok(std::mem::take(&mut all[self.output]))
    }
}

/// What truncation `kind` by f bits computes: signed(v) / 2^f rounded to
/// nearest (ties up), back in the field, for |v| ≤ 2^38 (beyond it the wide
/// circuit's fixed result); the faithful protocol is within one unit of it.
pub fn trunc(v: F, f: u32, kind: TruncKind) -> F {
    kind.reference(v, f)
}

/// `f(channel, v)` on every element of a channel-major vector (`per`
/// elements a channel), zero on the channels `channels` leaves out.
fn map_channels(
    x: &[F],
    per: usize,
    channels: Option<&[bool]>,
    mut f: impl FnMut(usize, F) -> F,
) -> Vec<F> {
    let mut out = Vec::with_capacity(x.len());
    for (ch, chunk) in x.chunks(per).enumerate() {
        if channels.is_none_or(|c| c.get(ch).copied().unwrap_or(false)) {
            out.extend(chunk.iter().map(|&v| f(ch, v)));
        } else {
            out.extend(std::iter::repeat_n(F::ZERO, chunk.len()));
        }
    }
    out
}

/// A linear layer on field elements: Σ w·x + b mod p, exactly. Computed in
/// f64 when every partial sum stays below 2^53, else in i64 on the signed
/// values when none can overflow (the sum is then the same integer, so the
/// same field element), else with i128 accumulators.
pub fn linear_field(op: &LinearOp, x: &[F], w: &[i64], b: &[i64]) -> Vec<F> {
    let signed: Vec<i64> = x.iter().map(|v| v.to_signed()).collect();
    if let Some(y) = op.apply_i64(&signed, w, b) {
        return y.into_iter().map(F::from_i64).collect();
    }
    op.apply(
        x,
        w,
        |oc| b.get(oc).copied().unwrap_or(0) as i128,
        |acc, w, x| *acc += w as i128 * x.to_signed() as i128,
        |acc| {
            let r = acc.rem_euclid(P as i128) as u64;
            F::from_u64(r)
        },
    )
}

/// The geometry and float parameters of linear layer `i`, batch norm folded.
fn linear_params(
    net: &Network,
    i: usize,
    xs: Shape,
    bn: Option<usize>,
) -> Result<(LinearOp, Vec<f64>, Vec<f64>)> {
    let (op, weight, bias_values, out_c) = match &net.layers[i].op {
        Op::Conv2d {
            out_channels, kernel, stride, padding, weight, bias_values, groups, ..
        } => {
            let pad = padding.amount(*kernel);
            (
                LinearOp::conv(xs, *out_channels, *kernel, *stride, pad).with_groups(*groups),
                std::borrow::Cow::Owned(crate::linear::expand_groups(
                    weight,
                    *out_channels,
                    xs.channels,
                    *groups,
                    kernel * kernel,
                )),
                bias_values,
                *out_channels,
            )
        }
        Op::Dense { out_features, weight, bias_values, .. } => (
            LinearOp::dense(xs.channels, *out_features),
            std::borrow::Cow::Borrowed(weight),
            bias_values,
            *out_features,
        ),
        _ => return Err(layer_err(i, net.layers[i].op.kind(), "not a linear layer")),
    };
    let mut w: Vec<f64> = weight.iter().map(|&v| v as f64).collect();
    let mut b: Vec<f64> =
        (0..out_c).map(|c| bias_values.get(c).copied().unwrap_or(0.0) as f64).collect();
    if let Some(j) = bn {
        if let Op::BatchNorm { eps, gamma, beta, mean, var } = &net.layers[j].op {
            let per = w.len() / out_c;
            for c in 0..out_c {
                let s = gamma[c] as f64 / (var[c] as f64 + *eps as f64).sqrt();
                for v in &mut w[c * per..(c + 1) * per] {
                    *v *= s;
                }
                b[c] = (b[c] - mean[c] as f64) * s + beta[c] as f64;
            }
        }
    }
    Ok((op, w, b))
}

/// Whether a field value is far enough from the wrap-around that the signed
/// reading is trustworthy (|v| below a quarter of p).
pub fn in_safe_range(v: F) -> bool {
    v.to_signed().unsigned_abs() < HALF / 2
}

/// [`FixedOp::Gather`] on values laid out `nb` per element (a batch of `nb`
/// inputs side by side): picks whole groups from the inputs' concatenation.
pub fn gather<T: Copy>(index: &[u32], inputs: &[usize], vals: &[Vec<T>], nb: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(index.len() * nb);
    for &k in index {
        let mut k = k as usize * nb;
        for &j in inputs {
            let v = &vals[j];
            if k < v.len() {
                out.extend_from_slice(&v[k..k + nb]);
                break;
            }
            k -= v.len();
        }
    }
    out
}
