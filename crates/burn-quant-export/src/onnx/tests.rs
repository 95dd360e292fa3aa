//! Unit tests of the ONNX exporters: what is refused (typed errors naming layer, spec and
//! reason), the graph structure and opsets chosen, the reader on hostile bytes. Numerical
//! agreement with onnxruntime and qonnx is tested in the workspace's `tests/onnx_export.rs`
//! and `tests/qonnx_export.rs`.

use burn::tensor::{Device, Tensor};
use burn_quant_core::{
    Format, Granularity, Minifloat, QuantSpec, Rounding, ScaleSource, ScaleStat,
};
use burn_quant_nn::{
    NnError, QuantActConfig, QuantConv2dConfig, QuantLinearConfig, QuantReLUConfig, calibrate,
};
use prost::Message;

use super::graph::ir_version_for_opset;
use super::proto::{DataType, Dim, TensorProto, tensor_shape_proto::dimension, type_proto};
use super::*;

fn dev() -> Device {
    Device::flex()
}

fn linear(spec: Option<QuantSpec>) -> burn_quant_nn::QuantLinear {
    QuantLinearConfig::new(256, 8)
        .with_weight_quant(spec)
        .init(&dev())
        .unwrap()
}

fn qdq_weight_err(spec: QuantSpec) -> OnnxError {
    QdqModelBuilder::new("x", &[2, 256])
        .linear(&linear(Some(spec)))
        .unwrap_err()
}

fn reason(e: &OnnxError) -> String {
    match e {
        OnnxError::Unsupported {
            layer,
            what,
            spec,
            target,
            reason,
        } => format!("{layer}|{what}|{spec}|{target}|{reason}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

/// Specs whose codes or zero-points no QDQ type holds are refused, naming layer, spec and why.
#[test]
fn qdq_refuses_weights_it_cannot_hold_exactly() {
    let r = reason(&qdq_weight_err(QuantSpec::mxfp4()));
    assert!(r.starts_with("linear_0.weight|weight|e2m1"), "{r}");
    assert!(
        r.contains("ONNX QDQ|") && r.contains("not an ONNX float8 type"),
        "{r}"
    );
    assert!(reason(&qdq_weight_err(QuantSpec::nvfp4())).contains("e2m1"));
    assert!(reason(&qdq_weight_err(QuantSpec::mxfp6_e3m2())).contains("float8"));
    // k-quant mins and HQQ zero-points are real-valued: no integer zero-point holds them.
    let r = reason(&qdq_weight_err(QuantSpec::gguf_q4_k()));
    assert!(r.contains("is not an integer"), "{r}");
    let hqq = QuantSpec::int4_weight_per_group(64)
        .asymmetric()
        .with_stat(ScaleStat::hqq());
    assert!(reason(&qdq_weight_err(hqq)).contains("is not an integer"));
    // An IEEE half is no ONNX float8 either.
    let f16 = QuantSpec::fp8_e4m3_weight_per_tensor()
        .with_format(Format::Minifloat(Minifloat::ieee(5, 10)));
    assert!(reason(&qdq_weight_err(f16)).contains("float8"));
}

fn act(spec: QuantSpec) -> burn_quant_nn::QuantAct {
    let a = QuantActConfig::new(spec).init(&dev()).unwrap();
    if a.act_quant.has_stored_scale() {
        let x = Tensor::<2>::from_floats([[0.5, -1.0, 2.0, 0.25]], &dev());
        calibrate(a, |m| m.forward(x.clone())).unwrap().0
    } else {
        a
    }
}

/// Activation quantizers QuantizeLinear cannot express: other rounding, sign functions,
/// dynamic scales, uncalibrated static scales, constant scales with data-dependent zero-points.
#[test]
fn qdq_refuses_activations_it_cannot_express() {
    let qdq = |spec: QuantSpec| {
        QdqModelBuilder::new("x", &[1, 4])
            .act(&act(spec))
            .unwrap_err()
    };
    let act8 = QuantSpec::int8_act_per_tensor();
    let r = reason(&qdq(act8.with_rounding(Rounding::Floor)));
    assert!(
        r.starts_with("act_0|activation|int8") && r.contains("half to even"),
        "{r}"
    );
    assert!(
        reason(&qdq(act8.with_rounding(Rounding::Stochastic { seed: 1 }))).contains("Stochastic")
    );
    let binary = QuantSpec::new(Format::Binary, Granularity::PerTensor)
        .with_scale_source(ScaleSource::Const(1.0));
    assert!(reason(&qdq(binary)).contains("BipolarQuant"));
    let dynamic = act8.with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax));
    assert!(reason(&qdq(dynamic)).contains("dynamic"));
    let const_asym = QuantSpec::uint8_act_per_tensor()
        .asymmetric()
        .with_scale_source(ScaleSource::Const(0.1));
    assert!(reason(&qdq(const_asym)).contains("zero-point"));
    let uncalibrated = QuantActConfig::new(act8).init(&dev()).unwrap();
    let err = QdqModelBuilder::new("x", &[1, 4])
        .act(&uncalibrated)
        .unwrap_err();
    assert!(
        matches!(&err, OnnxError::Layer { layer, source: NnError::NotCalibrated { .. } } if layer == "act_0"),
        "{err:?}"
    );
    // The same spec with a wrong cell count for this input: the layer's own error.
    let per_channel =
        QuantActConfig::new(act8.with_granularity(Granularity::PerChannel { axis: 1 }))
            .with_cells(3)
            .init(&dev())
            .unwrap();
    assert!(
        QdqModelBuilder::new("x", &[1, 4])
            .act(&per_channel)
            .is_err()
    );
}

#[test]
fn qonnx_refuses_what_its_ops_cannot_express() {
    let qonnx = |spec: QuantSpec| {
        QonnxModelBuilder::new("x", &[1, 4])
            .act(&act(spec))
            .unwrap_err()
    };
    let int1 = QuantSpec::new(Format::int(1), Granularity::PerTensor)
        .with_scale_source(ScaleSource::Const(1.0));
    assert!(reason(&qonnx(int1)).contains("bipolar"));
    let stochastic =
        QuantSpec::int8_act_per_tensor().with_rounding(Rounding::Stochastic { seed: 3 });
    let r = reason(&qonnx(stochastic));
    assert!(r.contains("|QONNX|") && r.contains("stochastic"), "{r}");
}

/// The QDQ graph of a QuantLinear with int4 blocked weights: node order, initializer types,
/// attributes, opset 21 / IR 10, value types, metadata.
#[test]
fn qdq_linear_graph_structure() {
    let layer = linear(Some(QuantSpec::int4_weight_per_group(32).asymmetric()));
    let model = QdqModelBuilder::new("x", &[2, 256])
        .named("fc")
        .linear(&layer)
        .unwrap()
        .output_name("logits")
        .build()
        .unwrap();
    assert_eq!((model.ir_version, model.default_opset()), (10, Some(21)));
    let g = model.graph.as_ref().unwrap();
    let ops: Vec<(&str, &str)> = g
        .node
        .iter()
        .map(|n| (n.op_type.as_str(), n.output[0].as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("DequantizeLinear", "fc.weight"),
            ("MatMul", "fc.matmul"),
            ("Add", "logits")
        ]
    );
    let dq = &g.node[0];
    assert_eq!(
        dq.input,
        [
            "fc.weight_quantized",
            "fc.weight_scale",
            "fc.weight_zero_point"
        ]
    );
    let attr = |n: &str| dq.attribute.iter().find(|a| a.name == n).unwrap().i;
    assert_eq!((attr("axis"), attr("block_size")), (Some(0), Some(32)));
    let init = |n: &str| g.initializer.iter().find(|t| t.name == n).unwrap();
    assert_eq!(init("fc.weight_quantized").dtype(), Some(DataType::Uint4));
    assert_eq!(init("fc.weight_quantized").raw_data.len(), 256 * 8 / 2);
    assert_eq!(init("fc.weight_scale").dims, vec![8, 8]);
    assert_eq!(init("fc.weight_zero_point").dtype(), Some(DataType::Uint4));
    assert_eq!(init("fc.bias").dtype(), Some(DataType::Float));
    // The zero-points read back equal the QuantTensor's.
    let q = layer.quant_weight().unwrap().unwrap();
    let zp = q
        .zero_points
        .clone()
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let back: Vec<f32> = tensor_values(init("fc.weight_zero_point"))
        .unwrap()
        .iter()
        .map(|&v| v as f32)
        .collect();
    assert_eq!(back, zp);
    assert_eq!(g.output[0].name, "logits");
    assert!(g.value_info.iter().all(|v| v.name != "logits"));
    assert!(
        model
            .metadata_props
            .iter()
            .any(|m| m.key == "burnq.spec.fc.weight" && m.value.starts_with("uint4 asym"))
    );
}

/// A quantizer that is switched off is left out, as `forward` skips it; the float weight and
/// bias remain.
#[test]
fn disabled_quantizers_are_left_out() {
    let mut layer = QuantLinearConfig::new(4, 2)
        .with_input_quant(Some(
            QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Const(0.1)),
        ))
        .init(&dev())
        .unwrap();
    layer.weight_quant = layer.weight_quant.map(|q| q.with_enabled(false));
    layer.input_quant = layer.input_quant.map(|q| q.with_enabled(false));
    let model = QdqModelBuilder::new("x", &[1, 4])
        .linear(&layer)
        .unwrap()
        .build()
        .unwrap();
    let ops: Vec<&str> = model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert_eq!(ops, ["MatMul", "Add"]);
    assert_eq!(model.default_opset(), Some(10));
}

/// Layers that do not fit the tensor reaching them, impossible builder arguments, and an int32
/// bias without an input scale are typed errors.
#[test]
fn shape_and_argument_errors() {
    let fc = linear(None);
    let e = QdqModelBuilder::new("x", &[2, 100])
        .linear(&fc)
        .unwrap_err();
    assert!(
        matches!(&e, OnnxError::Shape { layer, shape, .. } if layer == "linear_0" && shape == &[2, 100]),
        "{e:?}"
    );
    let conv = QuantConv2dConfig::new([3, 4], [5, 5]).init(&dev()).unwrap();
    assert!(matches!(
        QdqModelBuilder::new("x", &[1, 3, 8]).conv2d(&conv),
        Err(OnnxError::Shape { .. })
    ));
    assert!(matches!(
        QdqModelBuilder::new("x", &[1, 2, 8, 8]).conv2d(&conv),
        Err(OnnxError::Shape { .. })
    ));
    let e = QdqModelBuilder::new("x", &[1, 3, 4, 4])
        .conv2d(&conv)
        .unwrap_err();
    assert!(e.to_string().contains("smaller than the 5x5 kernel"), "{e}");
    assert!(matches!(
        QdqModelBuilder::new("x", &[6]).flatten(),
        Err(OnnxError::Shape { .. })
    ));
    let arg = |r: Result<ModelProto>| match r {
        Err(OnnxError::InvalidArgument { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(arg(QdqModelBuilder::new("x", &[2, 256]).build()), "layers");
    assert_eq!(
        arg(QdqModelBuilder::new("", &[2, 256])
            .linear(&fc)
            .unwrap()
            .build()),
        "input_name"
    );
    assert_eq!(
        arg(QdqModelBuilder::new("x", &[0, 256])
            .linear(&fc)
            .unwrap()
            .build()),
        "input_shape"
    );
    assert_eq!(
        arg(QdqModelBuilder::new("x", &[2, 256])
            .linear(&fc)
            .unwrap()
            .output_name("x")
            .build()),
        "output_name"
    );
    let biased = QuantLinearConfig::new(4, 2)
        .with_bias_quant(true)
        .init(&dev())
        .unwrap();
    let e = QdqModelBuilder::new("x", &[1, 4])
        .linear(&biased)
        .unwrap_err();
    assert!(
        matches!(
            &e,
            OnnxError::Layer {
                source: NnError::MissingInputScale { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let bad_trunc = TruncSpec {
        scale: 1.0,
        zero_point: 0.0,
        input_bits: 4,
        output_bits: 4,
        rounding: Rounding::Floor,
    };
    let r = QonnxModelBuilder::new("x", &[4]).trunc(&bad_trunc);
    assert!(matches!(
        r,
        Err(OnnxError::InvalidArgument {
            field: "trunc.output_bits",
            ..
        })
    ));
}

/// The lowest opset per element type and granularity, the IR versions of onnx's own version
/// table (`onnx.helper.find_min_ir_version_for`, onnx 1.23.2), and the dynamic batch.
#[test]
fn opsets_ir_versions_and_dynamic_batch() {
    let onnx_table = [
        (10, 5),
        (11, 6),
        (12, 7),
        (13, 7),
        (14, 7),
        (15, 8),
        (18, 8),
        (19, 9),
        (20, 9),
        (21, 10),
        (22, 10),
        (23, 11),
        (24, 12),
        (25, 13),
        (27, 13),
        (28, 14),
    ];
    for (opset, ir) in onnx_table {
        assert_eq!(ir_version_for_opset(opset), ir, "opset {opset}");
    }
    let opset = |spec: QuantSpec| {
        QdqModelBuilder::new("x", &[2, 256])
            .linear(&linear(Some(spec)))
            .unwrap()
            .build()
            .unwrap()
            .default_opset()
    };
    assert_eq!(opset(QuantSpec::int8_weight_per_tensor()), Some(10));
    assert_eq!(opset(QuantSpec::int8_weight_per_channel()), Some(13));
    assert_eq!(opset(QuantSpec::fp8_e4m3_weight_per_tensor()), Some(19));
    assert_eq!(opset(QuantSpec::int4_weight_per_group(32)), Some(21));
    assert_eq!(opset(QuantSpec::ternary_weight()), Some(25));
    let relu = QuantReLUConfig::new(
        QuantSpec::uint8_act_per_tensor().with_scale_source(ScaleSource::Const(0.05)),
    )
    .init(&dev())
    .unwrap();
    let model = QdqModelBuilder::new("x", &[3, 256])
        .dynamic_batch("n")
        .relu(&relu)
        .unwrap()
        .build()
        .unwrap();
    let g = model.graph.unwrap();
    let dims = |v: &super::proto::ValueInfoProto| match v.r#type.as_ref().unwrap().value.as_ref() {
        Some(type_proto::Value::TensorType(t)) => t.shape.as_ref().unwrap().dim.clone(),
        None => panic!("no tensor type"),
    };
    for v in [&g.input[0], &g.output[0]] {
        let d = dims(v);
        assert_eq!(d[0].value, Some(dimension::Value::DimParam("n".into())));
        assert_eq!(d[1].value, Some(dimension::Value::DimValue(256)));
    }
    let _ = Dim::Fixed(1);
}

/// Reading: garbage and truncated bytes are typed errors (never a panic), whatever the damage.
#[test]
fn reader_survives_hostile_bytes() {
    let model = QdqModelBuilder::new("x", &[2, 256])
        .linear(&linear(Some(QuantSpec::int4_weight_per_group(32))))
        .unwrap()
        .build()
        .unwrap();
    let bytes = model.to_bytes();
    assert_eq!(decode_onnx(&bytes).unwrap(), model);
    assert!(matches!(
        decode_onnx(&bytes[..bytes.len() / 2]),
        Err(OnnxError::Decode { .. })
    ));
    assert!(decode_onnx(&[0xff; 16]).is_err());
    // Deterministic corruption: flip bytes all over; decoding may succeed or fail, not panic,
    // and whatever decodes can be summarized and its initializers decoded or refused.
    let mut state = 0x1234_5678_u64;
    let mut errors = 0;
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (state >> 33) as usize % b.len();
            b[i] ^= (state >> 13) as u8 | 1;
        }
        match decode_onnx(&b) {
            Ok(m) => {
                let _ = summarize(&m).to_string();
                for t in &m.graph.unwrap_or_default().initializer {
                    let _ = tensor_values(t);
                }
            }
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0);
    let missing = read_onnx("/nonexistent/dir/model.onnx").unwrap_err();
    assert!(matches!(missing, OnnxError::Io { .. }), "{missing:?}");
}

/// `tensor_values` checks the data length against the dims and refuses what it cannot decode.
#[test]
fn tensor_values_validates_its_input() {
    let t = TensorProto::raw("t", DataType::Int4, &[3], vec![0xe1, 0x03]);
    assert_eq!(tensor_values(&t).unwrap(), vec![1.0, -2.0, 3.0]);
    let short = TensorProto::raw("t", DataType::Int4, &[5], vec![0xe1, 0x03]);
    assert!(
        tensor_values(&short)
            .unwrap_err()
            .to_string()
            .contains("expected 3")
    );
    let mut external = TensorProto::f32s("t", &[1], &[1.0]);
    external.data_location = 1;
    assert!(tensor_values(&external).is_err());
    let negative = TensorProto {
        dims: vec![-1],
        data_type: DataType::Float as i32,
        ..Default::default()
    };
    assert!(tensor_values(&negative).is_err());
    let huge = TensorProto {
        dims: vec![i64::MAX, i64::MAX],
        data_type: DataType::Float as i32,
        ..Default::default()
    };
    assert!(tensor_values(&huge).is_err());
    // Typed lists: float_data, and int32_data holding one packed byte per entry for int4.
    let listed = TensorProto {
        dims: vec![2],
        data_type: DataType::Float as i32,
        float_data: vec![1.5, -2.0],
        ..Default::default()
    };
    assert_eq!(tensor_values(&listed).unwrap(), vec![1.5, -2.0]);
    let listed = TensorProto {
        dims: vec![2],
        data_type: DataType::Int4 as i32,
        int32_data: vec![0xe1],
        ..Default::default()
    };
    assert_eq!(tensor_values(&listed).unwrap(), vec![1.0, -2.0]);
    let e8m0 = TensorProto::raw("s", DataType::Float8e8m0, &[2], vec![127, 130]);
    assert_eq!(tensor_values(&e8m0).unwrap(), vec![1.0, 8.0]);
    let fp8 = TensorProto::raw("f", DataType::Float8e4m3fn, &[2], vec![0x38, 0x7e]);
    assert_eq!(tensor_values(&fp8).unwrap(), vec![1.0, 448.0]);
}

/// `save_onnx` replaces the file atomically and leaves no temporary file behind.
#[test]
fn save_is_atomic_and_round_trips() {
    let dir = std::env::temp_dir().join(format!("burnq-onnx-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.onnx");
    let model = QdqModelBuilder::new("x", &[2, 256])
        .linear(&linear(Some(QuantSpec::int8_weight_per_tensor())))
        .unwrap()
        .build()
        .unwrap();
    std::fs::write(&path, b"old").unwrap();
    save_onnx(&path, &model).unwrap();
    assert_eq!(read_onnx(&path).unwrap(), model);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["m.onnx"]);
    assert!(save_onnx(dir.join("no/such/dir/m.onnx"), &model).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The prost encoding parses as the same message (a self-check; onnx's own parser is the
/// workspace tests' job) and layer names stay unique.
#[test]
fn names_are_unique_and_encoding_round_trips() {
    let fc = QuantLinearConfig::new(4, 4).init(&dev()).unwrap();
    let b = QdqModelBuilder::new("x", &[1, 4])
        .named("fc")
        .linear(&fc)
        .unwrap()
        .named("fc")
        .linear(&fc)
        .unwrap();
    let names: Vec<&str> = b.layers().iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["fc", "fc_1"]);
    let model = b.build().unwrap();
    let back = ModelProto::decode(model.to_bytes().as_slice()).unwrap();
    assert_eq!(back, model);
    let inits: std::collections::HashSet<&str> = model
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(inits.len(), model.graph.as_ref().unwrap().initializer.len());
}
