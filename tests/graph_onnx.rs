//! Graph mode → ONNX, checked by readers nobody here wrote: models built from `burn::nn` only
//! (an MLP; a CNN with BatchNorm, a residual add, max pooling, a concat and adaptive pooling; a
//! transformer encoder with LayerNorm, GELU and softmax attention) are captured, lowered to
//! ONNX float and W8A8 QDQ, accepted by `onnx.checker.check_model(full_check=True)`, and run
//! by onnxruntime with graph optimisations off (every node as written).
//!
//! What must hold, and the tolerances:
//! - float: onnxruntime's output equals our interpreter's (`Interpreter::run`, itself equal to
//!   eager Burn) within 1e-5 relative (`|a − b| ≤ 1e-5 · (1 + |b|)`): the same ops, summed in
//!   another order (MLAS GEMM/conv blocking, other erf/exp/normalization kernels). Measured
//!   (random initialisation, so the last digit varies): MLP 0 (bit-identical), CNN 1.4–2.5e-8,
//!   transformer 1.2–1.7e-7.
//! - QDQ, per quantizer: our quantizer applied to onnxruntime's own input of that quantizer
//!   gives onnxruntime's `DequantizeLinear` output bit for bit, for every activation quantizer
//!   of the graph: scale, zero-point, rounding and clamping are encoded exactly, whatever the
//!   float round-off upstream.
//! - QDQ, end to end: the two runs can disagree on an activation code only where the
//!   quantizer's input `x/s` lies within float round-off (~1e-7 relative) of a rounding
//!   boundary k + ½, each such flip moving one activation by one step. The tests count the
//!   codes that differ; with none, the outputs must agree within the float tolerance. Measured:
//!   no code differs (0 of 896 MLP, 11,264 CNN, 5,088 transformer codes) and the W8A8 outputs
//!   are bit-identical: every matmul and conv runs on the same dequantized grid values, and
//!   the float round-off before each quantizer never reached a boundary. Should a flip occur
//!   (other data, other onnxruntime), the test accepts at most 0.1 % flipped codes and 1e-2
//!   relative output error, and prints the counts
//!   (`cargo test --release --test graph_onnx -- --nocapture`).

mod onnx_common;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use burn_quant::core::QuantSpec;
use burn_quant::export::onnx::proto::{DataType, ModelProto};
use burn_quant_graph::interp::{Interpreter, to_host};
use burn_quant_graph::ir::{Graph, Op, ValueOrigin};
use burn_quant_graph::onnx::{ExportedGraph, OnnxExport};
use burn_quant_graph::quantize::QuantContext;
use burn_quant_graph::{
    GraphRecipe, QuantizedGraph, Stage2Result, capture, quantize_graph, stage2,
};
use onnx_common::*;

// ----- models, as a user writes them (burn::nn only) ------------------------------------------

/// `fc2(relu(fc1(x)))`.
#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    act: Relu,
    fc2: Linear,
}

impl Mlp {
    fn new(d_in: usize, hidden: usize, d_out: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(d_in, hidden).init(device),
            act: Relu::new(),
            fc2: LinearConfig::new(hidden, d_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.act.forward(self.fc1.forward(x)))
    }
}

/// conv → BN → ReLU.
#[derive(Module, Debug)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(c_in: usize, c_out: usize, bias: bool, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(bias)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        burn::tensor::activation::relu(self.bn.forward(self.conv.forward(x)))
    }
}

/// A small ResNet-style CNN: stem, a residual block, max pooling, two branches concatenated,
/// global average pooling and a linear head.
#[derive(Module, Debug)]
struct SmallCnn {
    stem: ConvBn,
    block_a: ConvBn,
    block_b: ConvBn,
    pool: MaxPool2d,
    left: ConvBn,
    right: ConvBn,
    gap: AdaptiveAvgPool2d,
    head: Linear,
}

impl SmallCnn {
    fn new(device: &Device) -> Self {
        Self {
            stem: ConvBn::new(1, 8, false, device),
            block_a: ConvBn::new(8, 8, false, device),
            block_b: ConvBn::new(8, 8, true, device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            left: ConvBn::new(8, 6, false, device),
            right: ConvBn::new(8, 10, false, device),
            gap: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(16, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.stem.forward(x);
        let r = self.block_b.forward(self.block_a.forward(x.clone()));
        let x = self.pool.forward(x + r);
        let x = Tensor::cat(vec![self.left.forward(x.clone()), self.right.forward(x)], 1);
        let x = self.gap.forward(x);
        let [n, c, _, _] = x.dims();
        self.head.forward(x.reshape([n, c]))
    }
}

/// Gives every BatchNorm non-trivial running statistics (a few training-mode forwards).
fn warm_batch_norm(model: SmallCnn, device: &Device) -> SmallCnn {
    let ad = device.clone().autodiff();
    let model = model.to_device(&ad);
    for _ in 0..3 {
        let x = Tensor::<4>::random([4, 1, 12, 12], Distribution::Normal(0.5, 1.5), &ad);
        let _ = model.forward(x);
    }
    model.valid().to_device(device)
}

/// A transformer encoder (LayerNorm, GELU, softmax attention) with a linear head.
#[derive(Module, Debug)]
struct Encoder {
    encoder: TransformerEncoder,
    head: Linear,
}

impl Encoder {
    fn new(device: &Device) -> Self {
        Self {
            encoder: TransformerEncoderConfig::new(16, 32, 2, 2)
                .with_dropout(0.0)
                .init(device),
            head: LinearConfig::new(16, 4).init(device),
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.head
            .forward(self.encoder.forward(TransformerEncoderInput::new(x)))
    }
}

// ----- helpers ---------------------------------------------------------------------------------

/// A float tensor of any rank 1..=4 from values and a shape.
fn tensor_any(v: &[f32], shape: &[usize]) -> Vec<burn::backend::DispatchTensor> {
    let data = TensorData::new(v.to_vec(), shape.to_vec());
    let dev = device();
    match shape.len() {
        2 => vec![Tensor::<2>::from_data(data, &dev).into_dispatch()],
        3 => vec![Tensor::<3>::from_data(data, &dev).into_dispatch()],
        4 => vec![Tensor::<4>::from_data(data, &dev).into_dispatch()],
        r => panic!("rank {r}"),
    }
}

fn ops(model: &ModelProto) -> Vec<String> {
    let mut v: Vec<String> = model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// W8A8 with shared join quantizers (residual adds and concats on one grid, as an integer
/// runtime needs), so the export of joins is covered too.
fn w8a8() -> GraphRecipe {
    GraphRecipe::weights_and_inputs(
        QuantSpec::int8_weight_per_output_channel(),
        QuantSpec::int8_act_per_tensor(),
    )
    .with_share_joins(true)
}

/// Float export of `graph` bound to `model`: checker + onnxruntime equal to the interpreter
/// within 1e-5 relative. Returns the max relative error (`None` without the verifier).
fn check_float<M: Module>(
    test: &str,
    graph: &Graph,
    model: &M,
    x: &[f32],
    shape: &[usize],
) -> Option<f32> {
    let exported = OnnxExport::new(graph).bind(model).qdq().unwrap();
    let mut interp = Interpreter::new(graph, &device());
    interp.bind(model);
    let want = to_host(interp.run(tensor_any(x, shape)).unwrap().remove(0)).unwrap();
    let run = run_verifier(
        "onnx_qdq_run.py",
        &work_dir(test),
        &exported.model,
        x,
        shape,
        &[],
        &[],
    )?;
    let err = max_rel_err(&run.values[0].1, &want);
    println!(
        "{test}: float, max relative error {err:e}; ops {:?}",
        ops(&exported.model)
    );
    assert!(err <= 1e-5, "{test}: float max relative error {err}");
    Some(err)
}

/// Activation quantizer nodes of a quantized graph: (node index, quantizer index).
fn act_quants(qg: &QuantizedGraph) -> Vec<(usize, usize)> {
    qg.graph
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(n, node)| match &node.op {
            Op::Quant(q)
                if !matches!(
                    qg.graph.value(node.inputs[0]).origin,
                    ValueOrigin::Param(_) | ValueOrigin::Constant(_)
                ) =>
            {
                Some((n, q.quantizer))
            }
            _ => None,
        })
        .collect()
}

/// QDQ export of `qg` bound to `model` (with the weights of a Stage 2 `result`, if given):
/// checker, every activation quantizer exact on onnxruntime's own inputs, and end to end as
/// the module docs say. Returns the output's max
/// relative error and the count of differing codes of all codes (`None` without the
/// verifier).
fn check_qdq<M: Module>(
    test: &str,
    qg: &QuantizedGraph,
    model: &M,
    x: &[f32],
    shape: &[usize],
    stage2: Option<&Stage2Result>,
) -> Option<(f32, usize, usize)> {
    let mut export = OnnxExport::quantized(qg).bind(model);
    if let Some(result) = stage2 {
        export = export.with_stage2(result);
    }
    let exported: ExportedGraph = export.qdq().unwrap();
    let g = &qg.graph;
    let quants = act_quants(qg);
    assert!(!quants.is_empty(), "{test}: no activation quantizer");
    let input_name = exported.model.graph.as_ref().unwrap().input[0].name.clone();
    let output_name = exported.model.graph.as_ref().unwrap().output[0]
        .name
        .clone();
    // Fetch every activation quantizer's input and output (except the graph's own input and
    // output, which the run already has).
    let mut fetch: Vec<String> = Vec::new();
    for &(n, _) in &quants {
        for v in [g.nodes[n].inputs[0], g.nodes[n].outputs[0]] {
            let name = exported.name_of(v).unwrap().to_string();
            if name != input_name && name != output_name && !fetch.contains(&name) {
                fetch.push(name);
            }
        }
    }
    let fetch_refs: Vec<&str> = fetch.iter().map(String::as_str).collect();
    let run = run_verifier(
        "onnx_qdq_run.py",
        &work_dir(test),
        &exported.model,
        x,
        shape,
        &fetch_refs,
        &[],
    )?;
    let ort_value = |name: &str| -> Value {
        if name == input_name {
            (shape.to_vec(), x.to_vec())
        } else if name == output_name {
            run.values[0].clone()
        } else {
            run.values[1 + fetch.iter().position(|f| f == name).unwrap()].clone()
        }
    };
    // The interpreter's values at the same points.
    let taps: Vec<_> = quants.iter().map(|&(n, _)| g.nodes[n].outputs[0]).collect();
    let mut interp = Interpreter::new(g, &device());
    interp.bind(model);
    interp.bind(&qg.owned);
    let ours = interp
        .execute(
            tensor_any(x, shape),
            &QuantContext::new(&qg.quantizers),
            &taps,
            None,
        )
        .unwrap();
    let want = to_host(ours.outputs.unwrap().remove(0)).unwrap();
    let mut flips = (0, 0);
    for (&(n, q), tap) in quants.iter().zip(ours.taps) {
        let node = &g.nodes[n];
        let (in_shape, ort_in) = ort_value(exported.name_of(node.inputs[0]).unwrap());
        let (_, ort_out) = ort_value(exported.name_of(node.outputs[0]).unwrap());
        // Exact on onnxruntime's own input.
        let quantizer = &qg.quantizers.quantizers[q];
        let mine = to_host(quantizer_forward(quantizer, &ort_in, &in_shape)).unwrap();
        assert_exact(
            &format!("{test}: quantizer `{}` on onnxruntime's input", node.name),
            &ort_out,
            &mine,
        );
        // Codes where the two runs differ.
        let tap = to_host(tap).unwrap();
        flips.0 += tap.iter().zip(&ort_out).filter(|(a, b)| a != b).count();
        flips.1 += tap.len();
    }
    let ort = &run.values[0].1;
    let output_err = max_rel_err(ort, &want);
    println!(
        "{test}: W8A8 QDQ, opset {:?}, {} activation codes differ of {}, output max relative error {output_err:e}; ops {:?}",
        exported.model.default_opset(),
        flips.0,
        flips.1,
        ops(&exported.model)
    );
    if flips.0 == 0 {
        assert!(
            output_err <= 1e-5,
            "{test}: no code differs, yet the output differs by {output_err}"
        );
    } else {
        // Never observed (see the module docs): rare boundary flips, each moving one
        // activation by one step, which the small models here attenuate below 1 %.
        assert!(
            flips.0 * 1000 <= flips.1,
            "{test}: {} of {} codes differ",
            flips.0,
            flips.1
        );
        assert!(
            output_err <= 1e-2,
            "{test}: output differs by {output_err} with {} flipped codes",
            flips.0
        );
    }
    Some((output_err, flips.0, flips.1))
}

/// `quantizer.forward` on a rank-erased host tensor.
fn quantizer_forward(
    q: &burn_quant::nn::Quantizer,
    v: &[f32],
    shape: &[usize],
) -> burn::backend::DispatchTensor {
    let data = TensorData::new(v.to_vec(), shape.to_vec());
    let dev = device();
    match shape.len() {
        2 => q
            .forward(Tensor::<2>::from_data(data, &dev))
            .into_dispatch(),
        3 => q
            .forward(Tensor::<3>::from_data(data, &dev))
            .into_dispatch(),
        4 => q
            .forward(Tensor::<4>::from_data(data, &dev))
            .into_dispatch(),
        r => panic!("rank {r}"),
    }
}

fn calib_batches<const D: usize>(
    shape: [usize; D],
    seeds: std::ops::Range<u64>,
    amp: f32,
) -> Vec<Tensor<D>> {
    seeds
        .map(|s| {
            Tensor::from_data(
                TensorData::new(uniform(shape.iter().product(), s, amp), shape),
                &device(),
            )
        })
        .collect()
}

// ----- tests -----------------------------------------------------------------------------------

#[test]
fn mlp_float_and_w8a8_equal_onnxruntime() {
    let dev = device();
    let mlp = Mlp::new(64, 48, 10, &dev);
    let shape = [8, 64];
    let x = uniform(8 * 64, 3, 2.0);
    let graph = capture(&mlp, tensor(&x, shape), |m: &Mlp, x| m.forward(x)).unwrap();
    if check_float("graph_mlp_float", &graph, &mlp, &x, &shape).is_none() {
        return;
    }
    let qg = quantize_graph(&graph, &w8a8(), &dev)
        .unwrap()
        .calibrate(&mlp, calib_batches(shape, 10..13, 2.0))
        .unwrap();
    check_qdq("graph_mlp_w8a8", &qg, &mlp, &x, &shape, None).unwrap();
}

#[test]
fn cnn_float_and_w8a8_equal_onnxruntime() {
    let dev = device();
    let model = warm_batch_norm(SmallCnn::new(&dev), &dev);
    let shape = [2, 1, 12, 12];
    let x = uniform(2 * 144, 5, 1.5);
    let graph = capture(&model, tensor(&x, shape), |m: &SmallCnn, x| m.forward(x)).unwrap();
    // Float: the captured graph as is (BatchNormalization unfolded).
    if check_float("graph_cnn_float", &graph, &model, &x, &shape).is_none() {
        return;
    }
    // W8A8 with BatchNorm folded into the convolutions, a shared quantizer on the residual
    // add and on the concat.
    let qg = quantize_graph(&graph, &w8a8(), &dev)
        .unwrap()
        .calibrate(&model, calib_batches(shape, 20..23, 1.5))
        .unwrap();
    assert!(
        !qg.graph
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::BatchNorm { .. }))
    );
    check_qdq("graph_cnn_w8a8", &qg, &model, &x, &shape, None).unwrap();
}

#[test]
fn transformer_float_and_w8a8_equal_onnxruntime() {
    let dev = device();
    let model = Encoder::new(&dev);
    let shape = [2, 6, 16];
    let x = uniform(2 * 6 * 16, 7, 1.0);
    let graph = capture(&model, tensor(&x, shape), |m: &Encoder, x| m.forward(x)).unwrap();
    if check_float("graph_transformer_float", &graph, &model, &x, &shape).is_none() {
        return;
    }
    let qg = quantize_graph(&graph, &w8a8(), &dev)
        .unwrap()
        .calibrate(&model, calib_batches(shape, 30..33, 1.0))
        .unwrap();
    check_qdq("graph_transformer_w8a8", &qg, &model, &x, &shape, None).unwrap();
}

/// W4 per input group (blocked int4, opset 21) on an MLP: the weights' DequantizeLinear in
/// onnxruntime gives the quantized weights bit for bit and the output equals the interpreter
/// to float round-off (no activation quantizer, so no code can flip).
#[test]
fn mlp_w4_input_groups_equal_onnxruntime() {
    let dev = device();
    let mlp = Mlp::new(64, 48, 10, &dev);
    let shape = [8, 64];
    let x = uniform(8 * 64, 9, 2.0);
    let graph = capture(&mlp, tensor(&x, shape), |m: &Mlp, x| m.forward(x)).unwrap();
    let qg = quantize_graph(
        &graph,
        &GraphRecipe::weights(QuantSpec::int4_weight_per_input_group(16)),
        &dev,
    )
    .unwrap();
    let exported = OnnxExport::quantized(&qg).bind(&mlp).qdq().unwrap();
    assert_eq!(
        (exported.model.default_opset(), exported.model.ir_version),
        (Some(21), 10)
    );
    let codes = exported
        .model
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .filter(|t| t.dtype() == Some(DataType::Int4))
        .count();
    assert_eq!(codes, 2, "both weights stored as int4 codes");
    let Some(run) = run_verifier(
        "onnx_qdq_run.py",
        &work_dir("graph_mlp_w4"),
        &exported.model,
        &x,
        &shape,
        &["fc1.weight", "fc2.weight"],
        &[],
    ) else {
        return;
    };
    // The dequantized weights are exactly what the interpreter's weight quantizers give.
    for (k, (fc, path)) in [(&mlp.fc1, "fc1.weight"), (&mlp.fc2, "fc2.weight")]
        .into_iter()
        .enumerate()
    {
        let node = qg
            .graph
            .nodes
            .iter()
            .find(|n| matches!(&n.op, Op::Quant(q) if matches!(&q.site, burn_quant_graph::quantize::QuantSite::Weight { param, .. } if param == path)))
            .unwrap();
        let Op::Quant(q) = &node.op else {
            unreachable!()
        };
        let want = host(qg.quantizers.quantizers[q.quantizer].forward(fc.weight.val()));
        assert_exact(&format!("{path} dequantized"), &run.values[1 + k].1, &want);
    }
    let want: Tensor<2> = qg.forward(&mlp, tensor(&x, shape)).unwrap();
    let err = max_rel_err(&run.values[0].1, &host(want));
    println!("graph_mlp_w4: max relative error {err:e}");
    assert!(err <= 1e-5, "W4 output max relative error {err}");
}

/// GPTQ through the graph on the CNN (BatchNorm folded, convolutions through im2col), W8A8:
/// the exported weights are the codes Stage 2 decided (int8, byte for byte), also after
/// `apply` switched their quantizers off, and the model runs in onnxruntime as in the
/// interpreter.
#[test]
fn cnn_gptq_weights_export_code_for_code() {
    let dev = device();
    let model = warm_batch_norm(SmallCnn::new(&dev), &dev);
    let shape = [2, 1, 12, 12];
    let x = uniform(2 * 144, 41, 1.5);
    let graph = capture(&model, tensor(&x, shape), |m: &SmallCnn, x| m.forward(x)).unwrap();
    let calib = calib_batches(shape, 50..54, 1.5);
    let qg = quantize_graph(&graph, &w8a8(), &dev)
        .unwrap()
        .calibrate(&model, calib.clone())
        .unwrap();
    let result = stage2(&qg, &model, &"gptq".parse().unwrap(), &calib).unwrap();
    assert_eq!(result.weights.len(), 6);
    let (model, qg) = result.apply(model, qg).unwrap();
    let exported = OnnxExport::quantized(&qg)
        .bind(&model)
        .with_stage2(&result)
        .qdq()
        .unwrap();
    let inits = &exported.model.graph.as_ref().unwrap().initializer;
    for w in &result.weights {
        let want = burn_quant::export::onnx::HostQuant::from_any(&w.tensor, &w.path).unwrap();
        assert_eq!(want.values, w.dequantized, "{}", w.path);
        let codes = inits
            .iter()
            .find(|t| t.name == format!("{}_quantized", w.path))
            .unwrap_or_else(|| panic!("no codes for {}", w.path));
        assert_eq!(codes.dtype(), Some(DataType::Int8), "{}", w.path);
        let got: Vec<i32> = codes.raw_data.iter().map(|&b| b as i8 as i32).collect();
        assert_eq!(got, want.codes, "{}: codes", w.path);
    }
    check_qdq(
        "graph_cnn_gptq_w8a8",
        &qg,
        &model,
        &x,
        &shape,
        Some(&result),
    );
}

/// The same W8A8 CNN and transformer as QONNX (`Quant` nodes of the
/// `qonnx.custom_op.general` domain instead of QDQ pairs; weights as on-grid floats
/// re-quantized by `Quant`), executed node by node by qonnx's reference executor: its output
/// equals the interpreter's within the float tolerance (measured: bit-identical, as for QDQ).
#[test]
fn cnn_and_transformer_w8a8_qonnx_run_in_qonnx() {
    let dev = device();
    let cnn = warm_batch_norm(SmallCnn::new(&dev), &dev);
    let cnn_shape = [2, 1, 12, 12];
    let cnn_x = uniform(2 * 144, 61, 1.5);
    let enc = Encoder::new(&dev);
    let enc_shape = [2, 6, 16];
    let enc_x = uniform(2 * 6 * 16, 62, 1.0);
    let cnn_graph = capture(&cnn, tensor(&cnn_x, cnn_shape), |m: &SmallCnn, x| {
        m.forward(x)
    })
    .unwrap();
    let enc_graph = capture(&enc, tensor(&enc_x, enc_shape), |m: &Encoder, x| {
        m.forward(x)
    })
    .unwrap();
    let cnn_qg = quantize_graph(&cnn_graph, &w8a8(), &dev)
        .unwrap()
        .calibrate(&cnn, calib_batches(cnn_shape, 70..73, 1.5))
        .unwrap();
    let enc_qg = quantize_graph(&enc_graph, &w8a8(), &dev)
        .unwrap()
        .calibrate(&enc, calib_batches(enc_shape, 80..83, 1.0))
        .unwrap();
    let cnn_y: Tensor<2> = cnn_qg.forward(&cnn, tensor(&cnn_x, cnn_shape)).unwrap();
    let enc_y: Tensor<3> = enc_qg.forward(&enc, tensor(&enc_x, enc_shape)).unwrap();
    let cases = [
        (
            "graph_cnn_w8a8_qonnx",
            host(cnn_y),
            &cnn_x,
            &cnn_shape[..],
            OnnxExport::quantized(&cnn_qg).bind(&cnn).qonnx().unwrap(),
        ),
        (
            "graph_transformer_w8a8_qonnx",
            host(enc_y),
            &enc_x,
            &enc_shape[..],
            OnnxExport::quantized(&enc_qg).bind(&enc).qonnx().unwrap(),
        ),
    ];
    for (test, want, x, shape, exported) in cases {
        let Some(run) = run_verifier(
            "qonnx_exec.py",
            &work_dir(test),
            &exported.model,
            x,
            shape,
            &[],
            &[],
        ) else {
            return;
        };
        let err = max_rel_err(&run.values[0].1, &want);
        println!("{test}: {}, output max relative error {err:e}", run.summary);
        assert!(err <= 1e-5, "{test}: output max relative error {err}");
    }
}

/// Ops the three models above do not use, in one float model: transposed and 1-D
/// convolutions, average pooling with padding, adaptive pooling to a size that does not divide
/// the input (Burn's windows), slices, an index select, masked fill, reductions, clamps and
/// element-wise activations, casts. onnxruntime equals the interpreter within 1e-5 relative.
#[test]
fn op_zoo_float_equals_onnxruntime() {
    use burn::nn::conv::{Conv1d, Conv1dConfig, ConvTranspose2d, ConvTranspose2dConfig};
    use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
    use burn::tensor::{Bool, Int};

    #[derive(Module, Debug)]
    struct Zoo {
        up: ConvTranspose2d,
        avg: AvgPool2d,
        adaptive: AdaptiveAvgPool2d,
        conv1d: Conv1d,
    }

    impl Zoo {
        fn forward(&self, x: Tensor<4>) -> Tensor<2> {
            let dev = x.device();
            let [n, _, _, _] = x.dims();
            let y = self.up.forward(x); // [n, 3, 9, 9]
            let y = self.avg.forward(y); // [n, 3, 9, 9]
            let y = self.adaptive.forward(y); // [n, 3, 4, 4]
            let y = burn::tensor::activation::leaky_relu(y, 0.1);
            let y = y.clone() + burn::tensor::activation::sigmoid(y.clone()) * y.clone().tanh();
            let y =
                burn::tensor::activation::hard_sigmoid(y.clone(), 0.2, 0.5) - y.clamp(-0.3, 0.4);
            let y = y.slice([0..n, 0..3, 1..4, 0..4]); // [n, 3, 3, 4]
            let idx = Tensor::<1, Int>::from_ints([2, 0], &dev);
            let y = y.select(1, idx); // [n, 2, 3, 4]
            let mask = Tensor::<4, Bool>::from_data(
                TensorData::new(
                    (0..n * 24).map(|i| i % 3 == 0).collect::<Vec<_>>(),
                    [n, 2, 3, 4],
                ),
                &dev,
            );
            let y = y.mask_fill(mask, -0.25);
            let y = y.clone().exp().sqrt() + y.powf_scalar(2.0) * 0.5;
            let m = y.clone().mean_dim(3) + y.clone().max_dim(3) - y.clone().sum_dim(3) / 7.0;
            let z = self.conv1d.forward(m.reshape([n, 2, 3])); // [n, 4, 3]
            let z = burn::tensor::activation::log_softmax(z, 1);
            z.reshape([n, 12])
        }
    }

    let dev = device();
    let model = Zoo {
        up: ConvTranspose2dConfig::new([4, 3], [3, 3])
            .with_stride([2, 2])
            .with_padding([1, 1])
            .with_padding_out([0, 0])
            .init(&dev),
        avg: AvgPool2dConfig::new([3, 3])
            .with_strides([1, 1])
            .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_count_include_pad(false)
            .init(),
        adaptive: AdaptiveAvgPool2dConfig::new([4, 4]).init(),
        conv1d: Conv1dConfig::new(2, 4, 2)
            .with_padding(burn::nn::PaddingConfig1d::Explicit(1, 0))
            .init(&dev),
    };
    let shape = [2, 4, 5, 5];
    let x = uniform(2 * 4 * 25, 17, 1.0);
    let graph = capture(&model, tensor(&x, shape), |m: &Zoo, x| m.forward(x)).unwrap();
    println!("{:?}", graph.op_histogram());
    check_float("graph_op_zoo_float", &graph, &model, &x, &shape);
}

/// The whole chain on a model built from `burn::nn` only, with no change to its code: capture
/// → quantize (W8A8, BatchNorm folded) → calibrate → GPTQ on every weight → QAT steps through
/// the interpreter → ONNX QDQ export, which onnxruntime runs as the interpreter does.
#[test]
fn capture_quantize_gptq_qat_export_chain_on_a_burn_nn_cnn() {
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::{AdamConfig, GradientsParams};
    let dev = device();
    let model = warm_batch_norm(SmallCnn::new(&dev), &dev);
    let shape = [2, 1, 12, 12];
    let x = uniform(2 * 144, 61, 1.5);
    let graph = capture(&model, tensor(&x, shape), |m: &SmallCnn, x| m.forward(x)).unwrap();
    let calib = calib_batches(shape, 70..74, 1.5);
    let qg = quantize_graph(&graph, &w8a8(), &dev)
        .unwrap()
        .calibrate(&model, calib.clone())
        .unwrap();
    let result = stage2(&qg, &model, &"gptq".parse().unwrap(), &calib).unwrap();
    let (model, qg) = result.apply(model, qg).unwrap();
    // QAT from the GPTQ weights: weight quantizers on again, a few Adam steps.
    let ad = dev.clone().autodiff();
    let mut trained = qg.with_weight_quantizers(true).into_model(model).train().fork(&ad);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let targets = Tensor::<1, burn::tensor::Int>::from_data([3, 7], &ad);
    let before = host(trained.model.head.weight.val());
    for (i, batch) in calib.iter().enumerate() {
        let xb = Tensor::<4>::from_data(batch.clone().into_data(), &ad);
        let logits: Tensor<2> = trained.forward(xb).unwrap();
        let loss = loss_fn.forward(logits, targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &trained);
        trained = optim.step(1e-3 * (i + 1) as f64, trained, grads);
    }
    let trained = trained.valid();
    assert_ne!(host(trained.model.head.weight.val()), before, "QAT moved the weights");
    let (model, qg) = trained.into_parts();
    let Some((err, differ, total)) = check_qdq("graph_chain", &qg, &model, &x, &shape, None) else {
        return;
    };
    println!("graph_chain: max relative error {err:e}, {differ} of {total} codes differ");
    assert!(err <= 1e-5 || differ * 1000 <= total, "chain export error {err}, {differ} codes");
}

/// A batch-symbolic capture exports a symbolic `batch` axis: the CNN captured and calibrated
/// at batch 2 runs in onnxruntime at batch 5 equal to our quantized forward at batch 5
/// (Reshape targets infer the batch, the flatten and pooling follow it).
#[test]
fn batch_symbolic_capture_exports_a_symbolic_batch() {
    let dev = device();
    let model = warm_batch_norm(SmallCnn::new(&dev), &dev);
    let x2 = uniform(2 * 144, 5, 1.5);
    let graph = burn_quant_graph::capture_batched(&model, tensor(&x2, [2, 1, 12, 12]), |m: &SmallCnn, x| m.forward(x)).unwrap();
    let qg = quantize_graph(&graph, &w8a8(), &dev)
        .unwrap()
        .calibrate(&model, calib_batches([2, 1, 12, 12], 20..23, 1.5))
        .unwrap();
    let exported = OnnxExport::quantized(&qg).bind(&model).qdq().unwrap();
    let input = &exported.model.graph.as_ref().unwrap().input[0];
    let dims = format!("{:?}", input.r#type);
    assert!(dims.contains("DimParam(\"batch\")"), "input type {dims}");
    let x5 = uniform(5 * 144, 9, 1.5);
    check_qdq("graph_cnn_w8a8_batch5", &qg, &model, &x5, &[5, 1, 12, 12], None);
}
