//! `burnq ptq-llm`: post-training quantization of a Llama-family model (Hugging Face directory
//! or llama GGUF), block by block with a Stage-2 algorithm, then perplexity under the fixed
//! windowed protocol, with time, peak memory and weight bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use burn_quant::{
    Format, Granularity, QuantSpec, ScaleQuant, ScaleRestriction, ScaleStat, SymmetricScale,
};
use burn_quant_llm::pipeline::InputQuant;
use burn_quant_llm::stage1::{KvQuant, Stage1Entry, Stage1Step, apply_stage1, quantize_kv};
use burn_quant_llm::{
    CalibrationConfig, LlamaModel, LlamaTokenizer, PerplexityConfig, PtqConfig,
    calibration_windows_from_text, compare_with_reference_of_text, load_with_tokenizer,
    perplexity_of_text, quantize_llama,
};
use burn_quant_ptq::{Algorithm, Stage2Algorithm};
use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};
use crate::table;

/// Everything `ptq-llm` needs besides the model path: the recipe. The command-line flags and a
/// TOML/JSON recipe (`--config`) use the same field names; a flag given with `--config`
/// overrides the recipe's value. The weight spec comes either from the short fields
/// (`weight_bits`, `group_size`, `asymmetric`, `f16_scales`, `weight_scale`, `narrow_range`) or
/// in full from `weights` (a preset name or a whole [`QuantSpec`]), never from both.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PtqLlmOptions {
    /// Stage 1 transforms, applied in order to the float model before anything else: names
    /// (`smoothquant`, `hip`, `quarot:ort`, `smoothquant:0.8`, …) or tables
    /// (`{ smoothquant = { alpha = 0.8 } }`), see [`Stage1Step`].
    pub stage1: Vec<Stage1Entry>,
    /// The weight spec in full, instead of the short fields: a preset name
    /// ([`weight_preset`]) or a serialised [`QuantSpec`] (Burn `[d_in, d_out]` layout).
    pub weights: Option<WeightSpecChoice>,
    /// The activation (block linear input, `[batch, seq, d_in]`) spec in full, instead of
    /// `input_bits` / `input_granularity` / `input_stat`: a preset name
    /// ([`activation_preset`]) or a serialised [`QuantSpec`].
    pub inputs: Option<WeightSpecChoice>,
    /// Keys and values as the KV cache holds them (after RoPE): a preset (`int4`, `int8`,
    /// `fp8_e4m3`, one dynamic scale per head and token) or full specs
    /// (`{ keys = {…}, values = {…} }` on `[batch, heads, seq, head_dim]`, dynamic scales).
    pub kv: Option<KvChoice>,
    /// Also quantize the attention queries, with the key spec (attention-input
    /// quantization; needs `kv`).
    pub quant_queries: bool,
    /// Weight bits (signed integer grid unless `asymmetric`; default 4).
    pub weight_bits: Option<u8>,
    /// Group size along the input axis; 0 = one scale per output channel (default 128).
    pub group_size: Option<usize>,
    /// Unsigned grid with a zero-point per group (min-max).
    pub asymmetric: Option<bool>,
    /// Scales (and offsets) stored as f16, ggml's legacy layout: with `asymmetric` and groups
    /// of 32 this is exactly Q4_1's structure (grid over [min, max], real-valued offset).
    pub f16_scales: Option<bool>,
    /// How a symmetric group's range becomes its scale: `qmax`, `neg-qmin` (Brevitas's
    /// default), `signed-extreme` (ggml's Q4_0 rule, our default: [`DEFAULT_WEIGHT_SCALE`])
    /// or `mse` (see [`SymmetricScale`]).
    pub weight_scale: Option<String>,
    /// Narrow signed grid (−7..7 at 4 bits; Brevitas's `--weight-narrow-range`).
    pub narrow_range: Option<bool>,
    /// `rtn`, `gptq`, `gpfq`, `gptaq`, `qronos`, `adaround` or `autoround`.
    pub algo: String,
    /// The Stage-2 algorithm in full, every parameter included, instead of `algo` and its
    /// options (`stage2 = { algo = "adaround", iterations = 300 }`, `stage2 = { algo =
    /// "gptq", percdamp = 0.05, act_order = true }`); `algo` must then name the same algorithm
    /// or be left out, and `act_order`, `static_groups`, `qronos_alpha` go inside it.
    pub stage2: Option<Algorithm>,
    /// After Stage 2, give every block linear the bias that removes its mean output error on
    /// the calibration set (empirical bias correction; the biases export as llama.cpp's
    /// optional `blk.N.*.bias` tensors).
    pub bias_correction: bool,
    /// Process input channels by decreasing Hessian diagonal (GPTQ family).
    pub act_order: bool,
    /// Compute every group's scale from the original weight before the sweep (GPTQ, GPTAQ,
    /// Qronos; Brevitas always does); `None` keeps the algorithm's default (GPTQ/GPTAQ off,
    /// Qronos on). Act-order implies it.
    pub static_groups: Option<bool>,
    /// Qronos's ridge parameter α (ours 1e-5, Brevitas 1e-6); `None` keeps the default.
    pub qronos_alpha: Option<f64>,
    /// Activation (linear input) bits; `None` keeps activations float.
    pub input_bits: Option<u8>,
    /// `tensor` (static, calibrated) or `token` (dynamic) activation scales.
    pub input_granularity: String,
    /// Statistic of static (`tensor`) activation scales: `absmax`, `percentile` (99.999, as
    /// Brevitas), `percentile:Q` or `mse`.
    pub input_stat: String,
    /// Attach (and calibrate) the activation quantizers before the weights, so the weight
    /// algorithm sees quantized inputs (Brevitas's `use_quant_activations`); needs
    /// `input_bits`. Otherwise they are attached after the weights are quantized. `None`
    /// follows Brevitas: on for GPFQ and Qronos (which Brevitas always calibrates on quantized
    /// activations, whatever its flag says), off for the others.
    pub use_quant_activations: Option<bool>,
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
    /// Report the KL divergence from the FP32 model and the top-1 agreement (keeps a float
    /// copy of the model; the evaluation runs both models).
    pub kl: bool,
    /// Write the quantized model as GGUF here, code for code (the weight spec must have a ggml
    /// structure, e.g. `--f16-scales --group-size 32` at 4, 5 or 8 bits).
    pub export: Option<PathBuf>,
}

/// Reads a TOML (or, by extension, JSON) file into `T`; errors name `what` and the file.
pub fn read_recipe_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        what: path.display().to_string(),
        source,
    })?;
    let bad = |why: String| CliError::config(what, path.display(), why);
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
    } else {
        toml::from_str(&text).map_err(|e| bad(e.to_string()))
    }
}

/// KV-cache specs by preset name or in full.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum KvChoice {
    /// `int4`, `int8` or `fp8_e4m3`, per head and token ([`KvQuant::preset`]).
    Preset(String),
    /// Specs of keys and values on `[batch, heads, seq, head_dim]` (dynamic scales).
    Full {
        /// Keys.
        keys: QuantSpec,
        /// Values.
        values: QuantSpec,
    },
}

/// A spec given by preset name or in full.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum WeightSpecChoice {
    /// A name [`weight_preset`] knows, e.g. `int4_g128`, `gguf_q4_0`, `mxfp4`.
    Preset(String),
    /// A whole spec.
    Full(QuantSpec),
}

impl WeightSpecChoice {
    /// The spec this choice names.
    pub fn spec(&self) -> Result<QuantSpec> {
        match self {
            WeightSpecChoice::Preset(name) => weight_preset(name),
            WeightSpecChoice::Full(spec) => Ok(*spec),
        }
    }
}

/// Weight presets by name, in the Burn `[d_in, d_out]` layout (groups along the input):
/// `int{b}_g{size}` (symmetric int, groups of `size`), `int{b}_channel` (per output channel),
/// `uint{b}_g{size}` (asymmetric), `int8_channel_narrow`, `gguf_q8_0`, `gguf_q4_0`,
/// `gguf_q4_1`, `gguf_q5_0`, `gguf_q5_1`, `gguf_q2_k` … `gguf_q6_k`, `mxfp4`, `mxfp8_e4m3`,
/// `mxint8`, `mxint{b}` (MXINT8's structure with `b`-bit elements), `nvfp4`, `fp8_e4m3`.
pub fn weight_preset(name: &str) -> Result<QuantSpec> {
    let fixed = match name {
        "int8_channel_narrow" => Some(QuantSpec::int8_weight_per_channel()),
        "gguf_q8_0" => Some(QuantSpec::gguf_q8_0()),
        "gguf_q4_0" => Some(QuantSpec::gguf_q4_0()),
        "gguf_q4_1" => Some(QuantSpec::gguf_q4_1()),
        "gguf_q5_0" => Some(QuantSpec::gguf_q5_0()),
        "gguf_q5_1" => Some(QuantSpec::gguf_q5_1()),
        "gguf_q2_k" => Some(QuantSpec::gguf_q2_k()),
        "gguf_q3_k" => Some(QuantSpec::gguf_q3_k()),
        "gguf_q4_k" => Some(QuantSpec::gguf_q4_k()),
        "gguf_q5_k" => Some(QuantSpec::gguf_q5_k()),
        "gguf_q6_k" => Some(QuantSpec::gguf_q6_k()),
        "mxfp4" => Some(QuantSpec::mxfp4()),
        "mxfp8_e4m3" => Some(QuantSpec::mxfp8_e4m3()),
        "mxint8" => Some(QuantSpec::mxint8()),
        "nvfp4" => Some(QuantSpec::nvfp4()),
        "fp8_e4m3" => Some(QuantSpec::fp8_e4m3_weight_per_tensor()),
        _ => None,
    };
    if let Some(spec) = fixed {
        return Ok(spec);
    }
    // MXINT at any width: MXINT8's structure (blocks of 32 along the input, E8M0 shared
    // scales, narrow symmetric grid) with `b`-bit elements; `mxint2` is {−1, 0, 1}·2^e.
    if let Some(b) = name
        .strip_prefix("mxint")
        .and_then(|b| b.parse::<u8>().ok())
    {
        let spec = QuantSpec::mxint8().with_bits(b);
        spec.validate().map_err(|source| CliError::Quant {
            recipe: "ptq-llm".into(),
            param: "weights".into(),
            source,
        })?;
        return Ok(spec);
    }
    let bad = || {
        CliError::config(
            "weights",
            name,
            "expected int{b}_g{size}, int{b}_channel, uint{b}_g{size}, int8_channel_narrow, \
             gguf_q8_0, gguf_q4_0, gguf_q4_1, gguf_q5_0, gguf_q5_1, gguf_q2_k..gguf_q6_k, mxfp4, \
             mxfp8_e4m3, mxint8, mxint{b}, nvfp4 or fp8_e4m3",
        )
    };
    let (unsigned, rest) = match (name.strip_prefix("uint"), name.strip_prefix("int")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => return Err(bad()),
    };
    let (bits, gran) = rest.split_once('_').ok_or_else(bad)?;
    let bits: u8 = bits.parse().map_err(|_| bad())?;
    let granularity = match gran {
        "channel" => Granularity::PerChannel { axis: 1 },
        g => Granularity::PerGroup {
            axis: 0,
            size: g
                .strip_prefix('g')
                .and_then(|g| g.parse().ok())
                .ok_or_else(bad)?,
        },
    };
    let spec = QuantSpec::new(Format::int(bits), granularity);
    let spec = if unsigned { spec.asymmetric() } else { spec };
    spec.validate().map_err(|source| CliError::Quant {
        recipe: "ptq-llm".into(),
        param: "weights".into(),
        source,
    })?;
    Ok(spec)
}

/// Activation presets by name, for `[batch, seq, d_in]` linear inputs: `int{b}_tensor`
/// (static per-tensor absmax), `int{b}_token` (dynamic per token), `fp8_e4m3_tensor`,
/// `fp8_e4m3_token`, `mxfp8_e4m3`, `mxfp4`, `mxint8` (blocks of 32 along the features).
pub fn activation_preset(name: &str) -> Result<QuantSpec> {
    use burn_quant::{ScaleSource, ScaleStat};
    // Groups along the features at least as long as any layer input: one scale per token.
    const PER_TOKEN: Granularity = Granularity::PerGroup {
        axis: 2,
        size: usize::MAX >> 1,
    };
    let dynamic = |s: QuantSpec| {
        s.with_granularity(PER_TOKEN)
            .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax))
    };
    let fp8 = QuantSpec::fp8_e4m3_act_per_tensor();
    let mx = |s: QuantSpec| {
        s.with_axis(2)
            .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax))
    };
    let spec = match name {
        "fp8_e4m3_tensor" => fp8,
        "fp8_e4m3_token" => dynamic(fp8),
        "mxfp8_e4m3" => mx(QuantSpec::mxfp8_e4m3()),
        "mxfp4" => mx(QuantSpec::mxfp4()),
        "mxint8" => mx(QuantSpec::mxint8()),
        other => {
            let parsed = other
                .strip_prefix("int")
                .and_then(|r| r.split_once('_'))
                .and_then(|(b, g)| {
                    b.parse::<u8>()
                        .ok()
                        .filter(|b| (2..=16).contains(b))
                        .map(|b| (b, g))
                });
            match parsed {
                Some((b, "tensor")) => QuantSpec::int8_act_per_tensor().with_bits(b),
                Some((b, "token")) => dynamic(QuantSpec::int8_act_per_tensor().with_bits(b)),
                _ => {
                    return Err(CliError::config(
                        "inputs",
                        name,
                        "expected int{b}_tensor, int{b}_token, fp8_e4m3_tensor, fp8_e4m3_token, \
                         mxfp8_e4m3, mxfp4 or mxint8",
                    ));
                }
            }
        }
    };
    Ok(spec)
}

impl Default for PtqLlmOptions {
    fn default() -> Self {
        Self {
            stage1: vec![],
            weights: None,
            inputs: None,
            kv: None,
            quant_queries: false,
            weight_bits: None,
            group_size: None,
            asymmetric: None,
            f16_scales: None,
            weight_scale: None,
            narrow_range: None,
            algo: "gptq".into(),
            stage2: None,
            bias_correction: false,
            act_order: false,
            static_groups: None,
            qronos_alpha: None,
            input_bits: None,
            input_granularity: "tensor".into(),
            input_stat: "absmax".into(),
            use_quant_activations: None,
            calib_windows: 16,
            calib_window: 512,
            seed: 0,
            eval_windows: None,
            batch_windows: 4,
            eval_float: true,
            kl: true,
            export: None,
        }
    }
}

/// The default symmetric-scale convention of `ptq-llm` weights: the signed extreme (ggml's
/// Q4_0 rule), the best measured on SmolLM2 at W4 and W3 g128 with RTN, and with GPTQ at W3
/// (the MSE search is ahead of it only for GPTQ W4, by 0.5 perplexity, at 2.6× the
/// quantization time); see the book's LLM chapter.
pub const DEFAULT_WEIGHT_SCALE: SymmetricScale = SymmetricScale::SignedExtreme;

impl PtqLlmOptions {
    /// Reads a recipe file (`.toml` or `.json`); unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_recipe_file(path, "config")
    }

    /// Checks everything that can be checked before loading the model: specs, algorithm,
    /// activations, Stage 1 list, KV spec and the export target (a weight spec without a ggml
    /// structure is refused here, not after the PTQ).
    pub fn check(&self) -> Result<()> {
        let steps = self.stage1_steps()?;
        self.kv_quant()?;
        let spec = self.weight_spec()?;
        self.algorithm()?;
        self.input_quant()?;
        if let Some(out) = &self.export {
            burn_quant::export::gguf::ggml_type_of(&spec).map_err(|source| CliError::Gguf {
                what: out.display().to_string(),
                source,
            })?;
            if let Some(step) = steps.iter().find(|s| s.has_online_rotation()) {
                return Err(CliError::config(
                    "export",
                    out.display(),
                    format!(
                        "Stage 1 `{}` rotates activations online, which a llama.cpp GGUF cannot \
                         express; fused steps (fold_norms, smoothquant, rotate_residual, \
                         rotate_heads, magr) export",
                        step.label()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The Stage 1 steps of the recipe, in order.
    pub fn stage1_steps(&self) -> Result<Vec<Stage1Step>> {
        self.stage1
            .iter()
            .map(|e| {
                e.step()
                    .map_err(|err| CliError::config("stage1", format!("{e:?}"), err.to_string()))
            })
            .collect()
    }

    /// The KV-cache (and query) quantization of the recipe, if any.
    pub fn kv_quant(&self) -> Result<Option<KvQuant>> {
        let llm = |e: burn_quant_llm::LlmError| {
            CliError::config("kv", format!("{:?}", self.kv), e.to_string())
        };
        let kv = match &self.kv {
            None if self.quant_queries => {
                return Err(CliError::config(
                    "quant_queries",
                    true,
                    "queries are quantized with the key spec: set `kv` too",
                ));
            }
            None => return Ok(None),
            Some(KvChoice::Preset(name)) => KvQuant::preset(name).map_err(llm)?,
            Some(KvChoice::Full { keys, values }) => KvQuant {
                keys: *keys,
                values: *values,
                queries: None,
            },
        };
        let kv = if self.quant_queries {
            kv.with_queries()
        } else {
            kv
        };
        kv.validate().map_err(llm)?;
        Ok(Some(kv))
    }

    /// The weight spec these options describe (Burn layout: groups along axis 0, channels on
    /// axis 1).
    pub fn weight_spec(&self) -> Result<QuantSpec> {
        let quant_err = |source| CliError::Quant {
            recipe: "ptq-llm".into(),
            param: "weights".into(),
            source,
        };
        if let Some(choice) = &self.weights {
            let short = [
                ("weight_bits", self.weight_bits.is_some()),
                ("group_size", self.group_size.is_some()),
                ("asymmetric", self.asymmetric.is_some()),
                ("f16_scales", self.f16_scales.is_some()),
                ("weight_scale", self.weight_scale.is_some()),
                ("narrow_range", self.narrow_range.is_some()),
            ];
            if let Some((field, _)) = short.iter().find(|(_, set)| *set) {
                return Err(CliError::config(
                    field,
                    "set",
                    "the weight spec is given in full by `weights`; drop one of the two",
                ));
            }
            let spec = choice.spec()?;
            spec.validate().map_err(quant_err)?;
            return Ok(spec);
        }
        let bits = self.weight_bits.unwrap_or(4);
        if !(2..=8).contains(&bits) {
            return Err(CliError::config("weight_bits", bits, "must be in 2..=8"));
        }
        let group_size = self.group_size.unwrap_or(128);
        let granularity = if group_size == 0 {
            Granularity::PerChannel { axis: 1 }
        } else {
            Granularity::PerGroup {
                axis: 0,
                size: group_size,
            }
        };
        let asymmetric = self.asymmetric.unwrap_or(false);
        let spec = QuantSpec::new(Format::int(bits), granularity);
        let spec = if asymmetric {
            spec.asymmetric()
        } else {
            spec.with_narrow(self.narrow_range.unwrap_or(false))
                .with_symmetric_scale(self.symmetric_scale()?)
        };
        let spec = if self.f16_scales.unwrap_or(false) {
            spec.with_scale_restriction(ScaleRestriction::Quantized(ScaleQuant::F16))
        } else {
            spec
        };
        spec.validate().map_err(quant_err)?;
        Ok(spec)
    }

    /// The symmetric-scale convention of the weights: `weight_scale` if given, else qmax on a
    /// narrow or asymmetric grid (where the others do not apply) and the default otherwise.
    fn symmetric_scale(&self) -> Result<SymmetricScale> {
        match &self.weight_scale {
            Some(name) => name.parse().map_err(|e: burn_quant::QuantError| {
                CliError::config("weight_scale", name, e.to_string())
            }),
            None if self.narrow_range.unwrap_or(false) => Ok(SymmetricScale::Qmax),
            None => Ok(DEFAULT_WEIGHT_SCALE),
        }
    }

    /// The name of the Stage-2 algorithm (`stage2`'s, else `algo`).
    pub fn algo_name(&self) -> String {
        match &self.stage2 {
            Some(a) => a.name().to_string(),
            None => self.algo.to_ascii_lowercase(),
        }
    }

    /// The algorithm these options select.
    pub fn algorithm(&self) -> Result<Algorithm> {
        if let Some(full) = &self.stage2 {
            let name = full.name();
            if self.algo != name && self.algo != PtqLlmOptions::default().algo {
                return Err(CliError::config(
                    "algo",
                    &self.algo,
                    format!("`stage2` gives the algorithm in full ({name}); drop `algo`"),
                ));
            }
            for (field, set) in [
                ("act_order", self.act_order),
                ("static_groups", self.static_groups.is_some()),
                ("qronos_alpha", self.qronos_alpha.is_some()),
            ] {
                if set {
                    return Err(CliError::config(
                        field,
                        "set",
                        "`stage2` gives the algorithm in full; set this inside it",
                    ));
                }
            }
            full.validate()
                .map_err(|e| CliError::config("stage2", name, e.to_string()))?;
            return Ok(*full);
        }
        let a: Algorithm = self.algo.parse().map_err(|e: burn_quant_ptq::PtqError| {
            CliError::config("algo", &self.algo, e.to_string())
        })?;
        let a = a.with_act_order(self.act_order);
        let a = match self.static_groups {
            // RTN, GPFQ, AdaRound and AutoRound always take their group parameters from the
            // original weight (AutoRound's clipped by its learned factors).
            Some(false)
                if matches!(
                    a,
                    Algorithm::Rtn(_)
                        | Algorithm::Gpfq(_)
                        | Algorithm::Adaround(_)
                        | Algorithm::AutoRound(_)
                ) =>
            {
                return Err(CliError::config(
                    "static_groups",
                    false,
                    format!(
                        "{} always computes group parameters from the original weight",
                        self.algo
                    ),
                ));
            }
            Some(on) => a.with_static_groups(on),
            None => a,
        };
        match (self.qronos_alpha, a) {
            (None, a) => Ok(a),
            (Some(alpha), Algorithm::Qronos(q)) => {
                if !(alpha.is_finite() && alpha > 0.0) {
                    return Err(CliError::config(
                        "qronos_alpha",
                        alpha,
                        "must be finite and > 0",
                    ));
                }
                Ok(Algorithm::Qronos(q.with_alpha(alpha)))
            }
            (Some(alpha), _) => Err(CliError::config(
                "qronos_alpha",
                alpha,
                format!("only Qronos has this parameter, not {}", self.algo),
            )),
        }
    }

    /// A short name of the recipe, e.g. `gptq W4 g128 neg-qmin act-order`.
    pub fn label(&self) -> String {
        let mut l = String::new();
        for e in &self.stage1 {
            match e.step() {
                Ok(s) => l += &format!("{} + ", s.label()),
                Err(_) => l += "? + ",
            }
        }
        match &self.stage2 {
            // Every parameter, so that sweep cells that differ only there are told apart.
            Some(a) => l += &serde_json::to_string(a).unwrap_or_else(|_| a.name().into()),
            None => l += &self.algo,
        }
        match &self.weights {
            Some(WeightSpecChoice::Preset(name)) => l += &format!(" {name}"),
            Some(WeightSpecChoice::Full(spec)) => l += &format!(" [{spec}]"),
            None => {
                l += &format!(" W{}", self.weight_bits.unwrap_or(4));
                if let Some(b) = self.input_bits {
                    l += &format!("A{b}");
                }
                if let Some(WeightSpecChoice::Preset(a)) = &self.inputs {
                    l += &format!(" A:{a}");
                }
                l += &match self.group_size.unwrap_or(128) {
                    0 => " per-channel".to_string(),
                    g => format!(" g{g}"),
                };
                if self.asymmetric.unwrap_or(false) {
                    l += " asym";
                } else if self.narrow_range.unwrap_or(false) {
                    l += " narrow";
                } else if let Ok(c) = self.symmetric_scale() {
                    l += &format!(" {}", c.name());
                }
                if self.f16_scales.unwrap_or(false) {
                    l += " f16";
                }
            }
        }
        if self.act_order {
            l += " act-order";
        }
        match self.static_groups {
            Some(true) if !self.act_order => l += " static-groups",
            Some(false) => l += " dynamic-groups",
            _ => {}
        }
        if let Some(a) = self.qronos_alpha {
            l += &format!(" α={a:e}");
        }
        if self.use_quant_activations == Some(true) {
            l += " qact";
        }
        match &self.kv {
            Some(KvChoice::Preset(p)) => l += &format!(" KV:{p}"),
            Some(KvChoice::Full { .. }) => l += " KV:spec",
            None => {}
        }
        if self.quant_queries {
            l += " +Q";
        }
        if self.bias_correction {
            l += " +BC";
        }
        l
    }

    /// Whether the activation quantizers are attached before the weights (see
    /// `use_quant_activations`): the explicit choice, else Brevitas's rule (GPFQ and Qronos
    /// with quantized activations, the others without).
    pub fn quant_activations(&self) -> bool {
        self.use_quant_activations.unwrap_or_else(|| {
            (self.input_bits.is_some() || self.inputs.is_some())
                && matches!(self.algo_name().as_str(), "gpfq" | "qronos")
        })
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
        if let Some(choice) = &self.inputs {
            if let Some(b) = self.input_bits {
                return Err(CliError::config(
                    "input_bits",
                    b,
                    "the activation spec is given in full by `inputs`; drop one of the two",
                ));
            }
            let spec = match choice {
                WeightSpecChoice::Preset(name) => activation_preset(name)?,
                WeightSpecChoice::Full(spec) => *spec,
            };
            spec.validate().map_err(|source| CliError::Quant {
                recipe: "ptq-llm".into(),
                param: "inputs".into(),
                source,
            })?;
            return Ok(Some(InputQuant::Spec(spec)));
        }
        let Some(bits) = self.input_bits else {
            if self.use_quant_activations == Some(true) {
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
    /// Mean per-token KL divergence from the FP32 model's next-token distribution (nats) and
    /// its standard error (llama.cpp's definitions), when measured.
    pub kl: Option<(f64, f64)>,
    /// Fraction of scored tokens whose top-1 token equals the FP32 model's, with its standard
    /// error, when measured.
    pub top1: Option<(f64, f64)>,
    /// Time of the Stage 1 transforms (calibration passes included), part of
    /// `quantize_time`.
    pub stage1_time: Duration,
}

/// The report of a `ptq-llm` run.
#[derive(Clone, Debug)]
pub struct PtqLlmReport {
    /// FP32 (if evaluated) and the quantized model.
    pub rows: Vec<PtqLlmRow>,
    /// Each Stage 1 step with its time.
    pub stage1: Vec<(String, Duration)>,
    /// Time split of the quantization (forward passes, statistics, algorithm).
    pub timings: burn_quant_llm::PtqTimings,
    /// Per block, how AutoRound trained (empty for the other algorithms).
    pub learned: Vec<(usize, burn_quant_ptq::AutoRoundReport)>,
    /// Floating-point operations AutoRound's forward and backward passes spent (see
    /// [`burn_quant_llm::PtqResult::learned_flops`]).
    pub learned_flops: f64,
    /// What bias correction did, when it ran.
    pub bias_correction: Option<burn_quant_llm::BiasCorrectionReport>,
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
        let rows: Vec<[String; 7]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.label.clone(),
                    format!("{:.3}", r.perplexity),
                    r.kl.map_or("-".into(), |(k, e)| format!("{k:.4} ± {e:.4}")),
                    r.top1.map_or("-".into(), |(p, e)| {
                        format!("{:.2} ± {:.2} %", 100.0 * p, 100.0 * e)
                    }),
                    format!("{:.1} s", r.quantize_time.as_secs_f64()),
                    format!("{:.1} s", r.eval_time.as_secs_f64()),
                    format!("{:.1} MB", r.weight_bytes / 1e6),
                ]
            })
            .collect();
        f.write_str(&table::aligned(
            [
                "model",
                "perplexity",
                "KL vs FP32",
                "same top-1",
                "quantize",
                "eval",
                "weights",
            ],
            &rows,
        ))?;
        for (step, time) in &self.stage1 {
            writeln!(f, "stage 1: {step} in {:.1} s", time.as_secs_f64())?;
        }
        let t = &self.timings;
        writeln!(
            f,
            "quantization time: forward passes {:.1} s, statistics {:.1} s, algorithm {:.1} s, total {:.1} s",
            t.forward.as_secs_f64(),
            t.statistics.as_secs_f64(),
            t.algorithm.as_secs_f64(),
            t.total.as_secs_f64()
        )?;
        if let Some(ratio) = t.floor_ratio() {
            writeln!(
                f,
                "FLOP floor: {:.1} s (forward passes {:.2} TFLOP + statistics {:.2} TFLOP at the \
                 measured {:.0} GFLOP/s matmul rate); quantization time / floor {:.2}×",
                t.floor().as_secs_f64(),
                t.forward_flops / 1e12,
                t.statistics_flops / 1e12,
                t.matmul_gflops,
                ratio
            )?;
        }
        if !self.learned.is_empty() {
            let n = self.learned.len() as f64;
            let sum = |g: &dyn Fn(&burn_quant_ptq::AutoRoundReport) -> f64| -> f64 {
                self.learned.iter().map(|(_, r)| g(r)).sum()
            };
            let iters = sum(&|r| r.iterations as f64);
            writeln!(
                f,
                "autoround: {} blocks × {} iterations, {:.1} s per block ({:.0} ms per iteration: \
                 forward+backward {:.0} ms, soft weights and steps {:.0} ms); block loss {:.3e} → {:.3e} (sum of first / best)",
                self.learned.len(),
                self.learned[0].1.iterations,
                sum(&|r| r.seconds) / n,
                1e3 * sum(&|r| r.seconds) / iters.max(1.0),
                1e3 * sum(&|r| r.forward_backward.as_secs_f64()) / iters.max(1.0),
                1e3 * sum(&|r| r.quantizer.as_secs_f64()) / iters.max(1.0),
                sum(&|r| r.initial_loss),
                sum(&|r| r.best_loss),
            )?;
            let fb = sum(&|r| r.forward_backward.as_secs_f64());
            writeln!(
                f,
                "autoround: {:.1} TFLOP of forward+backward in {:.0} s ({:.1} GFLOP/s); whole run {:.0} s",
                self.learned_flops / 1e12,
                fb,
                self.learned_flops / fb.max(1e-9) / 1e9,
                sum(&|r| r.seconds),
            )?;
        }
        if let Some(b) = &self.bias_correction {
            let rms = b.layers.iter().map(|(_, r)| r * r).sum::<f64>() / b.layers.len().max(1) as f64;
            writeln!(
                f,
                "bias correction: {} layers from {} tokens in {:.1} s (RMS correction {:.2e})",
                b.layers.len(),
                b.tokens,
                b.seconds,
                rms.sqrt()
            )?;
        }
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

/// A loaded model with its texts, for running one or many recipes (`burnq sweep`): the float
/// model, the tokenizer, the evaluation text and the calibration windows are read once.
pub struct PtqLlmSession {
    model_path: PathBuf,
    model: LlamaModel,
    tokenizer: LlamaTokenizer,
    eval: String,
    calib: String,
    /// The FP32 row per evaluation-window count, computed once.
    fp32: Vec<(Option<usize>, PtqLlmRow)>,
}

impl PtqLlmSession {
    /// Loads the model at `model_path` and reads the evaluation and calibration texts.
    pub fn open(model_path: &Path, eval_text: &Path, calib_text: &Path) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CliError::Io {
                what: p.display().to_string(),
                source,
            })
        };
        let (eval, calib) = (read(eval_text)?, read(calib_text)?);
        let loaded = load_with_tokenizer(model_path, &Device::flex())?;
        Ok(Self {
            model_path: model_path.to_path_buf(),
            model: loaded.model,
            tokenizer: loaded.tokenizer,
            eval,
            calib,
            fp32: vec![],
        })
    }

    /// The FP32 row under `opts`' evaluation protocol (computed on first use).
    pub fn fp32_row(&mut self, opts: &PtqLlmOptions) -> Result<PtqLlmRow> {
        if let Some((_, row)) = self.fp32.iter().find(|(w, _)| *w == opts.eval_windows) {
            return Ok(row.clone());
        }
        let ppl_cfg = PerplexityConfig::default().with_num_windows(opts.eval_windows);
        let t = Instant::now();
        let r = perplexity_of_text(&self.model, &self.tokenizer, &self.eval, &ppl_cfg)?;
        let row = PtqLlmRow {
            label: "FP32".into(),
            perplexity: r.perplexity,
            quantize_time: Duration::ZERO,
            eval_time: t.elapsed(),
            weight_bytes: weight_bytes(&self.model, None)?,
            kl: opts.kl.then_some((0.0, 0.0)),
            top1: opts.kl.then_some((1.0, 0.0)),
            stage1_time: Duration::ZERO,
        };
        self.fp32.push((opts.eval_windows, row.clone()));
        Ok(row)
    }

    /// Runs one recipe on a copy of the float model: calibration, Stage 2, activation
    /// quantizers, evaluation (perplexity, and KL / top-1 agreement against the float model
    /// when `opts.kl`), the export if asked.
    pub fn run(
        &mut self,
        opts: &PtqLlmOptions,
        progress: &mut dyn FnMut(&burn_quant_llm::BlockProgress),
    ) -> Result<PtqLlmReport> {
        opts.check()?;
        let spec = opts.weight_spec()?;
        let algorithm = opts.algorithm()?;
        let input_quant = opts.input_quant()?;
        let mut rows = vec![];
        if opts.eval_float {
            rows.push(self.fp32_row(opts)?);
        }
        let ppl_cfg = PerplexityConfig::default().with_num_windows(opts.eval_windows);
        let calib_cfg = CalibrationConfig::default()
            .with_num_windows(opts.calib_windows)
            .with_window(opts.calib_window)
            .with_seed(opts.seed);
        let windows = calibration_windows_from_text(&self.tokenizer, &self.calib, &calib_cfg)?;
        let t = Instant::now();
        let config = PtqConfig {
            weights: spec,
            algorithm,
            batch_windows: opts.batch_windows,
        };
        let mut model = self.model.clone();
        let stage1 = apply_stage1(
            &mut model,
            &opts.stage1_steps()?,
            &windows,
            opts.batch_windows,
        )?;
        let kv = opts.kv_quant()?;
        // Activation quantizers: before the weights when the weight algorithm should see them
        // (static scales then come from the float model, as in Brevitas), after them otherwise.
        let mut input_calibration = None;
        let mut attach_inputs = |model: LlamaModel| -> Result<LlamaModel> {
            match input_quant {
                Some(q) => {
                    let t = Instant::now();
                    let m = burn_quant_llm::pipeline::attach_input_quantizers(
                        model,
                        q,
                        &windows,
                        opts.batch_windows,
                    )?;
                    if q.is_static() {
                        input_calibration = Some(t.elapsed());
                    }
                    Ok(m)
                }
                None => Ok(model),
            }
            .and_then(|mut m| {
                if let Some(kv) = &kv {
                    quantize_kv(&mut m, kv)?;
                }
                Ok(m)
            })
        };
        if opts.quant_activations() {
            model = attach_inputs(model)?;
        }
        // The float reference of bias correction: the model after Stage 1 (its quantizers, if
        // already attached, are switched off on the float path).
        let float_ref = opts.bias_correction.then(|| model.clone());
        if opts.bias_correction && matches!(algorithm, Algorithm::AutoRound(_)) {
            // Measured on SmolLM2 (book, learned rounding): the per-layer mean shift undoes
            // the compensation AutoRound learned across the block's layers.
            eprintln!(
                "burnq warning: bias correction after AutoRound usually raises the block output \
                 error (AutoRound's layers compensate each other; the correction is per layer)"
            );
        }
        let result = quantize_llama(&mut model, &windows, &config, progress)?;
        if !opts.quant_activations() {
            model = attach_inputs(model)?;
        }
        let bias_correction = match &float_ref {
            Some(f) => Some(burn_quant_llm::correct_biases(
                f,
                &mut model,
                &windows,
                opts.batch_windows,
            )?),
            None => None,
        };
        drop(float_ref);
        let quantize_time = t.elapsed();
        let t = Instant::now();
        let (perplexity, kl, top1) = if opts.kl {
            let c = compare_with_reference_of_text(
                &model,
                &self.model,
                &self.tokenizer,
                &self.eval,
                &ppl_cfg,
            )?;
            (
                c.model.perplexity,
                Some((c.kl_divergence, c.kl_divergence_stderr)),
                Some((c.top1_agreement, c.top1_agreement_stderr)),
            )
        } else {
            let r = perplexity_of_text(&model, &self.tokenizer, &self.eval, &ppl_cfg)?;
            (r.perplexity, None, None)
        };
        rows.push(PtqLlmRow {
            label: opts.label(),
            perplexity,
            quantize_time,
            eval_time: t.elapsed(),
            weight_bytes: weight_bytes(&model, Some(&spec))?,
            kl,
            top1,
            stage1_time: stage1.iter().map(|t| t.time).sum(),
        });
        if let Some(out) = &opts.export {
            export_gguf(&model, &result.weights, &self.model_path, &spec, out)?;
        }
        let damped_layers = result
            .layers
            .iter()
            .filter(|(_, r)| r.damping_retries > 0)
            .count();
        Ok(PtqLlmReport {
            rows,
            stage1: stage1.into_iter().map(|t| (t.step, t.time)).collect(),
            timings: result.timings,
            learned: result.learned,
            learned_flops: result.learned_flops,
            bias_correction,
            input_calibration,
            peak_rss: peak_rss(),
            damped_layers,
        })
    }
}

/// Runs `ptq-llm` on the model at `model_path` with text files `eval_text` and `calib_text`.
pub fn run(
    model_path: &Path,
    eval_text: &Path,
    calib_text: &Path,
    opts: &PtqLlmOptions,
    progress: &mut dyn FnMut(&burn_quant_llm::BlockProgress),
) -> Result<PtqLlmReport> {
    opts.check()?;
    PtqLlmSession::open(model_path, eval_text, calib_text)?.run(opts, progress)
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
) -> Result<burn_quant::llm::gguf::LlamaExportReport> {
    use burn_quant::export::gguf::{
        GgufTokenizer, TokenizerOptions, encode_quant_tensor, ggml_type_of,
    };
    use burn_quant::llm::gguf::{
        HfTensor, LlamaError, LlamaGgufConfig, LlamaGgufSource, LlamaMix, LlamaTensor,
        export_llama_gguf,
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
    if model.has_online_rotations() {
        return Err(CliError::config(
            "export",
            out.display(),
            "the model rotates activations online (HIP, QuaRot's R3/R4), which a llama.cpp \
             GGUF cannot express",
        ));
    }
    let tokenizer = if model_path.is_dir() {
        GgufTokenizer::from_hf_dir(model_path, &TokenizerOptions::default())
            .map_err(|e| llama_err(LlamaError::from(e)))?
    } else {
        LlamaGgufSource::open(model_path)
            .map_err(llama_err)?
            .tokenizer()
            .clone()
    };
    let mut tensors: Vec<std::result::Result<LlamaTensor, LlamaError>> = vec![];
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
        // Biases added by bias correction: llama.cpp's optional f32 `blk.N.*.bias` tensors.
        for slot in burn_quant_llm::LinearSlot::ALL {
            if let Some(bias) = &b.linear(slot).bias {
                let data = host(bias.val())?;
                tensors.push(Ok(HfTensor::new(
                    format!("model.layers.{i}.{}.bias", slot.hf_name()),
                    vec![data.len()],
                    data,
                )
                .into()));
            }
        }
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

/// `burnq ptq-llm --stream`: the model is never loaded whole. The checkpoint is memory-mapped
/// and quantized one block at a time, the GGUF (`opts.export`, required) written as the sweep
/// goes ([`burn_quant_llm::quantize_llama_streaming`]); the same file as without `--stream`.
/// Weight-only: Stage 1, activation and KV quantizers, bias correction and the evaluation need
/// the whole model and are refused (evaluate the written GGUF instead).
pub fn run_streaming(
    model_path: &Path,
    calib_text: &Path,
    opts: &PtqLlmOptions,
    progress: &mut dyn FnMut(&burn_quant_llm::BlockProgress),
) -> Result<burn_quant_llm::StreamReport> {
    opts.check()?;
    let Some(out) = &opts.export else {
        return Err(CliError::config(
            "stream",
            "true",
            "streaming writes its result as GGUF: give --export <file.gguf>",
        ));
    };
    let whole_model = [
        (!opts.stage1.is_empty(), "stage1"),
        (
            opts.input_bits.is_some() || opts.inputs.is_some(),
            "input quantizers",
        ),
        (opts.kv.is_some(), "kv"),
        (opts.bias_correction, "bias_correction"),
    ];
    if let Some((_, what)) = whole_model.iter().find(|(on, _)| *on) {
        return Err(CliError::config(
            "stream",
            what,
            "needs the whole model in memory; run without --stream",
        ));
    }
    let calib = std::fs::read_to_string(calib_text).map_err(|source| CliError::Io {
        what: calib_text.display().to_string(),
        source,
    })?;
    let tokenizer = LlamaTokenizer::from_file(burn_quant_llm::tokenizer_path(model_path))?;
    let calib_cfg = CalibrationConfig::default()
        .with_num_windows(opts.calib_windows)
        .with_window(opts.calib_window)
        .with_seed(opts.seed);
    let windows = calibration_windows_from_text(&tokenizer, &calib, &calib_cfg)?;
    let spec = opts.weight_spec()?;
    let config = PtqConfig {
        weights: spec.clone(),
        algorithm: opts.algorithm()?,
        batch_windows: opts.batch_windows,
    };
    let mut options = burn_quant_llm::StreamOptions::new(out);
    options.provenance.push(("spec".into(), spec.to_string()));
    Ok(burn_quant_llm::quantize_llama_streaming(
        model_path, &windows, &config, &options, progress,
    )?)
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
            (Some(3), Some(64), "qronos", true)
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
            weight_bits: Some(1),
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
            use_quant_activations: Some(true),
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

    /// The recipe's structured fields: conventions by name, a full spec or a preset name
    /// (never with the short fields), the Stage 1 list and the KV spec refused until they
    /// exist, Stage-2 options applied or refused where they do not belong, an export target
    /// without a ggml structure refused before anything runs.
    #[test]
    fn recipes_name_every_stage_and_refuse_what_they_cannot_do() {
        use burn_quant::SymmetricScale;
        let o = |toml_text: &str| toml::from_str::<PtqLlmOptions>(toml_text).unwrap();
        let spec = o("weight_scale = \"neg-qmin\"\nweight_bits = 3\n")
            .weight_spec()
            .unwrap();
        assert_eq!(spec.scale.symmetric, SymmetricScale::NegQmin);
        assert_eq!(spec.format, Format::int(3));
        assert_eq!(
            o("weights = \"gguf_q4_0\"\n").weight_spec().unwrap(),
            QuantSpec::gguf_q4_0()
        );
        assert_eq!(
            o("weights = \"uint4_g32\"\n").weight_spec().unwrap(),
            QuantSpec::int4_weight_per_group(32).asymmetric()
        );
        let full = QuantSpec::int4_weight_per_group(64).with_symmetric_scale(SymmetricScale::mse());
        let json = format!("{{\"weights\": {}}}", serde_json::to_string(&full).unwrap());
        let from_json: PtqLlmOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json.weight_spec().unwrap(), full);
        let e = o("weights = \"int4_g128\"\nweight_bits = 3\n")
            .weight_spec()
            .unwrap_err();
        assert!(e.to_string().contains("weight_bits"), "{e}");
        assert!(o("weights = \"int4_gx\"\n").weight_spec().is_err());
        let mx2 = o("weights = \"mxint2\"\n").weight_spec().unwrap();
        assert_eq!(mx2.granularity, QuantSpec::mxint8().granularity);
        assert_eq!(
            mx2.format,
            Format::Int {
                bits: 2,
                signed: true,
                narrow: true
            }
        );
        assert!(o("weights = \"mxint1\"\n").weight_spec().is_err());
        // Narrow grids have no −qmin level: the default convention becomes qmax, an explicit
        // other one is an error naming the field.
        assert_eq!(
            o("narrow_range = true\n")
                .weight_spec()
                .unwrap()
                .scale
                .symmetric,
            SymmetricScale::Qmax
        );
        let e = o("narrow_range = true\nweight_scale = \"signed-extreme\"\n")
            .weight_spec()
            .unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("scale.symmetric"), "{chain}");
        let e = o("weight_scale = \"biggest\"\n").weight_spec().unwrap_err();
        assert!(e.to_string().contains("weight_scale"), "{e}");
        // Stage 1 by name or by table, in order; bad entries name the field.
        let r = o("stage1 = [\"quarot\", { smoothquant = { alpha = 0.6 } }]\nalgo = \"rtn\"\n");
        r.check().unwrap();
        let steps = r.stage1_steps().unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].label(), "smoothquant α=0.6");
        assert!(
            r.label().starts_with("quarot + smoothquant α=0.6 + rtn"),
            "{}",
            r.label()
        );
        let e = o("stage1 = [\"smoothquant:3\"]\n").check().unwrap_err();
        assert!(e.to_string().contains("stage1"), "{e}");
        let e = o("stage1 = [\"awq\"]\n").check().unwrap_err();
        assert!(e.to_string().contains("stage1"), "{e}");
        // KV by preset or in full (dynamic only); queries need a KV spec.
        let kv = o("kv = \"int4\"\nquant_queries = true\n")
            .kv_quant()
            .unwrap()
            .unwrap();
        assert_eq!(kv.keys.format, Format::int(4));
        assert_eq!(kv.queries, Some(kv.keys));
        let e = o("kv = \"int8_channel\"\n").check().unwrap_err();
        assert!(e.to_string().contains("kv"), "{e}");
        let e = o("quant_queries = true\n").check().unwrap_err();
        assert!(e.to_string().contains("quant_queries"), "{e}");
        let full = QuantSpec::int8_act_per_tensor();
        let json = format!(
            "{{\"kv\": {{\"keys\": {0}, \"values\": {0}}}}}",
            serde_json::to_string(&full).unwrap()
        );
        let static_kv: PtqLlmOptions = serde_json::from_str(&json).unwrap();
        let e = static_kv.check().unwrap_err();
        assert!(e.to_string().contains("dynamic"), "{e}");
        // A GGUF cannot hold online rotations: refused before anything runs.
        let e =
            o("stage1 = [\"hip\"]\nexport = \"out.gguf\"\ngroup_size = 32\nf16_scales = true\n")
                .check()
                .unwrap_err();
        assert!(e.to_string().contains("online"), "{e}");
        o("stage1 = [\"rotate_residual\", \"smoothquant\"]\nexport = \"out.gguf\"\ngroup_size = 32\nf16_scales = true\n")
            .check()
            .unwrap();
        let e = o("algo = \"gptq\"\nqronos_alpha = 1e-6\n")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("qronos_alpha"), "{e}");
        o("algo = \"rtn\"\nstatic_groups = true\n").check().unwrap();
        let e = o("algo = \"gpfq\"\nstatic_groups = false\n")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("static_groups"), "{e}");
        let a = o("algo = \"qronos\"\nqronos_alpha = 1e-6\nstatic_groups = false\n")
            .algorithm()
            .unwrap();
        let burn_quant_ptq::Algorithm::Qronos(q) = a else {
            panic!("{a:?}")
        };
        assert_eq!((q.alpha, q.static_groups), (1e-6, false));
        // The algorithm in full: every parameter, never beside the short options.
        let r = o("[stage2]\nalgo = \"adaround\"\niterations = 300\n");
        let burn_quant_ptq::Algorithm::Adaround(a) = r.algorithm().unwrap() else {
            panic!("{:?}", r.algorithm())
        };
        assert_eq!(a.iterations, 300);
        assert_eq!(r.algo_name(), "adaround");
        assert!(r.label().contains("\"iterations\":300"), "{}", r.label());
        let e = o("act_order = true\n[stage2]\nalgo = \"gptq\"\n")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("act_order"), "{e}");
        let e = o("algo = \"rtn\"\n[stage2]\nalgo = \"gptq\"\n")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("stage2"), "{e}");
        let e = o("[stage2]\nalgo = \"adaround\"\nlambda = -1.0\n")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("stage2"), "{e}");
        assert!(o("[stage2]\nalgo = \"qronos\"\n").quant_activations() == false);
        assert!(o("input_bits = 8\n[stage2]\nalgo = \"qronos\"\n").quant_activations());
        // The export target is checked before the model is loaded.
        let e = o("export = \"out.gguf\"\n").check().unwrap_err();
        assert!(e.to_string().contains("out.gguf"), "{e}");
        o("export = \"out.gguf\"\ngroup_size = 32\nf16_scales = true\n")
            .check()
            .unwrap();
        // Activations by preset or in full, never beside the short fields.
        let q = o("inputs = \"int4_token\"\n")
            .input_quant()
            .unwrap()
            .unwrap();
        assert!(!q.is_static());
        let InputQuant::Spec(spec) = q else {
            panic!("{q:?}")
        };
        assert_eq!(spec.format, Format::int(4));
        assert_eq!(
            spec.check_shape(&[2, 5, 576]).unwrap().cells(),
            10,
            "one scale per token"
        );
        assert!(
            o("inputs = \"int8_tensor\"\n")
                .input_quant()
                .unwrap()
                .unwrap()
                .is_static()
        );
        assert!(o("inputs = \"mxfp4\"\n").input_quant().is_ok());
        let e = o("inputs = \"int8_tensor\"\ninput_bits = 8\n")
            .input_quant()
            .unwrap_err();
        assert!(e.to_string().contains("input_bits"), "{e}");
        assert!(o("inputs = \"int8_channel\"\n").input_quant().is_err());
        // Brevitas calibrates GPFQ and Qronos on quantized activations whatever its flag says:
        // so does the default here, and an explicit choice wins.
        assert!(o("algo = \"qronos\"\ninput_bits = 8\n").quant_activations());
        assert!(o("algo = \"gpfq\"\ninput_bits = 8\n").quant_activations());
        assert!(!o("algo = \"gptq\"\ninput_bits = 8\n").quant_activations());
        assert!(!o("algo = \"qronos\"\n").quant_activations());
        assert!(
            !o("algo = \"qronos\"\ninput_bits = 8\nuse_quant_activations = false\n")
                .quant_activations()
        );
        // Options round-trip through both recipe syntaxes.
        let opts = o("weight_scale = \"mse\"\nalgo = \"gptaq\"\nstatic_groups = true\n");
        let back: PtqLlmOptions = toml::from_str(&toml::to_string(&opts).unwrap()).unwrap();
        assert_eq!(back, opts);
        assert_eq!(opts.label(), "gptaq W4 g128 mse static-groups");
    }
}
