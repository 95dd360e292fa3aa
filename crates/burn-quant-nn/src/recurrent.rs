//! Quantized recurrent layers: [`QuantLstm`] and [`QuantGru`], mirroring `burn::nn::{Lstm,
//! Gru}` with quantized gate projections and optionally quantized input, hidden and cell state.

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::nn::activation::{Activation, ActivationConfig};
use burn::nn::{GateController, Gru, GruConfig, Initializer, Lstm, LstmConfig, LstmState};
use burn::tensor::{Device, Tensor};
use burn_quant_core::QuantSpec;

use crate::attention::describe;
use crate::error::{NnError, Result};
use crate::linear::{QuantLinear, QuantLinearConfig};
use crate::quantizer::Quantizer;
use crate::quantizer::activation_quantizer;

/// One gate of a recurrent cell: `Q(x)·Q_w(W_x) + b_x` and `Q(h)·Q_w(W_h) + b_h`, the quantized
/// counterpart of `burn::nn::GateController` with the same parameter paths
/// (`input_transform.weight`, `hidden_transform.bias`, ...).
#[derive(Module, Debug)]
pub struct QuantGateController {
    /// Projection of the input, weight `[d_input, d_hidden]`.
    pub input_transform: QuantLinear,
    /// Projection of the hidden state, weight `[d_hidden, d_hidden]`.
    pub hidden_transform: QuantLinear,
}

impl QuantGateController {
    /// Wraps a `burn::nn::GateController` (parameters and ids kept), quantizing both weights
    /// with `weight_quant` (`None`: float weights).
    pub fn from_float(
        gate: GateController,
        weight_quant: Option<QuantSpec>,
        device: &Device,
    ) -> Result<Self> {
        let wrap = |linear: burn::nn::Linear| {
            let [d_input, d_output] = linear.weight.shape().dims();
            QuantLinearConfig::new(d_input, d_output)
                .with_bias(linear.bias.is_some())
                .with_weight_quant(weight_quant)
                .from_float(linear, device)
        };
        Ok(Self {
            input_transform: wrap(gate.input_transform)?,
            hidden_transform: wrap(gate.hidden_transform)?,
        })
    }

    /// `input_transform(input) + hidden_transform(hidden)`: input `[batch_size, d_input]`,
    /// hidden `[batch_size, d_hidden]`, output `[batch_size, d_hidden]`.
    pub fn try_gate_product(&self, input: Tensor<2>, hidden: Tensor<2>) -> Result<Tensor<2>> {
        Ok(self.input_transform.try_forward(input)? + self.hidden_transform.try_forward(hidden)?)
    }

    fn d_input(&self) -> usize {
        self.input_transform.weight.shape().dims::<2>()[0]
    }
}

fn quant<const D: usize>(q: &Option<Quantizer>, x: Tensor<D>) -> Result<Tensor<D>> {
    match q {
        Some(q) => q.try_forward(x),
        None => Ok(x),
    }
}

fn check_size(field: &'static str, config: usize, layer: usize) -> Result<()> {
    if config != layer {
        return Err(NnError::InvalidConfig {
            field,
            value: config.to_string(),
            reason: format!("the float layer has {field} = {layer}"),
        });
    }
    Ok(())
}

fn check_shape(field: &'static str, got: [usize; 2], want: [usize; 2]) -> Result<()> {
    if got != want {
        return Err(NnError::InvalidConfig {
            field,
            value: format!("{got:?}"),
            reason: format!("expected {want:?}"),
        });
    }
    Ok(())
}

// ----- LSTM ------------------------------------------------------------------------------------

/// Configuration of [`QuantLstm`]: the fields and defaults of `burn::nn::LstmConfig` plus one
/// spec per quantization point.
#[derive(Config, Debug)]
pub struct QuantLstmConfig {
    /// The size of the input features.
    pub d_input: usize,
    /// The size of the hidden state.
    pub d_hidden: usize,
    /// Whether the gate projections have biases.
    pub bias: bool,
    /// Initializer of the gate projections (same default as Burn's).
    #[config(default = "Initializer::XavierNormal{gain:1.0}")]
    pub initializer: Initializer,
    /// `true`: input `[batch_size, seq_length, d_input]`; `false`: `[seq_length, batch_size,
    /// d_input]` (the output follows the same layout).
    #[config(default = true)]
    pub batch_first: bool,
    /// Process the sequence in reverse order.
    #[config(default = false)]
    pub reverse: bool,
    /// Clip the cell state to `[-clip, clip]` after each step.
    #[config(default = "None")]
    pub clip: Option<f64>,
    /// Couple the input and forget gates (`f_t = 1 - i_t`); the forget gate is omitted.
    #[config(default = false)]
    pub input_forget: bool,
    /// Activation of the input, forget and output gates.
    #[config(default = "ActivationConfig::Sigmoid")]
    pub gate_activation: ActivationConfig,
    /// Activation of the cell gate (candidate cell state).
    #[config(default = "ActivationConfig::Tanh")]
    pub cell_activation: ActivationConfig,
    /// Activation applied to the cell state before the output gate.
    #[config(default = "ActivationConfig::Tanh")]
    pub hidden_activation: ActivationConfig,
    /// Weight spec of every gate projection (`None`: float weights); weights are
    /// `[d_input or d_hidden, d_hidden]` (`Linear` layout): per output channel is axis 1,
    /// groups along the input axis 0; role specs (`QuantSpec::per_output_channel`,
    /// `per_input_group`) get these axes.
    #[config(default = "Some(QuantSpec::int8_weight_per_channel())")]
    pub weight_quant: Option<QuantSpec>,
    /// Spec of the input sequence, seen batch-first as `[batch_size, seq_length, d_input]`
    /// (`None`: float input).
    #[config(default = "None")]
    pub input_quant: Option<QuantSpec>,
    /// Spec of the hidden state `[batch_size, d_hidden]` after each step (`None`: float). The
    /// quantized state is both the output and the next step's hidden-projection input.
    #[config(default = "None")]
    pub hidden_quant: Option<QuantSpec>,
    /// Spec of the cell state `[batch_size, d_hidden]` after each step, after clipping
    /// (`None`: float).
    #[config(default = "None")]
    pub cell_quant: Option<QuantSpec>,
}

/// An LSTM with quantized gate projections and optionally quantized input, hidden and cell
/// state. Unidirectional and stateless, like `burn::nn::Lstm`.
///
/// Parameter paths equal `burn::nn::Lstm`'s (`input_gate.input_transform.weight`,
/// `forget_gate.hidden_transform.bias`, ...), so float records load into it.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantLstm {
    /// The input gate.
    pub input_gate: QuantGateController,
    /// The forget gate; `None` when `input_forget` couples it to the input gate.
    pub forget_gate: Option<QuantGateController>,
    /// The output gate.
    pub output_gate: QuantGateController,
    /// The cell gate (candidate cell state).
    pub cell_gate: QuantGateController,
    /// Quantizer of the input sequence `[batch_size, seq_length, d_input]`.
    pub input_quant: Option<Quantizer>,
    /// Quantizer of the hidden state `[batch_size, d_hidden]`.
    pub hidden_quant: Option<Quantizer>,
    /// Quantizer of the cell state `[batch_size, d_hidden]`.
    pub cell_quant: Option<Quantizer>,
    /// The size of the hidden state.
    pub d_hidden: usize,
    /// Whether the input and output are batch-first.
    pub batch_first: bool,
    /// Whether the sequence is processed in reverse order.
    pub reverse: bool,
    /// Cell state clip threshold.
    pub clip: Option<f64>,
    /// Whether the forget gate is coupled to the input gate.
    pub input_forget: bool,
    /// Activation of the input, forget and output gates.
    pub gate_activation: Activation,
    /// Activation of the cell gate.
    pub cell_activation: Activation,
    /// Activation of the cell state before the output gate.
    pub hidden_activation: Activation,
}

impl ModuleDisplay for QuantLstm {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_input", &self.input_gate.d_input())
            .add("d_hidden", &self.d_hidden)
            .add("bias", &self.input_gate.input_transform.bias.is_some())
            .add("input_quant", &describe(&self.input_quant))
            .add("hidden_quant", &describe(&self.hidden_quant))
            .add("cell_quant", &describe(&self.cell_quant))
            .optional()
    }
}

impl QuantLstmConfig {
    /// Builds the layer with freshly initialised gates.
    pub fn init(&self, device: &Device) -> Result<QuantLstm> {
        let float = LstmConfig::new(self.d_input, self.d_hidden, self.bias)
            .with_initializer(self.initializer.clone())
            .with_batch_first(self.batch_first)
            .with_reverse(self.reverse)
            .with_clip(self.clip)
            .with_input_forget(self.input_forget)
            .with_gate_activation(self.gate_activation.clone())
            .with_cell_activation(self.cell_activation.clone())
            .with_hidden_activation(self.hidden_activation.clone())
            .init(device);
        self.from_float(float, device)
    }

    /// Wraps an existing `burn::nn::Lstm`: gates (ids included), layout, clipping, coupling
    /// and activations are the float layer's; the config gives the quantizers, and its
    /// `d_input` and `d_hidden` must equal the layer's.
    pub fn from_float(&self, lstm: Lstm, device: &Device) -> Result<QuantLstm> {
        let [d_input, d_hidden] = lstm.input_gate.input_transform.weight.shape().dims();
        check_size("d_input", self.d_input, d_input)?;
        check_size("d_hidden", self.d_hidden, d_hidden)?;
        if lstm.forget_gate.is_none() && !lstm.input_forget {
            return Err(NnError::InvalidConfig {
                field: "forget_gate",
                value: "None".into(),
                reason: "the float layer has no forget gate but does not couple it (input_forget = false)".into(),
            });
        }
        let gate =
            |g: GateController| QuantGateController::from_float(g, self.weight_quant, device);
        Ok(QuantLstm {
            input_gate: gate(lstm.input_gate)?,
            forget_gate: lstm.forget_gate.map(gate).transpose()?,
            output_gate: gate(lstm.output_gate)?,
            cell_gate: gate(lstm.cell_gate)?,
            input_quant: activation_quantizer(
                self.input_quant,
                "input_quant",
                &[(2, d_input)],
                device,
            )?,
            hidden_quant: activation_quantizer(
                self.hidden_quant,
                "hidden_quant",
                &[(1, d_hidden)],
                device,
            )?,
            cell_quant: activation_quantizer(
                self.cell_quant,
                "cell_quant",
                &[(1, d_hidden)],
                device,
            )?,
            d_hidden,
            batch_first: lstm.batch_first,
            reverse: lstm.reverse,
            clip: lstm.clip,
            input_forget: lstm.input_forget,
            gate_activation: lstm.gate_activation,
            cell_activation: lstm.cell_activation,
            hidden_activation: lstm.hidden_activation,
        })
    }
}

impl QuantLstm {
    /// Runs the sequence.
    ///
    /// # Shapes
    /// - batched_input: `[batch_size, seq_length, d_input]` (`[seq_length, batch_size,
    ///   d_input]` when not `batch_first`)
    /// - state: initial cell and hidden state, each `[batch_size, d_hidden]` (zeros when
    ///   `None`; a given state goes through the cell and hidden quantizers)
    /// - output: every step's hidden state, `[batch_size, seq_length, d_hidden]` (or
    ///   seq-first), and the final state, each `[batch_size, d_hidden]`
    ///
    /// # Panics
    /// On an error of [`QuantLstm::try_forward`] (a shape mismatch, an uncalibrated static scale).
    pub fn forward(
        &self,
        batched_input: Tensor<3>,
        state: Option<LstmState<2>>,
    ) -> (Tensor<3>, LstmState<2>) {
        self.try_forward(batched_input, state)
            .unwrap_or_else(|e| panic!("QuantLstm: {e}"))
    }

    /// [`QuantLstm::forward`] returning errors instead of panicking.
    pub fn try_forward(
        &self,
        batched_input: Tensor<3>,
        state: Option<LstmState<2>>,
    ) -> Result<(Tensor<3>, LstmState<2>)> {
        let x = if self.batch_first {
            batched_input
        } else {
            batched_input.swap_dims(0, 1)
        };
        let [batch_size, seq_length, d_input] = x.dims();
        if d_input != self.input_gate.d_input() {
            return Err(NnError::InvalidConfig {
                field: "batched_input",
                value: format!("{:?}", x.dims()),
                reason: format!(
                    "the last axis must be d_input = {}",
                    self.input_gate.d_input()
                ),
            });
        }
        let device = x.device();
        let x = quant(&self.input_quant, x)?;
        let shape = [batch_size, self.d_hidden];
        let (mut cell, mut hidden) = match state {
            Some(LstmState { cell, hidden }) => {
                check_shape("state.cell", cell.dims(), shape)?;
                check_shape("state.hidden", hidden.dims(), shape)?;
                (
                    quant(&self.cell_quant, cell)?,
                    quant(&self.hidden_quant, hidden)?,
                )
            }
            None => (Tensor::zeros(shape, &device), Tensor::zeros(shape, &device)),
        };
        let forget = match (&self.forget_gate, self.input_forget) {
            (_, true) => None,
            (Some(gate), false) => Some(gate),
            (None, false) => {
                return Err(NnError::InvalidConfig {
                    field: "forget_gate",
                    value: "None".into(),
                    reason: "input_forget is false, so the forget gate is needed".into(),
                });
            }
        };

        let mut output = Tensor::empty([batch_size, seq_length, self.d_hidden], &device);
        let steps = x.iter_dim(1).enumerate();
        let steps: Box<dyn Iterator<Item = (usize, Tensor<3>)>> = if self.reverse {
            Box::new(steps.rev())
        } else {
            Box::new(steps)
        };
        for (t, x_t) in steps {
            let x_t = x_t.squeeze_dim::<2>(1);
            let i = self.gate_activation.forward(
                self.input_gate
                    .try_gate_product(x_t.clone(), hidden.clone())?,
            );
            let f = match forget {
                None => i.clone().neg().add_scalar(1.0),
                Some(gate) => self
                    .gate_activation
                    .forward(gate.try_gate_product(x_t.clone(), hidden.clone())?),
            };
            let o = self.gate_activation.forward(
                self.output_gate
                    .try_gate_product(x_t.clone(), hidden.clone())?,
            );
            let g = self
                .cell_activation
                .forward(self.cell_gate.try_gate_product(x_t, hidden)?);
            cell = f * cell + i * g;
            if let Some(clip) = self.clip {
                cell = cell.clamp(-clip, clip);
            }
            cell = quant(&self.cell_quant, cell)?;
            hidden = quant(
                &self.hidden_quant,
                o * self.hidden_activation.forward(cell.clone()),
            )?;
            output = output.slice_assign(
                [0..batch_size, t..t + 1, 0..self.d_hidden],
                hidden.clone().unsqueeze_dim(1),
            );
        }
        let output = if self.batch_first {
            output
        } else {
            output.swap_dims(0, 1)
        };
        Ok((output, LstmState::new(cell, hidden)))
    }
}

// ----- GRU -------------------------------------------------------------------------------------

/// Configuration of [`QuantGru`]: the fields and defaults of `burn::nn::GruConfig` plus one
/// spec per quantization point.
#[derive(Config, Debug)]
pub struct QuantGruConfig {
    /// The size of the input features.
    pub d_input: usize,
    /// The size of the hidden state.
    pub d_hidden: usize,
    /// Whether the gate projections have biases.
    pub bias: bool,
    /// Apply the reset gate after the hidden projection (`r ⊙ (W_h·h + b_h)`, PyTorch's
    /// convention) instead of before it (`W_h·(r ⊙ h)`).
    #[config(default = true)]
    pub reset_after: bool,
    /// Initializer of the gate projections (same default as Burn's).
    #[config(default = "Initializer::XavierNormal{gain:1.0}")]
    pub initializer: Initializer,
    /// Activation of the update and reset gates.
    #[config(default = "ActivationConfig::Sigmoid")]
    pub gate_activation: ActivationConfig,
    /// Activation of the new (candidate) gate.
    #[config(default = "ActivationConfig::Tanh")]
    pub hidden_activation: ActivationConfig,
    /// Clip the hidden state to `[-clip, clip]` after each step.
    #[config(default = "None")]
    pub clip: Option<f64>,
    /// Weight spec of every gate projection (`None`: float weights); weights are
    /// `[d_input or d_hidden, d_hidden]` (`Linear` layout): per output channel is axis 1,
    /// groups along the input axis 0; role specs (`QuantSpec::per_output_channel`,
    /// `per_input_group`) get these axes.
    #[config(default = "Some(QuantSpec::int8_weight_per_channel())")]
    pub weight_quant: Option<QuantSpec>,
    /// Spec of the input sequence `[batch_size, seq_length, d_input]` (`None`: float input).
    #[config(default = "None")]
    pub input_quant: Option<QuantSpec>,
    /// Spec of the hidden state `[batch_size, d_hidden]` after each step, after clipping
    /// (`None`: float). The quantized state is both the output and the next step's input.
    #[config(default = "None")]
    pub hidden_quant: Option<QuantSpec>,
}

/// A GRU with quantized gate projections and optionally quantized input and hidden state.
/// Unidirectional and stateless, like `burn::nn::Gru`.
///
/// Parameter paths equal `burn::nn::Gru`'s (`update_gate.input_transform.weight`,
/// `new_gate.hidden_transform.bias`, ...), so float records load into it.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct QuantGru {
    /// The update gate.
    pub update_gate: QuantGateController,
    /// The reset gate.
    pub reset_gate: QuantGateController,
    /// The new (candidate) gate.
    pub new_gate: QuantGateController,
    /// Quantizer of the input sequence `[batch_size, seq_length, d_input]`.
    pub input_quant: Option<Quantizer>,
    /// Quantizer of the hidden state `[batch_size, d_hidden]`.
    pub hidden_quant: Option<Quantizer>,
    /// The size of the hidden state.
    pub d_hidden: usize,
    /// Whether the reset gate is applied after the hidden projection.
    pub reset_after: bool,
    /// Activation of the update and reset gates.
    pub gate_activation: Activation,
    /// Activation of the new gate.
    pub hidden_activation: Activation,
    /// Hidden state clip threshold.
    pub clip: Option<f64>,
}

impl ModuleDisplay for QuantGru {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_input", &self.update_gate.d_input())
            .add("d_hidden", &self.d_hidden)
            .add("bias", &self.update_gate.input_transform.bias.is_some())
            .add("reset_after", &self.reset_after)
            .add("input_quant", &describe(&self.input_quant))
            .add("hidden_quant", &describe(&self.hidden_quant))
            .optional()
    }
}

impl QuantGruConfig {
    /// Builds the layer with freshly initialised gates.
    pub fn init(&self, device: &Device) -> Result<QuantGru> {
        let float = GruConfig::new(self.d_input, self.d_hidden, self.bias)
            .with_reset_after(self.reset_after)
            .with_initializer(self.initializer.clone())
            .with_gate_activation(self.gate_activation.clone())
            .with_hidden_activation(self.hidden_activation.clone())
            .with_clip(self.clip)
            .init(device);
        self.from_float(float, device)
    }

    /// Wraps an existing `burn::nn::Gru`: gates (ids included), reset convention, clipping and
    /// activations are the float layer's; the config gives the quantizers, and its `d_input`
    /// and `d_hidden` must equal the layer's.
    pub fn from_float(&self, gru: Gru, device: &Device) -> Result<QuantGru> {
        let [d_input, d_hidden] = gru.update_gate.input_transform.weight.shape().dims();
        check_size("d_input", self.d_input, d_input)?;
        check_size("d_hidden", self.d_hidden, d_hidden)?;
        let gate =
            |g: GateController| QuantGateController::from_float(g, self.weight_quant, device);
        Ok(QuantGru {
            update_gate: gate(gru.update_gate)?,
            reset_gate: gate(gru.reset_gate)?,
            new_gate: gate(gru.new_gate)?,
            input_quant: activation_quantizer(
                self.input_quant,
                "input_quant",
                &[(2, d_input)],
                device,
            )?,
            hidden_quant: activation_quantizer(
                self.hidden_quant,
                "hidden_quant",
                &[(1, d_hidden)],
                device,
            )?,
            d_hidden,
            reset_after: gru.reset_after,
            gate_activation: gru.gate_activation,
            hidden_activation: gru.hidden_activation,
            clip: gru.clip,
        })
    }
}

impl QuantGru {
    /// Runs the sequence.
    ///
    /// # Shapes
    /// - batched_input: `[batch_size, seq_length, d_input]`
    /// - state: initial hidden state `[batch_size, d_hidden]` (zeros when `None`; a given
    ///   state goes through the hidden quantizer)
    /// - output: every step's hidden state, `[batch_size, seq_length, d_hidden]`
    ///
    /// # Panics
    /// On an error of [`QuantGru::try_forward`] (a shape mismatch, an uncalibrated static scale).
    pub fn forward(&self, batched_input: Tensor<3>, state: Option<Tensor<2>>) -> Tensor<3> {
        self.try_forward(batched_input, state)
            .unwrap_or_else(|e| panic!("QuantGru: {e}"))
    }

    /// [`QuantGru::forward`] returning errors instead of panicking.
    pub fn try_forward(
        &self,
        batched_input: Tensor<3>,
        state: Option<Tensor<2>>,
    ) -> Result<Tensor<3>> {
        let [batch_size, seq_length, d_input] = batched_input.dims();
        if d_input != self.update_gate.d_input() {
            return Err(NnError::InvalidConfig {
                field: "batched_input",
                value: format!("{:?}", batched_input.dims()),
                reason: format!(
                    "the last axis must be d_input = {}",
                    self.update_gate.d_input()
                ),
            });
        }
        let device = batched_input.device();
        let x = quant(&self.input_quant, batched_input)?;
        let shape = [batch_size, self.d_hidden];
        let mut hidden = match state {
            Some(h) => {
                check_shape("state", h.dims(), shape)?;
                quant(&self.hidden_quant, h)?
            }
            None => Tensor::zeros(shape, &device),
        };
        let mut output = Tensor::empty([batch_size, seq_length, self.d_hidden], &device);
        for (t, x_t) in x.iter_dim(1).enumerate() {
            let x_t = x_t.squeeze_dim::<2>(1);
            let z = self.gate_activation.forward(
                self.update_gate
                    .try_gate_product(x_t.clone(), hidden.clone())?,
            );
            let r = self.gate_activation.forward(
                self.reset_gate
                    .try_gate_product(x_t.clone(), hidden.clone())?,
            );
            let n = if self.reset_after {
                self.new_gate.input_transform.try_forward(x_t)?
                    + r * self.new_gate.hidden_transform.try_forward(hidden.clone())?
            } else {
                self.new_gate.try_gate_product(x_t, hidden.clone() * r)?
            };
            let n = self.hidden_activation.forward(n);
            // h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
            let one_minus_z = z.clone().neg().add_scalar(1.0);
            hidden = n * one_minus_z + z * hidden;
            if let Some(clip) = self.clip {
                hidden = hidden.clamp(-clip, clip);
            }
            hidden = quant(&self.hidden_quant, hidden)?;
            output = output.slice_assign(
                [0..batch_size, t..t + 1, 0..self.d_hidden],
                hidden.clone().unsqueeze_dim(1),
            );
        }
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{calibrate, without_quantization};
    use burn::module::{ModuleVisitor, Param, ParamId};
    use burn::tensor::TensorData;
    use burn_quant_core::{ScaleSource, ScaleStat, fake_quant};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .try_into_vec_as::<f32>()
            .expect("float tensor")
    }

    fn tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
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

    fn dynamic_int8() -> QuantSpec {
        QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax))
    }

    fn const_int8(step: f32) -> QuantSpec {
        QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Const(step))
    }

    fn fq_gate(g: &GateController, spec: &QuantSpec) -> GateController {
        let fq = |l: &burn::nn::Linear| burn::nn::Linear {
            weight: Param::from_tensor(fake_quant(l.weight.val(), spec).expect("fits")),
            bias: l.bias.clone(),
        };
        GateController {
            input_transform: fq(&g.input_transform),
            hidden_transform: fq(&g.hidden_transform),
        }
    }

    fn on_grid(values: &[f32], step: f32) {
        for &v in values {
            let k = v / step;
            assert!(
                (k - k.round()).abs() < 1e-3,
                "{v} is not a multiple of {step}"
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

    fn lstm_configs() -> [LstmConfig; 2] {
        [
            LstmConfig::new(6, 4, true),
            LstmConfig::new(6, 4, true)
                .with_batch_first(false)
                .with_reverse(true)
                .with_input_forget(true)
                .with_clip(Some(0.5)),
        ]
    }

    fn quant_lstm_config(float: &LstmConfig) -> QuantLstmConfig {
        QuantLstmConfig::new(float.d_input, float.d_hidden, float.bias)
    }

    #[test]
    fn lstm_without_quantization_equals_the_float_layer_exactly() {
        let device = Device::flex();
        for cfg in lstm_configs() {
            let float = cfg.init(&device);
            let quant = quant_lstm_config(&cfg)
                .with_input_quant(Some(dynamic_int8()))
                .with_hidden_quant(Some(const_int8(1.0 / 64.0)))
                .with_cell_quant(Some(const_int8(1.0 / 32.0)))
                .from_float(float.clone(), &device)
                .expect("valid");
            let x = tensor(
                if cfg.batch_first {
                    [2, 3, 6]
                } else {
                    [3, 2, 6]
                },
                1,
                &device,
            );
            let state = LstmState::new(tensor([2, 4], 2, &device), tensor([2, 4], 3, &device));
            let (want, want_state) = float.forward(x.clone(), Some(state.clone()));
            let (got, got_state) =
                without_quantization(|| quant.forward(x.clone(), Some(state.clone())));
            assert_eq!(host(got), host(want.clone()));
            assert_eq!(host(got_state.cell), host(want_state.cell));
            assert_eq!(host(got_state.hidden), host(want_state.hidden));
            let (on, _) = quant.forward(x, Some(state));
            assert!(
                max_diff(&host(on), &host(want)) > 1e-4,
                "quantization changes the output"
            );
        }
    }

    #[test]
    fn lstm_weight_quantization_equals_the_float_layer_with_fake_quantized_gates() {
        let device = Device::flex();
        let spec = QuantSpec::int4_weight_per_group(2);
        for cfg in lstm_configs() {
            let float = cfg.init(&device);
            let quant = quant_lstm_config(&cfg)
                .with_weight_quant(Some(spec))
                .from_float(float.clone(), &device)
                .expect("valid");
            let by_hand = Lstm {
                input_gate: fq_gate(&float.input_gate, &spec),
                forget_gate: float.forget_gate.as_ref().map(|g| fq_gate(g, &spec)),
                output_gate: fq_gate(&float.output_gate, &spec),
                cell_gate: fq_gate(&float.cell_gate, &spec),
                ..float.clone()
            };
            let x = tensor([2, 3, 6], 4, &device);
            let (want, want_state) = by_hand.forward(x.clone(), None);
            let (got, got_state) = quant.forward(x.clone(), None);
            close(&host(got), &host(want.clone()), 1e-5);
            close(&host(got_state.cell), &host(want_state.cell), 1e-5);
            let (plain, _) = float.forward(x, None);
            assert!(
                max_diff(&host(want), &host(plain)) > 1e-3,
                "int4 weights change the output"
            );
        }
    }

    #[test]
    fn lstm_hidden_and_cell_states_stay_on_their_grids() {
        let device = Device::flex();
        let (hs, cs) = (1.0 / 64.0, 1.0 / 16.0);
        let quant = QuantLstmConfig::new(6, 4, true)
            .with_hidden_quant(Some(const_int8(hs)))
            .with_cell_quant(Some(const_int8(cs)))
            .init(&device)
            .expect("valid");
        let x = tensor([2, 5, 6], 5, &device);
        let (out, state) = quant.forward(x.clone(), None);
        on_grid(&host(out.clone()), hs);
        on_grid(&host(state.hidden), hs);
        on_grid(&host(state.cell), cs);
        let (float, _) = without_quantization(|| quant.forward(x, None));
        assert!(max_diff(&host(out), &host(float)) > 1e-3);
    }

    #[test]
    fn lstm_static_hidden_scale_is_calibrated() {
        let device = Device::flex();
        let quant = QuantLstmConfig::new(6, 4, false)
            .with_hidden_quant(Some(QuantSpec::int8_act_per_tensor()))
            .init(&device)
            .expect("valid");
        let x = tensor([3, 4, 6], 6, &device);
        assert!(matches!(
            quant.try_forward(x.clone(), None),
            Err(NnError::NotCalibrated { .. })
        ));
        let (quant, float_out) =
            calibrate(quant, |m| m.forward(x.clone(), None).0).expect("calibrates");
        let s = host(
            quant
                .hidden_quant
                .as_ref()
                .and_then(|q| q.scale.as_ref())
                .expect("stored")
                .val(),
        )[0];
        let absmax = host(float_out).iter().fold(0f32, |m, v| m.max(v.abs()));
        close(&[s], &[absmax / 127.0], 1e-6);
        on_grid(&host(quant.forward(x, None).0), s);
    }

    #[test]
    fn lstm_backward_reaches_every_gate_weight() {
        let device = Device::flex().autodiff();
        let quant = QuantLstmConfig::new(6, 4, true)
            .with_input_quant(Some(dynamic_int8()))
            .with_hidden_quant(Some(const_int8(1.0 / 64.0)))
            .with_cell_quant(Some(const_int8(1.0 / 32.0)))
            .init(&device)
            .expect("valid");
        let (out, _) = quant.forward(tensor([2, 3, 6], 7, &device), None);
        let grads = (out.clone() * out).sum().backward();
        let forget = quant.forget_gate.as_ref().expect("uncoupled");
        for (name, gate) in [
            ("input", &quant.input_gate),
            ("forget", forget),
            ("output", &quant.output_gate),
            ("cell", &quant.cell_gate),
        ] {
            for (which, l) in [
                ("input_transform", &gate.input_transform),
                ("hidden_transform", &gate.hidden_transform),
            ] {
                let g = l.weight.grad(&grads).map(Tensor::from_inner);
                let g =
                    host(g.unwrap_or_else(|| panic!("{name}_gate.{which}.weight has no gradient")));
                assert!(
                    g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
                    "{name}_gate.{which}: zero gradient"
                );
            }
        }
    }

    #[test]
    fn lstm_from_float_keeps_parameter_paths_and_ids_and_float_records_load() {
        let device = Device::flex();
        for cfg in lstm_configs() {
            let float = cfg.init(&device);
            let want = params(&float);
            assert_eq!(want.len(), if cfg.input_forget { 12 } else { 16 });
            let quant = quant_lstm_config(&cfg)
                .with_hidden_quant(Some(QuantSpec::int8_act_per_tensor()))
                .from_float(float.clone(), &device)
                .expect("valid");
            let got = params(&quant);
            assert_eq!(&got[..want.len()], &want[..]);
            assert_eq!(
                got[want.len()..]
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>(),
                ["hidden_quant.scale"]
            );

            let bytes = float.clone().into_record().into_bytes().expect("saves");
            let fresh = quant_lstm_config(&cfg)
                .with_batch_first(cfg.batch_first)
                .with_reverse(cfg.reverse)
                .with_input_forget(cfg.input_forget)
                .with_clip(cfg.clip)
                .init(&device)
                .expect("valid");
            let loaded = fresh
                .try_load_record(burn::store::ModuleRecord::from_bytes(bytes).expect("reads"))
                .expect("paths match");
            let x = tensor([2, 3, 6], 8, &device);
            let (want, _) = float.forward(x.clone(), None);
            let (got, _) = without_quantization(|| loaded.forward(x, None));
            assert_eq!(host(got), host(want));
        }
        let float = LstmConfig::new(6, 4, true).init(&device);
        assert!(matches!(
            QuantLstmConfig::new(5, 4, true).from_float(float, &device),
            Err(NnError::InvalidConfig {
                field: "d_input",
                ..
            })
        ));
    }

    #[test]
    fn lstm_shape_errors() {
        let device = Device::flex();
        let quant = QuantLstmConfig::new(6, 4, true)
            .init(&device)
            .expect("valid");
        assert!(matches!(
            quant.try_forward(tensor([2, 3, 5], 1, &device), None),
            Err(NnError::InvalidConfig {
                field: "batched_input",
                ..
            })
        ));
        let state = LstmState::new(tensor([2, 3], 2, &device), tensor([2, 3], 3, &device));
        assert!(matches!(
            quant.try_forward(tensor([2, 3, 6], 1, &device), Some(state)),
            Err(NnError::InvalidConfig {
                field: "state.cell",
                ..
            })
        ));
        let per_time = QuantSpec::int8_act_per_tensor()
            .with_granularity(burn_quant_core::Granularity::PerChannel { axis: 1 });
        assert!(matches!(
            QuantLstmConfig::new(6, 4, true)
                .with_input_quant(Some(per_time))
                .init(&device),
            Err(NnError::InvalidConfig {
                field: "input_quant",
                ..
            })
        ));
    }

    fn gru_configs() -> [GruConfig; 2] {
        [
            GruConfig::new(6, 4, true),
            GruConfig::new(6, 4, true)
                .with_reset_after(false)
                .with_clip(Some(0.3)),
        ]
    }

    #[test]
    fn gru_without_quantization_equals_the_float_layer_exactly() {
        let device = Device::flex();
        for cfg in gru_configs() {
            let float = cfg.init(&device);
            let quant = QuantGruConfig::new(6, 4, true)
                .with_input_quant(Some(dynamic_int8()))
                .with_hidden_quant(Some(const_int8(1.0 / 64.0)))
                .from_float(float.clone(), &device)
                .expect("valid");
            let x = tensor([2, 3, 6], 11, &device);
            let h0 = tensor([2, 4], 12, &device);
            let want = float.forward(x.clone(), Some(h0.clone()));
            let got = without_quantization(|| quant.forward(x.clone(), Some(h0.clone())));
            assert_eq!(host(got), host(want.clone()));
            let on = quant.forward(x, Some(h0));
            assert!(max_diff(&host(on), &host(want)) > 1e-4);
        }
    }

    #[test]
    fn gru_weight_quantization_equals_the_float_layer_with_fake_quantized_gates() {
        let device = Device::flex();
        let spec = QuantSpec::int4_weight_per_group(2);
        for cfg in gru_configs() {
            let float = cfg.init(&device);
            let quant = QuantGruConfig::new(6, 4, true)
                .with_weight_quant(Some(spec))
                .from_float(float.clone(), &device)
                .expect("valid");
            let by_hand = Gru {
                update_gate: fq_gate(&float.update_gate, &spec),
                reset_gate: fq_gate(&float.reset_gate, &spec),
                new_gate: fq_gate(&float.new_gate, &spec),
                ..float.clone()
            };
            let x = tensor([2, 3, 6], 13, &device);
            let want = by_hand.forward(x.clone(), None);
            close(
                &host(quant.forward(x.clone(), None)),
                &host(want.clone()),
                1e-5,
            );
            let plain = float.forward(x, None);
            assert!(max_diff(&host(want), &host(plain)) > 1e-3);
        }
    }

    #[test]
    fn gru_hidden_state_stays_on_its_grid() {
        let device = Device::flex();
        let step = 1.0 / 32.0;
        let quant = QuantGruConfig::new(6, 4, true)
            .with_hidden_quant(Some(const_int8(step)))
            .init(&device)
            .expect("valid");
        let x = tensor([2, 5, 6], 14, &device);
        let out = quant.forward(x.clone(), None);
        on_grid(&host(out.clone()), step);
        let float = without_quantization(|| quant.forward(x, None));
        assert!(max_diff(&host(out), &host(float)) > 1e-3);
    }

    #[test]
    fn gru_backward_reaches_every_gate_weight() {
        let device = Device::flex().autodiff();
        for reset_after in [true, false] {
            let quant = QuantGruConfig::new(6, 4, true)
                .with_reset_after(reset_after)
                .with_input_quant(Some(dynamic_int8()))
                .with_hidden_quant(Some(const_int8(1.0 / 64.0)))
                .init(&device)
                .expect("valid");
            let out = quant.forward(tensor([2, 3, 6], 15, &device), None);
            let grads = (out.clone() * out).sum().backward();
            for (name, gate) in [
                ("update", &quant.update_gate),
                ("reset", &quant.reset_gate),
                ("new", &quant.new_gate),
            ] {
                for (which, l) in [
                    ("input_transform", &gate.input_transform),
                    ("hidden_transform", &gate.hidden_transform),
                ] {
                    let g = l.weight.grad(&grads).map(Tensor::from_inner);
                    let g =
                        host(g.unwrap_or_else(|| {
                            panic!("{name}_gate.{which}.weight has no gradient")
                        }));
                    assert!(
                        g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
                        "{name}_gate.{which}: zero gradient"
                    );
                }
            }
        }
    }

    #[test]
    fn gru_from_float_keeps_parameter_paths_and_ids_and_float_records_load() {
        let device = Device::flex();
        let float = GruConfig::new(6, 4, true).init(&device);
        let want = params(&float);
        assert_eq!(want.len(), 12);
        let quant = QuantGruConfig::new(6, 4, true)
            .from_float(float.clone(), &device)
            .expect("valid");
        assert_eq!(params(&quant), want);
        let bytes = float.clone().into_record().into_bytes().expect("saves");
        let fresh = QuantGruConfig::new(6, 4, true)
            .init(&device)
            .expect("valid");
        let loaded = fresh
            .try_load_record(burn::store::ModuleRecord::from_bytes(bytes).expect("reads"))
            .expect("paths match");
        let x = tensor([2, 3, 6], 16, &device);
        assert_eq!(
            host(without_quantization(|| loaded.forward(x.clone(), None))),
            host(float.forward(x, None))
        );
        let other = GruConfig::new(6, 5, true).init(&device);
        assert!(matches!(
            QuantGruConfig::new(6, 4, true).from_float(other, &device),
            Err(NnError::InvalidConfig {
                field: "d_hidden",
                ..
            })
        ));
    }
}
