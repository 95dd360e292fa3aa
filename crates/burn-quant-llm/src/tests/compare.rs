//! [`compare_with_reference`] on small random models: the model against itself, against a
//! direct computation from the full logits, and against [`perplexity`].

use super::{build, host, random_tensors, rounded, tiny};
use crate::rng::SplitMix64;
use crate::*;

/// 5 windows of 16 tokens with tokens 8..16 scored, two windows per forward pass (the last
/// batch holds one).
fn protocol() -> PerplexityConfig {
    PerplexityConfig::default()
        .with_window(16)
        .with_score_from(8)
        .with_num_windows(Some(5))
        .with_batch_size(2)
}

/// Pseudo-random token ids of the tiny vocabulary (a few more than the windows use).
fn text(len: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.below(61) as u32).collect()
}

/// A random tiny model and its "quantized" copy: every value rounded to a multiple of 1/8.
fn float_and_rounded(seed: u64) -> (LlamaModel, LlamaModel) {
    let hp = tiny(2, true);
    let tensors = random_tensors(&hp, seed);
    let reference = build(&hp, &tensors).unwrap();
    let model = build(&hp, &rounded(&tensors, |v| (v * 8.0).round() / 8.0)).unwrap();
    (model, reference)
}

#[test]
fn a_model_compared_with_itself_has_zero_divergence() {
    let (model, _) = float_and_rounded(21);
    let same = model.clone();
    let tokens = text(90, 1);
    let cfg = protocol();
    let c = compare_with_reference(&model, &same, &tokens, &cfg).unwrap();
    assert_eq!(c.kl_divergence, 0.0);
    assert_eq!(c.kl_divergence_stderr, 0.0);
    assert_eq!(c.window_kl, vec![0.0; 5]);
    assert_eq!(c.top1_agreement, 1.0);
    assert_eq!(c.top1_agreement_stderr, 0.0);
    assert_eq!(c.tokens_scored, 5 * 8);
    assert_eq!(c.model, c.reference);
    assert_eq!(c.model, perplexity(&model, &tokens, &cfg).unwrap());
}

#[test]
fn divergence_and_agreement_equal_a_direct_computation_on_the_full_logits() {
    // Reference: both models' full forward over each window (logits at every position), then
    // log-softmax, KL(P_ref ‖ P), argmax and cross-entropy in f64 on the host, per position
    // 7..15 (predicting tokens 8..16), independently of the batched, narrowed-head path.
    let (model, reference) = float_and_rounded(22);
    let tokens = text(90, 2);
    let cfg = protocol();
    let c = compare_with_reference(&model, &reference, &tokens, &cfg).unwrap();

    let v = tiny(2, true).vocab_size;
    let log_softmax = |z: &[f32]| -> Vec<f64> {
        let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = max + z.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        z.iter().map(|&x| x as f64 - lse).collect()
    };
    let argmax = |z: &[f32]| {
        (0..z.len())
            .reduce(|best, i| if z[i] > z[best] { i } else { best })
            .unwrap()
    };
    let (mut kls, mut same, mut nll, mut ref_nll, mut window_kl) =
        (vec![], 0, vec![], vec![], vec![]);
    for w in tokens.chunks_exact(16).take(5) {
        let q = host(model.forward(model.tokens(&[w]).unwrap()).unwrap());
        let r = host(reference.forward(reference.tokens(&[w]).unwrap()).unwrap());
        let (mut w_kl, mut w_nll, mut w_ref_nll) = (0.0, 0.0, 0.0);
        for pos in 7..15 {
            let (zq, zr) = (&q[pos * v..(pos + 1) * v], &r[pos * v..(pos + 1) * v]);
            let (lq, lr) = (log_softmax(zq), log_softmax(zr));
            let kl: f64 = lr.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
            kls.push(kl);
            w_kl += kl / 8.0;
            same += usize::from(argmax(zq) == argmax(zr));
            let target = w[pos + 1] as usize;
            w_nll -= lq[target] / 8.0;
            w_ref_nll -= lr[target] / 8.0;
        }
        window_kl.push(w_kl);
        nll.push(w_nll);
        ref_nll.push(w_ref_nll);
    }
    let n = kls.len() as f64;
    let mean = kls.iter().sum::<f64>() / n;
    let var = kls.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / n;
    let p = same as f64 / n;
    let ppl = |nll: &[f64]| (nll.iter().sum::<f64>() / nll.len() as f64).exp();
    println!(
        "tiny model, rounded weights vs float: KL {:.5} ± {:.5} (direct {mean:.5}), top-1 {:.3} ({same}/40), \
         perplexity {:.3} vs {:.3}",
        c.kl_divergence,
        c.kl_divergence_stderr,
        c.top1_agreement,
        c.model.perplexity,
        c.reference.perplexity
    );
    // The test is only meaningful when the models differ in some top-1 tokens, not all.
    assert!(0 < same && same < kls.len(), "{same} of {}", kls.len());
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1e-2),
            "{what}: {a} vs {b}"
        );
    };
    close(c.kl_divergence, mean, "mean KL");
    close(
        c.kl_divergence_stderr,
        (var / (n - 1.0)).sqrt(),
        "KL standard error",
    );
    for (i, (a, b)) in c.window_kl.iter().zip(&window_kl).enumerate() {
        close(*a, *b, &format!("window {i} KL"));
    }
    assert_eq!(c.top1_agreement, p);
    assert_eq!(c.top1_agreement_stderr, (p * (1.0 - p) / (n - 1.0)).sqrt());
    close(c.model.perplexity, ppl(&nll), "perplexity");
    close(
        c.reference.perplexity,
        ppl(&ref_nll),
        "reference perplexity",
    );
    assert_eq!(c.tokens_scored, 40);
    assert_eq!(c.window_kl.len(), 5);
}

#[test]
fn divergence_is_positive_and_the_perplexities_are_perplexitys() {
    let (model, reference) = float_and_rounded(23);
    let tokens = text(100, 3);
    for batch_size in [1, 2, 4] {
        let cfg = protocol().with_batch_size(batch_size);
        let c = compare_with_reference(&model, &reference, &tokens, &cfg).unwrap();
        assert!(c.kl_divergence > 0.0, "{}", c.kl_divergence);
        assert!(c.kl_divergence_stderr > 0.0);
        assert!(c.window_kl.iter().all(|&k| k > 0.0), "{:?}", c.window_kl);
        // Exactly the numbers `perplexity` gives, for both models.
        assert_eq!(c.model, perplexity(&model, &tokens, &cfg).unwrap());
        assert_eq!(c.reference, perplexity(&reference, &tokens, &cfg).unwrap());
    }
}

#[test]
fn comparison_errors_are_typed() {
    let (model, reference) = float_and_rounded(24);
    let tokens = text(90, 4);
    // Too few tokens, an invalid protocol, a token outside the vocabulary.
    assert!(matches!(
        compare_with_reference(&model, &reference, &tokens[..79], &protocol()),
        Err(LlmError::TextTooShort {
            needed: 80,
            available: 79,
            ..
        })
    ));
    assert!(matches!(
        compare_with_reference(&model, &reference, &tokens, &protocol().with_score_from(16)),
        Err(LlmError::InvalidArgument {
            field: "score_from",
            ..
        })
    ));
    let mut bad = tokens.clone();
    bad[3] = 61;
    assert!(matches!(
        compare_with_reference(&model, &reference, &bad, &protocol()),
        Err(LlmError::TokenOutOfRange { id: 61, vocab: 61 })
    ));
    // A reference with another vocabulary.
    let mut hp = tiny(2, true);
    hp.vocab_size = 60;
    let other = build(&hp, &random_tensors(&hp, 25)).unwrap();
    assert!(matches!(
        compare_with_reference(
            &model,
            &other,
            &text(90, 5).iter().map(|t| t % 60).collect::<Vec<_>>(),
            &protocol()
        ),
        Err(LlmError::InvalidArgument {
            field: "reference",
            ..
        })
    ));
}
