//! The Burn module computes what the description says.
#![allow(clippy::unwrap_used)]

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use delphi_net::builtin::build;
use delphi_net::eval::{eval_float, random_inputs};
use delphi_net::Placement;
use delphi_train::model::{values, Net};

fn close(net: &delphi_net::Network) {
    let device = Device::flex();
    let model = Net::from_description(net, true, &device).unwrap().valid();
    let xs = random_inputs(net.input.len(), 3, 7);
    let flat: Vec<f32> = xs.concat();
    let s = net.input;
    let x =
        Tensor::<4>::from_data(TensorData::new(flat, [3, s.channels, s.height, s.width]), &device);
    let got = values(model.forward(x));
    let classes = got.len() / 3;
    for (k, x) in xs.iter().enumerate() {
        let want = eval_float(net, x).unwrap();
        for (g, w) in got[k * classes..(k + 1) * classes].iter().zip(&want) {
            assert!((g - w).abs() <= 1e-3 * w.abs().max(1.0), "{}: {g} vs {w}", net.name);
        }
    }
    // Export gives the description back.
    let back = model.to_description(net).unwrap();
    assert_eq!(back.layers.len(), net.layers.len());
    let again = eval_float(&back, &xs[0]).unwrap();
    let want = eval_float(net, &xs[0]).unwrap();
    for (a, b) in again.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0));
    }
}

#[test]
fn burn_forward_equals_the_float_evaluator() {
    let mut cnn = build("small-cnn", 10, 3).unwrap();
    "RQR".parse::<Placement>().unwrap().apply(&mut cnn).unwrap();
    close(&cnn);
    let mut r = build("resnet32", 10, 4).unwrap();
    delphi_net::builtin::quad_last_with(&mut r, 3, delphi_net::builtin::BENCH_QUAD).unwrap();
    close(&r);
    close(&build("minionn", 10, 5).unwrap());
    // Max pooling, after a ReLU and after a quadratic; padded, odd windows.
    let mut m = build("small-cnn-max", 10, 6).unwrap();
    close(&m);
    "QRR".parse::<Placement>().unwrap().apply(&mut m).unwrap();
    if let delphi_net::Op::MaxPool { kernel, padding, .. } = &mut m.layers[2].op {
        (*kernel, *padding) = (3, 1);
    }
    close(&m);
    // Grouped and depthwise convolutions (weights [out][in / groups][k][k]).
    let mut g = delphi_net::Network::new("separable", delphi_net::Shape::new(1, 12, 12), 8);
    let conv = |cout: usize, k: usize, groups: usize| delphi_net::Op::Conv2d {
        out_channels: cout,
        kernel: k,
        stride: 1,
        padding: delphi_net::Padding::Same,
        bias: true,
        weight: vec![],
        bias_values: vec![],
        groups,
    };
    g.push(conv(8, 3, 1));
    g.push(delphi_net::Op::Activation(delphi_net::Activation::Relu));
    g.push(conv(8, 3, 8));
    g.push(delphi_net::Op::Activation(delphi_net::Activation::Relu));
    g.push(conv(16, 3, 4));
    g.push(delphi_net::Op::AvgPool { kernel: 2, stride: 2 });
    g.push(delphi_net::Op::Flatten);
    g.push(delphi_net::Op::Dense {
        out_features: 4,
        bias: true,
        weight: vec![],
        bias_values: vec![],
    });
    delphi_net::builtin::initialise(&mut g, 3).unwrap();
    close(&g);
}
