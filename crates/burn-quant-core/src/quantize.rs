//! `quantize`, `dequantize` and `fake_quant` on Burn tensors, with straight-through and
//! surrogate gradients.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::error::{QuantError, Result};
use crate::format::Format;
use crate::granularity::Layout;
use crate::host::{self, HostLevel, HostParams};
use crate::rounding::RoundingFn;
use crate::scale::ScaleQuant;
use crate::spec::QuantSpec;

/// A quantized scale level on the device: the integer codes behind the effective scales.
#[derive(Clone, Debug)]
pub struct ScaleLevel<const D: usize> {
    /// Which scale quantization this is.
    pub kind: ScaleQuant,
    /// Per group: E8M0 biased exponent (MX), E4M3 bit pattern (NVFP4), or integer scale code
    /// (k-quants); shape = the scale shape.
    pub scale_codes: Tensor<D, Int>,
    /// Per group integer min codes (asymmetric k-quants).
    pub min_codes: Option<Tensor<D, Int>>,
    /// Per super-block f16-representable scale (k-quants) or the global f32 scale (NVFP4,
    /// shape all ones); `None` for MX.
    pub super_scales: Option<Tensor<D>>,
    /// Per super-block f16-representable min-scale (asymmetric k-quants).
    pub super_mins: Option<Tensor<D>>,
}

/// Scales and zero-points of one tensor under one spec.
///
/// `scales` has the input's rank with the granularity's shape (see
/// [`crate::granularity::Layout::scale_shape`]). A learned scale is simply a tensor that
/// requires grad: [`fake_quant_with`] then propagates LSQ gradients into it.
#[derive(Clone, Debug)]
pub struct QuantParams<const D: usize> {
    /// Effective scale per group (what dequantization multiplies by).
    pub scales: Tensor<D>,
    /// Zero-point per group in grid units (asymmetric specs).
    pub zero_points: Option<Tensor<D>>,
    /// The integer codes of a quantized scale level (MX, NVFP4, k-quants).
    pub scale_level: Option<ScaleLevel<D>>,
}

/// A quantized tensor: exact integer codes plus everything needed to read them.
///
/// `dequantize()` gives `(decode(code) − zero_point) · scale`, where `decode` is the identity
/// for integer formats and the bit-pattern decoder for minifloats.
#[derive(Clone, Debug)]
pub struct QuantTensor<const D: usize> {
    /// Integer codes, same shape as the input (minifloat codes are bit patterns).
    pub codes: Tensor<D, Int>,
    /// Effective scale per group.
    pub scales: Tensor<D>,
    /// Zero-point per group in grid units (asymmetric specs).
    pub zero_points: Option<Tensor<D>>,
    /// Codes of the quantized scale level (MX, NVFP4, k-quants).
    pub scale_level: Option<ScaleLevel<D>>,
    /// The spec that produced it.
    pub spec: QuantSpec,
}

fn to_host<const D: usize>(x: &Tensor<D>) -> Vec<f32> {
    x.to_data()
        .try_into_vec_as::<f32>()
        .expect("converted to f32 above")
}

fn int_to_host<const D: usize>(x: &Tensor<D, Int>) -> Vec<i32> {
    x.to_data()
        .try_into_vec_as::<i32>()
        .expect("converted to i32 above")
}

fn float_tensor<const D: usize>(v: Vec<f32>, shape: &[usize], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape.to_vec()), device)
}

fn int_tensor<const D: usize>(v: Vec<i32>, shape: &[usize], device: &Device) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(v, shape.to_vec()), device)
}

impl<const D: usize> QuantParams<D> {
    /// Moves host params onto `device` as tensors shaped by `layout`.
    pub fn from_host(p: HostParams, layout: &Layout, device: &Device) -> Self {
        let shape = &layout.scale_shape;
        let scale_level = p.level.map(|l: HostLevel| {
            let has_super = !l.super_scales.is_empty();
            ScaleLevel {
                kind: l.kind,
                scale_codes: int_tensor(l.scale_codes, shape, device),
                min_codes: l.min_codes.map(|c| int_tensor(c, shape, device)),
                super_scales: has_super
                    .then(|| float_tensor(l.super_scales, &l.super_shape, device)),
                super_mins: l
                    .super_mins
                    .map(|m| float_tensor(m, &l.super_shape, device)),
            }
        });
        Self {
            scales: float_tensor(p.scales, shape, device),
            zero_points: p.zero_points.map(|z| float_tensor(z, shape, device)),
            scale_level,
        }
    }

    /// Copies the params to the host (detached).
    pub fn to_host(&self) -> HostParams {
        let level = self.scale_level.as_ref().map(|l| {
            let (super_scales, super_shape) = match &l.super_scales {
                Some(t) => (to_host(t), t.dims().to_vec()),
                None => (vec![], vec![]),
            };
            HostLevel {
                kind: l.kind,
                scale_codes: int_to_host(&l.scale_codes),
                min_codes: l.min_codes.as_ref().map(int_to_host),
                super_scales,
                super_mins: l.super_mins.as_ref().map(to_host),
                super_shape,
            }
        });
        HostParams {
            scales: to_host(&self.scales),
            zero_points: self.zero_points.as_ref().map(to_host),
            level,
        }
    }

    /// `Err(ShapeMismatch)` unless the scales (and zero-points) have `layout`'s scale shape.
    pub(crate) fn check_shape(&self, layout: &Layout) -> Result<()> {
        let check = |what: &'static str, got: &[usize]| {
            if got != layout.scale_shape.as_slice() {
                Err(QuantError::ShapeMismatch {
                    what,
                    got: got.to_vec(),
                    expected: layout.scale_shape.clone(),
                })
            } else {
                Ok(())
            }
        };
        check("scales", &self.scales.dims())?;
        if let Some(z) = &self.zero_points {
            check("zero_points", &z.dims())?;
        }
        Ok(())
    }
}

/// Computes the scales and zero-points of `x` under `spec` with the spec's statistic
/// (for a learned scale, its initial value; for a constant, the constant).
pub fn compute_params<const D: usize>(x: &Tensor<D>, spec: &QuantSpec) -> Result<QuantParams<D>> {
    let shape = x.dims();
    let layout = spec.check_shape(&shape)?;
    // On Flex, the statistics read the tensor's storage in place (no copy).
    let host = match crate::fused::with_host_slice(x, |data| {
        host::compute_params(data, &shape, spec)
    }) {
        Some(host) => host?,
        None => host::compute_params(&to_host(x), &shape, spec)?,
    };
    Ok(QuantParams::from_host(host, &layout, &x.device()))
}

/// Quantizes `x` to exact integer codes, computing the scales from `x` itself.
pub fn quantize<const D: usize>(x: Tensor<D>, spec: &QuantSpec) -> Result<QuantTensor<D>> {
    let params = compute_params(&x, spec)?;
    quantize_with(x, spec, params)
}

/// Quantizes `x` with given (e.g. calibrated or learned) params.
pub fn quantize_with<const D: usize>(
    x: Tensor<D>,
    spec: &QuantSpec,
    params: QuantParams<D>,
) -> Result<QuantTensor<D>> {
    let shape = x.dims();
    let layout = spec.check_shape(&shape)?;
    params.check_shape(&layout)?;
    let hp = params.to_host();
    let device = x.device();
    let codes = if spec.rounding.is_custom() {
        // A registered rule runs on the tensor path; its fake-quant value is on the grid, so
        // the codes are its nearest grid points (exact: (q − z)·s / s + z rounds back to q).
        let rule = spec.rounding.resolve()?;
        let y = fake_quant_tensor_path(x.detach(), None, spec, &params, rule.as_ref())?;
        let on_grid = spec.with_rounding(crate::rounding::Rounding::NearestEven);
        host::quantize_codes(&to_host(&y), &layout, &on_grid, &hp)
    } else {
        let data = to_host(&x);
        host::check_input(&data, &shape, "x")?;
        host::check_params(&hp, &layout, spec)?;
        host::quantize_codes(&data, &layout, spec, &hp)
    };
    Ok(QuantTensor {
        codes: int_tensor(codes, &shape, &device),
        scales: params.scales.detach(),
        zero_points: params.zero_points.map(|z| z.detach()),
        scale_level: params.scale_level,
        spec: *spec,
    })
}

impl<const D: usize> QuantTensor<D> {
    /// The float tensor these codes stand for: `(decode(code) − z) · s`.
    pub fn dequantize(&self) -> Tensor<D> {
        let shape = self.codes.dims();
        let layout = self
            .spec
            .granularity
            .layout(&shape)
            .expect("a QuantTensor's spec was validated against its shape when it was built");
        let values = match self.spec.format {
            Format::Minifloat(m) => {
                // Decode through a lookup table of every bit pattern, on the device.
                let table: Vec<f32> = (0..1u32 << m.bits()).map(|c| m.decode(c)).collect();
                let n = table.len();
                let table = float_tensor::<1>(table, &[n], &self.codes.device());
                let n_el = shape.iter().product::<usize>();
                table
                    .select(0, self.codes.clone().reshape([n_el]))
                    .reshape(shape)
            }
            _ => self.codes.clone().float(),
        };
        let v4 = values.reshape(input_view4(&layout));
        let s4 = scale_view4(&layout, self.scales.clone());
        let v4 = match &self.zero_points {
            Some(z) => v4 - scale_view4(&layout, z.clone()),
            None => v4,
        };
        (v4 * s4).reshape(shape)
    }

    /// Codes copied to the host, row-major.
    pub fn codes_vec(&self) -> Vec<i32> {
        int_to_host(&self.codes)
    }

    /// Params (scales, zero-points, level) of this tensor.
    pub fn params(&self) -> QuantParams<D> {
        QuantParams {
            scales: self.scales.clone(),
            zero_points: self.zero_points.clone(),
            scale_level: self.scale_level.clone(),
        }
    }

    /// Logical shape.
    pub fn shape(&self) -> [usize; D] {
        self.codes.dims()
    }
}

/// The input viewed in 4-D so that [`scale_view4`] broadcasts against it:
/// `[outer, groups, group, inner]`, or `[outer, axis_len, 1, inner]` for a ragged layout.
fn input_view4(layout: &Layout) -> [usize; 4] {
    if layout.is_ragged() {
        [layout.outer, layout.axis_len, 1, layout.inner]
    } else {
        layout.view4()
    }
}

/// A scale-shaped tensor (scales or zero-points) viewed in 4-D to broadcast against
/// [`input_view4`]. In a ragged layout the groups are expanded along the axis (each axis
/// position gathers its group's entry), which autodiff differentiates as a scatter-add, so a
/// learned per-group scale still receives the sum over its group.
fn scale_view4<const D: usize>(layout: &Layout, t: Tensor<D>) -> Tensor<4> {
    let [so, groups, _, si] = layout.scale_view4();
    if !layout.is_ragged() {
        return t.reshape([so, groups, 1, si]);
    }
    let group_of: Vec<i64> = (0..layout.axis_len)
        .map(|n| (n / layout.group) as i64)
        .collect();
    let index =
        Tensor::<1, Int>::from_data(TensorData::new(group_of, [layout.axis_len]), &t.device());
    t.reshape([so, groups, si])
        .select(1, index)
        .reshape([so, layout.axis_len, 1, si])
}

/// Dequantizes a [`QuantTensor`] (same as [`QuantTensor::dequantize`]).
pub fn dequantize<const D: usize>(q: &QuantTensor<D>) -> Tensor<D> {
    q.dequantize()
}

/// Fake-quantizes `x` with scales computed from `x` itself (dynamic quantization).
///
/// Gradients: straight-through to `x` inside the representable range, zero where clipped.
/// The statistic of the spec's scale source is used whatever the source (for a `Learned`
/// spec this is the initial value); to train a scale, pass it to [`fake_quant_with`].
pub fn fake_quant<const D: usize>(x: Tensor<D>, spec: &QuantSpec) -> Result<Tensor<D>> {
    let params = compute_params(&x.clone().detach(), spec)?;
    fake_quant_with(x, spec, &params)
}

/// Fake-quantizes `x` with given params: forward `(Q(x/s + z) − z) · s`.
///
/// Gradients: straight-through to `x` inside the representable range (zero where clipped),
/// LSQ to a scale that requires grad, and the zero-point's gradient to a learned zero-point.
///
/// What runs (see [`crate::fused`]): on a Flex device (plain or autodiff), f32 tensors with a
/// built-in rounding rule go through the fused op (one pass forward, one pass backward).
/// Elsewhere, untracked calls run the fused host kernel (copying to the host and back) and
/// tracked calls the differentiable reference chain ([`fake_quant_reference`]). A custom rule
/// (`Rounding::Custom`) always takes the reference chain, with the registered rule.
///
/// # Errors
/// Besides shape and value errors, [`QuantError::UnknownRounding`] when the spec names a rule
/// that is not registered.
pub fn fake_quant_with<const D: usize>(
    x: Tensor<D>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
) -> Result<Tensor<D>> {
    if spec.rounding.is_custom() {
        let rule = spec.rounding.resolve()?;
        return fake_quant_custom(x, spec, params, rule.as_ref());
    }
    if crate::fused::supports(&x, spec, params) {
        return crate::fused::fake_quant(x, spec, params, 1.0);
    }
    // `is_tracked`, not `is_require_grad`: an activation computed from a leaf that requires
    // grad is tracked without being a leaf itself, and must get the differentiable path.
    let tracked = x.is_tracked()
        || params.scales.is_tracked()
        || params.zero_points.as_ref().is_some_and(|z| z.is_tracked());
    if tracked {
        fake_quant_custom(x, spec, params, &spec.rounding)
    } else {
        fake_quant_fused(x, spec, params)
    }
}

/// The fused fake-quant without autodiff (the result is detached): one parallel pass over the
/// data — in place on Flex ([`crate::fused`]), through a host copy on other devices. A custom
/// rule (`Rounding::Custom`) cannot run per element: it takes the tensor path (its forward
/// value, detached).
pub fn fake_quant_fused<const D: usize>(
    x: Tensor<D>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
) -> Result<Tensor<D>> {
    if spec.rounding.is_custom() {
        let rule = spec.rounding.resolve()?;
        return fake_quant_custom(x.detach(), spec, params, rule.as_ref());
    }
    if crate::fused::supports(&x, spec, params) {
        let detached = QuantParams {
            scales: params.scales.clone().detach(),
            zero_points: params.zero_points.clone().map(|z| z.detach()),
            scale_level: params.scale_level.clone(),
        };
        return crate::fused::fake_quant(x.detach(), spec, &detached, 1.0);
    }
    let shape = x.dims();
    let layout = spec.check_shape(&shape)?;
    params.check_shape(&layout)?;
    let device = x.device();
    let mut data = x
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("converted to f32 above");
    host::check_input(&data, &shape, "x")?;
    let hp = params.to_host();
    host::check_params(&hp, &layout, spec)?;
    host::fake_quant_in_place(&mut data, &layout, spec, &hp);
    Ok(float_tensor(data, &shape, &device))
}

/// Applies `rounding` (forward value + surrogate gradient) to `v` of any rank.
fn round_with<const D: usize>(v: Tensor<D>, rounding: &dyn RoundingFn) -> Tensor<D> {
    let shape = v.dims();
    let n = shape.iter().product::<usize>();
    let flat = v.reshape([n]);
    let value = rounding.forward_bounded(flat.clone().detach());
    let out = if rounding.is_straight_through() {
        flat.clone() + (value - flat).detach()
    } else {
        let sur = rounding.surrogate_grad(flat.clone().detach());
        with_surrogate_grad(flat, value, sur)
    };
    out.reshape(shape)
}

/// Forward value `value`; backward `d out / d x = surrogate` (element-wise).
pub fn with_surrogate_grad<const D: usize>(
    x: Tensor<D>,
    value: Tensor<D>,
    surrogate: Tensor<D>,
) -> Tensor<D> {
    value.detach() + (x.clone() - x.detach()) * surrogate.detach()
}

/// Forward `round(x)` (ties to even), backward identity.
pub fn round_ste<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() + (x.clone().round() - x).detach()
}

/// LSQ gradient scaling: forward `t`, backward gradient multiplied by `g`
/// (LSQ uses `g = 1 / sqrt(numel · qmax)` for a learned scale).
pub fn grad_scale<const D: usize>(t: Tensor<D>, g: f32) -> Tensor<D> {
    let scaled = t.clone().mul_scalar(g);
    scaled.clone() + (t - scaled).detach()
}

/// The reference chain: the differentiable fake-quant of [`fake_quant_custom`] with the
/// spec's own rounding rule (built-in or registered), on any device.
///
/// This is the definition the fused op ([`crate::fused`]) is tested against, and what
/// [`fake_quant_with`] runs where the fused op does not.
///
/// # Errors
/// Like [`fake_quant_with`].
pub fn fake_quant_reference<const D: usize>(
    x: Tensor<D>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
) -> Result<Tensor<D>> {
    let rule = spec.rounding.resolve()?;
    fake_quant_tensor_path(x, None, spec, params, rule.as_ref())
}

/// The differentiable fake-quant with any rounding rule (built-in or a custom [`RoundingFn`]),
/// as a chain of element-wise Burn ops (the reference, see [`fake_quant_reference`]).
///
/// Integer grids: `v = x/s + z`, `q = R(clamp(v, qmin, qmax))`, out `(q − z)·s`.
/// Minifloats: `v = clamp(x/s, ±max)` (saturating), `q = step(v) · R(v / step(v))` with the
/// binade step taken as a constant, out `q·s`. Binary: `q = ±1` with a clipped
/// straight-through gradient on |v| ≤ 1.
pub fn fake_quant_custom<const D: usize>(
    x: Tensor<D>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
    rounding: &dyn RoundingFn,
) -> Result<Tensor<D>> {
    fake_quant_tensor_path(x, None, spec, params, rounding)
}

/// [`fake_quant_custom`] with a rounding offset: `offset` (same shape as `x`, in units of the
/// grid step at each element) is added to the value just before it is rounded — AutoRound's
/// learned `V`: `q = R(clamp(x/s + z + V))` on integer grids,
/// `q = step · R(v/step + V)` on minifloats (then held inside ±max, so an offset never
/// overflows the format), `sign(v + V)` on binary. Gradients reach `x`, the params and the
/// offset (straight-through; the offset's gradient is the element's grid step times the
/// rounding's surrogate). An offset of zero gives exactly [`fake_quant_custom`].
pub fn fake_quant_offset<const D: usize>(
    x: Tensor<D>,
    offset: Tensor<D>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
    rounding: &dyn RoundingFn,
) -> Result<Tensor<D>> {
    if offset.dims() != x.dims() {
        return Err(QuantError::ShapeMismatch {
            what: "rounding offset",
            got: offset.dims().to_vec(),
            expected: x.dims().to_vec(),
        });
    }
    fake_quant_tensor_path(x, Some(offset), spec, params, rounding)
}

/// The differentiable fake-quant of [`fake_quant_custom`] and [`fake_quant_offset`].
fn fake_quant_tensor_path<const D: usize>(
    x: Tensor<D>,
    offset: Option<Tensor<D>>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
    rounding: &dyn RoundingFn,
) -> Result<Tensor<D>> {
    let shape = x.dims();
    let layout = spec.check_shape(&shape)?;
    params.check_shape(&layout)?;
    if shape.iter().product::<usize>() == 0 {
        return Err(QuantError::EmptyTensor {
            what: "x",
            shape: shape.to_vec(),
        });
    }
    // Scales are small: check them on the host. For x, one device-side reduction.
    host::check_params(&params.to_host(), &layout, spec)?;
    if !x.clone().is_finite().all().into_scalar::<bool>() {
        let data = to_host(&x);
        host::check_input(&data, &shape, "x")?;
    }
    // Per tensor, view the data as [1, 1, 1, n]: Burn's flex backend reduces a broadcast
    // gradient along the last axis several times faster than along an inner one.
    let (xv, sv) = match spec.granularity {
        crate::granularity::Granularity::PerTensor => {
            ([1, 1, 1, shape.iter().product::<usize>()], [1, 1, 1, 1])
        }
        _ => (input_view4(&layout), [0; 4]),
    };
    let to4 = |t: Tensor<D>| match spec.granularity {
        crate::granularity::Granularity::PerTensor => t.reshape(sv),
        _ => scale_view4(&layout, t),
    };
    let s4 = to4(params.scales.clone());
    // A zero scale (an all-zero NVFP4 block) maps its elements to 0; divide by 1 there.
    let zero_mask: Tensor<4, Bool> = s4.clone().equal_elem(0.0);
    let s_div = s4.clone().mask_fill(zero_mask, 1.0);
    let z4 = params.zero_points.as_ref().map(|z| to4(z.clone()));
    let x4 = x.reshape(xv);
    let off4 = offset.map(|o| o.reshape(xv));
    let v = x4 / s_div;
    let v = match &z4 {
        Some(z) => v + z.clone(),
        None => v,
    };
    let fmt = spec.format;
    let q = match fmt {
        Format::Int { .. } | Format::Ternary => {
            let v = match off4 {
                Some(o) => v + o,
                None => v,
            };
            let vc = v.clamp(fmt.min_value(), fmt.max_value());
            round_with(vc, rounding)
        }
        Format::Minifloat(m) => {
            let max = m.max_value();
            let vc = if m.saturating { v.clamp(-max, max) } else { v };
            // The binade step is piecewise constant (zero gradient): computed on the host.
            let host_v = to_host(&vc.clone().detach());
            let step: Vec<f32> = host_v.iter().map(|&a| m.step(a)).collect();
            let step = float_tensor::<4>(step, &vc.dims(), &vc.device());
            let q = match off4 {
                Some(o) => (round_with(vc / step.clone() + o, rounding) * step).clamp(-max, max),
                None => round_with(vc / step.clone(), rounding) * step,
            };
            if m.saturating {
                q
            } else {
                let over = q.clone().abs().greater_elem(max);
                let fill = if m.special == crate::format::Special::Ieee {
                    f32::INFINITY
                } else {
                    f32::NAN
                };
                // Detached: the fill (Inf/NaN) must not reach the gradient (0·NaN = NaN would
                // poison every element's gradient through the mask).
                let signed = q.clone().detach().sign().mul_scalar(fill);
                q.mask_where(over, signed)
            }
        }
        Format::Binary => {
            let v = match off4 {
                Some(o) => v + o,
                None => v,
            };
            let vc = v.clamp(-1.0, 1.0);
            let value = vc
                .clone()
                .detach()
                .greater_equal_elem(0.0)
                .float()
                .mul_scalar(2.0)
                .sub_scalar(1.0);
            vc.clone() + (value - vc).detach()
        }
    };
    let q = match z4 {
        Some(z) => q - z,
        None => q,
    };
    Ok((q * s4).reshape(shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Minifloat, RoundMode};
    use crate::granularity::Granularity;
    use crate::rounding::Rounding;
    use crate::scale::{ScaleStat, ZeroPoint};
    use proptest::prelude::*;

    fn dev() -> Device {
        Device::flex()
    }

    fn t2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    fn host(x: &Tensor<2>) -> Vec<f32> {
        to_host(x)
    }

    /// Deterministic pseudo-random data with outliers.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let u = crate::rounding::uniform(seed, i) - 0.5;
                let w = crate::rounding::uniform(seed ^ 0xabc, i);
                if w > 0.98 { u * 20.0 } else { u * 2.0 }
            })
            .collect()
    }

    fn specs() -> Vec<QuantSpec> {
        vec![
            QuantSpec::int8_weight_per_channel(),
            QuantSpec::int8_weight_per_tensor(),
            QuantSpec::int4_weight_per_group(32),
            QuantSpec::int4_weight_per_group(32).asymmetric(),
            QuantSpec::uint8_act_per_tensor().asymmetric(),
            QuantSpec::fp8_e4m3_weight_per_tensor(),
            QuantSpec::fp8_e4m3_weight_per_tensor()
                .with_format(Format::Minifloat(Minifloat::e5m2())),
            QuantSpec::mxfp4(),
            QuantSpec::mxfp6_e3m2(),
            QuantSpec::mxfp6_e2m3(),
            QuantSpec::mxfp8_e4m3(),
            QuantSpec::mxfp8_e5m2(),
            QuantSpec::mxint8(),
            QuantSpec::nvfp4(),
            QuantSpec::ternary_weight(),
            QuantSpec::binary_weight(),
            QuantSpec::gguf_q4_k(),
            QuantSpec::gguf_q6_k(),
            QuantSpec::int4_weight_per_group(32).with_stat(ScaleStat::mse()),
            QuantSpec::int4_weight_per_group(32)
                .asymmetric()
                .with_stat(ScaleStat::hqq()),
            QuantSpec::int8_weight_per_channel().with_stat(ScaleStat::Percentile { q: 99.0 }),
            QuantSpec::int8_weight_per_channel().with_pow2_scale(crate::scale::Pow2Mode::Ceil),
            QuantSpec::int4_weight_per_group(16)
                .with_axis(1)
                .with_rounding(Rounding::Stochastic { seed: 3 }),
            QuantSpec::int8_weight_per_channel().with_rounding(Rounding::HalfUp),
            QuantSpec::int8_weight_per_channel().with_rounding(Rounding::Floor),
        ]
    }

    /// Quantizes `x` and checks that `dequantize`, the fused host fake-quant and the
    /// differentiable tensor path give the same values bit for bit.
    fn quantize_through_every_path(x: &Tensor<2>, spec: &QuantSpec) -> QuantTensor<2> {
        let q = quantize(x.clone(), spec).unwrap();
        let deq = host(&q.dequantize());
        let params = q.params();
        let fused = host(&fake_quant_fused(x.clone(), spec, &params).unwrap());
        let tensor = host(&fake_quant_custom(x.clone(), spec, &params, &spec.rounding).unwrap());
        for i in 0..deq.len() {
            assert_eq!(deq[i], fused[i], "{spec:?} fused at {i}");
            assert_eq!(deq[i], tensor[i], "{spec:?} tensor path at {i}");
        }
        q
    }

    /// The rounding offset of `fake_quant_offset`: zero is the plain tensor path bit for bit;
    /// an offset just under ±½ step moves every element at most one grid point, in the
    /// offset's direction, and the result stays on the spec's grid (re-quantizing it with the
    /// same params gives it back).
    #[test]
    fn rounding_offset_moves_at_most_one_grid_point_and_stays_on_the_grid() {
        let device = dev();
        let x = t2(data(256 * 64, 7), [256, 64], &device);
        for spec in specs() {
            let spec = spec.with_rounding(Rounding::NearestEven);
            let q = quantize(x.clone(), &spec).unwrap();
            let params = q.params();
            let plain =
                host(&fake_quant_custom(x.clone(), &spec, &params, &spec.rounding).unwrap());
            let zero = host(
                &fake_quant_offset(x.clone(), x.zeros_like(), &spec, &params, &spec.rounding)
                    .unwrap(),
            );
            assert_eq!(plain, zero, "{spec:?}: a zero offset changes nothing");
            for o in [0.49f32, -0.49] {
                let off = x.zeros_like().add_scalar(o);
                let moved =
                    fake_quant_offset(x.clone(), off, &spec, &params, &spec.rounding).unwrap();
                let back = host(
                    &quantize_with(moved.clone(), &spec, params.clone())
                        .unwrap()
                        .dequantize(),
                );
                let moved = host(&moved);
                let codes_plain = q.codes_vec();
                let requant =
                    quantize_with(t2(moved.clone(), [256, 64], &device), &spec, params.clone())
                        .unwrap()
                        .codes_vec();
                for i in 0..moved.len() {
                    assert_eq!(back[i], moved[i], "{spec:?} off {o}: on the grid at {i}");
                    // Order along the grid: compare dequantized values (minifloat codes are
                    // bit patterns, not ordered).
                    if o > 0.0 {
                        assert!(moved[i] >= plain[i], "{spec:?} +{o} at {i}");
                    } else {
                        assert!(moved[i] <= plain[i], "{spec:?} {o} at {i}");
                    }
                    if matches!(spec.format, Format::Int { .. } | Format::Ternary) {
                        assert!((requant[i] - codes_plain[i]).abs() <= 1, "{spec:?} at {i}");
                    }
                }
            }
        }
    }

    /// The offset's gradient is the straight-through one in grid units: `∂ŵ/∂V = s` on an
    /// integer grid inside its range.
    /// A spec naming a registered rule gives the same forward as the rule itself on every
    /// path (fused, tracked, codes), for integer and minifloat grids; an unknown name is a
    /// typed error naming it on every path.
    #[test]
    fn a_named_custom_rule_is_honoured_by_every_path() {
        // A registered rule that equals the built-in ceil (so the expected values are known).
        let named = crate::rounding::register_rounding(
            "test_quantize_ceil",
            std::sync::Arc::new(Rounding::Ceil),
        )
        .unwrap();
        let device = dev();
        let x = t2(data(96, 5), [8, 12], &device);
        for base in [
            QuantSpec::int8_weight_per_channel().with_bits(4),
            QuantSpec::int8_act_per_tensor().asymmetric(),
            QuantSpec::fp8_e4m3_weight_per_tensor(),
        ] {
            let custom = base.with_rounding(named);
            let builtin = base.with_rounding(Rounding::Ceil);
            let p = compute_params(&x, &builtin).unwrap();
            let want = host(&fake_quant_custom(x.clone(), &builtin, &p, &Rounding::Ceil).unwrap());
            assert_eq!(
                host(&fake_quant_with(x.clone(), &custom, &p).unwrap()),
                want
            );
            assert_eq!(
                host(&fake_quant_fused(x.clone(), &custom, &p).unwrap()),
                want
            );
            let ad = Device::flex().autodiff();
            let xa = Tensor::<2>::from_data(x.to_data(), &ad).require_grad();
            let pa = compute_params(&xa.clone().detach(), &builtin).unwrap();
            let tracked = fake_quant_with(xa, &custom, &pa).unwrap();
            assert_eq!(to_host(&tracked), want);
            let q = quantize_with(x.clone(), &custom, p.clone()).unwrap();
            let q_builtin = quantize_with(x.clone(), &builtin, p.clone()).unwrap();
            assert_eq!(q.codes_vec(), q_builtin.codes_vec(), "{base}");
            assert_eq!(q.spec.rounding, named);
            assert_eq!(host(&q.dequantize()), want);
        }
        let unknown = Rounding::Custom {
            name: crate::rounding::RoundingName::new("test_quantize_unknown").unwrap(),
        };
        let spec = QuantSpec::int8_weight_per_tensor().with_rounding(unknown);
        let p = compute_params(&x, &QuantSpec::int8_weight_per_tensor()).unwrap();
        let is_unknown = |e: QuantError| matches!(e, QuantError::UnknownRounding { ref name, .. } if name == "test_quantize_unknown");
        assert!(is_unknown(spec.validate().unwrap_err()));
        assert!(is_unknown(
            fake_quant_with(x.clone(), &spec, &p).unwrap_err()
        ));
        assert!(is_unknown(
            fake_quant_fused(x.clone(), &spec, &p).unwrap_err()
        ));
        assert!(is_unknown(quantize_with(x.clone(), &spec, p).unwrap_err()));
    }

    #[test]
    fn rounding_offset_gradient_is_the_scale() {
        let device = Device::flex().autodiff();
        let spec = QuantSpec::int4_weight_per_group(4);
        let x = Tensor::<2>::from_floats(
            [[0.1, -0.2], [0.3, 0.05], [-0.25, 0.4], [0.7, -0.8]],
            &device,
        );
        let params = compute_params(&x, &spec).unwrap();
        let v = x.zeros_like().require_grad();
        let y = fake_quant_offset(x.clone(), v.clone(), &spec, &params, &spec.rounding).unwrap();
        let grads = y.sum().backward();
        let g = v.grad(&grads).unwrap().try_into_vec_as::<f32>().unwrap();
        let s = params.scales.try_into_vec_as::<f32>().unwrap();
        // One group of 4 rows per column: column c's scale everywhere in the column.
        for r in 0..4 {
            for c in 0..2 {
                assert!((g[r * 2 + c] - s[c]).abs() <= 1e-7 * s[c], "{g:?} {s:?}");
            }
        }
    }

    #[test]
    fn dequantize_equals_fused_fake_quant_and_tensor_path_for_every_spec() {
        let device = dev();
        let x = t2(data(256 * 64, 1), [256, 64], &device);
        for spec in specs() {
            let q = quantize_through_every_path(&x, &spec);
            // Codes lie in the format's code range.
            let (lo, hi) = spec.format.code_range();
            assert!(
                q.codes_vec().iter().all(|c| (lo..=hi).contains(c)),
                "{spec:?}"
            );
        }
    }

    /// Specs whose groups do not divide a `[200, 70]` tensor (200 = 6·32 + 8 along axis 0,
    /// 70 = 4·16 + 6 along axis 1).
    fn ragged_specs() -> Vec<QuantSpec> {
        vec![
            QuantSpec::int4_weight_per_group(32),
            QuantSpec::int4_weight_per_group(32).asymmetric(),
            QuantSpec::int4_weight_per_group(32).with_stat(ScaleStat::mse()),
            QuantSpec::int4_weight_per_group(32)
                .asymmetric()
                .with_stat(ScaleStat::hqq()),
            QuantSpec::int4_weight_per_group(32).with_stat(ScaleStat::Percentile { q: 99.0 }),
            QuantSpec::int4_weight_per_group(16).with_axis(1),
            QuantSpec::int4_weight_per_group(16)
                .with_axis(1)
                .asymmetric()
                .with_rounding(Rounding::Floor),
            QuantSpec::int4_weight_per_group(16)
                .with_axis(1)
                .with_rounding(Rounding::Stochastic { seed: 3 }),
            QuantSpec::int4_weight_per_group(32).with_pow2_scale(crate::scale::Pow2Mode::Ceil),
            QuantSpec::gguf_q4_1(),
            QuantSpec::mxfp4(),
            QuantSpec::mxint8(),
            QuantSpec::mxfp6_e3m2().with_axis(1),
            QuantSpec::nvfp4(),
            QuantSpec::ternary_weight().with_group_size(32),
        ]
    }

    #[test]
    fn ragged_groups_agree_across_host_and_tensor_paths() {
        let device = dev();
        let x = t2(data(200 * 70, 5), [200, 70], &device);
        for spec in ragged_specs() {
            let layout = spec.check_shape(&[200, 70]).unwrap();
            assert!(layout.is_ragged(), "{spec:?}");
            let q = quantize_through_every_path(&x, &spec);
            let params = q.params();
            // Re-quantizing the dequantized tensor with the same params keeps the codes
            // (round to nearest: a grid point rounds to itself).
            if spec.rounding == Rounding::NearestEven {
                let again = quantize_with(q.dequantize(), &spec, params).unwrap();
                let (a, b) = (again.codes_vec(), q.codes_vec());
                let bad = a.iter().zip(&b).position(|(x, y)| x != y);
                assert_eq!(bad, None, "{spec:?}");
            }
        }
    }

    /// A ragged layout is the full groups and the short last group quantized on their own: the
    /// tensor is cut at the last group boundary, the head keeps the spec, the tail is one group
    /// of its own length.
    #[test]
    fn the_short_last_group_is_quantized_as_a_group_of_its_own() {
        let device = dev();
        let (n, m) = (200, 70);
        let xv = data(n * m, 9);
        let x = t2(xv.clone(), [n, m], &device);
        for spec in ragged_specs() {
            // Stochastic noise is indexed by the flat position, and NVFP4's global scale sees
            // the whole tensor: neither splits.
            if matches!(spec.rounding, Rounding::Stochastic { .. })
                || spec.scale.restrict
                    == crate::scale::ScaleRestriction::Quantized(ScaleQuant::E4M3Global)
            {
                continue;
            }
            let Granularity::PerGroup { axis, size } = spec.granularity else {
                unreachable!()
            };
            let len = [n, m][axis];
            let cut = len / size * size;
            let whole = host(&quantize(x.clone(), &spec).unwrap().dequantize());
            let part = |range: std::ops::Range<usize>, group: usize| -> Vec<f32> {
                let t = x.clone().narrow(axis, range.start, range.len());
                host(
                    &quantize(t, &spec.with_group_size(group))
                        .unwrap()
                        .dequantize(),
                )
            };
            let (head, tail) = (part(0..cut, size), part(cut..len, len - cut));
            for r in 0..n {
                for c in 0..m {
                    let (k, (hr, hc)) = if axis == 0 { (r, (r, c)) } else { (c, (r, c)) };
                    let got = whole[r * m + c];
                    let want = if k < cut {
                        let w = if axis == 0 { m } else { cut };
                        head[hr * w + hc]
                    } else if axis == 0 {
                        tail[(hr - cut) * m + hc]
                    } else {
                        tail[hr * (len - cut) + hc - cut]
                    };
                    assert_eq!(got, want, "{spec:?} at ({r}, {c})");
                }
            }
        }
        let _ = xv;
    }

    #[test]
    fn learned_scales_of_ragged_groups_get_the_gradient_of_their_own_elements() {
        let device = Device::flex().autodiff();
        let (n, m) = (20, 3);
        let spec = QuantSpec::int4_weight_per_group(8);
        let xv = data(n * m, 2);
        let s0: Vec<f32> = (0..3 * m).map(|i| 0.05 + 0.01 * i as f32).collect();
        let grad_of = |rows: std::ops::Range<usize>, scales: &[f32], groups: usize| {
            let x = Tensor::<2>::from_data(
                TensorData::new(xv[rows.start * m..rows.end * m].to_vec(), [rows.len(), m]),
                &device,
            );
            let s = Tensor::<2>::from_data(TensorData::new(scales.to_vec(), [groups, m]), &device)
                .require_grad();
            let params = QuantParams::<2> {
                scales: s.clone(),
                zero_points: None,
                scale_level: None,
            };
            let y = fake_quant_with(x, &spec, &params).unwrap();
            to_host(&s.grad(&y.sum().backward()).unwrap())
        };
        // 20 rows in groups of 8: 8, 8, 4.
        let whole = grad_of(0..20, &s0, 3);
        let head = grad_of(0..16, &s0[..2 * m], 2);
        let tail = grad_of(16..20, &s0[2 * m..], 1);
        // Equal up to the order of the sums (a gather's backward is a scatter-add).
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(1.0))
        };
        assert!(close(&whole[..2 * m], &head), "{whole:?} vs {head:?}");
        assert!(close(&whole[2 * m..], &tail), "{whole:?} vs {tail:?}");
        assert!(whole.iter().any(|&g| g != 0.0));
    }

    #[test]
    fn quantize_of_dequantized_gives_back_the_same_codes() {
        let device = dev();
        let x = t2(data(256 * 64, 2), [256, 64], &device);
        for spec in specs() {
            let q = quantize(x.clone(), &spec).unwrap();
            let again = quantize_with(q.dequantize(), &spec, q.params()).unwrap();
            let (a, b) = (q.codes_vec(), again.codes_vec());
            let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
            if matches!(spec.rounding, Rounding::NearestEven | Rounding::HalfUp) {
                assert_eq!(same, a.len(), "{spec:?}");
            } else {
                // Floor, ceil and stochastic rounding can move values that land a hair below a
                // grid point after the float round trip; the dequantized values still agree.
                let d1 = host(&q.dequantize());
                let d2 = host(&again.dequantize());
                let max = d1
                    .iter()
                    .zip(&d2)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let smax = host(&q.scales).into_iter().fold(0f32, f32::max);
                assert!(max <= smax * 1.0001, "{spec:?}: {max}");
            }
        }
    }

    #[test]
    fn int8_per_channel_worked_example() {
        let device = dev();
        let w = Tensor::<2>::from_floats([[0.1, -0.5], [0.25, 1.0]], &device);
        let q = quantize(w, &QuantSpec::int8_weight_per_channel()).unwrap();
        // Channel 0: absmax 0.25 → s = 0.25/127; channel 1: absmax 1.0 → s = 1/127.
        assert_eq!(q.codes_vec(), vec![51, -64, 127, 127]);
        assert_eq!(
            host(&q.scales.clone().reshape([1, 2])),
            vec![0.25 / 127.0, 1.0 / 127.0]
        );
    }

    #[test]
    fn asymmetric_uint8_uses_min_max_and_integer_zero_point() {
        let device = dev();
        let x = Tensor::<2>::from_floats([[-1.0, 0.0, 2.0, 3.0]], &device);
        let spec = QuantSpec::uint8_act_per_tensor().asymmetric();
        let q = quantize(x, &spec).unwrap();
        let s = 4.0f32 / 255.0;
        let z = (0.0f32 - (-1.0) / s).round_ties_even();
        assert_eq!(host(&q.scales.clone().reshape([1, 1])), vec![s]);
        assert_eq!(
            host(&q.zero_points.clone().unwrap().reshape([1, 1])),
            vec![z]
        );
        assert_eq!(
            q.codes_vec(),
            vec![0, z as i32, (2.0f32 / s + z).round_ties_even() as i32, 255]
        );
    }

    #[test]
    fn mx_scale_follows_the_ocp_rule() {
        let device = dev();
        // One block of 32 along axis 0, amax = 5.0: E8M0 exponent = floor(log2 5) - emax(e2m1) = 2 - 2 = 0.
        let mut v = vec![0.1f32; 32];
        v[3] = -5.0;
        v[7] = 2.9;
        let x = t2(v, [32, 1], &device);
        let q = quantize(x, &QuantSpec::mxfp4()).unwrap();
        let level = q.scale_level.as_ref().unwrap();
        assert_eq!(int_to_host(&level.scale_codes), vec![127]);
        assert_eq!(host(&q.scales.clone().reshape([1, 1])), vec![1.0]);
        let codes = q.codes_vec();
        let m = Minifloat::e2m1();
        // −5 saturates to −6? No: −5 rounds to the nearest E2M1 value, −4 (tie 5 between 4 and 6 → even mantissa 4).
        assert_eq!(m.decode(codes[3] as u32), -4.0);
        assert_eq!(m.decode(codes[7] as u32), 3.0);
        assert_eq!(m.decode(codes[0] as u32), 0.0);
        // MXINT8: amax 5 → 2^(2 - 6): codes = round(x · 16), saturating at 127.
        let mut v = vec![0.0f32; 32];
        v[0] = 5.0;
        v[1] = -7.99;
        let q = quantize(t2(v, [32, 1], &device), &QuantSpec::mxint8()).unwrap();
        assert_eq!(host(&q.scales.clone().reshape([1, 1])), vec![1.0 / 16.0]);
        assert_eq!(&q.codes_vec()[..2], &[80, -127]);
    }

    /// The E8M0 exponent comes from the exact amax, even one ulp below a power of two
    /// (for MXINT8, `amax / 127 · 127` rounds up to 4.0 there and would give the next exponent).
    #[test]
    fn mx_exponent_is_exact_just_below_a_power_of_two() {
        let device = dev();
        let just_below_4 = f32::from_bits(4.0f32.to_bits() - 1);
        let mut v = vec![0.0f32; 32];
        v[0] = just_below_4;
        let q = quantize(t2(v.clone(), [32, 1], &device), &QuantSpec::mxint8()).unwrap();
        let code = int_to_host(&q.scale_level.as_ref().unwrap().scale_codes)[0];
        // floor(log2(3.9999998)) − emax(int8) = 1 − 6 = −5 → biased 122.
        assert_eq!(code, 122);
        let mut obs = crate::observer::Observer::new(&QuantSpec::mxint8()).unwrap();
        obs.observe_slice(&v, &[32, 1]).unwrap();
        assert_eq!(
            obs.host_params().unwrap().level.unwrap().scale_codes,
            vec![122]
        );
    }

    #[test]
    fn nvfp4_uses_e4m3_block_scales_and_a_global_scale() {
        let device = dev();
        let mut v = data(64, 9);
        v[5] = 12.0;
        let x = t2(v.clone(), [64, 1], &device);
        let q = quantize(x, &QuantSpec::nvfp4()).unwrap();
        let level = q.scale_level.as_ref().unwrap();
        let global = host(&level.super_scales.clone().unwrap().reshape([1, 1]))[0];
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_eq!(global, amax / (448.0 * 6.0));
        let e4m3 = Minifloat::e4m3();
        let codes = int_to_host(&level.scale_codes);
        let scales = host(&q.scales.clone().reshape([4, 1]));
        for (b, (&c, &s)) in codes.iter().zip(&scales).enumerate() {
            assert_eq!(s, e4m3.decode(c as u32) * global, "block {b}");
            let bmax = v[b * 16..(b + 1) * 16]
                .iter()
                .fold(0f32, |m, x| m.max(x.abs()));
            assert_eq!(
                e4m3.decode(c as u32),
                e4m3.quantize(bmax / 6.0 / global, RoundMode::NearestEven, 0.0)
            );
        }
        // The block holding the tensor maximum gets the largest E4M3 scale, 448.
        assert_eq!(e4m3.decode(codes[0] as u32), 448.0);
    }

    /// ggml's legacy blocks store f16 scales (and offsets): with `ScaleQuant::F16` every
    /// effective scale is an f16 value whose bits the level carries, offsets `z·s` likewise, and
    /// the codes were chosen with those rounded values (error within half a step).
    #[test]
    fn f16_levels_hold_exact_half_scales_and_offsets() {
        let device = dev();
        let v = data(256 * 3, 11);
        let x = t2(v.clone(), [256, 3], &device);
        for spec in [
            QuantSpec::gguf_q8_0(),
            QuantSpec::gguf_q4_0(),
            QuantSpec::gguf_q5_0(),
            QuantSpec::gguf_q4_1(),
            QuantSpec::gguf_q5_1(),
        ] {
            let q = quantize(x.clone(), &spec).unwrap();
            let l = q.scale_level.as_ref().unwrap();
            assert_eq!(l.kind, crate::scale::ScaleQuant::F16);
            let s = host(&q.scales);
            let bits = int_to_host(&l.scale_codes);
            for (s, b) in s.iter().zip(&bits) {
                assert_eq!(half::f16::from_bits(*b as u16).to_f32(), *s, "{spec}");
            }
            let codes = int_to_host(&q.codes.clone().reshape([256 * 3]));
            let (lo, hi) = (
                spec.format.min_value() as i32,
                spec.format.max_value() as i32,
            );
            let zs = q.zero_points.as_ref().map(host);
            if let Some(zs) = &zs {
                let m = int_to_host(l.min_codes.as_ref().unwrap());
                for ((z, s), m) in zs.iter().zip(&s).zip(&m) {
                    // ggml reads the offset as `m_ggml = −f16(m)`; x̂ = s·q − f16(m).
                    let off = half::f16::from_bits(*m as u16).to_f32();
                    assert!(
                        (z * s - off).abs() <= off.abs() * 1e-6,
                        "{spec}: {z}·{s} vs {off}"
                    );
                }
            }
            for (i, (&c, &xv)) in codes.iter().zip(&v).enumerate() {
                assert!((lo..=hi).contains(&c), "{spec}: code {c}");
                let cell = (i / 3 / 32) * 3 + i % 3;
                let (sc, z) = (s[cell], zs.as_ref().map_or(0.0, |z| z[cell]));
                let err = ((c as f32 - z) * sc - xv).abs();
                // Half a step, plus the clip of an end value by the f16 rounding of the scale.
                assert!(
                    err <= sc * 0.5 + xv.abs() * 1e-3,
                    "{spec}: |err| {err} at {i}"
                );
            }
        }
    }

    /// Weights already on a Q4_1 grid (`m + d·q`, f16 `d` and `m`, blocks that do not contain
    /// 0, and a constant block) come back exactly: the `gguf_q4_1` grid spans [min, max] with a
    /// real offset, as ggml's does, instead of forcing 0 onto the grid.
    #[test]
    fn q4_1_grids_are_reproduced() {
        let device = dev();
        let h = |x: f32| half::f16::from_f32(x).to_f32();
        let mut v = vec![0f32; 96];
        for b in 0..3 {
            let (d, m) = (h(0.013 * (b + 1) as f32), h([0.2, -0.9, 0.05][b]));
            for i in 0..32 {
                v[b * 32 + i] = if b == 2 {
                    m
                } else {
                    m + d * ((i * 7 + b) % 16) as f32
                };
            }
            // Make sure the block spans its whole grid (min and max present).
            if b < 2 {
                v[b * 32] = m;
                v[b * 32 + 1] = m + 15.0 * d;
            }
        }
        let x = t2(v.clone(), [96, 1], &device);
        let q = quantize(x, &QuantSpec::gguf_q4_1()).unwrap();
        let back = host(&q.dequantize());
        for (i, (a, b)) in back.iter().zip(&v).enumerate() {
            assert!((a - b).abs() <= b.abs() * 2e-6 + 1e-7, "{i}: {a} vs {b}");
        }
    }

    /// An all-zero group under an asymmetric f16 level: scale 0, no offset (not 0/0).
    #[test]
    fn f16_level_all_zero_group_has_no_offset() {
        let device = dev();
        let mut v = vec![0f32; 64 * 2];
        v[64] = 1.0; // second group of column 0 is not zero
        let q = quantize(t2(v, [64, 2], &device), &QuantSpec::gguf_q4_1()).unwrap();
        let z = host(q.zero_points.as_ref().unwrap());
        assert!(z.iter().all(|z| z.is_finite()), "{z:?}");
        assert!((host(&q.dequantize())[64] - 1.0).abs() <= 0.5 / 15.0);
    }

    #[test]
    fn k_quant_levels_are_integer_codes_times_f16_super_scales() {
        let device = dev();
        let x = t2(data(512 * 4, 5), [512, 4], &device);
        for spec in [
            QuantSpec::gguf_q4_k(),
            QuantSpec::gguf_q5_k(),
            QuantSpec::gguf_q2_k(),
            QuantSpec::gguf_q3_k(),
            QuantSpec::gguf_q6_k(),
        ] {
            let q = quantize(x.clone(), &spec).unwrap();
            let l = q.scale_level.as_ref().unwrap();
            let crate::scale::ScaleQuant::SubBlock { bits, signed, .. } = l.kind else {
                panic!()
            };
            let Granularity::PerGroup { size, .. } = spec.granularity else {
                panic!()
            };
            let groups = 512 / size;
            let per_super = 256 / size;
            let sc = int_to_host(&l.scale_codes);
            let d = host(&l.super_scales.clone().unwrap().reshape([2, 4]));
            let s = host(&q.scales.clone().reshape([groups, 4]));
            let cmax = if signed {
                (1 << (bits - 1)) - 1
            } else {
                (1 << bits) - 1
            };
            for g in 0..groups {
                for i in 0..4 {
                    let dd = d[(g / per_super) * 4 + i];
                    assert_eq!(
                        half::f16::from_f32(dd).to_f32(),
                        dd,
                        "f16-representable super scale"
                    );
                    let c = sc[g * 4 + i];
                    assert!(c.abs() <= cmax && c != 0);
                    assert_eq!(s[g * 4 + i], dd * c as f32);
                }
            }
            if let (Some(mc), Some(dm)) = (&l.min_codes, &l.super_mins) {
                let mc = int_to_host(mc);
                let dm = host(&dm.clone().reshape([2, 4]));
                let z = host(&q.zero_points.clone().unwrap().reshape([groups, 4]));
                for g in 0..groups {
                    for i in 0..4 {
                        let m = dm[(g / per_super) * 4 + i] * mc[g * 4 + i] as f32;
                        assert_eq!(z[g * 4 + i], m / s[g * 4 + i]);
                    }
                }
            }
            // The codes are the best codes for the final (quantized) scales: re-deriving them gives the same.
            let again = quantize_with(x.clone(), &spec, q.params()).unwrap();
            assert_eq!(again.codes_vec(), q.codes_vec());
        }
    }

    #[test]
    fn statistics_trade_range_for_resolution_as_promised() {
        let device = dev();
        let v = data(4096, 11);
        let x = t2(v.clone(), [4096, 1], &device);
        let err = |spec: &QuantSpec| -> f64 {
            let y = host(&fake_quant(x.clone(), spec).unwrap());
            v.iter()
                .zip(&y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum()
        };
        let base = QuantSpec::int8_weight_per_tensor().with_bits(3);
        let absmax = err(&base);
        let mse = err(&base.with_stat(ScaleStat::mse()));
        // Candidate 0 of the search is the absmax range, so the search can only improve on it;
        // on outlier-heavy data it must improve strictly.
        assert!(
            mse < absmax,
            "MSE search {mse} must beat absmax {absmax} on outlier-heavy data"
        );
        // Percentile: the range is exactly the nearest-rank percentile.
        let ramp: Vec<f32> = (1..=1000).rev().map(|i| i as f32).collect();
        let r = t2(ramp, [1000, 1], &device);
        let q = quantize(
            r.clone(),
            &base.with_stat(ScaleStat::Percentile { q: 99.0 }),
        )
        .unwrap();
        assert_eq!(host(&q.scales.clone().reshape([1, 1])), vec![990.0 / 3.0]);
        let q = quantize(
            r,
            &base
                .with_stat(ScaleStat::Percentile { q: 99.0 })
                .with_format(Format::uint(3))
                .asymmetric(),
        )
        .unwrap();
        // [lo, hi] = [min(10, 0), 990] = [0, 990] → s = 990 / 7, z = 0.
        assert_eq!(host(&q.scales.clone().reshape([1, 1])), vec![990.0 / 7.0]);
        // HQQ optimises an lp (p < 1) error of the zero-point; its mean |error| beats min-max's.
        let asym = base.asymmetric();
        let l1 = |spec: &QuantSpec| -> f64 {
            let y = host(&fake_quant(x.clone(), spec).unwrap());
            v.iter().zip(&y).map(|(a, b)| ((a - b) as f64).abs()).sum()
        };
        let hqq = l1(&asym.with_stat(ScaleStat::hqq()));
        let mm = l1(&asym);
        assert!(hqq < mm, "HQQ {hqq} vs min-max {mm}");
    }

    #[test]
    fn power_of_two_scales_are_powers_of_two_and_ceil_never_clips() {
        let device = dev();
        let v = data(64 * 8, 4);
        let x = t2(v.clone(), [64, 8], &device);
        for mode in [
            crate::scale::Pow2Mode::Ceil,
            crate::scale::Pow2Mode::Floor,
            crate::scale::Pow2Mode::Round,
        ] {
            let spec = QuantSpec::int8_weight_per_channel().with_pow2_scale(mode);
            let q = quantize(x.clone(), &spec).unwrap();
            for s in host(&q.scales.clone().reshape([1, 8])) {
                assert_eq!(crate::format::pow2(crate::format::floor_log2(s)), s);
            }
            if mode == crate::scale::Pow2Mode::Ceil {
                let y = host(&q.dequantize());
                let s = host(&q.scales.clone().reshape([1, 8]));
                for (i, (a, b)) in v.iter().zip(&y).enumerate() {
                    assert!((a - b).abs() <= s[i % 8] / 2.0 + 1e-7);
                }
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let device = dev();
        let x = Tensor::<2>::from_floats([[1.0, f32::NAN], [0.0, 1.0]], &device);
        let err = quantize(x, &QuantSpec::default()).unwrap_err();
        assert!(
            matches!(err, QuantError::NonFinite { index: 1, .. }),
            "{err}"
        );
        let x = Tensor::<2>::from_floats([[1.0, f32::INFINITY]], &device);
        assert!(matches!(
            fake_quant(x, &QuantSpec::default()),
            Err(QuantError::NonFinite { .. })
        ));
        let x = Tensor::<2>::zeros([0, 4], &device);
        assert!(matches!(
            quantize(x, &QuantSpec::default()),
            Err(QuantError::EmptyTensor { .. })
        ));
        let x = t2(data(48 * 2, 1), [48, 2], &device);
        let err = quantize(
            x.clone(),
            &QuantSpec::int8_weight_per_channel().with_axis(5),
        )
        .unwrap_err();
        assert_eq!(err, QuantError::AxisOutOfRange { axis: 5, rank: 2 });
        let err = quantize(x.clone(), &QuantSpec::default().with_bits(0)).unwrap_err();
        assert!(err.to_string().contains("format.bits"), "{err}");
        let err = quantize(
            x.clone(),
            &QuantSpec::fp8_e4m3_weight_per_tensor().asymmetric(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("zero_point"), "{err}");
        let err = quantize(
            x.clone(),
            &QuantSpec::int8_weight_per_tensor().with_stat(ScaleStat::Percentile { q: 0.0 }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("scale.stat.q"), "{err}");
        // k-quants need 256-element super-blocks along the axis.
        let err = quantize(
            t2(data(64 * 2, 1), [64, 2], &device),
            &QuantSpec::gguf_q4_k(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            QuantError::GroupSizeMismatch {
                axis: 0,
                len: 64,
                size: 256,
                shape: vec![64, 2]
            }
        );
        assert!(err.to_string().contains("block size 256"), "{err}");
        // Params of the wrong shape.
        let p = compute_params(&x, &QuantSpec::int8_weight_per_channel()).unwrap();
        let err = fake_quant_with(x.clone(), &QuantSpec::int8_weight_per_tensor(), &p).unwrap_err();
        assert!(
            matches!(err, QuantError::ShapeMismatch { what: "scales", .. }),
            "{err}"
        );
        let bad = QuantParams {
            scales: Tensor::<2>::from_floats([[-1.0, 1.0]], &device),
            zero_points: None,
            scale_level: None,
        };
        let err = quantize_with(x, &QuantSpec::int8_weight_per_channel(), bad).unwrap_err();
        assert!(
            matches!(err, QuantError::InvalidScale { index: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn stochastic_rounding_is_seeded_and_unbiased() {
        let device = dev();
        let x = t2(vec![0.3; 20000], [20000, 1], &device);
        let spec = QuantSpec::int8_weight_per_tensor()
            .with_scale_source(crate::scale::ScaleSource::Const(1.0));
        let a = quantize(
            x.clone(),
            &spec.with_rounding(Rounding::Stochastic { seed: 7 }),
        )
        .unwrap()
        .codes_vec();
        let b = quantize(
            x.clone(),
            &spec.with_rounding(Rounding::Stochastic { seed: 7 }),
        )
        .unwrap()
        .codes_vec();
        let c = quantize(
            x.clone(),
            &spec.with_rounding(Rounding::Stochastic { seed: 8 }),
        )
        .unwrap()
        .codes_vec();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mean = a.iter().map(|&c| c as f64).sum::<f64>() / a.len() as f64;
        assert!((mean - 0.3).abs() < 0.015, "mean {mean}");
    }

    // ---- autodiff --------------------------------------------------------------------

    #[test]
    fn straight_through_gradient_is_identity_inside_and_zero_where_clipped() {
        let device = Device::flex().autodiff();
        let x = Tensor::<1>::from_floats([0.26, -0.9, 3.0, 0.04, -2.0], &device).require_grad();
        let spec = QuantSpec::int8_weight_per_tensor().with_bits(4);
        let params = QuantParams::<1> {
            scales: Tensor::from_floats([0.1], &device),
            zero_points: None,
            scale_level: None,
        };
        let y = fake_quant_with(x.clone(), &spec, &params).unwrap();
        assert_eq!(to_host(&y), vec![0.3, -0.7, 0.7, 0.0, -0.7]);
        let w = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0, 5.0], &device);
        let grads = (y * w).sum().backward();
        let g = to_host(&x.grad(&grads).unwrap());
        assert_eq!(g, vec![1.0, 0.0, 0.0, 4.0, 0.0]);
    }

    #[test]
    fn minifloat_and_binary_gradients_clip_at_the_range() {
        let device = Device::flex().autodiff();
        let x = Tensor::<1>::from_floats([0.7, 7.0, -0.3, 1.2], &device).require_grad();
        let spec = QuantSpec::mxfp4()
            .with_granularity(Granularity::PerTensor)
            .with_scale_restriction(crate::scale::ScaleRestriction::Float);
        let params = QuantParams::<1> {
            scales: Tensor::from_floats([1.0], &device),
            zero_points: None,
            scale_level: None,
        };
        let y = fake_quant_with(x.clone(), &spec, &params).unwrap();
        assert_eq!(to_host(&y), vec![0.5, 6.0, -0.5, 1.0]);
        let g = to_host(&x.grad(&y.sum().backward()).unwrap());
        assert_eq!(g, vec![1.0, 0.0, 1.0, 1.0]);
        let x = Tensor::<1>::from_floats([0.7, 7.0, -0.3, -1.2], &device).require_grad();
        let y = fake_quant_with(
            x.clone(),
            &QuantSpec::binary_weight().with_granularity(Granularity::PerTensor),
            &params,
        )
        .unwrap();
        assert_eq!(to_host(&y), vec![1.0, 1.0, -1.0, -1.0]);
        let g = to_host(&x.grad(&y.sum().backward()).unwrap());
        assert_eq!(g, vec![1.0, 0.0, 1.0, 0.0]);
    }

    /// LSQ (Esser et al. 2020): d ŷ/d s = round(x/s) − x/s inside the range, qmin or qmax outside.
    #[test]
    fn learned_scale_gradient_is_lsq_and_matches_finite_differences() {
        let device = Device::flex().autodiff();
        let xs = [0.26f32, -0.9, 3.0, 0.04, -0.47, 0.61];
        let s0 = 0.1f32;
        let spec = QuantSpec::int8_weight_per_tensor()
            .with_bits(4)
            .with_narrow(false);
        let x = Tensor::<1>::from_floats(xs, &device);
        let s = Tensor::<1>::from_floats([s0], &device).require_grad();
        let params = QuantParams::<1> {
            scales: s.clone(),
            zero_points: None,
            scale_level: None,
        };
        let y = fake_quant_with(x, &spec, &params).unwrap();
        let g = to_host(&s.grad(&y.sum().backward()).unwrap())[0];
        let lsq: f32 = xs
            .iter()
            .map(|&x| {
                let v = x / s0;
                if v < -8.0 {
                    -8.0
                } else if v > 7.0 {
                    7.0
                } else {
                    v.round_ties_even() - v
                }
            })
            .sum();
        assert!((g - lsq).abs() < 1e-5, "autodiff {g} vs LSQ {lsq}");
        // Finite differences of the straight-through surrogate the gradient belongs to:
        // h(s) = Σ s · (clamp(x/s) + δ), δ = round(x/s0) − x/s0 frozen inside the range.
        let h = |s: f32| -> f64 {
            xs.iter()
                .map(|&x| {
                    let v0 = x / s0;
                    let v = (x / s).clamp(-8.0, 7.0);
                    let delta = if (-8.0..=7.0).contains(&v0) {
                        v0.round_ties_even() - v0
                    } else {
                        0.0
                    };
                    (s * (v + delta)) as f64
                })
                .sum()
        };
        let eps = 1e-3;
        let fd = ((h(s0 + eps) - h(s0 - eps)) / (2.0 * eps as f64)) as f32;
        assert!(
            (fd - g).abs() < 1e-3,
            "finite difference {fd} vs autodiff {g}"
        );
        // Where every element is clipped, the STE gradient is the true derivative of the loss.
        let plain = Device::flex();
        let clipped = [3.0f32, -2.0, 5.0];
        let f = |s: f32| -> f32 {
            let p = QuantParams::<1> {
                scales: Tensor::from_floats([s], &plain),
                zero_points: None,
                scale_level: None,
            };
            to_host(&fake_quant_with(Tensor::<1>::from_floats(clipped, &plain), &spec, &p).unwrap())
                .iter()
                .sum()
        };
        let fd = (f(s0 + eps) - f(s0 - eps)) / (2.0 * eps);
        let s = Tensor::<1>::from_floats([s0], &device).require_grad();
        let p = QuantParams::<1> {
            scales: s.clone(),
            zero_points: None,
            scale_level: None,
        };
        let y = fake_quant_with(Tensor::<1>::from_floats(clipped, &device), &spec, &p).unwrap();
        let g = to_host(&s.grad(&y.sum().backward()).unwrap())[0];
        assert_eq!(g, 7.0 - 8.0 + 7.0);
        assert!(
            (fd - g).abs() < 1e-2,
            "finite difference {fd} vs autodiff {g}"
        );
    }

    #[test]
    fn learned_zero_point_gets_a_gradient() {
        let device = Device::flex().autodiff();
        let spec = QuantSpec::uint8_act_per_tensor().with_bits(4).asymmetric();
        let z = Tensor::<1>::from_floats([3.0], &device).require_grad();
        let params = QuantParams::<1> {
            scales: Tensor::from_floats([0.1], &device),
            zero_points: Some(z.clone()),
            scale_level: None,
        };
        let x = Tensor::<1>::from_floats([0.26, -0.5, 2.0], &device);
        let y = fake_quant_with(x, &spec, &params).unwrap();
        // Inside: d/dz of (R(v) − z)·s with STE = 0; clipped (x = −0.5 → v = −2 < 0; x = 2.0 → v = 23 > 15): −s each.
        let g = to_host(&z.grad(&y.sum().backward()).unwrap())[0];
        assert!((g + 0.2).abs() < 1e-6, "{g}");
    }

    #[test]
    fn computed_activations_and_wrapped_scales_keep_their_gradients() {
        let device = Device::flex().autodiff();
        let leaf = Tensor::<1>::from_floats([0.26, -0.9, 0.04], &device).require_grad();
        // An activation: computed from a leaf, not a leaf itself.
        let act = leaf.clone().mul_scalar(2.0);
        let s = Tensor::<1>::from_floats([0.1], &device).require_grad();
        let params = QuantParams::<1> {
            scales: grad_scale(s.clone(), 0.5),
            zero_points: None,
            scale_level: None,
        };
        let spec = QuantSpec::int8_act_per_tensor();
        let y = fake_quant_with(act, &spec, &params).unwrap();
        let grads = y.sum().backward();
        assert_eq!(to_host(&leaf.grad(&grads).unwrap()), vec![2.0, 2.0, 2.0]);
        // LSQ through grad_scale: 0.5 · Σ (round(v) − v), v = [5.2, −18, 0.8].
        let g = to_host(&s.grad(&grads).unwrap())[0];
        assert!(
            (g - 0.5 * ((5.0 - 5.2) + 0.0 + (1.0 - 0.8))).abs() < 1e-5,
            "{g}"
        );
    }

    #[test]
    fn differentiable_path_rejects_non_finite_input_and_bad_scales() {
        let device = Device::flex().autodiff();
        let spec = QuantSpec::int8_act_per_tensor();
        let ok = QuantParams::<1> {
            scales: Tensor::from_floats([0.1], &device),
            zero_points: None,
            scale_level: None,
        };
        let x = Tensor::<1>::from_floats([0.2, f32::NAN], &device).require_grad();
        assert!(matches!(
            fake_quant_with(x, &spec, &ok),
            Err(QuantError::NonFinite { index: 1, .. })
        ));
        let bad = QuantParams::<1> {
            scales: Tensor::from_floats([f32::INFINITY], &device),
            zero_points: None,
            scale_level: None,
        };
        let x = Tensor::<1>::from_floats([0.2, 0.3], &device).require_grad();
        assert!(matches!(
            fake_quant_with(x, &spec, &bad),
            Err(QuantError::InvalidScale { .. })
        ));
    }

    #[test]
    fn grad_scale_scales_only_the_gradient() {
        let device = Device::flex().autodiff();
        let s = Tensor::<1>::from_floats([2.0], &device).require_grad();
        let y = grad_scale(s.clone(), 0.25);
        assert_eq!(to_host(&y), vec![2.0]);
        let g = to_host(&s.grad(&y.mul_scalar(3.0).sum().backward()).unwrap());
        assert_eq!(g, vec![0.75]);
    }

    #[test]
    fn quantize_works_on_autodiff_tensors_and_detaches() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::from_floats([[0.5, -1.0]], &device).require_grad();
        let q = quantize(x, &QuantSpec::int8_weight_per_tensor()).unwrap();
        assert_eq!(q.codes_vec(), vec![64, -127]);
        assert!(!q.scales.is_require_grad());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_error_bounded_inside_range_and_saturating_outside(
            v in proptest::collection::vec(-4.0f32..4.0, 64),
            bits in 2u8..=8,
            s in 0.01f32..0.5,
            asym in any::<bool>(),
        ) {
            let device = dev();
            let mut spec = QuantSpec::int8_weight_per_tensor().with_bits(bits).with_scale_source(crate::scale::ScaleSource::Const(s));
            if asym { spec = spec.with_signed(false).with_narrow(false).with_zero_point(ZeroPoint::Asymmetric { learned: false }); }
            let z = if asym { ((1u32 << bits) / 2) as f32 } else { 0.0 };
            let zt = asym.then(|| Tensor::<1>::from_floats([z], &device));
            let params = QuantParams::<1> { scales: Tensor::from_floats([s], &device), zero_points: zt, scale_level: None };
            let x = Tensor::<1>::from_floats(v.as_slice(), &device);
            let y = to_host(&fake_quant_with(x.clone(), &spec, &params).unwrap());
            let q = quantize_with(x, &spec, params).unwrap();
            let (qmin, qmax) = (spec.format.min_value(), spec.format.max_value());
            let (lo, hi) = ((qmin - z) * s, (qmax - z) * s);
            for (i, (&a, &b)) in v.iter().zip(&y).enumerate() {
                if a >= lo && a <= hi {
                    prop_assert!((a - b).abs() <= s / 2.0 * (1.0 + 1e-5), "{a} -> {b}, s {s}");
                } else if a > hi {
                    prop_assert!((b - hi).abs() <= 1e-6 * hi.abs().max(1.0));
                } else {
                    prop_assert!((b - lo).abs() <= 1e-6 * lo.abs().max(1.0));
                }
                let c = q.codes_vec()[i];
                prop_assert!(c as f32 >= qmin && c as f32 <= qmax);
            }
        }

        #[test]
        fn prop_absmax_scales_never_clip_the_largest_element(
            v in proptest::collection::vec(-1000.0f32..1000.0, 1..64),
            bits in 2u8..=8,
            fp in any::<bool>(),
        ) {
            let device = Device::flex().autodiff();
            let spec = if fp {
                QuantSpec::fp8_e4m3_weight_per_tensor()
            } else {
                QuantSpec::int8_weight_per_tensor().with_bits(bits)
            };
            let x = Tensor::<1>::from_floats(v.as_slice(), &device).require_grad();
            let p = compute_params(&x, &spec).unwrap();
            let s = to_host(&p.scales)[0];
            for &a in &v {
                prop_assert!((a / s).abs() <= spec.format.max_value(), "{a} / {s} clips");
            }
            // So the straight-through gradient reaches every element, the largest included.
            let y = fake_quant_with(x.clone(), &spec, &p).unwrap();
            let g = to_host(&x.grad(&y.sum().backward()).unwrap());
            // (Minifloats: `v / step · step` is 1 up to f32 rounding.)
            prop_assert!(g.iter().all(|&g| (g - 1.0).abs() < 1e-6), "{g:?}");
        }

        #[test]
        fn prop_same_seed_same_stochastic_rounding(
            v in proptest::collection::vec(-3.0f32..3.0, 1..200),
            seed in any::<u64>(),
        ) {
            let device = dev();
            let spec = QuantSpec::int8_act_per_tensor().with_bits(4).with_rounding(Rounding::Stochastic { seed });
            let x = Tensor::<1>::from_floats(v.as_slice(), &device);
            let a = quantize(x.clone(), &spec).unwrap().codes_vec();
            let b = quantize(x.clone(), &spec).unwrap().codes_vec();
            prop_assert_eq!(&a, &b);
            // The tensor path draws the same noise as the host kernels.
            let p = compute_params(&x, &spec).unwrap();
            let t = to_host(&fake_quant_custom(x.clone(), &spec, &p, &spec.rounding).unwrap());
            let f = to_host(&fake_quant_fused(x, &spec, &p).unwrap());
            prop_assert_eq!(t, f);
        }

        #[test]
        fn prop_minifloat_fake_quant_is_idempotent_and_on_grid(
            v in proptest::collection::vec(-600.0f32..600.0, 32),
            which in 0usize..5,
        ) {
            let f = [Minifloat::e4m3(), Minifloat::e5m2(), Minifloat::e3m2(), Minifloat::e2m3(), Minifloat::e2m1()][which];
            let device = dev();
            let spec = QuantSpec::fp8_e4m3_weight_per_tensor().with_format(Format::Minifloat(f));
            let x = Tensor::<1>::from_floats(v.as_slice(), &device);
            let p = compute_params(&x, &spec).unwrap();
            let y = fake_quant_with(x, &spec, &p).unwrap();
            let y2 = to_host(&fake_quant_with(y.clone(), &spec, &p).unwrap());
            let y = to_host(&y);
            prop_assert_eq!(&y, &y2);
            let s = to_host(&p.scales)[0];
            let grid = Format::Minifloat(f).grid();
            for &b in &y {
                let g = b / s;
                prop_assert!(grid.iter().any(|&q| (q - g).abs() <= 1e-4 * q.abs().max(1e-3)), "{b} / {s} = {g} not on grid");
            }
        }
    }
}
