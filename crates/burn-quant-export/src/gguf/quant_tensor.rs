//! `QuantTensor` → ggml blocks, code for code.
//!
//! A 2-D [`QuantTensor`] whose spec has the structure of a ggml type (element format, group size,
//! zero-point, scale storage) is packed without re-deciding anything: the integer codes GPTQ or
//! Qronos chose are the codes in the file, and the stored scales are the `QuantTensor`'s own
//! (f16, E8M0 or k-quant sub-block codes, which the core's [`ScaleQuant`] levels already hold
//! exactly). Blocks run along the spec's group axis, which becomes ggml's `ne[0]`: a Burn
//! `Linear` weight `[d_input, d_output]` grouped along axis 0 is written as ggml dims
//! `[d_input, d_output]` with one row per output, as llama.cpp wants; an `[out, in]` weight
//! grouped along axis 1 gives the same file.
//!
//! Converting between structures is re-quantization, which loses the codes; it only happens
//! through [`requantize_tensor`], which the caller must ask for.

use burn_quant_core::{
    Format, Granularity, QuantSpec, QuantTensor, ScaleQuant, ScaleRestriction,
    host::{HostLevel, HostParams},
};

use super::codec;
use super::{GgmlType, GgufError, Result};

/// A tensor encoded as ggml blocks, ready for [`super::GgufWriter::add_tensor_bytes`].
#[derive(Clone, Debug, PartialEq)]
pub struct GgmlTensor {
    /// The ggml type of `data`.
    pub ty: GgmlType,
    /// Dims in ggml order: `[ne0, ne1]`, `ne0` the blocked (contiguous) axis.
    pub dims: [u64; 2],
    /// The encoded rows, `ne1` of them.
    pub data: Vec<u8>,
}

/// The ggml type whose block structure `spec` has, or an error saying why none does.
///
/// Matched: Q8_0 / Q4_0 / Q5_0 (signed 8/4/5-bit, symmetric, groups of 32, f16 scales), Q4_1 /
/// Q5_1 (unsigned 4/5-bit with zero-point, groups of 32, f16 scale and offset), MXFP4 (E2M1,
/// groups of 32, E8M0 scales) and the k-quants Q2_K…Q6_K (the core's `gguf_q*_k` presets).
pub fn ggml_type_of(spec: &QuantSpec) -> Result<GgmlType> {
    let not = |reason: String| GgufError::SpecNotGgml {
        spec: spec.to_string(),
        reason,
    };
    let Granularity::PerGroup { size, .. } = spec.granularity else {
        return Err(not(
            "ggml blocks need per-group granularity (groups of 32, or k-quant sub-blocks)".into(),
        ));
    };
    let asym = spec.zero_point.is_asymmetric();
    let ScaleRestriction::Quantized(level) = spec.scale.restrict else {
        return Err(not(format!(
            "ggml stores scales as f16, E8M0 or k-quant codes, not {:?} (use ScaleQuant::F16)",
            spec.scale.restrict
        )));
    };
    let ty = match (spec.format, level, size, asym) {
        (
            Format::Int {
                bits: 8,
                signed: true,
                ..
            },
            ScaleQuant::F16,
            32,
            false,
        ) => GgmlType::Q8_0,
        (
            Format::Int {
                bits: 4,
                signed: true,
                ..
            },
            ScaleQuant::F16,
            32,
            false,
        ) => GgmlType::Q4_0,
        (
            Format::Int {
                bits: 5,
                signed: true,
                ..
            },
            ScaleQuant::F16,
            32,
            false,
        ) => GgmlType::Q5_0,
        (
            Format::Int {
                bits: 4,
                signed: false,
                ..
            },
            ScaleQuant::F16,
            32,
            true,
        ) => GgmlType::Q4_1,
        (
            Format::Int {
                bits: 5,
                signed: false,
                ..
            },
            ScaleQuant::F16,
            32,
            true,
        ) => GgmlType::Q5_1,
        (Format::Minifloat(m), ScaleQuant::E8M0, 32, false)
            if m == burn_quant_core::Minifloat::e2m1() =>
        {
            GgmlType::MXFP4
        }
        (
            f,
            ScaleQuant::SubBlock {
                super_block: 256,
                bits,
                signed,
            },
            g,
            a,
        ) => match (f, bits, signed, g, a) {
            (
                Format::Int {
                    bits: 2,
                    signed: false,
                    ..
                },
                4,
                false,
                16,
                true,
            ) => GgmlType::Q2_K,
            (
                Format::Int {
                    bits: 3,
                    signed: true,
                    ..
                },
                6,
                true,
                16,
                false,
            ) => GgmlType::Q3_K,
            (
                Format::Int {
                    bits: 4,
                    signed: false,
                    ..
                },
                6,
                false,
                32,
                true,
            ) => GgmlType::Q4_K,
            (
                Format::Int {
                    bits: 5,
                    signed: false,
                    ..
                },
                6,
                false,
                32,
                true,
            ) => GgmlType::Q5_K,
            (
                Format::Int {
                    bits: 6,
                    signed: true,
                    ..
                },
                8,
                true,
                16,
                false,
            ) => GgmlType::Q6_K,
            _ => {
                return Err(not(
                    "no k-quant has this element format, group size and scale bits".into(),
                ));
            }
        },
        _ => {
            return Err(not(
                "no ggml type has this element format, group size, zero-point and scale storage"
                    .into(),
            ));
        }
    };
    // Narrow signed grids are a subset of ggml's; the rest of the spec (statistic, rounding,
    // learned or not) decided the codes and does not change the layout.
    Ok(ty)
}

/// Encodes a 2-D `QuantTensor` as the ggml type its spec matches, code for code.
pub fn encode_quant_tensor(q: &QuantTensor<2>) -> Result<GgmlTensor> {
    let ty = ggml_type_of(&q.spec)?;
    encode_quant_tensor_as(q, ty)
}

/// Encodes a 2-D `QuantTensor` as `ty`, code for code; an error naming both the spec and `ty`
/// when the structures differ (ask [`requantize_tensor`] to convert).
pub fn encode_quant_tensor_as(q: &QuantTensor<2>, ty: GgmlType) -> Result<GgmlTensor> {
    let matched = ggml_type_of(&q.spec).map_err(|e| GgufError::SpecMismatch {
        spec: q.spec.to_string(),
        ty,
        reason: e.to_string(),
    })?;
    if matched != ty {
        return Err(GgufError::SpecMismatch {
            spec: q.spec.to_string(),
            ty,
            reason: format!("its structure is ggml {matched:?}"),
        });
    }
    let axis = q.spec.granularity.axis().unwrap_or(0);
    let shape = q.shape();
    if axis > 1 {
        return Err(GgufError::SpecMismatch {
            spec: q.spec.to_string(),
            ty,
            reason: format!("group axis {axis} of a 2-D tensor"),
        });
    }
    let ne0 = shape[axis];
    let ne1 = shape[1 - axis];
    let bs = ty.block_size();
    if ne0 % bs != 0 {
        return Err(GgufError::BadLength {
            what: "blocked axis of the QuantTensor",
            len: ne0,
            multiple: bs,
        });
    }
    let codes = q.codes_vec();
    let params = q.params().to_host();
    let view = View::new(shape, axis, &q.spec, &params)?;
    let mut data = vec![0u8; ne1 * (ne0 / bs) * ty.type_size()];
    let mut block_codes = vec![0i32; bs];
    for (r, row) in data.chunks_exact_mut(ne0 / bs * ty.type_size()).enumerate() {
        for (b, out) in row.chunks_exact_mut(ty.type_size()).enumerate() {
            for (j, c) in block_codes.iter_mut().enumerate() {
                *c = codes[view.elem(r, b * bs + j)];
            }
            pack_block(ty, &view, r, b, &block_codes, out)?;
        }
    }
    Ok(GgmlTensor {
        ty,
        dims: [ne0 as u64, ne1 as u64],
        data,
    })
}

/// Re-quantizes a 2-D float weight (row-major `[rows, row_len]`, blocks along rows) as `ty` with
/// llama.cpp's quantizers: the reference one, or with `importance` (one value per column, e.g.
/// [`super::Imatrix::importance`]) the importance-weighted search. The codes are the encoder's,
/// not anyone's earlier choice: this is the explicit conversion [`encode_quant_tensor_as`]
/// refuses to do silently.
pub fn requantize_tensor(
    x: &[f32],
    row_len: usize,
    ty: GgmlType,
    importance: Option<&[f32]>,
) -> Result<GgmlTensor> {
    if row_len == 0 || !x.len().is_multiple_of(row_len) {
        return Err(GgufError::BadLength {
            what: "values to re-quantize",
            len: x.len(),
            multiple: row_len.max(1),
        });
    }
    let data = match importance {
        Some(w) => codec::encode_weighted(ty, x, row_len, w)?,
        None => codec::encode(ty, x)?,
    };
    Ok(GgmlTensor {
        ty,
        dims: [row_len as u64, (x.len() / row_len) as u64],
        data,
    })
}

/// Index arithmetic of a 2-D tensor whose groups run along `axis`, viewed as ggml rows `r`
/// (the other axis) and positions `k` along the blocked axis.
struct View<'a> {
    shape: [usize; 2],
    axis: usize,
    level: &'a HostLevel,
    group: usize,
}

impl<'a> View<'a> {
    fn new(
        shape: [usize; 2],
        axis: usize,
        spec: &QuantSpec,
        params: &'a HostParams,
    ) -> Result<Self> {
        let level = params
            .level
            .as_ref()
            .ok_or_else(|| GgufError::SpecMismatch {
                spec: spec.to_string(),
                ty: GgmlType::F32,
                reason: "the QuantTensor carries no scale-level codes".into(),
            })?;
        let Granularity::PerGroup { size, .. } = spec.granularity else {
            unreachable!("ggml_type_of checked the granularity")
        };
        Ok(Self {
            shape,
            axis,
            level,
            group: size,
        })
    }

    /// Flat index of position `k` along the blocked axis in row `r` of an array whose blocked
    /// axis has `along` entries.
    fn at(&self, r: usize, k: usize, along: usize) -> usize {
        if self.axis == 0 {
            k * self.shape[1] + r
        } else {
            r * along + k
        }
    }

    fn elem(&self, r: usize, k: usize) -> usize {
        self.at(r, k, self.shape[self.axis])
    }

    /// Flat index of group `g` (along the blocked axis) of row `r`.
    fn cell(&self, r: usize, g: usize) -> usize {
        self.at(r, g, self.shape[self.axis] / self.group)
    }

    /// Flat index of super-block `s` of row `r`.
    fn super_cell(&self, r: usize, s: usize, super_block: usize) -> usize {
        self.at(r, s, self.shape[self.axis] / super_block)
    }

    fn scale_code(&self, r: usize, g: usize) -> i32 {
        self.level.scale_codes[self.cell(r, g)]
    }

    fn min_code(&self, r: usize, g: usize) -> Result<i32> {
        self.level
            .min_codes
            .as_ref()
            .map(|m| m[self.cell(r, g)])
            .ok_or(GgufError::MissingLevel("min codes"))
    }
}

fn f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// Writes one block of `ty` for row `r`, block `b`, from its codes.
fn pack_block(
    ty: GgmlType,
    v: &View<'_>,
    r: usize,
    b: usize,
    codes: &[i32],
    out: &mut [u8],
) -> Result<()> {
    // The F16 level's codes are the half bit patterns themselves.
    let half = |bits: i32| (bits as u16).to_le_bytes();
    match ty {
        GgmlType::Q8_0 => {
            out[..2].copy_from_slice(&half(v.scale_code(r, b)));
            for (o, &c) in out[2..].iter_mut().zip(codes) {
                *o = c as i8 as u8;
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::MXFP4 => {
            let (offset, qs_at) = match ty {
                GgmlType::Q4_0 => {
                    out[..2].copy_from_slice(&half(v.scale_code(r, b)));
                    (8, 2)
                }
                GgmlType::Q4_1 => {
                    out[..2].copy_from_slice(&half(v.scale_code(r, b)));
                    // ggml adds `m`; our offset `z·s` is subtracted: flip the sign bit.
                    out[2..4].copy_from_slice(&half(v.min_code(r, b)? ^ 0x8000));
                    (0, 4)
                }
                _ => {
                    // E8M0 biased exponent; codes are E2M1 bit patterns (sign in bit 3), which
                    // are ggml's MXFP4 table indices.
                    out[0] = v.scale_code(r, b) as u8;
                    (0, 1)
                }
            };
            pack_nibbles(codes, offset, &mut out[qs_at..qs_at + 16]);
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (offset, qh_at) = if ty == GgmlType::Q5_0 {
                out[..2].copy_from_slice(&half(v.scale_code(r, b)));
                (16, 2)
            } else {
                out[..2].copy_from_slice(&half(v.scale_code(r, b)));
                out[2..4].copy_from_slice(&half(v.min_code(r, b)? ^ 0x8000));
                (0, 4)
            };
            let mut qh = 0u32;
            for (j, &c) in codes.iter().enumerate() {
                qh |= ((((c + offset) >> 4) & 1) as u32) << j;
            }
            out[qh_at..qh_at + 4].copy_from_slice(&qh.to_le_bytes());
            pack_nibbles(codes, offset, &mut out[qh_at + 4..qh_at + 20]);
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = super_pair(v, r, b)?;
            out[..2].copy_from_slice(&f16_bits(d));
            out[2..4].copy_from_slice(&f16_bits(dmin));
            let mut s = [0u8; 8];
            let mut m = [0u8; 8];
            for j in 0..8 {
                s[j] = v.scale_code(r, b * 8 + j) as u8;
                m[j] = v.min_code(r, b * 8 + j)? as u8;
            }
            pack_k_scales(&s, &m, &mut out[4..16]);
            let qs_at = if ty == GgmlType::Q5_K {
                let qh = &mut out[16..48];
                qh.fill(0);
                for (i, &c) in codes.iter().enumerate() {
                    qh[i % 32] |= (((c >> 4) & 1) as u8) << (i / 32);
                }
                48
            } else {
                16
            };
            let qs = &mut out[qs_at..qs_at + 128];
            for c in 0..4 {
                for l in 0..32 {
                    let lo = codes[64 * c + l] & 15;
                    let hi = codes[64 * c + 32 + l] & 15;
                    qs[32 * c + l] = (lo | (hi << 4)) as u8;
                }
            }
        }
        GgmlType::Q6_K => {
            let d = super_scale(v, r, b)?;
            let (ql, rest) = out.split_at_mut(128);
            let (qh, rest) = rest.split_at_mut(64);
            let (scales, d_out) = rest.split_at_mut(16);
            ql.fill(0);
            qh.fill(0);
            for (i, &c) in codes.iter().enumerate() {
                let u = (c + 32) as u8;
                let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
                ql[64 * h + 32 * (g & 1) + l] |= (u & 15) << (4 * (g >> 1));
                qh[32 * h + l] |= (u >> 4) << (2 * g);
            }
            for (j, s) in scales.iter_mut().enumerate() {
                *s = v.scale_code(r, b * 16 + j) as i8 as u8;
            }
            d_out.copy_from_slice(&f16_bits(d));
        }
        GgmlType::Q2_K | GgmlType::Q3_K => {
            let (hmask_len, scales_len) = if ty == GgmlType::Q3_K {
                (32, 12)
            } else {
                (0, 16)
            };
            let (pre, rest) = out.split_at_mut(if ty == GgmlType::Q3_K { hmask_len } else { 16 });
            let (qs, rest) = rest.split_at_mut(64);
            qs.fill(0);
            pre.fill(0);
            for (i, &c) in codes.iter().enumerate() {
                let u = if ty == GgmlType::Q3_K { c + 4 } else { c } as u8;
                let (h, g, l) = (i / 128, (i % 128) / 32, i % 32);
                qs[32 * h + l] |= (u & 3) << (2 * g);
                if ty == GgmlType::Q3_K {
                    pre[l] |= (u >> 2) << (4 * h + g);
                }
            }
            if ty == GgmlType::Q2_K {
                for (j, s) in pre.iter_mut().enumerate() {
                    let sc = v.scale_code(r, b * 16 + j) as u8;
                    let m = v.min_code(r, b * 16 + j)? as u8;
                    *s = sc | (m << 4);
                }
                let (d, dmin) = super_pair(v, r, b)?;
                rest[..2].copy_from_slice(&f16_bits(d));
                rest[2..4].copy_from_slice(&f16_bits(dmin));
            } else {
                let (scales, d_out) = rest.split_at_mut(scales_len);
                scales.fill(0);
                for j in 0..16 {
                    let s = (v.scale_code(r, b * 16 + j) + 32) as u8;
                    scales[j % 8] |= (s & 15) << (4 * (j / 8));
                    scales[8 + j % 4] |= (s >> 4) << (2 * (j / 4));
                }
                d_out.copy_from_slice(&f16_bits(super_scale(v, r, b)?));
            }
        }
        other => return Err(GgufError::UnsupportedType(other)),
    }
    Ok(())
}

/// Two 4-bit values per byte, ggml's pairing: byte j holds element j (low) and j+16 (high).
fn pack_nibbles(codes: &[i32], offset: i32, qs: &mut [u8]) {
    for j in 0..16 {
        let lo = (codes[j] + offset) & 15;
        let hi = (codes[j + 16] + offset) & 15;
        qs[j] = (lo | (hi << 4)) as u8;
    }
}

/// ggml's 12-byte packing of eight 6-bit scales and mins (Q4_K, Q5_K).
fn pack_k_scales(s: &[u8; 8], m: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = (s[j] & 63) | ((s[j + 4] >> 4) << 6);
        out[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (s[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
}

fn super_scale(v: &View<'_>, r: usize, b: usize) -> Result<f32> {
    let i = v.super_cell(r, b, 256);
    v.level
        .super_scales
        .get(i)
        .copied()
        .ok_or(GgufError::MissingLevel("super-block scales"))
}

fn super_pair(v: &View<'_>, r: usize, b: usize) -> Result<(f32, f32)> {
    let d = super_scale(v, r, b)?;
    let i = v.super_cell(r, b, 256);
    let dmin = v
        .level
        .super_mins
        .as_ref()
        .and_then(|m| m.get(i).copied())
        .ok_or(GgufError::MissingLevel("super-block mins"))?;
    Ok((d, dmin))
}

#[cfg(test)]
mod tests;
