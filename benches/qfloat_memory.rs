//! Memory and forward time of float, fake-quantized and Burn-`QFloat` models on `Device::flex()`.
//!
//! Run: `cargo bench --bench qfloat_memory` (add `-- --mlp-only` to skip the LLM).
//!
//! Models: the quickstart MLP (`768 → 256 → 10`, stock `burn::nn::Linear`, seeded initial
//! weights: memory and time do not depend on training) on a `[256, 768]` batch, and
//! SmolLM2-135M-Instruct (the shared GGUF, dequantized to f32; our `QuantLinear` layers; every
//! block projection and the LM head quantized, the embedding table kept f32) on one window of
//! 64 tokens. Skipped with a notice when the shared data is absent.
//!
//! Variants: `float`; `fake-*`, the float model with each weight replaced by its dequantized
//! codes (what fake-quantization tools hand back); `qfloat-*`, the same codes as Burn `QFloat`
//! tensors (`burn_quant::export::to_qfloat_model`). Specs: int8 per output channel, int4 per
//! group of 32 inputs (round to nearest, absmax scales).
//!
//! Each variant runs in its own child process (this binary re-executed with `--child`), so
//! that measurements are independent: the child loads, quantizes, converts, drops everything
//! else, then reports
//! - `params`: bytes the parameters hold, from their dtypes and shapes
//!   (`burn_quant::export::param_bytes`);
//! - `rss`: the child's resident memory (VmRSS) at rest minus its resident memory before the
//!   model was loaded;
//! - `peak`: the highest resident memory during the forward passes (VmHWM after resetting it
//!   through `/proc/self/clear_refs`) minus the same baseline;
//! - `fwd`: median forward time.
//!
//! Children run with `MALLOC_MMAP_THRESHOLD_=65536`, so that glibc maps every buffer of 64 KiB
//! or more separately and returns it to the system when freed: the resident memory at rest is
//! the model's, not the allocator's free lists left over from loading. The parent prints each
//! quantized variant's ratios to float and the largest logit difference between `qfloat-*`
//! and `fake-*` of the same spec (0 = the converted model computes exactly what the
//! fake-quantized one does).

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_quant::core::{QuantSpec, QuantTensor, quantize};
use burn_quant::export::burnpack::BurnQuantOptions;
use burn_quant::export::{param_bytes, to_qfloat_model};
use burn_quant::nn::{AnyQuantTensor, QuantPlan, QuantWeight, QuantizedModel, quantize_model};
use burn_quant_cli::model::MlpConfig;
use burn_quant_llm::{LinearSlot, LlamaModel, hf_weight_name, load_model};
use support::median_secs;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const GGUF: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
const VARIANTS: [&str; 5] = [
    "float",
    "fake-int8",
    "qfloat-int8",
    "fake-int4g32",
    "qfloat-int4g32",
];
const MLP_BATCH: usize = 256;
const MLP_REPS: usize = 50;
const LLM_REPS: usize = 3;
const LLM_TOKENS: usize = 64;

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let (model, variant, out) = (&args[i + 1], &args[i + 2], PathBuf::from(&args[i + 3]));
        return child(model, variant, &out);
    }
    let out = std::env::temp_dir().join(format!("burnq-qfloat-memory-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let mut models = vec!["mlp"];
    if !args.iter().any(|a| a == "--mlp-only") && support::shared_data(GGUF).is_some() {
        models.push("llama");
    }
    for model in models {
        let mut rows = vec![];
        for variant in VARIANTS {
            let exe = std::env::current_exe()?;
            let output = Command::new(exe)
                .args(["--child", model, variant])
                .arg(&out)
                .env("MALLOC_MMAP_THRESHOLD_", "65536")
                .output()?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
                return Err(format!(
                    "{model} {variant}: child failed: {}{}",
                    stdout,
                    String::from_utf8_lossy(&output.stderr)
                )
                .into());
            };
            let v: Vec<f64> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            rows.push((variant, v));
        }
        report(model, &rows, &out)?;
    }
    std::fs::remove_dir_all(&out).ok();
    Ok(())
}

fn report(model: &str, rows: &[(&str, Vec<f64>)], out: &Path) -> BoxResult<()> {
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let float = &rows[0].1;
    println!(
        "\n{model} (flex; params/rss/peak in MiB, ratios to float in parentheses; forward: {})",
        if model == "mlp" {
            format!("[{MLP_BATCH}, 768] batch, median of {MLP_REPS}")
        } else {
            format!("1 × {LLM_TOKENS} tokens, median of {LLM_REPS}")
        }
    );
    println!(
        "{:<15} {:>16} {:>16} {:>16} {:>18} {:>16} {:>15}",
        "variant",
        "params",
        "rss at rest",
        "peak in forward",
        "forward ms",
        "qfloat weights",
        "max |Δ| vs fake"
    );
    for (variant, v) in rows {
        let ratio = |i: usize| v[i] / float[i];
        let diff = match variant.strip_prefix("qfloat-") {
            Some(spec) => {
                let a = read_f32(&out.join(format!("{model}-{variant}.bin")))?;
                let b = read_f32(&out.join(format!("{model}-fake-{spec}.bin")))?;
                let d = a
                    .iter()
                    .zip(&b)
                    .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
                format!("{d:.3e}")
            }
            None => "-".into(),
        };
        let qweights = if v[4] > 0.0 {
            format!("{:.2} of {:.2}", mib(v[4]), mib(v[5]))
        } else {
            "-".into()
        };
        println!(
            "{:<15} {:>8.2} ({:>4.2}) {:>8.2} ({:>4.2}) {:>8.2} ({:>4.2}) {:>10.2} ({:>4.2}) {:>16} {:>15}",
            variant,
            mib(v[0]),
            ratio(0),
            mib(v[1]),
            ratio(1),
            mib(v[2]),
            ratio(2),
            v[3] * 1e3,
            ratio(3),
            qweights,
            diff
        );
    }
    Ok(())
}

fn read_f32(path: &Path) -> BoxResult<Vec<f32>> {
    Ok(std::fs::read(path)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn proc_status_bytes(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kb| kb * 1024.0)
}

fn spec_of(variant: &str) -> Option<QuantSpec> {
    match variant.split_once('-').map(|(_, s)| s) {
        Some("int8") => Some(QuantSpec::int8_weight_per_output_channel()),
        Some("int4g32") => Some(QuantSpec::int4_weight_per_input_group(32)),
        _ => None,
    }
}

/// Deterministic values in [-1, 1).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn child(model: &str, variant: &str, out: &Path) -> BoxResult<()> {
    let device = Device::flex();
    // Start the backend (thread pool, allocator arenas) before the baseline.
    let warm = Tensor::<2>::ones([64, 64], &device);
    let _ = warm.clone().matmul(warm).into_data();
    let base = proc_status_bytes("VmRSS:");
    let spec = spec_of(variant);
    let qfloat = variant.starts_with("qfloat");
    let opts = BurnQuantOptions::default();

    let (params, rss, peak, fwd, logits) = match model {
        "mlp" => {
            let mut mlp = MlpConfig {
                d_input: 768,
                d_hidden: 256,
                d_output: 10,
            }
            .init(43, &device);
            if let Some(spec) = spec {
                let plan = QuantPlan::new().rule("**.weight", spec);
                let QuantizedModel { model, weights } = quantize_model(mlp, &plan)?;
                mlp = if qfloat {
                    to_qfloat_model(model, &weights, &opts)?
                } else {
                    model
                };
            }
            let x = Tensor::<2>::from_data(
                TensorData::new(uniform(MLP_BATCH * 768, 5), [MLP_BATCH, 768]),
                &device,
            );
            let params = param_bytes(&mlp);
            let rest = proc_status_bytes("VmRSS:") - base;
            let run = || mlp.forward(x.clone()).into_data();
            let logits = run();
            reset_peak();
            let fwd = median_secs(MLP_REPS, || {
                run();
            });
            let peak = proc_status_bytes("VmHWM:") - base;
            (params, rest, peak, fwd, logits)
        }
        "llama" => {
            let path = support::shared_data(GGUF).ok_or("shared data absent")?;
            let mut llm = load_model(&path, &device)?;
            if let Some(spec) = spec {
                llm = quantize_llama_rtn(llm, &spec, qfloat, &opts)?;
            }
            let ids: Vec<i64> = (0..LLM_TOKENS as i64)
                .map(|i| (i * 7919 + 11) % 49152)
                .collect();
            let tokens =
                Tensor::<2, Int>::from_data(TensorData::new(ids, [1, LLM_TOKENS]), &device);
            let params = param_bytes(&llm);
            let rest = proc_status_bytes("VmRSS:") - base;
            let run = || -> BoxResult<TensorData> { Ok(llm.forward(tokens.clone())?.into_data()) };
            let logits = run()?;
            reset_peak();
            let fwd = median_secs(LLM_REPS, || {
                run().expect("the first forward succeeded");
            });
            let peak = proc_status_bytes("VmHWM:") - base;
            (params, rest, peak, fwd, logits)
        }
        other => return Err(format!("unknown model {other}").into()),
    };
    let values: Vec<f32> = logits.try_into_vec_as::<f32>()?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out.join(format!("{model}-{variant}.bin")), bytes)?;
    println!(
        "RESULT {} {rss} {peak} {fwd} {} {}",
        params.total(),
        params.quantized_bytes,
        params.quantized_as_f32_bytes
    );
    Ok(())
}

/// Resets VmHWM to the current resident size (Linux ≥ 4.0), so that it then records the peak
/// of what follows.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").ok();
}

/// Every block projection and the LM head quantized with `spec` (round to nearest), one weight
/// at a time so that only one weight's codes exist at once: replaced by its dequantized value
/// (fake-quant) or by its Burn `QFloat` tensor.
fn quantize_llama_rtn(
    mut llm: LlamaModel,
    spec: &QuantSpec,
    qfloat: bool,
    opts: &BurnQuantOptions,
) -> BoxResult<LlamaModel> {
    let mut names: Vec<(String, Option<(usize, LinearSlot)>)> = vec![];
    for b in 0..llm.num_blocks() {
        for slot in LinearSlot::ALL {
            names.push((hf_weight_name(b, slot), Some((b, slot))));
        }
    }
    names.push(("lm_head.weight".into(), None));
    for (name, at) in names {
        let param = match at {
            Some((b, slot)) => llm.block(b)?.linear(slot).weight.clone(),
            None => llm.lm_head.weight.clone(),
        };
        let w = param.val();
        let resolved = spec.resolve_for(burn_quant::core::WeightLayout::Linear, &w.dims())?;
        let q: QuantTensor<2> = quantize(w, &resolved)?;
        drop(param);
        if qfloat {
            let weight = QuantWeight {
                path: name,
                id: match at {
                    Some((b, slot)) => llm.block(b)?.linear(slot).weight.id,
                    None => llm.lm_head.weight.id,
                },
                rule: 0,
                tensor: AnyQuantTensor::Rank2(q),
            };
            llm = to_qfloat_model(llm, &[weight], opts)?;
        } else {
            let deq = q.dequantize();
            match at {
                Some((b, slot)) => llm.block_mut(b)?.set_linear_weight(slot, deq)?,
                None => {
                    let id = llm.lm_head.weight.id;
                    llm.lm_head.weight = Param::initialized(id, deq);
                }
            }
        }
    }
    Ok(llm)
}
