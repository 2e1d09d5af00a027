//! Imports real ONNX exports (fixtures written by `tests/fixtures/make_fixtures.py`
//! with PyTorch and onnx; reference outputs from onnxruntime) and checks the
//! description's float evaluator against onnxruntime, the refusals, and one
//! imported model under the real two-party protocol.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use delphi_net::eval::eval_float;
use delphi_net::{Activation, Network, Normalization, Op, Padding};
use delphi_onnx::{import, import_bytes, ImportOptions, OnnxError};
use onnx_ir::{AttributeProto, AttributeType, Message, ModelProto, NodeProto, TensorProto};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Reference {
    shape: Vec<usize>,
    inputs: Vec<Vec<f32>>,
    outputs: Vec<Vec<f32>>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = |k: &str| -> Vec<Vec<f32>> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect()
    };
    Reference {
        shape: v["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect(),
        inputs: rows("inputs"),
        outputs: rows("outputs"),
    }
}

fn imported(name: &str) -> Network {
    let got = import(&fixture(&format!("{name}.onnx")), &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    got.network
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: output length");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * (1.0 + w.abs());
        assert!((g - w).abs() <= tol, "{name}: output {k}: description {g} vs onnxruntime {w}");
    }
}

fn check_against_onnxruntime(name: &str) -> Network {
    let net = imported(name);
    let r = reference(name);
    assert_eq!(
        vec![net.input.channels, net.input.height, net.input.width],
        r.shape,
        "{name}: input shape"
    );
    for (x, y) in r.inputs.iter().zip(&r.outputs) {
        let out = eval_float(&net, x).unwrap();
        assert_close(name, &out, y);
    }
    net
}

fn count(net: &Network, f: impl Fn(&Op) -> bool) -> usize {
    net.layers.iter().filter(|l| f(&l.op)).count()
}

#[test]
fn pytorch_cnn_matches_onnxruntime() {
    let net = check_against_onnxruntime("cnn");
    // conv–bn(folded by the exporter)–relu–pool–conv(stride 2)–relu–conv(5×5, pad 1)–relu–dense–relu–dense
    assert_eq!(count(&net, |o| matches!(o, Op::Conv2d { .. })), 3);
    assert_eq!(count(&net, |o| matches!(o, Op::Dense { .. })), 2);
    assert_eq!(net.activation_layers().len(), 4);
    assert!(net
        .layers
        .iter()
        .any(|l| matches!(l.op, Op::Conv2d { kernel: 5, padding: Padding::Explicit(1), .. })));
    assert!(net
        .layers
        .iter()
        .any(|l| matches!(l.op, Op::Conv2d { stride: 2, padding: Padding::Same, .. })));
    // The description survives a save and load.
    let dir = std::env::temp_dir().join(format!("delphi-onnx-{}", std::process::id()));
    let p = dir.join("cnn.json");
    net.save(&p, delphi_net::WeightStorage::Sidecar).unwrap();
    assert_eq!(Network::load(&p).unwrap().layers, net.layers);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn residual_blocks_with_projection_match_onnxruntime() {
    // Dynamo exporter (opset 18): batch norm folded into the convs, ReduceMean pooling.
    let net = check_against_onnxruntime("residual");
    assert_eq!(count(&net, |o| matches!(o, Op::Residual { .. })), 2);
    assert!(net.layers.iter().any(|l| matches!(l.op, Op::Conv2d { kernel: 1, stride: 2, .. })));
    // TorchScript exporter without constant folding: BatchNormalization nodes
    // stay batch-norm layers, GlobalAveragePool and Flatten.
    let bn = check_against_onnxruntime("residual_bn");
    assert_eq!(count(&bn, |o| matches!(o, Op::BatchNorm { .. })), 6);
    assert_eq!(count(&bn, |o| matches!(o, Op::Residual { .. })), 2);
    assert_eq!(bn.activation_layers().len(), 5);
    // Folding the batch norms gives the same function.
    let folded = bn.fold_batch_norm().unwrap();
    let r = reference("residual_bn");
    assert_close("residual_bn folded", &eval_float(&folded, &r.inputs[0]).unwrap(), &r.outputs[0]);
}

#[test]
fn quadratic_patterns_become_quadratic_activations() {
    let net = check_against_onnxruntime("quad");
    let quads: Vec<(f32, f32, f32)> = net
        .layers
        .iter()
        .filter_map(|l| match l.op {
            Op::Activation(Activation::Quad { a, b, c }) => Some((a, b, c)),
            _ => None,
        })
        .collect();
    let want = [(0.15, 0.5, 0.1), (0.1, 0.6, -0.05), (0.05, 0.9, 0.0)];
    assert_eq!(quads.len(), 3, "{quads:?}");
    for ((a, b, c), (wa, wb, wc)) in quads.iter().zip(want) {
        assert!((a - wa).abs() < 1e-6 && (b - wb).abs() < 1e-6 && (c - wc).abs() < 1e-6);
    }
    assert_eq!(count(&net, |o| matches!(o, Op::Activation(Activation::Relu))), 0);
}

fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[test]
fn keras_style_nhwc_graph_with_softmax() {
    let got = import(&fixture("keras_style.onnx"), &ImportOptions::default()).unwrap();
    let net = got.network;
    assert!(got.notes.iter().any(|n| n.contains("NHWC")), "{:?}", got.notes);
    assert!(got.notes.iter().any(|n| n.contains("Softmax")), "{:?}", got.notes);
    assert_eq!((net.input.channels, net.input.height, net.input.width), (1, 28, 28));
    let r = reference("keras_style");
    let (h, w, c) = (28, 28, 1);
    for (x, y) in r.inputs.iter().zip(&r.outputs) {
        // The fixture's inputs are NHWC; the description takes CHW.
        let mut chw = vec![0f32; x.len()];
        for yy in 0..h {
            for xx in 0..w {
                for cc in 0..c {
                    chw[(cc * h + yy) * w + xx] = x[(yy * w + xx) * c + cc];
                }
            }
        }
        let logits = eval_float(&net, &chw).unwrap();
        assert_close("keras_style", &softmax(&logits), y);
    }
}

#[test]
fn trained_fashion_cnn_keeps_its_predictions() {
    let net = check_against_onnxruntime("fm-cnn");
    let text = std::fs::read_to_string(fixture("fm-cnn.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["test_accuracy"].as_f64().unwrap() > 0.8);
    assert!(net.metadata.input_normalization.is_none());
}

#[test]
fn maxpool_matches_onnxruntime_and_runs_under_the_protocol() {
    // PyTorch's Conv → ReLU → MaxPool2d(2) → Linear.
    let net = check_against_onnxruntime("maxpool");
    assert_eq!(count(&net, |o| matches!(o, Op::MaxPool { kernel: 2, stride: 2, padding: 0 })), 1);
    let prog = delphi_net::FixedProgram::lower(&net).unwrap();
    // The ReLU before the pool is fused into it: one ReLU per window
    // (4·14·14) plus 3 comparisons per window, not 4·28·28 + 3 per window.
    let relus: usize = prog
        .nodes
        .iter()
        .filter(|n| matches!(n.op, delphi_net::FixedOp::Relu { .. }))
        .map(|n| n.active_len())
        .sum();
    assert_eq!(relus, 4 * 14 * 14 * 4);
    let r = reference("maxpool");
    let x = prog.encode_input(&r.inputs[0]).unwrap();
    let report = delphi_engine::run::run_local(&prog, std::slice::from_ref(&x), &|_| {}).unwrap();
    assert!(report.inferences[0].correct, "secure result differs from the fixed-point reference");
    let y = prog.eval(&x).unwrap();
    let class = (0..y.len()).max_by_key(|&k| y[k].to_signed()).unwrap();
    assert_eq!(class, delphi_net::eval::argmax(&r.outputs[0]));
}

#[test]
fn a_depthwise_separable_cnn_matches_onnxruntime_and_runs_under_the_protocol() {
    // Conv → ReLU → depthwise Conv (group 8) → BatchNorm → ReLU → 1×1 Conv →
    // ReLU → MaxPool → Flatten → Gemm(transB), dynamic batch axis.
    let net = check_against_onnxruntime("separable");
    let groups: Vec<usize> = net
        .layers
        .iter()
        .filter_map(|l| match l.op {
            Op::Conv2d { groups, .. } => Some(groups),
            _ => None,
        })
        .collect();
    assert_eq!(groups, vec![1, 8, 1]);
    let prog = delphi_net::FixedProgram::lower(&net).unwrap();
    let r = reference("separable");
    let x = prog.encode_input(&r.inputs[0]).unwrap();
    let report = delphi_engine::run::run_local(&prog, std::slice::from_ref(&x), &|_| {}).unwrap();
    assert!(report.inferences[0].correct, "secure result differs from the fixed-point reference");
    // The depthwise layer (8 channels of 28×28): the spaced layout sends
    // 3 input polynomials for 3 results, the ordinary one 1 for 8 — the
    // spaced one has fewer polynomials in all (Packing::new), and 3
    // products, not 8.
    let dw = prog
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            delphi_net::FixedOp::Linear { op, .. } if op.groups == 8 => Some(*op),
            _ => None,
        })
        .unwrap();
    let p = delphi_net::packing::Packing::new(&dw).unwrap();
    assert!(matches!(p, delphi_net::packing::Packing::Depthwise { .. }), "{p:?}");
    assert_eq!((p.input_polys(), p.output_polys(), p.products()), (3, 3, 3));
}

#[test]
fn user_normalisation_is_recorded() {
    let opts = ImportOptions {
        normalization: Some(Normalization { mean: vec![0.286], std: vec![0.353], pixels: None }),
        ..ImportOptions::default()
    };
    let net = import(&fixture("cnn.onnx"), &opts).unwrap().network;
    let n = net.metadata.input_normalization.unwrap();
    assert_eq!((n.mean, n.std), (vec![0.286], vec![0.353]));
}

// Small graphs written node by node, for what the fixtures do not cover.

fn tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.to_vec();
    t.data_type = 1;
    t.float_data = v.to_vec();
    t
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

/// A model on a 1×4×4 input: the given nodes, then the output `out` (which
/// must be a vector).
fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, out: &str) -> Vec<u8> {
    model_on(&[1, 1, 4, 4], nodes, inits, out)
}

fn model_on(dims: &[i64], nodes: Vec<NodeProto>, inits: Vec<TensorProto>, out: &str) -> Vec<u8> {
    let mut m = ModelProto::new();
    m.ir_version = 8;
    m.opset_import.push(Default::default());
    m.opset_import[0].version = 13;
    let g = m.graph.mut_or_insert_default();
    g.name = "g".into();
    g.node = nodes;
    g.initializer = inits;
    let mut input = onnx_ir::ValueInfoProto::new();
    input.name = "x".into();
    {
        let tt = input.type_.mut_or_insert_default().mut_tensor_type();
        tt.elem_type = 1;
        let shape = tt.shape.mut_or_insert_default();
        for &d in dims {
            shape.dim.push(Default::default());
            if let Some(dim) = shape.dim.last_mut() {
                dim.set_dim_value(d);
            }
        }
    }
    g.input = vec![input];
    let mut output = onnx_ir::ValueInfoProto::new();
    output.name = out.into();
    g.output = vec![output];
    m.write_to_bytes().unwrap()
}

fn conv_nodes(pads: &[i64], group: i64) -> (Vec<NodeProto>, Vec<TensorProto>) {
    let w: Vec<f32> = (0..18).map(|k| (k as f32 - 9.0) / 10.0).collect();
    (
        vec![
            node(
                "Conv",
                "conv",
                &["x", "w"],
                "c",
                vec![
                    ints_attr("kernel_shape", &[3, 3]),
                    ints_attr("pads", pads),
                    int_attr("group", group),
                ],
            ),
            node("Flatten", "flat", &["c"], "f", vec![int_attr("axis", 1)]),
        ],
        vec![tensor("w", &[2, 1, 3, 3], &w)],
    )
}

fn refused(bytes: &[u8]) -> (String, String, String) {
    match import_bytes(bytes, "t.onnx", &ImportOptions::default()) {
        Err(OnnxError::Unsupported { node, op, reason }) => (node, op, reason),
        Err(other) => panic!("expected Unsupported, got {other}"),
        Ok(_) => panic!("expected a refusal"),
    }
}

#[test]
fn hand_written_graphs_import_and_refuse_by_name() {
    // A plain conv + flatten imports (the output is a vector of 2·4·4 values).
    let (nodes, inits) = conv_nodes(&[1, 1, 1, 1], 1);
    let net = import_bytes(&model(nodes, inits, "f"), "t.onnx", &ImportOptions::default())
        .unwrap()
        .network;
    assert_eq!(net.output_shape().unwrap().channels, 32);

    // Asymmetric padding.
    let (nodes, inits) = conv_nodes(&[0, 0, 1, 1], 1);
    let (node_name, op, reason) = refused(&model(nodes, inits, "f"));
    assert_eq!((node_name.as_str(), op.as_str()), ("conv", "Conv"));
    assert!(reason.contains("same on every side"), "{reason}");

    // A group that does not fit the input's channels (one channel, 2 groups).
    let (nodes, inits) = conv_nodes(&[1, 1, 1, 1], 2);
    let (_, _, reason) = refused(&model(nodes, inits, "f"));
    assert!(reason.contains("groups"), "{reason}");

    // ReLU6 (Clip(x, 0, 6)).
    let (mut nodes, mut inits) = conv_nodes(&[1, 1, 1, 1], 1);
    nodes.insert(1, node("Clip", "relu6", &["c", "lo", "hi"], "r6", vec![]));
    nodes[2].input = vec!["r6".into()];
    inits.push(tensor("lo", &[], &[0.0]));
    inits.push(tensor("hi", &[], &[6.0]));
    let (node_name, op, reason) = refused(&model(nodes, inits, "f"));
    assert_eq!((node_name.as_str(), op.as_str()), ("relu6", "Clip"));
    assert!(reason.contains("ReLU6") && reason.contains("use Relu"), "{reason}");

    // Sigmoid.
    let (mut nodes, inits) = conv_nodes(&[1, 1, 1, 1], 1);
    nodes.insert(1, node("Sigmoid", "sig", &["c"], "s", vec![]));
    nodes[2].input = vec!["s".into()];
    let (node_name, op, reason) = refused(&model(nodes, inits, "f"));
    assert_eq!((node_name.as_str(), op.as_str()), ("sig", "Sigmoid"));
    assert!(reason.contains("Relu") && reason.contains("quadratic"), "{reason}");

    // Concat of two network tensors.
    let (mut nodes, inits) = conv_nodes(&[1, 1, 1, 1], 1);
    nodes.insert(1, node("Concat", "cat", &["c", "c"], "k", vec![int_attr("axis", 1)]));
    nodes[2].input = vec!["k".into()];
    let (node_name, op, reason) = refused(&model(nodes, inits, "f"));
    assert_eq!((node_name.as_str(), op.as_str()), ("cat", "Concat"));
    assert!(reason.contains("residual"), "{reason}");

    // A batch norm after a residual add cannot be folded anywhere.
    let (mut nodes, mut inits) = conv_nodes(&[1, 1, 1, 1], 1);
    nodes.pop();
    nodes.push(node("Relu", "r", &["c"], "r", vec![]));
    nodes.push(node("Add", "add", &["c", "r"], "a", vec![]));
    nodes.push(node("BatchNormalization", "bn", &["a", "g", "b", "m", "v"], "n", vec![]));
    nodes.push(node("Flatten", "flat", &["n"], "f", vec![int_attr("axis", 1)]));
    for (k, v) in [("g", 1.5), ("b", 0.1), ("m", 0.2), ("v", 2.0)] {
        inits.push(tensor(k, &[2], &[v, v]));
    }
    let (node_name, op, reason) = refused(&model(nodes, inits, "f"));
    assert_eq!((node_name.as_str(), op.as_str()), ("bn", "BatchNormalization"));
    assert!(reason.contains("residual"), "{reason}");
}

#[test]
fn in_graph_input_normalisation_is_folded_into_the_metadata() {
    let (mut nodes, mut inits) = conv_nodes(&[1, 1, 1, 1], 1);
    nodes[0].input[0] = "xd".into();
    nodes.insert(0, node("Sub", "sub", &["x", "mean"], "xs", vec![]));
    nodes.insert(1, node("Div", "div", &["xs", "std"], "xd", vec![]));
    inits.push(tensor("mean", &[1], &[0.5]));
    inits.push(tensor("std", &[1], &[0.25]));
    let bytes = model(nodes, inits, "f");
    let got = import_bytes(&bytes, "t.onnx", &ImportOptions::default()).unwrap();
    let n = got.network.metadata.input_normalization.clone().unwrap();
    assert!((n.mean[0] - 0.5).abs() < 1e-6 && (n.std[0] - 0.25).abs() < 1e-6, "{n:?}");
    // The description applied to normalised input equals the graph on raw input.
    let raw: Vec<f32> = (0..16).map(|k| k as f32 / 16.0).collect();
    let mut x = raw.clone();
    n.apply(&mut x, got.network.input).unwrap();
    let via_norm = eval_float(&got.network, &x).unwrap();
    let (nodes, inits) = conv_nodes(&[1, 1, 1, 1], 1);
    let plain = import_bytes(&model(nodes, inits, "f"), "t.onnx", &ImportOptions::default())
        .unwrap()
        .network;
    let pre: Vec<f32> = raw.iter().map(|v| (v - 0.5) / 0.25).collect();
    assert_close("normalised", &via_norm, &eval_float(&plain, &pre).unwrap());
}

#[test]
fn garbage_is_not_a_model() {
    assert!(matches!(
        import_bytes(b"\x08\x96\x01 not a protobuf \xff\xff", "x.onnx", &ImportOptions::default()),
        Err(OnnxError::Parse(_) | OnnxError::Model(_))
    ));
    let e = import(Path::new("/nonexistent/model.onnx"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::Io { .. }));
}

#[test]
fn imported_model_runs_under_the_protocol() {
    // The residual network (batch norms, projection shortcut) through the real
    // two-party protocol over loopback TCP: secure logits equal the reference.
    let net = imported("residual_bn");
    let prog = delphi_net::FixedProgram::lower(&net).unwrap();
    let r = reference("residual_bn");
    let x = prog.encode_input(&r.inputs[0]).unwrap();
    let report = delphi_engine::run::run_local(&prog, std::slice::from_ref(&x), &|_| {}).unwrap();
    let inf = &report.inferences[0];
    assert!(inf.correct, "secure result differs from the fixed-point reference");
    // And the fixed-point class agrees with onnxruntime's.
    let y = prog.eval(&x).unwrap();
    let class = (0..y.len()).max_by_key(|&k| y[k].to_signed()).unwrap();
    assert_eq!(class, delphi_net::eval::argmax(&r.outputs[0]));
}

#[test]
fn a_keras_rescaling_before_the_nhwc_transpose_is_folded_into_the_input() {
    let (mut nodes, mut inits) = conv_nodes(&[1, 1, 1, 1], 1);
    nodes[0].input[0] = "t".into();
    nodes.insert(0, node("Mul", "rescale", &["x", "k"], "xs", vec![]));
    nodes
        .insert(1, node("Transpose", "nchw", &["xs"], "t", vec![ints_attr("perm", &[0, 3, 1, 2])]));
    inits.push(tensor("k", &[], &[1.0 / 255.0]));
    let got = import_bytes(
        &model_on(&[1, 4, 4, 1], nodes, inits, "f"),
        "t.onnx",
        &ImportOptions::default(),
    )
    .unwrap();
    assert!(got.notes.iter().any(|n| n.contains("NHWC")), "{:?}", got.notes);
    let n = got.network.metadata.input_normalization.unwrap();
    assert!((n.std[0] - 255.0).abs() < 1e-3 && n.mean[0] == 0.0, "{n:?}");
}
