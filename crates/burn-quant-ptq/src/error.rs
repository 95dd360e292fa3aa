//! The error type of the PTQ crate.

use burn_quant_core::QuantError;
use thiserror::Error;

/// Everything that can go wrong while accumulating calibration statistics or running a
/// Stage-2 algorithm. Variants name the input and the value at fault.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PtqError {
    /// A data-driven algorithm was asked to quantize a layer that saw no calibration tokens.
    #[error("{algorithm} needs calibration data, but the layer's statistics hold 0 tokens")]
    EmptyCalibration {
        /// Name of the algorithm.
        algorithm: &'static str,
    },
    /// A tensor's shape does not fit the layer (e.g. an input width other than `d_in`).
    #[error("`{what}` has shape {got:?}, expected {expected}")]
    ShapeMismatch {
        /// Which input.
        what: &'static str,
        /// The shape that was given.
        got: Vec<usize>,
        /// What was expected, in words (`[tokens, 576]`, `[576, d_output]`).
        expected: String,
    },
    /// An input holds NaN or ±Inf.
    #[error("`{what}` contains a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// The statistics were accumulated for another kind of algorithm (e.g. GPFQ needs the
    /// float/quantized cross statistics, which a single-stream accumulator does not hold).
    #[error("{algorithm} needs {needed}, which these statistics do not hold")]
    MissingStatistics {
        /// Name of the algorithm.
        algorithm: &'static str,
        /// The statistic that is missing.
        needed: &'static str,
    },
    /// A statistic that no data can produce (a negative Gram diagonal, a non-finite entry).
    #[error("invalid statistics: {reason}")]
    InvalidStatistics {
        /// What is wrong.
        reason: String,
    },
    /// A configuration field holds a value outside what the algorithm allows.
    #[error("invalid `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// Name of the field, e.g. `percdamp`.
        field: &'static str,
        /// The value that was given, printed.
        value: String,
        /// Why it is not allowed.
        reason: String,
    },
    /// The spec is valid but the algorithm cannot honour it.
    #[error("{algorithm} cannot quantize with spec `{spec}`: {reason}")]
    UnsupportedSpec {
        /// Name of the algorithm.
        algorithm: &'static str,
        /// The spec, printed on one line.
        spec: String,
        /// Why.
        reason: String,
    },
    /// A Stage-1 transform cannot act on a region as the model declared it (an unknown path,
    /// a norm that must be folded first, widths that do not match).
    #[error("Stage 1 `{transform}` on `{path}`: {reason}")]
    Region {
        /// The transform (`smoothquant`, `rotate_residual`, …).
        transform: &'static str,
        /// The parameter path or site it was acting on.
        path: String,
        /// Why it cannot.
        reason: String,
    },
    /// An error of the quantization core (spec validation, shapes, scales).
    #[error(transparent)]
    Quant(#[from] QuantError),
}

/// Result alias of the PTQ crate.
pub type Result<T> = std::result::Result<T, PtqError>;

impl PtqError {
    /// Shorthand for [`PtqError::InvalidConfig`].
    pub fn config(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        PtqError::InvalidConfig {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Rejects NaN/Inf in `data`, naming `what` and the first bad index.
pub(crate) fn check_finite(data: &[f32], what: &'static str) -> Result<()> {
    if data.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let index = data
        .iter()
        .position(|v| !v.is_finite())
        .expect("a non-finite value exists");
    Err(PtqError::NonFinite {
        what,
        index,
        value: data[index],
    })
}
