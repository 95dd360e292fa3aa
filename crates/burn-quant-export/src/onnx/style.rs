//! How each target encodes a quantized weight, an activation quantizer and an int32 bias:
//! [`Qdq`] with QuantizeLinear/DequantizeLinear, [`Qonnx`] with the QONNX custom operators.

use burn_quant_core::{Format, Granularity, Layout, QuantSpec, Rounding};

use super::error::Result;
use super::graph::{OnnxGraph, Val};
use super::host::{HostAct, HostQuant, integer_zero_points, pack_codes, qdq_type, unsupported};
use super::proto::{AttributeProto, DataType, TensorProto};

/// Domain of the QONNX custom operators (formats.md §2.5).
pub const QONNX_DOMAIN: &str = "qonnx.custom_op.general";
/// Version of [`QONNX_DOMAIN`] the QONNX exporter imports (Quant, BipolarQuant, FloatQuant and
/// Trunc v1).
pub const QONNX_DOMAIN_VERSION: i64 = 1;

/// ONNX QDQ: integer (or float8) initializers + DequantizeLinear for weights,
/// QuantizeLinear → DequantizeLinear pairs for activations.
#[derive(Clone, Copy, Debug, Default)]
pub struct Qdq;

/// QONNX: float tensors through `Quant` / `BipolarQuant` / `FloatQuant` nodes of the
/// `qonnx.custom_op.general` domain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Qonnx;

/// The export styles of [`super::OnnxModelBuilder`] and of graph-mode lowering: [`Qdq`] or
/// [`Qonnx`] (sealed). The provided functions are how a graph under construction gets the
/// style's encodings of quantized weights, activation quantizers and int32 biases.
pub trait QuantStyle: sealed::Style {
    /// The target's name in errors (`ONNX QDQ`, `QONNX`).
    fn target() -> &'static str {
        <Self as sealed::Style>::TARGET
    }

    /// The default name of an exported graph (`burn_quant_qdq`, `burn_quant_qonnx`).
    fn graph_name() -> &'static str {
        <Self as sealed::Style>::GRAPH_NAME
    }

    /// An empty graph at the style's lowest opset, with its custom domains imported.
    fn new_graph() -> OnnxGraph {
        let mut g = OnnxGraph::new(<Self as sealed::Style>::BASE_OPSET);
        <Self as sealed::Style>::setup(&mut g);
        g
    }

    /// Emits the float value of quantized weight `q` under names derived from `prefix`
    /// (QDQ: the codes as an integer or float8 initializer, scale and zero-point initializers
    /// and a `DequantizeLinear` named `prefix`); returns the name of the float value. Raises the
    /// graph's opset to what the encoding needs; what the target cannot hold exactly is an
    /// [`super::OnnxError::Unsupported`].
    fn emit_weight(g: &mut OnnxGraph, prefix: &str, q: &HostQuant) -> Result<String> {
        <Self as sealed::Style>::weight(g, prefix, q)
    }

    /// Quantizes activation `x` (of type `val`) with the static parameters `act` (QDQ: a
    /// `QuantizeLinear → DequantizeLinear` pair, clamped first for grids narrower than their
    /// container); returns the name of the dequantized value (`prefix`). `what` names the
    /// activation in errors.
    fn emit_activation(
        g: &mut OnnxGraph,
        prefix: &str,
        what: &'static str,
        x: &str,
        val: &Val,
        act: &HostAct,
    ) -> Result<String> {
        <Self as sealed::Style>::activation(g, prefix, what, x, val, act)
    }

    /// Emits a float bias `[c]` equal to `codes · scales` (int32 codes, one scale per channel
    /// or one for all); returns its name.
    fn emit_int32_bias(
        g: &mut OnnxGraph,
        prefix: &str,
        codes: &[i32],
        scales: &[f32],
    ) -> Result<String> {
        <Self as sealed::Style>::int32_bias(g, prefix, codes, scales)
    }
}
impl QuantStyle for Qdq {}
impl QuantStyle for Qonnx {}

pub(crate) mod sealed {
    use super::*;

    /// What a style must provide; implemented only here.
    pub trait Style {
        /// Target name used in errors (`ONNX QDQ`, `QONNX`).
        const TARGET: &'static str;
        /// Lowest default-domain opset of any graph of this style.
        const BASE_OPSET: i64;
        /// Name of the exported graph.
        const GRAPH_NAME: &'static str;
        /// Imports the custom domains the style uses.
        fn setup(g: &mut OnnxGraph);
        /// Emits the float value of quantized weight `q` (named `prefix`); returns its name.
        fn weight(g: &mut OnnxGraph, prefix: &str, q: &HostQuant) -> Result<String>;
        /// Quantizes activation `x` of type `val` with `act`; returns the output name.
        fn activation(
            g: &mut OnnxGraph,
            prefix: &str,
            what: &'static str,
            x: &str,
            val: &Val,
            act: &HostAct,
        ) -> Result<String>;
        /// Emits a float bias `[c]` equal to `codes · scales` (int32 codes, one scale per
        /// channel or one for all); returns its name.
        fn int32_bias(
            g: &mut OnnxGraph,
            prefix: &str,
            codes: &[i32],
            scales: &[f32],
        ) -> Result<String>;
    }
}

/// Scale dims and granularity attributes of a QuantizeLinear/DequantizeLinear, with the opset
/// they need: per tensor a scalar (opset 10), per channel a 1-D scale and `axis` (13), per
/// group a blocked scale of the input's rank with `axis` and `block_size` (21). A role (per
/// output channel, per input group) has no axis until it is resolved: an error.
fn qdq_granularity(
    layout: &Layout,
) -> std::result::Result<(Vec<usize>, Vec<AttributeProto>, i64), String> {
    Ok(match layout.granularity {
        Granularity::PerTensor => (vec![], vec![], 10),
        g @ (Granularity::PerOutputChannel | Granularity::PerInputGroup { .. }) => {
            return Err(burn_quant_core::QuantError::UnresolvedRole { granularity: g }.to_string());
        }
        Granularity::PerChannel { axis } => (
            vec![layout.axis_len],
            vec![AttributeProto::int("axis", axis as i64)],
            13,
        ),
        Granularity::PerGroup { axis, size } => (
            layout.scale_shape.clone(),
            vec![
                AttributeProto::int("axis", axis as i64),
                AttributeProto::int("block_size", size as i64),
            ],
            21,
        ),
    })
}

fn check_scales(
    prefix: &str,
    what: &'static str,
    spec: &QuantSpec,
    target: &'static str,
    scales: &[f32],
    allow_zero: bool,
) -> Result<()> {
    // ONNX's (De)QuantizeLinear and QONNX's Quant are plain arithmetic in the scale, so the
    // negative scales of the signed-extreme and MSE conventions are written as they are.
    let negative_ok = spec.allows_negative_scales();
    match scales.iter().enumerate().find(|(_, s)| {
        !(s.is_finite() && (**s > 0.0 || (allow_zero && **s == 0.0) || (negative_ok && **s < 0.0)))
    }) {
        Some((i, s)) => Err(unsupported(
            prefix,
            what,
            spec,
            target,
            format!("scale {s} of cell {i} is not a finite positive number"),
        )),
        None => Ok(()),
    }
}

impl sealed::Style for Qdq {
    const TARGET: &'static str = "ONNX QDQ";
    const BASE_OPSET: i64 = 10;
    const GRAPH_NAME: &'static str = "burn_quant_qdq";

    fn setup(_g: &mut OnnxGraph) {}

    fn weight(g: &mut OnnxGraph, prefix: &str, q: &HostQuant) -> Result<String> {
        let what = "weight";
        let err = |reason: String| unsupported(prefix, what, &q.spec, Self::TARGET, reason);
        let ty = qdq_type(&q.spec.format).map_err(err)?;
        let (lo, hi) = ty.range.unwrap_or((0, 255));
        if let Some((i, c)) = q
            .codes
            .iter()
            .enumerate()
            .find(|(_, c)| !(lo..=hi).contains(*c))
        {
            return Err(err(format!(
                "code {c} at index {i} is outside {}'s range {lo}..={hi}",
                ty.dtype.onnx_name()
            )));
        }
        let zero_points = match (&q.zero_points, ty.range) {
            (None, _) => None,
            (Some(z), Some(range)) => Some(integer_zero_points(z, range).map_err(err)?),
            (Some(_), None) => return Err(err("a float8 type has no zero-point".into())),
        };
        check_scales(prefix, what, &q.spec, Self::TARGET, &q.scales, true)?;
        let (dims, attrs, opset) = qdq_granularity(&q.layout).map_err(err)?;
        g.need_opset(ty.opset.max(opset));
        let codes = TensorProto::raw(
            &format!("{prefix}_quantized"),
            ty.dtype,
            &q.shape,
            pack_codes(ty.dtype, &q.codes),
        );
        let mut inputs = vec![
            g.initializer(codes),
            g.initializer(TensorProto::f32s(
                &format!("{prefix}_scale"),
                &dims,
                &q.scales,
            )),
        ];
        if let Some(z) = zero_points {
            let zp = TensorProto::raw(
                &format!("{prefix}_zero_point"),
                ty.dtype,
                &dims,
                pack_codes(ty.dtype, &z),
            );
            inputs.push(g.initializer(zp));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(g.node(
            "DequantizeLinear",
            "",
            &inputs,
            prefix,
            attrs,
            Val::f32(&q.shape),
        ))
    }

    fn activation(
        g: &mut OnnxGraph,
        prefix: &str,
        what: &'static str,
        x: &str,
        val: &Val,
        act: &HostAct,
    ) -> Result<String> {
        let spec = &act.spec;
        let err = |reason: String| unsupported(prefix, what, spec, Self::TARGET, reason);
        if spec.rounding != Rounding::NearestEven {
            return Err(err(format!(
                "QuantizeLinear rounds half to even, the spec rounds {:?} (QONNX's Quant holds other rounding modes)",
                spec.rounding
            )));
        }
        if spec.format == Format::Binary {
            return Err(err(
                "QuantizeLinear rounds to the nearest code and cannot take a sign (QONNX's BipolarQuant can)".into(),
            ));
        }
        let ty = qdq_type(&spec.format).map_err(err)?;
        check_scales(prefix, what, spec, Self::TARGET, &act.scales, false)?;
        let (dims, mut attrs, opset) = qdq_granularity(&act.layout).map_err(err)?;
        g.need_opset(ty.opset.max(opset));
        let cells = act.scales.len();
        // QuantizeLinear takes its output type from the zero-point: always pass one.
        let zero_points = match (&act.zero_points, ty.range) {
            (None, _) => vec![0; cells],
            (Some(z), Some(range)) => integer_zero_points(z, range).map_err(err)?,
            (Some(_), None) => return Err(err("a float8 type has no zero-point".into())),
        };
        let mut x = x.to_string();
        if let Some((lo, hi)) = ty.range {
            // The container saturates to its own range; a narrower grid (3-bit, narrow range,
            // ternary) is clamped first, in float: (grid bound − zero-point) · scale divides
            // back to the exact bound, so round(clamp(x)/s) equals clamp(round(x/s)).
            let (min, max) = (spec.format.min_value(), spec.format.max_value());
            let bound = |b: f32| -> Vec<f32> {
                act.scales
                    .iter()
                    .zip(&zero_points)
                    .map(|(s, z)| (b - *z as f32) * s)
                    .collect()
            };
            let bound_dims = match act.layout.granularity {
                Granularity::PerTensor => vec![],
                Granularity::PerChannel { .. } => act.layout.scale_shape.clone(),
                Granularity::PerGroup { .. } if min > lo as f32 || max < hi as f32 => {
                    return Err(err(format!(
                        "a per-group activation scale with a grid ({min}..{max}) narrower than {} needs a clamp per group",
                        ty.dtype.onnx_name()
                    )));
                }
                Granularity::PerGroup { .. } => vec![],
                g @ (Granularity::PerOutputChannel | Granularity::PerInputGroup { .. }) => {
                    return Err(err(burn_quant_core::QuantError::UnresolvedRole {
                        granularity: g,
                    }
                    .to_string()));
                }
            };
            if min > lo as f32 {
                let b = g.initializer(TensorProto::f32s(
                    &format!("{prefix}_min"),
                    &bound_dims,
                    &bound(min),
                ));
                x = g.node(
                    "Max",
                    "",
                    &[&x, &b],
                    &format!("{prefix}_clamp_min"),
                    vec![],
                    val.clone(),
                );
            }
            if max < hi as f32 {
                let b = g.initializer(TensorProto::f32s(
                    &format!("{prefix}_max"),
                    &bound_dims,
                    &bound(max),
                ));
                x = g.node(
                    "Min",
                    "",
                    &[&x, &b],
                    &format!("{prefix}_clamp_max"),
                    vec![],
                    val.clone(),
                );
            }
        }
        let scale = g.initializer(TensorProto::f32s(
            &format!("{prefix}_scale"),
            &dims,
            &act.scales,
        ));
        let zp = g.initializer(TensorProto::raw(
            &format!("{prefix}_zero_point"),
            ty.dtype,
            &dims,
            pack_codes(ty.dtype, &zero_points),
        ));
        let mut q_attrs = attrs.clone();
        if let Format::Minifloat(m) = spec.format
            && !m.saturating
        {
            q_attrs.push(AttributeProto::int("saturate", 0));
        }
        let q = g.node(
            "QuantizeLinear",
            "",
            &[&x, &scale, &zp],
            &format!("{prefix}_quantized"),
            q_attrs,
            val.with_dtype(ty.dtype),
        );
        attrs.retain(|a| a.name != "saturate");
        Ok(g.node(
            "DequantizeLinear",
            "",
            &[&q, &scale, &zp],
            prefix,
            attrs,
            val.with_dtype(DataType::Float),
        ))
    }

    fn int32_bias(
        g: &mut OnnxGraph,
        prefix: &str,
        codes: &[i32],
        scales: &[f32],
    ) -> Result<String> {
        let per_channel = scales.len() > 1;
        g.need_opset(if per_channel { 13 } else { 10 });
        let c = codes.len();
        let q = g.initializer(TensorProto::raw(
            &format!("{prefix}_quantized"),
            DataType::Int32,
            &[c],
            pack_codes(DataType::Int32, codes),
        ));
        let dims: Vec<usize> = if per_channel { vec![c] } else { vec![] };
        let s = g.initializer(TensorProto::f32s(&format!("{prefix}_scale"), &dims, scales));
        let attrs = if per_channel {
            vec![AttributeProto::int("axis", 0)]
        } else {
            vec![]
        };
        Ok(g.node(
            "DequantizeLinear",
            "",
            &[&q, &s],
            prefix,
            attrs,
            Val::f32(&[c]),
        ))
    }
}

/// QONNX's `rounding_mode` for a rounding rule, if it has one.
fn qonnx_rounding(r: &Rounding) -> Option<&'static str> {
    match r {
        Rounding::NearestEven => Some("ROUND"),
        Rounding::HalfUp => Some("HALF_UP"),
        Rounding::Floor => Some("FLOOR"),
        Rounding::Ceil => Some("CEIL"),
        Rounding::TowardZero => Some("DOWN"),
        Rounding::Stochastic { .. } | Rounding::Custom { .. } => None,
    }
}

/// Parameters of one QONNX quantizer node.
struct QonnxQuant<'a> {
    prefix: &'a str,
    what: &'static str,
    spec: &'a QuantSpec,
    layout: &'a Layout,
    scales: Vec<f32>,
    zero_points: Option<&'a [f32]>,
    rounding: &'static str,
}

/// Emits the QONNX node quantizing `x` (type `val`) per `p`; a per-group spec runs on `x`
/// reshaped so that each group is an axis of its own, then is reshaped back.
fn qonnx_quant(g: &mut OnnxGraph, x: &str, val: &Val, p: QonnxQuant<'_>) -> Result<String> {
    let target = <Qonnx as sealed::Style>::TARGET;
    let err = |reason: String| unsupported(p.prefix, p.what, p.spec, target, reason);
    let prefix = p.prefix;
    let layout = p.layout;
    let scalar = |g: &mut OnnxGraph, name: &str, v: f32| {
        g.initializer(TensorProto::f32s(&format!("{prefix}_{name}"), &[], &[v]))
    };
    // The broadcast shape of the scale, and for groups the shape the input is viewed in.
    let mut scales = p.scales;
    let mut zero_points = p.zero_points.map(<[f32]>::to_vec);
    let (scale_dims, grouped): (Vec<usize>, Option<Vec<usize>>) = match layout.granularity {
        Granularity::PerTensor => (vec![], None),
        g @ (Granularity::PerOutputChannel | Granularity::PerInputGroup { .. }) => {
            return Err(err(burn_quant_core::QuantError::UnresolvedRole {
                granularity: g,
            }
            .to_string()));
        }
        Granularity::PerChannel { .. } => (layout.scale_shape.clone(), None),
        Granularity::PerGroup { .. } if layout.is_ragged() => {
            // A short last group cannot be an axis of its own: the scales (and zero-points)
            // are expanded to one per element, which Quant broadcasts trivially.
            let per_element = |cells: &[f32]| -> Vec<f32> {
                let mut out = Vec::with_capacity(layout.shape.iter().product());
                for o in 0..layout.outer {
                    for n in 0..layout.axis_len {
                        out.extend((0..layout.inner).map(|i| cells[layout.cell(o, n, i)]));
                    }
                }
                out
            };
            scales = per_element(&scales);
            zero_points = zero_points.map(|z| per_element(&z));
            (layout.shape.clone(), None)
        }
        Granularity::PerGroup { axis, size } => {
            let split = |inner: usize| -> Vec<usize> {
                let mut s = layout.shape[..axis].to_vec();
                s.extend([layout.groups(), inner]);
                s.extend(&layout.shape[axis + 1..]);
                s
            };
            (split(1), Some(split(size)))
        }
    };
    let mut input = x.to_string();
    let mut qval = val.clone();
    if let Some(grouped) = &grouped {
        let shape: Vec<i64> = grouped.iter().map(|&d| d as i64).collect();
        let s = g.initializer(TensorProto::i64s(
            &format!("{prefix}_grouped_shape"),
            &[shape.len()],
            &shape,
        ));
        qval = Val::f32(grouped);
        input = g.node(
            "Reshape",
            "",
            &[&input, &s],
            &format!("{prefix}_grouped"),
            vec![],
            qval.clone(),
        );
    }
    let scale = g.initializer(TensorProto::f32s(
        &format!("{prefix}_scale"),
        &scale_dims,
        &scales,
    ));
    let out_name = if grouped.is_some() {
        format!("{prefix}_quant")
    } else {
        prefix.to_string()
    };
    let mut out = match p.spec.format {
        Format::Binary => g.node(
            "BipolarQuant",
            QONNX_DOMAIN,
            &[&input, &scale],
            &out_name,
            vec![],
            qval.clone(),
        ),
        Format::Int { .. } | Format::Ternary => {
            let (bits, signed, narrow) = match p.spec.format {
                Format::Int {
                    bits,
                    signed,
                    narrow,
                } => (bits, signed, narrow),
                _ => (2, true, true),
            };
            if bits == 1 && signed {
                return Err(err(
                    "QONNX executes a signed 1-bit Quant as bipolar (±1), not as the grid {-1, 0}"
                        .into(),
                ));
            }
            let zp = match &zero_points {
                Some(z) => g.initializer(TensorProto::f32s(
                    &format!("{prefix}_zero_point"),
                    &scale_dims,
                    z,
                )),
                None => scalar(g, "zero_point", 0.0),
            };
            let bw = scalar(g, "bit_width", bits as f32);
            g.node(
                "Quant",
                QONNX_DOMAIN,
                &[&input, &scale, &zp, &bw],
                &out_name,
                vec![
                    AttributeProto::int("signed", signed as i64),
                    AttributeProto::int("narrow", narrow as i64),
                    AttributeProto::string("rounding_mode", p.rounding),
                ],
                qval.clone(),
            )
        }
        Format::Minifloat(m) => {
            if m.special == burn_quant_core::Special::None && !m.saturating {
                return Err(err(
                    "a minifloat without Inf/NaN patterns must saturate".into()
                ));
            }
            let e = scalar(g, "exponent_bit_width", m.exponent as f32);
            let mt = scalar(g, "mantissa_bit_width", m.mantissa as f32);
            let b = scalar(g, "exponent_bias", m.bias as f32);
            let mx = scalar(g, "max_val", m.max_value());
            use burn_quant_core::Special;
            g.node(
                "FloatQuant",
                QONNX_DOMAIN,
                &[&input, &scale, &e, &mt, &b, &mx],
                &out_name,
                vec![
                    AttributeProto::int("has_inf", (m.special == Special::Ieee) as i64),
                    AttributeProto::int("has_nan", (m.special != Special::None) as i64),
                    AttributeProto::int("has_subnormal", 1),
                    AttributeProto::int("saturation", m.saturating as i64),
                    AttributeProto::string("rounding_mode", p.rounding),
                ],
                qval.clone(),
            )
        }
    };
    if grouped.is_some() {
        let shape: Vec<i64> = layout.shape.iter().map(|&d| d as i64).collect();
        let s = g.initializer(TensorProto::i64s(
            &format!("{prefix}_shape"),
            &[shape.len()],
            &shape,
        ));
        out = g.node("Reshape", "", &[&out, &s], prefix, vec![], val.clone());
    }
    Ok(out)
}

impl sealed::Style for Qonnx {
    const TARGET: &'static str = "QONNX";
    const BASE_OPSET: i64 = 13;
    const GRAPH_NAME: &'static str = "burn_quant_qonnx";

    fn setup(g: &mut OnnxGraph) {
        g.need_domain(QONNX_DOMAIN, QONNX_DOMAIN_VERSION);
    }

    fn weight(g: &mut OnnxGraph, prefix: &str, q: &HostQuant) -> Result<String> {
        check_scales(prefix, "weight", &q.spec, Self::TARGET, &q.scales, true)?;
        // The initializer holds the dequantized (on-grid) weight, which Quant maps back to
        // the same codes: value / scale is the code within an ulp, and ROUND restores it
        // whatever the spec's own rounding was. A zero scale (an all-zero block) becomes 1:
        // the block's values are 0 either way, and Quant would divide by the scale.
        let scales: Vec<f32> = q
            .scales
            .iter()
            .map(|&s| if s == 0.0 { 1.0 } else { s })
            .collect();
        let w = g.initializer(TensorProto::f32s(
            &format!("{prefix}_float"),
            &q.shape,
            &q.values,
        ));
        qonnx_quant(
            g,
            &w,
            &Val::f32(&q.shape),
            QonnxQuant {
                prefix,
                what: "weight",
                spec: &q.spec,
                layout: &q.layout,
                scales,
                zero_points: q.zero_points.as_deref(),
                rounding: "ROUND",
            },
        )
    }

    fn activation(
        g: &mut OnnxGraph,
        prefix: &str,
        what: &'static str,
        x: &str,
        val: &Val,
        act: &HostAct,
    ) -> Result<String> {
        let spec = &act.spec;
        check_scales(prefix, what, spec, Self::TARGET, &act.scales, false)?;
        let rounding = qonnx_rounding(&spec.rounding).ok_or_else(|| {
            unsupported(
                prefix,
                what,
                spec,
                Self::TARGET,
                "stochastic rounding has no QONNX rounding_mode",
            )
        })?;
        qonnx_quant(
            g,
            x,
            val,
            QonnxQuant {
                prefix,
                what,
                spec,
                layout: &act.layout,
                scales: act.scales.clone(),
                zero_points: act.zero_points.as_deref(),
                rounding,
            },
        )
    }

    fn int32_bias(
        g: &mut OnnxGraph,
        prefix: &str,
        codes: &[i32],
        scales: &[f32],
    ) -> Result<String> {
        let c = codes.len();
        let s_of = |i: usize| {
            if scales.len() == 1 {
                scales[0]
            } else {
                scales[i]
            }
        };
        let values: Vec<f32> = codes
            .iter()
            .enumerate()
            .map(|(i, &k)| k as f32 * s_of(i))
            .collect();
        let b = g.initializer(TensorProto::f32s(&format!("{prefix}_float"), &[c], &values));
        let dims: Vec<usize> = if scales.len() > 1 { vec![c] } else { vec![] };
        let s = g.initializer(TensorProto::f32s(&format!("{prefix}_scale"), &dims, scales));
        let z = g.initializer(TensorProto::f32s(
            &format!("{prefix}_zero_point"),
            &[],
            &[0.0],
        ));
        let bw = g.initializer(TensorProto::f32s(
            &format!("{prefix}_bit_width"),
            &[],
            &[32.0],
        ));
        Ok(g.node(
            "Quant",
            QONNX_DOMAIN,
            &[&b, &s, &z, &bw],
            prefix,
            vec![
                AttributeProto::int("signed", 1),
                AttributeProto::int("narrow", 0),
                AttributeProto::string("rounding_mode", "ROUND"),
            ],
            Val::f32(&[c]),
        ))
    }
}
