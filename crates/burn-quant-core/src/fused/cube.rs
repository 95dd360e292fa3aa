//! The CubeCL kernels of the fused fake-quant (feature `wgpu`): [`FakeQuantBackend`] for
//! `burn_cubecl::CubeBackend`, the one backend type of every CubeCL runtime (wgpu/Vulkan/Metal
//! here; CUDA and ROCm would take the same kernels), and — since Burn's `fusion` is on with a
//! CubeCL runtime — for `Fusion<CubeBackend>` through the `Fusion` selector, which queues the
//! op and runs this implementation when the stream is flushed.
//!
//! Three `#[cube(launch)]` kernels, one GPU thread per element (or per scale cell):
//! - [`fq_forward`]: `y = (Q(x/s + z) − z)·s`, plus three validity flags (non-finite `x`,
//!   invalid scale, non-finite zero-point) that every offending thread sets to the same value,
//!   summed into the trait's one-element status;
//! - [`fq_backward`]: `dx` and the element-wise terms of the scale's LSQ gradient (times
//!   `scale_grad`) and of the zero-point's gradient, in one pass;
//! - [`fq_cell_sum`]: the per-cell sum of those terms along the axis, one thread per cell
//!   (ragged last group included). Per tensor and per channel, Burn's own reductions
//!   (`float_sum`, `float_sum_dim`) sum over the other axes first.
//!
//! `Q` is one of the grids of [`CubeGrid`]: integers (and ternary) `R(clamp(v, qmin, qmax))`;
//! minifloats with the binade step `2^(max(⌊log2|v|⌋, emin) − mantissa)` read from the f32
//! exponent bits (exact, no `log2`), saturating or overflowing to ±Inf / NaN; binary `±1`.
//! `R` is one of the deterministic built-in rules, written out with `floor`/`ceil` and exact
//! comparisons: WGSL's `round` is ties-to-even but SPIR-V's leaves ties to the implementation,
//! so nearest-even is coded explicitly. Stochastic rounding (a 64-bit counter hash) and
//! minifloats whose binade steps leave the f32 normals are not here: [`spec_supported`] sends
//! them to the reference chain. The formulas are those of the [module docs](super), element for
//! element; the kernels compute in the tensor's float type (f32: the wrapper sends only f32).

use std::sync::atomic::{AtomicU64, Ordering};

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{FloatDType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::client::Client;
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, prelude::*};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::{FakeQuantArgs, FakeQuantBackend, FusedCalls};
use crate::format::{Format, Minifloat, Special};
use crate::rounding::Rounding;
use crate::spec::QuantSpec;

static FORWARD: AtomicU64 = AtomicU64::new(0);
static BACKWARD: AtomicU64 = AtomicU64::new(0);

/// How many times the CubeCL kernels of the fused op ran in this process (all threads: with
/// Burn's fusion a queued op may run on whichever thread flushes the stream): a test hook
/// proving which path ran, like [`super::fused_calls`] for Flex.
pub fn cube_calls() -> FusedCalls {
    FusedCalls {
        forward: FORWARD.load(Ordering::Relaxed),
        backward: BACKWARD.load(Ordering::Relaxed),
    }
}

/// Whether the CubeCL kernels implement `spec` (built-in deterministic rounding; minifloats
/// whose binade steps are normal f32, which every OCP format's are). The rest takes the
/// reference chain on CubeCL devices.
pub fn spec_supported(spec: &QuantSpec) -> bool {
    let rounding = round_of(&spec.rounding).is_some();
    let format = match spec.format {
        Format::Minifloat(m) => steps_are_normal(&m),
        Format::Int { .. } | Format::Ternary | Format::Binary => true,
    };
    rounding && format
}

/// Whether every binade step of `m` (and its inverse) is a normal f32.
fn steps_are_normal(m: &Minifloat) -> bool {
    let kmin = m.emin() - m.mantissa as i32;
    let kmax = m.emax() + 1 - m.mantissa as i32;
    kmin >= -126 && kmax <= 126
}

/// The grid of a kernel (a compile-time kernel parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CubeGrid {
    /// Integers (and ternary) in `[lo, hi]`.
    Int,
    /// A saturating minifloat, `[lo, hi] = [−max, max]`.
    SatMinifloat,
    /// A non-saturating minifloat with IEEE-style specials: overflow (`|q| > hi`) gives ±Inf.
    MinifloatInf,
    /// A non-saturating minifloat without infinities: overflow gives NaN.
    MinifloatNan,
    /// `±1` (`+1` at 0), gradient passing on `[lo, hi] = [−1, 1]`.
    Binary,
}

/// A deterministic rounding rule of a kernel (a compile-time kernel parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CubeRound {
    /// Nearest, ties to even.
    NearestEven,
    /// Nearest, ties away from zero.
    HalfUp,
    /// Toward −∞.
    Floor,
    /// Toward +∞.
    Ceil,
    /// Toward zero.
    TowardZero,
}

fn round_of(r: &Rounding) -> Option<CubeRound> {
    match r {
        Rounding::NearestEven => Some(CubeRound::NearestEven),
        Rounding::HalfUp => Some(CubeRound::HalfUp),
        Rounding::Floor => Some(CubeRound::Floor),
        Rounding::Ceil => Some(CubeRound::Ceil),
        Rounding::TowardZero => Some(CubeRound::TowardZero),
        Rounding::Stochastic { .. } | Rounding::Custom { .. } => None,
    }
}

/// The kernels' plain arguments, from [`FakeQuantArgs`].
#[derive(Clone, Copy, Debug)]
struct Launch {
    grid: CubeGrid,
    round: CubeRound,
    lo: f32,
    hi: f32,
    emin: i32,
    mantissa: i32,
    axis_len: u32,
    inner: u32,
    group: u32,
    groups: u32,
    spans: bool,
}

impl Launch {
    fn of(args: &FakeQuantArgs) -> Self {
        let (grid, lo, hi, emin, mantissa) = match args.format {
            Format::Minifloat(m) => {
                let max = m.max_value();
                let grid = if m.saturating {
                    CubeGrid::SatMinifloat
                } else if m.special == Special::Ieee {
                    CubeGrid::MinifloatInf
                } else {
                    CubeGrid::MinifloatNan
                };
                (grid, -max, max, m.emin(), m.mantissa as i32)
            }
            Format::Binary => (CubeGrid::Binary, -1.0, 1.0, 0, 0),
            other => (CubeGrid::Int, other.min_value(), other.max_value(), 0, 0),
        };
        let c = args.cells;
        Self {
            grid,
            // Callers check `spec_supported`; nearest-even for anything else.
            round: round_of(&args.rounding).unwrap_or(CubeRound::NearestEven),
            lo,
            hi,
            emin,
            mantissa,
            axis_len: c.axis_len as u32,
            inner: c.inner as u32,
            group: c.group as u32,
            groups: c.groups() as u32,
            spans: c.spans_outer_inner,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Kernels
// ------------------------------------------------------------------------------------------

/// The scale cell of flat element `idx` (see [`super::CellLayout::cell`]).
#[cube]
fn cell_of(
    idx: usize,
    axis_len: u32,
    inner: u32,
    group: u32,
    groups: u32,
    #[comptime] spans: bool,
) -> usize {
    let inner = inner as usize;
    let axis_len = axis_len as usize;
    let i = idx % inner;
    let n = (idx / inner) % axis_len;
    let mut cell = n / group as usize;
    if spans {
        let o = idx / (inner * axis_len);
        cell = (o * groups as usize + cell) * inner + i;
    }
    cell
}

/// Whether `v` is finite (exponent bits not all ones).
#[cube]
fn is_finite<F: Float>(v: F) -> bool {
    let bits = u32::reinterpret(f32::cast_from(v));
    ((bits >> 23u32) & 255u32) != 255u32
}

#[cube]
fn round_rule<F: Float>(r: F, #[comptime] round: CubeRound) -> F {
    match round {
        CubeRound::NearestEven => {
            let f = F::floor(r);
            let d = r - f;
            let half = f * F::new(0.5);
            let odd = F::floor(half) != half;
            let up = d > F::new(0.5) || (d == F::new(0.5) && odd);
            select(up, f + F::new(1.0), f)
        }
        CubeRound::HalfUp => {
            let a = F::abs(r);
            let t = F::floor(a);
            let q = select(a - t >= F::new(0.5), t + F::new(1.0), t);
            select(r < F::new(0.0), -q, q)
        }
        CubeRound::Floor => F::floor(r),
        CubeRound::Ceil => F::ceil(r),
        CubeRound::TowardZero => select(r < F::new(0.0), F::ceil(r), F::floor(r)),
    }
}

/// The binade step of a minifloat at `v`: `2^(max(⌊log2|v|⌋, emin) − mantissa)` from the f32
/// exponent bits (an f32 subnormal or zero lies below every minifloat's `emin`).
#[cube]
fn binade_step<F: Float>(v: F, emin: i32, mantissa: i32) -> F {
    let bits = u32::reinterpret(f32::cast_from(F::abs(v)));
    let e = i32::cast_from((bits >> 23u32) & 255u32) - 127i32;
    let e = select(e < emin, emin, e);
    let biased = u32::cast_from(e - mantissa + 127i32);
    F::cast_from(f32::reinterpret(biased << 23u32))
}

/// The grid value `Q(v)` of `v` (grid units).
#[cube]
fn grid_value<F: Float>(
    v: F,
    lo: F,
    hi: F,
    emin: i32,
    mantissa: i32,
    #[comptime] grid: CubeGrid,
    #[comptime] round: CubeRound,
) -> F {
    match grid {
        CubeGrid::Int => round_rule::<F>(F::clamp(v, lo, hi), round),
        CubeGrid::SatMinifloat => {
            let vc = F::clamp(v, lo, hi);
            let step = binade_step::<F>(vc, emin, mantissa);
            round_rule::<F>(vc / step, round) * step
        }
        CubeGrid::MinifloatInf => {
            let step = binade_step::<F>(v, emin, mantissa);
            let q = round_rule::<F>(v / step, round) * step;
            let inf = F::cast_from(f32::reinterpret(0x7f80_0000u32));
            select(F::abs(q) <= hi, q, select(q < F::new(0.0), -inf, inf))
        }
        CubeGrid::MinifloatNan => {
            let step = binade_step::<F>(v, emin, mantissa);
            let q = round_rule::<F>(v / step, round) * step;
            let nan = F::cast_from(f32::reinterpret(0x7fc0_0000u32));
            select(F::abs(q) <= hi, q, nan)
        }
        CubeGrid::Binary => select(v >= F::new(0.0), F::new(1.0), F::new(-1.0)),
    }
}

/// Whether the gradient passes at `v` (grid value `q`).
#[cube]
fn passes<F: Float>(v: F, q: F, lo: F, hi: F, #[comptime] grid: CubeGrid) -> bool {
    match grid {
        CubeGrid::MinifloatInf | CubeGrid::MinifloatNan => F::abs(q) <= hi,
        _ => v >= lo && v <= hi,
    }
}

/// Forward: `out = (Q(x/s + z) − z)·s` (`v = z` where `s = 0`); `flags[k]` set to `2^k` when
/// some `x` is non-finite (k = 0), a scale invalid (1), a zero-point non-finite (2).
#[cube(launch)]
fn fq_forward<F: Float>(
    x: &Tensor<F>,
    s: &Tensor<F>,
    z: &Tensor<F>,
    out: &mut Tensor<F>,
    flags: &mut Tensor<F>,
    axis_len: u32,
    inner: u32,
    group: u32,
    groups: u32,
    lo: f32,
    hi: f32,
    emin: i32,
    mantissa: i32,
    #[comptime] spans: bool,
    #[comptime] has_z: bool,
    #[comptime] allow_negative: bool,
    #[comptime] grid: CubeGrid,
    #[comptime] round: CubeRound,
    #[define(F)] _dtype: ElemType,
) {
    let idx = ABSOLUTE_POS;
    if idx >= out.len() {
        terminate!();
    }
    let cell = cell_of(idx, axis_len, inner, group, groups, spans);
    let xv = x[idx];
    let sv = s[cell];
    let mut zv = F::new(0.0);
    if has_z {
        zv = z[cell];
        if !is_finite::<F>(zv) {
            flags[2] = F::new(4.0);
        }
    }
    if !is_finite::<F>(xv) {
        flags[0] = F::new(1.0);
    }
    let mut bad_scale = !is_finite::<F>(sv);
    if !allow_negative {
        bad_scale = bad_scale || sv < F::new(0.0);
    }
    if bad_scale {
        flags[1] = F::new(2.0);
    }
    let v = select(sv == F::new(0.0), zv, xv / sv + zv);
    let q = grid_value::<F>(
        v,
        F::cast_from(lo),
        F::cast_from(hi),
        emin,
        mantissa,
        grid,
        round,
    );
    out[idx] = (q - zv) * sv;
}

/// Backward, element-wise: `dx`, and the scale's (times `scale_grad`) and zero-point's
/// gradient terms before their per-cell sums.
#[cube(launch)]
fn fq_backward<F: Float>(
    x: &Tensor<F>,
    s: &Tensor<F>,
    z: &Tensor<F>,
    g: &Tensor<F>,
    dx: &mut Tensor<F>,
    ds: &mut Tensor<F>,
    dz: &mut Tensor<F>,
    axis_len: u32,
    inner: u32,
    group: u32,
    groups: u32,
    lo: f32,
    hi: f32,
    emin: i32,
    mantissa: i32,
    scale_grad: f32,
    #[comptime] spans: bool,
    #[comptime] has_z: bool,
    #[comptime] grid: CubeGrid,
    #[comptime] round: CubeRound,
    #[define(F)] _dtype: ElemType,
) {
    let idx = ABSOLUTE_POS;
    if idx >= dx.len() {
        terminate!();
    }
    let cell = cell_of(idx, axis_len, inner, group, groups, spans);
    let sv = s[cell];
    let zero_scale = sv == F::new(0.0);
    // The chain divides by the scale with zeros replaced by 1 (and masks their gradient).
    let sd = select(zero_scale, F::new(1.0), sv);
    let mut zv = F::new(0.0);
    if has_z {
        zv = z[cell];
    }
    let v = x[idx] / sd + zv;
    let lo = F::cast_from(lo);
    let hi = F::cast_from(hi);
    let q = grid_value::<F>(v, lo, hi, emin, mantissa, grid, round);
    let pass = passes::<F>(v, q, lo, hi, grid);
    let gr = g[idx];
    dx[idx] = select(pass, (gr * sv) / sd, F::new(0.0));
    let inside = pass && !zero_scale;
    ds[idx] = select(inside, gr * (q - v), gr * (q - zv)) * F::cast_from(scale_grad);
    if has_z {
        dz[idx] = select(pass, F::new(0.0), -(gr * sv));
    }
}

/// Per cell: `out[(o, k, i)] = Σ_{n in group k} t[(o, n, i)]` over a `[outer, axis_len, inner]`
/// tensor, one thread per cell (the last group may be shorter).
#[cube(launch)]
fn fq_cell_sum<F: Float>(
    t: &Tensor<F>,
    out: &mut Tensor<F>,
    axis_len: u32,
    inner: u32,
    group: u32,
    groups: u32,
    #[define(F)] _dtype: ElemType,
) {
    let cell = ABSOLUTE_POS;
    if cell >= out.len() {
        terminate!();
    }
    let inner = inner as usize;
    let axis_len = axis_len as usize;
    let group = group as usize;
    let groups = groups as usize;
    let o = cell / (groups * inner);
    let rem = cell % (groups * inner);
    let k = rem / inner;
    let i = rem % inner;
    let start = k * group;
    let base = o * axis_len * inner + i;
    let mut acc = F::new(0.0);
    for p in 0..group {
        let n = start + p;
        if n < axis_len {
            acc += t[base + n * inner];
        }
    }
    out[cell] = acc;
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------

fn dims(client: &Client, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, n);
    (calculate_cube_count_elemwise(client, n, dim), dim)
}

fn empty_like(t: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_contiguous_dtype(t.client.clone(), t.device.clone(), shape, t.dtype)
}

/// Sums an element-wise term (contiguous, `numel` elements) to one value per scale cell,
/// shaped `shape`.
fn sum_to_cells(t: CubeTensor, l: &Launch, outer: usize, shape: Shape) -> CubeTensor {
    type B = CubeBackend;
    let (axis_len, inner) = (l.axis_len as usize, l.inner as usize);
    if l.groups == 1 && !l.spans {
        return B::float_reshape(B::float_sum(t), shape);
    }
    let (t, outer, inner) = if l.spans {
        (
            B::float_reshape(t, Shape::new([outer, axis_len, inner])),
            outer,
            inner,
        )
    } else {
        // Per channel: reduce the other axes with Burn's kernels first.
        let t = B::float_reshape(t, Shape::new([outer, axis_len, inner]));
        let t = B::float_sum_dim(B::float_sum_dim(t, 2), 0);
        if l.group == 1 {
            return B::float_reshape(t, shape);
        }
        (into_contiguous(t), 1, 1)
    };
    let out = empty_like(&t, shape);
    let (count, dim) = dims(&t.client, outer * l.groups as usize * inner);
    let dtype = t.dtype;
    let client = t.client.clone();
    fq_cell_sum::launch(
        &client,
        count,
        dim,
        t.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        l.axis_len,
        inner as u32,
        l.group,
        l.groups,
        dtype_to_storage_type(dtype),
    );
    out
}

impl FakeQuantBackend for CubeBackend {
    fn fake_quant(
        x: CubeTensor,
        scale: CubeTensor,
        zero_point: CubeTensor,
        args: FakeQuantArgs,
    ) -> (CubeTensor, CubeTensor) {
        FORWARD.fetch_add(1, Ordering::Relaxed);
        let l = Launch::of(&args);
        let x = into_contiguous(x);
        let s = into_contiguous(scale);
        let z = into_contiguous(zero_point);
        let shape = x.meta.shape().clone();
        let n = shape.num_elements();
        let out = empty_like(&x, shape);
        let flags = Self::float_zeros(Shape::new([3]), &x.device, FloatDType::F32);
        if n > 0 {
            let (count, dim) = dims(&x.client, n);
            let dtype = x.dtype;
            let client = x.client.clone();
            fq_forward::launch(
                &client,
                count,
                dim,
                x.into_tensor_arg(),
                s.into_tensor_arg(),
                z.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                flags.clone().into_tensor_arg(),
                l.axis_len,
                l.inner,
                l.group,
                l.groups,
                l.lo,
                l.hi,
                l.emin,
                l.mantissa,
                l.spans,
                args.has_zero_point,
                args.allow_negative_scales,
                l.grid,
                l.round,
                dtype_to_storage_type(dtype),
            );
        }
        // The flags are 0 or 2^k: their sum is the status bits.
        (out, Self::float_sum(flags))
    }

    fn fake_quant_backward(
        x: CubeTensor,
        scale: CubeTensor,
        zero_point: CubeTensor,
        grad: CubeTensor,
        args: FakeQuantArgs,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        BACKWARD.fetch_add(1, Ordering::Relaxed);
        let l = Launch::of(&args);
        let x = into_contiguous(x);
        let s = into_contiguous(scale);
        let z = into_contiguous(zero_point);
        let g = into_contiguous(grad);
        let shape = x.meta.shape().clone();
        let s_shape = s.meta.shape().clone();
        let z_shape = z.meta.shape().clone();
        let n = shape.num_elements();
        let dx = empty_like(&x, shape.clone());
        let ds = empty_like(&x, shape.clone());
        // Without a zero-point its gradient is unspecified: a one-element placeholder.
        let dz = empty_like(
            &x,
            if args.has_zero_point {
                shape
            } else {
                Shape::new([1])
            },
        );
        if n > 0 {
            let (count, dim) = dims(&x.client, n);
            let dtype = x.dtype;
            let client = x.client.clone();
            fq_backward::launch(
                &client,
                count,
                dim,
                x.into_tensor_arg(),
                s.into_tensor_arg(),
                z.into_tensor_arg(),
                g.into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                ds.clone().into_tensor_arg(),
                dz.clone().into_tensor_arg(),
                l.axis_len,
                l.inner,
                l.group,
                l.groups,
                l.lo,
                l.hi,
                l.emin,
                l.mantissa,
                args.scale_grad,
                l.spans,
                args.has_zero_point,
                l.grid,
                l.round,
                dtype_to_storage_type(dtype),
            );
        }
        let outer = args.cells.outer;
        let ds = sum_to_cells(ds, &l, outer, s_shape);
        let dz = if args.has_zero_point {
            sum_to_cells(dz, &l, outer, z_shape)
        } else {
            Self::float_zeros(z_shape, &dz.device, FloatDType::F32)
        };
        (dx, ds, dz)
    }
}
