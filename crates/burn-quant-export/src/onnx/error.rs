//! Errors of the ONNX exporters and reader.

use std::path::PathBuf;

use burn_quant_core::QuantError;
use burn_quant_nn::NnError;

/// Everything that can go wrong building, writing or reading an ONNX model; each variant names
/// the layer or file and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid protobuf `ModelProto`.
    #[error("{path}: not an ONNX model: {source}")]
    Decode {
        /// The file (or `<bytes>`).
        path: PathBuf,
        /// The protobuf error.
        source: prost::DecodeError,
    },
    /// A quantization spec (or one of its values) that the target format cannot hold exactly.
    #[error("{layer}: {what} with spec `{spec}` cannot be exported to {target}: {reason}")]
    Unsupported {
        /// Layer (and part) being exported, e.g. `linear_0.weight`.
        layer: String,
        /// What was being exported (`weight`, `input activation`, …).
        what: &'static str,
        /// The spec, printed on one line.
        spec: String,
        /// `ONNX QDQ` or `QONNX`.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// A layer does not fit the tensor flowing into it.
    #[error("{layer}: input of shape {shape:?} does not fit: {reason}")]
    Shape {
        /// The layer.
        layer: String,
        /// Shape of the tensor reaching the layer.
        shape: Vec<usize>,
        /// What was expected.
        reason: String,
    },
    /// A builder argument is impossible (empty shape, nothing to export, bad Trunc widths, …).
    #[error("invalid `{field}` = {value}: {reason}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// Its value, printed.
        value: String,
        /// Why it is not allowed.
        reason: String,
    },
    /// A tensor's data could not be read back from Burn or from an initializer.
    #[error("tensor `{name}`: {reason}")]
    TensorData {
        /// The tensor.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// An error of a quantized layer (e.g. an uncalibrated static scale).
    #[error("{layer}: {source}")]
    Layer {
        /// The layer.
        layer: String,
        /// The layer's error.
        source: NnError,
    },
    /// An error of the quantization core (e.g. a spec that does not fit a shape).
    #[error("{layer}: {source}")]
    Quant {
        /// The layer.
        layer: String,
        /// The core's error.
        source: QuantError,
    },
}

/// Result type of the ONNX module.
pub type Result<T, E = OnnxError> = std::result::Result<T, E>;
