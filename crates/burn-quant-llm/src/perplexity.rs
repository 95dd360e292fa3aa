//! Perplexity under a fixed windowed protocol, and seeded calibration windows.
//!
//! The default protocol is the one Brevitas's LLM entry point uses, so numbers compare: the
//! evaluation text is tokenized as one string without special tokens, cut into
//! non-overlapping 512-token windows (the first 16), and in each window the tokens
//! `256..512` are scored by mean cross-entropy (token `t` predicted from the logits at
//! position `t − 1`; the first half of the window is context only). The perplexity is
//! `exp` of the mean of the per-window means.
//!
//! [`compare_with_reference`] runs a model and a reference model (e.g. quantized and FP32)
//! over the same windows and reports, besides both perplexities, the mean per-token KL
//! divergence of the model's next-token distribution from the reference's and how often their
//! top-1 tokens agree, each with its standard error (llama.cpp's `--kl-divergence`
//! statistics), computed batch by batch without keeping the logits.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

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
    let scored = scored_logits(model, windows, score_from)?;
    mean_nll(scored.logits, scored.targets)
}

/// The logits that predict the scored tokens of a batch of windows.
struct ScoredLogits {
    /// `[batch, window − score_from, vocab]`: position `score_from − 1 + j` of each window.
    logits: Tensor<3>,
    /// `[batch, window − score_from, 1]`: the tokens `score_from + j` they predict.
    targets: Tensor<3, Int>,
}

/// One forward pass of `model` over `windows`, with the LM head on the scored positions only.
fn scored_logits(
    model: &LlamaModel,
    windows: &[&[u32]],
    score_from: usize,
) -> Result<ScoredLogits> {
    let w = windows.first().map_or(0, |r| r.len());
    if score_from == 0 || score_from >= w {
        return Err(LlmError::invalid(
            "score_from",
            score_from,
            format!("must be in 1..{w} for windows of {w} tokens"),
        ));
    }
    let tokens = model.tokens(windows)?;
    let n = w - score_from;
    let hidden = model.hidden(tokens.clone())?;
    let logits = model.final_norm_and_head(hidden.narrow(1, score_from - 1, n))?;
    let targets = tokens.narrow(1, score_from, n).unsqueeze_dim::<3>(2);
    Ok(ScoredLogits { logits, targets })
}

/// Per-row mean negative log-likelihood (nats) of `targets` under `logits` (both as in
/// [`ScoredLogits`]).
fn mean_nll(logits: Tensor<3>, targets: Tensor<3, Int>) -> Result<Vec<f64>> {
    let [b, n, _] = logits.dims();
    let logp = log_softmax(logits, 2).gather(2, targets);
    let values = host_f32(logp)?;
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

/// The values of an f32 tensor, on the host.
fn host_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| LlmError::invalid("logits", "tensor", format!("{e:?}")))
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
    Ok(report(window_nll_all, cfg))
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

/// How a model's next-token distributions differ from a reference model's (e.g. a quantized
/// model from its FP32 original) on the scored tokens of the perplexity protocol, with
/// llama.cpp's `--kl-divergence` definitions.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceComparison {
    /// The evaluated model under the protocol: equal to what [`perplexity`] reports for it.
    pub model: PerplexityReport,
    /// The reference model under the same protocol: equal to what [`perplexity`] reports for
    /// it.
    pub reference: PerplexityReport,
    /// Mean over scored tokens of `KL(P_ref ‖ P) = Σ_v p_ref(v) · (ln p_ref(v) − ln p(v))`,
    /// the divergence of the model's next-token distribution `P` from the reference's
    /// `P_ref` (nats per token; 0 for identical logits).
    pub kl_divergence: f64,
    /// Standard error of [`kl_divergence`](Self::kl_divergence): `sqrt(var / (n − 1))` of the
    /// `n` per-token values, `var` their population variance (nats; NaN when `n = 1`).
    pub kl_divergence_stderr: f64,
    /// Per-window mean KL divergence (nats per token), in window order.
    pub window_kl: Vec<f64>,
    /// Fraction of scored tokens (in `[0, 1]`) at which the model's most likely next token
    /// (first maximal logit) is the reference's.
    pub top1_agreement: f64,
    /// Standard error of [`top1_agreement`](Self::top1_agreement): `sqrt(p (1 − p) / (n − 1))`
    /// (a fraction; NaN when `n = 1`).
    pub top1_agreement_stderr: f64,
    /// Tokens scored in all (`n`).
    pub tokens_scored: usize,
}

/// Runs `model` and `reference` window by window over `tokens` under `cfg` (the windows and
/// scored positions of [`perplexity`]) and compares their next-token distributions at every
/// scored position: mean KL divergence of `model` from `reference`, top-1 agreement, and both
/// perplexities. Memory holds the scored logits of one batch of windows of each model
/// (`batch_size · (window − score_from) · vocab` floats per model, and a host copy), never
/// all windows'. Costs two perplexity evaluations: the host work is a few percent of it.
///
/// The KL divergence and the argmaxes are computed on the host from the f32 logits, in f64
/// and with no cut-off (llama.cpp skips reference probabilities below `e^-16` and stores
/// them as 16-bit log-probabilities).
pub fn compare_with_reference(
    model: &LlamaModel,
    reference: &LlamaModel,
    tokens: &[u32],
    cfg: &PerplexityConfig,
) -> Result<ReferenceComparison> {
    let (vocab, ref_vocab) = (model.hparams().vocab_size, reference.hparams().vocab_size);
    if vocab != ref_vocab {
        return Err(LlmError::invalid(
            "reference",
            format!("a model with a vocabulary of {ref_vocab}"),
            format!("the compared model's vocabulary has {vocab} tokens; they must be the same"),
        ));
    }
    let windows = eval_windows(tokens, cfg)?;
    let mut nll = Vec::with_capacity(windows.len());
    let mut ref_nll = Vec::with_capacity(windows.len());
    let mut stats = DivergenceStats::default();
    let mut window_kl = Vec::with_capacity(windows.len());
    for batch in windows.chunks(cfg.batch_size) {
        // The evaluated model exactly as `window_nll` runs it, so its perplexity is the same.
        let q = scored_logits(model, batch, cfg.score_from)?;
        nll.extend(mean_nll(q.logits.clone(), q.targets)?);
        let r = scored_logits(reference, batch, cfg.score_from)?;
        ref_nll.extend(mean_nll(r.logits.clone(), r.targets)?);
        let q = host_f32(q.logits)?;
        let r = host_f32(r.logits)?;
        let per_token = token_divergences(&q, &r, vocab);
        for window in per_token.chunks(cfg.window - cfg.score_from) {
            let sum: f64 = window.iter().map(|d| d.kl).sum();
            window_kl.push(sum / window.len() as f64);
            window.iter().for_each(|d| stats.push(d));
        }
    }
    let (kl_divergence, kl_divergence_stderr) = stats.kl();
    let (top1_agreement, top1_agreement_stderr) = stats.top1();
    Ok(ReferenceComparison {
        model: report(nll, cfg),
        reference: report(ref_nll, cfg),
        kl_divergence,
        kl_divergence_stderr,
        window_kl,
        top1_agreement,
        top1_agreement_stderr,
        tokens_scored: stats.count,
    })
}

/// [`compare_with_reference`] on `text`, tokenized as one string without special tokens.
pub fn compare_with_reference_of_text(
    model: &LlamaModel,
    reference: &LlamaModel,
    tokenizer: &LlamaTokenizer,
    text: &str,
    cfg: &PerplexityConfig,
) -> Result<ReferenceComparison> {
    let tokens = tokenizer.encode(text, false)?;
    compare_with_reference(model, reference, &tokens, cfg)
}

/// The comparison at one scored position.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TokenDivergence {
    /// `KL(P_ref ‖ P)`, nats.
    kl: f64,
    /// Whether the two argmaxes are the same token.
    same_top1: bool,
}

/// Running sums over scored tokens (llama.cpp's accumulators).
#[derive(Debug, Default)]
struct DivergenceStats {
    sum_kl: f64,
    sum_kl2: f64,
    same_top1: usize,
    count: usize,
}

impl DivergenceStats {
    fn push(&mut self, d: &TokenDivergence) {
        self.sum_kl += d.kl;
        self.sum_kl2 += d.kl * d.kl;
        self.same_top1 += usize::from(d.same_top1);
        self.count += 1;
    }

    /// Mean KL and its standard error `sqrt(var / (n − 1))`.
    fn kl(&self) -> (f64, f64) {
        let n = self.count as f64;
        let mean = self.sum_kl / n;
        // Population variance from the sums; rounding can leave it slightly negative.
        let var = (self.sum_kl2 / n - mean * mean).max(0.0);
        (mean, (var / (n - 1.0)).sqrt())
    }

    /// Top-1 agreement and its binomial standard error `sqrt(p (1 − p) / (n − 1))`.
    fn top1(&self) -> (f64, f64) {
        let n = self.count as f64;
        let p = self.same_top1 as f64 / n;
        (p, (p * (1.0 - p) / (n - 1.0)).sqrt())
    }
}

fn report(window_nll: Vec<f64>, cfg: &PerplexityConfig) -> PerplexityReport {
    let mean_nll = window_nll.iter().sum::<f64>() / window_nll.len() as f64;
    PerplexityReport {
        perplexity: mean_nll.exp(),
        mean_nll,
        tokens_scored: window_nll.len() * (cfg.window - cfg.score_from),
        window_nll,
    }
}

/// [`token_divergence`] of every row of `vocab` logits, rows in parallel on rayon's pool (one
/// scratch row per task), in row order.
fn token_divergences(logits: &[f32], reference: &[f32], vocab: usize) -> Vec<TokenDivergence> {
    use rayon::prelude::*;
    logits
        .par_chunks_exact(vocab)
        .zip(reference.par_chunks_exact(vocab))
        .map_init(
            || vec![0f64; vocab],
            |scratch, (q, r)| token_divergence(q, r, scratch),
        )
        .collect()
}

/// `KL(P_ref ‖ P)` and argmax agreement at one position from the two logit rows (`scratch`:
/// one row of working space), in f64. With `ln p(v) = z(v) − Z`,
/// `Z = max z + ln Σ exp(z − max z)`, the log-ratio is `(z_ref(v) − z(v)) − (Z_ref − Z)`,
/// which is exactly 0 for equal rows.
fn token_divergence(logits: &[f32], reference: &[f32], scratch: &mut [f64]) -> TokenDivergence {
    let (top, max) = first_max(logits);
    let (ref_top, ref_max) = first_max(reference);
    let (max, ref_max) = (max as f64, ref_max as f64);
    let mut sum = 0f64;
    for &z in logits {
        sum += (z as f64 - max).exp();
    }
    let mut ref_sum = 0f64;
    for (e, &z) in scratch.iter_mut().zip(reference) {
        *e = (z as f64 - ref_max).exp();
        ref_sum += *e;
    }
    let shift = (ref_max + ref_sum.ln()) - (max + sum.ln());
    let mut kl = 0f64;
    for ((&e, &zr), &z) in scratch.iter().zip(reference).zip(logits) {
        kl += e * ((zr as f64 - z as f64) - shift);
    }
    TokenDivergence {
        kl: kl / ref_sum,
        same_top1: top == ref_top,
    }
}

/// Index and value of the first maximal element (`(0, −∞)` for an empty row).
fn first_max(row: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best
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

    /// `KL(P_ref ‖ P)` straight from the definition, in f64.
    fn kl_by_definition(logits: &[f32], reference: &[f32]) -> f64 {
        let log_softmax = |z: &[f32]| -> Vec<f64> {
            let z: Vec<f64> = z.iter().map(|&v| v as f64).collect();
            let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            z.iter().map(|v| v - lse).collect()
        };
        let (lq, lr) = (log_softmax(logits), log_softmax(reference));
        lr.iter().zip(&lq).map(|(r, q)| r.exp() * (r - q)).sum()
    }

    #[test]
    fn token_divergence_follows_the_definition() {
        let mut rng = SplitMix64::new(3);
        let mut scratch = vec![0f64; 50];
        for case in 0..20 {
            let r: Vec<f32> = (0..50).map(|_| 6.0 * rng.unit_f32() - 3.0).collect();
            let q: Vec<f32> = r.iter().map(|v| v + 0.5 * rng.unit_f32() - 0.25).collect();
            let d = token_divergence(&q, &r, &mut scratch);
            let want = kl_by_definition(&q, &r);
            assert!(
                want > 0.0 && (d.kl - want).abs() < 1e-12 * want,
                "case {case}: {d:?} vs {want}"
            );
            assert_eq!(d.same_top1, first_max(&q).0 == first_max(&r).0);
            // Equal rows: exactly 0, same top token.
            let same = token_divergence(&r, &r, &mut scratch);
            assert_eq!(
                same,
                TokenDivergence {
                    kl: 0.0,
                    same_top1: true
                }
            );
        }
        // A shift of all logits changes nothing; the direction matters (KL is asymmetric).
        let r = [2.0f32, 0.0, -1.0, 0.5];
        let q = [0.0f32, 1.0, -1.0, 0.5];
        let shifted = q.map(|v| v + 100.0);
        let a = token_divergence(&q, &r, &mut scratch);
        let b = token_divergence(&shifted, &r, &mut scratch);
        assert!((a.kl - b.kl).abs() < 1e-12, "{a:?} vs {b:?}");
        assert!((a.kl - kl_by_definition(&q, &r)).abs() < 1e-12);
        let swapped = token_divergence(&r, &q, &mut scratch);
        assert!((swapped.kl - kl_by_definition(&r, &q)).abs() < 1e-12);
        assert!((swapped.kl - a.kl).abs() > 1e-3);
        assert!(!a.same_top1);
        // Ties go to the first maximum, in both rows.
        assert_eq!(first_max(&[1.0, 3.0, 3.0]), (1, 3.0));
        // Rows split over threads come back in order.
        let rows: Vec<f32> = (0..7 * 50).map(|_| rng.unit_f32()).collect();
        let refs: Vec<f32> = (0..7 * 50).map(|_| rng.unit_f32()).collect();
        let all = token_divergences(&rows, &refs, 50);
        let one_by_one: Vec<_> = rows
            .chunks(50)
            .zip(refs.chunks(50))
            .map(|(q, r)| token_divergence(q, r, &mut scratch))
            .collect();
        assert_eq!(all, one_by_one);
    }

    #[test]
    fn divergence_statistics_are_llama_cpp_s() {
        // KL values 0, 1, 2, 3 with the top token agreeing at three of the four tokens:
        // mean 1.5, population variance 1.25, standard error sqrt(1.25 / 3); p = 0.75 with
        // standard error sqrt(0.75 · 0.25 / 3).
        let mut stats = DivergenceStats::default();
        for (kl, same_top1) in [(0.0, true), (1.0, true), (2.0, false), (3.0, true)] {
            stats.push(&TokenDivergence { kl, same_top1 });
        }
        let (mean, se) = stats.kl();
        assert_eq!(mean, 1.5);
        assert!((se - (1.25f64 / 3.0).sqrt()).abs() < 1e-15);
        let (p, se) = stats.top1();
        assert_eq!(p, 0.75);
        assert!((se - (0.75f64 * 0.25 / 3.0).sqrt()).abs() < 1e-15);
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
