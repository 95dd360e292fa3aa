//! Exporters for burn-quant.
//!
//! Currently provides [`gguf`]: a GGUF v3 container writer/reader (hardened against malformed
//! input) and reference block codecs for the ggml types F32, F16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1.
#![warn(missing_docs)]

pub mod burnpack;
pub mod gguf;
pub mod onnx;

/// Re-export of the core crate, whose `QuantTensor` is what the exporters consume.
pub use burn_quant_core;
