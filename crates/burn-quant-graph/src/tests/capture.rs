//! Capture and interpreter: lifted graphs have the expected nodes, and running them equals
//! eager execution exactly, values and gradients.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor};

use super::models::{Encoder, Mlp, SmallCnn, warm_batch_norm};
use crate::{GraphError, GraphIo, Interpreter, capture};

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32")
}

fn kinds(g: &crate::Graph) -> Vec<&'static str> {
    g.nodes.iter().map(|n| n.op.kind()).collect()
}

fn run<I: GraphIo, O: GraphIo>(g: &crate::Graph, model: Option<&impl Module>, x: I, device: &Device) -> O {
    let mut interp = Interpreter::new(g, device);
    if let Some(m) = model {
        interp.bind(m);
    }
    O::from_dispatch(interp.run(x.into_dispatch()).expect("runs")).expect("shape")
}

#[test]
fn mlp_lifts_to_two_linear_nodes_and_replays_exactly() {
    let device = Device::flex();
    let model = Mlp::new(4, 8, 3, &device);
    let x = Tensor::<2>::random([5, 4], Distribution::Normal(0.0, 1.0), &device);
    let g = capture(&model, x.clone(), |m: &Mlp, x| m.forward(x)).unwrap();
    assert_eq!(kinds(&g), ["Linear", "Relu", "Linear"], "{g}");
    assert_eq!(g.nodes[0].name, "fc1");
    assert_eq!(g.nodes[2].name, "fc2");
    assert_eq!(g.weight_of(0).unwrap().path, "fc1.weight");
    let y: Tensor<2> = run(&g, None::<&Mlp>, x.clone(), &device);
    assert_eq!(host(y), host(model.forward(x)));
    // A rank-3 input folds its batches into rows inside Burn's linear: still one node.
    let x = Tensor::<3>::random([2, 5, 4], Distribution::Normal(0.0, 1.0), &device);
    let g = capture(&model, x.clone(), |m: &Mlp, x| m.forward(x)).unwrap();
    assert_eq!(kinds(&g), ["Linear", "Relu", "Linear"], "{g}");
    let y: Tensor<3> = run(&g, Some(&model), x.clone(), &device);
    assert_eq!(host(y), host(model.forward(x)));
}

#[test]
fn cnn_with_batch_norm_residual_pool_and_concat_replays_exactly() {
    let device = Device::flex();
    let model = warm_batch_norm(SmallCnn::new(&device), &device);
    let x = Tensor::<4>::random([3, 1, 12, 12], Distribution::Normal(0.0, 1.0), &device);
    let g = capture(&model, x.clone(), |m: &SmallCnn, x| m.forward(x)).unwrap();
    let k = kinds(&g);
    for want in ["Conv2d", "BatchNorm", "Relu", "Add", "MaxPool2d", "Concat", "AdaptiveAvgPool2d", "Linear"] {
        assert!(k.contains(&want), "{want} missing from {g}");
    }
    assert_eq!(k.iter().filter(|&&k| k == "Conv2d").count(), 5);
    assert!(g.node("stem.conv").is_some() && g.node("head").is_some(), "{g}");
    // Recorded data and the live model agree.
    let y: Tensor<2> = run(&g, None::<&SmallCnn>, x.clone(), &device);
    assert_eq!(host(y), host(model.forward(x.clone())));
    let y: Tensor<2> = run(&g, Some(&model), x.clone(), &device);
    assert_eq!(host(y), host(model.forward(x)));
}

#[test]
fn transformer_encoder_replays_exactly() {
    let device = Device::flex();
    let model = Encoder::new(&device);
    let x = Tensor::<3>::random([2, 6, 16], Distribution::Normal(0.0, 1.0), &device);
    let g = capture(&model, x.clone(), |m: &Encoder, x| m.forward(x)).unwrap();
    let k = kinds(&g);
    for want in ["LayerNorm", "Gelu", "Softmax", "MatMul", "Linear", "Add"] {
        assert!(k.contains(&want), "{want} missing from {g}");
    }
    // q, k, v, o and the two feed-forward layers of two encoder layers, plus the head.
    assert_eq!(k.iter().filter(|&&k| k == "Linear").count(), 13, "{g}");
    let y: Tensor<3> = run(&g, Some(&model), x.clone(), &device);
    assert_eq!(host(y), host(model.forward(x)));
}

#[test]
fn gradients_through_the_interpreter_equal_eager_gradients() {
    let device = Device::flex().autodiff();
    // Parameters created on an autodiff device require gradients, as in a training run.
    let live = SmallCnn::new(&device);
    let x = Tensor::<4>::random([2, 1, 12, 12], Distribution::Normal(0.0, 1.0), &Device::flex());
    let g = capture(&live, x.clone(), |m: &SmallCnn, x| m.forward(x)).unwrap();
    // Batch norm uses its running statistics in the graph; train-mode batch statistics are a
    // different function, so the eager reference runs in inference mode too.
    let xa = Tensor::<4>::from_data(x.into_data(), &device);
    let eager = live.forward_inference_mode(xa.clone());
    let grads_eager = eager.clone().sum().backward();
    let mut interp = Interpreter::new(&g, &device);
    assert!(interp.bind(&live) >= 10);
    let y: Tensor<2> = Tensor::from_dispatch(interp.run(vec![xa.into_dispatch()]).unwrap().remove(0));
    assert!(y.device().is_autodiff());
    assert_eq!(host(y.clone()), host(eager));
    let grads = y.sum().backward();
    for (name, w) in [("stem.conv", &live.stem.conv.weight), ("block_b.conv", &live.block_b.conv.weight)] {
        let a = host(w.grad(&grads).expect("graph grad"));
        let b = host(w.grad(&grads_eager).expect("eager grad"));
        assert_eq!(a, b, "{name}.weight gradient");
        assert!(a.iter().any(|&v| v != 0.0));
    }
    let a = host(live.head.weight.grad(&grads).unwrap());
    let b = host(live.head.weight.grad(&grads_eager).unwrap());
    assert_eq!(a, b, "head.weight gradient");
}

impl SmallCnn {
    /// The forward with batch norm in inference mode (running statistics), on any device.
    fn forward_inference_mode(&self, x: Tensor<4>) -> Tensor<2> {
        let bn = |cb: &super::models::ConvBn, x: Tensor<4>| {
            let y = cb.conv.forward(x);
            let y = burn::tensor::module::batch_norm(
                y,
                cb.bn.gamma.val(),
                cb.bn.beta.val(),
                cb.bn.running_mean.value(),
                cb.bn.running_var.value(),
                cb.bn.epsilon,
            );
            burn::tensor::activation::relu(y)
        };
        let x = bn(&self.stem, x);
        let r = bn(&self.block_b, bn(&self.block_a, x.clone()));
        let x = self.pool.forward(x + r);
        let x = Tensor::cat(vec![bn(&self.left, x.clone()), bn(&self.right, x)], 1);
        let x = self.gap.forward(x);
        let [n, c, _, _] = x.dims();
        self.head.forward(x.reshape([n, c]))
    }
}

#[test]
fn an_unsupported_op_is_a_typed_error_naming_it() {
    let device = Device::flex();
    let fc = burn::nn::LinearConfig::new(4, 4).init(&device);
    let x = Tensor::<2>::ones([2, 4], &device);
    let err = capture(&fc, x, |m: &Linear, x| m.forward(x).cumsum(1)).unwrap_err();
    match err {
        GraphError::UnsupportedOp { op, .. } => assert_eq!(op, "Numeric::CumSum"),
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
}

#[test]
fn a_branch_on_a_computed_value_is_a_capture_error() {
    let device = Device::flex();
    let fc = burn::nn::LinearConfig::new(4, 4).init(&device);
    let x = Tensor::<2>::ones([2, 4], &device);
    let err = capture(&fc, x, |m: &Linear, x| {
        let y = m.forward(x);
        if y.clone().sum().into_scalar::<f32>() > 0.0 { y } else { -y }
    })
    .unwrap_err();
    assert!(matches!(err, GraphError::Capture(_)), "{err:?}");
}

#[test]
fn an_input_of_another_shape_is_refused() {
    let device = Device::flex();
    let model = Mlp::new(4, 8, 3, &device);
    let g = capture(&model, Tensor::<2>::ones([5, 4], &device), |m: &Mlp, x| m.forward(x)).unwrap();
    let mut interp = Interpreter::new(&g, &device);
    let err = interp
        .run(vec![Tensor::<2>::ones([6, 4], &device).into_dispatch()])
        .unwrap_err();
    assert!(
        matches!(err, GraphError::InputShape { input: 0, ref expected, ref got } if expected == &[5, 4] && got == &[6, 4]),
        "{err:?}"
    );
}

#[test]
fn integer_masks_and_comparisons_replay_exactly() {
    // An HF-style attention mask (1 = token, 0 = padding) turned into boolean masks inside the
    // forward: comparisons, logical not, bool → float casts.
    let device = Device::flex();
    let fc = burn::nn::LinearConfig::new(4, 4).init(&device);
    let x = Tensor::<3>::random([2, 3, 4], Distribution::Normal(0.0, 1.0), &device);
    let mask = Tensor::<2, burn::tensor::Int>::from_data([[1, 1, 0], [1, 0, 0]], &device);
    let forward = |m: &Linear, (x, mask): (Tensor<3>, Tensor<2, burn::tensor::Int>)| {
        let pad = mask.equal_elem(0);
        let keep = pad.clone().bool_not().float().unsqueeze_dim::<3>(2);
        let y = m.forward(x);
        y.mask_fill(pad.unsqueeze_dim::<3>(2).expand([2, 3, 4]), -5.0) * keep
    };
    let g = capture(&fc, (x.clone(), mask.clone()), forward).unwrap();
    let k = kinds(&g);
    for want in ["Compare", "Not", "Cast", "MaskFill", "Linear"] {
        assert!(k.contains(&want), "{want} missing from {g}");
    }
    let y: Tensor<3> = run(&g, Some(&fc), (x.clone(), mask.clone()), &device);
    assert_eq!(host(y), host(forward(&fc, (x, mask))));
}

#[test]
fn batch_symbolic_graphs_run_at_any_batch_size_exactly() {
    let device = Device::flex();
    let normal = |shape: Vec<usize>| match shape.len() {
        3 => Tensor::<3>::random([shape[0], shape[1], shape[2]], Distribution::Normal(0.0, 1.0), &device),
        _ => unreachable!(),
    };
    // Transformer: reshapes to [batch·seq, d] and per-head views are k × batch.
    let model = Encoder::new(&device);
    let g = crate::capture_batched(&model, normal(vec![2, 6, 16]), |m: &Encoder, x| m.forward(x)).unwrap();
    assert_eq!(g.capture_batch, Some(2));
    for b in [1, 2, 5] {
        let x = normal(vec![b, 6, 16]);
        let y: Tensor<3> = run(&g, Some(&model), x.clone(), &device);
        assert_eq!(host(y), host(model.forward(x)), "batch {b}");
    }
    // CNN with pooling, concat and a flatten reshape.
    let cnn = warm_batch_norm(SmallCnn::new(&device), &device);
    let x = Tensor::<4>::random([3, 1, 12, 12], Distribution::Normal(0.0, 1.0), &device);
    let g = crate::capture_batched(&cnn, x, |m: &SmallCnn, x| m.forward(x)).unwrap();
    for b in [1, 7] {
        let x = Tensor::<4>::random([b, 1, 12, 12], Distribution::Normal(0.0, 1.0), &device);
        let y: Tensor<2> = run(&g, Some(&cnn), x.clone(), &device);
        assert_eq!(host(y), host(cnn.forward(x)), "batch {b}");
    }
    // A fixed-shape capture still refuses another batch; slicing the batch axis cannot be
    // made symbolic.
    let mlp = Mlp::new(4, 8, 3, &device);
    let x = Tensor::<2>::ones([4, 4], &device);
    let err = crate::capture_batched(&mlp, x, |m: &Mlp, x| m.forward(x).narrow(0, 0, 2)).unwrap_err();
    assert!(matches!(err, GraphError::Capture(ref m) if m.contains("batch")), "{err:?}");
}
