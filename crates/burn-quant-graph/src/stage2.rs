//! Stage 2 on any model: GPTQ, GPFQ, GPTAQ, Qronos, RTN (every [`Algorithm`]) on every weight
//! node of a quantized graph, sequentially in topological order.
//!
//! Each layer's statistics come from its input in the partially quantized model (layers
//! before it already carry their Stage 2 weights, activation quantizers are on) and, for the
//! algorithms that need it, the float model's input for the same batch. Layers reading the
//! same value (`q`, `k`, `v`) share one pass.
//!
//! A `Linear` enters as its weight `[d_in, d_out]`. A convolution enters through its unfolded
//! input: for each group, im2col patches with columns ordered kernel position major
//! (`kpos·C_in + c`) and the weight as `[k·C_in, C_out]`, so a group of `size` consecutive
//! rows is `size` input channels at one kernel position — exactly the `per_input_group` axis
//! of the 4-D weight (`[out, in, k…]`, groups along axis 1). Results come back in the layer's
//! own layout as [`AnyQuantTensor`]s, dequantizing to the weights written into the model.

use std::collections::HashMap;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_quant_core::host::{HostLevel, HostParams};
use burn_quant_core::{
    Granularity, QuantParams, QuantSpec, QuantTensor, ScaleQuant, ScaleRestriction,
};
use burn_quant_nn::{AnyQuantTensor, write_params};
use burn_quant_ptq::{Algorithm, CalibInputs, LayerReport, Stage2Algorithm};

use crate::GraphError;
use crate::capture::GraphIo;
use crate::interp::{Interpreter, device_of, to_host, upload};
use crate::ir::{Graph, Op, ValueId};
use crate::quantize::{QuantContext, QuantSite, QuantizedGraph};

/// One weight after Stage 2.
#[derive(Clone, Debug)]
pub struct GraphWeight {
    /// The layer node's name.
    pub layer: String,
    /// The weight parameter's path.
    pub path: String,
    /// Codes, scales and zero-points in the layer's own layout.
    pub tensor: AnyQuantTensor,
    /// The dequantized weight, row-major in the layer's layout (what is written back).
    pub dequantized: Vec<f32>,
    /// The weight's shape.
    pub shape: Vec<usize>,
    /// What the algorithm did, per group for grouped convolutions.
    pub reports: Vec<LayerReport>,
}

/// Everything Stage 2 produced.
#[derive(Clone, Debug)]
pub struct Stage2Result {
    /// The algorithm's name.
    pub algorithm: &'static str,
    /// Every quantized weight, in processing order.
    pub weights: Vec<GraphWeight>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// A weight layer of the quantized graph and how it enters Stage 2.
struct Site {
    node: usize,
    quantizer: usize,
    path: String,
    param_index: usize,
    spec: QuantSpec,
    tap: ValueId,
}

fn sites(graph: &Graph) -> Vec<Site> {
    let mut out = Vec::new();
    for (n, node) in graph.nodes.iter().enumerate() {
        // Transposed convolutions have no im2col form here: they keep their weight
        // quantizer (round to nearest), which the export writes as usual.
        if !matches!(node.op, Op::Linear { .. } | Op::Conv1d { .. } | Op::Conv2d { .. }) {
            continue;
        }
        let Some(q) = graph.producer(node.inputs[1]) else { continue };
        let Op::Quant(qn) = &graph.nodes[q].op else { continue };
        let QuantSite::Weight { param, .. } = &qn.site else { continue };
        let Some(param_index) = graph.params.iter().position(|p| &p.path == param) else {
            continue;
        };
        out.push(Site {
            node: n,
            quantizer: qn.quantizer,
            path: param.clone(),
            param_index,
            spec: qn.spec,
            tap: node.inputs[0],
        });
    }
    out
}

/// Geometry of a convolution for im2col.
#[derive(Clone, Copy, Debug)]
struct ConvGeom {
    groups: usize,
    c_in: usize,
    c_out: usize,
    /// Kernel `[kh, kw]` (`kh = 1` for 1-D).
    kernel: [usize; 2],
    stride: [usize; 2],
    /// `[top, bottom, left, right]`.
    padding: [usize; 4],
    dilation: [usize; 2],
}

impl ConvGeom {
    fn of(op: &Op, w_shape: &[usize]) -> Option<Self> {
        match op {
            Op::Conv2d { options, .. } => Some(Self {
                groups: options.groups,
                c_in: w_shape[1] * options.groups,
                c_out: w_shape[0],
                kernel: [w_shape[2], w_shape[3]],
                stride: options.stride,
                padding: [
                    options.padding[0].0,
                    options.padding[0].1,
                    options.padding[1].0,
                    options.padding[1].1,
                ],
                dilation: options.dilation,
            }),
            Op::Conv1d { options, .. } => Some(Self {
                groups: options.groups,
                c_in: w_shape[1] * options.groups,
                c_out: w_shape[0],
                kernel: [1, w_shape[2]],
                stride: [1, options.stride[0]],
                padding: [0, 0, options.padding[0].0, options.padding[0].1],
                dilation: [1, options.dilation[0]],
            }),
            _ => None,
        }
    }

    fn k(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    fn cin_g(&self) -> usize {
        self.c_in / self.groups
    }

    fn cout_g(&self) -> usize {
        self.c_out / self.groups
    }

    /// im2col patches of group `g` of `x` (`[N, C, H, W]` or `[N, C, L]`, row-major):
    /// `[N·OH·OW, k·C_in/g]`, columns kernel-position major.
    fn patches(&self, x: &[f32], x_shape: &[usize], g: usize) -> Vec<f32> {
        let (n, c, h, w) = match x_shape {
            [n, c, h, w] => (*n, *c, *h, *w),
            [n, c, l] => (*n, *c, 1, *l),
            _ => unreachable!("conv inputs are rank 3 or 4"),
        };
        let [kh, kw] = self.kernel;
        let [pt, pb, pl, pr] = self.padding;
        let oh = (h + pt + pb - self.dilation[0] * (kh - 1) - 1) / self.stride[0] + 1;
        let ow = (w + pl + pr - self.dilation[1] * (kw - 1) - 1) / self.stride[1] + 1;
        let cg = self.cin_g();
        let cols = kh * kw * cg;
        let mut out = vec![0f32; n * oh * ow * cols];
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    let row = (b * oh + oy) * ow + ox;
                    let dst = &mut out[row * cols..(row + 1) * cols];
                    for ky in 0..kh {
                        let iy = (oy * self.stride[0] + ky * self.dilation[0]) as isize - pt as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * self.stride[1] + kx * self.dilation[1]) as isize
                                - pl as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let kpos = ky * kw + kx;
                            for ci in 0..cg {
                                let ch = g * cg + ci;
                                dst[kpos * cg + ci] =
                                    x[((b * c + ch) * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Group `g` of the weight `[out, in/g, k…]` as the matrix `[k·C_in/g, C_out/g]`.
    fn weight_matrix(&self, w: &[f32], g: usize) -> Vec<f32> {
        let (k, cg, og) = (self.k(), self.cin_g(), self.cout_g());
        let mut m = vec![0f32; k * cg * og];
        for o in 0..og {
            for ci in 0..cg {
                for kpos in 0..k {
                    m[(kpos * cg + ci) * og + o] = w[((g * og + o) * cg + ci) * k + kpos];
                }
            }
        }
        m
    }

    /// Writes matrix `m` of group `g` back into the layer's layout.
    fn scatter_weight<T: Copy>(&self, m: &[T], g: usize, w: &mut [T]) {
        let (k, cg, og) = (self.k(), self.cin_g(), self.cout_g());
        for o in 0..og {
            for ci in 0..cg {
                for kpos in 0..k {
                    w[((g * og + o) * cg + ci) * k + kpos] = m[(kpos * cg + ci) * og + o];
                }
            }
        }
    }

    /// The matrix spec of a resolved conv spec, and the map from matrix scale cells of group
    /// `g` to the layer layout's scale cells.
    fn matrix_spec(&self, spec: &QuantSpec, layer: &str) -> Result<QuantSpec, GraphError> {
        let err = |reason: String| GraphError::Recipe {
            at: format!("weight of `{layer}`"),
            reason,
        };
        let g = match spec.granularity {
            Granularity::PerTensor if self.groups == 1 => Granularity::PerTensor,
            Granularity::PerTensor => {
                return Err(err(format!(
                    "Stage 2 quantizes each of the {} groups on its own: a per-tensor scale \
                     cannot be shared; use per_output_channel",
                    self.groups
                )));
            }
            Granularity::PerChannel { axis: 0 } => Granularity::PerChannel { axis: 1 },
            Granularity::PerGroup { axis: 1, size } if self.cin_g().is_multiple_of(size) => {
                Granularity::PerGroup { axis: 0, size }
            }
            Granularity::PerGroup { axis: 1, size } => {
                return Err(err(format!(
                    "groups of {size} input channels do not tile the {} input channels of a \
                     group: Stage 2 on convolutions needs a group size dividing them",
                    self.cin_g()
                )));
            }
            other => {
                return Err(err(format!("granularity {other:?} on a convolution weight")));
            }
        };
        match spec.scale.restrict {
            ScaleRestriction::Quantized(ScaleQuant::SubBlock { .. }) => {
                return Err(err(
                    "k-quant super-blocks on convolution weights are not supported by Stage 2"
                        .into(),
                ));
            }
            ScaleRestriction::Quantized(ScaleQuant::E4M3Global) if self.groups > 1 => {
                return Err(err(
                    "a per-tensor global scale (NVFP4) cannot span the groups of a grouped \
                     convolution, which Stage 2 quantizes one by one"
                        .into(),
                ));
            }
            _ => {}
        }
        Ok(spec.with_granularity(g))
    }

    /// Index in the layer layout's scale cells of matrix cell `cell` of group `g`.
    fn layer_cell(&self, spec: &QuantSpec, g: usize, cell: usize) -> usize {
        let (k, cg, og) = (self.k(), self.cin_g(), self.cout_g());
        match spec.granularity {
            // Specs reaching here were resolved by `matrix_spec`: only these three remain.
            Granularity::PerTensor | Granularity::PerOutputChannel => 0,
            Granularity::PerChannel { .. } => g * og + cell,
            Granularity::PerGroup { size, .. } | Granularity::PerInputGroup { size } => {
                // Matrix cells [k·cg/size, og]: (r, o) with r = kpos·(cg/size) + gi.
                let per = cg / size;
                let (r, o) = (cell / og, cell % og);
                let (kpos, gi) = (r / per, r % per);
                ((g * og + o) * per + gi) * k + kpos
            }
        }
    }
}

/// Runs `algorithm` on every weight node of `qg`, with `batches` as calibration inputs, and
/// returns the quantized weights (not yet written anywhere: see [`Stage2Result::apply`]).
///
/// Static activation quantizers must be calibrated first ([`QuantizedGraph::calibrate`]);
/// weight quantizers are bypassed while it runs (a layer reads its float weight until it is
/// processed, then its Stage 2 weight).
pub fn stage2<M: Module, I: GraphIo + Clone>(
    qg: &QuantizedGraph,
    model: &M,
    algorithm: &Algorithm,
    batches: &[I],
) -> Result<Stage2Result, GraphError> {
    let started = Instant::now();
    algorithm.validate().map_err(|e| GraphError::Recipe {
        at: "algorithm".into(),
        reason: e.to_string(),
    })?;
    if batches.is_empty() {
        return Err(GraphError::Recipe {
            at: "batches".into(),
            reason: "Stage 2 needs at least one calibration batch".into(),
        });
    }
    let graph = &qg.graph;
    let sites = sites(graph);
    let device = device_of(&batches[0].clone().into_dispatch());
    let mut interp_q = Interpreter::new(graph, &device);
    interp_q.bind(model);
    interp_q.bind(&qg.owned);
    let mut interp_f = Interpreter::new(graph, &device);
    interp_f.bind(model);
    interp_f.bind(&qg.owned);
    let mut ctx_q = QuantContext::new(&qg.quantizers);
    for s in &sites {
        ctx_q = ctx_q.bypass(s.quantizer);
    }
    let ctx_f = QuantContext::float();
    let needs_float = algorithm.inputs() == CalibInputs::FloatAndQuantized;
    let needs_data = algorithm.inputs() != CalibInputs::None;

    // Layers reading the same value share one pass; groups in topological order.
    let mut groups: Vec<(ValueId, Vec<usize>)> = Vec::new();
    for (i, s) in sites.iter().enumerate() {
        match groups.iter_mut().find(|(t, _)| *t == s.tap) {
            Some((_, members)) => members.push(i),
            None => groups.push((s.tap, vec![i])),
        }
    }
    let mut weights = Vec::new();
    for (tap, members) in groups {
        let stop = graph.producer(tap).unwrap_or(0);
        // Per member layer: per conv group, one LayerStats.
        let mut stats: Vec<Vec<burn_quant_ptq::LayerStats>> = Vec::new();
        let mut plans = Vec::new();
        for &m in &members {
            let s = &sites[m];
            let node = &graph.nodes[s.node];
            let w_shape = graph.value(graph.params[s.param_index].value).shape.clone();
            let plan = LayerPlan::new(&node.op, &w_shape, &s.spec, &node.name)?;
            stats.push(
                (0..plan.groups())
                    .map(|_| algorithm.new_stats(plan.d_in()))
                    .collect(),
            );
            plans.push(plan);
        }
        if needs_data {
            for batch in batches {
                let xq = interp_q
                    .execute(batch.clone().into_dispatch(), &ctx_q, &[tap], Some(stop))?
                    .taps
                    .remove(0);
                // The run's own shape: a batch-symbolic graph runs batches of any size.
                let tap_shape = burn::backend::TensorMetadata::shape(&xq).as_slice().to_vec();
                let xq = to_host(xq)?;
                let xf = if needs_float {
                    let t = interp_f
                        .execute(batch.clone().into_dispatch(), &ctx_f, &[tap], Some(stop))?
                        .taps
                        .remove(0);
                    Some(to_host(t)?)
                } else {
                    None
                };
                for (plan, st) in plans.iter().zip(stats.iter_mut()) {
                    for (g, stat) in st.iter_mut().enumerate() {
                        let fq = plan.features(&xq, &tap_shape, g);
                        let ff = xf.as_ref().map(|x| plan.features(x, &tap_shape, g));
                        // `observe_host(x, x_quant)`: x is the float path.
                        match ff {
                            Some(ff) => stat.observe_host(&ff, Some(&fq)),
                            None => stat.observe_host(&fq, None),
                        }
                        .map_err(|e| GraphError::Recipe {
                            at: format!("statistics of `{}`", graph.nodes[sites[members[0]].node].name),
                            reason: e.to_string(),
                        })?;
                    }
                }
            }
        }
        for ((&m, plan), st) in members.iter().zip(&plans).zip(&stats) {
            let s = &sites[m];
            let name = graph.nodes[s.node].name.clone();
            let w = to_host(interp_q.param_tensor(s.param_index))?;
            let w_shape = graph.value(graph.params[s.param_index].value).shape.clone();
            let (tensor, dequantized, reports) = plan.quantize(algorithm, &w, &w_shape, st, &s.spec, &name, &device)?;
            interp_q.set_param(&s.path, upload(&TensorData::new(dequantized.clone(), w_shape.clone()), &device))?;
            weights.push(GraphWeight {
                layer: name,
                path: s.path.clone(),
                tensor,
                dequantized,
                shape: w_shape,
                reports,
            });
        }
    }
    Ok(Stage2Result {
        algorithm: algorithm.name(),
        weights,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// How one layer becomes Stage 2 problems.
enum LayerPlan {
    Linear { d_in: usize },
    Conv(Box<ConvGeom>, QuantSpec),
}

impl LayerPlan {
    fn new(op: &Op, w_shape: &[usize], spec: &QuantSpec, layer: &str) -> Result<Self, GraphError> {
        match op {
            Op::Linear { .. } => Ok(LayerPlan::Linear { d_in: w_shape[0] }),
            Op::Conv1d { .. } | Op::Conv2d { .. } => {
                let geom = ConvGeom::of(op, w_shape).expect("a convolution");
                let mspec = geom.matrix_spec(spec, layer)?;
                Ok(LayerPlan::Conv(Box::new(geom), mspec))
            }
            other => Err(GraphError::UnsupportedOp {
                op: format!("Stage 2 on {}", other.kind()),
                at: format!("node `{layer}` (quantize it with RTN: exclude it from Stage 2)"),
            }),
        }
    }

    fn groups(&self) -> usize {
        match self {
            LayerPlan::Linear { .. } => 1,
            LayerPlan::Conv(g, _) => g.groups,
        }
    }

    fn d_in(&self) -> usize {
        match self {
            LayerPlan::Linear { d_in } => *d_in,
            LayerPlan::Conv(g, _) => g.k() * g.cin_g(),
        }
    }

    fn features(&self, x: &[f32], shape: &[usize], g: usize) -> Vec<f32> {
        match self {
            LayerPlan::Linear { .. } => x.to_vec(),
            LayerPlan::Conv(geom, _) => geom.patches(x, shape, g),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn quantize(
        &self,
        algorithm: &Algorithm,
        w: &[f32],
        w_shape: &[usize],
        stats: &[burn_quant_ptq::LayerStats],
        spec: &QuantSpec,
        layer: &str,
        device: &Device,
    ) -> Result<(AnyQuantTensor, Vec<f32>, Vec<LayerReport>), GraphError> {
        let ptq_err = |e: burn_quant_ptq::PtqError| GraphError::Recipe {
            at: format!("Stage 2 of `{layer}`"),
            reason: e.to_string(),
        };
        match self {
            LayerPlan::Linear { .. } => {
                let shape = [w_shape[0], w_shape[1]];
                let q = algorithm
                    .quantize_host(w, shape, &stats[0], spec)
                    .map_err(ptq_err)?;
                let w_hat = q.w_hat.clone();
                let report = q.report.clone();
                let t = q.into_quantized(spec, device).map_err(ptq_err)?;
                Ok((AnyQuantTensor::Rank2(t.tensor), w_hat, vec![report]))
            }
            LayerPlan::Conv(geom, mspec) => {
                let layout = spec.granularity.layout(w_shape).map_err(|source| GraphError::Core {
                    at: format!("weight of `{layer}`"),
                    source,
                })?;
                let mut codes = vec![0i32; w.len()];
                let mut w_hat = vec![0f32; w.len()];
                let cells = layout.cells();
                let mut scales = vec![0f32; cells];
                let mut zeros: Option<Vec<f32>> = None;
                let mut level: Option<HostLevel> = None;
                let mut reports = Vec::new();
                for g in 0..geom.groups {
                    let m = geom.weight_matrix(w, g);
                    let shape = [geom.k() * geom.cin_g(), geom.cout_g()];
                    let q = algorithm
                        .quantize_host(&m, shape, &stats[g], mspec)
                        .map_err(ptq_err)?;
                    geom.scatter_weight(&q.codes, g, &mut codes);
                    geom.scatter_weight(&q.w_hat, g, &mut w_hat);
                    for (c, &s) in q.params.scales.iter().enumerate() {
                        scales[geom.layer_cell(spec, g, c)] = s;
                    }
                    if let Some(z) = &q.params.zero_points {
                        let zs = zeros.get_or_insert_with(|| vec![0.0; cells]);
                        for (c, &v) in z.iter().enumerate() {
                            zs[geom.layer_cell(spec, g, c)] = v;
                        }
                    }
                    if let Some(l) = &q.params.level {
                        let out = level.get_or_insert_with(|| HostLevel {
                            kind: l.kind,
                            scale_codes: vec![0; cells],
                            min_codes: l.min_codes.as_ref().map(|_| vec![0; cells]),
                            // A per-tensor global (NVFP4) only occurs with one group.
                            super_scales: l.super_scales.clone(),
                            super_mins: l.super_mins.clone(),
                            super_shape: l.super_shape.clone(),
                        });
                        for (c, &v) in l.scale_codes.iter().enumerate() {
                            out.scale_codes[geom.layer_cell(spec, g, c)] = v;
                        }
                        if let (Some(src), Some(dst)) = (&l.min_codes, out.min_codes.as_mut()) {
                            for (c, &v) in src.iter().enumerate() {
                                dst[geom.layer_cell(spec, g, c)] = v;
                            }
                        }
                    }
                    reports.push(q.report);
                }
                let params = HostParams {
                    scales,
                    zero_points: zeros,
                    level,
                };
                let tensor = match w_shape.len() {
                    3 => AnyQuantTensor::Rank3(assemble::<3>(codes, params, &layout, spec, w_shape, device)),
                    4 => AnyQuantTensor::Rank4(assemble::<4>(codes, params, &layout, spec, w_shape, device)),
                    r => {
                        return Err(GraphError::UnsupportedOp {
                            op: format!("Stage 2 on a rank-{r} convolution weight"),
                            at: format!("node `{layer}`"),
                        });
                    }
                };
                Ok((tensor, w_hat, reports))
            }
        }
    }
}

fn assemble<const D: usize>(
    codes: Vec<i32>,
    params: HostParams,
    layout: &burn_quant_core::Layout,
    spec: &QuantSpec,
    shape: &[usize],
    device: &Device,
) -> QuantTensor<D> {
    let p = QuantParams::<D>::from_host(params, layout, device);
    QuantTensor {
        codes: Tensor::<D, Int>::from_data(TensorData::new(codes, shape.to_vec()), device),
        scales: p.scales,
        zero_points: p.zero_points,
        scale_level: p.scale_level,
        spec: *spec,
    }
}

impl Stage2Result {
    /// Writes the Stage 2 weights into `model`'s parameters (and the graph's folded ones) and
    /// turns their weight quantizers off (the weights are on their grid already), so the
    /// quantized graph then runs the Stage 2 model.
    pub fn apply<M: Module>(&self, model: M, qg: QuantizedGraph) -> Result<(M, QuantizedGraph), GraphError> {
        let mut values = HashMap::new();
        let mut paths = Vec::new();
        for w in &self.weights {
            let p = qg
                .graph
                .param(&w.path)
                .ok_or_else(|| GraphError::UnknownParam(w.path.clone()))?;
            // A parameter from a file (an imported ONNX initializer) has no id: the graph's
            // own data below is all there is to write.
            if let Some(id) = p.id {
                values.insert(id, w.dequantized.clone());
            }
            paths.push(w.path.clone());
        }
        // The model's own parameters, then the graph's folded ones (stored flat).
        let model = write_params(model, &mut values);
        let QuantizedGraph {
            mut graph,
            quantizers,
            owned,
        } = qg;
        let owned = write_params(owned, &mut values);
        // The graph's recorded data follows, so a run without a bound model agrees.
        for w in &self.weights {
            if let Some(p) = graph.params.iter_mut().find(|p| p.path == w.path) {
                p.data = TensorData::new(w.dequantized.clone(), w.shape.clone());
            }
        }
        let qg = QuantizedGraph {
            graph,
            quantizers,
            owned,
        }
        .with_weight_quantizers_of(false, |param| paths.iter().any(|p| p == param));
        Ok((model, qg))
    }

    /// The quantized weight of parameter `path`.
    pub fn weight(&self, path: &str) -> Option<&GraphWeight> {
        self.weights.iter().find(|w| w.path == path)
    }
}
