//! Burn's `ModuleDisplay` for [`Quantizer`] (kept apart from quantizer.rs): one line with the
//! spec, the role, whether it is enabled and where its scale comes from.

use burn::module::{Content, DisplaySettings, ModuleDisplay};
use burn_quant_core::ScaleSource;

use crate::quantizer::Quantizer;

impl ModuleDisplay for Quantizer {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("spec", &self.spec.to_string())
            .add("role", &format!("{:?}", self.role))
            .add("enabled", &self.enabled)
            .add("scale", &scale_source(self))
            .optional()
    }
}

/// `per call`, or the stored scale's cell count and whether it is trained.
pub(crate) fn scale_source(q: &Quantizer) -> String {
    match &q.scale {
        None => "per call".to_string(),
        Some(s) => {
            let [cells] = s.dims();
            let kind = if matches!(q.spec.scale.source, ScaleSource::Learned(_)) {
                "learned"
            } else {
                "static"
            };
            let zp = if q.zero_point.is_some() {
                " + zero-point"
            } else {
                ""
            };
            format!(
                "{kind}, {cells} cell{}{zp}",
                if cells == 1 { "" } else { "s" }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        LayerQuant, QuantAct, QuantActConfig, QuantAdd, QuantAddConfig, QuantCat, QuantCatConfig,
        QuantConv1d, QuantConv2d, QuantConvTranspose2d, QuantEmbedding, QuantHardTanh,
        QuantHardTanhConfig, QuantLinear, QuantReLU, QuantReLUConfig, QuantSigmoid,
        QuantSigmoidConfig, QuantTanh, QuantTanhConfig, QuantizerConfig, QuantizerRole,
    };
    use burn::module::Module;
    use burn::nn::conv::{Conv1dConfig, Conv2dConfig, ConvTranspose2dConfig};
    use burn::nn::{EmbeddingConfig, LinearConfig, PaddingConfig2d};
    use burn::tensor::Device;
    use burn_quant_core::{QuantSpec, ScaleSource, ScaleStat};

    /// Every quantized layer of the crate that has no display of its own elsewhere.
    #[derive(Module, Debug)]
    struct Net {
        emb: QuantEmbedding,
        conv1: QuantConv1d,
        conv2: QuantConv2d,
        up: QuantConvTranspose2d,
        fc: QuantLinear,
        act: QuantAct,
        relu: QuantReLU,
        sigmoid: QuantSigmoid,
        tanh: QuantTanh,
        hard: QuantHardTanh,
        add: QuantAdd,
        cat: QuantCat,
    }

    /// The line of `text` that starts with `name: `.
    #[track_caller]
    fn line<'a>(text: &'a str, name: &str) -> &'a str {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no line for {name} in\n{text}"))
    }

    #[test]
    fn a_model_prints_each_layer_with_its_dimensions_and_specs_on_one_line() {
        let device = Device::flex();
        let w = QuantSpec::int8_weight_per_output_channel();
        let a = QuantSpec::int8_act_per_tensor();
        let u = QuantSpec::uint8_act_per_tensor();
        let d = a.with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax));
        let net = Net {
            emb: QuantEmbedding::from_float(
                EmbeddingConfig::new(10, 6).init(&device),
                &LayerQuant::weights(w),
                &device,
            )
            .unwrap(),
            conv1: QuantConv1d::from_float(
                Conv1dConfig::new(6, 4, 3).with_stride(2).init(&device),
                &LayerQuant::float().with_input(d),
                &device,
            )
            .unwrap(),
            conv2: QuantConv2d::from_float(
                Conv2dConfig::new([4, 8], [3, 2])
                    .with_groups(2)
                    .with_dilation([2, 1])
                    .with_padding(PaddingConfig2d::Same)
                    .init(&device),
                &LayerQuant::weights(w).with_output(a),
                &device,
            )
            .unwrap(),
            up: QuantConvTranspose2d::from_float(
                ConvTranspose2dConfig::new([8, 4], [2, 2])
                    .with_stride([2, 2])
                    .init(&device),
                &LayerQuant::weights(w),
                &device,
            )
            .unwrap(),
            fc: QuantLinear::from_float(
                LinearConfig::new(16, 3).with_bias(false).init(&device),
                &LayerQuant::weights(w).with_input(a),
                &device,
            )
            .unwrap(),
            act: QuantActConfig::new(a).with_cells(4).init(&device).unwrap(),
            relu: QuantReLUConfig::new(u).init(&device).unwrap(),
            sigmoid: QuantSigmoidConfig::new(u).init(&device).unwrap(),
            tanh: QuantTanhConfig::new(d).init(&device).unwrap(),
            hard: QuantHardTanhConfig::new(a)
                .with_min_val(-2.0)
                .init(&device)
                .unwrap(),
            add: QuantAddConfig::new(a)
                .with_quantize_sum(true)
                .init(&device)
                .unwrap(),
            cat: QuantCatConfig::new(d, 1).init(&device).unwrap(),
        };
        let text = format!("{net}");
        // The weight specs as resolved for each layer's layout.
        let (w_lin, w_conv, w_t) = (
            QuantSpec::int8_weight_per_channel(),
            QuantSpec::int8_weight_per_channel().with_axis(0),
            QuantSpec::int8_weight_per_channel().with_axis(1),
        );
        assert_eq!(
            line(&text, "emb"),
            format!(
                "emb: QuantEmbedding {{n_embedding: 10, d_model: 6, weight_quant: {w_conv}, output_quant: none, params: 60}}"
            )
        );
        assert_eq!(
            line(&text, "conv1"),
            format!(
                "conv1: QuantConv1d {{ch_in: 6, ch_out: 4, stride: 2, kernel_size: 3, dilation: 1, groups: 1, padding: Valid, bias: true, weight_quant: none, input_quant: {d}, output_quant: none, bias_quant: false, params: 76}}"
            )
        );
        assert_eq!(
            line(&text, "conv2"),
            format!(
                "conv2: QuantConv2d {{ch_in: 4, ch_out: 8, stride: [1, 1], kernel_size: [3, 2], dilation: [2, 1], groups: 2, padding: Same, bias: true, weight_quant: {w_conv}, input_quant: none, output_quant: {a}, bias_quant: false, params: 105}}"
            )
        );
        assert_eq!(
            line(&text, "up"),
            format!(
                "up: QuantConvTranspose2d {{channels: [8, 4], stride: [2, 2], kernel_size: [2, 2], dilation: [1, 1], groups: 1, padding: [0, 0], padding_out: [0, 0], bias: true, weight_quant: {w_t}, input_quant: none, output_quant: none, bias_quant: false, params: 132}}"
            )
        );
        assert_eq!(
            line(&text, "fc"),
            format!(
                "fc: QuantLinear {{d_input: 16, d_output: 3, bias: false, weight_quant: {w_lin}, input_quant: {a}, output_quant: none, bias_quant: false, params: 49}}"
            )
        );
        assert_eq!(
            line(&text, "act"),
            format!("act: QuantAct {{act_quant: {a}, scale: static, 4 cells, params: 4}}")
        );
        assert_eq!(
            line(&text, "relu"),
            format!("relu: QuantReLU {{act_quant: {u}, scale: static, 1 cell, params: 1}}")
        );
        assert_eq!(
            line(&text, "sigmoid"),
            format!("sigmoid: QuantSigmoid {{act_quant: {u}, scale: static, 1 cell, params: 1}}")
        );
        assert_eq!(
            line(&text, "tanh"),
            format!("tanh: QuantTanh {{act_quant: {d}, scale: per call}}")
        );
        assert_eq!(
            line(&text, "hard"),
            format!(
                "hard: QuantHardTanh {{min_val: -2, max_val: 1, act_quant: {a}, scale: static, 1 cell, params: 1}}"
            )
        );
        assert_eq!(
            line(&text, "add"),
            format!(
                "add: QuantAdd {{act_quant: {a}, scale: static, 1 cell, quantize_sum: true, params: 1}}"
            )
        );
        assert_eq!(
            line(&text, "cat"),
            format!("cat: QuantCat {{act_quant: {d}, scale: per call, dim: 1}}")
        );
    }

    #[test]
    fn a_quantizer_prints_its_spec_role_state_and_scale_in_one_line() {
        let device = Device::flex();
        let spec = QuantSpec::int8_act_per_tensor();
        let q = QuantizerConfig::for_spec(spec, QuantizerRole::Activation)
            .with_cells(3)
            .init(&device)
            .unwrap();
        assert_eq!(
            format!("{q}"),
            format!(
                "Quantizer {{spec: {spec}, role: Activation, enabled: true, scale: static, 3 cells, params: 3}}"
            )
        );
        let spec = QuantSpec::int8_weight_per_channel();
        let q = QuantizerConfig::for_spec(spec, QuantizerRole::Weight)
            .init(&device)
            .unwrap()
            .with_enabled(false);
        assert_eq!(
            format!("{q}"),
            format!("Quantizer {{spec: {spec}, role: Weight, enabled: false, scale: per call}}")
        );
        let spec = spec.with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax));
        let q = QuantizerConfig::for_spec(spec, QuantizerRole::Weight)
            .init(&device)
            .unwrap();
        assert!(format!("{q}").contains("scale: learned, 1 cell,"), "{q}");
    }
}
