//! ggml block codecs: the ggml reference quantizers (`quantize_row_*_ref`) and dequantizers.
//!
//! One file per family; every codec implements [`GgmlBlock`]. [`encode`]/[`decode`] dispatch on
//! a [`GgmlType`] at runtime.

mod float;
mod q4;
mod q5;
mod q8;

pub use float::{F16, F32};
pub use q4::{Q4_0, Q4_1};
pub use q5::{Q5_0, Q5_1};
pub use q8::Q8_0;

use super::{GgmlType, GgufError, Result};

/// A ggml block type (like candle's `GgmlType`): a block of [`Self::BLOCK_SIZE`] values encoded
/// in [`Self::TYPE_SIZE`] bytes.
pub trait GgmlBlock {
    /// The ggml type id this codec produces.
    const TYPE: GgmlType;
    /// Elements per block.
    const BLOCK_SIZE: usize;
    /// Bytes per block.
    const TYPE_SIZE: usize;

    /// Encodes one block with the ggml reference quantizer. `x.len() == BLOCK_SIZE`,
    /// `out.len() == TYPE_SIZE`.
    fn encode_block(x: &[f32], out: &mut [u8]);

    /// Decodes one block. `block.len() == TYPE_SIZE`, `out.len() == BLOCK_SIZE`.
    fn decode_block(block: &[u8], out: &mut [f32]);

    /// Encodes a row-major run of values whose length is a multiple of the block size.
    fn encode(x: &[f32]) -> Result<Vec<u8>> {
        if !x.len().is_multiple_of(Self::BLOCK_SIZE) {
            return Err(GgufError::BadLength {
                what: "values to encode",
                len: x.len(),
                multiple: Self::BLOCK_SIZE,
            });
        }
        let mut out = vec![0u8; x.len() / Self::BLOCK_SIZE * Self::TYPE_SIZE];
        for (xb, ob) in x
            .chunks_exact(Self::BLOCK_SIZE)
            .zip(out.chunks_exact_mut(Self::TYPE_SIZE))
        {
            Self::encode_block(xb, ob);
        }
        Ok(out)
    }

    /// Decodes bytes whose length is a multiple of the block's byte size.
    fn decode(bytes: &[u8]) -> Result<Vec<f32>> {
        if !bytes.len().is_multiple_of(Self::TYPE_SIZE) {
            return Err(GgufError::BadLength {
                what: "bytes to decode",
                len: bytes.len(),
                multiple: Self::TYPE_SIZE,
            });
        }
        let mut out = vec![0f32; bytes.len() / Self::TYPE_SIZE * Self::BLOCK_SIZE];
        for (b, ob) in bytes
            .chunks_exact(Self::TYPE_SIZE)
            .zip(out.chunks_exact_mut(Self::BLOCK_SIZE))
        {
            Self::decode_block(b, ob);
        }
        Ok(out)
    }
}

/// Encodes `x` as `ty` (F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1).
pub fn encode(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    match ty {
        GgmlType::F32 => F32::encode(x),
        GgmlType::F16 => F16::encode(x),
        GgmlType::Q8_0 => Q8_0::encode(x),
        GgmlType::Q4_0 => Q4_0::encode(x),
        GgmlType::Q4_1 => Q4_1::encode(x),
        GgmlType::Q5_0 => Q5_0::encode(x),
        GgmlType::Q5_1 => Q5_1::encode(x),
        other => Err(GgufError::UnsupportedType(other)),
    }
}

/// Decodes `bytes` of type `ty` to f32.
pub fn decode(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    match ty {
        GgmlType::F32 => F32::decode(bytes),
        GgmlType::F16 => F16::decode(bytes),
        GgmlType::Q8_0 => Q8_0::decode(bytes),
        GgmlType::Q4_0 => Q4_0::decode(bytes),
        GgmlType::Q4_1 => Q4_1::decode(bytes),
        GgmlType::Q5_0 => Q5_0::decode(bytes),
        GgmlType::Q5_1 => Q5_1::decode(bytes),
        other => Err(GgufError::UnsupportedType(other)),
    }
}

/// Reads the little-endian fp16 at `b[0..2]` as f32.
pub(crate) fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Writes `v` rounded to fp16 (round-to-nearest-even, like ggml) at `b[0..2]`.
pub(crate) fn put_f16(b: &mut [u8], v: f32) {
    b[..2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}

/// Index and value of the element with the largest magnitude (first one on ties), keeping its
/// sign, as ggml's `quantize_row_q4_0_ref` / `q5_0_ref` do.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// (min, max) of a block, as ggml's asymmetric reference quantizers compute them.
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[cfg(test)]
mod tests;
