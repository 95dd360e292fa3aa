//! Sequential post-training quantization of a [`LlamaModel`], block by block.
//!
//! Memory holds one block's calibration activations at a time. For block `i`:
//!
//! 1. **Float path** (only for algorithms that target the float model's output, GPFQ, GPTAQ,
//!    Qronos): the float block runs on the float-path input `X` and an observer keeps the input
//!    of each of its four linear-input sites (q/k/v, o, gate/up, down).
//! 2. **Quantized path**, site by site in forward order: the block's input `X̃` comes from the
//!    already-quantized blocks `0..i`; the input of the current site is computed with every
//!    earlier site of this block already quantized ("true sequential"), the statistics are
//!    accumulated batch by batch through [`Stage2Algorithm::observe`], and each layer reading
//!    the site is quantized with [`Stage2Algorithm::quantize`]. Only the pieces of the block a
//!    site needs are recomputed: q/k/v need a norm, o the attention, gate/up the residual and a
//!    norm, down the gated product — about one block forward in all.
//! 3. Both paths move on to block `i + 1`.
//!
//! The model's weights are replaced by their dequantization Ŵ, and every layer's
//! [`QuantTensor`] is kept (by Hugging Face name) for export, code for code.
//!
//! **Quantized activations during calibration** (Brevitas's `use_quant_activations`): when the
//! block linears already carry input quantizers ([`attach_input_quantizers`] called before
//! [`quantize_llama`]), the quantized path is the deployed one, so the statistics of each site
//! are taken on its *quantized* input `Q_a(X̃)` (what the layer multiplies), while the float
//! path runs with every quantizer off and stays the float model's target. Without input
//! quantizers the algorithms see float activations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use burn::tensor::Tensor;
use burn_quant_core::{QuantSpec, QuantTensor};
use burn_quant_ptq::{
    Algorithm, AutoRoundReport, CalibInputs, LayerReport, LayerStats, Stage2Algorithm,
};

use crate::block::{DecoderBlock, InputSite, LinearSlot};
use crate::error::{LlmError, Result};
use crate::model::LlamaModel;
use crate::rope::Rope;

/// What to quantize and how.
#[derive(Clone, Debug)]
pub struct PtqConfig {
    /// Spec of every linear weight of every block, in Burn's `[d_input, d_output]` layout
    /// (groups along axis 0). The tied embedding / LM head stays float.
    pub weights: QuantSpec,
    /// The Stage-2 algorithm.
    pub algorithm: Algorithm,
    /// Calibration windows per forward batch (memory: one batch of one block's activations).
    pub batch_windows: usize,
}

/// Progress of the sweep, reported after each block.
#[derive(Clone, Debug)]
pub struct BlockProgress {
    /// Block just quantized.
    pub block: usize,
    /// Number of blocks.
    pub blocks: usize,
    /// Wall time of this block.
    pub elapsed: Duration,
}

/// Where the time went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PtqTimings {
    /// Forward passes of the float and quantized paths.
    pub forward: Duration,
    /// Statistics accumulation (`XᵀX` and cross terms).
    pub statistics: Duration,
    /// The Stage-2 algorithm itself.
    pub algorithm: Duration,
    /// Everything.
    pub total: Duration,
    /// Floating-point operations of the forward passes (both paths; linears `2·d_in·d_out`
    /// per token, attention `4·seq·n_heads·head_dim` per token, as the kernel computes it).
    pub forward_flops: f64,
    /// Floating-point operations of the statistics: `t·d²` for the symmetric `X̃ᵀX̃` of `t`
    /// tokens of width `d`, `2·t·d²` for the cross term `X̃ᵀX`.
    pub statistics_flops: f64,
    /// The matmul rate measured in the same process (GFLOP/s, best of three
    /// `1024×1024×1024` products on the calibration device), 0 when nothing was measured.
    pub matmul_gflops: f64,
}

impl PtqTimings {
    /// The FLOP floor: the forward passes and the statistics at the measured matmul rate
    /// (zero when no rate was measured).
    pub fn floor(&self) -> Duration {
        if self.matmul_gflops > 0.0 {
            Duration::from_secs_f64(
                (self.forward_flops + self.statistics_flops) / (self.matmul_gflops * 1e9),
            )
        } else {
            Duration::ZERO
        }
    }

    /// `total / floor` (how far the pipeline is from its FLOP floor), `None` without a floor.
    pub fn floor_ratio(&self) -> Option<f64> {
        let floor = self.floor().as_secs_f64();
        (floor > 0.0).then(|| self.total.as_secs_f64() / floor)
    }
}

/// The matmul rate of `device` in GFLOP/s: the best of three `1024×1024×1024` products after
/// one warm-up, each read back to the host (so that lazy backends finish it).
pub fn matmul_gflops(device: &burn::tensor::Device) -> f64 {
    use burn::tensor::Distribution;
    let n = 1024;
    let a = Tensor::<2>::random([n, n], Distribution::Uniform(-1.0, 1.0), device);
    let b = Tensor::<2>::random([n, n], Distribution::Uniform(-1.0, 1.0), device);
    let _ = a.clone().matmul(b.clone()).into_data();
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            let _ = a.clone().matmul(b.clone()).into_data();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (n as f64).powi(3) / best.max(1e-9) / 1e9
}

/// The result of [`quantize_llama`].
#[derive(Debug)]
pub struct PtqResult {
    /// Every quantized weight by Hugging Face name (`model.layers.3.self_attn.q_proj.weight`),
    /// in Burn's `[d_input, d_output]` layout.
    pub weights: BTreeMap<String, QuantTensor<2>>,
    /// Per-layer diagnostics, in order.
    pub layers: Vec<(String, LayerReport)>,
    /// Per block, how the learned rounding trained (AutoRound only; empty otherwise).
    pub learned: Vec<(usize, AutoRoundReport)>,
    /// Floating-point operations of the learned rounding's forward and backward passes
    /// (AutoRound only): per iteration and token, `3 × (2·P + 4·seq·d_attn)` for a block of
    /// `P` linear weights (backward counted as twice the forward; attention's `QKᵀ` and `AV`
    /// over the full window, as the kernel computes them).
    pub learned_flops: f64,
    /// Where the time went.
    pub timings: PtqTimings,
}

/// The Hugging Face name of a block's linear weight.
pub fn hf_weight_name(block: usize, slot: LinearSlot) -> String {
    format!("model.layers.{block}.{}.weight", slot.hf_name())
}

/// Quantizes every linear layer of `model`'s blocks with `config`, calibrating on `windows`
/// (token ids, all of the same length), block by block; `progress` is called after each block.
pub fn quantize_llama(
    model: &mut LlamaModel,
    windows: &[Vec<u32>],
    config: &PtqConfig,
    progress: &mut dyn FnMut(&BlockProgress),
) -> Result<PtqResult> {
    if let Algorithm::AutoRound(autoround) = &config.algorithm {
        // Block-wise: one loss over the whole block, not per-layer statistics.
        return crate::block_rounding::autoround_model(model, windows, config, autoround, progress);
    }
    let start = Instant::now();
    let inputs = config.algorithm.inputs();
    let mut timings = PtqTimings::default();
    let mut result = PtqResult {
        weights: BTreeMap::new(),
        layers: vec![],
        learned: vec![],
        learned_flops: 0.0,
        timings: PtqTimings::default(),
    };
    let needs_data = inputs != CalibInputs::None;
    let seq = check_windows(windows, needs_data)?;
    let batch = config.batch_windows.max(1);
    let rope = if needs_data {
        Some(model.rope(seq)?)
    } else {
        None
    };

    // Block inputs, one tensor per batch of windows: float path and quantized path.
    let t = Instant::now();
    let mut x_float: Vec<Tensor<3>> = vec![];
    if needs_data {
        for chunk in windows.chunks(batch) {
            let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            x_float.push(model.embed(model.tokens(&rows)?)?);
        }
    }
    let mut x_quant = x_float.clone();
    timings.forward += t.elapsed();

    let blocks = model.num_blocks();
    for i in 0..blocks {
        let block_start = Instant::now();
        let float_block = model.block(i)?.clone();
        let block = model.block_mut(i)?;
        quantize_block(
            i,
            block,
            &float_block,
            &mut x_float,
            &mut x_quant,
            rope.as_ref(),
            config,
            &mut timings,
            &mut result,
        )?;
        progress(&BlockProgress {
            block: i,
            blocks,
            elapsed: block_start.elapsed(),
        });
    }
    timings.total = start.elapsed();
    result.timings = timings;
    Ok(result)
}

/// Checks the calibration windows (present when the algorithm `needs_data`, non-empty and of
/// one length) and returns their length.
pub(crate) fn check_windows(windows: &[Vec<u32>], needs_data: bool) -> Result<usize> {
    if needs_data && windows.is_empty() {
        return Err(LlmError::Calibration(
            "no calibration windows: the algorithm needs data".into(),
        ));
    }
    let seq = windows.first().map_or(0, Vec::len);
    if windows.iter().any(|w| w.len() != seq || w.is_empty()) {
        return Err(LlmError::Calibration(
            "calibration windows must be non-empty and of one length".into(),
        ));
    }
    Ok(seq)
}

/// Quantizes the linear layers of one decoder block (block `i` of the model), the body of the
/// block loop shared by [`quantize_llama`] and the streaming pipeline (`crate::stream`).
///
/// `block` is quantized in place (its weights replaced by their dequantization Ŵ);
/// `float_block` is its float copy, taken before any change. With `rope` (data-driven
/// algorithms), `x_float` / `x_quant` are the block's float-path and quantized-path inputs
/// (one tensor per batch of windows) and become the next block's; without it (data-free) they
/// are untouched. Every quantized weight and its report is added to `result` (by Hugging Face
/// name), and the time to `timings`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_block(
    i: usize,
    block: &mut DecoderBlock,
    float_block: &DecoderBlock,
    x_float: &mut [Tensor<3>],
    x_quant: &mut [Tensor<3>],
    rope: Option<&Rope>,
    config: &PtqConfig,
    timings: &mut PtqTimings,
    result: &mut PtqResult,
) -> Result<()> {
    let algo = &config.algorithm;
    let inputs = algo.inputs();
    if let Some(rope) = rope {
        if timings.matmul_gflops == 0.0
            && let Some(x) = x_quant.first()
        {
            timings.matmul_gflops = matmul_gflops(&x.device());
        }
        // FLOPs of one path through this block, and of the statistics.
        let tokens: f64 = x_quant
            .iter()
            .map(|x| {
                let [b, s, _] = x.dims();
                (b * s) as f64
            })
            .sum();
        let seq = x_quant.first().map_or(0, |x| x.dims()[1]) as f64;
        let linear: f64 = LinearSlot::ALL
            .iter()
            .map(|&slot| {
                let [d_in, d_out] = block.linear(slot).weight.val().dims();
                2.0 * (d_in * d_out) as f64
            })
            .sum();
        let d_attn = block.linear(LinearSlot::Q).weight.val().dims()[1] as f64;
        let one_path = tokens * (linear + 4.0 * seq * d_attn);
        let paths = if inputs == CalibInputs::FloatAndQuantized {
            2.0
        } else {
            1.0
        };
        timings.forward_flops += paths * one_path;
        // 1. Float path: inputs of every site, and the next block's float input.
        let mut float_sites: Vec<BTreeMap<InputSite, Tensor<3>>> = vec![];
        if inputs == CalibInputs::FloatAndQuantized {
            let t = Instant::now();
            for x in x_float.iter_mut() {
                let mut sites = BTreeMap::new();
                let mut keep = |s: InputSite, v: &Tensor<3>| {
                    sites.insert(s, v.clone());
                };
                // The float model: input quantizers (if any) off.
                *x = burn_quant_nn::without_quantization(|| {
                    float_block.forward(x.clone(), rope, Some(&mut keep))
                })?;
                float_sites.push(sites);
            }
            timings.forward += t.elapsed();
        }
        // 2. Quantized path, site by site.
        let mut state: Vec<SiteState> = x_quant.iter().map(|x| SiteState::new(x.clone())).collect();
        for site in InputSite::ALL {
            let t = Instant::now();
            let site_inputs: Vec<Tensor<3>> = state
                .iter_mut()
                .map(|s| s.input_of(site, block, rope))
                .collect::<Result<_>>()?;
            // What the layers multiply: the input through their quantizer, if they have
            // one (the consumers of a site share their input and their input spec).
            let site_inputs = match &block.linear(site.consumers()[0]).input_quant {
                Some(q) => site_inputs
                    .into_iter()
                    .map(|x| q.try_forward(x))
                    .collect::<std::result::Result<_, _>>()?,
                None => site_inputs,
            };
            timings.forward += t.elapsed();
            let t = Instant::now();
            let d_in = site_inputs[0].dims()[2];
            let mut stats: LayerStats = algo.new_stats(d_in);
            for (b, xq) in site_inputs.iter().enumerate() {
                let xq = flatten(xq.clone());
                match inputs {
                    CalibInputs::FloatAndQuantized => {
                        let xf = flatten(float_sites[b][&site].clone());
                        algo.observe(&mut stats, &xf, Some(&xq))?;
                    }
                    _ => algo.observe(&mut stats, &xq, None)?,
                }
            }
            timings.statistics += t.elapsed();
            timings.statistics_flops += tokens
                * (d_in * d_in) as f64
                * if inputs == CalibInputs::FloatAndQuantized {
                    3.0
                } else {
                    1.0
                };
            // The consumers share the site's prepared statistics and run in parallel.
            let t = Instant::now();
            let consumers = site.consumers();
            let weights: Vec<Tensor<2>> = consumers
                .iter()
                .map(|&slot| block.linear(slot).weight.val())
                .collect();
            let quantized = algo.quantize_site(&weights, &stats, &config.weights)?;
            timings.algorithm += t.elapsed();
            for (&slot, q) in consumers.iter().zip(quantized) {
                block.set_linear_weight(slot, q.tensor.dequantize())?;
                let name = hf_weight_name(i, slot);
                result.layers.push((name.clone(), q.report));
                result.weights.insert(name, q.tensor);
            }
        }
        // 3. The quantized path's output feeds the next block.
        let t = Instant::now();
        for (x, s) in x_quant.iter_mut().zip(state) {
            *x = s.output(block)?;
        }
        timings.forward += t.elapsed();
    } else {
        // Data-free (RTN): quantize each weight on its own.
        for slot in LinearSlot::ALL {
            let t = Instant::now();
            let w = block.linear(slot).weight.val();
            let stats = algo.new_stats(w.dims()[0]);
            let q = algo.quantize(&w, &stats, &config.weights)?;
            timings.algorithm += t.elapsed();
            block.set_linear_weight(slot, q.tensor.dequantize())?;
            let name = hf_weight_name(i, slot);
            result.layers.push((name.clone(), q.report));
            result.weights.insert(name, q.tensor);
        }
    }
    Ok(())
}

/// `[batch, seq, d]` → `[batch·seq, d]`.
pub(crate) fn flatten(x: Tensor<3>) -> Tensor<2> {
    let [b, s, d] = x.dims();
    x.reshape([b * s, d])
}

/// The quantized path through one block for one batch, computed piece by piece so that each
/// site's input sees every earlier site already quantized, without recomputing the rest.
pub(crate) struct SiteState {
    /// Block input.
    x: Tensor<3>,
    /// Normalized input (q/k/v site).
    h: Option<Tensor<3>>,
    /// Concatenated heads (o site).
    ctx: Option<Tensor<3>>,
    /// Residual after attention.
    x_attn: Option<Tensor<3>>,
    /// Normalized residual (gate/up site).
    h2: Option<Tensor<3>>,
    /// Gated product (down site).
    act: Option<Tensor<3>>,
}

impl SiteState {
    pub(crate) fn new(x: Tensor<3>) -> Self {
        Self {
            x,
            h: None,
            ctx: None,
            x_attn: None,
            h2: None,
            act: None,
        }
    }

    /// The input of `site`, with the block's current (partly quantized) weights. Sites must be
    /// asked in forward order.
    pub(crate) fn input_of(
        &mut self,
        site: InputSite,
        block: &DecoderBlock,
        rope: &Rope,
    ) -> Result<Tensor<3>> {
        match site {
            InputSite::Qkv => {
                let h = block.attention_input(self.x.clone())?;
                self.h = Some(h.clone());
                Ok(h)
            }
            InputSite::AttnOut => {
                let h = self.h.clone().ok_or_else(order_error)?;
                let mut ctx = None;
                let mut keep = |s: InputSite, v: &Tensor<3>| {
                    if s == InputSite::AttnOut {
                        ctx = Some(v.clone());
                    }
                };
                block.self_attn.forward(h, rope, None, &mut keep)?;
                let ctx = ctx.ok_or_else(order_error)?;
                self.ctx = Some(ctx.clone());
                Ok(ctx)
            }
            InputSite::GateUp => {
                let ctx = self.ctx.clone().ok_or_else(order_error)?;
                let x_attn = self.x.clone() + block.self_attn.o_proj.try_forward(ctx)?;
                let h2 = block.mlp_input(x_attn.clone())?;
                self.x_attn = Some(x_attn);
                self.h2 = Some(h2.clone());
                Ok(h2)
            }
            InputSite::Down => {
                let h2 = self.h2.clone().ok_or_else(order_error)?;
                let act = block.mlp.down_input(h2)?;
                self.act = Some(act.clone());
                Ok(act)
            }
        }
    }

    /// The block's output once every site is quantized.
    pub(crate) fn output(self, block: &DecoderBlock) -> Result<Tensor<3>> {
        let (x_attn, act) = (
            self.x_attn.ok_or_else(order_error)?,
            self.act.ok_or_else(order_error)?,
        );
        Ok(x_attn + block.mlp.down_proj.try_forward(act)?)
    }
}

fn order_error() -> LlmError {
    LlmError::Calibration("block sites were not visited in forward order".into())
}

/// Activation quantization of the input of every block linear layer (W8A8, W4A8 flows).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InputQuant {
    /// One static symmetric scale per layer input, calibrated on calibration windows with
    /// `stat` (absmax; a percentile such as Brevitas's default 99.999 clips the rare outliers;
    /// MSE searches the range). Percentile and MSE keep a fixed 64 KiB histogram per layer
    /// input (core's `observer::histogram`: constant memory, within one bin of the all-values
    /// statistic).
    PerTensorStatic {
        /// Bits of the signed integer grid.
        bits: u8,
        /// The calibration statistic.
        stat: burn_quant_core::ScaleStat,
    },
    /// One symmetric scale per token, recomputed at every call (absmax over the features).
    PerTokenDynamic {
        /// Bits of the signed integer grid.
        bits: u8,
    },
    /// Any spec for the `[batch, seq, d_in]` inputs, used as given on every layer (a `Stats`
    /// scale source is calibrated on the windows; per token is groups along axis 2 at least
    /// `d_in` long).
    Spec(QuantSpec),
}

impl InputQuant {
    /// The spec for an input of `d_in` features (`[batch, seq, d_in]` activations).
    pub fn spec(self, d_in: usize) -> QuantSpec {
        use burn_quant_core::{Granularity, ScaleSource, ScaleStat};
        match self {
            InputQuant::PerTensorStatic { bits, stat } => QuantSpec::int8_act_per_tensor()
                .with_bits(bits)
                .with_stat(stat),
            InputQuant::PerTokenDynamic { bits } => QuantSpec::int8_act_per_tensor()
                .with_bits(bits)
                .with_granularity(Granularity::PerGroup {
                    axis: 2,
                    size: d_in,
                })
                .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax)),
            InputQuant::Spec(spec) => spec,
        }
    }

    /// Whether the scales are static and must be calibrated.
    pub fn is_static(self) -> bool {
        match self {
            InputQuant::PerTensorStatic { .. } => true,
            InputQuant::PerTokenDynamic { .. } => false,
            InputQuant::Spec(spec) => {
                matches!(spec.scale.source, burn_quant_core::ScaleSource::Stats(_))
            }
        }
    }
}

/// Puts an input quantizer on every linear layer of every block; static ones are calibrated on
/// `windows` (batches of `batch_windows`), dynamic ones need no data.
pub fn attach_input_quantizers(
    mut model: LlamaModel,
    quant: InputQuant,
    windows: &[Vec<u32>],
    batch_windows: usize,
) -> Result<LlamaModel> {
    let device = model.device();
    for i in 0..model.num_blocks() {
        let block = model.block_mut(i)?;
        for slot in LinearSlot::ALL {
            let layer = block.linear_mut(slot);
            let d_in = layer.weight.dims()[0];
            layer.input_quant = burn_quant_nn::quantizer::activation_quantizer(
                Some(quant.spec(d_in)),
                "input_quant",
                &[(2, d_in)],
                &device,
            )?;
        }
    }
    if quant.is_static() {
        if windows.is_empty() {
            return Err(LlmError::Calibration(
                "static activation scales need calibration windows".into(),
            ));
        }
        let mut failure = None;
        let (calibrated, _) = burn_quant_nn::calibrate(model, |m: &LlamaModel| {
            for chunk in windows.chunks(batch_windows.max(1)) {
                let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
                if let Err(e) = m.tokens(&rows).and_then(|t| m.hidden(t)) {
                    failure.get_or_insert(e);
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        model = calibrated;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hparams::{LlamaHParams, RopeScaling};
    use burn::tensor::Device;

    fn hparams() -> LlamaHParams {
        LlamaHParams {
            vocab_size: 61,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
        }
    }

    fn windows(n: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        s = s
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((s >> 33) % 61) as u32
                    })
                    .collect()
            })
            .collect()
    }

    fn host(t: Tensor<3>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Runs block `index` of `model` site by site on two windows and compares with its forward.
    fn assert_site_path_is_the_forward(model: &LlamaModel, index: usize) {
        let w = windows(2, 12, 1);
        let rows: Vec<&[u32]> = w.iter().map(Vec::as_slice).collect();
        let x = model.embed(model.tokens(&rows).unwrap()).unwrap();
        let rope = model.rope(12).unwrap();
        let block = model.block(index).unwrap();
        let mut s = SiteState::new(x.clone());
        for site in InputSite::ALL {
            s.input_of(site, block, &rope).unwrap();
        }
        let (a, b) = (
            host(s.output(block).unwrap()),
            host(block.forward(x, &rope, None).unwrap()),
        );
        assert_eq!(a, b);
    }

    /// The piecewise quantized path computes exactly the block's forward.
    #[test]
    fn site_by_site_path_equals_the_block_forward() {
        let model = LlamaModel::random(&hparams(), 3, &Device::flex()).unwrap();
        assert_site_path_is_the_forward(&model, 0);
    }

    /// With online rotations (HIP on every site, QuaRot's R3 and R4) and KV quantizers in the
    /// block, the site-by-site path still computes exactly the block's forward, so Stage 2 sees
    /// the inputs the rotated layers multiply.
    #[test]
    fn site_by_site_path_follows_online_rotations() {
        use crate::stage1::{KvQuant, Stage1Step, apply_stage1, quantize_kv};
        let mut model = LlamaModel::random(&hparams(), 3, &Device::flex()).unwrap();
        let steps: Vec<Stage1Step> = ["rotate_residual", "rotate_heads", "hip", "rotate_qk"]
            .iter()
            .map(|n| Stage1Step::from_name(n).unwrap())
            .collect();
        apply_stage1(&mut model, &steps, &[], 2).unwrap();
        quantize_kv(&mut model, &KvQuant::preset("int4").unwrap()).unwrap();
        assert!(model.has_online_rotations());
        assert_site_path_is_the_forward(&model, 1);
    }

    /// Output error of the whole quantized model against the float model on held-out windows:
    /// GPTQ (calibrated, error feedback) beats RTN, and every weight is recorded.
    #[test]
    fn gptq_pipeline_beats_rtn_on_held_out_windows() {
        let device = Device::flex();
        let float = LlamaModel::random(&hparams(), 5, &device).unwrap();
        let calib = windows(8, 32, 2);
        let held_out = windows(2, 32, 9);
        let rows: Vec<&[u32]> = held_out.iter().map(Vec::as_slice).collect();
        let reference = host(float.hidden(float.tokens(&rows).unwrap()).unwrap());
        let spec = QuantSpec::int4_weight_per_group(16).with_bits(3);
        let err = |algo: &str| {
            let mut m = float.clone();
            let cfg = PtqConfig {
                weights: spec.clone(),
                algorithm: algo.parse().unwrap(),
                batch_windows: 3,
            };
            let mut seen = 0;
            let r = quantize_llama(&mut m, &calib, &cfg, &mut |_| seen += 1).unwrap();
            assert_eq!(seen, 2);
            assert_eq!(r.weights.len(), 14);
            let out = host(m.hidden(m.tokens(&rows).unwrap()).unwrap());
            out.iter()
                .zip(&reference)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
        };
        let (rtn, gptq) = (err("rtn"), err("gptq"));
        assert!(gptq < rtn, "gptq {gptq} vs rtn {rtn}");
    }

    /// W8A8: static per-tensor scales are calibrated (finite, positive) and 8-bit inputs
    /// barely move the output; per-token dynamic scales need no data and do at least as well
    /// on these token-varying activations; 4-bit inputs move it more than 8-bit ones.
    #[test]
    fn input_quantization_static_and_dynamic() {
        let device = Device::flex();
        let float = LlamaModel::random(&hparams(), 7, &device).unwrap();
        let calib = windows(4, 16, 3);
        let rows_w = windows(2, 16, 11);
        let rows: Vec<&[u32]> = rows_w.iter().map(Vec::as_slice).collect();
        let reference = host(float.hidden(float.tokens(&rows).unwrap()).unwrap());
        let rel = |m: &LlamaModel| {
            let out = host(m.hidden(m.tokens(&rows).unwrap()).unwrap());
            let num: f64 = out
                .iter()
                .zip(&reference)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
            (num / den).sqrt()
        };
        let stat8 = attach_input_quantizers(
            float.clone(),
            InputQuant::PerTensorStatic {
                bits: 8,
                stat: burn_quant_core::ScaleStat::AbsMax,
            },
            &calib,
            2,
        )
        .unwrap();
        let q = stat8
            .block(0)
            .unwrap()
            .linear(LinearSlot::Q)
            .input_quant
            .as_ref()
            .unwrap();
        let s: Vec<f32> = q
            .scale
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!(s.iter().all(|v| v.is_finite() && *v > 0.0), "{s:?}");
        let dyn8 = attach_input_quantizers(
            float.clone(),
            InputQuant::PerTokenDynamic { bits: 8 },
            &[],
            2,
        )
        .unwrap();
        let stat4 = attach_input_quantizers(
            float.clone(),
            InputQuant::PerTensorStatic {
                bits: 4,
                stat: burn_quant_core::ScaleStat::AbsMax,
            },
            &calib,
            2,
        )
        .unwrap();
        // The same two as full specs: a per-token spec (one group along the features longer
        // than any input) and a static per-tensor one give exactly the same model.
        let per_token = QuantSpec::int8_act_per_tensor()
            .with_granularity(burn_quant_core::Granularity::PerGroup {
                axis: 2,
                size: 1 << 30,
            })
            .with_scale_source(burn_quant_core::ScaleSource::Dynamic(
                burn_quant_core::ScaleStat::AbsMax,
            ));
        assert!(!InputQuant::Spec(per_token).is_static());
        let dyn8_spec =
            attach_input_quantizers(float.clone(), InputQuant::Spec(per_token), &[], 2).unwrap();
        assert_eq!(rel(&dyn8_spec), rel(&dyn8));
        let stat8_spec = attach_input_quantizers(
            float.clone(),
            InputQuant::Spec(QuantSpec::int8_act_per_tensor()),
            &calib,
            2,
        )
        .unwrap();
        assert_eq!(rel(&stat8_spec), rel(&stat8));
        let (e_s8, e_d8, e_s4) = (rel(&stat8), rel(&dyn8), rel(&stat4));
        assert!(e_s8 > 0.0 && e_s8 < 0.05, "static int8 {e_s8}");
        assert!(
            e_d8 > 0.0 && e_d8 <= e_s8 * 1.5,
            "dynamic int8 {e_d8} vs static {e_s8}"
        );
        assert!(e_s4 > e_s8, "int4 {e_s4} vs int8 {e_s8}");
        assert!(matches!(
            attach_input_quantizers(
                float,
                InputQuant::PerTensorStatic {
                    bits: 8,
                    stat: burn_quant_core::ScaleStat::AbsMax,
                },
                &[],
                2
            ),
            Err(LlmError::Calibration(_))
        ));
    }

    /// With input quantizers attached first, the weight algorithm is calibrated on the inputs
    /// the layers multiply: on the q/k/v site of block 0 (where both paths start from the
    /// embeddings) the pipeline's GPTQ codes are exactly GPTQ's on statistics of `Q(X)`, and
    /// without quantizers exactly GPTQ's on statistics of `X`; GPTAQ's are exactly GPTAQ's on
    /// the float target `X` (the float path runs with the quantizers off) and input `Q(X)`.
    #[test]
    fn weight_algorithms_see_quantized_inputs_when_quantizers_are_attached() {
        let device = Device::flex();
        let float = LlamaModel::random(&hparams(), 13, &device).unwrap();
        let calib = windows(8, 32, 4);
        let act = InputQuant::PerTokenDynamic { bits: 4 };
        let spec = QuantSpec::int4_weight_per_group(16).with_bits(3);
        let cfg = |algo: &str| PtqConfig {
            weights: spec,
            algorithm: algo.parse().unwrap(),
            batch_windows: 4,
        };
        let attached = attach_input_quantizers(float.clone(), act, &calib, 4).unwrap();
        let run = |start: &LlamaModel, algo: &str| {
            let mut m = start.clone();
            let r = quantize_llama(&mut m, &calib, &cfg(algo), &mut |_| {}).unwrap();
            (m, r)
        };
        let (_, aware) = run(&attached, "gptq");
        let (_, unaware) = run(&float, "gptq");
        // The reference: GPTQ on statistics of the site's input, batch by batch as the
        // pipeline observes them, with and without the input quantizer.
        let algo: Algorithm = "gptq".parse().unwrap();
        let block = attached.block(0).unwrap();
        let quantizer = block.linear(LinearSlot::Q).input_quant.clone().unwrap();
        let reference = |through_quantizer: bool, slot: LinearSlot| {
            let mut stats = algo.new_stats(hparams().hidden_size);
            for chunk in calib.chunks(4) {
                let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
                let x = attached.embed(attached.tokens(&rows).unwrap()).unwrap();
                let mut h = block.input_layernorm.forward(x);
                if through_quantizer {
                    h = quantizer.try_forward(h).unwrap();
                }
                algo.observe(&mut stats, &flatten(h), None).unwrap();
            }
            let w = float.block(0).unwrap().linear(slot).weight.val();
            algo.quantize(&w, &stats, &spec).unwrap().tensor.codes_vec()
        };
        for slot in [LinearSlot::Q, LinearSlot::K, LinearSlot::V] {
            let name = hf_weight_name(0, slot);
            let (with_q, without) = (reference(true, slot), reference(false, slot));
            assert_ne!(with_q, without, "{name}: the quantizer changes nothing");
            assert_eq!(aware.weights[&name].codes_vec(), with_q, "{name}");
            assert_eq!(unaware.weights[&name].codes_vec(), without, "{name}");
        }
        // GPTAQ: float target X (quantizers off on the float path), quantized input Q(X).
        let gptaq: Algorithm = "gptaq".parse().unwrap();
        let mut stats = gptaq.new_stats(hparams().hidden_size);
        for chunk in calib.chunks(4) {
            let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            let x = attached.embed(attached.tokens(&rows).unwrap()).unwrap();
            let h = block.input_layernorm.forward(x);
            let hq = quantizer.try_forward(h.clone()).unwrap();
            gptaq
                .observe(&mut stats, &flatten(h), Some(&flatten(hq)))
                .unwrap();
        }
        let w = float.block(0).unwrap().linear(LinearSlot::Q).weight.val();
        let want = gptaq
            .quantize(&w, &stats, &spec)
            .unwrap()
            .tensor
            .codes_vec();
        let (m, r) = run(&attached, "gptaq");
        assert_eq!(
            r.weights[&hf_weight_name(0, LinearSlot::Q)].codes_vec(),
            want
        );
        assert_eq!(r.weights.len(), 14);
        let rows: Vec<&[u32]> = calib[..2].iter().map(Vec::as_slice).collect();
        assert!(
            host(m.hidden(m.tokens(&rows).unwrap()).unwrap())
                .iter()
                .all(|v| v.is_finite())
        );
    }

    /// A percentile below 100 clips: every static scale calibrated at the 99th percentile is
    /// below the absmax one of the same layer input.
    #[test]
    fn percentile_static_scales_are_below_absmax() {
        use burn_quant_core::ScaleStat;
        let device = Device::flex();
        let float = LlamaModel::random(&hparams(), 7, &device).unwrap();
        let calib = windows(4, 16, 3);
        let scales = |stat: ScaleStat| {
            let m = attach_input_quantizers(
                float.clone(),
                InputQuant::PerTensorStatic { bits: 8, stat },
                &calib,
                2,
            )
            .unwrap();
            let mut out = vec![];
            for i in 0..m.num_blocks() {
                for slot in LinearSlot::ALL {
                    let q = m
                        .block(i)
                        .unwrap()
                        .linear(slot)
                        .input_quant
                        .clone()
                        .unwrap();
                    let s: Vec<f32> = q.scale.unwrap().val().into_data().try_to_vec().unwrap();
                    out.push(s[0]);
                }
            }
            out
        };
        let (absmax, p99) = (
            scales(ScaleStat::AbsMax),
            scales(ScaleStat::Percentile { q: 99.0 }),
        );
        assert_eq!(absmax.len(), 14);
        for (a, p) in absmax.iter().zip(&p99) {
            assert!(*p > 0.0 && p < a, "percentile {p} vs absmax {a}");
        }
    }

    #[test]
    fn calibration_data_is_checked() {
        let device = Device::flex();
        let mut m = LlamaModel::random(&hparams(), 5, &device).unwrap();
        let cfg = PtqConfig {
            weights: QuantSpec::int4_weight_per_group(16),
            algorithm: "gptq".parse().unwrap(),
            batch_windows: 2,
        };
        assert!(matches!(
            quantize_llama(&mut m, &[], &cfg, &mut |_| {}),
            Err(LlmError::Calibration(_))
        ));
        let ragged = vec![vec![1, 2, 3], vec![1, 2]];
        assert!(matches!(
            quantize_llama(&mut m, &ragged, &cfg, &mut |_| {}),
            Err(LlmError::Calibration(_))
        ));
    }
}
