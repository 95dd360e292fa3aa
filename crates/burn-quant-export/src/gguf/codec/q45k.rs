//! Q4_K (144 bytes: d, dmin, scales[12], qs[128]) and Q5_K (176 bytes: d, dmin, scales[12],
//! qh[32], qs[128]): 256 values in 8 sub-blocks of 32, each with a 6-bit scale s and 6-bit min m:
//! x = d·s·q − dmin·m, q ∈ 0..15 (Q4_K) or 0..31 (Q5_K).
//!
//! Element i = 64c + 32hi + l: low 4 bits are nibble `hi` of qs[32c + l]; sub-block j = i / 32;
//! Q5_K's 5th bit is bit j of qh[l]. Scales and mins of sub-block j: j < 4: s = scales[j] & 63,
//! m = scales[j + 4] & 63; j ≥ 4: s = (scales[j + 4] & 15) | (scales[j − 4] >> 6) << 4,
//! m = (scales[j + 4] >> 4) | (scales[j] >> 6) << 4.

use super::search::{Sweep, make_qkx_quants, make_qp_quants, nearest_int};
use super::{
    GgmlBlock, K_SCALE_SIZE, QK_K, WeightedBlock, f16_at, importance_weights, put_f16, sigma2,
};
use crate::gguf::GgmlType;

/// ggml Q4_K.
#[allow(non_camel_case_types)] // ggml's type names
#[derive(Debug, Clone, Copy)]
pub struct Q4_K;

/// ggml Q5_K.
#[allow(non_camel_case_types)] // ggml's type names
#[derive(Debug, Clone, Copy)]
pub struct Q5_K;

const D: usize = 0;
const DMIN: usize = 2;
const SCALES: usize = 4;

/// Packs eight 6-bit scales and mins (values above 63 spill into neighbouring bits exactly as in
/// ggml, which only happens for wrapped negative codes).
fn pack_scales(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8]) {
    let s = &mut out[SCALES..SCALES + K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// (scale, min) codes of sub-block `j` (ggml `get_scale_min_k4`).
pub(crate) fn scale_min(block: &[u8], j: usize) -> (u8, u8) {
    let q = &block[SCALES..SCALES + K_SCALE_SIZE];
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Re-rounds every element with the final scales and mins into 0..=nmax (sub-blocks of scale
/// zero keep the search's codes).
fn requantize(x: &[f32], nmax: i32, codes: &mut [u8; QK_K], out: &[u8]) {
    let d_all = f16_at(&out[D..]);
    let dmin_all = f16_at(&out[DMIN..]);
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min(out, j);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            codes[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

/// Reference search shared by Q4_K and Q5_K: per sub-block weights av_x + |x| (av_x = RMS of the
/// sub-block), `make_qkx2_quants`, then scales and mins to 6 bits against their maxima.
fn encode_reference(x: &[f32], sweep: Sweep, codes: &mut [u8; QK_K], out: &mut [u8]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut w = [0f32; 32];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xb = &x[32 * j..32 * j + 32];
        let av_x = sigma2(xb, 1.0).sqrt();
        for (wi, &v) in w.iter_mut().zip(xb) {
            *wi = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx_quants(sweep, xb, &w, &mut codes[32 * j..32 * j + 32]);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // ggml assigns to uint8_t first (wrapping), then clamps to 63.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    pack_scales(&ls, &lm, out);
    put_f16(&mut out[D..], max_scale / 63.0);
    put_f16(&mut out[DMIN..], max_min / 63.0);
    requantize(x, sweep.nmax, codes, out);
}

/// Importance-weighted search shared by Q4_K and Q5_K (llama.cpp `quantize_row_q{4,5}_K_impl`):
/// w_j = importance_j·sqrt(σ² + x_j²), σ² = 2·mean x² of the super-block;
/// `make_qkx3_quants(−0.9 + 0.05·k, 36 steps)` per sub-block; scales and mins by
/// `make_qp_quants(63)` weighted by the sub-blocks' total weights. Q5_K clamps the codes to 63
/// before packing, Q4_K does not (they cannot exceed it unless a scale is negative).
fn encode_weighted_block(
    x: &[f32],
    importance: &[f32],
    nmax: i32,
    clamp_codes: bool,
    codes: &mut [u8; QK_K],
    out: &mut [u8],
) {
    let sweep = Sweep {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    let s2 = sigma2(x, 2.0);
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut sw = [0f32; 8];
    let mut w = [0f32; 32];
    for j in 0..8 {
        let xb = &x[32 * j..32 * j + 32];
        importance_weights(xb, &importance[32 * j..32 * j + 32], s2, &mut w);
        let mut sumw = 0f32;
        for &wi in &w {
            sumw += wi;
        }
        sw[j] = sumw;
        (scales[j], mins[j]) = make_qkx_quants(sweep, xb, &w, &mut codes[32 * j..32 * j + 32]);
    }
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, &scales, &sw, &mut ls);
    let m_block = make_qp_quants(63, &mins, &sw, &mut lm);
    if clamp_codes {
        for l in ls.iter_mut().chain(lm.iter_mut()) {
            *l = (*l).min(63);
        }
    }
    pack_scales(&ls, &lm, out);
    put_f16(&mut out[D..], d_block);
    put_f16(&mut out[DMIN..], m_block);
    requantize(x, nmax, codes, out);
}

fn pack_q4(codes: &[u8; QK_K], qs: &mut [u8]) {
    for c in 0..4 {
        for l in 0..32 {
            qs[32 * c + l] = codes[64 * c + l] | (codes[64 * c + 32 + l] << 4);
        }
    }
}

fn pack_q5(codes: &[u8; QK_K], qh: &mut [u8], qs: &mut [u8]) {
    qh.fill(0);
    for c in 0..4 {
        for l in 0..32 {
            let (lo, hi) = (codes[64 * c + l], codes[64 * c + 32 + l]);
            qh[l] |= ((lo >> 4) & 1) << (2 * c) | ((hi >> 4) & 1) << (2 * c + 1);
            qs[32 * c + l] = (lo & 0xF) | ((hi & 0xF) << 4);
        }
    }
}

impl GgmlBlock for Q4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BLOCK_SIZE: usize = QK_K;
    const TYPE_SIZE: usize = 144;

    /// Reference: `make_qkx2_quants(nmax 15, −1 + 0.1·k, 20 steps)` per sub-block.
    fn encode_block(x: &[f32], out: &mut [u8]) {
        const SWEEP: Sweep = Sweep {
            nmax: 15,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let mut codes = [0u8; QK_K];
        encode_reference(x, SWEEP, &mut codes, out);
        pack_q4(&codes, &mut out[16..144]);
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(&block[D..]);
        let min = f16_at(&block[DMIN..]);
        for j in 0..8 {
            let (sc, m) = scale_min(block, j);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (c, hi) = (j / 2, j % 2);
            for l in 0..32 {
                let q = (block[16 + 32 * c + l] >> (4 * hi)) & 0xF;
                out[32 * j + l] = d1 * q as f32 - m1;
            }
        }
    }
}

impl WeightedBlock for Q4_K {
    /// llama.cpp `quantize_q4_K` with weights (see the module's shared search).
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        for ((xs, qs), ob) in x
            .chunks_exact(QK_K)
            .zip(importance.chunks_exact(QK_K))
            .zip(out.chunks_exact_mut(Self::TYPE_SIZE))
        {
            let mut codes = [0u8; QK_K];
            encode_weighted_block(xs, qs, 15, false, &mut codes, ob);
            pack_q4(&codes, &mut ob[16..144]);
        }
    }
}

impl GgmlBlock for Q5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const BLOCK_SIZE: usize = QK_K;
    const TYPE_SIZE: usize = 176;

    /// Reference: `make_qkx2_quants(nmax 31, −0.5 + 0.1·k, 15 steps)` per sub-block.
    fn encode_block(x: &[f32], out: &mut [u8]) {
        const SWEEP: Sweep = Sweep {
            nmax: 31,
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        };
        let mut codes = [0u8; QK_K];
        encode_reference(x, SWEEP, &mut codes, out);
        let (qh, qs) = out[16..176].split_at_mut(32);
        pack_q5(&codes, qh, qs);
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(&block[D..]);
        let min = f16_at(&block[DMIN..]);
        for j in 0..8 {
            let (sc, m) = scale_min(block, j);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (c, hi) = (j / 2, j % 2);
            for l in 0..32 {
                let lo = (block[48 + 32 * c + l] >> (4 * hi)) & 0xF;
                let high = if block[16 + l] & (1 << j) != 0 { 16 } else { 0 };
                out[32 * j + l] = d1 * (lo + high) as f32 - m1;
            }
        }
    }
}

impl WeightedBlock for Q5_K {
    /// llama.cpp `quantize_q5_K` with weights (see the module's shared search).
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        for ((xs, qs), ob) in x
            .chunks_exact(QK_K)
            .zip(importance.chunks_exact(QK_K))
            .zip(out.chunks_exact_mut(Self::TYPE_SIZE))
        {
            let mut codes = [0u8; QK_K];
            encode_weighted_block(xs, qs, 31, true, &mut codes, ob);
            let (qh, qs) = ob[16..176].split_at_mut(32);
            pack_q5(&codes, qh, qs);
        }
    }
}
