//! The fused fake-quant under autodiff: the inner backend's forward, and a hand-written
//! backward that calls the inner backend's one-pass backward kernel.

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend};

use super::{FakeQuantArgs, FakeQuantBackend};

/// The backward step: `(x, scale, zero_point)` saved from the forward.
#[derive(Debug)]
struct FakeQuantBackward;

impl<B: Backend + FakeQuantBackend> Backward<B, 3> for FakeQuantBackward {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FakeQuantArgs,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _ckpt: &mut Checkpointer) {
        let [node_x, node_s, node_z] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, s, z, args) = ops.state;
        let (dx, ds, dz) = B::fake_quant_backward(x, s, z, grad, args);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_s {
            grads.register::<B>(node.id, ds);
        }
        // Without a zero-point the third input is a placeholder (the scale again).
        if args.has_zero_point
            && let Some(node) = node_z
        {
            grads.register::<B>(node.id, dz);
        }
    }
}

impl<B: Backend + FakeQuantBackend, C: CheckpointStrategy> FakeQuantBackend for Autodiff<B, C> {
    fn fake_quant(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        args: FakeQuantArgs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match FakeQuantBackward
            .prepare::<C>([x.node(), scale.node(), zero_point.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let xp = x.primitive().clone();
                let sp = scale.primitive().clone();
                let zp = zero_point.primitive().clone();
                let (y, status) = B::fake_quant(xp.clone(), sp.clone(), zp.clone(), args);
                (prep.finish((xp, sp, zp, args), y), Self::from_inner(status))
            }
            OpsKind::UnTracked(prep) => {
                let (y, status) = B::fake_quant(
                    x.into_primitive(),
                    scale.into_primitive(),
                    zero_point.into_primitive(),
                    args,
                );
                (prep.finish(y), Self::from_inner(status))
            }
        }
    }

    fn fake_quant_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        args: FakeQuantArgs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Not differentiable itself: the inner kernel on the inner tensors.
        let (dx, ds, dz) = B::fake_quant_backward(
            Self::inner(x),
            Self::inner(scale),
            Self::inner(zero_point),
            Self::inner(grad),
            args,
        );
        (
            Self::from_inner(dx),
            Self::from_inner(ds),
            Self::from_inner(dz),
        )
    }
}
