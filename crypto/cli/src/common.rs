//! What several commands share: loading and range-checking plans, random
//! and sampled inputs, JSON output, error chains.

use anyhow::{Context, Result};
use delphi_cost::CostModel;
use delphi_engine::run::RunReport;
use delphi_net::eval::random_inputs as random_inputs_f32;
use delphi_net::{FixedProgram, Network};

pub(crate) fn random_inputs(
    prog: &FixedProgram,
    n: usize,
    seed: u64,
) -> Result<Vec<Vec<delphi_crypto::field::F>>> {
    random_inputs_f32(prog.nodes[0].shape.len(), n, seed)
        .iter()
        .map(|x| Ok(prog.encode_input(x)?))
        .collect()
}

/// Lowers a plan and checks its value ranges ([`delphi_net::range`]):
/// refused if a node can leave its range, unless `allow_overflow`. Returns
/// the program and a line that says how the ranges stand.
pub(crate) fn checked_program(
    net: &Network,
    allow_overflow: bool,
) -> Result<(FixedProgram, String)> {
    let prog = FixedProgram::lower(net)?;
    let report = delphi_net::range::analyse_network(net, &prog)?;
    let line = match report.check() {
        Ok(()) => report.summary(),
        Err(e) if allow_overflow => format!("warning (--allow-overflow): {e}"),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(
                "the plan is refused: it can compute wrong answers without a sign \
                 (--allow-overflow runs it anyway)",
            ))
        }
    };
    Ok((prog, line))
}

pub(crate) fn mean(r: &RunReport, f: impl Fn(&delphi_engine::run::Inference) -> f64) -> f64 {
    r.inferences.iter().map(f).sum::<f64>() / r.inferences.len().max(1) as f64
}

pub(crate) fn write_json(out: &std::path::Path, v: &serde_json::Value) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, format!("{}\n", serde_json::to_string_pretty(v)?))
        .with_context(|| format!("writing {}", out.display()))
}

/// An error and its causes on one line: "what: why: why".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Loads a plan: a network description, or an ONNX model imported on the fly.
pub(crate) fn load_plan(path: &std::path::Path) -> Result<Network> {
    delphi_onnx::load_network(path).with_context(|| format!("loading {}", path.display()))
}

/// `n` inputs sampled in the network's declared input range (after the two
/// the range check samples first, so they are not the same), as floats and
/// encoded for `prog`.
pub(crate) type Sampled = (Vec<Vec<f32>>, Vec<Vec<delphi_crypto::field::F>>);

pub(crate) fn sampled_inputs(
    net: &Network,
    prog: &FixedProgram,
    n: usize,
    seed: u64,
) -> Result<Sampled> {
    let raw: Vec<Vec<f32>> =
        delphi_net::range::sample_inputs(net.input.len(), net.input_range(), n + 2, seed)
            .split_off(2);
    let encoded = raw.iter().map(|x| Ok(prog.encode_input(x)?)).collect::<Result<Vec<_>>>()?;
    Ok((raw, encoded))
}

/// Loads a cost model, warning when it was calibrated on another machine.
pub(crate) fn load_cost_model(path: &std::path::Path) -> Result<CostModel> {
    let model = CostModel::load(path).with_context(|| {
        format!(
            "loading the cost model (run `delphi cost calibrate --out {}` first)",
            path.display()
        )
    })?;
    if let Some(why) = model.provenance.differs_from_here() {
        eprintln!("warning: {why}");
    }
    Ok(model)
}
