//! The one per-layer table the commands print: measured (`delphi verify`,
//! means over the inferences) or predicted (`delphi cost predict`), in the
//! same columns.

use delphi_cost::Cost;
use delphi_engine::run::RunReport;

/// One row: the description layer (`None`: the input, or the program's
/// own work), the operations it runs, and what they cost.
pub(crate) struct LayerRow {
    /// The layer's index in the description.
    pub layer: Option<usize>,
    /// The operations (`conv`, `relu`, `trunc`, …).
    pub ops: Vec<String>,
    /// Their cost.
    pub cost: Cost,
}

/// Prints `rows` as `layer, operations, offline s, offline MB, online ms,
/// online kB`; `none` names a row without a layer.
pub(crate) fn print_layer_table(rows: &[LayerRow], none: &str) {
    println!(
        "{:>6}  {:<28} {:>10} {:>11} {:>10} {:>11}",
        "layer", "operations", "offline s", "offline MB", "online ms", "online kB"
    );
    for r in rows {
        let mut ops = r.ops.join("+");
        if ops.len() > 28 {
            let mut cut = 25;
            while !ops.is_char_boundary(cut) {
                cut -= 1;
            }
            ops.truncate(cut);
            ops.push_str("...");
        }
        println!(
            "{:>6}  {:<28} {:>10.3} {:>11.2} {:>10.2} {:>11.1}",
            r.layer.map_or(none.to_string(), |i| i.to_string()),
            ops,
            r.cost.offline_s,
            r.cost.offline_bytes / 1e6,
            r.cost.online_s * 1e3,
            r.cost.online_bytes / 1e3,
        );
    }
}

/// A run's per-layer costs, averaged over its inferences.
pub(crate) fn measured_rows(r: &RunReport) -> Vec<LayerRow> {
    let Some(first) = r.inferences.first() else {
        return Vec::new();
    };
    let n = r.inferences.len() as f64;
    first
        .layers
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let sum = |f: &dyn Fn(&delphi_engine::run::LayerCost) -> f64| {
                r.inferences.iter().filter_map(|i| i.layers.get(k)).map(f).sum::<f64>() / n
            };
            LayerRow {
                layer: l.layer,
                ops: l.ops.iter().map(|o| o.to_string()).collect(),
                cost: Cost {
                    offline_s: sum(&|c| c.offline_s),
                    online_s: sum(&|c| c.online_s),
                    offline_bytes: sum(&|c| c.offline_bytes as f64),
                    online_bytes: sum(&|c| c.online_bytes as f64),
                },
            }
        })
        .collect()
}

/// A prediction's per-layer costs.
pub(crate) fn predicted_rows(p: &delphi_cost::Prediction) -> Vec<LayerRow> {
    p.layers
        .iter()
        .map(|(l, ops, c)| LayerRow {
            layer: *l,
            ops: ops.iter().map(|o| o.to_string()).collect(),
            cost: c.clone(),
        })
        .collect()
}
