//! Tests of the fused fake-quant against the reference chain ([`crate::fake_quant_reference`]).
//!
//! Values: bit-exact (`==`, or both NaN). Gradients of `x`: equal up to one f32 rounding
//! (both compute `g·s/s`). Gradients of the scale and zero-point are sums over each scale
//! cell that the chain reduces in another order and in f32 from two cancelling terms
//! (`Σ g·q` and `Σ g·x/s`), so they are compared per cell within
//! `16 · f32::EPSILON · Σ |g| · (2·|x/s| + |z| + 1 + max |grid|)` (the chain's own rounding
//! error bound, with room), plus `1e-6`. The data avoids exact ties and exact clip boundaries
//! (pseudo-random values): there the rounding / clamp tie conventions decide.

use burn::tensor::{Device, Tensor, TensorData};

use super::{fused_calls, supports, with_host_slice};
use crate::error::QuantError;
use crate::format::{Format, Minifloat};
use crate::granularity::Granularity;
use crate::quantize::{QuantParams, compute_params, fake_quant_reference, fake_quant_with};
use crate::rounding::{Rounding, uniform};
use crate::scale::ZeroPoint;
use crate::spec::QuantSpec;

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().try_into_vec_as::<f32>().unwrap()
}

/// Pseudo-random data in about ±2 with 3% outliers up to ±20 (clipped by most scales).
fn data(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let u = uniform(seed, i) - 0.5;
            if uniform(seed ^ 0xabc, i) > 0.97 {
                u * 40.0
            } else {
                u * 4.0
            }
        })
        .collect()
}

fn tensor(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Every format × granularity the chain supports, each with a shape.
fn cases() -> Vec<(&'static str, QuantSpec, [usize; 2])> {
    let nonsat = Minifloat {
        saturating: false,
        ..Minifloat::e4m3()
    };
    let ieee = Minifloat::e5m2();
    vec![
        (
            "int8 per tensor",
            QuantSpec::int8_weight_per_tensor(),
            [24, 40],
        ),
        (
            "int8 per channel axis 0",
            QuantSpec::int8_weight_per_channel().with_axis(0),
            [24, 40],
        ),
        (
            "int8 per channel axis 1",
            QuantSpec::int8_weight_per_channel().with_axis(1),
            [24, 40],
        ),
        (
            "int4 narrow per group 8 axis 0",
            QuantSpec::int4_weight_per_group(8)
                .with_axis(0)
                .with_narrow(true),
            [24, 40],
        ),
        (
            "int4 per group 8 axis 1",
            QuantSpec::int4_weight_per_group(8).with_axis(1),
            [24, 40],
        ),
        (
            "int4 per group 16 axis 1, short last group",
            QuantSpec::int4_weight_per_group(16).with_axis(1),
            [24, 40],
        ),
        (
            "int4 per group 10 axis 0, short last group",
            QuantSpec::int4_weight_per_group(10).with_axis(0),
            [24, 40],
        ),
        (
            "uint8 asymmetric per tensor",
            QuantSpec::uint8_act_per_tensor().asymmetric(),
            [24, 40],
        ),
        (
            "int4 asymmetric per group 8 axis 1",
            QuantSpec::int4_weight_per_group(8)
                .with_axis(1)
                .asymmetric(),
            [24, 40],
        ),
        (
            "int4 asymmetric per channel axis 0",
            QuantSpec::int8_weight_per_channel()
                .with_bits(4)
                .with_axis(0)
                .asymmetric(),
            [24, 40],
        ),
        ("ternary per channel", QuantSpec::ternary_weight(), [24, 40]),
        (
            "binary per tensor",
            QuantSpec::binary_weight().with_granularity(Granularity::PerTensor),
            [24, 40],
        ),
        (
            "binary per channel",
            QuantSpec::binary_weight().with_granularity(Granularity::PerChannel { axis: 1 }),
            [24, 40],
        ),
        (
            "fp8 e4m3 per tensor",
            QuantSpec::fp8_e4m3_weight_per_tensor(),
            [24, 40],
        ),
        (
            "fp8 e4m3 non-saturating per tensor",
            QuantSpec::fp8_e4m3_weight_per_tensor().with_format(Format::Minifloat(nonsat)),
            [24, 40],
        ),
        (
            "fp8 e5m2 (IEEE specials) per channel",
            QuantSpec::fp8_e4m3_weight_per_tensor()
                .with_format(Format::Minifloat(ieee))
                .with_granularity(Granularity::PerChannel { axis: 0 }),
            [24, 40],
        ),
        ("mxfp4", QuantSpec::mxfp4(), [64, 24]),
        ("mxfp6 e3m2", QuantSpec::mxfp6_e3m2(), [64, 24]),
        ("nvfp4", QuantSpec::nvfp4(), [32, 24]),
    ]
}

fn roundings() -> [Rounding; 6] {
    [
        Rounding::NearestEven,
        Rounding::HalfUp,
        Rounding::Floor,
        Rounding::Ceil,
        Rounding::TowardZero,
        Rounding::Stochastic { seed: 11 },
    ]
}

/// Data for a case: NVFP4 gets an all-zero block (a zero scale).
fn case_data(name: &str, shape: [usize; 2], seed: u64) -> Vec<f32> {
    let mut v = data(shape[0] * shape[1], seed);
    if name == "nvfp4" {
        // Blocks of 16 along the spec's axis: zero one whole block.
        let axis = QuantSpec::nvfp4().granularity.axis().unwrap();
        for k in 0..16 {
            let (i, j) = if axis == 0 { (k, 3) } else { (3, k) };
            v[i * shape[1] + j] = 0.0;
        }
    }
    v
}

fn assert_same_values(name: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x == y || (x.is_nan() && y.is_nan()),
            "{name}: value {i}: fused {x} vs chain {y}"
        );
    }
}

#[test]
fn forward_values_equal_the_chain_for_every_format_granularity_and_rounding() {
    let device = Device::flex();
    for (k, (name, base, shape)) in cases().into_iter().enumerate() {
        let x = tensor(case_data(name, shape, k as u64), shape, &device);
        for rounding in roundings() {
            let spec = base.with_rounding(rounding);
            let p = compute_params(&x, &spec).unwrap();
            assert!(supports(&x, &spec, &p), "{name}");
            let before = fused_calls().forward;
            let fused = host(&fake_quant_with(x.clone(), &spec, &p).unwrap());
            assert_eq!(
                fused_calls().forward,
                before + 1,
                "{name}: the fused kernel ran"
            );
            let chain = host(&fake_quant_reference(x.clone(), &spec, &p).unwrap());
            assert_same_values(&format!("{name} {rounding:?}"), &fused, &chain);
        }
    }
}

/// `(dx, ds, dz)` of `Σ w · fq(x)` on `device`, by `f`.
fn grads(
    f: impl Fn(Tensor<2>, &QuantSpec, &QuantParams<2>) -> Tensor<2>,
    device: &Device,
    x: &[f32],
    shape: [usize; 2],
    spec: &QuantSpec,
    p: &QuantParams<2>,
    learn_scale: bool,
) -> (Vec<f32>, Option<Vec<f32>>, Option<Vec<f32>>) {
    let xt = tensor(x.to_vec(), shape, device).require_grad();
    let s = Tensor::<2>::from_data(p.scales.to_data(), device);
    let s = if learn_scale { s.require_grad() } else { s };
    let z = p
        .zero_points
        .as_ref()
        .map(|z| Tensor::<2>::from_data(z.to_data(), device).require_grad());
    let params = QuantParams {
        scales: s.clone(),
        zero_points: z.clone(),
        scale_level: None,
    };
    let w = tensor(
        (0..x.len() as u64).map(|i| 0.5 + uniform(99, i)).collect(),
        shape,
        device,
    );
    let y = f(xt.clone(), spec, &params);
    let g = (y * w).sum().backward();
    (
        host(&xt.grad(&g).unwrap()),
        s.grad(&g).map(|t| host(&t)),
        z.and_then(|z| z.grad(&g)).map(|t| host(&t)),
    )
}

/// Per cell bound on the reduction error of the scale / zero-point gradients (module docs).
fn cell_bounds(x: &[f32], spec: &QuantSpec, p: &QuantParams<2>, shape: [usize; 2]) -> Vec<f32> {
    let layout = spec.check_shape(&shape).unwrap();
    let cells = super::CellLayout::of(&layout);
    let s = host(&p.scales);
    let z = p.zero_points.as_ref().map(host);
    let grid_max = spec
        .format
        .max_value()
        .abs()
        .max(spec.format.min_value().abs());
    let mut b = vec![0f64; s.len()];
    for (i, &xv) in x.iter().enumerate() {
        let c = cells.cell(i);
        let sc = if s[c] == 0.0 { 1.0 } else { s[c].abs() };
        let zc = z.as_ref().map_or(0.0, |z| z[c].abs());
        // |g| ≤ 1.5.
        b[c] += 1.5 * (2.0 * (xv / sc).abs() + zc + 1.0 + grid_max) as f64;
    }
    b.iter()
        .map(|&v| (16.0 * f32::EPSILON as f64 * v) as f32 + 1e-6)
        .collect()
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: impl Fn(usize) -> f32) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol(i) || (x.is_nan() && y.is_nan()) || x == y,
            "{what}: {i}: fused {x} vs chain {y} (tolerance {})",
            tol(i)
        );
    }
}

/// `g·s/s` (fused) vs the chain's `g·s` then divided by `s` in its own way: a few ulps.
fn dx_tolerance(chain: &[f32]) -> impl Fn(usize) -> f32 + '_ {
    |i| 4.0 * f32::EPSILON * chain[i].abs()
}

fn check_gradients(device: &Device, label: &str) {
    let plain = Device::flex();
    for (k, (name, base, shape)) in cases().into_iter().enumerate() {
        let x = case_data(name, shape, 100 + k as u64);
        let xt = tensor(x.clone(), shape, &plain);
        for rounding in roundings() {
            let spec = base.with_rounding(rounding);
            let p = compute_params(&xt, &spec).unwrap();
            let what = format!("{label} {name} {rounding:?}");
            let before = fused_calls();
            let fused = grads(
                |x, s, p| fake_quant_with(x, s, p).unwrap(),
                device,
                &x,
                shape,
                &spec,
                &p,
                true,
            );
            let after = fused_calls();
            assert_eq!(
                after.forward,
                before.forward + 1,
                "{what}: fused forward ran"
            );
            assert_eq!(
                after.backward,
                before.backward + 1,
                "{what}: fused backward ran"
            );
            let chain = grads(
                |x, s, p| fake_quant_reference(x, s, p).unwrap(),
                device,
                &x,
                shape,
                &spec,
                &p,
                true,
            );
            assert_eq!(
                fused_calls(),
                after,
                "{what}: the chain runs no fused kernel"
            );
            assert_close(
                &format!("{what} dx"),
                &fused.0,
                &chain.0,
                dx_tolerance(&chain.0),
            );
            let bounds = cell_bounds(&x, &spec, &p, shape);
            assert_close(
                &format!("{what} d scale"),
                fused.1.as_ref().unwrap(),
                chain.1.as_ref().unwrap(),
                |c| bounds[c],
            );
            assert_eq!(fused.2.is_some(), spec.zero_point.is_asymmetric(), "{what}");
            if let (Some(a), Some(b)) = (&fused.2, &chain.2) {
                let s = host(&p.scales);
                assert_close(&format!("{what} d zero-point"), a, b, |c| {
                    bounds[c] * s[c].abs() + 1e-6
                });
            }
        }
    }
}

#[test]
fn gradients_equal_the_chain_under_autodiff() {
    check_gradients(&Device::flex().autodiff(), "autodiff");
}

#[test]
fn gradients_equal_the_chain_with_gradient_checkpointing() {
    check_gradients(
        &Device::flex().autodiff().gradient_checkpointing(),
        "checkpointing",
    );
}

#[test]
fn a_scale_without_grad_is_a_constant() {
    let device = Device::flex().autodiff();
    let shape = [16, 32];
    let x = data(16 * 32, 5);
    let spec = QuantSpec::int4_weight_per_group(8).with_axis(1);
    let p = compute_params(&tensor(x.clone(), shape, &Device::flex()), &spec).unwrap();
    let f = |x, s: &QuantSpec, p: &QuantParams<2>| fake_quant_with(x, s, p).unwrap();
    let r = |x, s: &QuantSpec, p: &QuantParams<2>| fake_quant_reference(x, s, p).unwrap();
    let fused = grads(f, &device, &x, shape, &spec, &p, false);
    let chain = grads(r, &device, &x, shape, &spec, &p, false);
    assert!(fused.1.is_none() && chain.1.is_none());
    assert_close("dx", &fused.0, &chain.0, dx_tolerance(&chain.0));
    // A scale on the plain device next to an autodiff x: a constant too.
    let xa = tensor(x.clone(), shape, &device).require_grad();
    let y = fake_quant_with(xa.clone(), &spec, &p).unwrap();
    let g = host(&xa.grad(&y.sum().backward()).unwrap());
    let gr = {
        let xa = tensor(x, shape, &device).require_grad();
        let y = fake_quant_reference(xa.clone(), &spec, &p).unwrap();
        host(&xa.grad(&y.sum().backward()).unwrap())
    };
    assert_close("dx, plain scale", &g, &gr, dx_tolerance(&gr));
}

#[test]
fn scale_grad_factor_multiplies_only_the_scale_gradient() {
    let device = Device::flex().autodiff();
    let shape = [8, 16];
    let x = data(8 * 16, 9);
    let spec = QuantSpec::int8_weight_per_channel().with_axis(0);
    let p = compute_params(&tensor(x.clone(), shape, &Device::flex()), &spec).unwrap();
    let one = grads(
        |x, s, p| super::fake_quant(x, s, p, 1.0).unwrap(),
        &device,
        &x,
        shape,
        &spec,
        &p,
        true,
    );
    let quarter = grads(
        |x, s, p| super::fake_quant(x, s, p, 0.25).unwrap(),
        &device,
        &x,
        shape,
        &spec,
        &p,
        true,
    );
    assert_eq!(one.0, quarter.0);
    for (a, b) in one.1.unwrap().iter().zip(quarter.1.unwrap()) {
        assert_eq!(a * 0.25, b);
    }
}

#[test]
fn invalid_input_is_a_typed_error_on_every_device() {
    for device in [
        Device::flex(),
        Device::flex().autodiff(),
        Device::flex().autodiff().gradient_checkpointing(),
    ] {
        let spec = QuantSpec::int8_act_per_tensor();
        let s = |v: f32| QuantParams::<1> {
            scales: Tensor::from_floats([v], &device),
            zero_points: None,
            scale_level: None,
        };
        let x = Tensor::<1>::from_floats([0.2, 0.3, f32::NAN, f32::INFINITY], &device);
        let x = if device.is_autodiff() {
            x.require_grad()
        } else {
            x
        };
        assert!(matches!(
            fake_quant_with(x.clone(), &spec, &s(0.1)),
            Err(QuantError::NonFinite {
                what: "x",
                index: 2,
                ..
            })
        ));
        // Params are checked first, like the chain.
        for bad in [f32::INFINITY, f32::NAN, -0.5] {
            assert!(matches!(
                fake_quant_with(x.clone(), &spec, &s(bad)),
                Err(QuantError::InvalidScale { index: 0, .. })
            ));
        }
        let spec = QuantSpec::uint8_act_per_tensor().asymmetric();
        let p = QuantParams::<1> {
            scales: Tensor::from_floats([0.1], &device),
            zero_points: Some(Tensor::from_floats([f32::NAN], &device)),
            scale_level: None,
        };
        let ok = Tensor::<1>::from_floats([0.2, 0.3], &device);
        assert!(matches!(
            fake_quant_with(ok.clone(), &spec, &p),
            Err(QuantError::NonFinite {
                what: "zero_points",
                ..
            })
        ));
        let empty = Tensor::<1>::from_data(TensorData::new(Vec::<f32>::new(), [0]), &device);
        assert!(matches!(
            fake_quant_with(empty, &spec, &p),
            Err(QuantError::EmptyTensor { .. })
        ));
        // A wrong scale shape.
        let wide = QuantParams::<1> {
            scales: Tensor::from_floats([0.1, 0.2], &device),
            zero_points: None,
            scale_level: None,
        };
        assert!(matches!(
            fake_quant_with(ok, &QuantSpec::int8_act_per_tensor(), &wide),
            Err(QuantError::ShapeMismatch { .. })
        ));
    }
}

#[test]
fn custom_rules_and_offsets_stay_on_the_chain() {
    let named =
        crate::rounding::register_rounding("test_fused_ceil", std::sync::Arc::new(Rounding::Ceil))
            .unwrap();
    let device = Device::flex();
    let x = tensor(data(64, 3), [8, 8], &device);
    let spec = QuantSpec::int8_weight_per_channel().with_rounding(named);
    let p = compute_params(&x, &QuantSpec::int8_weight_per_channel()).unwrap();
    assert!(!supports(&x, &spec, &p));
    let before = fused_calls();
    let y = host(&fake_quant_with(x.clone(), &spec, &p).unwrap());
    assert_eq!(fused_calls(), before, "a custom rule runs the chain");
    let want = host(
        &fake_quant_with(
            x,
            &QuantSpec::int8_weight_per_channel().with_rounding(Rounding::Ceil),
            &p,
        )
        .unwrap(),
    );
    assert_eq!(y, want);
}

#[test]
fn large_tensors_take_the_parallel_path_and_agree() {
    // Above `PARALLEL_THRESHOLD`, per tensor, per channel and per group (short last group).
    let device = Device::flex().autodiff();
    let shape = [300, 260];
    let x = data(300 * 260, 21);
    let plain = Device::flex();
    for spec in [
        QuantSpec::int8_weight_per_tensor(),
        QuantSpec::int8_weight_per_channel().with_axis(1),
        QuantSpec::int4_weight_per_group(32)
            .with_axis(1)
            .with_zero_point(ZeroPoint::Asymmetric { learned: true }),
        QuantSpec::mxfp4().with_axis(0),
    ] {
        assert!(shape[0] * shape[1] > super::PARALLEL_THRESHOLD);
        let p = compute_params(&tensor(x.clone(), shape, &plain), &spec).unwrap();
        let f = |x, s: &QuantSpec, p: &QuantParams<2>| fake_quant_with(x, s, p).unwrap();
        let r = |x, s: &QuantSpec, p: &QuantParams<2>| fake_quant_reference(x, s, p).unwrap();
        let fused = grads(f, &device, &x, shape, &spec, &p, true);
        let chain = grads(r, &device, &x, shape, &spec, &p, true);
        assert_close("dx", &fused.0, &chain.0, dx_tolerance(&chain.0));
        let bounds = cell_bounds(&x, &spec, &p, shape);
        assert_close(
            &format!("{spec:?} ds"),
            fused.1.as_ref().unwrap(),
            chain.1.as_ref().unwrap(),
            |c| bounds[c],
        );
        let xt = tensor(x.clone(), shape, &plain);
        assert_same_values(
            "large forward",
            &host(&fake_quant_with(xt.clone(), &spec, &p).unwrap()),
            &host(&fake_quant_reference(xt, &spec, &p).unwrap()),
        );
    }
}

/// The address of a Flex tensor's f32 data (a zero-copy view).
fn data_ptr<const D: usize>(t: &Tensor<D>) -> usize {
    with_host_slice(t, |v| v.as_ptr() as usize).unwrap()
}

#[test]
fn an_input_nothing_else_holds_is_quantized_in_place_with_the_same_values() {
    let device = Device::flex();
    for (k, (name, base, shape)) in cases().into_iter().enumerate() {
        let values = case_data(name, shape, k as u64);
        for rounding in roundings() {
            let spec = base.with_rounding(rounding);
            let shared = tensor(values.clone(), shape, &device);
            let p = compute_params(&shared, &spec).unwrap();
            let chain = host(&fake_quant_reference(shared.clone(), &spec, &p).unwrap());
            // A shared input gets a new buffer (the caller still sees `shared` unchanged).
            let copied = fake_quant_with(shared.clone(), &spec, &p).unwrap();
            assert_ne!(data_ptr(&copied), data_ptr(&shared), "{name}");
            assert_eq!(
                host(&shared),
                values,
                "{name}: a shared input is left as it is"
            );
            // A unique one is overwritten.
            let unique = tensor(values.clone(), shape, &device);
            let at = data_ptr(&unique);
            let y = fake_quant_with(unique, &spec, &p).unwrap();
            // Except where quantizing may overflow to Inf/NaN: `x` is kept to name a bad input.
            let overflows = matches!(spec.format, Format::Minifloat(m) if !m.saturating);
            assert_eq!(
                data_ptr(&y) == at,
                !overflows,
                "{name} {rounding:?}: in place"
            );
            assert_same_values(&format!("{name} {rounding:?} in place"), &host(&y), &chain);
        }
    }
}

#[test]
fn in_place_errors_name_the_first_non_finite_element() {
    // Large enough for several parallel tasks; the bad values in a later task first.
    let device = Device::flex();
    let n = 3 * super::flex::TASK + 17;
    for spec in [
        QuantSpec::int8_act_per_tensor(),
        QuantSpec::fp8_e4m3_weight_per_tensor(),
        QuantSpec::int4_weight_per_group(32).with_axis(0),
    ] {
        for (first, second) in [(2 * super::flex::TASK + 5, n - 1), (7, 40_000)] {
            let mut v = data(n, 5);
            v[first] = f32::NAN;
            v[second] = f32::INFINITY;
            let p = QuantParams::<1> {
                scales: Tensor::from_data(
                    TensorData::new(
                        vec![0.01f32; spec.check_shape(&[n]).unwrap().cells()],
                        [spec.check_shape(&[n]).unwrap().cells()],
                    ),
                    &device,
                ),
                zero_points: None,
                scale_level: None,
            };
            let x = Tensor::<1>::from_data(TensorData::new(v, [n]), &device);
            let err = fake_quant_with(x, &spec, &p).unwrap_err();
            assert!(
                matches!(err, QuantError::NonFinite { what: "x", index, .. } if index == first),
                "{spec:?}: {err}"
            );
        }
    }
}
