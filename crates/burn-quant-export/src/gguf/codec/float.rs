//! Unquantized float types F32 and F16.

use super::GgmlBlock;
use crate::gguf::GgmlType;

/// ggml F32: little-endian IEEE binary32.
#[derive(Debug, Clone, Copy)]
pub struct F32;

/// ggml F16: little-endian IEEE binary16 (round-to-nearest-even on encode).
#[derive(Debug, Clone, Copy)]
pub struct F16;

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
