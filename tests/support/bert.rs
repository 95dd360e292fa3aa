//! all-MiniLM-L6-v2, a BERT sentence encoder, built from `burn::nn` modules only and loaded
//! from its Hugging Face safetensors file; plus the WordPiece tokenizer of its `vocab.txt`.
//!
//! A test and example model (graph mode quantizes it with no change to this code), not a
//! library feature. The encoder is Burn's post-norm [`TransformerEncoder`], which computes
//! BERT's layer exactly: `LN(x + Wo·attn(x))`, then `LN(h + W2·gelu(W1·h))`; scores divided by
//! `√d_head`; padded keys filled with −10⁴ before the softmax (BERT adds the dtype's minimum:
//! both underflow to a weight of exactly 0 in f32); exact (erf) GELU; biased variance in
//! LayerNorm.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use safetensors::SafeTensors;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

/// Hyper-parameters of a BERT encoder (Hugging Face `config.json` names in the docs).
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size` (d_model).
    pub hidden_size: usize,
    /// `num_hidden_layers`.
    pub num_layers: usize,
    /// `num_attention_heads`.
    pub num_heads: usize,
    /// `intermediate_size` (FFN width).
    pub intermediate_size: usize,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `type_vocab_size`.
    pub type_vocab_size: usize,
    /// `layer_norm_eps`.
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// sentence-transformers/all-MiniLM-L6-v2 (its `config.json`).
    pub fn all_minilm_l6_v2() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 384,
            num_layers: 6,
            num_heads: 12,
            intermediate_size: 1536,
            max_positions: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }
}

/// A BERT encoder (`BertModel` without its pooler) from `burn::nn` modules.
#[derive(Module, Debug)]
pub struct Bert {
    /// Token embeddings `[vocab, d_model]`.
    pub word_embeddings: Embedding,
    /// Absolute position embeddings `[max_positions, d_model]`.
    pub position_embeddings: Embedding,
    /// Segment embeddings `[type_vocab, d_model]` (every token is segment 0 here).
    pub token_type_embeddings: Embedding,
    /// LayerNorm after the embedding sum.
    pub embeddings_norm: LayerNorm,
    /// The post-norm transformer layers.
    pub encoder: TransformerEncoder,
}

impl Bert {
    /// Hidden states of the last layer.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]` token ids.
    /// - `mask_pad`: `[batch, seq]`, `true` at padding (Burn's `mask_pad` convention).
    /// - output: `[batch, seq, d_model]`.
    pub fn forward(&self, input_ids: Tensor<2, Int>, mask_pad: Tensor<2, Bool>) -> Tensor<3> {
        let [_, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
        let segments = Tensor::<2, Int>::zeros([1, seq], &device);
        // BERT's order: (words + segments) + positions.
        let x = self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(segments)
            + self.position_embeddings.forward(positions);
        let x = self.embeddings_norm.forward(x);
        self.encoder
            .forward(TransformerEncoderInput::new(x).mask_pad(mask_pad))
    }

    /// Sentence embeddings as sentence-transformers computes them for this model: the mean of
    /// the last hidden states over the real (unpadded) tokens, L2-normalized.
    ///
    /// # Shapes
    /// - `input_ids`, `mask_pad`: `[batch, seq]` (see [`Bert::forward`]).
    /// - output: `[batch, d_model]`, unit rows.
    pub fn sentence_embeddings(
        &self,
        input_ids: Tensor<2, Int>,
        mask_pad: Tensor<2, Bool>,
    ) -> Tensor<2> {
        let hidden = self.forward(input_ids, mask_pad.clone());
        mean_pool_normalized(hidden, mask_pad)
    }
}

/// Mean over the unpadded positions, then division by the L2 norm (`max(‖x‖, 1e-12)`, as
/// `torch.nn.functional.normalize`).
///
/// # Shapes
/// - `hidden`: `[batch, seq, d]`; `mask_pad`: `[batch, seq]`, `true` at padding.
/// - output: `[batch, d]`.
pub fn mean_pool_normalized(hidden: Tensor<3>, mask_pad: Tensor<2, Bool>) -> Tensor<2> {
    let [batch, seq, d] = hidden.dims();
    let keep = Tensor::<2>::ones([batch, seq], &hidden.device())
        .mask_fill(mask_pad, 0.0)
        .reshape([batch, seq, 1]);
    let sum = (hidden * keep.clone()).sum_dim(1);
    let count = keep.sum_dim(1).clamp_min(1e-9);
    let mean = (sum / count).reshape([batch, d]);
    let norm = (mean.clone() * mean.clone())
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    mean / norm
}

/// Reads the tensors of a Hugging Face BERT safetensors file.
struct Weights<'a> {
    st: SafeTensors<'a>,
    device: Device,
}

impl Weights<'_> {
    /// An F32 tensor with its shape, checked against `want`.
    fn read(&self, name: &str, want: &[usize]) -> Result<TensorData, String> {
        let t = self.st.tensor(name).map_err(|e| format!("{name}: {e}"))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != want {
            return Err(format!(
                "{name}: expected F32 {want:?}, found {:?} {:?}",
                t.dtype(),
                t.shape()
            ));
        }
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(TensorData::new(values, want.to_vec()))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Param<Tensor<1>>, String> {
        let data = self.read(name, &[len])?;
        Ok(Param::from_tensor(Tensor::from_data(data, &self.device)))
    }

    fn embedding(&self, name: &str, rows: usize, d: usize) -> Result<Embedding, String> {
        let data = self.read(name, &[rows, d])?;
        Ok(Embedding {
            weight: Param::from_tensor(Tensor::from_data(data, &self.device)),
        })
    }

    /// `{prefix}.weight` (`[out, in]` in PyTorch) transposed into Burn's `[in, out]`, and
    /// `{prefix}.bias`.
    fn linear(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear, String> {
        let data = self.read(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let weight = Tensor::<2>::from_data(data, &self.device).transpose();
        // Materialize the transpose so the parameter is a plain contiguous tensor.
        let weight = Tensor::<2>::from_data(weight.into_data(), &self.device);
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: Some(self.vector(&format!("{prefix}.bias"), d_out)?),
        })
    }

    fn layer_norm(&self, prefix: &str, d: usize, eps: f64) -> Result<LayerNorm, String> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init(&self.device);
        norm.gamma = self.vector(&format!("{prefix}.weight"), d)?;
        norm.beta = Some(self.vector(&format!("{prefix}.bias"), d)?);
        Ok(norm)
    }
}

/// Loads a BERT encoder from Hugging Face safetensors bytes (`BertModel` names, no `bert.`
/// prefix; the pooler is not read). Every tensor's shape is checked against `config`.
pub fn load_bert_from_bytes(
    bytes: &[u8],
    config: &BertConfig,
    device: &Device,
) -> Result<Bert, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let w = Weights {
        st,
        device: device.clone(),
    };
    let (d, ff) = (config.hidden_size, config.intermediate_size);
    if d % config.num_heads != 0 {
        return Err(format!(
            "hidden_size {d} is not a multiple of num_heads {}",
            config.num_heads
        ));
    }
    let eps = config.layer_norm_eps;
    let mut encoder = TransformerEncoderConfig::new(d, ff, config.num_heads, config.num_layers)
        .with_dropout(0.0)
        .with_norm_first(false)
        .with_layer_norm_eps(eps)
        .init(device);
    for (i, layer) in encoder.layers.iter_mut().enumerate() {
        let p = format!("encoder.layer.{i}");
        layer.mha.query = w.linear(&format!("{p}.attention.self.query"), d, d)?;
        layer.mha.key = w.linear(&format!("{p}.attention.self.key"), d, d)?;
        layer.mha.value = w.linear(&format!("{p}.attention.self.value"), d, d)?;
        layer.mha.output = w.linear(&format!("{p}.attention.output.dense"), d, d)?;
        layer.norm_1 = w.layer_norm(&format!("{p}.attention.output.LayerNorm"), d, eps)?;
        layer.pwff.linear_inner = w.linear(&format!("{p}.intermediate.dense"), d, ff)?;
        layer.pwff.linear_outer = w.linear(&format!("{p}.output.dense"), ff, d)?;
        layer.norm_2 = w.layer_norm(&format!("{p}.output.LayerNorm"), d, eps)?;
    }
    Ok(Bert {
        word_embeddings: w.embedding("embeddings.word_embeddings.weight", config.vocab_size, d)?,
        position_embeddings: w.embedding(
            "embeddings.position_embeddings.weight",
            config.max_positions,
            d,
        )?,
        token_type_embeddings: w.embedding(
            "embeddings.token_type_embeddings.weight",
            config.type_vocab_size,
            d,
        )?,
        embeddings_norm: w.layer_norm("embeddings.LayerNorm", d, eps)?,
        encoder,
    })
}

/// Loads all-MiniLM-L6-v2 from its directory (`model.safetensors`).
pub fn load_minilm(dir: &Path, device: &Device) -> Result<Bert, String> {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    load_bert_from_bytes(&bytes, &BertConfig::all_minilm_l6_v2(), device)
}

/// BERT's uncased WordPiece tokenizer, as Hugging Face `tokenizers` runs it for this model
/// (`BertNormalizer` with lowercasing and accent stripping, `BertPreTokenizer`, `WordPiece`
/// with `##` continuations, `[CLS] … [SEP]`). Special tokens written in the text are not
/// recognised (they are split like any other text).
#[derive(Clone, Debug)]
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    pad: u32,
}

/// Words longer than this many characters become `[UNK]` (the `tokenizers` default).
const MAX_CHARS_PER_WORD: usize = 100;

impl WordPiece {
    /// Reads `vocab.txt` (one token per line; the id is the line number).
    pub fn from_vocab_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_vocab(text.lines().map(str::to_string))
    }

    /// From the tokens in id order.
    pub fn from_vocab(tokens: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let vocab: HashMap<String, u32> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| format!("the vocabulary has no {t}"))
        };
        Ok(Self {
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            pad: id("[PAD]")?,
            vocab,
        })
    }

    /// The id of `[PAD]`.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// `BertNormalizer`: drop NUL, U+FFFD and control characters, whitespace to spaces, spaces
    /// around CJK ideographs, strip accents (NFD, drop non-spacing marks), lowercase.
    pub fn normalize(text: &str) -> String {
        let mut cleaned = String::with_capacity(text.len());
        for c in text.chars() {
            let control = !matches!(c, '\t' | '\n' | '\r') && c.is_other();
            if c == '\0' || c == '\u{fffd}' || control {
                continue;
            }
            if c.is_whitespace() {
                cleaned.push(' ');
            } else if is_cjk(c) {
                cleaned.extend([' ', c, ' ']);
            } else {
                cleaned.push(c);
            }
        }
        cleaned
            .nfd()
            .map(|(c, _)| c)
            .filter(|c| !c.is_mark_nonspacing())
            .flat_map(char::to_lowercase)
            .collect()
    }

    /// `BertPreTokenizer`: split on whitespace (dropped) and around every punctuation
    /// character (kept as a word of its own).
    pub fn pre_tokenize(normalized: &str) -> Vec<&str> {
        let mut words = Vec::new();
        for chunk in normalized.split(char::is_whitespace) {
            let mut start = 0;
            for (i, c) in chunk.char_indices() {
                if c.is_ascii_punctuation() || c.is_punctuation() {
                    if start < i {
                        words.push(&chunk[start..i]);
                    }
                    words.push(&chunk[i..i + c.len_utf8()]);
                    start = i + c.len_utf8();
                }
            }
            if start < chunk.len() {
                words.push(&chunk[start..]);
            }
        }
        words
    }

    /// Greedy longest-match-first WordPiece of one word; a word with no full cover (or longer
    /// than 100 characters) is one `[UNK]`.
    fn word(&self, word: &str, out: &mut Vec<u32>) {
        if word.chars().count() > MAX_CHARS_PER_WORD {
            out.push(self.unk);
            return;
        }
        let first = out.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                let piece = &word[start..end];
                let id = if start > 0 {
                    self.vocab.get(&format!("##{piece}"))
                } else {
                    self.vocab.get(piece)
                };
                if let Some(&id) = id {
                    found = Some(id);
                    break;
                }
                end -= piece.chars().last().map_or(1, char::len_utf8);
            }
            match found {
                Some(id) => out.push(id),
                None => {
                    out.truncate(first);
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
    }

    /// Token ids of `text`: `[CLS] pieces… [SEP]`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normalized = Self::normalize(text);
        let mut ids = vec![self.cls];
        for w in Self::pre_tokenize(&normalized) {
            self.word(w, &mut ids);
        }
        ids.push(self.sep);
        ids
    }
}

/// CJK ideographs (the ranges `BertNormalizer` surrounds with spaces).
fn is_cjk(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// Token ids `[batch, seq]` and padding mask `[batch, seq]` (`true` at padding): the inputs of
/// [`Bert::forward`].
pub type TokenBatch = (Tensor<2, Int>, Tensor<2, Bool>);

/// Token ids and padding mask of a batch, padded to a fixed length (graphs have static
/// shapes).
///
/// # Shapes
/// - `ids`: `[batch, seq]`; `mask_pad`: `[batch, seq]`, `true` at padding.
pub fn pad_batch(
    sequences: &[Vec<u32>],
    seq: usize,
    pad_id: u32,
    device: &Device,
) -> Result<TokenBatch, String> {
    let batch = sequences.len();
    let mut ids = Vec::with_capacity(batch * seq);
    let mut pad = Vec::with_capacity(batch * seq);
    for (i, s) in sequences.iter().enumerate() {
        if s.len() > seq {
            return Err(format!(
                "sequence {i} has {} tokens, more than {seq}",
                s.len()
            ));
        }
        ids.extend(s.iter().map(|&t| t as i64));
        ids.extend(std::iter::repeat_n(pad_id as i64, seq - s.len()));
        pad.extend(std::iter::repeat_n(false, s.len()));
        pad.extend(std::iter::repeat_n(true, seq - s.len()));
    }
    Ok((
        Tensor::from_data(TensorData::new(ids, [batch, seq]), device),
        Tensor::from_data(TensorData::new(pad, [batch, seq]), device),
    ))
}

/// Sentences of English prose: paragraphs (blank-line separated) joined into lines, split
/// after `.`, `!` or `?` (and any closing quotes) followed by a space, except after common
/// abbreviations (`Mr.`, `Mrs.`, …). Sentences of fewer than `min_words` words are dropped
/// (headings, `CHAPTER I`).
pub fn split_sentences(text: &str, min_words: usize) -> Vec<String> {
    const ABBREVIATIONS: [&str; 8] = [
        "Mr.", "Mrs.", "Dr.", "St.", "Messrs.", "Esq.", "Col.", "Capt.",
    ];
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let para = para.split_whitespace().collect::<Vec<_>>().join(" ");
        let chars: Vec<(usize, char)> = para.char_indices().collect();
        let mut start = 0;
        let mut i = 0;
        while i < chars.len() {
            let (_, c) = chars[i];
            if matches!(c, '.' | '!' | '?') {
                let mut j = i + 1;
                while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | '!' | '?' | '.') {
                    j += 1;
                }
                let at_space = j < chars.len() && chars[j].1 == ' ';
                let end = if j < chars.len() {
                    chars[j].0
                } else {
                    para.len()
                };
                let candidate = para[start..end].trim();
                let abbreviation = ABBREVIATIONS.iter().any(|a| candidate.ends_with(a));
                if at_space && !abbreviation {
                    push_sentence(&mut out, candidate, min_words);
                    start = end;
                }
                i = j;
            } else {
                i += 1;
            }
        }
        push_sentence(&mut out, para[start..].trim(), min_words);
    }
    out
}

fn push_sentence(out: &mut Vec<String>, s: &str, min_words: usize) {
    if s.split_whitespace().count() >= min_words {
        out.push(s.to_string());
    }
}

/// `count` sentences of `text` (see [`split_sentences`]) whose encodings have
/// `min_tokens..=max_tokens` tokens, evenly spaced through the text, encoded. An error when
/// the text has fewer.
pub fn pick_sentences(
    tok: &WordPiece,
    text: &str,
    count: usize,
    min_tokens: usize,
    max_tokens: usize,
) -> Result<Vec<(String, Vec<u32>)>, String> {
    let fitting: Vec<(String, Vec<u32>)> = split_sentences(text, 3)
        .into_iter()
        .map(|s| {
            let ids = tok.encode(&s);
            (s, ids)
        })
        .filter(|(_, ids)| (min_tokens..=max_tokens).contains(&ids.len()))
        .collect();
    if fitting.len() < count {
        return Err(format!(
            "{} sentences of {min_tokens}..={max_tokens} tokens, {count} wanted",
            fitting.len()
        ));
    }
    Ok((0..count)
        .map(|i| fitting[i * fitting.len() / count].clone())
        .collect())
}

/// Consecutive batches of `batch` sequences, each padded to `seq` (a last partial batch is
/// dropped: graphs have static shapes).
pub fn batches(
    sequences: &[Vec<u32>],
    batch: usize,
    seq: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Vec<TokenBatch>, String> {
    sequences
        .chunks_exact(batch)
        .map(|c| pad_batch(c, seq, pad_id, device))
        .collect()
}

/// Cosine similarity of each row of `a` with the same row of `b` (both `[rows, d]`,
/// row-major), in f64.
pub fn row_cosines(a: &[f32], b: &[f32], d: usize) -> Vec<f64> {
    a.chunks_exact(d)
        .zip(b.chunks_exact(d))
        .map(|(x, y)| {
            let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
            for (&p, &q) in x.iter().zip(y) {
                let (p, q) = (p as f64, q as f64);
                xy += p * q;
                xx += p * p;
                yy += q * q;
            }
            xy / (xx.sqrt() * yy.sqrt()).max(1e-30)
        })
        .collect()
}
