//! MXFP4 (OCP microscaling FP4): 32 values in 17 bytes (e: E8M0 exponent byte, qs[16] with the
//! nibble pairing); x = 2^(e − 127)·E2M1(q), E2M1 = 0, .5, 1, 1.5, 2, 3, 4, 6 and their negatives
//! for q ≥ 8.
//!
//! ggml keeps the E2M1 table doubled (integers 0..12) and halves the scale instead, so every
//! product below is the same f32 as ggml's.

use super::GgmlBlock;
use crate::gguf::GgmlType;

/// ggml MXFP4.
#[derive(Debug, Clone, Copy)]
pub struct MXFP4;

/// E2M1 levels times two (ggml `kvalues_mxfp4`), indexed by the 4-bit code.
pub const MXFP4_VALUES_X2: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// 2^(e − 128) = half the E8M0 scale, exactly (ggml `ggml_e8m0_to_fp32_half`): subnormal f32
/// for e < 2. e = 255 (NaN in OCP) gives 2^127, as in ggml, which does not handle NaN.
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits(((e as u32) - 1) << 23)
    }
}

/// The shared exponent for a block whose largest magnitude is `amax` (ggml's rule):
/// e = ⌊log2 amax⌋ − 2 + 127, so that amax/2^(e−127) lies in [4, 8) and 6, the largest E2M1
/// level, sits just below the top of the block's range. 0 for an all-zero block.
///
/// `log2` is the platform's `log2f`, like ggml's, so blocks whose amax lies within an ulp below a
/// power of two round the same way. The conversion saturates to 0..=255 where ggml's C cast is
/// undefined (amax below 2^−125, infinite or NaN).
pub fn mxfp4_exponent(amax: f32) -> u8 {
    if amax > 0.0 {
        (amax.log2().floor() - 2.0 + 127.0) as u8
    } else {
        0
    }
}

/// Code whose (doubled) level times `d` is nearest to `x`; the first on ties (ggml
/// `best_index_mxfp4`: a linear scan with strict `<`).
fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0usize;
    let mut best_err = (MXFP4_VALUES_X2[0] as f32 * d - x).abs();
    for (i, &v) in MXFP4_VALUES_X2.iter().enumerate().skip(1) {
        let err = (v as f32 * d - x).abs();
        if err < best_err {
            best = i;
            best_err = err;
        }
    }
    best as u8
}

impl GgmlBlock for MXFP4 {
    const TYPE: GgmlType = GgmlType::MXFP4;
    const BLOCK_SIZE: usize = 32;
    const TYPE_SIZE: usize = 17;

    /// Reference (`quantize_row_mxfp4_ref`): e from the block's absmax by
    /// [`mxfp4_exponent`], then each value to the nearest level.
    fn encode_block(x: &[f32], out: &mut [u8]) {
        let mut amax = 0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        let e = mxfp4_exponent(amax);
        let d = e8m0_to_f32_half(e);
        out[0] = e;
        for j in 0..16 {
            out[1 + j] = best_index(x[j], d) | (best_index(x[j + 16], d) << 4);
        }
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = e8m0_to_f32_half(block[0]);
        for j in 0..16 {
            let b = block[1 + j];
            out[j] = MXFP4_VALUES_X2[(b & 0xF) as usize] as f32 * d;
            out[j + 16] = MXFP4_VALUES_X2[(b >> 4) as usize] as f32 * d;
        }
    }
}
