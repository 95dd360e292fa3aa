//! Convolution building blocks written with `burn::nn` only, shared by the graph-mode tests and
//! benchmarks (models "a user brings").

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

/// A 3×3 convolution (padding 1, no bias) followed by BatchNorm.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution, `[c_out, c_in, 3, 3]`.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub bn: BatchNorm,
}

impl ConvBn {
    /// `c_in → c_out` channels with the given stride.
    pub fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    /// `bn(conv(x))`: `[N, c_in, H, W]` → `[N, c_out, H/stride, W/stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}
