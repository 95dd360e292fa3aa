//! Per-element rounding rules and grids, shared by the host kernels ([`crate::host`]) and the
//! fused op's Flex kernels (`fused::flex`).
//!
//! The hot loops are monomorphised over a [`Grid`] (integer, binary, minifloat) and a
//! [`Rounder`] (one type per rounding rule), so that each specialised loop is branch-light
//! and vectorises. Every rule is bit-exact to [`crate::format::RoundMode::apply`].

use crate::format::{
    Minifloat, Special, ceil_fast, floor_fast, pow2, round_even, round_half_away, trunc_fast,
};
use crate::rounding::uniform;

/// A built-in rounding rule as a zero-sized (or seed-carrying) type.
pub(crate) trait Rounder: Copy + Send + Sync {
    /// `v` rounded to an integer; `idx` is the element's flat index (stochastic noise).
    fn round(self, v: f32, idx: usize) -> f32;
}

macro_rules! rounder {
    ($(#[$doc:meta])* $name:ident, $f:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub(crate) struct $name;
        impl Rounder for $name {
            #[inline(always)]
            fn round(self, v: f32, _idx: usize) -> f32 {
                $f(v)
            }
        }
    };
}
rounder!(
    /// Round half to even.
    NearestEven,
    round_even
);
rounder!(
    /// Round half away from zero.
    HalfUp,
    round_half_away
);
rounder!(
    /// Toward −∞.
    Floor,
    floor_fast
);
rounder!(
    /// Toward +∞.
    Ceil,
    ceil_fast
);
rounder!(
    /// Toward zero.
    TowardZero,
    trunc_fast
);

/// Stochastic rounding: `floor(v + u)` with `u` uniform in [0, 1) from the seed and the
/// element's flat index.
#[derive(Clone, Copy)]
pub(crate) struct Stochastic(pub u64);
impl Rounder for Stochastic {
    #[inline(always)]
    fn round(self, v: f32, idx: usize) -> f32 {
        floor_fast(v + uniform(self.0, idx as u64))
    }
}

/// An element grid: the grid value of `v` (already in grid units), and whether the
/// straight-through gradient passes there.
pub(crate) trait Grid: Copy + Send + Sync {
    /// The grid value of `v` under rounding `r`.
    fn grid<R: Rounder>(self, v: f32, r: R, idx: usize) -> f32;
    /// Whether the gradient passes at `v`, whose grid value is `q`: inside the grid's range
    /// (for a non-saturating minifloat: not overflowed).
    fn pass(self, v: f32, q: f32) -> bool;
}

/// Integer and ternary grids: clamp to `[qmin, qmax]`, round.
#[derive(Clone, Copy)]
pub(crate) struct IntGrid {
    pub qmin: f32,
    pub qmax: f32,
}
impl Grid for IntGrid {
    #[inline(always)]
    fn grid<R: Rounder>(self, v: f32, r: R, idx: usize) -> f32 {
        r.round(v.max(self.qmin).min(self.qmax), idx)
    }
    #[inline(always)]
    fn pass(self, v: f32, _q: f32) -> bool {
        v >= self.qmin && v <= self.qmax
    }
}

/// Binary: `sign(v)`, `+1` at 0; the gradient passes on `[−1, 1]`.
#[derive(Clone, Copy)]
pub(crate) struct BinaryGrid;
impl Grid for BinaryGrid {
    #[inline(always)]
    fn grid<R: Rounder>(self, v: f32, _r: R, _idx: usize) -> f32 {
        if v >= 0.0 { 1.0 } else { -1.0 }
    }
    #[inline(always)]
    fn pass(self, v: f32, _q: f32) -> bool {
        (-1.0..=1.0).contains(&v)
    }
}

/// Any minifloat. The binade step `2^(max(e, emin) − mantissa)` is built from the exponent
/// bits of `v` with integer arithmetic where every step is a normal f32 (all OCP formats);
/// other formats read it from a table.
#[derive(Clone, Copy)]
pub(crate) struct MiniGrid {
    pub format: Minifloat,
    pub max: f32,
    /// Whether every step and inverse step is a normal f32.
    pub arith: bool,
    steps: [f32; 256],
}
impl MiniGrid {
    pub(crate) fn new(format: Minifloat) -> Self {
        let mut steps = [0f32; 256];
        for (field, st) in steps.iter_mut().enumerate() {
            let e = (field as i32 - 127).max(format.emin());
            *st = pow2((e - format.mantissa as i32).clamp(-149, 127));
        }
        let kmin = format.emin() - format.mantissa as i32;
        let kmax = format.emax() + 1 - format.mantissa as i32;
        Self {
            format,
            max: format.max_value(),
            arith: kmin >= -126 && kmax <= 126,
            steps,
        }
    }

    /// The binade step of `v`.
    #[inline(always)]
    fn step(&self, v: f32) -> f32 {
        let field = ((v.to_bits() >> 23) & 0xff) as i32;
        if self.arith {
            let e = (field - 127).max(self.format.emin());
            f32::from_bits(((e - self.format.mantissa as i32 + 127) as u32) << 23)
        } else {
            self.steps[field as usize]
        }
    }

    /// The saturating common case (steps all normal) as its own branch-free grid.
    pub(crate) fn saturating_arith(&self) -> Option<SatMiniGrid> {
        (self.format.saturating && self.arith).then_some(SatMiniGrid {
            max: self.max,
            emin: self.format.emin(),
            mantissa: self.format.mantissa as i32,
        })
    }
}
impl Grid for &MiniGrid {
    #[inline(always)]
    fn grid<R: Rounder>(self, v: f32, r: R, idx: usize) -> f32 {
        if self.format.saturating {
            let v = v.max(-self.max).min(self.max);
            let step = self.step(v);
            r.round(v / step, idx) * step
        } else {
            // Same rule as `Minifloat::quantize` (overflow to Inf/NaN).
            let step = self.step(v);
            let q = r.round(v / step, idx) * step;
            if q.abs() <= self.max {
                q
            } else if self.format.special == Special::Ieee {
                f32::INFINITY.copysign(q)
            } else {
                f32::NAN
            }
        }
    }
    #[inline(always)]
    fn pass(self, v: f32, q: f32) -> bool {
        if self.format.saturating {
            v >= -self.max && v <= self.max
        } else {
            q.abs() <= self.max
        }
    }
}

/// A saturating minifloat whose steps are all normal f32: no per-element branch, the step and
/// its inverse from the exponent bits (vectorises).
#[derive(Clone, Copy)]
pub(crate) struct SatMiniGrid {
    max: f32,
    emin: i32,
    mantissa: i32,
}
impl Grid for SatMiniGrid {
    #[inline(always)]
    fn grid<R: Rounder>(self, v: f32, r: R, idx: usize) -> f32 {
        let v = v.max(-self.max).min(self.max);
        let e = ((v.to_bits() >> 23) & 0xff) as i32 - 127;
        let k = if e < self.emin { self.emin } else { e } - self.mantissa;
        let step = f32::from_bits(((k + 127) as u32) << 23);
        let inv = f32::from_bits(((127 - k) as u32) << 23);
        // Scaling by a power of two is exact: v · (1/step) = v / step.
        r.round(v * inv, idx) * step
    }
    #[inline(always)]
    fn pass(self, v: f32, _q: f32) -> bool {
        v >= -self.max && v <= self.max
    }
}

/// Calls `$body` with `$g: impl Grid` and `$r: impl Rounder` bound to the grid of `$format`
/// (a [`crate::format::Format`]) and the rule of `$rounding` (a [`crate::Rounding`]).
///
/// A custom rule (`Rounding::Custom`, a tensor function) cannot run per element: callers send
/// custom specs through the tensor chain, and only hand on-grid values here, where nearest
/// even is exact; it binds nearest even.
macro_rules! with_grid_and_rounder {
    ($format:expr, $rounding:expr, |$g:ident, $r:ident| $body:expr) => {{
        use $crate::element::{
            BinaryGrid, Ceil, Floor, HalfUp, IntGrid, MiniGrid, NearestEven, Stochastic, TowardZero,
        };
        use $crate::format::Format;
        use $crate::rounding::Rounding;
        let rounding: Rounding = $rounding;
        macro_rules! with_rounder {
            ($gv:expr) => {{
                let $g = $gv;
                match rounding {
                    Rounding::NearestEven | Rounding::Custom { .. } => {
                        let $r = NearestEven;
                        $body
                    }
                    Rounding::HalfUp => {
                        let $r = HalfUp;
                        $body
                    }
                    Rounding::Floor => {
                        let $r = Floor;
                        $body
                    }
                    Rounding::Ceil => {
                        let $r = Ceil;
                        $body
                    }
                    Rounding::TowardZero => {
                        let $r = TowardZero;
                        $body
                    }
                    Rounding::Stochastic { seed } => {
                        let $r = Stochastic(seed);
                        $body
                    }
                }
            }};
        }
        match $format {
            Format::Minifloat(m) => {
                let mg = MiniGrid::new(m);
                match mg.saturating_arith() {
                    Some(sat) => with_rounder!(sat),
                    None => with_rounder!(&mg),
                }
            }
            Format::Binary => with_rounder!(BinaryGrid),
            other => with_rounder!(IntGrid {
                qmin: other.min_value(),
                qmax: other.max_value(),
            }),
        }
    }};
}
pub(crate) use with_grid_and_rounder;
