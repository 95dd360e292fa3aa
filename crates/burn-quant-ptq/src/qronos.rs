//! Qronos (Zhang, Saab et al., ICLR 2026, arXiv 2505.11695):
//! "correcting the past by shaping the future" on the float target `‖XW − X̃Ŵ‖`.
//!
//! Step 1 absorbs the whole input mismatch at once:
//! - the first input channel is rounded from its best real value against the float target
//!   with the others held at W₀: `a₀ = (Σ_s G[0, s]·W₀[s] − Σ_{s≥1} H[0, s]·W₀[s]) / H₀₀`;
//! - every other channel is re-fitted to the float target by ridge regression toward W₀:
//!   `(H_{>0} + λI)·V_{>0} = G_{>0,:}·W₀ + λ·W₀_{>0} − H_{>0,0}·q₀`.
//!
//! After it the rows satisfy the float target's normal equations, and steps 2…n reduce to
//! GPTQ's error diffusion with `U' = upper_chol((H_{>0} + λI)⁻¹)`. The reference obtains `U'`
//! by a Sherman–Morrison downdate of `(H + λI)⁻¹` followed by a Cholesky; here `U'` comes
//! directly from the trailing block (one Cholesky and one triangular inverse, same O(n³)), and
//! the ridge solve uses it too (`V = U'ᵀ·U'·RHS`, f64). `λ = α·λ_max(H)` with λ_max from 30
//! power iterations; a failed factorization multiplies λ by 10 (warning).
//!
//! Group parameters are frozen from W₀ before the algorithm by default, as in Brevitas: its LLM
//! flow uses `parameter_from_stats` weight scales (and zero-points), set from the weights by
//! one forward pass before Qronos runs, so every group's scale comes from the weights before
//! any update. With `static_groups` off, a group's parameters come from its rows when the
//! sweep reaches its first row, every earlier update included
//! ([`DynamicGroupTiming::GroupStart`]): Brevitas's Qronos has no `find_params` on a block-start
//! copy of the weight (a runtime-statistics weight quantizer would recompute the scales from
//! the current weight at every step), so the GPTQ references' block-start timing is not
//! applied here. One default differs from Brevitas's, measured (see the field): α = 1e-5
//! instead of 1e-6.

use burn_quant_core::QuantSpec;
use serde::{Deserialize, Serialize};

use std::time::Instant;

use crate::algorithm::{
    DynamicGroupTiming, HostQuantized, LayerReport, Prepared, Stage2Algorithm, check_block,
    check_weight, in_processing_order, permute_rows, site_statistics, to_f32,
};
use crate::error::{PtqError, Result};
use crate::linalg::{View, ViewMut, damped_inverse_factor, lambda_max, matmul};
use crate::quantizer::{ParamTiming, RowQuantizer};
use crate::rtn::rtn_host;
use crate::sequential::{Feedback, Sweep, lazy_block};
use crate::stats::{CalibInputs, LayerStats};

/// The rows right after step 1 (`[n − 1, d_out]`, processing order, f64) and the λ used.
pub(crate) type AfterStep1 = (Vec<f64>, f64);

/// Qronos (defaults: Brevitas's, except α; see the fields).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Qronos {
    /// Damping relative to the largest eigenvalue of H (1e-5). Brevitas defaults to 1e-6 (its
    /// `--qronos-alpha`; the paper's MXFP4 configurations use 1e-3). Measured on SmolLM2's
    /// block 3 with real inputs (3 bits, 4 layers, groups and per-channel, act-order on and
    /// off): 1e-5 is within 0.3% of 1e-6 in 22 of 24 settings and fixes the two where 1e-6
    /// under-damps an outlier-dominated Hessian (q_proj, λ_max = 308·mean(diag H), act-order:
    /// 0.1815 → 0.1471 float-target error, where GPTQ gets 0.1753; GPTQ degrades the same way
    /// at that damping).
    pub alpha: f64,
    /// Power iterations for λ_max (30).
    pub power_iters: usize,
    /// Lazy-update block size of steps 2…n (128).
    pub block_size: usize,
    /// Process inputs by decreasing `H_jj` (off). Implies static group parameters.
    pub act_order: bool,
    /// Compute all group parameters from W₀ before any update (on, as Brevitas's frozen weight
    /// scales). Step 1's ridge re-fit can move rows far from W₀ where `H` is ill-conditioned;
    /// parameters computed from those rows then waste the grid (measured on synthetic
    /// heavy-tailed inputs: 3-bit error 0.69 with dynamic parameters vs 0.25 static; on
    /// SmolLM2's real inputs the two are within 1%).
    pub static_groups: bool,
}

impl Default for Qronos {
    fn default() -> Self {
        Self {
            alpha: 1e-5,
            power_iters: 30,
            block_size: 128,
            act_order: false,
            static_groups: true,
        }
    }
}

impl Qronos {
    /// Turns act-order on or off.
    pub fn with_act_order(mut self, on: bool) -> Self {
        self.act_order = on;
        self
    }
    /// Sets the relative damping α.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// Sets the lazy-update block size.
    pub fn with_block_size(mut self, block: usize) -> Self {
        self.block_size = block;
        self
    }
    /// Freezes group parameters before the algorithm (the default) or computes them when each
    /// group is reached.
    pub fn with_static_groups(mut self, on: bool) -> Self {
        self.static_groups = on;
        self
    }

    /// Checks every field: `alpha` finite and > 0, `power_iters` ≥ 1, `block_size` ≥ 1
    /// ([`PtqError::InvalidConfig`] naming the field otherwise).
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(PtqError::config(
                "alpha",
                self.alpha,
                "must be finite and > 0",
            ));
        }
        if self.power_iters == 0 {
            return Err(PtqError::config("power_iters", 0, "must be at least 1"));
        }
        check_block(self.block_size)
    }

    /// The weight-independent part: the statistics checked, dead inputs found, the
    /// processing order, `H` and `G` permuted into it, and the damped inverse factor of the
    /// trailing block (`None` when no damping makes it positive definite).
    pub(crate) fn prepare_site(&self, stats: &LayerStats) -> Result<QronosPrepared> {
        self.validate()?;
        let n = stats.d_in();
        if stats.inputs() == CalibInputs::None || stats.tokens() == 0 {
            return Err(PtqError::EmptyCalibration {
                algorithm: "qronos",
            });
        }
        let (h, g, dead) = site_statistics("qronos", stats, true)?;
        let g = g.expect("requested");
        let (order, h, [g]) = in_processing_order(self.act_order, n, h, [g]);
        // The factor of the trailing block first: if it cannot be had, nothing is quantized.
        let lmax = lambda_max(&h, n, self.power_iters);
        let lambda0 = self.alpha * lmax;
        let floor = 1e-8 * (0..n).map(|j| h[j * n + j]).fold(0f64, f64::max).max(1e-30);
        let k = n.saturating_sub(1);
        let factor = if k == 0 {
            Some(crate::linalg::DampedFactor {
                u: vec![],
                lambda: lambda0.max(floor),
                retries: 0,
            })
        } else {
            let trailing: Vec<f64> = (0..k * k).map(|i| h[(1 + i / k) * n + 1 + i % k]).collect();
            damped_inverse_factor(&trailing, k, lambda0, floor)
        };
        let u32 = factor.as_ref().map(|f| to_f32(&f.u)).unwrap_or_default();
        Ok(QronosPrepared {
            config: *self,
            n,
            tokens: stats.tokens(),
            h,
            g,
            dead,
            order,
            factor,
            u32,
        })
    }

    /// The algorithm; with `after_step1`, also returns the rows `V` right after step 1
    /// (processing order, f64) and the λ used, for the normal-equation oracle.
    pub(crate) fn run(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        stats: &LayerStats,
        spec: &QuantSpec,
        after_step1: bool,
    ) -> Result<(HostQuantized, Option<AfterStep1>)> {
        self.validate()?;
        check_weight(weight, shape, stats.d_in())?;
        let prepared = self.prepare_site(stats)?;
        self.run_prepared(weight, shape, &prepared, spec, after_step1)
    }

    /// The weight-dependent part, on a site's [`QronosPrepared`].
    fn run_prepared(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        p: &QronosPrepared,
        spec: &QuantSpec,
        after_step1: bool,
    ) -> Result<(HostQuantized, Option<AfterStep1>)> {
        let started = Instant::now();
        let [n, m] = check_weight(weight, shape, p.n)?;
        let mut w = weight.to_vec();
        for &j in &p.dead {
            w[j * m..(j + 1) * m].fill(0.0);
        }
        let mut report = LayerReport::new("qronos", shape, p.tokens);
        report.dead_inputs = p.dead.len();
        let (order, h, g) = (&p.order, &p.h, &p.g);
        // Dynamic parameters see every earlier row's feedback (see the module doc).
        let timing = if self.static_groups {
            ParamTiming::Static
        } else {
            ParamTiming::Dynamic(DynamicGroupTiming::GroupStart)
        };
        let mut rq = RowQuantizer::new("qronos", spec, &w, n, m, timing, self.act_order)?;
        let w0: Vec<f64> = permute_rows(&w, m, order)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let k = n - 1;
        let Some(f) = p.factor.as_ref() else {
            report.warn(format!(
                "qronos: the {n}×{n} Hessian is not positive definite at any damping; falling \
                 back to RTN"
            ));
            let (codes, params, w_hat) = rtn_host("qronos", &w, n, m, spec)?;
            report.fell_back_to_rtn = true;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok((
                HostQuantized {
                    codes,
                    params,
                    w_hat,
                    shape,
                    report,
                },
                None,
            ));
        };
        if f.retries > 0 {
            report.warn(format!(
                "qronos: H + α·λ_max·I is not numerically positive definite at α = {}; damping \
                 raised to λ = {:.3e} after {} retries",
                self.alpha, f.lambda, f.retries
            ));
        }
        let lambda = f.lambda;
        report.damping = Some(lambda);
        report.damping_retries = f.retries;
        report.dynamic_groups = rq.dynamic_unit().is_some();
        report.block_size = Some(lazy_block(self.block_size, &rq));

        // Step 1a: a₀ against the float target, with the other rows at W₀ (undamped H₀₀).
        let mut a0 = vec![0f64; m];
        for s in 0..n {
            let c = g[s] - if s > 0 { h[s] } else { 0.0 };
            if c != 0.0 {
                a0.iter_mut()
                    .zip(&w0[s * m..(s + 1) * m])
                    .for_each(|(a, b)| *a += c * b);
            }
        }
        let a0: Vec<f32> = a0.iter().map(|v| (v / h[0]) as f32).collect();
        if let Some(i) = a0.iter().position(|v| !v.is_finite()) {
            return Err(PtqError::InvalidStatistics {
                reason: format!(
                    "qronos: the first channel's target a₀[{i}] = {} is not finite",
                    a0[i]
                ),
            });
        }
        let mut codes = vec![0i32; n * m];
        let mut w_hat = vec![0f32; n * m];
        let row0 = order[0];
        if let Some(rows) = rq.needs_unit(row0) {
            // The unit's current rows are still W₀.
            let pos = if rows.len() == 1 { 0..1 } else { rows.clone() };
            let data: Vec<f32> = w0[pos.start * m..pos.end * m]
                .iter()
                .map(|&v| v as f32)
                .collect();
            rq.compute_unit(rows, &data)?;
        }
        let mut q0 = vec![0f32; m];
        rq.quantize_row(row0, &a0, &mut codes[row0 * m..(row0 + 1) * m], &mut q0);
        w_hat[row0 * m..(row0 + 1) * m].copy_from_slice(&q0);

        // Step 1b: V_{>0} = K'·RHS, RHS = G_{>0,:}·W₀ + λ·W₀_{>0} − H_{>0,0} ⊗ q₀.
        let mut x = vec![0f32; n * m];
        let mut v_after = None;
        if k > 0 {
            let mut rhs = vec![0f64; k * m];
            for (j, r) in rhs.chunks_exact_mut(m).enumerate() {
                let (jj, hj0) = (j + 1, h[(j + 1) * n]);
                r.iter_mut()
                    .zip(&w0[jj * m..(jj + 1) * m])
                    .zip(&q0)
                    .for_each(|((r, w), q)| *r = lambda * w - hj0 * *q as f64);
            }
            matmul(
                ViewMut::rows(&mut rhs, k, m),
                true,
                1.0,
                View::rows(g, n, n).block(1, 0, k, n),
                View::rows(&w0, n, m),
                1.0,
            );
            let mut tmp = vec![0f64; k * m];
            matmul(
                ViewMut::rows(&mut tmp, k, m),
                false,
                0.0,
                View::rows(&f.u, k, k),
                View::rows(&rhs, k, m),
                1.0,
            );
            matmul(
                ViewMut::rows(&mut rhs, k, m),
                false,
                0.0,
                View::rows(&f.u, k, k).t(),
                View::rows(&tmp, k, m),
                1.0,
            );
            if let Some(i) = rhs.iter().position(|v| !v.is_finite()) {
                return Err(PtqError::InvalidStatistics {
                    reason: format!("qronos: the ridge solve produced {} at {i}", rhs[i]),
                });
            }
            x[m..]
                .iter_mut()
                .zip(&rhs)
                .for_each(|(a, b)| *a = *b as f32);
            if after_step1 {
                v_after = Some((rhs, lambda));
            }

            // Steps 2…n: GPTQ's sweep on the downdated inverse factor.
            let sweep = Sweep {
                n,
                m,
                order,
                start: 1,
                feedback: Feedback::Obs { u: &p.u32 },
                block: self.block_size,
            };
            sweep.run(&mut x, &mut rq, &mut codes, &mut w_hat, false)?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok((
            HostQuantized {
                codes,
                params: rq.into_params(),
                w_hat,
                shape,
                report,
            },
            v_after,
        ))
    }
}

impl Stage2Algorithm for Qronos {
    fn name(&self) -> &'static str {
        "qronos"
    }

    fn inputs(&self) -> CalibInputs {
        CalibInputs::FloatAndQuantized
    }

    fn quantize_host(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        stats: &LayerStats,
        spec: &QuantSpec,
    ) -> Result<HostQuantized> {
        self.run(weight, shape, stats, spec, false).map(|r| r.0)
    }

    fn prepare<'a>(&self, stats: &'a LayerStats) -> Result<Prepared<'a>> {
        Ok(Prepared::with_cache(stats, self.prepare_site(stats)?))
    }

    fn quantize_prepared_host(
        &self,
        weight: &[f32],
        shape: [usize; 2],
        prepared: &Prepared<'_>,
        spec: &QuantSpec,
    ) -> Result<HostQuantized> {
        match prepared.cache::<QronosPrepared>() {
            Some(p) if p.config == *self && p.n == prepared.stats().d_in() => self
                .run_prepared(weight, shape, p, spec, false)
                .map(|r| r.0),
            _ => self.quantize_host(weight, shape, prepared.stats(), spec),
        }
    }
}

/// Qronos's preparation of one site's statistics ([`Stage2Algorithm::prepare`]): everything
/// that does not depend on the weight, computed once for q/k/v and once for gate/up.
pub(crate) struct QronosPrepared {
    /// The configuration that prepared it (a preparation is only used by the same one).
    config: Qronos,
    n: usize,
    tokens: u64,
    /// Mean `X̃ᵀX̃` (dead diagonal entries 1) and `X̃ᵀX`, in processing order.
    h: Vec<f64>,
    g: Vec<f64>,
    dead: Vec<usize>,
    order: Vec<usize>,
    /// `U'` of the damped trailing block, `None` when no damping works (RTN fallback).
    factor: Option<crate::linalg::DampedFactor>,
    /// `U'` in f32, for the sweep.
    u32: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gptq;
    use burn::tensor::{Device, Tensor, TensorData};

    /// A site's statistics prepared once give, for every consumer, the codes, parameters and
    /// Ŵ of a per-layer `quantize_host` (which prepares them again each time), and a
    /// preparation by another configuration is not used.
    #[test]
    fn prepared_once_equals_per_call_quantization() {
        let (n, t) = (80, 400);
        let x = correlated(t, n, 201);
        let xq = perturbed(&x, n, 0.1, 202);
        let s = stats(&x, Some(&xq), n, true);
        let spec = QuantSpec::int4_weight_per_group(16);
        for (act, fixed) in [(false, true), (true, true), (false, false)] {
            let qronos = Qronos::default()
                .with_act_order(act)
                .with_static_groups(fixed);
            let prepared = qronos.prepare(&s).unwrap();
            assert!(prepared.cache::<QronosPrepared>().is_some());
            for (m, seed) in [(24, 203), (8, 204), (40, 205)] {
                let w = weights(n, m, seed);
                let once = qronos
                    .quantize_prepared_host(&w, [n, m], &prepared, &spec)
                    .unwrap();
                let each = qronos.quantize_host(&w, [n, m], &s, &spec).unwrap();
                assert_eq!(once.codes, each.codes, "act {act} static {fixed} m {m}");
                assert_eq!(once.params, each.params);
                assert_eq!(once.w_hat, each.w_hat);
                assert_eq!(once.report.damping, each.report.damping);
            }
            // Prepared with another α: the statistics are prepared again for this one.
            let other = qronos.with_alpha(1e-2);
            let w = weights(n, 24, 206);
            let stale = other
                .quantize_prepared_host(&w, [n, 24], &prepared, &spec)
                .unwrap();
            let fresh = other.quantize_host(&w, [n, 24], &s, &spec).unwrap();
            assert_eq!(stale.codes, fresh.codes);
            assert_eq!(stale.report.damping, fresh.report.damping);
        }
    }

    /// `quantize_site` (prepared once, consumers in parallel) equals per-layer `quantize` bit
    /// for bit, on one thread and on several.
    #[test]
    fn site_quantization_is_parallel_and_deterministic() {
        let (n, t) = (64, 300);
        let x = correlated(t, n, 211);
        let xq = perturbed(&x, n, 0.1, 212);
        let s = stats(&x, Some(&xq), n, true);
        let spec = QuantSpec::int4_weight_per_group(32);
        let qronos = Qronos::default().with_act_order(true);
        let device = Device::flex();
        let ws: Vec<Tensor<2>> = [(48, 221), (16, 222), (16, 223)]
            .iter()
            .map(|&(m, seed)| {
                Tensor::from_data(TensorData::new(weights(n, m, seed), [n, m]), &device)
            })
            .collect();
        let host = |t: &Tensor<2>| t.to_data().try_to_vec::<f32>().unwrap();
        let sequential: Vec<_> = ws
            .iter()
            .map(|w| qronos.quantize(w, &s, &spec).unwrap())
            .collect();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let site = pool.install(|| qronos.quantize_site(&ws, &s, &spec).unwrap());
            assert_eq!(site.len(), ws.len());
            for (a, b) in site.iter().zip(&sequential) {
                assert_eq!(
                    host(&a.tensor.dequantize()),
                    host(&b.tensor.dequantize()),
                    "{threads} threads"
                );
                assert_eq!(a.report.damping, b.report.damping);
            }
        }
        // An error in one consumer is the site's error.
        let bad =
            Tensor::<2>::from_data(TensorData::new(weights(n + 1, 4, 9), [n + 1, 4]), &device);
        assert!(matches!(
            qronos.quantize_site(&[ws[0].clone(), bad], &s, &spec),
            Err(PtqError::ShapeMismatch { .. })
        ));
    }
    use crate::rtn::Rtn;
    use crate::testutil::{correlated, output_error, perturbed, stats, upstream, weights};

    /// notes §5 oracle 1: with X̃ = X, Qronos is GPTQ with damping λ = α·λ_max (same order,
    /// same group-parameter timing: Qronos's dynamic groups are found when the sweep reaches
    /// them, GPTQ's [`DynamicGroupTiming::GroupStart`]).
    #[test]
    fn reduces_to_gptq_without_mismatch() {
        let (n, m, t) = (96, 24, 500);
        let x = correlated(t, n, 71);
        let w = weights(n, m, 72);
        let s = stats(&x, None, n, true);
        let h = s.hessian();
        let alpha = 1e-3;
        let lambda = alpha * lambda_max(&h, n, 30);
        let mean_diag = (0..n).map(|j| h[j * n + j]).sum::<f64>() / n as f64;
        for spec in [
            QuantSpec::int4_weight_per_group(32),
            QuantSpec::int8_weight_per_channel().with_bits(3),
        ] {
            for (act, fixed) in [(false, false), (false, true), (true, true)] {
                let qronos = Qronos::default()
                    .with_alpha(alpha)
                    .with_act_order(act)
                    .with_static_groups(fixed);
                let q = qronos.quantize_host(&w, [n, m], &s, &spec).unwrap();
                let gptq = Gptq::default()
                    .with_percdamp(lambda / mean_diag)
                    .with_act_order(act)
                    .with_static_groups(fixed)
                    .with_dynamic_group_timing(DynamicGroupTiming::GroupStart);
                let g = gptq.quantize_host(&w, [n, m], &s, &spec).unwrap();
                let same = q.codes.iter().zip(&g.codes).filter(|(a, b)| a == b).count();
                assert!(
                    same as f64 >= 0.995 * (n * m) as f64,
                    "{spec} act {act}: {same} of {}",
                    n * m
                );
                let (eq, eg) = (
                    output_error(&x, &x, &w, &q.w_hat, n, m),
                    output_error(&x, &x, &w, &g.w_hat, n, m),
                );
                assert!((eq - eg).abs() < 0.01 * eg, "{eq} vs {eg}");
            }
        }
    }

    /// notes §5 oracle 2: after step 1 the rows solve the ridge problem's normal equations
    /// `(H_{>0} + λI)·V = G_{>0,:}·W₀ + λ·W₀_{>0} − H_{>0,0}·q₀`.
    #[test]
    fn step_one_solves_the_normal_equations() {
        let (n, m, t) = (64, 16, 400);
        let x = correlated(t, n, 81);
        let xq = perturbed(&x, n, 0.2, 82);
        let w = weights(n, m, 83);
        let s = stats(&x, Some(&xq), n, true);
        let (q, v) = Qronos::default()
            .with_alpha(1e-3)
            .run(&w, [n, m], &s, &QuantSpec::int4_weight_per_group(16), true)
            .unwrap();
        let (v, lambda) = v.unwrap();
        let (h, g) = (s.hessian(), s.cross().unwrap());
        let q0 = &q.w_hat[..m];
        let mut worst = 0f64;
        let mut scale = 0f64;
        for j in 1..n {
            for c in 0..m {
                let lhs: f64 = (1..n)
                    .map(|i| {
                        (h[j * n + i] + if i == j { lambda } else { 0.0 }) * v[(i - 1) * m + c]
                    })
                    .sum();
                let rhs: f64 = (0..n)
                    .map(|i| g[j * n + i] * w[i * m + c] as f64)
                    .sum::<f64>()
                    + lambda * w[j * m + c] as f64
                    - h[j * n] * q0[c] as f64;
                worst = worst.max((lhs - rhs).abs());
                scale = scale.max(rhs.abs());
            }
        }
        assert!(worst < 1e-8 * scale, "residual {worst} vs {scale}");
    }

    /// notes §5 oracle 4 on a simulated quantized producer (`X̃ = Z·Â`, 4-bit `Â`): on the
    /// float target Qronos is below GPTQ run on X̃, which is below RTN, at 3 and 4 bits.
    /// (With act-order on these synthetic, strongly ill-conditioned inputs Qronos is below RTN
    /// but not always below GPTQ at 3 bits — measured 0.266 vs 0.243; on SmolLM2's real inputs
    /// it is, see the root test `ptq_real_layer`.)
    #[test]
    fn beats_gptq_and_rtn_on_the_float_target() {
        let (n, m, t) = (128, 48, 1024);
        let (x, xq) = upstream(t, n, 4, 91);
        let w = weights(n, m, 93);
        let paired = stats(&x, Some(&xq), n, true);
        let single = stats(&x, Some(&xq), n, false);
        for spec in [
            QuantSpec::int4_weight_per_group(32),
            QuantSpec::int4_weight_per_group(32).with_bits(3),
            // A short last group: 128 = 2·48 + 32.
            QuantSpec::int4_weight_per_group(48).with_bits(3),
        ] {
            let e_rtn = output_error(
                &x,
                &xq,
                &w,
                &Rtn.quantize_host(&w, [n, m], &paired, &spec).unwrap().w_hat,
                n,
                m,
            );
            let e_gptq = output_error(
                &x,
                &xq,
                &w,
                &Gptq::default()
                    .quantize_host(&w, [n, m], &single, &spec)
                    .unwrap()
                    .w_hat,
                n,
                m,
            );
            let e = output_error(
                &x,
                &xq,
                &w,
                &Qronos::default()
                    .quantize_host(&w, [n, m], &paired, &spec)
                    .unwrap()
                    .w_hat,
                n,
                m,
            );
            assert!(
                e < 0.9 * e_gptq && e_gptq < e_rtn,
                "{spec}: Qronos {e}, GPTQ {e_gptq}, RTN {e_rtn}"
            );
            let q = Qronos::default()
                .with_act_order(true)
                .quantize_host(&w, [n, m], &paired, &spec)
                .unwrap();
            let e = output_error(&x, &xq, &w, &q.w_hat, n, m);
            assert!(
                e < 0.85 * e_rtn,
                "{spec} act-order: Qronos {e}, RTN {e_rtn}"
            );
            assert!(q.w_hat.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn singular_inputs_stay_finite() {
        let (n, m, t) = (48, 8, 30);
        // Fewer tokens than inputs (rank ≤ 30), a duplicated and a dead input.
        let mut x = correlated(t, n, 95);
        for r in 0..t {
            x[r * n + 7] = x[r * n + 6];
            x[r * n + 9] = 0.0;
        }
        let xq = perturbed(&x, n, 0.1, 96);
        let xq: Vec<f32> = xq
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % n == 9 { 0.0 } else { v })
            .collect();
        let w = weights(n, m, 97);
        let q = Qronos::default()
            .quantize_host(
                &w,
                [n, m],
                &stats(&x, Some(&xq), n, true),
                &QuantSpec::int4_weight_per_group(16),
            )
            .unwrap();
        assert_eq!(q.report.dead_inputs, 1);
        assert!(q.w_hat.iter().all(|v| v.is_finite()));
        assert!(
            Qronos::default()
                .with_alpha(0.0)
                .quantize_host(
                    &w,
                    [n, m],
                    &stats(&x, Some(&xq), n, true),
                    &QuantSpec::int4_weight_per_group(16)
                )
                .is_err()
        );
    }
}
