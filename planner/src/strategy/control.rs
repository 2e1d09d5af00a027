//! The controls: what a search must beat to have earned its keep.
//!
//! * `relu-control` — the all-ReLU base fine-tuned for the same budget
//!   (distilling from itself, PBT over the hyperparameters): what the
//!   training budget alone buys without replacing any ReLU;
//! * `quad-control` — every activation quadratic with our recipe (gradual
//!   swap, distillation from the base, PBT over the hyperparameters): what
//!   our training recipe buys without any placement search.
//!
//! Both train `population` members on our search's schedule (the better
//! half by accuracy trains on alone once the budget is half spent; see
//! [`crate::strategy::pbt::Schedule`]; the starting swaps span the whole
//! run, not only the steps before the halving as ours do
//! ([`crate::strategy::pbt::starting_swap_scale`]): every layer of a deep
//! network swapped that fast diverged all six all-quadratic members of a
//! `resnet38` run, so the control keeps its better, slower swap), evaluate them at
//! every interval like a search (so their front is made of the same kind
//! of evaluations), and exploit by validation accuracy; the placement never
//! changes. An evaluation whose trained network cannot be proven inside
//! the protocol's range (or whose training diverged) is no plan: it ranks
//! below every plan, so it is the first to be replaced by a copy of a
//! better member, and the run's front holds only what can be proven; at
//! worst the base.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use delphi_net::Placement;

use crate::error::Result;
use crate::policy::{exploit_pairs, Genome};
use crate::search::{Progress, Search};
use crate::strategy::pbt::{halve, next_interval, pair, Schedule};

/// Runs (or resumes) a control; `quad`: every layer quadratic, else ReLU.
pub fn run(s: &mut Search, quad: bool) -> Result<()> {
    let c = s.c.clone();
    let layers = s.layers;
    // The same schedule as our search (halved at mid-budget by default):
    // a control is what our recipe buys without a placement search.
    let plan = Schedule::of(c.population, s.budget, s.interval_steps, c.halve_at, false);
    let (steps, intervals) = (plan.member_steps, plan.intervals);
    let placement = if quad { Placement::all_quad(layers) } else { Placement::all_relu(layers) };
    let (mut interval, mut genomes, mut members) = match &s.st.progress {
        Progress::Control { interval, genomes } => {
            (*interval, genomes.clone(), s.load_members(genomes.len())?)
        }
        _ => {
            let n = c.population;
            let mut rng = ChaCha8Rng::seed_from_u64(c.search_seed() ^ 0x0c04_7701);
            let mut genomes = Vec::new();
            let mut members = Vec::new();
            for k in 0..n {
                let mut g = Genome::random(layers, 0, &mut rng);
                g.placement = placement.clone();
                members.push(s.member(&g, k as u64, steps)?);
                genomes.push(g);
            }
            (0, genomes, members)
        }
    };
    while interval < intervals {
        let Some((evals, mut rng)) =
            next_interval(s, &mut members, &genomes, &mut interval, &|acc, _, _| acc)?
        else {
            break;
        };
        // Accuracy, and below every plan what is settled but no plan.
        let fitness: Vec<f64> = evals
            .iter()
            .map(|e| if e.provable == Some(false) { e.fitness - 2.0 } else { e.fitness })
            .collect();
        let ready: Vec<bool> = evals.iter().map(|e| e.settled).collect();
        let n = members.len();
        if plan.halve == Some(interval) && n > plan.survivors {
            halve(s, interval, &fitness, plan.survivors, &mut members, &mut genomes)?;
        } else if interval < intervals {
            for (lo, hi) in exploit_pairs(&fitness, &ready, c.quantile, &mut rng) {
                let (tr, source) = pair(&mut members, lo, hi);
                tr.copy_from(source);
                let mut g = genomes[hi].clone();
                g.perturb(&mut rng);
                tr.set_hyperparameters(g.lr, g.momentum, g.weight_decay);
                tr.set_distill_weight(g.distill_weight);
                s.lineage(serde_json::json!({
                    "interval": interval,
                    "exploit": {"member": lo, "copies": hi,
                                "fitness": fitness[lo], "source_fitness": fitness[hi]},
                    "explore": {"genome": &g},
                }))?;
                genomes[lo] = g;
            }
        }
        s.st.progress = Progress::Control { interval, genomes: genomes.clone() };
        let refs: Vec<&_> = members.iter().collect();
        s.save(&refs)?;
        s.retire_members(members.len(), n)?;
        s.say(&format!(
            "interval {interval}/{intervals}: best validation {:.2} %{}",
            evals.iter().map(|e| e.valid_accuracy).fold(f64::NEG_INFINITY, f64::max) * 100.0,
            match evals.iter().filter(|e| e.provable == Some(false)).count() {
                0 => String::new(),
                n => format!(" ({n} of {} members no plan)", evals.len()),
            }
        ));
    }
    Ok(())
}
