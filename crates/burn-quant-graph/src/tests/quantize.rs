//! Automatic quantization: equal to hand-built quantized layers, BatchNorm folding, shared
//! join quantizers, selection by path and op kind, and errors that name the node.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use burn_quant_core::{QuantSpec, WeightLayout};
use burn_quant_nn::{QuantLinear, QuantLinearConfig, calibrate};

use super::models::{Mlp, SmallCnn, warm_batch_norm};
use crate::ir::Op;
use crate::quantize::QuantSite;
use crate::{GraphError, GraphRecipe, capture, quantize_graph};

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32")
}

/// The same MLP written by hand with our layers.
#[derive(Module, Debug)]
struct QuantMlp {
    fc1: QuantLinear,
    fc2: QuantLinear,
}

impl QuantMlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(burn::tensor::activation::relu(self.fc1.forward(x)))
    }
}

#[test]
fn quantized_graph_equals_hand_built_layers_with_the_same_specs() {
    let device = Device::flex();
    let mlp = Mlp::new(12, 24, 5, &device);
    let batches: Vec<Tensor<2>> = (0..3)
        .map(|_| Tensor::random([7, 12], Distribution::Normal(0.0, 2.0), &device))
        .collect();
    let x = Tensor::<2>::random([7, 12], Distribution::Normal(0.0, 2.0), &device);
    let weight = QuantSpec::int8_weight_per_output_channel();
    let input = QuantSpec::int8_act_per_tensor();

    let graph = capture(&mlp, x.clone(), |m: &Mlp, x| m.forward(x)).unwrap();
    let qg = quantize_graph(&graph, &GraphRecipe::weights_and_inputs(weight, input), &device)
        .unwrap()
        .calibrate(&mlp, batches.clone())
        .unwrap();
    assert_eq!(qg.quantizers.quantizers.len(), 4, "{}", qg.graph);
    let y_graph: Tensor<2> = qg.forward(&mlp, x.clone()).unwrap();

    // fc2 reads a ReLU output: graph mode gives it the unsigned spec, as a careful hand-built
    // model does (the sign bit would be wasted).
    let cfg = |d_in, d_out, input: QuantSpec| {
        QuantLinearConfig::new(d_in, d_out)
            .with_weight_quant(Some(weight))
            .with_input_quant(Some(input))
    };
    let hand = QuantMlp {
        fc1: cfg(12, 24, input).from_float(mlp.fc1.clone(), &device).unwrap(),
        fc2: cfg(24, 5, input.with_signed(false))
            .from_float(mlp.fc2.clone(), &device)
            .unwrap(),
    };
    let (hand, _) = calibrate(hand, |m| {
        for b in &batches {
            let _ = m.forward(b.clone());
        }
    })
    .unwrap();
    let y_hand = hand.forward(x.clone());
    assert_eq!(host(y_graph.clone()), host(y_hand));
    // And quantization did something.
    let y_float = mlp.forward(x);
    assert_ne!(host(y_graph), host(y_float));
}

#[test]
fn folding_batch_norm_keeps_the_float_function() {
    let device = Device::flex();
    let model = warm_batch_norm(SmallCnn::new(&device), &device);
    let x = Tensor::<4>::random([3, 1, 12, 12], Distribution::Normal(0.0, 1.0), &device);
    let graph = capture(&model, x.clone(), |m: &SmallCnn, x| m.forward(x)).unwrap();
    let folded = quantize_graph(&graph, &GraphRecipe::default(), &device).unwrap();
    let kinds: Vec<_> = folded.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert!(!kinds.contains(&"BatchNorm"), "{}", folded.graph);
    assert_eq!(folded.owned.tensors.len(), 10, "5 folded weights and 5 biases");
    let y: Tensor<2> = folded.forward(&model, x.clone()).unwrap();
    let want = host(model.forward(x));
    let got = host(y);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * scale.max(1.0), "{a} vs {b}");
    }
    // The user's model is untouched: its graph without folding still equals eager.
    let unfolded = quantize_graph(&graph, &GraphRecipe::default().with_fold_batch_norm(false), &device).unwrap();
    assert!(unfolded.graph.nodes.iter().any(|n| n.op.kind() == "BatchNorm"));
}

#[test]
fn residual_adds_and_concats_share_one_calibrated_quantizer() {
    let device = Device::flex();
    let model = warm_batch_norm(SmallCnn::new(&device), &device);
    let x = Tensor::<4>::random([3, 1, 12, 12], Distribution::Normal(0.0, 1.0), &device);
    let graph = capture(&model, x.clone(), |m: &SmallCnn, x| m.forward(x)).unwrap();
    let recipe = GraphRecipe::weights_and_inputs(
        QuantSpec::int8_weight_per_output_channel(),
        QuantSpec::int8_act_per_tensor(),
    )
    .with_share_joins(true);
    // Off by default: no join quantizer then.
    let plain = quantize_graph(&graph, &recipe.clone().with_share_joins(false), &device).unwrap();
    assert!(!plain.graph.nodes.iter().any(|n| matches!(&n.op, Op::Quant(q) if matches!(q.site, QuantSite::Join { .. }))));
    let qg = quantize_graph(&graph, &recipe, &device)
        .unwrap()
        .calibrate(&model, [x.clone()])
        .unwrap();
    let g = &qg.graph;
    let mut joins = 0;
    for node in &g.nodes {
        if matches!(node.op.kind(), "Add" | "Concat") {
            let qs: Vec<usize> = node
                .inputs
                .iter()
                .map(|&v| match &g.nodes[g.producer(v).unwrap()].op {
                    Op::Quant(q) => {
                        assert!(matches!(q.site, QuantSite::Join { .. }));
                        q.quantizer
                    }
                    other => panic!("join input from {}", other.kind()),
                })
                .collect();
            assert!(qs.windows(2).all(|w| w[0] == w[1]), "one quantizer per join");
            // Its calibrated scale covers every input: absmax over all of them / 127.
            let scale = host(qg.quantizers.quantizers[qs[0]].scale.as_ref().unwrap().val())[0];
            assert!(scale > 0.0);
            joins += 1;
        }
    }
    assert_eq!(joins, 2, "the residual add and the concat");
    let y: Tensor<2> = qg.forward(&model, x).unwrap();
    assert!(host(y).iter().all(|v| v.is_finite()));
}

#[test]
fn weight_axes_resolve_by_layer_kind() {
    let device = Device::flex();
    let model = SmallCnn::new(&device);
    let x = Tensor::<4>::ones([1, 1, 12, 12], &device);
    let graph = capture(&model, x, |m: &SmallCnn, x| m.forward(x)).unwrap();
    let qg = quantize_graph(
        &graph,
        &GraphRecipe::weights(QuantSpec::int8_weight_per_output_channel()),
        &device,
    )
    .unwrap();
    for node in &qg.graph.nodes {
        if let Op::Quant(q) = &node.op
            && let QuantSite::Weight { layout, .. } = &q.site
        {
            let want = match layout {
                WeightLayout::Conv => 0,
                WeightLayout::Linear => 1,
                other => panic!("unexpected layout {other:?}"),
            };
            assert_eq!(q.spec.granularity.axis(), Some(want), "{}", node.name);
        }
    }
    // The old trap: a Linear-axis spec on a convolution is an error naming the layer.
    let err = quantize_graph(
        &graph,
        &GraphRecipe::weights(QuantSpec::int8_weight_per_channel()),
        &device,
    )
    .unwrap_err();
    match err {
        GraphError::Core { at, .. } => assert!(at.contains("stem.conv.weight"), "{at}"),
        other => panic!("expected a core error, got {other:?}"),
    }
}

#[test]
fn include_exclude_and_op_kinds_select_nodes() {
    let device = Device::flex();
    let model = SmallCnn::new(&device);
    let x = Tensor::<4>::ones([1, 1, 12, 12], &device);
    let graph = capture(&model, x, |m: &SmallCnn, x| m.forward(x)).unwrap();
    let weights_of = |recipe: &GraphRecipe| -> Vec<String> {
        let qg = quantize_graph(&graph, recipe, &device).unwrap();
        qg.graph
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Quant(q) => match &q.site {
                    QuantSite::Weight { layer, .. } => Some(layer.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    };
    let spec = QuantSpec::int8_weight_per_output_channel();
    assert_eq!(weights_of(&GraphRecipe::weights(spec)).len(), 6);
    assert_eq!(weights_of(&GraphRecipe::weights(spec).exclude("head")).len(), 5);
    assert_eq!(
        weights_of(&GraphRecipe::weights(spec).include("block_*.conv")),
        ["block_a.conv", "block_b.conv"]
    );
    assert_eq!(weights_of(&GraphRecipe::weights(spec).with_ops(&["Linear"])), ["head"]);
    let bad = GraphRecipe::weights(spec).with_ops(&["Softmax"]);
    assert!(matches!(
        quantize_graph(&graph, &bad, &device),
        Err(GraphError::Recipe { ref at, .. }) if at == "ops[0]"
    ));
}

#[test]
fn an_uncalibrated_static_quantizer_is_an_error_naming_its_node() {
    let device = Device::flex();
    let mlp = Mlp::new(4, 8, 3, &device);
    let x = Tensor::<2>::ones([2, 4], &device);
    let graph = capture(&mlp, x.clone(), |m: &Mlp, x| m.forward(x)).unwrap();
    let qg = quantize_graph(
        &graph,
        &GraphRecipe::weights_and_inputs(QuantSpec::int8_weight_per_output_channel(), QuantSpec::int8_act_per_tensor()),
        &device,
    )
    .unwrap();
    let err = qg.forward::<_, _, Tensor<2>>(&mlp, x.clone()).unwrap_err();
    assert!(matches!(err, GraphError::Quant { source: burn_quant_nn::NnError::NotCalibrated { .. }, .. }), "{err:?}");
    let err = qg.calibrate(&mlp, Vec::<Tensor<2>>::new()).unwrap_err();
    assert!(matches!(err, GraphError::Quant { source: burn_quant_nn::NnError::EmptyCalibration { count: 2 }, .. }), "{err:?}");
}

#[test]
fn the_books_toml_recipe_parses_into_the_same_recipe_as_the_builders() {
    let text = include_str!("../../../../book/src/graph-mode.md");
    let toml_block = text
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the chapter has a TOML recipe");
    let recipe: GraphRecipe = toml::from_str(toml_block).unwrap();
    let want = GraphRecipe::weights_and_inputs(
        QuantSpec::int4_weight_per_input_group(128),
        QuantSpec::int8_act_per_tensor(),
    )
    .exclude("head");
    assert_eq!(recipe, want);
    // Unknown fields are refused, not ignored.
    assert!(toml::from_str::<GraphRecipe>("weights = {}").is_err());
}
