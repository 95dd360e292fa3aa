//! llama.cpp-loadable GGUF files of Llama-family models (architecture `llama`): what a GGUF
//! file means for this architecture. The container, the ggml codecs, importance matrices and the
//! `tokenizer.ggml.*` keys are the export crate's ([`burn_quant_export::gguf`]); this module
//! knows the model.
//!
//! * [`LlamaHParams`] (module [`crate::hparams`]): the hyper-parameters,
//!   from a Hugging Face `config.json` or a GGUF file, written as the `llama.*` keys.
//! * [`GgufTokenizer`]: the `tokenizer.*` keys (export crate, shared by every architecture).
//! * Tensor names ([`LlamaTensorName`]): Hugging Face `model.layers.N.self_attn.q_proj.weight`
//!   ↔ GGUF `blk.N.attn_q.weight`; a row-major `[out, in]` weight is written with ggml dims
//!   `[in, out]` (no data movement), and the rows of `q_proj`/`k_proj` are permuted from the
//!   Hugging Face rotate-half RoPE layout to llama.cpp's adjacent-pair layout
//!   ([`permute_qk_rows`], undone by [`unpermute_qk_rows`]).
//! * [`LlamaMix`]: per-tensor ggml types as `llama-quantize` chooses them (Q4_K_M and friends,
//!   with its shape fallbacks), 1-D tensors F32.
//! * [`export_llama_gguf`]: writes the file atomically; [`LlamaGgufSource`] reads a llama GGUF
//!   back into Hugging Face names and orientation (dequantized to f32), so that any llama GGUF
//!   can be re-exported with another mix.

mod mix;
mod names;
mod source;

use std::path::{Path, PathBuf};

use burn_quant_export::gguf::{
    self as container, GgmlTensor, GgmlType, GgufError, GgufTokenizer, GgufWriter, Imatrix,
    MetadataValue, TokenizerError, codec,
};

pub use mix::LlamaMix;
use names::reorder_rows;
pub use names::{LlamaTensorKind, LlamaTensorName, permute_qk_rows, unpermute_qk_rows};
pub use source::LlamaGgufSource;

use crate::hparams::LlamaHParams;

/// Errors of Llama model files: `config.json`, the llama GGUF exporter and source reader.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// The GGUF container or a codec failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The tokenizer could not be converted to, or read from, `tokenizer.ggml.*` keys.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{file}: invalid JSON: {source}")]
    Json {
        /// Which file (e.g. "config.json").
        file: String,
        /// The parser error.
        source: serde_json::Error,
    },
    /// A required JSON field is absent.
    #[error("{file}: missing field {field:?}")]
    MissingField {
        /// Which file.
        file: String,
        /// The field path.
        field: String,
    },
    /// A JSON field has an unusable value.
    #[error("{file}: field {field:?}: {why}")]
    BadField {
        /// Which file.
        file: String,
        /// The field path.
        field: String,
        /// What is wrong.
        why: String,
    },
    /// `model_type` is not a Llama-family architecture.
    #[error("unsupported architecture {found:?} (supported: llama, mistral)")]
    UnsupportedArchitecture {
        /// The `model_type` or `general.architecture` found.
        found: String,
    },
    /// A RoPE scaling scheme that needs tensors or keys this exporter does not write.
    #[error("unsupported rope scaling {kind:?} (supported: none, linear)")]
    UnsupportedRopeScaling {
        /// The `rope_type` found.
        kind: String,
    },
    /// Hyper-parameters that cannot describe a valid model.
    #[error("invalid hyper-parameters: {why}")]
    BadHParams {
        /// What is inconsistent.
        why: String,
    },
    /// Two counts that must agree do not.
    #[error("{what}: expected {expected}, found {actual}")]
    VocabMismatch {
        /// What was compared.
        what: String,
        /// Expected count.
        expected: usize,
        /// Count found.
        actual: usize,
    },
    /// A GGUF metadata key is absent.
    #[error("missing GGUF key {key:?}")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A GGUF metadata key has the wrong value type.
    #[error("GGUF key {key:?} must be {expected}")]
    WrongKeyType {
        /// The key.
        key: String,
        /// The type expected.
        expected: String,
    },
    /// A tensor name that is not part of a Llama model.
    #[error("unknown tensor name {name:?}")]
    UnknownTensor {
        /// The name.
        name: String,
    },
    /// A tensor whose shape does not match the hyper-parameters.
    #[error("tensor {name:?}: shape {actual:?}, the hyper-parameters need {expected:?}")]
    ShapeMismatch {
        /// Hugging Face name.
        name: String,
        /// Shape the hyper-parameters give (row-major, Hugging Face order).
        expected: Vec<usize>,
        /// Shape given.
        actual: Vec<usize>,
    },
    /// Data length not equal to the product of the shape.
    #[error("tensor {name:?}: {actual} values for shape {shape:?}")]
    DataLength {
        /// Name.
        name: String,
        /// Shape given.
        shape: Vec<usize>,
        /// Number of values given.
        actual: usize,
    },
    /// The same tensor given twice.
    #[error("tensor {name:?} given twice")]
    DuplicateTensor {
        /// Hugging Face name.
        name: String,
    },
    /// A tensor the model needs was not given.
    #[error("missing tensor {name:?}")]
    MissingTensor {
        /// Hugging Face name.
        name: String,
    },
    /// An importance vector of the wrong length.
    #[error("importance for {name:?}: {actual} values, the tensor has {expected} columns")]
    ImportanceLength {
        /// Tensor name.
        name: String,
        /// Columns (ne\[0\]).
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// A mix name that is not known.
    #[error("unknown mix {0:?}")]
    UnknownMix(String),
    /// A streamed tensor ([`LlamaGgufStream`]) whose ggml type is not the one its header entry
    /// declared.
    #[error("tensor {name:?}: declared {declared:?}, given {given:?}")]
    TypeMismatch {
        /// GGUF name.
        name: String,
        /// Type in the header.
        declared: GgmlType,
        /// Type of the tensor given.
        given: GgmlType,
    },
}

/// What goes into the file besides tensors and tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaGgufConfig {
    /// The model's hyper-parameters.
    pub hparams: LlamaHParams,
    /// `general.name`.
    pub name: String,
    /// `general.alignment` (power of two; llama.cpp's default is 32).
    pub alignment: u32,
    /// Extra `burnq.*` provenance strings (key suffix, value), written after `burnq.version`
    /// and `burnq.mix`, e.g. `("source", "SmolLM2-135M-Instruct.Q4_1.gguf")`.
    pub provenance: Vec<(String, String)>,
}

impl LlamaGgufConfig {
    /// A configuration with alignment 32 and no extra provenance.
    pub fn new(hparams: LlamaHParams, name: impl Into<String>) -> Self {
        Self {
            hparams,
            name: name.into(),
            alignment: container::DEFAULT_ALIGNMENT,
            provenance: Vec::new(),
        }
    }

    /// Adds a `burnq.<key>` provenance string.
    pub fn with_provenance(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.provenance.push((key.into(), value.into()));
        self
    }
}

/// One tensor in Hugging Face naming and orientation: row-major, a Linear weight `[out, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    /// Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl HfTensor {
    /// A tensor from its parts.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            name: name.into(),
            shape,
            data,
        }
    }

    /// A Linear weight in Burn's orientation (`burn::nn::Linear.weight` is `[d_input,
    /// d_output]`), transposed to Hugging Face's `[d_output, d_input]`.
    pub fn from_burn_linear(
        name: impl Into<String>,
        d_input: usize,
        d_output: usize,
        data: &[f32],
    ) -> Result<Self, LlamaError> {
        let name = name.into();
        if data.len() != d_input * d_output {
            return Err(LlamaError::DataLength {
                name,
                shape: vec![d_input, d_output],
                actual: data.len(),
            });
        }
        let mut t = vec![0f32; data.len()];
        for i in 0..d_input {
            for o in 0..d_output {
                t[o * d_input + i] = data[i * d_output + o];
            }
        }
        Ok(Self::new(name, vec![d_output, d_input], t))
    }
}

/// One input tensor of the exporter: float values the mix encodes, or blocks already encoded
/// (e.g. by [`encode_quant_tensor`](burn_quant_export::gguf::encode_quant_tensor) from what GPTQ chose), which are
/// written code for code with their own type whatever the mix says.
#[derive(Debug, Clone, PartialEq)]
pub enum LlamaTensor {
    /// f32 values in Hugging Face orientation, encoded with the mix's type.
    Float(HfTensor),
    /// A 2-D weight already encoded as ggml blocks along its input axis: `dims = [in, out]`
    /// (ggml order, the reverse of the Hugging Face `[out, in]` shape), rows in Hugging Face
    /// order (the exporter moves whole encoded rows for the q/k permutation).
    Encoded {
        /// Hugging Face name.
        name: String,
        /// The encoded blocks.
        tensor: GgmlTensor,
    },
}

impl From<HfTensor> for LlamaTensor {
    fn from(t: HfTensor) -> Self {
        LlamaTensor::Float(t)
    }
}

impl LlamaTensor {
    /// The Hugging Face name.
    pub fn name(&self) -> &str {
        match self {
            LlamaTensor::Float(t) => &t.name,
            LlamaTensor::Encoded { name, .. } => name,
        }
    }
}

/// One tensor as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedTensor {
    /// GGUF name.
    pub name: String,
    /// ggml dims (`ne[0]` first).
    pub dims: Vec<u64>,
    /// Type chosen by the mix.
    pub ty: GgmlType,
    /// Encoded bytes (unpadded).
    pub bytes: u64,
    /// Whether an importance vector was used to encode it.
    pub weighted: bool,
    /// Whether it was given already encoded ([`LlamaTensor::Encoded`]) and written code for code.
    pub given: bool,
}

/// What [`export_llama_gguf`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaExportReport {
    /// Tensors in file order.
    pub tensors: Vec<ExportedTensor>,
    /// `general.file_type` written.
    pub file_type: u32,
    /// Total file size in bytes.
    pub file_bytes: u64,
}

impl LlamaExportReport {
    /// How many tensors got each type, sorted by type id.
    pub fn type_counts(&self) -> Vec<(GgmlType, usize)> {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for t in &self.tensors {
            match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.ty, 1)),
            }
        }
        counts.sort_by_key(|(ty, _)| ty.id());
        counts
    }
}

/// Builds the complete GGUF (metadata + encoded tensors) in memory; [`export_llama_gguf`]
/// writes it. Tensors may come in any order; they are written in a canonical order
/// (`token_embd`, `output_norm`, `output`, then each block's tensors) so the file does not
/// depend on the iteration order. Fails when a tensor is unknown, duplicated, mis-shaped or
/// missing, or when the tokenizer does not have `vocab_size` tokens.
pub fn build_llama_gguf<T: Into<LlamaTensor>>(
    config: &LlamaGgufConfig,
    tokenizer: &GgufTokenizer,
    tensors: impl IntoIterator<Item = Result<T, LlamaError>>,
    mix: LlamaMix,
    imatrix: Option<&Imatrix>,
) -> Result<(GgufWriter, LlamaExportReport), LlamaError> {
    let hp = &config.hparams;
    check_config(config, tokenizer)?;

    // Encode each tensor as it arrives, so that only encoded bytes stay in memory.
    let mut encoded: Vec<(LlamaTensorName, ExportedTensor, Vec<u8>)> = Vec::new();
    for t in tensors {
        let t: LlamaTensor = t?.into();
        let Some(tn) = LlamaTensorName::parse_hf_skippable(t.name())? else {
            continue;
        };
        if tn.kind == LlamaTensorKind::Output && hp.tie_word_embeddings {
            // A tied checkpoint may still store lm_head; llama.cpp reuses token_embd instead.
            continue;
        }
        if encoded.iter().any(|(n, _, _)| *n == tn) {
            return Err(LlamaError::DuplicateTensor {
                name: t.name().to_string(),
            });
        }
        let expected = tn.hf_shape(hp)?;
        let gguf_name = tn.gguf_name();
        let (info, bytes) = match t {
            LlamaTensor::Float(t) => encode_float(t, &tn, expected, gguf_name, hp, mix, imatrix)?,
            LlamaTensor::Encoded { name, tensor } => {
                place_encoded(name, tensor, &tn, expected, gguf_name, hp)?
            }
        };
        encoded.push((tn, info, bytes));
    }
    for needed in LlamaTensorName::required(hp) {
        if !encoded.iter().any(|(n, _, _)| *n == needed) {
            return Err(LlamaError::MissingTensor {
                name: needed.hf_name(),
            });
        }
    }
    encoded.sort_by_key(|(n, _, _)| n.order_key());
    let mut w = llama_writer(config, tokenizer, mix)?;
    let file_type = mix.file_type();
    let mut report = LlamaExportReport {
        tensors: Vec::with_capacity(encoded.len()),
        file_type,
        file_bytes: 0,
    };
    for (_, info, bytes) in encoded {
        w.add_tensor_bytes(info.name.clone(), &info.dims, info.ty, bytes)?;
        report.tensors.push(info);
    }
    Ok((w, report))
}

/// The hyper-parameters are valid and the tokenizer has `vocab_size` tokens.
fn check_config(config: &LlamaGgufConfig, tokenizer: &GgufTokenizer) -> Result<(), LlamaError> {
    let hp = &config.hparams;
    hp.validate()?;
    tokenizer.validate()?;
    if tokenizer.len() != hp.vocab_size {
        return Err(LlamaError::VocabMismatch {
            what: "tokenizer tokens vs vocab_size".into(),
            expected: hp.vocab_size,
            actual: tokenizer.len(),
        });
    }
    Ok(())
}

/// A writer holding the metadata of a llama GGUF (architecture, name, file type, alignment,
/// `llama.*`, `tokenizer.*` and `burnq.*` keys), no tensors yet.
fn llama_writer(
    config: &LlamaGgufConfig,
    tokenizer: &GgufTokenizer,
    mix: LlamaMix,
) -> Result<GgufWriter, LlamaError> {
    let hp = &config.hparams;
    let mut w = GgufWriter::new();
    w.add_metadata(
        "general.architecture",
        MetadataValue::String("llama".into()),
    )?;
    w.add_metadata("general.name", MetadataValue::String(config.name.clone()))?;
    let file_type = mix.file_type();
    w.add_metadata("general.file_type", MetadataValue::U32(file_type))?;
    w.add_metadata("general.quantization_version", MetadataValue::U32(2))?;
    w.set_alignment(config.alignment)?;
    for (k, v) in hp.metadata() {
        w.add_metadata(k, v)?;
    }
    for (k, v) in tokenizer.metadata() {
        w.add_metadata(k, v)?;
    }
    w.add_metadata(
        "burnq.version",
        MetadataValue::String(env!("CARGO_PKG_VERSION").into()),
    )?;
    w.add_metadata("burnq.mix", MetadataValue::String(mix.to_string()))?;
    for (k, v) in &config.provenance {
        w.add_metadata(format!("burnq.{k}"), MetadataValue::String(v.clone()))?;
    }
    Ok(w)
}

/// Checks, permutes and encodes one float tensor with the mix's type.
fn encode_float(
    t: HfTensor,
    tn: &LlamaTensorName,
    expected: Vec<usize>,
    gguf_name: String,
    hp: &LlamaHParams,
    mix: LlamaMix,
    imatrix: Option<&Imatrix>,
) -> Result<(ExportedTensor, Vec<u8>), LlamaError> {
    if t.shape != expected {
        return Err(LlamaError::ShapeMismatch {
            name: t.name,
            expected,
            actual: t.shape,
        });
    }
    if t.data.len() != t.shape.iter().product::<usize>() {
        return Err(LlamaError::DataLength {
            name: t.name,
            shape: t.shape,
            actual: t.data.len(),
        });
    }
    let mut data = t.data;
    if let Some(heads) = tn.rope_heads(hp) {
        let cols = if t.shape.len() == 2 { t.shape[1] } else { 1 };
        data = permute_qk_rows(&data, t.shape[0], cols, heads)?;
    }
    // Row-major [out, in] is ggml [in, out] as is.
    let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
    let ty = mix.tensor_type(tn, &dims, hp, imatrix.is_some());
    let importance = imatrix.and_then(|m| m.importance(&gguf_name));
    let (bytes, weighted) = match importance {
        Some(w) if ty.is_quantized() && dims.len() >= 2 => {
            let cols = dims[0] as usize;
            if w.len() != cols {
                return Err(LlamaError::ImportanceLength {
                    name: gguf_name,
                    expected: cols,
                    actual: w.len(),
                });
            }
            (codec::encode_weighted(ty, &data, cols, &w)?, true)
        }
        _ => (codec::encode(ty, &data)?, false),
    };
    let info = ExportedTensor {
        name: gguf_name,
        dims,
        ty,
        bytes: bytes.len() as u64,
        weighted,
        given: false,
    };
    Ok((info, bytes))
}

/// Checks an already encoded weight against the hyper-parameters and moves its encoded rows
/// into llama.cpp's q/k order (each row holds whole blocks, so rows move as byte runs).
fn place_encoded(
    name: String,
    tensor: GgmlTensor,
    tn: &LlamaTensorName,
    expected: Vec<usize>,
    gguf_name: String,
    hp: &LlamaHParams,
) -> Result<(ExportedTensor, Vec<u8>), LlamaError> {
    let [ne0, ne1] = tensor.dims;
    let actual = vec![ne1 as usize, ne0 as usize];
    if actual != expected {
        return Err(LlamaError::ShapeMismatch {
            name,
            expected,
            actual,
        });
    }
    let dims = tensor.dims.to_vec();
    let size = container::tensor_byte_size(&gguf_name, tensor.ty, &dims)?;
    if size != tensor.data.len() as u64 {
        return Err(LlamaError::DataLength {
            name,
            shape: actual,
            actual: tensor.data.len(),
        });
    }
    let mut bytes = tensor.data;
    if let Some(heads) = tn.rope_heads(hp) {
        let row_bytes = bytes.len() / ne1 as usize;
        bytes = reorder_rows(&bytes, ne1 as usize, row_bytes, heads, true)?;
    }
    let info = ExportedTensor {
        name: gguf_name,
        dims,
        ty: tensor.ty,
        bytes: bytes.len() as u64,
        weighted: false,
        given: true,
    };
    Ok((info, bytes))
}

/// Exports a Llama-family model as a llama.cpp-loadable GGUF at `path`, written atomically
/// (temporary file renamed into place).
///
/// `tensors` are in Hugging Face naming and orientation: [`HfTensor`]s of f32 values (a Burn
/// Linear weight must be transposed first, see [`HfTensor::from_burn_linear`]), or
/// [`LlamaTensor::Encoded`] weights written code for code; `mix` picks each float tensor's
/// ggml type as llama-quantize would; `imatrix` (keyed by GGUF weight names, e.g. from our
/// calibration or a `llama-imatrix` file), when given, makes the quantized weights that have an
/// entry use llama.cpp's importance-weighted encoders, and selects the mix rules that depend on
/// an imatrix.
pub fn export_llama_gguf<T: Into<LlamaTensor>>(
    path: impl AsRef<Path>,
    config: &LlamaGgufConfig,
    tokenizer: &GgufTokenizer,
    tensors: impl IntoIterator<Item = Result<T, LlamaError>>,
    mix: LlamaMix,
    imatrix: Option<&Imatrix>,
) -> Result<LlamaExportReport, LlamaError> {
    let path = path.as_ref();
    let (w, mut report) = build_llama_gguf(config, tokenizer, tensors, mix, imatrix)?;
    w.write_file(path)?;
    report.file_bytes = std::fs::metadata(path)
        .map_err(|source| LlamaError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok(report)
}

/// A llama GGUF written tensor by tensor, for models larger than memory: every tensor the
/// hyper-parameters require (no biases) is declared in the header up front, in the canonical
/// order of [`build_llama_gguf`], with its ggml type (the mix's, or `linear_type` for the block
/// linear weights, which then come [`LlamaTensor::Encoded`]); tensors are then given in any
/// order, encoded as [`export_llama_gguf`] encodes them, and written as soon as every tensor
/// before them is. Memory holds the tensors given ahead of their turn (at most a block's when
/// they come block by block). The same tensors give the same bytes as [`export_llama_gguf`].
#[derive(Debug)]
pub struct LlamaGgufStream {
    stream: container::GgufStream,
    hparams: LlamaHParams,
    mix: LlamaMix,
    /// Declared tensors not yet written, in file order, with their declared type.
    remaining: std::collections::VecDeque<(LlamaTensorName, GgmlType)>,
    /// Encoded tensors waiting for their turn.
    ready: Vec<(LlamaTensorName, ExportedTensor, Vec<u8>)>,
    report: LlamaExportReport,
}

impl LlamaGgufStream {
    /// Writes the header of `path` (to a temporary file renamed into place by
    /// [`finish`](Self::finish)). `linear_type`: the ggml type of the block linear weights
    /// when they are given encoded; `None` lets the mix choose for every tensor.
    pub fn create(
        path: impl AsRef<Path>,
        config: &LlamaGgufConfig,
        tokenizer: &GgufTokenizer,
        mix: LlamaMix,
        linear_type: Option<GgmlType>,
    ) -> Result<Self, LlamaError> {
        check_config(config, tokenizer)?;
        let hp = &config.hparams;
        let mut names = LlamaTensorName::required(hp);
        names.sort_by_key(|n| n.order_key());
        let mut w = llama_writer(config, tokenizer, mix)?;
        let mut remaining = std::collections::VecDeque::with_capacity(names.len());
        for tn in names {
            let dims: Vec<u64> = tn.hf_shape(hp)?.iter().rev().map(|&d| d as u64).collect();
            let ty = match linear_type {
                Some(ty) if tn.layer.is_some() && dims.len() == 2 => ty,
                _ => mix.tensor_type(&tn, &dims, hp, false),
            };
            w.declare_tensor(tn.gguf_name(), &dims, ty)?;
            remaining.push_back((tn, ty));
        }
        Ok(Self {
            stream: w.stream_file(path)?,
            hparams: hp.clone(),
            mix,
            report: LlamaExportReport {
                tensors: Vec::with_capacity(remaining.len()),
                file_type: mix.file_type(),
                file_bytes: 0,
            },
            remaining,
            ready: Vec::new(),
        })
    }

    /// Encodes one tensor and writes it (and any tensor it was holding back) when its turn
    /// has come. Names a llama GGUF skips (rotary tables, a tied `lm_head`) are ignored; a
    /// tensor not declared, given twice, mis-shaped or of another type than declared fails.
    pub fn write(&mut self, t: impl Into<LlamaTensor>) -> Result<(), LlamaError> {
        let t: LlamaTensor = t.into();
        let hp = &self.hparams;
        let Some(tn) = LlamaTensorName::parse_hf_skippable(t.name())? else {
            return Ok(());
        };
        if tn.kind == LlamaTensorKind::Output && hp.tie_word_embeddings {
            return Ok(());
        }
        let Some(&(_, declared)) = self.remaining.iter().find(|(n, _)| *n == tn) else {
            return Err(
                if self.report.tensors.iter().any(|e| e.name == tn.gguf_name()) {
                    LlamaError::DuplicateTensor {
                        name: t.name().to_string(),
                    }
                } else {
                    LlamaError::UnknownTensor {
                        name: format!("{} (not declared in the streamed header)", t.name()),
                    }
                },
            );
        };
        if self.ready.iter().any(|(n, _, _)| *n == tn) {
            return Err(LlamaError::DuplicateTensor {
                name: t.name().to_string(),
            });
        }
        let expected = tn.hf_shape(hp)?;
        let gguf_name = tn.gguf_name();
        let (info, bytes) = match t {
            LlamaTensor::Float(t) => encode_float(t, &tn, expected, gguf_name, hp, self.mix, None)?,
            LlamaTensor::Encoded { name, tensor } => {
                place_encoded(name, tensor, &tn, expected, gguf_name, hp)?
            }
        };
        if info.ty != declared {
            return Err(LlamaError::TypeMismatch {
                name: info.name,
                declared,
                given: info.ty,
            });
        }
        self.ready.push((tn, info, bytes));
        while let Some(&(next, _)) = self.remaining.front() {
            let Some(i) = self.ready.iter().position(|(n, _, _)| *n == next) else {
                break;
            };
            let (_, info, bytes) = self.ready.swap_remove(i);
            self.stream.write_tensor(&info.name, &bytes)?;
            self.report.tensors.push(info);
            self.remaining.pop_front();
        }
        Ok(())
    }

    /// Bytes written so far (header included).
    pub fn bytes_written(&self) -> u64 {
        self.stream.bytes_written()
    }

    /// Checks that every declared tensor was written and renames the file into place.
    pub fn finish(self) -> Result<LlamaExportReport, LlamaError> {
        if let Some((tn, _)) = self.remaining.front() {
            return Err(LlamaError::MissingTensor { name: tn.hf_name() });
        }
        let mut report = self.report;
        report.file_bytes = self.stream.finish()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
