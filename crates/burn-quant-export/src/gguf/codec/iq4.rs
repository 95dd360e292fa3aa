//! IQ4_NL: 32 values in 18 bytes (d, qs[16] with the nibble pairing); x = d·K[q] with the
//! non-uniform table K below.

use super::search::{GROUP_MAX_EPS, best_index_int8};
use super::{GgmlBlock, WeightedBlock, f16_at, put_f16};
use crate::gguf::GgmlType;

/// ggml IQ4_NL.
#[allow(non_camel_case_types)] // ggml's type names
#[derive(Debug, Clone, Copy)]
pub struct IQ4_NL;

/// The 16 levels of IQ4_NL (ggml `kvalues_iq4nl`), ascending.
pub const IQ4_NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml `quantize_row_iq4_nl_impl` for one block of 32 with `weights`; `ntry` is −1 for the
/// reference quantizer and 7 for the importance path (llama.cpp's `quantize_iq4_nl`).
///
/// The start scale maps the signed absmax M to the table's end (−127: d = M/−127 for the
/// reference; +127 for the search, whose candidates `(k − 127)/M`, k = −7..7, then approach from
/// the other side); each candidate's codes are the nearest levels and its scale the weighted
/// least-squares fit; the best fit wins and, when searching, every code is re-chosen with it.
fn quantize_block(x: &[f32], weights: &[f32; 32], ntry: i32, out: &mut [u8]) {
    let k = &IQ4_NL_VALUES;
    let mut codes = [0u8; 32];
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let scale = if amax < GROUP_MAX_EPS {
        // ggml leaves the codes of an all-zero block as they were (stale stack contents in the
        // reference quantizer); we write the level nearest to zero, as its search path does.
        codes.fill(best_index_int8(k, 0.0));
        0.0
    } else {
        let k0 = k[0] as f32;
        let mut d = if ntry > 0 { -max / k0 } else { max / k0 };
        let mut id = 1.0 / d;
        let fit = |id: f32, codes: Option<&mut [u8; 32]>| {
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            let mut codes = codes;
            for (j, &v) in x.iter().enumerate() {
                let l = best_index_int8(k, id * v);
                if let Some(c) = codes.as_deref_mut() {
                    c[j] = l;
                }
                let q = k[l as usize] as f32;
                let w = weights[j];
                sumqx += w * q * v;
                sumq2 += w * q * q;
            }
            (sumqx, sumq2)
        };
        let (sumqx, sumq2) = fit(id, Some(&mut codes));
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry + k[0] as i32) as f32 / max;
            let (sumqx, sumq2) = fit(id, None);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        d
    };
    put_f16(out, scale);
    if ntry > 0 {
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = best_index_int8(k, id * v);
        }
    }
    for j in 0..16 {
        out[2 + j] = codes[j] | (codes[j + 16] << 4);
    }
}

impl GgmlBlock for IQ4_NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const BLOCK_SIZE: usize = 32;
    const TYPE_SIZE: usize = 18;

    /// Reference (`quantize_row_iq4_nl_ref`): weights x², d = M/−127, one least-squares refit
    /// of d for the nearest-level codes (the codes are not re-chosen).
    fn encode_block(x: &[f32], out: &mut [u8]) {
        let mut w = [0f32; 32];
        for (wi, &v) in w.iter_mut().zip(x) {
            *wi = v * v;
        }
        quantize_block(x, &w, -1, out);
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block);
        for j in 0..16 {
            let b = block[2 + j];
            out[j] = d * IQ4_NL_VALUES[(b & 0xF) as usize] as f32;
            out[j + 16] = d * IQ4_NL_VALUES[(b >> 4) as usize] as f32;
        }
    }
}

impl WeightedBlock for IQ4_NL {
    /// llama.cpp `quantize_iq4_nl` with weights: w_j = importance_j·sqrt(σ² + x_j²), σ² = 2·mean
    /// x² of the 32-value block; 15 candidate scales; codes re-chosen with the winner.
    fn encode_row_weighted(x: &[f32], importance: &[f32], out: &mut [u8]) {
        let mut w = [0f32; 32];
        for ((xb, qb), ob) in x
            .chunks_exact(32)
            .zip(importance.chunks_exact(32))
            .zip(out.chunks_exact_mut(Self::TYPE_SIZE))
        {
            let mut s2 = 0f32;
            for &v in xb {
                s2 += v * v;
            }
            s2 *= 2.0 / 32.0;
            for ((wi, &v), &q) in w.iter_mut().zip(xb).zip(qb) {
                *wi = q * (s2 + v * v).sqrt();
            }
            quantize_block(xb, &w, 7, ob);
        }
    }
}
