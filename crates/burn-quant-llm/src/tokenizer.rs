//! [`LlamaTokenizer`]: a Hugging Face `tokenizer.json` (through the `tokenizers` crate) with the
//! model's special tokens.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{LlmError, Result};

/// A tokenizer and the special tokens generation needs.
///
/// The begin/end-of-sequence tokens are read from the files `transformers` writes beside
/// `tokenizer.json`: `tokenizer_config.json` (`bos_token`, `eos_token`, as strings or
/// `{"content": …}`), `generation_config.json` (`bos_token_id`, `eos_token_id`, an id or a
/// list) and `config.json` (the same ids). Every end id found in any of them stops generation.
#[derive(Debug, Clone)]
pub struct LlamaTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
}

fn tok_err(what: impl Into<String>, e: impl std::fmt::Display) -> LlmError {
    LlmError::Tokenizer {
        what: what.into(),
        why: e.to_string(),
    }
}

/// Reads a JSON file if it exists (`Ok(None)` when absent).
pub(crate) fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LlmError::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LlmError::Json {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
}

impl LlamaTokenizer {
    /// Loads `tokenizer.json` and the special tokens from the JSON files beside it.
    pub fn from_file(tokenizer_json: impl AsRef<Path>) -> Result<Self> {
        let path = tokenizer_json.as_ref();
        if !path.is_file() {
            return Err(LlmError::MissingTokenizer {
                dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_err(path.display().to_string(), e))?;
        let mut tok = Self {
            inner,
            bos: None,
            eos: Vec::new(),
        };
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        tok.read_special_tokens(&dir)?;
        Ok(tok)
    }

    /// Loads `dir/tokenizer.json` (and the special tokens of `dir`).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(LlmError::MissingTokenizer {
                dir: dir.to_path_buf(),
            });
        }
        Self::from_file(path)
    }

    /// Wraps a tokenizer with explicit special tokens.
    pub fn new(inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Vec<u32>) -> Self {
        Self { inner, bos, eos }
    }

    fn read_special_tokens(&mut self, dir: &Path) -> Result<()> {
        let content = |v: &Value| -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
                _ => None,
            }
        };
        let ids = |v: Option<&Value>| -> Vec<u32> {
            match v {
                Some(Value::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_u64().map(|x| x as u32))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let mut eos = Vec::new();
        let mut bos = None;
        if let Some(cfg) = read_json(&dir.join("tokenizer_config.json"))? {
            if let Some(t) = cfg.get("bos_token").and_then(content) {
                bos = self.inner.token_to_id(&t);
            }
            if let Some(t) = cfg.get("eos_token").and_then(content)
                && let Some(id) = self.inner.token_to_id(&t)
            {
                eos.push(id);
            }
        }
        for file in ["generation_config.json", "config.json"] {
            if let Some(cfg) = read_json(&dir.join(file))? {
                eos.extend(ids(cfg.get("eos_token_id")));
                if bos.is_none() {
                    bos = ids(cfg.get("bos_token_id")).first().copied();
                }
            }
        }
        let mut seen = Vec::new();
        for id in eos {
            if !seen.contains(&id) {
                seen.push(id);
            }
        }
        self.bos = bos;
        self.eos = seen;
        Ok(())
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (for
    /// SmolLM2 it adds nothing either way).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens dropped when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err("decode", e))
    }

    /// Begin-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence ids (generation stops at any of them).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Id of a token string (`"<|im_start|>"`), if in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// A ChatML prompt (`<|im_start|>role\n…<|im_end|>\n`, then `<|im_start|>assistant\n`),
    /// the layout of SmolLM2's chat template; without `system` the template's default system
    /// message is used.
    pub fn chat_prompt(system: Option<&str>, user: &str) -> String {
        let system = system
            .unwrap_or("You are a helpful AI assistant named SmolLM, trained by Hugging Face");
        format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        )
    }
}

/// The `tokenizer.json` that belongs to a model path: `dir/tokenizer.json` for a directory, the
/// one beside the file for a `.gguf`.
pub fn tokenizer_path(model: impl AsRef<Path>) -> PathBuf {
    let model = model.as_ref();
    if model.is_dir() {
        model.join("tokenizer.json")
    } else {
        model
            .parent()
            .map(|p| p.join("tokenizer.json"))
            .unwrap_or_else(|| PathBuf::from("tokenizer.json"))
    }
}
