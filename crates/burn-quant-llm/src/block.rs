//! One decoder block: RMSNorm → grouped-query attention with RoPE → residual → RMSNorm →
//! SwiGLU MLP → residual. Every projection is a [`QuantLinear`].

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};
use burn_quant_core::QuantSpec;
use burn_quant_nn::{QuantLinear, Quantizer, QuantizerConfig, QuantizerRole};
use burn_quant_ptq::stage1::Rotation;

use crate::error::{LlmError, Result};
use crate::norm::RmsNorm;
use crate::rope::Rope;

/// One of the seven linear layers of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearSlot {
    /// Query projection, `[d_model, n_heads·head_dim]` in Burn's layout.
    Q,
    /// Key projection, `[d_model, n_kv_heads·head_dim]`.
    K,
    /// Value projection, `[d_model, n_kv_heads·head_dim]`.
    V,
    /// Attention output projection, `[n_heads·head_dim, d_model]`.
    O,
    /// MLP gate projection, `[d_model, d_ff]`.
    Gate,
    /// MLP up projection, `[d_model, d_ff]`.
    Up,
    /// MLP down projection, `[d_ff, d_model]`.
    Down,
}

impl LinearSlot {
    /// All slots in forward order.
    pub const ALL: [LinearSlot; 7] = [
        LinearSlot::Q,
        LinearSlot::K,
        LinearSlot::V,
        LinearSlot::O,
        LinearSlot::Gate,
        LinearSlot::Up,
        LinearSlot::Down,
    ];

    /// The input this layer reads.
    pub fn input(self) -> InputSite {
        match self {
            LinearSlot::Q | LinearSlot::K | LinearSlot::V => InputSite::Qkv,
            LinearSlot::O => InputSite::AttnOut,
            LinearSlot::Gate | LinearSlot::Up => InputSite::GateUp,
            LinearSlot::Down => InputSite::Down,
        }
    }

    /// The Hugging Face name inside a block (`self_attn.q_proj`, `mlp.down_proj`, …).
    pub fn hf_name(self) -> &'static str {
        match self {
            LinearSlot::Q => "self_attn.q_proj",
            LinearSlot::K => "self_attn.k_proj",
            LinearSlot::V => "self_attn.v_proj",
            LinearSlot::O => "self_attn.o_proj",
            LinearSlot::Gate => "mlp.gate_proj",
            LinearSlot::Up => "mlp.up_proj",
            LinearSlot::Down => "mlp.down_proj",
        }
    }
}

/// A distinct input of a block's linear layers. Q/K/V share one input, gate/up another, so an
/// input_hook sees each activation once (one `XᵀX` serves all its consumers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputSite {
    /// The normalized block input, read by Q, K and V: `[batch, seq, d_model]`.
    Qkv,
    /// The concatenated attention heads, read by O: `[batch, seq, n_heads·head_dim]`.
    AttnOut,
    /// The normalized residual after attention, read by gate and up: `[batch, seq, d_model]`.
    GateUp,
    /// `silu(gate) · up`, read by down: `[batch, seq, d_ff]`.
    Down,
}

impl InputSite {
    /// All sites in forward order.
    pub const ALL: [InputSite; 4] = [
        InputSite::Qkv,
        InputSite::AttnOut,
        InputSite::GateUp,
        InputSite::Down,
    ];

    /// The layers that read this input.
    pub fn consumers(self) -> &'static [LinearSlot] {
        match self {
            InputSite::Qkv => &[LinearSlot::Q, LinearSlot::K, LinearSlot::V],
            InputSite::AttnOut => &[LinearSlot::O],
            InputSite::GateUp => &[LinearSlot::Gate, LinearSlot::Up],
            InputSite::Down => &[LinearSlot::Down],
        }
    }
}

/// A callback that sees the input of every linear layer of a block during its forward pass,
/// once per [`InputSite`], as it enters the layer (before the layer's own input quantizer).
pub type InputHook<'a> = &'a mut dyn FnMut(InputSite, &Tensor<3>);

/// Keys and values of the positions already processed by one block (after RoPE, before the
/// GQA head repetition), for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct BlockCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl BlockCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.kv.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// Grouped-query self-attention with RoPE and a causal mask.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// Query projection, `[d_model, n_heads·head_dim]`.
    pub q_proj: QuantLinear,
    /// Key projection, `[d_model, n_kv_heads·head_dim]`.
    pub k_proj: QuantLinear,
    /// Value projection, `[d_model, n_kv_heads·head_dim]`.
    pub v_proj: QuantLinear,
    /// Output projection, `[n_heads·head_dim, d_model]`.
    pub o_proj: QuantLinear,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; query head `h` reads key/value head `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Quantizer of the keys after RoPE (and the query/key rotation), `[batch, n_kv_heads,
    /// seq, head_dim]`: what the key cache holds.
    pub key_quant: Option<Quantizer>,
    /// Quantizer of the values, `[batch, n_kv_heads, seq, head_dim]`: what the value cache
    /// holds.
    pub value_quant: Option<Quantizer>,
    /// Quantizer of the queries after RoPE (and the query/key rotation), `[batch, n_heads,
    /// seq, head_dim]` (attention-input quantization).
    pub query_quant: Option<Quantizer>,
    /// Online rotation of every query and key head after RoPE (QuaRot's R3).
    #[module(skip)]
    pub qk_rotation: Option<Rotation>,
    /// Online rotation of the concatenated heads before `o_proj` (HIP).
    #[module(skip)]
    pub attn_out_rotation: Option<Rotation>,
}

impl LlamaAttention {
    /// `h`: `[batch, seq, d_model]` (already normalized) → `[batch, seq, d_model]`.
    pub(crate) fn forward(
        &self,
        h: Tensor<3>,
        rope: &Rope,
        cache: Option<&mut BlockCache>,
        see: &mut dyn FnMut(InputSite, &Tensor<3>),
    ) -> Result<Tensor<3>> {
        let [b, s, _] = h.dims();
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let q = heads(self.q_proj.try_forward(h.clone())?, nh);
        let k = heads(self.k_proj.try_forward(h.clone())?, nkv);
        let v = heads(self.v_proj.try_forward(h)?, nkv);
        let q = rope.apply(q, offset)?;
        let k = rope.apply(k, offset)?;
        let (q, k) = match &self.qk_rotation {
            Some(r) => (r.apply_tensor(q)?, r.apply_tensor(k)?),
            None => (q, k),
        };
        let quant = |q: &Option<Quantizer>, x: Tensor<4>| -> Result<Tensor<4>> {
            Ok(match q {
                Some(q) => q.try_forward(x)?,
                None => x,
            })
        };
        let q = quant(&self.query_quant, q)?;
        let k = quant(&self.key_quant, k)?;
        let v = quant(&self.value_quant, v)?;
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        let (k, v) = (repeat_kv(k, nh / nkv), repeat_kv(v, nh / nkv));
        // Causal with the diagonal aligned bottom-right, so that `s` new queries after
        // `offset` cached positions see every cached key and the new ones up to themselves.
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let ctx = attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([b, s, nh * hd]);
        let ctx = rotate(&self.attn_out_rotation, ctx)?;
        see(InputSite::AttnOut, &ctx);
        Ok(self.o_proj.try_forward(ctx)?)
    }
}

/// Repeats each key/value head `n_rep` times along the head axis (`[b, n_kv, s, d]` →
/// `[b, n_kv·n_rep, s, d]`, head `j` of the output being head `j / n_rep` of the input), so
/// that every backend's attention sees as many key heads as query heads.
fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, n, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, n, n_rep, s, d])
        .reshape([b, n * n_rep, s, d])
}

/// The SwiGLU feed-forward network: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// Gate projection, `[d_model, d_ff]`.
    pub gate_proj: QuantLinear,
    /// Up projection, `[d_model, d_ff]`.
    pub up_proj: QuantLinear,
    /// Down projection, `[d_ff, d_model]`.
    pub down_proj: QuantLinear,
    /// Online rotation of the gated product before `down_proj` (QuaRot's R4, HIP).
    #[module(skip)]
    pub down_rotation: Option<Rotation>,
}

impl LlamaMlp {
    /// The input of `down_proj`: `silu(gate(h)) · up(h)`, rotated online if the block says so.
    pub(crate) fn down_input(&self, h: Tensor<3>) -> Result<Tensor<3>> {
        let gate = self.gate_proj.try_forward(h.clone())?;
        let up = self.up_proj.try_forward(h)?;
        rotate(&self.down_rotation, silu(gate) * up)
    }

    fn forward(
        &self,
        h: Tensor<3>,
        see: &mut dyn FnMut(InputSite, &Tensor<3>),
    ) -> Result<Tensor<3>> {
        let a = self.down_input(h)?;
        see(InputSite::Down, &a);
        Ok(self.down_proj.try_forward(a)?)
    }
}

/// One decoder block. Field names follow Hugging Face's `LlamaDecoderLayer`.
#[derive(Module, Debug)]
pub struct DecoderBlock {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Attention.
    pub self_attn: LlamaAttention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward network.
    pub mlp: LlamaMlp,
    /// Online rotation of the normalized input of q/k/v (HIP).
    #[module(skip)]
    pub qkv_rotation: Option<Rotation>,
    /// Online rotation of the normalized input of gate/up (HIP).
    #[module(skip)]
    pub gate_up_rotation: Option<Rotation>,
}

impl DecoderBlock {
    /// Width of the residual stream.
    pub fn d_model(&self) -> usize {
        self.input_layernorm.d_model()
    }

    /// Applies the block to `x` (`[batch, seq, d_model]`, positions `0..seq`) with a causal
    /// mask; `input_hook`, when given, sees the input of every linear layer (see
    /// [`InputSite`]).
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        input_hook: Option<InputHook<'_>>,
    ) -> Result<Tensor<3>> {
        self.run(x, rope, None, input_hook)
    }

    /// Applies the block to new positions `cache.len()..cache.len()+seq`, attending to the
    /// cached keys and values, and appends the new ones to `cache`.
    pub fn forward_cached(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cache: &mut BlockCache,
    ) -> Result<Tensor<3>> {
        self.run(x, rope, Some(cache), None)
    }

    fn run(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cache: Option<&mut BlockCache>,
        mut input_hook: Option<InputHook<'_>>,
    ) -> Result<Tensor<3>> {
        let dims = x.dims();
        if dims[2] != self.d_model() {
            return Err(LlmError::BadInput {
                what: "DecoderBlock::forward".into(),
                expected: format!("[batch, seq, {}]", self.d_model()),
                actual: dims.to_vec(),
            });
        }
        let mut see = |site: InputSite, t: &Tensor<3>| {
            if let Some(o) = input_hook.as_mut() {
                o(site, t)
            }
        };
        let h = self.attention_input(x.clone())?;
        see(InputSite::Qkv, &h);
        let x = x + self.self_attn.forward(h, rope, cache, &mut see)?;
        let h = self.mlp_input(x.clone())?;
        see(InputSite::GateUp, &h);
        let m = self.mlp.forward(h, &mut see)?;
        Ok(x + m)
    }

    /// The input of q/k/v: the normalized block input, rotated online if the block says so.
    pub(crate) fn attention_input(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        rotate(&self.qkv_rotation, self.input_layernorm.forward(x))
    }

    /// The input of gate/up: the normalized residual after attention, rotated online if the
    /// block says so.
    pub(crate) fn mlp_input(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        rotate(
            &self.gate_up_rotation,
            self.post_attention_layernorm.forward(x),
        )
    }

    /// The online rotation at `site`, if any.
    pub fn site_rotation(&self, site: InputSite) -> Option<&Rotation> {
        match site {
            InputSite::Qkv => self.qkv_rotation.as_ref(),
            InputSite::AttnOut => self.self_attn.attn_out_rotation.as_ref(),
            InputSite::GateUp => self.gate_up_rotation.as_ref(),
            InputSite::Down => self.mlp.down_rotation.as_ref(),
        }
    }

    /// The online rotation slot at `site`, mutably.
    pub fn site_rotation_mut(&mut self, site: InputSite) -> &mut Option<Rotation> {
        match site {
            InputSite::Qkv => &mut self.qkv_rotation,
            InputSite::AttnOut => &mut self.self_attn.attn_out_rotation,
            InputSite::GateUp => &mut self.gate_up_rotation,
            InputSite::Down => &mut self.mlp.down_rotation,
        }
    }

    /// Whether any online transform (rotation of a site or of queries/keys) is set: such a
    /// block computes something a plain Llama runtime (llama.cpp) does not.
    pub fn has_online_rotations(&self) -> bool {
        InputSite::ALL
            .iter()
            .any(|s| self.site_rotation(*s).is_some())
            || self.self_attn.qk_rotation.is_some()
    }

    /// The linear layer in `slot`.
    pub fn linear(&self, slot: LinearSlot) -> &QuantLinear {
        match slot {
            LinearSlot::Q => &self.self_attn.q_proj,
            LinearSlot::K => &self.self_attn.k_proj,
            LinearSlot::V => &self.self_attn.v_proj,
            LinearSlot::O => &self.self_attn.o_proj,
            LinearSlot::Gate => &self.mlp.gate_proj,
            LinearSlot::Up => &self.mlp.up_proj,
            LinearSlot::Down => &self.mlp.down_proj,
        }
    }

    /// The linear layer in `slot`, mutably (to replace its weight or quantizers).
    pub fn linear_mut(&mut self, slot: LinearSlot) -> &mut QuantLinear {
        match slot {
            LinearSlot::Q => &mut self.self_attn.q_proj,
            LinearSlot::K => &mut self.self_attn.k_proj,
            LinearSlot::V => &mut self.self_attn.v_proj,
            LinearSlot::O => &mut self.self_attn.o_proj,
            LinearSlot::Gate => &mut self.mlp.gate_proj,
            LinearSlot::Up => &mut self.mlp.up_proj,
            LinearSlot::Down => &mut self.mlp.down_proj,
        }
    }

    /// Replaces the weight of `slot` with `weight` in Burn's layout `[d_input, d_output]`
    /// (same shape as the current one); the parameter id is kept.
    pub fn set_linear_weight(&mut self, slot: LinearSlot, weight: Tensor<2>) -> Result<()> {
        let layer = self.linear_mut(slot);
        let (have, got) = (layer.weight.dims(), weight.dims());
        if have != got {
            return Err(LlmError::ShapeMismatch {
                name: slot.hf_name().into(),
                expected: have.to_vec(),
                actual: got.to_vec(),
            });
        }
        let id = layer.weight.id;
        layer.weight = Param::initialized(id, weight);
        Ok(())
    }

    /// Sets (or with `None` removes) the weight quantizer of `slot`. The spec's granularity
    /// is read against Burn's layout `[d_input, d_output]`: per output channel is axis 1,
    /// groups along the input are axis 0.
    pub fn set_weight_quant(&mut self, slot: LinearSlot, spec: Option<QuantSpec>) -> Result<()> {
        let layer = self.linear_mut(slot);
        let device = layer.weight.device();
        layer.weight_quant = weight_quantizer(spec, &layer.weight.dims(), &device)?;
        Ok(())
    }
}

/// Applies an optional online rotation to the last axis.
fn rotate<const D: usize>(rotation: &Option<Rotation>, x: Tensor<D>) -> Result<Tensor<D>> {
    Ok(match rotation {
        Some(r) => r.apply_tensor(x)?,
        None => x,
    })
}

/// A weight quantizer for a weight of `shape`, sized the way `QuantLinearConfig` sizes it.
pub(crate) fn weight_quantizer(
    spec: Option<QuantSpec>,
    shape: &[usize],
    device: &Device,
) -> Result<Option<burn_quant_nn::Quantizer>> {
    spec.map(|spec| -> Result<_> {
        let cells = spec
            .check_shape(shape)
            .map_err(burn_quant_nn::NnError::from)?
            .cells();
        Ok(QuantizerConfig::for_spec(spec, QuantizerRole::Weight)
            .with_cells(cells)
            .init(device)?)
    })
    .transpose()
}
