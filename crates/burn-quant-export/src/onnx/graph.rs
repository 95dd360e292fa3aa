//! The mutable graph under construction: nodes, initializers and the operator-set versions
//! they need. Shared by the sequential layer builder ([`super::OnnxModelBuilder`]) and the
//! graph-mode lowering of `burn-quant-graph`, so both write the same encodings.

use std::collections::{BTreeMap, HashSet};

use super::proto::{
    AttributeProto, DataType, Dim, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, ValueInfoProto,
};

/// Element type and shape of a value produced by a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Val {
    /// Element type.
    pub dtype: DataType,
    /// Shape (a symbolic first axis for a dynamic batch).
    pub dims: Vec<Dim>,
}

impl Val {
    /// A FLOAT value of fixed shape.
    pub fn f32(shape: &[usize]) -> Self {
        Self::fixed(DataType::Float, shape)
    }
    /// A value of fixed shape.
    pub fn fixed(dtype: DataType, shape: &[usize]) -> Self {
        Self {
            dtype,
            dims: shape.iter().map(|&d| Dim::Fixed(d)).collect(),
        }
    }
    /// The same shape with another element type.
    pub fn with_dtype(&self, dtype: DataType) -> Self {
        Self {
            dtype,
            dims: self.dims.clone(),
        }
    }
}

/// An ONNX graph under construction: nodes, initializers and value types being collected, with
/// the lowest default-domain opset that holds every node emitted so far and the custom domains
/// used. Names are made unique as they are added ([`OnnxGraph::fresh`]); [`OnnxGraph::finish`]
/// turns it into a [`ModelProto`].
///
/// The quantized parts are written by a style's emitters
/// ([`super::QuantStyle::emit_weight`], [`super::QuantStyle::emit_activation`]); plain ops with
/// [`OnnxGraph::node`].
#[derive(Debug, Default)]
pub struct OnnxGraph {
    pub(crate) nodes: Vec<NodeProto>,
    pub(crate) initializers: Vec<TensorProto>,
    /// Type and shape of every node output.
    pub(crate) value_info: Vec<ValueInfoProto>,
    /// Every value name defined so far (graph input, initializers, node outputs).
    names: HashSet<String>,
    /// Lowest default-domain opset that holds every node.
    pub(crate) opset: i64,
    /// Custom domains and their versions.
    pub(crate) domains: BTreeMap<String, i64>,
    /// `(key, value)` metadata describing what was exported.
    pub(crate) metadata: Vec<(String, String)>,
}

impl OnnxGraph {
    /// An empty graph whose nodes need at least `opset` (a style's graphs start from
    /// [`super::QuantStyle::new_graph`], which imports its custom domains too).
    pub fn new(opset: i64) -> Self {
        Self {
            opset,
            ..Default::default()
        }
    }

    /// Records an externally defined value name (the graph input).
    pub fn define(&mut self, name: &str) {
        self.names.insert(name.to_string());
    }

    /// `base` if no value has that name yet, otherwise `base_1`, `base_2`, …
    pub fn fresh(&self, base: &str) -> String {
        if !self.names.contains(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.names.contains(n))
            .expect("an unused suffix exists")
    }

    /// Adds an initializer under a fresh name derived from its own; returns the name used.
    pub fn initializer(&mut self, mut tensor: TensorProto) -> String {
        let name = self.fresh(&tensor.name);
        tensor.name = name.clone();
        self.names.insert(name.clone());
        self.initializers.push(tensor);
        name
    }

    /// Raises the default-domain opset to at least `version`.
    pub fn need_opset(&mut self, version: i64) {
        self.opset = self.opset.max(version);
    }

    /// Imports custom `domain` at `version` (the highest requested wins).
    pub fn need_domain(&mut self, domain: &str, version: i64) {
        let v = self.domains.entry(domain.to_string()).or_insert(version);
        *v = (*v).max(version);
    }

    /// Appends a node with one output of type `val`, named (freshly) after `output`; returns
    /// that name.
    pub fn node(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
        val: Val,
    ) -> String {
        let out = self.fresh(output);
        self.names.insert(out.clone());
        self.value_info
            .push(ValueInfoProto::tensor(&out, val.dtype, &val.dims));
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op_type.into(),
            domain: domain.into(),
            attribute,
            doc_string: String::new(),
        });
        out
    }

    /// Appends a node as given (a node of an existing model being rewritten), registering
    /// its outputs' names.
    pub fn push_node(&mut self, node: NodeProto) {
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            self.names.insert(o.clone());
        }
        self.nodes.push(node);
    }

    /// The parts collected so far, for splicing into an existing model: nodes,
    /// initializers, value infos, the default-domain opset they need, custom domains and
    /// `burnq.spec.<key>` metadata.
    pub fn into_parts(self) -> OnnxGraphParts {
        OnnxGraphParts {
            nodes: self.nodes,
            initializers: self.initializers,
            value_info: self.value_info,
            opset: self.opset,
            domains: self.domains.into_iter().collect(),
            metadata: self
                .metadata
                .into_iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: format!("burnq.spec.{k}"),
                    value: v,
                })
                .collect(),
        }
    }

    /// Renames the value `from` (the output of the last node producing it) to `to`.
    /// Returns `false` when no node produces `from` (it is the graph input).
    pub fn rename_output(&mut self, from: &str, to: &str) -> bool {
        let Some(node) = self
            .nodes
            .iter_mut()
            .rev()
            .find(|n| n.output.iter().any(|o| o == from))
        else {
            return false;
        };
        for o in node.output.iter_mut().filter(|o| *o == from) {
            *o = to.to_string();
        }
        if node.name == from {
            node.name = to.to_string();
        }
        for n in self.nodes.iter_mut() {
            for i in n.input.iter_mut().filter(|i| *i == from) {
                *i = to.to_string();
            }
        }
        for v in self.value_info.iter_mut().filter(|v| v.name == from) {
            v.name = to.to_string();
        }
        self.names.remove(from);
        self.names.insert(to.to_string());
        true
    }

    /// Whether a value of that name exists.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The lowest default-domain opset that holds every node emitted so far.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Records `(key, value)` model metadata (written as `burnq.spec.<key>`), e.g. the spec
    /// a quantizer was exported with.
    pub fn annotate(&mut self, key: &str, value: &str) {
        self.metadata.push((key.to_string(), value.to_string()));
    }

    /// The finished model: graph `name` with `inputs` and `outputs` (which must name values of
    /// the graph; their types are taken from the value infos given and dropped from the
    /// intermediate ones), the default-domain opset the nodes need, the IR version that goes
    /// with it, custom domains, and the metadata as `burnq.spec.<key>` properties.
    pub fn finish(
        mut self,
        name: &str,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
    ) -> ModelProto {
        self.value_info
            .retain(|v| !outputs.iter().chain(&inputs).any(|o| o.name == v.name));
        let opset = self.opset;
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }];
        opset_import.extend(self.domains.iter().map(|(d, v)| OperatorSetIdProto {
            domain: d.clone(),
            version: *v,
        }));
        let metadata_props = self
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: format!("burnq.spec.{k}"),
                value: v.clone(),
            })
            .collect();
        ModelProto {
            ir_version: ir_version_for_opset(opset),
            opset_import,
            producer_name: "burn-quant".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.initializers,
                input: inputs,
                output: outputs,
                value_info: self.value_info,
                ..Default::default()
            }),
            metadata_props,
            ..Default::default()
        }
    }
}

/// What [`OnnxGraph::into_parts`] returns.
#[derive(Clone, Debug)]
pub struct OnnxGraphParts {
    /// Nodes in the order emitted.
    pub nodes: Vec<NodeProto>,
    /// Initializers.
    pub initializers: Vec<TensorProto>,
    /// Types of node outputs.
    pub value_info: Vec<ValueInfoProto>,
    /// Lowest default-domain opset that holds every node.
    pub opset: i64,
    /// Custom domains and their versions.
    pub domains: Vec<(String, i64)>,
    /// `burnq.spec.<key>` metadata.
    pub metadata: Vec<StringStringEntryProto>,
}

/// The IR version that goes with a default-domain opset (onnx's own version table: the IR
/// version of the first onnx release that shipped that opset).
pub fn ir_version_for_opset(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        23 => 11,
        24 => 12,
        25..=27 => 13,
        _ => 14,
    }
}
