//! Activation quantizers as layers: [`QuantAct`] (identity) and [`QuantReLU`].

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, activation};
use burn_quant_core::QuantSpec;

use crate::error::Result;
use crate::quantizer::{Quantizer, QuantizerConfig, QuantizerRole};

/// Configuration of [`QuantAct`].
#[derive(Config, Debug)]
pub struct QuantActConfig {
    /// The activation spec (e.g. `QuantSpec::int8_act_per_tensor()`).
    pub spec: QuantSpec,
    /// Stored scale cells (1 per tensor; the channel count for per-channel specs).
    #[config(default = 1)]
    pub cells: usize,
}

impl QuantActConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<QuantAct> {
        let act_quant = QuantizerConfig::for_spec(self.spec, QuantizerRole::Activation)
            .with_cells(self.cells)
            .init(device)?;
        Ok(QuantAct { act_quant })
    }
}

/// Identity followed by an activation quantizer (Brevitas's `QuantIdentity`): quantizes the
/// input of the next layer, or a residual stream.
#[derive(Module, Debug)]
pub struct QuantAct {
    /// The quantizer.
    pub act_quant: Quantizer,
}

impl QuantAct {
    /// Fake-quantizes `x` (any shape).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.act_quant.forward(x)
    }
}

/// Configuration of [`QuantReLU`].
#[derive(Config, Debug)]
pub struct QuantReLUConfig {
    /// The output spec; unsigned (`QuantSpec::uint8_act_per_tensor()`) suits ReLU.
    pub spec: QuantSpec,
}

impl QuantReLUConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<QuantReLU> {
        let act_quant = QuantizerConfig::for_spec(self.spec, QuantizerRole::Activation).init(device)?;
        Ok(QuantReLU { act_quant })
    }
}

/// ReLU followed by an output quantizer.
#[derive(Module, Debug)]
pub struct QuantReLU {
    /// The output quantizer.
    pub act_quant: Quantizer,
}

impl QuantReLU {
    /// `Q(relu(x))`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.act_quant.forward(activation::relu(x))
    }
}
