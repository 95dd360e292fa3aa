//! Quantization-aware training of your own Burn model with `burn-quant-qat`: an MLP written
//! with `burn::nn::Linear` and our activation quantizers, trained in float, then given int4
//! weights (a plan, through Burn's reparameterization: the model's type does not change) and
//! 4-bit activations, calibrated and fine-tuned — W4A4 — on the embedded MNIST subset.
//!
//! Run: `cargo run --release --example qat_own_model` (a few seconds).

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use burn_quant::nn::{QuantAct, QuantActConfig, QuantPlan, attach_weight_quantizers};
use burn_quant::prelude::{QuantSpec, ScaleSource, ScaleStat};
use burn_quant_cli::mnist::Mnist;
use burn_quant_qat::{FitConfig, accuracy, calibrate_model, fit};

// ----- the user's model: burn::nn layers, our quantizers on the activations -----------------

#[derive(Module, Debug)]
struct Mlp {
    input_quant: QuantAct,
    fc1: Linear,
    hidden_quant: QuantAct,
    fc2: Linear,
}

fn lsq4(spec: QuantSpec) -> QuantSpec {
    spec.with_bits(4)
        .with_scale_source(ScaleSource::Learned(ScaleStat::AbsMax))
}

impl Mlp {
    /// The float model: 4-bit activation quantizers, switched off until QAT.
    fn new(device: &Device) -> burn_quant::Result<Self> {
        let act = |spec: QuantSpec| -> burn_quant::Result<QuantAct> {
            let mut q = QuantActConfig::new(lsq4(spec)).init(device)?;
            q.act_quant.enabled = false;
            Ok(q)
        };
        Ok(Self {
            input_quant: act(QuantSpec::int8_act_per_tensor())?,
            fc1: LinearConfig::new(784, 128).init(device),
            hidden_quant: act(QuantSpec::uint8_act_per_tensor())?,
            fc2: LinearConfig::new(128, 10).init(device),
        })
    }

    fn with_act_quant(mut self, on: bool) -> Self {
        self.input_quant.act_quant.enabled = on;
        self.hidden_quant.act_quant.enabled = on;
        self
    }

    fn forward(&self, images: Tensor<2>) -> Tensor<2> {
        let x = self.fc1.forward(self.input_quant.forward(images));
        self.fc2.forward(self.hidden_quant.forward(relu(x)))
    }

    fn classify(&self, batch: Digits) -> ClassificationOutput {
        let logits = self.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

impl TrainStep for Mlp {
    type Input = Digits;
    type Output = ClassificationOutput;
    fn step(&self, batch: Digits) -> TrainOutput<ClassificationOutput> {
        let out = self.classify(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for Mlp {
    type Input = Digits;
    type Output = ClassificationOutput;
    fn step(&self, batch: Digits) -> ClassificationOutput {
        self.classify(batch)
    }
}

// ----- the user's data: Burn's Dataset and Batcher ------------------------------------------

#[derive(Clone, Debug)]
struct Digit {
    pixels: Vec<f32>,
    label: i64,
}

#[derive(Clone, Debug)]
struct Digits {
    images: Tensor<2>,
    labels: Tensor<1, Int>,
}

#[derive(Clone, Debug)]
struct DigitBatcher;

impl Batcher<Digit, Digits> for DigitBatcher {
    fn batch(&self, items: Vec<Digit>, device: &Device) -> Digits {
        let n = items.len();
        let pixels: Vec<f32> = items
            .iter()
            .flat_map(|d| d.pixels.iter().copied())
            .collect();
        let labels: Vec<i64> = items.iter().map(|d| d.label).collect();
        Digits {
            images: Tensor::from_data(TensorData::new(pixels, [n, 784]), device),
            labels: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

/// The images at positions `range` of a fixed permutation of the set (it is grouped by digit),
/// standardised.
fn digits(data: &Mnist, range: std::ops::Range<usize>) -> Vec<Digit> {
    range
        .map(|k| k * 7919 % data.len()) // 7919 is prime: a permutation of 0..10,000
        .map(|i| Digit {
            pixels: data
                .image(i)
                .iter()
                .map(|&p| (f32::from(p) / 255.0 - 0.1307) / 0.3081)
                .collect(),
            label: i64::from(data.labels[i]),
        })
        .collect()
}

// ----- QAT with burn-quant-qat -------------------------------------------------------------

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = Mnist::embedded()?;
    let (train, test) = (digits(&data, 0..8000), digits(&data, 8000..10_000));
    let device = Device::flex();
    device.seed(42);
    let batches = |set: &[Digit]| -> Vec<Digits> {
        set.chunks(500)
            .map(|c| DigitBatcher.batch(c.to_vec(), &device))
            .collect()
    };
    let test_accuracy =
        |m: &Mlp| accuracy(m, batches(&test), |m, b| (m.forward(b.images), b.labels));
    let dataset = |set: &[Digit]| InMemDataset::new(set.to_vec());

    // 1. Float training: activation quantizers off, weights untouched.
    let config = FitConfig::new(3).with_learning_rate(2e-3).with_seed(1);
    let (float, _) = fit(
        Mlp::new(&device)?,
        DigitBatcher,
        dataset(&train),
        dataset(&test),
        &config,
    )?;
    let fine_tune = FitConfig::new(2).with_learning_rate(5e-4).with_seed(1);
    let (float_ft, _) = fit(
        float.clone(),
        DigitBatcher,
        dataset(&train),
        dataset(&test),
        &fine_tune,
    )?;

    // 2. W4A4: int4 per-output-channel weights, absmax scale per step (a plan: the model's
    //    type does not change); the 4-bit activation quantizers on, their learned scales
    //    calibrated on 1,000 images.
    let w4 = QuantSpec::int8_weight_per_output_channel().with_bits(4);
    let plan = QuantPlan::new().rule("fc*.weight", w4);
    let model = attach_weight_quantizers(float.clone().with_act_quant(true), &plan)?;
    let model = calibrate_model(model, batches(&train[..1000]), |m, b| m.forward(b.images))?;
    let ptq = test_accuracy(&model)?;

    // 3. Fine-tune weights and learned scales together, as the float model was.
    let (model, report) = fit(
        model,
        DigitBatcher,
        dataset(&train),
        dataset(&test),
        &fine_tune,
    )?;

    println!("qat_own_model: MLP 784-128-10 on embedded MNIST, 8000 train / 2000 test images");
    println!(
        "float32           test accuracy {:.2}%",
        100.0 * test_accuracy(&float)?
    );
    println!(
        "float32 + FT      test accuracy {:.2}%  (2 more epochs at lr 5e-4, like W4A4)",
        100.0 * test_accuracy(&float_ft)?
    );
    println!(
        "W4A4 after calib  test accuracy {:.2}%  (post-training quantization)",
        100.0 * ptq
    );
    println!(
        "W4A4 after QAT    test accuracy {:.2}%  ({} epochs of QAT, {:.1} s)",
        100.0 * test_accuracy(&model)?,
        report.epochs.len(),
        report.time.as_secs_f64()
    );
    Ok(())
}
