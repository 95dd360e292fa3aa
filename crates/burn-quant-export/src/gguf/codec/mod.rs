//! ggml block codecs: the ggml reference quantizers (`quantize_row_*_ref`), llama.cpp's
//! importance-weighted quantizers (`quantize_*(…, quant_weights)`, used with an imatrix) and the
//! dequantizers.
//!
//! One file per family; every codec implements [`GgmlBlock`], the ones with an importance path
//! also [`WeightedBlock`]. [`encode`], [`encode_weighted`] and [`decode`] dispatch on a
//! [`GgmlType`] at runtime; [`ENCODABLE`] lists the types they accept.
//!
//! The encoders reproduce ggml's output bit for bit as ggml's C code computes it with strict IEEE
//! f32 arithmetic (the evaluation order of every expression is kept; no fused multiply-add). A
//! llama.cpp built with `-march=native` may contract multiply-adds and so differ in rare last-bit
//! ties.
//!
//! Large inputs are encoded in parallel (rayon): blocks and rows are independent, so the bytes do
//! not depend on the number of threads.

mod float;
mod iq4;
mod mxfp4;
mod q2k;
mod q3k;
mod q4;
mod q45k;
mod q5;
mod q6k;
mod q8;
pub(crate) mod search;

pub use float::{BF16, F16, F32, bf16_bits_to_f32, f32_to_bf16_bits};
pub use iq4::{IQ4_NL, IQ4_NL_VALUES};
pub use mxfp4::{MXFP4, MXFP4_VALUES_X2, e8m0_to_f32_half, mxfp4_exponent};
pub use q2k::Q2_K;
pub use q3k::Q3_K;
pub use q4::{Q4_0, Q4_1};
pub use q5::{Q5_0, Q5_1};
pub use q6k::Q6_K;
pub use q8::Q8_0;
pub use q45k::{Q4_K, Q5_K};

use rayon::prelude::*;

use super::{GgmlType, GgufError, Result};

/// Elements per super-block of the k-quants (ggml's `QK_K`).
pub const QK_K: usize = 256;
/// Bytes of the packed 6-bit scales and mins of Q4_K/Q5_K (ggml's `K_SCALE_SIZE`).
pub const K_SCALE_SIZE: usize = 12;

/// Every type [`encode`] and [`decode`] accept, in formats.md's order.
pub const ENCODABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::MXFP4,
];

/// The types whose [`encode_weighted`] uses the importance (the others ignore it, as llama.cpp
/// does for Q8_0, MXFP4 and the float types).
pub const IMPORTANCE_AWARE: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
];

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

    /// Encodes a row-major run of values whose length is a multiple of the block size, on the
    /// calling thread (see [`encode`] for the parallel path; the bytes are the same).
    fn encode(x: &[f32]) -> Result<Vec<u8>> {
        check_multiple("values to encode", x.len(), Self::BLOCK_SIZE)?;
        let mut out = vec![0u8; x.len() / Self::BLOCK_SIZE * Self::TYPE_SIZE];
        encode_blocks::<Self>(x, &mut out);
        Ok(out)
    }

    /// Decodes bytes whose length is a multiple of the block's byte size.
    fn decode(bytes: &[u8]) -> Result<Vec<f32>> {
        check_multiple("bytes to decode", bytes.len(), Self::TYPE_SIZE)?;
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

/// A ggml block type with llama.cpp's importance-weighted quantizer (the `quant_weights` path of
/// `quantize_q4_0`, `quantize_q4_K`, … that `llama-quantize --imatrix` takes).
pub trait WeightedBlock: GgmlBlock {
    /// Encodes one row. `x.len() == importance.len()` is a multiple of `BLOCK_SIZE`, importance
    /// values are finite and ≥ 0, `out.len() == x.len() / BLOCK_SIZE * TYPE_SIZE`.
    ///
    /// Some types use statistics of the whole row (σ² of the legacy types), so rows, not
    /// blocks, are the unit.
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]);
}

/// Elements per parallel task: big enough that rayon's overhead vanishes, small enough to
/// balance two to a few dozen threads.
const PAR_CHUNK_ELEMS: usize = 1 << 14;

fn check_multiple(what: &'static str, len: usize, multiple: usize) -> Result<()> {
    if len.is_multiple_of(multiple) {
        Ok(())
    } else {
        Err(GgufError::BadLength {
            what,
            len,
            multiple,
        })
    }
}

/// Serial loop over whole blocks; lengths already checked.
fn encode_blocks<T: GgmlBlock + ?Sized>(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x
        .chunks_exact(T::BLOCK_SIZE)
        .zip(out.chunks_exact_mut(T::TYPE_SIZE))
    {
        T::encode_block(xb, ob);
    }
}

/// [`GgmlBlock::encode`] split over rayon tasks of about [`PAR_CHUNK_ELEMS`] values.
fn encode_par<T: GgmlBlock>(x: &[f32]) -> Result<Vec<u8>> {
    check_multiple("values to encode", x.len(), T::BLOCK_SIZE)?;
    let blocks = x.len() / T::BLOCK_SIZE;
    let mut out = vec![0u8; blocks * T::TYPE_SIZE];
    let per_task = (PAR_CHUNK_ELEMS / T::BLOCK_SIZE).max(1);
    if blocks <= per_task {
        encode_blocks::<T>(x, &mut out);
    } else {
        out.par_chunks_mut(per_task * T::TYPE_SIZE)
            .zip(x.par_chunks(per_task * T::BLOCK_SIZE))
            .for_each(|(o, xs)| encode_blocks::<T>(xs, o));
    }
    Ok(out)
}

/// Encodes `x` as `ty` with ggml's reference quantizer; any type of [`ENCODABLE`].
///
/// `x.len()` must be a multiple of the block size. Large inputs are split across threads; the
/// bytes equal those of the serial [`GgmlBlock::encode`].
pub fn encode(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    match ty {
        GgmlType::F32 => encode_par::<F32>(x),
        GgmlType::F16 => encode_par::<F16>(x),
        GgmlType::BF16 => encode_par::<BF16>(x),
        GgmlType::Q8_0 => encode_par::<Q8_0>(x),
        GgmlType::Q4_0 => encode_par::<Q4_0>(x),
        GgmlType::Q4_1 => encode_par::<Q4_1>(x),
        GgmlType::Q5_0 => encode_par::<Q5_0>(x),
        GgmlType::Q5_1 => encode_par::<Q5_1>(x),
        GgmlType::Q2_K => encode_par::<Q2_K>(x),
        GgmlType::Q3_K => encode_par::<Q3_K>(x),
        GgmlType::Q4_K => encode_par::<Q4_K>(x),
        GgmlType::Q5_K => encode_par::<Q5_K>(x),
        GgmlType::Q6_K => encode_par::<Q6_K>(x),
        GgmlType::IQ4_NL => encode_par::<IQ4_NL>(x),
        GgmlType::MXFP4 => encode_par::<MXFP4>(x),
        other => Err(GgufError::UnsupportedType(other)),
    }
}

/// Encodes `x` (rows of `row_len` values, row-major) as `ty` with llama.cpp's importance-weighted
/// quantizer; `importance[j]` weighs column `j` of every row (an imatrix row: mean of the
/// squared activations feeding column `j`).
///
/// For the types of [`IMPORTANCE_AWARE`] this is `quantize_<type>(x, …, n_per_row = row_len,
/// quant_weights = importance)`; the other types of [`ENCODABLE`] ignore the importance and give
/// [`encode`]'s bytes, as llama.cpp does. Errors: `row_len` not a multiple of the block size or
/// not dividing `x.len()` ([`GgufError::BadLength`]), `importance.len() != row_len`
/// ([`GgufError::ImportanceLength`]), an importance value that is NaN, infinite or negative
/// ([`GgufError::InvalidImportance`]). A block whose importance is all zero encodes as zeros,
/// as in llama.cpp.
pub fn encode_weighted(
    ty: GgmlType,
    x: &[f32],
    row_len: usize,
    importance: &[f32],
) -> Result<Vec<u8>> {
    if !ENCODABLE.contains(&ty) {
        return Err(GgufError::UnsupportedType(ty));
    }
    if importance.len() != row_len {
        return Err(GgufError::ImportanceLength {
            len: importance.len(),
            row_len,
        });
    }
    if let Some((index, &value)) = importance
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
    {
        return Err(GgufError::InvalidImportance { index, value });
    }
    if row_len == 0 {
        // No columns: only an empty input is a whole number of rows.
        return if x.is_empty() {
            Ok(Vec::new())
        } else {
            Err(GgufError::BadLength {
                what: "values to encode (row length 0)",
                len: x.len(),
                multiple: 0,
            })
        };
    }
    check_multiple("row length", row_len, ty.block_size())?;
    check_multiple("values to encode", x.len(), row_len)?;
    match ty {
        GgmlType::Q4_0 => encode_rows_weighted::<Q4_0>(x, row_len, importance),
        GgmlType::Q4_1 => encode_rows_weighted::<Q4_1>(x, row_len, importance),
        GgmlType::Q5_0 => encode_rows_weighted::<Q5_0>(x, row_len, importance),
        GgmlType::Q5_1 => encode_rows_weighted::<Q5_1>(x, row_len, importance),
        GgmlType::Q2_K => encode_rows_weighted::<Q2_K>(x, row_len, importance),
        GgmlType::Q3_K => encode_rows_weighted::<Q3_K>(x, row_len, importance),
        GgmlType::Q4_K => encode_rows_weighted::<Q4_K>(x, row_len, importance),
        GgmlType::Q5_K => encode_rows_weighted::<Q5_K>(x, row_len, importance),
        GgmlType::Q6_K => encode_rows_weighted::<Q6_K>(x, row_len, importance),
        GgmlType::IQ4_NL => encode_rows_weighted::<IQ4_NL>(x, row_len, importance),
        other => encode(other, x),
    }
}

/// Rows of [`WeightedBlock::encode_row_weighted`], in parallel; lengths already checked.
fn encode_rows_weighted<T: WeightedBlock>(
    x: &[f32],
    row_len: usize,
    importance: &[f32],
) -> Result<Vec<u8>> {
    let row_bytes = row_len / T::BLOCK_SIZE * T::TYPE_SIZE;
    let mut out = vec![0u8; x.len() / row_len * row_bytes];
    // Group short rows so that each task still holds about PAR_CHUNK_ELEMS values.
    let rows_per_task = (PAR_CHUNK_ELEMS / row_len).max(1);
    out.par_chunks_mut(rows_per_task * row_bytes)
        .zip(x.par_chunks(rows_per_task * row_len))
        .for_each(|(o, xs)| {
            for (orow, xrow) in o.chunks_exact_mut(row_bytes).zip(xs.chunks_exact(row_len)) {
                T::encode_row_weighted(xrow, importance, orow);
            }
        });
    Ok(out)
}

/// Decodes `bytes` of type `ty` to f32; any type of [`ENCODABLE`].
pub fn decode(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    match ty {
        GgmlType::F32 => F32::decode(bytes),
        GgmlType::F16 => F16::decode(bytes),
        GgmlType::BF16 => BF16::decode(bytes),
        GgmlType::Q8_0 => Q8_0::decode(bytes),
        GgmlType::Q4_0 => Q4_0::decode(bytes),
        GgmlType::Q4_1 => Q4_1::decode(bytes),
        GgmlType::Q5_0 => Q5_0::decode(bytes),
        GgmlType::Q5_1 => Q5_1::decode(bytes),
        GgmlType::Q2_K => Q2_K::decode(bytes),
        GgmlType::Q3_K => Q3_K::decode(bytes),
        GgmlType::Q4_K => Q4_K::decode(bytes),
        GgmlType::Q5_K => Q5_K::decode(bytes),
        GgmlType::Q6_K => Q6_K::decode(bytes),
        GgmlType::IQ4_NL => IQ4_NL::decode(bytes),
        GgmlType::MXFP4 => MXFP4::decode(bytes),
        other => Err(GgufError::UnsupportedType(other)),
    }
}

/// Reads the little-endian fp16 at `b[0..2]` as f32.
pub(crate) fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// f32 → fp16 bits as ggml's `GGML_FP32_TO_FP16`: round to nearest even, overflow to ±inf, and
/// every NaN to the quiet NaN 0x7E00 with the input's sign.
pub(crate) fn f16_bits(v: f32) -> u16 {
    if v.is_nan() {
        ((v.to_bits() >> 16) as u16 & 0x8000) | 0x7E00
    } else {
        half::f16::from_f32(v).to_bits()
    }
}

/// Writes `v` rounded to fp16 (see [`f16_bits`]) at `b[0..2]`.
pub(crate) fn put_f16(b: &mut [u8], v: f32) {
    b[..2].copy_from_slice(&f16_bits(v).to_le_bytes());
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

/// σ² term of llama.cpp's importance weights: `factor · Σx² / x.len()`, summed left to right.
pub(crate) fn sigma2(x: &[f32], factor: f32) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    factor * sum_x2 / x.len() as f32
}

/// llama.cpp's per-element weights `importance_j · sqrt(σ² + x_j²)`.
pub(crate) fn importance_weights(x: &[f32], importance: &[f32], sigma2: f32, out: &mut [f32]) {
    for ((w, &v), &q) in out.iter_mut().zip(x).zip(importance) {
        *w = q * (sigma2 + v * v).sqrt();
    }
}

/// The shared loop of llama.cpp's importance-weighted encoders for the 32-element legacy types
/// (Q4_0, Q4_1, Q5_0, Q5_1): σ² of the row, then for each block of 32 values its weights
/// `w_j = importance_j·sqrt(σ² + x_j²)` and its `type_size`-byte output, handed to `encode`
/// with a scratch code buffer.
pub(crate) fn for_each_weighted_legacy_block(
    x: &[f32],
    importance: &[f32],
    out: &mut [u8],
    type_size: usize,
    mut encode: impl FnMut(&[f32], &[f32; 32], &mut [u8; 32], &mut [u8]),
) {
    let s2 = sigma2(x, 1.0);
    let mut w = [0f32; 32];
    let mut codes = [0u8; 32];
    for ((xb, qb), ob) in x
        .chunks_exact(32)
        .zip(importance.chunks_exact(32))
        .zip(out.chunks_exact_mut(type_size))
    {
        importance_weights(xb, qb, s2, &mut w);
        encode(xb, &w, &mut codes, ob);
    }
}

#[cfg(test)]
mod tests;
