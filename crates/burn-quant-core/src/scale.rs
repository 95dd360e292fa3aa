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
    /// How a symmetric range becomes the scale of a signed integer grid (absent in older
    /// recipes: [`SymmetricScale::Qmax`]).
    #[serde(default, skip_serializing_if = "SymmetricScale::is_qmax")]
    pub symmetric: SymmetricScale,
}

impl Default for ScaleSpec {
    fn default() -> Self {
        Self {
            source: ScaleSource::Stats(ScaleStat::AbsMax),
            restrict: ScaleRestriction::Float,
            symmetric: SymmetricScale::Qmax,
        }
    }
}

/// How the range `amax` of a symmetric spec becomes its scale on a grid `[qmin, qmax]`.
///
/// The conventions differ only on full-range signed integer grids, where `qmin = −qmax − 1`
/// (int4: −8..7); there `Qmax` leaves code −8 unused, `NegQmin` uses it and clips the positive
/// extreme, and `SignedExtreme` uses every level and never clips the extreme by letting the
/// scale's sign follow the extreme's. Serialised as `"qmax"`, `"neg_qmin"`, `"signed_extreme"` or
/// `{"mse": {"grid": 100, "min_ratio": 0.2}}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymmetricScale {
    /// `s = amax / qmax`: nothing clips; on a full-range signed grid code `qmin` is never used
    /// (int4 amax/7; Brevitas's `narrow_range=True` result, llama.cpp's Q8_0).
    #[default]
    Qmax,
    /// `s = amax / −qmin` (2^(b−1) for int b): the negative extreme lands on `qmin`, the positive
    /// one clips to `qmax·s` (int4 amax/8; Brevitas's default, `narrow_range=False`).
    NegQmin,
    /// `s = x_e / qmin` where `x_e` is the value of largest magnitude (ties: the negative one):
    /// `x_e` lands exactly on `qmin`, so every level is used and the extreme never clips (values
    /// of the other sign beyond `qmax·|s|` do); the scale is negative when `x_e > 0`
    /// (llama.cpp's Q4_0 / Q5_0 rule, `d = max / −8`).
    SignedExtreme,
    /// Per scale cell, the candidate with the least squared error: the `NegQmin` and
    /// `SignedExtreme` scales and `r·amax/qmax` for `r = 1 − k/grid·(1 − min_ratio)`,
    /// `k = 0..grid`, each with either sign on a full-range signed grid (so never worse than
    /// any of the other conventions). Candidates are compared after the scale restriction.
    Mse {
        /// Number of shrink factors (k = 0 is the full range).
        grid: u32,
        /// Smallest shrink factor, in (0, 1].
        min_ratio: f32,
    },
}

impl SymmetricScale {
    /// The MSE search with the same candidates as GPTQ's `mse=True` search (100 shrink factors
    /// down to 0.2), plus the other conventions.
    pub const fn mse() -> Self {
        SymmetricScale::Mse {
            grid: 100,
            min_ratio: 0.2,
        }
    }

    /// Whether this is the default `Qmax` (skipped when serialising).
    pub fn is_qmax(&self) -> bool {
        *self == SymmetricScale::Qmax
    }

    /// The name used by recipes and `burnq` flags: `qmax`, `neg-qmin`, `signed-extreme`, `mse`.
    pub fn name(&self) -> &'static str {
        match self {
            SymmetricScale::Qmax => "qmax",
            SymmetricScale::NegQmin => "neg-qmin",
            SymmetricScale::SignedExtreme => "signed-extreme",
            SymmetricScale::Mse { .. } => "mse",
        }
    }

    /// Every name [`std::str::FromStr`] accepts, with aliases after the canonical names.
    pub const NAMES: [&'static str; 6] = [
        "qmax",
        "neg-qmin",
        "signed-extreme",
        "mse",
        "brevitas",
        "ggml",
    ];

    /// Checks the search parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            SymmetricScale::Mse { grid: 0, .. } => Err(QuantError::config(
                "scale.symmetric.grid",
                0,
                "needs at least one candidate",
            )),
            SymmetricScale::Mse { min_ratio, .. } if !(min_ratio > 0.0 && min_ratio <= 1.0) => Err(
                QuantError::config("scale.symmetric.min_ratio", min_ratio, "must be in (0, 1]"),
            ),
            _ => Ok(()),
        }
    }
}

impl std::str::FromStr for SymmetricScale {
    type Err = QuantError;

    /// `qmax`, `neg-qmin` (alias `brevitas`), `signed-extreme` (alias `ggml`) or `mse`
    /// ([`SymmetricScale::mse`]); `_` may stand for `-`.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "qmax" => SymmetricScale::Qmax,
            "neg-qmin" | "brevitas" => SymmetricScale::NegQmin,
            "signed-extreme" | "ggml" => SymmetricScale::SignedExtreme,
            "mse" => SymmetricScale::mse(),
            _ => {
                return Err(QuantError::config(
                    "scale.symmetric",
                    s,
                    format!("expected one of {}", Self::NAMES.join(", ")),
                ));
            }
        })
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

#[cfg(test)]
mod tests;
