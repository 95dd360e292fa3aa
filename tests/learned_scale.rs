//! A learned scale is a Burn `Param`: it trains with Burn's optimisers (LSQ), and the trained
//! quantizer beats its initialisation.

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::prelude::*;

/// A 3-bit weight with a learned per-tensor scale.
#[derive(Module, Debug)]
struct QuantWeight {
    weight: Param<Tensor<2>>,
    scale: Param<Tensor<2>>,
}

impl QuantWeight {
    fn effective(&self, spec: &QuantSpec) -> Tensor<2> {
        let params = QuantParams {
            scales: self.scale.val(),
            zero_points: None,
            scale_level: None,
        };
        fake_quant_with(self.weight.val(), spec, &params).expect("valid spec and finite weights")
    }
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let u = burn_quant::core::rounding::uniform(seed, i) - 0.5;
            // Heavy tails: absmax is a poor 3-bit scale here.
            if i % 50 == 0 { u * 12.0 } else { u * 2.0 }
        })
        .collect()
}

#[test]
fn lsq_scale_trains_with_burn_adam_and_reduces_the_error() {
    let device = Device::flex().autodiff();
    let spec = QuantSpec::int8_weight_per_tensor()
        .with_bits(3)
        .with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax));
    let w = values(64 * 16, 3);
    let target = Tensor::<2>::from_data(TensorData::new(w.clone(), [64, 16]), &device);
    let init = compute_params(&target, &spec).unwrap().scales;
    let mut model = QuantWeight {
        weight: Param::from_tensor(target.clone()).set_require_grad(false),
        scale: Param::from_tensor(init.clone()),
    };
    let err = |m: &QuantWeight| -> f32 {
        (m.effective(&spec) - target.clone())
            .square()
            .mean()
            .into_scalar::<f32>()
    };
    let before = err(&model);
    let mut optim = AdamConfig::new().init();
    for _ in 0..150 {
        let loss = (model.effective(&spec) - target.clone()).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model, grads);
    }
    let after = err(&model);
    let s0 = init.into_data().try_into_vec_as::<f32>().unwrap()[0];
    let s1 = model
        .scale
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()[0];
    assert!(
        s1 < s0,
        "the learned scale shrinks from absmax ({s0}) to clip outliers, got {s1}"
    );
    assert!(after < 0.7 * before, "error {before} -> {after}");
    // The weight itself was frozen: only the scale trained.
    assert_eq!(
        model
            .weight
            .val()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap(),
        w
    );
}
