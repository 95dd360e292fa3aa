//! GPTAQ, asymmetric calibration (Li et al., ICML 2025, arXiv 2504.02692): GPTQ's OBS/Cholesky machinery aimed at the float model's output, `‖XW − X̃Ŵ‖`.
//!
//! With `H = X̃ᵀX̃`, `P₀ = (X − X̃)ᵀX̃ = Gᵀ − H`, `U = upper_chol((H + λI)⁻¹)` and
//! `P = α·triu₊(P₀·Uᵀ)·U` (strictly upper triangular, α = 0.25 as in the reference code),
//! the GPTQ sweep gets one extra term, applied exactly as the reference's `fasterquant` does
//! with its lazy blocks of `block_size` rows:
//! - inside a block, quantizing row t moves each later row t' of the block by
//!   `−(U[t, t']·e_t − P[t, t']·v_t)`, with `v_t` the row's value just before it is quantized
//!   and `e_t = (v_t − q_t)/U[t, t]`;
//! - at the end of the block, every row after it moves by `−Σ_t (U[t, t']·e_t − P[t, t']·ŵ_t)`,
//!   where `ŵ_t = v_t − e_t·U[t, t]` is the row's value after its own in-block update — the
//!   quantized value `q_t` up to one f32 rounding, not `v_t`.
//!
//! The two updates feed different values through P, so the result depends on the block size
//! (at block size 1 every later row gets `ŵ_t`; with one block covering all rows, `v_t`); the
//! default, 128, is the reference's. Dynamic group parameters (`static_groups` off, no
//! act-order) are found as the reference finds them: from the group's rows as they were when
//! the lazy block holding its first row started, before the in-block feedback of the rows
//! quantized before it in that block ([`DynamicGroupTiming::BlockStart`];
//! [`DynamicGroupTiming::GroupStart`] includes that feedback, as this crate did before). The
//! test `matches_the_reference_code_for_code` runs an independent port of the reference beside
//! this one: the codes are identical, with frozen groups, with dynamic groups of one block, of
//! 32 rows (four per block, a short last one of 12) and of 96 rows (straddling blocks). The
//! remaining differences from the reference:
//! - `U` and `P` are computed in f64 (then rounded to f32 for the sweep, which is f32 as in
//!   the reference);
//! - per-channel parameters are computed after dead inputs are zeroed (the reference computes
//!   them before), which only matters if a dead input holds a channel's extreme.
//!
//! Brevitas's port feeds yet another value through P in the lazy update: the block's rows as
//! they were at block start.

use burn_quant_core::QuantSpec;
use serde::{Deserialize, Serialize};

use crate::algorithm::{
    DynamicGroupTiming, HostQuantized, Problem, Stage2Algorithm, check_block, check_percentage,
    in_processing_order, permute_rows, problem, relative_damping, to_f32,
};
use crate::error::{PtqError, Result};
use crate::linalg::{View, ViewMut, damped_inverse_factor, matmul};
use crate::quantizer::{ParamTiming, RowQuantizer};
use crate::rtn::rtn_host;
use crate::sequential::{Feedback, Sweep, lazy_block};
use crate::stats::{CalibInputs, LayerStats};

/// GPTAQ with the reference defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gptaq {
    /// Damping as a fraction of the mean Hessian diagonal (0.01).
    pub percdamp: f64,
    /// Weight of the asymmetry correction (0.25; 0 gives GPTQ).
    pub alpha: f64,
    /// Lazy-update block size (128).
    pub block_size: usize,
    /// Process inputs by decreasing `H_jj` (off). Implies static group parameters.
    pub act_order: bool,
    /// Compute all group parameters from the weight before any feedback (off; the reference's
    /// `static_groups`). Brevitas's LLM flow freezes its weight scales before the sweep, so
    /// `true` is the setting to compare with it.
    pub static_groups: bool,
    /// When dynamic groups find their parameters ([`DynamicGroupTiming::BlockStart`], the
    /// reference's: from the group's rows at the start of the lazy block holding its first
    /// row).
    pub dynamic_group_timing: DynamicGroupTiming,
}

impl Default for Gptaq {
    fn default() -> Self {
        Self {
            percdamp: 0.01,
            alpha: 0.25,
            block_size: 128,
            act_order: false,
            static_groups: false,
            dynamic_group_timing: DynamicGroupTiming::BlockStart,
        }
    }
}

impl Gptaq {
    /// Turns act-order on or off.
    pub fn with_act_order(mut self, on: bool) -> Self {
        self.act_order = on;
        self
    }
    /// Sets the lazy-update block size.
    pub fn with_block_size(mut self, block: usize) -> Self {
        self.block_size = block;
        self
    }
    /// Sets the asymmetry weight α.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// Sets the relative damping.
    pub fn with_percdamp(mut self, percdamp: f64) -> Self {
        self.percdamp = percdamp;
        self
    }
    /// Freezes group parameters before the sweep (`true`) or computes each group's when the
    /// sweep reaches it (`false`, the default).
    pub fn with_static_groups(mut self, on: bool) -> Self {
        self.static_groups = on;
        self
    }
    /// Sets when dynamic groups find their parameters.
    pub fn with_dynamic_group_timing(mut self, timing: DynamicGroupTiming) -> Self {
        self.dynamic_group_timing = timing;
        self
    }

    /// Checks every field: `percdamp` finite and > 0, `alpha` finite and ≥ 0, `block_size` ≥ 1
    /// ([`PtqError::InvalidConfig`] naming the field otherwise).
    pub fn validate(&self) -> Result<()> {
        check_percentage("percdamp", self.percdamp)?;
        check_block(self.block_size)?;
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(PtqError::config(
                "alpha",
                self.alpha,
                "must be finite and >= 0",
            ));
        }
        Ok(())
    }
}

/// `P = α·triu₊(P₀·Uᵀ)·U` (f64, row-major n × n).
pub(crate) fn asymmetry_matrix(p0: &[f64], u: &[f64], n: usize, alpha: f64) -> Vec<f64> {
    let mut a = vec![0f64; n * n];
    matmul(
        ViewMut::rows(&mut a, n, n),
        false,
        0.0,
        View::rows(p0, n, n),
        View::rows(u, n, n).t(),
        1.0,
    );
    for i in 0..n {
        a[i * n..i * n + i + 1].fill(0.0);
    }
    let mut p = vec![0f64; n * n];
    matmul(
        ViewMut::rows(&mut p, n, n),
        false,
        0.0,
        View::rows(&a, n, n),
        View::rows(u, n, n),
        alpha,
    );
    p
}

impl Stage2Algorithm for Gptaq {
    fn name(&self) -> &'static str {
        "gptaq"
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
        self.validate()?;
        let Problem {
            n,
            m,
            w,
            h,
            g,
            dead,
            mut report,
            started,
        } = problem("gptaq", weight, shape, stats, true)?;
        let g = g.expect("requested");
        // P₀ = Gᵀ − H with the true (zero) diagonal of dead inputs.
        let mut p0: Vec<f64> = (0..n * n).map(|k| g[(k % n) * n + k / n] - h[k]).collect();
        for &j in &dead {
            p0[j * n + j] += 1.0;
        }
        let (order, h, [p0]) = in_processing_order(self.act_order, n, h, [p0]);
        let timing = if self.static_groups {
            ParamTiming::Static
        } else {
            ParamTiming::Dynamic(self.dynamic_group_timing)
        };
        let mut rq = RowQuantizer::new("gptaq", spec, &w, n, m, timing, self.act_order)?;
        let lambda0 = relative_damping(&h, n, self.percdamp);
        let Some(f) = damped_inverse_factor(&h, n, lambda0, 1e-8) else {
            report.warn(format!(
                "gptaq: the {n}×{n} Hessian is not positive definite at any damping; falling \
                 back to RTN"
            ));
            let (codes, params, w_hat) = rtn_host("gptaq", &w, n, m, spec)?;
            report.fell_back_to_rtn = true;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(HostQuantized {
                codes,
                params,
                w_hat,
                shape,
                report,
            });
        };
        if f.retries > 0 {
            report.warn(format!(
                "gptaq: the {n}×{n} Hessian is singular or indefinite at percdamp {}; damping \
                 raised to λ = {:.3e} after {} retries",
                self.percdamp, f.lambda, f.retries
            ));
        }
        report.damping = Some(f.lambda);
        report.damping_retries = f.retries;
        report.dynamic_groups = rq.dynamic_unit().is_some();
        report.block_size = Some(lazy_block(self.block_size, &rq));
        let p = to_f32(&asymmetry_matrix(&p0, &f.u, n, self.alpha));
        let u = to_f32(&f.u);
        let mut x = permute_rows(&w, m, &order);
        let mut codes = vec![0i32; n * m];
        let mut w_hat = vec![0f32; n * m];
        let sweep = Sweep {
            n,
            m,
            order: &order,
            start: 0,
            feedback: Feedback::Asymmetric { u: &u, p: &p },
            block: self.block_size,
        };
        sweep.run(&mut x, &mut rq, &mut codes, &mut w_hat, false)?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(HostQuantized {
            codes,
            params: rq.into_params(),
            w_hat,
            shape,
            report,
        })
    }
}

#[cfg(test)]
mod tests;
