//! Models built from `burn::nn` only, as a user would write them.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Distribution, Tensor};

/// `fc2(relu(fc1(x)))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub act: Relu,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(d_in: usize, hidden: usize, d_out: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(d_in, hidden).init(device),
            act: Relu::new(),
            fc2: LinearConfig::new(hidden, d_out).init(device),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.fc2.forward(self.act.forward(self.fc1.forward(x)))
    }
}

/// conv → BN → ReLU.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl ConvBn {
    pub fn new(c_in: usize, c_out: usize, bias: bool, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(bias)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        burn::tensor::activation::relu(self.bn.forward(self.conv.forward(x)))
    }
}

/// A small ResNet-style CNN: stem, a residual block, max pooling, two branches concatenated,
/// global average pooling and a linear head.
#[derive(Module, Debug)]
pub struct SmallCnn {
    pub stem: ConvBn,
    pub block_a: ConvBn,
    pub block_b: ConvBn,
    pub pool: MaxPool2d,
    pub left: ConvBn,
    pub right: ConvBn,
    pub gap: AdaptiveAvgPool2d,
    pub head: Linear,
}

impl SmallCnn {
    pub fn new(device: &Device) -> Self {
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

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.stem.forward(x);
        let r = self.block_b.forward(self.block_a.forward(x.clone()));
        let x = self.pool.forward(x + r);
        let x = Tensor::cat(vec![self.left.forward(x.clone()), self.right.forward(x)], 1);
        let x = self.gap.forward(x);
        let [n, c, _, _] = x.dims();
        self.head.forward(x.reshape([n, c]))
    }
}

/// Gives every BatchNorm of `model` non-trivial running statistics by a few training-mode
/// forwards on an autodiff device (the statistics are what folding must get right).
pub fn warm_batch_norm(model: SmallCnn, device: &Device) -> SmallCnn {
    let ad = device.clone().autodiff();
    let model = model.to_device(&ad);
    for _ in 0..3 {
        let x = Tensor::<4>::random([4, 1, 12, 12], Distribution::Normal(0.5, 1.5), &ad);
        let _ = model.forward(x);
    }
    // `valid()` merges the pending running-state updates and drops autodiff.
    model.valid().to_device(device)
}

/// A transformer encoder (LayerNorm, GELU, softmax attention) with a linear head.
#[derive(Module, Debug)]
pub struct Encoder {
    pub encoder: TransformerEncoder,
    pub head: Linear,
}

impl Encoder {
    pub fn new(device: &Device) -> Self {
        Self {
            encoder: TransformerEncoderConfig::new(16, 32, 2, 2)
                .with_dropout(0.0)
                .init(device),
            head: LinearConfig::new(16, 4).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.head
            .forward(self.encoder.forward(TransformerEncoderInput::new(x)))
    }
}
