//! The quickstart's model: a two-layer MLP built from stock `burn::nn::Linear` layers, its
//! seeded initialisation, an Adam training loop and accuracy evaluation.

use std::time::{Duration, Instant};

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{CliError, Result};
use crate::mnist::Dataset;
use crate::rng::SplitMix64;

/// `Linear(d_input → d_hidden) → ReLU → Linear(d_hidden → d_output)`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layer, weight `[d_input, d_hidden]`.
    pub fc1: Linear,
    /// Output layer, weight `[d_hidden, d_output]`.
    pub fc2: Linear,
}

impl Mlp {
    /// Logits `[batch, d_output]` of inputs `[batch, d_input]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

/// Geometry of an [`Mlp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpConfig {
    /// Input features.
    pub d_input: usize,
    /// Hidden units.
    pub d_hidden: usize,
    /// Output classes.
    pub d_output: usize,
}

impl MlpConfig {
    /// Parameter path and shape of every `Linear` weight, in module order.
    pub fn linear_weight_shapes(&self) -> [(&'static str, [usize; 2]); 2] {
        [
            ("fc1.weight", [self.d_input, self.d_hidden]),
            ("fc2.weight", [self.d_hidden, self.d_output]),
        ]
    }

    /// Builds the MLP with Burn's default `Linear` initialisation (uniform in
    /// `±1/sqrt(d_input)` for weight and bias) drawn from a [`SplitMix64`] seeded with `seed`,
    /// so the initial weights do not depend on Burn's process-wide RNG.
    pub fn init(&self, seed: u64, device: &Device) -> Mlp {
        let mut rng = SplitMix64::new(seed);
        Mlp {
            fc1: seeded_linear(self.d_input, self.d_hidden, &mut rng, device),
            fc2: seeded_linear(self.d_hidden, self.d_output, &mut rng, device),
        }
    }
}

fn seeded_linear(d_input: usize, d_output: usize, rng: &mut SplitMix64, device: &Device) -> Linear {
    let bound = 1.0 / (d_input as f32).sqrt();
    let mut draw = |n: usize| {
        (0..n)
            .map(|_| rng.uniform(-bound, bound))
            .collect::<Vec<f32>>()
    };
    let weight = Tensor::<2>::from_data(
        TensorData::new(draw(d_input * d_output), [d_input, d_output]),
        device,
    );
    let bias = Tensor::<1>::from_data(TensorData::new(draw(d_output), [d_output]), device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    }
}

/// Hyper-parameters of [`train`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
}

/// What training produced besides the model.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Mean training loss of each epoch.
    pub epoch_losses: Vec<f32>,
    /// Wall time of the whole training loop.
    pub time: Duration,
}

/// Features `[n, dim]` and labels `[n]` of the examples `idx` of `data`, on `device`.
fn batch(data: &Dataset, idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let mut x = Vec::with_capacity(idx.len() * data.dim);
    for &i in idx {
        x.extend_from_slice(&data.features[i * data.dim..(i + 1) * data.dim]);
    }
    let y: Vec<i32> = idx.iter().map(|&i| data.labels[i]).collect();
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), data.dim]), device),
        Tensor::from_data(TensorData::new(y, [idx.len()]), device),
    )
}

/// Trains `model` with Adam and cross-entropy on `data`; `device` must be an autodiff device
/// (e.g. `Device::flex().autodiff()`). Returns the model (still on `device`) and a report.
pub fn train(
    mut model: Mlp,
    data: &Dataset,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<(Mlp, TrainReport)> {
    crate::model::check_training(cfg.epochs, cfg.batch_size, cfg.learning_rate)?;
    if data.is_empty() {
        return Err(CliError::Data("empty training set".into()));
    }
    let start = Instant::now();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut optim = AdamConfig::new().init();
    let mut rng = SplitMix64::new(cfg.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut epoch_losses = Vec::with_capacity(cfg.epochs);
    for _ in 0..cfg.epochs {
        rng.shuffle(&mut order);
        let mut losses = Vec::with_capacity(order.len().div_ceil(cfg.batch_size));
        for idx in order.chunks(cfg.batch_size) {
            let (x, y) = batch(data, idx, device);
            let loss = loss_fn.forward(model.forward(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            losses.push(loss.detach());
            model = optim.step(cfg.learning_rate, model, grads);
        }
        // One read-back per epoch: the loss values stay on the device until here.
        let epoch: Vec<f32> = Tensor::cat(losses, 0).try_into_vec_as::<f32>()?;
        epoch_losses.push(epoch.iter().sum::<f32>() / epoch.len() as f32);
    }
    Ok((
        model,
        TrainReport {
            epoch_losses,
            time: start.elapsed(),
        },
    ))
}

/// Fraction of `data` that `model` classifies correctly, in `[0, 1]`.
///
/// Evaluates in batches of `batch_size` examples on `device`.
pub fn accuracy(model: &Mlp, data: &Dataset, batch_size: usize, device: &Device) -> Result<f64> {
    accuracy_with(|x| model.forward(x), data, batch_size, device)
}

/// Top-1 accuracy of any classifier `forward` (logits `[batch, classes]` of `[batch, dim]`
/// inputs) on `data`, in batches of `batch_size` on `device`.
pub fn accuracy_with(
    forward: impl Fn(Tensor<2>) -> Tensor<2>,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<f64> {
    if data.is_empty() || batch_size == 0 {
        return Err(CliError::Data(
            "accuracy needs a non-empty data set and batch size".into(),
        ));
    }
    let all: Vec<usize> = (0..data.len()).collect();
    let mut correct = 0usize;
    for idx in all.chunks(batch_size) {
        let (x, _) = batch(data, idx, device);
        let n = idx.len();
        let pred: Vec<i64> = forward(x).argmax(1).reshape([n]).try_into_vec_as::<i64>()?;
        correct += idx
            .iter()
            .zip(&pred)
            .filter(|&(&i, &p)| i64::from(data.labels[i]) == p)
            .count();
    }
    Ok(correct as f64 / data.len() as f64)
}

/// Checks the training hyper-parameters shared by the quickstart and `burnq qat`.
pub fn check_training(epochs: usize, batch_size: usize, learning_rate: f64) -> Result<()> {
    if epochs == 0 {
        return Err(CliError::config(
            "epochs",
            epochs,
            "train for at least one epoch",
        ));
    }
    if batch_size == 0 {
        return Err(CliError::config(
            "batch_size",
            batch_size,
            "must be at least 1",
        ));
    }
    if !(learning_rate.is_finite() && learning_rate > 0.0) {
        return Err(CliError::config(
            "learning_rate",
            learning_rate,
            "must be finite and > 0",
        ));
    }
    Ok(())
}
