//! A custom rounding rule in one file: the Fourier surrogate (RDFS) from the Brevitas talk.
//!
//! Forward: `round(x)` (ties to even). Backward: `2 / (1 + 0.93·cos(π·(x + round(x)))) − 1`,
//! a smooth periodic surrogate that is ~0.04 at integers and 1 at the half-way points where
//! rounding jumps. Implementing [`RoundingFn`] is all it takes; nothing else in burn-quant
//! changes.
//!
//! The rule is registered once under a name ([`register_rdfs`]) and named in the spec, the way
//! Brevitas names its rule (`float_to_int_impl_type = ROUND_RDFS`): a recipe says
//! `rounding = { kind = "custom", name = "rdfs" }`. Every quantizer holding that spec — on any
//! thread, on any device, in a model forked to burn-train's workers — uses it.
//! Run: `cargo run --release --example rdfs_rounding`.

use std::f32::consts::PI;
use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use burn_quant::core::register_rounding;
use burn_quant::prelude::*;

/// The name RDFS is registered under ([`register_rdfs`]).
pub const RDFS: &str = "rdfs";

/// Registers RDFS (amplitude 0.93) for the whole process under [`RDFS`] and returns the
/// [`Rounding`] that names it, to put in a spec: `spec.with_rounding(register_rdfs())`.
/// Registering again replaces the rule with an equal one.
pub fn register_rdfs() -> Rounding {
    register_rounding(RDFS, Arc::new(Rdfs::default())).expect("`rdfs` is a valid rule name")
}

/// The RDFS rounding rule.
#[derive(Debug, Clone, Copy)]
pub struct Rdfs {
    /// Amplitude of the cosine (0.93 in the talk).
    pub amplitude: f32,
}

impl Default for Rdfs {
    fn default() -> Self {
        Self { amplitude: 0.93 }
    }
}

impl RoundingFn for Rdfs {
    fn name(&self) -> &str {
        "rdfs"
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

/// The closed-form surrogate, for checking.
pub fn rdfs_grad(x: f32, amplitude: f32) -> f32 {
    2.0 / (1.0 + amplitude * (PI * (x + x.round_ties_even())).cos()) - 1.0
}

/// Fake-quantizes `xs` (int4, scale 1) with a spec that names RDFS, under autodiff; returns
/// (forward, d sum / dx).
pub fn forward_and_grad(xs: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let device = Device::flex().autodiff();
    let x = Tensor::<1>::from_floats(xs, &device).require_grad();
    let spec = QuantSpec::int8_weight_per_tensor()
        .with_bits(4)
        .with_rounding(register_rdfs());
    let params = QuantParams::<1> {
        scales: Tensor::from_floats([1.0], &device),
        zero_points: None,
        scale_level: None,
    };
    let y = fake_quant_with(x.clone(), &spec, &params).expect("valid spec and input");
    let grads = y.clone().sum().backward();
    let vec = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().expect("f32 data");
    (vec(y), vec(x.grad(&grads).expect("x requires grad")))
}

/// Fits 3-bit weights `w` (learned through fake-quant) so that `w·a ≈ target`, with plain SGD;
/// returns the final loss. Shows the rule driving an optimisation, not only a gradient.
pub fn fit(rounding: &dyn RoundingFn, steps: usize) -> f32 {
    let device = Device::flex().autodiff();
    let a: Vec<f32> = (0..64)
        .map(|i| ((i * 37 % 64) as f32 / 32.0) - 1.0)
        .collect();
    let target: Vec<f32> = a.iter().map(|v| 0.73 * v).collect();
    let a = Tensor::<1>::from_floats(a.as_slice(), &device);
    let target = Tensor::<1>::from_floats(target.as_slice(), &device);
    let spec = QuantSpec::int8_weight_per_tensor().with_bits(3);
    let params = QuantParams::<1> {
        scales: Tensor::from_floats([0.25], &device),
        zero_points: None,
        scale_level: None,
    };
    let mut w = Tensor::<1>::from_floats([0.1], &device);
    let mut loss_value = f32::INFINITY;
    for _ in 0..steps {
        let wt = w.clone().require_grad();
        let wq =
            fake_quant_custom(wt.clone(), &spec, &params, rounding).expect("valid spec and input");
        let pred = a.clone() * wq.expand([64]);
        let loss = (pred - target.clone()).square().mean();
        loss_value = loss.clone().into_scalar::<f32>();
        let g = wt.grad(&loss.backward()).expect("w requires grad");
        w = (wt.detach() - Tensor::from_inner(g).mul_scalar(0.5)).detach();
    }
    loss_value
}

/// A quantizer built from a JSON recipe fragment that names the rule, applied to `xs` (int4,
/// scale 1): the registered rule is found by name.
pub fn from_recipe(xs: &[f32]) -> Vec<f32> {
    register_rdfs();
    let mut spec = QuantSpec::int8_weight_per_tensor()
        .with_bits(4)
        .with_scale_source(ScaleSource::Const(1.0));
    spec.rounding = serde_json::from_str(r#"{ "kind": "custom", "name": "rdfs" }"#)
        .expect("a rounding rule in recipe form");
    let device = Device::flex();
    let q = QuantizerConfig::for_spec(spec, QuantizerRole::Weight)
        .init(&device)
        .expect("the rule is registered");
    q.forward(Tensor::<1>::from_floats(xs, &device))
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 data")
}

#[allow(dead_code)]
fn main() {
    let xs = [-1.3f32, -0.5, -0.2, 0.0, 0.25, 0.49, 0.51, 1.5, 2.7];
    let (y, g) = forward_and_grad(&xs);
    println!(
        "{:>6} {:>8} {:>10} {:>10}",
        "x", "round", "rdfs grad", "closed form"
    );
    for i in 0..xs.len() {
        println!(
            "{:>6.2} {:>8.1} {:>10.4} {:>10.4}",
            xs[i],
            y[i],
            g[i],
            rdfs_grad(xs[i], 0.93)
        );
    }
    println!(
        "a quantizer from the recipe `rounding = {{ kind = \"custom\", name = \"rdfs\" }}`: {:?} -> {:?}",
        &xs[..4],
        &from_recipe(&xs)[..4]
    );
    println!(
        "3-bit fit, 60 SGD steps: loss with STE {:.5}, with RDFS {:.5}",
        fit(&Rounding::NearestEven, 60),
        fit(&Rdfs::default(), 60)
    );
}
