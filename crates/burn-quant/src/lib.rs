//! # burn-quant
//!
//! Neural-network quantization for [Burn](https://burn.dev): formats, scales, rounding and
//! straight-through gradients today; quantized layers, PTQ algorithms and exporters as the
//! workspace grows. This facade re-exports the crates; most users only need the [`prelude`].
//!
//! ```
//! use burn_quant::prelude::*;
//!
//! let device = Device::flex();
//! let w = Tensor::<2>::from_floats([[0.3, -1.2], [0.7, 0.05]], &device);
//! let spec = QuantSpec::int8_weight_per_channel().with_bits(4);
//! let q = quantize(w.clone(), &spec).unwrap();
//! let w_hat = q.dequantize();
//! assert_eq!(w_hat.dims(), [2, 2]);
//! ```
#![warn(missing_docs)]

pub use burn_quant_core as core;
pub use burn_quant_core::*;
/// Exporters: GGUF (llama.cpp), ONNX QDQ, QONNX, Burn-native records.
pub use burn_quant_export as export;
/// Graph mode: capture any Burn model, run it with autodiff on any device, insert quantizers,
/// calibrate, Stage 2 on every weight, QAT through the graph.
pub use burn_quant_graph as graph;
/// Llama-family models: loading, tokenizer, perplexity, generation, the sequential PTQ pipeline.
pub use burn_quant_llm as llm;
/// Quantizer module, quantized layers, presets, calibration, plans and recipes.
pub use burn_quant_nn as nn;
/// Post-training quantization: calibration statistics and the Stage-2 algorithms (RTN, GPTQ,
/// GPFQ, GPTAQ, Qronos).
pub use burn_quant_ptq as ptq;

/// The names most programs need.
pub mod prelude {
    pub use burn::tensor::{Device, Int, Tensor, TensorData};
    pub use burn_quant_core::{
        Format, Granularity, Minifloat, Pow2Mode, QuantError, QuantParams, QuantSpec, QuantTensor,
        Rounding, RoundingFn, ScaleQuant, ScaleRestriction, ScaleSource, ScaleSpec, ScaleStat,
        SymmetricScale, WeightLayout, ZeroPoint, compute_params, dequantize, fake_quant,
        fake_quant_custom, fake_quant_with, quantize, quantize_with,
    };
    pub use burn_quant_nn::{
        QuantAct, QuantActConfig, QuantLinear, QuantLinearConfig, QuantReLU, QuantReLUConfig,
        Quantizer, QuantizerConfig, QuantizerRole, calibrate, presets, with_rounding,
        without_quantization,
    };
    pub use burn_quant_graph::{GraphRecipe, QuantizedGraph, capture, quantize_graph, stage2};
}

/// The README's code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The book's code (`book/src/*.md`), compiled and run as doctests so the book stays true.
#[cfg(doctest)]
pub mod book {
    #[doc = include_str!("../../../book/src/introduction.md")]
    pub struct Introduction;
    #[doc = include_str!("../../../book/src/formats.md")]
    pub struct Formats;
    #[doc = include_str!("../../../book/src/quickstart.md")]
    pub struct Quickstart;
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
