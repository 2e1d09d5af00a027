//! ReLU windows for a trained network. The default (`--relu-bits auto`,
//! [`exact_relu_windows`]): exact windows 0..hi holding each layer's
//! proven input bound — the full-width circuit's outputs, for fewer bytes.
//! The opt-in `--relu-bits reduced-leaky` (and `delphi-plan windows`): the
//! narrowest bits of each ReLU's input that keep the fixed-point validation
//! accuracy, chosen from measured peaks with [`delphi_net::window`]'s rule;
//! that circuit's rounding depends on the client's share, so these plans
//! leak (docs/security.md); nothing chooses them unless asked to.

use delphi_crypto::relu::spec::ReluBits;
use delphi_net::window::{
    describe_windows, exact_windows, set_windows, windows_from_peaks, WindowChoice,
};
use delphi_net::Network;
use delphi_train::data::Dataset;
use delphi_train::evaluate::{fixed_accuracy, relu_input_peaks};

use crate::config::RELU_BITS_TOLERANCE;
use crate::error::Result;

/// Training images whose ReLU inputs size the reduced-ReLU windows.
pub const RELU_BITS_IMAGES: usize = 2000;
/// Validation images on which reduced windows must keep the accuracy.
pub const RELU_BITS_VALID_IMAGES: usize = 2000;

type Windows = Vec<(usize, Option<ReluBits>)>;

/// Gives a trained `net` its own reduced-ReLU windows (`--relu-bits reduced-leaky`):
/// per layer the narrowest window holding twice the largest ReLU input seen
/// on [`RELU_BITS_IMAGES`] training images (else eight times), low bit at
/// the truncation; then the low bit raised for every layer together, one
/// bit at a time (at most four), while the accuracy holds. A choice is
/// kept when the fixed-point accuracy on the first
/// [`RELU_BITS_VALID_IMAGES`] validation images — every ReLU giving the
/// protocol's result in distribution, paired on the same images — stays
/// within [`RELU_BITS_TOLERANCE`] of the full-width network's; with no
/// such choice the network keeps full-width ReLUs. Returns what was
/// decided, for the plan's `metadata.relu_bits`.
pub fn choose_relu_windows(
    net: &mut Network,
    data: &Dataset,
    say: &dyn Fn(&str),
) -> Result<WindowChoice> {
    if !net.layers.iter().any(|l| l.has_relu()) {
        return Ok(WindowChoice::new("reduced-leaky", "none (no ReLU layers)".into()));
    }
    let n = data.valid.len().min(RELU_BITS_VALID_IMAGES);
    let valid = data.valid.select(&(0..n).collect::<Vec<_>>());
    let full = fixed_accuracy(net, &valid)?;
    say(&format!(
        "full-width ReLUs: fixed-point validation accuracy {:.2} % on {n} images",
        full * 100.0
    ));
    let try_windows = |w: &Windows| -> Result<Option<(Network, f64)>> {
        let mut cand = net.clone();
        delphi_net::window::set_windows(&mut cand, w)?;
        let acc = fixed_accuracy(&cand, &valid)?;
        say(&format!("windows {}: {:.2} %", describe_windows(w), acc * 100.0));
        Ok((acc >= full - RELU_BITS_TOLERANCE).then_some((cand, acc)))
    };
    let peaks = relu_input_peaks(net, &data.train, RELU_BITS_IMAGES)?;
    for margin in [2.0, 8.0] {
        let w = windows_from_peaks(&peaks, margin);
        if w.iter().all(|(_, b)| b.is_none()) {
            break;
        }
        let Some(mut best) = try_windows(&w)?.map(|(c, a)| (w.clone(), c, a)) else {
            continue;
        };
        for extra in 1..=4u32 {
            let coarser: Windows = w
                .iter()
                .map(|&(l, b)| {
                    let b = b.map(|b| ReluBits { lo: b.lo + extra, hi: b.hi });
                    // A window that cannot drop more bits keeps the last one.
                    let prev = best.0.iter().find(|(pl, _)| *pl == l).and_then(|x| x.1);
                    (l, b.filter(|b| b.lo + 2 <= b.hi).or(prev))
                })
                .collect();
            match try_windows(&coarser)? {
                Some((c, a)) => best = (coarser, c, a),
                None => break,
            }
        }
        let (w, cand, acc) = best;
        *net = cand;
        return Ok(WindowChoice {
            margin: Some(margin),
            fixed_valid_accuracy_full: Some(full),
            fixed_valid_accuracy_reduced: Some(acc),
            valid_images: Some(n),
            ..WindowChoice::new("reduced-leaky", describe_windows(&w))
        });
    }
    Ok(WindowChoice {
        fixed_valid_accuracy_full: Some(full),
        valid_images: Some(n),
        ..WindowChoice::new(
            "reduced-leaky",
            "full (no window kept the accuracy: every layer keeps the 41-bit circuit)".into(),
        )
    })
}

/// Gives `net` the exact windows of its weights (`--relu-bits auto`,
/// [`delphi_net::window::exact_windows`]); returns the choice for the
/// plan's `metadata.relu_bits`. Nothing is measured: the outputs are the
/// full-width circuit's.
pub fn exact_relu_windows(net: &mut Network) -> Result<WindowChoice> {
    if !net.layers.iter().any(|l| l.has_relu()) {
        return Ok(WindowChoice::new("auto", "none (no ReLU layers)".into()));
    }
    let w = exact_windows(net)?;
    set_windows(net, &w)?;
    Ok(WindowChoice::new("auto", describe_windows(&w)))
}
