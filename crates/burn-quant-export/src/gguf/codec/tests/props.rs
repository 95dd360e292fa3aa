//! Properties every encoder must have, independent of ggml's search details: each value decodes
//! to the nearest level of its (sub-)block's final grid, the error is that of an n-bit grid,
//! parallel and serial paths agree, and the importance path validates its input.

use super::super::q45k::scale_min;
use super::super::*;
use super::values;
use crate::gguf::GgmlType;

/// Normal(0, 1) values (Box-Muller over the tests' xorshift).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let u = values(2 * n, seed, 1.0);
    (0..n)
        .map(|i| {
            let a = (u[2 * i].abs() as f64).max(1e-12);
            let b = u[2 * i + 1] as f64;
            ((-2.0 * a.ln()).sqrt() * (std::f64::consts::PI * b).cos()) as f32
        })
        .collect()
}

/// The decodable levels of element `i` (0..256) of a k-quant super-block, from its header.
fn k_levels(ty: GgmlType, b: &[u8], i: usize) -> Vec<f32> {
    let f16 = |o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    match ty {
        GgmlType::Q2_K => {
            let sc = b[i / 16];
            let (dl, ml) = (f16(80) * (sc & 15) as f32, f16(82) * (sc >> 4) as f32);
            (0..4).map(|q| dl * q as f32 - ml).collect()
        }
        GgmlType::Q3_K => {
            let j = i / 16;
            let s = &b[96..108];
            let lo = if j < 8 { s[j] & 15 } else { s[j - 8] >> 4 };
            let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
            let dl = f16(108) * ((lo | hi << 4) as i32 - 32) as f32;
            (-4..4).map(|q| dl * q as f32).collect()
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (sc, m) = scale_min(b, i / 32);
            let (d1, m1) = (f16(0) * sc as f32, f16(2) * m as f32);
            let n = if ty == GgmlType::Q4_K { 16 } else { 32 };
            (0..n).map(|q| d1 * q as f32 - m1).collect()
        }
        GgmlType::Q6_K => {
            let dl = f16(208) * b[192 + i / 16] as i8 as f32;
            (-32..32).map(|q| dl * q as f32).collect()
        }
        _ => unreachable!(),
    }
}

/// |x − y| exceeds the distance to the nearest level by more than f32 rounding of the ratio.
fn check_nearest(
    ty: GgmlType,
    what: &str,
    x: &[f32],
    y: &[f32],
    levels: impl Fn(usize) -> Vec<f32>,
) {
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        let lv = levels(i);
        assert!(
            lv.contains(&b),
            "{ty:?} {what} elem {i}: {b} is not a level"
        );
        let best = lv
            .iter()
            .map(|l| (a - l).abs())
            .fold(f32::INFINITY, f32::min);
        let span = lv.iter().fold(0f32, |m, l| m.max(l.abs()));
        let slack = 4e-6 * (a.abs() + span) + 1e-30;
        assert!(
            (a - b).abs() <= best + slack,
            "{ty:?} {what} elem {i}: x = {a}, decoded {b}, nearest level is {best} away"
        );
    }
}

#[test]
fn k_quants_decode_to_the_nearest_level_of_the_final_grid() {
    let kinds = [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];
    let imp: Vec<f32> = values(512, 77, 1.0)
        .iter()
        .map(|v| (3.0 * v).exp())
        .collect();
    for (seed, scale) in [(1u64, 1.0f32), (2, 0.01), (3, 300.0)] {
        let x: Vec<f32> = normal(512 * 8, seed).iter().map(|v| v * scale).collect();
        for ty in kinds {
            for (what, bytes) in [
                ("reference", encode(ty, &x).unwrap()),
                ("weighted", encode_weighted(ty, &x, 512, &imp).unwrap()),
            ] {
                let y = decode(ty, &bytes).unwrap();
                let ts = ty.type_size();
                check_nearest(ty, what, &x, &y, |i| {
                    k_levels(ty, &bytes[i / 256 * ts..], i % 256)
                });
            }
        }
    }
}

#[test]
fn mxfp4_and_iq4_nl_weighted_pick_the_nearest_level() {
    let x = normal(32 * 64, 5);
    let b = MXFP4::encode(&x).unwrap();
    let y = MXFP4::decode(&b).unwrap();
    check_nearest(GgmlType::MXFP4, "reference", &x, &y, |i| {
        let d = e8m0_to_f32_half(b[i / 32 * 17]);
        MXFP4_VALUES_X2.iter().map(|&k| k as f32 * d).collect()
    });
    // IQ4_NL's search picks codes with the f32 scale, the file stores it in fp16: allow the
    // fp16 rounding of d (2^-11 relative, times the largest level 127).
    let imp = vec![1.0f32; 32 * 64];
    let b = encode_weighted(GgmlType::IQ4_NL, &x, 32 * 64, &imp).unwrap();
    let y = IQ4_NL::decode(&b).unwrap();
    for (i, (&a, &v)) in x.iter().zip(&y).enumerate() {
        let d = half::f16::from_le_bytes([b[i / 32 * 18], b[i / 32 * 18 + 1]]).to_f32();
        let best = IQ4_NL_VALUES
            .iter()
            .map(|&k| (a - d * k as f32).abs())
            .fold(f32::INFINITY, f32::min);
        assert!(
            (a - v).abs() <= best + 2.0 * 127.0 * d.abs() * 2f32.powi(-11),
            "elem {i}"
        );
    }
}

/// Relative RMS error ‖x − y‖/‖x‖ of the reference encoders on N(0, 1) data, against bounds
/// 10-40 % above the values measured here; the order across bit widths must also hold.
#[test]
fn error_of_the_n_bit_grids() {
    let x = normal(256 * 256, 11);
    let rel = |ty: GgmlType| {
        let y = decode(ty, &encode(ty, &x).unwrap()).unwrap();
        let (mut e, mut s) = (0f64, 0f64);
        for (&a, &b) in x.iter().zip(&y) {
            e += ((a - b) as f64).powi(2);
            s += (a as f64).powi(2);
        }
        (e / s).sqrt()
    };
    let bounds = [
        (GgmlType::Q2_K, 0.38),
        (GgmlType::Q3_K, 0.20),
        (GgmlType::Q4_0, 0.12),
        (GgmlType::Q4_1, 0.12),
        (GgmlType::IQ4_NL, 0.11),
        (GgmlType::MXFP4, 0.16),
        (GgmlType::Q4_K, 0.10),
        (GgmlType::Q5_0, 0.06),
        (GgmlType::Q5_1, 0.06),
        (GgmlType::Q5_K, 0.05),
        (GgmlType::Q6_K, 0.025),
        (GgmlType::Q8_0, 0.006),
        (GgmlType::BF16, 0.003),
        (GgmlType::F16, 0.0004),
    ];
    let mut measured = Vec::new();
    for (ty, bound) in bounds {
        let r = rel(ty);
        eprintln!("{ty:?}: relative RMS error {r:.5}");
        assert!(r < bound, "{ty:?}: {r} ≥ {bound}");
        measured.push((ty, r));
    }
    let r = |t: GgmlType| measured.iter().find(|m| m.0 == t).unwrap().1;
    assert!(r(GgmlType::Q2_K) > r(GgmlType::Q3_K));
    assert!(r(GgmlType::Q3_K) > r(GgmlType::Q4_K));
    assert!(r(GgmlType::Q4_K) > r(GgmlType::Q5_K));
    assert!(r(GgmlType::Q5_K) > r(GgmlType::Q6_K));
    assert!(r(GgmlType::Q6_K) > r(GgmlType::Q8_0));
    assert_eq!(rel(GgmlType::F32), 0.0);
}

#[test]
fn parallel_encode_equals_serial_blocks() {
    // Several rayon tasks plus a remainder task.
    let x = normal(3 * (1 << 14) + 5 * 256, 13);
    for &ty in ENCODABLE {
        let par = encode(ty, &x).unwrap();
        let mut serial = vec![0u8; par.len()];
        let (bs, ts) = (ty.block_size(), ty.type_size());
        for (k, xb) in x.chunks(bs).enumerate() {
            let one = encode(ty, xb).unwrap();
            serial[k * ts..(k + 1) * ts].copy_from_slice(&one);
        }
        assert_eq!(par, serial, "{ty:?}");
    }
    // Weighted rows: each row alone gives the same bytes as inside the batch.
    let imp: Vec<f32> = values(768, 3, 1.0).iter().map(|v| v.abs()).collect();
    let rows = normal(768 * 40, 17);
    for &ty in IMPORTANCE_AWARE
        .iter()
        .filter(|t| 768 % t.block_size() == 0)
    {
        let all = encode_weighted(ty, &rows, 768, &imp).unwrap();
        let rb = all.len() / 40;
        for (r, row) in rows.chunks(768).enumerate() {
            assert_eq!(
                &all[r * rb..(r + 1) * rb],
                encode_weighted(ty, row, 768, &imp).unwrap().as_slice(),
                "{ty:?} row {r}"
            );
        }
    }
}

#[test]
fn importance_is_validated() {
    let x = vec![0.5f32; 512];
    let ok = vec![1.0f32; 256];
    let e = encode_weighted(GgmlType::Q4_K, &x, 256, &ok[..255]).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::ImportanceLength {
                len: 255,
                row_len: 256
            }
        ),
        "{e}"
    );
    for (bad, idx) in [(f32::NAN, 3), (-1e-9, 7), (f32::INFINITY, 0)] {
        let mut imp = ok.clone();
        imp[idx] = bad;
        match encode_weighted(GgmlType::Q4_K, &x, 256, &imp) {
            Err(GgufError::InvalidImportance { index, value }) => {
                assert_eq!(index, idx);
                assert!(value.to_bits() == bad.to_bits());
            }
            other => panic!("{bad}: {other:?}"),
        }
        // Types that ignore the importance still reject it: the input is wrong either way.
        assert!(encode_weighted(GgmlType::Q8_0, &x, 256, &imp).is_err());
    }
    // Row length not a multiple of the block, rows not dividing the input.
    assert!(matches!(
        encode_weighted(GgmlType::Q4_K, &x[..384], 384, &vec![1.0; 384]),
        Err(GgufError::BadLength { .. })
    ));
    assert!(matches!(
        encode_weighted(GgmlType::Q4_0, &x[..96], 64, &vec![1.0; 64]),
        Err(GgufError::BadLength { .. })
    ));
    assert_eq!(
        encode_weighted(GgmlType::Q4_0, &[], 0, &[]).unwrap(),
        Vec::<u8>::new()
    );
    assert!(encode_weighted(GgmlType::Q4_0, &x, 0, &[]).is_err());
    // Types without an importance path give the reference bytes.
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::MXFP4,
    ] {
        let y = normal(512, 2);
        assert_eq!(
            encode_weighted(ty, &y, 256, &ok).unwrap(),
            encode(ty, &y).unwrap(),
            "{ty:?}"
        );
    }
}

/// Importance-weighted squared error Σ_rows Σ_j imp_j·(x − y)².
pub(super) fn weighted_sq_error(x: &[f32], y: &[f32], imp: &[f32]) -> f64 {
    x.chunks(imp.len())
        .zip(y.chunks(imp.len()))
        .map(|(xr, yr)| {
            xr.iter()
                .zip(yr)
                .zip(imp)
                .map(|((&a, &b), &w)| w as f64 * ((a - b) as f64).powi(2))
                .sum::<f64>()
        })
        .sum()
}

/// On synthetic data: the importance path lowers the importance-weighted error against the
/// reference encoder when the importance is far from uniform (the point of an imatrix).
#[test]
fn importance_lowers_the_weighted_error_on_synthetic_rows() {
    let row = 1024;
    let x = normal(row * 64, 23);
    // Log-normal importance spanning ~4 decades, like real imatrix columns.
    let imp: Vec<f32> = normal(row, 29).iter().map(|v| (2.3 * v).exp()).collect();
    for &ty in IMPORTANCE_AWARE {
        let reference = decode(ty, &encode(ty, &x).unwrap()).unwrap();
        let weighted = decode(ty, &encode_weighted(ty, &x, row, &imp).unwrap()).unwrap();
        let (er, ew) = (
            weighted_sq_error(&x, &reference, &imp),
            weighted_sq_error(&x, &weighted, &imp),
        );
        eprintln!(
            "{ty:?}: weighted error reference {er:.4e}, importance path {ew:.4e} ({:.3})",
            ew / er
        );
        assert!(ew < er, "{ty:?}: {ew} ≥ {er}");
    }
}
