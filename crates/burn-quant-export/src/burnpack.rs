//! Burn-native export: [`QuantTensor`] → Burn `QFloat` tensors and burnpack records.
//!
//! Burn 0.22 stores a quantized tensor as `DType::QFloat(QuantScheme)` plus one byte buffer:
//! the packed values, then the block scales at the scheme's scale dtype (4-byte aligned), then,
//! for a two-level scheme, one f32 per-tensor scale. Its dequantization is `scale · value`
//! (per tensor) or `(global · block_scale) · value` (per block): symmetric only, no zero-point.
//! This module writes that buffer from *our* codes and scales — nothing is re-quantized — so
//! Burn's `dequantize` equals [`QuantTensor::dequantize`] bit for bit.
//!
//! | our element format | Burn `QuantValue` |
//! |---|---|
//! | int2 narrow, ternary, binary, uint1 | `Q2S` |
//! | int2 | `Q2F` |
//! | int3, int4 narrow, uint2, uint3 | `Q4S` |
//! | int4 | `Q4F` |
//! | int5..int7, int8 narrow, uint4..uint7 | `Q8S` |
//! | int8 | `Q8F` |
//! | OCP e4m3 / e5m2 / e2m1 (FP8, MXFP8, MXFP4, NVFP4) | `E4M3` / `E5M2` / `E2M1` |
//!
//! (the narrowest value type whose range holds every code of the format; Burn's dequantization
//! reads any value type as `scale · code`, so a wider type is exact too, only larger).
//!
//! Granularity: per tensor → Burn's per-tensor level; per group along any axis → blocks of the
//! group size along that axis (a group longer than 255 becomes several blocks sharing its scale);
//! per channel → blocks that are 1 wide along the channel axis and as long as possible (≤ 255,
//! dividing the dimension) along the others, every block of a channel carrying the channel's
//! scale. So a Burn `Linear` weight `[d_input, d_output]` quantized per output channel (axis 1)
//! becomes blocks `[g, 1]`, `g` the largest divisor of `d_input` not above 255.
//!
//! Scale dtype: float scales → `F32`; f16 scales → `F16`; power-of-two and MX E8M0 scales →
//! `UE8M0` (when every scale lies in `2^-127..=2^127`, else `F32`); NVFP4 → `UE4M3` block scales
//! under an `F32` per-tensor scale; symmetric k-quant structures (Q3_K, Q6_K) → their effective
//! scales as `F32` blocks of the group size. [`BurnQuantOptions::scale_dtype`] forces another
//! dtype, checked scale by scale to be exact.
//!
//! Negative scales (the signed-extreme and MSE symmetric-scale conventions) are stored as their
//! magnitude with the cell's codes negated, in a value type that holds the negated range (int4
//! codes −8..=7 become −7..=8, so `Q8S`): Burn's scales are never negative, and the values are
//! the same numbers. Full-range int8 with negative scales is refused (code 128).
//!
//! Refused with a [`BurnpackError`] naming the spec: asymmetric specs (Burn has no zero-point),
//! unsigned 8-bit and every 9- to 16-bit integer (no Burn value holds the codes), minifloats other
//! than OCP e4m3/e5m2/e2m1 (FNUZ, MX FP6 e3m2/e2m3, IEEE-like), tensors whose block layout needs
//! more than 5 non-unit dimensions.
//!
//! Backends: Burn's CPU backend `flex` decodes integer values exactly but reads FP8 bytes as
//! integers and cannot unpack FP4 at all, so [`to_burn_qfloat`] and [`load_quantized`] refuse
//! minifloat values on a device whose `supports_dtype` says no (the data itself,
//! [`to_burn_qdata`], and records can still be written for a GPU backend). On flex, any
//! *layout* operation on a per-block QFloat tensor — including the `unsqueeze` inside
//! `burn::nn::Linear::forward` for a rank-2 input — dequantizes and re-quantizes it with Burn's
//! own absmax scales; see [`flex_relayout_is_lossless`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleRecord, ModuleSnapshot, RecordError, burn_pack};
use burn::tensor::quantization::{
    BlockSize, QPARAM_ALIGN, QuantMode, QuantScheme, QuantStore, QuantValue, ScaleDtype,
    quantized_data_len,
};
use burn::tensor::{Bytes, DType, Device, Tensor, TensorData};
use burn_quant_core::{
    Format, Granularity, Layout, Minifloat, QuantSpec, QuantTensor, ScaleQuant, ScaleRestriction,
};

/// Largest extent of one Burn block dimension (`BlockSize` stores each as a `u8`).
pub const MAX_BLOCK_DIM: usize = u8::MAX as usize;
/// Most non-unit dimensions a Burn `BlockSize` holds (after leading 1s are dropped).
pub const MAX_BLOCK_RANK: usize = BlockSize::MAX_DIMS;
/// Metadata key of the burnpack files written here: the producer.
pub const PRODUCER_KEY: &str = "burnq.producer";
/// Metadata key prefix: `burnq.spec.<param path>` holds the [`QuantSpec`] of that parameter.
pub const SPEC_KEY_PREFIX: &str = "burnq.spec.";

/// Everything that can go wrong turning a [`QuantTensor`] into Burn's representation or writing
/// and reading the records; each variant names the spec, parameter or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum BurnpackError {
    /// Burn's `QFloat` has no zero-point: `QuantMode::Symmetric` scales only.
    #[error("{spec}: Burn QFloat tensors have no zero-point (symmetric scales only)")]
    Asymmetric {
        /// The spec, printed.
        spec: String,
    },
    /// The element format has no Burn `QuantValue` that holds its codes exactly.
    #[error("{spec}: element format {format} has no Burn QuantValue: {reason}")]
    Format {
        /// The spec, printed.
        spec: String,
        /// The element format, printed.
        format: String,
        /// Why no value type fits.
        reason: String,
    },
    /// The granularity cannot be expressed with Burn's per-tensor or per-block levels.
    #[error("{spec}: no Burn block layout for shape {shape:?}: {reason}")]
    Granularity {
        /// The spec, printed.
        spec: String,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// What does not fit.
        reason: String,
    },
    /// A scale that the chosen scale dtype cannot hold exactly (or a negative / non-finite one).
    #[error("{spec}: scale {value:e} of cell {index} is not exactly representable as {dtype:?}")]
    ScaleNotRepresentable {
        /// The spec, printed.
        spec: String,
        /// Row-major index of the scale cell.
        index: usize,
        /// The scale.
        value: f32,
        /// The scale dtype that cannot hold it.
        dtype: ScaleDtype,
    },
    /// A forced scale dtype Burn does not accept at this level.
    #[error("{spec}: {dtype:?} cannot be the block scale dtype here: {reason}")]
    ScaleDtype {
        /// The spec, printed.
        spec: String,
        /// The dtype asked for.
        dtype: ScaleDtype,
        /// Why Burn refuses it.
        reason: String,
    },
    /// A code outside the range of the Burn value type chosen for the format.
    #[error("code {code} at flat index {index} is outside {value:?}'s range {min}..={max}")]
    CodeOutOfRange {
        /// Row-major index of the element.
        index: usize,
        /// The code.
        code: i32,
        /// The Burn value type.
        value: QuantValue,
        /// Smallest code the value type holds.
        min: i32,
        /// Largest code the value type holds.
        max: i32,
    },
    /// The requested store cannot hold these values in this shape.
    #[error("{policy:?} store for {value:?} values of shape {shape:?}: {reason}")]
    Store {
        /// The store policy asked for.
        policy: StorePolicy,
        /// The Burn value type.
        value: QuantValue,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Why it does not fit.
        reason: String,
    },
    /// The device's backend cannot decode these values (Burn's flex reads FP8 bytes as
    /// integers and cannot unpack FP4).
    #[error(
        "the device {device} does not support QFloat {value:?} values (supports_dtype is false); \
         write the data with to_burn_qdata / save_quantized and load it on a backend that does"
    )]
    Device {
        /// The Burn value type.
        value: QuantValue,
        /// The device, printed.
        device: String,
    },
    /// The [`QuantTensor`] contradicts its own spec (scale or level shapes, NVFP4 products).
    #[error("{spec}: inconsistent QuantTensor: {reason}")]
    Inconsistent {
        /// The spec, printed.
        spec: String,
        /// What does not agree.
        reason: String,
    },
    /// A quantized weight was given for a path that is no float parameter of the module.
    #[error("`{path}` is not a float parameter of the module (parameters: {known:?})")]
    UnknownParameter {
        /// The path given.
        path: String,
        /// The module's float parameter paths.
        known: Vec<String>,
    },
    /// A quantized weight whose shape is not the parameter's (record form) shape.
    #[error("`{path}`: quantized weight has shape {quantized:?}, the parameter {parameter:?}")]
    ShapeMismatch {
        /// The parameter path.
        path: String,
        /// Shape of the quantized weight.
        quantized: Vec<usize>,
        /// Shape of the parameter in the record.
        parameter: Vec<usize>,
    },
    /// Converting the quantized weight of one parameter failed (in-memory conversion,
    /// [`crate::qfloat::to_qfloat_model`]).
    #[error("`{path}`: {source}")]
    Parameter {
        /// The parameter path.
        path: String,
        /// Why it cannot be converted.
        #[source]
        source: Box<BurnpackError>,
    },
    /// The same path was given twice.
    #[error("`{path}` was given twice")]
    DuplicatePath {
        /// The path.
        path: String,
    },
    /// Reading or writing the burnpack container failed.
    #[error("burnpack {path}: {source}")]
    Pack {
        /// The file.
        path: PathBuf,
        /// burn-pack's error.
        #[source]
        source: burn_pack::Error,
    },
    /// Applying the record to the module failed (missing or unused tensors, shapes).
    #[error("record {path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// burn-core's error.
        #[source]
        source: RecordError,
    },
    /// File-system error (size of the written file).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, BurnpackError>;

/// How the values are laid out in Burn's buffer (Burn's `QuantStore`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StorePolicy {
    /// Packed where the last dimension allows it (`PackedU32(0)` for integers, `PackedNative(0)`
    /// for E2M1, `Native` for FP8), else `Native` (one byte per integer value; Burn's CPU
    /// backend reads it, its GPU backends do not).
    #[default]
    Auto,
    /// Always packed into u32 words along the last dimension (`PackedU32(0)`), as Burn's GPU
    /// backends expect; an error when the last dimension is not a multiple of the values per
    /// word.
    Packed,
    /// One native element per value (`Native`): i8 for integers, the bit pattern byte for FP8.
    /// Burn has no native store for 4-bit floats.
    Native,
}

/// Options of the Burn conversion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BurnQuantOptions {
    /// Value layout.
    pub store: StorePolicy,
    /// Block (or per-tensor) scale dtype; `None` picks it from the spec (see the module docs).
    /// A forced dtype must hold every scale exactly, or the conversion fails.
    pub scale_dtype: Option<ScaleDtype>,
}

impl BurnQuantOptions {
    /// The same options with another store policy.
    pub fn with_store(mut self, store: StorePolicy) -> Self {
        self.store = store;
        self
    }
    /// The same options with a forced scale dtype.
    pub fn with_scale_dtype(mut self, dtype: ScaleDtype) -> Self {
        self.scale_dtype = Some(dtype);
        self
    }
}

/// How one [`QuantTensor`] maps onto Burn's representation.
#[derive(Clone, Debug, PartialEq)]
pub struct BurnMapping {
    /// The Burn scheme (value, store, levels).
    pub scheme: QuantScheme,
    /// Block extent per dimension (full rank), `None` for a per-tensor scale.
    pub block: Option<Vec<usize>>,
    /// Scales in Burn's order: one per block (row-major over the block grid), or one.
    pub scales: Vec<f32>,
    /// The per-tensor scale of a two-level scheme (NVFP4).
    pub global: Option<f32>,
    /// Whether cells with a negative scale (the signed-extreme and MSE conventions) are stored
    /// with the scale's magnitude and negated codes: Burn's scales are never negative, and
    /// `(−q)·|s| = q·s` exactly.
    pub negated_cells: bool,
}

impl BurnMapping {
    /// Bytes of Burn's buffer for this mapping (values, scales, global scale).
    pub fn data_len(&self, shape: &[usize]) -> usize {
        quantized_data_len(&self.scheme, &shape.to_vec().into())
    }
}

/// The Burn value type that holds `format`'s codes exactly, or why none does.
pub fn burn_value(format: &Format) -> std::result::Result<QuantValue, String> {
    match format {
        Format::Minifloat(m) => {
            let m = m.with_saturating(true);
            if m == Minifloat::e4m3() {
                Ok(QuantValue::E4M3)
            } else if m == Minifloat::e5m2() {
                Ok(QuantValue::E5M2)
            } else if m == Minifloat::e2m1() {
                Ok(QuantValue::E2M1)
            } else {
                Err("Burn's minifloat values are OCP e4m3 (fn), e5m2 and e2m1 only".into())
            }
        }
        other => {
            let (lo, hi) = other.code_range();
            burn_int_value(lo, hi)
        }
    }
}

/// The narrowest Burn integer value type whose range holds the codes `lo..=hi`.
fn burn_int_value(lo: i32, hi: i32) -> std::result::Result<QuantValue, String> {
    // Narrowest first; at equal width the symmetric range, which Burn's own quantizer would
    // also pick for a narrow grid.
    const CANDIDATES: [QuantValue; 6] = [
        QuantValue::Q2S,
        QuantValue::Q2F,
        QuantValue::Q4S,
        QuantValue::Q4F,
        QuantValue::Q8S,
        QuantValue::Q8F,
    ];
    CANDIDATES
        .into_iter()
        .find(|v| {
            let (a, b) = int_range(*v);
            a <= lo && hi <= b
        })
        .ok_or_else(|| format!("codes {lo}..={hi} need more than Burn's signed 8-bit values hold"))
}

/// Integer code range of an integer Burn value type.
fn int_range(value: QuantValue) -> (i32, i32) {
    let (a, b) = value.range();
    (a as i32, b as i32)
}

fn is_minifloat(value: QuantValue) -> bool {
    matches!(
        value,
        QuantValue::E4M3 | QuantValue::E5M2 | QuantValue::E2M1
    )
}

/// Largest divisor of `n` not above [`MAX_BLOCK_DIM`].
fn block_extent(n: usize) -> usize {
    (1..=n.min(MAX_BLOCK_DIM))
        .rev()
        .find(|d| n.is_multiple_of(*d))
        .unwrap_or(1)
}

/// The Burn block (full rank) for a resolved granularity; `None` per tensor; an error for a
/// role (per output channel, per input group), which has no axis until it is resolved.
fn block_dims(layout: &Layout, shape: &[usize]) -> std::result::Result<Option<Vec<usize>>, String> {
    Ok(match layout.granularity {
        Granularity::PerTensor => None,
        g @ (Granularity::PerOutputChannel | Granularity::PerInputGroup { .. }) => {
            return Err(burn_quant_core::QuantError::UnresolvedRole { granularity: g }.to_string());
        }
        Granularity::PerChannel { axis } => Some(
            shape
                .iter()
                .enumerate()
                .map(|(d, &n)| if d == axis { 1 } else { block_extent(n) })
                .collect(),
        ),
        // A Burn block must divide the axis and stay inside one group: a divisor of both the
        // group size and the axis (so a short last group is tiled too).
        Granularity::PerGroup { axis, size } => Some(
            (0..shape.len())
                .map(|d| {
                    if d == axis {
                        block_extent(gcd(size, shape[axis]))
                    } else {
                        1
                    }
                })
                .collect(),
        ),
    })
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * dims[d + 1];
    }
    s
}

/// For every Burn block (row-major over the block grid), the index of our scale cell it lies in.
fn block_cells(layout: &Layout, block: &[usize]) -> Vec<usize> {
    let (shape, scale_shape) = (&layout.shape, &layout.scale_shape);
    let grid: Vec<usize> = shape.iter().zip(block).map(|(n, b)| n / b).collect();
    let cell_strides = strides(scale_shape);
    let n_blocks: usize = grid.iter().product();
    let mut out = Vec::with_capacity(n_blocks);
    let mut g = vec![0usize; shape.len()];
    for _ in 0..n_blocks {
        let cell = (0..shape.len())
            .map(|d| {
                // Elements per scale cell along d (the group size on a group axis, whose last
                // group may be shorter); the block's first element picks the cell.
                let per_cell = match layout.granularity {
                    Granularity::PerGroup { axis, size } if axis == d => size,
                    _ => shape[d] / scale_shape[d],
                };
                (g[d] * block[d] / per_cell) * cell_strides[d]
            })
            .sum();
        out.push(cell);
        for d in (0..shape.len()).rev() {
            g[d] += 1;
            if g[d] < grid[d] {
                break;
            }
            g[d] = 0;
        }
    }
    out
}

/// Whether `dtype` holds `s` exactly (Burn rounds scales up onto the dtype grid, so `s` is on
/// the grid iff rounding leaves it unchanged).
fn scale_exact(s: f32, dtype: ScaleDtype) -> bool {
    if !s.is_finite() || s < 0.0 {
        return false;
    }
    match dtype {
        ScaleDtype::F32 => true,
        ScaleDtype::UE8M0 => s > 0.0 && dtype.round_up(s).to_bits() == s.to_bits(),
        _ => dtype.round_up(s).to_bits() == s.to_bits(),
    }
}

/// Burn's bytes for one scale of `dtype` (native endian, as Burn's reader expects).
fn encode_scale(s: f32, dtype: ScaleDtype, out: &mut Vec<u8>) {
    match dtype {
        ScaleDtype::F32 => out.extend_from_slice(&s.to_ne_bytes()),
        ScaleDtype::F16 => out.extend_from_slice(&half::f16::from_f32(s).to_ne_bytes()),
        ScaleDtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(s).to_ne_bytes()),
        // A power of two in 2^-127..=2^127: its f32 exponent field is the E8M0 code (2^-127 is
        // the subnormal 0x0040_0000, whose exponent field 0 is E8M0's code 0 as well).
        ScaleDtype::UE8M0 => out.push((s.to_bits() >> 23) as u8),
        ScaleDtype::UE4M3 => out.push(Minifloat::e4m3().encode(s) as u8),
    }
}

fn host_f32<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data()
        .try_into_vec_as::<f32>()
        .expect("a float tensor converts to f32")
}

fn host_i32<const D: usize>(t: &Tensor<D, burn::tensor::Int>) -> Vec<i32> {
    t.to_data()
        .try_into_vec_as::<i32>()
        .expect("an int tensor converts to i32")
}

/// The scale dtype the spec implies for single-level scales.
fn implied_scale_dtype(spec: &QuantSpec, scales: &[f32]) -> ScaleDtype {
    match spec.scale.restrict {
        ScaleRestriction::PowerOfTwo { .. } | ScaleRestriction::Quantized(ScaleQuant::E8M0) => {
            if scales.iter().all(|&s| scale_exact(s, ScaleDtype::UE8M0)) {
                ScaleDtype::UE8M0
            } else {
                ScaleDtype::F32
            }
        }
        ScaleRestriction::Quantized(ScaleQuant::F16) => ScaleDtype::F16,
        // NVFP4 scales collapsed to one level (per tensor), k-quant effective scales, floats.
        _ => ScaleDtype::F32,
    }
}

/// Maps `q` onto Burn's scheme, block layout and scales, without packing the values.
pub fn burn_mapping<const D: usize>(
    q: &QuantTensor<D>,
    options: &BurnQuantOptions,
) -> Result<BurnMapping> {
    let spec = &q.spec;
    let spec_name = || spec.to_string();
    if spec.zero_point.is_asymmetric() || q.zero_points.is_some() {
        return Err(BurnpackError::Asymmetric { spec: spec_name() });
    }
    let mut scales = host_f32(&q.scales);
    // (A negative scale under any other spec is corrupt and fails the scale check below.)
    let negated_cells = spec.allows_negative_scales() && scales.iter().any(|&s| s < 0.0);
    let value = if negated_cells {
        // Negated codes of an int4 grid span −7..=8: the value type must hold both signs.
        let (lo, hi) = spec.format.code_range();
        scales.iter_mut().for_each(|s| *s = s.abs());
        burn_int_value(lo.min(-hi), hi.max(-lo))
    } else {
        burn_value(&spec.format)
    }
    .map_err(|reason| BurnpackError::Format {
        spec: spec_name(),
        format: spec.format.to_string(),
        reason,
    })?;
    let shape = q.shape().to_vec();
    let granularity_err = |reason: String| BurnpackError::Granularity {
        spec: spec_name(),
        shape: shape.clone(),
        reason,
    };
    if shape.contains(&0) {
        return Err(granularity_err("the tensor is empty".into()));
    }
    let layout = spec
        .granularity
        .layout(&shape)
        .map_err(|e| granularity_err(e.to_string()))?;
    if q.scales.dims().as_slice() != layout.scale_shape.as_slice() {
        return Err(BurnpackError::Inconsistent {
            spec: spec_name(),
            reason: format!(
                "scales have shape {:?}, the spec needs {:?}",
                q.scales.dims(),
                layout.scale_shape
            ),
        });
    }
    let block = block_dims(&layout, &shape).map_err(granularity_err)?;
    let store = choose_store(options.store, value, &shape)?;
    let mut scheme = QuantScheme::default()
        .with_value(value)
        .with_store(store)
        .with_mode(QuantMode::Symmetric);

    // NVFP4: E4M3 block scales under one f32 per-tensor scale, when the level is present.
    let two_level = match (&spec.scale.restrict, &q.scale_level, &block) {
        (ScaleRestriction::Quantized(ScaleQuant::E4M3Global), Some(level), Some(_)) => {
            let globals = level
                .super_scales
                .as_ref()
                .map(host_f32)
                .unwrap_or_default();
            let [global] = globals[..] else {
                return Err(BurnpackError::Inconsistent {
                    spec: spec_name(),
                    reason: format!("NVFP4 needs one global scale, found {}", globals.len()),
                });
            };
            if !(global.is_finite() && global > 0.0) {
                return Err(BurnpackError::Inconsistent {
                    spec: spec_name(),
                    reason: format!("NVFP4 global scale {global:e} is not a positive f32"),
                });
            }
            let e4m3 = Minifloat::e4m3();
            let block_scales: Vec<f32> = host_i32(&level.scale_codes)
                .into_iter()
                .map(|c| e4m3.decode(c as u32))
                .collect();
            if block_scales.len() != scales.len() {
                return Err(BurnpackError::Inconsistent {
                    spec: spec_name(),
                    reason: "scale codes and scales differ in count".into(),
                });
            }
            // Burn dequantizes (global · block) · value; ours is value · scale with scale the
            // same product, so the two agree exactly only if that product is our scale.
            if let Some(i) = (0..scales.len())
                .find(|&i| (global * block_scales[i]).to_bits() != scales[i].to_bits())
            {
                return Err(BurnpackError::Inconsistent {
                    spec: spec_name(),
                    reason: format!(
                        "cell {i}: scale {:e} is not global {global:e} × e4m3 {:e}",
                        scales[i], block_scales[i]
                    ),
                });
            }
            Some((block_scales, global))
        }
        _ => None,
    };

    let (cell_scales, global, dtype) = match two_level {
        Some((block_scales, global)) => {
            let dtype = options.scale_dtype.unwrap_or(ScaleDtype::UE4M3);
            // Burn's `quantizable`: block scales under a per-tensor scale must stay within f16's
            // range, or normalising by the global scale drives it subnormal.
            if dtype.max_representable() > half::f16::MAX.to_f32() {
                return Err(BurnpackError::ScaleDtype {
                    spec: spec_name(),
                    dtype,
                    reason: "block scales under an f32 per-tensor scale must fit f16's range \
                             (UE4M3 or F16)"
                        .into(),
                });
            }
            (block_scales, Some(global), dtype)
        }
        None => {
            let dtype = options
                .scale_dtype
                .unwrap_or_else(|| implied_scale_dtype(spec, &scales));
            (scales, None, dtype)
        }
    };
    if let Some(index) = cell_scales.iter().position(|&s| !scale_exact(s, dtype)) {
        return Err(BurnpackError::ScaleNotRepresentable {
            spec: spec_name(),
            index,
            value: cell_scales[index],
            dtype,
        });
    }

    let burn_scales = match &block {
        None => {
            scheme = scheme.per_tensor(dtype);
            cell_scales
        }
        Some(b) => {
            let first_non_unit = b.iter().position(|&e| e != 1).unwrap_or(b.len());
            if b.len() - first_non_unit > MAX_BLOCK_RANK {
                return Err(granularity_err(format!(
                    "block {b:?} has more than {MAX_BLOCK_RANK} dimensions after its leading 1s"
                )));
            }
            let dims: Vec<u8> = b
                .iter()
                .map(|&e| u8::try_from(e).expect("block extents are at most 255 by construction"))
                .collect();
            scheme = scheme.per_block(dims, dtype);
            if global.is_some() {
                // Burn stores the per-tensor scale of a two-level scheme as f32 only.
                scheme = scheme.per_tensor(ScaleDtype::F32);
            }
            block_cells(&layout, b)
                .into_iter()
                .map(|c| cell_scales[c])
                .collect()
        }
    };
    Ok(BurnMapping {
        scheme,
        block,
        scales: burn_scales,
        global,
        negated_cells,
    })
}

/// The Burn store for `value` in `shape` under `policy`.
fn choose_store(policy: StorePolicy, value: QuantValue, shape: &[usize]) -> Result<QuantStore> {
    let last = shape.last().copied().unwrap_or(1);
    let per_word = 32 / value.size_bits();
    let err = |reason: String| BurnpackError::Store {
        policy,
        value,
        shape: shape.to_vec(),
        reason,
    };
    // Burn packs each row of the last dimension separately (padding per row) while its CPU
    // reader unpacks the whole buffer as one run; they agree only when rows fill whole words.
    let fills_words = last.is_multiple_of(per_word);
    match (policy, value) {
        (StorePolicy::Native, QuantValue::E2M1) => {
            Err(err("Burn has no native store for 4-bit floats".into()))
        }
        (StorePolicy::Native, _) => Ok(QuantStore::Native),
        (StorePolicy::Packed, _) if fills_words => Ok(QuantStore::PackedU32(0)),
        (StorePolicy::Packed, _) => Err(err(format!(
            "the last dimension ({last}) is not a multiple of {per_word} values per u32"
        ))),
        (StorePolicy::Auto, QuantValue::E4M3 | QuantValue::E5M2) => Ok(QuantStore::Native),
        (StorePolicy::Auto, QuantValue::E2M1) if last.is_multiple_of(2) => {
            Ok(QuantStore::PackedNative(0))
        }
        (StorePolicy::Auto, QuantValue::E2M1) => Err(err(format!(
            "the last dimension ({last}) is odd; E2M1 packs two values per byte"
        ))),
        (StorePolicy::Auto, _) if fills_words => Ok(QuantStore::PackedU32(0)),
        (StorePolicy::Auto, _) => Ok(QuantStore::Native),
    }
}

/// The values of `codes` laid out as `store` holds them (row-major, LSB first).
fn pack_values(codes: &[i32], value: QuantValue, store: QuantStore) -> Bytes {
    let bits = value.size_bits();
    let mask = (1u32 << bits) - 1;
    match store {
        QuantStore::Native => Bytes::from_bytes_vec(codes.iter().map(|&c| c as u8).collect()),
        QuantStore::PackedNative(_) => Bytes::from_bytes_vec(
            codes
                .chunks(8 / bits)
                .map(|chunk| {
                    chunk.iter().enumerate().fold(0u8, |byte, (i, &c)| {
                        byte | (((c as u32 & mask) as u8) << (i * bits))
                    })
                })
                .collect(),
        ),
        // u32 words, so the buffer is 4-byte aligned for Burn's `cast_slice::<u32>`.
        QuantStore::PackedU32(_) => Bytes::from_elems(
            codes
                .chunks(32 / bits)
                .map(|chunk| {
                    chunk.iter().enumerate().fold(0u32, |word, (i, &c)| {
                        word | ((c as u32 & mask) << (i * bits))
                    })
                })
                .collect::<Vec<u32>>(),
        ),
    }
}

/// Burn's `QFloat` data for `q`: our codes packed as Burn stores them, our scales, no
/// re-quantization. Backend independent (a record can be written for any backend).
pub fn to_burn_qdata<const D: usize>(
    q: &QuantTensor<D>,
    options: &BurnQuantOptions,
) -> Result<TensorData> {
    let mapping = burn_mapping(q, options)?;
    let value = mapping.scheme.value;
    let mut codes = host_i32(&q.codes);
    if mapping.negated_cells {
        // Each element's cell sign, spread by the core's own dequantization: codes 1 under
        // scales ±1 dequantize to exactly ±1.
        let signs = QuantTensor {
            codes: q.codes.ones_like(),
            scales: q.scales.clone().sign(),
            zero_points: None,
            scale_level: None,
            spec: q.spec,
        }
        .dequantize();
        for (c, s) in codes.iter_mut().zip(host_f32(&signs)) {
            if s < 0.0 {
                *c = -*c;
            }
        }
    }
    let (lo, hi) = if is_minifloat(value) {
        (0, (1i32 << value.size_bits()) - 1)
    } else {
        int_range(value)
    };
    if let Some(index) = codes.iter().position(|c| !(lo..=hi).contains(c)) {
        return Err(BurnpackError::CodeOutOfRange {
            index,
            code: codes[index],
            value,
            min: lo,
            max: hi,
        });
    }
    let mut bytes = pack_values(&codes, value, mapping.scheme.store);
    let dtype = mapping.scheme.scale_dtype();
    let mut scale_bytes = Vec::with_capacity(mapping.scales.len() * 4);
    for &s in &mapping.scales {
        encode_scale(s, dtype, &mut scale_bytes);
    }
    bytes.extend_from_byte_slice_aligned(&scale_bytes, QPARAM_ALIGN);
    if let Some(global) = mapping.global {
        bytes.extend_from_byte_slice_aligned(&global.to_ne_bytes(), QPARAM_ALIGN);
    }
    let shape = q.shape().to_vec();
    debug_assert_eq!(bytes.len(), mapping.data_len(&shape));
    Ok(TensorData::from_bytes(
        bytes,
        shape,
        DType::QFloat(mapping.scheme),
    ))
}

/// `q` as a Burn quantized tensor on `device` (default options): Burn's `dequantize` of it equals
/// [`QuantTensor::dequantize`] bit for bit.
///
/// Minifloat values need a backend whose `supports_dtype` accepts the scheme (not flex, which
/// reads FP8 bytes as integers); integer values load on every backend that takes the store.
pub fn to_burn_qfloat<const D: usize>(q: &QuantTensor<D>, device: &Device) -> Result<Tensor<D>> {
    to_burn_qfloat_with(q, device, &BurnQuantOptions::default())
}

/// [`to_burn_qfloat`] with explicit options.
pub fn to_burn_qfloat_with<const D: usize>(
    q: &QuantTensor<D>,
    device: &Device,
    options: &BurnQuantOptions,
) -> Result<Tensor<D>> {
    let data = to_burn_qdata(q, options)?;
    check_device(data.dtype(), device)?;
    Ok(Tensor::from_data(data, device))
}

/// Refuses minifloat QFloat data on a device that does not declare support for it.
pub(crate) fn check_device(dtype: DType, device: &Device) -> Result<()> {
    if let DType::QFloat(scheme) = dtype
        && is_minifloat(scheme.value)
        && !device.supports_dtype(dtype)
    {
        return Err(BurnpackError::Device {
            value: scheme.value,
            device: format!("{device:?}"),
        });
    }
    Ok(())
}

/// Whether Burn's flex backend keeps `q`'s values through a layout operation (reshape,
/// transpose, the `unsqueeze` in `burn::nn::Linear::forward`): per-tensor always; per-block only
/// if Burn's dynamic re-quantization with its own absmax scales (which flex runs on every layout
/// operation of a per-block tensor) reproduces the values bit for bit. Runs that
/// re-quantization on `Device::flex()` and compares.
pub fn flex_relayout_is_lossless<const D: usize>(q: &QuantTensor<D>) -> Result<bool> {
    let device = &Device::flex();
    let data = to_burn_qdata(q, &BurnQuantOptions::default())?;
    let DType::QFloat(scheme) = data.dtype() else {
        unreachable!("to_burn_qdata returns QFloat data")
    };
    if scheme.block_size().is_none() {
        return Ok(true);
    }
    check_device(data.dtype(), device)?;
    let exact = Tensor::<D>::from_data(data, device).dequantize();
    let again = exact.clone().quantize_dynamic(&scheme).dequantize();
    let bits = |t: Tensor<D>| -> Vec<u32> { host_f32(&t).iter().map(|v| v.to_bits()).collect() };
    Ok(bits(exact) == bits(again))
}

/// Quantized weights for a record, keyed by parameter path (`"fc1.weight"`, as Burn's records
/// name them: field names joined by dots, `Vec` indices and enum variants included).
#[derive(Clone, Debug, Default)]
pub struct QuantizedWeights {
    entries: BTreeMap<String, (TensorData, String)>,
}

impl QuantizedWeights {
    /// No weights yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `q` as the value of parameter `path` (default options).
    pub fn insert<const D: usize>(
        &mut self,
        path: impl Into<String>,
        q: &QuantTensor<D>,
    ) -> Result<&mut Self> {
        self.insert_with(path, q, &BurnQuantOptions::default())
    }

    /// Adds `q` as the value of parameter `path`.
    pub fn insert_with<const D: usize>(
        &mut self,
        path: impl Into<String>,
        q: &QuantTensor<D>,
        options: &BurnQuantOptions,
    ) -> Result<&mut Self> {
        let path = path.into();
        if self.entries.contains_key(&path) {
            return Err(BurnpackError::DuplicatePath { path });
        }
        let data = to_burn_qdata(q, options)?;
        self.entries.insert(path, (data, q.spec.to_string()));
        Ok(self)
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The parameter paths, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Burn's data for one path.
    pub fn data(&self, path: &str) -> Option<&TensorData> {
        self.entries.get(path).map(|(d, _)| d)
    }
}

/// What [`save_quantized`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSummary {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// Tensors in the record.
    pub tensors: usize,
    /// Of which quantized.
    pub quantized: usize,
    /// Bytes of the quantized tensors' data (values and scales).
    pub quantized_data_bytes: u64,
    /// Bytes those tensors took in the module's own dtype.
    pub replaced_float_bytes: u64,
}

/// Saves `module`'s record as a burnpack file at `path` (exactly that path, no extension added),
/// with the parameters named in `weights` replaced by their Burn `QFloat` data. The file is
/// written to a scratch sibling, synced and renamed into place. Paths, parameter ids and the
/// record (save-form) shapes are the module's, so the file loads into the float model type with
/// [`load_quantized`] or `module.load_record(ModuleRecord::load(path)?)`.
pub fn save_quantized<M: Module>(
    module: &M,
    weights: &QuantizedWeights,
    path: impl AsRef<Path>,
) -> Result<RecordSummary> {
    let path = path.as_ref();
    let mut tensors = module.collect(None, None, false);
    let mut used = BTreeSet::new();
    let (mut quantized_data_bytes, mut replaced_float_bytes) = (0u64, 0u64);
    for t in tensors.iter_mut() {
        let Some((data, _)) = weights.entries.get(&t.name) else {
            continue;
        };
        if !t.dtype.is_float() {
            continue;
        }
        if data.shape().as_slice() != t.shape.as_slice() {
            return Err(BurnpackError::ShapeMismatch {
                path: t.name.clone(),
                quantized: data.shape().to_vec(),
                parameter: t.shape.to_vec(),
            });
        }
        replaced_float_bytes += t.byte_len() as u64;
        quantized_data_bytes += data.bytes().len() as u64;
        let (bytes, shape, dtype) = data.clone().into_parts();
        *t = burn_pack::Tensor::new(t.name.clone(), dtype, shape, t.param_id, bytes);
        used.insert(t.name.clone());
    }
    if let Some(unknown) = weights.entries.keys().find(|p| !used.contains(*p)) {
        return Err(BurnpackError::UnknownParameter {
            path: unknown.clone(),
            known: tensors
                .iter()
                .filter(|t| t.dtype.is_float() || used.contains(&t.name))
                .map(|t| t.name.clone())
                .collect(),
        });
    }
    let n_tensors = tensors.len();
    let mut writer = burn_pack::Writer::new(tensors)
        .auto_extension(false)
        .with_metadata(
            PRODUCER_KEY,
            concat!("burn-quant-export ", env!("CARGO_PKG_VERSION")),
        );
    for (p, (_, spec)) in &weights.entries {
        writer = writer.with_metadata(&format!("{SPEC_KEY_PREFIX}{p}"), spec);
    }
    let pack_err = |source| BurnpackError::Pack {
        path: path.to_path_buf(),
        source,
    };
    writer.write_to_file(path).map_err(pack_err)?;
    let file_bytes = std::fs::metadata(path)
        .map_err(|source| BurnpackError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok(RecordSummary {
        path: path.to_path_buf(),
        file_bytes,
        tensors: n_tensors,
        quantized: used.len(),
        quantized_data_bytes,
        replaced_float_bytes,
    })
}

/// Loads the burnpack record at `path` into `module` (typically a freshly initialised *float*
/// model of the type that was saved): quantized parameters become Burn `QFloat` tensors, the
/// others keep their dtype. Refuses minifloat QFloat tensors on a device that does not support
/// them (Burn's flex would silently misread FP8 and panic on FP4).
pub fn load_quantized<M: Module>(module: M, path: impl AsRef<Path>) -> Result<M> {
    let path = path.as_ref();
    let pack_err = |source| BurnpackError::Pack {
        path: path.to_path_buf(),
        source,
    };
    // Only the header and metadata are read here; tensor data stays on disk.
    let tensors = burn_pack::Reader::from_file_exact(path)
        .and_then(burn_pack::Reader::into_tensors)
        .map_err(pack_err)?;
    let devices = module.devices();
    for t in &tensors {
        for device in &devices {
            check_device(t.dtype, device)?;
        }
    }
    let record_err = |source| BurnpackError::Record {
        path: path.to_path_buf(),
        source,
    };
    let record = ModuleRecord::load(path).map_err(record_err)?;
    module.try_load_record(record).map_err(record_err)
}

/// One tensor of a burnpack file, as `burnq inspect` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedTensorInfo {
    /// Parameter path, e.g. `fc1.weight`.
    pub name: String,
    /// Burn dtype, e.g. `F32` or `QFloat(QuantScheme { … })`, as Burn prints it.
    pub dtype: String,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Bytes of data in the file.
    pub bytes: usize,
}

/// The tensors (sorted by name) and the string metadata of the burnpack file at `path`, read
/// from its header alone: no tensor data is decoded.
pub fn describe(path: impl AsRef<Path>) -> Result<(Vec<PackedTensorInfo>, Vec<(String, String)>)> {
    let path = path.as_ref();
    let pack_err = |source| BurnpackError::Pack {
        path: path.to_path_buf(),
        source,
    };
    let reader = burn_pack::Reader::from_file_exact(path).map_err(pack_err)?;
    let metadata: Vec<(String, String)> = reader
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tensors = reader
        .into_tensors()
        .map_err(pack_err)?
        .into_iter()
        .map(|t| PackedTensorInfo {
            dtype: format!("{:?}", t.dtype),
            shape: t.shape.iter().copied().collect(),
            bytes: t.byte_len(),
            name: t.name,
        })
        .collect();
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::activation::relu;
    use burn::tensor::quantization::QuantizedBytes;
    use burn_quant_core::{Pow2Mode, ScaleStat, SymmetricScale, ZeroPoint, quantize};
    use cubecl_common::{e2m1, e4m3, e5m2, ue8m0};

    /// Deterministic pseudo-normal data (xorshift + sum of uniforms), with a few outliers so
    /// that blocks get different scales.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|i| {
                let g = (0..4).map(|_| uniform()).sum::<f32>() - 2.0;
                if i % 97 == 5 { g * 6.0 } else { g }
            })
            .collect()
    }

    fn tensor<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(data(n, seed), shape), &Device::flex())
    }

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        host_f32(&t).iter().map(|v| v.to_bits()).collect()
    }

    /// Burn's flex `dequantize` of our export equals our dequantization bit for bit.
    fn assert_flex_exact<const D: usize>(x: Tensor<D>, spec: QuantSpec, options: BurnQuantOptions) {
        let q = quantize(x, &spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        let data = to_burn_qdata(&q, &options).unwrap_or_else(|e| panic!("{spec}: {e}"));
        let DType::QFloat(scheme) = data.dtype() else {
            panic!("{spec}: not QFloat")
        };
        // The buffer is as long as Burn computes it for the scheme (values, scales).
        assert_eq!(
            data.bytes().len(),
            quantized_data_len(&scheme, data.shape()),
            "{spec} ({options:?})"
        );
        let burn = to_burn_qfloat_with(&q, &Device::flex(), &options)
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert!(matches!(burn.dtype(), DType::QFloat(_)), "{spec}");
        let ours = bits(q.dequantize());
        let theirs = bits(burn.dequantize());
        // Bit for bit, except that a zero code under a negative scale (stored negated under
        // its magnitude) is −0 in ours and +0 in Burn's.
        let diff = ours
            .iter()
            .zip(&theirs)
            .filter(|&(&a, &b)| a != b && f32::from_bits(a) != f32::from_bits(b))
            .count();
        assert_eq!(diff, 0, "{spec} ({options:?}): {diff} values differ");
    }

    fn int(bits: u8, narrow: bool) -> Format {
        Format::Int {
            bits,
            signed: true,
            narrow,
        }
    }

    #[test]
    fn every_integer_scheme_dequantizes_bit_exactly_on_flex() {
        let per_channel = |f: Format, axis| QuantSpec::new(f, Granularity::PerChannel { axis });
        let per_group =
            |f: Format, axis, size| QuantSpec::new(f, Granularity::PerGroup { axis, size });
        let per_tensor = |f: Format| QuantSpec::new(f, Granularity::PerTensor);
        // [d_input, d_output] with d_input > 255: per output channel needs blocks [160, 1].
        let specs_2d = [
            QuantSpec::int8_weight_per_tensor(),
            QuantSpec::int8_weight_per_channel(),
            per_channel(int(8, false), 0),
            per_tensor(int(8, false)).with_stat(ScaleStat::mse()),
            QuantSpec::int4_weight_per_group(20),
            QuantSpec::int4_weight_per_group(320),
            per_group(int(4, true), 1, 8),
            per_channel(int(3, false), 1),
            per_channel(int(2, false), 1),
            per_channel(int(2, true), 1),
            per_tensor(int(6, false)),
            per_channel(Format::uint(4), 1),
            QuantSpec::ternary_weight(),
            QuantSpec::binary_weight(),
            QuantSpec::int8_weight_per_channel().with_pow2_scale(Pow2Mode::Ceil),
            QuantSpec::mxint8(),
            QuantSpec::gguf_q8_0(),
            QuantSpec::gguf_q4_0(),
            // Short last groups: 640 = 2·256 + 128 (Burn blocks of 128), 640 = 6·96 + 64
            // (blocks of 32), 32 = 3·10 + 2 along the outputs (blocks of 2).
            QuantSpec::int4_weight_per_group(256),
            QuantSpec::int4_weight_per_group(96),
            per_group(int(4, true), 1, 10),
            // Symmetric-scale conventions: negative scales (signed extreme, MSE) in f32 and
            // f16 scale tensors.
            QuantSpec::int4_weight_per_group(20)
                .with_symmetric_scale(SymmetricScale::SignedExtreme),
            QuantSpec::int4_weight_per_group(32).with_symmetric_scale(SymmetricScale::NegQmin),
            per_channel(int(6, false), 1).with_symmetric_scale(SymmetricScale::mse()),
            QuantSpec::gguf_q4_0().with_symmetric_scale(SymmetricScale::SignedExtreme),
        ];
        for spec in specs_2d {
            for store in [StorePolicy::Auto, StorePolicy::Native, StorePolicy::Packed] {
                assert_flex_exact(
                    tensor([640, 32], 7),
                    spec,
                    BurnQuantOptions::default().with_store(store),
                );
            }
        }
        // Symmetric k-quant structures: effective scales as f32 blocks [16, 1].
        for spec in [
            QuantSpec::gguf_q6_k(),
            QuantSpec::gguf_q3_k(),
            QuantSpec::gguf_q3_k().with_symmetric_scale(SymmetricScale::SignedExtreme),
        ] {
            assert_flex_exact(tensor([512, 16], 3), spec, BurnQuantOptions::default());
        }
        // Rank 3 and 4: groups along a middle axis, per output channel of a conv weight.
        assert_flex_exact(
            tensor([4, 64, 24], 11),
            per_group(int(4, true), 1, 16),
            BurnQuantOptions::default(),
        );
        assert_flex_exact(
            tensor([16, 8, 3, 3], 13),
            per_channel(int(8, true), 0),
            BurnQuantOptions::default(),
        );
        // A last dimension that does not fill u32 words falls back to native bytes.
        assert_flex_exact(
            tensor([40, 6], 17),
            QuantSpec::int4_weight_per_group(8),
            BurnQuantOptions::default(),
        );
    }

    #[test]
    fn the_mapping_follows_the_spec() {
        let q = quantize(tensor([300, 32], 1), &QuantSpec::int8_weight_per_channel()).unwrap();
        let m = burn_mapping(&q, &BurnQuantOptions::default()).unwrap();
        assert_eq!(m.block, Some(vec![150, 1]));
        assert_eq!(m.scales.len(), 2 * 32);
        let expected = QuantScheme::default()
            .with_value(QuantValue::Q8S)
            .with_store(QuantStore::PackedU32(0))
            .per_block([150, 1], ScaleDtype::F32);
        assert_eq!(m.scheme, expected);
        // Both row blocks of a column carry that column's scale.
        let scales = host_f32(&q.scales);
        assert_eq!(&m.scales[..32], &scales[..]);
        assert_eq!(&m.scales[32..], &scales[..]);
        // 300·32 int8 values + 64 f32 scales.
        assert_eq!(m.data_len(&[300, 32]), 300 * 32 + 64 * 4);

        let cases: [(QuantSpec, QuantValue, ScaleDtype, Option<Vec<usize>>); 8] = [
            (
                QuantSpec::int4_weight_per_group(32),
                QuantValue::Q4F,
                ScaleDtype::F32,
                Some(vec![32, 1]),
            ),
            (
                QuantSpec::int4_weight_per_group(512),
                QuantValue::Q4F,
                ScaleDtype::F32,
                Some(vec![128, 1]),
            ),
            (
                QuantSpec::ternary_weight(),
                QuantValue::Q2S,
                ScaleDtype::F32,
                None,
            ),
            (
                QuantSpec::binary_weight(),
                QuantValue::Q2S,
                ScaleDtype::F32,
                Some(vec![128, 1]),
            ),
            (
                QuantSpec::mxfp8_e4m3(),
                QuantValue::E4M3,
                ScaleDtype::UE8M0,
                Some(vec![32, 1]),
            ),
            (
                QuantSpec::mxfp4(),
                QuantValue::E2M1,
                ScaleDtype::UE8M0,
                Some(vec![32, 1]),
            ),
            (
                QuantSpec::gguf_q8_0(),
                QuantValue::Q8F,
                ScaleDtype::F16,
                Some(vec![32, 1]),
            ),
            (
                QuantSpec::int8_weight_per_tensor().with_pow2_scale(Pow2Mode::Round),
                QuantValue::Q8S,
                ScaleDtype::UE8M0,
                None,
            ),
        ];
        for (spec, value, dtype, block) in cases {
            let q = quantize(tensor([1024, 16], 2), &spec).unwrap();
            let m = burn_mapping(&q, &BurnQuantOptions::default()).unwrap();
            assert_eq!(m.scheme.value, value, "{spec}");
            assert_eq!(m.scheme.scale_dtype(), dtype, "{spec}");
            assert_eq!(m.block, block, "{spec}");
            assert_eq!(m.global, None, "{spec}");
        }
        let q = quantize(tensor([64, 16], 2), &QuantSpec::nvfp4()).unwrap();
        let m = burn_mapping(&q, &BurnQuantOptions::default()).unwrap();
        assert_eq!(
            m.scheme,
            QuantScheme::default()
                .with_value(QuantValue::E2M1)
                .with_store(QuantStore::PackedNative(0))
                .per_block([16, 1], ScaleDtype::UE4M3)
                .per_tensor(ScaleDtype::F32)
        );
        assert!(m.global.is_some());
    }

    /// Reads Burn's buffer with an independent decoder: values and scales from the byte layout
    /// Burn documents (values, then 4-byte-aligned scales, then the f32 global scale), element
    /// bit patterns through cubecl's `e4m3` / `e5m2` / `e2m1` types, E8M0/E4M3 scales through
    /// cubecl's `ue8m0` / `e4m3`; then `(global · block) · value`, Burn's order.
    fn decode_minifloat_data(data: &TensorData, block: &[usize]) -> Vec<f32> {
        let DType::QFloat(scheme) = data.dtype() else {
            panic!("not QFloat")
        };
        let shape = data.shape().to_vec();
        let n: usize = shape.iter().product();
        let raw = data.as_bytes();
        let value_bytes = match scheme.value {
            QuantValue::E2M1 => n / 2,
            _ => n,
        };
        let values: Vec<f32> = match scheme.value {
            QuantValue::E4M3 => raw[..n]
                .iter()
                .map(|&b| e4m3::from_bits(b).to_f32())
                .collect(),
            QuantValue::E5M2 => raw[..n]
                .iter()
                .map(|&b| e5m2::from_bits(b).to_f32())
                .collect(),
            QuantValue::E2M1 => raw[..value_bytes]
                .iter()
                .flat_map(|&b| [b & 0xF, b >> 4])
                .map(|nib| e2m1::from_bits(nib).to_f32())
                .collect(),
            other => panic!("{other:?}"),
        };
        let scales_at = value_bytes.next_multiple_of(4);
        let n_blocks: usize = shape.iter().zip(block).map(|(s, b)| s / b).product();
        let block_scales: Vec<f32> = raw[scales_at..scales_at + n_blocks]
            .iter()
            .map(|&b| match scheme.scale_dtype() {
                ScaleDtype::UE8M0 => ue8m0::from_bits(b).to_f32(),
                ScaleDtype::UE4M3 => e4m3::from_bits(b).to_f32(),
                other => panic!("{other:?}"),
            })
            .collect();
        let global = (scheme.num_levels() == 2).then(|| {
            let at = (scales_at + n_blocks).next_multiple_of(4);
            f32::from_ne_bytes(raw[at..at + 4].try_into().unwrap())
        });
        assert_eq!(
            raw.len(),
            quantized_data_len(&scheme, &shape.clone().into())
        );
        let layout = burn::tensor::quantization::BlockLayout::new(
            &shape.clone().into(),
            &BlockSize::new(block.iter().map(|&b| b as u8).collect::<Vec<_>>()),
        );
        values
            .iter()
            .enumerate()
            .map(|(i, v)| global.unwrap_or(1.0) * block_scales[layout.block_of(i)] * v)
            .collect()
    }

    #[test]
    fn minifloat_data_decodes_exactly_with_third_party_decoders() {
        for spec in [
            QuantSpec::mxfp8_e4m3(),
            QuantSpec::mxfp8_e5m2(),
            QuantSpec::mxfp4(),
            QuantSpec::nvfp4(),
        ] {
            let q = quantize(tensor([128, 24], 5), &spec).unwrap();
            let m = burn_mapping(&q, &BurnQuantOptions::default()).unwrap();
            let data = to_burn_qdata(&q, &BurnQuantOptions::default()).unwrap();
            let theirs: Vec<u32> = decode_minifloat_data(&data, m.block.as_deref().unwrap())
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(bits(q.dequantize()), theirs, "{spec}");
        }
        // Per-tensor FP8 with a float scale: Burn's own reader splits values from scales.
        let q = quantize(tensor([32, 8], 9), &QuantSpec::fp8_e4m3_weight_per_tensor()).unwrap();
        let data = to_burn_qdata(&q, &BurnQuantOptions::default()).unwrap();
        let DType::QFloat(scheme) = data.dtype() else {
            unreachable!()
        };
        let (values, scales) = QuantizedBytes {
            bytes: data.bytes().clone(),
            scheme,
            shape: data.shape().clone(),
        }
        .into_vec_i8();
        let theirs: Vec<u32> = values
            .iter()
            .map(|&b| (scales.block[0] * e4m3::from_bits(b as u8).to_f32()).to_bits())
            .collect();
        assert_eq!(bits(q.dequantize()), theirs);
    }

    #[test]
    fn flex_refuses_minifloats_because_it_reads_fp8_bytes_as_integers() {
        let device = Device::flex();
        let q = quantize(tensor([16, 8], 4), &QuantSpec::fp8_e4m3_weight_per_tensor()).unwrap();
        let err = to_burn_qfloat(&q, &device).unwrap_err();
        assert!(
            matches!(
                err,
                BurnpackError::Device {
                    value: QuantValue::E4M3,
                    ..
                }
            ),
            "{err}"
        );
        for spec in [QuantSpec::mxfp4(), QuantSpec::nvfp4()] {
            let q = quantize(tensor([64, 8], 4), &spec).unwrap();
            assert!(matches!(
                to_burn_qfloat(&q, &device),
                Err(BurnpackError::Device { .. })
            ));
        }
        // Why: flex turns the E4M3 pattern 0x38 (1.0) into the integer 56.
        let scheme = QuantScheme::default()
            .with_value(QuantValue::E4M3)
            .with_store(QuantStore::Native)
            .per_tensor(ScaleDtype::F32);
        let data = TensorData::quantized(vec![0x38i8; 4], [4], scheme, &[1.0], None);
        let read = host_f32(&Tensor::<1>::from_data(data, &device).dequantize());
        assert_eq!(
            read,
            vec![56.0; 4],
            "flex now decodes FP8: relax check_device"
        );
        assert!(!device.supports_dtype(DType::QFloat(scheme)));
    }

    #[test]
    fn unsupported_specs_are_typed_errors_naming_the_spec() {
        let x = || tensor([64, 16], 21);
        let opts = BurnQuantOptions::default();
        let mapping = |spec: QuantSpec| burn_mapping(&quantize(x(), &spec).unwrap(), &opts);
        let asym = mapping(QuantSpec::int4_weight_per_group(32).asymmetric()).unwrap_err();
        assert!(matches!(asym, BurnpackError::Asymmetric { .. }), "{asym}");
        assert!(
            asym.to_string().contains("int4 asym per-group(axis 0, 32)"),
            "{asym}"
        );
        assert!(matches!(
            mapping(
                QuantSpec::new(Format::uint(4), Granularity::PerTensor)
                    .with_zero_point(ZeroPoint::Asymmetric { learned: false })
            ),
            Err(BurnpackError::Asymmetric { .. })
        ));
        let q = quantize(tensor([256, 16], 2), &QuantSpec::gguf_q4_k()).unwrap();
        assert!(matches!(
            burn_mapping(&q, &opts),
            Err(BurnpackError::Asymmetric { .. })
        ));
        // Full-range int8 with negative scales: the negated code 128 fits no Burn value.
        let e = mapping(
            QuantSpec::new(Format::int(8), Granularity::PerChannel { axis: 1 })
                .with_symmetric_scale(SymmetricScale::SignedExtreme),
        )
        .unwrap_err();
        assert!(
            matches!(e, BurnpackError::Format { .. }) && e.to_string().contains("-128..=128"),
            "{e}"
        );
        for format in [
            Format::uint(8),
            Format::int(9),
            Format::int(16),
            Format::Minifloat(Minifloat::e3m2()),
            Format::Minifloat(Minifloat::e2m3()),
            Format::Minifloat(Minifloat::e4m3fnuz()),
            Format::Minifloat(Minifloat::ieee(5, 10)),
        ] {
            let err = mapping(QuantSpec::new(format, Granularity::PerTensor)).unwrap_err();
            assert!(
                matches!(err, BurnpackError::Format { .. }),
                "{format}: {err}"
            );
            assert!(err.to_string().contains(&format.to_string()), "{err}");
        }
        // Six non-unit block dimensions: Burn's BlockSize holds five.
        let q = quantize(
            tensor([2, 3, 2, 3, 2, 3], 1),
            &QuantSpec::new(int(8, true), Granularity::PerChannel { axis: 5 }),
        )
        .unwrap();
        assert!(matches!(
            burn_mapping(&q, &opts),
            Err(BurnpackError::Granularity { .. })
        ));
        // Float scales are not f16 values.
        let q = quantize(x(), &QuantSpec::int8_weight_per_channel()).unwrap();
        let err = burn_mapping(&q, &opts.with_scale_dtype(ScaleDtype::F16)).unwrap_err();
        assert!(
            matches!(
                err,
                BurnpackError::ScaleNotRepresentable {
                    dtype: ScaleDtype::F16,
                    ..
                }
            ),
            "{err}"
        );
        // ... but power-of-two scales are, and a forced dtype that holds them is used.
        let q = quantize(
            x(),
            &QuantSpec::int8_weight_per_channel().with_pow2_scale(Pow2Mode::Ceil),
        )
        .unwrap();
        let m = burn_mapping(&q, &opts.with_scale_dtype(ScaleDtype::F16)).unwrap();
        assert_eq!(m.scheme.scale_dtype(), ScaleDtype::F16);
        // NVFP4 block scales: F16 holds every E4M3 value; f32 blocks under an f32 global
        // are what Burn's `quantizable` refuses.
        let q = quantize(x(), &QuantSpec::nvfp4()).unwrap();
        let m = burn_mapping(&q, &opts.with_scale_dtype(ScaleDtype::F16)).unwrap();
        assert_eq!(m.scheme.scale_dtype(), ScaleDtype::F16);
        let err = burn_mapping(&q, &opts.with_scale_dtype(ScaleDtype::F32)).unwrap_err();
        assert!(
            matches!(
                err,
                BurnpackError::ScaleDtype {
                    dtype: ScaleDtype::F32,
                    ..
                }
            ),
            "{err}"
        );
        // Stores.
        let q = quantize(tensor([32, 6], 2), &QuantSpec::int4_weight_per_group(8)).unwrap();
        assert!(matches!(
            burn_mapping(&q, &opts.with_store(StorePolicy::Packed)),
            Err(BurnpackError::Store { .. })
        ));
        let q = quantize(x(), &QuantSpec::mxfp4()).unwrap();
        assert!(matches!(
            burn_mapping(&q, &opts.with_store(StorePolicy::Native)),
            Err(BurnpackError::Store { .. })
        ));
    }

    #[test]
    fn corrupted_quant_tensors_are_refused_not_packed() {
        let device = Device::flex();
        let mut q = quantize(tensor([32, 8], 3), &QuantSpec::int4_weight_per_group(16)).unwrap();
        let mut codes = host_i32(&q.codes);
        codes[37] = 9; // outside int4's -8..=7
        q.codes = Tensor::from_data(TensorData::new(codes, [32, 8]), &device);
        let err = to_burn_qdata(&q, &BurnQuantOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                BurnpackError::CodeOutOfRange {
                    index: 37,
                    code: 9,
                    ..
                }
            ),
            "{err}"
        );

        let mut q = quantize(tensor([64, 8], 3), &QuantSpec::nvfp4()).unwrap();
        let mut scales = host_f32(&q.scales);
        scales[3] *= 1.5;
        q.scales = Tensor::from_data(TensorData::new(scales, q.scales.dims()), &device);
        let err = burn_mapping(&q, &BurnQuantOptions::default()).unwrap_err();
        assert!(matches!(err, BurnpackError::Inconsistent { .. }), "{err}");

        let mut q = quantize(tensor([32, 8], 3), &QuantSpec::int8_weight_per_channel()).unwrap();
        q.scales = Tensor::from_data(TensorData::new(vec![-1.0f32; 8], [1, 8]), &device);
        let err = burn_mapping(&q, &BurnQuantOptions::default()).unwrap_err();
        assert!(
            matches!(err, BurnpackError::ScaleNotRepresentable { .. }),
            "{err}"
        );
    }

    #[derive(Module, Debug)]
    struct Mlp {
        fc1: Linear,
        fc2: Linear,
    }

    impl Mlp {
        fn new(device: &Device) -> Self {
            Self {
                fc1: LinearConfig::new(300, 48).init(device),
                fc2: LinearConfig::new(48, 16).init(device),
            }
        }
        fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
            self.fc2.forward(relu(self.fc1.forward(x)))
        }
        /// The same model with each weight replaced by `f(weight)`.
        fn map_weights(&self, f: impl Fn(&str, Tensor<2>) -> Tensor<2>) -> Self {
            let map = |name: &str, l: &Linear| Linear {
                weight: Param::from_tensor(f(name, l.weight.val())),
                bias: l.bias.clone(),
            };
            Self {
                fc1: map("fc1", &self.fc1),
                fc2: map("fc2", &self.fc2),
            }
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("burnq-burnpack-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        host_f32(&a)
            .iter()
            .zip(host_f32(&b))
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn a_quantized_record_reloads_into_the_float_model() {
        let device = Device::flex();
        let model = Mlp::new(&device);
        let q1 = quantize(model.fc1.weight.val(), &QuantSpec::int8_weight_per_tensor()).unwrap();
        let q2 = quantize(
            model.fc2.weight.val(),
            &QuantSpec::int4_weight_per_group(16),
        )
        .unwrap();
        let mut weights = QuantizedWeights::new();
        weights.insert("fc1.weight", &q1).unwrap();
        weights.insert("fc2.weight", &q2).unwrap();
        assert!(matches!(
            weights.insert("fc1.weight", &q1),
            Err(BurnpackError::DuplicatePath { .. })
        ));

        let dir = temp_dir("roundtrip");
        let path = dir.join("mlp.bpk");
        let summary = save_quantized(&model, &weights, &path).unwrap();
        assert_eq!((summary.tensors, summary.quantized), (4, 2));
        // int8: 1 byte per weight instead of 4 (+ one f32 scale); int4: half a byte (+ 3 · 16
        // f32 group scales).
        assert_eq!(summary.replaced_float_bytes, (300 * 48 + 48 * 16) * 4);
        assert_eq!(
            summary.quantized_data_bytes,
            (300 * 48 + 4) as u64 + (48 * 16 / 2 + 3 * 16 * 4) as u64
        );
        // Written through a scratch file renamed into place: nothing else is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("mlp.bpk")]);
        // Deterministic: the same model and weights give the same bytes.
        let again = dir.join("again.bpk");
        save_quantized(&model, &weights, &again).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap()
        );

        // Reload into a freshly initialised float model.
        let loaded = load_quantized(Mlp::new(&device), &path).unwrap();
        assert!(matches!(loaded.fc1.weight.val().dtype(), DType::QFloat(_)));
        assert!(matches!(loaded.fc2.weight.val().dtype(), DType::QFloat(_)));
        assert_eq!(loaded.fc1.weight.id, model.fc1.weight.id);
        assert_eq!(
            bits(loaded.fc1.weight.val().dequantize()),
            bits(q1.dequantize())
        );
        assert_eq!(
            bits(loaded.fc2.weight.val().dequantize()),
            bits(q2.dequantize())
        );
        let bias = |m: &Mlp| bits(m.fc2.bias.as_ref().unwrap().val());
        assert_eq!(bias(&loaded), bias(&model));

        // Forward against our fake-quant forward (the float model with dequantized weights).
        let fake = model.map_weights(|name, _| match name {
            "fc1" => q1.dequantize(),
            _ => q2.dequantize(),
        });
        // Rank 3 with several batches folds into one matmul on the packed weight (no layout
        // change of the weight); rank 2 goes through `unsqueeze`, which flex re-quantizes for
        // per-block weights.
        let x3 = tensor([3, 5, 300], 99);
        let d3 = max_abs_diff(loaded.forward(x3.clone()), fake.forward(x3));
        let x2 = tensor([7, 300], 98);
        let d2 = max_abs_diff(loaded.forward(x2.clone()), fake.forward(x2));
        println!("max |burn - ours|: rank 3 {d3:e}, rank 2 {d2:e}");
        assert!(d3 <= 1e-5, "{d3}");
        assert!(flex_relayout_is_lossless(&q1).unwrap());
        if flex_relayout_is_lossless(&q2).unwrap() {
            assert!(d2 <= 1e-5, "{d2}");
        }
        // Per-tensor weights survive every path, rank 2 included.
        let mut per_tensor = QuantizedWeights::new();
        per_tensor.insert("fc1.weight", &q1).unwrap();
        let path = dir.join("fc1-only.bpk");
        save_quantized(&model, &per_tensor, &path).unwrap();
        let loaded = load_quantized(Mlp::new(&device), &path).unwrap();
        assert!(matches!(loaded.fc2.weight.val().dtype(), DType::F32));
        let fake = model.map_weights(|name, w| if name == "fc1" { q1.dequantize() } else { w });
        let x2 = tensor([7, 300], 98);
        let d2 = max_abs_diff(loaded.forward(x2.clone()), fake.forward(x2));
        assert!(d2 <= 1e-5, "{d2}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Pins the Burn behaviour documented on [`flex_relayout_is_lossless`]: flex re-quantizes a
    /// per-block weight with its own absmax scales on any layout operation, so MSE-clipped
    /// group scales do not survive `Linear::forward` with a rank-2 input, while the rank-3 path
    /// (batches folded into one matmul on the untouched weight) stays exact.
    #[test]
    fn flex_requantizes_per_block_weights_on_relayout() {
        let device = Device::flex();
        let model = Mlp::new(&device);
        let spec = QuantSpec::int4_weight_per_group(20).with_stat(ScaleStat::mse());
        let q1 = quantize(model.fc1.weight.val(), &spec).unwrap();
        assert!(!flex_relayout_is_lossless(&q1).unwrap());
        let mut weights = QuantizedWeights::new();
        weights.insert("fc1.weight", &q1).unwrap();
        let dir = temp_dir("relayout");
        let path = dir.join("mlp.bpk");
        save_quantized(&model, &weights, &path).unwrap();
        let loaded = load_quantized(Mlp::new(&device), &path).unwrap();
        let fake = model.map_weights(|name, w| if name == "fc1" { q1.dequantize() } else { w });
        let x3 = tensor([3, 5, 300], 99);
        let d3 = max_abs_diff(loaded.forward(x3.clone()), fake.forward(x3));
        let x2 = tensor([7, 300], 98);
        let d2 = max_abs_diff(loaded.forward(x2.clone()), fake.forward(x2));
        println!("MSE-scaled int4 g20: max |burn - ours| rank 3 {d3:e}, rank 2 {d2:e}");
        assert!(d3 <= 1e-5, "{d3}");
        assert!(
            d2 > 1e-3,
            "flex no longer re-quantizes on relayout: {d2}; update the docs"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn record_errors_name_the_parameter() {
        let device = Device::flex();
        let model = Mlp::new(&device);
        let dir = temp_dir("errors");
        let q = quantize(model.fc1.weight.val(), &QuantSpec::int8_weight_per_tensor()).unwrap();

        let mut weights = QuantizedWeights::new();
        weights.insert("fc3.weight", &q).unwrap();
        let err = save_quantized(&model, &weights, dir.join("a.bpk")).unwrap_err();
        assert!(
            matches!(&err, BurnpackError::UnknownParameter { path, known }
                if path == "fc3.weight" && known.contains(&"fc1.weight".to_string())),
            "{err}"
        );

        let mut weights = QuantizedWeights::new();
        weights.insert("fc2.weight", &q).unwrap();
        let err = save_quantized(&model, &weights, dir.join("b.bpk")).unwrap_err();
        assert!(
            matches!(&err, BurnpackError::ShapeMismatch { path, .. } if path == "fc2.weight"),
            "{err}"
        );
        // Nothing was written by the failed saves.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);

        // An FP8 record can be written, but not loaded on flex.
        let q = quantize(
            model.fc1.weight.val(),
            &QuantSpec::fp8_e4m3_weight_per_tensor(),
        )
        .unwrap();
        let mut weights = QuantizedWeights::new();
        weights.insert("fc1.weight", &q).unwrap();
        let path = dir.join("fp8.bpk");
        save_quantized(&model, &weights, &path).unwrap();
        let err = load_quantized(Mlp::new(&device), &path).unwrap_err();
        assert!(matches!(err, BurnpackError::Device { .. }), "{err}");
        // A record of another model is refused by Burn's validation, as a typed error.
        let q = quantize(model.fc2.weight.val(), &QuantSpec::int8_weight_per_tensor()).unwrap();
        let mut weights = QuantizedWeights::new();
        weights.insert("fc2.weight", &q).unwrap();
        save_quantized(&model.fc2, &QuantizedWeights::new(), dir.join("fc2.bpk")).unwrap();
        let err = load_quantized(Mlp::new(&device), dir.join("fc2.bpk")).unwrap_err();
        assert!(matches!(err, BurnpackError::Record { .. }), "{err}");
        let err = load_quantized(Mlp::new(&device), dir.join("missing.bpk")).unwrap_err();
        assert!(matches!(err, BurnpackError::Pack { .. }), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
