//! Device portability: the tensor paths give the same answers on every Burn device.
//!
//! The device comes from `BURNQ_TEST_DEVICE` = `flex` (default), `ndarray` (feature `ndarray`)
//! or `wgpu` (feature `wgpu`; on a CPU-only machine Mesa's software Vulkan runs it). The host
//! kernels are the reference. `scripts/test-wgpu.sh` runs this file on wgpu.

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant_core::*;

fn device() -> Device {
    match std::env::var("BURNQ_TEST_DEVICE").as_deref() {
        Err(_) | Ok("flex") => Device::flex(),
        // Deprecated in Burn 0.22 but still a supported device: kept for portability checks.
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        Ok("ndarray") => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        Ok("wgpu") => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        Ok(other) => panic!(
            "BURNQ_TEST_DEVICE={other} is not enabled in this build (see the crate features)"
        ),
    }
}

fn data(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919) % 1000) as f32 / 500.0 - 1.0) * if i % 97 == 0 { 6.0 } else { 1.0 })
        .collect()
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 data")
}

fn specs() -> Vec<QuantSpec> {
    vec![
        QuantSpec::int8_weight_per_channel(),
        QuantSpec::int4_weight_per_group(32).asymmetric(),
        QuantSpec::fp8_e4m3_weight_per_tensor(),
        QuantSpec::mxfp4(),
        QuantSpec::nvfp4(),
        QuantSpec::ternary_weight(),
    ]
}

#[test]
fn quantize_dequantize_and_fake_quant_match_the_host_reference() {
    let dev = device();
    let shape = [64usize, 32];
    let v = data(64 * 32);
    for spec in specs() {
        let x = Tensor::<2>::from_data(TensorData::new(v.clone(), shape), &dev);
        let q = quantize(x.clone(), &spec).unwrap();
        let layout = spec.granularity.layout(&shape).unwrap();
        let hp = burn_quant_core::host::compute_params(&v, &shape, &spec).unwrap();
        let want_codes = burn_quant_core::host::quantize_codes(&v, &layout, &spec, &hp);
        assert_eq!(q.codes_vec(), want_codes, "{spec:?} codes");
        let mut want = v.clone();
        burn_quant_core::host::fake_quant_in_place(&mut want, &layout, &spec, &hp);
        let deq = host(q.dequantize());
        let tensor_path = host(fake_quant_custom(x, &spec, &q.params(), &spec.rounding).unwrap());
        for i in 0..want.len() {
            assert!(
                (deq[i] - want[i]).abs() <= 1e-6 * want[i].abs().max(1e-3),
                "{spec:?} dequantize at {i}"
            );
            assert!(
                (tensor_path[i] - want[i]).abs() <= 1e-6 * want[i].abs().max(1e-3),
                "{spec:?} fake-quant at {i}"
            );
        }
    }
}

#[test]
fn straight_through_and_lsq_gradients_on_the_device() {
    let dev = device().autodiff();
    let x = Tensor::<1>::from_floats([0.26, -0.9, 3.0, 0.04], &dev).require_grad();
    let s = Tensor::<1>::from_floats([0.1], &dev).require_grad();
    let spec = QuantSpec::int8_weight_per_tensor()
        .with_bits(4)
        .with_narrow(false);
    let params = QuantParams::<1> {
        scales: s.clone(),
        zero_points: None,
        scale_level: None,
    };
    let y = fake_quant_with(x.clone(), &spec, &params).unwrap();
    let grads = y.sum().backward();
    let gx = x
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let gs = s
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    // −0.9/0.1 = −9 and 3.0/0.1 = 30 lie outside [−8, 7]: clipped, no gradient.
    assert_eq!(gx, vec![1.0, 0.0, 0.0, 1.0]);
    // LSQ: (3 − 2.6) + (−8) + 7 + (0 − 0.4) = −1.0
    assert!((gs[0] + 1.0).abs() < 1e-5, "{gs:?}");
}

// ----- the fused fake-quant op (Flex kernels, CubeCL kernels on wgpu) vs the chain --------

/// Deterministic uniform in [0, 1).
fn unif(seed: u64, i: usize) -> f32 {
    burn_quant_core::rounding::uniform(seed, i as u64)
}

/// A `[64, 48]` case for `spec`: scales and zero-points chosen per cell, `x` built from grid
/// values whose fractional parts keep 0.1 away from every rounding tie and clip boundary (so
/// that a last-bit difference in `x / s` between devices cannot flip a rounding), some of
/// them outside the grid's range.
fn fused_case(spec: &QuantSpec) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>, [usize; 2]) {
    let shape = [64usize, 48];
    let layout = spec.granularity.layout(&shape).unwrap();
    let cells = burn_quant_core::fused::CellLayout::of(&layout);
    let s: Vec<f32> = (0..cells.cells())
        .map(|c| 0.05 + 0.01 * (c % 7) as f32)
        .collect();
    let z: Option<Vec<f32>> = spec
        .zero_point
        .is_asymmetric()
        .then(|| (0..cells.cells()).map(|c| (3 + c % 5) as f32).collect());
    let (lo, hi) = (spec.format.min_value(), spec.format.max_value());
    let x = (0..cells.numel())
        .map(|i| {
            let c = cells.cell(i);
            let zc = z.as_ref().map_or(0.0, |z| z[c]);
            let u = unif(7, i);
            let f = 0.1 + 0.3 * unif(11, i) + if unif(13, i) < 0.5 { 0.0 } else { 0.5 };
            let v = match spec.format {
                Format::Minifloat(m) => {
                    // Log-uniform magnitudes over the format's binades, a few beyond max
                    // (saturating formats only).
                    let top = if m.saturating { 1.3 } else { 0.95 };
                    let mag = hi * top * 2f32.powf(-10.0 * unif(17, i));
                    if u < 0.5 { -mag } else { mag }
                }
                Format::Binary => (4.0 * u - 2.0).clamp(-1.9, 1.9) + 0.01,
                _ => (lo - 3.0 + ((hi - lo + 6.0) * u).floor()) + f,
            };
            (v - zc) * s[c]
        })
        .collect();
    (x, s, z, shape)
}

fn fused_specs() -> Vec<QuantSpec> {
    let e5m2_overflowing = Minifloat {
        saturating: false,
        ..Minifloat::e5m2()
    };
    vec![
        QuantSpec::int8_weight_per_channel(),
        QuantSpec::int8_weight_per_channel()
            .with_axis(0)
            .with_rounding(Rounding::HalfUp),
        // Ragged: 64 rows in groups of 24 (the last has 16), with a zero-point.
        QuantSpec::int4_weight_per_group(24).asymmetric(),
        QuantSpec::int8_weight_per_tensor().with_rounding(Rounding::Floor),
        QuantSpec::ternary_weight(),
        QuantSpec::binary_weight(),
        QuantSpec::fp8_e4m3_weight_per_tensor(),
        QuantSpec::mxfp4(),
        QuantSpec::fp8_e4m3_weight_per_tensor().with_format(Format::Minifloat(e5m2_overflowing)),
    ]
}

/// Kernel calls of the fused op on the test device's backend.
fn kernel_calls() -> (u64, u64) {
    #[cfg(feature = "wgpu")]
    if matches!(std::env::var("BURNQ_TEST_DEVICE").as_deref(), Ok("wgpu")) {
        let c = burn_quant_core::fused::cube_calls();
        return (c.forward, c.backward);
    }
    let c = burn_quant_core::fused::fused_calls();
    (c.forward, c.backward)
}

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

/// `|a − b| ≤ tol[i]` element-wise (non-finite values must match: equal, or both NaN).
fn assert_within(what: &str, a: &[f32], b: &[f32], tol: impl Fn(usize) -> f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let ok = if y.is_finite() {
            (x - y).abs() <= tol(i)
        } else {
            x == y || (x.is_nan() && y.is_nan())
        };
        assert!(ok, "{what} at {i}: {x} vs {y} (tolerance {})", tol(i));
    }
}

/// Per scale cell, a bound on the f32 rounding error of a gradient sum over the cell (the
/// chain sums `g·q` and `g·x/s` separately, the kernels `g·(q − v)` per element, in other
/// orders): `16·ε·Σ|g|·(2|x/s| + |z| + 1 + max |grid|) + 1e-6`.
fn cell_bounds(spec: &QuantSpec, x: &[f32], s: &[f32], z: Option<&[f32]>, g: &[f32]) -> Vec<f32> {
    let shape = [64usize, 48];
    let layout = spec.granularity.layout(&shape).unwrap();
    let cells = burn_quant_core::fused::CellLayout::of(&layout);
    let grid = spec
        .format
        .max_value()
        .abs()
        .max(spec.format.min_value().abs());
    let mut acc = vec![0f64; s.len()];
    for i in 0..x.len() {
        let c = cells.cell(i);
        let zc = z.map_or(0.0, |z| z[c].abs());
        let v = if s[c] == 0.0 {
            0.0
        } else {
            (x[i] / s[c]).abs()
        };
        acc[c] += (g[i].abs() * (2.0 * v + zc + 1.0 + grid)) as f64;
    }
    acc.iter()
        .map(|a| (16.0 * f32::EPSILON as f64 * a) as f32 + 1e-6)
        .collect()
}

/// Values: the fused op's forward equals the reference chain and the host reference within
/// 1e-6 relative, element by element (the same grid point) on the test device, for integer (symmetric, with a
/// zero-point, ragged groups), ternary, binary and minifloat (saturating and overflowing)
/// grids; the kernels ran.
#[test]
fn fused_forward_matches_the_chain_and_the_host_reference() {
    let dev = device();
    for spec in fused_specs() {
        let (xv, sv, zv, shape) = fused_case(&spec);
        let layout = spec.granularity.layout(&shape).unwrap();
        let x = Tensor::<2>::from_data(TensorData::new(xv.clone(), shape), &dev);
        let params = QuantParams::<2> {
            scales: Tensor::from_data(
                TensorData::new(sv.clone(), layout.scale_shape.clone()),
                &dev,
            ),
            zero_points: zv
                .clone()
                .map(|z| Tensor::from_data(TensorData::new(z, layout.scale_shape.clone()), &dev)),
            scale_level: None,
        };
        assert!(
            burn_quant_core::fused::supports(&x, &spec, &params),
            "{spec:?}: the fused op must run this spec on this device"
        );
        let before = kernel_calls();
        let fused =
            vec_of(burn_quant_core::fused::fake_quant(x.clone(), &spec, &params, 1.0).unwrap());
        assert_eq!(
            kernel_calls().0,
            before.0 + 1,
            "{spec:?}: the fused kernel did not run"
        );
        let chain = vec_of(fake_quant_reference(x, &spec, &params).unwrap());
        let mut host_ref = xv.clone();
        burn_quant_core::host::fake_quant_in_place(
            &mut host_ref,
            &layout,
            &spec,
            &params.to_host(),
        );
        // The same grid point: equal up to the last bit of the final product.
        assert_within(&format!("{spec:?} fused vs chain"), &fused, &chain, |i| {
            1e-6 * chain[i].abs()
        });
        assert_within(&format!("{spec:?} fused vs host"), &fused, &host_ref, |i| {
            1e-6 * host_ref[i].abs()
        });
    }
}

/// Gradients on the autodiff device (with and without gradient checkpointing): `x` gets the chain's gradient within 2 ε relative; the
/// learned scales and zero-points (sums over each scale cell, reduced in another order) within
/// the per-cell rounding bound of [`cell_bounds`]; the backward kernel ran.
#[test]
fn fused_gradients_match_the_chain_on_the_autodiff_device() {
    let devices = [
        device().autodiff(),
        device().autodiff().gradient_checkpointing(),
    ];
    for (dev, spec) in devices
        .iter()
        .flat_map(|d| fused_specs().into_iter().map(move |s| (d.clone(), s)))
    {
        let (xv, sv, zv, shape) = fused_case(&spec);
        let layout = spec.granularity.layout(&shape).unwrap();
        let wv: Vec<f32> = (0..xv.len()).map(|i| 2.0 * unif(23, i) - 1.0).collect();
        let w = Tensor::<2>::from_data(TensorData::new(wv.clone(), shape), &dev);
        let run = |fused: bool| {
            let x = Tensor::<2>::from_data(TensorData::new(xv.clone(), shape), &dev).require_grad();
            let s = Tensor::<2>::from_data(
                TensorData::new(sv.clone(), layout.scale_shape.clone()),
                &dev,
            )
            .require_grad();
            let z = zv.clone().map(|z| {
                Tensor::<2>::from_data(TensorData::new(z, layout.scale_shape.clone()), &dev)
                    .require_grad()
            });
            let params = QuantParams::<2> {
                scales: s.clone(),
                zero_points: z.clone(),
                scale_level: None,
            };
            let y = if fused {
                burn_quant_core::fused::fake_quant(x.clone(), &spec, &params, 1.0).unwrap()
            } else {
                fake_quant_reference(x.clone(), &spec, &params).unwrap()
            };
            let grads = (y * w.clone()).sum().backward();
            let gx = vec_of(x.grad(&grads).unwrap());
            let gs = vec_of(s.grad(&grads).unwrap());
            let gz = z.map(|z| vec_of(z.grad(&grads).unwrap()));
            (gx, gs, gz)
        };
        let before = kernel_calls();
        let (fx, fs, fz) = run(true);
        let after = kernel_calls();
        assert_eq!(
            after.0,
            before.0 + 1,
            "{spec:?}: the fused forward did not run"
        );
        assert_eq!(
            after.1,
            before.1 + 1,
            "{spec:?}: the fused backward did not run"
        );
        let (cx, cs, cz) = run(false);
        assert_within(&format!("{spec:?} dx"), &fx, &cx, |i| {
            2.0 * f32::EPSILON * cx[i].abs()
        });
        let bounds = cell_bounds(&spec, &xv, &sv, zv.as_deref(), &wv);
        assert_within(&format!("{spec:?} d scale"), &fs, &cs, |c| bounds[c]);
        if let (Some(fz), Some(cz)) = (fz, cz) {
            assert_within(&format!("{spec:?} d zero-point"), &fz, &cz, |c| bounds[c]);
        }
    }
}

/// The fused op's status on the device: a NaN in `x` and a negative scale are typed errors,
/// as in the chain.
#[test]
fn fused_op_reports_invalid_inputs_on_the_device() {
    let dev = device();
    let spec = QuantSpec::int8_weight_per_tensor();
    let s = Tensor::<1>::from_floats([0.1], &dev);
    let params = QuantParams::<1> {
        scales: s,
        zero_points: None,
        scale_level: None,
    };
    let x = Tensor::<1>::from_floats([0.3, f32::NAN, -0.2], &dev);
    let err = burn_quant_core::fused::fake_quant(x, &spec, &params, 1.0).unwrap_err();
    assert!(matches!(err, QuantError::NonFinite { .. }), "{err:?}");
    let bad = QuantParams::<1> {
        scales: Tensor::<1>::from_floats([-0.1], &dev),
        zero_points: None,
        scale_level: None,
    };
    let x = Tensor::<1>::from_floats([0.3, 0.1, -0.2], &dev);
    let err = burn_quant_core::fused::fake_quant(x, &spec, &bad, 1.0).unwrap_err();
    assert!(matches!(err, QuantError::InvalidScale { .. }), "{err:?}");
}

/// Routing through `fake_quant_with`: nearest-even runs the fused kernel on every device;
/// stochastic rounding (a 64-bit counter hash) has no CubeCL kernel, so on wgpu it takes the
/// reference chain (no kernel call) while Flex runs its kernel.
#[test]
fn fake_quant_with_routes_to_the_kernel_or_the_chain() {
    let dev = device();
    let on_wgpu = matches!(std::env::var("BURNQ_TEST_DEVICE").as_deref(), Ok("wgpu"));
    let spec = QuantSpec::int8_weight_per_tensor();
    let stochastic = spec.with_rounding(Rounding::Stochastic { seed: 5 });
    let x = Tensor::<1>::from_floats([0.33, -0.71, 0.05, 0.92], &dev);
    let params = QuantParams::<1> {
        scales: Tensor::<1>::from_floats([0.01], &dev),
        zero_points: None,
        scale_level: None,
    };
    assert!(burn_quant_core::fused::supports(&x, &spec, &params));
    assert_eq!(
        burn_quant_core::fused::supports(&x, &stochastic, &params),
        !on_wgpu
    );
    let before = kernel_calls().0;
    fake_quant_with(x.clone(), &spec, &params).unwrap();
    assert_eq!(kernel_calls().0, before + 1, "nearest-even: the kernel");
    let y = vec_of(fake_quant_with(x, &stochastic, &params).unwrap());
    assert_eq!(
        kernel_calls().0,
        before + 1 + u64::from(!on_wgpu),
        "stochastic: the chain on wgpu, the kernel on Flex"
    );
    // Stochastic rounding lands on one of the two neighbouring grid points.
    for (y, x) in y.iter().zip([0.33f32, -0.71, 0.05, 0.92]) {
        assert!((y - x).abs() < 0.01 + 1e-6, "{y} vs {x}");
    }
}

/// Non-saturating minifloats overflow like the chain and the host reference: ±Inf for E5M2
/// (IEEE specials), NaN for E4M3 (no infinities).
#[test]
fn fused_minifloat_overflow_matches_the_chain() {
    let dev = device();
    let formats = [
        Minifloat {
            saturating: false,
            ..Minifloat::e5m2()
        },
        Minifloat {
            saturating: false,
            ..Minifloat::e4m3()
        },
    ];
    for m in formats {
        let spec = QuantSpec::fp8_e4m3_weight_per_tensor().with_format(Format::Minifloat(m));
        let xv = vec![1.0e5f32, -1.0e5, 3.3, -0.0123, 70_000.0, 500.0];
        let x = Tensor::<1>::from_floats(xv.as_slice(), &dev);
        let params = QuantParams::<1> {
            scales: Tensor::<1>::from_floats([1.0], &dev),
            zero_points: None,
            scale_level: None,
        };
        let before = kernel_calls().0;
        let fused =
            vec_of(burn_quant_core::fused::fake_quant(x.clone(), &spec, &params, 1.0).unwrap());
        assert_eq!(
            kernel_calls().0,
            before + 1,
            "{m:?}: the kernel did not run"
        );
        let chain = vec_of(fake_quant_reference(x, &spec, &params).unwrap());
        let layout = spec.granularity.layout(&[xv.len()]).unwrap();
        let mut host_ref = xv.clone();
        burn_quant_core::host::fake_quant_in_place(
            &mut host_ref,
            &layout,
            &spec,
            &params.to_host(),
        );
        assert!(
            fused.iter().any(|v| !v.is_finite()),
            "{m:?}: {fused:?} must overflow"
        );
        assert_within(&format!("{m:?} fused vs chain"), &fused, &chain, |i| {
            1e-6 * chain[i].abs()
        });
        assert_within(&format!("{m:?} fused vs host"), &fused, &host_ref, |i| {
            1e-6 * host_ref[i].abs()
        });
    }
}
