//! Q4_0 (18 bytes: d, qs[16]; x = d·(q − 8)) and Q4_1 (20 bytes: d, m, qs[16]; x = d·q + m).
//! Nibble pairing: byte j's low nibble is element j, its high nibble element j + 16.

use super::search::{Sweep, make_qkx_quants, make_qx_quants};
use super::{
    GgmlBlock, WeightedBlock, f16_at, for_each_weighted_legacy_block, min_max, put_f16,
    signed_absmax,
};
use crate::gguf::GgmlType;

/// ggml Q4_0.
#[derive(Debug, Clone, Copy)]
pub struct Q4_0;

/// ggml Q4_1.
#[derive(Debug, Clone, Copy)]
pub struct Q4_1;

impl GgmlBlock for Q4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_SIZE: usize = 32;
    const TYPE_SIZE: usize = 18;

    /// Reference: M = largest-magnitude element with its sign, d = M / −8,
    /// q = min(15, floor(x/d + 8.5)).
    fn encode_block(x: &[f32], out: &mut [u8]) {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, d);
        for j in 0..16 {
            let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
            out[2 + j] = q0 | (q1 << 4);
        }
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block);
        for j in 0..16 {
            let b = block[2 + j];
            out[j] = ((b & 0x0F) as i32 - 8) as f32 * d;
            out[j + 16] = ((b >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl GgmlBlock for Q4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_SIZE: usize = 32;
    const TYPE_SIZE: usize = 20;

    /// Reference: d = (max − min)/15, m = min, q = min(15, floor((x − min)/d + 0.5)).
    fn encode_block(x: &[f32], out: &mut [u8]) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(&mut out[0..2], d);
        put_f16(&mut out[2..4], min);
        for j in 0..16 {
            let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
            out[4 + j] = q0 | (q1 << 4);
        }
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(&block[0..2]);
        let m = f16_at(&block[2..4]);
        for j in 0..16 {
            let b = block[4 + j];
            out[j] = (b & 0x0F) as f32 * d + m;
            out[j + 16] = (b >> 4) as f32 * d + m;
        }
    }
}

/// The asymmetric sweep llama.cpp's weighted Q4_1/Q5_1 use (`make_qkx3_quants`, −0.9 + 0.05·k).
pub(super) fn legacy_sweep(nmax: i32) -> Sweep {
    Sweep {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    }
}

/// Packs 32 4-bit codes with the nibble pairing (byte j: element j low, j + 16 high).
fn pack_nibbles(codes: &[u8; 32], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = codes[j] | (codes[j + 16] << 4);
    }
}

impl WeightedBlock for Q4_0 {
    /// llama.cpp `quantize_q4_0` with weights: w_j = importance_j·sqrt(σ² + x_j²), σ² = mean x²
    /// of the row; per block `make_qx_quants(nmax = 8)`.
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        for_each_weighted_legacy_block(x, importance, out, Self::TYPE_SIZE, |xb, w, codes, ob| {
            let d = make_qx_quants(8, xb, Some(w), codes);
            put_f16(ob, d);
            pack_nibbles(codes, &mut ob[2..18]);
        });
    }
}

impl WeightedBlock for Q4_1 {
    /// llama.cpp `quantize_q4_1` with weights: w_j as for Q4_0; per block the asymmetric sweep
    /// `make_qkx3_quants(nmax = 15)`; m is the (non-positive) fitted offset.
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        for_each_weighted_legacy_block(x, importance, out, Self::TYPE_SIZE, |xb, w, codes, ob| {
            let (d, the_min) = make_qkx_quants(legacy_sweep(15), xb, w, codes);
            put_f16(&mut ob[0..2], d);
            put_f16(&mut ob[2..4], -the_min);
            pack_nibbles(codes, &mut ob[4..20]);
        });
    }
}
