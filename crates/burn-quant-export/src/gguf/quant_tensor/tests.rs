use super::*;
use burn::tensor::{Device, Tensor, TensorData};
use burn_quant_core::quantize;

/// Deterministic heavy-tailed test data (SplitMix64 → roughly Laplace values).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let u = ((z ^ (z >> 31)) >> 11) as f32 / (1u64 << 53) as f32;
            let v = (u.max(1e-7) * 2.0).ln() * if z & 1 == 0 { 1.0 } else { -1.0 };
            v * 0.05
        })
        .collect()
}

fn tensor(v: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape.to_vec()), &Device::flex())
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// Every preset with a ggml structure, with the type it must map to; the signed-integer ones
/// also under the other symmetric-scale conventions (ggml's own Q4_0/Q5_0 rule is the signed
/// extreme, whose negative scales the blocks' f16 `d` and the signed k-quant scale codes hold).
fn presets() -> Vec<(QuantSpec, GgmlType)> {
    use burn_quant_core::SymmetricScale::{NegQmin, SignedExtreme};
    let mse = burn_quant_core::SymmetricScale::mse();
    vec![
        (
            QuantSpec::gguf_q4_0().with_symmetric_scale(SignedExtreme),
            GgmlType::Q4_0,
        ),
        (
            QuantSpec::gguf_q4_0().with_symmetric_scale(NegQmin),
            GgmlType::Q4_0,
        ),
        (
            QuantSpec::gguf_q4_0().with_symmetric_scale(mse),
            GgmlType::Q4_0,
        ),
        (
            QuantSpec::gguf_q5_0().with_symmetric_scale(SignedExtreme),
            GgmlType::Q5_0,
        ),
        (
            QuantSpec::gguf_q8_0().with_symmetric_scale(mse),
            GgmlType::Q8_0,
        ),
        (
            QuantSpec::gguf_q3_k().with_symmetric_scale(SignedExtreme),
            GgmlType::Q3_K,
        ),
        (
            QuantSpec::gguf_q6_k().with_symmetric_scale(mse),
            GgmlType::Q6_K,
        ),
        (QuantSpec::gguf_q8_0(), GgmlType::Q8_0),
        (QuantSpec::gguf_q4_0(), GgmlType::Q4_0),
        (QuantSpec::gguf_q4_1(), GgmlType::Q4_1),
        (QuantSpec::gguf_q5_0(), GgmlType::Q5_0),
        (QuantSpec::gguf_q5_1(), GgmlType::Q5_1),
        (QuantSpec::mxfp4(), GgmlType::MXFP4),
        (QuantSpec::gguf_q2_k(), GgmlType::Q2_K),
        (QuantSpec::gguf_q3_k(), GgmlType::Q3_K),
        (QuantSpec::gguf_q4_k(), GgmlType::Q4_K),
        (QuantSpec::gguf_q5_k(), GgmlType::Q5_K),
        (QuantSpec::gguf_q6_k(), GgmlType::Q6_K),
    ]
}

/// The packed blocks, read back by the ggml decoder (itself checked bit for bit against
/// gguf-py), give the `QuantTensor`'s own dequantization: exactly for the symmetric types
/// (`d·q` either way), within f32 rounding of the subtraction order for the types with offsets
/// (ggml computes `d·q − m`, we `(q − z)·s`). A packing mistake moves values by whole steps.
#[test]
fn packed_blocks_decode_to_the_quant_tensors_dequantization() {
    let (d_in, d_out) = (512, 6);
    let v = data(d_in * d_out, 7);
    let x = tensor(v, [d_in, d_out]);
    for (spec, ty) in presets() {
        assert_eq!(ggml_type_of(&spec).unwrap(), ty, "{spec}");
        let q = quantize(x.clone(), &spec).unwrap();
        let g = encode_quant_tensor(&q).unwrap();
        assert_eq!(g.ty, ty);
        assert_eq!(g.dims, [d_in as u64, d_out as u64]);
        let decoded = codec::decode(ty, &g.data).unwrap();
        let ours = host(q.dequantize());
        let exact = !spec.zero_point.is_asymmetric();
        let s = host(q.scales.clone());
        for o in 0..d_out {
            for i in 0..d_in {
                let (a, b) = (decoded[o * d_in + i], ours[i * d_out + o]);
                if exact {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{ty:?} row {o} elem {i}: {a} vs {b}"
                    );
                } else {
                    let Granularity::PerGroup { size, .. } = spec.granularity else {
                        unreachable!()
                    };
                    let step = s[(i / size) * d_out + o];
                    assert!(
                        (a - b).abs() <= step * 1e-4,
                        "{ty:?} row {o} elem {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

/// The file does not depend on the orientation: an `[out, in]` weight grouped along axis 1
/// packs to the same bytes as the Burn `[in, out]` weight grouped along axis 0.
#[test]
fn both_orientations_give_the_same_bytes() {
    let (d_in, d_out) = (256, 3);
    let v = data(d_in * d_out, 9);
    let burn = tensor(v.clone(), [d_in, d_out]);
    let mut t = vec![0f32; v.len()];
    for i in 0..d_in {
        for o in 0..d_out {
            t[o * d_in + i] = v[i * d_out + o];
        }
    }
    let hf = tensor(t, [d_out, d_in]);
    for (spec, ty) in presets() {
        let a = encode_quant_tensor(&quantize(burn.clone(), &spec).unwrap()).unwrap();
        let hf_spec = spec.clone().with_granularity(match spec.granularity {
            Granularity::PerGroup { size, .. } => Granularity::PerGroup { axis: 1, size },
            g => g,
        });
        let b = encode_quant_tensor(&quantize(hf.clone(), &hf_spec).unwrap()).unwrap();
        assert_eq!(a, b, "{ty:?}");
    }
}

#[test]
fn structures_ggml_cannot_hold_are_errors_naming_spec_and_type() {
    let x = tensor(data(256 * 2, 3), [256, 2]);
    // f32 scales, groups of 128: no ggml type.
    let q = quantize(x.clone(), &QuantSpec::int4_weight_per_group(128)).unwrap();
    let e = encode_quant_tensor(&q).unwrap_err();
    assert!(matches!(e, GgufError::SpecNotGgml { .. }), "{e}");
    // Q4_0 structure asked to be Q4_K: both named.
    let q = quantize(x, &QuantSpec::gguf_q4_0()).unwrap();
    let e = encode_quant_tensor_as(&q, GgmlType::Q4_K).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("Q4_K") && msg.contains("Q4_0") && msg.contains(&q.spec.to_string()),
        "{msg}"
    );
}

/// A Q4_0-structured tensor whose rows are not whole blocks (48 = 32 + a short group of 16):
/// the core holds it, ggml cannot.
#[test]
fn a_short_last_group_is_an_error_not_a_partial_block() {
    let q = quantize(tensor(data(48 * 3, 5), [48, 3]), &QuantSpec::gguf_q4_0()).unwrap();
    let e = encode_quant_tensor(&q).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::BadLength {
                len: 48,
                multiple: 32,
                ..
            }
        ),
        "{e}"
    );
}
