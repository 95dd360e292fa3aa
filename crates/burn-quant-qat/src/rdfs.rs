//! RDFS, the Fourier-surrogate rounding rule from the Brevitas talk, as a named rule:
//! [`register_rdfs`] registers it for the whole process under [`RDFS`] and returns the
//! [`Rounding`] to put in a spec (`spec.with_rounding(register_rdfs()?)`), so every quantizer
//! holding that spec — on any thread and device, in a model forked by burn-train — rounds with
//! it. A recipe names it `rounding = { kind = "custom", name = "rdfs" }`.
//!
//! Forward: `round(x)` (ties to even), so values equal round-to-nearest. Backward:
//! `2 / (1 + a·cos(π·(x + round(x)))) − 1` with `a = 0.93`: ~0.04 at integers, 1 half-way
//! between them, where rounding jumps.

use std::f32::consts::PI;
use std::sync::Arc;

use burn::tensor::Tensor;
use burn_quant_core::{Rounding, RoundingFn, register_rounding};

use crate::error::Result;

/// The name RDFS is registered under by [`register_rdfs`].
pub const RDFS: &str = "rdfs";

/// The RDFS rounding rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rdfs {
    /// Amplitude of the cosine (0.93 in the talk); below 1 so the surrogate stays finite.
    pub amplitude: f32,
}

impl Default for Rdfs {
    fn default() -> Self {
        Self { amplitude: 0.93 }
    }
}

impl RoundingFn for Rdfs {
    fn name(&self) -> &str {
        RDFS
    }
    fn forward(&self, x: Tensor<1>) -> Tensor<1> {
        x.round()
    }
    fn surrogate_grad(&self, x: Tensor<1>) -> Tensor<1> {
        let phase = (x.clone() + x.round()).mul_scalar(PI);
        phase
            .cos()
            .mul_scalar(self.amplitude)
            .add_scalar(1.0)
            .recip()
            .mul_scalar(2.0)
            .sub_scalar(1.0)
    }
}

/// The surrogate derivative at `x` in closed form, for checking.
pub fn rdfs_grad(x: f32, amplitude: f32) -> f32 {
    2.0 / (1.0 + amplitude * (PI * (x + x.round_ties_even())).cos()) - 1.0
}

/// Registers [`Rdfs::default`] for the whole process under [`RDFS`] and returns the
/// [`Rounding`] that names it. Registering again replaces the rule with an equal one.
pub fn register_rdfs() -> Result<Rounding> {
    Ok(register_rounding(RDFS, Arc::new(Rdfs::default()))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use burn_quant_core::{QuantParams, QuantSpec, fake_quant_with};

    #[test]
    fn named_rule_rounds_to_nearest_with_the_fourier_surrogate() {
        let device = Device::flex().autodiff();
        let xs = [-1.3f32, -0.5, -0.2, 0.0, 0.25, 0.49, 0.51, 1.5, 2.7];
        let x = Tensor::<1>::from_floats(xs, &device).require_grad();
        let spec = QuantSpec::int8_weight_per_tensor()
            .with_bits(4)
            .with_rounding(register_rdfs().expect("valid name"));
        let params = QuantParams::<1> {
            scales: Tensor::from_floats([1.0], &device),
            zero_points: None,
            scale_level: None,
        };
        let y = fake_quant_with(x.clone(), &spec, &params).expect("registered rule");
        let grads = y.clone().sum().backward();
        let host = |t: Tensor<1>| t.try_into_vec_as::<f32>().expect("f32");
        let (y, g) = (host(y), host(x.grad(&grads).expect("grad")));
        for (i, &v) in xs.iter().enumerate() {
            assert_eq!(y[i], v.round_ties_even(), "forward at {v}");
            assert!(
                (g[i] - rdfs_grad(v, 0.93)).abs() < 1e-5,
                "grad at {v}: {}",
                g[i]
            );
        }
        // Not straight-through: ~0.04 at an integer, 1 half-way.
        assert!(rdfs_grad(0.0, 0.93) < 0.05 && (rdfs_grad(0.5, 0.93) - 1.0).abs() < 1e-5);
    }
}
