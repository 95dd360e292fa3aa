//! Quantized tensors and activation quantizers read back to the host, and their mapping onto
//! ONNX element types.

use burn::tensor::{Device, Int, Tensor};
use burn_quant_core::{Format, Layout, Minifloat, QuantSpec, QuantTensor, ScaleSource};
use burn_quant_nn::{NnError, Quantizer};

use super::error::{OnnxError, Result};
use super::proto::DataType;

/// A [`QuantTensor`] on the host: exactly what the exporters encode.
#[derive(Clone, Debug)]
pub struct HostQuant {
    /// Logical shape.
    pub shape: Vec<usize>,
    /// Integer codes (minifloat bit patterns for minifloats), row-major.
    pub codes: Vec<i32>,
    /// `QuantTensor::dequantize()` of the tensor, row-major.
    pub values: Vec<f32>,
    /// Effective scale of every cell, in `layout.scale_shape` order.
    pub scales: Vec<f32>,
    /// Zero-point of every cell (grid units), for asymmetric specs.
    pub zero_points: Option<Vec<f32>>,
    /// The spec.
    pub spec: QuantSpec,
    /// Cells of the spec's granularity on `shape`.
    pub layout: Layout,
}

/// The static parameters of an activation quantizer for an input of a given shape.
#[derive(Clone, Debug)]
pub struct HostAct {
    /// Effective scale of every cell (`layout.scale_shape` order).
    pub scales: Vec<f32>,
    /// Zero-point of every cell, for asymmetric specs.
    pub zero_points: Option<Vec<f32>>,
    /// The spec.
    pub spec: QuantSpec,
    /// Cells of the spec's granularity on the input shape.
    pub layout: Layout,
}

/// Reads a float tensor back to the host.
pub(crate) fn floats<const D: usize>(t: Tensor<D>, name: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| OnnxError::TensorData {
            name: name.into(),
            reason: format!("{e:?}"),
        })
}

fn ints<const D: usize>(t: Tensor<D, Int>, name: &str) -> Result<Vec<i32>> {
    t.into_data()
        .try_into_vec_as::<i32>()
        .map_err(|e| OnnxError::TensorData {
            name: name.into(),
            reason: format!("{e:?}"),
        })
}

impl HostQuant {
    /// Reads `q` back to the host; `layer` names it in errors.
    pub fn new<const D: usize>(q: &QuantTensor<D>, layer: &str) -> Result<Self> {
        let shape = q.shape().to_vec();
        let layout = q
            .spec
            .granularity
            .layout(&shape)
            .map_err(|source| OnnxError::Quant {
                layer: layer.into(),
                source,
            })?;
        let scales = floats(q.scales.clone(), &format!("{layer}.scales"))?;
        let zero_points = q
            .zero_points
            .clone()
            .map(|z| floats(z, &format!("{layer}.zero_points")))
            .transpose()?;
        let codes = ints(q.codes.clone(), &format!("{layer}.codes"))?;
        let values = floats(q.dequantize(), &format!("{layer}.values"))?;
        if scales.len() != layout.cells() || codes.len() != values.len() {
            return Err(OnnxError::TensorData {
                name: layer.into(),
                reason: format!(
                    "{} scales and {} codes do not fit shape {shape:?} with {} cells",
                    scales.len(),
                    codes.len(),
                    layout.cells()
                ),
            });
        }
        Ok(Self {
            shape,
            codes,
            values,
            scales,
            zero_points,
            spec: q.spec,
            layout,
        })
    }
}

impl HostQuant {
    /// Reads a quantized tensor of any rank (a Stage 2 result, a plan's weight) back to the
    /// host; `layer` names it in errors.
    pub fn from_any(q: &burn_quant_nn::AnyQuantTensor, layer: &str) -> Result<Self> {
        use burn_quant_nn::AnyQuantTensor as A;
        match q {
            A::Rank1(q) => Self::new(q, layer),
            A::Rank2(q) => Self::new(q, layer),
            A::Rank3(q) => Self::new(q, layer),
            A::Rank4(q) => Self::new(q, layer),
            A::Rank5(q) => Self::new(q, layer),
            A::Rank6(q) => Self::new(q, layer),
        }
    }
}

/// Runs `$body` with `$x` bound to a zero tensor of the dynamic-rank `$shape` (rank 1..=6).
macro_rules! with_rank {
    ($shape:expr, $device:expr, |$x:ident| $body:expr) => {{
        let shape: &[usize] = $shape;
        match shape.len() {
            1 => {
                let $x = Tensor::<1>::zeros([shape[0]], $device);
                $body
            }
            2 => {
                let $x = Tensor::<2>::zeros([shape[0], shape[1]], $device);
                $body
            }
            3 => {
                let $x = Tensor::<3>::zeros([shape[0], shape[1], shape[2]], $device);
                $body
            }
            4 => {
                let $x = Tensor::<4>::zeros([shape[0], shape[1], shape[2], shape[3]], $device);
                $body
            }
            5 => {
                let $x =
                    Tensor::<5>::zeros([shape[0], shape[1], shape[2], shape[3], shape[4]], $device);
                $body
            }
            6 => {
                let $x = Tensor::<6>::zeros(
                    [shape[0], shape[1], shape[2], shape[3], shape[4], shape[5]],
                    $device,
                );
                $body
            }
            rank => Err(OnnxError::Shape {
                layer: String::new(),
                shape: shape.to_vec(),
                reason: format!("rank {rank} is not supported (1..=6)"),
            }),
        }
    }};
}

impl HostAct {
    /// The parameters `quantizer` applies to an input of `shape`, exactly as its forward pass
    /// would: the stored (calibrated or learned) scale, or a constant one. A scale computed
    /// from each input at run time has no static value to export: an error. `layer` and
    /// `what` (`input activation`, …) name it in errors, `target` is the format's name
    /// ([`super::QuantStyle::target`]).
    pub fn new(
        quantizer: &Quantizer,
        shape: &[usize],
        layer: &str,
        what: &'static str,
        target: &'static str,
    ) -> Result<Self> {
        let spec = quantizer.spec;
        let stored = quantizer.has_stored_scale();
        let constant = matches!(spec.scale.source, ScaleSource::Const(_));
        if !stored && !constant {
            return Err(unsupported(
                layer,
                what,
                &spec,
                target,
                "the scale is computed from every input at run time (dynamic); export needs a static scale: calibrate a `Stats` scale, or use a learned or constant one",
            ));
        }
        if !stored && spec.zero_point.is_asymmetric() {
            return Err(unsupported(
                layer,
                what,
                &spec,
                target,
                "a constant scale with a zero-point computed from every input has no static zero-point",
            ));
        }
        let layout = spec.check_shape(shape).map_err(|source| OnnxError::Quant {
            layer: layer.into(),
            source,
        })?;
        let device = quantizer
            .scale
            .as_ref()
            .map(|s| s.val().device())
            .unwrap_or_else(Device::flex);
        let layer_err = |source: NnError| OnnxError::Layer {
            layer: layer.into(),
            source,
        };
        let params = with_rank!(shape, &device, |x| quantizer
            .params_for(&x)
            .map(|p| p.to_host())
            .map_err(layer_err))
        .map_err(|e| match e {
            OnnxError::Shape { shape, reason, .. } => OnnxError::Shape {
                layer: layer.into(),
                shape,
                reason,
            },
            other => other,
        })?;
        Ok(Self {
            scales: params.scales,
            zero_points: params.zero_points,
            spec,
            layout,
        })
    }
}

/// An [`OnnxError::Unsupported`].
pub(crate) fn unsupported(
    layer: &str,
    what: &'static str,
    spec: &QuantSpec,
    target: &'static str,
    reason: impl Into<String>,
) -> OnnxError {
    OnnxError::Unsupported {
        layer: layer.into(),
        what,
        spec: spec.to_string(),
        target,
        reason: reason.into(),
    }
}

/// The ONNX element type holding a format's codes in QuantizeLinear/DequantizeLinear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QdqType {
    /// The element type.
    pub dtype: DataType,
    /// Lowest opset whose Q/DQ accept it.
    pub opset: i64,
    /// Integer code range of the type (`None` for float8).
    pub range: Option<(i32, i32)>,
}

/// Minifloats that are ONNX float8 types: same exponent, mantissa, bias and special values
/// (saturation is a property of the conversion, not of the type).
fn float8_type(m: &Minifloat) -> Option<DataType> {
    let same = |o: Minifloat| {
        (m.exponent, m.mantissa, m.bias, m.special) == (o.exponent, o.mantissa, o.bias, o.special)
    };
    if same(Minifloat::e4m3()) {
        Some(DataType::Float8e4m3fn)
    } else if same(Minifloat::e5m2()) {
        Some(DataType::Float8e5m2)
    } else if same(Minifloat::e4m3fnuz()) {
        Some(DataType::Float8e4m3fnuz)
    } else if same(Minifloat::e5m2fnuz()) {
        Some(DataType::Float8e5m2fnuz)
    } else {
        None
    }
}

/// The narrowest ONNX type that holds every code of `format` exactly, or why there is none.
///
/// Integer grids narrower than their container (3-bit, narrow range, ternary) keep their codes
/// exactly; the activation exporter adds the clamp that the container's saturation lacks.
pub(crate) fn qdq_type(format: &Format) -> std::result::Result<QdqType, String> {
    let int = |bits: u8, signed: bool| -> std::result::Result<QdqType, String> {
        let (dtype, width, opset) = match (bits, signed) {
            (..=2, true) => (DataType::Int2, 2, 25),
            (..=2, false) => (DataType::Uint2, 2, 25),
            (..=4, true) => (DataType::Int4, 4, 21),
            (..=4, false) => (DataType::Uint4, 4, 21),
            (..=8, true) => (DataType::Int8, 8, 10),
            (..=8, false) => (DataType::Uint8, 8, 10),
            (..=16, true) => (DataType::Int16, 16, 21),
            (..=16, false) => (DataType::Uint16, 16, 21),
            _ => {
                return Err(format!(
                    "{bits}-bit integers exceed ONNX's 16-bit Q/DQ types"
                ));
            }
        };
        let range = if signed {
            (-(1i32 << (width - 1)), (1i32 << (width - 1)) - 1)
        } else {
            (0, (1i32 << width) - 1)
        };
        Ok(QdqType {
            dtype,
            opset,
            range: Some(range),
        })
    };
    match format {
        Format::Int { bits, signed, .. } => int(*bits, *signed),
        Format::Binary | Format::Ternary => int(2, true),
        Format::Minifloat(m) => match float8_type(m) {
            Some(dtype) => Ok(QdqType {
                dtype,
                opset: 19,
                range: None,
            }),
            None => Err(format!(
                "{format} is not an ONNX float8 type (ONNX Q/DQ runtimes execute e4m3fn, e5m2, e4m3fnuz and e5m2fnuz; FLOAT4E2M1 and the FP6 types of opset 23+ are not run by onnxruntime)"
            )),
        },
    }
}

/// Zero-points as integer codes inside `range`, or why they are not.
pub(crate) fn integer_zero_points(
    zero_points: &[f32],
    range: (i32, i32),
) -> std::result::Result<Vec<i32>, String> {
    zero_points
        .iter()
        .enumerate()
        .map(|(i, &z)| {
            if z.fract() != 0.0 || !z.is_finite() {
                Err(format!(
                    "zero-point {z} of cell {i} is not an integer (ONNX stores zero-points in the element type; k-quant mins and HQQ zero-points are real-valued)"
                ))
            } else if z < range.0 as f32 || z > range.1 as f32 {
                Err(format!(
                    "zero-point {z} of cell {i} is outside the element type's range {range:?}"
                ))
            } else {
                Ok(z as i32)
            }
        })
        .collect()
}

/// Encodes codes of `dtype` as `raw_data`: little-endian, sub-byte types packed from the low
/// bits of each byte up (the first element in the lowest bits), as `onnx.proto` specifies.
pub(crate) fn pack_codes(dtype: DataType, codes: &[i32]) -> Vec<u8> {
    match dtype.bits() {
        Some(2) => codes
            .chunks(4)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u8, |b, (j, &v)| b | (((v as u8) & 0b11) << (2 * j)))
            })
            .collect(),
        Some(4) => codes
            .chunks(2)
            .map(|c| {
                let lo = (c[0] as u8) & 0x0f;
                let hi = c.get(1).map_or(0, |&v| (v as u8) & 0x0f);
                lo | (hi << 4)
            })
            .collect(),
        Some(8) => codes.iter().map(|&v| v as u8).collect(),
        Some(16) => codes
            .iter()
            .flat_map(|&v| (v as u16).to_le_bytes())
            .collect(),
        _ => codes.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packing examples of `onnx.proto`'s comments and formats.md §2.1.
    #[test]
    fn sub_byte_packing_follows_the_onnx_spec() {
        // int4 [1, -2, 3] -> E1 03 (odd count padded with a zero nibble).
        assert_eq!(pack_codes(DataType::Int4, &[1, -2, 3]), vec![0xe1, 0x03]);
        assert_eq!(pack_codes(DataType::Uint4, &[15, 0, 7]), vec![0x0f, 0x07]);
        // int2 [-1, 0, -1, 1] -> 0b01_11_00_11.
        assert_eq!(
            pack_codes(DataType::Int2, &[-1, 0, -1, 1]),
            vec![0b0111_0011]
        );
        assert_eq!(pack_codes(DataType::Int8, &[-128, 127]), vec![0x80, 0x7f]);
        assert_eq!(pack_codes(DataType::Int16, &[-2]), vec![0xfe, 0xff]);
        assert_eq!(
            pack_codes(DataType::Int32, &[-2]),
            vec![0xfe, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn containers_are_the_narrowest_exact_type() {
        let t = |f: Format| qdq_type(&f).map(|t| (t.dtype, t.opset));
        assert_eq!(t(Format::int8()), Ok((DataType::Int8, 10)));
        assert_eq!(t(Format::uint(8)), Ok((DataType::Uint8, 10)));
        assert_eq!(t(Format::int(3)), Ok((DataType::Int4, 21)));
        assert_eq!(t(Format::uint(4)), Ok((DataType::Uint4, 21)));
        assert_eq!(t(Format::int(12)), Ok((DataType::Int16, 21)));
        assert_eq!(t(Format::Ternary), Ok((DataType::Int2, 25)));
        assert_eq!(
            t(Format::Minifloat(Minifloat::e4m3().with_saturating(false))),
            Ok((DataType::Float8e4m3fn, 19))
        );
        assert_eq!(
            t(Format::Minifloat(Minifloat::e5m2fnuz())),
            Ok((DataType::Float8e5m2fnuz, 19))
        );
        assert!(t(Format::Minifloat(Minifloat::e2m1())).is_err());
        assert!(t(Format::Minifloat(Minifloat::ieee(5, 10))).is_err());
    }

    #[test]
    fn zero_points_must_be_integers_in_range() {
        assert_eq!(integer_zero_points(&[0.0, 15.0], (0, 15)), Ok(vec![0, 15]));
        assert!(
            integer_zero_points(&[3.5], (0, 15))
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(
            integer_zero_points(&[16.0], (0, 15))
                .unwrap_err()
                .contains("outside")
        );
        assert!(integer_zero_points(&[f32::NAN], (0, 15)).is_err());
    }
}
