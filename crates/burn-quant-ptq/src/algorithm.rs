//! The Stage-2 algorithm trait, its per-layer result and report, and the shared preparation
//! of a layer problem (checks, dead inputs, act-order).

use std::any::Any;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use burn_quant_core::host::HostParams;
use burn_quant_core::{QuantSpec, QuantTensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{PtqError, Result, check_finite};
use crate::quantizer::quant_tensor;
use crate::stats::{CalibInputs, LayerStats, read};

/// A Stage-2 weight quantization algorithm, driven by a calibration loop.
///
/// The loop, for each group of linear layers that read the same input (q/k/v; gate/up; …):
/// 1. `let mut stats = algo.new_stats(d_in);`
/// 2. per calibration batch: `algo.observe(&mut stats, &x, x_quant.as_ref())?` with the
///    layer's float-path input `x` and, when [`Stage2Algorithm::inputs`] is
///    [`CalibInputs::FloatAndQuantized`], the quantized-path input of the same tokens;
/// 3. per layer: `algo.quantize(&weight, &stats, &spec)?` → the layer's [`QuantTensor`]; or
///    for all the layers of the group at once, `algo.quantize_site(&weights, &stats, &spec)?`
///    ([`Stage2Algorithm::prepare`] once, the layers in parallel, the same codes).
///
/// Weights are in Burn's `Linear` layout `[d_input, d_output]`: the algorithms run over input
/// channels (rows), and groups of a per-group spec run along axis 0. A spec written by role
/// (`QuantSpec::per_output_channel`, `per_input_group`) is resolved for that layout
/// ([`burn_quant_core::WeightLayout::Linear`]: outputs on axis 1, input groups along axis 0),
/// and the returned [`QuantTensor`] carries the resolved spec; explicit axes are used as given.
pub trait Stage2Algorithm: Send + Sync + std::fmt::Debug {
    /// Short name, e.g. `"gptq"`.
    fn name(&self) -> &'static str;

    /// What the calibration loop must feed to [`Stage2Algorithm::observe`].
    fn inputs(&self) -> CalibInputs;

    /// Empty statistics for a layer input of width `d_in`.
    fn new_stats(&self, d_in: usize) -> LayerStats {
        LayerStats::new(d_in, self.inputs())
    }

    /// Per-batch hook: accumulates one calibration batch (`x`: float-path input
    /// `[tokens, d_in]`; `x_quant`: quantized-path input of the same tokens, `None` when it
    /// equals `x`).
    fn observe(
        &self,
        stats: &mut LayerStats,
        x: &Tensor<2>,
        x_quant: Option<&Tensor<2>>,
    ) -> Result<()> {
        stats.observe(x, x_quant)
    }

    /// Quantizes a row-major Burn-layout weight (`shape = [d_in, d_out]`) on the host.
    fn quantize_host(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        stats: &LayerStats,
        spec: &QuantSpec,
    ) -> Result<HostQuantized>;

    /// Per-layer hook: quantizes `weight` (`[d_in, d_out]`) with the accumulated statistics;
    /// the result lives on the weight's device.
    fn quantize(
        &self,
        weight: &Tensor<2>,
        stats: &LayerStats,
        spec: &QuantSpec,
    ) -> Result<Quantized> {
        let shape = weight.dims();
        let data = read(weight, "weight")?;
        let host = self.quantize_host(&data, shape, stats, spec)?;
        host.into_quantized(spec, &weight.device())
    }

    /// The weight-independent work on a site's statistics (the Hessian's damped factor, the
    /// processing order, …), done once for every layer that reads the site. The default keeps
    /// only the statistics, so [`Stage2Algorithm::quantize_prepared_host`] is
    /// [`Stage2Algorithm::quantize_host`].
    fn prepare<'a>(&self, stats: &'a LayerStats) -> Result<Prepared<'a>> {
        Ok(Prepared::new(stats))
    }

    /// [`Stage2Algorithm::quantize_host`] with the statistics already prepared; equal to it
    /// code for code. A preparation made by another algorithm or configuration is not trusted:
    /// the statistics are then prepared again.
    fn quantize_prepared_host(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        prepared: &Prepared<'_>,
        spec: &QuantSpec,
    ) -> Result<HostQuantized> {
        self.quantize_host(weight, shape, prepared.stats(), spec)
    }

    /// Quantizes every layer that reads one input (`weights[i]`: `[d_in, d_out_i]`, one spec
    /// for all): the statistics are prepared once and the layers quantized in parallel on the
    /// host (rayon; each layer's result does not depend on the others or on the thread count,
    /// so it equals [`Stage2Algorithm::quantize`] of that layer code for code). Results in the
    /// order of `weights`, each on its weight's device.
    fn quantize_site(
        &self,
        weights: &[Tensor<2>],
        stats: &LayerStats,
        spec: &QuantSpec,
    ) -> Result<Vec<Quantized>> {
        let host: Vec<(Vec<f32>, [usize; 2])> = weights
            .iter()
            .map(|w| Ok((read(w, "weight")?, w.dims())))
            .collect::<Result<_>>()?;
        let prepared = self.prepare(stats)?;
        let results: Vec<Result<HostQuantized>> = host
            .par_iter()
            .map(|(data, shape)| self.quantize_prepared_host(data, *shape, &prepared, spec))
            .collect();
        results
            .into_iter()
            .zip(weights)
            .map(|(r, w)| r?.into_quantized(spec, &w.device()))
            .collect()
    }
}

/// A site's statistics with an algorithm's weight-independent preparation of them
/// ([`Stage2Algorithm::prepare`]), shared by every layer that reads the site.
pub struct Prepared<'a> {
    stats: &'a LayerStats,
    cache: Option<Box<dyn Any + Send + Sync>>,
}

impl<'a> Prepared<'a> {
    /// The statistics alone (nothing prepared).
    pub fn new(stats: &'a LayerStats) -> Self {
        Self { stats, cache: None }
    }

    /// The statistics with an algorithm's preparation of them.
    pub fn with_cache<T: Any + Send + Sync>(stats: &'a LayerStats, cache: T) -> Self {
        Self {
            stats,
            cache: Some(Box::new(cache)),
        }
    }

    /// The statistics.
    pub fn stats(&self) -> &'a LayerStats {
        self.stats
    }

    /// The preparation, if there is one of type `T`.
    pub fn cache<T: Any>(&self) -> Option<&T> {
        self.cache.as_ref().and_then(|c| c.downcast_ref::<T>())
    }
}

impl std::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("d_in", &self.stats.d_in())
            .field("tokens", &self.stats.tokens())
            .field("cached", &self.cache.is_some())
            .finish()
    }
}

/// A quantized layer weight on the host: codes and parameters consistent with the spec, the
/// dequantized weight, and the report.
#[derive(Clone, Debug)]
pub struct HostQuantized {
    /// Row-major codes of the `[d_in, d_out]` weight.
    pub codes: Vec<i32>,
    /// Scales, zero-points and quantized scale level, as the core lays them out for the spec.
    pub params: HostParams,
    /// The dequantized weight Ŵ (`QuantTensor::dequantize` of the result gives it bit for bit).
    pub w_hat: Vec<f32>,
    /// Shape `[d_in, d_out]`.
    pub shape: [usize; 2],
    /// What happened.
    pub report: LayerReport,
}

impl HostQuantized {
    /// Moves the result onto `device` as a [`QuantTensor`].
    pub fn into_quantized(self, spec: &QuantSpec, device: &Device) -> Result<Quantized> {
        let [n, m] = self.shape;
        let tensor = quant_tensor(self.codes, self.params, spec, n, m, device)?;
        Ok(Quantized {
            tensor,
            report: self.report,
        })
    }
}

/// A quantized layer weight and the report of how it was obtained.
#[derive(Clone, Debug)]
pub struct Quantized {
    /// The quantized `[d_in, d_out]` weight.
    pub tensor: QuantTensor<2>,
    /// Diagnostics.
    pub report: LayerReport,
}

/// Diagnostics of one layer's quantization.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerReport {
    /// Algorithm name.
    pub algorithm: &'static str,
    /// `[d_in, d_out]`.
    pub shape: [usize; 2],
    /// Calibration tokens behind the statistics.
    pub tokens: u64,
    /// The damping λ finally added to the Hessian's diagonal (GPTQ, GPTAQ, Qronos).
    pub damping: Option<f64>,
    /// How many ×10 damping escalations a singular or indefinite Hessian needed.
    pub damping_retries: u32,
    /// Inputs that were zero on every calibration token (their weights are set to 0).
    pub dead_inputs: usize,
    /// Whether the factorization failed even with the largest damping and RTN was used.
    pub fell_back_to_rtn: bool,
    /// Whether group parameters were computed during the sweep (from weights carrying earlier
    /// feedback, see [`DynamicGroupTiming`]) rather than before it started.
    pub dynamic_groups: bool,
    /// Lazy-update block size used.
    pub block_size: Option<usize>,
    /// Warnings (also printed to stderr).
    pub warnings: Vec<String>,
    /// Wall time of the quantization (statistics accumulation excluded).
    pub seconds: f64,
}

impl LayerReport {
    pub(crate) fn new(algorithm: &'static str, shape: [usize; 2], tokens: u64) -> Self {
        Self {
            algorithm,
            shape,
            tokens,
            ..Self::default()
        }
    }

    /// Records a warning and prints it to stderr, so it is seen even by a caller that drops
    /// the report.
    pub(crate) fn warn(&mut self, msg: String) {
        eprintln!("burn-quant-ptq warning: {msg}");
        self.warnings.push(msg);
    }
}

/// When GPTQ and GPTAQ compute a dynamic group's parameters (`static_groups` off, no
/// act-order, groups along the input axis), relative to their lazy blocks of `block_size`
/// rows. Serialised as `"block_start"` / `"group_start"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DynamicGroupTiming {
    /// From the group's rows as they were when the lazy block holding its first row started:
    /// every earlier block's update included, the feedback of the rows quantized before it in
    /// the same block not. The GPTQ and GPTAQ reference codes' timing
    /// (`find_params(W[:, j:j + groupsize])` on the block-start weight `W`), and the default.
    #[default]
    BlockStart,
    /// From the group's rows when the sweep reaches its first row, every earlier row's
    /// feedback included. Blocks never split a group then: a group size that is neither a
    /// multiple nor a divisor of the block size shrinks the block
    /// ([`LayerReport::block_size`]). Qronos's timing with `static_groups` off.
    GroupStart,
}

/// A checked layer problem: weight and statistics in f32/f64 host buffers, dead inputs
/// handled as GPTQ does (`H_jj ← 1`, `W[j, :] ← 0`).
pub(crate) struct Problem {
    pub n: usize,
    pub m: usize,
    /// Weight with dead rows zeroed, original order.
    pub w: Vec<f32>,
    /// Mean `X̃ᵀX̃`, dead diagonal entries set to 1.
    pub h: Vec<f64>,
    /// Mean `X̃ᵀX`, if required.
    pub g: Option<Vec<f64>>,
    /// Indices of the dead inputs.
    pub dead: Vec<usize>,
    pub report: LayerReport,
    pub started: Instant,
}

/// Validates the inputs of a data-driven algorithm and builds its [`Problem`].
pub(crate) fn problem(
    algorithm: &'static str,
    weight: &[f32],
    shape: [usize; 2],
    stats: &LayerStats,
    need_cross: bool,
) -> Result<Problem> {
    let started = Instant::now();
    let [n, m] = check_weight(weight, shape, stats.d_in())?;
    if stats.inputs() == CalibInputs::None || stats.tokens() == 0 {
        return Err(PtqError::EmptyCalibration { algorithm });
    }
    let (h, g, dead) = site_statistics(algorithm, stats, need_cross)?;
    let mut w = weight.to_vec();
    let mut report = LayerReport::new(algorithm, shape, stats.tokens());
    for &j in &dead {
        w[j * m..(j + 1) * m].fill(0.0);
    }
    report.dead_inputs = dead.len();
    Ok(Problem {
        n,
        m,
        w,
        h,
        g,
        dead,
        report,
        started,
    })
}

/// The weight-independent part of [`problem`]: mean `H` with the dead inputs' diagonal set to
/// 1, `G` when `need_cross`, and the dead inputs (zero on every calibration token).
pub(crate) fn site_statistics(
    algorithm: &'static str,
    stats: &LayerStats,
    need_cross: bool,
) -> Result<(Vec<f64>, Option<Vec<f64>>, Vec<usize>)> {
    let n = stats.d_in();
    let g = if need_cross {
        Some(stats.cross().ok_or(PtqError::MissingStatistics {
            algorithm,
            needed: "the cross statistic X̃ᵀX (use CalibInputs::FloatAndQuantized)",
        })?)
    } else {
        None
    };
    let mut h = stats.hessian();
    if let Some(j) = (0..n).find(|&j| h[j * n + j] < 0.0) {
        return Err(PtqError::InvalidStatistics {
            reason: format!("H[{j}, {j}] = {} < 0: not a Gram matrix", h[j * n + j]),
        });
    }
    let dead: Vec<usize> = (0..n).filter(|&j| h[j * n + j] == 0.0).collect();
    for &j in &dead {
        h[j * n + j] = 1.0;
    }
    Ok((h, g, dead))
}

/// Checks a weight against its declared shape and the statistics' width.
pub(crate) fn check_weight(weight: &[f32], shape: [usize; 2], d_in: usize) -> Result<[usize; 2]> {
    let [n, m] = shape;
    if n != d_in || n * m != weight.len() || n == 0 || m == 0 {
        return Err(PtqError::ShapeMismatch {
            what: "weight",
            got: if n * m == weight.len() {
                shape.to_vec()
            } else {
                vec![weight.len()]
            },
            expected: format!("[d_in = {d_in}, d_out] (Burn `Linear` layout), non-empty"),
        });
    }
    check_finite(weight, "weight")?;
    Ok(shape)
}

/// Processing order for act-order: input channels by decreasing `H_jj`, ties by index
/// (stable), so results are deterministic.
pub(crate) fn act_order(h: &[f64], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
    order
}

/// The processing order (act-order when `enabled`, the identity otherwise) and the square
/// `d_in × d_in` matrices `h` and `others` permuted into it (moved unchanged for the identity),
/// the one preparation every GPTQ-family algorithm shares.
pub(crate) fn in_processing_order<const K: usize>(
    enabled: bool,
    n: usize,
    h: Vec<f64>,
    others: [Vec<f64>; K],
) -> (Vec<usize>, Vec<f64>, [Vec<f64>; K]) {
    if !enabled {
        return ((0..n).collect(), h, others);
    }
    let order = act_order(&h, n);
    let h = permute_square(&h, n, &order);
    let others = others.map(|a| permute_square(&a, n, &order));
    (order, h, others)
}

/// `a[order][:, order]` of a square matrix.
pub(crate) fn permute_square(a: &[f64], n: usize, order: &[usize]) -> Vec<f64> {
    let mut out = vec![0f64; n * n];
    for (i, &oi) in order.iter().enumerate() {
        for (j, &oj) in order.iter().enumerate() {
            out[i * n + j] = a[oi * n + oj];
        }
    }
    out
}

/// Rows of the `[n, m]` matrix `w` in processing order.
pub(crate) fn permute_rows(w: &[f32], m: usize, order: &[usize]) -> Vec<f32> {
    order
        .iter()
        .flat_map(|&r| w[r * m..(r + 1) * m].iter().copied())
        .collect()
}

/// `λ = percdamp · mean(diag H)`.
pub(crate) fn relative_damping(h: &[f64], n: usize, percdamp: f64) -> f64 {
    percdamp * (0..n).map(|j| h[j * n + j]).sum::<f64>() / n as f64
}

pub(crate) fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub(crate) fn check_percentage(field: &'static str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(PtqError::config(field, v, "must be finite and > 0"))
    }
}

pub(crate) fn check_block(block: usize) -> Result<()> {
    if block == 0 {
        Err(PtqError::config("block_size", 0, "must be at least 1"))
    } else {
        Ok(())
    }
}
