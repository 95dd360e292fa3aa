//! Stage 1 × Stage 2 × format from Rust: W4A4 with a 4-bit KV cache on SmolLM2, with no
//! Stage 1, with SmoothQuant and with HIP (+ the query/key rotation), each followed by RTN.
//!
//! ```text
//! cargo run --release --example stage1_composition [--windows N]
//! ```
//!
//! Each recipe is the same five library calls: `apply_stage1` (function-preserving: the float
//! logits are checked unchanged), `attach_input_quantizers` (dynamic per-token int4 on every block
//! linear input), `quantize_kv` (int4 keys and values per head and token), `quantize_llama`
//! (the Stage 2 algorithm) and `perplexity_of_text`. `burnq ptq-llm --stage1 hip --stage1
//! rotate_qk --input-bits 4 --input-granularity token --kv int4 --algo rtn` runs the same.

use std::time::Instant;

use burn::tensor::Device;
use burn_quant::QuantSpec;
use burn_quant_llm::pipeline::{InputQuant, attach_input_quantizers};
use burn_quant_llm::stage1::{KvQuant, Stage1Step, apply_stage1, quantize_kv};
use burn_quant_llm::{
    CALIBRATION_TEXT, CalibrationConfig, EVAL_TEXT, PerplexityConfig, PtqConfig,
    calibration_windows_from_text, load_with_tokenizer, perplexity_of_text, quantize_llama,
};

fn main() -> burn_quant::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut windows = 4usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--windows" => windows = args.next().ok_or("--windows N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (Some(model_path), Some(eval), Some(calib)) = (
        support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        support::shared_data(EVAL_TEXT),
        support::shared_data(CALIBRATION_TEXT),
    ) else {
        return Ok(());
    };
    let m = load_with_tokenizer(&model_path, &Device::flex())?;
    let eval = std::fs::read_to_string(eval)?;
    let calib = std::fs::read_to_string(calib)?;
    let ppl_cfg = PerplexityConfig::default().with_num_windows(Some(windows));
    let calib_windows = calibration_windows_from_text(
        &m.tokenizer,
        &calib,
        &CalibrationConfig::default().with_num_windows(windows),
    )?;
    let fp32 = perplexity_of_text(&m.model, &m.tokenizer, &eval, &ppl_cfg)?.perplexity;
    println!("FP32 perplexity ({windows} windows): {fp32:.3}");
    println!(
        "{:<24} {:>12} {:>10} {:>12}",
        "Stage 1 (then RTN)", "W4A4 KV4", "stage 1", "float Δ"
    );
    let probe: Vec<&[u32]> = calib_windows[..1].iter().map(|w| &w[..128]).collect();
    let float_logits = m.model.forward(m.model.tokens(&probe)?)?;
    for names in [vec![], vec!["smoothquant"], vec!["hip", "rotate_qk"]] {
        let steps = names
            .iter()
            .map(|n| Stage1Step::from_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut model = m.model.clone();
        let t = Instant::now();
        apply_stage1(&mut model, &steps, &calib_windows, 4)?;
        let stage1_secs = t.elapsed().as_secs_f64();
        // Function-preserving: the float logits do not move.
        let logits = model.forward(model.tokens(&probe)?)?;
        let delta = (logits - float_logits.clone())
            .abs()
            .max()
            .into_scalar::<f32>();
        let mut model = attach_input_quantizers(
            model,
            InputQuant::PerTokenDynamic { bits: 4 },
            &calib_windows,
            4,
        )?;
        quantize_kv(&mut model, &KvQuant::preset("int4")?)?;
        let config = PtqConfig {
            weights: QuantSpec::int4_weight_per_group(128),
            algorithm: "rtn".parse()?,
            batch_windows: 4,
        };
        quantize_llama(&mut model, &calib_windows, &config, &mut |_| {})?;
        let ppl = perplexity_of_text(&model, &m.tokenizer, &eval, &ppl_cfg)?.perplexity;
        let label = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(" + ")
        };
        println!("{label:<24} {ppl:>12.3} {stage1_secs:>9.1}s {delta:>12.2e}");
    }
    Ok(())
}
