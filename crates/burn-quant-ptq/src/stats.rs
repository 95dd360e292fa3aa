//! Per-layer calibration statistics: the Gram matrix `H = X̃ᵀX̃` of a linear layer's inputs
//! and, for the mismatched-target algorithms, the cross statistic `G = X̃ᵀX` between the
//! quantized-path and float-path inputs of the same tokens.
//!
//! Conventions: `X` is `[tokens, d_in]` from the float model, `X̃` the
//! same tokens' inputs in the partially quantized model. `G_ij = ⟨X̃_{:,i}, X_{:,j}⟩` (not
//! symmetric). Sums are kept in f64; each batch's product is one f32 GEMM (f32 products summed
//! over one batch, then added in f64), so long calibration runs do not drift.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{PtqError, Result, check_finite};
use crate::linalg::{View, ViewMut, matmul};

/// Which calibration inputs an algorithm consumes, i.e. what the calibration loop must run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibInputs {
    /// No data at all (RTN): the loop may skip the layer's forward passes.
    None,
    /// One stream, the layer's input in the partially quantized model (`H = X̃ᵀX̃`); while
    /// nothing upstream is quantized it is the float input. One forward pass per batch.
    Quantized,
    /// The float model's input `X` and the partially quantized model's `X̃` for the same
    /// tokens (`H = X̃ᵀX̃`, `G = X̃ᵀX`). Two forward passes per batch.
    FloatAndQuantized,
}

/// Where the per-batch products are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accumulation {
    /// Copy the batch to the host and multiply there with the `gemm` crate (the kernel Burn's
    /// `flex` backend uses, minus the tensor round trip). Best on CPU devices.
    #[default]
    Host,
    /// `Xᵀ·X` with Burn's `matmul` on the batch's own device; only the `d_in × d_in` product
    /// is copied back. Best when activations live on a GPU.
    Device,
}

/// Calibration statistics of one linear layer's input (shared by every layer that reads the
/// same input, e.g. q/k/v).
#[derive(Clone, Debug)]
pub struct LayerStats {
    d_in: usize,
    inputs: CalibInputs,
    accumulation: Accumulation,
    tokens: u64,
    /// Σ x̃ᵀx̃, row-major d_in × d_in.
    h: Vec<f64>,
    /// Σ x̃ᵀx (FloatAndQuantized).
    g: Option<Vec<f64>>,
    /// Σ xᵀx, when output errors are tracked.
    xx: Option<Vec<f64>>,
    scratch: Vec<f32>,
}

impl LayerStats {
    /// Empty statistics for a layer with `d_in` inputs, holding what `inputs` calls for.
    pub fn new(d_in: usize, inputs: CalibInputs) -> Self {
        let square = || vec![0f64; d_in * d_in];
        Self {
            d_in,
            inputs,
            accumulation: Accumulation::Host,
            tokens: 0,
            h: if inputs == CalibInputs::None {
                vec![]
            } else {
                square()
            },
            g: (inputs == CalibInputs::FloatAndQuantized).then(square),
            xx: None,
            scratch: vec![],
        }
    }

    /// Chooses where batch products are computed (default [`Accumulation::Host`]).
    pub fn with_accumulation(mut self, accumulation: Accumulation) -> Self {
        self.accumulation = accumulation;
        self
    }

    /// Also accumulates `XᵀX` of the float input, so that [`LayerStats::output_error`] can
    /// report `‖XW − X̃Ŵ‖` without keeping activations (one more GEMM per batch when `X̃ ≠ X`).
    pub fn tracking_output_error(mut self) -> Self {
        if self.inputs != CalibInputs::None {
            self.xx = Some(vec![0f64; self.d_in * self.d_in]);
        }
        self
    }

    /// Statistics from given sums: `h = Σ x̃ᵀx̃` and optionally `g = Σ x̃ᵀx` over `tokens`
    /// tokens, both row-major `d_in × d_in` (any common positive scale works: every algorithm
    /// is invariant to it). `inputs` follows from whether `g` is given.
    pub fn from_sums(d_in: usize, tokens: u64, h: Vec<f64>, g: Option<Vec<f64>>) -> Result<Self> {
        let check = |what: &'static str, v: &[f64]| -> Result<()> {
            if v.len() != d_in * d_in {
                return Err(PtqError::ShapeMismatch {
                    what,
                    got: vec![v.len()],
                    expected: format!("{d_in}×{d_in} = {} values", d_in * d_in),
                });
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(PtqError::InvalidStatistics {
                    reason: format!("`{what}` holds {} at flat index {i}", v[i]),
                });
            }
            Ok(())
        };
        check("h", &h)?;
        if let Some(g) = &g {
            check("g", g)?;
        }
        Ok(Self {
            d_in,
            inputs: if g.is_some() {
                CalibInputs::FloatAndQuantized
            } else {
                CalibInputs::Quantized
            },
            accumulation: Accumulation::Host,
            tokens,
            h,
            g,
            xx: None,
            scratch: vec![],
        })
    }

    /// Number of inputs of the layer.
    pub fn d_in(&self) -> usize {
        self.d_in
    }
    /// What these statistics hold.
    pub fn inputs(&self) -> CalibInputs {
        self.inputs
    }
    /// Calibration tokens seen so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
    /// Mean `X̃ᵀX̃` (d_in × d_in, row-major), empty for [`CalibInputs::None`].
    pub fn hessian(&self) -> Vec<f64> {
        self.mean(&self.h)
    }
    /// Mean `X̃ᵀX` (`G_ij = ⟨X̃_i, X_j⟩`), if held.
    pub fn cross(&self) -> Option<Vec<f64>> {
        self.g.as_ref().map(|g| self.mean(g))
    }
    /// Mean `XᵀX` of the float input, if tracked.
    pub fn float_gram(&self) -> Option<Vec<f64>> {
        self.xx.as_ref().map(|x| self.mean(x))
    }
    fn mean(&self, v: &[f64]) -> Vec<f64> {
        let k = 1.0 / self.tokens.max(1) as f64;
        v.iter().map(|x| x * k).collect()
    }

    /// Adds the sums of `other` (same layer, other batches or another worker).
    pub fn merge(&mut self, other: &LayerStats) -> Result<()> {
        if other.d_in != self.d_in || other.inputs != self.inputs {
            return Err(PtqError::ShapeMismatch {
                what: "merged statistics",
                got: vec![other.d_in],
                expected: format!("d_in {} with inputs {:?}", self.d_in, self.inputs),
            });
        }
        add(&mut self.h, &other.h);
        if let (Some(a), Some(b)) = (self.g.as_mut(), other.g.as_ref()) {
            add(a, b);
        }
        match (self.xx.as_mut(), other.xx.as_ref()) {
            (Some(a), Some(b)) => add(a, b),
            (Some(_), None) => {
                return Err(PtqError::MissingStatistics {
                    algorithm: "merge",
                    needed: "XᵀX in both operands",
                });
            }
            _ => {}
        }
        self.tokens += other.tokens;
        Ok(())
    }

    /// Records one calibration batch: `x` is the layer's float-path input, `x_quant` the
    /// quantized-path input of the same tokens (`None`: identical to `x`, as for the first
    /// layers or when nothing upstream is quantized). Any rank: the last axis is `d_in`, the
    /// others are tokens. For [`CalibInputs::Quantized`] statistics, pass the quantized-path
    /// input as `x` (or as `x_quant`; it wins when both are given).
    pub fn observe<const D: usize>(
        &mut self,
        x: &Tensor<D>,
        x_quant: Option<&Tensor<D>>,
    ) -> Result<()> {
        check_tensor_batch(x, x_quant, self.d_in)?;
        let dims = x.dims();
        let tokens = dims[..D - 1].iter().product::<usize>();
        if self.inputs == CalibInputs::None || tokens == 0 {
            self.tokens += tokens as u64;
            return Ok(());
        }
        match self.accumulation {
            Accumulation::Host => {
                let xh = read(x, "x")?;
                let qh = x_quant.map(|q| read(q, "x_quant")).transpose()?;
                self.observe_host(&xh, qh.as_deref())
            }
            Accumulation::Device => self.observe_device(x, x_quant, tokens),
        }
    }

    /// [`LayerStats::observe`] on host slices: `x` (and `x_quant`) are row-major
    /// `[tokens, d_in]`.
    pub fn observe_host(&mut self, x: &[f32], x_quant: Option<&[f32]>) -> Result<()> {
        let n = self.d_in;
        check_batch(x, x_quant, n)?;
        let tokens = x.len() / n;
        if self.inputs != CalibInputs::None && tokens > 0 {
            let xq = x_quant.unwrap_or(x);
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.resize(n * n, 0.0);
            // H += X̃ᵀX̃
            sym_gram(&mut scratch, xq, tokens, n);
            add_f32(&mut self.h, &scratch);
            let same = x_quant.is_none();
            if let Some(g) = self.g.as_mut() {
                // G += X̃ᵀX (the same product when X̃ = X).
                if !same {
                    gram(&mut scratch, xq, x, tokens, n);
                }
                add_f32(g, &scratch);
            }
            if let Some(xx) = self.xx.as_mut() {
                // When X̃ = X the scratch still holds H = XᵀX.
                if !same {
                    gram(&mut scratch, x, x, tokens, n);
                }
                add_f32(xx, &scratch);
            }
            self.scratch = scratch;
        }
        self.tokens += tokens as u64;
        Ok(())
    }

    fn observe_device<const D: usize>(
        &mut self,
        x: &Tensor<D>,
        x_quant: Option<&Tensor<D>>,
        tokens: usize,
    ) -> Result<()> {
        let n = self.d_in;
        let x2: Tensor<2> = x.clone().reshape([tokens, n]);
        let q2: Option<Tensor<2>> = x_quant.map(|q| q.clone().reshape([tokens, n]));
        let xq = q2.clone().unwrap_or_else(|| x2.clone());
        let product = |a: &Tensor<2>, b: &Tensor<2>, what: &'static str| -> Result<Vec<f32>> {
            let p = read(&a.clone().transpose().matmul(b.clone()), what)?;
            if p.iter().all(|v| v.is_finite()) {
                Ok(p)
            } else {
                // Find the offending input element for the error message.
                check_finite(&read(a, what)?, what)?;
                check_finite(&read(b, what)?, what)?;
                Err(PtqError::InvalidStatistics {
                    reason: format!("the product of `{what}` overflowed f32"),
                })
            }
        };
        let qname = if q2.is_some() { "x_quant" } else { "x" };
        let h = product(&xq, &xq, qname)?;
        let cross = match (&self.g, &q2) {
            (Some(_), Some(q)) => Some(product(q, &x2, "x")?),
            (Some(_), None) => Some(h.clone()),
            _ => None,
        };
        let xx = match (&self.xx, &q2) {
            (Some(_), Some(_)) => Some(product(&x2, &x2, "x")?),
            (Some(_), None) => Some(h.clone()),
            _ => None,
        };
        add_f32(&mut self.h, &h);
        if let (Some(g), Some(c)) = (self.g.as_mut(), cross) {
            add_f32(g, &c);
        }
        if let (Some(a), Some(c)) = (self.xx.as_mut(), xx) {
            add_f32(a, &c);
        }
        self.tokens += tokens as u64;
        Ok(())
    }

    /// Relative output errors of a quantized weight, estimated from the statistics alone
    /// (no activations kept). `w` and `w_hat` are Burn-layout `[d_in, d_out]` row-major.
    ///
    /// The float target `‖XW − X̃Ŵ‖ / ‖XW‖` needs [`LayerStats::tracking_output_error`]; the
    /// quantized-input error `‖X̃(W − Ŵ)‖ / ‖X̃W‖` needs only `H`. The estimate expands the
    /// squares, so its absolute accuracy is about 1e-6 of `‖XW‖²` (f32 batch products).
    pub fn output_error(&self, w: &[f32], w_hat: &[f32]) -> Result<OutputError> {
        let n = self.d_in;
        if self.inputs == CalibInputs::None || self.tokens == 0 {
            return Err(PtqError::EmptyCalibration {
                algorithm: "output_error",
            });
        }
        if n == 0 || !w.len().is_multiple_of(n) || w_hat.len() != w.len() {
            return Err(PtqError::ShapeMismatch {
                what: "w / w_hat",
                got: vec![w.len(), w_hat.len()],
                expected: format!("two [{n}, d_out] weights"),
            });
        }
        let m = w.len() / n;
        let h = self.hessian();
        let diff: Vec<f32> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
        let num = quad_form(&h, &diff, &diff, n, m).max(0.0);
        let den = quad_form(&h, w, w, n, m);
        let quantized_input = ratio(num, den);
        let float_target = match (self.float_gram(), self.cross()) {
            (Some(xx), Some(g)) => {
                let wxxw = quad_form(&xx, w, w, n, m);
                let cross = quad_form(&g, w_hat, w, n, m);
                let whw = quad_form(&h, w_hat, w_hat, n, m);
                Some(ratio((wxxw - 2.0 * cross + whw).max(0.0), wxxw))
            }
            (Some(_), None) => Some(quantized_input),
            _ => None,
        };
        Ok(OutputError {
            quantized_input,
            float_target,
        })
    }
}

/// Relative output errors of one quantized layer (see [`LayerStats::output_error`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutputError {
    /// `‖X̃W − X̃Ŵ‖ / ‖X̃W‖`: GPTQ's target.
    pub quantized_input: f64,
    /// `‖XW − X̃Ŵ‖ / ‖XW‖`: the float target of GPFQ, GPTAQ and Qronos, when `XᵀX` is tracked.
    pub float_target: Option<f64>,
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 { (num / den).sqrt() } else { 0.0 }
}

/// `Σ_ij A_ij ⟨x_i, y_j⟩` = tr(xᵀ·A·y) for row-major `x`, `y` of shape `[n, m]`.
fn quad_form(a: &[f64], x: &[f32], y: &[f32], n: usize, m: usize) -> f64 {
    let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    let mut ay = vec![0f64; n * m];
    matmul(
        ViewMut::rows(&mut ay, n, m),
        false,
        0.0,
        View::rows(a, n, n),
        View::rows(&y64, n, m),
        1.0,
    );
    x.iter().zip(&ay).map(|(&a, b)| a as f64 * b).sum()
}

/// `out ← aᵀ·b` for row-major `[tokens, n]` inputs (`out` is `n × n`).
pub(crate) fn gram(out: &mut [f32], a: &[f32], b: &[f32], tokens: usize, n: usize) {
    matmul(
        ViewMut::rows(out, n, n),
        false,
        0.0,
        View::rows(a, tokens, n).t(),
        View::rows(b, tokens, n),
        1.0,
    );
}

/// `out ← aᵀ·a` for a row-major `[tokens, n]` input, multiplying only the block upper
/// triangle (blocks of 128 columns: 62% of the full product's flops at n = 576, 54% at 1536)
/// and mirroring the rest, so the result is exactly symmetric.
pub(crate) fn sym_gram(out: &mut [f32], a: &[f32], tokens: usize, n: usize) {
    const BS: usize = 128;
    if n <= BS {
        return gram(out, a, a, tokens, n);
    }
    let x = View::rows(a, tokens, n);
    for i0 in (0..n).step_by(BS) {
        let b = BS.min(n - i0);
        matmul(
            ViewMut::strided(out, i0 * n + i0, b, n - i0, n, 1),
            false,
            0.0,
            x.block(0, i0, tokens, b).t(),
            x.block(0, i0, tokens, n - i0),
            1.0,
        );
    }
    for i in 1..n {
        let (upper, lower) = out.split_at_mut(i * n);
        for (j, v) in lower[..i].iter_mut().enumerate() {
            *v = upper[j * n + i];
        }
    }
}

fn add(acc: &mut [f64], v: &[f64]) {
    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
}

fn add_f32(acc: &mut [f64], v: &[f32]) {
    acc.iter_mut().zip(v).for_each(|(a, &b)| *a += b as f64);
}

/// Copies a tensor to the host as f32.
pub(crate) fn read<const D: usize>(x: &Tensor<D>, what: &'static str) -> Result<Vec<f32>> {
    x.clone()
        .try_into_vec_as::<f32>()
        .map_err(|e| PtqError::InvalidStatistics {
            reason: format!("cannot read `{what}` as f32: {e:?}"),
        })
}

/// Checks one batch of inputs on a device: the last axis is `d_in` and the quantized-path
/// twin has the same shape.
pub(crate) fn check_tensor_batch<const D: usize>(
    x: &Tensor<D>,
    x_quant: Option<&Tensor<D>>,
    d_in: usize,
) -> Result<()> {
    let dims = x.dims();
    if D == 0 || dims[D - 1] != d_in {
        return Err(PtqError::ShapeMismatch {
            what: "x",
            got: dims.to_vec(),
            expected: format!("[…, {d_in}]"),
        });
    }
    if let Some(q) = x_quant
        && q.dims() != dims
    {
        return Err(PtqError::ShapeMismatch {
            what: "x_quant",
            got: q.dims().to_vec(),
            expected: format!("{dims:?} (the float input's shape)"),
        });
    }
    Ok(())
}

/// Checks one host batch of `[tokens, d_in]` inputs (and its quantized-path twin): whole rows,
/// equal lengths, finite values.
pub(crate) fn check_batch(x: &[f32], x_quant: Option<&[f32]>, d_in: usize) -> Result<()> {
    if d_in == 0 || !x.len().is_multiple_of(d_in) {
        return Err(PtqError::ShapeMismatch {
            what: "x",
            got: vec![x.len()],
            expected: format!("a multiple of d_in = {d_in} values"),
        });
    }
    if let Some(q) = x_quant
        && q.len() != x.len()
    {
        return Err(PtqError::ShapeMismatch {
            what: "x_quant",
            got: vec![q.len()],
            expected: format!("{} values, as x", x.len()),
        });
    }
    check_finite(x, "x")?;
    if let Some(q) = x_quant {
        check_finite(q, "x_quant")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{correlated, perturbed};
    use burn::tensor::{Device, TensorData};

    fn naive_gram(a: &[f32], b: &[f32], tokens: usize, n: usize) -> Vec<f64> {
        let mut g = vec![0f64; n * n];
        for t in 0..tokens {
            for i in 0..n {
                for j in 0..n {
                    g[i * n + j] += a[t * n + i] as f64 * b[t * n + j] as f64;
                }
            }
        }
        g
    }

    fn close(a: &[f64], b: &[f64], rel: f64) {
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= rel * scale, "index {i}: {x} vs {y}");
        }
    }

    #[test]
    fn batches_accumulate_the_exact_means_and_the_cross_orientation() {
        let (n, t) = (24, 40);
        let x = correlated(t, n, 1);
        let xq = perturbed(&x, n, 0.3, 9);
        let mut s = LayerStats::new(n, CalibInputs::FloatAndQuantized).tracking_output_error();
        // Two batches of 25 and 15 tokens.
        s.observe_host(&x[..25 * n], Some(&xq[..25 * n])).unwrap();
        s.observe_host(&x[25 * n..], Some(&xq[25 * n..])).unwrap();
        assert_eq!(s.tokens(), 40);
        let mean = |v: Vec<f64>| v.into_iter().map(|x| x / t as f64).collect::<Vec<_>>();
        close(&s.hessian(), &mean(naive_gram(&xq, &xq, t, n)), 1e-6);
        // G_ij = ⟨X̃_i, X_j⟩, not its transpose.
        let g = mean(naive_gram(&xq, &x, t, n));
        close(&s.cross().unwrap(), &g, 1e-6);
        let gt: Vec<f64> = (0..n * n).map(|k| g[(k % n) * n + k / n]).collect();
        let off = s
            .cross()
            .unwrap()
            .iter()
            .zip(&gt)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        assert!(off > 1e-3, "G must not be symmetric here");
        close(
            &s.float_gram().unwrap(),
            &mean(naive_gram(&x, &x, t, n)),
            1e-6,
        );
    }

    #[test]
    fn symmetric_gram_equals_the_full_product() {
        for n in [100, 129, 300] {
            let t = 70;
            let x = correlated(t, n, n as u64);
            let mut full = vec![0f32; n * n];
            let mut sym = vec![1f32; n * n];
            gram(&mut full, &x, &x, t, n);
            sym_gram(&mut sym, &x, t, n);
            let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                full.iter()
                    .zip(&sym)
                    .all(|(a, b)| (a - b).abs() <= 1e-5 * scale),
                "n = {n}"
            );
            assert!((0..n).all(|i| (0..n).all(|j| sym[i * n + j] == sym[j * n + i])));
        }
    }

    #[test]
    fn tensors_of_any_rank_on_host_and_device_paths_agree() {
        let device = Device::flex();
        let (n, t) = (16, 30);
        let x = correlated(t, n, 2);
        let xq = perturbed(&x, n, 0.2, 3);
        let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), [5, 6, n]), &device);
        let qt = Tensor::<3>::from_data(TensorData::new(xq.clone(), [5, 6, n]), &device);
        let mut host = LayerStats::new(n, CalibInputs::FloatAndQuantized);
        host.observe(&xt, Some(&qt)).unwrap();
        let mut dev = LayerStats::new(n, CalibInputs::FloatAndQuantized)
            .with_accumulation(Accumulation::Device);
        dev.observe(&xt, Some(&qt)).unwrap();
        close(&dev.hessian(), &host.hessian(), 1e-5);
        close(&dev.cross().unwrap(), &host.cross().unwrap(), 1e-5);
        // A single-stream accumulator takes the quantized input when given.
        let mut single = LayerStats::new(n, CalibInputs::Quantized);
        single.observe(&xt, Some(&qt)).unwrap();
        close(&single.hessian(), &host.hessian(), 1e-6);
        assert!(single.cross().is_none());
    }

    #[test]
    fn bad_batches_are_typed_errors() {
        let mut s = LayerStats::new(4, CalibInputs::FloatAndQuantized);
        let e = s.observe_host(&[1.0; 6], None).unwrap_err();
        assert!(
            matches!(e, PtqError::ShapeMismatch { what: "x", .. }),
            "{e}"
        );
        let e = s.observe_host(&[1.0; 8], Some(&[1.0; 4])).unwrap_err();
        assert!(
            matches!(
                e,
                PtqError::ShapeMismatch {
                    what: "x_quant",
                    ..
                }
            ),
            "{e}"
        );
        let mut bad = vec![1.0; 8];
        bad[5] = f32::NAN;
        let e = s.observe_host(&bad, None).unwrap_err();
        assert!(
            matches!(
                e,
                PtqError::NonFinite {
                    what: "x",
                    index: 5,
                    ..
                }
            ),
            "{e}"
        );
        let e = s.observe_host(&[1.0; 8], Some(&bad)).unwrap_err();
        assert!(
            matches!(
                e,
                PtqError::NonFinite {
                    what: "x_quant",
                    index: 5,
                    ..
                }
            ),
            "{e}"
        );
        let device = Device::flex();
        let t = Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 10], [2, 5]), &device);
        assert!(matches!(
            s.observe(&t, None),
            Err(PtqError::ShapeMismatch { .. })
        ));
        let t = Tensor::<2>::from_data(TensorData::new(bad, [2, 4]), &device);
        let mut d =
            LayerStats::new(4, CalibInputs::Quantized).with_accumulation(Accumulation::Device);
        assert!(matches!(
            d.observe(&t, None),
            Err(PtqError::NonFinite { index: 5, .. })
        ));
        assert_eq!(s.tokens(), 0, "failed batches are not counted");
        assert!(LayerStats::from_sums(2, 1, vec![1.0; 3], None).is_err());
        assert!(LayerStats::from_sums(2, 1, vec![1.0, f64::NAN, 0.0, 1.0], None).is_err());
    }

    #[test]
    fn output_error_from_statistics_matches_the_activations() {
        let (n, m, t) = (20, 7, 200);
        let x = correlated(t, n, 4);
        let xq = perturbed(&x, n, 0.1, 5);
        let w = crate::testutil::weights(n, m, 6);
        let w_hat: Vec<f32> = w.iter().map(|v| (v * 8.0).round() / 8.0).collect();
        let mut s = LayerStats::new(n, CalibInputs::FloatAndQuantized).tracking_output_error();
        s.observe_host(&x, Some(&xq)).unwrap();
        let e = s.output_error(&w, &w_hat).unwrap();
        let mul = |a: &[f32], b: &[f32]| -> Vec<f64> {
            (0..t * m)
                .map(|k| {
                    (0..n)
                        .map(|j| a[(k / m) * n + j] as f64 * b[j * m + k % m] as f64)
                        .sum()
                })
                .collect()
        };
        let (yw, yq, yqq) = (mul(&x, &w), mul(&xq, &w_hat), mul(&xq, &w));
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>();
        let want_float = norm(&diff(&yw, &yq)) / norm(&yw);
        let want_quant = norm(&diff(&yqq, &yq)) / norm(&yqq);
        assert!(
            (e.float_target.unwrap() - want_float).abs() < 1e-3 * want_float,
            "{e:?} vs {want_float}"
        );
        assert!(
            (e.quantized_input - want_quant).abs() < 1e-3 * want_quant,
            "{e:?} vs {want_quant}"
        );
    }
}
