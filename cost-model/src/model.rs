//! The cost model (what `delphi cost calibrate` writes) and predictions.
//!
//! Time of a step = its computation (measured on this machine, with the
//! transfer on loopback taken out) + its bytes over the link's bandwidth +
//! its round trips × the link's RTT. Bytes are exact ([`crate::bytes`])
//! except for ciphertexts, counted in frames times their measured mean size.

use std::path::Path;

use serde::{Deserialize, Serialize};

use delphi_net::fixed::{FixedOp, FixedProgram};
use delphi_net::packing::Packing;

use delphi_crypto::ot::CotKind;

use crate::bytes::{node_traffic_with, program_traffic, setup_bytes, CtSizes, OtPlan, Traffic};
use crate::error::{CostError, Result};
use crate::link::Link;

/// a + b·n seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Affine {
    /// Fixed seconds per call.
    pub fixed_s: f64,
    /// Seconds per element.
    pub per_item_s: f64,
}

impl Affine {
    /// Seconds for `n` elements.
    pub fn at(&self, n: f64) -> f64 {
        self.fixed_s + self.per_item_s * n
    }

    /// The line through two measurements (clamped to be non-negative).
    pub fn fit(n1: f64, t1: f64, n2: f64, t2: f64) -> Affine {
        let per = ((t2 - t1) / (n2 - n1)).max(0.0);
        Affine { fixed_s: (t1 - per * n1).max(0.0), per_item_s: per }
    }
}

/// The computation of one phase of a garbled-circuit layer (ReLUs of any
/// window, exact truncations), by what it does: a fixed cost per layer
/// (bundle start, base OTs, thread pool, the last chunk's latency), and per
/// value a cost per AND gate (garbling, or evaluation) and per input label
/// (offline: the client's correlated OTs; online: the server's labels,
/// generated and sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GcLine {
    /// Seconds per layer.
    pub fixed_s: f64,
    /// Seconds per AND gate.
    pub per_and_s: f64,
    /// Seconds per input label.
    pub per_label_s: f64,
}

impl GcLine {
    /// The affine cost of a layer of a circuit with `ands` AND gates and
    /// `labels` input labels per value.
    pub fn for_circuit(&self, ands: usize, labels: usize) -> Affine {
        Affine {
            fixed_s: self.fixed_s,
            per_item_s: self.per_and_s * ands as f64 + self.per_label_s * labels as f64,
        }
    }
}

/// Offline cost of a linear layer under BFV: seconds per input polynomial
/// (client encryption + server deserialisation), per output polynomial
/// (masking, re-randomising, switching, serialising, client decryption) and
/// per plaintext–ciphertext product (encoding and multiplying the weights).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeLinear {
    /// Seconds per input polynomial.
    pub per_input_poly_s: f64,
    /// Seconds per output polynomial.
    pub per_output_poly_s: f64,
    /// Seconds per product.
    pub per_product_s: f64,
}

/// The generation of the engine's protocol a model prices. Bumped whenever
/// what the engine does per layer changes its costs; a model calibrated for
/// an older one is stale and refused by name ([`CostError::Stale`]).
/// 2: garbled-circuit layers priced by AND gates and labels (exact ReLU
/// windows, exact truncations). 3: the offline phase also pays the first
/// touch of the memory its material fills
/// ([`CostModel::fresh_memory_per_byte_s`]). 4: results travel compact
/// (the server rounds and packs them, the client rebuilds them). 5: so do
/// fresh ciphertexts (symmetric-key encryption, c₁ sent as its seed). 6:
/// one pool of correlated OTs per offline phase, silent (Ferret) when
/// that sends fewer bytes. 7: a ReLU's sign masks its outputs in the
/// output conversion (two field elements per product), not with AND gates.
pub const PROTOCOL_VERSION: u32 = 7;

/// Where and when the model was measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The [`PROTOCOL_VERSION`] it was calibrated for (0: before it was
    /// recorded).
    #[serde(default)]
    pub protocol: u32,
    /// Logical cores.
    pub cores: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Toolkit version.
    pub delphi_version: String,
    /// SEAL binding version.
    pub seal_fhe_version: String,
    /// UTC date of the calibration (seconds since the epoch, and ISO).
    pub date: String,
    /// `--quick` or full.
    pub quick: bool,
    /// Seconds the calibration took.
    pub seconds: f64,
    /// [`delphi_crypto::bench::speed_probe`] measured with the calibration
    /// (garbled-and-evaluated AND gates per second, one thread); absent in
    /// models from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_probe: Option<f64>,
}

/// How far this machine's [`delphi_crypto::bench::speed_probe`] may be from
/// the calibration's before the model is treated as another machine's
/// (25 %: probes right after a calibration on one 2-core AMD EPYC VM raised
/// no warning; a model from a same-named VM that ran the same work 1.5×
/// faster predicted 15–37 % short there).
pub const SPEED_TOLERANCE: f64 = 0.25;

/// `now / calibrated` when it lies outside [`SPEED_TOLERANCE`] either way.
pub fn speed_differs(calibrated: f64, now: f64) -> Option<f64> {
    let r = now / calibrated;
    (!(r.is_finite() && r > 1.0 / (1.0 + SPEED_TOLERANCE) && r < 1.0 + SPEED_TOLERANCE))
        .then_some(r)
}

impl Provenance {
    /// How this calibration's machine differs from the one running now
    /// (CPU model, core count, or the speed at a fixed workload:
    /// [`speed_differs`], which costs ≈ 0.1 s of probing), in words; `None`
    /// when they match.
    pub fn differs_from_here(&self) -> Option<String> {
        let (cpu, cores) = (delphi_crypto::bench::cpu_model(), delphi_crypto::bench::cores());
        if self.cpu_model != cpu || self.cores != cores {
            return Some(format!(
                "the cost model was calibrated on {} ({} cores); this machine is {cpu} ({cores} cores): \
                 its predictions can be far off here (recalibrate: `delphi cost calibrate`)",
                self.cpu_model, self.cores
            ));
        }
        let then = self.speed_probe?;
        let now = delphi_crypto::bench::speed_probe();
        speed_differs(then, now).map(|r| {
            format!(
                "this machine garbles {:.1} M AND gates/s now against {:.1} M when the cost model was \
                 calibrated (same CPU model, {r:.2}× the speed): its predictions can be far off here \
                 (recalibrate: `delphi cost calibrate`)",
                now / 1e6,
                then / 1e6
            )
        })
    }
}

/// Measured primitive costs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// Always "delphi cost model".
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// Machine and versions.
    pub provenance: Provenance,
    /// The loopback link the calibration ran on.
    pub loopback: Link,
    /// Ciphertext sizes.
    pub ct: CtSizes,
    /// Key generation and setup computation, seconds.
    pub setup_s: f64,
    /// Linear layers offline (BFV).
    pub he_linear: HeLinear,
    /// Linear layers online: seconds per multiply-accumulate.
    pub linear_online_per_mac_s: f64,
    /// ReLU offline (garbling, OT), per bundle and per ReLU.
    pub relu_offline: Affine,
    /// ReLU online (labels, evaluation).
    pub relu_online: Affine,
    /// Faithful truncation offline (OT). Exact truncations are garbled
    /// circuits, priced as [`CostModel::gc_costs`] says.
    pub trunc_offline: Affine,
    /// Faithful truncation online.
    pub trunc_online: Affine,
    /// Square triples offline, per value (BFV chunks amortised).
    pub quad_offline: Affine,
    /// Quadratic online, per value.
    pub quad_online: Affine,
    /// Local operations (sums, pools, constant products), per output value.
    pub local_per_value_s: f64,
    /// Reduced ReLUs offline, measured on [`REDUCED_ANCHOR`] (absent in
    /// models calibrated before reduced ReLUs existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relu_reduced_offline: Option<Affine>,
    /// Reduced ReLUs online, measured on [`REDUCED_ANCHOR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relu_reduced_online: Option<Affine>,
    /// Garbled-circuit layers offline by AND gates and labels, fitted on
    /// several circuits at several sizes (absent in older models: they
    /// interpolate between the ReLU lines instead). Prices every circuit
    /// when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_offline: Option<GcLine>,
    /// Garbled-circuit layers online, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_online: Option<GcLine>,
    /// Seconds per byte of offline material (garbled tables, labels, masked
    /// values: the offline traffic other than ciphertexts, which the client
    /// holds until the online phase) for touching memory fresh to the
    /// process rather than memory it used before. What a fresh client
    /// process pays on its first inference; a long-lived one that has held
    /// as much before pays up to this much less. (0 in models of protocol
    /// generation 2 and older, which are refused as stale.)
    #[serde(default)]
    pub fresh_memory_per_byte_s: f64,
    /// Seconds of one silent-OT extension (both sides at once, transfers
    /// included; [`delphi_crypto::ot::silent`]), amortised over a pool's
    /// first (from IKNP) and later (bootstrapped) ones. Garbled-circuit
    /// layers are measured with IKNP OTs, whose per-label work stays in
    /// their lines. (0 in models of protocol generation 5 and older, which
    /// are refused as stale.)
    #[serde(default)]
    pub silent_extension_s: f64,
    /// Seconds per IKNP correlated OT (both sides at once, transfers
    /// excluded): the work in the garbled-circuit lines that a silent pool
    /// does not do.
    #[serde(default)]
    pub iknp_per_ot_s: f64,
    /// Seconds to set up a pool of correlated OTs (the base OTs and the
    /// IKNP set-up): paid once per offline phase, where the garbled-circuit
    /// lines, measured on layers run alone, count it in every layer.
    #[serde(default)]
    pub ot_setup_s: f64,
}

/// The reduced ReLU the calibration measures (window 12..27, truncation 12:
/// 28 AND gates, 15 input bits per party). Other widths are priced by
/// linear interpolation in AND gates between it and the full circuit
/// (garbling, evaluation, OT and label work all grow with the width).
pub const REDUCED_ANCHOR: delphi_crypto::relu::ReluSpec = delphi_crypto::relu::ReluSpec {
    shift: 12,
    bits: Some(delphi_crypto::relu::ReluBits { lo: 12, hi: 27 }),
};

/// The current format name.
pub const FORMAT: &str = "delphi cost model";

impl CostModel {
    /// Reads a model written by `delphi cost calibrate`.
    pub fn load(path: &Path) -> Result<CostModel> {
        let err = |reason: String| CostError::File { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let m: CostModel = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if m.format != FORMAT || m.version != 1 {
            return Err(err(format!("not a version-1 {FORMAT} file")));
        }
        if m.provenance.protocol < PROTOCOL_VERSION {
            return Err(CostError::Stale {
                path: path.to_path_buf(),
                calibrated: m.provenance.protocol,
                current: PROTOCOL_VERSION,
            });
        }
        Ok(m)
    }

    /// Writes the model as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |reason: String| CostError::File { path: path.to_path_buf(), reason };
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| err(e.to_string()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| err(e.to_string()))
    }
}

/// Predicted cost of one description layer (or of the whole network).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Offline seconds.
    pub offline_s: f64,
    /// Online seconds.
    pub online_s: f64,
    /// Offline bytes, both directions.
    pub offline_bytes: f64,
    /// Online bytes, both directions.
    pub online_bytes: f64,
}

impl std::ops::AddAssign<&Cost> for Cost {
    fn add_assign(&mut self, o: &Cost) {
        self.offline_s += o.offline_s;
        self.online_s += o.online_s;
        self.offline_bytes += o.offline_bytes;
        self.online_bytes += o.online_bytes;
    }
}

/// A prediction: per layer and in total.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Prediction {
    /// Per description layer (index, operations, cost); `None` is the input
    /// and the per-inference extras.
    pub layers: Vec<(Option<usize>, Vec<&'static str>, Cost)>,
    /// Sum over the layers (per inference).
    pub total: Cost,
    /// Session setup (keys), once per client.
    pub setup_s: f64,
    /// Setup bytes.
    pub setup_bytes: f64,
    /// Exact traffic (non-ciphertext bytes and ciphertext frames), per inference.
    pub offline_traffic: Traffic,
    /// Exact online traffic.
    pub online_traffic: Traffic,
}

fn add_traffic(a: &mut Traffic, b: &Traffic) {
    a.bytes += b.bytes;
    a.fresh_frames += b.fresh_frames;
    a.result_frames += b.result_frames;
    a.triple_frames += b.triple_frames;
    a.result_bytes += b.result_bytes;
    a.rounds += b.rounds;
}

impl CostModel {
    /// Offline and online computation of a ReLU layer of the circuit
    /// `spec`, as functions of its size. Full circuits use the calibrated
    /// lines; reduced ones interpolate the per-ReLU slope linearly in AND
    /// gates between [`REDUCED_ANCHOR`] and the full circuit (a model
    /// without the anchor scales the full slope by the AND-gate ratio;
    /// [`CostModel::has_reduced_relus`] says which).
    pub fn relu_costs(&self, spec: delphi_crypto::relu::ReluSpec) -> (Affine, Affine) {
        use delphi_crypto::relu::relu_circuit_for;
        if spec.bits.is_none() && self.gc_offline.is_none() {
            return (self.relu_offline, self.relu_online);
        }
        self.gc_costs(relu_circuit_for(spec))
    }

    /// Offline and online computation of a garbled-circuit layer (ReLUs of
    /// any window, exact truncations) of `circuit` per value: from the
    /// per-AND and per-label lines where the model has them, else the
    /// per-value slope interpolated linearly in AND gates between
    /// [`REDUCED_ANCHOR`] and the full circuit, as
    /// [`CostModel::relu_costs`] describes.
    pub fn gc_costs(&self, gc: &delphi_crypto::garbled::GcCircuit) -> (Affine, Affine) {
        use delphi_crypto::relu::{relu_circuit_for, ReluSpec};
        let circuit = gc.circuit();
        if let (Some(off), Some(on)) = (self.gc_offline, self.gc_online) {
            let ands = gc.and_work();
            return (
                off.for_circuit(ands, circuit.evaluator_inputs()),
                on.for_circuit(ands, circuit.garbler_inputs()),
            );
        }
        let ands = gc.and_work() as f64;
        let full = relu_circuit_for(ReluSpec::full(12)).and_work() as f64;
        let anchor = relu_circuit_for(REDUCED_ANCHOR).and_work() as f64;
        let line = |f: Affine, r: Option<Affine>| -> Affine {
            match r {
                Some(r) => {
                    let t = (ands - anchor) / (full - anchor);
                    Affine {
                        fixed_s: r.fixed_s,
                        per_item_s: (r.per_item_s + t * (f.per_item_s - r.per_item_s)).max(0.0),
                    }
                }
                None => Affine { fixed_s: f.fixed_s, per_item_s: f.per_item_s * ands / full },
            }
        };
        (
            line(self.relu_offline, self.relu_reduced_offline),
            line(self.relu_online, self.relu_reduced_online),
        )
    }

    /// Whether reduced ReLUs were measured (else they are scaled from the
    /// full circuit by AND gates: recalibrate).
    pub fn has_reduced_relus(&self) -> bool {
        self.relu_reduced_offline.is_some() && self.relu_reduced_online.is_some()
    }

    /// What node `i`'s OTs cost beyond what its garbled-circuit line
    /// counts: a silent pool's extensions for the IKNP OTs of the line,
    /// and for its share of the pool's set-up (paid by the first layer).
    fn silent_ot_s(&self, ots: &OtPlan, i: usize) -> f64 {
        let setup = if ots.joins(i) { -self.ot_setup_s } else { 0.0 };
        setup
            + match ots.kind {
                CotKind::Iknp => 0.0,
                CotKind::Silent => {
                    ots.extensions(i) as f64 * self.silent_extension_s
                        - ots.ots(i) as f64 * self.iknp_per_ot_s
                }
            }
    }

    fn transfer(&self, t: &Traffic, link: &Link) -> f64 {
        t.total() / link.bytes_per_s + t.rounds * link.rtt_s
    }

    /// The computation of one node (no transfer), offline and online.
    fn compute(&self, prog: &FixedProgram, i: usize) -> (f64, f64) {
        let node = &prog.nodes[i];
        let n = node.shape.len() as f64;
        // A node working on some channels only runs on those elements.
        let active = node.active_len() as f64;
        match &node.op {
            FixedOp::Input => (0.0, 0.0),
            FixedOp::Linear { op, .. } => {
                let off = Packing::new(op)
                    .map(|p| {
                        let h = &self.he_linear;
                        h.per_input_poly_s * p.input_polys() as f64
                            + h.per_output_poly_s * p.output_polys() as f64
                            + h.per_product_s * p.products() as f64
                    })
                    .unwrap_or(0.0);
                let macs = (op.output.len() * op.macs_per_output()) as f64;
                (off, self.linear_online_per_mac_s * macs)
            }
            FixedOp::Relu { shift, bits } => {
                let (off, on) =
                    self.relu_costs(delphi_crypto::relu::ReluSpec { shift: *shift, bits: *bits });
                (off.at(active), on.at(active))
            }
            FixedOp::Trunc { shift, kind } => match kind.exact(*shift) {
                // The wide circuit is the full ReLU circuit.
                Some(e) if e.wide && self.gc_offline.is_none() => {
                    (self.relu_offline.at(active), self.relu_online.at(active))
                }
                Some(e) => {
                    use delphi_crypto::garbled::GcFunction;
                    let (off, on) = self.gc_costs(e.gc());
                    (off.at(active), on.at(active))
                }
                None => (self.trunc_offline.at(active), self.trunc_online.at(active)),
            },
            FixedOp::Quad { .. } => (self.quad_offline.at(active), self.quad_online.at(active)),
            FixedOp::MulConst(_)
            | FixedOp::SumPool { .. }
            | FixedOp::Add
            | FixedOp::Sub
            | FixedOp::Gather { .. } => (0.0, self.local_per_value_s * n),
        }
    }

    /// Predicts a program's costs over `link` (default: the loopback the
    /// model was measured on). Microseconds per network: no allocation
    /// beyond the per-layer list.
    pub fn predict(&self, prog: &FixedProgram, link: Option<&Link>) -> Prediction {
        let link = link.unwrap_or(&self.loopback);
        let mut p = Prediction::default();
        let (poff, pon) = program_traffic(prog);
        add_traffic(&mut p.offline_traffic, &poff);
        add_traffic(&mut p.online_traffic, &pon);
        let extra = Cost {
            offline_s: self.transfer(&poff, link),
            online_s: self.transfer(&pon, link),
            offline_bytes: poff.total(),
            online_bytes: pon.total(),
        };
        let mut current: Option<(Option<usize>, Vec<&'static str>, Cost)> = None;
        let ots = OtPlan::of(prog);
        for i in 0..prog.nodes.len() {
            let (off, on) = node_traffic_with(prog, i, &ots);
            add_traffic(&mut p.offline_traffic, &off);
            add_traffic(&mut p.online_traffic, &on);
            let (c_off, c_on) = self.compute(prog, i);
            // The client holds a label per OT, whatever the OTs sent.
            let held = off.bytes - ots.traffic(i).bytes + 16 * ots.ots(i) as u64;
            let cost = Cost {
                offline_s: c_off
                    + self.silent_ot_s(&ots, i)
                    + self.transfer(&off, link)
                    + held as f64 * self.fresh_memory_per_byte_s,
                online_s: c_on + self.transfer(&on, link),
                offline_bytes: off.total(),
                online_bytes: on.total(),
            };
            let layer = prog.nodes[i].layer;
            let kind = prog.nodes[i].op.kind();
            match &mut current {
                Some((l, kinds, c)) if *l == layer => {
                    if !kinds.contains(&kind) {
                        kinds.push(kind);
                    }
                    *c += &cost;
                }
                _ => {
                    if let Some(done) = current.take() {
                        p.layers.push(done);
                    }
                    current = Some((layer, vec![kind], cost));
                }
            }
        }
        if let Some(done) = current.take() {
            p.layers.push(done);
        }
        for (_, _, c) in &p.layers {
            p.total += c;
        }
        p.total += &extra;
        p.layers.push((None, vec!["program"], extra));
        p.setup_s = self.setup_s + setup_bytes(&self.ct) / link.bytes_per_s + link.rtt_s;
        p.setup_bytes = setup_bytes(&self.ct);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_at_another_speed_is_told_apart() {
        assert_eq!(speed_differs(100.0, 100.0), None);
        assert_eq!(speed_differs(100.0, 120.0), None);
        assert_eq!(speed_differs(100.0, 85.0), None);
        assert_eq!(speed_differs(100.0, 150.0), Some(1.5));
        assert_eq!(speed_differs(100.0, 50.0), Some(0.5));
        assert!(speed_differs(0.0, 50.0).is_some());
        assert!(speed_differs(100.0, f64::NAN).is_some());
    }

    #[test]
    fn fresh_memory_is_priced_per_byte_of_offline_material_only() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../results/cost-model.json"));
        let warm = CostModel { fresh_memory_per_byte_s: 0.0, ..CostModel::load(path).unwrap() };
        let fresh = CostModel { fresh_memory_per_byte_s: 2e-9, ..warm.clone() };
        let net = delphi_net::builtin::build("small-cnn", 10, 1).unwrap();
        let prog = FixedProgram::lower(&net).unwrap();
        let (a, b) = (warm.predict(&prog, None), fresh.predict(&prog, None));
        // The material: the nodes' offline traffic other than ciphertexts
        // (garbled tables, masked values), which the client holds, and a
        // label per correlated OT (whatever the OTs sent).
        let ots = OtPlan::of(&prog);
        let material: f64 = (0..prog.nodes.len())
            .map(|i| {
                let b = crate::bytes::node_traffic(&prog, i).0.bytes - ots.traffic(i).bytes;
                (b + 16 * ots.ots(i) as u64) as f64
            })
            .sum();
        assert!(material > 1e7, "{material}");
        assert!((b.total.offline_s - a.total.offline_s - 2e-9 * material).abs() < 1e-9);
        // Online, bytes and the linear layers' (ciphertext-only) offline
        // times are untouched.
        assert_eq!(
            (a.total.online_s, a.total.offline_bytes),
            (b.total.online_s, b.total.offline_bytes)
        );
        for ((_, kinds, x), (_, _, y)) in a.layers.iter().zip(&b.layers) {
            if kinds.iter().all(|k| *k == "conv2d" || *k == "dense") {
                assert_eq!(x.offline_s, y.offline_s, "{kinds:?}");
            } else if kinds.contains(&"relu") {
                assert!(y.offline_s > x.offline_s, "{kinds:?}");
            }
        }
    }

    #[test]
    fn affine_fit_goes_through_both_points() {
        let a = Affine::fit(10.0, 3.0, 110.0, 13.0);
        assert!((a.at(10.0) - 3.0).abs() < 1e-12 && (a.at(110.0) - 13.0).abs() < 1e-12);
    }

    #[test]
    fn a_model_of_an_older_protocol_is_refused_by_name() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../results/cost-model.json"));
        let current = CostModel::load(path).unwrap();
        assert_eq!(current.provenance.protocol, PROTOCOL_VERSION);
        let dir = std::env::temp_dir().join(format!("delphi-stale-{}", std::process::id()));
        let stale = dir.join("old.json");
        let mut old = current.clone();
        old.provenance.protocol = PROTOCOL_VERSION - 1;
        old.save(&stale).unwrap();
        let e = CostModel::load(&stale).unwrap_err();
        assert!(
            matches!(e, CostError::Stale { calibrated, .. } if calibrated == PROTOCOL_VERSION - 1)
        );
        assert!(e.to_string().contains("stale cost model"), "{e}");
        // A file from before the field existed reads as protocol 0: stale too.
        let mut v: serde_json::Value = serde_json::to_value(&current).unwrap();
        v["provenance"].as_object_mut().unwrap().remove("protocol");
        std::fs::write(&stale, v.to_string()).unwrap();
        assert!(matches!(CostModel::load(&stale), Err(CostError::Stale { calibrated: 0, .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}
