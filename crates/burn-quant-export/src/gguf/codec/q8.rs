//! Q8_0: 32 int8 codes with one fp16 scale (34 bytes: d, qs[32]); x = d·q.

use super::{GgmlBlock, f16_at, put_f16};
use crate::gguf::GgmlType;

/// ggml Q8_0.
#[derive(Debug, Clone, Copy)]
pub struct Q8_0;

impl GgmlBlock for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_SIZE: usize = 32;
    const TYPE_SIZE: usize = 34;

    /// Reference: d = max|x|/127, q = round(x/d) (half away from zero), codes from the f32 d.
    fn encode_block(x: &[f32], out: &mut [u8]) {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(out, d);
        for (o, &v) in out[2..34].iter_mut().zip(x) {
            *o = ((v * id).round() as i8) as u8;
        }
    }

    fn decode_block(block: &[u8], out: &mut [f32]) {
        let d = f16_at(block);
        for (o, &q) in out.iter_mut().zip(&block[2..34]) {
            *o = (q as i8) as f32 * d;
        }
    }
}
