//! Hyper-parameters of a Llama-family model: [`LlamaHParams`] from a Hugging Face
//! `config.json` or from the `llama.*` keys of a GGUF file, and written back as those keys
//! (formats.md §1.4: counts as u32, floats as f32).

use std::path::Path;

use burn_quant_export::gguf::{GgufFile, MetadataValue};
use serde_json::Value;

use crate::gguf::LlamaError;

impl LlamaError {
    fn hparams(why: impl Into<String>) -> Self {
        LlamaError::BadHParams { why: why.into() }
    }
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (`llama.rope.scaling.type` = "linear").
    Linear {
        /// The scaling factor.
        factor: f32,
    },
}

/// Hyper-parameters of a Llama-family model (Hugging Face `LlamaConfig` names).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHParams {
    /// Number of token ids (rows of the embedding).
    pub vocab_size: usize,
    /// Model width (`n_embd`).
    pub hidden_size: usize,
    /// FFN width (`n_ff`).
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); equal to `num_attention_heads` without GQA.
    pub num_key_value_heads: usize,
    /// Per-head dimension (also the RoPE dimension count).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Training context length.
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the token embedding (no `output.weight`).
    pub tie_word_embeddings: bool,
}

fn json_usize(cfg: &Value, field: &str) -> Result<Option<usize>, LlamaError> {
    match cfg.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| LlamaError::BadField {
                file: "config.json".into(),
                field: field.into(),
                why: format!("{v} is not a non-negative integer"),
            }),
    }
}

fn json_f32(cfg: &Value, field: &str) -> Result<Option<f32>, LlamaError> {
    match cfg.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| LlamaError::BadField {
                file: "config.json".into(),
                field: field.into(),
                why: format!("{v} is not a number"),
            }),
    }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, LlamaError> {
    v.ok_or_else(|| LlamaError::MissingField {
        file: "config.json".into(),
        field: field.into(),
    })
}

impl LlamaHParams {
    /// Parses a Hugging Face `config.json` (`LlamaForCausalLM` / `MistralForCausalLM`).
    ///
    /// Defaults follow transformers' `LlamaConfig`: `num_key_value_heads` = heads,
    /// `head_dim` = hidden / heads, `rope_theta` = 10000 (also read from
    /// `rope_parameters.rope_theta`, transformers ≥ 5), `max_position_embeddings` = 2048,
    /// `tie_word_embeddings` = false.
    pub fn from_hf_config_json(text: &str) -> Result<Self, LlamaError> {
        let cfg: Value = serde_json::from_str(text).map_err(|source| LlamaError::Json {
            file: "config.json".into(),
            source,
        })?;
        if let Some(mt) = cfg.get("model_type").and_then(Value::as_str)
            && mt != "llama"
            && mt != "mistral"
        {
            return Err(LlamaError::UnsupportedArchitecture { found: mt.into() });
        }
        let hidden = required(json_usize(&cfg, "hidden_size")?, "hidden_size")?;
        let heads = required(
            json_usize(&cfg, "num_attention_heads")?,
            "num_attention_heads",
        )?;
        let kv = json_usize(&cfg, "num_key_value_heads")?.unwrap_or(heads);
        let head_dim = match json_usize(&cfg, "head_dim")? {
            Some(h) => h,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let rope_params = cfg.get("rope_parameters");
        let rope_theta = match json_f32(&cfg, "rope_theta")? {
            Some(t) => t,
            None => match rope_params {
                Some(p) => json_f32(p, "rope_theta")?.unwrap_or(10000.0),
                None => 10000.0,
            },
        };
        // transformers < 5: `rope_scaling` {type|rope_type, factor}; ≥ 5: `rope_parameters`.
        let scaling_obj = match cfg.get("rope_scaling") {
            Some(Value::Null) | None => rope_params,
            Some(s) => Some(s),
        };
        let rope_scaling = match scaling_obj {
            None => RopeScaling::None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: required(json_f32(s, "factor")?, "rope_scaling.factor")?,
                    },
                    other => {
                        return Err(LlamaError::UnsupportedRopeScaling { kind: other.into() });
                    }
                }
            }
        };
        let hp = Self {
            vocab_size: required(json_usize(&cfg, "vocab_size")?, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: required(
                json_usize(&cfg, "intermediate_size")?,
                "intermediate_size",
            )?,
            num_hidden_layers: required(
                json_usize(&cfg, "num_hidden_layers")?,
                "num_hidden_layers",
            )?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: required(json_f32(&cfg, "rms_norm_eps")?, "rms_norm_eps")?,
            rope_theta,
            rope_scaling,
            max_position_embeddings: json_usize(&cfg, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: cfg
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        hp.validate()?;
        Ok(hp)
    }

    /// Reads and parses a `config.json` file.
    pub fn from_hf_config_file(path: impl AsRef<Path>) -> Result<Self, LlamaError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LlamaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf_config_json(&text)
    }

    /// Reads the `llama.*` keys of a GGUF file (u32 or u64 counts accepted). The vocabulary size
    /// comes from `llama.vocab_size` or the token count; embeddings are tied when the file has
    /// no `output.weight`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, LlamaError> {
        let arch = file
            .get("general.architecture")
            .ok_or_else(|| LlamaError::MissingKey {
                key: "general.architecture".into(),
            })?
            .as_str()
            .ok_or_else(|| LlamaError::WrongKeyType {
                key: "general.architecture".into(),
                expected: "string".into(),
            })?;
        if arch != "llama" {
            return Err(LlamaError::UnsupportedArchitecture { found: arch.into() });
        }
        let count = |key: &str| -> Result<Option<usize>, LlamaError> {
            match file.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_unsigned()
                    .and_then(|n| usize::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| LlamaError::WrongKeyType {
                        key: key.into(),
                        expected: "unsigned integer".into(),
                    }),
            }
        };
        let float = |key: &str| -> Result<Option<f32>, LlamaError> {
            match file.get(key) {
                None => Ok(None),
                Some(MetadataValue::F32(x)) => Ok(Some(*x)),
                Some(MetadataValue::F64(x)) => Ok(Some(*x as f32)),
                Some(_) => Err(LlamaError::WrongKeyType {
                    key: key.into(),
                    expected: "f32".into(),
                }),
            }
        };
        let need = |v: Option<usize>, key: &str| {
            v.ok_or_else(|| LlamaError::MissingKey { key: key.into() })
        };
        let hidden = need(count("llama.embedding_length")?, "llama.embedding_length")?;
        let heads = need(
            count("llama.attention.head_count")?,
            "llama.attention.head_count",
        )?;
        let vocab_size = match count("llama.vocab_size")? {
            Some(v) => v,
            None => match file.get("tokenizer.ggml.tokens") {
                Some(MetadataValue::Array(a)) => a.len(),
                _ => {
                    return Err(LlamaError::MissingKey {
                        key: "llama.vocab_size".into(),
                    });
                }
            },
        };
        let rope_scaling = match file.get("llama.rope.scaling.type").and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: float("llama.rope.scaling.factor")?.ok_or_else(|| {
                    LlamaError::MissingKey {
                        key: "llama.rope.scaling.factor".into(),
                    }
                })?,
            },
            Some(other) => {
                return Err(LlamaError::UnsupportedRopeScaling { kind: other.into() });
            }
        };
        let head_dim = match count("llama.attention.key_length")? {
            Some(h) => h,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let hp = Self {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: need(
                count("llama.feed_forward_length")?,
                "llama.feed_forward_length",
            )?,
            num_hidden_layers: need(count("llama.block_count")?, "llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: count("llama.attention.head_count_kv")?.unwrap_or(heads),
            head_dim,
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
                LlamaError::MissingKey {
                    key: "llama.attention.layer_norm_rms_epsilon".into(),
                }
            })?,
            rope_theta: float("llama.rope.freq_base")?.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: need(count("llama.context_length")?, "llama.context_length")?,
            tie_word_embeddings: file.tensor("output.weight").is_none(),
        };
        hp.validate()?;
        Ok(hp)
    }

    /// Checks that the numbers describe a model llama.cpp can build: non-zero sizes, heads a
    /// multiple of KV heads, an even head dimension (RoPE pairs), counts that fit u32.
    pub fn validate(&self) -> Result<(), LlamaError> {
        let fields = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in fields {
            if v == 0 {
                return Err(LlamaError::hparams(format!("{name} is 0")));
            }
            if u32::try_from(v).is_err() {
                return Err(LlamaError::hparams(format!(
                    "{name} = {v} does not fit u32"
                )));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(LlamaError::hparams(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(LlamaError::hparams(format!(
                "head_dim {} is odd (RoPE rotates pairs)",
                self.head_dim
            )));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(LlamaError::hparams(format!(
                "rms_norm_eps {} must be positive",
                self.rms_norm_eps
            )));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(LlamaError::hparams(format!(
                "rope_theta {} must be positive",
                self.rope_theta
            )));
        }
        Ok(())
    }

    /// Query heads per KV head (llama.cpp's `n_gqa`).
    pub fn n_gqa(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads.max(1)
    }

    /// The `llama.*` metadata pairs (formats.md §1.4), counts as u32.
    pub fn metadata(&self) -> Vec<(String, MetadataValue)> {
        // validate() guarantees every count fits u32.
        let u = |v: usize| MetadataValue::U32(v as u32);
        let mut m = vec![
            ("llama.vocab_size".to_string(), u(self.vocab_size)),
            (
                "llama.context_length".into(),
                u(self.max_position_embeddings),
            ),
            ("llama.embedding_length".into(), u(self.hidden_size)),
            ("llama.block_count".into(), u(self.num_hidden_layers)),
            (
                "llama.feed_forward_length".into(),
                u(self.intermediate_size),
            ),
            ("llama.rope.dimension_count".into(), u(self.head_dim)),
            (
                "llama.attention.head_count".into(),
                u(self.num_attention_heads),
            ),
            (
                "llama.attention.head_count_kv".into(),
                u(self.num_key_value_heads),
            ),
            ("llama.attention.key_length".into(), u(self.head_dim)),
            ("llama.attention.value_length".into(), u(self.head_dim)),
            (
                "llama.rope.freq_base".into(),
                MetadataValue::F32(self.rope_theta),
            ),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                MetadataValue::F32(self.rms_norm_eps),
            ),
        ];
        if let RopeScaling::Linear { factor } = self.rope_scaling {
            m.push((
                "llama.rope.scaling.type".into(),
                MetadataValue::String("linear".into()),
            ));
            m.push((
                "llama.rope.scaling.factor".into(),
                MetadataValue::F32(factor),
            ));
        }
        m
    }
}
