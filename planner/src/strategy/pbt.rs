//! Our search: population-based training (Jaderberg et al. 2017) over
//! placements and hyperparameters, scored by the cost model.
//!
//! Members start with placements spread from one to all quadratic layers;
//! quadratic layers blend in from ReLU over the member's swap span, and the
//! members distil from the base. At every ready interval each member trains,
//! is evaluated and priced; fitness is −cost, less a penalty proportional to
//! the shortfall below the threshold ([`crate::policy::pbt_fitness`]). The
//! bottom quantile — members mid-swap excepted, they cannot be judged yet —
//! copies weights and genome from the top (exploit), perturbs the
//! hyperparameters and, with probability ½, moves the placement toward the
//! threshold (explore): one more ReLU layer starts swapping when the copied
//! member meets it, one quadratic layer turns back to ReLU when it does not.
//!
//! Per channel (`--granularity channel`) a member's genome holds a cost
//! budget instead of a placement: members start all-ReLU with budgets
//! spread from just above the all-quadratic cost to half-way
//! ([`crate::policy::channel_budget`]) and learn their channel masks under
//! it ([`delphi_train::config::Gates`]); a member mid-learning cannot be
//! judged yet. Explore perturbs the hyperparameters and, with probability
//! ½ when the copied member meets the threshold, tightens the budget
//! ([`crate::policy::tighter_budget`]): the mask learning resumes from the
//! copied mask.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use delphi_train::train::Trainer;

use crate::config::Granularity;
use crate::error::Result;
use crate::policy::{channel_budget, exploit_pairs, pbt_fitness, spread, tighter_budget, Genome};
use crate::search::{Evaluation, Progress, Search};

/// Runs (or resumes) the population-based search.
pub fn run(s: &mut Search) -> Result<()> {
    let c = s.c.clone();
    let n = c.population;
    let layers = s.layers;
    let steps = (s.budget / n).max(1);
    let intervals = steps.div_ceil(s.interval_steps);
    let relu_obj = c.objective.of(&s.relu_cost);
    let (mut interval, mut genomes, mut members) = match &s.st.progress {
        Progress::Pbt { interval, genomes } => (*interval, genomes.clone(), s.load_members(n)?),
        _ => {
            let mut rng = ChaCha8Rng::seed_from_u64(c.seed ^ 0x9e37_79b9_7f4a_7c15);
            let mut genomes = Vec::new();
            let mut members = Vec::new();
            for k in 0..n {
                let g = if c.granularity == Granularity::Channel {
                    // All ReLU; budgets spread above the all-quadratic floor.
                    let mut g = Genome::random(layers, 0, &mut rng);
                    g.budget = channel_budget(k, n, s.quad_floor);
                    g
                } else {
                    // Spread the starting placements from one to all quadratic layers.
                    let quads = spread(k, n, layers);
                    Genome::random(layers, quads, &mut rng)
                };
                members.push(s.member(&g, k as u64, steps)?);
                genomes.push(g);
            }
            (0, genomes, members)
        }
    };
    while interval < intervals {
        if s.out_of_time() {
            s.say("wall-time budget spent; stopping the search");
            break;
        }
        interval += 1;
        // A generator per interval: a resumed run draws what an
        // uninterrupted one would have.
        let mut rng = ChaCha8Rng::seed_from_u64(c.seed ^ ((interval as u64) << 24));
        let evals = train_interval(
            s,
            &mut members,
            &genomes,
            interval,
            &format!("interval {interval}"),
            &|acc, cost, _| pbt_fitness(acc, cost, c.accuracy, relu_obj),
        )?;
        let fitness: Vec<f64> = evals.iter().map(|e| e.fitness).collect();
        let ready: Vec<bool> = evals.iter().map(|e| e.settled).collect();
        if interval < intervals {
            for (lo, hi) in exploit_pairs(&fitness, &ready, c.quantile, &mut rng) {
                let (tr, source) = pair(&mut members, lo, hi);
                tr.copy_from(source);
                let mut g = genomes[hi].clone();
                g.perturb(&mut rng);
                tr.set_hyperparameters(g.lr, g.momentum, g.weight_decay);
                tr.set_distill_weight(g.distill_weight);
                // Move the placement toward the threshold: one more layer
                // starts swapping to quadratic when the copied member meets
                // it, one quadratic layer turns back to ReLU when it does not.
                let (mut swapped, mut reverted) = (None, None);
                if c.granularity == Granularity::Channel {
                    if rng.gen_bool(0.5) && evals[hi].valid_accuracy >= c.accuracy {
                        g.budget = tighter_budget(g.budget, s.quad_floor);
                        tr.set_gate_budget(g.budget * relu_obj)?;
                    }
                } else if rng.gen_bool(0.5) {
                    if evals[hi].valid_accuracy >= c.accuracy {
                        let relus = g.placement.relu_layers();
                        if !relus.is_empty() {
                            let i = relus[rng.gen_range(0..relus.len())];
                            g.placement.set(i, true);
                            let now = tr.progress(&s.data.train);
                            tr.swap_to_quad(i, now, g.swap_span);
                            swapped = Some(i);
                        }
                    } else {
                        let quads: Vec<usize> =
                            (0..layers).filter(|&i| g.placement.is_quad(i)).collect();
                        if !quads.is_empty() {
                            let i = quads[rng.gen_range(0..quads.len())];
                            g.placement.set(i, false);
                            tr.revert_to_relu(i);
                            reverted = Some(i);
                        }
                    }
                }
                s.lineage(serde_json::json!({
                    "interval": interval,
                    "exploit": {"member": lo, "copies": hi,
                                "fitness": fitness[lo], "source_fitness": fitness[hi]},
                    "explore": {"genome": &g, "swapped_layer": swapped, "reverted_layer": reverted,
                                "budget": g.budget},
                }))?;
                genomes[lo] = g;
            }
        }
        s.st.progress = Progress::Pbt { interval, genomes: genomes.clone() };
        let refs: Vec<&_> = members.iter().collect();
        s.save(&refs)?;
        s.say(&format!(
            "interval {interval}/{intervals}: best fitness {:.4}",
            fitness.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b))
        ));
    }
    Ok(())
}

/// Trains every member for one interval and evaluates it (stage `stage`).
pub(crate) fn train_interval(
    s: &mut Search,
    members: &mut [Trainer],
    genomes: &[Genome],
    interval: usize,
    stage: &str,
    fitness: &dyn Fn(f64, f64, usize) -> f64,
) -> Result<Vec<Evaluation>> {
    let mut out = Vec::with_capacity(members.len());
    for (k, tr) in members.iter_mut().enumerate() {
        s.train(tr, s.interval_steps)?;
        out.push(s.evaluate(tr, &genomes[k], interval, k, stage.to_string(), fitness)?);
    }
    Ok(out)
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
