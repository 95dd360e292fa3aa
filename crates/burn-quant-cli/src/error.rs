//! The error type of the `burnq` tool.

use burn::tensor::TensorReadError;
use burn_quant::nn::NnError;
use burn_quant_core::QuantError;
use thiserror::Error;

/// Everything that can go wrong in a `burnq` command.
///
/// Each variant names what was being read or checked and the value at fault; the underlying
/// error, if any, is the [`std::error::Error::source`] (the `burnq` binary prints the chain).
#[derive(Debug, Error)]
pub enum CliError {
    /// A gzip stream could not be decompressed.
    #[error("cannot decompress `{what}`")]
    Gzip {
        /// Which file or stream.
        what: &'static str,
        /// The underlying I/O error from the decoder.
        #[source]
        source: std::io::Error,
    },
    /// An IDX file (the MNIST container format) is malformed.
    #[error("malformed IDX data in `{what}`: {reason}")]
    Idx {
        /// Which file.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The data set does not fit the request (sizes, labels, image geometry).
    #[error("data set: {0}")]
    Data(String),
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
    /// Quantization failed (invalid spec or a spec that does not fit a weight's shape).
    #[error("cannot quantize `{param}` with recipe `{recipe}`")]
    Quant {
        /// Recipe name.
        recipe: String,
        /// Dotted path of the parameter, e.g. `fc1.weight`.
        param: String,
        /// The core error.
        #[source]
        source: QuantError,
    },
    /// A quantized layer or a calibration failed (invalid spec for a layer, uncalibrated scale).
    #[error("quantized layer")]
    Layer(#[from] NnError),
    /// burn-train's Learner stopped with an error or was interrupted.
    #[error("training `{label}` failed: {reason}")]
    Training {
        /// The run's label, e.g. `W8A8`.
        label: String,
        /// What the Learner reported.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("cannot access `{what}`")]
    Io {
        /// The path.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file is malformed, or a tensor cannot be written as GGUF.
    #[error("GGUF `{what}`")]
    Gguf {
        /// The path or tensor.
        what: String,
        /// The reader's or writer's error.
        #[source]
        source: burn_quant::export::gguf::GgufError,
    },
    /// Loading, calibrating, quantizing or evaluating the LLM failed.
    #[error("LLM")]
    Llm(#[from] burn_quant_llm::LlmError),
    /// A Llama-family model cannot be read or exported as GGUF.
    #[error("llama model `{what}`")]
    Llama {
        /// The path.
        what: String,
        /// The exporter's error.
        #[source]
        source: burn_quant::llm::LlamaError,
    },
    /// An ONNX file is malformed, or a model cannot be exported to ONNX.
    #[error("ONNX `{what}`")]
    Onnx {
        /// The path or model.
        what: String,
        /// The exporter's or reader's error.
        #[source]
        source: burn_quant::export::onnx::OnnxError,
    },
    /// A burnpack record cannot be read or written.
    #[error("burnpack `{what}`")]
    Burnpack {
        /// The path or model.
        what: String,
        /// The exporter's error.
        #[source]
        source: burn_quant::export::burnpack::BurnpackError,
    },
    /// Reading a tensor back to the host failed.
    #[error("cannot read a tensor back from the device")]
    TensorRead(#[from] TensorReadError),
}

impl CliError {
    /// Shorthand for [`CliError::Config`].
    pub fn config(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        CliError::Config {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Result alias of the CLI crate.
pub type Result<T> = std::result::Result<T, CliError>;
