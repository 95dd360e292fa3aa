//! [`LlamaModel`]: embedding, decoder blocks, final norm and LM head on burn-quant layers.

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_quant_nn::{QuantEmbedding, QuantLinear};

use crate::block::{BlockCache, DecoderBlock, LinearSlot, LlamaAttention, LlamaMlp};
use crate::error::{LlmError, Result};
use crate::gguf::HfTensor;
use crate::hparams::LlamaHParams;
use crate::norm::RmsNorm;
use crate::rng::SplitMix64;
use crate::rope::Rope;

/// A Llama-family causal language model whose projections are [`QuantLinear`]s (float while
/// their weight quantizer is `None`).
///
/// The structure is explicit so that a PTQ pipeline can run it block by block:
/// [`embed`](Self::embed) → [`block`](Self::block)`(i).forward(x, &rope, input_hook)` for each
/// block → [`final_norm_and_head`](Self::final_norm_and_head). Field names follow Hugging
/// Face's `LlamaForCausalLM` (`model.embed_tokens`, `model.layers.N`, `model.norm`, `lm_head`).
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embedding, `[vocab, d_model]`.
    pub embed_tokens: QuantEmbedding,
    /// The decoder blocks.
    pub layers: Vec<DecoderBlock>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output projection, `[d_model, vocab]`. With tied embeddings it starts as the transposed
    /// embedding table (a copy, so that the head can be quantized while lookups stay float).
    pub lm_head: QuantLinear,
    /// The hyper-parameters the model was built from.
    #[module(skip)]
    pub hparams: LlamaHParams,
}

/// Per-block key/value caches of a whole model, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// One cache per block.
    pub blocks: Vec<BlockCache>,
}

impl KvCache {
    /// An empty cache for a model of `num_blocks` blocks.
    pub fn new(num_blocks: usize) -> Self {
        Self {
            blocks: vec![BlockCache::default(); num_blocks],
        }
    }

    /// Positions cached (that of the first block; all blocks advance together).
    pub fn len(&self) -> usize {
        self.blocks.first().map_or(0, BlockCache::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LlamaModel {
    /// Builds a model from tensors in Hugging Face naming and orientation (row-major, a Linear
    /// weight `[out, in]`), fetched by name from `source`, which answers `Ok(None)` for a
    /// tensor it does not hold. Biases (`*.bias` of the projections) are loaded when present.
    /// `lm_head.weight` is read only without tied embeddings.
    pub fn from_hf_tensors(
        hparams: &LlamaHParams,
        source: &mut dyn FnMut(&str) -> Result<Option<HfTensor>>,
        device: &Device,
    ) -> Result<Self> {
        hparams.validate()?;
        let hp = hparams;
        let d = hp.hidden_size;
        let mut need = |name: String, shape: &[usize]| -> Result<HfTensor> {
            let t = source(&name)?.ok_or(LlmError::MissingTensor { name: name.clone() })?;
            check_shape(&t, shape)?;
            Ok(t)
        };
        let embed = need("model.embed_tokens.weight".into(), &[hp.vocab_size, d])?;
        let head_weight = if hp.tie_word_embeddings {
            transpose(&embed.data, hp.vocab_size, d)
        } else {
            transpose(
                &need("lm_head.weight".into(), &[hp.vocab_size, d])?.data,
                hp.vocab_size,
                d,
            )
        };
        let embed_tokens = QuantEmbedding {
            weight: Param::from_tensor(tensor2(embed.data, [hp.vocab_size, d], device)),
            weight_quant: None,
            output_quant: None,
        };
        let lm_head = float_linear(tensor2(head_weight, [d, hp.vocab_size], device), None);
        let mut layers = Vec::with_capacity(hp.num_hidden_layers);
        for l in 0..hp.num_hidden_layers {
            layers.push(decoder_block_from_hf(hp, l, source, device)?);
        }
        let norm_w = source("model.norm.weight")?.ok_or(LlmError::MissingTensor {
            name: "model.norm.weight".into(),
        })?;
        check_shape(&norm_w, &[d])?;
        let norm = RmsNorm::new(
            Tensor::from_data(TensorData::new(norm_w.data, [d]), device),
            hp.rms_norm_eps as f64,
        );
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            hparams: hp.clone(),
        })
    }

    /// A model with reproducible pseudo-random weights (uniform, standard deviation 0.02 for
    /// projections and embeddings, norm scales near 1), for tests and benchmarks of code that
    /// runs a model; `seed` fixes every value.
    pub fn random(hparams: &LlamaHParams, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = SplitMix64::new(seed);
        let mut source = |name: &str| -> Result<Option<HfTensor>> {
            let Some(shape) = hf_shape(hparams, name) else {
                return Ok(None);
            };
            let n: usize = shape.iter().product();
            let norm = shape.len() == 1;
            // Uniform on [-a, a] has standard deviation a/√3.
            let a = 0.02 * 3f32.sqrt();
            let data = (0..n)
                .map(|_| {
                    let u = rng.unit_f32() * 2.0 - 1.0;
                    if norm { 1.0 + 0.1 * u } else { a * u }
                })
                .collect();
            Ok(Some(HfTensor::new(name, shape, data)))
        };
        Self::from_hf_tensors(hparams, &mut source, device)
    }

    /// The hyper-parameters.
    pub fn hparams(&self) -> &LlamaHParams {
        &self.hparams
    }

    /// Number of decoder blocks.
    pub fn num_blocks(&self) -> usize {
        self.layers.len()
    }

    /// Block `index`.
    pub fn block(&self, index: usize) -> Result<&DecoderBlock> {
        let count = self.layers.len();
        self.layers
            .get(index)
            .ok_or(LlmError::NoSuchBlock { index, count })
    }

    /// Block `index`, mutably (to replace its weights or quantizers).
    pub fn block_mut(&mut self, index: usize) -> Result<&mut DecoderBlock> {
        let count = self.layers.len();
        self.layers
            .get_mut(index)
            .ok_or(LlmError::NoSuchBlock { index, count })
    }

    /// RoPE tables for positions `0..len` with this model's head width, θ and scaling.
    pub fn rope(&self, len: usize) -> Result<Rope> {
        self.rope_on(len, &self.norm.weight.device())
    }

    /// [`LlamaModel::rope`] with its tables on `device` (e.g. the autodiff twin of the
    /// model's device, for a block trained there).
    pub fn rope_on(&self, len: usize, device: &Device) -> Result<Rope> {
        let hp = &self.hparams;
        Rope::new(hp.head_dim, hp.rope_theta, hp.rope_scaling, len, device)
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.norm.weight.device()
    }

    /// A `[batch, seq]` token tensor from equally long id rows, checked against the
    /// vocabulary on the host.
    pub fn tokens(&self, rows: &[&[u32]]) -> Result<Tensor<2, Int>> {
        let seq = rows.first().map_or(0, |r| r.len());
        if rows.is_empty() || seq == 0 {
            return Err(LlmError::invalid(
                "tokens",
                format!("{} rows of {seq}", rows.len()),
                "need at least one row of at least one token",
            ));
        }
        let vocab = self.hparams.vocab_size;
        let mut flat = Vec::with_capacity(rows.len() * seq);
        for r in rows {
            if r.len() != seq {
                return Err(LlmError::invalid(
                    "tokens",
                    format!("rows of {seq} and {} tokens", r.len()),
                    "all rows must have the same length",
                ));
            }
            for &id in *r {
                if id as usize >= vocab {
                    return Err(LlmError::TokenOutOfRange {
                        id: id as i64,
                        vocab,
                    });
                }
                flat.push(id as i64);
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(flat, [rows.len(), seq]),
            &self.device(),
        ))
    }

    /// Embeds `tokens` (`[batch, seq]`): `[batch, seq, d_model]`. Ids outside the vocabulary
    /// are an error.
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Result<Tensor<3>> {
        let [b, s] = tokens.dims();
        if b * s > 0 {
            let vocab = self.hparams.vocab_size;
            let min = tokens.clone().min().into_scalar::<i64>();
            let max = tokens.clone().max().into_scalar::<i64>();
            if min < 0 || max >= vocab as i64 {
                let id = if min < 0 { min } else { max };
                return Err(LlmError::TokenOutOfRange { id, vocab });
            }
        }
        Ok(self.embed_tokens.try_forward(tokens)?)
    }

    /// Final norm and LM head: hidden states `[batch, seq, d_model]` → logits `[batch, seq,
    /// vocab]`. Apply it to the positions whose logits are needed only.
    pub fn final_norm_and_head(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        let d = self.hparams.hidden_size;
        let dims = x.dims();
        if dims[2] != d {
            return Err(LlmError::BadInput {
                what: "LlamaModel::final_norm_and_head".into(),
                expected: format!("[batch, seq, {d}]"),
                actual: dims.to_vec(),
            });
        }
        Ok(self.lm_head.try_forward(self.norm.forward(x))?)
    }

    /// Hidden states after the last block (before the final norm) for `tokens` at positions
    /// `0..seq`.
    pub fn hidden(&self, tokens: Tensor<2, Int>) -> Result<Tensor<3>> {
        let [_, s] = tokens.dims();
        let rope = self.rope(s)?;
        let mut x = self.embed(tokens)?;
        for block in &self.layers {
            x = block.forward(x, &rope, None)?;
        }
        Ok(x)
    }

    /// Runs `tokens` (`[batch, seq]`) through blocks `0..=index` and lets `input_hook` see the
    /// inputs of block `index`'s linear layers (one call per [`InputSite`](crate::InputSite),
    /// `[batch, seq, width]`); returns that block's output. The way to capture real
    /// activations of one layer, e.g. on calibration windows.
    pub fn observe_block(
        &self,
        tokens: Tensor<2, Int>,
        index: usize,
        input_hook: crate::block::InputHook<'_>,
    ) -> Result<Tensor<3>> {
        let target = self.block(index)?;
        let [_, s] = tokens.dims();
        let rope = self.rope(s)?;
        let mut x = self.embed(tokens)?;
        for block in &self.layers[..index] {
            x = block.forward(x, &rope, None)?;
        }
        target.forward(x, &rope, Some(input_hook))
    }

    /// Logits for every position: `[batch, seq]` → `[batch, seq, vocab]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Result<Tensor<3>> {
        let x = self.hidden(tokens)?;
        self.final_norm_and_head(x)
    }

    /// Runs new tokens (`[batch, seq]`) after the positions held in `cache`, appends their keys
    /// and values, and returns the logits of the last new position, `[batch, vocab]`.
    pub fn forward_cached(
        &self,
        tokens: Tensor<2, Int>,
        rope: &Rope,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>> {
        if cache.blocks.len() != self.layers.len() {
            return Err(LlmError::invalid(
                "cache",
                format!("{} blocks", cache.blocks.len()),
                format!("the model has {} blocks", self.layers.len()),
            ));
        }
        let [b, s] = tokens.dims();
        let mut x = self.embed(tokens)?;
        for (block, c) in self.layers.iter().zip(cache.blocks.iter_mut()) {
            x = block.forward_cached(x, rope, c)?;
        }
        let last = x.narrow(1, s.max(1) - 1, 1);
        let logits = self.final_norm_and_head(last)?;
        let vocab = self.hparams.vocab_size;
        Ok(logits.reshape([b, vocab]))
    }

    /// Sets (or with `None` removes) the weight quantizer of the LM head.
    pub fn set_head_weight_quant(
        &mut self,
        spec: Option<burn_quant_core::QuantSpec>,
    ) -> Result<()> {
        let device = self.device();
        self.lm_head.weight_quant =
            crate::block::weight_quantizer(spec, &self.lm_head.weight.dims(), &device)?;
        Ok(())
    }
}

/// The Hugging Face shape of a tensor name for these hyper-parameters, `None` for a name the
/// model does not have (biases included: [`LlamaModel::random`] makes bias-free models).
fn hf_shape(hp: &LlamaHParams, name: &str) -> Option<Vec<usize>> {
    let (d, ff, hd) = (hp.hidden_size, hp.intermediate_size, hp.head_dim);
    let (q, kv) = (hp.num_attention_heads * hd, hp.num_key_value_heads * hd);
    match name {
        "model.embed_tokens.weight" | "lm_head.weight" => return Some(vec![hp.vocab_size, d]),
        "model.norm.weight" => return Some(vec![d]),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (_, rest) = rest.split_once('.')?;
    Some(match rest {
        "self_attn.q_proj.weight" => vec![q, d],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, d],
        "self_attn.o_proj.weight" => vec![d, q],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![ff, d],
        "mlp.down_proj.weight" => vec![d, ff],
        "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![d],
        _ => return None,
    })
}

fn check_shape(t: &HfTensor, expected: &[usize]) -> Result<()> {
    if t.shape != expected || t.data.len() != expected.iter().product::<usize>() {
        return Err(LlmError::ShapeMismatch {
            name: t.name.clone(),
            expected: expected.to_vec(),
            actual: t.shape.clone(),
        });
    }
    Ok(())
}

fn tensor2(data: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// A float `QuantLinear` around a weight in Burn's layout `[d_input, d_output]`.
fn float_linear(weight: Tensor<2>, bias: Option<Tensor<1>>) -> QuantLinear {
    QuantLinear {
        weight: Param::from_tensor(weight),
        bias: bias.map(Param::from_tensor),
        weight_quant: None,
        input_quant: None,
        output_quant: None,
        bias_quant: false,
    }
}

/// Block `l` of a model with hyper-parameters `hp` (already validated), from tensors in
/// Hugging Face naming and orientation fetched by name from `source` (as
/// [`LlamaModel::from_hf_tensors`]; the streaming pipeline builds one block at a time).
pub(crate) fn decoder_block_from_hf(
    hp: &LlamaHParams,
    l: usize,
    source: &mut dyn FnMut(&str) -> Result<Option<HfTensor>>,
    device: &Device,
) -> Result<DecoderBlock> {
    let (d, ff, hd) = (hp.hidden_size, hp.intermediate_size, hp.head_dim);
    let (q_out, kv_out) = (hp.num_attention_heads * hd, hp.num_key_value_heads * hd);
    let mut linear = |slot: LinearSlot, out: usize, inp: usize| -> Result<QuantLinear> {
        let name = format!("model.layers.{l}.{}.weight", slot.hf_name());
        let w = source(&name)?.ok_or(LlmError::MissingTensor { name })?;
        check_shape(&w, &[out, inp])?;
        let bias_name = format!("model.layers.{l}.{}.bias", slot.hf_name());
        let bias = match source(&bias_name)? {
            Some(b) => {
                check_shape(&b, &[out])?;
                Some(Tensor::from_data(TensorData::new(b.data, [out]), device))
            }
            None => None,
        };
        Ok(float_linear(
            tensor2(transpose(&w.data, out, inp), [inp, out], device),
            bias,
        ))
    };
    let q_proj = linear(LinearSlot::Q, q_out, d)?;
    let k_proj = linear(LinearSlot::K, kv_out, d)?;
    let v_proj = linear(LinearSlot::V, kv_out, d)?;
    let o_proj = linear(LinearSlot::O, d, q_out)?;
    let gate_proj = linear(LinearSlot::Gate, ff, d)?;
    let up_proj = linear(LinearSlot::Up, ff, d)?;
    let down_proj = linear(LinearSlot::Down, d, ff)?;
    let mut norm = |which: &str| -> Result<RmsNorm> {
        let name = format!("model.layers.{l}.{which}.weight");
        let w = source(&name)?.ok_or(LlmError::MissingTensor { name })?;
        check_shape(&w, &[d])?;
        Ok(RmsNorm::new(
            Tensor::from_data(TensorData::new(w.data, [d]), device),
            hp.rms_norm_eps as f64,
        ))
    };
    Ok(DecoderBlock {
        input_layernorm: norm("input_layernorm")?,
        self_attn: LlamaAttention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            n_heads: hp.num_attention_heads,
            n_kv_heads: hp.num_key_value_heads,
            head_dim: hd,
            key_quant: None,
            value_quant: None,
            query_quant: None,
            qk_rotation: None,
            attn_out_rotation: None,
        },
        post_attention_layernorm: norm("post_attention_layernorm")?,
        mlp: LlamaMlp {
            gate_proj,
            up_proj,
            down_proj,
            down_rotation: None,
        },
        qkv_rotation: None,
        gate_up_rotation: None,
    })
}

/// Row-major `[rows, cols]` → `[cols, rows]`, in cache-sized tiles (the embedding table is
/// 28 M values).
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; data.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}
