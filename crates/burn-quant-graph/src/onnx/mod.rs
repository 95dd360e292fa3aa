//! Lowering of any graph to ONNX: float ops, and quantizers as QDQ (or QONNX).
//!
//! Every node of the IR becomes the ONNX op that computes it at the graph's static shapes:
//!
//! | IR | ONNX |
//! |---|---|
//! | `Linear` | `MatMul` with the weight `[d_in, d_out]` (Burn's layout, no transpose), `Add` of the bias |
//! | `Conv1d`, `Conv2d`, `ConvTranspose1d/2d` | `Conv` / `ConvTranspose` with explicit pads, strides, dilations, groups, output padding |
//! | `BatchNorm` (not folded), `LayerNorm` | `BatchNormalization`, `LayerNormalization` (opset 17) |
//! | `Embedding`, `Select` | `Gather` |
//! | `MatMul`, `Add`/`Sub`/`Mul`/`Div`/`Pow` | the same |
//! | scalar ops, `Clamp` | `Add`/`Sub`/`Mul`/`Div`/`Pow`/`Max`/`Min`/`Clip` with rank-0 initializers |
//! | `Relu`, `Sigmoid`, `Tanh`, `Exp`, `Log`, `Sqrt`, `Neg`, `Abs`, `Erf`, `Recip`, `Round`, `Floor`, `Ceil`, `Sin`, `Cos`, `LeakyRelu`, `HardSigmoid` | the same |
//! | `Gelu` (erf form) | `x · ½ · (1 + Erf(x / √2))` |
//! | `Softmax`, `LogSoftmax` | the same, one axis (opset 13) |
//! | `Reduce` | `ReduceSum`/`ReduceMean`/`ReduceMax`/`ReduceMin`, `keepdims = 1` |
//! | `Reshape`, `Expand` | the same, target shape as an int64 initializer |
//! | `Permute`, `Slice`, `Concat`, `Cast` | `Transpose`, `Slice` (positive steps), `Concat`, `Cast` |
//! | `MaskFill`, `Full` | `Where`, a scalar `Expand`ed |
//! | `MaxPool2d`, `AvgPool2d` | `MaxPool`, `AveragePool` |
//! | `AdaptiveAvgPool2d` | `GlobalAveragePool`, `AveragePool`, or Burn's windows as `Slice` + `ReduceMean` + `Concat` |
//!
//! A [`Op::Quant`](crate::Op::Quant) node is lowered by the export style
//! ([`burn_quant_export::onnx::Qdq`] by default) exactly as the sequential layer builder
//! does: on a weight, the quantizer's [`QuantTensor`](burn_quant_core::QuantTensor) of the
//! live weight (or the one Stage 2 decided, [`OnnxExport::with_stage2`]) is stored as integer
//! (int8, int4 blocked at opset 21, …) or float8 codes with their exact scales and
//! zero-points, feeding a `DequantizeLinear`; on an activation, the calibrated (or learned, or
//! constant) scale becomes a `QuantizeLinear → DequantizeLinear` pair. Shared join quantizers
//! give each join input a pair with the same scale. A dynamic activation scale, a rounding
//! QuantizeLinear does not have, or a format ONNX cannot hold is an error naming the node.
//!
//! The model's opset is the lowest that holds every node (13 at least; 17 with
//! `LayerNormalization`; what the quantized types need: 19 for float8, 21 for int4 and blocked
//! scales), its IR version the one that goes with it. Shapes are the captured ones (a graph is
//! a trace), except that a batch-symbolic graph ([`crate::capture_batched`],
//! [`import::OnnxModel::import_batched`]) writes its batch axes as a symbolic `batch`
//! (`batch*k` for an axis of k × batch rows): Reshape targets infer that axis, Expand keeps
//! it, Resize takes scales; a constant fill or a second batch axis in one reshape is an error.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::{Device, Distribution, Tensor};
//! use burn_quant_core::QuantSpec;
//! use burn_quant_graph::{GraphRecipe, capture, quantize_graph};
//!
//! let device = Device::flex();
//! let fc = LinearConfig::new(16, 4).init(&device);
//! let x = Tensor::<2>::random([8, 16], Distribution::Normal(0.0, 1.0), &device);
//! let graph = capture(&fc, x.clone(), |m: &Linear, x| m.forward(x)).unwrap();
//! let recipe = GraphRecipe::weights_and_inputs(
//!     QuantSpec::int8_weight_per_output_channel(),
//!     QuantSpec::int8_act_per_tensor(),
//! );
//! let qg = quantize_graph(&graph, &recipe, &device)
//!     .unwrap()
//!     .calibrate(&fc, [x])
//!     .unwrap();
//! let model = qg.to_onnx(&fc).unwrap();
//! let ops: Vec<&str> = model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
//! // The weight's int8 codes dequantized, the input quantized and dequantized, the layer.
//! assert_eq!(ops, ["DequantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMul", "Add"]);
//! assert_eq!(model.default_opset(), Some(13));
//! ```

pub mod import;
mod lower;
mod tensors;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn_quant_export::onnx::proto::{ModelProto, ValueInfoProto};
use burn_quant_export::onnx::{OnnxError, Qdq, Qonnx, QuantStyle, save_onnx};
use burn_quant_nn::AnyQuantTensor;

use crate::GraphError;
use crate::ir::{Graph, ValueId};
use crate::quantize::{GraphQuantizers, QuantizedGraph};
use crate::stage2::Stage2Result;
use lower::{BASE_OPSET, Lowering};
use tensors::HostParams;

/// What to export and how: a graph, its quantizers, the live parameter values, names of the
/// graph's inputs and outputs. [`OnnxExport::qdq`] (or [`OnnxExport::qonnx`]) lowers it.
///
/// Parameters are read from the models given to [`OnnxExport::bind`] (matched by `ParamId`,
/// so a model trained or Stage-2-updated after capture exports its current weights), else
/// from the data the graph recorded at capture.
pub struct OnnxExport<'e> {
    graph: &'e Graph,
    quantizers: Option<&'e GraphQuantizers>,
    live: HostParams,
    stage2: HashMap<&'e str, &'e AnyQuantTensor>,
    input_names: Vec<String>,
    output_names: Vec<String>,
    min_opset: i64,
    graph_name: Option<String>,
}

impl std::fmt::Debug for OnnxExport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxExport")
            .field("nodes", &self.graph.nodes.len())
            .field("quantized", &self.quantizers.is_some())
            .field("bound_params", &self.live.by_id.len())
            .field("stage2_weights", &self.stage2.len())
            .field("input_names", &self.input_names)
            .field("output_names", &self.output_names)
            .field("min_opset", &self.min_opset)
            .finish()
    }
}

/// An exported model and where each IR value went.
#[derive(Clone, Debug)]
pub struct ExportedGraph {
    /// The ONNX model.
    pub model: ModelProto,
    /// For every IR value ([`Graph::values`] index), the name of the ONNX value holding it
    /// (`None` for values no node reads, e.g. weights stored only as codes). A quantizer
    /// node's output is the name of its `DequantizeLinear`.
    pub value_names: Vec<Option<String>>,
}

impl ExportedGraph {
    /// The ONNX name of IR value `v`, if it has one.
    pub fn name_of(&self, v: ValueId) -> Option<&str> {
        self.value_names.get(v.0).and_then(|n| n.as_deref())
    }

    /// Writes the model to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), GraphError> {
        save_onnx(path, &self.model).map_err(|source| GraphError::Onnx {
            node: "<file>".into(),
            source,
        })
    }
}

impl<'e> OnnxExport<'e> {
    /// Export of a float graph (a graph with quantizer nodes needs [`OnnxExport::quantized`]).
    pub fn new(graph: &'e Graph) -> Self {
        Self {
            graph,
            quantizers: None,
            live: HostParams::default(),
            stage2: HashMap::new(),
            input_names: Vec::new(),
            output_names: Vec::new(),
            min_opset: BASE_OPSET,
            graph_name: None,
        }
    }

    /// Export of a quantized graph with its quantizers and the parameters its passes created
    /// (folded BatchNorm), bound already.
    pub fn quantized(qg: &'e QuantizedGraph) -> Self {
        let mut ex = Self::new(&qg.graph);
        ex.quantizers = Some(&qg.quantizers);
        ex.live.add(&qg.owned);
        ex
    }

    /// Reads parameters from `model` (its current values, matched by `ParamId`).
    pub fn bind<M: Module>(mut self, model: &M) -> Self {
        self.live.add(model);
        self
    }

    /// Stores the weights Stage 2 quantized as the codes it decided (`result.weights`, by
    /// parameter path), also after [`Stage2Result::apply`] switched their quantizers off.
    pub fn with_stage2(mut self, result: &'e Stage2Result) -> Self {
        for w in &result.weights {
            self.stage2.insert(w.path.as_str(), &w.tensor);
        }
        self
    }

    /// Names of the graph inputs, in order (default `input` for one, `input{i}` for several).
    pub fn input_names(mut self, names: &[&str]) -> Self {
        self.input_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Names of the graph outputs, in order (default `output` for one, `output{i}` for
    /// several).
    pub fn output_names(mut self, names: &[&str]) -> Self {
        self.output_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The lowest default-domain opset to write (default 13; raised to what the nodes need).
    pub fn min_opset(mut self, opset: i64) -> Self {
        self.min_opset = opset.max(BASE_OPSET);
        self
    }

    /// Name of the ONNX graph (default: the style's, `burn_quant_qdq`).
    pub fn graph_name(mut self, name: &str) -> Self {
        self.graph_name = Some(name.into());
        self
    }

    /// The model with quantizers as QuantizeLinear/DequantizeLinear.
    pub fn qdq(&self) -> Result<ExportedGraph, GraphError> {
        self.build::<Qdq>()
    }

    /// The model with quantizers as QONNX `Quant`/`FloatQuant`/`BipolarQuant` nodes.
    pub fn qonnx(&self) -> Result<ExportedGraph, GraphError> {
        self.build::<Qonnx>()
    }

    /// The model in export style `S`.
    pub fn build<S: QuantStyle>(&self) -> Result<ExportedGraph, GraphError> {
        let inputs = names_for(&self.input_names, self.graph.inputs.len(), "input")?;
        let outputs = names_for(&self.output_names, self.graph.outputs.len(), "output")?;
        // Op forms depend on the opset (axes as attributes or inputs), and quantized types
        // may need a higher one than the ops: lower again at the opset the last pass needed.
        let mut opset = self.min_opset;
        let mut pass = loop {
            let mut pass = Lowering::<S>::new(self, opset, &inputs);
            for n in 0..self.graph.nodes.len() {
                pass.node(n)?;
            }
            if pass.g.opset() <= opset {
                break pass;
            }
            opset = pass.g.opset();
        };
        let mut input_infos = Vec::with_capacity(inputs.len());
        for (&v, name) in self.graph.inputs.iter().zip(&inputs) {
            let val = pass.val(v)?;
            input_infos.push(ValueInfoProto::tensor(name, val.dtype, &val.dims));
        }
        let mut output_infos = Vec::with_capacity(outputs.len());
        for (&v, out) in self.graph.outputs.iter().zip(&outputs) {
            let val = pass.val(v)?;
            let current = pass.names[v.0].clone().ok_or_else(|| {
                GraphError::Malformed(format!("graph output {v} was never computed"))
            })?;
            let is_output = output_infos
                .iter()
                .any(|o: &ValueInfoProto| o.name == current);
            let is_input = inputs.contains(&current);
            if current != *out && pass.g.has(out) {
                return Err(bad_name("output_names", out, "already names another value"));
            }
            if is_output || is_input || current == *out || !pass.g.rename_output(&current, out) {
                if current != *out {
                    pass.g
                        .node("Identity", "", &[&current], out, vec![], val.clone());
                }
            } else {
                for n in pass.names.iter_mut().flatten() {
                    if *n == current {
                        *n = out.clone();
                    }
                }
            }
            output_infos.push(ValueInfoProto::tensor(out, val.dtype, &val.dims));
        }
        let name = self.graph_name.as_deref().unwrap_or(S::graph_name());
        Ok(ExportedGraph {
            model: pass.g.finish(name, input_infos, output_infos),
            value_names: pass.names,
        })
    }
}

/// `given` checked (non-empty, unique, one per tensor), or the defaults `base` / `base{i}`.
fn names_for(
    given: &[String],
    count: usize,
    base: &'static str,
) -> Result<Vec<String>, GraphError> {
    let field = if base == "input" {
        "input_names"
    } else {
        "output_names"
    };
    if given.is_empty() {
        return Ok(if count == 1 {
            vec![base.to_string()]
        } else {
            (0..count).map(|i| format!("{base}{i}")).collect()
        });
    }
    if given.len() != count {
        return Err(bad_name(
            field,
            &format!("{given:?}"),
            &format!("the graph has {count}"),
        ));
    }
    for (i, n) in given.iter().enumerate() {
        if n.is_empty() || given[..i].contains(n) {
            return Err(bad_name(field, n, "names must be non-empty and distinct"));
        }
    }
    Ok(given.to_vec())
}

fn bad_name(field: &'static str, value: &str, reason: &str) -> GraphError {
    GraphError::Onnx {
        node: "<graph>".into(),
        source: OnnxError::InvalidArgument {
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        },
    }
}

impl QuantizedGraph {
    /// The ONNX QDQ model of this quantized graph, reading the weights of `model` (its current
    /// values) and the calibrated scales of the quantizers; see [`OnnxExport`] for names,
    /// opset and Stage 2 codes.
    pub fn to_onnx<M: Module>(&self, model: &M) -> Result<ModelProto, GraphError> {
        Ok(OnnxExport::quantized(self).bind(model).qdq()?.model)
    }

    /// Writes [`QuantizedGraph::to_onnx`] to `path` atomically (temporary file, then rename).
    pub fn save_onnx<M: Module>(
        &self,
        path: impl AsRef<Path>,
        model: &M,
    ) -> Result<(), GraphError> {
        OnnxExport::quantized(self).bind(model).qdq()?.save(path)
    }
}

impl Graph {
    /// The float ONNX model of this graph, reading the weights of `model` (its current
    /// values; use [`OnnxExport`] for names, opset and quantized graphs).
    pub fn to_onnx<M: Module>(&self, model: &M) -> Result<ModelProto, GraphError> {
        Ok(OnnxExport::new(self).bind(model).qdq()?.model)
    }
}
