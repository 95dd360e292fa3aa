//! Empirical bias correction (Nagel et al. 2019) from calibration
//! means: a quantized layer's mean output error per output channel,
//!
//! `δ_c = mean_t(Y_float[t, c] − Y_quant[t, c]) = (μ_xᵀ·W − μ_x̃ᵀ·Ŵ)_c`,
//!
//! where `Y_float = X·W` (float input, float weight), `Y_quant = X̃·Ŵ` (quantized-path input,
//! quantized weight), and `μ_x`, `μ_x̃` are the calibration means of the two inputs (a bias,
//! the same on both sides, cancels). Adding δ to the layer's bias (a zero bias if it has none)
//! makes the mean output error on the calibration set zero and lowers each channel's mean
//! squared error by exactly `δ_c²`. Means are linear, so two `d_in`-vectors replace the
//! activations: [`InputMeans`] accumulates them batch by batch, [`bias_correction()`] applies
//! them. Weights are in Burn's `Linear` layout `[d_in, d_out]` (`Y = X·W`).
//!
//! The correction is exact for the layer in isolation with the inputs it was measured on; the
//! notes' sequential form (correct layer by layer, each measured behind the already corrected
//! ones) is the caller's loop.

use burn::tensor::{Tensor, TensorData};

use crate::error::{PtqError, Result, check_finite};
use crate::stats::read;

/// Running sums of a layer's float-path and quantized-path inputs over calibration tokens
/// (f64), for [`bias_correction()`].
#[derive(Clone, Debug, PartialEq)]
pub struct InputMeans {
    d_in: usize,
    tokens: u64,
    sum_float: Vec<f64>,
    sum_quant: Vec<f64>,
}

impl InputMeans {
    /// Empty sums for a layer with `d_in` inputs.
    pub fn new(d_in: usize) -> Self {
        Self {
            d_in,
            tokens: 0,
            sum_float: vec![0.0; d_in],
            sum_quant: vec![0.0; d_in],
        }
    }

    /// Number of inputs of the layer.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Calibration tokens seen so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Records one batch: `x` is the layer's float-path input and `x_quant` the quantized-path
    /// input of the same tokens (`None`: identical to `x`). Any rank: the last axis is `d_in`,
    /// the others are tokens (a convolution's unfolded spatial positions count as tokens).
    pub fn observe<const D: usize>(
        &mut self,
        x: &Tensor<D>,
        x_quant: Option<&Tensor<D>>,
    ) -> Result<()> {
        crate::stats::check_tensor_batch(x, x_quant, self.d_in)?;
        let xh = read(x, "x")?;
        let qh = x_quant.map(|q| read(q, "x_quant")).transpose()?;
        self.observe_host(&xh, qh.as_deref())
    }

    /// [`InputMeans::observe`] on host slices: `x` (and `x_quant`) are row-major
    /// `[tokens, d_in]`. A failed batch leaves the sums unchanged.
    pub fn observe_host(&mut self, x: &[f32], x_quant: Option<&[f32]>) -> Result<()> {
        let n = self.d_in;
        crate::stats::check_batch(x, x_quant, n)?;
        add_rows(&mut self.sum_float, x, n);
        add_rows(&mut self.sum_quant, x_quant.unwrap_or(x), n);
        self.tokens += (x.len() / n) as u64;
        Ok(())
    }

    /// Adds the sums of `other` (same layer, other batches or another worker).
    pub fn merge(&mut self, other: &InputMeans) -> Result<()> {
        if other.d_in != self.d_in {
            return Err(PtqError::ShapeMismatch {
                what: "merged means",
                got: vec![other.d_in],
                expected: format!("d_in = {}", self.d_in),
            });
        }
        add(&mut self.sum_float, &other.sum_float);
        add(&mut self.sum_quant, &other.sum_quant);
        self.tokens += other.tokens;
        Ok(())
    }

    /// The means `(μ_x, μ_x̃)` of the float-path and quantized-path inputs;
    /// [`PtqError::EmptyCalibration`] before any token.
    pub fn means(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        if self.tokens == 0 {
            return Err(PtqError::EmptyCalibration {
                algorithm: "bias_correction",
            });
        }
        let k = 1.0 / self.tokens as f64;
        let scale = |v: &[f64]| v.iter().map(|s| s * k).collect();
        Ok((scale(&self.sum_float), scale(&self.sum_quant)))
    }
}

/// The bias shift `δ = μ_xᵀ·W − μ_x̃ᵀ·Ŵ` (`[d_out]`, on `w`'s device) that removes the mean
/// output error of a layer whose float weight `w` was replaced by `w_hat` (both Burn-layout
/// `[d_in, d_out]`; `w_hat` is the dequantized weight). ADD it to the layer's bias, creating a
/// zero bias if there is none.
pub fn bias_correction(w: &Tensor<2>, w_hat: &Tensor<2>, means: &InputMeans) -> Result<Tensor<1>> {
    let [n, m] = w.dims();
    let expected = || format!("[d_in = {}, d_out] (Burn `Linear` layout)", means.d_in);
    if n != means.d_in || m == 0 {
        return Err(PtqError::ShapeMismatch {
            what: "w",
            got: vec![n, m],
            expected: expected(),
        });
    }
    if w_hat.dims() != [n, m] {
        return Err(PtqError::ShapeMismatch {
            what: "w_hat",
            got: w_hat.dims().to_vec(),
            expected: format!("{:?}, as w", [n, m]),
        });
    }
    let wf = read(w, "w")?;
    let wq = read(w_hat, "w_hat")?;
    let delta = bias_correction_host(&wf, &wq, [n, m], means)?;
    let delta: Vec<f32> = delta.iter().map(|&d| d as f32).collect();
    Ok(Tensor::<1>::from_data(
        TensorData::new(delta, [m]),
        &w.device(),
    ))
}

/// [`bias_correction()`] on host row-major `[d_in, d_out]` weights, in f64.
pub fn bias_correction_host(
    w: &[f32],
    w_hat: &[f32],
    shape: [usize; 2],
    means: &InputMeans,
) -> Result<Vec<f64>> {
    let [n, m] = shape;
    if n != means.d_in || m == 0 || w.len() != n * m || w_hat.len() != n * m {
        return Err(PtqError::ShapeMismatch {
            what: "w / w_hat",
            got: vec![w.len(), w_hat.len()],
            expected: format!("two [{}, d_out] weights of {n}·{m} values", means.d_in),
        });
    }
    check_finite(w, "w")?;
    check_finite(w_hat, "w_hat")?;
    let (mu, mu_q) = means.means()?;
    let mut delta = vec![0f64; m];
    for j in 0..n {
        let (a, b) = (mu[j], mu_q[j]);
        let (wr, qr) = (&w[j * m..(j + 1) * m], &w_hat[j * m..(j + 1) * m]);
        for ((d, &x), &y) in delta.iter_mut().zip(wr).zip(qr) {
            *d += a * x as f64 - b * y as f64;
        }
    }
    Ok(delta)
}

/// Adds the column sums of the row-major `[tokens, n]` matrix `x` to `acc`.
fn add_rows(acc: &mut [f64], x: &[f32], n: usize) {
    for row in x.chunks_exact(n) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
}

fn add(acc: &mut [f64], v: &[f64]) {
    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{correlated, perturbed, weights};
    use crate::{Rtn, Stage2Algorithm};
    use burn::tensor::Device;
    use burn_quant_core::QuantSpec;

    /// Per channel: the mean error `mean_t(Y_f − Y_q)` and the MSE `mean_t(Y_f − Y_q)²`, f64.
    fn channel_errors(
        x: &[f32],
        xq: &[f32],
        w: &[f32],
        w_hat: &[f32],
        bias_shift: &[f64],
        n: usize,
        m: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let t = x.len() / n;
        let (mut mean, mut mse) = (vec![0f64; m], vec![0f64; m]);
        for r in 0..t {
            for c in 0..m {
                let (mut a, mut b) = (0f64, bias_shift[c]);
                for j in 0..n {
                    a += x[r * n + j] as f64 * w[j * m + c] as f64;
                    b += xq[r * n + j] as f64 * w_hat[j * m + c] as f64;
                }
                mean[c] += (a - b) / t as f64;
                mse[c] += (a - b) * (a - b) / t as f64;
            }
        }
        (mean, mse)
    }

    /// Oracle (§7.7): after adding δ the per-channel mean output error on the calibration set
    /// is 0 to float eps, and each channel's MSE drops by exactly the squared mean removed
    /// (so it never increases); with a quantized-path input and without one, over several
    /// batches, through the tensor API.
    #[test]
    fn correction_zeroes_the_mean_error_and_lowers_the_mse_by_its_square() {
        let device = Device::flex();
        let (n, m, t) = (48, 12, 600);
        // Inputs with a non-zero mean, as after a ReLU/GELU, so the error has a mean to remove.
        let x: Vec<f32> = correlated(t, n, 1).iter().map(|v| v + 0.7).collect();
        let xq = perturbed(&x, n, 0.15, 2);
        let w = weights(n, m, 3);
        let spec = QuantSpec::int4_weight_per_group(16).with_bits(3);
        let w_hat = Rtn
            .quantize_host(&w, [n, m], &Rtn.new_stats(n), &spec)
            .unwrap()
            .w_hat;
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [n, m]), &device);
        let qt = Tensor::<2>::from_data(TensorData::new(w_hat.clone(), [n, m]), &device);
        for quant_input in [Some(&xq), None] {
            let xqv = quant_input.unwrap_or(&x);
            let mut means = InputMeans::new(n);
            // Three batches, of 250, 250 and 100 tokens, the first two as rank-3 tensors.
            for (i, rows) in [0..250, 250..500, 500..600].into_iter().enumerate() {
                let span = rows.start * n..rows.end * n;
                if i < 2 {
                    let dims = [10, 25, n];
                    let xb = Tensor::<3>::from_data(
                        TensorData::new(x[span.clone()].to_vec(), dims),
                        &device,
                    );
                    let qb = quant_input.map(|q| {
                        Tensor::<3>::from_data(
                            TensorData::new(q[span.clone()].to_vec(), dims),
                            &device,
                        )
                    });
                    means.observe(&xb, qb.as_ref()).unwrap();
                } else {
                    means
                        .observe_host(&x[span.clone()], quant_input.map(|q| &q[span]))
                        .unwrap();
                }
            }
            assert_eq!(means.tokens(), t as u64);
            let delta = bias_correction_host(&w, &w_hat, [n, m], &means).unwrap();
            let dt: Vec<f32> = bias_correction(&wt, &qt, &means)
                .unwrap()
                .try_into_vec_as::<f32>()
                .unwrap();
            assert!(dt.iter().zip(&delta).all(|(a, &b)| *a == b as f32));
            let (mean0, mse0) = channel_errors(&x, xqv, &w, &w_hat, &vec![0.0; m], n, m);
            let (mean1, mse1) = channel_errors(&x, xqv, &w, &w_hat, &delta, n, m);
            let scale = mse0.iter().sum::<f64>().sqrt() / m as f64;
            // δ is the mean error it removes.
            for c in 0..m {
                assert!((delta[c] - mean0[c]).abs() <= 1e-9 * scale.max(1.0), "{c}");
                assert!(
                    mean1[c].abs() <= 1e-9 * scale.max(1.0),
                    "channel {c}: {}",
                    mean1[c]
                );
                let want = mse0[c] - mean0[c] * mean0[c];
                assert!(
                    (mse1[c] - want).abs() <= 1e-9 * mse0[c],
                    "channel {c}: {} vs {want}",
                    mse1[c]
                );
                assert!(mse1[c] <= mse0[c]);
            }
            let removed: f64 = mean0.iter().map(|d| d * d).sum();
            let (before, after) = (mse0.iter().sum::<f64>(), mse1.iter().sum::<f64>());
            eprintln!(
                "x_quant {}: MSE {before:.5e} → {after:.5e} (Σδ² = {removed:.3e})",
                quant_input.is_some()
            );
            assert!(
                removed > 1e-3 * before,
                "the test must have a mean error to remove"
            );
        }
        // Merging per-worker sums gives the single accumulator's means.
        let (mut a, mut b, mut all) = (InputMeans::new(n), InputMeans::new(n), InputMeans::new(n));
        a.observe_host(&x[..300 * n], Some(&xq[..300 * n])).unwrap();
        b.observe_host(&x[300 * n..], Some(&xq[300 * n..])).unwrap();
        all.observe_host(&x, Some(&xq)).unwrap();
        a.merge(&b).unwrap();
        let (ma, mb) = (a.means().unwrap(), all.means().unwrap());
        assert!(ma.0.iter().zip(&mb.0).all(|(p, q)| (p - q).abs() < 1e-12));
        assert!(ma.1.iter().zip(&mb.1).all(|(p, q)| (p - q).abs() < 1e-12));
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let device = Device::flex();
        let mut means = InputMeans::new(4);
        let w = Tensor::<2>::from_data(TensorData::new(vec![0.1f32; 12], [4, 3]), &device);
        assert!(matches!(
            bias_correction(&w, &w, &means),
            Err(PtqError::EmptyCalibration { .. })
        ));
        assert!(matches!(
            means.observe_host(&[1.0; 6], None),
            Err(PtqError::ShapeMismatch { what: "x", .. })
        ));
        assert!(matches!(
            means.observe_host(&[1.0; 8], Some(&[1.0; 4])),
            Err(PtqError::ShapeMismatch {
                what: "x_quant",
                ..
            })
        ));
        let mut bad = vec![1.0f32; 8];
        bad[3] = f32::NAN;
        assert!(matches!(
            means.observe_host(&[1.0; 8], Some(&bad)),
            Err(PtqError::NonFinite {
                what: "x_quant",
                index: 3,
                ..
            })
        ));
        assert_eq!(means.tokens(), 0, "failed batches are not counted");
        means.observe_host(&[1.0; 8], None).unwrap();
        let w5 = Tensor::<2>::from_data(TensorData::new(vec![0.1f32; 15], [5, 3]), &device);
        assert!(matches!(
            bias_correction(&w5, &w5, &means),
            Err(PtqError::ShapeMismatch { what: "w", .. })
        ));
        let w2 = Tensor::<2>::from_data(TensorData::new(vec![0.1f32; 8], [4, 2]), &device);
        assert!(matches!(
            bias_correction(&w, &w2, &means),
            Err(PtqError::ShapeMismatch { what: "w_hat", .. })
        ));
        let d: Vec<f32> = bias_correction(&w, &w, &means)
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
        assert_eq!(
            d,
            vec![0.0; 3],
            "an unquantized weight on identical inputs needs none"
        );
        assert!(InputMeans::new(3).merge(&means).is_err());
    }
}
