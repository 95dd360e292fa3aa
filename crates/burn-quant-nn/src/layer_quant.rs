//! [`LayerQuant`]: how one layer is quantized (weight, input, output and bias), the argument
//! of every quant layer's `from_float` and of the layer configs' `with_quant`.
//!
//! The one rule of every builder in this crate: a spec is given as a plain [`QuantSpec`];
//! leaving it out (or `None` in a config field) means float.

use burn::config::Config;
use burn_quant_core::QuantSpec;
use serde::{Deserialize, Serialize};

/// How one layer is quantized: the specs of its weight, input and output quantizers (absent:
/// float) and whether its bias is quantized to int32.
///
/// Plain serde data that prints, compares and serialises. Built from plain specs:
///
/// ```
/// use burn_quant_core::QuantSpec;
/// use burn_quant_nn::LayerQuant;
///
/// let q = LayerQuant::weights(QuantSpec::int8_weight_per_output_channel())
///     .with_input(QuantSpec::int8_act_per_tensor())
///     .with_int32_bias();
/// assert!(q.output.is_none());
/// assert_eq!(LayerQuant::float(), LayerQuant::default());
/// ```
///
/// A weight spec with a role granularity (`QuantSpec::per_output_channel`,
/// `per_input_group`) gets the axes of the layer it is applied to; an explicit axis is kept
/// as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayerQuant {
    /// Weight spec (`None`: float weights).
    pub weight: Option<QuantSpec>,
    /// Input activation spec (`None`: float input).
    pub input: Option<QuantSpec>,
    /// Output activation spec (`None`: float output).
    pub output: Option<QuantSpec>,
    /// Quantize the bias to int32 with scale = input scale × weight scale (needs an input
    /// spec and a per-tensor or per-output-channel weight scale; checked at the forward pass).
    pub int32_bias: bool,
}

impl Config for LayerQuant {}

impl LayerQuant {
    /// Nothing quantized: the layer computes exactly as its float counterpart.
    pub fn float() -> Self {
        Self::default()
    }

    /// Weights quantized with `spec`; input, output and bias float.
    pub fn weights(spec: QuantSpec) -> Self {
        Self::float().with_weights(spec)
    }

    /// The same with the weight spec set to `spec`.
    pub fn with_weights(mut self, spec: QuantSpec) -> Self {
        self.weight = Some(spec);
        self
    }

    /// The same with the input quantized with `spec`.
    pub fn with_input(mut self, spec: QuantSpec) -> Self {
        self.input = Some(spec);
        self
    }

    /// The same with the output quantized with `spec`.
    pub fn with_output(mut self, spec: QuantSpec) -> Self {
        self.output = Some(spec);
        self
    }

    /// The same with the bias quantized to int32 on the input × weight scale grid.
    pub fn with_int32_bias(mut self) -> Self {
        self.int32_bias = true;
        self
    }

    /// The same with float weights.
    pub fn without_weights(mut self) -> Self {
        self.weight = None;
        self
    }
}

impl std::fmt::Display for LayerQuant {
    /// One line, e.g. `weight: int8 sym per-channel(axis 1) absmax nearest-even, input: none,
    /// output: none, int32_bias: false`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spec = |s: &Option<QuantSpec>| s.map_or_else(|| "none".to_string(), |s| s.to_string());
        write!(
            f,
            "weight: {}, input: {}, output: {}, int32_bias: {}",
            spec(&self.weight),
            spec(&self.input),
            spec(&self.output),
            self.int32_bias
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_one_field_each_and_absence_is_float() {
        let w = QuantSpec::int4_weight_per_input_group(32);
        let a = QuantSpec::int8_act_per_tensor();
        let q = LayerQuant::weights(w);
        assert_eq!(
            q,
            LayerQuant {
                weight: Some(w),
                input: None,
                output: None,
                int32_bias: false
            }
        );
        let q = q.with_input(a).with_output(a).with_int32_bias();
        assert_eq!((q.input, q.output, q.int32_bias), (Some(a), Some(a), true));
        assert_eq!(q.without_weights().weight, None);
        assert_eq!(LayerQuant::float(), LayerQuant::default());
        assert_eq!(LayerQuant::float().weight, None);
    }

    #[test]
    fn serde_round_trip_defaults_and_unknown_fields() {
        let q = LayerQuant::weights(QuantSpec::int8_weight_per_output_channel())
            .with_input(QuantSpec::int8_act_per_tensor())
            .with_int32_bias();
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<LayerQuant>(&json).unwrap(), q);
        // Absent fields are float; a misspelt field is an error, not silently float.
        assert_eq!(
            serde_json::from_str::<LayerQuant>("{}").unwrap(),
            LayerQuant::float()
        );
        assert!(serde_json::from_str::<LayerQuant>(r#"{"weights": null}"#).is_err());
        // Burn's Config trait: the same JSON through `load_binary`.
        assert_eq!(LayerQuant::load_binary(json.as_bytes()).unwrap(), q);
    }

    #[test]
    fn display_names_every_spec_or_none() {
        let a = QuantSpec::int8_act_per_tensor();
        let text = LayerQuant::float().with_input(a).to_string();
        assert_eq!(
            text,
            format!("weight: none, input: {a}, output: none, int32_bias: false")
        );
    }
}
