//! One fused, differentiable fake-quant op, registered through Burn's backend extension
//! mechanism ([`FakeQuantBackend`]).
//!
//! # What runs where
//!
//! [`crate::fake_quant_with`] sends every spec this op [supports](supports) to it on a Flex
//! (CPU) device, plain or autodiff (with or without gradient checkpointing):
//! - forward: quantize-dequantize in one pass, reading `x` in place (zero copy) and writing
//!   one new buffer — or, when nothing else holds `x` (moved in, outside autodiff), `x`'s own
//!   buffer in place — in parallel (rayon) above [`PARALLEL_THRESHOLD`] elements; the pass
//!   also checks `x` (non-finite values; a row holding one is left as it is, so the error
//!   names the first from the output) and the params (scales, zero-points), so the typed
//!   errors of the reference cost no extra reduction;
//! - backward (under autodiff): one pass gives the gradient of `x` (straight-through inside
//!   the representable range, 0 where clipped; clipped straight-through `|v| ≤ 1` for binary),
//!   the LSQ gradient of the scale reduced per scale cell inside the kernel (times
//!   [`FakeQuantArgs::scale_grad`]), and the zero-point's gradient when there is one.
//!
//! Everything else keeps the reference chain, [`crate::fake_quant_reference`] (the
//! differentiable chain of ~28 element-wise Burn ops with detach tricks, which also defines
//! the semantics this op reproduces):
//! - other devices (ndarray); on wgpu (feature `wgpu`) the CubeCL kernels of `cube.rs` run the
//!   specs [`cube_spec_supported`] accepts (all but stochastic rounding and exotic minifloats),
//!   the chain the rest;
//! - custom rounding rules ([`crate::Rounding::Custom`], tensor-level
//!   [`crate::RoundingFn`]s): they are tensor functions, with no per-element form;
//! - a rounding offset ([`crate::fake_quant_offset`], AutoRound);
//! - non-f32 tensors (f16, bf16, f64): the reference chain computes in the tensor's dtype.
//!
//! # Semantics (the reference chain's, element for element)
//!
//! With `v = x/s + z` (no `+ z` without a zero-point; `s` the element's scale cell, `z` its
//! zero-point), `q = Q(v)` the grid value and `y = (q − z)·s`:
//! - integer and ternary grids: `Q(v) = R(clamp(v, qmin, qmax))`;
//! - minifloats: `Q(v) = step(v')·R(v'/step(v'))` with `v' = clamp(v, ±max)` when saturating,
//!   `v` otherwise (overflow then gives ±Inf or NaN as the format's specials say); the binade
//!   step is a constant for the gradient;
//! - binary: `Q(v) = sign(v)` (`+1` at 0);
//! - a zero scale (an all-zero NVFP4 block) gives `y = 0`.
//!
//! Gradients, with `g` the output gradient and "inside" meaning `v` within the grid's range
//! (`[qmin, qmax]`, `[−max, max]`, `[−1, 1]`; for a non-saturating minifloat: not overflowed):
//! `dx = g·s/s` inside, 0 outside; `ds = Σ g·(q − v)` inside, `Σ g·(q − z)` outside (LSQ);
//! `dz = Σ −g·s` outside, 0 inside. Sums run over the elements of each scale cell.
//! Values are bit-exact to the chain (same f32 operations in the same order); gradients of
//! the scale and zero-point are sums, reduced in another order (f32 partial sums of at most
//! 32 terms per lane, then f64), so they agree to rounding only.

mod autodiff;
#[cfg(feature = "wgpu")]
mod cube;
mod flex;
#[cfg(test)]
mod tests;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DispatchDevice, backend_extension};
use burn::tensor::{DType, Device, Tensor};

use crate::error::{QuantError, Result};
use crate::format::Format;
use crate::granularity::{Granularity, Layout};
use crate::host;
use crate::quantize::QuantParams;
use crate::rounding::{Rounding, RoundingFn};
use crate::spec::QuantSpec;

#[cfg(feature = "wgpu")]
pub use cube::{cube_calls, spec_supported as cube_spec_supported};
pub use flex::{FusedCalls, fused_calls};

/// Above this many elements the Flex kernels run in parallel (rayon's global pool, shared
/// with Flex itself).
pub const PARALLEL_THRESHOLD: usize = 1 << 16;

/// Bit of the forward's status: `x` holds a NaN or an infinity.
pub const STATUS_NON_FINITE_X: u32 = 1;
/// Bit of the forward's status: a scale is non-finite, or negative where the spec does not
/// allow negative scales.
pub const STATUS_INVALID_SCALE: u32 = 2;
/// Bit of the forward's status: a zero-point is non-finite.
pub const STATUS_NON_FINITE_ZERO_POINT: u32 = 4;

/// Which scale cell each element of `x` belongs to: `x` is viewed as
/// `[outer, axis_len, inner]` (row-major, the granularity's axis in the middle), and the scale
/// tensor is row-major in the layout's scale shape.
///
/// The cell of the element at `(o, n, i)` is [`CellLayout::cell`]:
/// - per tensor: `outer = inner = 1`, `group = axis_len = numel`: always cell 0;
/// - per channel: `group = 1`, `spans_outer_inner = false`: cell `n`;
/// - per group: `spans_outer_inner = true`: cell `(o·groups + n / group)·inner + i`, where
///   `groups = ceil(axis_len / group)` (the last group may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellLayout {
    /// Product of the dimensions before the axis.
    pub outer: usize,
    /// Length of the axis.
    pub axis_len: usize,
    /// Product of the dimensions after the axis.
    pub inner: usize,
    /// Elements per group along the axis (1 per channel, `axis_len` per tensor).
    pub group: usize,
    /// Whether the scales vary along `outer` and `inner` (per group), or only along the axis
    /// (per channel, per tensor).
    pub spans_outer_inner: bool,
}

impl CellLayout {
    /// The cell layout of a resolved granularity.
    pub fn of(layout: &Layout) -> Self {
        Self {
            outer: layout.outer.max(1),
            axis_len: layout.axis_len.max(1),
            inner: layout.inner.max(1),
            group: layout.group.max(1),
            spans_outer_inner: matches!(
                layout.granularity,
                Granularity::PerGroup { .. } | Granularity::PerInputGroup { .. }
            ),
        }
    }

    /// Number of groups along the axis.
    pub fn groups(&self) -> usize {
        self.axis_len.div_ceil(self.group)
    }

    /// Number of scale cells.
    pub fn cells(&self) -> usize {
        if self.spans_outer_inner {
            self.outer * self.groups() * self.inner
        } else {
            self.groups()
        }
    }

    /// Number of elements of `x`.
    pub fn numel(&self) -> usize {
        self.outer * self.axis_len * self.inner
    }

    /// The scale cell of the element at row-major flat index `idx`.
    #[inline(always)]
    pub fn cell(&self, idx: usize) -> usize {
        let i = idx % self.inner;
        let n = (idx / self.inner) % self.axis_len;
        if self.spans_outer_inner {
            let o = idx / (self.inner * self.axis_len);
            (o * self.groups() + n / self.group) * self.inner + i
        } else {
            n / self.group
        }
    }
}

/// Everything the fused op needs besides its tensors: plain `Copy` values, so that every
/// backend's kernel (Flex here, CubeCL in `cube.rs`) reads the same description.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FakeQuantArgs {
    /// The element grid.
    pub format: Format,
    /// Which scale cell each element belongs to.
    pub cells: CellLayout,
    /// A built-in rounding rule (never [`Rounding::Custom`]). Stochastic rounding adds
    /// `crate::rounding::uniform(seed, flat_index)` before flooring, like the chain.
    pub rounding: Rounding,
    /// Whether the zero-point tensor is used (otherwise it is a placeholder and ignored: no
    /// `+ z`, no `− z`, no gradient).
    pub has_zero_point: bool,
    /// Whether negative scales are valid (the spec's symmetric-scale convention makes them).
    pub allow_negative_scales: bool,
    /// LSQ gradient scale: the scale's gradient is multiplied by it (1.0: the chain's
    /// gradient; LSQ uses `1/sqrt(numel · qmax)`).
    pub scale_grad: f32,
}

impl FakeQuantArgs {
    /// The arguments for `spec` on a tensor of `shape`.
    ///
    /// # Errors
    /// The spec's shape errors ([`QuantSpec::check_shape`]); [`QuantError::InvalidConfig`] for a
    /// custom rounding rule (it has no per-element form: use the reference chain).
    pub fn new(spec: &QuantSpec, shape: &[usize], scale_grad: f32) -> Result<Self> {
        if spec.rounding.is_custom() {
            return Err(QuantError::config(
                "rounding",
                spec.rounding.name(),
                "a custom rounding rule has no per-element form: the fused op cannot run it",
            ));
        }
        let layout = spec.check_shape(shape)?;
        Ok(Self {
            format: spec.format,
            cells: CellLayout::of(&layout),
            rounding: spec.rounding,
            has_zero_point: spec.zero_point.is_asymmetric(),
            allow_negative_scales: spec.allows_negative_scales(),
            scale_grad,
        })
    }
}

/// The fused fake-quant as a Burn backend extension.
///
/// # Contract (every implementation)
/// - `x`: any shape, f32, `args.cells.numel()` elements (row-major view `[outer, axis_len,
///   inner]`); `scale` and `zero_point`: `args.cells.cells()` elements each, row-major in the
///   scale shape (any shape with that many elements); when `args.has_zero_point` is false,
///   `zero_point` is a placeholder (callers pass the scale again) and must be ignored.
/// - [`fake_quant`](FakeQuantBackend::fake_quant) returns `(y, status)`: `y` of `x`'s shape
///   with the values of the [module docs](self), and `status`, a one-element f32 tensor whose
///   value is the bitwise or of [`STATUS_NON_FINITE_X`], [`STATUS_INVALID_SCALE`] and
///   [`STATUS_NON_FINITE_ZERO_POINT`] (0: all valid). `y` is unspecified where the status is
///   not 0 (the caller turns it into an error).
/// - [`fake_quant_backward`](FakeQuantBackend::fake_quant_backward) returns
///   `(dx, d_scale, d_zero_point)` for the output gradient `grad` (shape of `x`), shaped like
///   `x`, `scale` and `zero_point`; `d_scale` is multiplied by `args.scale_grad`;
///   `d_zero_point` is unspecified (any tensor of the right shape) without a zero-point.
/// - Tie conventions: nearest-even rounds ties to even; no other backend-specific rounding.
///
/// The `Autodiff` implementation is generic over the inner backend (it calls the inner
/// backward), so a new backend implements the two methods on its primitives and adds its
/// selector to the attribute below.
#[backend_extension(
    Autodiff,
    Flex: cfg(all()),
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu")
)]
pub trait FakeQuantBackend: Backend {
    /// Fused fake-quant forward: `(y, status)`, see the trait's contract.
    #[fusion(meta = |x, _scale, _zero_point, _args| (
        x.clone(),
        burn::backend::fusion::custom::TensorSpec::new([1].into(), DType::F32),
    ))]
    fn fake_quant(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        args: FakeQuantArgs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Fused fake-quant backward: `(dx, d_scale, d_zero_point)`, see the trait's contract.
    /// Not itself differentiable.
    #[fusion(meta = |x, scale, zero_point, _grad, _args| (x.clone(), scale.clone(), zero_point.clone()))]
    fn fake_quant_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        zero_point: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        args: FakeQuantArgs,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether `device` runs the fused op: a Flex device, plain or autodiff; with the feature
/// `wgpu`, also a CubeCL (wgpu) device, for the specs of [`cube_spec_supported`].
pub fn device_supported(device: &Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        DispatchDevice::Flex(_)
    ) || on_cube(device)
}

/// Whether `device` is a CubeCL device (plain or autodiff).
fn on_cube(device: &Device) -> bool {
    #[cfg(feature = "wgpu")]
    return matches!(
        device.clone().without_autodiff().as_dispatch(),
        DispatchDevice::Cube(_)
    );
    #[cfg(not(feature = "wgpu"))]
    return {
        let _ = device;
        false
    };
}

/// Whether [`fake_quant`] runs `x` under `spec` with `params` (otherwise use the reference
/// chain): a Flex device (or, with the feature `wgpu`, a CubeCL device and a spec of
/// [`cube_spec_supported`]), f32 tensors, a built-in rounding rule, and params on the same
/// device as `x` (or its non-autodiff twin).
pub fn supports<const D: usize>(x: &Tensor<D>, spec: &QuantSpec, params: &QuantParams<D>) -> bool {
    let cube = on_cube(&x.device());
    // Every tensor on a supported device of the same backend as `x`.
    let on_flex = |t: &Tensor<D>| {
        device_supported(&t.device()) && on_cube(&t.device()) == cube && t.dtype() == DType::F32
    };
    #[cfg(feature = "wgpu")]
    let kernel = !cube || cube_spec_supported(spec);
    #[cfg(not(feature = "wgpu"))]
    let kernel = true;
    !spec.rounding.is_custom()
        && kernel
        && on_flex(x)
        && on_flex(&params.scales)
        && params.zero_points.as_ref().is_none_or(on_flex)
        && params.zero_points.is_some() == spec.zero_point.is_asymmetric()
}

/// The fused fake-quant of `x` under `spec` with `params`, differentiable in `x`, the scales
/// and the zero-points (see the [module docs](self)); the scale's gradient is multiplied by
/// `scale_grad` (1.0 for the reference chain's gradient).
///
/// # Errors
/// Like [`crate::fake_quant_with`]: shape errors, [`QuantError::EmptyTensor`],
/// [`QuantError::InvalidScale`], [`QuantError::NonFinite`] (zero-points, then `x`), and
/// [`QuantError::InvalidConfig`] when [`supports`] is false (custom rounding rule, not on Flex, not
/// f32, zero-points not matching the spec).
pub fn fake_quant<const D: usize>(
    x: Tensor<D>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
    scale_grad: f32,
) -> Result<Tensor<D>> {
    let shape = x.dims();
    let args = FakeQuantArgs::new(spec, &shape, scale_grad)?;
    let layout = spec.check_shape(&shape)?;
    params.check_shape(&layout)?;
    if !supports(&x, spec, params) {
        return Err(QuantError::config(
            "device",
            format!("{:?} {:?}", x.device(), x.dtype()),
            "the fused fake-quant runs f32 tensors on Flex devices with a built-in rounding rule and the spec's zero-points",
        ));
    }
    if args.cells.numel() == 0 || shape.iter().product::<usize>() == 0 {
        return Err(QuantError::EmptyTensor {
            what: "x",
            shape: shape.to_vec(),
        });
    }
    let scale = params.scales.clone();
    let zero = params.zero_points.clone().unwrap_or_else(|| scale.clone());
    // The Flex kernel leaves rows with a non-finite input as they are, so its output names
    // the same first non-finite element as `x` wherever quantizing a finite value cannot
    // overflow (every format but non-saturating minifloats): `x` itself need not be kept
    // for the error, and an `x` nothing else holds is overwritten in place.
    let overflows = matches!(spec.format, Format::Minifloat(m) if !m.saturating);
    let keep_x = on_cube(&x.device()) || overflows;
    let x_for_error = keep_x.then(|| x.clone());
    let (y, status) = <burn::backend::Dispatch as FakeQuantBackend>::fake_quant(
        x.into_dispatch(),
        scale.into_dispatch(),
        zero.into_dispatch(),
        args,
    );
    let y = Tensor::<D>::from_dispatch(y);
    let status = Tensor::<1>::from_dispatch(status);
    let status = status
        .into_data()
        .iter::<f32>()
        .next()
        .map_or(0, |v| v as u32);
    if status != 0 {
        let x = x_for_error.as_ref().unwrap_or(&y);
        return Err(status_error(x, spec, params, &layout, status));
    }
    Ok(y)
}

/// The typed error behind a non-zero status (the slow path: reads the params, and `x` if it
/// must, to name the first offending element), in the reference chain's order: params first.
fn status_error<const D: usize>(
    x: &Tensor<D>,
    spec: &QuantSpec,
    params: &QuantParams<D>,
    layout: &Layout,
    status: u32,
) -> QuantError {
    if status & (STATUS_INVALID_SCALE | STATUS_NON_FINITE_ZERO_POINT) != 0
        && let Err(e) = host::check_params(&params.to_host(), layout, spec)
    {
        return e;
    }
    let data = x.to_data().try_into_vec_as::<f32>().unwrap_or_default();
    match host::check_input(&data, &x.dims(), "x") {
        Err(e) => e,
        Ok(()) => QuantError::config(
            "status",
            status,
            "the fused fake-quant reported invalid input that the host check did not find",
        ),
    }
}

/// Runs `f` on a zero-copy f32 view of `x`'s data when `x` lives on a Flex device (plain or
/// autodiff; contiguous, else copied once), `None` otherwise (other devices, non-f32).
pub fn with_host_slice<const D: usize, R>(x: &Tensor<D>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    flex::with_slice(x, f)
}
