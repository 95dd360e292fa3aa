#![allow(clippy::needless_range_loop)]

use super::*;

/// Deterministic pseudo-random values in roughly [-scale, scale] (xorshift; no dependency).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

#[test]
fn f32_f16_hand_made() {
    let mut b = Vec::new();
    for v in [1.5f32, -2.0, 0.0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(decode(GgmlType::F32, &b).unwrap(), vec![1.5, -2.0, 0.0]);
    // 0x3C00 = 1.0, 0xC000 = -2.0, 0x3555 ≈ 0.333 in fp16
    let b = [0x00, 0x3C, 0x00, 0xC0, 0x55, 0x35];
    let d = decode(GgmlType::F16, &b).unwrap();
    assert_eq!(&d[..2], &[1.0, -2.0]);
    assert!((d[2] - 0.333_25).abs() < 1e-4);
    assert_eq!(
        encode(GgmlType::F16, &[1.0, -2.0]).unwrap(),
        vec![0x00, 0x3C, 0x00, 0xC0]
    );
    assert_eq!(
        encode(GgmlType::F32, &[1.5]).unwrap(),
        1.5f32.to_le_bytes().to_vec()
    );
}

#[test]
fn q8_0_hand_made_block() {
    let mut b = vec![0u8; 34];
    b[..2].copy_from_slice(&f16_bytes(0.25));
    for j in 0..32 {
        b[2 + j] = (j as i8 - 16) as u8;
    }
    b[2] = (-128i8) as u8;
    b[33] = 127;
    let d = Q8_0::decode(&b).unwrap();
    assert_eq!(d[0], -32.0);
    assert_eq!(d[31], 127.0 * 0.25);
    for j in 1..31 {
        assert_eq!(d[j], (j as f32 - 16.0) * 0.25, "element {j}");
    }
}

#[test]
fn q4_0_hand_made_block_uses_nibble_pairing() {
    let mut b = vec![0u8; 18];
    b[..2].copy_from_slice(&f16_bytes(0.5));
    for j in 0..16 {
        b[2 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let d = Q4_0::decode(&b).unwrap();
    for j in 0..16 {
        assert_eq!(
            d[j],
            (j as f32 - 8.0) * 0.5,
            "low nibble of byte {j} is element {j}"
        );
        assert_eq!(
            d[j + 16],
            (15.0 - j as f32 - 8.0) * 0.5,
            "high nibble is element {}",
            j + 16
        );
    }
}

#[test]
fn q4_1_hand_made_block() {
    let mut b = vec![0u8; 20];
    b[..2].copy_from_slice(&f16_bytes(2.0));
    b[2..4].copy_from_slice(&f16_bytes(-1.0));
    for j in 0..16 {
        b[4 + j] = (j as u8) | (3 << 4);
    }
    let d = Q4_1::decode(&b).unwrap();
    for j in 0..16 {
        assert_eq!(d[j], j as f32 * 2.0 - 1.0);
        assert_eq!(d[j + 16], 3.0 * 2.0 - 1.0);
    }
}

#[test]
fn q5_0_hand_made_block_high_bits_from_qh() {
    let mut b = vec![0u8; 22];
    b[..2].copy_from_slice(&f16_bytes(1.0));
    // 5th bit for elements 0, 5, 16 and 31.
    let qh: u32 = (1 << 0) | (1 << 5) | (1 << 16) | (1 << 31);
    b[2..6].copy_from_slice(&qh.to_le_bytes());
    for j in 0..16 {
        b[6 + j] = 0x0F & (j as u8) | (((j as u8) ^ 0x0F) << 4);
    }
    let d = Q5_0::decode(&b).unwrap();
    for e in 0..32 {
        let nib = if e < 16 {
            e as u32
        } else {
            (e as u32 - 16) ^ 0x0F
        };
        let q = nib | (((qh >> e) & 1) << 4);
        assert_eq!(d[e], q as f32 - 16.0, "element {e}");
    }
    assert_eq!(d[0], 0.0, "nibble 0 with 5th bit → 16 → 0");
    assert_eq!(d[16], 15.0, "high nibble 15 of byte 0 with bit 16 → 31");
    assert_eq!(d[31], 0.0, "high nibble 0 of byte 15 with bit 31 → 16");
}

#[test]
fn q5_1_hand_made_block() {
    let mut b = vec![0u8; 24];
    b[..2].copy_from_slice(&f16_bytes(0.5));
    b[2..4].copy_from_slice(&f16_bytes(-4.0));
    b[4..8].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
    for j in 0..16 {
        b[8 + j] = 0xF0 | 0x01;
    }
    let d = Q5_1::decode(&b).unwrap();
    for j in 0..16 {
        assert_eq!(d[j], 1.0 * 0.5 - 4.0);
        assert_eq!(d[j + 16], 31.0 * 0.5 - 4.0);
    }
}

#[test]
fn q4_0_reference_sign_trick_and_clamp() {
    // Largest magnitude is negative: d = -4 / -8 = 0.5; -4 lands on q = 0, +4 clamps to 15.
    let mut x = vec![0.0f32; 32];
    x[0] = -4.0;
    x[16] = 4.0;
    x[1] = 1.25; // 1.25/0.5 + 8.5 = 11 → 11
    let b = Q4_0::encode(&x).unwrap();
    assert_eq!(half::f16::from_le_bytes([b[0], b[1]]).to_f32(), 0.5);
    assert_eq!(b[2] & 0x0F, 0);
    assert_eq!(b[2] >> 4, 15);
    assert_eq!(b[3] & 0x0F, 11);
    assert_eq!(b[4] & 0x0F, 8, "zero encodes as 8");
    // Largest magnitude positive: d = -0.5, the extreme is exact (q = 0).
    let y: Vec<f32> = x.iter().map(|v| -v).collect();
    let b = Q4_0::encode(&y).unwrap();
    let back = Q4_0::decode(&b).unwrap();
    assert_eq!(back[0], 4.0);
    assert_eq!(
        back[16], -3.5,
        "the opposite extreme clamps to q = 15 → 7·d"
    );
}

#[test]
fn q5_0_reference_sets_qh_bits() {
    let mut x = vec![0.0f32; 32];
    x[3] = -16.0; // d = 1, q = 0
    x[20] = 5.0; // q = 21 → 5th bit set for element 20
    x[7] = -1.0; // q = 15 → no 5th bit
    let b = Q5_0::encode(&x).unwrap();
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    assert_eq!(qh & (1 << 3), 0);
    assert_ne!(qh & (1 << 20), 0);
    assert_eq!(qh & (1 << 7), 0);
    assert_ne!(qh & (1 << 0), 0, "zero encodes as 16 (5th bit set)");
    assert_eq!(
        b[6 + 4] >> 4,
        21 & 0x0F,
        "element 20's low bits in byte 4's high nibble"
    );
    let back = Q5_0::decode(&b).unwrap();
    assert_eq!(back, x);
}

#[test]
fn q8_0_reference_codes() {
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    x[1] = -63.5; // round half away from zero → -64
    x[2] = 0.49;
    let b = Q8_0::encode(&x).unwrap();
    assert_eq!(half::f16::from_le_bytes([b[0], b[1]]).to_f32(), 1.0);
    assert_eq!(b[2] as i8, 127);
    assert_eq!(b[3] as i8, -64);
    assert_eq!(b[4] as i8, 0);
}

fn check_bounds<T: GgmlBlock>(sym: bool, code_max: f32) {
    for (seed, scale) in [(1u64, 1.0f32), (2, 0.01), (3, 300.0), (4, 1e-3)] {
        let x = values(T::BLOCK_SIZE * 64, seed, scale);
        let bytes = T::encode(&x).unwrap();
        assert_eq!(bytes.len(), 64 * T::TYPE_SIZE);
        let y = T::decode(&bytes).unwrap();
        for (blk, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let hdr = &bytes[blk * T::TYPE_SIZE..];
            let d = half::f16::from_le_bytes([hdr[0], hdr[1]]).to_f32().abs();
            let m = if sym {
                0.0
            } else {
                half::f16::from_le_bytes([hdr[2], hdr[3]]).to_f32()
            };
            // Error from rounding (d/2) plus the fp16 rounding of d (relative 2^-11, or absolute
            // 2^-25 when d is subnormal in fp16) applied to the code, and the rounding of m.
            let fp16_slack =
                code_max * (d * 2f32.powi(-10) + 2f32.powi(-24)) + m.abs() * 2f32.powi(-10) + 1e-7;
            let (amax_idx, _) = xb.iter().enumerate().fold((0, 0f32), |(i, a), (j, v)| {
                if v.abs() > a { (j, v.abs()) } else { (i, a) }
            });
            for (k, (&a, &b)) in xb.iter().zip(yb).enumerate() {
                let err = (a - b).abs();
                // Symmetric Q4_0/Q5_0 clamp the far end (opposite sign of the max-magnitude
                // element) one code short: there the error may reach a full d.
                let clamped_side = sym && code_max < 100.0 && a.signum() != xb[amax_idx].signum();
                let bound = if clamped_side { d } else { d / 2.0 } + fp16_slack;
                assert!(
                    err <= bound,
                    "{:?} seed {seed} block {blk} elem {k}: |{a} - {b}| = {err} > {bound}",
                    T::TYPE
                );
            }
        }
    }
}

#[test]
fn encode_decode_error_bounds() {
    check_bounds::<Q8_0>(true, 127.0);
    check_bounds::<Q4_0>(true, 8.0);
    check_bounds::<Q5_0>(true, 16.0);
    check_bounds::<Q4_1>(false, 15.0);
    check_bounds::<Q5_1>(false, 31.0);
}

#[test]
fn float_round_trips() {
    let x = values(100, 9, 10.0);
    assert_eq!(F32::decode(&F32::encode(&x).unwrap()).unwrap(), x);
    let y = F16::decode(&F16::encode(&x).unwrap()).unwrap();
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() <= a.abs() * 2f32.powi(-11) + 1e-7);
    }
}

#[test]
fn zero_block_and_lengths() {
    for &ty in ENCODABLE {
        let n = 2 * ty.block_size().max(32);
        let z = vec![0.0f32; n];
        let b = encode(ty, &z).unwrap();
        assert_eq!(b.len() as u64, ty.byte_size(n as u64).unwrap());
        assert_eq!(decode(ty, &b).unwrap(), z, "{ty:?}");
        if ty.block_size() > 1 {
            assert!(matches!(
                encode(ty, &z[..n - 1]),
                Err(GgufError::BadLength { .. })
            ));
        }
        if ty.type_size() > 1 {
            assert!(matches!(
                decode(ty, &b[..b.len() - 1]),
                Err(GgufError::BadLength { .. })
            ));
        }
    }
    for ty in [
        GgmlType::IQ4_XS,
        GgmlType::Q8_K,
        GgmlType::NVFP4,
        GgmlType::TQ1_0,
    ] {
        assert!(!ENCODABLE.contains(&ty));
        assert!(matches!(
            encode(ty, &[0.0; 256]),
            Err(GgufError::UnsupportedType(_))
        ));
        assert!(matches!(
            encode_weighted(ty, &[0.0; 256], 256, &[1.0; 256]),
            Err(GgufError::UnsupportedType(_))
        ));
    }
}

mod candle;
mod decode;
mod golden;
mod props;
mod real;
