//! Exporters for burn-quant: a `QuantTensor` is written with its own codes and scales, or the
//! exporter says why the format cannot hold it.
//!
//! - [`gguf`]: GGUF v3 container writer and hardened reader; ggml block codecs (F32, F16, BF16,
//!   Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K…Q6_K, IQ4_NL, MXFP4) with ggml's reference and
//!   importance-weighted quantizers; `QuantTensor` → blocks code for code; importance matrices;
//!   the `tokenizer.ggml.*` keys. File formats only: what a GGUF means for the Llama
//!   architecture (`llama.*` keys, tensor names, q/k permutation, llama-quantize mixes) is
//!   `burn_quant_llm::gguf`, next to the model.
//! - [`onnx`]: ONNX QDQ and QONNX graphs of quantized layers, and a reader for any ONNX file.
//! - [`burnpack`]: Burn `QFloat` tensors and burnpack records that load into the float model.
//! - [`qfloat`]: a model's quantized weights as Burn `QFloat` tensors in memory
//!   ([`to_qfloat_model`], [`IntoQFloat`]), so it holds and runs on Burn's quantized storage.
#![warn(missing_docs)]

pub mod burnpack;
pub mod gguf;
pub mod onnx;
pub mod qfloat;

pub use qfloat::{IntoQFloat, ParamBytes, param_bytes, to_qfloat_model};

/// Re-export of the core crate, whose `QuantTensor` is what the exporters consume.
pub use burn_quant_core;
