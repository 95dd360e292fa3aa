//! The symmetric-scale conventions: closed forms on hand-made groups, llama.cpp's Q4_0 rule,
//! the MSE search never worse than the others, every path (host kernel, tensor path,
//! observer, dequantization) agreeing, and the configurations that make no sense refused.

use burn::tensor::{Device, Tensor, TensorData};
use proptest::prelude::*;

use crate::host;
use crate::{
    Format, Granularity, Observer, QuantSpec, ScaleQuant, ScaleRestriction, ScaleSource, ScaleStat,
    SymmetricScale, compute_params, fake_quant_custom, fake_quant_fused, quantize,
};

const ALL: [SymmetricScale; 4] = [
    SymmetricScale::Qmax,
    SymmetricScale::NegQmin,
    SymmetricScale::SignedExtreme,
    SymmetricScale::mse(),
];

fn int4_group(size: usize, conv: SymmetricScale) -> QuantSpec {
    QuantSpec::int4_weight_per_group(size).with_symmetric_scale(conv)
}

fn host_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

fn params_of(v: &[f32], spec: &QuantSpec) -> (f32, Vec<i32>) {
    let device = Device::flex();
    let x = Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
    let q = quantize(x, spec).unwrap();
    (host_vec(q.scales.clone())[0], q.codes_vec())
}

fn sse(v: &[f32], spec: &QuantSpec) -> f64 {
    let device = Device::flex();
    let x = Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
    let y = host_vec(quantize(x, spec).unwrap().dequantize());
    v.iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum()
}

/// int4 on a group whose extreme is +1.6 and whose most negative value is −0.8.
#[test]
fn closed_forms_on_an_int4_group() {
    let v = [1.6f32, -0.8, 0.4, 0.2, -0.1, 0.0, 1.0, -0.6];
    let g = v.len();
    let (s, c) = params_of(&v, &int4_group(g, SymmetricScale::Qmax));
    assert_eq!(s, host::absmax_scale(1.6, 7.0));
    assert_eq!(c[0], 7);
    assert!(
        c.iter().all(|&c| c > -8),
        "amax/qmax never reaches code -8: {c:?}"
    );

    // Brevitas's default: amax/8, the positive extreme clips to 7·s.
    let (s, c) = params_of(&v, &int4_group(g, SymmetricScale::NegQmin));
    assert_eq!(s, host::absmax_scale(1.6, 8.0));
    assert_eq!(c[0], 7, "1.6 / 0.2 = 8 clips to 7");
    assert_eq!(c[1], -4);

    // ggml's Q4_0 rule: d = max / −8 with the sign of the extreme, so +1.6 lands on −8.
    let (s, c) = params_of(&v, &int4_group(g, SymmetricScale::SignedExtreme));
    assert_eq!(s, -host::absmax_scale(1.6, 8.0));
    assert_eq!(c[0], -8);
    assert_eq!(c[1], 4);
    // Mirrored data gives the mirrored, positive scale (the extreme is now negative).
    let m: Vec<f32> = v.iter().map(|x| -x).collect();
    let (s, c) = params_of(&m, &int4_group(g, SymmetricScale::SignedExtreme));
    assert_eq!(s, host::absmax_scale(1.6, 8.0));
    assert_eq!(c[0], -8);
    // A tie between +a and −a takes the negative extreme (positive scale).
    let (s, _) = params_of(
        &[1.0, -1.0, 0.5],
        &int4_group(3, SymmetricScale::SignedExtreme),
    );
    assert!(s > 0.0);
}

/// llama.cpp's reference Q4_0/Q5_0 quantizer, written from its definition: `d = M / −2^(b−1)`
/// (M the element of largest magnitude, first one on ties), `q = min(2^b − 1,
/// trunc(x·(1/d) + 2^(b−1) + 0.5))`. Our `SignedExtreme` codes are the same except where
/// `x/d` sits within a few ulps of a rounding midpoint (ggml multiplies by 1/d and rounds
/// half up; we divide and round half to even).
#[test]
fn signed_extreme_is_ggml_legacy_rule() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    for bits in [4u8, 5] {
        let half = 1i32 << (bits - 1);
        let spec = QuantSpec::int4_weight_per_group(32)
            .with_bits(bits)
            .with_symmetric_scale(SymmetricScale::SignedExtreme);
        let (mut same, mut total) = (0usize, 0usize);
        for block in 0..400 {
            let scale = [0.01f32, 1.0, 300.0][block % 3];
            let v: Vec<f32> = (0..32).map(|_| next() * scale).collect();
            let m = v
                .iter()
                .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
            let d = m / -(half as f32);
            let id = 1.0 / d;
            let ggml: Vec<i32> = v
                .iter()
                .map(|&x| (((x * id + half as f32 + 0.5) as i32).min(2 * half - 1)) - half)
                .collect();
            let (s, ours) = params_of(&v, &spec);
            assert!((s - d).abs() <= d.abs() * 1e-6, "scale {s} vs ggml d {d}");
            for ((&a, &b), &x) in ours.iter().zip(&ggml).zip(&v) {
                total += 1;
                if a == b {
                    same += 1;
                } else {
                    let t = x / d;
                    assert!(
                        (a - b).abs() == 1 && (t - t.floor() - 0.5).abs() < 1e-4,
                        "x {x} d {d}: ours {a}, ggml {b}"
                    );
                }
            }
        }
        assert!(same * 1000 >= total * 999, "{same} of {total} codes equal");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Signed extreme: the extreme is on code qmin and only values of the other sign beyond
    /// qmax·|s| clip; neg-qmin: only positive values above qmax·s clip; MSE is never worse
    /// than any other convention, per group.
    #[test]
    fn prop_conventions_keep_their_promises(
        v in proptest::collection::vec(-50.0f32..50.0, 1..96),
        bits in 2u8..=8,
        group in 1usize..40,
    ) {
        let spec = |c| QuantSpec::int4_weight_per_group(group).with_bits(bits).with_symmetric_scale(c);
        let device = Device::flex();
        let x = Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &device);
        let qmin = -(1i32 << (bits - 1));
        let qmax = (-qmin - 1) as f32;
        for (gi, chunk) in v.chunks(group).enumerate() {
            let amax = chunk.iter().fold(0f32, |m, x| m.max(x.abs()));
            let pos = chunk.contains(&amax) && !chunk.iter().any(|&x| x == -amax);
            let q = quantize(x.clone(), &spec(SymmetricScale::SignedExtreme)).unwrap();
            let s = host_vec(q.scales.clone())[gi];
            let y = host_vec(q.dequantize());
            let codes = q.codes_vec();
            for (k, &a) in chunk.iter().enumerate() {
                let i = gi * group + k;
                if a / s <= qmax {
                    prop_assert!((a - y[i]).abs() <= s.abs() / 2.0 * (1.0 + 1e-5) + 1e-30, "{a} -> {}, s {s}", y[i]);
                } else {
                    prop_assert_eq!(y[i], qmax * s);
                }
                if a.abs() == amax && amax > 0.0 && (a > 0.0) == pos {
                    prop_assert_eq!(codes[i], qmin);
                }
            }
            prop_assert!(amax == 0.0 || (s < 0.0) == pos, "sign of {s} vs extreme");
            let q = quantize(x.clone(), &spec(SymmetricScale::NegQmin)).unwrap();
            let s = host_vec(q.scales.clone())[gi];
            let y = host_vec(q.dequantize());
            for (k, &a) in chunk.iter().enumerate() {
                let i = gi * group + k;
                if a <= qmax * s {
                    prop_assert!((a - y[i]).abs() <= s / 2.0 * (1.0 + 1e-5) + 1e-30);
                } else {
                    prop_assert_eq!(y[i], qmax * s);
                }
            }
        }
        let err = |c| {
            let y = host_vec(quantize(x.clone(), &spec(c)).unwrap().dequantize());
            v.chunks(group)
                .zip(y.chunks(group))
                .map(|(a, b)| a.iter().zip(b).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>())
                .collect::<Vec<f64>>()
        };
        let mse = err(SymmetricScale::mse());
        for c in [SymmetricScale::Qmax, SymmetricScale::NegQmin, SymmetricScale::SignedExtreme] {
            for (g, (m, o)) in mse.iter().zip(err(c)).enumerate() {
                prop_assert!(*m <= o * (1.0 + 1e-9) + 1e-20, "group {g}: mse {m} > {} {o}", c.name());
            }
        }
    }
}

/// Every path agrees bit for bit for every convention: `dequantize` of the core's codes, the
/// fused host kernel and the differentiable tensor path (as numbers), on a 2-D weight with a short last
/// group, per channel, with f16 and power-of-two scales, and through a static observer.
#[test]
fn every_path_agrees_for_every_convention() {
    let device = Device::flex();
    let (n, m) = (200, 12);
    let v: Vec<f32> = (0..n * m)
        .map(|i| (((i * 7919) % 1013) as f32 / 1013.0 - 0.45) * (1.0 + (i % 13) as f32))
        .collect();
    let x = Tensor::<2>::from_data(TensorData::new(v.clone(), [n, m]), &device);
    for conv in ALL {
        let specs = [
            int4_group(64, conv),
            int4_group(32, conv).with_bits(3),
            QuantSpec::new(Format::int(8), Granularity::PerChannel { axis: 1 })
                .with_symmetric_scale(conv),
            QuantSpec::gguf_q4_0().with_symmetric_scale(conv),
            int4_group(32, conv).with_pow2_scale(crate::Pow2Mode::Round),
            int4_group(32, conv).with_stat(ScaleStat::Percentile { q: 99.0 }),
        ];
        for spec in specs {
            let q = quantize(x.clone(), &spec).unwrap();
            let deq = host_vec(q.dequantize());
            let p = compute_params(&x, &spec).unwrap();
            let fused = host_vec(fake_quant_fused(x.clone(), &spec, &p).unwrap());
            let chain = host_vec(fake_quant_custom(x.clone(), &spec, &p, &spec.rounding).unwrap());
            for (i, ((a, b), c)) in deq.iter().zip(&fused).zip(&chain).enumerate() {
                // (Equal as numbers: a code-0 element is +0 dequantized, ±0 fake-quantized.)
                assert_eq!(a, b, "{spec}: fused at {i}");
                assert_eq!(a, c, "{spec}: tensor path at {i}");
            }
            let mut obs = Observer::new(&spec).unwrap();
            obs.observe(&x).unwrap();
            assert_eq!(obs.host_params().unwrap(), p.to_host(), "{spec}: observer");
        }
    }
}

/// On normal data each convention changes the error the way it should: neg-qmin and
/// signed-extreme use one more level than qmax, and MSE is the least of all.
#[test]
fn conventions_order_the_error_on_gaussian_like_weights() {
    let mut state = 7u64;
    let v: Vec<f32> = (0..128 * 64)
        .map(|_| {
            // Sum of 4 uniforms: bell-shaped.
            (0..4)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .sum::<f32>()
        })
        .collect();
    let e = |c| sse(&v, &int4_group(128, c));
    let (qmax, neg, signed, mse) = (
        e(SymmetricScale::Qmax),
        e(SymmetricScale::NegQmin),
        e(SymmetricScale::SignedExtreme),
        e(SymmetricScale::mse()),
    );
    assert!(neg < qmax && signed < qmax, "{qmax} {neg} {signed}");
    assert!(mse <= neg.min(signed), "{mse}");
}

#[test]
fn conventions_serialise_and_parse_by_name() {
    for conv in ALL {
        let spec = int4_group(32, conv);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<QuantSpec>(&json).unwrap(), spec);
        assert_eq!(conv.name().parse::<SymmetricScale>().unwrap(), conv);
    }
    // Older recipes without the field keep today's rule, and it is not written out.
    let json = serde_json::to_string(&QuantSpec::int4_weight_per_group(32)).unwrap();
    assert!(!json.contains("\"symmetric\":"), "{json}");
    assert_eq!(
        serde_json::from_str::<QuantSpec>(&json)
            .unwrap()
            .scale
            .symmetric,
        SymmetricScale::Qmax
    );
    assert_eq!(
        "brevitas".parse::<SymmetricScale>().unwrap(),
        SymmetricScale::NegQmin
    );
    assert_eq!(
        "GGML".parse::<SymmetricScale>().unwrap(),
        SymmetricScale::SignedExtreme
    );
    let e = "nearest".parse::<SymmetricScale>().unwrap_err().to_string();
    assert!(
        e.contains("scale.symmetric") && e.contains("neg-qmin"),
        "{e}"
    );
    assert_eq!(
        int4_group(32, SymmetricScale::NegQmin).to_string(),
        "int4 sym per-group(axis 0, 32) absmax scale=neg-qmin nearest_even"
    );
}

#[test]
fn conventions_that_cannot_apply_are_errors_naming_the_field() {
    let msg = |s: QuantSpec| s.validate().unwrap_err().to_string();
    let neg = SymmetricScale::NegQmin;
    // Asymmetric, narrow, unsigned and minifloat grids have no extra negative level.
    for spec in [
        QuantSpec::int4_weight_per_group(32).asymmetric(),
        QuantSpec::int8_weight_per_channel(),
        QuantSpec::uint8_act_per_tensor(),
        QuantSpec::fp8_e4m3_weight_per_tensor(),
    ] {
        let e = msg(spec.with_symmetric_scale(neg));
        assert!(e.contains("scale.symmetric"), "{spec}: {e}");
    }
    assert!(msg(QuantSpec::mxfp4().with_symmetric_scale(SymmetricScale::mse())).contains("E8M0"));
    assert!(msg(int4_group(32, SymmetricScale::mse()).with_stat(ScaleStat::mse())).contains("MSE"));
    assert!(
        msg(int4_group(32, neg).with_scale_source(ScaleSource::Const(0.5))).contains("constant")
    );
    assert!(msg(int4_group(32, neg).with_stat(ScaleStat::AbsMean)).contains("absmean"));
    assert!(
        msg(int4_group(
            32,
            SymmetricScale::Mse {
                grid: 0,
                min_ratio: 0.2
            }
        ))
        .contains("scale.symmetric.grid")
    );
    // MSE applies to any symmetric grid, minifloats included; narrow int8 per channel too.
    QuantSpec::fp8_e4m3_weight_per_tensor()
        .with_symmetric_scale(SymmetricScale::mse())
        .validate()
        .unwrap();
    QuantSpec::int8_weight_per_channel()
        .with_symmetric_scale(SymmetricScale::mse())
        .validate()
        .unwrap();
    // A signed k-quant holds negative sub-block scales in its signed scale codes.
    let q3k = QuantSpec::gguf_q3_k().with_symmetric_scale(SymmetricScale::SignedExtreme);
    q3k.validate().unwrap();
    assert!(matches!(
        q3k.scale.restrict,
        ScaleRestriction::Quantized(ScaleQuant::SubBlock { signed: true, .. })
    ));
}
