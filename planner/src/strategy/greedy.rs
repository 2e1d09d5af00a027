//! The greedy rule: start all-ReLU; each round, try every layer that is
//! still ReLU (a probe: made quadratic — blended in over half the probe —
//! and fine-tuned briefly, distilling from the base), then make quadratic
//! the layer that loses the least validation accuracy per unit of predicted
//! saving, and fine-tune. Stop when that layer would take the accuracy
//! below the threshold (the threshold binds), when every layer is
//! quadratic, or when the budget is spent. The budget is split so that the
//! longest run fits ([`crate::policy::greedy_steps`]); what a shorter run
//! leaves is spent fine-tuning the last accepted plan. A round's probes run
//! as units of work ([`crate::unit`]) on the configured executor; the
//! fine-tunes after each accepted layer run in the controller.

use delphi_net::Placement;
use delphi_train::train::Trainer;

use crate::error::Result;
use crate::policy::{greedy_pick, greedy_steps, Genome, GreedyState, Probe};
use crate::search::{Label, Progress, Search};

/// The greedy rule's member: fixed hyperparameters (the learning rate at
/// the geometric middle of [`crate::policy::START_LR`]).
fn genome(placement: Placement) -> Genome {
    Genome {
        placement,
        lr: 0.006,
        momentum: 0.9,
        weight_decay: 5e-4,
        distill_weight: 0.5,
        swap_span: 0.5,
        budget: 0.0,
    }
}

/// A trainer for `steps` steps from `from`'s weights: the quadratic layers
/// of `placement` are quadratic, `swapping` blends in over half the run.
fn fork(
    s: &Search,
    from: &Trainer,
    placement: &Placement,
    swapping: Option<usize>,
    steps: usize,
    seed: u64,
) -> Result<Trainer> {
    let g = genome(placement.clone());
    let mut t = s.member(&g, seed, steps)?;
    t.copy_from(from);
    t.quad_from = placement
        .quads()
        .iter()
        .enumerate()
        .map(|(i, &q)| match (q, Some(i) == swapping) {
            (false, _) => None,
            (true, true) => Some((0.0, 0.5)),
            (true, false) => Some((0.0, 0.0)),
        })
        .collect();
    Ok(t)
}

/// Runs (or resumes) the greedy rule.
pub fn run(s: &mut Search) -> Result<()> {
    let c = s.c.clone();
    let layers = s.layers;
    let step = greedy_steps(layers, s.budget);
    let dir = s.out.join("greedy");
    let accepted_dir = dir.join("accepted");
    let probe_dir = |k: usize| dir.join(format!("probe-{k}"));
    let mut st = match &s.st.progress {
        Progress::Greedy(g) => g.clone(),
        _ => GreedyState {
            accepted: Placement::all_relu(layers),
            accuracy: s.base_valid_accuracy,
            cost: c.objective.of(&s.relu_cost),
            round: 1,
            probes: Vec::new(),
            stopped: None,
        },
    };
    let mut accepted = if Trainer::has_checkpoint(&accepted_dir) {
        Trainer::load_checkpoint(&accepted_dir, &s.device)?
    } else {
        s.member(&genome(st.accepted.clone()), 0, step)?
    };
    s.say(&format!(
        "greedy rule: {step} steps per probe and per fine-tune after each accepted layer"
    ));

    while st.stopped.is_none() {
        if s.out_of_time() {
            s.say("wall-time budget spent; stopping the search");
            return Ok(());
        }
        let relus = st.accepted.relu_layers();
        if relus.is_empty() {
            st.stopped = Some("every layer is quadratic".into());
            break;
        }
        if s.budget_left() < step * (relus.len() + 1) {
            st.stopped = Some("the training budget is spent".into());
            break;
        }
        // Probes: independent of one another, so they run as units, all of
        // a round at once (the configured executor's workers share them);
        // the round's results are saved together, so a resumed run redoes
        // the probes of at most one round. A probe whose trained network
        // cannot be proven in range is no candidate.
        let todo: Vec<usize> =
            relus.iter().copied().filter(|&k| !st.probes.iter().any(|p| p.layer == k)).collect();
        if !todo.is_empty() {
            let mut trs = Vec::with_capacity(todo.len());
            let mut genomes = Vec::with_capacity(todo.len());
            let mut labels = Vec::with_capacity(todo.len());
            for &k in &todo {
                let mut p = st.accepted.clone();
                p.set(k, true);
                let seed = (st.round * 1000 + k) as u64;
                trs.push(fork(s, &accepted, &p, Some(k), step, seed)?);
                genomes.push(genome(p));
                labels.push(Label {
                    interval: st.round,
                    member: k,
                    stage: format!("round {} probe layer {k}", st.round),
                });
            }
            let (base_acc, base_cost) = (st.accuracy, st.cost);
            let evals = s.run_units(&mut trs, &genomes, step, &labels, &|acc, cost, _| {
                -(base_acc - acc) / (base_cost - cost).max(1e-12)
            })?;
            for ((&k, tr), e) in todo.iter().zip(&trs).zip(&evals) {
                tr.save_checkpoint(&probe_dir(k))?;
                st.probes.push(Probe {
                    layer: k,
                    accuracy: e.valid_accuracy,
                    cost: e.cost,
                    provable: e.provable != Some(false),
                });
            }
            s.st.progress = Progress::Greedy(st.clone());
            s.save(&[])?;
        }
        let Some(i) = greedy_pick(&st.probes, st.accuracy, st.cost) else {
            st.stopped = Some(if st.probes.iter().all(|p| !p.provable) {
                "no remaining layer can be made quadratic within the protocol's range".into()
            } else {
                "no remaining layer saves anything".into()
            });
            break;
        };
        let pick = st.probes[i].clone();
        if pick.accuracy < c.accuracy {
            st.stopped = Some(format!(
                "the best next layer ({}) would leave {:.2} % < {:.2} %: the threshold binds",
                pick.layer,
                pick.accuracy * 100.0,
                c.accuracy * 100.0
            ));
            break;
        }
        // Accept it and fine-tune.
        let probed = Trainer::load_checkpoint(&probe_dir(pick.layer), &s.device)?;
        st.accepted.set(pick.layer, true);
        let mut tr = fork(s, &probed, &st.accepted, None, step, (st.round * 1000 + 999) as u64)?;
        s.train(&mut tr, step)?;
        let g = genome(st.accepted.clone());
        let e = s.evaluate(
            &mut tr,
            &g,
            st.round,
            pick.layer,
            format!("round {} accept layer {}", st.round, pick.layer),
            &|_, _, _| 0.0,
        )?;
        s.lineage(serde_json::json!({
            "round": st.round, "accepted_layer": pick.layer,
            "placement": st.accepted, "probes": st.probes,
            "valid_accuracy": e.valid_accuracy, "cost": e.cost,
        }))?;
        s.say(&format!(
            "round {}: layer {} quadratic → {} valid {:.2} % cost {:.4}",
            st.round,
            pick.layer,
            st.accepted,
            e.valid_accuracy * 100.0,
            e.cost
        ));
        tr.save_checkpoint(&accepted_dir)?;
        accepted = tr;
        st.accuracy = e.valid_accuracy;
        st.cost = e.cost;
        st.round += 1;
        st.probes.clear();
        for k in 0..layers {
            let _ = std::fs::remove_dir_all(probe_dir(k));
        }
        s.st.progress = Progress::Greedy(st.clone());
        s.save(&[])?;
    }
    if let Some(why) = &st.stopped {
        s.say(&format!("greedy rule stopped: {why}"));
    }
    s.st.progress = Progress::Greedy(st.clone());
    s.save(&[])?;
    // Spend what is left fine-tuning the accepted plan, evaluating as a
    // population would.
    let final_dir = dir.join("final");
    let left = s.budget_left();
    if left > 0 {
        let mut tr = if Trainer::has_checkpoint(&final_dir) {
            Trainer::load_checkpoint(&final_dir, &s.device)?
        } else {
            fork(s, &accepted, &st.accepted, None, left, 77_777)?
        };
        let g = genome(st.accepted.clone());
        let mut k = 0;
        while !tr.finished() && s.budget_left() > 0 && !s.out_of_time() {
            let n = s.interval_steps.min(s.budget_left());
            s.train(&mut tr, n)?;
            k += 1;
            s.evaluate(&mut tr, &g, st.round, k, format!("final fine-tune {k}"), &|_, _, _| 0.0)?;
            tr.save_checkpoint(&final_dir)?;
            s.save(&[])?;
        }
    }
    Ok(())
}
