//! The greedy sequential sweep every GPTQ-family algorithm runs: input channels (rows of the
//! Burn weight) are quantized one at a time in processing order, and each one's error feeds
//! the rows not yet quantized through a triangular feedback matrix, with lazy block updates
//! (in-block rank-1 updates, one GEMM per block for the rest).
//!
//! Row `t` (processing position) with current value `v` and dequantized value `q` feeds row
//! `t' > t` as `x[t'] −= M[t, t']·e₁ + M₂[t, t']·e₂`, where
//! - GPTQ / Qronos: `M = U` (upper Cholesky factor of the damped inverse Hessian),
//!   `e₁ = (v − q)/U[t, t]`;
//! - GPTAQ: as GPTQ plus `M₂ = P` (the asymmetry matrix), with the reference's two values of
//!   `e₂`: `−v` for the rows of the same block (in-block update), and `−(v − e₁·U[t, t])` —
//!   the row's own value after its update, `q` up to one rounding — for the rows after the
//!   block (lazy update);
//! - GPFQ: `M[s, t] = H[s, t]/H[t, t]`, `e₁ = q` (the rows hold the running greedy targets).
//!
//! Dynamic group parameters are computed from the rows' values either when the lazy block
//! holding the group's first row starts (the GPTQ / GPTAQ references' timing) or when the
//! sweep reaches that row (see `DynamicGroupTiming`).

use crate::error::Result;
use crate::linalg::{View, ViewMut, matmul};
use crate::quantizer::RowQuantizer;

/// How a quantized row feeds the later rows. Matrices are f32, square of side `n − start`,
/// row-major, indexed from processing position `start`.
pub(crate) enum Feedback<'a> {
    /// GPTQ: `e = (v − q)/U_tt` through `U`.
    Obs { u: &'a [f32] },
    /// GPTAQ: GPTQ's term plus `P[t, t']·v` inside the block and `P[t, t']·(v − e·U_tt)`
    /// after it (the GPTAQ reference's lazy update, see `gptaq.rs`).
    Asymmetric { u: &'a [f32], p: &'a [f32] },
    /// GPFQ: `q` through the normalised Gram matrix.
    Greedy { f: &'a [f32] },
}

/// One sweep over rows `start..n` of the working buffer.
pub(crate) struct Sweep<'a> {
    pub n: usize,
    pub m: usize,
    /// Processing position → original row index (the identity without act-order).
    pub order: &'a [usize],
    /// First processing position to quantize; earlier rows are already done.
    pub start: usize,
    pub feedback: Feedback<'a>,
    /// Lazy-update block size (adjusted where dynamic parameter units found when the sweep
    /// reaches them must not straddle a block end, see [`lazy_block`]).
    pub block: usize,
}

/// The lazy-update block size the sweep uses with `rq`: `block` unless `rq`'s dynamic units
/// are found when the sweep reaches their first row
/// ([`DynamicGroupTiming::GroupStart`](crate::DynamicGroupTiming::GroupStart)), then
/// [`effective_block`].
pub(crate) fn lazy_block(block: usize, rq: &RowQuantizer) -> usize {
    if rq.units_at_block_start() {
        block.max(1)
    } else {
        effective_block(block, rq.dynamic_unit())
    }
}

/// The block size for units found when the sweep reaches them: with dynamic group parameters
/// of `unit` rows, a unit must have received every earlier row's feedback when its first row
/// is reached, so units either fit inside one block or start at a block boundary.
pub(crate) fn effective_block(block: usize, unit: Option<usize>) -> usize {
    let block = block.max(1);
    match unit {
        Some(u) if u > 1 && u <= block => u * (block / u),
        Some(u) if u > block => (1..=block).rev().find(|d| u % d == 0).unwrap_or(1),
        _ => block,
    }
}

impl Sweep<'_> {
    /// Runs the sweep. `x` holds the rows' current values in processing order (modified in
    /// place); codes and dequantized values are written at each row's original index. With
    /// `record`, returns the `e₁` rows (processing order; zero before `start`).
    pub(crate) fn run(
        &self,
        x: &mut [f32],
        rq: &mut RowQuantizer,
        codes: &mut [i32],
        w_hat: &mut [f32],
        record: bool,
    ) -> Result<Option<Vec<f32>>> {
        let (n, m, s0) = (self.n, self.m, self.start);
        let dim = n - s0;
        let block = lazy_block(self.block, rq);
        let (m1, m2) = match self.feedback {
            Feedback::Obs { u } => (u, None),
            Feedback::Asymmetric { u, p } => (u, Some(p)),
            Feedback::Greedy { f } => (f, None),
        };
        debug_assert_eq!(m1.len(), dim * dim);
        let mut recorded = record.then(|| vec![0f32; n * m]);
        let mut e1 = vec![0f32; block * m];
        let mut e2 = if m2.is_some() {
            vec![0f32; block * m]
        } else {
            vec![]
        };
        let mut v = vec![0f32; m];
        let mut deq = vec![0f32; m];
        let first_block = s0 / block;
        for b in first_block..n.div_ceil(block) {
            let i1 = (b * block).max(s0);
            let i2 = ((b + 1) * block).min(n);
            if rq.units_at_block_start() {
                // The references' timing: every unit whose first row is in this block, from
                // the rows as the earlier blocks' updates left them, before any in-block
                // feedback (rows of a unit past the block end included).
                for t in i1..i2 {
                    self.find_unit(t, x, rq)?;
                }
            }
            for t in i1..i2 {
                let row = self.order[t];
                self.find_unit(t, x, rq)?;
                v.copy_from_slice(&x[t * m..(t + 1) * m]);
                rq.quantize_row(row, &v, &mut codes[row * m..(row + 1) * m], &mut deq);
                w_hat[row * m..(row + 1) * m].copy_from_slice(&deq);
                let k = t - i1;
                let er = &mut e1[k * m..(k + 1) * m];
                match self.feedback {
                    Feedback::Obs { .. } | Feedback::Asymmetric { .. } => {
                        let d = m1[(t - s0) * dim + (t - s0)];
                        for ((e, a), q) in er.iter_mut().zip(&v).zip(&deq) {
                            *e = (a - q) / d;
                        }
                    }
                    Feedback::Greedy { .. } => er.copy_from_slice(&deq),
                }
                if m2.is_some() {
                    // The lazy update feeds the row's value after its own in-block update,
                    // `v − (e·U_tt − v·P_tt)` with `P_tt = 0`, as the reference's block buffer
                    // holds it at the end of the block.
                    let d = m1[(t - s0) * dim + (t - s0)];
                    for ((o, a), e) in e2[k * m..(k + 1) * m].iter_mut().zip(&v).zip(&*er) {
                        *o = -(a - e * d);
                    }
                }
                if let Some(r) = recorded.as_mut() {
                    r[t * m..(t + 1) * m].copy_from_slice(er);
                }
                // In-block updates of the rows after t.
                let er = &e1[k * m..(k + 1) * m];
                let mrow = &m1[(t - s0) * dim..(t - s0 + 1) * dim];
                let (_, rest) = x.split_at_mut((t + 1) * m);
                for (j, xr) in rest[..(i2 - t - 1) * m].chunks_exact_mut(m).enumerate() {
                    let c = mrow[t + 1 + j - s0];
                    match m2 {
                        None => {
                            if c != 0.0 {
                                xr.iter_mut().zip(er).for_each(|(a, e)| *a -= c * e);
                            }
                        }
                        Some(p) => {
                            // GPTAQ, in the reference's arithmetic: `x −= e·U − v·P` (one
                            // rounding of the difference, then the subtraction).
                            let c2 = p[(t - s0) * dim + t + 1 + j - s0];
                            if c != 0.0 || c2 != 0.0 {
                                xr.iter_mut()
                                    .zip(er)
                                    .zip(&v)
                                    .for_each(|((a, e), w)| *a -= c * e - c2 * w);
                            }
                        }
                    }
                }
            }
            // Lazy update of every later row: x[i2..] −= M[i1..i2, i2..]ᵀ · E.
            if i2 < n {
                let rows = i2 - i1;
                for (mat, e) in std::iter::once((m1, &e1)).chain(m2.map(|p| (p, &e2))) {
                    let lhs = View::strided(mat, (i1 - s0) * dim + (i2 - s0), n - i2, rows, 1, dim);
                    let dst = ViewMut::strided(x, i2 * m, n - i2, m, m, 1);
                    matmul(
                        dst,
                        true,
                        1.0,
                        lhs,
                        View::rows(&e[..rows * m], rows, m),
                        -1.0,
                    );
                }
            }
        }
        Ok(recorded)
    }

    /// Computes the parameters of the unit of the row at position `t` from the rows' current
    /// values in `x`, if they are not computed yet.
    fn find_unit(&self, t: usize, x: &[f32], rq: &mut RowQuantizer) -> Result<()> {
        let m = self.m;
        if let Some(rows) = rq.needs_unit(self.order[t]) {
            // Units of several rows only exist without act-order, where positions are rows; a
            // one-row unit is the row at position t.
            let pos = if rows.len() == 1 {
                t..t + 1
            } else {
                rows.clone()
            };
            rq.compute_unit(rows, &x[pos.start * m..pos.end * m])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_never_split_a_dynamic_unit() {
        assert_eq!(effective_block(128, None), 128);
        assert_eq!(effective_block(128, Some(1)), 128);
        assert_eq!(effective_block(128, Some(32)), 128);
        assert_eq!(effective_block(128, Some(96)), 96);
        assert_eq!(effective_block(128, Some(256)), 128);
        assert_eq!(effective_block(128, Some(192)), 96);
        assert_eq!(effective_block(7, Some(32)), 4);
        assert_eq!(effective_block(0, None), 1);
    }
}
