//! [`QuantMultiHeadAttention`]: `burn::nn::attention::MultiHeadAttention` with quantized
//! projections and optionally quantized attention scores and softmax output.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::nn::attention::{MhaOutput, MultiHeadAttention};
use burn::nn::{Dropout, DropoutConfig, Initializer, LinearConfig};
use burn::tensor::activation::{quiet_softmax, softmax};
use burn::tensor::{Bool, Device, Tensor};
use burn_quant_core::QuantSpec;

use crate::error::{NnError, Result};
use crate::linear::{QuantLinear, QuantLinearConfig};
use crate::quantizer::{Quantizer, activation_quantizer};

/// Configuration of [`QuantMultiHeadAttention`]: the fields and defaults of
/// `burn::nn::attention::MultiHeadAttentionConfig` plus one spec per quantization point.
#[derive(Config, Debug)]
pub struct QuantMultiHeadAttentionConfig {
    /// The size of each linear layer (model width).
    pub d_model: usize,
    /// The number of heads; must divide `d_model`.
    pub n_heads: usize,
    /// The dropout rate applied to the attention weights. Default: 0.1
    #[config(default = 0.1)]
    pub dropout: f64,
    /// The value masked attention scores are set to before the softmax. Default: -1.0e4
    #[config(default = -1.0e4)]
    pub min_float: f64,
    /// Use "quiet softmax" (`exp(x_i) / (1 + Σ exp(x_j))`) instead of the regular softmax.
    #[config(default = false)]
    pub quiet_softmax: bool,
    /// Initializer of the four projections (same default as Burn's).
    #[config(default = "Initializer::KaimingUniform{gain:1.0/3.0f64.sqrt(), fan_out_only:false}")]
    pub initializer: Initializer,
    /// Bias of the key projection.
    #[config(default = true)]
    pub key_bias: bool,
    /// Bias of the value projection.
    #[config(default = true)]
    pub value_bias: bool,
    /// Bias of the query projection.
    #[config(default = true)]
    pub query_bias: bool,
    /// Bias of the output projection.
    #[config(default = true)]
    pub output_bias: bool,
    /// Weight spec of the four projections (`None`: float weights). The weights are
    /// `[d_model, d_model]` (`Linear` layout): per output channel is axis 1, groups along the
    /// input axis 0; role specs (`QuantSpec::per_output_channel`, `per_input_group`) get these
    /// axes.
    #[config(default = "Some(QuantSpec::int8_weight_per_channel())")]
    pub weight_quant: Option<QuantSpec>,
    /// Input spec of the four projections (`None`: float inputs): quantizes `query`, `key`,
    /// `value` (`[batch_size, seq_length, d_model]`) and the concatenated heads entering the
    /// output projection.
    #[config(default = "None")]
    pub input_quant: Option<QuantSpec>,
    /// Output spec of the query, key and value projections (`None`: float), so that both
    /// attention matmuls see quantized operands.
    #[config(default = "None")]
    pub qkv_quant: Option<QuantSpec>,
    /// Spec of the attention scores `q·kᵀ/√d_k`, `[batch_size, n_heads, seq_length_1,
    /// seq_length_2]`, applied before masking and softmax (`None`: float). A stored scale may
    /// be per tensor or per head (`PerChannel { axis: 1 }`).
    #[config(default = "None")]
    pub attn_scores_quant: Option<QuantSpec>,
    /// Spec of the softmax output (the attention weights, same shape as the scores), applied
    /// before dropout (`None`: float). Weights lie in `[0, 1]`, so an unsigned spec such as
    /// `QuantSpec::uint8_act_per_tensor()` uses the whole grid.
    #[config(default = "None")]
    pub attn_softmax_quant: Option<QuantSpec>,
    /// Output spec of the output projection (`None`: float context).
    #[config(default = "None")]
    pub output_quant: Option<QuantSpec>,
}

/// Multi-head attention with quantizers:
/// `softmax(Q_s(Q(x_q·W_q)·Q(x_k·W_k)ᵀ/√d_k))` → `Q_a` → dropout → `·Q(x_v·W_v)` → output
/// projection.
///
/// Parameter paths equal `burn::nn::attention::MultiHeadAttention`'s (`query.weight`,
/// `query.bias`, `key.*`, `value.*`, `output.*`), so float records load into it; the
/// quantizers' own state lives under each projection's `*_quant` and under
/// `attn_scores_quant` / `attn_softmax_quant`.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantMultiHeadAttention {
    /// Projection of the query input, weight `[d_model, d_model]`.
    pub query: QuantLinear,
    /// Projection of the key input, weight `[d_model, d_model]`.
    pub key: QuantLinear,
    /// Projection of the value input, weight `[d_model, d_model]`.
    pub value: QuantLinear,
    /// Projection of the concatenated heads back to the model width, weight `[d_model, d_model]`.
    pub output: QuantLinear,
    /// Dropout on the attention weights (active on autodiff devices in training).
    pub dropout: Dropout,
    /// Quantizer of the attention scores before masking and softmax.
    pub attn_scores_quant: Option<Quantizer>,
    /// Quantizer of the attention weights after softmax, before dropout.
    pub attn_softmax_quant: Option<Quantizer>,
    /// The model width.
    pub d_model: usize,
    /// The number of heads.
    pub n_heads: usize,
    /// Width of each head, `d_model / n_heads`.
    pub d_k: usize,
    /// The value masked scores are set to.
    pub min_float: f64,
    /// Whether the quiet softmax is used.
    pub quiet_softmax: bool,
}

impl ModuleDisplay for QuantMultiHeadAttention {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_model", &self.d_model)
            .add("n_heads", &self.n_heads)
            .add("d_k", &self.d_k)
            .add("dropout", &self.dropout.prob)
            .add("min_float", &self.min_float)
            .add("quiet_softmax", &self.quiet_softmax)
            .add("attn_scores_quant", &describe(&self.attn_scores_quant))
            .add("attn_softmax_quant", &describe(&self.attn_softmax_quant))
            .optional()
    }
}

/// A quantizer's recipe for display (`none` without one).
pub(crate) fn describe(q: &Option<Quantizer>) -> String {
    q.as_ref()
        .map_or_else(|| "none".to_string(), |q| q.spec.to_string())
}

/// Input of [`QuantMultiHeadAttention::forward`]; the same builder as Burn's `MhaInput`
/// (whose fields are private, so it cannot be taken apart here).
#[derive(Debug, Clone)]
pub struct QuantMhaInput {
    /// `[batch_size, seq_length_1, d_model]`
    pub query: Tensor<3>,
    /// `[batch_size, seq_length_2, d_model]`
    pub key: Tensor<3>,
    /// `[batch_size, seq_length_2, d_model]`
    pub value: Tensor<3>,
    /// Padding mask `[batch_size, seq_length_2]`, `true` = masked key position.
    pub mask_pad: Option<Tensor<2, Bool>>,
    /// Attention mask `[batch_size, seq_length_1, seq_length_2]`, `true` = masked.
    pub mask_attn: Option<Tensor<3, Bool>>,
}

impl QuantMhaInput {
    /// Self-attention: query, key and value are all `tensor`, `[batch_size, seq_length, d_model]`.
    pub fn self_attn(tensor: Tensor<3>) -> Self {
        Self::new(tensor.clone(), tensor.clone(), tensor)
    }

    /// Query `[batch_size, seq_length_1, d_model]`, key and value
    /// `[batch_size, seq_length_2, d_model]`.
    pub fn new(query: Tensor<3>, key: Tensor<3>, value: Tensor<3>) -> Self {
        Self {
            query,
            key,
            value,
            mask_pad: None,
            mask_attn: None,
        }
    }

    /// Registers the padding mask, `[batch_size, seq_length_2]`.
    pub fn mask_pad(mut self, mask_pad: Tensor<2, Bool>) -> Self {
        self.mask_pad = Some(mask_pad);
        self
    }

    /// Registers the attention mask, `[batch_size, seq_length_1, seq_length_2]`.
    pub fn mask_attn(mut self, mask_attn: Tensor<3, Bool>) -> Self {
        self.mask_attn = Some(mask_attn);
        self
    }
}

impl QuantMultiHeadAttentionConfig {
    /// Builds the layer with freshly initialised projections.
    pub fn init(&self, device: &Device) -> Result<QuantMultiHeadAttention> {
        self.check_heads()?;
        let linear = |bias: bool| {
            LinearConfig::new(self.d_model, self.d_model)
                .with_initializer(self.initializer.clone())
                .with_bias(bias)
                .init(device)
        };
        let dropout = self.dropout_layer()?;
        self.assemble(
            [
                linear(self.query_bias),
                linear(self.key_bias),
                linear(self.value_bias),
                linear(self.output_bias),
            ],
            dropout,
            self.min_float,
            self.quiet_softmax,
            device,
        )
    }

    /// Wraps an existing `burn::nn::attention::MultiHeadAttention`: its projections (ids
    /// included), dropout, `min_float` and softmax kind are kept; the config gives the
    /// quantizers, and its `d_model` and `n_heads` must equal the layer's.
    pub fn from_float(
        &self,
        mha: MultiHeadAttention,
        device: &Device,
    ) -> Result<QuantMultiHeadAttention> {
        self.check_heads()?;
        if (mha.d_model, mha.n_heads) != (self.d_model, self.n_heads) {
            return Err(NnError::InvalidConfig {
                field: "d_model/n_heads",
                value: format!("{}/{}", self.d_model, self.n_heads),
                reason: format!(
                    "the float layer has d_model {} and {} heads",
                    mha.d_model, mha.n_heads
                ),
            });
        }
        let MultiHeadAttention {
            query,
            key,
            value,
            output,
            dropout,
            min_float,
            quiet_softmax,
            ..
        } = mha;
        self.assemble(
            [query, key, value, output],
            dropout,
            min_float,
            quiet_softmax,
            device,
        )
    }

    fn check_heads(&self) -> Result<()> {
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(NnError::InvalidConfig {
                field: "n_heads",
                value: self.n_heads.to_string(),
                reason: format!("must be positive and divide d_model = {}", self.d_model),
            });
        }
        Ok(())
    }

    fn dropout_layer(&self) -> Result<Dropout> {
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(NnError::InvalidConfig {
                field: "dropout",
                value: self.dropout.to_string(),
                reason: "must be finite and in [0, 1)".into(),
            });
        }
        Ok(DropoutConfig::new(self.dropout).init())
    }

    fn assemble(
        &self,
        [query, key, value, output]: [burn::nn::Linear; 4],
        dropout: Dropout,
        min_float: f64,
        quiet_softmax: bool,
        device: &Device,
    ) -> Result<QuantMultiHeadAttention> {
        let d = self.d_model;
        let proj = |linear: burn::nn::Linear, output_quant: Option<QuantSpec>| {
            QuantLinearConfig::new(d, d)
                .with_bias(linear.bias.is_some())
                .with_weight_quant(self.weight_quant)
                .with_input_quant(self.input_quant)
                .with_output_quant(output_quant)
                .from_float(linear, device)
        };
        let heads = [(1, self.n_heads)];
        Ok(QuantMultiHeadAttention {
            query: proj(query, self.qkv_quant)?,
            key: proj(key, self.qkv_quant)?,
            value: proj(value, self.qkv_quant)?,
            output: proj(output, self.output_quant)?,
            dropout,
            attn_scores_quant: activation_quantizer(
                self.attn_scores_quant,
                "attn_scores_quant",
                &heads,
                device,
            )?,
            attn_softmax_quant: activation_quantizer(
                self.attn_softmax_quant,
                "attn_softmax_quant",
                &heads,
                device,
            )?,
            d_model: d,
            n_heads: self.n_heads,
            d_k: d / self.n_heads,
            min_float,
            quiet_softmax,
        })
    }
}

fn shape_error(field: &'static str, got: &[usize], expected: String) -> NnError {
    NnError::InvalidConfig {
        field,
        value: format!("{got:?}"),
        reason: format!("expected {expected}"),
    }
}

impl QuantMultiHeadAttention {
    /// Applies the layer.
    ///
    /// # Shapes
    /// - query: `[batch_size, seq_length_1, d_model]`
    /// - key, value: `[batch_size, seq_length_2, d_model]`
    /// - output: weights `[batch_size, n_heads, seq_length_1, seq_length_2]`, context
    ///   `[batch_size, seq_length_1, d_model]`
    ///
    /// # Panics
    /// On an error of [`QuantMultiHeadAttention::try_forward`] (a shape mismatch, as Burn's
    /// layer panics on, or an uncalibrated static scale).
    pub fn forward(&self, input: QuantMhaInput) -> MhaOutput {
        self.try_forward(input)
            .unwrap_or_else(|e| panic!("QuantMultiHeadAttention: {e}"))
    }

    /// [`QuantMultiHeadAttention::forward`] returning errors instead of panicking.
    pub fn try_forward(&self, input: QuantMhaInput) -> Result<MhaOutput> {
        let QuantMhaInput {
            query,
            key,
            value,
            mask_pad,
            mask_attn,
        } = input;
        let [batch_size, seq_length_1, d_query] = query.dims();
        let [batch_key, seq_length_2, d_key] = key.dims();
        if d_query != self.d_model {
            return Err(shape_error(
                "input.query",
                &query.dims(),
                format!("[batch_size, seq_length_1, {}]", self.d_model),
            ));
        }
        if (batch_key, d_key) != (batch_size, self.d_model) {
            return Err(shape_error(
                "input.key",
                &key.dims(),
                format!("[{batch_size}, seq_length_2, {}]", self.d_model),
            ));
        }
        if value.dims() != [batch_size, seq_length_2, self.d_model] {
            return Err(shape_error(
                "input.value",
                &value.dims(),
                format!("{:?}", [batch_size, seq_length_2, self.d_model]),
            ));
        }
        if let Some(m) = &mask_pad
            && m.dims() != [batch_size, seq_length_2]
        {
            return Err(shape_error(
                "input.mask_pad",
                &m.dims(),
                format!("{:?}", [batch_size, seq_length_2]),
            ));
        }
        if let Some(m) = &mask_attn
            && m.dims() != [batch_size, seq_length_1, seq_length_2]
        {
            return Err(shape_error(
                "input.mask_attn",
                &m.dims(),
                format!("{:?}", [batch_size, seq_length_1, seq_length_2]),
            ));
        }

        let query = self.heads(query, &self.query)?;
        let key = self.heads(key, &self.key)?;
        let value = self.heads(value, &self.value)?;

        let scores = query
            .matmul(key.transpose())
            .div_scalar((self.d_k as f32).sqrt());
        let mut scores = match &self.attn_scores_quant {
            Some(q) => q.try_forward(scores)?,
            None => scores,
        };
        if let Some(mask) = mask_pad {
            scores = scores.mask_fill(
                mask.reshape([batch_size, 1, 1, seq_length_2]),
                self.min_float,
            );
        }
        if let Some(mask) = mask_attn {
            scores = scores.mask_fill(
                mask.reshape([batch_size, 1, seq_length_1, seq_length_2]),
                self.min_float,
            );
        }
        let weights = if self.quiet_softmax {
            quiet_softmax(scores, 3)
        } else {
            softmax(scores, 3)
        };
        let weights = match &self.attn_softmax_quant {
            Some(q) => q.try_forward(weights)?,
            None => weights,
        };
        let weights = self.dropout.forward(weights);

        let context = weights.clone().matmul(value).swap_dims(1, 2).reshape([
            batch_size,
            seq_length_1,
            self.d_model,
        ]);
        let context = self.output.try_forward(context)?;
        Ok(MhaOutput { weights, context })
    }

    /// Projects `[batch_size, seq_length, d_model]` and splits the heads:
    /// `[batch_size, n_heads, seq_length, d_k]`.
    fn heads(&self, x: Tensor<3>, linear: &QuantLinear) -> Result<Tensor<4>> {
        let [batch_size, seq_length, _] = x.dims();
        Ok(linear
            .try_forward(x)?
            .reshape([batch_size, seq_length, self.n_heads, self.d_k])
            .swap_dims(1, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{calibrate, without_quantization};
    use burn::module::{ModuleVisitor, Param, ParamId};
    use burn::nn::attention::{MhaInput, MultiHeadAttentionConfig, generate_autoregressive_mask};
    use burn::tensor::TensorData;
    use burn_quant_core::{Granularity, ScaleSource, ScaleStat, fake_quant};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .try_into_vec_as::<f32>()
            .expect("float tensor")
    }

    fn input(shape: [usize; 3], seed: u64, device: &Device) -> Tensor<3> {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n)
            .map(|i| (burn_quant_core::rounding::uniform(seed, i as u64) - 0.5) * 4.0)
            .collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    /// A float layer (no dropout) and its quantized copy with the given config tweaks.
    fn pair(
        device: &Device,
        tweak: impl Fn(QuantMultiHeadAttentionConfig) -> QuantMultiHeadAttentionConfig,
    ) -> (MultiHeadAttention, QuantMultiHeadAttention) {
        let float = MultiHeadAttentionConfig::new(16, 4)
            .with_dropout(0.0)
            .init(device);
        let cfg = tweak(QuantMultiHeadAttentionConfig::new(16, 4).with_dropout(0.0));
        let quant = cfg.from_float(float.clone(), device).expect("valid config");
        (float, quant)
    }

    /// (q, k, v, mask) with different sequence lengths for query and key, plus a padding mask.
    fn cross_input(device: &Device) -> (Tensor<3>, Tensor<3>, Tensor<3>, Tensor<2, Bool>) {
        let q = input([2, 3, 16], 11, device);
        let k = input([2, 5, 16], 12, device);
        let v = input([2, 5, 16], 13, device);
        let pad = Tensor::<2, Bool>::from_data(
            TensorData::new(
                vec![
                    false, false, false, false, true, false, false, false, true, true,
                ],
                [2, 5],
            ),
            device,
        );
        (q, k, v, pad)
    }

    #[test]
    fn without_quantization_equals_the_float_layer_exactly() {
        let device = Device::flex();
        let (float, quant) = pair(&device, |c| {
            c.with_input_quant(Some(
                QuantSpec::int8_act_per_tensor()
                    .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax)),
            ))
            .with_attn_scores_quant(Some(
                QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Const(0.25)),
            ))
            .with_attn_softmax_quant(Some(
                QuantSpec::uint8_act_per_tensor()
                    .with_scale_source(ScaleSource::Const(1.0 / 255.0)),
            ))
        });
        let (q, k, v, pad) = cross_input(&device);
        let causal = generate_autoregressive_mask(2, 3, &device);
        let causal = Tensor::cat(
            vec![causal, Tensor::<3, Bool>::full([2, 3, 2], false, &device)],
            2,
        );
        let want = float.forward(
            MhaInput::new(q.clone(), k.clone(), v.clone())
                .mask_pad(pad.clone())
                .mask_attn(causal.clone()),
        );
        let got = without_quantization(|| {
            quant.forward(
                QuantMhaInput::new(q.clone(), k.clone(), v.clone())
                    .mask_pad(pad.clone())
                    .mask_attn(causal.clone()),
            )
        });
        assert_eq!(host(got.context), host(want.context.clone()));
        assert_eq!(host(got.weights), host(want.weights));
        // Quantization on: a different answer (the comparison above can fail).
        let on = quant.forward(QuantMhaInput::new(q, k, v).mask_pad(pad).mask_attn(causal));
        assert!(max_diff(&host(on.context), &host(want.context)) > 1e-4);
    }

    #[test]
    fn weight_quantization_equals_the_float_layer_with_fake_quantized_weights() {
        let device = Device::flex();
        let spec = QuantSpec::int4_weight_per_group(8);
        let (float, quant) = pair(&device, |c| c.with_weight_quant(Some(spec)));
        let fq = |l: burn::nn::Linear| burn::nn::Linear {
            weight: Param::from_tensor(fake_quant(l.weight.val(), &spec).expect("fits")),
            bias: l.bias,
        };
        let by_hand = MultiHeadAttention {
            query: fq(float.query.clone()),
            key: fq(float.key.clone()),
            value: fq(float.value.clone()),
            output: fq(float.output.clone()),
            ..float.clone()
        };
        let (q, k, v, pad) = cross_input(&device);
        let want =
            by_hand.forward(MhaInput::new(q.clone(), k.clone(), v.clone()).mask_pad(pad.clone()));
        let got = quant
            .forward(QuantMhaInput::new(q.clone(), k.clone(), v.clone()).mask_pad(pad.clone()));
        close(&host(got.context), &host(want.context.clone()), 1e-5);
        close(&host(got.weights), &host(want.weights), 1e-5);
        // ... and differs from the unquantized float layer.
        let plain = float.forward(MhaInput::new(q, k, v).mask_pad(pad));
        assert!(max_diff(&host(want.context), &host(plain.context)) > 1e-3);
    }

    #[test]
    fn quantized_scores_stay_on_their_grid() {
        let device = Device::flex();
        let step = 0.25f32;
        let (float, quant) = pair(&device, |c| {
            c.with_weight_quant(None).with_attn_scores_quant(Some(
                QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Const(step)),
            ))
        });
        let x = input([2, 4, 16], 21, &device);
        let out = quant.forward(QuantMhaInput::self_attn(x.clone()));
        // softmax: log w_ij − log w_i0 = s_ij − s_i0, a multiple of the scores' step.
        let w = host(out.weights);
        let mut off_grid = 0f32;
        for row in w.chunks(4) {
            for &wj in row {
                let k = (wj.ln() - row[0].ln()) / step;
                off_grid = off_grid.max((k - k.round()).abs());
            }
        }
        assert!(
            off_grid < 1e-3,
            "score differences are {off_grid} steps off the grid"
        );
        let want = float.forward(MhaInput::self_attn(x));
        assert!(max_diff(&host(out.context), &host(want.context)) > 1e-4);
    }

    #[test]
    fn calibrated_softmax_output_stays_on_its_uint8_grid() {
        let device = Device::flex();
        let (float, quant) = pair(&device, |c| {
            c.with_weight_quant(None)
                .with_attn_softmax_quant(Some(QuantSpec::uint8_act_per_tensor()))
        });
        let batches = [
            input([2, 4, 16], 31, &device),
            input([2, 4, 16], 32, &device),
        ];
        let q = quant.attn_softmax_quant.as_ref().expect("configured");
        assert!(
            q.has_stored_scale(),
            "uint8_act_per_tensor is static: calibrated, then frozen"
        );
        assert!(matches!(
            quant.try_forward(QuantMhaInput::self_attn(batches[0].clone())),
            Err(NnError::NotCalibrated { .. })
        ));
        let (quant, _) = calibrate(quant, |m| {
            for b in &batches {
                m.forward(QuantMhaInput::self_attn(b.clone()));
            }
        })
        .expect("calibrates");
        let s = host(
            quant
                .attn_softmax_quant
                .as_ref()
                .and_then(|q| q.scale.as_ref())
                .expect("stored")
                .val(),
        )[0];
        let want_max = batches
            .iter()
            .flat_map(|b| host(float.forward(MhaInput::self_attn(b.clone())).weights))
            .fold(0f32, f32::max);
        close(&[s], &[want_max / 255.0], 1e-6);
        let out = quant.forward(QuantMhaInput::self_attn(batches[1].clone()));
        for w in host(out.weights) {
            let k = w / s;
            assert!(
                (k - k.round()).abs() < 1e-3 && (0.0..=255.5).contains(&k),
                "weight {w} is not k·{s}"
            );
        }
        let want = float.forward(MhaInput::self_attn(batches[1].clone()));
        assert!(max_diff(&host(out.context), &host(want.context)) > 1e-5);
    }

    #[test]
    fn backward_reaches_every_projection_weight() {
        let device = Device::flex().autodiff();
        let (_, quant) = pair(&device, |c| {
            c.with_weight_quant(Some(QuantSpec::int4_weight_per_group(8)))
                .with_input_quant(Some(
                    QuantSpec::int8_act_per_tensor()
                        .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax)),
                ))
                .with_attn_scores_quant(Some(
                    QuantSpec::int8_act_per_tensor()
                        .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax)),
                ))
                .with_attn_softmax_quant(Some(
                    QuantSpec::uint8_act_per_tensor()
                        .with_scale_source(ScaleSource::Const(1.0 / 255.0)),
                ))
        });
        let x = input([2, 3, 16], 41, &device);
        let out = quant.forward(QuantMhaInput::self_attn(x));
        let grads = (out.context.clone() * out.context).sum().backward();
        for (name, l) in [
            ("query", &quant.query),
            ("key", &quant.key),
            ("value", &quant.value),
            ("output", &quant.output),
        ] {
            let g = l
                .weight
                .grad(&grads)
                .map(Tensor::from_inner)
                .unwrap_or_else(|| panic!("{name}.weight has no gradient"));
            let g = host(g);
            assert!(
                g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
                "{name}.weight gradient is zero"
            );
        }
    }

    struct Params(Vec<(String, ParamId)>, Vec<String>);
    impl ModuleVisitor for Params {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push((self.1.join("."), p.id));
        }
    }
    fn params<M: Module>(m: &M) -> Vec<(String, ParamId)> {
        let mut v = Params(vec![], vec![]);
        m.visit(&mut v);
        v.0
    }

    #[test]
    fn from_float_keeps_parameter_paths_and_ids_and_float_records_load() {
        let device = Device::flex();
        let (float, quant) = pair(&device, |c| {
            c.with_attn_scores_quant(Some(QuantSpec::int8_act_per_tensor()))
        });
        let want = params(&float);
        assert_eq!(want.len(), 8);
        let got = params(&quant);
        assert_eq!(
            &got[..8],
            &want[..],
            "projection parameters: same paths, same ids"
        );
        assert_eq!(
            got[8..].iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["attn_scores_quant.scale"]
        );

        // A float record (burnpack bytes) loads into a freshly initialised quantized layer.
        let bytes = float.clone().into_record().into_bytes().expect("saves");
        let fresh = QuantMultiHeadAttentionConfig::new(16, 4)
            .with_dropout(0.0)
            .init(&device)
            .expect("valid");
        let record = burn::store::ModuleRecord::from_bytes(bytes).expect("reads");
        let loaded = fresh.try_load_record(record).expect("float paths match");
        let x = input([1, 3, 16], 51, &device);
        let want = float.forward(MhaInput::self_attn(x.clone()));
        let got = without_quantization(|| loaded.forward(QuantMhaInput::self_attn(x)));
        assert_eq!(host(got.context), host(want.context));
    }

    #[test]
    fn invalid_configs_and_shapes_are_errors() {
        let device = Device::flex();
        assert!(matches!(
            QuantMultiHeadAttentionConfig::new(16, 3).init(&device),
            Err(NnError::InvalidConfig {
                field: "n_heads",
                ..
            })
        ));
        assert!(matches!(
            QuantMultiHeadAttentionConfig::new(16, 4)
                .with_dropout(1.0)
                .init(&device),
            Err(NnError::InvalidConfig {
                field: "dropout",
                ..
            })
        ));
        let per_key =
            QuantSpec::int8_act_per_tensor().with_granularity(Granularity::PerChannel { axis: 3 });
        assert!(matches!(
            QuantMultiHeadAttentionConfig::new(16, 4)
                .with_attn_scores_quant(Some(per_key))
                .init(&device),
            Err(NnError::InvalidConfig {
                field: "attn_scores_quant",
                ..
            })
        ));
        let per_head =
            QuantSpec::int8_act_per_tensor().with_granularity(Granularity::PerChannel { axis: 1 });
        let layer = QuantMultiHeadAttentionConfig::new(16, 4)
            .with_attn_scores_quant(Some(per_head))
            .init(&device)
            .expect("per head");
        assert_eq!(
            layer
                .attn_scores_quant
                .as_ref()
                .and_then(|q| q.scale.as_ref())
                .map(|s| s.shape().dims::<1>()),
            Some([4])
        );
        let other = MultiHeadAttentionConfig::new(8, 4).init(&device);
        assert!(
            QuantMultiHeadAttentionConfig::new(16, 4)
                .from_float(other, &device)
                .is_err()
        );
        let x = input([1, 3, 16], 1, &device);
        let bad = input([2, 3, 16], 2, &device);
        assert!(matches!(
            layer.try_forward(QuantMhaInput::new(x.clone(), bad.clone(), bad)),
            Err(NnError::InvalidConfig {
                field: "input.key",
                ..
            })
        ));
        let narrow = input([1, 3, 8], 3, &device);
        assert!(matches!(
            layer.try_forward(QuantMhaInput::self_attn(narrow)),
            Err(NnError::InvalidConfig {
                field: "input.query",
                ..
            })
        ));
    }
}
