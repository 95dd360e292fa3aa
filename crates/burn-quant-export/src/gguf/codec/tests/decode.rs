//! Decoders against formats.md §1.2 on hand-built blocks.
//!
//! Each test packs fields and codes *by the byte layout written in formats.md* (the direction
//! opposite to decoding, written independently of the decoders) and computes the expected values
//! from the dequantization formula. Scales are small powers of two or short fp16 values, so every
//! expected product is exact and equality is exact.

use super::super::*;
use crate::gguf::GgmlType;

fn f16b(v: f32) -> [u8; 2] {
    let h = half::f16::from_f32(v);
    assert_eq!(h.to_f32(), v, "test scale must be exact in fp16");
    h.to_le_bytes()
}

/// Deterministic small integers in 0..n for element i.
fn code(i: usize, n: u32, salt: u32) -> u32 {
    ((i as u32)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(salt.wrapping_mul(40_503))
        >> 7)
        % n
}

#[test]
fn bf16_decode_and_encode_rules() {
    let b = [0x80, 0x3F, 0x00, 0xC0, 0x80, 0x7F, 0x49, 0x40];
    let d = decode(GgmlType::BF16, &b).unwrap();
    assert_eq!(&d[..3], &[1.0, -2.0, f32::INFINITY]);
    assert_eq!(d[3], f32::from_bits(0x4049_0000)); // 3.140625
    let enc = |v: f32| f32_to_bf16_bits(v);
    // Ties to even: 1 + 2^-8 is half an ulp above 1 (even) → 1; 1 + 3·2^-8 → 1 + 2^-6 (even).
    assert_eq!(enc(1.0 + 2f32.powi(-8)), 0x3F80);
    assert_eq!(enc(1.0 + 3.0 * 2f32.powi(-8)), 0x3F82);
    assert_eq!(
        enc(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
        0x3F81,
        "above the tie rounds up"
    );
    assert_eq!(enc(f32::MAX), 0x7F80, "rounds to +inf");
    assert_eq!(enc(-0.0), 0x8000);
    // NaN: upper half kept and made quiet, even when the payload is only in the low half.
    assert_eq!(enc(f32::from_bits(0x7F80_0001)), 0x7FC0);
    assert_eq!(enc(f32::from_bits(0xFF80_0001)), 0xFFC0);
    assert_eq!(enc(f32::from_bits(0x7FA0_0000)), 0x7FE0);
    // Property: for non-NaN values the rule is IEEE round-to-nearest-even, as `half` does it.
    let mut s = 0x1234_5678_9abc_def0u64;
    for _ in 0..100_000 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let v = f32::from_bits(s as u32);
        if !v.is_nan() {
            assert_eq!(enc(v), half::bf16::from_f32(v).to_bits(), "{v:e}");
            assert_eq!(bf16_bits_to_f32(enc(v)), half::bf16::from_f32(v).to_f32());
        }
    }
}

#[test]
fn f16_encode_canonicalises_nan_like_ggml() {
    let b = encode(GgmlType::F16, &[f32::from_bits(0x7F80_0001), -f32::NAN]).unwrap();
    assert_eq!(b, vec![0x00, 0x7E, 0x00, 0xFE]);
}

#[test]
fn q2_k_hand_made() {
    let (d, dmin) = (0.5f32, 0.25f32);
    let scale: Vec<u32> = (0..16).map(|j| code(j, 16, 1)).collect();
    let min: Vec<u32> = (0..16).map(|j| code(j, 16, 2)).collect();
    let q: Vec<u32> = (0..256).map(|i| code(i, 4, 3)).collect();
    let mut b = vec![0u8; 84];
    for j in 0..16 {
        b[j] = (scale[j] | (min[j] << 4)) as u8;
    }
    // qs[32h + l] holds element 128h + 32g + l in bits 2g..2g+1.
    for (i, &qi) in q.iter().enumerate() {
        let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
        b[16 + 32 * h + l] |= (qi as u8) << (2 * g);
    }
    b[80..82].copy_from_slice(&f16b(d));
    b[82..84].copy_from_slice(&f16b(dmin));
    let y = Q2_K::decode(&b).unwrap();
    for i in 0..256 {
        let j = i / 16;
        let want = d * scale[j] as f32 * q[i] as f32 - dmin * min[j] as f32;
        assert_eq!(y[i], want, "element {i}");
    }
}

#[test]
fn q3_k_hand_made() {
    let d = 0.125f32;
    let s: Vec<i32> = (0..16).map(|j| code(j, 64, 4) as i32 - 32).collect();
    let q: Vec<u32> = (0..256).map(|i| code(i, 8, 5)).collect();
    let mut b = vec![0u8; 110];
    for (i, &qi) in q.iter().enumerate() {
        let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
        b[32 + 32 * h + l] |= ((qi & 3) as u8) << (2 * g);
        if qi >= 4 {
            b[l] |= 1 << (4 * h + g); // high bit set ↔ no −4
        }
    }
    for (j, &sj) in s.iter().enumerate() {
        let v = (sj + 32) as u8;
        // low 4 bits: nibble j/8 of scales[j % 8]; high 2 bits: bits 2(j/4).. of scales[8 + j%4]
        b[64 + 32 + j % 8] |= (v & 0xF) << (4 * (j / 8));
        b[64 + 32 + 8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
    b[108..110].copy_from_slice(&f16b(d));
    let y = Q3_K::decode(&b).unwrap();
    for i in 0..256 {
        let want = d * s[i / 16] as f32 * (q[i] as i32 - 4) as f32;
        assert_eq!(y[i], want, "element {i}");
    }
}

/// Packs eight 6-bit scales and mins as formats.md words it: bytes 0-3 = s0..s3 (low 6 bits) +
/// top 2 bits of s4..s7; bytes 4-7 = m0..m3 + top 2 bits of m4..m7; bytes 8-11 = low nibbles
/// s4..s7, high nibbles m4..m7.
fn k4_scales(s: &[u32], m: &[u32]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        out[j] = (s[j] | ((s[j + 4] >> 4) << 6)) as u8;
        out[4 + j] = (m[j] | ((m[j + 4] >> 4) << 6)) as u8;
        out[8 + j] = ((s[j + 4] & 15) | ((m[j + 4] & 15) << 4)) as u8;
    }
    out
}

#[test]
fn q4_k_and_q5_k_hand_made() {
    let (d, dmin) = (0.25f32, 0.5f32);
    let s: Vec<u32> = (0..8).map(|j| code(j, 64, 6)).collect();
    let m: Vec<u32> = (0..8).map(|j| code(j, 64, 7)).collect();
    assert!(s[4..].iter().any(|&v| v >= 16) && m[4..].iter().any(|&v| v >= 16));
    let q4: Vec<u32> = (0..256).map(|i| code(i, 16, 8)).collect();
    let q5: Vec<u32> = (0..256).map(|i| code(i, 32, 9)).collect();

    let mut b4 = vec![0u8; 144];
    let mut b5 = vec![0u8; 176];
    for b in [&mut b4, &mut b5] {
        b[0..2].copy_from_slice(&f16b(d));
        b[2..4].copy_from_slice(&f16b(dmin));
        b[4..16].copy_from_slice(&k4_scales(&s, &m));
    }
    for i in 0..256 {
        // element 64c + 32hi + l: nibble `hi` of qs[32c + l]; Q5_K's 5th bit: bit (i/32) of qh[l]
        let (c, hi, l) = (i / 64, (i % 64) / 32, i % 32);
        b4[16 + 32 * c + l] |= ((q4[i] as u8) & 15) << (4 * hi);
        b5[48 + 32 * c + l] |= ((q5[i] as u8) & 15) << (4 * hi);
        b5[16 + l] |= ((q5[i] >> 4) as u8) << (i / 32);
    }
    let y4 = Q4_K::decode(&b4).unwrap();
    let y5 = Q5_K::decode(&b5).unwrap();
    for i in 0..256 {
        let j = i / 32;
        let off = dmin * m[j] as f32;
        assert_eq!(
            y4[i],
            d * s[j] as f32 * q4[i] as f32 - off,
            "Q4_K element {i}"
        );
        assert_eq!(
            y5[i],
            d * s[j] as f32 * q5[i] as f32 - off,
            "Q5_K element {i}"
        );
    }
}

#[test]
fn q6_k_hand_made() {
    let d = 0.0625f32;
    let sc: Vec<i8> = (0..16)
        .map(|j| (code(j, 256, 10) as i32 - 128) as i8)
        .collect();
    let q: Vec<u32> = (0..256).map(|i| code(i, 64, 11)).collect();
    let mut b = vec![0u8; 210];
    for (i, &qi) in q.iter().enumerate() {
        let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
        b[64 * h + 32 * (g & 1) + l] |= ((qi & 15) as u8) << (4 * (g >> 1));
        b[128 + 32 * h + l] |= ((qi >> 4) as u8) << (2 * g);
    }
    for j in 0..16 {
        b[192 + j] = sc[j] as u8;
    }
    b[208..210].copy_from_slice(&f16b(d));
    let y = Q6_K::decode(&b).unwrap();
    for i in 0..256 {
        let want = d * sc[i / 16] as f32 * (q[i] as i32 - 32) as f32;
        assert_eq!(y[i], want, "element {i}");
    }
}

#[test]
fn iq4_nl_hand_made() {
    const K: [f32; 16] = [
        -127., -104., -83., -65., -49., -35., -22., -10., 1., 13., 25., 38., 53., 69., 89., 113.,
    ];
    let d = 0.03125f32;
    let mut b = vec![0u8; 18];
    b[0..2].copy_from_slice(&f16b(d));
    for j in 0..16 {
        b[2 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let y = IQ4_NL::decode(&b).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], d * K[j]);
        assert_eq!(y[j + 16], d * K[15 - j]);
    }
}

#[test]
fn mxfp4_hand_made() {
    const E2M1: [f32; 16] = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];
    for e in [127u8, 130, 100, 2, 1, 0, 200] {
        let mut b = vec![0u8; 17];
        b[0] = e;
        for j in 0..16 {
            b[1 + j] = (j as u8) | (((j as u8) ^ 5) << 4);
        }
        let y = MXFP4::decode(&b).unwrap();
        let scale = 2f64.powi(e as i32 - 127);
        for j in 0..16 {
            assert_eq!(y[j] as f64, E2M1[j] as f64 * scale, "e {e} code {j}");
            assert_eq!(
                y[j + 16] as f64,
                E2M1[j ^ 5] as f64 * scale,
                "e {e} code {}",
                j ^ 5
            );
        }
    }
    assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
    assert_eq!(
        e8m0_to_f32_half(255),
        2f32.powi(127),
        "ggml does not treat 0xFF as NaN"
    );
}

#[test]
fn mxfp4_exponent_rule_and_nearest_level() {
    // e = ⌊log2 amax⌋ − 2 + 127: amax 6 → 2^(2−2)=1, so 6 is exact; amax 8 → scale 2.
    assert_eq!(mxfp4_exponent(6.0), 127);
    assert_eq!(mxfp4_exponent(8.0), 128);
    assert_eq!(mxfp4_exponent(7.99), 127);
    assert_eq!(mxfp4_exponent(0.0), 0);
    assert_eq!(
        mxfp4_exponent(1e-40),
        0,
        "saturates where ggml's cast is undefined"
    );
    assert_eq!(mxfp4_exponent(f32::INFINITY), 255);
    let mut x = vec![0f32; 32];
    x[0] = 6.0;
    x[1] = -2.4; // nearest −2 (err .4) over −3 (err .6)
    x[2] = 2.5; // tie 2 vs 3: the first level in table order (2) wins
    x[3] = 7.9; // clamps to 6
    x[4] = 0.2; // 0 (err .2) vs 0.5 (err .3)
    let y = MXFP4::decode(&MXFP4::encode(&x).unwrap()).unwrap();
    assert_eq!(&y[..5], &[6.0, -2.0, 2.0, 6.0, 0.0]);
}
