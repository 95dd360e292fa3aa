//! Tensor names of a Llama model (Hugging Face ↔ GGUF) and the q/k RoPE row permutation.

use super::{LlamaError, LlamaHParams};

/// Which weight of a Llama model a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LlamaTensorKind {
    /// Token embedding, HF `[vocab, hidden]`.
    TokenEmbd,
    /// Final RMSNorm weight `[hidden]`.
    OutputNorm,
    /// Output projection (lm_head) `[vocab, hidden]`; absent when embeddings are tied.
    Output,
    /// Block input RMSNorm `[hidden]`.
    AttnNorm,
    /// Query projection `[heads·head_dim, hidden]` (rows permuted for llama.cpp's RoPE).
    AttnQ,
    /// Key projection `[kv_heads·head_dim, hidden]` (rows permuted for llama.cpp's RoPE).
    AttnK,
    /// Value projection `[kv_heads·head_dim, hidden]`.
    AttnV,
    /// Attention output projection `[hidden, heads·head_dim]`.
    AttnOutput,
    /// Post-attention RMSNorm `[hidden]`.
    FfnNorm,
    /// SwiGLU gate projection `[ff, hidden]`.
    FfnGate,
    /// SwiGLU up projection `[ff, hidden]`.
    FfnUp,
    /// Down projection `[hidden, ff]`.
    FfnDown,
}

/// (kind, Hugging Face suffix, GGUF suffix, may have a bias) for the per-block tensors.
const BLOCK: &[(LlamaTensorKind, &str, &str, bool)] = &[
    (
        LlamaTensorKind::AttnNorm,
        "input_layernorm",
        "attn_norm",
        false,
    ),
    (LlamaTensorKind::AttnQ, "self_attn.q_proj", "attn_q", true),
    (LlamaTensorKind::AttnK, "self_attn.k_proj", "attn_k", true),
    (LlamaTensorKind::AttnV, "self_attn.v_proj", "attn_v", true),
    (
        LlamaTensorKind::AttnOutput,
        "self_attn.o_proj",
        "attn_output",
        true,
    ),
    (
        LlamaTensorKind::FfnNorm,
        "post_attention_layernorm",
        "ffn_norm",
        false,
    ),
    (LlamaTensorKind::FfnGate, "mlp.gate_proj", "ffn_gate", true),
    (LlamaTensorKind::FfnUp, "mlp.up_proj", "ffn_up", true),
    (LlamaTensorKind::FfnDown, "mlp.down_proj", "ffn_down", true),
];

/// (kind, Hugging Face base name, GGUF base name) for the model-level tensors.
const GLOBAL: &[(LlamaTensorKind, &str, &str)] = &[
    (
        LlamaTensorKind::TokenEmbd,
        "model.embed_tokens",
        "token_embd",
    ),
    (LlamaTensorKind::OutputNorm, "model.norm", "output_norm"),
    (LlamaTensorKind::Output, "lm_head", "output"),
];

/// A parsed Llama tensor name: kind, block index and weight/bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LlamaTensorName {
    /// Which weight.
    pub kind: LlamaTensorKind,
    /// Block index for per-block tensors, `None` for model-level ones.
    pub layer: Option<usize>,
    /// Whether this is the `.bias` rather than the `.weight`.
    pub bias: bool,
}

fn split_suffix(name: &str) -> Option<(&str, bool)> {
    if let Some(base) = name.strip_suffix(".weight") {
        Some((base, false))
    } else {
        name.strip_suffix(".bias").map(|base| (base, true))
    }
}

/// Parses "<prefix><N>.<rest>" with a decimal N (no sign, no leading '+').
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (num, rest) = rest.split_once('.')?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((num.parse().ok()?, rest))
}

impl LlamaTensorName {
    /// Parses a Hugging Face name (`model.layers.3.mlp.down_proj.weight`, `lm_head.weight`, …).
    pub fn parse_hf(name: &str) -> Result<Self, LlamaError> {
        Self::parse(name, true)
    }

    /// Parses a GGUF name (`blk.3.ffn_down.weight`, `output.weight`, …).
    pub fn parse_gguf(name: &str) -> Result<Self, LlamaError> {
        Self::parse(name, false)
    }

    /// Like [`Self::parse_hf`], but `Ok(None)` for tensors a GGUF file does not carry: the
    /// `rotary_emb.inv_freq` buffers of old checkpoints (llama.cpp recomputes them).
    pub fn parse_hf_skippable(name: &str) -> Result<Option<Self>, LlamaError> {
        if name.ends_with(".rotary_emb.inv_freq") {
            return Ok(None);
        }
        Self::parse_hf(name).map(Some)
    }

    fn parse(name: &str, hf: bool) -> Result<Self, LlamaError> {
        let unknown = || LlamaError::UnknownTensor { name: name.into() };
        let (base, bias) = split_suffix(name).ok_or_else(unknown)?;
        for &(kind, hf_base, gguf_base) in GLOBAL {
            if base == if hf { hf_base } else { gguf_base } {
                if bias {
                    return Err(unknown());
                }
                return Ok(Self {
                    kind,
                    layer: None,
                    bias,
                });
            }
        }
        let prefix = if hf { "model.layers." } else { "blk." };
        let (layer, rest) = split_layer(base, prefix).ok_or_else(unknown)?;
        let &(kind, _, _, may_bias) = BLOCK
            .iter()
            .find(|(_, h, g, _)| rest == if hf { *h } else { *g })
            .ok_or_else(unknown)?;
        if bias && !may_bias {
            return Err(unknown());
        }
        Ok(Self {
            kind,
            layer: Some(layer),
            bias,
        })
    }

    fn suffix(&self) -> &'static str {
        if self.bias { "bias" } else { "weight" }
    }

    /// The Hugging Face name.
    pub fn hf_name(&self) -> String {
        match self.layer {
            None => {
                let (_, base, _) = GLOBAL
                    .iter()
                    .find(|(k, _, _)| *k == self.kind)
                    .expect("model-level kinds are in GLOBAL");
                format!("{base}.{}", self.suffix())
            }
            Some(l) => {
                let (_, base, _, _) = BLOCK
                    .iter()
                    .find(|(k, _, _, _)| *k == self.kind)
                    .expect("block kinds are in BLOCK");
                format!("model.layers.{l}.{base}.{}", self.suffix())
            }
        }
    }

    /// The GGUF name.
    pub fn gguf_name(&self) -> String {
        match self.layer {
            None => {
                let (_, _, base) = GLOBAL
                    .iter()
                    .find(|(k, _, _)| *k == self.kind)
                    .expect("model-level kinds are in GLOBAL");
                format!("{base}.{}", self.suffix())
            }
            Some(l) => {
                let (_, _, base, _) = BLOCK
                    .iter()
                    .find(|(k, _, _, _)| *k == self.kind)
                    .expect("block kinds are in BLOCK");
                format!("blk.{l}.{base}.{}", self.suffix())
            }
        }
    }

    /// The row-major (Hugging Face) shape the hyper-parameters give this tensor; an error for a
    /// block index beyond `num_hidden_layers`.
    pub fn hf_shape(&self, hp: &LlamaHParams) -> Result<Vec<usize>, LlamaError> {
        if let Some(l) = self.layer
            && l >= hp.num_hidden_layers
        {
            return Err(LlamaError::UnknownTensor {
                name: format!(
                    "{} (the model has {} blocks)",
                    self.hf_name(),
                    hp.num_hidden_layers
                ),
            });
        }
        use LlamaTensorKind::*;
        let (h, q, kv, ff) = (
            hp.hidden_size,
            hp.num_attention_heads * hp.head_dim,
            hp.num_key_value_heads * hp.head_dim,
            hp.intermediate_size,
        );
        let [out, inp] = match self.kind {
            TokenEmbd | Output => [hp.vocab_size, h],
            OutputNorm | AttnNorm | FfnNorm => return Ok(vec![h]),
            AttnQ => [q, h],
            AttnK | AttnV => [kv, h],
            AttnOutput => [h, q],
            FfnGate | FfnUp => [ff, h],
            FfnDown => [h, ff],
        };
        Ok(if self.bias { vec![out] } else { vec![out, inp] })
    }

    /// Number of heads whose rows the RoPE permutation regroups: query heads for `attn_q`,
    /// KV heads for `attn_k` (weight and bias alike); `None` for every other tensor.
    pub fn rope_heads(&self, hp: &LlamaHParams) -> Option<usize> {
        match self.kind {
            LlamaTensorKind::AttnQ => Some(hp.num_attention_heads),
            LlamaTensorKind::AttnK => Some(hp.num_key_value_heads),
            _ => None,
        }
    }

    /// The weights a complete model has (no biases; no `output.weight` when tied).
    pub fn required(hp: &LlamaHParams) -> Vec<Self> {
        let global = |kind| Self {
            kind,
            layer: None,
            bias: false,
        };
        let mut v = vec![
            global(LlamaTensorKind::TokenEmbd),
            global(LlamaTensorKind::OutputNorm),
        ];
        if !hp.tie_word_embeddings {
            v.push(global(LlamaTensorKind::Output));
        }
        for l in 0..hp.num_hidden_layers {
            for &(kind, _, _, _) in BLOCK {
                v.push(Self {
                    kind,
                    layer: Some(l),
                    bias: false,
                });
            }
        }
        v
    }

    /// Canonical file order: model-level tensors first, then blocks in order, each block's
    /// tensors in the order of llama.cpp's converter, weight before bias.
    pub(crate) fn order_key(&self) -> (usize, usize, LlamaTensorKind, bool) {
        match self.layer {
            None => (0, 0, self.kind, self.bias),
            Some(l) => (1, l, self.kind, self.bias),
        }
    }
}

/// Moves whole rows (`cols` elements each) between the two RoPE layouts: `to_llama` maps
/// Hugging Face → llama.cpp (output row `2i + j` of a head ← input row `j·d/2 + i`), otherwise
/// the inverse. Generic so that encoded ggml rows (bytes) move the same way as f32 rows.
pub(crate) fn reorder_rows<T: Copy + Default>(
    data: &[T],
    rows: usize,
    cols: usize,
    heads: usize,
    to_llama: bool,
) -> Result<Vec<T>, LlamaError> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(LlamaError::BadHParams {
            why: format!("{rows} rows cannot be split into {heads} heads of even size"),
        });
    }
    if data.len() != rows * cols {
        return Err(LlamaError::DataLength {
            name: "q/k projection".into(),
            shape: vec![rows, cols],
            actual: data.len(),
        });
    }
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![T::default(); data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let llama = h * d + 2 * i + j;
                let hf = h * d + j * half + i;
                let (dst, src) = if to_llama { (llama, hf) } else { (hf, llama) };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// Hugging Face → llama.cpp row order of a q/k projection (`[rows, cols]` row-major).
///
/// Hugging Face's RoPE rotates the two halves of each head (dims i and i + d/2 form a pair);
/// llama.cpp's `llama` architecture rotates adjacent dims (2i, 2i + 1). Viewing each head's rows
/// as (2, d/2) and transposing to (d/2, 2) makes the pairs adjacent: output row `2i + j` of a
/// head is input row `j·d/2 + i`. `heads` = query heads for Q, KV heads for K. A bias is the
/// `cols = 1` case.
pub fn permute_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Result<Vec<f32>, LlamaError> {
    reorder_rows(data, rows, cols, heads, true)
}

/// llama.cpp → Hugging Face row order: the inverse of [`permute_qk_rows`].
pub fn unpermute_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Result<Vec<f32>, LlamaError> {
    reorder_rows(data, rows, cols, heads, false)
}
