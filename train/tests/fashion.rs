//! Training on Fashion-MNIST (Debian's dataset-fashion-mnist, installed by
//! `.ci/run`): accuracy, fixed point, export round trip, resume.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use burn::tensor::Device;
use delphi_train::data::{self, Dataset, DatasetKind};
use delphi_train::evaluate::fixed_accuracy;
use delphi_train::{TrainConfig, Trainer};

fn dataset(train: usize) -> Dataset {
    let mut d = data::load(DatasetKind::FashionMnist, None, 1000, 1)
        .expect("Fashion-MNIST (install Debian's dataset-fashion-mnist or set DELPHI_DATA)");
    d.train = d.train.take(train);
    d
}

fn config(activations: &str, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::new(DatasetKind::FashionMnist);
    c.placement = Some(activations.parse().expect("a placement"));
    c.epochs = epochs;
    c.valid_size = 1000;
    // As the command line does for networks with quadratic layers.
    c.grad_clip = activations.contains('Q').then_some(1.0);
    c
}

/// Trains, then checks float accuracy, fixed point against float, and that
/// the exported description predicts what the Burn model predicts.
fn train_and_check(activations: &str, min_accuracy: f64) {
    let data = dataset(20_000);
    let mut tr = Trainer::new(config(activations, 3), &Device::flex()).unwrap();
    tr.train(&data, true).unwrap();
    let float = tr.accuracy(&data.test);
    let net = tr.export().unwrap();
    let fixed = fixed_accuracy(&net, &data.test).unwrap();
    eprintln!("{activations}: float {float:.4}, fixed {fixed:.4}");
    assert!(float >= min_accuracy, "{activations}: float accuracy {float}");
    assert!((fixed - float).abs() <= 0.005, "{activations}: fixed {fixed} vs float {float}");

    // Export round trip: the description's float evaluator predicts what Burn predicts.
    let probe = data.test.take(300);
    let burn_acc = tr.accuracy(&probe);
    let mut agree = 0;
    let mut correct = 0;
    let model = burn::module::Module::valid(&tr.model);
    for i in 0..probe.len() {
        let x = probe.image(i, None, &tr.norm);
        let want = delphi_net::eval::argmax(&delphi_net::eval::eval_float(&net, &x).unwrap());
        let (xb, _) = delphi_train::batch::batch(&probe, &[i], None, &Device::flex(), &tr.norm);
        let got = delphi_train::model::values(model.forward(xb));
        let got = delphi_net::eval::argmax(&got);
        agree += usize::from(got == want);
        correct += usize::from(want == probe.labels[i] as usize);
    }
    assert_eq!(agree, probe.len(), "{activations}: Burn and the exported description disagree");
    assert!((correct as f64 / probe.len() as f64 - burn_acc).abs() < 1e-9);

    // The export records each activation layer's measured input range, and
    // the trained plan passes the engine's range check with it.
    let mut net = net;
    delphi_train::evaluate::record_ranges(&mut net, &data.train, 64).unwrap();
    let acts = net.activation_layers();
    let ranges = &net.metadata.activation_ranges;
    assert_eq!(ranges.iter().map(|r| r.layer).collect::<Vec<_>>(), acts);
    assert!(ranges.iter().all(|r| r.max_abs.is_finite() && r.max_abs > 0.0));
    let prog = delphi_net::FixedProgram::lower(&net).unwrap();
    let report = delphi_net::range::analyse_network(&net, &prog).unwrap();
    report.check().unwrap();
    assert!(report.margin_bits > 0.0, "{}", report.summary());
}

#[test]
fn all_relu_small_cnn_reaches_85_percent() {
    train_and_check("RRR", 0.85);
}

#[test]
fn quadratic_small_cnn_reaches_80_percent() {
    train_and_check("RQR", 0.80);
}

/// Two epochs of RQR on 1,500 images (24 steps per epoch, 48 in all) whose
/// quadratic layer blends in from 10 % to 70 % of the run (steps 4.8–33.6).
fn swapping_rqr() -> TrainConfig {
    let mut c = config("RQR", 2);
    c.swap = Some(delphi_train::config::Swap { start: 0.1, end: 0.7 });
    c
}

#[test]
fn resuming_from_a_checkpoint_gives_the_same_weights() {
    let data = dataset(1500);
    let c = swapping_rqr();
    let dir = std::env::temp_dir().join(format!("delphi-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let mut straight = Trainer::new(c.clone(), &Device::flex()).unwrap();
    straight.train(&data, true).unwrap();

    let mut first = Trainer::new(c, &Device::flex()).unwrap();
    first.train_steps(&data, 30, true).unwrap(); // stops mid-epoch (24 steps per epoch)
    first.save_checkpoint(&dir).unwrap();
    drop(first);
    let mut resumed = Trainer::load_checkpoint(&dir, &Device::flex()).unwrap();
    assert_eq!((resumed.epoch, resumed.step_in_epoch), (1, 6));
    resumed.train(&data, true).unwrap();

    let (a, b) = (straight.export().unwrap(), resumed.export().unwrap());
    assert_eq!(a.layers, b.layers, "resumed run differs from the uninterrupted one");
    assert_eq!(straight.history.len(), resumed.history.len());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn between_calls_the_model_is_where_the_run_stands() {
    let data = dataset(1500);
    let c = swapping_rqr();
    let mut tr = Trainer::new(c, &Device::flex()).unwrap();
    tr.train_steps(&data, 20, true).unwrap();
    let err = tr.export().expect_err("mid-swap export").to_string();
    assert!(err.contains("mid-swap"), "{err}");
    // Step 34 is the first past the swap: the run's modes say quadratic
    // there, so the model must be quadratic (not blended as at step 33).
    tr.train_steps(&data, 14, true).unwrap();
    assert!(tr
        .modes_at(tr.progress(&data.train))
        .iter()
        .all(|m| !matches!(m, delphi_train::model::ActMode::Blend { .. })));
    let net = tr.export().expect("the swap is over");
    assert_eq!(delphi_net::Placement::of(&net).to_string(), "RQR");
}

/// small-cnn with per-channel gates on 3,000 images, 3 epochs: every
/// activation layer's channel saves one unit, the budget allows a third of
/// the channels to stay ReLU.
fn gated() -> (TrainConfig, usize) {
    let mut c = config("RRR", 3);
    c.grad_clip = Some(1.0);
    let net = delphi_net::builtin::build("small-cnn", 10, 1).unwrap();
    let shapes = net.validate().unwrap();
    // Start from fixed weights, not the device's seeded initialiser: tests
    // running in parallel draw from that generator too.
    let dir = std::env::temp_dir().join(format!("delphi-gated-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let init = dir.join("small-cnn.json");
    net.save(&init, delphi_net::WeightStorage::Inline).unwrap();
    c.init = Some(init);
    let channels: usize = net.activation_layers().iter().map(|&i| shapes[i].channels).sum();
    c.gates = Some(delphi_train::config::Gates {
        budget: (channels / 3) as f64,
        relu_cost: channels as f64,
        channel_saving: vec![1.0; 3],
        freeze_by: 0.5,
        penalty: 0.1,
    });
    (c, channels)
}

#[test]
fn channel_gates_meet_their_budget_and_export_a_mixed_plan() {
    let data = dataset(3000);
    let (c, channels) = gated();
    let mut tr = Trainer::new(c.clone(), &Device::flex()).unwrap();
    assert!(!tr.mask_frozen());
    // Mid-learning the plan cannot be exported.
    tr.train_steps(&data, 5, true).unwrap();
    let err = tr.export().expect_err("mask still learned").to_string();
    assert!(err.contains("channel mask"), "{err}");
    tr.train(&data, true).unwrap();
    assert!(tr.mask_frozen(), "the mask froze by half the run");
    let masks: Vec<Vec<bool>> = tr.channel_masks().into_iter().flatten().collect();
    let relus: usize = masks.iter().map(|m| m.iter().filter(|&&r| r).count()).sum();
    assert!(relus <= channels / 3, "{relus} ReLU channels left");
    let net = tr.export().unwrap();
    assert!(net.version >= 2, "a mixed layer needs format version 2 or later");
    assert!(net
        .layers
        .iter()
        .any(|l| matches!(l.op, delphi_net::Op::Activation(delphi_net::Activation::Mixed { .. }))));
    let test = data.test.clone().take(2000);
    let float = tr.accuracy(&test);
    let fixed = fixed_accuracy(&net, &test).unwrap();
    eprintln!("gated: float {float:.4}, fixed {fixed:.4}, {relus}/{channels} ReLU channels");
    assert!(float > 0.5, "float accuracy {float}");
    assert!((fixed - float).abs() <= 0.01, "fixed {fixed} vs float {float}");
    // The description predicts what Burn predicts.
    let probe = test.take(100);
    let model = burn::module::Module::valid(&tr.model);
    for i in 0..probe.len() {
        let x = probe.image(i, None, &tr.norm);
        let want = delphi_net::eval::argmax(&delphi_net::eval::eval_float(&net, &x).unwrap());
        let (xb, _) = delphi_train::batch::batch(&probe, &[i], None, &Device::flex(), &tr.norm);
        let got = delphi_net::eval::argmax(&delphi_train::model::values(model.forward(xb)));
        assert_eq!(got, want, "image {i}");
    }
    // Fine-tuning the exported plan keeps its mask (no gates config).
    let dir = std::env::temp_dir().join(format!("delphi-gated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("mixed.json");
    net.save(&p, delphi_net::WeightStorage::Sidecar).unwrap();
    let mut again = config("RRR", 1);
    again.init = Some(p);
    again.train_limit = Some(200);
    let mut tr2 = Trainer::new(again, &Device::flex()).unwrap();
    tr2.train_steps(&data, 3, true).unwrap();
    let net2 = tr2.export().unwrap();
    let mask_of = |n: &delphi_net::Network| -> Vec<Vec<bool>> {
        n.layers
            .iter()
            .filter_map(|l| match &l.op {
                delphi_net::Op::Activation(delphi_net::Activation::Mixed { relu, .. }) => {
                    Some(relu.clone())
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(mask_of(&net2), mask_of(&net));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_gated_run_resumes_from_its_checkpoint() {
    let data = dataset(1500);
    let (c, _) = gated();
    let dir = std::env::temp_dir().join(format!("delphi-gated-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut straight = Trainer::new(c.clone(), &Device::flex()).unwrap();
    straight.train(&data, true).unwrap();
    let mut first = Trainer::new(c, &Device::flex()).unwrap();
    first.train_steps(&data, 13, true).unwrap(); // mid-learning
    first.save_checkpoint(&dir).unwrap();
    drop(first);
    let mut resumed = Trainer::load_checkpoint(&dir, &Device::flex()).unwrap();
    resumed.train(&data, true).unwrap();
    assert_eq!(straight.channel_masks(), resumed.channel_masks());
    assert_eq!(straight.export().unwrap().layers, resumed.export().unwrap().layers);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gates_with_the_wrong_number_of_layer_savings_are_refused() {
    let (mut c, _) = gated();
    if let Some(g) = &mut c.gates {
        g.channel_saving.pop();
    }
    let err = Trainer::new(c, &Device::flex()).err().expect("refused").to_string();
    assert!(err.contains("2 per-layer channel savings"), "{err}");
    assert!(err.contains("3 activation layers"), "{err}");
}

#[test]
fn checkpoints_fall_every_n_steps_and_at_each_epochs_end() {
    let mut tr = Trainer::new(config("RRR", 2), &Device::flex()).unwrap();
    let mut at = Vec::new();
    while tr.step_in_epoch < 23 {
        tr.step_in_epoch += tr.steps_to_checkpoint(23, 10);
        at.push(tr.step_in_epoch);
    }
    assert_eq!(at, [10, 20, 23]);
    // Resumed between checkpoints: the next one is still on the grid.
    tr.step_in_epoch = 7;
    assert_eq!(tr.steps_to_checkpoint(23, 10), 3);
    // 0: only at the epoch's end.
    tr.step_in_epoch = 0;
    assert_eq!(tr.steps_to_checkpoint(23, 0), 23);
}

#[test]
fn divergence_is_its_own_error_not_a_bad_setting() {
    // Quadratic layers, no clipping, an absurd rate: the loss leaves the
    // finite numbers within a few steps.
    let mut c = config("QQQ", 1);
    c.grad_clip = None;
    c.lr = 1e9;
    // Mid-swap over the whole run, so the modes move at every step.
    c.swap = Some(delphi_train::config::Swap { start: 0.0, end: 1.0 });
    let data = dataset(640);
    let mut tr = Trainer::new(c, &Device::flex()).unwrap();
    let err = tr.train_steps(&data, 10, true).expect_err("diverges");
    let delphi_train::TrainError::Diverged { step, spent, .. } = &err else {
        panic!("not a divergence: {err}");
    };
    let (step, spent) = (*step, *spent);
    // The steps it was given are spent, and the run has moved on over
    // them: a copy into this member, or a budget that charged them, finds
    // it where the others stand.
    assert!(step < 9, "diverged at step {step}: the test no longer tests the skip");
    assert_eq!((spent, tr.steps_done), (10, 10));
    assert!(err.to_string().contains("diverged"), "{err}");
    assert!(!err.to_string().contains("invalid configuration"), "{err}");
    // The model stands where the run does, as after a call that ends well.
    assert_eq!(tr.model.modes(), tr.modes_at(tr.progress(&data.train)));
}

/// Every batch norm's running mean and variance, layer by layer.
fn stats(tr: &Trainer) -> Vec<Vec<f32>> {
    tr.model
        .layers
        .iter()
        .filter_map(|l| l.bn.as_ref())
        .flat_map(|b| [b.running_mean.value(), b.running_var.value()])
        .map(delphi_train::model::values)
        .collect()
}

/// Re-estimated batch-norm statistics are the average of the batches they
/// are estimated on, whatever the statistics were before: two different
/// corruptions come back to the same statistics bit for bit, and the
/// accuracy they cost returns.
#[test]
fn recalibrated_batch_norm_statistics_do_not_remember_what_they_were() {
    use burn::module::RunningState;
    let data = dataset(1500);
    let mut c = TrainConfig::new(DatasetKind::FashionMnist);
    c.arch = "resnet14".into();
    c.epochs = 1;
    c.valid_size = 1000;
    let mut tr = Trainer::new(c, &Device::flex()).unwrap();
    tr.train(&data, true).unwrap();
    let before = tr.export().unwrap();
    tr.recalibrate_batch_norm(&data.train, 0).unwrap();
    assert_eq!(tr.export().unwrap().layers, before.layers, "0 batches must change nothing");

    let good = tr.accuracy(&data.valid);
    let corrupt = |tr: &mut Trainer, shift: f32, scale: f32| {
        for bn in tr.model.layers.iter_mut().filter_map(|l| l.bn.as_mut()) {
            bn.running_mean = RunningState::new(bn.running_mean.value().add_scalar(shift));
            bn.running_var = RunningState::new(bn.running_var.value().mul_scalar(scale));
        }
    };
    corrupt(&mut tr, 3.0, 50.0);
    let bad = tr.accuracy(&data.valid);
    assert!(bad < good - 0.2, "corrupted statistics scored {bad} against {good}");
    tr.recalibrate_batch_norm(&data.train, 6).unwrap();
    let want = tr.export().unwrap();
    assert_ne!(want.layers, before.layers, "re-estimating changed no statistic");
    let fixed = tr.accuracy(&data.valid);
    assert!(fixed > bad + 0.2, "re-estimated statistics scored {fixed}, corrupted {bad}");
    corrupt(&mut tr, -2.0, 30.0);
    tr.recalibrate_batch_norm(&data.train, 6).unwrap();
    assert_eq!(tr.export().unwrap().layers, want.layers);
    assert_eq!(tr.accuracy(&data.valid), fixed);
    let momenta: Vec<f64> =
        tr.model.layers.iter().filter_map(|l| l.bn.as_ref().map(|b| b.momentum)).collect();
    assert!(momenta.iter().all(|&m| m == 0.1), "momentum left at {momenta:?}");

    // Activations that overflow leave the statistics as they were.
    let kept = stats(&tr);
    let conv = tr.model.layers.iter_mut().find_map(|l| l.conv.as_mut()).unwrap();
    conv.weight = conv.weight.clone().map(|w| w.mul_scalar(1e30));
    tr.recalibrate_batch_norm(&data.train, 2).unwrap();
    let after = stats(&tr);
    assert!(after.iter().flatten().all(|v| v.is_finite()), "non-finite statistics kept");
    assert_eq!(after[0], kept[0], "the first batch norm reads the overflowing layer");
}

/// A member copied from another (PBT's exploit) trains its own batch-norm
/// statistics: Burn's `clone()` shares a running state between copies, and
/// the copy must not move the statistics of the network it came from.
#[test]
fn a_copied_member_trains_statistics_of_its_own() {
    let data = dataset(600);
    let mut c = TrainConfig::new(DatasetKind::FashionMnist);
    c.arch = "resnet14".into();
    c.valid_size = 200;
    let source = Trainer::new(c.clone(), &Device::flex()).unwrap();
    c.seed += 1;
    let mut copy = Trainer::new(c, &Device::flex()).unwrap();
    copy.copy_from(&source);
    let before = stats(&source);
    assert!(!before.is_empty(), "resnet14 has batch norms");
    assert_eq!(stats(&copy), before, "a copy starts from the source's statistics");
    assert_eq!(copy.train_steps(&data, 3, true).unwrap(), 3);
    assert_ne!(stats(&copy), before, "training moved no statistic of the copy");
    assert_eq!(stats(&source), before, "training the copy moved the source's statistics");
}
