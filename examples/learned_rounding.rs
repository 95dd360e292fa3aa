//! Learned rounding on SmolLM2 from Rust: AutoRound (block-wise, sign-SGD through Burn
//! autodiff), then bias correction, against RTN — and what AutoRound's time goes into.
//!
//! ```text
//! cargo run --release --example learned_rounding [--blocks N] [--iters N] [--batch N]
//! ```
//!
//! The model is cut to its first `--blocks` decoder blocks (2 by default) so the example runs
//! in about a minute; it prints the block output error of RTN, AutoRound and AutoRound + bias
//! correction against the float blocks on the calibration windows, then the cost per
//! iteration (forward+backward vs building the soft weights), the FLOPs, the throughput, and
//! the whole-model time at the measured rate for the 30 blocks of SmolLM2 and for the
//! reference protocol (200 iterations, 8 windows of 2048 tokens). `burnq ptq-llm --algo
//! autoround --bias-correction` runs the whole model.

use std::time::Instant;

use burn::tensor::{Device, Tensor};
use burn_quant::QuantSpec;
use burn_quant_llm::{
    CALIBRATION_TEXT, CalibrationConfig, LlamaModel, PtqConfig, calibration_windows_from_text,
    correct_biases, load_with_tokenizer, quantize_llama,
};
use burn_quant_ptq::{Algorithm, AutoRound, Rtn};

/// Mean squared difference of the last block's output against the float model's.
fn output_error(float: &LlamaModel, quant: &LlamaModel, windows: &[Vec<u32>]) -> f64 {
    let rows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let rope = float.rope(windows[0].len()).expect("valid length");
    let run = |m: &LlamaModel| -> Vec<f32> {
        let mut x: Tensor<3> = m
            .embed(m.tokens(&rows).expect("ids"))
            .expect("embedding");
        for b in &m.layers {
            x = b.forward(x, &rope, None).expect("block");
        }
        x.try_into_vec_as::<f32>().expect("f32")
    };
    let (a, b) = (run(quant), run(float));
    a.iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64
}

fn main() -> burn_quant::Result<()> {
    let (mut blocks, mut iters, mut batch) = (2usize, 50usize, 2usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || -> burn_quant::Result<usize> {
            let text = args.next().ok_or(format!("{a} N"))?;
            Ok(text.parse().map_err(|e| format!("{a} {text}: {e}"))?)
        };
        match a.as_str() {
            "--blocks" => blocks = value()?,
            "--iters" => iters = value()?,
            "--batch" => batch = value()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (Some(model_path), Some(calib)) = (
        support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        support::shared_data(CALIBRATION_TEXT),
    ) else {
        return Ok(());
    };
    let m = load_with_tokenizer(&model_path, &Device::flex())?;
    let total_blocks = m.model.num_blocks();
    let calib = std::fs::read_to_string(calib)?;
    // The pipeline's default calibration set: 16 windows of 512 tokens.
    let windows =
        calibration_windows_from_text(&m.tokenizer, &calib, &CalibrationConfig::default())?;
    let mut float = m.model.clone();
    float.layers.truncate(blocks);
    let spec = QuantSpec::int4_weight_per_group(128).with_bits(3);
    let run = |algorithm: Algorithm| -> burn_quant::Result<_> {
        let mut model = float.clone();
        let config = PtqConfig {
            weights: spec,
            algorithm,
            batch_windows: 4,
        };
        let t = Instant::now();
        let r = quantize_llama(&mut model, &windows, &config, &mut |_| {})?;
        Ok((model, r, t.elapsed().as_secs_f64()))
    };
    let (rtn, _, _) = run(Algorithm::Rtn(Rtn))?;
    let autoround = AutoRound::default()
        .with_iterations(iters)
        .with_batch_windows(batch);
    let (mut ar, result, secs) = run(Algorithm::AutoRound(autoround))?;
    println!(
        "W3 g128, first {blocks} of {total_blocks} blocks, {} windows × {} tokens:",
        windows.len(),
        windows[0].len()
    );
    println!("  block output MSE, RTN        {:.4e}", output_error(&float, &rtn, &windows));
    let mut rtn_bc = rtn.clone();
    correct_biases(&float, &mut rtn_bc, &windows, 4)?;
    println!(
        "  block output MSE, RTN + bias correction {:.4e}",
        output_error(&float, &rtn_bc, &windows)
    );
    println!("  block output MSE, AutoRound  {:.4e}", output_error(&float, &ar, &windows));
    let bc = correct_biases(&float, &mut ar, &windows, 4)?;
    println!(
        "  block output MSE, + bias correction {:.4e} ({:.1} s)",
        output_error(&float, &ar, &windows),
        bc.seconds
    );

    for (block, r) in &result.learned {
        println!(
            "  block {block}: batch loss {:.4e} (RTN, first batch) → best {:.4e} at iteration {} of {}",
            r.initial_loss, r.best_loss, r.best_iteration, r.iterations
        );
    }

    // Where AutoRound's time goes.
    let n = result.learned.len() as f64;
    let it = (iters as f64 * n).max(1.0);
    let fb: f64 = result
        .learned
        .iter()
        .map(|(_, r)| r.forward_backward.as_secs_f64())
        .sum();
    let soft: f64 = result
        .learned
        .iter()
        .map(|(_, r)| r.quantizer.as_secs_f64())
        .sum();
    let per_block = secs / n;
    println!(
        "AutoRound: {iters} iterations × {batch} windows per block; {per_block:.1} s per block \
         ({:.0} ms per iteration: forward+backward {:.0} ms, soft weights + sign steps {:.0} ms)",
        1e3 * (fb + soft) / it,
        1e3 * fb / it,
        1e3 * soft / it
    );
    println!(
        "  {:.2} TFLOP of forward+backward at {:.1} GFLOP/s",
        result.learned_flops / 1e12,
        result.learned_flops / fb.max(1e-9) / 1e9
    );
    println!(
        "  whole model ({total_blocks} blocks) at this rate: {:.1} min",
        per_block * total_blocks as f64 / 60.0
    );
    // The reference protocol has 16× the tokens per iteration (8 windows of 2048) and 4× the
    // iterations; the attention term grows with the window too, the rest linearly.
    let flops_per_iter = result.learned_flops / it;
    let tokens = (batch.min(windows.len()) * windows[0].len()) as f64;
    let per_token = flops_per_iter / tokens;
    let linear_part = 3.0 * 2.0 * {
        let b = &float.layers[0];
        burn_quant_llm::LinearSlot::ALL
            .iter()
            .map(|&s| b.linear(s).weight.dims().iter().product::<usize>())
            .sum::<usize>() as f64
    };
    let attn_per_token_per_pos = (per_token - linear_part) / windows[0].len() as f64;
    let reference_per_token = linear_part + attn_per_token_per_pos * 2048.0;
    let reference_flops = reference_per_token * 8.0 * 2048.0 * 200.0 * total_blocks as f64;
    println!(
        "  reference protocol (200 iterations, 8 × 2048 tokens), whole model: {:.0} TFLOP, \
         {:.1} h at this machine's rate",
        reference_flops / 1e12,
        reference_flops / (result.learned_flops / fb.max(1e-9)) / 3600.0
    );
    Ok(())
}
