//! [`QuantLinear`]: `burn::nn::Linear` with weight, input, output and bias quantizers.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{DType, Device, Tensor, module::linear};
use burn_quant_core::{QuantSpec, QuantTensor, WeightLayout};

use crate::attention::describe;
use crate::error::{NnError, Result};
use crate::layer_quant::LayerQuant;
use crate::quantizer::{
    Quantizer, activation_quantizer, int32_bias, quant_opt, quant_out, weight_quantizer,
};

/// Configuration of [`QuantLinear`]; the fields and defaults of `burn::nn::LinearConfig` plus
/// the quantizer specs, which [`QuantLinearConfig::with_quant`] sets from one [`LayerQuant`].
/// To wrap an existing `burn::nn::Linear`, use [`QuantLinear::from_float`] (no dimensions to
/// restate).
#[derive(Config, Debug)]
pub struct QuantLinearConfig {
    /// Size of the input features.
    pub d_input: usize,
    /// Size of the output features.
    pub d_output: usize,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
    /// Weight spec (`None`: float weights). Burn's weight is `[d_input, d_output]`, so per
    /// output channel is axis 1 and groups along the input are axis 0. A role spec
    /// (`QuantSpec::per_output_channel`, `per_input_group`) gets these axes; an explicit axis
    /// is kept as written (plans and graph mode check it against the layer).
    #[config(default = "Some(QuantSpec::int8_weight_per_channel())")]
    pub weight_quant: Option<QuantSpec>,
    /// Input activation spec (`None`: float input).
    #[config(default = "None")]
    pub input_quant: Option<QuantSpec>,
    /// Output activation spec (`None`: float output).
    #[config(default = "None")]
    pub output_quant: Option<QuantSpec>,
    /// Quantize the bias to int32 with scale = input scale × weight scale (needs an input
    /// quantizer and a per-tensor or per-output-channel weight scale).
    #[config(default = false)]
    pub bias_quant: bool,
    /// Weight initializer (same default as `burn::nn::LinearConfig`).
    #[config(default = "Initializer::KaimingUniform{gain:1.0/3.0f64.sqrt(), fan_out_only:false}")]
    pub initializer: Initializer,
}

/// A linear layer with quantizers: `y = Q_out(Q_in(x) · Q_w(W) + Q_b(b))`.
///
/// Parameter names equal `burn::nn::Linear`'s (`weight: [d_input, d_output]`, `bias:
/// [d_output]`), so float records and checkpoints load into it; the quantizers' own state
/// lives under `weight_quant`, `input_quant` and `output_quant`.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantLinear {
    /// Weight, `[d_input, d_output]`.
    pub weight: Param<Tensor<2>>,
    /// Bias, `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Weight quantizer.
    pub weight_quant: Option<Quantizer>,
    /// Input quantizer.
    pub input_quant: Option<Quantizer>,
    /// Output quantizer.
    pub output_quant: Option<Quantizer>,
    /// Whether the bias is quantized to int32.
    #[module(skip)]
    pub bias_quant: bool,
}

impl ModuleDisplay for QuantLinear {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let [d_input, d_output] = self.weight.dims();
        content
            .add("d_input", &d_input)
            .add("d_output", &d_output)
            .add("bias", &self.bias.is_some())
            .add("weight_quant", &describe(&self.weight_quant))
            .add("input_quant", &describe(&self.input_quant))
            .add("output_quant", &describe(&self.output_quant))
            .add("bias_quant", &self.bias_quant)
            .optional()
    }
}

impl QuantLinearConfig {
    /// The same config with its weight, input, output and bias quantization taken from `quant`
    /// (each absent spec of `quant` makes that part float).
    pub fn with_quant(mut self, quant: LayerQuant) -> Self {
        self.weight_quant = quant.weight;
        self.input_quant = quant.input;
        self.output_quant = quant.output;
        self.bias_quant = quant.int32_bias;
        self
    }

    /// Builds the layer with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Result<QuantLinear> {
        let float = LinearConfig::new(self.d_input, self.d_output)
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .init(device);
        self.from_float(float, device)
    }

    /// Wraps an existing `burn::nn::Linear` (its weights are kept, ids included); its shape must
    /// equal this config's. [`QuantLinear::from_float`] takes the shape from the layer instead.
    pub fn from_float(&self, linear: Linear, device: &Device) -> Result<QuantLinear> {
        let [d_input, d_output] = linear.weight.shape().dims();
        if (d_input, d_output) != (self.d_input, self.d_output) {
            return Err(NnError::InvalidConfig {
                field: "d_input/d_output",
                value: format!("{}x{}", self.d_input, self.d_output),
                reason: format!("the float layer's weight is {d_input}x{d_output}"),
            });
        }
        let weight_quant = weight_quantizer(
            self.weight_quant,
            WeightLayout::Linear,
            &[d_input, d_output],
            device,
        )?;
        // A stored per-channel activation scale runs along the feature (last) axis.
        let act = |spec: Option<QuantSpec>,
                   field: &'static str,
                   features: usize|
         -> Result<Option<Quantizer>> {
            let axis = spec.and_then(|s| s.granularity.axis()).unwrap_or(0);
            activation_quantizer(spec, field, &[(axis, features)], device)
        };
        Ok(QuantLinear {
            weight: linear.weight,
            bias: linear.bias,
            weight_quant,
            input_quant: act(self.input_quant, "input_quant", d_input)?,
            output_quant: act(self.output_quant, "output_quant", d_output)?,
            bias_quant: self.bias_quant,
        })
    }
}

impl QuantLinear {
    /// Wraps an existing `burn::nn::Linear`, quantized as `quant` says: its weights (ids
    /// included), dimensions and bias are kept, so nothing about the float layer is restated.
    ///
    /// ```
    /// use burn::nn::LinearConfig;
    /// use burn::tensor::Device;
    /// use burn_quant_core::QuantSpec;
    /// use burn_quant_nn::{LayerQuant, QuantLinear};
    ///
    /// let device = Device::flex();
    /// let float = LinearConfig::new(16, 4).init(&device);
    /// let quant = LayerQuant::weights(QuantSpec::int8_weight_per_output_channel())
    ///     .with_input(QuantSpec::int8_act_per_tensor());
    /// let layer = QuantLinear::from_float(float, &quant, &device).unwrap();
    /// assert_eq!(layer.weight.dims(), [16, 4]);
    /// ```
    pub fn from_float(linear: Linear, quant: &LayerQuant, device: &Device) -> Result<Self> {
        let [d_input, d_output] = linear.weight.dims();
        QuantLinearConfig::new(d_input, d_output)
            .with_bias(linear.bias.is_some())
            .with_quant(*quant)
            .from_float(linear, device)
    }

    /// Applies the layer.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    ///
    /// # Panics
    /// On an error of [`QuantLinear::try_forward`] (e.g. an uncalibrated static input scale).
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.try_forward(input)
            .unwrap_or_else(|e| panic!("QuantLinear: {e}"))
    }

    /// [`QuantLinear::forward`] returning errors instead of panicking.
    pub fn try_forward<const D: usize>(&self, input: Tensor<D>) -> Result<Tensor<D>> {
        let (x, in_params) = quant_opt(&self.input_quant, input)?;
        let (w, w_params) = quant_opt(&self.weight_quant, self.weight.val())?;
        let bias = match &self.bias {
            Some(b) if self.bias_quant => {
                let [_, d_output] = self.weight.dims();
                Some(int32_bias(
                    "QuantLinear",
                    self.input_quant.is_some(),
                    b.val(),
                    in_params.as_ref(),
                    w_params.as_ref(),
                    [1, d_output],
                )?)
            }
            Some(b) => Some(b.val()),
            None => None,
        };
        let y = match w.dtype() {
            DType::QFloat(_) => qfloat_linear(x, w, bias),
            _ => linear(x, w, bias),
        };
        quant_out(&self.output_quant, y)
    }

    /// The exact integer weights, scales and zero-points (`None` without a weight quantizer).
    pub fn quant_weight(&self) -> Result<Option<QuantTensor<2>>> {
        self.weight_quant
            .as_ref()
            .map(|q| q.quantize(self.weight.val()))
            .transpose()
    }
}

/// `x · w + b` for a Burn `QFloat` weight (a model converted to Burn's quantized storage), with
/// the input folded to `[rows, d_input]` so that the weight is multiplied as stored: Burn's
/// `linear` unsqueezes the weight for a matrix or batch-1 input, and the flex backend runs any
/// layout operation on a per-block `QFloat` tensor as dequantize → re-quantize with its own
/// absmax scales, which changes per-channel and per-group weights (and costs two extra passes).
/// Input `[..., d_input]`, output `[..., d_output]`.
fn qfloat_linear<const D: usize>(x: Tensor<D>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let mut dims = x.dims();
    let [d_input, d_output] = w.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = x.reshape([rows, d_input]).matmul(w);
    let y = match bias {
        Some(b) => y + b.unsqueeze::<2>(),
        None => y,
    };
    dims[D - 1] = d_output;
    y.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{calibrate, without_quantization};
    use burn::module::{ModuleVisitor, ParamId};
    use burn::tensor::TensorData;
    use burn_quant_core::{QuantParams, ScaleSource, ScaleStat, fake_quant, fake_quant_with};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn input(rows: usize, cols: usize, seed: u64, device: &Device) -> Tensor<2> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| (burn_quant_core::rounding::uniform(seed, i as u64) - 0.5) * 4.0)
            .collect();
        Tensor::from_data(TensorData::new(v, [rows, cols]), device)
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "at {i}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn weight_fake_quant_forward_equals_the_core_function() {
        let device = Device::flex();
        let layer = QuantLinearConfig::new(32, 8).init(&device).unwrap();
        let x = input(4, 32, 1, &device);
        let w_q = fake_quant(layer.weight.val(), &QuantSpec::int8_weight_per_channel()).unwrap();
        let want = linear(x.clone(), w_q, layer.bias.as_ref().map(|b| b.val()));
        close(&host(layer.forward(x.clone())), &host(want));
        // Off: exactly the float layer.
        let float = linear(
            x.clone(),
            layer.weight.val(),
            layer.bias.as_ref().map(|b| b.val()),
        );
        assert_eq!(host(without_quantization(|| layer.forward(x))), host(float));
    }

    #[test]
    fn static_input_scale_is_calibrated_over_batches() {
        let device = Device::flex();
        let cfg =
            QuantLinearConfig::new(16, 4).with_input_quant(Some(QuantSpec::int8_act_per_tensor()));
        let layer = cfg.init(&device).unwrap();
        let batches = [
            input(8, 16, 2, &device),
            input(8, 16, 3, &device).mul_scalar(3.0),
        ];
        // Before calibration the static scale is unknown: an error, not a wrong answer.
        assert!(matches!(
            layer.try_forward(batches[0].clone()),
            Err(NnError::NotCalibrated { .. })
        ));
        let (layer, seen) = calibrate(layer, |m| {
            batches
                .iter()
                .map(|b| host(m.forward(b.clone())))
                .collect::<Vec<_>>()
        })
        .unwrap();
        // During calibration the input passed through unquantized.
        let w_q = fake_quant(layer.weight.val(), &QuantSpec::int8_weight_per_channel()).unwrap();
        close(
            &seen[0],
            &host(linear(
                batches[0].clone(),
                w_q.clone(),
                layer.bias.as_ref().map(|b| b.val()),
            )),
        );
        // The scale is absmax over both batches / 127.
        let absmax = batches
            .iter()
            .flat_map(|b| host(b.clone()))
            .fold(0f32, |m, v| m.max(v.abs()));
        let s = host(
            layer
                .input_quant
                .as_ref()
                .unwrap()
                .scale
                .as_ref()
                .unwrap()
                .val(),
        );
        assert_eq!(s, vec![burn_quant_core::host::absmax_scale(absmax, 127.0)]);
        let params = QuantParams::<2> {
            scales: Tensor::from_floats(
                [[burn_quant_core::host::absmax_scale(absmax, 127.0)]],
                &device,
            ),
            zero_points: None,
            scale_level: None,
        };
        let x_q = fake_quant_with(
            batches[1].clone(),
            &QuantSpec::int8_act_per_tensor(),
            &params,
        )
        .unwrap();
        let want = linear(x_q, w_q, layer.bias.as_ref().map(|b| b.val()));
        close(&host(layer.forward(batches[1].clone())), &host(want));
    }

    #[test]
    fn gradients_reach_weights_and_learned_scales() {
        let device = Device::flex().autodiff();
        let act = QuantSpec::int8_act_per_tensor()
            .with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax));
        let cfg = QuantLinearConfig::new(16, 4)
            .with_input_quant(Some(act))
            .with_weight_quant(Some(QuantSpec::int4_weight_per_group(8)));
        let layer = cfg.init(&device).unwrap();
        let x = input(8, 16, 5, &device);
        let (layer, _) = calibrate(layer, |m| m.forward(x.clone())).unwrap();
        let y = layer.forward(x.clone());
        let grads = y.sum().backward();
        let gw = host(
            layer
                .weight
                .grad(&grads)
                .map(Tensor::from_inner)
                .expect("weight grad"),
        );
        // Straight-through: d sum(x·Q(W)) / dW = Q(x)ᵀ·1 where W is inside its range (absmax
        // scaling never clips a weight), i.e. the column sums of the quantized input.
        let s = host(
            layer
                .input_quant
                .as_ref()
                .unwrap()
                .scale
                .as_ref()
                .unwrap()
                .val(),
        )[0];
        let xq = host(x.clone())
            .iter()
            .map(|v| ((v / s).round_ties_even().clamp(-128.0, 127.0)) * s)
            .collect::<Vec<_>>();
        let col: Vec<f32> = (0..16)
            .map(|i| (0..8).map(|r| xq[r * 16 + i]).sum())
            .collect();
        let want: Vec<f32> = col
            .iter()
            .flat_map(|&c| std::iter::repeat_n(c, 4))
            .collect();
        close(&gw, &want);
        let gs = layer
            .input_quant
            .as_ref()
            .unwrap()
            .scale
            .as_ref()
            .unwrap()
            .grad(&grads);
        assert!(gs.is_some(), "the learned input scale receives a gradient");
    }

    #[test]
    fn int32_bias_sits_on_the_input_times_weight_scale_grid() {
        let device = Device::flex();
        let no_input = QuantLinearConfig::new(8, 4)
            .with_bias_quant(true)
            .init(&device)
            .unwrap();
        assert!(matches!(
            no_input.try_forward(input(2, 8, 1, &device)),
            Err(NnError::MissingInputScale { .. })
        ));
        let cfg = QuantLinearConfig::new(8, 4)
            .with_bias_quant(true)
            .with_input_quant(Some(
                QuantSpec::int8_act_per_tensor()
                    .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax)),
            ));
        let layer = cfg.init(&device).unwrap();
        let layer = QuantLinear {
            bias: Some(Param::from_tensor(Tensor::from_floats(
                [0.3, -0.7, 0.01, 1.5],
                &device,
            ))),
            ..layer
        };
        let x = input(2, 8, 4, &device);
        let s_in = host(x.clone()).iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        let wq = layer.quant_weight().unwrap().unwrap();
        let s_w = host(wq.scales.clone());
        // y − Q(x)·Q(W) is the quantized bias, broadcast over rows.
        let y = host(layer.forward(x.clone()));
        let xq = fake_quant(x, &QuantSpec::int8_act_per_tensor()).unwrap();
        let core = host(xq.matmul(wq.dequantize()));
        for c in 0..4 {
            let b = y[c] - core[c];
            let s_b = s_in * s_w[c];
            let k = b / s_b;
            assert!(
                (k - k.round()).abs() < 1e-2,
                "bias {b} is not a multiple of {s_b}"
            );
            assert!((b - [0.3, -0.7, 0.01, 1.5][c]).abs() <= s_b / 2.0 + 1e-6);
        }
    }

    #[test]
    fn from_float_takes_the_dims_from_the_layer_and_equals_the_config_path() {
        let device = Device::flex();
        let dynamic = QuantSpec::int8_act_per_tensor()
            .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax));
        let quant = LayerQuant::weights(QuantSpec::int8_weight_per_output_channel())
            .with_input(dynamic)
            .with_output(dynamic)
            .with_int32_bias();
        let x = input(3, 12, 7, &device);
        for bias in [true, false] {
            let float = LinearConfig::new(12, 5).with_bias(bias).init(&device);
            let layer = QuantLinear::from_float(float.clone(), &quant, &device).unwrap();
            assert_eq!(layer.weight.id, float.weight.id);
            assert_eq!(host(layer.weight.val()), host(float.weight.val()));
            assert_eq!(
                layer.bias.as_ref().map(|b| (b.id, host(b.val()))),
                float.bias.as_ref().map(|b| (b.id, host(b.val())))
            );
            assert!(layer.bias_quant);
            assert_eq!(
                layer.weight_quant.as_ref().map(|q| q.spec.granularity),
                Some(burn_quant_core::Granularity::PerChannel { axis: 1 }),
                "the output-channel role is resolved for the Linear layout"
            );
            let config = QuantLinearConfig::new(12, 5)
                .with_bias(bias)
                .with_quant(quant)
                .from_float(float.clone(), &device)
                .unwrap();
            let got = host(layer.forward(x.clone()));
            assert_eq!(got, host(config.forward(x.clone())));
            assert_ne!(got, host(float.forward(x.clone())), "quantized");
        }
        // Float: no quantizer, exactly Burn's layer.
        let float = LinearConfig::new(12, 5).init(&device);
        let plain = QuantLinear::from_float(float.clone(), &LayerQuant::float(), &device).unwrap();
        assert!(plain.weight_quant.is_none() && plain.input_quant.is_none());
        assert_eq!(host(plain.forward(x.clone())), host(float.forward(x)));
    }

    #[derive(Module, Debug)]
    struct FloatNet {
        fc: Linear,
    }

    #[derive(Module, Debug)]
    struct QuantNet {
        fc: QuantLinear,
    }

    #[test]
    fn float_records_load_into_the_quantized_layer() {
        use burn::store::ModuleRecord;
        let device = Device::flex();
        let float = FloatNet {
            fc: LinearConfig::new(8, 4).init(&device),
        };
        let w = host(float.fc.weight.val());
        let bytes = float.into_record().into_bytes().unwrap();
        // Weight quantizers recompute their scales: no extra state, the record loads as is.
        let q = QuantNet {
            fc: QuantLinearConfig::new(8, 4).init(&device).unwrap(),
        };
        let q = q
            .try_load_record(ModuleRecord::from_bytes(bytes.clone()).unwrap())
            .unwrap();
        assert_eq!(host(q.fc.weight.val()), w);
        // A static input scale is state the float record cannot have: strict loading names it,
        // partial loading keeps it for calibration.
        let cfg =
            QuantLinearConfig::new(8, 4).with_input_quant(Some(QuantSpec::int8_act_per_tensor()));
        let strict = QuantNet {
            fc: cfg.init(&device).unwrap(),
        }
        .try_load_record(ModuleRecord::from_bytes(bytes.clone()).unwrap());
        assert!(strict.is_err());
        let partial = ModuleRecord::from_bytes(bytes).unwrap().allow_partial(true);
        let q = QuantNet {
            fc: cfg.init(&device).unwrap(),
        }
        .try_load_record(partial)
        .unwrap();
        assert_eq!(host(q.fc.weight.val()), w);
    }

    #[test]
    fn parameter_names_match_burn_nn_linear() {
        struct Names(Vec<String>, Vec<String>);
        impl ModuleVisitor for Names {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.1.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.1.pop();
            }
            fn visit_float<const D: usize>(&mut self, _p: &Param<Tensor<D>>) {
                self.0.push(self.1.join("."));
            }
        }
        let device = Device::flex();
        let float = LinearConfig::new(8, 4).init(&device);
        let mut a = Names(vec![], vec![]);
        float.visit(&mut a);
        let (wid, bid): (ParamId, ParamId) = (float.weight.id, float.bias.as_ref().unwrap().id);
        let q = QuantLinearConfig::new(8, 4)
            .with_input_quant(Some(QuantSpec::int8_act_per_tensor()))
            .from_float(float, &device)
            .unwrap();
        assert_eq!(
            (q.weight.id, q.bias.as_ref().unwrap().id),
            (wid, bid),
            "from_float keeps the parameters"
        );
        let mut b = Names(vec![], vec![]);
        q.visit(&mut b);
        assert_eq!(a.0, vec!["weight", "bias"]);
        assert_eq!(&b.0[..2], &["weight".to_string(), "bias".to_string()]);
        assert_eq!(&b.0[2..], &["input_quant.scale".to_string()]);
    }
}
