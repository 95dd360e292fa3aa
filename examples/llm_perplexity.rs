//! FP32 perplexity and a greedy generation of a Llama-family model.
//!
//! ```text
//! cargo run --release --example llm_perplexity [MODEL] [--windows N] [--batch B]
//! ```
//!
//! MODEL is a Hugging Face directory or a llama `.gguf` file with `tokenizer.json` beside it
//! (default: the shared SmolLM2-135M-Instruct). The protocol is burn-quant-llm's default
//! (Brevitas's): the evaluation slice of Pride and Prejudice tokenized as one string, 16
//! non-overlapping windows of 512 tokens, tokens 256..512 of each scored, exp of the mean of
//! the per-window mean cross-entropies. Hugging Face transformers gives 20.11 on the FP32
//! SmolLM2-135M-Instruct (the dequantized GGUF).

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use burn_quant_llm::{
    EVAL_TEXT, LlamaTokenizer, PerplexityConfig, generate_text, load_with_tokenizer,
    perplexity_of_text,
};

fn main() -> burn_quant::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut model_path = None;
    let mut cfg = PerplexityConfig::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--windows" => cfg.num_windows = Some(args.next().ok_or("--windows N")?.parse()?),
            "--batch" => cfg.batch_size = args.next().ok_or("--batch B")?.parse()?,
            _ => model_path = Some(PathBuf::from(a)),
        }
    }
    let model_path = match model_path {
        Some(p) => p,
        None => match support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        {
            Some(p) => p,
            None => return Ok(()),
        },
    };
    let Some(text_path) = support::shared_data(EVAL_TEXT) else {
        return Ok(());
    };
    let device = Device::flex();

    let t = Instant::now();
    let m = load_with_tokenizer(&model_path, &device)?;
    let hp = m.model.hparams();
    println!(
        "model: {} ({} blocks, d_model {}, {} heads / {} kv heads, vocab {}), loaded in {:.2} s",
        model_path.display(),
        hp.num_hidden_layers,
        hp.hidden_size,
        hp.num_attention_heads,
        hp.num_key_value_heads,
        hp.vocab_size,
        t.elapsed().as_secs_f64()
    );

    let text = std::fs::read_to_string(&text_path)?;
    let t = Instant::now();
    let report = perplexity_of_text(&m.model, &m.tokenizer, &text, &cfg)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "perplexity: {:.4} ({} windows of {}, tokens {}..{} scored, {} tokens; batch {}) in {:.1} s",
        report.perplexity,
        report.window_nll.len(),
        cfg.window,
        cfg.score_from,
        cfg.window,
        report.tokens_scored,
        cfg.batch_size,
        secs
    );

    for (label, prompt) in [
        ("plain", "The capital of France is".to_string()),
        (
            "chat",
            LlamaTokenizer::chat_prompt(None, "What is the capital of France?"),
        ),
    ] {
        let t = Instant::now();
        let out = generate_text(&m.model, &m.tokenizer, &prompt, 32)?;
        println!(
            "generation ({label}, greedy, {:.2} s): {prompt:?} -> {out:?}",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
