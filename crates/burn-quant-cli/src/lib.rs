//! # burn-quant-cli
//!
//! The library behind the `burnq` binary: the command-line definition ([`cli`]) and the
//! quickstart ([`quickstart`]), which trains an MLP on an embedded MNIST subset ([`mnist`],
//! [`model`]) and compares weight-quantization formats on it ([`zoo`]), and the QAT demo
//! ([`qat`]), which fine-tunes a small CNN built from our quantized layers with burn-train.
//!
//! ```no_run
//! use burn_quant_cli::quickstart::{run, QuickstartConfig};
//!
//! let report = run(&QuickstartConfig::default())?;
//! println!("{report}");
//! # Ok::<(), burn_quant_cli::error::CliError>(())
//! ```
#![warn(missing_docs)]

pub mod cli;
pub mod error;
pub mod export;
pub mod inspect;
pub mod mnist;
pub mod model;
pub mod ptq_llm;
pub mod qat;
pub mod quantize_onnx;
pub mod quickstart;
pub mod rng;
pub mod sweep;
pub mod table;
pub mod zoo;

pub use error::{CliError, Result};

/// The book's QAT chapter (`book/src/qat.md`), compiled and run as doctests so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../book/src/qat.md")]
pub struct QatBookDoctests;
