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
