//! How scales and zero-points are obtained and restricted.

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::format::Minifloat;

/// How a scale is obtained and which values it may take.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleSpec {
    /// Where the scale comes from.
    pub source: ScaleSource,
    /// Which values the scale may take.
    pub restrict: ScaleRestriction,
}

impl Default for ScaleSpec {
    fn default() -> Self {
        Self {
            source: ScaleSource::Stats(ScaleStat::AbsMax),
            restrict: ScaleRestriction::Float,
        }
    }
}

/// Where a scale comes from (serialised as `{"stats": {"kind": "abs_max"}}`, `{"const": 0.5}`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleSource {
    /// Static: computed once from calibration data with this statistic, then frozen.
    Stats(ScaleStat),
    /// Dynamic: recomputed from every input with this statistic (e.g. per-token activations).
    Dynamic(ScaleStat),
    /// Learned: a trainable parameter, initialised with this statistic (LSQ).
    Learned(ScaleStat),
    /// A fixed value.
    Const(f32),
}

impl ScaleSource {
    /// The statistic used to compute (or initialise) the scale, if any.
    pub fn stat(&self) -> Option<ScaleStat> {
        match self {
            ScaleSource::Stats(s) | ScaleSource::Dynamic(s) | ScaleSource::Learned(s) => Some(*s),
            ScaleSource::Const(_) => None,
        }
    }
}

/// A statistic that turns a group of values into a range, and from it a scale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScaleStat {
    /// max |x| (symmetric) — no clipping.
    AbsMax,
    /// [min x, max x] (asymmetric; symmetric specs use max(|min|, |max|)).
    MinMax,
    /// mean |x| (XNOR-Net / BitNet b1.58 scale for binary and ternary weights).
    AbsMean,
    /// The `q`-th percentile of |x| (symmetric) or the `100 - q` and `q` percentiles of x
    /// (asymmetric), `q` in (0, 100].
    Percentile {
        /// Percentile in (0, 100], e.g. 99.99.
        q: f32,
    },
    /// Grid search over shrunk ranges `r · (1 - k / grid · (1 - min_ratio))`, k = 0..grid-1,
    /// keeping the one with the least squared quantization error (GPTQ's `mse=True` search).
    Mse {
        /// Number of candidates (k = 0 is the full range).
        grid: u32,
        /// Shrink limit in (0, 1]: the smallest fraction tried is
        /// `1 - (grid - 1) / grid · (1 - min_ratio)` (0.208 with the defaults).
        min_ratio: f32,
    },
    /// Half-quadratic solver of HQQ (Badri & Shaji 2023): alternates an lp-norm (p < 1) shrinkage
    /// of the quantization error with a closed-form zero-point update (asymmetric) or scale
    /// update (symmetric), starting from min-max.
    Hqq {
        /// Iterations.
        iters: u32,
        /// p of the lp-norm, in (0, 1].
        p: f32,
        /// Initial penalty β.
        beta: f32,
        /// β multiplier per iteration (> 1).
        kappa: f32,
    },
}

impl ScaleStat {
    /// MSE search with GPTQ's defaults (100 candidates down to 20 % of the range).
    pub const fn mse() -> Self {
        ScaleStat::Mse {
            grid: 100,
            min_ratio: 0.2,
        }
    }
    /// HQQ with the reference defaults (20 iterations, p = 0.7, β = 10, κ = 1.01).
    pub const fn hqq() -> Self {
        ScaleStat::Hqq {
            iters: 20,
            p: 0.7,
            beta: 10.0,
            kappa: 1.01,
        }
    }

    /// Checks the statistic's parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            ScaleStat::Percentile { q } if !(q > 0.0 && q <= 100.0) => Err(QuantError::config(
                "scale.stat.q",
                q,
                "percentile must be in (0, 100]",
            )),
            ScaleStat::Mse { grid, .. } if grid == 0 => Err(QuantError::config(
                "scale.stat.grid",
                grid,
                "needs at least one candidate",
            )),
            ScaleStat::Mse { min_ratio, .. } if !(min_ratio > 0.0 && min_ratio <= 1.0) => Err(
                QuantError::config("scale.stat.min_ratio", min_ratio, "must be in (0, 1]"),
            ),
            ScaleStat::Hqq { p, .. } if !(p > 0.0 && p <= 1.0) => Err(QuantError::config(
                "scale.stat.p",
                p,
                "lp-norm p must be in (0, 1]",
            )),
            ScaleStat::Hqq { kappa, .. } if !(kappa >= 1.0 && kappa.is_finite()) => Err(
                QuantError::config("scale.stat.kappa", kappa, "must be >= 1"),
            ),
            ScaleStat::Hqq { beta, .. } if !(beta > 0.0 && beta.is_finite()) => {
                Err(QuantError::config("scale.stat.beta", beta, "must be > 0"))
            }
            _ => Ok(()),
        }
    }
}

/// Which values a scale may take.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScaleRestriction {
    /// Any positive f32.
    Float,
    /// A power of two, `2^mode(log2 s)` (fixed-point hardware).
    PowerOfTwo {
        /// How log2 of the scale is made an integer; `Ceil` never clips.
        mode: Pow2Mode,
    },
    /// A second, quantized scale level (MX, NVFP4, GGUF k-quants).
    Quantized(ScaleQuant),
}

/// How a power-of-two scale exponent is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pow2Mode {
    /// Nearest power of two (in log space).
    Round,
    /// Next power of two up: the range is never clipped.
    Ceil,
    /// Next power of two down.
    Floor,
}

/// A quantized scale level (serialised as `{"kind": "quantized", "scheme": "e8m0"}` inside a
/// restriction).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
pub enum ScaleQuant {
    /// OCP MX: each group's scale is an E8M0 power of two,
    /// `2^(floor(log2(amax)) - emax_elem)`, exponent clamped to [-127, 127]; elements saturate.
    E8M0,
    /// NVFP4-style: each group's scale is an FP8 E4M3 value times one f32 global scale per
    /// tensor, `global = amax(tensor) / (448 · max_elem)`.
    E4M3Global,
    /// GGUF k-quant style: group scales (and, for asymmetric specs, group minima) are `bits`-bit
    /// integers times one f16 scale (and one f16 min-scale) per super-block of `super_block`
    /// elements along the group axis.
    SubBlock {
        /// Elements per super-block (256 for every GGUF k-quant).
        super_block: usize,
        /// Bits of each group scale and min code (4 for Q2_K, 6 for Q3_K…Q5_K, 8 for Q6_K).
        bits: u8,
        /// Signed scale codes (Q3_K, Q6_K) instead of unsigned ones.
        signed: bool,
    },
    /// Each scale (and, for asymmetric specs, each offset `z·s`) is an IEEE half, as ggml's
    /// Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 blocks and ONNX f16 scales store them. Codes are chosen with
    /// the rounded values, so what a file holds dequantizes exactly as the `QuantTensor` does.
    /// Any granularity.
    F16,
}

impl ScaleQuant {
    /// The E4M3 format used for NVFP4 block scales (unsigned use of OCP E4M3).
    pub const fn e4m3() -> Minifloat {
        Minifloat::e4m3()
    }
}

/// How the zero-point is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ZeroPoint {
    /// No zero-point: the grid is centred on 0.
    #[default]
    Symmetric,
    /// An offset in grid units, `x ≈ (q − z) · s`; integer-valued for min-max statistics,
    /// real-valued when HQQ optimises it or a k-quant min defines it.
    Asymmetric {
        /// Trainable (a `Param`) rather than calibrated.
        learned: bool,
    },
}

impl ZeroPoint {
    /// Whether there is a zero-point at all.
    pub fn is_asymmetric(&self) -> bool {
        matches!(self, ZeroPoint::Asymmetric { .. })
    }
}
