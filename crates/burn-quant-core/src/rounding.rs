//! Rounding rules and their gradients.
//!
//! A rounding rule has two halves: the forward value (which integer an element goes to) and the
//! gradient used in backward (a surrogate, since the true derivative of rounding is zero almost
//! everywhere). [`RoundingFn`] is the one trait to implement for a new rule; the built-in
//! [`Rounding`] variants use the straight-through estimator (surrogate gradient 1).

use std::fmt::Debug;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Built-in rounding rules (plain serde data, usable in recipes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rounding {
    /// Round to nearest, ties to even (IEEE default; ONNX QuantizeLinear).
    #[default]
    NearestEven,
    /// Round to nearest, ties away from zero (Python `decimal.ROUND_HALF_UP`, QONNX `HALF_UP`).
    HalfUp,
    /// Toward −∞.
    Floor,
    /// Toward +∞.
    Ceil,
    /// Toward zero.
    TowardZero,
    /// `floor(x + u)` with u ~ U[0, 1) drawn from a counter-based generator keyed by `seed` and
    /// the element's flat index: the same seed and shape always give the same result, on any
    /// number of threads.
    Stochastic {
        /// Generator seed.
        seed: u64,
    },
}

/// A rounding rule for the tensor (autodiff) path: forward value plus surrogate gradient.
///
/// Both methods act element by element on a flattened tensor, so the trait is object safe and
/// works for tensors of every rank. Implement this trait in one file to add a rounding rule;
/// nothing else needs to change (see `examples/rdfs_rounding.rs`).
pub trait RoundingFn: Debug + Send + Sync {
    /// Short name, shown in reports.
    fn name(&self) -> &str;
    /// The rounded value of each element of `x` (x is in grid units).
    fn forward(&self, x: Tensor<1>) -> Tensor<1>;
    /// [`RoundingFn::forward`] for inputs known to satisfy |x| < 2^22 (every clamped grid
    /// value); a rule may use a cheaper formula there. The default is `forward`.
    fn forward_bounded(&self, x: Tensor<1>) -> Tensor<1> {
        self.forward(x)
    }
    /// The surrogate derivative d forward / dx at each element, used in backward.
    /// The default is the straight-through estimator (1 everywhere).
    fn surrogate_grad(&self, x: Tensor<1>) -> Tensor<1> {
        x.ones_like()
    }
    /// Whether the surrogate is the identity; lets the caller skip a multiplication.
    fn is_straight_through(&self) -> bool {
        false
    }
}

impl Rounding {
    /// The rule for the `call`-th use of a quantizer: stochastic rounding gets a seed derived
    /// from its own and `call` (call 0 keeps the seed), so a quantizer that counts its calls
    /// draws fresh noise at every training step while the whole run stays a function of the
    /// seed. Every other rule is returned unchanged.
    pub fn for_call(self, call: u64) -> Rounding {
        match self {
            Rounding::Stochastic { seed } if call > 0 => Rounding::Stochastic {
                seed: mix64(seed ^ call.wrapping_mul(0xD1B5_4A32_D192_ED03)),
            },
            other => other,
        }
    }
}

impl RoundingFn for Rounding {
    fn name(&self) -> &str {
        match self {
            Rounding::NearestEven => "nearest_even",
            Rounding::HalfUp => "half_up",
            Rounding::Floor => "floor",
            Rounding::Ceil => "ceil",
            Rounding::TowardZero => "toward_zero",
            Rounding::Stochastic { .. } => "stochastic",
        }
    }

    fn forward(&self, x: Tensor<1>) -> Tensor<1> {
        match self {
            Rounding::NearestEven => x.round(),
            Rounding::HalfUp => {
                let sign = x.clone().sign();
                x.abs().add_scalar(0.5).floor() * sign
            }
            Rounding::Floor => x.floor(),
            Rounding::Ceil => x.ceil(),
            Rounding::TowardZero => x.trunc(),
            Rounding::Stochastic { seed } => {
                let noise = uniform_noise(*seed, x.dims()[0], &x.device());
                (x + noise).floor()
            }
        }
    }

    fn forward_bounded(&self, x: Tensor<1>) -> Tensor<1> {
        match self {
            // Adding 1.5·2^23 lands in [2^23, 2^24), where the f32 spacing is 1: the FPU's own
            // ties-to-even rounding does the work, in two element-wise passes (Burn's `round`
            // is a much slower scalar loop on the CPU backend).
            Rounding::NearestEven => x.add_scalar(12_582_912.0).sub_scalar(12_582_912.0),
            other => other.forward(x),
        }
    }

    fn is_straight_through(&self) -> bool {
        true
    }
}

/// A uniform sample in [0, 1) for element `index` under `seed` (SplitMix64 of the pair).
///
/// Counter-based, so the value depends only on (seed, index): deterministic under any
/// parallel schedule.
#[inline(always)]
pub fn uniform(seed: u64, index: u64) -> f32 {
    let z = mix64(
        (seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(0x9E37_79B9_7F4A_7C15),
    );
    // 24 random bits -> exactly representable in f32, strictly below 1.
    (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// SplitMix64's output function (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tensor of `len` uniform samples for `seed`, element i = [`uniform`]`(seed, i)`.
pub fn uniform_noise(seed: u64, len: usize, device: &Device) -> Tensor<1> {
    let v: Vec<f32> = (0..len as u64).map(|i| uniform(seed, i)).collect();
    Tensor::from_data(TensorData::new(v, [len]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_call_seeds_are_distinct_and_leave_other_rules_alone() {
        let r = Rounding::Stochastic { seed: 7 };
        assert_eq!(r.for_call(0), r);
        let seeds: std::collections::HashSet<Rounding> = (0..1000).map(|c| r.for_call(c)).collect();
        assert_eq!(seeds.len(), 1000);
        assert_eq!(r.for_call(5), r.for_call(5));
        assert_ne!(Rounding::Stochastic { seed: 8 }.for_call(5), r.for_call(5));
        assert_eq!(Rounding::Floor.for_call(3), Rounding::Floor);
    }
    use crate::format::RoundMode;

    #[test]
    fn tensor_rounding_equals_the_host_rule_on_ties_and_signs() {
        let device = Device::flex();
        let xs = [
            -2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, -1.2, 1.7, 0.0, 3.49, -3.51,
        ];
        let cases = [
            (Rounding::NearestEven, RoundMode::NearestEven),
            (Rounding::HalfUp, RoundMode::HalfUp),
            (Rounding::Floor, RoundMode::Floor),
            (Rounding::Ceil, RoundMode::Ceil),
            (Rounding::TowardZero, RoundMode::TowardZero),
        ];
        for (r, m) in cases {
            let t = r.forward(Tensor::<1>::from_floats(xs, &device));
            let got = t.into_data().try_into_vec_as::<f32>().unwrap();
            let want: Vec<f32> = xs.iter().map(|&x| m.apply(x, 0.0)).collect();
            assert_eq!(got, want, "{r:?}");
        }
        assert_eq!(RoundMode::NearestEven.apply(2.5, 0.0), 2.0);
        assert_eq!(RoundMode::HalfUp.apply(2.5, 0.0), 3.0);
        assert_eq!(RoundMode::HalfUp.apply(-2.5, 0.0), -3.0);
        assert_eq!(RoundMode::TowardZero.apply(-2.7, 0.0), -2.0);
    }

    #[test]
    fn stochastic_tensor_rounding_uses_the_same_noise_as_the_host() {
        let device = Device::flex();
        let xs: Vec<f32> = (0..100).map(|i| i as f32 * 0.37 - 18.0).collect();
        let got = Rounding::Stochastic { seed: 42 }
            .forward(Tensor::<1>::from_floats(xs.as_slice(), &device))
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let want: Vec<f32> = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| RoundMode::Stochastic.apply(x, uniform(42, i as u64)))
            .collect();
        assert_eq!(got, want);
        assert!((0..10_000).all(|i| (0.0..1.0).contains(&uniform(1, i))));
    }
}
