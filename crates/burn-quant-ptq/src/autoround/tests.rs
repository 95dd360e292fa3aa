use super::*;
use crate::rtn::Rtn;
use crate::testutil::{correlated, output_error, perturbed, stats, weights};

/// Specs across every family the core has: integer widths, asymmetric, MX (int and float
/// elements), NVFP4, k-quants, FP8, ternary, and a statistic whose clipping is not tuned.
fn specs() -> Vec<QuantSpec> {
    vec![
        QuantSpec::int4_weight_per_group(32),
        QuantSpec::int4_weight_per_group(32).with_bits(3).asymmetric(),
        QuantSpec::int8_weight_per_channel().with_bits(2),
        QuantSpec::mxint8().with_bits(2),
        QuantSpec::mxfp4(),
        QuantSpec::nvfp4(),
        QuantSpec::gguf_q4_k(),
        QuantSpec::gguf_q6_k(),
        QuantSpec::fp8_e4m3_weight_per_tensor(),
        QuantSpec::ternary_weight(),
        QuantSpec::int4_weight_per_group(32).with_stat(ScaleStat::hqq()),
    ]
}

fn tensor(v: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), &Device::flex())
}

/// Oracle (1): with zero iterations AutoRound is RTN exactly — codes, scales and the
/// dequantized weight — for every spec family.
#[test]
fn zero_iterations_is_rtn_exactly() {
    let (n, m, t) = (256, 24, 64);
    let w = weights(n, m, 11);
    let x = correlated(t, n, 12);
    let s = stats(&x, Some(&x), n, true);
    let ar = AutoRound::default().with_iterations(0);
    for spec in specs() {
        let a = ar.quantize_host(&w, [n, m], &s, &spec).unwrap();
        let r = Rtn.quantize_host(&w, [n, m], &s, &spec).unwrap();
        assert_eq!(a.codes, r.codes, "{spec}");
        assert_eq!(a.params.scales, r.params.scales, "{spec}");
        assert_eq!(a.params.zero_points, r.params.zero_points, "{spec}");
        assert_eq!(a.w_hat, r.w_hat, "{spec}");
    }
}

/// Oracles (2) and (3) of the notes: after training, every offset is in [−½, ½], every
/// clipping factor in [0, 1]; the result is on the spec's grid (its dequantization,
/// re-quantized with its own params, gives the same codes) and each element sits at most one
/// grid point from RTN's on integer grids; and the layer's output error is below RTN's.
#[test]
fn trained_offsets_stay_in_range_on_the_grid_and_beat_rtn() {
    let (n, m, t) = (256, 16, 512);
    let w = weights(n, m, 21);
    let x = correlated(t, n, 22);
    let xq = perturbed(&x, n, 0.05, 23);
    let s = stats(&x, Some(&xq), n, true);
    let ar = AutoRound::default().with_iterations(60);
    for spec in [
        QuantSpec::int4_weight_per_group(32).with_bits(3),
        QuantSpec::int4_weight_per_group(32).asymmetric(),
        QuantSpec::mxfp4(),
        QuantSpec::nvfp4(),
        QuantSpec::gguf_q4_k(),
    ] {
        // The state itself: offsets and factors after the run.
        let mut learned =
            LearnedWeight::new(&tensor(w.clone(), [n, m]), &spec, true).unwrap();
        let device = Device::flex().autodiff();
        let original = learned.original(&device);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [t, n]), &device);
        let target = xt.clone().matmul(original.clone());
        for step in 0..20 {
            let leaves = learned.leaves(&device);
            let soft = learned.soft(&original, &leaves).unwrap();
            let loss = (xt.clone().matmul(soft) - target.clone()).powi_scalar(2).mean();
            let grads = loss.backward();
            learned
                .step(&leaves, &grads, 0.05 * (1.0 - step as f32 / 20.0), 0.05)
                .unwrap();
        }
        assert!(learned.offsets().iter().any(|v| *v != 0.0), "{spec}: nothing learned");
        assert!(learned.offsets().iter().all(|v| (-0.5..=0.5).contains(v)), "{spec}");
        assert!(
            learned.lo.iter().chain(&learned.hi).all(|f| (0.0..=1.0).contains(f)),
            "{spec}"
        );
        let q = learned.finish(&Device::flex(), t as u64).unwrap();
        let deq = q.tensor.dequantize();
        let again = quantize_with(deq, &learned.spec, q.tensor.params()).unwrap();
        assert_eq!(again.codes_vec(), q.tensor.codes_vec(), "{spec}: off the grid");

        // The whole algorithm against RTN on the float-target output error.
        let a = ar.quantize_host(&w, [n, m], &s, &spec).unwrap();
        let r = Rtn.quantize_host(&w, [n, m], &s, &spec).unwrap();
        let (lo, hi) = spec.format.code_range();
        assert!(a.codes.iter().all(|c| (lo..=hi).contains(c)), "{spec}");
        let e_a = output_error(&x, &xq, &w, &a.w_hat, n, m);
        let e_r = output_error(&x, &xq, &w, &r.w_hat, n, m);
        assert!(e_a < e_r, "{spec}: AutoRound {e_a} vs RTN {e_r}");
    }
}

/// The best iterate is kept: the reported best loss is the minimum of the losses seen, never
/// above the first (RTN's), and re-evaluating the restored parameters on the same (full)
/// batch reproduces it.
#[test]
fn best_iterate_is_restored() {
    let (n, m, t) = (64, 8, 256);
    let w = weights(n, m, 31);
    let x = correlated(t, n, 32);
    let device = Device::flex().autodiff();
    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [t, n]), &device);
    let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [n, m]), &device);
    let target = xt.clone().matmul(wt);
    let spec = QuantSpec::int4_weight_per_group(32).with_bits(2);
    let weights = [BlockWeight {
        name: "w".into(),
        weight: tensor(w.clone(), [n, m]),
        spec,
    }];
    let mut seen = vec![];
    let mut loss = |soft: &[Tensor<2>], batch: &[usize]| -> Result<Tensor<1>> {
        assert_eq!(batch, &[0]);
        let l = (xt.clone().matmul(soft[0].clone()) - target.clone())
            .powi_scalar(2)
            .mean();
        seen.push(read(&l, "loss").unwrap()[0] as f64);
        Ok(l)
    };
    let out = AutoRound::default()
        .with_iterations(40)
        .quantize_block(&weights, 1, &device, &mut loss)
        .unwrap();
    let r = out.report;
    let min = seen.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(r.best_loss, min);
    assert_eq!(r.initial_loss, seen[0]);
    assert!(r.best_loss < r.initial_loss, "{r:?}");
    // The returned weight reproduces the best loss (same batch: the whole set).
    let w_hat = out.weights[0].1.tensor.dequantize();
    let w_hat = Tensor::<2>::from_data(w_hat.into_data(), &device);
    let again = (xt.matmul(w_hat) - target).powi_scalar(2).mean();
    let again = read(&again, "loss").unwrap()[0] as f64;
    assert!((again - r.best_loss).abs() <= 1e-5 * r.best_loss, "{again} vs {r:?}");
}

/// The batch sampler draws distinct windows, deterministically, and all of them when there
/// are no more than a batch.
#[test]
fn batches_are_distinct_seeded_draws() {
    let ar = AutoRound::default();
    for t in 0..50 {
        let b = ar.batch_of(t, 128);
        assert_eq!(b.len(), 8);
        let mut s = b.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 8);
        assert!(b.iter().all(|&i| i < 128));
        assert_eq!(b, ar.batch_of(t, 128));
    }
    assert_ne!(ar.batch_of(0, 128), ar.batch_of(1, 128));
    assert_eq!(ar.batch_of(3, 5), vec![0, 1, 2, 3, 4]);
}

#[test]
fn bad_configs_and_inputs_are_typed_errors() {
    let (n, m) = (32, 4);
    let w = weights(n, m, 41);
    let x = correlated(64, n, 42);
    let s = stats(&x, Some(&x), n, true);
    let spec = QuantSpec::int4_weight_per_group(32);
    let bad = AutoRound {
        learning_rate: Some(-1.0),
        ..AutoRound::default()
    };
    assert!(matches!(
        bad.quantize_host(&w, [n, m], &s, &spec),
        Err(PtqError::InvalidConfig { field: "learning_rate", .. })
    ));
    let bad = AutoRound::default().with_batch_windows(0);
    assert!(matches!(
        bad.validate(),
        Err(PtqError::InvalidConfig { field: "batch_windows", .. })
    ));
    let mut nan = w.clone();
    nan[5] = f32::NAN;
    assert!(
        AutoRound::default()
            .with_iterations(2)
            .quantize_host(&nan, [n, m], &s, &spec)
            .is_err()
    );
    let empty = LayerStats::new(n, CalibInputs::FloatAndQuantized);
    assert!(matches!(
        AutoRound::default().quantize_host(&w, [n, m], &empty, &spec),
        Err(PtqError::EmptyCalibration { .. })
    ));
}
