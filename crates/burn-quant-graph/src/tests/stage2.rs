//! Stage 2 through the graph: RTN equals the weight quantizers (the im2col and layout maps
//! are exact), the quantized tensors dequantize to what is written back, and every
//! data-aware algorithm beats RTN on the model's output error.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Distribution, Tensor};
use burn_quant_core::{QuantSpec, fake_quant};
use burn_quant_nn::AnyQuantTensor;
use burn_quant_ptq::{Algorithm, Rtn};

use super::models::{Mlp, SmallCnn, warm_batch_norm};
use crate::{GraphRecipe, capture, quantize_graph, stage2};

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32")
}

fn dequantized(t: &AnyQuantTensor) -> Vec<f32> {
    match t {
        AnyQuantTensor::Rank2(q) => host(q.dequantize()),
        AnyQuantTensor::Rank3(q) => host(q.dequantize()),
        AnyQuantTensor::Rank4(q) => host(q.dequantize()),
        other => panic!("unexpected rank {other:?}"),
    }
}

/// Two convolutions, the second grouped.
#[derive(Module, Debug)]
struct Grouped {
    a: Conv2d,
    b: Conv2d,
}

impl Grouped {
    fn new(device: &Device) -> Self {
        Self {
            a: Conv2dConfig::new([4, 8], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            b: Conv2dConfig::new([8, 8], [3, 3])
                .with_groups(2)
                .with_stride([2, 2])
                .init(device),
        }
    }
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.b.forward(burn::tensor::activation::relu(self.a.forward(x)))
    }
}

#[test]
fn rtn_through_stage2_equals_the_weight_quantizers_on_linear_conv_and_grouped_conv() {
    let device = Device::flex();
    let cases: Vec<(crate::Graph, QuantSpec)> = {
        let cnn = warm_batch_norm(SmallCnn::new(&device), &device);
        let x = Tensor::<4>::random([2, 1, 12, 12], Distribution::Normal(0.0, 1.0), &device);
        let g1 = capture(&cnn, x, |m: &SmallCnn, x| m.forward(x)).unwrap();
        let grouped = Grouped::new(&device);
        let x = Tensor::<4>::random([2, 4, 9, 9], Distribution::Normal(0.0, 1.0), &device);
        let g2 = capture(&grouped, x, |m: &Grouped, x| m.forward(x)).unwrap();
        vec![
            (g1, QuantSpec::int8_weight_per_output_channel().with_bits(4)),
            (g2.clone(), QuantSpec::int8_weight_per_output_channel().with_bits(3)),
            (g2, QuantSpec::int4_weight_per_input_group(2)),
        ]
    };
    for (graph, spec) in cases {
        let qg = quantize_graph(&graph, &GraphRecipe::weights(spec), &device).unwrap();
        // RTN needs no data, but a batch gives the device.
        let shape: [usize; 4] = graph.value(graph.inputs[0]).shape.clone().try_into().unwrap();
        let x = Tensor::<4>::zeros(shape, &device);
        let unit = burn::nn::Identity::new();
        let result = stage2(&qg, &unit, &Algorithm::Rtn(Rtn), &[x]).unwrap();
        assert!(!result.weights.is_empty());
        for w in &result.weights {
            let param = qg.graph.param(&w.path).unwrap();
            let site_spec = qg
                .graph
                .nodes
                .iter()
                .find_map(|n| match &n.op {
                    crate::ir::Op::Quant(q) => match &q.site {
                        crate::quantize::QuantSite::Weight { param, .. } if *param == w.path => Some(q.spec),
                        _ => None,
                    },
                    _ => None,
                })
                .unwrap();
            let want = match w.shape.len() {
                2 => host(fake_quant(Tensor::<2>::from_data(param.data.clone(), &device), &site_spec).unwrap()),
                4 => host(fake_quant(Tensor::<4>::from_data(param.data.clone(), &device), &site_spec).unwrap()),
                r => panic!("rank {r}"),
            };
            assert_eq!(w.dequantized, want, "{} ({spec})", w.path);
            assert_eq!(dequantized(&w.tensor), want, "{} codes and scales", w.path);
        }
    }
}

/// Inputs with strong correlations (a rank-6 signal plus noise), as real activations have:
/// where GPTQ-style error feedback pays.
fn correlated(rows: usize, d: usize, mix: &Tensor<2>, device: &Device) -> Tensor<2> {
    let z = Tensor::<2>::random([rows, 6], Distribution::Normal(0.0, 1.0), device);
    let noise = Tensor::<2>::random([rows, d], Distribution::Normal(0.0, 0.05), device);
    z.matmul(mix.clone()) + noise
}

fn mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64
}

#[test]
fn every_data_aware_algorithm_beats_rtn_on_the_models_output() {
    let device = Device::flex();
    let model = Mlp::new(32, 48, 16, &device);
    let mix = Tensor::<2>::random([6, 32], Distribution::Normal(0.0, 1.0), &device);
    let calib: Vec<Tensor<2>> = (0..4).map(|_| correlated(64, 32, &mix, &device)).collect();
    let test = correlated(64, 32, &mix, &device);
    let graph = capture(&model, calib[0].clone(), |m: &Mlp, x| m.forward(x)).unwrap();
    let want = host(model.forward(test.clone()));
    let spec = QuantSpec::int8_weight_per_output_channel().with_bits(3);
    let error_of = |algo: &str| -> f64 {
        let qg = quantize_graph(&graph, &GraphRecipe::weights(spec), &device).unwrap();
        let algo: Algorithm = algo.parse().unwrap();
        let result = stage2(&qg, &model, &algo, &calib).unwrap();
        assert_eq!(result.weights.len(), 2);
        let (m, qg) = result.apply(model.clone(), qg).unwrap();
        // The model now holds the Stage 2 weights: its own forward and the graph agree.
        let y_graph: Tensor<2> = qg.forward(&m, test.clone()).unwrap();
        let y_eager = host(m.forward(test.clone()));
        assert_eq!(host(y_graph), y_eager);
        mse(&y_eager, &want)
    };
    let rtn = error_of("rtn");
    assert!(rtn > 0.0);
    for algo in ["gptq", "gpfq", "gptaq", "qronos"] {
        let e = error_of(algo);
        assert!(e < 0.8 * rtn, "{algo}: output MSE {e:.3e} vs RTN {rtn:.3e}");
    }
}

#[test]
fn gptq_beats_rtn_on_a_cnn_through_unfolded_inputs() {
    let device = Device::flex();
    let model = warm_batch_norm(SmallCnn::new(&device), &device);
    // Smooth images: neighbouring pixels correlate, as in real images.
    let smooth = |n: usize| {
        let x = Tensor::<4>::random([n, 1, 12, 12], Distribution::Normal(0.0, 1.0), &device);
        let blur = burn::nn::pool::AvgPool2dConfig::new([3, 3])
            .with_strides([1, 1])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init();
        blur.forward(blur.forward(x))
    };
    let calib: Vec<Tensor<4>> = (0..4).map(|_| smooth(8)).collect();
    let test = smooth(8);
    let graph = capture(&model, calib[0].clone(), |m: &SmallCnn, x| m.forward(x)).unwrap();
    let spec = QuantSpec::int8_weight_per_output_channel().with_bits(3);
    let recipe = GraphRecipe::weights(spec).with_fold_batch_norm(false);
    let run = |algo: &str| -> f64 {
        let qg = quantize_graph(&graph, &recipe, &device).unwrap();
        let result = stage2(&qg, &model, &algo.parse().unwrap(), &calib).unwrap();
        assert_eq!(result.weights.len(), 6);
        let (m, qg) = result.apply(model.clone(), qg).unwrap();
        let y: Tensor<2> = qg.forward(&m, test.clone()).unwrap();
        mse(&host(y), &host(model.forward(test.clone())))
    };
    let rtn = run("rtn");
    let gptq = run("gptq");
    assert!(gptq < 0.8 * rtn, "GPTQ {gptq:.3e} vs RTN {rtn:.3e}");
}

#[test]
fn stage2_on_a_batch_symbolic_graph_takes_batches_of_any_size() {
    let device = Device::flex();
    let model = Mlp::new(32, 48, 16, &device);
    let mix = Tensor::<2>::random([6, 32], Distribution::Normal(0.0, 1.0), &device);
    // The same 96 calibration rows, in one batch or in batches of 64 and 32.
    let rows = correlated(96, 32, &mix, &device);
    let split = vec![rows.clone().narrow(0, 0, 64), rows.clone().narrow(0, 64, 32)];
    let graph = crate::capture_batched(&model, rows.clone(), |m: &Mlp, x| m.forward(x)).unwrap();
    let spec = QuantSpec::int8_weight_per_output_channel().with_bits(3);
    let qg = quantize_graph(&graph, &GraphRecipe::weights(spec), &device).unwrap();
    let gptq: Algorithm = "gptq".parse().unwrap();
    let whole = stage2(&qg, &model, &gptq, &[rows]).unwrap();
    let parts = stage2(&qg, &model, &gptq, &split).unwrap();
    for (a, b) in whole.weights.iter().zip(&parts.weights) {
        // Same XᵀX up to summation order: the codes may differ only at rounding boundaries.
        let (ca, cb) = (dequantized(&a.tensor), dequantized(&b.tensor));
        let differ = ca.iter().zip(&cb).filter(|(x, y)| x != y).count();
        assert!(differ * 100 <= ca.len(), "{}: {differ} of {} differ", a.path, ca.len());
    }
    // The quantized graph runs any batch.
    let (m, qg) = parts.apply(model, qg).unwrap();
    let x = correlated(5, 32, &mix, &device);
    let y: Tensor<2> = qg.forward(&m, x.clone()).unwrap();
    assert_eq!(host(y), host(m.forward(x)));
}
