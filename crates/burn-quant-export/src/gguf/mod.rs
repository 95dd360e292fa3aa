//! GGUF v3 container (writer + hardened reader) and ggml block codecs.
//!
//! Layout (little-endian): header (magic "GGUF", version 3, tensor count u64, kv count u64), the
//! metadata key/value pairs, the tensor infos (name, n_dims, dims in ggml order where
//! `dims[0] = ne[0]` is the contiguous axis, type id, offset), zero padding to the alignment, then
//! the tensor data. The writer follows llama.cpp's stricter rules: tensor offsets are the running
//! sum of the *padded* tensor sizes in info order, every tensor is zero-padded to the alignment
//! (`general.alignment`, default 32), keys and tensor names are unique, names are < 64 bytes and
//! tensors have 1..=4 dims. The reader rejects every violation with a typed [`GgufError`].
//!
//! This module is about the file format only: the container, the ggml codecs, `QuantTensor` →
//! blocks, importance matrices and the `tokenizer.ggml.*` keys (GGUF's convention for every
//! architecture). What a file means for one architecture (the `llama.*` keys, tensor names,
//! llama-quantize mixes) lives with the model, in `burn_quant_llm::gguf`.

pub mod codec;
mod error;
mod imatrix;
mod quant_tensor;
mod reader;
mod tokenizer;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use imatrix::{Imatrix, ImatrixEntry};
pub use quant_tensor::{
    GgmlTensor, encode_quant_tensor, encode_quant_tensor_as, ggml_type_of, requantize_tensor,
};
pub use reader::{GgufFile, TensorInfo};
pub use tokenizer::{
    GgufTokenizer, HfTokenizerSide, SpecialTokens, TokenType, TokenizerError, TokenizerOptions,
    derive_pre_tokenizer,
};
pub use types::GgmlType;
pub use value::{MetadataArray, MetadataValue, ValueType};
pub use writer::{GgufStream, GgufWriter, tensor_byte_size};

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// The version this crate writes.
pub const GGUF_VERSION: u32 = 3;
/// Alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Metadata key holding the alignment (u32, power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Tensor names must be strictly shorter than this many bytes (ggml's GGML_MAX_NAME incl. NUL).
pub const MAX_NAME_LEN: usize = 64;
/// Maximum number of tensor dims (GGML_MAX_DIMS).
pub const MAX_DIMS: usize = 4;
/// Maximum nesting depth of metadata arrays accepted by the reader.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Result type of this module.
pub type Result<T> = std::result::Result<T, GgufError>;

/// Rounds `x` up to a multiple of `align` (a power of two), `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

#[cfg(test)]
mod tests;
