//! ONNX import: any `.onnx` file, parsed at run time into the graph IR.
//!
//! [`OnnxModel::load`] decodes the protobuf (our own `prost` messages of `onnx.proto`, the
//! ones the exporters write), checks it (opset, topological order, every value defined once,
//! every read value defined) and keeps it whole: names, opset, initializers and every element
//! type survive for export. [`OnnxModel::import`] then specialises the model to concrete
//! input shapes: shape arithmetic (`Shape → Gather → Concat → Reshape`, constant chains, …)
//! is folded on the host, and what runs per input becomes [`Graph`] nodes — `Conv`/`Gemm`/
//! `MatMul` by a constant become layers bound to their initializers, so everything graph mode
//! does (quantizers, calibration, BatchNorm folding, equalization, Stage 2, QAT) applies.
//! [`OnnxModel::import_batched`] gives a batch-symbolic graph that runs at any batch size.
//!
//! Why not `onnx-ir` (Burn's ONNX front-end): its IR renames every node and value, so
//! recipes and errors could not use the model's own names and an export could not be
//! written back into the original model; it refuses int4/float8/blocked Q/DQ tensors, which
//! importing quantized models needs; it reads a `-1` batch dim as `usize::MAX`; and it would
//! add a second protobuf stack to the build. Our decoder reads the same `onnx.proto` fields
//! (probes of onnx-ir 0.22 measured these four points).
//!
//! Supported ops (opsets 7–24; tested on 11, 13, 14, 17 and 21): `Conv`, `ConvTranspose`
//! (1-D/2-D), `BatchNormalization`, `Gemm`, `MatMul`, `Add`/`Sub`/`Mul`/`Div`/`Pow` with
//! broadcasting, `Relu`, `LeakyRelu`, `Sigmoid`, `HardSigmoid`, `HardSwish`, `Tanh`, `Erf`,
//! `Gelu`, `Exp`, `Log`, `Sqrt`, `Neg`, `Abs`, `Reciprocal`, `Floor`, `Ceil`, `Round`, `Sin`,
//! `Cos`, `Clip`, `Softmax`, `LogSoftmax`, `LayerNormalization` (last axis), `MaxPool`,
//! `AveragePool`, `GlobalAveragePool`, `GlobalMaxPool`, `ReduceMean`/`Sum`/`Max`/`Min`,
//! `Resize` (nearest asymmetric/floor, linear with `align_corners` or half-pixel),
//! `Concat`, `Reshape`, `Flatten`, `Transpose`, `Squeeze`, `Unsqueeze`, `Slice`, `Gather`,
//! `Expand`, `Where`, `Cast`, `Identity`, `Dropout` (inference), `Constant`,
//! `ConstantOfShape`, `Shape`, `Size`, `Range`, `Equal`/`Less`/`Greater`/`Not`/`And`/`Or`
//! on shape values. Anything else is a [`GraphError::Import`] naming the node and its op; so
//! is an attribute the importer does not implement.

mod export;
mod ops;
mod tensor;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_quant_core::{QuantSpec, QuantTensor};
use burn_quant_export::onnx::proto::{DataType, ModelProto, NodeProto, TensorProto};
use burn_quant_export::onnx::{decode_onnx, read_onnx};
use burn_quant_nn::{AnyQuantTensor, QuantizerConfig, QuantizerRole};

use crate::GraphError;
use crate::ir::{Graph, ValueId};
use crate::quantize::{GraphQuantizers, OwnedParams, QuantizedGraph};
use crate::stage2::{GraphWeight, Stage2Result};

pub use export::export_qdq;
pub(crate) use tensor::decode_tensor;

/// Lowest and highest default-domain opsets the importer accepts.
pub const OPSET_RANGE: (i64, i64) = (7, 24);

/// An import error at `at`.
pub(crate) fn import_err(at: impl Into<String>, reason: impl Into<String>) -> GraphError {
    GraphError::Import {
        at: at.into(),
        reason: reason.into(),
    }
}

/// The model argument of [`crate::QuantizedGraph::calibrate`] and
/// [`crate::QuantizedGraph::forward`] for a graph whose parameters all live in the graph (an
/// imported ONNX model): there is no Burn model to bind.
#[derive(burn::module::Module, Debug, Default)]
pub struct NoModel {}

/// A graph input the model reads at run time.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxInput {
    /// Its ONNX name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Declared dims; `None` for a symbolic or unknown one.
    pub dims: Vec<Option<usize>>,
}

/// A decoded and checked ONNX model, ready to be imported at concrete input shapes.
#[derive(Clone, Debug)]
pub struct OnnxModel {
    proto: ModelProto,
    opset: i64,
    base_dir: Option<PathBuf>,
    /// Node indices of `proto.graph.node` in a topological order.
    order: Vec<usize>,
    /// Initializer name → index.
    initializers: HashMap<String, usize>,
    inputs: Vec<OnnxInput>,
    outputs: Vec<String>,
}

/// A model imported at concrete shapes: the graph and where each part came from.
#[derive(Clone, Debug)]
pub struct ImportedGraph {
    /// The graph (node names are the ONNX node names, parameter paths the initializer
    /// names, value names the ONNX value names where one exists).
    pub graph: Graph,
    /// For every graph node, the index of the ONNX node (in `ModelProto.graph.node`) it
    /// computes part of.
    pub onnx_node: Vec<usize>,
    /// For every graph value, the ONNX value it holds (`None` for values internal to the
    /// expansion of one ONNX node).
    pub onnx_value: Vec<Option<String>>,
    /// For every graph parameter, how it was derived from its initializer.
    pub param_sources: Vec<ParamSource>,
    /// Every ONNX value name that holds a run-time graph value (an `Identity` gives a value
    /// a second name).
    pub onnx_names: HashMap<String, ValueId>,
    /// The activation quantizers the model carried (`QuantizeLinear → DequantizeLinear`
    /// pairs), as [`crate::Op::Quant`] nodes of the graph.
    pub activation_quants: Vec<ImportedActivationQuant>,
    /// The quantized weights the model carried (`DequantizeLinear` of constant codes), each
    /// behind a [`crate::Op::Quant`] node of the graph.
    pub weight_quants: Vec<ImportedWeightQuant>,
}

/// An activation quantizer of an imported QDQ model.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedActivationQuant {
    /// Its index among the graph's quantizers ([`crate::QuantNode::quantizer`]).
    pub quantizer: usize,
    /// The graph's quantizer node.
    pub quant_node: String,
    /// Format, granularity, zero-point kind.
    pub spec: QuantSpec,
    /// Scales as stored (one per cell).
    pub scales: Vec<f32>,
    /// Zero-points as stored, for asymmetric specs.
    pub zero_points: Option<Vec<f32>>,
    /// The `QuantizeLinear` node (index in the ONNX graph).
    pub onnx_q: usize,
    /// The `DequantizeLinear` node.
    pub onnx_dq: usize,
}

/// A quantized weight of an imported QDQ model: exact codes in the graph's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedWeightQuant {
    /// Its index among the graph's quantizers.
    pub quantizer: usize,
    /// The graph parameter (named after the `DequantizeLinear` output).
    pub path: String,
    /// The graph's quantizer node on it.
    pub quant_node: String,
    /// Format, granularity (on the graph's layout), zero-point kind.
    pub spec: QuantSpec,
    /// Shape in the graph's layout.
    pub shape: Vec<usize>,
    /// Codes (float8: bit patterns), row-major.
    pub codes: Vec<i32>,
    /// Scales, one per cell of the spec's layout.
    pub scales: Vec<f32>,
    /// Zero-points, for asymmetric specs.
    pub zero_points: Option<Vec<f32>>,
    /// The `DequantizeLinear` node.
    pub onnx_dq: usize,
}

/// How a graph parameter relates to the ONNX tensor of the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamSource {
    /// The tensor as stored.
    AsStored,
    /// The tensor transposed (a `Gemm` with `transB = 1`: ONNX `[N, K]`, graph `[K, N]`).
    Transposed,
}

impl OnnxModel {
    /// Reads and checks the model at `path` (externally stored tensors are read relative to
    /// its directory).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, GraphError> {
        let path = path.as_ref();
        let proto =
            read_onnx(path).map_err(|e| import_err(path.display().to_string(), e.to_string()))?;
        Self::from_proto(proto, path.parent().map(Path::to_path_buf))
    }

    /// Decodes and checks a model from its bytes (no external data).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GraphError> {
        let proto = decode_onnx(bytes).map_err(|e| import_err("the model bytes", e.to_string()))?;
        Self::from_proto(proto, None)
    }

    /// Checks a decoded model. `base_dir` is where external data lives.
    pub fn from_proto(proto: ModelProto, base_dir: Option<PathBuf>) -> Result<Self, GraphError> {
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| import_err("the model", "it has no graph"))?;
        let uses_default = graph.node.iter().any(|n| is_default_domain(&n.domain));
        let opset = proto
            .opset_import
            .iter()
            .filter(|o| is_default_domain(&o.domain))
            .map(|o| o.version)
            .max();
        let opset = match (opset, uses_default) {
            (Some(v), _) => v,
            (None, false) => OPSET_RANGE.1,
            (None, true) => {
                return Err(import_err(
                    "the model",
                    "it uses ONNX operators but imports no default-domain opset",
                ));
            }
        };
        if uses_default && !(OPSET_RANGE.0..=OPSET_RANGE.1).contains(&opset) {
            return Err(import_err(
                "the model",
                format!(
                    "default-domain opset {opset} is outside the supported {}..={}",
                    OPSET_RANGE.0, OPSET_RANGE.1
                ),
            ));
        }
        let mut initializers = HashMap::new();
        let mut defined: HashSet<&str> = HashSet::new();
        for (i, t) in graph.initializer.iter().enumerate() {
            if t.name.is_empty() {
                return Err(import_err(format!("initializer #{i}"), "it has no name"));
            }
            if initializers.insert(t.name.clone(), i).is_some() {
                return Err(import_err(
                    format!("initializer `{}`", t.name),
                    "it is defined twice",
                ));
            }
            tensor::element_count(&t.dims)
                .map_err(|r| import_err(format!("initializer `{}`", t.name), r))?;
            defined.insert(&t.name);
        }
        let mut inputs = Vec::new();
        for vi in &graph.input {
            if initializers.contains_key(&vi.name) {
                // Older exporters list initializers as inputs too: they are constants.
                continue;
            }
            let at = || format!("graph input `{}`", vi.name);
            let Some(burn_quant_export::onnx::proto::type_proto::Value::TensorType(tt)) =
                vi.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                return Err(import_err(at(), "it is not a tensor"));
            };
            let dt = DataType::try_from(tt.elem_type)
                .ok()
                .and_then(tensor::dtype_of)
                .ok_or_else(|| {
                    import_err(
                        at(),
                        format!("element type {} is not supported", tt.elem_type),
                    )
                })?;
            let dims = match &tt.shape {
                Some(s) => s
                    .dim
                    .iter()
                    .map(|d| match d.value {
                        Some(burn_quant_export::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(v)) if v >= 0 => {
                            Some(v as usize)
                        }
                        _ => None,
                    })
                    .collect(),
                None => return Err(import_err(at(), "its shape (rank) is not declared")),
            };
            if !defined.insert(&vi.name) {
                return Err(import_err(at(), "the name is defined twice"));
            }
            inputs.push(OnnxInput {
                name: vi.name.clone(),
                dtype: dt,
                dims,
            });
        }
        let order = topological_order(&graph.node, &defined)?;
        let mut produced: HashSet<&str> = defined.clone();
        for &n in &order {
            for o in &graph.node[n].output {
                if o.is_empty() {
                    continue;
                }
                if !produced.insert(o) {
                    return Err(import_err(
                        node_at(&graph.node[n], n),
                        format!("output `{o}` is already defined"),
                    ));
                }
            }
        }
        let mut outputs = Vec::new();
        for vi in &graph.output {
            if !produced.contains(vi.name.as_str()) {
                return Err(import_err(
                    format!("graph output `{}`", vi.name),
                    "no node, input or initializer defines it",
                ));
            }
            outputs.push(vi.name.clone());
        }
        if outputs.is_empty() {
            return Err(import_err("the model", "the graph has no outputs"));
        }
        Ok(Self {
            proto,
            opset,
            base_dir,
            order,
            initializers,
            inputs,
            outputs,
        })
    }

    /// The decoded model (names, opset, initializers as written).
    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    /// The default-domain opset.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The runtime inputs, in the graph's order.
    pub fn inputs(&self) -> &[OnnxInput] {
        &self.inputs
    }

    /// The graph output names.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// The nodes of the ONNX graph.
    pub fn nodes(&self) -> &[NodeProto] {
        &self.proto.graph.as_ref().expect("checked at load").node
    }

    /// The initializer called `name`, if there is one.
    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        let g = self.proto.graph.as_ref()?;
        self.initializers.get(name).map(|&i| &g.initializer[i])
    }

    /// Decodes initializer `name`.
    pub(crate) fn initializer_data(&self, name: &str) -> Option<Result<TensorData, GraphError>> {
        self.initializer(name).map(|t| {
            decode_tensor(t, self.base_dir.as_deref())
                .map_err(|r| import_err(format!("initializer `{name}`"), r))
        })
    }

    /// The input shapes the model declares, with every dynamic dim set to `fill`
    /// (an error naming the input when one is dynamic and `fill` is `None`).
    pub fn declared_shapes(&self, fill: Option<usize>) -> Result<Vec<Vec<usize>>, GraphError> {
        self.inputs
            .iter()
            .map(|i| {
                i.dims
                    .iter()
                    .map(|d| {
                        d.or(fill).ok_or_else(|| {
                            import_err(
                                format!("graph input `{}`", i.name),
                                format!("it has dynamic dims {:?}: give its shape", i.dims),
                            )
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Imports the model at fixed input shapes (one per [`OnnxModel::inputs`] entry).
    pub fn import(&self, shapes: &[Vec<usize>]) -> Result<ImportedGraph, GraphError> {
        ops::Importer::run(self, shapes)
    }

    /// Imports a **batch-symbolic** graph: axis 0 of every input is the batch, and the graph
    /// runs at any batch size. The model is specialised at the given shapes (batch `B`) and
    /// at batch `B + 1`; both must give the same graph up to batch-proportional axes (a model
    /// whose computation depends on the batch size otherwise is an error saying so).
    pub fn import_batched(&self, shapes: &[Vec<usize>]) -> Result<ImportedGraph, GraphError> {
        let first = self.import(shapes)?;
        let b = shapes
            .first()
            .and_then(|s| s.first().copied())
            .ok_or_else(|| {
                import_err(
                    "the model",
                    "a batched import needs an input with a batch axis",
                )
            })?;
        let grown: Vec<Vec<usize>> = shapes
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if let Some(d) = s.first_mut() {
                    *d += 1;
                }
                s
            })
            .collect();
        let second = self.import(&grown)?;
        let graph =
            crate::capture::merge_batch(first.graph, &second.graph, b).map_err(|e| match e {
                GraphError::Capture(m) => import_err("the model", m),
                e => e,
            })?;
        Ok(ImportedGraph { graph, ..first })
    }
}

impl ImportedGraph {
    /// The graph with the quantization the model carried, ready to run, calibrate again,
    /// train or export: activation quantizers hold the file's scales and zero-points; weight
    /// quantizers are switched off (the graph already reads the dequantized weights) and the
    /// weights' exact codes come back as a [`Stage2Result`] (`algorithm = "imported"`), which
    /// [`export_qdq`] writes as they were. A float model gives a graph without quantizers and
    /// an empty result.
    pub fn quantized(&self, device: &Device) -> Result<(QuantizedGraph, Stage2Result), GraphError> {
        let count = self.activation_quants.len() + self.weight_quants.len();
        let mut slots: Vec<Option<burn_quant_nn::Quantizer>> = (0..count).map(|_| None).collect();
        let err = |node: &str, source| GraphError::Quant {
            node: node.to_string(),
            source,
        };
        for a in &self.activation_quants {
            let mut q = QuantizerConfig::for_spec(a.spec, QuantizerRole::Activation)
                .with_cells(a.scales.len())
                .init(device)
                .map_err(|e| err(&a.quant_node, e))?;
            let flat = |v: &[f32]| {
                Param::from_tensor(Tensor::<1>::from_data(
                    TensorData::new(v.to_vec(), [v.len()]),
                    device,
                ))
            };
            q.scale = Some(flat(&a.scales));
            q.zero_point = a.zero_points.as_deref().map(flat);
            slots[a.quantizer] = Some(q);
        }
        let mut weights = Vec::with_capacity(self.weight_quants.len());
        for w in &self.weight_quants {
            let q = QuantizerConfig::for_spec(w.spec, QuantizerRole::Weight)
                .init(device)
                .map_err(|e| err(&w.quant_node, e))?
                .with_enabled(false);
            slots[w.quantizer] = Some(q);
            let tensor = quant_tensor(w, device)?;
            let dequantized = self
                .graph
                .param(&w.path)
                .map(|p| {
                    p.data
                        .clone()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            let layer = w
                .quant_node
                .strip_suffix(&format!(".{}.quant", w.path))
                .unwrap_or(&w.quant_node)
                .to_string();
            weights.push(GraphWeight {
                layer,
                path: w.path.clone(),
                tensor,
                dequantized,
                shape: w.shape.clone(),
                reports: Vec::new(),
            });
        }
        let quantizers = slots
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                q.ok_or_else(|| GraphError::Malformed(format!("imported quantizer {i} is missing")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let qg = QuantizedGraph {
            graph: self.graph.clone(),
            quantizers: GraphQuantizers { quantizers },
            owned: OwnedParams::from_graph(&self.graph, &[], device),
        };
        Ok((
            qg,
            Stage2Result {
                algorithm: "imported",
                weights,
                seconds: 0.0,
            },
        ))
    }

    /// The graph value holding ONNX value `name`, if one does.
    pub fn value_named(&self, name: &str) -> Option<ValueId> {
        self.onnx_names.get(name).copied()
    }
}

fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// `node `name` (Op)` for messages.
pub(crate) fn node_at(node: &NodeProto, index: usize) -> String {
    if node.name.is_empty() {
        format!("node #{index} ({})", node.op_type)
    } else {
        format!("node `{}` ({})", node.name, node.op_type)
    }
}

/// Kahn's algorithm over value names: the nodes in an order where each reads only values
/// defined before it (the file order when it already is one). A read of a value nothing
/// defines, or a cycle, is an error naming the node.
fn topological_order(
    nodes: &[NodeProto],
    defined: &HashSet<&str>,
) -> Result<Vec<usize>, GraphError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (n, node) in nodes.iter().enumerate() {
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            if defined.contains(o.as_str()) {
                return Err(import_err(
                    node_at(node, n),
                    format!("output `{o}` is already a graph input or initializer"),
                ));
            }
            if producer.insert(o, n).is_some() {
                return Err(import_err(
                    node_at(node, n),
                    format!("output `{o}` is defined twice"),
                ));
            }
        }
    }
    let mut pending = vec![0usize; nodes.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (n, node) in nodes.iter().enumerate() {
        if node
            .attribute
            .iter()
            .any(|a| a.r#type == Some(5) || a.r#type == Some(10))
        {
            return Err(import_err(
                node_at(node, n),
                "control flow (subgraph attributes) is not supported",
            ));
        }
        let mut seen = HashSet::new();
        for i in node.input.iter().filter(|i| !i.is_empty()) {
            if defined.contains(i.as_str()) {
                continue;
            }
            match producer.get(i.as_str()) {
                Some(&p) => {
                    if seen.insert(p) {
                        pending[n] += 1;
                        readers[p].push(n);
                    }
                }
                None => {
                    return Err(import_err(
                        node_at(node, n),
                        format!(
                            "it reads `{i}`, which no node, graph input or initializer defines"
                        ),
                    ));
                }
            }
        }
    }
    // A min-heap on the file index keeps the file order wherever it is already valid.
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..nodes.len())
        .filter(|&n| pending[n] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(std::cmp::Reverse(n)) = ready.pop() {
        order.push(n);
        for &r in &readers[n] {
            pending[r] -= 1;
            if pending[r] == 0 {
                ready.push(std::cmp::Reverse(r));
            }
        }
    }
    if order.len() != nodes.len() {
        let stuck = (0..nodes.len())
            .find(|&n| pending[n] > 0)
            .expect("some node is stuck");
        return Err(import_err(
            node_at(&nodes[stuck], stuck),
            "the graph has a cycle through this node",
        ));
    }
    Ok(order)
}

/// The exact codes of an imported weight as a [`QuantTensor`] of its rank.
fn quant_tensor(w: &ImportedWeightQuant, device: &Device) -> Result<AnyQuantTensor, GraphError> {
    let layout = w
        .spec
        .check_shape(&w.shape)
        .map_err(|source| GraphError::Core {
            at: format!("imported weight `{}`", w.path),
            source,
        })?;
    macro_rules! build {
        ($d:literal, $variant:ident) => {{
            let codes = Tensor::<$d, burn::tensor::Int>::from_data(
                TensorData::new(w.codes.clone(), w.shape.clone()),
                device,
            );
            let scales = Tensor::<$d>::from_data(
                TensorData::new(w.scales.clone(), layout.scale_shape.clone()),
                device,
            );
            let zero_points = w.zero_points.as_ref().map(|z| {
                Tensor::<$d>::from_data(
                    TensorData::new(z.clone(), layout.scale_shape.clone()),
                    device,
                )
            });
            AnyQuantTensor::$variant(QuantTensor {
                codes,
                scales,
                zero_points,
                scale_level: None,
                spec: w.spec,
            })
        }};
    }
    Ok(match w.shape.len() {
        1 => build!(1, Rank1),
        2 => build!(2, Rank2),
        3 => build!(3, Rank3),
        4 => build!(4, Rank4),
        5 => build!(5, Rank5),
        6 => build!(6, Rank6),
        r => {
            return Err(import_err(
                format!("imported weight `{}`", w.path),
                format!("rank {r} is not supported"),
            ));
        }
    })
}
