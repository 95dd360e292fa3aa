//! Perplexity under a fixed windowed protocol, and seeded calibration windows.
//!
//! The default protocol is the one Brevitas's LLM entry point uses, so numbers compare: the
//! evaluation text is tokenized as one string without special tokens, cut into
//! non-overlapping 512-token windows (the first 16), and in each window the tokens
//! `256..512` are scored by mean cross-entropy (token `t` predicted from the logits at
//! position `t − 1`; the first half of the window is context only). The perplexity is
//! `exp` of the mean of the per-window means.

use burn::tensor::activation::log_softmax;

use crate::error::{LlmError, Result};
use crate::model::LlamaModel;
use crate::rng::SplitMix64;
use crate::tokenizer::LlamaTokenizer;

/// The evaluation text of the default protocol, relative to the shared data directory.
pub const EVAL_TEXT: &str = "austen-text/pride_prejudice_eval_slice.txt";
/// The calibration text (never the evaluation text), relative to the shared data directory.
pub const CALIBRATION_TEXT: &str = "austen-text/emma.txt";

/// The windowed perplexity protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerplexityConfig {
    /// Tokens per window. Default 512.
    pub window: usize,
    /// First scored position in a window; earlier tokens are context only. Default 256.
    pub score_from: usize,
    /// Windows to evaluate (`None`: every whole window of the text). Default `Some(16)`.
    pub num_windows: Option<usize>,
    /// Windows per forward pass (memory and speed only; results do not depend on it).
    /// Default 2: on flex, larger batches were no faster per window (measured 1, 2, 4, 8 on
    /// SmolLM2-135M) and hold more logits (`batch · (window − score_from) · vocab` floats).
    pub batch_size: usize,
}

impl Default for PerplexityConfig {
    fn default() -> Self {
        Self {
            window: 512,
            score_from: 256,
            num_windows: Some(16),
            batch_size: 2,
        }
    }
}

impl PerplexityConfig {
    /// Sets [`window`](Self::window).
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window;
        self
    }

    /// Sets [`score_from`](Self::score_from).
    pub fn with_score_from(mut self, score_from: usize) -> Self {
        self.score_from = score_from;
        self
    }

    /// Sets [`num_windows`](Self::num_windows).
    pub fn with_num_windows(mut self, num_windows: Option<usize>) -> Self {
        self.num_windows = num_windows;
        self
    }

    /// Sets [`batch_size`](Self::batch_size).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.score_from == 0 || self.score_from >= self.window {
            return Err(LlmError::invalid(
                "score_from",
                self.score_from,
                format!(
                    "must be in 1..{} (a scored token needs the logits of the position before it)",
                    self.window
                ),
            ));
        }
        if self.batch_size == 0 {
            return Err(LlmError::invalid("batch_size", 0, "must be at least 1"));
        }
        if self.num_windows == Some(0) {
            return Err(LlmError::invalid("num_windows", 0, "must be at least 1"));
        }
        Ok(())
    }
}

/// What a perplexity evaluation measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Mean over windows of the per-window mean negative log-likelihood (nats).
    pub mean_nll: f64,
    /// Per-window mean negative log-likelihood.
    pub window_nll: Vec<f64>,
    /// Tokens scored in all.
    pub tokens_scored: usize,
}

/// The non-overlapping windows of `tokens` the protocol evaluates.
pub fn eval_windows<'a>(tokens: &'a [u32], cfg: &PerplexityConfig) -> Result<Vec<&'a [u32]>> {
    cfg.validate()?;
    let available = tokens.len() / cfg.window;
    let n = cfg.num_windows.unwrap_or(available);
    if n > available || n == 0 {
        return Err(LlmError::TextTooShort {
            what: format!("{} perplexity windows of {} tokens", n.max(1), cfg.window),
            needed: n.max(1) * cfg.window,
            available: tokens.len(),
        });
    }
    Ok(tokens.chunks_exact(cfg.window).take(n).collect())
}

/// Mean negative log-likelihood of tokens `score_from..` of each window (all windows the same
/// length), predicted from the logits one position earlier. One forward pass for all the
/// windows given; the LM head runs on the scored positions only.
pub fn window_nll(model: &LlamaModel, windows: &[&[u32]], score_from: usize) -> Result<Vec<f64>> {
    let w = windows.first().map_or(0, |r| r.len());
    if score_from == 0 || score_from >= w {
        return Err(LlmError::invalid(
            "score_from",
            score_from,
            format!("must be in 1..{w} for windows of {w} tokens"),
        ));
    }
    let tokens = model.tokens(windows)?;
    let b = windows.len();
    let n = w - score_from;
    let hidden = model.hidden(tokens.clone())?;
    let logits = model.final_norm_and_head(hidden.narrow(1, score_from - 1, n))?;
    let targets = tokens.narrow(1, score_from, n).unsqueeze_dim::<3>(2);
    let logp = log_softmax(logits, 2).gather(2, targets);
    let values = logp
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| LlmError::invalid("logits", "tensor", format!("{e:?}")))?;
    // Means in f64 on the host: 256 values per window, negligible transfer.
    Ok((0..b)
        .map(|i| {
            -values[i * n..(i + 1) * n]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / n as f64
        })
        .collect())
}

/// Perplexity of `tokens` under `cfg`.
pub fn perplexity(
    model: &LlamaModel,
    tokens: &[u32],
    cfg: &PerplexityConfig,
) -> Result<PerplexityReport> {
    let windows = eval_windows(tokens, cfg)?;
    let mut window_nll_all = Vec::with_capacity(windows.len());
    for batch in windows.chunks(cfg.batch_size) {
        window_nll_all.extend(window_nll(model, batch, cfg.score_from)?);
    }
    let mean_nll = window_nll_all.iter().sum::<f64>() / window_nll_all.len() as f64;
    Ok(PerplexityReport {
        perplexity: mean_nll.exp(),
        mean_nll,
        tokens_scored: window_nll_all.len() * (cfg.window - cfg.score_from),
        window_nll: window_nll_all,
    })
}

/// Perplexity of `text`, tokenized as one string without special tokens.
pub fn perplexity_of_text(
    model: &LlamaModel,
    tokenizer: &LlamaTokenizer,
    text: &str,
    cfg: &PerplexityConfig,
) -> Result<PerplexityReport> {
    let tokens = tokenizer.encode(text, false)?;
    perplexity(model, &tokens, cfg)
}

/// How calibration windows are drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationConfig {
    /// Number of windows. Default 16.
    pub num_windows: usize,
    /// Tokens per window. Default 512.
    pub window: usize,
    /// Seed of the sampler. Default 0.
    pub seed: u64,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            num_windows: 16,
            window: 512,
            seed: 0,
        }
    }
}

impl CalibrationConfig {
    /// Sets [`num_windows`](Self::num_windows).
    pub fn with_num_windows(mut self, n: usize) -> Self {
        self.num_windows = n;
        self
    }

    /// Sets [`window`](Self::window).
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window;
        self
    }

    /// Sets [`seed`](Self::seed).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// `cfg.num_windows` windows of `cfg.window` consecutive tokens whose start offsets are drawn
/// uniformly from `0..=len − window` by a SplitMix64 generator seeded with `cfg.seed`
/// (independent draws, as in GPTQ's and Brevitas's calibration loaders): the same seed gives
/// the same windows on every machine.
pub fn calibration_windows(tokens: &[u32], cfg: &CalibrationConfig) -> Result<Vec<Vec<u32>>> {
    if cfg.window == 0 || cfg.num_windows == 0 {
        return Err(LlmError::invalid(
            "calibration",
            format!("{} windows of {}", cfg.num_windows, cfg.window),
            "need at least one window of at least one token",
        ));
    }
    if tokens.len() < cfg.window {
        return Err(LlmError::TextTooShort {
            what: "a calibration window".into(),
            needed: cfg.window,
            available: tokens.len(),
        });
    }
    let starts = (tokens.len() - cfg.window + 1) as u64;
    let mut rng = SplitMix64::new(cfg.seed);
    Ok((0..cfg.num_windows)
        .map(|_| {
            let s = rng.below(starts) as usize;
            tokens[s..s + cfg.window].to_vec()
        })
        .collect())
}

/// [`calibration_windows`] of `text` tokenized as one string without special tokens.
pub fn calibration_windows_from_text(
    tokenizer: &LlamaTokenizer,
    text: &str,
    cfg: &CalibrationConfig,
) -> Result<Vec<Vec<u32>>> {
    calibration_windows(&tokenizer.encode(text, false)?, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_consecutive_and_counted() {
        let tokens: Vec<u32> = (0..1000).collect();
        let cfg = PerplexityConfig::default()
            .with_window(100)
            .with_score_from(50)
            .with_num_windows(None);
        let w = eval_windows(&tokens, &cfg).unwrap();
        assert_eq!(w.len(), 10);
        assert_eq!(w[3][0], 300);
        assert_eq!(w[9][99], 999);
        let too_many = cfg.clone().with_num_windows(Some(11));
        assert!(matches!(
            eval_windows(&tokens, &too_many),
            Err(LlmError::TextTooShort {
                needed: 1100,
                available: 1000,
                ..
            })
        ));
        for bad in [0, 100] {
            assert!(matches!(
                eval_windows(&tokens, &cfg.clone().with_score_from(bad)),
                Err(LlmError::InvalidArgument {
                    field: "score_from",
                    ..
                })
            ));
        }
    }

    #[test]
    fn calibration_windows_depend_on_the_seed_only() {
        let tokens: Vec<u32> = (0..5000).collect();
        let cfg = CalibrationConfig::default()
            .with_window(64)
            .with_num_windows(8);
        let a = calibration_windows(&tokens, &cfg).unwrap();
        let b = calibration_windows(&tokens, &cfg).unwrap();
        let c = calibration_windows(&tokens, &cfg.clone().with_seed(1)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        for w in &a {
            assert_eq!(w.len(), 64);
            // Consecutive tokens of the text.
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
        }
        // Every start is possible, including the last one.
        let exact: Vec<u32> = (0..64).collect();
        assert_eq!(calibration_windows(&exact, &cfg).unwrap()[0], exact);
        assert!(matches!(
            calibration_windows(&exact[..63], &cfg),
            Err(LlmError::TextTooShort { .. })
        ));
    }
}
