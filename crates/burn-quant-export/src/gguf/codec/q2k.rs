//! Q2_K: 256 values in 84 bytes (scales[16], qs[64], d, dmin); 16 sub-blocks of 16 with a 4-bit
//! scale (low nibble) and 4-bit min (high nibble) each: x = d·(sc & 15)·q − dmin·(sc >> 4),
//! q ∈ 0..3.
//!
//! 2-bit placement: element i = 128h + 32g + l is bits 2g..2g+1 of qs[32h + l]; its sub-block is
//! i / 16.

use super::search::{Sweep, make_qkx_quants, make_qp_quants, nearest_int};
use super::{GgmlBlock, QK_K, WeightedBlock, f16_at, importance_weights, put_f16, sigma2};
use crate::gguf::GgmlType;

/// ggml Q2_K.
#[allow(non_camel_case_types)] // ggml's type names
#[derive(Debug, Clone, Copy)]
pub struct Q2_K;

const SCALES: usize = 0;
const QS: usize = 16;
const D: usize = 80;
const DMIN: usize = 82;

/// Re-rounds every element with the final (fp16-rounded) scale and min, then packs the codes.
/// Sub-blocks whose scale is zero keep the codes of the search, as in ggml.
fn finish(x: &[f32], codes: &mut [u8; QK_K], out: &mut [u8]) {
    let d_all = f16_at(&out[D..]);
    let dmin_all = f16_at(&out[DMIN..]);
    for j in 0..QK_K / 16 {
        let sc = out[SCALES + j];
        let d = d_all * (sc & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * (sc >> 4) as f32;
        for ii in 0..16 {
            codes[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
    for h in 0..2 {
        for l in 0..32 {
            let c = |g: usize| codes[128 * h + 32 * g + l];
            out[QS + 32 * h + l] = c(0) | (c(1) << 2) | (c(2) << 4) | (c(3) << 6);
        }
    }
}

impl GgmlBlock for Q2_K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const BLOCK_SIZE: usize = QK_K;
    const TYPE_SIZE: usize = 84;

    /// Reference: per sub-block `make_qkx2_quants(nmax 3, weights |x|, mean absolute error,
    /// −0.5 + 0.1·k, 15 steps)`; scales and mins quantized to 4 bits against their maxima
    /// (d = max scale / 15, dmin = max min / 15).
    fn encode_block(x: &[f32], out: &mut [u8]) {
        const SWEEP: Sweep = Sweep {
            nmax: 3,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: true,
        };
        let mut codes = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        let mut w = [0f32; 16];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..16 {
            let xb = &x[16 * j..16 * j + 16];
            for (wi, &v) in w.iter_mut().zip(xb) {
                *wi = v.abs();
            }
            (scales[j], mins[j]) = make_qkx_quants(SWEEP, xb, &w, &mut codes[16 * j..16 * j + 16]);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for j in 0..16 {
                out[SCALES + j] = nearest_int(iscale * scales[j]) as u8;
            }
            put_f16(&mut out[D..], max_scale / 15.0);
        } else {
            out[SCALES..SCALES + 16].fill(0);
            put_f16(&mut out[D..], 0.0);
        }
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for j in 0..16 {
                out[SCALES + j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            put_f16(&mut out[DMIN..], max_min / 15.0);
        } else {
            put_f16(&mut out[DMIN..], 0.0);
        }
        finish(x, &mut codes, out);
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(&block[D..]);
        let min = f16_at(&block[DMIN..]);
        for (i, o) in out.iter_mut().enumerate().take(QK_K) {
            let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
            let q = (block[QS + 32 * h + l] >> (2 * g)) & 3;
            let sc = block[SCALES + i / 16];
            let dl = d * (sc & 0xF) as f32;
            let ml = min * (sc >> 4) as f32;
            *o = dl * q as f32 - ml;
        }
    }
}

impl WeightedBlock for Q2_K {
    /// llama.cpp `quantize_q2_K` with weights: w_j = importance_j·sqrt(σ² + x_j²), σ² = mean x²
    /// of the super-block; per sub-block `make_qkx3_quants(nmax 3, −0.9 + 0.05·k, 36 steps)`;
    /// scales and mins to 4 bits by `make_qp_quants` weighted by each sub-block's total weight.
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        const SWEEP: Sweep = Sweep {
            nmax: 3,
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        };
        for ((xs, qs), ob) in x
            .chunks_exact(QK_K)
            .zip(importance.chunks_exact(QK_K))
            .zip(out.chunks_exact_mut(Self::TYPE_SIZE))
        {
            let s2 = sigma2(xs, 1.0);
            let mut codes = [0u8; QK_K];
            let mut scales = [0f32; 16];
            let mut mins = [0f32; 16];
            let mut sw = [0f32; 16];
            let mut w = [0f32; 16];
            for j in 0..16 {
                let xb = &xs[16 * j..16 * j + 16];
                importance_weights(xb, &qs[16 * j..16 * j + 16], s2, &mut w);
                for &wi in &w {
                    sw[j] += wi;
                }
                (scales[j], mins[j]) =
                    make_qkx_quants(SWEEP, xb, &w, &mut codes[16 * j..16 * j + 16]);
            }
            let mut ls = [0u8; 16];
            let mut lm = [0u8; 16];
            let dm = make_qp_quants(15, &scales, &sw, &mut ls);
            let mm = make_qp_quants(15, &mins, &sw, &mut lm);
            put_f16(&mut ob[D..], dm);
            put_f16(&mut ob[DMIN..], mm);
            for j in 0..16 {
                ob[SCALES + j] = ls[j] | (lm[j] << 4);
            }
            finish(xs, &mut codes, ob);
        }
    }
}
