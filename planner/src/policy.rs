//! The search policies, free of training and files so they can be tested
//! on their own: genomes and their perturbation, the fitness of each
//! strategy, exploit selection, the Pareto front, the choice of a plan for a
//! threshold, DELPHI's counts of quadratic layers and the greedy rule's pick
//! and budget split.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use delphi_net::Placement;

/// A member's placement and hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Genome {
    /// Which activation layers are (or are becoming) quadratic.
    pub placement: Placement,
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Weight of the distillation term (0: none).
    pub distill_weight: f32,
    /// Fraction of the member's run a swap to quadratic takes (0: at once).
    pub swap_span: f32,
    /// Per-channel placement: the member's cost budget as a fraction of the
    /// all-ReLU network's cost (0 at layer granularity).
    #[serde(default)]
    pub budget: f64,
}

/// Declared bounds of the hyperparameters (perturbation clamps to them).
pub const LR: (f64, f64) = (1e-3, 0.2);
/// Momentum bounds.
pub const MOMENTUM: (f64, f64) = (0.5, 0.99);
/// Weight-decay bounds.
pub const WEIGHT_DECAY: (f64, f64) = (1e-5, 1e-2);
/// Distillation-weight bounds.
pub const DISTILL: (f32, f32) = (0.0, 1.0);
/// Swap-span bounds.
pub const SPAN: (f32, f32) = (0.05, 0.6);

fn log_uniform(rng: &mut ChaCha8Rng, (lo, hi): (f64, f64)) -> f64 {
    (lo.ln() + rng.gen::<f64>() * (hi.ln() - lo.ln())).exp()
}

/// `count` distinct layers out of `layers`, uniformly at random.
pub fn random_placement(layers: usize, count: usize, rng: &mut ChaCha8Rng) -> Placement {
    let mut idx: Vec<usize> = (0..layers).collect();
    idx.shuffle(rng);
    let mut p = Placement::all_relu(layers);
    for &i in idx.iter().take(count) {
        p.set(i, true);
    }
    p
}

/// One multiplicative perturbation: ×0.8 or ×1.2, or (with probability
/// 0.2) a fresh draw, clamped to the bounds.
fn perturb_value(v: f64, b: (f64, f64), log: bool, rng: &mut ChaCha8Rng) -> f64 {
    let v = if rng.gen_bool(0.2) {
        if log {
            log_uniform(rng, b)
        } else {
            rng.gen_range(b.0..b.1)
        }
    } else if rng.gen_bool(0.5) {
        v * 0.8
    } else {
        v * 1.2
    };
    v.clamp(b.0, b.1)
}

impl Genome {
    /// A random genome with `quads` quadratic layers out of `layers` (our
    /// search's starting ranges).
    pub fn random(layers: usize, quads: usize, rng: &mut ChaCha8Rng) -> Genome {
        Genome {
            placement: random_placement(layers, quads, rng),
            lr: log_uniform(rng, (0.01, 0.05)),
            momentum: rng.gen_range(0.85..0.95),
            weight_decay: log_uniform(rng, (1e-4, 1e-3)),
            distill_weight: rng.gen_range(0.3..0.8),
            swap_span: rng.gen_range(0.2..0.5),
            budget: 0.0,
        }
    }

    /// DELPHI's member: exactly `quads` quadratic layers at random places,
    /// a random learning rate and momentum, no distillation, quadratics
    /// from the start.
    pub fn delphi(layers: usize, quads: usize, rng: &mut ChaCha8Rng) -> Genome {
        Genome {
            placement: random_placement(layers, quads, rng),
            lr: log_uniform(rng, (0.01, 0.05)),
            momentum: rng.gen_range(0.85..0.95),
            weight_decay: 5e-4,
            distill_weight: 0.0,
            swap_span: 0.0,
            budget: 0.0,
        }
    }

    /// Explore: every hyperparameter perturbed within its bounds.
    pub fn perturb(&mut self, rng: &mut ChaCha8Rng) {
        self.lr = perturb_value(self.lr, LR, true, rng);
        self.momentum = perturb_value(self.momentum, MOMENTUM, false, rng);
        self.weight_decay = perturb_value(self.weight_decay, WEIGHT_DECAY, true, rng);
        self.distill_weight = perturb_value(
            self.distill_weight as f64,
            (DISTILL.0 as f64, DISTILL.1 as f64),
            false,
            rng,
        ) as f32;
        self.swap_span =
            perturb_value(self.swap_span as f64, (SPAN.0 as f64, SPAN.1 as f64), false, rng) as f32;
    }

    /// DELPHI's explore: the learning rate and momentum only.
    pub fn perturb_lr_momentum(&mut self, rng: &mut ChaCha8Rng) {
        self.lr = perturb_value(self.lr, LR, true, rng);
        self.momentum = perturb_value(self.momentum, MOMENTUM, false, rng);
    }
}

/// The cost budget (a fraction of the all-ReLU cost) of member `k` of `n`
/// at the start of a per-channel search: `floor` (every channel quadratic)
/// plus a share of what ReLUs can add, log-spaced from 3 % to 50 %.
pub fn channel_budget(k: usize, n: usize, floor: f64) -> f64 {
    let (lo, hi): (f64, f64) = (0.03, 0.5);
    let x = if n <= 1 { lo } else { lo * (hi / lo).powf(k as f64 / (n - 1) as f64) };
    floor + (1.0 - floor) * x
}

/// A tighter budget after a member that met the threshold was copied: 70 %
/// of its share above the floor.
pub fn tighter_budget(budget: f64, floor: f64) -> f64 {
    floor + (budget - floor).max(0.0) * 0.7
}

/// Quadratic layers of member `k` of `n` at the start of our search:
/// spread evenly from one to all `layers`.
pub fn spread(k: usize, n: usize, layers: usize) -> usize {
    if n <= 1 {
        return layers;
    }
    let q = 1.0 + k as f64 * layers.saturating_sub(1) as f64 / (n - 1) as f64;
    (q.round() as usize).clamp(1, layers.max(1))
}

/// Our fitness (higher is better): −cost when the accuracy meets the
/// threshold; below it, −cost minus a penalty of 30 × the shortfall times the
/// all-ReLU cost — one point short costs 0.3 of the all-ReLU network's cost.
/// So a much cheaper member a little below the threshold (validation noise,
/// or still recovering from a swap) outranks a dear one above it and keeps
/// training, while a member far below ranks last. The plan itself is chosen
/// strictly ([`choose`]): only evaluations that meet the threshold count.
pub fn pbt_fitness(accuracy: f64, cost: f64, threshold: f64, relu_cost: f64) -> f64 {
    let shortfall = (threshold - accuracy).max(0.0);
    -cost - relu_cost * 30.0 * shortfall
}

/// DELPHI's fitness: validation accuracy × (1 + replaced ReLUs / all ReLUs),
/// ReLUs counted as activations (elements), not layers.
pub fn delphi_fitness(accuracy: f64, replaced_relus: usize, all_relus: usize) -> f64 {
    accuracy * (1.0 + replaced_relus as f64 / all_relus.max(1) as f64)
}

/// Exploit pairs `(replaced, source)`: each member of the bottom quantile
/// (by fitness) copies a random member of the top quantile — unless it is
/// not `ready` (one flag per member: a member mid-swap cannot be judged yet
/// and keeps training).
pub fn exploit_pairs(
    fitness: &[f64],
    ready: &[bool],
    quantile: f64,
    rng: &mut ChaCha8Rng,
) -> Vec<(usize, usize)> {
    let n = fitness.len();
    if n < 2 || quantile <= 0.0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| fitness[b].total_cmp(&fitness[a]));
    let q = ((n as f64 * quantile).round() as usize).clamp(1, n / 2);
    let top = &order[..q];
    order[n - q..]
        .iter()
        .filter(|lo| !top.contains(lo) && ready.get(**lo) == Some(&true))
        .map(|&lo| (lo, top[rng.gen_range(0..top.len())]))
        .collect()
}

/// Indices of the Pareto front of `(accuracy, cost)` points — none other
/// is at least as accurate and cheaper, or more accurate and as cheap —
/// cheapest first; exact duplicates appear once.
pub fn pareto(points: &[(f64, f64)]) -> Vec<usize> {
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let (a, c) = points[i];
            !points.iter().any(|&(oa, oc)| (oa >= a && oc < c) || (oa > a && oc <= c))
        })
        .collect();
    front.sort_by(|&i, &j| points[i].1.total_cmp(&points[j].1));
    front.dedup_by(|i, j| points[*i] == points[*j]);
    front
}

/// Costs within this fraction of the cheapest plan meeting a threshold are
/// a tie, and the tie goes to the more accurate plan: 0.5 %, far below what
/// the cost model can tell apart (its predictions move by several percent
/// between calibrations), so a plan is never given up for a difference in
/// cost that is noise.
pub const COST_TIE: f64 = 0.005;

/// The plan for `threshold`: the most accurate of the points meeting it
/// whose cost is within [`COST_TIE`] of the cheapest of them (the cheaper
/// of equally accurate ones, the first of identical ones).
pub fn choose(points: &[(f64, f64)], threshold: f64) -> Option<usize> {
    let meets = || (0..points.len()).filter(move |&i| points[i].0 >= threshold);
    let cheapest = meets().map(|i| points[i].1).min_by(f64::total_cmp)?;
    let tie = cheapest + cheapest.abs() * COST_TIE;
    // (Identical points: the first.)
    meets().filter(|&i| points[i].1 <= tie).max_by(|&i, &j| {
        points[i]
            .0
            .total_cmp(&points[j].0)
            .then(points[j].1.total_cmp(&points[i].1))
            .then(j.cmp(&i))
    })
}

/// DELPHI's planner runs one population per count of quadratic layers;
/// with budget for `runs` populations the counts are spread evenly up to
/// all layers (e.g. 13 layers, 3 runs: 4, 9, 13).
pub fn delphi_counts(layers: usize, runs: usize) -> Vec<usize> {
    let runs = runs.clamp(1, layers.max(1));
    let mut v: Vec<usize> = (1..=runs)
        .map(|j| ((j * layers) as f64 / runs as f64).round() as usize)
        .map(|n| n.clamp(1, layers))
        .collect();
    v.dedup();
    v
}

/// One greedy probe: a layer made quadratic and briefly fine-tuned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The activation layer tried.
    pub layer: usize,
    /// Validation accuracy after the probe.
    pub accuracy: f64,
    /// Predicted cost with it quadratic.
    pub cost: f64,
}

/// The greedy rule: the probe that loses the least accuracy per unit of
/// predicted saving against the current plan (a gain counts as a negative
/// loss; probes that save nothing are skipped).
pub fn greedy_pick(probes: &[Probe], accuracy: f64, cost: f64) -> Option<usize> {
    let score = |p: &Probe| (accuracy - p.accuracy) / (cost - p.cost);
    (0..probes.len())
        .filter(|&i| cost - probes[i].cost > 0.0)
        .min_by(|&i, &j| score(&probes[i]).total_cmp(&score(&probes[j])))
}

/// The greedy rule's budget split for `layers` activation layers: steps of
/// one probe and of the fine-tune after each accepted layer, so that the
/// longest possible run (every layer, probing each remaining one every
/// round) fits in `budget` steps.
pub fn greedy_steps(layers: usize, budget: usize) -> usize {
    let units = layers * (layers + 1) / 2 + layers;
    (budget / units.max(1)).max(1)
}

/// Where a greedy search is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GreedyState {
    /// The plan accepted so far.
    pub accepted: Placement,
    /// Its validation accuracy.
    pub accuracy: f64,
    /// Its cost (the objective).
    pub cost: f64,
    /// Round (from 1).
    pub round: usize,
    /// Probes finished this round.
    pub probes: Vec<Probe>,
    /// Why the rounds ended, once they have.
    pub stopped: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn fitness_forgives_a_small_shortfall_for_a_much_cheaper_plan() {
        let relu = 1.0;
        let above_dear = pbt_fitness(0.91, 0.8, 0.9, relu);
        let above_cheap = pbt_fitness(0.90, 0.2, 0.9, relu);
        let just_below_cheaper = pbt_fitness(0.899, 0.1, 0.9, relu);
        let far_below_cheapest = pbt_fitness(0.85, 0.01, 0.9, relu);
        assert!(above_cheap > above_dear);
        assert!(just_below_cheaper > above_cheap);
        assert!(above_dear > far_below_cheapest);
        // Above the threshold only the cost counts.
        assert_eq!(pbt_fitness(0.95, 0.3, 0.9, relu), pbt_fitness(0.91, 0.3, 0.9, relu));
    }

    #[test]
    fn delphi_fitness_counts_activations() {
        assert_eq!(delphi_fitness(0.9, 0, 100), 0.9);
        assert!((delphi_fitness(0.8, 50, 100) - 1.2).abs() < 1e-12);
        // One big layer replaced beats two small ones at equal accuracy.
        assert!(delphi_fitness(0.9, 60, 100) > delphi_fitness(0.9, 40, 100));
    }

    #[test]
    fn exploit_copies_top_into_bottom() {
        let f = [0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4];
        let all = [true; 8];
        let pairs = exploit_pairs(&f, &all, 0.25, &mut rng());
        let lows: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        assert_eq!(pairs.len(), 2);
        assert!(lows.contains(&0) && lows.contains(&5), "{pairs:?}");
        for (_, hi) in pairs {
            assert!(hi == 1 || hi == 6);
        }
        assert!(exploit_pairs(&[1.0], &all, 0.25, &mut rng()).is_empty());
        assert!(exploit_pairs(&f, &all, 0.0, &mut rng()).is_empty());
        // Two members: the worse copies the better.
        assert_eq!(exploit_pairs(&[0.2, 0.4], &all, 0.25, &mut rng()), vec![(0, 1)]);
        // A member mid-swap is not replaced.
        let mut ready = all;
        ready[0] = false;
        let pairs = exploit_pairs(&f, &ready, 0.25, &mut rng());
        assert_eq!(pairs.iter().map(|p| p.0).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn perturbation_stays_in_bounds_and_delphi_touches_lr_momentum_only() {
        let mut r = rng();
        let mut g = Genome::random(5, 2, &mut r);
        for _ in 0..200 {
            g.perturb(&mut r);
            assert!((LR.0..=LR.1).contains(&g.lr));
            assert!((MOMENTUM.0..=MOMENTUM.1).contains(&g.momentum));
            assert!((WEIGHT_DECAY.0..=WEIGHT_DECAY.1).contains(&g.weight_decay));
            assert!((SPAN.0..=SPAN.1).contains(&g.swap_span));
        }
        let mut d = Genome::delphi(5, 3, &mut r);
        assert_eq!(d.placement.quad_count(), 3);
        let before = d.clone();
        for _ in 0..20 {
            d.perturb_lr_momentum(&mut r);
        }
        assert_eq!(
            (d.weight_decay, d.distill_weight, d.swap_span, &d.placement),
            (before.weight_decay, before.distill_weight, before.swap_span, &before.placement)
        );
        assert_ne!((d.lr, d.momentum), (before.lr, before.momentum));
    }

    #[test]
    fn pareto_front_and_choice() {
        let pts = [(0.90, 1.0), (0.92, 2.0), (0.89, 1.5), (0.85, 0.5), (0.92, 2.0), (0.95, 3.0)];
        assert_eq!(pareto(&pts), vec![3, 0, 1, 5]);
        assert_eq!(choose(&pts, 0.91), Some(1));
        assert_eq!(choose(&pts, 0.88), Some(0));
        assert_eq!(choose(&pts, 0.99), None);
        // Equally cheap: the more accurate.
        assert_eq!(choose(&[(0.9, 1.0), (0.93, 1.0)], 0.9), Some(1));
        // Within 0.5 % of the cheapest: a tie, the more accurate wins; past
        // it, the cheaper; equally accurate near-ties go to the cheaper.
        assert_eq!(choose(&[(0.90, 1.0), (0.93, 1.004)], 0.9), Some(1));
        assert_eq!(choose(&[(0.90, 1.0), (0.93, 1.006)], 0.9), Some(0));
        assert_eq!(choose(&[(0.93, 1.004), (0.93, 1.0)], 0.9), Some(1));
        // Points below the threshold never win a tie.
        assert_eq!(choose(&[(0.95, 1.001), (0.90, 1.0)], 0.92), Some(0));
        assert_eq!(choose(&[(0.89, 1.001), (0.90, 1.0)], 0.9), Some(1));
    }

    #[test]
    fn starting_placements_spread_from_one_to_all() {
        let v: Vec<usize> = (0..6).map(|k| spread(k, 6, 13)).collect();
        assert_eq!(v, vec![1, 3, 6, 8, 11, 13]);
        assert_eq!(spread(0, 1, 5), 5);
        assert_eq!((0..2).map(|k| spread(k, 2, 3)).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn delphi_counts_spread_to_all_layers() {
        assert_eq!(delphi_counts(13, 3), vec![4, 9, 13]);
        assert_eq!(delphi_counts(3, 5), vec![1, 2, 3]);
        assert_eq!(delphi_counts(31, 1), vec![31]);
    }

    #[test]
    fn greedy_prefers_the_cheapest_accuracy_per_saving() {
        let probes = [
            Probe { layer: 0, accuracy: 0.88, cost: 0.5 }, // loses 2 pts for 0.5
            Probe { layer: 1, accuracy: 0.895, cost: 0.9 }, // loses 0.5 pt for 0.1
            Probe { layer: 2, accuracy: 0.90, cost: 0.95 }, // loses nothing
            Probe { layer: 3, accuracy: 0.95, cost: 1.0 }, // saves nothing
        ];
        assert_eq!(greedy_pick(&probes, 0.90, 1.0), Some(2));
        assert_eq!(greedy_pick(&probes[..2], 0.90, 1.0), Some(0));
        assert_eq!(greedy_pick(&probes[3..], 0.90, 1.0), None);
        // The longest run fits the budget.
        let b = 10_000;
        let s = greedy_steps(13, b);
        assert!(s * (13 * 14 / 2 + 13) <= b);
    }

    #[test]
    fn channel_budgets_spread_above_the_floor_and_tighten_toward_it() {
        let floor = 0.2;
        let b: Vec<f64> = (0..6).map(|k| channel_budget(k, 6, floor)).collect();
        assert!((b[0] - (floor + 0.8 * 0.03)).abs() < 1e-12);
        assert!((b[5] - (floor + 0.8 * 0.5)).abs() < 1e-12);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        let t = tighter_budget(0.6, floor);
        assert!((t - (floor + 0.4 * 0.7)).abs() < 1e-12);
        assert!(tighter_budget(floor, floor) >= floor);
    }
}
