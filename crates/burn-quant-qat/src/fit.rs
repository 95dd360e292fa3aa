//! Training with burn-train's [`Learner`]: [`fit`] for a classifier on data sets, [`Trainer`]
//! for any metrics, loaders, device or progress callback. Nothing is printed and nothing is
//! written to disk; each epoch's final metric values come back in a [`FitReport`].
//!
//! # Threads
//!
//! The nn crate's `calibrate`, `with_rounding` and `without_quantization` are scoped to the
//! calling thread. burn-train 0.22's single-device strategy, which [`Trainer`] selects
//! explicitly, runs every training and validation step on the thread that calls it; only metric
//! processing (and so the progress callback) runs on a background thread, and it does not run
//! the model. So a scope around [`fit`] reaches every quantizer of every step.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use burn::data::dataloader::DataLoader;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Device;
use burn::train::logger::{EvaluationProgressLogger, InMemoryMetricLogger, TrainingProgressLogger};
use burn::train::metric::{
    AccuracyInput, AccuracyMetric, Adaptor, LossInput, LossMetric, MetricDefinition, MetricId,
    NumericEntry,
};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, LearnerModel, LearnerSummary, MetricRegistration,
    SupervisedTraining, TrainStep,
};

use crate::config::FitConfig;
use crate::error::{QatError, Result};

/// burn-train's name of [`LossMetric`].
pub const LOSS: &str = "Loss";
/// burn-train's name of [`AccuracyMetric`].
pub const ACCURACY: &str = "Accuracy";

/// One epoch as the Learner reported it: the epoch-final value of every numeric metric, by
/// burn-train's metric name, on each split (accuracies in percent, as burn-train reports them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochMetrics {
    /// Training split, e.g. `"Loss" → 0.31`.
    pub train: BTreeMap<String, f64>,
    /// Validation split.
    pub valid: BTreeMap<String, f64>,
}

impl EpochMetrics {
    /// Mean training loss ([`LossMetric`]).
    pub fn train_loss(&self) -> Option<f64> {
        self.train.get(LOSS).copied()
    }
    /// Training accuracy, % ([`AccuracyMetric`]).
    pub fn train_accuracy(&self) -> Option<f64> {
        self.train.get(ACCURACY).copied()
    }
    /// Mean validation loss.
    pub fn valid_loss(&self) -> Option<f64> {
        self.valid.get(LOSS).copied()
    }
    /// Validation accuracy, %.
    pub fn valid_accuracy(&self) -> Option<f64> {
        self.valid.get(ACCURACY).copied()
    }
}

/// What one fit produced besides the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FitReport {
    /// One entry per epoch.
    pub epochs: Vec<EpochMetrics>,
    /// Wall time of the Learner's `launch` (training and per-epoch validation).
    pub time: Duration,
}

/// Which split a [`FitProgress::Items`] event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split.
    Train,
    /// The validation split.
    Valid,
}

/// What the progress callback of a [`Trainer`] receives (on burn-train's metric thread).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FitProgress {
    /// Items of a split processed so far in an epoch (after each batch).
    Items {
        /// Epoch, from 1.
        epoch: usize,
        /// Epochs of the run.
        epochs: usize,
        /// The split.
        split: Split,
        /// Items processed in this epoch's split.
        done: usize,
        /// Items of the split.
        total: usize,
    },
    /// An epoch ended (training and validation).
    Epoch {
        /// Epoch, from 1.
        epoch: usize,
        /// Epochs of the run.
        epochs: usize,
        /// Its final metric values.
        metrics: EpochMetrics,
    },
}

type ProgressFn = Box<dyn FnMut(&FitProgress) + Send>;

/// A quiet burn-train renderer: prints nothing, records the epoch-final values of every
/// numeric metric, and forwards progress to the callback, if any (the stock
/// `CliMetricsRenderer` prints a line per batch).
#[derive(Clone, Default)]
struct EpochRecorder(Arc<Mutex<RecorderState>>);

#[derive(Default)]
struct RecorderState {
    names: Vec<(MetricId, String)>,
    epochs: Vec<EpochMetrics>,
    total_epochs: usize,
    split: Option<(Split, usize)>,
    progress: Option<ProgressFn>,
}

impl RecorderState {
    fn emit(&mut self, event: FitProgress) {
        if let Some(f) = self.progress.as_mut() {
            f(&event);
        }
    }
}

impl EpochRecorder {
    fn new(progress: Option<ProgressFn>) -> Self {
        Self(Arc::new(Mutex::new(RecorderState {
            progress,
            ..RecorderState::default()
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RecorderState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Vec<EpochMetrics> {
        std::mem::take(&mut self.state().epochs)
    }

    fn record(&self, state: MetricState, train: bool) {
        let MetricState::Numeric(entry, Some(NumericEntry::Final(value))) = state else {
            return;
        };
        let mut s = self.state();
        let Some(name) = s
            .names
            .iter()
            .find(|(id, _)| *id == entry.metric_id)
            .map(|(_, n)| n.clone())
        else {
            return;
        };
        let Some(epoch) = s.epochs.last_mut() else {
            return;
        };
        let split = if train {
            &mut epoch.train
        } else {
            &mut epoch.valid
        };
        split.insert(name, value);
    }
}

impl MetricsRendererTraining for EpochRecorder {
    fn update_train(&mut self, state: MetricState) {
        self.record(state, true);
    }
    fn update_valid(&mut self, state: MetricState) {
        self.record(state, false);
    }
    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for EpochRecorder {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
    fn on_test_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl TrainingProgressLogger for EpochRecorder {
    fn start(
        &mut self,
        epochs: usize,
        _starting: usize,
        _items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.state().total_epochs = epochs;
    }
    /// Called after the epoch's validation: its metrics are complete.
    fn update_epoch(&mut self, epoch: usize) {
        let mut s = self.state();
        let Some(metrics) = s.epochs.last().cloned() else {
            return;
        };
        let epochs = s.total_epochs;
        s.emit(FitProgress::Epoch {
            epoch,
            epochs,
            metrics,
        });
    }
    fn start_split(&mut self, split: &str, total_items: usize) {
        let mut s = self.state();
        let split = if split == "train" {
            s.epochs.push(EpochMetrics::default());
            Split::Train
        } else {
            Split::Valid
        };
        s.split = Some((split, total_items));
    }
    fn update_split(&mut self, items_processed: usize) {
        let mut s = self.state();
        let Some((split, total)) = s.split else {
            return;
        };
        let (epoch, epochs) = (s.epochs.len(), s.total_epochs);
        s.emit(FitProgress::Items {
            epoch,
            epochs,
            split,
            done: items_processed,
            total,
        });
    }
    fn end_split(&mut self) {}
    fn end(&mut self) {}
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for EpochRecorder {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for EpochRecorder {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, definition: MetricDefinition) {
        self.state()
            .names
            .push((definition.metric_id, definition.name.to_string()));
    }
}

type Registration<M> = Box<dyn FnOnce(SupervisedTraining<M>) -> SupervisedTraining<M>>;

/// burn-train's supervised training of any Burn model that implements `TrainStep` and
/// `InferenceStep`, configured by a [`FitConfig`]: the single-device strategy, no terminal
/// output, no files, the epoch-final metric values in a [`FitReport`].
///
/// ```no_run
/// # use burn_quant_qat::{FitConfig, Trainer};
/// # use burn::train::metric::LossMetric;
/// # fn demo<M: burn::train::LearnerModel>(model: M,
/// #     train: std::sync::Arc<dyn burn::data::dataloader::DataLoader<<M as burn::train::TrainStep>::Input>>,
/// #     valid: std::sync::Arc<dyn burn::data::dataloader::DataLoader<<M as burn::train::InferenceStep>::Input>>)
/// # -> burn_quant_qat::Result<()>
/// # where <M as burn::train::TrainStep>::Output: burn::train::metric::Adaptor<burn::train::metric::LossInput>,
/// #       <M as burn::train::InferenceStep>::Output: burn::train::metric::Adaptor<burn::train::metric::LossInput> {
/// let (model, report) = Trainer::new(FitConfig::new(3))
///     .with_metrics((LossMetric::new(),))
///     .with_progress(|p| eprintln!("{p:?}"))
///     .fit_loaders(model, train, valid)?;
/// # Ok(()) }
/// ```
pub struct Trainer<M: LearnerModel> {
    config: FitConfig,
    device: Device,
    registrations: Vec<Registration<M>>,
    progress: Option<ProgressFn>,
}

impl<M: LearnerModel> Trainer<M> {
    /// A trainer with `config`, on `Device::flex().autodiff()`, with no metrics (add them with
    /// [`with_metrics`](Self::with_metrics)) and no progress callback.
    pub fn new(config: FitConfig) -> Self {
        Self {
            config,
            device: Device::flex().autodiff(),
            registrations: Vec::new(),
            progress: None,
        }
    }

    /// Trains on `device` (an autodiff device, e.g. `Device::flex().autodiff()`).
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Adds numeric metrics computed on both splits, as burn-train's
    /// `SupervisedTraining::metrics` takes them: a tuple such as
    /// `(AccuracyMetric::new(), LossMetric::new())`.
    pub fn with_metrics<Me: MetricRegistration<M> + 'static>(mut self, metrics: Me) -> Self {
        self.registrations
            .push(Box::new(move |training| training.metrics(metrics)));
        self
    }

    /// Calls `progress` after each batch and at the end of each epoch, on burn-train's metric
    /// thread.
    pub fn with_progress(mut self, progress: impl FnMut(&FitProgress) + Send + 'static) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// Trains `model` on the `train` loader, validating on `valid` after each epoch; returns
    /// the model (in validation mode, as the Learner returns it: call `train()` before training
    /// it further) and the report. The config's batch sizes and seed do not apply to loaders
    /// built elsewhere; its seed still seeds the training device.
    pub fn fit_loaders(
        self,
        model: M,
        train: Arc<dyn DataLoader<<M as TrainStep>::Input>>,
        valid: Arc<dyn DataLoader<<M as InferenceStep>::Input>>,
    ) -> Result<(M, FitReport)> {
        let config = self.config;
        config.validate()?;
        if train.num_items() == 0 {
            return Err(QatError::EmptyData {
                what: "training data loader",
            });
        }
        if valid.num_items() == 0 {
            return Err(QatError::EmptyData {
                what: "validation data loader",
            });
        }
        let label = config.label_or_default().to_string();
        let recorder = EpochRecorder::new(self.progress);
        self.device.seed(config.seed);
        // `train()` turns the configured trainability (weights, learned scales; not static
        // scales) into gradient tracking; the Learner then forks the model onto the device.
        let learner = Learner::new(model.train(), config.optimizer.init(), config.learning_rate);
        // The directory is required by the builder; with the settings below nothing goes there.
        let mut training =
            SupervisedTraining::new(std::env::temp_dir().join("burn-quant-qat"), train, valid)
                .num_epochs(config.epochs)
                .with_training_strategy(ExecutionStrategy::SingleDevice(self.device).into())
                .with_application_logger(None)
                .with_metric_logger(InMemoryMetricLogger::new())
                .renderer(Box::new(recorder.clone()))
                .label(&label);
        for register in self.registrations {
            training = register(training);
        }
        let start = Instant::now();
        let result = training.launch(learner);
        let time = start.elapsed();
        if let Some(error) = result.error {
            return Err(QatError::Training {
                label,
                reason: error.to_string(),
            });
        }
        if let Some(stop) = result.interrupted {
            return Err(QatError::Training {
                label,
                reason: format!("interrupted: {}", stop.reason.unwrap_or_default()),
            });
        }
        Ok((
            result.model,
            FitReport {
                epochs: recorder.take(),
                time,
            },
        ))
    }

    /// Trains `model` on data sets: `train` in batches of the config's `batch_size`, shuffled
    /// with its seed; `valid` in batches of its `valid_batch_size`, both through `batcher`.
    pub fn fit<I, B, Bt, D, V>(
        self,
        model: M,
        batcher: Bt,
        train: D,
        valid: V,
    ) -> Result<(M, FitReport)>
    where
        M: TrainStep<Input = B> + InferenceStep<Input = B>,
        I: Send + Sync + Clone + std::fmt::Debug + 'static,
        B: Send + Clone + std::fmt::Debug + 'static,
        Bt: Batcher<I, B> + Clone + 'static,
        D: Dataset<I> + 'static,
        V: Dataset<I> + 'static,
    {
        self.config.validate()?;
        let train = self.config.train_loader(batcher.clone(), train)?;
        let valid = self.config.valid_loader(batcher, valid)?;
        self.fit_loaders(model, train, valid)
    }
}

/// Trains a classifier: [`Trainer`] with [`AccuracyMetric`] and [`LossMetric`] on both splits,
/// `train` shuffled in batches of `config.batch_size`, `valid` in batches of
/// `config.valid_batch_size`, on `Device::flex().autodiff()`.
///
/// `model` implements burn-train's `TrainStep` and `InferenceStep` with one batch type `B`,
/// and its step outputs feed accuracy and loss (e.g. burn-train's `ClassificationOutput`).
/// Quantizers with static or learned scales must be calibrated first
/// ([`calibrate_model`](crate::calibrate_model)).
pub fn fit<M, I, B, Bt, D, V>(
    model: M,
    batcher: Bt,
    train: D,
    valid: V,
    config: &FitConfig,
) -> Result<(M, FitReport)>
where
    M: LearnerModel + TrainStep<Input = B> + InferenceStep<Input = B>,
    <M as TrainStep>::Output: Adaptor<AccuracyInput> + Adaptor<LossInput>,
    <M as InferenceStep>::Output: Adaptor<AccuracyInput> + Adaptor<LossInput>,
    I: Send + Sync + Clone + std::fmt::Debug + 'static,
    B: Send + Clone + std::fmt::Debug + 'static,
    Bt: Batcher<I, B> + Clone + 'static,
    D: Dataset<I> + 'static,
    V: Dataset<I> + 'static,
{
    Trainer::new(config.clone())
        .with_metrics((AccuracyMetric::new(), LossMetric::new()))
        .fit(model, batcher, train, valid)
}
