//! The interpreter: runs a [`Graph`] with Burn's backend ops on any device, keeping autodiff.
//!
//! Values are rank-erased dispatch tensors; every op calls the backend op eager execution
//! calls (`Dispatch::linear`, `conv2d`, `layer_norm`, …), so an unmodified graph reproduces the
//! eager forward bit for bit, on the device and autodiff state of the tensors it is given.
//! Parameters come from the graph's recorded data, or, once [`Interpreter::bind`] has seen the
//! live model, from the model's own `Param`s (matched by `ParamId`): gradients then flow into
//! the model exactly as in eager training.

use std::collections::HashMap;

use burn::backend::ops::{
    ActivationOps, BoolTensorOps, FloatTensorOps, IntTensorOps, ModuleOps,
};
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Scalar, Shape, Tensor, TensorData};

use crate::GraphError;
use crate::ir::{
    BinaryOp, CompareOp, Graph, Op, ReduceOp, ResizeMode, ScalarOp, UnaryOp, ValueId, ValueOrigin,
};
use crate::quantize::QuantContext;

/// Collects a module's float parameters as dispatch tensors, by `ParamId`.
#[derive(Default)]
struct LiveParams {
    by_id: HashMap<ParamId, DispatchTensor>,
}

impl ModuleVisitor for LiveParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.by_id.insert(param.id, param.val().into_dispatch());
    }
}

/// Runs a graph on a device. Cheap to build; holds uploaded parameters between runs.
pub struct Interpreter<'g> {
    graph: &'g Graph,
    device: Device,
    /// Parameter index → tensor on the device (bound live parameter or uploaded data).
    params: Vec<Option<DispatchTensor>>,
    /// Constant index → tensor on the device.
    constants: Vec<Option<DispatchTensor>>,
    /// For each value, the index of the last node reading it (to free it early).
    last_use: Vec<usize>,
    /// The batch size of the current run (batch-symbolic graphs).
    batch: usize,
}

/// What [`Interpreter::execute`] returns.
pub struct Execution {
    /// The graph outputs (`None` when the run stopped early).
    pub outputs: Option<Vec<DispatchTensor>>,
    /// The tapped values, in the order asked.
    pub taps: Vec<DispatchTensor>,
}

impl<'g> Interpreter<'g> {
    /// An interpreter of `graph` on `device`, with the parameters the graph recorded.
    pub fn new(graph: &'g Graph, device: &Device) -> Self {
        let mut last_use = vec![0; graph.values.len()];
        for (n, node) in graph.nodes.iter().enumerate() {
            for v in &node.inputs {
                last_use[v.0] = n;
            }
        }
        for v in &graph.outputs {
            last_use[v.0] = usize::MAX;
        }
        Self {
            graph,
            device: device.clone(),
            params: vec![None; graph.params.len()],
            constants: vec![None; graph.constants.len()],
            last_use,
            batch: graph.capture_batch.unwrap_or(0),
        }
    }

    /// The graph this runs.
    pub fn graph(&self) -> &Graph {
        self.graph
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Binds the graph's parameters to the live parameters of `model` (matched by `ParamId`),
    /// so runs read the model's current values and, on an autodiff device, gradients reach its
    /// parameters. Returns how many parameters were bound; graph parameters the model does not
    /// have keep their recorded data.
    pub fn bind<M: Module>(&mut self, model: &M) -> usize {
        let mut live = LiveParams::default();
        model.visit(&mut live);
        let mut bound = 0;
        for (i, p) in self.graph.params.iter().enumerate() {
            if let Some(t) = p.id.and_then(|id| live.by_id.get(&id)) {
                let want = &self.graph.value(p.value).shape;
                let t = if t.shape().as_slice() == want.as_slice() {
                    t.clone()
                } else {
                    // Parameters a graph pass created are stored flat.
                    Dispatch::float_reshape(t.clone(), Shape::from(want.clone()))
                };
                self.params[i] = Some(t);
                bound += 1;
            }
        }
        bound
    }

    /// Replaces parameter `path`'s value for later runs (e.g. a quantized weight).
    pub fn set_param(&mut self, path: &str, value: DispatchTensor) -> Result<(), GraphError> {
        let i = self
            .graph
            .params
            .iter()
            .position(|p| p.path == path)
            .ok_or_else(|| GraphError::UnknownParam(path.to_string()))?;
        self.params[i] = Some(value);
        Ok(())
    }

    /// The tensor parameter `i` is read as.
    pub fn param_tensor(&mut self, i: usize) -> DispatchTensor {
        if self.params[i].is_none() {
            self.params[i] = Some(upload(&self.graph.params[i].data, &self.device));
        }
        self.params[i].clone().expect("just set")
    }

    fn constant_tensor(&mut self, i: usize) -> DispatchTensor {
        if self.constants[i].is_none() {
            self.constants[i] = Some(upload(&self.graph.constants[i].data, &self.device));
        }
        self.constants[i].clone().expect("just set")
    }

    /// Runs the graph on `inputs` (in [`Graph::inputs`] order) and returns its outputs.
    pub fn run(&mut self, inputs: Vec<DispatchTensor>) -> Result<Vec<DispatchTensor>, GraphError> {
        self.run_with(inputs, &QuantContext::default())
    }

    /// Runs the graph with quantizer nodes run by `quant` (calibration, learned parameters,
    /// bypass).
    pub fn run_with(
        &mut self,
        inputs: Vec<DispatchTensor>,
        quant: &QuantContext,
    ) -> Result<Vec<DispatchTensor>, GraphError> {
        let run = self.execute(inputs, quant, &[], None)?;
        run.outputs.ok_or_else(|| GraphError::Malformed("the run stopped early".into()))
    }

    /// The general run: `taps` are values to return (read as they are computed, or at the
    /// start for inputs, parameters and constants); with `stop_after = Some(n)` the run ends
    /// after node `n` (outputs are then `None`), which is all a layer's statistics need.
    pub fn execute(
        &mut self,
        inputs: Vec<DispatchTensor>,
        quant: &QuantContext,
        taps: &[ValueId],
        stop_after: Option<usize>,
    ) -> Result<Execution, GraphError> {
        let graph = self.graph;
        if inputs.len() != graph.inputs.len() {
            return Err(GraphError::Arity {
                expected: graph.inputs.len(),
                got: inputs.len(),
            });
        }
        // A batch-symbolic graph runs at the batch of its first input.
        let batch = match (graph.capture_batch, inputs.first()) {
            (Some(_), Some(t)) => t.shape().as_slice().first().copied().unwrap_or(0),
            (Some(b), None) => b,
            (None, _) => 0,
        };
        self.batch = batch;
        let mut env: Vec<Option<DispatchTensor>> = vec![None; graph.values.len()];
        for (k, (t, &v)) in inputs.into_iter().zip(&graph.inputs).enumerate() {
            let want = &graph.shape_at(v, batch);
            let got = t.shape();
            if got.as_slice() != want.as_slice() {
                return Err(GraphError::InputShape {
                    input: k,
                    expected: want.clone(),
                    got: got.as_slice().to_vec(),
                });
            }
            env[v.0] = Some(t);
        }
        let mut tapped: Vec<Option<DispatchTensor>> = vec![None; taps.len()];
        for (i, &v) in taps.iter().enumerate() {
            tapped[i] = match graph.value(v).origin {
                ValueOrigin::Input(_) => env[v.0].clone(),
                ValueOrigin::Param(p) => Some(self.param_tensor(p)),
                ValueOrigin::Constant(c) => Some(self.constant_tensor(c)),
                ValueOrigin::Node(_) => None,
            };
        }
        for (n, node) in graph.nodes.iter().enumerate() {
            let mut args = Vec::with_capacity(node.inputs.len());
            for (slot, &v) in node.inputs.iter().enumerate() {
                // The last read of an activation moves it out of the environment, so the
                // backend (and autodiff) sees a uniquely owned tensor and may reuse its
                // buffer, as in eager execution.
                let last_read = self.last_use[v.0] == n && !node.inputs[slot + 1..].contains(&v);
                let held = if last_read {
                    env[v.0].take()
                } else {
                    env[v.0].clone()
                };
                let t = match held {
                    Some(t) => t,
                    None => match graph.value(v).origin {
                        ValueOrigin::Param(i) => self.param_tensor(i),
                        ValueOrigin::Constant(i) => self.constant_tensor(i),
                        _ => {
                            return Err(GraphError::Malformed(format!(
                                "node `{}` reads {v}, which has no value",
                                node.name
                            )));
                        }
                    },
                };
                args.push(t);
            }
            let out = self.exec(n, args, quant)?;
            for (i, &v) in taps.iter().enumerate() {
                if v == node.outputs[0] {
                    tapped[i] = Some(out.clone());
                }
            }
            env[node.outputs[0].0] = Some(out);
            if stop_after == Some(n) {
                break;
            }
        }
        let taps = tapped
            .into_iter()
            .zip(taps)
            .map(|(t, v)| {
                t.ok_or_else(|| GraphError::Malformed(format!("tapped value {v} was not computed")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = if stop_after.is_some_and(|s| s + 1 < graph.nodes.len()) {
            None
        } else {
            Some(
                graph
                    .outputs
                    .iter()
                    .map(|v| {
                        env[v.0].clone().ok_or_else(|| {
                            GraphError::Malformed(format!("output {v} was not computed"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        Ok(Execution { outputs, taps })
    }

    fn exec(
        &self,
        n: usize,
        mut a: Vec<DispatchTensor>,
        quant: &QuantContext,
    ) -> Result<DispatchTensor, GraphError> {
        let graph = self.graph;
        let node = &graph.nodes[n];
        let out = graph.value(node.outputs[0]);
        let out_shape = || Shape::from(graph.shape_at(node.outputs[0], self.batch));
        let kind = kind_of(&a.first().map(|t| t.dtype()));
        let take = |a: &mut Vec<DispatchTensor>| a.remove(0);
        let opt = |a: &mut Vec<DispatchTensor>, present: bool| present.then(|| a.remove(0));
        Ok(match &node.op {
            Op::Linear { bias } => {
                let x = take(&mut a);
                let w = take(&mut a);
                let b = opt(&mut a, *bias);
                Dispatch::linear(x, w, b)
            }
            Op::Conv1d { options, bias } => {
                let (x, w) = (take(&mut a), take(&mut a));
                let b = opt(&mut a, *bias);
                Dispatch::conv1d(x, w, b, options.clone().into())
            }
            Op::Conv2d { options, bias } => {
                let (x, w) = (take(&mut a), take(&mut a));
                let b = opt(&mut a, *bias);
                Dispatch::conv2d(x, w, b, options.clone().into())
            }
            Op::ConvTranspose1d { options, bias } => {
                let (x, w) = (take(&mut a), take(&mut a));
                let b = opt(&mut a, *bias);
                Dispatch::conv_transpose1d(x, w, b, options.clone().into())
            }
            Op::ConvTranspose2d { options, bias } => {
                let (x, w) = (take(&mut a), take(&mut a));
                let b = opt(&mut a, *bias);
                Dispatch::conv_transpose2d(x, w, b, options.clone().into())
            }
            Op::Embedding => {
                let (w, i) = (take(&mut a), take(&mut a));
                Dispatch::embedding(w, i)
            }
            Op::BatchNorm { epsilon } => {
                let x = take(&mut a);
                let (g, b, m, v) = (take(&mut a), take(&mut a), take(&mut a), take(&mut a));
                Dispatch::batch_norm(x, g, b, m, v, *epsilon)
            }
            Op::LayerNorm { epsilon, beta } => {
                let (x, g) = (take(&mut a), take(&mut a));
                let b = opt(&mut a, *beta);
                Dispatch::layer_norm(x, g, b, *epsilon)
            }
            Op::Attention {
                options,
                mask,
                bias,
            } => {
                let (q, k, v) = (take(&mut a), take(&mut a), take(&mut a));
                let m = opt(&mut a, *mask);
                let b = opt(&mut a, *bias);
                Dispatch::attention(q, k, v, m, b, options.clone().into())
            }
            Op::MatMul => {
                let (l, r) = (take(&mut a), take(&mut a));
                match kind {
                    Kind::Int => Dispatch::int_matmul(l, r),
                    _ => Dispatch::float_matmul(l, r),
                }
            }
            Op::Binary(op) => {
                let (l, r) = (take(&mut a), take(&mut a));
                match (kind, op) {
                    (Kind::Int, BinaryOp::Add) => Dispatch::int_add(l, r),
                    (Kind::Int, BinaryOp::Sub) => Dispatch::int_sub(l, r),
                    (Kind::Int, BinaryOp::Mul) => Dispatch::int_mul(l, r),
                    (Kind::Int, BinaryOp::Div) => Dispatch::int_div(l, r),
                    (_, BinaryOp::Add) => Dispatch::float_add(l, r),
                    (_, BinaryOp::Sub) => Dispatch::float_sub(l, r),
                    (_, BinaryOp::Mul) => Dispatch::float_mul(l, r),
                    (_, BinaryOp::Div) => Dispatch::float_div(l, r),
                    (_, BinaryOp::Pow) => Dispatch::float_powf(l, r),
                }
            }
            Op::Scalar(op, s) => {
                let x = take(&mut a);
                let s: Scalar = (*s).into();
                match (kind, op) {
                    (Kind::Int, ScalarOp::Add) => Dispatch::int_add_scalar(x, s),
                    (Kind::Int, ScalarOp::Sub) => Dispatch::int_sub_scalar(x, s),
                    (Kind::Int, ScalarOp::Mul) => Dispatch::int_mul_scalar(x, s),
                    (Kind::Int, ScalarOp::Div) => Dispatch::int_div_scalar(x, s),
                    (Kind::Int, ScalarOp::ClampMin) => Dispatch::int_clamp_min(x, s),
                    (Kind::Int, ScalarOp::ClampMax) => Dispatch::int_clamp_max(x, s),
                    (Kind::Int, ScalarOp::Pow) => return Err(unsupported_kind(node, "int")),
                    (_, ScalarOp::Add) => Dispatch::float_add_scalar(x, s),
                    (_, ScalarOp::Sub) => Dispatch::float_sub_scalar(x, s),
                    (_, ScalarOp::Mul) => Dispatch::float_mul_scalar(x, s),
                    (_, ScalarOp::Div) => Dispatch::float_div_scalar(x, s),
                    (_, ScalarOp::Pow) => Dispatch::float_powf_scalar(x, s),
                    (_, ScalarOp::ClampMin) => Dispatch::float_clamp_min(x, s),
                    (_, ScalarOp::ClampMax) => Dispatch::float_clamp_max(x, s),
                }
            }
            Op::Clamp { min, max } => {
                let x = take(&mut a);
                match kind {
                    Kind::Int => Dispatch::int_clamp(x, (*min).into(), (*max).into()),
                    _ => Dispatch::float_clamp(x, (*min).into(), (*max).into()),
                }
            }
            Op::Unary(op) => {
                let x = take(&mut a);
                match (kind, op) {
                    (Kind::Int, UnaryOp::Neg) => Dispatch::int_neg(x),
                    (Kind::Int, UnaryOp::Abs) => Dispatch::int_abs(x),
                    (Kind::Int, _) => return Err(unsupported_kind(node, "int")),
                    (_, UnaryOp::Relu) => Dispatch::relu(x),
                    (_, UnaryOp::Gelu) => Dispatch::gelu(x),
                    (_, UnaryOp::Sigmoid) => Dispatch::sigmoid(x),
                    (_, UnaryOp::Tanh) => Dispatch::float_tanh(x),
                    (_, UnaryOp::Exp) => Dispatch::float_exp(x),
                    (_, UnaryOp::Log) => Dispatch::float_log(x),
                    (_, UnaryOp::Sqrt) => Dispatch::float_sqrt(x),
                    (_, UnaryOp::Neg) => Dispatch::float_neg(x),
                    (_, UnaryOp::Abs) => Dispatch::float_abs(x),
                    (_, UnaryOp::Erf) => Dispatch::float_erf(x),
                    (_, UnaryOp::Recip) => Dispatch::float_recip(x),
                    (_, UnaryOp::Round) => Dispatch::float_round(x),
                    (_, UnaryOp::Floor) => Dispatch::float_floor(x),
                    (_, UnaryOp::Ceil) => Dispatch::float_ceil(x),
                    (_, UnaryOp::Sin) => Dispatch::float_sin(x),
                    (_, UnaryOp::Cos) => Dispatch::float_cos(x),
                }
            }
            Op::Compare(cmp, value) => {
                let x = take(&mut a);
                let s: Scalar = (*value).into();
                let bd = out.dtype.into();
                match (kind, cmp) {
                    (Kind::Float, CompareOp::Equal) => Dispatch::float_equal_elem(x, s, bd),
                    (Kind::Float, CompareOp::NotEqual) => Dispatch::float_not_equal_elem(x, s, bd),
                    (Kind::Float, CompareOp::Greater) => Dispatch::float_greater_elem(x, s, bd),
                    (Kind::Float, CompareOp::Lower) => Dispatch::float_lower_elem(x, s, bd),
                    (Kind::Int, CompareOp::Equal) => Dispatch::int_equal_elem(x, s, bd),
                    (Kind::Int, CompareOp::NotEqual) => Dispatch::int_not_equal_elem(x, s, bd),
                    (Kind::Int, CompareOp::Greater) => Dispatch::int_greater_elem(x, s, bd),
                    (Kind::Int, CompareOp::Lower) => Dispatch::int_lower_elem(x, s, bd),
                    (Kind::Bool, CompareOp::Equal) => Dispatch::bool_equal_elem(x, s),
                    (Kind::Bool, CompareOp::NotEqual) => Dispatch::bool_not_equal_elem(x, s),
                    (Kind::Bool, _) => return Err(unsupported_kind(node, "bool")),
                }
            }
            Op::Not => Dispatch::bool_not(take(&mut a)),
            Op::Logical { and } => {
                let (l, r) = (take(&mut a), take(&mut a));
                if *and {
                    Dispatch::bool_and(l, r)
                } else {
                    Dispatch::bool_or(l, r)
                }
            }
            Op::LeakyRelu { slope } => Dispatch::leaky_relu(take(&mut a), (*slope).into()),
            Op::HardSigmoid { alpha, beta } => {
                Dispatch::hard_sigmoid(take(&mut a), (*alpha).into(), (*beta).into())
            }
            Op::Softmax { dim } => Dispatch::softmax(take(&mut a), *dim),
            Op::LogSoftmax { dim } => Dispatch::log_softmax(take(&mut a), *dim),
            Op::Reduce { op, dim } => {
                let x = take(&mut a);
                match (kind, op) {
                    (Kind::Int, ReduceOp::Sum) => Dispatch::int_sum_dim(x, *dim),
                    (Kind::Int, ReduceOp::Mean) => Dispatch::int_mean_dim(x, *dim),
                    (Kind::Int, ReduceOp::Max) => Dispatch::int_max_dim(x, *dim),
                    (Kind::Int, ReduceOp::Min) => Dispatch::int_min_dim(x, *dim),
                    (_, ReduceOp::Sum) => Dispatch::float_sum_dim(x, *dim),
                    (_, ReduceOp::Mean) => Dispatch::float_mean_dim(x, *dim),
                    (_, ReduceOp::Max) => Dispatch::float_max_dim(x, *dim),
                    (_, ReduceOp::Min) => Dispatch::float_min_dim(x, *dim),
                }
            }
            Op::Reshape => {
                let x = take(&mut a);
                match kind {
                    Kind::Int => Dispatch::int_reshape(x, out_shape()),
                    Kind::Bool => Dispatch::bool_reshape(x, out_shape()),
                    Kind::Float => Dispatch::float_reshape(x, out_shape()),
                }
            }
            Op::Permute { axes } => {
                let x = take(&mut a);
                match kind {
                    Kind::Int => Dispatch::int_permute(x, axes),
                    Kind::Bool => Dispatch::bool_permute(x, axes),
                    Kind::Float => Dispatch::float_permute(x, axes),
                }
            }
            Op::Expand => {
                let x = take(&mut a);
                match kind {
                    Kind::Int => Dispatch::int_expand(x, out_shape()),
                    Kind::Bool => Dispatch::bool_expand(x, out_shape()),
                    Kind::Float => Dispatch::float_expand(x, out_shape()),
                }
            }
            Op::Slice { ranges } => {
                let x = take(&mut a);
                // Batch axes are sliced whole (checked at capture): take the run's extent.
                let input = graph.value(node.inputs[0]);
                let ranges: Vec<burn::tensor::Slice> = ranges
                    .iter()
                    .enumerate()
                    .map(|(axis, r)| match input.per_batch.get(axis) {
                        Some(&k) if k > 0 => burn::tensor::Slice::new(0, Some((k * self.batch) as isize), 1),
                        _ => *r,
                    })
                    .collect();
                let ranges = &ranges;
                match kind {
                    Kind::Int => Dispatch::int_slice(x, ranges),
                    Kind::Bool => Dispatch::bool_slice(x, ranges),
                    Kind::Float => Dispatch::float_slice(x, ranges),
                }
            }
            Op::Concat { dim } => match kind {
                Kind::Int => Dispatch::int_cat(a, *dim),
                Kind::Bool => Dispatch::bool_cat(a, *dim),
                Kind::Float => Dispatch::float_cat(a, *dim),
            },
            Op::Select { dim } => {
                let (x, i) = (take(&mut a), take(&mut a));
                match kind {
                    Kind::Int => Dispatch::int_select(x, *dim, i),
                    Kind::Bool => Dispatch::bool_select(x, *dim, i),
                    Kind::Float => Dispatch::float_select(x, *dim, i),
                }
            }
            Op::Cast => {
                let x = take(&mut a);
                let to = out.dtype;
                match (kind, kind_of(&Some(to))) {
                    (Kind::Float, Kind::Float) => Dispatch::float_cast(x, to.into()),
                    (Kind::Int, Kind::Float) => Dispatch::int_into_float(x, to.into()),
                    (Kind::Float, Kind::Int) => Dispatch::float_into_int(x, to.into()),
                    (Kind::Int, Kind::Int) => Dispatch::int_cast(x, to.into()),
                    (Kind::Bool, Kind::Float) => Dispatch::bool_into_float(x, to.into()),
                    (Kind::Bool, Kind::Int) => Dispatch::bool_into_int(x, to.into()),
                    _ => return Err(unsupported_kind(node, "bool")),
                }
            }
            Op::MaskFill { value } => {
                let (x, m) = (take(&mut a), take(&mut a));
                match kind {
                    Kind::Int => Dispatch::int_mask_fill(x, m, (*value).into()),
                    Kind::Bool => Dispatch::bool_mask_fill(x, m, (*value).into()),
                    Kind::Float => Dispatch::float_mask_fill(x, m, (*value).into()),
                }
            }
            Op::Full { value } => {
                let dtype = out.dtype;
                let device = self.device.as_dispatch();
                match kind_of(&Some(dtype)) {
                    Kind::Float => Dispatch::float_full(out_shape(), (*value).into(), device, dtype.into()),
                    Kind::Int => Dispatch::int_full(out_shape(), (*value).into(), device, dtype.into()),
                    Kind::Bool => {
                        let v: Scalar = (*value).into();
                        let z = Dispatch::bool_zeros(out_shape(), device, dtype.into());
                        if matches!(v, Scalar::Bool(true)) {
                            Dispatch::bool_not(z)
                        } else {
                            z
                        }
                    }
                }
            }
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
                dilation,
                ceil_mode,
            } => Dispatch::max_pool2d(take(&mut a), *kernel, *stride, *padding, *dilation, *ceil_mode),
            Op::AvgPool2d {
                kernel,
                stride,
                padding,
                count_include_pad,
                ceil_mode,
            } => Dispatch::avg_pool2d(
                take(&mut a),
                *kernel,
                *stride,
                *padding,
                *count_include_pad,
                *ceil_mode,
            ),
            Op::AdaptiveAvgPool2d { output } => Dispatch::adaptive_avg_pool2d(take(&mut a), *output),
            Op::Resize2d { mode } => {
                use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
                let (m, align_corners) = match mode {
                    ResizeMode::Nearest => (InterpolateMode::Nearest, false),
                    ResizeMode::Bilinear { align_corners } => (InterpolateMode::Bilinear, *align_corners),
                };
                let mut options = InterpolateOptions::new(m);
                options.align_corners = align_corners;
                let s = out_shape();
                Dispatch::interpolate(take(&mut a), [s[2], s[3]], options)
            }
            Op::Quant(q) => quant.run(n, q, take(&mut a))?,
        })
    }
}

/// Tensor kinds the interpreter distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Bool,
}

fn kind_of(dtype: &Option<burn::tensor::DType>) -> Kind {
    match dtype {
        Some(d) if d.is_bool() => Kind::Bool,
        Some(d) if d.is_int() || d.is_uint() => Kind::Int,
        _ => Kind::Float,
    }
}

fn unsupported_kind(node: &crate::ir::Node, kind: &str) -> GraphError {
    GraphError::UnsupportedOp {
        op: format!("{} on {kind} tensors", node.op.kind()),
        at: format!("node `{}`", node.name),
    }
}

/// The device of a run's inputs (the default device for a graph without inputs).
pub fn device_of(inputs: &[DispatchTensor]) -> Device {
    inputs
        .first()
        .map(|t| Device::from(t.device()))
        .unwrap_or_default()
}

/// Uploads recorded data (any rank, float, int or bool) to `device` as a dispatch tensor.
pub fn upload(data: &TensorData, device: &Device) -> DispatchTensor {
    let d = device.as_dispatch();
    let dtype = data.dtype();
    if dtype.is_bool() {
        Dispatch::bool_from_data(data.clone(), d)
    } else if dtype.is_int() || dtype.is_uint() {
        Dispatch::int_from_data(data.clone(), d)
    } else {
        Dispatch::float_from_data(data.clone(), d)
    }
}

/// A float dispatch tensor's values on the host, row-major.
pub fn to_host(t: DispatchTensor) -> Result<Vec<f32>, GraphError> {
    let n = t.shape().num_elements();
    let flat = Dispatch::float_reshape(t, Shape::new([n]));
    Tensor::<1>::from_dispatch(flat)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| GraphError::Malformed(format!("cannot read a tensor: {e:?}")))
}
