//! Q6_K: 256 values in 210 bytes (ql[128], qh[64], scales[16] int8, d); 16 sub-blocks of 16:
//! x = d·scale·(q − 32), q ∈ 0..63.
//!
//! Element i = 128h + 32g + l: low 4 bits are nibble g / 2 of ql[64h + 32·(g % 2) + l], high 2
//! bits are bits 2g..2g+1 of qh[32h + l]; scale index i / 16.

use super::search::{GROUP_MAX_EPS, make_qx_quants, nearest_int};
use super::{GgmlBlock, QK_K, WeightedBlock, f16_at, put_f16};
use crate::gguf::GgmlType;

/// ggml Q6_K.
#[allow(non_camel_case_types)] // ggml's type names
#[derive(Debug, Clone, Copy)]
pub struct Q6_K;

const QL: usize = 0;
const QH: usize = 128;
const SCALES: usize = 192;
const D: usize = 208;

/// Shared by both quantizers once the 16 sub-block scales and search codes exist: 8-bit scales
/// against the largest-magnitude one M (d = M / −128), re-rounding, packing.
fn finish(x: &[f32], scales: &[f32; 16], codes: &mut [u8; QK_K], out: &mut [u8]) {
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for &s in scales {
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    if max_abs < GROUP_MAX_EPS {
        out.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(&mut out[D..], 1.0 / iscale);
    for (j, &s) in scales.iter().enumerate() {
        out[SCALES + j] = nearest_int(iscale * s).min(127) as i8 as u8;
    }
    let d_all = f16_at(&out[D..]);
    for j in 0..16 {
        let d = d_all * out[SCALES + j] as i8 as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            codes[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    for h in 0..2 {
        for l in 0..32 {
            let c = |g: usize| codes[128 * h + 32 * g + l];
            out[QL + 64 * h + l] = (c(0) & 0xF) | ((c(2) & 0xF) << 4);
            out[QL + 64 * h + 32 + l] = (c(1) & 0xF) | ((c(3) & 0xF) << 4);
            out[QH + 32 * h + l] =
                (c(0) >> 4) | ((c(1) >> 4) << 2) | ((c(2) >> 4) << 4) | ((c(3) >> 4) << 6);
        }
    }
}

impl GgmlBlock for Q6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const BLOCK_SIZE: usize = QK_K;
    const TYPE_SIZE: usize = 210;

    /// Reference: per sub-block `make_qx_quants(nmax 32, weights x²)`.
    fn encode_block(x: &[f32], out: &mut [u8]) {
        let mut codes = [0u8; QK_K];
        let mut scales = [0f32; 16];
        for (j, s) in scales.iter_mut().enumerate() {
            *s = make_qx_quants(
                32,
                &x[16 * j..16 * j + 16],
                None,
                &mut codes[16 * j..16 * j + 16],
            );
        }
        finish(x, &scales, &mut codes, out);
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(&block[D..]);
        for (i, o) in out.iter_mut().enumerate().take(QK_K) {
            let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
            let low = (block[QL + 64 * h + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0xF;
            let high = (block[QH + 32 * h + l] >> (2 * g)) & 3;
            let q = (low | (high << 4)) as i32 - 32;
            let sc = block[SCALES + i / 16] as i8;
            *o = d * sc as f32 * q as f32;
        }
    }
}

impl WeightedBlock for Q6_K {
    /// llama.cpp `quantize_q6_K` with weights: per sub-block `make_qx_quants(nmax 32)` weighted
    /// by the importance itself (llama.cpp leaves the σ² factor out for Q6_K).
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        for ((xs, qs), ob) in x
            .chunks_exact(QK_K)
            .zip(importance.chunks_exact(QK_K))
            .zip(out.chunks_exact_mut(Self::TYPE_SIZE))
        {
            let mut codes = [0u8; QK_K];
            let mut scales = [0f32; 16];
            for (j, s) in scales.iter_mut().enumerate() {
                let r = 16 * j..16 * j + 16;
                *s = make_qx_quants(32, &xs[r.clone()], Some(&qs[r.clone()]), &mut codes[r]);
            }
            finish(xs, &scales, &mut codes, ob);
        }
    }
}
