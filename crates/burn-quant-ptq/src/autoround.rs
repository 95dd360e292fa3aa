//! AutoRound (SignRound; Cheng et al., arXiv 2309.05516, reference `intel/auto-round`): learned rounding offsets and clipping factors, trained by signed
//! gradient descent on a reconstruction loss through Burn autodiff.
//!
//! **Parametrisation**, per weight `W` (`[d_in, d_out]`, Burn's layout) and spec:
//! * a rounding offset `V` per element, in units of the element's grid step, in
//!   `[−½, ½]`, initialised to 0: the element goes to `R(w/s + z + V)` (integer grids; on a
//!   minifloat, `step·R(v/step + V)` at the element's binade; see
//!   [`burn_quant_core::fake_quant_offset`]), so `V` chooses between the two neighbouring
//!   grid points, whatever the format;
//! * clipping factors `α_lo`, `α_hi` per scale cell in `[0, 1]`, initialised to 1: the cell's
//!   range `[lo, hi]` becomes `[α_lo·lo, α_hi·hi]`, and the spec's own rule turns it into the
//!   scale and zero-point — every restriction and quantized second level included (E8M0 for
//!   MX, E4M3 + global for NVFP4, 6-bit k-quant scales and mins), exactly as
//!   [`burn_quant_core::host::compute_params`] does for RTN. The factors receive the gradient
//!   of the unrestricted scale `s ∝ range(α)` (straight through the restriction); the forward
//!   uses the restricted value. Tuned where the spec's statistic is a range (`abs_max`,
//!   `min_max`); other statistics (MSE search, HQQ, percentile, abs-mean, a constant) keep
//!   their own scales and only `V` is learned ([`AutoRoundReport::clip_tuned`] says which).
//!
//! **Training**, per group of weights that one loss sees (a decoder block in the reference):
//! for `T` iterations, a batch of calibration windows is drawn (seeded), the loss of the
//! current parameters is computed by the caller's closure from the soft weights `Ŵ(V, α)`,
//! the parameters with the lowest loss seen are remembered (checked before each step, as the
//! reference does), and every parameter moves by `−lr_t·sign(∂loss/∂θ)`, `lr_t = lr·(1 − t/T)`
//! (`lr = 1/T` by default), then is clamped to its range. At the end the best parameters are
//! restored and each weight is quantized with them: RTN's element rule on `W` shifted by the
//! learned offsets, with the clipped scales, so the result is a [`QuantTensor`] whose
//! `dequantize()` is the deployed weight and whose codes export code for code.
//!
//! With zero iterations the result is RTN's exactly (`V = 0`, `α = 1`; round half to even).
//!
//! Two entry points: [`AutoRound::quantize_block`] takes any loss closure (the LLM pipeline
//! runs the real decoder block, float targets against the quantized-path inputs), and the
//! [`Stage2Algorithm`] impl is the layer-wise form for any model, with the loss
//! `‖XW − X̃Ŵ‖²/N` from the layer's statistics.

use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant_core::host::{self, HostParams, Moments};
use burn_quant_core::rounding::uniform;
use burn_quant_core::{
    Layout, QuantParams, QuantSpec, Rounding, ScaleStat, SymmetricScale, fake_quant_offset,
    quantize_with,
};
use serde::{Deserialize, Serialize};

use crate::algorithm::{
    HostQuantized, LayerReport, Quantized, Stage2Algorithm, check_percentage, check_weight, to_f32,
};
use crate::error::{PtqError, Result, check_finite};
use crate::stats::{CalibInputs, LayerStats, read};

/// AutoRound configuration (defaults: the reference's — 200 iterations, learning rate
/// `1/iterations` decaying linearly to 0 for the offsets and the clipping factors, a batch of
/// 8 calibration windows per iteration, best iterate kept). Serialised with these field
/// names; missing fields take the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoRound {
    /// Sign-SGD steps per block (200; the reference's light recipe uses 50, its best 1000).
    /// 0 gives RTN.
    pub iterations: usize,
    /// Learning rate of the offsets `V` (`None`: `1/iterations`, 5e-3 at 200).
    pub learning_rate: Option<f64>,
    /// Also learn the per-cell clipping factors (`true`, the reference's
    /// `enable_minmax_tuning`).
    pub minmax_tuning: bool,
    /// Learning rate of the clipping factors (`None`: the offsets' rate).
    pub minmax_learning_rate: Option<f64>,
    /// Calibration windows drawn per iteration (8).
    pub batch_windows: usize,
    /// Seed of the batch sampler.
    pub seed: u64,
}

impl Default for AutoRound {
    fn default() -> Self {
        Self {
            iterations: 200,
            learning_rate: None,
            minmax_tuning: true,
            minmax_learning_rate: None,
            batch_windows: 8,
            seed: 42,
        }
    }
}

/// Learned parameters are clamped to these ranges after each step.
const OFFSET_RANGE: (f32, f32) = (-0.5, 0.5);
const FACTOR_RANGE: (f32, f32) = (0.0, 1.0);

impl AutoRound {
    /// Sets the number of iterations.
    pub fn with_iterations(mut self, iterations: usize) -> Self {
        self.iterations = iterations;
        self
    }

    /// Sets the calibration windows drawn per iteration.
    pub fn with_batch_windows(mut self, batch_windows: usize) -> Self {
        self.batch_windows = batch_windows;
        self
    }

    /// Turns the clipping-factor tuning on or off.
    pub fn with_minmax_tuning(mut self, on: bool) -> Self {
        self.minmax_tuning = on;
        self
    }

    /// Checks every field: a [`PtqError::InvalidConfig`] naming it.
    pub fn validate(&self) -> Result<()> {
        // Absent rates mean 1/iterations; given ones must be finite and > 0.
        if let Some(lr) = self.learning_rate {
            check_percentage("learning_rate", lr)?;
        }
        if let Some(lr) = self.minmax_learning_rate {
            check_percentage("minmax_learning_rate", lr)?;
        }
        if self.batch_windows == 0 {
            return Err(PtqError::config(
                "batch_windows",
                0,
                "at least one window per iteration",
            ));
        }
        Ok(())
    }

    fn rates(&self) -> (f64, f64) {
        let lr = self
            .learning_rate
            .unwrap_or(1.0 / self.iterations.max(1) as f64);
        (lr, self.minmax_learning_rate.unwrap_or(lr))
    }

    /// The windows of iteration `t` out of `windows`: all of them when there are no more than
    /// a batch, otherwise `batch_windows` distinct ones drawn by a seeded partial shuffle.
    pub fn batch_of(&self, t: usize, windows: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..windows).collect();
        if windows <= self.batch_windows {
            return idx;
        }
        let seed = self.seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for k in 0..self.batch_windows {
            let u = uniform(seed, k as u64) as f64;
            let j = k + ((u * (windows - k) as f64) as usize).min(windows - k - 1);
            idx.swap(k, j);
        }
        idx.truncate(self.batch_windows);
        idx
    }

    /// Learns the rounding of `weights` against `loss`, then quantizes them.
    ///
    /// `loss(ŵ, windows)` gets the soft quantized weights (same order as `weights`, on
    /// `train_device`, tracked by autodiff) and the calibration windows of this iteration
    /// (indices below `windows`), and returns the scalar loss (a one-element tensor on
    /// `train_device`). `train_device` must be an autodiff device
    /// (`Device::flex().autodiff()`); the results live on each weight's own device.
    pub fn quantize_block<E: From<PtqError>>(
        &self,
        weights: &[BlockWeight],
        windows: usize,
        train_device: &Device,
        loss: &mut dyn FnMut(&[Tensor<2>], &[usize]) -> std::result::Result<Tensor<1>, E>,
    ) -> std::result::Result<AutoRoundOutcome, E> {
        let started = Instant::now();
        self.validate()?;
        if weights.is_empty() {
            return Err(PtqError::config("weights", 0, "no weights to quantize").into());
        }
        if windows == 0 && self.iterations > 0 {
            return Err(PtqError::EmptyCalibration {
                algorithm: "autoround",
            }
            .into());
        }
        let mut learned: Vec<LearnedWeight> = weights
            .iter()
            .map(|b| LearnedWeight::new(&b.weight, &b.spec, self.minmax_tuning))
            .collect::<Result<_>>()?;
        let originals: Vec<Tensor<2>> = learned.iter().map(|l| l.original(train_device)).collect();
        let (lr, minmax_lr) = self.rates();
        let mut report = AutoRoundReport {
            iterations: self.iterations,
            clip_tuned: learned.iter().filter(|l| l.clip.is_some()).count(),
            weights: learned.len(),
            ..AutoRoundReport::default()
        };
        let mut best: Option<(f64, usize, Vec<Snapshot>)> = None;
        for t in 0..self.iterations {
            let t0 = Instant::now();
            let leaves: Vec<Leaves> = learned.iter().map(|l| l.leaves(train_device)).collect();
            let soft: Vec<Tensor<2>> = learned
                .iter()
                .zip(&leaves)
                .zip(&originals)
                .map(|((l, leaf), w)| l.soft(w, leaf))
                .collect::<Result<_>>()?;
            report.quantizer += t0.elapsed();
            let t1 = Instant::now();
            let batch = self.batch_of(t, windows);
            let value = loss(&soft, &batch)?;
            let v = read(&value, "AutoRound loss")?
                .first()
                .map_or(f64::NAN, |&v| v as f64);
            if !v.is_finite() {
                return Err(PtqError::NonFinite {
                    what: "AutoRound loss",
                    index: t,
                    value: v as f32,
                }
                .into());
            }
            if t == 0 {
                report.initial_loss = v;
            }
            report.last_loss = v;
            if best.as_ref().is_none_or(|(b, _, _)| v < *b) {
                best = Some((v, t, learned.iter().map(LearnedWeight::snapshot).collect()));
            }
            let grads = value.backward();
            report.forward_backward += t1.elapsed();
            let t2 = Instant::now();
            let decay = 1.0 - t as f64 / self.iterations as f64;
            for (l, leaf) in learned.iter_mut().zip(leaves) {
                l.step(
                    &leaf,
                    &grads,
                    (lr * decay) as f32,
                    (minmax_lr * decay) as f32,
                )?;
            }
            report.quantizer += t2.elapsed();
        }
        if let Some((b, t, snapshots)) = best {
            report.best_loss = b;
            report.best_iteration = t;
            for (l, s) in learned.iter_mut().zip(snapshots) {
                l.restore(s);
            }
        }
        let out = learned
            .iter()
            .zip(weights)
            .map(|(l, b)| {
                Ok((
                    b.name.clone(),
                    l.finish(&b.weight.device(), windows as u64)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(AutoRoundOutcome {
            weights: out,
            report,
        })
    }
}

/// One weight of a block given to [`AutoRound::quantize_block`].
#[derive(Clone, Debug)]
pub struct BlockWeight {
    /// Name, for reports and results.
    pub name: String,
    /// The float weight, `[d_in, d_out]` (Burn's layout).
    pub weight: Tensor<2>,
    /// Its spec (groups along axis 0 for input-channel groups).
    pub spec: QuantSpec,
}

/// What [`AutoRound::quantize_block`] returns.
#[derive(Debug)]
pub struct AutoRoundOutcome {
    /// Every weight, quantized with the best parameters, in the order given.
    pub weights: Vec<(String, Quantized)>,
    /// How the training went.
    pub report: AutoRoundReport,
}

/// Diagnostics of one AutoRound run (one block).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AutoRoundReport {
    /// Iterations run.
    pub iterations: usize,
    /// Weights trained together.
    pub weights: usize,
    /// How many of them had their clipping factors tuned (the others' statistic is not a
    /// range, or tuning is off).
    pub clip_tuned: usize,
    /// Loss of RTN's parameters on the first batch (iteration 0).
    pub initial_loss: f64,
    /// Lowest loss seen, whose parameters are the result.
    pub best_loss: f64,
    /// Iteration of the lowest loss.
    pub best_iteration: usize,
    /// Loss of the last iteration.
    pub last_loss: f64,
    /// Time in the loss closure and its backward pass.
    pub forward_backward: Duration,
    /// Time building the soft weights and stepping the parameters.
    pub quantizer: Duration,
    /// Wall time of the whole run.
    pub seconds: f64,
}

/// How the clipping factors of a spec act on a cell's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clip {
    /// Symmetric: the scale follows `max(α_lo·|lo|, α_hi·|hi|)`.
    Symmetric,
    /// Asymmetric: the scale follows `α_hi·max(hi, 0) − α_lo·min(lo, 0)`.
    Asymmetric,
}

/// The learnable state of one weight.
struct LearnedWeight {
    spec: QuantSpec,
    layout: Layout,
    shape: [usize; 2],
    w: Vec<f32>,
    /// The cells' ranges and how the factors act on them (`None`: not tuned).
    clip: Option<Clip>,
    /// The statistic the ranges came from (`abs_max` or `min_max`).
    stat: ScaleStat,
    moments: Vec<Moments>,
    /// RTN's params (the untuned scales).
    rtn: HostParams,
    v: Vec<f32>,
    lo: Vec<f32>,
    hi: Vec<f32>,
}

/// The autodiff leaves of one iteration.
struct Leaves {
    v: Tensor<2>,
    factors: Option<(Tensor<2>, Tensor<2>)>,
}

/// A copy of the learned parameters.
struct Snapshot {
    v: Vec<f32>,
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl LearnedWeight {
    fn new(weight: &Tensor<2>, spec: &QuantSpec, minmax: bool) -> Result<Self> {
        let shape = weight.dims();
        let w = read(weight, "weight")?;
        check_finite(&w, "weight")?;
        // The learned rule replaces the spec's rounding: nearest-even plus the offset.
        let spec = crate::quantizer::linear_spec(spec).with_rounding(Rounding::NearestEven);
        let layout = spec.check_shape(&shape)?;
        let rtn = host::compute_params(&w, &shape, &spec)?;
        let stat = spec.scale.source.stat();
        let searched = matches!(spec.scale.symmetric, SymmetricScale::Mse { .. })
            && !spec.zero_point.is_asymmetric();
        let clip = match stat {
            Some(ScaleStat::AbsMax | ScaleStat::MinMax) if minmax && !searched => {
                Some(if spec.zero_point.is_asymmetric() {
                    Clip::Asymmetric
                } else {
                    Clip::Symmetric
                })
            }
            _ => None,
        };
        let cells = layout.cells();
        let moments = if clip.is_some() {
            host::cell_moments(&w, &layout)
        } else {
            vec![]
        };
        Ok(Self {
            spec,
            layout,
            shape,
            v: vec![0.0; w.len()],
            lo: vec![1.0; cells],
            hi: vec![1.0; cells],
            w,
            clip,
            stat: stat.unwrap_or(ScaleStat::AbsMax),
            moments,
            rtn,
        })
    }

    fn original(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(self.w.clone(), self.shape), device)
    }

    fn scale_tensor(&self, v: Vec<f32>, device: &Device) -> Tensor<2> {
        // Weights are 2-D: so is their scale shape.
        let s = &self.layout.scale_shape;
        Tensor::from_data(TensorData::new(v, [s[0], s[1]]), device)
    }

    /// The scales and zero-points for the current clipping factors: the spec's own rule on
    /// the clipped ranges, exactly what `compute_params` gives on factors of 1.
    fn params(&self, lo: &[f32], hi: &[f32]) -> Result<HostParams> {
        if self.clip.is_none() {
            return Ok(self.rtn.clone());
        }
        let spec = &self.spec;
        let abs = self.stat == ScaleStat::AbsMax;
        let mut amax = Vec::with_capacity(self.moments.len());
        let per_cell: Vec<(f32, f32)> = self
            .moments
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (l, h) = (m.lo * lo[i], m.hi * hi[i]);
                amax.push(l.abs().max(h.abs()));
                if abs {
                    let (l, h) = host::abs_range(l, h, spec);
                    host::range_params(l, h, spec)
                } else {
                    host::range_params(l, h, spec)
                }
            })
            .collect();
        // As compute_params: the exact max |x| reaches the E8M0 rule for abs_max only.
        Ok(host::finish_params(
            per_cell,
            abs.then_some(amax.as_slice()),
            spec,
            &self.layout,
        )?)
    }

    fn leaves(&self, device: &Device) -> Leaves {
        let v =
            Tensor::from_data(TensorData::new(self.v.clone(), self.shape), device).require_grad();
        let factors = self.clip.map(|_| {
            (
                self.scale_tensor(self.lo.clone(), device).require_grad(),
                self.scale_tensor(self.hi.clone(), device).require_grad(),
            )
        });
        Leaves { v, factors }
    }

    /// The soft quantized weight `Ŵ(V, α)`, differentiable in the leaves.
    fn soft(&self, w: &Tensor<2>, leaves: &Leaves) -> Result<Tensor<2>> {
        let device = w.device();
        let host = self.params(&self.lo, &self.hi)?;
        let mut params = QuantParams::<2>::from_host(host.clone(), &self.layout, &device);
        if let (Some(clip), Some((lo_f, hi_f))) = (self.clip, &leaves.factors) {
            // s = s_host + (r(α)·k − detach(r(α)·k)): the restricted value forward, the
            // gradient of the unrestricted scale `r(α)/r(1)·s_host`-shaped backward, with
            // k = s_host / r at the current factors (0 for an empty range).
            let lo: Vec<f32> = self.moments.iter().map(|m| m.lo).collect();
            let hi: Vec<f32> = self.moments.iter().map(|m| m.hi).collect();
            let k: Vec<f32> = (0..lo.len())
                .map(|i| {
                    let r = match clip {
                        Clip::Symmetric => {
                            (lo[i] * self.lo[i]).abs().max((hi[i] * self.hi[i]).abs())
                        }
                        Clip::Asymmetric => {
                            hi[i].max(0.0) * self.hi[i] - lo[i].min(0.0) * self.lo[i]
                        }
                    };
                    if r > 0.0 && r.is_finite() {
                        host.scales[i] / r
                    } else {
                        0.0
                    }
                })
                .collect();
            let k = self.scale_tensor(k, &device);
            let range = match clip {
                Clip::Symmetric => {
                    let l = self.scale_tensor(lo.iter().map(|x| x.abs()).collect(), &device);
                    let h = self.scale_tensor(hi.iter().map(|x| x.abs()).collect(), &device);
                    (lo_f.clone() * l).max_pair(hi_f.clone() * h)
                }
                Clip::Asymmetric => {
                    let l = self.scale_tensor(lo.iter().map(|x| x.min(0.0)).collect(), &device);
                    let h = self.scale_tensor(hi.iter().map(|x| x.max(0.0)).collect(), &device);
                    hi_f.clone() * h - lo_f.clone() * l
                }
            };
            let surrogate = range * k;
            params.scales = params.scales + (surrogate.clone() - surrogate.detach());
        }
        Ok(fake_quant_offset(
            w.clone(),
            leaves.v.clone(),
            &self.spec,
            &params,
            &Rounding::NearestEven,
        )?)
    }

    /// One signed-gradient step on every leaf, then the clamps.
    fn step(
        &mut self,
        leaves: &Leaves,
        grads: &burn::tensor::Gradients,
        lr: f32,
        minmax_lr: f32,
    ) -> Result<()> {
        let signed = |t: &Tensor<2>| -> Result<Option<Vec<f32>>> {
            t.grad(grads)
                .map(|g| read(&g.sign(), "gradient"))
                .transpose()
        };
        if let Some(g) = signed(&leaves.v)? {
            for (v, g) in self.v.iter_mut().zip(g) {
                *v = (*v - lr * g).clamp(OFFSET_RANGE.0, OFFSET_RANGE.1);
            }
        }
        if let Some((lo, hi)) = &leaves.factors {
            for (t, dst) in [(lo, &mut self.lo), (hi, &mut self.hi)] {
                if let Some(g) = signed(t)? {
                    for (f, g) in dst.iter_mut().zip(g) {
                        *f = (*f - minmax_lr * g).clamp(FACTOR_RANGE.0, FACTOR_RANGE.1);
                    }
                }
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            v: self.v.clone(),
            lo: self.lo.clone(),
            hi: self.hi.clone(),
        }
    }

    fn restore(&mut self, s: Snapshot) {
        self.v = s.v;
        self.lo = s.lo;
        self.hi = s.hi;
    }

    /// The weight quantized with the current parameters, on `device`: the learned-offset
    /// values (on the grid by construction) re-quantized with the same params give the codes.
    fn finish(&self, device: &Device, tokens: u64) -> Result<Quantized> {
        let started = Instant::now();
        let host = self.params(&self.lo, &self.hi)?;
        let params = QuantParams::<2>::from_host(host, &self.layout, device);
        let offset = Tensor::from_data(TensorData::new(self.v.clone(), self.shape), device);
        let on_grid = fake_quant_offset(
            self.original(device),
            offset,
            &self.spec,
            &params,
            &Rounding::NearestEven,
        )?;
        let tensor = quantize_with(on_grid, &self.spec, params)?;
        let mut report = LayerReport::new("autoround", self.shape, tokens);
        report.seconds = started.elapsed().as_secs_f64();
        Ok(Quantized { tensor, report })
    }

    /// The learned offsets (each in `[−½, ½]`).
    #[cfg(test)]
    fn offsets(&self) -> &[f32] {
        &self.v
    }
}

impl Stage2Algorithm for AutoRound {
    fn name(&self) -> &'static str {
        "autoround"
    }

    /// The layer-wise form targets the float model's output (`‖XW − X̃Ŵ‖`), as Qronos does.
    fn inputs(&self) -> CalibInputs {
        CalibInputs::FloatAndQuantized
    }

    /// The layer-wise form: the loss is `‖XW − X̃Ŵ‖²/N` from the statistics
    /// (`tr(ŴᵀHŴ) − 2·tr(ŴᵀGW) + tr(WᵀΣW)`, the constant only where Σ is kept), every
    /// iteration on the whole calibration set, trained on `Device::flex().autodiff()`.
    fn quantize_host(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        stats: &LayerStats,
        spec: &QuantSpec,
    ) -> Result<HostQuantized> {
        self.validate()?;
        let started = Instant::now();
        let [n, m] = check_weight(weight, shape, stats.d_in())?;
        if stats.tokens() == 0 && self.iterations > 0 {
            return Err(PtqError::EmptyCalibration {
                algorithm: "autoround",
            });
        }
        let device = Device::flex().autodiff();
        let h = Tensor::<2>::from_data(TensorData::new(to_f32(&stats.hessian()), [n, n]), &device);
        let g = stats
            .cross()
            .map(|g| Tensor::<2>::from_data(TensorData::new(to_f32(&g), [n, n]), &device));
        let sigma = stats
            .float_gram()
            .map(|s| Tensor::<2>::from_data(TensorData::new(to_f32(&s), [n, n]), &device));
        let w = Tensor::<2>::from_data(TensorData::new(weight.to_vec(), shape), &device);
        let gw = g.map(|g| g.matmul(w.clone()));
        let constant = sigma.map(|s| (w.clone() * s.matmul(w.clone())).sum());
        let weights = [BlockWeight {
            name: "weight".into(),
            weight: Tensor::<2>::from_data(
                TensorData::new(weight.to_vec(), shape),
                &Device::flex(),
            ),
            spec: *spec,
        }];
        // Full batch: one "window".
        let mut loss = |soft: &[Tensor<2>], _: &[usize]| -> Result<Tensor<1>> {
            let w_hat = soft[0].clone();
            Ok(match &gw {
                Some(gw) => {
                    let quad = (w_hat.clone() * h.clone().matmul(w_hat.clone())).sum();
                    let cross = (w_hat * gw.clone()).sum().mul_scalar(2.0);
                    let l = quad - cross;
                    match &constant {
                        Some(c) => l + c.clone(),
                        None => l,
                    }
                }
                None => {
                    let d = w_hat - w.clone();
                    (d.clone() * h.clone().matmul(d)).sum()
                }
            })
        };
        let outcome = self.quantize_block(&weights, 1, &device, &mut loss)?;
        let (_, q) = outcome
            .weights
            .into_iter()
            .next()
            .expect("one weight in, one out");
        let codes = q.tensor.codes_vec();
        let params = q.tensor.params().to_host();
        let w_hat = read(&q.tensor.dequantize(), "quantized weight")?;
        let mut report = LayerReport::new("autoround", [n, m], stats.tokens());
        report.seconds = started.elapsed().as_secs_f64();
        Ok(HostQuantized {
            codes,
            params,
            w_hat,
            shape,
            report,
        })
    }
}

#[cfg(test)]
mod tests;
