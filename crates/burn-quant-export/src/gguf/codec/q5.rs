//! Q5_0 (22 bytes: d, qh u32, qs[16]; x = d·(q − 16)) and Q5_1 (24 bytes: d, m, qh u32, qs[16];
//! x = d·q + m). The low 4 bits use the nibble pairing of Q4 (byte j: element j low, j + 16
//! high); bit e of the little-endian u32 `qh` is the 5th bit of element e.

use super::q4::legacy_sweep;
use super::search::{make_qkx_quants, make_qx_quants};
use super::{
    GgmlBlock, WeightedBlock, f16_at, for_each_weighted_legacy_block, min_max, put_f16,
    signed_absmax,
};
use crate::gguf::GgmlType;

/// ggml Q5_0.
#[derive(Debug, Clone, Copy)]
pub struct Q5_0;

/// ggml Q5_1.
#[derive(Debug, Clone, Copy)]
pub struct Q5_1;

fn pack(codes: &[u8; 32], qh_out: &mut [u8], qs_out: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..16 {
        let (a, b) = (codes[j], codes[j + 16]);
        qs_out[j] = (a & 0x0F) | ((b & 0x0F) << 4);
        qh |= (((a & 0x10) >> 4) as u32) << j;
        qh |= (((b & 0x10) >> 4) as u32) << (j + 16);
    }
    qh_out.copy_from_slice(&qh.to_le_bytes());
}

fn unpack(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut codes = [0u8; 32];
    for j in 0..16 {
        codes[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        codes[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    codes
}

impl GgmlBlock for Q5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_SIZE: usize = 32;
    const TYPE_SIZE: usize = 22;

    /// Reference: d = M / −16 (M = largest-magnitude element with sign),
    /// q = min(31, floor(x/d + 16.5)).
    fn encode_block(x: &[f32], out: &mut [u8]) {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, d);
        let mut codes = [0u8; 32];
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = ((v * id + 16.5) as i8).min(31) as u8;
        }
        let (head, qs) = out.split_at_mut(6);
        pack(&codes, &mut head[2..6], qs);
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block);
        let codes = unpack(&block[2..6], &block[6..22]);
        for (o, &q) in out.iter_mut().zip(&codes) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }
}

impl GgmlBlock for Q5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK_SIZE: usize = 32;
    const TYPE_SIZE: usize = 24;

    /// Reference: d = (max − min)/31, m = min, q = floor((x − min)/d + 0.5).
    fn encode_block(x: &[f32], out: &mut [u8]) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(&mut out[0..2], d);
        put_f16(&mut out[2..4], min);
        let mut codes = [0u8; 32];
        for (c, &v) in codes.iter_mut().zip(x) {
            // ggml casts to uint8_t without clamping; the value is ≤ 31.5 by construction, the
            // min() only guards against rounding at the very top.
            *c = (((v - min) * id + 0.5) as u8).min(31);
        }
        let (head, qs) = out.split_at_mut(8);
        pack(&codes, &mut head[4..8], qs);
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(&block[0..2]);
        let m = f16_at(&block[2..4]);
        let codes = unpack(&block[4..8], &block[8..24]);
        for (o, &q) in out.iter_mut().zip(&codes) {
            *o = q as f32 * d + m;
        }
    }
}

impl WeightedBlock for Q5_0 {
    /// llama.cpp `quantize_q5_0` with weights: w_j = importance_j·sqrt(σ² + x_j²), σ² = mean x²
    /// of the row; per block `make_qx_quants(nmax = 16)`.
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        for_each_weighted_legacy_block(x, importance, out, Self::TYPE_SIZE, |xb, w, codes, ob| {
            let d = make_qx_quants(16, xb, Some(w), codes);
            put_f16(ob, d);
            let (head, qs) = ob.split_at_mut(6);
            pack(codes, &mut head[2..6], qs);
        });
    }
}

impl WeightedBlock for Q5_1 {
    /// llama.cpp `quantize_q5_1` with weights: as Q4_1 with `nmax = 31`.
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        for_each_weighted_legacy_block(x, importance, out, Self::TYPE_SIZE, |xb, w, codes, ob| {
            let (d, the_min) = make_qkx_quants(legacy_sweep(31), xb, w, codes);
            put_f16(&mut ob[0..2], d);
            put_f16(&mut ob[2..4], -the_min);
            let (head, qs) = ob.split_at_mut(8);
            pack(codes, &mut head[4..8], qs);
        });
    }
}
