//! GPFQ, greedy path-following quantization (Lybrand & Saab, JMLR 2021; Zhang, Zhou & Saab,
//! SIMODS 2023): each input channel is rounded so that the running
//! residual of the *mismatched* target `‖XW − X̃Ŵ‖` stays smallest, never revisiting earlier
//! channels.
//!
//! The path form keeps a residual of N tokens per output; the matrix form used here needs only
//! `H = X̃ᵀX̃` and `G = X̃ᵀX`:
//!
//! `a_t = (Σ_{s≤t} G_ts·W₀[s] − Σ_{s<t} H_ts·q_s) / H_tt`, `q_t = Q(a_t)`
//!
//! computed as `T = diag(1/H_tt)·tril(G)·W₀` (one GEMM) minus the quantized rows fed forward
//! through `H_ts/H_tt` with the lazy-block sweep, so the O(n²m) work is GEMMs. Group
//! parameters are static (computed from W₀), as in Brevitas, where the weight itself never
//! changes. No damping is involved; dead inputs give `a_t = 0`.

use burn_quant_core::QuantSpec;
use serde::{Deserialize, Serialize};

use crate::algorithm::{
    HostQuantized, Problem, Stage2Algorithm, check_block, in_processing_order, permute_rows,
    problem,
};
use crate::error::Result;
use crate::linalg::{View, ViewMut, matmul};
use crate::quantizer::{ParamTiming, RowQuantizer};
use crate::sequential::{Feedback, Sweep};
use crate::stats::{CalibInputs, LayerStats};

/// GPFQ (no damping, no blocks in the math; `block_size` only batches the feedback GEMMs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gpfq {
    /// Process inputs by decreasing `H_jj` of the quantized-path input (off).
    pub act_order: bool,
    /// Rows per lazy feedback update (128); the result does not depend on it beyond f32
    /// summation order.
    pub block_size: usize,
}

impl Default for Gpfq {
    fn default() -> Self {
        Self {
            act_order: false,
            block_size: 128,
        }
    }
}

impl Gpfq {
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

    /// Checks every field: `block_size` ≥ 1
    /// ([`PtqError::InvalidConfig`](crate::PtqError::InvalidConfig) otherwise).
    pub fn validate(&self) -> Result<()> {
        check_block(self.block_size)
    }
}

impl Stage2Algorithm for Gpfq {
    fn name(&self) -> &'static str {
        "gpfq"
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
            mut report,
            started,
            ..
        } = problem("gpfq", weight, shape, stats, true)?;
        let g = g.expect("requested");
        let (order, h, [g]) = in_processing_order(self.act_order, n, h, [g]);
        let mut rq = RowQuantizer::new("gpfq", spec, &w, n, m, ParamTiming::Static, true)?;
        let w0 = permute_rows(&w, m, &order);
        // T = diag(1/H_tt)·tril(G)·W₀ and F[s, t] = H_st/H_tt (s < t), in processing order.
        let mut lg = vec![0f32; n * n];
        let mut f = vec![0f32; n * n];
        for t in 0..n {
            let inv = 1.0 / h[t * n + t];
            for s in 0..=t {
                lg[t * n + s] = (g[t * n + s] * inv) as f32;
            }
            for s in 0..t {
                f[s * n + t] = (h[s * n + t] * inv) as f32;
            }
        }
        let mut x = vec![0f32; n * m];
        matmul(
            ViewMut::rows(&mut x, n, m),
            false,
            0.0,
            View::rows(&lg, n, n),
            View::rows(&w0, n, m),
            1.0,
        );
        drop(lg);
        let mut codes = vec![0i32; n * m];
        let mut w_hat = vec![0f32; n * m];
        let sweep = Sweep {
            n,
            m,
            order: &order,
            start: 0,
            feedback: Feedback::Greedy { f: &f },
            block: self.block_size,
        };
        sweep.run(&mut x, &mut rq, &mut codes, &mut w_hat, false)?;
        report.block_size = Some(self.block_size);
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
mod tests {
    use super::*;
    use crate::rtn::Rtn;
    use crate::testutil::{correlated, output_error, perturbed, stats, weights};
    use crate::{Gptq, PtqError};

    /// The path form (notes §3) in f64: residual u ∈ ℝ^{N×m}, q_t = Q(⟨X̃_t, u + w_t X_t⟩/‖X̃_t‖²).
    /// Returns the dequantized weight and, per (t, c), the objective at q and at both grid
    /// neighbours.
    fn path_form(
        x: &[f32],
        xq: &[f32],
        w: &[f32],
        n: usize,
        m: usize,
        spec: &QuantSpec,
    ) -> (Vec<f32>, Vec<[f64; 3]>) {
        let tokens = x.len() / n;
        let rq = RowQuantizer::new("ref", spec, w, n, m, ParamTiming::Static, true).unwrap();
        let mut u = vec![0f64; tokens * m];
        let mut w_hat = vec![0f32; n * m];
        let mut objectives = vec![];
        let (mut codes, mut deq, mut arg) = (vec![0i32; m], vec![0f32; m], vec![0f32; m]);
        for t in 0..n {
            let col = |a: &[f32], r: usize| a[r * n + t] as f64;
            let norm: f64 = (0..tokens).map(|r| col(xq, r).powi(2)).sum();
            for c in 0..m {
                let dot: f64 = (0..tokens)
                    .map(|r| col(xq, r) * (u[r * m + c] + w[t * m + c] as f64 * col(x, r)))
                    .sum();
                arg[c] = if norm > 0.0 { (dot / norm) as f32 } else { 0.0 };
            }
            rq.quantize_row(t, &arg, &mut codes, &mut deq);
            for c in 0..m {
                let q = deq[c] as f64;
                let step = if q != 0.0 && codes[c] != 0 {
                    q / codes[c] as f64
                } else {
                    0.0
                };
                let obj = |q: f64| -> f64 {
                    (0..tokens)
                        .map(|r| {
                            (u[r * m + c] + w[t * m + c] as f64 * col(x, r) - q * col(xq, r))
                                .powi(2)
                        })
                        .sum()
                };
                // Neighbours inside the int4 grid [−8, 7] only.
                let up = if codes[c] < 7 {
                    obj(q + step.abs())
                } else {
                    f64::INFINITY
                };
                let down = if codes[c] > -8 {
                    obj(q - step.abs())
                } else {
                    f64::INFINITY
                };
                if step != 0.0 {
                    objectives.push([obj(q), down, up]);
                }
                for r in 0..tokens {
                    u[r * m + c] += w[t * m + c] as f64 * col(x, r) - q * col(xq, r);
                }
                w_hat[t * m + c] = deq[c];
            }
        }
        (w_hat, objectives)
    }

    /// notes §3 oracles 1, 2 and 4: the matrix form reproduces the path form, every q_t is the
    /// greedy optimum given the past, and only the §0 orientation of G does so.
    #[test]
    fn matrix_form_is_the_path_form_and_greedy_optimal() {
        let (n, m, t) = (48, 12, 300);
        let x = correlated(t, n, 21);
        let xq = perturbed(&x, n, 0.3, 22);
        let w = weights(n, m, 23);
        let spec = QuantSpec::int4_weight_per_group(16);
        let s = stats(&x, Some(&xq), n, true);
        let (want, objectives) = path_form(&x, &xq, &w, n, m, &spec);
        for gpfq in [Gpfq::default(), Gpfq::default().with_block_size(5)] {
            let got = gpfq.quantize_host(&w, [n, m], &s, &spec).unwrap();
            let same = got.w_hat.iter().zip(&want).filter(|(a, b)| a == b).count();
            assert!(
                same as f64 >= 0.99 * (n * m) as f64,
                "{gpfq:?}: {same} of {}",
                n * m
            );
        }
        for [q, down, up] in objectives {
            assert!(q <= down.min(up) * (1.0 + 1e-9), "{q} vs {down}, {up}");
        }
        // The transposed cross statistic is a different (wrong) algorithm.
        let g = s.cross().unwrap();
        let gt: Vec<f64> = (0..n * n).map(|k| g[(k % n) * n + k / n]).collect();
        let swapped = LayerStats::from_sums(n, 1, s.hessian(), Some(gt)).unwrap();
        let bad = Gpfq::default()
            .quantize_host(&w, [n, m], &swapped, &spec)
            .unwrap();
        let same = bad.w_hat.iter().zip(&want).filter(|(a, b)| a == b).count();
        assert!(
            (same as f64) < 0.95 * (n * m) as f64,
            "Gᵀ agrees on {same} of {}",
            n * m
        );
    }

    /// notes §3 oracle 3: on a mismatched input GPFQ beats RTN (which ignores the mismatch) and
    /// GPTQ run on X̃ on the float target.
    #[test]
    fn beats_rtn_on_the_mismatched_target() {
        let (n, m, t) = (128, 48, 1024);
        let x = correlated(t, n, 31);
        let xq = perturbed(&x, n, 0.15, 32);
        let w = weights(n, m, 33);
        let paired = stats(&x, Some(&xq), n, true);
        for spec in [
            QuantSpec::int4_weight_per_group(32),
            // A short last group: 128 = 2·48 + 32.
            QuantSpec::int4_weight_per_group(48),
            QuantSpec::int8_weight_per_channel().with_bits(3),
        ] {
            let rtn = Rtn.quantize_host(&w, [n, m], &paired, &spec).unwrap();
            let e_rtn = output_error(&x, &xq, &w, &rtn.w_hat, n, m);
            for gpfq in [Gpfq::default(), Gpfq::default().with_act_order(true)] {
                let q = gpfq.quantize_host(&w, [n, m], &paired, &spec).unwrap();
                let e = output_error(&x, &xq, &w, &q.w_hat, n, m);
                assert!(e < 0.9 * e_rtn, "{spec} {gpfq:?}: {e} vs RTN {e_rtn}");
            }
        }
        // With X̃ = X the float target is GPTQ's, and GPFQ is still far better than RTN.
        let same = stats(&x, None, n, true);
        let spec = QuantSpec::int4_weight_per_group(32);
        let e_rtn = output_error(
            &x,
            &x,
            &w,
            &Rtn.quantize_host(&w, [n, m], &same, &spec).unwrap().w_hat,
            n,
            m,
        );
        let e = output_error(
            &x,
            &x,
            &w,
            &Gpfq::default()
                .quantize_host(&w, [n, m], &same, &spec)
                .unwrap()
                .w_hat,
            n,
            m,
        );
        assert!(e < 0.9 * e_rtn, "{e} vs {e_rtn}");
        let e_gptq = output_error(
            &x,
            &x,
            &w,
            &Gptq::default()
                .quantize_host(&w, [n, m], &same, &spec)
                .unwrap()
                .w_hat,
            n,
            m,
        );
        assert!(e < 1.2 * e_gptq, "GPFQ {e} vs GPTQ {e_gptq}");
    }

    #[test]
    fn needs_cross_statistics_and_survives_dead_inputs() {
        let (n, m, t) = (32, 8, 100);
        let mut x = correlated(t, n, 41);
        for r in 0..t {
            x[r * n + 5] = 0.0;
        }
        let w = weights(n, m, 42);
        let spec = QuantSpec::int4_weight_per_group(16);
        let single = stats(&x, None, n, false);
        let e = Gpfq::default()
            .quantize_host(&w, [n, m], &single, &spec)
            .unwrap_err();
        assert!(matches!(e, PtqError::MissingStatistics { .. }), "{e}");
        let q = Gpfq::default()
            .quantize_host(&w, [n, m], &stats(&x, None, n, true), &spec)
            .unwrap();
        assert_eq!(q.report.dead_inputs, 1);
        assert!(q.w_hat.iter().all(|v| v.is_finite()));
        assert!(q.w_hat[5 * m..6 * m].iter().all(|&v| v == 0.0));
    }
}
