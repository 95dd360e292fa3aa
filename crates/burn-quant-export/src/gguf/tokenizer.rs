//! The `tokenizer.ggml.*` metadata llama.cpp needs, built from a Hugging Face `tokenizer.json`
//! (byte-level BPE, llama.cpp's "gpt2" tokenizer model) or read back from a GGUF file.
//!
//! What llama.cpp reads (formats.md §1.4): `tokenizer.ggml.model`, `tokens` (every id in order,
//! added tokens included), `token_type` (i32 per token), `merges` ("a b" strings, rank order),
//! `pre` (the pre-tokenizer regex family), the special ids, `add_bos_token` and the chat template.
//! The rules for deriving them from the Hugging Face files follow what llama.cpp's converter
//! does: holes in the id range become `[PAD<id>]` tokens of type unused, special added tokens
//! (and ones that look special, `<|...|>`) are control tokens, other added tokens user-defined;
//! special-token ids come from `tokenizer_config.json`'s token strings first, then from the
//! `*_token_id` fields of `config.json` and `generation_config.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::reader::GgufFile;
use super::value::{MetadataArray, MetadataValue};

/// Errors converting a Hugging Face tokenizer to `tokenizer.ggml.*` keys or reading them back;
/// each variant names the file or key and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
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
        /// Which file (e.g. "tokenizer.json").
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
    /// The tokenizer is not one this converter can convert.
    #[error("unsupported tokenizer: {description}")]
    UnsupportedTokenizer {
        /// What was found.
        description: String,
    },
    /// The pre-tokenizer does not match a family llama.cpp knows; pass
    /// [`TokenizerOptions::pre`] explicitly.
    #[error("cannot tell llama.cpp's pre-tokenizer from {description}; set TokenizerOptions::pre")]
    UnknownPreTokenizer {
        /// The `pre_tokenizer` JSON (shortened).
        description: String,
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
    /// A GGUF metadata value is unusable.
    #[error("GGUF key {key:?}: {why}")]
    BadKey {
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// Token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// An ordinary vocabulary entry (1).
    Normal,
    /// The unknown token (2).
    Unknown,
    /// A control token such as BOS/EOS or a chat marker; never produced by plain text (3).
    Control,
    /// An added token matched verbatim in text before BPE (4).
    UserDefined,
    /// A placeholder filling a hole in the id range (5).
    Unused,
    /// A byte-fallback token `<0xNN>` (6).
    Byte,
}

impl TokenType {
    /// The i32 stored in the GGUF array.
    pub fn id(self) -> i32 {
        match self {
            TokenType::Normal => 1,
            TokenType::Unknown => 2,
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            TokenType::Unused => 5,
            TokenType::Byte => 6,
        }
    }

    /// The type for a stored id, `None` for ids llama.cpp does not define.
    pub fn from_id(id: i32) -> Option<Self> {
        Some(match id {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// Ids of the special tokens (`tokenizer.ggml.<kind>_token_id`, u32), each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence (generation stops here).
    pub eos: Option<u32>,
    /// Unknown token.
    pub unk: Option<u32>,
    /// Padding token.
    pub pad: Option<u32>,
    /// Separator token.
    pub sep: Option<u32>,
    /// Classification token.
    pub cls: Option<u32>,
    /// Mask token.
    pub mask: Option<u32>,
}

impl SpecialTokens {
    /// (kind, id) pairs in the fixed order they are written; kind is the key infix.
    fn entries(&self) -> [(&'static str, Option<u32>); 7] {
        [
            ("bos", self.bos),
            ("eos", self.eos),
            ("unknown", self.unk),
            ("padding", self.pad),
            ("seperator", self.sep),
            ("cls", self.cls),
            ("mask", self.mask),
        ]
    }

    fn slot(&mut self, kind: &str) -> &mut Option<u32> {
        match kind {
            "bos" => &mut self.bos,
            "eos" => &mut self.eos,
            "unknown" => &mut self.unk,
            "padding" => &mut self.pad,
            "seperator" => &mut self.sep,
            "cls" => &mut self.cls,
            _ => &mut self.mask,
        }
    }
}

/// Options for [`GgufTokenizer::from_hf_dir`] / [`GgufTokenizer::from_hf_json`].
#[derive(Debug, Clone, Default)]
pub struct TokenizerOptions {
    /// `tokenizer.ggml.pre` to write. `None` derives it from the `pre_tokenizer` of
    /// `tokenizer.json` (see [`derive_pre_tokenizer`]). llama.cpp's converter identifies the
    /// pre-tokenizer by hashing the ids of a probe text, which cannot be done without running the
    /// tokenizer; pass the name explicitly when the JSON structure is ambiguous (e.g. "smollm"
    /// for SmolLM/SmolLM2, whose regex is StarCoder's but whose detokenizer keeps spaces).
    pub pre: Option<String>,
    /// Total number of ids (`vocab_size` of `config.json`); ids the tokenizer does not define
    /// become `[PAD<id>]` unused tokens. `None` = highest id + 1.
    pub vocab_size: Option<usize>,
}

/// Everything written under `tokenizer.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`: "gpt2" for byte-level BPE (the only model built from
    /// `tokenizer.json`); any model string read from a GGUF file is carried through.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer family (e.g. "gpt-2", "llama-bpe", "smollm").
    pub pre: Option<String>,
    /// Token strings, index = id.
    pub tokens: Vec<String>,
    /// One type per token.
    pub token_types: Vec<TokenType>,
    /// `tokenizer.ggml.scores` (SentencePiece models); `None` for BPE.
    pub scores: Option<Vec<f32>>,
    /// BPE merges as "left right" strings, highest priority first.
    pub merges: Vec<String>,
    /// Special-token ids.
    pub special: SpecialTokens,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece models).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

/// The `pre_tokenizer` regex of Llama 3 style tokenizers (three-digit groups).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The `pre_tokenizer` regex of Qwen2 style tokenizers (single digits).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Derives `tokenizer.ggml.pre` from a `tokenizer.json` `pre_tokenizer` object.
///
/// Recognised structures: `ByteLevel` with its built-in (GPT-2) regex → "gpt-2";
/// `Sequence[Digits(individual), ByteLevel(regex)]` → "starcoder" (StarCoder/SmolLM family; the
/// regexes are llama.cpp's STARCODER/SMOLLM set); `Sequence[Split(Llama 3 regex),
/// ByteLevel(no regex)]` → "llama-bpe"; the same with Qwen2's regex → "qwen2". Anything else is
/// [`TokenizerError::UnknownPreTokenizer`]: llama.cpp would otherwise fall back to a default regex
/// and tokenize differently from the model's training.
pub fn derive_pre_tokenizer(pre_tokenizer: &Value) -> Result<String, TokenizerError> {
    let unknown = || TokenizerError::UnknownPreTokenizer {
        description: compact(pre_tokenizer),
    };
    let ty = pre_tokenizer.get("type").and_then(Value::as_str);
    let byte_level_regex = |v: &Value| {
        v.get("type").and_then(Value::as_str) == Some("ByteLevel")
            && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true)
    };
    match ty {
        Some("ByteLevel") if byte_level_regex(pre_tokenizer) => Ok("gpt-2".into()),
        Some("Sequence") => {
            let parts = pre_tokenizer
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(unknown)?;
            match parts.as_slice() {
                [digits, bl]
                    if digits.get("type").and_then(Value::as_str) == Some("Digits")
                        && digits.get("individual_digits").and_then(Value::as_bool)
                            == Some(true)
                        && byte_level_regex(bl) =>
                {
                    Ok("starcoder".into())
                }
                [split, bl]
                    if split.get("type").and_then(Value::as_str) == Some("Split")
                        && bl.get("type").and_then(Value::as_str) == Some("ByteLevel")
                        && bl.get("use_regex").and_then(Value::as_bool) == Some(false) =>
                {
                    let regex = split
                        .get("pattern")
                        .and_then(|p| p.get("Regex"))
                        .and_then(Value::as_str);
                    match regex {
                        Some(LLAMA3_REGEX) => Ok("llama-bpe".into()),
                        Some(QWEN2_REGEX) => Ok("qwen2".into()),
                        _ => Err(unknown()),
                    }
                }
                _ => Err(unknown()),
            }
        }
        _ => Err(unknown()),
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

fn parse_json(file: &str, text: &str) -> Result<Value, TokenizerError> {
    serde_json::from_str(text).map_err(|source| TokenizerError::Json {
        file: file.to_string(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, TokenizerError> {
    if path.is_file() {
        read_text(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Whether an added token's text looks like a control token even when not flagged special
/// (llama.cpp's converter does the same for models that under-flag them).
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// Byte-level BPE writes a space inside a merge part as U+0120 ('Ġ', space + 256), since the
/// GGUF merge string separates the two parts with a plain space.
fn encode_merge_part(part: &str) -> String {
    part.chars()
        .map(|c| if c == ' ' { '\u{120}' } else { c })
        .collect()
}

impl GgufTokenizer {
    /// Reads `tokenizer.json` and, when present beside it, `tokenizer_config.json`,
    /// `config.json`, `generation_config.json` and `chat_template.jinja` from a Hugging Face
    /// model directory. `options.vocab_size` defaults to `config.json`'s `vocab_size`.
    pub fn from_hf_dir(
        dir: impl AsRef<Path>,
        options: &TokenizerOptions,
    ) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let tokenizer = read_text(&dir.join("tokenizer.json"))?;
        let tokenizer_config = read_optional(&dir.join("tokenizer_config.json"))?;
        let config = read_optional(&dir.join("config.json"))?;
        let generation_config = read_optional(&dir.join("generation_config.json"))?;
        let chat_template = read_optional(&dir.join("chat_template.jinja"))?;
        let mut options = options.clone();
        if options.vocab_size.is_none()
            && let Some(c) = &config
        {
            let v = parse_json("config.json", c)?;
            options.vocab_size = v
                .get("vocab_size")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
        }
        Self::from_hf_json(
            &tokenizer,
            HfTokenizerSide {
                tokenizer_config: tokenizer_config.as_deref(),
                config: config.as_deref(),
                generation_config: generation_config.as_deref(),
                chat_template: chat_template.as_deref(),
            },
            &options,
        )
    }

    /// Builds the metadata from the text of `tokenizer.json` and the optional side files.
    pub fn from_hf_json(
        tokenizer_json: &str,
        side: HfTokenizerSide<'_>,
        options: &TokenizerOptions,
    ) -> Result<Self, TokenizerError> {
        let tok = parse_json("tokenizer.json", tokenizer_json)?;
        let model = tok
            .get("model")
            .ok_or_else(|| TokenizerError::MissingField {
                file: "tokenizer.json".into(),
                field: "model".into(),
            })?;
        let model_type = model.get("type").and_then(Value::as_str).unwrap_or("");
        let pre_tokenizer = tok.get("pre_tokenizer").unwrap_or(&Value::Null);
        let is_byte_level = |v: &Value| -> bool {
            v.get("type").and_then(Value::as_str) == Some("ByteLevel")
                || v.get("pretokenizers")
                    .and_then(Value::as_array)
                    .is_some_and(|a| {
                        a.iter()
                            .any(|p| p.get("type").and_then(Value::as_str) == Some("ByteLevel"))
                    })
        };
        if model_type != "BPE" || !is_byte_level(pre_tokenizer) {
            return Err(TokenizerError::UnsupportedTokenizer {
                description: format!(
                    "model type {model_type:?} with pre_tokenizer {} (only byte-level BPE, \
                     llama.cpp's \"gpt2\" model, is built from tokenizer.json)",
                    compact(pre_tokenizer)
                ),
            });
        }
        let pre = match &options.pre {
            Some(p) => p.clone(),
            None => derive_pre_tokenizer(pre_tokenizer)?,
        };

        // id → (text, added entry) for the vocabulary and the added tokens.
        let bad = |field: &str, why: String| TokenizerError::BadField {
            file: "tokenizer.json".into(),
            field: field.into(),
            why,
        };
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("model.vocab", "missing or not an object".into()))?;
        let mut by_id: HashMap<u32, String> = HashMap::with_capacity(vocab.len());
        let to_id = |field: &str, v: &Value| -> Result<u32, TokenizerError> {
            v.as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad(field, format!("id {v} is not a u32")))
        };
        for (text, id) in vocab {
            let id = to_id("model.vocab", id)?;
            if let Some(prev) = by_id.insert(id, text.clone()) {
                return Err(bad(
                    "model.vocab",
                    format!("id {id} used by {prev:?} and {text:?}"),
                ));
            }
        }
        // Added tokens: (special, normalized).
        let mut added: HashMap<u32, bool> = HashMap::new();
        let mut text_to_id: HashMap<&str, u32> = vocab
            .iter()
            .filter_map(|(t, i)| Some((t.as_str(), u32::try_from(i.as_u64()?).ok()?)))
            .collect();
        for entry in tok
            .get("added_tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = to_id("added_tokens.id", entry.get("id").unwrap_or(&Value::Null))?;
            let content = entry
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("added_tokens.content", "missing or not a string".into()))?;
            match by_id.get(&id) {
                Some(t) if t != content => {
                    return Err(bad(
                        "added_tokens",
                        format!("id {id} is {t:?} in the vocab but {content:?} as an added token"),
                    ));
                }
                _ => {}
            }
            by_id.insert(id, content.to_string());
            text_to_id.insert(content, id);
            let special = entry
                .get("special")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            added.insert(id, special);
        }
        let max_id = by_id.keys().copied().max().map_or(0, |m| m as usize + 1);
        let n = options.vocab_size.unwrap_or(max_id);
        if n < max_id {
            return Err(TokenizerError::VocabMismatch {
                what: "vocab_size".into(),
                expected: n,
                actual: max_id,
            });
        }
        let mut tokens = Vec::with_capacity(n);
        let mut token_types = Vec::with_capacity(n);
        for id in 0..n as u32 {
            match by_id.get(&id) {
                None => {
                    tokens.push(format!("[PAD{id}]"));
                    token_types.push(TokenType::Unused);
                }
                Some(text) => {
                    let ty = match added.get(&id) {
                        Some(&special) if special || looks_special(text) => TokenType::Control,
                        Some(_) => TokenType::UserDefined,
                        None => TokenType::Normal,
                    };
                    tokens.push(text.clone());
                    token_types.push(ty);
                }
            }
        }

        let merges = match model.get("merges") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, m) in list.iter().enumerate() {
                    match m {
                        Value::String(s) => out.push(s.clone()),
                        Value::Array(pair) if pair.len() == 2 => {
                            match (pair[0].as_str(), pair[1].as_str()) {
                                (Some(a), Some(b)) => out.push(format!(
                                    "{} {}",
                                    encode_merge_part(a),
                                    encode_merge_part(b)
                                )),
                                _ => {
                                    return Err(bad(
                                        "model.merges",
                                        format!("entry {i} is not two strings"),
                                    ));
                                }
                            }
                        }
                        _ => {
                            return Err(bad(
                                "model.merges",
                                format!("entry {i} is neither \"a b\" nor [a, b]"),
                            ));
                        }
                    }
                }
                out
            }
            Some(_) => return Err(bad("model.merges", "not an array".into())),
        };

        let tcfg = side
            .tokenizer_config
            .map(|t| parse_json("tokenizer_config.json", t))
            .transpose()?;
        let cfg = side
            .config
            .map(|t| parse_json("config.json", t))
            .transpose()?;
        let gcfg = side
            .generation_config
            .map(|t| parse_json("generation_config.json", t))
            .transpose()?;

        // Special ids: tokenizer_config's token strings, then config.json, then
        // generation_config.json ids (a list, as Llama 3 has for eos, gives its first element).
        let mut special = SpecialTokens::default();
        let hf_names = [
            ("bos", "bos"),
            ("eos", "eos"),
            ("unknown", "unk"),
            ("padding", "pad"),
            ("seperator", "sep"),
            ("cls", "cls"),
            ("mask", "mask"),
        ];
        for (kind, hf) in hf_names {
            let from_string = tcfg.as_ref().and_then(|c| {
                let v = c.get(format!("{hf}_token"))?;
                let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
                text_to_id.get(text).copied()
            });
            let from_id = |c: &Option<Value>| {
                let v = c.as_ref()?.get(format!("{hf}_token_id"))?;
                let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
                v.as_u64().and_then(|i| u32::try_from(i).ok())
            };
            let id = from_string
                .or_else(|| from_id(&cfg))
                .or_else(|| from_id(&gcfg));
            if let Some(id) = id
                && (id as usize) < n
            {
                *special.slot(kind) = Some(id);
            }
        }

        // add_bos/add_eos: explicit in tokenizer_config, else what the post-processor's single
        // template puts around the sequence (HF adds exactly those tokens when encoding).
        let explicit = |key: &str| tcfg.as_ref().and_then(|c| c.get(key)?.as_bool());
        let (tmpl_first, tmpl_last) = template_ends(tok.get("post_processor"), &text_to_id);
        let add_bos =
            explicit("add_bos_token").or(Some(tmpl_first.is_some() && tmpl_first == special.bos));
        let add_eos = explicit("add_eos_token")
            .or_else(|| (tmpl_last.is_some() && tmpl_last == special.eos).then_some(true));

        let chat_template = tcfg
            .as_ref()
            .and_then(|c| c.get("chat_template")?.as_str().map(str::to_string))
            .or_else(|| side.chat_template.map(str::to_string));

        Ok(Self {
            model: "gpt2".into(),
            pre: Some(pre),
            tokens,
            token_types,
            scores: None,
            merges,
            special,
            add_bos,
            add_eos,
            add_space_prefix: None,
            chat_template,
        })
    }

    /// Reads the `tokenizer.*` metadata of a GGUF file (any tokenizer model is carried
    /// through unchanged).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let missing = |key: &str| TokenizerError::MissingKey { key: key.into() };
        let wrong = |key: &str, expected: &str| TokenizerError::WrongKeyType {
            key: key.into(),
            expected: expected.into(),
        };
        let model = file
            .get("tokenizer.ggml.model")
            .ok_or_else(|| missing("tokenizer.ggml.model"))?
            .as_str()
            .ok_or_else(|| wrong("tokenizer.ggml.model", "string"))?
            .to_string();
        let pre = match file.get("tokenizer.ggml.pre") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| wrong("tokenizer.ggml.pre", "string"))?
                    .to_string(),
            ),
        };
        let string_array = |key: &str| -> Result<Option<Vec<String>>, TokenizerError> {
            match file.get(key) {
                None => Ok(None),
                Some(MetadataValue::Array(MetadataArray::String(v))) => Ok(Some(v.clone())),
                Some(_) => Err(wrong(key, "array of strings")),
            }
        };
        let tokens = string_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let merges = string_array("tokenizer.ggml.merges")?.unwrap_or_default();
        let token_types = match file.get("tokenizer.ggml.token_type") {
            None => vec![TokenType::Normal; tokens.len()],
            Some(MetadataValue::Array(MetadataArray::I32(v))) => v
                .iter()
                .map(|&t| {
                    TokenType::from_id(t).ok_or_else(|| TokenizerError::BadKey {
                        key: "tokenizer.ggml.token_type".into(),
                        why: format!("unknown token type {t}"),
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(wrong("tokenizer.ggml.token_type", "array of i32")),
        };
        if token_types.len() != tokens.len() {
            return Err(TokenizerError::VocabMismatch {
                what: "tokenizer.ggml.token_type length".into(),
                expected: tokens.len(),
                actual: token_types.len(),
            });
        }
        let scores = match file.get("tokenizer.ggml.scores") {
            None => None,
            Some(MetadataValue::Array(MetadataArray::F32(v))) if v.len() == tokens.len() => {
                Some(v.clone())
            }
            Some(_) => return Err(wrong("tokenizer.ggml.scores", "f32 array, one per token")),
        };
        let mut special = SpecialTokens::default();
        for (kind, _) in SpecialTokens::default().entries() {
            let key = format!("tokenizer.ggml.{kind}_token_id");
            if let Some(v) = file.get(&key) {
                let id = v
                    .as_unsigned()
                    .ok_or_else(|| wrong(&key, "unsigned integer"))?;
                *special.slot(kind) =
                    Some(u32::try_from(id).map_err(|_| wrong(&key, "unsigned integer"))?);
            }
        }
        let flag = |key: &str| -> Result<Option<bool>, TokenizerError> {
            match file.get(key) {
                None => Ok(None),
                Some(MetadataValue::Bool(b)) => Ok(Some(*b)),
                Some(_) => Err(wrong(key, "bool")),
            }
        };
        let chat_template = match file.get("tokenizer.chat_template") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| wrong("tokenizer.chat_template", "string"))?
                    .to_string(),
            ),
        };
        Ok(Self {
            model,
            pre,
            tokens,
            token_types,
            scores,
            merges,
            special,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?,
            chat_template,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks internal consistency (one type per token, special ids in range, merges present
    /// for BPE); the exporter calls this before writing.
    pub fn validate(&self) -> Result<(), TokenizerError> {
        if self.tokens.is_empty() {
            return Err(TokenizerError::BadKey {
                key: "tokenizer.ggml.tokens".into(),
                why: "no tokens".into(),
            });
        }
        if self.token_types.len() != self.tokens.len() {
            return Err(TokenizerError::VocabMismatch {
                what: "token_types length".into(),
                expected: self.tokens.len(),
                actual: self.token_types.len(),
            });
        }
        if let Some(s) = &self.scores
            && s.len() != self.tokens.len()
        {
            return Err(TokenizerError::VocabMismatch {
                what: "scores length".into(),
                expected: self.tokens.len(),
                actual: s.len(),
            });
        }
        if self.model == "gpt2" && self.merges.is_empty() {
            return Err(TokenizerError::BadKey {
                key: "tokenizer.ggml.merges".into(),
                why: "a gpt2 (BPE) tokenizer needs merges".into(),
            });
        }
        for (kind, id) in self.special.entries() {
            if let Some(id) = id
                && id as usize >= self.tokens.len()
            {
                return Err(TokenizerError::BadKey {
                    key: format!("tokenizer.ggml.{kind}_token_id"),
                    why: format!("id {id} is outside the {} tokens", self.tokens.len()),
                });
            }
        }
        Ok(())
    }

    /// The metadata pairs, in the order they are written.
    pub fn metadata(&self) -> Vec<(String, MetadataValue)> {
        let mut m: Vec<(String, MetadataValue)> = Vec::new();
        let mut put = |k: &str, v: MetadataValue| m.push((k.to_string(), v));
        put(
            "tokenizer.ggml.model",
            MetadataValue::String(self.model.clone()),
        );
        if let Some(pre) = &self.pre {
            put("tokenizer.ggml.pre", MetadataValue::String(pre.clone()));
        }
        put(
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(self.tokens.clone())),
        );
        put(
            "tokenizer.ggml.token_type",
            MetadataValue::Array(MetadataArray::I32(
                self.token_types.iter().map(|t| t.id()).collect(),
            )),
        );
        if let Some(s) = &self.scores {
            put(
                "tokenizer.ggml.scores",
                MetadataValue::Array(MetadataArray::F32(s.clone())),
            );
        }
        if !self.merges.is_empty() {
            put(
                "tokenizer.ggml.merges",
                MetadataValue::Array(MetadataArray::String(self.merges.clone())),
            );
        }
        for (kind, id) in self.special.entries() {
            if let Some(id) = id {
                put(
                    &format!("tokenizer.ggml.{kind}_token_id"),
                    MetadataValue::U32(id),
                );
            }
        }
        if let Some(b) = self.add_bos {
            put("tokenizer.ggml.add_bos_token", MetadataValue::Bool(b));
        }
        if let Some(b) = self.add_eos {
            put("tokenizer.ggml.add_eos_token", MetadataValue::Bool(b));
        }
        if let Some(b) = self.add_space_prefix {
            put("tokenizer.ggml.add_space_prefix", MetadataValue::Bool(b));
        }
        if let Some(t) = &self.chat_template {
            put("tokenizer.chat_template", MetadataValue::String(t.clone()));
        }
        m
    }
}

/// The optional Hugging Face files read beside `tokenizer.json` (their text).
#[derive(Debug, Clone, Copy, Default)]
pub struct HfTokenizerSide<'a> {
    /// `tokenizer_config.json`: special-token strings, `add_bos_token`, `chat_template`.
    pub tokenizer_config: Option<&'a str>,
    /// `config.json`: `*_token_id` fallbacks.
    pub config: Option<&'a str>,
    /// `generation_config.json`: `*_token_id` fallbacks.
    pub generation_config: Option<&'a str>,
    /// `chat_template.jinja` (used when `tokenizer_config.json` has no `chat_template`).
    pub chat_template: Option<&'a str>,
}

/// First and last special-token ids of a `TemplateProcessing` post-processor's single-sequence
/// template (also inside a `Sequence` of processors).
fn template_ends(
    pp: Option<&Value>,
    text_to_id: &HashMap<&str, u32>,
) -> (Option<u32>, Option<u32>) {
    let Some(pp) = pp else { return (None, None) };
    let processors: Vec<&Value> = match pp.get("processors").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![pp],
    };
    for p in processors {
        if p.get("type").and_then(Value::as_str) != Some("TemplateProcessing") {
            continue;
        }
        let Some(single) = p.get("single").and_then(Value::as_array) else {
            continue;
        };
        if single.len() < 2 {
            return (None, None);
        }
        let special_id = |item: &Value| {
            let name = item.get("SpecialToken")?.get("id")?.as_str()?;
            text_to_id.get(name).copied()
        };
        return (
            single.first().and_then(special_id),
            single.last().and_then(special_id),
        );
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny byte-level BPE tokenizer.json, hand-written.
    fn tiny_json(pre: &str, merges: &str) -> String {
        format!(
            r#"{{
  "version": "1.0",
  "added_tokens": [
    {{"id": 0, "content": "<|endoftext|>", "special": true, "normalized": false}},
    {{"id": 6, "content": "<tool>", "special": false, "normalized": false}},
    {{"id": 7, "content": "<|extra|>", "special": false, "normalized": false}}
  ],
  "pre_tokenizer": {pre},
  "post_processor": {{"type": "TemplateProcessing",
     "single": [{{"SpecialToken": {{"id": "<|endoftext|>", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}],
     "pair": [], "special_tokens": {{}}}},
  "model": {{"type": "BPE", "vocab": {{"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4, "Ġab": 5}},
             "merges": {merges}}}
}}"#
        )
    }

    const BYTE_LEVEL: &str = r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#;

    #[test]
    fn tokens_types_merges_and_special_ids_from_hand_written_json() {
        let json = tiny_json(BYTE_LEVEL, r#"[["a", "b"], ["Ġ", "ab"], ["a b", "c"]]"#);
        let side = HfTokenizerSide {
            tokenizer_config: Some(
                r#"{"bos_token": "<|endoftext|>", "eos_token": {"content": "<tool>"}}"#,
            ),
            config: Some(r#"{"pad_token_id": 3, "eos_token_id": 1}"#),
            generation_config: Some(r#"{"unk_token_id": [2, 9]}"#),
            chat_template: Some("{{ x }}"),
        };
        let opts = TokenizerOptions {
            pre: None,
            vocab_size: Some(10),
        };
        let t = GgufTokenizer::from_hf_json(&json, side, &opts).unwrap();
        assert_eq!(t.model, "gpt2");
        assert_eq!(t.pre.as_deref(), Some("gpt-2"));
        assert_eq!(
            t.tokens,
            [
                "<|endoftext|>",
                "a",
                "b",
                "ab",
                "Ġ",
                "Ġab",
                "<tool>",
                "<|extra|>",
                "[PAD8]",
                "[PAD9]"
            ]
        );
        use TokenType::*;
        assert_eq!(
            t.token_types,
            [
                Control,
                Normal,
                Normal,
                Normal,
                Normal,
                Normal,
                UserDefined,
                Control,
                Unused,
                Unused
            ]
        );
        // The space inside a merge part becomes U+0120 so that "a b" stays two parts.
        assert_eq!(t.merges, ["a b", "Ġ ab", "aĠb c"]);
        // tokenizer_config strings win over config.json ids; config.json over generation_config.
        assert_eq!(t.special.bos, Some(0));
        assert_eq!(t.special.eos, Some(6));
        assert_eq!(t.special.pad, Some(3));
        assert_eq!(t.special.unk, Some(2));
        // The template starts with the BOS token, so BOS is added.
        assert_eq!(t.add_bos, Some(true));
        assert_eq!(t.chat_template.as_deref(), Some("{{ x }}"));
        t.validate().unwrap();
        let md = t.metadata();
        let get = |k: &str| md.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("tokenizer.ggml.bos_token_id"),
            Some(MetadataValue::U32(0))
        );
        assert_eq!(
            get("tokenizer.ggml.padding_token_id"),
            Some(MetadataValue::U32(3))
        );
        assert_eq!(
            get("tokenizer.ggml.token_type"),
            Some(MetadataValue::Array(MetadataArray::I32(vec![
                3, 1, 1, 1, 1, 1, 4, 3, 5, 5
            ])))
        );
    }

    #[test]
    fn string_merges_pass_through() {
        let json = tiny_json(BYTE_LEVEL, r#"["a b", "Ġ ab"]"#);
        let t = GgufTokenizer::from_hf_json(&json, HfTokenizerSide::default(), &Default::default())
            .unwrap();
        assert_eq!(t.merges, ["a b", "Ġ ab"]);
        assert_eq!(t.tokens.len(), 8);
    }

    #[test]
    fn pre_tokenizer_families() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(derive_pre_tokenizer(&v(BYTE_LEVEL)).unwrap(), "gpt-2");
        let starcoder = r#"{"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]}"#;
        assert_eq!(derive_pre_tokenizer(&v(starcoder)).unwrap(), "starcoder");
        let llama3 = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
        assert_eq!(derive_pre_tokenizer(&llama3).unwrap(), "llama-bpe");
        let odd = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "x+"}},
            {"type": "ByteLevel", "use_regex": false}]});
        assert!(matches!(
            derive_pre_tokenizer(&odd),
            Err(TokenizerError::UnknownPreTokenizer { .. })
        ));
    }

    #[test]
    fn malformed_and_unsupported_inputs_are_typed_errors() {
        let side = HfTokenizerSide::default();
        let opts = TokenizerOptions::default();
        assert!(matches!(
            GgufTokenizer::from_hf_json("{not json", side, &opts),
            Err(TokenizerError::Json { .. })
        ));
        assert!(matches!(
            GgufTokenizer::from_hf_json("{}", side, &opts),
            Err(TokenizerError::MissingField { .. })
        ));
        let wordpiece = r#"{"pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "vocab": {"a": 0}}}"#;
        assert!(matches!(
            GgufTokenizer::from_hf_json(wordpiece, side, &opts),
            Err(TokenizerError::UnsupportedTokenizer { .. })
        ));
        let dup = tiny_json(BYTE_LEVEL, "[]").replace(r#""b": 2"#, r#""b": 1"#);
        assert!(matches!(
            GgufTokenizer::from_hf_json(&dup, side, &opts),
            Err(TokenizerError::BadField { .. })
        ));
        let bad_merge = tiny_json(BYTE_LEVEL, "[[1, 2]]");
        assert!(matches!(
            GgufTokenizer::from_hf_json(&bad_merge, side, &opts),
            Err(TokenizerError::BadField { .. })
        ));
        let small = TokenizerOptions {
            pre: None,
            vocab_size: Some(3),
        };
        assert!(matches!(
            GgufTokenizer::from_hf_json(&tiny_json(BYTE_LEVEL, "[]"), side, &small),
            Err(TokenizerError::VocabMismatch { .. })
        ));
    }
}
