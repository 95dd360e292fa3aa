//! ONNX export of quantized models — QDQ (QuantizeLinear/DequantizeLinear, what onnxruntime
//! and execution providers consume) and QONNX (Quant, BipolarQuant, FloatQuant, Trunc of the
//! `qonnx.custom_op.general` domain, what FINN and Brevitas read) — plus a reader for
//! inspection.
//!
//! The protobuf messages are hand-written `prost` structs with the official field numbers
//! ([`proto`]); no code generation. [`OnnxModelBuilder`] walks our layers (`QuantLinear`,
//! `QuantConv2d`, `QuantReLU`, `QuantAct`, …) and encodes exactly what their `forward` computes.
//! Any graph (graph mode, `burn_quant_graph::onnx`) is lowered onto the same parts: an
//! [`OnnxGraph`] under construction, [`HostQuant`] / [`HostAct`] read back from quantizers, and
//! a style's emitters ([`QuantStyle::emit_weight`], [`QuantStyle::emit_activation`]).
//!
//! **QDQ** ([`QdqModelBuilder`]): a quantized weight is an integer (or float8) initializer
//! holding the codes, its scale (and zero-point) initializers, and a `DequantizeLinear`:
//! - integer grids go into the narrowest ONNX type holding every code exactly: INT8/UINT8
//!   (opset 10, 13 per axis), INT4/UINT4 and INT16/UINT16 (opset 21), INT2/UINT2 (opset 25,
//!   also ternary and binary codes); 3-bit codes live in INT4, and so on;
//! - OCP e4m3fn / e5m2 (and the fnuz variants) are FLOAT8 types (opset 19);
//! - per tensor: scalar scale; per channel: 1-D scale + `axis`; per group: blocked
//!   `block_size` (opset 21). Quantized scale levels (MX E8M0, k-quant sub-block scales) are
//!   written as their exact f32 values;
//! - zero-points must be integers in the element type (k-quant mins and HQQ zero-points are
//!   not: an error).
//!
//! An activation quantizer becomes `QuantizeLinear → DequantizeLinear` with its static
//! (calibrated, learned or constant) scale; a grid narrower than its container (narrow range,
//! 3-bit, ternary) is clamped first with `Max`/`Min`. QuantizeLinear rounds half to even, so
//! other rounding rules, dynamic scales and binary activations are errors. The model's opset is
//! the lowest that holds every node, its IR version the one that goes with it.
//!
//! One known difference: our fake-quant computes `round(x/s + z)` in f32, QuantizeLinear
//! `round(x/s) + z`; with a non-zero zero-point they can differ by one code when `x/s` lies
//! within an ulp of a half-integer (the addition rounds it onto the tie).
//!
//! **QONNX** ([`QonnxModelBuilder`]): weights are float initializers holding the dequantized
//! (on-grid) values, quantized again by a `Quant` (integers of any width, signed/unsigned,
//! narrow, zero-point, per tensor/channel), `BipolarQuant` (binary) or `FloatQuant` (any
//! minifloat, MX included) node, which gives back the same values; per-group scales run on a
//! reshaped view (one axis per group). Activations use the same nodes with their rounding mode
//! (`ROUND`, `HALF_UP`, `FLOOR`, `CEIL`, `DOWN`); [`QonnxModelBuilder::trunc`] adds a `Trunc`.
//!
//! ```no_run
//! use burn_quant_export::onnx::{QdqModelBuilder, read_onnx, save_onnx, summarize};
//! # fn run(fc1: &burn_quant_nn::QuantLinear, relu: &burn_quant_nn::QuantReLU,
//! #        fc2: &burn_quant_nn::QuantLinear) -> Result<(), Box<dyn std::error::Error>> {
//! let model = QdqModelBuilder::new("input", &[1, 784])
//!     .dynamic_batch("batch")
//!     .linear(fc1)?
//!     .relu(relu)?
//!     .linear(fc2)?
//!     .build()?;
//! save_onnx("mlp_qdq.onnx", &model)?;
//! println!("{}", summarize(&read_onnx("mlp_qdq.onnx")?));
//! # Ok(()) }
//! ```

mod builder;
mod error;
mod graph;
mod host;
mod inspect;
mod io;
pub mod proto;
mod style;

pub use builder::{ExportedLayer, OnnxModelBuilder, QdqModelBuilder, QonnxModelBuilder, TruncSpec};
pub use error::{OnnxError, Result};
pub use graph::{OnnxGraph, OnnxGraphParts, Val, ir_version_for_opset};
pub use host::{HostAct, HostQuant};
pub use inspect::{InitializerSummary, ModelSummary, ValueSummary, summarize, tensor_values};
pub use io::{decode_onnx, read_onnx, save_onnx};
pub use proto::ModelProto;
pub use style::{QONNX_DOMAIN, QONNX_DOMAIN_VERSION, Qdq, Qonnx, QuantStyle};

#[cfg(test)]
mod tests;
