//! [`QuantSpec`]: format + granularity + scale + zero-point + rounding, with presets.

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::format::{Format, Minifloat};
use crate::granularity::Granularity;
use crate::rounding::Rounding;
use crate::scale::{
    Pow2Mode, ScaleQuant, ScaleRestriction, ScaleSource, ScaleSpec, ScaleStat, SymmetricScale,
    ZeroPoint,
};
use crate::weight_layout::WeightLayout;

/// Everything that defines a quantizer: plain serde data, printable, comparable, storable in a
/// recipe. Built from a preset and customised with `with_*` methods (the Rust answer to
/// Brevitas's `.let(...)`).
///
/// Axis conventions of the explicit presets follow Burn's `Linear` layout: its weight is
/// `[d_input, d_output]`, so "per output channel" is axis 1 and "groups along the input" are
/// along axis 0. The role presets ([`QuantSpec::int8_weight_per_output_channel`],
/// [`QuantSpec::int4_weight_per_input_group`]) and builders ([`QuantSpec::per_output_channel`],
/// [`QuantSpec::per_input_group`]) leave the axis to the layer: a `QuantPlan` and the quant
/// layers [resolve](QuantSpec::resolve_for) them for each weight's [`WeightLayout`] (axis 0 of
/// a conv weight `[out, in, kh, kw]`), and check explicit axes against it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantSpec {
    /// Element grid.
    pub format: Format,
    /// Which elements share a scale.
    pub granularity: Granularity,
    /// How scales are obtained and restricted.
    pub scale: ScaleSpec,
    /// Zero-point handling.
    pub zero_point: ZeroPoint,
    /// Rounding rule of the forward pass.
    pub rounding: Rounding,
}

impl burn::config::Config for QuantSpec {}

impl Default for QuantSpec {
    fn default() -> Self {
        Self::int8_weight_per_tensor()
    }
}

/// OCP MX block size.
pub const MX_BLOCK: usize = 32;
/// NVFP4 block size.
pub const NVFP4_BLOCK: usize = 16;

impl QuantSpec {
    /// A spec from its five parts.
    pub fn new(format: Format, granularity: Granularity) -> Self {
        Self {
            format,
            granularity,
            scale: ScaleSpec::default(),
            zero_point: ZeroPoint::Symmetric,
            rounding: Rounding::NearestEven,
        }
    }

    // ----- presets -----------------------------------------------------------------------

    /// Signed int8, narrow range (−127..127), one absmax scale per tensor.
    pub fn int8_weight_per_tensor() -> Self {
        Self::new(
            Format::Int {
                bits: 8,
                signed: true,
                narrow: true,
            },
            Granularity::PerTensor,
        )
    }
    /// Signed int8, narrow range, one absmax scale per output channel of a Burn `Linear`
    /// weight `[d_input, d_output]` (axis 1).
    pub fn int8_weight_per_channel() -> Self {
        Self::new(
            Format::Int {
                bits: 8,
                signed: true,
                narrow: true,
            },
            Granularity::PerChannel { axis: 1 },
        )
    }
    /// Signed int8, narrow range, one absmax scale per output channel of whatever layer it is
    /// applied to (axis 1 of a `Linear` weight, axis 0 of a `Conv2d` weight): a role, resolved
    /// by [`QuantSpec::resolve_for`] (plans and quant layers do it).
    pub fn int8_weight_per_output_channel() -> Self {
        Self::int8_weight_per_channel().per_output_channel()
    }
    /// Signed int4 weights, symmetric, one scale per `size` inputs of whatever layer it is
    /// applied to (axis 0 of a `Linear` weight, axis 1 of a `Conv2d` weight): a role, resolved
    /// by [`QuantSpec::resolve_for`].
    pub fn int4_weight_per_input_group(size: usize) -> Self {
        Self::int4_weight_per_group(size).per_input_group(size)
    }
    /// Signed int8 activations, per tensor, static absmax scale.
    pub fn int8_act_per_tensor() -> Self {
        Self::new(Format::int8(), Granularity::PerTensor)
    }
    /// Unsigned int8 activations (after ReLU), per tensor.
    pub fn uint8_act_per_tensor() -> Self {
        Self::new(Format::uint(8), Granularity::PerTensor)
    }
    /// Signed int4 weights, symmetric, one scale per `size` inputs (axis 0 of a Burn `Linear`).
    pub fn int4_weight_per_group(size: usize) -> Self {
        Self::new(Format::int(4), Granularity::PerGroup { axis: 0, size })
    }
    /// FP8 E4M3 (OCP) weights, per tensor, `scale = absmax / 448`.
    pub fn fp8_e4m3_weight_per_tensor() -> Self {
        Self::new(Format::Minifloat(Minifloat::e4m3()), Granularity::PerTensor)
    }
    /// FP8 E4M3 (OCP) activations, per tensor.
    pub fn fp8_e4m3_act_per_tensor() -> Self {
        Self::fp8_e4m3_weight_per_tensor()
    }
    /// An OCP MX spec: `element` in blocks of 32 along axis 0 with an E8M0 shared scale.
    pub fn mx(element: Format) -> Self {
        Self::new(
            element,
            Granularity::PerGroup {
                axis: 0,
                size: MX_BLOCK,
            },
        )
        .with_scale_restriction(ScaleRestriction::Quantized(ScaleQuant::E8M0))
    }
    /// MXFP8 with E4M3 elements.
    pub fn mxfp8_e4m3() -> Self {
        Self::mx(Format::Minifloat(Minifloat::e4m3()))
    }
    /// MXFP8 with E5M2 elements.
    pub fn mxfp8_e5m2() -> Self {
        Self::mx(Format::Minifloat(Minifloat::e5m2()))
    }
    /// MXFP6 with E3M2 elements.
    pub fn mxfp6_e3m2() -> Self {
        Self::mx(Format::Minifloat(Minifloat::e3m2()))
    }
    /// MXFP6 with E2M3 elements.
    pub fn mxfp6_e2m3() -> Self {
        Self::mx(Format::Minifloat(Minifloat::e2m3()))
    }
    /// MXFP4 (E2M1 elements).
    pub fn mxfp4() -> Self {
        Self::mx(Format::Minifloat(Minifloat::e2m1()))
    }
    /// MXINT8: int8 elements (symmetric −127..127, read as `code · 2^-6`) with an E8M0 scale.
    pub fn mxint8() -> Self {
        Self::mx(Format::Int {
            bits: 8,
            signed: true,
            narrow: true,
        })
    }
    /// NVFP4: E2M1 elements in blocks of 16 along axis 0, E4M3 block scales, one f32 global scale.
    pub fn nvfp4() -> Self {
        Self::new(
            Format::Minifloat(Minifloat::e2m1()),
            Granularity::PerGroup {
                axis: 0,
                size: NVFP4_BLOCK,
            },
        )
        .with_scale_restriction(ScaleRestriction::Quantized(ScaleQuant::E4M3Global))
    }
    /// GGUF Q8_0 structure: int8 codes (−128..127) in groups of 32 along axis 0 (the input
    /// axis of a Burn `Linear` weight), one f16 scale per group.
    pub fn gguf_q8_0() -> Self {
        Self::gguf_legacy(Format::int(8), false)
    }
    /// GGUF Q4_0 structure: int4 codes (−8..7, stored as `q + 8`), groups of 32, f16 scales.
    pub fn gguf_q4_0() -> Self {
        Self::gguf_legacy(Format::int(4), false)
    }
    /// GGUF Q4_1 structure: uint4 codes with a zero-point, groups of 32, f16 scale and f16
    /// offset (ggml's `m = −z·s`).
    pub fn gguf_q4_1() -> Self {
        Self::gguf_legacy(Format::uint(4), true)
    }
    /// GGUF Q5_0 structure: int5 codes (−16..15, stored as `q + 16`), groups of 32, f16 scales.
    pub fn gguf_q5_0() -> Self {
        Self::gguf_legacy(Format::int(5), false)
    }
    /// GGUF Q5_1 structure: uint5 codes with a zero-point, groups of 32, f16 scale and offset.
    pub fn gguf_q5_1() -> Self {
        Self::gguf_legacy(Format::uint(5), true)
    }
    fn gguf_legacy(format: Format, asymmetric: bool) -> Self {
        let spec = Self::new(format, Granularity::PerGroup { axis: 0, size: 32 })
            .with_scale_restriction(ScaleRestriction::Quantized(ScaleQuant::F16));
        if asymmetric {
            spec.with_zero_point(ZeroPoint::Asymmetric { learned: false })
                .with_stat(ScaleStat::MinMax)
        } else {
            spec
        }
    }
    /// GGUF Q4_K structure: unsigned 4-bit codes, asymmetric, groups of 32 along axis 0,
    /// 6-bit scales and mins per 256-element super-block with f16 super-scales.
    pub fn gguf_q4_k() -> Self {
        Self::k_quant(Format::uint(4), 32, 6, false)
    }
    /// GGUF Q5_K structure (5-bit codes, otherwise as Q4_K).
    pub fn gguf_q5_k() -> Self {
        Self::k_quant(Format::uint(5), 32, 6, false)
    }
    /// GGUF Q2_K structure: 2-bit unsigned codes, groups of 16, 4-bit scales and mins.
    pub fn gguf_q2_k() -> Self {
        Self::k_quant(Format::uint(2), 16, 4, false)
    }
    /// GGUF Q3_K structure: 3-bit signed codes (−4..3), symmetric, groups of 16, 6-bit signed
    /// scales.
    pub fn gguf_q3_k() -> Self {
        Self::k_quant(Format::int(3), 16, 6, true)
    }
    /// GGUF Q6_K structure: 6-bit signed codes (−32..31), symmetric, groups of 16, 8-bit signed
    /// scales.
    pub fn gguf_q6_k() -> Self {
        Self::k_quant(Format::int(6), 16, 8, true)
    }
    fn k_quant(format: Format, group: usize, bits: u8, signed_scales: bool) -> Self {
        let spec = Self::new(
            format,
            Granularity::PerGroup {
                axis: 0,
                size: group,
            },
        )
        .with_scale_restriction(ScaleRestriction::Quantized(ScaleQuant::SubBlock {
            super_block: 256,
            bits,
            signed: signed_scales,
        }));
        match format {
            Format::Int { signed: false, .. } => spec
                .with_zero_point(ZeroPoint::Asymmetric { learned: false })
                .with_stat(ScaleStat::MinMax),
            _ => spec,
        }
    }
    /// Binary weights (±1 · mean|w|), per output channel of a Burn `Linear`.
    pub fn binary_weight() -> Self {
        Self::new(Format::Binary, Granularity::PerChannel { axis: 1 }).with_stat(ScaleStat::AbsMean)
    }
    /// Ternary weights (BitNet b1.58: {−1, 0, 1} · mean|w|), per tensor.
    pub fn ternary_weight() -> Self {
        Self::new(Format::Ternary, Granularity::PerTensor).with_stat(ScaleStat::AbsMean)
    }

    // ----- with_* customisation -------------------------------------------------------

    /// Replaces the element format.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }
    /// Sets the bit width of an integer format (other formats become a signed integer of that width).
    pub fn with_bits(mut self, bits: u8) -> Self {
        self.format = match self.format {
            Format::Int { signed, narrow, .. } => Format::Int {
                bits,
                signed,
                narrow,
            },
            _ => Format::Int {
                bits,
                signed: true,
                narrow: false,
            },
        };
        self
    }
    /// Replaces the granularity.
    pub fn with_granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }
    /// Moves the channel or group axis (no effect per tensor); a role becomes the explicit
    /// form on `axis`.
    pub fn with_axis(mut self, axis: usize) -> Self {
        self.granularity = match self.granularity {
            Granularity::PerTensor => Granularity::PerTensor,
            Granularity::PerChannel { .. } | Granularity::PerOutputChannel => {
                Granularity::PerChannel { axis }
            }
            Granularity::PerGroup { size, .. } | Granularity::PerInputGroup { size } => {
                Granularity::PerGroup { axis, size }
            }
        };
        self
    }
    /// Per group of `size` along the current axis (axis 0 if there was none); a role stays a
    /// role: groups of `size` along the input ([`Granularity::PerInputGroup`]).
    pub fn with_group_size(mut self, size: usize) -> Self {
        self.granularity = if self.granularity.is_role() {
            Granularity::PerInputGroup { size }
        } else {
            let axis = self.granularity.axis().unwrap_or(0);
            Granularity::PerGroup { axis, size }
        };
        self
    }
    /// One scale per output channel of the layer the spec is applied to, on whatever axis the
    /// layer stores them ([`Granularity::PerOutputChannel`]).
    pub fn per_output_channel(mut self) -> Self {
        self.granularity = Granularity::PerOutputChannel;
        self
    }
    /// One scale per `size` inputs of the layer the spec is applied to, along whatever axis
    /// the layer stores them ([`Granularity::PerInputGroup`]).
    pub fn per_input_group(mut self, size: usize) -> Self {
        self.granularity = Granularity::PerInputGroup { size };
        self
    }
    /// This spec for a weight of `shape` stored as `layout`: a role granularity becomes the
    /// layer's axis, an explicit one is checked against it ([`Granularity::resolve`]; errors
    /// name the axis, the layout and the shape). The rest of the spec is unchanged.
    ///
    /// ```
    /// use burn_quant_core::{Granularity, QuantSpec, WeightLayout};
    ///
    /// let spec = QuantSpec::int4_weight_per_input_group(32);
    /// let conv = spec.resolve_for(WeightLayout::Conv, &[16, 64, 3, 3]).unwrap();
    /// assert_eq!(conv.granularity, Granularity::PerGroup { axis: 1, size: 32 });
    /// let linear = spec.resolve_for(WeightLayout::Linear, &[64, 16]).unwrap();
    /// assert_eq!(linear, QuantSpec::int4_weight_per_group(32));
    /// ```
    pub fn resolve_for(mut self, layout: WeightLayout, shape: &[usize]) -> Result<Self> {
        self.granularity = self.granularity.resolve(layout, shape)?;
        Ok(self)
    }
    /// This spec with a role granularity turned into the axes of `layout`, an explicit one
    /// unchanged and unchecked ([`Granularity::resolve_role`]).
    pub fn resolve_roles(mut self, layout: WeightLayout) -> Self {
        self.granularity = self.granularity.resolve_role(layout);
        self
    }
    /// Replaces the whole scale spec.
    pub fn with_scale(mut self, scale: ScaleSpec) -> Self {
        self.scale = scale;
        self
    }
    /// Replaces the statistic, keeping whether the scale is static, dynamic or learned.
    pub fn with_stat(mut self, stat: ScaleStat) -> Self {
        self.scale.source = match self.scale.source {
            ScaleSource::Stats(_) | ScaleSource::Const(_) => ScaleSource::Stats(stat),
            ScaleSource::Dynamic(_) => ScaleSource::Dynamic(stat),
            ScaleSource::Learned(_) => ScaleSource::Learned(stat),
        };
        self
    }
    /// Replaces the scale source.
    pub fn with_scale_source(mut self, source: ScaleSource) -> Self {
        self.scale.source = source;
        self
    }
    /// Replaces the scale restriction.
    pub fn with_scale_restriction(mut self, restrict: ScaleRestriction) -> Self {
        self.scale.restrict = restrict;
        self
    }
    /// How a symmetric range becomes the scale of a signed integer grid (see
    /// [`SymmetricScale`]: `amax/qmax`, Brevitas's `amax/−qmin`, ggml's signed extreme, MSE).
    pub fn with_symmetric_scale(mut self, symmetric: SymmetricScale) -> Self {
        self.scale.symmetric = symmetric;
        self
    }
    /// Power-of-two scales.
    pub fn with_pow2_scale(self, mode: Pow2Mode) -> Self {
        self.with_scale_restriction(ScaleRestriction::PowerOfTwo { mode })
    }
    /// Replaces the zero-point handling.
    pub fn with_zero_point(mut self, zero_point: ZeroPoint) -> Self {
        self.zero_point = zero_point;
        self
    }
    /// Asymmetric (min-max) quantization with a calibrated integer zero-point on the unsigned
    /// full-range grid of the same width (`[0, 2^b − 1]`, as GPTQ, AWQ and ONNX uint8 store
    /// it): a signed grid plus a zero-point would be the same grid shifted.
    pub fn asymmetric(mut self) -> Self {
        let stat = match self.scale.source.stat() {
            Some(ScaleStat::AbsMax) | None => ScaleStat::MinMax,
            Some(other) => other,
        };
        if let Format::Int { bits, .. } = self.format {
            self.format = Format::Int {
                bits,
                signed: false,
                narrow: false,
            };
        }
        self.with_zero_point(ZeroPoint::Asymmetric { learned: false })
            .with_stat(stat)
    }
    /// Replaces the rounding rule.
    pub fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }
    /// Narrow or full integer range.
    pub fn with_narrow(mut self, narrow: bool) -> Self {
        if let Format::Int { bits, signed, .. } = self.format {
            self.format = Format::Int {
                bits,
                signed,
                narrow,
            };
        }
        self
    }
    /// Signed or unsigned integer grid.
    pub fn with_signed(mut self, signed: bool) -> Self {
        if let Format::Int { bits, narrow, .. } = self.format {
            self.format = Format::Int {
                bits,
                signed,
                narrow,
            };
        }
        self
    }

    // ----- checks and facts --------------------------------------------------------------

    /// Checks that the parts fit together; the error names the field at fault.
    pub fn validate(&self) -> Result<()> {
        self.format.validate()?;
        self.rounding.check_registered()?;
        if let Some(stat) = self.scale.source.stat() {
            stat.validate()?;
        }
        if let ScaleSource::Const(c) = self.scale.source
            && !(c.is_finite() && c > 0.0)
        {
            return Err(QuantError::config(
                "scale.source",
                c,
                "a constant scale must be finite and > 0",
            ));
        }
        self.validate_symmetric_scale()?;
        if let Some(0) = self.granularity.group_size() {
            return Err(QuantError::config(
                "granularity.size",
                0,
                "group size must be at least 1",
            ));
        }
        if self.zero_point.is_asymmetric() && !matches!(self.format, Format::Int { .. }) {
            return Err(QuantError::config(
                "zero_point",
                "asymmetric",
                format!(
                    "a zero-point needs an integer format, not {:?}",
                    self.format
                ),
            ));
        }
        if let ScaleRestriction::Quantized(q) = self.scale.restrict
            && q != ScaleQuant::F16
        {
            let Some(size) = self.granularity.group_size() else {
                return Err(QuantError::config(
                    "scale.restrict",
                    format!("{q:?}"),
                    "quantized scales need per-group granularity",
                ));
            };
            match q {
                ScaleQuant::E8M0 | ScaleQuant::E4M3Global if self.zero_point.is_asymmetric() => {
                    return Err(QuantError::config(
                        "zero_point",
                        "asymmetric",
                        format!("{q:?} scales are for symmetric formats"),
                    ));
                }
                ScaleQuant::SubBlock {
                    super_block, bits, ..
                } => {
                    if !(2..=8).contains(&bits) {
                        return Err(QuantError::config(
                            "scale.restrict.bits",
                            bits,
                            "must be in 2..=8",
                        ));
                    }
                    if super_block == 0 || super_block % size != 0 {
                        return Err(QuantError::config(
                            "scale.restrict.super_block",
                            super_block,
                            format!("must be a positive multiple of the group size {size}"),
                        ));
                    }
                    if !matches!(self.format, Format::Int { .. }) {
                        return Err(QuantError::config(
                            "format",
                            format!("{:?}", self.format),
                            "k-quant sub-block scales need an integer element format",
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the grid is a full-range signed integer grid (`qmin = −qmax − 1`), the only
    /// grid on which the [`SymmetricScale`] conventions other than MSE differ.
    pub fn has_full_range_signed_grid(&self) -> bool {
        matches!(
            self.format,
            Format::Int {
                signed: true,
                narrow: false,
                ..
            }
        ) && !self.zero_point.is_asymmetric()
    }

    /// Whether scales may be negative: the signed-extreme convention (and the MSE search,
    /// which tries both signs) makes them on a full-range signed grid.
    pub fn allows_negative_scales(&self) -> bool {
        self.has_full_range_signed_grid()
            && matches!(
                self.scale.symmetric,
                SymmetricScale::SignedExtreme | SymmetricScale::Mse { .. }
            )
    }

    /// The symmetric-scale convention must fit the rest of the spec: it is a rule for symmetric
    /// grids, `NegQmin` and `SignedExtreme` only differ from `Qmax` on full-range signed
    /// integers, and MX / NVFP4 levels fix the scale themselves.
    fn validate_symmetric_scale(&self) -> Result<()> {
        let conv = self.scale.symmetric;
        conv.validate()?;
        if conv.is_qmax() {
            return Ok(());
        }
        let bad = |why: String| Err(QuantError::config("scale.symmetric", conv.name(), why));
        if self.zero_point.is_asymmetric() {
            return bad(
                "a symmetric-scale convention needs a symmetric spec (no zero-point)".into(),
            );
        }
        if let ScaleRestriction::Quantized(q @ (ScaleQuant::E8M0 | ScaleQuant::E4M3Global)) =
            self.scale.restrict
        {
            return bad(format!(
                "{q:?} scale levels derive the scale from amax themselves"
            ));
        }
        match (conv, self.scale.source) {
            (SymmetricScale::Mse { .. }, ScaleSource::Stats(ScaleStat::Mse { .. }))
            | (SymmetricScale::Mse { .. }, ScaleSource::Dynamic(ScaleStat::Mse { .. }))
            | (SymmetricScale::Mse { .. }, ScaleSource::Learned(ScaleStat::Mse { .. })) => {
                return bad("the MSE statistic already searches the scale; choose one".into());
            }
            (_, ScaleSource::Const(_)) => {
                return bad("a constant scale is not computed from a range".into());
            }
            (_, source) if source.stat() == Some(ScaleStat::AbsMean) => {
                return bad("absmean makes the mean the grid's step, not a range's end".into());
            }
            (SymmetricScale::Mse { .. }, source)
                if !matches!(
                    source.stat(),
                    Some(ScaleStat::AbsMax | ScaleStat::MinMax | ScaleStat::Percentile { .. })
                ) =>
            {
                return bad(
                    "the MSE search starts from a range: use absmax, minmax or a percentile".into(),
                );
            }
            (SymmetricScale::NegQmin | SymmetricScale::SignedExtreme, _)
                if !self.has_full_range_signed_grid() =>
            {
                return bad(format!(
                    "only differs from qmax on a full-range signed integer grid (int{{b}} with \
                     qmin = -qmax - 1), not {}",
                    self.format
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks the spec against a tensor shape (axis in range, k-quant super-block dividing the
    /// axis; a plain group size need not, see [`crate::granularity::Layout::is_ragged`]) and
    /// returns the resolved layout.
    pub fn check_shape(&self, shape: &[usize]) -> Result<crate::granularity::Layout> {
        self.validate()?;
        let layout = self.granularity.layout(shape)?;
        if let ScaleRestriction::Quantized(ScaleQuant::SubBlock { super_block, .. }) =
            self.scale.restrict
            && layout.axis_len % super_block != 0
        {
            return Err(QuantError::GroupSizeMismatch {
                axis: self.granularity.axis().unwrap_or(0),
                len: layout.axis_len,
                size: super_block,
                shape: shape.to_vec(),
            });
        }
        Ok(layout)
    }

    /// Average storage bits per element, counting scales, zero-points and second levels:
    /// f32 scales unless restricted or quantized; integer zero-points in the element width
    /// (as GPTQ packs them), real-valued ones (HQQ) as f32.
    pub fn bits_per_element(&self, shape: &[usize]) -> Result<f64> {
        let layout = self.check_shape(shape)?;
        let n = shape.iter().product::<usize>().max(1) as f64;
        let cells = layout.cells() as f64;
        let elem = self.format.bits() as f64 * n;
        let zp = if self.zero_point.is_asymmetric() {
            1.0
        } else {
            0.0
        };
        let zp_bits = match self.scale.source.stat() {
            Some(ScaleStat::Hqq { .. }) => 32.0,
            _ => self.format.bits() as f64,
        };
        let side = match self.scale.restrict {
            ScaleRestriction::Float => cells * (32.0 + zp * zp_bits),
            // An integer exponent fits in 8 bits.
            ScaleRestriction::PowerOfTwo { .. } => cells * (8.0 + zp * zp_bits),
            ScaleRestriction::Quantized(ScaleQuant::E8M0) => cells * 8.0,
            ScaleRestriction::Quantized(ScaleQuant::E4M3Global) => cells * 8.0 + 32.0,
            ScaleRestriction::Quantized(ScaleQuant::F16) => cells * 16.0 * (1.0 + zp),
            ScaleRestriction::Quantized(ScaleQuant::SubBlock {
                super_block, bits, ..
            }) => {
                let supers = n / super_block as f64;
                cells * bits as f64 * (1.0 + zp) + supers * 16.0 * (1.0 + zp)
            }
        };
        Ok((elem + side) / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presets() -> Vec<(&'static str, QuantSpec)> {
        vec![
            (
                "int8_weight_per_tensor",
                QuantSpec::int8_weight_per_tensor(),
            ),
            (
                "int8_weight_per_channel",
                QuantSpec::int8_weight_per_channel(),
            ),
            ("int8_act_per_tensor", QuantSpec::int8_act_per_tensor()),
            ("uint8_act_per_tensor", QuantSpec::uint8_act_per_tensor()),
            (
                "int4_weight_per_group",
                QuantSpec::int4_weight_per_group(128),
            ),
            ("fp8_e4m3", QuantSpec::fp8_e4m3_weight_per_tensor()),
            ("mxfp8_e4m3", QuantSpec::mxfp8_e4m3()),
            ("mxfp8_e5m2", QuantSpec::mxfp8_e5m2()),
            ("mxfp6_e3m2", QuantSpec::mxfp6_e3m2()),
            ("mxfp6_e2m3", QuantSpec::mxfp6_e2m3()),
            ("mxfp4", QuantSpec::mxfp4()),
            ("mxint8", QuantSpec::mxint8()),
            ("nvfp4", QuantSpec::nvfp4()),
            ("q2_k", QuantSpec::gguf_q2_k()),
            ("q3_k", QuantSpec::gguf_q3_k()),
            ("q4_k", QuantSpec::gguf_q4_k()),
            ("q5_k", QuantSpec::gguf_q5_k()),
            ("q6_k", QuantSpec::gguf_q6_k()),
            ("binary", QuantSpec::binary_weight()),
            ("ternary", QuantSpec::ternary_weight()),
        ]
    }

    #[test]
    fn presets_validate_and_round_trip_through_json() {
        for (name, spec) in presets() {
            spec.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let json = serde_json::to_string(&spec).unwrap();
            let back: QuantSpec = serde_json::from_str(&json).unwrap();
            assert_eq!(back, spec, "{name}: {json}");
        }
    }

    /// The storage cost of the k-quant and MX structures equals the bits per weight that
    /// ggml's type table and the OCP MX spec give for them.
    #[test]
    fn bits_per_element_match_ggml_and_mx_tables() {
        let shape = [4096, 64];
        let bpe = |s: QuantSpec| s.bits_per_element(&shape).unwrap();
        assert_eq!(bpe(QuantSpec::gguf_q2_k()), 2.625);
        assert_eq!(bpe(QuantSpec::gguf_q3_k()), 3.4375);
        assert_eq!(bpe(QuantSpec::gguf_q4_k()), 4.5);
        assert_eq!(bpe(QuantSpec::gguf_q5_k()), 5.5);
        assert_eq!(bpe(QuantSpec::gguf_q6_k()), 6.5625);
        assert_eq!(bpe(QuantSpec::gguf_q8_0()), 8.5);
        assert_eq!(bpe(QuantSpec::gguf_q4_0()), 4.5);
        assert_eq!(bpe(QuantSpec::gguf_q4_1()), 5.0);
        assert_eq!(bpe(QuantSpec::gguf_q5_0()), 5.5);
        assert_eq!(bpe(QuantSpec::gguf_q5_1()), 6.0);
        assert_eq!(bpe(QuantSpec::mxfp4()), 4.25);
        assert_eq!(bpe(QuantSpec::mxfp8_e4m3()), 8.25);
        assert_eq!(bpe(QuantSpec::mxfp6_e2m3()), 6.25);
        assert_eq!(bpe(QuantSpec::nvfp4()), 4.5 + 32.0 / (4096.0 * 64.0));
        assert_eq!(
            bpe(QuantSpec::int8_weight_per_channel()),
            8.0 + 32.0 / 4096.0
        );
        // GPTQ-style: f32 scale + 4-bit zero-point per group of 32.
        assert_eq!(
            bpe(QuantSpec::int4_weight_per_group(32).asymmetric()),
            4.0 + 36.0 / 32.0
        );
        assert_eq!(
            bpe(QuantSpec::int4_weight_per_group(32)
                .asymmetric()
                .with_stat(ScaleStat::hqq())),
            4.0 + 64.0 / 32.0
        );
        assert!(QuantSpec::gguf_q4_k().bits_per_element(&[128, 4]).is_err());
    }

    #[test]
    fn with_methods_compose_like_brevitas_let() {
        // Brevitas: Int8WeightPerChannelFloat.let(bit_width=4, quant_format="float_ocp_e2m1").
        let spec =
            QuantSpec::int8_weight_per_channel().with_format(Format::Minifloat(Minifloat::e2m1()));
        assert_eq!(spec.format, Format::Minifloat(Minifloat::e2m1()));
        assert_eq!(spec.granularity, Granularity::PerChannel { axis: 1 });
        assert_eq!(spec.format.bits(), 4);
        let s = QuantSpec::int4_weight_per_group(32)
            .with_axis(1)
            .with_group_size(64)
            .asymmetric();
        assert_eq!(s.granularity, Granularity::PerGroup { axis: 1, size: 64 });
        assert_eq!(s.scale.source, ScaleSource::Stats(ScaleStat::MinMax));
        assert!(s.zero_point.is_asymmetric());
        assert_eq!(s.format, Format::uint(4));
        assert_eq!(
            QuantSpec::int8_weight_per_tensor().with_bits(3).format,
            Format::Int {
                bits: 3,
                signed: true,
                narrow: true
            }
        );
    }

    #[test]
    fn role_presets_and_builders() {
        let p = QuantSpec::int8_weight_per_output_channel();
        assert_eq!(p.granularity, Granularity::PerOutputChannel);
        assert_eq!(
            p.with_granularity(Granularity::PerChannel { axis: 1 }),
            QuantSpec::int8_weight_per_channel()
        );
        let g = QuantSpec::int4_weight_per_input_group(64);
        assert_eq!(g.granularity, Granularity::PerInputGroup { size: 64 });
        assert_eq!(
            g.with_granularity(Granularity::PerGroup { axis: 0, size: 64 }),
            QuantSpec::int4_weight_per_group(64)
        );
        p.validate().unwrap();
        g.validate().unwrap();
        // The group size of a role is validated like an explicit one.
        assert!(
            QuantSpec::int4_weight_per_input_group(0)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("granularity.size")
        );
        // Quantized scale levels accept role groups (MX by role).
        QuantSpec::mxfp4().per_input_group(32).validate().unwrap();
        assert!(QuantSpec::mxfp4().per_output_channel().validate().is_err());
        // Builders: a role stays a role under `with_group_size`; `with_axis` makes it explicit.
        assert_eq!(
            p.with_group_size(16).granularity,
            Granularity::PerInputGroup { size: 16 }
        );
        assert_eq!(
            g.with_axis(1).granularity,
            Granularity::PerGroup { axis: 1, size: 64 }
        );
        assert_eq!(
            QuantSpec::int8_weight_per_tensor().per_output_channel(),
            QuantSpec::int8_weight_per_output_channel()
        );
        // Resolved per layout; the explicit Linear presets are what the roles give a Linear.
        let lin = [64, 16];
        assert_eq!(
            p.resolve_for(WeightLayout::Linear, &lin).unwrap(),
            QuantSpec::int8_weight_per_channel()
        );
        assert_eq!(
            g.resolve_for(WeightLayout::Linear, &lin).unwrap(),
            QuantSpec::int4_weight_per_group(64)
        );
        assert_eq!(
            p.resolve_for(WeightLayout::Conv, &[16, 8, 3, 3])
                .unwrap()
                .granularity,
            Granularity::PerChannel { axis: 0 }
        );
        assert_eq!(
            p.resolve_roles(WeightLayout::Embedding).granularity,
            Granularity::PerChannel { axis: 0 }
        );
        assert!(matches!(
            QuantSpec::int8_weight_per_channel().resolve_for(WeightLayout::Conv, &[16, 8, 3, 3]),
            Err(QuantError::AxisMismatch { .. })
        ));
        // Unresolved, a role spec cannot be applied to a shape.
        assert_eq!(
            p.check_shape(&lin).unwrap_err(),
            QuantError::UnresolvedRole {
                granularity: Granularity::PerOutputChannel
            }
        );
        assert_eq!(
            g.to_string(),
            "int4 sym per-input-group(64) absmax nearest_even"
        );
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<QuantSpec>(&json).unwrap(), g);
    }

    #[test]
    fn impossible_combinations_name_the_field() {
        let msg = |s: QuantSpec| s.validate().unwrap_err().to_string();
        assert!(
            msg(QuantSpec::mxfp4().with_granularity(Granularity::PerTensor))
                .contains("scale.restrict")
        );
        assert!(msg(QuantSpec::binary_weight().asymmetric()).contains("zero_point"));
        assert!(msg(QuantSpec::int4_weight_per_group(0)).contains("granularity.size"));
        assert!(
            msg(QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Const(0.0)))
                .contains("scale.source")
        );
        assert!(msg(QuantSpec::gguf_q4_k().with_group_size(48)).contains("super_block"));
        assert!(
            msg(QuantSpec::nvfp4().with_format(Format::uint(4)).asymmetric())
                .contains("zero_point")
        );
    }
}

impl std::fmt::Display for QuantSpec {
    /// One line, e.g. `int4 sym per-group(axis 0, 32) absmax nearest-even`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gran = self.granularity;
        let zp = if self.zero_point.is_asymmetric() {
            "asym"
        } else {
            "sym"
        };
        let source = match self.scale.source {
            ScaleSource::Stats(s) => stat_name(&s).to_string(),
            ScaleSource::Dynamic(s) => format!("dynamic {}", stat_name(&s)),
            ScaleSource::Learned(s) => format!("learned from {}", stat_name(&s)),
            ScaleSource::Const(c) => format!("const {c}"),
        };
        let restrict = match self.scale.restrict {
            ScaleRestriction::Float => String::new(),
            ScaleRestriction::PowerOfTwo { mode } => format!(" pow2-{mode:?}").to_lowercase(),
            ScaleRestriction::Quantized(ScaleQuant::E8M0) => " e8m0-scales".into(),
            ScaleRestriction::Quantized(ScaleQuant::E4M3Global) => " e4m3-scales+f32-global".into(),
            ScaleRestriction::Quantized(ScaleQuant::F16) => " f16-scales".into(),
            ScaleRestriction::Quantized(ScaleQuant::SubBlock {
                super_block, bits, ..
            }) => {
                format!(" {bits}bit-scales/{super_block}")
            }
        };
        let symmetric = match self.scale.symmetric {
            SymmetricScale::Qmax => String::new(),
            other => format!(" scale={}", other.name()),
        };
        use crate::rounding::RoundingFn;
        write!(
            f,
            "{} {zp} {gran} {source}{symmetric}{restrict} {}",
            self.format,
            self.rounding.name()
        )
    }
}

fn stat_name(s: &ScaleStat) -> String {
    match s {
        ScaleStat::AbsMax => "absmax".into(),
        ScaleStat::MinMax => "minmax".into(),
        ScaleStat::AbsMean => "absmean".into(),
        ScaleStat::Percentile { q } => format!("p{q}"),
        ScaleStat::Mse { .. } => "mse".into(),
        ScaleStat::Hqq { .. } => "hqq".into(),
    }
}

#[cfg(test)]
mod display_tests {
    use super::*;

    #[test]
    fn specs_print_on_one_line() {
        assert_eq!(
            QuantSpec::int4_weight_per_group(32).to_string(),
            "int4 sym per-group(axis 0, 32) absmax nearest_even"
        );
        assert_eq!(
            QuantSpec::mxfp4().to_string(),
            "e2m1 sym per-group(axis 0, 32) absmax e8m0-scales nearest_even"
        );
        assert_eq!(
            QuantSpec::int8_weight_per_channel().to_string(),
            "int8n sym per-channel(axis 1) absmax nearest_even"
        );
        assert_eq!(
            QuantSpec::uint8_act_per_tensor().asymmetric().to_string(),
            "uint8 asym per-tensor minmax nearest_even"
        );
        assert_eq!(
            Format::Minifloat(Minifloat::e4m3fnuz().with_saturating(false)).to_string(),
            "e4m3fnuznosat"
        );
        assert_eq!(
            QuantSpec::gguf_q4_k().to_string(),
            "uint4 asym per-group(axis 0, 32) minmax 6bit-scales/256 nearest_even"
        );
    }
}
