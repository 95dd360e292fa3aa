//! [`Rope`]: rotary position embedding tables in the Hugging Face "rotate-half" convention.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{LlmError, Result};
use crate::hparams::RopeScaling;

/// Cos/sin tables of rotary position embeddings for positions `0..len`.
///
/// Convention (Hugging Face Llama, un-permuted weights): feature `i < head_dim/2` pairs with
/// feature `i + head_dim/2`, and the pair at position `p` is rotated by the angle
/// `p · θ^(−2i/head_dim)` (divided by the factor under linear scaling):
/// `out = x · cos + rotate_half(x) · sin` with `rotate_half(x) = [−x₂, x₁]`.
/// Angles are formed in f32 as transformers does (f32 inverse frequency times f32 position),
/// then cos/sin are evaluated in f64 and rounded once.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[len, head_dim]`, both halves equal.
    cos: Tensor<2>,
    /// `[len, head_dim]`: `−sin` on the first half, `+sin` on the second, so that the
    /// rotation is `x · cos + swap_halves(x) · sin_signed` (one multiply, no negation pass).
    sin_signed: Tensor<2>,
    head_dim: usize,
    len: usize,
}

impl Rope {
    /// Tables for `len` positions of heads of width `head_dim` (even, non-zero) with base
    /// `theta`.
    pub fn new(
        head_dim: usize,
        theta: f32,
        scaling: RopeScaling,
        len: usize,
        device: &Device,
    ) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(LlmError::invalid(
                "head_dim",
                head_dim,
                "RoPE rotates pairs: the head width must be even and non-zero",
            ));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(LlmError::invalid("rope_theta", theta, "must be positive"));
        }
        let factor = match scaling {
            RopeScaling::None => 1.0f32,
            RopeScaling::Linear { factor } if factor.is_finite() && factor > 0.0 => factor,
            RopeScaling::Linear { factor } => {
                return Err(LlmError::invalid(
                    "rope_scaling.factor",
                    factor,
                    "must be positive",
                ));
            }
        };
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32) / factor)
            .collect();
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for p in 0..len {
            let row_start = cos.len();
            for &f in &inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(-(angle.sin() as f32));
            }
            // Second half: same angles, cos repeated and sin with its sign.
            for i in 0..half {
                cos.push(cos[row_start + i]);
                sin.push(-sin[row_start + i]);
            }
        }
        Ok(Self {
            cos: Tensor::from_data(TensorData::new(cos, [len, head_dim]), device),
            sin_signed: Tensor::from_data(TensorData::new(sin, [len, head_dim]), device),
            head_dim,
            len,
        })
    }

    /// Number of positions in the tables.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tables hold no position.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Head width the tables were built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Rotates `x` (`[batch, heads, seq, head_dim]`) whose first position is `offset`.
    pub fn apply(&self, x: Tensor<4>, offset: usize) -> Result<Tensor<4>> {
        let [b, h, s, d] = x.dims();
        if d != self.head_dim {
            return Err(LlmError::BadInput {
                what: "Rope::apply".into(),
                expected: format!("[batch, heads, seq, {}]", self.head_dim),
                actual: vec![b, h, s, d],
            });
        }
        let end = offset + s;
        if end > self.len {
            return Err(LlmError::TooLong {
                start: offset,
                end,
                len: self.len,
            });
        }
        let cos = self.cos.clone().narrow(0, offset, s).unsqueeze::<4>();
        let sin = self
            .sin_signed
            .clone()
            .narrow(0, offset, s)
            .unsqueeze::<4>();
        let half = d / 2;
        let swapped = Tensor::cat(
            vec![
                x.clone().narrow(3, half, half),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        Ok(x * cos + swapped * sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn rotates_pairs_i_and_i_plus_half_by_position_times_frequency() {
        // head_dim 4, θ = 10000: frequencies 1 and 1/100. A unit vector on feature 0 at
        // position p becomes [cos p, 0, sin p, 0]; one on feature 3 (the partner of 1) becomes
        // [0, −sin(p/100), 0, cos(p/100)].
        let device = Device::flex();
        let rope = Rope::new(4, 10000.0, RopeScaling::None, 8, &device).unwrap();
        let e0 = Tensor::<4>::from_floats([[[[1.0, 0.0, 0.0, 0.0]; 3]]], &device);
        let e3 = Tensor::<4>::from_floats([[[[0.0, 0.0, 0.0, 1.0]; 3]]], &device);
        let y0 = host(rope.apply(e0, 5).unwrap());
        let y3 = host(rope.apply(e3, 5).unwrap());
        for (k, p) in (5..8).enumerate() {
            let p = p as f64;
            let want0 = [p.cos(), 0.0, p.sin(), 0.0];
            let want3 = [0.0, -(p / 100.0).sin(), 0.0, (p / 100.0).cos()];
            for i in 0..4 {
                assert!((y0[k * 4 + i] as f64 - want0[i]).abs() < 1e-6, "{y0:?}");
                assert!((y3[k * 4 + i] as f64 - want3[i]).abs() < 1e-6, "{y3:?}");
            }
        }
    }

    #[test]
    fn linear_scaling_divides_positions() {
        // Position 6 with factor 2 must equal position 3 without scaling.
        let device = Device::flex();
        let plain = Rope::new(8, 500.0, RopeScaling::None, 8, &device).unwrap();
        let scaled = Rope::new(8, 500.0, RopeScaling::Linear { factor: 2.0 }, 8, &device).unwrap();
        let x =
            Tensor::<4>::from_floats([[[[0.5, -1.0, 2.0, 0.25, 1.5, 0.0, -0.75, 1.0]]]], &device);
        let a = host(plain.apply(x.clone(), 3).unwrap());
        let b = host(scaled.apply(x, 6).unwrap());
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-6);
        }
    }

    #[test]
    fn scores_depend_only_on_relative_position() {
        // ⟨R(p)q, R(p+Δ)k⟩ is the same for every p: the property attention relies on.
        let device = Device::flex();
        let rope = Rope::new(8, 100000.0, RopeScaling::None, 64, &device).unwrap();
        let q = [0.3f32, -1.1, 0.8, 2.0, -0.4, 0.9, 1.3, -0.2];
        let k = [1.0f32, 0.5, -0.7, 0.1, 0.6, -1.4, 0.2, 0.3];
        let at = |v: [f32; 8], pos: usize| {
            host(
                rope.apply(Tensor::<4>::from_floats([[[v]]], &device), pos)
                    .unwrap(),
            )
        };
        let dot = |a: Vec<f32>, b: Vec<f32>| a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>();
        let base = dot(at(q, 0), at(k, 7));
        for p in [1, 10, 40, 56] {
            let s = dot(at(q, p), at(k, p + 7));
            assert!((s - base).abs() < 1e-4, "p={p}: {s} vs {base}");
        }
        // And it does change with Δ (the test would pass for an identity "rotation").
        let other = dot(at(q, 0), at(k, 3));
        assert!((other - base).abs() > 1e-3);
    }

    #[test]
    fn refuses_bad_shapes_and_positions() {
        let device = Device::flex();
        assert!(matches!(
            Rope::new(5, 10000.0, RopeScaling::None, 4, &device),
            Err(LlmError::InvalidArgument { .. })
        ));
        let rope = Rope::new(4, 10000.0, RopeScaling::None, 4, &device).unwrap();
        let x = Tensor::<4>::zeros([1, 1, 3, 4], &device);
        assert!(matches!(
            rope.apply(x.clone(), 2),
            Err(LlmError::TooLong { end: 5, len: 4, .. })
        ));
        assert!(matches!(
            rope.apply(Tensor::<4>::zeros([1, 1, 3, 6], &device), 0),
            Err(LlmError::BadInput { .. })
        ));
    }
}
