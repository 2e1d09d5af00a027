//! Pricing placements with the cost model: which model file a run uses,
//! and the predicted cost of a placement (per layer or per channel, with
//! the reduced-ReLU windows every priced placement gets).

use std::path::{Path, PathBuf};

use delphi_cost::{Cost, CostModel, Link};
use delphi_crypto::relu::spec::ReluBits;
use delphi_net::{FixedProgram, Network, Placement};

use crate::config::PlanConfig;
use crate::error::{file_err, PlanError, Result};

/// Where the cost model is: `--cost-model`, else `<results>/cost-model.json`
/// ([`delphi_net::paths::default_cost_model`]), else one calibrated
/// (quickly, with `delphi cost calibrate`) into `out`. A default model
/// calibrated on another CPU is recalibrated into `out`; the user's own is
/// used as given, with a warning.
pub fn cost_model_path(c: &PlanConfig, out: &Path, say: &dyn Fn(&str)) -> Result<PathBuf> {
    let path = c.cost_model.clone().unwrap_or_else(delphi_net::paths::default_cost_model);
    if path.is_file() {
        let differs = match CostModel::load(&path) {
            Ok(m) => m.provenance.differs_from_here(),
            // A stale model: the user's is refused by name; the default
            // one is recalibrated here, like one from another machine.
            Err(e @ delphi_cost::CostError::Stale { .. }) if c.cost_model.is_some() => {
                return Err(e.into());
            }
            Err(e @ delphi_cost::CostError::Stale { .. }) => Some(e.to_string()),
            Err(_) => None,
        };
        match differs {
            None => return Ok(path),
            // The user's own model: used as given, with a warning.
            Some(why) if c.cost_model.is_some() => {
                say(&format!("warning: {why}"));
                return Ok(path);
            }
            // The default model from another machine: recalibrated here.
            Some(why) => {
                let local = out.join("cost-model.json");
                let local_ok = CostModel::load(&local)
                    .ok()
                    .is_some_and(|m| m.provenance.differs_from_here().is_none());
                if local_ok {
                    return Ok(local);
                }
                say(&format!("{why}; calibrating (quick) for this run"));
                return calibrate_into(out, &local);
            }
        }
    }
    if c.cost_model.is_some() {
        return Err(PlanError::Config(format!(
            "no cost model at {} (run `delphi cost calibrate --out {}`)",
            path.display(),
            path.display()
        )));
    }
    let local = out.join("cost-model.json");
    if local.is_file() {
        return Ok(local);
    }
    say(&format!(
        "no cost model at {}: calibrating (quick) into {}",
        path.display(),
        local.display()
    ));
    calibrate_into(out, &local)
}

/// Runs a quick calibration into `local` (in the run folder `out`).
fn calibrate_into(out: &Path, local: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    crate::engine::calibrate_quick(local)?;
    Ok(local.to_path_buf())
}

/// Prices placements of one architecture.
pub(crate) struct Pricing {
    pub model: CostModel,
    pub link: Option<Link>,
    template: Network,
    /// ReLU activations (elements) of each activation layer.
    pub layer_relus: Vec<usize>,
    /// Reduced-ReLU windows (description layer, window) that every priced
    /// placement gets on its ReLU layers: the base network's
    /// (`--relu-bits reduced-leaky`), or none.
    pub windows: Vec<(usize, Option<ReluBits>)>,
    /// Whether every priced placement gets its own exact windows
    /// (`--relu-bits auto`), proven from the base network's weights.
    pub exact_windows: bool,
}

impl Pricing {
    pub(crate) fn new(model: CostModel, link: Option<Link>, base: &Network) -> Result<Pricing> {
        let shapes = base.validate()?;
        let layer_relus = base.activation_layers().iter().map(|&i| shapes[i].len()).collect();
        // The base's weights stay: which truncations the bounded exact
        // circuit may run and how wide exact windows are follow from proven
        // bounds, so placements are priced with the trained base's weights
        // (and the quadratics' initial coefficients).
        let mut template = base.clone();
        template.metadata = delphi_net::desc::Metadata {
            input_normalization: base.metadata.input_normalization.clone(),
            input_range: base.metadata.input_range,
            ..Default::default()
        };
        Ok(Pricing {
            model,
            link,
            template,
            layer_relus,
            windows: Vec::new(),
            exact_windows: false,
        })
    }

    /// Prices every placement with truncations of this choice.
    pub fn set_truncation(&mut self, t: delphi_net::desc::TruncChoice) {
        self.template.fixed_point.truncation = t;
    }

    /// Predicted cost of a network's architecture as it stands (its own
    /// activations and ReLU windows).
    pub fn price_net(&self, net: &Network) -> Result<Cost> {
        let prog = FixedProgram::lower(&net.architecture_only())?;
        Ok(self.model.predict(&prog, self.link.as_ref()).total)
    }

    /// Predicted cost of a per-channel placement (per activation layer, a
    /// mask with `true` for ReLU channels; `None` or missing: the layer's
    /// `placement` entry decides).
    pub fn price_masks(&self, p: &Placement, masks: &[Option<Vec<bool>>]) -> Result<Cost> {
        let mut net = self.template.clone();
        p.apply(&mut net)?;
        apply_masks(&mut net, masks);
        for &(layer, bits) in &self.windows {
            if let Some(l) = net.layers.get_mut(layer).filter(|l| l.has_relu()) {
                l.relu_bits = bits;
            }
        }
        if self.exact_windows {
            let w = delphi_net::window::exact_windows(&net)?;
            delphi_net::window::set_windows(&mut net, &w)?;
        }
        if net.layers.iter().any(|l| l.relu_bits.is_some()) {
            net.version = net.version.max(3);
        }
        let prog = FixedProgram::lower(&net)?;
        Ok(self.model.predict(&prog, self.link.as_ref()).total)
    }

    /// ReLU activations left under a per-channel placement.
    pub fn relus_masks(&self, p: &Placement, masks: &[Option<Vec<bool>>]) -> usize {
        self.layer_relus
            .iter()
            .enumerate()
            .map(|(k, &n)| match masks.get(k) {
                Some(Some(m)) if !m.is_empty() => n / m.len() * m.iter().filter(|&&r| r).count(),
                _ if p.is_quad(k) => 0,
                _ => n,
            })
            .sum()
    }

    /// Per activation layer: what turning one of its channels quadratic
    /// saves under `objective` (the layer made quadratic, the others ReLU,
    /// against all-ReLU, divided by its channels).
    pub fn channel_savings(&self, objective: crate::config::Objective) -> Result<Vec<f64>> {
        let layers = self.layer_relus.len();
        let all = objective.of(&self.price(&Placement::all_relu(layers))?);
        let shapes = self.template.validate()?;
        let acts = self.template.activation_layers();
        (0..layers)
            .map(|k| {
                let mut p = Placement::all_relu(layers);
                p.set(k, true);
                let one = objective.of(&self.price(&p)?);
                let channels = shapes[acts[k]].channels.max(1) as f64;
                Ok(((all - one) / channels).max(0.0))
            })
            .collect()
    }

    /// Predicted cost of a placement.
    pub fn price(&self, p: &Placement) -> Result<Cost> {
        self.price_masks(p, &[])
    }

    /// ReLU activations left under a placement.
    pub fn relus(&self, p: &Placement) -> usize {
        self.relus_masks(p, &[])
    }
}

/// Makes the activation layers with a mask mixed (ReLU where `true`), with
/// the default quadratic on the others; all-ReLU and all-quadratic masks
/// give plain layers. Only the architecture matters (pricing).
pub(crate) fn apply_masks(net: &mut Network, masks: &[Option<Vec<bool>>]) {
    use delphi_net::{Activation, Op};
    let acts = net.activation_layers();
    for (k, &i) in acts.iter().enumerate() {
        let Some(Some(m)) = masks.get(k) else {
            continue;
        };
        let n = m.len();
        let Activation::Quad { a, b, c } = Activation::DEFAULT_QUAD else {
            continue;
        };
        net.layers[i].op = Op::Activation(if m.iter().all(|&r| r) {
            Activation::Relu
        } else if m.iter().all(|&r| !r) {
            Activation::DEFAULT_QUAD
        } else {
            Activation::Mixed { relu: m.clone(), a: vec![a; n], b: vec![b; n], c: vec![c; n] }
        });
    }
    if acts
        .iter()
        .any(|&i| matches!(net.layers[i].op, Op::Activation(delphi_net::Activation::Mixed { .. })))
    {
        net.version = net.version.max(2);
    }
}

/// Per activation layer, the percentage of channels that keep ReLU.
pub fn relu_channel_percent(masks: &[Option<Vec<bool>>], p: &Placement) -> String {
    masks
        .iter()
        .enumerate()
        .map(|(k, m)| match m {
            Some(m) if !m.is_empty() => {
                let pct = 100.0 * m.iter().filter(|&&r| r).count() as f64 / m.len() as f64;
                format!("{pct:.0}")
            }
            _ if p.is_quad(k) => "0".into(),
            _ => "100".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
