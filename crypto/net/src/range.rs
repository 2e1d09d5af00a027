//! Value ranges of a fixed-point program: what keeps the protocol exact.
//!
//! The protocol computes in the field Z_p (p ≈ 2^41). A value is read as
//! signed, so every node's value must stay below p/2 ≈ 2^40 in magnitude
//! or it wraps around — silently: the reference wraps the same way, so
//! comparing the two proves nothing. The faithful truncation
//! ([`delphi_crypto::trunc`]) is narrower: its input must stay below
//! 2^38 − 2^shift, or its result depends on the client's random share (a
//! leak as well as an error). Neither party can see a wrap while the
//! protocol runs (each holds a random share), so the ranges are checked
//! when a plan is loaded, before anything runs, and the client's inputs are
//! checked against the range the network declares
//! ([`crate::Network::input_range`]).
//!
//! Two bounds per node:
//!
//! * **proven** — interval arithmetic from the weights and the declared
//!   input range: |Σ w·x + b| ≤ Σ|w|·B + |b|, a quadratic's
//!   |a|·B² + |b|·B + |c|, and so on. Sound, and for shallow networks
//!   tight enough; through many layers it grows by each layer's weight norm
//!   and soon says nothing.
//! * **measured** — the program evaluated without wrap-around (in f64) on
//!   inputs sampled from the declared range (uniform, plus the two corners)
//!   and, where the description records them, the activation ranges the
//!   trainer measured on its training data, with [`HEADROOM_BITS`] bits of
//!   headroom.
//!
//! A plan passes if, at every node, the proven bound or the measured one
//! (with headroom) is within the limit. Otherwise it is refused with an
//! error naming the layer ([`RangeReport::check`]); a caller may downgrade
//! that to a warning that states how many of the sampled inputs actually
//! overflowed (the measured probability).

use rand::{Rng, SeedableRng};

use delphi_crypto::field::HALF;
use delphi_crypto::trunc::{max_abs, TruncKind, OFFSET_BITS};

use crate::error::{NetError, Result};
use crate::fixed::{FixedOp, FixedProgram};
use crate::linear::sum_pool;

/// Headroom demanded of measured peaks: 3 bits (8×).
pub const HEADROOM_BITS: u32 = 3;
/// Inputs sampled from the declared range.
pub const SAMPLES: usize = 48;

/// The limit a node's value must respect.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// The largest magnitude allowed (field units).
    pub max: f64,
    /// What the limit protects.
    pub what: &'static str,
}

/// Where a plan's values come closest to a limit, or cross it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Violation {
    /// The program node.
    pub node: usize,
    /// The description layer.
    pub layer: Option<usize>,
    /// The node's operation.
    pub kind: &'static str,
    /// The proven bound (field units).
    pub proven: f64,
    /// The measured peak (field units), before headroom.
    pub measured: f64,
    /// The limit.
    pub limit: f64,
    /// What the limit protects.
    pub what: &'static str,
}

/// The outcome of the range analysis of a program.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RangeReport {
    /// The declared input range (real values).
    pub input_range: (f64, f64),
    /// Every node within its limit by interval arithmetic alone.
    pub proven: bool,
    /// Nodes where neither bound is within the limit (first the worst).
    pub violations: Vec<Violation>,
    /// Inputs sampled.
    pub sampled: usize,
    /// Of which some node actually crossed a limit (no headroom).
    pub overflowing: usize,
    /// The smallest margin, in bits, between the limit and the better of
    /// the two bounds (measured with its headroom taken off).
    pub margin_bits: f64,
}

impl RangeReport {
    /// Refuses the plan if a node can leave its range, naming the layer.
    pub fn check(&self) -> Result<()> {
        match self.violations.first() {
            None => Ok(()),
            Some(v) => Err(NetError::Range {
                layer: v.layer.unwrap_or(0),
                kind: v.kind,
                what: v.what,
                measured: v.measured,
                limit: v.limit,
                overflowing: self.overflowing,
                sampled: self.sampled,
            }),
        }
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        if self.proven {
            format!(
                "value ranges: proven within the field and the truncations' safe ranges for inputs in [{:.3}, {:.3}] ({:.1} bits to spare)",
                self.input_range.0, self.input_range.1, self.margin_bits
            )
        } else if self.violations.is_empty() {
            format!(
                "value ranges: within every limit on {} sampled inputs in [{:.3}, {:.3}] with {HEADROOM_BITS} bits of headroom ({:.1} bits to spare); interval arithmetic alone cannot prove it for this depth",
                self.sampled, self.input_range.0, self.input_range.1, self.margin_bits
            )
        } else {
            format!(
                "value ranges: {} node(s) can leave their range; {} of {} sampled inputs overflowed",
                self.violations.len(),
                self.overflowing,
                self.sampled
            )
        }
    }
}

/// The limit of every node's output, and of each truncation's input.
fn limits(prog: &FixedProgram) -> Vec<(Limit, Option<Limit>)> {
    let field = Limit { max: (HALF - 1) as f64, what: "the field (values wrap around)" };
    prog.nodes
        .iter()
        .map(|n| {
            let input = match n.op {
                FixedOp::Trunc { shift, kind: TruncKind::Faithful } => Some(Limit {
                    max: max_abs(shift) as f64,
                    what: "the faithful truncation's safe range (its result would depend on the client's share)",
                }),
                // Exact: proven by lowering (it picks the wide circuit
                // otherwise); wide: beyond it the result is not v/2^shift,
                // though still a function of v alone.
                FixedOp::Trunc { kind, .. } => Some(Limit {
                    max: (1u64 << OFFSET_BITS) as f64,
                    what: if kind == TruncKind::Exact {
                        "the exact truncation's range"
                    } else {
                        "the wide truncation's range (beyond it the result is wrong, not share-dependent)"
                    },
                }),
                _ => None,
            };
            (field, input)
        })
        .collect()
}

/// Per node, the largest magnitude interval arithmetic allows when every
/// input lies within ±`input_bound` (real units).
pub fn proven_bounds(prog: &FixedProgram, input_bound: f64) -> Vec<f64> {
    let mut b: Vec<f64> = Vec::with_capacity(prog.nodes.len());
    for node in &prog.nodes {
        let x = node.inputs.first().map(|&j| b[j]).unwrap_or(0.0);
        let v = match &node.op {
            FixedOp::Input => (input_bound * (1u64 << prog.frac_bits) as f64).ceil() + 1.0,
            FixedOp::Linear { op, weight, bias } => {
                let per = weight.len() / op.output.channels.max(1);
                weight
                    .chunks(per.max(1))
                    .enumerate()
                    .map(|(oc, w)| {
                        let norm: f64 = w.iter().map(|v| v.unsigned_abs() as f64).sum();
                        norm * x + bias.get(oc).map_or(0.0, |b| b.unsigned_abs() as f64)
                    })
                    .fold(0.0, f64::max)
            }
            FixedOp::Relu { shift, bits } => {
                let plain = (x / (1u64 << shift) as f64).floor();
                match bits {
                    None => plain,
                    // At most the window's largest output, plus the
                    // protocol's stated error.
                    Some(b) => {
                        let top = ((1u64 << (b.hi - 1)) >> shift) as f64;
                        plain.min(top) + b.error_bound(*shift) as f64
                    }
                }
            }
            FixedOp::Quad { a, b, c } => (0..a.len())
                .map(|k| {
                    a[k].unsigned_abs() as f64 * x * x
                        + b[k].unsigned_abs() as f64 * x
                        + c[k].unsigned_abs() as f64
                })
                .fold(0.0, f64::max),
            FixedOp::Trunc { shift, .. } => (x / (1u64 << shift) as f64).ceil() + 1.0,
            FixedOp::MulConst(m) => x * m.unsigned_abs() as f64,
            FixedOp::SumPool { kernel, .. } => x * (kernel * kernel) as f64,
            FixedOp::Add => match max_step(prog, &node.inputs) {
                // b + ReLU(a − b) = max(a, b): no larger than either.
                Some((a, bb)) => b[a].max(b[bb]),
                None => x + b[node.inputs[1]],
            },
            FixedOp::Sub => x + b[node.inputs[1]],
            FixedOp::Gather { .. } => node.inputs.iter().map(|&j| b[j]).fold(0.0, f64::max),
        };
        b.push(v);
    }
    b
}

/// Whether an `Add` of `inputs` is a step of a max pool's tree,
/// b + ReLU(a − b) with no truncation: then (a, b).
fn max_step(prog: &FixedProgram, inputs: &[usize]) -> Option<(usize, usize)> {
    let (&b, &r) = (inputs.first()?, inputs.get(1)?);
    if !prog.is_comparison(r) {
        return None;
    }
    let relu = &prog.nodes[r];
    let d = &prog.nodes[*relu.inputs.first()?];
    match (&d.op, &d.inputs[..]) {
        (FixedOp::Sub, &[a, b2]) if b2 == b => Some((a, b)),
        _ => None,
    }
}

/// The program's values on one input without wrap-around (f64, exact
/// while below 2^53): what the field computation means, per node.
pub fn eval_ideal(prog: &FixedProgram, input: &[f32]) -> Result<Vec<Vec<f64>>> {
    if input.len() != prog.nodes[0].shape.len() {
        return Err(NetError::Invalid(format!(
            "input has {} values, the network takes {}",
            input.len(),
            prog.nodes[0].shape.len()
        )));
    }
    let scale = (1u64 << prog.frac_bits) as f64;
    let mut vals: Vec<Vec<f64>> = Vec::with_capacity(prog.nodes.len());
    for node in &prog.nodes {
        let x: &[f64] = node.inputs.first().map(|&j| &vals[j][..]).unwrap_or(&[]);
        let v = match &node.op {
            FixedOp::Input => input.iter().map(|&v| (v as f64 * scale).round()).collect(),
            FixedOp::Linear { op, weight, bias } => op.apply(
                x,
                weight,
                |oc| bias.get(oc).copied().unwrap_or(0) as f64,
                |acc, w, x| *acc += w as f64 * x,
                |acc| acc,
            ),
            FixedOp::Relu { shift, bits: None } => {
                let d = (1u64 << shift) as f64;
                node.map_active(x, 0.0, |_, v| (v.max(0.0) / d).floor())
            }
            FixedOp::Relu { shift, bits: Some(b) } => node.map_active(x, 0.0, |_, v| {
                delphi_crypto::relu::spec::relu_reduced_int(v as i64, *shift, *b) as f64
            }),
            FixedOp::Quad { a, b, c } => {
                node.map_active(x, 0.0, |k, v| a[k] as f64 * v * v + b[k] as f64 * v + c[k] as f64)
            }
            FixedOp::Trunc { shift, .. } => {
                let d = (1u64 << shift) as f64;
                node.map_active(x, 0.0, |_, v| (v / d + 0.5).floor())
            }
            FixedOp::MulConst(m) => x.iter().map(|&v| v * *m as f64).collect(),
            FixedOp::SumPool { kernel, stride } => {
                let src = prog.nodes[node.inputs[0]].shape;
                sum_pool(x, src, *kernel, *stride, 0.0, |a, b| a + b).0
            }
            FixedOp::Add => {
                let y = &vals[node.inputs[1]];
                x.iter().zip(y).map(|(a, b)| a + b).collect()
            }
            FixedOp::Sub => {
                let y = &vals[node.inputs[1]];
                x.iter().zip(y).map(|(a, b)| a - b).collect()
            }
            FixedOp::Gather { index } => crate::fixed::gather(index, &node.inputs, &vals, 1),
        };
        vals.push(v);
    }
    Ok(vals)
}

/// Inputs drawn uniformly from `range` (seeded), plus its two corners.
pub fn sample_inputs(len: usize, range: (f64, f64), n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let (lo, hi) = (range.0 as f32, range.1 as f32);
    let mut out = vec![vec![lo; len], vec![hi; len]];
    out.extend((2..n.max(2)).map(|_| (0..len).map(|_| rng.gen_range(lo..=hi)).collect()));
    out
}

/// Analyses `prog` for inputs in `input_range`; `recorded` gives, per node,
/// a peak magnitude measured elsewhere (the trainer's activation ranges),
/// in field units, or 0.
pub fn analyse(
    prog: &FixedProgram,
    input_range: (f64, f64),
    recorded: &[f64],
) -> Result<RangeReport> {
    let bound = input_range.0.abs().max(input_range.1.abs());
    let proven = proven_bounds(prog, bound);
    let limits = limits(prog);
    let inputs = sample_inputs(prog.nodes[0].shape.len(), input_range, SAMPLES, 0x5eed);
    let mut peak = vec![0f64; prog.nodes.len()];
    for (i, r) in recorded.iter().enumerate().take(peak.len()) {
        peak[i] = *r;
    }
    let mut overflowing = 0;
    for x in &inputs {
        let vals = eval_ideal(prog, x)?;
        let mut over = false;
        for (i, v) in vals.iter().enumerate() {
            let m = v.iter().fold(0f64, |m, v| m.max(v.abs()));
            peak[i] = peak[i].max(m);
            let (out, input) = limits[i];
            if m > out.max {
                over = true;
            }
            if let Some(l) = input {
                let src = vals[prog.nodes[i].inputs[0]].iter().fold(0f64, |m, v| m.max(v.abs()));
                if src > l.max {
                    over = true;
                }
            }
        }
        overflowing += usize::from(over);
    }
    let headroom = (1u64 << HEADROOM_BITS) as f64;
    let mut violations = Vec::new();
    let mut all_proven = true;
    let mut margin = f64::INFINITY;
    for (i, node) in prog.nodes.iter().enumerate() {
        let (out, input) = limits[i];
        let mut checks = vec![(out, proven[i], peak[i])];
        if let Some(l) = input {
            let j = node.inputs[0];
            checks.push((l, proven[j], peak[j]));
        }
        for (l, p, m) in checks {
            all_proven &= p <= l.max;
            let best = p.min(m * headroom).max(1.0);
            margin = margin.min((l.max / best).log2());
            if p > l.max && m * headroom > l.max {
                violations.push(Violation {
                    node: i,
                    layer: node.layer,
                    kind: node.op.kind(),
                    proven: p,
                    measured: m,
                    limit: l.max,
                    what: l.what,
                });
            }
        }
    }
    Ok(RangeReport {
        input_range,
        proven: all_proven,
        violations,
        sampled: inputs.len(),
        overflowing,
        margin_bits: if margin.is_finite() { margin } else { 0.0 },
    })
}

/// Analyses the program of `net` (lowered as `prog`) for its declared input
/// range, with the activation ranges the description records.
pub fn analyse_network(net: &crate::Network, prog: &FixedProgram) -> Result<RangeReport> {
    let mut recorded = vec![0f64; prog.nodes.len()];
    for r in &net.metadata.activation_ranges {
        for n in prog.nodes.iter().filter(|n| n.layer == Some(r.layer)) {
            if matches!(n.op, FixedOp::Relu { .. } | FixedOp::Quad { .. }) {
                let j = n.inputs[0];
                let (bits, div) = prog.nodes[j].scale;
                let v = r.max_abs * (1u64 << bits) as f64 * div.max(1) as f64;
                recorded[j] = recorded[j].max(v);
            }
        }
    }
    analyse(prog, net.input_range(), &recorded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::build;

    #[test]
    fn ideal_matches_the_field_reference_when_nothing_wraps() {
        let net = build("small-cnn", 10, 3).unwrap();
        let prog = FixedProgram::lower(&net).unwrap();
        let x = sample_inputs(784, (-1.0, 1.0), 3, 1).pop().unwrap();
        let ideal = eval_ideal(&prog, &x).unwrap();
        let field = prog.eval_all(&prog.encode_input(&x).unwrap()).unwrap();
        for (a, b) in ideal.iter().zip(&field) {
            for (a, b) in a.iter().zip(b) {
                assert_eq!(*a, b.to_signed() as f64);
            }
        }
    }

    #[test]
    fn proven_bounds_hold_on_samples() {
        let net = build("minionn", 10, 4).unwrap();
        let prog = FixedProgram::lower(&net).unwrap();
        let proven = proven_bounds(&prog, 1.0);
        for x in sample_inputs(prog.nodes[0].shape.len(), (-1.0, 1.0), 4, 2) {
            for (v, b) in eval_ideal(&prog, &x).unwrap().iter().zip(&proven) {
                assert!(v.iter().all(|v| v.abs() <= *b));
            }
        }
    }
}
