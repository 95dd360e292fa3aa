//! The error type of the QAT crate.

use burn::tensor::TensorReadError;
use burn_quant_core::QuantError;
use burn_quant_nn::NnError;
use thiserror::Error;

/// Everything that can go wrong while calibrating, training or evaluating.
#[derive(Debug, Error)]
pub enum QatError {
    /// A configuration value is out of range.
    #[error("invalid `{field}` = {value}: {reason}")]
    Config {
        /// Name of the option, e.g. `epochs`.
        field: &'static str,
        /// The value that was given, printed.
        value: String,
        /// Why it is not allowed.
        reason: String,
    },
    /// A data set, data loader or batch sequence holds nothing.
    #[error("the {what} is empty")]
    EmptyData {
        /// Which data, e.g. `training data set`.
        what: &'static str,
    },
    /// burn-train's Learner stopped with an error or was interrupted.
    #[error("training `{label}` failed: {reason}")]
    Training {
        /// The run's label.
        label: String,
        /// What the Learner reported.
        reason: String,
    },
    /// Calibration failed (nested session, invalid statistic, a scale that cannot be written).
    #[error("calibration")]
    Calibration(#[from] NnError),
    /// A quantization setting is invalid, e.g. a rounding rule's name.
    #[error("quantization")]
    Quant(#[from] QuantError),
    /// A batch's logits and targets do not fit together.
    #[error("batch shapes: {0}")]
    Shape(String),
    /// Reading a tensor back to the host failed.
    #[error("cannot read a tensor back from the device")]
    TensorRead(#[from] TensorReadError),
}

impl QatError {
    /// Shorthand for [`QatError::Config`].
    pub fn config(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        QatError::Config {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Result alias of the QAT crate.
pub type Result<T> = std::result::Result<T, QatError>;
