//! Data-free cross-layer equalization (CLE): Nagel et al. 2019, "Data-Free Quantization Through
//! Weight Equalization and Bias Correction", §4.1 (AIMET's and Brevitas's `EqualizeGraph`).
//!
//! # Why
//!
//! A per-tensor weight grid is set by the layer's widest output channel: when one channel's
//! weights reach 100 and another's 0.01 (typical after BatchNorm folding, above all in
//! depthwise convolutions), the small channel rounds to zero. Equalization moves range between
//! two consecutive layers without changing the float function, so that every channel of both
//! weights uses the grid about equally.
//!
//! # The algorithm
//!
//! For a chain `layer1 → f → layer2` where `f` is positive-homogeneous per channel
//! (`f(s·x) = s·f(x)` for `s > 0`), scaling output channel `i` of `layer1` (its weights and its
//! bias) by `1/sᵢ` and input channel `i` of `layer2` by `sᵢ` leaves the output unchanged. With
//! `r1ᵢ = max|W1[i, …]|` (range of `layer1`'s output channel `i`) and `r2ᵢ = max|W2[:, i, …]|`
//! (range of `layer2`'s input channel `i`), the paper's choice `sᵢ = √(r1ᵢ · r2ᵢ) / r2ᵢ =
//! √(r1ᵢ / r2ᵢ)` makes both ranges `√(r1ᵢ · r2ᵢ)`. A channel with a zero range on either side
//! keeps `sᵢ = 1` (nothing to balance, and no division by zero).
//!
//! A layer in the middle of a longer chain belongs to two pairs, and balancing one pair
//! disturbs the other; as in the paper, [`equalize_cross_layer`] sweeps all pairs repeatedly,
//! until the largest `|sᵢ − 1|` of a sweep is at most [`EqualizeConfig::threshold`] or
//! [`EqualizeConfig::rounds`] sweeps have run. The scales of all sweeps compound, on `f64`
//! copies of the weights; the result is written back once, as `f32`.
//!
//! # Which chains qualify
//!
//! - `layer1`: a `Linear`, `Conv1d` or `Conv2d` (grouped and depthwise included: output
//!   channel `i` is always the slice `W1[i, …]`, plus `bias[i]`); `layer2`: the same kinds.
//!   For a grouped `layer2` (depthwise: one input channel per group), input channel `i` lies in
//!   group `g = i / (in/groups)` and is the slice `W2[o, i − g·(in/groups), …]` for the output
//!   channels `o` of that group, so the compensation is exact for every grouping.
//! - Between them, any sequence of ops that act on each channel separately and are
//!   positive-homogeneous: `Relu` (also written as `max(x, 0)`), `LeakyRelu` (`f(s·x) = s·f(x)`
//!   for `s > 0`, whatever the slope), max/average/adaptive-average 2-D pooling (a maximum or a
//!   mean of a channel's values scales with them), and a `Reshape` that keeps every element in
//!   its channel (e.g. the flatten of a `[N, C, 1, 1]` pooled map before a `Linear` head), or
//!   nothing at all.
//! - The channel axis must be the one `layer2` contracts: axis 1 for a convolution, the last
//!   axis for a `Linear`. A convolution feeding a `Linear` directly (which contracts a spatial
//!   axis) does not qualify.
//! - `layer1`'s output and every intermediate value is read only by the next op of the chain
//!   and is not a graph output: any other reader would see the rescaled channels. Weights and
//!   `layer1`'s bias must be `f32` parameters read by that layer alone (a weight shared by two
//!   layers, or computed in the graph, e.g. behind a quantizer, cannot be rescaled for one of
//!   them).
//!
//! Not qualifying, and why: `Clamp` (ReLU6), `HardSigmoid`, hard swish, GELU, sigmoid, tanh and
//! every other activation that is not positive-homogeneous — `min(s·x, 6) ≠ s·min(x, 6)`, so
//! the float function would change; chains stop there. Residual adds, concatenations and
//! normalizations (LayerNorm mixes channels) stop a chain too. Inference BatchNorm is not
//! crossed; fold it first ([`crate::fold::fold_batch_norms`], which [`crate::quantize_graph`]
//! runs before equalizing).
//!
//! Not done here: the paper's high-bias absorption and bias correction (both need more than
//! the weights; the rescaled bias stays exact).
//!
//! # Parameters
//!
//! As in BatchNorm folding, every rescaled weight and bias becomes a parameter owned by the
//! graph: same value and path, data replaced, a fresh `ParamId`. The user's model is not
//! touched (the graph no longer reads its parameter), and [`EqualizeReport::owned`] lists the
//! ids so that [`crate::QuantizedGraph`] owns (and QAT trains) them like folded ones.

use std::collections::HashMap;

use burn::backend::ir::ScalarIr;
use burn::module::ParamId;
use burn::tensor::{DType, TensorData};
use serde::{Deserialize, Serialize};

use crate::GraphError;
use crate::ir::{Graph, Op, ScalarOp, UnaryOp, ValueId, ValueOrigin};

/// How [`equalize_cross_layer`] iterates.
///
/// Serde data (a `[equalize]` table in a [`crate::GraphRecipe`]); missing fields take their
/// defaults:
///
/// ```toml
/// [equalize]
/// rounds = 20
/// threshold = 1e-4
/// ```
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EqualizeConfig {
    /// Most sweeps over all pairs (at least 1). One sweep balances a graph whose layers each
    /// belong to one pair; longer chains need several (the paper iterates to convergence).
    /// Default 20.
    pub rounds: usize,
    /// Stop after a sweep whose largest relative change `|sᵢ − 1|` (over every pair and
    /// channel) is at most this (≥ 0). Default `1e-4`.
    pub threshold: f64,
}

impl Default for EqualizeConfig {
    fn default() -> Self {
        Self {
            rounds: 20,
            threshold: 1e-4,
        }
    }
}

impl EqualizeConfig {
    /// Sets the most sweeps.
    pub fn with_rounds(mut self, rounds: usize) -> Self {
        self.rounds = rounds;
        self
    }

    /// Sets the convergence threshold.
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// Checks the fields (a typed error naming the field).
    pub fn check(&self) -> Result<(), GraphError> {
        if self.rounds == 0 {
            return Err(GraphError::Recipe {
                at: "equalize.rounds".into(),
                reason: "must be at least 1 (leave `equalize` out to skip equalization)".into(),
            });
        }
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(GraphError::Recipe {
                at: "equalize.threshold".into(),
                reason: format!("must be a finite number ≥ 0, got {}", self.threshold),
            });
        }
        Ok(())
    }
}

/// One equalized pair of layers.
#[derive(Clone, Debug, PartialEq)]
pub struct EqualizedPair {
    /// The first layer's node name (its output channels were scaled by `1/sᵢ`).
    pub first: String,
    /// The second layer's node name (its input channels were scaled by `sᵢ`).
    pub second: String,
    /// The op kinds between them (`["Relu"]`, `["Relu", "AdaptiveAvgPool2d", "Reshape"]`, or
    /// none).
    pub through: Vec<&'static str>,
    /// The number of channels balanced.
    pub channels: usize,
}

/// What [`equalize_cross_layer`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct EqualizeReport {
    /// Every qualifying pair, in graph order (each was balanced in every sweep).
    pub pairs: Vec<EqualizedPair>,
    /// The ids of the parameters it created (rescaled weights and biases), which the graph
    /// owns; empty when nothing changed.
    pub owned: Vec<ParamId>,
    /// Sweeps run.
    pub rounds: usize,
    /// The largest `|sᵢ − 1|` of the last sweep (0 without pairs).
    pub last_change: f64,
}

/// Equalizes every qualifying chain of `graph` (see the module docs) in place, and returns the
/// pairs and the ids of the parameters it created.
///
/// Errors: an invalid `cfg` ([`GraphError::Recipe`]), a layer whose parameter data does not
/// match its shape or whose groups do not divide its channels ([`GraphError::Malformed`]).
/// Chains that do not qualify are left alone, not errors.
pub fn equalize_cross_layer(
    graph: &mut Graph,
    cfg: &EqualizeConfig,
) -> Result<EqualizeReport, GraphError> {
    cfg.check()?;
    let consumers = graph.consumers();
    // Host copies of every layer that takes part in a pair, by node index: a layer in the
    // middle of a chain is in two pairs and both must see (and scale) the same weights.
    let mut layers: Vec<Layer> = Vec::new();
    let mut layer_of: HashMap<usize, usize> = HashMap::new();
    let mut pairs: Vec<(usize, usize, Vec<&'static str>)> = Vec::new();
    for n in 0..graph.nodes.len() {
        let Some(first) = Layer::load(graph, &consumers, n)? else {
            continue;
        };
        if !first.bias_scalable() {
            continue;
        }
        let Some((m, through)) = follow_chain(graph, &consumers, n, &first) else {
            continue;
        };
        let Some(second) = Layer::load(graph, &consumers, m)? else {
            continue;
        };
        if second.in_channels() != first.out_channels() {
            continue;
        }
        let mut index = |layer: Layer| {
            *layer_of.entry(layer.node).or_insert_with(|| {
                layers.push(layer);
                layers.len() - 1
            })
        };
        let a = index(first);
        let b = index(second);
        pairs.push((a, b, through));
    }

    let mut rounds = 0;
    let mut last_change = 0.0;
    if !pairs.is_empty() {
        for _ in 0..cfg.rounds {
            let mut change = 0f64;
            for &(a, b, _) in &pairs {
                for i in 0..layers[a].out_channels() {
                    let r1 = layers[a].out_range(i);
                    let r2 = layers[b].in_range(i);
                    // A dead channel (or one layer2 ignores) has nothing to balance.
                    if !(r1 > 0.0 && r2 > 0.0 && r1.is_finite() && r2.is_finite()) {
                        continue;
                    }
                    let s = (r1 / r2).sqrt();
                    if s == 1.0 {
                        continue;
                    }
                    layers[a].scale_out(i, 1.0 / s);
                    layers[b].scale_in(i, s);
                    change = change.max((s - 1.0).abs());
                }
            }
            rounds += 1;
            last_change = change;
            if change <= cfg.threshold {
                break;
            }
        }
    }

    let mut owned = Vec::new();
    for layer in &layers {
        if layer.changed {
            layer.write_back(graph, &mut owned);
        }
    }
    let report_pairs = pairs
        .into_iter()
        .map(|(a, b, through)| EqualizedPair {
            first: graph.nodes[layers[a].node].name.clone(),
            second: graph.nodes[layers[b].node].name.clone(),
            through,
            channels: layers[a].out_channels(),
        })
        .collect();
    Ok(EqualizeReport {
        pairs: report_pairs,
        owned,
        rounds,
        last_change,
    })
}

/// Follows `first`'s output through channel-wise positive-homogeneous ops to the layer that
/// reads it; returns that node and the op kinds crossed, or `None` where the chain stops (a
/// second reader, a graph output, an op that is not positive-homogeneous, a channel axis the
/// reader does not contract).
fn follow_chain(
    graph: &Graph,
    consumers: &[Vec<usize>],
    n: usize,
    first: &Layer,
) -> Option<(usize, Vec<&'static str>)> {
    let mut v = *graph.nodes[n].outputs.first()?;
    let mut axis = first.out_axis(graph.value(v).shape.len())?;
    let mut through = Vec::new();
    loop {
        // Another reader (or the caller, through a graph output) would see the rescaled
        // channels.
        if graph.outputs.contains(&v) || consumers[v.0].len() != 1 {
            return None;
        }
        let m = consumers[v.0][0];
        let node = &graph.nodes[m];
        if node.inputs.first() != Some(&v) || node.outputs.len() != 1 {
            return None;
        }
        let shape = &graph.value(v).shape;
        let rank = shape.len();
        match &node.op {
            Op::Linear { .. } => return (axis + 1 == rank).then_some((m, through)),
            Op::Conv1d { .. } => return (axis == 1 && rank == 3).then_some((m, through)),
            Op::Conv2d { .. } => return (axis == 1 && rank == 4).then_some((m, through)),
            // Per element, and f(s·x) = s·f(x) for every s > 0.
            Op::Unary(UnaryOp::Relu) | Op::LeakyRelu { .. } => {}
            Op::Scalar(ScalarOp::ClampMin, s) if is_zero(s) => {}
            // Per channel of [N, C, H, W]: a maximum or mean of s·x is s times that of x
            // (max pooling pads with −∞, average pooling with 0: both scale too).
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::AdaptiveAvgPool2d { .. } => {
                if axis != 1 || rank != 4 {
                    return None;
                }
            }
            Op::Reshape => {
                axis = reshaped_axis(shape, axis, &graph.value(node.outputs[0]).shape)?;
            }
            _ => return None,
        }
        through.push(node.op.kind());
        v = node.outputs[0];
    }
}

fn is_zero(s: &ScalarIr) -> bool {
    match *s {
        ScalarIr::Float(x) => x == 0.0,
        ScalarIr::Int(x) => x == 0,
        ScalarIr::UInt(x) => x == 0,
        ScalarIr::Bool(_) => false,
    }
}

/// Where channel axis `axis` of `from` lands after a reshape to `to`, if every element stays in
/// its channel: row-major, an element of channel `c` sits at `pre·C·post + c·post + rest`, so
/// the channel survives exactly when `to` has an axis of length `C` with the same products of
/// lengths before and after it.
pub(crate) fn reshaped_axis(from: &[usize], axis: usize, to: &[usize]) -> Option<usize> {
    let c = from[axis];
    let pre: usize = from[..axis].iter().product();
    let post: usize = from[axis + 1..].iter().product();
    (0..to.len()).find(|&j| {
        to[j] == c
            && to[..j].iter().product::<usize>() == pre
            && to[j + 1..].iter().product::<usize>() == post
    })
}

/// How a layer stores its weight.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `[d_in, d_out]`.
    Linear,
    /// `[out, in/groups, k…]`.
    Conv { groups: usize },
}

/// A layer's bias.
enum Bias {
    None,
    /// A parameter this layer alone reads: index into `graph.params`, data.
    Param(usize, Vec<f64>),
    /// Present but not rescalable (a constant, a computed value, a shared or non-`f32`
    /// parameter): fine for a second layer, whose bias equalization leaves alone.
    Fixed,
}

/// A host copy of one layer's weight and bias, in `f64`.
struct Layer {
    node: usize,
    kind: Kind,
    weight_param: usize,
    shape: Vec<usize>,
    weight: Vec<f64>,
    bias: Bias,
    /// Whether the weight was rescaled.
    changed: bool,
    /// Whether the bias was (only output channels rescale it).
    bias_changed: bool,
}

/// The index of the `f32` parameter read as `v`, if `v` is one and only node reads it.
fn own_param(graph: &Graph, consumers: &[Vec<usize>], v: ValueId) -> Option<usize> {
    let ValueOrigin::Param(i) = graph.value(v).origin else {
        return None;
    };
    let p = graph.params.get(i)?;
    let exclusive = consumers[v.0].len() == 1 && !graph.outputs.contains(&v);
    (exclusive
        && p.value == v
        && graph.value(v).dtype == DType::F32
        && p.data.dtype() == DType::F32)
        .then_some(i)
}

fn host_data(graph: &Graph, i: usize, node: &str) -> Result<Vec<f64>, GraphError> {
    let p = &graph.params[i];
    let want: usize = graph.value(p.value).shape.iter().product();
    let data = p
        .data
        .try_to_vec::<f32>()
        .map_err(|e| GraphError::Malformed(format!("parameter `{}` of `{node}`: {e:?}", p.path)))?;
    if data.len() != want {
        return Err(GraphError::Malformed(format!(
            "parameter `{}` of `{node}` holds {} values, its shape {:?} needs {want}",
            p.path,
            data.len(),
            graph.value(p.value).shape
        )));
    }
    Ok(data.into_iter().map(f64::from).collect())
}

impl Layer {
    /// Loads node `n` if it is a layer equalization can rescale (see the module docs).
    fn load(graph: &Graph, consumers: &[Vec<usize>], n: usize) -> Result<Option<Self>, GraphError> {
        let node = &graph.nodes[n];
        let (kind, has_bias, rank) = match &node.op {
            Op::Linear { bias } => (Kind::Linear, *bias, 2),
            Op::Conv1d { options, bias } => (
                Kind::Conv {
                    groups: options.groups,
                },
                *bias,
                3,
            ),
            Op::Conv2d { options, bias } => (
                Kind::Conv {
                    groups: options.groups,
                },
                *bias,
                4,
            ),
            _ => return Ok(None),
        };
        let Some(weight_param) = node
            .inputs
            .get(1)
            .and_then(|&w| own_param(graph, consumers, w))
        else {
            return Ok(None);
        };
        let shape = graph.value(graph.params[weight_param].value).shape.clone();
        if shape.len() != rank {
            return Err(GraphError::Malformed(format!(
                "`{}`: a {} weight of shape {shape:?}",
                node.name,
                node.op.kind()
            )));
        }
        if let Kind::Conv { groups } = kind
            && (groups == 0 || !shape[0].is_multiple_of(groups))
        {
            return Err(GraphError::Malformed(format!(
                "`{}`: {groups} groups for {} output channels",
                node.name, shape[0]
            )));
        }
        let weight = host_data(graph, weight_param, &node.name)?;
        let bias = match node.inputs.get(2) {
            Some(&b) if has_bias => match own_param(graph, consumers, b) {
                Some(i) => {
                    let data = host_data(graph, i, &node.name)?;
                    if data.len() != Self::out_channels_of(kind, &shape) {
                        return Err(GraphError::Malformed(format!(
                            "`{}`: a bias of {} values for {} output channels",
                            node.name,
                            data.len(),
                            Self::out_channels_of(kind, &shape)
                        )));
                    }
                    Bias::Param(i, data)
                }
                None => Bias::Fixed,
            },
            _ if has_bias => Bias::Fixed,
            _ => Bias::None,
        };
        Ok(Some(Self {
            node: n,
            kind,
            weight_param,
            shape,
            weight,
            bias,
            changed: false,
            bias_changed: false,
        }))
    }

    fn out_channels_of(kind: Kind, shape: &[usize]) -> usize {
        match kind {
            Kind::Linear => shape[1],
            Kind::Conv { .. } => shape[0],
        }
    }

    fn out_channels(&self) -> usize {
        Self::out_channels_of(self.kind, &self.shape)
    }

    fn in_channels(&self) -> usize {
        match self.kind {
            Kind::Linear => self.shape[0],
            Kind::Conv { groups } => self.shape[1] * groups,
        }
    }

    /// The output's channel axis for an output of rank `rank`.
    fn out_axis(&self, rank: usize) -> Option<usize> {
        match self.kind {
            Kind::Linear => rank.checked_sub(1),
            Kind::Conv { .. } => Some(1),
        }
    }

    /// Whether output channels can be rescaled: the bias (if any) is a parameter of its own.
    fn bias_scalable(&self) -> bool {
        !matches!(self.bias, Bias::Fixed)
    }

    /// Flat indices of output channel `i`'s weights.
    fn out_indices(&self, i: usize) -> Vec<usize> {
        match self.kind {
            Kind::Linear => {
                let d_out = self.shape[1];
                (0..self.shape[0]).map(|k| k * d_out + i).collect()
            }
            Kind::Conv { .. } => {
                let per: usize = self.shape[1..].iter().product();
                (i * per..(i + 1) * per).collect()
            }
        }
    }

    /// Flat indices of input channel `i`'s weights. In a grouped convolution, input channel `i`
    /// belongs to group `g = i / (in/groups)`: it is slot `i − g·(in/groups)` of the output
    /// channels of that group, and of no other.
    fn in_indices(&self, i: usize) -> Vec<usize> {
        match self.kind {
            Kind::Linear => {
                let d_out = self.shape[1];
                (i * d_out..(i + 1) * d_out).collect()
            }
            Kind::Conv { groups } => {
                let in_per_group = self.shape[1];
                let out_per_group = self.shape[0] / groups;
                let kernel: usize = self.shape[2..].iter().product();
                let g = i / in_per_group;
                let slot = i - g * in_per_group;
                (g * out_per_group..(g + 1) * out_per_group)
                    .flat_map(|o| {
                        let start = (o * in_per_group + slot) * kernel;
                        start..start + kernel
                    })
                    .collect()
            }
        }
    }

    fn out_range(&self, i: usize) -> f64 {
        self.out_indices(i)
            .into_iter()
            .fold(0.0, |m, k| m.max(self.weight[k].abs()))
    }

    fn in_range(&self, i: usize) -> f64 {
        self.in_indices(i)
            .into_iter()
            .fold(0.0, |m, k| m.max(self.weight[k].abs()))
    }

    fn scale_out(&mut self, i: usize, f: f64) {
        for k in self.out_indices(i) {
            self.weight[k] *= f;
        }
        if let Bias::Param(_, b) = &mut self.bias {
            b[i] *= f;
            self.bias_changed = true;
        }
        self.changed = true;
    }

    fn scale_in(&mut self, i: usize, f: f64) {
        for k in self.in_indices(i) {
            self.weight[k] *= f;
        }
        self.changed = true;
    }

    /// Writes the rescaled weight (and bias, where it was rescaled) into the graph as
    /// graph-owned parameters: same value and path, fresh id (see the module docs).
    fn write_back(&self, graph: &mut Graph, owned: &mut Vec<ParamId>) {
        let mut put = |i: usize, data: &[f64], shape: Vec<usize>| {
            let id = ParamId::new();
            let values: Vec<f32> = data.iter().map(|&v| v as f32).collect();
            graph.params[i].data = TensorData::new(values, shape);
            graph.params[i].id = Some(id);
            owned.push(id);
        };
        put(self.weight_param, &self.weight, self.shape.clone());
        if let Bias::Param(i, b) = &self.bias
            && self.bias_changed
        {
            put(*i, b, vec![b.len()]);
        }
    }
}
