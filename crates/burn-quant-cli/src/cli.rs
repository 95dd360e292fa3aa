//! Command-line interface of `burnq` (clap derive).
//!
//! `burnq` without a subcommand runs the quickstart; `burnq qat` runs the QAT demo, `burnq
//! ptq-llm` post-training quantization of an LLM, `burnq export` and `burnq inspect` write and
//! read GGUF, ONNX and burnpack files, `burnq quantize-onnx` quantizes an ONNX model.

use clap::{Args, Parser, Subcommand};

use crate::error::{CliError, Result};
use crate::qat::{self, QatConfig};
use crate::quickstart::{self, QuickstartConfig};

/// burnq: neural-network quantization for Burn.
#[derive(Debug, Parser)]
#[command(
    name = "burnq",
    version,
    about = "Neural-network quantization for the Burn deep learning framework",
    after_help = "Without a subcommand, burnq runs the quickstart."
)]
pub struct Cli {
    /// What to do; the quickstart when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands of `burnq`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a small MLP on the embedded MNIST subset and compare quantization formats on it.
    Quickstart(QuickstartArgs),
    /// Quantization-aware training: a small CNN of quantized layers on the embedded MNIST
    /// subset, trained in float with burn-train's Learner, then fine-tuned as W8A8, W4A4 with
    /// learned (LSQ) scales, ternary weights with 8-bit activations, and W4A4 with the RDFS
    /// rounding rule.
    Qat(QatArgs),
    /// Show what a GGUF, ONNX or burnpack file holds: metadata, tensors (type, dims, bytes,
    /// bits per weight for GGUF), totals; ONNX opsets, inputs/outputs, ops and initializers.
    Inspect(InspectArgs),
    /// Write a quantized model: a llama GGUF re-quantized with a llama.cpp mix
    /// (`--format gguf:Q4_K_M`), or the quickstart MLP (`--model mnist-mlp`, trained here) as
    /// ONNX QDQ, QONNX or a Burn burnpack record.
    Export(ExportArgs),
    /// Post-training quantization of a Llama-family LLM (Hugging Face directory or llama
    /// GGUF): block-by-block calibration, a Stage-2 algorithm (RTN, GPTQ, GPFQ, GPTAQ,
    /// Qronos), optional activation quantization, then perplexity under the fixed protocol.
    PtqLlm(PtqLlmArgs),
    /// A grid of `ptq-llm` recipes on one loaded model (algorithms × formats × group sizes ×
    /// scale conventions × …), written as a Markdown table, a CSV file and an SVG plot; a
    /// failed cell is reported and the sweep goes on.
    Sweep(SweepArgs),
    /// Quantize an ONNX model with a recipe (recipes/onnx/: W8A8, W4A8, W4A16, FP8): import,
    /// calibrate on a directory of .npy/.png inputs, optional Stage 2 (--algo gptq), write it
    /// back as QDQ ONNX, and compare it with the float model (SQNR, --metric top1 or iou@T).
    QuantizeOnnx(crate::quantize_onnx::QuantizeOnnxArgs),
}

/// The texts of the LLM protocol.
#[derive(Debug, Clone, Args)]
pub struct TextArgs {
    /// Evaluation text.
    #[arg(
        long,
        default_value = "../shared/data/austen-text/pride_prejudice_eval_slice.txt"
    )]
    pub eval_text: std::path::PathBuf,
    /// Calibration text (never the evaluation text).
    #[arg(long, default_value = "../shared/data/austen-text/emma.txt")]
    pub calib_text: std::path::PathBuf,
}

/// Options of `burnq sweep`.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// The sweep file (TOML or JSON): `[base]` recipe fields and `[grid]` axes.
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// The model (overrides the sweep file's `model`).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Directory for sweep.md, sweep.csv and sweep.svg.
    #[arg(long, default_value = "sweep-out")]
    pub out: std::path::PathBuf,
    /// The evaluation and calibration texts.
    #[command(flatten)]
    pub texts: TextArgs,
}

/// Options of `burnq ptq-llm` (see `PtqLlmOptions` for their meaning and defaults). With
/// `--config`, every flag given overrides the recipe's value.
#[derive(Debug, Clone, Args)]
pub struct PtqLlmArgs {
    /// A Hugging Face directory (config.json, model.safetensors, tokenizer.json) or a llama
    /// GGUF file with tokenizer.json beside it.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// A TOML or JSON recipe with the fields of the flags (snake_case); `stage1`, `weights`,
    /// `inputs` and `kv` also take tables (full steps and specs).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// A Stage 1 step, repeatable, applied in the order given (replaces the recipe's list):
    /// fold_norms, smoothquant[:alpha], rotate_residual, rotate_heads, rotate_down,
    /// rotate_qk, quarot, hip (each [:had|:ort]), magr[:alpha].
    #[arg(long)]
    pub stage1: Vec<String>,
    /// KV-cache quantization, one dynamic scale per head and token: int4, int8 or fp8_e4m3.
    #[arg(long)]
    pub kv: Option<String>,
    /// Also quantize the attention queries with the key spec (needs --kv).
    #[arg(long)]
    pub quant_queries: bool,
    /// After Stage 2, add to every block linear the bias that removes its mean output error
    /// on the calibration set.
    #[arg(long)]
    pub bias_correction: bool,
    /// Weight bits [default: 4].
    #[arg(long)]
    pub weight_bits: Option<u8>,
    /// Group size along the input axis, 0 for per output channel [default: 128].
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Asymmetric (unsigned + zero-point) weights.
    #[arg(long)]
    pub asymmetric: bool,
    /// f16 scales and offsets (ggml's legacy layout; with --asymmetric --group-size 32 and 4
    /// bits, Q4_1's structure).
    #[arg(long)]
    pub f16_scales: bool,
    /// Symmetric weight scale convention: qmax, neg-qmin (Brevitas's default), signed-extreme
    /// (ggml's Q4_0 rule) or mse [default: signed-extreme, the best measured on SmolLM2].
    #[arg(long)]
    pub weight_scale: Option<String>,
    /// Narrow signed weight grid (−7..7 at 4 bits; Brevitas's --weight-narrow-range).
    #[arg(long)]
    pub narrow_range: bool,
    /// The weight spec in full by preset name (int4_g128, gguf_q4_0, mxfp4, …) instead of the
    /// short weight flags.
    #[arg(long)]
    pub weights: Option<String>,
    /// rtn, gptq, gpfq, gptaq, qronos or adaround (layer-wise, 1000 Adam steps per layer:
    /// about 30 s per SmolLM2 layer on 2 cores) [default: gptq].
    #[arg(long)]
    pub algo: Option<String>,
    /// Act-order (GPTQ family).
    #[arg(long)]
    pub act_order: bool,
    /// Group scales from the original weights before the sweep (GPTQ/GPTAQ/Qronos; Brevitas
    /// always does): `true` or `false` [default: the algorithm's].
    #[arg(long)]
    pub static_groups: Option<bool>,
    /// Qronos's ridge parameter α [default: 1e-5; Brevitas 1e-6].
    #[arg(long)]
    pub qronos_alpha: Option<f64>,
    /// Activation bits (W8A8, W4A8 flows); float activations when absent.
    #[arg(long)]
    pub input_bits: Option<u8>,
    /// `tensor` (static per-tensor) or `token` (dynamic per-token) activation scales
    /// [default: tensor].
    #[arg(long)]
    pub input_granularity: Option<String>,
    /// Statistic of static activation scales: absmax, percentile (99.999, Brevitas's
    /// default), percentile:Q or mse [default: absmax].
    #[arg(long)]
    pub input_stat: Option<String>,
    /// Calibrate the weight algorithm on quantized activations (Brevitas's
    /// `--gpxq-use-quant-activations`): the activation quantizers are attached (and static ones
    /// calibrated) before the weights are quantized. Needs --input-bits. Without the flag,
    /// Brevitas's rule: on for GPFQ and Qronos, off otherwise; `--use-quant-activations false`
    /// turns it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub use_quant_activations: Option<bool>,
    /// Calibration windows of 512 tokens from the calibration text [default: 16].
    #[arg(long)]
    pub calib_windows: Option<usize>,
    /// Seed of the calibration sampler [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluation windows [default: the protocol's 16].
    #[arg(long)]
    pub eval_windows: Option<usize>,
    /// Skip the FP32 evaluation.
    #[arg(long)]
    pub no_float: bool,
    /// Skip the KL divergence from FP32 (halves the evaluation time).
    #[arg(long)]
    pub no_kl: bool,
    /// Write the quantized model as GGUF, code for code (needs a ggml weight structure, e.g.
    /// `--f16-scales --group-size 32`: Q4_0, or Q4_1 with `--asymmetric`).
    #[arg(long)]
    pub export: Option<std::path::PathBuf>,
    /// Quantize a model larger than memory: the checkpoint is memory-mapped and read one block
    /// at a time, the GGUF (`--export`, required) written as the sweep goes; weight-only, no
    /// evaluation (the same file as without `--stream`).
    #[arg(long)]
    pub stream: bool,
    /// The evaluation and calibration texts.
    #[command(flatten)]
    pub texts: TextArgs,
}

impl PtqLlmArgs {
    /// The options these flags select: the `--config` recipe (or the defaults) with every flag
    /// that was given applied on top, then checked before anything is loaded.
    pub fn options(&self) -> Result<crate::ptq_llm::PtqLlmOptions> {
        let mut o = match &self.config {
            Some(path) => crate::ptq_llm::PtqLlmOptions::from_file(path)?,
            None => crate::ptq_llm::PtqLlmOptions::default(),
        };
        fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
            if let Some(v) = flag {
                *field = v.clone();
            }
        }
        fn set_opt<T: Clone>(field: &mut Option<T>, flag: &Option<T>) {
            if flag.is_some() {
                *field = flag.clone();
            }
        }
        let on = |b: bool| b.then_some(true);
        if !self.stage1.is_empty() {
            o.stage1 = self
                .stage1
                .iter()
                .cloned()
                .map(burn_quant_llm::stage1::Stage1Entry::Name)
                .collect();
        }
        set_opt(
            &mut o.kv,
            &self.kv.clone().map(crate::ptq_llm::KvChoice::Preset),
        );
        if self.quant_queries {
            o.quant_queries = true;
        }
        if self.bias_correction {
            o.bias_correction = true;
        }
        set_opt(&mut o.weight_bits, &self.weight_bits);
        set_opt(&mut o.group_size, &self.group_size);
        set_opt(&mut o.asymmetric, &on(self.asymmetric));
        set_opt(&mut o.f16_scales, &on(self.f16_scales));
        set_opt(&mut o.weight_scale, &self.weight_scale);
        set_opt(&mut o.narrow_range, &on(self.narrow_range));
        set_opt(
            &mut o.weights,
            &self
                .weights
                .clone()
                .map(crate::ptq_llm::WeightSpecChoice::Preset),
        );
        set(&mut o.algo, &self.algo);
        set(&mut o.act_order, &on(self.act_order));
        set_opt(&mut o.static_groups, &self.static_groups);
        set_opt(&mut o.qronos_alpha, &self.qronos_alpha);
        set_opt(&mut o.input_bits, &self.input_bits);
        set(&mut o.input_granularity, &self.input_granularity);
        set(&mut o.input_stat, &self.input_stat);
        set_opt(&mut o.use_quant_activations, &self.use_quant_activations);
        set(&mut o.calib_windows, &self.calib_windows);
        set(&mut o.seed, &self.seed);
        set_opt(&mut o.eval_windows, &self.eval_windows);
        if self.no_float {
            o.eval_float = false;
        }
        if self.no_kl {
            o.kl = false;
        }
        set_opt(&mut o.export, &self.export);
        o.check()?;
        Ok(o)
    }
}

/// Options of `burnq export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// `mnist-mlp` (the quickstart MLP, trained on the embedded MNIST subset) or a llama GGUF
    /// file (dequantized on load).
    #[arg(long, default_value = "mnist-mlp")]
    pub model: String,
    /// `gguf:<mix>` (Q4_K_M, Q4_K_S, Q5_K_M, Q6_K, Q8_0, Q4_0, …), `onnx-qdq`, `qonnx` or
    /// `burnpack`.
    #[arg(long)]
    pub format: crate::export::ExportFormat,
    /// The file to write (atomically: a temporary file renamed into place).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Weight recipe of `mnist-mlp`: int8, int4-g32, int4-g128, fp8-e4m3 or ternary.
    #[arg(long, default_value = "int8")]
    pub weights: String,
    /// llama.cpp importance matrix (GGUF) for the importance-weighted GGUF quantizers.
    #[arg(long)]
    pub imatrix: Option<std::path::PathBuf>,
    /// Seed of `mnist-mlp`'s data split, weights and shuffles.
    #[arg(long, default_value_t = QuickstartConfig::default().seed)]
    pub seed: u64,
}

/// Options of `burnq inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The file to read.
    pub file: std::path::PathBuf,
}

/// Options of `burnq qat`.
#[derive(Debug, Clone, Args)]
pub struct QatArgs {
    /// Epochs of float training.
    #[arg(long, default_value_t = QatConfig::default().float_epochs)]
    pub epochs: usize,
    /// Epochs of fine-tuning per quantized variant.
    #[arg(long, default_value_t = QatConfig::default().qat_epochs)]
    pub qat_epochs: usize,
    /// Training images (of the embedded 10,000; the test split takes `--test` more).
    #[arg(long, default_value_t = QatConfig::default().n_train)]
    pub train: usize,
    /// Test images.
    #[arg(long, default_value_t = QatConfig::default().n_test)]
    pub test: usize,
    /// Seed of the data split, the initial weights and the shuffles.
    #[arg(long, default_value_t = QatConfig::default().seed)]
    pub seed: u64,
    /// Adam mini-batch size.
    #[arg(long, default_value_t = QatConfig::default().batch_size)]
    pub batch_size: usize,
    /// Adam learning rate of float training.
    #[arg(long, default_value_t = QatConfig::default().float_lr)]
    pub lr: f64,
    /// Adam learning rate of fine-tuning.
    #[arg(long, default_value_t = QatConfig::default().qat_lr)]
    pub qat_lr: f64,
}

impl QatArgs {
    /// The QAT configuration these options select.
    pub fn config(&self) -> QatConfig {
        QatConfig {
            float_epochs: self.epochs,
            qat_epochs: self.qat_epochs,
            n_train: self.train,
            n_test: self.test,
            seed: self.seed,
            batch_size: self.batch_size,
            float_lr: self.lr,
            qat_lr: self.qat_lr,
            ..QatConfig::default()
        }
    }
}

/// Options of `burnq quickstart`.
#[derive(Debug, Clone, Args)]
pub struct QuickstartArgs {
    /// Training epochs.
    #[arg(long, default_value_t = QuickstartConfig::default().epochs)]
    pub epochs: usize,
    /// Seed of the data split, the initial weights and the shuffles.
    #[arg(long, default_value_t = QuickstartConfig::default().seed)]
    pub seed: u64,
    /// Hidden units of the MLP (a multiple of 128 gives every group size of the zoo whole groups).
    #[arg(long, default_value_t = QuickstartConfig::default().d_hidden)]
    pub hidden: usize,
    /// Adam mini-batch size.
    #[arg(long, default_value_t = QuickstartConfig::default().batch_size)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = QuickstartConfig::default().learning_rate)]
    pub lr: f64,
}

impl Default for QuickstartArgs {
    fn default() -> Self {
        let d = QuickstartConfig::default();
        Self {
            epochs: d.epochs,
            seed: d.seed,
            hidden: d.d_hidden,
            batch_size: d.batch_size,
            lr: d.learning_rate,
        }
    }
}

impl QuickstartArgs {
    /// The quickstart configuration these options select.
    pub fn config(&self) -> QuickstartConfig {
        QuickstartConfig {
            epochs: self.epochs,
            seed: self.seed,
            d_hidden: self.hidden,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            ..QuickstartConfig::default()
        }
    }
}

/// Runs the command line `cli`, printing to stdout.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => run_quickstart(&QuickstartArgs::default()),
        Some(Command::Quickstart(args)) => run_quickstart(&args),
        Some(Command::PtqLlm(args)) => {
            let opts = args.options()?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} blocks, {elapsed_precise}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(opts.label());
            if args.stream {
                let r = crate::ptq_llm::run_streaming(
                    &args.model,
                    &args.texts.calib_text,
                    &opts,
                    &mut |p| {
                        bar.set_length(p.blocks as u64);
                        bar.set_position(p.block as u64 + 1);
                    },
                )?;
                bar.finish_and_clear();
                let mb = |b: u64| b as f64 / 1e6;
                println!(
                    "streamed {} layers of a {:.0} MB (f32) model into {} ({:.1} MB) in {:.1} s \
                     (read {:.1} s, forward {:.1} s, statistics {:.1} s, algorithm {:.1} s, \
                     write {:.1} s); peak RSS {}",
                    r.layers.len(),
                    mb(r.model_f32_bytes),
                    opts.export
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string()),
                    mb(r.bytes_written),
                    r.timings.total.as_secs_f64(),
                    r.read.as_secs_f64(),
                    r.timings.forward.as_secs_f64(),
                    r.timings.statistics.as_secs_f64(),
                    r.timings.algorithm.as_secs_f64(),
                    r.write.as_secs_f64(),
                    r.peak_rss
                        .map_or("unknown".into(), |b| format!("{:.1} MB", mb(b)))
                );
                return Ok(());
            }
            let report = crate::ptq_llm::run(
                &args.model,
                &args.texts.eval_text,
                &args.texts.calib_text,
                &opts,
                &mut |p| {
                    bar.set_length(p.blocks as u64);
                    bar.set_position(p.block as u64 + 1);
                },
            )?;
            bar.finish_and_clear();
            print!("{report}");
            Ok(())
        }
        Some(Command::Sweep(args)) => {
            let config = crate::sweep::SweepConfig::from_file(&args.config)?;
            let model = args
                .model
                .clone()
                .or_else(|| config.model.clone())
                .ok_or_else(|| {
                    CliError::config("model", "none", "give --model or `model` in the sweep file")
                })?;
            // Refuse a malformed base or grid before the model is loaded.
            config.base_options()?;
            let cells = config.cells()?;
            let mut session = crate::ptq_llm::PtqLlmSession::open(
                &model,
                &args.texts.eval_text,
                &args.texts.calib_text,
            )?;
            let bar = indicatif::ProgressBar::new(cells.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "[{bar:30}] {pos}/{len} cells, {elapsed_precise} (eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let started = std::time::Instant::now();
            let mut write_error = None;
            let report = crate::sweep::run_sweep(
                &mut session,
                &config,
                &mut |i, n, label| {
                    bar.set_position(i as u64);
                    bar.set_message(label.to_string());
                    if bar.is_hidden() {
                        // No terminal (a log file): one line per cell instead of the bar.
                        eprintln!(
                            "[{:>7.1} s] cell {}/{n}: {label}",
                            started.elapsed().as_secs_f64(),
                            i + 1
                        );
                    }
                },
                // The files so far after every cell: a stopped sweep keeps what it finished.
                &mut |partial| {
                    if let Err(e) = partial.write(&args.out) {
                        write_error.get_or_insert(e);
                    }
                },
            )?;
            if let Some(e) = write_error {
                return Err(e);
            }
            bar.finish_and_clear();
            print!("{}", report.markdown());
            for p in report.write(&args.out)? {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        Some(Command::Export(args)) => {
            print!("{}", run_export(&args)?);
            Ok(())
        }
        Some(Command::QuantizeOnnx(args)) => {
            print!("{}", crate::quantize_onnx::run(&args)?);
            Ok(())
        }
        Some(Command::Inspect(args)) => {
            print!("{}", crate::inspect::inspect(&args.file)?);
            Ok(())
        }
        Some(Command::Qat(args)) => {
            let report = qat::run(&args.config())?;
            print!("{report}");
            Ok(())
        }
    }
}

/// Runs `burnq export` and returns its report.
pub fn run_export(args: &ExportArgs) -> Result<String> {
    use crate::export::{ExportFormat, export_llm_gguf, export_mnist_mlp};
    use std::fmt::Write as _;
    let mut out = String::new();
    match (&args.format, args.model.as_str()) {
        (ExportFormat::Gguf(mix), model) if model != "mnist-mlp" => {
            let e = export_llm_gguf(
                std::path::Path::new(model),
                mix.clone(),
                args.imatrix.as_deref(),
                &args.out,
            )?;
            let _ = writeln!(
                out,
                "wrote {} ({} bytes, {} tensors, mix {mix})",
                e.path.display(),
                e.report.file_bytes,
                e.report.tensors.len()
            );
            for (ty, n) in e.report.type_counts() {
                let _ = writeln!(out, "  {ty:?}: {n} tensors");
            }
            let _ = writeln!(
                out,
                "run it: llama-cli -m {} -p \"Once upon a time\" -n 64 --temp 0",
                e.path.display()
            );
        }
        (format, "mnist-mlp") => {
            let config = QuickstartConfig {
                seed: args.seed,
                ..QuickstartConfig::default()
            };
            let e = export_mnist_mlp(&config, &args.weights, format, &args.out)?;
            let _ = writeln!(
                out,
                "mnist-mlp, weights {}: float accuracy {:.2} %, quantized {:.2} %",
                args.weights,
                e.float_accuracy * 100.0,
                e.quant_accuracy * 100.0
            );
            let _ = writeln!(
                out,
                "wrote {} ({} bytes) as {format}",
                e.path.display(),
                e.bytes
            );
        }
        (format, model) => {
            return Err(CliError::config(
                "model",
                model,
                format!("{format} export is for mnist-mlp; llama GGUF files export as gguf:<mix>"),
            ));
        }
    }
    Ok(out)
}

fn run_quickstart(args: &QuickstartArgs) -> Result<()> {
    let report = quickstart::run(&args.config())?;
    print!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flag given with `--config` overrides the recipe's value; the recipe's other fields
    /// stay; an invalid combination is refused before anything is loaded.
    #[test]
    fn ptq_llm_flags_override_the_recipe() {
        let dir = std::env::temp_dir().join(format!("burnq-cli-recipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.toml");
        std::fs::write(
            &path,
            "algo = \"qronos\"\nweight_bits = 4\nweight_scale = \"mse\"\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut v = vec!["burnq", "ptq-llm", "--model", "m", "--config"];
            v.push(path.to_str().unwrap());
            v.extend_from_slice(extra);
            match Cli::try_parse_from(v).expect("parses").command {
                Some(Command::PtqLlm(a)) => a.options(),
                other => panic!("unexpected {other:?}"),
            }
        };
        let o = args(&["--weight-bits", "3", "--use-quant-activations", "false"]).unwrap();
        assert_eq!(
            (o.algo.as_str(), o.weight_bits, o.weight_scale.as_deref()),
            ("qronos", Some(3), Some("mse"))
        );
        assert_eq!(o.use_quant_activations, Some(false));
        let o = args(&["--algo", "gptq", "--static-groups", "true", "--no-kl"]).unwrap();
        assert_eq!(
            (o.algo.as_str(), o.static_groups, o.kl),
            ("gptq", Some(true), false)
        );
        // `--weights` beside the recipe's short weight fields is an error, not a silent choice.
        let e = args(&["--weights", "gguf_q4_0"]).unwrap_err().to_string();
        assert!(e.contains("weight_bits"), "{e}");
        let e = args(&["--export", "x.gguf"]).unwrap_err().to_string();
        assert!(
            e.contains("x.gguf"),
            "a g128 spec has no ggml structure: {e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn quantize_onnx_parses_and_flags_override_the_recipe() {
        let dir = std::env::temp_dir().join(format!("burnq-cli-qonnx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.toml");
        std::fs::write(
            &path,
            "calibration_batch = 4\nmetric = \"top1\"\n[graph]\n[algorithm]\nalgo = \"gptq\"\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut v = vec![
                "burnq",
                "quantize-onnx",
                "in.onnx",
                "--calib",
                "c",
                "--out",
                "o.onnx",
                "--recipe",
            ];
            v.push(path.to_str().unwrap());
            v.extend_from_slice(extra);
            match Cli::try_parse_from(v).expect("parses").command {
                Some(Command::QuantizeOnnx(a)) => a,
                other => panic!("unexpected {other:?}"),
            }
        };
        let a = parse(&[
            "--algo",
            "qronos",
            "--metric",
            "iou@0.3",
            "--preprocess",
            "ppocr-cls",
            "--eval",
            "e",
        ]);
        assert_eq!(a.input, std::path::PathBuf::from("in.onnx"));
        // The recipe file has no weight spec: Stage 2 is refused before anything loads ...
        let e = a.recipe().unwrap_err().to_string();
        assert!(e.contains("algorithm"), "{e}");
        // ... unless `--algo none` turns it off.
        let r = parse(&[
            "--algo",
            "none",
            "--metric",
            "iou@0.3",
            "--calibration-batch",
            "2",
        ])
        .recipe()
        .unwrap();
        assert_eq!((r.algorithm, r.calibration_batch), (None, 2));
        assert_eq!(
            r.metric,
            Some(burn_quant::graph::pipeline::Metric::Iou { threshold: 0.3 })
        );
        let r = parse(&["--algo", "none", "--preprocess", "ppocr-det"])
            .recipe()
            .unwrap();
        assert_eq!(
            r.preprocess,
            Some(burn_quant::graph::dataset::Preprocess::ppocr_det())
        );
        assert_eq!(
            r.metric,
            Some(burn_quant::graph::pipeline::Metric::Top1),
            "the recipe's"
        );
        let e = parse(&["--metric", "top5"])
            .recipe()
            .unwrap_err()
            .to_string();
        assert!(e.contains("top5"), "{e}");
        assert!(
            Cli::try_parse_from(["burnq", "quantize-onnx", "in.onnx"]).is_err(),
            "--recipe, --calib, --out are required"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn no_subcommand_and_quickstart_parse() {
        let cli = Cli::try_parse_from(["burnq"]).expect("parses");
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["burnq", "quickstart", "--epochs", "3"]).expect("parses");
        match cli.command {
            Some(Command::Quickstart(a)) => assert_eq!(a.config().epochs, 3),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["burnq", "ptq-llm"]).is_err(),
            "--model is required"
        );
        let cli = Cli::try_parse_from(["burnq", "qat", "--qat-epochs", "1", "--seed", "7"])
            .expect("parses");
        match cli.command {
            Some(Command::Qat(a)) => {
                let c = a.config();
                assert_eq!((c.qat_epochs, c.seed), (1, 7));
                assert_eq!(c.float_epochs, QatConfig::default().float_epochs);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
