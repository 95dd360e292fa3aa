//! The format zoo: quantize every `Linear` weight of a Burn model with one [`QuantSpec`],
//! dequantize it back into a copy of the model, and measure what the recipe costs.

use std::time::{Duration, Instant};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use burn_quant_core::{QuantSpec, quantize};

use crate::error::{CliError, Result};

/// A named weight-quantization recipe; `spec: None` is the float32 baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// Short name printed in the table.
    pub name: &'static str,
    /// The spec applied to every `Linear` weight, or `None` to keep float32.
    pub spec: Option<QuantSpec>,
}

/// The quickstart's recipes: float32, int8 per channel, int4 per group (32 and 128,
/// symmetric and asymmetric), FP8 E4M3 per tensor, MXFP4, NVFP4 and ternary.
pub fn recipes() -> Vec<Recipe> {
    let r = |name, spec| Recipe {
        name,
        spec: Some(spec),
    };
    vec![
        Recipe {
            name: "float32",
            spec: None,
        },
        r("int8 per-channel", QuantSpec::int8_weight_per_channel()),
        r("int4 g32 sym", QuantSpec::int4_weight_per_group(32)),
        r(
            "int4 g32 asym",
            QuantSpec::int4_weight_per_group(32).asymmetric(),
        ),
        r("int4 g128 sym", QuantSpec::int4_weight_per_group(128)),
        r(
            "int4 g128 asym",
            QuantSpec::int4_weight_per_group(128).asymmetric(),
        ),
        r(
            "fp8 e4m3 per-tensor",
            QuantSpec::fp8_e4m3_weight_per_tensor(),
        ),
        r("mxfp4", QuantSpec::mxfp4()),
        r("nvfp4", QuantSpec::nvfp4()),
        r("ternary", QuantSpec::ternary_weight()),
    ]
}

/// Error statistics of quantized weights, accumulated over tensors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightStats {
    /// Weight elements quantized.
    pub elements: usize,
    /// Σ over tensors of `bits_per_element · elements` (storage bits incl. scales and zero-points).
    pub storage_bits: f64,
    /// Σ w² (signal energy), in f64.
    pub signal: f64,
    /// Σ (w − ŵ)² (quantization noise energy), in f64.
    pub noise: f64,
    /// max |w − ŵ|.
    pub max_abs_err: f32,
    /// Time spent in `quantize` (codes and scales, incl. host transfers).
    pub quantize_time: Duration,
}

impl WeightStats {
    /// Storage bits per weight averaged by element count.
    pub fn bits_per_weight(&self) -> f64 {
        self.storage_bits / self.elements.max(1) as f64
    }

    /// Signal-to-quantization-noise ratio `10·log10(Σw² / Σ(w−ŵ)²)` in dB (`+∞` when exact).
    pub fn sqnr_db(&self) -> f64 {
        if self.noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.signal / self.noise).log10()
        }
    }

    /// Adds the statistics of one weight tensor given as host slices.
    fn add(&mut self, w: &[f32], w_hat: &[f32], bits_per_element: f64, time: Duration) {
        for (&a, &b) in w.iter().zip(w_hat) {
            let e = a - b;
            self.signal += f64::from(a) * f64::from(a);
            self.noise += f64::from(e) * f64::from(e);
            self.max_abs_err = self.max_abs_err.max(e.abs());
        }
        self.elements += w.len();
        self.storage_bits += bits_per_element * w.len() as f64;
        self.quantize_time += time;
    }
}

/// A [`ModuleMapper`] that replaces every `Linear` weight (the rank-2 `weight` field of a
/// `Struct:Linear`) by `dequantize(quantize(w, spec))`, keeping its `ParamId`; biases and
/// every other parameter stay float. The first error stops further quantization.
struct LinearWeightQuantizer<'a> {
    recipe: &'a str,
    spec: QuantSpec,
    /// `(field name, parent container type)` of every module entered and not yet exited.
    path: Vec<(String, String)>,
    stats: WeightStats,
    quantized: Vec<String>,
    error: Option<CliError>,
}

impl LinearWeightQuantizer<'_> {
    fn dotted_path(&self) -> String {
        self.path
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }

    fn is_linear_weight(&self, rank: usize) -> bool {
        rank == 2
            && self
                .path
                .last()
                .is_some_and(|(name, container)| name == "weight" && container == "Struct:Linear")
    }

    fn quantize_weight<const D: usize>(&mut self, w: Tensor<D>) -> Result<Tensor<D>> {
        let param = self.dotted_path();
        let quant_err = |source| CliError::Quant {
            recipe: self.recipe.to_string(),
            param: param.clone(),
            source,
        };
        let bits = self.spec.bits_per_element(&w.dims()).map_err(quant_err)?;
        let start = Instant::now();
        let q = quantize(w.clone(), &self.spec).map_err(quant_err)?;
        let time = start.elapsed();
        let w_hat = q.dequantize();
        let host = w.try_into_vec_as::<f32>()?;
        let host_hat = w_hat.clone().try_into_vec_as::<f32>()?;
        self.stats.add(&host, &host_hat, bits, time);
        self.quantized.push(param);
        Ok(w_hat)
    }
}

impl ModuleMapper for LinearWeightQuantizer<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() || !self.is_linear_weight(D) {
            return param;
        }
        match self.quantize_weight(param.val()) {
            Ok(w_hat) => param.map(|_| w_hat),
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// A model whose `Linear` weights went through a recipe, with what it cost.
#[derive(Debug)]
pub struct QuantizedModel<M> {
    /// The model with dequantized (on-grid) weights.
    pub model: M,
    /// Error and size statistics over all quantized weights.
    pub stats: WeightStats,
    /// Dotted paths of the quantized parameters, in visiting order.
    pub quantized: Vec<String>,
}

/// Quantizes and dequantizes every `Linear` weight of `model` with `spec` (weight-only
/// round-to-nearest with the spec's own scale statistic); `recipe` names it in errors.
///
/// Errors if the spec is invalid or does not fit a weight's shape (e.g. a k-quant super-block
/// that does not tile `d_input`), or if the model has no `Linear` weight.
pub fn quantize_linear_weights<M: Module>(
    model: M,
    spec: &QuantSpec,
    recipe: &str,
) -> Result<QuantizedModel<M>> {
    let mut mapper = LinearWeightQuantizer {
        recipe,
        spec: *spec,
        path: Vec::new(),
        stats: WeightStats::default(),
        quantized: Vec::new(),
        error: None,
    };
    let model = model.map(&mut mapper);
    if let Some(e) = mapper.error {
        return Err(e);
    }
    if mapper.quantized.is_empty() {
        return Err(CliError::Data(
            "the model has no `Linear` weight to quantize".into(),
        ));
    }
    Ok(QuantizedModel {
        model,
        stats: mapper.stats,
        quantized: mapper.quantized,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MlpConfig;
    use burn::tensor::Device;

    #[test]
    fn quantizes_exactly_the_linear_weights() {
        let cfg = MlpConfig {
            d_input: 64,
            d_hidden: 32,
            d_output: 10,
        };
        let model = cfg.init(1, &Device::flex());
        let bias_before = model
            .fc1
            .bias
            .as_ref()
            .map(|b| b.val().try_into_vec_as::<f32>().expect("readable"));
        let id_before = model.fc1.weight.id;
        let q = quantize_linear_weights(model, &QuantSpec::int4_weight_per_group(32), "t")
            .expect("fits");
        let paths: Vec<&str> = cfg.linear_weight_shapes().iter().map(|(p, _)| *p).collect();
        assert_eq!(q.quantized, paths);
        assert_eq!(q.stats.elements, 64 * 32 + 32 * 10);
        assert_eq!(q.model.fc1.weight.id, id_before);
        let bias_after = q
            .model
            .fc1
            .bias
            .as_ref()
            .map(|b| b.val().try_into_vec_as::<f32>().expect("readable"));
        assert_eq!(bias_before, bias_after);
        // int4 sym, 1 f32 scale per 32 elements: 4 + 32/32 = 5 bits per weight.
        assert!((q.stats.bits_per_weight() - 5.0).abs() < 1e-12);
        assert!(q.stats.sqnr_db() > 10.0 && q.stats.sqnr_db().is_finite());
    }

    #[test]
    fn a_spec_that_does_not_fit_is_an_error_naming_the_param() {
        // k-quant super-blocks of 256 must tile the input axis: 512 does, 48 does not.
        let model = MlpConfig {
            d_input: 48,
            d_hidden: 512,
            d_output: 10,
        }
        .init(1, &Device::flex());
        let err = quantize_linear_weights(model, &QuantSpec::gguf_q4_k(), "q4_k").unwrap_err();
        match err {
            CliError::Quant { recipe, param, .. } => {
                assert_eq!((recipe.as_str(), param.as_str()), ("q4_k", "fc1.weight"))
            }
            other => panic!("unexpected error {other}"),
        }
    }
}
