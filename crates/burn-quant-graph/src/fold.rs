//! BatchNorm folding at graph level.
//!
//! An inference BatchNorm right after a convolution is an affine map per output channel, so
//! it folds into the convolution: `W' = W · γ/√(σ²+ε)` (per output channel) and
//! `b' = (b − μ) · γ/√(σ²+ε) + β`. Quantizing the folded weight is what an integer backend
//! runs (Brevitas and onnxruntime fold before quantizing, too).
//!
//! The folded weight and bias are new parameters owned by the graph (fresh `ParamId`s, the
//! convolution's paths), so the user's model is not touched and QAT trains the folded values.

use burn::module::ParamId;
use burn::tensor::TensorData;

use crate::GraphError;
use crate::ir::{Graph, GraphParam, Op, ValueId, ValueOrigin};

/// Host data of a parameter or constant value, as f64.
fn data_of(graph: &Graph, v: ValueId) -> Option<Vec<f64>> {
    let data = match graph.value(v).origin {
        ValueOrigin::Param(i) => &graph.params[i].data,
        ValueOrigin::Constant(i) => &graph.constants[i].data,
        _ => return None,
    };
    data.try_to_vec::<f32>()
        .ok()
        .map(|v| v.into_iter().map(f64::from).collect())
}

/// Folds every inference BatchNorm whose input is a convolution's output read by nothing
/// else into that convolution. Returns the ids of the parameters it created (the folded
/// weights and biases), which the graph owns.
pub fn fold_batch_norms(graph: &mut Graph) -> Result<Vec<ParamId>, GraphError> {
    let mut owned = Vec::new();
    let mut remove = vec![false; graph.nodes.len()];
    let consumers = graph.consumers();
    #[allow(clippy::needless_range_loop)] // the body rewrites `graph.nodes` by index
    for b in 0..graph.nodes.len() {
        let Op::BatchNorm { epsilon } = graph.nodes[b].op else {
            continue;
        };
        let bn_inputs = graph.nodes[b].inputs.clone();
        let x = bn_inputs[0];
        let Some(c) = graph.producer(x) else { continue };
        if consumers[x.0].len() != 1
            || !matches!(graph.nodes[c].op, Op::Conv1d { .. } | Op::Conv2d { .. })
        {
            continue;
        }
        let w_val = graph.nodes[c].inputs[1];
        let Some(w_index) = graph.params.iter().position(|p| p.value == w_val) else {
            continue;
        };
        let (Some(gamma), Some(beta), Some(mean), Some(var)) = (
            data_of(graph, bn_inputs[1]),
            data_of(graph, bn_inputs[2]),
            data_of(graph, bn_inputs[3]),
            data_of(graph, bn_inputs[4]),
        ) else {
            continue;
        };
        let w_shape = graph.value(w_val).shape.clone();
        let out_ch = w_shape[0];
        if [gamma.len(), beta.len(), mean.len(), var.len()] != [out_ch; 4] {
            return Err(GraphError::Malformed(format!(
                "BatchNorm after `{}` has {} channels, the convolution {out_ch}",
                graph.nodes[c].name,
                gamma.len()
            )));
        }
        let Some(w) = data_of(graph, w_val) else { continue };
        let has_bias = matches!(graph.nodes[c].op, Op::Conv1d { bias: true, .. } | Op::Conv2d { bias: true, .. });
        let bias = if has_bias {
            match data_of(graph, graph.nodes[c].inputs[2]) {
                Some(b) => b,
                None => continue,
            }
        } else {
            vec![0.0; out_ch]
        };
        let per = w.len() / out_ch;
        let factor: Vec<f64> = (0..out_ch)
            .map(|o| gamma[o] / (var[o] + epsilon).sqrt())
            .collect();
        let folded_w: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, &v)| (v * factor[i / per]) as f32)
            .collect();
        let folded_b: Vec<f32> = (0..out_ch)
            .map(|o| ((bias[o] - mean[o]) * factor[o] + beta[o]) as f32)
            .collect();
        let layer = graph.nodes[c].name.clone();
        // The folded weight replaces the weight parameter in place (same value, same path, a
        // fresh id): the model's own weight is no longer read.
        let w_id = ParamId::new();
        graph.params[w_index].id = Some(w_id);
        graph.params[w_index].data = TensorData::new(folded_w, w_shape.clone());
        owned.push(w_id);
        let b_id = ParamId::new();
        let b_data = TensorData::new(folded_b, [out_ch]);
        if has_bias {
            let b_val = graph.nodes[c].inputs[2];
            let b_index = graph
                .params
                .iter()
                .position(|p| p.value == b_val)
                .ok_or_else(|| GraphError::Malformed(format!("bias of `{layer}` is not a parameter")))?;
            graph.params[b_index].id = Some(b_id);
            graph.params[b_index].data = b_data;
        } else {
            let k = graph.params.len();
            let dtype = graph.value(w_val).dtype;
            let v = graph.add_value(vec![out_ch], dtype, ValueOrigin::Param(k));
            let path = graph.params[w_index]
                .path
                .strip_suffix(".weight")
                .map(|m| format!("{m}.bias"))
                .unwrap_or_else(|| format!("{layer}.bias"));
            graph.values[v.0].name = path.clone();
            graph.params.push(GraphParam {
                path,
                id: Some(b_id),
                value: v,
                data: b_data,
            });
            graph.nodes[c].inputs.push(v);
            match &mut graph.nodes[c].op {
                Op::Conv1d { bias, .. } | Op::Conv2d { bias, .. } => *bias = true,
                _ => unreachable!("matched above"),
            }
        }
        owned.push(b_id);
        graph.nodes[c].outputs = graph.nodes[b].outputs.clone();
        remove[b] = true;
    }
    let mut i = 0;
    graph.nodes.retain(|_| {
        i += 1;
        !remove[i - 1]
    });
    graph.reindex()?;
    Ok(owned)
}
