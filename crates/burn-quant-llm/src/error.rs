//! The error type of the LLM crate.

use std::path::PathBuf;

use burn_quant_nn::NnError;
use thiserror::Error;

use crate::gguf::LlamaError;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, LlmError>;

/// What can go wrong when loading, running or evaluating a Llama-family model.
#[derive(Debug, Error)]
pub enum LlmError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON or lacks the expected structure.
    #[error("{path}: {why}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser error or what is missing.
        why: String,
    },
    /// Hyper-parameters (`config.json`, GGUF `llama.*` keys) or a GGUF file that cannot be
    /// used.
    #[error(transparent)]
    Llama(#[from] LlamaError),
    /// A safetensors file is malformed.
    #[error("{path}: safetensors: {why}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        why: String,
    },
    /// A tensor has a dtype this loader does not convert (F32, F16 and BF16 are supported).
    #[error("tensor {name:?}: unsupported dtype {dtype} (supported: F32, F16, BF16)")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("missing tensor {name:?}")]
    MissingTensor {
        /// Hugging Face name.
        name: String,
    },
    /// A tensor whose shape does not match the hyper-parameters.
    #[error("tensor {name:?}: shape {actual:?}, the hyper-parameters need {expected:?}")]
    ShapeMismatch {
        /// Name (Hugging Face naming, or the layer slot for weight replacement).
        name: String,
        /// Shape needed.
        expected: Vec<usize>,
        /// Shape found.
        actual: Vec<usize>,
    },
    /// The path is neither a Hugging Face model directory nor a `.gguf` file.
    #[error("{path}: not a model (expected a directory with config.json or a .gguf file)")]
    NotAModel {
        /// The path given.
        path: PathBuf,
    },
    /// No `tokenizer.json` where one is needed.
    #[error("no tokenizer.json in {dir}")]
    MissingTokenizer {
        /// The directory searched.
        dir: PathBuf,
    },
    /// The `tokenizers` crate failed to load or run a tokenizer.
    #[error("tokenizer {what}: {why}")]
    Tokenizer {
        /// What was being done (file, "encode", "decode").
        what: String,
        /// The tokenizer's message.
        why: String,
    },
    /// A token id outside the model's vocabulary.
    #[error("token id {id} is outside the vocabulary (0..{vocab})")]
    TokenOutOfRange {
        /// The id.
        id: i64,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A layer failed (e.g. a static activation scale used before calibration).
    #[error(transparent)]
    Layer(#[from] NnError),
    /// A Stage-2 algorithm failed (statistics, shapes, spec).
    #[error(transparent)]
    Ptq(#[from] burn_quant_ptq::PtqError),
    /// The calibration data cannot drive the pipeline.
    #[error("calibration: {0}")]
    Calibration(String),
    /// Something the streaming pipeline ([`crate::quantize_llama_streaming`]) cannot do one
    /// block at a time (e.g. AutoRound, a weight spec without a ggml structure).
    #[error("streaming PTQ: {0}")]
    NotStreamable(String),
    /// A block index past the last block.
    #[error("block {index} does not exist (the model has {count})")]
    NoSuchBlock {
        /// Index asked for.
        index: usize,
        /// Number of blocks.
        count: usize,
    },
    /// A sequence longer than the RoPE table (or the model's context).
    #[error("positions {start}..{end} exceed the RoPE table of {len} positions")]
    TooLong {
        /// First position.
        start: usize,
        /// One past the last position.
        end: usize,
        /// Positions the table holds.
        len: usize,
    },
    /// A text that does not hold enough tokens for what was asked.
    #[error("{what}: {needed} tokens needed, the text has {available}")]
    TextTooShort {
        /// What was asked (e.g. "perplexity windows").
        what: String,
        /// Tokens needed.
        needed: usize,
        /// Tokens available.
        available: usize,
    },
    /// An argument or configuration field with an unusable value.
    #[error("invalid `{field}` = {value}: {why}")]
    InvalidArgument {
        /// Field or argument name.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        why: String,
    },
    /// The tensor shapes reaching a layer do not fit it.
    #[error("{what}: input shape {actual:?}, expected {expected}")]
    BadInput {
        /// The layer or function.
        what: String,
        /// What it expects.
        expected: String,
        /// The shape given.
        actual: Vec<usize>,
    },
}

impl LlmError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LlmError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        field: &'static str,
        value: impl ToString,
        why: impl Into<String>,
    ) -> Self {
        LlmError::InvalidArgument {
            field,
            value: value.to_string(),
            why: why.into(),
        }
    }
}
