//! # burn-quant-llm
//!
//! A Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, tied
//! embeddings) built on burn-quant's layers, with Hugging Face / GGUF loading, the
//! `tokenizers` tokenizer, a perplexity evaluator and greedy generation.
//!
//! * [`LlamaModel`]: every projection is a [`burn_quant_nn::QuantLinear`] (float while its
//!   weight spec is `None`), laid out block by block for sequential PTQ:
//!   [`LlamaModel::embed`] → [`DecoderBlock::forward`] with an optional [`InputHook`] that sees
//!   the input of every linear layer → [`LlamaModel::final_norm_and_head`]; weights and
//!   quantizers are replaced per [`LinearSlot`].
//! * Loading: [`load_model`] / [`load_with_tokenizer`] take a Hugging Face directory
//!   (`config.json`, `model.safetensors` or sharded, F32/F16/BF16, `tokenizer.json`) or a
//!   llama `.gguf` file (dequantized on load, q/k rows un-permuted); [`LlamaHParams`] from
//!   `config.json` or the GGUF `llama.*` keys ([`hparams`]).
//! * Llama GGUF files for llama.cpp ([`gguf`]): [`gguf::export_llama_gguf`] with the tensor
//!   names, q/k permutation and llama-quantize mixes ([`gguf::LlamaMix`]) of this architecture,
//!   and [`gguf::LlamaGgufSource`] to read one back; the container, codecs and tokenizer keys
//!   are the export crate's.
//! * [`perplexity()`] under the windowed protocol of [`PerplexityConfig`] (default: 16 windows
//!   of 512 tokens, tokens 256..512 scored); [`compare_with_reference`] on the same windows:
//!   mean KL divergence (nats per token) from a reference model such as the FP32 original,
//!   top-1 agreement, with standard errors; [`calibration_windows`] from a seeded sampler.
//! * Stage 1 ([`stage1`]): the model declares its transformable regions
//!   ([`burn_quant_ptq::stage1::Regions`]) and [`stage1::apply_stage1`] runs recipe steps on
//!   them — norm folding, SmoothQuant, QuaRot's rotations, HIP, MagR — each function-preserving
//!   (MagR nearly); [`stage1::quantize_kv`] quantizes keys and values (per head and token) as
//!   the cache holds them.
//! * Stage 2: [`quantize_llama`] runs any [`burn_quant_ptq::Algorithm`] block by block
//!   (per-layer algorithms site by site; AutoRound block-wise, with autodiff through the real
//!   block forward); [`correct_biases`] then gives each block linear the bias that removes its
//!   mean output error (exported to GGUF as llama.cpp's optional biases).
//! * Models larger than memory: [`quantize_llama_streaming`] reads a memory-mapped checkpoint
//!   one block at a time (stored dtype until the block's turn) and writes the GGUF as it goes.
//! * [`generate_greedy`] / [`generate_text`] with a key/value cache.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use burn_quant_llm::{PerplexityConfig, generate_text, load_with_tokenizer, perplexity_of_text};
//!
//! let device = Device::flex();
//! let m = load_with_tokenizer("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf", &device)?;
//! let text = std::fs::read_to_string("austen-text/pride_prejudice_eval_slice.txt").unwrap();
//! let ppl = perplexity_of_text(&m.model, &m.tokenizer, &text, &PerplexityConfig::default())?;
//! println!("perplexity {:.2}", ppl.perplexity);
//! println!("{}", generate_text(&m.model, &m.tokenizer, "The capital of France is", 16)?);
//! # Ok::<(), burn_quant_llm::LlmError>(())
//! ```
#![warn(missing_docs)]

pub mod bias;
pub mod block;
mod block_rounding;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hparams;
pub mod load;
pub mod model;
pub mod norm;
pub mod perplexity;
pub mod pipeline;
pub mod rng;
pub mod rope;
pub mod stage1;
pub mod stream;
pub mod tokenizer;

pub use bias::{BiasCorrectionReport, correct_biases};
pub use block::{
    BlockCache, DecoderBlock, InputHook, InputSite, LinearSlot, LlamaAttention, LlamaMlp,
};
pub use error::{LlmError, Result};
pub use generate::{generate_greedy, generate_text};
pub use load::{LoadedModel, load_model, load_with_tokenizer};
pub use model::{KvCache, LlamaModel};
pub use norm::RmsNorm;
pub use perplexity::{
    CALIBRATION_TEXT, CalibrationConfig, EVAL_TEXT, PerplexityConfig, PerplexityReport,
    ReferenceComparison, calibration_windows, calibration_windows_from_text,
    compare_with_reference, compare_with_reference_of_text, eval_windows, perplexity,
    perplexity_of_text, window_nll,
};
pub use pipeline::{
    BlockProgress, PtqConfig, PtqResult, PtqTimings, hf_weight_name, quantize_llama,
};
pub use rope::Rope;
pub use stream::{StreamOptions, StreamReport, quantize_llama_streaming};
pub use tokenizer::{LlamaTokenizer, tokenizer_path};

pub use gguf::{HfTensor, LlamaError};
pub use hparams::{LlamaHParams, RopeScaling};

#[cfg(test)]
mod tests;
