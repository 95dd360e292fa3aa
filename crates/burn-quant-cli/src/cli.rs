//! Command-line interface of `burnq` (clap derive).
//!
//! `burnq` without a subcommand runs the quickstart. Planned subcommands (not implemented
//! yet): `ptq-llm`, `export`, `inspect`, `qat`.

use clap::{Args, Parser, Subcommand};

use crate::error::Result;
use crate::quickstart::{self, QuickstartConfig};

/// burnq: neural-network quantization for Burn.
#[derive(Debug, Parser)]
#[command(
    name = "burnq",
    version,
    about = "Neural-network quantization for the Burn deep learning framework",
    after_help = "Without a subcommand, burnq runs the quickstart.\n\
                  Planned subcommands: ptq-llm, export, inspect, qat."
)]
pub struct Cli {
    /// What to do; the quickstart when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands of `burnq`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a small MLP on the embedded MNIST subset and compare quantization formats on it.
    Quickstart(QuickstartArgs),
}

/// Options of `burnq quickstart`.
#[derive(Debug, Clone, Args)]
pub struct QuickstartArgs {
    /// Training epochs.
    #[arg(long, default_value_t = QuickstartConfig::default().epochs)]
    pub epochs: usize,
    /// Seed of the data split, the initial weights and the shuffles.
    #[arg(long, default_value_t = QuickstartConfig::default().seed)]
    pub seed: u64,
    /// Hidden units of the MLP (a multiple of 128 keeps every group size of the zoo valid).
    #[arg(long, default_value_t = QuickstartConfig::default().d_hidden)]
    pub hidden: usize,
    /// Adam mini-batch size.
    #[arg(long, default_value_t = QuickstartConfig::default().batch_size)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = QuickstartConfig::default().learning_rate)]
    pub lr: f64,
}

impl Default for QuickstartArgs {
    fn default() -> Self {
        let d = QuickstartConfig::default();
        Self {
            epochs: d.epochs,
            seed: d.seed,
            hidden: d.d_hidden,
            batch_size: d.batch_size,
            lr: d.learning_rate,
        }
    }
}

impl QuickstartArgs {
    /// The quickstart configuration these options select.
    pub fn config(&self) -> QuickstartConfig {
        QuickstartConfig {
            epochs: self.epochs,
            seed: self.seed,
            d_hidden: self.hidden,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            ..QuickstartConfig::default()
        }
    }
}

/// Runs the command line `cli`, printing to stdout.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => run_quickstart(&QuickstartArgs::default()),
        Some(Command::Quickstart(args)) => run_quickstart(&args),
    }
}

fn run_quickstart(args: &QuickstartArgs) -> Result<()> {
    let report = quickstart::run(&args.config())?;
    print!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_subcommand_and_quickstart_parse() {
        let cli = Cli::try_parse_from(["burnq"]).expect("parses");
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["burnq", "quickstart", "--epochs", "3"]).expect("parses");
        match cli.command {
            Some(Command::Quickstart(a)) => assert_eq!(a.config().epochs, 3),
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["burnq", "ptq-llm"]).is_err());
    }
}
