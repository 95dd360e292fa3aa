//! The Flex (CPU) kernels of the fused fake-quant: one pass forward (zero-copy read, one new
//! buffer), one pass backward (dx, and the scale / zero-point gradients reduced per cell).

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout as FlexLayout};
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{Bytes, DType, FloatDType, Shape, Tensor};
use rayon::prelude::*;

use super::{
    CellLayout, FakeQuantArgs, FakeQuantBackend, PARALLEL_THRESHOLD, STATUS_INVALID_SCALE,
    STATUS_NON_FINITE_X, STATUS_NON_FINITE_ZERO_POINT,
};
use crate::element::{Grid, Rounder, with_grid_and_rounder};

thread_local! {
    static CALLS: Cell<FusedCalls> = const { Cell::new(FusedCalls { forward: 0, backward: 0 }) };
}

/// How many times the Flex kernels of the fused op ran on this thread (Flex runs eagerly on
/// the caller's thread, autodiff's backward included): a test hook proving which path ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FusedCalls {
    /// Forward kernel calls.
    pub forward: u64,
    /// Backward kernel calls.
    pub backward: u64,
}

/// The Flex kernel calls made so far on this thread (see [`FusedCalls`]).
pub fn fused_calls() -> FusedCalls {
    CALLS.with(|c| c.get())
}

fn bump(backward: bool) {
    CALLS.with(|c| {
        let mut v = c.get();
        if backward {
            v.backward += 1;
        } else {
            v.forward += 1;
        }
        c.set(v);
    });
}

/// `t` as a contiguous f32 Flex tensor (no copy when it already is one).
fn f32_contiguous(t: FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        Flex::float_cast(t, FloatDType::F32)
    };
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn flex_tensor(v: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(v),
        FlexLayout::contiguous(shape),
        DType::F32,
    )
}

/// Runs `f` on a zero-copy f32 view of a Flex tensor's data (see
/// [`super::with_host_slice`]).
pub(crate) fn with_slice<const D: usize, R>(
    x: &Tensor<D>,
    f: impl FnOnce(&[f32]) -> R,
) -> Option<R> {
    if x.dtype() != DType::F32 || !super::device_supported(&x.device()) {
        return None;
    }
    let t = x
        .clone()
        .without_autodiff()
        .try_into_primitive::<Flex>()
        .ok()?;
    let t = f32_contiguous(t);
    Some(f(t.as_slice::<f32>()?))
}

impl FakeQuantBackend for Flex {
    fn fake_quant(
        x: FlexTensor,
        scale: FlexTensor,
        zero_point: FlexTensor,
        args: FakeQuantArgs,
    ) -> (FlexTensor, FlexTensor) {
        bump(false);
        let shape = x.layout().shape().clone();
        let x = f32_contiguous(x);
        let s = f32_contiguous(scale);
        let z = args.has_zero_point.then(|| f32_contiguous(zero_point));
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let ss = s.as_slice::<f32>().expect("contiguous f32");
        let zs = z
            .as_ref()
            .map(|z| z.as_slice::<f32>().expect("contiguous f32"));
        let mut status = 0u32;
        if ss.len() != args.cells.cells()
            || zs.is_some_and(|z| z.len() != args.cells.cells())
            || xs.len() != args.cells.numel()
        {
            // The wrapper checks shapes; a direct caller gets an invalid-scale status.
            return (
                flex_tensor(vec![0.0; xs.len()], shape),
                flex_tensor(vec![STATUS_INVALID_SCALE as f32], Shape::from(vec![1])),
            );
        }
        if ss
            .iter()
            .any(|&s| !(s.is_finite() && (s >= 0.0 || args.allow_negative_scales)))
        {
            status |= STATUS_INVALID_SCALE;
        }
        if zs.is_some_and(|z| z.iter().any(|v| !v.is_finite())) {
            status |= STATUS_NON_FINITE_ZERO_POINT;
        }
        // An input nothing else holds (an activation moved into the op, outside autodiff,
        // whose forward keeps `x`) is overwritten in place: no new buffer, whose fresh pages
        // cost more than the kernel (see `filled`).
        let in_place = x.is_unique() && x.storage::<f32>().len() == xs.len();
        let (y, finite) = if in_place {
            let mut x = x;
            let buf = x.try_storage_mut::<f32>().expect("unique, checked above");
            let finite = forward_in_place(buf, ss, zs, &args);
            (x, finite)
        } else {
            let (out, finite) = forward(xs, ss, zs, &args);
            (flex_tensor(out, shape), finite)
        };
        if !finite {
            status |= STATUS_NON_FINITE_X;
        }
        (y, flex_tensor(vec![status as f32], Shape::from(vec![1])))
    }

    fn fake_quant_backward(
        x: FlexTensor,
        scale: FlexTensor,
        zero_point: FlexTensor,
        grad: FlexTensor,
        args: FakeQuantArgs,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        bump(true);
        let x_shape = x.layout().shape().clone();
        let s_shape = scale.layout().shape().clone();
        let z_shape = zero_point.layout().shape().clone();
        let x = f32_contiguous(x);
        let g = f32_contiguous(grad);
        let s = f32_contiguous(scale);
        let z = args.has_zero_point.then(|| f32_contiguous(zero_point));
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let gs = g.as_slice::<f32>().expect("contiguous f32");
        let ss = s.as_slice::<f32>().expect("contiguous f32");
        let zs = z
            .as_ref()
            .map(|z| z.as_slice::<f32>().expect("contiguous f32"));
        let (dx, ds, dz) = backward(xs, gs, ss, zs, &args);
        (
            flex_tensor(dx, x_shape),
            flex_tensor(ds, s_shape),
            flex_tensor(dz, z_shape),
        )
    }
}

// ------------------------------------------------------------------------------------------
// Segments: contiguous runs of elements whose scale cells are one cell or consecutive cells.
// ------------------------------------------------------------------------------------------

/// Scale cells of a contiguous segment: all the same cell, or one cell per element from `c0`.
#[derive(Clone, Copy)]
enum Cells {
    One(usize),
    Run(usize),
}

/// Elements per parallel task (a multiple of whole rows).
pub(crate) const TASK: usize = 1 << 15;

/// The row length the drivers split on: whole rows never straddle two tasks.
fn row_len(c: &CellLayout) -> usize {
    if c.cells() == 1 && !c.spans_outer_inner {
        // Per tensor: any split works.
        c.numel().clamp(1, TASK)
    } else if c.inner == 1 {
        c.axis_len
    } else {
        c.inner
    }
}

/// Calls `f(offset_in_row, len, cells)` for each segment of the row starting at flat index
/// `row_start` (length `len`).
#[inline(always)]
fn segments(c: &CellLayout, row_start: usize, len: usize, mut f: impl FnMut(usize, usize, Cells)) {
    if c.cells() == 1 && !c.spans_outer_inner {
        f(0, len, Cells::One(0));
    } else if c.inner == 1 {
        // A row is one outer slab along the axis.
        let o = row_start / c.axis_len;
        if !c.spans_outer_inner {
            // Per channel along the last axis (group 1): cell = axis position.
            if c.group == 1 {
                f(0, len, Cells::Run(0));
            } else {
                let mut n = 0;
                while n < len {
                    let l = c.group.min(len - n);
                    f(n, l, Cells::One(n / c.group));
                    n += l;
                }
            }
        } else {
            let groups = c.groups();
            let mut n = 0;
            while n < len {
                let l = c.group.min(len - n);
                f(n, l, Cells::One(o * groups + n / c.group));
                n += l;
            }
        }
    } else {
        let r = row_start / c.inner;
        let (o, n) = (r / c.axis_len, r % c.axis_len);
        if c.spans_outer_inner {
            f(0, len, Cells::Run((o * c.groups() + n / c.group) * c.inner));
        } else {
            f(0, len, Cells::One(n / c.group));
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// A new buffer of `n` f32, every element written by `fill` (which must write them all: the
/// kernels' drivers cover every element of their output exactly once); `fill`'s result beside.
///
/// The buffer is not zeroed first: `vec![0.0; n]` costs a memset where the allocator reuses
/// memory, or, for fresh pages, one page fault per 4 KiB at the first write. Those faults
/// cost more than the kernel's own work here (measured: 64 MiB allocated and written in
/// ~30 ms, ~5 ms into reused memory), so large buffers ask for transparent huge pages first
/// (`madvise(MADV_HUGEPAGE)` on the 2 MiB-aligned interior, before any page is touched; a
/// hint, ignored where unsupported).
fn filled<R>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>]) -> R) -> (Vec<f32>, R) {
    let mut v = Vec::<f32>::with_capacity(n);
    #[cfg(target_os = "linux")]
    if n * 4 >= 4 << 20 {
        unsafe extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_HUGEPAGE: i32 = 14;
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let end = start + n * 4;
        let (a, b) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if b > a {
            // SAFETY: `[a, b)` lies inside the buffer's allocation (page aligned); the advice
            // only changes how the kernel backs those pages, never their contents.
            unsafe {
                madvise(a as *mut std::ffi::c_void, b - a, MADV_HUGEPAGE);
            }
        }
    }
    let out = fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `fill` initialised all `n` elements (the contract above; each driver writes
    // every element of every segment, which the fused tests check value by value).
    unsafe { v.set_len(n) };
    (v, out)
}

// ------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------

#[inline(always)]
fn fwd_el<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    x: f32,
    s: f32,
    z: f32,
    idx: usize,
) -> f32 {
    if Z {
        // A zero scale (an all-zero NVFP4 block) maps every element to the zero-point.
        let v = if s == 0.0 { z } else { x / s + z };
        (g.grid(v, r, idx) - z) * s
    } else {
        let v = if s == 0.0 { 0.0 } else { x / s };
        g.grid(v, r, idx) * s
    }
}

/// The forward of one segment in place (see [`bwd_seg_impl`] for the backward).
#[inline(always)]
fn fwd_seg_impl<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    base: usize,
    o: &mut [f32],
    s: &[f32],
    z: &[f32],
    cells: Cells,
) {
    match cells {
        Cells::One(ci) => {
            let (sc, zc) = (s[ci], if Z { z[ci] } else { 0.0 });
            for (i, o) in o.iter_mut().enumerate() {
                *o = fwd_el::<G, R, Z>(g, r, *o, sc, zc, base + i);
            }
        }
        Cells::Run(c0) => {
            let len = o.len();
            let ss = &s[c0..c0 + len];
            if Z {
                let zs = &z[c0..c0 + len];
                for (i, (o, (&sc, &zc))) in o.iter_mut().zip(ss.iter().zip(zs)).enumerate() {
                    *o = fwd_el::<G, R, Z>(g, r, *o, sc, zc, base + i);
                }
            } else {
                for (i, (o, &sc)) in o.iter_mut().zip(ss).enumerate() {
                    *o = fwd_el::<G, R, Z>(g, r, *o, sc, 0.0, base + i);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fwd_seg_avx2<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    base: usize,
    o: &mut [f32],
    s: &[f32],
    z: &[f32],
    cells: Cells,
) {
    fwd_seg_impl::<G, R, Z>(g, r, base, o, s, z, cells)
}

/// [`fwd_seg_impl`] with AVX2 where the CPU has it (dispatched per segment: the drivers call
/// it from closures, which do not inherit a caller's target features).
#[inline(always)]
fn fwd_seg<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    base: usize,
    o: &mut [f32],
    s: &[f32],
    z: &[f32],
    cells: Cells,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked); the AVX2 version only differs in the
        // instructions the compiler may use (no FMA contraction happens implicitly).
        return unsafe { fwd_seg_avx2::<G, R, Z>(g, r, base, o, s, z, cells) };
    }
    fwd_seg_impl::<G, R, Z>(g, r, base, o, s, z, cells)
}

/// The forward of one task, in place: `buf[i] = fq(buf[i])` for the rows in `buf`, starting
/// at flat index `start`; returns whether every input was finite.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_task<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    c: &CellLayout,
    rl: usize,
    start: usize,
    buf: &mut [f32],
    s: &[f32],
    z: &[f32],
) -> bool {
    let mut finite = true;
    for (k, row) in buf.chunks_mut(rl).enumerate() {
        // A row with a non-finite input stays as it is (the op fails; the caller names the
        // first non-finite element from the output, which may be `x` itself).
        if !row.iter().fold(true, |ok, v| ok & v.is_finite()) {
            finite = false;
            continue;
        }
        let row_start = start + k * rl;
        segments(c, row_start, row.len(), |off, len, cells| {
            fwd_seg::<G, R, Z>(g, r, row_start + off, &mut row[off..off + len], s, z, cells)
        });
    }
    finite
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn fwd_task_avx2<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    c: &CellLayout,
    rl: usize,
    start: usize,
    buf: &mut [f32],
    s: &[f32],
    z: &[f32],
) -> bool {
    fwd_task::<G, R, Z>(g, r, c, rl, start, buf, s, z)
}

/// `o` written with `x` (same length), as initialised memory.
fn init_from<'a>(o: &'a mut [MaybeUninit<f32>], x: &[f32]) -> &'a mut [f32] {
    debug_assert_eq!(o.len(), x.len());
    for (o, &x) in o.iter_mut().zip(x) {
        o.write(x);
    }
    let len = o.len().min(x.len());
    // SAFETY: the first `len` elements (all of them: the lengths are equal) were written
    // just above; `MaybeUninit<f32>` has the layout of `f32`.
    unsafe { std::slice::from_raw_parts_mut(o.as_mut_ptr().cast::<f32>(), len) }
}

/// Where the forward reads and writes: a new buffer filled from `xs`, or `x`'s own buffer.
enum Io<'a> {
    /// Read `xs`, write `out` (task by task: each chunk is copied, then transformed while it
    /// is in cache).
    Copy {
        xs: &'a [f32],
        out: &'a mut [MaybeUninit<f32>],
    },
    /// Transform in place (an input nothing else holds).
    InPlace(&'a mut [f32]),
}

#[allow(clippy::too_many_arguments)]
fn fwd_run<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    c: &CellLayout,
    io: Io<'_>,
    s: &[f32],
    z: &[f32],
) -> bool {
    let rl = row_len(c);
    let chunk = (TASK / rl).max(1) * rl;
    #[cfg(target_arch = "x86_64")]
    let avx2 = has_avx2();
    let task = |t: usize, buf: &mut [f32]| -> bool {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU supports AVX2 (checked above); the AVX2 version only differs in
            // the instructions the compiler may use (no FMA contraction happens implicitly).
            return unsafe { fwd_task_avx2::<G, R, Z>(g, r, c, rl, t * chunk, buf, s, z) };
        }
        fwd_task::<G, R, Z>(g, r, c, rl, t * chunk, buf, s, z)
    };
    let n = match &io {
        Io::Copy { xs, .. } => xs.len(),
        Io::InPlace(buf) => buf.len(),
    };
    if n > PARALLEL_THRESHOLD {
        let finite = AtomicBool::new(true);
        let flag = |ok: bool| {
            if !ok {
                finite.store(false, Ordering::Relaxed);
            }
        };
        match io {
            Io::Copy { xs, out } => out
                .par_chunks_mut(chunk)
                .zip(xs.par_chunks(chunk))
                .enumerate()
                .for_each(|(t, (o, x))| flag(task(t, init_from(o, x)))),
            Io::InPlace(buf) => buf
                .par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(t, b)| flag(task(t, b))),
        }
        finite.into_inner()
    } else {
        match io {
            Io::Copy { xs, out } => out
                .chunks_mut(chunk)
                .zip(xs.chunks(chunk))
                .enumerate()
                .fold(true, |ok, (t, (o, x))| task(t, init_from(o, x)) & ok),
            Io::InPlace(buf) => buf
                .chunks_mut(chunk)
                .enumerate()
                .fold(true, |ok, (t, b)| task(t, b) & ok),
        }
    }
}

/// The fused forward on slices: `(y, all x finite)`.
pub(crate) fn forward(
    xs: &[f32],
    s: &[f32],
    z: Option<&[f32]>,
    args: &FakeQuantArgs,
) -> (Vec<f32>, bool) {
    filled(xs.len(), |out| forward_io(Io::Copy { xs, out }, s, z, args))
}

/// The fused forward in place on `buf` (an input nothing else holds): whether it was all
/// finite.
pub(crate) fn forward_in_place(
    buf: &mut [f32],
    s: &[f32],
    z: Option<&[f32]>,
    args: &FakeQuantArgs,
) -> bool {
    forward_io(Io::InPlace(buf), s, z, args)
}

fn forward_io(io: Io<'_>, s: &[f32], z: Option<&[f32]>, args: &FakeQuantArgs) -> bool {
    let c = args.cells;
    with_grid_and_rounder!(args.format, args.rounding, |g, r| match z {
        Some(z) => fwd_run::<_, _, true>(g, r, &c, io, s, z),
        None => fwd_run::<_, _, false>(g, r, &c, io, s, &[]),
    })
}

// ------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------

/// `(dx, d scale term, d zero-point term)` of one element (see the module docs of `fused`).
#[inline(always)]
fn bwd_el<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    x: f32,
    gr: f32,
    s: f32,
    z: f32,
    idx: usize,
) -> (f32, f32, f32) {
    // The chain divides by the scale with zeros replaced by 1 (and masks their gradient).
    let sd = if s == 0.0 { 1.0 } else { s };
    let v = if Z { x / sd + z } else { x / sd };
    let q = g.grid(v, r, idx);
    let pass = g.pass(v, q);
    let dx = if pass { (gr * s) / sd } else { 0.0 };
    let ds = if pass && s != 0.0 {
        gr * (q - v)
    } else if Z {
        gr * (q - z)
    } else {
        gr * q
    };
    let dz = if pass { 0.0 } else { -(gr * s) };
    (dx, ds, dz)
}

/// Backward of one segment: writes `dx`, adds the scale / zero-point terms to `acc_s`,
/// `acc_z` (indexed from the segment's first cell: length 1 for `One`, `len` for `Run`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_seg_impl<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    base: usize,
    x: &[f32],
    gr: &[f32],
    dx: &mut [MaybeUninit<f32>],
    s: &[f32],
    z: &[f32],
    cells: Cells,
    acc_s: &mut [f64],
    acc_z: &mut [f64],
) {
    match cells {
        Cells::One(ci) => {
            let (sc, zc) = (s[ci], if Z { z[ci] } else { 0.0 });
            let (mut ts, mut tz) = (0f64, 0f64);
            // One f64 sum would serialise the loop on its add latency and keep it scalar:
            // each FLUSH elements write their terms to a stack buffer (a loop without a
            // reduction, vectorised like the forward), summed in LANES f32 partial sums
            // (each over FLUSH / LANES terms) and flushed into the f64 totals.
            let (mut bs, mut bz) = ([0f32; FLUSH], [0f32; FLUSH]);
            let mut start = base;
            for ((dc, xc), gc) in dx
                .chunks_mut(FLUSH)
                .zip(x.chunks(FLUSH))
                .zip(gr.chunks(FLUSH))
            {
                let n = dc.len();
                for (i, (((d, &x), &gr), (b, c))) in dc
                    .iter_mut()
                    .zip(xc)
                    .zip(gc)
                    .zip(bs.iter_mut().zip(bz.iter_mut()))
                    .enumerate()
                {
                    let (a, tb, tc) = bwd_el::<G, R, Z>(g, r, x, gr, sc, zc, start + i);
                    d.write(a);
                    *b = tb;
                    if Z {
                        *c = tc;
                    }
                }
                ts += lane_sum(&bs[..n]);
                if Z {
                    tz += lane_sum(&bz[..n]);
                }
                start += n;
            }
            acc_s[0] += ts;
            if Z {
                acc_z[0] += tz;
            }
        }
        Cells::Run(c0) => {
            let n = dx.len();
            for i in 0..n {
                let zc = if Z { z[c0 + i] } else { 0.0 };
                let (a, b, c) = bwd_el::<G, R, Z>(g, r, x[i], gr[i], s[c0 + i], zc, base + i);
                dx[i].write(a);
                acc_s[i] += b as f64;
                if Z {
                    acc_z[i] += c as f64;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn bwd_seg_avx2<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    base: usize,
    x: &[f32],
    gr: &[f32],
    dx: &mut [MaybeUninit<f32>],
    s: &[f32],
    z: &[f32],
    cells: Cells,
    acc_s: &mut [f64],
    acc_z: &mut [f64],
) {
    bwd_seg_impl::<G, R, Z>(g, r, base, x, gr, dx, s, z, cells, acc_s, acc_z)
}

/// [`bwd_seg_impl`] with AVX2 where the CPU has it (dispatched per segment: the drivers call
/// it from closures, which would not inherit a caller's target features).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_seg<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    base: usize,
    x: &[f32],
    gr: &[f32],
    dx: &mut [MaybeUninit<f32>],
    s: &[f32],
    z: &[f32],
    cells: Cells,
    acc_s: &mut [f64],
    acc_z: &mut [f64],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked); the AVX2 version only differs in the
        // instructions the compiler may use (no FMA contraction happens implicitly).
        return unsafe {
            bwd_seg_avx2::<G, R, Z>(g, r, base, x, gr, dx, s, z, cells, acc_s, acc_z)
        };
    }
    bwd_seg_impl::<G, R, Z>(g, r, base, x, gr, dx, s, z, cells, acc_s, acc_z)
}

/// f32 partial sums per cell segment in the backward (see `bwd_seg`).
const LANES: usize = 8;
/// Elements per flush of the f32 partial sums into f64 (each lane sums FLUSH / LANES terms).
const FLUSH: usize = 256;

type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);

/// The sum of `v` (at most [`FLUSH`] terms) in [`LANES`] f32 partial sums, widened to f64.
#[inline(always)]
fn lane_sum(v: &[f32]) -> f64 {
    let mut lanes = [0f32; LANES];
    let mut it = v.chunks_exact(LANES);
    for c in &mut it {
        let c: &[f32; LANES] = c.try_into().expect("chunks_exact");
        for j in 0..LANES {
            lanes[j] += c[j];
        }
    }
    let rest: f64 = it.remainder().iter().map(|&t| t as f64).sum();
    lanes.iter().map(|&t| t as f64).sum::<f64>() + rest
}

/// One task of [`bwd_shared`]: the rows of `d`/`x`/`gr` from flat index `t · chunk`; the
/// task's scale and zero-point sums per cell.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_shared_task<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    c: &CellLayout,
    rl: usize,
    start: usize,
    d: &mut [MaybeUninit<f32>],
    x: &[f32],
    gr: &[f32],
    s: &[f32],
    z: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let cells = c.cells();
    let mut acc_s = vec![0f64; cells];
    let mut acc_z = vec![0f64; if Z { cells } else { 0 }];
    for (k, ((drow, xrow), grow)) in d
        .chunks_mut(rl)
        .zip(x.chunks(rl))
        .zip(gr.chunks(rl))
        .enumerate()
    {
        let row_start = start + k * rl;
        segments(c, row_start, drow.len(), |off, len, cl| {
            let c0 = match cl {
                Cells::One(ci) | Cells::Run(ci) => ci,
            };
            let span = if let Cells::Run(_) = cl { len } else { 1 };
            let mut dummy = [0f64; 0];
            let az: &mut [f64] = if Z {
                &mut acc_z[c0..c0 + span]
            } else {
                &mut dummy
            };
            bwd_seg::<G, R, Z>(
                g,
                r,
                row_start + off,
                &xrow[off..off + len],
                &grow[off..off + len],
                &mut drow[off..off + len],
                s,
                z,
                cl,
                &mut acc_s[c0..c0 + span],
                az,
            );
        });
    }
    (acc_s, acc_z)
}

/// Per tensor / per channel: the cells are few; each task folds into its own accumulators.
#[allow(clippy::too_many_arguments)]
fn bwd_shared<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    c: &CellLayout,
    xs: &[f32],
    gs: &[f32],
    s: &[f32],
    z: &[f32],
    scale_grad: f32,
) -> Grads {
    let cells = c.cells();
    let rl = row_len(c);
    let chunk = (TASK / rl).max(1) * rl;
    let task =
        |t: usize, d: &mut [MaybeUninit<f32>], x: &[f32], gr: &[f32]| -> (Vec<f64>, Vec<f64>) {
            bwd_shared_task::<G, R, Z>(g, r, c, rl, t * chunk, d, x, gr, s, z)
        };
    let add = |mut a: (Vec<f64>, Vec<f64>), b: (Vec<f64>, Vec<f64>)| {
        a.0.iter_mut().zip(&b.0).for_each(|(x, y)| *x += y);
        a.1.iter_mut().zip(&b.1).for_each(|(x, y)| *x += y);
        a
    };
    let empty = || (vec![0f64; cells], vec![0f64; if Z { cells } else { 0 }]);
    let (dx, (acc_s, acc_z)) = filled(xs.len(), |dx| {
        if xs.len() > PARALLEL_THRESHOLD {
            dx.par_chunks_mut(chunk)
                .zip(xs.par_chunks(chunk))
                .zip(gs.par_chunks(chunk))
                .enumerate()
                .map(|(t, ((d, x), gr))| task(t, d, x, gr))
                .reduce(empty, add)
        } else {
            dx.chunks_mut(chunk)
                .zip(xs.chunks(chunk))
                .zip(gs.chunks(chunk))
                .enumerate()
                .map(|(t, ((d, x), gr))| task(t, d, x, gr))
                .fold(empty(), add)
        }
    });
    let ds = acc_s.iter().map(|&v| (v as f32) * scale_grad).collect();
    let dz = if Z {
        acc_z.iter().map(|&v| v as f32).collect()
    } else {
        vec![0f32; cells]
    };
    (dx, ds, dz)
}

/// Per group: every block of `group` rows of one outer index owns `inner` consecutive cells,
/// so blocks write disjoint gradients.
#[allow(clippy::too_many_arguments)]
fn bwd_groups<G: Grid, R: Rounder, const Z: bool>(
    g: G,
    r: R,
    c: &CellLayout,
    xs: &[f32],
    gs: &[f32],
    s: &[f32],
    z: &[f32],
    scale_grad: f32,
) -> Grads {
    let cells = c.cells();
    let (inner, groups, slab) = (c.inner, c.groups(), c.axis_len * c.inner);
    let block = c.group * inner;
    let mut ds = vec![0f32; cells];
    let mut dz = vec![0f32; cells];
    let run_block = |o: usize,
                     gi: usize,
                     d: &mut [MaybeUninit<f32>],
                     x: &[f32],
                     gr: &[f32],
                     ds: &mut [f32],
                     dz: &mut [f32]| {
        let start = o * slab + gi * block;
        let c0 = (o * groups + gi) * inner;
        let mut acc_s = vec![0f64; inner];
        let mut acc_z = vec![0f64; if Z { inner } else { 0 }];
        let cl = if inner == 1 {
            Cells::One(c0)
        } else {
            Cells::Run(c0)
        };
        for (k, ((drow, xrow), grow)) in d
            .chunks_mut(inner)
            .zip(x.chunks(inner))
            .zip(gr.chunks(inner))
            .enumerate()
        {
            bwd_seg::<G, R, Z>(
                g,
                r,
                start + k * inner,
                xrow,
                grow,
                drow,
                s,
                z,
                cl,
                &mut acc_s,
                &mut acc_z,
            );
        }
        for (d, a) in ds.iter_mut().zip(&acc_s) {
            *d = (*a as f32) * scale_grad;
        }
        if Z {
            for (d, a) in dz.iter_mut().zip(&acc_z) {
                *d = *a as f32;
            }
        }
    };
    let (dx, ()) = filled(xs.len(), |dx| {
        if xs.len() > PARALLEL_THRESHOLD {
            let min_blocks = (TASK / block.max(1)).max(1);
            dx.par_chunks_mut(slab)
                .zip(xs.par_chunks(slab))
                .zip(gs.par_chunks(slab))
                .zip(ds.par_chunks_mut(groups * inner))
                .zip(dz.par_chunks_mut(groups * inner))
                .enumerate()
                .for_each(|(o, ((((d, x), gr), dss), dzs))| {
                    d.par_chunks_mut(block)
                        .zip(x.par_chunks(block))
                        .zip(gr.par_chunks(block))
                        .zip(dss.par_chunks_mut(inner))
                        .zip(dzs.par_chunks_mut(inner))
                        .enumerate()
                        .with_min_len(min_blocks)
                        .for_each(|(gi, ((((d, x), gr), dss), dzs))| {
                            run_block(o, gi, d, x, gr, dss, dzs)
                        })
                });
        } else {
            for (o, ((((d, x), gr), dss), dzs)) in dx
                .chunks_mut(slab)
                .zip(xs.chunks(slab))
                .zip(gs.chunks(slab))
                .zip(ds.chunks_mut(groups * inner))
                .zip(dz.chunks_mut(groups * inner))
                .enumerate()
            {
                for (gi, ((((d, x), gr), dss), dzs)) in d
                    .chunks_mut(block)
                    .zip(x.chunks(block))
                    .zip(gr.chunks(block))
                    .zip(dss.chunks_mut(inner))
                    .zip(dzs.chunks_mut(inner))
                    .enumerate()
                {
                    run_block(o, gi, d, x, gr, dss, dzs)
                }
            }
        }
    });
    (dx, ds, dz)
}

/// The fused backward on slices: `(dx, d scale, d zero-point)`.
pub(crate) fn backward(
    xs: &[f32],
    gs: &[f32],
    s: &[f32],
    z: Option<&[f32]>,
    args: &FakeQuantArgs,
) -> Grads {
    let c = args.cells;
    let sg = args.scale_grad;
    with_grid_and_rounder!(
        args.format,
        args.rounding,
        |g, r| match (z, c.spans_outer_inner) {
            (Some(z), false) => bwd_shared::<_, _, true>(g, r, &c, xs, gs, s, z, sg),
            (None, false) => bwd_shared::<_, _, false>(g, r, &c, xs, gs, s, &[], sg),
            (Some(z), true) => bwd_groups::<_, _, true>(g, r, &c, xs, gs, s, z, sg),
            (None, true) => bwd_groups::<_, _, false>(g, r, &c, xs, gs, s, &[], sg),
        }
    )
}
