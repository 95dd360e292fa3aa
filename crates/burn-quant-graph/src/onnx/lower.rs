//! The lowering itself: one IR node at a time onto an [`OnnxGraph`], at an assumed opset.

use std::marker::PhantomData;

use burn::backend::ir::ScalarIr;
use burn::tensor::{DType, Device, Scalar, TensorData};
use burn_quant_export::onnx::proto::{AttributeProto, DataType, Dim, TensorProto};
use burn_quant_export::onnx::{HostAct, HostQuant, OnnxError, OnnxGraph, QuantStyle, Val};

use super::OnnxExport;
use super::tensors::{onnx_dtype, reshaped, scalar_data, tensor_proto, with_float_tensor};
use crate::GraphError;
use crate::ir::{BinaryOp, Node, Op, ReduceOp, ResizeMode, ScalarOp, UnaryOp, ValueId, ValueOrigin};
use crate::quantize::{QuantNode, QuantSite};

/// Lowest default-domain opset of a lowered graph: Softmax/LogSoftmax over one axis,
/// per-axis Q/DQ, `ReduceSum` with its axes as an input.
pub(crate) const BASE_OPSET: i64 = 13;

/// State of one lowering pass.
pub(crate) struct Lowering<'a, 'e, S: QuantStyle> {
    ex: &'a OnnxExport<'e>,
    pub g: OnnxGraph,
    /// The opset the op forms are chosen for (attributes or inputs).
    opset: i64,
    /// ONNX name of each IR value once defined.
    pub names: Vec<Option<String>>,
    style: PhantomData<S>,
}

fn i(v: usize) -> i64 {
    v as i64
}

/// An [`OnnxError`] at `node`.
fn onnx_err(node: &str) -> impl Fn(OnnxError) -> GraphError + '_ {
    move |source| GraphError::Onnx {
        node: node.to_string(),
        source,
    }
}

fn unsupported(node: &Node, what: impl Into<String>) -> GraphError {
    GraphError::UnsupportedOp {
        op: what.into(),
        at: format!("node `{}` (ONNX export)", node.name),
    }
}

impl<'a, 'e, S: QuantStyle> Lowering<'a, 'e, S> {
    /// A pass at `opset` with the graph inputs named `input_names`.
    pub fn new(ex: &'a OnnxExport<'e>, opset: i64, input_names: &[String]) -> Self {
        let mut g = S::new_graph();
        g.need_opset(opset);
        let mut names = vec![None; ex.graph.values.len()];
        for (v, name) in ex.graph.inputs.iter().zip(input_names) {
            g.define(name);
            names[v.0] = Some(name.clone());
        }
        Self {
            ex,
            g,
            opset,
            names,
            style: PhantomData,
        }
    }

    /// The ONNX type of IR value `v`.
    pub fn val(&self, v: ValueId) -> Result<Val, GraphError> {
        let value = self.ex.graph.value(v);
        let dtype = onnx_dtype(value.dtype).ok_or_else(|| {
            GraphError::Malformed(format!("value {v} has element type {:?}", value.dtype))
        })?;
        // A batch-symbolic graph writes its batch axes symbolically (`batch`, `batch*k` for
        // an axis of k × batch rows), so the file runs at any batch size.
        let dims = value
            .shape
            .iter()
            .enumerate()
            .map(|(a, &d)| match value.per_batch.get(a).copied().unwrap_or(0) {
                0 => Dim::Fixed(d),
                1 => Dim::Param("batch".into()),
                k => Dim::Param(format!("batch*{k}")),
            })
            .collect();
        Ok(Val { dtype, dims })
    }

    /// Target shape of a Reshape to value `out` of a batch-symbolic graph: the one
    /// batch-proportional axis is inferred (`-1`) from the fixed ones.
    fn reshape_target(&self, node: &Node, out: ValueId) -> Result<Vec<i64>, GraphError> {
        let value = self.ex.graph.value(out);
        let batched: Vec<usize> = (0..value.shape.len())
            .filter(|&a| value.per_batch.get(a).copied().unwrap_or(0) > 0)
            .collect();
        if batched.len() > 1 {
            return Err(unsupported(
                node,
                format!("Reshape to {:?} with {} batch-proportional axes", value.shape, batched.len()),
            ));
        }
        Ok(value
            .shape
            .iter()
            .enumerate()
            .map(|(a, &d)| if batched.contains(&a) { -1 } else { i(d) })
            .collect())
    }

    /// Target shape of an Expand to value `out`: a batch axis the input already has keeps
    /// it (`1` broadcasts to the input's size).
    fn expand_target(&self, node: &Node, input: ValueId, out: ValueId) -> Result<Vec<i64>, GraphError> {
        let graph = self.ex.graph;
        let (x, y) = (graph.value(input), graph.value(out));
        let offset = y.shape.len() - x.shape.len();
        y.shape
            .iter()
            .enumerate()
            .map(|(a, &d)| {
                let k = y.per_batch.get(a).copied().unwrap_or(0);
                if k == 0 {
                    return Ok(i(d));
                }
                let same = a >= offset && x.per_batch.get(a - offset).copied().unwrap_or(0) == k;
                if same {
                    Ok(1)
                } else {
                    Err(unsupported(node, format!("Expand along batch axis {a} of a batch-symbolic graph")))
                }
            })
            .collect()
    }

    /// The host data of a parameter or constant value (live parameters first).
    pub(crate) fn data_of(&self, v: ValueId) -> Option<Result<TensorData, GraphError>> {
        let graph = self.ex.graph;
        let shape = &graph.value(v).shape;
        match graph.value(v).origin {
            ValueOrigin::Param(p) => {
                let param = &graph.params[p];
                let data = param
                    .id
                    .and_then(|id| self.ex.live.by_id.get(&id))
                    .cloned()
                    .unwrap_or_else(|| param.data.clone());
                Some(reshaped(data, shape, &param.path))
            }
            ValueOrigin::Constant(c) => Some(Ok(graph.constants[c].data.clone())),
            _ => None,
        }
    }

    /// The ONNX name of IR value `v`; parameters and constants become initializers on first
    /// use (so a weight read only through its quantizer is stored only as codes).
    fn name(&mut self, v: ValueId) -> Result<String, GraphError> {
        if let Some(n) = &self.names[v.0] {
            return Ok(n.clone());
        }
        let graph = self.ex.graph;
        let value = graph.value(v);
        let base = match value.origin {
            ValueOrigin::Param(p) => graph.params[p].path.clone(),
            ValueOrigin::Constant(c) => format!("const{c}"),
            _ => {
                return Err(GraphError::Malformed(format!(
                    "value {v} is read before it is defined"
                )));
            }
        };
        let data = self.data_of(v).expect("a parameter or a constant")?;
        let t = tensor_proto(&base, &data, &value.shape)
            .map_err(|reason| GraphError::Malformed(format!("`{base}`: {reason}")))?;
        let name = self.g.initializer(t);
        self.names[v.0] = Some(name.clone());
        Ok(name)
    }

    /// An initializer of int64 `values` (shapes, axes, pads) named after `base`.
    fn i64s(&mut self, base: &str, values: &[i64]) -> String {
        self.g
            .initializer(TensorProto::i64s(base, &[values.len()], values))
    }

    /// A rank-0 initializer of `dtype` holding `value`.
    fn scalar(&mut self, base: &str, value: ScalarIr, dtype: DType) -> Result<String, GraphError> {
        let data = scalar_data(Scalar::from(value), dtype);
        let t = tensor_proto(base, &data, &[])
            .map_err(|reason| GraphError::Malformed(format!("`{base}`: {reason}")))?;
        Ok(self.g.initializer(t))
    }

    /// Appends one ONNX node of the default domain.
    fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        out: &str,
        attrs: Vec<AttributeProto>,
        val: Val,
    ) -> String {
        self.g.node(op_type, "", inputs, out, attrs, val)
    }

    /// Lowers node `n`.
    pub fn node(&mut self, n: usize) -> Result<(), GraphError> {
        let graph = self.ex.graph;
        let node = &graph.nodes[n];
        let out_id = *node
            .outputs
            .first()
            .ok_or_else(|| GraphError::Malformed(format!("node `{}` has no output", node.name)))?;
        if node.outputs.len() != 1 {
            return Err(unsupported(
                node,
                format!("{} with several outputs", node.op.kind()),
            ));
        }
        if let Op::Quant(q) = &node.op {
            let out = self.quant(node, q)?;
            self.names[out_id.0] = Some(out);
            return Ok(());
        }
        let mut x = Vec::with_capacity(node.inputs.len());
        for &v in &node.inputs {
            x.push(self.name(v)?);
        }
        let xs: Vec<&str> = x.iter().map(String::as_str).collect();
        let val = self.val(out_id)?;
        let out_shape = graph.value(out_id).shape.clone();
        let in_shape = |k: usize| graph.value(node.inputs[k]).shape.clone();
        let in_dtype = |k: usize| graph.value(node.inputs[k]).dtype;
        let name = node.name.as_str();
        let sub = |s: &str| format!("{name}.{s}");
        let out = match &node.op {
            Op::Linear { bias } => {
                if *bias {
                    let mm = self.op("MatMul", &xs[..2], &sub("matmul"), vec![], val.clone());
                    self.op("Add", &[&mm, xs[2]], name, vec![], val)
                } else {
                    self.op("MatMul", &xs[..2], name, vec![], val)
                }
            }
            Op::Conv1d { options, bias } => {
                let w = in_shape(1);
                let attrs = vec![
                    AttributeProto::ints("kernel_shape", &[i(w[2])]),
                    AttributeProto::ints("strides", &[i(options.stride[0])]),
                    AttributeProto::ints("dilations", &[i(options.dilation[0])]),
                    AttributeProto::ints(
                        "pads",
                        &[i(options.padding[0].0), i(options.padding[0].1)],
                    ),
                    AttributeProto::int("group", i(options.groups)),
                ];
                self.op("Conv", &xs[..2 + *bias as usize], name, attrs, val)
            }
            Op::Conv2d { options, bias } => {
                let w = in_shape(1);
                let [(pt, pb), (pl, pr)] = options.padding;
                let attrs = vec![
                    AttributeProto::ints("kernel_shape", &[i(w[2]), i(w[3])]),
                    AttributeProto::ints("strides", &options.stride.map(i)),
                    AttributeProto::ints("dilations", &options.dilation.map(i)),
                    AttributeProto::ints("pads", &[i(pt), i(pl), i(pb), i(pr)]),
                    AttributeProto::int("group", i(options.groups)),
                ];
                self.op("Conv", &xs[..2 + *bias as usize], name, attrs, val)
            }
            Op::ConvTranspose1d { options, bias } => {
                let w = in_shape(1);
                let p = i(options.padding[0]);
                let attrs = vec![
                    AttributeProto::ints("kernel_shape", &[i(w[2])]),
                    AttributeProto::ints("strides", &options.stride.map(i)),
                    AttributeProto::ints("dilations", &options.dilation.map(i)),
                    AttributeProto::ints("pads", &[p, p]),
                    AttributeProto::ints("output_padding", &options.padding_out.map(i)),
                    AttributeProto::int("group", i(options.groups)),
                ];
                self.op("ConvTranspose", &xs[..2 + *bias as usize], name, attrs, val)
            }
            Op::ConvTranspose2d { options, bias } => {
                let w = in_shape(1);
                let [ph, pw] = options.padding.map(i);
                let attrs = vec![
                    AttributeProto::ints("kernel_shape", &[i(w[2]), i(w[3])]),
                    AttributeProto::ints("strides", &options.stride.map(i)),
                    AttributeProto::ints("dilations", &options.dilation.map(i)),
                    AttributeProto::ints("pads", &[ph, pw, ph, pw]),
                    AttributeProto::ints("output_padding", &options.padding_out.map(i)),
                    AttributeProto::int("group", i(options.groups)),
                ];
                self.op("ConvTranspose", &xs[..2 + *bias as usize], name, attrs, val)
            }
            Op::Compare(..) | Op::Not | Op::Logical { .. } => {
                // Boolean mask arithmetic (HF-style attention masks) has no lowering yet.
                return Err(unsupported(node, node.op.kind()));
            }
            Op::Attention { .. } => {
                // Opset 23's Attention, or its matmul/softmax decomposition, is not written yet.
                return Err(unsupported(node, "Attention (fused scaled dot-product)"));
            }
            Op::Embedding => {
                let idx = self.indices(node, 1, &x[1])?;
                self.op(
                    "Gather",
                    &[xs[0], &idx],
                    name,
                    vec![AttributeProto::int("axis", 0)],
                    val,
                )
            }
            Op::BatchNorm { epsilon } => self.op(
                "BatchNormalization",
                &xs,
                name,
                vec![AttributeProto::float("epsilon", *epsilon as f32)],
                val,
            ),
            Op::LayerNorm { epsilon, .. } => {
                self.g.need_opset(17);
                self.op(
                    "LayerNormalization",
                    &xs,
                    name,
                    vec![
                        AttributeProto::int("axis", -1),
                        AttributeProto::float("epsilon", *epsilon as f32),
                    ],
                    val,
                )
            }
            Op::MatMul => self.op("MatMul", &xs, name, vec![], val),
            Op::Binary(op) => {
                let t = match op {
                    BinaryOp::Add => "Add",
                    BinaryOp::Sub => "Sub",
                    BinaryOp::Mul => "Mul",
                    BinaryOp::Div => "Div",
                    BinaryOp::Pow => "Pow",
                };
                self.op(t, &xs, name, vec![], val)
            }
            Op::Scalar(op, s) => {
                let t = match op {
                    ScalarOp::Add => "Add",
                    ScalarOp::Sub => "Sub",
                    ScalarOp::Mul => "Mul",
                    ScalarOp::Div => "Div",
                    ScalarOp::Pow => "Pow",
                    ScalarOp::ClampMin => "Max",
                    ScalarOp::ClampMax => "Min",
                };
                // Pow's exponent may have its own type; the others take the input's.
                let c = self.scalar(&sub("scalar"), *s, in_dtype(0))?;
                self.op(t, &[xs[0], &c], name, vec![], val)
            }
            Op::Clamp { min, max } => {
                let lo = self.scalar(&sub("min"), *min, in_dtype(0))?;
                let hi = self.scalar(&sub("max"), *max, in_dtype(0))?;
                if in_dtype(0).is_float() {
                    self.op("Clip", &[xs[0], &lo, &hi], name, vec![], val)
                } else {
                    let m = self.op("Max", &[xs[0], &lo], &sub("clamp_min"), vec![], val.clone());
                    self.op("Min", &[&m, &hi], name, vec![], val)
                }
            }
            Op::Unary(UnaryOp::Gelu) => self.gelu(xs[0], name, in_dtype(0), val)?,
            Op::Unary(op) => {
                let t = match op {
                    UnaryOp::Relu => "Relu",
                    UnaryOp::Gelu => unreachable!("lowered above"),
                    UnaryOp::Sigmoid => "Sigmoid",
                    UnaryOp::Tanh => "Tanh",
                    UnaryOp::Exp => "Exp",
                    UnaryOp::Log => "Log",
                    UnaryOp::Sqrt => "Sqrt",
                    UnaryOp::Neg => "Neg",
                    UnaryOp::Abs => "Abs",
                    UnaryOp::Erf => "Erf",
                    UnaryOp::Recip => "Reciprocal",
                    // ONNX Round rounds half to even, as Burn does.
                    UnaryOp::Round => "Round",
                    UnaryOp::Floor => "Floor",
                    UnaryOp::Ceil => "Ceil",
                    UnaryOp::Sin => "Sin",
                    UnaryOp::Cos => "Cos",
                };
                self.op(t, &xs, name, vec![], val)
            }
            Op::LeakyRelu { slope } => self.op(
                "LeakyRelu",
                &xs,
                name,
                vec![AttributeProto::float("alpha", scalar_f32(slope))],
                val,
            ),
            Op::HardSigmoid { alpha, beta } => self.op(
                "HardSigmoid",
                &xs,
                name,
                vec![
                    AttributeProto::float("alpha", scalar_f32(alpha)),
                    AttributeProto::float("beta", scalar_f32(beta)),
                ],
                val,
            ),
            Op::Softmax { dim } => self.op(
                "Softmax",
                &xs,
                name,
                vec![AttributeProto::int("axis", i(*dim))],
                val,
            ),
            Op::LogSoftmax { dim } => self.op(
                "LogSoftmax",
                &xs,
                name,
                vec![AttributeProto::int("axis", i(*dim))],
                val,
            ),
            Op::Reduce { op, dim } => {
                let (t, axes_as_input_from) = match op {
                    ReduceOp::Sum => ("ReduceSum", 13),
                    ReduceOp::Mean => ("ReduceMean", 18),
                    ReduceOp::Max => ("ReduceMax", 18),
                    ReduceOp::Min => ("ReduceMin", 18),
                };
                let keep = AttributeProto::int("keepdims", 1);
                if self.opset >= axes_as_input_from {
                    let axes = self.i64s(&sub("axes"), &[i(*dim)]);
                    self.op(t, &[xs[0], &axes], name, vec![keep], val)
                } else {
                    let axes = AttributeProto::ints("axes", &[i(*dim)]);
                    self.op(t, &xs, name, vec![keep, axes], val)
                }
            }
            Op::Reshape => {
                let shape = self.reshape_target(node, out_id)?;
                let s = self.i64s(&sub("shape"), &shape);
                self.op("Reshape", &[xs[0], &s], name, vec![], val)
            }
            Op::Permute { axes } => {
                let perm: Vec<i64> = axes.iter().map(|&a| i(a)).collect();
                self.op(
                    "Transpose",
                    &xs,
                    name,
                    vec![AttributeProto::ints("perm", &perm)],
                    val,
                )
            }
            Op::Expand => {
                let shape = self.expand_target(node, node.inputs[0], out_id)?;
                let s = self.i64s(&sub("shape"), &shape);
                self.op("Expand", &[xs[0], &s], name, vec![], val)
            }
            Op::Slice { ranges } => {
                let shape = in_shape(0);
                let (mut starts, mut ends, mut axes, mut steps) = (vec![], vec![], vec![], vec![]);
                for (axis, r) in ranges.iter().enumerate() {
                    let size = shape[axis];
                    if r.step <= 0 {
                        return Err(unsupported(
                            node,
                            format!("Slice with step {} on axis {axis}", r.step),
                        ));
                    }
                    let range = r.to_range(size);
                    if range == (0..size) && r.step == 1 {
                        continue;
                    }
                    starts.push(i(range.start));
                    ends.push(i(range.end.max(range.start)));
                    axes.push(i(axis));
                    steps.push(r.step as i64);
                }
                if axes.is_empty() {
                    self.op("Identity", &xs, name, vec![], val)
                } else {
                    let s = self.i64s(&sub("starts"), &starts);
                    let e = self.i64s(&sub("ends"), &ends);
                    let a = self.i64s(&sub("axes"), &axes);
                    let st = self.i64s(&sub("steps"), &steps);
                    self.op("Slice", &[xs[0], &s, &e, &a, &st], name, vec![], val)
                }
            }
            Op::Concat { dim } => self.op(
                "Concat",
                &xs,
                name,
                vec![AttributeProto::int("axis", i(*dim))],
                val,
            ),
            Op::Select { dim } => {
                let idx = self.indices(node, 1, &x[1])?;
                self.op(
                    "Gather",
                    &[xs[0], &idx],
                    name,
                    vec![AttributeProto::int("axis", i(*dim))],
                    val,
                )
            }
            Op::Cast => {
                let to = val.dtype as i64;
                self.op("Cast", &xs, name, vec![AttributeProto::int("to", to)], val)
            }
            Op::MaskFill { value } => {
                let fill = self.scalar(&sub("value"), *value, in_dtype(0))?;
                self.op("Where", &[xs[1], &fill, xs[0]], name, vec![], val)
            }
            Op::Full { value } => {
                if graph.value(out_id).per_batch.iter().any(|&k| k > 0) {
                    return Err(unsupported(node, "a constant fill whose shape follows the batch"));
                }
                let dtype = graph.value(out_id).dtype;
                let c = self.scalar(&sub("value"), *value, dtype)?;
                if out_shape.is_empty() {
                    self.op("Identity", &[&c], name, vec![], val)
                } else {
                    let shape: Vec<i64> = out_shape.iter().map(|&d| i(d)).collect();
                    let s = self.i64s(&sub("shape"), &shape);
                    self.op("Expand", &[&c, &s], name, vec![], val)
                }
            }
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
                dilation,
                ceil_mode,
            } => {
                let [ph, pw] = padding.map(i);
                self.op(
                    "MaxPool",
                    &xs,
                    name,
                    vec![
                        AttributeProto::ints("kernel_shape", &kernel.map(i)),
                        AttributeProto::ints("strides", &stride.map(i)),
                        AttributeProto::ints("pads", &[ph, pw, ph, pw]),
                        AttributeProto::ints("dilations", &dilation.map(i)),
                        AttributeProto::int("ceil_mode", *ceil_mode as i64),
                    ],
                    val,
                )
            }
            Op::AvgPool2d {
                kernel,
                stride,
                padding,
                count_include_pad,
                ceil_mode,
            } => {
                let [ph, pw] = padding.map(i);
                self.op(
                    "AveragePool",
                    &xs,
                    name,
                    vec![
                        AttributeProto::ints("kernel_shape", &kernel.map(i)),
                        AttributeProto::ints("strides", &stride.map(i)),
                        AttributeProto::ints("pads", &[ph, pw, ph, pw]),
                        AttributeProto::int("count_include_pad", *count_include_pad as i64),
                        AttributeProto::int("ceil_mode", *ceil_mode as i64),
                    ],
                    val,
                )
            }
            Op::AdaptiveAvgPool2d { output } => {
                self.adaptive_avg_pool(node, xs[0], &in_shape(0), *output, val)?
            }
            Op::Resize2d { mode } => {
                let batched = graph.value(out_id).per_batch.iter().any(|&k| k > 0);
                let sizes = if batched {
                    // Sizes would fix the batch: spatial scales instead, exact when
                    // ⌊in · (out / in)⌋ gives back `out` in f32 (integer ratios do).
                    let inp = in_shape(0);
                    let mut scales = vec![1f32, 1.0];
                    for a in 2..4 {
                        let r = out_shape[a] as f32 / inp[a] as f32;
                        if (inp[a] as f32 * r).floor() as usize != out_shape[a] {
                            return Err(unsupported(node, format!("Resize {:?} → {:?} of a batch-symbolic graph (no exact scale)", inp, out_shape)));
                        }
                        scales.push(r);
                    }
                    let t = self.g.initializer(TensorProto::f32s(&sub("scales"), &[4], &scales));
                    vec![String::new(), t]
                } else {
                    let sizes: Vec<i64> = out_shape.iter().map(|&d| i(d)).collect();
                    vec![String::new(), String::new(), self.i64s(&sub("sizes"), &sizes)]
                };
                let (m, ctm) = match mode {
                    ResizeMode::Nearest => ("nearest", "asymmetric"),
                    ResizeMode::Bilinear { align_corners: true } => ("linear", "align_corners"),
                    ResizeMode::Bilinear { align_corners: false } => ("linear", "half_pixel"),
                };
                let attrs = vec![
                    AttributeProto::string("mode", m),
                    AttributeProto::string("coordinate_transformation_mode", ctm),
                    AttributeProto::string("nearest_mode", "floor"),
                ];
                let mut inputs = vec![xs[0]];
                inputs.extend(sizes.iter().map(String::as_str));
                self.op("Resize", &inputs, name, attrs, val)
            }
            Op::Quant(_) => unreachable!("lowered above"),
        };
        self.names[out_id.0] = Some(out);
        Ok(())
    }

    /// Indices for Gather: int32/int64 as they are, other integer types cast to int64.
    fn indices(&mut self, node: &Node, slot: usize, x: &str) -> Result<String, GraphError> {
        let v = node.inputs[slot];
        let val = self.val(v)?;
        Ok(match val.dtype {
            DataType::Int64 | DataType::Int32 => x.to_string(),
            t if t.bits().is_some() && !matches!(t, DataType::Float | DataType::Double) => self.op(
                "Cast",
                &[x],
                &format!("{}.indices", node.name),
                vec![AttributeProto::int("to", DataType::Int64 as i64)],
                val.with_dtype(DataType::Int64),
            ),
            t => {
                return Err(unsupported(
                    node,
                    format!("{} with {} indices", node.op.kind(), t.onnx_name()),
                ));
            }
        })
    }

    /// GELU in its erf form, `x · ½ · (1 + erf(x / √2))`, from opset-13 ops (opset 20's
    /// `Gelu` would raise the opset of the whole model).
    fn gelu(&mut self, x: &str, name: &str, dtype: DType, val: Val) -> Result<String, GraphError> {
        let sub = |s: &str| format!("{name}.{s}");
        let sqrt2 = self.scalar(
            &sub("sqrt2"),
            ScalarIr::Float(std::f64::consts::SQRT_2),
            dtype,
        )?;
        let one = self.scalar(&sub("one"), ScalarIr::Float(1.0), dtype)?;
        let half = self.scalar(&sub("half"), ScalarIr::Float(0.5), dtype)?;
        let a = self.op("Div", &[x, &sqrt2], &sub("div"), vec![], val.clone());
        let e = self.op("Erf", &[&a], &sub("erf"), vec![], val.clone());
        let p = self.op("Add", &[&e, &one], &sub("add"), vec![], val.clone());
        let m = self.op("Mul", &[x, &p], &sub("mul"), vec![], val.clone());
        Ok(self.op("Mul", &[&m, &half], name, vec![], val))
    }

    /// Adaptive average pooling: the identity, `GlobalAveragePool` for a 1×1 output,
    /// `AveragePool` when the output divides the input, otherwise Burn's windows
    /// (`[⌊i·in/out⌋, ⌈(i+1)·in/out⌉)`) as slices averaged with `ReduceMean` and concatenated,
    /// rows first then columns (a window's mean is the mean of its rows' means).
    fn adaptive_avg_pool(
        &mut self,
        node: &Node,
        x: &str,
        in_shape: &[usize],
        output: [usize; 2],
        val: Val,
    ) -> Result<String, GraphError> {
        let name = node.name.as_str();
        if in_shape.len() != 4 {
            return Err(unsupported(
                node,
                format!("AdaptiveAvgPool2d on rank {}", in_shape.len()),
            ));
        }
        let (h, w) = (in_shape[2], in_shape[3]);
        if [h, w] == output {
            return Ok(self.op("Identity", &[x], name, vec![], val));
        }
        if output == [1, 1] {
            return Ok(self.op("GlobalAveragePool", &[x], name, vec![], val));
        }
        if output[0] > 0 && output[1] > 0 && h % output[0] == 0 && w % output[1] == 0 {
            let k = [h / output[0], w / output[1]].map(i);
            return Ok(self.op(
                "AveragePool",
                &[x],
                name,
                vec![
                    AttributeProto::ints("kernel_shape", &k),
                    AttributeProto::ints("strides", &k),
                ],
                val,
            ));
        }
        // Separable windows: pool axis 2 into output[0] rows, then axis 3 into output[1].
        let mut cur = x.to_string();
        let mut shape = in_shape.to_vec();
        for (step, axis) in [2usize, 3].into_iter().enumerate() {
            let (size, out) = (shape[axis], output[axis - 2]);
            if size == out {
                continue;
            }
            let mut parts = Vec::with_capacity(out);
            let mut part_shape = shape.clone();
            part_shape[axis] = 1;
            let part_val = Val::fixed(val.dtype, &part_shape);
            for k in 0..out {
                let start = k * size / out;
                let end = ((k + 1) * size).div_ceil(out);
                let base = format!("{name}.pool{step}_{k}");
                let s = self.i64s(&format!("{base}.starts"), &[i(start)]);
                let e = self.i64s(&format!("{base}.ends"), &[i(end)]);
                let a = self.i64s(&format!("{base}.axes"), &[i(axis)]);
                let mut sliced_shape = shape.clone();
                sliced_shape[axis] = end - start;
                let sliced = self.op(
                    "Slice",
                    &[&cur, &s, &e, &a],
                    &format!("{base}.slice"),
                    vec![],
                    Val::fixed(val.dtype, &sliced_shape),
                );
                let keep = AttributeProto::int("keepdims", 1);
                let mean = if self.opset >= 18 {
                    let axes = self.i64s(&format!("{base}.mean_axes"), &[i(axis)]);
                    self.op(
                        "ReduceMean",
                        &[&sliced, &axes],
                        &base,
                        vec![keep],
                        part_val.clone(),
                    )
                } else {
                    let axes = AttributeProto::ints("axes", &[i(axis)]);
                    self.op(
                        "ReduceMean",
                        &[&sliced],
                        &base,
                        vec![keep, axes],
                        part_val.clone(),
                    )
                };
                parts.push(mean);
            }
            shape[axis] = out;
            let last = shape[2..] == output;
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            let out_name = if last {
                name.to_string()
            } else {
                format!("{name}.rows")
            };
            cur = self.op(
                "Concat",
                &parts,
                &out_name,
                vec![AttributeProto::int("axis", i(axis))],
                Val::fixed(val.dtype, &shape),
            );
        }
        Ok(cur)
    }

    /// A quantizer node: a weight (its input is a parameter or constant) is quantized here
    /// and stored as codes; an activation gets the quantizer's static parameters. A switched
    /// off quantizer is the identity (unless Stage 2 gave the weight's codes).
    pub(crate) fn quant(&mut self, node: &Node, q: &QuantNode) -> Result<String, GraphError> {
        let graph = self.ex.graph;
        let x = node.inputs[0];
        let quantizer = self
            .ex
            .quantizers
            .and_then(|qs| qs.quantizers.get(q.quantizer))
            .ok_or_else(|| {
                GraphError::Malformed(format!(
                    "node `{}` applies quantizer {}, which the export was not given (export a \
                     `QuantizedGraph` with `OnnxExport::quantized`)",
                    node.name, q.quantizer
                ))
            })?;
        let err = onnx_err(&node.name);
        // A Stage 2 weight: its exact codes, whatever the quantizer's state.
        if let QuantSite::Weight { param, .. } = &q.site
            && let Some(w) = self.ex.stage2.get(param.as_str())
        {
            let hq = HostQuant::from_any(w, param).map_err(&err)?;
            if hq.shape != graph.value(x).shape {
                return Err(GraphError::Malformed(format!(
                    "Stage 2 weight `{param}` has shape {:?}, node `{}` reads {:?}",
                    hq.shape,
                    node.name,
                    graph.value(x).shape
                )));
            }
            self.g.annotate(param, &hq.spec.to_string());
            return S::emit_weight(&mut self.g, param, &hq).map_err(&err);
        }
        if !quantizer.enabled {
            return self.name(x);
        }
        if let Some(data) = self.data_of(x) {
            let data = data?;
            let prefix = match &q.site {
                QuantSite::Weight { param, .. } => param.clone(),
                _ => graph.value(x).name.clone(),
            };
            let device = quantizer
                .scale
                .as_ref()
                .map(|s| s.val().device())
                .unwrap_or_else(Device::flex);
            let data = data.convert::<f32>();
            let hq = with_float_tensor!(data, &device, format!("node `{}`", node.name), |t| {
                quantizer
                    .quantize(t)
                    .map_err(|source| GraphError::Quant {
                        node: node.name.clone(),
                        source,
                    })
                    .and_then(|qt| HostQuant::new(&qt, &prefix).map_err(&err))
            })?;
            self.g.annotate(&prefix, &hq.spec.to_string());
            return S::emit_weight(&mut self.g, &prefix, &hq).map_err(&err);
        }
        let what = match q.site {
            QuantSite::Weight { .. } => "weight",
            QuantSite::Input { .. } => "input activation",
            QuantSite::Output { .. } => "output activation",
            QuantSite::Join { .. } => "join activation",
        };
        let shape = &graph.value(x).shape;
        let act = HostAct::new(quantizer, shape, &node.name, what, S::target()).map_err(&err)?;
        let input = self.name(x)?;
        let val = self.val(x)?;
        self.g.annotate(&node.name, &act.spec.to_string());
        S::emit_activation(&mut self.g, &node.name, what, &input, &val, &act).map_err(&err)
    }
}

/// A float scalar as f32 (attributes of LeakyRelu, HardSigmoid).
fn scalar_f32(s: &ScalarIr) -> f32 {
    match *s {
        ScalarIr::Float(v) => v as f32,
        ScalarIr::Int(v) => v as f32,
        ScalarIr::UInt(v) => v as f32,
        ScalarIr::Bool(v) => v as u8 as f32,
    }
}
