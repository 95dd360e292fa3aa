//! # burn-quant-llm
//!
//! A Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, tied
//! embeddings) built on burn-quant's layers, with Hugging Face / GGUF loading, the
//! `tokenizers` tokenizer, a perplexity evaluator and greedy generation.
#![warn(missing_docs)]
