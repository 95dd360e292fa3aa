//! Automatic quantization of a graph: Brevitas's `layerwise_quantize` and `quantize` in one.
//!
//! [`quantize_graph`] inserts [`Op::Quant`] nodes:
//! - a **weight** quantizer on the weight of every selected layer (`Linear`, convolutions), its
//!   spec's role axes (per output channel, groups along the input) resolved by the layer kind;
//! - an **input** quantizer on every activation a selected layer or `MatMul` reads (one per
//!   value: `q`, `k` and `v` reading the same normalized input share it);
//! - an **output** quantizer after every selected layer;
//! - one **shared** quantizer on all inputs of a residual add or a concat of activations, so
//!   the join happens on one grid (as Brevitas's shared `QuantIdentity` and our `QuantAdd`).
//!
//! Quantizers are our [`Quantizer`] modules (the ones the hand-written layers use), held in a
//! [`GraphQuantizers`] module: static scales are calibrated with [`QuantizedGraph::calibrate`],
//! learned ones (LSQ) train with the model through [`GraphModel`].

use std::sync::Arc;

use burn::backend::{DispatchTensor, TensorMetadata};
use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};
use burn_quant_core::{QuantSpec, WeightLayout};
use burn_quant_nn::{Pattern, Quantizer, QuantizerConfig, QuantizerRole, calibrate};
use serde::{Deserialize, Serialize};

use crate::GraphError;
use crate::capture::GraphIo;
use crate::equalize::{EqualizeConfig, equalize_cross_layer};
use crate::fold::fold_batch_norms;
use crate::interp::{Interpreter, device_of};
use crate::ir::{BinaryOp, Graph, Node, Op, ValueId, ValueOrigin};

/// Where a quantizer sits.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantSite {
    /// On the weight of a layer.
    Weight {
        /// The layer node's name.
        layer: String,
        /// The weight parameter's path.
        param: String,
        /// How the layer stores its weight.
        layout: WeightLayout,
    },
    /// On an activation read by selected layers.
    Input {
        /// The first layer node reading it.
        layer: String,
    },
    /// On a layer's output.
    Output {
        /// The layer node's name.
        layer: String,
    },
    /// On the inputs of a join (residual add, concat): one quantizer for all of them.
    Join {
        /// The join node's name.
        node: String,
    },
}

/// A quantizer node: which quantizer of [`GraphQuantizers`] it applies, and where it sits.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantNode {
    /// Index into [`GraphQuantizers::quantizers`] (several nodes share one for joins).
    pub quantizer: usize,
    /// Where it sits.
    pub site: QuantSite,
    /// Its spec (the same as the quantizer's; kept here so passes and exporters need no
    /// module).
    pub spec: QuantSpec,
}

/// The quantizers of a quantized graph, as one Burn module (records save their calibrated
/// or learned scales; optimizers train learned ones).
#[derive(Module, Debug)]
pub struct GraphQuantizers {
    /// One per quantizer index.
    pub quantizers: Vec<Quantizer>,
}

/// Parameters a graph pass created (BatchNorm-folded weights and biases), as one Burn
/// module. Stored flat (`[numel]`); bound to the graph by `ParamId` and reshaped to the
/// graph's shape at each run, so they train like the model's own parameters.
#[derive(Module, Debug)]
pub struct OwnedParams {
    /// The parameters, flat.
    pub tensors: Vec<Param<Tensor<1>>>,
}

impl OwnedParams {
    /// Builds the module for every graph parameter that does not belong to the model
    /// (`owned` ids), from the data the graph holds.
    pub fn from_graph(graph: &Graph, owned: &[ParamId], device: &Device) -> Self {
        let tensors = graph
            .params
            .iter()
            .filter(|p| p.id.is_some_and(|id| owned.contains(&id)))
            .map(|p| {
                let n = p.data.num_elements();
                let flat = TensorData::new(
                    p.data.try_to_vec::<f32>().expect("folded parameters are f32"),
                    [n],
                );
                Param::initialized(
                    p.id.expect("filtered on Some"),
                    Tensor::<1>::from_data(flat, device),
                )
            })
            .collect();
        Self { tensors }
    }
}

/// Runs quantizer nodes for the interpreter.
#[derive(Default)]
pub struct QuantContext<'a> {
    quantizers: Option<&'a [Quantizer]>,
    /// Quantizer indices that pass values through (e.g. weights a Stage 2 algorithm already
    /// put on their grid).
    bypass: Vec<bool>,
    /// Every quantizer passes values through (the float path).
    bypass_all: bool,
}

impl<'a> QuantContext<'a> {
    /// A context applying `quantizers`.
    pub fn new(quantizers: &'a GraphQuantizers) -> Self {
        Self {
            quantizers: Some(&quantizers.quantizers),
            bypass: vec![false; quantizers.quantizers.len()],
            bypass_all: false,
        }
    }

    /// A context in which every quantizer is the identity: the float function.
    pub fn float() -> Self {
        Self {
            quantizers: None,
            bypass: Vec::new(),
            bypass_all: true,
        }
    }

    /// Lets quantizer `index` pass values through.
    pub fn bypass(mut self, index: usize) -> Self {
        if index >= self.bypass.len() {
            self.bypass.resize(index + 1, false);
        }
        self.bypass[index] = true;
        self
    }

    /// Applies quantizer node `q` (node index `n`) to `x`.
    pub fn run(&self, n: usize, q: &QuantNode, x: DispatchTensor) -> Result<DispatchTensor, GraphError> {
        if self.bypass_all || self.bypass.get(q.quantizer).copied().unwrap_or(false) {
            return Ok(x);
        }
        let Some(qs) = self.quantizers else {
            return Err(GraphError::Malformed(format!(
                "node #{n} is a quantizer; run the graph through `QuantizedGraph` or `GraphModel`"
            )));
        };
        let quantizer = qs.get(q.quantizer).ok_or_else(|| {
            GraphError::Malformed(format!("node #{n} uses quantizer {} of {}", q.quantizer, qs.len()))
        })?;
        let err = |source| GraphError::Quant {
            node: format!("#{n} ({:?})", q.site),
            source,
        };
        macro_rules! by_rank {
            ($($d:literal),*) => {
                match x.shape().num_dims() {
                    $($d => quantizer
                        .try_forward(Tensor::<$d>::from_dispatch(x))
                        .map(Tensor::into_dispatch)
                        .map_err(err),)*
                    r => Err(GraphError::UnsupportedOp {
                        op: format!("quantizer on a rank-{r} tensor"),
                        at: format!("node #{n}"),
                    }),
                }
            };
        }
        by_rank!(1, 2, 3, 4, 5, 6)
    }
}

/// The op kinds `quantize_graph` can quantize (and selects by default).
pub const QUANTIZABLE_OPS: [&str; 7] = [
    "Linear",
    "Conv1d",
    "Conv2d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "MatMul",
    "Attention",
];

fn default_ops() -> Vec<String> {
    QUANTIZABLE_OPS.into_iter().map(String::from).collect()
}

fn yes() -> bool {
    true
}

/// What to quantize in a graph: specs by role, which ops and which nodes.
///
/// Serde data (TOML/JSON), like every recipe of ours:
///
/// ```toml
/// weight = { format = { int = { bits = 4, signed = true, narrow = false } }, granularity = { kind = "per_input_group", size = 128 } }
/// exclude = ["classifier"]
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GraphRecipe {
    /// Weight spec of selected layers; role axes (`per_output_channel`, `per_input_group`)
    /// resolve by the layer kind, an explicit axis must fit the layer.
    #[serde(default)]
    pub weight: Option<QuantSpec>,
    /// Activation spec at the inputs of selected layers and matmuls.
    #[serde(default)]
    pub input: Option<QuantSpec>,
    /// Activation spec at the outputs of selected layers.
    #[serde(default)]
    pub output: Option<QuantSpec>,
    /// Spec of the shared join quantizers (default: the `input` spec). A per-channel spec
    /// along the feature axis (`Granularity::PerChannel { axis: 2 }` for `[batch, seq,
    /// hidden]`) keeps a transformer's outlier channels from setting everyone's scale.
    #[serde(default)]
    pub join: Option<QuantSpec>,
    /// Op kinds to quantize ([`Op::kind`] names); default: `Linear`, `Conv1d`, `Conv2d`,
    /// `ConvTranspose1d`, `ConvTranspose2d`, `MatMul`, `Attention` (fused attention: input
    /// quantizers on q, k and v).
    #[serde(default = "default_ops")]
    pub ops: Vec<String>,
    /// Node-name patterns to quantize (empty: all); node names are module paths for layers.
    #[serde(default)]
    pub include: Vec<Pattern>,
    /// Node-name patterns never quantized (checked after `include`).
    #[serde(default)]
    pub exclude: Vec<Pattern>,
    /// With an input spec: residual adds and concats of activations get one quantizer shared
    /// by all their inputs, so the join runs on one integer grid (what an integer-only
    /// backend needs; Brevitas's shared `QuantIdentity`). Off by default: a per-tensor scale
    /// over a transformer's residual stream, whose outlier channels reach 100× its RMS, rounds
    /// most of the stream to zero (all-MiniLM-L6-v2 W8A8: mean cosine 0.63 with shared joins,
    /// 0.979 without; see the graph-mode chapter).
    #[serde(default)]
    pub share_joins: bool,
    /// Fold inference BatchNorm into the convolution before it.
    #[serde(default = "yes")]
    pub fold_batch_norm: bool,
    /// Cross-layer equalization ([`crate::equalize`]) before quantizers are inserted, after
    /// BatchNorm folding: balances per-channel weight ranges of conv/linear chains without
    /// changing the float function, which is what a per-tensor weight grid needs. `None`
    /// (the default) skips it; `[equalize]` in TOML takes the default sweeps.
    #[serde(default)]
    pub equalize: Option<EqualizeConfig>,
    /// Activations that cannot be negative (after ReLU, sigmoid, softmax, and pooling or
    /// reshaping of those) get the unsigned form of an integer activation spec: the sign bit
    /// would be wasted on them (Brevitas's `QuantReLU` is unsigned for the same reason).
    #[serde(default = "yes")]
    pub unsigned_when_nonnegative: bool,
}

impl Default for GraphRecipe {
    fn default() -> Self {
        Self {
            weight: None,
            input: None,
            output: None,
            join: None,
            ops: default_ops(),
            include: Vec::new(),
            exclude: Vec::new(),
            share_joins: false,
            fold_batch_norm: true,
            equalize: None,
            unsigned_when_nonnegative: true,
        }
    }
}

impl GraphRecipe {
    /// Weight-only quantization with `spec`.
    pub fn weights(spec: QuantSpec) -> Self {
        Self {
            weight: Some(spec),
            ..Self::default()
        }
    }

    /// Weights with `weight`, layer inputs with `input`.
    pub fn weights_and_inputs(weight: QuantSpec, input: QuantSpec) -> Self {
        Self {
            weight: Some(weight),
            input: Some(input),
            ..Self::default()
        }
    }

    /// Excludes nodes matching `pattern`.
    pub fn exclude(mut self, pattern: &str) -> Self {
        self.exclude.push(Pattern::new(pattern));
        self
    }

    /// Only quantizes nodes matching `pattern` (may be given several times).
    pub fn include(mut self, pattern: &str) -> Self {
        self.include.push(Pattern::new(pattern));
        self
    }

    /// Sets the op kinds to quantize.
    pub fn with_ops(mut self, ops: &[&str]) -> Self {
        self.ops = ops.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets whether BatchNorm is folded.
    pub fn with_fold_batch_norm(mut self, fold: bool) -> Self {
        self.fold_batch_norm = fold;
        self
    }

    /// Equalizes conv/linear chains with `cfg` before quantizing (see [`crate::equalize`]).
    pub fn with_equalize(mut self, cfg: EqualizeConfig) -> Self {
        self.equalize = Some(cfg);
        self
    }

    /// Sets whether non-negative activations get unsigned integer specs.
    pub fn with_unsigned_when_nonnegative(mut self, on: bool) -> Self {
        self.unsigned_when_nonnegative = on;
        self
    }

    /// The activation spec for a value: unsigned where it cannot be negative (if enabled).
    fn act_spec(&self, spec: QuantSpec, nonnegative: bool) -> QuantSpec {
        if self.unsigned_when_nonnegative && nonnegative {
            spec.with_signed(false)
        } else {
            spec
        }
    }

    /// Sets whether joins share a quantizer.
    pub fn with_share_joins(mut self, share: bool) -> Self {
        self.share_joins = share;
        self
    }

    /// Shares join quantizers with their own spec (instead of the input spec).
    pub fn with_join_spec(mut self, spec: QuantSpec) -> Self {
        self.share_joins = true;
        self.join = Some(spec);
        self
    }

    fn selects(&self, node: &Node) -> bool {
        let kind = node.op.kind();
        self.ops.iter().any(|k| k == kind)
            && (self.include.is_empty() || self.include.iter().any(|p| p.matches(&node.name)))
            && !self.exclude.iter().any(|p| p.matches(&node.name))
    }

    fn check(&self) -> Result<(), GraphError> {
        for (i, k) in self.ops.iter().enumerate() {
            if !QUANTIZABLE_OPS.contains(&k.as_str()) {
                return Err(GraphError::Recipe {
                    at: format!("ops[{i}]"),
                    reason: format!(
                        "`{k}` is not a quantizable op kind (one of {QUANTIZABLE_OPS:?})"
                    ),
                });
            }
        }
        for (i, p) in self.include.iter().chain(&self.exclude).enumerate() {
            p.check().map_err(|reason| GraphError::Recipe {
                at: format!("pattern {i} `{p}`"),
                reason,
            })?;
        }
        for (field, spec) in [
            ("weight", &self.weight),
            ("input", &self.input),
            ("output", &self.output),
            ("join", &self.join),
        ] {
            if let Some(s) = spec {
                s.validate().map_err(|source| GraphError::Core {
                    at: format!("recipe.{field}"),
                    source,
                })?;
            }
        }
        if let Some(cfg) = &self.equalize {
            cfg.check()?;
        }
        Ok(())
    }
}

/// The weight layout of a layer op.
pub fn layout_of(op: &Op) -> Option<WeightLayout> {
    match op {
        Op::Linear { .. } => Some(WeightLayout::Linear),
        Op::Conv1d { .. } | Op::Conv2d { .. } => Some(WeightLayout::Conv),
        Op::ConvTranspose1d { .. } | Op::ConvTranspose2d { .. } => Some(WeightLayout::ConvTranspose),
        Op::Embedding => Some(WeightLayout::Embedding),
        _ => None,
    }
}

/// A graph with quantizer nodes, its quantizers, and the parameters its passes created.
#[derive(Debug, Clone)]
pub struct QuantizedGraph {
    /// The graph, with [`Op::Quant`] nodes.
    pub graph: Graph,
    /// The quantizers the nodes apply.
    pub quantizers: GraphQuantizers,
    /// Parameters created by graph passes (folded BatchNorm), bound by `ParamId`.
    pub owned: OwnedParams,
}

/// Inserts quantizers into `graph` as `recipe` says (see the module docs); quantizers and
/// folded parameters live on `device`.
///
/// Errors name the node and the field: a weight spec whose axis does not fit a layer, a
/// pattern that cannot match, an op kind that cannot be quantized.
pub fn quantize_graph(
    graph: &Graph,
    recipe: &GraphRecipe,
    device: &Device,
) -> Result<QuantizedGraph, GraphError> {
    recipe.check()?;
    let mut g = graph.clone();
    let mut owned_ids = if recipe.fold_batch_norm {
        fold_batch_norms(&mut g)?
    } else {
        Vec::new()
    };
    // After folding, so equalization balances the weights that get quantized.
    if let Some(cfg) = &recipe.equalize {
        owned_ids.extend(equalize_cross_layer(&mut g, cfg)?.owned);
    }
    let mut ins = Inserter {
        graph: g,
        quantizers: Vec::new(),
        device: device.clone(),
        before: Vec::new(),
        by_value: Vec::new(),
    };
    ins.before = vec![Vec::new(); ins.graph.nodes.len()];
    let from_input = ins.graph.depends_on_inputs();
    let nonneg = ins.graph.nonnegative();
    let selected: Vec<bool> = ins.graph.nodes.iter().map(|n| recipe.selects(n)).collect();
    let n_nodes = ins.graph.nodes.len();
    let mut after: Vec<Option<(usize, QuantSite)>> = vec![None; n_nodes];
    for n in 0..n_nodes {
        let node = ins.graph.nodes[n].clone();
        if selected[n] {
            if let (Some(spec), Some(layout)) = (recipe.weight, layout_of(&node.op))
                && let Some(w) = node.inputs.get(1).copied()
                && let Some(param) = ins.graph.param_of(w).cloned()
            {
                let shape = ins.graph.value(w).shape.clone();
                let spec = spec.resolve_for(layout, &shape).map_err(|source| GraphError::Core {
                    at: format!("weight `{}` of `{}` ({:?}, shape {shape:?})", param.path, node.name, layout),
                    source,
                })?;
                let cells = cells_of(&spec, &shape, &node.name)?;
                let q = ins.new_quantizer(spec, QuantizerRole::Weight, cells, &node.name)?;
                ins.quant_input(
                    n,
                    1,
                    q,
                    QuantSite::Weight {
                        layer: node.name.clone(),
                        param: param.path.clone(),
                        layout,
                    },
                    false,
                );
            }
            if let Some(spec) = recipe.input {
                let slots: Vec<usize> = match node.op {
                    Op::MatMul => vec![0, 1],
                    Op::Attention { .. } => vec![0, 1, 2],
                    _ if node.op.is_weight_layer() => vec![0],
                    _ => vec![],
                };
                for slot in slots {
                    let v = node.inputs[slot];
                    if !ins.graph.value(v).is_float() || !from_input[v.0] {
                        continue;
                    }
                    // A layer's quantized output read directly by the next layer is already
                    // on a grid: a second quantizer would only round it again.
                    if ins.graph.producer(v).is_some_and(|p| after[p].is_some()) {
                        continue;
                    }
                    let spec = recipe.act_spec(spec, nonneg[v.0]);
                    let q = match ins.by_value.iter().find(|(val, _)| *val == v) {
                        Some(&(_, q)) => q,
                        None => {
                            let cells = cells_of(&spec, &ins.graph.value(v).shape, &node.name)?;
                            let q = ins.new_quantizer(spec, QuantizerRole::Activation, cells, &node.name)?;
                            ins.by_value.push((v, q));
                            q
                        }
                    };
                    ins.quant_input(n, slot, q, QuantSite::Input { layer: node.name.clone() }, true);
                }
            }
            if let Some(spec) = recipe.output
                && node.op.is_weight_layer()
            {
                let out = node.outputs[0];
                let spec = recipe.act_spec(spec, nonneg[out.0]);
                let shape = ins.graph.value(out).shape.clone();
                let cells = cells_of(&spec, &shape, &node.name)?;
                let q = ins.new_quantizer(spec, QuantizerRole::Activation, cells, &node.name)?;
                after[n] = Some((q, QuantSite::Output { layer: node.name.clone() }));
            }
        }
        // Joins of activations share one quantizer.
        let is_join = matches!(node.op, Op::Binary(BinaryOp::Add) | Op::Concat { .. });
        if is_join
            && recipe.share_joins
            && let Some(spec) = recipe.join.or(recipe.input)
            && node.inputs.len() >= 2
            && node
                .inputs
                .iter()
                .all(|v| from_input[v.0] && ins.graph.value(*v).is_float())
            && !recipe.exclude.iter().any(|p| p.matches(&node.name))
        {
            let spec = recipe.act_spec(spec, node.inputs.iter().all(|v| nonneg[v.0]));
            let shape = ins.graph.value(node.inputs[0]).shape.clone();
            let cells = cells_of(&spec, &shape, &node.name)?;
            let q = ins.new_quantizer(spec, QuantizerRole::Activation, cells, &node.name)?;
            for slot in 0..node.inputs.len() {
                ins.quant_input(n, slot, q, QuantSite::Join { node: node.name.clone() }, false);
            }
        }
    }
    let graph = ins.finish(after)?;
    let owned = OwnedParams::from_graph(&graph, &owned_ids, device);
    Ok(QuantizedGraph {
        graph,
        quantizers: GraphQuantizers {
            quantizers: ins.quantizers,
        },
        owned,
    })
}

/// Stored scale cells of `spec` on a value of `shape` (1 per tensor, the channel count per
/// channel).
fn cells_of(spec: &QuantSpec, shape: &[usize], node: &str) -> Result<usize, GraphError> {
    spec.granularity
        .layout(shape)
        .map(|l| l.cells())
        .map_err(|source| GraphError::Core {
            at: format!("quantizer at `{node}` on shape {shape:?}"),
            source,
        })
}

struct Inserter {
    graph: Graph,
    quantizers: Vec<Quantizer>,
    device: Device,
    /// Quant nodes to emit before node `n`, with the input slot they replace:
    /// `(slot, quantizer, site, dedupe)`.
    before: Vec<Vec<(usize, usize, QuantSite, bool)>>,
    /// Activation value → its input quantizer.
    by_value: Vec<(ValueId, usize)>,
}

impl Inserter {
    fn new_quantizer(
        &mut self,
        spec: QuantSpec,
        role: QuantizerRole,
        cells: usize,
        node: &str,
    ) -> Result<usize, GraphError> {
        let q = QuantizerConfig::for_spec(spec, role)
            .with_cells(cells)
            .init(&self.device)
            .map_err(|source| GraphError::Quant {
                node: node.to_string(),
                source,
            })?;
        self.quantizers.push(q);
        Ok(self.quantizers.len() - 1)
    }

    fn quant_input(&mut self, n: usize, slot: usize, q: usize, site: QuantSite, dedupe: bool) {
        self.before[n].push((slot, q, site, dedupe));
    }

    /// Emits the quant nodes: before their readers (one node per value and quantizer when
    /// `dedupe`), after their layers for outputs.
    fn finish(&mut self, after: Vec<Option<(usize, QuantSite)>>) -> Result<Graph, GraphError> {
        let old = std::mem::take(&mut self.graph.nodes);
        let mut nodes = Vec::with_capacity(old.len() * 2);
        // (value, quantizer) → quantized value, for deduped inputs.
        let mut made: Vec<((ValueId, usize), ValueId)> = Vec::new();
        let mut renamed: Vec<(ValueId, ValueId)> = Vec::new();
        for (n, mut node) in old.into_iter().enumerate() {
            for &(from, to) in &renamed {
                for v in node.inputs.iter_mut() {
                    if *v == from {
                        *v = to;
                    }
                }
            }
            for (slot, q, site, dedupe) in std::mem::take(&mut self.before[n]) {
                let src = node.inputs[slot];
                let existing = made.iter().find(|(k, _)| *k == (src, q)).map(|(_, v)| *v);
                let out = match existing {
                    Some(v) if dedupe => v,
                    _ => {
                        let val = self.graph.value(src).clone();
                        let out = self.graph.add_value(val.shape, val.dtype, ValueOrigin::Node(0));
                        nodes.push(Node {
                            name: format!("{}.{}", node.name, site_suffix(&site, slot)),
                            op: Op::Quant(Box::new(QuantNode {
                                quantizer: q,
                                site,
                                spec: self.quantizers[q].spec,
                            })),
                            inputs: vec![src],
                            outputs: vec![out],
                        });
                        made.push(((src, q), out));
                        out
                    }
                };
                node.inputs[slot] = out;
            }
            let name = node.name.clone();
            let output = node.outputs[0];
            nodes.push(node);
            if let Some((q, site)) = after[n].clone() {
                let val = self.graph.value(output).clone();
                let out = self.graph.add_value(val.shape, val.dtype, ValueOrigin::Node(0));
                nodes.push(Node {
                    name: format!("{name}.output_quant"),
                    op: Op::Quant(Box::new(QuantNode {
                        quantizer: q,
                        site,
                        spec: self.quantizers[q].spec,
                    })),
                    inputs: vec![output],
                    outputs: vec![out],
                });
                renamed.push((output, out));
                for o in self.graph.outputs.iter_mut() {
                    if *o == output {
                        *o = out;
                    }
                }
            }
        }
        self.graph.nodes = nodes;
        self.graph.reindex()?;
        Ok(std::mem::take(&mut self.graph))
    }
}

fn site_suffix(site: &QuantSite, slot: usize) -> String {
    match site {
        QuantSite::Weight { .. } => "weight_quant".into(),
        QuantSite::Input { .. } => format!("input_quant{slot}"),
        QuantSite::Output { .. } => "output_quant".into(),
        QuantSite::Join { .. } => format!("join_quant{slot}"),
    }
}

impl Graph {
    /// For every value, whether it depends on a graph input (an activation) rather than only
    /// on parameters and constants.
    pub fn depends_on_inputs(&self) -> Vec<bool> {
        let mut dep = vec![false; self.values.len()];
        for &i in &self.inputs {
            dep[i.0] = true;
        }
        for node in &self.nodes {
            if node.inputs.iter().any(|v| dep[v.0]) {
                for o in &node.outputs {
                    dep[o.0] = true;
                }
            }
        }
        dep
    }
}

impl Graph {
    /// For every value, whether it is provably non-negative: outputs of ReLU, sigmoid,
    /// softmax, hard sigmoid, `exp`, `|x|`, `√x`, a clamp from ≥ 0, and what shape ops,
    /// pooling, concatenation, sums, means, maxima and products make of such values.
    pub fn nonnegative(&self) -> Vec<bool> {
        use crate::ir::{ReduceOp, ScalarOp, UnaryOp};
        let mut nn = vec![false; self.values.len()];
        let scalar_nonneg = |s: &burn::backend::ir::ScalarIr| match *s {
            burn::backend::ir::ScalarIr::Float(v) => v >= 0.0,
            burn::backend::ir::ScalarIr::Int(v) => v >= 0,
            burn::backend::ir::ScalarIr::UInt(_) => true,
            burn::backend::ir::ScalarIr::Bool(_) => true,
        };
        for node in &self.nodes {
            let all = node.inputs.iter().all(|v| nn[v.0]);
            let first = node.inputs.first().is_some_and(|v| nn[v.0]);
            let out = match &node.op {
                Op::Unary(
                    UnaryOp::Relu | UnaryOp::Sigmoid | UnaryOp::Exp | UnaryOp::Abs | UnaryOp::Sqrt,
                ) => true,
                Op::Softmax { .. } | Op::HardSigmoid { .. } => true,
                Op::Clamp { min, .. } => scalar_nonneg(min),
                Op::Scalar(ScalarOp::ClampMin, s) => scalar_nonneg(s),
                Op::Scalar(ScalarOp::Add | ScalarOp::Mul | ScalarOp::Div, s) => {
                    first && scalar_nonneg(s)
                }
                Op::Scalar(ScalarOp::ClampMax, _) => first,
                Op::Reshape
                | Op::Permute { .. }
                | Op::Expand
                | Op::Slice { .. }
                | Op::MaxPool2d { .. }
                | Op::AvgPool2d { .. }
                | Op::AdaptiveAvgPool2d { .. }
                | Op::Quant(_) => first,
                Op::Reduce { op: ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Max | ReduceOp::Min, .. } => first,
                Op::Concat { .. } | Op::Binary(BinaryOp::Add | BinaryOp::Mul) => all,
                _ => false,
            };
            for o in &node.outputs {
                nn[o.0] = out;
            }
        }
        nn
    }
}

impl QuantizedGraph {
    /// Runs the quantized graph on `inputs`, reading parameters from `model` (and from the
    /// graph's own folded parameters).
    pub fn forward<M: Module, I: GraphIo, O: GraphIo>(
        &self,
        model: &M,
        inputs: I,
    ) -> Result<O, GraphError> {
        run_bound(&self.graph, model, &self.owned, &self.quantizers, inputs)
    }

    /// Calibrates every static activation scale: runs each batch of `batches` through the
    /// graph with the quantizers observing (and passing values through unquantized), then
    /// writes each quantizer's statistic into its scale. Joins' shared quantizers see all
    /// their inputs.
    pub fn calibrate<M: Module, I: GraphIo>(
        self,
        model: &M,
        batches: impl IntoIterator<Item = I>,
    ) -> Result<Self, GraphError> {
        let QuantizedGraph {
            graph,
            quantizers,
            owned,
        } = self;
        let (quantizers, result) = calibrate(quantizers, |q| -> Result<usize, GraphError> {
            let mut seen = 0;
            for batch in batches {
                let _: Vec<DispatchTensor> = run_raw(&graph, model, &owned, q, batch.into_dispatch())?;
                seen += 1;
            }
            Ok(seen)
        })
        .map_err(|source| GraphError::Quant {
            node: "calibration".into(),
            source,
        })?;
        if result? == 0 {
            return Err(GraphError::Quant {
                node: "calibration".into(),
                source: burn_quant_nn::NnError::EmptyCalibration {
                    count: quantizers
                        .quantizers
                        .iter()
                        .filter(|q| q.has_stored_scale())
                        .count(),
                },
            });
        }
        Ok(QuantizedGraph {
            graph,
            quantizers,
            owned,
        })
    }

    /// Switches every weight quantizer on or off (`Stage2Result::apply` switches off the ones
    /// whose weights it put on their grid; switch them on again to fine-tune those weights
    /// with QAT, which then re-quantizes them at every step).
    pub fn with_weight_quantizers(self, enabled: bool) -> Self {
        self.with_weight_quantizers_of(enabled, |_| true)
    }

    /// Switches the weight quantizers of the parameters `select` accepts on or off.
    pub(crate) fn with_weight_quantizers_of(
        mut self,
        enabled: bool,
        select: impl Fn(&str) -> bool,
    ) -> Self {
        for node in &self.graph.nodes {
            if let Op::Quant(q) = &node.op
                && let QuantSite::Weight { param, .. } = &q.site
                && select(param)
            {
                let qz = self.quantizers.quantizers[q.quantizer].clone();
                self.quantizers.quantizers[q.quantizer] = qz.with_enabled(enabled);
            }
        }
        self
    }

    /// The trainable form: the model, the quantizers and the folded parameters as one Burn
    /// module whose forward runs the graph (graph-mode QAT).
    pub fn into_model<M: Module>(self, model: M) -> GraphModel<M> {
        GraphModel {
            model,
            quantizers: self.quantizers,
            owned: self.owned,
            graph: GraphHandle(Arc::new(self.graph)),
        }
    }
}

fn run_raw<M: Module>(
    graph: &Graph,
    model: &M,
    owned: &OwnedParams,
    quantizers: &GraphQuantizers,
    inputs: Vec<DispatchTensor>,
) -> Result<Vec<DispatchTensor>, GraphError> {
    let mut interp = Interpreter::new(graph, &device_of(&inputs));
    interp.bind(model);
    interp.bind(owned);
    interp.run_with(inputs, &QuantContext::new(quantizers))
}

fn run_bound<M: Module, I: GraphIo, O: GraphIo>(
    graph: &Graph,
    model: &M,
    owned: &OwnedParams,
    quantizers: &GraphQuantizers,
    inputs: I,
) -> Result<O, GraphError> {
    O::from_dispatch(run_raw(graph, model, owned, quantizers, inputs.into_dispatch())?)
}

/// A shared, immutable graph inside a module (skipped by Burn's module traversal).
#[derive(Clone, Debug)]
pub struct GraphHandle(pub Arc<Graph>);

/// A captured model with its quantizers, as one trainable Burn module: graph-mode QAT.
///
/// `forward` runs the quantized graph through the interpreter, reading the live parameters
/// of `model`, `owned` and `quantizers`; on an autodiff device gradients reach all three, so
/// any Burn optimizer (or burn-train) trains weights and learned scales together.
#[derive(Module, Debug)]
pub struct GraphModel<M: Module> {
    /// The user's model (its parameters; its own forward is not called).
    pub model: M,
    /// The quantizers.
    pub quantizers: GraphQuantizers,
    /// Parameters created by graph passes (folded BatchNorm).
    pub owned: OwnedParams,
    /// The graph.
    #[module(skip)]
    pub graph: GraphHandle,
}

impl<M: Module> GraphModel<M> {
    /// Runs the quantized graph.
    pub fn forward<I: GraphIo, O: GraphIo>(&self, inputs: I) -> Result<O, GraphError> {
        run_bound(&self.graph.0, &self.model, &self.owned, &self.quantizers, inputs)
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph.0
    }

    /// Back to the quantized graph (e.g. after training, for export), keeping the model.
    pub fn into_parts(self) -> (M, QuantizedGraph) {
        (
            self.model,
            QuantizedGraph {
                graph: Arc::unwrap_or_clone(self.graph.0),
                quantizers: self.quantizers,
                owned: self.owned,
            },
        )
    }
}
