//! Q3_K: 256 values in 110 bytes (hmask[32], qs[64], scales[12], d); 16 sub-blocks of 16 with
//! 6-bit signed scales: x = d·(s − 32)·(q2 − (hbit ? 0 : 4)).
//!
//! Element i = 128h + 32g + l: low 2 bits are bits 2g..2g+1 of qs[32h + l], the high bit is bit
//! i / 32 of hmask[i % 32]; sub-block i / 16. Scale j: low nibble = nibble j / 8 of scales[j % 8],
//! high 2 bits = bits 2·(j / 4).. of scales[8 + j % 4], stored with offset +32.

use super::search::{make_q3_quants, make_qx_quants, nearest_int};
use super::{GgmlBlock, QK_K, WeightedBlock, f16_at, importance_weights, put_f16, sigma2};
use crate::gguf::GgmlType;

/// ggml Q3_K.
#[allow(non_camel_case_types)] // ggml's type names
#[derive(Debug, Clone, Copy)]
pub struct Q3_K;

const HMASK: usize = 0;
const QS: usize = 32;
const SCALES: usize = 96;
const D: usize = 108;

/// Packs 16 offset scales (0..63) into the 12 scale bytes.
fn pack_scales(ls: &[u8; 16], out: &mut [u8]) {
    let s = &mut out[SCALES..SCALES + 12];
    s.fill(0);
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            s[j] = l & 0xF;
        } else {
            s[j - 8] |= (l & 0xF) << 4;
        }
        s[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
}

/// Scale j with its offset removed (−32..31).
fn scale(block: &[u8], j: usize) -> i32 {
    let s = &block[SCALES..SCALES + 12];
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// Re-rounds with the final scales (sub-blocks of scale zero keep the search's codes), then
/// splits the 3-bit codes (0..7) into hmask and 2-bit planes.
fn finish(x: &[f32], codes: &mut [u8; QK_K], out: &mut [u8]) {
    let d_all = f16_at(&out[D..]);
    for j in 0..QK_K / 16 {
        let d = d_all * scale(out, j) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            codes[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as u8;
        }
    }
    out[HMASK..HMASK + 32].fill(0);
    for (i, c) in codes.iter_mut().enumerate() {
        if *c > 3 {
            out[HMASK + i % 32] |= 1 << (i / 32);
            *c -= 4;
        }
    }
    for h in 0..2 {
        for l in 0..32 {
            let c = |g: usize| codes[128 * h + 32 * g + l];
            out[QS + 32 * h + l] = c(0) | (c(1) << 2) | (c(2) << 4) | (c(3) << 6);
        }
    }
}

impl GgmlBlock for Q3_K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const BLOCK_SIZE: usize = QK_K;
    const TYPE_SIZE: usize = 110;

    /// Reference: per sub-block `make_q3_quants(nmax 4, weights x²)`; the 16 scales quantized
    /// against the largest-magnitude one M: d = M / −32, s = clamp(round(−32·scale/M), −32, 31).
    fn encode_block(x: &[f32], out: &mut [u8]) {
        let mut codes = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut codes[16 * j..16 * j + 16]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            let mut ls = [0u8; 16];
            for (l, &s) in ls.iter_mut().zip(&scales) {
                // ggml stores the rounded value in an int8_t before clamping; it is within
                // ±32 (|s| ≤ |M|), so no wrap happens.
                *l = ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
            }
            pack_scales(&ls, out);
            put_f16(&mut out[D..], 1.0 / iscale);
        } else {
            out[SCALES..SCALES + 12].fill(0);
            put_f16(&mut out[D..], 0.0);
        }
        finish(x, &mut codes, out);
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d_all = f16_at(&block[D..]);
        let mut dl = [0f32; 16];
        for (j, d) in dl.iter_mut().enumerate() {
            *d = d_all * scale(block, j) as f32;
        }
        for (i, o) in out.iter_mut().enumerate().take(QK_K) {
            let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
            let q2 = ((block[QS + 32 * h + l] >> (2 * g)) & 3) as i32;
            let high = block[HMASK + l] & (1 << (4 * h + g)) != 0;
            *o = dl[i / 16] * (q2 - if high { 0 } else { 4 }) as f32;
        }
    }
}

impl WeightedBlock for Q3_K {
    /// llama.cpp `quantize_q3_K` with weights: w_j = importance_j·sqrt(σ² + x_j²), σ² = 2·mean x²
    /// of the super-block; per sub-block `make_qx_quants(nmax 4)`; the 16 scales by
    /// `make_qx_quants(nmax 32)` weighted by each sub-block's total weight.
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        for ((xs, qs), ob) in x
            .chunks_exact(QK_K)
            .zip(importance.chunks_exact(QK_K))
            .zip(out.chunks_exact_mut(Self::TYPE_SIZE))
        {
            let s2 = sigma2(xs, 2.0);
            let mut codes = [0u8; QK_K];
            let mut scales = [0f32; 16];
            let mut sw = [0f32; 16];
            let mut w = [0f32; 16];
            for j in 0..16 {
                let xb = &xs[16 * j..16 * j + 16];
                importance_weights(xb, &qs[16 * j..16 * j + 16], s2, &mut w);
                let mut sumw = 0f32;
                for &wi in &w {
                    sumw += wi;
                }
                sw[j] = sumw;
                scales[j] = make_qx_quants(4, xb, Some(&w), &mut codes[16 * j..16 * j + 16]);
            }
            let mut ls = [0u8; 16];
            let d_block = make_qx_quants(32, &scales, Some(&sw), &mut ls);
            pack_scales(&ls, ob);
            put_f16(&mut ob[D..], d_block);
            finish(xs, &mut codes, ob);
        }
    }
}
