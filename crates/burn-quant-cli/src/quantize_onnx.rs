//! `burnq quantize-onnx`: a thin shell over [`quantize_onnx_file`] — read the recipe, apply
//! the flags, show a progress bar, print the summary table. Everything it does is one library
//! call from Rust:
//!
//! ```no_run
//! use std::path::Path;
//! use burn::tensor::Device;
//! use burn_quant::graph::pipeline::{InputSet, OnnxQuantRecipe, quantize_onnx_file};
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let recipe: OnnxQuantRecipe = toml::from_str(&std::fs::read_to_string("recipes/onnx/w8a8.toml")?)?;
//! let report = quantize_onnx_file(
//!     Path::new("model.onnx"),
//!     Path::new("model.w8a8.onnx"),
//!     &recipe,
//!     &InputSet::dir("calib/"),
//!     None,
//!     &Device::flex(),
//!     |_| {},
//! )?;
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use burn_quant::graph::dataset::Preprocess;
use burn_quant::graph::pipeline::{
    InputSet, Metric, MetricResult, OnnxQuantError, OnnxQuantRecipe, OnnxQuantReport, Phase,
    Progress, quantize_onnx_file,
};
use burn_quant::ptq::Algorithm;
use clap::Args;

use crate::error::{CliError, Result};
use crate::table;

/// Options of `burnq quantize-onnx`.
#[derive(Debug, Clone, Args)]
pub struct QuantizeOnnxArgs {
    /// The float ONNX model.
    pub input: PathBuf,
    /// The recipe (TOML, or JSON by its `.json` extension): `[graph]` specs, optional
    /// `[preprocess]`, `calibration_batch`, `[algorithm]`, `metric`; see recipes/onnx/.
    #[arg(long)]
    pub recipe: PathBuf,
    /// Directory of calibration inputs: `.npy` tensors with a batch axis, or PNG images (with a
    /// `[preprocess]` in the recipe or --preprocess), read in file-name order.
    #[arg(long)]
    pub calib: PathBuf,
    /// The quantized model to write (atomically: a temporary file renamed into place).
    #[arg(long)]
    pub out: PathBuf,
    /// Stage 2 algorithm, overriding the recipe's: rtn, gptq, gpfq, gptaq or qronos (default
    /// settings), or `none` for plain rounding.
    #[arg(long)]
    pub algo: Option<String>,
    /// Directory of evaluation inputs (never the calibration ones); without it the quality is
    /// measured on the calibration inputs, and the report says so.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Metric beside the SQNR, overriding the recipe's: top1 (classifiers), iou@T (probability
    /// maps thresholded at T, e.g. iou@0.3) or sqnr (per example).
    #[arg(long)]
    pub metric: Option<String>,
    /// PNG preprocessing, overriding the recipe's: ppocr-det, ppocr-cls, or a TOML/JSON file
    /// with the fields of `Preprocess`.
    #[arg(long)]
    pub preprocess: Option<String>,
    /// Samples per calibration batch, overriding the recipe's.
    #[arg(long)]
    pub calibration_batch: Option<usize>,
}

impl QuantizeOnnxArgs {
    /// The recipe file with every flag given applied on top, checked.
    pub fn recipe(&self) -> Result<OnnxQuantRecipe> {
        let mut r: OnnxQuantRecipe = crate::ptq_llm::read_recipe_file(&self.recipe, "recipe")?;
        if let Some(a) = &self.algo {
            r.algorithm = if a.eq_ignore_ascii_case("none") {
                None
            } else {
                Some(
                    a.parse::<Algorithm>()
                        .map_err(|e| CliError::config("algo", a, e.to_string()))?,
                )
            };
        }
        if let Some(m) = &self.metric {
            r.metric = Some(
                m.parse::<Metric>()
                    .map_err(|e| CliError::config("metric", m, e))?,
            );
        }
        if let Some(p) = &self.preprocess {
            r.preprocess = Some(match p.to_ascii_lowercase().replace('_', "-").as_str() {
                "ppocr-det" => Preprocess::ppocr_det(),
                "ppocr-cls" => Preprocess::ppocr_cls(),
                _ => crate::ptq_llm::read_recipe_file(Path::new(p), "preprocess")?,
            });
        }
        if let Some(n) = self.calibration_batch {
            r.calibration_batch = n;
        }
        r.check().map_err(|e| self.cli_error(e))?;
        Ok(r)
    }

    /// The `burnq` error for a pipeline error.
    fn cli_error(&self, e: OnnxQuantError) -> CliError {
        match e {
            OnnxQuantError::Recipe { field, reason } => CliError::config(
                "recipe",
                self.recipe.display(),
                format!("`{field}`: {reason}"),
            ),
            OnnxQuantError::Io { path, source } => CliError::Io {
                what: path.display().to_string(),
                source,
            },
            OnnxQuantError::Write { source } => CliError::Onnx {
                what: self.out.display().to_string(),
                source,
            },
            e @ OnnxQuantError::Graph {
                phase: Phase::Load | Phase::Import,
                ..
            } => CliError::config("model", self.input.display(), e.to_string()),
            e @ (OnnxQuantError::Graph { .. } | OnnxQuantError::NothingQuantized { .. }) => {
                CliError::config("recipe", self.recipe.display(), e.to_string())
            }
            e => CliError::Data(e.to_string()),
        }
    }
}

/// Runs `burnq quantize-onnx` with `progress` hearing every phase and batch: the recipe and
/// flags, then [`quantize_onnx_file`] on `Device::flex()`. Returns the report (the model is
/// written to `args.out`).
pub fn quantize(
    args: &QuantizeOnnxArgs,
    progress: impl FnMut(Progress),
) -> Result<OnnxQuantReport> {
    let recipe = args.recipe()?;
    let calib = InputSet::dir(&args.calib);
    let eval = args.eval.as_ref().map(InputSet::dir);
    quantize_onnx_file(
        &args.input,
        &args.out,
        &recipe,
        &calib,
        eval.as_ref(),
        &Device::flex(),
        progress,
    )
    .map_err(|e| args.cli_error(e))
}

/// Runs `burnq quantize-onnx` with a progress bar on stderr and returns the summary table.
pub fn run(args: &QuantizeOnnxArgs) -> Result<String> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:<12} [{bar:30}] {pos}/{len} batches, {elapsed_precise}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = quantize(args, |p| match p {
        Progress::Phase(phase) => {
            bar.set_message(phase.to_string());
            bar.set_length(0);
            bar.set_position(0);
        }
        Progress::Batch { batch, batches, .. } => {
            bar.set_length(batches as u64);
            bar.set_position(batch as u64 + 1);
        }
    });
    bar.finish_and_clear();
    Ok(summary(args, &report?))
}

fn metric_cell(m: &MetricResult) -> String {
    match m.metric {
        Metric::Top1 => format!(
            "top1 {:.2} % same as float (worst {:.2} %)",
            100.0 * m.mean,
            100.0 * m.min
        ),
        Metric::Iou { threshold } => format!("IoU@{threshold} {:.4} (worst {:.4})", m.mean, m.min),
        Metric::Sqnr => format!("per-example SQNR {:.2} dB (worst {:.2})", m.mean, m.min),
    }
}

fn secs(d: std::time::Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The summary table of a run: nodes quantized by op kind, quality per output against the
/// float model, file sizes, time per phase.
pub fn summary(args: &QuantizeOnnxArgs, r: &OnnxQuantReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} -> {} (recipe {}, {})",
        args.input.display(),
        args.out.display(),
        args.recipe.display(),
        r.algorithm
            .as_deref()
            .map_or("round to nearest".to_string(), |a| format!("Stage 2 {a}"))
    );
    let _ = writeln!(out);
    let mut rows: Vec<[String; 4]> = r
        .nodes
        .by_kind
        .iter()
        .map(|k| {
            [
                k.kind.clone(),
                k.nodes.to_string(),
                k.weights.to_string(),
                k.activations.to_string(),
            ]
        })
        .collect();
    rows.push([
        "total".into(),
        r.nodes
            .by_kind
            .iter()
            .map(|k| k.nodes)
            .sum::<usize>()
            .to_string(),
        r.nodes.weights().to_string(),
        r.nodes.activations().to_string(),
    ]);
    out.push_str(&table::aligned(
        ["op", "nodes", "weight quantized", "activation quantized"],
        &rows,
    ));
    let _ = writeln!(
        out,
        "{} weight and {} activation quantizers; the model holds {} QuantizeLinear and {} DequantizeLinear, opset {} -> {}",
        r.nodes.weight_quantizers,
        r.nodes.activation_quantizers,
        r.nodes.onnx_quantize,
        r.nodes.onnx_dequantize,
        r.opset_before,
        r.opset_after
    );
    if r.nodes.unwritten_activations() > 0 {
        let _ = writeln!(
            out,
            "warning: {} of {} activation quantizers are missing from the written model (an export \
             limitation): the file is less quantized than the graph measured below",
            r.nodes.unwritten_activations(),
            r.nodes.activation_sites
        );
    }
    if !r.stage2_skipped.is_empty() {
        let _ = writeln!(
            out,
            "Stage 2 handles Linear and Conv1d/Conv2d; round to nearest kept for {}",
            r.stage2_skipped.join(", ")
        );
    }
    let _ = writeln!(out);
    let rows: Vec<[String; 5]> = r
        .outputs
        .iter()
        .map(|o| {
            [
                o.name.clone(),
                format!("{:.2} dB", o.sqnr_db),
                format!("{:.3e}", o.max_abs_error),
                format!("{:.3e}", o.mean_abs_error),
                o.metric.as_ref().map_or("-".into(), metric_cell),
            ]
        })
        .collect();
    out.push_str(&table::aligned(
        [
            "output",
            "SQNR vs float",
            "max |q - f|",
            "mean |q - f|",
            "metric vs float",
        ],
        &rows,
    ));
    let _ = writeln!(
        out,
        "measured on {} {}; calibrated on {} samples in {} batches{}",
        r.eval_samples,
        r.evaluated_on,
        r.calibration_samples,
        r.calibration_batches,
        if r.batch_symbolic {
            ""
        } else {
            " (fixed-batch model: one sample per run)"
        }
    );
    let _ = writeln!(out);
    let ratio = r.size_after as f64 / r.size_before.max(1) as f64;
    let _ = writeln!(
        out,
        "file size: {} -> {} bytes ({:.2}x)",
        r.size_before, r.size_after, ratio
    );
    let t = &r.times;
    let _ = writeln!(
        out,
        "time: load {}, import {}, calibration {}, stage 2 {}, export {}, evaluation {}, total {}",
        secs(t.load),
        secs(t.import),
        secs(t.calibration),
        t.stage2.map_or("-".into(), secs),
        secs(t.export),
        secs(t.evaluation),
        secs(t.total)
    );
    let _ = writeln!(out, "wrote {}", args.out.display());
    out
}
