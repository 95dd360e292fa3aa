//! # burn-quant
//!
//! Neural-network quantization for [Burn](https://burn.dev): formats (int 1–16, OCP
//! minifloats, MX, NVFP4, binary, ternary), scales and rounding with straight-through and
//! surrogate gradients; quantized layers and plans for any Burn model; QAT; Stage 1 transforms
//! and Stage 2 PTQ algorithms (RTN, GPTQ, GPFQ, GPTAQ, Qronos, AdaRound, AutoRound); a Llama
//! pipeline; graph mode and ONNX import; exporters to GGUF, ONNX QDQ / QONNX and Burn QFloat.
//! This facade re-exports the crates; most programs only need the [`prelude`] and [`Error`].
//!
//! # The verbs
//!
//! | call | returns |
//! |---|---|
//! | [`quantize`] / [`dequantize`] | a tensor's codes ([`QuantTensor`]) / its values |
//! | [`fake_quant`] | a tensor's dequantized values in one step (what QAT trains through) |
//! | [`nn::quantize_model`] | a model's weights quantized once: the fake-quantized model **and** its [`nn::QuantWeight`] codes |
//! | [`nn::fake_quantize_weights`] | only the fake-quantized model |
//! | [`nn::quantized_weights`] | only the codes (of a float model, or of a QAT model with its learned scales) |
//! | [`nn::attach_weight_quantizers`] | the model with weight quantizers attached for QAT |
//! | `ptq::Stage2Algorithm::quantize` | one layer weight's codes from calibration statistics (GPTQ …) |
//! | `llm::quantize_llama` | a Llama model quantized block by block, with every weight's codes |
//! | `graph::quantize_graph` | a captured or imported graph with quantizers inserted |
//!
//! # Features
//!
//! The core and the nn crate (quantizers, layers, plans, recipes) are always compiled. The
//! stacks are features, all on by default (`full`): `qat` (burn-train), `ptq`, `export`, `llm`
//! (tokenizer, LLM pipeline), `graph` (graph mode, ONNX import); `wgpu` and `ndarray` add Burn
//! devices. A program that only needs layers, plans and QAT depends on
//! `burn-quant = { version = "…", default-features = false, features = ["qat"] }`.
//!
//! ```
//! use burn_quant::prelude::*;
//!
//! fn main() -> burn_quant::Result<()> {
//!     let device = Device::flex();
//!     let w = Tensor::<2>::from_floats([[0.3, -1.2], [0.7, 0.05]], &device);
//!     let spec = QuantSpec::int8_weight_per_channel().with_bits(4);
//!     let q = quantize(w.clone(), &spec)?;
//!     let w_hat = q.dequantize();
//!     assert_eq!(w_hat.dims(), [2, 2]);
//!     Ok(())
//! }
//! ```
#![warn(missing_docs)]

mod any_error;

pub use any_error::{Error, Result};

pub use burn_quant_core as core;
// Everything of the core by name; the facade's own `Result` (any burn-quant error) shadows the
// core's alias, which stays reachable as `core::Result`.
pub use burn_quant_core::*;
/// Exporters: GGUF (llama.cpp), ONNX QDQ, QONNX, Burn-native records.
#[cfg(feature = "export")]
pub use burn_quant_export as export;
/// Graph mode: capture any Burn model, run it with autodiff on any device, insert quantizers,
/// calibrate, Stage 2 on every weight, QAT through the graph; ONNX import.
#[cfg(feature = "graph")]
pub use burn_quant_graph as graph;
/// Llama-family models: loading, tokenizer, perplexity, generation, the sequential PTQ pipeline.
#[cfg(feature = "llm")]
pub use burn_quant_llm as llm;
/// Quantizer module, quantized layers, presets, calibration, plans and recipes.
pub use burn_quant_nn as nn;
/// Quantization-aware training of the user's model with burn-train: `fit`, calibration,
/// evaluation, the RDFS rounding rule.
#[cfg(feature = "qat")]
pub use burn_quant_qat as qat;
/// Post-training quantization: calibration statistics, Stage 1 transforms and the Stage-2
/// algorithms (RTN, GPTQ, GPFQ, GPTAQ, Qronos, AdaRound, AutoRound).
#[cfg(feature = "ptq")]
pub use burn_quant_ptq as ptq;

/// The names most programs need: tensors and devices, specs and the tensor verbs, quantizers
/// and layers, plans, recipes and the model verbs, and (with their features) graph mode.
pub mod prelude {
    pub use crate::{Error, Result};
    pub use burn::tensor::{Device, Int, Tensor, TensorData};
    pub use burn_quant_core::{
        Format, Granularity, Minifloat, Pow2Mode, QuantError, QuantParams, QuantSpec, QuantTensor,
        Rounding, RoundingFn, ScaleQuant, ScaleRestriction, ScaleSource, ScaleSpec, ScaleStat,
        SymmetricScale, WeightLayout, ZeroPoint, compute_params, dequantize, fake_quant,
        fake_quant_custom, fake_quant_with, quantize, quantize_with, register_rounding,
    };
    pub use burn_quant_nn::{
        LayerQuant, QuantAct, QuantActConfig, QuantConv1d, QuantConv1dConfig, QuantConv2d,
        QuantConv2dConfig, QuantEmbedding, QuantEmbeddingConfig, QuantLinear, QuantLinearConfig,
        QuantPlan, QuantReLU, QuantReLUConfig, QuantWeight, QuantizedModel, Quantizer,
        QuantizerConfig, QuantizerRole, Recipe, attach_weight_quantizers, calibrate,
        fake_quantize_weights, presets, quantize_model, quantized_weights, set_quantization,
        set_rounding, without_quantization,
    };
    #[cfg(feature = "graph")]
    pub use burn_quant_graph::{GraphRecipe, QuantizedGraph, capture, quantize_graph, stage2};
}

/// The README's code, compiled and run as a doctest.
#[cfg(all(doctest, feature = "full"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The book's code (`book/src/*.md`), compiled and run as doctests so the book stays true.
#[cfg(all(doctest, feature = "full"))]
pub mod book {
    #[doc = include_str!("../../../book/src/introduction.md")]
    pub struct Introduction;
    #[doc = include_str!("../../../book/src/formats.md")]
    pub struct Formats;
    #[doc = include_str!("../../../book/src/quickstart.md")]
    pub struct Quickstart;
    #[doc = include_str!("../../../book/src/your-model.md")]
    pub struct YourModel;
    #[doc = include_str!("../../../book/src/layers.md")]
    pub struct Layers;
    #[doc = include_str!("../../../book/src/plans.md")]
    pub struct Plans;
    #[doc = include_str!("../../../book/src/llm-ptq.md")]
    pub struct LlmPtq;
    #[doc = include_str!("../../../book/src/composition.md")]
    pub struct Composition;
    #[doc = include_str!("../../../book/src/learned-rounding.md")]
    pub struct LearnedRounding;
    #[doc = include_str!("../../../book/src/export.md")]
    pub struct Export;
    #[doc = include_str!("../../../book/src/graph-mode.md")]
    pub struct GraphMode;
    #[doc = include_str!("../../../book/src/onnx.md")]
    pub struct OnnxIn;
    #[doc = include_str!("../../../book/src/performance.md")]
    pub struct Performance;
    #[doc = include_str!("../../../book/src/devices.md")]
    pub struct Devices;
}
