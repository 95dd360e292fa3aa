//! Structure of lowered graphs and errors that name the node (numerics against onnxruntime
//! are in the workspace's `tests/graph_onnx.rs`).

use burn::tensor::{Device, Distribution, Tensor};
use burn_quant_core::{QuantSpec, ScaleSource, ScaleStat};
use burn_quant_export::onnx::proto::{DataType, ModelProto};

use super::OnnxExport;
use crate::tests::models::{Encoder, Mlp, SmallCnn, warm_batch_norm};
use crate::{GraphError, GraphRecipe, capture, quantize_graph};

fn ops(model: &ModelProto) -> Vec<&str> {
    model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect()
}

fn w8a8() -> GraphRecipe {
    GraphRecipe::weights_and_inputs(
        QuantSpec::int8_weight_per_output_channel(),
        QuantSpec::int8_act_per_tensor(),
    )
}

#[test]
fn mlp_w8a8_lowers_to_qdq_with_the_calibrated_scales() {
    let device = Device::flex();
    let mlp = Mlp::new(12, 24, 5, &device);
    let x = Tensor::<2>::random([7, 12], Distribution::Normal(0.0, 2.0), &device);
    let graph = capture(&mlp, x.clone(), |m: &Mlp, x| m.forward(x)).unwrap();
    let qg = quantize_graph(&graph, &w8a8(), &device)
        .unwrap()
        .calibrate(&mlp, [x])
        .unwrap();
    let out = OnnxExport::quantized(&qg).bind(&mlp).qdq().unwrap();
    let model = &out.model;
    assert_eq!((model.default_opset(), model.ir_version), (Some(13), 7));
    let g = model.graph.as_ref().unwrap();
    // Weights as int8 codes (no float copy), per output channel (axis 1 of [d_in, d_out]).
    let codes: Vec<_> = g
        .initializer
        .iter()
        .filter(|t| t.dtype() == Some(DataType::Int8) && t.dims.len() == 2)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(codes, ["fc1.weight_quantized", "fc2.weight_quantized"]);
    assert!(!g.initializer.iter().any(|t| t.name == "fc1.weight"));
    let kinds = ops(model);
    assert_eq!(kinds.iter().filter(|k| **k == "QuantizeLinear").count(), 2);
    assert_eq!(
        kinds.iter().filter(|k| **k == "DequantizeLinear").count(),
        4
    );
    assert_eq!(kinds.iter().filter(|k| **k == "MatMul").count(), 2);
    // The input quantizer's scale is the calibrated one.
    let (n, node) = qg
        .graph
        .nodes
        .iter()
        .enumerate()
        .find(|(_, n)| n.name == "fc1.input_quant0")
        .unwrap();
    let crate::Op::Quant(q) = &node.op else {
        panic!("{n}")
    };
    let want = qg.quantizers.quantizers[q.quantizer]
        .scale
        .as_ref()
        .unwrap()
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let scale = g
        .initializer
        .iter()
        .find(|t| t.name == "fc1.input_quant0_scale")
        .unwrap();
    assert_eq!(scale.raw_data, want[0].to_le_bytes());
    assert_eq!(out.name_of(node.outputs[0]), Some("fc1.input_quant0"));
    assert_eq!(g.input[0].name, "input");
    assert_eq!(g.output[0].name, "output");
}

#[test]
fn transformer_lowers_layer_norm_gelu_and_attention_at_opset_17() {
    let device = Device::flex();
    let model = Encoder::new(&device);
    let x = Tensor::<3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &device);
    let graph = capture(&model, x, |m: &Encoder, x| m.forward(x)).unwrap();
    let onnx = graph.to_onnx(&model).unwrap();
    assert_eq!((onnx.default_opset(), onnx.ir_version), (Some(17), 8));
    let kinds = ops(&onnx);
    for k in [
        "LayerNormalization",
        "Softmax",
        "Erf",
        "Transpose",
        "Reshape",
        "MatMul",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
}

#[test]
fn int4_input_groups_raise_the_opset_to_21_and_reduce_forms_follow() {
    let device = Device::flex();
    let model = warm_batch_norm(SmallCnn::new(&device), &device);
    let x = Tensor::<4>::random([2, 1, 12, 12], Distribution::Normal(0.0, 1.0), &device);
    let graph = capture(&model, x, |m: &SmallCnn, x| m.forward(x)).unwrap();
    let qg = quantize_graph(
        &graph,
        &GraphRecipe::weights(QuantSpec::int4_weight_per_input_group(4)),
        &device,
    )
    .unwrap();
    let model_onnx = qg.to_onnx(&model).unwrap();
    assert_eq!(model_onnx.default_opset(), Some(21));
    let g = model_onnx.graph.as_ref().unwrap();
    assert!(
        g.initializer
            .iter()
            .any(|t| t.dtype() == Some(DataType::Int4))
    );
    // Folded BatchNorm: no BatchNormalization left, six weights stored as codes.
    let kinds = ops(&model_onnx);
    assert!(!kinds.contains(&"BatchNormalization"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "DequantizeLinear").count(),
        6
    );
    // Unfolded, the float graph keeps BatchNormalization.
    let float = graph.to_onnx(&model).unwrap();
    assert_eq!(
        ops(&float)
            .iter()
            .filter(|k| **k == "BatchNormalization")
            .count(),
        5
    );
}

#[test]
fn errors_name_the_node() {
    let device = Device::flex();
    let mlp = Mlp::new(6, 8, 3, &device);
    let x = Tensor::<2>::random([4, 6], Distribution::Normal(0.0, 1.0), &device);
    let graph = capture(&mlp, x.clone(), |m: &Mlp, x| m.forward(x)).unwrap();
    // A dynamic activation scale has no static value to export.
    let dynamic =
        QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax));
    let recipe =
        GraphRecipe::weights_and_inputs(QuantSpec::int8_weight_per_output_channel(), dynamic);
    let qg = quantize_graph(&graph, &recipe, &device).unwrap();
    match qg.to_onnx(&mlp).unwrap_err() {
        GraphError::Onnx { node, source } => {
            assert_eq!(node, "fc1.input_quant0");
            assert!(source.to_string().contains("dynamic"), "{source}");
        }
        other => panic!("expected an ONNX error, got {other:?}"),
    }
    // A quantized graph without its quantizers.
    let qg = quantize_graph(&graph, &w8a8(), &device).unwrap();
    let err = OnnxExport::new(&qg.graph).qdq().unwrap_err();
    assert!(err.to_string().contains("fc1.weight_quant"), "{err}");
    // An uncalibrated static scale.
    match qg.to_onnx(&mlp).unwrap_err() {
        GraphError::Onnx { node, .. } => assert_eq!(node, "fc1.input_quant0"),
        other => panic!("expected an ONNX error, got {other:?}"),
    }
    // Names.
    let err = OnnxExport::new(&graph)
        .output_names(&["a", "b"])
        .qdq()
        .unwrap_err();
    assert!(err.to_string().contains("output_names"), "{err}");
    let out = OnnxExport::new(&graph)
        .bind(&mlp)
        .input_names(&["pixels"])
        .output_names(&["logits"])
        .qdq()
        .unwrap();
    let g = out.model.graph.as_ref().unwrap();
    assert_eq!(
        (g.input[0].name.as_str(), g.output[0].name.as_str()),
        ("pixels", "logits")
    );
    assert_eq!(out.name_of(graph.outputs[0]), Some("logits"));
}
