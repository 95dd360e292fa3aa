//! Unit tests of the ONNX importer on small models built in the test: results against host
//! arithmetic written out here, names kept, batch-symbolic shape arithmetic, and hostile
//! files giving typed errors.

use burn::tensor::{Device, TensorData};
use burn_quant_export::onnx::proto::{
    AttributeProto, DataType, Dim, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, ValueInfoProto,
};

use super::{OnnxModel, ParamSource};
use crate::GraphError;
use crate::interp::{Interpreter, to_host, upload};

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

fn model(
    opset: i64,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: &[&str],
) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: "test".into(),
            initializer: inits,
            input: inputs,
            output: outputs
                .iter()
                .map(|o| ValueInfoProto {
                    name: o.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn f32_input(name: &str, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto::tensor(name, DataType::Float, dims)
}

/// Runs an imported single-input model on `x`.
fn run(m: &OnnxModel, x: &[f32], shape: &[usize], batched: bool) -> Vec<f32> {
    let device = Device::flex();
    let imported = if batched {
        m.import_batched(&[shape.to_vec()])
    } else {
        m.import(&[shape.to_vec()])
    }
    .expect("import");
    let mut interp = Interpreter::new(&imported.graph, &device);
    let t = upload(&TensorData::new(x.to_vec(), shape.to_vec()), &device);
    to_host(interp.run(vec![t]).expect("run").remove(0)).unwrap()
}

fn close(a: &[f32], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((*x as f64 - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

/// `Gemm(transB) → Relu → MatMul → Add`: two Linear layers named after their ONNX nodes,
/// parameters after their initializers (the Gemm weight transposed into Burn's `[in, out]`),
/// the bias Add absorbed, and values equal to the arithmetic written out.
#[test]
fn gemm_and_matmul_become_named_linear_layers() {
    let w1: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 7.0).collect(); // [4, 3] (transB)
    let b1 = [0.1f32, -0.2, 0.3, 0.0];
    let w2: Vec<f32> = (0..8).map(|i| (i as f32 - 3.0) / 5.0).collect(); // [4, 2]
    let b2 = [0.5f32, -0.5];
    let m = model(
        13,
        vec![
            node(
                "Gemm",
                "fc1",
                &["x", "w1", "b1"],
                &["h"],
                vec![AttributeProto::int("transB", 1)],
            ),
            node("Relu", "act", &["h"], &["a"], vec![]),
            node("MatMul", "fc2", &["a", "w2"], &["p"], vec![]),
            node("Add", "fc2_bias", &["b2", "p"], &["y"], vec![]),
        ],
        vec![
            TensorProto::f32s("w1", &[4, 3], &w1),
            TensorProto::f32s("b1", &[4], &b1),
            TensorProto::f32s("w2", &[4, 2], &w2),
            TensorProto::f32s("b2", &[2], &b2),
        ],
        vec![f32_input("x", &[Dim::Param("N".into()), Dim::Fixed(3)])],
        &["y"],
    );
    let m = OnnxModel::from_bytes(&m.to_bytes()).unwrap();
    let imported = m.import(&[vec![2, 3]]).unwrap();
    let g = &imported.graph;
    let layers: Vec<(&str, &str)> = g
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.op.kind()))
        .collect();
    assert_eq!(
        layers,
        [("fc1", "Linear"), ("act", "Relu"), ("fc2", "Linear")]
    );
    let paths: Vec<&str> = g.params.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["w1", "b1", "w2", "b2"]);
    assert_eq!(imported.param_sources[0], ParamSource::Transposed);
    assert_eq!(g.value(g.params[0].value).shape, [3, 4]);
    assert_eq!(imported.value_named("y"), Some(g.outputs[0]));
    let x = [1.0f32, -2.0, 0.5, 0.25, 0.75, -1.5];
    let got = run(&m, &x, &[2, 3], false);
    let mut want = Vec::new();
    for r in 0..2 {
        let h: Vec<f64> = (0..4)
            .map(|o| {
                let s: f64 = (0..3)
                    .map(|i| x[r * 3 + i] as f64 * w1[o * 3 + i] as f64)
                    .sum();
                (s + b1[o] as f64).max(0.0)
            })
            .collect();
        for o in 0..2 {
            want.push((0..4).map(|i| h[i] * w2[i * 2 + o] as f64).sum::<f64>() + b2[o] as f64);
        }
    }
    close(&got, &want, 1e-5);
}

/// The flatten a dynamic-batch export writes, `Shape → Gather → Unsqueeze → Concat →
/// Reshape`, folds on the host; imported batch-symbolic, one graph runs at batch 1 and 3,
/// and opset 11's Softmax over axis 1 of a rank-3 tensor normalises the whole flattened row.
#[test]
fn dynamic_flatten_folds_and_the_batch_stays_symbolic() {
    let axis0 = TensorProto::i64s("zero", &[], &[0]);
    let minus1 = TensorProto::i64s("minus1", &[1], &[-1]);
    let m = model(
        11,
        vec![
            node("Shape", "shape", &["x"], &["s"], vec![]),
            node(
                "Gather",
                "batch",
                &["s", "zero"],
                &["n"],
                vec![AttributeProto::int("axis", 0)],
            ),
            node(
                "Unsqueeze",
                "n1",
                &["n"],
                &["n_1"],
                vec![AttributeProto::ints("axes", &[0])],
            ),
            node(
                "Concat",
                "target",
                &["n_1", "minus1"],
                &["t"],
                vec![AttributeProto::int("axis", 0)],
            ),
            node(
                "Softmax",
                "sm",
                &["x"],
                &["p"],
                vec![AttributeProto::int("axis", 1)],
            ),
            node("Reshape", "flat", &["p", "t"], &["y"], vec![]),
        ],
        vec![axis0, minus1],
        vec![f32_input(
            "x",
            &[Dim::Param("N".into()), Dim::Fixed(2), Dim::Fixed(3)],
        )],
        &["y"],
    );
    let m = OnnxModel::from_bytes(&m.to_bytes()).unwrap();
    let imported = m.import_batched(&[vec![1, 2, 3]]).unwrap();
    assert_eq!(imported.graph.capture_batch, Some(1));
    assert!(
        imported.graph.nodes.iter().all(|n| n.op.kind() != "Concat"),
        "folded on the host"
    );
    for batch in [1usize, 3] {
        let x: Vec<f32> = (0..batch * 6).map(|i| (i as f32 * 0.37).sin()).collect();
        let got = run(&m, &x, &[batch, 2, 3], true);
        let mut want = Vec::new();
        for row in x.chunks(6) {
            let e: Vec<f64> = row.iter().map(|&v| (v as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            want.extend(e.iter().map(|v| v / s));
        }
        close(&got, &want, 1e-6);
    }
}

/// Paddle's `MaxPool` with pads `[0, 0, 1, 1]` (only after the input): the surplus side is
/// padded with −∞, so the last window sees the last row and column alone.
#[test]
fn asymmetric_max_pool_pads_one_side() {
    let m = model(
        11,
        vec![node(
            "MaxPool",
            "pool",
            &["x"],
            &["y"],
            vec![
                AttributeProto::ints("kernel_shape", &[2, 2]),
                AttributeProto::ints("strides", &[2, 2]),
                AttributeProto::ints("pads", &[0, 0, 1, 1]),
            ],
        )],
        vec![],
        vec![f32_input(
            "x",
            &[Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(3)],
        )],
        &["y"],
    );
    let m = OnnxModel::from_bytes(&m.to_bytes()).unwrap();
    let x = [-1.0f32, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0];
    let got = run(&m, &x, &[1, 1, 3, 3], false);
    close(&got, &[-1.0, -3.0, -7.0, -9.0], 0.0);
}

fn expect_import_error(result: Result<impl std::fmt::Debug, GraphError>, needles: &[&str]) {
    match result {
        Err(e @ GraphError::Import { .. }) => {
            let msg = e.to_string();
            for n in needles {
                assert!(msg.contains(n), "`{msg}` does not mention `{n}`");
            }
        }
        other => panic!("expected an import error mentioning {needles:?}, got {other:?}"),
    }
}

fn relu_model() -> ModelProto {
    model(
        13,
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![TensorProto::f32s("unused", &[2], &[1.0, 2.0])],
        vec![f32_input("x", &[Dim::Fixed(2)])],
        &["y"],
    )
}

#[test]
fn hostile_files_give_typed_errors_never_a_panic() {
    let bytes = relu_model().to_bytes();
    // Every truncation either decodes to a smaller valid message or fails cleanly.
    for len in 0..bytes.len() {
        let _ = OnnxModel::from_bytes(&bytes[..len]).and_then(|m| m.import(&[vec![2]]));
    }
    // Deterministic junk.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let junk: Vec<u8> = (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = OnnxModel::from_bytes(&junk).and_then(|m| m.import(&[vec![2]]));
    }
    let x = || vec![f32_input("x", &[Dim::Fixed(2)])];
    // A cycle.
    let cyclic = model(
        13,
        vec![
            node("Relu", "a", &["b_out"], &["a_out"], vec![]),
            node("Relu", "b", &["a_out"], &["b_out"], vec![]),
        ],
        vec![],
        x(),
        &["a_out"],
    );
    expect_import_error(OnnxModel::from_bytes(&cyclic.to_bytes()), &["cycle"]);
    // A read of a value nothing defines.
    let missing = model(
        13,
        vec![node("Add", "add", &["x", "ghost"], &["y"], vec![])],
        vec![],
        x(),
        &["y"],
    );
    expect_import_error(
        OnnxModel::from_bytes(&missing.to_bytes()),
        &["`add` (Add)", "ghost"],
    );
    // An output nothing defines.
    let no_out = model(
        13,
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![],
        x(),
        &["z"],
    );
    expect_import_error(OnnxModel::from_bytes(&no_out.to_bytes()), &["`z`"]);
    // Absurd and negative initializer dims, and data that does not fill the dims.
    for dims in [vec![1i64 << 40, 1 << 40], vec![-3, 2]] {
        let mut t = TensorProto::f32s("w", &[2], &[1.0, 2.0]);
        t.dims = dims;
        let m = model(
            13,
            vec![node("Add", "add", &["x", "w"], &["y"], vec![])],
            vec![t],
            x(),
            &["y"],
        );
        let r = OnnxModel::from_bytes(&m.to_bytes()).and_then(|m| m.import(&[vec![2]]));
        expect_import_error(r, &["impossible dims"]);
    }
    let mut short = TensorProto::f32s("w", &[2], &[1.0, 2.0]);
    short.dims = vec![1];
    let m = model(
        13,
        vec![node("Add", "add", &["x", "w"], &["y"], vec![])],
        vec![short],
        x(),
        &["y"],
    );
    let r = OnnxModel::from_bytes(&m.to_bytes()).and_then(|m| m.import(&[vec![2]]));
    expect_import_error(r, &["`w`", "data bytes"]);
    // An op and an attribute the importer does not have, named with their node.
    let foo = model(
        13,
        vec![node("FooBar", "weird", &["x"], &["y"], vec![])],
        vec![],
        x(),
        &["y"],
    );
    let r = OnnxModel::from_bytes(&foo.to_bytes())
        .unwrap()
        .import(&[vec![2]]);
    expect_import_error(r, &["`weird` (FooBar)", "not supported"]);
    let attr = model(
        13,
        vec![node(
            "Relu",
            "r",
            &["x"],
            &["y"],
            vec![AttributeProto::int("frobnicate", 1)],
        )],
        vec![],
        x(),
        &["y"],
    );
    let r = OnnxModel::from_bytes(&attr.to_bytes())
        .unwrap()
        .import(&[vec![2]]);
    expect_import_error(r, &["`r` (Relu)", "frobnicate"]);
    // An opset outside the supported range; shapes that contradict the declaration.
    let mut old = relu_model();
    old.opset_import[0].version = 3;
    expect_import_error(OnnxModel::from_bytes(&old.to_bytes()), &["opset 3"]);
    let m = OnnxModel::from_bytes(&relu_model().to_bytes()).unwrap();
    expect_import_error(m.import(&[vec![5]]), &["graph input `x`", "declared 2"]);
    expect_import_error(m.import(&[]), &["1 runtime inputs"]);
    // A Range bound and a Clip limit that are not one value each.
    let empty = TensorProto::f32s("e", &[0], &[]);
    let one = TensorProto::f32s("one", &[], &[1.0]);
    let range = model(
        13,
        vec![
            node("Range", "rg", &["e", "one", "one"], &["r"], vec![]),
            node("Add", "add", &["x", "r"], &["y"], vec![]),
        ],
        vec![empty.clone(), one],
        x(),
        &["y"],
    );
    let r = OnnxModel::from_bytes(&range.to_bytes())
        .unwrap()
        .import(&[vec![2]]);
    expect_import_error(r, &["`rg` (Range)", "expected one"]);
    let clip = model(
        13,
        vec![node("Clip", "cl", &["x", "e"], &["y"], vec![])],
        vec![empty],
        x(),
        &["y"],
    );
    let r = OnnxModel::from_bytes(&clip.to_bytes())
        .unwrap()
        .import(&[vec![2]]);
    expect_import_error(r, &["`cl` (Clip)", "expected one"]);
    // A reshape to an impossible shape names its node.
    let t = TensorProto::i64s("t", &[1], &[7]);
    let bad = model(
        13,
        vec![node("Reshape", "rs", &["x", "t"], &["y"], vec![])],
        vec![t],
        x(),
        &["y"],
    );
    let r = OnnxModel::from_bytes(&bad.to_bytes())
        .unwrap()
        .import(&[vec![2]]);
    expect_import_error(r, &["`rs` (Reshape)", "cannot reshape"]);
}

/// A file whose nodes are out of order is sorted (onnxruntime accepts those too); the
/// result equals the sorted model's.
#[test]
fn unsorted_nodes_are_sorted_topologically() {
    let m = model(
        13,
        vec![
            node("Neg", "second", &["a"], &["y"], vec![]),
            node("Relu", "first", &["x"], &["a"], vec![]),
        ],
        vec![],
        vec![f32_input("x", &[Dim::Fixed(3)])],
        &["y"],
    );
    let m = OnnxModel::from_bytes(&m.to_bytes()).unwrap();
    let got = run(&m, &[1.0, -2.0, 3.0], &[3], false);
    close(&got, &[-1.0, 0.0, -3.0], 0.0);
}

/// QDQ structures the importer does not turn into quantizers are errors naming the node:
/// QuantizeLinear's integer output read by anything but its DequantizeLinear, a pair whose
/// halves disagree, a zero scale.
#[test]
fn malformed_qdq_gives_typed_errors() {
    let scale = |name: &str, v: f32| TensorProto::f32s(name, &[], &[v]);
    let zp = |name: &str| TensorProto::raw(name, DataType::Uint8, &[], vec![128]);
    let x = || vec![f32_input("x", &[Dim::Fixed(4)])];
    let q = || node("QuantizeLinear", "q", &["x", "s", "z"], &["xq"], vec![]);
    let lone = model(
        13,
        vec![q(), node("Relu", "r", &["xq"], &["y"], vec![])],
        vec![scale("s", 0.1), zp("z")],
        x(),
        &["y"],
    );
    let r = OnnxModel::from_bytes(&lone.to_bytes())
        .unwrap()
        .import(&[vec![4]]);
    expect_import_error(r, &["`r` (Relu)", "integer output"]);
    let disagree = model(
        13,
        vec![
            q(),
            node("DequantizeLinear", "dq", &["xq", "s2", "z"], &["y"], vec![]),
        ],
        vec![scale("s", 0.1), scale("s2", 0.2), zp("z")],
        x(),
        &["y"],
    );
    let r = OnnxModel::from_bytes(&disagree.to_bytes())
        .unwrap()
        .import(&[vec![4]]);
    expect_import_error(r, &["`dq` (DequantizeLinear)", "another scale"]);
    let codes = TensorProto::raw("w", DataType::Int8, &[4, 2], vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let zero_scale = model(
        13,
        vec![
            node("DequantizeLinear", "wdq", &["w", "ws"], &["wf"], vec![]),
            node("MatMul", "mm", &["x2", "wf"], &["y"], vec![]),
        ],
        vec![codes, scale("ws", 0.0)],
        vec![f32_input("x2", &[Dim::Fixed(1), Dim::Fixed(4)])],
        &["y"],
    );
    let r = OnnxModel::from_bytes(&zero_scale.to_bytes())
        .unwrap()
        .import(&[vec![1, 4]]);
    expect_import_error(r, &["`wdq` (DequantizeLinear)", "scale is zero"]);
}

/// An int8 per-axis weight read by `Gemm(transB = 1)`: the graph holds the weight in Burn's
/// `[in, out]` layout, so codes and scales are transposed and the spec's axis moves with
/// them; the dequantized values are `q · s` per output channel.
#[test]
fn per_axis_gemm_weight_codes_follow_the_transpose() {
    let codes: Vec<i8> = vec![1, -2, 3, 4, -5, 6];
    let w = TensorProto::raw(
        "w",
        DataType::Int8,
        &[2, 3],
        codes.iter().map(|&c| c as u8).collect(),
    );
    let s = TensorProto::f32s("ws", &[2], &[0.5, 0.25]);
    let m = model(
        13,
        vec![
            node(
                "DequantizeLinear",
                "wdq",
                &["w", "ws"],
                &["wf"],
                vec![AttributeProto::int("axis", 0)],
            ),
            node(
                "Gemm",
                "fc",
                &["x", "wf"],
                &["y"],
                vec![AttributeProto::int("transB", 1)],
            ),
        ],
        vec![w, s],
        vec![f32_input("x", &[Dim::Fixed(1), Dim::Fixed(3)])],
        &["y"],
    );
    let m = OnnxModel::from_bytes(&m.to_bytes()).unwrap();
    let imported = m.import(&[vec![1, 3]]).unwrap();
    assert_eq!(imported.weight_quants.len(), 1);
    let wq = &imported.weight_quants[0];
    assert_eq!(wq.shape, [3, 2]);
    assert_eq!(wq.codes, [1, 4, -2, -5, 3, 6]);
    assert_eq!(wq.scales, [0.5, 0.25]);
    assert_eq!(
        wq.spec.granularity,
        burn_quant_core::Granularity::PerChannel { axis: 1 }
    );
    let device = Device::flex();
    let (qg, codes) = imported.quantized(&device).unwrap();
    assert_eq!(codes.weights.len(), 1);
    let x = burn::tensor::Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 3], [1, 3]), &device);
    let y: burn::tensor::Tensor<2> = qg.forward(&super::NoModel {}, x).unwrap();
    let got = y.into_data().try_into_vec::<f32>().unwrap();
    close(
        &got,
        &[(1.0 - 2.0 + 3.0) * 0.5, (4.0 - 5.0 + 6.0) * 0.25],
        0.0,
    );
}
