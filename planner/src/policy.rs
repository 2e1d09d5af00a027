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
/// Where every strategy's members draw their starting learning rate
/// (log-uniform): fine-tuning from a trained base, and low enough for deep
/// networks with many quadratic layers (all-quadratic `resnet26` diverged
/// at 0.01 and above; see docs/planner.md).
pub const START_LR: (f64, f64) = (0.002, 0.02);
/// DELPHI's exchange: its code blends each quadratic layer in from ReLU
/// over the first third of a member's run (`swap_period` 100 of 300 epochs).
pub const DELPHI_SWAP: f32 = 1.0 / 3.0;

fn log_uniform(rng: &mut ChaCha8Rng, (lo, hi): (f64, f64)) -> f64 {
    (lo.ln() + rng.gen::<f64>() * (hi.ln() - lo.ln())).exp()
}

/// Starting learning rates for members making `quads[k]` layers
/// quadratic: [`START_LR`] cut into as many equal strata (on a log scale)
/// as members, one draw in each; the member with the most quadratic layers
/// draws from the lowest stratum, the one with the fewest from the highest
/// (ties by index). Quadratic activations have unbounded gradients, so a
/// network with more of them needs smaller steps. On `resnet38` our
/// all-quadratic starting member, drawn at 0.0128–0.0189, fell to chance
/// in all three seeds; at the halving of the all-quadratic control (four
/// seeds) 3 of 13 members at rates below 0.0075 had fallen to chance,
/// against 6 of 12 above. A low rate makes the failure rarer, not
/// impossible.
pub fn starting_lrs(quads: &[usize], rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = quads.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| quads[b].cmp(&quads[a]).then(a.cmp(&b)));
    let (lo, hi) = (START_LR.0.ln(), START_LR.1.ln());
    let width = (hi - lo) / n.max(1) as f64;
    let mut out = vec![0.0; n];
    for (stratum, &k) in order.iter().enumerate() {
        let from = lo + stratum as f64 * width;
        out[k] = (from + rng.gen::<f64>() * width).exp();
    }
    out
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
    perturb_within(v, b, b, log, rng)
}

/// [`perturb_value`] whose fresh draws come from `fresh` (inside `b`).
fn perturb_within(
    v: f64,
    b: (f64, f64),
    fresh: (f64, f64),
    log: bool,
    rng: &mut ChaCha8Rng,
) -> f64 {
    let v = if rng.gen_bool(0.2) {
        if log {
            log_uniform(rng, fresh)
        } else {
            rng.gen_range(fresh.0..fresh.1)
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
            lr: log_uniform(rng, START_LR),
            momentum: rng.gen_range(0.85..0.95),
            weight_decay: log_uniform(rng, (1e-4, 1e-3)),
            distill_weight: rng.gen_range(0.3..0.8),
            swap_span: rng.gen_range(0.2..0.5),
            budget: 0.0,
        }
    }

    /// DELPHI's member: exactly `quads` quadratic layers at random places,
    /// a random learning rate and momentum, no distillation, the quadratics
    /// exchanged for the ReLUs gradually over the first third of the run
    /// ([`DELPHI_SWAP`]).
    pub fn delphi(layers: usize, quads: usize, rng: &mut ChaCha8Rng) -> Genome {
        Genome {
            placement: random_placement(layers, quads, rng),
            lr: log_uniform(rng, START_LR),
            momentum: rng.gen_range(0.85..0.95),
            weight_decay: 5e-4,
            distill_weight: 0.0,
            swap_span: DELPHI_SWAP,
            budget: 0.0,
        }
    }

    /// Explore: every hyperparameter perturbed within its bounds; a fresh
    /// learning rate is drawn from the starting range ([`START_LR`]), not
    /// from the whole bound: a member that copied a trained network and
    /// draws a rate near 0.2 wrecks it (a resnet38 member that drew 0.197
    /// fell from 87.5 % to 83.5 % in one interval), and
    /// the multiplicative steps still reach the whole bound over intervals.
    pub fn perturb(&mut self, rng: &mut ChaCha8Rng) {
        self.lr = perturb_within(self.lr, LR, START_LR, true, rng);
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

/// Where a move toward cheaper aims: the geometric midpoint between the
/// cost of the member copied (`source`) and the next cheaper of `front`
/// (the costs of the population's first-front plans); `None` when nothing
/// on the front is cheaper (the move is then one layer). A move of one
/// layer from a plan whose cheaper neighbour on the front is many layers
/// away leaves the gap between them untrained: on `resnet38` the halving
/// left a 13-layer plan at 0.049 s and the all-quadratic one at 0.015 s,
/// and one-layer moves never reached the 0.035–0.042 s where the 89 %
/// plans are (docs/planner.md).
pub fn gap_target(source: f64, front: &[f64]) -> Option<f64> {
    front
        .iter()
        .copied()
        .filter(|&c| c.is_finite() && c > 0.0 && c < source)
        .max_by(f64::total_cmp)
        .map(|next| (source * next).sqrt())
}

/// The probability that a move from a plan of cost `source` goes toward
/// cheaper: by the widths (log cost ratios) of the gaps to its neighbours
/// in `front` (the costs of the population's first-front plans; above the
/// dearest, the all-ReLU cost `relu_cost`, a plan that is always there),
/// `a / (a + b)` for a gap `a` below and `b` above, within [¼, ¾] so both
/// directions stay in play; ¾ for the front's cheapest plan (it pushes the
/// front's cheap end), ½ when nothing is known. As crowding distance
/// favours the front's sparse parts in the choice of who survives, this
/// sends the moves there: on `resnet38` after the halving, a 15-layer plan
/// at 0.047 s sat 3.2× above the next cheaper member and 1.4× below the
/// base, and half of its moves had gone back toward the base.
pub fn toward_cheaper(source: f64, front: &[f64], relu_cost: f64) -> f64 {
    let ok = |c: &f64| c.is_finite() && *c > 0.0;
    let below = front.iter().copied().filter(ok).filter(|&c| c < source).max_by(f64::total_cmp);
    let above = front
        .iter()
        .copied()
        .chain(std::iter::once(relu_cost))
        .filter(ok)
        .filter(|&c| c > source)
        .min_by(f64::total_cmp);
    match (below, above) {
        _ if !(source.is_finite() && source > 0.0) => 0.5,
        (None, _) => 0.75,
        (Some(lo), Some(hi)) => {
            let (a, b) = ((source / lo).ln(), (hi / source).ln());
            (a / (a + b)).clamp(0.25, 0.75)
        }
        (Some(_), None) => 0.5,
    }
}

/// Non-dominated sorting of `(accuracy, cost)` points (Deb et al. 2002):
/// per point its front number (0: no point dominates it; 1: only points of
/// front 0 do; …) and its crowding distance inside its front (∞ at the
/// front's two ends; else the normalised gap between its neighbours in
/// accuracy plus that in cost). A point is better than another when its
/// front number is lower, or equal with a larger crowding distance: this
/// orders a population by how much it adds to the accuracy–cost front,
/// with no threshold and no trade-off weight, and favours the sparse parts
/// of the front (diversity).
pub fn nondominated_ranks(points: &[(f64, f64)]) -> Vec<(usize, f64)> {
    let n = points.len();
    let dominates = |i: usize, j: usize| {
        let ((ai, ci), (aj, cj)) = (points[i], points[j]);
        ai >= aj && ci <= cj && (ai > aj || ci < cj)
    };
    let mut rank = vec![usize::MAX; n];
    let mut left: Vec<usize> = (0..n).collect();
    let mut r = 0;
    while !left.is_empty() {
        let front: Vec<usize> =
            left.iter().copied().filter(|&i| !left.iter().any(|&j| dominates(j, i))).collect();
        for &i in &front {
            rank[i] = r;
        }
        left.retain(|i| !front.contains(i));
        r += 1;
    }
    let mut crowd = vec![0.0f64; n];
    for f in 0..r {
        let members: Vec<usize> = (0..n).filter(|&i| rank[i] == f).collect();
        for key in [0usize, 1] {
            let v = |i: usize| if key == 0 { points[i].0 } else { points[i].1 };
            let mut m = members.clone();
            m.sort_by(|&a, &b| v(a).total_cmp(&v(b)));
            let (lo, hi) = (v(m[0]), v(m[m.len() - 1]));
            crowd[m[0]] = f64::INFINITY;
            crowd[m[m.len() - 1]] = f64::INFINITY;
            let span = (hi - lo).max(1e-12);
            for w in m.windows(3) {
                crowd[w[1]] += (v(w[2]) - v(w[0])) / span;
            }
        }
    }
    rank.into_iter().zip(crowd).collect()
}

/// A scalar that orders like [`nondominated_ranks`] (higher is better):
/// −front number, plus a crowding bonus in [0, 1).
pub fn front_fitness(rank: usize, crowding: f64) -> f64 {
    let bonus = if crowding.is_infinite() { 0.999 } else { crowding / (1.0 + crowding) * 0.998 };
    -(rank as f64) + bonus
}

/// Picks an index with probability proportional to `weights` (non-negative;
/// non-finite and negative weights count as 0); `None` when every weight
/// is 0. Proportional rather than the best, so that evidence steers the
/// search without collapsing it onto one move.
pub fn pick_weighted(weights: &[f64], rng: &mut ChaCha8Rng) -> Option<usize> {
    let w: Vec<f64> =
        weights.iter().map(|&x| if x.is_finite() && x > 0.0 { x } else { 0.0 }).collect();
    let total: f64 = w.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut r = rng.gen::<f64>() * total;
    for (i, &x) in w.iter().enumerate() {
        if x > 0.0 && r < x {
            return Some(i);
        }
        r -= x;
    }
    w.iter().rposition(|&x| x > 0.0)
}

/// Evidence about each activation layer: the validation accuracy it costs
/// to make it quadratic (first from the base, zero-shot; then updated from
/// what members saw when they made it quadratic or turned it back).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    /// Per layer: estimated accuracy loss (fraction; ≥ 0).
    pub loss: Vec<f64>,
    /// Per layer: observations so far (the zero-shot estimate counts as one).
    pub seen: Vec<u32>,
    /// Added to every estimate in the move weights: the resolution of the
    /// evidence, below which a loss is not told apart from none
    /// ([`Sensitivity::new`]). Searches saved before it existed read
    /// [`SENSITIVITY_FLOOR`].
    #[serde(default = "sensitivity_floor")]
    pub floor: f64,
}

/// The least floor of a sensitivity in move weights: a layer that seems
/// free is still not infinitely attractive (0.05 points).
pub const SENSITIVITY_FLOOR: f64 = 0.0005;

fn sensitivity_floor() -> f64 {
    SENSITIVITY_FLOOR
}

impl Sensitivity {
    /// Zero-shot estimates, one per layer, with the evidence's resolution
    /// `floor` (at least [`SENSITIVITY_FLOOR`]). The planner passes the
    /// standard error of one estimate on validation split A (±0.44 points
    /// on 5,000 images at 89 %): every observation is a difference of such
    /// estimates, so a layer measured at 0.0 and one at 0.3 points are not
    /// told apart. With a floor far below it, the zero-shot noise, not the
    /// savings, ranked the placements: on `resnet38` a last-stage layer
    /// (384 ReLUs) that happened to measure 0.0 points outweighed a
    /// first-stage in-block layer (1,176 ReLUs) at 0.8 points by 5.6 to 1.
    pub fn new(loss: Vec<f64>, floor: f64) -> Sensitivity {
        let n = loss.len();
        Sensitivity {
            loss: loss.into_iter().map(|l| l.max(0.0)).collect(),
            seen: vec![1; n],
            floor: if floor.is_finite() { floor.max(SENSITIVITY_FLOOR) } else { SENSITIVITY_FLOOR },
        }
    }

    fn floored(&self, i: usize) -> f64 {
        self.loss.get(i).copied().unwrap_or(0.0) + self.floor.max(SENSITIVITY_FLOOR)
    }

    /// Adds an observation: making `layer` quadratic lost `loss` accuracy
    /// (negative: gained). Running mean, so later evidence — after members
    /// have learned — weighs as much as the first.
    pub fn observe(&mut self, layer: usize, loss: f64) {
        if let (Some(l), Some(n)) = (self.loss.get_mut(layer), self.seen.get_mut(layer)) {
            *n += 1;
            *l += (loss.max(0.0) - *l) / *n as f64;
        }
    }

    /// Weights for making each ReLU layer quadratic: predicted saving per
    /// unit of estimated loss (0 for layers already quadratic or that save
    /// nothing).
    pub fn to_quad_weights(&self, placement: &Placement, saving: &[f64]) -> Vec<f64> {
        (0..placement.len())
            .map(|i| {
                let s = saving.get(i).copied().unwrap_or(0.0);
                if placement.is_quad(i) || s <= 0.0 {
                    0.0
                } else {
                    s / self.floored(i)
                }
            })
            .collect()
    }

    /// Weights for turning each quadratic layer back to ReLU: estimated
    /// accuracy regained per unit of added cost (`saving[i]`: what the
    /// layer saves while quadratic).
    pub fn to_relu_weights(&self, placement: &Placement, saving: &[f64]) -> Vec<f64> {
        (0..placement.len())
            .map(|i| {
                if !placement.is_quad(i) {
                    return 0.0;
                }
                let s = saving.get(i).copied().unwrap_or(0.0).max(1e-12);
                self.floored(i) / s
            })
            .collect()
    }
}

/// Exploit pairs `(replaced, source)` for a front-producing population:
/// the bottom quantile by [`front_fitness`] — members not `ready` (mid-swap)
/// excepted, and members of the first front only when every ready member
/// is on it — each copies a random member of the first front that is a
/// plan (`plan`: settled and provable) and is not replaced itself.
pub fn front_pairs(
    ranks: &[(usize, f64)],
    ready: &[bool],
    plan: &[bool],
    quantile: f64,
    rng: &mut ChaCha8Rng,
) -> Vec<(usize, usize)> {
    let n = ranks.len();
    if n < 2 || quantile <= 0.0 {
        return Vec::new();
    }
    let fit: Vec<f64> = ranks.iter().map(|&(r, c)| front_fitness(r, c)).collect();
    let is_ready = |i: usize| ready.get(i) == Some(&true);
    let top: Vec<usize> =
        (0..n).filter(|&i| ranks[i].0 == 0 && is_ready(i) && plan.get(i) == Some(&true)).collect();
    let mut order: Vec<usize> = (0..n).filter(|&i| is_ready(i)).collect();
    order.sort_by(|&a, &b| fit[a].total_cmp(&fit[b]).then(a.cmp(&b)));
    let q = ((n as f64 * quantile).round() as usize).clamp(1, n / 2);
    let off_front = order.iter().any(|&i| ranks[i].0 > 0);
    // A first-front member is replaced only when every ready member is on
    // the first front.
    let replaced: Vec<usize> =
        order.iter().take(q).copied().filter(|&lo| !(ranks[lo].0 == 0 && off_front)).collect();
    // No member replaced in this interval is a source: the pairs are
    // carried out one after another, and a source replaced before its
    // copy is made would hand on the genome and weights of another member
    // under its own evaluation.
    let sources: Vec<usize> = top.iter().copied().filter(|t| !replaced.contains(t)).collect();
    let mut out = Vec::new();
    for &lo in &replaced {
        if !sources.is_empty() {
            out.push((lo, sources[rng.gen_range(0..sources.len())]));
        }
    }
    out
}

/// A looser budget (the inverse of [`tighter_budget`]), at most 1.
pub fn looser_budget(budget: f64, floor: f64) -> f64 {
    (floor + (budget - floor).max(0.0) / 0.7).min(1.0)
}

/// Mixes evidence with chance: 80 % of the probability follows `weights`,
/// 20 % is uniform over the entries with a positive weight, so no eligible
/// move is ever ruled out by an estimate.
pub fn temper(weights: &[f64]) -> Vec<f64> {
    let ok = |x: f64| x.is_finite() && x > 0.0;
    let total: f64 = weights.iter().copied().filter(|&x| ok(x)).sum();
    let count = weights.iter().filter(|&&x| ok(x)).count();
    if count == 0 {
        return vec![0.0; weights.len()];
    }
    weights
        .iter()
        .map(|&x| if ok(x) { 0.8 * x / total + 0.2 / count as f64 } else { 0.0 })
        .collect()
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

/// The most plans a front with slack keeps ([`slack_front`]).
pub const FRONT_MAX: usize = 24;

/// A front with slack: the Pareto front of `(accuracy, cost)` points
/// ([`pareto`]) and every point that no other at most as dear beats by
/// more than `slack(accuracy)` in accuracy — at most `max` points in all:
/// the Pareto front always, then the others by how little the best point
/// at most as dear beats them. Cheapest first; exact duplicates once.
/// With a slack of 0 everywhere, the Pareto front.
pub fn slack_front(points: &[(f64, f64)], slack: &dyn Fn(f64) -> f64, max: usize) -> Vec<usize> {
    let strict = pareto(points);
    // How far the best point at most as dear is above each point.
    let gap = |i: usize| {
        let (a, c) = points[i];
        points
            .iter()
            .enumerate()
            .filter(|&(j, &(_, oc))| j != i && oc <= c)
            .map(|(_, &(oa, _))| oa - a)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let mut extra: Vec<(usize, f64)> = (0..points.len())
        .filter(|i| !strict.contains(i))
        .map(|i| (i, gap(i)))
        .filter(|&(i, g)| g < slack(points[i].0))
        .collect();
    extra.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
    let room = max.saturating_sub(strict.len());
    let mut out: Vec<usize> =
        strict.iter().copied().chain(extra.into_iter().take(room).map(|x| x.0)).collect();
    out.sort_by(|&i, &j| points[i].1.total_cmp(&points[j].1).then(i.cmp(&j)));
    out.dedup_by(|i, j| points[*i] == points[*j]);
    out
}

/// The standard error of an accuracy `a` estimated on `n` images.
pub fn accuracy_se(a: f64, n: usize) -> f64 {
    (a.clamp(0.0, 1.0) * (1.0 - a.clamp(0.0, 1.0)) / n.max(1) as f64).sqrt()
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
    /// Whether the probe's trained network is proven in range (an
    /// unprovable probe is never picked).
    #[serde(default = "yes")]
    pub provable: bool,
}

fn yes() -> bool {
    true
}

/// The greedy rule: the probe that loses the least accuracy per unit of
/// predicted saving against the current plan (a gain counts as a negative
/// loss; probes that save nothing, or whose network cannot be proven in
/// range, are skipped).
pub fn greedy_pick(probes: &[Probe], accuracy: f64, cost: f64) -> Option<usize> {
    let score = |p: &Probe| (accuracy - p.accuracy) / (cost - p.cost);
    (0..probes.len())
        .filter(|&i| cost - probes[i].cost > 0.0 && probes[i].provable)
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
    fn a_cheaper_move_aims_half_way_to_the_next_cheaper_plan() {
        let front = [0.015, 0.049, 0.064, f64::NAN];
        // From 0.049 the next cheaper plan is 0.015: the geometric midpoint.
        let t = gap_target(0.049, &front).unwrap();
        assert!((t - (0.049f64 * 0.015).sqrt()).abs() < 1e-12);
        assert!(t < 0.049 && t > 0.015);
        // From the base, the next cheaper is 0.049, not the cheapest.
        assert!((gap_target(0.064, &front).unwrap() - (0.064f64 * 0.049).sqrt()).abs() < 1e-12);
        // The cheapest plan has nothing cheaper: one layer.
        assert_eq!(gap_target(0.015, &front), None);
        assert_eq!(gap_target(0.02, &[]), None);
    }

    #[test]
    fn moves_head_for_the_wider_gap() {
        let front = [0.015, 0.047];
        // 3.1x below, 1.35x above (the all-ReLU cost): mostly cheaper.
        assert_eq!(toward_cheaper(0.047, &front, 0.0636), 0.75);
        // Equal gaps: either way.
        let p = toward_cheaper(0.02, &[0.01, 0.02, 0.04], 1.0);
        assert!((p - 0.5).abs() < 1e-12, "{p}");
        // A narrow gap below, a wide one above: mostly toward accuracy.
        let p = toward_cheaper(0.04, &[0.035, 0.04], 0.2);
        assert_eq!(p, 0.25);
        let p = toward_cheaper(0.04, &[0.03, 0.04, 0.05], 0.2);
        assert!(p > 0.5 && p < 0.75, "{p}");
        // The cheapest plan pushes the cheap end; nothing known: even.
        assert_eq!(toward_cheaper(0.015, &front, 0.0636), 0.75);
        assert_eq!(toward_cheaper(f64::NAN, &front, 0.0636), 0.5);
        assert_eq!(toward_cheaper(0.0636, &front, 0.0636), 0.5);
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
    fn a_front_with_slack_keeps_what_the_estimate_cannot_tell_apart() {
        // (accuracy, cost): 0 cheap and good; 1 dearer and 0.3 points
        // worse; 2 dearer still and 2 points worse; 3 the dearest and best.
        let pts = [(0.880, 1.0), (0.877, 2.0), (0.860, 3.0), (0.885, 4.0)];
        assert_eq!(pareto(&pts), vec![0, 3]);
        let half = |_: f64| 0.005;
        assert_eq!(slack_front(&pts, &half, 24), vec![0, 1, 3]);
        // No slack: the Pareto front.
        assert_eq!(slack_front(&pts, &|_| 0.0, 24), pareto(&pts));
        // A cap keeps the Pareto front first, then the closest.
        let wide = |_: f64| 0.05;
        assert_eq!(slack_front(&pts, &wide, 3), vec![0, 1, 3]);
        assert_eq!(slack_front(&pts, &wide, 24), vec![0, 1, 2, 3]);
        assert_eq!(slack_front(&pts, &wide, 1), vec![0, 3]);
        // Duplicates once.
        let dup = [(0.88, 1.0), (0.88, 1.0), (0.879, 2.0)];
        assert_eq!(slack_front(&dup, &half, 24), vec![0, 2]);
        // One standard error at 88 % on 5,000 images: 0.46 points.
        assert!((accuracy_se(0.88, 5000) - 0.004596).abs() < 1e-5);
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
            Probe { layer: 0, accuracy: 0.88, cost: 0.5, provable: true }, // loses 2 pts for 0.5
            Probe { layer: 1, accuracy: 0.895, cost: 0.9, provable: true }, // loses 0.5 pt for 0.1
            Probe { layer: 2, accuracy: 0.90, cost: 0.95, provable: true }, // loses nothing
            Probe { layer: 3, accuracy: 0.95, cost: 1.0, provable: true }, // saves nothing
        ];
        assert_eq!(greedy_pick(&probes, 0.90, 1.0), Some(2));
        // An unprovable probe is never picked.
        let mut out = probes.clone();
        out[2].provable = false;
        assert_eq!(greedy_pick(&out, 0.90, 1.0), Some(0));
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

    #[test]
    fn nondominated_sorting_ranks_fronts_and_prefers_sparse_points() {
        // (accuracy, cost): 0, 1, 2 on the first front; 3 dominated by 1;
        // 4 dominated by 3 too.
        let pts = [(0.90, 1.0), (0.85, 0.5), (0.80, 0.2), (0.84, 0.6), (0.83, 0.7)];
        let r = nondominated_ranks(&pts);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 0, 0, 1, 2]);
        // Ends of a front are infinitely uncrowded; the middle finite.
        assert!(r[0].1.is_infinite() && r[2].1.is_infinite() && r[1].1.is_finite());
        assert!(front_fitness(r[1].0, r[1].1) > front_fitness(r[3].0, r[3].1));
        assert!(front_fitness(r[0].0, r[0].1) > front_fitness(r[1].0, r[1].1));
        // Fitness stays inside its front's band.
        assert!(front_fitness(0, f64::INFINITY) < 1.0 && front_fitness(1, 1e9) < 0.0);
    }

    #[test]
    fn front_pairs_replace_dominated_members_from_the_first_front() {
        let pts = [(0.90, 1.0), (0.85, 0.5), (0.80, 0.2), (0.84, 0.6), (0.83, 0.7), (0.70, 0.9)];
        let ranks = nondominated_ranks(&pts);
        let ready = [true; 6];
        let pairs = front_pairs(&ranks, &ready, &ready, 0.25, &mut rng());
        assert_eq!(pairs.len(), 2);
        for (lo, hi) in &pairs {
            assert!(ranks[*lo].0 > 0, "{pairs:?}");
            assert_eq!(ranks[*hi].0, 0);
        }
        // The worst two (ranks 2 and the (0.70, 0.9) member) go first.
        let lows: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        assert!(lows.contains(&5) && lows.contains(&4), "{lows:?}");
        // Mid-swap members are neither replaced nor copied.
        let mut ready = [true; 6];
        ready[5] = false;
        ready[0] = false;
        let pairs = front_pairs(&ranks, &ready, &ready, 0.25, &mut rng());
        assert!(pairs.iter().all(|&(lo, hi)| lo != 5 && hi != 0), "{pairs:?}");
        // A member that is no plan (unprovable) is never copied.
        let mut plan = [true; 6];
        plan[1] = false;
        let pairs = front_pairs(&ranks, &[true; 6], &plan, 0.25, &mut rng());
        assert!(pairs.iter().all(|&(_, hi)| hi != 1), "{pairs:?}");
        // Everyone on the first front: the most crowded is replaced by another.
        let all = [(0.9, 1.0), (0.85, 0.5), (0.8, 0.2), (0.86, 0.7)];
        let ranks = nondominated_ranks(&all);
        let pairs = front_pairs(&ranks, &[true; 4], &[true; 4], 0.25, &mut rng());
        assert_eq!(pairs.len(), 1);
        assert!(pairs[0].0 != pairs[0].1);
        assert!(ranks[pairs[0].0].1.is_finite());
        // Six on the first front, two replaced: neither is the other's
        // source (they are copied one after the other, so a replaced
        // source would hand on another member's weights).
        let six = [(0.90, 1.0), (0.89, 0.8), (0.88, 0.6), (0.87, 0.4), (0.86, 0.3), (0.80, 0.1)];
        let ranks = nondominated_ranks(&six);
        for seed in 0..50 {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            let pairs = front_pairs(&ranks, &[true; 6], &[true; 6], 0.25, &mut r);
            assert_eq!(pairs.len(), 2);
            let lows: Vec<usize> = pairs.iter().map(|p| p.0).collect();
            assert!(pairs.iter().all(|(_, hi)| !lows.contains(hi)), "{pairs:?}");
        }
    }

    #[test]
    fn more_quadratic_layers_start_at_a_lower_learning_rate() {
        let quads = [1, 8, 15, 23, 30, 37];
        let mut r = rng();
        for _ in 0..20 {
            let lr = starting_lrs(&quads, &mut r);
            assert!(lr.iter().all(|&x| (START_LR.0..=START_LR.1).contains(&x)), "{lr:?}");
            // Strictly falling with the count: one draw per stratum.
            assert!(lr.windows(2).all(|w| w[0] > w[1]), "{lr:?}");
            // The all-quadratic member in the lowest sixth (log scale).
            assert!(lr[5] <= START_LR.0 * (START_LR.1 / START_LR.0).powf(1.0 / 6.0));
        }
        // Ties (per channel every member starts all-ReLU) go by index.
        let lr = starting_lrs(&[0, 0, 0], &mut r);
        assert!(lr[0] < lr[1] && lr[1] < lr[2], "{lr:?}");
    }

    #[test]
    fn weighted_picks_follow_evidence_but_rule_nothing_out() {
        let mut r = rng();
        assert_eq!(pick_weighted(&[0.0, 0.0], &mut r), None);
        assert_eq!(pick_weighted(&[0.0, 3.0, f64::NAN], &mut r), Some(1));
        let t = temper(&[100.0, 1.0, 0.0]);
        assert_eq!(t[2], 0.0);
        assert!(t[1] >= 0.1 && t[0] > t[1]);
        assert!((t.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let mut counts = [0usize; 3];
        for _ in 0..2000 {
            counts[pick_weighted(&t, &mut r).unwrap_or(2)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > 100 && counts[2] == 0, "{counts:?}");
    }

    #[test]
    fn differences_below_the_evidence_floor_do_not_outweigh_savings() {
        // `resnet38`: a last-stage layer (384 ReLUs) measured free and a
        // first-stage one (1,176 ReLUs) at 0.8 points. With the resolution
        // of a split-A estimate (0.44 points) the saving decides; with
        // none the noise does (5.6:1).
        let p: Placement = "RR".parse().unwrap();
        let saving = [384.0, 1176.0];
        let se = accuracy_se(0.89, 5000);
        let w = Sensitivity::new(vec![0.0, 0.008], se).to_quad_weights(&p, &saving);
        assert!(w[1] > w[0], "{w:?}");
        let w = Sensitivity::new(vec![0.0, 0.008], 0.0).to_quad_weights(&p, &saving);
        assert!(w[0] > 5.0 * w[1], "{w:?}");
        // A floor that is not a number falls back on the least floor.
        assert_eq!(Sensitivity::new(vec![0.0], f64::NAN).floor, SENSITIVITY_FLOOR);
        // A search saved before the floor existed reads the least floor.
        let old: Sensitivity = serde_json::from_str(r#"{"loss":[0.0],"seen":[1]}"#).unwrap();
        assert_eq!(old.floor, SENSITIVITY_FLOOR);
    }

    #[test]
    fn sensitivity_weighs_saving_against_loss_and_learns() {
        let mut s = Sensitivity::new(vec![0.05, 0.0, -0.01], 0.0);
        assert_eq!(s.loss[2], 0.0);
        let p: Placement = "RRQ".parse().unwrap();
        let saving = [1.0, 1.0, 1.0];
        let w = s.to_quad_weights(&p, &saving);
        // The free layer is the most attractive; the quadratic one is not a candidate.
        assert!(w[1] > w[0] && w[2] == 0.0, "{w:?}");
        let back = s.to_relu_weights(&p, &saving);
        assert!(back[2] > 0.0 && back[0] == 0.0 && back[1] == 0.0);
        // Evidence moves the estimate: a running mean.
        s.observe(1, 0.02);
        assert!((s.loss[1] - 0.01).abs() < 1e-12);
        s.observe(1, -0.5);
        assert!((s.loss[1] - 0.02 / 3.0).abs() < 1e-12);
        s.observe(9, 1.0);
        assert_eq!(s.loss.len(), 3);
        assert!((looser_budget(tighter_budget(0.6, 0.2), 0.2) - 0.6).abs() < 1e-12);
        assert_eq!(looser_budget(0.95, 0.2), 1.0);
    }
}
