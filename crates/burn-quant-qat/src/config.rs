//! What a QAT run can vary: [`FitConfig`] (epochs, batch sizes, learning rate, seed, optimizer)
//! and [`OptimizerConfig`], both Burn [`Config`]s (serde, `new` + `with_*`).

use std::sync::Arc;

use burn::config::Config;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, SgdConfig};

use crate::error::QatError;

/// The optimizer of a [`FitConfig`], with Burn's own optimizer configs (weight decay,
/// momentum, gradient clipping, betas… are set there).
#[derive(Config, Debug)]
pub enum OptimizerConfig {
    /// Adam (`burn::optim::AdamConfig`).
    Adam(AdamConfig),
    /// AdamW (`burn::optim::AdamWConfig`).
    AdamW(AdamWConfig),
    /// Stochastic gradient descent (`burn::optim::SgdConfig`).
    Sgd(SgdConfig),
}

impl OptimizerConfig {
    /// The optimizer, ready for a Learner.
    pub fn init(&self) -> ModuleOptimizer {
        match self {
            OptimizerConfig::Adam(c) => c.init(),
            OptimizerConfig::AdamW(c) => c.init(),
            OptimizerConfig::Sgd(c) => c.init(),
        }
    }
}

/// Hyper-parameters of one [`fit`](crate::fit()): `FitConfig::new(epochs)` then `with_*`.
#[derive(Config, Debug)]
pub struct FitConfig {
    /// Epochs (at least 1).
    pub epochs: usize,
    /// Training mini-batch size (at least 1).
    #[config(default = 64)]
    pub batch_size: usize,
    /// Batch size of the validation passes (at least 1; no gradients, so it can be larger).
    #[config(default = 500)]
    pub valid_batch_size: usize,
    /// Learning rate, constant (finite, > 0).
    #[config(default = 1e-3)]
    pub learning_rate: f64,
    /// Seed of the training loader's shuffles and of the training device's random numbers
    /// (dropout, random initialisers): the same seed, model and data give the same weights.
    #[config(default = 0)]
    pub seed: u64,
    /// The optimizer.
    #[config(default = "OptimizerConfig::Adam(AdamConfig::new())")]
    pub optimizer: OptimizerConfig,
    /// Label of the run (burn-train's summary and errors name it).
    #[config(default = "None")]
    pub label: Option<String>,
}

impl FitConfig {
    /// Checks every value; the first one out of range is a [`QatError::Config`] naming it.
    pub fn validate(&self) -> Result<(), QatError> {
        if self.epochs == 0 {
            return Err(QatError::config(
                "epochs",
                self.epochs,
                "train for at least one epoch",
            ));
        }
        if self.batch_size == 0 {
            return Err(QatError::config(
                "batch_size",
                self.batch_size,
                "must be at least 1",
            ));
        }
        if self.valid_batch_size == 0 {
            return Err(QatError::config(
                "valid_batch_size",
                self.valid_batch_size,
                "must be at least 1",
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(QatError::config(
                "learning_rate",
                self.learning_rate,
                "must be finite and > 0",
            ));
        }
        Ok(())
    }

    /// The run's label (`"qat"` when none is set).
    pub fn label_or_default(&self) -> &str {
        self.label.as_deref().unwrap_or("qat")
    }

    /// A training loader over `dataset`: batches of [`batch_size`](Self::batch_size), shuffled
    /// with [`seed`](Self::seed) at every epoch. An empty data set or a zero batch size is an
    /// error.
    pub fn train_loader<I, B, Bt, D>(
        &self,
        batcher: Bt,
        dataset: D,
    ) -> Result<Arc<dyn DataLoader<B>>, QatError>
    where
        I: Send + Sync + Clone + std::fmt::Debug + 'static,
        B: Send + Clone + std::fmt::Debug + 'static,
        Bt: Batcher<I, B> + 'static,
        D: Dataset<I> + 'static,
    {
        loader(
            batcher,
            dataset,
            ("batch_size", self.batch_size),
            Some(self.seed),
            "training data set",
        )
    }

    /// A validation loader over `dataset`: batches of
    /// [`valid_batch_size`](Self::valid_batch_size), in order. An empty data set or a zero
    /// batch size is an error.
    pub fn valid_loader<I, B, Bt, D>(
        &self,
        batcher: Bt,
        dataset: D,
    ) -> Result<Arc<dyn DataLoader<B>>, QatError>
    where
        I: Send + Sync + Clone + std::fmt::Debug + 'static,
        B: Send + Clone + std::fmt::Debug + 'static,
        Bt: Batcher<I, B> + 'static,
        D: Dataset<I> + 'static,
    {
        loader(
            batcher,
            dataset,
            ("valid_batch_size", self.valid_batch_size),
            None,
            "validation data set",
        )
    }
}

fn loader<I, B, Bt, D>(
    batcher: Bt,
    dataset: D,
    (field, batch_size): (&'static str, usize),
    shuffle: Option<u64>,
    what: &'static str,
) -> Result<Arc<dyn DataLoader<B>>, QatError>
where
    I: Send + Sync + Clone + std::fmt::Debug + 'static,
    B: Send + Clone + std::fmt::Debug + 'static,
    Bt: Batcher<I, B> + 'static,
    D: Dataset<I> + 'static,
{
    if batch_size == 0 {
        return Err(QatError::config(field, batch_size, "must be at least 1"));
    }
    if dataset.is_empty() {
        return Err(QatError::EmptyData { what });
    }
    let builder = DataLoaderBuilder::new(batcher).batch_size(batch_size);
    let builder = match shuffle {
        Some(seed) => builder.shuffle(seed),
        None => builder,
    };
    Ok(builder.build(dataset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_field() {
        let ok = FitConfig::new(2);
        ok.validate().expect("defaults are valid");
        assert_eq!(ok.label_or_default(), "qat");
        let field = |c: FitConfig| match c.validate() {
            Err(QatError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(field(FitConfig::new(0)), "epochs");
        assert_eq!(field(FitConfig::new(1).with_batch_size(0)), "batch_size");
        assert_eq!(
            field(FitConfig::new(1).with_valid_batch_size(0)),
            "valid_batch_size"
        );
        assert_eq!(
            field(FitConfig::new(1).with_learning_rate(f64::NAN)),
            "learning_rate"
        );
        assert_eq!(
            field(FitConfig::new(1).with_learning_rate(0.0)),
            "learning_rate"
        );
    }

    #[test]
    fn config_round_trips_through_json_with_its_optimizer() {
        let c = FitConfig::new(3)
            .with_seed(7)
            .with_optimizer(OptimizerConfig::Sgd(SgdConfig::new()))
            .with_label(Some("run".into()));
        let json = serde_json_like(&c);
        let back: FitConfig = FitConfig::load_binary(json.as_bytes()).expect("parses");
        assert_eq!((back.epochs, back.seed), (3, 7));
        assert!(matches!(back.optimizer, OptimizerConfig::Sgd(_)));
        assert_eq!(back.label.as_deref(), Some("run"));
    }

    /// Burn's `Config` serialises to JSON through its `Display`.
    fn serde_json_like(c: &FitConfig) -> String {
        c.to_string()
    }
}
