//! Writing a quantized imported graph back into **its own** ONNX model.
//!
//! An imported model is exported the way onnxruntime's `quantize_static` writes one: the
//! original nodes, names, dynamic axes and metadata stay; quantized weights become integer
//! (or float8) codes feeding a `DequantizeLinear`; each activation quantizer becomes a
//! `QuantizeLinear → DequantizeLinear` pair in front of the nodes it serves; BatchNorm
//! folded by the recipe disappears (the convolution takes over its output name and gets the
//! folded weight and bias); weights changed by a graph pass (folding, equalization, QAT) are
//! written with their new values. The Q/DQ encodings are the graph lowering's own
//! ([`super::super::lower`]), so both exporters write the same bytes for the same quantizer.
//!
//! The opset is raised to what the encodings need (13 for per-channel scales, 19 for float8,
//! 21 for int4 and blocked scales), converting the ops whose form changed on the way:
//! `Softmax`/`LogSoftmax` (13, on the last axis), `Squeeze`/`Unsqueeze`/`ReduceSum` axes
//! (13) and the other reductions' axes (18) become inputs. A model below opset 11 that needs
//! raising is an error naming the op to convert first.

use std::collections::{HashMap, HashSet};

use burn::tensor::TensorData;
use burn_quant_export::onnx::proto::{
    AttributeProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};
use burn_quant_export::onnx::{OnnxGraph, Qdq, ir_version_for_opset};

use super::{ImportedGraph, OnnxModel, ParamSource, import_err, node_at};
use crate::GraphError;
use crate::ir::{Op, ValueOrigin};
use crate::onnx::OnnxExport;
use crate::onnx::lower::Lowering;
use crate::onnx::tensors::tensor_proto;
use crate::quantize::{QuantSite, QuantizedGraph};
use crate::stage2::Stage2Result;

/// How one graph parameter is written back.
enum ParamRepr {
    /// Unchanged: the original initializer.
    Original,
    /// Quantized by quantizer node `k` (emitted on first use).
    Quantized(usize),
    /// New float values (a pass changed them), in a new initializer.
    Changed(TensorData),
}

/// The model `model` with the quantizers of `qg` (a quantization of `imported`, which came
/// from `model`) as QuantizeLinear/DequantizeLinear nodes; `stage2` gives weights whose codes
/// a Stage 2 algorithm decided.
pub fn export_qdq(
    model: &OnnxModel,
    imported: &ImportedGraph,
    qg: &QuantizedGraph,
    stage2: Option<&Stage2Result>,
) -> Result<ModelProto, GraphError> {
    let graph = &qg.graph;
    let mut ex = OnnxExport::quantized(qg);
    if let Some(s) = stage2 {
        ex = ex.with_stage2(s);
    }
    let nodes = model.nodes();
    let mut low = Lowering::<Qdq>::new(&ex, model.opset, &[]);
    // Q/DQ names must not collide with the model's own.
    let mut scratch = OnnxGraph::new(model.opset);
    let proto_graph = model.proto.graph.as_ref().expect("checked at load");
    for name in proto_graph
        .input
        .iter()
        .map(|v| &v.name)
        .chain(proto_graph.initializer.iter().map(|t| &t.name))
        .chain(nodes.iter().flat_map(|n| n.output.iter()))
    {
        scratch.define(name);
    }
    low.g = scratch;
    // Activation values are read by their ONNX names.
    for (v, value) in graph.values.iter().enumerate() {
        if v < imported.onnx_value.len()
            && imported.onnx_value[v].is_some()
            && !matches!(
                value.origin,
                ValueOrigin::Param(_) | ValueOrigin::Constant(_)
            )
        {
            low.names[v] = Some(value.name.clone());
        }
    }
    // Graph node name → ONNX node.
    let onnx_of: HashMap<&str, usize> = imported
        .graph
        .nodes
        .iter()
        .zip(&imported.onnx_node)
        .map(|(n, &o)| (n.name.as_str(), o))
        .collect();
    let imported_nodes: HashSet<usize> = imported.onnx_node.iter().copied().collect();
    let mut present: HashMap<usize, Vec<usize>> = HashMap::new();
    for (k, node) in graph.nodes.iter().enumerate() {
        if let Some(&o) = onnx_of.get(node.name.as_str()) {
            present.entry(o).or_default().push(k);
        }
    }
    let consumers = graph.consumers();
    let outputs: HashSet<_> = graph.outputs.iter().copied().collect();
    // Activation quantizers by (ONNX node served, ONNX value read); weight quantizers by
    // parameter path.
    let mut act: HashMap<(usize, String), usize> = HashMap::new();
    // Imported Q/DQ pairs: kept as written while the quantizer holds the file's parameters;
    // otherwise dropped, their readers re-pointed at the value they quantized.
    let mut alias: HashMap<String, String> = HashMap::new();
    let mut kept_pairs: HashSet<String> = HashSet::new();
    for a in &imported.activation_quants {
        let q = qg.quantizers.quantizers.get(a.quantizer);
        let unchanged = q.is_some_and(|q| {
            let host = |t: &Option<burn::module::Param<burn::tensor::Tensor<1>>>| {
                t.as_ref().map(|p| {
                    p.val()
                        .into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .unwrap_or_default()
                })
            };
            q.enabled
                && host(&q.scale).as_deref() == Some(&a.scales[..])
                && host(&q.zero_point) == a.zero_points
        });
        if unchanged {
            kept_pairs.insert(a.quant_node.clone());
        } else {
            let q_node = &nodes[a.onnx_q];
            alias.insert(nodes[a.onnx_dq].output[0].clone(), q_node.input[0].clone());
        }
    }
    let dropped_qdq: HashSet<usize> = imported
        .activation_quants
        .iter()
        .filter(|a| !kept_pairs.contains(&a.quant_node))
        .flat_map(|a| [a.onnx_q, a.onnx_dq])
        .collect();
    let mut weight_quant: HashMap<String, usize> = HashMap::new();
    let mut output_quants: Vec<usize> = Vec::new();
    for (k, node) in graph.nodes.iter().enumerate() {
        let Op::Quant(q) = &node.op else { continue };
        let x = node.inputs[0];
        if kept_pairs.contains(&node.name) {
            continue;
        }
        if outputs.contains(&node.outputs[0]) && !matches!(q.site, QuantSite::Weight { .. }) {
            // Emitted after the nodes, under the output's name.
            output_quants.push(k);
            continue;
        }
        if let QuantSite::Weight { param, .. } = &q.site {
            weight_quant.insert(param.clone(), k);
            continue;
        }
        if matches!(
            graph.value(x).origin,
            ValueOrigin::Param(_) | ValueOrigin::Constant(_)
        ) {
            return Err(import_err(
                format!("quantizer `{}`", node.name),
                "an activation quantizer on a constant cannot be written into the model",
            ));
        }
        let Some(read) = low.names[x.0].clone() else {
            return Err(import_err(
                format!("quantizer `{}`", node.name),
                format!(
                    "it quantizes `{}`, a value inside the expansion of one ONNX node, which the \
                     model has no name for",
                    graph.value(x).name
                ),
            ));
        };
        for &c in &consumers[node.outputs[0].0] {
            let Some(&o) = onnx_of.get(graph.nodes[c].name.as_str()) else {
                return Err(import_err(
                    format!("quantizer `{}`", node.name),
                    format!("its reader `{}` is not an ONNX node", graph.nodes[c].name),
                ));
            };
            act.insert((o, read.clone()), k);
        }
    }
    // Parameters: by the initializer they came from.
    let mut params: HashMap<String, (usize, ParamRepr)> = HashMap::new();
    let mut new_params: HashMap<String, usize> = HashMap::new();
    // Weights the model stored as DequantizeLinear codes keep their node when the codes are
    // still the imported ones.
    let stage2_codes: HashMap<&str, &burn_quant_nn::AnyQuantTensor> = stage2
        .map(|r| {
            r.weights
                .iter()
                .map(|w| (w.path.as_str(), &w.tensor))
                .collect()
        })
        .unwrap_or_default();
    for (i, p) in graph.params.iter().enumerate() {
        let source = imported.param_sources.get(i).cloned();
        let init_name = match source {
            Some(ParamSource::Transposed) => {
                p.path.strip_suffix(".T").unwrap_or(&p.path).to_string()
            }
            _ => p.path.clone(),
        };
        if let Some(&k) = weight_quant.get(&p.path) {
            let unchanged = imported
                .weight_quants
                .iter()
                .find(|w| w.path == p.path)
                .is_some_and(|w| {
                    stage2_codes
                        .get(p.path.as_str())
                        .is_some_and(|t| same_codes(w, t))
                });
            let repr = if unchanged {
                ParamRepr::Original
            } else {
                ParamRepr::Quantized(k)
            };
            params.insert(init_name, (i, repr));
            continue;
        }
        let current = match low.data_of(p.value) {
            Some(d) => d?,
            None => continue,
        };
        let Some(imported_param) = imported.graph.params.get(i).filter(|_| source.is_some()) else {
            // A parameter a pass created (the bias of a convolution BatchNorm folded into).
            new_params.insert(p.path.clone(), i);
            params.insert(p.path.clone(), (i, ParamRepr::Changed(current)));
            continue;
        };
        let original = imported_param.data.clone().convert::<f32>();
        let repr = if original.as_bytes() == current.as_bytes() {
            ParamRepr::Original
        } else {
            ParamRepr::Changed(match source {
                Some(ParamSource::Transposed) => super::ops::transpose_host(&current, &[1, 0]),
                _ => current,
            })
        };
        params.insert(init_name, (i, repr));
    }
    let mut emitted_q: HashMap<usize, String> = HashMap::new();
    let mut param_names: HashMap<String, String> = HashMap::new();
    let mut original_outputs: HashSet<String> = HashSet::new();
    for &n in &model.order {
        let src = &nodes[n];
        if dropped_qdq.contains(&n) {
            continue;
        }
        let here = present.get(&n);
        if kept_pairs
            .iter()
            .any(|k| here.is_some_and(|ks| ks.iter().any(|&i| graph.nodes[i].name == *k)))
        {
            // An imported pair kept as written: the DequantizeLinear itself.
            original_outputs.insert(src.output.first().cloned().unwrap_or_default());
            low.g.push_node(src.clone());
            continue;
        }
        if here.is_none() && imported_nodes.contains(&n) {
            if src.op_type == "BatchNormalization" {
                // Folded into the convolution before it, which now writes its output.
                continue;
            }
            return Err(import_err(
                node_at(src, n),
                "a graph pass removed it, which export cannot write",
            ));
        }
        let mut node = src.clone();
        // The graph node carrying this ONNX node's name (the layer of a layer node).
        let main = here.and_then(|ks| {
            ks.iter()
                .copied()
                .find(|&k| graph.nodes[k].name == onnx_name(src, n))
        });
        for slot in 0..node.input.len() {
            let read = node.input[slot].clone();
            if read.is_empty() {
                continue;
            }
            let read = alias.get(&read).cloned().unwrap_or(read);
            node.input[slot] = read.clone();
            // The name the graph knows the value by (an Identity's output is its input).
            let read = imported
                .onnx_names
                .get(&read)
                .and_then(|v| low.names.get(v.0).cloned().flatten())
                .unwrap_or(read);
            if let Some(&k) = act.get(&(n, read.clone())) {
                let name = match emitted_q.get(&k) {
                    Some(name) => name.clone(),
                    None => {
                        let Op::Quant(q) = &graph.nodes[k].op else {
                            unreachable!()
                        };
                        let name = low.quant(&graph.nodes[k], q)?;
                        emitted_q.insert(k, name.clone());
                        name
                    }
                };
                node.input[slot] = name;
                continue;
            }
            if params.contains_key(&read) {
                node.input[slot] = param_value(
                    &read,
                    &params,
                    &mut param_names,
                    &mut low,
                    graph,
                    imported,
                    model,
                )?;
            }
        }
        // A bias a pass created (a convolution without one, BatchNorm folded into it).
        if let Some(k) = main
            && matches!(src.op_type.as_str(), "Conv" | "ConvTranspose")
            && graph.nodes[k].inputs.len() == 3
            && node.input.get(2).is_none_or(|s| s.is_empty())
        {
            let b = graph.nodes[k].inputs[2];
            let path = graph
                .params
                .iter()
                .find(|p| p.value == b)
                .map(|p| p.path.clone());
            if let Some(path) = path.filter(|p| new_params.contains_key(p)) {
                let name = param_value(
                    &path,
                    &params,
                    &mut param_names,
                    &mut low,
                    graph,
                    imported,
                    model,
                )?;
                node.input.resize(2, String::new());
                node.input.push(name);
            }
        }
        // The layer now writes the value its folded BatchNorm wrote.
        if let Some(k) = main
            && matches!(src.op_type.as_str(), "Conv" | "ConvTranspose")
        {
            let out = graph.nodes[k].outputs[0];
            let name = &graph.value(out).name;
            if imported.onnx_value.get(out.0).is_some_and(|n| n.is_some())
                && node.output.first() != Some(name)
            {
                node.output[0] = name.clone();
            }
        }
        original_outputs.insert(node.output.first().cloned().unwrap_or_default());
        low.g.push_node(node);
    }
    // Every activation quantizer must have reached the nodes it serves.
    for &k in act.values() {
        if !emitted_q.contains_key(&k) {
            return Err(import_err(
                format!("quantizer `{}`", graph.nodes[k].name),
                "no node of the model reads the value it quantizes under a name the export \
                 could match; it would be silently dropped",
            ));
        }
    }
    // Quantizers on graph outputs: the pair ends in the output's own name (the value it
    // quantizes is renamed when it had that name).
    for k in output_quants {
        let node = &graph.nodes[k];
        let Op::Quant(q) = &node.op else {
            unreachable!()
        };
        let position = graph
            .outputs
            .iter()
            .position(|&o| o == node.outputs[0])
            .expect("a graph output");
        let final_name = proto_graph.output[position].name.clone();
        let x = node.inputs[0];
        let Some(read) = low.names[x.0].clone() else {
            return Err(import_err(
                format!("quantizer `{}`", node.name),
                "it quantizes a value the model has no name for",
            ));
        };
        if read == final_name {
            let float = low.g.fresh(&format!("{final_name}.float"));
            low.g.rename_output(&read, &float);
            original_outputs.insert(float.clone());
            original_outputs.remove(&read);
            low.names[x.0] = Some(float);
        }
        let emitted = low.quant(node, q)?;
        low.g.rename_output(&emitted, &final_name);
    }
    let parts = std::mem::take(&mut low.g).into_parts();
    let target = parts.opset.max(model.opset);
    let mut out_nodes = Vec::with_capacity(parts.nodes.len());
    let mut extra_inits = Vec::new();
    // Ranks of the model's values, for the Softmax axis rule.
    // (A node reading a Q/DQ output finds its rank in the pair's value info.)
    let mut rank: HashMap<&str, usize> = imported
        .graph
        .values
        .iter()
        .zip(&imported.onnx_value)
        .filter_map(|(v, n)| n.as_deref().map(|n| (n, v.shape.len())))
        .collect();
    for vi in &parts.value_info {
        if let Some(burn_quant_export::onnx::proto::type_proto::Value::TensorType(t)) =
            vi.r#type.as_ref().and_then(|t| t.value.as_ref())
            && let Some(shape) = &t.shape
        {
            rank.insert(vi.name.as_str(), shape.dim.len());
        }
    }
    for mut node in parts.nodes {
        let original = node
            .output
            .first()
            .is_some_and(|o| original_outputs.contains(o));
        if original && target > model.opset {
            let r = node
                .input
                .first()
                .and_then(|i| rank.get(i.as_str()).copied());
            upgrade(&mut node, model.opset, target, r, &mut extra_inits)?;
        }
        out_nodes.push(node);
    }
    let mut proto = model.proto.clone();
    let g = proto.graph.as_mut().expect("checked at load");
    // Nodes whose outputs nothing reads any more (a DequantizeLinear replaced by new codes).
    loop {
        let read: HashSet<&str> = out_nodes
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .chain(g.output.iter().map(|o| o.name.as_str()))
            .collect();
        let dead: Vec<usize> = (0..out_nodes.len())
            .filter(|&i| {
                out_nodes[i]
                    .output
                    .iter()
                    .all(|o| o.is_empty() || !read.contains(o.as_str()))
            })
            .collect();
        if dead.is_empty() {
            break;
        }
        let dead: HashSet<usize> = dead.into_iter().collect();
        out_nodes = out_nodes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !dead.contains(i))
            .map(|(_, n)| n)
            .collect();
    }
    let read: HashSet<&str> = out_nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(g.output.iter().map(|o| o.name.as_str()))
        .collect();
    let mut initializers: Vec<TensorProto> = g
        .initializer
        .iter()
        .filter(|t| read.contains(t.name.as_str()))
        .cloned()
        .collect();
    initializers.extend(parts.initializers);
    initializers.extend(extra_inits);
    // Old inputs that listed initializers now gone are dropped with them.
    let kept: HashSet<String> = initializers.iter().map(|t| t.name.clone()).collect();
    let all_inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    g.input
        .retain(|i| !all_inits.contains(i.name.as_str()) || kept.contains(&i.name));
    let defined: HashSet<&str> = out_nodes
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    g.value_info.retain(|v| defined.contains(v.name.as_str()));
    g.node = out_nodes;
    g.initializer = initializers;
    for o in proto
        .opset_import
        .iter_mut()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        o.version = target;
    }
    if !proto
        .opset_import
        .iter()
        .any(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        proto.opset_import.push(OperatorSetIdProto {
            domain: String::new(),
            version: target,
        });
    }
    for (d, v) in parts.domains {
        if !proto.opset_import.iter().any(|o| o.domain == d) {
            proto.opset_import.push(OperatorSetIdProto {
                domain: d,
                version: v,
            });
        }
    }
    proto.ir_version = proto.ir_version.max(ir_version_for_opset(target));
    proto.metadata_props.extend(parts.metadata);
    Ok(proto)
}

/// Whether `t` holds exactly the imported codes, scales and zero-points of `w`.
fn same_codes(w: &super::ImportedWeightQuant, t: &burn_quant_nn::AnyQuantTensor) -> bool {
    let Ok(h) = burn_quant_export::onnx::HostQuant::from_any(t, &w.path) else {
        return false;
    };
    h.shape == w.shape
        && h.codes == w.codes
        && h.scales == w.scales
        && h.zero_points == w.zero_points
        && h.spec == w.spec
}

fn onnx_name(node: &NodeProto, n: usize) -> String {
    if node.name.is_empty() {
        format!("{}_{n}", node.op_type)
    } else {
        node.name.clone()
    }
}

/// The ONNX value that stands for parameter `init` (an initializer name or a created
/// parameter's path), emitting its codes or new values on first use.
fn param_value(
    init: &str,
    params: &HashMap<String, (usize, ParamRepr)>,
    names: &mut HashMap<String, String>,
    low: &mut Lowering<'_, '_, Qdq>,
    graph: &crate::ir::Graph,
    imported: &ImportedGraph,
    model: &OnnxModel,
) -> Result<String, GraphError> {
    if let Some(n) = names.get(init) {
        return Ok(n.clone());
    }
    let (i, repr) = &params[init];
    let name = match repr {
        ParamRepr::Original => init.to_string(),
        ParamRepr::Quantized(k) => {
            let node = graph.nodes[*k].clone();
            let Op::Quant(q) = &node.op else {
                unreachable!()
            };
            let dq = low.quant(&node, q)?;
            if imported.param_sources.get(*i) == Some(&ParamSource::Transposed) {
                // Codes in the graph's `[K, N]`; the model's Gemm reads `[N, K]`.
                let shape = graph.value(graph.params[*i].value).shape.clone();
                let val = burn_quant_export::onnx::Val::f32(&[shape[1], shape[0]]);
                low.g.node(
                    "Transpose",
                    "",
                    &[&dq],
                    &format!("{init}.transposed"),
                    vec![AttributeProto::ints("perm", &[1, 0])],
                    val,
                )
            } else {
                dq
            }
        }
        ParamRepr::Changed(data) => {
            let dims: Vec<usize> = match model.initializer(init) {
                Some(t) => t.dims.iter().map(|&d| d as usize).collect(),
                None => data.shape().as_slice().to_vec(),
            };
            let t = tensor_proto(init, data, &dims)
                .map_err(|r| import_err(format!("parameter `{init}`"), r))?;
            low.g.initializer(t)
        }
    };
    names.insert(init.to_string(), name.clone());
    Ok(name)
}

/// Rewrites an original node for a higher opset where its form changed.
fn upgrade(
    node: &mut NodeProto,
    from: i64,
    to: i64,
    rank: Option<usize>,
    inits: &mut Vec<TensorProto>,
) -> Result<(), GraphError> {
    let axes_to_input = |node: &mut NodeProto, inits: &mut Vec<TensorProto>| {
        if let Some(pos) = node.attribute.iter().position(|a| a.name == "axes") {
            let a = node.attribute.remove(pos);
            let name = format!(
                "{}.axes",
                if node.name.is_empty() {
                    &node.output[0]
                } else {
                    &node.name
                }
            );
            inits.push(TensorProto::i64s(&name, &[a.ints.len()], &a.ints));
            node.input.resize(1, String::new());
            node.input.push(name);
        }
    };
    let needs = |v: i64| from < v && to >= v;
    let op = node.op_type.clone();
    match op.as_str() {
        "Squeeze" | "Unsqueeze" | "ReduceSum" if needs(13) => axes_to_input(node, inits),
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2"
        | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare"
            if needs(18) =>
        {
            axes_to_input(node, inits)
        }
        "Softmax" | "LogSoftmax" | "Hardmax" if needs(13) => {
            // Before 13 the input is flattened to 2-D at `axis`; on the last axis both forms
            // agree, elsewhere the op would change meaning.
            let axis = node
                .attribute
                .iter()
                .find(|a| a.name == "axis")
                .and_then(|a| a.i)
                .unwrap_or(1);
            let last = rank.is_some_and(|r| axis == -1 || axis + 1 == r as i64);
            if !last {
                return Err(import_err(
                    format!("node `{}` ({op})", node.name),
                    format!(
                        "raising opset {from} to {to} changes its axis semantics (axis {axis}); convert the model with onnx.version_converter first"
                    ),
                ));
            }
            node.attribute.retain(|a| a.name != "axis");
            node.attribute.push(AttributeProto::int("axis", -1));
        }
        "Clip" | "Slice" | "Resize" | "Upsample" | "Dropout" | "Split" | "Pad" if from < 11 => {
            return Err(import_err(
                format!("node `{}` ({op})", node.name),
                format!(
                    "raising opset {from} to {to} changes its form; convert the model to opset 11 or newer with onnx.version_converter first"
                ),
            ));
        }
        _ => {}
    }
    Ok(())
}
