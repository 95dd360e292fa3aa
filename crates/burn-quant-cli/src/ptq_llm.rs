//! `burnq ptq-llm`: post-training quantization of a Llama-family model (Hugging Face directory
//! or llama GGUF), block by block with a Stage-2 algorithm, then perplexity under the fixed
//! windowed protocol, with time, peak memory and weight bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use burn_quant::{
    Format, Granularity, QuantSpec, ScaleQuant, ScaleRestriction, ScaleStat, ZeroPoint,
};
use burn_quant_llm::pipeline::InputQuant;
use burn_quant_llm::{
    CalibrationConfig, LlamaModel, LlamaTokenizer, PerplexityConfig, PtqConfig,
    calibration_windows_from_text, load_with_tokenizer, perplexity_of_text, quantize_model,
};
use burn_quant_ptq::Algorithm;
use serde::Deserialize;

use crate::error::{CliError, Result};
use crate::table;

/// Everything `ptq-llm` needs besides the model path; the command-line flags or a TOML/JSON
/// recipe (`--config`) with the same field names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PtqLlmOptions {
    /// Weight bits (signed integer grid unless `asymmetric`).
    pub weight_bits: u8,
    /// Group size along the input axis; 0 = one scale per output channel.
    pub group_size: usize,
    /// Unsigned grid with a zero-point per group (min-max).
    pub asymmetric: bool,
    /// Scales (and offsets) stored as f16, ggml's legacy layout: with `asymmetric` and groups
    /// of 32 this is exactly Q4_1's structure (grid over [min, max], real-valued offset).
    pub f16_scales: bool,
    /// `rtn`, `gptq`, `gpfq`, `gptaq` or `qronos`.
    pub algo: String,
    /// Process input channels by decreasing Hessian diagonal (GPTQ family).
    pub act_order: bool,
    /// Activation (linear input) bits; `None` keeps activations float.
    pub input_bits: Option<u8>,
    /// `tensor` (static, calibrated) or `token` (dynamic) activation scales.
    pub input_granularity: String,
    /// Statistic of static (`tensor`) activation scales: `absmax`, `percentile` (99.999, as
    /// Brevitas), `percentile:Q` or `mse`.
    pub input_stat: String,
    /// Attach (and calibrate) the activation quantizers before the weights, so the weight
    /// algorithm sees quantized inputs (Brevitas's `use_quant_activations`); needs
    /// `input_bits`. Otherwise they are attached after the weights are quantized.
    pub use_quant_activations: bool,
    /// Calibration windows drawn from the calibration text.
    pub calib_windows: usize,
    /// Tokens per calibration window.
    pub calib_window: usize,
    /// Seed of the calibration sampler.
    pub seed: u64,
    /// Evaluation windows (`None`: the protocol's default, as many as the text holds up to 16).
    pub eval_windows: Option<usize>,
    /// Calibration windows per forward batch.
    pub batch_windows: usize,
    /// Also evaluate the float model (the FP32 row of the table).
    pub eval_float: bool,
    /// Write the quantized model as GGUF here, code for code (the weight spec must have a ggml
    /// structure, e.g. `--f16-scales --group-size 32` at 4, 5 or 8 bits).
    pub export: Option<PathBuf>,
}

impl Default for PtqLlmOptions {
    fn default() -> Self {
        Self {
            weight_bits: 4,
            group_size: 128,
            asymmetric: false,
            f16_scales: false,
            algo: "gptq".into(),
            act_order: false,
            input_bits: None,
            input_granularity: "tensor".into(),
            input_stat: "absmax".into(),
            use_quant_activations: false,
            calib_windows: 16,
            calib_window: 512,
            seed: 0,
            eval_windows: None,
            batch_windows: 4,
            eval_float: true,
            export: None,
        }
    }
}

impl PtqLlmOptions {
    /// Reads a recipe file (`.toml` or `.json`); unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
            what: path.display().to_string(),
            source,
        })?;
        let bad = |why: String| CliError::config("config", path.display(), why);
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
        } else {
            toml::from_str(&text).map_err(|e| bad(e.to_string()))
        }
    }

    /// The weight spec these options describe (Burn layout: groups along axis 0, channels on
    /// axis 1).
    pub fn weight_spec(&self) -> Result<QuantSpec> {
        if !(2..=8).contains(&self.weight_bits) {
            return Err(CliError::config(
                "weight_bits",
                self.weight_bits,
                "must be in 2..=8",
            ));
        }
        let granularity = if self.group_size == 0 {
            Granularity::PerChannel { axis: 1 }
        } else {
            Granularity::PerGroup {
                axis: 0,
                size: self.group_size,
            }
        };
        let spec = QuantSpec::new(Format::int(self.weight_bits), granularity);
        let spec = if self.asymmetric {
            spec.asymmetric()
        } else {
            spec
        };
        let spec = if self.f16_scales {
            spec.with_scale_restriction(ScaleRestriction::Quantized(ScaleQuant::F16))
        } else {
            spec
        };
        spec.validate().map_err(|source| CliError::Quant {
            recipe: "ptq-llm".into(),
            param: "weights".into(),
            source,
        })?;
        debug_assert!(
            spec.zero_point.is_asymmetric() == self.asymmetric
                || spec.zero_point == ZeroPoint::Symmetric
        );
        Ok(spec)
    }

    /// The algorithm these options select.
    pub fn algorithm(&self) -> Result<Algorithm> {
        let a: Algorithm = self.algo.parse().map_err(|e: burn_quant_ptq::PtqError| {
            CliError::config("algo", &self.algo, e.to_string())
        })?;
        Ok(a.with_act_order(self.act_order))
    }

    /// The statistic of static activation scales.
    pub fn input_scale_stat(&self) -> Result<ScaleStat> {
        let bad = |why: &str| CliError::config("input_stat", &self.input_stat, why.to_string());
        match self.input_stat.as_str() {
            "absmax" => Ok(ScaleStat::AbsMax),
            "mse" => Ok(ScaleStat::mse()),
            "percentile" => Ok(ScaleStat::Percentile { q: 99.999 }),
            other => match other.strip_prefix("percentile:").map(str::parse::<f32>) {
                Some(Ok(q)) if q > 0.0 && q <= 100.0 => Ok(ScaleStat::Percentile { q }),
                Some(_) => Err(bad("the percentile must be a number in (0, 100]")),
                None => Err(bad(
                    "expected `absmax`, `percentile`, `percentile:Q` or `mse`",
                )),
            },
        }
    }

    /// The activation quantization these options select.
    pub fn input_quant(&self) -> Result<Option<InputQuant>> {
        let Some(bits) = self.input_bits else {
            if self.use_quant_activations {
                return Err(CliError::config(
                    "use_quant_activations",
                    true,
                    "needs input_bits (activations to quantize)",
                ));
            }
            return Ok(None);
        };
        if !(2..=8).contains(&bits) {
            return Err(CliError::config("input_bits", bits, "must be in 2..=8"));
        }
        match self.input_granularity.as_str() {
            "tensor" => Ok(Some(InputQuant::PerTensorStatic {
                bits,
                stat: self.input_scale_stat()?,
            })),
            "token" => Ok(Some(InputQuant::PerTokenDynamic { bits })),
            other => Err(CliError::config(
                "input_granularity",
                other,
                "expected `tensor` (static) or `token` (dynamic)",
            )),
        }
    }
}

/// One row of the final table.
#[derive(Clone, Debug)]
pub struct PtqLlmRow {
    /// `FP32` or the recipe.
    pub label: String,
    /// Perplexity under the protocol.
    pub perplexity: f64,
    /// Quantization wall time (zero for FP32).
    pub quantize_time: Duration,
    /// Evaluation wall time.
    pub eval_time: Duration,
    /// Bytes of all weights (quantized layers at their spec's bits per weight, scales and
    /// zero-points included; the rest f32).
    pub weight_bytes: f64,
}

/// The report of a `ptq-llm` run.
#[derive(Clone, Debug)]
pub struct PtqLlmReport {
    /// FP32 (if evaluated) and the quantized model.
    pub rows: Vec<PtqLlmRow>,
    /// Time split of the quantization (forward passes, statistics, algorithm).
    pub timings: burn_quant_llm::PtqTimings,
    /// Time spent calibrating static activation scales (`None` without them: float or
    /// dynamic per-token activations need no calibration).
    pub input_calibration: Option<Duration>,
    /// Peak resident memory of the process (VmHWM), bytes, where the OS reports it.
    pub peak_rss: Option<u64>,
    /// Layers whose Hessian needed extra damping.
    pub damped_layers: usize,
}

impl std::fmt::Display for PtqLlmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.label.clone(),
                    format!("{:.3}", r.perplexity),
                    format!("{:.1} s", r.quantize_time.as_secs_f64()),
                    format!("{:.1} s", r.eval_time.as_secs_f64()),
                    format!("{:.1} MB", r.weight_bytes / 1e6),
                ]
            })
            .collect();
        f.write_str(&table::aligned(
            ["model", "perplexity", "quantize", "eval", "weights"],
            &rows,
        ))?;
        let t = &self.timings;
        writeln!(
            f,
            "quantization time: forward passes {:.1} s, statistics {:.1} s, algorithm {:.1} s, total {:.1} s",
            t.forward.as_secs_f64(),
            t.statistics.as_secs_f64(),
            t.algorithm.as_secs_f64(),
            t.total.as_secs_f64()
        )?;
        if let Some(t) = self.input_calibration {
            writeln!(
                f,
                "static activation scales: {:.1} s of calibration passes",
                t.as_secs_f64()
            )?;
        }
        if let Some(rss) = self.peak_rss {
            writeln!(f, "peak memory (VmHWM): {:.0} MB", rss as f64 / 1e6)?;
        }
        if self.damped_layers > 0 {
            writeln!(
                f,
                "layers that needed extra damping: {}",
                self.damped_layers
            )?;
        }
        Ok(())
    }
}

/// Peak resident set size of this process (Linux `/proc/self/status` VmHWM).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes of the model's weights: every block linear at `spec`'s bits per weight (or f32 when
/// `spec` is `None`), the embedding and norms at f32.
pub fn weight_bytes(model: &LlamaModel, spec: Option<&QuantSpec>) -> Result<f64> {
    let h = model.hparams();
    let mut linear = 0f64;
    let mut linear_elems = 0usize;
    for i in 0..model.num_blocks() {
        let block = model.block(i)?;
        for slot in burn_quant_llm::LinearSlot::ALL {
            let dims = block.linear(slot).weight.dims();
            let n = dims[0] * dims[1];
            linear_elems += n;
            linear += match spec {
                Some(s) => {
                    s.bits_per_element(&dims)
                        .map_err(|source| CliError::Quant {
                            recipe: "ptq-llm".into(),
                            param: slot.hf_name().into(),
                            source,
                        })?
                        * n as f64
                        / 8.0
                }
                None => 4.0 * n as f64,
            };
        }
    }
    let _ = linear_elems;
    let rest = h.vocab_size * h.hidden_size + (2 * model.num_blocks() + 1) * h.hidden_size;
    Ok(linear + 4.0 * rest as f64)
}

/// Runs `ptq-llm` on the model at `model_path` with text files `eval_text` and `calib_text`.
pub fn run(
    model_path: &Path,
    eval_text: &Path,
    calib_text: &Path,
    opts: &PtqLlmOptions,
    progress: &mut dyn FnMut(&burn_quant_llm::BlockProgress),
) -> Result<PtqLlmReport> {
    let spec = opts.weight_spec()?;
    let algorithm = opts.algorithm()?;
    let input_quant = opts.input_quant()?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CliError::Io {
            what: p.display().to_string(),
            source,
        })
    };
    let (eval, calib) = (read(eval_text)?, read(calib_text)?);
    let device = Device::flex();
    let loaded = load_with_tokenizer(model_path, &device)?;
    let tokenizer: LlamaTokenizer = loaded.tokenizer;
    let mut model = loaded.model;
    let ppl_cfg = PerplexityConfig::default().with_num_windows(opts.eval_windows);
    let mut rows = vec![];
    if opts.eval_float {
        let t = Instant::now();
        let r = perplexity_of_text(&model, &tokenizer, &eval, &ppl_cfg)?;
        rows.push(PtqLlmRow {
            label: "FP32".into(),
            perplexity: r.perplexity,
            quantize_time: Duration::ZERO,
            eval_time: t.elapsed(),
            weight_bytes: weight_bytes(&model, None)?,
        });
    }
    let calib_cfg = CalibrationConfig::default()
        .with_num_windows(opts.calib_windows)
        .with_window(opts.calib_window)
        .with_seed(opts.seed);
    let windows = calibration_windows_from_text(&tokenizer, &calib, &calib_cfg)?;
    let t = Instant::now();
    let config = PtqConfig {
        weights: spec.clone(),
        algorithm,
        batch_windows: opts.batch_windows,
    };
    // Activation quantizers: before the weights when the weight algorithm should see them
    // (static scales then come from the float model, as in Brevitas), after them otherwise.
    let mut input_calibration = None;
    let mut attach_inputs = |model: LlamaModel| -> Result<LlamaModel> {
        match input_quant {
            Some(q) => {
                let t = Instant::now();
                let m = burn_quant_llm::pipeline::quantize_inputs(
                    model,
                    q,
                    &windows,
                    opts.batch_windows,
                )?;
                if let InputQuant::PerTensorStatic { .. } = q {
                    input_calibration = Some(t.elapsed());
                }
                Ok(m)
            }
            None => Ok(model),
        }
    };
    if opts.use_quant_activations {
        model = attach_inputs(model)?;
    }
    let result = quantize_model(&mut model, &windows, &config, progress)?;
    if !opts.use_quant_activations {
        model = attach_inputs(model)?;
    }
    let quantize_time = t.elapsed();
    let t = Instant::now();
    let r = perplexity_of_text(&model, &tokenizer, &eval, &ppl_cfg)?;
    let label = format!(
        "{} W{}{} {}{}{}{}",
        opts.algo,
        opts.weight_bits,
        opts.input_bits.map(|b| format!("A{b}")).unwrap_or_default(),
        if opts.group_size == 0 {
            "per-channel".to_string()
        } else {
            format!("g{}", opts.group_size)
        },
        format!(
            "{}{}",
            if opts.asymmetric { " asym" } else { "" },
            if opts.f16_scales { " f16" } else { "" }
        ),
        if opts.act_order { " act-order" } else { "" },
        if opts.use_quant_activations {
            " qact"
        } else {
            ""
        },
    );
    rows.push(PtqLlmRow {
        label,
        perplexity: r.perplexity,
        quantize_time,
        eval_time: t.elapsed(),
        weight_bytes: weight_bytes(&model, Some(&spec))?,
    });
    if let Some(out) = &opts.export {
        export_gguf(&model, &result.weights, model_path, &spec, out)?;
    }
    let damped_layers = result
        .layers
        .iter()
        .filter(|(_, r)| r.damping_retries > 0)
        .count();
    Ok(PtqLlmReport {
        rows,
        timings: result.timings,
        input_calibration,
        peak_rss: peak_rss(),
        damped_layers,
    })
}

/// Writes the PTQ result as a llama.cpp GGUF: every block linear code for code from its
/// `QuantTensor` (what the algorithm chose is what the file holds), the embedding with the same
/// ggml type (llama-quantize `--pure`), norms in f32, the tokenizer of the source.
pub fn export_gguf(
    model: &LlamaModel,
    weights: &std::collections::BTreeMap<String, burn_quant::QuantTensor<2>>,
    model_path: &Path,
    spec: &QuantSpec,
    out: &Path,
) -> Result<burn_quant::export::gguf::LlamaExportReport> {
    use burn_quant::export::gguf::{
        GgufTokenizer, HfTensor, LlamaGgufConfig, LlamaGgufSource, LlamaMix, LlamaTensor,
        TokenizerOptions, encode_quant_tensor, export_llama_gguf, ggml_type_of,
    };
    let gguf_err = |source| CliError::Gguf {
        what: out.display().to_string(),
        source,
    };
    let llama_err = |source| CliError::Llama {
        what: out.display().to_string(),
        source,
    };
    let ty = ggml_type_of(spec).map_err(gguf_err)?;
    let tokenizer = if model_path.is_dir() {
        GgufTokenizer::from_hf_dir(model_path, &TokenizerOptions::default()).map_err(llama_err)?
    } else {
        LlamaGgufSource::open(model_path)
            .map_err(llama_err)?
            .tokenizer()
            .clone()
    };
    let mut tensors: Vec<std::result::Result<LlamaTensor, burn_quant::export::gguf::LlamaError>> =
        vec![];
    for (name, q) in weights {
        tensors.push(Ok(LlamaTensor::Encoded {
            name: name.clone(),
            tensor: encode_quant_tensor(q).map_err(gguf_err)?,
        }));
    }
    let h = model.hparams();
    let embed = host(model.embed_tokens.weight.val())?;
    tensors.push(Ok(HfTensor::new(
        "model.embed_tokens.weight",
        vec![h.vocab_size, h.hidden_size],
        embed,
    )
    .into()));
    let norm = |name: String, w: &burn::module::Param<burn::tensor::Tensor<1>>| -> Result<_> {
        Ok(Ok(
            HfTensor::new(name, vec![h.hidden_size], host(w.val())?).into()
        ))
    };
    tensors.push(norm("model.norm.weight".into(), &model.norm.weight)?);
    for i in 0..model.num_blocks() {
        let b = model.block(i)?;
        tensors.push(norm(
            format!("model.layers.{i}.input_layernorm.weight"),
            &b.input_layernorm.weight,
        )?);
        tensors.push(norm(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            &b.post_attention_layernorm.weight,
        )?);
    }
    if !h.tie_word_embeddings {
        let w = host(model.lm_head.weight.val().transpose())?;
        tensors.push(Ok(HfTensor::new(
            "lm_head.weight",
            vec![h.vocab_size, h.hidden_size],
            w,
        )
        .into()));
    }
    let config =
        LlamaGgufConfig::new(h.clone(), "burnq ptq-llm").with_provenance("spec", spec.to_string());
    export_llama_gguf(
        out,
        &config,
        &tokenizer,
        tensors,
        LlamaMix::Uniform(ty),
        None,
    )
    .map_err(llama_err)
}

/// A tensor's values on the host.
fn host<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>> {
    Ok(t.try_into_vec_as::<f32>()?)
}

/// Default location of a shared-data text, relative to the working directory.
pub fn default_text(relative: &str) -> PathBuf {
    PathBuf::from("../shared/data").join(relative)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_quant_ptq::Stage2Algorithm;

    #[test]
    fn recipe_files_and_flags_give_the_same_options() {
        let dir = std::env::temp_dir().join(format!("burnq-ptq-recipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w3.toml");
        std::fs::write(&path, "weight_bits = 3\ngroup_size = 64\nalgo = \"qronos\"\nact_order = true\ninput_bits = 8\ninput_granularity = \"token\"\n").unwrap();
        let o = PtqLlmOptions::from_file(&path).unwrap();
        assert_eq!(
            (o.weight_bits, o.group_size, o.algo.as_str(), o.act_order),
            (3, 64, "qronos", true)
        );
        assert_eq!(
            o.calib_windows, 16,
            "unspecified fields keep their defaults"
        );
        assert_eq!(
            o.input_quant().unwrap(),
            Some(InputQuant::PerTokenDynamic { bits: 8 })
        );
        let spec = o.weight_spec().unwrap();
        assert_eq!(spec.format, Format::int(3));
        assert_eq!(
            spec.granularity,
            Granularity::PerGroup { axis: 0, size: 64 }
        );
        assert_eq!(o.algorithm().unwrap().name(), "qronos");
        // Unknown keys and bad values are errors naming them.
        std::fs::write(&path, "weight_bitz = 3\n").unwrap();
        let e = PtqLlmOptions::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("config"), "{e}");
        let bad = PtqLlmOptions {
            weight_bits: 1,
            ..Default::default()
        };
        assert!(
            bad.weight_spec()
                .unwrap_err()
                .to_string()
                .contains("weight_bits")
        );
        let bad = PtqLlmOptions {
            algo: "awq".into(),
            ..Default::default()
        };
        assert!(bad.algorithm().is_err());
        let bad = PtqLlmOptions {
            input_bits: Some(8),
            input_granularity: "channel".into(),
            ..Default::default()
        };
        assert!(bad.input_quant().is_err());
        let bad = PtqLlmOptions {
            use_quant_activations: true,
            ..Default::default()
        };
        let e = bad.input_quant().unwrap_err().to_string();
        assert!(e.contains("use_quant_activations"), "{e}");
        let stat = |s: &str| {
            PtqLlmOptions {
                input_bits: Some(8),
                input_stat: s.into(),
                ..Default::default()
            }
            .input_quant()
        };
        assert_eq!(
            stat("percentile:99.9").unwrap(),
            Some(InputQuant::PerTensorStatic {
                bits: 8,
                stat: ScaleStat::Percentile { q: 99.9 }
            })
        );
        assert!(stat("percentile:0").is_err());
        assert!(stat("median").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
