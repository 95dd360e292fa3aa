//! # burn-quant-qat
//!
//! Quantization-aware training of **your** Burn model: write it with `burn::nn` layers and our
//! quantized layers (`QuantLinear`, `QuantConv2d`, `QuantAct`, …, or
//! `attach_weight_quantizers` on an unmodified model), implement burn-train's `TrainStep` and
//! `InferenceStep`, then
//!
//! 1. [`calibrate_model`]: run your forward on a few batches inside the calibration scope, so
//!    static and learned scales start from their statistic;
//! 2. [`fit()`]: train with burn-train's `Learner` (single device, no terminal output, no files),
//!    configured by a [`FitConfig`] (epochs, batch sizes, learning rate, seed,
//!    [`OptimizerConfig`]); the epoch-final metrics come back in a [`FitReport`]. [`Trainer`]
//!    takes any metrics, ready-made data loaders, another device and a progress callback;
//! 3. [`accuracy`] / [`evaluate`]: measure it.
//!
//! [`rdfs`] ships a custom rounding rule (RDFS, a Fourier surrogate gradient) registered by
//! name, so a spec can name it and every quantizer uses it in training.
//!
//! `examples/qat_own_model.rs` trains a small W4A4 model end to end in about 30 lines; the
//! book's QAT chapter walks through it. Errors are [`QatError`]s; nothing here panics on user
//! input or prints.
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod eval;
pub mod fit;
pub mod rdfs;

pub use config::{FitConfig, OptimizerConfig};
pub use error::{QatError, Result};
pub use eval::{Evaluation, accuracy, calibrate_model, evaluate};
pub use fit::{EpochMetrics, FitProgress, FitReport, Split, Trainer, fit};

#[cfg(test)]
mod tests;
