//! Our search: population-based training (Jaderberg et al. 2017) over
//! placements and hyperparameters, producing a front of plans in one run.
//!
//! No threshold shapes the search: one run serves every threshold. At every
//! ready interval each member trains, is evaluated on validation split A
//! and priced by the cost model; the population is ordered by
//! non-dominated sorting in (accuracy, cost) with crowding distance
//! ([`crate::policy::nondominated_ranks`], as in NSGA-II and MO-PBT), so a
//! member is worth what it adds to the front, and the sparse parts of the
//! front are kept. The bottom quantile — members mid-swap excepted, they
//! cannot be judged yet — copies weights and genome from a member of the
//! first front that is not replaced itself (exploit), perturbs the
//! hyperparameters and moves the placement (explore): toward cheaper or
//! toward accuracy (one quadratic layer turns back to ReLU), heading for
//! the wider of the two gaps around the member copied on the population's
//! front ([`crate::policy::toward_cheaper`]: by the gaps' log cost ratios,
//! within ¼–¾; ¾ toward cheaper from the front's cheapest plan). A move
//! toward cheaper aims half-way (geometrically) to the next cheaper plan
//! of the population's front ([`crate::policy::gap_target`]): ReLU layers
//! start swapping to quadratic one by one until the predicted cost gets
//! there (`cheaper_move`) — one layer when the neighbour is one layer
//! away, several across a gap — in the first half of the member's run
//! ([`GAP_MOVES_UNTIL`]; one layer after it). Every swap ends at most
//! half-way through what is left of the run.
//!
//! Moves follow evidence ([`crate::policy::Sensitivity`]): each layer's
//! accuracy cost of being quadratic, first measured zero-shot on the base
//! (the layer made quadratic alone, no training), then updated from what
//! members saw after each move (a move of several layers shares what it
//! cost among them equally); and each layer's saving under the cost
//! model, given the rest of the placement. A layer is made quadratic with
//! probability ∝ saving / loss and turned back with probability ∝ loss /
//! saving — every loss counted at least at the evidence's resolution, one
//! split-A estimate's standard error ([`Sensitivity::new`]) — tempered so
//! that every eligible move keeps some chance
//! ([`crate::policy::temper`]). Starting placements spread from one to all
//! quadratic layers: even members take the placement the evidence ranks
//! best for their count, odd members draw theirs by the same weights, and
//! each blends its quadratic layers in over a span that grows with their
//! share, ending before the halving ([`starting_span`]), at a starting
//! learning rate that falls with their count
//! ([`crate::policy::starting_lrs`]). A
//! placement equal to another member's is not taken (diversity). Every
//! settled evaluation is checked against the protocol's range as the plan
//! it would be ([`crate::search::Evaluation::provable`]): only plans the
//! engine can run take part in the sorting; an unprovable member sits
//! behind them and is replaced first, and the move that led to it counts
//! as a 5-point loss for its layer ([`UNPROVABLE_LOSS`]).
//!
//! Per channel (`--granularity channel`) a member's genome holds a cost
//! budget instead of a placement: members start all-ReLU with budgets
//! spread from just above the all-quadratic cost to half-way
//! ([`crate::policy::channel_budget`]) and learn their channel masks under
//! it ([`delphi_train::config::Gates`]); a member mid-learning cannot be
//! judged yet. Explore perturbs the hyperparameters and tightens or loosens
//! the budget (one or the other at random): the mask learning resumes from
//! the copied mask.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use delphi_net::Placement;
use delphi_train::train::Trainer;

use crate::config::Granularity;
use crate::error::Result;
use crate::policy::{
    accuracy_se, channel_budget, front_fitness, front_pairs, gap_target, looser_budget,
    nondominated_ranks, pick_weighted, spread, starting_lrs, temper, tighter_budget,
    toward_cheaper, Genome, Sensitivity,
};
use crate::search::{Evaluation, Progress, Search};

/// Validation images of split A the zero-shot sensitivities are measured on.
pub const SENSITIVITY_IMAGES: usize = 1000;

/// A move whose outcome has not been seen yet: made at `interval`, on
/// `layer`, toward quadratic or back to ReLU, from a source scoring
/// `before`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The layer moved.
    pub layer: usize,
    /// Made quadratic (`true`) or turned back to ReLU.
    pub to_quad: bool,
    /// Validation accuracy of the member copied.
    pub before: f64,
    /// The other layers made quadratic in the same move (a move toward
    /// cheaper may make several at once, `cheaper_move`); the loss seen
    /// is shared among them equally.
    #[serde(default)]
    pub with: Vec<usize>,
}

impl Pending {
    /// Every layer of the move.
    pub fn layers(&self) -> Vec<usize> {
        std::iter::once(self.layer).chain(self.with.iter().copied()).collect()
    }
}

/// What our search saves besides the genomes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PbtMemory {
    /// Per-layer evidence.
    pub sensitivity: Sensitivity,
    /// Per member, its last move until it is seen settled.
    pub pending: Vec<Option<Pending>>,
}

/// A placement with `quads` quadratic layers drawn one by one with
/// probability ∝ saving / loss (tempered).
fn informed_placement(
    layers: usize,
    quads: usize,
    sens: &Sensitivity,
    saving: &[f64],
    rng: &mut ChaCha8Rng,
) -> Placement {
    let mut p = Placement::all_relu(layers);
    for _ in 0..quads.min(layers) {
        match pick_weighted(&temper(&sens.to_quad_weights(&p, saving)), rng) {
            Some(i) => p.set(i, true),
            None => {
                // Nothing saves: any ReLU layer.
                let relus = p.relu_layers();
                if relus.is_empty() {
                    break;
                }
                p.set(relus[rng.gen_range(0..relus.len())], true);
            }
        }
    }
    p
}

/// The placement with `quads` quadratic layers the evidence favours most:
/// layers made quadratic one at a time, each the ReLU layer of the largest
/// saving per unit of estimated loss given the layers already chosen (the
/// savings priced again after each choice). The placements for successive
/// counts are nested, like the greedy rule's path, but drawn from the
/// evidence alone, with no training.
fn ranked_placement(
    layers: usize,
    quads: usize,
    sens: &Sensitivity,
    savings: impl Fn(&Placement) -> Result<Vec<f64>>,
) -> Result<Placement> {
    let mut p = Placement::all_relu(layers);
    for _ in 0..quads.min(layers) {
        let w = sens.to_quad_weights(&p, &savings(&p)?);
        let best = (0..layers)
            .filter(|&i| !p.is_quad(i))
            .max_by(|&a, &b| w[a].total_cmp(&w[b]).then(b.cmp(&a)));
        match best {
            Some(i) => p.set(i, true),
            None => break,
        }
    }
    Ok(p)
}

/// The starting placements: counts spread from one to all quadratic
/// layers; even members take the evidence's ranked placement for their
/// count ([`ranked_placement`]), odd members draw theirs by the same
/// evidence, tempered ([`informed_placement`]: one draw in five of each
/// layer is uniform, so what the evidence does not favour can still be
/// tried), distinct where a few redraws allow.
fn starting_placements(
    s: &mut Search,
    sens: &Sensitivity,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Placement>> {
    let (n, layers) = (s.c.population, s.layers);
    let saving = s.layer_savings(&Placement::all_relu(layers))?;
    let mut out: Vec<Placement> = Vec::new();
    for k in 0..n {
        let quads = spread(k, n, layers);
        let mut p = ranked_placement(layers, quads, sens, |p| s.layer_savings(p))?;
        if k % 2 == 1 || out.contains(&p) {
            for _ in 0..8 {
                p = informed_placement(layers, quads, sens, &saving, rng);
                if !out.contains(&p) {
                    break;
                }
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// How far into a member's run (a fraction) a move toward cheaper may
/// make several layers quadratic at once ([`gap_target`]); later, one
/// layer. Like the starting swaps, which all end in the first half, a
/// member that makes many layers quadratic needs steps to recover: a
/// `resnet38` member that made 14 more layers quadratic at interval 10 of
/// 12 ended out of the protocol's range.
pub const GAP_MOVES_UNTIL: f32 = 0.5;

/// What a move that made a layer quadratic is taken to have cost when the
/// member's trained network then cannot be proven in range: 5 points, so
/// the evidence steers later moves away from that layer.
pub const UNPROVABLE_LOSS: f64 = 0.05;

/// How our search spends its budget over intervals: the whole population
/// until `halve` (if any), then `survivors` members until `intervals`;
/// every member is made for `member_steps` (a survivor's whole run, so its
/// learning-rate schedule ends with the search).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The interval after whose evaluation the population is halved.
    pub halve: Option<usize>,
    /// Members kept at the halving.
    pub survivors: usize,
    /// Intervals in all.
    pub intervals: usize,
    /// Steps a member that trains to the end takes.
    pub member_steps: usize,
}

impl Schedule {
    /// The schedule of a search of `population` members, `budget` steps and
    /// `interval_steps` steps per interval. Halving needs at least 4
    /// members (2 survive) and an interval on each side; per-channel
    /// members are never halved (a member's mask is still being learned at
    /// mid-run, so a retired one would leave no plan).
    pub fn of(
        population: usize,
        budget: usize,
        interval_steps: usize,
        halve_at: Option<f64>,
        channel: bool,
    ) -> Schedule {
        let is = interval_steps.max(1);
        let steps = (budget / population.max(1)).max(1);
        let whole = steps.div_ceil(is);
        let at = match halve_at {
            Some(f) if !channel && population >= 4 && f < 1.0 && whole >= 2 => {
                ((whole as f64 * f).round() as usize).clamp(1, whole - 1)
            }
            _ => 0,
        };
        if at == 0 || at >= whole {
            return Schedule {
                halve: None,
                survivors: population,
                intervals: whole,
                member_steps: steps,
            };
        }
        let survivors = population.div_ceil(2);
        let rest = budget.saturating_sub(population * at * is);
        // The survivors share the rest exactly: their runs end there (the
        // last interval is shorter), so the search spends its budget and no
        // more (less by under one step per survivor).
        let per = (rest / survivors).max(1);
        let intervals = at + per.div_ceil(is);
        Schedule { halve: Some(at), survivors, intervals, member_steps: at * is + per }
    }
}

/// What a starting member's swap span (a fraction of its whole run) is
/// scaled by: with a halving, the starting swaps end within the steps
/// before it, so every starting member has settled (is the plan it will
/// be) when the halving judges it — a member still mid-swap cannot be
/// judged, and a halving among unjudged members keeps them by chance; a
/// resnet38 run so kept an all-quadratic member that had diverged and
/// spent a third of the rest of the budget on it. Without a halving, 1.
pub fn starting_swap_scale(plan: &Schedule, interval_steps: usize) -> f32 {
    match plan.halve {
        Some(h) if plan.member_steps > 0 => {
            ((h * interval_steps) as f32 / plan.member_steps as f32).min(1.0)
        }
        _ => 1.0,
    }
}

/// A starting member's swap span (a fraction of its whole run): the
/// genome's span, or — when more is made quadratic at once — the share of
/// the layers made quadratic times 0.9, whichever is longer; scaled by
/// [`starting_swap_scale`], so it still ends before the halving, with a
/// tenth of the steps before it left to recover at least: a network that
/// changes many activations at once gets more steps to follow them. On
/// its own this did not save `resnet38`'s all-quadratic starting member
/// (37 layers over 33–96 steps, then over 0.9 of the steps before the
/// halving: it fell to chance in all three seeds either way); the
/// starting learning rate did ([`crate::policy::starting_lrs`]). The two
/// were benchmarked together.
pub fn starting_span(genome_span: f32, quads: usize, layers: usize, scale: f32) -> f32 {
    let share = quads as f32 / layers.max(1) as f32;
    (genome_span.max(0.9 * share) * scale).min(0.9 * scale)
}

/// The span of a swap an explore starts at `now` (fractions of the run):
/// the genome's, but ending at most half-way through what is left, so the
/// member has at least as long to recover as the swap took and is judged
/// settled before the search ends.
pub fn explore_span(span: f32, now: f32) -> f32 {
    span.min((1.0 - now).max(0.0) / 2.0)
}

/// The members kept at the halving: the best `keep` by front order
/// (`fitness`, higher first; a front's ends carry the largest crowding
/// bonus, so the cheapest and the most accurate plan of the first front
/// stay), in their old order.
pub fn survivors(fitness: &[f64], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..fitness.len()).collect();
    order.sort_by(|&a, &b| fitness[b].total_cmp(&fitness[a]).then(a.cmp(&b)));
    order.truncate(keep);
    order.sort_unstable();
    order
}

/// Halves a population after `interval`: keeps [`survivors`] by
/// `fitness`, says so in the lineage log, and returns the members kept
/// (their old indices).
pub(crate) fn halve(
    s: &mut Search,
    interval: usize,
    fitness: &[f64],
    keep: usize,
    members: &mut Vec<Trainer>,
    genomes: &mut Vec<Genome>,
) -> Result<Vec<usize>> {
    let n = members.len();
    let kept = survivors(fitness, keep);
    let retired: Vec<usize> = (0..n).filter(|k| !kept.contains(k)).collect();
    s.lineage(serde_json::json!({
        "interval": interval, "halved": {"kept": &kept, "retired": &retired},
    }))?;
    s.say(&format!(
        "interval {interval}: half the budget spent; members {kept:?} train on, {retired:?} retire"
    ));
    let mut old: Vec<Option<Trainer>> = members.drain(..).map(Some).collect();
    *members = kept.iter().filter_map(|&k| old[k].take()).collect();
    *genomes = kept.iter().map(|&k| genomes[k].clone()).collect();
    Ok(kept)
}

/// Runs (or resumes) the population-based search.
pub fn run(s: &mut Search) -> Result<()> {
    let c = s.c.clone();
    let layers = s.layers;
    let relu_obj = c.objective.of(&s.relu_cost);
    let channel = c.granularity == Granularity::Channel;
    let plan = Schedule::of(c.population, s.budget, s.interval_steps, c.halve_at, channel);
    let (steps, intervals) = (plan.member_steps, plan.intervals);
    let (mut interval, mut genomes, mut members, mut mem) = match &s.st.progress {
        Progress::Pbt { interval, genomes, memory } => {
            (*interval, genomes.clone(), s.load_members(genomes.len())?, memory.clone())
        }
        _ => {
            let n = c.population;
            let mut rng = ChaCha8Rng::seed_from_u64(c.search_seed() ^ 0x9e37_79b9_7f4a_7c15);
            let mut mem = PbtMemory { sensitivity: Sensitivity::default(), pending: vec![None; n] };
            let placements = if channel {
                vec![Placement::all_relu(layers); n]
            } else {
                s.say("measuring each layer's zero-shot sensitivity on the base");
                let loss = s.zero_shot_sensitivity(SENSITIVITY_IMAGES)?;
                s.lineage(serde_json::json!({"zero_shot_sensitivity": &loss}))?;
                // The evidence's resolution: one split-A estimate's
                // standard error (see `Sensitivity::new`).
                let floor = accuracy_se(s.base_valid_accuracy, s.data.valid.len());
                mem.sensitivity = Sensitivity::new(loss, floor);
                starting_placements(s, &mem.sensitivity, &mut rng)?
            };
            let mut genomes = Vec::new();
            let mut members = Vec::new();
            let first = starting_swap_scale(&plan, s.interval_steps);
            let quads: Vec<usize> = placements.iter().map(Placement::quad_count).collect();
            let lrs = starting_lrs(&quads, &mut rng);
            for (k, p) in placements.into_iter().enumerate() {
                let mut g = Genome::random(layers, 0, &mut rng);
                g.placement = p;
                g.lr = lrs[k];
                if channel {
                    // All ReLU; budgets spread above the all-quadratic floor.
                    g.budget = channel_budget(k, n, s.quad_floor);
                }
                let span = starting_span(g.swap_span, g.placement.quad_count(), layers, first);
                let swap = Genome { swap_span: span, ..g.clone() };
                members.push(s.member(&swap, k as u64, steps)?);
                genomes.push(g);
            }
            (0, genomes, members, mem)
        }
    };
    mem.pending.resize(genomes.len(), None);
    while interval < intervals {
        let n = genomes.len();
        let Some((evals, mut rng)) =
            next_interval(s, &mut members, &genomes, &mut interval, &|_, _, _| 0.0)?
        else {
            break;
        };
        // Only plans take part in the sorting: a member mid-swap (its
        // accuracy still falling, its cost already the target's) or one
        // whose trained network cannot be proven in range sits behind every
        // plan — never copied, replaced first once settled.
        let behind = (-1.0, 1e300);
        let pts: Vec<(f64, f64)> = evals
            .iter()
            .map(|e| if e.is_plan() { (e.valid_accuracy, e.cost) } else { behind })
            .collect();
        let ranks = nondominated_ranks(&pts);
        let fitness: Vec<f64> = ranks.iter().map(|&(r, d)| front_fitness(r, d)).collect();
        for (e, f) in evals.iter().zip(&fitness) {
            if let Some(x) = s.st.evaluations.get_mut(e.index) {
                x.fitness = *f;
            }
        }
        let ready: Vec<bool> = evals.iter().map(|e| e.settled).collect();
        let plans: Vec<bool> = evals.iter().map(|e| e.is_plan()).collect();
        // What the last moves did, now that their members have settled.
        for (k, e) in evals.iter().enumerate() {
            if let (true, Some(m)) = (e.settled, mem.pending[k].take()) {
                let loss = match (m.to_quad, e.provable) {
                    (true, Some(false)) => UNPROVABLE_LOSS,
                    (true, _) => m.before - e.valid_accuracy,
                    (false, _) => e.valid_accuracy - m.before,
                };
                let layers = m.layers();
                for l in &layers {
                    mem.sensitivity.observe(*l, loss / layers.len() as f64);
                }
            }
        }
        if plan.halve == Some(interval) && n > plan.survivors {
            // Half the budget spent: the better half trains on with the
            // other half's steps.
            let keep = halve(s, interval, &fitness, plan.survivors, &mut members, &mut genomes)?;
            mem.pending = keep.iter().map(|&k| mem.pending[k].clone()).collect();
        } else if interval < intervals {
            for (lo, hi) in front_pairs(&ranks, &ready, &plans, c.quantile, &mut rng) {
                let (tr, source) = pair(&mut members, lo, hi);
                tr.copy_from(source);
                let mut g = genomes[hi].clone();
                g.perturb(&mut rng);
                tr.set_hyperparameters(g.lr, g.momentum, g.weight_decay);
                tr.set_distill_weight(g.distill_weight);
                let mut moved = None;
                if channel {
                    g.budget = if rng.gen_bool(0.5) {
                        tighter_budget(g.budget, s.quad_floor)
                    } else {
                        looser_budget(g.budget, s.quad_floor)
                    };
                    tr.set_gate_budget(g.budget * relu_obj)?;
                } else {
                    let others: Vec<Placement> = (0..n)
                        .filter(|&j| j != lo && j != hi)
                        .map(|j| genomes[j].placement.clone())
                        .chain(std::iter::once(genomes[hi].placement.clone()))
                        .collect();
                    // The move heads for the wider of the two gaps
                    // around the member copied on the population's
                    // front, and toward cheaper it aims half-way across.
                    let front: Vec<f64> = (0..n)
                        .filter(|&j| ranks[j].0 == 0 && plans[j])
                        .map(|j| evals[j].cost)
                        .collect();
                    let p_cheaper = toward_cheaper(evals[hi].cost, &front, relu_obj);
                    let now = tr.progress(&s.data.train);
                    let target = if now <= GAP_MOVES_UNTIL {
                        gap_target(evals[hi].cost, &front)
                    } else {
                        None
                    };
                    moved = explore_placement(
                        s,
                        &mut g,
                        &mem.sensitivity,
                        &others,
                        (p_cheaper, target),
                        &mut rng,
                    )?;
                    mem.pending[lo] = None;
                    if let Some((layers, to_quad)) = &moved {
                        let now = tr.progress(&s.data.train);
                        for &i in layers {
                            if *to_quad {
                                tr.swap_to_quad(i, now, explore_span(g.swap_span, now));
                            } else {
                                tr.revert_to_relu(i);
                            }
                        }
                        if let Some((&layer, with)) = layers.split_first() {
                            mem.pending[lo] = Some(Pending {
                                layer,
                                to_quad: *to_quad,
                                before: evals[hi].valid_accuracy,
                                with: with.to_vec(),
                            });
                        }
                    }
                }
                s.lineage(serde_json::json!({
                    "interval": interval,
                    "exploit": {"member": lo, "copies": hi,
                                "front": ranks[lo].0, "source_front": ranks[hi].0},
                    "explore": {"genome": &g,
                                "swapped_layer": moved.as_ref().filter(|m| m.1).map(|m| m.0[0]),
                                "swapped_layers": moved.as_ref().filter(|m| m.1).map(|m| &m.0),
                                "reverted_layer": moved.as_ref().filter(|m| !m.1).map(|m| m.0[0]),
                                "budget": g.budget},
                }))?;
                genomes[lo] = g;
            }
        }
        s.st.progress = Progress::Pbt { interval, genomes: genomes.clone(), memory: mem.clone() };
        let refs: Vec<&_> = members.iter().collect();
        s.save(&refs)?;
        // After the state that no longer points at them is saved.
        s.retire_members(members.len(), n)?;
        let first = ranks.iter().filter(|r| r.0 == 0).count();
        s.say(&format!(
            "interval {interval}/{intervals}: {first} of {n} members on the population's front, \
             {} plans on the run's front",
            s.st.front.len()
        ));
    }
    Ok(())
}

/// Moves `g`'s placement, informed by `sens` and the cost model: toward
/// cheaper (with probability `p_cheaper`) by [`cheaper_move`] aiming at
/// `target`, or toward accuracy by one layer (the other direction when the
/// first has no move; forced at either end), never onto a placement in
/// `others`. Returns the layers moved and whether they became quadratic;
/// `None` when no move is possible.
fn explore_placement(
    s: &mut Search,
    g: &mut Genome,
    sens: &Sensitivity,
    others: &[Placement],
    (p_cheaper, target): (f64, Option<f64>),
    rng: &mut ChaCha8Rng,
) -> Result<Option<(Vec<usize>, bool)>> {
    let p = g.placement.clone();
    let quads = p.quad_count();
    let mut directions = if quads == 0 {
        vec![true]
    } else if quads == p.len() {
        vec![false]
    } else if rng.gen_bool(p_cheaper.clamp(0.0, 1.0)) {
        vec![true, false]
    } else {
        vec![false, true]
    };
    for to_quad in directions.drain(..) {
        if to_quad {
            let objective = s.c.objective;
            let moved = cheaper_move(
                &p,
                sens,
                |q| s.layer_savings(q),
                |q| Ok(objective.of(&s.pricing.price(q)?)),
                target,
                others,
                rng,
            )?;
            if let Some((q, layers)) = moved {
                g.placement = q;
                return Ok(Some((layers, true)));
            }
            continue;
        }
        let saving = s.layer_savings(&p)?;
        let mut w = temper(&sens.to_relu_weights(&p, &saving));
        while let Some(i) = pick_weighted(&w, rng) {
            w[i] = 0.0;
            let mut q = p.clone();
            q.set(i, false);
            if others.contains(&q) {
                continue;
            }
            g.placement = q;
            return Ok(Some((vec![i], false)));
        }
    }
    Ok(None)
}

/// A move toward cheaper from `p`: ReLU layers made quadratic one at a
/// time, each drawn with probability ∝ saving / loss (tempered; the
/// savings priced again after each), until the placement's `cost` is at
/// most `target` — one layer when `target` is `None` or the first reaches
/// it — never ending on a placement in `others`. Returns the placement and
/// the layers in the order drawn; `None` when no layer can move. Several
/// layers at once let a member land in a gap of the front that one-layer
/// moves would take many intervals to cross ([`gap_target`]).
fn cheaper_move(
    p: &Placement,
    sens: &Sensitivity,
    savings: impl Fn(&Placement) -> Result<Vec<f64>>,
    cost: impl Fn(&Placement) -> Result<f64>,
    target: Option<f64>,
    others: &[Placement],
    rng: &mut ChaCha8Rng,
) -> Result<Option<(Placement, Vec<usize>)>> {
    let mut q = p.clone();
    let mut layers = Vec::new();
    loop {
        let mut w = temper(&sens.to_quad_weights(&q, &savings(&q)?));
        let mut took = None;
        while let Some(i) = pick_weighted(&w, rng) {
            w[i] = 0.0;
            let mut r = q.clone();
            r.set(i, true);
            let done = match target {
                None => true,
                Some(t) => cost(&r)? <= t,
            };
            if done && others.contains(&r) {
                continue;
            }
            took = Some((i, r, done));
            break;
        }
        match took {
            // Every layer quadratic, or every last step lands on another
            // member: stop where the move got to, if anywhere new.
            None => {
                let new = !layers.is_empty() && !others.contains(&q);
                return Ok(new.then_some((q, layers)));
            }
            Some((i, r, done)) => {
                layers.push(i);
                q = r;
                if done {
                    return Ok(Some((q, layers)));
                }
            }
        }
    }
}

/// The next interval of a population (stage `interval N`): `None` when
/// the wall-time budget is spent; otherwise advances `interval`, trains
/// and evaluates every member, and returns the evaluations with the
/// interval's generator — one per interval, seeded by the search seed, so
/// a resumed run draws what an uninterrupted one would have.
pub(crate) fn next_interval(
    s: &mut Search,
    members: &mut [Trainer],
    genomes: &[Genome],
    interval: &mut usize,
    fitness: &dyn Fn(f64, f64, usize) -> f64,
) -> Result<Option<(Vec<Evaluation>, ChaCha8Rng)>> {
    if s.out_of_time() {
        s.say("wall-time budget spent; stopping");
        return Ok(None);
    }
    *interval += 1;
    let i = *interval;
    let rng = ChaCha8Rng::seed_from_u64(s.c.search_seed() ^ ((i as u64) << 24));
    let steps = s.interval_steps;
    let evals = s.run_members(members, genomes, (i, steps), &format!("interval {i}"), fitness)?;
    Ok(Some((evals, rng)))
}

/// `(&mut v[lo], &v[hi])` for `lo ≠ hi`.
pub(crate) fn pair<T>(v: &mut [T], lo: usize, hi: usize) -> (&mut T, &T) {
    if lo < hi {
        let (a, b) = v.split_at_mut(hi);
        (&mut a[lo], &b[0])
    } else {
        let (a, b) = v.split_at_mut(lo);
        (&mut b[0], &a[hi])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cheaper_move_goes_as_far_as_its_target_and_no_further() {
        // Each ReLU layer i costs w[i]; making it quadratic saves w[i].
        let w = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0];
        let cost = |q: &Placement| Ok((0..6).filter(|&i| !q.is_quad(i)).map(|i| w[i]).sum());
        let savings =
            |q: &Placement| Ok((0..6).map(|i| if q.is_quad(i) { 0.0 } else { w[i] }).collect());
        let sens = Sensitivity::new(vec![0.01; 6], 0.0);
        let start = Placement::all_relu(6);
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // No target: one layer, as a plain move.
            let (q, layers) =
                cheaper_move(&start, &sens, savings, cost, None, &[], &mut rng).unwrap().unwrap();
            assert_eq!((layers.len(), q.quad_count()), (1, 1));
            // A target: layers until the cost is at most 10, and the move
            // one layer shorter had not reached it.
            let (q, layers) = cheaper_move(&start, &sens, savings, cost, Some(10.0), &[], &mut rng)
                .unwrap()
                .unwrap();
            assert!(cost(&q).unwrap() <= 10.0, "seed {seed}: {q}");
            let mut before = q.clone();
            before.set(*layers.last().unwrap(), false);
            assert!(cost(&before).unwrap() > 10.0, "seed {seed}: {q}");
            assert_eq!(q.quad_count(), layers.len());
            // Out of reach: every layer, then it stops.
            let (q, _) = cheaper_move(&start, &sens, savings, cost, Some(-1.0), &[], &mut rng)
                .unwrap()
                .unwrap();
            assert_eq!(q.quad_count(), 6);
        }
        // Every one-layer move lands on another member's placement: none.
        let others: Vec<Placement> = (0..6)
            .map(|i| {
                let mut p = Placement::all_relu(6);
                p.set(i, true);
                p
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!(cheaper_move(&start, &sens, savings, cost, None, &others, &mut rng)
            .unwrap()
            .is_none());
        // With a target it goes past them.
        let (q, _) = cheaper_move(&start, &sens, savings, cost, Some(18.0), &others, &mut rng)
            .unwrap()
            .unwrap();
        assert!(q.quad_count() >= 2 && !others.contains(&q));
        // Nothing left to make quadratic: no move.
        let all = Placement::all_quad(6);
        assert!(cheaper_move(&all, &sens, savings, cost, Some(0.0), &[], &mut rng)
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_ranked_placement_follows_saving_per_loss_and_nests() {
        // Layer 1 and 3 seem free, layer 0 loses 2 points, layer 2 one.
        let sens = Sensitivity::new(vec![0.02, 0.0, 0.01, 0.0], 0.0);
        let flat = |_: &Placement| Ok(vec![1.0; 4]);
        let two = ranked_placement(4, 2, &sens, flat).unwrap();
        assert_eq!(two.to_string(), "RQRQ");
        let three = ranked_placement(4, 3, &sens, flat).unwrap();
        assert_eq!(three.to_string(), "RQQQ");
        // Savings priced given the layers chosen: once layer 1 is
        // quadratic, layer 3 saves nothing and layer 2 comes next.
        let priced = |p: &Placement| {
            Ok(if p.is_quad(1) { vec![1.0, 0.0, 1.0, 0.0] } else { vec![1.0, 2.0, 1.0, 1.0] })
        };
        assert_eq!(ranked_placement(4, 2, &sens, priced).unwrap().to_string(), "RQQR");
        // More than there are layers: all of them.
        assert_eq!(ranked_placement(4, 9, &sens, flat).unwrap().to_string(), "QQQQ");
    }

    #[test]
    fn halving_spends_the_budget_and_no_more() {
        // 6 members, 1884 steps, 40 steps per interval, halved at half.
        let s = Schedule::of(6, 1884, 40, Some(0.5), false);
        assert_eq!(s.halve, Some(4));
        assert_eq!(s.survivors, 3);
        // Each survivor's run ends with its share: 308 more steps, the last
        // interval 28 of them.
        assert_eq!(s.member_steps, 4 * 40 + 308);
        assert_eq!(s.intervals, 4 + 8);
        let spent = 6 * 4 * 40 + 3 * (s.member_steps - 4 * 40);
        assert_eq!(spent, 1884);
        // A budget the survivors cannot share evenly: under one step each short.
        let s = Schedule::of(6, 1885, 40, Some(0.5), false);
        let spent = 6 * 4 * 40 + 3 * (s.member_steps - 4 * 40);
        assert!((1885 - 2..=1885).contains(&spent), "{s:?}: {spent}");
    }

    #[test]
    fn starting_swaps_end_before_the_halving() {
        let s = Schedule::of(6, 1884, 40, Some(0.5), false);
        let scale = starting_swap_scale(&s, 40);
        // The longest starting span (0.6 of the run) ends by the halving.
        let ends = (crate::policy::SPAN.1 * scale * s.member_steps as f32).round() as usize;
        assert!(ends <= 4 * 40, "{ends}");
        assert!((scale - 160.0 / 468.0).abs() < 1e-6);
        let whole = Schedule::of(6, 1884, 40, None, false);
        assert_eq!(starting_swap_scale(&whole, 40), 1.0);
    }

    #[test]
    fn more_layers_swapped_at_once_blend_for_longer_and_still_end_in_time() {
        // One layer of 37: the genome's span, scaled.
        assert!((starting_span(0.3, 1, 37, 0.5) - 0.15).abs() < 1e-6);
        // Every layer: 0.9 of the steps before the halving.
        assert!((starting_span(0.3, 37, 37, 0.5) - 0.45).abs() < 1e-6);
        // A tenth of the steps before the halving left to recover,
        // whatever the genome says.
        assert!(starting_span(1.0, 1, 37, 0.5) <= 0.45 + 1e-6);
        // Without a halving (scale 1) the span is a fraction of the run.
        assert!((starting_span(0.2, 37, 37, 1.0) - 0.9).abs() < 1e-6);
    }

    #[test]
    fn an_explore_swap_leaves_time_to_recover() {
        assert_eq!(explore_span(0.3, 0.1), 0.3);
        assert!((explore_span(0.3, 0.8) - 0.1).abs() < 1e-6);
        assert_eq!(explore_span(0.3, 1.0), 0.0);
    }

    #[test]
    fn no_halving_where_it_cannot_or_should_not_happen() {
        let whole = Schedule { halve: None, survivors: 6, intervals: 8, member_steps: 314 };
        assert_eq!(Schedule::of(6, 1884, 40, None, false), whole);
        assert_eq!(Schedule::of(6, 1884, 40, Some(1.0), false), whole);
        // Per channel, and with fewer than 4 members.
        assert_eq!(Schedule::of(6, 1884, 40, Some(0.5), true), whole);
        assert_eq!(Schedule::of(3, 942, 40, Some(0.5), false).halve, None);
        // One interval in all: nothing on one side of the halving.
        assert_eq!(Schedule::of(6, 60, 40, Some(0.5), false).halve, None);
    }

    #[test]
    fn survivors_are_the_best_by_front_order_in_their_old_order() {
        let fitness = [-1.5, 0.999, -0.2, 0.3, -2.0, 0.999];
        assert_eq!(survivors(&fitness, 3), vec![1, 3, 5]);
        assert_eq!(survivors(&fitness, 10), vec![0, 1, 2, 3, 4, 5]);
    }
}
