//! The error type of the quantization core.

use thiserror::Error;

use crate::granularity::Granularity;
use crate::weight_layout::WeightLayout;

/// Everything that can go wrong when building a spec or quantizing a tensor.
///
/// Each variant names the offending field and value so that a recipe author can find it.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuantError {
    /// A configuration field holds a value outside what the format or spec allows.
    #[error("invalid `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// Dotted name of the field, e.g. `format.bits`.
        field: &'static str,
        /// The value that was given, printed.
        value: String,
        /// Why it is not allowed.
        reason: String,
    },
    /// A block size that must divide the axis it runs along does not (a k-quant super-block;
    /// plain groups may leave a shorter last group instead).
    #[error(
        "block size {size} does not divide axis {axis} of length {len} (shape {shape:?}): \
         k-quant super-blocks must tile the axis exactly"
    )]
    GroupSizeMismatch {
        /// Axis the groups run along.
        axis: usize,
        /// Length of that axis.
        len: usize,
        /// The block size.
        size: usize,
        /// Shape of the tensor.
        shape: Vec<usize>,
    },
    /// An axis index beyond the tensor's rank.
    #[error("axis {axis} is out of range for a tensor of rank {rank}")]
    AxisOutOfRange {
        /// Requested axis.
        axis: usize,
        /// Tensor rank.
        rank: usize,
    },
    /// The input contains NaN or infinite values, which have no quantized code.
    #[error("input `{what}` contains a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// Which input, e.g. `x` or `scale`.
        what: &'static str,
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// The input tensor has no elements.
    #[error("input `{what}` is empty (shape {shape:?})")]
    EmptyTensor {
        /// Which input.
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Parameters (scales, zero-points) do not fit the tensor they are applied to.
    #[error("`{what}` has shape {got:?} but the spec needs {expected:?}")]
    ShapeMismatch {
        /// Which parameter.
        what: &'static str,
        /// Shape that was given.
        got: Vec<usize>,
        /// Shape that the granularity requires.
        expected: Vec<usize>,
    },
    /// A role granularity (per output channel, per input group) was used where a tensor axis
    /// is needed: it must first be resolved against the layer's weight layout.
    #[error(
        "granularity `{granularity}` names a role, not a tensor axis: resolve it against the \
         layer's weight layout (`QuantSpec::resolve_for(WeightLayout::..., shape)`; a \
         `QuantPlan` and the quant layers do this by module type), or give an explicit axis \
         (`per_channel` / `per_group`)"
    )]
    UnresolvedRole {
        /// The role granularity.
        granularity: Granularity,
    },
    /// An explicit axis that does not fit the layer it is applied to (per channel off the
    /// output axis, groups not along the input axis), or a weight whose rank does not fit the
    /// layout. The message names the axis, the layout and the shape, and the role form to write.
    #[error("{}", crate::granularity::axis_mismatch_message(.granularity, .layout, .shape))]
    AxisMismatch {
        /// The granularity as given.
        granularity: Granularity,
        /// The layer's weight layout.
        layout: WeightLayout,
        /// The weight's shape.
        shape: Vec<usize>,
    },
    /// A scale is negative (where the spec's convention makes none) or not finite.
    #[error(
        "scale at index {index} is {value}; scales must be finite and >= 0 (0 only for an all-zero block; negative only under the signed-extreme or MSE symmetric-scale convention)"
    )]
    InvalidScale {
        /// Flat index of the scale.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A spec names a custom rounding rule (`Rounding::Custom`) that is not registered in this
    /// process (`burn_quant_core::rounding::register_rounding`).
    #[error(
        "rounding rule `{name}` is not registered in this process (registered: {registered:?}); \
         call `register_rounding(\"{name}\", rule)` before using a spec that names it"
    )]
    UnknownRounding {
        /// The name the spec gives.
        name: String,
        /// The names registered when the lookup failed, sorted.
        registered: Vec<String>,
    },
}

/// Result alias of the core crate.
pub type Result<T> = std::result::Result<T, QuantError>;

impl QuantError {
    /// Shorthand for [`QuantError::InvalidConfig`].
    pub fn config(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        QuantError::InvalidConfig {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
