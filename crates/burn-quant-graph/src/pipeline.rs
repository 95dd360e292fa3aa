//! Quantize an ONNX file in one call: [`quantize_onnx`].
//!
//! The whole "ONNX in, quantized ONNX out" flow of graph mode, as `burnq quantize-onnx` runs
//! it:
//!
//! 1. **load** the model file ([`OnnxModel::load`]) and the calibration (and evaluation)
//!    inputs: `.npy` files or PNG images through the recipe's [`Preprocess`]
//!    ([`crate::dataset::load_dir`]), or tensors given directly;
//! 2. **import** the model batch-symbolic at the first calibration sample's shape
//!    ([`OnnxModel::import_batched`]): every sample must have that shape but for axis 0 (a model whose first input declares a fixed axis 0 is imported at exactly the
//!    sample shape instead, and runs one sample per batch);
//! 3. **calibrate**: [`quantize_graph`] with the recipe's [`GraphRecipe`] (BatchNorm folding,
//!    cross-layer equalization, quantizer insertion), then
//!    [`QuantizedGraph::calibrate`](crate::QuantizedGraph::calibrate) on batches of
//!    `calibration_batch` samples;
//! 4. **Stage 2** (optional): the recipe's [`Algorithm`] on every quantized weight of a
//!    `Linear`, `Conv1d` or `Conv2d` ([`crate::stage2()`]); weights of other layers (transposed
//!    convolutions) keep round-to-nearest ([`OnnxQuantReport::stage2_skipped`]);
//! 5. **export**: [`export_qdq`] writes the quantizers back into the original model as
//!    QuantizeLinear/DequantizeLinear (names and dynamic axes kept, opset raised as the
//!    encodings need);
//! 6. **evaluate**: the quantized graph (the interpreter, with Stage 2's weights) against the
//!    float model on the evaluation inputs — or the calibration inputs when none are given
//!    ([`OnnxQuantReport::evaluated_on`] says which): output SQNR, largest and mean absolute
//!    error, and the recipe's [`Metric`].
//!
//! Everything is deterministic: inputs load in file-name order, batches are consecutive
//! samples, and no step draws random numbers.
//!
//! The recipe is serde data (TOML, JSON). The [`GraphRecipe`] sits in its own `[graph]` table
//! (serde cannot flatten a struct that refuses unknown fields):
//!
//! ```toml
//! calibration_batch = 8
//! metric = "top1"
//!
//! [graph]
//! fold_batch_norm = true
//!
//! [graph.equalize]
//!
//! [graph.weight]
//! format = { kind = "int", bits = 8, signed = true, narrow = true }
//! granularity = { kind = "per_output_channel" }
//! scale = { source = { stats = { kind = "abs_max" } }, restrict = { kind = "float" } }
//! zero_point = { kind = "symmetric" }
//! rounding = { kind = "nearest_even" }
//!
//! [graph.input]
//! format = { kind = "int", bits = 8, signed = true, narrow = false }
//! granularity = { kind = "per_tensor" }
//! scale = { source = { stats = { kind = "abs_max" } }, restrict = { kind = "float" } }
//! zero_point = { kind = "symmetric" }
//! rounding = { kind = "nearest_even" }
//!
//! [algorithm]
//! algo = "gptq"
//! ```
//!
//! ```no_run
//! use std::path::Path;
//! use burn::tensor::Device;
//! use burn_quant_graph::pipeline::{InputSet, OnnxQuantRecipe, quantize_onnx};
//!
//! # fn run(recipe: OnnxQuantRecipe) -> Result<(), Box<dyn std::error::Error>> {
//! let report = quantize_onnx(
//!     Path::new("model.onnx"),
//!     &recipe,
//!     &InputSet::dir("calibration/"),
//!     Some(&InputSet::dir("evaluation/")),
//!     &Device::flex(),
//!     |_progress| {},
//! )?;
//! report.save("model.w8a8.onnx")?;
//! println!("SQNR {:.1} dB", report.outputs[0].sqnr_db);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use burn::backend::ops::{BoolTensorOps, IntTensorOps};
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::tensor::{DType, Device, FloatDType, TensorData};
use burn_quant_export::onnx::proto::ModelProto;
use burn_quant_export::onnx::{OnnxError, save_onnx};
use burn_quant_ptq::{Algorithm, Stage2Algorithm};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::GraphError;
use crate::capture::GraphIo;
use crate::dataset::{DatasetError, Preprocess, load_dir};
use crate::interp::{Interpreter, to_host, upload};
use crate::ir::{Graph, Op};
use crate::onnx::import::{ImportedGraph, NoModel, OnnxModel, export_qdq};
use crate::quantize::{GraphRecipe, QuantContext, QuantSite, QuantizedGraph, quantize_graph};
use crate::stage2::{Stage2Result, stage2};

// ---------------------------------------------------------------------------------------------
// Recipe
// ---------------------------------------------------------------------------------------------

fn default_calibration_batch() -> usize {
    8
}

/// Everything [`quantize_onnx`] needs to know besides the files: serde data (TOML, JSON),
/// unknown fields refused. See the [module docs](self) for a TOML example; `recipes/onnx/`
/// ships W8A8, W4A8, W4A16 and FP8 recipes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxQuantRecipe {
    /// What to quantize and how (`[graph]` in TOML): weight, input and output specs, op kinds,
    /// include/exclude node-name patterns (the ONNX node names), BatchNorm folding,
    /// cross-layer equalization.
    pub graph: GraphRecipe,
    /// How PNG calibration and evaluation images become model inputs (`[preprocess]`);
    /// needed only when a directory holds PNGs (`.npy` files are read as stored).
    #[serde(default)]
    pub preprocess: Option<Preprocess>,
    /// Samples per calibration (and evaluation) batch, at least 1. Default 8. Batch size does
    /// not change absmax or min/max statistics; it trades memory for speed.
    #[serde(default = "default_calibration_batch")]
    pub calibration_batch: usize,
    /// A Stage 2 algorithm run on every quantized weight after calibration (`[algorithm]`
    /// with `algo = "rtn" | "gptq" | "gpfq" | "gptaq" | "qronos"` and that algorithm's
    /// parameters, e.g. `percdamp`, `act_order`; [`Algorithm`] lists them). Without one the
    /// weights are rounded to nearest by their quantizers.
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// A task metric reported beside the SQNR (`"top1"`, `"iou@0.3"`, `"sqnr"`).
    #[serde(default)]
    pub metric: Option<Metric>,
}

impl OnnxQuantRecipe {
    /// A recipe quantizing as `graph` says, with the defaults for everything else (batches of
    /// 8, no Stage 2, no preprocessing, no metric).
    pub fn new(graph: GraphRecipe) -> Self {
        Self {
            graph,
            preprocess: None,
            calibration_batch: default_calibration_batch(),
            algorithm: None,
            metric: None,
        }
    }

    /// Sets the Stage 2 algorithm.
    pub fn with_algorithm(mut self, algorithm: Option<Algorithm>) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets the metric.
    pub fn with_metric(mut self, metric: Option<Metric>) -> Self {
        self.metric = metric;
        self
    }

    /// Sets the PNG preprocessing.
    pub fn with_preprocess(mut self, preprocess: Option<Preprocess>) -> Self {
        self.preprocess = preprocess;
        self
    }

    /// Sets the samples per batch.
    pub fn with_calibration_batch(mut self, n: usize) -> Self {
        self.calibration_batch = n;
        self
    }

    /// Checks the fields that [`quantize_graph`] does not: the batch size, the algorithm's
    /// parameters, the preprocessing, the metric's threshold, and that a Stage 2 algorithm
    /// has weights to work on.
    pub fn check(&self) -> Result<(), OnnxQuantError> {
        let bad = |field: &'static str, reason: String| OnnxQuantError::Recipe { field, reason };
        if self.calibration_batch == 0 {
            return Err(bad("calibration_batch", "must be at least 1".into()));
        }
        if let Some(a) = &self.algorithm {
            a.validate().map_err(|e| bad("algorithm", e.to_string()))?;
            if self.graph.weight.is_none() {
                return Err(bad(
                    "algorithm",
                    format!(
                        "Stage 2 ({}) quantizes weights, but the recipe has no `graph.weight` spec",
                        a.name()
                    ),
                ));
            }
        }
        if let Some(p) = &self.preprocess {
            p.validate().map_err(|e| bad("preprocess", e.to_string()))?;
        }
        if let Some(m) = &self.metric {
            m.check().map_err(|reason| bad("metric", reason))?;
        }
        Ok(())
    }
}

/// A task metric comparing the quantized model's outputs with the float model's, per example
/// (per index of axis 0). Written as a string: `"top1"`, `"iou@0.3"`, `"sqnr"`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Metric {
    /// Classifier-style outputs: the fraction of positions whose argmax over the last axis
    /// agrees with the float model's (for `[N, classes]`, 1 or 0 per example).
    Top1,
    /// Probability maps: intersection over union of `{p > threshold}` of the quantized and
    /// the float output, per example (1 when both sets are empty).
    Iou {
        /// The threshold, finite.
        threshold: f32,
    },
    /// The SQNR of each example on its own, in dB (the overall SQNR is always reported).
    Sqnr,
}

impl Metric {
    /// Checks the threshold of [`Metric::Iou`] (finite).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Metric::Iou { threshold } if !threshold.is_finite() => {
                Err(format!("the IoU threshold {threshold} is not finite"))
            }
            _ => Ok(()),
        }
    }

    /// The value for one example: float output `f`, quantized output `q` (same length), the
    /// last axis `classes` long.
    fn example(&self, f: &[f32], q: &[f32], classes: usize) -> f64 {
        match *self {
            Metric::Top1 => {
                let classes = classes.max(1);
                let rows = f.len() / classes;
                if rows == 0 {
                    return 1.0;
                }
                let same = f
                    .chunks(classes)
                    .zip(q.chunks(classes))
                    .filter(|(a, b)| argmax(a) == argmax(b))
                    .count();
                same as f64 / rows as f64
            }
            Metric::Iou { threshold } => {
                let (mut inter, mut union) = (0usize, 0usize);
                for (&a, &b) in f.iter().zip(q) {
                    let (a, b) = (a > threshold, b > threshold);
                    inter += (a && b) as usize;
                    union += (a || b) as usize;
                }
                if union == 0 {
                    1.0
                } else {
                    inter as f64 / union as f64
                }
            }
            Metric::Sqnr => burn_quant_core::metrics::sqnr_db(f, q),
        }
    }
}

/// Index of the largest value (the first of equals; NaN never wins).
fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Top1 => f.write_str("top1"),
            Metric::Iou { threshold } => write!(f, "iou@{threshold}"),
            Metric::Sqnr => f.write_str("sqnr"),
        }
    }
}

impl FromStr for Metric {
    type Err = String;

    /// `top1`, `iou@T` (T a finite number, e.g. `iou@0.3`) or `sqnr`, any case.
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let m = match lower.as_str() {
            "top1" | "top-1" => Metric::Top1,
            "sqnr" => Metric::Sqnr,
            other => match other.strip_prefix("iou@") {
                Some(t) => Metric::Iou {
                    threshold: t
                        .parse::<f32>()
                        .map_err(|_| format!("`{s}`: the IoU threshold `{t}` is not a number"))?,
                },
                None => {
                    return Err(format!(
                        "`{s}` is not a metric (top1, iou@T such as iou@0.3, or sqnr)"
                    ));
                }
            },
        };
        m.check().map_err(|r| format!("`{s}`: {r}"))?;
        Ok(m)
    }
}

impl TryFrom<String> for Metric {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        m.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs, progress, errors
// ---------------------------------------------------------------------------------------------

/// Calibration or evaluation inputs.
#[derive(Clone, Debug)]
pub enum InputSet {
    /// Every `.npy` and `.png` file of a directory, in file-name order, one sample each
    /// ([`load_dir`]; PNGs through the recipe's `preprocess`). For models with one input.
    Dir(PathBuf),
    /// Samples given as tensors: each sample holds one tensor per model input, in the model's
    /// input order, with a leading batch axis (usually 1).
    Samples(Vec<Vec<TensorData>>),
}

impl InputSet {
    /// The files of directory `dir`.
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        InputSet::Dir(dir.into())
    }

    /// Samples of a one-input model.
    pub fn tensors(samples: Vec<TensorData>) -> Self {
        InputSet::Samples(samples.into_iter().map(|t| vec![t]).collect())
    }
}

impl From<Vec<TensorData>> for InputSet {
    fn from(samples: Vec<TensorData>) -> Self {
        InputSet::tensors(samples)
    }
}

impl From<&Path> for InputSet {
    fn from(dir: &Path) -> Self {
        InputSet::dir(dir)
    }
}

impl From<PathBuf> for InputSet {
    fn from(dir: PathBuf) -> Self {
        InputSet::Dir(dir)
    }
}

/// Which input set something concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetRole {
    /// The calibration inputs.
    Calibration,
    /// The evaluation inputs.
    Evaluation,
}

impl fmt::Display for SetRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetRole::Calibration => "calibration",
            SetRole::Evaluation => "evaluation",
        })
    }
}

/// A step of [`quantize_onnx`], in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Reading the model file and the calibration and evaluation inputs.
    Load,
    /// Importing the model into the graph IR at the calibration shape.
    Import,
    /// Inserting quantizers and calibrating static scales.
    Calibration,
    /// The Stage 2 algorithm (only with one).
    Stage2,
    /// Writing the quantizers back into the model.
    Export,
    /// Comparing quantized and float outputs.
    Evaluation,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Load => "load",
            Phase::Import => "import",
            Phase::Calibration => "calibration",
            Phase::Stage2 => "stage 2",
            Phase::Export => "export",
            Phase::Evaluation => "evaluation",
        })
    }
}

/// What [`quantize_onnx`] reports while it runs (for a progress bar; nothing is printed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A phase starts.
    Phase(Phase),
    /// Batch `batch` (0-based) of `batches` of a phase (calibration or evaluation) starts.
    Batch {
        /// The phase.
        phase: Phase,
        /// This batch, 0-based.
        batch: usize,
        /// Batches in the phase.
        batches: usize,
    },
}

/// Everything that can go wrong in [`quantize_onnx`].
#[derive(Debug, Error)]
pub enum OnnxQuantError {
    /// A recipe field that cannot be used as written.
    #[error("recipe: `{field}`: {reason}")]
    Recipe {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An input directory or file could not be read.
    #[error("{set} inputs: {source}")]
    Dataset {
        /// Which set.
        set: SetRole,
        /// The reader's error (names the file).
        source: DatasetError,
    },
    /// An input set without samples.
    #[error("the {set} set has no samples")]
    Empty {
        /// Which set.
        set: SetRole,
    },
    /// A directory of single tensors given for a model with several inputs.
    #[error(
        "the {set} inputs are a directory of single tensors, but the model has {inputs} inputs ({names}); give the samples as tensors"
    )]
    DirNeedsOneInput {
        /// Which set.
        set: SetRole,
        /// The model's input count.
        inputs: usize,
        /// Their names.
        names: String,
    },
    /// A sample with another number of tensors than the model has inputs.
    #[error("{set} sample {sample} has {got} tensors; the model has {expected} inputs")]
    InputCount {
        /// Which set.
        set: SetRole,
        /// The sample (its file where it came from one).
        sample: String,
        /// The model's input count.
        expected: usize,
        /// The sample's tensor count.
        got: usize,
    },
    /// A sample whose shape differs from the first calibration sample's other than along the
    /// batch axis (or at all, for a model imported at a fixed batch).
    #[error("{set} sample {sample}, input `{input}`: shape {got:?} differs from the first calibration sample's {expected:?} {}", if *.batch_free { "other than in the batch axis 0 (the model is imported batch-symbolic at that shape)" } else { "(the model declares a fixed batch and is imported at exactly that shape)" })]
    SampleShape {
        /// Which set.
        set: SetRole,
        /// The sample (its file where it came from one).
        sample: String,
        /// The model input's name.
        input: String,
        /// The first calibration sample's shape.
        expected: Vec<usize>,
        /// This sample's shape.
        got: Vec<usize>,
        /// Whether axis 0 may differ.
        batch_free: bool,
    },
    /// A sample whose element type is not the one the model input declares.
    #[error(
        "{set} sample {sample}, input `{input}`: element type {got:?}, the model declares {expected:?}"
    )]
    SampleDtype {
        /// Which set.
        set: SetRole,
        /// The sample.
        sample: String,
        /// The model input's name.
        input: String,
        /// Declared type.
        expected: DType,
        /// The sample's type.
        got: DType,
    },
    /// The recipe selects nothing in this model.
    #[error(
        "the recipe quantizes nothing in this model ({layers} layers of the kinds {ops:?}; check `graph.weight`/`graph.input` and the include/exclude patterns)"
    )]
    NothingQuantized {
        /// Layers of the recipe's op kinds in the model.
        layers: usize,
        /// The recipe's op kinds.
        ops: Vec<String>,
    },
    /// Importing, quantizing, calibrating, Stage 2, export or evaluation failed.
    #[error("{phase}: {source}")]
    Graph {
        /// The phase it failed in.
        phase: Phase,
        /// The graph-mode error.
        source: GraphError,
    },
    /// The model file's size could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing the quantized model failed.
    #[error("writing the quantized model: {source}")]
    Write {
        /// The writer's error (names the file).
        source: OnnxError,
    },
}

fn in_phase(phase: Phase) -> impl Fn(GraphError) -> OnnxQuantError {
    move |source| OnnxQuantError::Graph { phase, source }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// Quantized nodes of one op kind (the graph IR's kinds: `Conv2d`, `Linear`, `MatMul`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindCount {
    /// The op kind.
    pub kind: String,
    /// Nodes of this kind in the imported graph.
    pub nodes: usize,
    /// Of those, nodes whose weight is quantized.
    pub weights: usize,
    /// Of those, nodes with a quantized input or output activation.
    pub activations: usize,
}

/// What the recipe quantized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuantizedNodes {
    /// Per op kind with at least one quantized node, sorted by kind.
    pub by_kind: Vec<KindCount>,
    /// Weight quantizers.
    pub weight_quantizers: usize,
    /// Activation quantizers (one per quantized value; readers share it).
    pub activation_quantizers: usize,
    /// Activation quantizer nodes in the quantized graph: one `QuantizeLinear` each in the
    /// export of a float model.
    pub activation_sites: usize,
    /// `QuantizeLinear` nodes in the exported model.
    pub onnx_quantize: usize,
    /// `DequantizeLinear` nodes in the exported model.
    pub onnx_dequantize: usize,
}

impl QuantizedNodes {
    /// Nodes with a quantized weight, all kinds.
    pub fn weights(&self) -> usize {
        self.by_kind.iter().map(|k| k.weights).sum()
    }

    /// Nodes with a quantized activation, all kinds.
    pub fn activations(&self) -> usize {
        self.by_kind.iter().map(|k| k.activations).sum()
    }

    /// Activation quantizers the exported model lacks (`activation_sites` minus its
    /// `QuantizeLinear` nodes, for a float input model): non-zero means the file computes
    /// something other than the quantized graph that was evaluated.
    pub fn unwritten_activations(&self) -> usize {
        self.activation_sites.saturating_sub(self.onnx_quantize)
    }
}

/// Wall time of each phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseTimes {
    /// Reading the model file and the inputs.
    pub load: Duration,
    /// Importing the model into the graph IR.
    pub import: Duration,
    /// Quantizer insertion (BatchNorm folding, equalization) and calibration.
    pub calibration: Duration,
    /// Stage 2, when the recipe has an algorithm.
    pub stage2: Option<Duration>,
    /// Export to QDQ.
    pub export: Duration,
    /// Evaluation (float and quantized runs).
    pub evaluation: Duration,
    /// The whole call.
    pub total: Duration,
}

/// The result of a [`Metric`] on one output.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricResult {
    /// The metric.
    pub metric: Metric,
    /// Mean over examples.
    pub mean: f64,
    /// Worst example.
    pub min: f64,
    /// Per example (axis-0 index over all evaluation batches, in order).
    pub per_example: Vec<f64>,
}

/// Quantized against float on one model output, over all evaluation inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputQuality {
    /// The ONNX output name.
    pub name: String,
    /// Its shape for one batch of the first evaluation batch.
    pub shape: Vec<usize>,
    /// `10·log10(Σf² / Σ(f − q)²)` in dB, infinite when identical.
    pub sqnr_db: f64,
    /// Largest `|f − q|` (for probabilities: the probability error).
    pub max_abs_error: f32,
    /// Mean `|f − q|`.
    pub mean_abs_error: f64,
    /// The recipe's metric, when it has one.
    pub metric: Option<MetricResult>,
}

/// What the evaluation ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvaluatedOn {
    /// The evaluation inputs given.
    Evaluation,
    /// The calibration inputs (no evaluation inputs were given): an optimistic estimate.
    Calibration,
}

impl fmt::Display for EvaluatedOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EvaluatedOn::Evaluation => "evaluation inputs",
            EvaluatedOn::Calibration => "calibration inputs (no evaluation set given)",
        })
    }
}

/// What [`quantize_onnx`] produced: the quantized model and how it went.
#[derive(Clone, Debug)]
pub struct OnnxQuantReport {
    /// The quantized model (write it with [`OnnxQuantReport::save`]).
    pub model: ModelProto,
    /// The same quantization as a graph, Stage 2's weights in place: what the evaluation ran.
    /// Run it with [`QuantizedGraph::forward`] and [`NoModel`] (its parameters live in the
    /// graph), e.g. to compare with an ONNX runtime on the written file.
    pub quantized: QuantizedGraph,
    /// What was quantized.
    pub nodes: QuantizedNodes,
    /// Time per phase.
    pub times: PhaseTimes,
    /// Quality per model output, in the model's output order.
    pub outputs: Vec<OutputQuality>,
    /// Which inputs the quality was measured on.
    pub evaluated_on: EvaluatedOn,
    /// Evaluation samples.
    pub eval_samples: usize,
    /// Calibration samples.
    pub calibration_samples: usize,
    /// Calibration batches.
    pub calibration_batches: usize,
    /// Whether the model was imported batch-symbolic (otherwise at a fixed batch, one sample
    /// per run).
    pub batch_symbolic: bool,
    /// The Stage 2 algorithm's name, when one ran.
    pub algorithm: Option<String>,
    /// Layers with a quantized weight that Stage 2 does not handle (its kinds are `Linear`,
    /// `Conv1d`, `Conv2d`): their weights keep round-to-nearest.
    pub stage2_skipped: Vec<String>,
    /// Size of the input model file, bytes.
    pub size_before: u64,
    /// Size of the quantized model's encoding (the file [`OnnxQuantReport::save`] writes),
    /// bytes.
    pub size_after: u64,
    /// Default-domain opset of the input model.
    pub opset_before: i64,
    /// Default-domain opset of the quantized model.
    pub opset_after: i64,
}

impl OnnxQuantReport {
    /// Writes the quantized model to `path` atomically (a temporary file renamed into place).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), OnnxQuantError> {
        save_onnx(path, &self.model).map_err(|source| OnnxQuantError::Write { source })
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------

/// One sample: a tensor per model input, and where it came from (for messages).
struct Sample {
    label: String,
    tensors: Vec<TensorData>,
}

/// A batch as host data, uploaded at each run (the graph-mode calls take any [`GraphIo`]).
#[derive(Clone)]
struct HostBatch {
    tensors: Vec<TensorData>,
    device: Device,
}

impl GraphIo for HostBatch {
    fn to_device(self, device: &Device) -> Self {
        Self {
            tensors: self.tensors,
            device: device.clone(),
        }
    }
    fn capture_ids(&self) -> Result<Vec<burn::backend::ir::TensorId>, GraphError> {
        Err(GraphError::Capture("host data cannot be captured".into()))
    }
    fn into_dispatch(self) -> Vec<DispatchTensor> {
        self.tensors
            .iter()
            .map(|t| upload(t, &self.device))
            .collect()
    }
    fn from_dispatch(_: Vec<DispatchTensor>) -> Result<Self, GraphError> {
        Err(GraphError::Malformed(
            "the pipeline reads outputs through the interpreter".into(),
        ))
    }
    fn count() -> usize {
        1
    }
    fn grow_batch(&self) -> Self {
        let tensors = self
            .tensors
            .iter()
            .map(|t| {
                let shape = t.shape().as_slice().to_vec();
                let bytes = t.as_bytes();
                let row = match shape.first() {
                    Some(&b) if b > 0 => bytes.len() / b,
                    _ => 0,
                };
                let mut out = bytes.to_vec();
                out.extend_from_slice(&bytes[..row]);
                let mut grown = shape;
                if let Some(b) = grown.first_mut() {
                    *b += 1;
                }
                TensorData::from_bytes_vec(out, grown, t.dtype())
            })
            .collect();
        Self {
            tensors,
            device: self.device.clone(),
        }
    }
}

fn load_set(
    set: SetRole,
    inputs: &InputSet,
    model: &OnnxModel,
    preprocess: Option<&Preprocess>,
) -> Result<Vec<Sample>, OnnxQuantError> {
    let samples: Vec<Sample> = match inputs {
        InputSet::Dir(dir) => {
            if model.inputs().len() != 1 {
                return Err(OnnxQuantError::DirNeedsOneInput {
                    set,
                    inputs: model.inputs().len(),
                    names: model
                        .inputs()
                        .iter()
                        .map(|i| format!("`{}`", i.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            load_dir(dir, preprocess)
                .map_err(|source| OnnxQuantError::Dataset { set, source })?
                .into_iter()
                .map(|(path, t)| Sample {
                    label: format!("`{}`", path.display()),
                    tensors: vec![t],
                })
                .collect()
        }
        InputSet::Samples(s) => s
            .iter()
            .enumerate()
            .map(|(i, t)| Sample {
                label: format!("#{i}"),
                tensors: t.clone(),
            })
            .collect(),
    };
    if samples.is_empty() {
        return Err(OnnxQuantError::Empty { set });
    }
    for s in &samples {
        if s.tensors.len() != model.inputs().len() {
            return Err(OnnxQuantError::InputCount {
                set,
                sample: s.label.clone(),
                expected: model.inputs().len(),
                got: s.tensors.len(),
            });
        }
        for (t, input) in s.tensors.iter().zip(model.inputs()) {
            if t.dtype() != input.dtype {
                return Err(OnnxQuantError::SampleDtype {
                    set,
                    sample: s.label.clone(),
                    input: input.name.clone(),
                    expected: input.dtype,
                    got: t.dtype(),
                });
            }
        }
    }
    Ok(samples)
}

/// Checks every sample against the reference shapes (axis 0 free when `batch_free`).
fn check_shapes(
    set: SetRole,
    samples: &[Sample],
    reference: &[Vec<usize>],
    model: &OnnxModel,
    batch_free: bool,
) -> Result<(), OnnxQuantError> {
    for s in samples {
        for ((t, want), input) in s.tensors.iter().zip(reference).zip(model.inputs()) {
            let got = t.shape().as_slice();
            let fits = got.len() == want.len()
                && !got.is_empty()
                && (!batch_free || got[0] > 0)
                && got
                    .iter()
                    .zip(want)
                    .enumerate()
                    .all(|(a, (g, w))| g == w || (batch_free && a == 0));
            if !fits {
                return Err(OnnxQuantError::SampleShape {
                    set,
                    sample: s.label.clone(),
                    input: input.name.clone(),
                    expected: want.clone(),
                    got: got.to_vec(),
                    batch_free,
                });
            }
        }
    }
    Ok(())
}

/// Consecutive samples concatenated along axis 0, `n` per batch (1 when not batch-symbolic).
fn batches(samples: &[Sample], n: usize, device: &Device) -> Vec<HostBatch> {
    samples
        .chunks(n.max(1))
        .map(|chunk| {
            let inputs = chunk[0].tensors.len();
            let tensors = (0..inputs)
                .map(|k| {
                    let first = &chunk[0].tensors[k];
                    if chunk.len() == 1 {
                        return first.clone();
                    }
                    let mut shape = first.shape().as_slice().to_vec();
                    shape[0] = chunk
                        .iter()
                        .map(|s| s.tensors[k].shape().as_slice()[0])
                        .sum();
                    let mut bytes = Vec::with_capacity(
                        chunk.iter().map(|s| s.tensors[k].as_bytes().len()).sum(),
                    );
                    for s in chunk {
                        bytes.extend_from_slice(s.tensors[k].as_bytes());
                    }
                    TensorData::from_bytes_vec(bytes, shape, first.dtype())
                })
                .collect();
            HostBatch {
                tensors,
                device: device.clone(),
            }
        })
        .collect()
}

/// A graph output on the host as `f32` (integer and boolean outputs converted), with its shape.
fn output_host(t: DispatchTensor) -> Result<(Vec<f32>, Vec<usize>), GraphError> {
    let shape = TensorMetadata::shape(&t).as_slice().to_vec();
    let dtype = TensorMetadata::dtype(&t);
    let t = if dtype.is_float() {
        t
    } else if dtype.is_bool() {
        Dispatch::bool_into_float(t, FloatDType::F32)
    } else {
        Dispatch::int_into_float(t, FloatDType::F32)
    };
    Ok((to_host(t)?, shape))
}

/// Counts quantized nodes of the quantized graph by op kind.
fn count_nodes(graph: &Graph) -> QuantizedNodes {
    let mut by_kind: BTreeMap<&'static str, KindCount> = BTreeMap::new();
    let mut weight_layers = std::collections::HashSet::new();
    let mut act_layers = std::collections::HashSet::new();
    let mut weight_q = std::collections::HashSet::new();
    let mut act_q = std::collections::HashSet::new();
    let mut activation_sites = 0;
    for node in &graph.nodes {
        let Op::Quant(q) = &node.op else { continue };
        if !matches!(q.site, QuantSite::Weight { .. }) {
            activation_sites += 1;
        }
        match &q.site {
            QuantSite::Weight { layer, .. } => {
                weight_layers.insert(layer.clone());
                weight_q.insert(q.quantizer);
            }
            QuantSite::Input { .. } | QuantSite::Join { .. } => {
                act_q.insert(q.quantizer);
            }
            QuantSite::Output { layer } => {
                act_layers.insert(layer.clone());
                act_q.insert(q.quantizer);
            }
        }
    }
    // Readers of activation quantizers (every reader of a shared input quantizer counts).
    let producer_is_act: Vec<bool> = {
        let mut v = vec![false; graph.values.len()];
        for node in &graph.nodes {
            if let Op::Quant(q) = &node.op
                && !matches!(q.site, QuantSite::Weight { .. })
            {
                for o in &node.outputs {
                    v[o.0] = true;
                }
            }
        }
        v
    };
    for node in &graph.nodes {
        if matches!(node.op, Op::Quant(_)) {
            continue;
        }
        let kind = node.op.kind();
        let e = by_kind.entry(kind).or_insert_with(|| KindCount {
            kind: kind.to_string(),
            nodes: 0,
            weights: 0,
            activations: 0,
        });
        e.nodes += 1;
        if weight_layers.contains(&node.name) {
            e.weights += 1;
        }
        if act_layers.contains(&node.name) || node.inputs.iter().any(|v| producer_is_act[v.0]) {
            e.activations += 1;
        }
    }
    QuantizedNodes {
        by_kind: by_kind
            .into_values()
            .filter(|k| k.weights + k.activations > 0)
            .collect(),
        weight_quantizers: weight_q.len(),
        activation_quantizers: act_q.len(),
        activation_sites,
        onnx_quantize: 0,
        onnx_dequantize: 0,
    }
}

/// Layer kinds [`stage2()`] quantizes (it leaves the others on their quantizer's rounding).
const STAGE2_KINDS: [&str; 3] = ["Linear", "Conv1d", "Conv2d"];

/// Layers with a weight quantizer that [`stage2()`] leaves on round-to-nearest (kinds other
/// than [`STAGE2_KINDS`]: transposed convolutions, …), for the report.
fn stage2_skipped_layers(qg: &QuantizedGraph) -> Vec<String> {
    let kinds: std::collections::HashMap<&str, &str> = qg
        .graph
        .nodes
        .iter()
        .filter(|n| !matches!(n.op, Op::Quant(_)))
        .map(|n| (n.name.as_str(), n.op.kind()))
        .collect();
    qg.graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Quant(q) => match &q.site {
                QuantSite::Weight { layer, .. }
                    if !kinds
                        .get(layer.as_str())
                        .is_some_and(|k| STAGE2_KINDS.contains(k)) =>
                {
                    Some(layer.clone())
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// `qg` running Stage 2's weights: written into the graph's parameters (and the folded ones
/// it owns), their quantizers off since the weights are on their grid already. What
/// [`Stage2Result::apply`] does, for a graph whose parameters came from a file and have no
/// `ParamId` to write to (`apply` refuses those).
fn with_stage2_weights(qg: QuantizedGraph, result: &Stage2Result) -> QuantizedGraph {
    let QuantizedGraph {
        mut graph,
        mut quantizers,
        owned,
    } = qg;
    let mut values = std::collections::HashMap::new();
    for w in &result.weights {
        if let Some(p) = graph.params.iter_mut().find(|p| p.path == w.path) {
            p.data = TensorData::new(w.dequantized.clone(), w.shape.clone());
            if let Some(id) = p.id {
                values.insert(id, w.dequantized.clone());
            }
        }
    }
    let owned = burn_quant_nn::write_params(owned, &mut values);
    for node in &graph.nodes {
        if let Op::Quant(q) = &node.op
            && let QuantSite::Weight { param, .. } = &q.site
            && result.weight(param).is_some()
            && let Some(qz) = quantizers.quantizers.get_mut(q.quantizer)
        {
            *qz = qz.clone().with_enabled(false);
        }
    }
    QuantizedGraph {
        graph,
        quantizers,
        owned,
    }
}

/// Float and quantized outputs on `batches`, compared per output.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    imported: &ImportedGraph,
    qg: &QuantizedGraph,
    names: &[String],
    batches: &[HostBatch],
    metric: Option<Metric>,
    device: &Device,
    progress: &mut impl FnMut(Progress),
) -> Result<Vec<OutputQuality>, GraphError> {
    let mut float = Interpreter::new(&imported.graph, device);
    let mut quant = Interpreter::new(&qg.graph, device);
    quant.bind(&qg.owned);
    let ctx = QuantContext::new(&qg.quantizers);
    let n_out = imported.graph.outputs.len();
    let mut f_all: Vec<Vec<f32>> = vec![Vec::new(); n_out];
    let mut q_all: Vec<Vec<f32>> = vec![Vec::new(); n_out];
    let mut shapes: Vec<Vec<usize>> = vec![Vec::new(); n_out];
    let mut per_example: Vec<Vec<f64>> = vec![Vec::new(); n_out];
    for (b, batch) in batches.iter().enumerate() {
        progress(Progress::Batch {
            phase: Phase::Evaluation,
            batch: b,
            batches: batches.len(),
        });
        let fo = float.run(batch.clone().into_dispatch())?;
        let qo = quant.run_with(batch.clone().into_dispatch(), &ctx)?;
        if fo.len() != n_out || qo.len() != n_out {
            return Err(GraphError::Arity {
                expected: n_out,
                got: fo.len().min(qo.len()),
            });
        }
        for (k, (f, q)) in fo.into_iter().zip(qo).enumerate() {
            let (f, fshape) = output_host(f)?;
            let (q, qshape) = output_host(q)?;
            if fshape != qshape {
                return Err(GraphError::Malformed(format!(
                    "output {k}: float shape {fshape:?}, quantized {qshape:?}"
                )));
            }
            if b == 0 {
                shapes[k] = fshape.clone();
            }
            if let Some(m) = metric {
                let rows = fshape.first().copied().unwrap_or(1).max(1);
                let classes = fshape.last().copied().unwrap_or(1);
                let per_row = f.len() / rows;
                if per_row > 0 {
                    for (fr, qr) in f.chunks(per_row).zip(q.chunks(per_row)) {
                        per_example[k].push(m.example(fr, qr, classes));
                    }
                }
            }
            f_all[k].extend_from_slice(&f);
            q_all[k].extend_from_slice(&q);
        }
    }
    Ok((0..n_out)
        .map(|k| {
            let (f, q) = (&f_all[k], &q_all[k]);
            let mean_abs = if f.is_empty() {
                0.0
            } else {
                f.iter()
                    .zip(q)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .sum::<f64>()
                    / f.len() as f64
            };
            let metric = metric.map(|m| {
                let v = &per_example[k];
                MetricResult {
                    metric: m,
                    mean: if v.is_empty() {
                        f64::NAN
                    } else {
                        v.iter().sum::<f64>() / v.len() as f64
                    },
                    min: v.iter().copied().fold(f64::INFINITY, f64::min),
                    per_example: v.clone(),
                }
            });
            OutputQuality {
                name: names
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| format!("output {k}")),
                shape: shapes[k].clone(),
                sqnr_db: burn_quant_core::metrics::sqnr_db(f, q),
                max_abs_error: burn_quant_core::metrics::max_abs_error(f, q),
                mean_abs_error: mean_abs,
                metric,
            }
        })
        .collect())
}

/// Quantizes the ONNX model at `input` as `recipe` says, calibrated on `calib`, and measures
/// the result on `eval` (or on `calib` when `eval` is `None`); runs on `device`. See the
/// [module docs](self) for the phases; `progress` hears each phase and each calibration and
/// evaluation batch start.
///
/// Returns the quantized model ([`OnnxQuantReport::save`] writes it atomically) with what
/// was quantized, the time per phase, the output SQNR and the recipe's metric against the
/// float model, and the file sizes. Every failure is an [`OnnxQuantError`]: an empty input
/// set, a sample whose shape differs from the first calibration sample's other than along
/// axis 0, a recipe that quantizes nothing, or the phase whose graph-mode call failed.
pub fn quantize_onnx(
    input: &Path,
    recipe: &OnnxQuantRecipe,
    calib: &InputSet,
    eval: Option<&InputSet>,
    device: &Device,
    mut progress: impl FnMut(Progress),
) -> Result<OnnxQuantReport, OnnxQuantError> {
    let started = Instant::now();
    let mut times = PhaseTimes::default();
    recipe.check()?;
    let size_before = std::fs::metadata(input)
        .map_err(|source| OnnxQuantError::Io {
            path: input.to_path_buf(),
            source,
        })?
        .len();

    progress(Progress::Phase(Phase::Load));
    let t = Instant::now();
    let model = OnnxModel::load(input).map_err(in_phase(Phase::Load))?;
    let pre = recipe.preprocess.as_ref();
    let calib = load_set(SetRole::Calibration, calib, &model, pre)?;
    let eval = eval
        .map(|e| load_set(SetRole::Evaluation, e, &model, pre))
        .transpose()?;
    times.load = t.elapsed();

    progress(Progress::Phase(Phase::Import));
    let t = Instant::now();
    let reference: Vec<Vec<usize>> = calib[0]
        .tensors
        .iter()
        .map(|t| t.shape().as_slice().to_vec())
        .collect();
    // A model whose first input declares a fixed batch is imported at exactly that shape.
    let batch_symbolic = model
        .inputs()
        .first()
        .is_none_or(|i| i.dims.first().is_none_or(|d| d.is_none()));
    check_shapes(
        SetRole::Calibration,
        &calib,
        &reference,
        &model,
        batch_symbolic,
    )?;
    if let Some(e) = &eval {
        check_shapes(SetRole::Evaluation, e, &reference, &model, batch_symbolic)?;
    }
    let imported = if batch_symbolic {
        model.import_batched(&reference)
    } else {
        model.import(&reference)
    }
    .map_err(in_phase(Phase::Import))?;
    times.import = t.elapsed();
    let per_batch = if batch_symbolic {
        recipe.calibration_batch
    } else {
        1
    };

    progress(Progress::Phase(Phase::Calibration));
    let t = Instant::now();
    let qg = quantize_graph(&imported.graph, &recipe.graph, device)
        .map_err(in_phase(Phase::Calibration))?;
    let mut nodes = count_nodes(&qg.graph);
    if nodes.weight_quantizers + nodes.activation_quantizers == 0 {
        let layers = imported
            .graph
            .nodes
            .iter()
            .filter(|n| recipe.graph.ops.iter().any(|k| k == n.op.kind()))
            .count();
        return Err(OnnxQuantError::NothingQuantized {
            layers,
            ops: recipe.graph.ops.clone(),
        });
    }
    let calib_batches = batches(&calib, per_batch, device);
    let n_batches = calib_batches.len();
    let qg = qg
        .calibrate(
            &NoModel {},
            calib_batches.iter().enumerate().map(|(b, batch)| {
                progress(Progress::Batch {
                    phase: Phase::Calibration,
                    batch: b,
                    batches: n_batches,
                });
                batch.clone()
            }),
        )
        .map_err(in_phase(Phase::Calibration))?;
    times.calibration = t.elapsed();

    let mut stage2_skipped = Vec::new();
    let stage2_result = match &recipe.algorithm {
        Some(algo) => {
            progress(Progress::Phase(Phase::Stage2));
            let t = Instant::now();
            let r =
                stage2(&qg, &NoModel {}, algo, &calib_batches).map_err(in_phase(Phase::Stage2))?;
            times.stage2 = Some(t.elapsed());
            stage2_skipped = stage2_skipped_layers(&qg);
            Some(r)
        }
        None => None,
    };

    progress(Progress::Phase(Phase::Export));
    let t = Instant::now();
    let onnx = export_qdq(&model, &imported, &qg, stage2_result.as_ref())
        .map_err(in_phase(Phase::Export))?;
    let size_after = onnx.to_bytes().len() as u64;
    if let Some(g) = &onnx.graph {
        nodes.onnx_quantize = g
            .node
            .iter()
            .filter(|n| n.op_type == "QuantizeLinear")
            .count();
        nodes.onnx_dequantize = g
            .node
            .iter()
            .filter(|n| n.op_type == "DequantizeLinear")
            .count();
    }
    times.export = t.elapsed();

    progress(Progress::Phase(Phase::Evaluation));
    let t = Instant::now();
    let (eval_samples, evaluated_on) = match &eval {
        Some(e) => (e, EvaluatedOn::Evaluation),
        None => (&calib, EvaluatedOn::Calibration),
    };
    let eval_batches = batches(eval_samples, per_batch, device);
    let qg = match &stage2_result {
        Some(r) => with_stage2_weights(qg, r),
        None => qg,
    };
    let outputs = evaluate(
        &imported,
        &qg,
        model.outputs(),
        &eval_batches,
        recipe.metric,
        device,
        &mut progress,
    )
    .map_err(in_phase(Phase::Evaluation))?;
    times.evaluation = t.elapsed();
    times.total = started.elapsed();

    Ok(OnnxQuantReport {
        opset_before: model.opset(),
        opset_after: onnx.default_opset().unwrap_or(model.opset()),
        model: onnx,
        quantized: qg,
        nodes,
        times,
        outputs,
        evaluated_on,
        eval_samples: eval_samples.len(),
        calibration_samples: calib.len(),
        calibration_batches: n_batches,
        batch_symbolic,
        algorithm: stage2_result.map(|r| r.algorithm.to_string()),
        stage2_skipped,
        size_before,
        size_after,
    })
}

/// [`quantize_onnx`], then [`OnnxQuantReport::save`] to `output`: `burnq quantize-onnx` in one
/// call.
pub fn quantize_onnx_file(
    input: &Path,
    output: &Path,
    recipe: &OnnxQuantRecipe,
    calib: &InputSet,
    eval: Option<&InputSet>,
    device: &Device,
    progress: impl FnMut(Progress),
) -> Result<OnnxQuantReport, OnnxQuantError> {
    let report = quantize_onnx(input, recipe, calib, eval, device, progress)?;
    report.save(output)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_print_and_compute() {
        assert_eq!("top1".parse::<Metric>().unwrap(), Metric::Top1);
        assert_eq!(
            "IoU@0.3".parse::<Metric>().unwrap(),
            Metric::Iou { threshold: 0.3 }
        );
        assert_eq!("sqnr".parse::<Metric>().unwrap(), Metric::Sqnr);
        assert_eq!(Metric::Iou { threshold: 0.3 }.to_string(), "iou@0.3");
        for bad in ["top5", "iou@", "iou@x", "iou@nan", "iou@inf", ""] {
            assert!(bad.parse::<Metric>().is_err(), "{bad}");
        }
        let m = Metric::Top1;
        assert_eq!(
            m.example(&[0.1, 0.9, 0.8, 0.2], &[0.2, 0.8, 0.3, 0.7], 2),
            0.5
        );
        let iou = Metric::Iou { threshold: 0.5 };
        assert_eq!(
            iou.example(&[0.9, 0.9, 0.1, 0.1], &[0.9, 0.1, 0.9, 0.1], 4),
            1.0 / 3.0
        );
        assert_eq!(iou.example(&[0.1; 4], &[0.2; 4], 4), 1.0, "both empty");
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0]), 2);
    }

    #[test]
    fn recipes_are_serde_data_and_refuse_unknown_fields() {
        let r = OnnxQuantRecipe::new(GraphRecipe::weights(
            burn_quant_core::QuantSpec::int8_weight_per_output_channel(),
        ))
        .with_metric(Some(Metric::Iou { threshold: 0.3 }))
        .with_algorithm(Some("gptq".parse().unwrap()));
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"metric\":\"iou@0.3\""), "{json}");
        assert!(json.contains("\"algo\":\"gptq\""), "{json}");
        assert_eq!(serde_json::from_str::<OnnxQuantRecipe>(&json).unwrap(), r);
        let e = serde_json::from_str::<OnnxQuantRecipe>(r#"{"graph": {}, "calib_batch": 4}"#)
            .unwrap_err();
        assert!(e.to_string().contains("calib_batch"), "{e}");
        let e = serde_json::from_str::<OnnxQuantRecipe>(r#"{"graph": {}, "metric": "top5"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("top5"), "{e}");
        let r: OnnxQuantRecipe = toml::from_str("calibration_batch = 0\n[graph]\n").unwrap();
        assert!(matches!(
            r.check(),
            Err(OnnxQuantError::Recipe {
                field: "calibration_batch",
                ..
            })
        ));
        let r: OnnxQuantRecipe = toml::from_str("[graph]\n[algorithm]\nalgo = \"gptq\"\n").unwrap();
        assert!(
            matches!(
                r.check(),
                Err(OnnxQuantError::Recipe {
                    field: "algorithm",
                    ..
                })
            ),
            "no weight spec"
        );
    }

    #[test]
    fn the_module_docs_toml_recipe_parses() {
        let text = include_str!("pipeline.rs");
        let block: String = text
            .split("//! ```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("//! ```").next())
            .expect("a TOML block")
            .lines()
            .map(|l| {
                l.strip_prefix("//!")
                    .unwrap_or(l)
                    .strip_prefix(' ')
                    .unwrap_or("")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let r: OnnxQuantRecipe = toml::from_str(&block).unwrap();
        r.check().unwrap();
        assert_eq!(r.metric, Some(Metric::Top1));
        assert_eq!(r.calibration_batch, 8);
        assert!(r.graph.equalize.is_some() && r.graph.weight.is_some() && r.graph.input.is_some());
        assert_eq!(r.algorithm, Some("gptq".parse().unwrap()));
    }

    fn sample(label: &str, shape: &[usize]) -> Sample {
        let n = shape.iter().product();
        Sample {
            label: label.into(),
            tensors: vec![TensorData::new(vec![0f32; n], shape.to_vec())],
        }
    }

    #[test]
    fn batches_concatenate_along_axis_0_and_shapes_are_checked() {
        let m = OnnxModel::from_proto(tiny_model(), None).unwrap();
        let s = vec![
            sample("a", &[1, 2, 3]),
            sample("b", &[2, 2, 3]),
            sample("c", &[1, 2, 3]),
        ];
        check_shapes(SetRole::Calibration, &s, &[vec![1, 2, 3]], &m, true).unwrap();
        let e = check_shapes(SetRole::Calibration, &s, &[vec![1, 2, 3]], &m, false).unwrap_err();
        assert!(
            matches!(&e, OnnxQuantError::SampleShape { sample, .. } if sample == "b"),
            "{e}"
        );
        let bad = vec![sample("a", &[1, 2, 3]), sample("d", &[1, 3, 2])];
        let e = check_shapes(SetRole::Evaluation, &bad, &[vec![1, 2, 3]], &m, true).unwrap_err();
        assert!(e.to_string().contains("evaluation sample d"), "{e}");
        let b = batches(&s, 2, &Device::flex());
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].tensors[0].shape().as_slice(), &[3, 2, 3]);
        assert_eq!(b[1].tensors[0].shape().as_slice(), &[1, 2, 3]);
        let g = b[1].grow_batch();
        assert_eq!(g.tensors[0].shape().as_slice(), &[2, 2, 3]);
    }

    /// `y = Relu(x)` with `x: [N, 2, 3]`.
    fn tiny_model() -> ModelProto {
        use burn_quant_export::onnx::proto::*;
        let dims = [Dim::Param("N".into()), Dim::Fixed(2), Dim::Fixed(3)];
        let vi = |name: &str| ValueInfoProto::tensor(name, DataType::Float, &dims);
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(GraphProto {
                name: "g".into(),
                node: vec![NodeProto {
                    op_type: "Relu".into(),
                    name: "relu".into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                input: vec![vi("x")],
                output: vec![vi("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
