//! Choosing reduced-ReLU windows from the ReLU inputs a network really sees.
//!
//! A reduced ReLU ([`delphi_crypto::relu`]) reads its input modulo 2^hi and
//! drops the low `lo` bits; its cost grows with hi − lo. The narrowest
//! window that is still exact where it matters comes from measurement: run
//! the fixed-point program on sample inputs (training images), take each
//! ReLU node's largest |input|, add a safety margin, and choose the smallest
//! hi that keeps it inside the range where the protocol's bound is stated.
//! With lo equal to the ReLU's truncation the result is exactly
//! ReLU(v) >> shift inside the window (the protocol adds at most one unit);
//! a larger lo rounds the output down to a multiple of 2^(lo − shift).
//!
//! Inputs beyond the window wrap around (a large positive value reads as
//! negative): the margin makes that rare, the fixed-point reference models
//! it exactly, and accuracy measured with the reference includes it.

use delphi_crypto::field::F;
use delphi_crypto::relu::spec::{ReluBits, MAX_HI};

use crate::desc::Network;
pub use crate::desc::WindowChoice;
use crate::error::{NetError, Result};
use crate::fixed::{FixedOp, FixedProgram};

/// The measured input of one ReLU node.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReluPeak {
    /// The activation layer in the description.
    pub layer: usize,
    /// The program node.
    pub node: usize,
    /// The truncation after the ReLU.
    pub shift: u32,
    /// Largest |input| seen (fixed-point units of the node's input).
    pub peak: u64,
    /// ReLUs in the node (per inference).
    pub relus: usize,
}

/// Each ReLU node's largest |input| over `inputs` (encoded images), in the
/// order of the program (batched: [`FixedProgram::eval_batch_with`]).
pub fn relu_peaks(prog: &FixedProgram, inputs: &[Vec<F>]) -> Result<Vec<ReluPeak>> {
    let mut peaks: Vec<ReluPeak> = prog
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match (&n.op, n.layer) {
            (FixedOp::Relu { shift, .. }, Some(layer)) if !prog.is_comparison(i) => {
                Some(ReluPeak { layer, node: i, shift: *shift, peak: 0, relus: n.active_len() })
            }
            _ => None,
        })
        .collect();
    let mut seen = vec![0u64; prog.nodes.len()];
    for chunk in inputs.chunks(prog.preferred_batch()) {
        prog.eval_batch_with(chunk, &mut |node, spec, v| {
            seen[node] = seen[node].max(v.to_signed().unsigned_abs());
            spec.reference(v)
        })?;
    }
    for p in &mut peaks {
        p.peak = seen[p.node];
    }
    Ok(peaks)
}

/// The narrowest window with low bit `lo` whose stated-bound range holds
/// `peak · margin` (`None` when that needs more than [`MAX_HI`] bits, or
/// the window would be invalid for `shift`: keep the full circuit).
pub fn window_for(peak: u64, margin: f64, lo: u32, shift: u32) -> Option<ReluBits> {
    let need = (peak as f64 * margin.max(1.0)).ceil();
    (lo.saturating_add(2)..=MAX_HI)
        .map(|hi| ReluBits { lo, hi })
        .find(|b| b.check(shift).is_ok() && (b.exact_sign_limit() as f64) > need)
}

/// One window per activation layer from measured peaks: each ReLU node's
/// peak times `margin`, the low bit at the node's truncation (at least 1: a
/// window drops a bit); a layer's nodes share its widest window, and a
/// layer whose nodes disagree on the low bit, or one node of which needs
/// the full circuit, gets `None` (the full circuit).
pub fn windows_from_peaks(peaks: &[ReluPeak], margin: f64) -> Vec<(usize, Option<ReluBits>)> {
    let mut out: Vec<(usize, Option<ReluBits>)> = Vec::new();
    for p in peaks {
        let w = window_for(p.peak, margin, p.shift.max(1), p.shift);
        match out.iter_mut().find(|(l, _)| *l == p.layer) {
            Some((_, cur)) => {
                *cur = match (*cur, w) {
                    (Some(a), Some(b)) if a.lo == b.lo => Some(if a.hi >= b.hi { a } else { b }),
                    _ => None,
                }
            }
            None => out.push((p.layer, w)),
        }
    }
    out
}

/// The exact windows a network can use (`--relu-bits auto`): per ReLU
/// layer, the exact window 0..hi with the smallest hi (at least the
/// truncation + 2) whose range holds the bound interval arithmetic proves
/// for every input of the layer's ReLUs from the weights and the declared
/// input range ([`FixedProgram::proven_bounds_for`]); `None` (full width)
/// where no window up to [`MAX_HI`] does. The outputs are exactly the
/// full-width circuit's for every input in range, so nothing is measured:
/// a window reveals only the bit length of that proven bound.
pub fn exact_windows(net: &Network) -> Result<Vec<(usize, Option<ReluBits>)>> {
    let mut bare = net.clone();
    for l in &mut bare.layers {
        l.relu_bits = None;
    }
    let prog = FixedProgram::lower(&bare)?;
    let bounds = prog.proven_bounds_for(&bare);
    let mut out: Vec<(usize, Option<ReluBits>)> = Vec::new();
    // Max pooling's comparisons (no truncation) get theirs too, on the
    // pooling layer: the same outputs as full width, fewer gates.
    for n in &prog.nodes {
        let (FixedOp::Relu { shift, .. }, Some(layer)) = (&n.op, n.layer) else { continue };
        let need = bounds[n.inputs[0]];
        let w = (shift.saturating_add(2).max(2)..=MAX_HI)
            .map(ReluBits::exact)
            .find(|b| (b.exact_sign_limit() as f64) > need);
        match out.iter_mut().find(|(l, _)| *l == layer) {
            Some((_, cur)) => {
                *cur = match (*cur, w) {
                    (Some(a), Some(b)) => Some(if a.hi >= b.hi { a } else { b }),
                    _ => None,
                }
            }
            None => out.push((layer, w)),
        }
    }
    Ok(out)
}

/// `layer:lo..hi` per window (`layer:full` where none), space separated.
pub fn describe_windows(w: &[(usize, Option<ReluBits>)]) -> String {
    w.iter()
        .map(|(l, b)| match b {
            Some(b) => format!("{l}:{b}"),
            None => format!("{l}:full"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets (or, with `None`, clears) the window of the activation layers
/// named, and writes the description as format version 3 when any is set.
/// Nothing changes when the result would not validate.
pub fn set_windows(net: &mut Network, windows: &[(usize, Option<ReluBits>)]) -> Result<()> {
    let mut layers = net.layers.clone();
    for &(layer, bits) in windows {
        let l = layers.get_mut(layer).ok_or_else(|| {
            NetError::Invalid(format!("layer {layer}: no such layer for a ReLU window"))
        })?;
        l.relu_bits = bits;
    }
    let old = std::mem::replace(&mut net.layers, layers);
    let version = net.version;
    if net.layers.iter().any(|l| l.relu_bits.is_some()) {
        net.version = net.version.max(3);
    }
    if let Err(e) = net.validate_architecture() {
        net.layers = old;
        net.version = version;
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::build;

    #[test]
    fn max_pooling_comparisons_take_exact_windows_only() {
        let mut net = build("small-cnn-max", 10, 2).unwrap();
        let full = FixedProgram::lower(&net).unwrap();
        let w = exact_windows(&net).unwrap();
        // The three activation layers and the two pools (their comparisons).
        let mut layers: Vec<usize> = w.iter().map(|(l, _)| *l).collect();
        layers.sort_unstable();
        assert_eq!(layers, vec![1, 2, 4, 5, 8]);
        set_windows(&mut net, &w).unwrap();
        // The pools' windows survive a file round trip.
        let file =
            std::env::temp_dir().join(format!("delphi-pool-win-{}.json", std::process::id()));
        net.save(&file, crate::desc::WeightStorage::Inline).unwrap();
        let net = Network::load(&file).unwrap();
        std::fs::remove_file(&file).ok();
        let prog = FixedProgram::lower(&net).unwrap();
        let cmp: Vec<_> = (0..prog.nodes.len()).filter(|&i| prog.is_comparison(i)).collect();
        assert_eq!(cmp.len(), 4, "two levels per 2×2 pool");
        for &i in &cmp {
            assert!(
                matches!(prog.nodes[i].op, FixedOp::Relu { shift: 0, bits: Some(b) } if b.is_exact() && b.hi < 41)
            );
        }
        // Exact windows: the same outputs as full width.
        for seed in 0..3 {
            let x = crate::eval::random_inputs(prog.nodes[0].shape.len(), 1, seed).remove(0);
            let enc = prog.encode_input(&x).unwrap();
            assert_eq!(prog.eval(&enc).unwrap(), full.eval(&enc).unwrap());
        }
        // Measured (leaky) windows are for activation layers only.
        let x = prog
            .encode_input(&crate::eval::random_inputs(prog.nodes[0].shape.len(), 1, 3)[0])
            .unwrap();
        let peaks = relu_peaks(&prog, std::slice::from_ref(&x)).unwrap();
        assert_eq!(peaks.len(), 3, "one ReLU node per activation layer, the fused ones included");
        assert!(peaks.iter().all(|p| net.layers[p.layer].has_relu()));
        // A reduced window on a pool is refused by name.
        let mut bad = net.clone();
        bad.layers[2].relu_bits = Some(ReluBits { lo: 2, hi: 20 });
        assert!(bad.validate().unwrap_err().to_string().contains("exact window"));
    }

    #[test]
    fn node_checks_allow_the_stated_bound_and_nothing_more() {
        let mut net = build("small-cnn", 10, 6).unwrap();
        let full = FixedProgram::lower(&net).unwrap();
        let x = full
            .encode_input(&crate::eval::random_inputs(full.nodes[0].shape.len(), 1, 3)[0])
            .unwrap();
        let peaks = relu_peaks(&full, std::slice::from_ref(&x)).unwrap();
        let p = &peaks[0];
        // Full width: exact.
        let mut vals = full.eval_all(&x).unwrap();
        assert!((0..vals.len()).all(|i| full.check_node(i, &vals).ok()));
        vals[p.node][0] += F::ONE;
        let d = full.check_node(p.node, &vals);
        assert!(!d.ok() && d.max_units == 1 && d.allowed_units == 0);
        // A window two bits coarser than the truncation: four units allowed.
        let w = window_for(p.peak, 2.0, p.shift + 2, p.shift).unwrap();
        set_windows(&mut net, &[(p.layer, Some(w))]).unwrap();
        let prog = FixedProgram::lower(&net).unwrap();
        let mut vals = prog.eval_all(&x).unwrap();
        vals[p.node][0] += F::from_u64(4);
        let d = prog.check_node(p.node, &vals);
        assert!(d.ok() && d.allowed_units == 4, "{d:?}");
        vals[p.node][0] += F::ONE;
        assert!(!prog.check_node(p.node, &vals).ok());
    }

    #[test]
    fn windows_hold_the_margin() {
        let b = window_for(1000, 2.0, 4, 4).unwrap();
        assert!(b.exact_sign_limit() > 2000);
        let narrower = ReluBits { hi: b.hi - 1, ..b };
        assert!(narrower.exact_sign_limit() <= 2000);
        assert_eq!(window_for(1 << 40, 1.0, 12, 12), None);
        // hi must leave an output bit: hi ≥ shift + 2.
        assert_eq!(window_for(0, 1.0, 1, 12).map(|b| b.hi), Some(14));
    }

    #[test]
    fn windows_from_peaks_keep_the_reference_exact_on_those_inputs() {
        let mut net = build("small-cnn", 10, 5).unwrap();
        let prog = FixedProgram::lower(&net).unwrap();
        let xs: Vec<Vec<F>> = crate::eval::random_inputs(prog.nodes[0].shape.len(), 4, 9)
            .iter()
            .map(|x| prog.encode_input(x).unwrap())
            .collect();
        let peaks = relu_peaks(&prog, &xs).unwrap();
        assert!(!peaks.is_empty());
        let windows: Vec<_> =
            peaks.iter().map(|p| (p.layer, window_for(p.peak, 1.0, p.shift, p.shift))).collect();
        assert!(windows.iter().all(|(_, w)| w.is_some()));
        set_windows(&mut net, &windows).unwrap();
        assert_eq!(net.version, 3);
        // The windows survive a file; version 2 files may not carry them.
        let dir = std::env::temp_dir().join(format!("delphi-window-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("net.json");
        net.save(&path, crate::WeightStorage::Inline).unwrap();
        assert_eq!(Network::load(&path).unwrap(), net);
        let mut old = net.clone();
        old.version = 2;
        let e = old.validate().unwrap_err().to_string();
        assert!(e.contains("needs format version 3"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        let reduced = FixedProgram::lower(&net).unwrap();
        // lo = shift and every input inside: the same values as full ReLUs.
        for x in &xs {
            assert_eq!(reduced.eval(x).unwrap(), prog.eval(x).unwrap());
        }
        // A window too narrow wraps and changes the result.
        let tight: Vec<_> = peaks
            .iter()
            .map(|p| {
                let hi = (64 - p.peak.leading_zeros()).max(p.shift + 2);
                (p.layer, Some(ReluBits { lo: p.shift, hi }))
            })
            .collect();
        set_windows(&mut net, &tight).unwrap();
        let wrapped = FixedProgram::lower(&net).unwrap();
        assert!(xs.iter().any(|x| wrapped.eval(x).unwrap() != prog.eval(x).unwrap()));
        // Windows go on activation layers only.
        let before = net.clone();
        assert!(set_windows(&mut net, &[(0, Some(ReluBits { lo: 12, hi: 20 }))]).is_err());
        assert_eq!(net, before);
    }
}
