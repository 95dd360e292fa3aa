//! Unquantized float types F32, F16 and BF16.

use super::GgmlBlock;
use crate::gguf::GgmlType;

/// ggml F32: little-endian IEEE binary32.
#[derive(Debug, Clone, Copy)]
pub struct F32;

/// ggml F16: little-endian IEEE binary16 (round-to-nearest-even on encode, NaN → 0x7E00).
#[derive(Debug, Clone, Copy)]
pub struct F16;

/// ggml BF16: the upper 16 bits of an IEEE binary32 (round-to-nearest-even on encode).
#[derive(Debug, Clone, Copy)]
pub struct BF16;

/// f32 → bf16 bits as ggml's `GGML_FP32_TO_BF16`: round to nearest even by adding
/// `0x7FFF + lsb` below the cut; NaN keeps its upper bits and is forced quiet (bit 6), so a
/// signalling NaN whose payload lies only in the low half does not become infinity.
pub fn f32_to_bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    // No overflow: the largest non-NaN pattern, 0xFF80_0000 (−inf), plus 0x8000 fits in u32.
    ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) as u16
}

/// bf16 bits → f32 (exact).
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

impl GgmlBlock for F32 {
    const TYPE: GgmlType = GgmlType::F32;
    const BLOCK_SIZE: usize = 1;
    const TYPE_SIZE: usize = 4;

    fn encode_block(x: &[f32], out: &mut [u8]) {
        out.copy_from_slice(&x[0].to_le_bytes());
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        out[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    }
}

impl GgmlBlock for F16 {
    const TYPE: GgmlType = GgmlType::F16;
    const BLOCK_SIZE: usize = 1;
    const TYPE_SIZE: usize = 2;

    fn encode_block(x: &[f32], out: &mut [u8]) {
        super::put_f16(out, x[0]);
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        out[0] = super::f16_at(block);
    }
}

impl GgmlBlock for BF16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const BLOCK_SIZE: usize = 1;
    const TYPE_SIZE: usize = 2;

    fn encode_block(x: &[f32], out: &mut [u8]) {
        out[..2].copy_from_slice(&f32_to_bf16_bits(x[0]).to_le_bytes());
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        out[0] = bf16_bits_to_f32(u16::from_le_bytes([block[0], block[1]]));
    }
}
