//! Per-tensor ggml types of a llama GGUF, chosen the way `llama-quantize` chooses them.
//!
//! The rules are those of llama.cpp's `llama_tensor_get_type` (llama-quant.cpp, as vendored in
//! llama-cpp-python 0.3.36) for a dense `llama` model, restated for the mixes offered here:
//! a default type per mix; the output projection (and the token embedding when the output is
//! tied to it) gets Q6_K, or Q8_0 when its rows are not a multiple of the default type's block
//! or the mix is Q8_0; `attn_v`, `ffn_down` and `attn_output` get more bits in some layers
//! depending on the mix; finally a type whose block does not divide `ne[0]` falls back
//! (Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, then F16 if still not divisible).
//! Tensors with fewer than two dims (norms, biases) are F32.

use std::fmt;
use std::str::FromStr;

use burn_quant_export::gguf::GgmlType;

use super::{LlamaError, LlamaHParams, LlamaTensorKind, LlamaTensorName};

/// A file-wide quantization recipe (llama-quantize's `ftype`), or one type for every matrix.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LlamaMix {
    /// Every 2-D tensor as this type (llama-quantize `--pure`), with the shape fallback.
    Uniform(GgmlType),
    /// All 2-D tensors F32.
    F32,
    /// All 2-D tensors F16.
    F16,
    /// All 2-D tensors BF16.
    BF16,
    /// Q8_0.
    Q8_0,
    /// Q4_0 (output/tied embedding Q6_K; ffn_down of the first eighth Q4_1 with an imatrix).
    Q4_0,
    /// Q4_1 (output/tied embedding Q6_K).
    Q4_1,
    /// Q5_0 (output/tied embedding Q6_K; ffn_down of the first eighth Q5_1 with an imatrix).
    Q5_0,
    /// Q5_1 (output/tied embedding Q6_K).
    Q5_1,
    /// Q2_K: attn_v Q3_K (Q4_K when n_gqa ≥ 4), ffn_down and attn_output Q3_K.
    Q2_K,
    /// Q2_K_S: attn_v Q4_K when n_gqa ≥ 4, ffn_down of the first eighth Q4_K.
    Q2_K_S,
    /// Q3_K_S: Q3_K everywhere.
    Q3_K_S,
    /// Q3_K_M: attn_v Q5_K in the first two layers else Q4_K, ffn_down Q5_K in the first
    /// sixteenth else Q4_K, attn_output Q4_K.
    Q3_K_M,
    /// Q3_K_L: attn_v, ffn_down and attn_output Q5_K.
    Q3_K_L,
    /// Q4_K_S: attn_v of the first four layers and ffn_down of the first eighth Q5_K.
    Q4_K_S,
    /// Q4_K_M: attn_v and ffn_down Q6_K on the "more bits" layers (first eighth, last eighth,
    /// every third between).
    Q4_K_M,
    /// Q5_K_S: Q5_K everywhere.
    Q5_K_S,
    /// Q5_K_M: as Q4_K_M with Q5_K as the default.
    Q5_K_M,
    /// Q6_K.
    Q6_K,
    /// IQ4_NL: attn_v Q5_K when n_gqa ≥ 4; ffn_down of the first eighth Q5_K without imatrix.
    IQ4_NL,
}

/// Names accepted by [`LlamaMix::from_str`] (case-insensitive) and written by `Display`.
const NAMED: &[(LlamaMix, &str, u32)] = &[
    (LlamaMix::F32, "F32", 0),
    (LlamaMix::F16, "F16", 1),
    (LlamaMix::Q4_0, "Q4_0", 2),
    (LlamaMix::Q4_1, "Q4_1", 3),
    (LlamaMix::Q8_0, "Q8_0", 7),
    (LlamaMix::Q5_0, "Q5_0", 8),
    (LlamaMix::Q5_1, "Q5_1", 9),
    (LlamaMix::Q2_K, "Q2_K", 10),
    (LlamaMix::Q3_K_S, "Q3_K_S", 11),
    (LlamaMix::Q3_K_M, "Q3_K_M", 12),
    (LlamaMix::Q3_K_L, "Q3_K_L", 13),
    (LlamaMix::Q4_K_S, "Q4_K_S", 14),
    (LlamaMix::Q4_K_M, "Q4_K_M", 15),
    (LlamaMix::Q5_K_S, "Q5_K_S", 16),
    (LlamaMix::Q5_K_M, "Q5_K_M", 17),
    (LlamaMix::Q6_K, "Q6_K", 18),
    (LlamaMix::Q2_K_S, "Q2_K_S", 21),
    (LlamaMix::IQ4_NL, "IQ4_NL", 25),
    (LlamaMix::BF16, "BF16", 32),
];

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third layer
/// in between.
pub(crate) fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama-quantize's replacement for a type whose block size does not divide `ne0`.
pub(crate) fn shape_fallback(ty: GgmlType, ne0: u64) -> GgmlType {
    use GgmlType as T;
    if ne0.is_multiple_of(ty.block_size() as u64) {
        return ty;
    }
    let fallback = match ty {
        T::IQ1_S
        | T::IQ1_M
        | T::IQ2_XXS
        | T::IQ2_XS
        | T::IQ2_S
        | T::IQ3_XXS
        | T::IQ3_S
        | T::IQ4_XS => T::IQ4_NL,
        T::Q2_0 | T::Q2_K | T::Q3_K | T::TQ1_0 | T::TQ2_0 => T::Q4_0,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        other => other,
    };
    if ne0.is_multiple_of(fallback.block_size() as u64) {
        fallback
    } else {
        T::F16
    }
}

impl LlamaMix {
    /// `general.file_type`: llama.cpp's `llama_ftype` for a named mix; for `Uniform` the
    /// "mostly X" value of its type (the K-types map to their _S mix), else 1024 (guessed).
    pub fn file_type(&self) -> u32 {
        use GgmlType as T;
        match self {
            LlamaMix::Uniform(ty) => match ty {
                T::F32 => 0,
                T::F16 => 1,
                T::Q4_0 => 2,
                T::Q4_1 => 3,
                T::Q8_0 => 7,
                T::Q5_0 => 8,
                T::Q5_1 => 9,
                T::Q2_K => 10,
                T::Q3_K => 11,
                T::Q4_K => 14,
                T::Q5_K => 16,
                T::Q6_K => 18,
                T::IQ4_NL => 25,
                T::IQ4_XS => 30,
                T::BF16 => 32,
                T::MXFP4 => 38,
                _ => 1024,
            },
            named => NAMED
                .iter()
                .find(|(m, _, _)| m == named)
                .map(|(_, _, ft)| *ft)
                .expect("every named mix is in NAMED"),
        }
    }

    /// The type of ordinary 2-D tensors before per-tensor rules.
    pub fn default_type(&self) -> GgmlType {
        use GgmlType as T;
        match self {
            LlamaMix::Uniform(ty) => *ty,
            LlamaMix::F32 => T::F32,
            LlamaMix::F16 => T::F16,
            LlamaMix::BF16 => T::BF16,
            LlamaMix::Q8_0 => T::Q8_0,
            LlamaMix::Q4_0 => T::Q4_0,
            LlamaMix::Q4_1 => T::Q4_1,
            LlamaMix::Q5_0 => T::Q5_0,
            LlamaMix::Q5_1 => T::Q5_1,
            LlamaMix::Q2_K | LlamaMix::Q2_K_S => T::Q2_K,
            LlamaMix::Q3_K_S | LlamaMix::Q3_K_M | LlamaMix::Q3_K_L => T::Q3_K,
            LlamaMix::Q4_K_S | LlamaMix::Q4_K_M => T::Q4_K,
            LlamaMix::Q5_K_S | LlamaMix::Q5_K_M => T::Q5_K,
            LlamaMix::Q6_K => T::Q6_K,
            LlamaMix::IQ4_NL => T::IQ4_NL,
        }
    }

    /// The ggml type of one tensor: `dims` in ggml order, `has_imatrix` whether an importance
    /// matrix is used (two mixes change `ffn_down` with one).
    pub fn tensor_type(
        &self,
        name: &LlamaTensorName,
        dims: &[u64],
        hp: &LlamaHParams,
        has_imatrix: bool,
    ) -> GgmlType {
        use GgmlType as T;
        use LlamaTensorKind as K;
        if dims.len() < 2 || name.bias {
            return T::F32;
        }
        let ne0 = dims[0];
        let default = self.default_type();
        if !default.is_quantized() {
            return default;
        }
        if let LlamaMix::Uniform(ty) = self {
            return shape_fallback(*ty, ne0);
        }
        let n_layer = hp.num_hidden_layers;
        let layer = name.layer.unwrap_or(0);
        let n_gqa = hp.n_gqa();
        // llama-quantize treats an 80-block GQA llama as "70B" and gives its attn_v more bits.
        let is_70b = n_layer == 80 && hp.num_attention_heads != hp.num_key_value_heads;
        let tied = hp.tie_word_embeddings;
        let mut ty = default;
        match name.kind {
            K::Output | K::TokenEmbd if name.kind == K::Output || tied => {
                ty = if !ne0.is_multiple_of(default.block_size() as u64) {
                    T::Q8_0
                } else if default != T::Q8_0 {
                    T::Q6_K
                } else {
                    T::Q8_0
                };
            }
            K::AttnV => {
                ty = match self {
                    LlamaMix::Q2_K if n_gqa >= 4 => T::Q4_K,
                    LlamaMix::Q2_K => T::Q3_K,
                    LlamaMix::Q2_K_S if n_gqa >= 4 => T::Q4_K,
                    LlamaMix::Q3_K_M if layer < 2 => T::Q5_K,
                    LlamaMix::Q3_K_M => T::Q4_K,
                    LlamaMix::Q3_K_L => T::Q5_K,
                    LlamaMix::IQ4_NL if n_gqa >= 4 => T::Q5_K,
                    LlamaMix::Q4_K_M | LlamaMix::Q5_K_M if use_more_bits(layer, n_layer) => T::Q6_K,
                    LlamaMix::Q4_K_S if layer < 4 => T::Q5_K,
                    _ => ty,
                };
                if is_70b && matches!(ty, T::Q3_K | T::Q4_K) {
                    ty = T::Q5_K;
                }
            }
            K::FfnDown => {
                ty = match self {
                    LlamaMix::Q2_K => T::Q3_K,
                    LlamaMix::Q2_K_S if layer < n_layer / 8 => T::Q4_K,
                    LlamaMix::Q3_K_M if layer < n_layer / 16 => T::Q5_K,
                    LlamaMix::Q3_K_M => T::Q4_K,
                    LlamaMix::Q3_K_L => T::Q5_K,
                    LlamaMix::Q4_K_M | LlamaMix::Q5_K_M if use_more_bits(layer, n_layer) => T::Q6_K,
                    LlamaMix::IQ4_NL if layer < n_layer / 8 && !has_imatrix => T::Q5_K,
                    LlamaMix::Q4_K_S if layer < n_layer / 8 => T::Q5_K,
                    LlamaMix::Q4_0 if has_imatrix && layer < n_layer / 8 => T::Q4_1,
                    LlamaMix::Q5_0 if has_imatrix && layer < n_layer / 8 => T::Q5_1,
                    _ => ty,
                };
            }
            K::AttnOutput => {
                ty = match self {
                    LlamaMix::Q2_K => T::Q3_K,
                    LlamaMix::Q3_K_M => T::Q4_K,
                    LlamaMix::Q3_K_L => T::Q5_K,
                    _ => ty,
                };
            }
            _ => {}
        }
        shape_fallback(ty, ne0)
    }
}

impl fmt::Display for LlamaMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LlamaMix::Uniform(ty) => write!(f, "uniform-{ty:?}"),
            named => {
                let (_, s, _) = NAMED
                    .iter()
                    .find(|(m, _, _)| m == named)
                    .expect("every named mix is in NAMED");
                f.write_str(s)
            }
        }
    }
}

impl FromStr for LlamaMix {
    type Err = LlamaError;

    /// Parses a llama-quantize mix name ("Q4_K_M", "q8_0", …) or `uniform-<ggml type>`
    /// (e.g. "uniform-Q4_K").
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((mix, _, _)) = NAMED.iter().find(|(_, n, _)| n.eq_ignore_ascii_case(s)) {
            return Ok(*mix);
        }
        if let Some(ty) = s
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("uniform-"))
            .and_then(|_| parse_ggml_type(&s[8..]))
        {
            return Ok(LlamaMix::Uniform(ty));
        }
        Err(LlamaError::UnknownMix(s.to_string()))
    }
}

/// A ggml type by its name as printed by `{:?}` ("Q4_K", "IQ4_NL", …), case-insensitive.
fn parse_ggml_type(s: &str) -> Option<GgmlType> {
    (0..64u32)
        .filter_map(GgmlType::from_id)
        .find(|ty| format!("{ty:?}").eq_ignore_ascii_case(s))
}
