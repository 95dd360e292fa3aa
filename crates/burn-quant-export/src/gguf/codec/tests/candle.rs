//! candle-core (0.11.1) as a second, independent Rust implementation of ggml's codecs.
//!
//! What candle ports, and so what is compared byte for byte:
//! * every dequantizer it has (F16, BF16, Q4_0..Q8_0, Q2_K..Q6_K): bit-identical f32;
//! * the legacy reference quantizers (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and F16/BF16: identical
//!   bytes;
//! * Q3_K's reference quantizer (`make_q3_quants`) and the imatrix quantizers of Q2_K, Q4_K and
//!   Q5_K (`make_qkx3_quants` + `make_qp_quants`): the same algorithm as ggml's today, except
//!   that candle rounds ties away from zero (`f32::round`) where ggml's `nearest_int` rounds
//!   them to even, and computes `w·l²` where ggml computes `(w·l)·l`. Q3_K's reference comes out
//!   identical; the imatrix ones ~94 % of super-blocks identical on random data, the rest
//!   reaching the same error to 0.2 %. (Switching our `nearest_int` to ties-away and our products
//!   to `w·(l·l)` makes all of them 100 % identical to candle — tried once, not kept: ggml, the
//!   reference, rounds to even, and `golden.rs` proves we match it.)
//!
//! What candle does *not* port, and is therefore only checked against ggml's own output
//! (`golden.rs`): the reference quantizers of Q2_K, Q4_K and Q5_K (candle still uses the old
//! `make_qkx1_quants` of llama.cpp's k_quants.c @8183159, ggml now uses `make_qkx2_quants`), Q6_K
//! and the imatrix paths of Q3_K and Q6_K (candle's `make_qx_quants` is the old iterative one;
//! ggml's now tries 18 fixed scales), the legacy imatrix paths, IQ4_NL and MXFP4 (absent).

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};

use super::super::*;
use super::values;
use crate::gguf::GgmlType;

fn dtype(ty: GgmlType) -> GgmlDType {
    match ty {
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        other => panic!("candle has no {other:?}"),
    }
}

pub(super) fn candle_encode(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let t = Tensor::from_slice(x, (x.len(),), &Device::Cpu).expect("tensor");
    let q = QTensor::quantize(&t, dtype(ty)).expect("candle quantize");
    q.data().expect("data").into_owned()
}

pub(super) fn candle_encode_imatrix(ty: GgmlType, x: &[f32], row: usize, imp: &[f32]) -> Vec<u8> {
    let t = Tensor::from_slice(x, (x.len() / row, row), &Device::Cpu).expect("tensor");
    let q = QTensor::quantize_imatrix(&t, imp, dtype(ty)).expect("candle quantize_imatrix");
    q.data().expect("data").into_owned()
}

pub(super) fn candle_decode(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / ty.type_size() * ty.block_size();
    let s = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype(ty)).expect("storage");
    let q = QTensor::new(s, (n,)).expect("qtensor");
    q.dequantize(&Device::Cpu)
        .expect("dequantize")
        .to_vec1::<f32>()
        .expect("to_vec1")
}

const CANDLE_TYPES: [GgmlType; 12] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Offsets of the fp16 fields (d, dmin, m) inside a block, which random bytes must keep finite.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn decoders_equal_candle_bit_for_bit() {
    for (k, ty) in CANDLE_TYPES.into_iter().enumerate() {
        // Random bytes for 256 blocks; fp16 scale fields replaced by finite values of all
        // magnitudes (NaN/inf scales have no meaning to compare).
        let n = 256 * ty.type_size();
        let mut bytes: Vec<u8> = values(n, 100 + k as u64, 1.0)
            .iter()
            .map(|v| (v.to_bits() >> 7) as u8)
            .collect();
        for blk in bytes.chunks_mut(ty.type_size()) {
            for &o in f16_fields(ty) {
                if half::f16::from_le_bytes([blk[o], blk[o + 1]]).is_finite() {
                    continue;
                }
                blk[o + 1] &= 0xBB; // clear an exponent bit: finite
            }
        }
        if matches!(ty, GgmlType::F16 | GgmlType::BF16) {
            // NaN patterns decode to NaN in both, payload handling aside.
            for p in bytes.chunks_mut(2) {
                p[1] &= 0xBF;
            }
        }
        let ours = decode(ty, &bytes).unwrap();
        let theirs = candle_decode(ty, &bytes);
        assert!(
            same_bits(&ours, &theirs),
            "{ty:?}: decode differs from candle"
        );
    }
}

/// Fraction of blocks with identical bytes.
fn agreement(ty: GgmlType, a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "{ty:?}");
    let ts = ty.type_size();
    let same = a
        .chunks(ts)
        .zip(b.chunks(ts))
        .filter(|(x, y)| x == y)
        .count();
    same as f64 / (a.len() / ts) as f64
}

/// Compares with candle on `x` (rows of `row` values): identical bytes where candle ports
/// today's ggml algorithm exactly; where only the tie rule and product order differ, ≥ 90 %
/// identical blocks and the same squared error to 1 %.
pub(super) fn compare_with_candle(label: &str, x: &[f32], row: usize, imp: &[f32]) {
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ] {
        assert!(
            encode(ty, x).unwrap() == candle_encode(ty, x),
            "{label} {ty:?}: bytes differ from candle"
        );
    }
    let near = |ty: GgmlType, what: &str, ours: Vec<u8>, theirs: Vec<u8>| {
        let a = agreement(ty, &ours, &theirs);
        eprintln!(
            "{label} {ty:?} {what}: {:.4} % of blocks identical to candle",
            100.0 * a
        );
        assert!(
            a >= 0.9,
            "{label} {ty:?} {what}: only {a} of blocks identical"
        );
        // Where they differ, the two choices are equally good.
        let (y1, y2) = (decode(ty, &ours).unwrap(), candle_decode(ty, &theirs));
        let err = |y: &[f32]| {
            x.iter()
                .zip(y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
        };
        let (e1, e2) = (err(&y1), err(&y2));
        assert!(
            (e1 - e2).abs() <= 0.01 * e2,
            "{label} {ty:?} {what}: error {e1} vs candle {e2}"
        );
    };
    near(
        GgmlType::Q3_K,
        "reference",
        encode(GgmlType::Q3_K, x).unwrap(),
        candle_encode(GgmlType::Q3_K, x),
    );
    for ty in [GgmlType::Q2_K, GgmlType::Q4_K, GgmlType::Q5_K] {
        near(
            ty,
            "imatrix",
            encode_weighted(ty, x, row, imp).unwrap(),
            candle_encode_imatrix(ty, x, row, imp),
        );
    }
}

#[test]
fn encoders_equal_candle_on_random_rows() {
    let row = 1024;
    let x: Vec<f32> = values(row * 64, 41, 1.0)
        .iter()
        .zip(values(row * 64, 42, 1.0))
        .map(|(a, b)| a * b.abs().powi(3) * 4.0) // heavier tails than uniform
        .collect();
    let imp: Vec<f32> = values(row, 43, 1.0)
        .iter()
        .map(|v| (3.0 * v).exp())
        .collect();
    compare_with_candle("random", &x, row, &imp);
}
