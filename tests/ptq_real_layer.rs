//! Stage-2 algorithms (burn-quant-ptq) on real layers of SmolLM2-135M-Instruct with real
//! calibration inputs: 16 windows of 512 tokens from Emma (burn-quant-llm's seeded sampler)
//! run through the model, capturing the inputs of block 3's linear layers in the float model
//! (X) and in a model whose blocks 0–2 are already quantized (X̃: RTN, symmetric int4 in
//! groups of 64 inputs, the "already-quantized predecessors" of a sequential pipeline).
//!
//! Every error is computed from the captured activations in f64, independently of the
//! statistics the algorithms use: `‖X(W − Ŵ)‖/‖XW‖` on the quantized-path input for GPTQ's own
//! target, `‖XW − X̃Ŵ‖/‖XW‖` (the float target) for every algorithm.

use std::collections::HashMap;
use std::sync::OnceLock;

use burn::tensor::{Device, Tensor, TensorData};
use burn_quant::core::QuantSpec;
use burn_quant::core::ScaleStat;
use burn_quant_llm::{
    CALIBRATION_TEXT, CalibrationConfig, InputSite, LinearSlot, LlamaModel,
    calibration_windows_from_text, load_with_tokenizer,
};
use burn_quant_ptq::linalg::{View, ViewMut, matmul};
use burn_quant_ptq::{
    Algorithm, CalibInputs, Gpfq, Gptaq, Gptq, HostQuantized, LayerStats, Qronos, Rtn,
    Stage2Algorithm,
};

const BLOCK: usize = 3;
const WINDOWS: usize = 16;

/// Captured inputs of block [`BLOCK`]'s four input sites and its float weights.
struct Captured {
    /// Per site: (float-path X, quantized-path X̃), row-major `[tokens, d_in]`.
    inputs: HashMap<InputSite, (Vec<f32>, Vec<f32>)>,
    /// Per slot: Burn-layout `[d_in, d_out]` weight.
    weights: HashMap<LinearSlot, (Vec<f32>, [usize; 2])>,
}

fn read(t: &Tensor<2>) -> Vec<f32> {
    t.clone().try_into_vec_as::<f32>().expect("f32 tensor")
}

/// Runs `windows` through blocks `0..=BLOCK` of `model`, collecting block BLOCK's inputs.
fn capture_inputs(model: &LlamaModel, windows: &[Vec<u32>]) -> HashMap<InputSite, Vec<f32>> {
    let mut out: HashMap<InputSite, Vec<f32>> = HashMap::new();
    let seq = windows[0].len();
    let rope = model.rope(seq).expect("rope");
    for chunk in windows.chunks(4) {
        let rows: Vec<&[u32]> = chunk.iter().map(|w| w.as_slice()).collect();
        let mut x = model
            .embed(model.tokens(&rows).expect("tokens"))
            .expect("embed");
        for b in 0..=BLOCK {
            let block = model.block(b).expect("block");
            if b < BLOCK {
                x = block.forward(x, &rope, None).expect("forward");
            } else {
                let mut see = |site: InputSite, t: &Tensor<3>| {
                    let [bs, s, d] = t.dims();
                    out.entry(site)
                        .or_default()
                        .extend(read(&t.clone().reshape([bs * s, d])));
                };
                block
                    .forward(x.clone(), &rope, Some(&mut see))
                    .expect("forward");
            }
        }
    }
    out
}

fn captured() -> Option<&'static Captured> {
    static CAPTURED: OnceLock<Option<Captured>> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let gguf =
                support::shared_data("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")?;
            let text = std::fs::read_to_string(support::shared_data(CALIBRATION_TEXT)?).ok()?;
            let device = Device::flex();
            let m = load_with_tokenizer(&gguf, &device).expect("model loads");
            let windows = calibration_windows_from_text(
                &m.tokenizer,
                &text,
                &CalibrationConfig::default().with_num_windows(WINDOWS),
            )
            .expect("windows");
            let float = capture_inputs(&m.model, &windows);
            // Blocks 0..BLOCK quantized with RTN int4 g64.
            let mut quant = m.model.clone();
            let spec = QuantSpec::int4_weight_per_group(64);
            for b in 0..BLOCK {
                let block = quant.block_mut(b).expect("block");
                for slot in LinearSlot::ALL {
                    let w = block.linear(slot).weight.val();
                    let w_hat = burn_quant::core::quantize(w, &spec)
                        .expect("rtn")
                        .dequantize();
                    block.set_linear_weight(slot, w_hat).expect("same shape");
                }
            }
            let quantized = capture_inputs(&quant, &windows);
            let inputs = float
                .into_iter()
                .map(|(site, x)| {
                    let xq = quantized[&site].clone();
                    (site, (x, xq))
                })
                .collect();
            let block = m.model.block(BLOCK).expect("block");
            let weights = LinearSlot::ALL
                .into_iter()
                .map(|slot| {
                    let w = block.linear(slot).weight.val();
                    let [a, b] = w.dims();
                    (slot, (read(&w), [a, b]))
                })
                .collect();
            Some(Captured { inputs, weights })
        })
        .as_ref()
}

/// `‖X·W − X̃·Ŵ‖ / ‖X·W‖` (`x_quant = x` for the plain output error `‖X(W − Ŵ)‖/‖XW‖`):
/// f32 GEMMs over the activations, norms summed in f64.
fn rel_error(x: &[f32], x_quant: &[f32], w: &[f32], w_hat: &[f32], n: usize, m: usize) -> f64 {
    let t = x.len() / n;
    let mut y = vec![0f32; t * m];
    let mut yq = vec![0f32; t * m];
    matmul(
        ViewMut::rows(&mut y, t, m),
        false,
        0.0,
        View::rows(x, t, n),
        View::rows(w, n, m),
        1.0,
    );
    matmul(
        ViewMut::rows(&mut yq, t, m),
        false,
        0.0,
        View::rows(x_quant, t, n),
        View::rows(w_hat, n, m),
        1.0,
    );
    let num: f64 = y
        .iter()
        .zip(&yq)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = y.iter().map(|a| (*a as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Statistics of the site read by `slot`, accumulated in batches of one window.
fn stats_for(c: &Captured, slot: LinearSlot, algo: &dyn Stage2Algorithm) -> LayerStats {
    let (x, xq) = &c.inputs[&slot.input()];
    let n = c.weights[&slot].1[0];
    let mut s = algo.new_stats(n);
    if algo.inputs() != CalibInputs::None {
        for (a, b) in x.chunks(512 * n).zip(xq.chunks(512 * n)) {
            s.observe_host(a, Some(b)).expect("valid batch");
        }
    }
    s
}

/// Float-target and quantized-input errors of `algo` on `slot` under `spec`.
fn errors(
    c: &Captured,
    slot: LinearSlot,
    algo: &dyn Stage2Algorithm,
    spec: &QuantSpec,
) -> (f64, f64, HostQuantized) {
    let (x, xq) = &c.inputs[&slot.input()];
    let (w, [n, m]) = &c.weights[&slot];
    let stats = stats_for(c, slot, algo);
    let q = algo
        .quantize_host(w, [*n, *m], &stats, spec)
        .expect("quantizes");
    assert!(q.report.warnings.is_empty(), "{:?}", q.report);
    let float_target = rel_error(x, xq, w, &q.w_hat, *n, *m);
    let quantized_input = rel_error(xq, xq, w, &q.w_hat, *n, *m);
    (float_target, quantized_input, q)
}

/// Groups of 128 where d_in allows them, else 64 (576 is not a multiple of 128).
fn group_for(n: usize) -> usize {
    if n.is_multiple_of(128) { 128 } else { 64 }
}

/// Each algorithm's error on the target its paper defines is below RTN's on real layers, for
/// symmetric and asymmetric int4/int3 per group and int3 per output channel: GPTQ on
/// `‖X̃(W − Ŵ)‖`, GPFQ / GPTAQ / Qronos on `‖XW − X̃Ŵ‖`. Act-order on for the GPTQ family.
#[test]
fn every_algorithm_beats_rtn_on_its_own_target() {
    let Some(c) = captured() else { return };
    for slot in [LinearSlot::Q, LinearSlot::O, LinearSlot::Down] {
        let g = group_for(c.weights[&slot].1[0]);
        for spec in [
            QuantSpec::int4_weight_per_group(g),
            QuantSpec::int4_weight_per_group(g).with_bits(3),
            QuantSpec::int4_weight_per_group(g).asymmetric(),
            QuantSpec::int8_weight_per_channel().with_bits(3),
        ] {
            let (rtn_float, rtn_quant, _) = errors(c, slot, &Rtn, &spec);
            let mut line = format!(
                "{:<17} {spec:<52} rtn {rtn_float:.4}/{rtn_quant:.4}",
                slot.hf_name()
            );
            for algo in [
                Algorithm::Gptq(Gptq::default().with_act_order(true)),
                Algorithm::Gpfq(Gpfq::default()),
                Algorithm::Gptaq(Gptaq::default().with_act_order(true)),
                Algorithm::Qronos(Qronos::default().with_act_order(true)),
            ] {
                let (float_target, quantized_input, _) = errors(c, slot, &algo, &spec);
                line += &format!(" {} {float_target:.4}/{quantized_input:.4}", algo.name());
                let (own, rtn) = match algo {
                    Algorithm::Gptq(_) => (quantized_input, rtn_quant),
                    _ => (float_target, rtn_float),
                };
                assert!(
                    own < rtn,
                    "{} {spec} {}: {own} vs RTN {rtn}",
                    slot.hf_name(),
                    algo.name()
                );
            }
            println!("{line}");
        }
    }
}

/// At 3 bits Qronos's float-target error is below GPTQ's (notes §5 oracle 4 on real data),
/// with and without act-order, per group and per channel.
#[test]
fn qronos_beats_gptq_at_three_bits() {
    let Some(c) = captured() else { return };
    for slot in [LinearSlot::Q, LinearSlot::Up, LinearSlot::Down] {
        let g = group_for(c.weights[&slot].1[0]);
        for spec in [
            QuantSpec::int4_weight_per_group(g).with_bits(3),
            QuantSpec::int8_weight_per_channel().with_bits(3),
        ] {
            for act in [false, true] {
                let (gptq, _, _) = errors(c, slot, &Gptq::default().with_act_order(act), &spec);
                let (qronos, _, _) = errors(c, slot, &Qronos::default().with_act_order(act), &spec);
                println!(
                    "{:<17} {spec:<52} act {act:<5}: qronos {qronos:.4} gptq {gptq:.4}",
                    slot.hf_name()
                );
                assert!(
                    qronos < gptq,
                    "{} {spec} act {act}: Qronos {qronos} vs GPTQ {gptq}",
                    slot.hf_name()
                );
            }
        }
    }
}

/// GPTQ with an exact identity Hessian is RTN, code for code, on real weights (notes §2
/// oracle 3), including act-order and quantized scale levels.
#[test]
fn identity_hessian_gives_rtn_on_real_weights() {
    let Some(c) = captured() else { return };
    for slot in [LinearSlot::K, LinearSlot::Down] {
        let (w, [n, m]) = &c.weights[&slot];
        let mut h = vec![0f64; n * n];
        for j in 0..*n {
            h[j * n + j] = 1.0;
        }
        let stats = LayerStats::from_sums(*n, 1, h, None).expect("valid");
        for spec in [
            QuantSpec::int4_weight_per_group(group_for(*n)).with_bits(3),
            QuantSpec::int4_weight_per_group(64).asymmetric(),
            QuantSpec::gguf_q4_0(),
            QuantSpec::mxfp4(),
        ] {
            let r = Rtn.quantize_host(w, [*n, *m], &stats, &spec).expect("rtn");
            for gptq in [Gptq::default(), Gptq::default().with_act_order(true)] {
                let q = gptq
                    .quantize_host(w, [*n, *m], &stats, &spec)
                    .expect("gptq");
                assert_eq!(q.codes, r.codes, "{} {spec} {gptq:?}", slot.hf_name());
                assert_eq!(q.params, r.params);
            }
        }
    }
}

/// Real inputs made singular — 256 tokens for 576 inputs, two inputs duplicated, three never
/// active — get more damping (or none needed) and give finite weights, with the dead inputs'
/// weights zero.
#[test]
fn singular_real_hessians_stay_finite() {
    let Some(c) = captured() else { return };
    let slot = LinearSlot::Q;
    let (x, xq) = &c.inputs[&slot.input()];
    let (w, [n, m]) = &c.weights[&slot];
    let t = 256;
    let mut x = x[..t * n].to_vec();
    let mut xq = xq[..t * n].to_vec();
    for r in 0..t {
        for v in [&mut x, &mut xq] {
            v[r * n + 11] = v[r * n + 10];
            v[r * n + 12] = v[r * n + 10];
            for j in [100, 200, 300] {
                v[r * n + j] = 0.0;
            }
        }
    }
    let spec = QuantSpec::int4_weight_per_group(64).with_bits(3);
    for algo in [
        Algorithm::Gptq(Gptq::default().with_percdamp(1e-9)),
        Algorithm::Gpfq(Gpfq::default()),
        Algorithm::Gptaq(Gptaq::default()),
        Algorithm::Qronos(Qronos::default().with_alpha(1e-12)),
    ] {
        let mut s = algo.new_stats(*n);
        s.observe_host(&x, Some(&xq)).expect("valid");
        let q = algo
            .quantize_host(w, [*n, *m], &s, &spec)
            .expect("quantizes");
        assert!(q.w_hat.iter().all(|v| v.is_finite()), "{}", algo.name());
        assert_eq!(q.report.dead_inputs, 3, "{}", algo.name());
        for j in [100, 200, 300] {
            assert!(q.w_hat[j * m..(j + 1) * m].iter().all(|&v| v == 0.0));
        }
        println!(
            "{}: damping {:?}, retries {}",
            algo.name(),
            q.report.damping,
            q.report.damping_retries
        );
    }
}

/// Through the tensor API the result is a `QuantTensor` whose dequantization is the
/// algorithm's Ŵ bit for bit, for integer, F16-scale (GGUF Q4_0), k-quant (Q4_K), MX and NVFP4
/// specs, and groups of 128 over q_proj's 576 inputs (a short last group of 64); a k-quant
/// super-block that does not tile d_in is a typed error.
#[test]
fn results_are_quant_tensors_that_dequantize_exactly() {
    let Some(c) = captured() else { return };
    let device = Device::flex();
    for (slot, spec) in [
        (
            LinearSlot::Q,
            QuantSpec::int4_weight_per_group(64)
                .asymmetric()
                .with_stat(ScaleStat::mse()),
        ),
        (LinearSlot::Q, QuantSpec::gguf_q4_0()),
        (
            LinearSlot::Q,
            QuantSpec::int4_weight_per_group(128).with_bits(3),
        ),
        (LinearSlot::Q, QuantSpec::mxfp4()),
        (LinearSlot::Q, QuantSpec::nvfp4()),
        (LinearSlot::Down, QuantSpec::gguf_q4_k()),
        (LinearSlot::Down, QuantSpec::gguf_q3_k()),
    ] {
        let (x, xq) = &c.inputs[&slot.input()];
        let (w, [n, m]) = &c.weights[&slot];
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [*n, *m]), &device);
        for algo in [
            Algorithm::Gptq(Gptq::default()),
            Algorithm::Qronos(Qronos::default().with_static_groups(false)),
        ] {
            let stats = stats_for(c, slot, &algo);
            let q = algo.quantize(&wt, &stats, &spec).expect("quantizes");
            let host = algo
                .quantize_host(w, [*n, *m], &stats, &spec)
                .expect("quantizes");
            let deq = q.tensor.dequantize().try_into_vec_as::<f32>().expect("f32");
            assert!(
                deq.iter()
                    .zip(&host.w_hat)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{spec}"
            );
            assert_eq!(q.tensor.codes_vec(), host.codes);
            let (e, e_rtn) = (
                rel_error(x, xq, w, &deq, *n, *m),
                rel_error(
                    x,
                    xq,
                    w,
                    &Rtn.quantize_host(w, [*n, *m], &stats, &spec).unwrap().w_hat,
                    *n,
                    *m,
                ),
            );
            println!(
                "{:<17} {spec:<60} {}: {e:.4} (RTN {e_rtn:.4})",
                slot.hf_name(),
                algo.name()
            );
            assert!(e < e_rtn, "{spec} {}", algo.name());
        }
    }
    let (w, [n, m]) = &c.weights[&LinearSlot::Q];
    let stats = stats_for(c, LinearSlot::Q, &Gptq::default());
    let err = Gptq::default()
        .quantize_host(w, [*n, *m], &stats, &QuantSpec::gguf_q4_k())
        .unwrap_err();
    assert!(err.to_string().contains("does not divide"), "{err}");
}

/// AdaRound's learned rounding is below RTN on its target (`‖X̃(W − Ŵ)‖`) on real SmolLM2
/// layers, with fewer iterations than its default (300) to keep the test short; its codes stay
/// within one step of RTN's.
#[test]
fn adaround_beats_rtn_on_real_layers() {
    let Some(c) = captured() else { return };
    let ada = burn_quant_ptq::Adaround::default().with_iterations(300);
    for slot in [LinearSlot::Q, LinearSlot::O] {
        let g = group_for(c.weights[&slot].1[0]);
        for spec in [
            QuantSpec::int4_weight_per_group(g),
            QuantSpec::int4_weight_per_group(g).with_bits(3),
        ] {
            let (_, rtn, r) = errors(c, slot, &Rtn, &spec);
            let (_, own, a) = errors(c, slot, &ada, &spec);
            println!(
                "{:<17} {spec:<52} rtn {rtn:.4} adaround {own:.4}",
                slot.hf_name()
            );
            assert!(
                own < rtn,
                "{} {spec}: AdaRound {own} vs RTN {rtn}",
                slot.hf_name()
            );
            let (rc, ac) = (&r.codes, &a.codes);
            assert!(rc.iter().zip(ac).all(|(x, y)| (x - y).abs() <= 1));
        }
    }
}
