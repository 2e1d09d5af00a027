//! DELPHI's published planner (Mishra et al. 2020, §5), in this code path.
//!
//! For each count n of quadratic layers the budget allows (spread evenly up
//! to all layers, [`crate::policy::delphi_counts`]) a population trains
//! from the base with random placements of exactly n quadratic layers
//! (quadratic from the start, no distillation). PBT perturbs only the
//! learning rate and momentum; exploit copies weights and placement; the
//! fitness is validation accuracy × (1 + replaced ReLUs / all ReLUs), with
//! ReLUs counted as activations. The accuracy threshold plays no part in
//! the search: it is applied afterwards, when the plan is chosen — the
//! same rule as for every strategy (the cheapest settled evaluation that
//! meets it).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::policy::{delphi_counts, delphi_fitness, exploit_pairs, Genome};
use crate::search::{Progress, Search};
use crate::strategy::pbt::{pair, train_interval};

/// Runs (or resumes) DELPHI's planner.
pub fn run(s: &mut Search) -> Result<()> {
    let c = s.c.clone();
    let n = c.population;
    let layers = s.layers;
    let counts = delphi_counts(layers, c.delphi_runs);
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
        "DELPHI's planner: counts of quadratic layers {counts:?}, {n} members × {steps} steps each"
    ));
    while run < counts.len() {
        let q = counts[run];
        if members.is_empty() {
            let mut rng = ChaCha8Rng::seed_from_u64(c.seed ^ 0xde1f ^ ((run as u64) << 32));
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
                c.seed ^ ((interval as u64) << 24) ^ ((run as u64) << 40),
            );
            let fitness = train_interval(
                s,
                &mut members,
                &genomes,
                interval,
                &format!("n={q} interval {interval}"),
                &|acc, _, relus| delphi_fitness(acc, all_relus - relus, all_relus),
            )?
            .iter()
            .map(|e| e.fitness)
            .collect::<Vec<f64>>();
            if interval < intervals {
                for (lo, hi) in
                    exploit_pairs(&fitness, &vec![true; fitness.len()], c.quantile, &mut rng)
                {
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
        s.st.progress = Progress::Delphi { run, interval: 0, genomes: Vec::new() };
        s.save(&[])?;
    }
    Ok(())
}
