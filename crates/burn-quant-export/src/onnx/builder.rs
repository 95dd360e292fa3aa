//! [`OnnxModelBuilder`]: walks our quantized layers in order and emits an ONNX graph of the
//! chosen style ([`QdqModelBuilder`] or [`QonnxModelBuilder`]).

use std::marker::PhantomData;

use burn::nn::PaddingConfig2d;
use burn_quant_core::format::round_even;
use burn_quant_core::{Granularity, Rounding};
use burn_quant_nn::{NnError, QuantAct, QuantConv2d, QuantLinear, QuantReLU, Quantizer};

use super::error::{OnnxError, Result};
use super::graph::{OnnxGraph, Val};
use super::host::{HostAct, HostQuant, floats, unsupported};
use super::proto::{AttributeProto, DataType, Dim, ModelProto, TensorProto, ValueInfoProto};
use super::style::{Qdq, Qonnx, QuantStyle};

/// Builds an ONNX model from our quantized layers, applied in the order the methods are
/// called, starting from one float input. `S` chooses how quantization is written:
/// [`QdqModelBuilder`] (QuantizeLinear/DequantizeLinear) or [`QonnxModelBuilder`] (QONNX
/// custom ops).
///
/// Each layer method encodes exactly what the layer's `forward` computes: the weight's
/// [`burn_quant_core::QuantTensor`] (codes, scales, zero-points), the static scales of its
/// activation quantizers, its int32 bias. A quantizer that is switched off is left out, as
/// `forward` skips it. Whatever the target cannot hold exactly is an
/// [`OnnxError::Unsupported`] naming the layer, the spec and the reason.
///
/// ```
/// use burn::tensor::Device;
/// use burn_quant_export::onnx::QdqModelBuilder;
/// use burn_quant_nn::QuantLinearConfig;
///
/// let device = Device::flex();
/// let fc = QuantLinearConfig::new(16, 4).init(&device).unwrap(); // int8 per-channel weights
/// let model = QdqModelBuilder::new("input", &[2, 16])
///     .linear(&fc)
///     .unwrap()
///     .build()
///     .unwrap();
/// assert_eq!(model.default_opset(), Some(13)); // per-axis DequantizeLinear
/// ```
#[derive(Debug)]
pub struct OnnxModelBuilder<S: QuantStyle> {
    graph: OnnxGraph,
    input_name: String,
    input_shape: Vec<usize>,
    batch: Option<String>,
    output_name: String,
    /// The value flowing out of the last layer.
    current: String,
    /// Its shape.
    shape: Vec<usize>,
    layers: Vec<ExportedLayer>,
    next_name: Option<String>,
    style: PhantomData<S>,
}

/// A builder of ONNX QDQ models (QuantizeLinear/DequantizeLinear).
pub type QdqModelBuilder = OnnxModelBuilder<Qdq>;
/// A builder of QONNX models (Quant, BipolarQuant, FloatQuant, Trunc).
pub type QonnxModelBuilder = OnnxModelBuilder<Qonnx>;

/// One layer as it was exported: its name and the values it reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedLayer {
    /// Layer name (prefix of every value and initializer it added).
    pub name: String,
    /// Kind: `linear`, `conv2d`, `relu`, `act`, `flatten`, `trunc`.
    pub kind: &'static str,
    /// Value the layer reads.
    pub input: String,
    /// Value the layer writes (after [`OnnxModelBuilder::build`] the last one is the graph
    /// output's name).
    pub output: String,
    /// Shape of the output for the example input shape.
    pub output_shape: Vec<usize>,
}

/// A QONNX `Trunc` (v1): re-quantizes an integer-valued tensor to fewer bits by a
/// power-of-two division, keeping the input scale (formats.md §2.5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TruncSpec {
    /// Scale of the input grid.
    pub scale: f32,
    /// Zero-point of the input grid.
    pub zero_point: f32,
    /// Bits of the input codes.
    pub input_bits: u8,
    /// Bits kept.
    pub output_bits: u8,
    /// Rounding of the division by `2^(input_bits − output_bits)` (QONNX's default is floor).
    pub rounding: Rounding,
}

impl TruncSpec {
    /// The value QONNX's Trunc v1 gives `x`: `t = round_half_even(x/scale + zero_point)`,
    /// `t = rounding(t / 2^(input_bits − output_bits))`, `(t − zero_point) · scale`.
    pub fn apply(&self, x: f32) -> f32 {
        use burn_quant_core::RoundMode;
        let t = round_even(x / self.scale + self.zero_point);
        let shift = (1u64 << (self.input_bits - self.output_bits)) as f32;
        let t = RoundMode::from(&self.rounding).apply(t / shift, 0.0);
        (t - self.zero_point) * self.scale
    }

    fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: String, reason: &str| {
            Err(OnnxError::InvalidArgument {
                field,
                value,
                reason: reason.into(),
            })
        };
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return bad(
                "trunc.scale",
                self.scale.to_string(),
                "must be finite and > 0",
            );
        }
        if !self.zero_point.is_finite() || self.zero_point.fract() != 0.0 {
            return bad(
                "trunc.zero_point",
                self.zero_point.to_string(),
                "must be an integer",
            );
        }
        if !(1..=32).contains(&self.input_bits) || !(1..self.input_bits).contains(&self.output_bits)
        {
            return bad(
                "trunc.output_bits",
                format!("{} -> {}", self.input_bits, self.output_bits),
                "needs 1 <= output_bits < input_bits <= 32",
            );
        }
        if matches!(
            self.rounding,
            Rounding::Stochastic { .. } | Rounding::Custom { .. }
        ) {
            return bad(
                "trunc.rounding",
                format!("{:?}", self.rounding),
                "stochastic and custom rounding have no QONNX rounding_mode",
            );
        }
        Ok(())
    }
}

/// `(start, end)` of Burn's `Same` padding along one axis, as our convolutions compute it
/// (the odd pixel at the end, dilation not counted).
fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = if out > 0 {
        ((out - 1) * stride + kernel).saturating_sub(size)
    } else {
        0
    };
    (total / 2, total - total / 2)
}

impl<S: QuantStyle> OnnxModelBuilder<S> {
    /// A builder whose graph input `input_name` is a FLOAT tensor of `input_shape` (the shape
    /// is also used to check every layer; see [`OnnxModelBuilder::dynamic_batch`]).
    pub fn new(input_name: &str, input_shape: &[usize]) -> Self {
        let mut graph = OnnxGraph::new(S::BASE_OPSET);
        S::setup(&mut graph);
        graph.define(input_name);
        Self {
            graph,
            input_name: input_name.into(),
            input_shape: input_shape.to_vec(),
            batch: None,
            output_name: "output".into(),
            current: input_name.into(),
            shape: input_shape.to_vec(),
            layers: vec![],
            next_name: None,
            style: PhantomData,
        }
    }

    /// Makes axis 0 of the input, of every activation and of the output the symbolic size
    /// `name`, so the model accepts any batch size.
    pub fn dynamic_batch(mut self, name: &str) -> Self {
        self.batch = Some(name.into());
        self
    }

    /// Name of the graph output (default `output`).
    pub fn output_name(mut self, name: &str) -> Self {
        self.output_name = name.into();
        self
    }

    /// Names the next layer (default: `<kind>_<index>`, e.g. `linear_0`).
    pub fn named(mut self, name: &str) -> Self {
        self.next_name = Some(name.into());
        self
    }

    /// The layers added so far.
    pub fn layers(&self) -> &[ExportedLayer] {
        &self.layers
    }

    /// Shape of the value flowing out of the last layer.
    pub fn current_shape(&self) -> &[usize] {
        &self.shape
    }

    /// The next layer's name: the one given with [`Self::named`] or `<kind>_<index>`, with a
    /// suffix if a layer or value already has it.
    fn layer_name(&mut self, kind: &str) -> String {
        let base = self
            .next_name
            .take()
            .unwrap_or_else(|| format!("{kind}_{}", self.layers.len()));
        let taken = |n: &str| self.graph.has(n) || self.layers.iter().any(|l| l.name == n);
        if !taken(&base) {
            return base;
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !taken(n))
            .expect("an unused suffix exists")
    }

    /// Type of an activation of `shape` (axis 0 symbolic with a dynamic batch).
    fn act_val(&self, shape: &[usize]) -> Val {
        let mut v = Val::f32(shape);
        if let (Some(b), Some(d)) = (&self.batch, v.dims.first_mut()) {
            *d = Dim::Param(b.clone());
        }
        v
    }

    fn shape_err(&self, layer: &str, reason: String) -> OnnxError {
        OnnxError::Shape {
            layer: layer.into(),
            shape: self.shape.clone(),
            reason,
        }
    }

    fn record(&mut self, name: String, kind: &'static str, input: String) {
        self.layers.push(ExportedLayer {
            name,
            kind,
            input,
            output: self.current.clone(),
            output_shape: self.shape.clone(),
        });
    }

    /// Quantizes the current value with `q` (if present and switched on); returns the static
    /// parameters used.
    fn quantize_current(
        &mut self,
        prefix: &str,
        what: &'static str,
        q: Option<&Quantizer>,
    ) -> Result<Option<HostAct>> {
        let Some(q) = q.filter(|q| q.enabled) else {
            return Ok(None);
        };
        let act = HostAct::new(q, &self.shape, prefix, what, S::TARGET)?;
        let batch_dependent = match act.layout.granularity {
            Granularity::PerTensor => false,
            Granularity::PerChannel { axis } => axis == 0,
            // Roles never reach a layout (`Granularity::layout` refuses them); refusing a
            // dynamic batch for them is the safe answer anyway.
            Granularity::PerGroup { .. }
            | Granularity::PerOutputChannel
            | Granularity::PerInputGroup { .. } => true,
        };
        if self.batch.is_some() && batch_dependent {
            return Err(unsupported(
                prefix,
                what,
                &act.spec,
                S::TARGET,
                "with a dynamic batch a scale cannot vary along the batch axis (per channel of axis 0, or per group, whose scale shape holds the batch size)",
            ));
        }
        let val = self.act_val(&self.shape);
        self.current = S::activation(&mut self.graph, prefix, what, &self.current, &val, &act)?;
        self.graph
            .metadata
            .push((prefix.into(), act.spec.to_string()));
        Ok(Some(act))
    }

    /// Emits a weight: through its quantizer when it has one switched on, else as floats.
    fn weight<const D: usize>(
        &mut self,
        prefix: &str,
        quantizer: Option<&Quantizer>,
        quantized: impl FnOnce()
            -> std::result::Result<Option<burn_quant_core::QuantTensor<D>>, NnError>,
        float: burn::tensor::Tensor<D>,
        layer: &str,
    ) -> Result<(String, Option<HostQuant>)> {
        if quantizer.is_some_and(|q| q.enabled)
            && let Some(q) = quantized().map_err(|source| OnnxError::Layer {
                layer: layer.into(),
                source,
            })?
        {
            let hq = HostQuant::new(&q, prefix)?;
            let name = S::weight(&mut self.graph, prefix, &hq)?;
            self.graph
                .metadata
                .push((prefix.into(), hq.spec.to_string()));
            return Ok((name, Some(hq)));
        }
        let shape = float.dims().to_vec();
        let values = floats(float, prefix)?;
        let name = self
            .graph
            .initializer(TensorProto::f32s(prefix, &shape, &values));
        Ok((name, None))
    }

    /// Emits a bias: float, or int32 with scale `s_in · s_w` when the layer quantizes it
    /// (mirroring `burn_quant_nn::quantizer::int32_bias`).
    #[allow(clippy::too_many_arguments)]
    fn bias(
        &mut self,
        prefix: &str,
        layer: &str,
        kind: &str,
        bias: burn::tensor::Tensor<1>,
        bias_quant: bool,
        has_input_quant: bool,
        input: Option<&HostAct>,
        weight: Option<&HostQuant>,
        per_channel: &[usize],
    ) -> Result<String> {
        let values = floats(bias, prefix)?;
        let layer_err = |source: NnError| OnnxError::Layer {
            layer: layer.into(),
            source,
        };
        if bias_quant && !has_input_quant {
            return Err(layer_err(NnError::MissingInputScale { layer: kind.into() }));
        }
        let (Some(input), Some(weight), true) = (input, weight, bias_quant) else {
            let c = values.len();
            return Ok(self
                .graph
                .initializer(TensorProto::f32s(prefix, &[c], &values)));
        };
        if input.scales.len() != 1 {
            return Err(layer_err(NnError::InvalidConfig {
                field: "input_quant.granularity",
                value: "not per tensor".into(),
                reason: "an int32 bias needs a per-tensor input scale".into(),
            }));
        }
        if weight.scales.len() != 1 && weight.layout.scale_shape != per_channel {
            return Err(layer_err(NnError::InvalidConfig {
                field: "weight_quant.granularity",
                value: format!("scales {:?}", weight.layout.scale_shape),
                reason: format!(
                    "an int32 bias needs a per-tensor or per-output-channel weight scale {per_channel:?}"
                ),
            }));
        }
        let s_in = input.scales[0];
        let scales: Vec<f32> = weight.scales.iter().map(|s| s * s_in).collect();
        let limit = i32::MAX as f32;
        let codes: Vec<i32> = values
            .iter()
            .enumerate()
            .map(|(c, b)| {
                let s = if scales.len() == 1 {
                    scales[0]
                } else {
                    scales[c]
                };
                round_even((b / s).clamp(-limit, limit)) as i32
            })
            .collect();
        self.graph.metadata.push((
            prefix.into(),
            "int32 bias, scale = input scale × weight scale".into(),
        ));
        S::int32_bias(&mut self.graph, prefix, &codes, &scales)
    }

    /// Identity + activation quantizer ([`QuantAct`], Brevitas's `QuantIdentity`).
    pub fn act(self, layer: &QuantAct) -> Result<Self> {
        self.quantizer(&layer.act_quant)
    }

    /// A bare activation quantizer (a no-op when switched off).
    pub fn quantizer(mut self, q: &Quantizer) -> Result<Self> {
        let name = self.layer_name("act");
        let input = self.current.clone();
        self.quantize_current(&name, "activation", Some(q))?;
        self.record(name, "act", input);
        Ok(self)
    }

    /// [`QuantReLU`]: `Relu`, then the output quantizer.
    pub fn relu(mut self, layer: &QuantReLU) -> Result<Self> {
        let name = self.layer_name("relu");
        let input = self.current.clone();
        let val = self.act_val(&self.shape);
        self.current = self
            .graph
            .node("Relu", "", &[&input], &format!("{name}.relu"), vec![], val);
        self.quantize_current(
            &format!("{name}.act_quant"),
            "output activation",
            Some(&layer.act_quant),
        )?;
        self.record(name, "relu", input);
        Ok(self)
    }

    /// A float `Relu` (no quantizer).
    pub fn float_relu(mut self) -> Self {
        let name = self.layer_name("relu");
        let input = self.current.clone();
        let val = self.act_val(&self.shape);
        self.current = self.graph.node("Relu", "", &[&input], &name, vec![], val);
        self.record(name, "relu", input);
        self
    }

    /// `Flatten` with axis 1: `[d0, d1, …] → [d0, d1·…]` (what `reshape([batch, c·h·w])` does
    /// before a classifier).
    pub fn flatten(mut self) -> Result<Self> {
        let name = self.layer_name("flatten");
        if self.shape.len() < 2 {
            return Err(self.shape_err(&name, "flatten needs rank >= 2".into()));
        }
        let input = self.current.clone();
        let shape = vec![self.shape[0], self.shape[1..].iter().product()];
        let val = self.act_val(&shape);
        self.current = self.graph.node(
            "Flatten",
            "",
            &[&input],
            &name,
            vec![AttributeProto::int("axis", 1)],
            val,
        );
        self.shape = shape;
        self.record(name, "flatten", input);
        Ok(self)
    }

    /// [`QuantLinear`]: input quantizer, `MatMul` with the (dequantized) weight
    /// `[d_input, d_output]` (Burn's layout, no transpose), `Add` of the (int32) bias, output
    /// quantizer. Input `[..., d_input]`.
    pub fn linear(mut self, layer: &QuantLinear) -> Result<Self> {
        let name = self.layer_name("linear");
        let [d_in, d_out] = layer.weight.dims();
        if self.shape.last() != Some(&d_in) {
            return Err(self.shape_err(&name, format!("linear expects [..., {d_in}]")));
        }
        let input = self.current.clone();
        let in_act = self.quantize_current(
            &format!("{name}.input_quant"),
            "input activation",
            layer.input_quant.as_ref(),
        )?;
        let x = self.current.clone();
        let (w, wq) = self.weight(
            &format!("{name}.weight"),
            layer.weight_quant.as_ref(),
            || layer.quant_weight(),
            layer.weight.val(),
            &name,
        )?;
        let mut shape = self.shape.clone();
        *shape.last_mut().expect("checked non-empty above") = d_out;
        let val = self.act_val(&shape);
        self.current = self.graph.node(
            "MatMul",
            "",
            &[&x, &w],
            &format!("{name}.matmul"),
            vec![],
            val.clone(),
        );
        if let Some(b) = &layer.bias {
            let bias = self.bias(
                &format!("{name}.bias"),
                &name,
                "QuantLinear",
                b.val(),
                layer.bias_quant,
                layer.input_quant.is_some(),
                in_act.as_ref(),
                wq.as_ref(),
                &[1, d_out],
            )?;
            let y = self.current.clone();
            self.current =
                self.graph
                    .node("Add", "", &[&y, &bias], &format!("{name}.add"), vec![], val);
        }
        self.shape = shape;
        self.quantize_current(
            &format!("{name}.output_quant"),
            "output activation",
            layer.output_quant.as_ref(),
        )?;
        self.record(name, "linear", input);
        Ok(self)
    }

    /// [`QuantConv2d`]: input quantizer, `Conv` with the (dequantized) weight
    /// `[c_out, c_in / groups, k_h, k_w]`, the layer's stride, dilation, groups and padding
    /// (Burn's `Same` resolved to explicit pads), (int32) bias, output quantizer.
    /// Input `[batch, c_in, h, w]`.
    pub fn conv2d(mut self, layer: &QuantConv2d) -> Result<Self> {
        let name = self.layer_name("conv2d");
        let [c_out, c_in_group, kh, kw] = layer.weight.dims();
        let c_in = c_in_group * layer.groups;
        if self.shape.len() != 4 || self.shape[1] != c_in {
            return Err(self.shape_err(&name, format!("conv2d expects [batch, {c_in}, h, w]")));
        }
        let (h, w) = (self.shape[2], self.shape[3]);
        let [sh, sw] = layer.stride;
        let [dh, dw] = layer.dilation;
        let ((pt, pb), (pl, pr)) = match &layer.padding {
            PaddingConfig2d::Valid => ((0, 0), (0, 0)),
            PaddingConfig2d::Same => (same_padding(kh, sh, h), same_padding(kw, sw, w)),
            PaddingConfig2d::Explicit(top, left, bottom, right) => {
                ((*top, *bottom), (*left, *right))
            }
        };
        let out_len = |size: usize, pad: usize, k: usize, d: usize, s: usize| {
            (size + pad).checked_sub(d * (k - 1) + 1).map(|v| v / s + 1)
        };
        let (Some(h_out), Some(w_out)) = (
            out_len(h, pt + pb, kh, dh, sh),
            out_len(w, pl + pr, kw, dw, sw),
        ) else {
            return Err(self.shape_err(
                &name,
                format!("the input is smaller than the {kh}x{kw} kernel (dilation {dh}x{dw})"),
            ));
        };
        let input = self.current.clone();
        let in_act = self.quantize_current(
            &format!("{name}.input_quant"),
            "input activation",
            layer.input_quant.as_ref(),
        )?;
        let x = self.current.clone();
        let (wname, wq) = self.weight(
            &format!("{name}.weight"),
            layer.weight_quant.as_ref(),
            || layer.quant_weight(),
            layer.weight.val(),
            &name,
        )?;
        let mut inputs = vec![x, wname];
        if let Some(b) = &layer.bias {
            inputs.push(self.bias(
                &format!("{name}.bias"),
                &name,
                "QuantConv2d",
                b.val(),
                layer.bias_quant,
                layer.input_quant.is_some(),
                in_act.as_ref(),
                wq.as_ref(),
                &[c_out, 1, 1, 1],
            )?);
        }
        let shape = vec![self.shape[0], c_out, h_out, w_out];
        let val = self.act_val(&shape);
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let i = |v: usize| v as i64;
        self.current = self.graph.node(
            "Conv",
            "",
            &inputs,
            &format!("{name}.conv"),
            vec![
                AttributeProto::ints("kernel_shape", &[i(kh), i(kw)]),
                AttributeProto::ints("strides", &[i(sh), i(sw)]),
                AttributeProto::ints("dilations", &[i(dh), i(dw)]),
                AttributeProto::ints("pads", &[i(pt), i(pl), i(pb), i(pr)]),
                AttributeProto::int("group", i(layer.groups)),
            ],
            val,
        );
        self.shape = shape;
        self.quantize_current(
            &format!("{name}.output_quant"),
            "output activation",
            layer.output_quant.as_ref(),
        )?;
        self.record(name, "conv2d", input);
        Ok(self)
    }

    /// The finished model: the last value becomes the graph output; the default-domain opset
    /// is the lowest that holds every node and the IR version the one that goes with it.
    pub fn build(mut self) -> Result<ModelProto> {
        let bad = |field: &'static str, value: String, reason: &str| OnnxError::InvalidArgument {
            field,
            value,
            reason: reason.into(),
        };
        if self.input_name.is_empty() {
            return Err(bad("input_name", "\"\"".into(), "must not be empty"));
        }
        if self.input_shape.is_empty() || self.input_shape.contains(&0) {
            return Err(bad(
                "input_shape",
                format!("{:?}", self.input_shape),
                "needs rank >= 1 and no zero-sized axis",
            ));
        }
        if self.graph.nodes.is_empty() {
            return Err(bad(
                "layers",
                "none".into(),
                "nothing to export: no layer added a node",
            ));
        }
        let out = self.output_name.clone();
        if out.is_empty() || (self.graph.has(&out) && out != self.current) {
            return Err(bad(
                "output_name",
                format!("{out:?}"),
                "must be non-empty and not already name another value",
            ));
        }
        if !self.graph.rename_output(&self.current, &out) {
            let val = self.act_val(&self.shape);
            let current = self.current.clone();
            self.graph
                .node("Identity", "", &[&current], &out, vec![], val);
        }
        for l in self.layers.iter_mut() {
            for v in [&mut l.input, &mut l.output] {
                if *v == self.current {
                    *v = out.clone();
                }
            }
        }
        let out_val = self.act_val(&self.shape);
        let in_val = self.act_val(&self.input_shape);
        Ok(self.graph.finish(
            S::GRAPH_NAME,
            vec![ValueInfoProto::tensor(
                &self.input_name,
                DataType::Float,
                &in_val.dims,
            )],
            vec![ValueInfoProto::tensor(&out, DataType::Float, &out_val.dims)],
        ))
    }
}

impl OnnxModelBuilder<Qonnx> {
    /// A QONNX `Trunc` (v1) on the current value; see [`TruncSpec::apply`] for its value.
    pub fn trunc(mut self, spec: &TruncSpec) -> Result<Self> {
        let name = self.layer_name("trunc");
        spec.validate()?;
        let rounding = match spec.rounding {
            Rounding::NearestEven => "ROUND",
            Rounding::HalfUp => "HALF_UP",
            Rounding::Floor => "FLOOR",
            Rounding::Ceil => "CEIL",
            Rounding::TowardZero => "DOWN",
            Rounding::Stochastic { .. } | Rounding::Custom { .. } => {
                unreachable!("refused by validate")
            }
        };
        let input = self.current.clone();
        let mut scalar = |what: &str, v: f32| {
            self.graph
                .initializer(TensorProto::f32s(&format!("{name}.{what}"), &[], &[v]))
        };
        let s = scalar("scale", spec.scale);
        let z = scalar("zero_point", spec.zero_point);
        let bi = scalar("input_bit_width", spec.input_bits as f32);
        let bo = scalar("output_bit_width", spec.output_bits as f32);
        let val = self.act_val(&self.shape);
        self.current = self.graph.node(
            "Trunc",
            super::style::QONNX_DOMAIN,
            &[&input, &s, &z, &bi, &bo],
            &name,
            vec![AttributeProto::string("rounding_mode", rounding)],
            val,
        );
        self.record(name, "trunc", input);
        Ok(self)
    }
}
