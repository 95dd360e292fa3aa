//! Quantizer presets under Brevitas's names (in snake case), as functions returning
//! [`QuantSpec`]; customise them with the `with_*` methods, the Rust answer to Brevitas's
//! `.let(...)`:
//!
//! ```
//! use burn_quant_core::{Format, Minifloat};
//! use burn_quant_nn::presets::int8_weight_per_channel_float;
//!
//! // Brevitas: Int8WeightPerChannelFloat.let(bit_width=4, quant_format="float_ocp_e2m1")
//! let spec = int8_weight_per_channel_float().with_format(Format::Minifloat(Minifloat::e2m1()));
//! assert_eq!(spec.format.bits(), 4);
//! ```
//!
//! Axis conventions follow Burn: a `Linear` weight is `[d_input, d_output]` (per output channel
//! = axis 1), a `Conv2d` weight `[out, in, kh, kw]` (use `.with_axis(0)`); activations are
//! `[..., features]`.

use burn_quant_core::{Format, Minifloat, QuantSpec, ScaleSource, ScaleStat};

/// `Int8WeightPerTensorFloat`: int8 narrow (−127..127), absmax scale per tensor.
pub fn int8_weight_per_tensor_float() -> QuantSpec {
    QuantSpec::int8_weight_per_tensor()
}
/// `Int8WeightPerChannelFloat`: int8 narrow, absmax scale per output channel (axis 1 of a
/// Burn `Linear` weight).
pub fn int8_weight_per_channel_float() -> QuantSpec {
    QuantSpec::int8_weight_per_channel()
}
/// `ShiftedUint8WeightPerTensorFloat`: uint8 with a zero-point (min-max).
pub fn shifted_uint8_weight_per_tensor_float() -> QuantSpec {
    QuantSpec::int8_weight_per_tensor().asymmetric()
}
/// `Int8ActPerTensorFloat`: int8 activations, static absmax scale (calibrated).
pub fn int8_act_per_tensor_float() -> QuantSpec {
    QuantSpec::int8_act_per_tensor()
}
/// `Uint8ActPerTensorFloat`: uint8 activations (after ReLU), static scale.
pub fn uint8_act_per_tensor_float() -> QuantSpec {
    QuantSpec::uint8_act_per_tensor()
}
/// `Int8ActPerTensorFloat` with a learned scale (LSQ), initialised by calibration.
pub fn int8_act_per_tensor_float_lsq() -> QuantSpec {
    QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax))
}
/// Int8 activations with a scale recomputed per call (dynamic quantization).
pub fn int8_act_per_tensor_dynamic() -> QuantSpec {
    QuantSpec::int8_act_per_tensor().with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax))
}
/// Int4 weights, symmetric, one scale per `group` inputs (axis 0 of a Burn `Linear`).
pub fn int4_weight_per_group_float(group: usize) -> QuantSpec {
    QuantSpec::int4_weight_per_group(group)
}
/// `Fp8e4m3OCPWeightPerTensorFloat`.
pub fn fp8e4m3_ocp_weight_per_tensor_float() -> QuantSpec {
    QuantSpec::fp8_e4m3_weight_per_tensor()
}
/// `Fp8e4m3OCPActPerTensorFloat` (static scale).
pub fn fp8e4m3_ocp_act_per_tensor_float() -> QuantSpec {
    QuantSpec::fp8_e4m3_act_per_tensor()
}
/// `Fp8e5m2OCPWeightPerTensorFloat`.
pub fn fp8e5m2_ocp_weight_per_tensor_float() -> QuantSpec {
    QuantSpec::fp8_e4m3_weight_per_tensor().with_format(Format::Minifloat(Minifloat::e5m2()))
}
/// `MXFloat8e4m3Weight`: MXFP8 weights, blocks of 32 along the input axis.
pub fn mxfp8e4m3_weight() -> QuantSpec {
    QuantSpec::mxfp8_e4m3()
}
/// `MXFloat8e4m3Act`: MXFP8 activations, blocks of 32 along the last (feature) axis of a
/// rank-`rank` activation, scales recomputed per call.
pub fn mxfp8e4m3_act(rank: usize) -> QuantSpec {
    QuantSpec::mxfp8_e4m3()
        .with_axis(rank.saturating_sub(1))
        .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax))
}
/// `MXFloat4e2m1Weight` (MXFP4 weights).
pub fn mxfp4_weight() -> QuantSpec {
    QuantSpec::mxfp4()
}
/// `MXInt8Weight`.
pub fn mxint8_weight() -> QuantSpec {
    QuantSpec::mxint8()
}
/// NVFP4 weights: E2M1 in blocks of 16, E4M3 block scales, an f32 global scale.
pub fn nvfp4_weight() -> QuantSpec {
    QuantSpec::nvfp4()
}
/// `SignedBinaryWeightPerTensorConst`-like binary weights (±mean|w| per output channel).
pub fn binary_weight() -> QuantSpec {
    QuantSpec::binary_weight()
}
/// Ternary weights ({−1, 0, 1} · mean|w|, BitNet b1.58).
pub fn ternary_weight() -> QuantSpec {
    QuantSpec::ternary_weight()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_quant_core::Granularity;

    /// The talk's example, as one expression.
    #[test]
    fn int8_per_channel_let_four_bit_ocp_e2m1() {
        let spec =
            int8_weight_per_channel_float().with_format(Format::Minifloat(Minifloat::e2m1()));
        assert_eq!(spec.format, Format::Minifloat(Minifloat::e2m1()));
        assert_eq!(spec.format.bits(), 4);
        assert_eq!(spec.format.max_value(), 6.0);
        assert_eq!(spec.granularity, Granularity::PerChannel { axis: 1 });
        spec.validate().unwrap();
    }

    #[test]
    fn every_preset_validates() {
        let all = [
            int8_weight_per_tensor_float(),
            int8_weight_per_channel_float(),
            shifted_uint8_weight_per_tensor_float(),
            int8_act_per_tensor_float(),
            uint8_act_per_tensor_float(),
            int8_act_per_tensor_float_lsq(),
            int8_act_per_tensor_dynamic(),
            int4_weight_per_group_float(64),
            fp8e4m3_ocp_weight_per_tensor_float(),
            fp8e4m3_ocp_act_per_tensor_float(),
            fp8e5m2_ocp_weight_per_tensor_float(),
            mxfp8e4m3_weight(),
            mxfp8e4m3_act(3),
            mxfp4_weight(),
            mxint8_weight(),
            nvfp4_weight(),
            binary_weight(),
            ternary_weight(),
        ];
        for spec in all {
            spec.validate().unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        assert_eq!(
            shifted_uint8_weight_per_tensor_float().format,
            Format::uint(8)
        );
        assert_eq!(
            mxfp8e4m3_act(3).granularity,
            Granularity::PerGroup { axis: 2, size: 32 }
        );
    }
}
