//! Element formats: the grid of values one quantized element can take.
//!
//! A [`Format`] knows nothing about scales: it maps a value already expressed in *grid units*
//! (`x / scale + zero_point`) to the nearest representable value and to its integer code. The
//! minifloat rules follow the OCP 8-bit Floating Point specification (OFP8, v1.0) and the OCP
//! Microscaling Formats (MX) v1.0 specification.

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::rounding::Rounding;

/// The value grid of one quantized element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Format {
    /// Two's-complement (signed) or unsigned integer of `bits` bits.
    ///
    /// Signed range `[-2^(bits-1), 2^(bits-1) - 1]`, unsigned `[0, 2^bits - 1]`; `narrow` drops
    /// the most negative signed code (symmetric range) or the largest unsigned one.
    Int {
        /// Bit width, 1..=16.
        bits: u8,
        /// Signed (two's complement) or unsigned.
        signed: bool,
        /// Narrow range: `[-(2^(b-1) - 1), 2^(b-1) - 1]` when signed, `[0, 2^b - 2]` unsigned.
        narrow: bool,
    },
    /// Sign + exponent + mantissa floating point (FP8, FP6, FP4, ...).
    Minifloat(Minifloat),
    /// One bit: `-1` or `+1` (sign of the input; zero maps to `+1`).
    Binary,
    /// `-1`, `0` or `+1`.
    Ternary,
}

/// Which bit patterns of a minifloat are reserved for infinities and NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Special {
    /// IEEE 754 style: the all-ones exponent holds ±Inf (mantissa 0) and NaN (OCP E5M2).
    Ieee,
    /// No infinities; only the all-ones exponent with all-ones mantissa is NaN (OCP E4M3, "fn").
    NanOnly,
    /// No infinities, no negative zero: the pattern `1000…0` is the single NaN ("fnuz").
    Fnuz,
    /// Every pattern is a finite number (OCP MX FP6 E3M2/E2M3 and FP4 E2M1).
    None,
}

/// A minifloat format: 1 sign bit, `exponent` exponent bits, `mantissa` mantissa bits.
///
/// Value of a normal pattern: `(-1)^s · 2^(E - bias) · (1 + M / 2^mantissa)`; subnormal
/// (E = 0): `(-1)^s · 2^(1 - bias) · M / 2^mantissa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Minifloat {
    /// Exponent bits, 1..=8.
    pub exponent: u8,
    /// Mantissa (fraction) bits; `1 + exponent + mantissa <= 16`.
    pub mantissa: u8,
    /// Exponent bias.
    pub bias: i32,
    /// Reserved patterns.
    pub special: Special,
    /// Values beyond the largest finite value clamp to it (`true`) or become Inf/NaN (`false`).
    pub saturating: bool,
}

impl Minifloat {
    /// OCP FP8 E4M3 ("e4m3fn"): bias 7, no Inf, one NaN pattern per sign, max 448.
    pub const fn e4m3() -> Self {
        Self {
            exponent: 4,
            mantissa: 3,
            bias: 7,
            special: Special::NanOnly,
            saturating: true,
        }
    }
    /// OCP FP8 E5M2: bias 15, IEEE-style Inf/NaN, max 57344.
    pub const fn e5m2() -> Self {
        Self {
            exponent: 5,
            mantissa: 2,
            bias: 15,
            special: Special::Ieee,
            saturating: true,
        }
    }
    /// OCP MX FP6 E3M2: bias 3, no Inf/NaN, max 28.
    pub const fn e3m2() -> Self {
        Self {
            exponent: 3,
            mantissa: 2,
            bias: 3,
            special: Special::None,
            saturating: true,
        }
    }
    /// OCP MX FP6 E2M3: bias 1, no Inf/NaN, max 7.5.
    pub const fn e2m3() -> Self {
        Self {
            exponent: 2,
            mantissa: 3,
            bias: 1,
            special: Special::None,
            saturating: true,
        }
    }
    /// OCP MX FP4 E2M1: bias 1, no Inf/NaN, max 6.
    pub const fn e2m1() -> Self {
        Self {
            exponent: 2,
            mantissa: 1,
            bias: 1,
            special: Special::None,
            saturating: true,
        }
    }
    /// E4M3 FNUZ (bias 8, no Inf, no negative zero, max 240).
    pub const fn e4m3fnuz() -> Self {
        Self {
            exponent: 4,
            mantissa: 3,
            bias: 8,
            special: Special::Fnuz,
            saturating: true,
        }
    }
    /// E5M2 FNUZ (bias 16, no Inf, no negative zero, max 57344).
    pub const fn e5m2fnuz() -> Self {
        Self {
            exponent: 5,
            mantissa: 2,
            bias: 16,
            special: Special::Fnuz,
            saturating: true,
        }
    }
    /// IEEE-like format with the standard bias `2^(e-1) - 1` (e.g. `ieee(5, 10)` is f16).
    pub const fn ieee(exponent: u8, mantissa: u8) -> Self {
        Self {
            exponent,
            mantissa,
            bias: (1 << (exponent - 1)) - 1,
            special: Special::Ieee,
            saturating: true,
        }
    }
    /// The same format with saturation switched on or off.
    pub const fn with_saturating(mut self, saturating: bool) -> Self {
        self.saturating = saturating;
        self
    }

    /// Total bits including the sign.
    pub fn bits(&self) -> u32 {
        1 + self.exponent as u32 + self.mantissa as u32
    }

    fn exp_all_ones(&self) -> i32 {
        (1 << self.exponent) - 1
    }
    fn mant_all_ones(&self) -> u32 {
        (1u32 << self.mantissa) - 1
    }

    /// Smallest unbiased exponent of a normal number, `1 - bias`.
    pub fn emin(&self) -> i32 {
        1 - self.bias
    }

    /// The (exponent field, mantissa field) of the largest finite value.
    fn max_fields(&self) -> (i32, u32) {
        let top = self.exp_all_ones();
        match self.special {
            Special::Ieee => (top - 1, self.mant_all_ones()),
            Special::NanOnly if self.mantissa == 0 => (top - 1, 0),
            Special::NanOnly => (top, self.mant_all_ones() - 1),
            Special::Fnuz | Special::None => (top, self.mant_all_ones()),
        }
    }

    /// Largest finite value.
    pub fn max_value(&self) -> f32 {
        let (e, m) = self.max_fields();
        self.value_of_fields(e, m)
    }
    /// Smallest positive normal value, `2^(1 - bias)`.
    pub fn min_normal(&self) -> f32 {
        pow2(self.emin())
    }
    /// Smallest positive subnormal value, `2^(1 - bias - mantissa)`.
    pub fn min_subnormal(&self) -> f32 {
        pow2(self.emin() - self.mantissa as i32)
    }
    /// Unbiased exponent of the largest finite value (`emax` in the OCP MX scale rule).
    pub fn emax(&self) -> i32 {
        let (e, _) = self.max_fields();
        if e == 0 {
            self.emin() - 1
        } else {
            e - self.bias
        }
    }

    fn value_of_fields(&self, e: i32, m: u32) -> f32 {
        let frac = m as f32 / (1u32 << self.mantissa) as f32;
        if e == 0 {
            pow2(self.emin()) * frac
        } else {
            pow2(e - self.bias) * (1.0 + frac)
        }
    }

    /// Checks that the format is representable in f32 and fits in 16 bits.
    pub fn validate(&self) -> Result<()> {
        if !(1..=8).contains(&self.exponent) {
            return Err(QuantError::config(
                "format.exponent",
                self.exponent,
                "must be in 1..=8",
            ));
        }
        if self.bits() > 16 {
            return Err(QuantError::config(
                "format.mantissa",
                self.mantissa,
                format!(
                    "1 sign + {} exponent + {} mantissa bits = {} bits does not fit in 16 bits",
                    self.exponent,
                    self.mantissa,
                    self.bits()
                ),
            ));
        }
        if self.special == Special::Ieee && self.exponent < 2 {
            return Err(QuantError::config(
                "format.special",
                "ieee",
                "an IEEE-style format needs at least 2 exponent bits (the top exponent is reserved)",
            ));
        }
        if !self.saturating && self.special == Special::None {
            return Err(QuantError::config(
                "format.saturating",
                false,
                "a format without NaN or Inf encodings has nothing to overflow to: it must saturate",
            ));
        }
        let (top_e, _) = self.max_fields();
        if top_e - self.bias > 127 {
            return Err(QuantError::config(
                "format.bias",
                self.bias,
                format!("the largest value 2^{} overflows f32", top_e - self.bias),
            ));
        }
        if self.emin() - (self.mantissa as i32) < -149 {
            return Err(QuantError::config(
                "format.bias",
                self.bias,
                format!(
                    "the smallest subnormal 2^{} underflows f32",
                    self.emin() - self.mantissa as i32
                ),
            ));
        }
        Ok(())
    }

    /// Distance between neighbouring grid values around `v` (the binade step), for any real `v`.
    pub fn step(&self, v: f32) -> f32 {
        let a = v.abs();
        let e = if a < self.min_normal() {
            self.emin()
        } else {
            floor_log2(a).max(self.emin())
        };
        pow2(e - self.mantissa as i32)
    }

    /// Rounds `v` (grid units) onto the format with `rounding`; `noise` in [0, 1) is used by
    /// stochastic rounding only. Overflow saturates or gives Inf/NaN per `saturating`.
    pub fn quantize(&self, v: f32, rounding: RoundMode, noise: f32) -> f32 {
        let max = self.max_value();
        let v_in = if self.saturating {
            v.clamp(-max, max)
        } else {
            v
        };
        let step = self.step(v_in);
        let q = rounding.apply(v_in / step, noise) * step;
        if q.abs() > max {
            if self.saturating {
                max.copysign(q)
            } else if self.special == Special::Ieee {
                f32::INFINITY.copysign(q)
            } else {
                f32::NAN
            }
        } else if q == 0.0 && self.special == Special::Fnuz {
            0.0
        } else {
            q
        }
    }

    /// Bit pattern of a value that lies on the grid (as produced by [`Minifloat::quantize`]).
    pub fn encode(&self, q: f32) -> u32 {
        let sign_bit = 1u32 << (self.exponent + self.mantissa);
        if q.is_nan() {
            return match self.special {
                Special::Ieee => {
                    ((self.exp_all_ones() as u32) << self.mantissa) | self.mant_all_ones()
                }
                Special::NanOnly => {
                    ((self.exp_all_ones() as u32) << self.mantissa) | self.mant_all_ones()
                }
                Special::Fnuz => sign_bit,
                // Unreachable for well-formed input: a format without NaN never produces one.
                Special::None => 0,
            };
        }
        let sign = if q.is_sign_negative() && q != 0.0 {
            sign_bit
        } else {
            0
        };
        let a = q.abs();
        if a.is_infinite() {
            return sign | ((self.exp_all_ones() as u32) << self.mantissa);
        }
        if a < self.min_normal() {
            let m = (a / self.min_subnormal()) as u32;
            return sign | m;
        }
        let e = floor_log2(a);
        let m = ((a / pow2(e) - 1.0) * (1u32 << self.mantissa) as f32) as u32;
        sign | (((e + self.bias) as u32) << self.mantissa) | m
    }

    /// Value of a bit pattern (NaN for NaN patterns, ±Inf for IEEE infinities).
    pub fn decode(&self, code: u32) -> f32 {
        let sign_bit = 1u32 << (self.exponent + self.mantissa);
        let neg = code & sign_bit != 0;
        let e = ((code >> self.mantissa) & self.exp_all_ones() as u32) as i32;
        let m = code & self.mant_all_ones();
        let special = match self.special {
            Special::Ieee if e == self.exp_all_ones() => {
                Some(if m == 0 { f32::INFINITY } else { f32::NAN })
            }
            Special::NanOnly if e == self.exp_all_ones() && m == self.mant_all_ones() => {
                Some(f32::NAN)
            }
            Special::Fnuz if code == sign_bit => Some(f32::NAN),
            _ => None,
        };
        let v = special.unwrap_or_else(|| self.value_of_fields(e, m));
        if neg && !v.is_nan() { -v } else { v }
    }
}

/// A rounding rule as applied on the host, element by element.
///
/// This is the scalar twin of [`Rounding`]; the tensor path uses the same rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundMode {
    /// Nearest, ties to even.
    NearestEven,
    /// Nearest, ties away from zero.
    HalfUp,
    /// Toward −∞.
    Floor,
    /// Toward +∞.
    Ceil,
    /// Toward zero (truncation).
    TowardZero,
    /// `floor(x + u)`, u uniform in [0, 1) (unbiased in expectation).
    Stochastic,
}

impl RoundMode {
    /// Rounds `x` to an integer; `noise` is the uniform sample used by stochastic rounding.
    ///
    /// Bit-for-bit equal to `f32::round_ties_even`, `round`, `floor`, `ceil`, `trunc`, but
    /// branch-free so that the host kernels vectorise on any x86-64 (no SSE4.1 `roundps`).
    #[inline(always)]
    pub fn apply(self, x: f32, noise: f32) -> f32 {
        match self {
            RoundMode::NearestEven => round_even(x),
            RoundMode::HalfUp => round_half_away(x),
            RoundMode::Floor => floor_fast(x),
            RoundMode::Ceil => ceil_fast(x),
            RoundMode::TowardZero => trunc_fast(x),
            RoundMode::Stochastic => floor_fast(x + noise),
        }
    }
}

/// 2^23: from here on every f32 is an integer.
const TWO_23: f32 = 8_388_608.0;

/// Round half to even (= `f32::round_ties_even`), branch-free.
#[inline(always)]
pub fn round_even(x: f32) -> f32 {
    let a = x.abs();
    // Adding 2^23 pushes the fraction out of the mantissa with the FPU's ties-to-even rounding.
    let r = (a + TWO_23) - TWO_23;
    let r = if a < TWO_23 { r } else { a };
    r.copysign(x)
}

/// Truncation toward zero (= `f32::trunc`), branch-free.
#[inline(always)]
pub fn trunc_fast(x: f32) -> f32 {
    let a = x.abs();
    let t = if a < TWO_23 { (a as i32) as f32 } else { a };
    t.copysign(x)
}

/// Round half away from zero (= `f32::round`), branch-free.
#[inline(always)]
pub fn round_half_away(x: f32) -> f32 {
    let a = x.abs();
    let t = if a < TWO_23 { (a as i32) as f32 } else { a };
    // a − t is exact, so the tie test is exact.
    let r = if a - t >= 0.5 { t + 1.0 } else { t };
    r.copysign(x)
}

/// Floor (= `f32::floor`), branch-free.
#[inline(always)]
pub fn floor_fast(x: f32) -> f32 {
    let r = round_even(x);
    // floor and ceil keep the sign of x (ceil(−0.5) = −0).
    (if r > x { r - 1.0 } else { r }).copysign(x)
}

/// Ceil (= `f32::ceil`), branch-free.
#[inline(always)]
pub fn ceil_fast(x: f32) -> f32 {
    let r = round_even(x);
    (if r < x { r + 1.0 } else { r }).copysign(x)
}

impl From<&Rounding> for RoundMode {
    fn from(r: &Rounding) -> Self {
        match r {
            Rounding::NearestEven => RoundMode::NearestEven,
            Rounding::HalfUp => RoundMode::HalfUp,
            Rounding::Floor => RoundMode::Floor,
            Rounding::Ceil => RoundMode::Ceil,
            Rounding::TowardZero => RoundMode::TowardZero,
            Rounding::Stochastic { .. } => RoundMode::Stochastic,
            // A registered tensor rule cannot run element by element: host-side algorithms
            // round it to nearest (the tensor paths in `quantize` call the rule itself).
            Rounding::Custom { .. } => RoundMode::NearestEven,
        }
    }
}

/// `2^k` as an f32, exact for every k in [-149, 127] (subnormals included).
pub fn pow2(k: i32) -> f32 {
    if k >= -126 {
        f32::from_bits(((k + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (k + 149))
    }
}

/// `floor(log2(a))` for a positive finite `a`, exact (read from the f32 exponent bits).
pub fn floor_log2(a: f32) -> i32 {
    let bits = a.to_bits() & 0x7fff_ffff;
    let e = (bits >> 23) as i32;
    if e == 0 {
        // f32 subnormal: position of the highest set mantissa bit.
        let m = bits & 0x7f_ffff;
        -127 - (m.leading_zeros() as i32 - 9)
    } else {
        e - 127
    }
}

impl Format {
    /// Signed 8-bit integer, full range.
    pub const fn int8() -> Self {
        Format::Int {
            bits: 8,
            signed: true,
            narrow: false,
        }
    }
    /// Signed integer of `bits` bits, full range.
    pub const fn int(bits: u8) -> Self {
        Format::Int {
            bits,
            signed: true,
            narrow: false,
        }
    }
    /// Unsigned integer of `bits` bits.
    pub const fn uint(bits: u8) -> Self {
        Format::Int {
            bits,
            signed: false,
            narrow: false,
        }
    }

    /// Checks the fields; returns an error naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        match self {
            Format::Int {
                bits,
                signed,
                narrow,
            } => {
                if !(1..=16).contains(bits) {
                    return Err(QuantError::config("format.bits", bits, "must be in 1..=16"));
                }
                if *bits == 1 && *narrow {
                    return Err(QuantError::config(
                        "format.narrow",
                        true,
                        if *signed {
                            "a narrow signed 1-bit integer has the single value 0; use Format::Binary"
                        } else {
                            "a narrow unsigned 1-bit integer has the single value 0"
                        },
                    ));
                }
                Ok(())
            }
            Format::Minifloat(m) => m.validate(),
            Format::Binary | Format::Ternary => Ok(()),
        }
    }

    /// Storage bits of one element.
    pub fn bits(&self) -> u32 {
        match self {
            Format::Int { bits, .. } => *bits as u32,
            Format::Minifloat(m) => m.bits(),
            Format::Binary => 1,
            // log2(3) ≈ 1.58 bits of information; stored in 2 bits.
            Format::Ternary => 2,
        }
    }

    /// Smallest value of the grid (grid units).
    pub fn min_value(&self) -> f32 {
        match self {
            Format::Int {
                bits,
                signed: true,
                narrow,
            } => -((1i64 << (bits - 1)) as f32) + if *narrow { 1.0 } else { 0.0 },
            Format::Int { signed: false, .. } => 0.0,
            Format::Minifloat(m) => -m.max_value(),
            Format::Binary | Format::Ternary => -1.0,
        }
    }

    /// Largest value of the grid (grid units).
    pub fn max_value(&self) -> f32 {
        match self {
            Format::Int {
                bits, signed: true, ..
            } => ((1i64 << (bits - 1)) - 1) as f32,
            Format::Int {
                bits,
                signed: false,
                narrow,
            } => ((1i64 << bits) - 1) as f32 - if *narrow { 1.0 } else { 0.0 },
            Format::Minifloat(m) => m.max_value(),
            Format::Binary | Format::Ternary => 1.0,
        }
    }

    /// Whether this is an integer-valued grid (int, binary, ternary), where a zero-point makes sense.
    pub fn is_integer(&self) -> bool {
        !matches!(self, Format::Minifloat(_))
    }

    /// Unbiased exponent of the largest power of two not above the largest value: the `emax`
    /// of the OCP MX shared-scale rule (8 for E4M3, 15 for E5M2, 2 for E2M1, 6 for int8 codes).
    pub fn emax(&self) -> i32 {
        match self {
            Format::Minifloat(m) => m.emax(),
            other => floor_log2(other.max_value().max(1.0)),
        }
    }

    /// Distance to the neighbouring grid values around `v` (1 for integer grids).
    #[inline(always)]
    pub fn step(&self, v: f32) -> f32 {
        match self {
            Format::Minifloat(m) => m.step(v),
            _ => 1.0,
        }
    }

    /// Rounds `v` (grid units) onto the grid.
    #[inline(always)]
    pub fn quantize(&self, v: f32, rounding: RoundMode, noise: f32) -> f32 {
        match self {
            Format::Int { .. } | Format::Ternary => {
                rounding.apply(v.clamp(self.min_value(), self.max_value()), noise)
            }
            Format::Minifloat(m) => m.quantize(v, rounding, noise),
            Format::Binary => {
                if v >= 0.0 {
                    1.0
                } else {
                    -1.0
                }
            }
        }
    }

    /// Integer code of a grid value: the integer itself, or the minifloat bit pattern.
    #[inline(always)]
    pub fn encode(&self, q: f32) -> i32 {
        match self {
            Format::Minifloat(m) => m.encode(q) as i32,
            _ => q as i32,
        }
    }

    /// Grid value of a code (inverse of [`Format::encode`]).
    #[inline(always)]
    pub fn decode(&self, code: i32) -> f32 {
        match self {
            Format::Minifloat(m) => m.decode(code as u32),
            _ => code as f32,
        }
    }

    /// Smallest and largest valid code.
    pub fn code_range(&self) -> (i32, i32) {
        match self {
            Format::Minifloat(m) => (0, (1i32 << m.bits()) - 1),
            other => (other.min_value() as i32, other.max_value() as i32),
        }
    }

    /// Every finite value of the grid, ascending, each once (`-0` folded into `0`).
    pub fn grid(&self) -> Vec<f32> {
        let mut v: Vec<f32> = match self {
            Format::Minifloat(m) => (0..1u32 << m.bits())
                .map(|c| m.decode(c))
                .filter(|x| x.is_finite())
                .map(|x| if x == 0.0 { 0.0 } else { x })
                .collect(),
            Format::Binary => vec![-1.0, 1.0],
            other => {
                let (lo, hi) = other.code_range();
                (lo..=hi).map(|c| c as f32).collect()
            }
        };
        v.sort_by(f32::total_cmp);
        v.dedup();
        v
    }
}

impl std::fmt::Display for Format {
    /// Short names: `int8`, `int4n` (narrow), `uint8`, `e4m3`, `e4m3fnuz`, `e5m2nosat`, `binary`, `ternary`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Int {
                bits,
                signed,
                narrow,
            } => {
                write!(
                    f,
                    "{}int{bits}{}",
                    if *signed { "" } else { "u" },
                    if *narrow { "n" } else { "" }
                )
            }
            Format::Minifloat(m) => {
                let base = format!("e{}m{}", m.exponent, m.mantissa);
                let ocp = [
                    Minifloat::e4m3(),
                    Minifloat::e5m2(),
                    Minifloat::e3m2(),
                    Minifloat::e2m3(),
                    Minifloat::e2m1(),
                ]
                .iter()
                .any(|p| p.with_saturating(m.saturating) == *m);
                let fnuz = [Minifloat::e4m3fnuz(), Minifloat::e5m2fnuz()]
                    .iter()
                    .any(|p| p.with_saturating(m.saturating) == *m);
                let suffix = if ocp || fnuz {
                    if fnuz {
                        "fnuz".to_string()
                    } else {
                        String::new()
                    }
                } else {
                    format!("(bias {}, {:?})", m.bias, m.special)
                };
                write!(
                    f,
                    "{base}{suffix}{}",
                    if m.saturating { "" } else { "nosat" }
                )
            }
            Format::Binary => write!(f, "binary"),
            Format::Ternary => write!(f, "ternary"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Value of an 8-bit-or-less pattern by the OCP spec's definition, written independently of
    /// `Minifloat::decode`: `(-1)^S · 2^(E−bias) · 1.M` for E > 0, `(-1)^S · 2^(1−bias) · 0.M`
    /// for E = 0, with the format's NaN/Inf encodings.
    fn spec_value(e_bits: u32, m_bits: u32, bias: i32, special: Special, code: u32) -> f32 {
        let s = (code >> (e_bits + m_bits)) & 1;
        let e = (code >> m_bits) & ((1 << e_bits) - 1);
        let m = code & ((1 << m_bits) - 1);
        let e_all = (1 << e_bits) - 1;
        let m_all = (1 << m_bits) - 1;
        match special {
            Special::Ieee if e == e_all => {
                return if m == 0 {
                    if s == 1 {
                        f32::NEG_INFINITY
                    } else {
                        f32::INFINITY
                    }
                } else {
                    f32::NAN
                };
            }
            Special::NanOnly if e == e_all && m == m_all => return f32::NAN,
            Special::Fnuz if s == 1 && e == 0 && m == 0 => return f32::NAN,
            _ => {}
        }
        let mag = if e == 0 {
            2f64.powi(1 - bias) * (m as f64 / (1u32 << m_bits) as f64)
        } else {
            2f64.powi(e as i32 - bias) * (1.0 + m as f64 / (1u32 << m_bits) as f64)
        };
        (if s == 1 { -mag } else { mag }) as f32
    }

    struct OcpRow {
        fmt: Minifloat,
        max_normal: f32,
        min_normal: f32,
        min_subnormal: f32,
        nan_codes: &'static [u32],
        inf_codes: &'static [u32],
    }

    /// Facts stated in OCP OFP8 v1.0 (Table 1) and OCP MX v1.0 (Tables 2-3); FNUZ from the
    /// ONNX float8 types note.
    fn ocp_rows() -> Vec<OcpRow> {
        vec![
            OcpRow {
                fmt: Minifloat::e4m3(),
                max_normal: 448.0,
                min_normal: 2f32.powi(-6),
                min_subnormal: 2f32.powi(-9),
                nan_codes: &[0x7F, 0xFF],
                inf_codes: &[],
            },
            OcpRow {
                fmt: Minifloat::e5m2(),
                max_normal: 57344.0,
                min_normal: 2f32.powi(-14),
                min_subnormal: 2f32.powi(-16),
                nan_codes: &[0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF],
                inf_codes: &[0x7C, 0xFC],
            },
            OcpRow {
                fmt: Minifloat::e3m2(),
                max_normal: 28.0,
                min_normal: 0.25,
                min_subnormal: 0.0625,
                nan_codes: &[],
                inf_codes: &[],
            },
            OcpRow {
                fmt: Minifloat::e2m3(),
                max_normal: 7.5,
                min_normal: 1.0,
                min_subnormal: 0.125,
                nan_codes: &[],
                inf_codes: &[],
            },
            OcpRow {
                fmt: Minifloat::e2m1(),
                max_normal: 6.0,
                min_normal: 1.0,
                min_subnormal: 0.5,
                nan_codes: &[],
                inf_codes: &[],
            },
            OcpRow {
                fmt: Minifloat::e4m3fnuz(),
                max_normal: 240.0,
                min_normal: 2f32.powi(-7),
                min_subnormal: 2f32.powi(-10),
                nan_codes: &[0x80],
                inf_codes: &[],
            },
            OcpRow {
                fmt: Minifloat::e5m2fnuz(),
                max_normal: 57344.0,
                min_normal: 2f32.powi(-15),
                min_subnormal: 2f32.powi(-17),
                nan_codes: &[0x80],
                inf_codes: &[],
            },
        ]
    }

    #[test]
    fn ocp_spec_tables_hold_for_every_pattern() {
        for row in ocp_rows() {
            let f = row.fmt;
            f.validate().unwrap();
            assert_eq!(f.max_value(), row.max_normal, "{f:?} max");
            assert_eq!(f.min_normal(), row.min_normal, "{f:?} min normal");
            assert_eq!(f.min_subnormal(), row.min_subnormal, "{f:?} min subnormal");
            let n = 1u32 << f.bits();
            for code in 0..n {
                let got = f.decode(code);
                let want = spec_value(
                    f.exponent as u32,
                    f.mantissa as u32,
                    f.bias,
                    f.special,
                    code,
                );
                if row.nan_codes.contains(&code) {
                    assert!(
                        got.is_nan() && want.is_nan(),
                        "{f:?} code {code:#x} must be NaN"
                    );
                } else if row.inf_codes.contains(&code) {
                    assert!(
                        got.is_infinite() && got == want,
                        "{f:?} code {code:#x} must be Inf"
                    );
                } else {
                    assert!(
                        got.is_finite(),
                        "{f:?} code {code:#x} = {got} must be finite"
                    );
                    assert_eq!(got, want, "{f:?} code {code:#x}");
                    // Every finite pattern round-trips through encode (−0 folds to +0 only in FNUZ).
                    let back = f.encode(got);
                    if got == 0.0 && f.special == Special::Fnuz {
                        assert_eq!(back, 0);
                    } else if got == 0.0 {
                        assert_eq!(back & !(1 << (f.bits() - 1)), 0);
                    } else {
                        assert_eq!(back, code, "{f:?} encode({got})");
                    }
                }
            }
            let finite = (0..n).filter(|&c| f.decode(c).is_finite()).count();
            assert_eq!(
                finite as u32,
                n - row.nan_codes.len() as u32 - row.inf_codes.len() as u32
            );
            let grid = Format::Minifloat(f).grid();
            assert_eq!(*grid.last().unwrap(), row.max_normal);
            assert_eq!(
                grid[grid.len() / 2 + 1],
                row.min_subnormal,
                "{f:?}: smallest positive value"
            );
        }
    }

    #[test]
    fn mx_fp4_fp6_value_sets_match_the_spec_tables() {
        let pos = |f: Minifloat| -> Vec<f32> {
            Format::Minifloat(f)
                .grid()
                .into_iter()
                .filter(|v| *v >= 0.0)
                .collect()
        };
        assert_eq!(
            pos(Minifloat::e2m1()),
            vec![0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
        );
        let e2m3: Vec<f32> = (0..8)
            .map(|m| m as f32 * 0.125)
            .chain((0..8).map(|m| 1.0 + m as f32 * 0.125))
            .chain((0..8).map(|m| 2.0 + m as f32 * 0.25))
            .chain((0..8).map(|m| 4.0 + m as f32 * 0.5))
            .collect();
        assert_eq!(pos(Minifloat::e2m3()), e2m3);
        let e3m2: Vec<f32> = (0..4)
            .map(|m| m as f32 * 0.0625)
            .chain(
                (1..8)
                    .flat_map(|e| (0..4).map(move |m| 2f32.powi(e - 3) * (1.0 + m as f32 * 0.25))),
            )
            .collect();
        assert_eq!(pos(Minifloat::e3m2()), e3m2);
    }

    #[test]
    fn mx_emax_matches_ocp_mx_table() {
        // OCP MX v1.0 Table: emax of the element formats.
        let cases = [
            (Minifloat::e4m3(), 8),
            (Minifloat::e5m2(), 15),
            (Minifloat::e3m2(), 4),
            (Minifloat::e2m3(), 2),
            (Minifloat::e2m1(), 2),
        ];
        for (f, emax) in cases {
            assert_eq!(Format::Minifloat(f).emax(), emax, "{f:?}");
        }
        assert_eq!(
            Format::Int {
                bits: 8,
                signed: true,
                narrow: true
            }
            .emax(),
            6
        );
    }

    /// Brute force: the nearest grid value with ties to the even code (the OCP/IEEE rule).
    fn nearest_even(f: &Minifloat, v: f32) -> f32 {
        let mut best: Option<(f64, u32, f32)> = None;
        for c in 0..1u32 << f.bits() {
            let g = f.decode(c);
            if !g.is_finite() {
                continue;
            }
            let d = (g as f64 - v as f64).abs();
            best = match best {
                None => Some((d, c, g)),
                Some((bd, bc, bg)) => {
                    if d < bd || (d == bd && (c & 1) == 0 && (bc & 1) == 1) {
                        Some((d, c, g))
                    } else {
                        Some((bd, bc, bg))
                    }
                }
            };
        }
        best.unwrap().2
    }

    #[test]
    fn rounding_to_nearest_even_matches_brute_force_including_every_midpoint() {
        for row in ocp_rows() {
            let f = row.fmt;
            let grid = Format::Minifloat(f).grid();
            let mut probes: Vec<f32> = grid.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
            probes.extend(grid.windows(2).map(|w| w[0] + (w[1] - w[0]) * 0.3));
            probes.extend(grid.iter().copied());
            for v in probes {
                let q = f.quantize(v, RoundMode::NearestEven, 0.0);
                assert_eq!(q, nearest_even(&f, v), "{f:?} v = {v}");
            }
        }
    }

    #[test]
    fn saturation_and_overflow_follow_the_spec() {
        let e4m3 = Minifloat::e4m3();
        assert_eq!(e4m3.quantize(1000.0, RoundMode::NearestEven, 0.0), 448.0);
        assert_eq!(e4m3.quantize(-1e9, RoundMode::NearestEven, 0.0), -448.0);
        // Non-saturating E4M3 has no Inf: overflow is NaN. 464 is the midpoint 448..480 → ties to
        // the even pattern 480, which does not exist → NaN.
        let e4m3n = e4m3.with_saturating(false);
        assert!(e4m3n.quantize(1000.0, RoundMode::NearestEven, 0.0).is_nan());
        assert_eq!(e4m3n.quantize(460.0, RoundMode::NearestEven, 0.0), 448.0);
        assert!(e4m3n.quantize(470.0, RoundMode::NearestEven, 0.0).is_nan());
        let e5m2n = Minifloat::e5m2().with_saturating(false);
        assert_eq!(
            e5m2n.quantize(57344.0 + 4000.0, RoundMode::NearestEven, 0.0),
            57344.0
        );
        assert_eq!(
            e5m2n.quantize(61440.0, RoundMode::NearestEven, 0.0),
            f32::INFINITY
        );
        assert_eq!(
            e5m2n.quantize(-1e6, RoundMode::NearestEven, 0.0),
            f32::NEG_INFINITY
        );
        assert_eq!(e5m2n.encode(f32::INFINITY), 0x7C);
        assert_eq!(e4m3n.encode(f32::NAN), 0x7F);
        assert_eq!(
            Minifloat::e2m1().quantize(100.0, RoundMode::NearestEven, 0.0),
            6.0
        );
    }

    #[test]
    fn ieee_half_and_bfloat16_agree_with_the_half_crate() {
        let f16 = Minifloat::ieee(5, 10).with_saturating(false);
        let bf16 = Minifloat::ieee(8, 7).with_saturating(false);
        f16.validate().unwrap();
        bf16.validate().unwrap();
        let mut state = 12345u64;
        for i in 0..200_000u64 {
            let r = crate::rounding::uniform(state, i);
            state = state.wrapping_add(1);
            let mag = 2f32.powf(r * 40.0 - 28.0);
            let v = if i % 2 == 0 { mag } else { -mag } * (1.0 + crate::rounding::uniform(7, i));
            assert_eq!(
                f16.quantize(v, RoundMode::NearestEven, 0.0),
                half::f16::from_f32(v).to_f32(),
                "f16 {v}"
            );
            let b = bf16.quantize(v, RoundMode::NearestEven, 0.0);
            assert_eq!(b, half::bf16::from_f32(v).to_f32(), "bf16 {v}");
            assert_eq!(
                bf16.encode(b) as u16,
                half::bf16::from_f32(v).to_bits(),
                "bf16 bits {v}"
            );
        }
    }

    #[test]
    fn fast_rounding_equals_std_bit_for_bit() {
        let mut probes: Vec<f32> = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999997,
            -0.49999997,
            8388607.5,
            -8388607.5,
            8388608.0,
            16777217.0,
            4194303.5,
            1e30,
            -1e30,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
        ];
        for i in 0..200_000u64 {
            let u = crate::rounding::uniform(99, i);
            let mag = 2f32.powf(u * 60.0 - 30.0);
            probes.push(if i % 2 == 0 { mag } else { -mag });
            probes.push((i as f32 - 100_000.0) * 0.25);
        }
        for x in probes {
            assert_eq!(
                round_even(x).to_bits(),
                x.round_ties_even().to_bits(),
                "rne {x}"
            );
            assert_eq!(
                round_half_away(x).to_bits(),
                x.round().to_bits(),
                "half away {x}"
            );
            assert_eq!(floor_fast(x).to_bits(), x.floor().to_bits(), "floor {x}");
            assert_eq!(ceil_fast(x).to_bits(), x.ceil().to_bits(), "ceil {x}");
            assert_eq!(trunc_fast(x).to_bits(), x.trunc().to_bits(), "trunc {x}");
        }
    }

    #[test]
    fn integer_ranges() {
        let r = |f: Format| (f.min_value(), f.max_value());
        assert_eq!(r(Format::int8()), (-128.0, 127.0));
        assert_eq!(
            r(Format::Int {
                bits: 8,
                signed: true,
                narrow: true
            }),
            (-127.0, 127.0)
        );
        assert_eq!(r(Format::uint(8)), (0.0, 255.0));
        assert_eq!(
            r(Format::Int {
                bits: 8,
                signed: false,
                narrow: true
            }),
            (0.0, 254.0)
        );
        assert_eq!(r(Format::int(16)), (-32768.0, 32767.0));
        assert_eq!(r(Format::int(1)), (-1.0, 0.0));
        assert_eq!(r(Format::Ternary), (-1.0, 1.0));
        assert_eq!(Format::int(4).grid().len(), 16);
        assert_eq!(Format::Binary.grid(), vec![-1.0, 1.0]);
        assert_eq!(
            Format::Binary.quantize(0.0, RoundMode::NearestEven, 0.0),
            1.0
        );
    }

    #[test]
    fn bad_formats_name_the_field() {
        let err = Format::Int {
            bits: 0,
            signed: true,
            narrow: false,
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().contains("format.bits") && err.to_string().contains('0'),
            "{err}"
        );
        let err = Format::Int {
            bits: 17,
            signed: true,
            narrow: false,
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().contains("format.bits") && err.to_string().contains("17"),
            "{err}"
        );
        let err = Minifloat {
            exponent: 8,
            mantissa: 8,
            bias: 127,
            special: Special::Ieee,
            saturating: true,
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().contains("format.mantissa") && err.to_string().contains("17 bits"),
            "{err}"
        );
        let err = Minifloat {
            exponent: 0,
            mantissa: 3,
            bias: 0,
            special: Special::None,
            saturating: true,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("format.exponent"), "{err}");
        let err = Minifloat {
            exponent: 4,
            mantissa: 3,
            bias: -130,
            special: Special::None,
            saturating: true,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("format.bias"), "{err}");
        assert!(
            Format::Int {
                bits: 1,
                signed: true,
                narrow: true
            }
            .validate()
            .is_err()
        );
        let err = Minifloat::e2m1()
            .with_saturating(false)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("format.saturating"), "{err}");
    }

    #[test]
    fn pow2_and_floor_log2_are_exact() {
        for k in -149..=127 {
            let p = pow2(k);
            assert_eq!(p as f64, 2f64.powi(k), "2^{k}");
            assert_eq!(floor_log2(p), k);
            // 1.5 · 2^k is representable unless k is the last subnormal step.
            if k < 127 && k > -149 {
                assert_eq!(floor_log2(p * 1.5), k);
            }
        }
    }
}
