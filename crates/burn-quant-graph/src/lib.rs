//! Graph mode: quantize any Burn model without changing its code.
//!
//! 1. [`capture`] records a model's forward (Burn's capture device) and lifts it into our own
//!    small typed [`Graph`] IR: a `Linear` is one node bound to its parameters by path and
//!    `ParamId`, convolutions, norms, pooling and activations are nodes of their own.
//! 2. The [`Interpreter`] runs a graph with Burn's backend ops on any device, bound to the live
//!    model's parameters, keeping autodiff: an unmodified graph equals eager execution.
//! 3. [`quantize_graph`] inserts weight, input and output quantizers by op kind and path
//!    (shared quantizers where values must share a scale), folds BatchNorm into convolutions,
//!    and [`QuantizedGraph::calibrate`] fills static activation scales.
//! 4. [`onnx`] lowers a graph to ONNX, quantizers as QuantizeLinear/DequantizeLinear
//!    ([`QuantizedGraph::to_onnx`], [`onnx::OnnxExport`]).
//!
//! What capture can see: one forward at the sample's shapes, with Rust control flow unrolled;
//! a model whose forward branches on computed values cannot be captured (a typed error).

#![warn(missing_docs)]
// Errors carry paths and specs so that messages name everything; they are built once per
// failed call.
#![allow(clippy::result_large_err)]

pub mod capture;
pub mod dataset;
pub mod equalize;
pub mod fold;
pub mod interp;
pub mod ir;
pub mod onnx;
pub mod pipeline;
pub mod quantize;
pub mod stage2;

pub use capture::{GraphIo, capture, capture_batched};
pub use equalize::{EqualizeConfig, EqualizeReport, equalize_cross_layer};
pub use interp::Interpreter;
pub use ir::{Graph, Node, Op, ValueId};
pub use quantize::{GraphModel, GraphRecipe, QuantNode, QuantizedGraph, quantize_graph};
pub use stage2::{GraphWeight, Stage2Result, stage2};
/// `ONNX in, quantized ONNX out` in one call (what `burnq quantize-onnx` runs).
pub use pipeline::{
    InputSet, Metric, OnnxQuantError, OnnxQuantRecipe, OnnxQuantReport, quantize_onnx,
    quantize_onnx_file,
};

use thiserror::Error;

/// Everything that can go wrong in graph mode.
#[derive(Debug, Error)]
pub enum GraphError {
    /// The forward could not be recorded (a branch on a computed value, a tensor that is not
    /// on the capture device, …).
    #[error("capture failed: {0}")]
    Capture(String),
    /// An op the graph IR does not have (yet).
    #[error("unsupported op `{op}` at {at}: graph mode does not handle it yet")]
    UnsupportedOp {
        /// The op (Burn's variant name, or ours with the tensor kind).
        op: String,
        /// Where: the recorded op index or the node name.
        at: String,
    },
    /// A graph whose structure is inconsistent.
    #[error("malformed graph: {0}")]
    Malformed(String),
    /// Wrong number of inputs or outputs.
    #[error("expected {expected} tensors, got {got}")]
    Arity {
        /// Expected count.
        expected: usize,
        /// Given count.
        got: usize,
    },
    /// An output of another rank than the caller asked for.
    #[error("expected a rank-{expected} tensor, got rank {got}")]
    Rank {
        /// Expected rank.
        expected: usize,
        /// Actual rank.
        got: usize,
    },
    /// An input whose shape differs from the captured one (graphs have static shapes:
    /// capture again for another shape).
    #[error("input {input} has shape {got:?}, the graph expects {expected:?}; capture again for this shape, or with `capture_batched` for any batch size")]
    InputShape {
        /// Which input.
        input: usize,
        /// Captured shape.
        expected: Vec<usize>,
        /// Given shape.
        got: Vec<usize>,
    },
    /// A parameter path the graph does not read.
    #[error("the graph reads no parameter `{0}`")]
    UnknownParam(String),
    /// A recipe that cannot be applied as written.
    #[error("recipe: {at}: {reason}")]
    Recipe {
        /// The field or node concerned.
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// A quantizer error, with the node it happened at.
    #[error("quantizer at `{node}`: {source}")]
    Quant {
        /// The node name.
        node: String,
        /// The quantizer's error.
        source: burn_quant_nn::NnError,
    },
    /// An ONNX export error (a format the target cannot hold, a dynamic scale, a bad name),
    /// with the node it happened at.
    #[error("ONNX export of `{node}`: {source}")]
    Onnx {
        /// The node name (`<graph>` for the graph's inputs and outputs).
        node: String,
        /// The exporter's error.
        source: burn_quant_export::onnx::OnnxError,
    },
    /// An ONNX model that cannot be imported: malformed, or using an op or attribute the
    /// importer does not implement. `at` names the node and its op (or the input,
    /// initializer or file).
    #[error("ONNX import: {at}: {reason}")]
    Import {
        /// Where: ``node `conv_3` (Conv)``, ``initializer `w` ``, …
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// A core quantization error, with what it concerns.
    #[error("{at}: {source}")]
    Core {
        /// What was being quantized.
        at: String,
        /// The error.
        source: burn_quant_core::QuantError,
    },
}

#[cfg(test)]
mod tests;
