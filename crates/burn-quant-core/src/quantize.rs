//! `quantize`, `dequantize` and `fake_quant` on Burn tensors, with straight-through and
//! surrogate gradients.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::error::{QuantError, Result};
use crate::format::Format;
use crate::granularity::Layout;
use crate::host::{self, HostLevel, HostParams};
use crate::rounding::RoundingFn;
use crate::scale::{ScaleQuant, ScaleSource};
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
    x.to_data().try_into_vec_as::<f32>().expect("converted to f32 above")
}

fn int_to_host<const D: usize>(x: &Tensor<D, Int>) -> Vec<i32> {
    x.to_data().try_into_vec_as::<i32>().expect("converted to i32 above")
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
                super_scales: has_super.then(|| float_tensor(l.super_scales, &l.super_shape, device)),
                super_mins: l.super_mins.map(|m| float_tensor(m, &l.super_shape, device)),
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

    fn check_shape(&self, layout: &Layout) -> Result<()> {
        let check = |what: &'static str, got: &[usize]| {
            if got != layout.scale_shape.as_slice() {
                Err(QuantError::ShapeMismatch { what, got: got.to_vec(), expected: layout.scale_shape.clone() })
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
    let data = to_host(x);
    let layout = spec.granularity.layout(&shape)?;
    let host = host::compute_params(&data, &shape, spec)?;
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
    spec.validate()?;
    let shape = x.dims();
    let layout = spec.granularity.layout(&shape)?;
    params.check_shape(&layout)?;
    let data = to_host(&x);
    host::check_input(&data, &shape, "x")?;
    let hp = params.to_host();
    host::check_params(&hp, &layout)?;
    let codes = host::quantize_codes(&data, &layout, spec, &hp);
    Ok(QuantTensor {
        codes: int_tensor(codes, &shape, &x.device()),
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
                table.select(0, self.codes.clone().reshape([n_el])).reshape(shape.clone())
            }
            _ => self.codes.clone().float(),
        };
        let v4 = values.reshape(layout.view4());
        let s4 = self.scales.clone().reshape(layout.scale_view4());
        let v4 = match &self.zero_points {
            Some(z) => v4 - z.clone().reshape(layout.scale_view4()),
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

/// Dequantizes a [`QuantTensor`] (same as [`QuantTensor::dequantize`]).
pub fn dequantize<const D: usize>(q: &QuantTensor<D>) -> Tensor<D> {
    q.dequantize()
}

/// Fake-quantizes `x` with scales computed from `x` itself (dynamic quantization).
///
/// Gradients: straight-through to `x` inside the representable range, zero where clipped.
/// A spec with `ScaleSource::Learned` needs its scale tensor: use [`fake_quant_with`].
pub fn fake_quant<const D: usize>(x: Tensor<D>, spec: &QuantSpec) -> Result<Tensor<D>> {
    let params = compute_params(&x.clone().detach(), spec)?;
    fake_quant_with(x, spec, &params)
}

/// Fake-quantizes `x` with given params: forward `(Q(x/s + z) − z) · s`.
///
/// When neither `x` nor the params track gradients, this runs the fused host kernel (one
/// pass); otherwise the differentiable tensor path with the spec's rounding and the
/// straight-through estimator, so a scale that requires grad receives the LSQ gradient.
pub fn fake_quant_with<const D: usize>(
    x: Tensor<D>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
) -> Result<Tensor<D>> {
    let tracked = x.is_require_grad()
        || params.scales.is_require_grad()
        || params.zero_points.as_ref().is_some_and(|z| z.is_require_grad());
    if tracked {
        fake_quant_custom(x, spec, params, &spec.rounding)
    } else {
        fake_quant_fused(x, spec, params)
    }
}

/// The fused host fake-quant (no autodiff): one parallel pass over the data.
pub fn fake_quant_fused<const D: usize>(
    x: Tensor<D>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
) -> Result<Tensor<D>> {
    spec.validate()?;
    let shape = x.dims();
    let layout = spec.granularity.layout(&shape)?;
    params.check_shape(&layout)?;
    let device = x.device();
    let mut data = x.into_data().try_into_vec_as::<f32>().expect("converted to f32 above");
    host::check_input(&data, &shape, "x")?;
    let hp = params.to_host();
    host::check_params(&hp, &layout)?;
    host::fake_quant_in_place(&mut data, &layout, spec, &hp);
    Ok(float_tensor(data, &shape, &device))
}

/// Applies `rounding` (forward value + surrogate gradient) to `v` of any rank.
fn round_with<const D: usize>(v: Tensor<D>, rounding: &dyn RoundingFn) -> Tensor<D> {
    let shape = v.dims();
    let n = shape.iter().product::<usize>();
    let flat = v.reshape([n]);
    let value = rounding.forward(flat.clone().detach());
    let out = if rounding.is_straight_through() {
        flat.clone() + (value - flat).detach()
    } else {
        let sur = rounding.surrogate_grad(flat.clone().detach());
        with_surrogate_grad(flat, value, sur)
    };
    out.reshape(shape)
}

/// Forward value `value`; backward `d out / d x = surrogate` (element-wise).
pub fn with_surrogate_grad<const D: usize>(x: Tensor<D>, value: Tensor<D>, surrogate: Tensor<D>) -> Tensor<D> {
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

/// The differentiable fake-quant with any rounding rule (built-in or a custom [`RoundingFn`]).
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
    spec.validate()?;
    let shape = x.dims();
    let layout = spec.granularity.layout(&shape)?;
    params.check_shape(&layout)?;
    if shape.iter().product::<usize>() == 0 {
        return Err(QuantError::EmptyTensor { what: "x", shape: shape.to_vec() });
    }
    let sv = layout.scale_view4();
    let s4 = params.scales.clone().reshape(sv);
    // A zero scale (an all-zero NVFP4 block) maps its elements to 0; divide by 1 there.
    let zero_mask: Tensor<4, Bool> = s4.clone().equal_elem(0.0);
    let s_div = s4.clone().mask_fill(zero_mask, 1.0);
    let z4 = params.zero_points.as_ref().map(|z| z.clone().reshape(sv));
    let x4 = x.reshape(layout.view4());
    let v = x4 / s_div;
    let v = match &z4 {
        Some(z) => v + z.clone(),
        None => v,
    };
    let fmt = spec.format;
    let q = match fmt {
        Format::Int { .. } | Format::Ternary => {
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
            let q = round_with(vc / step.clone(), rounding) * step;
            if m.saturating {
                q
            } else {
                let over = q.clone().abs().greater_elem(max);
                let fill = if m.special == crate::format::Special::Ieee { f32::INFINITY } else { f32::NAN };
                let signed = q.clone().sign().mul_scalar(fill);
                q.mask_where(over, signed)
            }
        }
        Format::Binary => {
            let vc = v.clamp(-1.0, 1.0);
            let value = vc.clone().detach().greater_equal_elem(0.0).float().mul_scalar(2.0).sub_scalar(1.0);
            vc.clone() + (value - vc).detach()
        }
    };
    let q = match z4 {
        Some(z) => q - z,
        None => q,
    };
    Ok((q * s4).reshape(shape))
}

/// Whether `spec` needs a scale parameter supplied by the caller (learned scales).
pub fn needs_learned_scale(spec: &QuantSpec) -> bool {
    matches!(spec.scale.source, ScaleSource::Learned(_))
}
