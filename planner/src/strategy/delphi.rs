//! DELPHI's planner (Mishra et al. 2020, §5) as its code runs it
//! (mc2-project/delphi, `python/`), in this code path.
//!
//! For one count n of quadratic layers at a time a population trains from
//! the base with random placements of exactly n quadratic layers,
//! exchanged gradually: each quadratic layer blends from ReLU to the
//! quadratic linearly over the first third of the member's run (the
//! original's `swap_period` of 100 of 300 epochs), no distillation. PBT
//! perturbs only the learning rate and momentum; exploit copies weights
//! and placement; the fitness is validation accuracy × (1 + replaced ReLUs
//! / all ReLUs), with ReLUs counted as activations, judged only past the
//! exchange. The counts descend from all layers in `delphi_runs` even steps
//! ([`crate::policy::delphi_counts`], reversed) and stop at the first count
//! whose population meets the threshold — what the original's README tells
//! its user to do by hand (lower the count until the accuracy is met). The
//! budget is split evenly over the counts the grid may need; what an early
//! stop leaves is not spent (the run reports the steps it used). Every
//! settled evaluation joins the run's front, so the plan for any threshold
//! is chosen afterwards by the rule every strategy shares.
//!
//! Where this differs from the original: a trained member whose network
//! cannot be proven inside the protocol's range is no plan (the engine
//! would refuse it) and does not meet the threshold; gradients are clipped by norm at the members' common setting, not
//! by value at 2; the quadratic's coefficients are learned from the
//! original's starting values rather than fixed; the hyperparameter ranges
//! are those every strategy here draws from.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::policy::{delphi_counts, delphi_fitness, exploit_pairs, Genome};
use crate::search::{Progress, Search};
use crate::strategy::pbt::pair;

/// Runs (or resumes) DELPHI's planner.
pub fn run(s: &mut Search) -> Result<()> {
    let c = s.c.clone();
    let n = c.population;
    let layers = s.layers;
    let mut counts = delphi_counts(layers, c.delphi_runs);
    counts.reverse();
    let steps = (s.budget / (counts.len() * n)).max(1);
    let intervals = steps.div_ceil(s.interval_steps);
    let all_relus = s.pricing.relus(&delphi_net::Placement::all_relu(layers));
    let (mut run, mut interval, mut genomes, mut members) = match &s.st.progress {
        Progress::Delphi { run, interval, genomes } if !genomes.is_empty() => {
            (*run, *interval, genomes.clone(), s.load_members(n)?)
        }
        Progress::Delphi { run, .. } => (*run, 0, Vec::new(), Vec::new()),
        _ => (0, 0, Vec::new(), Vec::new()),
    };
    s.say(&format!(
        "DELPHI's planner: counts of quadratic layers {counts:?} (descending until {:.1} % is \
         met), {n} members × {steps} steps each",
        c.accuracy * 100.0
    ));
    // Whether the current count's population has met the threshold.
    let mut met = s.st.evaluations.iter().any(|e| {
        e.is_plan()
            && e.valid_accuracy >= c.accuracy
            && run < counts.len()
            && e.quads == counts[run]
            && e.stage.starts_with(&format!("n={} ", counts[run]))
    });
    while run < counts.len() {
        let q = counts[run];
        if members.is_empty() {
            let mut rng =
                ChaCha8Rng::seed_from_u64(c.search_seed() ^ 0xde1f ^ ((run as u64) << 32));
            genomes = (0..n).map(|_| Genome::delphi(layers, q, &mut rng)).collect();
            for (k, g) in genomes.iter().enumerate() {
                members.push(s.member(g, (run * n + k) as u64, steps)?);
            }
        }
        while interval < intervals {
            if s.out_of_time() {
                s.say("wall-time budget spent; stopping the search");
                return Ok(());
            }
            interval += 1;
            let mut rng = ChaCha8Rng::seed_from_u64(
                c.search_seed() ^ ((interval as u64) << 24) ^ ((run as u64) << 40),
            );
            // A member's share of the budget ends inside its last interval:
            // that interval is cut short, so no count trains past its share.
            let this = s.interval_steps.min(steps - (interval - 1) * s.interval_steps);
            let evals = s.run_members(
                &mut members,
                &genomes,
                (interval, this),
                &format!("n={q} interval {interval}"),
                &|acc, _, relus| delphi_fitness(acc, all_relus - relus, all_relus),
            )?;
            let fitness: Vec<f64> = evals.iter().map(|e| e.fitness).collect();
            let ready: Vec<bool> = evals.iter().map(|e| e.settled).collect();
            // Met by a plan the engine can run (not left out as unprovable).
            met |= evals.iter().any(|e| e.is_plan() && e.valid_accuracy >= c.accuracy);
            if interval < intervals {
                for (lo, hi) in exploit_pairs(&fitness, &ready, c.quantile, &mut rng) {
                    let (tr, source) = pair(&mut members, lo, hi);
                    tr.copy_from(source);
                    let mut g = genomes[hi].clone();
                    g.perturb_lr_momentum(&mut rng);
                    tr.set_hyperparameters(g.lr, g.momentum, g.weight_decay);
                    s.lineage(serde_json::json!({
                        "run": run, "quadratic_layers": q, "interval": interval,
                        "exploit": {"member": lo, "copies": hi,
                                    "fitness": fitness[lo], "source_fitness": fitness[hi]},
                        "explore": {"lr": g.lr, "momentum": g.momentum},
                    }))?;
                    genomes[lo] = g;
                }
            }
            s.st.progress = Progress::Delphi { run, interval, genomes: genomes.clone() };
            let refs: Vec<&_> = members.iter().collect();
            s.save(&refs)?;
            s.say(&format!(
                "n = {q}: interval {interval}/{intervals}, best fitness {:.4}",
                fitness.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b))
            ));
        }
        run += 1;
        interval = 0;
        members.clear();
        genomes.clear();
        if met {
            s.say(&format!(
                "n = {q} met {:.1} %: DELPHI's planner stops here ({} of {} steps used)",
                c.accuracy * 100.0,
                s.st.steps,
                s.budget
            ));
            run = counts.len();
        }
        s.st.progress = Progress::Delphi { run, interval: 0, genomes: Vec::new() };
        s.save(&[])?;
        met = false;
    }
    Ok(())
}
