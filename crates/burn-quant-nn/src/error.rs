//! The error type of the layers crate.

use thiserror::Error;

/// What can go wrong when building, calibrating or running a quantized layer.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum NnError {
    /// An error of the quantization core (spec, shape, non-finite input, ...).
    #[error(transparent)]
    Quant(#[from] burn_quant_core::QuantError),
    /// A static activation scale is used before calibration gave it a value.
    #[error(
        "quantizer `{what}` has a static scale that was never calibrated: run `calibrate` first or use a dynamic scale"
    )]
    NotCalibrated {
        /// Which quantizer (layer and role).
        what: String,
    },
    /// A stored scale does not have as many cells as the input's granularity needs.
    #[error(
        "quantizer `{what}` stores {stored} scale cells but an input of shape {shape:?} needs {needed}"
    )]
    CellMismatch {
        /// Which quantizer.
        what: String,
        /// Cells stored.
        stored: usize,
        /// Cells needed.
        needed: usize,
        /// Input shape.
        shape: Vec<usize>,
    },
    /// Bias quantization needs the input's scale, and the layer has none.
    #[error(
        "layer `{layer}` quantizes its bias (scale = input scale × weight scale) but has no input quantizer: add one or disable the bias quantizer"
    )]
    MissingInputScale {
        /// The layer.
        layer: String,
    },
    /// A layer configuration field holds an impossible value.
    #[error("invalid `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// Field name.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is not allowed.
        reason: String,
    },
    /// No calibration batch reached a quantizer that needs one.
    #[error(
        "calibration saw no batch for {count} static quantizer(s); did the closure run the model?"
    )]
    EmptyCalibration {
        /// How many quantizers got nothing.
        count: usize,
    },
}

/// Result alias of the layers crate.
pub type Result<T, E = NnError> = std::result::Result<T, E>;
