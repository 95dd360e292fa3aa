//! Loading [`LlamaModel`]s: Hugging Face directories (`config.json` + `model.safetensors` or a
//! sharded `model.safetensors.index.json`, F32/F16/BF16) and llama GGUF files (dequantized to
//! f32, q/k rows un-permuted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors};

use crate::error::{LlmError, Result};
use crate::gguf::{HfTensor, LlamaError, LlamaGgufSource};
use crate::hparams::LlamaHParams;
use crate::model::LlamaModel;
use crate::tokenizer::{LlamaTokenizer, read_json, tokenizer_path};

/// Name of the single-file checkpoint in a Hugging Face directory.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// Name of the index of a sharded checkpoint.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// A model and its tokenizer, as [`load_with_tokenizer`] returns them.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model.
    pub model: LlamaModel,
    /// Its tokenizer.
    pub tokenizer: LlamaTokenizer,
}

/// Loads a model from a Hugging Face directory or a `.gguf` file.
pub fn load_model(path: impl AsRef<Path>, device: &Device) -> Result<LlamaModel> {
    let path = path.as_ref();
    if path.is_dir() {
        LlamaModel::from_hf_dir(path, device)
    } else if path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        LlamaModel::from_gguf(path, device)
    } else {
        Err(LlmError::NotAModel {
            path: path.to_path_buf(),
        })
    }
}

/// Loads a model and the `tokenizer.json` that belongs to it ([`tokenizer_path`]): a GGUF
/// file's tokenizer is read from the directory holding the file, and its absence is an error
/// ([`LlmError::MissingTokenizer`]).
pub fn load_with_tokenizer(path: impl AsRef<Path>, device: &Device) -> Result<LoadedModel> {
    let path = path.as_ref();
    let tok = tokenizer_path(path);
    if !tok.is_file() {
        return Err(LlmError::MissingTokenizer {
            dir: tok.parent().map(Path::to_path_buf).unwrap_or_default(),
        });
    }
    let model = load_model(path, device)?;
    let tokenizer = LlamaTokenizer::from_file(tok)?;
    Ok(LoadedModel { model, tokenizer })
}

impl LlamaModel {
    /// Loads a llama GGUF: every tensor dequantized to f32 by burn-quant's codecs, in Hugging
    /// Face names and orientation (the rotary row permutation of `attn_q`/`attn_k` undone).
    pub fn from_gguf(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let src = LlamaGgufSource::open(path)?;
        let hparams = src.hparams().clone();
        let mut get = |name: &str| -> Result<Option<HfTensor>> {
            match src.tensor(name) {
                Ok(t) => Ok(Some(t)),
                // Absent, or a name a llama GGUF cannot carry (a bias the format has no slot
                // for): the model goes without it.
                Err(LlamaError::MissingTensor { .. } | LlamaError::UnknownTensor { .. }) => {
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        };
        Self::from_hf_tensors(&hparams, &mut get, device)
    }

    /// Loads a Hugging Face directory: `config.json` and `model.safetensors`, or the shards
    /// listed by `model.safetensors.index.json`. F16 and BF16 tensors are widened to f32.
    pub fn from_hf_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(LlmError::NotAModel {
                path: dir.to_path_buf(),
            });
        }
        let hparams = LlamaHParams::from_hf_config_file(&config)?;
        let files = safetensors_files(dir)?;
        let buffers: Vec<(PathBuf, Vec<u8>)> = files
            .iter()
            .map(|p| {
                std::fs::read(p)
                    .map(|b| (p.clone(), b))
                    .map_err(|e| LlmError::io(p, e))
            })
            .collect::<Result<_>>()?;
        let parsed: Vec<(&Path, SafeTensors<'_>)> = buffers
            .iter()
            .map(|(p, b)| {
                SafeTensors::deserialize(b)
                    .map(|st| (p.as_path(), st))
                    .map_err(|e| LlmError::Safetensors {
                        path: p.clone(),
                        why: e.to_string(),
                    })
            })
            .collect::<Result<_>>()?;
        let mut get = |name: &str| -> Result<Option<HfTensor>> {
            for (_, st) in &parsed {
                if let Ok(view) = st.tensor(name) {
                    return Ok(Some(HfTensor::new(
                        name,
                        view.shape().to_vec(),
                        to_f32(name, view.dtype(), view.data())?,
                    )));
                }
            }
            Ok(None)
        };
        Self::from_hf_tensors(&hparams, &mut get, device)
    }
}

/// The safetensors files of a directory: the distinct shards of the index when there is one,
/// else the single file.
pub(crate) fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(SAFETENSORS_INDEX);
    if let Some(json) = read_json(&index)? {
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| LlmError::Json {
                path: index.clone(),
                why: "no \"weight_map\" object".into(),
            })?;
        // Sorted and deduplicated: one read per shard, in a deterministic order.
        let mut shards = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| LlmError::Json {
                path: index.clone(),
                why: format!("weight_map[{tensor:?}] is not a file name"),
            })?;
            // A shard name must stay inside the directory.
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(LlmError::Json {
                    path: index.clone(),
                    why: format!("weight_map[{tensor:?}] = {file:?} leaves the directory"),
                });
            }
            shards.insert(file.to_string(), ());
        }
        return Ok(shards.into_keys().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(SAFETENSORS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(LlmError::io(
        single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX} exists"),
        ),
    ))
}

/// Little-endian F32/F16/BF16 bytes as f32 values.
pub(crate) fn to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(LlmError::UnsupportedDtype {
                name: name.into(),
                dtype: format!("{other:?}"),
            });
        }
    })
}
