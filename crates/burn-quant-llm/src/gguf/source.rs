//! Reading a llama GGUF back as Hugging Face tensors (names, orientation, f32 values).

use std::path::Path;

use burn_quant_export::gguf::{GgufFile, GgufTokenizer, TensorInfo, codec};

use super::{HfTensor, LlamaError, LlamaHParams, LlamaTensorName, unpermute_qk_rows};

/// A llama-architecture GGUF file opened as a source of f32 tensors in Hugging Face naming and
/// orientation: every tensor is dequantized with our codecs, its ggml dims reversed to a
/// row-major shape, and the rows of `attn_q`/`attn_k` un-permuted to the rotate-half layout.
/// With [`super::export_llama_gguf`] this makes GGUF → f32 → another mix → GGUF round trips.
#[derive(Debug, Clone)]
pub struct LlamaGgufSource {
    file: GgufFile,
    hparams: LlamaHParams,
    tokenizer: GgufTokenizer,
}

impl LlamaGgufSource {
    /// Reads and checks a llama GGUF (the whole file is held in memory).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        Self::from_file(GgufFile::read(path)?)
    }

    /// Wraps an already parsed file.
    pub fn from_file(file: GgufFile) -> Result<Self, LlamaError> {
        let hparams = LlamaHParams::from_gguf(&file)?;
        let tokenizer = GgufTokenizer::from_gguf(&file)?;
        Ok(Self {
            file,
            hparams,
            tokenizer,
        })
    }

    /// The hyper-parameters read from the `llama.*` keys.
    pub fn hparams(&self) -> &LlamaHParams {
        &self.hparams
    }

    /// The tokenizer read from the `tokenizer.*` keys.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// `general.name`, if present.
    pub fn name(&self) -> Option<&str> {
        self.file.get("general.name").and_then(|v| v.as_str())
    }

    /// The parsed GGUF file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Every tensor in file order, decoded one at a time (so only one f32 copy is alive when
    /// the consumer encodes and drops each).
    pub fn tensors(&self) -> impl Iterator<Item = Result<HfTensor, LlamaError>> + '_ {
        self.file.tensors.iter().map(|info| self.decode(info))
    }

    /// One tensor by its Hugging Face name.
    pub fn tensor(&self, hf_name: &str) -> Result<HfTensor, LlamaError> {
        let gguf = LlamaTensorName::parse_hf(hf_name)?.gguf_name();
        let info = self
            .file
            .tensor(&gguf)
            .ok_or_else(|| LlamaError::MissingTensor {
                name: hf_name.to_string(),
            })?;
        self.decode(info)
    }

    /// One tensor by its Hugging Face name, its bytes taken from `file` (the whole file, e.g.
    /// memory-mapped, when this source was built from a header only:
    /// [`GgufFile::parse_header_of`]).
    pub fn tensor_in(&self, hf_name: &str, file: &[u8]) -> Result<HfTensor, LlamaError> {
        let gguf = LlamaTensorName::parse_hf(hf_name)?.gguf_name();
        let info = self
            .file
            .tensor(&gguf)
            .ok_or_else(|| LlamaError::MissingTensor {
                name: hf_name.to_string(),
            })?;
        let start = self.file.data_start.saturating_add(info.offset);
        let bytes = usize::try_from(start)
            .ok()
            .zip(usize::try_from(start.saturating_add(info.size)).ok())
            .and_then(|(s, e)| file.get(s..e))
            .ok_or_else(|| {
                LlamaError::Gguf(burn_quant_export::gguf::GgufError::OutOfBounds {
                    name: info.name.clone(),
                    end: start.saturating_add(info.size),
                    file_len: file.len() as u64,
                })
            })?;
        self.decode_bytes(info, bytes)
    }

    fn decode(&self, info: &TensorInfo) -> Result<HfTensor, LlamaError> {
        self.decode_bytes(info, self.file.tensor_bytes(info))
    }

    fn decode_bytes(&self, info: &TensorInfo, bytes: &[u8]) -> Result<HfTensor, LlamaError> {
        let name = LlamaTensorName::parse_gguf(&info.name)?;
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let expected = name.hf_shape(&self.hparams)?;
        if shape != expected {
            return Err(LlamaError::ShapeMismatch {
                name: info.name.clone(),
                expected,
                actual: shape,
            });
        }
        let mut data = codec::decode(info.ty, bytes)?;
        if let Some(heads) = name.rope_heads(&self.hparams) {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            data = unpermute_qk_rows(&data, shape[0], cols, heads)?;
        }
        Ok(HfTensor::new(name.hf_name(), shape, data))
    }
}
