//! AdaRound, adaptive rounding (Nagel, Amjad, van Baalen, Louizos & Blankevoort, ICML 2020): every weight keeps the spec's RTN scale and zero-point and learns
//! only whether it rounds down or up, by minimising the layer's output reconstruction error.
//!
//! **Parametrisation.** With `g = w/s + z` in grid units (the core's element rule) and
//! `h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)` (ζ = 1.1, γ = −0.1), the soft weight is
//! `ŵ(V) = s·(clamp(⌊g⌋ + h(V), q_min, q_max) − z)`, which is the notes'
//! `s·(clamp(⌊w/s⌋ + h + z, …) − z)` for an integer zero-point (and still a choice between two
//! neighbouring codes for a fractional one, as k-quant mins give). `V` starts where
//! `h(V) = g − ⌊g⌋`, so the initial soft weight reproduces `w` (up to clamping).
//!
//! **Objective, from statistics only.** With `H = mean X̃ᵀX̃`, `G = mean X̃ᵀX`
//! (`G_ij = ⟨X̃_i, X_j⟩`) and `Σ = mean XᵀX`, the reconstruction term in Burn's layout
//! (`Y = X·W`, `W` of shape `[d_in, d_out]`) is
//!
//! `‖XW − X̃Ŵ‖²/N = tr(WᵀΣW) − 2·tr(ŴᵀGW) + tr(ŴᵀHŴ)`, with gradient `∂/∂Ŵ = 2·(HŴ − GW)`:
//! squared error summed over output channels and averaged over tokens, as Brevitas computes
//! it. Without `G` (statistics of [`CalibInputs::Quantized`]) `X = X̃`, so `G = Σ = H` and the
//! target is `‖X̃(W − Ŵ)‖²/N`. The constant `tr(WᵀΣW)` does not enter the optimisation. The
//! regulariser `λ·Σ(1 − |2h(V) − 1|^β)` is off during the warm-up (the first `warmup` fraction
//! of the iterations, β = `beta_start` there); after it, β decays linearly from `beta_start`
//! to `beta_end` (Brevitas's `LinearTempDecay`).
//!
//! **Optimiser.** Adam (β₁ = 0.9, β₂ = 0.999, ε = 1e-8, bias-corrected) on `V` only, full
//! batch: every iteration uses the whole calibration set through `H` and `G` (Brevitas samples
//! a mini-batch of stored activations per iteration; with statistics there is nothing to
//! sample, so the result is deterministic). `V`, the Adam moments and the elementwise chain
//! rule are f64; the one `O(d_in²·d_out)` product per iteration, `H·Ŵ`, is an f32 GEMM
//! ([`crate::linalg::matmul`]). Gradients through `clamp` pass where its argument is inside the
//! range, bounds included (PyTorch's rule).
//!
//! **Result.** `h` is hardened to `1[h(V) > 0.5]` (Brevitas's strict `>`), and the codes
//! `clamp(⌊g⌋ + 1[h > 0.5], q_min, q_max)` are returned with RTN's parameters, so
//! `dequantize()` gives the hardened Ŵ and exporters encode it unchanged. The spec's
//! `rounding` rule is replaced by the learned one; everything else (granularity, scale
//! statistic and restriction, quantized scale levels) is RTN's. With zero iterations the
//! result is `h = g − ⌊g⌋` hardened: round half *down*, which is RTN's round-half-to-even
//! everywhere except at exact ties on an odd code.
//!
//! Supported: integer grids (signed / unsigned, narrow, symmetric or asymmetric, any
//! granularity, MX-int and k-quant scale levels, whose effective scales are fixed before the
//! optimisation) and ternary. Minifloat elements (FP8, MXFP, NVFP4) and binary grids are
//! [`PtqError::UnsupportedSpec`].

use burn_quant_core::host::HostParams;
use burn_quant_core::{Format, QuantSpec};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::algorithm::{HostQuantized, Problem, Stage2Algorithm, check_percentage, problem};
use crate::error::{PtqError, Result};
use crate::linalg::{View, ViewMut, matmul};
use crate::rtn::rtn_host;
use crate::stats::{CalibInputs, LayerStats};

/// Upper stretch of the rectified sigmoid.
const ZETA: f64 = 1.1;
/// Lower stretch of the rectified sigmoid.
const GAMMA: f64 = -0.1;
/// Adam's first-moment decay.
const ADAM_BETA1: f64 = 0.9;
/// Adam's second-moment decay.
const ADAM_BETA2: f64 = 0.999;
/// Adam's denominator guard.
const ADAM_EPS: f64 = 1e-8;
/// Elements per rayon task in the elementwise passes.
const CHUNK: usize = 4096;

/// AdaRound configuration (defaults: Brevitas's ImageNet flow — 1000 iterations, Adam lr 1e-3,
/// λ = 0.01, β annealed 20 → 2 after a 20 % warm-up). Serialised with these field names;
/// missing fields take the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Adaround {
    /// Adam steps per layer (1000; the paper uses 10 000). 0 hardens the initial `h = frac`.
    pub iterations: usize,
    /// Adam learning rate on `V` (1e-3).
    pub learning_rate: f64,
    /// Weight λ of the rounding regulariser (0.01), relative to the reconstruction error
    /// summed over output channels and averaged over tokens. It is not scale-free: a weight
    /// stays soft while the reconstruction curvature `2·H_jj·s²` of its input channel beats
    /// the regulariser's `8λ` (β = 2), so inputs with large outlier channels need a larger λ
    /// or leave those rows to the final hardening.
    pub lambda: f64,
    /// β of the regulariser at the end of the warm-up (20).
    pub beta_start: f64,
    /// β at the last iteration (2).
    pub beta_end: f64,
    /// Fraction of the iterations with the regulariser off (0.2).
    pub warmup: f64,
    /// Target the float model's output `‖XW − X̃Ŵ‖` (needs [`CalibInputs::FloatAndQuantized`]
    /// statistics) instead of `‖X̃W − X̃Ŵ‖` (off). With it off, statistics that happen to hold
    /// `G` are still used.
    pub float_target: bool,
}

impl Default for Adaround {
    fn default() -> Self {
        Self {
            iterations: 1000,
            learning_rate: 1e-3,
            lambda: 0.01,
            beta_start: 20.0,
            beta_end: 2.0,
            warmup: 0.2,
            float_target: false,
        }
    }
}

impl Adaround {
    /// Sets the number of Adam steps.
    pub fn with_iterations(mut self, iterations: usize) -> Self {
        self.iterations = iterations;
        self
    }
    /// Sets the Adam learning rate.
    pub fn with_learning_rate(mut self, lr: f64) -> Self {
        self.learning_rate = lr;
        self
    }
    /// Sets the regulariser weight λ.
    pub fn with_lambda(mut self, lambda: f64) -> Self {
        self.lambda = lambda;
        self
    }
    /// Sets the β schedule (`start` after the warm-up, `end` at the last iteration).
    pub fn with_beta(mut self, start: f64, end: f64) -> Self {
        self.beta_start = start;
        self.beta_end = end;
        self
    }
    /// Sets the warm-up fraction.
    pub fn with_warmup(mut self, warmup: f64) -> Self {
        self.warmup = warmup;
        self
    }
    /// Targets the float model's output (see [`Adaround::float_target`]).
    pub fn with_float_target(mut self, on: bool) -> Self {
        self.float_target = on;
        self
    }

    /// Checks every field: `learning_rate` finite and > 0, `lambda` finite and ≥ 0,
    /// `1 ≤ beta_end ≤ beta_start` finite (β < 1 makes the regulariser's slope infinite at
    /// `h = ½`), `0 ≤ warmup < 1` ([`PtqError::InvalidConfig`] naming the field otherwise).
    pub fn validate(&self) -> Result<()> {
        check_percentage("learning_rate", self.learning_rate)?;
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(PtqError::config(
                "lambda",
                self.lambda,
                "must be finite and ≥ 0",
            ));
        }
        if !(self.beta_end.is_finite() && self.beta_end >= 1.0) {
            return Err(PtqError::config(
                "beta_end",
                self.beta_end,
                "must be finite and ≥ 1",
            ));
        }
        if !(self.beta_start.is_finite() && self.beta_start >= self.beta_end) {
            return Err(PtqError::config(
                "beta_start",
                self.beta_start,
                format!("must be finite and ≥ beta_end = {}", self.beta_end),
            ));
        }
        if !(self.warmup.is_finite() && (0.0..1.0).contains(&self.warmup)) {
            return Err(PtqError::config("warmup", self.warmup, "must be in [0, 1)"));
        }
        Ok(())
    }

    /// Regulariser weight and β at iteration `t` (0-based).
    fn schedule(&self, t: usize) -> (f64, f64) {
        let total = self.iterations as f64;
        let start = self.warmup * total;
        let t = t as f64;
        if t < start {
            return (0.0, self.beta_start);
        }
        let rel = (t - start) / (total - start);
        let beta = self.beta_end + (self.beta_start - self.beta_end) * (1.0 - rel).max(0.0);
        (self.lambda, beta)
    }
}

impl Stage2Algorithm for Adaround {
    fn name(&self) -> &'static str {
        "adaround"
    }

    fn inputs(&self) -> CalibInputs {
        if self.float_target {
            CalibInputs::FloatAndQuantized
        } else {
            CalibInputs::Quantized
        }
    }

    fn quantize_host(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        stats: &LayerStats,
        spec: &QuantSpec,
    ) -> Result<HostQuantized> {
        self.validate()?;
        check_format(spec)?;
        let Problem {
            n,
            m,
            w,
            h,
            g,
            mut report,
            started,
            ..
        } = problem("adaround", weight, shape, stats, self.float_target)?;
        let g = g.or_else(|| stats.cross());
        let (_, params, _) = rtn_host("adaround", &w, n, m, spec)?;
        let rounder = Rounder::new(&w, h, g.as_deref(), None, &params, spec, n, m)?;
        let v = rounder.optimise(self);
        let (codes, w_hat) = rounder.harden(&v, &spec.format);
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

/// Rejects the grids AdaRound cannot round on.
fn check_format(spec: &QuantSpec) -> Result<()> {
    let reason = match spec.format {
        Format::Int { .. } | Format::Ternary => return Ok(()),
        Format::Minifloat(_) => {
            "AdaRound learns the choice between two neighbouring codes of a uniform integer \
             grid; minifloat elements (FP8, MXFP, NVFP4) have a step that changes with the \
             magnitude"
        }
        Format::Binary => "a binary grid has no rounding choice to learn",
    };
    Err(PtqError::UnsupportedSpec {
        algorithm: "adaround",
        spec: spec.to_string(),
        reason: reason.into(),
    })
}

/// `h(V)` and `dh/dV` (0 where the clamp is active).
#[inline]
fn rect_sigmoid(v: f64) -> (f64, f64) {
    let s = 1.0 / (1.0 + (-v).exp());
    let raw = s * (ZETA - GAMMA) + GAMMA;
    if raw < 0.0 {
        (0.0, 0.0)
    } else if raw > 1.0 {
        (1.0, 0.0)
    } else {
        (raw, s * (1.0 - s) * (ZETA - GAMMA))
    }
}

/// The `V` with `h(V) = r` for `r ∈ [0, 1)`.
#[inline]
fn inverse_rect_sigmoid(r: f64) -> f64 {
    -((ZETA - GAMMA) / (r - GAMMA) - 1.0).ln()
}

/// `1 − |2h − 1|^β` and its derivative in `h`.
#[inline]
fn regulariser(h: f64, beta: f64) -> (f64, f64) {
    let a = 2.0 * h - 1.0;
    if a == 0.0 {
        return (1.0, 0.0);
    }
    let p = a.abs().powf(beta - 1.0);
    (1.0 - p * a.abs(), -2.0 * beta * p * a.signum())
}

/// One layer's AdaRound problem on the host (Burn layout, row-major `[n, m]`).
pub(crate) struct Rounder {
    n: usize,
    m: usize,
    /// `H` (f64 for the loss, f32 for the per-iteration GEMM).
    #[cfg_attr(not(test), allow(dead_code))]
    h: Vec<f64>,
    h32: Vec<f32>,
    /// `G·W`, `[n, m]`.
    #[cfg_attr(not(test), allow(dead_code))]
    gw: Vec<f64>,
    gw32: Vec<f32>,
    /// `tr(WᵀΣW)`, if `Σ` is known.
    #[cfg_attr(not(test), allow(dead_code))]
    wsw: Option<f64>,
    /// `⌊g⌋` and `g − ⌊g⌋` per element, `g = w/s + z` (`z` where `s = 0`).
    base: Vec<f32>,
    frac: Vec<f32>,
    /// Effective scale and zero-point per element.
    scale: Vec<f32>,
    zero: Vec<f32>,
    /// Code range.
    lo: f32,
    hi: f32,
}

impl Rounder {
    /// Sets up the problem of `w` (`[n, m]`) with mean statistics `h`, optional `g` (`G = H`
    /// without it) and optional float Gram `sigma` (only for the loss's constant; `Σ = H`
    /// without `g`), on the grid of `params` under `spec`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        w: &[f32],
        h: Vec<f64>,
        g: Option<&[f64]>,
        sigma: Option<&[f64]>,
        params: &HostParams,
        spec: &QuantSpec,
        n: usize,
        m: usize,
    ) -> Result<Self> {
        let spec = &crate::quantizer::linear_spec(spec);
        let layout = spec.check_shape(&[n, m])?;
        let per_outer = layout.axis_len * layout.inner;
        let zeros = params.zero_points.as_deref();
        let (mut scale, mut zero) = (vec![0f32; n * m], vec![0f32; n * m]);
        for idx in 0..n * m {
            let cell = layout.cell(
                idx / per_outer,
                (idx / layout.inner) % layout.axis_len,
                idx % layout.inner,
            );
            scale[idx] = params.scales[cell];
            zero[idx] = zeros.map_or(0.0, |z| z[cell]);
        }
        let (mut base, mut frac) = (vec![0f32; n * m], vec![0f32; n * m]);
        for idx in 0..n * m {
            let (s, z) = (scale[idx], zero[idx]);
            // The core's element rule (host::quantize_codes): a zero scale maps to z.
            let gu = if s == 0.0 { z } else { w[idx] / s + z };
            base[idx] = gu.floor();
            frac[idx] = gu - base[idx];
        }
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let gw = product(g.unwrap_or(&h), &w64, n, m);
        let wsw = match (g, sigma) {
            (None, _) => Some(dot(&w64, &gw)),
            (Some(_), Some(sigma)) => Some(dot(&w64, &product(sigma, &w64, n, m))),
            (Some(_), None) => None,
        };
        Ok(Self {
            n,
            m,
            h32: h.iter().map(|&v| v as f32).collect(),
            h,
            gw32: gw.iter().map(|&v| v as f32).collect(),
            gw,
            wsw,
            base,
            frac,
            scale,
            zero,
            lo: spec.format.min_value(),
            hi: spec.format.max_value(),
        })
    }

    /// The initial `V`: `h(V) = g − ⌊g⌋`.
    pub(crate) fn initial_v(&self) -> Vec<f64> {
        self.frac
            .iter()
            .map(|&r| inverse_rect_sigmoid(r as f64))
            .collect()
    }

    /// Soft weight of element `i` at `h`, and whether the code clamp lets the gradient pass.
    #[inline]
    fn soft(&self, i: usize, h: f64) -> (f64, bool) {
        let q = self.base[i] as f64 + h;
        let (lo, hi) = (self.lo as f64, self.hi as f64);
        let (qc, pass) = if q < lo {
            (lo, false)
        } else if q > hi {
            (hi, false)
        } else {
            (q, true)
        };
        (self.scale[i] as f64 * (qc - self.zero[i] as f64), pass)
    }

    /// `∂objective/∂V` into `grad`; `w_hat` and `hw` are `[n, m]` scratch.
    pub(crate) fn gradient(
        &self,
        v: &[f64],
        lambda: f64,
        beta: f64,
        grad: &mut [f64],
        w_hat: &mut [f32],
        hw: &mut [f32],
    ) {
        w_hat
            .par_iter_mut()
            .with_min_len(CHUNK)
            .enumerate()
            .for_each(|(i, out)| *out = self.soft(i, rect_sigmoid(v[i]).0).0 as f32);
        let (n, m) = (self.n, self.m);
        matmul(
            ViewMut::rows(hw, n, m),
            false,
            0.0,
            View::rows(&self.h32, n, n),
            View::rows(w_hat, n, m),
            1.0,
        );
        grad.par_iter_mut()
            .with_min_len(CHUNK)
            .enumerate()
            .for_each(|(i, out)| {
                let (h, dh) = rect_sigmoid(v[i]);
                if dh == 0.0 {
                    *out = 0.0;
                    return;
                }
                let (_, pass) = self.soft(i, h);
                let mut d = if pass {
                    2.0 * (hw[i] as f64 - self.gw32[i] as f64) * self.scale[i] as f64
                } else {
                    0.0
                };
                if lambda != 0.0 {
                    d += lambda * regulariser(h, beta).1;
                }
                *out = d * dh;
            });
    }

    /// Runs Adam on `V` from its initial value for `cfg.iterations` steps.
    pub(crate) fn optimise(&self, cfg: &Adaround) -> Vec<f64> {
        let len = self.n * self.m;
        let mut v = self.initial_v();
        let (mut m1, mut m2, mut grad) = (vec![0f64; len], vec![0f64; len], vec![0f64; len]);
        let (mut w_hat, mut hw) = (vec![0f32; len], vec![0f32; len]);
        let lr = cfg.learning_rate;
        for t in 0..cfg.iterations {
            let (lambda, beta) = cfg.schedule(t);
            self.gradient(&v, lambda, beta, &mut grad, &mut w_hat, &mut hw);
            let c1 = 1.0 - ADAM_BETA1.powi(t as i32 + 1);
            let c2 = 1.0 - ADAM_BETA2.powi(t as i32 + 1);
            v.par_iter_mut()
                .with_min_len(CHUNK)
                .zip(m1.par_iter_mut())
                .zip(m2.par_iter_mut())
                .zip(grad.par_iter())
                .for_each(|(((x, a), b), &gr)| {
                    *a = ADAM_BETA1 * *a + (1.0 - ADAM_BETA1) * gr;
                    *b = ADAM_BETA2 * *b + (1.0 - ADAM_BETA2) * gr * gr;
                    *x -= lr * (*a / c1) / ((*b / c2).sqrt() + ADAM_EPS);
                });
        }
        v
    }

    /// Hardened codes `clamp(⌊g⌋ + 1[h(V) > ½], q_min, q_max)` and their dequantized values
    /// `(decode(code) − z)·s`, the arithmetic of `QuantTensor::dequantize`.
    pub(crate) fn harden(&self, v: &[f64], format: &Format) -> (Vec<i32>, Vec<f32>) {
        let mut codes = vec![0i32; v.len()];
        let mut w_hat = vec![0f32; v.len()];
        for (i, &x) in v.iter().enumerate() {
            let up = if rect_sigmoid(x).0 > 0.5 { 1.0 } else { 0.0 };
            let q = (self.base[i] + up).clamp(self.lo, self.hi);
            codes[i] = format.encode(q);
            w_hat[i] = (format.decode(codes[i]) - self.zero[i]) * self.scale[i];
        }
        (codes, w_hat)
    }
}

/// The f64 objective and diagnostics, for the tests.
#[cfg(test)]
impl Rounder {
    /// The soft weight `Ŵ(V)` in f64.
    pub(crate) fn soft_weight(&self, v: &[f64]) -> Vec<f64> {
        (0..v.len())
            .map(|i| self.soft(i, rect_sigmoid(v[i]).0).0)
            .collect()
    }

    /// `‖XW − X̃Ŵ‖²/N` from the statistics, in f64, or without the constant `tr(WᵀΣW)` when
    /// `Σ` is unknown.
    pub(crate) fn reconstruction(&self, w_hat: &[f64]) -> f64 {
        let hw = product(&self.h, w_hat, self.n, self.m);
        self.wsw.unwrap_or(0.0) - 2.0 * dot(w_hat, &self.gw) + dot(w_hat, &hw)
    }

    /// [`Rounder::reconstruction`] of an f32 weight.
    pub(crate) fn reconstruction_f32(&self, w_hat: &[f32]) -> f64 {
        self.reconstruction(&w_hat.iter().map(|&v| v as f64).collect::<Vec<_>>())
    }

    /// The full objective at `V`: reconstruction plus `λ·Σ(1 − |2h − 1|^β)` (f64).
    pub(crate) fn objective(&self, v: &[f64], lambda: f64, beta: f64) -> f64 {
        let reg: f64 = v
            .iter()
            .map(|&x| regulariser(rect_sigmoid(x).0, beta).0)
            .sum();
        self.reconstruction(&self.soft_weight(v)) + lambda * reg
    }

    /// Fraction of the rounding variables still undecided, `|h(V) − ½| < 0.4`.
    pub(crate) fn undecided(&self, v: &[f64]) -> f64 {
        let k = v
            .iter()
            .filter(|&&x| (rect_sigmoid(x).0 - 0.5).abs() < 0.4)
            .count();
        k as f64 / v.len() as f64
    }
}

/// `a·b` for row-major `a` (`[n, n]`) and `b` (`[n, m]`), in f64.
fn product(a: &[f64], b: &[f64], n: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * m];
    matmul(
        ViewMut::rows(&mut out, n, m),
        false,
        0.0,
        View::rows(a, n, n),
        View::rows(b, n, m),
        1.0,
    );
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests;
