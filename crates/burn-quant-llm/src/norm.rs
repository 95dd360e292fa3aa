//! [`RmsNorm`]: root-mean-square layer normalization with a learned scale (Llama's norm).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

/// `y = x / sqrt(mean(x²) + eps) · weight`, normalizing over the last axis.
///
/// Same arithmetic as Hugging Face's `LlamaRMSNorm` in f32: the mean square is taken over the
/// features, `eps` is added inside the square root, and the learned scale multiplies last.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Learned scale, `[d_model]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl RmsNorm {
    /// A norm with the given scale (`[d_model]`) and epsilon.
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// A norm whose scale is all ones.
    pub fn ones(d_model: usize, eps: f64, device: &Device) -> Self {
        Self::new(Tensor::ones([d_model], device), eps)
    }

    /// Width of the normalized axis.
    pub fn d_model(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Normalizes `x` (`[..., d_model]`) over its last axis; output has the same shape.
    ///
    /// The caller guarantees the last axis is `d_model` (the model's blocks check it once at
    /// their entry).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let inv_rms = x
            .clone()
            .square()
            .mean_dim(D - 1)
            .add_scalar(self.eps)
            .sqrt()
            .recip();
        x * inv_rms * self.weight.val().unsqueeze::<D>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_closed_form() {
        let device = Device::flex();
        // Row [3, 4]: mean square 12.5; row [0, 0]: the output is 0 (eps keeps it finite).
        let x = Tensor::<2>::from_floats([[3.0, 4.0], [0.0, 0.0]], &device);
        let eps = 1e-5;
        let norm = RmsNorm::new(Tensor::from_floats([2.0, -0.5], &device), eps);
        let y = norm.forward(x).into_data().try_to_vec::<f32>().unwrap();
        let r = (12.5f64 + eps).sqrt();
        let want = [3.0 / r * 2.0, 4.0 / r * -0.5, 0.0, 0.0];
        for (a, b) in y.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn is_scale_invariant_up_to_eps() {
        // RMSNorm(c·x) = RMSNorm(x) for c > 0 when eps is negligible: a property of the
        // definition that a wrong axis or a missing square root breaks.
        let device = Device::flex();
        let x = Tensor::<3>::from_floats([[[0.3, -1.2, 2.0, 0.7], [1.0, 1.0, -1.0, 0.5]]], &device);
        let norm = RmsNorm::new(Tensor::from_floats([1.0, 2.0, 3.0, 4.0], &device), 1e-12);
        let a = norm
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b = norm
            .forward(x.clone().mul_scalar(37.0))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        // Each output row has RMS equal to the RMS of the scale when the scale is uniform.
        let unit = RmsNorm::ones(4, 1e-12, &device);
        let y = unit.forward(x).into_data().try_to_vec::<f32>().unwrap();
        for row in y.chunks(4) {
            let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!((ms - 1.0).abs() < 1e-5);
        }
    }
}
