//! QONNX export checked with qonnx's own executor (`qonnx.core.onnx_exec.execute_onnx`, which
//! runs Quant / BipolarQuant / FloatQuant / Trunc with qonnx's numpy reference code) after
//! `onnx.checker.check_model(full_check)`: weights give back our dequantized values bit for
//! bit, activation quantizers equal our fake-quant bit for bit, whole models match `forward`
//! layer by layer, and the closed-form examples of formats.md §2.5 come out.

mod onnx_common;

use burn::nn::PaddingConfig2d;
use burn_quant::core::{
    Format, Granularity, Minifloat, QuantSpec, Rounding, ScaleSource, ScaleStat, SymmetricScale,
};
use burn_quant::export::onnx::{QONNX_DOMAIN, QonnxModelBuilder, TruncSpec};
use burn_quant::nn::{
    QuantAct, QuantActConfig, QuantConv2dConfig, QuantLinearConfig, QuantReLUConfig,
};
use onnx_common::*;

/// Weight formats, including those QDQ cannot hold (real-valued k-quant and HQQ zero-points,
/// MXFP4/MXFP6/NVFP4 minifloats, binary): the value qonnx's Quant/FloatQuant/BipolarQuant
/// node computes from our initializers equals `QuantTensor::dequantize()` exactly, and the
/// layer output equals `forward` to round-off.
#[test]
fn qonnx_weight_formats_give_back_the_dequantized_weight() {
    let e4m3 = QuantSpec::fp8_e4m3_weight_per_tensor();
    let cases: Vec<(&str, QuantSpec, &str)> = vec![
        (
            "int8_channel",
            QuantSpec::int8_weight_per_channel(),
            "Quant",
        ),
        (
            "int4_group32",
            QuantSpec::int4_weight_per_group(32),
            "Quant",
        ),
        (
            "uint4_group32_zp",
            QuantSpec::int4_weight_per_group(32).asymmetric(),
            "Quant",
        ),
        (
            "int3_channel",
            QuantSpec::int8_weight_per_channel().with_bits(3),
            "Quant",
        ),
        ("q4_k_structure", QuantSpec::gguf_q4_k(), "Quant"),
        (
            "hqq_uint4_group64",
            QuantSpec::int4_weight_per_group(64)
                .asymmetric()
                .with_stat(ScaleStat::hqq()),
            "Quant",
        ),
        ("ternary", QuantSpec::ternary_weight(), "Quant"),
        ("binary", QuantSpec::binary_weight(), "BipolarQuant"),
        ("fp8_e4m3", e4m3, "FloatQuant"),
        (
            "fp8_e5m2_channel",
            e4m3.with_format(Format::Minifloat(Minifloat::e5m2()))
                .with_granularity(Granularity::PerChannel { axis: 1 }),
            "FloatQuant",
        ),
        ("mxfp4", QuantSpec::mxfp4(), "FloatQuant"),
        ("mxfp6_e3m2", QuantSpec::mxfp6_e3m2(), "FloatQuant"),
        ("nvfp4", QuantSpec::nvfp4(), "FloatQuant"),
        // Symmetric-scale conventions (negative scales for signed-extreme and MSE).
        (
            "int4_group32_neg_qmin",
            QuantSpec::int4_weight_per_group(32).with_symmetric_scale(SymmetricScale::NegQmin),
            "Quant",
        ),
        (
            "int4_group32_signed_extreme",
            QuantSpec::int4_weight_per_group(32)
                .with_symmetric_scale(SymmetricScale::SignedExtreme),
            "Quant",
        ),
        (
            "int3_group32_mse",
            QuantSpec::int4_weight_per_group(32)
                .with_bits(3)
                .with_symmetric_scale(SymmetricScale::mse()),
            "Quant",
        ),
    ];
    // Groups that do not divide the weight (200 inputs = 6·32 + 8; 24 outputs = 16 + 8): a
    // short last group, exported with per-element scales.
    let ragged: Vec<(&str, QuantSpec, &str)> = vec![
        (
            "ragged_int4_group32",
            QuantSpec::int4_weight_per_group(32),
            "Quant",
        ),
        (
            "ragged_uint4_group32_zp",
            QuantSpec::int4_weight_per_group(32).asymmetric(),
            "Quant",
        ),
        (
            "ragged_int4_group16_outputs",
            QuantSpec::int4_weight_per_group(16).with_axis(1),
            "Quant",
        ),
        ("ragged_mxfp4", QuantSpec::mxfp4(), "FloatQuant"),
    ];
    let cases = cases
        .into_iter()
        .map(|c| (c, 256))
        .chain(ragged.into_iter().map(|c| (c, 200)));
    for ((name, spec, op), d_in) in cases {
        let x = uniform(4 * d_in, 9, 2.0);
        let layer = QuantLinearConfig::new(d_in, 24)
            .with_weight_quant(Some(spec))
            .init(&device())
            .unwrap();
        let model = QonnxModelBuilder::new("x", &[4, d_in])
            .linear(&layer)
            .unwrap()
            .build()
            .unwrap();
        let graph = model.graph.as_ref().unwrap();
        assert!(
            graph
                .node
                .iter()
                .any(|n| n.op_type == op && n.domain == QONNX_DOMAIN),
            "{name}: no {op} node"
        );
        let q = layer.quant_weight().unwrap().unwrap();
        let dir = work_dir(&format!("qonnx_weights_{name}"));
        let Some(run) = run_verifier(
            "qonnx_exec.py",
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
            run.summary.contains("\"qonnx.custom_op.general\": 1"),
            "{}",
            run.summary
        );
        assert_exact(
            &format!("{name}: weight"),
            &run.values[1].1,
            &host(q.dequantize()),
        );
        let want = host(layer.forward(tensor(&x, [4, d_in])));
        assert_close(&format!("{name}: output"), &run.values[0].1, &want, 1e-5);
    }
}

/// Activation quantizers equal our fake-quant bit for bit, with every rounding mode QONNX has
/// (ROUND, HALF_UP, FLOOR, CEIL, DOWN), asymmetric zero-points, narrow and odd widths, binary
/// (BipolarQuant), ternary, minifloats (saturating and not) and per-channel scales.
#[test]
fn qonnx_activation_quantizers_equal_fake_quant() {
    let act8 = QuantSpec::int8_act_per_tensor();
    let e5m2 = QuantSpec::new(
        Format::Minifloat(Minifloat::e5m2().with_saturating(false)),
        Granularity::PerTensor,
    )
    .with_scale_source(ScaleSource::Const(1e-3));
    let cases: Vec<(&str, QuantSpec, usize)> = vec![
        ("int8", act8, 1),
        ("int4_narrow", act8.with_bits(4).with_narrow(true), 1),
        (
            "uint8_asym",
            QuantSpec::uint8_act_per_tensor().asymmetric(),
            1,
        ),
        ("int8_floor", act8.with_rounding(Rounding::Floor), 1),
        ("int8_ceil", act8.with_rounding(Rounding::Ceil), 1),
        (
            "int8_toward_zero",
            act8.with_rounding(Rounding::TowardZero),
            1,
        ),
        (
            "int5_half_up",
            act8.with_bits(5).with_rounding(Rounding::HalfUp),
            1,
        ),
        (
            "ternary",
            QuantSpec::new(Format::Ternary, Granularity::PerTensor),
            1,
        ),
        (
            "binary",
            QuantSpec::new(Format::Binary, Granularity::PerTensor)
                .with_scale_source(ScaleSource::Const(0.7)),
            1,
        ),
        ("fp8_e4m3", QuantSpec::fp8_e4m3_act_per_tensor(), 1),
        ("fp8_e5m2_nosat", e5m2, 1),
        (
            "fp6_e2m3",
            QuantSpec::new(Format::Minifloat(Minifloat::e2m3()), Granularity::PerTensor),
            1,
        ),
        (
            "int8_channel",
            act8.with_granularity(Granularity::PerChannel { axis: 1 }),
            32,
        ),
    ];
    let calib = uniform(6 * 32, 3, 2.0);
    let x = uniform(6 * 32, 4, 3.0);
    for (name, spec, cells) in cases {
        let act = calibrated_act(spec, cells, &calib);
        let model = QonnxModelBuilder::new("x", &[6, 32])
            .act(&act)
            .unwrap()
            .build()
            .unwrap();
        let stages = [stage("output", true, |v, s| host(act.forward(t2(v, s))))];
        if check_stages(
            "qonnx_exec.py",
            &format!("qonnx_act_{name}"),
            &model,
            &x,
            &[6, 32],
            &stages,
            &[],
        )
        .is_none()
        {
            return;
        }
    }
}

/// The examples of formats.md §2.5, computed by qonnx on that page's input: our exporters'
/// nodes reproduce them (an int2 Quant, a BipolarQuant, an e2m1 FloatQuant, a Trunc 8→4), and
/// so do our layers' `forward` and [`TruncSpec::apply`].
#[test]
fn qonnx_nodes_reproduce_the_formats_md_examples() {
    let x = [-1.3f32, -0.26, 0.0, 0.14, 0.25, 0.74, 0.75, 2.9];
    let constant = |format: Format, s: f32| {
        QuantActConfig::new(
            QuantSpec::new(format, Granularity::PerTensor).with_scale_source(ScaleSource::Const(s)),
        )
        .init(&device())
        .unwrap()
    };
    let cases: Vec<(&str, QuantAct, [f32; 8])> = vec![
        (
            "int2",
            constant(Format::int(2), 0.5),
            [-1.0, -0.5, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5],
        ),
        (
            "bipolar",
            constant(Format::Binary, 0.7),
            [-0.7, -0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7],
        ),
        (
            "e2m1",
            constant(Format::Minifloat(Minifloat::e2m1()), 0.5),
            [-1.5, -0.25, 0.0, 0.25, 0.25, 0.75, 0.75, 3.0],
        ),
    ];
    for (name, act, want) in cases {
        assert_exact(name, &host(act.forward(tensor(&x, [1, 8]))), &want);
        let model = QonnxModelBuilder::new("x", &[1, 8])
            .act(&act)
            .unwrap()
            .build()
            .unwrap();
        let stages = [stage("output", true, |_, _| want.to_vec())];
        if check_stages(
            "qonnx_exec.py",
            &format!("qonnx_md_{name}"),
            &model,
            &x,
            &[1, 8],
            &stages,
            &[],
        )
        .is_none()
        {
            return;
        }
    }
    let trunc = TruncSpec {
        scale: 0.125,
        zero_point: 0.0,
        input_bits: 8,
        output_bits: 4,
        rounding: Rounding::Floor,
    };
    let want = [-0.125f32, -0.125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.125];
    assert_exact("TruncSpec::apply", &x.map(|v| trunc.apply(v)), &want);
    let model = QonnxModelBuilder::new("x", &[1, 8])
        .trunc(&trunc)
        .unwrap()
        .build()
        .unwrap();
    let stages = [stage("output", true, |_, _| want.to_vec())];
    check_stages(
        "qonnx_exec.py",
        "qonnx_md_trunc",
        &model,
        &x,
        &[1, 8],
        &stages,
        &[],
    );
}

/// The quickstart's MLP shape with int4 per-channel and per-group weights, a calibrated int8
/// input scale, a uint8 ReLU and an int32 bias, through qonnx's executor layer by layer.
#[test]
fn qonnx_quickstart_mlp_matches_forward_layer_by_layer() {
    let dev = device();
    let mlp = Mlp {
        fc1: QuantLinearConfig::new(768, 256)
            .with_weight_quant(Some(QuantSpec::int8_weight_per_channel().with_bits(4)))
            .with_input_quant(Some(QuantSpec::int8_act_per_tensor()))
            .with_bias_quant(true)
            .init(&dev)
            .unwrap(),
        relu: QuantReLUConfig::new(QuantSpec::uint8_act_per_tensor())
            .init(&dev)
            .unwrap(),
        fc2: QuantLinearConfig::new(256, 10)
            .with_weight_quant(Some(QuantSpec::int4_weight_per_group(32)))
            .init(&dev)
            .unwrap(),
    }
    .calibrated();
    let model = QonnxModelBuilder::new("pixels", &[8, 768])
        .linear(&mlp.fc1)
        .unwrap()
        .relu(&mlp.relu)
        .unwrap()
        .linear(&mlp.fc2)
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
    // Input, fc1 weight, fc1 int32 bias, ReLU output, fc2 weight (grouped: Reshape around it).
    assert_eq!(ops.iter().filter(|o| **o == "Quant").count(), 5, "{ops:?}");
    let stages = mlp.stages();
    check_stages(
        "qonnx_exec.py",
        "qonnx_mlp",
        &model,
        &pixels(11),
        &[8, 768],
        &stages,
        &[],
    );
}

/// A small CNN (int4 input quantizer, padded convolution, ternary and fp8 weights, int32
/// biases) through qonnx's executor layer by layer.
#[test]
fn qonnx_small_cnn_matches_forward_layer_by_layer() {
    let dev = device();
    let act8 = QuantSpec::int8_act_per_tensor();
    let cnn = Cnn {
        input: QuantActConfig::new(act8.with_bits(4)).init(&dev).unwrap(),
        conv1: QuantConv2dConfig::new([1, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(2, 0, 1, 1))
            .with_weight_quant(Some(QuantSpec::ternary_weight()))
            .init(&dev)
            .unwrap(),
        relu1: QuantReLUConfig::new(QuantSpec::uint8_act_per_tensor())
            .init(&dev)
            .unwrap(),
        conv2: QuantConv2dConfig::new([4, 8], [3, 3])
            .with_stride([2, 2])
            .with_weight_quant(Some(
                QuantSpec::fp8_e4m3_weight_per_tensor()
                    .with_granularity(Granularity::PerChannel { axis: 0 }),
            ))
            .with_input_quant(Some(act8))
            .with_bias_quant(true)
            .init(&dev)
            .unwrap(),
        relu2: QuantReLUConfig::new(QuantSpec::uint8_act_per_tensor())
            .init(&dev)
            .unwrap(),
        fc: QuantLinearConfig::new(8 * 6 * 5, 10)
            .with_input_quant(Some(act8))
            .with_bias_quant(true)
            .init(&dev)
            .unwrap(),
    }
    .calibrated();
    let b = cnn.export(QonnxModelBuilder::new("images", &[2, 1, 12, 12]));
    // 12×12 padded top 2, left 0, bottom 1, right 1 → 15×13 → 13×11 after a 3×3 → strided:
    // (13 − 3)/2 + 1 = 6 by (11 − 3)/2 + 1 = 5.
    assert_eq!(b.layers()[3].output_shape, vec![2, 8, 6, 5]);
    let names: Vec<String> = b.layers().iter().map(|l| l.output.clone()).collect();
    let model = b.build().unwrap();
    let stages = cnn.stages(&names);
    check_stages(
        "qonnx_exec.py",
        "qonnx_cnn",
        &model,
        &images(30),
        &[2, 1, 12, 12],
        &stages,
        &[],
    );
}
