use super::*;
use crate::rtn::Rtn;
use crate::testutil::{correlated, gaussian, mixed, output_error, perturbed, stats, weights};
use burn::tensor::{Device, Tensor, TensorData};

/// `‖XW − X̃Ŵ‖²/N` from the activations, in f64.
fn activation_loss(x: &[f32], xq: &[f32], w: &[f32], w_hat: &[f32], n: usize, m: usize) -> f64 {
    let t = x.len() / n;
    let mut sum = 0f64;
    for r in 0..t {
        for c in 0..m {
            let (mut a, mut b) = (0f64, 0f64);
            for j in 0..n {
                a += x[r * n + j] as f64 * w[j * m + c] as f64;
                b += xq[r * n + j] as f64 * w_hat[j * m + c] as f64;
            }
            sum += (a - b) * (a - b);
        }
    }
    sum / t as f64
}

/// The rounding problem of `w` under `spec` with the given statistics (no dead inputs).
fn rounder(w: &[f32], s: &LayerStats, spec: &QuantSpec, n: usize, m: usize) -> Rounder {
    let (_, params, _) = rtn_host("test", w, n, m, spec).unwrap();
    let g = s.cross();
    let sigma = s.float_gram();
    Rounder::new(
        w,
        s.hessian(),
        g.as_deref(),
        sigma.as_deref(),
        &params,
        spec,
        n,
        m,
    )
    .unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs()
}

/// Oracle (1): the loss expanded through `H`, `G` and `Σ` equals `‖XW − X̃Ŵ‖²/N` computed
/// from the activations, for the float target (paired statistics) and, without `G`, for the
/// quantized-input target `‖X̃(W − Ŵ)‖²/N` (`G = Σ = H`); at RTN's Ŵ and at a soft Ŵ(V).
#[test]
fn analytic_loss_equals_the_activation_loss() {
    let (n, m, t) = (24, 10, 300);
    let x = correlated(t, n, 1);
    let xq = perturbed(&x, n, 0.2, 2);
    let w = weights(n, m, 3);
    let spec = QuantSpec::int4_weight_per_group(8).with_bits(3);
    let mut paired = LayerStats::new(n, CalibInputs::FloatAndQuantized).tracking_output_error();
    paired.observe_host(&x, Some(&xq)).unwrap();
    let single = stats(&xq, None, n, false);
    let rtn = Rtn.quantize_host(&w, [n, m], &single, &spec).unwrap().w_hat;
    for (s, xf) in [(&paired, &x), (&single, &xq)] {
        let r = rounder(&w, s, &spec, n, m);
        let v: Vec<f64> = gaussian(n * m, 4).iter().map(|&g| g as f64).collect();
        let tol = 1e-6 * activation_loss(xf, xf, &w, &vec![0.0; n * m], n, m);
        let f32s = |v: Vec<f64>| v.iter().map(|&a| a as f32).collect::<Vec<_>>();
        for w_hat in [
            rtn.clone(),
            f32s(r.soft_weight(&v)),
            f32s(r.soft_weight(&r.initial_v())),
        ] {
            let want = activation_loss(xf, &xq, &w, &w_hat, n, m);
            let got = r.reconstruction_f32(&w_hat);
            assert!(
                (got - want).abs() <= 1e-4 * want + tol,
                "{got} vs {want} (‖XW‖²/N = {})",
                tol * 1e6
            );
        }
        // The initial soft weight reproduces W (no element of a symmetric grid is clamped).
        let w0 = r.soft_weight(&r.initial_v());
        assert!(
            w0.iter()
                .zip(&w)
                .all(|(&a, &b)| (a - b as f64).abs() < 1e-6)
        );
    }
}

/// Oracle (2): the analytic gradient `∂/∂V` (reconstruction through `2(HŴ − GW)·s` and the
/// regulariser, both through `dh/dV`) matches central finite differences of the f64
/// objective, with and without the regulariser and for both statistics kinds.
#[test]
fn gradient_matches_finite_differences() {
    let (n, m, t) = (16, 6, 200);
    let x = correlated(t, n, 5);
    let xq = perturbed(&x, n, 0.3, 6);
    let w = weights(n, m, 7);
    let spec = QuantSpec::int4_weight_per_group(8)
        .with_bits(3)
        .asymmetric();
    // V in [-1.5, 1.5]: h away from the clamps, so every element is differentiable.
    let v: Vec<f64> = gaussian(n * m, 8)
        .iter()
        .map(|&g| (g as f64).clamp(-1.5, 1.5))
        .collect();
    for s in [stats(&x, Some(&xq), n, true), stats(&xq, None, n, false)] {
        let r = rounder(&w, &s, &spec, n, m);
        for (lambda, beta) in [(0.0, 20.0), (0.05, 4.0), (0.01, 2.0)] {
            let mut grad = vec![0f64; n * m];
            let (mut a, mut b) = (vec![0f32; n * m], vec![0f32; n * m]);
            r.gradient(&v, lambda, beta, &mut grad, &mut a, &mut b);
            let scale = grad.iter().fold(0f64, |acc, g| acc.max(g.abs()));
            assert!(scale > 0.0);
            let eps = 1e-5;
            for i in 0..n * m {
                let (mut up, mut down) = (v.clone(), v.clone());
                up[i] += eps;
                down[i] -= eps;
                let fd = (r.objective(&up, lambda, beta) - r.objective(&down, lambda, beta))
                    / (2.0 * eps);
                assert!(
                    (fd - grad[i]).abs() <= 1e-3 * scale,
                    "element {i}, λ = {lambda}: {fd} vs {}",
                    grad[i]
                );
            }
        }
    }
}

/// Oracle (3): with enough iterations (the paper's 10 000) the annealed regulariser drives
/// every `h(V)` to 0 or 1 (under 1 % with `|h − ½| < 0.4`), so hardening changes the
/// reconstruction loss by under 2 %.
#[test]
fn regulariser_decides_the_rounding_and_hardening_costs_little() {
    let (n, m, t) = (64, 32, 512);
    // Correlated inputs without outlier channels, scaled so that λ = 0.01 can win against the
    // reconstruction curvature `H_jj·s²` (with ×8 outlier channels it cannot: their rows stay
    // soft, and hardening them costs much of the gain; λ is relative to the loss scale).
    let x: Vec<f32> = mixed(t, n, 11).iter().map(|v| v / 80.0).collect();
    let w = weights(n, m, 12);
    let s = stats(&x, None, n, false);
    let spec = QuantSpec::int4_weight_per_group(32);
    let r = rounder(&w, &s, &spec, n, m);
    let cfg = Adaround::default().with_iterations(10_000);
    let v = r.optimise(&cfg);
    let undecided = r.undecided(&v);
    let soft = r.reconstruction(&r.soft_weight(&v));
    let (_, hard_w) = r.harden(&v, &spec.format);
    let hard = r.reconstruction_f32(&hard_w);
    let rtn = Rtn.quantize_host(&w, [n, m], &s, &spec).unwrap();
    let rtn_loss = r.reconstruction_f32(&rtn.w_hat);
    eprintln!(
        "undecided {:.4}, soft {soft:.6e}, hard {hard:.6e}, rtn {rtn_loss:.6e}",
        undecided
    );
    assert!(undecided < 0.01, "{undecided}");
    assert!(close(hard, soft, 0.02), "hard {hard} vs soft {soft}");
    assert!(hard < 0.6 * rtn_loss, "{hard} vs RTN {rtn_loss}");
    // The initial state is fully undecided by comparison.
    assert!(r.undecided(&r.initial_v()) > 0.5);
}

/// Oracle (4): hardened codes are RTN's or one step away (`|ŵ − w| < s`), and the layer output
/// error is below RTN's on correlated inputs, 3-bit per group of 32, symmetric and asymmetric,
/// with the default 1000 iterations; with the float target on paired statistics the
/// mismatched error `‖XW − X̃Ŵ‖` is below RTN's too.
#[test]
fn beats_rtn_within_one_step_on_correlated_inputs() {
    let (n, m, t) = (128, 64, 1024);
    let x = correlated(t, n, 21);
    let w = weights(n, m, 22);
    let single = stats(&x, None, n, false);
    for spec in [
        QuantSpec::int4_weight_per_group(32).with_bits(3),
        QuantSpec::int4_weight_per_group(32)
            .with_bits(3)
            .asymmetric(),
    ] {
        let rtn = Rtn.quantize_host(&w, [n, m], &single, &spec).unwrap();
        let q = Adaround::default()
            .quantize_host(&w, [n, m], &single, &spec)
            .unwrap();
        assert_eq!(q.params, rtn.params, "{spec}");
        assert_eq!(q.report.algorithm, "adaround");
        let r = rounder(&w, &single, &spec, n, m);
        for (i, (&wi, &si)) in w.iter().zip(&r.scale).enumerate() {
            assert!((q.codes[i] - rtn.codes[i]).abs() <= 1, "{spec} element {i}");
            let wq = q.w_hat[i];
            assert!(
                (wq - wi).abs() < si,
                "{spec} element {i}: |{wq} − {wi}| ≥ {si}"
            );
        }
        let changed = q
            .codes
            .iter()
            .zip(&rtn.codes)
            .filter(|(a, b)| a != b)
            .count();
        let e_rtn = output_error(&x, &x, &w, &rtn.w_hat, n, m);
        let e_ada = output_error(&x, &x, &w, &q.w_hat, n, m);
        eprintln!(
            "{spec}: ‖X(W − Ŵ)‖/‖XW‖ RTN {e_rtn:.5}, AdaRound {e_ada:.5}; {changed} of {} codes \
             changed, {:.3} s",
            n * m,
            q.report.seconds
        );
        // The ×8 outlier channels of `correlated` dominate the loss and λ = 0.01 cannot
        // harden their rows well (see the test above): a small but strict gain.
        assert!(e_ada < e_rtn, "{spec}: {e_ada} vs RTN {e_rtn}");
    }
    // Without outlier channels the gain is large.
    let xm: Vec<f32> = mixed(t, n, 24).iter().map(|v| v / 100.0).collect();
    let sm = stats(&xm, None, n, false);
    let spec = QuantSpec::int4_weight_per_group(32).with_bits(3);
    let rtn = Rtn.quantize_host(&w, [n, m], &sm, &spec).unwrap();
    let q = Adaround::default()
        .quantize_host(&w, [n, m], &sm, &spec)
        .unwrap();
    let e_rtn = output_error(&xm, &xm, &w, &rtn.w_hat, n, m);
    let e_ada = output_error(&xm, &xm, &w, &q.w_hat, n, m);
    eprintln!("mixed inputs, {spec}: RTN {e_rtn:.5}, AdaRound {e_ada:.5}");
    assert!(e_ada < 0.85 * e_rtn, "{e_ada} vs RTN {e_rtn}");
    // Float target: X̃ from a perturbed upstream.
    let xq = perturbed(&x, n, 0.1, 23);
    let paired = stats(&x, Some(&xq), n, true);
    let spec = QuantSpec::int4_weight_per_group(32).with_bits(3);
    let rtn = Rtn.quantize_host(&w, [n, m], &paired, &spec).unwrap();
    let ada = Adaround::default().with_float_target(true);
    assert_eq!(ada.inputs(), CalibInputs::FloatAndQuantized);
    let q = ada.quantize_host(&w, [n, m], &paired, &spec).unwrap();
    let e_rtn = output_error(&x, &xq, &w, &rtn.w_hat, n, m);
    let e_ada = output_error(&x, &xq, &w, &q.w_hat, n, m);
    eprintln!("float target: ‖XW − X̃Ŵ‖/‖XW‖ RTN {e_rtn:.5}, AdaRound {e_ada:.5}");
    assert!(e_ada < e_rtn, "{e_ada} vs RTN {e_rtn}");
}

/// Oracle (5): with zero iterations the result is the initial `h = g − ⌊g⌋` hardened by
/// `h > ½`: round half down, i.e. RTN's codes (round half to even) everywhere but at exact
/// ties on an odd code; parameters are RTN's for every supported spec (per group, asymmetric,
/// per output channel, per tensor, k-quant, MX-int, ternary), and `dequantize()` of the
/// returned tensor is the returned Ŵ bit for bit.
#[test]
fn zero_iterations_is_rtn_except_at_ties() {
    let device = Device::flex();
    let (n, m, t) = (256, 24, 64);
    let x = correlated(t, n, 31);
    let mut w = weights(n, m, 32);
    // Exact ties under the per-tensor int4 scale s = absmax/7 = 0.5: g = 2.5 and 3.5.
    w[0] = 3.5;
    w[1] = 1.25;
    w[2] = 1.75;
    let s = stats(&x, None, n, false);
    let ada = Adaround::default().with_iterations(0);
    for spec in [
        QuantSpec::int4_weight_per_group(32),
        QuantSpec::int4_weight_per_group(32)
            .with_bits(3)
            .asymmetric(),
        QuantSpec::int8_weight_per_channel().with_bits(4),
        QuantSpec::int8_weight_per_tensor().with_bits(4),
        QuantSpec::gguf_q4_k(),
        QuantSpec::mxint8(),
        QuantSpec::ternary_weight(),
    ] {
        let rtn = Rtn.quantize_host(&w, [n, m], &s, &spec).unwrap();
        let q = ada.quantize_host(&w, [n, m], &s, &spec).unwrap();
        assert_eq!(q.params, rtn.params, "{spec}");
        let r = rounder(&w, &s, &spec, n, m);
        let mut ties = 0;
        for i in 0..n * m {
            if r.frac[i] == 0.5 {
                ties += 1;
                assert_eq!(q.codes[i] as f32, r.base[i].clamp(r.lo, r.hi), "{spec}");
            } else {
                assert_eq!(q.codes[i], rtn.codes[i], "{spec} element {i}");
            }
        }
        if spec == QuantSpec::int8_weight_per_tensor().with_bits(4) {
            assert!(ties >= 2, "the planted ties");
            assert_ne!(q.codes, rtn.codes, "3.5 rounds down to 3, RTN to even 4");
        }
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [n, m]), &device);
        let qt = ada.quantize(&wt, &s, &spec).unwrap();
        let back: Vec<f32> = qt.tensor.dequantize().try_into_vec_as::<f32>().unwrap();
        assert!(
            back.iter()
                .zip(&q.w_hat)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{spec}"
        );
    }
    for spec in [
        QuantSpec::mxfp4(),
        QuantSpec::nvfp4(),
        QuantSpec::fp8_e4m3_weight_per_tensor(),
        QuantSpec::binary_weight(),
    ] {
        let e = ada.quantize_host(&w, [n, m], &s, &spec).unwrap_err();
        assert!(
            matches!(
                e,
                PtqError::UnsupportedSpec {
                    algorithm: "adaround",
                    ..
                }
            ),
            "{spec}: {e}"
        );
    }
}

/// Oracle (6): bad configurations and unusable statistics are typed errors naming the field;
/// results are deterministic; the serde form takes defaults for missing fields.
#[test]
fn bad_configs_are_errors_and_results_are_deterministic() {
    let field = |a: Adaround| match a.validate() {
        Err(PtqError::InvalidConfig { field, .. }) => field,
        other => panic!("{a:?}: {other:?}"),
    };
    let d = Adaround::default();
    d.validate().unwrap();
    assert_eq!(field(d.with_learning_rate(0.0)), "learning_rate");
    assert_eq!(field(d.with_learning_rate(f64::NAN)), "learning_rate");
    assert_eq!(field(d.with_lambda(-0.01)), "lambda");
    assert_eq!(field(d.with_lambda(f64::INFINITY)), "lambda");
    assert_eq!(field(d.with_beta(20.0, 0.5)), "beta_end");
    assert_eq!(field(d.with_beta(2.0, 3.0)), "beta_start");
    assert_eq!(field(d.with_beta(f64::NAN, 2.0)), "beta_start");
    assert_eq!(field(d.with_warmup(1.0)), "warmup");
    assert_eq!(field(d.with_warmup(-0.1)), "warmup");
    let (n, m, t) = (32, 8, 128);
    let x = correlated(t, n, 41);
    let w = weights(n, m, 42);
    let s = stats(&x, None, n, false);
    let spec = QuantSpec::int4_weight_per_group(16);
    let e = d
        .with_lambda(-1.0)
        .quantize_host(&w, [n, m], &s, &spec)
        .unwrap_err();
    assert!(
        matches!(
            e,
            PtqError::InvalidConfig {
                field: "lambda",
                ..
            }
        ),
        "{e}"
    );
    // The float target needs G.
    let e = d
        .with_float_target(true)
        .quantize_host(&w, [n, m], &s, &spec)
        .unwrap_err();
    assert!(matches!(e, PtqError::MissingStatistics { .. }), "{e}");
    let empty = d.new_stats(n);
    assert!(matches!(
        d.quantize_host(&w, [n, m], &empty, &spec),
        Err(PtqError::EmptyCalibration { .. })
    ));
    assert!(matches!(
        d.quantize_host(&w[..n * m - 1], [n, m], &s, &spec),
        Err(PtqError::ShapeMismatch { .. })
    ));
    let a = d
        .with_iterations(200)
        .quantize_host(&w, [n, m], &s, &spec)
        .unwrap();
    let b = d
        .with_iterations(200)
        .quantize_host(&w, [n, m], &s, &spec)
        .unwrap();
    assert_eq!(a.codes, b.codes);
    assert!(
        a.w_hat
            .iter()
            .zip(&b.w_hat)
            .all(|(p, q)| p.to_bits() == q.to_bits())
    );
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<Adaround>(&json).unwrap(), d);
    let a: Adaround = serde_json::from_str(r#"{"iterations": 10000}"#).unwrap();
    assert_eq!(a, d.with_iterations(10_000));
}

/// Time per Adam iteration on a 576 × 1536 layer (SmolLM2-135M's MLP up-projection), int4
/// per group of 32. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn time_per_iteration_576x1536() {
    let (n, m, t) = (576, 1536, 1024);
    let x = gaussian(t * n, 51);
    let w = weights(n, m, 52);
    let s = stats(&x, None, n, false);
    let spec = QuantSpec::int4_weight_per_group(32);
    let iters = 50;
    let q = Adaround::default()
        .with_iterations(iters)
        .quantize_host(&w, [n, m], &s, &spec)
        .unwrap();
    let zero = Adaround::default()
        .with_iterations(0)
        .quantize_host(&w, [n, m], &s, &spec)
        .unwrap();
    let per = (q.report.seconds - zero.report.seconds) / iters as f64;
    eprintln!(
        "576×1536: {:.2} ms per iteration ({iters} iterations {:.2} s, setup {:.2} s, {} threads)",
        per * 1e3,
        q.report.seconds,
        zero.report.seconds,
        rayon::current_num_threads()
    );
}
