//! Activation quantizers as layers: [`QuantAct`] (identity), and [`QuantReLU`],
//! [`QuantSigmoid`], [`QuantTanh`], [`QuantHardTanh`] (the activation, then an output quantizer).
//!
//! Their configs follow the rule of every builder in this crate: the spec is a plain
//! [`QuantSpec`] (`QuantReLUConfig::new(QuantSpec::uint8_act_per_tensor())`); these layers
//! exist to quantize, so the spec is required, and a float activation is Burn's own layer.
//! A stored per-channel scale needs its channel count: `with_cells(channels)`.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::tensor::{Device, Tensor, activation};
use burn_quant_core::QuantSpec;

use crate::display::scale_source;
use crate::error::{NnError, Result};
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
#[module(custom_display)]
pub struct QuantAct {
    /// The quantizer.
    pub act_quant: Quantizer,
}

/// `ModuleDisplay` of an activation layer that holds only its quantizer (`act_quant`): one
/// line with the spec and where the scale comes from.
macro_rules! act_quant_display {
    ($($layer:ty),*) => {$(
        impl ModuleDisplay for $layer {
            fn custom_settings(&self) -> Option<DisplaySettings> {
                DisplaySettings::new()
                    .with_new_line_after_attribute(false)
                    .optional()
            }

            fn custom_content(&self, content: Content) -> Option<Content> {
                content
                    .add("act_quant", &self.act_quant.spec.to_string())
                    .add("scale", &scale_source(&self.act_quant))
                    .optional()
            }
        }
    )*};
}

act_quant_display!(QuantAct, QuantReLU, QuantSigmoid, QuantTanh);

impl QuantAct {
    /// Fake-quantizes `x` (any shape).
    ///
    /// # Panics
    /// On an error of [`QuantAct::try_forward`].
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.act_quant.forward(x)
    }

    /// [`QuantAct::forward`] returning errors instead of panicking.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        self.act_quant.try_forward(x)
    }
}

/// Configuration of [`QuantReLU`].
#[derive(Config, Debug)]
pub struct QuantReLUConfig {
    /// The output spec; unsigned (`QuantSpec::uint8_act_per_tensor()`) suits ReLU.
    pub spec: QuantSpec,
    /// Stored scale cells (1 per tensor; the channel count for per-channel specs).
    #[config(default = 1)]
    pub cells: usize,
}

impl QuantReLUConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<QuantReLU> {
        Ok(QuantReLU {
            act_quant: output_quantizer(self.spec, self.cells, device)?,
        })
    }
}

/// ReLU followed by an output quantizer.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantReLU {
    /// The output quantizer.
    pub act_quant: Quantizer,
}

impl QuantReLU {
    /// `Q(relu(x))`.
    ///
    /// # Panics
    /// On an error of [`QuantReLU::try_forward`].
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.act_quant.forward(activation::relu(x))
    }

    /// [`QuantReLU::forward`] returning errors instead of panicking.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        self.act_quant.try_forward(activation::relu(x))
    }
}

/// Builds the output quantizer of an activation layer (`cells` stored scale cells).
fn output_quantizer(spec: QuantSpec, cells: usize, device: &Device) -> Result<Quantizer> {
    QuantizerConfig::for_spec(spec, QuantizerRole::Activation)
        .with_cells(cells)
        .init(device)
}

/// Configuration of [`QuantSigmoid`].
#[derive(Config, Debug)]
pub struct QuantSigmoidConfig {
    /// The output spec; unsigned (`QuantSpec::uint8_act_per_tensor()`) suits the `(0, 1)`
    /// range.
    pub spec: QuantSpec,
    /// Stored scale cells (1 per tensor; the channel count for per-channel specs).
    #[config(default = 1)]
    pub cells: usize,
}

impl QuantSigmoidConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<QuantSigmoid> {
        Ok(QuantSigmoid {
            act_quant: output_quantizer(self.spec, self.cells, device)?,
        })
    }
}

/// Sigmoid followed by an output quantizer.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantSigmoid {
    /// The output quantizer.
    pub act_quant: Quantizer,
}

impl QuantSigmoid {
    /// `Q(sigmoid(x))`, any shape.
    ///
    /// # Panics
    /// On an error of [`QuantSigmoid::try_forward`].
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.act_quant.forward(activation::sigmoid(x))
    }

    /// [`QuantSigmoid::forward`] returning errors (e.g. an uncalibrated static scale).
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        self.act_quant.try_forward(activation::sigmoid(x))
    }
}

/// Configuration of [`QuantTanh`].
#[derive(Config, Debug)]
pub struct QuantTanhConfig {
    /// The output spec; signed (`QuantSpec::int8_act_per_tensor()`) suits the `(-1, 1)` range.
    pub spec: QuantSpec,
    /// Stored scale cells (1 per tensor; the channel count for per-channel specs).
    #[config(default = 1)]
    pub cells: usize,
}

impl QuantTanhConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Result<QuantTanh> {
        Ok(QuantTanh {
            act_quant: output_quantizer(self.spec, self.cells, device)?,
        })
    }
}

/// Tanh followed by an output quantizer.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantTanh {
    /// The output quantizer.
    pub act_quant: Quantizer,
}

impl QuantTanh {
    /// `Q(tanh(x))`, any shape.
    ///
    /// # Panics
    /// On an error of [`QuantTanh::try_forward`].
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.act_quant.forward(activation::tanh(x))
    }

    /// [`QuantTanh::forward`] returning errors (e.g. an uncalibrated static scale).
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        self.act_quant.try_forward(activation::tanh(x))
    }
}

/// Configuration of [`QuantHardTanh`].
#[derive(Config, Debug)]
pub struct QuantHardTanhConfig {
    /// The output spec (e.g. `QuantSpec::int8_act_per_tensor()`).
    pub spec: QuantSpec,
    /// Lower clamp bound.
    #[config(default = -1.0)]
    pub min_val: f64,
    /// Upper clamp bound (greater than `min_val`).
    #[config(default = 1.0)]
    pub max_val: f64,
    /// Stored scale cells (1 per tensor; the channel count for per-channel specs).
    #[config(default = 1)]
    pub cells: usize,
}

impl QuantHardTanhConfig {
    /// Builds the layer; `min_val < max_val`, both finite.
    pub fn init(&self, device: &Device) -> Result<QuantHardTanh> {
        if !(self.min_val.is_finite() && self.max_val.is_finite() && self.min_val < self.max_val) {
            return Err(NnError::InvalidConfig {
                field: "min_val/max_val",
                value: format!("{}..{}", self.min_val, self.max_val),
                reason: "the bounds must be finite with min_val < max_val".into(),
            });
        }
        Ok(QuantHardTanh {
            act_quant: output_quantizer(self.spec, self.cells, device)?,
            min_val: self.min_val,
            max_val: self.max_val,
        })
    }
}

/// HardTanh (`clamp(x, min_val, max_val)`) followed by an output quantizer.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantHardTanh {
    /// The output quantizer.
    pub act_quant: Quantizer,
    /// Lower clamp bound.
    pub min_val: f64,
    /// Upper clamp bound.
    pub max_val: f64,
}

impl ModuleDisplay for QuantHardTanh {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("min_val", &self.min_val)
            .add("max_val", &self.max_val)
            .add("act_quant", &self.act_quant.spec.to_string())
            .add("scale", &scale_source(&self.act_quant))
            .optional()
    }
}

impl QuantHardTanh {
    /// `Q(clamp(x, min_val, max_val))`, any shape.
    ///
    /// # Panics
    /// On an error of [`QuantHardTanh::try_forward`].
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x)
            .unwrap_or_else(|e| panic!("QuantHardTanh: {e}"))
    }

    /// [`QuantHardTanh::forward`] returning errors (e.g. an uncalibrated static scale).
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        self.act_quant
            .try_forward(activation::hardtanh(x, self.min_val, self.max_val))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{calibrate, without_quantization};
    use burn::tensor::TensorData;
    use burn_quant_core::{QuantParams, fake_quant_with};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().expect("f32 data")
    }

    fn input(seed: u64, device: &Device) -> Tensor<2> {
        let v: Vec<f32> = (0..64)
            .map(|i| (burn_quant_core::rounding::uniform(seed, i) - 0.5) * 8.0)
            .collect();
        Tensor::from_data(TensorData::new(v, [8, 8]), device)
    }

    /// Calibrates `layer` on two batches, then checks `forward = Q_s(f(x))` with `s` = absmax of
    /// `f` over the batches / `qmax`, and that `without_quantization` gives `f(x)`.
    fn check<M: Module>(
        layer: M,
        f: impl Fn(Tensor<2>) -> Tensor<2>,
        run: impl Fn(&M, Tensor<2>) -> Result<Tensor<2>>,
        spec: QuantSpec,
        qmax: f32,
    ) {
        let device = Device::flex();
        let batches = [input(1, &device), input(2, &device).mul_scalar(0.5)];
        assert!(matches!(
            run(&layer, batches[0].clone()),
            Err(NnError::NotCalibrated { .. })
        ));
        let (layer, seen) = calibrate(layer, |m| {
            batches
                .iter()
                .map(|b| host(run(m, b.clone()).expect("calibration pass")))
                .collect::<Vec<_>>()
        })
        .expect("calibration");
        // During calibration the output passed through unquantized.
        assert_eq!(seen[0], host(f(batches[0].clone())));
        let absmax = batches
            .iter()
            .flat_map(|b| host(f(b.clone())))
            .fold(0f32, |m, v| m.max(v.abs()));
        let params = QuantParams::<2> {
            scales: Tensor::from_floats([[absmax / qmax]], &device),
            zero_points: None,
            scale_level: None,
        };
        let x = input(3, &device);
        let want = host(fake_quant_with(f(x.clone()), &spec, &params).expect("core fake-quant"));
        let got = host(run(&layer, x.clone()).expect("forward"));
        assert_eq!(got, want);
        assert_ne!(got, host(f(x.clone())), "the output is quantized");
        assert_eq!(
            host(without_quantization(
                || run(&layer, x.clone()).expect("forward")
            )),
            host(f(x))
        );
    }

    #[test]
    fn sigmoid_tanh_hardtanh_quantize_their_output_with_a_calibrated_scale() {
        let device = Device::flex();
        let u8 = QuantSpec::uint8_act_per_tensor();
        let i8 = QuantSpec::int8_act_per_tensor();
        check(
            QuantSigmoidConfig::new(u8).init(&device).unwrap(),
            activation::sigmoid,
            |m, x| m.try_forward(x),
            u8,
            255.0,
        );
        check(
            QuantTanhConfig::new(i8).init(&device).unwrap(),
            activation::tanh,
            |m, x| m.try_forward(x),
            i8,
            127.0,
        );
        let hard = QuantHardTanhConfig::new(i8)
            .with_min_val(-0.5)
            .with_max_val(1.5)
            .init(&device)
            .unwrap();
        check(
            hard,
            |x| x.clamp(-0.5, 1.5),
            |m, x| m.try_forward(x),
            i8,
            127.0,
        );
    }

    #[test]
    fn hardtanh_defaults_and_bad_bounds() {
        let device = Device::flex();
        let cfg = QuantHardTanhConfig::new(QuantSpec::int8_act_per_tensor());
        assert_eq!((cfg.min_val, cfg.max_val), (-1.0, 1.0));
        let layer = cfg.init(&device).unwrap();
        let x = Tensor::<1>::from_floats([-3.0, -0.25, 0.5, 2.0], &device);
        assert_eq!(
            host(without_quantization(|| layer.forward(x))),
            vec![-1.0, -0.25, 0.5, 1.0]
        );
        for (lo, hi) in [
            (1.0, 1.0),
            (2.0, -2.0),
            (f64::NAN, 1.0),
            (-1.0, f64::INFINITY),
        ] {
            let err = cfg
                .clone()
                .with_min_val(lo)
                .with_max_val(hi)
                .init(&device)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    NnError::InvalidConfig {
                        field: "min_val/max_val",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
