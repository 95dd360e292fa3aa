//! The graph IR: a small typed op set over values with static shapes.
//!
//! A [`Graph`] is a list of [`Node`]s in topological order. Every node reads and writes
//! [`ValueId`]s; a value is a graph input, a parameter (bound to a model parameter by path and
//! Burn `ParamId`), a constant (data recorded in the graph) or the output of one node. Layers
//! are single nodes bound to their parameters (`Linear` reads `[x, weight, bias]`), not the
//! reshape/matmul/add Burn records for them, so passes see "a Linear with weight
//! `encoder.0.fc.weight`" and the back-ends (interpreter, ONNX) emit the layer.
//!
//! Shapes are concrete: a graph is a trace of one forward at one input shape (see
//! `capture`). Options of layers reuse Burn's IR option types (`Conv2dOptionsIr`, …), so the
//! interpreter calls the very backend op eager execution calls.

use std::collections::HashMap;
use std::fmt;

use burn::backend::ir::{
    AttentionOptionsIr, Conv1dOptionsIr, Conv2dOptionsIr, ConvTranspose1dOptionsIr,
    ConvTranspose2dOptionsIr, ScalarIr,
};
use burn::module::ParamId;
use burn::tensor::{DType, Slice, TensorData};

use crate::quantize::QuantNode;

/// Index of a value in [`Graph::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// What a value is, besides an intermediate result.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueOrigin {
    /// The `n`th graph input.
    Input(usize),
    /// A model parameter: index into [`Graph::params`].
    Param(usize),
    /// A constant recorded in the graph: index into [`Graph::constants`].
    Constant(usize),
    /// Output of the node with this index.
    Node(usize),
}

/// A value: shape and element type, where it comes from, and a readable name.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Static shape.
    pub shape: Vec<usize>,
    /// Element type (`F32`, `I64`, `Bool`, …).
    pub dtype: DType,
    /// Where the value comes from.
    pub origin: ValueOrigin,
    /// Name: the parameter path for parameters, `input{n}`, `const{n}` or `t{id}` otherwise.
    pub name: String,
    /// Per axis, `k` when the axis is `k × batch` in a batch-symbolic graph
    /// ([`crate::capture_batched`]), 0 for a fixed axis. Empty in a fixed-shape graph.
    pub per_batch: Vec<usize>,
}

impl Value {
    /// Whether the value is a float tensor.
    pub fn is_float(&self) -> bool {
        self.dtype.is_float()
    }
}

/// A model parameter the graph reads.
#[derive(Clone, Debug)]
pub struct GraphParam {
    /// Burn's dotted parameter path (`encoder.layers.0.fc.weight`), or the ONNX initializer name.
    pub path: String,
    /// Burn's parameter id, which binds the graph to the live parameter of the model
    /// (`None` for parameters that come from a file, e.g. ONNX initializers).
    pub id: Option<ParamId>,
    /// The value the graph reads it as.
    pub value: ValueId,
    /// The parameter's data when the graph was built (used when no live model is bound).
    pub data: TensorData,
}

/// A constant created inside the forward (e.g. `Tensor::from_floats`), with its data.
#[derive(Clone, Debug)]
pub struct GraphConstant {
    /// The value it defines.
    pub value: ValueId,
    /// Its data.
    pub data: TensorData,
}

/// Element-wise binary ops (operands of equal rank, broadcasting size-1 dimensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a ^ b`
    Pow,
}

/// Element-wise ops with a scalar right-hand side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarOp {
    /// `x + s`
    Add,
    /// `x - s`
    Sub,
    /// `x * s`
    Mul,
    /// `x / s`
    Div,
    /// `x ^ s`
    Pow,
    /// `max(x, s)`
    ClampMin,
    /// `min(x, s)`
    ClampMax,
}

/// Comparisons with a scalar, giving a boolean tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `x == s`
    Equal,
    /// `x != s`
    NotEqual,
    /// `x > s`
    Greater,
    /// `x < s`
    Lower,
}

/// Element-wise unary ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// `max(x, 0)`
    Relu,
    /// Gaussian error linear unit (erf form, as Burn computes it).
    Gelu,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// `tanh(x)`
    Tanh,
    /// `e^x`
    Exp,
    /// `ln x`
    Log,
    /// `√x`
    Sqrt,
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// Error function.
    Erf,
    /// `1 / x`
    Recip,
    /// Round half to even.
    Round,
    /// Floor.
    Floor,
    /// Ceil.
    Ceil,
    /// `sin x`
    Sin,
    /// `cos x`
    Cos,
}

/// Reductions along one axis; the axis is kept with length 1 (Burn's convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Mean.
    Mean,
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

/// How [`Op::Resize2d`] samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Output pixel `o` reads input `⌊o · in / out⌋` (ONNX `nearest` with `asymmetric`
    /// coordinates and `floor` rounding; PyTorch's `nearest`).
    Nearest,
    /// Bilinear; `align_corners` maps the corner pixels onto each other, otherwise the
    /// half-pixel mapping is used.
    Bilinear {
        /// Corner alignment.
        align_corners: bool,
    },
}

/// The op set. Layer ops read their parameters as inputs (in the order given); every other op
/// reads activations (or constants) as inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `y = x · W (+ b)`; inputs `[x [.., d_in], weight [d_in, d_out], bias [d_out]?]`.
    Linear {
        /// Whether a bias input is present.
        bias: bool,
    },
    /// 1-D convolution; inputs `[x [N, C, L], weight [out, in/groups, k], bias?]`.
    Conv1d {
        /// Stride, padding, dilation, groups.
        options: Conv1dOptionsIr,
        /// Whether a bias input is present.
        bias: bool,
    },
    /// 2-D convolution; inputs `[x [N, C, H, W], weight [out, in/groups, kh, kw], bias?]`.
    Conv2d {
        /// Stride, padding, dilation, groups.
        options: Conv2dOptionsIr,
        /// Whether a bias input is present.
        bias: bool,
    },
    /// 1-D transposed convolution; inputs `[x, weight [in, out/groups, k], bias?]`.
    ConvTranspose1d {
        /// Stride, padding, output padding, dilation, groups.
        options: ConvTranspose1dOptionsIr,
        /// Whether a bias input is present.
        bias: bool,
    },
    /// 2-D transposed convolution; inputs `[x, weight [in, out/groups, kh, kw], bias?]`.
    ConvTranspose2d {
        /// Stride, padding, output padding, dilation, groups.
        options: ConvTranspose2dOptionsIr,
        /// Whether a bias input is present.
        bias: bool,
    },
    /// Table lookup; inputs `[weight [vocab, d], indices (int) [..]]`, output `[.., d]`.
    Embedding,
    /// Inference batch normalization over axis 1; inputs `[x, gamma, beta, mean, variance]`.
    BatchNorm {
        /// Added to the variance.
        epsilon: f64,
    },
    /// Layer normalization over the last axis; inputs `[x, gamma, beta?]`.
    LayerNorm {
        /// Added to the variance.
        epsilon: f64,
        /// Whether a beta input is present.
        beta: bool,
    },
    /// Fused scaled dot-product attention `softmax(q·kᵀ·scale [+ bias], masked) · v` over
    /// `[batch, heads, seq, head_dim]`; inputs `[q, k, v, mask (bool)?, bias?]`.
    Attention {
        /// Scale, softcap, causal masking.
        options: AttentionOptionsIr,
        /// Whether a boolean mask input is present.
        mask: bool,
        /// Whether an additive bias input is present.
        bias: bool,
    },
    /// Batched matrix product of two activations (or an activation and a weight that is not a
    /// `Linear`); inputs `[a, b]`.
    MatMul,
    /// Element-wise binary op; inputs `[a, b]`.
    Binary(BinaryOp),
    /// Element-wise op with a scalar; input `[x]`.
    Scalar(ScalarOp, ScalarIr),
    /// `clamp(x, min, max)`; input `[x]`.
    Clamp {
        /// Lower bound.
        min: ScalarIr,
        /// Upper bound.
        max: ScalarIr,
    },
    /// Element-wise unary op; input `[x]`.
    Unary(UnaryOp),
    /// Comparison with a scalar (any tensor kind), boolean output; input `[x]`.
    Compare(CompareOp, ScalarIr),
    /// Logical not of a boolean tensor; input `[x]`.
    Not,
    /// Logical and (`true`) or or (`false`) of two boolean tensors; inputs `[a, b]`.
    Logical {
        /// `true` for and, `false` for or.
        and: bool,
    },
    /// `x ≥ 0 ? x : slope·x`; input `[x]`.
    LeakyRelu {
        /// Negative slope.
        slope: ScalarIr,
    },
    /// `clamp(alpha·x + beta, 0, 1)`; input `[x]`.
    HardSigmoid {
        /// Slope.
        alpha: ScalarIr,
        /// Offset.
        beta: ScalarIr,
    },
    /// Softmax along `dim`; input `[x]`.
    Softmax {
        /// The axis.
        dim: usize,
    },
    /// Log-softmax along `dim`; input `[x]`.
    LogSoftmax {
        /// The axis.
        dim: usize,
    },
    /// Reduction along `dim` (kept with length 1); input `[x]`.
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// The axis.
        dim: usize,
    },
    /// Reshape to the output value's shape; input `[x]`.
    Reshape,
    /// Permute axes; input `[x]`.
    Permute {
        /// `out[i] = in[axes[i]]`.
        axes: Vec<usize>,
    },
    /// Broadcast to the output value's shape; input `[x]`.
    Expand,
    /// Slice; input `[x]`.
    Slice {
        /// One range per axis.
        ranges: Vec<Slice>,
    },
    /// Concatenate along `dim`; inputs `[x0, x1, …]`.
    Concat {
        /// The axis.
        dim: usize,
    },
    /// Select indices along `dim`; inputs `[x, indices (int, 1-D)]`.
    Select {
        /// The axis.
        dim: usize,
    },
    /// Element type conversion to the output value's dtype; input `[x]`.
    Cast,
    /// Fill where the mask is true; inputs `[x, mask (bool)]`.
    MaskFill {
        /// The fill value.
        value: ScalarIr,
    },
    /// A tensor of the output value's shape filled with `value` (no input).
    Full {
        /// The fill value.
        value: ScalarIr,
    },
    /// 2-D max pooling; input `[x [N, C, H, W]]`.
    MaxPool2d {
        /// Kernel size.
        kernel: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Padding.
        padding: [usize; 2],
        /// Dilation.
        dilation: [usize; 2],
        /// Ceil mode.
        ceil_mode: bool,
    },
    /// 2-D average pooling; input `[x [N, C, H, W]]`.
    AvgPool2d {
        /// Kernel size.
        kernel: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Padding.
        padding: [usize; 2],
        /// Whether padding counts in the average.
        count_include_pad: bool,
        /// Ceil mode.
        ceil_mode: bool,
    },
    /// 2-D adaptive average pooling; input `[x [N, C, H, W]]`.
    AdaptiveAvgPool2d {
        /// Output size.
        output: [usize; 2],
    },
    /// Resize of the two spatial axes of `[N, C, H, W]` to the output value's size; input `[x]`.
    Resize2d {
        /// Sampling.
        mode: ResizeMode,
    },
    /// A quantizer inserted by `quantize_graph`: fake-quantizes its input `[x]` (see
    /// [`QuantNode`]).
    Quant(Box<QuantNode>),
}

impl Op {
    /// A short name of the op kind (`Linear`, `Conv2d`, `Add`, …), as used by include/exclude
    /// filters and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "Linear",
            Op::Conv1d { .. } => "Conv1d",
            Op::Conv2d { .. } => "Conv2d",
            Op::ConvTranspose1d { .. } => "ConvTranspose1d",
            Op::ConvTranspose2d { .. } => "ConvTranspose2d",
            Op::Embedding => "Embedding",
            Op::BatchNorm { .. } => "BatchNorm",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::Attention { .. } => "Attention",
            Op::MatMul => "MatMul",
            Op::Binary(BinaryOp::Add) => "Add",
            Op::Binary(BinaryOp::Sub) => "Sub",
            Op::Binary(BinaryOp::Mul) => "Mul",
            Op::Binary(BinaryOp::Div) => "Div",
            Op::Binary(BinaryOp::Pow) => "Pow",
            Op::Scalar(..) => "Scalar",
            Op::Clamp { .. } => "Clamp",
            Op::Unary(UnaryOp::Relu) => "Relu",
            Op::Unary(UnaryOp::Gelu) => "Gelu",
            Op::Unary(UnaryOp::Sigmoid) => "Sigmoid",
            Op::Unary(UnaryOp::Tanh) => "Tanh",
            Op::Unary(_) => "Unary",
            Op::Compare(..) => "Compare",
            Op::Not => "Not",
            Op::Logical { .. } => "Logical",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::HardSigmoid { .. } => "HardSigmoid",
            Op::Softmax { .. } => "Softmax",
            Op::LogSoftmax { .. } => "LogSoftmax",
            Op::Reduce { .. } => "Reduce",
            Op::Reshape => "Reshape",
            Op::Permute { .. } => "Permute",
            Op::Expand => "Expand",
            Op::Slice { .. } => "Slice",
            Op::Concat { .. } => "Concat",
            Op::Select { .. } => "Select",
            Op::Cast => "Cast",
            Op::MaskFill { .. } => "MaskFill",
            Op::Full { .. } => "Full",
            Op::MaxPool2d { .. } => "MaxPool2d",
            Op::AvgPool2d { .. } => "AvgPool2d",
            Op::AdaptiveAvgPool2d { .. } => "AdaptiveAvgPool2d",
            Op::Resize2d { .. } => "Resize2d",
            Op::Quant(_) => "Quant",
        }
    }

    /// Whether the op is a weight layer (its input 1 is a weight parameter).
    pub fn is_weight_layer(&self) -> bool {
        matches!(
            self,
            Op::Linear { .. }
                | Op::Conv1d { .. }
                | Op::Conv2d { .. }
                | Op::ConvTranspose1d { .. }
                | Op::ConvTranspose2d { .. }
        )
    }

    /// Whether the op only moves or views data (no arithmetic): quantization commutes with it.
    pub fn is_shape_only(&self) -> bool {
        matches!(
            self,
            Op::Reshape | Op::Permute { .. } | Op::Expand | Op::Slice { .. }
        )
    }
}

/// One op applied to values.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// A name unique in the graph: the layer's module path for layers (`encoder.fc`), else
    /// `{kind}_{index}`.
    pub name: String,
    /// The op.
    pub op: Op,
    /// Values read, in the op's order.
    pub inputs: Vec<ValueId>,
    /// Values written.
    pub outputs: Vec<ValueId>,
}

/// A traced forward as a typed graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Every value.
    pub values: Vec<Value>,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Runtime inputs, in the order the forward takes them.
    pub inputs: Vec<ValueId>,
    /// Outputs, in the order the forward returns them.
    pub outputs: Vec<ValueId>,
    /// Parameters read by the graph.
    pub params: Vec<GraphParam>,
    /// Constants created inside the forward.
    pub constants: Vec<GraphConstant>,
    /// The batch size of the capture, for a batch-symbolic graph (which then runs at any
    /// batch size); `None` for a fixed-shape graph.
    pub capture_batch: Option<usize>,
}

impl Graph {
    /// The shape of value `id` at batch size `batch` (its captured shape in a fixed-shape
    /// graph).
    pub fn shape_at(&self, id: ValueId, batch: usize) -> Vec<usize> {
        let v = &self.values[id.0];
        if v.per_batch.is_empty() {
            return v.shape.clone();
        }
        v.shape
            .iter()
            .zip(&v.per_batch)
            .map(|(&d, &k)| if k == 0 { d } else { k * batch })
            .collect()
    }

    /// The value with this id.
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0]
    }

    /// The parameter read as value `id`, if it is one.
    pub fn param_of(&self, id: ValueId) -> Option<&GraphParam> {
        match self.values[id.0].origin {
            ValueOrigin::Param(i) => Some(&self.params[i]),
            _ => None,
        }
    }

    /// The parameter with this path.
    pub fn param(&self, path: &str) -> Option<&GraphParam> {
        self.params.iter().find(|p| p.path == path)
    }

    /// The node producing `id`, if a node does.
    pub fn producer(&self, id: ValueId) -> Option<usize> {
        match self.values[id.0].origin {
            ValueOrigin::Node(n) => Some(n),
            _ => None,
        }
    }

    /// For every value, the indices of the nodes reading it (in order; a node reading a value
    /// twice appears twice).
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.values.len()];
        for (n, node) in self.nodes.iter().enumerate() {
            for &v in &node.inputs {
                out[v.0].push(n);
            }
        }
        out
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<(usize, &Node)> {
        self.nodes.iter().enumerate().find(|(_, n)| n.name == name)
    }

    /// The weight parameter of layer node `n` (input 1), if it is a weight layer reading a
    /// parameter there.
    pub fn weight_of(&self, n: usize) -> Option<&GraphParam> {
        let node = &self.nodes[n];
        if !node.op.is_weight_layer() {
            return None;
        }
        node.inputs.get(1).and_then(|&w| self.param_of(w))
    }

    /// Adds a value and returns its id.
    pub fn add_value(&mut self, shape: Vec<usize>, dtype: DType, origin: ValueOrigin) -> ValueId {
        let id = ValueId(self.values.len());
        let name = match &origin {
            ValueOrigin::Input(i) => format!("input{i}"),
            ValueOrigin::Param(i) => self.params.get(*i).map(|p| p.path.clone()).unwrap_or_default(),
            ValueOrigin::Constant(i) => format!("const{i}"),
            ValueOrigin::Node(_) => format!("t{}", id.0),
        };
        self.values.push(Value {
            shape,
            dtype,
            origin,
            name,
            per_batch: Vec::new(),
        });
        id
    }

    /// Re-derives every value's origin from the node list (after nodes were inserted or
    /// removed) and checks that every node reads only values defined before it.
    pub fn reindex(&mut self) -> Result<(), crate::GraphError> {
        let mut defined = vec![false; self.values.len()];
        for (i, v) in self.values.iter().enumerate() {
            if !matches!(v.origin, ValueOrigin::Node(_)) {
                defined[i] = true;
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            for &v in &node.inputs {
                if !defined[v.0] {
                    return Err(crate::GraphError::Malformed(format!(
                        "node `{}` reads {v} before it is defined",
                        node.name
                    )));
                }
            }
            for &v in &node.outputs {
                self.values[v.0].origin = ValueOrigin::Node(n);
                defined[v.0] = true;
            }
        }
        for &v in &self.outputs {
            if !defined[v.0] {
                return Err(crate::GraphError::Malformed(format!(
                    "graph output {v} is never defined"
                )));
            }
        }
        Ok(())
    }

    /// Removes nodes whose outputs nothing reads (and which are not graph outputs).
    pub fn prune(&mut self) -> Result<(), crate::GraphError> {
        let mut live = vec![false; self.values.len()];
        for &o in &self.outputs {
            live[o.0] = true;
        }
        let mut keep = vec![false; self.nodes.len()];
        for (n, node) in self.nodes.iter().enumerate().rev() {
            if node.outputs.iter().any(|o| live[o.0]) {
                keep[n] = true;
                for &i in &node.inputs {
                    live[i.0] = true;
                }
            }
        }
        let mut n = 0;
        self.nodes.retain(|_| {
            n += 1;
            keep[n - 1]
        });
        self.reindex()
    }

    /// Counts of nodes by op kind, for reports.
    pub fn op_histogram(&self) -> Vec<(&'static str, usize)> {
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for n in &self.nodes {
            *counts.entry(n.op.kind()).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort();
        v
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &ValueId| {
            let val = &self.values[v.0];
            format!("{}{:?}", val.name, val.shape)
        };
        let list = |vs: &[ValueId]| vs.iter().map(show).collect::<Vec<_>>().join(", ");
        writeln!(f, "graph({}) -> ({})", list(&self.inputs), list(&self.outputs))?;
        for node in &self.nodes {
            writeln!(
                f,
                "  {} = {}[{}]({})",
                list(&node.outputs),
                node.op.kind(),
                node.name,
                list(&node.inputs)
            )?;
        }
        Ok(())
    }
}
