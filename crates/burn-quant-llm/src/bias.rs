//! Empirical bias correction of a quantized [`LlamaModel`] (Nagel et al. 2019), after any Stage 2 (RTN, GPTQ … AutoRound).
//!
//! Llama's projections have no bias; the correction gives each one a bias: for a layer with
//! float weight `W` and quantized `Ŵ`, `δ = μ_xᵀW − μ_x̃ᵀŴ` per output channel, where `μ_x` is
//! the calibration mean of its input in the float model and `μ_x̃` in the quantized model
//! (after the layer's input quantizer, i.e. what it multiplies). Adding `δ` makes the layer's
//! mean output error on the calibration set zero. Layers are corrected sequentially in forward
//! order, each measured behind the already corrected ones (the notes' sequential form), block
//! by block, with the float and quantized paths kept side by side as in
//! [`crate::quantize_llama`].
//!
//! It helps after RTN and the per-layer algorithms; after AutoRound, whose layers were trained
//! together so that their errors compensate inside the block, the per-layer shift usually
//! raises the block's output error (measured in the book's learned-rounding chapter).
//!
//! **Export.** The biases are ordinary `QuantLinear` biases (f32): Burn records keep them, and
//! the GGUF export writes them as llama.cpp's optional `blk.N.attn_q.bias` … `ffn_down.bias`
//! tensors (f32; q/k rows permuted like their weights), which llama.cpp's Llama graph adds
//! when present.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Param;
use burn::tensor::Tensor;
use burn_quant_ptq::{InputMeans, bias_correction};

use crate::block::InputSite;
use crate::error::{LlmError, Result};
use crate::model::LlamaModel;
use crate::pipeline::{SiteState, hf_weight_name};

/// What [`correct_biases`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BiasCorrectionReport {
    /// Per corrected layer (Hugging Face weight name): the correction's RMS over output
    /// channels, `‖δ‖/√d_out`.
    pub layers: Vec<(String, f64)>,
    /// Calibration tokens behind the means.
    pub tokens: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Adds to every block linear of `quant` the bias that removes its mean output error against
/// `float` on the calibration `windows` (token ids, all of one length), `batch_windows`
/// windows per forward pass. `float` is the model before Stage 2 (after any Stage 1: the same
/// function, the same online rotations), `quant` the quantized one.
pub fn correct_biases(
    float: &LlamaModel,
    quant: &mut LlamaModel,
    windows: &[Vec<u32>],
    batch_windows: usize,
) -> Result<BiasCorrectionReport> {
    let start = Instant::now();
    if windows.is_empty() {
        return Err(LlmError::Calibration(
            "no calibration windows: bias correction needs data".into(),
        ));
    }
    let seq = windows[0].len();
    if windows.iter().any(|w| w.len() != seq || w.is_empty()) {
        return Err(LlmError::Calibration(
            "calibration windows must be non-empty and of one length".into(),
        ));
    }
    if float.num_blocks() != quant.num_blocks() {
        return Err(LlmError::Calibration(format!(
            "the float model has {} blocks, the quantized one {}",
            float.num_blocks(),
            quant.num_blocks()
        )));
    }
    let rope = float.rope(seq)?;
    let mut x_float: Vec<Tensor<3>> = vec![];
    for chunk in windows.chunks(batch_windows.max(1)) {
        let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        x_float.push(float.embed(float.tokens(&rows)?)?);
    }
    let mut x_quant: Vec<Tensor<3>> = x_float.clone();
    let mut report = BiasCorrectionReport::default();
    for i in 0..float.num_blocks() {
        let float_block = float.block(i)?;
        // Float path: every site's input, and the next block's input.
        let mut float_sites: Vec<BTreeMap<InputSite, Tensor<3>>> = vec![];
        for x in x_float.iter_mut() {
            let mut sites = BTreeMap::new();
            let mut keep = |s: InputSite, v: &Tensor<3>| {
                sites.insert(s, v.clone());
            };
            *x = burn_quant_nn::without_quantization(|| {
                float_block.forward(x.clone(), &rope, Some(&mut keep))
            })?;
            float_sites.push(sites);
        }
        // Quantized path, site by site, each site behind the corrected earlier ones.
        let block = quant.block_mut(i)?;
        let mut state: Vec<SiteState> = x_quant.iter().map(|x| SiteState::new(x.clone())).collect();
        for site in InputSite::ALL {
            let consumers = site.consumers();
            let d_in = block.linear(consumers[0]).weight.dims()[0];
            let mut means = InputMeans::new(d_in);
            for (b, s) in state.iter_mut().enumerate() {
                let x = s.input_of(site, block, &rope)?;
                let x = match &block.linear(consumers[0]).input_quant {
                    Some(q) => q.try_forward(x)?,
                    None => x,
                };
                means.observe(&float_sites[b][&site], Some(&x))?;
            }
            for &slot in consumers {
                let w = float_block.linear(slot).weight.val();
                let layer = block.linear_mut(slot);
                let delta = bias_correction(&w, &layer.weight.val(), &means)?;
                // δ assumes equal biases on both sides: add any difference.
                let bias = |b: &Option<Param<Tensor<1>>>| b.as_ref().map(|p| p.val());
                let delta = match (bias(&float_block.linear(slot).bias), bias(&layer.bias)) {
                    (Some(f), Some(q)) => delta + f - q.clone(),
                    (Some(f), None) => delta + f,
                    (None, Some(q)) => delta - q.clone(),
                    (None, None) => delta,
                };
                let d_out = delta.dims()[0];
                let rms = (delta.clone().powi_scalar(2).sum().into_scalar::<f32>() as f64
                    / d_out as f64)
                    .sqrt();
                let new = match &layer.bias {
                    Some(q) => q.val() + delta,
                    None => delta,
                };
                layer.bias = Some(Param::from_tensor(new));
                report.layers.push((hf_weight_name(i, slot), rms));
            }
            if i == 0 && site == InputSite::Qkv {
                report.tokens = means.tokens();
            }
        }
        for (x, s) in x_quant.iter_mut().zip(state) {
            *x = s.output(block)?;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
