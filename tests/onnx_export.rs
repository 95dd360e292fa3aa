//! ONNX QDQ export checked by readers nobody here wrote: `onnx.checker.check_model(full_check)`
//! on every model, and onnxruntime (graph optimisations off) whose outputs must equal our
//! layers' own `forward` on `Device::flex()` — bit for bit for the dequantized weights and the
//! activation quantizers, within f32 round-off for MatMul/Conv (different summation order).

mod onnx_common;

use burn::nn::PaddingConfig2d;
use burn_quant::core::{Format, Granularity, Minifloat, QuantSpec, ScaleSource, SymmetricScale};
use burn_quant::export::onnx::{
    QdqModelBuilder, proto::DataType, read_onnx, summarize, tensor_values,
};
use burn_quant::nn::{QuantActConfig, QuantConv2dConfig, QuantLinearConfig, QuantReLUConfig};
use onnx_common::*;

/// Every weight format QDQ can hold, through one `QuantLinear` (no activation quantizer): the
/// `DequantizeLinear` output onnxruntime computes from our initializers equals
/// `QuantTensor::dequantize()` exactly, the layer output equals `forward` to round-off, and
/// the opset is the lowest that holds the element type and granularity.
#[test]
fn qdq_weight_formats_dequantize_exactly_in_onnxruntime() {
    let e4m3 = QuantSpec::fp8_e4m3_weight_per_tensor();
    let cases: Vec<(&str, QuantSpec, i64, DataType)> = vec![
        (
            "int8_tensor",
            QuantSpec::int8_weight_per_tensor(),
            10,
            DataType::Int8,
        ),
        (
            "int8_channel",
            QuantSpec::int8_weight_per_channel(),
            13,
            DataType::Int8,
        ),
        (
            "uint8_asym_tensor",
            QuantSpec::int8_weight_per_tensor().asymmetric(),
            10,
            DataType::Uint8,
        ),
        (
            "int4_block32",
            QuantSpec::int4_weight_per_group(32),
            21,
            DataType::Int4,
        ),
        (
            "uint4_block32_zp",
            QuantSpec::int4_weight_per_group(32).asymmetric(),
            21,
            DataType::Uint4,
        ),
        (
            "uint4_channel_zp",
            QuantSpec::new(Format::uint(4), Granularity::PerChannel { axis: 1 }).asymmetric(),
            21,
            DataType::Uint4,
        ),
        (
            "int3_channel",
            QuantSpec::int8_weight_per_channel().with_bits(3),
            21,
            DataType::Int4,
        ),
        (
            "int12_tensor",
            QuantSpec::int8_weight_per_tensor().with_bits(12),
            21,
            DataType::Int16,
        ),
        ("fp8_e4m3_tensor", e4m3, 19, DataType::Float8e4m3fn),
        (
            "fp8_e5m2_channel",
            e4m3.with_format(Format::Minifloat(Minifloat::e5m2()))
                .with_granularity(Granularity::PerChannel { axis: 1 }),
            19,
            DataType::Float8e5m2,
        ),
        (
            "fp8_e4m3fnuz_tensor",
            e4m3.with_format(Format::Minifloat(Minifloat::e4m3fnuz())),
            19,
            DataType::Float8e4m3fnuz,
        ),
        (
            "mxfp8_e4m3",
            QuantSpec::mxfp8_e4m3(),
            21,
            DataType::Float8e4m3fn,
        ),
        ("ternary", QuantSpec::ternary_weight(), 25, DataType::Int2),
        ("binary", QuantSpec::binary_weight(), 25, DataType::Int2),
        ("q6_k_structure", QuantSpec::gguf_q6_k(), 21, DataType::Int8),
        // Symmetric-scale conventions (negative scales for signed-extreme and MSE).
        (
            "int4_block32_neg_qmin",
            QuantSpec::int4_weight_per_group(32).with_symmetric_scale(SymmetricScale::NegQmin),
            21,
            DataType::Int4,
        ),
        (
            "int4_block32_signed_extreme",
            QuantSpec::int4_weight_per_group(32)
                .with_symmetric_scale(SymmetricScale::SignedExtreme),
            21,
            DataType::Int4,
        ),
        (
            "int8_channel_full_range_mse",
            QuantSpec::new(Format::int(8), Granularity::PerChannel { axis: 1 })
                .with_symmetric_scale(SymmetricScale::mse()),
            13,
            DataType::Int8,
        ),
    ];
    // Blocks that do not divide the weight (200 inputs = 6·32 + 8; 24 outputs = 16 + 8): ONNX
    // blocked quantization takes a short last block (scale dimension ceil(len / block)).
    let ragged: Vec<(&str, QuantSpec, i64, DataType)> = vec![
        (
            "ragged_int4_block32",
            QuantSpec::int4_weight_per_group(32),
            21,
            DataType::Int4,
        ),
        (
            "ragged_uint4_block32_zp",
            QuantSpec::int4_weight_per_group(32).asymmetric(),
            21,
            DataType::Uint4,
        ),
        (
            "ragged_int4_block16_outputs",
            QuantSpec::int4_weight_per_group(16).with_axis(1),
            21,
            DataType::Int4,
        ),
        (
            "ragged_mxfp8_e4m3",
            QuantSpec::mxfp8_e4m3(),
            21,
            DataType::Float8e4m3fn,
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|c| (c, 256))
        .chain(ragged.into_iter().map(|c| (c, 200)));
    for ((name, spec, opset, dtype), d_in) in cases {
        let x = uniform(4 * d_in, 7, 2.0);
        let layer = QuantLinearConfig::new(d_in, 24)
            .with_weight_quant(Some(spec))
            .init(&device())
            .unwrap();
        let model = QdqModelBuilder::new("x", &[4, d_in])
            .linear(&layer)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(model.default_opset(), Some(opset), "{name}");
        let graph = model.graph.as_ref().unwrap();
        let codes = graph
            .initializer
            .iter()
            .find(|t| t.name == "linear_0.weight_quantized")
            .unwrap();
        assert_eq!(codes.dtype(), Some(dtype), "{name}");
        let q = layer.quant_weight().unwrap().unwrap();
        // Our reader decodes the packed codes back (minifloat codes as their values).
        let want: Vec<f64> = match spec.format {
            Format::Minifloat(m) => q
                .codes_vec()
                .iter()
                .map(|&c| m.decode(c as u32) as f64)
                .collect(),
            _ => q.codes_vec().iter().map(|&c| c as f64).collect(),
        };
        assert_eq!(
            tensor_values(codes).unwrap(),
            want,
            "{name}: codes round trip"
        );

        let dir = work_dir(&format!("weights_{name}"));
        let Some(run) = run_verifier(
            "onnx_qdq_run.py",
            &dir,
            &model,
            &x,
            &[4, d_in],
            &["linear_0.weight"],
            &[],
        ) else {
            return;
        };
        assert!(
            run.summary.contains(&format!("\"ai.onnx\": {opset}")),
            "{name}: {}",
            run.summary
        );
        let (wshape, w) = &run.values[1];
        assert_eq!(wshape, &vec![d_in, 24], "{name}");
        assert_exact(
            &format!("{name}: dequantized weight"),
            w,
            &host(q.dequantize()),
        );
        let want = host(layer.forward(tensor(&x, [4, d_in])));
        assert_close(&format!("{name}: output"), &run.values[0].1, &want, 1e-5);
    }
}

/// The quickstart's shape (768-256-10, ReLU) with int8 per-channel weights, a static int8
/// input quantizer and a uint8 ReLU output quantizer, calibrated on three batches.
fn calibrated_mlp() -> Mlp {
    let dev = device();
    let mlp = Mlp {
        fc1: QuantLinearConfig::new(768, 256)
            .with_input_quant(Some(QuantSpec::int8_act_per_tensor()))
            .init(&dev)
            .unwrap(),
        relu: QuantReLUConfig::new(QuantSpec::uint8_act_per_tensor())
            .init(&dev)
            .unwrap(),
        fc2: QuantLinearConfig::new(256, 10).init(&dev).unwrap(),
    };
    mlp.calibrated()
}

/// The quickstart MLP exported as QDQ with a dynamic batch (built for batch 1, run with 8):
/// the checker accepts it, each layer matches `forward` (the ReLU quantizer bit for bit), and
/// end to end the logits differ at most by what a few activations crossing a rounding
/// boundary could cause (measured: not at all).
#[test]
fn qdq_quickstart_mlp_matches_forward_layer_by_layer() {
    let mlp = calibrated_mlp();
    let b = QdqModelBuilder::new("pixels", &[1, 768])
        .dynamic_batch("batch")
        .linear(&mlp.fc1)
        .unwrap()
        .relu(&mlp.relu)
        .unwrap()
        .linear(&mlp.fc2)
        .unwrap();
    let names: Vec<String> = b.layers().iter().map(|l| l.output.clone()).collect();
    assert_eq!(names, ["linear_0.add", "relu_1.act_quant", "linear_2.add"]);
    let model = b.build().unwrap();
    assert_eq!((model.default_opset(), model.ir_version), (Some(13), 7));
    let x = pixels(11);
    let stages = mlp.stages();
    let Some(run) = check_stages(
        "onnx_qdq_run.py",
        "mlp_int8",
        &model,
        &x,
        &[8, 768],
        &stages,
        &["--optimized"],
    ) else {
        return;
    };
    let ours = host(mlp.forward(tensor(&x, [8, 768])));
    let ort = &run.values[0].1;
    let s_relu = host(mlp.relu.act_quant.scale.as_ref().unwrap().val())[0];
    let w2 = host(mlp.fc2.quant_weight().unwrap().unwrap().dequantize());
    let w2_max = w2.iter().fold(0f32, |m, v| m.max(v.abs()));
    let e2e = max_abs_err(ort, &ours);
    let opt = max_abs_err(&run.optimized[0].1, ort);
    println!("mlp int8: end to end max |diff| {e2e:e}, optimised session {opt:e}");
    assert!(e2e <= 4.0 * s_relu * w2_max, "end to end {e2e}");
    assert!(opt <= 4.0 * s_relu * w2_max, "optimised session {opt}");
}

/// int4 weights blocked along the input (the pattern onnxruntime fuses into MatMulNBits) and
/// uint4 with zero-points: the default-optimised session with accuracy level 0 really fuses
/// and still gives the unoptimised outputs to round-off, which equal `forward`.
#[test]
fn qdq_int4_blocked_mlp_fuses_to_matmulnbits_exactly() {
    let dev = device();
    let fc1 = QuantLinearConfig::new(768, 64)
        .with_weight_quant(Some(QuantSpec::int4_weight_per_group(32)))
        .init(&dev)
        .unwrap();
    let fc2 = QuantLinearConfig::new(64, 10)
        .with_weight_quant(Some(QuantSpec::int4_weight_per_group(32).asymmetric()))
        .init(&dev)
        .unwrap();
    let model = QdqModelBuilder::new("x", &[8, 768])
        .linear(&fc1)
        .unwrap()
        .float_relu()
        .linear(&fc2)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!((model.default_opset(), model.ir_version), (Some(21), 10));
    let x = pixels(5);
    let relu = |v: &[f32], _: &[usize]| v.iter().map(|a| a.max(0.0)).collect::<Vec<f32>>();
    let stages = [
        stage("linear_0.add", false, |v, s| host(fc1.forward(t2(v, s)))),
        stage("relu_1", true, relu),
        stage("output", false, |v, s| host(fc2.forward(t2(v, s)))),
    ];
    let Some(run) = check_stages(
        "onnx_qdq_run.py",
        "mlp_int4",
        &model,
        &x,
        &[8, 768],
        &stages,
        &["--optimized"],
    ) else {
        return;
    };
    assert!(run.summary.contains("MatMulNBits"), "{}", run.summary);
    assert_close("optimised", &run.optimized[0].1, &run.values[0].1, 1e-5);
}

/// Activation quantizers as QuantizeLinear→DequantizeLinear pairs equal our fake-quant bit for
/// bit: full and narrow int8 (clamped with Max before the int8 container), asymmetric uint8
/// with its calibrated zero-point, int3 and ternary grids inside int4/int2 containers, int16,
/// per-channel int8, fp8 e4m3 saturating and e5m2 non-saturating (overflow → ±inf).
#[test]
fn qdq_activation_quantizers_equal_fake_quant() {
    let e5m2 = QuantSpec::new(
        Format::Minifloat(Minifloat::e5m2().with_saturating(false)),
        Granularity::PerTensor,
    )
    .with_scale_source(ScaleSource::Const(1e-3));
    let cases: Vec<(&str, QuantSpec, usize, &str, i64)> = vec![
        ("int8", QuantSpec::int8_act_per_tensor(), 1, "", 10),
        (
            "int8_narrow",
            QuantSpec::int8_act_per_tensor().with_narrow(true),
            1,
            "Max",
            10,
        ),
        (
            "uint8_asym",
            QuantSpec::uint8_act_per_tensor().asymmetric(),
            1,
            "",
            10,
        ),
        (
            "int3",
            QuantSpec::int8_act_per_tensor().with_bits(3),
            1,
            "Min",
            21,
        ),
        (
            "ternary",
            QuantSpec::new(Format::Ternary, Granularity::PerTensor),
            1,
            "Max",
            25,
        ),
        (
            "int16",
            QuantSpec::int8_act_per_tensor().with_bits(16),
            1,
            "",
            21,
        ),
        (
            "int8_channel",
            QuantSpec::int8_act_per_tensor().with_granularity(Granularity::PerChannel { axis: 1 }),
            32,
            "",
            13,
        ),
        ("fp8_e4m3", QuantSpec::fp8_e4m3_act_per_tensor(), 1, "", 19),
        ("fp8_e5m2_nosat", e5m2, 1, "", 19),
    ];
    let calib = uniform(6 * 32, 3, 2.0);
    let x = uniform(6 * 32, 4, 3.0);
    for (name, spec, cells, clamp, opset) in cases {
        let act = calibrated_act(spec, cells, &calib);
        let model = QdqModelBuilder::new("x", &[6, 32])
            .act(&act)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(model.default_opset(), Some(opset), "{name}");
        let ops: Vec<&str> = model
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.as_str())
            .collect();
        if !clamp.is_empty() {
            assert!(ops.contains(&clamp), "{name}: {ops:?}");
        }
        let stages = [stage("output", true, |v, s| host(act.forward(t2(v, s))))];
        let Some(_) = check_stages(
            "onnx_qdq_run.py",
            &format!("act_{name}"),
            &model,
            &x,
            &[6, 32],
            &stages,
            &[],
        ) else {
            return;
        };
    }
}

/// A CNN like `burnq qat`'s: int8 input quantizer, a `Same`-padded 3×3 convolution with int8
/// per-output-channel weights, uint8 ReLU, a strided convolution with uint4 asymmetric
/// per-channel weights, an int8 input quantizer and an int32 bias, uint8 ReLU, flatten and a
/// classifier with an int32 bias. Calibrated; exported; each layer checked.
fn calibrated_cnn() -> (Cnn, Vec<f32>) {
    let dev = device();
    let act8 = QuantSpec::int8_act_per_tensor();
    let cnn = Cnn {
        input: QuantActConfig::new(act8).init(&dev).unwrap(),
        conv1: QuantConv2dConfig::new([1, 4], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .init(&dev)
            .unwrap(),
        relu1: QuantReLUConfig::new(QuantSpec::uint8_act_per_tensor())
            .init(&dev)
            .unwrap(),
        conv2: QuantConv2dConfig::new([4, 8], [3, 3])
            .with_stride([2, 2])
            .with_weight_quant(Some(
                QuantSpec::new(Format::uint(4), Granularity::PerChannel { axis: 0 }).asymmetric(),
            ))
            .with_input_quant(Some(act8))
            .with_bias_quant(true)
            .init(&dev)
            .unwrap(),
        relu2: QuantReLUConfig::new(QuantSpec::uint8_act_per_tensor())
            .init(&dev)
            .unwrap(),
        fc: QuantLinearConfig::new(8 * 5 * 5, 10)
            .with_input_quant(Some(act8))
            .with_bias_quant(true)
            .init(&dev)
            .unwrap(),
    };
    (cnn.calibrated(), images(30))
}

/// The CNN exported as QDQ: int32 biases become INT32 initializers with a per-channel
/// DequantizeLinear, padding and stride carry over, every layer matches `forward`.
#[test]
fn qdq_small_cnn_matches_forward_layer_by_layer() {
    let (cnn, x) = calibrated_cnn();
    let b = cnn.export(QdqModelBuilder::new("images", &[2, 1, 12, 12]));
    let names: Vec<String> = b.layers().iter().map(|l| l.output.clone()).collect();
    assert_eq!(b.current_shape(), &[2, 10]);
    let model = b.build().unwrap();
    assert_eq!(model.default_opset(), Some(21));
    let graph = model.graph.as_ref().unwrap();
    let bias = graph
        .initializer
        .iter()
        .find(|t| t.name == "conv2d_3.bias_quantized")
        .unwrap();
    assert_eq!(bias.dtype(), Some(DataType::Int32));
    let conv1 = graph.node.iter().find(|n| n.op_type == "Conv").unwrap();
    let pads = conv1.attribute.iter().find(|a| a.name == "pads").unwrap();
    assert_eq!(pads.ints, vec![1, 1, 1, 1]);
    let stages = cnn.stages(&names);
    let Some(run) = check_stages(
        "onnx_qdq_run.py",
        "cnn",
        &model,
        &x,
        &[2, 1, 12, 12],
        &stages,
        &[],
    ) else {
        return;
    };
    let ours = host(cnn.forward(tensor(&x, [2, 1, 12, 12])));
    println!(
        "cnn: end to end max |diff| {:e}",
        max_abs_err(&run.values[0].1, &ours)
    );
}

/// `read_onnx` + `summarize` of a saved model report what onnx itself sees: opsets, op types,
/// initializer types and sizes; the summary prints.
#[test]
fn saved_models_read_back_and_summarize() {
    let mlp = calibrated_mlp();
    let model = QdqModelBuilder::new("pixels", &[1, 768])
        .linear(&mlp.fc1)
        .unwrap()
        .relu(&mlp.relu)
        .unwrap()
        .linear(&mlp.fc2)
        .unwrap()
        .build()
        .unwrap();
    let dir = work_dir("read_back");
    let path = dir.join("mlp.onnx");
    burn_quant::export::onnx::save_onnx(&path, &model).unwrap();
    let back = read_onnx(&path).unwrap();
    assert_eq!(back, model);
    let s = summarize(&back);
    assert_eq!(s.opsets, vec![(String::new(), 13)]);
    let ops: Vec<&str> = s.ops.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        ops,
        [
            "Add",
            "DequantizeLinear",
            "MatMul",
            "QuantizeLinear",
            "Relu"
        ]
    );
    let w = s
        .initializers
        .iter()
        .find(|i| i.name == "linear_0.weight_quantized")
        .unwrap();
    assert_eq!((w.data_type.as_str(), w.bytes), ("INT8", 768 * 256));
    let text = s.to_string();
    assert!(text.contains("opsets ai.onnx:13"), "{text}");
    assert!(
        text.contains("meta    burnq.spec.linear_0.weight = int8n sym per-channel"),
        "{text}"
    );
    // onnx's own parser sees the same op types.
    let x = pixels(2);
    if let Some(run) = run_verifier(
        "onnx_qdq_run.py",
        &dir,
        &model,
        &x[..768],
        &[1, 768],
        &[],
        &[],
    ) {
        for op in ops {
            assert!(
                run.summary.contains(&format!("\"{op}\"")),
                "{}",
                run.summary
            );
        }
    }
}

/// What every test model must be: deterministic bytes (the same layers export to the same file).
#[test]
fn export_is_deterministic() {
    let mlp = calibrated_mlp();
    let build = || {
        QdqModelBuilder::new("pixels", &[1, 768])
            .linear(&mlp.fc1)
            .unwrap()
            .build()
            .unwrap()
            .to_bytes()
    };
    assert_eq!(build(), build());
}
