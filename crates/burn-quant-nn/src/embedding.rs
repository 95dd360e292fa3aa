//! [`QuantEmbedding`]: `burn::nn::Embedding` with a weight (table) quantizer and an optional
//! output quantizer.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::module::embedding;
use burn::tensor::{Device, Int, Tensor};
use burn_quant_core::{QuantSpec, QuantTensor, WeightLayout};

use crate::attention::describe;
use crate::error::{NnError, Result};
use crate::layer_quant::LayerQuant;
use crate::quantizer::{Quantizer, activation_quantizer};
use crate::quantizer::{quant_opt, quant_out, weight_quantizer};

/// Configuration of [`QuantEmbedding`]; the fields and defaults of `burn::nn::EmbeddingConfig`
/// plus the quantizer specs.
#[derive(Config, Debug)]
pub struct QuantEmbeddingConfig {
    /// Number of embedding vectors (rows of the table).
    pub n_embedding: usize,
    /// Size of each vector.
    pub d_model: usize,
    /// Table initializer (same default as Burn).
    #[config(default = "Initializer::Normal{mean:0.0, std:1.0}")]
    pub initializer: Initializer,
    /// Table spec (`None`: float table). The table is `[n_embedding, d_model]`: one scale per
    /// row (per token) is axis 0, groups along a row are axis 1. A role spec
    /// (`QuantSpec::per_output_channel`, `per_input_group`) gets these axes; an explicit axis
    /// must be one of them.
    #[config(default = "Some(QuantSpec::int8_weight_per_channel().with_axis(0))")]
    pub weight_quant: Option<QuantSpec>,
    /// Output spec (`None`: float output), on `[batch, seq, d_model]`; a stored scale is per
    /// tensor or per channel along axis 2.
    #[config(default = "None")]
    pub output_quant: Option<QuantSpec>,
}

/// An embedding table with quantizers: `y = Q_out(Q_w(W)[ids])`.
///
/// The parameter name equals `burn::nn::Embedding`'s. The whole table is fake-quantized at
/// each call (its quantized rows, not the float ones, are looked up), so gradients reach the
/// looked-up rows straight through.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantEmbedding {
    /// Table, `[n_embedding, d_model]`.
    pub weight: Param<Tensor<2>>,
    /// Table quantizer.
    pub weight_quant: Option<Quantizer>,
    /// Output quantizer.
    pub output_quant: Option<Quantizer>,
}

impl ModuleDisplay for QuantEmbedding {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let [n_embedding, d_model] = self.weight.dims();
        content
            .add("n_embedding", &n_embedding)
            .add("d_model", &d_model)
            .add("weight_quant", &describe(&self.weight_quant))
            .add("output_quant", &describe(&self.output_quant))
            .optional()
    }
}

/// `Err` when `quant` asks an embedding for what it does not have: an input quantizer (its
/// input is integer ids) or an int32 bias (it has no bias).
fn check_embedding_quant(quant: &LayerQuant) -> Result<()> {
    if let Some(spec) = quant.input {
        return Err(NnError::InvalidConfig {
            field: "input",
            value: spec.to_string(),
            reason: "an embedding's input is integer ids: there is nothing to quantize".into(),
        });
    }
    if quant.int32_bias {
        return Err(NnError::InvalidConfig {
            field: "int32_bias",
            value: "true".into(),
            reason: "an embedding has no bias".into(),
        });
    }
    Ok(())
}

impl QuantEmbeddingConfig {
    /// The same config with its table and output quantization taken from `quant` (each absent
    /// spec makes that part float).
    ///
    /// # Errors
    /// `quant` with an input spec or an int32 bias: an embedding has neither.
    pub fn with_quant(mut self, quant: LayerQuant) -> Result<Self> {
        check_embedding_quant(&quant)?;
        self.weight_quant = quant.weight;
        self.output_quant = quant.output;
        Ok(self)
    }

    /// Builds the layer with a freshly initialised table (Burn's initialisation).
    pub fn init(&self, device: &Device) -> Result<QuantEmbedding> {
        if self.n_embedding == 0 || self.d_model == 0 {
            return Err(NnError::InvalidConfig {
                field: "n_embedding/d_model",
                value: format!("{}x{}", self.n_embedding, self.d_model),
                reason: "an embedding table needs at least one row and one column".into(),
            });
        }
        let float = EmbeddingConfig::new(self.n_embedding, self.d_model)
            .with_initializer(self.initializer.clone())
            .init(device);
        self.from_float(float, device)
    }

    /// Wraps an existing `burn::nn::Embedding` (table kept, id included); its shape must equal
    /// this config's. [`QuantEmbedding::from_float`] takes the shape from the layer instead.
    pub fn from_float(&self, float: Embedding, device: &Device) -> Result<QuantEmbedding> {
        let [n_embedding, d_model] = float.weight.dims();
        if (n_embedding, d_model) != (self.n_embedding, self.d_model) {
            return Err(NnError::InvalidConfig {
                field: "n_embedding/d_model",
                value: format!("{}x{}", self.n_embedding, self.d_model),
                reason: format!("the float layer's table is {n_embedding}x{d_model}"),
            });
        }
        Ok(QuantEmbedding {
            weight_quant: weight_quantizer(
                self.weight_quant,
                WeightLayout::Embedding,
                &[n_embedding, d_model],
                device,
            )?,
            output_quant: activation_quantizer(
                self.output_quant,
                "output_quant",
                &[(2, d_model)],
                device,
            )?,
            weight: float.weight,
        })
    }
}

impl QuantEmbedding {
    /// Wraps an existing `burn::nn::Embedding`, quantized as `quant` says (the table spec is
    /// `quant.weight`, the output spec `quant.output`): its table (id included) and shape are
    /// kept.
    ///
    /// # Errors
    /// `quant` with an input spec or an int32 bias (an embedding has neither), or a spec the
    /// table cannot take.
    pub fn from_float(float: Embedding, quant: &LayerQuant, device: &Device) -> Result<Self> {
        let [n_embedding, d_model] = float.weight.dims();
        QuantEmbeddingConfig::new(n_embedding, d_model)
            .with_quant(*quant)?
            .from_float(float, device)
    }

    /// Looks up the token ids `input` in the quantized table.
    ///
    /// # Shapes
    /// - input: `[batch, seq]`
    /// - output: `[batch, seq, d_model]`
    ///
    /// # Panics
    /// On an error of [`QuantEmbedding::try_forward`].
    pub fn forward(&self, input: Tensor<2, Int>) -> Tensor<3> {
        self.try_forward(input)
            .unwrap_or_else(|e| panic!("QuantEmbedding: {e}"))
    }

    /// [`QuantEmbedding::forward`] returning errors instead of panicking: an id outside
    /// `0..n_embedding`, an uncalibrated static output scale, ...
    pub fn try_forward(&self, input: Tensor<2, Int>) -> Result<Tensor<3>> {
        let [n_embedding, _] = self.weight.dims();
        if input.shape().num_elements() > 0 {
            let min = input.clone().min().into_scalar::<i64>();
            let max = input.clone().max().into_scalar::<i64>();
            if min < 0 || max >= n_embedding as i64 {
                return Err(NnError::InvalidConfig {
                    field: "input",
                    value: format!("ids in {min}..={max}"),
                    reason: format!("the table has {n_embedding} rows"),
                });
            }
        }
        let (w, _) = quant_opt(&self.weight_quant, self.weight.val())?;
        quant_out(&self.output_quant, embedding(w, input))
    }

    /// The exact integer table, scales and zero-points (`None` without a weight quantizer).
    pub fn quant_weight(&self) -> Result<Option<QuantTensor<2>>> {
        self.weight_quant
            .as_ref()
            .map(|q| q.quantize(self.weight.val()))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{calibrate, without_quantization};
    use burn::tensor::TensorData;
    use burn_quant_core::{QuantParams, fake_quant, fake_quant_with};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().expect("f32 data")
    }

    fn ids(device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(
            TensorData::new(vec![0i64, 3, 3, 7, 1, 5, 9, 0], [2, 4]),
            device,
        )
    }

    #[track_caller]
    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "at {i}: {x} vs {y}"
            );
        }
    }

    /// A table whose row absmax is `127 · 2⁻⁷` (first column), so each row's scale is exactly
    /// `2⁻⁷` and no element sits a rounding error outside the grid (see `conv`'s tests).
    fn table(device: &Device) -> Tensor<2> {
        let v: Vec<f32> = (0..10 * 6)
            .map(|i| {
                if i % 6 == 0 {
                    if i % 12 == 0 {
                        127.0 / 128.0
                    } else {
                        -127.0 / 128.0
                    }
                } else {
                    (burn_quant_core::rounding::uniform(3, i as u64) - 0.5) * 1.8 * 127.0 / 128.0
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(v, [10, 6]), device)
    }

    #[test]
    fn forward_looks_up_the_per_row_quantized_table() {
        let device = Device::flex();
        let float = EmbeddingConfig::new(10, 6).init(&device);
        let layer = QuantEmbeddingConfig::new(10, 6)
            .from_float(float.clone(), &device)
            .unwrap();
        let q = layer.quant_weight().unwrap().unwrap();
        assert_eq!(q.scales.dims(), [10, 1], "one scale per row");
        let w_q = fake_quant(
            layer.weight.val(),
            &QuantSpec::int8_weight_per_channel().with_axis(0),
        )
        .unwrap();
        close(&host(q.dequantize()), &host(w_q.clone()));
        let got = host(layer.forward(ids(&device)));
        close(&got, &host(embedding(w_q, ids(&device))));
        assert_ne!(
            got,
            host(float.forward(ids(&device))),
            "the table is quantized"
        );
        assert_eq!(
            host(without_quantization(|| layer.forward(ids(&device)))),
            host(float.forward(ids(&device)))
        );
    }

    #[test]
    fn from_float_keeps_the_table_and_checks_its_shape() {
        let device = Device::flex();
        let float = EmbeddingConfig::new(10, 6).init(&device);
        let id = float.weight.id;
        assert_eq!(
            QuantEmbeddingConfig::new(10, 6)
                .from_float(float.clone(), &device)
                .unwrap()
                .weight
                .id,
            id
        );
        let err = QuantEmbeddingConfig::new(10, 5)
            .from_float(float, &device)
            .unwrap_err();
        assert!(
            matches!(
                err,
                NnError::InvalidConfig {
                    field: "n_embedding/d_model",
                    ..
                }
            ),
            "{err}"
        );
        let err = QuantEmbeddingConfig::new(0, 5).init(&device).unwrap_err();
        assert!(matches!(err, NnError::InvalidConfig { .. }), "{err}");
        let layer = QuantEmbeddingConfig::new(4, 6).init(&device).unwrap();
        let err = layer.try_forward(ids(&device)).unwrap_err();
        assert!(
            matches!(err, NnError::InvalidConfig { field: "input", .. }),
            "{err}"
        );
    }

    #[test]
    fn from_float_takes_the_shape_from_the_layer_and_equals_the_config_path() {
        let device = Device::flex();
        let float = EmbeddingConfig::new(10, 6).init(&device);
        let id = float.weight.id;
        let quant = LayerQuant::weights(QuantSpec::int8_weight_per_output_channel()).with_output(
            QuantSpec::int8_act_per_tensor().with_scale_source(
                burn_quant_core::ScaleSource::Dynamic(burn_quant_core::ScaleStat::AbsMax),
            ),
        );
        let layer = QuantEmbedding::from_float(float.clone(), &quant, &device).unwrap();
        assert_eq!(layer.weight.id, id);
        assert_eq!(host(layer.weight.val()), host(float.weight.val()));
        assert_eq!(layer.weight.dims(), [10, 6]);
        assert_eq!(
            layer.weight_quant.as_ref().map(|q| q.spec),
            Some(QuantSpec::int8_weight_per_channel().with_axis(0)),
            "the output-channel role is one scale per row"
        );
        let config = QuantEmbeddingConfig::new(10, 6)
            .with_quant(quant)
            .unwrap()
            .from_float(float.clone(), &device)
            .unwrap();
        let got = host(layer.forward(ids(&device)));
        assert_eq!(got, host(config.forward(ids(&device))));
        assert_ne!(got, host(float.forward(ids(&device))), "quantized");
        // Float: exactly Burn's layer.
        let plain =
            QuantEmbedding::from_float(float.clone(), &LayerQuant::float(), &device).unwrap();
        assert!(plain.weight_quant.is_none() && plain.output_quant.is_none());
        assert_eq!(
            host(plain.forward(ids(&device))),
            host(float.forward(ids(&device)))
        );
        // What an embedding does not have is an error, not silently float.
        for (quant, field) in [
            (quant.with_input(QuantSpec::int8_act_per_tensor()), "input"),
            (quant.with_int32_bias(), "int32_bias"),
        ] {
            let err = QuantEmbedding::from_float(float.clone(), &quant, &device).unwrap_err();
            assert!(
                matches!(err, NnError::InvalidConfig { field: f, .. } if f == field),
                "{err}"
            );
        }
    }

    #[test]
    fn straight_through_gradient_equals_the_float_gradient_at_the_quantized_table() {
        let device = Device::flex().autodiff();
        let float = Embedding {
            weight: Param::from_tensor(table(&device)),
        };
        let layer = QuantEmbeddingConfig::new(10, 6)
            .from_float(float.clone(), &device)
            .unwrap();
        let y = layer.forward(ids(&device));
        let r = Tensor::<3>::from_data(
            TensorData::new(
                (0..48).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
                [2, 4, 6],
            ),
            &device,
        );
        let g = host(
            layer
                .weight
                .grad(&(y * r.clone()).sum().backward())
                .map(Tensor::from_inner)
                .expect("table grad"),
        );
        let reference = Embedding {
            weight: Param::from_tensor(
                layer.quant_weight().unwrap().unwrap().dequantize().detach(),
            ),
        };
        let want = host(
            reference
                .weight
                .grad(&(reference.forward(ids(&device)) * r).sum().backward())
                .map(Tensor::from_inner)
                .unwrap(),
        );
        close(&g, &want);
        // Rows never looked up get nothing; row 3 (twice) gets the sum of two upstream rows.
        assert!(
            g[2 * 6..3 * 6].iter().all(|v| *v == 0.0) && g[3 * 6..4 * 6].iter().any(|v| *v != 0.0)
        );
    }

    #[test]
    fn static_output_scale_is_calibrated() {
        let device = Device::flex();
        let layer = QuantEmbeddingConfig::new(10, 6)
            .with_weight_quant(None)
            .with_output_quant(Some(QuantSpec::int8_act_per_tensor()))
            .init(&device)
            .unwrap();
        assert!(matches!(
            layer.try_forward(ids(&device)),
            Err(NnError::NotCalibrated { .. })
        ));
        let (layer, out) = calibrate(layer, |m| m.forward(ids(&device))).unwrap();
        let absmax = host(out.clone()).iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = host(
            layer
                .output_quant
                .as_ref()
                .unwrap()
                .scale
                .as_ref()
                .unwrap()
                .val(),
        );
        assert_eq!(s, vec![burn_quant_core::host::absmax_scale(absmax, 127.0)]);
        let params = QuantParams::<3> {
            scales: Tensor::from_floats(
                [[[burn_quant_core::host::absmax_scale(absmax, 127.0)]]],
                &device,
            ),
            zero_points: None,
            scale_level: None,
        };
        let want = fake_quant_with(out, &QuantSpec::int8_act_per_tensor(), &params).unwrap();
        close(&host(layer.forward(ids(&device))), &host(want));
    }
}
