//! Block-wise AutoRound on the real SmolLM2 (skipped with a notice when the shared model is
//! absent): zero iterations is RTN exactly, and a few iterations lower the block output error
//! on real calibration windows, measured independently of the training loop.

use burn::tensor::{Device, Tensor};
use burn_quant_core::QuantSpec;
use burn_quant_ptq::{Algorithm, AutoRound, Rtn};

use super::{host, shared_data, smollm2};
use crate::*;


/// The first `blocks` blocks of SmolLM2 and four calibration windows of 48 tokens of Emma.
fn truncated(blocks: usize) -> Option<(LlamaModel, Vec<Vec<u32>>)> {
    let m = smollm2()?;
    let text = std::fs::read_to_string(shared_data(CALIBRATION_TEXT)?).unwrap();
    let cfg = CalibrationConfig::default()
        .with_num_windows(4)
        .with_window(48);
    let windows = calibration_windows_from_text(&m.tokenizer, &text, &cfg).unwrap();
    let mut model = m.model.clone();
    model.layers.truncate(blocks);
    Some((model, windows))
}

/// Mean squared difference of the last block's output, quantized model vs float model, over
/// every window: `‖f_q(x) − f(x)‖² / numel`.
fn block_output_error(float: &LlamaModel, quant: &LlamaModel, windows: &[Vec<u32>]) -> f64 {
    let rows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let seq = windows[0].len();
    let rope = float.rope(seq).unwrap();
    let run = |m: &LlamaModel| -> Vec<f32> {
        let mut x: Tensor<3> = m.embed(m.tokens(&rows).unwrap()).unwrap();
        for b in &m.layers {
            x = b.forward(x, &rope, None).unwrap();
        }
        host(x)
    };
    let (a, b) = (run(quant), run(float));
    a.iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64
}

fn quantize(model: &mut LlamaModel, windows: &[Vec<u32>], algorithm: Algorithm) -> PtqResult {
    let config = PtqConfig {
        weights: QuantSpec::int4_weight_per_group(64).with_bits(3),
        algorithm,
        batch_windows: 2,
    };
    quantize_llama(model, windows, &config, &mut |_| {}).unwrap()
}

#[test]
fn autoround_with_zero_iterations_is_rtn_on_smollm2() {
    let Some((model, windows)) = truncated(2) else {
        return;
    };
    let (mut a, mut r) = (model.clone(), model);
    let ar = quantize(
        &mut a,
        &windows,
        Algorithm::AutoRound(AutoRound::default().with_iterations(0)),
    );
    let rtn = quantize(&mut r, &windows, Algorithm::Rtn(Rtn));
    assert_eq!(ar.weights.len(), 14);
    for (name, q) in &ar.weights {
        let r = &rtn.weights[name];
        assert_eq!(q.codes_vec(), r.codes_vec(), "{name}");
        assert_eq!(host(q.params().scales), host(r.params().scales), "{name}");
    }
    assert_eq!(ar.learned.len(), 2);
}

/// A few sign-SGD steps through the real block forward lower the output error of both blocks
/// (block 1 trains on the inputs of the quantized block 0) below RTN's, on every window.
#[test]
fn a_few_autoround_iterations_lower_smollm2_block_error() {
    let Some((float, windows)) = truncated(2) else {
        return;
    };
    let (mut a, mut r) = (float.clone(), float.clone());
    let ar = quantize(
        &mut a,
        &windows,
        Algorithm::AutoRound(AutoRound::default().with_iterations(12)),
    );
    quantize(&mut r, &windows, Algorithm::Rtn(Rtn));
    for (block, report) in &ar.learned {
        println!("block {block}: {report:?}");
        // Four windows, batches of eight: every iteration sees the whole set, so the kept
        // loss is below the first (RTN's) one.
        assert!(report.best_loss < report.initial_loss, "{report:?}");
    }
    for blocks in 1..=2 {
        let mut f = float.clone();
        f.layers.truncate(blocks);
        let (mut qa, mut qr) = (a.clone(), r.clone());
        qa.layers.truncate(blocks);
        qr.layers.truncate(blocks);
        let (e_ar, e_rtn) = (
            block_output_error(&f, &qa, &windows),
            block_output_error(&f, &qr, &windows),
        );
        println!("after {blocks} block(s): AutoRound {e_ar:.3e}, RTN {e_rtn:.3e}");
        assert!(e_ar < 0.9 * e_rtn, "AutoRound {e_ar} vs RTN {e_rtn}");
    }
    // The model holds exactly the exported codes' dequantization.
    for (name, q) in &ar.weights {
        let block: usize = name.split('.').nth(2).unwrap().parse().unwrap();
        let slot = LinearSlot::ALL
            .into_iter()
            .find(|s| name.ends_with(&format!("{}.weight", s.hf_name())))
            .unwrap();
        assert_eq!(
            host(a.layers[block].linear(slot).weight.val()),
            host(q.dequantize()),
            "{name}"
        );
    }
}

/// Bias correction on the real SmolLM2 after RTN: every layer of the first block gets the
/// bias that makes its mean output error over the calibration tokens zero, measured behind
/// the corrected earlier layers (closed form: the mean of `X_f·W − (X̃·Ŵ + δ)` vanishes).
#[test]
fn bias_correction_removes_the_mean_output_error_on_smollm2() {
    let Some((float, windows)) = truncated(1) else {
        return;
    };
    let mut quant = float.clone();
    quantize(&mut quant, &windows, Algorithm::Rtn(Rtn));
    let before = mean_output_errors(&float, &quant, &windows);
    let report = correct_biases(&float, &mut quant, &windows, 2).unwrap();
    assert_eq!(report.layers.len(), 7);
    assert_eq!(report.tokens, (windows.len() * windows[0].len()) as u64);
    let after = mean_output_errors(&float, &quant, &windows);
    for (slot, (b, a)) in LinearSlot::ALL.iter().zip(before.iter().zip(&after)) {
        println!("{slot:?}: mean output error RMS {b:.3e} → {a:.3e}");
        assert!(*a < 1e-3 * b.max(1e-3), "{slot:?}: {b} → {a}");
    }
}

/// Per layer of block 0, the RMS over output channels of the mean (over calibration tokens)
/// of `float layer(float input) − quant layer(quant input)`.
fn mean_output_errors(float: &LlamaModel, quant: &LlamaModel, windows: &[Vec<u32>]) -> Vec<f64> {
    let rows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
    let rope = float.rope(windows[0].len()).unwrap();
    let outputs = |m: &LlamaModel| -> Vec<Vec<f32>> {
        let x = m.embed(m.tokens(&rows).unwrap()).unwrap();
        let mut sites = std::collections::BTreeMap::new();
        let mut keep = |s: InputSite, v: &Tensor<3>| {
            sites.insert(s, v.clone());
        };
        m.layers[0].forward(x, &rope, Some(&mut keep)).unwrap();
        LinearSlot::ALL
            .iter()
            .map(|&slot| {
                let y = m.layers[0]
                    .linear(slot)
                    .try_forward(sites[&slot.input()].clone())
                    .unwrap();
                let [b, s, d] = y.dims();
                host(y.reshape([b * s, d]).mean_dim(0))
            })
            .collect()
    };
    let (f, q) = (outputs(float), outputs(quant));
    f.iter()
        .zip(&q)
        .map(|(f, q)| {
            (f.iter()
                .zip(q)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / f.len() as f64)
                .sqrt()
        })
        .collect()
}

/// AutoRound's result exports code for code: for ggml structures (Q4_0, Q4_K, Q6_K, MXFP4)
/// the encoded blocks decode (by the GGUF codec) to the tensor's dequantization — to the last
/// f32 rounding of ggml's `d·sc·q − dmin·m` against our `(q − z)·s` — after a training run
/// that moved offsets and clipping factors.
#[test]
fn autoround_codes_export_to_gguf_code_for_code() {
    use burn_quant_export::gguf::{codec::decode, encode_quant_tensor};
    use burn_quant_ptq::{CalibInputs, LayerStats, Stage2Algorithm};
    let (n, m, t) = (256usize, 32usize, 256usize);
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let w: Vec<f32> = (0..n * m).map(|_| rand() * 0.2).collect();
    let x: Vec<f32> = (0..t * n).map(|_| rand()).collect();
    let mut stats = LayerStats::new(n, CalibInputs::FloatAndQuantized);
    stats.observe_host(&x, Some(&x)).unwrap();
    let ar = AutoRound::default().with_iterations(20);
    for spec in [
        QuantSpec::gguf_q4_0(),
        QuantSpec::gguf_q4_k(),
        QuantSpec::gguf_q6_k(),
        QuantSpec::mxfp4(),
    ] {
        let q = ar
            .quantize_host(&w, [n, m], &stats, &spec)
            .unwrap()
            .into_quantized(&spec, &Device::flex())
            .unwrap()
            .tensor;
        let g = encode_quant_tensor(&q).unwrap();
        let decoded = decode(g.ty, &g.data).unwrap();
        // ggml rows are output channels: the transpose of Burn's [d_in, d_out].
        let deq = host(q.dequantize().transpose());
        assert_eq!(decoded.len(), deq.len());
        let worst = decoded
            .iter()
            .zip(&deq)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{spec}: {worst}");
    }
}
