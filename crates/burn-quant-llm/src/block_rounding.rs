//! Block-wise learned rounding (AutoRound) of a [`LlamaModel`], the reference's form: every
//! decoder block's seven linear weights learn their rounding offsets and clipping factors
//! together, by sign-SGD on the block's output error, with Burn autodiff through the real
//! block forward ([`DecoderBlock::forward`]: online rotations, KV and input quantizers
//! included).
//!
//! For block `i`: the **targets** are the float block's outputs on the float model's inputs
//! (every quantizer off), the **inputs** are the outputs of the already-quantized blocks
//! `0..i` (what the deployed model feeds block `i`), per calibration window. Each iteration
//! draws [`AutoRound::batch_windows`] windows, runs a copy of the block on the autodiff twin of
//! the model's device with the soft weights `Ŵ(V, α)`, and takes the mean squared error
//! against the targets. The quantized block then produces the next block's inputs.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use burn_quant_ptq::{AutoRound, BlockWeight};

use crate::block::LinearSlot;
use crate::error::{LlmError, Result};
use crate::model::LlamaModel;
use crate::pipeline::{BlockProgress, PtqConfig, PtqResult, PtqTimings, hf_weight_name};

/// Runs [`AutoRound`] block by block over `model` (see the module docs); called by
/// [`crate::quantize_llama`] when the configured algorithm is AutoRound.
pub(crate) fn autoround_model(
    model: &mut LlamaModel,
    windows: &[Vec<u32>],
    config: &PtqConfig,
    autoround: &AutoRound,
    progress: &mut dyn FnMut(&BlockProgress),
) -> Result<PtqResult> {
    let start = Instant::now();
    let mut timings = PtqTimings::default();
    let mut result = PtqResult {
        weights: BTreeMap::new(),
        layers: vec![],
        learned: vec![],
        learned_flops: 0.0,
        timings: PtqTimings::default(),
    };
    let seq = windows.first().map_or(0, Vec::len);
    if windows.is_empty() && autoround.iterations > 0 {
        return Err(LlmError::Calibration(
            "no calibration windows: AutoRound needs data".into(),
        ));
    }
    if windows.iter().any(|w| w.len() != seq || w.is_empty()) {
        return Err(LlmError::Calibration(
            "calibration windows must be non-empty and of one length".into(),
        ));
    }
    let chunk = config.batch_windows.max(1);
    let device = model.device();
    let train = device.clone().autodiff();
    let rope = model.rope(seq.max(1))?;
    let rope_train = model.rope_on(seq.max(1), &train)?;

    // Block inputs of every window, `[windows, seq, d_model]`: float and quantized path.
    let t = Instant::now();
    let mut x_float = {
        let parts = windows
            .chunks(chunk)
            .map(|c| {
                let rows: Vec<&[u32]> = c.iter().map(Vec::as_slice).collect();
                model.embed(model.tokens(&rows)?)
            })
            .collect::<Result<Vec<_>>>()?;
        cat(parts)
    };
    let mut x_quant = x_float.clone();
    timings.forward += t.elapsed();

    let blocks = model.num_blocks();
    for i in 0..blocks {
        let block_start = Instant::now();
        let (Some(xf), Some(xq)) = (x_float.clone(), x_quant.clone()) else {
            // No windows and no iterations: RTN through AutoRound, block by block.
            round_block(model, i, config, autoround, 0, None, &mut result)?;
            continue;
        };
        // Targets: the float block on the float path, every quantizer off.
        let t = Instant::now();
        let float_block = model.block(i)?.clone();
        let y_float = cat(
            split(xf, chunk)
                .into_iter()
                .map(|x| {
                    burn_quant_nn::without_quantization(|| float_block.forward(x, &rope, None))
                })
                .collect::<Result<Vec<_>>>()?,
        )
        .expect("at least one window");
        timings.forward += t.elapsed();

        let t = Instant::now();
        let mut trained = model.block(i)?.clone().to_device(&train);
        let mut loss = |soft: &[Tensor<2>], batch: &[usize]| -> Result<Tensor<1>> {
            for (slot, w) in LinearSlot::ALL.iter().zip(soft) {
                trained.set_linear_weight(*slot, w.clone())?;
            }
            let ids: Vec<i64> = batch.iter().map(|&b| b as i64).collect();
            let index = Tensor::<1, Int>::from_data(TensorData::new(ids, [batch.len()]), &device);
            let x = xq.clone().select(0, index.clone()).to_device(&train);
            let y = y_float.clone().select(0, index).to_device(&train);
            let out = trained.forward(x, &rope_train, None)?;
            Ok((out - y).powi_scalar(2).mean())
        };
        round_block(
            model,
            i,
            config,
            autoround,
            windows.len(),
            Some(&mut loss),
            &mut result,
        )?;
        timings.algorithm += t.elapsed();
        let block = model.block(i)?;
        let params: usize = LinearSlot::ALL
            .iter()
            .map(|&s| block.linear(s).weight.dims().iter().product::<usize>())
            .sum();
        let d_attn = block.self_attn.n_heads * block.self_attn.head_dim;
        let per_token = 3.0 * (2.0 * params as f64 + 4.0 * (seq * d_attn) as f64);
        let tokens = (autoround.batch_windows.min(windows.len()) * seq) as f64;
        result.learned_flops += autoround.iterations as f64 * tokens * per_token;

        // The quantized block feeds the next one.
        let t = Instant::now();
        let block = model.block(i)?;
        x_quant = cat(
            split(x_quant.expect("checked above"), chunk)
                .into_iter()
                .map(|x| block.forward(x, &rope, None))
                .collect::<Result<Vec<_>>>()?,
        );
        x_float = Some(y_float);
        timings.forward += t.elapsed();
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

/// The loss closure [`AutoRound::quantize_block`] trains against.
type BlockLoss<'a> = &'a mut dyn FnMut(&[Tensor<2>], &[usize]) -> Result<Tensor<1>>;

/// Learns block `i`'s rounding against `loss` (RTN-equivalent without one), writes the
/// dequantized weights into the model and records the results.
fn round_block(
    model: &mut LlamaModel,
    i: usize,
    config: &PtqConfig,
    autoround: &AutoRound,
    windows: usize,
    loss: Option<BlockLoss<'_>>,
    result: &mut PtqResult,
) -> Result<()> {
    let block = model.block_mut(i)?;
    let weights: Vec<BlockWeight> = LinearSlot::ALL
        .iter()
        .map(|&slot| BlockWeight {
            name: hf_weight_name(i, slot),
            weight: block.linear(slot).weight.val(),
            spec: config.weights,
        })
        .collect();
    let train = block.linear(LinearSlot::Q).weight.device().autodiff();
    let mut none = |_: &[Tensor<2>], _: &[usize]| -> Result<Tensor<1>> {
        Err(LlmError::Calibration("AutoRound needs data".into()))
    };
    let (ar, loss): (AutoRound, BlockLoss<'_>) = match loss {
        Some(l) => (*autoround, l),
        None => (autoround.with_iterations(0), &mut none),
    };
    let outcome = ar.quantize_block(&weights, windows, &train, loss)?;
    for ((name, q), slot) in outcome.weights.into_iter().zip(LinearSlot::ALL) {
        block.set_linear_weight(slot, q.tensor.dequantize())?;
        result.layers.push((name.clone(), q.report));
        result.weights.insert(name, q.tensor);
    }
    result.learned.push((i, outcome.report));
    Ok(())
}

/// Concatenates along the window axis (`None` for no parts).
fn cat(parts: Vec<Tensor<3>>) -> Option<Tensor<3>> {
    (!parts.is_empty()).then(|| Tensor::cat(parts, 0))
}

/// Splits along the window axis into chunks of at most `chunk` windows.
fn split(x: Tensor<3>, chunk: usize) -> Vec<Tensor<3>> {
    let n = x.dims()[0];
    (0..n)
        .step_by(chunk)
        .map(|s| x.clone().slice([s..(s + chunk).min(n)]))
        .collect()
}
